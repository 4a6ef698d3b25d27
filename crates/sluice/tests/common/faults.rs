//! Helpers of the fault tests (`crash_kill_under_load`, `write_order`, `disk_full`, `io_fault`,
//! `upstream_faults`, `restart_big_queue`, `soak`): a load client that records which messages got
//! 250, a misbehaving upstream (`tests/peers/faulty_upstream.py`), checks of the spool on disk, a
//! small filesystem, and figures from /proc.
//!
//! The tests run a short version by default; `scripts/faults.sh` runs the long versions by setting
//! the `SLUICE_FAULTS_*` variables read through [`knob`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

use super::*;

// ---------------------------------------------------------------------------------------------
// Knobs and randomness
// ---------------------------------------------------------------------------------------------

/// A number from the environment (`SLUICE_FAULTS_KILLS=20`, ...), else `default`.
pub fn knob(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// A small xorshift generator: random kill moments and message sizes. The seed is printed, and
/// `SLUICE_FAULTS_SEED` replays a run.
pub struct Rng(u64);

impl Rng {
    pub fn new(what: &str) -> Rng {
        let seed = knob("SLUICE_FAULTS_SEED", 0);
        let seed = if seed != 0 {
            seed
        } else {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
                ^ u64::from(std::process::id()) << 32
        };
        eprintln!("{what}: random seed {seed} (replay with SLUICE_FAULTS_SEED={seed})");
        Rng(seed | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `lo..hi` (hi > lo).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo)
    }
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.range(lo, hi))
    }
}

// ---------------------------------------------------------------------------------------------
// /proc
// ---------------------------------------------------------------------------------------------

fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    proc_status_kib(pid, "VmRSS")
}

/// Peak resident memory of a process, in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    proc_status_kib(pid, "VmHWM")
}

/// Open file descriptors of a process.
pub fn open_fds(pid: u32) -> Option<usize> {
    fs::read_dir(format!("/proc/{pid}/fd")).ok().map(|rd| rd.count())
}

/// What a process's open file descriptors point at ("socket:[123]", a path, ...), sorted.
pub fn fd_targets(pid: u32) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| fs::read_link(e.path()).ok())
                .map(|p| p.display().to_string())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// "12.3 MiB".
pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

// ---------------------------------------------------------------------------------------------
// The spool on disk
// ---------------------------------------------------------------------------------------------
//
// The checks do not know the spool's file layout: they run sluice's own start-up recovery
// (`Spool::recover`) on a copy of `queue/`, which tells what a restart would find, and read every
// recovered message's body back. So they follow the spool format wherever it goes.

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// The names in the spool's `queue/` (empty once everything is delivered).
pub fn queue_files(spool: &Path) -> Vec<String> {
    names(&spool.join("queue"))
}

/// The names in the spool's `tmp/` (files being written; nothing may linger there).
pub fn tmp_files(spool: &Path) -> Vec<String> {
    names(&spool.join("tmp"))
}

/// The names in the spool's `corrupt/` (what recovery had to quarantine).
pub fn corrupt_files(spool: &Path) -> Vec<String> {
    names(&spool.join("corrupt"))
}

/// What a restart would find in a spool.
#[derive(Debug)]
pub struct SpoolCheck {
    /// Ids of the live messages, each with its whole body.
    pub ids: BTreeSet<String>,
    /// Leftovers recovery would remove: state files of messages whose removal a crash cut short (no
    /// mail in them; legitimate right after a crash, never otherwise).
    pub uncommitted: usize,
}

