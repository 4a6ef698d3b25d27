//! The token endpoint (curl) and XOAUTH2 on the submission endpoint (smtplib), against the
//! reference (§2).

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

fn form(fields: &[(&str, &str)]) -> Vec<String> {
    fields.iter().flat_map(|(k, v)| ["--data-urlencode".to_owned(), format!("{k}={v}")]).collect()
}

async fn post_token(s: &Sim, tenant: &str, fields: &[(&str, &str)]) -> (u16, Value) {
    let args = form(fields);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (status, body) = s.curl("POST", &format!("/{tenant}/oauth2/v2.0/token"), &args).await;
    (status, serde_json::from_str(&body).expect("JSON body"))
}

const SMTP_SCOPE: &str = "https://outlook.office365.com/.default";
const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_success_shape() {
    let s = start_default().await;
    for tenant in [TENANT_ID, "contoso.onmicrosoft.com", "contoso.com"] {
        let (status, v) = post_token(
            &s,
            tenant,
            &[
                ("client_id", APP_ID),
                ("client_secret", APP_SECRET),
                ("scope", SMTP_SCOPE),
                ("grant_type", "client_credentials"),
            ],
        )
        .await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["token_type"], "Bearer");
        assert_eq!(v["expires_in"], 3599);
        assert!(v["access_token"].as_str().unwrap().len() > 40);
        // Client credentials never return a refresh token (reference §2).
        assert!(v.get("refresh_token").is_none());
    }
}

/// (tenant, fields, status, error, AADSTS code)
type Row<'a> = (&'a str, Vec<(&'a str, &'a str)>, u16, &'a str, u64);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aadsts_errors_table() {
    let s = start_default().await;
    let good = [
        ("client_id", APP_ID),
        ("client_secret", APP_SECRET),
        ("scope", SMTP_SCOPE),
        ("grant_type", "client_credentials"),
    ];
    let with = |k: &str, v: &'static str| -> Vec<(&'static str, &'static str)> {
        good.iter().map(|&(n, old)| if n == k { (n, v) } else { (n, old) }).collect()
    };
    let without =
        |k: &str| -> Vec<(&'static str, &'static str)> { good.iter().copied().filter(|&(n, _)| n != k).collect() };
    let table: Vec<Row> = vec![
        ("fabrikam.onmicrosoft.com", good.to_vec(), 400, "invalid_request", 90002),
        (TENANT_ID, with("client_secret", "wrong"), 401, "invalid_client", 7000215),
        (TENANT_ID, with("client_id", "00000000-1111-2222-3333-444444444444"), 400, "unauthorized_client", 700016),
        (TENANT_ID, without("client_secret"), 401, "invalid_client", 7000218),
        (TENANT_ID, without("client_id"), 400, "invalid_request", 900144),
        (TENANT_ID, without("scope"), 400, "invalid_request", 900144),
        (TENANT_ID, without("grant_type"), 400, "invalid_request", 900144),
        (TENANT_ID, with("grant_type", "password"), 400, "unsupported_grant_type", 70003),
        (TENANT_ID, with("scope", "https://outlook.office365.com/SMTP.Send"), 400, "invalid_scope", 1002012),
        (TENANT_ID, with("scope", "https://example.com/.default"), 400, "invalid_resource", 500011),
    ];
    for (tenant, fields, status, error, code) in table {
        let (got, v) = post_token(&s, tenant, &fields).await;
        assert_eq!(got, status, "{fields:?}: {v}");
        assert_eq!(v["error"], error, "{v}");
        assert_eq!(v["error_codes"], json!([code]), "{v}");
        let d = v["error_description"].as_str().unwrap();
        assert!(d.starts_with(&format!("AADSTS{code}: ")), "{d}");
        assert!(d.contains(" Trace ID: ") && d.contains(" Correlation ID: "), "{d}");
        for k in ["timestamp", "trace_id", "correlation_id", "error_uri"] {
            assert!(v[k].is_string(), "{k} missing in {v}");
        }
    }
}

