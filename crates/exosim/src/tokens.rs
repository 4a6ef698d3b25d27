//! Access tokens: issued by the token endpoint, checked by the SMTP (XOAUTH2) endpoint.
//! Also the delegated sign-in state: pending device codes and refresh tokens (which rotate:
//! redeeming one issues a new one and retires the old, reference §2).
//!
//! Real Entra ID tokens are JWTs, but clients must treat them as opaque (Microsoft says so and
//! changes their format), so ours are looked up whole in this store; they are shaped like Entra's (a
//! JWT with the real claims, see [`jwt_token`]) only so that diagnostics can show the claims. What a real token
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
        /// The delegated permissions granted (`SMTP.Send`, `Mail.Send`, …), without the
        /// resource prefix.
        scopes: Vec<String>,
        /// The client the user signed in to.
        client_id: String,
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

/// A device-code sign-in in progress.
#[derive(Clone, Debug)]
pub struct DeviceCode {
    /// The app.
    pub client_id: String,
    /// What the user types at the verification page.
    pub user_code: String,
    /// Resource of the requested scopes.
    pub audience: Audience,
    /// Requested delegated permissions (without resource prefix).
    pub scopes: Vec<String>,
    /// `offline_access` was requested: a refresh token comes with the access token.
    pub offline: bool,
    /// Until when the code may be redeemed.
    pub expires_at: SystemTime,
    /// The mailbox that signed in, once someone has.
    pub signed_in: Option<String>,
}

/// A refresh token's grant.
#[derive(Clone, Debug)]
pub struct RefreshGrant {
    /// The app.
    pub client_id: String,
    /// The user.
    pub upn: String,
    /// Resource.
    pub audience: Audience,
    /// Delegated permissions.
    pub scopes: Vec<String>,
    /// When it was issued and when it lapses.
    pub issued_at: SystemTime,
    /// Lapse time.
    pub expires_at: SystemTime,
}

/// Why a refresh token was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefreshError {
    /// Never issued.
    Unknown,
    /// Already redeemed (rotated out).
    Redeemed,
    /// Past its lifetime: (issued at).
    Expired(SystemTime),
    /// Issued to another client.
    OtherClient,
}

/// The state of a device code when polled.
#[derive(Clone, Debug)]
pub enum Poll {
    /// Unknown or already redeemed.
    Unknown,
    /// Past its lifetime.
    Expired,
    /// Nobody signed in yet.
    Pending,
    /// Signed in: the code is consumed.
    SignedIn(DeviceCode),
}

/// Issued tokens.
#[derive(Debug, Default)]
pub struct TokenStore {
    map: HashMap<String, Grant>,
    devices: HashMap<String, DeviceCode>,
    refresh: HashMap<String, RefreshGrant>,
    /// Refresh tokens already redeemed (so a replay is told apart from a forgery).
    redeemed: std::collections::HashSet<String>,
}

