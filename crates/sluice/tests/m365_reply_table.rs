//! The Microsoft reply table (`upstream::microsoft`), row by row against the simulator: each reply of the
//! reference is injected as a fault, exactly as Microsoft writes it, and sluice must take the row's
//! action: retry, back off, defer, split, bounce, or hold the route.

mod m365;

use exosim::{Fault, Step};
use m365::*;
use sluice::upstream::Disposition;

const RCPT: &str = "alice@contoso.com";

async fn world(kind: &str) -> World {
    start(&tenant("", ""), |sim, dir| upstream(kind, sim, dir), "hold_recheck = \"1h\"\n").await
}

async fn send(world: &World, from: &str, to: &[&str], subject: &str) {
    let reply = world.submit(from, to, &message(from, to[0], subject)).await;
    assert!(reply.starts_with("250"), "{reply}");
}

/// A configuration reply: the route is held with the reply as its reason, nothing is judged or bounced;
/// after a release, the mail goes out.
async fn holds(kind: &str, from: &str, step: Step, code: u16, text: &str) {
    let mut w = world(kind).await;
    w.sim.inject(Fault::reply(step, code, text).times(1));
    send(&w, from, &[RCPT], "held").await;
    w.wait_until(&format!("hold on {code} {text}"), |w| {
        // Held, and back in the queue (the worker puts it aside just after the hold begins).
        w.scheduler.hold_status().is_some_and(|h| h.held_messages == 1) && w.scheduler.waiting() == 1
    })
    .await;
    let hold = w.scheduler.hold_status().unwrap();
    let enhanced = text.split(' ').next().unwrap();
    assert!(hold.reason.contains(&format!("{code} {enhanced}")), "{code} {text}: {}", hold.reason);
    assert!(w.events.try_recv().is_err(), "{code} {text}: a held route must not judge its mail");
    assert_eq!(w.scheduler.waiting(), 1);
    assert!(w.sim.messages().is_empty());
    assert!(w.scheduler.release_hold());
    let events = w.next_events(1).await;
    assert_eq!(events[0].disposition, Disposition::Delivered, "{code} {text}: {events:?}");
    w.stop().await;
}

/// A reply for this message only: bounced, with a DSN, and the route keeps going.
async fn bounces(kind: &str, step: Step, code: u16, text: &str) {
    let mut w = world(kind).await;
    w.sim.inject(Fault::reply(step, code, text).times(1));
    send(&w, MAILBOX, &[RCPT], "bounced").await;
    let events = w.next_events(1).await;
    assert_eq!(events[0].disposition, Disposition::Permanent, "{code} {text}: {events:?}");
    assert!(events[0].bounce_id.is_some(), "{code} {text}: a DSN must be queued");
    assert!(w.scheduler.hold_status().is_none());
    w.stop().await;
}

/// A temporary reply: deferred, then delivered on the retry; never bounced, never held.
async fn retries(kind: &str, step: Step, code: u16, text: &str) {
    let mut w = world(kind).await;
    w.sim.inject(Fault::reply(step, code, text).times(1));
    send(&w, MAILBOX, &[RCPT], "retried").await;
    let events = w.next_events(2).await;
    assert_eq!(events[0].disposition, Disposition::Temporary, "{code} {text}: {events:?}");
    assert_eq!(events[1].disposition, Disposition::Delivered, "{code} {text}: {events:?}");
    assert!(w.scheduler.hold_status().is_none());
    w.stop().await;
}

#[tokio::test]
async fn throttling_is_retried() {
    retries(
        "m365-oauth",
        Step::EndOfData,
        451,
        "4.7.500 Server busy. Please try again later from [127.0.0.1]. (S77719)",
    )
    .await;
    retries(
        "m365-oauth",
        Step::Mail,
        451,
        "4.7.650 The mail server [127.0.0.1] has been temporarily rate limited due to IP reputation.",
    )
    .await;
    retries("m365-oauth", Step::Rcpt, 451, "4.7.850 throttled").await;
}

#[tokio::test]
async fn concurrent_connections_back_off_the_mailbox() {
    retries(
        "m365-oauth",
        Step::Mail,
        432,
        "4.3.2 Concurrent connections limit exceeded. Visit https://aka.ms/concurrent_sending for more information.",
    )
    .await;
}

#[tokio::test]
async fn graph_throttling_honours_retry_after() {
    retries("m365-graph", Step::GraphSendMail, 429, "ApplicationThrottled").await;
    retries("m365-graph", Step::GraphSendMail, 503, "ServiceNotAvailable").await;
}

#[tokio::test]
async fn submission_quota_defers_the_mailbox_without_bouncing() {
    let mut w = world("m365-oauth").await;
    w.sim.inject(Fault::reply(Step::EndOfData, 554, "5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to process message due to a permanent exception with message [BeginDiagnosticData]Cannot submit message.").times(1));
    send(&w, MAILBOX, &[RCPT], "quota").await;
    let events = w.next_events(1).await;
    assert_eq!(events[0].disposition, Disposition::Temporary, "{events:?}");
    assert!(events[0].bounce_id.is_none());
    assert_eq!(w.scheduler.waiting(), 1, "deferred for the window, still queued");
    assert!(w.scheduler.hold_status().is_none());
    w.stop().await;
}

#[tokio::test]
async fn too_many_recipients_at_rcpt_sends_the_rest_in_batches() {
    let mut w = world("m365-oauth").await;
    w.sim.inject(Fault::reply(Step::Rcpt, 452, "4.5.3 Too many recipients").times(1));
    send(&w, MAILBOX, &["alice@contoso.com", "bob@fabrikam.example"], "split").await;
    let events = w.next_events(3).await;
    let delivered = events.iter().filter(|e| e.disposition == Disposition::Delivered).count();
    assert_eq!(delivered, 2, "{events:?}");
    assert!(events.iter().all(|e| e.disposition != Disposition::Permanent), "{events:?}");
    w.stop().await;
}

