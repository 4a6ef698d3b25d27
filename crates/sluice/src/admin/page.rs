//! The status page at `/`: one server-rendered HTML page with inline CSS and no script, refreshing itself
//! every few seconds. Without the token (or the cookie from `/login`) it is a small login form.
//!
//! Everything that came from mail (addresses, replies, reasons) is HTML-escaped: a sender address is
//! whatever a client typed. The one action, releasing a held route, is a POST form; the cookie is
//! `SameSite=Strict` and a cross-origin `Origin` is refused besides.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use super::AdminState;
use crate::metrics::UpstreamHealth;
use crate::scheduler::stats::{SchedulerStats, UpstreamStats};
use crate::spool::DiskSpace;
use crate::spool::now_ms;

/// Seconds between the page's own reloads.
const REFRESH_SECONDS: u32 = 5;

pub(super) fn routes(state: Arc<AdminState>) -> Router<Arc<AdminState>> {
    let actions = Router::new()
        .route("/hold/release", post(release))
        .route_layer(middleware::from_fn_with_state(state, super::require_token));
    Router::new().route("/", get(page)).merge(actions)
}

async fn page(State(state): State<Arc<AdminState>>, headers: HeaderMap) -> Response {
    if !state.authorized(&headers) {
        return Html(login_form(&state.hostname)).into_response();
    }
    let stats = state.scheduler.stats();
    let disk = state.spool.disk_space();
    let view = View {
        hostname: &state.hostname,
        uptime: state.started.elapsed().unwrap_or_default(),
        ready: state.ready.load(Ordering::Acquire),
        health: stats.upstreams.iter().map(|u| state.metrics.health(&u.name)).collect(),
        stats: &stats,
        recent: state.metrics.recent(),
        disk,
        now_ms: now_ms(),
    };
    ([(header::CACHE_CONTROL, "no-store")], Html(view.render())).into_response()
}

/// The release button's form: which upstream's hold.
#[derive(serde::Deserialize)]
struct ReleaseForm {
    upstream: String,
}

/// `POST /hold/release`: lifts the upstream's hold and goes back to the page.
async fn release(
    State(state): State<Arc<AdminState>>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<ReleaseForm>,
) -> Response {
    if !same_origin(&headers) {
        return (StatusCode::FORBIDDEN, "cross-origin request refused\n").into_response();
    }
    let was_held = state.scheduler.release_hold_of(&form.upstream);
    tracing::info!(upstream = %form.upstream, was_held, "hold released from the status page");
    Redirect::to("/").into_response()
}

/// A browser names the page a form was sent from in `Origin`; it must be this server. (No `Origin`:
/// not a browser's cross-site form, and the token was checked already.)
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or_default();
    origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://")) == Some(host)
}

