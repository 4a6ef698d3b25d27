//! Prometheus metrics of a running relay: mail sent with Python's smtplib is delivered, refused (relay
//! denied) and deferred (the upstream answers 451 for one recipient); /metrics, fetched with curl, is
//! parsed with the Prometheus project's Python parser and its values checked.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

fn curl(args: &[&str]) -> CmdOutput {
    let curl = require_tool("curl", &[], "curl");
    run_command(Command::new(curl).args(["-s", "-S", "-w", "\n%{http_code}"]).args(args), None, Duration::from_secs(30))
}

/// (body, HTTP status).
fn get(url: &str, token: Option<&str>) -> (String, u16) {
    let header = token.map(|t| format!("Authorization: Bearer {t}"));
    let mut args: Vec<&str> = Vec::new();
    if let Some(h) = &header {
        args.extend(["-H", h.as_str()]);
    }
    args.push(url);
    let out = curl(&args);
    assert!(out.success(), "{out}");
    let (body, code) = out.stdout.rsplit_once('\n').expect("status line");
    (body.to_owned(), code.trim().parse().expect("HTTP status"))
}

/// The scrape as the Python parser reads it.
struct Scrape {
    types: serde_json::Map<String, Value>,
    samples: Vec<(String, serde_json::Map<String, Value>, f64)>,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut cmd = Command::new(python());
        cmd.arg(peer_script("parse_metrics.py"));
        let out = run_command(&mut cmd, Some(text.as_bytes()), Duration::from_secs(60));
        assert!(
            out.success(),
            "the scrape must parse (pip package prometheus-client, installed by scripts/test.sh):\n{out}\n{text}"
        );
        let json: Value = serde_json::from_str(&out.stdout).expect("parser output");
        let types = json["types"].as_object().expect("types").clone();
        let samples = json["samples"]
            .as_array()
            .expect("samples")
            .iter()
            .map(|s| (s[0].as_str().unwrap().to_owned(), s[1].as_object().unwrap().clone(), s[2].as_f64().unwrap()))
            .collect();
        Scrape { types, samples }
    }

    /// The value of the sample `name` whose labels include `labels` (0 when there is none).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l.get(*k).and_then(Value::as_str) == Some(*v)))
            .map(|(_, _, v)| v)
            .sum()
    }
}

