//! The token endpoint, like `login.microsoftonline.com/{tenant}/oauth2/v2.0/token` (reference
//! §2): the client credentials grant with a client secret or a certificate assertion
//! (`assertion.rs`), the device-code flow (`/devicecode`, then `/token` with
//! `grant_type=urn:ietf:params:oauth:grant-type:device_code`), the `refresh_token` grant (the
//! refresh token rotates on every use), and Entra ID's AADSTS errors.
//!
//! Errors are JSON `{error, error_description, error_codes, timestamp, trace_id,
//! correlation_id, error_uri}` with the AADSTS number first in the description and the trace,
//! correlation and timestamp at its end, as Entra writes them. Status: 400, except
//! `invalid_client` (bad or missing secret), which Entra answers with 401 as RFC 6749 §5.2
//! allows. (The reference says "HTTP 400" for errors in general; for invalid_client Entra's 401
//! is what we know, and a client should treat both as "credentials refused".)
//!
//! Checks, in Entra's order as far as we know: tenant, grant type, client id, app, scope
//! present, credentials, then the scope's resource.

use std::time::Duration;

use chrono::{DateTime, Utc};
use hyper::StatusCode;
use serde_json::json;

use super::{Resp, json};
use crate::assertion::{AssertionError, RegisteredCert};
use crate::config::AppConfig;
use crate::directory::Directory;
use crate::sim::Shared;
use crate::tokens::{
    Audience, DeviceCode, Grant, Poll, RefreshError, RefreshGrant, Subject, random_guid, roles_for, secret_eq,
};

const CLIENT_CREDENTIALS: &str = "client_credentials";
const DEVICE_CODE: &str = "urn:ietf:params:oauth:grant-type:device_code";
const REFRESH_TOKEN: &str = "refresh_token";
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Where the device-code flow sends the user.
const VERIFICATION_URI: &str = "https://microsoft.com/devicelogin";
/// Seconds between polls Entra asks for.
const POLL_INTERVAL: u64 = 5;
/// Scopes that ask for something other than a resource's permission.
const OIDC_SCOPES: [&str; 4] = ["offline_access", "openid", "profile", "email"];

/// An AADSTS error.
struct Aadsts {
    status: StatusCode,
    error: &'static str,
    code: u32,
    message: String,
}

fn aadsts(status: StatusCode, error: &'static str, code: u32, message: String) -> Aadsts {
    Aadsts { status, error, code, message }
}

fn missing(param: &str) -> Aadsts {
    aadsts(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        900144,
        format!("The request body must contain the following parameter: '{param}'."),
    )
}

/// The request as the endpoint sees it.
pub(super) struct TokenRequest<'a> {
    pub(super) tenant: &'a str,
    pub(super) content_type: &'a str,
    pub(super) body: &'a [u8],
    /// The Host header, to recognise the simulator's own URL in an assertion's `aud`.
    pub(super) host: Option<&'a str>,
}

pub(super) fn token(shared: &Shared, req: &TokenRequest<'_>) -> Resp {
    match issue(shared, req) {
        Ok(r) => r,
        Err(e) => error_response(shared, e),
    }
}

/// `POST /{tenant}/oauth2/v2.0/devicecode`.
pub(super) fn devicecode(shared: &Shared, req: &TokenRequest<'_>) -> Resp {
    match start_device(shared, req) {
        Ok(r) => r,
        Err(e) => error_response(shared, e),
    }
}

fn error_response(shared: &Shared, e: Aadsts) -> Resp {
    let now: DateTime<Utc> = shared.now().into();
    let stamp = now.format("%Y-%m-%d %H:%M:%SZ").to_string();
    let trace = random_guid();
    let correlation = random_guid();
    let description =
        format!("AADSTS{}: {} Trace ID: {trace} Correlation ID: {correlation} Timestamp: {stamp}", e.code, e.message);
    json(
        e.status,
        &json!({
            "error": e.error,
            "error_description": description,
            "error_codes": [e.code],
            "timestamp": stamp,
            "trace_id": trace,
            "correlation_id": correlation,
            "error_uri": format!("https://login.microsoftonline.com/error?code={}", e.code),
        }),
    )
}