fn xoauth2(user: &str, token: &str) -> Value {
    json!([["connect"], ["ehlo"], ["starttls"], ["ehlo"], ["xoauth2", user, token]])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xoauth2_with_app_token_sends_as_mailbox() {
    let s = start_default().await;
    let token = s.token(SMTP_SCOPE).await;
    let mut script = xoauth2("relay@contoso.com", &token).as_array().unwrap().clone();
    script.push(json!(["send", "relay@contoso.com", ["x@example.net"], message("relay@contoso.com", "x@example.net")]));
    // SendAs on scanner@ was granted to the app.
    script.push(json!([
        "send",
        "scanner@contoso.com",
        ["x@example.net"],
        message("scanner@contoso.com", "x@example.net")
    ]));
    let r = s.smtp(Value::Array(script)).await;
    assert_eq!(r[4], (235, "2.7.0 Authentication successful".to_owned()));
    assert_eq!(r[5].0, 250, "{r:?}");
    assert_eq!(r[6].0, 250, "{r:?}");
    let m = s.sim.messages();
    assert_eq!(m[0].identity, format!("app:{APP_ID}"));
    assert_eq!(m[0].mailbox, "relay@contoso.com");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xoauth2_without_initial_response_gets_empty_334() {
    let s = start_default().await;
    let token = s.token(SMTP_SCOPE).await;
    let blob = format!("user=relay@contoso.com\x01auth=Bearer {token}\x01\x01");
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(blob);
    let r = s.smtp(json!([["connect"], ["ehlo"], ["starttls"], ["ehlo"], ["cmd", "AUTH XOAUTH2"], ["cmd", b64]])).await;
    assert_eq!(r[4], (334, String::new()));
    assert_eq!(r[5].0, 235);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xoauth2_refusals() {
    let s = start_default().await;
    let smtp_token = s.token(SMTP_SCOPE).await;
    let graph_token = s.token(GRAPH_SCOPE).await;
    let cases = [
        // No FullAccess on this mailbox.
        ("ceo@contoso.com", smtp_token.as_str()),
        // A Graph token is not for Exchange.
        ("relay@contoso.com", graph_token.as_str()),
        // Not a token we issued.
        ("relay@contoso.com", "eyJ0eXAiOiJKV1Qi.forged"),
        // Unknown mailbox.
        ("nobody@contoso.com", smtp_token.as_str()),
    ];
    for (user, token) in cases {
        let r = s.smtp(xoauth2(user, token)).await;
        expect(&r[4], 535, "5.7.3 Authentication unsuccessful");
    }
    // The token expires on the simulator's clock.
    s.sim.advance(Duration::from_secs(3599));
    let r = s.smtp(xoauth2("relay@contoso.com", &smtp_token)).await;
    expect(&r[4], 535, "5.7.3 Authentication unsuccessful");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permission_and_service_principal_are_required() {
    let s = start_default().await;
    // Without SMTP.SendAsApp consented, the token carries no role for Exchange.
    s.sim.update_config(|c| c.apps[0].permissions = vec!["Mail.Send".into()]).unwrap();
    let token = s.token(SMTP_SCOPE).await;
    let r = s.smtp(xoauth2("relay@contoso.com", &token)).await;
    expect(&r[4], 535, "5.7.3 Authentication unsuccessful");
    // With the permission but no New-ServicePrincipal in Exchange.
    s.sim
        .update_config(|c| {
            c.apps[0].permissions = vec!["SMTP.SendAsApp".into()];
            c.apps[0].exchange_service_principal = false;
        })
        .unwrap();
    let token = s.token(SMTP_SCOPE).await;
    let r = s.smtp(xoauth2("relay@contoso.com", &token)).await;
    expect(&r[4], 535, "5.7.3 Authentication unsuccessful");
    // SMTP AUTH disabled applies to OAuth too.
    s.sim
        .update_config(|c| {
            c.apps[0].exchange_service_principal = true;
            c.tenant.smtp_auth_disabled = true;
        })
        .unwrap();
    let r = s.smtp(xoauth2("relay@contoso.com", &token)).await;
    expect(
        &r[4],
        535,
        "5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant. Visit https://aka.ms/smtp_auth_disabled for more information.",
    );
}
