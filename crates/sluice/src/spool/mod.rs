//! The durable queue: every accepted message lives here, as plain files, until it is delivered or bounced.
//!
//! Layout under the spool directory:
//! - `tmp/`     files being written; anything here at start-up is debris from a crash and is removed.
//! - `queue/`   committed messages: `<id>.eml` (the body as received, CRLF line endings, not dot-stuffed)
//!   and `<id>.json` (the [`QueueRecord`]: envelope and per-recipient state).
//! - `corrupt/` entries recovery could not read, moved aside for the admin with the reason logged.
//!
//! Commit protocol (the listener answers 250 only after [`Spool::commit`] returns `Ok`):
//! 1. write the body to `tmp/`, fsync; write the record to `tmp/`, fsync;
//! 2. rename the body into `queue/`, then the record (the record is what makes the entry live, so it
//!    goes last: a body without a record is an uncommitted leftover);
//! 3. fsync `queue/` so both names survive a power loss.
//!
//! Record updates are write-temp, fsync, rename over, fsync dir: a reader sees the old or the new record,
//! never a mix. Removal deletes the record first, then the body.

pub mod record;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

pub use record::{QueueRecord, RECORD_VERSION, RecipientState, RecipientStatus};

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
}

impl GroupSync {
    fn sync(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.state.lock().expect("group sync lock");
        state.requested += 1;
        let ticket = state.requested;
        loop {
            if state.completed >= ticket {
                return if ticket <= state.failed_upto {
                    Err(io::Error::other("fsync of the queue directory failed"))
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
                if result.is_err() {
                    state.failed_upto = upto;
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
    /// Bodies without a record (a crash between the two renames: never acknowledged), removed.
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
        };
        for dir in [&dirs.tmp, &dirs.queue, &dirs.corrupt] {
            fs::create_dir_all(dir)?;
        }
        sync_dir(root)?;
        Ok(Spool { inner: Arc::new(dirs) })
    }

    /// A new queue id: 16 upper-case hex digits, sortable by time of creation.
    pub fn new_id() -> String {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let micros = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_micros() as u64;
        let n = COUNTER.fetch_add(1, Ordering::Relaxed) & 0xFFFF;
        format!("{:012X}{:04X}", micros & 0xFFFF_FFFF_FFFF, n)
    }

    fn body_path(&self, id: &str) -> PathBuf {
        self.inner.queue.join(format!("{id}.eml"))
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.inner.queue.join(format!("{id}.json"))
    }

    /// Makes a new message durable. Blocking: call from a blocking thread.
    /// On error nothing live is left behind (temp files are removed), so the caller answers 451.
    pub fn commit(&self, record: &QueueRecord, body: &[u8]) -> io::Result<()> {
        debug_assert_eq!(record.size, body.len() as u64);
        let id = &record.id;
        let tmp_body = self.inner.tmp.join(format!("{id}.eml"));
        let tmp_record = self.inner.tmp.join(format!("{id}.json"));
        let result = (|| {
            write_synced(&tmp_body, body)?;
            write_synced(&tmp_record, &encode(record)?)?;
            fs::rename(&tmp_body, self.body_path(id))?;
            fs::rename(&tmp_record, self.record_path(id))?;
            self.inner.queue_sync.sync(&self.inner.queue)
        })();
        if result.is_err() {
            // Leave no half-queued entry: without its record a body is not live, but remove both so a
            // later recovery has nothing to puzzle over.
            let _ = fs::remove_file(self.record_path(id));
            let _ = fs::remove_file(self.body_path(id));
            let _ = fs::remove_file(&tmp_body);
            let _ = fs::remove_file(&tmp_record);
        }
        result
    }

    /// Replaces the record of a queued message atomically. Blocking.
    pub fn update(&self, record: &QueueRecord) -> io::Result<()> {
        let tmp = self.inner.tmp.join(format!("{}.json.update", record.id));
        write_synced(&tmp, &encode(record)?)?;
        fs::rename(&tmp, self.record_path(&record.id))?;
        self.inner.queue_sync.sync(&self.inner.queue)
    }

    /// Removes a finished message. Blocking. The record goes first: once it is gone the entry is dead.
    pub fn remove(&self, id: &str) -> io::Result<()> {
        match fs::remove_file(self.record_path(id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        match fs::remove_file(self.body_path(id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Reads a queued message's body. Blocking.
    pub fn read_body(&self, id: &str) -> io::Result<Vec<u8>> {
        fs::read(self.body_path(id))
    }

    /// Scans the spool at start-up. Never fails on a bad entry: it is quarantined and reported.
    pub fn recover(&self) -> io::Result<Recovery> {
        let mut recovery = Recovery::default();
        for entry in fs::read_dir(&self.inner.tmp)? {
            let _ = fs::remove_file(entry?.path());
        }
        let mut records = Vec::new();
        let mut bodies = Vec::new();
        for entry in fs::read_dir(&self.inner.queue)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(".json") {
                records.push(id.to_owned());
            } else if let Some(id) = name.strip_suffix(".eml") {
                bodies.push(id.to_owned());
            } else {
                self.move_aside(&name)?;
                recovery.quarantined.push((name, "unexpected file in queue directory".into()));
            }
        }
        records.sort();
        bodies.sort();
        for id in &bodies {
            if records.binary_search(id).is_err() {
                fs::remove_file(self.body_path(id))?;
                recovery.uncommitted_removed += 1;
            }
        }
        for id in records {
            match self.load(&id) {
                Ok(record) => recovery.records.push(record),
                Err(reason) => {
                    self.move_aside(&format!("{id}.json"))?;
                    if bodies.binary_search(&id).is_ok() {
                        self.move_aside(&format!("{id}.eml"))?;
                    }
                    recovery.quarantined.push((id, reason));
                }
            }
        }
        recovery.records.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(recovery)
    }

    fn load(&self, id: &str) -> Result<QueueRecord, String> {
        let bytes = fs::read(self.record_path(id)).map_err(|e| format!("unreadable record: {e}"))?;
        let record: QueueRecord = serde_json::from_slice(&bytes).map_err(|e| format!("unparsable record: {e}"))?;
        if record.version != RECORD_VERSION {
            return Err(format!("record version {} is not {RECORD_VERSION}", record.version));
        }
        if record.id != id {
            return Err(format!("record names id {:?}", record.id));
        }
        if record.recipients.is_empty() {
            return Err("record has no recipients".into());
        }
        match fs::metadata(self.body_path(id)) {
            Ok(meta) if meta.len() == record.size => Ok(record),
            Ok(meta) => Err(format!("body is {} bytes, record says {}", meta.len(), record.size)),
            Err(e) => Err(format!("body missing: {e}")),
        }
    }

    fn move_aside(&self, file: &str) -> io::Result<()> {
        fs::rename(self.inner.queue.join(file), self.inner.corrupt.join(file))
    }
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

    #[test]
    fn truncated_body_and_garbage_record_are_quarantined() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let good = record("00000000000000A1", b"abc\r\n");
        spool.commit(&good, b"abc\r\n").unwrap();
        let short = record("00000000000000A2", b"abcdef\r\n");
        spool.commit(&short, b"abcdef\r\n").unwrap();
        fs::write(dir.path().join("queue/00000000000000A2.eml"), b"abc").unwrap();
        fs::write(dir.path().join("queue/00000000000000A3.json"), b"{\"version\":1,\"id\":").unwrap();
        fs::write(dir.path().join("queue/00000000000000A3.eml"), b"x").unwrap();
        fs::write(dir.path().join("queue/00000000000000A4.eml"), b"orphan").unwrap();
        fs::write(dir.path().join("tmp/junk"), b"debris").unwrap();

        let found = spool.recover().unwrap();
        assert_eq!(found.records, vec![good]);
        let ids: Vec<_> = found.quarantined.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["00000000000000A2", "00000000000000A3"]);
        assert!(found.quarantined[0].1.contains("bytes"), "{:?}", found.quarantined);
        assert_eq!(found.uncommitted_removed, 1);
        assert!(dir.path().join("corrupt/00000000000000A3.json").exists());
        assert!(dir.path().join("corrupt/00000000000000A2.eml").exists());
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn a_record_cut_at_any_byte_is_quarantined_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let body = b"hello\r\n";
        let rec = record("0000000000000B00", body);
        let full = serde_json::to_vec(&rec).unwrap();
        for cut in 0..full.len() {
            fs::write(dir.path().join("queue/0000000000000B00.json"), &full[..cut]).unwrap();
            fs::write(dir.path().join("queue/0000000000000B00.eml"), body).unwrap();
            let found = spool.recover().unwrap();
            assert!(found.records.is_empty(), "cut at {cut} parsed");
            assert_eq!(found.quarantined.len(), 1);
            fs::remove_file(dir.path().join("corrupt/0000000000000B00.json")).unwrap();
            fs::remove_file(dir.path().join("corrupt/0000000000000B00.eml")).unwrap();
        }
    }
}
