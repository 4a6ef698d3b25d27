//! Envelope mailboxes (`local-part@domain`) as they appear in `MAIL FROM` and `RCPT TO`.
//!
//! This module owns the syntax of a mailbox (RFC 5321 §4.1.2, extended by RFC 6531 for UTF-8) and
//! its length limits (§4.5.3.1). It deliberately does not own path syntax (angle brackets, source
//! routes, the `<postmaster>` special case): that belongs to command parsing.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Longest address we accept, in octets. RFC 5321 allows a 256-octet path including the angle
/// brackets, and RFC 3696 errata 1690 settles the mailbox itself at 254.
pub const MAX_ADDRESS_LEN: usize = 254;
/// Longest local part, in octets (RFC 5321 §4.5.3.1.1).
pub const MAX_LOCAL_PART_LEN: usize = 64;
/// Longest domain label, in characters (RFC 1035 §2.3.4 says octets; we count characters so that
/// UTF-8 labels are judged by roughly the same yardstick as their A-label form).
pub const MAX_LABEL_LEN: usize = 63;

/// A mailbox as used on the envelope: local-part@domain. The local part keeps its original form
/// (a quoted local part keeps its quotes); the domain keeps its case. `%` and `!` are ordinary
/// characters (never interpreted as routing). Domain may be a domain name or an address literal
/// "[1.2.3.4]" / "[IPv6:...]".
///
/// The one address without a domain is `postmaster` from `RCPT TO:<postmaster>`, which only the
/// command parser produces (`domain` is then empty).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Address {
    /// As written: dot-atom, or quoted string including its quotes and backslashes.
    pub local_part: String,
    /// As written: domain name (case kept) or bracketed address literal.
    pub domain: String,
}

/// Why a mailbox was rejected. The text is short and fit for a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressError(pub &'static str);

impl fmt::Display for AddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for AddressError {}

impl Address {
    /// Parses `user@example.com` (no angle brackets).
    pub fn parse(s: &str) -> Result<Address, AddressError> {
        if s.is_empty() {
            return Err(AddressError("empty address"));
        }
        if s.len() > MAX_ADDRESS_LEN {
            return Err(AddressError("address too long"));
        }
        let local_len = if s.starts_with('"') {
            quoted_string_len(s)?
        } else {
            // A dot-atom cannot contain '@', so the first one ends it.
            let len = s.find('@').ok_or(AddressError("missing domain"))?;
            check_dot_atom(&s[..len])?;
            len
        };
        let (local, rest) = s.split_at(local_len);
        let domain = rest.strip_prefix('@').ok_or(AddressError("missing @ after quoted local part"))?;
        if local.len() > MAX_LOCAL_PART_LEN {
            return Err(AddressError("local part too long"));
        }
        check_domain(domain)?;
        Ok(Address { local_part: local.to_owned(), domain: domain.to_owned() })
    }

    /// False when the address contains UTF-8 and so needs SMTPUTF8 (RFC 6531) end to end.
    pub fn is_ascii(&self) -> bool {
        self.local_part.is_ascii() && self.domain.is_ascii()
    }

    /// The domain in lower case, for routing and policy lookups (domains are case-insensitive; the
    /// local part is not, so it is never folded).
    pub fn domain_lowercase(&self) -> String {
        if self.domain.is_ascii() { self.domain.to_ascii_lowercase() } else { self.domain.to_lowercase() }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.domain.is_empty() {
            // Only `postmaster`; writing "postmaster@" would not parse back.
            f.write_str(&self.local_part)
        } else {
            write!(f, "{}@{}", self.local_part, self.domain)
        }
    }
}

/// RFC 5321 atext, plus any non-ASCII character (RFC 6531 UTF8-non-ascii) for SMTPUTF8.
/// `%` and `!` are here like any other atext: we never route on them.
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

/// Dot-atom: atoms of atext separated by single dots, no leading or trailing dot.
fn check_dot_atom(s: &str) -> Result<(), AddressError> {
    if s.is_empty() {
        return Err(AddressError("empty local part"));
    }
    for atom in s.split('.') {
        if atom.is_empty() {
            return Err(AddressError("misplaced dot in local part"));
        }
        if !atom.chars().all(is_atext) {
            return Err(AddressError("invalid character in local part"));
        }
    }
    Ok(())
}

/// Length in bytes of the quoted string at the start of `s` (which starts with `"`), quotes
/// included. qtextSMTP is printable ASCII except `"` and `\` (space included), plus UTF-8;
/// quoted-pairSMTP is `\` followed by printable ASCII or space.
fn quoted_string_len(s: &str) -> Result<usize, AddressError> {
    let mut chars = s.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok(i + 1),
            '\\' => match chars.next() {
                Some((_, ' '..='~')) => {}
                _ => return Err(AddressError("invalid quoted pair in local part")),
            },
            ' '..='~' => {}
            c if !c.is_ascii() && !c.is_control() => {}
            _ => return Err(AddressError("invalid character in quoted local part")),
        }
    }
    Err(AddressError("unterminated quoted local part"))
}