/// Runs sluice's recovery on a copy of `spool`'s queue and asserts that it finds every entry whole:
/// nothing to quarantine, every recovered message's body readable and of its recorded size, and
/// nothing in `corrupt/`. Call it while the spool is still (sluice killed or stopped), or at least
/// while nothing is being delivered (the upstream down): a copy taken while a delivered message is
/// being removed could catch half of it.
#[track_caller]
pub fn check_spool(spool: &Path, context: &str) -> SpoolCheck {
    use sluice::spool::Spool;
    let corrupt = corrupt_files(spool);
    assert!(corrupt.is_empty(), "{context}: entries in corrupt/: {corrupt:?}");
    // Beside the spool when possible (hard links: instant, even for 100,000 messages), else in the
    // temporary directory (a copy).
    let parent = spool.parent().unwrap_or(spool);
    let copy = tempfile::Builder::new()
        .prefix(".spool-check-")
        .tempdir_in(parent)
        .or_else(|_| tempfile::Builder::new().prefix("sluice-spool-check-").tempdir())
        .expect("tempdir");
    let queue = copy.path().join("queue");
    fs::create_dir(&queue).expect("mkdir");
    for name in queue_files(spool) {
        let from = spool.join("queue").join(&name);
        let to = queue.join(&name);
        if fs::hard_link(&from, &to).is_err() {
            match fs::copy(&from, &to) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {} // gone meanwhile
                Err(e) => panic!("{context}: cannot copy {}: {e}", from.display()),
            }
        }
    }
    let copy_spool = Spool::open(copy.path()).expect("open the copy of the spool");
    let recovery = copy_spool.recover().expect("recovery of the copy");
    assert!(
        recovery.quarantined.is_empty(),
        "{context}: recovery would quarantine {} entr(y/ies) of the spool at {}: {:?}",
        recovery.quarantined.len(),
        spool.display(),
        recovery.quarantined
    );
    let mut ids = BTreeSet::new();
    for record in &recovery.records {
        let body = copy_spool
            .read_body(&record.id)
            .unwrap_or_else(|e| panic!("{context}: the body of {} cannot be read: {e}", record.id));
        assert_eq!(body.len() as u64, record.size, "{context}: the body of {} is not whole", record.id);
        ids.insert(record.id.clone());
    }
    SpoolCheck { ids, uncommitted: recovery.uncommitted_removed }
}

/// [`check_spool`], and also nothing half-removed: no leftover state file in `queue/`.
#[track_caller]
pub fn check_spool_settled(spool: &Path, context: &str) -> BTreeSet<String> {
    let check = check_spool(spool, context);
    assert_eq!(check.uncommitted, 0, "{context}: half-removed files in queue/: {:?}", queue_files(spool));
    check.ids
}

/// Waits until `queue/` is empty: everything delivered (or bounced), nothing stuck.
#[track_caller]
pub fn wait_for_empty_queue(spool: &Path, deadline: Duration) {
    let end = Instant::now() + deadline;
    loop {
        let left = queue_files(spool);
        if left.is_empty() {
            return;
        }
        if Instant::now() >= end {
            panic!(
                "gave up after {deadline:?} waiting for an empty queue; {} file(s) left, e.g. {:?}",
                left.len(),
                &left[..left.len().min(10)]
            );
        }
        sleep(Duration::from_millis(200));
    }
}

// ---------------------------------------------------------------------------------------------
// A small filesystem
// ---------------------------------------------------------------------------------------------

/// A tmpfs of a fixed size mounted on a fresh temporary directory, unmounted on Drop.
/// Needs root (or CAP_SYS_ADMIN): the fault tests run as root in CI; elsewhere the test fails and
/// says so (it is never skipped).
pub struct SmallFs {
    pub path: PathBuf,
    _dir: TempDir,
}

impl SmallFs {
    #[track_caller]
    pub fn tmpfs(size: &str) -> SmallFs {
        let dir = tempfile::Builder::new().prefix("sluice-smallfs-").tempdir().expect("tempdir");
        let path = dir.path().to_path_buf();
        let mount = require_tool("mount", &["/usr/bin", "/bin"], "mount");
        let out = run_command(
            Command::new(mount)
                .args(["-t", "tmpfs", "-o"])
                .arg(format!("size={size},mode=0755"))
                .arg("sluice-test-tmpfs")
                .arg(&path),
            None,
            Duration::from_secs(30),
        );
        assert!(
            out.success(),
            "cannot mount a {size} tmpfs on {} (this test needs root or CAP_SYS_ADMIN to mount a \
             small filesystem: run it as root, as CI does):\n{out}",
            path.display()
        );
        SmallFs { path, _dir: dir }
    }

