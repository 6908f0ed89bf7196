//! The K2K wire format: the datagram header, record-group framing and the
//! records themselves (layout documented in `docs/k2k.md`).
//!
//! Everything here is plain functions over byte slices. Parsing is
//! checked once (`Header::parse` checks the header's length, a group's
//! `length * count` is checked against the body, a known record's length
//! against its minimum) and after that fixed offsets are read from slices
//! known to be long enough, so no input can make a decoder panic.

use crate::conntrack::{
    BucketMask, ConnSnapshot, ConnUpdate, Delta, DeltaKind, DgramState, EspConn, IcmpConn, Nat,
    NatKind, ProtoState, SctpConn, SctpState, TcpConn, TcpPeer, TcpState,
};
use crate::flow::FlowKey;
use std::fmt;
use std::net::Ipv4Addr;

/// The four bytes every K2K datagram starts with.
pub const MAGIC: [u8; 4] = *b"TK2K";
/// The protocol version this build implements (and the highest it speaks).
/// Version 2 replaced version 1's clock-based epochs with random session
/// ids from both members (version 1 could reuse a nonce when a member
/// restarted twice within a second); the two do not interoperate.
pub const VERSION: u8 = 2;
/// The next protocol version, which a build with `TANDEM_K2K_VERSION=3`
/// speaks (rolling upgrades are tested across it): version 2 plus the
/// record group [`BUILD_GROUP`], which carries the sender's version text.
/// A version-2 member skips that group, as it skips every group it does
/// not know, and the pair speaks version 2 until both are on version 3.
pub const NEXT_VERSION: u8 = VERSION + 1;
/// The record group [`NEXT_VERSION`] adds (the sender's version text).
pub const BUILD_GROUP: u8 = 0x40;
/// The lowest protocol version this build speaks.
pub const MIN_VERSION: u8 = 2;
/// Length of the version-2 header (a later version may append fields; the
/// header's own length field says where the body starts).
pub const HEADER_LEN: usize = 76;
/// Length of the AEAD tag that ends every datagram.
pub const TAG_LEN: usize = 16;
/// Header plus tag: the fixed cost of a datagram.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// Length of a record group's header `{type, flags, length, count}`.
pub const GROUP_HEADER_LEN: usize = 6;
/// Header flag: the body is encrypted (otherwise only authenticated).
pub const FLAG_ENCRYPTED: u8 = 0x01;
/// Bit 63 of a sequence number marks a control datagram (Hello, NACK,
/// pure ack): control datagrams are numbered apart from the reliable
/// stream so that they never open a gap in it, and the two spaces never
/// share a nonce.
pub const CONTROL_SEQ_BIT: u64 = 1 << 63;
/// Largest datagram accepted (a UDP payload cannot be longer).
pub const MAX_DATAGRAM: usize = 65535;

/// A node's serial number as carried on the wire: 16 bytes, the ASCII
/// serial zero-padded (see [`serial_from_str`]).
pub type Serial = [u8; 16];

/// A session id: 16 random bytes a node draws at every start (never all
/// zero). The keys of a datagram are derived from the sender's and the
/// receiver's session ids, so a restart never reuses a key, and a
/// datagram captured before a restart authenticates under no current key.
pub type SessionId = [u8; 16];

/// The "no session id known" value.
pub const NO_SESSION: SessionId = [0; 16];

/// The wire form of a serial string: its first 16 bytes, zero padded.
pub fn serial_from_str(s: &str) -> Serial {
    let mut out = [0u8; 16];
    let n = s.len().min(16);
    out[..n].copy_from_slice(&s.as_bytes()[..n]);
    out
}

/// Why bytes were not accepted as a K2K datagram or body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DecodeError {
    /// Shorter than a header plus a tag.
    Truncated,
    /// Does not start with [`MAGIC`].
    BadMagic,
    /// A protocol version outside the range this node speaks.
    UnknownVersion,
    /// The header-length field is below the version-1 header or runs
    /// past the datagram.
    BadHeaderLength,
    /// Fewer than [`GROUP_HEADER_LEN`] bytes left where a group starts.
    GroupHeaderTruncated,
    /// A group's `length * count` runs past the body.
    GroupTruncated,
    /// A known record type with a record length below its size.
    RecordTooShort,
    /// A field out of its range (an enum value, a window scale above 14,
    /// a NACK range whose first is after its last, ...).
    BadValue,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DecodeError::Truncated => "datagram shorter than a K2K header and tag",
            DecodeError::BadMagic => "not a K2K datagram (bad magic)",
            DecodeError::UnknownVersion => "K2K protocol version not spoken by this node",
            DecodeError::BadHeaderLength => "K2K header length out of range",
            DecodeError::GroupHeaderTruncated => "record group header truncated",
            DecodeError::GroupTruncated => "record group runs past the datagram",
            DecodeError::RecordTooShort => "record shorter than its type requires",
            DecodeError::BadValue => "record field out of range",
        })
    }
}

