//! Prometheus metrics (text exposition format 0.0.4) on a local address
//! (`control.metrics`), served by a thread of its own (`tandem-metrics`).
//!
//! Each scrape asks the daemon over its own control socket, as
//! `tandemctl` would (`status`, `stats`, `sync`, `hainfo`): the exporter
//! adds no path into the control thread, and what it shows is what the
//! operator's commands show. A source that does not answer is reported as
//! `tandem_scrape_error{source="..."} 1` and the rest is still served.
//!
//! The endpoint has no authentication (as Prometheus exporters go):
//! bind it to a management or loopback address.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::api::{HaInfo, PolicyReport, Request, Response, StatsReport, StatusReport, SyncReport};

/// Longest request head read (bytes).
const MAX_HEAD: usize = 8 * 1024;
/// Time a client has to send its request, and to take the answer.
const CLIENT_TIME: Duration = Duration::from_secs(2);
/// Time each question to the daemon may take.
const ASK_TIME: Duration = Duration::from_secs(2);

/// The running exporter.
pub struct Metrics {
    _thread: crate::background::Background,
    /// Where it listens.
    pub listening: SocketAddr,
    /// Scrapes served.
    pub scrapes: Arc<AtomicU64>,
}

impl Metrics {
    /// Listens on `addr` and answers `GET /metrics` from the daemon at
    /// `socket`.
    pub fn start(addr: SocketAddr, socket: &Path) -> std::io::Result<Metrics> {
        let listener = TcpListener::bind(addr).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot listen for metrics on {addr} (control.metrics): {e}"),
            )
        })?;
        listener.set_nonblocking(true)?;
        let listening = listener.local_addr()?;
        let scrapes = Arc::new(AtomicU64::new(0));
        let (n, socket) = (scrapes.clone(), socket.to_path_buf());
        let thread = crate::background::Background::spawn("tandem-metrics", move |stop| {
            serve(&listener, &socket, stop, &n);
        })?;
        Ok(Metrics {
            _thread: thread,
            listening,
            scrapes,
        })
    }
}

fn serve(listener: &TcpListener, socket: &Path, stop: &AtomicBool, scrapes: &AtomicU64) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                if answer(stream, socket) {
                    scrapes.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Asked {
    Metrics,
    Index,
    NotFound,
    BadMethod,
    Malformed,
}

fn parse_head(head: &[u8]) -> Asked {
    let Ok(text) = std::str::from_utf8(head) else {
        return Asked::Malformed;
    };
    let line = text.lines().next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Asked::Malformed;
    };
    if !version.starts_with("HTTP/1.") || parts.next().is_some() {
        return Asked::Malformed;
    }
    if method != "GET" && method != "HEAD" {
        return Asked::BadMethod;
    }
    match target.split('?').next().unwrap_or_default() {
        "/metrics" => Asked::Metrics,
        "/" => Asked::Index,
        _ => Asked::NotFound,
    }
}

