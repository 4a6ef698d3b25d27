//! The durable queue: every accepted message lives here, as plain files, until it is delivered or bounced.
//!
//! Layout under the spool directory:
//! - `tmp/`     files being written; anything here at start-up is debris from a crash and is removed.
//! - `queue/`   committed messages: `<id>.msg` holds one line with the [`QueueRecord`] as it was at accept
//!   time (envelope, per-recipient state) and then the body as received (CRLF line endings, not
//!   dot-stuffed); `<id>.state`, once a delivery attempt has changed anything, the newer record.
//! - `corrupt/` entries recovery could not read, moved aside for the admin with the reason logged.
//!
//! Commit protocol (the listener answers 250 only after [`Spool::commit`] returns `Ok`):
//! 1. write record line and body to `tmp/<id>.msg`, fsync it;
//! 2. rename it into `queue/`: from then on the message is live, and it is complete by construction;
//! 3. fsync `queue/` so the name survives a power loss (shared by concurrent commits, see [`GroupSync`]).
//!
//! One file, one fsync: the record and the body cannot be found apart, and a commit costs one file fsync
//! plus its share of a directory fsync. State updates are write-temp, fsync, rename over `<id>.state`,
//! fsync dir: a reader sees the old or the new state, never a mix. Removal deletes the message first (the
//! entry is dead from then on), then its state.

pub mod disk;
pub mod record;

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

pub use disk::{DiskSpace, MinFree, is_disk_full};
pub use record::{AdminHold, HELD_UNTIL_RELEASED, QueueRecord, RECORD_VERSION, RecipientState, RecipientStatus};

const TMP: &str = "tmp";
const QUEUE: &str = "queue";
const CORRUPT: &str = "corrupt";

#[derive(Clone, Debug)]
pub struct Spool {
    inner: Arc<Dirs>,
}

#[derive(Debug)]
struct Dirs {
    tmp: PathBuf,
    queue: PathBuf,
    corrupt: PathBuf,
    queue_sync: GroupSync,
    disk: disk::DiskGuard,
}

/// Group commit for the queue directory's fsync: many sessions rename their files into `queue/` at about
/// the same time, and one fsync of the directory makes all of those renames durable. A caller waits for
/// an fsync that *started after* its own rename; whoever finds no fsync running does it for everyone
/// waiting. Under load this turns one directory fsync per message into one per batch, and each caller
/// still returns only once its own rename is durable.
#[derive(Debug, Default)]
struct GroupSync {
    state: Mutex<SyncState>,
    done: Condvar,
}

#[derive(Debug, Default)]
struct SyncState {
    /// Renames registered so far (a ticket each).
    requested: u64,
    /// Every ticket up to this one is durable.
    completed: u64,
    running: bool,
    /// The last fsync failed for the tickets up to this one.
    failed_upto: u64,
    /// And how: its errno, so that a full disk (ENOSPC, EDQUOT) is told apart from other failures.
    failed_errno: Option<i32>,
}

impl GroupSync {
    fn sync(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.state.lock().expect("group sync lock");
        state.requested += 1;
        let ticket = state.requested;
        loop {
            if state.completed >= ticket {
                return if ticket <= state.failed_upto {
                    Err(match state.failed_errno {
                        Some(errno) => io::Error::from_raw_os_error(errno),
                        None => io::Error::other("fsync of the queue directory failed"),
                    })
                } else {
                    Ok(())
                };
            }
            if !state.running {
                // Everything registered until now rides on this fsync.
                let upto = state.requested;
                state.running = true;
                drop(state);
                let result = sync_dir(dir);
                state = self.state.lock().expect("group sync lock");
                state.running = false;
                state.completed = upto;
                if let Err(e) = result {
                    state.failed_upto = upto;
                    state.failed_errno = e.raw_os_error();
                }
                self.done.notify_all();
                continue;
            }
            state = self.done.wait(state).expect("group sync lock");
        }
    }
}

/// What start-up recovery found.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Live messages, to be handed to the scheduler.
    pub records: Vec<QueueRecord>,
    /// Entries moved to `corrupt/`, with the reason.
    pub quarantined: Vec<(String, String)>,
    /// State files left by a removal interrupted between its two unlinks (no mail in them), removed.
    pub uncommitted_removed: usize,
}

impl Spool {
    /// Opens (creating if needed) the spool at `root`.
    pub fn open(root: &Path) -> io::Result<Spool> {
        let dirs = Dirs {
            tmp: root.join(TMP),
            queue: root.join(QUEUE),
            corrupt: root.join(CORRUPT),
            queue_sync: GroupSync::default(),
            disk: disk::DiskGuard::new(root.join(QUEUE)),
        };
        for dir in [&dirs.tmp, &dirs.queue, &dirs.corrupt] {
            fs::create_dir_all(dir)?;
        }
        sync_dir(root)?;
        Ok(Spool { inner: Arc::new(dirs) })
    }

