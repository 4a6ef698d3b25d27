//! TLS 1.0/1.1 for old devices, through OpenSSL (built only with the `legacy-tls` feature). Used by a
//! listener that sets `insecure_legacy_tls`; every other listener, and the upstream side, stay on rustls
//! with TLS 1.2+.

use std::pin::Pin;
use std::time::Duration;

use openssl::ssl::{Ssl, SslAcceptor};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_openssl::SslStream;

use super::session::TlsInfo;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    acceptor: &SslAcceptor,
) -> std::io::Result<(SslStream<S>, TlsInfo)> {
    let ssl = Ssl::new(acceptor.context()).map_err(std::io::Error::other)?;
    let mut tls = SslStream::new(ssl, stream).map_err(std::io::Error::other)?;
    tokio::time::timeout(HANDSHAKE_TIMEOUT, Pin::new(&mut tls).accept())
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))?
        .map_err(std::io::Error::other)?;
    let info = TlsInfo {
        version: tls.ssl().version_str().to_owned(),
        cipher: tls.ssl().current_cipher().map_or_else(|| "unknown".to_owned(), |c| c.name().to_owned()),
    };
    Ok((tls, info))
}