type Form = Vec<(String, String)>;

fn field<'f>(form: &'f Form, k: &str) -> Option<&'f str> {
    form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
}

/// The checks every request starts with: the tenant, then a form body.
fn tenant_and_form(dir: &Directory, req: &TokenRequest<'_>) -> Result<Form, Aadsts> {
    let tenant = req.tenant;
    if !dir.is_tenant(tenant) {
        return Err(aadsts(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90002,
            format!(
                "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant."
            ),
        ));
    }
    if !req.content_type.to_ascii_lowercase().starts_with("application/x-www-form-urlencoded") {
        // Entra reads only form bodies; anything else looks like a body without parameters.
        return Err(missing("grant_type"));
    }
    Ok(form_urlencoded::parse(req.body).into_owned().collect())
}

fn unknown_app(dir: &Directory, client_id: &str) -> Aadsts {
    let tenant_name = format!("{}.onmicrosoft.com", dir.config.tenant.name);
    aadsts(
        StatusCode::BAD_REQUEST,
        "unauthorized_client",
        700016,
        format!(
            "Application with identifier '{client_id}' was not found in the directory '{tenant_name}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant."
        ),
    )
}

fn issue(shared: &Shared, req: &TokenRequest<'_>) -> Result<Resp, Aadsts> {
    let dir = shared.dir();
    let form = tenant_and_form(&dir, req)?;
    let grant_type = field(&form, "grant_type").ok_or_else(|| missing("grant_type"))?;
    if grant_type != CLIENT_CREDENTIALS && grant_type != DEVICE_CODE && grant_type != REFRESH_TOKEN {
        return Err(aadsts(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            format!("The app requested an unsupported grant type '{grant_type}'."),
        ));
    }
    let client_id = field(&form, "client_id").ok_or_else(|| missing("client_id"))?;
    let Some(app) = dir.app(client_id) else {
        return Err(unknown_app(&dir, client_id));
    };
    match grant_type {
        DEVICE_CODE => return redeem_device_code(shared, &dir, app, &form),
        REFRESH_TOKEN => return redeem_refresh(shared, &dir, app, &form),
        _ => {}
    }
    let tenant_name = format!("{}.onmicrosoft.com", dir.config.tenant.name);
    let scope = field(&form, "scope").ok_or_else(|| missing("scope"))?;

    match (field(&form, "client_secret"), field(&form, "client_assertion")) {
        (Some(secret), _) => {
            let good = app.client_secret.as_deref().is_some_and(|s| secret_eq(s, secret));
            if !good {
                return Err(aadsts(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    7000215,
                    format!(
                        "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{}'.",
                        app.client_id
                    ),
                ));
            }
        }
        (None, Some(assertion)) => {
            if field(&form, "client_assertion_type") != Some(JWT_BEARER) {
                return Err(aadsts(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    7000219,
                    "'client_assertion_type' must be 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer'.".into(),
                ));
            }
            check_assertion(shared, &dir, app, req, assertion)?;
        }
        (None, None) => return Err(needs_credentials()),
    }

    // Client credentials take exactly one `<resource>/.default`.
    let scopes: Vec<&str> = scope.split_whitespace().collect();
    let resource = match scopes.as_slice() {
        [one] => one.strip_suffix("/.default"),
        _ => None,
    };
    let Some(resource) = resource else {
        return Err(aadsts(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            1002012,
            format!(
                "The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
            ),
        ));
    };
    let Some(audience) = Audience::from_resource(resource) else {
        return Err(aadsts(
            StatusCode::BAD_REQUEST,
            "invalid_resource",
            500011,
            format!(
                "The resource principal named {resource} was not found in the tenant named {tenant_name}. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You might have sent your authentication request to the wrong tenant."
            ),
        ));
    };

    let lifetime = dir.config.limits.token_lifetime_secs;
    let roles = roles_for(audience, &app.permissions);
    let grant = Grant {
        audience,
        subject: Subject::App { client_id: app.client_id.clone(), roles },
        expires_at: shared.now() + Duration::from_secs(lifetime),
    };
    let access_token = shared.tokens.lock().expect("tokens lock").issue(grant, &dir.config.tenant.id);
    let mut resp = json(
        StatusCode::OK,
        &json!({
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": access_token,
        }),
    );
    resp.headers_mut()
        .insert(hyper::header::CACHE_CONTROL, hyper::header::HeaderValue::from_static("no-store, no-cache"));
    Ok(resp)
}