impl std::error::Error for DecodeError {}

/// Header field offsets (version 2).
mod hdr {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 4;
    pub const FLAGS: usize = 5;
    pub const HDR_LEN: usize = 6;
    pub const CLUSTER: usize = 8;
    pub const SERIAL: usize = 12;
    pub const SESSION: usize = 28;
    pub const PEER_SESSION: usize = 44;
    pub const SEQ: usize = 60;
    pub const ACK: usize = 68;
}

fn be16(b: &[u8], o: usize) -> u16 {
    u16::from_be_bytes([b[o], b[o + 1]])
}
fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn be64(b: &[u8], o: usize) -> u64 {
    (u64::from(be32(b, o)) << 32) | u64::from(be32(b, o + 4))
}
fn put16(b: &mut [u8], o: usize, v: u16) {
    b[o..o + 2].copy_from_slice(&v.to_be_bytes());
}
fn put32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_be_bytes());
}
fn put64(b: &mut [u8], o: usize, v: u64) {
    b[o..o + 8].copy_from_slice(&v.to_be_bytes());
}
/// Milliseconds as a saturated u32 (49 days; timeouts are far shorter).
fn ms32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// The datagram header (everything before the body; authenticated).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Header {
    /// Protocol version the datagram is written in.
    pub version: u8,
    /// `FLAG_*` bits.
    pub flags: u8,
    /// The HA cluster the sender belongs to.
    pub cluster_id: u32,
    /// The sender's serial.
    pub serial: Serial,
    /// The sender's session id (random, new at every start).
    pub session: SessionId,
    /// The receiver's session id as the sender knows it
    /// ([`NO_SESSION`]: none yet). The datagram's key depends on it.
    pub peer_session: SessionId,
    /// Sequence number within the sender's session (bit 63: control
    /// datagram).
    pub seq: u64,
    /// Highest in-order stream sequence number received from the
    /// receiver's session `peer_session` (0 with no session).
    pub ack: u64,
}

impl Header {
    /// Parses the header of `d`, accepting versions `min..=max`. Returns
    /// the header and the header's length (where the body starts); the
    /// tag is the last [`TAG_LEN`] bytes of `d`.
    pub fn parse(d: &[u8], min: u8, max: u8) -> Result<(Header, usize), DecodeError> {
        if d.len() < OVERHEAD {
            return Err(DecodeError::Truncated);
        }
        if d[hdr::MAGIC..hdr::MAGIC + 4] != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let version = d[hdr::VERSION];
        if version < min || version > max {
            return Err(DecodeError::UnknownVersion);
        }
        let hdr_len = usize::from(be16(d, hdr::HDR_LEN));
        if hdr_len < HEADER_LEN || hdr_len + TAG_LEN > d.len() {
            return Err(DecodeError::BadHeaderLength);
        }
        let field = |at: usize| {
            let mut v = [0u8; 16];
            v.copy_from_slice(&d[at..at + 16]);
            v
        };
        Ok((
            Header {
                version,
                flags: d[hdr::FLAGS],
                cluster_id: be32(d, hdr::CLUSTER),
                serial: field(hdr::SERIAL),
                session: field(hdr::SESSION),
                peer_session: field(hdr::PEER_SESSION),
                seq: be64(d, hdr::SEQ),
                ack: be64(d, hdr::ACK),
            },
            hdr_len,
        ))
    }

    /// Writes the header into `out[..HEADER_LEN]` (`out` must be at least
    /// that long).
    pub fn emit(&self, out: &mut [u8]) {
        out[hdr::MAGIC..hdr::MAGIC + 4].copy_from_slice(&MAGIC);
        out[hdr::VERSION] = self.version;
        out[hdr::FLAGS] = self.flags;
        put16(out, hdr::HDR_LEN, HEADER_LEN as u16);
        put32(out, hdr::CLUSTER, self.cluster_id);
        out[hdr::SERIAL..hdr::SERIAL + 16].copy_from_slice(&self.serial);
        out[hdr::SESSION..hdr::SESSION + 16].copy_from_slice(&self.session);
        out[hdr::PEER_SESSION..hdr::PEER_SESSION + 16].copy_from_slice(&self.peer_session);
        put64(out, hdr::SEQ, self.seq);
        put64(out, hdr::ACK, self.ack);
    }

    /// Whether this is a control datagram (outside the reliable stream).
    pub fn is_control(&self) -> bool {
        self.seq & CONTROL_SEQ_BIT != 0
    }

