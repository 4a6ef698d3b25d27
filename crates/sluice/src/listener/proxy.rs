//! PROXY protocol (v1 text and v2 binary, HAProxy's spec) so that a load balancer in front of sluice does
//! not turn every client into the load balancer's address: the policy must see the real client.
//!
//! The header is read byte-exactly, so nothing after it (the client's first bytes, or a TLS ClientHello
//! on an implicit-TLS listener) is consumed. Only the configured load balancers may send it: from anyone
//! else a header would let the client pick its own address, which is how open relays are made.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use ppp::{HeaderResult, v1, v2};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// A load balancer sends the header at once; waiting longer only helps a slow-loris.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// v1: "PROXY" ... CRLF, at most 107 bytes (spec §2.1).
const V1_MAX: usize = 107;
const V2_SIGNATURE: [u8; 12] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A];

/// Reads the PROXY header from a trusted peer and returns the client address it names (or the peer's
/// own, for a LOCAL/UNKNOWN header, e.g. the balancer's health check).
pub async fn read_header(tcp: &mut TcpStream, peer: SocketAddr, trusted: &[IpNet]) -> Result<SocketAddr, String> {
    let peer_ip = crate::policy::canonical(peer.ip());
    if !trusted.iter().any(|net| net.contains(&peer_ip)) {
        return Err("peer is not in proxy_trusted_networks".into());
    }
    let header = tokio::time::timeout(HEADER_TIMEOUT, read_raw(tcp))
        .await
        .map_err(|_| "no PROXY header within 5 s".to_owned())?
        .map_err(|e| format!("reading the PROXY header: {e}"))?;
    parse(&header, peer)
}

async fn read_raw(tcp: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut header = vec![0u8; 5];
    tcp.read_exact(&mut header).await?;
    if header == b"PROXY" {
        // Byte by byte up to the LF: one header per connection, so a few dozen small reads are fine,
        // and no byte of what follows is taken.
        let mut byte = [0u8; 1];
        while header.len() < V1_MAX {
            tcp.read_exact(&mut byte).await?;
            header.push(byte[0]);
            if byte[0] == b'\n' {
                return Ok(header);
            }
        }
        return Err(std::io::Error::other("v1 header longer than 107 bytes"));
    }
    header.resize(16, 0);
    tcp.read_exact(&mut header[5..]).await?;
    if header[..12] != V2_SIGNATURE {
        return Err(std::io::Error::other("not a PROXY protocol header"));
    }
    let len = u16::from_be_bytes([header[14], header[15]]) as usize;
    header.resize(16 + len, 0);
    tcp.read_exact(&mut header[16..]).await?;
    Ok(header)
}

fn parse(bytes: &[u8], peer: SocketAddr) -> Result<SocketAddr, String> {
    match HeaderResult::parse(bytes) {
        HeaderResult::V1(Ok(header)) => Ok(match header.addresses {
            v1::Addresses::Tcp4(a) => SocketAddr::new(IpAddr::V4(a.source_address), a.source_port),
            v1::Addresses::Tcp6(a) => SocketAddr::new(IpAddr::V6(a.source_address), a.source_port),
            v1::Addresses::Unknown => peer,
        }),
        HeaderResult::V2(Ok(header)) => Ok(match (header.command, header.addresses) {
            (v2::Command::Local, _) => peer,
            (_, v2::Addresses::IPv4(a)) => SocketAddr::new(IpAddr::V4(a.source_address), a.source_port),
            (_, v2::Addresses::IPv6(a)) => SocketAddr::new(IpAddr::V6(a.source_address), a.source_port),
            (_, _) => peer,
        }),
        HeaderResult::V1(Err(e)) => Err(format!("bad PROXY v1 header: {e}")),
        HeaderResult::V2(Err(e)) => Err(format!("bad PROXY v2 header: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        "10.0.0.1:5000".parse().unwrap()
    }

    #[test]
    fn v1_tcp4_and_unknown() {
        let client = parse(b"PROXY TCP4 192.0.2.7 10.0.0.2 40000 25\r\n", peer()).unwrap();
        assert_eq!(client, "192.0.2.7:40000".parse().unwrap());
        assert_eq!(parse(b"PROXY UNKNOWN\r\n", peer()).unwrap(), peer());
        assert!(parse(b"PROXY TCP4 nonsense\r\n", peer()).is_err());
    }

    #[test]
    fn v2_ipv6() {
        let mut header = V2_SIGNATURE.to_vec();
        header.extend_from_slice(&[0x21, 0x21, 0x00, 36]); // v2 PROXY, TCP over IPv6, 36 bytes
        header.extend_from_slice(&"2001:db8::7".parse::<std::net::Ipv6Addr>().unwrap().octets());
        header.extend_from_slice(&"2001:db8::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
        header.extend_from_slice(&40000u16.to_be_bytes());
        header.extend_from_slice(&25u16.to_be_bytes());
        assert_eq!(parse(&header, peer()).unwrap(), "[2001:db8::7]:40000".parse().unwrap());
    }
}
