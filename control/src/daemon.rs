//! `tandemd`: one node. Loads the configuration, opens the control socket,
//! starts the dataplane and runs the control thread (a mio loop) until
//! SIGTERM or SIGINT.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::net::UnixStream;
use mio::{Events, Interest, Poll, Token};
use tandem_config::NodeConfig;
use tandem_dataplane::node::{device_text, LinkSource, Node, NodeError};

use tandem_dataplane::conntrack::{ConnView, NatKind};
use tandem_dataplane::firewall::ConnQuery;
use tandem_dataplane::worker::Role;

use crate::api::{
    ConnFilter, ConnectionStatus, ConnectionsReport, FirewallStats, InterfaceStatus, NatStatus,
    NeighbourStatus, PortStats, Request, Response, RouteStatus, StatsReport, StatusReport,
    SyncReport, WorkerStats, WorkerStatus,
};
use crate::cluster::Cluster;
use crate::eventlog::EventLog;
use crate::socket::{ControlSocket, SocketError};

/// Why `tandemd` could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The configuration is invalid.
    #[error("{0}")]
    Config(#[from] tandem_config::ConfigError),
    /// The control socket could not be opened.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// The dataplane could not start.
    #[error("dataplane: {0}")]
    Node(#[from] NodeError),
    /// An operating-system call of the control loop failed.
    #[error("control loop: {0}")]
    Io(#[from] std::io::Error),
    /// The event log's writer thread could not start.
    #[error(
        "cannot start the event log's writer thread: {0}. Check the process and memory limits"
    )]
    EventLog(std::io::Error),
}

const SIGNAL: Token = Token(0);
const SOCKET_BASE: usize = 16;
const CLUSTER_BASE: usize = 64;
const HOUSEKEEPING: Duration = Duration::from_millis(500);
/// How long a stopping active member waits for the peer to take over.
const HAND_OVER: Duration = Duration::from_millis(500);
/// Active-backup aggregates follow their members' carriers this often.
const AGGREGATES: Duration = Duration::from_millis(10);

/// The control thread's state.
struct Daemon {
    /// The forced status set by haactive/hapassive (none after hareset).
    forced: Option<Role>,
    cfg: NodeConfig,
    config_path: PathBuf,
    node: Node,
    started: SystemTime,
    started_at: Instant,
    events: EventLog,
    /// The election, when the configuration enables it.
    cluster: Option<Cluster>,
    /// What the last housekeeping saw, to log changes: (peer up,
    /// synchronized, link in use, role).
    seen: (bool, bool, u8, Role),
}

