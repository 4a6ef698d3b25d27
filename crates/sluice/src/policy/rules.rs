//! Sender and recipient rules per identity: which envelope senders a device, user or certificate may use,
//! and which recipient domains it may reach. A scanner that may only send as `scanner@example.com` cannot
//! be turned into a spam cannon by whoever compromises it.

use std::fmt;

/// A compiled list of patterns. Empty means "anything".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    senders: Vec<SenderPattern>,
    recipient_domains: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum SenderPattern {
    /// "<>": the null reverse-path.
    Null,
    /// A domain pattern ("example.com", "*.example.com"): any local part.
    Domain(String),
    /// "local@domain", each side a glob with `*`.
    Address { local: String, domain: String },
}

impl Rules {
    /// Compiles the patterns of one identity; an error names the bad pattern.
    pub fn new(senders: &[String], recipient_domains: &[String]) -> Result<Rules, String> {
        let senders = senders.iter().map(|p| parse_sender(p)).collect::<Result<_, _>>()?;
        let recipient_domains = recipient_domains
            .iter()
            .map(|d| {
                let d = d.trim().trim_start_matches('@').to_ascii_lowercase();
                if d.is_empty() || d.contains('@') || d.contains(char::is_whitespace) {
                    Err(format!("{d:?} is not a domain pattern"))
                } else {
                    Ok(d)
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(Rules { senders, recipient_domains })
    }

    /// `sender` is the envelope sender, empty for `<>`.
    pub fn allows_sender(&self, sender: &str) -> bool {
        if self.senders.is_empty() {
            return true;
        }
        let sender = sender.to_lowercase();
        let (local, domain) = match sender.rsplit_once('@') {
            Some(pair) => pair,
            None if sender.is_empty() => return self.senders.contains(&SenderPattern::Null),
            None => (sender.as_str(), ""),
        };
        self.senders.iter().any(|p| match p {
            SenderPattern::Null => false,
            SenderPattern::Domain(d) => domain_matches(d, domain),
            SenderPattern::Address { local: lp, domain: dp } => glob(lp, local) && glob(dp, domain),
        })
    }

    pub fn allows_recipient(&self, recipient: &str) -> bool {
        if self.recipient_domains.is_empty() {
            return true;
        }
        let domain = recipient.rsplit_once('@').map_or("", |(_, d)| d).to_lowercase();
        self.recipient_domains.iter().any(|d| domain_matches(d, &domain))
    }
}

fn parse_sender(pattern: &str) -> Result<SenderPattern, String> {
    let p = pattern.trim().to_lowercase();
    if p == "<>" {
        return Ok(SenderPattern::Null);
    }
    let bad = || format!("{pattern:?} is not a sender pattern");
    if p.is_empty() || p.contains(char::is_whitespace) || p.contains('<') || p.contains('>') {
        return Err(bad());
    }
    match p.rsplit_once('@') {
        Some(("", domain)) | Some(("*", domain)) if !domain.is_empty() => Ok(SenderPattern::Domain(domain.into())),
        Some((local, domain)) if !local.is_empty() && !domain.is_empty() => {
            Ok(SenderPattern::Address { local: local.into(), domain: domain.into() })
        }
        Some(_) => Err(bad()),
        None => Ok(SenderPattern::Domain(p)),
    }
}

/// Matches a lower-case name pattern (with `*`) against a certificate name, case-insensitively.
pub fn name_matches(pattern: &str, name: &str) -> bool {
    glob(pattern, &name.to_lowercase())
}

/// "example.com" matches only itself; "*.example.com" matches its subdomains; other globs as written.
fn domain_matches(pattern: &str, domain: &str) -> bool {
    glob(pattern, domain)
}

/// Case-sensitive glob with `*` (callers lower-case both sides).
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Who a client is, as far as relaying goes, and the rules that come with that.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub kind: IdentityKind,
    /// The user name, the certificate's mapped identity, or the network's name.
    pub name: String,
    pub rules: Rules,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityKind {
    Network,
    User,
    Certificate,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            IdentityKind::Network => "network",
            IdentityKind::User => "user",
            IdentityKind::Certificate => "certificate",
        };
        write!(f, "{kind} {}", self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(senders: &[&str], domains: &[&str]) -> Rules {
        let s: Vec<String> = senders.iter().map(|s| s.to_string()).collect();
        let d: Vec<String> = domains.iter().map(|s| s.to_string()).collect();
        Rules::new(&s, &d).unwrap()
    }

    #[test]
    fn empty_rules_allow_everything() {
        let r = rules(&[], &[]);
        assert!(r.allows_sender("anyone@anywhere.test"));
        assert!(r.allows_sender(""));
        assert!(r.allows_recipient("x@y.test"));
    }

    #[test]
    fn sender_patterns() {
        let r = rules(&["scanner@example.com", "@corp.example", "*.branch.example", "scan*@printers.example"], &[]);
        assert!(r.allows_sender("Scanner@Example.com"));
        assert!(!r.allows_sender("boss@example.com"));
        assert!(r.allows_sender("anyone@corp.example"));
        assert!(!r.allows_sender("anyone@sub.corp.example"));
        assert!(r.allows_sender("a@paris.branch.example"));
        assert!(!r.allows_sender("a@branch.example"));
        assert!(r.allows_sender("scan-3f@printers.example"));
        assert!(!r.allows_sender("fax@printers.example"));
        assert!(!r.allows_sender(""), "null sender only when listed");
        assert!(rules(&["<>"], &[]).allows_sender(""));
    }

    #[test]
    fn recipient_domains() {
        let r = rules(&[], &["example.com", "*.example.org"]);
        assert!(r.allows_recipient("a@EXAMPLE.com"));
        assert!(r.allows_recipient("a@x.example.org"));
        assert!(!r.allows_recipient("a@example.org"));
        assert!(!r.allows_recipient("a@evil.test"));
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert!(Rules::new(&["a b@c".into()], &[]).is_err());
        assert!(Rules::new(&["x@".into()], &[]).is_err());
        assert!(Rules::new(&[], &["a@b".into()]).is_err());
    }

    #[test]
    fn glob_edge_cases() {
        assert!(glob("*", ""));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b", "ac"));
        assert!(glob("**", "abc"));
    }
}
