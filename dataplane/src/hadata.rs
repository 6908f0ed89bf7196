//! The HA path over the data network: the last-resort heartbeat and the
//! ICMP check of the peer (HA-REFERENCE F20), carried by the dataplane so
//! that they prove what matters, that the peer's *dataplane* is alive.
//!
//! Both are IPv4 ICMP echo frames with the interface's (cluster) address
//! as both source and destination, TTL 1 and a tandem identifier, so no
//! host takes them for its own and no router forwards them:
//!
//! | identifier | echo request | echo reply |
//! |---|---|---|
//! | [`ID_HEARTBEAT`] | a heartbeat (HMAC-sealed by the control thread), handed to it | never sent |
//! | [`ID_PROBE`] | an ICMP check ([`CheckMsg`]): answered by the worker that receives it, whatever the node's role | the answer, handed to the control thread |
//!
//! Only the peer can answer for the peer. A check carries a fresh nonce,
//! the requester's serial and the requester's port, sealed with the check
//! key ([`crate::hakeys::HaKeys::check`]); the peer's *worker* verifies it
//! and answers with its own serial, sealed over (nonce, requester serial,
//! responder serial, port). The requester ([`judge`]) takes an answer only
//! if it authenticates, names the peer (not us), binds the nonce of the
//! check in flight and came back on the port the check left from: a host
//! that reflects the check, or our own frame looped back, counts for
//! nothing, and is counted. The worker answers without the control
//! thread: a peer whose dataplane forwards but whose control thread is
//! late still answers, so it is not taken over; a killed or frozen peer
//! does not answer.
//!
//! HA frames are policed before any work: right after [`classify`], a
//! frame is dropped (and counted) unless it arrived on a port that carries
//! HA frames and its kind's token bucket for that port has a token
//! ([`Limits`]); only then is it authenticated (check requests, by the
//! worker) or copied into a fixed-size buffer and handed to the control
//! thread through a bounded channel ([`HaDataHandle::received`], which the
//! control thread reads a bounded number at a time). Nothing is allocated
//! per frame. Worker 0 sends the frames the control thread builds
//! ([`HaDataHandle::send`]) on the port it names, in either role (the
//! passive is otherwise silent on data ports).

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use crossbeam::channel::{bounded, Receiver, Sender};
use ring::hmac;
use serde::{Deserialize, Serialize};

use crate::wire::checksum;

/// ICMP identifier of a last-resort heartbeat.
pub const ID_HEARTBEAT: u16 = 0x5405;
/// ICMP identifier of an ICMP check and its answer.
pub const ID_PROBE: u16 = 0x5406;

const ETH: usize = 14;
const IP: usize = 20;
const ICMP: usize = 8;
/// Bytes before the payload.
pub const HEADER_LEN: usize = ETH + IP + ICMP;
/// Largest payload carried (a heartbeat is 68 bytes, a check 60).
pub const MAX_PAYLOAD: usize = 96;
/// Largest HA frame.
pub const MAX_FRAME: usize = HEADER_LEN + MAX_PAYLOAD;
/// Ports with an id below this can carry HA frames (DPDK's default
/// `RTE_MAX_ETHPORTS` is 32).
pub const MAX_PORTS: usize = 64;
/// The Ethernet broadcast address.
pub const BROADCAST: [u8; 6] = [0xff; 6];

/// What an HA frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A last-resort heartbeat from the peer.
    Heartbeat,
    /// The peer checks that we are alive: answer it.
    ProbeRequest,
    /// The answer to our check.
    ProbeReply,
}

impl Kind {
    fn idx(self) -> usize {
        match self {
            Kind::Heartbeat => 0,
            Kind::ProbeRequest => 1,
            Kind::ProbeReply => 2,
        }
    }
}

/// The kind of an HA frame, or `None` for every other frame. Cheap: a few
/// byte compares, done for every frame a worker receives.
#[inline]
pub fn classify(frame: &[u8]) -> Option<Kind> {
    if frame.len() < HEADER_LEN
        || frame[12..14] != [0x08, 0x00]
        || frame[ETH] != 0x45
        || frame[ETH + 9] != 1
        || frame[ETH + 12..ETH + 16] != frame[ETH + 16..ETH + 20]
    {
        return None;
    }
    let icmp = ETH + IP;
    let id = u16::from_be_bytes([frame[icmp + 4], frame[icmp + 5]]);
    match (frame[icmp], id) {
        (8, ID_HEARTBEAT) => Some(Kind::Heartbeat),
        (8, ID_PROBE) => Some(Kind::ProbeRequest),
        (0, ID_PROBE) => Some(Kind::ProbeReply),
        _ => None,
    }
}

/// The payload of an HA frame (after the ICMP header, up to the IP total
/// length), or `None` when the lengths do not add up.
pub fn payload(frame: &[u8]) -> Option<&[u8]> {
    if frame.len() < HEADER_LEN {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([frame[ETH + 2], frame[ETH + 3]]));
    if total < IP + ICMP || ETH + total > frame.len() {
        return None;
    }
    Some(&frame[HEADER_LEN..ETH + total])
}

