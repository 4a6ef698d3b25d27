//! Routes: which upstream, and which mailbox of its pool, a message goes through.
//!
//! A route matches on the envelope sender (address, domain, wildcard), the authenticated user and the
//! client's network. Conditions of one route AND together, the values of one condition OR; the first
//! route that matches wins. A route without conditions is the default route; without one, the upstream
//! named "default" (or the only upstream) takes what no route matched.
//!
//! The choice is made once, when the message is accepted, and stored in its queue record
//! ([`RouteChoice`]), so a message keeps its route across restarts. [`Routing::choose`] is pure.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::config::SenderRewrite;
use crate::policy::Rules;

/// What a route decides for one message; stored in the queue record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteChoice {
    /// The upstream's name (`[upstreams.NAME]`, or "default" for `[upstream]`).
    pub upstream: String,
    /// The mailbox of the upstream's pool the route pins, if it pins one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mailbox: Option<String>,
    /// The route's sender rewrite; `None`: the upstream's own `sender_rewrite`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_rewrite: Option<SenderRewrite>,
}

impl RouteChoice {
    /// Straight to an upstream, nothing pinned or overridden.
    pub fn to(upstream: &str) -> RouteChoice {
        RouteChoice { upstream: upstream.to_owned(), mailbox: None, sender_rewrite: None }
    }
}

/// One `[[routes]]` entry, compiled.
#[derive(Debug, Clone)]
pub struct Route {
    /// Sender patterns (the same patterns as `allowed_senders`); empty: any sender.
    pub senders: Rules,
    /// Authenticated user names; empty: any client, authenticated or not.
    pub users: Vec<String>,
    /// Client networks; empty: any client.
    pub networks: Vec<IpNet>,
    pub choice: RouteChoice,
}

impl Route {
    /// No condition at all: the default route.
    pub fn is_default(&self) -> bool {
        self.senders == Rules::default() && self.users.is_empty() && self.networks.is_empty()
    }

    fn matches(&self, m: &RouteRequest<'_>) -> bool {
        let client = crate::policy::canonical(m.client);
        self.senders.allows_sender(m.sender)
            && (self.users.is_empty() || m.auth_user.is_some_and(|u| self.users.iter().any(|x| x == u)))
            && (self.networks.is_empty() || self.networks.iter().any(|n| n.contains(&client)))
    }
}

/// What routes look at: known once the message is accepted.
#[derive(Debug, Clone, Copy)]
pub struct RouteRequest<'a> {
    /// Envelope sender; empty for `<>`.
    pub sender: &'a str,
    /// The SMTP AUTH user, if the client authenticated.
    pub auth_user: Option<&'a str>,
    pub client: IpAddr,
}

/// All routes, and where mail goes when none matches.
#[derive(Debug, Clone)]
pub struct Routing {
    pub routes: Vec<Route>,
    /// The default route's choice, or the upstream named "default" (or the only one).
    pub fallback: RouteChoice,
}

impl Routing {
    /// Everything to one upstream.
    pub fn single(upstream: &str) -> Routing {
        Routing { routes: Vec::new(), fallback: RouteChoice::to(upstream) }
    }

    /// The first route that matches, else the fallback.
    pub fn choose(&self, request: &RouteRequest<'_>) -> &RouteChoice {
        self.routes.iter().find(|r| r.matches(request)).map_or(&self.fallback, |r| &r.choice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(senders: &[&str], users: &[&str], networks: &[&str], upstream: &str) -> Route {
        let senders: Vec<String> = senders.iter().map(|s| s.to_string()).collect();
        Route {
            senders: Rules::new(&senders, &[]).unwrap(),
            users: users.iter().map(|s| s.to_string()).collect(),
            networks: networks.iter().map(|n| n.parse().unwrap()).collect(),
            choice: RouteChoice::to(upstream),
        }
    }

    fn pick<'a>(routing: &'a Routing, sender: &str, user: Option<&str>, ip: &str) -> &'a str {
        let request = RouteRequest { sender, auth_user: user, client: ip.parse().unwrap() };
        &routing.choose(&request).upstream
    }

