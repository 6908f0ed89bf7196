//! The K2K session with one peer: sealing and authentication, replay and
//! epoch checks, version negotiation, sequencing, cumulative acks, NACKs,
//! retransmission from a bounded buffer, and bulk-resync signalling.
//!
//! Sans-IO: the caller feeds received datagrams (`handle_datagram`) and
//! timer expiries (`handle_timeout`), collects what to send
//! (`poll_transmit` into its own buffer) and what happened (`poll_record`,
//! `poll_event`, `poll_lag_sample`), and sleeps until `poll_timeout`.
//! Every call takes `now_ms` from one monotonic clock.
//!
//! Two sequence spaces per epoch: the reliable stream (seq 1, 2, ...;
//! records delivered exactly once, in order) and control datagrams (bit
//! 63 set: Hello, NACK, pure ack; never retransmitted, replay-checked with
//! a sliding window).

use super::crypto::{DirKey, Psk};
use super::wire::{
    decode_body, BodyInfo, BodyWriter, DecodeError, Header, Hello, Record, Serial, SessionId,
    CAP_ENCRYPT, CAP_UPDATE_REQUEST, CONTROL_SEQ_BIT, FLAG_ENCRYPTED, GROUP_HEADER_LEN, HEADER_LEN,
    MAX_DATAGRAM, MAX_RECORD_LEN, MIN_VERSION, NO_SESSION, OVERHEAD, TAG_LEN, VERSION,
};
use crate::conntrack::{BucketMask, Delta};
use crate::flow::FlowKey;
use std::collections::VecDeque;
use std::fmt;

/// Receive window in datagrams: the replay window, the reorder buffer and
/// the most datagrams a sender has in flight (unacknowledged).
pub const WINDOW: u64 = 1024;
/// Most missing ranges one NACK datagram carries.
pub const MAX_NACK_RANGES: usize = 64;
/// Most datagrams one retransmission timeout resends.
const RTO_BURST: usize = 16;
/// Most replication-lag samples kept for the caller.
const LAG_SAMPLES: usize = 4096;
/// Replaced session ids of the peer remembered (their datagrams are
/// refused as `stale_session`, so a replay cannot bring one back).
const RETIRED: usize = 16;
/// Least time between two Hellos sent in answer to something (a flood of
/// replayed Hellos gets at most this many answers).
const HELLO_GAP_MS: u64 = 5;
/// The smallest datagram size (MTU) a session accepts: room for one
/// record of every version-1 type.
pub const MIN_MTU: usize = OVERHEAD + GROUP_HEADER_LEN + MAX_RECORD_LEN;

/// Construction parameters of a [`Session`].
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// The HA cluster's identifier (datagrams of other clusters are
    /// dropped; also the HKDF salt).
    pub cluster_id: u32,
    /// This node's serial ([`super::serial_from_str`]).
    pub serial: Serial,
    /// The cluster's pre-shared key (or a key derived from it).
    pub psk: Psk,
    /// Encrypt the body ("encrypt communication between firewalls");
    /// datagrams are authenticated either way.
    pub encrypt: bool,
    /// This run's session id: random, drawn at every start
    /// ([`SessionConfig::new`] does), never all zero. Every key depends on
    /// it, so nothing this run sends shares a key with another run.
    pub session_id: SessionId,
    /// This run's boot number, shown to the peer for its log (no security
    /// role: the clock may go back, the session id protects).
    pub epoch: u32,
    /// Largest datagram (UDP payload) to send, in bytes (default 1400).
    pub mtu: usize,
    /// Sent datagrams kept for retransmission (default 1024; more than
    /// [`WINDOW`] is never used since no more are in flight).
    pub retransmit_capacity: usize,
    /// Records queued and not yet sent, at most (default 16384).
    pub queue_capacity: usize,
    /// Initial retransmission timeout before any round trip was measured
    /// (default 200 ms); then adaptive (RFC 6298), within min/max.
    pub rto_ms: u64,
    /// Lower bound of the adaptive timeout (default 20 ms).
    pub min_rto_ms: u64,
    /// Upper bound of the timeout, backoff included (default 2000 ms).
    pub max_rto_ms: u64,
    /// Longest a received datagram waits for its ack to be piggybacked
    /// before a pure ack is sent; also how long a gap may be reordering
    /// before it is NACKed (default 5 ms).
    pub ack_delay_ms: u64,
    /// Least time between two NACKs (default 20 ms).
    pub nack_interval_ms: u64,
    /// Hello period while the peer has not shown it heard us
    /// (default 1000 ms).
    pub hello_interval_ms: u64,
    /// Lowest protocol version spoken (default [`MIN_VERSION`]).
    pub min_version: u8,
    /// Highest protocol version spoken (default [`VERSION`]).
    pub max_version: u8,
    /// Accept only this peer serial (default: any but our own).
    pub peer_serial: Option<Serial>,
}

impl SessionConfig {
    /// A configuration with the defaults documented on each field and a
    /// fresh random session id.
    pub fn new(cluster_id: u32, serial: Serial, psk: Psk, epoch: u32) -> SessionConfig {
        SessionConfig {
            cluster_id,
            serial,
            psk,
            encrypt: false,
            session_id: random_session_id(),
            epoch,
            mtu: 1400,
            retransmit_capacity: WINDOW as usize,
            queue_capacity: 16384,
            rto_ms: 200,
            min_rto_ms: 20,
            max_rto_ms: 2000,
            ack_delay_ms: 5,
            nack_interval_ms: 20,
            hello_interval_ms: 1000,
            min_version: MIN_VERSION,
            max_version: VERSION,
            peer_serial: None,
        }
    }
}

/// 16 random bytes from the operating system's generator, never all
/// zero.
pub fn random_session_id() -> SessionId {
    use ring::rand::SecureRandom;
    let rng = ring::rand::SystemRandom::new();
    let mut id = NO_SESSION;
    while id == NO_SESSION {
        // The system generator does not fail on Linux once booted; should
        // it, the loop draws again.
        let _ = rng.fill(&mut id);
    }
    id
}

/// A [`SessionConfig`] that cannot work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// The pre-shared key is empty.
    EmptyPsk,
    /// The session id is all zero (reserved for "none").
    ZeroSession,
    /// The MTU is below [`MIN_MTU`] or above 65535.
    BadMtu,
    /// The retransmit or queue capacity is 0.
    ZeroCapacity,
    /// The version range is empty or starts at 0.
    BadVersions,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConfigError::EmptyPsk => "the HA pre-shared key is empty: set the cluster key",
            ConfigError::ZeroSession => "K2K session id all zero is reserved: draw a random one",
            ConfigError::BadMtu => "K2K MTU out of range (190..=65535 bytes)",
            ConfigError::ZeroCapacity => "K2K retransmit and queue capacities must be above 0",
            ConfigError::BadVersions => "K2K version range empty or starting at 0",
        })
    }
}

impl std::error::Error for ConfigError {}

/// Why a received datagram was dropped (one counter each).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DropReason {
    /// Shorter than a header and a tag.
    Truncated,
    /// Not a K2K datagram.
    BadMagic,
    /// A protocol version this node does not speak.
    UnknownVersion,
    /// Header-length field out of range.
    BadHeaderLength,
    /// Longer than any UDP payload.
    Oversize,
    /// Another cluster's datagram.
    WrongCluster,
    /// Carries our own serial (reflected back to us).
    Reflected,
    /// From a serial other than the configured peer's.
    WrongPeer,
    /// From (or to) a session of the peer (or of ours) that was replaced:
    /// a restart, or a replay of an old datagram.
    StaleSession,
    /// Already received (a replay, or a retransmission that crossed its
    /// ack).
    Replayed,
    /// Sequence number beyond the receive window.
    BeyondWindow,
    /// The tag does not verify (forged, tampered, truncated, wrong key).
    BadAuth,
    /// Authentic, but a group header is truncated.
    GroupHeaderTruncated,
    /// Authentic, but a group runs past the body.
    GroupTruncated,
    /// Authentic, but a known record is shorter than its type.
    RecordTooShort,
    /// Authentic, but a field is out of range.
    BadValue,
    /// Authentic, but a control datagram carries stream records.
    DataInControl,
    /// Authentic, but the Hello's serial or epoch differ from the header's.
    HelloMismatch,
    /// Authentic, but the peer's version range does not meet ours.
    IncompatibleVersion,
    /// Authentic data from a peer session whose Hello has not arrived
    /// yet (a Hello is requested).
    PeerNotReady,
}

