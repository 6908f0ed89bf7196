//! Connection tracking: one [`Shard`] of the connection table per worker.
//!
//! A shard is owned by one worker thread (`&mut self`, no locks) and is
//! sans-IO: every call takes the time (`now_ms`, any monotonic clock in
//! milliseconds), nothing reads a clock, nothing allocates after
//! [`Shard::new`]. It holds
//!
//! - an entry slab (`Vec<Conn>` + free list) of fixed capacity;
//! - a key index (open addressing over `u32` slots, linear probing,
//!   tags, backward-shift deletion) where each connection is indexed under
//!   its original key and its reply key, so both directions find it and
//!   the lookup says which direction a packet goes ([`Dir`]);
//! - a hashed timer wheel with lazy updates for expiry
//!   ([`Shard::expire`], bounded work per call);
//! - per-protocol state machines: TCP with van Rooij sequence-window
//!   tracking ([`TcpConn`]), UDP/GRE/other datagram flows, ICMP queries,
//!   ESP (SPI per direction), SCTP (verification tag per direction);
//! - the SNAT port allocator ([`PortAllocator`]: ports whose reply lands
//!   on this shard), the host table, counters;
//! - the delta stream for HA: creations, state transitions, refreshes of
//!   long-lived entries and deletions go into a bounded SPSC ring
//!   ([`delta_queue`]) that the sync core drains; a full ring is counted
//!   on the ring (the sync core sees it and sends a bulk), it never
//!   blocks the worker.
//!   On the passive, [`Shard::apply`] / [`Shard::install`] hold replicated
//!   connections as larval entries until [`Shard::activate_all`].
//!
//! The worker's per-packet use: `lookup(key)` -> `Some((id, dir))` ->
//! `track(now, id, dir, l4, len)`; `None` -> policy -> `create(now, key,
//! l4, meta)` -> `track(now, id, Dir::Original, l4, len)` (create does not
//! account the packet; track does, for every packet).

mod delta;
mod hosts;
mod index;
mod nat;
mod redirect;
mod state;
mod tcp;
#[cfg(test)]
mod tests;
mod timers;

pub use delta::{
    delta_queue, ConnSnapshot, ConnUpdate, Delta, DeltaConsumer, DeltaKind, DeltaProducer,
    QueueFull,
};
pub use hosts::HostView;
pub use nat::{reply_key, Nat, NatError, NatKind, PortAllocator, PortRange};
pub use redirect::Redirects;
pub use state::{DgramState, EspConn, IcmpConn, ProtoState, SctpConn, SctpState, Timeouts};
pub use tcp::{TcpConn, TcpPeer, TcpState, PEER_FIN, PEER_FIN_ACKED, PEER_WSCALE};

use crate::flow::{FlowKey, L4Info};
use hosts::HostTable;
use index::KeyIndex;
use state::InitError;
use std::fmt;
use std::net::Ipv4Addr;
use timers::TimerWheel;

/// Most keys [`Shard::lookup_burst`] resolves per call.
pub const BURST: usize = index::BURST;

/// A connection's place in its shard. Valid until the connection is
/// deleted (by `expire`, `flush`, `delete`, a `track` that returns
/// [`Track::Stale`], or a `create`/`install` that reclaims it); do not
/// keep it across those.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u32);

/// Which way a packet goes relative to its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Dir {
    /// From the initiator to the responder.
    Original = 0,
    /// From the responder back to the initiator.
    Reply = 1,
}

impl Dir {
    /// The opposite direction.
    pub fn other(self) -> Dir {
        match self {
            Dir::Original => Dir::Reply,
            Dir::Reply => Dir::Original,
        }
    }
}

/// Why [`Shard::track`] refused a packet of a known connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TrackDrop {
    /// A TCP flag combination no valid segment carries (SYN+FIN, ...).
    TcpBadFlags,
    /// TCP flags not valid in the connection's state (a SYN on an
    /// established connection, data before the handshake completed, ...).
    TcpInvalidForState,
    /// A TCP segment outside the sequence or acknowledgement window.
    TcpOutOfWindow,
    /// A TCP RST whose sequence number is outside the window.
    TcpRstOutOfWindow,
    /// An ICMP query of the wrong type for its direction.
    IcmpUnexpectedType,
    /// An SCTP packet with the wrong verification tag.
    SctpBadVtag,
    /// An SCTP chunk not valid in the association's state.
    SctpInvalidForState,
    /// The packet's L4 facts do not match the connection's protocol (a
    /// fragment, a mis-parsed packet).
    L4Mismatch,
    /// The connection is larval (replicated, not yet activated).
    Larval,
}

impl TrackDrop {
    /// Number of reasons.
    pub const COUNT: usize = 9;
    /// Every reason, in discriminant order.
    pub const ALL: [TrackDrop; TrackDrop::COUNT] = [
        TrackDrop::TcpBadFlags,
        TrackDrop::TcpInvalidForState,
        TrackDrop::TcpOutOfWindow,
        TrackDrop::TcpRstOutOfWindow,
        TrackDrop::IcmpUnexpectedType,
        TrackDrop::SctpBadVtag,
        TrackDrop::SctpInvalidForState,
        TrackDrop::L4Mismatch,
        TrackDrop::Larval,
    ];

    /// Snake-case name, for counters.
    pub fn as_str(self) -> &'static str {
        match self {
            TrackDrop::TcpBadFlags => "tcp_bad_flags",
            TrackDrop::TcpInvalidForState => "tcp_invalid_flags_for_state",
            TrackDrop::TcpOutOfWindow => "tcp_out_of_window",
            TrackDrop::TcpRstOutOfWindow => "tcp_rst_out_of_window",
            TrackDrop::IcmpUnexpectedType => "icmp_unexpected_type",
            TrackDrop::SctpBadVtag => "sctp_bad_vtag",
            TrackDrop::SctpInvalidForState => "sctp_invalid_for_state",
            TrackDrop::L4Mismatch => "l4_mismatch",
            TrackDrop::Larval => "larval",
        }
    }
}