/// Reads one request on `stream` and answers it; true for a scrape.
fn answer(mut stream: TcpStream, socket: &Path) -> bool {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(CLIENT_TIME));
    let _ = stream.set_write_timeout(Some(CLIENT_TIME));
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let asked = loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break Asked::Malformed,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            break parse_head(&head);
        }
        if head.len() > MAX_HEAD {
            break Asked::Malformed;
        }
    };
    let (status, body, ctype) = match asked {
        Asked::Metrics => (
            "200 OK",
            scrape(socket),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        Asked::Index => (
            "200 OK",
            "tandemd metrics: GET /metrics (Prometheus text format)\n".to_string(),
            "text/plain; charset=utf-8",
        ),
        Asked::NotFound => (
            "404 Not Found",
            "not found: the metrics are at /metrics\n".to_string(),
            "text/plain; charset=utf-8",
        ),
        Asked::BadMethod => (
            "405 Method Not Allowed",
            "only GET (and HEAD) are served\n".to_string(),
            "text/plain; charset=utf-8",
        ),
        Asked::Malformed => (
            "400 Bad Request",
            "not an HTTP/1.x request head of at most 8 KiB\n".to_string(),
            "text/plain; charset=utf-8",
        ),
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let head_only = head.starts_with(b"HEAD ");
    let _ = stream.write_all(reply.as_bytes());
    if !head_only {
        let _ = stream.write_all(body.as_bytes());
    }
    asked == Asked::Metrics
}

/// Asks the daemon everything and renders it.
fn scrape(socket: &Path) -> String {
    let ask = |r: Request| crate::client::request(socket, &r, ASK_TIME);
    let status = match ask(Request::Status) {
        Ok(Response::Status(s)) => Ok(s),
        other => Err(other),
    };
    let stats = match ask(Request::Stats) {
        Ok(Response::Stats(s)) => Ok(s),
        other => Err(other),
    };
    let sync = match ask(Request::Sync) {
        Ok(Response::Sync(s)) => Some(s),
        _ => None,
    };
    let ha = match ask(Request::HaInfo) {
        Ok(Response::HaInfo(h)) => Some(*h),
        _ => None,
    };
    // A plain router has no policy: no rule counters, not an error.
    let policy = match ask(Request::PolicyShow) {
        Ok(Response::PolicyRules(p)) => Some(*p),
        _ => None,
    };
    let mut errors = Vec::new();
    if status.is_err() {
        errors.push("status");
    }
    if stats.is_err() {
        errors.push("stats");
    }
    render(
        status.as_ref().ok(),
        stats.as_ref().ok(),
        sync.as_ref(),
        ha.as_ref(),
        policy.as_ref(),
        &errors,
    )
}

/// One metric family: its type, help and samples.
#[derive(Default)]
struct Family {
    kind: &'static str,
    help: String,
    samples: Vec<(String, f64)>,
}

/// The families of one scrape, by name (printed in name order).
#[derive(Default)]
struct Out(BTreeMap<String, Family>);

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels(l: &[(&str, &str)]) -> String {
    if l.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = l
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

/// A metric name from a field name: `[a-z0-9_]` only.
fn name_part(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

impl Out {
    fn add(&mut self, name: &str, kind: &'static str, help: &str, l: &[(&str, &str)], v: f64) {
        let f = self.0.entry(name.to_owned()).or_default();
        if f.kind.is_empty() {
            f.kind = kind;
            f.help = help.to_owned();
        }
        f.samples.push((labels(l), v));
    }

    fn gauge(&mut self, name: &str, help: &str, l: &[(&str, &str)], v: f64) {
        self.add(name, "gauge", help, l, v);
    }

    fn counter(&mut self, name: &str, help: &str, l: &[(&str, &str)], v: f64) {
        self.add(name, "counter", help, l, v);
    }

    /// Every number of `value` (a JSON object) as `prefix_<field>`:
    /// counters (`_total`) except the fields listed in `gauges`.
    fn numbers(
        &mut self,
        prefix: &str,
        what: &str,
        value: &Value,
        gauges: &[&str],
        l: &[(&str, &str)],
    ) {
        let Some(obj) = value.as_object() else { return };
        for (k, v) in obj {
            let Some(n) = v.as_f64() else { continue };
            if v.is_boolean() {
                continue;
            }
            let field = name_part(k);
            if gauges.contains(&k.as_str()) {
                self.gauge(&format!("{prefix}_{field}"), &format!("{what}: {k}"), l, n);
            } else {
                self.counter(
                    &format!("{prefix}_{field}_total"),
                    &format!("{what}: {k}"),
                    l,
                    n,
                );
            }
        }
    }

    fn text(&self) -> String {
        let mut out = String::new();
        for (name, f) in &self.0 {
            let _ = writeln!(out, "# HELP {name} {}", f.help.replace('\n', " "));
            let _ = writeln!(out, "# TYPE {name} {}", f.kind);
            for (l, v) in &f.samples {
                let _ = writeln!(out, "{name}{l} {}", number(*v));
            }
        }
        out
    }
}

fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn b(x: bool) -> f64 {
    if x {
        1.0
    } else {
        0.0
    }
}

/// The exposition text of one scrape; `errors` names the sources that did
/// not answer.
pub fn render(
    status: Option<&StatusReport>,
    stats: Option<&StatsReport>,
    sync: Option<&SyncReport>,
    ha: Option<&HaInfo>,
    policy: Option<&PolicyReport>,
    errors: &[&str],
) -> String {
    let mut o = Out::default();
    for source in ["status", "stats"] {
        o.gauge(
            "tandem_scrape_error",
            "1 when a source of this scrape did not answer",
            &[("source", source)],
            b(errors.contains(&source)),
        );
    }
    if let Some(s) = status {
        o.gauge(
            "tandem_info",
            "the node: name, serial and tandemd version",
            &[
                ("node", &s.node),
                ("serial", &s.serial),
                ("version", &s.version),
            ],
            1.0,
        );
        o.gauge(
            "tandem_uptime_seconds",
            "seconds since tandemd started",
            &[],
            s.uptime_secs as f64,
        );
        o.gauge(
            "tandem_active",
            "1 when this node forwards (the active member, or a node alone)",
            &[],
            b(s.role == "active"),
        );
        for i in &s.interfaces {
            o.gauge(
                "tandem_interface_up",
                "1 when the interface's link is up",
                &[("interface", &i.name)],
                b(i.link_up),
            );
        }
    }
    if let Some(s) = stats {
        for p in &s.ports {
            let v = serde_json::to_value(p).unwrap_or_default();
            o.numbers(
                "tandem_port",
                "port counter",
                &v,
                &["port_id"],
                &[("interface", &p.name)],
            );
        }
        o.0.remove("tandem_port_port_id");
        for w in &s.workers {
            let id = w.id.to_string();
            let mut v = serde_json::to_value(w).unwrap_or_default();
            if let Some(obj) = v.as_object_mut() {
                obj.remove("id");
                obj.remove("drops");
            }
            o.numbers(
                "tandem_worker",
                "worker counter",
                &v,
                &["connections"],
                &[("worker", &id)],
            );
            for (reason, n) in &w.drops {
                o.counter(
                    "tandem_worker_drops_total",
                    "packets a worker dropped, by reason",
                    &[("worker", &id), ("reason", reason)],
                    *n as f64,
                );
            }
        }
        for (reason, n) in &s.drops_total {
            o.counter(
                "tandem_drops_total",
                "packets dropped by all workers, by reason",
                &[("reason", reason)],
                *n as f64,
            );
        }
        if let Some(f) = &s.firewall {
            let v = serde_json::to_value(f).unwrap_or_default();
            o.numbers(
                "tandem_firewall",
                "stateful firewall",
                &v,
                &["connections", "capacity", "rules"],
                &[],
            );
        }
    }
    if let Some(s) = sync {
        let mut v = serde_json::to_value(s).unwrap_or_default();
        if let Some(obj) = v.as_object_mut() {
            obj.remove("lag_ms");
        }
        o.numbers("tandem_sync", "state sync (K2K)", &v, &["larval"], &[]);
        o.gauge(
            "tandem_sync_peer_up",
            "1 when the state sync's peer answers",
            &[],
            b(s.peer_up),
        );
        o.gauge(
            "tandem_sync_synchronized",
            "1 when this member holds a complete copy of the peer's table (the passive's view; 0 on an active, whose own table is tandem_ha_table_complete)",
            &[],
            b(s.synchronized),
        );
        for (q, ms) in ["0.5", "0.9", "0.99", "1"].iter().zip(s.lag_ms) {
            o.gauge(
                "tandem_sync_lag_seconds",
                "replication lag (queued to acknowledged) over recent records, by quantile",
                &[("quantile", q)],
                ms as f64 / 1e3,
            );
        }
    }
    if let Some(h) = ha {
        render_ha(&mut o, h);
    }
    if let Some(p) = policy {
        render_rules(&mut o, p);
    }
    o.text()
}

fn render_rules(o: &mut Out, p: &PolicyReport) {
    let rows = p
        .rules
        .iter()
        .map(|r| {
            (
                r.index.to_string(),
                r.name.as_str(),
                &r.action,
                r.hits,
                r.bytes,
            )
        })
        .chain(std::iter::once((
            "default".to_owned(),
            "default",
            &p.default_action,
            p.default_hits,
            p.default_bytes,
        )));
    for (index, name, action, hits, bytes) in rows {
        let l = [("rule", index.as_str()), ("name", name), ("action", action)];
        o.counter(
            "tandem_rule_hits_total",
            "connections a pass rule opened, packets a block or reject rule stopped, since the policy was loaded",
            &l,
            hits as f64,
        );
        o.counter(
            "tandem_rule_bytes_total",
            "bytes of those connections (both ways) or of those packets",
            &l,
            bytes as f64,
        );
    }
    o.gauge(
        "tandem_rule_log_suppressed",
        "matches of logged rules not logged (rate limit, queue full) since start",
        &[],
        p.log_suppressed as f64,
    );
}

fn render_ha(o: &mut Out, h: &HaInfo) {
    let mut members = vec![("local", &h.local)];
    if let Some(p) = &h.peer {
        members.push(("peer", p));
    }
    for (who, m) in members {
        let l = [("member", who), ("serial", m.serial.as_str())];
        o.gauge(
            "tandem_ha_role_active",
            "1 when the member is active, 0 when passive",
            &l,
            b(m.role == "active"),
        );
        o.gauge(
            "tandem_ha_quality",
            "the member's quality factor, 0 to 100",
            &l,
            f64::from(m.quality),
        );
        o.gauge(
            "tandem_ha_priority",
            "the member's priority (50: active if equal)",
            &l,
            f64::from(m.priority),
        );
        o.gauge(
            "tandem_ha_table_complete",
            "1 when the member's connection table is complete",
            &l,
            b(m.synchronized),
        );
        o.gauge(
            "tandem_ha_forced",
            "1 when the member's role is forced (haactive, hapassive)",
            &l,
            b(m.forced.is_some()),
        );
        if who == "peer" {
            o.gauge(
                "tandem_ha_peer_alive",
                "1 when the peer is heard on some path",
                &[("serial", m.serial.as_str())],
                b(m.alive),
            );
        }
    }
    for q in &h.quality_parts {
        let l = [("interface", q.interface.as_str())];
        o.gauge(
            "tandem_ha_quality_interface_up",
            "1 when the data interface counts as up in the quality factor",
            &l,
            b(q.up),
        );
        o.gauge(
            "tandem_ha_quality_interface_weight",
            "the data interface's weight in the quality factor (0: left out)",
            &l,
            f64::from(q.weight),
        );
    }
    o.counter(
        "tandem_ha_swaps_total",
        "role changes of this member since tandemd started",
        &[],
        h.swaps as f64,
    );
    o.counter(
        "tandem_ha_heartbeats_rejected_total",
        "heartbeats refused (bad tag, wrong cluster, replay)",
        &[],
        h.heartbeats_rejected as f64,
    );
    o.gauge(
        "tandem_ha_dual_active",
        "1 while both members are active (a partition being resolved)",
        &[],
        b(h.dual_active),
    );
    o.gauge(
        "tandem_ha_quality_problems",
        "quality checks failing now (disks, TPM, sensors)",
        &[],
        h.quality_problems.len() as f64,
    );
    o.gauge(
        "tandem_ha_key_change_in_progress",
        "1 while a change of the cluster key is under way",
        &[],
        b(!h.key.is_empty() && h.key != "steady"),
    );
    o.gauge(
        "tandem_ha_sync_version",
        "the state sync (K2K) protocol version in use (0: not established)",
        &[],
        f64::from(h.sync_version),
    );
    for l in &h.links {
        let lab = [("link", l.name.as_str())];
        o.gauge(
            "tandem_ha_link_carrier",
            "1 when our end of the HA link is up",
            &lab,
            b(l.carrier),
        );
        o.gauge(
            "tandem_ha_link_peer_heard",
            "1 when the peer's heartbeats arrive on the link",
            &lab,
            b(l.peer_heard),
        );
        if let Some(ms) = l.last_heard_ms_ago {
            o.gauge(
                "tandem_ha_link_last_heard_seconds",
                "time since the peer was last heard on the link",
                &lab,
                ms as f64 / 1e3,
            );
        }
        o.counter(
            "tandem_ha_link_heartbeats_total",
            "heartbeats received on the link",
            &lab,
            l.heartbeats as f64,
        );
        o.gauge(
            "tandem_ha_link_max_gap_seconds",
            "longest gap between two heartbeats on the link since start",
            &lab,
            l.max_gap_ms / 1e3,
        );
        o.gauge(
            "tandem_ha_link_recent_max_gap_seconds",
            "longest gap between two heartbeats that ended in the last 4 to 8 s",
            &lab,
            l.recent_max_gap_ms / 1e3,
        );
        o.counter(
            "tandem_ha_link_late_total",
            "gaps longer than two heartbeat intervals",
            &lab,
            l.late as f64,
        );
    }
    let v = serde_json::to_value(*h.data_path).unwrap_or_default();
    if let Some(obj) = v.as_object() {
        for (k, n) in obj {
            o.counter(
                "tandem_ha_data_path_frames_total",
                "HA frames on the data ports (last-resort heartbeats, ICMP checks), by what became of them",
                &[("counter", k)],
                n.as_f64().unwrap_or(0.0),
            );
        }
    }
}

/// Where a node's metrics are configured, as `tandemctl`'s default socket
/// path is: for the daemon's start-up line.
pub fn describe(addr: SocketAddr, socket: &Path) -> String {
    format!(
        "metrics on http://{addr}/metrics (Prometheus text format, read from {})",
        socket.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{HaLinkInfo, HaMemberInfo, PortStats, WorkerStats};

    fn ha() -> HaInfo {
        let m = |serial: &str, role: &str, q| HaMemberInfo {
            serial: serial.into(),
            role: role.into(),
            quality: q,
            alive: true,
            synchronized: true,
            ..Default::default()
        };
        HaInfo {
            local: m("TDLAB0001", "active", 100),
            peer: Some(m("TDLAB0002", "passive", 63)),
            links: vec![HaLinkInfo {
                name: "HA-main".into(),
                carrier: true,
                peer_heard: true,
                last_heard_ms_ago: Some(3),
                heartbeats: 1234,
                max_gap_ms: 12.5,
                ..Default::default()
            }],
            swaps: 2,
            key: "steady".into(),
            ..Default::default()
        }
    }

    fn stats() -> StatsReport {
        StatsReport {
            ports: vec![PortStats {
                name: "in\"x".into(),
                rx_packets: 10,
                ..Default::default()
            }],
            workers: vec![WorkerStats {
                id: 0,
                forwarded: 7,
                connections: 3,
                drops: [("no_route".to_string(), 4u64)].into_iter().collect(),
                ..Default::default()
            }],
            drops_total: [("no_route".to_string(), 4u64)].into_iter().collect(),
            firewall: None,
        }
    }

    /// Every line is a comment or `name{labels} value`; each family has
    /// one HELP and one TYPE before its samples; counters end in `_total`.
    fn check_exposition(text: &str) -> BTreeMap<String, String> {
        let mut types = BTreeMap::new();
        let mut seen_help = std::collections::BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap();
                assert!(seen_help.insert(name.to_owned()), "two HELP for {name}");
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut p = rest.split(' ');
                let (name, kind) = (p.next().unwrap(), p.next().unwrap());
                assert!(types.insert(name.to_owned(), kind.to_owned()).is_none());
                if kind == "counter" {
                    assert!(name.ends_with("_total"), "{name}");
                }
            } else {
                let (series, value) = line.rsplit_once(' ').expect(line);
                value.parse::<f64>().expect(line);
                let name = series.split('{').next().unwrap();
                assert!(
                    name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "{line}"
                );
                assert!(types.contains_key(name), "a sample before its TYPE: {line}");
            }
        }
        types
    }

    #[test]
    fn a_scrape_renders_every_source_in_the_exposition_format() {
        let policy = PolicyReport {
            rules: vec![crate::api::RuleReport {
                index: 0,
                name: "web".into(),
                action: "pass".into(),
                hits: 5,
                bytes: 7000,
                ..Default::default()
            }],
            default_action: "block".into(),
            default_hits: 2,
            default_bytes: 120,
            ..Default::default()
        };
        let text = render(
            None,
            Some(&stats()),
            None,
            Some(&ha()),
            Some(&policy),
            &["status"],
        );
        let types = check_exposition(&text);
        for want in [
            "tandem_scrape_error{source=\"status\"} 1",
            "tandem_scrape_error{source=\"stats\"} 0",
            "tandem_ha_role_active{member=\"local\",serial=\"TDLAB0001\"} 1",
            "tandem_ha_role_active{member=\"peer\",serial=\"TDLAB0002\"} 0",
            "tandem_ha_quality{member=\"peer\",serial=\"TDLAB0002\"} 63",
            "tandem_ha_swaps_total 2",
            "tandem_ha_link_max_gap_seconds{link=\"HA-main\"} 0.0125",
            "tandem_ha_key_change_in_progress 0",
            "tandem_port_rx_packets_total{interface=\"in\\\"x\"} 10",
            "tandem_worker_forwarded_total{worker=\"0\"} 7",
            "tandem_worker_connections{worker=\"0\"} 3",
            "tandem_worker_drops_total{worker=\"0\",reason=\"no_route\"} 4",
            "tandem_drops_total{reason=\"no_route\"} 4",
            "tandem_rule_hits_total{rule=\"0\",name=\"web\",action=\"pass\"} 5",
            "tandem_rule_bytes_total{rule=\"0\",name=\"web\",action=\"pass\"} 7000",
            "tandem_rule_hits_total{rule=\"default\",name=\"default\",action=\"block\"} 2",
        ] {
            assert!(text.contains(want), "{want}\n{text}");
        }
        assert_eq!(types["tandem_worker_connections"], "gauge");
        assert!(!text.contains("tandem_port_port_id"), "{text}");
        assert!(!text.contains("tandem_info"), "no status: no info line");
    }

    #[test]
    fn request_heads_are_read_strictly() {
        assert_eq!(
            parse_head(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Asked::Metrics
        );
        assert_eq!(
            parse_head(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Asked::Metrics
        );
        assert_eq!(parse_head(b"HEAD / HTTP/1.1\r\n\r\n"), Asked::Index);
        assert_eq!(parse_head(b"GET /other HTTP/1.1\r\n\r\n"), Asked::NotFound);
        assert_eq!(
            parse_head(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Asked::BadMethod
        );
        assert_eq!(parse_head(b"GET /metrics\r\n\r\n"), Asked::Malformed);
        assert_eq!(parse_head(b"GET /metrics SPDY/3\r\n\r\n"), Asked::Malformed);
        assert_eq!(parse_head(&[0xff, 0xfe, b'\n', b'\n']), Asked::Malformed);
    }

    /// Over HTTP, with no daemon behind the socket: the scrape still
    /// answers, and says which sources failed; bad requests get their
    /// status code; an oversized head is cut off.
    #[test]
    fn the_endpoint_answers_over_http_even_without_the_daemon() {
        let m = Metrics::start(
            "127.0.0.1:0".parse().unwrap(),
            Path::new("/nonexistent/tandemd.sock"),
        )
        .unwrap();
        let get = |req: &[u8]| {
            let mut s = TcpStream::connect(m.listening).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(req).unwrap();
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            out
        };
        let r = get(b"GET /metrics HTTP/1.1\r\nHost: fw\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("Content-Type: text/plain; version=0.0.4"), "{r}");
        assert!(
            r.contains("tandem_scrape_error{source=\"status\"} 1"),
            "{r}"
        );
        let body = r.split("\r\n\r\n").nth(1).unwrap();
        check_exposition(body);
        assert!(get(b"GET /nope HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(get(b"DELETE /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
        let big = vec![b'a'; 10_000];
        assert!(String::from_utf8_lossy(&{
            let mut s = TcpStream::connect(m.listening).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = s.write_all(&big);
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out);
            out
        })
        .starts_with("HTTP/1.1 400"));
        assert_eq!(m.scrapes.load(Ordering::Relaxed), 1);
    }
}
