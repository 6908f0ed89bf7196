//! Drives the HA election ([`crate::ha::machine::Ha`]) from the control
//! thread: heartbeats on UDP 5405 over every HA link (HMAC-authenticated),
//! the links' carriers, the node's quality, forced status and the sync's
//! table state in; roles, heartbeats and event-log lines out.
//!
//! When no HA link carries heartbeats, the last-resort heartbeat goes over
//! the data ports, and a silent peer is checked with ICMP over the data
//! ports before a takeover; both travel through the dataplane
//! ([`tandem_dataplane::hadata`]), so they prove the peer's dataplane is
//! alive, not just its kernel. Only the peer can answer for the peer: a
//! check carries an unpredictable nonce, the peer's worker answers with
//! its serial under the check key, and any other frame that comes back
//! (a reflection, our own frame, a late or relayed answer) is refused and
//! counted. The frames the workers hand over are read a bounded number
//! per tick ([`DATA_FRAMES_PER_TICK`]).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam::channel::Receiver;
use mio::net::UdpSocket;
use mio::{Interest, Registry, Token};
use tandem_config::NodeConfig;
use tandem_dataplane::hadata::{self, CheckKey, CheckKind, CheckMsg, Kind, Verdict, NONCE_LEN};
use tandem_dataplane::hakeys::{HaKeys, KeyPhase, KeyRing};
use tandem_dataplane::node::{kernel_carrier, Node};
use tandem_dataplane::worker::Role as PlaneRole;

use crate::api::{HaInfo, HaLinkInfo, HaMemberInfo};
use crate::eventlog::EventLog;
use crate::ha::heartbeat::{Codec, DecodeError, LEN as HEARTBEAT_LEN, PORT};
use crate::ha::machine::{Action, Config, Event, Ha, HaEvent, LinkId, PeerState, Phase, Role};
use crate::ha::quality::{
    quality, Aggregate, AggregateId, AggregateKind, Interface, Penalty, QualityConfig,
};
use crate::health::Health;
use tandem_config::AggregateMode;

struct Link {
    id: LinkId,
    name: String,
    interface: String,
    local: Ipv4Addr,
    socket: UdpSocket,
    peer: SocketAddrV4,
    up: bool,
    gaps: GapStats,
    /// (carrier, peer heard) as hainfo last saw them, and since when.
    state: (bool, bool),
    state_since: SystemTime,
    /// Heartbeats the kernel did not take, in all; the last error and how
    /// many since it was logged; when it was logged.
    send_errors: u64,
    unlogged: Option<(String, u64)>,
    send_error_logged: Option<Instant>,
}

/// Inter-arrival times of the peer's heartbeats on one path while it is
/// alive: how close the pair came to a false failover.
#[derive(Default, Clone, Copy)]
struct GapStats {
    last: Option<Instant>,
    max: Duration,
    /// Gaps longer than two heartbeat intervals.
    late: u64,
    count: u64,
    /// The largest gap of the current and of the previous [`GAP_WINDOW`].
    recent: [Duration; 2],
    window_start: Option<Instant>,
}

/// Length of the windows of [`GapStats::recent_max`].
const GAP_WINDOW: Duration = Duration::from_secs(4);

impl GapStats {
    fn arrival(&mut self, now: Instant, alive: bool, interval: Duration) {
        self.roll(now);
        if let (Some(last), true) = (self.last, alive) {
            let gap = now.saturating_duration_since(last);
            self.max = self.max.max(gap);
            self.recent[0] = self.recent[0].max(gap);
            self.late += u64::from(gap > interval * 2);
            self.count += 1;
        }
        self.last = Some(now);
    }

    fn roll(&mut self, now: Instant) {
        let start = *self.window_start.get_or_insert(now);
        let age = now.saturating_duration_since(start);
        if age >= GAP_WINDOW * 2 {
            self.recent = [Duration::ZERO; 2];
            self.window_start = Some(now);
        } else if age >= GAP_WINDOW {
            self.recent = [Duration::ZERO, self.recent[0]];
            self.window_start = Some(start + GAP_WINDOW);
        }
    }

    /// The largest gap that ended in the last 4 to 8 s (two windows).
    fn recent_max(&self, now: Instant) -> Duration {
        let age = self
            .window_start
            .map_or(Duration::MAX, |s| now.saturating_duration_since(s));
        if age >= GAP_WINDOW * 2 {
            Duration::ZERO
        } else if age >= GAP_WINDOW {
            self.recent[0]
        } else {
            self.recent[0].max(self.recent[1])
        }
    }
}

/// A data port that carries the last-resort heartbeat and ICMP checks.
struct DataPort {
    index: usize,
    port: u16,
    mac: [u8; 6],
    addr: Ipv4Addr,
    /// The peer's MAC on this port, learned from an authentic frame of the
    /// peer (last-resort heartbeat or check answer), and when.
    peer_mac: Option<([u8; 6], Instant)>,
}

/// An ICMP check in flight.
struct Probe {
    nonce: [u8; NONCE_LEN],
    sent: Instant,
    deadline: Instant,
    /// A refusal was logged for this check already (one line per check).
    refusal_logged: bool,
}

/// Frames from the data ports the control thread handles per tick, at
/// most: a flood waits in (and overflows) the workers' channel instead
/// of delaying the heartbeats.
pub const DATA_FRAMES_PER_TICK: usize = 32;

/// A peer MAC learned on a data port is used for this long after the last
/// authentic frame from it; then checks are broadcast again.
const PEER_MAC_TTL: Duration = Duration::from_secs(5);

/// What the quality checks found: the penalties and a line per failure.
type HealthReport = (Vec<Penalty>, Vec<String>);

/// Disks, TPM and sensors are checked this often.
const HEALTH_EVERY: Duration = Duration::from_secs(1);

/// While an ICMP check is in flight, look for its answer this often.
const PROBE_POLL: Duration = Duration::from_millis(2);

/// A key change: the old key is dropped once the peer has been heard
/// under the new one this long (what it still had in flight has landed).
pub const KEY_RETIRE_AFTER: Duration = Duration::from_secs(2);
/// A member with a staged key commits by itself once it has heard the
/// peer under the staged key this long (the peer committed; its commit
/// request was lost).
pub const KEY_FOLLOW_AFTER: Duration = Duration::from_secs(1);
/// A staged key change not committed within this time is given up.
pub const KEY_STAGE_LIMIT: Duration = Duration::from_secs(120);

/// The control thread's view of the key ring (F8).
struct KeyWatch {
    ring: Arc<KeyRing>,
    generation: u64,
    phase: KeyPhase,
    since: Instant,
    /// The workers' check keys are still to be set.
    workers_pending: bool,
    /// Since when the peer's heartbeats come under our current key, and
    /// under the other one (`None`: not the last one heard).
    heard_current: Option<Instant>,
    heard_other: Option<Instant>,
}