    /// Appends to `file` until the filesystem is full (ENOSPC); returns the file's size.
    pub fn fill(&self, file: &Path) -> u64 {
        let mut f = fs::OpenOptions::new().create(true).append(true).open(file).expect("open filler file");
        let chunk = vec![b'x'; 4096];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling {}: {e}", file.display()),
            }
        }
        fs::metadata(file).unwrap().len()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let ok = Command::new("umount").arg(&self.path).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
        if !ok {
            // Something still has a file open there: detach it now, the kernel frees it later.
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Load client
// ---------------------------------------------------------------------------------------------

/// How a [`LoadClient`] sends.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Concurrent SMTP sessions.
    pub threads: usize,
    /// Prefix of every message id (a unique id per message is `<tag>-<thread>-<n>`).
    pub tag: String,
    /// Messages per connection before QUIT and a new connection.
    pub per_connection: usize,
    /// Body sizes in bytes are drawn from this range.
    pub body_bytes: (u64, u64),
    /// Recipients per message are drawn from 1..=max_recipients.
    pub max_recipients: u64,
    /// Stop each thread after this many messages (None: until stopped).
    pub max_per_thread: Option<u64>,
    /// A pause after each message (to hold a steady rate in a long run).
    pub pause: Duration,
}

impl LoadOptions {
    pub fn new(tag: &str) -> LoadOptions {
        LoadOptions {
            threads: 3,
            tag: tag.to_string(),
            per_connection: 25,
            body_bytes: (200, 2_000),
            max_recipients: 1,
            max_per_thread: None,
            pause: Duration::ZERO,
        }
    }
}

/// The envelope sender of load messages, and their recipients' domain.
pub const LOAD_FROM: &str = "load@client.test";

/// Which messages got which answer.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Ids of the messages sluice answered 250 at the end of DATA, with their recipients.
    pub acked: BTreeMap<String, Vec<String>>,
    /// The queue id sluice named in each 250 ("queued as <id>"), by message id.
    pub queue_ids: BTreeMap<String, String>,
    /// Ids of every message whose DATA content was sent (acked or not).
    pub attempted: BTreeSet<String>,
    /// End-of-DATA replies other than 250, by code.
    pub refused: BTreeMap<u16, u64>,
    /// Transactions cut off by a broken connection (sluice killed, say).
    pub broken: u64,
}

struct Shared {
    stop: AtomicBool,
    report: Mutex<LoadReport>,
    acked_count: AtomicU64,
}

/// Threads that send continuously to sluice, each message with a unique id in its Subject, and
/// record which ones got 250; they reconnect whenever the connection breaks (sluice killed and
/// restarted), so they keep going across restarts.
pub struct LoadClient {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

/// The message id of a load message (from its Subject), if it is one.
pub fn load_id(data: &[u8]) -> Option<String> {
    header_value(data, "Subject")?.strip_prefix("load ").map(str::to_string)
}

impl LoadClient {
    pub fn start(port: u16, options: LoadOptions) -> LoadClient {
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            report: Mutex::new(LoadReport::default()),
            acked_count: AtomicU64::new(0),
        });
        let threads = (0..options.threads)
            .map(|n| {
                let shared = shared.clone();
                let options = options.clone();
                std::thread::spawn(move || load_thread(port, n, &options, &shared))
            })
            .collect();
        LoadClient { shared, threads }
    }

    /// Messages acknowledged so far.
    pub fn acked(&self) -> u64 {
        self.shared.acked_count.load(Ordering::Relaxed)
    }

    /// Whether every thread has stopped by itself (`max_per_thread`).
    pub fn finished(&self) -> bool {
        self.threads.iter().all(|t| t.is_finished())
    }

    /// Stops the threads (each finishes the transaction in hand) and returns what happened.
    pub fn stop(self) -> LoadReport {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("load thread panicked");
        }
        std::mem::take(&mut *self.shared.report.lock().unwrap())
    }
}

