//! Who may do what: the decisions the listener asks for at each stage, kept apart from the protocol code.
//!
//! Today: relaying is allowed to clients in a listener's allowed networks and to authenticated users;
//! everyone else is refused at RCPT. sluice is never an open relay: there is no setting that allows all.

pub mod users;

use std::net::IpAddr;

use ipnet::IpNet;

pub use users::Users;

/// Why a client may relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayPermit {
    /// Its address is in this allowed network.
    Network(IpNet),
    /// It authenticated as this user.
    User(String),
}

/// Decides whether the client may relay mail. `None` means no: answer `554 5.7.1 Relay access denied`.
pub fn relay_permit(
    allowed_networks: &[IpNet],
    client: IpAddr,
    auth_user: Option<&str>,
) -> Option<RelayPermit> {
    if let Some(user) = auth_user {
        return Some(RelayPermit::User(user.to_owned()));
    }
    let client = canonical(client);
    allowed_networks
        .iter()
        .find(|net| net.contains(&client))
        .map(|net| RelayPermit::Network(*net))
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

    #[test]
    fn network_members_may_relay() {
        let allowed = nets(&["192.168.1.0/24", "2001:db8::/32"]);
        let inside: IpAddr = "192.168.1.20".parse().unwrap();
        assert_eq!(
            relay_permit(&allowed, inside, None),
            Some(RelayPermit::Network(allowed[0]))
        );
        let v6: IpAddr = "2001:db8::5".parse().unwrap();
        assert!(relay_permit(&allowed, v6, None).is_some());
    }

    #[test]
    fn mapped_ipv4_matches_ipv4_network() {
        let allowed = nets(&["10.0.0.0/8"]);
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert!(relay_permit(&allowed, mapped, None).is_some());
    }

    #[test]
    fn strangers_may_not_relay_unless_authenticated() {
        let allowed = nets(&["10.0.0.0/8"]);
        let outside: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(relay_permit(&allowed, outside, None), None);
        assert_eq!(relay_permit(&[], outside, None), None);
        assert_eq!(
            relay_permit(&[], outside, Some("scanner")),
            Some(RelayPermit::User("scanner".into()))
        );
    }
}
