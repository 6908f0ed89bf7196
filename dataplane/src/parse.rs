//! Classification of one IPv4 packet for the firewall: its [`FlowKey`], the
//! layer-4 facts connection tracking needs ([`L4Info`]), its fragment
//! position, or the reason it must be dropped ([`ParseDrop`], one counter
//! each).
//!
//! [`parse_ipv4`] starts at the IPv4 header (the router has already handled
//! Ethernet and VLANs and verified the IPv4 header checksum, which is not
//! checked again here). It never panics and never allocates, whatever the
//! bytes.
//!
//! Flow key conventions (see [`FlowKey`]): TCP, UDP and SCTP ports; ICMP
//! queries and replies put their identifier in `sport` and 0 in `dport` in
//! both directions; ICMP errors are keyed `(src, dst, 0, 0, ICMP)` and carry
//! the quoted packet's key in [`L4Info::IcmpError`]; GRE puts the PPTP call
//! id (version 1) or the low 16 bits of the key (version 0) in `sport`; ESP,
//! other protocols and non-first fragments have ports 0.
//!
//! The helpers at the end rewrite transport fields for NAT with incremental
//! checksum updates (RFC 1624).

use core::fmt;
use std::net::Ipv4Addr;

use crate::flow::{proto, tcp_flags, FlowKey, L4Info, TcpInfo};
use crate::wire::{
    self, checksum, gre, icmp, ipv4, sctp, tcp, udp, EspPacket, EspRepr, GrePacket, GreRepr,
    IcmpPacket, Ipv4Packet, SctpPacket, TcpPacket, TcpRepr, UdpPacket,
};

macro_rules! parse_drops {
    ($( $(#[$doc:meta])* $variant:ident => $name:literal, )+) => {
        /// Why [`parse_ipv4`] refused a packet; one counter each.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum ParseDrop {
            $( $(#[$doc])* $variant, )+
        }

        impl ParseDrop {
            /// Number of reasons (size of a counter array).
            pub const COUNT: usize = [$( ParseDrop::$variant, )+].len();
            /// Every reason, in counter-index order (`reason as usize`).
            pub const ALL: [ParseDrop; ParseDrop::COUNT] = [$( ParseDrop::$variant, )+];

            /// Stable snake_case name, used in counters and JSON.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( ParseDrop::$variant => $name, )+
                }
            }
        }
    };
}

parse_drops! {
    /// Shorter than an IPv4 header, than its header length or than its
    /// total length.
    IpTruncated => "ip_truncated",
    /// IP version is not 4.
    IpBadVersion => "ip_bad_version",
    /// IPv4 header length below 20 bytes.
    IpBadHeaderLen => "ip_bad_header_len",
    /// IPv4 total length smaller than the header.
    IpBadLength => "ip_bad_length",
    /// A first fragment too short to hold the whole transport header (the
    /// tiny-fragment evasion of RFC 1858 3.1: flags or ports pushed into
    /// the second fragment).
    FragTiny => "frag_tiny",
    /// Fragment offset plus length beyond 65535 bytes (ping of death).
    FragOffsetOverflow => "frag_offset_overflow",
    /// A fragment other than the last whose payload is not a multiple of 8
    /// bytes (the next offset cannot follow it).
    FragBadLength => "frag_bad_length",
    /// A TCP fragment at offset 8, which can only be there to overwrite the
    /// first fragment's TCP header (RFC 1858 3.2).
    FragTcpOverlap => "frag_tcp_overlap",
    /// TCP segment shorter than 20 bytes.
    TcpTruncated => "tcp_truncated",
    /// TCP data offset below 5 words or past the end of the segment.
    TcpBadDataOffset => "tcp_bad_data_offset",
    /// A TCP option whose length is below 2, runs past the header, or does
    /// not match its kind.
    TcpBadOptions => "tcp_bad_options",
    /// TCP checksum wrong.
    TcpBadChecksum => "tcp_bad_checksum",
    /// SYN and FIN together.
    TcpSynFin => "tcp_syn_fin",
    /// SYN and RST together.
    TcpSynRst => "tcp_syn_rst",
    /// No flag at all (null scan).
    TcpNullScan => "tcp_null_scan",
    /// FIN, PSH and URG without ACK (xmas scan).
    TcpXmasScan => "tcp_xmas_scan",
    /// Any other invalid flag combination (FIN or URG without ACK, RST with
    /// FIN, ...: the combinations Linux conntrack refuses, ECE, CWR and PSH
    /// aside).
    TcpBadFlags => "tcp_bad_flags",
    /// TCP source or destination port 0.
    TcpPortZero => "tcp_port_zero",
    /// UDP datagram shorter than 8 bytes.
    UdpTruncated => "udp_truncated",
    /// UDP length below 8, or longer than the IP payload.
    UdpBadLength => "udp_bad_length",
    /// UDP checksum present and wrong.
    UdpBadChecksum => "udp_bad_checksum",
    /// UDP source or destination port 0.
    UdpPortZero => "udp_port_zero",
    /// ICMP message shorter than 8 bytes.
    IcmpTruncated => "icmp_truncated",
    /// ICMP checksum wrong.
    IcmpBadChecksum => "icmp_bad_checksum",
    /// An ICMP error whose quoted packet is not an IPv4 header plus 8 bytes
    /// of transport header, or is itself an ICMP error.
    IcmpErrorBadInner => "icmp_error_bad_inner",
    /// GRE header shorter than its flags announce.
    GreTruncated => "gre_truncated",
    /// GRE version other than 0 and 1.
    GreBadVersion => "gre_bad_version",
    /// GRE with routing, or a version 1 (PPTP) header without key, with a
    /// checksum, or not carrying PPP.
    GreMalformed => "gre_malformed",
    /// GRE checksum present and wrong.
    GreBadChecksum => "gre_bad_checksum",
    /// ESP shorter than SPI and sequence number.
    EspTruncated => "esp_truncated",
    /// ESP with the reserved SPI 0.
    EspSpiZero => "esp_spi_zero",
    /// SCTP shorter than its common header and one chunk header.
    SctpTruncated => "sctp_truncated",
    /// SCTP first chunk length below 4 or past the end of the packet.
    SctpBadChunk => "sctp_bad_chunk",
    /// SCTP source or destination port 0.
    SctpPortZero => "sctp_port_zero",
}

impl fmt::Display for ParseDrop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for ParseDrop {}

/// Where a packet stands in a fragmented datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fragment {
    /// Not fragmented.
    None,
    /// The first fragment (offset 0, more fragments follow): it carries the
    /// transport header, but its checksum cannot be verified.
    First {
        /// More fragments follow: always true for a first fragment.
        more: bool,
    },
    /// A later fragment: no transport header, ports are 0 and the flow is
    /// that of the first fragment (see [`crate::frag::FragmentTable`]).
    /// [`ParsedIpv4::more_fragments`] is false for the last one.
    NonFirst {
        /// Offset of its data in the datagram, in bytes.
        offset: u16,
    },
}

/// What the firewall needs to know of an IPv4 packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParsedIpv4 {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// IP protocol number ([`crate::flow::proto`]).
    pub proto: u8,
    /// Time to live.
    pub ttl: u8,
    /// IPv4 header length in bytes (IHL * 4), options included.
    pub ihl: u8,
    /// IPv4 total length (the buffer may be longer: link padding).
    pub total_len: u16,
    /// Identification (with src, dst, proto: the fragment group).
    pub ident: u16,
    /// Fragment position.
    pub fragment: Fragment,
    /// Don't Fragment flag.
    pub dont_fragment: bool,
    /// More Fragments flag.
    pub more_fragments: bool,
    /// Offset of the transport header (of the fragment data for a
    /// non-first fragment) from the start of the IPv4 header.
    pub l4_offset: usize,
    /// The packet's flow.
    pub flow: FlowKey,
    /// Transport facts.
    pub l4: L4Info,
}

impl ParsedIpv4 {
    /// Part of a fragmented datagram.
    pub fn is_fragment(&self) -> bool {
        self.fragment != Fragment::None
    }

    /// Length of the IP payload (transport header and data).
    pub fn l4_len(&self) -> usize {
        usize::from(self.total_len).saturating_sub(self.l4_offset)
    }
}

