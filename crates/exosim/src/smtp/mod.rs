//! The SMTP endpoints: client submission, like smtp.office365.com:587, and the MX host, like
//! `<tenant>.mail.protection.outlook.com:25`. The accept loop, and the connection's life
//! (banner, plain session, STARTTLS, TLS session); the MX endpoint also reads the client
//! certificate after the handshake.
//!
//! - `io.rs`: buffered lines, DATA and BDAT over any stream.
//! - `session.rs`: the state machine and the commands EHLO to QUIT.
//! - `auth.rs`: AUTH LOGIN and AUTH XOAUTH2, and the checks behind them.
//! - `data.rs`: what happens at the end of a message (size, recipients, SendAs, quota, rate,
//!   storage).

mod auth;
mod data;
mod io;
mod session;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::connectors::PeerCert;
use crate::faults::{Action, Step};
use crate::replies::{Ctx, scripted};
use crate::sim::Shared;
use crate::tokens::random_hex;
pub(crate) use data::{header_addresses, parse_headers};
use io::Io;
pub(crate) use session::Endpoint;
use session::{Next, Session};

/// Accepts connections until the task is aborted; aborting drops the set, which ends every
/// connection too.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>, endpoint: Endpoint) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((tcp, peer)) = accepted {
                    shared.stat(|s| s.smtp_connections += 1);
                    conns.spawn(connection(tcp, peer, shared.clone(), endpoint));
                }
            }
            // Reap finished connections so the set does not grow without bound.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn connection(tcp: TcpStream, peer: SocketAddr, shared: Arc<Shared>, endpoint: Endpoint) {
    let _ = tcp.set_nodelay(true);
    let tenant = shared.dir().config.tenant;
    let host = match endpoint {
        Endpoint::Submission => tenant.hostname,
        Endpoint::Mx => tenant.mx_hostname,
    };
    let ctx = Ctx { host, session_id: random_hex(8) };
    let mut io = Io::new(tcp);
    let banner = match shared.fault(Step::Connect, None) {
        Some(Action::Disconnect) => return,
        Some(Action::Reply { code, text, .. }) => {
            // A scripted banner (e.g. 421 or 554): say it and close, as a server that
            // refuses at connect does.
            let _ = io.send(&scripted(code, &text)).await;
            return;
        }
        Some(Action::Delay { ms }) => {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            ctx.banner(shared.now())
        }
        None => ctx.banner(shared.now()),
    };
    if io.send(&banner).await.is_err() {
        return;
    }
    let mut plain = Session::new(shared.clone(), ctx.clone(), peer, false, endpoint);
    match plain.run(&mut io).await {
        Next::Close => return,
        Next::StartTls => {}
    }
    drop(plain);
    let tcp = io.into_inner();
    let config = match endpoint {
        Endpoint::Submission => shared.tls.server.clone(),
        Endpoint::Mx => shared.tls.mx.clone(),
    };
    let acceptor = TlsAcceptor::from(config);
    // A TLS 1.0/1.1 ClientHello fails here: rustls speaks 1.2 and 1.3 only (see tls.rs).
    let Ok(tls) = acceptor.accept(tcp).await else {
        return;
    };
    let client_cert = tls.get_ref().1.peer_certificates().filter(|c| !c.is_empty()).map(|certs| PeerCert {
        names: crate::tls::certificate_names(&certs[0]),
        chain_ok: shared.tls.check_client_chain(certs),
    });
    let mut io = Io::new(tls);
    // RFC 3207 §4.2: everything learnt before TLS is forgotten; the client must EHLO again.
    let mut secure = Session::new(shared, ctx, peer, true, endpoint);
    secure.client_cert = client_cert;
    let _ = secure.run(&mut io).await;
}
