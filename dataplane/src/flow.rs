//! Flow identity: the directional 5-tuple key of a packet, its reverse, its
//! canonical (direction-free) form and the symmetric hash that decides
//! which worker (and which connection-table shard) owns a flow.
//!
//! The hash is the Toeplitz function with the symmetric key
//! [`SYMMETRIC_RSS_KEY`], computed in software exactly as a
//! NIC computes RSS, so a flow's owner is the same whether the NIC or the
//! software dispatch (or the passive's sync core) chooses it.

use std::fmt;
use std::net::Ipv4Addr;

/// A Toeplitz key whose hash is the same for both directions of a flow
/// (0x6d5a repeated; Woo & Park, "Scalable TCP Session Monitoring with
/// Symmetric Receive-side Scaling"), so that RSS sends a connection's
/// replies to the worker that owns the connection.
pub const SYMMETRIC_RSS_KEY: [u8; 40] = symmetric_key();

const fn symmetric_key() -> [u8; 40] {
    let mut k = [0u8; 40];
    let mut i = 0;
    while i < 40 {
        k[i] = if i % 2 == 0 { 0x6d } else { 0x5a };
        i += 1;
    }
    k
}

/// IP protocol numbers tandem tracks.
pub mod proto {
    /// ICMP.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// GRE.
    pub const GRE: u8 = 47;
    /// ESP.
    pub const ESP: u8 = 50;
    /// SCTP.
    pub const SCTP: u8 = 132;
}

/// The directional identity of a packet's flow.
///
/// `sport`/`dport` carry: TCP, UDP and SCTP ports; for ICMP queries
/// (echo, timestamp, ...) the identifier in `sport` and 0 in `dport` (in
/// both directions, so that request and reply share a flow); for GRE the
/// key or PPTP call id where present, else 0; for ESP 0 (an ESP "flow" is
/// the address pair, SPIs are kept in the connection); 0 for anything else.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Source port (or protocol-specific id, see the type's doc).
    pub sport: u16,
    /// Destination port (or 0).
    pub dport: u16,
    /// IP protocol number.
    pub proto: u8,
}

impl fmt::Debug for FlowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{} -> {}:{} proto {}",
            self.src, self.sport, self.dst, self.dport, self.proto
        )
    }
}

impl fmt::Display for FlowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl FlowKey {
    /// A key from its parts.
    pub const fn new(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, proto: u8) -> FlowKey {
        FlowKey {
            src,
            dst,
            sport,
            dport,
            proto,
        }
    }

    /// The key of the opposite direction.
    pub const fn reverse(&self) -> FlowKey {
        FlowKey {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
        }
    }

    /// The direction-free form: the (address, port) pair that sorts first
    /// becomes the source. `canonical()` of a key and of its reverse are
    /// equal.
    pub fn canonical(&self) -> FlowKey {
        if (u32::from(self.src), self.sport) <= (u32::from(self.dst), self.dport) {
            *self
        } else {
            self.reverse()
        }
    }

    /// The symmetric Toeplitz hash of the flow (same value for both
    /// directions), over the same input a NIC hashes for IPv4 + L4 RSS.
    pub fn symmetric_hash(&self) -> u32 {
        let mut input = [0u8; 12];
        input[0..4].copy_from_slice(&self.src.octets());
        input[4..8].copy_from_slice(&self.dst.octets());
        input[8..10].copy_from_slice(&self.sport.to_be_bytes());
        input[10..12].copy_from_slice(&self.dport.to_be_bytes());
        toeplitz(&SYMMETRIC_RSS_KEY, &input)
    }

    /// Which of `shards` owns this flow.
    pub fn shard(&self, shards: usize) -> usize {
        if shards <= 1 {
            0
        } else {
            self.symmetric_hash() as usize % shards
        }
    }
}

/// TCP flag bits (as in the TCP header's flags byte).
pub mod tcp_flags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// PSH.
    pub const PSH: u8 = 0x08;
    /// ACK.
    pub const ACK: u8 = 0x10;
    /// URG.
    pub const URG: u8 = 0x20;
    /// ECE.
    pub const ECE: u8 = 0x40;
    /// CWR.
    pub const CWR: u8 = 0x80;
}

/// What connection tracking needs of a TCP segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TcpInfo {
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgement number.
    pub ack: u32,
    /// Flags byte ([`tcp_flags`]).
    pub flags: u8,
    /// Advertised window (unscaled).
    pub window: u16,
    /// Window-scale option, if present (SYN segments only).
    pub wscale: Option<u8>,
    /// Payload length in bytes.
    pub payload_len: u32,
}

