//! The node's event log (HA-REFERENCE F7): one line per event, in the
//! style of a firewall's system log, written to a file with size-based
//! rotation and kept in memory for `tandemctl log`.
//!
//! ```text
//! 2026-11-25 02:15:03.120 fw1 HA: forced active: role passive -> active
//! ```

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Lines kept in memory for `tandemctl log`.
pub const MEMORY_LINES: usize = 1000;

/// The event log of one node.
#[derive(Debug)]
pub struct EventLog {
    node: String,
    path: Option<PathBuf>,
    file: Option<File>,
    written: u64,
    max_bytes: u64,
    keep: usize,
    recent: VecDeque<String>,
    /// Write errors (the log never stops the node).
    pub errors: u64,
}

/// `YYYY-MM-DD HH:MM:SS.mmm` (UTC) of a time since the Unix epoch.
pub fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

impl EventLog {
    /// A log for node `node` writing to `path` (created with its directory
    /// if missing), rotated when it reaches `max_bytes` into `path.1` ..
    /// `path.<keep>`. Without a path the log is kept in memory only.
    pub fn open(node: &str, path: Option<&Path>, max_bytes: u64, keep: usize) -> EventLog {
        let mut log = EventLog {
            node: node.to_owned(),
            path: path.map(Path::to_path_buf),
            file: None,
            written: 0,
            max_bytes: max_bytes.max(4096),
            keep: keep.max(1),
            recent: VecDeque::with_capacity(MEMORY_LINES),
            errors: 0,
        };
        log.reopen();
        log
    }

    fn reopen(&mut self) {
        let Some(path) = &self.path else { return };
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        match OpenOptions::new().create(true).append(true).open(path) {
            Ok(f) => {
                self.written = f.metadata().map(|m| m.len()).unwrap_or(0);
                self.file = Some(f);
            }
            Err(_) => {
                self.errors += 1;
                self.file = None;
            }
        }
    }

    fn rotate(&mut self) {
        let Some(path) = self.path.clone() else {
            return;
        };
        self.file = None;
        let name = |i: usize| {
            let mut p = path.clone().into_os_string();
            p.push(format!(".{i}"));
            PathBuf::from(p)
        };
        let _ = std::fs::remove_file(name(self.keep));
        for i in (1..self.keep).rev() {
            let _ = std::fs::rename(name(i), name(i + 1));
        }
        let _ = std::fs::rename(&path, name(1));
        self.reopen();
    }

    /// Records one event of `service` (e.g. "HA", "SYNC", "POLICY").
    pub fn event(&mut self, service: &str, message: impl std::fmt::Display) {
        let line = format!(
            "{} {} {service}: {message}",
            timestamp(SystemTime::now()),
            self.node
        );
        eprintln!("{line}");
        if self.recent.len() == MEMORY_LINES {
            self.recent.pop_front();
        }
        self.recent.push_back(line.clone());
        if self.written + line.len() as u64 + 1 > self.max_bytes {
            self.rotate();
        }
        if let Some(f) = &mut self.file {
            if writeln!(f, "{line}").is_ok() {
                self.written += line.len() as u64 + 1;
            } else {
                self.errors += 1;
            }
        }
    }

    /// The last `n` lines (oldest first).
    pub fn tail(&self, n: usize) -> Vec<String> {
        let skip = self.recent.len().saturating_sub(n);
        self.recent.iter().skip(skip).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_civil_utc_dates() {
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01 00:00:00.000");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_572_829_123);
        assert_eq!(timestamp(t), "2026-11-25 02:13:49.123");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(&timestamp(leap)[..10], "2000-02-29");
    }

    #[test]
    fn events_are_written_kept_and_rotated() {
        let dir = std::env::temp_dir().join(format!("tandem-eventlog-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("ha.log");
        let mut log = EventLog::open("fw1", Some(&path), 4096, 2);
        for i in 0..200 {
            log.event(
                "HA",
                format_args!("event number {i} with some padding to fill the file"),
            );
        }
        assert_eq!(log.errors, 0);
        let tail = log.tail(2);
        assert_eq!(tail.len(), 2);
        assert!(
            tail[1].ends_with("fw1 HA: event number 199 with some padding to fill the file"),
            "{tail:?}"
        );
        let current = std::fs::read_to_string(&path).unwrap();
        assert!(current.len() <= 4096, "rotated at the size limit");
        assert!(current.contains("event number 199"));
        assert!(path.with_extension("log.1").exists(), "one rotated file");
        assert!(
            path.with_extension("log.2").exists(),
            "two rotated files kept"
        );
        assert!(
            !path.with_extension("log.3").exists(),
            "no more than `keep`"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_log_without_a_file_keeps_lines_in_memory() {
        let mut log = EventLog::open("fw2", None, 0, 0);
        for i in 0..(MEMORY_LINES + 5) {
            log.event("SYNC", i);
        }
        assert_eq!(log.tail(usize::MAX).len(), MEMORY_LINES);
        assert!(log.tail(1)[0].ends_with(&format!("SYNC: {}", MEMORY_LINES + 4)));
    }
}