/// Domain name or address literal. Shared with source-route checking in the command parser.
pub(crate) fn check_domain(d: &str) -> Result<(), AddressError> {
    if d.is_empty() {
        return Err(AddressError("missing domain"));
    }
    if let Some(inner) = d.strip_prefix('[') {
        let inner = inner.strip_suffix(']').ok_or(AddressError("unterminated address literal"))?;
        // The tag is case-insensitive (RFC 5321 §4.1.3 says "IPv6:", but ABNF strings are
        // case-insensitive). General address literals with other tags are not supported: nobody
        // uses them and we could not deliver to them.
        let ok = match inner.get(..5) {
            Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => inner[5..].parse::<Ipv6Addr>().is_ok(),
            _ => inner.parse::<Ipv4Addr>().is_ok(),
        };
        return if ok { Ok(()) } else { Err(AddressError("invalid address literal")) };
    }
    for label in d.split('.') {
        if label.is_empty() {
            return Err(AddressError("empty domain label"));
        }
        if label.chars().count() > MAX_LABEL_LEN {
            return Err(AddressError("domain label too long"));
        }
        if !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || !c.is_ascii()) {
            return Err(AddressError("invalid character in domain"));
        }
        // RFC 5321 sub-domain: Let-dig [Ldh-str], i.e. no hyphen at either end.
        if label.starts_with('-') || label.ends_with('-') {
            return Err(AddressError("domain label starts or ends with hyphen"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> (String, String) {
        let a = Address::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"));
        assert_eq!(a.to_string(), s, "display round trip");
        (a.local_part, a.domain)
    }

    #[test]
    fn valid() {
        let cases = [
            ("user@example.com", "user", "example.com"),
            ("User.Name+tag@Example.COM", "User.Name+tag", "Example.COM"),
            ("a@b", "a", "b"),
            ("user%other@relay.example", "user%other", "relay.example"),
            ("host!user@uucp.example", "host!user", "uucp.example"),
            ("#!$%&'*+-/=?^_`{|}~@x.y", "#!$%&'*+-/=?^_`{|}~", "x.y"),
            ("\"john doe\"@example.com", "\"john doe\"", "example.com"),
            ("\"a@b\"@example.com", "\"a@b\"", "example.com"),
            ("\"a\\\"b\\\\c\"@example.com", "\"a\\\"b\\\\c\"", "example.com"),
            ("\"\"@example.com", "\"\"", "example.com"),
            ("user@[192.0.2.1]", "user", "[192.0.2.1]"),
            ("user@[IPv6:2001:db8::1]", "user", "[IPv6:2001:db8::1]"),
            ("user@[ipv6:::ffff:192.0.2.1]", "user", "[ipv6:::ffff:192.0.2.1]"),
            ("jörg@bücher.example", "jörg", "bücher.example"),
            ("用户@例子.广告", "用户", "例子.广告"),
            ("\"jö rg\"@example.com", "\"jö rg\"", "example.com"),
            ("a@xn--bcher-kva.example", "a", "xn--bcher-kva.example"),
            ("a@1-2.example", "a", "1-2.example"),
        ];
        for (input, local, domain) in cases {
            assert_eq!(ok(input), (local.to_string(), domain.to_string()));
        }
    }

    #[test]
    fn invalid() {
        let cases = [
            ("", "empty address"),
            ("user", "missing domain"),
            ("user@", "missing domain"),
            ("@example.com", "empty local part"),
            (".user@example.com", "misplaced dot in local part"),
            ("user.@example.com", "misplaced dot in local part"),
            ("us..er@example.com", "misplaced dot in local part"),
            ("us er@example.com", "invalid character in local part"),
            ("us\"er@example.com", "invalid character in local part"),
            ("a@b@c", "invalid character in domain"),
            ("user@example..com", "empty domain label"),
            ("user@.example.com", "empty domain label"),
            ("user@example.com.", "empty domain label"),
            ("user@-example.com", "domain label starts or ends with hyphen"),
            ("user@example-.com", "domain label starts or ends with hyphen"),
            ("user@exa_mple.com", "invalid character in domain"),
            ("user@exa mple.com", "invalid character in domain"),
            ("\"unterminated@example.com", "unterminated quoted local part"),
            ("\"a\"b@example.com", "missing @ after quoted local part"),
            ("\"a\tb\"@example.com", "invalid character in quoted local part"),
            ("\"a\\\tb\"@example.com", "invalid quoted pair in local part"),
            ("user@[192.0.2.256]", "invalid address literal"),
            ("user@[192.0.2.1", "unterminated address literal"),
            ("user@[IPv6:zz::1]", "invalid address literal"),
            ("user@[2001:db8::1]", "invalid address literal"),
            ("user@[x-tag:foo]", "invalid address literal"),
        ];
        for (input, want) in cases {
            assert_eq!(Address::parse(input), Err(AddressError(want)), "{input:?}");
        }
    }

    #[test]
    fn length_limits() {
        let local64 = "a".repeat(64);
        assert!(Address::parse(&format!("{local64}@example.com")).is_ok());
        assert_eq!(Address::parse(&format!("a{local64}@example.com")), Err(AddressError("local part too long")));
        let label63 = "b".repeat(63);
        assert!(Address::parse(&format!("a@{label63}.com")).is_ok());
        assert_eq!(Address::parse(&format!("a@b{label63}.com")), Err(AddressError("domain label too long")));
        // 254 octets total is the ceiling.
        let domain = format!("{}.{}.{}.{}", "c".repeat(63), "d".repeat(63), "e".repeat(63), "f".repeat(60));
        let addr = format!("a@{domain}");
        assert_eq!(addr.len(), 254);
        assert!(Address::parse(&addr).is_ok());
        assert_eq!(Address::parse(&format!("ab@{domain}")), Err(AddressError("address too long")));
    }

    #[test]
    fn helpers() {
        let a = Address::parse("Jörg@Bücher.Example").unwrap();
        assert!(!a.is_ascii());
        assert_eq!(a.domain_lowercase(), "bücher.example");
        let a = Address::parse("User@Example.COM").unwrap();
        assert!(a.is_ascii());
        assert_eq!(a.domain_lowercase(), "example.com");
        assert_eq!(a.local_part, "User");
        let pm = Address { local_part: "Postmaster".into(), domain: String::new() };
        assert_eq!(pm.to_string(), "Postmaster");
    }
}