/// Runs a node from the configuration file at `config_path` until a
/// termination signal arrives.
pub fn run(config_path: &Path) -> Result<(), DaemonError> {
    let cfg = tandem_config::load(config_path)?;
    let name = cfg.node.name.clone();

    let log_path = cfg
        .control
        .event_log
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("/var/log/tandem/{name}.log")));
    let events_log =
        EventLog::open(&name, Some(&log_path), 1 << 20, 5).map_err(DaemonError::EventLog)?;
    let mut poll = Poll::new()?;
    let (sig_rx, sig_tx) = std::os::unix::net::UnixStream::pair()?;
    sig_rx.set_nonblocking(true)?;
    sig_tx.set_nonblocking(true)?;
    let mut sig_rx = UnixStream::from_std(sig_rx);
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::low_level::pipe::register(sig, sig_tx.try_clone()?)?;
    }
    poll.registry()
        .register(&mut sig_rx, SIGNAL, Interest::READABLE)?;

    // The socket first: a second tandemd on the same socket must fail
    // before it touches the devices of the first.
    let mut socket = ControlSocket::bind(&cfg.control.socket)?;
    socket.register(poll.registry(), SOCKET_BASE)?;

    events_log.event(
        "SYSTEM",
        format_args!(
            "starting: {} interfaces, {} workers",
            cfg.interfaces.len(),
            cfg.dataplane.workers.len()
        ),
    );
    let config_dir = config_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let node = Node::start(&cfg, &config_dir)?;
    if let Some(p) = node.policy() {
        events_log.event(
            "POLICY",
            format_args!(
                "policy {}: {} rules, {} NAT rules",
                p.path.display(),
                p.rules,
                p.nat_rules
            ),
        );
    }
    for (i, iface) in node.interfaces().iter().enumerate() {
        let (link, _) = node.link(i);
        events_log.event(
            "SYSTEM",
            format_args!(
                "interface {} on port {} ({}), mac {}, link {}",
                iface.config.name,
                iface.port.id(),
                iface.port.info().driver,
                iface.mac,
                if link.up { "up" } else { "down" }
            ),
        );
    }
    let mut daemon = Daemon {
        forced: None,
        cfg,
        config_path: config_path.to_owned(),
        node,
        started: SystemTime::now(),
        started_at: Instant::now(),
        seen: (false, false, u8::MAX, Role::Passive),
        events: events_log,
        cluster: None,
    };
    daemon.cluster = Cluster::new(&daemon.cfg, &daemon.node, poll.registry(), CLUSTER_BASE)?;
    if daemon.cluster.is_some() {
        daemon.events.event(
            "HA",
            "election on: heartbeats on UDP 5405 over the HA links, last resort and ICMP check over the data ports",
        );
    }
    // The workers, the sync core and the health checker are started: only
    // this (control) thread gets the real-time class, so heartbeats leave
    // on time even when the workers keep every core busy.
    if let Some(prio) = daemon
        .cfg
        .ha
        .as_ref()
        .map(|h| h.control_priority)
        .filter(|&p| p > 0)
    {
        match tandem_dataplane::dpdk::set_current_thread_realtime(prio) {
            Ok(()) => daemon.events.event(
                "SYSTEM",
                format_args!("control thread in the real-time class (SCHED_RR {prio})"),
            ),
            Err(e) => daemon.events.event(
                "SYSTEM",
                format_args!(
                    "control thread stays in the normal class: SCHED_RR {prio} refused: {e}"
                ),
            ),
        }
    }
    daemon.seen.3 = daemon.node.role();
    daemon.events.event(
        "SYSTEM",
        format_args!(
            "running as {}; control socket {}",
            daemon.node.role().as_str(),
            socket.path().display()
        ),
    );

    let mut events = Events::with_capacity(64);
    let mut next_housekeeping = Instant::now() + HOUSEKEEPING;
    let mut next_aggregates = Instant::now() + AGGREGATES;
    'run: loop {
        let now = Instant::now();
        let mut deadline = socket
            .next_deadline()
            .map_or(next_housekeeping, |d| d.min(next_housekeeping))
            .min(next_aggregates);
        if let Some(c) = &daemon.cluster {
            deadline = deadline.min(c.next_wakeup());
        }
        if let Err(e) = poll.poll(&mut events, Some(deadline.saturating_duration_since(now))) {
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e.into());
        }
        for event in events.iter() {
            if event.token() == SIGNAL {
                let mut buf = [0u8; 16];
                let _ = sig_rx.read(&mut buf);
                break 'run;
            }
            if socket.owns(event.token()) {
                socket.handle_event(poll.registry(), event, &mut |req| daemon.handle(req));
            }
            if let Some(c) = &mut daemon.cluster {
                if c.owns(event.token()) {
                    c.on_readable(event.token(), &daemon.node, &mut daemon.events);
                }
            }
        }
        if let Some(c) = &mut daemon.cluster {
            if Instant::now() >= c.next_wakeup() {
                c.poll(&daemon.node, &mut daemon.events);
            }
        }
        let now = Instant::now();
        if now >= next_aggregates {
            for iface in daemon.node.poll_aggregates() {
                daemon.events.event(
                    "SYSTEM",
                    format_args!("aggregate {iface}: active member lost its carrier, failed over"),
                );
            }
            next_aggregates = now + AGGREGATES;
        }
        socket.poll_timeouts(now);
        if now >= next_housekeeping {
            daemon.node.housekeeping();
            daemon.watch();
            next_housekeeping = now + HOUSEKEEPING;
        }
    }
    daemon.events.event("SYSTEM", "stopping on signal");
    if let Some(c) = &mut daemon.cluster {
        // An active member hands over before it goes: no dead time to wait.
        c.hand_over(&daemon.node, &mut daemon.events, HAND_OVER);
    }
    drop(socket);
    daemon.node.shutdown();
    daemon.events.event("SYSTEM", "stopped");
    Ok(())
}

