//! Free space on the spool's filesystem. Below the configured threshold (`[spool] min_free_space`) new
//! mail is refused with `452 4.3.1` at MAIL and again at the end of DATA, before anything is written, so
//! the space that is left goes to what is already queued (state updates, bounces) rather than to one more
//! message. The check is a `statvfs(2)`, cached for a second: cheap enough for every MAIL.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::{info, warn};

/// How long one look at the filesystem is trusted.
const CACHE_FOR: Duration = Duration::from_secs(1);

/// The free space the spool's filesystem must keep: a size, or a share of the filesystem.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MinFree {
    Bytes(u64),
    Percent(f64),
}

impl MinFree {
    /// The default: about two messages of the default maximum size (35 MiB) and some room for state
    /// updates and bounces. Postfix refuses under 1.5 × its message size limit, for the same reason.
    pub const DEFAULT: MinFree = MinFree::Bytes(100 * 1024 * 1024);

    /// Parses `"1GiB"`, `"500MB"`, `"2048"` (bytes), `"0"` (off) or `"5%"`.
    pub fn parse(text: &str) -> Result<MinFree, String> {
        let text = text.trim();
        if let Some(number) = text.strip_suffix('%') {
            let percent: f64 =
                number.trim().parse().map_err(|_| format!("{text:?}: not a percentage (e.g. \"5%\")"))?;
            if !(0.0..=100.0).contains(&percent) {
                return Err(format!("{text:?}: a percentage between 0 and 100"));
            }
            return Ok(MinFree::Percent(percent));
        }
        let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: f64 = number.parse().map_err(|_| format!("{text:?}: not a size (e.g. \"1GiB\" or \"5%\")"))?;
        let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1_000,
            "kib" => 1 << 10,
            "m" | "mb" => 1_000_000,
            "mib" => 1 << 20,
            "g" | "gb" => 1_000_000_000,
            "gib" => 1 << 30,
            "t" | "tb" => 1_000_000_000_000,
            "tib" => 1 << 40,
            other => return Err(format!("{text:?}: unknown unit {other:?} (B, KB, KiB, MB, MiB, GB, GiB, TB, TiB)")),
        };
        Ok(MinFree::Bytes((number * multiplier as f64) as u64))
    }

    /// The threshold in bytes on a filesystem of `total` bytes.
    pub fn threshold(self, total: u64) -> u64 {
        match self {
            MinFree::Bytes(bytes) => bytes,
            MinFree::Percent(percent) => (total as f64 * percent / 100.0) as u64,
        }
    }
}

impl fmt::Display for MinFree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MinFree::Bytes(bytes) => write!(f, "{bytes} bytes"),
            MinFree::Percent(percent) => write!(f, "{percent}%"),
        }
    }
}

/// What the spool's filesystem looked like at the last check (for the listener, metrics, status page).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct DiskSpace {
    /// Bytes available to sluice (`f_bavail`: the root reserve is not counted).
    pub free_bytes: u64,
    pub total_bytes: u64,
    /// `min_free_space` in bytes on this filesystem.
    pub threshold_bytes: u64,
    /// Free space is below the threshold: new mail is refused with 452 4.3.1.
    pub low: bool,
}

#[derive(Debug)]
pub(super) struct DiskGuard {
    dir: PathBuf,
    state: Mutex<Cache>,
}

#[derive(Debug)]
struct Cache {
    min_free: MinFree,
    checked: Option<Instant>,
    space: Option<DiskSpace>,
    /// The last check's verdict, so that entering and leaving the low state are logged once each.
    low: bool,
    /// statvfs failed at the last check (logged once until it works again).
    failing: bool,
}

impl DiskGuard {
    /// Off (threshold 0) until [`DiskGuard::set_min_free`]: the server sets it from the configuration.
    pub(super) fn new(dir: PathBuf) -> DiskGuard {
        DiskGuard {
            dir,
            state: Mutex::new(Cache {
                min_free: MinFree::Bytes(0),
                checked: None,
                space: None,
                low: false,
                failing: false,
            }),
        }
    }

    pub(super) fn set_min_free(&self, min_free: MinFree) {
        let mut cache = self.state.lock().expect("disk guard lock");
        cache.min_free = min_free;
        cache.checked = None;
    }

