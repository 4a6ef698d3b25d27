//! The token endpoint, like `login.microsoftonline.com/{tenant}/oauth2/v2.0/token`: the client
//! credentials grant with a client secret (reference §2), and Entra ID's AADSTS errors.
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
use crate::sim::Shared;
use crate::tokens::{Audience, Grant, Subject, random_guid, roles_for, secret_eq};

const CLIENT_CREDENTIALS: &str = "client_credentials";
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

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

pub(super) fn token(shared: &Shared, tenant: &str, content_type: &str, body: &[u8]) -> Resp {
    match issue(shared, tenant, content_type, body) {
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

fn issue(shared: &Shared, tenant: &str, content_type: &str, body: &[u8]) -> Result<Resp, Aadsts> {
    let dir = shared.dir();
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
    if !content_type.to_ascii_lowercase().starts_with("application/x-www-form-urlencoded") {
        // Entra reads only form bodies; anything else looks like a body without parameters.
        return Err(missing("grant_type"));
    }
    let form: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
    let field = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty());
    let grant_type = field("grant_type").ok_or_else(|| missing("grant_type"))?;
    if grant_type != CLIENT_CREDENTIALS {
        return Err(aadsts(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            format!("The app requested an unsupported grant type '{grant_type}'."),
        ));
    }
    let client_id = field("client_id").ok_or_else(|| missing("client_id"))?;
    let tenant_name = format!("{}.onmicrosoft.com", dir.config.tenant.name);
    let Some(app) = dir.app(client_id) else {
        return Err(aadsts(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            format!(
                "Application with identifier '{client_id}' was not found in the directory '{tenant_name}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant."
            ),
        ));
    };
    let scope = field("scope").ok_or_else(|| missing("scope"))?;

    match (field("client_secret"), field("client_assertion")) {
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
        (None, Some(_)) => {
            if field("client_assertion_type") != Some(JWT_BEARER) {
                return Err(aadsts(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    7000219,
                    "'client_assertion_type' must be 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer'.".into(),
                ));
            }
            // Certificate credentials are not simulated yet: no app has a registered
            // certificate, which is what Entra says when the signing certificate is unknown.
            return Err(aadsts(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                700027,
                "The certificate with identifier used to sign the client assertion is not registered on application."
                    .into(),
            ));
        }
        (None, None) => {
            return Err(aadsts(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.".into(),
            ));
        }
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
    let access_token = shared.tokens.lock().expect("tokens lock").issue(grant);
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