/// The verdict of [`Shard::track`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Track {
    /// Forward the packet.
    Accept,
    /// Drop the packet (counted per reason).
    Drop(TrackDrop),
    /// Forward the packet; it closed the connection (TCP RST, SCTP ABORT
    /// or SHUTDOWN COMPLETE), which now lingers on a short timeout.
    Closed,
    /// The entry was stale (expired but not yet reaped, or closed and this
    /// packet opens a new connection on the same key, e.g. a SYN after
    /// TIME_WAIT): it has been deleted; handle the packet as the first of
    /// a new connection (policy, then `create`).
    Stale,
}

/// Internal name of the verdict type in the protocol modules.
pub(crate) type Verdict = Track;

/// TCP tracking options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpTrackingConfig {
    /// Check sequence and acknowledgement windows (on by default).
    pub window_check: bool,
    /// Until this time, out-of-window segments of existing connections
    /// are accepted and re-anchor the windows (the grace period after an
    /// HA takeover; [`Shard::activate_all`] sets it).
    pub loose_until_ms: u64,
    /// How long the grace period lasts after [`Shard::activate_all`].
    pub takeover_grace_ms: u64,
    /// Create TCP connections from any valid non-SYN, non-RST segment
    /// (mid-stream pickup; such connections track windows liberally).
    /// Off by default.
    pub loose_pickup: bool,
}

impl Default for TcpTrackingConfig {
    fn default() -> Self {
        TcpTrackingConfig {
            window_check: true,
            loose_until_ms: 0,
            takeover_grace_ms: 30_000,
            loose_pickup: false,
        }
    }
}

/// Construction parameters of a shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardConfig {
    /// Maximum number of connections (fixed).
    pub capacity: u32,
    /// Timeouts per protocol and state.
    pub timeouts: Timeouts,
    /// TCP tracking options.
    pub tcp: TcpTrackingConfig,
    /// A synced connection with activity but no state change sends a
    /// refresh at most this often.
    pub refresh_interval_ms: u64,
    /// Capacity of the delta ring.
    pub delta_capacity: usize,
    /// Connections younger than this are not synced (F10); their creation
    /// is sent with their first packet after this age.
    pub sync_min_age_ms: u64,
    /// SNAT source ports.
    pub nat_ports: PortRange,
    /// This shard's number (the worker's index).
    pub shard: usize,
    /// Number of shards (workers) of the node.
    pub shards: usize,
    /// Maximum number of hosts in the host table.
    pub host_capacity: usize,
    /// Seed of the index hash (pass a random value: hash flooding).
    pub hash_seed: u64,
}

impl Default for ShardConfig {
    fn default() -> Self {
        ShardConfig {
            capacity: 65_536,
            timeouts: Timeouts::default(),
            tcp: TcpTrackingConfig::default(),
            refresh_interval_ms: 30_000,
            delta_capacity: 16_384,
            sync_min_age_ms: 0,
            nat_ports: PortRange::default(),
            shard: 0,
            shards: 1,
            host_capacity: 16_384,
            hash_seed: 0x243f_6a88_85a3_08d3,
        }
    }
}

/// What the policy decided about a new connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ConnMeta {
    /// The rule that accepted it.
    pub rule: u32,
    /// Sync it to the peer (the rule's HA option; off for connections to
    /// the firewall itself).
    pub sync: bool,
    /// Log it.
    pub log: bool,
    /// Port the original direction came in on.
    pub in_port: u16,
    /// Port the original direction goes out on.
    pub out_port: u16,
    /// NAT binding (`orig` must be the created key).
    pub nat: Option<Nat>,
}

/// Why a connection could not be created or installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreateError {
    /// Every entry is in use by a live connection.
    TableFull,
    /// The key is already the original key of this live connection.
    Exists(ConnId),
    /// The key or the reply key is already used by this live connection
    /// (in the other direction, or a NAT binding collision).
    KeyConflict(ConnId),
    /// The packet cannot open a connection (TCP without SYN, ICMP reply
    /// or error, SCTP chunk other than INIT).
    NotInitial,
    /// Inconsistent input: L4 facts of another protocol, invalid TCP
    /// flags, a NAT binding for another key, a flow to itself.
    Invalid,
}

impl fmt::Display for CreateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CreateError::TableFull => write!(f, "connection table shard is full"),
            CreateError::Exists(id) => write!(f, "connection exists (entry {})", id.0),
            CreateError::KeyConflict(id) => {
                write!(f, "key already used by connection entry {}", id.0)
            }
            CreateError::NotInitial => write!(f, "packet cannot open a connection"),
            CreateError::Invalid => write!(f, "inconsistent connection parameters"),
        }
    }
}

impl std::error::Error for CreateError {}

/// Why a replicated record could not be applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApplyError {
    /// The update, refresh or delete names a connection this shard does
    /// not have (the sync core should ask the peer for it).
    Missing,
    /// This member is active and tracks the connection itself: the
    /// replicated record does not override the live entry.
    Live,
    /// Installing a created connection failed.
    Create(CreateError),
}

/// Per-shard counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardCounters {
    /// Connections created by packets.
    pub created: u64,
    /// Connections deleted (any cause).
    pub deleted: u64,
    /// Connections deleted because they timed out.
    pub expired: u64,
    /// Creations refused: table full.
    pub table_full: u64,
    /// Creations refused: exists or key conflict.
    pub exists: u64,
    /// Creations refused: not an opening packet.
    pub not_initial: u64,
    /// Creations refused: inconsistent input.
    pub invalid: u64,
    /// Snapshots installed (new or updated larval entries).
    pub installed: u64,
    /// Entries replaced by an install whose keys collided with them.
    pub install_replaced: u64,
    /// Larval entries activated.
    pub activated: u64,
    /// Replicated records about unknown connections.
    pub sync_missing: u64,
    /// Replicated records ignored because this (active) member tracks the
    /// connection live itself.
    pub sync_kept_live: u64,
    /// Larval entries removed because the peer's complete bulk did not
    /// carry them.
    pub swept: u64,
    /// SNAT port allocations that failed.
    pub nat_exhausted: u64,
    /// Delta records pushed.
    pub deltas: u64,
    /// Delta records lost to a full ring.
    pub deltas_dropped: u64,
    /// Packets that found their entry stale (see [`Track::Stale`]).
    pub stale: u64,
    /// Packets dropped by `track`, per [`TrackDrop`].
    pub drops: [u64; TrackDrop::COUNT],
}

