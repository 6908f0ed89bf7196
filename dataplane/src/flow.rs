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
    /// directions), over the same input a NIC hashes for IPv4 + L4 RSS
    /// (addresses, then ports), equal to
    /// `toeplitz(&SYMMETRIC_RSS_KEY, input)` but table-driven: with a key
    /// of period 16 bits every 16-bit word of the input contributes the
    /// same function of its value wherever it stands (which is also why
    /// the hash is symmetric).
    #[inline]
    pub fn symmetric_hash(&self) -> u32 {
        let s = u32::from(self.src);
        let d = u32::from(self.dst);
        word_hash((s >> 16) as u16)
            ^ word_hash(s as u16)
            ^ word_hash((d >> 16) as u16)
            ^ word_hash(d as u16)
            ^ word_hash(self.sport)
            ^ word_hash(self.dport)
    }

    /// The worker of `workers` that owns this flow: see [`owner_of_hash`].
    #[inline]
    pub fn owner(&self, workers: usize) -> usize {
        owner_of_hash(self.symmetric_hash(), workers)
    }
}

/// Entries of the ownership table, the logical RSS redirection table: a
/// flow's owner is entry `hash % OWNER_TABLE`. A NIC whose redirection
/// table has a power-of-two size of at least this many entries is
/// programmed with it repeated ([`reta_entry`]), so that its RSS lands
/// every TCP/UDP flow on the worker that owns it. It also bounds the
/// workers of a node.
pub const OWNER_TABLE: usize = 128;

/// The one function that decides which of `workers` owns a flow, given
/// the flow's [`FlowKey::symmetric_hash`]. The NIC's redirection table,
/// the software dispatch between workers, the SNAT port choice (replies
/// land on the owner), the passive's installs and the bulk all use it.
#[inline]
pub fn owner_of_hash(hash: u32, workers: usize) -> usize {
    if workers <= 1 {
        0
    } else {
        (hash as usize & (OWNER_TABLE - 1)) % workers
    }
}

/// Entry `i` of a NIC redirection table (any power-of-two size of at
/// least [`OWNER_TABLE`]) that agrees with [`owner_of_hash`]: the NIC
/// indexes its table with the hash's low bits.
pub fn reta_entry(i: usize, workers: usize) -> u16 {
    owner_of_hash(i as u32, workers) as u16
}

/// The hash of the addresses alone (what a NIC hashes for fragments and
/// protocols without ports): the owner of a fragment group before its
/// flow is known.
#[inline]
pub fn address_hash(src: Ipv4Addr, dst: Ipv4Addr) -> u32 {
    let s = u32::from(src);
    let d = u32::from(dst);
    word_hash((s >> 16) as u16)
        ^ word_hash(s as u16)
        ^ word_hash((d >> 16) as u16)
        ^ word_hash(d as u16)
}

/// Contribution to the symmetric hash of one 16-bit word of the input.
#[inline]
fn word_hash(w: u16) -> u32 {
    WORD_HI[(w >> 8) as usize] ^ WORD_LO[(w & 0xff) as usize]
}

/// Contribution of the high (first) byte of a 16-bit input word.
static WORD_HI: [u32; 256] = byte_table(0);
/// Contribution of the low (second) byte.
static WORD_LO: [u32; 256] = byte_table(1);

/// Toeplitz contributions of a byte at offset `offset` of the input under
/// [`SYMMETRIC_RSS_KEY`], for every byte value.
const fn byte_table(offset: usize) -> [u32; 256] {
    let key = SYMMETRIC_RSS_KEY;
    let mut t = [0u32; 256];
    let mut v = 0;
    while v < 256 {
        let mut r = 0u32;
        let mut bit = 0;
        while bit < 8 {
            if v & (0x80 >> bit) != 0 {
                // The key's 32-bit window starting at input bit
                // offset * 8 + bit.
                let start = offset * 8 + bit;
                let mut w = 0u32;
                let mut j = 0;
                while j < 32 {
                    let kb = start + j;
                    let b = (key[kb / 8] >> (7 - kb % 8)) & 1;
                    w = (w << 1) | b as u32;
                    j += 1;
                }
                r ^= w;
            }
            bit += 1;
        }
        t[v] = r;
        v += 1;
    }
    t
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
        assert_eq!(k.owner(4), k.reverse().owner(4));
        let other = key([198, 18, 1, 11], 40000, [198, 18, 2, 10], 80);
        assert_ne!(k.symmetric_hash(), other.symmetric_hash());
    }

    #[test]
    fn the_table_driven_hash_is_the_toeplitz_hash_with_the_symmetric_key() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let k = FlowKey::new(
                Ipv4Addr::from((x >> 32) as u32),
                (x >> 16) as u16,
                Ipv4Addr::from(x as u32 ^ 0x5bd1_e995),
                x as u16,
                proto::UDP,
            );
            let mut input = [0u8; 12];
            input[0..4].copy_from_slice(&k.src.octets());
            input[4..8].copy_from_slice(&k.dst.octets());
            input[8..10].copy_from_slice(&k.sport.to_be_bytes());
            input[10..12].copy_from_slice(&k.dport.to_be_bytes());
            assert_eq!(k.symmetric_hash(), toeplitz(&SYMMETRIC_RSS_KEY, &input));
            assert_eq!(
                address_hash(k.src, k.dst),
                toeplitz(&SYMMETRIC_RSS_KEY, &input[..8])
            );
        }
    }

    #[test]
    fn a_redirection_table_of_any_supported_size_agrees_with_the_owner() {
        for workers in 1..=16 {
            for size in [128usize, 256, 512, 2048] {
                let reta: Vec<u16> = (0..size).map(|i| reta_entry(i, workers)).collect();
                for h in (0..100_000u32).map(|i| i.wrapping_mul(0x9e37_79b9)) {
                    // The NIC: entry hash % size.
                    let nic = reta[h as usize % size] as usize;
                    assert_eq!(nic, owner_of_hash(h, workers), "{workers} workers, {size}");
                }
            }
            // Every worker owns a share.
            let mut per = vec![0; workers];
            for i in 0..OWNER_TABLE {
                per[reta_entry(i, workers) as usize] += 1;
            }
            assert!(per.iter().all(|&n| n >= OWNER_TABLE / workers), "{per:?}");
        }
    }

    #[test]
    fn canonical_form_is_direction_free() {
        let k = key([198, 18, 2, 10], 80, [198, 18, 1, 10], 40000);
        assert_eq!(k.canonical(), k.reverse().canonical());
        assert_eq!(k.canonical().src, Ipv4Addr::new(198, 18, 1, 10));
        assert_eq!(k.reverse().reverse(), k);
    }
}
