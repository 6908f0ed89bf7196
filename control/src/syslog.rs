//! Syslog (RFC 5424) for the event log: every line also goes to the
//! local syslog socket (`/dev/log`) and/or a remote collector over UDP
//! (one message per datagram, RFC 5426) or TCP (octet-counted frames,
//! RFC 6587), as `control.syslog` says.
//!
//! ```text
//! <189>1 2026-12-07T04:39:07.123Z fw1 tandemd 4242 HA - swap: passive -> active (...)
//! ```
//!
//! PRI is facility * 8 + severity: warning for lines that say WARNING or
//! a failure, info for rule logs, notice for the rest. MSGID is the event
//! log's service (SYSTEM, HA, SYNC, POLICY, FIREWALL).
//!
//! It runs on the event log's writer thread, never on the control
//! thread: a collector that is slow or gone costs log lines (counted and
//! said in the log), never a heartbeat. A TCP collector that refuses or
//! breaks is tried again at most every [`RETRY`].

use std::io::Write;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant, SystemTime};

use tandem_config::{SyslogConfig, SyslogTarget};

/// A broken TCP collector is tried again this often at most.
pub const RETRY: Duration = Duration::from_secs(5);
/// Time allowed to connect to or write to a TCP collector.
const TCP_TIME: Duration = Duration::from_millis(500);
/// Longest message sent (RFC 5424 receivers must take 480 bytes, should
/// take 2048).
const MAX_MESSAGE: usize = 2048;

/// How grave a line is (RFC 5424 severities used).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// 4.
    Warning,
    /// 5.
    Notice,
    /// 6.
    Info,
}

impl Severity {
    fn code(self) -> u8 {
        match self {
            Severity::Warning => 4,
            Severity::Notice => 5,
            Severity::Info => 6,
        }
    }

    /// The severity of an event-log line of `service` saying `text`.
    pub fn of(service: &str, text: &str) -> Severity {
        let t = text.to_ascii_lowercase();
        if text.starts_with("WARNING")
            || t.contains("failed")
            || t.contains("died")
            || t.contains("lost")
            || t.contains("refused")
        {
            Severity::Warning
        } else if service == "RULE" {
            Severity::Info
        } else {
            Severity::Notice
        }
    }
}

/// Where messages go (`control.syslog`, checked).
pub type Target = SyslogTarget;

/// Parses `control.syslog`; the error names the field, says what is
/// wrong and what is allowed.
pub fn target(c: &SyslogConfig) -> Result<Target, String> {
    c.target().map_err(|e| format!("control.syslog: {e}"))
}

/// Where messages go, in words (for the log).
pub fn describe(t: &Target) -> String {
    let mut parts = Vec::new();
    if let Some(p) = &t.local {
        parts.push(p.display().to_string());
    }
    if let Some((tcp, a)) = t.remote {
        parts.push(format!("{}://{a}", if tcp { "tcp" } else { "udp" }));
    }
    let facility = tandem_config::SYSLOG_FACILITIES
        .iter()
        .find(|(_, v)| *v == t.facility)
        .map_or("?", |(n, _)| *n);
    format!("{}, facility {facility}, RFC 5424", parts.join(" and "))
}

/// A time as RFC 3339 with milliseconds, UTC (`2026-12-07T04:39:07.123Z`).
pub fn rfc3339(t: SystemTime) -> String {
    let s = crate::eventlog::timestamp(t);
    // "YYYY-MM-DD HH:MM:SS.mmm" -> "YYYY-MM-DDTHH:MM:SS.mmmZ"
    format!("{}T{}Z", &s[..10], &s[11..])
}

/// One RFC 5424 message.
pub fn format(
    facility: u8,
    severity: Severity,
    at: SystemTime,
    host: &str,
    pid: u32,
    msgid: &str,
    text: &str,
) -> String {
    let field = |s: &str, max: usize| -> String {
        let v: String = s
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(max)
            .collect();
        if v.is_empty() {
            "-".into()
        } else {
            v
        }
    };
    let mut m = format!(
        "<{}>1 {} {} tandemd {pid} {} - {text}",
        u16::from(facility) * 8 + u16::from(severity.code()),
        rfc3339(at),
        field(host, 255),
        field(msgid, 32),
    );
    if m.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !m.is_char_boundary(cut) {
            cut -= 1;
        }
        m.truncate(cut);
    }
    m
}

/// The sink: sockets, and what failed.
pub struct Syslog {
    target: Target,
    host: String,
    pid: u32,
    local: Option<UnixDatagram>,
    udp: Option<UdpSocket>,
    tcp: Option<TcpStream>,
    tcp_retry_at: Option<Instant>,
    /// Messages sent, and not sent (per destination).
    pub sent: u64,
    /// Messages a destination did not take.
    pub failed: u64,
    /// A failure not reported yet in the log (what, and how many).
    pub unreported: Option<(String, u64)>,
}