    /// Whether the body is encrypted.
    pub fn is_encrypted(&self) -> bool {
        self.flags & FLAG_ENCRYPTED != 0
    }
}

/// The record types of protocol version 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RecordType {
    /// Versions, serial, epoch, capabilities, stream base (control).
    Hello = 0x01,
    /// A range of missing sequence numbers (control).
    Nack = 0x02,
    /// Ask the peer for a full bulk sync.
    BulkRequest = 0x03,
    /// A bulk sync begins.
    BulkStart = 0x04,
    /// A bulk sync ended, with the number of connections it carried.
    BulkEnd = 0x05,
    /// Ask the peer for one connection by key.
    UpdateRequest = 0x06,
    /// Liveness of one HA link, with what the sender hears (control).
    Keepalive = 0x07,
    /// Ask the peer for the digest of its table (a consistency check).
    VerifyRequest = 0x08,
    /// Sixteen buckets of the sender's table digest.
    VerifyDigest = 0x09,
    /// A full connection.
    ConnCreate = 0x10,
    /// A state transition.
    ConnUpdate = 0x11,
    /// A long-lived connection is still active.
    ConnRefresh = 0x12,
    /// A connection is gone.
    ConnDelete = 0x13,
}

impl RecordType {
    /// Every version-1 type.
    pub const ALL: [RecordType; 13] = [
        RecordType::Hello,
        RecordType::Nack,
        RecordType::BulkRequest,
        RecordType::BulkStart,
        RecordType::BulkEnd,
        RecordType::UpdateRequest,
        RecordType::Keepalive,
        RecordType::VerifyRequest,
        RecordType::VerifyDigest,
        RecordType::ConnCreate,
        RecordType::ConnUpdate,
        RecordType::ConnRefresh,
        RecordType::ConnDelete,
    ];

    /// The type of a wire value, if this version knows it.
    pub fn from_u8(v: u8) -> Option<RecordType> {
        RecordType::ALL.iter().copied().find(|t| *t as u8 == v)
    }

    /// The record's length in version 1 (what a sender writes and the
    /// least a receiver accepts).
    pub const fn wire_len(self) -> usize {
        match self {
            RecordType::Hello => HELLO_LEN,
            RecordType::Nack => 16,
            RecordType::BulkRequest | RecordType::BulkStart => 4 + MASK_LEN,
            RecordType::Keepalive | RecordType::VerifyRequest => 4,
            RecordType::VerifyDigest => DIGEST_LEN,
            RecordType::BulkEnd => 12,
            RecordType::UpdateRequest | RecordType::ConnDelete => KEY_LEN,
            RecordType::ConnCreate => CREATE_LEN,
            RecordType::ConnUpdate => UPDATE_LEN,
            RecordType::ConnRefresh => KEY_LEN + 4,
        }
    }

    /// Control types travel outside the reliable stream.
    pub fn is_control(self) -> bool {
        matches!(
            self,
            RecordType::Hello | RecordType::Nack | RecordType::Keepalive
        )
    }
}

/// Length of an encoded [`FlowKey`].
pub const KEY_LEN: usize = 13;
/// Length of an encoded [`ProtoState`].
pub const STATE_LEN: usize = 32;
/// Length of a ConnCreate record.
pub const CREATE_LEN: usize = 116;
/// Length of a ConnUpdate record.
pub const UPDATE_LEN: usize = KEY_LEN + STATE_LEN + 4;
/// Length of a Hello record.
pub const HELLO_LEN: usize = 36;
/// Length of a bucket mask.
pub const MASK_LEN: usize = 32;
/// Digest buckets per VerifyDigest record.
pub const DIGEST_PER_RECORD: usize = 16;
/// Length of a VerifyDigest record: id, first bucket, 3 reserved bytes,
/// then per bucket connections (u32) and XOR (u64).
pub const DIGEST_LEN: usize = 8 + DIGEST_PER_RECORD * 12;
/// The largest version-1 record.
pub const MAX_RECORD_LEN: usize = CREATE_LEN;

/// Hello capability: the node can encrypt the stream.
pub const CAP_ENCRYPT: u32 = 0x1;
/// Hello capability: the node answers UpdateRequest.
pub const CAP_UPDATE_REQUEST: u32 = 0x2;

/// A node's introduction: sent when it starts, when the peer restarts,
/// and until the peer shows it has heard it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Hello {
    /// Lowest protocol version the sender speaks.
    pub min_version: u8,
    /// Highest protocol version the sender speaks.
    pub max_version: u8,
    /// The sender wants a Hello back.
    pub reply: bool,
    /// `CAP_*` bits.
    pub capabilities: u32,
    /// The sender's serial (equal to the header's).
    pub serial: Serial,
    /// The sender's boot number (for the log; the session id, not this,
    /// tells instances apart).
    pub epoch: u32,
    /// Lowest sequence number of the sender's stream it can still
    /// (re)send: the receiver skips anything older.
    pub base_seq: u64,
}

