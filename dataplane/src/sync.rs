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

use crate::conntrack::{BucketMask, Delta, DeltaConsumer, DeltaKind, TableDigest, DIGEST_BUCKETS};
use crate::k2k::wire::DIGEST_PER_RECORD;
use crate::k2k::{BulkReason, Event, Psk, QueueError, Record, Session, SessionConfig};
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
    /// This build speaks the next protocol version
    /// ([`crate::k2k::NEXT_VERSION`]): offer it, and add its record group
    /// (the build's version text) to every datagram; `None` for a build of
    /// [`crate::k2k::VERSION`].
    pub next_version: Option<u8>,
    /// A link whose keepalives stop for this long is not used (the HA
    /// dead time: a blackholed link is left as fast as the election
    /// notices it).
    pub link_dead_ms: u64,
    /// Pin the sync core's thread to this CPU (`dataplane.sync_cpu`).
    pub cpu: Option<usize>,
    /// The member's HA keys: a key change (F8) reaches the session through
    /// it ([`crate::hakeys::KeyRing::generation`], read every turn).
    pub keys: Option<Arc<crate::hakeys::KeyRing>>,
}

/// Counters and state the control thread reads.
#[derive(Debug)]
pub struct SyncShared {
    /// The id of the last whole-table bulk this member sent or received
    /// whole (hainfo's sync id: the same on both members when in step).
    pub sync_id: std::sync::atomic::AtomicU32,
    /// The key ring generation the session follows (a key change is in
    /// force in the sync once this reaches the ring's).
    pub key_generation: AtomicU64,
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
    /// Set by the control thread: run a verify now (`tandemctl sync
    /// verify`).
    pub verify_wanted: AtomicBool,
    /// The id of the last verify finished.
    pub verify_done: AtomicU64,
    /// The last verify's outcome.
    pub last_verify: Mutex<VerifyReport>,
    /// Verifies finished.
    pub verifies: AtomicU64,
    /// Differing buckets found, in all.
    pub verify_differences: AtomicU64,
    /// Repairs started by verifies.
    pub verify_repairs: AtomicU64,
    /// Verifies given up (no answer).
    pub verify_timeouts: AtomicU64,
    /// Turns of the sync thread's loop: the control thread's watchdog
    /// takes a counter that stops moving for a stuck or dead sync thread.
    pub loops: AtomicU64,
}

/// The outcome of a table verify.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Its id.
    pub id: u32,
    /// How long it took.
    pub ms: u64,
    /// Replicated connections here.
    pub ours: u64,
    /// Replicated connections on the peer.
    pub theirs: u64,
    /// Digest buckets that differ.
    pub differing_buckets: u64,
    /// Buckets being repaired (they differed at the previous verify too).
    pub repairing: u64,
}

/// A background verify runs this often on a synchronized passive.
pub const VERIFY_EVERY_MS: u64 = 30_000;
/// A verify without an answer is given up after this long.
const VERIFY_TIMEOUT_MS: u64 = 5_000;

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
            verify_wanted: AtomicBool::new(false),
            verify_done: AtomicU64::new(0),
            last_verify: Mutex::new(VerifyReport::default()),
            verifies: AtomicU64::new(0),
            verify_differences: AtomicU64::new(0),
            verify_repairs: AtomicU64::new(0),
            verify_timeouts: AtomicU64::new(0),
            loops: AtomicU64::new(0),
            key_generation: AtomicU64::new(0),
            sync_id: std::sync::atomic::AtomicU32::new(0),
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
    /// The peer began a bulk of the digest buckets in `mask`: entries
    /// confirmed from now on are current.
    BulkStart {
        /// The buckets the bulk carries.
        mask: BucketMask,
    },
    /// Take the shard's digest here (after everything before it is
    /// applied) for digest job `gen`.
    Digest {
        /// The job.
        gen: u64,
    },
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
#[derive(Debug)]
#[repr(align(128))]
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
    /// The digest buckets the requested dump carries (stored before
    /// `requested`).
    pub mask: Mutex<BucketMask>,
    /// A digest the sync core asks for now (generation; 0: none).
    pub digest_requested: AtomicU64,
    /// Digests taken: (generation, digest, delta-ring position then).
    pub digests: Mutex<Vec<(u64, TableDigest, u64)>>,
}

