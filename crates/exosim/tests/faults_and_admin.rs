//! Fault injection (library and HTTP admin API) and inspection (`GET /messages`).

mod common;

use common::*;
use exosim::{Fault, Step};
use serde_json::{Value, json};

fn send_script() -> Vec<Value> {
    let mut s = login("scanner@contoso.com", "Scan-2-Mail!");
    s.push(json!(["mail", "scanner@contoso.com"]));
    s.push(json!(["rcpt", "x@example.net"]));
    s.push(json!(["data", message("scanner@contoso.com", "x@example.net")]));
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripted_replies_for_the_next_n_commands() {
    let s = start_default().await;
    s.sim.inject(
        Fault::reply(Step::Mail, 451, "4.7.500 Server busy. Please try again later from [127.0.0.1]. (S77719)")
            .times(2),
    );
    s.sim.inject(
        Fault::reply(Step::EndOfData, 554, "5.2.0 STOREDRV.Submission.Exception:OutboundSpamException")
            .for_mailbox("scanner@contoso.com"),
    );
    let mut script = login("scanner@contoso.com", "Scan-2-Mail!");
    script.push(json!(["cmd", "MAIL FROM:<scanner@contoso.com>"]));
    script.push(json!(["cmd", "MAIL FROM:<scanner@contoso.com>"]));
    script.push(json!(["mail", "scanner@contoso.com"]));
    script.push(json!(["rcpt", "x@example.net"]));
    script.push(json!(["data", message("scanner@contoso.com", "x@example.net")]));
    script.push(json!([
        "send",
        "scanner@contoso.com",
        ["x@example.net"],
        message("scanner@contoso.com", "x@example.net")
    ]));
    let r = s.smtp(json!(script)).await;
    // Scripted replies are sent exactly as written, without the [HOST …] suffix.
    assert_eq!(r[5], (451, "4.7.500 Server busy. Please try again later from [127.0.0.1]. (S77719)".to_owned()));
    assert_eq!(r[6].0, 451);
    assert_eq!(r[7].0, 250);
    assert_eq!(r[9], (554, "5.2.0 STOREDRV.Submission.Exception:OutboundSpamException".to_owned()));
    // The next message goes through; only it is kept.
    assert_eq!(r[10].0, 250, "{r:?}");
    assert_eq!(s.sim.messages().len(), 1);
    assert!(s.sim.pending_faults().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_at_a_chosen_step_and_banner_faults() {
    let s = start_default().await;
    s.sim.inject(Fault::disconnect(Step::Rcpt));
    let r = s.smtp(json!(send_script())).await;
    assert_eq!(r[6], (-1, "disconnected".to_owned()), "{r:?}");
    assert!(s.sim.messages().is_empty());

    s.sim.inject(Fault::reply(Step::Connect, 421, "4.3.2 Service not available"));
    let r = s.smtp(json!([["connect"]])).await;
    assert_eq!(r[0].0, 421, "{r:?}");

    // A delay changes nothing but the timing.
    s.sim.inject(Fault::delay(Step::AnyCommand, 50).times(3));
    let r = s.smtp(json!(send_script())).await;
    assert_eq!(r[7].0, 250, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_faults_and_messages() {
    let s = start_default().await;
    let (status, body) = s
        .curl(
            "POST",
            "/faults",
            &[
                "-H",
                "Content-Type: application/json",
                "--data",
                r#"[{"step":"end-of-data","action":"reply","code":452,"text":"4.5.3 Too many recipients","times":1}]"#,
            ],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = s.curl("GET", "/faults", &[]).await;
    let pending: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(pending[0]["step"], "end-of-data");

    let mut script = send_script();
    script.push(json!([
        "send",
        "scanner@contoso.com",
        ["y@example.net"],
        message("scanner@contoso.com", "y@example.net")
    ]));
    let r = s.smtp(json!(script)).await;
    assert_eq!(r[7], (452, "4.5.3 Too many recipients".to_owned()));
    assert_eq!(r[8].0, 250);

    let (status, body) = s.curl("GET", "/messages", &[]).await;
    assert_eq!(status, 200);
    let list: Value = serde_json::from_str(&body).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1);
    let m = &list[0];
    assert_eq!(m["path"], "smtp-auth");
    assert_eq!(m["identity"], "scanner@contoso.com");
    assert_eq!(m["mail_from"], "scanner@contoso.com");
    assert_eq!(m["rcpt_to"], json!(["y@example.net"]));
    assert!(m["raw"].as_str().unwrap().starts_with("From: scanner@contoso.com\r\n"));

    let (status, _) = s.curl("DELETE", "/messages", &[]).await;
    assert_eq!(status, 200);
    assert!(s.sim.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_checks_the_example_tenant() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/tenant.toml");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_exosim"))
        .args(["--check", "--config", example])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "configuration ok\n");
}