/// Parses an IPv4 packet (starting at its header; bytes after the total
/// length are ignored) into its flow and transport facts, or the reason to
/// drop it. `verify_l4_checksums` verifies the TCP, UDP, ICMP and GRE
/// checksums (never possible for fragments, whose checksum covers the whole
/// datagram); the SCTP CRC32c is not verified here.
pub fn parse_ipv4(packet: &[u8], verify_l4_checksums: bool) -> Result<ParsedIpv4, ParseDrop> {
    match packet.first() {
        None => return Err(ParseDrop::IpTruncated),
        Some(b) if b >> 4 != 4 => return Err(ParseDrop::IpBadVersion),
        Some(_) => {}
    }
    let ip = Ipv4Packet::new_checked(packet).map_err(|e| match e {
        wire::Error::BadHeaderLen => ParseDrop::IpBadHeaderLen,
        wire::Error::BadTotalLen => ParseDrop::IpBadLength,
        _ => ParseDrop::IpTruncated,
    })?;
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    let proto = u8::from(ip.protocol());
    let ihl = ip.header_len();
    let payload = ip.payload();
    let (offset, more) = (ip.frag_offset(), ip.more_frags());
    if usize::from(offset) + payload.len() > usize::from(u16::MAX) {
        return Err(ParseDrop::FragOffsetOverflow);
    }
    if more && payload.len() % 8 != 0 {
        return Err(ParseDrop::FragBadLength);
    }
    let fragment = match (offset, more) {
        (0, false) => Fragment::None,
        (0, true) => Fragment::First { more: true },
        (offset, _) => Fragment::NonFirst { offset },
    };
    let mut parsed = ParsedIpv4 {
        src,
        dst,
        proto,
        ttl: ip.ttl(),
        ihl,
        total_len: ip.total_len(),
        ident: ip.ident(),
        fragment,
        dont_fragment: ip.dont_frag(),
        more_fragments: more,
        l4_offset: usize::from(ihl),
        flow: FlowKey::new(src, 0, dst, 0, proto),
        l4: L4Info::Other,
    };
    let first = match fragment {
        Fragment::None => false,
        Fragment::First { .. } => true,
        Fragment::NonFirst { offset } => {
            if proto == proto::TCP && offset == 8 {
                return Err(ParseDrop::FragTcpOverlap);
            }
            return Ok(parsed);
        }
    };
    let l4 = L4 {
        bytes: payload,
        src,
        dst,
        first_fragment: first,
        verify: verify_l4_checksums && !first,
    };
    let (sport, dport, info) = match proto {
        proto::TCP => l4.tcp()?,
        proto::UDP => l4.udp()?,
        proto::ICMP => l4.icmp()?,
        proto::GRE => l4.gre()?,
        proto::ESP => l4.esp()?,
        proto::SCTP => l4.sctp()?,
        _ => (0, 0, L4Info::Other),
    };
    parsed.flow.sport = sport;
    parsed.flow.dport = dport;
    parsed.l4 = info;
    Ok(parsed)
}

/// The transport part of a packet being parsed.
struct L4<'a> {
    bytes: &'a [u8],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    /// A first fragment: a short header is a tiny fragment.
    first_fragment: bool,
    /// Verify the checksum (asked for, and not a fragment).
    verify: bool,
}

type L4Result = Result<(u16, u16, L4Info), ParseDrop>;

impl L4<'_> {
    /// The drop reason for a header cut short: the protocol's own, or
    /// `FragTiny` in a first fragment.
    fn truncated(&self, reason: ParseDrop) -> ParseDrop {
        if self.first_fragment {
            ParseDrop::FragTiny
        } else {
            reason
        }
    }

    fn tcp(&self) -> L4Result {
        let p = TcpPacket::new_checked(self.bytes).map_err(|e| match e {
            wire::Error::Truncated if self.bytes.len() < tcp::MIN_HEADER_LEN => {
                self.truncated(ParseDrop::TcpTruncated)
            }
            // The data offset points past the end of the segment.
            wire::Error::Truncated => self.truncated(ParseDrop::TcpBadDataOffset),
            _ => ParseDrop::TcpBadDataOffset,
        })?;
        let repr = TcpRepr::parse(&p, self.src, self.dst, false).map_err(|e| match e {
            wire::Error::Malformed => ParseDrop::TcpBadOptions,
            _ => ParseDrop::TcpBadDataOffset,
        })?;
        check_tcp_flags(repr.flags)?;
        if repr.src_port == 0 || repr.dst_port == 0 {
            return Err(ParseDrop::TcpPortZero);
        }
        if self.verify && !p.verify_checksum(self.src, self.dst) {
            return Err(ParseDrop::TcpBadChecksum);
        }
        let info = TcpInfo {
            seq: repr.seq_number,
            ack: repr.ack_number,
            flags: repr.flags,
            window: repr.window_len,
            wscale: if repr.flags & tcp_flags::SYN != 0 {
                repr.window_scale
            } else {
                None
            },
            payload_len: u32::try_from(repr.payload_len).unwrap_or(u32::MAX),
        };
        Ok((repr.src_port, repr.dst_port, L4Info::Tcp(info)))
    }

    fn udp(&self) -> L4Result {
        if self.bytes.len() < udp::HEADER_LEN {
            return Err(self.truncated(ParseDrop::UdpTruncated));
        }
        let p = UdpPacket::new_unchecked(self.bytes);
        let len = usize::from(p.len());
        // A first fragment's length field counts every fragment.
        let fits = if self.first_fragment {
            len >= self.bytes.len()
        } else {
            len <= self.bytes.len()
        };
        if len < udp::HEADER_LEN || !fits {
            return Err(ParseDrop::UdpBadLength);
        }
        let (sport, dport) = (p.src_port(), p.dst_port());
        if sport == 0 || dport == 0 {
            return Err(ParseDrop::UdpPortZero);
        }
        if self.verify && !p.verify_checksum(self.src, self.dst) {
            return Err(ParseDrop::UdpBadChecksum);
        }
        Ok((sport, dport, L4Info::Udp))
    }

    fn icmp(&self) -> L4Result {
        let p = IcmpPacket::new_checked(self.bytes)
            .map_err(|_| self.truncated(ParseDrop::IcmpTruncated))?;
        let (ty, code) = (u8::from(p.msg_type()), p.msg_code());
        let result = if is_icmp_query(ty) {
            (p.echo_ident(), 0, L4Info::IcmpQuery { ty, code })
        } else if is_icmp_error(ty) {
            let inner = icmp_inner_flow(p.data()).ok_or(ParseDrop::IcmpErrorBadInner)?;
            (0, 0, L4Info::IcmpError { ty, code, inner })
        } else {
            (0, 0, L4Info::IcmpOther { ty, code })
        };
        if self.verify && !p.verify_checksum() {
            return Err(ParseDrop::IcmpBadChecksum);
        }
        Ok(result)
    }

    fn gre(&self) -> L4Result {
        let p = GrePacket::new_checked(self.bytes)
            .map_err(|_| self.truncated(ParseDrop::GreTruncated))?;
        let repr = GreRepr::parse(&p, self.verify).map_err(|e| match e {
            wire::Error::Unsupported => ParseDrop::GreBadVersion,
            wire::Error::BadChecksum => ParseDrop::GreBadChecksum,
            _ => ParseDrop::GreMalformed,
        })?;
        let version = repr.version;
        Ok((gre_flow_id(repr.key, version), 0, L4Info::Gre { version }))
    }

    fn esp(&self) -> L4Result {
        let p = EspPacket::new_checked(self.bytes)
            .map_err(|_| self.truncated(ParseDrop::EspTruncated))?;
        let repr = EspRepr::parse(&p).map_err(|_| ParseDrop::EspSpiZero)?;
        Ok((0, 0, L4Info::Esp { spi: repr.spi }))
    }

    fn sctp(&self) -> L4Result {
        let p = SctpPacket::new_checked(self.bytes)
            .map_err(|_| self.truncated(ParseDrop::SctpTruncated))?;
        let chunk_len = usize::from(p.chunk_len());
        // A first fragment may end inside its first chunk.
        let past_end = sctp::HEADER_LEN + chunk_len > self.bytes.len() && !self.first_fragment;
        if chunk_len < sctp::CHUNK_HEADER_LEN || past_end {
            return Err(ParseDrop::SctpBadChunk);
        }
        let (sport, dport) = (p.src_port(), p.dst_port());
        if sport == 0 || dport == 0 {
            return Err(ParseDrop::SctpPortZero);
        }
        let info = L4Info::Sctp {
            vtag: p.verification_tag(),
            first_chunk: p.chunk_type(),
        };
        Ok((sport, dport, info))
    }
}