    #[test]
    fn senders_by_address_domain_and_wildcard() {
        let routing = Routing {
            routes: vec![
                route(&["printer@contoso.com"], &[], &[], "printer"),
                route(&["*@scan.contoso.com"], &[], &[], "scan"),
                route(&["fabrikam.com", "*.fabrikam.com"], &[], &[], "fabrikam"),
            ],
            fallback: RouteChoice::to("default"),
        };
        assert_eq!(pick(&routing, "printer@contoso.com", None, "10.0.0.1"), "printer");
        assert_eq!(pick(&routing, "Printer@Contoso.com", None, "10.0.0.1"), "printer", "case does not matter");
        assert_eq!(pick(&routing, "floor3@scan.contoso.com", None, "10.0.0.1"), "scan");
        assert_eq!(pick(&routing, "floor3@contoso.com", None, "10.0.0.1"), "default");
        assert_eq!(pick(&routing, "a@fabrikam.com", None, "10.0.0.1"), "fabrikam");
        assert_eq!(pick(&routing, "a@eu.fabrikam.com", None, "10.0.0.1"), "fabrikam");
        assert_eq!(pick(&routing, "a@notfabrikam.com", None, "10.0.0.1"), "default");
        assert_eq!(pick(&routing, "", None, "10.0.0.1"), "default", "the null sender matches no sender list");
    }

    #[test]
    fn conditions_and_together_values_or_first_match_wins() {
        let routing = Routing {
            routes: vec![
                route(&["contoso.com"], &["erp"], &["10.1.0.0/16"], "all-three"),
                route(&[], &["erp", "crm"], &[], "apps"),
                route(&[], &[], &["10.1.0.0/16", "192.0.2.7/32"], "lan"),
                route(&["contoso.com"], &[], &[], "contoso"),
            ],
            fallback: RouteChoice::to("default"),
        };
        assert_eq!(pick(&routing, "x@contoso.com", Some("erp"), "10.1.2.3"), "all-three");
        assert_eq!(pick(&routing, "x@contoso.com", Some("erp"), "10.2.0.1"), "apps", "network differs");
        assert_eq!(pick(&routing, "x@fabrikam.com", Some("crm"), "10.1.2.3"), "apps");
        assert_eq!(pick(&routing, "x@fabrikam.com", Some("other"), "10.1.2.3"), "lan");
        assert_eq!(pick(&routing, "x@fabrikam.com", None, "192.0.2.7"), "lan");
        assert_eq!(pick(&routing, "x@fabrikam.com", None, "::ffff:192.0.2.7"), "lan", "v4-mapped is v4");
        assert_eq!(pick(&routing, "x@contoso.com", None, "192.0.2.8"), "contoso");
        assert_eq!(pick(&routing, "x@fabrikam.com", None, "192.0.2.8"), "default");
        assert_eq!(pick(&routing, "x@contoso.com", Some("Erp"), "10.9.9.9"), "contoso", "user names are exact");
    }

    #[test]
    fn a_route_without_conditions_is_the_default() {
        let catch_all = route(&[], &[], &[], "smarthost");
        assert!(catch_all.is_default());
        assert!(!route(&["contoso.com"], &[], &[], "m365").is_default());
        let routing = Routing {
            routes: vec![route(&["contoso.com"], &[], &[], "m365"), catch_all],
            fallback: RouteChoice::to("smarthost"),
        };
        assert_eq!(pick(&routing, "x@fabrikam.com", None, "10.0.0.1"), "smarthost");
        assert_eq!(pick(&routing, "x@contoso.com", None, "10.0.0.1"), "m365");
        assert_eq!(pick(&Routing::single("default"), "x@y.z", None, "10.0.0.1"), "default");
    }
}
