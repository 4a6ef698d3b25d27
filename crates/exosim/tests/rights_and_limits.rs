//! SendAs rights (reference §6) and the per-mailbox limits (reference §1a, §4), driven by
//! smtplib; the clock is the simulator's manual clock, so nothing waits for real time.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

fn authed_send(user: &str, password: &str, from: &str, header_from: &str) -> Value {
    let mut s = login(user, password);
    s.push(json!(["mail", from]));
    s.push(json!(["rcpt", "x@example.net"]));
    s.push(json!(["data", message(header_from, "x@example.net")]));
    json!(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_as_is_refused_at_end_of_data_after_250s() {
    let s = start_default().await;
    let u = ("scanner@contoso.com", "Scan-2-Mail!");
    // (MAIL FROM, From header, accepted?)
    let table = [
        ("scanner@contoso.com", "scanner@contoso.com", true),
        // SendAs on reception@ was granted to the scanner's user.
        ("reception@contoso.com", "Reception <reception@contoso.com>", true),
        ("ceo@contoso.com", "ceo@contoso.com", false),
        // The envelope is fine but the From header is not.
        ("scanner@contoso.com", "CEO <ceo@contoso.com>", false),
        // A proxy address needs SendFromAliasEnabled.
        ("copier@contoso.com", "copier@contoso.com", false),
        ("someone@gmail.com", "someone@gmail.com", false),
    ];
    for (from, header, ok) in table {
        let r = s.smtp(authed_send(u.0, u.1, from, header)).await;
        assert_eq!(r[5].0, 250, "MAIL {from}: {r:?}");
        assert_eq!(r[6].0, 250, "RCPT for {from}: {r:?}");
        if ok {
            assert_eq!(r[7].0, 250, "{from}/{header}: {r:?}");
        } else {
            expect(&r[7], 550, "5.7.60 SMTP; Client does not have permissions to send as this sender");
        }
    }
    assert_eq!(s.sim.messages().len(), 2);

    s.sim.update_config(|c| c.tenant.send_from_aliases = true).unwrap();
    let r = s.smtp(authed_send(u.0, u.1, "copier@contoso.com", "copier@contoso.com")).await;
    assert_eq!(r[7].0, 250, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_as_denied_can_be_5_2_252() {
    let s = start(&tenant("send_as_denied = \"5.2.252\"", "")).await;
    let r = s.smtp(authed_send("scanner@contoso.com", "Scan-2-Mail!", "ceo@contoso.com", "ceo@contoso.com")).await;
    expect(
        &r[7],
        554,
        "5.2.252 SendAsDenied; scanner@contoso.com not allowed to send as ceo@contoso.com; STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied; Failed to process message due to a permanent exception with message Cannot submit message.",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_header_rules() {
    let s = start_default().await;
    let mut script = login("scanner@contoso.com", "Scan-2-Mail!");
    script.push(json!([
        "send",
        "scanner@contoso.com",
        ["x@example.net"],
        "From: scanner@contoso.com, reception@contoso.com\r\n\r\nx\r\n"
    ]));
    script.push(json!(["send", "scanner@contoso.com", ["x@example.net"], "From: not an address\r\n\r\nx\r\n"]));
    let r = s.smtp(json!(script)).await;
    expect(&r[5], 550, "5.1.20 Multiple From addresses are not allowed without Sender address");
    expect(
        &r[6],
        550,
        "5.7.512 Access denied, message must be RFC 5322 section 3.6.2 compliant and include a valid From address",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fourth_concurrent_connection_gets_432() {
    let s = start_default().await;
    // Three sessions authenticated for scanner@ stay open; each has sent QUIT-less scripts,
    // so hold them with a python process that waits.
    let hold = r#"
import smtplib, ssl, sys, json
host, port, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3]
conns = []
out = []
for i in range(4):
    s = smtplib.SMTP(host, port)
    s.ehlo(); s.starttls(context=ssl.create_default_context(cafile=ca)); s.ehlo()
    try:
        out.append(list(s.login("scanner@contoso.com", "Scan-2-Mail!")))
    except smtplib.SMTPAuthenticationError as e:
        out.append([e.smtp_code, e.smtp_error.decode()])
    conns.append(s)
conns[0].quit()
s = smtplib.SMTP(host, port)
s.ehlo(); s.starttls(context=ssl.create_default_context(cafile=ca)); s.ehlo()
out.append(list(s.login("scanner@contoso.com", "Scan-2-Mail!")))
print(json.dumps([[c, m if isinstance(m, str) else m.decode()] for c, m in out]))
"#;
    let addr = s.sim.smtp_addr();
    let out = tokio::process::Command::new("python3")
        .args(["-c", hold, &addr.ip().to_string(), &addr.port().to_string()])
        .arg(s.ca.path())
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: Vec<(i64, String)> = serde_json::from_slice(&out.stdout).unwrap();
    for got in &r[..3] {
        assert_eq!(got.0, 235);
    }
    expect(
        &r[3],
        432,
        "4.3.2 Concurrent connections limit exceeded. Visit https://aka.ms/concurrent_sending for more information.",
    );
    // Once one session ends, a new one is let in.
    assert_eq!(r[4].0, 235);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_reject_mode_answers_451_4_7_500() {
    let s = start(&tenant("", "[limits]\nrate_limit_action = \"reject\"")).await;
    s.sim.manual_clock();
    let send =
        json!(["send", "scanner@contoso.com", ["x@example.net"], message("scanner@contoso.com", "x@example.net")]);
    let mut script = login("scanner@contoso.com", "Scan-2-Mail!");
    script.push(json!(["repeat", 30, [send]]));
    script.push(send.clone());
    let r = s.smtp(json!(script)).await;
    assert_eq!(r[5].0, 250, "30th message: {r:?}");
    expect(&r[6], 451, "4.7.500 Server busy. Please try again later from [127.0.0.1]. (S77719)");
    assert_eq!(s.sim.messages().len(), 30);
    // A minute later the mailbox may send again.
    s.sim.advance(Duration::from_secs(60));
    let mut script = login("scanner@contoso.com", "Scan-2-Mail!");
    script.push(send);
    let r = s.smtp(json!(script)).await;
    assert_eq!(r[5].0, 250, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_delays_the_31st_message_until_the_clock_moves() {
    let s = start_default().await;
    s.sim.manual_clock();
    let send =
        json!(["send", "scanner@contoso.com", ["x@example.net"], message("scanner@contoso.com", "x@example.net")]);
    let mut script = login("scanner@contoso.com", "Scan-2-Mail!");
    script.push(json!(["repeat", 31, [send]]));
    let client = {
        let script = json!(script);
        let s = &s;
        async move { s.smtp(script).await }
    };
    let driver = async {
        // The 31st message is now held; nothing moves until the clock does.
        s.sim.wait_for_stats(|st| st.rate_delayed_now == 1).await;
        assert_eq!(s.sim.messages().len(), 30);
        s.sim.advance(Duration::from_secs(60));
    };
    let (r, ()) = tokio::join!(client, driver);
    assert_eq!(r[5].0, 250, "{r:?}");
    assert_eq!(s.sim.messages().len(), 31);
    assert_eq!(s.sim.stats().rate_delayed_total, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_recipient_quota_is_a_sliding_window() {
    // The quota is lowered to keep the test short; the rule is the same at 10,000.
    let s = start(&tenant("", "[limits]\nrecipients_per_day = 5")).await;
    s.sim.manual_clock();
    let rcpts = |n: usize| -> Vec<String> { (0..n).map(|i| format!("r{i}@example.net")).collect() };
    let send =
        |n: usize| json!(["send", "scanner@contoso.com", rcpts(n), message("scanner@contoso.com", "r0@example.net")]);
    let mut script = login("scanner@contoso.com", "Scan-2-Mail!");
    script.push(send(3));
    script.push(send(3));
    script.push(send(2));
    let r = s.smtp(json!(script)).await;
    assert_eq!(r[5].0, 250);
    expect(&r[6], 554, "5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException");
    assert_eq!(r[7].0, 250, "{r:?}");
    // 23 h 59 min later the first messages still count; at 24 h they leave the window.
    s.sim.advance(Duration::from_secs(24 * 3600 - 60));
    let mut script = login("scanner@contoso.com", "Scan-2-Mail!");
    script.push(send(1));
    let r = s.smtp(json!(script.clone())).await;
    expect(&r[5], 554, "5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException");
    s.sim.advance(Duration::from_secs(60));
    let r = s.smtp(json!(script)).await;
    assert_eq!(r[5].0, 250, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipients_per_message_500() {
    let s = start_default().await;
    let mut script = login("scanner@contoso.com", "Scan-2-Mail!");
    script.push(json!(["mail", "scanner@contoso.com"]));
    let rcpt = json!(["rcpt", "x@example.net"]);
    script.push(json!(["repeat", 500, [rcpt]]));
    script.push(rcpt.clone());
    let r = s.smtp(json!(script)).await;
    assert_eq!(r[6], (250, "2.1.5 Recipient OK".to_owned()));
    expect(&r[7], 452, "4.5.3 Too many recipients");

    // The other answer: all RCPTs accepted, the message refused at the end of DATA.
    let s = start(&tenant("", "[limits]\nrecipient_limit_reply = \"data\"\nrecipients_per_message = 3")).await;
    let mut script = login("scanner@contoso.com", "Scan-2-Mail!");
    script.push(json!([
        "send",
        "scanner@contoso.com",
        ["a@x.net", "b@x.net", "c@x.net", "d@x.net"],
        message("scanner@contoso.com", "a@x.net")
    ]));
    let r = s.smtp(json!(script)).await;
    expect(&r[5], 550, "5.5.3 RESOLVER.ADR.RecipLimit; too many recipients");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_size_limit() {
    let s = start(&tenant("", "[limits]\nmax_send_size = 1000")).await;
    let big = format!("From: scanner@contoso.com\r\n\r\n{}\r\n", "x".repeat(2000));
    let mut script = login("scanner@contoso.com", "Scan-2-Mail!");
    script.push(json!(["cmd", "MAIL FROM:<scanner@contoso.com> SIZE=5000"]));
    script.push(json!(["send", "scanner@contoso.com", ["x@example.net"], big]));
    let r = s.smtp(json!(script)).await;
    expect(&r[5], 552, "5.3.4 Message size exceeds fixed maximum message size");
    expect(&r[6], 552, "5.3.4 Message size exceeds fixed maximum message size");
    assert!(s.sim.messages().is_empty());
}