impl DropReason {
    /// Number of reasons.
    pub const COUNT: usize = 20;
    /// Every reason, in discriminant order.
    pub const ALL: [DropReason; DropReason::COUNT] = [
        DropReason::Truncated,
        DropReason::BadMagic,
        DropReason::UnknownVersion,
        DropReason::BadHeaderLength,
        DropReason::Oversize,
        DropReason::WrongCluster,
        DropReason::Reflected,
        DropReason::WrongPeer,
        DropReason::StaleSession,
        DropReason::Replayed,
        DropReason::BeyondWindow,
        DropReason::BadAuth,
        DropReason::GroupHeaderTruncated,
        DropReason::GroupTruncated,
        DropReason::RecordTooShort,
        DropReason::BadValue,
        DropReason::DataInControl,
        DropReason::HelloMismatch,
        DropReason::IncompatibleVersion,
        DropReason::PeerNotReady,
    ];

    /// Snake-case name, for counters.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::BadMagic => "bad_magic",
            DropReason::UnknownVersion => "unknown_version",
            DropReason::BadHeaderLength => "bad_header_length",
            DropReason::Oversize => "oversize",
            DropReason::WrongCluster => "wrong_cluster",
            DropReason::Reflected => "reflected",
            DropReason::WrongPeer => "wrong_peer",
            DropReason::StaleSession => "stale_session",
            DropReason::Replayed => "replayed",
            DropReason::BeyondWindow => "beyond_window",
            DropReason::BadAuth => "bad_auth",
            DropReason::GroupHeaderTruncated => "group_header_truncated",
            DropReason::GroupTruncated => "group_truncated",
            DropReason::RecordTooShort => "record_too_short",
            DropReason::BadValue => "bad_value",
            DropReason::DataInControl => "data_in_control",
            DropReason::HelloMismatch => "hello_mismatch",
            DropReason::IncompatibleVersion => "incompatible_version",
            DropReason::PeerNotReady => "peer_not_ready",
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for DropReason {}

impl From<DecodeError> for DropReason {
    fn from(e: DecodeError) -> DropReason {
        match e {
            DecodeError::Truncated => DropReason::Truncated,
            DecodeError::BadMagic => DropReason::BadMagic,
            DecodeError::UnknownVersion => DropReason::UnknownVersion,
            DecodeError::BadHeaderLength => DropReason::BadHeaderLength,
            DecodeError::GroupHeaderTruncated => DropReason::GroupHeaderTruncated,
            DecodeError::GroupTruncated => DropReason::GroupTruncated,
            DecodeError::RecordTooShort => DropReason::RecordTooShort,
            DecodeError::BadValue => DropReason::BadValue,
        }
    }
}

/// Why the caller should send the peer a full bulk sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BulkReason {
    /// First contact with the peer.
    PeerUp,
    /// The peer restarted (new epoch): it has nothing of ours.
    PeerRestarted,
    /// The peer sent a BulkRequest.
    PeerRequested,
    /// The peer NACKed datagrams already dropped from the retransmit
    /// buffer: records were lost.
    StreamLost,
}

/// Something the caller must know or act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    /// First authenticated Hello from a peer.
    PeerUp {
        /// Its serial.
        serial: Serial,
        /// Its epoch.
        epoch: u32,
        /// The version both now speak.
        version: u8,
    },
    /// The peer came back with a new epoch; the session's state with it
    /// was reset (queued and unacknowledged records discarded).
    PeerRestarted {
        /// The epoch it had.
        old_epoch: u32,
        /// The epoch it has.
        new_epoch: u32,
        /// The version both now speak.
        version: u8,
    },
    /// Send the peer a full bulk (`start_bulk`, a ConnCreate per
    /// connection, `end_bulk`) if this node is the one that holds state.
    BulkNeeded(BulkReason),
    /// The peer asks for a bulk of some digest buckets only (its verify
    /// found them different).
    RepairRequested {
        /// The buckets.
        mask: BucketMask,
    },
    /// A bulk from the peer ended (its BulkEnd was delivered).
    BulkReceived {
        /// Bulk identifier.
        id: u32,
        /// ConnCreate records the peer says it sent.
        sent: u64,
        /// ConnCreate records delivered between its BulkStart and BulkEnd.
        received: u64,
    },
    /// The peer's stream skipped datagrams it can no longer resend: their
    /// records are lost (the peer was told to send a bulk).
    RecordsLost {
        /// Datagrams skipped.
        datagrams: u64,
        /// Where in the record stream the hole is: the number of records
        /// delivered (through [`Session::poll_record`]) before it. The
        /// records after it, a bulk among them, may already be queued.
        at_record: u64,
    },
    /// The peer speaks no version in our range; nothing is exchanged.
    VersionMismatch {
        /// Its lowest version.
        peer_min: u8,
        /// Its highest version.
        peer_max: u8,
    },
}

/// Why [`Session::queue`] refused a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QueueError {
    /// No peer known yet: nothing to send to (it gets a bulk on
    /// [`Event::PeerUp`]).
    PeerDown,
    /// The send queue is full (the record is lost: the caller should
    /// slow a bulk down with [`Session::queue_space`] or plan a bulk).
    Full,
    /// Hello and NACK are the session's own.
    Control,
    /// `end_bulk` without `start_bulk`.
    NoBulk,
}

impl fmt::Display for QueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QueueError::PeerDown => "no K2K peer yet",
            QueueError::Full => "K2K send queue full",
            QueueError::Control => "control records are not queued by the caller",
            QueueError::NoBulk => "no bulk in progress",
        })
    }
}

impl std::error::Error for QueueError {}

/// One replication-lag measurement: `records` records were acknowledged
/// by the peer `lag_ms` after the oldest of them was queued (record it
/// `records` times in a histogram, or once per datagram).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LagSample {
    /// From queueing to the peer's ack, in milliseconds.
    pub lag_ms: u64,
    /// Records the sample covers.
    pub records: u32,
}

/// What is known of the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// Its serial.
    pub serial: Serial,
    /// Its current session id.
    pub session: SessionId,
    /// Its boot number (for the log).
    pub epoch: u32,
    /// Its lowest version.
    pub min_version: u8,
    /// Its highest version.
    pub max_version: u8,
    /// Its `CAP_*` bits.
    pub capabilities: u32,
}

/// Session counters (monotonic).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Datagrams sent (all kinds, retransmissions included).
    pub datagrams_sent: u64,
    /// New stream datagrams sent.
    pub data_datagrams_sent: u64,
    /// Control datagrams sent (Hello, NACK, pure ack).
    pub control_datagrams_sent: u64,
    /// Bytes sent (all datagrams).
    pub bytes_sent: u64,
    /// Records sent in new stream datagrams.
    pub records_sent: u64,
    /// Stream datagrams acknowledged by the peer.
    pub datagrams_acked: u64,
    /// Records acknowledged by the peer.
    pub records_acked: u64,
    /// Datagrams retransmitted (NACK or timeout).
    pub retransmits: u64,
    /// Retransmission timeouts that fired.
    pub rto_expirations: u64,
    /// Unacknowledged datagrams pushed out of the retransmit buffer.
    pub evicted_unacked: u64,
    /// Records refused because the queue was full.
    pub queue_full: u64,
    /// Records refused because no peer was known.
    pub queue_peer_down: u64,
    /// Datagrams accepted.
    pub datagrams_received: u64,
    /// Bytes of datagrams accepted.
    pub bytes_received: u64,
    /// Records delivered to the caller.
    pub records_received: u64,
    /// Stream datagrams that arrived ahead of a gap.
    pub out_of_order: u64,
    /// Record groups of unknown types skipped.
    pub unknown_groups: u64,
    /// Records in those groups.
    pub unknown_records: u64,
    /// Stream datagrams of the peer skipped as lost.
    pub lost_datagrams: u64,
    /// NACK datagrams sent.
    pub nacks_sent: u64,
    /// Missing ranges NACKed.
    pub nack_ranges_sent: u64,
    /// Datagrams with NACKs received.
    pub nacks_received: u64,
    /// Pure acks sent.
    pub acks_sent: u64,
    /// Hellos sent.
    pub hellos_sent: u64,
    /// Hellos received.
    pub hellos_received: u64,
    /// Keepalives sent.
    pub keepalives_sent: u64,
    /// Keepalives received.
    pub keepalives_received: u64,
    /// `BulkNeeded` events raised.
    pub bulks_needed: u64,
    /// Bulks started (`start_bulk`).
    pub bulks_sent: u64,
    /// Bulks received complete (BulkEnd delivered).
    pub bulks_received: u64,
    /// Peer restarts seen.
    pub peer_restarts: u64,
    /// Lag samples discarded because the caller did not collect them.
    pub lag_samples_dropped: u64,
    /// Changes of the key we send under ([`Session::set_keys`]).
    pub key_changes: u64,
    /// Unacknowledged datagrams sealed again under a new key.
    pub resealed: u64,
    /// Datagrams dropped, per [`DropReason`].
    pub drops: [u64; DropReason::COUNT],
}

