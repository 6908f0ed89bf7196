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

use crate::api::{
    InterfaceStatus, NeighbourStatus, PortStats, Request, Response, RouteStatus, StatsReport,
    StatusReport, WorkerStats, WorkerStatus,
};
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
}

const SIGNAL: Token = Token(0);
const SOCKET_BASE: usize = 16;
const HOUSEKEEPING: Duration = Duration::from_millis(500);

/// Writes one line to the node's log (stderr for now; the HA event log
/// arrives with the HA control plane).
fn log(node: &str, msg: impl std::fmt::Display) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    eprintln!(
        "{}.{:03} tandemd[{node}]: {msg}",
        now.as_secs(),
        now.subsec_millis()
    );
}

/// The control thread's state.
struct Daemon {
    cfg: NodeConfig,
    config_path: PathBuf,
    node: Node,
    started: SystemTime,
    started_at: Instant,
}

/// Runs a node from the configuration file at `config_path` until a
/// termination signal arrives.
pub fn run(config_path: &Path) -> Result<(), DaemonError> {
    let cfg = tandem_config::load(config_path)?;
    let name = cfg.node.name.clone();

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

    log(
        &name,
        format_args!(
            "starting: {} interfaces, {} workers",
            cfg.interfaces.len(),
            cfg.dataplane.workers.len()
        ),
    );
    let node = Node::start(&cfg)?;
    for (i, iface) in node.interfaces().iter().enumerate() {
        let (link, _) = node.link(i);
        log(
            &name,
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
        cfg,
        config_path: config_path.to_owned(),
        node,
        started: SystemTime::now(),
        started_at: Instant::now(),
    };
    log(
        &name,
        format_args!("running; control socket {}", socket.path().display()),
    );

    let mut events = Events::with_capacity(64);
    let mut next_housekeeping = Instant::now() + HOUSEKEEPING;
    'run: loop {
        let now = Instant::now();
        let deadline = socket
            .next_deadline()
            .map_or(next_housekeeping, |d| d.min(next_housekeeping));
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
        }
        let now = Instant::now();
        socket.poll_timeouts(now);
        if now >= next_housekeeping {
            daemon.node.housekeeping();
            next_housekeeping = now + HOUSEKEEPING;
        }
    }
    log(&name, "stopping on signal");
    drop(socket);
    daemon.node.shutdown();
    log(&name, "stopped");
    Ok(())
}

impl Daemon {
    fn handle(&mut self, req: Request) -> Response {
        match req {
            Request::Status => Response::Status(self.status()),
            Request::Stats => Response::Stats(self.stats()),
            Request::ConnList { .. } | Request::ConnFlush | Request::PolicyReload => Response::error(
                "this node runs as a plain router: no filter policy is configured (set firewall.policy in the node configuration)",
            ),
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
                let drops: BTreeMap<String, u64> =
                    c.drop_counts().map(|(k, v)| (k.to_owned(), v)).collect();
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
        StatsReport {
            ports,
            workers,
            drops_total,
            firewall: None,
        }
    }
}