impl Daemon {
    fn handle(&mut self, req: Request) -> Response {
        match req {
            Request::Status => Response::Status(self.status()),
            Request::Stats => Response::Stats(self.stats()),
            Request::HaActive | Request::HaPassive | Request::HaReset => self.forced_status(req),
            Request::Log { lines } => Response::Log { lines: self.events.tail(lines.unwrap_or(50)) },
            Request::HaInfo => self.ha_info(),
            Request::Sync => match self.node.sync() {
                Some(core) => Response::Sync(self.sync_report(core)),
                None => Response::error(
                    "no state sync on this node: it needs an ha section and a firewall policy in its configuration",
                ),
            },
            _ if self.node.policy().is_none() => Response::error(
                "this node runs as a plain router: no filter policy is configured (set firewall.policy in the node configuration)",
            ),
            Request::ConnList { filter } => match conn_query(&filter) {
                Ok(q) => match self.node.connections(&q) {
                    Ok((conns, total)) => Response::Connections(ConnectionsReport {
                        connections: conns.iter().map(|(w, v)| conn_status(*w, v)).collect(),
                        total,
                    }),
                    Err(e) => Response::error(e.to_string()),
                },
                Err(e) => Response::error(e),
            },
            Request::ConnFlush => match self.node.flush_connections() {
                Ok(count) => {
                    self.events.event("FIREWALL", format_args!("connection table flushed: {count} connections"));
                    Response::Flushed { count }
                }
                Err(e) => Response::error(e.to_string()),
            },
            Request::PolicyReload => match self.node.reload_policy() {
                Ok(info) => {
                    self.events.event(
                        "POLICY",
                        format_args!("policy reloaded from {}: {} rules", info.path.display(), info.rules),
                    );
                    Response::Policy {
                        rules: info.rules,
                        nat_rules: info.nat_rules,
                        path: info.path.display().to_string(),
                    }
                }
                Err(e) => {
                    self.events.event("POLICY", format_args!("policy reload refused, the old policy stays: {e}"));
                    Response::error(format!("{e}; the policy in force is unchanged"))
                }
            },
        }
    }

    /// hainfo: the election's view, or the hand-set role when it is off.
    fn ha_info(&self) -> Response {
        if self.cfg.ha.is_none() {
            return Response::error(
                "this node is not a cluster member (no ha section in its configuration): it is always active",
            );
        }
        match &self.cluster {
            Some(c) => Response::HaInfo(c.info(&self.cfg, &self.node)),
            None => Response::HaInfo(crate::api::HaInfo {
                election: false,
                state: "election off (ha.election: false): roles are set by hand".into(),
                local: crate::api::HaMemberInfo {
                    serial: self.cfg.node.serial.clone(),
                    role: self.node.role().as_str().into(),
                    forced: self.forced.map(|r| r.as_str().into()),
                    uptime_ms: self.started_at.elapsed().as_millis() as u64,
                    alive: true,
                    ..Default::default()
                },
                icmp_check: "off".into(),
                ..Default::default()
            }),
        }
    }

    /// haactive / hapassive / hareset. Until the election arrives, the
    /// forced status is what decides the role; hareset keeps the current
    /// role and removes the constraint.
    fn forced_status(&mut self, req: Request) -> Response {
        if self.cfg.ha.is_none() {
            return Response::error(
                "this node is not a cluster member (no ha section in its configuration): it is always active",
            );
        }
        match req {
            Request::HaActive => self.forced = Some(Role::Active),
            Request::HaPassive => self.forced = Some(Role::Passive),
            _ => self.forced = None,
        }
        if let Some(c) = &mut self.cluster {
            // The election decides, forced status first.
            self.events.event(
                "HA",
                format_args!(
                    "forced status {}",
                    self.forced.map_or("removed", |r| r.as_str())
                ),
            );
            c.forced(self.forced, &self.node, &mut self.events);
            self.seen.3 = self.node.role();
        } else if let Some(role) = self.forced {
            self.events
                .event("HA", format_args!("forced status set to {}", role.as_str()));
            if self.node.role() != role {
                self.events.event(
                    "HA",
                    format_args!(
                        "swap: {} -> {} (forced)",
                        self.node.role().as_str(),
                        role.as_str()
                    ),
                );
                self.node.set_role(role);
                self.seen.3 = role;
            }
        } else {
            self.events.event("HA", "forced status removed");
        }
        Response::Role {
            role: self.node.role().as_str().into(),
            forced: self.forced.map(|r| r.as_str().into()),
        }
    }