/// One K2K record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Record {
    /// See [`Hello`].
    Hello(Hello),
    /// Sequence numbers `first..=last` of the receiver's stream are missing.
    Nack {
        /// First missing.
        first: u64,
        /// Last missing.
        last: u64,
    },
    /// Ask the peer for a bulk sync of the digest buckets in `mask` (all
    /// of them: the whole table; some: a repair).
    BulkRequest {
        /// Request identifier (echoed nowhere; for logs).
        id: u32,
        /// The buckets wanted.
        mask: BucketMask,
    },
    /// A bulk sync begins: every connection the sender has in the buckets
    /// of `mask` follows as ConnCreate, then a BulkEnd with the same id.
    BulkStart {
        /// Bulk identifier.
        id: u32,
        /// The buckets it carries (and the receiver sweeps at its end).
        mask: BucketMask,
    },
    /// A bulk sync ended.
    BulkEnd {
        /// Bulk identifier.
        id: u32,
        /// ConnCreate records the bulk carried.
        count: u64,
    },
    /// Ask the peer for the connection whose original key is `key`.
    UpdateRequest {
        /// Original key.
        key: FlowKey,
    },
    /// Ask the peer for its table digest (the peer answers with
    /// VerifyDigest records, taken at this point of the streams).
    VerifyRequest {
        /// Verify identifier, echoed by the answer.
        id: u32,
    },
    /// Buckets `first .. first + 16` of the sender's table digest:
    /// (connections, XOR of fingerprints) each.
    VerifyDigest {
        /// The VerifyRequest answered (or the sender's own verify).
        id: u32,
        /// The first bucket (a multiple of 16).
        first: u8,
        /// The buckets.
        buckets: [(u32, u64); DIGEST_PER_RECORD],
    },
    /// Sent on every HA link every few milliseconds: the link it was sent
    /// on, and the links on which the sender hears the receiver (bit i:
    /// link i), so each side uses a link only where both directions work.
    Keepalive {
        /// The link it was sent on (0 main, 1 backup).
        link: u8,
        /// Links on which the sender hears the receiver.
        heard: u8,
    },
    /// A full connection (first sync, or part of a bulk).
    ConnCreate(ConnSnapshot),
    /// A state transition of a known connection.
    ConnUpdate(ConnUpdate),
    /// A long-lived connection is still active.
    ConnRefresh {
        /// Original key.
        key: FlowKey,
        /// Milliseconds until it expires.
        remaining_ms: u64,
    },
    /// The connection is gone.
    ConnDelete {
        /// Original key.
        key: FlowKey,
    },
}

impl Record {
    /// The record's wire type.
    pub fn record_type(&self) -> RecordType {
        match self {
            Record::Hello(_) => RecordType::Hello,
            Record::Nack { .. } => RecordType::Nack,
            Record::BulkRequest { .. } => RecordType::BulkRequest,
            Record::BulkStart { .. } => RecordType::BulkStart,
            Record::BulkEnd { .. } => RecordType::BulkEnd,
            Record::UpdateRequest { .. } => RecordType::UpdateRequest,
            Record::Keepalive { .. } => RecordType::Keepalive,
            Record::VerifyRequest { .. } => RecordType::VerifyRequest,
            Record::VerifyDigest { .. } => RecordType::VerifyDigest,
            Record::ConnCreate(_) => RecordType::ConnCreate,
            Record::ConnUpdate(_) => RecordType::ConnUpdate,
            Record::ConnRefresh { .. } => RecordType::ConnRefresh,
            Record::ConnDelete { .. } => RecordType::ConnDelete,
        }
    }

    /// The record of a conntrack delta.
    pub fn from_delta(d: &Delta) -> Record {
        match d.kind {
            DeltaKind::Create(s) => Record::ConnCreate(s),
            DeltaKind::Update(u) => Record::ConnUpdate(u),
            DeltaKind::Refresh { key, remaining_ms } => Record::ConnRefresh { key, remaining_ms },
            DeltaKind::Delete { key } => Record::ConnDelete { key },
        }
    }

