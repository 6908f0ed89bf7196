//! The heartbeat wire format (UDP 5405 on the HA links, and the payload of
//! the last-resort ICMP frames on the data ports), authenticated with
//! HMAC-SHA256 (truncated to 16 bytes) under the heartbeat key: Argon2id
//! of the pre-shared key, then HKDF ([`tandem_dataplane::hakeys`]), so a
//! host that records last-resort heartbeats on a data segment cannot test
//! guesses of the pre-shared key at any useful rate.
//!
//! ```text
//!  0  magic      u32  "THAB"
//!  4  version    u8   1
//!  5  flags      u8   bit0 active, bit1 synchronized, bit2 yields,
//!                     bits3-4 forced (0 none, 1 active, 2 passive),
//!                     bits5-6 link (0 main, 1 backup, 2 data),
//!                     bit7 took over (active after the peer went silent)
//!  6  quality    u8   0..=100
//!  7  priority   u8
//!  8  cluster id u32
//! 12  serial     u64  sender's member serial
//! 20  epoch      u64  sender's boot epoch (must grow across restarts)
//! 28  seq        u64  per-link sequence number, strictly increasing per epoch
//! 36  uptime ms  u64
//! 44  gen        u64  sender's heartbeat round (orders state across links)
//! 52  echo       u64  the highest boot epoch the sender has seen from us
//! 60  tag        [u8; 16]  HMAC-SHA256(key, bytes 0..60) truncated
//! ```
//! All integers big-endian. Decoding checks length, magic, version, cluster,
//! the tag (constant-time), field ranges, the sender's serial (our own,
//! looped back, is refused), then the replay window, and never panics. A
//! heartbeat thus proves knowledge of the key and names the member that
//! sent it. (The ICMP check has its own format and key, see
//! [`tandem_dataplane::hadata::CheckMsg`].)
//!
//! Freshness: a heartbeat of a sender's boot epoch we have not accepted
//! yet counts only if its `echo` is our own current epoch, that is, if it
//! was made after the sender heard this run of ours. So a capture replayed
//! after we restart (its echo names our previous run) keeps no dead peer
//! alive. Until then it only tells us the epoch to echo back: a restart on
//! either side costs one exchange of heartbeats (two intervals).

use super::machine::{LinkId, PeerState, Role};
use ring::hmac;

/// UDP port of heartbeats.
pub const PORT: u16 = 5405;
/// Size of a heartbeat on the wire.
pub const LEN: usize = 76;
const MAGIC: [u8; 4] = *b"THAB";
/// The heartbeat format's version (hainfo's election protocol version).
pub const VERSION: u8 = 2;
const BODY: usize = 60;
const TAG: usize = 16;

/// A decoded heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// The path the sender sent it on (authenticated).
    pub link: LinkId,
    /// Sequence number.
    pub seq: u64,
    /// What the sender announces.
    pub state: PeerState,
}

/// Why a heartbeat was rejected (one counter per reason in the daemon).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Not `LEN` bytes.
    BadLength(usize),
    /// Not a tandem heartbeat.
    BadMagic,
    /// A version we do not speak.
    UnsupportedVersion(u8),
    /// Another cluster's heartbeat (check the cluster id of both members).
    WrongCluster(u32),
    /// Authentication failed: wrong pre-shared key, or tampered.
    BadTag,
    /// A field out of range.
    BadField,
    /// An old or repeated sequence number (replay or reordering).
    Replay,
    /// Our own heartbeat, looped back (the data network is a broadcast
    /// domain): ignored before it touches the replay window.
    Own,
    /// Authentic, from a boot epoch of the peer not accepted yet, and made
    /// before the peer heard our current run (its echo is not our epoch):
    /// a replay, or a restarted peer's first heartbeat. Its epoch is
    /// echoed back so that the peer can prove itself.
    Unproven,
}

#[derive(Clone, Copy, Debug, Default)]
struct Window {
    epoch: u64,
    seq: Option<u64>,
}