impl Syslog {
    /// A sink for `target`, as host `host` (the node's name).
    pub fn new(target: Target, host: &str) -> Syslog {
        let local = target
            .local
            .as_ref()
            .and_then(|_| UnixDatagram::unbound().ok());
        let udp = match target.remote {
            Some((false, a)) => {
                let bind: SocketAddr = if a.is_ipv4() {
                    "0.0.0.0:0".parse().expect("literal")
                } else {
                    "[::]:0".parse().expect("literal")
                };
                UdpSocket::bind(bind).ok()
            }
            _ => None,
        };
        Syslog {
            target,
            host: host.to_owned(),
            pid: std::process::id(),
            local,
            udp,
            tcp: None,
            tcp_retry_at: None,
            sent: 0,
            failed: 0,
            unreported: None,
        }
    }

    fn fail(&mut self, what: String) {
        self.failed += 1;
        match &mut self.unreported {
            Some((_, n)) => *n += 1,
            None => self.unreported = Some((what, 1)),
        }
    }

    /// Sends one event-log line.
    pub fn send(&mut self, at: SystemTime, service: &str, text: &str) {
        let m = format(
            self.target.facility,
            Severity::of(service, text),
            at,
            &self.host,
            self.pid,
            service,
            text,
        );
        if let (Some(s), Some(path)) = (&self.local, &self.target.local) {
            match s.send_to(m.as_bytes(), path) {
                Ok(_) => self.sent += 1,
                Err(e) => self.fail(format!("the local syslog socket {}: {e}", path.display())),
            }
        }
        match self.target.remote {
            Some((false, addr)) => match self.udp.as_ref().map(|u| u.send_to(m.as_bytes(), addr)) {
                Some(Ok(_)) => self.sent += 1,
                Some(Err(e)) => self.fail(format!("the collector udp://{addr}: {e}")),
                None => self.fail(format!("the collector udp://{addr}: no UDP socket")),
            },
            Some((true, addr)) => self.send_tcp(addr, &m),
            None => {}
        }
    }