impl TokenStore {
    /// Issues a token for `grant` in tenant `tenant_id` and returns it.
    pub fn issue(&mut self, grant: Grant, tenant_id: &str) -> String {
        let token = jwt_token(&grant, tenant_id);
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

impl TokenStore {
    /// Starts a device-code sign-in; returns (device_code, user_code).
    pub fn start_device(&mut self, mut code: DeviceCode) -> (String, String) {
        let device_code = random_token().replace("eyJ0eXAiOiJKV1Qi.", "DAQABAAEAAAD");
        // Entra's user codes: 9 upper-case letters and digits (no look-alike filtering known).
        let user_code: String = random_hex(9).bytes().map(|b| (b'A' + b % 26) as char).collect();
        code.user_code = user_code.clone();
        self.devices.insert(device_code.clone(), code);
        (device_code, user_code)
    }

    /// A user signs in at the verification page with `user_code`.
    pub fn sign_in(&mut self, user_code: &str, upn: &str, now: SystemTime) -> Result<(), &'static str> {
        let code = self
            .devices
            .values_mut()
            .find(|d| d.user_code.eq_ignore_ascii_case(user_code.trim()))
            .ok_or("unknown user code")?;
        if now >= code.expires_at {
            return Err("the code has expired");
        }
        code.signed_in = Some(upn.to_owned());
        Ok(())
    }

    /// Polls a device code for `client_id`.
    pub fn poll(&mut self, device_code: &str, client_id: &str, now: SystemTime) -> Poll {
        let Some(code) = self.devices.get(device_code).filter(|d| d.client_id == client_id) else {
            return Poll::Unknown;
        };
        if now >= code.expires_at {
            return Poll::Expired;
        }
        if code.signed_in.is_none() {
            return Poll::Pending;
        }
        self.devices.remove(device_code).map_or(Poll::Unknown, Poll::SignedIn)
    }

    /// Issues a refresh token.
    pub fn issue_refresh(&mut self, grant: RefreshGrant) -> String {
        let token = format!("1.A{}", random_token().trim_start_matches("eyJ0eXAiOiJKV1Qi."));
        self.refresh.insert(token.clone(), grant);
        token
    }

    /// Redeems a refresh token: it is retired whatever happens next (rotation).
    pub fn redeem_refresh(
        &mut self,
        token: &str,
        client_id: &str,
        now: SystemTime,
    ) -> Result<RefreshGrant, RefreshError> {
        if self.redeemed.contains(token) {
            return Err(RefreshError::Redeemed);
        }
        let grant = self.refresh.get(token).ok_or(RefreshError::Unknown)?;
        if grant.client_id != client_id {
            return Err(RefreshError::OtherClient);
        }
        if now >= grant.expires_at {
            return Err(RefreshError::Expired(grant.issued_at));
        }
        let grant = self.refresh.remove(token).ok_or(RefreshError::Unknown)?;
        self.redeemed.insert(token.to_owned());
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

/// A token shaped like Entra's: a JWT whose payload carries the claims a real one has (`aud`, `iss`,
/// `exp`, `appid`, `tid`, and `roles` for an app or `scp` and `upn` for a user), so that a client that
/// decodes it for diagnostics (`sluice probe`) sees what it would see. The signature part is random:
/// nothing verifies it, the store looks the whole token up, and that randomness makes it unguessable.
pub fn jwt_token(grant: &Grant, tenant_id: &str) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let aud = match grant.audience {
        Audience::Exchange => "https://outlook.office365.com",
        Audience::Graph => "https://graph.microsoft.com",
    };
    let exp = grant.expires_at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut claims = serde_json::json!({
        "aud": aud,
        "iss": format!("https://sts.windows.net/{tenant_id}/"),
        "exp": exp,
        "tid": tenant_id,
        "ver": "1.0",
    });
    match &grant.subject {
        Subject::App { client_id, roles } => {
            claims["appid"] = client_id.as_str().into();
            claims["roles"] = roles.clone().into();
        }
        Subject::User { upn, scopes, client_id } => {
            claims["appid"] = client_id.as_str().into();
            claims["scp"] = scopes.join(" ").into();
            claims["upn"] = upn.as_str().into();
        }
    }
    let header = b64.encode(r#"{"typ":"JWT","alg":"RS256","kid":"exosim"}"#);
    let mut signature = [0u8; 48];
    SystemRandom::new().fill(&mut signature).expect("the system random generator failed");
    format!("{header}.{}.{}", b64.encode(claims.to_string()), b64.encode(signature))
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
        let tok = s.issue(
            Grant {
                audience: Audience::Exchange,
                subject: Subject::User { upn: "a@b.c".into(), scopes: vec![], client_id: "x".into() },
                expires_at: t0 + Duration::from_secs(10),
            },
            "tenant-1",
        );
        assert!(s.verify(&tok, Audience::Exchange, t0).is_ok());
        // Shaped like Entra's: a JWT whose payload names the audience, tenant and app.
        let payload = tok.split('.').nth(1).unwrap();
        let claims: serde_json::Value =
            serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        assert_eq!(claims["aud"], "https://outlook.office365.com");
        assert_eq!(claims["tid"], "tenant-1");
        assert_eq!(claims["appid"], "x");
        assert_eq!(claims["exp"], 10);
        assert_eq!(s.verify(&tok, Audience::Graph, t0).unwrap_err(), TokenError::WrongAudience);
        assert_eq!(s.verify(&tok, Audience::Exchange, t0 + Duration::from_secs(10)).unwrap_err(), TokenError::Expired);
        assert_eq!(s.verify("nope", Audience::Exchange, t0).unwrap_err(), TokenError::Unknown);
    }
}
