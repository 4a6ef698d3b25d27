//! A whole SMTP session driven by arbitrary bytes, for fuzzing (`crates/sluice/fuzz`, target `session`)
//! and for a quick check in the unit tests. Built with the `fuzzing` cargo feature (and in `cargo test`).
//!
//! [`fuzz_session`] runs the real [`Session`] over an in-memory pipe on a current-thread runtime: the
//! client's bytes go in (in chunks, so that framing across reads is exercised), the client then closes
//! its side, and every reply byte the session wrote comes back. Closing the input is what makes each
//! run end quickly and deterministically: every wait in the session (idle, command, DATA, AUTH) ends
//! at end of input instead of at a timer. A session that does not end within [`HANG_LIMIT`] after its
//! input was closed is a bug, and panics.
//!
//! Accepted messages really go through the spool (a directory under the system temp dir, one per
//! thread, emptied after every run) but are never delivered: no delivery worker runs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::session::{Session, SessionState};
use super::{ListenerContext, Shared};
use crate::config::{self, Config};
use crate::policy::Users;
use crate::policy::abuse::Abuse;
use crate::scheduler::Scheduler;
use crate::spool::Spool;

/// Option bit in the first input byte: the client is inside the listener's `allowed_networks`.
pub const OPT_ALLOWED_NETWORK: u8 = 1;
/// Option bit: a user exists (name [`FUZZ_USER`], password [`FUZZ_PASSWORD`]) and AUTH is offered
/// without TLS (`insecure_allow_plaintext_auth`).
pub const OPT_AUTH: u8 = 2;
/// Option bit: `reject_bare_line_endings = true`.
pub const OPT_REJECT_BARE: u8 = 4;
/// Option bit: `reject_unauth_pipelining = false`.
pub const OPT_ALLOW_EARLY_PIPELINING: u8 = 8;
/// Option bit: `greeting_delay = "1s"` (a client whose first chunk is not empty talked first).
pub const OPT_GREETING_DELAY: u8 = 16;

/// The AUTH user of [`OPT_AUTH`].
pub const FUZZ_USER: &str = "fuzz";
pub const FUZZ_PASSWORD: &str = "fuzz";

/// How long a session may take to end once its input is closed.
pub const HANG_LIMIT: Duration = Duration::from_secs(10);

const INSIDE: &str = "10.1.2.3:40000";
const OUTSIDE: &str = "192.0.2.77:40000";

/// Runs one session and returns everything it wrote.
///
/// Input format: byte 0 holds the `OPT_*` bits; byte 1 is the chunk size the rest is written in
/// (0: all at once); the remaining bytes are what the client sends. Shorter inputs are sent as they
/// are with no options set.
///
/// The listener is plain (no TLS), with small limits so that the fuzzer reaches them: 4096-byte
/// messages, 3 recipients, a 1024-byte header section, 3 Received headers, and one-second timeouts.
pub fn fuzz_session(input: &[u8]) -> Vec<u8> {
    let (options, chunk, bytes) = match input {
        [options, chunk, rest @ ..] => (*options, usize::from(*chunk), rest),
        _ => (0, 0, input),
    };
    WORLD.with(|world| run(world, options, chunk, bytes))
}