#[test]
fn metrics_count_what_happened_to_the_mail() {
    let up = Upstream::builder().tempfail_rcpt("later@example.test").start();
    let sluice = Sluice::builder()
        .listener(Listener::plain().allow(&["127.0.0.0/8"]))
        // A second listener that lets nobody relay.
        .listener(Listener::plain())
        .upstream(UpstreamCfg::of(&up))
        .retry("1h", "1h", "5d")
        .start();
    let discovery: Value =
        serde_json::from_slice(&std::fs::read(sluice.spool_dir.join("admin.json")).unwrap()).unwrap();
    let url = format!("{}/metrics", discovery["url"].as_str().unwrap());
    let token = std::fs::read_to_string(discovery["token_file"].as_str().unwrap()).unwrap();
    let token = token.trim();

    // The token is required (admin.public_metrics is off).
    assert_eq!(get(&url, None).1, 401);
    assert_eq!(get(&url, Some("not-the-token-not-the-token")).1, 401);

    // The harness's start-up probes are sessions too: count from here.
    let before = Scrape::parse(&get(&url, Some(token)).0);

    let dir = tempdir();
    let file = write_file(dir.path(), "msg.eml", &message("dev@client.test", "you@example.test", "metrics", "Hi.\r\n"));
    let file = file.to_str().unwrap();
    let (open, closed) = (sluice.port_of(0).to_string(), sluice.port_of(1).to_string());
    // Delivered: two recipients.
    let out = send_py(&[
        "--port",
        &open,
        "--from",
        "dev@client.test",
        "--to",
        "you@example.test",
        "--to",
        "two@example.test",
        "--file",
        file,
    ]);
    assert!(out.success(), "{out}");
    // Deferred: the upstream answers 4xx for this recipient.
    let out = send_py(&["--port", &open, "--from", "dev@client.test", "--to", "later@example.test", "--file", file]);
    assert!(out.success(), "{out}");
    // Refused: relay denied on the listener without allowed networks (both recipients).
    let out = send_py(&[
        "--port",
        &closed,
        "--from",
        "dev@client.test",
        "--to",
        "a@example.test",
        "--to",
        "b@example.test",
        "--file",
        file,
    ]);
    assert!(!out.success() && out.stderr.contains("554"), "relay must be denied: {out}");

    up.wait_for_messages(1, DEADLINE);
    // Outcomes are counted as the scheduler reports them: wait for the deferral to show.
    let scrape = wait_until(DEADLINE, "the outcomes in /metrics, and no session open", || {
        let (body, code) = get(&url, Some(token));
        assert_eq!(code, 200, "{body}");
        let scrape = Scrape::parse(&body);
        let counted = scrape.value("sluice_deliveries_total", &[("result", "delivered")]) >= 2.0
            && scrape.value("sluice_deliveries_total", &[("result", "deferred")]) >= 1.0
            // Sessions end just after their last reply: wait for that too.
            && scrape.value("sluice_sessions_active", &[]) == 0.0;
        counted.then_some(scrape)
    });

    assert_eq!(scrape.types["sluice_deliveries"], "counter");
    assert_eq!(scrape.types["sluice_delivery_latency_seconds"], "histogram");
    assert_eq!(scrape.types["sluice_queue_messages"], "gauge");

    // Deliveries: by result and reply class.
    assert_eq!(scrape.value("sluice_deliveries_total", &[("result", "delivered"), ("reply_class", "2xx")]), 2.0);
    assert_eq!(scrape.value("sluice_deliveries_total", &[("result", "deferred"), ("reply_class", "4xx")]), 1.0);
    assert_eq!(scrape.value("sluice_deliveries_total", &[("result", "bounced")]), 0.0);
    assert_eq!(scrape.value("sluice_delivery_latency_seconds_count", &[]), 2.0, "one latency per delivered recipient");
    let upstream = scrape
        .samples
        .iter()
        .find(|(n, _, _)| n == "sluice_deliveries_total")
        .and_then(|(_, l, _)| l.get("upstream")?.as_str().map(str::to_owned))
        .expect("an upstream label");
    assert_eq!(upstream, "default", "the upstream label is its name (`[upstream]` is \"default\")");

    // Sessions on each listener, messages accepted, refusals.
    let open_listener = format!("127.0.0.1:{open}");
    let closed_listener = format!("127.0.0.1:{closed}");
    let sessions = |listener: &str| {
        let label = [("listener", listener)];
        scrape.value("sluice_sessions_total", &label) - before.value("sluice_sessions_total", &label)
    };
    assert_eq!(sessions(&open_listener), 2.0);
    assert_eq!(sessions(&closed_listener), 1.0);
    assert_eq!(scrape.value("sluice_sessions_active", &[("listener", &open_listener)]), 0.0, "all sessions ended");
    assert_eq!(scrape.value("sluice_messages_accepted_total", &[("listener", &open_listener)]), 2.0);
    assert_eq!(scrape.value("sluice_messages_accepted_total", &[("listener", &closed_listener)]), 0.0);
    assert_eq!(scrape.value("sluice_relay_denied_total", &[]), 2.0, "one per refused RCPT");
    assert_eq!(scrape.value("sluice_messages_rejected_total", &[("reason", "relay_denied")]), 2.0);
    assert_eq!(scrape.value("sluice_auth_failures_total", &[]), 0.0);

    // The queue at scrape time: the deferred message waits for its retry, nothing is held.
    assert_eq!(scrape.value("sluice_queue_messages", &[("state", "deferred")]), 1.0);
    assert_eq!(scrape.value("sluice_queue_messages", &[("state", "new")]), 0.0);
    assert_eq!(scrape.value("sluice_queue_messages", &[("state", "held")]), 0.0);
    assert!(scrape.value("sluice_queue_oldest_message_age_seconds", &[]) >= 0.0);
    assert_eq!(scrape.value("sluice_route_held", &[]), 0.0);
}

#[test]
fn public_metrics_need_no_token() {
    let up = Upstream::builder().start();
    let sluice = Sluice::builder()
        .listener(Listener::plain().allow(&["127.0.0.0/8"]))
        .upstream(UpstreamCfg::of(&up))
        .toml("[admin]\npublic_metrics = true\n")
        .start();
    let discovery: Value =
        serde_json::from_slice(&std::fs::read(sluice.spool_dir.join("admin.json")).unwrap()).unwrap();
    let base = discovery["url"].as_str().unwrap();
    let (body, code) = get(&format!("{base}/metrics"), None);
    assert_eq!(code, 200, "{body}");
    assert!(Scrape::parse(&body).types.contains_key("sluice_sessions"), "{body}");
    // Only the metrics: the rest still needs the token.
    assert_eq!(get(&format!("{base}/api/status"), None).1, 401);
}