fn load_thread(port: u16, n: usize, o: &LoadOptions, shared: &Shared) {
    let mut rng = Rng((n as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut seq: u64 = 0;
    let done = |seq: u64| shared.stop.load(Ordering::Relaxed) || o.max_per_thread.is_some_and(|max| seq >= max);
    while !done(seq) {
        let Ok(mut c) = SmtpClient::try_connect(port) else {
            sleep(Duration::from_millis(50));
            continue;
        };
        c.set_timeout(Duration::from_secs(60));
        let greeted = c.try_read_reply().is_ok_and(|r| r.code == 220)
            && try_cmd(&mut c, "EHLO load.test").is_ok_and(|r| r.code == 250);
        if !greeted {
            sleep(Duration::from_millis(50));
            continue;
        }
        for _ in 0..o.per_connection {
            if done(seq) {
                break;
            }
            seq += 1;
            let id = format!("{}-{n}-{seq}", o.tag);
            let recipients: Vec<String> =
                (0..rng.range(1, o.max_recipients + 1)).map(|r| format!("rcpt{r}@example.test")).collect();
            let size = rng.range(o.body_bytes.0, o.body_bytes.1 + 1) as usize;
            match send_load_message(&mut c, &id, &recipients, size, shared) {
                Ok(reply) if reply.code == 250 => {
                    let mut report = shared.report.lock().unwrap();
                    if let Some(queue_id) = reply.text().split("queued as ").nth(1) {
                        report.queue_ids.insert(id.clone(), queue_id.trim().to_string());
                    }
                    report.acked.insert(id, recipients);
                    drop(report);
                    shared.acked_count.fetch_add(1, Ordering::Relaxed);
                    if !o.pause.is_zero() {
                        sleep(o.pause);
                    }
                }
                Ok(reply) => {
                    *shared.report.lock().unwrap().refused.entry(reply.code).or_default() += 1;
                    if reply.code == 421 || try_cmd(&mut c, "RSET").is_err() {
                        break;
                    }
                    // A refused message (452 when the disk is full, say): do not spin.
                    sleep(Duration::from_millis(20));
                }
                Err(_) => {
                    shared.report.lock().unwrap().broken += 1;
                    break;
                }
            }
        }
        let _ = c.write_all(b"QUIT\r\n");
    }
}

/// Sends `line` and reads the reply, without panicking.
pub fn try_cmd(c: &mut SmtpClient, line: &str) -> io::Result<Reply> {
    c.write_all(format!("{line}\r\n").as_bytes())?;
    c.try_read_reply()
}

/// A load message: Subject "load <id>", a body of about `size` bytes that repeats the id.
pub fn load_message(id: &str, recipients: &[String], size: usize) -> Vec<u8> {
    let mut m = format!(
        "From: <{LOAD_FROM}>\r\nTo: <{}>\r\nSubject: load {id}\r\nMessage-ID: <{id}@client.test>\r\n\
         Date: Mon, 23 Nov 2026 12:00:00 +0000\r\n\r\n",
        recipients.join(">, <")
    )
    .into_bytes();
    let mut line = 0;
    while m.len() < size {
        m.extend_from_slice(format!("{id} line {line} .....................................\r\n").as_bytes());
        line += 1;
    }
    m.extend_from_slice(b".a line that starts with a dot\r\n");
    m
}

fn send_load_message(
    c: &mut SmtpClient,
    id: &str,
    recipients: &[String],
    size: usize,
    shared: &Shared,
) -> io::Result<Reply> {
    let r = try_cmd(c, &format!("MAIL FROM:<{LOAD_FROM}>"))?;
    if r.code != 250 {
        return Ok(r);
    }
    for rcpt in recipients {
        let r = try_cmd(c, &format!("RCPT TO:<{rcpt}>"))?;
        if r.code != 250 {
            return Ok(r);
        }
    }
    let r = try_cmd(c, "DATA")?;
    if r.code != 354 {
        return Ok(r);
    }
    shared.report.lock().unwrap().attempted.insert(id.to_string());
    c.write_all(&dot_stuff(&load_message(id, recipients, size)))?;
    c.try_read_reply()
}

/// Reads an upstream's arrivals a batch at a time (parsing every message on every poll would not
/// scale to a long run) until every id in `wanted` has arrived; returns all arrivals.
#[track_caller]
pub fn wait_for_load_ids<'a>(
    wanted: impl IntoIterator<Item = &'a String>,
    deadline: Duration,
    read_after: impl FnMut(u64) -> Vec<Received>,
) -> Vec<Received> {
    let (all, missing) = collect_load_ids(wanted, deadline, read_after);
    assert!(
        missing.is_empty(),
        "gave up after {deadline:?}: {} acknowledged message(s) never reached the upstream, e.g. {:?}",
        missing.len(),
        missing.iter().take(10).collect::<Vec<_>>()
    );
    all
}

/// Like [`wait_for_load_ids`], but returns what is still missing at the deadline instead of failing.
///
/// The upstream numbers what it stores 1, 2, 3, ... but a directory listing taken while files are
/// being renamed in may show number n+1 and not yet n (readdir order is not creation order), so the
/// next read starts after the longest run of numbers seen without a gap, and skips what it has.
pub fn collect_load_ids<'a>(
    wanted: impl IntoIterator<Item = &'a String>,
    deadline: Duration,
    mut read_after: impl FnMut(u64) -> Vec<Received>,
) -> (Vec<Received>, BTreeSet<String>) {
    let mut missing: BTreeSet<&String> = wanted.into_iter().collect();
    let mut all: Vec<Received> = Vec::new();
    let mut seen: BTreeSet<u64> = BTreeSet::new();
    let mut cursor = 0;
    let end = Instant::now() + deadline;
    loop {
        for m in read_after(cursor) {
            if !seen.insert(m.seq) {
                continue;
            }
            if let Some(id) = load_id(&m.data) {
                missing.remove(&id);
            }
            all.push(m);
        }
        while seen.contains(&(cursor + 1)) {
            cursor += 1;
        }
        if missing.is_empty() || Instant::now() >= end {
            all.sort_by_key(|m| m.seq);
            return (all, missing.into_iter().cloned().collect());
        }
        sleep(Duration::from_millis(200));
    }
}