    /// Logs what changed since the last housekeeping: the role, the peer
    /// and the table's state, the HA link in use.
    fn watch(&mut self) {
        use std::sync::atomic::Ordering::Relaxed;
        let role = self.node.role();
        // With the election on, the swap itself was logged with its reason.
        if role != self.seen.3 && self.cluster.is_none() {
            self.events
                .event("HA", format_args!("role now {}", role.as_str()));
            self.seen.3 = role;
        }
        let Some(core) = self.node.sync() else { return };
        let sh = core.shared();
        let (peer, synced, link) = (
            sh.peer_up.load(Relaxed),
            sh.synchronized.load(Relaxed),
            sh.link_in_use.load(Relaxed),
        );
        let link_name = |l: u8| {
            self.cfg
                .ha
                .as_ref()
                .and_then(|h| h.links.get(usize::from(l)))
                .map_or_else(|| "none".to_owned(), |x| x.name.clone())
        };
        let mut lines = Vec::new();
        if peer != self.seen.0 {
            lines.push(if peer {
                "peer answered on the HA link (state sync up)".to_owned()
            } else {
                "peer lost".to_owned()
            });
        }
        if synced != self.seen.1 {
            lines.push(if synced {
                "bulk received: the connection table is synchronized".to_owned()
            } else {
                "connection table not synchronized yet".to_owned()
            });
        }
        if link != self.seen.2 {
            lines.push(format!("state sync now on {}", link_name(link)));
        }
        self.seen = (peer, synced, link, role);
        for l in lines {
            self.events.event("SYNC", l);
        }
    }

    fn sync_report(&self, core: &tandem_dataplane::sync::SyncCore) -> SyncReport {
        use std::sync::atomic::Ordering::Relaxed;
        let sh = core.shared();
        let link = sh.link_in_use.load(Relaxed);
        let larval = self
            .node
            .workers()
            .iter()
            .filter_map(|w| w.firewall.as_ref())
            .map(|f| f.larval.get())
            .sum();
        SyncReport {
            peer_up: sh.peer_up.load(Relaxed),
            synchronized: sh.synchronized.load(Relaxed),
            link: self
                .cfg
                .ha
                .as_ref()
                .and_then(|h| h.links.get(usize::from(link)))
                .map(|l| l.name.clone()),
            records_queued: sh.records_queued.load(Relaxed),
            records_refused: sh.records_refused.load(Relaxed),
            datagrams_sent: sh.datagrams_sent.load(Relaxed),
            datagrams_received: sh.datagrams_received.load(Relaxed),
            datagrams_dropped: sh.datagrams_dropped.load(Relaxed),
            installs: sh.installs.load(Relaxed),
            installs_dropped: sh.installs_dropped.load(Relaxed),
            bulks_sent: sh.bulks_sent.load(Relaxed),
            bulks_received: sh.bulks_received.load(Relaxed),
            larval,
            lag_ms: [0, 1, 2, 3].map(|i| sh.lag_ms[i].load(Relaxed)),
            lag_samples: sh.lag_samples.load(Relaxed),
            details: sh
                .details
                .lock()
                .map(|d| d.iter().cloned().collect())
                .unwrap_or_default(),
        }
    }

