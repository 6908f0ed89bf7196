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
use crate::k2k::{BulkReason, Event, Record, Session, SessionConfig};
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
}

/// Counters and state the control thread reads.
#[derive(Debug, Default)]
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
    /// Records lost because a worker's install queue was full.
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
    /// Turns of the sync thread's loop: the control thread's watchdog
    /// takes a counter that stops moving for a stuck or dead sync thread.
    pub loops: AtomicU64,
}

/// A worker's side of the sync: the delta ring the sync core drains, the
/// install queue it fills, and the bulk-dump handshake.
#[derive(Debug)]
pub struct WorkerSync {
    /// Replicated records for this worker's shard.
    pub installs: Arc<ArrayQueue<Delta>>,
    /// Set by the sync core to ask for a bulk dump; the worker clears it
    /// when its whole table is in its delta ring.
    pub bulk_request: Arc<AtomicBool>,
}

/// The sync core's handle on one worker.
struct WorkerLink {
    deltas: DeltaConsumer,
    installs: Arc<ArrayQueue<Delta>>,
    bulk_request: Arc<AtomicBool>,
}

/// Capacity of a worker's install queue.
pub const INSTALL_QUEUE: usize = 65_536;

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
        let mut session = Session::new(settings.session).map_err(SyncError::Session)?;
        if settings.emulate_version.is_some() {
            // A record type version 1 does not know: a v1 peer skips it.
            session.set_extension(0x40, vec![0xee; 24]);
        }
        let mut links = Vec::new();
        let mut handles = Vec::new();
        for deltas in consumers {
            let installs = Arc::new(ArrayQueue::new(INSTALL_QUEUE));
            let bulk_request = Arc::new(AtomicBool::new(false));
            handles.push(WorkerSync {
                installs: installs.clone(),
                bulk_request: bulk_request.clone(),
            });
            links.push(WorkerLink {
                deltas,
                installs,
                bulk_request,
            });
        }
        let shared = Arc::new(SyncShared {
            link_in_use: AtomicU8::new(u8::MAX),
            ..SyncShared::default()
        });
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
            lag: Histogram::new_with_bounds(1, 3_600_000, 2).expect("valid histogram bounds"),
            link_up: Vec::new(),
            next_link_check: 0,
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

/// A bulk dump in progress: waiting for every worker to have pushed its
/// table into its delta ring.
struct BulkInProgress {
    waiting: bool,
}

struct Core {
    session: Session,
    links: Vec<SyncLink>,
    sockets: Vec<UdpSocket>,
    workers: Vec<WorkerLink>,
    role: Arc<AtomicU8>,
    epoch: Instant,
    shared: Arc<SyncShared>,
    bulk: Option<BulkInProgress>,
    lag: Histogram<u64>,
    link_up: Vec<bool>,
    next_link_check: u64,
    next_publish: u64,
    last_role: Option<Role>,
}