impl Upstream {
    /// The messages numbered above `seq`.
    pub fn messages_after(&self, seq: u64) -> Vec<Received> {
        read_received_after(&self.out, seq)
    }
}

/// Compares what the upstream received with what the client was told: returns (copies per
/// acknowledged id, unacknowledged ids delivered anyway). Panics on a message that was never
/// sent or that arrived with the wrong recipients.
pub fn tally(report: &LoadReport, received: &[Received]) -> (BTreeMap<String, usize>, usize) {
    let mut copies: BTreeMap<String, usize> = BTreeMap::new();
    let mut unacked_delivered = BTreeSet::new();
    for m in received {
        let Some(id) = load_id(&m.data) else {
            continue;
        };
        assert!(report.attempted.contains(&id), "the upstream got a message that was never sent: {id}");
        match report.acked.get(&id) {
            Some(rcpts) => {
                let mut got = m.rcpt_tos.clone();
                got.sort();
                let mut want = rcpts.clone();
                want.sort();
                assert_eq!(got, want, "recipients of {id}");
                *copies.entry(id).or_default() += 1;
            }
            None => {
                unacked_delivered.insert(id);
            }
        }
    }
    (copies, unacked_delivered.len())
}

// ---------------------------------------------------------------------------------------------
// Misbehaving upstream: tests/peers/faulty_upstream.py
// ---------------------------------------------------------------------------------------------

/// A running `tests/peers/faulty_upstream.py`: a plain SMTP server whose behaviour a test changes
/// at any moment with [`FaultyUpstream::set_mode`]. Stopped on Drop.
pub struct FaultyUpstream {
    child: Option<Child>,
    pub port: u16,
    out: PathBuf,
    control: PathBuf,
    events: PathBuf,
    log: PathBuf,
    tls: Option<(PathBuf, PathBuf)>,
    /// The CA of its certificate, when it offers STARTTLS.
    pub ca_file: Option<PathBuf>,
    stall_secs: f64,
    dir: TempDir,
}

impl FaultyUpstream {
    /// Starts it on a free port; with a PKI it offers STARTTLS and requires it. The stall-*
    /// modes keep silent for `stall_secs`.
    pub fn start(pki: Option<&Pki>, stall_secs: f64) -> FaultyUpstream {
        let dir = tempfile::Builder::new().prefix("sluice-faulty-upstream-").tempdir().expect("tempdir");
        let mut up = FaultyUpstream {
            child: None,
            port: 0,
            out: dir.path().join("out"),
            control: dir.path().join("mode"),
            events: dir.path().join("events"),
            log: dir.path().join("faulty-upstream.log"),
            tls: pki.map(|p| (p.cert_file.clone(), p.key_file.clone())),
            ca_file: pki.map(|p| p.ca_file.clone()),
            stall_secs,
            dir,
        };
        up.spawn(None);
        up
    }