    fn status(&self) -> StatusReport {
        let node = &self.node;
        let port_name = |port: u16| {
            node.interfaces()
                .iter()
                .find(|i| i.port.id() == port)
                .map_or_else(|| format!("port{port}"), |i| i.config.name.clone())
        };
        let interfaces = node
            .interfaces()
            .iter()
            .enumerate()
            .map(|(i, iface)| {
                let (link, source) = node.link(i);
                InterfaceStatus {
                    name: iface.config.name.clone(),
                    device: device_text(&iface.config.device),
                    port_id: iface.port.id(),
                    mac: iface.mac.to_string(),
                    addresses: iface
                        .config
                        .addresses
                        .iter()
                        .map(|a| a.to_string())
                        .collect(),
                    mtu: iface.config.mtu,
                    link_up: link.up,
                    link_source: match source {
                        LinkSource::Dpdk => "dpdk".into(),
                        LinkSource::Kernel(k) => format!("kernel:{k}"),
                        LinkSource::Aggregate => "aggregate".into(),
                    },
                    speed_mbps: link.speed_mbps,
                    rx_queues: iface.port.queues(),
                    tx_queues: iface.port.queues(),
                }
            })
            .collect();
        let routes = node
            .router()
            .routes()
            .map(|r| RouteStatus {
                destination: format!("{}/{}", r.destination, r.prefix_len),
                via: r.route.next_hop.map(|v| v.to_string()),
                interface: port_name(r.route.port),
                kind: if r.connected {
                    "connected".into()
                } else {
                    "static".into()
                },
            })
            .collect();
        let neighbours = node
            .router()
            .neighbours()
            .snapshot(node.now_ms())
            .into_iter()
            .map(|n| NeighbourStatus {
                ip: n.ip.to_string(),
                mac: n.mac.map(|m| m.to_string()),
                interface: port_name(n.port),
                state: n.state.as_str().into(),
                age_ms: n.age_ms,
            })
            .collect();
        let workers = node
            .workers()
            .iter()
            .map(|w| WorkerStatus {
                id: w.id,
                cpu: w.cpu,
                lcore: w.lcore.get().copied(),
                queues: node.interfaces().len() as u16,
            })
            .collect();
        StatusReport {
            node: self.cfg.node.name.clone(),
            serial: self.cfg.node.serial.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            started_unix: self
                .started
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            uptime_secs: self.started_at.elapsed().as_secs(),
            config_path: self.config_path.display().to_string(),
            poll_mode: match self.cfg.dataplane.poll_mode {
                tandem_config::PollMode::Busy => "busy".into(),
                tandem_config::PollMode::Adaptive => "adaptive".into(),
            },
            interfaces,
            routes,
            neighbours,
            workers,
            role: self.node.role().as_str().into(),
            forced: self.forced.map(|r| r.as_str().into()),
        }
    }

    fn stats(&self) -> StatsReport {
        let node = &self.node;
        let ports = node
            .interfaces()
            .iter()
            .enumerate()
            .map(|(i, iface)| {
                let c = node.port_counters(i);
                PortStats {
                    name: iface.config.name.clone(),
                    port_id: iface.port.id(),
                    rx_packets: c.rx_packets,
                    rx_bytes: c.rx_bytes,
                    tx_packets: c.tx_packets,
                    tx_bytes: c.tx_bytes,
                    rx_missed: c.rx_missed,
                    rx_errors: c.rx_errors,
                    tx_errors: c.tx_errors,
                    rx_nombuf: c.rx_nombuf,
                }
            })
            .collect();
        let mut drops_total: BTreeMap<String, u64> = BTreeMap::new();
        let workers = node
            .workers()
            .iter()
            .map(|w| {
                let c = &w.counters;
                // The router and the firewall's parser share a few reason
                // names (ip_bad_length, ...): a name's counts add up.
                let mut drops: BTreeMap<String, u64> = BTreeMap::new();
                for (k, v) in c
                    .drop_counts()
                    .chain(w.firewall.iter().flat_map(|f| f.drop_counts()))
                {
                    *drops.entry(k.to_owned()).or_default() += v;
                }
                for (k, v) in &drops {
                    *drops_total.entry(k.clone()).or_default() += v;
                }
                WorkerStats {
                    id: w.id,
                    rx_packets: c.rx_packets.get(),
                    tx_packets: c.tx_packets.get(),
                    forwarded: c.forwarded.get(),
                    replies: c.replies.get(),
                    held: c.held.get(),
                    arp_requests_sent: c.arp_requests_sent.get(),
                    icmp_errors_sent: c.icmp_errors_sent.get(),
                    rejects_sent: c.rejects_sent.get(),
                    garps_sent: c.garps_sent.get(),
                    tx_dropped: c.worker_drops
                        [tandem_dataplane::counters::WorkerDrop::TxQueueFull as usize]
                        .get(),
                    polls: c.polls.get(),
                    idle_polls: c.idle_polls.get(),
                    sleeps: c.sleeps.get(),
                    drops,
                }
            })
            .collect();
        let firewall = node.policy().map(|p| {
            let mut f = FirewallStats {
                rules: p.rules,
                ..FirewallStats::default()
            };
            for c in node.workers().iter().filter_map(|w| w.firewall.as_ref()) {
                f.connections += c.connections.get();
                f.capacity += c.capacity.get();
                f.created += c.created.get();
                f.deleted += c.deleted.get();
                f.expired += c.expired.get();
                f.passed += c.passed.get();
                f.deltas += c.deltas.get();
            }
            f
        });
        StatsReport {
            ports,
            workers,
            drops_total,
            firewall,
        }
    }
}

