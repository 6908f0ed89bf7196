//! Drives the HA election ([`crate::ha::machine::Ha`]) from the control
//! thread: heartbeats on UDP 5405 over every HA link (HMAC-authenticated),
//! the links' carriers, the node's quality, forced status and the sync's
//! table state in; roles, heartbeats and event-log lines out.
//!
//! Not yet wired: the last-resort heartbeat over a data port and the ICMP
//! check (a probe is answered "no reply" at once, so cutting both HA links
//! of a healthy pair still makes two actives until that lands).

use std::net::{SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::net::UdpSocket;
use mio::{Interest, Registry, Token};
use tandem_config::NodeConfig;
use tandem_dataplane::node::{kernel_carrier, Node};
use tandem_dataplane::worker::Role as PlaneRole;

use crate::eventlog::EventLog;
use crate::ha::heartbeat::{Codec, PORT};
use crate::ha::machine::{Action, Config, Event, Ha, LinkId, Role};
use crate::ha::quality::{quality, Interface, QualityConfig};

struct Link {
    id: LinkId,
    name: String,
    interface: String,
    socket: UdpSocket,
    peer: SocketAddrV4,
    up: bool,
}

/// The election of one member and its I/O.
pub struct Cluster {
    ha: Ha,
    codec: Codec,
    links: Vec<Link>,
    token_base: usize,
    origin: Instant,
    quality: u8,
    synchronized: bool,
    /// Heartbeats dropped by reason (bad tag, replay, ...).
    pub rejected: u64,
}

/// A serial as the number the election compares (lower stays active on a
/// tie): its last 8 bytes, big-endian, so "TDLAB0001" < "TDLAB0002".
pub fn serial_number(serial: &str) -> u64 {
    let b = serial.as_bytes();
    let tail = &b[b.len().saturating_sub(8)..];
    tail.iter().fold(0u64, |acc, &c| acc << 8 | u64::from(c))
}

impl Cluster {
    /// The election of a member whose configuration enables it; `None`
    /// otherwise. Sockets use tokens `token_base..token_base + links`.
    pub fn new(
        cfg: &NodeConfig,
        registry: &Registry,
        token_base: usize,
    ) -> std::io::Result<Option<Cluster>> {
        let Some(ha) = cfg.ha.as_ref().filter(|h| h.election) else {
            return Ok(None);
        };
        let mut links = Vec::new();
        for (i, l) in ha.links.iter().enumerate() {
            let local = SocketAddr::V4(SocketAddrV4::new(l.address.addr, PORT));
            let mut socket = UdpSocket::bind(local)?;
            registry.register(&mut socket, Token(token_base + i), Interest::READABLE)?;
            links.push(Link {
                id: if i == 0 { LinkId::Main } else { LinkId::Backup },
                name: l.name.clone(),
                interface: l.interface.clone(),
                socket,
                peer: SocketAddrV4::new(l.peer, PORT),
                up: false,
            });
        }
        let mut c = Config::new(serial_number(&cfg.node.serial));
        // Grows across restarts: the peer tells a restart from a replay.
        c.epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as u64);
        c.priority = ha.priority;
        c.interval = Duration::from_millis(u64::from(ha.heartbeat_ms));
        c.dead_time = Duration::from_millis(u64::from(ha.dead_ms));
        c.last_resort = false;
        let origin = Instant::now();
        Ok(Some(Cluster {
            ha: Ha::new(c, Duration::ZERO),
            codec: Codec::new(ha.psk.as_bytes(), ha.cluster_id),
            links,
            token_base,
            origin,
            quality: 100,
            synchronized: false,
            rejected: 0,
        }))
    }

    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// Whether `token` is one of the heartbeat sockets.
    pub fn owns(&self, token: Token) -> bool {
        token.0 >= self.token_base && token.0 < self.token_base + self.links.len()
    }

    /// When the machine next needs a tick.
    pub fn next_wakeup(&self) -> Instant {
        self.origin + self.ha.poll_timeout()
    }

    /// Reads every heartbeat waiting on the link of `token`.
    pub fn on_readable(&mut self, token: Token, node: &Node, log: &mut EventLog) {
        let i = token.0 - self.token_base;
        let mut buf = [0u8; 256];
        for _ in 0..64 {
            let Ok((n, from)) = self.links[i].socket.recv_from(&mut buf) else {
                break;
            };
            if from.ip() != std::net::IpAddr::V4(*self.links[i].peer.ip()) {
                self.rejected += 1;
                continue;
            }
            match self.codec.decode(&buf[..n]) {
                Ok(hb) => {
                    let now = self.now();
                    self.ha.handle_event(
                        now,
                        Event::PeerHeartbeat {
                            link: self.links[i].id,
                            peer: hb.state,
                        },
                    );
                }
                Err(_) => self.rejected += 1,
            }
        }
        self.run(node, log);
    }

    /// Feeds the machine what changed (links, quality, table) and a tick,
    /// then carries out its actions.
    pub fn poll(&mut self, node: &Node, sync_complete: bool, log: &mut EventLog) {
        let now = self.now();
        for l in &mut self.links {
            let up = kernel_carrier(&l.interface);
            if up != l.up {
                l.up = up;
                self.ha.handle_event(now, Event::LinkState(l.id, up));
            }
        }
        let interfaces: Vec<Interface> = (0..node.interfaces().len())
            .map(|i| Interface::new(&node.interfaces()[i].config.name, node.link(i).0.up))
            .collect();
        let q = quality(&interfaces, &[], &[], &QualityConfig::default());
        if q != self.quality {
            self.quality = q;
            self.ha.handle_event(now, Event::LocalQuality(q));
        }
        if sync_complete != self.synchronized {
            self.synchronized = sync_complete;
            self.ha
                .handle_event(now, Event::SyncComplete(sync_complete));
        }
        self.ha.handle_event(now, Event::Tick);
        self.run(node, log);
    }

    /// haactive / hapassive / hareset.
    pub fn forced(&mut self, forced: Option<PlaneRole>, node: &Node, log: &mut EventLog) {
        let f = forced.map(|r| match r {
            PlaneRole::Active => Role::Active,
            PlaneRole::Passive => Role::Passive,
        });
        let now = self.now();
        self.ha.handle_event(now, Event::Forced(f));
        self.ha.handle_event(now, Event::Tick);
        self.run(node, log);
    }

    fn run(&mut self, node: &Node, log: &mut EventLog) {
        while let Some(a) = self.ha.poll_action() {
            match a {
                Action::BecomeActive { reason } => {
                    if node.role() != PlaneRole::Active {
                        log.event("HA", format_args!("swap: passive -> active ({reason:?})"));
                    }
                    node.set_role(PlaneRole::Active);
                }
                Action::BecomePassive { reason } => {
                    if node.role() != PlaneRole::Passive {
                        log.event("HA", format_args!("swap: active -> passive ({reason:?})"));
                    }
                    node.set_role(PlaneRole::Passive);
                }
                Action::SendHeartbeat { link, state } => {
                    if let Some(l) = self.links.iter().find(|l| l.id == link) {
                        let bytes = self.codec.encode(link, &state);
                        let _ = l.socket.send_to(&bytes, SocketAddr::V4(l.peer));
                    }
                }
                Action::StartIcmpProbe => {
                    // No ICMP check yet (see the module doc).
                    let now = self.now();
                    self.ha.handle_event(now, Event::IcmpTimeout);
                }
                Action::RequestResync => log.event("HA", "asking the peer for a resync"),
                Action::Log(e) => log.event("HA", format_args!("{e:?}")),
            }
        }
    }

    /// The names of the links whose peer is heard now.
    pub fn links_alive(&self) -> Vec<String> {
        self.links
            .iter()
            .filter(|l| self.ha.path_alive(l.id))
            .map(|l| l.name.clone())
            .collect()
    }
}