const LIVE: u8 = 0x01;
const LARVAL: u8 = 0x02;
const SYNC: u8 = 0x04;
const LOG: u8 = 0x08;
/// The peer has been told about the connection (a Create was pushed).
const SYNCED: u8 = 0x10;
/// Counted in the host table.
const HOST: u8 = 0x20;

/// A connection entry. `repr(C)` keeps what a lookup compares and what
/// tracking touches together at the front; the rest follows.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct Conn {
    keys: [FlowKey; 2],
    flags: u8,
    /// 0, or a `NatKind` discriminant.
    nat: u8,
    in_port: u16,
    state: ProtoState,
    deadline_ms: u64,
    last_ms: u64,
    packets: [u64; 2],
    bytes: [u64; 2],
    last_sync_ms: u64,
    created_ms: u64,
    rule: u32,
    out_port: u16,
}

impl Conn {
    fn blank() -> Conn {
        let k = FlowKey::new(Ipv4Addr::UNSPECIFIED, 0, Ipv4Addr::UNSPECIFIED, 0, 0);
        Conn {
            keys: [k, k],
            state: ProtoState::Other(DgramState::Unreplied),
            rule: 0,
            in_port: 0,
            out_port: 0,
            flags: 0,
            nat: 0,
            created_ms: 0,
            last_ms: 0,
            deadline_ms: 0,
            last_sync_ms: 0,
            packets: [0; 2],
            bytes: [0; 2],
        }
    }

    /// Replicated and not activated: not to be used for forwarding.
    pub fn is_larval(&self) -> bool {
        self.flags & LARVAL != 0
    }
    /// The key of packets going `dir`.
    pub fn key(&self, dir: Dir) -> FlowKey {
        self.keys[dir as usize]
    }
    /// Protocol state.
    pub fn state(&self) -> &ProtoState {
        &self.state
    }
    /// The rule that accepted it.
    pub fn rule(&self) -> u32 {
        self.rule
    }
    /// Whether it is synced to the peer.
    pub fn sync(&self) -> bool {
        self.flags & SYNC != 0
    }
    /// Whether it is logged.
    pub fn log(&self) -> bool {
        self.flags & LOG != 0
    }
    /// Ports of the original direction (in, out).
    pub fn ports(&self) -> (u16, u16) {
        (self.in_port, self.out_port)
    }
    /// The NAT binding.
    pub fn nat(&self) -> Option<Nat> {
        let kind = match self.nat {
            1 => NatKind::Snat,
            2 => NatKind::Dnat,
            _ => return None,
        };
        Some(Nat {
            kind,
            orig: self.keys[0],
            translated: nat::orig_of_reply(&self.keys[1]),
        })
    }
    /// When it was created.
    pub fn created_ms(&self) -> u64 {
        self.created_ms
    }
    /// When its last packet was accepted.
    pub fn last_ms(&self) -> u64 {
        self.last_ms
    }
    /// When it expires unless a packet comes.
    pub fn deadline_ms(&self) -> u64 {
        self.deadline_ms
    }
    /// Packets per direction.
    pub fn packets(&self) -> [u64; 2] {
        self.packets
    }
    /// Bytes per direction.
    pub fn bytes(&self) -> [u64; 2] {
        self.bytes
    }
}

/// One connection as `tandemctl conn list` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnView {
    /// Entry.
    pub id: ConnId,
    /// Original key.
    pub orig: FlowKey,
    /// Reply key.
    pub reply: FlowKey,
    /// IP protocol.
    pub proto: u8,
    /// State name.
    pub state: &'static str,
    /// Milliseconds since creation.
    pub age_ms: u64,
    /// Milliseconds since the last packet.
    pub idle_ms: u64,
    /// Milliseconds until expiry.
    pub remaining_ms: u64,
    /// Packets per direction.
    pub packets: [u64; 2],
    /// Bytes per direction.
    pub bytes: [u64; 2],
    /// Accepting rule.
    pub rule: u32,
    /// NAT binding.
    pub nat: Option<Nat>,
    /// Larval (replicated, not active).
    pub larval: bool,
    /// Synced to the peer.
    pub sync: bool,
}

/// Buckets of a [`TableDigest`].
pub const DIGEST_BUCKETS: usize = 256;

/// A digest of the replicated part of a connection table: per bucket (by
/// a fixed hash of the connection's keys, the same on every node), how
/// many connections and the XOR of their fingerprints. Two members hold
/// the same connections when their digests are equal; a differing bucket
/// says where to look.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableDigest {
    /// (connections, XOR of fingerprints) per bucket.
    pub buckets: Vec<(u64, u64)>,
}

impl Default for TableDigest {
    fn default() -> Self {
        TableDigest {
            buckets: vec![(0, 0); DIGEST_BUCKETS],
        }
    }
}

impl TableDigest {
    /// Adds another shard's digest.
    pub fn merge(&mut self, other: &TableDigest) {
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            a.0 += b.0;
            a.1 ^= b.1;
        }
    }

    /// Connections in all.
    pub fn connections(&self) -> u64 {
        self.buckets.iter().map(|b| b.0).sum()
    }

    /// The buckets that differ from `other`'s.
    pub fn differences(&self, other: &TableDigest) -> Vec<usize> {
        (0..DIGEST_BUCKETS)
            .filter(|&i| self.buckets.get(i) != other.buckets.get(i))
            .collect()
    }
}

/// A set of digest buckets (bit i: bucket i): what a partial bulk (a
/// repair) carries and sweeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BucketMask(pub [u8; DIGEST_BUCKETS / 8]);

impl BucketMask {
    /// Every bucket (a full bulk).
    pub const ALL: BucketMask = BucketMask([0xff; DIGEST_BUCKETS / 8]);
    /// No bucket.
    pub const NONE: BucketMask = BucketMask([0; DIGEST_BUCKETS / 8]);

    /// Whether bucket `b` is in the set.
    pub fn contains(&self, b: usize) -> bool {
        b < DIGEST_BUCKETS && self.0[b / 8] & (1 << (b % 8)) != 0
    }

    /// Adds bucket `b`.
    pub fn insert(&mut self, b: usize) {
        if b < DIGEST_BUCKETS {
            self.0[b / 8] |= 1 << (b % 8);
        }
    }

    /// The union with `other`.
    pub fn union(&self, other: &BucketMask) -> BucketMask {
        let mut m = *self;
        for (a, b) in m.0.iter_mut().zip(other.0) {
            *a |= b;
        }
        m
    }