/// Builds an HA frame (heartbeat or check request) to `dst` (a MAC, or
/// [`BROADCAST`]) from `mac` with address `addr` carrying `payload`;
/// returns its length in `out`, or `None` when `out` is too small or the
/// payload too large.
pub fn build_request(
    out: &mut [u8],
    dst: [u8; 6],
    mac: [u8; 6],
    addr: Ipv4Addr,
    id: u16,
    seq: u16,
    payload: &[u8],
) -> Option<usize> {
    let len = HEADER_LEN + payload.len();
    if payload.len() > MAX_PAYLOAD || out.len() < len {
        return None;
    }
    let f = &mut out[..len];
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip = &mut f[ETH..ETH + IP];
    ip[0] = 0x45;
    ip[1] = 0xc0; // network control
    ip[2..4].copy_from_slice(&((IP + ICMP + payload.len()) as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&seq.to_be_bytes());
    ip[6..8].copy_from_slice(&[0x40, 0x00]); // DF
    ip[8] = 1; // TTL: never routed
    ip[9] = 1; // ICMP
    ip[10..12].copy_from_slice(&[0, 0]);
    ip[12..16].copy_from_slice(&addr.octets());
    ip[16..20].copy_from_slice(&addr.octets());
    let c = checksum::checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let icmp = &mut f[ETH + IP..];
    icmp[0] = 8;
    icmp[1] = 0;
    icmp[2..4].copy_from_slice(&[0, 0]);
    icmp[4..6].copy_from_slice(&id.to_be_bytes());
    icmp[6..8].copy_from_slice(&seq.to_be_bytes());
    icmp[8..].copy_from_slice(payload);
    let c = checksum::checksum(icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    Some(len)
}

/// The source MAC address of a frame (zero when too short).
pub fn source_mac(frame: &[u8]) -> [u8; 6] {
    let mut m = [0u8; 6];
    if let Some(s) = frame.get(6..12) {
        m.copy_from_slice(s);
    }
    m
}

// ---------------------------------------------------------------------
// The ICMP check's payload
// ---------------------------------------------------------------------

/// Size of a check (request or answer) payload.
pub const CHECK_LEN: usize = 60;
/// Size of a check's nonce.
pub const NONCE_LEN: usize = 16;
const CHECK_MAGIC: [u8; 4] = *b"THAC";
const CHECK_VERSION: u8 = 1;
const CHECK_BODY: usize = 44;
const TAG: usize = 16;

/// Request or answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckKind {
    /// "Are you alive?", from the requester.
    Request,
    /// "Yes", computed by the responder's worker.
    Answer,
}

/// The payload of an ICMP check and of its answer, sealed with the check
/// key (HMAC-SHA256 truncated to 16 bytes).
///
/// ```text
///  0  magic      [u8; 4]  "THAC"
///  4  version    u8       1
///  5  kind       u8       1 request, 2 answer
///  6  port       u16      the requester's port the check left from
///  8  cluster id u32
/// 12  requester  u64      requester's member serial
/// 20  responder  u64      responder's member serial (0 in a request)
/// 28  nonce      [u8; 16] fresh per check, unpredictable
/// 44  tag        [u8; 16] HMAC-SHA256(check key, bytes 0..44) truncated
/// ```
/// Integers big-endian.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckMsg {
    /// Request or answer.
    pub kind: CheckKind,
    /// The requester's port (an answer must come back on it).
    pub port: u16,
    /// The cluster.
    pub cluster: u32,
    /// Who checks.
    pub requester: u64,
    /// Who answers (0 in a request).
    pub responder: u64,
    /// The check's nonce.
    pub nonce: [u8; NONCE_LEN],
}

/// The key of the checks and their answers ([`crate::hakeys::HaKeys::check`]).
#[derive(Clone)]
pub struct CheckKey(hmac::Key);

impl CheckKey {
    /// A key from derived bytes.
    pub fn new(bytes: &[u8]) -> CheckKey {
        CheckKey(hmac::Key::new(hmac::HMAC_SHA256, bytes))
    }

    fn tag(&self, body: &[u8]) -> hmac::Tag {
        hmac::sign(&self.0, body)
    }
}

impl std::fmt::Debug for CheckKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CheckKey(<redacted>)")
    }
}

/// The check keys of the workers: the one answers are sealed under, and
/// during a key change (F8) the other one, also accepted. The control
/// thread sets them; a worker reads them only for a check request
/// (policed to a few dozen a second).
#[derive(Debug)]
pub struct CheckKeys(std::sync::RwLock<(CheckKey, Option<CheckKey>)>);

impl CheckKeys {
    /// One key.
    pub fn new(key: CheckKey) -> CheckKeys {
        CheckKeys(std::sync::RwLock::new((key, None)))
    }

    /// A step of a key change; false (nothing changed) if a worker holds
    /// the keys this instant: try again on the next turn.
    pub fn try_set(&self, current: CheckKey, other: Option<CheckKey>) -> bool {
        match self.0.try_write() {
            Ok(mut k) => {
                *k = (current, other);
                true
            }
            Err(std::sync::TryLockError::Poisoned(e)) => {
                *e.into_inner() = (current, other);
                true
            }
            Err(std::sync::TryLockError::WouldBlock) => false,
        }
    }

    /// Opens `payload` under the current key, else the other one; the
    /// message and the key that opened it.
    pub fn open(&self, payload: &[u8], cluster: u32) -> Result<(CheckMsg, CheckKey), CheckError> {
        let k = self
            .0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match CheckMsg::open(payload, &k.0, cluster) {
            Err(CheckError::Unauthentic) if k.1.is_some() => {
                let other = k.1.as_ref().expect("checked");
                CheckMsg::open(payload, other, cluster).map(|m| (m, other.clone()))
            }
            r => r.map(|m| (m, k.0.clone())),
        }
    }
}

/// Why a check payload was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckError {
    /// Not [`CHECK_LEN`] bytes.
    BadLength,
    /// Bad magic, version or kind, or another cluster's.
    Malformed,
    /// The tag does not verify: not sealed with our cluster's key.
    Unauthentic,
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

impl CheckMsg {
    /// The sealed payload.
    pub fn seal(&self, key: &CheckKey) -> [u8; CHECK_LEN] {
        let mut b = [0u8; CHECK_LEN];
        b[0..4].copy_from_slice(&CHECK_MAGIC);
        b[4] = CHECK_VERSION;
        b[5] = match self.kind {
            CheckKind::Request => 1,
            CheckKind::Answer => 2,
        };
        b[6..8].copy_from_slice(&self.port.to_be_bytes());
        b[8..12].copy_from_slice(&self.cluster.to_be_bytes());
        b[12..20].copy_from_slice(&self.requester.to_be_bytes());
        b[20..28].copy_from_slice(&self.responder.to_be_bytes());
        b[28..44].copy_from_slice(&self.nonce);
        let tag = key.tag(&b[..CHECK_BODY]);
        b[CHECK_BODY..].copy_from_slice(&tag.as_ref()[..TAG]);
        b
    }