impl Default for DumpControl {
    fn default() -> Self {
        DumpControl {
            requested: AtomicU64::new(0),
            done: AtomicU64::new(0),
            end: AtomicU64::new(0),
            ends_applied: AtomicU64::new(0),
            mask: Mutex::new(BucketMask::ALL),
            digest_requested: AtomicU64::new(0),
            digests: Mutex::new(Vec::new()),
        }
    }
}

impl DumpControl {
    /// Keeps a digest the worker took.
    pub fn put_digest(&self, gen: u64, digest: TableDigest, position: u64) {
        if let Ok(mut d) = self.digests.lock() {
            // Bounded: a job never collected is dropped with the oldest.
            if d.len() >= 8 {
                d.remove(0);
            }
            d.push((gen, digest, position));
        }
    }
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
        /// Its id (the sync id both members show once it lands).
        id: u32,
        /// Why.
        reason: &'static str,
    },
    /// The bulk was sent whole.
    BulkSent {
        /// Its id.
        id: u32,
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
    /// The peer announces a bulk.
    BulkIncoming {
        /// Its id.
        id: u32,
    },
    /// The peer's bulk arrived whole: our table is complete.
    BulkReceived {
        /// Its id.
        id: u32,
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
    /// A verify found both tables equal.
    Verified {
        /// Replicated connections.
        connections: u64,
    },
    /// A verify found differing buckets.
    VerifyDiffers {
        /// How many buckets differ.
        buckets: u64,
        /// Our replicated connections.
        ours: u64,
        /// The peer's.
        theirs: u64,
        /// Buckets repaired now (they differed at the previous verify too).
        repairing: u64,
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
            SyncEvent::BulkStarted { id, reason } => write!(
                f,
                "sending the whole connection table to the peer ({reason}), bulk {id}"
            ),
            SyncEvent::BulkSent {
                id,
                connections,
                ms,
            } => write!(
                f,
                "whole connection table sent to the peer: {connections} connections in {ms} ms, bulk {id}"
            ),
            SyncEvent::BulkIncoming { id } => {
                write!(f, "the peer announces its whole connection table, bulk {id}")
            }
            SyncEvent::BulkAbandoned { why } => {
                write!(f, "sending the whole table abandoned: {why}")
            }
            SyncEvent::DeltasLost { worker, records } => write!(
                f,
                "worker {worker}: {records} state changes lost (its delta ring was full); the peer gets the whole table again"
            ),
            SyncEvent::BulkReceived { id, connections } => write!(
                f,
                "whole connection table received from the peer ({connections} connections): our table is complete, bulk {id}"
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
            SyncEvent::Verified { connections } => write!(
                f,
                "verify: both members hold the same {connections} connections"
            ),
            SyncEvent::VerifyDiffers {
                buckets,
                ours,
                theirs,
                repairing,
            } => {
                write!(
                    f,
                    "verify: {buckets} of {DIGEST_BUCKETS} digest buckets differ ({ours} connections here, {theirs} on the peer); "
                )?;
                if *repairing > 0 {
                    write!(f, "repairing {repairing} buckets that differed twice")
                } else {
                    f.write_str("checking again in 500 ms before repairing")
                }
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
    #[error("K2K session: {0}")]
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
        let cpu = settings.cpu;
        let keys = settings.keys.clone().map(|k| (k, 0u64));
        let n_links = settings.links.len();
        let mut session = Session::new(settings.session).map_err(SyncError::Session)?;
        if settings.next_version.is_some() {
            // The group version 2 does not know: a v2 peer skips it.
            session.set_extension(
                crate::k2k::BUILD_GROUP,
                crate::build::get().version.as_bytes().to_vec(),
            );
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
            digest_jobs: Vec::new(),
            next_digest_gen: 1,
            hold: None,
            verify: None,
            next_verify_id: 1,
            suspect: BucketMask::NONE,
            next_verify_ms: 0,
            peer_digest: None,
            dump_gen: 0,
            parked: None,
            rx_bulk: None,
            records_polled: 0,
            last_bulk_start: None,
            loss: None,
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
            keys,
        };
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("tandem-sync".into())
            .spawn(move || {
                if let Some(cpu) = cpu {
                    core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
                }
                core.run(&stop2)
            })
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
    id: u32,
}

/// What a digest of the workers is for.
#[derive(Clone, Copy, Debug)]
enum DigestPurpose {
    /// Our verify (we are active): the digest at this point of our stream,
    /// then the VerifyRequest.
    OwnAtDrainPoint { id: u32 },
    /// Our verify (we are passive): our digest at the point of the peer's
    /// stream where its digest ended, to compare with it.
    OwnAtMarker { id: u32 },
    /// The peer's verify: our digest, sent back.
    Answer { id: u32 },
}

/// A digest the workers are computing (generation `gen`).
struct DigestJob {
    gen: u64,
    purpose: DigestPurpose,
    /// Taken at a drain point (active) rather than at a marker in the
    /// install queues (passive).
    drain_point: bool,
}

/// Our own verify of the peer's table against ours.
struct OwnVerify {
    id: u32,
    started_ms: u64,
    /// Ours, when taken before the peer's arrives (active).
    ours: Option<TableDigest>,
    /// Asked by the operator (logged even when nothing differs).
    operator: bool,
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
    /// Position of its BulkStart in the peer's record stream.
    start_at: u64,
}

/// How long a passive waits for the peer's bulk after records were lost
/// before it asks for one itself (the peer starts one when it skips
/// records; this covers a bulk that never comes).
const LOSS_REPAIR_WAIT_MS: u64 = 1_000;

/// Records of the peer lost beyond repair, not yet covered by a complete
/// bulk that started after them.
struct PendingLoss {
    /// Position in the peer's record stream of the hole.
    at: u64,
    /// When the last bulk was asked for (or the loss was seen).
    since_ms: u64,
}

struct Core {
    session: Session,
    /// The key ring and the generation the session has.
    keys: Option<(Arc<crate::hakeys::KeyRing>, u64)>,
    links: Vec<SyncLink>,
    sockets: Vec<UdpSocket>,
    workers: Vec<WorkerLink>,
    role: Arc<AtomicU8>,
    epoch: Instant,
    shared: Arc<SyncShared>,
    bulk: Option<BulkTx>,
    /// A bulk to send as soon as the current one (if any) ends: why, and
    /// the digest buckets it must carry (all of them for a full bulk).
    bulk_wanted: Option<(&'static str, BucketMask)>,
    /// The digest jobs of the workers in progress.
    digest_jobs: Vec<DigestJob>,
    next_digest_gen: u64,
    /// Draining stops at these delta-ring positions (one per worker; None
    /// until the worker reported) while a digest is taken at a point of
    /// the stream.
    hold: Option<Vec<Option<u64>>>,
    /// Our own verify in progress.
    verify: Option<OwnVerify>,
    next_verify_id: u32,
    /// Buckets our last verify found different (repaired if they differ
    /// again at the next one).
    suspect: BucketMask,
    next_verify_ms: u64,
    /// The peer's digest records of the verify `id`, as they arrive.
    peer_digest: Option<(u32, TableDigest, u32)>,
    dump_gen: u64,
    /// A record waiting for room in an install queue (backpressure).
    parked: Option<(Target, Install)>,
    rx_bulk: Option<RxBulk>,
    /// Records polled from the session so far (positions in the stream).
    records_polled: u64,
    /// Position of the last BulkStart polled.
    last_bulk_start: Option<u64>,
    loss: Option<PendingLoss>,
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
        self.forget_verify();
        match role {
            Role::Active => {
                self.complete_pending = false;
                if !first {
                    self.want_bulk("this member became active", BucketMask::ALL);
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

    /// Hands a step of a key change to the session (one atomic load a
    /// turn when nothing changed).
    fn follow_keys(&mut self) {
        let Some((ring, seen)) = &mut self.keys else {
            return;
        };
        if ring.generation() == *seen {
            return;
        }
        let set = ring.get();
        *seen = set.generation;
        let psk = |k: &crate::hakeys::HaKeys| Psk::new(k.k2k_master().as_bytes());
        self.session
            .set_keys(psk(&set.current), set.other.as_deref().map(psk));
        self.shared
            .key_generation
            .store(set.generation, Ordering::Release);
    }

    fn run(&mut self, stop: &AtomicBool) {
        let mut buf = vec![0u8; 65_536];
        let mut idle = 0u32;
        while !stop.load(Ordering::Relaxed) {
            self.shared.loops.fetch_add(1, Ordering::Relaxed);
            let now = self.now();
            let mut work = 0;
            work += self.check_links(now);
            self.follow_keys();
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
            self.digest_progress(now);
            work += self.drain_workers(now);
            self.verify_timer(now);
            self.bulk_progress(now);
            self.session.handle_timeout(now);
            self.events(now);
            self.loss_timer(now);
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
                    self.want_bulk(
                        "the peer's state sync came back after a silence",
                        BucketMask::ALL,
                    );
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
                    self.records_polled += 1;
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
            Record::BulkStart { id, mask } => {
                let start_at = self.records_polled - 1;
                self.last_bulk_start = Some(start_at);
                self.rx_bulk = Some(RxBulk {
                    id,
                    creates: 0,
                    start_at,
                });
                if mask.is_all() {
                    self.shared.event(SyncEvent::BulkIncoming { id });
                }
                self.complete_pending = false;
                if !self.active() {
                    self.unsynchronized(if mask.is_all() {
                        "the peer is sending its whole table"
                    } else {
                        "the peer is repairing part of our table"
                    });
                }
                Some((Target::All, Install::BulkStart { mask }))
            }
            Record::VerifyRequest { id } => {
                // The peer's verify: our digest at this point.
                if self.active() {
                    self.start_digest(DigestPurpose::Answer { id }, true);
                    None
                } else {
                    let gen = self.start_digest(DigestPurpose::Answer { id }, false);
                    Some((Target::All, Install::Digest { gen }))
                }
            }
            Record::VerifyDigest { id, first, buckets } => {
                self.peer_digest_part(now, id, first, &buckets)
            }
            Record::BulkEnd { id, count } => {
                self.shared.bulks_received.fetch_add(1, Ordering::Relaxed);
                let (received, start_at) = match self.rx_bulk.take() {
                    Some(b) if b.id == id => (b.creates, Some(b.start_at)),
                    _ => (0, None),
                };
                let complete = received == count;
                // A bulk repairs a loss only if it started after the hole
                // (a snapshot taken before it misses what was lost).
                let covers = match (&self.loss, start_at) {
                    (None, _) => true,
                    (Some(l), Some(s)) => s >= l.at,
                    (Some(_), None) => false,
                };
                if complete && covers {
                    self.loss = None;
                }
                if complete {
                    self.shared.bulks_complete.fetch_add(1, Ordering::Relaxed);
                    self.shared.event(SyncEvent::BulkReceived {
                        id,
                        connections: received,
                    });
                    self.shared.sync_id.store(id, Ordering::Relaxed);
                    self.complete_pending = covers;
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
                let w = d.key().owner(self.workers.len());
                Some((Target::Worker(w), Install::Record(d)))
            }
        }
    }

    /// Starts a digest of every worker's shard; returns its generation.
    /// At a drain point (active): the workers take it now and draining
    /// stops at their ring positions until it is used; else the caller
    /// sends the marker ([`Install::Digest`]) through the install queues.
    fn start_digest(&mut self, purpose: DigestPurpose, drain_point: bool) -> u64 {
        let gen = self.next_digest_gen;
        self.next_digest_gen += 1;
        if drain_point {
            // One drain point at a time: a second waits for the first.
            if self.hold.is_some() || self.digest_jobs.iter().any(|j| j.drain_point) {
                self.digest_jobs.push(DigestJob {
                    gen,
                    purpose,
                    drain_point,
                });
                return gen;
            }
            self.request_drain_point(gen);
        }
        self.digest_jobs.push(DigestJob {
            gen,
            purpose,
            drain_point,
        });
        gen
    }

    fn request_drain_point(&mut self, gen: u64) {
        self.hold = Some(vec![None; self.workers.len()]);
        for w in &self.workers {
            w.dump.digest_requested.store(gen, Ordering::Release);
        }
    }

    /// Collects the workers' digests; a job whose every worker reported
    /// is used (at a drain point: once the rings are drained exactly up to
    /// where the digests were taken).
    fn digest_progress(&mut self, now: u64) {
        let Some(job) = self.digest_jobs.first().map(|j| (j.gen, j.drain_point)) else {
            return;
        };
        let (gen, drain_point) = job;
        if drain_point && self.hold.is_none() {
            self.request_drain_point(gen);
        }
        let mut parts = Vec::with_capacity(self.workers.len());
        for (i, w) in self.workers.iter().enumerate() {
            let got = w
                .dump
                .digests
                .lock()
                .ok()
                .and_then(|d| d.iter().find(|x| x.0 == gen).map(|x| (x.1.clone(), x.2)));
            match got {
                Some((d, pos)) => {
                    if drain_point {
                        if let Some(h) = &mut self.hold {
                            h[i] = Some(pos);
                        }
                    }
                    parts.push((d, pos));
                }
                None => return,
            }
        }
        if drain_point {
            // Every record made before the digests must be in the stream
            // before what the digest is for, and none made after.
            let drained = self
                .workers
                .iter()
                .zip(&parts)
                .all(|(w, (_, pos))| w.deltas.position() as u64 >= *pos);
            if !drained {
                return;
            }
        }
        let mut digest = TableDigest::default();
        for (d, _) in &parts {
            digest.merge(d);
        }
        for w in &self.workers {
            if let Ok(mut d) = w.dump.digests.lock() {
                d.retain(|x| x.0 != gen);
            }
        }
        let job = self.digest_jobs.remove(0);
        if drain_point {
            self.hold = None;
        }
        self.use_digest(now, job.purpose, digest);
    }

    fn use_digest(&mut self, now: u64, purpose: DigestPurpose, digest: TableDigest) {
        match purpose {
            DigestPurpose::Answer { id } => self.queue_digest(now, id, &digest),
            DigestPurpose::OwnAtDrainPoint { id } => {
                if let Some(v) = self.verify.as_mut().filter(|v| v.id == id) {
                    v.ours = Some(digest);
                    let _ = self.session.queue(now, &Record::VerifyRequest { id });
                }
            }
            DigestPurpose::OwnAtMarker { id } => {
                let theirs = self.peer_digest.take().filter(|p| p.0 == id);
                if let Some((_, theirs, _)) = theirs {
                    self.verify_result(now, id, &digest, &theirs);
                }
            }
        }
    }

    /// Our digest as VerifyDigest records (16 buckets each).
    fn queue_digest(&mut self, now: u64, id: u32, d: &TableDigest) {
        for (k, chunk) in d.buckets.chunks(DIGEST_PER_RECORD).enumerate() {
            let mut buckets = [(0u32, 0u64); DIGEST_PER_RECORD];
            for (slot, &(n, x)) in buckets.iter_mut().zip(chunk) {
                *slot = (u32::try_from(n).unwrap_or(u32::MAX), x);
            }
            let first = (k * DIGEST_PER_RECORD) as u8;
            let _ = self
                .session
                .queue(now, &Record::VerifyDigest { id, first, buckets });
        }
    }

    /// A part of the peer's digest; when the last arrives, ours is taken
    /// at this point of its stream (passive) or was taken already
    /// (active), and the two are compared.
    fn peer_digest_part(
        &mut self,
        now: u64,
        id: u32,
        first: u8,
        buckets: &[(u32, u64); DIGEST_PER_RECORD],
    ) -> Option<(Target, Install)> {
        if self.verify.as_ref().is_none_or(|v| v.id != id) {
            return None;
        }
        let entry = self
            .peer_digest
            .get_or_insert_with(|| (id, TableDigest::default(), 0));
        if entry.0 != id {
            *entry = (id, TableDigest::default(), 0);
        }
        let base = usize::from(first);
        for (i, &(n, x)) in buckets.iter().enumerate() {
            if let Some(b) = entry.1.buckets.get_mut(base + i) {
                *b = (u64::from(n), x);
            }
        }
        entry.2 += 1;
        if entry.2 < (DIGEST_BUCKETS / DIGEST_PER_RECORD) as u32 {
            return None;
        }
        let ours = self.verify.as_mut().and_then(|v| v.ours.take());
        match ours {
            Some(ours) => {
                let theirs = self.peer_digest.take().map(|p| p.1).unwrap_or_default();
                self.verify_result(now, id, &ours, &theirs);
                None
            }
            None => {
                let gen = self.start_digest(DigestPurpose::OwnAtMarker { id }, false);
                Some((Target::All, Install::Digest { gen }))
            }
        }
    }

    /// The operator's verify when asked, a background one every
    /// [`VERIFY_EVERY_MS`] on a synchronized passive, and one that never
    /// gets its answer is given up.
    fn verify_timer(&mut self, now: u64) {
        if let Some(v) = &self.verify {
            if now.saturating_sub(v.started_ms) > VERIFY_TIMEOUT_MS {
                self.verify = None;
                self.peer_digest = None;
                self.shared.verify_timeouts.fetch_add(1, Ordering::Relaxed);
            }
        }
        if self.shared.verify_wanted.swap(false, Ordering::AcqRel) {
            self.start_verify(now, true);
            return;
        }
        let background = !self.active()
            && self.shared.synchronized.load(Ordering::Acquire)
            && self.bulk.is_none()
            && self.rx_bulk.is_none();
        if self.next_verify_ms == 0 {
            self.next_verify_ms = now + VERIFY_EVERY_MS;
        }
        if (background || self.suspect != BucketMask::NONE) && now >= self.next_verify_ms {
            self.next_verify_ms = now + VERIFY_EVERY_MS;
            self.start_verify(now, false);
        }
    }

    /// Starts our own verify (a background one, or the operator's).
    fn start_verify(&mut self, now: u64, operator: bool) {
        if self.verify.is_some() || !self.session.is_established() || self.silent_since.is_some() {
            return;
        }
        let id = self.next_verify_id;
        self.next_verify_id = self.next_verify_id.wrapping_add(1).max(1);
        self.verify = Some(OwnVerify {
            id,
            started_ms: now,
            ours: None,
            operator,
        });
        self.peer_digest = None;
        if self.active() {
            self.start_digest(DigestPurpose::OwnAtDrainPoint { id }, true);
        } else {
            let _ = self.session.queue(now, &Record::VerifyRequest { id });
        }
    }

    /// Compares the two digests; buckets that differ twice in a row are
    /// repaired (once could be changes crossing on the way: a connection
    /// expiring on one member a moment before the other).
    fn verify_result(&mut self, now: u64, id: u32, ours: &TableDigest, theirs: &TableDigest) {
        let Some(v) = self.verify.take().filter(|v| v.id == id) else {
            return;
        };
        let diff = ours.differences(theirs);
        let mask = BucketMask::of(&diff);
        let confirmed = BucketMask::of(
            &diff
                .iter()
                .copied()
                .filter(|&b| self.suspect.contains(b))
                .collect::<Vec<_>>(),
        );
        let sh = &self.shared;
        sh.verifies.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut r) = sh.last_verify.lock() {
            *r = VerifyReport {
                id,
                ms: now.saturating_sub(v.started_ms),
                ours: ours.connections(),
                theirs: theirs.connections(),
                differing_buckets: diff.len() as u64,
                repairing: confirmed.count() as u64,
            };
        }
        sh.verify_done.store(u64::from(id), Ordering::Release);
        self.next_verify_ms = now
            + if diff.is_empty() {
                VERIFY_EVERY_MS
            } else {
                500
            };
        if diff.is_empty() {
            self.suspect = BucketMask::NONE;
            if v.operator {
                sh.event(SyncEvent::Verified {
                    connections: ours.connections(),
                });
            }
            return;
        }
        sh.verify_differences
            .fetch_add(diff.len() as u64, Ordering::Relaxed);
        sh.event(SyncEvent::VerifyDiffers {
            buckets: diff.len() as u64,
            ours: ours.connections(),
            theirs: theirs.connections(),
            repairing: confirmed.count() as u64,
        });
        self.suspect = mask;
        if confirmed.count() == 0 {
            return;
        }
        sh.verify_repairs.fetch_add(1, Ordering::Relaxed);
        if self.active() {
            self.want_bulk("a verify found the peer's table different", confirmed);
        } else {
            self.unsynchronized("a verify found our table different from the peer's");
            let _ = self.session.request_repair(now, confirmed);
        }
    }

    /// Drops the verifies and digests in progress (the role changed or the
    /// peer restarted: they compare nothing any more), and never leaves
    /// draining held.
    fn forget_verify(&mut self) {
        self.verify = None;
        self.peer_digest = None;
        self.digest_jobs.clear();
        self.hold = None;
        self.suspect = BucketMask::NONE;
    }

    /// A bulk is wanted (merged with one already wanted).
    fn want_bulk(&mut self, why: &'static str, mask: BucketMask) {
        self.bulk_wanted = Some(match self.bulk_wanted {
            Some((w, m)) => (if m.is_all() { w } else { why }, m.union(&mask)),
            None => (why, mask),
        });
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
        let mut lost = false;
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
                    lost = true;
                }
            }
        }
        if lost {
            self.want_bulk(
                "state changes were lost in a full delta ring",
                BucketMask::ALL,
            );
        }
    }

    /// Moves the workers' deltas into the session (only an active member
    /// has anything to say; a passive one drains and drops).
    fn drain_workers(&mut self, now: u64) -> usize {
        let active = self.active();
        let mut n = 0;
        for (i, w) in self.workers.iter_mut().enumerate() {
            let session = &mut self.session;
            let shared = &self.shared;
            if !active {
                // A passive member has nothing to tell: drop what is there.
                n += w.deltas.drain(usize::MAX, |_| {});
                continue;
            }
            // Never more than the session can take: what stays in the ring
            // waits for the next round. While a digest is taken at a drain
            // point, not past where it was taken.
            let mut budget = session.queue_space();
            if let Some(h) = &self.hold {
                let limit = h
                    .get(i)
                    .copied()
                    .flatten()
                    .map_or(0, |p| p.saturating_sub(w.deltas.position() as u64) as usize);
                budget = budget.min(limit);
            }
            if session.queue_space() == 0 {
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
                            id: b.id,
                            connections: count,
                            ms: now.saturating_sub(b.started_ms),
                        });
                        self.shared.sync_id.store(b.id, Ordering::Relaxed);
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
        let Some((reason, mask)) = self.bulk_wanted else {
            return;
        };
        if let Ok(id) = self.session.start_partial_bulk(now, mask) {
            self.bulk_wanted = None;
            self.dump_gen += 1;
            for w in &self.workers {
                if let Ok(mut m) = w.dump.mask.lock() {
                    *m = mask;
                }
                w.dump.requested.store(self.dump_gen, Ordering::Release);
            }
            self.bulk = Some(BulkTx {
                gen: self.dump_gen,
                started_ms: now,
                id,
            });
            self.shared.event(SyncEvent::BulkStarted { id, reason });
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

    /// Records of the peer were lost at position `at` of its stream. The
    /// peer sends a bulk when it skips records; a bulk that started at or
    /// after the hole (it may already be queued or applied: records and
    /// events are polled separately) repairs it. Until one completes this
    /// member is not synchronized, and it asks for a bulk itself if none
    /// starts within [`LOSS_REPAIR_WAIT_MS`].
    fn records_lost(&mut self, now: u64, at: u64) {
        if self.active() {
            return;
        }
        if self.last_bulk_start.is_some_and(|s| s >= at) {
            // Covered by a bulk that started after the hole: complete, or
            // its end will say (an incomplete one asks again).
            return;
        }
        let at = self.loss.as_ref().map_or(at, |l| l.at.max(at));
        self.loss = Some(PendingLoss { at, since_ms: now });
        self.complete_pending = false;
        self.unsynchronized("records of the peer were lost beyond repair");
    }

    /// A loss no bulk has covered yet: ask for one after a while.
    fn loss_timer(&mut self, now: u64) {
        if self.active() {
            self.loss = None;
            return;
        }
        let Some(l) = &mut self.loss else { return };
        if self.last_bulk_start.is_some_and(|s| s >= l.at) {
            return; // on its way
        }
        if now.saturating_sub(l.since_ms) >= LOSS_REPAIR_WAIT_MS {
            l.since_ms = now;
            let _ = self.session.request_bulk(now);
        }
    }

    fn events(&mut self, now: u64) {
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
                    self.want_bulk(reason_text(reason), BucketMask::ALL);
                }
                Event::BulkReceived { .. } => {}
                Event::RepairRequested { mask } => {
                    self.want_bulk("the peer's verify found buckets different", mask);
                }
                Event::RecordsLost {
                    datagrams,
                    at_record,
                } => {
                    self.shared.event(SyncEvent::RecordsLost { datagrams });
                    self.records_lost(now, at_record);
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
        self.forget_verify();
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
            ("verifies", &sh.verifies),
            ("verify_differences", &sh.verify_differences),
            ("verify_repairs", &sh.verify_repairs),
            ("verify_timeouts", &sh.verify_timeouts),
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