fn needs_credentials() -> Aadsts {
    aadsts(
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        7000218,
        "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.".into(),
    )
}

/// The URLs an assertion's `aud` may name: this endpoint as the client reached it, and
/// login.microsoftonline.com's, for the tenant id and each accepted domain.
fn audiences(dir: &Directory, req: &TokenRequest<'_>) -> Vec<String> {
    let mut tenants = vec![dir.config.tenant.id.clone(), req.tenant.to_owned()];
    tenants.extend(dir.config.tenant.domains.iter().cloned());
    let mut hosts = vec!["login.microsoftonline.com".to_owned()];
    if let Some(h) = req.host {
        hosts.push(h.to_owned());
    }
    hosts.iter().flat_map(|h| tenants.iter().map(move |t| format!("https://{h}/{t}/oauth2/v2.0/token"))).collect()
}

fn check_assertion(
    shared: &Shared,
    dir: &Directory,
    app: &AppConfig,
    req: &TokenRequest<'_>,
    assertion: &str,
) -> Result<(), Aadsts> {
    let certs: Vec<RegisteredCert> = app.certificates.iter().filter_map(|p| RegisteredCert::from_pem(p).ok()).collect();
    let now = shared.now();
    let docs = "Review the documentation at https://docs.microsoft.com/azure/active-directory/develop/active-directory-certificate-credentials .";
    let invalid_client = |code: u32, message: String| aadsts(StatusCode::UNAUTHORIZED, "invalid_client", code, message);
    match crate::assertion::verify(assertion, &app.client_id, &certs, &audiences(dir, req), now) {
        Ok(()) => Ok(()),
        // GUESS: Entra's status for a JWT it cannot parse.
        Err(AssertionError::Malformed) => {
            Err(aadsts(StatusCode::BAD_REQUEST, "invalid_request", 50027, "JWT token is invalid or malformed.".into()))
        }
        // GUESS: code and text.
        Err(AssertionError::Algorithm(alg)) => Err(invalid_client(
            5002738,
            format!(
                "Invalid JWT token. '{alg}' is not a supported signature algorithm. Supported signing algorithms are: 'RS256, PS256'"
            ),
        )),
        Err(AssertionError::UnknownKey(thumbprint)) => Err(invalid_client(
            700027,
            format!(
                "The certificate with identifier used to sign the client assertion is not registered on application. [Reason - The key was not found., Thumbprint of key used by client: '{thumbprint}', Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id '{}'. Review the documentation at https://docs.microsoft.com/en-us/graph/deployments if you are using national clouds.]",
                app.client_id
            ),
        )),
        Err(AssertionError::Signature) => {
            Err(invalid_client(700027, "Client assertion failed signature validation.".into()))
        }
        Err(AssertionError::Time(now, nbf, exp)) => {
            let t = |s: u64| {
                DateTime::<Utc>::from(std::time::UNIX_EPOCH + Duration::from_secs(s))
                    .format("%Y-%m-%dT%H:%M:%S%.3fZ")
                    .to_string()
            };
            Err(invalid_client(
                700024,
                format!(
                    "Client assertion is not within its valid time range. Current time: {}, assertion valid from {}, expiry time of assertion {}. {docs}",
                    t(now),
                    t(nbf),
                    t(exp)
                ),
            ))
        }
        Err(AssertionError::Audience) => {
            Err(invalid_client(700023, format!("Client assertion audience claim does not match Realm issuer. {docs}")))
        }
        Err(AssertionError::Issuer) => Err(invalid_client(
            700021,
            format!("Client assertion application identifier doesn't match 'client_id' parameter. {docs}"),
        )),
    }
}