/// HTML-escapes text for element content and quoted attribute values.
pub(super) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1d2430}\
header{background:#1d3557;color:#fff;padding:12px 24px}header h1{margin:0;font-size:20px;display:inline}\
header span{margin-left:16px;opacity:.85}main{padding:16px 24px;display:grid;gap:16px;\
grid-template-columns:repeat(auto-fit,minmax(340px,1fr))}section{background:#fff;border-radius:6px;\
padding:12px 16px;box-shadow:0 1px 2px rgba(0,0,0,.08)}section.wide{grid-column:1/-1}h2{font-size:15px;\
margin:0 0 8px}table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:3px 8px 3px 0;\
vertical-align:top;border-bottom:1px solid #eee}td.num{text-align:right;font-variant-numeric:tabular-nums}\
.ok{color:#1b7f3b}.warn{color:#a15c00}.bad{color:#b3261e;font-weight:600}\
.held{border-left:4px solid #b3261e}.reply{font-family:ui-monospace,monospace;font-size:12px;word-break:break-all}\
.bar{background:#e6e8eb;border-radius:3px;height:10px;width:100%}.bar div{background:#457b9d;height:10px;\
border-radius:3px}.bar div.full{background:#b3261e}button{background:#b3261e;color:#fff;border:0;\
border-radius:4px;padding:6px 14px;font-weight:600;cursor:pointer}.muted{color:#6b7280}";

fn login_form(hostname: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>sluice: sign in</title>\
         <style>{STYLE}</style></head><body><header><h1>sluice</h1><span>{}</span></header><main><section>\
         <h2>Sign in</h2><form method=\"get\" action=\"/login\"><p><label>Admin token \
         <input type=\"password\" name=\"token\" id=\"token\" autocomplete=\"off\" required></label></p>\
         <p><button type=\"submit\" id=\"sign-in\">Sign in</button></p></form><p class=\"muted\">The token is \
         in <code>admin.token</code> in the spool directory, or in the file named by <code>admin.token_file</code>.\
         </p></section></main></body></html>",
        escape(hostname)
    )
}

struct View<'a> {
    hostname: &'a str,
    uptime: Duration,
    ready: bool,
    stats: &'a SchedulerStats,
    /// Aligned with `stats.upstreams`.
    health: Vec<UpstreamHealth>,
    recent: Vec<crate::metrics::RecentDelivery>,
    disk: Option<DiskSpace>,
    now_ms: u64,
}

impl View<'_> {
    fn render(&self) -> String {
        let mut html = String::with_capacity(16 * 1024);
        let _ = write!(
            html,
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\"><title>sluice: {host}</title>\
             <style>{STYLE}</style></head><body><header><h1>sluice</h1><span>{host}</span><span>version {}</span>\
             <span>up {}</span><span class=\"{}\">{}</span></header><main>",
            env!("CARGO_PKG_VERSION"),
            duration(self.uptime),
            if self.ready { "" } else { "bad" },
            if self.ready { "ready" } else { "starting" },
            host = escape(self.hostname),
        );
        self.queue(&mut html);
        self.holds(&mut html);
        for (i, (upstream, health)) in self.stats.upstreams.iter().zip(&self.health).enumerate() {
            self.upstream(&mut html, i, upstream, health);
        }
        self.quotas(&mut html);
        self.disk(&mut html);
        self.recent(&mut html);
        html.push_str("</main></body></html>");
        html
    }

    fn queue(&self, html: &mut String) {
        let q = &self.stats.queue;
        html.push_str("<section id=\"queue\"><h2>Queue</h2><table>");
        for (state, count) in q.by_state() {
            let _ = write!(html, "<tr><th>{state}</th><td class=\"num\" id=\"queue-{state}\">{count}</td></tr>");
        }
        let _ = write!(
            html,
            "<tr><th>total waiting</th><td class=\"num\" id=\"queue-total\">{}</td></tr>\
             <tr><th>oldest</th><td class=\"num\">{}</td></tr></table></section>",
            q.total(),
            self.stats.oldest_age.map_or_else(|| "none".to_owned(), duration)
        );
    }

    fn holds(&self, html: &mut String) {
        html.push_str("<section id=\"holds\"><h2>Held routes</h2>");
        let held: Vec<_> = self.stats.upstreams.iter().filter_map(|u| Some((u, u.hold.as_ref()?))).collect();
        if held.is_empty() {
            html.push_str("<p class=\"ok\" id=\"no-holds\">No route is held.</p>");
        }
        for (i, (upstream, hold)) in held.into_iter().enumerate() {
            let id = |name: &str| if i == 0 { name.to_owned() } else { format!("{name}-{i}") };
            let _ = write!(
                html,
                "<table class=\"held\" id=\"{}\"><tr><th>upstream</th><td>{} ({})</td></tr>\
                 <tr><th>reason</th><td class=\"reply\" id=\"{}\">{}</td></tr>\
                 <tr><th>since</th><td>{}</td></tr><tr><th>tried again in</th><td>{}</td></tr>\
                 <tr><th>messages held</th><td class=\"num\" id=\"{}\">{}</td></tr></table>\
                 <form method=\"post\" action=\"/hold/release\"><input type=\"hidden\" name=\"upstream\" \
                 value=\"{}\"><p><button type=\"submit\" id=\"{}\">Release</button> <span class=\"muted\">after \
                 fixing the cause: its mail goes out now</span></p></form>",
                id("held-route"),
                escape(&upstream.name),
                escape(&upstream.host),
                id("hold-reason"),
                escape(&hold.reason),
                timestamp(hold.since_ms),
                duration(hold.recheck_in),
                id("held-messages"),
                hold.held_messages,
                escape(&upstream.name),
                id("release"),
            );
        }
        html.push_str("</section>");
    }

    fn upstream(&self, html: &mut String, i: usize, upstream: &UpstreamStats, h: &UpstreamHealth) {
        let id = |name: &str| if i == 0 { name.to_owned() } else { format!("{name}-{i}") };
        let (class, state) = if upstream.hold.is_some() {
            ("bad", "held".to_owned())
        } else if let Some(since) = h.down_since_ms {
            ("bad", format!("down since {} ({} ago)", timestamp(since), self.ago(since)))
        } else if upstream.upstream_down.is_some() {
            ("bad", "unreachable".to_owned())
        } else if h.last_success_ms.is_some() {
            ("ok", "up".to_owned())
        } else {
            ("muted", "no delivery yet".to_owned())
        };
        let _ = write!(
            html,
            "<section id=\"{}\"><h2>Upstream {}</h2><table><tr><th>sends to</th><td>{}</td></tr>\
             <tr><th>state</th><td class=\"{class}\" id=\"{}\">{}</td></tr>\
             <tr><th>last success</th><td>{}</td></tr><tr><th>last failure</th><td>{}</td></tr>",
            id("upstream"),
            escape(&upstream.name),
            escape(&upstream.host),
            id("upstream-state"),
            escape(&state),
            h.last_success_ms.map_or_else(|| "never".to_owned(), |t| format!("{} ago", self.ago(t))),
            h.last_failure_ms.map_or_else(|| "never".to_owned(), |t| format!("{} ago", self.ago(t))),
        );
        if let Some(reply) = &h.last_failure {
            let _ = write!(html, "<tr><th>last failure said</th><td class=\"reply\">{}</td></tr>", escape(reply));
        }
        if let Some((error, left)) = &upstream.upstream_down {
            let _ = write!(
                html,
                "<tr><th>unreachable</th><td class=\"reply\">{} (next try in {})</td></tr>",
                escape(error),
                duration(*left)
            );
        }
        if let Some(tokens) = upstream.tokens {
            let _ = write!(
                html,
                "<tr><th>tokens</th><td>{} obtained, {} failed</td></tr>",
                tokens.refreshes, tokens.failures
            );
        }
        html.push_str("</table></section>");
    }

    fn quotas(&self, html: &mut String) {
        let mut quotas = self.stats.upstreams.iter().flat_map(|u| &u.quotas).peekable();
        if quotas.peek().is_none() {
            return;
        }
        html.push_str("<section id=\"quotas\"><h2>Mailbox quotas</h2><table>");
        for q in quotas {
            let _ = write!(html, "<tr><th colspan=\"2\">{}</th></tr>", escape(&q.mailbox));
            bar(
                html,
                "messages in the last minute",
                u64::from(q.messages_last_minute),
                u64::from(q.messages_per_minute),
            );
            bar(html, "recipients in the last 24 h", q.recipients_last_24h, u64::from(q.recipients_per_day));
        }
        html.push_str("</table></section>");
    }

    fn disk(&self, html: &mut String) {
        let Some(disk) = self.disk else { return };
        html.push_str("<section id=\"disk\"><h2>Spool disk</h2><table>");
        bar(html, "used", disk.total_bytes.saturating_sub(disk.free_bytes), disk.total_bytes);
        let _ = write!(
            html,
            "<tr><th>free</th><td class=\"num\">{}</td></tr><tr><th>new mail refused below</th>\
             <td class=\"num\">{}</td></tr>",
            bytes(disk.free_bytes),
            bytes(disk.threshold_bytes)
        );
        if disk.low {
            html.push_str(
                "<tr><th>state</th><td class=\"bad\" id=\"disk-low\">LOW: new mail is refused (452 4.3.1)</td></tr>",
            );
        }
        html.push_str("</table></section>");
    }

    fn recent(&self, html: &mut String) {
        html.push_str("<section id=\"recent\" class=\"wide\"><h2>Recent deliveries</h2>");
        if self.recent.is_empty() {
            html.push_str("<p class=\"muted\">None yet.</p></section>");
            return;
        }
        html.push_str(
            "<table><tr><th>when</th><th>queue id</th><th>from</th><th>to</th><th>result</th><th>reply</th></tr>",
        );
        for d in &self.recent {
            let class = match d.result {
                "delivered" => "ok",
                "deferred" => "warn",
                _ => "bad",
            };
            let bounce = d.bounce_id.as_deref().map(|id| format!(" (bounce {})", escape(id))).unwrap_or_default();
            let _ = write!(
                html,
                "<tr><td>{} ago</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{class}\">{}{bounce}</td>\
                 <td class=\"reply\">{}</td></tr>",
                self.ago(d.at_ms),
                escape(&d.queue_id),
                escape(if d.sender.is_empty() { "<>" } else { &d.sender }),
                escape(&d.recipient),
                d.result,
                escape(&d.reply)
            );
        }
        html.push_str("</table></section>");
    }

    fn ago(&self, then_ms: u64) -> String {
        duration(Duration::from_millis(self.now_ms.saturating_sub(then_ms)))
    }
}

/// A row with a bar of `used` out of `limit` (no limit: the number alone).
fn bar(html: &mut String, label: &str, used: u64, limit: u64) {
    if limit == 0 {
        let _ = write!(html, "<tr><td>{label}</td><td class=\"num\">{used} (no limit)</td></tr>");
        return;
    }
    let percent = (used.saturating_mul(100) / limit).min(100);
    let full = if percent >= 90 { " class=\"full\"" } else { "" };
    let (shown_used, shown_limit) =
        if label == "used" { (bytes(used), bytes(limit)) } else { (used.to_string(), limit.to_string()) };
    let _ = write!(
        html,
        "<tr><td>{label}</td><td class=\"num\">{shown_used} of {shown_limit} ({percent}%)</td></tr>\
         <tr><td colspan=\"2\"><div class=\"bar\"><div{full} style=\"width:{percent}%\"></div></div></td></tr>"
    );
}

fn duration(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

fn timestamp(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .map_or_else(String::new, |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mail_text_is_escaped() {
        assert_eq!(
            escape("<script>alert('x')</script>\"&"),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&quot;&amp;"
        );
    }

    #[test]
    fn origin_must_be_this_server() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "127.0.0.1:8025".parse().unwrap());
        assert!(same_origin(&headers), "no Origin: not a cross-site form");
        headers.insert(header::ORIGIN, "http://127.0.0.1:8025".parse().unwrap());
        assert!(same_origin(&headers));
        headers.insert(header::ORIGIN, "http://evil.example".parse().unwrap());
        assert!(!same_origin(&headers));
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 * 1024 * 1024 / 2), "1.5 MiB");
    }
}
