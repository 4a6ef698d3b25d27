//! Who may do what: the decisions the listener asks for at each stage, kept apart from the protocol code.
//!
//! Relaying is allowed to clients in a listener's allowed networks, to authenticated users and to
//! devices with a mapped client certificate (or only to those with all of the credentials a listener
//! requires); everyone else is refused at RCPT. Each such identity may be limited to some envelope
//! senders and recipient domains. sluice is never an open relay: no setting allows everyone.

pub mod abuse;
pub mod rules;
pub mod users;

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

pub use crate::config::raw::Credential;
pub use rules::{Identity, IdentityKind, Rules};
pub use users::Users;

/// Identity rules from the config: per network, per certificate, per user.
#[derive(Debug, Default)]
pub struct Policy {
    pub networks: Vec<NetworkRule>,
    pub certificates: Vec<CertificateRule>,
    pub user_rules: HashMap<String, Rules>,
}

#[derive(Debug, Clone)]
pub struct NetworkRule {
    pub network: IpNet,
    pub name: String,
    pub rules: Rules,
}

#[derive(Debug, Clone)]
pub struct CertificateRule {
    /// Lower-case name pattern matched against the certificate's CN and SAN names.
    pub name: String,
    pub identity: String,
    pub rules: Rules,
}

/// What a listener asks of a client before it may relay.
#[derive(Debug, Clone, Copy)]
pub struct RelayRequirements<'a> {
    pub allowed_networks: &'a [IpNet],
    /// Empty: any one credential suffices. Otherwise every one listed is needed.
    pub require: &'a [Credential],
}

impl Policy {
    /// Decides whether the client may relay, and as whom. `None` means no: `554 5.7.1 Relay access
    /// denied`. When several credentials hold, the most specific identity wins: an authenticated user,
    /// then a certificate, then the network.
    pub fn relay_identity(
        &self,
        needs: RelayRequirements<'_>,
        client: IpAddr,
        auth_user: Option<&str>,
        certificate: Option<&Identity>,
    ) -> Option<Identity> {
        let client = canonical(client);
        let network = needs.allowed_networks.iter().find(|net| net.contains(&client));
        let holds = |c: &Credential| match c {
            Credential::Network => network.is_some(),
            Credential::Auth => auth_user.is_some(),
            Credential::Certificate => certificate.is_some(),
        };
        let allowed = if needs.require.is_empty() {
            [Credential::Network, Credential::Auth, Credential::Certificate].iter().any(holds)
        } else {
            needs.require.iter().all(holds)
        };
        if !allowed {
            return None;
        }
        if let Some(user) = auth_user {
            let rules = self.user_rules.get(user).cloned().unwrap_or_default();
            return Some(Identity { kind: IdentityKind::User, name: user.to_owned(), rules });
        }
        if let Some(identity) = certificate {
            return Some(identity.clone());
        }
        let net = network.expect("allowed implies a credential");
        Some(self.network_identity(client).unwrap_or_else(|| Identity {
            kind: IdentityKind::Network,
            name: net.to_string(),
            rules: Rules::default(),
        }))
    }

    /// The most specific `[[network]]` rule containing the client, if any.
    fn network_identity(&self, client: IpAddr) -> Option<Identity> {
        self.networks
            .iter()
            .filter(|rule| rule.network.contains(&client))
            .max_by_key(|rule| rule.network.prefix_len())
            .map(|rule| Identity { kind: IdentityKind::Network, name: rule.name.clone(), rules: rule.rules.clone() })
    }

    /// Maps a verified client certificate (DER) to an identity through the `[[certificate]]` rules:
    /// the first rule whose name matches the subject CN or a DNS/email SAN.
    pub fn certificate_identity(&self, der: &[u8]) -> Option<Identity> {
        let names = certificate_names(der);
        self.certificates.iter().find_map(|rule| {
            names.iter().any(|n| rules::name_matches(&rule.name, n)).then(|| Identity {
                kind: IdentityKind::Certificate,
                name: rule.identity.clone(),
                rules: rule.rules.clone(),
            })
        })
    }
}

/// The subject common names and DNS/email subject-alternative names of a certificate, lower-cased.
pub fn certificate_names(der: &[u8]) -> Vec<String> {
    use x509_parser::prelude::*;
    let Ok((_, cert)) = X509Certificate::from_der(der) else { return Vec::new() };
    let mut names: Vec<String> =
        cert.subject().iter_common_name().filter_map(|cn| cn.as_str().ok()).map(str::to_lowercase).collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(n) | GeneralName::RFC822Name(n) => names.push(n.to_lowercase()),
                _ => {}
            }
        }
    }
    names
}

/// An IPv4 client reaching a dual-stack socket shows up as `::ffff:a.b.c.d`; match it as the IPv4
/// address the admin wrote in the config.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn any(nets: &[IpNet]) -> RelayRequirements<'_> {
        RelayRequirements { allowed_networks: nets, require: &[] }
    }

    #[test]
    fn network_members_may_relay() {
        let allowed = nets(&["192.168.1.0/24", "2001:db8::/32"]);
        let policy = Policy::default();
        let inside: IpAddr = "192.168.1.20".parse().unwrap();
        let id = policy.relay_identity(any(&allowed), inside, None, None).unwrap();
        assert_eq!((id.kind, id.name.as_str()), (IdentityKind::Network, "192.168.1.0/24"));
        let v6: IpAddr = "2001:db8::5".parse().unwrap();
        assert!(policy.relay_identity(any(&allowed), v6, None, None).is_some());
    }

    #[test]
    fn mapped_ipv4_matches_ipv4_network() {
        let allowed = nets(&["10.0.0.0/8"]);
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert!(Policy::default().relay_identity(any(&allowed), mapped, None, None).is_some());
    }

    #[test]
    fn strangers_may_not_relay_unless_authenticated() {
        let allowed = nets(&["10.0.0.0/8"]);
        let policy = Policy::default();
        let outside: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(policy.relay_identity(any(&allowed), outside, None, None), None);
        assert_eq!(policy.relay_identity(any(&[]), outside, None, None), None);
        let id = policy.relay_identity(any(&[]), outside, Some("scanner"), None).unwrap();
        assert_eq!((id.kind, id.name.as_str()), (IdentityKind::User, "scanner"));
    }

    #[test]
    fn required_credentials_must_all_hold() {
        let allowed = nets(&["10.0.0.0/8"]);
        let needs = RelayRequirements { allowed_networks: &allowed, require: &[Credential::Network, Credential::Auth] };
        let policy = Policy::default();
        let inside: IpAddr = "10.0.0.9".parse().unwrap();
        let outside: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(policy.relay_identity(needs, inside, None, None).is_none());
        assert!(policy.relay_identity(needs, outside, Some("u"), None).is_none());
        assert!(policy.relay_identity(needs, inside, Some("u"), None).is_some());
    }

    #[test]
    fn most_specific_network_rule_names_the_identity() {
        let allowed = nets(&["10.0.0.0/8"]);
        let rules = Rules::new(&["scanner@example.com".into()], &[]).unwrap();
        let policy = Policy {
            networks: vec![
                NetworkRule { network: "10.0.0.0/8".parse().unwrap(), name: "lan".into(), rules: Rules::default() },
                NetworkRule { network: "10.9.0.0/16".parse().unwrap(), name: "printers".into(), rules },
            ],
            ..Policy::default()
        };
        let printer: IpAddr = "10.9.1.1".parse().unwrap();
        let id = policy.relay_identity(any(&allowed), printer, None, None).unwrap();
        assert_eq!(id.name, "printers");
        assert!(!id.rules.allows_sender("boss@example.com"));
    }
}
