//! The sync core: streams the workers' connection deltas to the HA peer
//! over K2K (UDP on the HA links) and, on the receiving side, hands every
//! replicated connection to the worker whose shard owns its flow, where it
//! is installed larval.
//!
//! It runs on its own thread and owns the K2K [`Session`], the HA-link
//! sockets, the consumer side of every worker's delta ring and the
//! producer side of every worker's install queue. Workers never block on
//! it: a full queue is counted and repaired by a bulk sync.

use std::net::{SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::queue::ArrayQueue;
use hdrhistogram::Histogram;

use crate::conntrack::{Delta, DeltaConsumer, DeltaKind};
use crate::k2k::{BulkReason, Event, QueueError, Record, Session, SessionConfig};
use crate::node::kernel_carrier;
use crate::worker::Role;

/// One HA link as the sync core uses it.
#[derive(Debug, Clone)]
pub struct SyncLink {
    /// Its name ("HA-main").
    pub name: String,
    /// The kernel interface (its carrier decides whether the link is used).
    pub interface: String,
    /// This node's address and the sync port.
    pub local: SocketAddrV4,
    /// The peer's address and the sync port.
    pub peer: SocketAddrV4,
}

/// What the sync core is set up with.
#[derive(Debug)]
pub struct SyncSettings {
    /// The K2K session (keys, cluster id, serial, epoch, timers).
    pub session: SessionConfig,
    /// Main link first, then the backup.
    pub links: Vec<SyncLink>,
    /// Play a later protocol version: offer it and add a record type of
    /// that version to every datagram (interoperability tests of a rolling
    /// upgrade; `None` in production).
    pub emulate_version: Option<u8>,
    /// A link whose keepalives stop for this long is not used (the HA
    /// dead time: a blackholed link is left as fast as the election
    /// notices it).
    pub link_dead_ms: u64,
}

/// Counters and state the control thread reads.
#[derive(Debug)]
pub struct SyncShared {
    /// Records handed to the session.
    pub records_queued: AtomicU64,
    /// Records the session could not take (peer down or queue full).
    pub records_refused: AtomicU64,
    /// Datagrams sent.
    pub datagrams_sent: AtomicU64,
    /// Datagrams received (accepted).
    pub datagrams_received: AtomicU64,
    /// Datagrams dropped by the session (forged, replayed, ...), total.
    pub datagrams_dropped: AtomicU64,
    /// Records delivered by the peer and handed to a worker.
    pub installs: AtomicU64,
    /// Records lost on the way to a worker (none: a full install queue
    /// makes the sync core wait, see `install_waits`).
    pub installs_dropped: AtomicU64,
    /// Bulk syncs sent.
    pub bulks_sent: AtomicU64,
    /// Bulk syncs received.
    pub bulks_received: AtomicU64,
    /// The peer is up (an authenticated Hello was seen).
    pub peer_up: AtomicBool,
    /// This node received a complete bulk since the peer came up: its
    /// table is complete.
    pub synchronized: AtomicBool,
    /// Link in use: index into the links, or u8::MAX for none.
    pub link_in_use: AtomicU8,
    /// Set by the control thread when this member's table is stale (it
    /// yielded after both were active): the sync core asks the peer for a
    /// bulk and the table counts as incomplete until it arrives.
    pub resync_wanted: AtomicBool,
    /// The peer's serial (from its authenticated Hello), empty until then.
    pub peer_serial: Mutex<String>,
    /// The K2K protocol version both speak (0 until the peer answered).
    pub version: AtomicU8,
    /// A text snapshot of the session's counters (drops per reason,
    /// retransmissions, ...), refreshed every second.
    pub details: Mutex<Vec<(String, u64)>>,
    /// Replication lag (queue to ack) percentiles in ms: p50, p90, p99, max.
    pub lag_ms: [AtomicU64; 4],
    /// Lag samples taken.
    pub lag_samples: AtomicU64,
    /// What happened, for the event log (drained by the control thread).
    pub events: ArrayQueue<SyncEvent>,
    /// Events not kept because nobody drained them.
    pub events_dropped: AtomicU64,
    /// Delta records the workers lost to full rings (each loss started a
    /// bulk).
    pub deltas_lost: AtomicU64,
    /// Bulks received whole.
    pub bulks_complete: AtomicU64,
    /// Bulks received with fewer records than announced.
    pub bulks_incomplete: AtomicU64,
    /// Bulks abandoned before their end (peer restarted, role changed).
    pub bulks_abandoned: AtomicU64,
    /// Times a worker's install queue was full and the sync core waited
    /// (backpressure: nothing is lost, the peer retransmits).
    pub install_waits: AtomicU64,
}

impl Default for SyncShared {
    fn default() -> Self {
        SyncShared {
            records_queued: AtomicU64::new(0),
            records_refused: AtomicU64::new(0),
            datagrams_sent: AtomicU64::new(0),
            datagrams_received: AtomicU64::new(0),
            datagrams_dropped: AtomicU64::new(0),
            installs: AtomicU64::new(0),
            installs_dropped: AtomicU64::new(0),
            bulks_sent: AtomicU64::new(0),
            bulks_received: AtomicU64::new(0),
            peer_up: AtomicBool::new(false),
            synchronized: AtomicBool::new(false),
            link_in_use: AtomicU8::new(u8::MAX),
            resync_wanted: AtomicBool::new(false),
            peer_serial: Mutex::new(String::new()),
            version: AtomicU8::new(0),
            details: Mutex::new(Vec::new()),
            lag_ms: Default::default(),
            lag_samples: AtomicU64::new(0),
            events: ArrayQueue::new(EVENTS),
            events_dropped: AtomicU64::new(0),
            deltas_lost: AtomicU64::new(0),
            bulks_complete: AtomicU64::new(0),
            bulks_incomplete: AtomicU64::new(0),
            bulks_abandoned: AtomicU64::new(0),
            install_waits: AtomicU64::new(0),
        }
    }
}

impl SyncShared {
    fn event(&self, e: SyncEvent) {
        if self.events.push(e).is_err() {
            self.events_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The next event for the log.
    pub fn next_event(&self) -> Option<SyncEvent> {
        self.events.pop()
    }
}

/// What the sync core hands a worker, in the order of the peer's stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Install {
    /// A replicated record for this worker's shard.
    Record(Delta),
    /// The peer began a bulk: entries confirmed from now on are current.
    BulkStart,
    /// The peer's bulk ended. `complete`: every record it announced
    /// arrived, so larval entries it did not confirm are gone on the peer
    /// and are swept.
    BulkEnd {
        /// Every announced record arrived.
        complete: bool,
    },
}

/// The bulk-dump handshake between the sync core and one worker, and
/// the worker's acknowledgement of bulk ends.
#[derive(Debug, Default)]
pub struct DumpControl {
    /// The dump generation the sync core asks for (0: none). A new value
    /// restarts the worker's walk of its table.
    pub requested: AtomicU64,
    /// The generation whose dump the worker finished.
    pub done: AtomicU64,
    /// The worker's delta-ring position when it finished that dump
    /// (stored before `done`).
    pub end: AtomicU64,
    /// Bulk ends ([`Install::BulkEnd`]) the worker has applied.
    pub ends_applied: AtomicU64,
}

/// A worker's side of the sync: the install queue the sync core fills
/// and the bulk-dump handshake.
#[derive(Debug)]
pub struct WorkerSync {
    /// Replicated records and bulk markers for this worker's shard.
    pub installs: Arc<ArrayQueue<Install>>,
    /// Dump requests and acknowledgements.
    pub dump: Arc<DumpControl>,
}

/// The sync core's handle on one worker.
struct WorkerLink {
    deltas: DeltaConsumer,
    installs: Arc<ArrayQueue<Install>>,
    dump: Arc<DumpControl>,
    /// Ring losses already acted on.
    losses_seen: usize,
}

/// Capacity of a worker's install queue.
pub const INSTALL_QUEUE: usize = 65_536;

/// Something the sync core wants in the event log (the control thread
/// drains [`SyncShared::events`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncEvent {
    /// The peer answered: the stream is up.
    PeerUp {
        /// Its serial.
        serial: String,
        /// The protocol version both speak.
        version: u8,
    },
    /// The peer restarted: what it had of ours is gone.
    PeerRestarted,
    /// A bulk (the whole table) is being sent to the peer.
    BulkStarted {
        /// Why.
        reason: &'static str,
    },
    /// The bulk was sent whole.
    BulkSent {
        /// Connections it carried.
        connections: u64,
        /// How long it took.
        ms: u64,
    },
    /// A bulk in progress was abandoned (the peer restarted, or this
    /// member stopped being active); it starts again when it can.
    BulkAbandoned {
        /// Why.
        why: &'static str,
    },
    /// A worker's delta ring overflowed: records were lost.
    DeltasLost {
        /// The worker.
        worker: usize,
        /// Records lost since the last report.
        records: u64,
    },
    /// The peer's bulk arrived whole: our table is complete.
    BulkReceived {
        /// Connections it carried.
        connections: u64,
    },
    /// The peer's bulk ended with fewer records than it announced.
    BulkIncomplete {
        /// Announced.
        sent: u64,
        /// Arrived.
        received: u64,
    },
    /// The peer's stream skipped datagrams it could no longer resend.
    RecordsLost {
        /// Datagrams lost.
        datagrams: u64,
    },
    /// Our table stopped being complete.
    Unsynchronized {
        /// Why.
        why: &'static str,
    },
    /// The peer's state sync went silent on every link.
    PeerSilent {
        /// For how long, at least.
        ms: u64,
    },
    /// The peer's state sync is heard again.
    PeerBack {
        /// After how long a silence.
        ms: u64,
    },
    /// The peer speaks no protocol version we speak.
    VersionMismatch {
        /// Its lowest version.
        peer_min: u8,
        /// Its highest version.
        peer_max: u8,
    },
}

impl std::fmt::Display for SyncEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SyncEvent::PeerUp { serial, version } => write!(
                f,
                "state sync with peer {serial} is up (K2K version {version})"
            ),
            SyncEvent::PeerRestarted => {
                f.write_str("the peer restarted: it gets the whole table again")
            }
            SyncEvent::BulkStarted { reason } => write!(
                f,
                "sending the whole connection table to the peer ({reason})"
            ),
            SyncEvent::BulkSent { connections, ms } => write!(
                f,
                "whole connection table sent to the peer: {connections} connections in {ms} ms"
            ),
            SyncEvent::BulkAbandoned { why } => {
                write!(f, "sending the whole table abandoned: {why}")
            }
            SyncEvent::DeltasLost { worker, records } => write!(
                f,
                "worker {worker}: {records} state changes lost (its delta ring was full); the peer gets the whole table again"
            ),
            SyncEvent::BulkReceived { connections } => write!(
                f,
                "whole connection table received from the peer ({connections} connections): our table is complete"
            ),
            SyncEvent::BulkIncomplete { sent, received } => write!(
                f,
                "the peer's table arrived incomplete ({received} of {sent} connections): asking for it again"
            ),
            SyncEvent::RecordsLost { datagrams } => write!(
                f,
                "{datagrams} K2K datagrams of the peer were lost beyond repair: the peer sends the whole table again"
            ),
            SyncEvent::Unsynchronized { why } => {
                write!(f, "our connection table is not synchronized: {why}")
            }
            SyncEvent::PeerSilent { ms } => write!(
                f,
                "the peer's state sync is silent on every HA link for {ms} ms: peer lost for the sync"
            ),
            SyncEvent::PeerBack { ms } => write!(
                f,
                "the peer's state sync is heard again after {ms} ms of silence"
            ),
            SyncEvent::VersionMismatch { peer_min, peer_max } => write!(
                f,
                "the peer speaks K2K versions {peer_min}..={peer_max}, none of ours: no state sync until one member is upgraded"
            ),
        }
    }
}

