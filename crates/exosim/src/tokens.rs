//! Access tokens: issued by the token endpoint, checked by the SMTP (XOAUTH2) endpoint.
//!
//! Real Entra ID tokens are JWTs, but clients must treat them as opaque (Microsoft says so and
//! changes their format), so ours are random strings looked up in this store. What a real token
//! carries is kept beside it: audience, tenant, app and the roles consented at issue time (a
//! permission granted later is not in an earlier token, as with Entra), and the expiry, read
//! against the simulator's clock.

use std::collections::HashMap;
use std::time::SystemTime;

use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};

/// The resource a token is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Audience {
    /// Office 365 Exchange Online (`https://outlook.office365.com`): SMTP, IMAP, POP.
    Exchange,
    /// Microsoft Graph.
    Graph,
}

impl Audience {
    /// The audience of a client-credentials scope (`<resource>/.default`), if we know the
    /// resource. `outlook.office.com` is another identifier of the same Exchange Online
    /// resource and Entra accepts it.
    pub fn from_resource(resource: &str) -> Option<Audience> {
        match resource.trim_end_matches('/').to_ascii_lowercase().as_str() {
            "https://outlook.office365.com" | "https://outlook.office.com" => Some(Audience::Exchange),
            "https://graph.microsoft.com" => Some(Audience::Graph),
            _ => None,
        }
    }
}

/// The roles a client-credentials token for `audience` carries: the app's application
/// permissions on that resource only (`SMTP.*` are Exchange Online's, the rest Graph's here).
pub fn roles_for(audience: Audience, permissions: &[String]) -> Vec<String> {
    permissions.iter().filter(|p| p.starts_with("SMTP.") == (audience == Audience::Exchange)).cloned().collect()
}

/// Who a token speaks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    /// App-only (client credentials): the app and its application permissions (`roles`).
    App {
        /// Client id.
        client_id: String,
        /// Application permissions consented when the token was issued.
        roles: Vec<String>,
    },
    /// Delegated: a signed-in user.
    User {
        /// The user's UPN.
        upn: String,
    },
}

/// What a token stands for.
#[derive(Clone, Debug)]
pub struct Grant {
    /// Resource.
    pub audience: Audience,
    /// Subject.
    pub subject: Subject,
    /// Expiry (simulator clock).
    pub expires_at: SystemTime,
}

/// Why a token was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenError {
    /// Not a token we issued.
    Unknown,
    /// Past its expiry.
    Expired,
    /// For another resource.
    WrongAudience,
}

/// Issued tokens.
#[derive(Debug, Default)]
pub struct TokenStore {
    map: HashMap<String, Grant>,
}

impl TokenStore {
    /// Issues a token for `grant` and returns it.
    pub fn issue(&mut self, grant: Grant) -> String {
        let token = random_token();
        self.map.insert(token.clone(), grant);
        token
    }

    /// Checks a token for `audience` at time `now`.
    pub fn verify(&self, token: &str, audience: Audience, now: SystemTime) -> Result<&Grant, TokenError> {
        let grant = self.map.get(token).ok_or(TokenError::Unknown)?;
        if grant.audience != audience {
            return Err(TokenError::WrongAudience);
        }
        if now >= grant.expires_at {
            return Err(TokenError::Expired);
        }
        Ok(grant)
    }
}

/// 48 random bytes, base64url: long enough that guessing is hopeless, and shaped like the
/// opaque strings clients get.
pub fn random_token() -> String {
    let mut bytes = [0u8; 48];
    SystemRandom::new().fill(&mut bytes).expect("the system random generator failed");
    format!("eyJ0eXAiOiJKV1Qi.{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// Random hex of `n` bytes, upper case (session ids, message ids).
pub fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    SystemRandom::new().fill(&mut bytes).expect("the system random generator failed");
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// A random GUID-shaped string (trace and correlation ids).
pub fn random_guid() -> String {
    let h = random_hex(16).to_ascii_lowercase();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// Compares secrets in constant time (the simulator should not teach sloppy habits).
pub fn secret_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn expiry_and_audience() {
        let mut s = TokenStore::default();
        let t0 = SystemTime::UNIX_EPOCH;
        let tok = s.issue(Grant {
            audience: Audience::Exchange,
            subject: Subject::User { upn: "a@b.c".into() },
            expires_at: t0 + Duration::from_secs(10),
        });
        assert!(s.verify(&tok, Audience::Exchange, t0).is_ok());
        assert_eq!(s.verify(&tok, Audience::Graph, t0).unwrap_err(), TokenError::WrongAudience);
        assert_eq!(s.verify(&tok, Audience::Exchange, t0 + Duration::from_secs(10)).unwrap_err(), TokenError::Expired);
        assert_eq!(s.verify("nope", Audience::Exchange, t0).unwrap_err(), TokenError::Unknown);
    }
}