    /// Sets the free space the spool's filesystem must keep (`[spool] min_free_space`); until then
    /// there is no threshold. Takes effect at the next check.
    pub fn set_min_free(&self, min_free: MinFree) {
        self.inner.disk.set_min_free(min_free);
    }

    /// Free space on the spool's filesystem against the threshold, looked up at most once a second
    /// (cheap enough for every MAIL). `None` when the filesystem cannot be asked.
    pub fn disk_space(&self) -> Option<DiskSpace> {
        self.inner.disk.space()
    }

    /// Free space is below the threshold: new mail must be refused with `452 4.3.1`.
    pub fn disk_low(&self) -> bool {
        self.disk_space().is_some_and(|space| space.low)
    }

    /// A new queue id: 16 upper-case hex digits, sortable by time of creation.
    pub fn new_id() -> String {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let micros = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_micros() as u64;
        let n = COUNTER.fetch_add(1, Ordering::Relaxed) & 0xFFFF;
        format!("{:012X}{:04X}", micros & 0xFFFF_FFFF_FFFF, n)
    }

    fn message_path(&self, id: &str) -> PathBuf {
        self.inner.queue.join(format!("{id}.{MESSAGE_EXT}"))
    }

    fn state_path(&self, id: &str) -> PathBuf {
        self.inner.queue.join(format!("{id}.{STATE_EXT}"))
    }