/// Encodes our heartbeats and authenticates / de-duplicates the peer's.
pub struct Codec {
    key: hmac::Key,
    /// During a key change: the other key, also accepted (the new one
    /// once staged, the old one once committed).
    alt: Option<hmac::Key>,
    /// The last authentic heartbeat came under `alt`.
    last_under_alt: bool,
    cluster: u32,
    tx_seq: [u64; 3],
    rx: [Window; 3],
    own_serial: Option<u64>,
    /// Our boot epoch: a new epoch of the peer must echo it.
    own_epoch: Option<u64>,
    /// The highest authentic epoch seen from the peer (echoed).
    peer_epoch: u64,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec")
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

fn link_idx(l: LinkId) -> usize {
    match l {
        LinkId::Main => 0,
        LinkId::Backup => 1,
        LinkId::Data => 2,
    }
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

impl Codec {
    /// A codec for `cluster`, keyed by `key` (the heartbeat key of
    /// [`tandem_dataplane::hakeys::HaKeys::heartbeat`]). The epoch sent is
    /// `PeerState::epoch`, which must grow across restarts of the sender.
    pub fn new(key: &[u8], cluster: u32) -> Self {
        Codec {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
            alt: None,
            last_under_alt: false,
            cluster,
            tx_seq: [0; 3],
            rx: [Window::default(); 3],
            own_serial: None,
            own_epoch: None,
            peer_epoch: 0,
        }
    }

    /// Requires a new boot epoch of the peer to echo `epoch` (ours) before
    /// its heartbeats count (see the module doc); without it, any fresh
    /// epoch counts (tools and tests).
    pub fn with_own_epoch(mut self, epoch: u64) -> Self {
        self.own_epoch = Some(epoch);
        self
    }

    /// The keys of a key change's step: ours go out under `current`;
    /// `other` is accepted too (none: only `current`). Staged: (old,
    /// new); committed: (new, old); retired: (new, none).
    pub fn set_keys(&mut self, current: &[u8], other: Option<&[u8]>) {
        self.key = hmac::Key::new(hmac::HMAC_SHA256, current);
        self.alt = other.map(|k| hmac::Key::new(hmac::HMAC_SHA256, k));
        self.last_under_alt = false;
    }

    /// Whether the last authentic heartbeat came under the other key (the
    /// old one after a commit: the peer has not switched yet).
    pub fn last_under_alt(&self) -> bool {
        self.last_under_alt
    }

    /// Rejects heartbeats carrying `serial` (ours) as [`DecodeError::Own`].
    pub fn with_own_serial(mut self, serial: u64) -> Self {
        self.own_serial = Some(serial);
        self
    }

    /// The bytes of our next heartbeat on `link`.
    pub fn encode(&mut self, link: LinkId, s: &PeerState) -> [u8; LEN] {
        let i = link_idx(link);
        self.tx_seq[i] += 1;
        let mut b = [0u8; LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4] = VERSION;
        let forced = match s.forced {
            None => 0u8,
            Some(Role::Active) => 1,
            Some(Role::Passive) => 2,
        };
        b[5] = u8::from(s.role == Role::Active)
            | u8::from(s.synchronized) << 1
            | u8::from(s.yields) << 2
            | forced << 3
            | (i as u8) << 5
            | u8::from(s.took_over) << 7;
        b[6] = s.quality.min(100);
        b[7] = s.priority;
        b[8..12].copy_from_slice(&self.cluster.to_be_bytes());
        b[12..20].copy_from_slice(&s.serial.to_be_bytes());
        b[20..28].copy_from_slice(&s.epoch.to_be_bytes());
        b[28..36].copy_from_slice(&self.tx_seq[i].to_be_bytes());
        b[36..44].copy_from_slice(&s.uptime_ms.to_be_bytes());
        b[44..52].copy_from_slice(&s.gen.to_be_bytes());
        b[52..60].copy_from_slice(&self.peer_epoch.to_be_bytes());
        let tag = hmac::sign(&self.key, &b[..BODY]);
        b[BODY..].copy_from_slice(&tag.as_ref()[..TAG]);
        b
    }

    /// Authenticates and parses a heartbeat, and advances the replay window.
    pub fn decode(&mut self, buf: &[u8]) -> Result<Heartbeat, DecodeError> {
        if buf.len() != LEN {
            return Err(DecodeError::BadLength(buf.len()));
        }
        if buf[0..4] != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        if buf[4] != VERSION {
            return Err(DecodeError::UnsupportedVersion(buf[4]));
        }
        let cluster = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]);
        if cluster != self.cluster {
            return Err(DecodeError::WrongCluster(cluster));
        }
        let under =
            |k: &hmac::Key| ct_eq(&hmac::sign(k, &buf[..BODY]).as_ref()[..TAG], &buf[BODY..]);
        let under_alt = if under(&self.key) {
            false
        } else if self.alt.as_ref().is_some_and(under) {
            true
        } else {
            return Err(DecodeError::BadTag);
        };
        let flags = buf[5];
        let forced = match (flags >> 3) & 3 {
            0 => None,
            1 => Some(Role::Active),
            2 => Some(Role::Passive),
            _ => return Err(DecodeError::BadField),
        };
        let link = match (flags >> 5) & 3 {
            0 => LinkId::Main,
            1 => LinkId::Backup,
            2 => LinkId::Data,
            _ => return Err(DecodeError::BadField),
        };
        if buf[6] > 100 {
            return Err(DecodeError::BadField);
        }
        if self.own_serial == Some(be64(buf, 12)) {
            return Err(DecodeError::Own);
        }
        let epoch = be64(buf, 20);
        let seq = be64(buf, 28);
        let echo = be64(buf, 52);
        let w = &mut self.rx[link_idx(link)];
        let fresh = epoch > w.epoch || (epoch == w.epoch && w.seq.is_none_or(|last| seq > last));
        if !fresh {
            return Err(DecodeError::Replay);
        }
        // An authentic epoch above any seen: the one to echo.
        self.peer_epoch = self.peer_epoch.max(epoch);
        if epoch > w.epoch && self.own_epoch.is_some_and(|own| echo != own) {
            return Err(DecodeError::Unproven);
        }
        *w = Window {
            epoch,
            seq: Some(seq),
        };
        self.last_under_alt = under_alt;
        Ok(Heartbeat {
            link,
            seq,
            state: PeerState {
                role: if flags & 1 != 0 {
                    Role::Active
                } else {
                    Role::Passive
                },
                synchronized: flags & 2 != 0,
                yields: flags & 4 != 0,
                took_over: flags & 0x80 != 0,
                forced,
                quality: buf[6],
                priority: buf[7],
                serial: be64(buf, 12),
                epoch,
                uptime_ms: be64(buf, 36),
                gen: be64(buf, 44),
            },
        })
    }
}
