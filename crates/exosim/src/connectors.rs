//! The MX endpoint's rules (reference §1b, §1c): which inbound connector a session matches, by
//! source IP or by TLS client certificate, and what Exchange Online answers each recipient.
//! Pure functions over the directory, so the rules are unit-tested without sockets.
//!
//! Decisions where the reference is silent are marked GUESS; they follow what Exchange Online
//! Protection answers in public transcripts as far as we know.

use std::net::IpAddr;

use crate::config::InboundConnectorConfig;
use crate::directory::Directory;

/// An address range of `-SenderIPAddresses`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `1.2.3.4`, `1.2.3.0/24`, `::1`, `2001:db8::/32`.
    pub fn parse(s: &str) -> Option<Cidr> {
        let (a, p) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = a.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.parse::<u8>().ok().filter(|&p| p <= max)?,
            None => max,
        };
        Some(Cidr { addr, prefix })
    }

    /// Is `ip` in the range? (An IPv4-mapped IPv6 peer counts as its IPv4 address.)
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => mask_eq(&net.octets(), &ip.octets(), self.prefix),
            (IpAddr::V6(net), IpAddr::V6(ip)) => mask_eq(&net.octets(), &ip.octets(), self.prefix),
            _ => false,
        }
    }
}

fn mask_eq(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let full = usize::from(prefix / 8);
    let rest = prefix % 8;
    if a[..full] != b[..full] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    (a[full] & mask) == (b[full] & mask)
}

/// Does a certificate name (CN or SAN) match `TlsSenderCertificateName`? Case-insensitive;
/// `*.contoso.com` on the connector matches exactly one label (`mail.contoso.com`, not
/// `contoso.com` nor `a.b.contoso.com`); a wildcard certificate name matches only the same
/// wildcard on the connector.
pub fn cert_name_matches(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.trim().to_ascii_lowercase(), name.trim().to_ascii_lowercase());
    if p == n {
        return true;
    }
    match p.strip_prefix("*.") {
        Some(suffix) => n
            .strip_suffix(suffix)
            .and_then(|label| label.strip_suffix('.'))
            .is_some_and(|label| !label.is_empty() && !label.contains('.') && label != "*"),
        None => false,
    }
}

/// What the session's TLS client certificate showed, if the client sent one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerCert {
    /// The subject CN and the SAN DNS names of the end-entity certificate.
    pub names: Vec<String>,
    /// The chain the client sent leads to a trusted root (Microsoft needs the full chain: the
    /// intermediates must be sent, only the root may be left out).
    pub chain_ok: bool,
}

/// How the MX endpoint attributes a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attribution {
    /// An inbound connector matched.
    Connector {
        /// Its name.
        name: String,
        /// The certificate domain when it matched by certificate (the connector's
        /// `TlsSenderCertificateName` without `*.`).
        cert_domain: Option<String>,
        /// `-RequireTls`.
        require_tls: bool,
    },
    /// No connector: anonymous (direct send, or mail from the internet).
    Anonymous {
        /// The client sent a certificate that did not match a connector (wrong name, or
        /// incomplete chain): Exchange tried to attribute it and failed.
        presented_cert: bool,
    },
}

impl Attribution {
    /// How the message is recorded.
    pub fn path(&self) -> crate::store::SubmitPath {
        match self {
            Attribution::Connector { .. } => crate::store::SubmitPath::Connector,
            Attribution::Anonymous { .. } => crate::store::SubmitPath::DirectSend,
        }
    }

    /// `connector:<name>` or `anonymous`, for the message store.
    pub fn describe(&self) -> String {
        match self {
            Attribution::Connector { name, .. } => format!("connector:{name}"),
            Attribution::Anonymous { .. } => "anonymous".to_owned(),
        }
    }
}