#[tokio::test]
async fn recip_limit_at_end_of_data_splits_instead_of_bouncing() {
    let mut w = world("m365-oauth").await;
    w.sim.inject(Fault::reply(Step::EndOfData, 550, "5.5.3 RESOLVER.ADR.RecipLimit; too many recipients").times(1));
    send(&w, MAILBOX, &["alice@contoso.com", "bob@fabrikam.example"], "split").await;
    let events = w.next_events(4).await;
    assert!(events[..2].iter().all(|e| e.disposition == Disposition::Temporary), "{events:?}");
    assert!(events[2..].iter().all(|e| e.disposition == Disposition::Delivered), "{events:?}");
    // Two transactions of one recipient each.
    let stored = w.wait_messages(2).await;
    assert!(stored.iter().all(|m| m.rcpt_to.len() == 1), "{:?}", stored.iter().map(|m| &m.rcpt_to).collect::<Vec<_>>());
    w.stop().await;
}

#[tokio::test]
async fn message_and_recipient_failures_bounce() {
    bounces("m365-oauth", Step::EndOfData, 550, "5.7.60 SMTP; Client does not have permissions to send as this sender")
        .await;
    bounces(
        "m365-oauth",
        Step::EndOfData,
        554,
        "5.2.252 SendAsDenied; relay@contoso.com not allowed to send as ceo@contoso.com; STOREDRV.Submit",
    )
    .await;
    bounces("m365-oauth", Step::Rcpt, 550, "5.1.1 RESOLVER.ADR.RecipNotFound; not found").await;
    bounces(
        "m365-oauth",
        Step::Rcpt,
        550,
        "5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
    )
    .await;
    bounces(
        "m365-oauth",
        Step::EndOfData,
        550,
        "5.7.512 Access denied, message rejected as 'From' header is not RFC 5322 section 3.6.2 compliant",
    )
    .await;
    bounces(
        "m365-oauth",
        Step::EndOfData,
        550,
        "5.1.20 Multiple From addresses are not allowed without Sender address",
    )
    .await;
    bounces("m365-graph", Step::GraphSendMail, 403, "ErrorSendAsDenied").await;
}

#[tokio::test]
async fn one_refused_token_is_refreshed_not_held() {
    let mut w = world("m365-oauth").await;
    w.sim.inject(
        Fault::reply(Step::Auth, 535, "5.7.3 Authentication unsuccessful [SIM0P281CA0001.outlook.office365.com]")
            .times(1),
    );
    send(&w, MAILBOX, &[RCPT], "refresh").await;
    let events = w.next_events(1).await;
    assert_eq!(events[0].disposition, Disposition::Delivered, "{events:?}");
    assert!(w.scheduler.hold_status().is_none());
    w.stop().await;
}

#[tokio::test]
async fn authentication_refused_twice_holds() {
    let mut w = world("m365-oauth").await;
    w.sim.inject(
        Fault::reply(Step::Auth, 535, "5.7.3 Authentication unsuccessful [SIM0P281CA0001.outlook.office365.com]")
            .times(2),
    );
    send(&w, MAILBOX, &[RCPT], "held").await;
    w.wait_until("the hold", |w| w.scheduler.hold_status().is_some()).await;
    assert!(w.scheduler.hold_status().unwrap().reason.contains("535 5.7.3"));
    assert!(w.scheduler.release_hold());
    assert_eq!(w.next_events(1).await[0].disposition, Disposition::Delivered);
    w.stop().await;
}

#[tokio::test]
async fn configuration_replies_hold_the_route() {
    holds("m365-oauth", MAILBOX, Step::Auth, 535, "5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant. Visit https://aka.ms/smtp_auth_disabled for more information.").await;
    holds(
        "m365-basic",
        BASIC_MAILBOX,
        Step::Auth,
        550,
        "5.7.30 Basic authentication is not supported for Client Submission.",
    )
    .await;
    holds("m365-oauth", MAILBOX, Step::Mail, 530, "5.7.57 Client not authenticated to send mail.").await;
    holds("m365-oauth", MAILBOX, Step::Auth, 504, "5.7.4 Unrecognized authentication type").await;
    holds("m365-oauth", MAILBOX, Step::Mail, 451, "5.7.3 STARTTLS is required to send mail").await;
    holds("m365-oauth", MAILBOX, Step::Ehlo, 421, "4.7.66 TLS 1.0 and 1.1 are not supported. Please upgrade/update your client to support TLS 1.2. Visit https://aka.ms/smtp_auth_tls").await;
    holds(
        "m365-oauth",
        MAILBOX,
        Step::EndOfData,
        554,
        "5.2.2 mailbox full; STOREDRV.Submission.Exception:QuotaExceededException",
    )
    .await;
    holds("m365-oauth", MAILBOX, Step::EndOfData, 554, "5.2.0 STOREDRV.Submission.Exception:OutboundSpamException")
        .await;
    holds("m365-oauth", MAILBOX, Step::Mail, 550, "5.1.8 Access denied, bad outbound sender").await;
    holds(
        "m365-connector",
        "printer@contoso.com",
        Step::Rcpt,
        550,
        "5.7.606 Access denied, banned sending IP [127.0.0.1]",
    )
    .await;
    holds("m365-connector", "printer@contoso.com", Step::Rcpt, 550, "5.7.64 TenantAttribution; Relay Access Denied")
        .await;
    holds(
        "m365-connector",
        "printer@contoso.com",
        Step::Rcpt,
        550,
        "5.7.68 TenantInboundAttribution; Direct Send not allowed for this organization from unauthorized sources",
    )
    .await;
}
