//! The session tested in memory: a script of client lines and expected replies, and a model-based property
//! test over random command sequences. No sockets: the session runs on a `tokio::io::duplex` pipe.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use smtp_wire::{Reply, parse_reply};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_util::sync::CancellationToken;

use super::session::{Session, SessionState};
use super::{ListenerContext, Shared};
use crate::config;
use crate::policy::Users;
use crate::scheduler::Scheduler;
use crate::spool::Spool;

const INSIDE: &str = "10.1.2.3:40000";
const OUTSIDE: &str = "192.0.2.77:40000";

struct Harness {
    _dir: tempfile::TempDir,
    ctx: Arc<ListenerContext>,
    scheduler: Scheduler,
}

fn harness(listener_extra: &str) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    // argon2 is slow in debug builds: hash once for all tests.
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let hash = HASH.get_or_init(|| crate::policy::users::hash_password("secret").unwrap());
    let text = format!(
        "hostname = \"relay.test\"\nspool_dir = \"{}\"\n[[listener]]\naddress = \"127.0.0.1:0\"\n\
         allowed_networks = [\"10.0.0.0/8\"]\nmax_recipients = 3\nmax_message_size = 2000\n{listener_extra}\n\
         [[user]]\nname = \"scanner\"\npassword_hash = \"{hash}\"\n\
         [upstream]\nhost = \"127.0.0.1\"\nport = 9\ntls = \"none\"\n",
        dir.path().join("spool").display()
    );
    let config = config::parse(&text, Path::new(".")).unwrap();
    let spool = Spool::open(&config.spool_dir).unwrap();
    let scheduler = Scheduler::new(spool.clone(), config.upstream.clone(), config.retry, config.hostname.clone());
    let shared = Arc::new(Shared {
        hostname: config.hostname.clone(),
        spool,
        scheduler: scheduler.clone(),
        users: Users::new(&config.users),
        policy: Arc::new(config.policy),
        abuse: crate::policy::abuse::Abuse::new(config.abuse),
        metrics: Arc::new(crate::metrics::Metrics::new()),
    });
    let ctx =
        Arc::new(ListenerContext { config: config.listeners[0].clone(), shared, shutdown: CancellationToken::new() });
    Harness { _dir: dir, ctx, scheduler }
}

struct Client {
    stream: DuplexStream,
    buf: Vec<u8>,
}

impl Client {
    fn start(h: &Harness, peer: &str) -> Client {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let peer: SocketAddr = peer.parse().unwrap();
        let state = SessionState::new(h.ctx.clone(), peer, None);
        tokio::spawn(async move {
            let _ = Session::new(server, state).run().await;
        });
        Client { stream: client, buf: Vec::new() }
    }

