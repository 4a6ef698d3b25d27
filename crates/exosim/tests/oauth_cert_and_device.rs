//! Certificate credentials (client assertions signed with the `openssl` CLI) and the
//! device-code flow with rotating refresh tokens, at the token endpoint (curl), and the
//! delegated tokens on the submission endpoint (smtplib). Reference §2.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::*;
use serde_json::{Value, json};

const CERT_APP: &str = "3c1d2e4f-0000-4a4a-8b8b-123456789abc";
const PUBLIC_APP: &str = "9e8d7c6b-1111-4b4b-9c9c-abcdef012345";
const SMTP_SCOPE: &str = "https://outlook.office365.com/.default";
const DELEGATED_SCOPE: &str = "https://outlook.office.com/SMTP.Send offline_access";

/// A self-signed RSA certificate and its key, made with openssl: (cert PEM, key path).
fn rsa_cert(dir: &Path, name: &str) -> (String, String) {
    let key = dir.join(format!("{name}.key"));
    let cert = dir.join(format!("{name}.pem"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj"])
        .arg(format!("/CN={name}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (std::fs::read_to_string(&cert).unwrap(), key.display().to_string())
}

fn der(pem: &str) -> Vec<u8> {
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD.decode(b64).unwrap()
}

enum Alg {
    Rs256,
    Ps256,
}

/// header.claims signed by `key` with openssl; the thumbprint of `cert_pem` in the header
/// (`x5t` SHA-1 for RS256, `x5t#S256` for PS256, as MSAL does).
fn assertion(dir: &Path, alg: Alg, cert_pem: &str, key: &str, claims: &Value) -> String {
    let cert = der(cert_pem);
    let header = match alg {
        Alg::Rs256 => json!({"alg": "RS256", "typ": "JWT", "x5t": URL_SAFE_NO_PAD.encode(
            ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &cert))}),
        Alg::Ps256 => json!({"alg": "PS256", "typ": "JWT", "x5t#S256": URL_SAFE_NO_PAD.encode(
            ring::digest::digest(&ring::digest::SHA256, &cert))}),
    };
    let input =
        format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
    let file = dir.join("signing-input");
    std::fs::write(&file, &input).unwrap();
    let mut cmd = Command::new("openssl");
    cmd.args(["dgst", "-sha256", "-sign", key]);
    if matches!(alg, Alg::Ps256) {
        cmd.args(["-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:32"]);
    }
    let out = cmd.arg(&file).output().expect("openssl runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(out.stdout))
}

fn apps(cert_pem: &str) -> String {
    format!(
        r#"
[[apps]]
client_id = "{CERT_APP}"
name = "relay with a certificate"
certificates = ['''
{cert_pem}''']
permissions = ["SMTP.SendAsApp"]
full_access = ["relay@contoso.com"]

[[apps]]
client_id = "{PUBLIC_APP}"
name = "printer setup tool"
public_client = true
"#
    )
}

async fn post_form(s: &Sim, path: &str, fields: &[(&str, &str)]) -> (u16, Value) {
    let args: Vec<String> =
        fields.iter().flat_map(|(k, v)| ["--data-urlencode".to_owned(), format!("{k}={v}")]).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (status, body) = s.curl("POST", path, &args).await;
    (status, serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}")))
}

fn token_path() -> String {
    format!("/{TENANT_ID}/oauth2/v2.0/token")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_assertions_table() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = rsa_cert(dir.path(), "registered");
    let (other_cert, other_key) = rsa_cert(dir.path(), "unregistered");
    let s = start(&tenant("", &apps(&cert))).await;
    let now = s.sim.now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let our_url = format!("{}{}", s.sim.https_base(), token_path());
    let claims = |aud: &str, iss: &str, nbf: u64, exp: u64| json!({"aud": aud, "iss": iss, "sub": iss, "jti": format!("jti-{nbf}-{exp}-{aud}"), "nbf": nbf, "exp": exp});
    let good = claims(&our_url, CERT_APP, now - 60, now + 600);
    let login_url = format!("https://login.microsoftonline.com/{TENANT_ID}/oauth2/v2.0/token");
    let d = dir.path();
    // (assertion, status, AADSTS code; 0 = success)
    let table: Vec<(&str, String, u16, u64)> = vec![
        ("RS256 with x5t", assertion(d, Alg::Rs256, &cert, &key, &good), 200, 0),
        ("PS256 with x5t#S256", assertion(d, Alg::Ps256, &cert, &key, &good), 200, 0),
        (
            "aud = login.microsoftonline.com",
            assertion(d, Alg::Rs256, &cert, &key, &claims(&login_url, CERT_APP, now, now + 600)),
            200,
            0,
        ),
        ("unregistered certificate", assertion(d, Alg::Rs256, &other_cert, &other_key, &good), 401, 700027),
        ("registered thumbprint, other key", assertion(d, Alg::Rs256, &cert, &other_key, &good), 401, 700027),
        (
            "expired",
            assertion(d, Alg::Rs256, &cert, &key, &claims(&our_url, CERT_APP, now - 3600, now - 1200)),
            401,
            700024,
        ),
        (
            "not yet valid",
            assertion(d, Alg::Rs256, &cert, &key, &claims(&our_url, CERT_APP, now + 3600, now + 4200)),
            401,
            700024,
        ),
        (
            "wrong audience",
            assertion(d, Alg::Rs256, &cert, &key, &claims("https://example.com/token", CERT_APP, now, now + 600)),
            401,
            700023,
        ),
        ("wrong issuer", assertion(d, Alg::Rs256, &cert, &key, &claims(&our_url, APP_ID, now, now + 600)), 401, 700021),
        ("not a JWT", "not.a.jwt".to_owned(), 400, 50027),
    ];
    for (what, jwt, status, code) in table {
        let (got, v) = post_form(
            &s,
            &token_path(),
            &[
                ("client_id", CERT_APP),
                ("scope", SMTP_SCOPE),
                ("grant_type", "client_credentials"),
                ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
                ("client_assertion", &jwt),
            ],
        )
        .await;
        assert_eq!(got, status, "{what}: {v}");
        if code == 0 {
            assert_eq!(v["token_type"], "Bearer", "{what}");
            let r = s
                .smtp(json!([
                    ["connect"],
                    ["ehlo"],
                    ["starttls"],
                    ["ehlo"],
                    ["xoauth2", "relay@contoso.com", v["access_token"].as_str().unwrap()]
                ]))
                .await;
            assert_eq!(r[4].0, 235, "{what}: {r:?}");
        } else {
            assert_eq!(v["error_codes"], json!([code]), "{what}: {v}");
            let desc = v["error_description"].as_str().unwrap();
            assert!(desc.starts_with(&format!("AADSTS{code}: ")), "{what}: {desc}");
        }
    }
}

async fn device_code(s: &Sim, client_id: &str) -> Value {
    let (status, v) = post_form(
        s,
        &format!("/{TENANT_ID}/oauth2/v2.0/devicecode"),
        &[("client_id", client_id), ("scope", DELEGATED_SCOPE)],
    )
    .await;
    assert_eq!(status, 200, "{v}");
    v
}

async fn poll(s: &Sim, client_id: &str, device_code: &str) -> (u16, Value) {
    post_form(
        s,
        &token_path(),
        &[
            ("client_id", client_id),
            ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
            ("device_code", device_code),
        ],
    )
    .await
}

async fn refresh(s: &Sim, token: &str) -> (u16, Value) {
    post_form(
        s,
        &token_path(),
        &[
            ("client_id", PUBLIC_APP),
            ("grant_type", "refresh_token"),
            ("refresh_token", token),
            ("scope", DELEGATED_SCOPE),
        ],
    )
    .await
}

#[track_caller]
fn error(got: &(u16, Value), status: u16, error: &str, code: u64) {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(got.1["error"], error, "{}", got.1);
    assert_eq!(got.1["error_codes"], json!([code]), "{}", got.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_code_flow_and_rotating_refresh_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, _) = rsa_cert(dir.path(), "unused");
    let s = start(&tenant("", &apps(&cert))).await;
    let v = device_code(&s, PUBLIC_APP).await;
    let user_code = v["user_code"].as_str().unwrap().to_owned();
    let code = v["device_code"].as_str().unwrap().to_owned();
    assert_eq!(v["verification_uri"], "https://microsoft.com/devicelogin");
    assert_eq!((v["expires_in"].as_u64(), v["interval"].as_u64()), (Some(900), Some(5)));
    assert!(v["message"].as_str().unwrap().contains(&user_code), "{v}");

    error(&poll(&s, PUBLIC_APP, &code).await, 400, "authorization_pending", 70016);
    // The user signs in at "microsoft.com/devicelogin" (the admin API stands for it).
    let body = json!({"user_code": user_code, "mailbox": "scanner@contoso.com"}).to_string();
    let (status, text) = s.curl("POST", "/devicelogin", &["-d", &body]).await;
    assert_eq!(status, 200, "{text}");
    let (status, t) = poll(&s, PUBLIC_APP, &code).await;
    assert_eq!(status, 200, "{t}");
    assert_eq!(t["scope"], "https://outlook.office.com/SMTP.Send");
    let access = t["access_token"].as_str().unwrap().to_owned();
    let first_refresh = t["refresh_token"].as_str().unwrap().to_owned();
    // A device code is redeemed once.
    error(&poll(&s, PUBLIC_APP, &code).await, 400, "bad_verification_code", 70000);

    // The delegated token sends as the signed-in mailbox, and only it.
    let r = s
        .smtp(json!([
            ["connect"],
            ["ehlo"],
            ["starttls"],
            ["ehlo"],
            ["xoauth2", "scanner@contoso.com", access],
            ["send", "scanner@contoso.com", ["x@example.net"], message("scanner@contoso.com", "x@example.net")]
        ]))
        .await;
    assert_eq!(r[4].0, 235, "{r:?}");
    assert_eq!(r[5].0, 250, "{r:?}");
    assert_eq!(s.sim.messages()[0].identity, "scanner@contoso.com");
    let r =
        s.smtp(json!([["connect"], ["ehlo"], ["starttls"], ["ehlo"], ["xoauth2", "relay@contoso.com", access]])).await;
    expect(&r[4], 535, "5.7.3 Authentication unsuccessful");

    // Refresh tokens rotate: each use gives a new one and retires the old.
    let (status, t2) = refresh(&s, &first_refresh).await;
    assert_eq!(status, 200, "{t2}");
    let second_refresh = t2["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(second_refresh, first_refresh);
    error(&refresh(&s, &first_refresh).await, 400, "invalid_grant", 50173);
    error(&refresh(&s, "1.Aforged").await, 400, "invalid_grant", 9002313);
    let (status, t3) = refresh(&s, &second_refresh).await;
    assert_eq!(status, 200, "{t3}");
    // 90 days unused: expired.
    s.sim.advance(Duration::from_secs(90 * 24 * 3600));
    error(&refresh(&s, t3["refresh_token"].as_str().unwrap()).await, 400, "invalid_grant", 700082);

    // A device code nobody uses expires (library sign-in is too late then).
    let v = device_code(&s, PUBLIC_APP).await;
    s.sim.advance(Duration::from_secs(900));
    assert!(s.sim.device_login(v["user_code"].as_str().unwrap(), "scanner@contoso.com").is_err());
    error(&poll(&s, PUBLIC_APP, v["device_code"].as_str().unwrap()).await, 400, "expired_token", 70020);

    // Signed in through the library call.
    let v = device_code(&s, PUBLIC_APP).await;
    s.sim.device_login(v["user_code"].as_str().unwrap(), "reception@contoso.com").unwrap();
    let (status, t) = poll(&s, PUBLIC_APP, v["device_code"].as_str().unwrap()).await;
    assert_eq!(status, 200, "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_code_errors() {
    let s = start_default().await;
    // An app without "Allow public client flows" must authenticate itself.
    let v = device_code(&s, APP_ID).await;
    error(&poll(&s, APP_ID, v["device_code"].as_str().unwrap()).await, 401, "invalid_client", 7000218);
    let (status, v) = post_form(
        &s,
        &format!("/{TENANT_ID}/oauth2/v2.0/devicecode"),
        &[("client_id", "00000000-1111-2222-3333-444444444444"), ("scope", DELEGATED_SCOPE)],
    )
    .await;
    error(&(status, v), 400, "unauthorized_client", 700016);
    let (status, v) = post_form(
        &s,
        &format!("/{TENANT_ID}/oauth2/v2.0/devicecode"),
        &[("client_id", APP_ID), ("scope", "https://example.com/Foo.Bar")],
    )
    .await;
    error(&(status, v), 400, "invalid_scope", 70011);
    let (status, v) = post_form(&s, &format!("/{TENANT_ID}/oauth2/v2.0/devicecode"), &[("client_id", APP_ID)]).await;
    error(&(status, v), 400, "invalid_request", 900144);
    // Signing in with a code that does not exist, or as someone who is not a mailbox.
    let (status, _) =
        s.curl("POST", "/devicelogin", &["-d", r#"{"user_code":"NOPE","mailbox":"scanner@contoso.com"}"#]).await;
    assert_eq!(status, 400);
    let v = device_code(&s, APP_ID).await;
    let body = json!({"user_code": v["user_code"], "mailbox": "nobody@contoso.com"}).to_string();
    let (status, _) = s.curl("POST", "/devicelogin", &["-d", &body]).await;
    assert_eq!(status, 400);
}