/// Matches a session to a connector: a certificate match first (the recommended method), then
/// the source IP.
pub fn attribute(dir: &Directory, peer: IpAddr, cert: Option<&PeerCert>) -> Attribution {
    let enabled = || dir.config.inbound_connectors.iter().filter(|c| c.enabled);
    if let Some(cert) = cert.filter(|c| c.chain_ok) {
        let hit = enabled().find_map(|c: &InboundConnectorConfig| {
            let pattern = c.tls_sender_certificate_name.as_deref()?;
            cert.names.iter().any(|n| cert_name_matches(pattern, n)).then_some((c, pattern))
        });
        if let Some((c, pattern)) = hit {
            let domain = pattern.trim().trim_start_matches("*.").to_ascii_lowercase();
            return Attribution::Connector {
                name: c.name.clone(),
                cert_domain: Some(domain),
                require_tls: c.require_tls,
            };
        }
    }
    if let Some(c) =
        enabled().find(|c| c.sender_ip_addresses.iter().filter_map(|s| Cidr::parse(s)).any(|cidr| cidr.contains(peer)))
    {
        return Attribution::Connector { name: c.name.clone(), cert_domain: None, require_tls: c.require_tls };
    }
    Attribution::Anonymous { presented_cert: cert.is_some() }
}

/// The answer to one RCPT on the MX endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// `250 2.1.5 Recipient OK`.
    Accept,
    /// An accepted domain without that recipient: Directory-Based Edge Blocking (on by default
    /// for authoritative domains) refuses it at RCPT.
    UnknownRecipient,
    /// `550 5.7.64 TenantAttribution; Relay Access Denied`.
    TenantAttribution,
    /// `550 5.7.54 SMTP; Unable to relay recipient in non-accepted domain`.
    NonAcceptedDomain,
    /// `550 5.7.68 TenantInboundAttribution; Direct Send not allowed …`.
    DirectSendRejected,
}

fn domain_of(address: &str) -> Option<String> {
    address.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase())
}

/// Is `domain` an accepted domain or a subdomain of one? (GUESS for subdomains: a certificate
/// for `mail.contoso.com` counts as contoso.com's, as a hybrid server's usually is.)
fn in_accepted_domain(dir: &Directory, domain: &str) -> bool {
    dir.config.tenant.domains.iter().any(|d| domain == d || domain.ends_with(&format!(".{d}")))
}

