//! NAT bindings of connections and the per-shard SNAT port allocator.

use crate::flow::{proto, FlowKey, SYMMETRIC_RSS_KEY};
use std::net::Ipv4Addr;

/// Which end of a connection a NAT binding rewrites.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum NatKind {
    /// Source NAT: the initiator's address/port is rewritten.
    Snat = 1,
    /// Destination NAT: the responder's address/port is rewritten.
    Dnat = 2,
}

/// The NAT binding of a connection: `orig` is the original key as the
/// initiator sent it, `translated` the same packet after translation. The
/// connection's reply key is [`reply_key`]`(translated)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Nat {
    /// Source or destination NAT.
    pub kind: NatKind,
    /// The key before translation (the connection's original key).
    pub orig: FlowKey,
    /// The key after translation, on the wire on the far side.
    pub translated: FlowKey,
}

/// What the responder's packets of a flow whose initiator sent `orig`
/// look like. For ICMP queries and GRE the identifier stays in `sport`
/// both ways (flow.rs's convention), so only the addresses swap; for the
/// rest, `orig.reverse()`.
pub fn reply_key(orig: &FlowKey) -> FlowKey {
    match orig.proto {
        proto::ICMP | proto::GRE => FlowKey {
            src: orig.dst,
            dst: orig.src,
            ..*orig
        },
        _ => orig.reverse(),
    }
}

/// The inverse of [`reply_key`] (the original-direction key whose reply
/// is `reply`).
pub fn orig_of_reply(reply: &FlowKey) -> FlowKey {
    // Both forms are involutions.
    reply_key(reply)
}

/// A range of ports, inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    /// First port.
    pub first: u16,
    /// Last port.
    pub last: u16,
}

impl Default for PortRange {
    fn default() -> Self {
        PortRange {
            first: 1024,
            last: 65535,
        }
    }
}

/// Why no SNAT port could be allocated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NatError {
    /// Every port of the range that maps to this shard is bound for this
    /// (NAT address, protocol, remote address/port).
    PortsExhausted,
    /// The protocol has no port or identifier to translate (ESP, GRE,
    /// other).
    Unsupported,
}

/// Chooses SNAT source ports (or ICMP identifiers) whose reply flow
/// hashes to this shard.
///
/// The symmetric Toeplitz hash is linear over XOR in its input bits, so
/// `hash(key with port p) = hash(key with port 0) ^ T(p)` where `T`
/// splits into two 256-entry tables (high and low byte). Testing a
/// candidate port costs two table reads and a modulo; uniqueness is
/// checked against the shard's key index by the caller (a port is taken
/// for a remote end exactly when the candidate reply key is indexed), so
/// freeing is implicit in deleting the connection.
#[derive(Debug)]
pub struct PortAllocator {
    range: PortRange,
    shard: usize,
    shards: usize,
    /// Contribution of the source-port field (bytes 8..10), hi/lo byte.
    sport_t: [[u32; 256]; 2],
    /// Contribution of the destination-port field (bytes 10..12).
    dport_t: [[u32; 256]; 2],
    cursor: u32,
}

impl PortAllocator {
    /// An allocator for shard `shard` of `shards`, handing out ports of
    /// `range`.
    pub fn new(range: PortRange, shard: usize, shards: usize) -> PortAllocator {
        assert!(range.first <= range.last, "empty NAT port range");
        let mut sport_t = [[0u32; 256]; 2];
        let mut dport_t = [[0u32; 256]; 2];
        for v in 0..256usize {
            for (byte, table) in [(8usize, &mut sport_t), (10usize, &mut dport_t)] {
                let mut input = [0u8; 12];
                input[byte] = v as u8;
                table[0][v] = crate::flow::toeplitz(&SYMMETRIC_RSS_KEY, &input);
                let mut input = [0u8; 12];
                input[byte + 1] = v as u8;
                table[1][v] = crate::flow::toeplitz(&SYMMETRIC_RSS_KEY, &input);
            }
        }
        PortAllocator {
            range,
            shard,
            shards: shards.max(1),
            sport_t,
            dport_t,
            cursor: 0,
        }
    }

    /// The configured range.
    pub fn range(&self) -> PortRange {
        self.range
    }

    /// The translated key and reply key of `orig` with its source moved
    /// to `addr:port` (for ICMP, `port` is the identifier).
    fn candidate(orig: &FlowKey, addr: Ipv4Addr, port: u16) -> (FlowKey, FlowKey) {
        let t = FlowKey {
            src: addr,
            sport: port,
            ..*orig
        };
        (t, reply_key(&t))
    }

    /// Finds a source port for SNAT of `orig` to `addr` such that the
    /// reply key lands on this shard and `taken(reply_key)` is false.
    /// Tries the original port first (port preservation), then walks the
    /// range from a rotating cursor.
    pub fn allocate(
        &mut self,
        orig: &FlowKey,
        addr: Ipv4Addr,
        mut taken: impl FnMut(&FlowKey) -> bool,
    ) -> Result<Nat, NatError> {
        if !matches!(
            orig.proto,
            proto::TCP | proto::UDP | proto::SCTP | proto::ICMP
        ) {
            return Err(NatError::Unsupported);
        }
        let (t0, r0) = Self::candidate(orig, addr, 0);
        let base = r0.symmetric_hash();
        // Which field of the reply key carries the port.
        let table = if r0.proto == proto::ICMP {
            &self.sport_t
        } else {
            &self.dport_t
        };
        let lands_here = |p: u16| -> bool {
            if self.shards <= 1 {
                return true;
            }
            let h = base ^ table[0][usize::from(p >> 8)] ^ table[1][usize::from(p & 0xff)];
            crate::flow::owner_of_hash(h, self.shards) == self.shard
        };
        let first = u32::from(self.range.first);
        let span = u32::from(self.range.last) - first + 1;
        let preferred = orig.sport;
        if preferred >= self.range.first && preferred <= self.range.last && lands_here(preferred) {
            let (t, r) = Self::candidate(&t0, addr, preferred);
            if !taken(&r) {
                return Ok(Nat {
                    kind: NatKind::Snat,
                    orig: *orig,
                    translated: t,
                });
            }
        }
        for i in 0..span {
            let p = (first + (self.cursor + i) % span) as u16;
            if !lands_here(p) {
                continue;
            }
            let (t, r) = Self::candidate(&t0, addr, p);
            if !taken(&r) {
                self.cursor = (self.cursor + i + 1) % span;
                return Ok(Nat {
                    kind: NatKind::Snat,
                    orig: *orig,
                    translated: t,
                });
            }
        }
        Err(NatError::PortsExhausted)
    }
}