/// Turns the operator's filter into the workers' query; errors say what is
/// allowed.
fn conn_query(f: &ConnFilter) -> Result<ConnQuery, String> {
    let net =
        |field: &str, v: &Option<String>| -> Result<Option<(std::net::Ipv4Addr, u8)>, String> {
            let Some(v) = v else { return Ok(None) };
            let (addr, len) = v.split_once('/').unwrap_or((v.as_str(), "32"));
            match (addr.parse(), len.parse::<u8>()) {
                (Ok(a), Ok(l)) if l <= 32 => Ok(Some((a, l))),
                _ => Err(format!(
                    "{field} {v:?} is not an IPv4 address or CIDR; allowed a.b.c.d or a.b.c.d/len"
                )),
            }
        };
    let proto = match f.proto.as_deref() {
        None => None,
        Some(p) => Some(match p.to_ascii_lowercase().as_str() {
            "tcp" => 6,
            "udp" => 17,
            "icmp" => 1,
            "gre" => 47,
            "esp" => 50,
            "sctp" => 132,
            other => other.parse::<u8>().map_err(|_| {
                format!("proto {p:?} is unknown; allowed tcp, udp, icmp, gre, esp, sctp or a number 0-255")
            })?,
        }),
    };
    Ok(ConnQuery {
        proto,
        addr: net("addr", &f.addr)?,
        src: net("src", &f.src)?,
        dst: net("dst", &f.dst)?,
        port: f.port,
        limit: f.limit.unwrap_or(1000),
    })
}

fn proto_name(p: u8) -> String {
    match p {
        6 => "tcp".into(),
        17 => "udp".into(),
        1 => "icmp".into(),
        47 => "gre".into(),
        50 => "esp".into(),
        132 => "sctp".into(),
        n => n.to_string(),
    }
}

fn conn_status(worker: usize, v: &ConnView) -> ConnectionStatus {
    ConnectionStatus {
        worker,
        proto: proto_name(v.proto),
        src: v.orig.src.to_string(),
        sport: v.orig.sport,
        dst: v.orig.dst.to_string(),
        dport: v.orig.dport,
        state: v.state.to_string(),
        nat: v.nat.map(|n| match n.kind {
            NatKind::Snat => NatStatus {
                kind: "source".into(),
                addr: n.translated.src.to_string(),
                port: n.translated.sport,
            },
            NatKind::Dnat => NatStatus {
                kind: "destination".into(),
                addr: n.translated.dst.to_string(),
                port: n.translated.dport,
            },
        }),
        rule: v.rule,
        sync: v.sync,
        larval: v.larval,
        age_ms: v.age_ms,
        idle_ms: v.idle_ms,
        expires_ms: v.remaining_ms,
        packets_orig: v.packets[0],
        packets_reply: v.packets[1],
        bytes_orig: v.bytes[0],
        bytes_reply: v.bytes[1],
    }
}
