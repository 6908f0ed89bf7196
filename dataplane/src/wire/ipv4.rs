//! IPv4 headers (RFC 791): checked view, header checksum, fragments, TTL.

use std::net::Ipv4Addr;

use super::{checksum, enum_with_unknown, Error, Result};

enum_with_unknown! {
    /// The IPv4 protocol field.
    pub enum Protocol(u8) {
        /// ICMP.
        Icmp = 1,
        /// TCP.
        Tcp = 6,
        /// UDP.
        Udp = 17,
    }
}

/// Length of a header without options.
pub const MIN_HEADER_LEN: usize = 20;

mod field {
    use crate::wire::Field;

    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const LENGTH: Field = 2..4;
    pub const IDENT: Field = 4..6;
    pub const FLG_OFF: Field = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const TTL_PROTOCOL: Field = 8..10;
    pub const CHECKSUM: Field = 10..12;
    pub const SRC_ADDR: Field = 12..16;
    pub const DST_ADDR: Field = 16..20;
}

const FLAG_DF: u16 = 0x4000;
const FLAG_MF: u16 = 0x2000;
const OFFSET_MASK: u16 = 0x1fff;

/// A read/write view of an IPv4 packet.
///
/// The buffer may be longer than the packet (Ethernet padding): `payload`
/// ends at the total length, not at the end of the buffer.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it.
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps a buffer after [`Packet::check_len`].
    pub fn new_checked(buffer: T) -> Result<Packet<T>> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Ensures every accessor stays in bounds:
    /// - the buffer holds 20 bytes (`Truncated`),
    /// - the header length field is at least 20 (`BadHeaderLen`),
    /// - the buffer holds the whole header, options included (`Truncated`),
    /// - the total length covers the header (`BadTotalLen`),
    /// - the buffer holds the total length (`Truncated`).
    ///
    /// The version is not checked here (see [`Repr::parse`]).
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < MIN_HEADER_LEN {
            return Err(Error::Truncated);
        }
        let header_len = usize::from(self.header_len());
        if header_len < MIN_HEADER_LEN {
            return Err(Error::BadHeaderLen);
        }
        if len < header_len {
            return Err(Error::Truncated);
        }
        let total_len = usize::from(self.total_len());
        if total_len < header_len {
            return Err(Error::BadTotalLen);
        }
        if len < total_len {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn u16_at(&self, f: super::Field) -> u16 {
        let d = &self.buffer.as_ref()[f];
        u16::from_be_bytes([d[0], d[1]])
    }

    /// Version field (4 for IPv4).
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// Header length in bytes (IHL * 4), options included.
    pub fn header_len(&self) -> u8 {
        (self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    /// DSCP and ECN byte (the old TOS).
    pub fn dscp_ecn(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN]
    }

    /// Total length: header plus payload.
    pub fn total_len(&self) -> u16 {
        self.u16_at(field::LENGTH)
    }

    /// Identification.
    pub fn ident(&self) -> u16 {
        self.u16_at(field::IDENT)
    }

    /// Don't Fragment flag.
    pub fn dont_frag(&self) -> bool {
        self.u16_at(field::FLG_OFF) & FLAG_DF != 0
    }

    /// More Fragments flag.
    pub fn more_frags(&self) -> bool {
        self.u16_at(field::FLG_OFF) & FLAG_MF != 0
    }

    /// Fragment offset in bytes.
    pub fn frag_offset(&self) -> u16 {
        (self.u16_at(field::FLG_OFF) & OFFSET_MASK) << 3
    }

    /// Part of a fragmented datagram (first, middle or last fragment).
    pub fn is_fragment(&self) -> bool {
        self.more_frags() || self.frag_offset() != 0
    }

    /// A fragment other than the first: carries no transport header.
    pub fn is_non_first_fragment(&self) -> bool {
        self.frag_offset() != 0
    }

    /// Time to live.
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    /// Protocol of the payload.
    pub fn protocol(&self) -> Protocol {
        Protocol::from(self.buffer.as_ref()[field::PROTOCOL])
    }

    /// Header checksum field.
    pub fn checksum(&self) -> u16 {
        self.u16_at(field::CHECKSUM)
    }

    /// Source address.
    pub fn src_addr(&self) -> Ipv4Addr {
        let d = &self.buffer.as_ref()[field::SRC_ADDR];
        Ipv4Addr::new(d[0], d[1], d[2], d[3])
    }

    /// Destination address.
    pub fn dst_addr(&self) -> Ipv4Addr {
        let d = &self.buffer.as_ref()[field::DST_ADDR];
        Ipv4Addr::new(d[0], d[1], d[2], d[3])
    }

    /// True when the header checksum (options included) verifies.
    pub fn verify_checksum(&self) -> bool {
        match self.buffer.as_ref().get(..usize::from(self.header_len())) {
            Some(h) => checksum::verifies(h),
            None => false,
        }
    }

    /// The header, options included.
    pub fn header(&self) -> &[u8] {
        let d = self.buffer.as_ref();
        d.get(..usize::from(self.header_len())).unwrap_or(d)
    }

    /// The options (between byte 20 and the header length).
    pub fn options(&self) -> &[u8] {
        self.buffer
            .as_ref()
            .get(MIN_HEADER_LEN..usize::from(self.header_len()))
            .unwrap_or(&[])
    }

    /// The payload, from the end of the header to the total length.
    pub fn payload(&self) -> &[u8] {
        let range = usize::from(self.header_len())..usize::from(self.total_len());
        self.buffer.as_ref().get(range).unwrap_or(&[])
    }

    /// The packet: header and payload, without any trailing link padding.
    pub fn packet(&self) -> &[u8] {
        let d = self.buffer.as_ref();
        d.get(..usize::from(self.total_len())).unwrap_or(d)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn set_u16_at(&mut self, f: super::Field, v: u16) {
        self.buffer.as_mut()[f].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets version and header length (bytes, a multiple of 4 up to 60).
    pub fn set_version_and_header_len(&mut self, version: u8, header_len: u8) {
        self.buffer.as_mut()[field::VER_IHL] = (version << 4) | ((header_len / 4) & 0x0f);
    }

    /// Sets the DSCP/ECN byte.
    pub fn set_dscp_ecn(&mut self, v: u8) {
        self.buffer.as_mut()[field::DSCP_ECN] = v;
    }

    /// Sets the total length.
    pub fn set_total_len(&mut self, v: u16) {
        self.set_u16_at(field::LENGTH, v)
    }

    /// Sets the identification.
    pub fn set_ident(&mut self, v: u16) {
        self.set_u16_at(field::IDENT, v)
    }

    /// Sets flags and fragment offset (offset in bytes, a multiple of 8).
    pub fn set_flags_and_offset(&mut self, dont_frag: bool, more_frags: bool, offset: u16) {
        let mut v = (offset >> 3) & OFFSET_MASK;
        if dont_frag {
            v |= FLAG_DF;
        }
        if more_frags {
            v |= FLAG_MF;
        }
        self.set_u16_at(field::FLG_OFF, v)
    }

    /// Sets the TTL (the checksum is not updated).
    pub fn set_ttl(&mut self, v: u8) {
        self.buffer.as_mut()[field::TTL] = v;
    }

    /// Sets the protocol.
    pub fn set_protocol(&mut self, v: Protocol) {
        self.buffer.as_mut()[field::PROTOCOL] = v.into();
    }

    /// Sets the checksum field.
    pub fn set_checksum(&mut self, v: u16) {
        self.set_u16_at(field::CHECKSUM, v)
    }

    /// Sets the source address.
    pub fn set_src_addr(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&a.octets())
    }

    /// Sets the destination address.
    pub fn set_dst_addr(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&a.octets())
    }

    /// Recomputes the header checksum over the header, options included.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let ck = checksum::checksum(self.header());
        self.set_checksum(ck);
    }

    /// Decrements the TTL and patches the checksum incrementally (RFC 1624)
    /// instead of recomputing it. A TTL of 0 is left as is. Returns the new TTL.
    pub fn decrement_ttl(&mut self) -> u8 {
        let ttl = self.ttl();
        if ttl == 0 {
            return 0;
        }
        let old = self.u16_at(field::TTL_PROTOCOL);
        self.set_ttl(ttl - 1);
        let new = self.u16_at(field::TTL_PROTOCOL);
        let ck = checksum::update(self.checksum(), old, new);
        self.set_checksum(ck);
        ttl - 1
    }

    /// The payload, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let range = usize::from(self.header_len())..usize::from(self.total_len());
        self.buffer.as_mut().get_mut(range).unwrap_or(&mut [])
    }
}