    /// Authenticates and parses a check payload of cluster `cluster`.
    /// Never panics.
    pub fn open(buf: &[u8], key: &CheckKey, cluster: u32) -> Result<CheckMsg, CheckError> {
        if buf.len() != CHECK_LEN {
            return Err(CheckError::BadLength);
        }
        let kind = match buf[5] {
            1 => CheckKind::Request,
            2 => CheckKind::Answer,
            _ => return Err(CheckError::Malformed),
        };
        if buf[0..4] != CHECK_MAGIC || buf[4] != CHECK_VERSION {
            return Err(CheckError::Malformed);
        }
        if u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]) != cluster {
            return Err(CheckError::Malformed);
        }
        let tag = key.tag(&buf[..CHECK_BODY]);
        if !ct_eq(&tag.as_ref()[..TAG], &buf[CHECK_BODY..]) {
            return Err(CheckError::Unauthentic);
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&buf[28..44]);
        Ok(CheckMsg {
            kind,
            port: u16::from_be_bytes([buf[6], buf[7]]),
            cluster,
            requester: be64(buf, 12),
            responder: be64(buf, 20),
            nonce,
        })
    }
}

/// What the requester makes of a frame that came back to its check
/// ([`judge`]); each refusal has its counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The peer's answer to the check in flight.
    Answer {
        /// The peer's serial.
        responder: u64,
    },
    /// Not a check payload of the right length.
    BadLength,
    /// Not sealed with our key (or malformed).
    Unauthentic,
    /// Our own frame back: a check of ours (or of the peer) turned into
    /// an echo reply by some host, an answer that names us as responder,
    /// or an answer carried to another port than the one the check left
    /// from.
    Reflected,
    /// An authentic answer that names a member other than the peer, or
    /// answers somebody else's check.
    WrongPeer,
    /// An authentic answer from the peer, but not to the check in flight
    /// (late, or replayed).
    Stale,
}

/// The requester's side of the ICMP check: judges a frame received on
/// `port` as an answer to the check in flight (`nonce`, none when no
/// check is in flight). `me` is our serial, `peer` the peer's when known
/// (any other member serial is then refused).
pub fn judge(
    key: &CheckKey,
    cluster: u32,
    me: u64,
    peer: Option<u64>,
    nonce: Option<&[u8; NONCE_LEN]>,
    port: u16,
    payload: &[u8],
) -> Verdict {
    let m = match CheckMsg::open(payload, key, cluster) {
        Ok(m) => m,
        Err(CheckError::BadLength) => return Verdict::BadLength,
        Err(_) => return Verdict::Unauthentic,
    };
    if m.kind == CheckKind::Request || m.responder == me || m.port != port {
        return Verdict::Reflected;
    }
    if m.requester != me || m.responder == 0 || peer.is_some_and(|p| p != m.responder) {
        return Verdict::WrongPeer;
    }
    match nonce {
        Some(n) if ct_eq(n, &m.nonce) => Verdict::Answer {
            responder: m.responder,
        },
        _ => Verdict::Stale,
    }
}

// ---------------------------------------------------------------------
// Workers and control thread
// ---------------------------------------------------------------------

/// The per-port token buckets of the HA frames, per worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Last-resort heartbeats per second and port (the peer sends one
    /// per heartbeat interval).
    pub heartbeats_per_sec: u32,
    /// Check requests, and check answers, per second and port.
    pub checks_per_sec: u32,
    /// Bucket depth (frames accepted at once after a quiet spell).
    pub burst: u32,
}

impl Limits {
    /// Twice the peer's heartbeat rate at `heartbeat_ms`, 50 checks a
    /// second (a check goes out every 200 ms at most), bursts of 16.
    pub fn for_heartbeat_ms(heartbeat_ms: u32) -> Limits {
        Limits {
            heartbeats_per_sec: 2 * 1000 / heartbeat_ms.max(1) + 10,
            checks_per_sec: 50,
            burst: 16,
        }
    }
}

/// What the workers need to police and answer HA frames, given once by
/// the control thread at start ([`HaDataHandle::configure`]). Until then
/// every HA frame is dropped (counted as `not_ready`).
#[derive(Debug)]
pub struct HaDataConfig {
    /// The cluster.
    pub cluster_id: u32,
    /// Our member serial (answers carry it; checks that carry it are ours
    /// come back, never answered).
    pub serial: u64,
    /// The keys of the checks.
    pub keys: CheckKeys,
    /// Ports that carry HA frames (those with an address); frames on any
    /// other port are dropped.
    pub ports: Vec<u16>,
    /// The length of a heartbeat payload (others are dropped).
    pub heartbeat_len: usize,
    /// The token buckets.
    pub limits: Limits,
}

impl HaDataConfig {
    fn carries(&self, port: u16) -> bool {
        usize::from(port) < MAX_PORTS && self.ports.contains(&port)
    }
}

/// A frame a worker handed to the control thread (fixed size: nothing
/// is allocated per frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// The port it came in on.
    pub port: u16,
    /// Heartbeat or check reply.
    pub kind: Kind,
    /// Its Ethernet source address.
    pub src_mac: [u8; 6],
    len: u8,
    buf: [u8; MAX_PAYLOAD],
}

impl Received {
    /// A frame of `kind` from `src_mac` on `port` carrying `payload`
    /// (`None` when longer than [`MAX_PAYLOAD`]).
    pub fn new(port: u16, kind: Kind, src_mac: [u8; 6], payload: &[u8]) -> Option<Received> {
        let len = u8::try_from(payload.len())
            .ok()
            .filter(|&l| usize::from(l) <= MAX_PAYLOAD)?;
        let mut buf = [0u8; MAX_PAYLOAD];
        buf[..payload.len()].copy_from_slice(payload);
        Some(Received {
            port,
            kind,
            src_mac,
            len,
            buf,
        })
    }