/// The election of one member and its I/O.
pub struct Cluster {
    ha: Ha,
    codec: Codec,
    check_key: CheckKey,
    /// During a key change, the other check key (answers under it count).
    check_alt: Option<CheckKey>,
    keys: KeyWatch,
    cluster_id: u32,
    serial: u64,
    key_file_warning: Option<String>,
    /// The members by full serial (the cluster's file, and those that
    /// joined since), which heartbeats carry only the last 8 bytes of.
    serials: Arc<std::sync::Mutex<Vec<String>>>,
    links: Vec<Link>,
    data_ports: Vec<DataPort>,
    last_resort: bool,
    icmp_check: bool,
    icmp_timeout: Duration,
    probe: Option<Probe>,
    probes: u64,
    /// The nonce of the last check the peer answered: its answers on the
    /// other data ports are duplicates, not stale.
    last_answered: Option<[u8; NONCE_LEN]>,
    /// Frames the workers handed over that wait for the next tick.
    data_backlog: usize,
    token_base: usize,
    origin: Instant,
    role_since: SystemTime,
    swaps: u64,
    last_swap: Option<String>,
    /// The peer's role as this member last saw it, and since when (Unix
    /// seconds).
    peer_role_seen: Option<(Role, u64)>,
    last_icmp_rtt_us: Option<u64>,
    quality_cfg: QualityConfig,
    bounce_on_swap: bool,
    /// The data interfaces' weights set at run time (`ha set weight`), by
    /// interface index; none: the configuration's at start.
    weights: Option<Vec<u16>>,
    /// Results of the disk / TPM / sensor checks, run on their own thread
    /// (a hung disk must not hold up the heartbeats).
    health: Option<Receiver<HealthReport>>,
    penalties: Vec<Penalty>,
    problems: Vec<String>,
    /// What went wrong at start that the operator must hear of (the
    /// daemon logs it).
    pub startup_warnings: Vec<String>,
    /// Heartbeats dropped (bad tag, replay, ...).
    pub rejected: u64,
    /// A clean stop is handing the active role over.
    handing_over: bool,
    /// The members' full serials as last read (the display path never
    /// waits for the shared list).
    serials_cache: Vec<String>,
    /// The quality last computed and what lowered it (for the log line of
    /// a change; worked out again only when the value changes).
    quality_cause: Option<(u8, String)>,
    /// The old active of a swap, still forwarding.
    drain: Option<Drain>,
    /// Per reason: when it was last logged, and how many since.
    refusals: std::collections::HashMap<&'static str, (Option<Instant>, u64)>,
    /// A worker or the sync thread died or stalls (the daemon's watchdog):
    /// quality 0, so that the peer takes over (no black hole).
    pub dataplane_failed: bool,
}

/// The event-log lines of a key change that went from `before` to `now`
/// since this member last looked (one step, or two taken in between).
fn key_steps(before: KeyPhase, now: KeyPhase) -> Vec<&'static str> {
    const STAGED: &str = "HA key change staged: the new key is accepted too; our HA traffic still goes out under the old one";
    const COMMITTED: &str = "HA key change committed: our HA traffic goes out under the new key; the old one is still accepted";
    const FINISHED: &str =
        "HA key change finished: the peer is heard under the new key; the old key is refused now";
    const GIVEN_UP: &str = "HA key change given up: the old key only, as before";
    match (before, now) {
        (KeyPhase::Steady, KeyPhase::Staged) => vec![STAGED],
        (KeyPhase::Steady, KeyPhase::Committed) => vec![STAGED, COMMITTED],
        (KeyPhase::Staged, KeyPhase::Committed) => vec![COMMITTED],
        (KeyPhase::Committed, KeyPhase::Steady) => vec![FINISHED],
        (KeyPhase::Staged, KeyPhase::Steady) => vec![GIVEN_UP],
        // Staged again with other keys, or staged and given up in between.
        (KeyPhase::Staged, KeyPhase::Staged) => vec![STAGED],
        (KeyPhase::Steady, KeyPhase::Steady) => vec![STAGED, GIVEN_UP],
        (KeyPhase::Committed, KeyPhase::Staged) => vec![FINISHED, STAGED],
        (KeyPhase::Committed, KeyPhase::Committed) => vec![],
    }
}

/// The peer said it is going down in the last 10 s.
fn peer_announced_leaving() -> bool {
    let at = crate::peer::service::PEER_LEAVING_MS.load(std::sync::atomic::Ordering::Relaxed);
    at > 0 && crate::peer::confsync::now_unix_ms().saturating_sub(at) < 10_000
}

/// A refused heartbeat's reason is logged at most this often.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// Why a heartbeat was refused, in words, with what to check.
fn refusal_reason(e: &DecodeError) -> &'static str {
    match e {
        DecodeError::BadTag => {
            "not authentic: check that both members have the same cluster key (ha set key changes it on both)"
        }
        DecodeError::WrongCluster(_) => "another cluster's (a different ha.cluster_id)",
        DecodeError::UnsupportedVersion(_) => {
            "a heartbeat version this member does not speak: run compatible tandem versions"
        }
        DecodeError::BadLength(_) | DecodeError::BadMagic | DecodeError::BadField => {
            "not a tandem heartbeat (malformed)"
        }
        DecodeError::Replay => "a replay (a heartbeat already seen)",
        DecodeError::Own => "our own heartbeat came back (a loop on the HA link)",
        DecodeError::Unproven => {
            "sent before the peer heard our current run (a replay, or a peer that has just restarted)"
        }
    }
}

/// A member's HA service in words (see [`HaMemberInfo::ha_state`]).
fn ha_state(starting: bool, active: bool, complete: bool) -> &'static str {
    if starting {
        "starting"
    } else if active {
        "running"
    } else if complete {
        "ready"
    } else {
        "not ready (table incomplete)"
    }
}

/// When the peer's tandemd started (Unix seconds), from the boot epoch its
/// heartbeats carry (Unix ms at its start, or later if its clock went
/// back); from its uptime when the epoch lies ahead of our clock.
fn peer_boot_unix(epoch_ms: u64, uptime_ms: u64) -> u64 {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    if epoch_ms <= now_ms + 60_000 {
        epoch_ms / 1000
    } else {
        now_ms.saturating_sub(uptime_ms) / 1000
    }
}

/// A serial as the number the election compares (lower stays active on a
/// tie): its last 8 bytes, big-endian, so "TDLAB0001" < "TDLAB0002".
pub fn serial_number(serial: &str) -> u64 {
    let b = serial.as_bytes();
    let tail = &b[b.len().saturating_sub(8)..];
    tail.iter().fold(0u64, |acc, &c| acc << 8 | u64::from(c))
}

/// The text of a serial number (the last 8 bytes of the serial), for
/// display: printable ASCII as is, else in hex.
pub fn serial_text(n: u64) -> String {
    let bytes: Vec<u8> = n
        .to_be_bytes()
        .into_iter()
        .skip_while(|&b| b == 0)
        .collect();
    if !bytes.is_empty() && bytes.iter().all(|b| b.is_ascii_graphic()) {
        String::from_utf8_lossy(&bytes).into_owned()
    } else {
        format!("{n:#x}")
    }
}

/// Runs `health` once a second on a thread of its own (none when nothing
/// is checked); the thread ends when the receiver is dropped.
fn spawn_health(health: Health) -> std::io::Result<Option<Receiver<HealthReport>>> {
    if health.is_empty() {
        return Ok(None);
    }
    let (tx, rx) = crossbeam::channel::bounded(4);
    std::thread::Builder::new()
        .name("tandem-health".into())
        .spawn(move || loop {
            if tx.send(health.check()).is_err() {
                return;
            }
            std::thread::sleep(HEALTH_EVERY);
        })?;
    Ok(Some(rx))
}

/// How long the old active of a swap keeps forwarding once the peer is
/// active: the new active's gratuitous ARPs (3 rounds 20 ms apart by
/// default) have moved the neighbours well before.
pub const DRAIN_AFTER_PEER_ACTIVE: Duration = Duration::from_millis(300);
/// The longest drain (a peer that does not take over).
pub const DRAIN_MAX: Duration = Duration::from_secs(3);

/// A drain in progress (see [`Cluster::start_drain`]).
#[derive(Debug, Clone, Copy)]
struct Drain {
    since: Instant,
    /// When the peer was first heard active.
    peer_active: Option<Instant>,
    /// The workers' forwarded packets when it began.
    forwarded: u64,
}

/// Packets the workers forwarded so far.
fn forwarded(node: &Node) -> u64 {
    node.workers()
        .iter()
        .map(|w| w.counters.forwarded.get())
        .sum()
}

/// An HA link's state from (carrier, peer heard), in words.
fn link_state(s: (bool, bool)) -> &'static str {
    match s {
        (false, _) => "no carrier",
        (true, false) => "peer not heard",
        (true, true) => "OK",
    }
}

/// The id of the last bulk this member sent or received.
fn sync_id(node: &Node) -> Option<u32> {
    node.sync().map(|s| {
        s.shared()
            .sync_id
            .load(std::sync::atomic::Ordering::Relaxed)
    })
}

fn unix_secs(t: SystemTime) -> Option<u64> {
    t.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())
}