    async fn reply(&mut self) -> Reply {
        loop {
            if let Some((reply, used)) = parse_reply(&self.buf).unwrap() {
                self.buf.drain(..used);
                return reply;
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "session closed while a reply was expected");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> Reply {
        self.stream.write_all(bytes).await.unwrap();
        self.reply().await
    }
}

/// Runs a script: lines starting with "C: " are sent (CRLF appended), "S: " lines give the expected reply
/// prefix (code, or code and enhanced code and text start).
async fn script(h: &Harness, peer: &str, text: &str) {
    let mut client = Client::start(h, peer);
    let greeting = client.reply().await;
    assert_eq!(greeting.code, 220);
    let mut pending: Vec<String> = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(cmd) = line.strip_prefix("C: ") {
            pending.push(format!("{cmd}\r\n"));
        } else if let Some(expected) = line.strip_prefix("S: ") {
            let batch: String = pending.drain(..).collect();
            let reply = if batch.is_empty() { client.reply().await } else { client.send(batch.as_bytes()).await };
            let rendered = String::from_utf8(reply.to_bytes()).unwrap();
            assert!(rendered.starts_with(expected), "after {batch:?}: expected {expected:?}, got {rendered:?}");
        }
    }
}

#[tokio::test]
async fn relay_from_allowed_network() {
    let h = harness("");
    script(
        &h,
        INSIDE,
        "C: EHLO printer.lan
         S: 250-relay.test
         C: MAIL FROM:<scanner@example.com> SIZE=100
         S: 250 2.1.0
         C: RCPT TO:<boss@example.com>
         S: 250 2.1.5
         C: DATA
         S: 354
         C: Subject: scan
         C:
         C: ..leading dot
         C: .
         S: 250 2.0.0 Ok: queued as
         C: QUIT
         S: 221 2.0.0",
    )
    .await;
    assert_eq!(h.scheduler.waiting(), 1);
}

#[tokio::test]
async fn stranger_is_denied_at_rcpt_and_auth_needs_tls() {
    let h = harness("");
    script(
        &h,
        OUTSIDE,
        "C: EHLO bot
         S: 250-relay.test
         C: MAIL FROM:<a@example.com>
         S: 250 2.1.0
         C: RCPT TO:<victim@example.org>
         S: 554 5.7.1 <victim@example.org>: Relay access denied
         C: DATA
         S: 554 5.5.1
         C: RSET
         S: 250 2.0.0
         C: AUTH PLAIN AHNjYW5uZXIAc2VjcmV0
         S: 538 5.7.11",
    )
    .await;
    assert_eq!(h.scheduler.waiting(), 0);
}

#[tokio::test]
async fn plaintext_auth_when_explicitly_allowed() {
    let h = harness("insecure_allow_plaintext_auth = true");
    script(
        &h,
        OUTSIDE,
        "C: EHLO laptop
         S: 250-relay.test
         C: AUTH PLAIN AHNjYW5uZXIAd3Jvbmc=
         S: 535 5.7.8
         C: AUTH LOGIN
         S: 334 VXNlcm5hbWU6
         C: c2Nhbm5lcg==
         S: 334 UGFzc3dvcmQ6
         C: c2VjcmV0
         S: 235 2.7.0
         C: AUTH PLAIN AHNjYW5uZXIAc2VjcmV0
         S: 503 5.5.1
         C: MAIL FROM:<a@example.com>
         S: 250
         C: RCPT TO:<b@example.org>
         S: 250 2.1.5",
    )
    .await;
}

#[tokio::test]
async fn ehlo_lists_extensions_and_auth_only_when_allowed() {
    let h = harness("");
    let mut client = Client::start(&h, OUTSIDE);
    client.reply().await;
    let ehlo = client.send(b"EHLO x\r\n").await;
    let caps: Vec<&str> = ehlo.lines.iter().map(String::as_str).collect();
    assert_eq!(caps, ["relay.test", "PIPELINING", "SIZE 2000", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES"]);

    let h = harness("insecure_allow_plaintext_auth = true");
    let mut client = Client::start(&h, OUTSIDE);
    client.reply().await;
    let ehlo = client.send(b"EHLO x\r\n").await;
    assert_eq!(ehlo.lines.last().unwrap(), "AUTH PLAIN LOGIN");
}

#[tokio::test]
async fn protocol_errors_and_limits() {
    let h = harness("");
    let long = format!("C: NOOP {}", "x".repeat(600));
    script(
        &h,
        INSIDE,
        &format!(
            "C: MAIL FROM:<a@example.com>
             S: 503 5.5.1
             C: HELO old
             S: 250 relay.test
             C: MAIL FROM:<a@example.com> SIZE=10
             S: 555 5.5.4
             C: EHLO new
             S: 250-relay.test
             C: RCPT TO:<b@example.com>
             S: 503 5.5.1
             C: MAIL FROM:<a@example.com> SIZE=999999
             S: 552 5.3.4
             C: MAIL FROM:<a@example.com> FOO=bar
             S: 555 5.5.4
             C: MAIL FROM:<a@example.com>
             S: 250
             C: MAIL FROM:<a@example.com>
             S: 503 5.5.1
             C: RCPT TO:<1@example.com>
             S: 250
             C: RCPT TO:<2@example.com>
             S: 250
             C: RCPT TO:<3@example.com>
             S: 250
             C: RCPT TO:<4@example.com>
             S: 452 4.5.3
             C: RCPT TO:<bad address@@>
             S: 501 5.1.3
             C: RCPT TO:<ünï@example.com>
             S: 553 5.6.7
             {long}
             S: 500 5.5.2
             C: VRFY someone
             S: 252 2.5.0
             C: BDAT 10 LAST
             S: 502 5.5.1
             C: STARTTLS
             S: 454 4.7.0
             C: FOO
             S: 500 5.5.2
             C: RSET
             S: 250 2.0.0"
        ),
    )
    .await;
}

#[tokio::test]
async fn oversized_content_is_refused_after_the_data() {
    let h = harness("");
    let mut client = Client::start(&h, INSIDE);
    client.reply().await;
    client.send(b"EHLO x\r\n").await;
    client.send(b"MAIL FROM:<a@example.com>\r\n").await;
    client.send(b"RCPT TO:<b@example.com>\r\n").await;
    assert_eq!(client.send(b"DATA\r\n").await.code, 354);
    let mut body = Vec::new();
    for _ in 0..100 {
        body.extend_from_slice(b"0123456789012345678901234567890123456789\r\n");
    }
    body.extend_from_slice(b".\r\n");
    let reply = client.send(&body).await;
    assert_eq!((reply.code, reply.enhanced.unwrap().to_string()), (552, "5.3.4".into()));
    assert_eq!(client.send(b"NOOP\r\n").await.code, 250, "session continues");
    assert_eq!(h.scheduler.waiting(), 0);
}

#[tokio::test]
async fn pipelined_transaction_gets_every_reply_in_order() {
    let h = harness("");
    let mut client = Client::start(&h, INSIDE);
    client.reply().await;
    assert_eq!(client.send(b"EHLO x\r\n").await.code, 250);
    client
        .stream
        .write_all(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<c@example.com>\r\nDATA\r\n")
        .await
        .unwrap();
    let mut codes = Vec::new();
    for _ in 0..4 {
        codes.push(client.reply().await.code);
    }
    assert_eq!(codes, [250, 250, 250, 354]);
    let reply = client.send(b"Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n").await;
    assert_eq!(reply.code, 250);
    assert_eq!(client.reply().await.code, 221);
}

#[tokio::test]
async fn pipelining_before_it_was_offered_is_a_bot() {
    let h = harness("");
    let mut client = Client::start(&h, INSIDE);
    client.reply().await;
    let reply = client.send(b"EHLO x\r\nMAIL FROM:<a@example.com>\r\n").await;
    assert_eq!((reply.code, reply.enhanced.unwrap().to_string()), (554, "5.5.0".into()));
    let mut rest = Vec::new();
    let _ = client.stream.read_to_end(&mut rest).await;
    assert!(rest.is_empty(), "the session hangs up");

    let h = harness("reject_unauth_pipelining = false");
    let mut client = Client::start(&h, INSIDE);
    client.reply().await;
    assert_eq!(client.send(b"EHLO x\r\nNOOP\r\n").await.code, 250);
    assert_eq!(client.reply().await.code, 250);
}

#[tokio::test]
async fn starttls_injection_is_not_executed() {
    // STARTTLS is refused here (no certificate), but whatever follows it in the same segment must still
    // not be taken as commands sent after a successful STARTTLS would be: the session treats it as
    // improper pipelining only if PIPELINING was not offered. With EHLO done, the RSET is answered.
    let h = harness("");
    let mut client = Client::start(&h, INSIDE);
    client.reply().await;
    client.send(b"EHLO x\r\n").await;
    let reply = client.send(b"STARTTLS\r\nRSET\r\n").await;
    assert_eq!(reply.code, 454);
    assert_eq!(client.reply().await.code, 250);
}

#[tokio::test]
async fn sender_and_recipient_rules_per_identity() {
    let h = harness(
        "[[network]]\naddress = \"10.1.0.0/16\"\nname = \"printers\"\nallowed_senders = [\"scanner@example.com\"]\n\
         allowed_recipient_domains = [\"example.com\"]",
    );
    script(
        &h,
        INSIDE,
        "C: EHLO printer
         S: 250
         C: MAIL FROM:<boss@example.com>
         S: 550 5.7.1 <boss@example.com>: Sender address not allowed for network printers
         C: MAIL FROM:<scanner@example.com>
         S: 250
         C: RCPT TO:<someone@elsewhere.test>
         S: 550 5.7.1 <someone@elsewhere.test>: Recipient domain not allowed for network printers
         C: RCPT TO:<boss@example.com>
         S: 250",
    )
    .await;
}

#[tokio::test]
async fn loops_and_bare_line_endings() {
    let h = harness("max_received_headers = 2\nreject_bare_line_endings = true");
    let mut client = Client::start(&h, INSIDE);
    client.reply().await;
    client.send(b"EHLO x\r\n").await;
    for (content, expected) in [
        (&b"Received: a\r\nReceived: b\r\nReceived: c\r\n\r\nloop\r\n.\r\n"[..], (554, "5.4.6")),
        (&b"Subject: bare\nLF\r\n.\r\n"[..], (550, "5.5.2")),
        (&b"Received: a\r\nSubject: fine\r\n\r\nok\r\n.\r\n"[..], (250, "2.0.0")),
    ] {
        client.send(b"MAIL FROM:<a@example.com>\r\n").await;
        client.send(b"RCPT TO:<b@example.com>\r\n").await;
        assert_eq!(client.send(b"DATA\r\n").await.code, 354);
        let reply = client.send(content).await;
        assert_eq!((reply.code, reply.enhanced.unwrap().to_string().as_str()), expected);
    }
    assert_eq!(h.scheduler.waiting(), 1);
}

#[tokio::test]
async fn lost_connection_in_data_queues_nothing() {
    let h = harness("");
    let mut client = Client::start(&h, INSIDE);
    client.reply().await;
    client.send(b"EHLO x\r\n").await;
    client.send(b"MAIL FROM:<a@example.com>\r\n").await;
    client.send(b"RCPT TO:<b@example.com>\r\n").await;
    client.send(b"DATA\r\n").await;
    client.stream.write_all(b"Subject: half\r\n\r\npart of a bo").await.unwrap();
    drop(client);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(h.scheduler.waiting(), 0);
    let queue = h._dir.path().join("spool/queue");
    assert_eq!(std::fs::read_dir(queue).unwrap().count(), 0);
}

mod model {
    //! Random command sequences against a model of RFC 5321's state machine: the session's reply code to
    //! each command must be the one the model predicts, whatever came before.

    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Step {
        Ehlo,
        Helo,
        Mail,
        MailNull,
        Rcpt(u8),
        Data,
        Rset,
        Noop,
        Vrfy,
        Garbage,
        BadMail,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            Just(Step::Ehlo),
            Just(Step::Helo),
            Just(Step::Mail),
            Just(Step::MailNull),
            (0u8..5).prop_map(Step::Rcpt),
            Just(Step::Data),
            Just(Step::Rset),
            Just(Step::Noop),
            Just(Step::Vrfy),
            Just(Step::Garbage),
            Just(Step::BadMail),
        ]
    }

    #[derive(Default)]
    struct Model {
        helo: bool,
        in_tx: bool,
        rcpts: Vec<u8>,
        errors: u32,
    }

    impl Model {
        /// Expected reply code, updating the model, and whether the session then gives up: every 4xx/5xx
        /// counts towards the error limit, after which a 421 follows and the session hangs up.
        fn expect(&mut self, step: &Step) -> (u16, bool) {
            let code = self.transition(step);
            if code >= 400 {
                self.errors += 1;
            }
            (code, self.errors >= crate::listener::session::MAX_ERRORS)
        }

        fn transition(&mut self, step: &Step) -> u16 {
            match step {
                Step::Ehlo | Step::Helo => {
                    self.helo = true;
                    self.in_tx = false;
                    self.rcpts.clear();
                    250
                }
                Step::Mail | Step::MailNull if !self.helo || self.in_tx => 503,
                Step::Mail | Step::MailNull => {
                    self.in_tx = true;
                    250
                }
                Step::Rcpt(_) if !self.in_tx => 503,
                Step::Rcpt(n) if self.rcpts.contains(n) => 250,
                Step::Rcpt(_) if self.rcpts.len() >= 3 => 452,
                Step::Rcpt(n) => {
                    self.rcpts.push(*n);
                    250
                }
                Step::Data if !self.in_tx => 503,
                Step::Data if self.rcpts.is_empty() => 554,
                Step::Data => {
                    self.in_tx = false;
                    self.rcpts.clear();
                    250
                }
                Step::Rset => {
                    self.in_tx = false;
                    self.rcpts.clear();
                    250
                }
                Step::Noop => 250,
                Step::Vrfy => 252,
                Step::Garbage => 500,
                Step::BadMail => 501,
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        #[test]
        fn session_follows_the_state_machine(steps in proptest::collection::vec(step(), 1..60)) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let h = harness("");
                let mut client = Client::start(&h, INSIDE);
                client.reply().await;
                let mut model = Model::default();
                let mut queued = 0;
                for step in &steps {
                    let (expected, gives_up) = model.expect(step);
                    let line = match step {
                        Step::Ehlo => "EHLO x\r\n".to_owned(),
                        Step::Helo => "HELO x\r\n".to_owned(),
                        Step::Mail => "MAIL FROM:<a@example.com>\r\n".to_owned(),
                        Step::MailNull => "MAIL FROM:<>\r\n".to_owned(),
                        Step::Rcpt(n) => format!("RCPT TO:<r{n}@example.com>\r\n"),
                        Step::Data => "DATA\r\n".to_owned(),
                        Step::Rset => "RSET\r\n".to_owned(),
                        Step::Noop => "NOOP\r\n".to_owned(),
                        Step::Vrfy => "VRFY a\r\n".to_owned(),
                        Step::Garbage => "XYZZY\r\n".to_owned(),
                        Step::BadMail => "MAIL FROM:<a@@>\r\n".to_owned(),
                    };
                    let mut reply = client.send(line.as_bytes()).await;
                    if matches!(step, Step::Data) && reply.code == 354 {
                        reply = client.send(b"Subject: t\r\n\r\nx\r\n.\r\n").await;
                        queued += 1;
                    }
                    assert_eq!(reply.code, expected, "step {step:?} in {steps:?}");
                    if gives_up {
                        assert_eq!(client.reply().await.code, 421, "error limit in {steps:?}");
                        break;
                    }
                }
                assert_eq!(h.scheduler.waiting(), queued);
            });
        }
    }
}