/// Delegated scopes → (resource, permissions, offline_access asked). All permissions must be
/// on one resource, as Entra issues a token for one resource at a time.
fn delegated_scopes(scope: &str) -> Result<(Audience, Vec<String>, bool), Aadsts> {
    let invalid = || {
        aadsts(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            70011,
            format!(
                "The provided request must include a 'scope' input parameter. The provided value for the input parameter 'scope' is not valid. The scope {scope} is not valid."
            ),
        )
    };
    let mut audience = None;
    let mut perms = Vec::new();
    let mut offline = false;
    for s in scope.split_whitespace() {
        if OIDC_SCOPES.contains(&s.to_ascii_lowercase().as_str()) {
            offline |= s.eq_ignore_ascii_case("offline_access");
            continue;
        }
        let (resource, perm) = s.rsplit_once('/').ok_or_else(invalid)?;
        let a = Audience::from_resource(resource).ok_or_else(invalid)?;
        if audience.is_some_and(|x| x != a) {
            return Err(invalid());
        }
        audience = Some(a);
        if perm != ".default" {
            perms.push(perm.to_owned());
        }
    }
    Ok((audience.ok_or_else(invalid)?, perms, offline))
}

fn start_device(shared: &Shared, req: &TokenRequest<'_>) -> Result<Resp, Aadsts> {
    let dir = shared.dir();
    let form = tenant_and_form(&dir, req).map_err(|e| if e.code == 900144 { missing("client_id") } else { e })?;
    let client_id = field(&form, "client_id").ok_or_else(|| missing("client_id"))?;
    let Some(app) = dir.app(client_id) else {
        return Err(unknown_app(&dir, client_id));
    };
    let scope = field(&form, "scope").ok_or_else(|| missing("scope"))?;
    let (audience, scopes, offline) = delegated_scopes(scope)?;
    let lifetime = dir.config.limits.device_code_lifetime_secs;
    let (device_code, user_code) = shared.tokens.lock().expect("tokens lock").start_device(DeviceCode {
        client_id: app.client_id.clone(),
        user_code: String::new(),
        audience,
        scopes,
        offline,
        expires_at: shared.now() + Duration::from_secs(lifetime),
        signed_in: None,
    });
    Ok(json(
        StatusCode::OK,
        &json!({
            "user_code": user_code,
            "device_code": device_code,
            "verification_uri": VERIFICATION_URI,
            "expires_in": lifetime,
            "interval": POLL_INTERVAL,
            "message": format!("To sign in, use a web browser to open the page {VERIFICATION_URI} and enter the code {user_code} to authenticate."),
        }),
    ))
}

/// Public clients only: a confidential app would have to send its secret, which is what Entra
/// answers when "Allow public client flows" is off.
fn require_public(app: &AppConfig) -> Result<(), Aadsts> {
    if app.public_client { Ok(()) } else { Err(needs_credentials()) }
}

fn redeem_device_code(shared: &Shared, dir: &Directory, app: &AppConfig, form: &Form) -> Result<Resp, Aadsts> {
    let code = field(form, "device_code").ok_or_else(|| missing("device_code"))?;
    require_public(app)?;
    let now = shared.now();
    let polled = shared.tokens.lock().expect("tokens lock").poll(code, &app.client_id, now);
    let bad =
        |error: &'static str, code: u32, message: &str| aadsts(StatusCode::BAD_REQUEST, error, code, message.into());
    match polled {
        Poll::Pending => Err(bad(
            "authorization_pending",
            70016,
            "OAuth 2.0 device flow error. Authorization is pending. Continue polling.",
        )),
        // GUESS: the AADSTS numbers of these two.
        Poll::Expired => Err(bad(
            "expired_token",
            70020,
            "The provided value for the input parameter 'device_code' is not valid. This device code has expired.",
        )),
        Poll::Unknown => Err(bad(
            "bad_verification_code",
            70000,
            "The provided value for the input parameter 'device_code' is not valid.",
        )),
        Poll::SignedIn(d) => {
            let upn = d.signed_in.clone().unwrap_or_default();
            Ok(delegated_tokens(shared, dir, &app.client_id, &upn, d.audience, d.scopes, d.offline))
        }
    }
}