/// What lowers a quality factor, in words: the interfaces down, the
/// failed checks, a failed dataplane.
fn quality_cause(interfaces: &[Interface], problems: &[String], dataplane_failed: bool) -> String {
    if dataplane_failed {
        return "the dataplane failed".to_owned();
    }
    let down: Vec<&str> = interfaces
        .iter()
        .filter(|i| !i.up && !i.ha && i.weight > 0)
        .map(|i| i.name.as_str())
        .collect();
    let mut parts = Vec::new();
    if !down.is_empty() {
        parts.push(format!("down: {}", down.join(", ")));
    }
    if !problems.is_empty() {
        parts.push(format!("failed checks: {}", problems.join("; ")));
    }
    if parts.is_empty() {
        "every interface up, every check passing".to_owned()
    } else {
        parts.join("; ")
    }
}

fn quality_inputs(node: &Node, weights: Option<&[u16]>) -> (Vec<Interface>, Vec<Aggregate>) {
    let mut interfaces = Vec::new();
    let mut aggregates = Vec::new();
    for (i, iface) in node.interfaces().iter().enumerate() {
        let weight = weights
            .and_then(|w| w.get(i).copied())
            .unwrap_or(iface.config.weight);
        match (&iface.config.aggregate, node.aggregate(i)) {
            (Some(agg), Some(members)) => {
                let id = AggregateId(i as u16);
                aggregates.push(Aggregate {
                    id,
                    kind: match agg.mode {
                        AggregateMode::Lacp => AggregateKind::Lacp,
                        AggregateMode::ActiveBackup => AggregateKind::Redundancy,
                    },
                    weight,
                });
                for (name, up) in members {
                    interfaces.push(Interface {
                        weight,
                        aggregate: Some(id),
                        ..Interface::new(&name, up)
                    });
                }
            }
            _ => interfaces.push(Interface {
                weight,
                ..Interface::new(&iface.config.name, node.link(i).0.up)
            }),
        }
    }
    (interfaces, aggregates)
}

fn plane(r: Role) -> PlaneRole {
    match r {
        Role::Active => PlaneRole::Active,
        Role::Passive => PlaneRole::Passive,
    }
}

fn role_name(r: Role) -> String {
    plane(r).as_str().to_owned()
}

fn forced_name(f: Option<Role>) -> Option<String> {
    f.map(role_name)
}

/// The HA parameters that apply without a restart (F9-F12 of
/// HA-REFERENCE): what `ha set` changes on both members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveParams {
    /// F9: 50 on the preferred member, else 0.
    pub priority: u8,
    /// F11: bounce the data interfaces on becoming passive.
    pub bounce_on_swap: bool,
    /// F11: keep LACP aggregates in distribution while passive.
    pub lacp_when_passive: bool,
    /// F11: repeat gratuitous ARP this often while active (0: never).
    pub garp_interval_ms: u32,
    /// F10: only connections older than this are synchronized.
    pub sync_min_age_secs: u32,
    /// F12: each data interface's weight, in the node's interface order.
    pub weights: Vec<u16>,
}

impl LiveParams {
    /// The live parameters of `cfg` (a cluster member's) for the node's
    /// interfaces `names` (by name; one the configuration lacks keeps
    /// weight 100).
    pub fn of(cfg: &NodeConfig, names: &[&str]) -> Option<LiveParams> {
        let ha = cfg.ha.as_ref()?;
        Some(LiveParams {
            priority: ha.priority,
            bounce_on_swap: ha.bounce_on_swap,
            lacp_when_passive: ha.lacp_when_passive,
            garp_interval_ms: ha.garp_interval_ms,
            sync_min_age_secs: ha.sync_min_age_secs,
            weights: names
                .iter()
                .map(|n| {
                    cfg.interfaces
                        .iter()
                        .find(|i| i.name == *n)
                        .map_or(100, |i| i.weight)
                })
                .collect(),
        })
    }
}

