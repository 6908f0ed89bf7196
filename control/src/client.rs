//! The operator's end of the control socket: one request, one answer, and
//! the human-readable rendering of the answers that `tandemctl` prints.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{
    connect, setsockopt, socket, sockopt::SendTimeout, AddressFamily, SockFlag, SockType, UnixAddr,
};
use nix::sys::time::{TimeVal, TimeValLike};
use thiserror::Error;

use crate::api::{
    parse_response, ConnectionsReport, HaInfo, HaMemberInfo, IdentityReport, Request, Response,
    StatsReport, StatusReport, SyncReport,
};

/// The largest answer `tandemctl` accepts (the connection table can be big).
pub const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;

/// Why no answer could be had from the daemon.
#[derive(Debug, Error)]
pub enum ClientError {
    /// Nothing listens at the socket path.
    #[error("cannot connect to {}: {reason}. Is tandemd running? Use --socket to pick another node.", path.display())]
    NotRunning {
        /// The socket path.
        path: PathBuf,
        /// What the system said.
        reason: String,
    },
    /// The socket or its directory is root only.
    #[error("cannot connect to {}: Permission denied. The control socket is for root only: run tandemctl as root.", path.display())]
    PermissionDenied {
        /// The socket path.
        path: PathBuf,
    },
    /// Connecting failed for another reason.
    #[error("cannot connect to {}: {reason}. Check the --socket path.", path.display())]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// What the system said.
        reason: String,
    },
    /// The daemon did not answer in time.
    #[error("no answer from tandemd on {} within {timeout_ms} ms. It may be busy or stuck: retry, or allow more time with --timeout-ms.", path.display())]
    Timeout {
        /// The socket path.
        path: PathBuf,
        /// The time allowed.
        timeout_ms: u128,
    },
    /// The daemon hung up without answering.
    #[error("tandemd on {} closed the connection without answering. Retry; if it persists, check tandemd's log.", path.display())]
    Closed {
        /// The socket path.
        path: PathBuf,
    },
    /// Sending or receiving failed.
    #[error("lost the connection to tandemd on {}: {reason}. Retry; if it persists, check tandemd's log.", path.display())]
    Io {
        /// The socket path.
        path: PathBuf,
        /// What the system said.
        reason: String,
    },
    /// The answer exceeds [`MAX_RESPONSE_BYTES`].
    #[error("tandemd on {} sent an answer larger than {max} bytes; tandemctl gave up reading it.", path.display())]
    ResponseTooLarge {
        /// The socket path.
        path: PathBuf,
        /// The limit.
        max: usize,
    },
    /// The answer is not a response this `tandemctl` understands.
    #[error("tandemd on {} sent an answer tandemctl cannot read ({reason}). Check that tandemctl and tandemd are the same version.", path.display())]
    BadResponse {
        /// The socket path.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// Sends `req` to the daemon listening on `socket` and returns its answer,
/// waiting at most `timeout` in all.
pub fn request(socket: &Path, req: &Request, timeout: Duration) -> Result<Response, ClientError> {
    let deadline = Instant::now() + timeout;
    let timed_out = || ClientError::Timeout {
        path: socket.to_owned(),
        timeout_ms: timeout.as_millis(),
    };
    let lost = |e: io::Error| ClientError::Io {
        path: socket.to_owned(),
        reason: describe(&e),
    };
    let mut stream = connect_within(socket, timeout)?;

    stream
        .set_write_timeout(Some(remaining(deadline).ok_or_else(timed_out)?))
        .map_err(lost)?;
    match stream.write_all(&req.to_line()) {
        Ok(()) => {}
        Err(e) if is_timeout(&e) => return Err(timed_out()),
        // The daemon may have answered (busy, permission denied) and closed
        // before reading: the answer is still there to read.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ) => {}
        Err(e) => return Err(lost(e)),
    }

    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    // Only what arrived last is searched for the newline: a big answer
    // (a listing of 100,000 connections) is read in linear time.
    let mut end = None;
    while end.is_none() {
        if buf.len() > MAX_RESPONSE_BYTES {
            return Err(ClientError::ResponseTooLarge {
                path: socket.to_owned(),
                max: MAX_RESPONSE_BYTES,
            });
        }
        stream
            .set_read_timeout(Some(remaining(deadline).ok_or_else(timed_out)?))
            .map_err(lost)?;
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                end = chunk[..n]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map(|i| buf.len() + i);
                buf.extend_from_slice(&chunk[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => return Err(timed_out()),
            // A reset once the answer is in is just the daemon's close.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
            Err(e) => return Err(lost(e)),
        }
    }
    let line = match end {
        Some(end) => &buf[..end],
        None => &buf[..],
    };
    if line.is_empty() {
        return Err(ClientError::Closed {
            path: socket.to_owned(),
        });
    }
    parse_response(line).map_err(|e| ClientError::BadResponse {
        path: socket.to_owned(),
        reason: e.to_string(),
    })
}

/// Connects without waiting longer than `timeout` for a daemon whose
/// listen backlog is full.
fn connect_within(path: &Path, timeout: Duration) -> Result<UnixStream, ClientError> {
    let fail = |errno: Errno| match errno {
        Errno::ENOENT | Errno::ECONNREFUSED => ClientError::NotRunning {
            path: path.to_owned(),
            reason: errno.desc().to_owned(),
        },
        Errno::EACCES | Errno::EPERM => ClientError::PermissionDenied {
            path: path.to_owned(),
        },
        Errno::EAGAIN | Errno::ETIMEDOUT => ClientError::Timeout {
            path: path.to_owned(),
            timeout_ms: timeout.as_millis(),
        },
        other => ClientError::Connect {
            path: path.to_owned(),
            reason: other.desc().to_owned(),
        },
    };
    let addr = UnixAddr::new(path).map_err(fail)?;
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(fail)?;
    // Zero would mean "wait forever".
    let ms = i64::try_from(timeout.as_millis())
        .unwrap_or(i64::MAX)
        .max(1);
    setsockopt(&fd, SendTimeout, &TimeVal::milliseconds(ms)).map_err(fail)?;
    connect(fd.as_raw_fd(), &addr).map_err(fail)?;
    Ok(UnixStream::from(fd))
}

fn remaining(deadline: Instant) -> Option<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// The system's description of an error, without the "(os error N)" tail.
fn describe(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => Errno::from_raw(code).desc().to_owned(),
        None => e.to_string(),
    }
}

/// Renders a status report as `tandemctl status` prints it.
pub fn format_status(report: &StatusReport) -> String {
    let mut out = String::new();
    let fields = [
        ("node", report.node.clone()),
        ("serial", report.serial.clone()),
        ("version", report.version.clone()),
        ("pid", report.pid.to_string()),
        (
            "uptime",
            format!(
                "{} (since {})",
                format_duration(report.uptime_secs),
                format_unix_time(report.started_unix)
            ),
        ),
        ("config", report.config_path.clone()),
        ("poll mode", report.poll_mode.clone()),
        (
            "role",
            match &report.forced {
                Some(f) => format!("{} (forced {f})", report.role),
                None => report.role.clone(),
            },
        ),
    ];
    for (key, value) in fields {
        let _ = writeln!(out, "{:<10} {value}", format!("{key}:"));
    }

    section(&mut out, "Interfaces", report.interfaces.is_empty(), || {
        let mut t = Table::new(&[
            ("NAME", L),
            ("PORT", R),
            ("MAC", L),
            ("LINK", L),
            ("SOURCE", L),
            ("SPEED", R),
            ("MTU", R),
            ("QUEUES", R),
            ("STEERING", L),
            ("ADDRESSES", L),
            ("DEVICE", L),
        ]);
        for i in &report.interfaces {
            t.row(vec![
                i.name.clone(),
                i.port_id.to_string(),
                i.mac.clone(),
                if i.link_up { "up" } else { "down" }.to_owned(),
                i.link_source.clone(),
                format_speed(i.speed_mbps),
                i.mtu.to_string(),
                format!("{}/{}", i.rx_queues, i.tx_queues),
                or_dash(i.steering.clone()),
                or_dash(i.addresses.join(",")),
                i.device.clone(),
            ]);
        }
        t
    });

    section(&mut out, "Routes", report.routes.is_empty(), || {
        let mut t = Table::new(&[
            ("DESTINATION", L),
            ("VIA", L),
            ("INTERFACE", L),
            ("KIND", L),
        ]);
        for r in &report.routes {
            t.row(vec![
                r.destination.clone(),
                or_dash(r.via.clone().unwrap_or_default()),
                r.interface.clone(),
                r.kind.clone(),
            ]);
        }
        t
    });

    section(&mut out, "Neighbours", report.neighbours.is_empty(), || {
        let mut t = Table::new(&[
            ("IP", L),
            ("MAC", L),
            ("INTERFACE", L),
            ("STATE", L),
            ("AGE", R),
        ]);
        for n in &report.neighbours {
            t.row(vec![
                n.ip.clone(),
                or_dash(n.mac.clone().unwrap_or_default()),
                n.interface.clone(),
                n.state.clone(),
                format_age(n.age_ms),
            ]);
        }
        t
    });

    section(&mut out, "Workers", report.workers.is_empty(), || {
        let mut t = Table::new(&[("ID", R), ("CPU", R), ("LCORE", R), ("QUEUES", R)]);
        for w in &report.workers {
            t.row(vec![
                w.id.to_string(),
                w.cpu.map_or_else(|| "-".to_owned(), |c| c.to_string()),
                w.lcore.map_or_else(|| "-".to_owned(), |c| c.to_string()),
                w.queues.to_string(),
            ]);
        }
        t
    });
    out
}

/// Renders a stats report as `tandemctl stats` prints it: drop reasons
/// that are zero everywhere are left out unless `all` is set.
pub fn format_stats(report: &StatsReport, all: bool) -> String {
    let mut out = String::new();

    section(&mut out, "Ports", report.ports.is_empty(), || {
        let mut t = Table::new(&[
            ("NAME", L),
            ("PORT", R),
            ("RX PACKETS", R),
            ("RX BYTES", R),
            ("TX PACKETS", R),
            ("TX BYTES", R),
            ("RX MISSED", R),
            ("RX ERRORS", R),
            ("TX ERRORS", R),
            ("RX NOMBUF", R),
        ]);
        for p in &report.ports {
            t.row(vec![
                p.name.clone(),
                p.port_id.to_string(),
                p.rx_packets.to_string(),
                p.rx_bytes.to_string(),
                p.tx_packets.to_string(),
                p.tx_bytes.to_string(),
                p.rx_missed.to_string(),
                p.rx_errors.to_string(),
                p.tx_errors.to_string(),
                p.rx_nombuf.to_string(),
            ]);
        }
        t
    });

    section(&mut out, "Workers", report.workers.is_empty(), || {
        let mut t = Table::new(&[
            ("ID", R),
            ("RX", R),
            ("TX", R),
            ("FORWARDED", R),
            ("REPLIES", R),
            ("HELD", R),
            ("ARP REQ", R),
            ("ICMP ERR", R),
            ("TX DROPPED", R),
            ("HANDOFF OUT", R),
            ("HANDOFF IN", R),
            ("CONNS", R),
            ("POLLS", R),
            ("IDLE POLLS", R),
            ("SLEEPS", R),
        ]);
        for w in &report.workers {
            t.row(vec![
                w.id.to_string(),
                w.rx_packets.to_string(),
                w.tx_packets.to_string(),
                w.forwarded.to_string(),
                w.replies.to_string(),
                w.held.to_string(),
                w.arp_requests_sent.to_string(),
                w.icmp_errors_sent.to_string(),
                w.tx_dropped.to_string(),
                w.handoffs_out.to_string(),
                w.handoffs_in.to_string(),
                w.connections.to_string(),
                w.polls.to_string(),
                w.idle_polls.to_string(),
                w.sleeps.to_string(),
            ]);
        }
        t
    });

    // Every reason any worker or the total knows, in name order.
    let mut reasons: Vec<&String> = report
        .drops_total
        .keys()
        .chain(report.workers.iter().flat_map(|w| w.drops.keys()))
        .collect();
    reasons.sort();
    reasons.dedup();
    let count =
        |w: &crate::api::WorkerStats, reason: &str| w.drops.get(reason).copied().unwrap_or(0);
    let total = |reason: &str| {
        report
            .drops_total
            .get(reason)
            .copied()
            .unwrap_or_else(|| report.workers.iter().map(|w| count(w, reason)).sum())
    };
    reasons.retain(|r| all || total(r) != 0 || report.workers.iter().any(|w| count(w, r) != 0));
    if let Some(fw) = &report.firewall {
        if !out.is_empty() {
            out.push('\n');
        }
        let _ = writeln!(
            out,
            "Firewall: {} connections (capacity {}), {} created, {} deleted, {} expired, {} passed, {} deltas, {} rules",
            fw.connections, fw.capacity, fw.created, fw.deleted, fw.expired, fw.passed, fw.deltas, fw.rules
        );
    }
    let title = if all { "Drops" } else { "Drops (non-zero)" };
    section(&mut out, title, reasons.is_empty(), || {
        let headers: Vec<(String, Align)> = [("REASON".to_owned(), L), ("TOTAL".to_owned(), R)]
            .into_iter()
            .chain(report.workers.iter().map(|w| (format!("W{}", w.id), R)))
            .collect();
        let mut t = Table::with_headers(headers);
        for reason in &reasons {
            let mut row = vec![(*reason).clone(), total(reason).to_string()];
            row.extend(report.workers.iter().map(|w| count(w, reason).to_string()));
            t.row(row);
        }
        t
    });
    out
}

/// Human-readable text of a `sync` answer.
pub fn format_sync(r: &SyncReport) -> String {
    let mut out = String::new();
    let yn = |b: bool| if b { "yes" } else { "no" };
    let _ = writeln!(out, "peer up:       {}", yn(r.peer_up));
    let _ = writeln!(out, "synchronized:  {}", yn(r.synchronized));
    let _ = writeln!(
        out,
        "link:          {}",
        r.link.as_deref().unwrap_or("none up")
    );
    let _ = writeln!(out, "larval:        {}", r.larval);
    let _ = writeln!(
        out,
        "records:       {} queued, {} refused; {} installs ({} dropped)",
        r.records_queued, r.records_refused, r.installs, r.installs_dropped
    );
    let _ = writeln!(
        out,
        "datagrams:     {} sent, {} received, {} dropped",
        r.datagrams_sent, r.datagrams_received, r.datagrams_dropped
    );
    let _ = writeln!(
        out,
        "bulk syncs:    {} sent, {} received",
        r.bulks_sent, r.bulks_received
    );
    let _ = writeln!(
        out,
        "lag (ms):      p50 {} p90 {} p99 {} max {} ({} samples)",
        r.lag_ms[0], r.lag_ms[1], r.lag_ms[2], r.lag_ms[3], r.lag_samples
    );
    let nonzero: Vec<_> = r.details.iter().filter(|(_, v)| **v != 0).collect();
    section(&mut out, "Session", nonzero.is_empty(), || {
        let mut t = Table::new(&[("COUNTER", L), ("VALUE", R)]);
        for (k, v) in nonzero {
            t.row(vec![k.clone(), v.to_string()]);
        }
        t
    });
    out
}

/// Human-readable text of a `hainfo` answer: the members side by side,
/// then the paths to the peer.
/// `tandemctl identity`: one field per line; without an identity file,
/// what that means and how to write one.
pub fn format_identity(r: &IdentityReport) -> String {
    let mut out = format!("serial    {}\n", r.serial);
    match (&r.model, &r.licence, r.ports) {
        (Some(model), Some(licence), Some(ports)) => {
            out += &format!(
                "model     {model}\nlicence   {licence}\nports     {ports}\nfirmware  {}\nfile      {}\n",
                r.firmware, r.file
            );
        }
        _ => {
            out += &format!(
                "firmware  {}\nno identity file at {}: this firewall runs alone and cannot create or join a cluster. Write one with the hardware's facts, e.g. (serial: \"{}\", model: \"TD-LAB\", licence: Master, ports: 2)\n",
                r.firmware, r.file, r.serial
            );
        }
    }
    out
}

pub fn format_hainfo(r: &HaInfo, verbose: bool) -> String {
    let mut out = String::new();
    let yn = |b: bool| if b { "yes" } else { "no" };
    let _ = writeln!(out, "state:         {}", r.state);
    let _ = writeln!(
        out,
        "election:      {}",
        if r.election { "on" } else { "off" }
    );
    if verbose {
        let _ = writeln!(out, "members heard: {} of 2", r.members_heard.max(1));
        if let Some(s) = &r.peer_status_source {
            let _ = writeln!(out, "peer status:   {s}");
        }
    }
    section(&mut out, "Nodes status", false, || nodes_table(r, verbose));
    if !r.local.synchronized && r.local.role == "passive" {
        let _ = writeln!(
            out,
            "note: this member is not synchronized yet: it will not preempt, and a takeover now would lose connections"
        );
    }
    section(&mut out, "Links", r.links.is_empty(), || {
        let mut t = Table::new(&[
            ("LINK", L),
            ("INTERFACE", L),
            ("ADDRESS", L),
            ("PEER", L),
            ("UP", L),
            ("PEER HEARD", L),
            ("LAST HEARD", R),
            ("MAX GAP", R),
            ("LATE", R),
        ]);
        for l in &r.links {
            t.row(vec![
                l.name.clone(),
                l.interface.clone(),
                l.address.clone(),
                l.peer.clone(),
                yn(l.carrier).into(),
                yn(l.peer_heard).into(),
                l.last_heard_ms_ago
                    .map_or_else(|| "never".into(), |ms| format!("{ms} ms ago")),
                format!("{:.1} ms", l.max_gap_ms),
                format!("{}/{}", l.late, l.heartbeats),
            ]);
        }
        t
    });
    let _ = writeln!(
        out,
        "icmp check:    {}{}",
        r.icmp_check,
        r.last_icmp_rtt_us.map_or_else(String::new, |us| format!(
            " (last answer in {:.1} ms)",
            us as f64 / 1e3
        ))
    );
    if r.dual_active {
        let _ = writeln!(
            out,
            "DUAL ACTIVE:   both members are active; the lower-ranked one is yielding"
        );
    }
    let _ = writeln!(
        out,
        "swaps:         {}{}",
        r.swaps,
        r.last_swap
            .as_ref()
            .map_or_else(String::new, |s| format!(", last: {s}"))
    );
    let d = &r.data_path;
    let _ = writeln!(
        out,
        "data path:     {} heartbeats in, {} checks answered, {} answers in ({} accepted), {} sent, {} not sent",
        d.heartbeats_in, d.checks_answered, d.answers_in, d.answers_accepted, d.sent, d.send_failed
    );
    let _ = writeln!(
        out,
        "refused:       {} policed, {} not on an HA port, {} before start, {} bad length, {} unauthentic, {} reflected, {} wrong peer, {} stale, {} channel full",
        d.policed,
        d.not_ha_port,
        d.not_ready,
        d.bad_length,
        d.unauthentic,
        d.reflected,
        d.wrong_peer,
        d.stale,
        d.channel_full
    );
    if let Some(w) = &r.key_file_warning {
        let _ = writeln!(out, "WARNING:       {w}");
    }
    if !r.key.is_empty() {
        let _ = writeln!(out, "cluster key:   {}", r.key);
    }
    if let Some(t) = &r.tpm {
        let _ = writeln!(out, "tpm:           {t}");
    }
    if let Some(k) = &r.key_store {
        let _ = writeln!(out, "key store:     {k}");
    }
    let _ = writeln!(out, "rejected:      {} heartbeats", r.heartbeats_rejected);
    for p in &r.quality_problems {
        let _ = writeln!(out, "quality check failed: {p}");
    }
    if r.sync_version > 0 {
        let _ = writeln!(out, "state sync:    K2K version {}", r.sync_version);
    }
    if let Some(p) = &r.peer_service {
        let refused = p.refused_malformed
            + p.refused_auth
            + p.refused_oversize
            + p.refused_timeout
            + p.refused_busy;
        let _ = writeln!(
            out,
            "members' service (TCP 1300): on {}; {} connections, {} authenticated, {} requests; refused {refused} (malformed {}, wrong key {}, oversize {}, timeout {}, busy {})",
            p.listening.join(", "),
            p.accepted,
            p.authenticated,
            p.requests,
            p.refused_malformed,
            p.refused_auth,
            p.refused_oversize,
            p.refused_timeout,
            p.refused_busy
        );
    }
    if let Some(c) = &r.config {
        section(&mut out, "Configuration", false, || {
            let mut t = Table::new(&[
                ("", L),
                ("SERIAL", L),
                ("REVISION", R),
                ("LOCAL CHANGES", L),
                ("DIGEST", L),
                ("LAST CONF SYNC", L),
            ]);
            for (name, m) in [("local", Some(&c.local)), ("peer", c.peer.as_ref())] {
                let mut row = vec![name.to_string()];
                match m {
                    Some(m) => row.extend([
                        m.serial.clone(),
                        m.revision.clone(),
                        yn(m.local_changes).into(),
                        m.digest.clone(),
                        m.last_sync.clone(),
                    ]),
                    None => row.extend(vec!["(no answer)".to_string(); 5]),
                }
                t.row(row);
            }
            t
        });
        let _ = writeln!(
            out,
            "conf sync:     {}",
            match c.synchronized {
                Some(true) => "both members have the same configuration".to_string(),
                Some(false) => "the members' configurations differ".to_string(),
                None => format!(
                    "unknown: {}",
                    c.peer_error
                        .as_deref()
                        .unwrap_or("the peer was not asked yet")
                ),
            }
        );
        for g in &c.file_groups {
            let _ = writeln!(out, "file group:    {g}");
        }
        if let Some(n) = &c.notice {
            let _ = writeln!(out, "{n}");
        }
    }
    out
}

/// Human-readable text of a `conn list` answer.
pub fn format_connections(report: &ConnectionsReport) -> String {
    let mut out = String::new();
    let shown = report.connections.len() as u64;
    let title = if shown < report.total {
        format!("Connections ({shown} of {})", report.total)
    } else {
        format!("Connections ({})", report.total)
    };
    section(&mut out, &title, report.connections.is_empty(), || {
        let mut t = Table::new(&[
            ("PROTO", L),
            ("SOURCE", L),
            ("DESTINATION", L),
            ("STATE", L),
            ("NAT", L),
            ("RULE", R),
            ("AGE", R),
            ("EXPIRES", R),
            ("PKTS", R),
            ("BYTES", R),
            ("FLAGS", L),
            ("W", R),
        ]);
        for c in &report.connections {
            let nat = c.nat.as_ref().map_or_else(
                || "-".to_owned(),
                |n| {
                    format!(
                        "{} {}:{}",
                        if n.kind == "source" { "src" } else { "dst" },
                        n.addr,
                        n.port
                    )
                },
            );
            let mut flags = String::new();
            if c.sync {
                flags.push('S');
            }
            if c.larval {
                flags.push('L');
            }
            if flags.is_empty() {
                flags.push('-');
            }
            t.row(vec![
                c.proto.clone(),
                format!("{}:{}", c.src, c.sport),
                format!("{}:{}", c.dst, c.dport),
                c.state.clone(),
                nat,
                c.rule.to_string(),
                format!("{}s", c.age_ms / 1000),
                format!("{}s", c.expires_ms / 1000),
                format!("{}/{}", c.packets_orig, c.packets_reply),
                format!("{}/{}", c.bytes_orig, c.bytes_reply),
                flags,
                c.worker.to_string(),
            ]);
        }
        t
    });
    out
}

/// Human-readable text of a `policy show` answer.
pub fn format_policy(p: &crate::api::PolicyReport) -> String {
    let mut out = format!("policy {}\n", p.path);
    section(&mut out, "Rules", p.rules.is_empty(), || {
        let mut t = Table::new(&[
            ("#", R),
            ("NAME", L),
            ("ACTION", L),
            ("LOG", L),
            ("HITS", R),
            ("BYTES", R),
        ]);
        for r in &p.rules {
            t.row(vec![
                r.index.to_string(),
                r.name.clone(),
                if r.enabled {
                    r.action.clone()
                } else {
                    format!("{} (disabled)", r.action)
                },
                (if r.log { "yes" } else { "no" }).into(),
                r.hits.to_string(),
                r.bytes.to_string(),
            ]);
        }
        t.row(vec![
            "-".into(),
            "default".into(),
            p.default_action.clone(),
            "no".into(),
            p.default_hits.to_string(),
            p.default_bytes.to_string(),
        ]);
        t
    });
    let _ = writeln!(
        out,
        "hits: connections a pass rule opened, packets a block or reject rule stopped, since the policy was loaded; bytes: of those connections both ways, or of those packets"
    );
    if p.log_suppressed > 0 {
        let _ = writeln!(
            out,
            "log: {} matches of logged rules were not logged (over the rate limit, or the queue was full)",
            p.log_suppressed
        );
    }
    out
}

/// hainfo's per-field table: one row per field, a column per member.
fn nodes_table(r: &HaInfo, verbose: bool) -> Table {
    let peer = r.peer.as_ref();
    let head = |m: Option<&HaMemberInfo>, local: bool| match m {
        Some(m) if local => format!("{} (local)", m.serial),
        Some(m) => m.serial.clone(),
        None => "peer (not heard)".into(),
    };
    let mut t = Table::with_headers(vec![
        (String::new(), L),
        (head(Some(&r.local), true), L),
        (head(peer, false), L),
    ]);
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let time = |v: Option<u64>| v.map_or_else(|| "-".into(), format_unix_time);
    let cfg = r.config.as_deref();
    let mut row = |name: &str, only_verbose: bool, f: &dyn Fn(&HaMemberInfo, bool) -> String| {
        if only_verbose && !verbose {
            return;
        }
        let mut cells = vec![name.to_owned(), f(&r.local, true)];
        cells.push(peer.map_or_else(|| "-".into(), |p| f(p, false)));
        t.row(cells);
    };
    row("model", false, &|m, _| opt(&m.model));
    row("version", false, &|m, _| match (&m.version, &m.slots) {
        (Some(v), Some(sl)) if sl.on_trial => format!("{v} (on trial)"),
        _ => opt(&m.version),
    });
    row("forced", false, &|m, _| {
        m.forced.clone().unwrap_or_else(|| "no".into())
    });
    row("mode", false, &|m, _| {
        if m.alive {
            m.role.clone()
        } else {
            format!("lost (was {})", m.role)
        }
    });
    row("  since", false, &|m, _| {
        if m.since_observed {
            format!("{} (seen here)", time(m.since_unix))
        } else {
            time(m.since_unix)
        }
    });
    row("supervisor", true, &|m, _| {
        // The member that drives the cluster's periodic work (file
        // groups): the active one.
        (if m.role == "active" && m.alive {
            "yes"
        } else {
            "no"
        })
        .into()
    });
    row("K2K version", true, &|m, _| {
        m.k2k_version.map_or_else(|| "-".into(), |v| v.to_string())
    });
    row("conn sync version", true, &|_, _| {
        "n/a (part of K2K)".into()
    });
    row("election version", true, &|m, _| {
        m.heartbeat_version
            .map_or_else(|| "-".into(), |v| v.to_string())
    });
    row("election hold", true, &|m, _| opt(&m.election_hold));
    row("backup partition", false, &|m, _| match &m.slots {
        Some(sl) => format!(
            "slot {}: {}",
            sl.backup_slot,
            sl.backup_version.as_deref().unwrap_or("empty")
        ),
        None => "n/a: no slots (not started by tandem-boot)".into(),
    });
    row("quality", false, &|m, _| format!("{}%", m.quality));
    row("priority", false, &|m, _| m.priority.to_string());
    row("file sync", false, &|m, _| opt(&m.file_sync));
    row("conf synchronized", false, &|m, _| {
        m.conf_synchronized
            .map_or_else(|| "-".into(), |b| (if b { "yes" } else { "no" }).into())
    });
    row("last conf sync", true, &|_, local| {
        cfg.and_then(|c| {
            if local {
                Some(&c.local)
            } else {
                c.peer.as_ref()
            }
        })
        .map_or_else(|| "-".into(), |c| c.last_sync.clone())
    });
    row("licence", true, &|m, _| opt(&m.licence));
    row("boot", false, &|m, _| time(m.boot_unix));
    row("state", true, &|m, _| opt(&m.ha_state));
    row("syncid", true, &|m, _| {
        m.sync_id.map_or_else(|| "-".into(), |v| v.to_string())
    });
    row("table", false, &|m, _| {
        (if m.synchronized {
            "complete"
        } else {
            "incomplete"
        })
        .into()
    });
    row("config revision", false, &|_, local| {
        cfg.and_then(|c| {
            if local {
                Some(&c.local)
            } else {
                c.peer.as_ref()
            }
        })
        .map_or_else(|| "-".into(), |c| c.revision.clone())
    });
    for l in r.links.iter().filter(|l| !l.address.is_empty()) {
        let name = if l.name == "HA-main" {
            "main link".to_string()
        } else {
            format!("{} link", l.name)
        };
        let mut cells = vec![name, format!("{}: {}", l.address, l.state)];
        cells.push(match (&l.peer_view, peer.is_some()) {
            (Some(v), _) => format!("{}: {}", l.peer, v.state),
            (None, true) => format!("{}: {} (as heard here)", l.peer, l.state),
            (None, false) => "-".into(),
        });
        t.row(cells);
        if verbose {
            let theirs = l
                .peer_view
                .as_ref()
                .map_or_else(|| "-".into(), |v| time(v.since_unix));
            t.row(vec!["  since".into(), time(l.state_since_unix), theirs]);
        }
    }
    t
}

/// Appends a titled table, or "Title: none", after a blank line.
fn section(out: &mut String, title: &str, empty: bool, table: impl FnOnce() -> Table) {
    if !out.is_empty() {
        out.push('\n');
    }
    if empty {
        let _ = writeln!(out, "{title}: none");
    } else {
        let _ = writeln!(out, "{title}:");
        table().render(out, "  ");
    }
}

#[derive(Clone, Copy)]
enum Align {
    Left,
    Right,
}
use Align::{Left as L, Right as R};

/// A text table whose columns are as wide as their widest cell.
struct Table {
    headers: Vec<(String, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(headers: &[(&str, Align)]) -> Self {
        Self::with_headers(headers.iter().map(|(h, a)| ((*h).to_owned(), *a)).collect())
    }

    fn with_headers(headers: Vec<(String, Align)>) -> Self {
        Table {
            headers,
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn render(&self, out: &mut String, indent: &str) {
        let header: Vec<String> = self.headers.iter().map(|(h, _)| h.clone()).collect();
        let widths: Vec<usize> = (0..self.headers.len())
            .map(|c| {
                std::iter::once(&header)
                    .chain(&self.rows)
                    .filter_map(|row| row.get(c))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = indent.to_owned();
            for (c, cell) in row.iter().enumerate() {
                let width = widths.get(c).copied().unwrap_or(0);
                if c > 0 {
                    line.push_str("  ");
                }
                match self.headers.get(c).map_or(Align::Left, |(_, a)| *a) {
                    Align::Left => {
                        let _ = write!(line, "{cell:<width$}");
                    }
                    Align::Right => {
                        let _ = write!(line, "{cell:>width$}");
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
    }
}

fn or_dash(s: String) -> String {
    if s.is_empty() {
        "-".to_owned()
    } else {
        s
    }
}

/// `2d 3h 4m 5s`, leading zero units left out.
fn format_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3_600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m {s}s"),
        _ => format!("{d}d {h}h {m}m {s}s"),
    }
}

fn format_age(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms}ms"),
        1_000..=59_999 => format!("{}.{}s", ms / 1_000, ms % 1_000 / 100),
        _ => format_duration(ms / 1_000),
    }
}

fn format_speed(mbps: u32) -> String {
    match mbps {
        0 => "-".to_owned(),
        m if m % 1_000 == 0 => format!("{}G", m / 1_000),
        m => format!("{m}M"),
    }
}

/// `YYYY-MM-DD hh:mm:ss UTC` for seconds since the Unix epoch.
fn format_unix_time(secs: u64) -> String {
    // Howard Hinnant's civil_from_days.
    let days = (secs / 86_400) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let t = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        t / 3_600,
        t / 60 % 60,
        t % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{sample_stats, sample_status};
    use crate::socket::tests::{TempDir, TestServer};
    use std::os::unix::net::UnixListener;

    #[test]
    fn request_returns_the_daemons_answer() {
        let server = TestServer::start("client-ok");
        let timeout = Duration::from_secs(5);
        match request(&server.path, &Request::Status, timeout).unwrap() {
            Response::Status(report) => assert_eq!(report, sample_status()),
            other => panic!("{other:?}"),
        }
        match request(&server.path, &Request::Stats, timeout).unwrap() {
            Response::Stats(report) => assert_eq!(report, sample_stats()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn missing_socket_says_to_check_tandemd_and_the_socket_option() {
        let dir = TempDir::new("client-missing");
        let path = dir.0.join("tandemd.sock");
        let err = request(&path, &Request::Status, Duration::from_secs(1)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "cannot connect to {}: No such file or directory. Is tandemd running? Use --socket to pick another node.",
                path.display()
            )
        );
    }

    #[test]
    fn stale_socket_is_reported_as_not_running() {
        let dir = TempDir::new("client-stale");
        let path = dir.0.join("tandemd.sock");
        drop(UnixListener::bind(&path).unwrap());
        let err = request(&path, &Request::Status, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, ClientError::NotRunning { .. }), "{err}");
        assert!(err.to_string().contains("Connection refused"), "{err}");
    }

    #[test]
    fn silent_daemon_times_out_on_time() {
        let dir = TempDir::new("client-silent");
        let path = dir.0.join("tandemd.sock");
        let _listener = UnixListener::bind(&path).unwrap();
        let started = Instant::now();
        let err = request(&path, &Request::Status, Duration::from_millis(150)).unwrap_err();
        let waited = started.elapsed();
        assert!(
            matches!(
                err,
                ClientError::Timeout {
                    timeout_ms: 150,
                    ..
                }
            ),
            "{err}"
        );
        assert!(waited >= Duration::from_millis(140), "{waited:?}");
        assert!(waited < Duration::from_secs(2), "{waited:?}");
        assert!(err.to_string().contains("--timeout-ms"), "{err}");
    }

    #[test]
    fn garbage_answer_is_a_bad_response() {
        let dir = TempDir::new("client-garbage");
        let path = dir.0.join("tandemd.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let daemon = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(b"hello\n").unwrap();
        });
        let err = request(&path, &Request::Status, Duration::from_secs(5)).unwrap_err();
        daemon.join().unwrap();
        assert!(matches!(err, ClientError::BadResponse { .. }), "{err}");
    }

    #[test]
    fn hang_up_without_answer_is_reported() {
        let dir = TempDir::new("client-hangup");
        let path = dir.0.join("tandemd.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let daemon = std::thread::spawn(move || drop(listener.accept().unwrap()));
        let err = request(&path, &Request::Status, Duration::from_secs(5)).unwrap_err();
        daemon.join().unwrap();
        assert!(matches!(err, ClientError::Closed { .. }), "{err}");
    }

    #[test]
    fn status_is_rendered_as_aligned_tables() {
        let text = format_status(&sample_status());
        let expected = "\
node:      fw-a
serial:    SN-0001
version:   0.1.0
pid:       4242
uptime:    2d 3h 4m 5s (since 2023-11-14 22:13:20 UTC)
config:    /etc/tandem/tandem.ron
poll mode: adaptive
role:      active

Interfaces:
  NAME        PORT  MAC                LINK  SOURCE        SPEED   MTU  QUEUES  STEERING  ADDRESSES               DEVICE
  lan            0  02:00:00:00:00:01  up    dpdk            10G  1500     2/2  rss       10.0.0.1/24,fd00::1/64  0000:00:08.0
  wan-uplink     1  02:00:00:00:00:02  down  kernel:veth1      -  9000     1/1  software  -                       net_af_packet0

Routes:
  DESTINATION  VIA        INTERFACE   KIND
  10.0.0.0/24  -          lan         connected
  0.0.0.0/0    192.0.2.1  wan-uplink  static

Neighbours:
  IP         MAC                INTERFACE   STATE        AGE
  10.0.0.2   02:00:00:00:00:99  lan         reachable   1.2s
  192.0.2.1  -                  wan-uplink  incomplete  40ms

Workers:
  ID  CPU  LCORE  QUEUES
   0    1      1       2
   1    -      -       1
";
        assert_eq!(text, expected, "\n{text}");
    }

    #[test]
    fn empty_sections_say_none() {
        let mut report = sample_status();
        report.routes.clear();
        report.neighbours.clear();
        let text = format_status(&report);
        assert!(
            text.contains("\nRoutes: none\n\nNeighbours: none\n"),
            "{text}"
        );
    }

    #[test]
    fn stats_show_non_zero_drops_unless_all_is_asked() {
        let text = format_stats(&sample_stats(), false);
        let expected = "\
Ports:
  NAME  PORT  RX PACKETS  RX BYTES  TX PACKETS  TX BYTES  RX MISSED  RX ERRORS  TX ERRORS  RX NOMBUF
  lan      0      123456  98765432      120000  95000000          7          0          0          0

Workers:
  ID    RX   TX  FORWARDED  REPLIES  HELD  ARP REQ  ICMP ERR  TX DROPPED  HANDOFF OUT  HANDOFF IN  CONNS  POLLS  IDLE POLLS  SLEEPS
   0  1000  990        980       10     0        3         1           0            0           0      0  10000        7500      12
   1  2000  990        980       10     0        3         1           0            0           0      0  10000        7500      12

Drops (non-zero):
  REASON    TOTAL  W0  W1
  no_route      7   5   2
";
        assert_eq!(text, expected, "\n{text}");

        let all = format_stats(&sample_stats(), true);
        assert!(all.contains("\nDrops:\n  REASON        TOTAL  W0  W1\n  bad_checksum      0   0   0\n  no_route          7   5   2\n  ttl_exceeded      0   0   0\n"), "\n{all}");

        let mut quiet = sample_stats();
        quiet.drops_total.values_mut().for_each(|v| *v = 0);
        quiet
            .workers
            .iter_mut()
            .for_each(|w| w.drops.values_mut().for_each(|v| *v = 0));
        assert!(format_stats(&quiet, false).ends_with("\nDrops (non-zero): none\n"));
    }

    #[test]
    fn times_and_speeds_read_naturally() {
        assert_eq!(format_duration(0), "0s");
        assert_eq!(format_duration(61), "1m 1s");
        assert_eq!(format_duration(3_600), "1h 0m 0s");
        assert_eq!(format_age(59_999), "59.9s");
        assert_eq!(format_age(60_000), "1m 0s");
        assert_eq!(format_speed(2_500), "2500M");
        assert_eq!(format_speed(100_000), "100G");
        assert_eq!(format_unix_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_unix_time(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_unix_time(4_102_444_799), "2099-12-31 23:59:59 UTC");
    }

    #[test]
    fn hainfo_names_every_refusal_and_the_key_file_warning() {
        let mut r = HaInfo::default();
        r.data_path.policed = 450_000;
        r.data_path.reflected = 2;
        r.data_path.unauthentic = 4143;
        r.key_file_warning = Some("fw1.ron ... chmod 600".into());
        let text = format_hainfo(&r, true);
        assert!(text.contains("450000 policed"), "{text}");
        assert!(text.contains("2 reflected"), "{text}");
        assert!(text.contains("4143 unauthentic"), "{text}");
        assert!(
            text.contains("WARNING:       fw1.ron ... chmod 600"),
            "{text}"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(
            json["data_path"]["policed"], 450_000,
            "named fields: {json}"
        );
    }

    /// The Nodes status table: a row per field, a column per member; -v
    /// adds the rows only it prints; an answer of an older daemon (no new
    /// fields) still reads.
    #[test]
    fn hainfo_shows_a_row_per_field_and_v_adds_the_detail_rows() {
        let m = |serial: &str, role: &str| HaMemberInfo {
            serial: serial.into(),
            role: role.into(),
            quality: 100,
            alive: true,
            synchronized: true,
            model: Some("TD-LAB".into()),
            version: Some("0.1.0".into()),
            licence: Some("master".into()),
            since_unix: Some(1_796_000_000),
            boot_unix: Some(1_795_999_000),
            ha_state: Some("running".into()),
            election_hold: Some("none".into()),
            heartbeat_version: Some(2),
            k2k_version: Some(2),
            conf_synchronized: Some(true),
            file_sync: Some("none running".into()),
            ..Default::default()
        };
        let r = HaInfo {
            local: m("TDLAB0001", "active"),
            peer: Some(m("TDLAB0002", "passive")),
            members_heard: 2,
            links: vec![crate::api::HaLinkInfo {
                name: "HA-main".into(),
                address: "198.19.69.1".into(),
                peer: "198.19.69.2".into(),
                state: "OK".into(),
                state_since_unix: Some(1_796_000_000),
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = format_hainfo(&r, false);
        let row = |t: &str, name: &str| -> String {
            t.lines()
                .find(|l| l.trim_start().starts_with(&format!("{name}  ")))
                .unwrap_or_else(|| panic!("no {name} row in\n{t}"))
                .split_whitespace()
                .skip(name.split_whitespace().count())
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert!(
            text.contains("TDLAB0001 (local)") && text.contains("TDLAB0002"),
            "{text}"
        );
        assert_eq!(row(&text, "mode"), "active passive");
        assert_eq!(row(&text, "model"), "TD-LAB TD-LAB");
        assert_eq!(
            row(&text, "main link"),
            "198.19.69.1: OK 198.19.69.2: OK (as heard here)"
        );
        assert!(row(&text, "since").starts_with("2026-"), "{text}");
        for verbose_only in ["licence", "K2K version", "election hold", "supervisor"] {
            assert!(
                !text.contains(verbose_only),
                "{verbose_only} without -v:\n{text}"
            );
        }
        let v = format_hainfo(&r, true);
        assert_eq!(row(&v, "licence"), "master master");
        assert_eq!(row(&v, "supervisor"), "yes no");
        assert_eq!(row(&v, "state"), "running running");
        assert!(v.contains("members heard: 2 of 2"), "{v}");
        // An older daemon's answer: the new fields absent, shown as "-".
        let old: HaInfo = serde_json::from_value(serde_json::json!({
            "election": true, "state": "running",
            "local": {"serial": "TDLAB0001", "role": "active", "forced": null, "quality": 100,
                      "priority": 0, "synchronized": true, "uptime_ms": 5, "since_unix": null,
                      "alive": true},
            "peer": null, "links": [], "icmp_check": "idle", "last_icmp_rtt_us": null,
            "dual_active": false, "swaps": 0, "last_swap": null, "heartbeats_rejected": 0,
            "quality_problems": [], "data_path": serde_json::to_value(HaInfo::default().data_path).unwrap(),
            "sync_version": 0
        }))
        .expect("an older daemon's answer");
        let t = format_hainfo(&old, true);
        assert_eq!(row(&t, "model"), "- -");
    }
}