fn reason_text(r: BulkReason) -> &'static str {
    match r {
        BulkReason::PeerUp => "the peer came up",
        BulkReason::PeerRestarted => "the peer restarted",
        BulkReason::PeerRequested => "the peer asked for it",
        BulkReason::StreamLost => "the peer lost records beyond repair",
    }
}

/// Events kept for the control thread at most (more are counted).
const EVENTS: usize = 256;

/// The running sync core.
#[derive(Debug)]
pub struct SyncCore {
    shared: Arc<SyncShared>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Why the sync core could not start.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// A socket could not be opened.
    #[error("HA link {link}: cannot bind UDP {addr}: {source}. Check that the HA interface has this address and that no other process uses the port")]
    Bind {
        /// Link name.
        link: String,
        /// Address.
        addr: SocketAddrV4,
        /// The OS error.
        source: std::io::Error,
    },
    /// The session configuration is unusable.
    #[error("K2K session: {0:?}")]
    Session(crate::k2k::ConfigError),
    /// The thread could not start.
    #[error("cannot start the sync thread: {0}")]
    Thread(std::io::Error),
}

impl SyncCore {
    /// Starts the sync core. `consumers[i]` is worker `i`'s delta ring;
    /// returns, per worker, what the worker keeps.
    pub fn start(
        settings: SyncSettings,
        consumers: Vec<DeltaConsumer>,
        role: Arc<AtomicU8>,
        epoch: Instant,
    ) -> Result<(SyncCore, Vec<WorkerSync>), SyncError> {
        let mut sockets = Vec::new();
        for l in &settings.links {
            let s = UdpSocket::bind(l.local)
                .and_then(|s| s.set_nonblocking(true).map(|()| s))
                .map_err(|source| SyncError::Bind {
                    link: l.name.clone(),
                    addr: l.local,
                    source,
                })?;
            sockets.push(s);
        }
        let link_dead_ms = settings.link_dead_ms.max(1);
        let n_links = settings.links.len();
        let mut session = Session::new(settings.session).map_err(SyncError::Session)?;
        if settings.emulate_version.is_some() {
            // A record type version 1 does not know: a v1 peer skips it.
            session.set_extension(0x40, vec![0xee; 24]);
        }
        let mut links = Vec::new();
        let mut handles = Vec::new();
        for deltas in consumers {
            let installs = Arc::new(ArrayQueue::new(INSTALL_QUEUE));
            let dump = Arc::new(DumpControl::default());
            handles.push(WorkerSync {
                installs: installs.clone(),
                dump: dump.clone(),
            });
            links.push(WorkerLink {
                losses_seen: deltas.losses(),
                deltas,
                installs,
                dump,
            });
        }
        let shared = Arc::new(SyncShared::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut core = Core {
            session,
            links: settings.links,
            sockets,
            workers: links,
            role,
            epoch,
            shared: shared.clone(),
            bulk: None,
            bulk_wanted: None,
            dump_gen: 0,
            parked: None,
            rx_bulk: None,
            ends_sent: 0,
            complete_pending: false,
            lag: Histogram::new_with_bounds(1, 3_600_000, 2).expect("valid histogram bounds"),
            link_up: Vec::new(),
            next_link_check: 0,
            link_heard: vec![None; n_links],
            peer_hears: 0,
            peer_hears_at: None,
            next_keepalive: 0,
            link_dead_ms,
            silent_since: None,
            next_publish: 0,
            last_role: None,
        };
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("tandem-sync".into())
            .spawn(move || core.run(&stop2))
            .map_err(SyncError::Thread)?;
        Ok((
            SyncCore {
                shared,
                stop,
                thread: Some(thread),
            },
            handles,
        ))
    }

    /// What the control thread shows.
    pub fn shared(&self) -> &SyncShared {
        &self.shared
    }

    /// Asks the peer for a bulk resync (our table is stale).
    pub fn request_resync(&self) {
        self.shared.synchronized.store(false, Ordering::Relaxed);
        self.shared.resync_wanted.store(true, Ordering::Release);
    }
}

impl Drop for SyncCore {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A bulk being sent: every worker dumps its table (generation `gen`)
/// into its delta ring while the ordinary deltas keep flowing; the bulk
/// ends once the sync core has taken every worker's ring past the end of
/// its dump (a snapshot plus the changes since, never "every ring empty
/// at once").
struct BulkTx {
    gen: u64,
    started_ms: u64,
}

/// Where a record from the peer goes.
enum Target {
    Worker(usize),
    All,
}

/// A bulk being received: its id and the connections it carried so far.
struct RxBulk {
    id: u32,
    creates: u64,
}

struct Core {
    session: Session,
    links: Vec<SyncLink>,
    sockets: Vec<UdpSocket>,
    workers: Vec<WorkerLink>,
    role: Arc<AtomicU8>,
    epoch: Instant,
    shared: Arc<SyncShared>,
    bulk: Option<BulkTx>,
    /// A bulk to send as soon as the current one (if any) ends, and why.
    bulk_wanted: Option<&'static str>,
    dump_gen: u64,
    /// A record waiting for room in an install queue (backpressure).
    parked: Option<(Target, Install)>,
    rx_bulk: Option<RxBulk>,
    /// Bulk ends handed to the workers.
    ends_sent: u64,
    /// A complete bulk was received: synchronized once every worker has
    /// applied it.
    complete_pending: bool,
    lag: Histogram<u64>,
    /// Carrier of each link.
    link_up: Vec<bool>,
    next_link_check: u64,
    /// When an authentic datagram of the peer last came in on each link.
    link_heard: Vec<Option<u64>>,
    /// The links on which the peer hears us (its last keepalive), and when
    /// it said so.
    peer_hears: u8,
    peer_hears_at: Option<u64>,
    next_keepalive: u64,
    link_dead_ms: u64,
    /// The peer's stream went silent (all links) at this time.
    silent_since: Option<u64>,
    next_publish: u64,
    last_role: Option<Role>,
}

impl Core {
    fn active(&self) -> bool {
        Role::from_u8(self.role.load(Ordering::Acquire)) == Role::Active
    }