impl Cluster {
    /// The election of a member whose configuration enables it; `None`
    /// otherwise. Sockets use tokens `token_base..token_base + links`.
    /// `keys` are the cluster's HA keys ([`tandem_dataplane::hakeys::for_cluster`]),
    /// `config_path` the file that holds the pre-shared key (checked for
    /// access by others than root, see [`key_file_exposure`]). Gives the
    /// workers what they need to police and answer the data-port frames.
    /// An `incumbent` (a node that ran alone and creates the cluster)
    /// starts active, with no start-up wait.
    pub fn new(
        cfg: &NodeConfig,
        node: &Node,
        registry: &Registry,
        token_base: usize,
        keys: &Arc<HaKeys>,
        config_path: &Path,
        incumbent: bool,
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
                local: l.address.addr,
                socket,
                peer: SocketAddrV4::new(l.peer, PORT),
                up: false,
                gaps: GapStats::default(),
                state: (false, false),
                state_since: SystemTime::now(),
                send_errors: 0,
                unlogged: None,
                send_error_logged: None,
            });
        }
        let data_ports: Vec<DataPort> = node
            .interfaces()
            .iter()
            .enumerate()
            .filter_map(|(index, i)| {
                Some(DataPort {
                    index,
                    port: i.port.id(),
                    mac: i.mac.0,
                    addr: i.config.addresses.first()?.addr,
                    peer_mac: None,
                })
            })
            .collect();
        let data_path = node.ha_data().is_some() && !data_ports.is_empty();
        let last_resort = ha.last_resort && data_path;
        let icmp_check = ha.icmp_check && data_path;
        let serial = serial_number(&cfg.node.serial);
        if let Some(data) = node.ha_data() {
            data.configure(hadata::HaDataConfig {
                cluster_id: ha.cluster_id,
                serial,
                keys: hadata::CheckKeys::new(CheckKey::new(keys.check().as_bytes())),
                ports: data_ports.iter().map(|p| p.port).collect(),
                heartbeat_len: HEARTBEAT_LEN,
                limits: hadata::Limits::for_heartbeat_ms(ha.heartbeat_ms),
            });
        }
        let mut c = Config::new(serial);
        // Grows across restarts, whatever the clock does: the peer tells a
        // restart from a replay.
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as u64);
        let state_dir = cfg
            .control
            .state_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("/var/lib/tandem"));
        let mut warnings = Vec::new();
        c.epoch = match crate::bootepoch::next_epoch(
            &crate::bootepoch::epoch_file(&state_dir, &cfg.node.name),
            now_ms,
        ) {
            Ok(e) => e,
            Err(e) => {
                warnings.push(format!(
                    "{e}; using the wall clock: if it was stepped back, the peer drops our heartbeats until it passes our last start"
                ));
                now_ms
            }
        };
        c.priority = ha.priority;
        c.interval = Duration::from_millis(u64::from(ha.heartbeat_ms));
        c.dead_time = Duration::from_millis(u64::from(ha.dead_ms));
        c.startup_wait = Duration::from_millis(u64::from(ha.startup_wait_ms));
        c.icmp_timeout = Duration::from_millis(u64::from(ha.icmp_timeout_ms));
        c.last_resort = last_resort;
        // Our own lateness is not the peer's death.
        c.stall_threshold = c.dead_time / 2;
        let origin = Instant::now();
        let own_epoch = c.epoch;
        Ok(Some(Cluster {
            startup_warnings: warnings,
            ha: if incumbent {
                Ha::new_incumbent(c, Duration::ZERO)
            } else {
                Ha::new(c, Duration::ZERO)
            },
            codec: Codec::new(keys.heartbeat().as_bytes(), ha.cluster_id)
                .with_own_serial(serial)
                .with_own_epoch(own_epoch),
            check_key: CheckKey::new(keys.check().as_bytes()),
            check_alt: None,
            keys: KeyWatch {
                ring: node
                    .key_ring()
                    .cloned()
                    .unwrap_or_else(|| KeyRing::new(keys.clone())),
                // Taken from the ring at the first poll.
                generation: u64::MAX,
                phase: KeyPhase::Steady,
                since: Instant::now(),
                workers_pending: false,
                heard_current: None,
                heard_other: None,
            },
            cluster_id: ha.cluster_id,
            serial,
            key_file_warning: crate::keystore::clear_file_of(cfg, config_path)
                .as_deref()
                .and_then(key_file_exposure),
            serials: Arc::new(std::sync::Mutex::new(
                cfg.membership
                    .as_ref()
                    .map(|m| m.members.iter().map(|m| m.serial.clone()).collect())
                    .unwrap_or_default(),
            )),
            links,
            data_ports,
            last_resort,
            icmp_check,
            icmp_timeout: Duration::from_millis(u64::from(ha.icmp_timeout_ms)),
            probe: None,
            probes: 0,
            last_answered: None,
            data_backlog: 0,
            token_base,
            origin,
            role_since: SystemTime::now(),
            swaps: 0,
            last_swap: None,
            peer_role_seen: None,
            last_icmp_rtt_us: None,
            quality_cfg: QualityConfig {
                lacp_members_have_weight: ha.lacp_members_have_weight,
                failover_members_have_weight: ha.failover_members_have_weight,
            },
            bounce_on_swap: ha.bounce_on_swap,
            weights: None,
            health: spawn_health(Health::new(ha, crate::tpm::node()))?,
            penalties: Vec::new(),
            problems: Vec::new(),
            rejected: 0,
            handing_over: false,
            serials_cache: Vec::new(),
            quality_cause: None,
            drain: None,
            refusals: std::collections::HashMap::new(),
            dataplane_failed: false,
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
        let t = self.origin + self.ha.poll_timeout();
        let backlog = self.data_backlog > 0;
        match &self.probe {
            Some(_) => t.min(Instant::now() + PROBE_POLL),
            None if backlog => t.min(Instant::now() + PROBE_POLL),
            None => t,
        }
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
                self.refused(i, from, "not from the peer's address on this link", log);
                continue;
            }
            match self.codec.decode(&buf[..n]) {
                Ok(hb) => {
                    self.heard_under(self.codec.last_under_alt());
                    let alive = self.ha.path_alive(self.links[i].id);
                    let interval = self.ha.config().interval;
                    self.links[i].gaps.arrival(Instant::now(), alive, interval);
                    let now = self.now();
                    self.ha.handle_event(
                        now,
                        Event::PeerHeartbeat {
                            link: self.links[i].id,
                            peer: hb.state,
                        },
                    );
                }
                Err(e) => self.refused(i, from, refusal_reason(&e), log),
            }
        }
        self.run(node, log);
    }

    /// A heartbeat refused on HA link `i`: counted, and logged at the
    /// first of each reason, then at most every [`REFUSAL_LOG_EVERY`] with
    /// how many came since.
    fn refused(&mut self, i: usize, from: SocketAddr, why: &'static str, log: &mut EventLog) {
        self.rejected += 1;
        let now = Instant::now();
        let e = self.refusals.entry(why).or_insert((None, 0));
        e.1 += 1;
        if e.0
            .is_none_or(|t| now.duration_since(t) >= REFUSAL_LOG_EVERY)
        {
            log.event(
                "HA",
                format_args!(
                    "heartbeat from {} on {} refused: {why} ({} such since the last line)",
                    from.ip(),
                    self.links[i].name,
                    e.1
                ),
            );
            *e = (Some(now), 0);
        }
    }

    /// Takes (a bounded number of) what the workers received on the data
    /// ports: last-resort heartbeats and answers to our ICMP check; every
    /// refusal is counted by reason.
    fn drain_data(&mut self, node: &Node, log: &mut EventLog) {
        let Some(data) = node.ha_data() else { return };
        let c = &data.counters;
        let bump = hadata::HaDataCounters::bump;
        for r in data.received(DATA_FRAMES_PER_TICK) {
            match r.kind {
                Kind::Heartbeat => match self.codec.decode(r.payload()) {
                    Ok(hb) if hb.link == LinkId::Data => {
                        self.heard_under(self.codec.last_under_alt());
                        self.learn_peer_mac(r.port, r.src_mac, hb.state.serial);
                        let now = self.now();
                        self.ha
                            .handle_event(now, Event::LastResortHeartbeat { peer: hb.state });
                    }
                    // An HA-link heartbeat carried onto a data port.
                    Ok(_) | Err(DecodeError::Own) => bump(&c.reflected),
                    // The same heartbeat arrives once per data port.
                    Err(DecodeError::Replay) => {}
                    Err(DecodeError::BadLength(_)) => bump(&c.bad_length),
                    // Authentic, from a peer run not proven yet (a peer
                    // that has just started; our echo proves it next).
                    Err(DecodeError::Unproven) => {
                        self.rejected += 1;
                        bump(&c.stale);
                    }
                    Err(_) => {
                        self.rejected += 1;
                        bump(&c.unauthentic);
                    }
                },
                Kind::ProbeReply => self.on_check_answer(node, &r, log),
                Kind::ProbeRequest => {}
            }
        }
        self.data_backlog = data.backlog();
        if self
            .probe
            .as_ref()
            .is_some_and(|p| Instant::now() >= p.deadline)
        {
            self.probe = None;
            let now = self.now();
            self.ha.handle_event(now, Event::IcmpTimeout);
        }
    }

    /// Remembers where the peer (`serial`, when it is the peer) is on `port`.
    fn learn_peer_mac(&mut self, port: u16, mac: [u8; 6], serial: u64) {
        if serial == self.serial || self.ha.peer().is_some_and(|p| p.serial != serial) {
            return;
        }
        if let Some(p) = self.data_ports.iter_mut().find(|p| p.port == port) {
            p.peer_mac = Some((mac, Instant::now()));
        }
    }

    /// An echo reply to an ICMP check: the peer's answer to the check in
    /// flight, or something that counts for nothing.
    fn on_check_answer(&mut self, node: &Node, r: &hadata::Received, log: &mut EventLog) {
        let Some(data) = node.ha_data() else { return };
        let c = &data.counters;
        let judge = |nonce: Option<&[u8; NONCE_LEN]>| {
            let under = |key: &CheckKey| {
                hadata::judge(
                    key,
                    self.cluster_id,
                    self.serial,
                    self.ha.peer().map(|p| p.serial),
                    nonce,
                    r.port,
                    r.payload(),
                )
            };
            match (under(&self.check_key), &self.check_alt) {
                (Verdict::Unauthentic, Some(alt)) => under(alt),
                (v, _) => v,
            }
        };
        let verdict = judge(self.probe.as_ref().map(|p| &p.nonce));
        if verdict == Verdict::Stale
            && matches!(judge(self.last_answered.as_ref()), Verdict::Answer { .. })
        {
            return; // the same answer from another data port
        }
        let counter = match verdict {
            Verdict::Answer { responder } => {
                hadata::HaDataCounters::bump(&c.answers_accepted);
                self.learn_peer_mac(r.port, r.src_mac, responder);
                if let Some(p) = self.probe.take() {
                    self.last_answered = Some(p.nonce);
                    let rtt = p.sent.elapsed();
                    self.last_icmp_rtt_us = Some(rtt.as_micros() as u64);
                    log.event(
                        "HA",
                        format_args!(
                            "ICMP check: the peer's dataplane ({}) answers on port {} in {:.1} ms",
                            self.full_serial(responder),
                            r.port,
                            rtt.as_secs_f64() * 1e3
                        ),
                    );
                    let now = self.now();
                    self.ha.handle_event(now, Event::IcmpReply);
                }
                return;
            }
            Verdict::BadLength => &c.bad_length,
            Verdict::Unauthentic => &c.unauthentic,
            Verdict::Reflected => &c.reflected,
            Verdict::WrongPeer => &c.wrong_peer,
            Verdict::Stale => &c.stale,
        };
        hadata::HaDataCounters::bump(counter);
        // One line per check in flight (the counters tell the rest): a
        // flood does not flood the log, nor hold up the control thread
        // with file writes.
        let due = self
            .probe
            .as_mut()
            .is_some_and(|p| !std::mem::replace(&mut p.refusal_logged, true));
        if due {
            let mac = r.src_mac.map(|b| format!("{b:02x}")).join(":");
            log.event(
                "HA",
                format_args!(
                    "ICMP check: refused a reply on port {} from {mac} ({}): only the peer's answer counts",
                    r.port,
                    match verdict {
                        Verdict::Reflected => "a reflection of our own frame",
                        Verdict::Unauthentic => "not sealed with the cluster key",
                        Verdict::WrongPeer => "names another member",
                        Verdict::Stale => "answers another check",
                        _ => "bad length",
                    }
                ),
            );
        }
    }

    /// A heartbeat of the peer authenticated under our current key
    /// (`under_other` false) or the other key of a change.
    fn heard_under(&mut self, under_other: bool) {
        let w = &mut self.keys;
        let now = Instant::now();
        if under_other {
            w.heard_current = None;
            w.heard_other.get_or_insert(now);
        } else {
            w.heard_other = None;
            w.heard_current.get_or_insert(now);
        }
    }

    /// Takes a step of a key change (F8) from the ring into the heartbeat
    /// codec, the ICMP checks and the workers' check answers, and takes
    /// the steps that are this member's to take: retire the old key once
    /// the peer is heard under the new one, commit a staged key the peer
    /// already sends under, give up a staged change that never came.
    /// Never waits: a lock held elsewhere is tried again next turn.
    fn follow_keys(&mut self, node: &Node, log: &mut EventLog) {
        if self.keys.ring.generation() != self.keys.generation {
            if let Some(set) = self.keys.ring.try_get() {
                self.codec.set_keys(
                    set.current.heartbeat().as_bytes(),
                    set.other.as_ref().map(|o| o.heartbeat().as_bytes()),
                );
                self.check_key = CheckKey::new(set.current.check().as_bytes());
                self.check_alt = set
                    .other
                    .as_ref()
                    .map(|o| CheckKey::new(o.check().as_bytes()));
                let w = &mut self.keys;
                let first = w.generation == u64::MAX;
                let before = w.phase;
                (w.generation, w.phase, w.since) = (set.generation, set.phase, Instant::now());
                (w.heard_current, w.heard_other) = (None, None);
                w.workers_pending = !first || set.phase != KeyPhase::Steady;
                if !first {
                    // Each step in order, also those taken between two
                    // turns of this thread.
                    for step in key_steps(before, set.phase) {
                        log.event("HA", format_args!("{step}"));
                    }
                }
            }
        }
        if self.keys.workers_pending {
            match node.ha_data().and_then(|d| d.check_keys()) {
                Some(k) => {
                    if k.try_set(self.check_key.clone(), self.check_alt.clone()) {
                        self.keys.workers_pending = false;
                    }
                }
                None => self.keys.workers_pending = false,
            }
        }
        let w = &self.keys;
        let now = Instant::now();
        let held = |t: Option<Instant>, d: Duration| t.is_some_and(|t| now.duration_since(t) >= d);
        let staged = w.phase == KeyPhase::Staged;
        let follow = staged && held(w.heard_other, KEY_FOLLOW_AFTER);
        let give_up = staged && !follow && now.duration_since(w.since) >= KEY_STAGE_LIMIT;
        if w.phase == KeyPhase::Committed && held(w.heard_current, KEY_RETIRE_AFTER) {
            w.ring.retire();
        }
        // The key store's files follow on a thread of their own: this one
        // writes no file.
        let store = |f: fn(), log: &mut EventLog| {
            if let Err(e) = std::thread::Builder::new()
                .name("tandem-keystore".into())
                .spawn(f)
            {
                log.event(
                    "HA",
                    format_args!("WARNING: the key store could not follow the key change: {e}"),
                );
            }
        };
        if follow && w.ring.try_commit() {
            log.event(
                "HA",
                format_args!(
                    "HA key change: the peer sends under the staged key, so it committed; committing here too"
                ),
            );
            store(crate::keystore::commit_change, log);
        }
        if give_up && w.ring.abort() {
            log.event(
                "HA",
                format_args!(
                    "HA key change not committed within {} s: giving it up",
                    KEY_STAGE_LIMIT.as_secs()
                ),
            );
            store(crate::keystore::undo_change, log);
        }
    }

    /// The key change as hainfo shows it: phase and seconds in it.
    pub fn key_change(&self) -> (KeyPhase, u64) {
        (self.keys.phase, self.keys.since.elapsed().as_secs())
    }

    /// Feeds the machine what changed (links, quality, table, data-port
    /// frames) and a tick, then carries out its actions.
    pub fn poll(&mut self, node: &Node, log: &mut EventLog) {
        self.follow_keys(node, log);
        self.drain_data(node, log);
        let now = self.now();
        for l in &mut self.links {
            let up = kernel_carrier(&l.interface);
            if up != l.up {
                l.up = up;
                self.ha.handle_event(now, Event::LinkState(l.id, up));
            }
        }
        let latest = self.health.as_ref().and_then(|h| h.try_iter().last());
        if let Some((penalties, problems)) = latest {
            for p in problems.iter().filter(|p| !self.problems.contains(p)) {
                log.event("HA", format_args!("quality check failed: {p}"));
            }
            for p in self.problems.iter().filter(|p| !problems.contains(p)) {
                log.event("HA", format_args!("quality check passes again: {p}"));
            }
            (self.penalties, self.problems) = (penalties, problems);
        }
        let (interfaces, aggregates) = quality_inputs(node, self.weights.as_deref());
        let q = quality(&interfaces, &aggregates, &self.penalties, &self.quality_cfg);
        let q = if self.dataplane_failed { 0 } else { q };
        if self.quality_cause.as_ref().map(|c| c.0) != Some(q) {
            let cause = quality_cause(&interfaces, &self.problems, self.dataplane_failed);
            self.quality_cause = Some((q, cause));
        }
        // The machine acts on changes only: feed the current values.
        self.ha.handle_event(now, Event::LocalQuality(q));
        let complete = node.sync().is_some_and(|s| {
            s.shared()
                .synchronized
                .load(std::sync::atomic::Ordering::Relaxed)
        });
        self.ha.handle_event(now, Event::SyncComplete(complete));
        self.ha.handle_event(now, Event::Tick);
        self.run(node, log);
        self.follow_drain(node, log);
        self.observe();
        self.report_send_errors(log);
    }

    /// What hainfo says changed, and when: the peer's role, each link's
    /// state.
    fn observe(&mut self) {
        if let Ok(g) = self.serials.try_lock() {
            if *g != self.serials_cache {
                self.serials_cache.clone_from(&g);
            }
        }
        let now = SystemTime::now();
        let unix = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        match (self.ha.peer().map(|p| p.role), self.peer_role_seen) {
            (Some(r), Some((seen, _))) if r == seen => {}
            (Some(r), _) => self.peer_role_seen = Some((r, unix)),
            (None, _) => {}
        }
        for l in &mut self.links {
            let st = (l.up, self.ha.path_alive(l.id));
            if st != l.state {
                l.state = st;
                l.state_since = now;
            }
        }
    }

    /// The old active of a swap keeps forwarding the connections it has
    /// (and opens none) until the peer has been active for
    /// [`DRAIN_AFTER_PEER_ACTIVE`], at most [`DRAIN_MAX`]: the neighbours
    /// that still send here (their ARP not yet moved by the new active's
    /// announcements, packets in flight) lose nothing.
    fn start_drain(&mut self, node: &Node, log: &mut EventLog) {
        node.set_draining();
        self.drain = Some(Drain {
            since: Instant::now(),
            peer_active: None,
            forwarded: forwarded(node),
        });
        log.event(
            "HA",
            format_args!(
                "draining: forwarding the connections this member has until the peer has been active for {} ms (at most {} ms)",
                DRAIN_AFTER_PEER_ACTIVE.as_millis(),
                DRAIN_MAX.as_millis()
            ),
        );
    }

    /// Ends the drain when it is due (see [`Self::start_drain`]).
    fn follow_drain(&mut self, node: &Node, log: &mut EventLog) {
        let Some(d) = &mut self.drain else { return };
        let now = Instant::now();
        if d.peer_active.is_none()
            && self.ha.peer_heard()
            && self.ha.peer().is_some_and(|p| p.role == Role::Active)
        {
            d.peer_active = Some(now);
        }
        let took_over = d
            .peer_active
            .is_some_and(|t| now.duration_since(t) >= DRAIN_AFTER_PEER_ACTIVE);
        if !took_over && now.duration_since(d.since) < DRAIN_MAX {
            return;
        }
        let n = forwarded(node).saturating_sub(d.forwarded);
        let ms = now.duration_since(d.since).as_millis();
        self.drain = None;
        node.set_role(PlaneRole::Passive);
        if took_over {
            log.event(
                "HA",
                format_args!(
                    "drain over after {ms} ms: the peer is active; {n} packets forwarded meanwhile; this member is silent now"
                ),
            );
        } else {
            log.event(
                "HA",
                format_args!(
                    "drain over after {ms} ms without the peer taking over; {n} packets forwarded meanwhile; this member is silent now"
                ),
            );
        }
        self.bounce(node, log);
    }

    /// Bounces the data interfaces on becoming passive, if configured.
    fn bounce(&self, node: &Node, log: &mut EventLog) {
        if !self.bounce_on_swap {
            return;
        }
        for (iface, why) in node.bounce_ports() {
            log.event(
                "HA",
                format_args!("cannot bounce interface {iface} on swap: {why}"),
            );
        }
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
                Action::BecomeActive { reason } | Action::BecomePassive { reason } => {
                    let to = if matches!(a, Action::BecomeActive { .. }) {
                        PlaneRole::Active
                    } else {
                        PlaneRole::Passive
                    };
                    if node.role() != to {
                        // A clean stop hands over through the forced path:
                        // no operator asked for it.
                        let why = if self.handing_over && to == PlaneRole::Passive {
                            "handing over: this member is stopping".to_owned()
                        } else {
                            reason.to_string()
                        };
                        let line =
                            format!("swap: {} -> {} ({why})", node.role().as_str(), to.as_str());
                        log.event("HA", &line);
                        self.swaps += 1;
                        self.last_swap = Some(line);
                        self.role_since = SystemTime::now();
                    }
                    match (to, node.role(), &self.drain) {
                        // Make-before-break: the peer takes over while
                        // this member still forwards what reaches it.
                        (PlaneRole::Passive, PlaneRole::Active, _) => self.start_drain(node, log),
                        // Already draining: it ends by itself.
                        (PlaneRole::Passive, _, Some(_)) => {}
                        _ => {
                            self.drain = None;
                            node.set_role(to);
                            if to == PlaneRole::Passive {
                                self.bounce(node, log);
                            }
                        }
                    }
                }
                Action::SendHeartbeat { link, state } => self.send_heartbeat(node, link, &state),
                Action::StartIcmpProbe => self.start_probe(node, log),
                Action::RequestResync => {
                    log.event(
                        "HA",
                        "our table is stale: asking the peer for a bulk resync",
                    );
                    // Incomplete (for the sync core too) until the bulk arrives.
                    if let Some(core) = node.sync() {
                        core.request_resync();
                    }
                }
                // The swap is logged with its old and new role just above.
                Action::Log(HaEvent::Swap { .. }) => {}
                // A clean stop's hand-over says so itself: not an
                // operator's forced status.
                Action::Log(HaEvent::ForcedChanged(_)) if self.handing_over => {}
                Action::Log(e @ HaEvent::DualActiveResolved { we_yielded: false }) => {
                    // While both were active the neighbours may have learnt
                    // the peer's MACs: announce ours again.
                    node.reannounce();
                    log.event("HA", self.describe(&e));
                    log.event("HA", "announcing our addresses again (gratuitous ARP)");
                }
                Action::Log(
                    e @ (HaEvent::PeerLost(_)
                    | HaEvent::AllHaLinksLost
                    | HaEvent::IcmpMonitoringStarted),
                ) if peer_announced_leaving() => log.event(
                    "HA",
                    format_args!(
                        "{} (expected: the peer announced it is going down)",
                        self.describe(&e)
                    ),
                ),
                Action::Log(e) => log.event("HA", self.describe(&e)),
            }
        }
    }

    fn send_heartbeat(&mut self, node: &Node, link: LinkId, state: &PeerState) {
        if link == LinkId::Data {
            let (Some(data), true) = (node.ha_data(), self.last_resort) else {
                return;
            };
            let bytes = self.codec.encode(link, state);
            let seq = (state.gen & 0xffff) as u16;
            for p in self.data_ports.iter().filter(|p| node.link(p.index).0.up) {
                let mut f = [0u8; hadata::MAX_FRAME];
                if let Some(n) = hadata::build_request(
                    &mut f,
                    hadata::BROADCAST,
                    p.mac,
                    p.addr,
                    hadata::ID_HEARTBEAT,
                    seq,
                    &bytes,
                ) {
                    data.send(p.port, &f[..n]);
                }
            }
        } else if let Some(i) = self.links.iter().position(|l| l.id == link) {
            let bytes = self.codec.encode(link, state);
            let l = &mut self.links[i];
            if let Err(e) = l.socket.send_to(&bytes, SocketAddr::V4(l.peer)) {
                l.send_errors += 1;
                let u = l.unlogged.get_or_insert_with(|| (String::new(), 0));
                u.0 = e.to_string();
                u.1 += 1;
            }
        }
    }

    /// Says in the log that heartbeats could not be sent on a link: at the
    /// first error, then at most every [`REFUSAL_LOG_EVERY`] while it goes
    /// on (a carrier lost is logged on its own).
    fn report_send_errors(&mut self, log: &mut EventLog) {
        let now = Instant::now();
        for l in &mut self.links {
            let due = l
                .send_error_logged
                .is_none_or(|t| now.duration_since(t) >= REFUSAL_LOG_EVERY);
            if !due {
                continue;
            }
            if let Some((e, n)) = l.unlogged.take() {
                log.event(
                    "HA",
                    format_args!(
                        "heartbeats on link {} ({}) not sent: {e} ({n} since the last such line, {} in all)",
                        l.name,
                        l.peer.ip(),
                        l.send_errors
                    ),
                );
                l.send_error_logged = Some(now);
            }
        }
    }

    /// A fresh check nonce: unpredictable without the check key (an HMAC
    /// of our boot epoch and a counter), never repeated (the epoch grows
    /// across restarts), and no entropy source that could fail.
    fn next_nonce(&mut self) -> [u8; NONCE_LEN] {
        self.probes += 1;
        let seed = CheckMsg {
            kind: CheckKind::Request,
            port: 0,
            cluster: self.cluster_id,
            requester: self.ha.config().epoch,
            responder: self.probes,
            nonce: [0; NONCE_LEN],
        }
        .seal(&self.check_key);
        let mut n = [0u8; NONCE_LEN];
        n.copy_from_slice(&seed[seed.len() - NONCE_LEN..]);
        n
    }

    /// Sends an ICMP check on every data port whose link is up: unicast to
    /// the peer's MAC where an authentic frame of the peer taught it
    /// (recently), else broadcast. With none (or the check off), the peer
    /// is silent everywhere: answer "no reply".
    fn start_probe(&mut self, node: &Node, log: &mut EventLog) {
        let mut sent = 0;
        let mut unicast = 0;
        if let (Some(data), true) = (node.ha_data(), self.icmp_check) {
            let nonce = self.next_nonce();
            let now = Instant::now();
            for p in self.data_ports.iter().filter(|p| node.link(p.index).0.up) {
                let payload = CheckMsg {
                    kind: CheckKind::Request,
                    port: p.port,
                    cluster: self.cluster_id,
                    requester: self.serial,
                    responder: 0,
                    nonce,
                }
                .seal(&self.check_key);
                let dst = match p.peer_mac {
                    Some((mac, at)) if now.saturating_duration_since(at) < PEER_MAC_TTL => {
                        unicast += 1;
                        mac
                    }
                    _ => hadata::BROADCAST,
                };
                let mut f = [0u8; hadata::MAX_FRAME];
                if let Some(n) = hadata::build_request(
                    &mut f,
                    dst,
                    p.mac,
                    p.addr,
                    hadata::ID_PROBE,
                    self.probes as u16,
                    &payload,
                ) {
                    sent += usize::from(data.send(p.port, &f[..n]));
                }
            }
            if sent > 0 {
                self.probe = Some(Probe {
                    nonce,
                    sent: now,
                    deadline: now + self.icmp_timeout,
                    refusal_logged: false,
                });
                log.event(
                    "HA",
                    format_args!(
                        "peer silent on every path: ICMP check on {sent} data ports ({unicast} to the peer's MAC)"
                    ),
                );
                return;
            }
        }
        let now = self.now();
        self.ha.handle_event(now, Event::IcmpTimeout);
    }

    /// The peer as log lines name it: its serial and the role it had.
    fn peer_name(&self) -> String {
        match self.ha.peer() {
            Some(p) => format!("{} (was {})", self.full_serial(p.serial), role_name(p.role)),
            None => "(not heard yet)".to_owned(),
        }
    }

    /// The serial a heartbeat carries (its last 8 bytes), in full when
    /// the cluster's file lists a member ending with it.
    fn full_serial(&self, n: u64) -> String {
        let tail = serial_text(n);
        // Never wait: the copy of the last turn when the list is being
        // changed.
        let fresh = self.serials.try_lock().ok();
        let serials: &[String] = fresh.as_deref().map_or(&self.serials_cache, Vec::as_slice);
        let mut found = serials.iter().filter(|s| s.ends_with(&tail));
        match (found.next(), found.next()) {
            (Some(s), None) => s.clone(),
            _ => tail,
        }
    }

    /// Applies the parameters of a changed configuration that need no
    /// restart (`ha set`, a received revision): priority, bounce on swap,
    /// the interfaces' weights.
    pub fn apply_params(&mut self, p: &LiveParams) {
        self.ha.set_priority(p.priority);
        self.bounce_on_swap = p.bounce_on_swap;
        self.weights = Some(p.weights.clone());
    }

    /// Whether the peer's heartbeats arrive (on any path).
    pub fn peer_heard(&self) -> bool {
        self.ha.peer_heard()
    }

    /// Shares the list of the members' serials with the configuration
    /// sync (a join adds to it): `shared` takes ours and replaces it.
    pub fn share_serials(&mut self, shared: Arc<std::sync::Mutex<Vec<String>>>) {
        let ours = self.serials.lock().map(|g| g.clone()).unwrap_or_default();
        if let Ok(mut g) = shared.lock() {
            *g = ours;
        }
        self.serials = shared;
    }

    fn link_name(&self, id: LinkId) -> String {
        match id {
            LinkId::Data => "the data ports (last resort)".to_owned(),
            _ => self.links.iter().find(|l| l.id == id).map_or_else(
                || {
                    if id == LinkId::Main {
                        "the main HA link".to_owned()
                    } else {
                        "the backup HA link".to_owned()
                    }
                },
                |l| format!("link {} ({})", l.name, l.peer.ip()),
            ),
        }
    }

    /// An event as an operator reads it in the log.
    fn describe(&self, e: &HaEvent) -> String {
        match e {
            HaEvent::PeerFound { serial } => {
                format!("peer {} found (cluster member)", self.full_serial(*serial))
            }
            HaEvent::PeerLost(LinkId::Data)
                if self.ha.path_alive(LinkId::Main) || self.ha.path_alive(LinkId::Backup) =>
            {
                "the peer stopped its last-resort heartbeats (an HA link works)".to_owned()
            }
            HaEvent::PeerLost(l) => {
                format!("HA communication on {} has failed", self.link_name(*l))
            }
            HaEvent::PeerBack(l) => format!("HA communication on {} is back", self.link_name(*l)),
            HaEvent::LinkState(l, up) => format!(
                "our end of {} is {}",
                self.link_name(*l),
                if *up { "up" } else { "down" }
            ),
            HaEvent::AllHaLinksLost => {
                "no HA link carries the peer's heartbeats any more".to_owned()
            }
            HaEvent::LastResort(on) => if *on {
                "last-resort heartbeats over the data ports started"
            } else {
                "last-resort heartbeats over the data ports stopped (an HA link works)"
            }
            .to_owned(),
            HaEvent::Swap { to, reason } => {
                format!("election: this member becomes {} ({reason})", role_name(*to))
            }
            HaEvent::TakeoverWithIncompleteTable => {
                "taking over with an incomplete connection table: connections not yet synchronized are lost".to_owned()
            }
            HaEvent::QualityChanged { from, to } => format!(
                "quality of {} (this member): {from} -> {to} ({})",
                self.full_serial(self.serial),
                self.quality_cause.as_ref().map_or("", |c| c.1.as_str())
            ),
            HaEvent::PeerQualityChanged { from, to } => format!(
                "quality of the peer {}: {from} -> {to} (its hainfo -v says why)",
                self.peer_name()
            ),
            HaEvent::ForcedChanged(f) => match forced_name(*f) {
                Some(r) => format!("forced status {r} (by the operator): the election keeps this member {r}"),
                None => "forced status removed (by the operator): the election decides again".into(),
            },
            HaEvent::IcmpMonitoringStarted => format!(
                "peer {} silent on every path: starting ICMP monitoring",
                self.peer_name()
            ),
            HaEvent::IcmpResult { peer_alive } => if *peer_alive {
                "ICMP check: the peer's dataplane answers, it is not taken over"
            } else {
                "ICMP check: no answer from the peer"
            }
            .to_owned(),
            HaEvent::DualActiveDetected => "both members are active (dual active)".to_owned(),
            HaEvent::DualActiveResolved { we_yielded } => if *we_yielded {
                "dual active resolved: this member yields"
            } else {
                "dual active resolved: the peer yielded"
            }
            .to_owned(),
            HaEvent::PeerRestarted => match self.ha.peer() {
                Some(p) => format!(
                    "the peer {} restarted (its tandemd started at {})",
                    self.full_serial(p.serial),
                    crate::peer::confsync::utc_text(peer_boot_unix(p.epoch, p.uptime_ms))
                ),
                None => "the peer restarted".to_owned(),
            },
            HaEvent::LocalStall { ms } => {
                format!("this process was not scheduled for {ms} ms; silent paths get a fresh dead time")
            }
            HaEvent::Synchronized(done) => if *done {
                "our connection table is complete"
            } else {
                "our connection table is not complete"
            }
            .to_owned(),
        }
    }

    /// On a clean stop (SIGTERM, an upgrade): an active member with a live
    /// peer becomes passive first and waits (at most `limit`) until the
    /// peer announces itself active, so the takeover costs a heartbeat
    /// round trip instead of the dead time; meanwhile, and until its drain
    /// ends, it still forwards what reaches it (make-before-break).
    pub fn hand_over(&mut self, node: &Node, log: &mut EventLog, limit: Duration) {
        if node.role() != PlaneRole::Active || !self.ha.peer_heard() {
            return;
        }
        log.event("HA", "stopping: handing the active role to the peer");
        self.handing_over = true;
        let t0 = Instant::now();
        self.forced(Some(PlaneRole::Passive), node, log);
        let mut taken = false;
        // The peer's takeover within `limit`, then the drain (bounded by
        // its own end, with a margin for the control turns).
        while t0.elapsed() < limit + DRAIN_AFTER_PEER_ACTIVE + Duration::from_millis(200) {
            for i in 0..self.links.len() {
                self.on_readable(Token(self.token_base + i), node, log);
            }
            self.poll(node, log);
            if !taken && self.ha.peer().is_some_and(|p| p.role == Role::Active) {
                taken = true;
                log.event(
                    "HA",
                    format_args!(
                        "the peer is active {:.1} ms after the hand-over began",
                        t0.elapsed().as_secs_f64() * 1e3
                    ),
                );
            }
            if taken && self.drain.is_none() {
                return;
            }
            if !taken && t0.elapsed() >= limit {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        if !taken {
            log.event(
                "HA",
                format_args!(
                    "the peer did not take over within {} ms; stopping anyway",
                    limit.as_millis()
                ),
            );
        }
        if self.drain.take().is_some() {
            node.set_role(PlaneRole::Passive);
        }
    }

    /// What this member tells its peer of itself (its members' service).
    pub fn member_status(
        &self,
        node: &Node,
        file_sync: Option<String>,
    ) -> crate::api::MemberStatusReport {
        crate::api::MemberStatusReport {
            role: role_name(self.ha.role()),
            role_since_unix: unix_secs(self.role_since),
            file_sync,
            sync_id: sync_id(node),
            links: self
                .links
                .iter()
                .map(|l| crate::api::MemberLinkState {
                    name: l.name.clone(),
                    state: link_state(l.state).into(),
                    since_unix: unix_secs(l.state_since),
                })
                .collect(),
            slots: None,
        }
    }

    /// The hainfo view.
    pub fn info(&self, cfg: &NodeConfig, node: &Node) -> HaInfo {
        let now = self.now();
        let ago = |t: Option<Duration>| t.map(|t| now.saturating_sub(t).as_millis() as u64);
        let since = self
            .role_since
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let starting = matches!(self.ha.phase(), Phase::Startup { .. });
        let complete = node.role() == PlaneRole::Active || self.ha.sync_complete();
        let local = HaMemberInfo {
            serial: cfg.node.serial.clone(),
            role: node.role().as_str().to_owned(),
            forced: forced_name(self.ha.forced()),
            quality: self.ha.quality(),
            priority: self.ha.config().priority,
            synchronized: complete,
            uptime_ms: now.as_millis() as u64,
            since_unix: Some(since),
            alive: true,
            ha_state: Some(ha_state(starting, node.role() == PlaneRole::Active, complete).into()),
            election_hold: Some(
                if starting {
                    "start-up wait (waiting for the peer)"
                } else if !complete {
                    "no preemption until its table is complete"
                } else {
                    "none"
                }
                .into(),
            ),
            heartbeat_version: Some(crate::ha::heartbeat::VERSION),
            k2k_version: node
                .sync()
                .map(|_| tandem_dataplane::build::get().k2k_version),
            sync_id: sync_id(node),
            ..Default::default()
        };
        // Heartbeats carry the serial's last 8 bytes; the sync's Hello the
        // whole of it.
        let sync_serial = node
            .sync()
            .and_then(|s| s.shared().peer_serial.try_lock().ok().map(|g| g.clone()))
            .unwrap_or_default();
        let peer = self.ha.peer().map(|p| HaMemberInfo {
            serial: if serial_number(&sync_serial) == p.serial {
                sync_serial.clone()
            } else {
                self.full_serial(p.serial)
            },
            alive: self.ha.peer_heard(),
            role: role_name(p.role),
            forced: forced_name(p.forced),
            quality: p.quality,
            priority: p.priority,
            synchronized: p.synchronized,
            uptime_ms: p.uptime_ms,
            since_unix: self.peer_role_seen.map(|(_, t)| t),
            since_observed: true,
            ha_state: Some(
                if self.ha.peer_heard() {
                    ha_state(false, p.role == Role::Active, p.synchronized)
                } else {
                    "lost"
                }
                .into(),
            ),
            election_hold: Some(
                if p.role != Role::Active && !p.synchronized {
                    "no preemption until its table is complete"
                } else {
                    "none"
                }
                .into(),
            ),
            heartbeat_version: self
                .ha
                .peer_heard()
                .then_some(crate::ha::heartbeat::VERSION),
            k2k_version: node
                .sync()
                .map(|s| {
                    s.shared()
                        .version
                        .load(std::sync::atomic::Ordering::Relaxed)
                })
                .filter(|v| *v > 0),
            boot_unix: Some(peer_boot_unix(p.epoch, p.uptime_ms)),
            ..Default::default()
        });
        let mut links: Vec<HaLinkInfo> = self
            .links
            .iter()
            .map(|l| HaLinkInfo {
                name: l.name.clone(),
                interface: l.interface.clone(),
                address: l.local.to_string(),
                peer: l.peer.ip().to_string(),
                carrier: l.up,
                peer_heard: self.ha.path_alive(l.id),
                last_heard_ms_ago: ago(self.ha.last_heard(l.id)),
                heartbeats: l.gaps.count,
                max_gap_ms: l.gaps.max.as_secs_f64() * 1e3,
                recent_max_gap_ms: l.gaps.recent_max(Instant::now()).as_secs_f64() * 1e3,
                late: l.gaps.late,
                state: link_state(l.state).into(),
                state_since_unix: unix_secs(l.state_since),
                send_errors: l.send_errors,
                peer_view: None,
            })
            .collect();
        if self.last_resort {
            links.push(HaLinkInfo {
                name: "last-resort".into(),
                interface: self
                    .data_ports
                    .iter()
                    .map(|p| node.interfaces()[p.index].config.name.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
                address: String::new(),
                peer: String::new(),
                carrier: self.ha.last_resort_on(),
                peer_heard: self.ha.path_alive(LinkId::Data),
                last_heard_ms_ago: ago(self.ha.last_heard(LinkId::Data)),
                ..Default::default()
            });
        }
        let counters = node.ha_data().map(|d| d.counters.snapshot());
        let sync_link = node.sync().and_then(|s| {
            let i = s
                .shared()
                .link_in_use
                .load(std::sync::atomic::Ordering::Relaxed);
            self.links.get(usize::from(i)).map(|l| l.name.clone())
        });
        HaInfo {
            members_heard: 1 + u8::from(self.ha.peer_heard()),
            sync_link,
            // Filled in by the daemon, which runs the watch.
            peer_status_source: None,
            election: true,
            state: match self.ha.phase() {
                Phase::Startup { .. } => "starting (waiting for the peer)".into(),
                Phase::Running if self.ha.peer_heard() => "running".into(),
                Phase::Running => "running alone (peer silent)".into(),
            },
            local,
            peer,
            links,
            icmp_check: self.ha.icmp_check().into(),
            last_icmp_rtt_us: self.last_icmp_rtt_us,
            dual_active: self.ha.dual_active(),
            swaps: self.swaps,
            last_swap: self.last_swap.clone(),
            heartbeats_rejected: self.rejected,
            quality_problems: self.problems.clone(),
            quality_parts: quality_inputs(node, self.weights.as_deref())
                .0
                .into_iter()
                .filter(|i| !i.ha)
                .map(|i| crate::api::QualityPart {
                    interface: i.name,
                    weight: i.weight,
                    up: i.up,
                })
                .collect(),
            key_file_warning: self.key_file_warning.clone(),
            key: match self.key_change() {
                (KeyPhase::Steady, _) => "steady".into(),
                (KeyPhase::Staged, s) => format!(
                    "change staged {s} s ago: the new key is accepted too, ours go out under the old one"
                ),
                (KeyPhase::Committed, s) => format!(
                    "change committed {s} s ago: ours go out under the new key, the old one is accepted until the peer is heard under the new one"
                ),
            },
            data_path: Box::new(counters.unwrap_or_default()),
            sync_version: node.sync().map_or(0, |s| {
                s.shared()
                    .version
                    .load(std::sync::atomic::Ordering::Relaxed)
            }),
            // Filled in by the daemon, which runs the service.
            peer_service: None,
            tpm: None,
            key_store: None,
            config: None,
        }
    }
}

/// A warning when the configuration file at `path`, which holds the
/// pre-shared key, can be read or changed by others than root (any group
/// or other permission bit, or an owner other than root); `None` when it
/// is root's alone.
pub fn key_file_exposure(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let m = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => {
            return Some(format!(
                "cannot check who can read {} (it holds the HA pre-shared key): {e}",
                path.display()
            ))
        }
    };
    let mode = m.mode() & 0o777;
    let mut why = Vec::new();
    if mode & 0o077 != 0 {
        why.push(format!("its mode is {mode:04o}"));
    }
    if m.uid() != 0 {
        why.push(format!("its owner is uid {}, not root", m.uid()));
    }
    (!why.is_empty()).then(|| {
        format!(
            "{} holds the HA pre-shared key and can be read by others than root ({}): run chown root:root and chmod 600 on it, then change the key on both members",
            path.display(),
            why.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_key_file_readable_by_others_is_reported_with_what_to_do() {
        let dir = std::env::temp_dir().join(format!("tandem-keyfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("node.ron");
        std::fs::write(&f, "(ha: Some((psk: \"x\")))").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let w = key_file_exposure(&f).expect("0644 is readable by others");
        assert!(w.contains("0644") && w.contains("chmod 600"), "{w}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        // Root's own file with mode 0600 is fine; another owner is not.
        let w = key_file_exposure(&f);
        assert!(w.as_deref().is_none_or(|w| !w.contains("mode")), "{w:?}");
        assert_eq!(w.is_none(), nix::unistd::geteuid().is_root(), "{w:?}");
        let missing = key_file_exposure(&dir.join("missing.ron")).expect("cannot check");
        assert!(missing.contains("cannot check"), "{missing}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