/// The layer-4 facts of a packet that connection tracking uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4Info {
    /// A TCP segment.
    Tcp(TcpInfo),
    /// A UDP datagram.
    Udp,
    /// An ICMP query or reply (echo, timestamp, ...): `FlowKey::sport` is
    /// its identifier.
    IcmpQuery {
        /// ICMP type.
        ty: u8,
        /// ICMP code.
        code: u8,
    },
    /// An ICMP error (unreachable, time exceeded, parameter problem,
    /// ...) about the packet whose flow is `inner` (as that packet was
    /// sent, i.e. in the direction opposite to this error).
    IcmpError {
        /// ICMP type.
        ty: u8,
        /// ICMP code.
        code: u8,
        /// The flow of the quoted packet.
        inner: FlowKey,
    },
    /// Any other ICMP message (router advertisements, ...).
    IcmpOther {
        /// ICMP type.
        ty: u8,
        /// ICMP code.
        code: u8,
    },
    /// A GRE packet.
    Gre {
        /// GRE version (0 plain, 1 enhanced/PPTP).
        version: u8,
    },
    /// An ESP packet.
    Esp {
        /// Security parameters index.
        spi: u32,
    },
    /// An SCTP packet.
    Sctp {
        /// Verification tag.
        vtag: u32,
        /// Type of the first chunk (INIT = 1, INIT ACK = 2, ABORT = 6,
        /// SHUTDOWN = 7, SHUTDOWN ACK = 8, SHUTDOWN COMPLETE = 14, ...).
        first_chunk: u8,
    },
    /// Any other protocol, or a non-first fragment (no L4 header).
    Other,
}

/// The Toeplitz hash of `input` under `key` (key must be at least
/// `input.len() + 4` bytes long).
pub fn toeplitz(key: &[u8], input: &[u8]) -> u32 {
    debug_assert!(key.len() >= input.len() + 4);
    let mut result = 0u32;
    // The 32-bit window of the key that lines up with the current input bit.
    let mut window = u32::from_be_bytes([key[0], key[1], key[2], key[3]]);
    for (i, &byte) in input.iter().enumerate() {
        let next = key.get(i + 4).copied().unwrap_or(0);
        for bit in 0..8 {
            if byte & (0x80 >> bit) != 0 {
                result ^= window;
            }
            window = (window << 1) | u32::from((next >> (7 - bit)) & 1);
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(a: [u8; 4], sp: u16, b: [u8; 4], dp: u16) -> FlowKey {
        FlowKey::new(Ipv4Addr::from(a), sp, Ipv4Addr::from(b), dp, proto::TCP)
    }

    #[test]
    fn toeplitz_matches_the_microsoft_rss_verification_vector() {
        // From the Microsoft RSS specification ("Verifying the RSS hash
        // calculation"): key 6d5a56da..., 66.9.149.187:2794 ->
        // 161.142.100.80:1766 hashes to 0x51ccc178 (IPv4 with TCP ports).
        let key: [u8; 40] = [
            0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3,
            0x8f, 0xb0, 0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3,
            0x80, 0x30, 0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
        ];
        let mut input = Vec::new();
        input.extend_from_slice(&[66, 9, 149, 187]);
        input.extend_from_slice(&[161, 142, 100, 80]);
        input.extend_from_slice(&2794u16.to_be_bytes());
        input.extend_from_slice(&1766u16.to_be_bytes());
        assert_eq!(toeplitz(&key, &input), 0x51cc_c178);
        assert_eq!(toeplitz(&key, &input[..8]), 0x323e_8fc2);
    }

    #[test]
    fn symmetric_hash_is_the_same_both_ways() {
        let k = key([198, 18, 1, 10], 40000, [198, 18, 2, 10], 80);
        assert_eq!(k.symmetric_hash(), k.reverse().symmetric_hash());
        assert_eq!(k.shard(4), k.reverse().shard(4));
        let other = key([198, 18, 1, 11], 40000, [198, 18, 2, 10], 80);
        assert_ne!(k.symmetric_hash(), other.symmetric_hash());
    }

    #[test]
    fn canonical_form_is_direction_free() {
        let k = key([198, 18, 2, 10], 80, [198, 18, 1, 10], 40000);
        assert_eq!(k.canonical(), k.reverse().canonical());
        assert_eq!(k.canonical().src, Ipv4Addr::new(198, 18, 1, 10));
        assert_eq!(k.reverse().reverse(), k);
    }
}