/// The flag combinations Linux conntrack accepts (`tcp_valid_flags`), with
/// ECE, CWR and PSH masked off.
const VALID_TCP_FLAGS: [u8; 9] = {
    use tcp_flags::*;
    [
        SYN,
        SYN | URG,
        SYN | ACK,
        RST,
        RST | ACK,
        FIN | ACK,
        FIN | ACK | URG,
        ACK,
        ACK | URG,
    ]
};

fn check_tcp_flags(flags: u8) -> Result<(), ParseDrop> {
    use tcp_flags::*;
    let has = |f: u8| flags & f == f;
    if has(SYN | FIN) {
        return Err(ParseDrop::TcpSynFin);
    }
    if has(SYN | RST) {
        return Err(ParseDrop::TcpSynRst);
    }
    if flags & (FIN | SYN | RST | PSH | ACK | URG) == 0 {
        return Err(ParseDrop::TcpNullScan);
    }
    if has(FIN | PSH | URG) && !has(ACK) {
        return Err(ParseDrop::TcpXmasScan);
    }
    if !VALID_TCP_FLAGS.contains(&(flags & !(ECE | CWR | PSH))) {
        return Err(ParseDrop::TcpBadFlags);
    }
    Ok(())
}

/// ICMP query and reply types, keyed by their identifier: echo (8, 0),
/// timestamp (13, 14), information (15, 16), address mask (17, 18).
fn is_icmp_query(ty: u8) -> bool {
    matches!(ty, 0 | 8 | 13..=18)
}

/// ICMP error types, which quote the packet they are about: destination
/// unreachable, source quench, redirect, time exceeded, parameter problem.
fn is_icmp_error(ty: u8) -> bool {
    matches!(ty, 3 | 4 | 5 | 11 | 12)
}

/// The `sport` of a GRE flow: the PPTP call id in version 1, the low 16
/// bits of the key in version 0, else 0.
fn gre_flow_id(key: Option<u32>, version: u8) -> u16 {
    match (version, key) {
        (0 | 1, Some(key)) => key as u16,
        _ => 0,
    }
}

/// The flow of the packet an ICMP error quotes (its IPv4 header, options
/// included, and at least the first 8 bytes of its payload), in the
/// direction it was sent. `None` when the quote is not such a packet, or is
/// itself an ICMP error.
fn icmp_inner_flow(quote: &[u8]) -> Option<FlowKey> {
    if quote.len() < ipv4::MIN_HEADER_LEN {
        return None;
    }
    // The quote is cut after 8 payload bytes: only the fixed header fields
    // are read, never the total length's worth.
    let ip = Ipv4Packet::new_unchecked(quote);
    let ihl = usize::from(ip.header_len());
    if ip.version() != 4 || ihl < ipv4::MIN_HEADER_LEN || usize::from(ip.total_len()) < ihl {
        return None;
    }
    let l4 = quote.get(ihl..)?;
    let proto = u8::from(ip.protocol());
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    let key = |sport, dport| Some(FlowKey::new(src, sport, dst, dport, proto));
    if ip.is_non_first_fragment() {
        // No transport header was quoted.
        return key(0, 0);
    }
    let word = |at: usize| l4.get(at..at + 2).map(|d| u16::from_be_bytes([d[0], d[1]]));
    match proto {
        proto::TCP | proto::UDP | proto::SCTP => {
            if l4.len() < 8 {
                return None;
            }
            key(word(0)?, word(2)?)
        }
        proto::ICMP => {
            if l4.len() < icmp::HEADER_LEN {
                return None;
            }
            let ty = l4[0];
            if is_icmp_error(ty) {
                None
            } else if is_icmp_query(ty) {
                key(word(4)?, 0)
            } else {
                key(0, 0)
            }
        }
        proto::GRE => {
            // Only what the quote holds: a key past the 8 bytes reads as 0.
            let p = GrePacket::new_unchecked(l4);
            let id = if l4.len() >= gre::MIN_HEADER_LEN && p.check_len().is_ok() {
                gre_flow_id(p.key(), p.version())
            } else {
                0
            };
            key(id, 0)
        }
        _ => key(0, 0),
    }
}

// ---- Rewrites for NAT ----

/// Patches the transport checksum of a `proto` packet whose IPv4 source or
/// destination changed from `old` to `new` (the pseudo-header). `l4` is the
/// transport header onwards (the first fragment's, for a fragmented
/// datagram). TCP and UDP are patched (a UDP checksum of 0 stays 0); ICMP,
/// GRE and ESP have no pseudo-header and are left alone. `Truncated` when
/// `l4` cannot hold the header.
pub fn update_l4_checksum_for_addr(
    proto: u8,
    l4: &mut [u8],
    old: Ipv4Addr,
    new: Ipv4Addr,
) -> Result<(), wire::Error> {
    match proto {
        proto::TCP => {
            if l4.len() < tcp::MIN_HEADER_LEN {
                return Err(wire::Error::Truncated);
            }
            TcpPacket::new_unchecked(l4).update_checksum_for_addr(old, new);
        }
        proto::UDP => {
            if l4.len() < udp::HEADER_LEN {
                return Err(wire::Error::Truncated);
            }
            UdpPacket::new_unchecked(l4).update_checksum_for_addr(old, new);
        }
        _ => {}
    }
    Ok(())
}