fn run(world: &World, options: u8, chunk: usize, bytes: &[u8]) -> Vec<u8> {
    let mut listener = world.config.listeners[0].clone();
    listener.insecure_allow_plaintext_auth = options & OPT_AUTH != 0;
    listener.reject_bare_line_endings = options & OPT_REJECT_BARE != 0;
    listener.reject_unauth_pipelining = options & OPT_ALLOW_EARLY_PIPELINING == 0;
    if options & OPT_GREETING_DELAY != 0 {
        listener.greeting_delay = Duration::from_secs(1);
    }
    let users = if options & OPT_AUTH != 0 { world.users.clone() } else { Users::new(&[]) };
    let shared = Arc::new(Shared {
        hostname: world.config.hostname.clone(),
        spool: world.spool.clone(),
        // A fresh queue and fresh abuse counters per run: no run may influence the next.
        scheduler: Scheduler::new(
            world.spool.clone(),
            world.config.upstream.clone(),
            world.config.retry,
            world.config.hostname.clone(),
        ),
        users,
        policy: world.policy.clone(),
        abuse: Abuse::new(world.config.abuse),
        metrics: Arc::new(crate::metrics::Metrics::new()),
    });
    let ctx = Arc::new(ListenerContext { config: listener, shared, shutdown: CancellationToken::new() });
    let peer: SocketAddr = if options & OPT_ALLOWED_NETWORK != 0 { INSIDE } else { OUTSIDE }.parse().unwrap();

    let out = RUNTIME.with(|rt| {
        rt.block_on(async {
            let (client, server) = tokio::io::duplex(16 * 1024);
            let session = tokio::spawn(async move {
                let _ = Session::new(server, SessionState::new(ctx, peer, None)).run().await;
            });
            let (mut rd, mut wr) = tokio::io::split(client);
            let writer = async move {
                let size = if chunk == 0 { bytes.len().max(1) } else { chunk };
                for piece in bytes.chunks(size) {
                    if wr.write_all(piece).await.is_err() {
                        break; // the session hung up
                    }
                    // Let the session read this chunk on its own before the next one arrives.
                    for _ in 0..4 {
                        tokio::task::yield_now().await;
                    }
                }
                let _ = wr.shutdown().await;
            };
            let reader = async move {
                let mut out = Vec::new();
                let _ = rd.read_to_end(&mut out).await;
                out
            };
            let run = async {
                let ((), out) = tokio::join!(writer, reader);
                session.await.expect("session task panicked");
                out
            };
            match tokio::time::timeout(HANG_LIMIT, run).await {
                Ok(out) => out,
                Err(_) => panic!("the session did not end within {HANG_LIMIT:?} of its input being closed"),
            }
        })
    });
    world.clear_spool();
    out
}

thread_local! {
    static RUNTIME: tokio::runtime::Runtime =
        tokio::runtime::Builder::new_current_thread().enable_time().build().expect("tokio runtime");
}

struct World {
    dir: PathBuf,
    config: Config,
    spool: Spool,
    users: Arc<Users>,
    policy: Arc<crate::policy::Policy>,
}