impl Counters {
    /// Datagrams dropped for `r`.
    pub fn dropped(&self, r: DropReason) -> u64 {
        self.drops[r as usize]
    }

    /// Datagrams dropped for any reason.
    pub fn dropped_total(&self) -> u64 {
        self.drops.iter().sum()
    }
}

/// A record waiting to be sent.
#[derive(Debug)]
struct Pending {
    queued_ms: u64,
    rec: Record,
}

/// A sent stream datagram kept for retransmission.
#[derive(Debug)]
struct Sent {
    seq: u64,
    bytes: Vec<u8>,
    first_sent_ms: u64,
    last_sent_ms: u64,
    retransmitted: bool,
    pending_rtx: bool,
    oldest_queued_ms: u64,
    records: u32,
}

/// A reorder-buffer slot (index `seq % WINDOW`).
#[derive(Debug, Default)]
struct Slot {
    seq: u64,
    present: bool,
    records: Vec<Record>,
}

/// Sliding replay window over control sequence numbers.
#[derive(Debug)]
struct ReplayWindow {
    top: u64,
    bits: [u64; (WINDOW / 64) as usize],
}

impl ReplayWindow {
    fn new() -> ReplayWindow {
        ReplayWindow {
            top: 0,
            bits: [0; (WINDOW / 64) as usize],
        }
    }

    fn bit(s: u64) -> (usize, u64) {
        let i = s % WINDOW;
        ((i / 64) as usize, 1 << (i % 64))
    }

    fn is_new(&self, s: u64) -> bool {
        if s == 0 {
            return false;
        }
        if s > self.top {
            return true;
        }
        if self.top - s >= WINDOW {
            return false;
        }
        let (w, m) = Self::bit(s);
        self.bits[w] & m == 0
    }

    fn commit(&mut self, s: u64) {
        if s > self.top {
            if s - self.top >= WINDOW {
                self.bits = [0; (WINDOW / 64) as usize];
            } else {
                for x in self.top + 1..=s {
                    let (w, m) = Self::bit(x);
                    self.bits[w] &= !m;
                }
            }
            self.top = s;
        }
        let (w, m) = Self::bit(s);
        self.bits[w] |= m;
    }
}

/// Round-trip estimate and retransmission timeout (RFC 6298, ms).
#[derive(Debug)]
struct Rtt {
    srtt: Option<u64>,
    rttvar: u64,
    rto: u64,
    backoff: u32,
    min: u64,
    max: u64,
}

impl Rtt {
    fn sample(&mut self, r: u64) {
        match self.srtt {
            None => {
                self.srtt = Some(r);
                self.rttvar = r / 2;
            }
            Some(s) => {
                self.rttvar = (3 * self.rttvar + s.abs_diff(r)) / 4;
                self.srtt = Some((7 * s + r) / 8);
            }
        }
        let s = self.srtt.unwrap_or(r);
        self.rto = (s + (4 * self.rttvar).max(1)).clamp(self.min, self.max);
    }

    fn current(&self) -> u64 {
        self.rto
            .saturating_mul(1 << self.backoff.min(16))
            .min(self.max)
    }
}

/// The K2K state-sync session with one peer (see the module doc).
pub struct Session {
    cfg: SessionConfig,
    /// Seals what we send before we know the peer's session (Hellos).
    tx_hello: DirKey,
    /// Seals what we send to the peer's current session.
    tx_data: Option<DirKey>,
    /// Opens what the peer's current session sends us.
    rx_data: Option<DirKey>,
    /// The last key derived for a datagram from an unknown session.
    rx_other: Option<(Serial, SessionId, SessionId, DirKey)>,
    /// During a key change, the other key, also accepted
    /// ([`Session::set_keys`]).
    alt_psk: Option<Psk>,
    /// Opens what the peer's current session sends under `alt_psk`.
    rx_data_alt: Option<DirKey>,
    /// Session ids of the peer that were replaced.
    retired: VecDeque<(Serial, SessionId)>,
    /// A session that sent us a Hello without knowing ours: our next
    /// Hello goes to it, so that it can answer with proof.
    reply_to: Option<SessionId>,
    last_hello_ms: Option<u64>,
    last_rx_ms: Option<u64>,
    keepalive_in: Option<(u8, u8)>,
    /// Version stamped on outgoing datagrams (negotiated, or our lowest
    /// before the peer's Hello).
    version: u8,

    // Send side.
    next_seq: u64,
    ctrl_seq: u64,
    snd_una: u64,
    pending: VecDeque<Pending>,
    sent: VecDeque<Sent>,
    pool: Vec<Vec<u8>>,
    rtx: VecDeque<u64>,
    rtt: Rtt,
    rto_deadline: Option<u64>,
    lost_reported_base: u64,
    /// Records ever pushed to `records` (positions for `RecordsLost`).
    records_delivered: u64,
    next_bulk_id: u32,
    bulk_tx: Option<(u32, u64)>,

    // Peer and receive side.
    peer: Option<PeerInfo>,
    peer_knows_us: bool,
    mismatch_reported: Option<(Serial, u32)>,
    hello_now: bool,
    hello_next_ms: u64,
    rcv_next: u64,
    rcv_highest: u64,
    slots: Vec<Slot>,
    ctrl_window: ReplayWindow,
    ack_due_ms: Option<u64>,
    gap_since_ms: Option<u64>,
    last_nack_ms: Option<u64>,
    bulk_rx: Option<(u32, u64)>,
    staging: Vec<Record>,
    scratch: Vec<u8>,

    // Output to the caller.
    records: VecDeque<Record>,
    events: VecDeque<Event>,
    lag: VecDeque<LagSample>,
    counters: Counters,

    /// Test builds: an extra raw record group appended to every stream
    /// datagram (a "version 2" record type a version-1 peer must skip).
    extension: Option<(u8, Vec<u8>)>,
}

