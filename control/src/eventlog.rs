//! The node's event log (HA-REFERENCE F7): one line per event, in the
//! style of a firewall's system log, written to a file with size-based
//! rotation and kept in memory for `tandemctl log`.
//!
//! ```text
//! 2026-11-25 02:15:03.120 fw1 HA: swap: passive -> active (the peer is dead: ...)
//! ```

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam::channel::{bounded, Receiver, Sender, TrySendError};

/// Lines kept in memory for `tandemctl log`.
pub const MEMORY_LINES: usize = 1000;

/// Lines waiting for the writer thread; more are dropped (and counted),
/// never waited for.
pub const QUEUE_LINES: usize = 4096;

/// The event log of one node: a cheap handle (clone it for every thread
/// that logs). [`EventLog::event`] never blocks: it formats the line and
/// hands it to a writer thread over a bounded queue (a full queue drops
/// the line and counts it); the writer thread prints it on stderr, writes
/// the file (with rotation) and keeps the last [`MEMORY_LINES`] in memory.
#[derive(Debug, Clone)]
pub struct EventLog {
    node: Arc<str>,
    tx: Sender<Message>,
    shared: Arc<Shared>,
}

/// What the writer thread and the handles share.
#[derive(Debug, Default)]
struct Shared {
    recent: Mutex<VecDeque<String>>,
    /// Lines dropped because the queue was full (or the writer gone).
    dropped: AtomicU64,
    /// File errors (open, write, rotate): the log never stops the node.
    errors: AtomicU64,
}

enum Message {
    /// A line, when it was logged, and where its service and text start.
    Line {
        line: String,
        at: SystemTime,
        service: (usize, usize),
        text: usize,
    },
    /// Answer once every line queued before is handled.
    Flush(Sender<()>),
    /// Send every line to syslog too from now on.
    Syslog(Box<crate::syslog::Syslog>),
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Message::Line { line, .. } => write!(f, "Line({line:?})"),
            Message::Flush(_) => f.write_str("Flush"),
            Message::Syslog(_) => f.write_str("Syslog"),
        }
    }
}

/// A syslog failure is said in the log at most this often.
const SYSLOG_REPORT_EVERY: Duration = Duration::from_secs(60);

/// The writer thread's file.
struct Writer {
    node: Arc<str>,
    path: Option<PathBuf>,
    file: Option<File>,
    written: u64,
    max_bytes: u64,
    keep: usize,
    shared: Arc<Shared>,
    dropped_reported: u64,
    syslog: Option<Box<crate::syslog::Syslog>>,
    syslog_reported: Option<std::time::Instant>,
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
    /// `path.<keep>`. Without a path the log is kept in memory only. Starts
    /// the writer thread, which ends when every handle is dropped.
    pub fn open(
        node: &str,
        path: Option<&Path>,
        max_bytes: u64,
        keep: usize,
    ) -> std::io::Result<EventLog> {
        Self::open_with_queue(node, path, max_bytes, keep, QUEUE_LINES)
    }

    fn open_with_queue(
        node: &str,
        path: Option<&Path>,
        max_bytes: u64,
        keep: usize,
        queue: usize,
    ) -> std::io::Result<EventLog> {
        let node: Arc<str> = Arc::from(node);
        let shared = Arc::new(Shared::default());
        let (tx, rx) = bounded(queue);
        let mut writer = Writer {
            node: node.clone(),
            path: path.map(Path::to_path_buf),
            file: None,
            written: 0,
            max_bytes: max_bytes.max(4096),
            keep: keep.max(1),
            shared: shared.clone(),
            dropped_reported: 0,
            syslog: None,
            syslog_reported: None,
        };
        writer.reopen();
        std::thread::Builder::new()
            .name("tandem-log".into())
            .spawn(move || writer.run(&rx))?;
        Ok(EventLog { node, tx, shared })
    }

    /// Records one event of `service` (e.g. "HA", "SYNC", "POLICY"). Never
    /// blocks: when the writer is behind by [`QUEUE_LINES`] lines, the line
    /// is dropped and counted (the writer logs how many were lost).
    pub fn event(&self, service: &str, message: impl std::fmt::Display) {
        let at = SystemTime::now();
        let head = format!("{} {} ", timestamp(at), self.node);
        let service_at = (head.len(), head.len() + service.len());
        let line = format!("{head}{service}: {message}");
        let text = service_at.1 + 2;
        match self.tx.try_send(Message::Line {
            line,
            at,
            service: service_at,
            text,
        }) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Sends every line logged from now on to `sink` too (syslog), on the
    /// writer thread.
    pub fn attach_syslog(&self, sink: crate::syslog::Syslog) {
        let _ = self.tx.try_send(Message::Syslog(Box::new(sink)));
    }

    /// Waits (at most `timeout`) until every line logged before is
    /// written; false if the writer did not get there in time. For tests
    /// and the end of the process, not for the control thread.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (ack, done) = bounded(1);
        self.tx.send_timeout(Message::Flush(ack), timeout).is_ok()
            && done.recv_timeout(timeout).is_ok()
    }

    /// The last `n` lines the writer handled (oldest first).
    pub fn tail(&self, n: usize) -> Vec<String> {
        let recent = self
            .shared
            .recent
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let skip = recent.len().saturating_sub(n);
        recent.iter().skip(skip).cloned().collect()
    }