/// The answer to `RCPT TO:<rcpt>` after `MAIL FROM:<mail_from>` (empty for `<>`).
///
/// 1. Anonymous, RejectDirectSend on, MAIL FROM in an accepted domain: 5.7.68 (GUESS: for any
///    recipient, since the sender is "an unauthorized source" whatever the recipient).
/// 2. An internal recipient: accepted if it exists (direct send and connectors alike), else
///    DBEB's refusal.
/// 3. An external recipient through a connector: relayed when the certificate domain or the MAIL
///    FROM domain is an accepted domain (the Nov 2023 rule), else 5.7.64.
/// 4. An external recipient, anonymous: 5.7.64 when Exchange could tie the session to the tenant
///    (a certificate was offered, or MAIL FROM is in an accepted domain: the documented "the IP
///    or certificate no longer matches the connector" case), else 5.7.54.
pub fn verdict(dir: &Directory, attribution: &Attribution, mail_from: &str, rcpt: &str) -> Verdict {
    let from_accepted = domain_of(mail_from).is_some_and(|d| dir.is_accepted_domain(&d));
    let anonymous = matches!(attribution, Attribution::Anonymous { .. });
    if anonymous && from_accepted && dir.config.tenant.reject_direct_send {
        return Verdict::DirectSendRejected;
    }
    let internal = domain_of(rcpt).is_some_and(|d| dir.is_accepted_domain(&d));
    if internal {
        return if dir.mailbox(rcpt).is_some() { Verdict::Accept } else { Verdict::UnknownRecipient };
    }
    match attribution {
        Attribution::Connector { cert_domain, .. } => {
            let cert_accepted = cert_domain.as_deref().is_some_and(|d| in_accepted_domain(dir, d));
            if cert_accepted || from_accepted { Verdict::Accept } else { Verdict::TenantAttribution }
        }
        Attribution::Anonymous { presented_cert } => {
            if *presented_cert || from_accepted {
                Verdict::TenantAttribution
            } else {
                Verdict::NonAcceptedDomain
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SimConfig;

    fn dir(extra_tenant: &str) -> Directory {
        let toml = format!(
            r#"
[tenant]
name = "contoso"
id = "x"
domains = ["contoso.com"]
{extra_tenant}

[[mailboxes]]
address = "user@contoso.com"

[[inbound_connectors]]
name = "by-ip"
sender_ip_addresses = ["127.0.0.2", "10.0.0.0/8"]

[[inbound_connectors]]
name = "by-cert"
tls_sender_certificate_name = "*.contoso.com"

[[inbound_connectors]]
name = "partner-cert"
tls_sender_certificate_name = "relay.fabrikam.net"
"#
        );
        Directory { config: SimConfig::from_toml_str(&toml).unwrap() }
    }

    #[test]
    fn cidr() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(Cidr::parse("127.0.0.2").unwrap().contains("::ffff:127.0.0.2".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("mail.contoso.com").is_none());
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains("8.8.8.8".parse().unwrap()));
    }

    #[test]
    fn wildcard_names() {
        assert!(cert_name_matches("*.contoso.com", "mail.contoso.com"));
        assert!(cert_name_matches("*.contoso.com", "MAIL.Contoso.com"));
        assert!(!cert_name_matches("*.contoso.com", "contoso.com"));
        assert!(!cert_name_matches("*.contoso.com", "a.b.contoso.com"));
        assert!(!cert_name_matches("*.contoso.com", "mailcontoso.com"));
        assert!(cert_name_matches("*.contoso.com", "*.contoso.com"));
        assert!(cert_name_matches("relay.contoso.com", "relay.contoso.com"));
        assert!(!cert_name_matches("relay.contoso.com", "*.contoso.com"));
    }

    #[test]
    fn attribution_and_verdicts() {
        let d = dir("");
        let ip2: IpAddr = "127.0.0.2".parse().unwrap();
        let ip1: IpAddr = "127.0.0.1".parse().unwrap();
        let by_ip = attribute(&d, ip2, None);
        assert!(matches!(&by_ip, Attribution::Connector { name, .. } if name == "by-ip"));
        let good = PeerCert { names: vec!["mail.contoso.com".into()], chain_ok: true };
        let by_cert = attribute(&d, ip1, Some(&good));
        assert!(
            matches!(&by_cert, Attribution::Connector { name, cert_domain: Some(c), .. } if name == "by-cert" && c == "contoso.com")
        );
        let partial = PeerCert { chain_ok: false, ..good.clone() };
        assert_eq!(attribute(&d, ip1, Some(&partial)), Attribution::Anonymous { presented_cert: true });
        let anon = attribute(&d, ip1, None);
        assert_eq!(anon, Attribution::Anonymous { presented_cert: false });

        use Verdict::*;
        let partner = attribute(&d, ip1, Some(&PeerCert { names: vec!["relay.fabrikam.net".into()], chain_ok: true }));
        let rows: Vec<(&Attribution, &str, &str, Verdict)> = vec![
            (&by_ip, "app@contoso.com", "x@example.net", Accept),
            (&by_ip, "app@example.org", "x@example.net", TenantAttribution),
            (&by_cert, "app@example.org", "x@example.net", Accept),
            (&partner, "app@example.org", "x@example.net", TenantAttribution),
            (&partner, "app@contoso.com", "x@example.net", Accept),
            (&anon, "printer@example.org", "user@contoso.com", Accept),
            (&anon, "printer@contoso.com", "user@contoso.com", Accept),
            (&anon, "printer@contoso.com", "nobody@contoso.com", UnknownRecipient),
            (&anon, "printer@example.org", "x@example.net", NonAcceptedDomain),
            (&anon, "printer@contoso.com", "x@example.net", TenantAttribution),
            (&anon, "", "x@example.net", NonAcceptedDomain),
        ];
        for (a, from, rcpt, want) in rows {
            assert_eq!(verdict(&d, a, from, rcpt), want, "{a:?} {from} {rcpt}");
        }
        let strict = dir("reject_direct_send = true");
        assert_eq!(verdict(&strict, &anon, "printer@contoso.com", "user@contoso.com"), DirectSendRejected);
        assert_eq!(verdict(&strict, &anon, "printer@example.org", "user@contoso.com"), Accept);
        assert_eq!(verdict(&strict, &by_ip, "printer@contoso.com", "user@contoso.com"), Accept);
    }
}