    /// The conntrack delta of a received connection record, stamped
    /// `now_ms` (for [`crate::conntrack::Shard::apply`]); `None` for the
    /// other record types.
    pub fn to_delta(&self, now_ms: u64) -> Option<Delta> {
        let (created_ms, kind) = match *self {
            Record::ConnCreate(s) => (now_ms.saturating_sub(s.age_ms), DeltaKind::Create(s)),
            Record::ConnUpdate(u) => (now_ms, DeltaKind::Update(u)),
            Record::ConnRefresh { key, remaining_ms } => {
                (now_ms, DeltaKind::Refresh { key, remaining_ms })
            }
            Record::ConnDelete { key } => (now_ms, DeltaKind::Delete { key }),
            _ => return None,
        };
        Some(Delta {
            at_ms: now_ms,
            created_ms,
            kind,
        })
    }

    /// Writes the record into `out[..self.record_type().wire_len()]`.
    pub fn emit(&self, out: &mut [u8]) {
        let out = &mut out[..self.record_type().wire_len()];
        out.fill(0);
        match self {
            Record::Hello(h) => {
                out[0] = h.min_version;
                out[1] = h.max_version;
                out[2] = u8::from(h.reply);
                put32(out, 4, h.capabilities);
                out[8..24].copy_from_slice(&h.serial);
                put32(out, 24, h.epoch);
                put64(out, 28, h.base_seq);
            }
            Record::Nack { first, last } => {
                put64(out, 0, *first);
                put64(out, 8, *last);
            }
            Record::BulkRequest { id, mask } | Record::BulkStart { id, mask } => {
                put32(out, 0, *id);
                out[4..4 + MASK_LEN].copy_from_slice(&mask.0);
            }
            Record::VerifyRequest { id } => put32(out, 0, *id),
            Record::VerifyDigest { id, first, buckets } => {
                put32(out, 0, *id);
                out[4] = *first;
                for (i, (n, x)) in buckets.iter().enumerate() {
                    put32(out, 8 + i * 12, *n);
                    put64(out, 12 + i * 12, *x);
                }
            }
            Record::BulkEnd { id, count } => {
                put32(out, 0, *id);
                put64(out, 4, *count);
            }
            Record::UpdateRequest { key } | Record::ConnDelete { key } => emit_key(out, key),
            Record::Keepalive { link, heard } => {
                out[0] = *link;
                out[1] = *heard;
            }
            Record::ConnCreate(s) => emit_create(out, s),
            Record::ConnUpdate(u) => {
                emit_key(out, &u.key);
                emit_state(&mut out[KEY_LEN..KEY_LEN + STATE_LEN], &u.state);
                put32(out, KEY_LEN + STATE_LEN, ms32(u.remaining_ms));
            }
            Record::ConnRefresh { key, remaining_ms } => {
                emit_key(out, key);
                put32(out, KEY_LEN, ms32(*remaining_ms));
            }
        }
    }

    /// Parses one record of type `ty` from `b`, which must hold at least
    /// `ty.wire_len()` bytes (the decoder checks; extra bytes are ignored).
    pub fn parse(ty: RecordType, b: &[u8]) -> Result<Record, DecodeError> {
        if b.len() < ty.wire_len() {
            return Err(DecodeError::RecordTooShort);
        }
        Ok(match ty {
            RecordType::Hello => {
                let (min_version, max_version) = (b[0], b[1]);
                if min_version == 0 || min_version > max_version {
                    return Err(DecodeError::BadValue);
                }
                let base_seq = be64(b, 28);
                if base_seq & CONTROL_SEQ_BIT != 0 {
                    return Err(DecodeError::BadValue);
                }
                let mut serial = [0u8; 16];
                serial.copy_from_slice(&b[8..24]);
                Record::Hello(Hello {
                    min_version,
                    max_version,
                    reply: b[2] & 1 != 0,
                    capabilities: be32(b, 4),
                    serial,
                    epoch: be32(b, 24),
                    base_seq,
                })
            }
            RecordType::Nack => {
                let (first, last) = (be64(b, 0), be64(b, 8));
                if first > last {
                    return Err(DecodeError::BadValue);
                }
                Record::Nack { first, last }
            }
            RecordType::BulkRequest => Record::BulkRequest {
                id: be32(b, 0),
                mask: parse_mask(b),
            },
            RecordType::BulkStart => Record::BulkStart {
                id: be32(b, 0),
                mask: parse_mask(b),
            },
            RecordType::VerifyRequest => Record::VerifyRequest { id: be32(b, 0) },
            RecordType::VerifyDigest => {
                let first = b[4];
                if usize::from(first) % DIGEST_PER_RECORD != 0 {
                    return Err(DecodeError::BadValue);
                }
                let mut buckets = [(0u32, 0u64); DIGEST_PER_RECORD];
                for (i, slot) in buckets.iter_mut().enumerate() {
                    *slot = (be32(b, 8 + i * 12), be64(b, 12 + i * 12));
                }
                Record::VerifyDigest {
                    id: be32(b, 0),
                    first,
                    buckets,
                }
            }
            RecordType::BulkEnd => Record::BulkEnd {
                id: be32(b, 0),
                count: be64(b, 4),
            },
            RecordType::UpdateRequest => Record::UpdateRequest { key: parse_key(b) },
            RecordType::Keepalive => Record::Keepalive {
                link: b[0],
                heard: b[1],
            },
            RecordType::ConnDelete => Record::ConnDelete { key: parse_key(b) },
            RecordType::ConnRefresh => Record::ConnRefresh {
                key: parse_key(b),
                remaining_ms: u64::from(be32(b, KEY_LEN)),
            },
            RecordType::ConnUpdate => Record::ConnUpdate(ConnUpdate {
                key: parse_key(b),
                state: parse_state(&b[KEY_LEN..KEY_LEN + STATE_LEN])?,
                remaining_ms: u64::from(be32(b, KEY_LEN + STATE_LEN)),
            }),
            RecordType::ConnCreate => Record::ConnCreate(parse_create(b)?),
        })
    }
}