    /// Whether every bucket is in the set.
    pub fn is_all(&self) -> bool {
        *self == BucketMask::ALL
    }

    /// How many buckets are in the set.
    pub fn count(&self) -> usize {
        self.0.iter().map(|b| b.count_ones() as usize).sum()
    }

    /// The set of `buckets`.
    pub fn of(buckets: &[usize]) -> BucketMask {
        let mut m = BucketMask::NONE;
        for &b in buckets {
            m.insert(b);
        }
        m
    }
}

/// The digest bucket of a connection with these keys.
pub fn bucket_of(orig: &FlowKey, reply: &FlowKey) -> usize {
    (conn_fingerprint(orig, reply) >> 56) as usize
}

/// The fingerprint of a connection for [`TableDigest`]: a fixed mix of its
/// original and reply keys (so a NAT binding counts), identical on every
/// node and build.
pub fn conn_fingerprint(orig: &FlowKey, reply: &FlowKey) -> u64 {
    fn mix(mut z: u64) -> u64 {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    let mut h = 0x243f_6a88_85a3_08d3u64;
    for k in [orig, reply] {
        for v in [
            u64::from(u32::from(k.src)) << 32 | u64::from(u32::from(k.dst)),
            u64::from(k.sport) << 24 | u64::from(k.dport) << 8 | u64::from(k.proto),
        ] {
            h = mix(h ^ v).wrapping_add(0x9e37_79b9_7f4a_7c15);
        }
    }
    h
}

/// One worker's part of the connection table.
#[derive(Debug)]
pub struct Shard {
    cfg: ShardConfig,
    conns: Vec<Conn>,
    free: Vec<u32>,
    index: KeyIndex,
    wheel: TimerWheel,
    hosts: HostTable,
    ports: PortAllocator,
    deltas: DeltaProducer,
    consumer: Option<DeltaConsumer>,
    larval: u32,
    loose_until_ms: u64,
    counters: ShardCounters,
    /// Reply keys of this shard's connections that another worker owns
    /// (several workers only).
    redirects: Option<std::sync::Arc<Redirects>>,
}

impl Shard {
    /// A shard with everything allocated for `cfg.capacity` connections.
    pub fn new(cfg: ShardConfig, now_ms: u64) -> Shard {
        let cap = cfg.capacity.max(1);
        let (producer, consumer) = delta_queue(cfg.delta_capacity);
        Shard {
            conns: vec![Conn::blank(); cap as usize],
            free: (0..cap).rev().collect(),
            index: KeyIndex::new(cap, cfg.hash_seed),
            wheel: TimerWheel::new(cap, now_ms),
            hosts: HostTable::new(cfg.host_capacity),
            ports: PortAllocator::new(cfg.nat_ports, cfg.shard, cfg.shards),
            deltas: producer,
            consumer: Some(consumer),
            larval: 0,
            loose_until_ms: cfg.tcp.loose_until_ms,
            counters: ShardCounters::default(),
            redirects: None,
            cfg,
        }
    }

    /// Shares the node's redirects: a connection whose reply key another
    /// worker owns (DNAT) is recorded there while it lives.
    pub fn set_redirects(&mut self, r: std::sync::Arc<Redirects>) {
        self.redirects = Some(r);
    }

    /// Whether the reply key of a connection belongs to another worker.
    fn foreign_reply(&self, reply: &FlowKey) -> bool {
        self.cfg.shards > 1 && reply.owner(self.cfg.shards) != self.cfg.shard
    }

    /// The configuration.
    pub fn config(&self) -> &ShardConfig {
        &self.cfg
    }

    /// The consumer end of the delta ring, for the sync core (once).
    pub fn take_delta_consumer(&mut self) -> Option<DeltaConsumer> {
        self.consumer.take()
    }

    /// Connections in the table (larval included).
    pub fn len(&self) -> usize {
        self.conns.len() - self.free.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Maximum number of connections.
    pub fn capacity(&self) -> usize {
        self.conns.len()
    }

    /// Larval connections in the table.
    pub fn larval(&self) -> usize {
        self.larval as usize
    }

    /// Counters.
    pub fn counters(&self) -> &ShardCounters {
        &self.counters
    }

    /// Until when TCP windows are tracked loosely.
    pub fn loose_until_ms(&self) -> u64 {
        self.loose_until_ms
    }

    /// Sets the end of the loose TCP window period.
    pub fn set_loose_until(&mut self, ms: u64) {
        self.loose_until_ms = ms;
    }

    /// Changes the minimum age of synced connections (F10).
    pub fn set_sync_min_age(&mut self, ms: u64) {
        self.cfg.sync_min_age_ms = ms;
    }

    /// Changes how long TCP windows are tracked loosely after a takeover.
    pub fn set_takeover_grace(&mut self, ms: u64) {
        self.cfg.tcp.takeover_grace_ms = ms;
    }

    /// Memory per connection at full capacity: the entry, its share of
    /// the index (two keys at load <= 1/2), its timer link and its
    /// free-list slot.
    pub fn bytes_per_conn(&self) -> usize {
        std::mem::size_of::<Conn>()
            + self.index.bytes() / self.conns.len()
            + TimerWheel::LINK_BYTES
            + std::mem::size_of::<u32>()
    }

    /// Finds the connection of a packet with `key`, and its direction.
    #[inline]
    pub fn lookup(&self, key: &FlowKey) -> Option<(ConnId, Dir)> {
        let conns = &self.conns;
        self.index
            .find(key, |s, d| conns[s as usize].keys[d as usize])
            .map(|h| {
                let dir = if h.dir == 0 {
                    Dir::Original
                } else {
                    Dir::Reply
                };
                (ConnId(h.slot), dir)
            })
    }

    /// [`Self::lookup`] for a burst of packets (up to [`BURST`] keys;
    /// the rest of `out` is left alone): the same answers, with the
    /// memory accesses of the burst overlapped (hash all, probe all,
    /// compare all), which is several times faster on a table larger
    /// than the caches.
    pub fn lookup_burst(&self, keys: &[FlowKey], out: &mut [Option<(ConnId, Dir)>]) {
        let mut hits = [None; BURST];
        let n = keys.len().min(out.len()).min(BURST);
        let conns = &self.conns;
        self.index.find_burst(
            &keys[..n],
            &mut hits[..n],
            |s, d| conns[s as usize].keys[d as usize],
            |s| {
                if let Some(c) = conns.get(s as usize) {
                    crate::dpdk::prefetch(c);
                }
            },
        );
        for (o, h) in out.iter_mut().zip(&hits[..n]) {
            *o = h.map(|h| {
                let dir = if h.dir == 0 {
                    Dir::Original
                } else {
                    Dir::Reply
                };
                (ConnId(h.slot), dir)
            });
        }
    }

    /// The entry `id`, if it holds a connection.
    pub fn get(&self, id: ConnId) -> Option<&Conn> {
        self.conns
            .get(id.0 as usize)
            .filter(|c| c.flags & LIVE != 0)
    }

    /// Allocates an SNAT source port (ICMP: identifier) for `orig`
    /// translated to `addr`, such that the reply lands on this shard and
    /// no connection of this shard uses the same reply key. Pass the
    /// result as [`ConnMeta::nat`] to [`Self::create`] right away (the
    /// port is taken by the creation, freed by the deletion).
    pub fn snat(&mut self, orig: &FlowKey, addr: Ipv4Addr) -> Result<Nat, NatError> {
        let conns = &self.conns;
        let index = &self.index;
        let r = self.ports.allocate(orig, addr, |k| {
            index
                .find(k, |s, d| conns[s as usize].keys[d as usize])
                .is_some()
        });
        if r.is_err() {
            self.counters.nat_exhausted += 1;
        }
        r
    }

    /// Creates a connection for a packet with `key` that the policy
    /// accepted. Validates that the packet can open a connection of its
    /// protocol; does not account the packet (call [`Self::track`] for
    /// it). A full table is never relieved by evicting live connections,
    /// only by reaping expired ones.
    pub fn create(
        &mut self,
        now_ms: u64,
        key: &FlowKey,
        l4: &L4Info,
        meta: ConnMeta,
    ) -> Result<ConnId, CreateError> {
        let state = match ProtoState::initial(key, l4, self.cfg.tcp.loose_pickup) {
            Ok(s) => s,
            Err(InitError::NotInitial) => {
                self.counters.not_initial += 1;
                return Err(CreateError::NotInitial);
            }
            Err(InitError::Invalid) => {
                self.counters.invalid += 1;
                return Err(CreateError::Invalid);
            }
        };
        let reply = match self.reply_for(key, meta.nat.as_ref()) {
            Some(r) => r,
            None => {
                self.counters.invalid += 1;
                return Err(CreateError::Invalid);
            }
        };
        for (k, orig) in [(key, true), (&reply, false)] {
            if let Some((id, dir)) = self.lookup(k) {
                if self.conns[id.0 as usize].deadline_ms <= now_ms {
                    self.remove(id.0, now_ms, true, true);
                } else {
                    self.counters.exists += 1;
                    return Err(if orig && dir == Dir::Original {
                        CreateError::Exists(id)
                    } else {
                        CreateError::KeyConflict(id)
                    });
                }
            }
        }
        let slot = self.alloc(now_ms)?;
        let mut flags = LIVE;
        if meta.sync {
            flags |= SYNC;
        }
        if meta.log {
            flags |= LOG;
        }
        let deadline = now_ms + state.timeout(&self.cfg.timeouts);
        self.conns[slot as usize] = Conn {
            keys: [*key, reply],
            state,
            rule: meta.rule,
            in_port: meta.in_port,
            out_port: meta.out_port,
            flags,
            nat: meta.nat.map_or(0, |n| n.kind as u8),
            created_ms: now_ms,
            last_ms: now_ms,
            deadline_ms: deadline,
            last_sync_ms: now_ms,
            packets: [0; 2],
            bytes: [0; 2],
        };
        self.link(slot, deadline);
        self.counters.created += 1;
        self.sync_after_activity(slot, now_ms, false);
        Ok(ConnId(slot))
    }

    /// Tracks a packet of `len` bytes of connection `id` going `dir`:
    /// updates the protocol state, counters and the timeout, and pushes a
    /// delta on a state transition or when a refresh is due.
    pub fn track(&mut self, now_ms: u64, id: ConnId, dir: Dir, l4: &L4Info, len: u32) -> Track {
        let i = id.0 as usize;
        let window_check = self.cfg.tcp.window_check;
        let loose = now_ms < self.loose_until_ms;
        let c = &mut self.conns[i];
        debug_assert!(c.flags & LIVE != 0, "track of a free entry");
        if c.flags & LARVAL != 0 {
            self.counters.drops[TrackDrop::Larval as usize] += 1;
            return Track::Drop(TrackDrop::Larval);
        }
        if c.deadline_ms <= now_ms {
            self.counters.stale += 1;
            self.remove(id.0, now_ms, true, true);
            return Track::Stale;
        }
        let (verdict, changed) = match (&mut c.state, l4) {
            (ProtoState::Tcp(t), L4Info::Tcp(info)) => t.track(dir, info, window_check, loose),
            (ProtoState::Tcp(_), _) => (Track::Drop(TrackDrop::L4Mismatch), false),
            (s, l4) => s.track_dgram(dir, l4),
        };
        match verdict {
            Track::Drop(r) => {
                self.counters.drops[r as usize] += 1;
                return verdict;
            }
            Track::Stale => {
                self.counters.stale += 1;
                self.remove(id.0, now_ms, true, false);
                return verdict;
            }
            Track::Accept | Track::Closed => {}
        }
        let d = dir as usize;
        c.packets[d] += 1;
        c.bytes[d] += u64::from(len);
        c.last_ms = now_ms;
        c.deadline_ms = now_ms + c.state.timeout(&self.cfg.timeouts);
        if changed {
            // The deadline may have moved earlier (e.g. to the RST
            // timeout); later deadlines are re-checked lazily.
            self.wheel.ensure(id.0, c.deadline_ms);
        }
        self.sync_after_activity(id.0, now_ms, changed);
        verdict
    }

    /// Removes expired connections: at most `budget` of them, and a
    /// bounded number of lazy timer re-checks. Returns how many were
    /// removed (each emits a delete delta if it was synced).
    pub fn expire(&mut self, now_ms: u64, budget: usize) -> usize {
        let max_work = budget.saturating_mul(4).saturating_add(64);
        let (mut removed, mut work) = (0, 0);
        while removed < budget && work < max_work {
            let Some(id) = self.wheel.pop_due(now_ms) else {
                break;
            };
            work += 1;
            let deadline = self.conns[id as usize].deadline_ms;
            if deadline <= now_ms {
                self.remove(id, now_ms, true, true);
                removed += 1;
            } else {
                self.wheel.schedule(id, deadline);
            }
        }
        removed
    }

    /// Deletes connection `id` (operator or policy action), with a delta.
    pub fn delete(&mut self, now_ms: u64, id: ConnId) -> bool {
        if self.get(id).is_none() {
            return false;
        }
        self.remove(id.0, now_ms, true, false);
        true
    }

    /// Deletes every connection (deltas for the synced ones); returns how
    /// many.
    pub fn flush(&mut self, now_ms: u64) -> usize {
        let mut n = 0;
        for i in 0..self.conns.len() as u32 {
            if self.conns[i as usize].flags & LIVE != 0 {
                self.remove(i, now_ms, true, false);
                n += 1;
            }
        }
        n
    }

    /// Installs a replicated connection as larval, or updates the entry
    /// that has its original key (made larval). The peer is
    /// authoritative: a local entry whose keys collide is replaced. No
    /// delta is emitted.
    pub fn install(&mut self, now_ms: u64, s: &ConnSnapshot) -> Result<ConnId, CreateError> {
        if !state::l4_matches_state(s.orig.proto, &s.state) {
            self.counters.invalid += 1;
            return Err(CreateError::Invalid);
        }
        let Some(reply) = self.reply_for(&s.orig, s.nat.as_ref()) else {
            self.counters.invalid += 1;
            return Err(CreateError::Invalid);
        };
        let mut slot = None;
        if let Some((id, dir)) = self.lookup(&s.orig) {
            if dir == Dir::Original && self.conns[id.0 as usize].keys[1] == reply {
                slot = Some(id.0);
            } else {
                self.remove(id.0, now_ms, false, false);
                self.counters.install_replaced += 1;
            }
        }
        let fresh = slot.is_none();
        let slot = match slot {
            Some(s) => s,
            None => {
                if let Some((id, _)) = self.lookup(&reply) {
                    self.remove(id.0, now_ms, false, false);
                    self.counters.install_replaced += 1;
                }
                self.alloc(now_ms)?
            }
        };
        let c = &mut self.conns[slot as usize];
        let was_larval = !fresh && c.flags & LARVAL != 0;
        let mut flags = LIVE | LARVAL | SYNCED | (c.flags & HOST);
        if fresh {
            flags &= !HOST;
        }
        if s.sync {
            flags |= SYNC;
        }
        if s.log {
            flags |= LOG;
        }
        let deadline = now_ms + s.remaining_ms;
        *c = Conn {
            keys: [s.orig, reply],
            state: s.state,
            rule: s.rule,
            in_port: s.in_port,
            out_port: s.out_port,
            flags,
            nat: s.nat.map_or(0, |n| n.kind as u8),
            created_ms: now_ms.saturating_sub(s.age_ms),
            last_ms: now_ms.saturating_sub(s.idle_ms),
            deadline_ms: deadline,
            last_sync_ms: now_ms,
            packets: s.packets,
            bytes: s.bytes,
        };
        if fresh {
            self.link(slot, deadline);
        } else {
            self.wheel.ensure(slot, deadline);
        }
        if !was_larval {
            self.larval += 1;
        }
        self.counters.installed += 1;
        Ok(ConnId(slot))
    }

    /// Applies one record of the peer's delta stream on a passive member:
    /// the peer is authoritative, every entry it names becomes (or stays)
    /// larval and is marked as confirmed now (see [`Self::sweep_larval`]).
    pub fn apply(&mut self, now_ms: u64, d: &Delta) -> Result<(), ApplyError> {
        let find = |sh: &Shard, key: &FlowKey| match sh.lookup(key) {
            Some((id, Dir::Original)) => Some(id.0),
            _ => None,
        };
        let r = match &d.kind {
            DeltaKind::Create(s) => {
                return self
                    .install(now_ms, s)
                    .map(|_| ())
                    .map_err(ApplyError::Create)
            }
            DeltaKind::Update(u) => find(self, &u.key).map(|id| {
                let c = &mut self.conns[id as usize];
                c.state = u.state;
                c.deadline_ms = now_ms + u.remaining_ms;
                c.last_sync_ms = now_ms;
                self.wheel.ensure(id, now_ms + u.remaining_ms);
            }),
            DeltaKind::Refresh { key, remaining_ms } => find(self, key).map(|id| {
                let c = &mut self.conns[id as usize];
                c.deadline_ms = now_ms + remaining_ms;
                c.last_sync_ms = now_ms;
                self.wheel.ensure(id, now_ms + remaining_ms);
            }),
            DeltaKind::Delete { key } => {
                find(self, key).map(|id| self.remove(id, now_ms, false, false))
            }
        };
        r.ok_or_else(|| {
            self.counters.sync_missing += 1;
            ApplyError::Missing
        })
    }

    /// Applies one record of the peer's stream on a member that is
    /// *active* (a late record from the old active after a swap, the
    /// install queue at a takeover, a dual-active episode): a live entry of
    /// ours is never changed by it (it is what the traffic follows), a
    /// connection we do not have is installed live at once (its packets
    /// must not be dropped as larval).
    pub fn apply_active(&mut self, now_ms: u64, d: &Delta) -> Result<(), ApplyError> {
        match &d.kind {
            DeltaKind::Create(s) => {
                let reply = self.reply_for(&s.orig, s.nat.as_ref());
                let taken = self.lookup(&s.orig).is_some()
                    || reply.is_some_and(|r| self.lookup(&r).is_some());
                if taken {
                    self.counters.sync_kept_live += 1;
                    return Err(ApplyError::Live);
                }
                let id = self.install(now_ms, s).map_err(ApplyError::Create)?;
                let c = &mut self.conns[id.0 as usize];
                if c.flags & LARVAL != 0 {
                    c.flags &= !LARVAL;
                    self.larval -= 1;
                    self.counters.activated += 1;
                }
                Ok(())
            }
            _ => match self.lookup(&d.key()) {
                Some((id, Dir::Original)) if self.conns[id.0 as usize].is_larval() => {
                    self.apply(now_ms, d)
                }
                Some(_) => {
                    self.counters.sync_kept_live += 1;
                    Err(ApplyError::Live)
                }
                None => {
                    self.counters.sync_missing += 1;
                    Err(ApplyError::Missing)
                }
            },
        }
    }

    /// Removes larval entries that no record confirmed since `before_ms`
    /// (the peer's complete bulk that began then did not carry them: they
    /// are gone on the peer), visiting at most `budget` entries from
    /// `*cursor` on; `*cursor` reaches [`Self::capacity`] when done.
    /// Returns how many were removed.
    pub fn sweep_larval(
        &mut self,
        now_ms: u64,
        before_ms: u64,
        cursor: &mut usize,
        budget: usize,
    ) -> usize {
        self.sweep_larval_buckets(now_ms, before_ms, cursor, budget, &BucketMask::ALL)
    }

    /// [`Self::sweep_larval`] limited to the digest buckets in `mask` (the
    /// end of a repair of those buckets).
    pub fn sweep_larval_buckets(
        &mut self,
        now_ms: u64,
        before_ms: u64,
        cursor: &mut usize,
        budget: usize,
        mask: &BucketMask,
    ) -> usize {
        let all = mask.is_all();
        let mut removed = 0;
        let end = self.conns.len().min(cursor.saturating_add(budget));
        while *cursor < end {
            let c = &self.conns[*cursor];
            if c.flags & (LIVE | LARVAL) == LIVE | LARVAL
                && c.last_sync_ms < before_ms
                && (all || mask.contains(bucket_of(&c.keys[0], &c.keys[1])))
            {
                self.remove(*cursor as u32, now_ms, false, false);
                self.counters.swept += 1;
                removed += 1;
            }
            *cursor += 1;
        }
        removed
    }

    /// Makes every live connection larval again (this member became
    /// passive: from now on the peer's stream is authoritative, and the
    /// peer's next bulk confirms or sweeps them). Returns how many.
    pub fn deactivate_all(&mut self) -> usize {
        let mut n = 0;
        for c in &mut self.conns {
            if c.flags & (LIVE | LARVAL) == LIVE {
                c.flags |= LARVAL | SYNCED;
                n += 1;
            }
        }
        self.larval += n as u32;
        n
    }

    /// The digest of what this shard holds for the peer: its replicated
    /// connections (live ones the peer was told about, or larval ones the
    /// peer sent). Walks the whole table: not for the packet path.
    pub fn digest(&self) -> TableDigest {
        let mut d = TableDigest::default();
        for c in &self.conns {
            let f = c.flags;
            let replicated =
                f & LIVE != 0 && (f & LARVAL != 0 || f & (SYNC | SYNCED) == SYNC | SYNCED);
            if replicated {
                let h = conn_fingerprint(&c.keys[0], &c.keys[1]);
                debug_assert_eq!(bucket_of(&c.keys[0], &c.keys[1]), (h >> 56) as usize);
                let b = &mut d.buckets[(h >> 56) as usize];
                b.0 += 1;
                b.1 ^= h;
            }
        }
        d
    }

    /// Delta records pushed since the shard was made (the sync core has
    /// sent everything up to here once its consumer reaches it).
    pub fn delta_position(&self) -> usize {
        self.deltas.position()
    }

    /// Makes every larval connection live (takeover) and starts the loose
    /// TCP window grace period. Returns how many were activated.
    pub fn activate_all(&mut self, now_ms: u64) -> usize {
        let mut n = 0;
        if self.larval > 0 {
            for c in &mut self.conns {
                if c.flags & (LIVE | LARVAL) == LIVE | LARVAL {
                    c.flags &= !LARVAL;
                    c.last_sync_ms = now_ms;
                    n += 1;
                }
            }
        }
        self.larval = 0;
        self.loose_until_ms = now_ms + self.cfg.tcp.takeover_grace_ms;
        self.counters.activated += n as u64;
        n
    }

    /// Pushes a Create for up to `budget` live, syncable connections from
    /// entry `*cursor` on (a bulk sync to a (re)joining peer, spread over
    /// several calls); advances `*cursor`, which reaches
    /// [`Self::capacity`] when done. Stops early when the ring is full.
    pub fn bulk_sync(&mut self, now_ms: u64, cursor: &mut usize, budget: usize) -> usize {
        self.bulk_sync_buckets(now_ms, cursor, budget, &BucketMask::ALL)
    }

    /// [`Self::bulk_sync`] for the connections of the digest buckets in
    /// `mask` only (a repair of the buckets a verify found different).
    pub fn bulk_sync_buckets(
        &mut self,
        now_ms: u64,
        cursor: &mut usize,
        budget: usize,
        mask: &BucketMask,
    ) -> usize {
        let all = mask.is_all();
        let mut n = 0;
        let mut visited = 0;
        while *cursor < self.conns.len() && n < budget && visited < budget * 16 {
            visited += 1;
            let c = &self.conns[*cursor];
            let want = c.flags & (LIVE | LARVAL | SYNC) == LIVE | SYNC
                && now_ms.saturating_sub(c.created_ms) >= self.cfg.sync_min_age_ms
                && (all || mask.contains(bucket_of(&c.keys[0], &c.keys[1])));
            if want {
                let d = Delta {
                    at_ms: now_ms,
                    created_ms: c.created_ms,
                    kind: DeltaKind::Create(self.snapshot_of(*cursor as u32, now_ms)),
                };
                if self.deltas.push(d).is_err() {
                    break;
                }
                self.counters.deltas += 1;
                let c = &mut self.conns[*cursor];
                c.flags |= SYNCED;
                c.last_sync_ms = now_ms;
                n += 1;
            }
            *cursor += 1;
        }
        n
    }

    /// A snapshot of connection `id` for replication.
    pub fn snapshot(&self, now_ms: u64, id: ConnId) -> Option<ConnSnapshot> {
        self.get(id)?;
        Some(self.snapshot_of(id.0, now_ms))
    }

    /// The view of connection `id`.
    pub fn view(&self, now_ms: u64, id: ConnId) -> Option<ConnView> {
        let c = self.get(id)?;
        Some(ConnView {
            id,
            orig: c.keys[0],
            reply: c.keys[1],
            proto: c.keys[0].proto,
            state: c.state.name(),
            age_ms: now_ms.saturating_sub(c.created_ms),
            idle_ms: now_ms.saturating_sub(c.last_ms),
            remaining_ms: c.deadline_ms.saturating_sub(now_ms),
            packets: c.packets,
            bytes: c.bytes,
            rule: c.rule,
            nat: c.nat(),
            larval: c.is_larval(),
            sync: c.sync(),
        })
    }

    /// Every connection, for `tandemctl conn list` (walks the whole slab:
    /// not for the packet path).
    pub fn iter(&self, now_ms: u64) -> impl Iterator<Item = ConnView> + '_ {
        (0..self.conns.len() as u32).filter_map(move |i| self.view(now_ms, ConnId(i)))
    }

    /// The host table.
    pub fn hosts(&self) -> impl Iterator<Item = HostView> + '_ {
        self.hosts.iter()
    }

    /// One host's row.
    pub fn host(&self, addr: Ipv4Addr) -> Option<HostView> {
        self.hosts.get(addr)
    }

    /// Hosts in the table, and host creations refused because it was full.
    pub fn host_stats(&self) -> (usize, u64) {
        (self.hosts.len(), self.hosts.full)
    }

    // ---- internals ----

    fn reply_for(&self, key: &FlowKey, nat: Option<&Nat>) -> Option<FlowKey> {
        let translated = match nat {
            Some(n) if n.orig != *key || n.translated.proto != key.proto => return None,
            Some(n) => n.translated,
            None => *key,
        };
        let reply = reply_key(&translated);
        (reply != *key).then_some(reply)
    }

    fn alloc(&mut self, now_ms: u64) -> Result<u32, CreateError> {
        if self.free.is_empty() {
            self.expire(now_ms, 8);
        }
        self.free.pop().ok_or_else(|| {
            self.counters.table_full += 1;
            CreateError::TableFull
        })
    }

    /// Indexes, schedules and counts a filled entry.
    fn link(&mut self, slot: u32, deadline: u64) {
        let c = &mut self.conns[slot as usize];
        self.index.insert(&c.keys[0], slot, 0);
        self.index.insert(&c.keys[1], slot, 1);
        self.wheel.schedule(slot, deadline);
        if self.hosts.open(c.keys[0].src) {
            c.flags |= HOST;
        }
        let reply = c.keys[1];
        if let (Some(r), true) = (&self.redirects, self.foreign_reply(&reply)) {
            r.insert(reply, self.cfg.shard);
        }
    }

    /// Deletes entry `slot`; `emit`: push a delete delta if the peer knows
    /// it; `expired`: count it as expired.
    fn remove(&mut self, slot: u32, now_ms: u64, emit: bool, expired: bool) {
        let c = self.conns[slot as usize];
        debug_assert!(c.flags & LIVE != 0);
        let conns = &self.conns;
        for key in &c.keys {
            if let Some(hit) = self
                .index
                .find(key, |s, d| conns[s as usize].keys[d as usize])
            {
                self.index
                    .remove_at(hit.pos, |s, d| conns[s as usize].keys[d as usize]);
            }
        }
        self.wheel.unschedule(slot);
        if c.flags & HOST != 0 {
            self.hosts.close(c.keys[0].src);
        }
        if let (Some(r), true) = (&self.redirects, self.foreign_reply(&c.keys[1])) {
            r.remove(&c.keys[1], self.cfg.shard);
        }
        if c.flags & LARVAL != 0 {
            self.larval -= 1;
        }
        if emit && c.flags & (SYNCED | LARVAL) == SYNCED {
            self.emit(Delta {
                at_ms: now_ms,
                created_ms: c.created_ms,
                kind: DeltaKind::Delete { key: c.keys[0] },
            });
        }
        self.conns[slot as usize].flags = 0;
        self.free.push(slot);
        self.counters.deleted += 1;
        if expired {
            self.counters.expired += 1;
        }
    }

    fn emit(&mut self, d: Delta) {
        if self.deltas.push(d).is_ok() {
            self.counters.deltas += 1;
        } else {
            self.counters.deltas_dropped += 1;
            self.deltas.record_loss();
        }
    }

    /// After a creation or an accepted packet: the first sync of the
    /// connection once it is old enough, else an update on a state change
    /// or a refresh when due.
    fn sync_after_activity(&mut self, slot: u32, now_ms: u64, changed: bool) {
        let c = &self.conns[slot as usize];
        let created_ms = c.created_ms;
        let kind = match c.flags & (SYNC | SYNCED | LARVAL) {
            f if f == SYNC => {
                if now_ms.saturating_sub(c.created_ms) < self.cfg.sync_min_age_ms {
                    return;
                }
                DeltaKind::Create(self.snapshot_of(slot, now_ms))
            }
            f if f == SYNC | SYNCED => {
                if changed {
                    DeltaKind::Update(ConnUpdate {
                        key: c.keys[0],
                        state: c.state,
                        remaining_ms: c.deadline_ms.saturating_sub(now_ms),
                    })
                } else if now_ms.saturating_sub(c.last_sync_ms) >= self.cfg.refresh_interval_ms {
                    DeltaKind::Refresh {
                        key: c.keys[0],
                        remaining_ms: c.deadline_ms.saturating_sub(now_ms),
                    }
                } else {
                    return;
                }
            }
            _ => return,
        };
        let c = &mut self.conns[slot as usize];
        c.flags |= SYNCED;
        c.last_sync_ms = now_ms;
        self.emit(Delta {
            at_ms: now_ms,
            created_ms,
            kind,
        });
    }

    fn snapshot_of(&self, slot: u32, now_ms: u64) -> ConnSnapshot {
        let c = &self.conns[slot as usize];
        ConnSnapshot {
            orig: c.keys[0],
            nat: c.nat(),
            state: c.state,
            rule: c.rule,
            sync: c.sync(),
            log: c.log(),
            in_port: c.in_port,
            out_port: c.out_port,
            age_ms: now_ms.saturating_sub(c.created_ms),
            idle_ms: now_ms.saturating_sub(c.last_ms),
            remaining_ms: c.deadline_ms.saturating_sub(now_ms),
            packets: c.packets,
            bytes: c.bytes,
        }
    }
}
