//! App-only OAuth 2.0 tokens from Microsoft Entra ID (client credentials flow), for XOAUTH2 on SMTP and
//! for Graph.
//!
//! One [`TokenSource`] per upstream is shared by every connection: the token is fetched once, cached,
//! and fetched again before it expires (at 80% of `expires_in`, so a connection never authenticates with
//! a token in its last minutes), or when the server refused it ([`TokenSource::invalidate`], after
//! `535 5.7.3`). Concurrent callers wait for one request instead of each sending their own.
//!
//! With `oauth_flow = "delegated"` the tokens are a user's: `sluice login` runs the device code flow once
//! ([`login`]) and keeps the refresh token in a file (mode 0600, replaced atomically); each fetch redeems
//! it with the refresh token grant and writes back the rotated one (refresh tokens rotate on every use,
//! reference §2). No refresh token, or one Entra refuses, holds the route with an error that says to run
//! `sluice login`.
//!
//! Tokens and secrets are [`Secret`]s: nothing here logs them, and their `Debug` is redacted.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use tracing::{info, warn};

use crate::config::{OAuthConfig, OAuthCredential, Secret};

/// A token is refreshed once this share of its lifetime has passed.
const REFRESH_AT: f64 = 0.8;
/// A client assertion is valid this long (Entra accepts up to 10 minutes' worth and more; short is safer).
const ASSERTION_LIFETIME: Duration = Duration::from_secs(600);
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Why no token could be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    /// Entra ID answered with an error (HTTP 4xx with `error` / `AADSTS…`): wrong secret, unknown app,
    /// unknown tenant, certificate not registered… Configuration, not weather: the route is held.
    #[error("token request refused (HTTP {status}): {error}: {description}")]
    Refused { status: u16, error: String, description: String },
    /// The token endpoint could not be reached or failed (5xx, 429, network): try again later.
    #[error("token endpoint unavailable: {0}")]
    Unavailable(String),
}

struct Cached {
    token: Secret,
    refresh_at: Instant,
    expires_at: Instant,
}

pub struct TokenSource {
    http: reqwest::Client,
    config: OAuthConfig,
    cache: tokio::sync::Mutex<Option<Cached>>,
    /// Token requests that got a token, and those that did not (for metrics).
    refreshes: AtomicU64,
    failures: AtomicU64,
}

/// How many token requests succeeded and failed since start-up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenStats {
    pub refreshes: u64,
    pub failures: u64,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Deserialize, Default)]