/// A parsed IPv4 header (options are not represented; [`Repr::emit`]
/// writes a 20-byte header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Repr {
    /// Source address.
    pub src_addr: Ipv4Addr,
    /// Destination address.
    pub dst_addr: Ipv4Addr,
    /// Payload protocol.
    pub protocol: Protocol,
    /// Payload length (total length minus header length).
    pub payload_len: usize,
    /// Time to live.
    pub ttl: u8,
    /// DSCP/ECN byte.
    pub dscp_ecn: u8,
    /// Don't Fragment flag.
    pub dont_frag: bool,
}

impl Repr {
    /// Reads a checked packet: version must be 4 and the checksum must verify.
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr> {
        packet.check_len()?;
        if packet.version() != 4 {
            return Err(Error::BadVersion);
        }
        if !packet.verify_checksum() {
            return Err(Error::BadChecksum);
        }
        Ok(Repr {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            protocol: packet.protocol(),
            payload_len: usize::from(packet.total_len()) - usize::from(packet.header_len()),
            ttl: packet.ttl(),
            dscp_ecn: packet.dscp_ecn(),
            dont_frag: packet.dont_frag(),
        })
    }

    /// Header length [`Repr::emit`] writes.
    pub const fn buffer_len(&self) -> usize {
        MIN_HEADER_LEN
    }

