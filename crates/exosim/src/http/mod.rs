//! The HTTPS endpoint: one TLS listener serving what are several hosts at Microsoft
//! (login.microsoftonline.com's token endpoint) plus the simulator's own admin API. Their paths
//! do not collide, so one port is enough and tests need one address.
//!
//! - `token.rs`: `POST /{tenant}/oauth2/v2.0/token` (client credentials with a secret or a
//!   certificate assertion, device code, refresh token; AADSTS errors) and
//!   `POST /{tenant}/oauth2/v2.0/devicecode`.
//! - `graph.rs`: `POST /v1.0/users/{upn}/sendMail` (Microsoft Graph), token and budget checks.
//! - `graph_large.rs`: drafts (JSON or MIME; `DELETE` too), `createUploadSession`, chunked `PUT /upload/{session}` (standing
//!   for outlook.office.com's upload URL) and `…/messages/{id}/send`.
//! - `admin.rs`: `POST /devicelogin` (a user "signs in" with a device code), `GET|DELETE /messages`, `GET|POST|DELETE /faults`, `GET /clock`,
//!   `POST /clock/advance`.
//!
//! hyper is used directly (HTTP/1.1 only, which is all curl, MSAL and sluice need here).

mod admin;
mod graph;
mod graph_large;
mod token;

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::sim::Shared;

/// Largest request body we read (the token endpoint's forms are small; this also bounds the
/// admin API).
const MAX_BODY: usize = 8 * 1024 * 1024;

pub(crate) type Resp = Response<Full<Bytes>>;

/// Accepts HTTPS connections until aborted.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let acceptor = TlsAcceptor::from(shared.tls.https.clone());
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((tcp, peer)) = accepted else { continue };
                let acceptor = acceptor.clone();
                let shared = shared.clone();
                conns.spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let service = hyper::service::service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(route(shared, peer, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn route(shared: Arc<Shared>, peer: std::net::SocketAddr, req: Request<Incoming>) -> Resp {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let content_type =
        req.headers().get(hyper::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let authorization =
        req.headers().get(hyper::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let query = req.uri().query().map(str::to_owned);
    let range = req.headers().get(hyper::header::CONTENT_RANGE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let host = req.headers().get(hyper::header::HOST).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return plain(StatusCode::PAYLOAD_TOO_LARGE, "request body too large"),
    };
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        (Method::POST, [tenant, "oauth2", "v2.0", endpoint @ ("token" | "devicecode")]) => {
            let req = token::TokenRequest { tenant, content_type: &content_type, body: &body, host: host.as_deref() };
            if *endpoint == "token" { token::token(&shared, &req) } else { token::devicecode(&shared, &req) }
        }
        (Method::POST, ["devicelogin"]) => admin::device_login(&shared, &body),
        (Method::POST, ["v1.0", "users", upn, "sendMail"]) => {
            let upn = percent_decode(upn);
            graph::send_mail(shared.clone(), peer, &upn, authorization.as_deref(), &content_type, &body).await
        }
        (Method::POST, ["v1.0", "users", upn, "messages"]) => {
            graph_large::create_draft(&shared, &percent_decode(upn), authorization.as_deref(), &content_type, &body)
        }
        (Method::DELETE, ["v1.0", "users", upn, "messages", id]) => {
            graph_large::delete_draft(&shared, &percent_decode(upn), id, authorization.as_deref())
        }
        (Method::POST, ["v1.0", "users", upn, "messages", id, "attachments", "createUploadSession"]) => {
            let base = format!("https://{}", host.as_deref().unwrap_or("127.0.0.1"));
            graph_large::create_upload_session(
                &shared,
                &base,
                &percent_decode(upn),
                id,
                authorization.as_deref(),
                &body,
            )
        }
        (Method::PUT, ["upload", session]) => {
            let base = format!("https://{}", host.as_deref().unwrap_or("127.0.0.1"));
            graph_large::put_chunk(&shared, &base, session, query.as_deref(), range.as_deref(), &body)
        }
        (Method::POST, ["v1.0", "users", upn, "messages", id, "send"]) => {
            graph_large::send_draft(&shared, peer, &percent_decode(upn), id, authorization.as_deref())
        }
        (Method::GET, ["messages"]) => admin::messages(&shared),
        (Method::DELETE, ["messages"]) => admin::clear_messages(&shared),
        (Method::GET, ["faults"]) => admin::faults(&shared),
        (Method::POST, ["faults"]) => admin::add_faults(&shared, &body),
        (Method::DELETE, ["faults"]) => admin::clear_faults(&shared),
        (Method::GET, ["clock"]) => admin::clock(&shared),
        (Method::POST, ["clock", "advance"]) => admin::advance_clock(&shared, &body),
        _ => plain(StatusCode::NOT_FOUND, "not found"),
    }
}

pub(crate) fn json(status: StatusCode, value: &serde_json::Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(value.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}

pub(crate) fn plain(status: StatusCode, text: &str) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(text.to_owned())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// `%40` → `@` and friends, for the `{upn}` path segment.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