/// Rewrites the identifier of an ICMP query or reply (the `sport` of its
/// flow) and patches the checksum (RFC 1624).
pub fn rewrite_icmp_ident<T: AsRef<[u8]> + AsMut<[u8]>>(packet: &mut IcmpPacket<T>, ident: u16) {
    let ck = checksum::update(packet.checksum(), packet.echo_ident(), ident);
    packet.set_echo_ident(ident);
    packet.set_checksum(ck);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{IcmpRepr, UdpRepr};
    use proptest::prelude::*;

    const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 10);
    const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 10);
    const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 254);

    use tcp_flags::{ACK, FIN, PSH, RST, SYN, URG};

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// An IPv4 packet (20-byte header, ident 0x1c46, DF, TTL 64) around `l4`.
    fn ip(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 20 + l4.len()];
        let mut p = Ipv4Packet::new_unchecked(&mut b[..]);
        p.set_version_and_header_len(4, 20);
        p.set_total_len((20 + l4.len()) as u16);
        p.set_ident(0x1c46);
        p.set_flags_and_offset(true, false, 0);
        p.set_ttl(64);
        p.set_protocol(proto.into());
        p.set_src_addr(src);
        p.set_dst_addr(dst);
        p.payload_mut().copy_from_slice(l4);
        p.fill_checksum();
        b
    }

    /// Marks a packet as a fragment (offset in bytes).
    fn fragment(mut b: Vec<u8>, more: bool, offset: u16) -> Vec<u8> {
        let mut p = Ipv4Packet::new_unchecked(&mut b[..]);
        p.set_flags_and_offset(false, more, offset);
        p.fill_checksum();
        b
    }

    fn tcp_repr(sport: u16, dport: u16, flags: u8) -> TcpRepr {
        TcpRepr {
            src_port: sport,
            dst_port: dport,
            seq_number: 1000,
            ack_number: if flags & ACK != 0 { 2000 } else { 0 },
            flags,
            window_len: 64240,
            ..TcpRepr::default()
        }
    }

    fn tcp_seg(src: Ipv4Addr, dst: Ipv4Addr, repr: TcpRepr, payload: &[u8]) -> Vec<u8> {
        let repr = TcpRepr {
            payload_len: payload.len(),
            ..repr
        };
        let mut seg = vec![0u8; repr.buffer_len()];
        seg[repr.header_len()..].copy_from_slice(payload);
        repr.emit(&mut TcpPacket::new_unchecked(&mut seg[..]), src, dst)
            .unwrap();
        seg
    }

    fn tcp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
        let seg = tcp_seg(src, dst, tcp_repr(sport, dport, flags), b"");
        ip(src, dst, proto::TCP, &seg)
    }

    fn udp_dgram(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let repr = UdpRepr {
            src_port: sport,
            dst_port: dport,
            payload_len: payload.len(),
        };
        let mut d = vec![0u8; repr.buffer_len()];
        d[8..].copy_from_slice(payload);
        repr.emit(&mut UdpPacket::new_unchecked(&mut d[..]), src, dst)
            .unwrap();
        d
    }

    fn udp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
        ip(
            src,
            dst,
            proto::UDP,
            &udp_dgram(src, dst, sport, dport, b"ping"),
        )
    }

    fn icmp_msg(repr: IcmpRepr) -> Vec<u8> {
        let mut m = vec![0u8; repr.buffer_len()];
        repr.emit(&mut IcmpPacket::new_unchecked(&mut m[..]))
            .unwrap();
        m
    }

    fn echo(src: Ipv4Addr, dst: Ipv4Addr, request: bool, ident: u16) -> Vec<u8> {
        let (seq_no, data) = (7, &b"abcdefgh"[..]);
        let repr = if request {
            IcmpRepr::EchoRequest {
                ident,
                seq_no,
                data,
            }
        } else {
            IcmpRepr::EchoReply {
                ident,
                seq_no,
                data,
            }
        };
        ip(src, dst, proto::ICMP, &icmp_msg(repr))
    }

    /// An ICMP message of any type: 4 "rest of header" bytes, then `data`.
    fn icmp_raw(
        src: Ipv4Addr,
        dst: Ipv4Addr,
        ty: u8,
        code: u8,
        rest: [u8; 4],
        data: &[u8],
    ) -> Vec<u8> {
        let mut m = vec![ty, code, 0, 0];
        m.extend_from_slice(&rest);
        m.extend_from_slice(data);
        IcmpPacket::new_unchecked(&mut m[..]).fill_checksum();
        ip(src, dst, proto::ICMP, &m)
    }

    /// The ICMP error `ty`/`code` a router sends back about `original`.
    fn icmp_error(ty: u8, code: u8, original: &[u8]) -> Vec<u8> {
        let orig = Ipv4Packet::new_checked(original).unwrap();
        icmp_raw(
            ROUTER,
            orig.src_addr(),
            ty,
            code,
            [0; 4],
            icmp::quote(&orig),
        )
    }

    fn parse(b: &[u8]) -> Result<ParsedIpv4, ParseDrop> {
        parse_ipv4(b, true)
    }

    fn key(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, proto: u8) -> FlowKey {
        FlowKey::new(src, sport, dst, dport, proto)
    }

    // ---- protocols ----

    #[test]
    fn tcp_syn_yields_ports_sequence_and_window_scale() {
        let repr = TcpRepr {
            max_seg_size: Some(1460),
            window_scale: Some(7),
            sack_permitted: true,
            timestamp: Some((1, 0)),
            ..tcp_repr(40000, 80, SYN)
        };
        let b = ip(
            CLIENT,
            SERVER,
            proto::TCP,
            &tcp_seg(CLIENT, SERVER, repr, b""),
        );
        let p = parse(&b).unwrap();
        assert_eq!(p.flow, key(CLIENT, 40000, SERVER, 80, proto::TCP));
        assert_eq!((p.ihl, p.l4_offset, p.ttl, p.ident), (20, 20, 64, 0x1c46));
        assert_eq!(p.total_len as usize, b.len());
        assert_eq!(p.fragment, Fragment::None);
        assert!(p.dont_fragment && !p.more_fragments && !p.is_fragment());
        assert_eq!(
            p.l4,
            L4Info::Tcp(TcpInfo {
                seq: 1000,
                ack: 0,
                flags: SYN,
                window: 64240,
                wscale: Some(7),
                payload_len: 0,
            })
        );
    }

    #[test]
    fn tcp_window_scale_is_only_reported_on_syn() {
        let repr = TcpRepr {
            window_scale: Some(7),
            ..tcp_repr(40000, 80, ACK)
        };
        let b = ip(
            CLIENT,
            SERVER,
            proto::TCP,
            &tcp_seg(CLIENT, SERVER, repr, b"data"),
        );
        let L4Info::Tcp(info) = parse(&b).unwrap().l4 else {
            panic!("not tcp")
        };
        assert_eq!((info.wscale, info.payload_len, info.ack), (None, 4, 2000));
    }

    #[test]
    fn a_real_linux_syn_parses_with_its_checksum() {
        // 198.18.1.10:40000 -> 198.18.2.10:80, mss 1460, sackOK, TS, wscale 7;
        // both checksums computed independently (Python).
        let b = hex("4500003c 1c464000 40068f3d c612010a c612020a
             9c400050 12345678 00000000 a002faf0 74330000
             020405b4 0402080a 11223344 00000000 01030307");
        assert!(Ipv4Packet::new_checked(&b[..]).unwrap().verify_checksum());
        let p = parse(&b).unwrap();
        assert_eq!(p.flow, key(CLIENT, 40000, SERVER, 80, proto::TCP));
        assert!(matches!(
            p.l4,
            L4Info::Tcp(TcpInfo {
                wscale: Some(7),
                seq: 0x1234_5678,
                ..
            })
        ));
    }

    #[test]
    fn udp_datagram_yields_ports() {
        let p = parse(&udp(CLIENT, SERVER, 53000, 53)).unwrap();
        assert_eq!(p.flow, key(CLIENT, 53000, SERVER, 53, proto::UDP));
        assert_eq!(p.l4, L4Info::Udp);
    }

    #[test]
    fn udp_without_checksum_is_accepted() {
        let mut d = udp_dgram(CLIENT, SERVER, 5000, 6000, b"x");
        d[6..8].fill(0);
        assert!(parse(&ip(CLIENT, SERVER, proto::UDP, &d)).is_ok());
    }

    #[test]
    fn link_padding_after_total_length_is_ignored() {
        let mut b = udp(CLIENT, SERVER, 53000, 53);
        let len = b.len();
        b.resize(60, 0xee);
        let p = parse(&b).unwrap();
        assert_eq!(p.total_len as usize, len);
        assert_eq!(p.l4_len(), len - 20);
    }

    #[test]
    fn ip_options_move_the_l4_offset() {
        let seg = udp_dgram(CLIENT, SERVER, 1234, 53, b"q");
        let plain = ip(CLIENT, SERVER, proto::UDP, &seg);
        let mut b = plain[..20].to_vec();
        b.extend_from_slice(&[0x94, 0x04, 0, 0]); // router alert
        b.extend_from_slice(&seg);
        let mut p = Ipv4Packet::new_unchecked(&mut b[..]);
        p.set_version_and_header_len(4, 24);
        p.set_total_len((24 + seg.len()) as u16);
        p.fill_checksum();
        let p = parse(&b).unwrap();
        assert_eq!((p.ihl, p.l4_offset), (24, 24));
        assert_eq!(p.flow, key(CLIENT, 1234, SERVER, 53, proto::UDP));
    }

    #[test]
    fn icmp_echo_request_and_reply_share_the_identifier_as_sport() {
        let req = parse(&echo(CLIENT, SERVER, true, 0x1c2b)).unwrap();
        let rep = parse(&echo(SERVER, CLIENT, false, 0x1c2b)).unwrap();
        assert_eq!(req.flow, key(CLIENT, 0x1c2b, SERVER, 0, proto::ICMP));
        assert_eq!(rep.flow, key(SERVER, 0x1c2b, CLIENT, 0, proto::ICMP));
        assert_eq!(req.l4, L4Info::IcmpQuery { ty: 8, code: 0 });
        assert_eq!(rep.l4, L4Info::IcmpQuery { ty: 0, code: 0 });
        // The reply's key is the request's with the addresses swapped.
        let swapped = FlowKey {
            src: req.flow.dst,
            dst: req.flow.src,
            ..req.flow
        };
        assert_eq!(rep.flow, swapped);
    }

    #[test]
    fn every_icmp_query_type_is_keyed_by_its_identifier() {
        for ty in [8u8, 0, 13, 14, 15, 16, 17, 18] {
            let b = icmp_raw(CLIENT, SERVER, ty, 0, [0xab, 0xcd, 0, 1], &[0; 12]);
            let p = parse(&b).unwrap();
            assert_eq!(
                p.flow,
                key(CLIENT, 0xabcd, SERVER, 0, proto::ICMP),
                "type {ty}"
            );
            assert_eq!(p.l4, L4Info::IcmpQuery { ty, code: 0 });
        }
    }

    #[test]
    fn other_icmp_types_have_ports_zero() {
        let b = icmp_raw(ROUTER, CLIENT, 9, 0, [1, 0, 0, 30], &[0; 8]);
        let p = parse(&b).unwrap();
        assert_eq!(p.flow, key(ROUTER, 0, CLIENT, 0, proto::ICMP));
        assert_eq!(p.l4, L4Info::IcmpOther { ty: 9, code: 0 });
    }

    #[test]
    fn icmp_error_about_tcp_carries_the_inner_flow() {
        let syn = tcp(CLIENT, SERVER, 40000, 80, SYN);
        let p = parse(&icmp_error(3, 3, &syn)).unwrap();
        assert_eq!(p.flow, key(ROUTER, 0, CLIENT, 0, proto::ICMP));
        assert_eq!(
            p.l4,
            L4Info::IcmpError {
                ty: 3,
                code: 3,
                inner: key(CLIENT, 40000, SERVER, 80, proto::TCP)
            }
        );
    }

    #[test]
    fn icmp_error_about_udp_carries_the_inner_flow() {
        let dns = udp(CLIENT, SERVER, 53000, 53);
        let p = parse(&icmp_error(11, 0, &dns)).unwrap();
        let L4Info::IcmpError { ty, inner, .. } = p.l4 else {
            panic!("{:?}", p.l4)
        };
        assert_eq!(ty, 11);
        assert_eq!(inner, key(CLIENT, 53000, SERVER, 53, proto::UDP));
    }

    #[test]
    fn icmp_error_about_an_echo_request_carries_the_query_flow() {
        let ping = echo(CLIENT, SERVER, true, 0x1c2b);
        let p = parse(&icmp_error(3, 1, &ping)).unwrap();
        let L4Info::IcmpError { inner, .. } = p.l4 else {
            panic!("{:?}", p.l4)
        };
        // The same key the echo request itself has.
        assert_eq!(inner, parse(&ping).unwrap().flow);
    }

    #[test]
    fn icmp_errors_of_every_error_type_are_recognised() {
        let syn = tcp(CLIENT, SERVER, 40000, 80, SYN);
        for ty in [3u8, 4, 5, 11, 12] {
            let p = parse(&icmp_error(ty, 0, &syn)).unwrap();
            assert!(matches!(p.l4, L4Info::IcmpError { ty: t, .. } if t == ty));
        }
    }

    #[test]
    fn icmp_error_about_a_non_first_fragment_has_inner_ports_zero() {
        let later = fragment(udp(CLIENT, SERVER, 53000, 53), false, 1480);
        let p = parse(&icmp_error(11, 1, &later)).unwrap();
        let L4Info::IcmpError { inner, .. } = p.l4 else {
            panic!()
        };
        assert_eq!(inner, key(CLIENT, 0, SERVER, 0, proto::UDP));
    }

    #[test]
    fn icmp_error_with_a_bad_quote_is_dropped() {
        let syn = tcp(CLIENT, SERVER, 40000, 80, SYN);
        let quote = icmp::quote(&Ipv4Packet::new_checked(&syn[..]).unwrap()).to_vec();
        let bad = |q: &[u8]| parse(&icmp_raw(ROUTER, CLIENT, 3, 1, [0; 4], q));
        // Header and only 4 bytes of TCP.
        assert_eq!(bad(&quote[..24]).unwrap_err(), ParseDrop::IcmpErrorBadInner);
        // Not even an IPv4 header.
        assert_eq!(bad(&quote[..19]).unwrap_err(), ParseDrop::IcmpErrorBadInner);
        // Wrong version.
        let mut v6 = quote.clone();
        v6[0] = 0x65;
        assert_eq!(bad(&v6).unwrap_err(), ParseDrop::IcmpErrorBadInner);
        // Header length below 20.
        let mut ihl = quote.clone();
        ihl[0] = 0x44;
        assert_eq!(bad(&ihl).unwrap_err(), ParseDrop::IcmpErrorBadInner);
        // Header length past the quote.
        let mut long = quote.clone();
        long[0] = 0x4f;
        assert_eq!(bad(&long).unwrap_err(), ParseDrop::IcmpErrorBadInner);
        // An error about an error.
        let inner_error = icmp_error(3, 3, &syn);
        let p = parse(&icmp_error(11, 0, &inner_error));
        assert_eq!(p.unwrap_err(), ParseDrop::IcmpErrorBadInner);
    }

    #[test]
    fn gre_v0_key_and_pptp_call_id_are_the_sport() {
        let plain = ip(CLIENT, SERVER, proto::GRE, &hex("0000 0800 45000014"));
        let p = parse(&plain).unwrap();
        assert_eq!(p.flow, key(CLIENT, 0, SERVER, 0, proto::GRE));
        assert_eq!(p.l4, L4Info::Gre { version: 0 });
        let keyed = ip(CLIENT, SERVER, proto::GRE, &hex("2000 0800 00012345"));
        assert_eq!(parse(&keyed).unwrap().flow.sport, 0x2345);
        let pptp = ip(
            CLIENT,
            SERVER,
            proto::GRE,
            &hex("3081 880b 0004 4321 00000001 00000009 ff03c021"),
        );
        let p = parse(&pptp).unwrap();
        assert_eq!(p.flow, key(CLIENT, 0x4321, SERVER, 0, proto::GRE));
        assert_eq!(p.l4, L4Info::Gre { version: 1 });
    }

    #[test]
    fn esp_yields_its_spi_and_ports_zero() {
        let b = ip(
            CLIENT,
            SERVER,
            proto::ESP,
            &hex("c0ffee01 00000001 aabbccdd"),
        );
        let p = parse(&b).unwrap();
        assert_eq!(p.flow, key(CLIENT, 0, SERVER, 0, proto::ESP));
        assert_eq!(p.l4, L4Info::Esp { spi: 0xc0ff_ee01 });
    }

    fn sctp_init() -> Vec<u8> {
        let mut s = hex("1388 8e3c 00000000 00000000 01000014 11223344 0001a000 000affff 01020304");
        SctpPacket::new_unchecked(&mut s[..]).fill_checksum();
        s
    }

    #[test]
    fn sctp_yields_ports_tag_and_first_chunk() {
        let p = parse(&ip(CLIENT, SERVER, proto::SCTP, &sctp_init())).unwrap();
        assert_eq!(p.flow, key(CLIENT, 5000, SERVER, 36412, proto::SCTP));
        assert_eq!(
            p.l4,
            L4Info::Sctp {
                vtag: 0,
                first_chunk: sctp::chunk::INIT
            }
        );
    }

    #[test]
    fn other_protocols_have_ports_zero() {
        let p = parse(&ip(CLIENT, SERVER, 89, &[1, 2, 3])).unwrap();
        assert_eq!(p.flow, key(CLIENT, 0, SERVER, 0, 89));
        assert_eq!(p.l4, L4Info::Other);
    }

    // ---- fragments ----

    #[test]
    fn first_fragment_yields_ports_without_checksum_check() {
        // The TCP checksum covers the whole datagram: this first fragment's
        // checksum cannot (and must not) be verified.
        let seg = tcp_seg(CLIENT, SERVER, tcp_repr(40000, 80, ACK), &[0x55; 28]);
        let b = fragment(ip(CLIENT, SERVER, proto::TCP, &seg[..40]), true, 0);
        let p = parse(&b).unwrap();
        assert_eq!(p.fragment, Fragment::First { more: true });
        assert!(p.more_fragments && p.is_fragment());
        assert_eq!(p.flow, key(CLIENT, 40000, SERVER, 80, proto::TCP));
    }

    #[test]
    fn first_udp_fragment_length_counts_the_whole_datagram() {
        let d = udp_dgram(CLIENT, SERVER, 5000, 53, &[0x11; 100]);
        let b = fragment(ip(CLIENT, SERVER, proto::UDP, &d[..64]), true, 0);
        let p = parse(&b).unwrap();
        assert_eq!(p.flow, key(CLIENT, 5000, SERVER, 53, proto::UDP));
    }

    #[test]
    fn non_first_fragment_has_no_ports_and_other_l4() {
        let b = fragment(ip(CLIENT, SERVER, proto::UDP, &[0x22; 30]), false, 1480);
        let p = parse(&b).unwrap();
        assert_eq!(p.fragment, Fragment::NonFirst { offset: 1480 });
        assert!(!p.more_fragments);
        assert_eq!(p.flow, key(CLIENT, 0, SERVER, 0, proto::UDP));
        assert_eq!(p.l4, L4Info::Other);
        let middle = fragment(ip(CLIENT, SERVER, proto::UDP, &[0x22; 32]), true, 1480);
        assert!(parse(&middle).unwrap().more_fragments);
    }

    #[test]
    fn tiny_first_fragments_are_dropped_for_every_protocol() {
        // (protocol, transport header, bytes of it in the first fragment:
        // a multiple of 8, short of the whole header).
        let cases: [(u8, Vec<u8>, usize); 6] = [
            (
                proto::TCP,
                tcp_seg(CLIENT, SERVER, tcp_repr(1, 2, SYN), b""),
                16,
            ),
            (proto::UDP, udp_dgram(CLIENT, SERVER, 1, 2, b""), 0),
            (proto::ICMP, echo(CLIENT, SERVER, true, 1)[20..].to_vec(), 0),
            (proto::GRE, hex("3081 880b 0004 4321 00000001 00000009"), 8),
            (proto::ESP, hex("c0ffee01 00000001"), 0),
            (proto::SCTP, sctp_init(), 8),
        ];
        for (proto, l4, cut) in cases {
            let b = fragment(ip(CLIENT, SERVER, proto, &l4[..cut]), true, 0);
            assert_eq!(parse(&b).unwrap_err(), ParseDrop::FragTiny, "proto {proto}");
        }
    }

    #[test]
    fn tcp_options_cut_by_the_first_fragment_make_it_tiny() {
        let repr = TcpRepr {
            max_seg_size: Some(1460),
            window_scale: Some(7),
            sack_permitted: true,
            timestamp: Some((1, 0)),
            ..tcp_repr(40000, 80, SYN)
        };
        let seg = tcp_seg(CLIENT, SERVER, repr, b"");
        assert_eq!(seg.len(), 40);
        let b = fragment(ip(CLIENT, SERVER, proto::TCP, &seg[..24]), true, 0);
        assert_eq!(parse(&b).unwrap_err(), ParseDrop::FragTiny);
    }

    #[test]
    fn fragment_offset_overflow_is_dropped() {
        let b = fragment(ip(CLIENT, SERVER, proto::ICMP, &[0; 16]), false, 65528);
        assert_eq!(parse(&b).unwrap_err(), ParseDrop::FragOffsetOverflow);
        let ok = fragment(ip(CLIENT, SERVER, proto::ICMP, &[0; 7]), false, 65528);
        assert!(parse(&ok).is_ok());
    }

    #[test]
    fn non_last_fragment_must_be_a_multiple_of_8_bytes() {
        let b = fragment(ip(CLIENT, SERVER, proto::UDP, &[0; 30]), true, 1480);
        assert_eq!(parse(&b).unwrap_err(), ParseDrop::FragBadLength);
        let d = udp_dgram(CLIENT, SERVER, 1, 2, &[0; 100]);
        let first = fragment(ip(CLIENT, SERVER, proto::UDP, &d[..20]), true, 0);
        assert_eq!(parse(&first).unwrap_err(), ParseDrop::FragBadLength);
    }

    #[test]
    fn tcp_fragment_at_offset_8_is_an_overlap_attack() {
        let b = fragment(ip(CLIENT, SERVER, proto::TCP, &[0; 16]), true, 8);
        assert_eq!(parse(&b).unwrap_err(), ParseDrop::FragTcpOverlap);
        let udp = fragment(ip(CLIENT, SERVER, proto::UDP, &[0; 16]), true, 8);
        assert!(parse(&udp).is_ok());
    }

    // ---- drop reasons ----

    fn with_tcp_flags(flags: u8) -> Result<ParsedIpv4, ParseDrop> {
        parse(&tcp(CLIENT, SERVER, 40000, 80, flags))
    }

    #[test]
    fn invalid_tcp_flag_combinations_are_dropped() {
        assert_eq!(with_tcp_flags(SYN | FIN).unwrap_err(), ParseDrop::TcpSynFin);
        assert_eq!(
            with_tcp_flags(SYN | FIN | ACK).unwrap_err(),
            ParseDrop::TcpSynFin
        );
        assert_eq!(with_tcp_flags(SYN | RST).unwrap_err(), ParseDrop::TcpSynRst);
        assert_eq!(with_tcp_flags(0).unwrap_err(), ParseDrop::TcpNullScan);
        assert_eq!(
            with_tcp_flags(tcp_flags::ECE).unwrap_err(),
            ParseDrop::TcpNullScan
        );
        assert_eq!(
            with_tcp_flags(FIN | PSH | URG).unwrap_err(),
            ParseDrop::TcpXmasScan
        );
        assert_eq!(with_tcp_flags(FIN).unwrap_err(), ParseDrop::TcpBadFlags);
        assert_eq!(with_tcp_flags(URG).unwrap_err(), ParseDrop::TcpBadFlags);
        assert_eq!(
            with_tcp_flags(RST | FIN).unwrap_err(),
            ParseDrop::TcpBadFlags
        );
        assert_eq!(
            with_tcp_flags(RST | FIN | ACK).unwrap_err(),
            ParseDrop::TcpBadFlags
        );
    }

    #[test]
    fn valid_tcp_flag_combinations_pass() {
        use tcp_flags::{CWR, ECE};
        for flags in [
            SYN,
            SYN | ECE | CWR,
            SYN | ACK,
            SYN | ACK | ECE,
            ACK,
            ACK | PSH,
            FIN | ACK,
            FIN | ACK | PSH,
            FIN | ACK | PSH | URG,
            RST,
            RST | ACK,
            ACK | URG | PSH,
        ] {
            assert!(with_tcp_flags(flags).is_ok(), "flags {flags:#04x}");
        }
    }

    #[test]
    fn port_zero_is_dropped_for_tcp_udp_and_sctp() {
        assert_eq!(
            parse(&tcp(CLIENT, SERVER, 0, 80, SYN)).unwrap_err(),
            ParseDrop::TcpPortZero
        );
        assert_eq!(
            parse(&tcp(CLIENT, SERVER, 1, 0, SYN)).unwrap_err(),
            ParseDrop::TcpPortZero
        );
        assert_eq!(
            parse(&udp(CLIENT, SERVER, 0, 53)).unwrap_err(),
            ParseDrop::UdpPortZero
        );
        assert_eq!(
            parse(&udp(CLIENT, SERVER, 53, 0)).unwrap_err(),
            ParseDrop::UdpPortZero
        );
        let mut s = sctp_init();
        s[2..4].fill(0);
        let b = ip(CLIENT, SERVER, proto::SCTP, &s);
        assert_eq!(parse(&b).unwrap_err(), ParseDrop::SctpPortZero);
    }

    #[test]
    fn bad_l4_checksums_are_dropped_unless_verification_is_off() {
        let corrupt = |mut b: Vec<u8>, at: usize| {
            b[at] ^= 0x40;
            b
        };
        let cases = [
            (
                corrupt(tcp(CLIENT, SERVER, 1, 2, SYN), 24),
                ParseDrop::TcpBadChecksum,
            ),
            (
                corrupt(udp(CLIENT, SERVER, 1, 2), 29),
                ParseDrop::UdpBadChecksum,
            ),
            (
                corrupt(echo(CLIENT, SERVER, true, 1), 30),
                ParseDrop::IcmpBadChecksum,
            ),
        ];
        for (b, reason) in cases {
            assert_eq!(parse_ipv4(&b, true).unwrap_err(), reason);
            assert!(parse_ipv4(&b, false).is_ok(), "{reason}");
        }
        let mut gre = hex("8000 0800 00000000 deadbeef");
        let ck = checksum::checksum(&gre);
        gre[4..6].copy_from_slice(&ck.to_be_bytes());
        assert!(parse(&ip(CLIENT, SERVER, proto::GRE, &gre)).is_ok());
        gre[9] ^= 1;
        let b = ip(CLIENT, SERVER, proto::GRE, &gre);
        assert_eq!(parse(&b).unwrap_err(), ParseDrop::GreBadChecksum);
        assert!(parse_ipv4(&b, false).is_ok());
    }

    /// One packet for every drop reason.
    fn drop_cases() -> Vec<(ParseDrop, Vec<u8>)> {
        let syn = tcp(CLIENT, SERVER, 40000, 80, SYN);
        let patch = |mut b: Vec<u8>, at: usize, v: &[u8]| {
            b[at..at + v.len()].copy_from_slice(v);
            b
        };
        let tcp_hdr = |data_off: u8, opts: &[u8]| {
            let mut seg = tcp_seg(CLIENT, SERVER, tcp_repr(1, 2, SYN), b"");
            seg[12] = data_off << 4;
            seg.extend_from_slice(opts);
            ip(CLIENT, SERVER, proto::TCP, &seg)
        };
        let mut bad_ck = udp(CLIENT, SERVER, 1, 2);
        bad_ck[27] ^= 1;
        let mut sctp_bad_chunk = sctp_init();
        sctp_bad_chunk[14..16].copy_from_slice(&2u16.to_be_bytes());
        vec![
            (ParseDrop::IpTruncated, syn[..19].to_vec()),
            (ParseDrop::IpTruncated, syn[..39].to_vec()),
            (ParseDrop::IpBadVersion, patch(syn.clone(), 0, &[0x65])),
            (ParseDrop::IpBadHeaderLen, patch(syn.clone(), 0, &[0x44])),
            (ParseDrop::IpBadLength, patch(syn.clone(), 2, &[0, 19])),
            (
                ParseDrop::FragTiny,
                fragment(ip(CLIENT, SERVER, proto::TCP, &syn[20..36]), true, 0),
            ),
            (
                ParseDrop::FragOffsetOverflow,
                fragment(ip(CLIENT, SERVER, 6, &[0; 16]), false, 65528),
            ),
            (
                ParseDrop::FragBadLength,
                fragment(ip(CLIENT, SERVER, 17, &[0; 9]), true, 64),
            ),
            (
                ParseDrop::FragTcpOverlap,
                fragment(ip(CLIENT, SERVER, 6, &[0; 8]), false, 8),
            ),
            (
                ParseDrop::TcpTruncated,
                ip(CLIENT, SERVER, proto::TCP, &syn[20..39]),
            ),
            (ParseDrop::TcpBadDataOffset, tcp_hdr(4, &[])),
            (ParseDrop::TcpBadDataOffset, tcp_hdr(6, &[])),
            (ParseDrop::TcpBadOptions, tcp_hdr(6, &[1, 1, 2, 4])),
            (ParseDrop::TcpBadOptions, tcp_hdr(6, &[3, 2, 0, 0])),
            (ParseDrop::TcpBadChecksum, patch(syn.clone(), 24, &[0xff])),
            (ParseDrop::TcpSynFin, tcp(CLIENT, SERVER, 1, 2, SYN | FIN)),
            (ParseDrop::TcpSynRst, tcp(CLIENT, SERVER, 1, 2, SYN | RST)),
            (ParseDrop::TcpNullScan, tcp(CLIENT, SERVER, 1, 2, 0)),
            (
                ParseDrop::TcpXmasScan,
                tcp(CLIENT, SERVER, 1, 2, FIN | PSH | URG),
            ),
            (ParseDrop::TcpBadFlags, tcp(CLIENT, SERVER, 1, 2, FIN)),
            (ParseDrop::TcpPortZero, tcp(CLIENT, SERVER, 1, 0, SYN)),
            (
                ParseDrop::UdpTruncated,
                ip(CLIENT, SERVER, proto::UDP, &[0, 1, 0, 2, 0, 7, 0]),
            ),
            (
                ParseDrop::UdpBadLength,
                ip(CLIENT, SERVER, proto::UDP, &[0, 1, 0, 2, 0, 7, 0, 0]),
            ),
            (
                ParseDrop::UdpBadLength,
                ip(CLIENT, SERVER, proto::UDP, &[0, 1, 0, 2, 0, 9, 0, 0]),
            ),
            (ParseDrop::UdpBadChecksum, bad_ck),
            (ParseDrop::UdpPortZero, udp(CLIENT, SERVER, 0, 2)),
            (
                ParseDrop::IcmpTruncated,
                ip(CLIENT, SERVER, proto::ICMP, &[8, 0, 0, 0, 0, 0, 0]),
            ),
            (
                ParseDrop::IcmpBadChecksum,
                patch(echo(CLIENT, SERVER, true, 1), 22, &[0, 0]),
            ),
            (
                ParseDrop::IcmpErrorBadInner,
                icmp_raw(ROUTER, CLIENT, 3, 0, [0; 4], &[0x45; 12]),
            ),
            (
                ParseDrop::GreTruncated,
                ip(CLIENT, SERVER, proto::GRE, &hex("2000 0800 0000")),
            ),
            (
                ParseDrop::GreBadVersion,
                ip(CLIENT, SERVER, proto::GRE, &hex("0002 0800")),
            ),
            (
                ParseDrop::GreMalformed,
                ip(CLIENT, SERVER, proto::GRE, &hex("0001 880b")),
            ),
            (
                ParseDrop::GreBadChecksum,
                ip(CLIENT, SERVER, proto::GRE, &hex("8000 0800 0000 0000 01")),
            ),
            (
                ParseDrop::EspTruncated,
                ip(CLIENT, SERVER, proto::ESP, &[1, 2, 3, 4, 0, 0, 0]),
            ),
            (
                ParseDrop::EspSpiZero,
                ip(CLIENT, SERVER, proto::ESP, &[0, 0, 0, 0, 0, 0, 0, 1]),
            ),
            (
                ParseDrop::SctpTruncated,
                ip(CLIENT, SERVER, proto::SCTP, &sctp_init()[..15]),
            ),
            (
                ParseDrop::SctpBadChunk,
                ip(CLIENT, SERVER, proto::SCTP, &sctp_bad_chunk),
            ),
            (
                ParseDrop::SctpPortZero,
                ip(CLIENT, SERVER, proto::SCTP, &patch(sctp_init(), 0, &[0, 0])),
            ),
        ]
    }

    #[test]
    fn every_drop_reason_has_a_packet_that_triggers_it() {
        let cases = drop_cases();
        for (reason, bytes) in &cases {
            assert_eq!(parse(bytes).unwrap_err(), *reason, "{bytes:02x?}");
        }
        for reason in ParseDrop::ALL {
            assert!(
                cases.iter().any(|(r, _)| *r == reason),
                "no case for {reason}"
            );
        }
    }

    #[test]
    fn drop_reason_names_are_unique_snake_case_and_indexed() {
        assert_eq!(ParseDrop::ALL.len(), ParseDrop::COUNT);
        for (i, reason) in ParseDrop::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, i);
            let name = reason.as_str();
            assert!(name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit()));
            assert_eq!(
                ParseDrop::ALL.iter().filter(|r| r.as_str() == name).count(),
                1
            );
            assert_eq!(reason.to_string(), name);
        }
    }

    // ---- NAT rewrites ----

    #[test]
    fn address_rewrite_helper_patches_tcp_and_udp_checksums() {
        let nat = Ipv4Addr::new(203, 0, 113, 5);
        for mut b in [
            tcp(CLIENT, SERVER, 40000, 80, SYN),
            udp(CLIENT, SERVER, 5000, 53),
        ] {
            let proto = b[9];
            let mut ip = Ipv4Packet::new_checked(&mut b[..]).unwrap();
            ip.set_src_addr(nat);
            ip.fill_checksum();
            update_l4_checksum_for_addr(proto, ip.payload_mut(), CLIENT, nat).unwrap();
            let p = parse(&b).unwrap();
            assert_eq!(p.src, nat);
        }
        let mut short = [0u8; 10];
        assert_eq!(
            update_l4_checksum_for_addr(proto::TCP, &mut short, CLIENT, nat),
            Err(wire::Error::Truncated)
        );
        let mut icmp = echo(CLIENT, SERVER, true, 1);
        let before = icmp.clone();
        update_l4_checksum_for_addr(proto::ICMP, &mut icmp[20..], CLIENT, nat).unwrap();
        assert_eq!(icmp, before);
    }

    #[test]
    fn icmp_identifier_rewrite_keeps_the_checksum_valid() {
        let mut b = echo(CLIENT, SERVER, true, 0x1c2b);
        rewrite_icmp_ident(&mut IcmpPacket::new_checked(&mut b[20..]).unwrap(), 0x7777);
        let p = parse(&b).unwrap();
        assert_eq!(p.flow.sport, 0x7777);
    }

    // ---- properties ----

    /// Valid packets of every protocol, for mutation.
    fn valid_packets() -> Vec<Vec<u8>> {
        let syn = tcp(CLIENT, SERVER, 40000, 80, SYN);
        vec![
            syn.clone(),
            udp(CLIENT, SERVER, 53000, 53),
            echo(CLIENT, SERVER, true, 9),
            icmp_error(3, 3, &syn),
            icmp_error(11, 0, &echo(CLIENT, SERVER, true, 9)),
            ip(
                CLIENT,
                SERVER,
                proto::GRE,
                &hex("3081 880b 0004 4321 00000001 00000009 ff03c021"),
            ),
            ip(
                CLIENT,
                SERVER,
                proto::GRE,
                &hex("b000 0800 00000000 01020304 00000007 deadbeef"),
            ),
            ip(
                CLIENT,
                SERVER,
                proto::ESP,
                &hex("c0ffee01 00000001 aabbccdd"),
            ),
            ip(CLIENT, SERVER, proto::SCTP, &sctp_init()),
            fragment(syn.clone(), true, 0),
            fragment(syn, false, 1480),
        ]
    }

    /// The facts an `Ok` must be consistent with, whatever the input.
    fn assert_consistent(input: &[u8], p: &ParsedIpv4) {
        assert!(usize::from(p.total_len) <= input.len());
        assert!(p.l4_offset == usize::from(p.ihl) && p.l4_offset >= 20);
        assert!(p.l4_offset <= usize::from(p.total_len));
        assert_eq!(
            (p.flow.src, p.flow.dst, p.flow.proto),
            (p.src, p.dst, p.proto)
        );
        if let L4Info::Tcp(info) = p.l4 {
            assert!(info.payload_len as usize <= p.l4_len());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..120), verify: bool) {
            if let Ok(p) = parse_ipv4(&bytes, verify) {
                assert_consistent(&bytes, &p);
            }
        }

        #[test]
        fn never_panics_on_ipv4_looking_bytes(
            ihl in 5u8..=15,
            proto in prop_oneof![Just(1u8), Just(6), Just(17), Just(47), Just(50), Just(132), any::<u8>()],
            frag: u16,
            tail in proptest::collection::vec(any::<u8>(), 0..100),
        ) {
            let mut b = vec![0u8; usize::from(ihl) * 4];
            b[0] = 0x40 | ihl;
            b[6..8].copy_from_slice(&frag.to_be_bytes());
            b[9] = proto;
            b.extend_from_slice(&tail);
            let total = b.len() as u16;
            b[2..4].copy_from_slice(&total.to_be_bytes());
            if let Ok(p) = parse_ipv4(&b, true) {
                assert_consistent(&b, &p);
            }
        }

        #[test]
        fn never_panics_on_mutated_valid_packets(
            which in 0usize..11,
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
            cut in any::<prop::sample::Index>(),
            truncate: bool,
        ) {
            let mut b = valid_packets()[which].clone();
            for (at, v) in flips {
                let i = at.index(b.len());
                b[i] ^= v;
            }
            if truncate {
                b.truncate(cut.index(b.len() + 1));
            }
            if let Ok(p) = parse_ipv4(&b, false) {
                assert_consistent(&b, &p);
            }
            let _ = parse_ipv4(&b, true);
        }

        #[test]
        fn reply_flow_is_the_reverse_of_the_request_flow(
            a: u32, b: u32, sport in 1u16.., dport in 1u16.., which in 0usize..3,
        ) {
            let (a, b) = (Ipv4Addr::from(a), Ipv4Addr::from(b));
            let build = |src, dst, sp, dp| match which {
                0 => tcp(src, dst, sp, dp, SYN | ACK),
                1 => udp(src, dst, sp, dp),
                _ => {
                    let mut s = sctp_init();
                    s[0..2].copy_from_slice(&sp.to_be_bytes());
                    s[2..4].copy_from_slice(&dp.to_be_bytes());
                    ip(src, dst, proto::SCTP, &s)
                }
            };
            let request = parse(&build(a, b, sport, dport)).unwrap();
            let reply = parse(&build(b, a, dport, sport)).unwrap();
            prop_assert_eq!(reply.flow, request.flow.reverse());
            prop_assert_eq!(reply.flow.canonical(), request.flow.canonical());
        }

        #[test]
        fn tcp_port_and_address_rewrites_match_a_full_recomputation(
            sport in 1u16.., dport in 1u16.., new_sport in 1u16.., new_dport in 1u16..,
            new_src: u32, new_dst: u32,
            payload in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let (new_src, new_dst) = (Ipv4Addr::from(new_src), Ipv4Addr::from(new_dst));
            let mut seg = tcp_seg(CLIENT, SERVER, tcp_repr(sport, dport, ACK | PSH), &payload);
            let mut p = TcpPacket::new_checked(&mut seg[..]).unwrap();
            p.rewrite_src_port(new_sport);
            p.rewrite_dst_port(new_dport);
            p.update_checksum_for_addr(CLIENT, new_src);
            p.update_checksum_for_addr(SERVER, new_dst);
            let incremental = p.checksum();
            p.fill_checksum(new_src, new_dst);
            let full = p.checksum();
            // Equal, or the two one's-complement zeroes.
            prop_assert!(incremental == full || (incremental | full == 0xffff && incremental & full == 0),
                "incremental {:#06x} full {:#06x}", incremental, full);
            p.set_checksum(incremental);
            prop_assert!(p.verify_checksum(new_src, new_dst));
        }

        #[test]
        fn udp_port_and_address_rewrites_match_a_full_recomputation(
            sport in 1u16.., dport in 1u16.., new_sport in 1u16.., new_dst: u32,
            payload in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let new_dst = Ipv4Addr::from(new_dst);
            let mut d = udp_dgram(CLIENT, SERVER, sport, dport, &payload);
            let mut p = UdpPacket::new_checked(&mut d[..]).unwrap();
            p.rewrite_src_port(new_sport);
            p.update_checksum_for_addr(SERVER, new_dst);
            let incremental = p.checksum();
            p.fill_checksum(CLIENT, new_dst);
            prop_assert_eq!(incremental, p.checksum());
            prop_assert!(p.verify_checksum(CLIENT, new_dst));
        }

        #[test]
        fn icmp_identifier_rewrite_matches_a_full_recomputation(ident: u16, new_ident: u16, seq: u16) {
            let mut m = icmp_msg(IcmpRepr::EchoRequest { ident, seq_no: seq, data: b"0123456789" });
            let mut p = IcmpPacket::new_checked(&mut m[..]).unwrap();
            rewrite_icmp_ident(&mut p, new_ident);
            let incremental = p.checksum();
            p.fill_checksum();
            let full = p.checksum();
            prop_assert!(incremental == full || (incremental | full == 0xffff && incremental & full == 0));
            p.set_checksum(incremental);
            prop_assert!(p.verify_checksum());
        }
    }
}