    /// Writes a 20-byte header (ident 0, not a fragment) with its checksum.
    /// The payload, if any, is the caller's to write after it.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) -> Result<()> {
        let total = MIN_HEADER_LEN + self.payload_len;
        let total = u16::try_from(total).map_err(|_| Error::BadTotalLen)?;
        if packet.buffer.as_ref().len() < MIN_HEADER_LEN {
            return Err(Error::Truncated);
        }
        packet.set_version_and_header_len(4, MIN_HEADER_LEN as u8);
        packet.set_dscp_ecn(self.dscp_ecn);
        packet.set_total_len(total);
        packet.set_ident(0);
        packet.set_flags_and_offset(self.dont_frag, false, 0);
        packet.set_ttl(self.ttl);
        packet.set_protocol(self.protocol);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
        packet.fill_checksum();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A real ICMP echo request, 198.18.1.10 -> 198.18.2.10, TTL 64, DF, 84 bytes
    // (header only; the payload is zero-filled below).
    const HEADER: [u8; 20] = [
        0x45, 0x00, 0x00, 0x54, 0x3b, 0x1c, 0x40, 0x00, 0x40, 0x01, 0x00, 0x00, 0xc6, 0x12, 0x01,
        0x0a, 0xc6, 0x12, 0x02, 0x0a,
    ];

    fn packet() -> [u8; 84] {
        let mut b = [0u8; 84];
        b[..20].copy_from_slice(&HEADER);
        let ck = checksum::checksum(&b[..20]);
        b[10..12].copy_from_slice(&ck.to_be_bytes());
        b
    }