    /// The ICMP payload.
    pub fn payload(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

/// A frame the control thread wants sent (fixed size).
#[derive(Debug, Clone, Copy)]
pub struct Outgoing {
    /// The port.
    pub port: u16,
    len: u16,
    buf: [u8; MAX_FRAME],
}

impl Outgoing {
    /// The whole Ethernet frame.
    pub fn frame(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

/// Counters of the HA path over the data network (all workers and the
/// control thread add): what came in, and every reason a frame was
/// refused.
#[derive(Debug, Default)]
pub struct HaDataCounters {
    /// Last-resort heartbeats handed to the control thread.
    pub heartbeats_in: AtomicU64,
    /// Check requests answered by our workers.
    pub checks_answered: AtomicU64,
    /// Check answers handed to the control thread.
    pub answers_in: AtomicU64,
    /// Check answers the control thread took as the peer's.
    pub answers_accepted: AtomicU64,
    /// Frames sent for the control thread.
    pub sent: AtomicU64,
    /// Frames not sent (queue to worker 0 full, no mbuf).
    pub send_failed: AtomicU64,
    /// Dropped by a token bucket before any work.
    pub policed: AtomicU64,
    /// Arrived on a port that carries no HA frames.
    pub not_ha_port: AtomicU64,
    /// Arrived before the control thread configured the path (start-up).
    pub not_ready: AtomicU64,
    /// Lengths that do not add up.
    pub bad_length: AtomicU64,
    /// Not sealed with our key (forged, or another cluster's).
    pub unauthentic: AtomicU64,
    /// Our own frames back, through another host or a loop.
    pub reflected: AtomicU64,
    /// Authentic, but naming another member than the peer.
    pub wrong_peer: AtomicU64,
    /// Authentic answers not to the check in flight (late or replayed),
    /// and authentic heartbeats of a peer run not proven yet (its first
    /// ones after a start).
    pub stale: AtomicU64,
    /// Not handed over: the channel to the control thread was full.
    pub channel_full: AtomicU64,
}

/// A copy of [`HaDataCounters`], as `hainfo` shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaDataStats {
    /// Last-resort heartbeats handed to the control thread.
    pub heartbeats_in: u64,
    /// Check requests answered by our workers.
    pub checks_answered: u64,
    /// Check answers handed to the control thread.
    pub answers_in: u64,
    /// Check answers taken as the peer's.
    pub answers_accepted: u64,
    /// Frames sent for the control thread.
    pub sent: u64,
    /// Frames not sent (queue full, no mbuf).
    pub send_failed: u64,
    /// Dropped by a token bucket before any work.
    pub policed: u64,
    /// Arrived on a port that carries no HA frames.
    pub not_ha_port: u64,
    /// Arrived before the control thread configured the path.
    pub not_ready: u64,
    /// Lengths that do not add up.
    pub bad_length: u64,
    /// Not sealed with our key.
    pub unauthentic: u64,
    /// Our own frames back (reflections, loops).
    pub reflected: u64,
    /// Authentic but naming another member than the peer.
    pub wrong_peer: u64,
    /// Authentic answers not to the check in flight, and heartbeats of a
    /// peer run not proven yet.
    pub stale: u64,
    /// Not handed over: channel full.
    pub channel_full: u64,
}

impl HaDataCounters {
    /// Adds one to `c`.
    pub fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The current values.
    pub fn snapshot(&self) -> HaDataStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        HaDataStats {
            heartbeats_in: g(&self.heartbeats_in),
            checks_answered: g(&self.checks_answered),
            answers_in: g(&self.answers_in),
            answers_accepted: g(&self.answers_accepted),
            sent: g(&self.sent),
            send_failed: g(&self.send_failed),
            policed: g(&self.policed),
            not_ha_port: g(&self.not_ha_port),
            not_ready: g(&self.not_ready),
            bad_length: g(&self.bad_length),
            unauthentic: g(&self.unauthentic),
            reflected: g(&self.reflected),
            wrong_peer: g(&self.wrong_peer),
            stale: g(&self.stale),
            channel_full: g(&self.channel_full),
        }
    }
}

/// A token bucket in milli-tokens (exact at low rates).
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    milli: u64,
    last_ms: u64,
    primed: bool,
}

impl Bucket {
    fn take(&mut self, now_ms: u64, per_sec: u32, burst: u32) -> bool {
        let cap = u64::from(burst.max(1)) * 1000;
        if !self.primed {
            self.primed = true;
            self.milli = cap;
        } else {
            let elapsed = now_ms.saturating_sub(self.last_ms).min(60_000);
            self.milli = (self.milli + elapsed * u64::from(per_sec)).min(cap);
        }
        self.last_ms = now_ms;
        if self.milli >= 1000 {
            self.milli -= 1000;
            true
        } else {
            false
        }
    }
}

/// The workers' side.
#[derive(Debug, Clone)]
pub struct HaDataPath {
    to_control: Sender<Received>,
    /// Only worker 0 sends for the control thread.
    outgoing: Option<Receiver<Outgoing>>,
    config: Arc<OnceLock<HaDataConfig>>,
    /// This worker's buckets, per port and kind.
    buckets: Box<[[Bucket; 3]; MAX_PORTS]>,
    /// Shared counters.
    pub counters: Arc<HaDataCounters>,
}

/// The control thread's side.
#[derive(Debug)]
pub struct HaDataHandle {
    from_workers: Receiver<Received>,
    to_worker: Sender<Outgoing>,
    config: Arc<OnceLock<HaDataConfig>>,
    /// Shared counters.
    pub counters: Arc<HaDataCounters>,
}

/// Frames waiting for the control thread, at most.
pub const CHANNEL_CAPACITY: usize = 256;

/// A connected pair: the handle for the control thread and the path to
/// clone into every worker (give `outgoing` to worker 0 only, see
/// [`HaDataPath::without_sending`]).
pub fn channel() -> (HaDataHandle, HaDataPath) {
    let (to_control, from_workers) = bounded(CHANNEL_CAPACITY);
    let (to_worker, outgoing) = bounded(64);
    let counters = Arc::new(HaDataCounters::default());
    let config = Arc::new(OnceLock::new());
    (
        HaDataHandle {
            from_workers,
            to_worker,
            config: config.clone(),
            counters: counters.clone(),
        },
        HaDataPath {
            to_control,
            outgoing: Some(outgoing),
            config,
            buckets: Box::new([[Bucket::default(); 3]; MAX_PORTS]),
            counters,
        },
    )
}

impl HaDataPath {
    /// A copy for a worker that receives but does not send.
    pub fn without_sending(&self) -> HaDataPath {
        HaDataPath {
            outgoing: None,
            ..self.clone()
        }
    }