fn parse_mask(b: &[u8]) -> BucketMask {
    let mut m = [0u8; MASK_LEN];
    m.copy_from_slice(&b[4..4 + MASK_LEN]);
    BucketMask(m)
}

fn emit_key(out: &mut [u8], k: &FlowKey) {
    out[0..4].copy_from_slice(&k.src.octets());
    out[4..8].copy_from_slice(&k.dst.octets());
    put16(out, 8, k.sport);
    put16(out, 10, k.dport);
    out[12] = k.proto;
}

fn parse_key(b: &[u8]) -> FlowKey {
    FlowKey {
        src: Ipv4Addr::new(b[0], b[1], b[2], b[3]),
        dst: Ipv4Addr::new(b[4], b[5], b[6], b[7]),
        sport: be16(b, 8),
        dport: be16(b, 10),
        proto: b[12],
    }
}

/// Protocol-state tags (byte 0 of the state block).
mod tag {
    pub const TCP: u8 = 1;
    pub const UDP: u8 = 2;
    pub const ICMP: u8 = 3;
    pub const GRE: u8 = 4;
    pub const ESP: u8 = 5;
    pub const SCTP: u8 = 6;
    pub const OTHER: u8 = 7;
}

fn dgram_to_u8(s: DgramState) -> u8 {
    match s {
        DgramState::Unreplied => 0,
        DgramState::Replied => 1,
        DgramState::Stream => 2,
    }
}

fn dgram_from_u8(v: u8) -> Result<DgramState, DecodeError> {
    Ok(match v {
        0 => DgramState::Unreplied,
        1 => DgramState::Replied,
        2 => DgramState::Stream,
        _ => return Err(DecodeError::BadValue),
    })
}

const TCP_STATES: [TcpState; 8] = [
    TcpState::SynSent,
    TcpState::SynReceived,
    TcpState::Established,
    TcpState::FinWait,
    TcpState::CloseWait,
    TcpState::LastAck,
    TcpState::TimeWait,
    TcpState::Closed,
];

const SCTP_STATES: [SctpState; 6] = [
    SctpState::CookieWait,
    SctpState::CookieEchoed,
    SctpState::Established,
    SctpState::ShutdownSent,
    SctpState::ShutdownAckSent,
    SctpState::Closed,
];

fn index_of<T: PartialEq>(all: &[T], v: &T) -> u8 {
    all.iter().position(|x| x == v).unwrap_or(0) as u8
}

/// The 32-byte state block: tag, state, flags, aux, then 28 bytes of
/// per-protocol data (TCP: two 14-byte peers; ESP/SCTP: two u32).
fn emit_state(out: &mut [u8], s: &ProtoState) {
    out.fill(0);
    match s {
        ProtoState::Tcp(t) => {
            out[0] = tag::TCP;
            out[1] = index_of(&TCP_STATES, &t.state);
            out[2] = u8::from(t.liberal);
            for (i, p) in t.peers.iter().enumerate() {
                let o = 4 + 14 * i;
                put32(out, o, p.end);
                put32(out, o + 4, p.maxend);
                put32(out, o + 8, p.maxwin);
                out[o + 12] = p.scale;
                out[o + 13] = p.flags;
            }
        }
        ProtoState::Udp(d) | ProtoState::Gre(d) | ProtoState::Other(d) => {
            out[0] = match s {
                ProtoState::Udp(_) => tag::UDP,
                ProtoState::Gre(_) => tag::GRE,
                _ => tag::OTHER,
            };
            out[1] = dgram_to_u8(*d);
        }
        ProtoState::Icmp(i) => {
            out[0] = tag::ICMP;
            out[2] = u8::from(i.replied);
            out[3] = i.ty;
        }
        ProtoState::Esp(e) => {
            out[0] = tag::ESP;
            out[1] = dgram_to_u8(e.state);
            put32(out, 4, e.spi[0]);
            put32(out, 8, e.spi[1]);
        }
        ProtoState::Sctp(c) => {
            out[0] = tag::SCTP;
            out[1] = index_of(&SCTP_STATES, &c.state);
            put32(out, 4, c.vtag[0]);
            put32(out, 8, c.vtag[1]);
        }
    }
}