    #[test]
    fn parses_header_fields() {
        let b = packet();
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.version(), 4);
        assert_eq!(p.header_len(), 20);
        assert_eq!(p.total_len(), 84);
        assert!(p.dont_frag());
        assert!(!p.is_fragment());
        assert_eq!(p.ttl(), 64);
        assert_eq!(p.protocol(), Protocol::Icmp);
        assert_eq!(p.src_addr(), Ipv4Addr::new(198, 18, 1, 10));
        assert_eq!(p.dst_addr(), Ipv4Addr::new(198, 18, 2, 10));
        assert!(p.verify_checksum());
        assert_eq!(p.payload().len(), 64);
        let r = Repr::parse(&p).unwrap();
        assert_eq!(r.payload_len, 64);
    }

    #[test]
    fn ethernet_padding_is_not_payload() {
        let mut b = [0u8; 60];
        b[..20].copy_from_slice(&HEADER);
        b[2..4].copy_from_slice(&28u16.to_be_bytes());
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.payload().len(), 8);
        assert_eq!(p.packet().len(), 28);
    }

    #[test]
    fn length_errors_are_distinguished() {
        let b = packet();
        assert_eq!(Packet::new_checked(&b[..19]).unwrap_err(), Error::Truncated);
        assert_eq!(Packet::new_checked(&b[..83]).unwrap_err(), Error::Truncated);
        let mut ihl4 = b;
        ihl4[0] = 0x44;
        assert_eq!(
            Packet::new_checked(&ihl4[..]).unwrap_err(),
            Error::BadHeaderLen
        );
        let mut ihl15 = b;
        ihl15[0] = 0x4f;
        ihl15[2..4].copy_from_slice(&40u16.to_be_bytes());
        assert_eq!(
            Packet::new_checked(&ihl15[..40]).unwrap_err(),
            Error::Truncated
        );
        assert_eq!(
            Packet::new_checked(&ihl15[..]).unwrap_err(),
            Error::BadTotalLen
        );
        let mut short_total = b;
        short_total[2..4].copy_from_slice(&19u16.to_be_bytes());
        assert_eq!(
            Packet::new_checked(&short_total[..]).unwrap_err(),
            Error::BadTotalLen
        );
    }

    #[test]
    fn options_are_allowed_and_covered_by_checksum() {
        let mut b = [0u8; 24];
        b[..20].copy_from_slice(&HEADER);
        b[0] = 0x46;
        b[2..4].copy_from_slice(&24u16.to_be_bytes());
        b[20..24].copy_from_slice(&[0x94, 0x04, 0x00, 0x00]); // router alert
        let mut p = Packet::new_checked(&mut b[..]).unwrap();
        p.fill_checksum();
        assert!(p.verify_checksum());
        assert_eq!(p.options(), &[0x94, 0x04, 0, 0]);
        assert!(p.payload().is_empty());
        b[21] = 0x05;
        assert!(!Packet::new_checked(&b[..]).unwrap().verify_checksum());
    }

    #[test]
    fn version_and_checksum_checked_by_parse() {
        let mut b = packet();
        b[11] ^= 1;
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(Repr::parse(&p).unwrap_err(), Error::BadChecksum);
        let mut v6 = packet();
        v6[0] = 0x65;
        let p = Packet::new_checked(&v6[..]).unwrap();
        assert_eq!(Repr::parse(&p).unwrap_err(), Error::BadVersion);
    }

    #[test]
    fn fragments_are_recognised() {
        let mut b = packet();
        let mut p = Packet::new_unchecked(&mut b[..]);
        p.set_flags_and_offset(false, true, 0);
        assert!(p.is_fragment() && !p.is_non_first_fragment());
        p.set_flags_and_offset(false, false, 1480);
        assert_eq!(p.frag_offset(), 1480);
        assert!(p.is_fragment() && p.is_non_first_fragment());
    }

    #[test]
    fn ttl_decrement_keeps_checksum_valid() {
        let mut b = packet();
        let mut p = Packet::new_checked(&mut b[..]).unwrap();
        assert_eq!(p.decrement_ttl(), 63);
        assert!(p.verify_checksum());
        let mut full = packet();
        full[8] = 63;
        full[10] = 0;
        full[11] = 0;
        let ck = checksum::checksum(&full[..20]);
        assert_eq!(u16::from_be_bytes([b[10], b[11]]), ck);
    }

    #[test]
    fn repr_round_trips() {
        let r = Repr {
            src_addr: Ipv4Addr::new(198, 18, 1, 1),
            dst_addr: Ipv4Addr::new(198, 18, 2, 10),
            protocol: Protocol::Udp,
            payload_len: 8,
            ttl: 64,
            dscp_ecn: 0,
            dont_frag: true,
        };
        let mut b = [0u8; 28];
        r.emit(&mut Packet::new_unchecked(&mut b[..])).unwrap();
        assert_eq!(
            Repr::parse(&Packet::new_checked(&b[..]).unwrap()).unwrap(),
            r
        );
    }
}