impl World {
    fn clear_spool(&self) {
        for sub in ["queue", "tmp"] {
            if let Ok(entries) = std::fs::read_dir(self.dir.join(sub)) {
                for entry in entries.flatten() {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }
}

thread_local! {
    /// One spool per thread: runs on parallel test threads must not empty each other's spool.
    static WORLD: World = World::new();
}

impl World {
    fn new() -> World {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("sluice-fuzz-{}-{n}", std::process::id()));
        // Cheap argon2 parameters: AUTH with the right password must not slow the fuzzer down.
        let hash = {
            use argon2::{Algorithm, Argon2, Params, PasswordHasher, Version};
            let params = Params::new(8, 1, 1, None).expect("argon2 params");
            Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
                .hash_password(FUZZ_PASSWORD.as_bytes())
                .expect("argon2 hash")
                .to_string()
        };
        let text = format!(
            "hostname = \"relay.test\"\nspool_dir = \"{}\"\n\
             [[listener]]\naddress = \"127.0.0.1:0\"\nallowed_networks = [\"10.0.0.0/8\"]\n\
             max_recipients = 3\nmax_message_size = 4096\nmax_header_size = 1024\nmax_received_headers = 3\n\
             idle_timeout = \"1s\"\ncommand_timeout = \"1s\"\ndata_timeout = \"1s\"\n\
             [[user]]\nname = \"{FUZZ_USER}\"\npassword_hash = \"{hash}\"\nallowed_senders = [\"@example.com\"]\n\
             [[network]]\naddress = \"10.1.0.0/16\"\nname = \"printers\"\nallowed_senders = [\"scan*@example.com\", \"<>\"]\n\
             allowed_recipient_domains = [\"example.com\"]\n\
             [upstream]\nhost = \"127.0.0.1\"\nport = 9\ntls = \"none\"\n",
            dir.display()
        );
        let mut config = config::parse(&text, std::path::Path::new(".")).expect("fuzz configuration");
        let spool = Spool::open(&config.spool_dir).expect("fuzz spool");
        let users = Users::new(&config.users);
        let policy = Arc::new(std::mem::take(&mut config.policy));
        World { dir, config, spool, users, policy }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smtp_wire::parse_reply;

    fn replies(out: &[u8]) -> Vec<smtp_wire::Reply> {
        let mut all = Vec::new();
        let mut rest = out;
        while !rest.is_empty() {
            let (reply, used) = parse_reply(rest).unwrap().expect("a complete reply");
            all.push(reply);
            rest = &rest[used..];
        }
        all
    }

    #[test]
    fn a_relayed_message_and_a_stranger() {
        let conversation = b"EHLO printer.lan\r\nMAIL FROM:<scan1@example.com>\r\nRCPT TO:<a@example.com>\r\nDATA\r\n\
            Subject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n";
        let mut input = vec![OPT_ALLOWED_NETWORK | OPT_ALLOW_EARLY_PIPELINING, 7];
        input.extend_from_slice(conversation);
        let codes: Vec<u16> = replies(&fuzz_session(&input)).iter().map(|r| r.code).collect();
        assert_eq!(codes, [220, 250, 250, 250, 354, 250, 221]);

        let mut input = vec![OPT_ALLOW_EARLY_PIPELINING, 0];
        input.extend_from_slice(conversation);
        let all = replies(&fuzz_session(&input));
        let codes: Vec<u16> = all.iter().map(|r| r.code).collect();
        assert_eq!(codes[..4], [220, 250, 250, 554], "a stranger is refused at RCPT");
        assert!(all.iter().all(|r| r.code != 354), "{codes:?}");
    }

    #[test]
    fn early_pipelining_is_refused() {
        let out = fuzz_session(b"\x01\x00EHLO x\r\nMAIL FROM:<a@example.com>\r\n");
        let codes: Vec<u16> = replies(&out).iter().map(|r| r.code).collect();
        assert_eq!(codes, [220, 554]);
    }

    #[test]
    fn reply_lines_stay_within_512_octets() {
        // Found by the fuzzer: the 555 reply echoes an unknown parameter's name.
        let mut input = vec![OPT_ALLOWED_NETWORK | OPT_ALLOW_EARLY_PIPELINING, 0];
        input.extend_from_slice(b"EHLO x\r\nMAIL FROM:<a@example.com> ");
        input.extend(std::iter::repeat_n(b'X', 480));
        input.extend_from_slice(b"=1\r\nQUIT\r\n");
        let out = fuzz_session(&input);
        assert!(String::from_utf8_lossy(&out).contains("555 5.5.4 Unsupported parameter XXX"));
        for line in out.split_inclusive(|&b| b == b'\n') {
            assert!(line.len() <= 512, "{} octets: {:?}", line.len(), String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn ends_on_eof_in_every_stage_and_on_tiny_inputs() {
        for input in [
            &b""[..],
            b"\x01",
            b"\x01\x00EHLO",
            b"\x03\x00EHLO x\r\nAUTH LOGIN\r\n",
            b"\x01\x01EHLO x\r\nMAIL FROM:<>\r\nRCPT TO:<a@example.com>\r\nDATA\r\nabc",
        ] {
            let out = fuzz_session(input);
            assert!(out.starts_with(b"220 "), "{:?}", String::from_utf8_lossy(&out));
        }
    }
}