    /// Policing, before any work on an HA frame of `kind` that arrived on
    /// `port` at `now_ms`: false (and counted) when the path is not
    /// configured, the port carries no HA frames, or the kind's bucket for
    /// the port is empty.
    pub fn admit(&mut self, now_ms: u64, port: u16, kind: Kind) -> bool {
        let c = &self.counters;
        let Some(cfg) = self.config.get() else {
            HaDataCounters::bump(&c.not_ready);
            return false;
        };
        if !cfg.carries(port) {
            HaDataCounters::bump(&c.not_ha_port);
            return false;
        }
        let rate = match kind {
            Kind::Heartbeat => cfg.limits.heartbeats_per_sec,
            Kind::ProbeRequest | Kind::ProbeReply => cfg.limits.checks_per_sec,
        };
        let ok = self.buckets[usize::from(port)][kind.idx()].take(now_ms, rate, cfg.limits.burst);
        if !ok {
            HaDataCounters::bump(&c.policed);
        }
        ok
    }

    /// Hands an admitted heartbeat or check answer to the control thread
    /// (check requests are answered by the worker, never handed over).
    pub fn deliver(&self, port: u16, kind: Kind, frame: &[u8]) {
        let c = &self.counters;
        let want = match (kind, self.config.get()) {
            (Kind::Heartbeat, Some(cfg)) => cfg.heartbeat_len,
            (Kind::ProbeReply, Some(_)) => CHECK_LEN,
            (Kind::ProbeRequest, _) | (_, None) => return,
        };
        let Some(r) = payload(frame)
            .filter(|p| p.len() == want)
            .and_then(|p| Received::new(port, kind, source_mac(frame), p))
        else {
            HaDataCounters::bump(&c.bad_length);
            return;
        };
        if self.to_control.try_send(r).is_err() {
            HaDataCounters::bump(&c.channel_full);
            return;
        }
        HaDataCounters::bump(match kind {
            Kind::Heartbeat => &c.heartbeats_in,
            _ => &c.answers_in,
        });
    }

    /// Turns an admitted check request into its answer in place: back to
    /// its sender from `mac`, ICMP type 0, the payload sealed with our
    /// serial over the request's nonce, requester and port. False (and
    /// counted) when the request is not authentic, is ours, or its lengths
    /// do not add up: the frame is then to be dropped.
    pub fn answer(&self, frame: &mut [u8], mac: [u8; 6]) -> bool {
        let c = &self.counters;
        let Some(cfg) = self.config.get() else {
            return false;
        };
        let Some(p) = payload(frame).filter(|p| p.len() == CHECK_LEN) else {
            HaDataCounters::bump(&c.bad_length);
            return false;
        };
        let (req, key) = match cfg.keys.open(p, cfg.cluster_id) {
            Ok(m) => m,
            Err(CheckError::BadLength) => {
                HaDataCounters::bump(&c.bad_length);
                return false;
            }
            Err(_) => {
                HaDataCounters::bump(&c.unauthentic);
                return false;
            }
        };
        if req.kind != CheckKind::Request || req.requester == cfg.serial {
            HaDataCounters::bump(&c.reflected);
            return false;
        }
        let ans = CheckMsg {
            kind: CheckKind::Answer,
            responder: cfg.serial,
            ..req
        }
        .seal(&key);
        let total = HEADER_LEN + CHECK_LEN;
        let (dst, src) = frame.split_at_mut(6);
        dst.copy_from_slice(&src[..6]);
        src[..6].copy_from_slice(&mac);
        frame[HEADER_LEN..total].copy_from_slice(&ans);
        let icmp = &mut frame[ETH + IP..total];
        icmp[0] = 0;
        icmp[2..4].copy_from_slice(&[0, 0]);
        let sum = checksum::checksum(icmp);
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());
        HaDataCounters::bump(&c.checks_answered);
        true
    }

    /// The next frame the control thread wants sent (worker 0 only).
    pub fn next_outgoing(&self) -> Option<Outgoing> {
        self.outgoing.as_ref()?.try_recv().ok()
    }

    /// Counts a frame sent (`true`) or lost for want of an mbuf.
    pub fn sent(&self, ok: bool) {
        let c = &self.counters;
        HaDataCounters::bump(if ok { &c.sent } else { &c.send_failed });
    }
}

impl HaDataHandle {
    /// The workers' check keys, once configured.
    pub fn check_keys(&self) -> Option<&CheckKeys> {
        self.config.get().map(|c| &c.keys)
    }

    /// Gives the workers what they need to accept and answer HA frames;
    /// false if the path was configured already (the first one stays).
    pub fn configure(&self, config: HaDataConfig) -> bool {
        self.config.set(config).is_ok()
    }