/// Seals a sent datagram `bytes` (sealed under `old`) again under `new`,
/// same header and body; false if it does not open under `old` (it was
/// sealed for another session of the peer: left as it is).
fn reseal(
    old: &DirKey,
    new: &DirKey,
    bytes: &mut [u8],
    scratch: &mut Vec<u8>,
    cfg: &SessionConfig,
) -> bool {
    let Ok((h, hdr_len)) = Header::parse(bytes, cfg.min_version, cfg.max_version) else {
        return false;
    };
    if bytes.len() < hdr_len + TAG_LEN {
        return false;
    }
    if scratch.len() < bytes.len() {
        scratch.resize(bytes.len(), 0);
    }
    let enc = h.is_encrypted();
    let body = match old.open(enc, h.seq, bytes, hdr_len, scratch) {
        Ok(b) => b.to_vec(),
        Err(_) => return false,
    };
    bytes[hdr_len..hdr_len + body.len()].copy_from_slice(&body);
    new.seal(enc, h.seq, bytes, hdr_len, body.len());
    true
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("epoch", &self.cfg.epoch)
            .field("version", &self.version)
            .field("peer", &self.peer)
            .field("next_seq", &self.next_seq)
            .field("snd_una", &self.snd_una)
            .field("rcv_next", &self.rcv_next)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A session that introduces itself (Hello) at the first
    /// `poll_transmit`.
    pub fn new(cfg: SessionConfig) -> Result<Session, ConfigError> {
        if cfg.psk.is_empty() {
            return Err(ConfigError::EmptyPsk);
        }
        if cfg.session_id == NO_SESSION {
            return Err(ConfigError::ZeroSession);
        }
        if cfg.mtu < MIN_MTU || cfg.mtu > MAX_DATAGRAM {
            return Err(ConfigError::BadMtu);
        }
        if cfg.retransmit_capacity == 0 || cfg.queue_capacity == 0 {
            return Err(ConfigError::ZeroCapacity);
        }
        if cfg.min_version == 0 || cfg.min_version > cfg.max_version {
            return Err(ConfigError::BadVersions);
        }
        let tx_hello = DirKey::hello(&cfg.psk, cfg.cluster_id, &cfg.serial, &cfg.session_id);
        let cap = cfg.retransmit_capacity.min(WINDOW as usize);
        Ok(Session {
            version: cfg.min_version,
            tx_hello,
            tx_data: None,
            rx_data: None,
            rx_other: None,
            alt_psk: None,
            rx_data_alt: None,
            retired: VecDeque::with_capacity(RETIRED),
            reply_to: None,
            last_hello_ms: None,
            last_rx_ms: None,
            keepalive_in: None,
            next_seq: 1,
            ctrl_seq: 1,
            snd_una: 1,
            pending: VecDeque::with_capacity(cfg.queue_capacity.min(1 << 16)),
            sent: VecDeque::with_capacity(cap),
            pool: Vec::with_capacity(cap),
            rtx: VecDeque::with_capacity(cap),
            rtt: Rtt {
                srtt: None,
                rttvar: 0,
                rto: cfg.rto_ms.clamp(cfg.min_rto_ms, cfg.max_rto_ms),
                backoff: 0,
                min: cfg.min_rto_ms,
                max: cfg.max_rto_ms,
            },
            rto_deadline: None,
            lost_reported_base: 0,
            records_delivered: 0,
            next_bulk_id: 1,
            bulk_tx: None,
            peer: None,
            peer_knows_us: false,
            mismatch_reported: None,
            hello_now: true,
            hello_next_ms: 0,
            rcv_next: 1,
            rcv_highest: 0,
            slots: (0..WINDOW).map(|_| Slot::default()).collect(),
            ctrl_window: ReplayWindow::new(),
            ack_due_ms: None,
            gap_since_ms: None,
            last_nack_ms: None,
            bulk_rx: None,
            staging: Vec::new(),
            scratch: vec![0; MAX_DATAGRAM],
            records: VecDeque::new(),
            events: VecDeque::new(),
            lag: VecDeque::new(),
            counters: Counters::default(),
            extension: None,
            cfg,
        })
    }

    // ----- Queueing (the sync core's records in). -----

    /// Queues a stream record for the peer, stamped `now_ms` for the lag
    /// measurement.
    pub fn queue(&mut self, now_ms: u64, r: &Record) -> Result<(), QueueError> {
        if r.record_type().is_control() {
            return Err(QueueError::Control);
        }
        if self.peer.is_none() {
            self.counters.queue_peer_down += 1;
            return Err(QueueError::PeerDown);
        }
        if self.pending.len() >= self.cfg.queue_capacity {
            self.counters.queue_full += 1;
            return Err(QueueError::Full);
        }
        if let (Some((_, n)), Record::ConnCreate(_)) = (&mut self.bulk_tx, r) {
            *n += 1;
        }
        self.pending.push_back(Pending {
            queued_ms: now_ms,
            rec: *r,
        });
        Ok(())
    }

    /// Queues a conntrack delta; its `at_ms` (the worker's clock, the same
    /// monotonic clock) starts the lag measurement.
    pub fn queue_delta(&mut self, d: &Delta) -> Result<(), QueueError> {
        self.queue(d.at_ms, &Record::from_delta(d))
    }

    /// Starts a bulk: queues BulkStart and counts the ConnCreate records
    /// queued until [`Session::end_bulk`]. Returns the bulk's id.
    pub fn start_bulk(&mut self, now_ms: u64) -> Result<u32, QueueError> {
        self.start_partial_bulk(now_ms, BucketMask::ALL)
    }

    /// Starts a bulk of the connections in the digest buckets of `mask`
    /// (a repair; [`BucketMask::ALL`]: the whole table).
    pub fn start_partial_bulk(&mut self, now_ms: u64, mask: BucketMask) -> Result<u32, QueueError> {
        let id = self.next_bulk_id;
        self.queue(now_ms, &Record::BulkStart { id, mask })?;
        self.next_bulk_id = self.next_bulk_id.wrapping_add(1).max(1);
        self.bulk_tx = Some((id, 0));
        self.counters.bulks_sent += 1;
        Ok(id)
    }

    /// Ends the bulk: queues BulkEnd with the number of ConnCreate records
    /// it carried, which it returns.
    pub fn end_bulk(&mut self, now_ms: u64) -> Result<u64, QueueError> {
        let (id, count) = self.bulk_tx.ok_or(QueueError::NoBulk)?;
        self.queue(now_ms, &Record::BulkEnd { id, count })?;
        self.bulk_tx = None;
        Ok(count)
    }

    /// Asks the peer for a full bulk sync.
    pub fn request_bulk(&mut self, now_ms: u64) -> Result<(), QueueError> {
        self.request_repair(now_ms, BucketMask::ALL)
    }

    /// Asks the peer for a bulk of the digest buckets in `mask`.
    pub fn request_repair(&mut self, now_ms: u64, mask: BucketMask) -> Result<(), QueueError> {
        let id = self.next_bulk_id;
        self.next_bulk_id = self.next_bulk_id.wrapping_add(1).max(1);
        self.queue(now_ms, &Record::BulkRequest { id, mask })
    }

    /// Asks the peer for one connection (it answers with a ConnCreate).
    pub fn request_update(&mut self, now_ms: u64, key: FlowKey) -> Result<(), QueueError> {
        self.queue(now_ms, &Record::UpdateRequest { key })
    }

    /// Records that can still be queued.
    pub fn queue_space(&self) -> usize {
        self.cfg.queue_capacity.saturating_sub(self.pending.len())
    }

    // ----- Receiving. -----

    /// Handles one received datagram. Accepted records become available
    /// from [`Session::poll_record`]; a dropped datagram changes nothing
    /// but its reason's counter.
    pub fn handle_datagram(&mut self, now_ms: u64, datagram: &[u8]) -> Result<(), DropReason> {
        let r = self.receive(now_ms, datagram);
        if let Err(reason) = r {
            self.counters.drops[reason as usize] += 1;
        }
        r
    }

    fn receive(&mut self, now: u64, d: &[u8]) -> Result<(), DropReason> {
        if d.len() > MAX_DATAGRAM {
            return Err(DropReason::Oversize);
        }
        let (h, hdr_len) = Header::parse(d, self.cfg.min_version, self.cfg.max_version)?;
        if h.cluster_id != self.cfg.cluster_id {
            return Err(DropReason::WrongCluster);
        }
        if h.serial == self.cfg.serial {
            return Err(DropReason::Reflected);
        }
        if self.cfg.peer_serial.is_some_and(|p| p != h.serial) {
            return Err(DropReason::WrongPeer);
        }
        if h.session == NO_SESSION {
            return Err(DropReason::BadHeaderLength);
        }
        if self.retired.contains(&(h.serial, h.session)) {
            return Err(DropReason::StaleSession);
        }
        let to_us = h.peer_session == self.cfg.session_id;
        if h.peer_session != NO_SESSION && !to_us {
            // Sealed for a run of ours that is gone (we restarted, or a
            // replay): tell the sender who we are now.
            self.want_hello(now);
            return Err(DropReason::StaleSession);
        }
        let current = self
            .peer
            .as_ref()
            .is_some_and(|p| p.serial == h.serial && p.session == h.session);
        // Cheap checks before the AEAD: replay within the current session.
        // A duplicate stream datagram is still authenticated: if genuine,
        // the peer missed our ack and gets another one.
        let mut duplicate = false;
        if current && to_us {
            match self.check_replay(&h) {
                Err(DropReason::Replayed) if !h.is_control() => duplicate = true,
                r => r?,
            }
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut staging = std::mem::take(&mut self.staging);
        staging.clear();
        let r = self.open_and_decode(&h, hdr_len, d, current, &mut scratch, &mut staging);
        self.scratch = scratch;
        if duplicate {
            self.staging = staging;
            r?;
            self.ack_due_ms.get_or_insert(now + self.cfg.ack_delay_ms);
            return Err(DropReason::Replayed);
        }
        let r = r.and_then(|info| {
            if to_us {
                self.accept(now, &h, &staging, info, d.len(), current)
            } else {
                self.accept_hello_only(now, &h, &staging)
            }
        });
        self.staging = staging;
        r
    }

    /// Asks for a Hello soon (at most one every [`HELLO_GAP_MS`]).
    fn want_hello(&mut self, now: u64) {
        if self.last_hello_ms.is_none_or(|t| now >= t + HELLO_GAP_MS) {
            self.hello_now = true;
        }
    }

    fn check_replay(&self, h: &Header) -> Result<(), DropReason> {
        if h.is_control() {
            return if self.ctrl_window.is_new(h.seq & !CONTROL_SEQ_BIT) {
                Ok(())
            } else {
                Err(DropReason::Replayed)
            };
        }
        if h.seq < self.rcv_next {
            return Err(DropReason::Replayed);
        }
        if h.seq >= self.rcv_next.saturating_add(WINDOW) {
            return Err(DropReason::BeyondWindow);
        }
        let s = &self.slots[(h.seq % WINDOW) as usize];
        if s.present && s.seq == h.seq {
            return Err(DropReason::Replayed);
        }
        Ok(())
    }

    /// Authenticates with the key the header names: the peer's current
    /// session's data key, a data key for a new session of the peer that
    /// knows ours, or a hello key; during a key change, under the other
    /// key when the current one fails.
    fn open_and_decode(
        &mut self,
        h: &Header,
        hdr_len: usize,
        d: &[u8],
        current: bool,
        scratch: &mut [u8],
        staging: &mut Vec<Record>,
    ) -> Result<BodyInfo, DropReason> {
        let enc = h.is_encrypted();
        if current && h.peer_session != NO_SESSION {
            if let Some(k) = &self.rx_data {
                if let Ok(body) = k.open(enc, h.seq, d, hdr_len, scratch) {
                    return Ok(decode_body(body, |r| staging.push(r))?);
                }
                let k = self.rx_data_alt.as_ref().ok_or(DropReason::BadAuth)?;
                let body = k
                    .open(enc, h.seq, d, hdr_len, scratch)
                    .map_err(|_| DropReason::BadAuth)?;
                return Ok(decode_body(body, |r| staging.push(r))?);
            }
        }
        let cached = self
            .rx_other
            .as_ref()
            .is_some_and(|(s, a, b, _)| *s == h.serial && *a == h.session && *b == h.peer_session);
        if !cached {
            let k = DirKey::for_header(&self.cfg.psk, h);
            self.rx_other = Some((h.serial, h.session, h.peer_session, k));
        }
        if let Some((_, _, _, k)) = &self.rx_other {
            if let Ok(body) = k.open(enc, h.seq, d, hdr_len, scratch) {
                return Ok(decode_body(body, |r| staging.push(r))?);
            }
        }
        let alt = self.alt_psk.as_ref().ok_or(DropReason::BadAuth)?;
        let k = DirKey::for_header(alt, h);
        let body = k
            .open(enc, h.seq, d, hdr_len, scratch)
            .map_err(|_| DropReason::BadAuth)?;
        Ok(decode_body(body, |r| staging.push(r))?)
    }

    /// A change of the cluster key (HA-REFERENCE F8): `current` seals all
    /// we send from now on, and `other` (the new key while the change is
    /// staged, the old one once it is committed) is accepted too until the
    /// next call. When `current` changes, the datagrams waiting for an ack
    /// are sealed again under it (same sequence numbers, same bytes inside),
    /// so that no retransmission depends on the key being retired. The
    /// session, its sequence numbers and its queue go on: nothing is lost
    /// and no bulk is needed.
    pub fn set_keys(&mut self, current: Psk, other: Option<Psk>) {
        if !current.same_as(&self.cfg.psk) {
            let old_tx = self.tx_data.take();
            self.cfg.psk = current;
            self.tx_hello = DirKey::hello(
                &self.cfg.psk,
                self.cfg.cluster_id,
                &self.cfg.serial,
                &self.cfg.session_id,
            );
            if let Some(p) = &self.peer {
                let (serial, session) = (p.serial, p.session);
                self.tx_data = Some(DirKey::data(
                    &self.cfg.psk,
                    self.cfg.cluster_id,
                    &self.cfg.serial,
                    &self.cfg.session_id,
                    &session,
                ));
                self.rx_data = Some(DirKey::data(
                    &self.cfg.psk,
                    self.cfg.cluster_id,
                    &serial,
                    &session,
                    &self.cfg.session_id,
                ));
            }
            if let (Some(old), Some(new)) = (&old_tx, &self.tx_data) {
                let mut scratch = std::mem::take(&mut self.scratch);
                for s in &mut self.sent {
                    if reseal(old, new, &mut s.bytes, &mut scratch, &self.cfg) {
                        self.counters.resealed += 1;
                    }
                }
                self.scratch = scratch;
            }
            self.counters.key_changes += 1;
        }
        self.rx_other = None;
        self.alt_psk = other;
        self.rx_data_alt = self.alt_rx_data();
    }

    /// The data key of the peer's current session under `alt_psk`.
    fn alt_rx_data(&self) -> Option<DirKey> {
        let (alt, p) = (self.alt_psk.as_ref()?, self.peer.as_ref()?);
        Some(DirKey::data(
            alt,
            self.cfg.cluster_id,
            &p.serial,
            &p.session,
            &self.cfg.session_id,
        ))
    }

    /// An authentic datagram sealed with the hello key: its sender does
    /// not know our session. Only a Hello counts, and it changes nothing
    /// but our next Hello, which goes to that session (a replayed Hello
    /// gets an answer that nobody can use).
    fn accept_hello_only(
        &mut self,
        now: u64,
        h: &Header,
        recs: &[Record],
    ) -> Result<(), DropReason> {
        let mut hello = None;
        for r in recs {
            match r {
                Record::Hello(x) => hello = Some(*x),
                _ => return Err(DropReason::DataInControl),
            }
        }
        let Some(x) = hello else {
            return Err(DropReason::PeerNotReady);
        };
        if x.serial != h.serial {
            return Err(DropReason::HelloMismatch);
        }
        self.counters.hellos_received += 1;
        self.reply_to = Some(h.session);
        self.want_hello(now);
        Ok(())
    }

    /// Applies an authentic, well-formed datagram sealed for our session
    /// (or drops it whole). `current`: from the peer's current session;
    /// otherwise it must carry a Hello and starts a new peer session
    /// (its key involves our session id, so it cannot be a replay from
    /// before we started).
    fn accept(
        &mut self,
        now: u64,
        h: &Header,
        recs: &[Record],
        info: BodyInfo,
        len: usize,
        current: bool,
    ) -> Result<(), DropReason> {
        let control = h.is_control();
        let mut hello = None;
        let mut nacks = false;
        let mut keepalive = None;
        for r in recs {
            match r {
                Record::Hello(x) => hello = Some(*x),
                Record::Nack { .. } => nacks = true,
                Record::Keepalive { link, heard } => keepalive = Some((*link, *heard)),
                _ if control => return Err(DropReason::DataInControl),
                _ => {}
            }
        }
        if let Some(x) = &hello {
            if x.serial != h.serial {
                return Err(DropReason::HelloMismatch);
            }
        }
        if !current {
            let Some(x) = hello else {
                self.want_hello(now);
                return Err(DropReason::PeerNotReady);
            };
            let lo = self.cfg.min_version.max(x.min_version);
            let hi = self.cfg.max_version.min(x.max_version);
            if hi < lo {
                if self.mismatch_reported != Some((h.serial, x.epoch)) {
                    self.mismatch_reported = Some((h.serial, x.epoch));
                    self.events.push_back(Event::VersionMismatch {
                        peer_min: x.min_version,
                        peer_max: x.max_version,
                    });
                }
                return Err(DropReason::IncompatibleVersion);
            }
            self.reset_peer(h, &x, hi);
            self.check_replay(h)?;
        }

        // Accepted: from here on nothing is refused.
        self.counters.datagrams_received += 1;
        self.counters.bytes_received += len as u64;
        self.counters.unknown_groups += info.unknown_groups as u64;
        self.counters.unknown_records += info.unknown_records as u64;
        self.last_rx_ms = Some(now);
        self.peer_knows_us = true;
        if control {
            self.ctrl_window.commit(h.seq & !CONTROL_SEQ_BIT);
        }
        self.on_ack(now, h.ack);
        if let Some(x) = &hello {
            self.on_hello(x);
        }
        if let Some(k) = keepalive {
            self.counters.keepalives_received += 1;
            self.keepalive_in = Some(k);
        }
        if nacks {
            self.counters.nacks_received += 1;
            for r in recs {
                if let Record::Nack { first, last } = *r {
                    self.on_nack(now, first, last);
                }
            }
        }
        if !control {
            self.on_data(now, h.seq, recs);
        }
        Ok(())
    }

    /// A new peer session (first contact, restart, or another serial):
    /// both directions start over, with keys of the new pair of sessions.
    fn reset_peer(&mut self, h: &Header, x: &Hello, version: u8) {
        let old = self.peer.replace(PeerInfo {
            serial: h.serial,
            session: h.session,
            epoch: x.epoch,
            min_version: x.min_version,
            max_version: x.max_version,
            capabilities: x.capabilities,
        });
        self.version = version;
        let psk = &self.cfg.psk;
        self.tx_data = Some(DirKey::data(
            psk,
            self.cfg.cluster_id,
            &self.cfg.serial,
            &self.cfg.session_id,
            &h.session,
        ));
        self.rx_data = Some(DirKey::data(
            psk,
            self.cfg.cluster_id,
            &h.serial,
            &h.session,
            &self.cfg.session_id,
        ));
        self.rx_data_alt = self.alt_rx_data();
        if self.reply_to == Some(h.session) {
            self.reply_to = None;
        }
        match old {
            Some(o) if o.serial == h.serial => {
                if self.retired.len() >= RETIRED {
                    self.retired.pop_front();
                }
                self.retired.push_back((o.serial, o.session));
                self.counters.peer_restarts += 1;
                self.events.push_back(Event::PeerRestarted {
                    old_epoch: o.epoch,
                    new_epoch: x.epoch,
                    version,
                });
                self.bulk_needed(BulkReason::PeerRestarted);
            }
            _ => {
                self.events.push_back(Event::PeerUp {
                    serial: h.serial,
                    epoch: x.epoch,
                    version,
                });
                self.bulk_needed(BulkReason::PeerUp);
            }
        }
        // Receive side: the peer's stream starts at its base.
        self.rcv_next = x.base_seq.max(1);
        self.rcv_highest = self.rcv_next - 1;
        for s in &mut self.slots {
            s.present = false;
            s.records.clear();
        }
        self.ctrl_window = ReplayWindow::new();
        self.ack_due_ms = None;
        self.gap_since_ms = None;
        self.last_nack_ms = None;
        self.bulk_rx = None;
        self.keepalive_in = None;
        // Send side: what was queued or in flight was for the old
        // instance; the bulk replaces it.
        self.pending.clear();
        while let Some(s) = self.sent.pop_front() {
            self.pool.push(s.bytes);
        }
        self.rtx.clear();
        self.snd_una = self.next_seq;
        self.rto_deadline = None;
        self.rtt.backoff = 0;
        self.lost_reported_base = 0;
        self.bulk_tx = None;
        self.peer_knows_us = true;
        // Our Hello tells the new session our base and proves that we
        // heard it (it is sealed with the new data key).
        self.hello_now = true;
    }

    fn bulk_needed(&mut self, why: BulkReason) {
        self.counters.bulks_needed += 1;
        self.events.push_back(Event::BulkNeeded(why));
    }

    fn on_hello(&mut self, x: &Hello) {
        self.counters.hellos_received += 1;
        if let Some(p) = &mut self.peer {
            p.min_version = x.min_version;
            p.max_version = x.max_version;
            p.capabilities = x.capabilities;
        }
        if x.base_seq > self.rcv_next {
            // The peer cannot resend what is below its base: skip it.
            let span = x.base_seq - self.rcv_next;
            let mut present = 0;
            for seq in self.rcv_next..self.rcv_next + span.min(WINDOW) {
                let s = &mut self.slots[(seq % WINDOW) as usize];
                if s.present && s.seq == seq {
                    s.present = false;
                    s.records.clear();
                    present += 1;
                }
            }
            let lost = span - present;
            self.counters.lost_datagrams += lost;
            self.events.push_back(Event::RecordsLost {
                datagrams: lost,
                at_record: self.records_delivered,
            });
            self.rcv_next = x.base_seq;
            self.rcv_highest = self.rcv_highest.max(self.rcv_next - 1);
            self.deliver_in_order();
            self.update_gap_after_delivery();
        }
        if x.reply {
            self.hello_now = true;
        }
    }

    fn on_ack(&mut self, now: u64, ack: u64) {
        if self.peer.is_none() {
            return;
        }
        if ack < self.snd_una || ack >= self.next_seq {
            return;
        }
        let mut rtt = None;
        while self.sent.front().is_some_and(|s| s.seq <= ack) {
            let Some(s) = self.sent.pop_front() else {
                break;
            };
            self.counters.datagrams_acked += 1;
            self.counters.records_acked += u64::from(s.records);
            if self.lag.len() >= LAG_SAMPLES {
                self.lag.pop_front();
                self.counters.lag_samples_dropped += 1;
            }
            self.lag.push_back(LagSample {
                lag_ms: now.saturating_sub(s.oldest_queued_ms),
                records: s.records,
            });
            if !s.retransmitted {
                rtt = Some(now.saturating_sub(s.first_sent_ms));
            }
            self.pool.push(s.bytes);
        }
        self.snd_una = ack + 1;
        if let Some(r) = rtt {
            self.rtt.sample(r);
        }
        self.rtt.backoff = 0;
        self.rto_deadline = if self.sent.is_empty() {
            None
        } else {
            Some(now + self.rtt.current())
        };
    }

    fn on_nack(&mut self, now: u64, first: u64, last: u64) {
        let first = first.max(self.snd_una);
        let last = last.min(self.next_seq.saturating_sub(1));
        if first > last {
            return;
        }
        let base = self.sent.front().map_or(self.next_seq, |s| s.seq);
        if first < base {
            if self.lost_reported_base != base {
                self.lost_reported_base = base;
                self.bulk_needed(BulkReason::StreamLost);
            }
            // Tell the peer where the stream resumes.
            self.hello_now = true;
        }
        // Do not resend what was (re)sent less than a round trip ago.
        let min_gap = self.rtt.srtt.unwrap_or(0);
        for seq in first.max(base)..=last {
            let Some(s) = self.sent.get_mut((seq - base) as usize) else {
                break;
            };
            if !s.pending_rtx && now.saturating_sub(s.last_sent_ms) >= min_gap {
                s.pending_rtx = true;
                self.rtx.push_back(seq);
            }
        }
    }

    fn on_data(&mut self, now: u64, seq: u64, recs: &[Record]) {
        if seq != self.rcv_next {
            self.counters.out_of_order += 1;
        }
        let slot = &mut self.slots[(seq % WINDOW) as usize];
        slot.seq = seq;
        slot.present = true;
        slot.records.clear();
        slot.records.extend(
            recs.iter()
                .filter(|r| !r.record_type().is_control())
                .copied(),
        );
        self.rcv_highest = self.rcv_highest.max(seq);
        self.deliver_in_order();
        if self.ack_due_ms.is_none() {
            self.ack_due_ms = Some(now + self.cfg.ack_delay_ms);
        }
        if self.rcv_highest >= self.rcv_next {
            self.gap_since_ms.get_or_insert(now);
        }
        self.update_gap_after_delivery();
    }

    fn update_gap_after_delivery(&mut self) {
        if self.rcv_highest < self.rcv_next {
            self.gap_since_ms = None;
        }
    }

    fn deliver_in_order(&mut self) {
        loop {
            let i = (self.rcv_next % WINDOW) as usize;
            if !(self.slots[i].present && self.slots[i].seq == self.rcv_next) {
                break;
            }
            self.slots[i].present = false;
            let mut recs = std::mem::take(&mut self.slots[i].records);
            for r in recs.drain(..) {
                self.deliver(r);
            }
            self.slots[i].records = recs;
            self.rcv_next += 1;
        }
    }

    fn deliver(&mut self, r: Record) {
        match r {
            Record::BulkRequest { mask, .. } => {
                if mask.is_all() {
                    self.bulk_needed(BulkReason::PeerRequested);
                } else {
                    self.events.push_back(Event::RepairRequested { mask });
                }
                return;
            }
            Record::BulkStart { id, .. } => self.bulk_rx = Some((id, 0)),
            Record::BulkEnd { id, count } => {
                if let Some((bid, n)) = self.bulk_rx.take() {
                    if bid == id {
                        self.counters.bulks_received += 1;
                        self.events.push_back(Event::BulkReceived {
                            id,
                            sent: count,
                            received: n,
                        });
                    }
                }
            }
            Record::ConnCreate(_) => {
                if let Some((_, n)) = &mut self.bulk_rx {
                    *n += 1;
                }
            }
            _ => {}
        }
        self.counters.records_received += 1;
        self.records_delivered += 1;
        self.records.push_back(r);
    }

    // ----- Timers. -----

    /// Handles the expiry of [`Session::poll_timeout`] (retransmission);
    /// ack, NACK and Hello timers are served by `poll_transmit`.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        let Some(dl) = self.rto_deadline else {
            return;
        };
        if now_ms < dl {
            return;
        }
        if self.sent.is_empty() {
            self.rto_deadline = None;
            return;
        }
        self.counters.rto_expirations += 1;
        for s in self.sent.iter_mut().take(RTO_BURST) {
            if !s.pending_rtx {
                s.pending_rtx = true;
                self.rtx.push_back(s.seq);
            }
        }
        self.rtt.backoff = (self.rtt.backoff + 1).min(16);
        self.rto_deadline = Some(now_ms + self.rtt.current());
    }

    /// When the session next needs `handle_timeout` or `poll_transmit`
    /// (absolute ms), if ever.
    pub fn poll_timeout(&self) -> Option<u64> {
        let mut t: Option<u64> = None;
        let mut at = |v: u64| t = Some(t.map_or(v, |x| x.min(v)));
        if let Some(v) = self.rto_deadline {
            at(v);
        }
        if let Some(v) = self.ack_due_ms {
            at(v);
        }
        if let Some(v) = self.nack_time() {
            at(v);
        }
        if self.hello_now {
            at(0);
        } else if self.needs_hello() {
            at(self.hello_next_ms);
        }
        t
    }

    fn nack_time(&self) -> Option<u64> {
        let since = self.gap_since_ms?;
        let t = since + self.cfg.ack_delay_ms;
        Some(match self.last_nack_ms {
            Some(l) => t.max(l + self.cfg.nack_interval_ms),
            None => t,
        })
    }

    fn needs_hello(&self) -> bool {
        self.peer.is_none() || !self.peer_knows_us
    }

    fn hello_due(&self, now: u64) -> bool {
        self.hello_now || (self.needs_hello() && now >= self.hello_next_ms)
    }

    fn nack_due(&self, now: u64) -> bool {
        self.nack_time().is_some_and(|t| now >= t)
    }

    // ----- Sending. -----

    /// Writes the next datagram to send into `buf` (which should hold
    /// `mtu` bytes) and returns its length; `None` when nothing is due.
    /// Call until `None` after every `handle_*` and `queue*`.
    pub fn poll_transmit(&mut self, now_ms: u64, buf: &mut [u8]) -> Option<usize> {
        let limit = buf.len().min(self.cfg.mtu);
        if limit < MIN_MTU {
            return None;
        }
        let buf = &mut buf[..limit];
        if self.hello_due(now_ms) {
            return Some(self.send_control(now_ms, buf));
        }
        while let Some(seq) = self.rtx.pop_front() {
            let Some(base) = self.sent.front().map(|s| s.seq) else {
                break;
            };
            if seq < base {
                continue;
            }
            let Some(s) = self.sent.get_mut((seq - base) as usize) else {
                continue;
            };
            s.pending_rtx = false;
            if s.bytes.len() > buf.len() {
                continue;
            }
            let n = s.bytes.len();
            buf[..n].copy_from_slice(&s.bytes);
            s.last_sent_ms = now_ms;
            s.retransmitted = true;
            self.counters.retransmits += 1;
            self.counters.datagrams_sent += 1;
            self.counters.bytes_sent += n as u64;
            if self.rto_deadline.is_none() {
                self.rto_deadline = Some(now_ms + self.rtt.current());
            }
            return Some(n);
        }
        if self.nack_due(now_ms) {
            return Some(self.send_control(now_ms, buf));
        }
        if self.can_send_data() {
            return Some(self.send_data(now_ms, buf));
        }
        if self.ack_due_ms.is_some_and(|t| now_ms >= t) {
            return Some(self.send_control(now_ms, buf));
        }
        None
    }

    fn can_send_data(&self) -> bool {
        self.peer.is_some()
            && self.peer_knows_us
            && !self.pending.is_empty()
            && self.next_seq - self.snd_una < WINDOW
    }

    /// The header of a datagram to the peer's current session (to
    /// `reply_to` instead when given, without an ack).
    fn header(&self, seq: u64, reply_to: Option<SessionId>) -> Header {
        let (peer_session, ack) = match (reply_to, &self.peer) {
            (Some(x), _) => (x, 0),
            (None, Some(p)) => (p.session, self.rcv_next - 1),
            (None, None) => (NO_SESSION, 0),
        };
        Header {
            version: self.version,
            flags: if self.cfg.encrypt { FLAG_ENCRYPTED } else { 0 },
            cluster_id: self.cfg.cluster_id,
            serial: self.cfg.serial,
            session: self.cfg.session_id,
            peer_session,
            seq,
            ack,
        }
    }

    /// Seals `buf[..HEADER_LEN + body_len]` with the key its header names.
    fn seal(&self, h: &Header, buf: &mut [u8], body_len: usize) -> usize {
        let derived;
        let key = if h.peer_session == NO_SESSION {
            &self.tx_hello
        } else if let (Some(k), Some(p)) = (&self.tx_data, &self.peer) {
            if p.session == h.peer_session {
                k
            } else {
                derived = DirKey::for_header(&self.cfg.psk, h);
                &derived
            }
        } else {
            derived = DirKey::for_header(&self.cfg.psk, h);
            &derived
        };
        key.seal(self.cfg.encrypt, h.seq, buf, HEADER_LEN, body_len)
    }

    fn my_hello(&self) -> Hello {
        Hello {
            min_version: self.cfg.min_version,
            max_version: self.cfg.max_version,
            reply: self.needs_hello(),
            capabilities: CAP_ENCRYPT | CAP_UPDATE_REQUEST,
            serial: self.cfg.serial,
            epoch: self.cfg.epoch,
            base_seq: self.sent.front().map_or(self.next_seq, |s| s.seq),
        }
    }

    /// The peer's missing stream ranges (at most [`MAX_NACK_RANGES`]).
    fn missing(&self, out: &mut [(u64, u64); MAX_NACK_RANGES]) -> usize {
        let mut n = 0;
        let mut run: Option<u64> = None;
        for seq in self.rcv_next..=self.rcv_highest {
            let s = &self.slots[(seq % WINDOW) as usize];
            let have = s.present && s.seq == seq;
            match (have, run) {
                (false, None) => run = Some(seq),
                (true, Some(first)) => {
                    out[n] = (first, seq - 1);
                    n += 1;
                    run = None;
                    if n == MAX_NACK_RANGES {
                        return n;
                    }
                }
                _ => {}
            }
        }
        if let Some(first) = run {
            out[n] = (first, self.rcv_highest);
            n += 1;
        }
        n
    }

    /// A control datagram: Hello if due, NACKs if due, and the ack. A
    /// Hello owed to a session that does not know ours goes alone.
    fn send_control(&mut self, now: u64, buf: &mut [u8]) -> usize {
        let hello = self.hello_due(now);
        let reply_to = if hello { self.reply_to.take() } else { None };
        let nack = reply_to.is_none() && self.nack_due(now);
        let seq = CONTROL_SEQ_BIT | self.ctrl_seq;
        self.ctrl_seq += 1;
        let h = self.header(seq, reply_to);
        h.emit(buf);
        let mut ranges = [(0u64, 0u64); MAX_NACK_RANGES];
        let n_ranges = if nack { self.missing(&mut ranges) } else { 0 };
        let end = buf.len() - TAG_LEN;
        let mut w = BodyWriter::new(&mut buf[HEADER_LEN..end]);
        if hello {
            w.push(&Record::Hello(self.my_hello()));
        }
        let mut sent_ranges = 0;
        for &(first, last) in &ranges[..n_ranges] {
            if !w.push(&Record::Nack { first, last }) {
                break;
            }
            sent_ranges += 1;
        }
        let body_len = w.len();
        if hello {
            self.hello_now = false;
            self.hello_next_ms = now + self.cfg.hello_interval_ms;
            self.last_hello_ms = Some(now);
            self.counters.hellos_sent += 1;
        }
        if nack {
            self.last_nack_ms = Some(now);
            self.counters.nacks_sent += 1;
            self.counters.nack_ranges_sent += sent_ranges;
        }
        if !hello && !nack {
            self.counters.acks_sent += 1;
        }
        if reply_to.is_none() {
            self.ack_due_ms = None;
        }
        let n = self.seal(&h, buf, body_len);
        self.counters.datagrams_sent += 1;
        self.counters.control_datagrams_sent += 1;
        self.counters.bytes_sent += n as u64;
        n
    }

    /// A new stream datagram packed with queued records.
    fn send_data(&mut self, now: u64, buf: &mut [u8]) -> usize {
        let seq = self.next_seq;
        let h = self.header(seq, None);
        h.emit(buf);
        let end = buf.len() - TAG_LEN;
        // Room for the extension group, so that every datagram carries it.
        let reserve = self
            .extension
            .as_ref()
            .map_or(0, |(_, d)| GROUP_HEADER_LEN + d.len());
        let mut w = BodyWriter::new(&mut buf[HEADER_LEN..end - reserve]);
        let mut records = 0u32;
        let mut oldest = u64::MAX;
        while let Some(p) = self.pending.front() {
            if !w.push(&p.rec) {
                break;
            }
            oldest = oldest.min(p.queued_ms);
            records += 1;
            self.pending.pop_front();
        }
        let mut body_len = w.len();
        if let Some((ty, data)) = &self.extension {
            let mut x = BodyWriter::new(&mut buf[HEADER_LEN + body_len..end]);
            x.push_raw(*ty, data);
            body_len += x.len();
        }
        let n = self.seal(&h, buf, body_len);
        if self.sent.len() >= self.cfg.retransmit_capacity.min(WINDOW as usize) {
            if let Some(old) = self.sent.pop_front() {
                self.counters.evicted_unacked += 1;
                self.pool.push(old.bytes);
            }
        }
        let mut bytes = self.pool.pop().unwrap_or_default();
        bytes.clear();
        bytes.extend_from_slice(&buf[..n]);
        self.sent.push_back(Sent {
            seq,
            bytes,
            first_sent_ms: now,
            last_sent_ms: now,
            retransmitted: false,
            pending_rtx: false,
            oldest_queued_ms: if records == 0 { now } else { oldest },
            records,
        });
        self.next_seq += 1;
        if self.rto_deadline.is_none() {
            self.rto_deadline = Some(now + self.rtt.current());
        }
        self.ack_due_ms = None;
        self.counters.datagrams_sent += 1;
        self.counters.data_datagrams_sent += 1;
        self.counters.records_sent += u64::from(records);
        self.counters.bytes_sent += n as u64;
        n
    }

    // ----- Output and state. -----

    /// A keepalive for the HA link `link`, saying on which links we hear
    /// the peer (`heard`, bit i: link i), with our ack; `None` before the
    /// peer's session is known. The caller sends it on that link every
    /// few milliseconds, so each side learns which links carry both ways.
    pub fn poll_keepalive(&mut self, buf: &mut [u8], link: u8, heard: u8) -> Option<usize> {
        let limit = buf.len().min(self.cfg.mtu);
        if self.peer.is_none() || limit < MIN_MTU {
            return None;
        }
        let buf = &mut buf[..limit];
        let seq = CONTROL_SEQ_BIT | self.ctrl_seq;
        self.ctrl_seq += 1;
        let h = self.header(seq, None);
        h.emit(buf);
        let end = buf.len() - TAG_LEN;
        let mut w = BodyWriter::new(&mut buf[HEADER_LEN..end]);
        w.push(&Record::Keepalive { link, heard });
        let body_len = w.len();
        self.ack_due_ms = None;
        let n = self.seal(&h, buf, body_len);
        self.counters.keepalives_sent += 1;
        self.counters.datagrams_sent += 1;
        self.counters.control_datagrams_sent += 1;
        self.counters.bytes_sent += n as u64;
        Some(n)
    }

    /// The last keepalive received from the peer (the link it came on and
    /// the links on which the peer hears us), once.
    pub fn take_keepalive(&mut self) -> Option<(u8, u8)> {
        self.keepalive_in.take()
    }

    /// When an authentic datagram of the peer's current session last
    /// arrived.
    pub fn last_heard_ms(&self) -> Option<u64> {
        self.last_rx_ms
    }

    /// Records delivered by the peer and not yet taken.
    pub fn records_pending(&self) -> usize {
        self.records.len()
    }

    /// This run's session id.
    pub fn session_id(&self) -> SessionId {
        self.cfg.session_id
    }

    /// The next record delivered by the peer, in stream order (Hello,
    /// NACK and BulkRequest are consumed by the session).
    pub fn poll_record(&mut self) -> Option<Record> {
        self.records.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next replication-lag sample (queue to peer ack).
    pub fn poll_lag_sample(&mut self) -> Option<LagSample> {
        self.lag.pop_front()
    }

    /// The counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The peer, once its Hello arrived.
    pub fn peer(&self) -> Option<&PeerInfo> {
        self.peer.as_ref()
    }

    /// Whether records flow: the peer is known and has heard us.
    pub fn is_established(&self) -> bool {
        self.peer.is_some() && self.peer_knows_us
    }

    /// The protocol version stamped on outgoing datagrams.
    pub fn version(&self) -> u8 {
        self.version
    }

    /// This node's epoch.
    pub fn epoch(&self) -> u32 {
        self.cfg.epoch
    }

    /// Records queued, not yet sent.
    pub fn queued(&self) -> usize {
        self.pending.len()
    }

    /// Stream datagrams sent and not yet acknowledged.
    pub fn in_flight(&self) -> u64 {
        self.next_seq - self.snd_una
    }

    /// The smoothed round-trip time, once measured.
    pub fn srtt_ms(&self) -> Option<u64> {
        self.rtt.srtt
    }

    /// The current retransmission timeout (backoff included).
    pub fn rto_ms(&self) -> u64 {
        self.rtt.current()
    }

    /// Appends a raw group of type `ty` holding one record `data` to every
    /// stream datagram: the group of the next protocol version
    /// ([`super::wire::BUILD_GROUP`]), and tests of groups a peer does not
    /// know.
    pub fn set_extension(&mut self, ty: u8, data: Vec<u8>) {
        self.extension = Some((ty, data));
    }
}