    /// Lines dropped because the writer was behind.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// File errors so far (the log never stops the node).
    pub fn errors(&self) -> u64 {
        self.shared.errors.load(Ordering::Relaxed)
    }
}

impl Writer {
    fn run(&mut self, rx: &Receiver<Message>) {
        while let Ok(m) = rx.recv() {
            match m {
                Message::Line {
                    line,
                    at,
                    service,
                    text,
                } => {
                    self.report_dropped();
                    if let Some(sl) = &mut self.syslog {
                        let svc = line.get(service.0..service.1).unwrap_or("SYSTEM");
                        sl.send(at, svc, line.get(text..).unwrap_or_default());
                    }
                    self.write(line);
                    self.report_syslog();
                }
                Message::Syslog(sink) => self.syslog = Some(sink),
                Message::Flush(ack) => {
                    self.report_dropped();
                    if let Some(f) = &mut self.file {
                        let _ = f.flush();
                    }
                    let _ = ack.try_send(());
                }
            }
        }
    }

    /// Says in the log that syslog did not take lines: at the first
    /// failure, then at most every [`SYSLOG_REPORT_EVERY`].
    fn report_syslog(&mut self) {
        let due = self
            .syslog_reported
            .is_none_or(|t| t.elapsed() >= SYSLOG_REPORT_EVERY);
        let Some(sl) = self.syslog.as_mut().filter(|_| due) else {
            return;
        };
        let Some((what, n)) = sl.unreported.take() else {
            return;
        };
        self.syslog_reported = Some(std::time::Instant::now());
        let line = format!(
            "{} {} SYSTEM: syslog: {n} lines not sent to {what} (retried; {} sent, {} not sent in all)",
            timestamp(SystemTime::now()),
            self.node,
            sl.sent,
            sl.failed
        );
        self.write(line);
    }

    /// Says (once per loss) how many lines the queue dropped.
    fn report_dropped(&mut self) {
        let dropped = self.shared.dropped.load(Ordering::Relaxed);
        if dropped > self.dropped_reported {
            let lost = dropped - self.dropped_reported;
            self.dropped_reported = dropped;
            let line = format!(
                "{} {} SYSTEM: {lost} event-log lines lost: the log writer fell behind (disk slow or full?)",
                timestamp(SystemTime::now()),
                self.node
            );
            self.write(line);
        }
    }

    fn write(&mut self, line: String) {
        eprintln!("{line}");
        if self.written + line.len() as u64 + 1 > self.max_bytes {
            self.rotate();
        }
        if let Some(f) = &mut self.file {
            if writeln!(f, "{line}").is_ok() {
                self.written += line.len() as u64 + 1;
            } else {
                self.shared.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        let mut recent = self
            .shared
            .recent
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if recent.len() == MEMORY_LINES {
            recent.pop_front();
        }
        recent.push_back(line);
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
                self.shared.errors.fetch_add(1, Ordering::Relaxed);
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
        let log = EventLog::open("fw1", Some(&path), 4096, 2).unwrap();
        for i in 0..200 {
            log.event(
                "HA",
                format_args!("event number {i} with some padding to fill the file"),
            );
        }
        assert!(log.flush(Duration::from_secs(5)));
        assert_eq!(log.errors(), 0);
        assert_eq!(log.dropped(), 0);
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
        let log = EventLog::open("fw2", None, 0, 0).unwrap();
        for i in 0..(MEMORY_LINES + 5) {
            log.event("SYNC", i);
        }
        assert!(log.flush(Duration::from_secs(5)));
        assert_eq!(log.tail(usize::MAX).len(), MEMORY_LINES);
        assert!(log.tail(1)[0].ends_with(&format!("SYNC: {}", MEMORY_LINES + 4)));
    }

    #[test]
    fn a_full_queue_drops_and_counts_lines_instead_of_blocking() {
        let log = EventLog::open_with_queue("fw3", None, 0, 0, 8).unwrap();
        // Hold the writer up: it blocks on the memory tail's lock.
        let held = log.shared.recent.lock().unwrap();
        for i in 0..100 {
            log.event("HA", i);
        }
        let dropped = log.dropped();
        assert!(
            (100 - 9..=100).contains(&dropped),
            "the queue holds 8 lines and the writer took at most one: {dropped} dropped"
        );
        drop(held);
        assert!(log.flush(Duration::from_secs(5)));
        let tail = log.tail(usize::MAX);
        // The writer may report the losses in more than one line (it
        // reports what it has seen each time it gets to write): they add
        // up to what was dropped.
        let reports: Vec<u64> = tail
            .iter()
            .filter_map(|l| {
                let (_, rest) = l.split_once("SYSTEM: ")?;
                let n = rest.strip_suffix(
                    " event-log lines lost: the log writer fell behind (disk slow or full?)",
                )?;
                n.parse().ok()
            })
            .collect();
        assert!(!reports.is_empty(), "{tail:?}");
        assert_eq!(reports.iter().sum::<u64>(), dropped, "{tail:?}");
        assert_eq!(tail.len() as u64, 100 - dropped + reports.len() as u64);
    }
}