    /// At most `max` of the frames the workers handed over.
    pub fn received(&self, max: usize) -> impl Iterator<Item = Received> + '_ {
        self.from_workers.try_iter().take(max)
    }

    /// Frames waiting.
    pub fn backlog(&self) -> usize {
        self.from_workers.len()
    }

    /// Queues `frame` for sending on `port`; false when the queue is full
    /// or the frame too large.
    pub fn send(&self, port: u16, frame: &[u8]) -> bool {
        let ok = u16::try_from(frame.len())
            .ok()
            .filter(|&l| usize::from(l) <= MAX_FRAME)
            .is_some_and(|len| {
                let mut buf = [0u8; MAX_FRAME];
                buf[..frame.len()].copy_from_slice(frame);
                self.to_worker.try_send(Outgoing { port, len, buf }).is_ok()
            });
        if !ok {
            HaDataCounters::bump(&self.counters.send_failed);
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const PEER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
    const ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
    const CLUSTER: u32 = 7;
    const ME: u64 = 1;
    const PEER: u64 = 2;
    const NONCE: [u8; NONCE_LEN] = [9; NONCE_LEN];

    fn key() -> CheckKey {
        CheckKey::new(b"0123456789abcdef0123456789abcdef")
    }

    fn frame(id: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; 512];
        let n = build_request(&mut out, BROADCAST, MAC, ADDR, id, 7, payload).unwrap();
        out.truncate(n);
        out
    }

    fn request(requester: u64, port: u16) -> CheckMsg {
        CheckMsg {
            kind: CheckKind::Request,
            port,
            cluster: CLUSTER,
            requester,
            responder: 0,
            nonce: NONCE,
        }
    }

    /// A configured pair whose workers answer as `serial`.
    fn configured(serial: u64, limits: Limits) -> (HaDataHandle, HaDataPath) {
        let (h, p) = channel();
        assert!(h.configure(HaDataConfig {
            cluster_id: CLUSTER,
            serial,
            keys: CheckKeys::new(key()),
            ports: vec![0, 1],
            heartbeat_len: 68,
            limits,
        }));
        (h, p)
    }

    const LOOSE: Limits = Limits {
        heartbeats_per_sec: 1000,
        checks_per_sec: 1000,
        burst: 1000,
    };

    /// What the peer's worker makes of our check on `port`: the answer's
    /// payload.
    fn peer_answers(req: &CheckMsg, port: u16) -> Vec<u8> {
        let (_h, mut peer) = configured(PEER, LOOSE);
        let mut f = frame(ID_PROBE, &req.seal(&key()));
        assert!(peer.admit(0, port, Kind::ProbeRequest));
        assert!(peer.answer(&mut f, PEER_MAC), "{:?}", peer.counters);
        assert_eq!(classify(&f), Some(Kind::ProbeReply));
        assert_eq!(&f[0..6], &MAC, "back to the requester");
        assert_eq!(&f[6..12], &PEER_MAC);
        assert!(checksum::verifies(&f[ETH + IP..]));
        payload(&f).unwrap().to_vec()
    }

    #[test]
    fn requests_are_classified_and_carry_their_payload() {
        let hb = frame(ID_HEARTBEAT, b"heartbeat");
        assert_eq!(classify(&hb), Some(Kind::Heartbeat));
        assert_eq!(payload(&hb), Some(&b"heartbeat"[..]));
        let p = frame(ID_PROBE, b"nonce");
        assert_eq!(classify(&p), Some(Kind::ProbeRequest));
        // Valid IPv4 and ICMP checksums: a capture shows ordinary pings.
        assert!(checksum::verifies(&p[ETH..ETH + IP]));
        assert!(checksum::verifies(&p[ETH + IP..]));
        let mut out = [0u8; 200];
        build_request(&mut out, PEER_MAC, MAC, ADDR, ID_PROBE, 1, b"x").unwrap();
        assert_eq!(&out[0..6], &PEER_MAC, "unicast to the peer");
    }

    #[test]
    fn the_peers_answer_is_accepted_for_the_check_in_flight() {
        let ans = peer_answers(&request(ME, 1), 1);
        let v = judge(&key(), CLUSTER, ME, Some(PEER), Some(&NONCE), 1, &ans);
        assert_eq!(v, Verdict::Answer { responder: PEER });
        // Before the peer is known, any other member's answer counts.
        let v = judge(&key(), CLUSTER, ME, None, Some(&NONCE), 1, &ans);
        assert_eq!(v, Verdict::Answer { responder: PEER });
    }

    #[test]
    fn a_reflection_of_our_check_is_refused() {
        // A host turns our request into an echo reply (what any host that
        // answers pings for every address does), from its MAC or the peer's.
        let req = request(ME, 1).seal(&key());
        let v = judge(&key(), CLUSTER, ME, Some(PEER), Some(&NONCE), 1, &req);
        assert_eq!(v, Verdict::Reflected);
        // Our own worker never answers our own check (looped back).
        let (_h, mut mine) = configured(ME, LOOSE);
        let mut f = frame(ID_PROBE, &req);
        assert!(mine.admit(0, 1, Kind::ProbeRequest));
        assert!(!mine.answer(&mut f, MAC));
        assert_eq!(mine.counters.reflected.load(Ordering::Relaxed), 1);
        assert_eq!(mine.counters.checks_answered.load(Ordering::Relaxed), 0);
        // An answer that names us as the responder is ours.
        let own = CheckMsg {
            kind: CheckKind::Answer,
            responder: ME,
            ..request(ME, 1)
        }
        .seal(&key());
        let v = judge(&key(), CLUSTER, ME, Some(PEER), Some(&NONCE), 1, &own);
        assert_eq!(v, Verdict::Reflected);
        // The peer's answer relayed from another segment.
        let ans = peer_answers(&request(ME, 1), 1);
        let v = judge(&key(), CLUSTER, ME, Some(PEER), Some(&NONCE), 0, &ans);
        assert_eq!(v, Verdict::Reflected);
    }

    #[test]
    fn an_answer_naming_another_member_is_refused() {
        let ans = peer_answers(&request(ME, 1), 1);
        let v = judge(&key(), CLUSTER, ME, Some(3), Some(&NONCE), 1, &ans);
        assert_eq!(v, Verdict::WrongPeer);
        // An answer to somebody else's check (another requester serial).
        let ans = peer_answers(&request(5, 1), 1);
        let v = judge(&key(), CLUSTER, ME, Some(PEER), Some(&NONCE), 1, &ans);
        assert_eq!(v, Verdict::WrongPeer);
    }

    #[test]
    fn an_answer_to_another_nonce_or_no_check_is_stale() {
        let ans = peer_answers(&request(ME, 1), 1);
        let other = [8; NONCE_LEN];
        let v = judge(&key(), CLUSTER, ME, Some(PEER), Some(&other), 1, &ans);
        assert_eq!(v, Verdict::Stale);
        let v = judge(&key(), CLUSTER, ME, Some(PEER), None, 1, &ans);
        assert_eq!(v, Verdict::Stale);
    }

    #[test]
    fn forged_or_damaged_answers_are_unauthentic() {
        let ans = peer_answers(&request(ME, 1), 1);
        for i in 0..CHECK_LEN {
            let mut bad = ans.clone();
            bad[i] ^= 0x10;
            let v = judge(&key(), CLUSTER, ME, Some(PEER), Some(&NONCE), 1, &bad);
            assert_eq!(v, Verdict::Unauthentic, "byte {i}");
        }
        let other = CheckKey::new(b"another cluster key, 32 bytes..!");
        let v = judge(&other, CLUSTER, ME, Some(PEER), Some(&NONCE), 1, &ans);
        assert_eq!(v, Verdict::Unauthentic);
        let v = judge(&key(), CLUSTER + 1, ME, Some(PEER), Some(&NONCE), 1, &ans);
        assert_eq!(v, Verdict::Unauthentic);
        let v = judge(&key(), CLUSTER, ME, Some(PEER), Some(&NONCE), 1, &ans[..59]);
        assert_eq!(v, Verdict::BadLength);
    }

    #[test]
    fn a_forged_request_gets_no_answer() {
        let (_h, mut peer) = configured(PEER, LOOSE);
        let other = CheckKey::new(b"another cluster key, 32 bytes..!");
        let mut f = frame(ID_PROBE, &request(ME, 1).seal(&other));
        let before = f.clone();
        assert!(peer.admit(0, 1, Kind::ProbeRequest));
        assert!(!peer.answer(&mut f, PEER_MAC));
        assert_eq!(f, before, "nothing written");
        assert_eq!(peer.counters.unauthentic.load(Ordering::Relaxed), 1);
        let mut short = frame(ID_PROBE, b"nonce");
        assert!(!peer.answer(&mut short, PEER_MAC));
        assert_eq!(peer.counters.bad_length.load(Ordering::Relaxed), 1);
    }

    /// During a key change the workers answer a check under either key,
    /// each with the key it came under; once the other key is dropped, a
    /// check under it is unauthentic.
    #[test]
    fn during_a_key_change_checks_are_answered_under_the_key_they_came_under() {
        let (h, mut peer) = configured(PEER, LOOSE);
        let new = CheckKey::new(b"the new cluster check key, 32 B!");
        assert!(h.check_keys().unwrap().try_set(key(), Some(new.clone())));
        for (k, port) in [(key(), 1u16), (new.clone(), 1)] {
            let mut f = frame(ID_PROBE, &request(ME, port).seal(&k));
            assert!(peer.admit(0, port, Kind::ProbeRequest));
            assert!(peer.answer(&mut f, PEER_MAC));
            let v = judge(
                &k,
                CLUSTER,
                ME,
                Some(PEER),
                Some(&NONCE),
                port,
                payload(&f).unwrap(),
            );
            assert_eq!(v, Verdict::Answer { responder: PEER });
        }
        assert!(h.check_keys().unwrap().try_set(new.clone(), None));
        let mut f = frame(ID_PROBE, &request(ME, 1).seal(&key()));
        assert!(peer.admit(0, 1, Kind::ProbeRequest));
        assert!(!peer.answer(&mut f, PEER_MAC));
        assert_eq!(peer.counters.unauthentic.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn policing_counts_what_exceeds_the_bucket_per_port_and_kind() {
        let limits = Limits {
            heartbeats_per_sec: 100,
            checks_per_sec: 10,
            burst: 5,
        };
        let (_h, mut w) = configured(PEER, limits);
        let admitted = (0..50)
            .filter(|_| w.admit(1000, 1, Kind::ProbeRequest))
            .count();
        assert_eq!(admitted, 5, "the burst, then nothing at the same instant");
        assert_eq!(w.counters.policed.load(Ordering::Relaxed), 45);
        // Other kinds and ports have their own buckets.
        assert!(w.admit(1000, 1, Kind::Heartbeat));
        assert!(w.admit(1000, 0, Kind::ProbeRequest));
        // 10 per second: one more after 100 ms.
        assert!(w.admit(1100, 1, Kind::ProbeRequest));
        assert!(!w.admit(1100, 1, Kind::ProbeRequest));
        // Ports without an address carry nothing.
        assert!(!w.admit(1100, 5, Kind::Heartbeat));
        assert_eq!(w.counters.not_ha_port.load(Ordering::Relaxed), 1);
        assert_eq!(w.counters.policed.load(Ordering::Relaxed), 46);
    }

    #[test]
    fn nothing_is_accepted_before_the_control_thread_configures_the_path() {
        let (_h, mut w) = channel();
        assert!(!w.admit(0, 0, Kind::Heartbeat));
        let mut f = frame(ID_PROBE, &request(ME, 0).seal(&key()));
        assert!(!w.answer(&mut f, PEER_MAC));
        assert_eq!(w.counters.not_ready.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn ordinary_traffic_is_not_taken_for_ha_frames() {
        // A normal ping from a host to the gateway: src != dst.
        let mut p = frame(ID_PROBE, b"x");
        p[ETH + 15] = 9;
        assert_eq!(classify(&p), None);
        // Another identifier.
        let mut q = frame(0x1234, b"x");
        assert_eq!(classify(&q), None);
        // IP options (IHL 6) or another protocol.
        q = frame(ID_HEARTBEAT, b"x");
        q[ETH] = 0x46;
        assert_eq!(classify(&q), None);
        q = frame(ID_HEARTBEAT, b"x");
        q[ETH + 9] = 17;
        assert_eq!(classify(&q), None);
        // Truncated, ARP.
        assert_eq!(classify(&frame(ID_HEARTBEAT, b"")[..HEADER_LEN - 1]), None);
        let mut arp = frame(ID_HEARTBEAT, b"x");
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(classify(&arp), None);
    }

    #[test]
    fn lengths_that_do_not_add_up_are_refused_and_counted() {
        let mut p = frame(ID_HEARTBEAT, b"abc");
        p[ETH + 2..ETH + 4].copy_from_slice(&500u16.to_be_bytes());
        assert_eq!(payload(&p), None);
        p[ETH + 2..ETH + 4].copy_from_slice(&3u16.to_be_bytes());
        assert_eq!(payload(&p), None);
        let mut small = [0u8; 40];
        assert_eq!(
            build_request(&mut small, BROADCAST, MAC, ADDR, ID_PROBE, 1, b"x"),
            None
        );
        let mut out = [0u8; 1024];
        assert_eq!(
            build_request(
                &mut out,
                BROADCAST,
                MAC,
                ADDR,
                ID_PROBE,
                1,
                &[0; MAX_PAYLOAD + 1]
            ),
            None
        );
        // A heartbeat of the wrong size is not handed over.
        let (h, w) = configured(PEER, LOOSE);
        w.deliver(1, Kind::Heartbeat, &frame(ID_HEARTBEAT, &[0; 67]));
        assert_eq!(h.received(10).count(), 0);
        assert_eq!(w.counters.bad_length.load(Ordering::Relaxed), 1);
    }

    proptest::proptest! {
        /// Whatever arrives on a data port, classifying it, policing it,
        /// answering it and handing it over never panics, only frames with
        /// a tandem identifier are taken, and nothing but a sealed request
        /// is ever answered.
        #[test]
        fn arbitrary_frames_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let (h, mut w) = configured(PEER, LOOSE);
            if let Some(kind) = classify(&bytes) {
                let id = u16::from_be_bytes([bytes[38], bytes[39]]);
                proptest::prop_assert!(id == ID_HEARTBEAT || id == ID_PROBE, "{:?}", kind);
                let _ = payload(&bytes);
                if w.admit(0, 1, kind) {
                    let mut copy = bytes.clone();
                    match kind {
                        Kind::ProbeRequest => proptest::prop_assert!(!w.answer(&mut copy, MAC)),
                        _ => w.deliver(1, kind, &copy),
                    }
                }
                for r in h.received(10) {
                    let _ = judge(&key(), CLUSTER, ME, Some(PEER), Some(&NONCE), r.port, r.payload());
                }
            }
            let _ = judge(&key(), CLUSTER, ME, None, None, 0, &bytes);
        }
    }

    proptest::proptest! {
        /// Valid HA frames (heartbeat, sealed check, sealed answer) with
        /// bytes changed, cut or added: never a panic, and no damaged
        /// check is ever answered or accepted.
        #[test]
        fn damaged_ha_frames_never_panic_and_are_never_accepted(
            which in 0usize..3,
            flips in proptest::collection::vec((0usize..200, 1u8..=255), 1..6),
            cut in 0usize..200,
            tail in proptest::collection::vec(proptest::num::u8::ANY, 0..40),
        ) {
            let sealed = request(ME, 1).seal(&key());
            let mut f = match which {
                0 => frame(ID_HEARTBEAT, &[5; 68]),
                1 => frame(ID_PROBE, &sealed),
                _ => {
                    let mut f = frame(ID_PROBE, &sealed);
                    let (_h, peer) = configured(PEER, LOOSE);
                    proptest::prop_assert!(peer.answer(&mut f, PEER_MAC));
                    f
                }
            };
            let intact = payload(&f).map(<[u8]>::to_vec);
            for (at, x) in flips {
                if let Some(b) = f.get_mut(at) {
                    *b ^= x;
                }
            }
            if cut < f.len() {
                f.truncate(cut);
            }
            f.extend_from_slice(&tail);
            let (h, mut w) = configured(PEER, LOOSE);
            if let Some(kind) = classify(&f) {
                proptest::prop_assert!(w.admit(0, 1, kind));
                let mut copy = f.clone();
                match kind {
                    Kind::ProbeRequest => {
                        if w.answer(&mut copy, MAC) {
                            // Only an intact request is answered.
                            proptest::prop_assert_eq!(payload(&f).map(<[u8]>::to_vec), Some(sealed.to_vec()));
                        }
                    }
                    _ => w.deliver(1, kind, &copy),
                }
                for r in h.received(10) {
                    let v = judge(&key(), CLUSTER, ME, Some(PEER), Some(&NONCE), r.port, r.payload());
                    if let Verdict::Answer { .. } = v {
                        // Only the intact answer is accepted.
                        proptest::prop_assert_eq!(which, 2);
                        proptest::prop_assert_eq!(Some(r.payload().to_vec()), intact.clone());
                    }
                }
            }
        }
    }

    #[test]
    fn the_channel_carries_fixed_size_frames_both_ways_and_counts_overflow() {
        let (handle, path) = configured(PEER, LOOSE);
        let w1 = path.without_sending();
        let hb = frame(ID_HEARTBEAT, &[7; 68]);
        w1.deliver(3, Kind::Heartbeat, &hb);
        let got: Vec<_> = handle.received(10).collect();
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].port, got[0].kind), (3, Kind::Heartbeat));
        assert_eq!(got[0].payload(), &[7; 68][..]);
        assert_eq!(got[0].src_mac, MAC);
        assert!(handle.send(1, &[1, 2, 3]));
        assert!(!handle.send(1, &[0; MAX_FRAME + 1]));
        assert!(w1.next_outgoing().is_none(), "only worker 0 sends");
        let out = path.next_outgoing().unwrap();
        assert_eq!((out.port, out.frame()), (1, &[1, 2, 3][..]));
        for _ in 0..300 {
            w1.deliver(3, Kind::Heartbeat, &hb);
        }
        assert_eq!(
            handle.counters.channel_full.load(Ordering::Relaxed),
            300 - 256
        );
        // The control thread takes a bounded number at a time.
        assert_eq!(handle.received(32).count(), 32);
        assert_eq!(handle.backlog(), 256 - 32);
        let s = handle.counters.snapshot();
        assert_eq!((s.heartbeats_in, s.channel_full), (257, 44));
    }
}