    /// Makes a new message durable. Blocking: call from a blocking thread.
    /// On error nothing live is left behind (the temp file is removed), so the caller answers 451
    /// (452 4.3.1 when [`is_disk_full`] says the error is a full disk or quota).
    pub fn commit(&self, record: &QueueRecord, body: &[u8]) -> io::Result<()> {
        debug_assert_eq!(record.size, body.len() as u64);
        let id = &record.id;
        let tmp = self.inner.tmp.join(format!("{id}.{MESSAGE_EXT}"));
        let result = (|| {
            let mut file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            file.write_all(&message_header(record)?)?;
            file.write_all(body)?;
            file.sync_all()?;
            drop(file);
            fs::rename(&tmp, self.message_path(id))?;
            self.inner.queue_sync.sync(&self.inner.queue)
        })();
        if result.is_err() {
            // The rename may have happened without its directory fsync: take the name back so nothing
            // un-acknowledged becomes live at the next start.
            let _ = fs::remove_file(self.message_path(id));
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Records a queued message's new state atomically (it supersedes the record written at accept
    /// time). Blocking.
    pub fn update(&self, record: &QueueRecord) -> io::Result<()> {
        let tmp = self.inner.tmp.join(format!("{}.{STATE_EXT}", record.id));
        // On failure the older record stays in force. Remove the temporary file: on a full disk it holds
        // space, and once the message is delivered nothing else would ever remove it (found by the
        // disk-full and fsync-failure tests).
        let written = write_synced(&tmp, &encode(record)?).and_then(|()| fs::rename(&tmp, self.state_path(&record.id)));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        self.inner.queue_sync.sync(&self.inner.queue)
    }

    /// Removes a finished message. Blocking. The message goes first, then its state: the `.msg` is what
    /// makes an entry live, so once it is gone the message is finished for good, and a state file left by
    /// a crash (or a failed unlink) is deleted by recovery. The other order would bring the message back
    /// with its accept-time record, every recipient pending again. `Err`: the message is still live.
    pub fn remove(&self, id: &str) -> io::Result<()> {
        match fs::remove_file(self.message_path(id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        // The entry is dead already; a state file that stays is debris for recovery, not an error.
        let _ = fs::remove_file(self.state_path(id));
        Ok(())
    }

    /// Reads a queued message's body. Blocking.
    pub fn read_body(&self, id: &str) -> io::Result<Vec<u8>> {
        let mut reader = io::BufReader::new(File::open(self.message_path(id))?);
        let mut header = Vec::new();
        read_header_line(&mut reader, &mut header)?;
        let mut body = Vec::new();
        reader.read_to_end(&mut body)?;
        Ok(body)
    }

    /// Scans the spool at start-up. Never fails on a bad entry: it is quarantined and reported.
    pub fn recover(&self) -> io::Result<Recovery> {
        let mut recovery = Recovery::default();
        for entry in fs::read_dir(&self.inner.tmp)? {
            let _ = fs::remove_file(entry?.path());
        }
        let mut messages = Vec::new();
        let mut states = Vec::new();
        for entry in fs::read_dir(&self.inner.queue)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            match name.rsplit_once('.') {
                Some((id, MESSAGE_EXT)) => messages.push(id.to_owned()),
                Some((id, STATE_EXT)) => states.push(id.to_owned()),
                _ => {
                    self.move_aside(&name)?;
                    recovery.quarantined.push((name, "unexpected file in queue directory".into()));
                }
            }
        }
        messages.sort();
        for id in &states {
            if messages.binary_search(id).is_err() {
                // A removal interrupted after the message went: the message was finished; no mail here.
                fs::remove_file(self.state_path(id))?;
                recovery.uncommitted_removed += 1;
            }
        }
        for id in messages {
            match self.load(&id) {
                Ok((record, state_problem)) => {
                    if let Some(reason) = state_problem {
                        self.move_aside(&format!("{id}.{STATE_EXT}"))?;
                        recovery.quarantined.push((id.clone(), reason));
                    }
                    recovery.records.push(record);
                }
                Err(reason) => {
                    self.move_aside(&format!("{id}.{MESSAGE_EXT}"))?;
                    if states.contains(&id) {
                        self.move_aside(&format!("{id}.{STATE_EXT}"))?;
                    }
                    recovery.quarantined.push((id, reason));
                }
            }
        }
        recovery.records.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(recovery)
    }

    /// Reads an entry: the record from the message file (checked against the body's length), superseded
    /// by the state file when there is a readable one. A bad state file is reported but does not cost
    /// the message: the accept-time record still delivers it (maybe again to some recipients).
    fn load(&self, id: &str) -> Result<(QueueRecord, Option<String>), String> {
        let file = File::open(self.message_path(id)).map_err(|e| format!("unreadable message: {e}"))?;
        let length = file.metadata().map_err(|e| format!("unreadable message: {e}"))?.len();
        let mut header = Vec::new();
        read_header_line(&mut io::BufReader::new(file), &mut header).map_err(|e| format!("bad message header: {e}"))?;
        let json = header.strip_prefix(MESSAGE_MAGIC).ok_or("not a sluice queue file")?;
        let accepted = check_record(id, json)?;
        let body = length - header.len() as u64;
        if body != accepted.size {
            return Err(format!("body is {body} bytes, record says {}", accepted.size));
        }
        match fs::read(self.state_path(id)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok((accepted, None)),
            Err(e) => Ok((accepted, Some(format!("unreadable state file ({e}); using the record from accept time")))),
            Ok(bytes) => match check_record(id, &bytes) {
                Ok(state) => Ok((state, None)),
                Err(reason) => {
                    Ok((accepted, Some(format!("bad state file ({reason}); using the record from accept time"))))
                }
            },
        }
    }

    fn move_aside(&self, file: &str) -> io::Result<()> {
        fs::rename(self.inner.queue.join(file), self.inner.corrupt.join(file))
    }
}

/// Queue file names: `<id>.msg` holds the record from accept time and the body; `<id>.state` the newer
/// state once a delivery attempt changed it.
const MESSAGE_EXT: &str = "msg";
const STATE_EXT: &str = "state";
/// The first line of a message file is this, then the record as JSON (which never holds a raw newline).
const MESSAGE_MAGIC: &[u8] = b"sluice-queue ";
/// A record line longer than this is not ours (a runaway read of a damaged file stops here).
const MAX_HEADER_LINE: u64 = 16 * 1024 * 1024;

fn message_header(record: &QueueRecord) -> io::Result<Vec<u8>> {
    let mut line = MESSAGE_MAGIC.to_vec();
    serde_json::to_writer(&mut line, record).map_err(io::Error::other)?;
    line.push(b'\n');
    Ok(line)
}

/// Reads the record line, newline included.
fn read_header_line(reader: &mut impl io::BufRead, line: &mut Vec<u8>) -> io::Result<()> {
    reader.take(MAX_HEADER_LINE).read_until(b'\n', line)?;
    if line.last() != Some(&b'\n') {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "record line is cut short"));
    }
    Ok(())
}

fn check_record(id: &str, json: &[u8]) -> Result<QueueRecord, String> {
    let record: QueueRecord = serde_json::from_slice(json).map_err(|e| format!("unparsable record: {e}"))?;
    if record.version != RECORD_VERSION {
        return Err(format!("record version {} is not {RECORD_VERSION}", record.version));
    }
    if record.id != id {
        return Err(format!("record names id {:?}", record.id));
    }
    if record.recipients.is_empty() {
        return Err("record has no recipients".into());
    }
    Ok(record)
}

fn encode(record: &QueueRecord) -> io::Result<Vec<u8>> {
    serde_json::to_vec(record).map_err(io::Error::other)
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).create(true).truncate(true).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Milliseconds since the Unix epoch, the time unit of queue records.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, body: &[u8]) -> QueueRecord {
        QueueRecord {
            version: RECORD_VERSION,
            id: id.to_owned(),
            sender: "a@example.com".into(),
            recipients: vec![RecipientState {
                address: "b@example.com".into(),
                status: RecipientStatus::Pending,
                last_reply: None,
            }],
            received_at_ms: 1,
            attempts: 0,
            next_attempt_ms: 1,
            last_reply: None,
            size: body.len() as u64,
            eight_bit: false,
            smtputf8: false,
            client: "test".into(),
            route: None,
            admin_hold: None,
        }
    }

    #[test]
    fn concurrent_commits_share_directory_fsyncs_and_all_land() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let spool = spool.clone();
                std::thread::spawn(move || {
                    for _ in 0..10 {
                        let body = b"Subject: x\r\n\r\nbody\r\n";
                        spool.commit(&record(&Spool::new_id(), body), body).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(spool.recover().unwrap().records.len(), 160);
        let state = spool.inner.queue_sync.state.lock().unwrap();
        assert_eq!(state.completed, 160, "every commit's ticket is covered by an fsync");
        assert!(!state.running);
    }

    #[test]
    fn ids_are_unique_and_sortable() {
        let a = Spool::new_id();
        let b = Spool::new_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 16);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn commit_then_recover_then_remove() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let body = b"Subject: x\r\n\r\nhello\r\n";
        let rec = record(&Spool::new_id(), body);
        spool.commit(&rec, body).unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let found = spool.recover().unwrap();
        assert_eq!(found.records, vec![rec.clone()]);
        assert_eq!(spool.read_body(&rec.id).unwrap(), body);
        let mut updated = rec.clone();
        updated.attempts = 3;
        spool.update(&updated).unwrap();
        assert_eq!(spool.recover().unwrap().records[0].attempts, 3);
        spool.remove(&rec.id).unwrap();
        assert!(spool.recover().unwrap().records.is_empty());
    }

    /// Writes a message file by hand, as a crash or a bad disk might have left it.
    fn raw_message(dir: &Path, id: &str, header_json: &[u8], body: &[u8]) {
        let mut bytes = MESSAGE_MAGIC.to_vec();
        bytes.extend_from_slice(header_json);
        bytes.push(b'\n');
        bytes.extend_from_slice(body);
        fs::write(dir.join(format!("queue/{id}.msg")), bytes).unwrap();
    }

    #[test]
    fn truncated_body_and_garbage_record_are_quarantined() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let good = record("00000000000000A1", b"abc\r\n");
        spool.commit(&good, b"abc\r\n").unwrap();
        let short = record("00000000000000A2", b"abcdef\r\n");
        raw_message(dir.path(), "00000000000000A2", &serde_json::to_vec(&short).unwrap(), b"abc");
        raw_message(dir.path(), "00000000000000A3", b"{\"version\":1,\"id\":", b"x");
        fs::write(dir.path().join("queue/00000000000000A4.state"), b"{}").unwrap();
        fs::write(dir.path().join("tmp/junk"), b"debris").unwrap();

        let found = spool.recover().unwrap();
        assert_eq!(found.records, vec![good]);
        let ids: Vec<_> = found.quarantined.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["00000000000000A2", "00000000000000A3"]);
        assert!(found.quarantined[0].1.contains("bytes"), "{:?}", found.quarantined);
        assert_eq!(found.uncommitted_removed, 1, "the state file without a message");
        assert!(dir.path().join("corrupt/00000000000000A3.msg").exists());
        assert!(dir.path().join("corrupt/00000000000000A2.msg").exists());
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn a_bad_state_file_falls_back_to_the_accept_time_record() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let rec = record("00000000000000C1", b"x\r\n");
        spool.commit(&rec, b"x\r\n").unwrap();
        fs::write(dir.path().join("queue/00000000000000C1.state"), b"{\"version\":1,").unwrap();
        let found = spool.recover().unwrap();
        assert_eq!(found.records, vec![rec], "the message is kept");
        assert_eq!(found.quarantined.len(), 1);
        assert!(found.quarantined[0].1.contains("accept time"), "{:?}", found.quarantined);
        assert!(dir.path().join("corrupt/00000000000000C1.state").exists());
    }

    #[test]
    fn a_message_file_cut_at_any_byte_is_quarantined_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let body = b"hello\r\n";
        let rec = record("0000000000000B00", body);
        spool.commit(&rec, body).unwrap();
        let full = fs::read(dir.path().join("queue/0000000000000B00.msg")).unwrap();
        for cut in 0..full.len() {
            fs::write(dir.path().join("queue/0000000000000B00.msg"), &full[..cut]).unwrap();
            let found = spool.recover().unwrap();
            assert!(found.records.is_empty(), "cut at {cut} parsed");
            assert_eq!(found.quarantined.len(), 1, "cut at {cut}");
            fs::remove_file(dir.path().join("corrupt/0000000000000B00.msg")).unwrap();
        }
        fs::write(dir.path().join("queue/0000000000000B00.msg"), &full).unwrap();
        assert_eq!(spool.recover().unwrap().records, vec![rec]);
    }
}