impl Core {
    /// A member that becomes active owes its peer a complete table: it
    /// sends a bulk (the events that ask for one may have come while it
    /// was passive and had nothing to say).
    fn follow_role(&mut self, now: u64) {
        let role = Role::from_u8(self.role.load(Ordering::Acquire));
        if self.last_role != Some(role) {
            self.last_role = Some(role);
            if role == Role::Active && self.shared.peer_up.load(Ordering::Relaxed) {
                self.start_bulk(now, BulkReason::PeerRequested);
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
            self.shared.loops.fetch_add(1, Ordering::Relaxed);
            let now = self.now();
            let mut work = 0;
            work += self.check_links(now);
            self.follow_role(now);
            if self.shared.resync_wanted.swap(false, Ordering::AcqRel) {
                self.shared.synchronized.store(false, Ordering::Relaxed);
                let _ = self.session.request_bulk(now);
            }
            work += self.receive(now, &mut buf);
            work += self.drain_workers(now);
            self.session.handle_timeout(now);
            self.events(now);
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
        let in_use = self
            .link_up
            .iter()
            .position(|&u| u)
            .map_or(u8::MAX, |i| i as u8);
        self.shared.link_in_use.store(in_use, Ordering::Relaxed);
        0
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
                    }
                    Err(_) => {
                        self.shared
                            .datagrams_dropped
                            .fetch_add(1, Ordering::Relaxed);
                    }
                }
                self.deliver(now);
            }
        }
        n
    }

    /// Hands delivered connection records to the workers that own them.
    fn deliver(&mut self, now: u64) {
        let shards = self.workers.len().max(1);
        while let Some(r) = self.session.poll_record() {
            let Some(d) = r.to_delta(now) else { continue };
            let key = match &d.kind {
                DeltaKind::Create(s) => s.orig,
                DeltaKind::Update(u) => u.key,
                DeltaKind::Refresh { key, .. } | DeltaKind::Delete { key } => *key,
            };
            let w = &self.workers[key.shard(shards)];
            if w.installs.push(d).is_ok() {
                self.shared.installs.fetch_add(1, Ordering::Relaxed);
            } else {
                self.shared.installs_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Moves the workers' deltas into the session (only an active member
    /// has anything to say; a passive one drains and drops).
    fn drain_workers(&mut self, now: u64) -> usize {
        let active = Role::from_u8(self.role.load(Ordering::Acquire)) == Role::Active;
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
            // waits for the next round (a full ring is the shard's to
            // report, and a bulk repairs it).
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
        if let Some(b) = &self.bulk {
            // Every worker has pushed its table and every ring is drained
            // into the session: the bulk is complete.
            let done = b.waiting
                && self
                    .workers
                    .iter()
                    .all(|w| !w.bulk_request.load(Ordering::Acquire) && w.deltas.is_empty());
            if done {
                let _ = self.session.end_bulk(now);
                self.shared.bulks_sent.fetch_add(1, Ordering::Relaxed);
                self.bulk = None;
            }
        }
        n
    }

    fn events(&mut self, now: u64) {
        while let Some(ev) = self.session.poll_event() {
            match ev {
                Event::PeerUp { .. } => {
                    self.shared.peer_up.store(true, Ordering::Relaxed);
                    if let Some(p) = self.session.peer() {
                        let text: String = p
                            .serial
                            .iter()
                            .filter(|&&b| b != 0)
                            .map(|&b| char::from(b))
                            .collect();
                        if let Ok(mut g) = self.shared.peer_serial.lock() {
                            *g = text;
                        }
                    }
                    self.shared
                        .version
                        .store(self.session.version(), Ordering::Relaxed);
                    self.shared.synchronized.store(false, Ordering::Relaxed);
                    // An active member resyncs a (re)joining peer.
                    self.start_bulk(now, BulkReason::PeerUp);
                }
                Event::PeerRestarted { .. } => {
                    self.shared.synchronized.store(false, Ordering::Relaxed);
                }
                Event::BulkNeeded(reason) => self.start_bulk(now, reason),
                Event::BulkReceived { .. } => {
                    self.shared.bulks_received.fetch_add(1, Ordering::Relaxed);
                    self.shared.synchronized.store(true, Ordering::Relaxed);
                }
                Event::RecordsLost { .. } | Event::VersionMismatch { .. } => {}
            }
        }
    }

    fn start_bulk(&mut self, now: u64, _reason: BulkReason) {
        let active = Role::from_u8(self.role.load(Ordering::Acquire)) == Role::Active;
        if !active || self.bulk.is_some() {
            return;
        }
        if self.session.start_bulk(now).is_ok() {
            for w in &self.workers {
                w.bulk_request.store(true, Ordering::Release);
            }
            self.bulk = Some(BulkInProgress { waiting: true });
        }
    }

    fn transmit(&mut self, now: u64, buf: &mut [u8]) -> usize {
        let Some(link) = self.link_up.iter().position(|&u| u) else {
            return 0;
        };
        let mut n = 0;
        while let Some(len) = self.session.poll_transmit(now, buf) {
            if self.sockets[link]
                .send_to(&buf[..len], self.links[link].peer)
                .is_ok()
            {
                self.shared.datagrams_sent.fetch_add(1, Ordering::Relaxed);
            }
            n += 1;
            if n >= 512 {
                break;
            }
        }
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
        let details = session_details(&self.session);
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