fn redeem_refresh(shared: &Shared, dir: &Directory, app: &AppConfig, form: &Form) -> Result<Resp, Aadsts> {
    let token = field(form, "refresh_token").ok_or_else(|| missing("refresh_token"))?;
    require_public(app)?;
    let now = shared.now();
    let redeemed = shared.tokens.lock().expect("tokens lock").redeem_refresh(token, &app.client_id, now);
    let invalid_grant = |code: u32, message: String| aadsts(StatusCode::BAD_REQUEST, "invalid_grant", code, message);
    match redeemed {
        Ok(g) => {
            // A scope on the refresh request may narrow, not widen (GUESS: silently ignored
            // when it names the same resource).
            Ok(delegated_tokens(shared, dir, &app.client_id, &g.upn, g.audience, g.scopes, true))
        }
        Err(RefreshError::Expired(issued)) => {
            let issued: DateTime<Utc> = issued.into();
            Err(invalid_grant(
                700082,
                format!(
                    "The refresh token has expired due to inactivity. The token was issued on {}.{:07}Z and was inactive for {}.00:00:00.",
                    issued.format("%Y-%m-%dT%H:%M:%S"),
                    issued.timestamp_subsec_nanos() / 100,
                    dir.config.limits.refresh_token_lifetime_secs / 86_400
                ),
            ))
        }
        // GUESS: Entra's answer to a rotated-out token (the reference says they rotate; what a
        // replay gets is not documented).
        Err(RefreshError::Redeemed) => Err(invalid_grant(
            50173,
            "The provided grant has expired due to it being revoked, a fresh auth token is needed. The user might have changed or reset their password.".into(),
        )),
        Err(RefreshError::OtherClient) => {
            Err(invalid_grant(70000, "Provided grant is invalid or malformed.".into()))
        }
        Err(RefreshError::Unknown) => {
            Err(invalid_grant(9002313, "Invalid request. Request is malformed or invalid.".into()))
        }
    }
}

fn delegated_tokens(
    shared: &Shared,
    dir: &Directory,
    client_id: &str,
    upn: &str,
    audience: Audience,
    scopes: Vec<String>,
    offline: bool,
) -> Resp {
    let now = shared.now();
    let lifetime = dir.config.limits.token_lifetime_secs;
    let resource = match audience {
        Audience::Exchange => "https://outlook.office.com",
        Audience::Graph => "https://graph.microsoft.com",
    };
    let scope_text = scopes.iter().map(|s| format!("{resource}/{s}")).collect::<Vec<_>>().join(" ");
    let mut tokens = shared.tokens.lock().expect("tokens lock");
    let access_token = tokens.issue(
        Grant {
            audience,
            subject: Subject::User { upn: upn.to_owned(), scopes: scopes.clone(), client_id: client_id.to_owned() },
            expires_at: now + Duration::from_secs(lifetime),
        },
        &dir.config.tenant.id,
    );
    let mut body = json!({
        "token_type": "Bearer",
        "scope": scope_text,
        "expires_in": lifetime,
        "ext_expires_in": lifetime,
        "access_token": access_token,
    });
    if offline {
        let refresh = tokens.issue_refresh(RefreshGrant {
            client_id: client_id.to_owned(),
            upn: upn.to_owned(),
            audience,
            scopes,
            issued_at: now,
            expires_at: now + Duration::from_secs(dir.config.limits.refresh_token_lifetime_secs),
        });
        body["refresh_token"] = json!(refresh);
    }
    let mut resp = json(StatusCode::OK, &body);
    resp.headers_mut()
        .insert(hyper::header::CACHE_CONTROL, hyper::header::HeaderValue::from_static("no-store, no-cache"));
    resp
}