fn parse_state(b: &[u8]) -> Result<ProtoState, DecodeError> {
    let (state, flags) = (b[1], b[2]);
    Ok(match b[0] {
        tag::TCP => {
            let st = *TCP_STATES
                .get(usize::from(state))
                .ok_or(DecodeError::BadValue)?;
            let mut peers = [TcpPeer::default(); 2];
            for (i, p) in peers.iter_mut().enumerate() {
                let o = 4 + 14 * i;
                if b[o + 12] > 14 {
                    return Err(DecodeError::BadValue);
                }
                *p = TcpPeer {
                    end: be32(b, o),
                    maxend: be32(b, o + 4),
                    maxwin: be32(b, o + 8),
                    scale: b[o + 12],
                    flags: b[o + 13],
                };
            }
            ProtoState::Tcp(TcpConn {
                state: st,
                liberal: flags & 1 != 0,
                peers,
            })
        }
        tag::UDP => ProtoState::Udp(dgram_from_u8(state)?),
        tag::GRE => ProtoState::Gre(dgram_from_u8(state)?),
        tag::OTHER => ProtoState::Other(dgram_from_u8(state)?),
        tag::ICMP => ProtoState::Icmp(IcmpConn {
            ty: b[3],
            replied: flags & 1 != 0,
        }),
        tag::ESP => ProtoState::Esp(EspConn {
            state: dgram_from_u8(state)?,
            spi: [be32(b, 4), be32(b, 8)],
        }),
        tag::SCTP => ProtoState::Sctp(SctpConn {
            state: *SCTP_STATES
                .get(usize::from(state))
                .ok_or(DecodeError::BadValue)?,
            vtag: [be32(b, 4), be32(b, 8)],
        }),
        _ => return Err(DecodeError::BadValue),
    })
}

/// ConnCreate field offsets.
mod create {
    pub const ORIG: usize = 0;
    pub const NAT_KIND: usize = 13;
    pub const NAT_KEY: usize = 14;
    pub const FLAGS: usize = 27;
    pub const RULE: usize = 28;
    pub const IN_PORT: usize = 32;
    pub const OUT_PORT: usize = 34;
    pub const STATE: usize = 36;
    pub const AGE: usize = 68;
    pub const IDLE: usize = 76;
    pub const REMAINING: usize = 80;
    pub const PACKETS: usize = 84;
    pub const BYTES: usize = 100;
}

const CONN_SYNC: u8 = 0x01;
const CONN_LOG: u8 = 0x02;

fn emit_create(out: &mut [u8], s: &ConnSnapshot) {
    use create as c;
    emit_key(&mut out[c::ORIG..], &s.orig);
    if let Some(n) = &s.nat {
        out[c::NAT_KIND] = n.kind as u8;
        emit_key(&mut out[c::NAT_KEY..], &n.translated);
    }
    out[c::FLAGS] = if s.sync { CONN_SYNC } else { 0 } | if s.log { CONN_LOG } else { 0 };
    put32(out, c::RULE, s.rule);
    put16(out, c::IN_PORT, s.in_port);
    put16(out, c::OUT_PORT, s.out_port);
    emit_state(&mut out[c::STATE..c::STATE + STATE_LEN], &s.state);
    put64(out, c::AGE, s.age_ms);
    put32(out, c::IDLE, ms32(s.idle_ms));
    put32(out, c::REMAINING, ms32(s.remaining_ms));
    for i in 0..2 {
        put64(out, c::PACKETS + 8 * i, s.packets[i]);
        put64(out, c::BYTES + 8 * i, s.bytes[i]);
    }
}