    fn send_tcp(&mut self, addr: SocketAddr, m: &str) {
        if self.tcp.is_none() {
            if self.tcp_retry_at.is_some_and(|t| Instant::now() < t) {
                self.fail(format!("the collector tcp://{addr}: not connected"));
                return;
            }
            match TcpStream::connect_timeout(&addr, TCP_TIME) {
                Ok(s) => {
                    let _ = s.set_write_timeout(Some(TCP_TIME));
                    let _ = s.set_nodelay(true);
                    self.tcp = Some(s);
                    self.tcp_retry_at = None;
                }
                Err(e) => {
                    self.tcp_retry_at = Some(Instant::now() + RETRY);
                    self.fail(format!("the collector tcp://{addr}: {e}"));
                    return;
                }
            }
        }
        let frame = format!("{} {m}", m.len());
        let ok = self
            .tcp
            .as_mut()
            .is_some_and(|s| s.write_all(frame.as_bytes()).is_ok());
        if ok {
            self.sent += 1;
        } else {
            self.tcp = None;
            self.tcp_retry_at = Some(Instant::now() + RETRY);
            self.fail(format!("the collector tcp://{addr}: the connection broke"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::time::UNIX_EPOCH;

    fn cfg(local: bool, remote: Option<&str>, facility: Option<&str>) -> SyslogConfig {
        SyslogConfig {
            local,
            socket: None,
            remote: remote.map(str::to_owned),
            facility: facility.map(str::to_owned),
        }
    }

    /// To a local datagram socket, as to /dev/log; a socket that is gone
    /// costs a counted failure.
    #[test]
    fn messages_reach_the_local_socket() {
        let dir = std::env::temp_dir().join(format!("tandem-syslog-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log");
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut c = cfg(true, None, Some("local3"));
        c.socket = Some(path.clone());
        let mut s = Syslog::new(target(&c).unwrap(), "fw1");
        s.send(
            SystemTime::now(),
            "SYSTEM",
            "starting: 2 interfaces, 1 workers",
        );
        let mut buf = [0u8; 4096];
        let n = rx.recv(&mut buf).unwrap();
        let got = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(got.starts_with("<157>1 "), "local3 notice: {got}");
        assert!(
            got.contains(" fw1 tandemd ")
                && got.ends_with(" SYSTEM - starting: 2 interfaces, 1 workers"),
            "{got}"
        );
        drop(rx);
        std::fs::remove_file(&path).unwrap();
        s.send(SystemTime::now(), "SYSTEM", "x");
        assert_eq!((s.sent, s.failed), (1, 1));
        let mut rel = cfg(true, None, None);
        rel.socket = Some(PathBuf::from("dev/log"));
        assert!(target(&rel).unwrap_err().contains("an absolute path"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_configuration_is_read_strictly_and_says_what_is_allowed() {
        let t = target(&cfg(true, Some("udp://198.18.0.5:514"), None)).unwrap();
        assert_eq!(t.facility, 16);
        assert_eq!(t.remote, Some((false, "198.18.0.5:514".parse().unwrap())));
        assert_eq!(t.local, Some(PathBuf::from("/dev/log")));
        let t = target(&cfg(false, Some("tcp://198.18.0.5:6514"), Some("daemon"))).unwrap();
        assert_eq!((t.facility, t.remote.unwrap().0, t.local), (3, true, None));
        let e = target(&cfg(false, Some("198.18.0.5:514"), None)).unwrap_err();
        assert!(
            e.contains("udp://ADDRESS:PORT or tcp://ADDRESS:PORT"),
            "{e}"
        );
        let e = target(&cfg(false, Some("udp://loghost:514"), None)).unwrap_err();
        assert!(e.contains("is not ADDRESS:PORT"), "{e}");
        let e = target(&cfg(true, None, Some("kern"))).unwrap_err();
        assert!(e.contains("allowed user, daemon, local0"), "{e}");
        assert!(e.starts_with("control.syslog: "), "{e}");
        let e = target(&cfg(false, None, None)).unwrap_err();
        assert!(e.contains("nothing to send to"), "{e}");
    }

    #[test]
    fn a_message_follows_rfc_5424() {
        let at = UNIX_EPOCH + Duration::from_millis(1_796_000_000_123);
        let m = format(
            16,
            Severity::Notice,
            at,
            "fw1",
            42,
            "HA",
            "swap: passive -> active",
        );
        assert_eq!(
            m,
            "<133>1 2026-11-30T00:53:20.123Z fw1 tandemd 42 HA - swap: passive -> active"
        );
        assert_eq!(Severity::of("HA", "WARNING: no metrics"), Severity::Warning);
        assert_eq!(
            Severity::of("HA", "HA communication on link X has failed"),
            Severity::Warning
        );
        assert_eq!(Severity::of("RULE", "rule 3 matched"), Severity::Info);
        let m = format(
            16,
            Severity::Warning,
            at,
            "a host",
            1,
            "",
            &"x".repeat(5000),
        );
        assert!(
            m.starts_with("<132>1 2026-11-30T00:53:20.123Z ahost tandemd 1 - - x"),
            "{m}"
        );
        assert_eq!(m.len(), MAX_MESSAGE);
    }

    /// Over UDP and TCP to local receivers: the message arrives whole (TCP
    /// octet-counted); a TCP collector that is gone costs a counted
    /// failure, reported once, and is tried again only after RETRY.
    #[test]
    fn messages_reach_udp_and_tcp_collectors_and_failures_are_counted() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let udp = rx.local_addr().unwrap();
        let mut s = Syslog::new(
            target(&cfg(false, Some(&format!("udp://{udp}")), None)).unwrap(),
            "fw1",
        );
        s.send(SystemTime::now(), "HA", "peer TDLAB0002 found");
        let mut buf = [0u8; 4096];
        let n = rx.recv(&mut buf).unwrap();
        let got = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(
            got.starts_with("<133>1 ") && got.contains(" fw1 tandemd "),
            "{got}"
        );
        assert!(got.ends_with(" HA - peer TDLAB0002 found"), "{got}");
        assert_eq!((s.sent, s.failed), (1, 0));

        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp = l.local_addr().unwrap();
        let mut s = Syslog::new(
            target(&cfg(false, Some(&format!("tcp://{tcp}")), None)).unwrap(),
            "fw1",
        );
        s.send(SystemTime::now(), "SYNC", "one");
        s.send(SystemTime::now(), "SYNC", "two");
        let (mut c, _) = l.accept().unwrap();
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut all = Vec::new();
        let mut chunk = [0u8; 4096];
        while !String::from_utf8_lossy(&all).ends_with("two") {
            let n = std::io::Read::read(&mut c, &mut chunk).unwrap();
            assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&all));
            all.extend_from_slice(&chunk[..n]);
        }
        let text = String::from_utf8(all).unwrap();
        let (len, rest) = text.split_once(' ').unwrap();
        let len: usize = len.parse().unwrap();
        assert!(rest[..len].ends_with(" SYNC - one"), "{text}");
        assert_eq!(s.sent, 2);
        drop(c);
        drop(l);
        let mut gone = Syslog::new(
            target(&cfg(false, Some(&format!("tcp://{tcp}")), None)).unwrap(),
            "fw1",
        );
        gone.send(SystemTime::now(), "HA", "a");
        gone.send(SystemTime::now(), "HA", "b");
        assert_eq!((gone.sent, gone.failed), (0, 2));
        let (what, n) = gone.unreported.clone().unwrap();
        assert!(what.contains(&format!("tcp://{tcp}")), "{what}");
        assert_eq!(n, 2);
        assert!(gone.tcp_retry_at.is_some(), "no retry before RETRY");
    }
}