    fn unsynchronized(&self, why: &'static str) {
        if self.shared.synchronized.swap(false, Ordering::AcqRel) {
            self.shared.event(SyncEvent::Unsynchronized { why });
        }
    }

    /// A member that becomes active owes its peer a complete table; one
    /// that becomes passive stops any bulk and waits for the new active's.
    fn follow_role(&mut self) {
        let role = Role::from_u8(self.role.load(Ordering::Acquire));
        if self.last_role == Some(role) {
            return;
        }
        let first = self.last_role.is_none();
        self.last_role = Some(role);
        match role {
            Role::Active => {
                self.complete_pending = false;
                if !first {
                    self.bulk_wanted = Some("this member became active");
                }
            }
            Role::Passive => {
                self.abandon_bulk("this member became passive");
                self.bulk_wanted = None;
                if !first {
                    self.unsynchronized(
                        "this member became passive: waiting for the new active's table",
                    );
                }
            }
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn run(&mut self, stop: &AtomicBool) {
        let mut buf = vec![0u8; 65_536];
        let mut idle = 0u32;
        while !stop.load(Ordering::Relaxed) {
            let now = self.now();
            let mut work = 0;
            work += self.check_links(now);
            self.follow_role();
            if self.shared.resync_wanted.swap(false, Ordering::AcqRel) {
                self.unsynchronized(
                    "this member's table is stale (it yielded after both were active)",
                );
                let _ = self.session.request_bulk(now);
            }
            work += self.deliver(now);
            if self.parked.is_none() {
                work += self.receive(now, &mut buf);
            } else {
                self.shared.install_waits.fetch_add(1, Ordering::Relaxed);
            }
            self.check_losses();
            work += self.drain_workers(now);
            self.bulk_progress(now);
            self.session.handle_timeout(now);
            self.events(now);
            self.check_complete();
            self.watch_silence(now);
            work += self.transmit(now, &mut buf);
            self.publish(now);
            // Adaptive: spin briefly while busy, then sleep up to 1 ms (the
            // session's timers are in milliseconds).
            if work > 0 {
                idle = 0;
            } else {
                idle = idle.saturating_add(1);
                let us = if idle < 16 { 50 } else { 1000 };
                std::thread::sleep(Duration::from_micros(us));
            }
        }
    }

    /// Re-reads the HA links' carriers every 100 ms; the first link up is
    /// used (main, else backup).
    fn check_links(&mut self, now: u64) -> usize {
        if now < self.next_link_check {
            return 0;
        }
        self.next_link_check = now + 100;
        self.link_up = self
            .links
            .iter()
            .map(|l| kernel_carrier(&l.interface))
            .collect();
        0
    }

    fn heard_recently(&self, at: Option<u64>, now: u64) -> bool {
        at.is_some_and(|t| now.saturating_sub(t) <= self.link_dead_ms)
    }

    /// The links on which we hear the peer (bit i: link i).
    fn heard_mask(&self, now: u64) -> u8 {
        self.link_heard
            .iter()
            .enumerate()
            .filter(|(_, &t)| self.heard_recently(t, now))
            .fold(0u8, |m, (i, _)| m | 1 << i)
    }

    /// The first link (main, else backup) that carries both ways: we hear
    /// the peer on it and the peer says it hears us on it, both within the
    /// dead time. A link with carrier and no path (blackholed) is left.
    fn usable_link(&self, now: u64) -> Option<usize> {
        let peer_hears = if self.heard_recently(self.peer_hears_at, now) {
            self.peer_hears
        } else {
            0
        };
        (0..self.links.len()).find(|&i| {
            self.link_up.get(i).copied().unwrap_or(false)
                && self.heard_recently(self.link_heard[i], now)
                && peer_hears & (1 << i) != 0
        })
    }

    /// A keepalive on every link with carrier every few milliseconds (a
    /// fifth of the dead time), telling the peer where we hear it.
    fn keepalives(&mut self, now: u64, buf: &mut [u8]) -> usize {
        if now < self.next_keepalive {
            return 0;
        }
        self.next_keepalive = now + (self.link_dead_ms / 5).max(1);
        let heard = self.heard_mask(now);
        let mut n = 0;
        for i in 0..self.links.len() {
            if !self.link_up.get(i).copied().unwrap_or(false) {
                continue;
            }
            let Some(len) = self.session.poll_keepalive(buf, i as u8, heard) else {
                return n;
            };
            if self.sockets[i]
                .send_to(&buf[..len], self.links[i].peer)
                .is_ok()
            {
                self.shared.datagrams_sent.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
        }
        n
    }

    /// The peer's stream is silent on every link for ten dead times (at
    /// least 250 ms): the peer is down for the sync, a passive's table
    /// stops being complete, a bulk to it stops. When it is heard again,
    /// a passive asks for the whole table.
    fn watch_silence(&mut self, now: u64) {
        let Some(last) = self.session.last_heard_ms() else {
            return;
        };
        let limit = (self.link_dead_ms * 10).max(250);
        let silent = now.saturating_sub(last) > limit;
        match (silent, self.silent_since) {
            (true, None) => {
                self.silent_since = Some(last);
                self.shared.peer_up.store(false, Ordering::Relaxed);
                self.shared.event(SyncEvent::PeerSilent { ms: limit });
                self.abandon_bulk("the peer went silent");
                if self.active() {
                    // It gets the whole table when it is back.
                    self.bulk_wanted = Some("the peer's state sync came back after a silence");
                } else {
                    self.rx_bulk = None;
                    self.complete_pending = false;
                    self.unsynchronized("the peer's state sync went silent");
                }
            }
            (false, Some(since)) => {
                self.silent_since = None;
                self.shared.peer_up.store(true, Ordering::Relaxed);
                self.shared.event(SyncEvent::PeerBack {
                    ms: now.saturating_sub(since),
                });
                if !self.active() {
                    let _ = self.session.request_bulk(now);
                }
            }
            _ => {}
        }
    }

    fn receive(&mut self, now: u64, buf: &mut [u8]) -> usize {
        let mut n = 0;
        for i in 0..self.sockets.len() {
            for _ in 0..256 {
                let Ok((len, from)) = self.sockets[i].recv_from(buf) else {
                    break;
                };
                // Only the configured peer's address speaks on a link (the
                // session then authenticates every datagram).
                if from.ip() != std::net::IpAddr::V4(*self.links[i].peer.ip()) {
                    self.shared
                        .datagrams_dropped
                        .fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                n += 1;
                match self.session.handle_datagram(now, &buf[..len]) {
                    Ok(()) => {
                        self.shared
                            .datagrams_received
                            .fetch_add(1, Ordering::Relaxed);
                        self.link_heard[i] = Some(now);
                        if let Some((_, heard)) = self.session.take_keepalive() {
                            self.peer_hears = heard;
                            self.peer_hears_at = Some(now);
                        }
                    }
                    Err(_) => {
                        self.shared
                            .datagrams_dropped
                            .fetch_add(1, Ordering::Relaxed);
                    }
                }
                self.deliver(now);
                if self.parked.is_some() {
                    // An install queue is full: read no more until the
                    // workers catch up (the peer retransmits what the
                    // socket drops meanwhile).
                    return n;
                }
            }
        }
        n
    }

    /// Hands the records the peer delivered to the workers that own them,
    /// in stream order, and the bulk markers to every worker. A full
    /// install queue parks the record and stops (nothing is dropped).
    fn deliver(&mut self, now: u64) -> usize {
        let mut n = 0;
        loop {
            let (target, item) = match self.parked.take() {
                Some(p) => p,
                None => {
                    let Some(r) = self.session.poll_record() else {
                        break;
                    };
                    match self.route(now, r) {
                        Some(x) => x,
                        None => continue,
                    }
                }
            };
            if let Some(back) = self.hand(&target, item) {
                self.parked = Some((target, back));
                break;
            }
            n += 1;
        }
        n
    }

    /// Where a record goes and what it becomes; bulk bookkeeping.
    fn route(&mut self, now: u64, r: Record) -> Option<(Target, Install)> {
        match r {
            Record::BulkStart { id } => {
                self.rx_bulk = Some(RxBulk { id, creates: 0 });
                self.complete_pending = false;
                if !self.active() {
                    self.unsynchronized("the peer is sending its whole table");
                }
                Some((Target::All, Install::BulkStart))
            }
            Record::BulkEnd { id, count } => {
                self.shared.bulks_received.fetch_add(1, Ordering::Relaxed);
                let received = match self.rx_bulk.take() {
                    Some(b) if b.id == id => b.creates,
                    _ => 0,
                };
                let complete = received == count;
                if complete {
                    self.shared.bulks_complete.fetch_add(1, Ordering::Relaxed);
                    self.shared.event(SyncEvent::BulkReceived {
                        connections: received,
                    });
                    self.complete_pending = true;
                } else {
                    self.shared.bulks_incomplete.fetch_add(1, Ordering::Relaxed);
                    self.shared.event(SyncEvent::BulkIncomplete {
                        sent: count,
                        received,
                    });
                    self.unsynchronized("the peer's table arrived incomplete");
                    let _ = self.session.request_bulk(now);
                }
                self.ends_sent += 1;
                Some((Target::All, Install::BulkEnd { complete }))
            }
            r => {
                let d = r.to_delta(now)?;
                if let (Some(b), DeltaKind::Create(_)) = (&mut self.rx_bulk, &d.kind) {
                    b.creates += 1;
                }
                let w = d.key().shard(self.workers.len().max(1));
                Some((Target::Worker(w), Install::Record(d)))
            }
        }
    }

    /// Pushes `item` to its worker(s), or gives it back when a queue is
    /// full (a marker goes to every worker or to none).
    fn hand(&self, target: &Target, item: Install) -> Option<Install> {
        match *target {
            Target::Worker(w) => {
                if let Err(back) = self.workers[w].installs.push(item) {
                    return Some(back);
                }
                self.shared.installs.fetch_add(1, Ordering::Relaxed);
            }
            Target::All => {
                if self.workers.iter().any(|w| w.installs.is_full()) {
                    return Some(item);
                }
                for w in &self.workers {
                    // Only this thread pushes: the room checked above stays.
                    let _ = w.installs.push(item);
                }
            }
        }
        None
    }

    /// A complete bulk counts once every worker has applied its end.
    fn check_complete(&mut self) {
        if !self.complete_pending {
            return;
        }
        let applied = self
            .workers
            .iter()
            .all(|w| w.dump.ends_applied.load(Ordering::Acquire) >= self.ends_sent);
        if applied {
            self.complete_pending = false;
            self.shared.synchronized.store(true, Ordering::Release);
        }
    }

    /// A worker whose delta ring overflowed lost records: the peer's copy
    /// is incomplete, so it gets the whole table again (the passive sees
    /// the bulk start and says it is not synchronized until it ends).
    fn check_losses(&mut self) {
        let active = self.active();
        for (i, w) in self.workers.iter_mut().enumerate() {
            let losses = w.deltas.losses();
            if losses != w.losses_seen {
                let n = (losses - w.losses_seen) as u64;
                w.losses_seen = losses;
                self.shared.deltas_lost.fetch_add(n, Ordering::Relaxed);
                if active && self.shared.peer_up.load(Ordering::Relaxed) {
                    self.shared.event(SyncEvent::DeltasLost {
                        worker: i,
                        records: n,
                    });
                    self.bulk_wanted = Some("state changes were lost in a full delta ring");
                }
            }
        }
    }

    /// Moves the workers' deltas into the session (only an active member
    /// has anything to say; a passive one drains and drops).
    fn drain_workers(&mut self, now: u64) -> usize {
        let active = self.active();
        let mut n = 0;
        for w in &mut self.workers {
            let session = &mut self.session;
            let shared = &self.shared;
            if !active {
                // A passive member has nothing to tell: drop what is there.
                n += w.deltas.drain(usize::MAX, |_| {});
                continue;
            }
            // Never more than the session can take: what stays in the ring
            // waits for the next round.
            let budget = session.queue_space();
            if budget == 0 {
                break;
            }
            n += w.deltas.drain(budget, |d| {
                match session.queue(now, &Record::from_delta(&d)) {
                    Ok(()) => shared.records_queued.fetch_add(1, Ordering::Relaxed),
                    Err(_) => shared.records_refused.fetch_add(1, Ordering::Relaxed),
                };
            });
        }
        n
    }

    /// Ends the bulk in progress once every worker's dump has gone into
    /// the session, and starts the one wanted next.
    fn bulk_progress(&mut self, now: u64) {
        if let Some(b) = &self.bulk {
            let done = self.workers.iter().all(|w| {
                w.dump.done.load(Ordering::Acquire) == b.gen
                    && w.deltas.position() as u64 >= w.dump.end.load(Ordering::Acquire)
            });
            if done {
                match self.session.end_bulk(now) {
                    Ok(count) => {
                        self.shared.bulks_sent.fetch_add(1, Ordering::Relaxed);
                        self.shared.event(SyncEvent::BulkSent {
                            connections: count,
                            ms: now.saturating_sub(b.started_ms),
                        });
                        self.bulk = None;
                    }
                    // The queue is full: try again next round.
                    Err(QueueError::Full) => {}
                    // The session reset the peer (its bulk is gone).
                    Err(_) => self.abandon_bulk("the peer went away"),
                }
            }
        }
        if self.bulk.is_some() || !self.active() || !self.session.is_established() {
            return;
        }
        let Some(reason) = self.bulk_wanted else {
            return;
        };
        if self.session.start_bulk(now).is_ok() {
            self.bulk_wanted = None;
            self.dump_gen += 1;
            for w in &self.workers {
                w.dump.requested.store(self.dump_gen, Ordering::Release);
            }
            self.bulk = Some(BulkTx {
                gen: self.dump_gen,
                started_ms: now,
            });
            self.shared.event(SyncEvent::BulkStarted { reason });
        }
    }

    fn abandon_bulk(&mut self, why: &'static str) {
        if self.bulk.take().is_some() {
            self.shared.bulks_abandoned.fetch_add(1, Ordering::Relaxed);
            self.shared.event(SyncEvent::BulkAbandoned { why });
        }
        for w in &self.workers {
            w.dump.requested.store(0, Ordering::Release);
        }
    }

    fn events(&mut self, _now: u64) {
        while let Some(ev) = self.session.poll_event() {
            match ev {
                Event::PeerUp { version, .. } => {
                    self.shared.peer_up.store(true, Ordering::Relaxed);
                    let mut serial = String::new();
                    if let Some(p) = self.session.peer() {
                        serial = p
                            .serial
                            .iter()
                            .filter(|&&b| b != 0)
                            .map(|&b| char::from(b))
                            .collect();
                        if let Ok(mut g) = self.shared.peer_serial.lock() {
                            g.clone_from(&serial);
                        }
                    }
                    self.shared.version.store(version, Ordering::Relaxed);
                    self.shared.event(SyncEvent::PeerUp { serial, version });
                    self.peer_reset("the peer came up: waiting for its table");
                }
                Event::PeerRestarted { version, .. } => {
                    self.shared.version.store(version, Ordering::Relaxed);
                    self.shared.event(SyncEvent::PeerRestarted);
                    self.peer_reset("the peer restarted: waiting for its table");
                }
                Event::BulkNeeded(reason) => {
                    // Queued, never dropped: a request during a bulk gets a
                    // bulk after it (the session forgets the running one
                    // when the peer restarts, see peer_reset).
                    self.bulk_wanted = Some(reason_text(reason));
                }
                Event::BulkReceived { .. } => {}
                Event::RecordsLost { datagrams } => {
                    self.shared.event(SyncEvent::RecordsLost { datagrams });
                    self.rx_bulk = None;
                    self.complete_pending = false;
                    self.unsynchronized("records of the peer were lost beyond repair");
                }
                Event::VersionMismatch { peer_min, peer_max } => {
                    self.shared
                        .event(SyncEvent::VersionMismatch { peer_min, peer_max });
                }
            }
        }
    }

    /// The peer is a new instance: what was being sent to the old one is
    /// gone (the session dropped it), what we received from it may be
    /// incomplete.
    fn peer_reset(&mut self, why: &'static str) {
        self.abandon_bulk("the peer restarted");
        self.rx_bulk = None;
        self.complete_pending = false;
        if !self.active() {
            self.unsynchronized(why);
        } else {
            self.shared.synchronized.store(false, Ordering::Release);
        }
    }

    /// Sends what the session has on the usable link; while no link is
    /// known to carry both ways (start-up, a fault), on every link with
    /// carrier (the receiver drops the duplicates).
    fn transmit(&mut self, now: u64, buf: &mut [u8]) -> usize {
        let usable = self.usable_link(now);
        self.shared
            .link_in_use
            .store(usable.map_or(u8::MAX, |i| i as u8), Ordering::Relaxed);
        let targets: Vec<usize> = match usable {
            Some(i) => vec![i],
            None => (0..self.links.len())
                .filter(|&i| self.link_up.get(i).copied().unwrap_or(false))
                .collect(),
        };
        if targets.is_empty() {
            return 0;
        }
        let mut n = 0;
        while let Some(len) = self.session.poll_transmit(now, buf) {
            for &link in &targets {
                if self.sockets[link]
                    .send_to(&buf[..len], self.links[link].peer)
                    .is_ok()
                {
                    self.shared.datagrams_sent.fetch_add(1, Ordering::Relaxed);
                }
            }
            n += 1;
            if n >= 512 {
                break;
            }
        }
        n += self.keepalives(now, buf);
        while let Some(s) = self.session.poll_lag_sample() {
            let _ = self
                .lag
                .record_n(s.lag_ms.max(1), u64::from(s.records.max(1)));
            self.shared.lag_samples.fetch_add(1, Ordering::Relaxed);
        }
        n
    }

    fn publish(&mut self, now: u64) {
        if now < self.next_publish {
            return;
        }
        self.next_publish = now + 1000;
        for (slot, q) in self.shared.lag_ms.iter().zip([50.0, 90.0, 99.0, 100.0]) {
            slot.store(self.lag.value_at_quantile(q / 100.0), Ordering::Relaxed);
        }
        let mut details = session_details(&self.session);
        let sh = &self.shared;
        for (k, v) in [
            ("deltas_lost", &sh.deltas_lost),
            ("bulks_complete", &sh.bulks_complete),
            ("bulks_incomplete", &sh.bulks_incomplete),
            ("bulks_abandoned", &sh.bulks_abandoned),
            ("install_waits", &sh.install_waits),
            ("events_dropped", &sh.events_dropped),
        ] {
            details.push((k.into(), v.load(Ordering::Relaxed)));
        }
        if let Ok(mut d) = self.shared.details.lock() {
            *d = details;
        }
    }
}

/// The session's counters by name, for `tandemctl sync`.
fn session_details(s: &Session) -> Vec<(String, u64)> {
    let c = s.counters();
    let mut out: Vec<(String, u64)> = crate::k2k::DropReason::ALL
        .iter()
        .map(|r| (format!("drop_{}", r.as_str()), c.dropped(*r)))
        .collect();
    for (k, v) in [
        ("records_sent", c.records_sent),
        ("records_acked", c.records_acked),
        ("records_received", c.records_received),
        ("datagrams_sent", c.datagrams_sent),
        ("datagrams_received", c.datagrams_received),
        ("bytes_sent", c.bytes_sent),
        ("retransmits", c.retransmits),
        ("nacks_sent", c.nacks_sent),
        ("nacks_received", c.nacks_received),
        ("lost_datagrams", c.lost_datagrams),
        ("unknown_records", c.unknown_records),
        ("unknown_groups", c.unknown_groups),
        ("bulks_sent", c.bulks_sent),
        ("bulks_received", c.bulks_received),
        ("peer_restarts", c.peer_restarts),
        ("queue_full", c.queue_full),
    ] {
        out.push((k.into(), v));
    }
    out.push(("version".into(), u64::from(s.version())));
    out.push(("epoch".into(), u64::from(s.epoch())));
    out.push(("queued".into(), s.queued() as u64));
    out.push(("in_flight".into(), s.in_flight()));
    out.push(("rto_ms".into(), s.rto_ms()));
    out.push(("srtt_ms".into(), s.srtt_ms().unwrap_or(0)));
    out
}