    fn spawn(&mut self, port: Option<u16>) {
        let port_file = self.dir.path().join("port");
        let _ = fs::remove_file(&port_file);
        let mut cmd = Command::new(python());
        cmd.arg("-u")
            .arg(peer_script("faulty_upstream.py"))
            .arg("--port-file")
            .arg(&port_file)
            .arg("--out")
            .arg(&self.out)
            .arg("--control")
            .arg(&self.control)
            .arg("--events")
            .arg(&self.events)
            .arg("--stall")
            .arg(self.stall_secs.to_string());
        if let Some(port) = port {
            cmd.arg("--port").arg(port.to_string());
        }
        if let Some((cert, key)) = &self.tls {
            cmd.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
        }
        let log = fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        cmd.stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let log_path = self.log.clone();
        self.port = wait_until(DEADLINE, "faulty_upstream.py to listen", || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("faulty_upstream.py exited ({status}) before listening:\n{}", tail(&log_path, 40));
            }
            fs::read_to_string(&port_file).ok().and_then(|s| s.trim().parse::<u16>().ok())
        });
        self.child = Some(child);
    }

    /// Switches its behaviour (see the modes in faulty_upstream.py); "none" is well-behaved.
    pub fn set_mode(&self, mode: &str) {
        let tmp = self.dir.path().join("mode.tmp");
        fs::write(&tmp, mode).unwrap();
        fs::rename(&tmp, &self.control).unwrap();
    }

    /// How many times it has performed this fault so far.
    pub fn faults(&self, mode: &str) -> usize {
        fs::read_to_string(&self.events).unwrap_or_default().lines().filter(|l| *l == mode).count()
    }

    /// Waits until it has performed this fault at least `n` times.
    pub fn wait_for_faults(&self, mode: &str, n: usize, deadline: Duration) {
        wait_until(deadline, &format!("{n} × {mode} at the upstream"), || (self.faults(mode) >= n).then_some(()));
    }

    pub fn messages(&self) -> Vec<Received> {
        read_received(&self.out)
    }

    /// The messages numbered above `seq` (to read a long run's arrivals a batch at a time).
    pub fn messages_after(&self, seq: u64) -> Vec<Received> {
        read_received_after(&self.out, seq)
    }

    pub fn count(&self) -> usize {
        count_received(&self.out)
    }

    /// Waits until `done` holds for the messages received so far and returns them.
    pub fn wait_for(&self, deadline: Duration, what: &str, mut done: impl FnMut(&[Received]) -> bool) -> Vec<Received> {
        let end = Instant::now() + deadline;
        loop {
            let msgs = self.messages();
            if done(&msgs) {
                return msgs;
            }
            if Instant::now() >= end {
                panic!(
                    "gave up after {deadline:?} waiting for {what}; the upstream has {} message(s)\n\
                     --- faulty upstream log ---\n{}",
                    msgs.len(),
                    tail(&self.log, 60)
                );
            }
            sleep(Duration::from_millis(100));
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Stops the process: connections are refused until [`FaultyUpstream::restart`].
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(&mut c, Duration::from_secs(10));
        }
    }

    /// Starts it again on the same port, keeping the messages received so far.
    pub fn restart(&mut self) {
        self.stop();
        let port = self.port;
        self.spawn(Some(port));
    }

    pub fn log(&self) -> String {
        tail(&self.log, 200)
    }
}

impl Drop for FaultyUpstream {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("--- faulty_upstream.py log (port {}) ---\n{}", self.port, tail(&self.log, 80));
        }
    }
}

impl UpstreamCfg {
    /// Everything a running [`FaultyUpstream`] needs: its port, and STARTTLS with its CA if it
    /// offers it.
    pub fn of_faulty(up: &FaultyUpstream) -> UpstreamCfg {
        let mut cfg = UpstreamCfg::plain(up.port);
        if let Some(ca) = &up.ca_file {
            cfg.tls = "starttls";
            cfg.ca_file = Some(ca.clone());
        }
        cfg
    }
}