fn parse_create(b: &[u8]) -> Result<ConnSnapshot, DecodeError> {
    use create as c;
    let orig = parse_key(&b[c::ORIG..]);
    let nat = match b[c::NAT_KIND] {
        0 => None,
        k @ (1 | 2) => Some(Nat {
            kind: if k == 1 { NatKind::Snat } else { NatKind::Dnat },
            orig,
            translated: parse_key(&b[c::NAT_KEY..]),
        }),
        _ => return Err(DecodeError::BadValue),
    };
    Ok(ConnSnapshot {
        orig,
        nat,
        state: parse_state(&b[c::STATE..c::STATE + STATE_LEN])?,
        rule: be32(b, c::RULE),
        sync: b[c::FLAGS] & CONN_SYNC != 0,
        log: b[c::FLAGS] & CONN_LOG != 0,
        in_port: be16(b, c::IN_PORT),
        out_port: be16(b, c::OUT_PORT),
        age_ms: be64(b, c::AGE),
        idle_ms: u64::from(be32(b, c::IDLE)),
        remaining_ms: u64::from(be32(b, c::REMAINING)),
        packets: [be64(b, c::PACKETS), be64(b, c::PACKETS + 8)],
        bytes: [be64(b, c::BYTES), be64(b, c::BYTES + 8)],
    })
}

/// Writes records into a datagram body, grouping consecutive records of
/// the same type and length under one group header.
#[derive(Debug)]
pub struct BodyWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
    /// Offset of the open group's header, its type and record length.
    group: Option<(usize, u8, u16)>,
}

impl<'a> BodyWriter<'a> {
    /// A writer filling `buf` (the body's room: MTU less header and tag).
    pub fn new(buf: &'a mut [u8]) -> BodyWriter<'a> {
        BodyWriter {
            buf,
            len: 0,
            group: None,
        }
    }

    /// Appends `r`; false (and nothing written) if it does not fit.
    pub fn push(&mut self, r: &Record) -> bool {
        let ty = r.record_type();
        let Some(at) = self.reserve(ty as u8, ty.wire_len()) else {
            return false;
        };
        r.emit(&mut self.buf[at..at + ty.wire_len()]);
        true
    }

    /// Appends one record of raw type `ty` whose bytes are `rec` (for
    /// record types this build does not model; tests of forward
    /// compatibility use it). False if it does not fit.
    pub fn push_raw(&mut self, ty: u8, rec: &[u8]) -> bool {
        let Some(at) = self.reserve(ty, rec.len()) else {
            return false;
        };
        self.buf[at..at + rec.len()].copy_from_slice(rec);
        true
    }

    /// Room for one more record of `ty` and `len` bytes: extends the open
    /// group or opens a new one. Returns where the record goes.
    fn reserve(&mut self, ty: u8, len: usize) -> Option<usize> {
        let len16 = u16::try_from(len).ok()?;
        if let Some((g, gty, glen)) = self.group {
            let count = be16(self.buf, g + 4);
            if gty == ty && glen == len16 && count < u16::MAX && self.len + len <= self.buf.len() {
                put16(self.buf, g + 4, count + 1);
                let at = self.len;
                self.len += len;
                return Some(at);
            }
        }
        if self.len + GROUP_HEADER_LEN + len > self.buf.len() {
            return None;
        }
        let g = self.len;
        self.buf[g] = ty;
        self.buf[g + 1] = 0;
        put16(self.buf, g + 2, len16);
        put16(self.buf, g + 4, 1);
        self.group = Some((g, ty, len16));
        self.len += GROUP_HEADER_LEN + len;
        Some(g + GROUP_HEADER_LEN)
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// What [`decode_body`] saw besides the records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BodyInfo {
    /// Records decoded.
    pub records: usize,
    /// Groups of a type this version does not know (skipped).
    pub unknown_groups: usize,
    /// Records in those groups.
    pub unknown_records: usize,
}

/// Decodes a (plaintext) body, handing each record to `f` in order.
/// Groups of unknown types are skipped; bytes past a known record's
/// version-1 length are ignored. On error, records already handed to `f`
/// must be discarded by the caller (the session stages them).
pub fn decode_body(body: &[u8], mut f: impl FnMut(Record)) -> Result<BodyInfo, DecodeError> {
    let mut info = BodyInfo::default();
    let mut rest = body;
    while !rest.is_empty() {
        if rest.len() < GROUP_HEADER_LEN {
            return Err(DecodeError::GroupHeaderTruncated);
        }
        let ty = rest[0];
        let len = usize::from(be16(rest, 2));
        let count = usize::from(be16(rest, 4));
        let total = len * count;
        let recs = &rest[GROUP_HEADER_LEN..];
        if total > recs.len() {
            return Err(DecodeError::GroupTruncated);
        }
        match RecordType::from_u8(ty) {
            Some(t) => {
                if len < t.wire_len() {
                    return Err(DecodeError::RecordTooShort);
                }
                for r in recs[..total].chunks_exact(len) {
                    f(Record::parse(t, r)?);
                    info.records += 1;
                }
            }
            None => {
                info.unknown_groups += 1;
                info.unknown_records += count;
            }
        }
        rest = &recs[total..];
    }
    Ok(info)
}