struct ErrorResponse {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

impl TokenSource {
    pub fn new(http: reqwest::Client, config: OAuthConfig) -> TokenSource {
        TokenSource {
            http,
            config,
            cache: tokio::sync::Mutex::new(None),
            refreshes: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    /// Token requests so far: obtained, and failed (refused or unavailable).
    pub fn stats(&self) -> TokenStats {
        TokenStats {
            refreshes: self.refreshes.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
        }
    }

    /// A valid token: the cached one while it is fresh, else a new one.
    pub async fn token(&self) -> Result<Secret, TokenError> {
        // Held across the request on purpose: callers arriving meanwhile wait for this fetch.
        let mut cache = self.cache.lock().await;
        let now = Instant::now();
        if let Some(cached) = cache.as_ref()
            && now < cached.refresh_at
        {
            return Ok(cached.token.clone());
        }
        let fetched = self.fetch().await;
        let counter = if fetched.is_ok() { &self.refreshes } else { &self.failures };
        counter.fetch_add(1, Ordering::Relaxed);
        match fetched {
            Ok((token, lifetime)) => {
                let now = Instant::now();
                *cache = Some(Cached {
                    token: token.clone(),
                    refresh_at: now + lifetime.mul_f64(REFRESH_AT),
                    expires_at: now + lifetime,
                });
                Ok(token)
            }
            // A refresh that fails while the old token still has life left: use it, try again next time.
            Err(TokenError::Unavailable(reason)) if cache.as_ref().is_some_and(|c| now < c.expires_at) => {
                warn!(token_url = %self.config.token_url, %reason, "token refresh failed; using the current token");
                Ok(cache.as_ref().expect("checked").token.clone())
            }
            Err(e) => Err(e),
        }
    }

    /// Forgets `token` after the server refused it, so the next [`token`](Self::token) fetches a new one.
    /// A token that was already replaced is left alone (another connection refreshed it meanwhile).
    pub async fn invalidate(&self, token: &Secret) {
        let mut cache = self.cache.lock().await;
        if cache.as_ref().is_some_and(|c| c.token.expose() == token.expose()) {
            *cache = None;
        }
    }

    async fn fetch(&self) -> Result<(Secret, Duration), TokenError> {
        let c = &self.config;
        let delegated_file = match &c.credential {
            OAuthCredential::Delegated { refresh_token_file } => Some(refresh_token_file.clone()),
            _ => None,
        };
        let refresh = match &delegated_file {
            Some(file) => Some(read_refresh_token(file)?),
            None => None,
        };
        // Built in a block: the serializer is not Send and must not live across the await below.
        let body = {
            let mut form = form_urlencoded::Serializer::new(String::new());
            form.append_pair("client_id", &c.client_id).append_pair("scope", &c.scope);
            match &c.credential {
                OAuthCredential::Delegated { .. } => {
                    let refresh = refresh.as_ref().expect("read above");
                    form.append_pair("grant_type", "refresh_token").append_pair("refresh_token", refresh.expose());
                }
                OAuthCredential::Secret(secret) => {
                    form.append_pair("grant_type", "client_credentials").append_pair("client_secret", secret.expose());
                }
                OAuthCredential::Certificate { cert_der, key_pkcs8 } => {
                    let assertion = client_assertion(&c.client_id, &c.token_url, cert_der, key_pkcs8).map_err(|e| {
                        TokenError::Refused { status: 0, error: "client_assertion".into(), description: e }
                    })?;
                    form.append_pair("grant_type", "client_credentials")
                        .append_pair("client_assertion_type", JWT_BEARER)
                        .append_pair("client_assertion", &assertion);
                }
            }
            form.finish()
        };
        let parsed = match post_form(&self.http, &c.token_url, body).await {
            Err(TokenError::Refused { status, error, description }) if delegated_file.is_some() => {
                return Err(TokenError::Refused {
                    status,
                    error,
                    description: format!(
                        "{description} (the signed-in user's refresh token: run `sluice login <upstream name>`)"
                    ),
                });
            }
            other => other?,
        };
        if let Some(file) = &delegated_file {
            // Refresh tokens rotate on every use: the new one replaces the old before the access token is used.
            match &parsed.refresh_token {
                Some(rotated) => store_refresh_token(file, rotated).map_err(|e| {
                    TokenError::Unavailable(format!(
                        "cannot store the rotated refresh token in {}: {e}",
                        file.display()
                    ))
                })?,
                None => {
                    warn!(file = %file.display(), "the token endpoint sent no new refresh token; keeping the old one")
                }
            }
        }
        // Entra says 3599 for client credentials; without a value assume the shortest documented life.
        let lifetime = Duration::from_secs(parsed.expires_in.unwrap_or(3600).max(1));
        info!(client_id = %c.client_id, scope = %c.scope, expires_in = lifetime.as_secs(), "access token obtained");
        Ok((Secret::new(parsed.access_token), lifetime))
    }
}

/// POSTs a form to Entra: the status and the body, or why no answer came.
async fn post_urlencoded(http: &reqwest::Client, url: &str, body: String) -> Result<(u16, Vec<u8>), TokenError> {
    let response = http
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .map_err(|e| TokenError::Unavailable(error_chain(&e)))?;
    let status = response.status().as_u16();
    let bytes = response.bytes().await.map_err(|e| TokenError::Unavailable(error_chain(&e)))?;
    Ok((status, bytes.to_vec()))
}

/// POSTs a form to the token endpoint: the token response, or why not.
async fn post_form(http: &reqwest::Client, url: &str, body: String) -> Result<TokenResponse, TokenError> {
    let (status, bytes) = post_urlencoded(http, url, body).await?;
    if (200..300).contains(&status) {
        return serde_json::from_slice(&bytes)
            .map_err(|e| TokenError::Unavailable(format!("unreadable token response: {e}")));
    }
    let err: ErrorResponse = serde_json::from_slice(&bytes).unwrap_or_default();
    if status == 429 || status >= 500 || err.error.is_empty() {
        return Err(TokenError::Unavailable(format!(
            "HTTP {status} {}",
            if err.error.is_empty() {
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned()
            } else {
                err.error_description
            }
        )));
    }
    Err(TokenError::Refused { status, error: err.error, description: err.error_description })
}

/// The refresh token `sluice login` stored. Missing or empty: the route is held until someone signs in.
pub fn read_refresh_token(file: &Path) -> Result<Secret, TokenError> {
    let refused = |why: String| TokenError::Refused {
        status: 0,
        error: "no_refresh_token".into(),
        description: format!("{why}: run `sluice login <upstream name>` to sign in"),
    };
    match std::fs::read_to_string(file) {
        Ok(text) if !text.trim().is_empty() => Ok(Secret::new(text.trim().to_owned())),
        Ok(_) => Err(refused(format!("{} is empty", file.display()))),
        Err(e) => Err(refused(format!("no refresh token in {} ({e})", file.display()))),
    }
}

/// Replaces the refresh token file atomically (temporary file with mode 0600, fsync, rename, fsync of
/// the directory): a crash leaves the old token or the new one, never half of one.
pub fn store_refresh_token(file: &Path, token: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = file.file_name().ok_or_else(|| std::io::Error::other("not a file name"))?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        // The mode of a file that already existed is not changed by open: set it.
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        f.write_all(token.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, file)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// What `sluice login` shows the person signing in.
#[derive(Debug, Clone)]
pub struct DevicePrompt {
    pub verification_uri: String,
    pub user_code: String,
    /// Entra's own sentence, when it sent one.
    pub message: Option<String>,
}

#[derive(Deserialize)]
struct DeviceCodeResponse {
    device_code: String,
    user_code: String,
    verification_uri: String,
    #[serde(default)]
    interval: Option<u64>,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    message: Option<String>,
}

/// The device code flow (reference §2): asks for a code, hands the prompt to `show`, polls the token
/// endpoint until the user has signed in, and stores the refresh token in the configured file.
pub async fn login(
    http: &reqwest::Client,
    config: &OAuthConfig,
    show: impl FnOnce(&DevicePrompt),
) -> Result<(), TokenError> {
    let OAuthCredential::Delegated { refresh_token_file } = &config.credential else {
        return Err(TokenError::Refused {
            status: 0,
            error: "not_delegated".into(),
            description: "sluice login needs oauth_flow = \"delegated\" on the upstream".into(),
        });
    };
    let devicecode_url = match config.token_url.strip_suffix("/token") {
        Some(base) => format!("{base}/devicecode"),
        None => return Err(TokenError::Unavailable(format!("{}: not a /token URL", config.token_url))),
    };
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("client_id", &config.client_id)
        .append_pair("scope", &config.scope)
        .finish();
    let (status, bytes) = post_urlencoded(http, &devicecode_url, body).await?;
    if !(200..300).contains(&status) {
        let err: ErrorResponse = serde_json::from_slice(&bytes).unwrap_or_default();
        return Err(TokenError::Refused { status, error: err.error, description: err.error_description });
    }
    let device: DeviceCodeResponse = serde_json::from_slice(&bytes)
        .map_err(|e| TokenError::Unavailable(format!("unreadable device code response: {e}")))?;
    show(&DevicePrompt {
        verification_uri: device.verification_uri.clone(),
        user_code: device.user_code.clone(),
        message: device.message.clone(),
    });
    let mut interval = Duration::from_secs(device.interval.unwrap_or(5).max(1));
    let deadline = Instant::now() + Duration::from_secs(device.expires_in.unwrap_or(900));
    loop {
        tokio::time::sleep(interval).await;
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("client_id", &config.client_id)
            .append_pair("grant_type", "urn:ietf:params:oauth:grant-type:device_code")
            .append_pair("device_code", &device.device_code)
            .finish();
        match post_form(http, &config.token_url, body).await {
            Ok(tokens) => {
                let refresh = tokens.refresh_token.ok_or_else(|| TokenError::Refused {
                    status: 200,
                    error: "no_refresh_token".into(),
                    description: "signed in, but no refresh token came back (is offline_access in the scope?)".into(),
                })?;
                store_refresh_token(refresh_token_file, &refresh).map_err(|e| {
                    TokenError::Unavailable(format!(
                        "cannot store the refresh token in {}: {e}",
                        refresh_token_file.display()
                    ))
                })?;
                info!(file = %refresh_token_file.display(), "signed in; refresh token stored");
                return Ok(());
            }
            Err(TokenError::Refused { error, .. }) if error == "authorization_pending" => {}
            Err(TokenError::Refused { error, .. }) if error == "slow_down" => interval += Duration::from_secs(5),
            Err(TokenError::Unavailable(reason)) if Instant::now() < deadline => {
                warn!(%reason, "token endpoint unavailable while waiting for the sign-in; polling on");
            }
            Err(e) => return Err(e),
        }
        if Instant::now() >= deadline {
            return Err(TokenError::Refused {
                status: 0,
                error: "expired_token".into(),
                description: "nobody signed in before the code expired; run sluice login again".into(),
            });
        }
    }
}

/// The whole cause chain of a reqwest error (its `Display` alone says only "error sending request").
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A client assertion (RFC 7523) for certificate credentials: a JWT naming the certificate by its
/// SHA-256 and SHA-1 thumbprints, signed RS256 with its key; `aud` is the token endpoint.
pub fn client_assertion(client_id: &str, token_url: &str, cert_der: &[u8], key_pkcs8: &[u8]) -> Result<String, String> {
    use ring::{digest, rand, signature};
    let key = signature::RsaKeyPair::from_pkcs8(key_pkcs8).map_err(|e| format!("bad RSA key: {e}"))?;
    let sha256 = digest::digest(&digest::SHA256, cert_der);
    let sha1 = digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, cert_der);
    let header = serde_json::json!({
        "alg": "RS256",
        "typ": "JWT",
        "x5t#S256": URL_SAFE_NO_PAD.encode(sha256.as_ref()),
        // The SHA-1 form for older Entra deployments that only look at x5t.
        "x5t": URL_SAFE_NO_PAD.encode(sha1.as_ref()),
    });
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut jti = [0u8; 16];
    rand::SecureRandom::fill(&rand::SystemRandom::new(), &mut jti).map_err(|_| "no randomness".to_owned())?;
    let claims = serde_json::json!({
        "aud": token_url,
        "iss": client_id,
        "sub": client_id,
        "jti": jti.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        "nbf": now,
        "iat": now,
        "exp": now + ASSERTION_LIFETIME.as_secs(),
    });
    let signing_input =
        format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
    let mut sig = vec![0u8; key.public().modulus_len()];
    key.sign(&signature::RSA_PKCS1_SHA256, &rand::SystemRandom::new(), signing_input.as_bytes(), &mut sig)
        .map_err(|_| "signing failed".to_owned())?;
    Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig)))
}

/// The HTTPS client for token requests and Graph: our rustls (ring) configuration with the upstream's
/// trust anchors (`ca_file` included), HTTP/1.1.
pub fn http_client(tls: &rustls::ClientConfig, connect_timeout: Duration, timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls.clone())
        .connect_timeout(connect_timeout)
        .timeout(timeout)
        .build()
        // Only fails when the TLS backend is not recognised, which would be a build mistake.
        .expect("HTTP client with the preconfigured rustls backend")
}