    /// The free space, looked up at most once a second. `None` when the filesystem cannot be asked
    /// (logged once): mail is then not refused for want of space, the commit itself still reports a
    /// full disk.
    pub(super) fn space(&self) -> Option<DiskSpace> {
        let mut cache = self.state.lock().expect("disk guard lock");
        if cache.checked.is_some_and(|at| at.elapsed() < CACHE_FOR) {
            return cache.space;
        }
        match statvfs(&self.dir) {
            Ok((free, total)) => {
                let threshold = cache.min_free.threshold(total);
                let low = free < threshold;
                if low && !cache.low {
                    warn!(
                        spool = %self.dir.display(),
                        free_bytes = free,
                        threshold_bytes = threshold,
                        "spool filesystem is low on space: new mail is refused with 452 4.3.1 until space is freed"
                    );
                } else if !low && cache.low {
                    info!(
                        spool = %self.dir.display(),
                        free_bytes = free,
                        threshold_bytes = threshold,
                        "spool filesystem has space again: accepting new mail"
                    );
                }
                cache.low = low;
                cache.failing = false;
                cache.space = Some(DiskSpace { free_bytes: free, total_bytes: total, threshold_bytes: threshold, low });
            }
            Err(e) => {
                if !cache.failing {
                    warn!(spool = %self.dir.display(), error = %e, "cannot read the free space of the spool's filesystem");
                }
                cache.failing = true;
                cache.space = None;
            }
        }
        cache.checked = Some(Instant::now());
        cache.space
    }
}

/// (available bytes, total bytes) of the filesystem holding `dir`.
fn statvfs(dir: &std::path::Path) -> io::Result<(u64, u64)> {
    let st = rustix::fs::statvfs(dir)?;
    let unit = if st.f_frsize > 0 { st.f_frsize } else { st.f_bsize };
    Ok((st.f_bavail.saturating_mul(unit), st.f_blocks.saturating_mul(unit)))
}

/// Whether an I/O error means the disk (or the user's quota) is full: ENOSPC or EDQUOT.
pub fn is_disk_full(e: &io::Error) -> bool {
    use rustix::io::Errno;
    matches!(e.raw_os_error(), Some(n) if n == Errno::NOSPC.raw_os_error() || n == Errno::DQUOT.raw_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_percentages_parse() {
        assert_eq!(MinFree::parse("1GiB"), Ok(MinFree::Bytes(1 << 30)));
        assert_eq!(MinFree::parse("500MB"), Ok(MinFree::Bytes(500_000_000)));
        assert_eq!(MinFree::parse("2048"), Ok(MinFree::Bytes(2048)));
        assert_eq!(MinFree::parse("0"), Ok(MinFree::Bytes(0)));
        assert_eq!(MinFree::parse("1.5 GiB"), Ok(MinFree::Bytes(3 << 29)));
        assert_eq!(MinFree::parse("5%"), Ok(MinFree::Percent(5.0)));
        assert!(MinFree::parse("150%").is_err());
        assert!(MinFree::parse("lots").is_err());
        assert!(MinFree::parse("3 parsecs").is_err());
        assert_eq!(MinFree::Percent(10.0).threshold(1000), 100);
    }

    #[test]
    fn a_threshold_above_the_free_space_is_low_and_zero_never_is() {
        let dir = tempfile::tempdir().unwrap();
        let guard = DiskGuard::new(dir.path().to_path_buf());
        assert!(!guard.space().expect("statvfs of a temporary directory").low, "threshold 0 is never low");
        guard.set_min_free(MinFree::Percent(100.0));
        let space = guard.space().unwrap();
        assert!(space.low && space.threshold_bytes == space.total_bytes, "{space:?}");
        guard.set_min_free(MinFree::Bytes(0));
        assert!(!guard.space().unwrap().low);
    }

    #[test]
    fn enospc_and_edquot_mean_full() {
        assert!(is_disk_full(&io::Error::from_raw_os_error(rustix::io::Errno::NOSPC.raw_os_error())));
        assert!(is_disk_full(&io::Error::from_raw_os_error(rustix::io::Errno::DQUOT.raw_os_error())));
        assert!(!is_disk_full(&io::Error::from_raw_os_error(rustix::io::Errno::IO.raw_os_error())));
        assert!(!is_disk_full(&io::Error::other("no errno")));
    }
}
