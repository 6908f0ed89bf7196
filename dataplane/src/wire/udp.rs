//! UDP datagrams (RFC 768): checked view, optional checksum over the IPv4
//! pseudo-header, and the incremental checksum updates NAT needs.

use std::net::Ipv4Addr;

use super::tcp::{pseudo_header, update_for_addr};
use super::{checksum, Error, Result};

/// Length of the header.
pub const HEADER_LEN: usize = 8;

mod field {
    use crate::wire::Field;

    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    pub const LENGTH: Field = 4..6;
    pub const CHECKSUM: Field = 6..8;
}

/// A read/write view of a UDP datagram. The buffer is the IPv4 payload; it
/// may be longer than the UDP length field says (the datagram ends there).
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
    /// - the buffer holds the 8-byte header (`Truncated`),
    /// - the length field covers the header (`BadTotalLen`),
    /// - the buffer holds the length field's bytes (`Truncated`).
    ///
    /// The first fragment of a fragmented datagram fails the last check
    /// (its length field counts every fragment); read its ports through
    /// [`Packet::new_unchecked`] after checking for 8 bytes.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let udp_len = usize::from(self.len());
        if udp_len < HEADER_LEN {
            return Err(Error::BadTotalLen);
        }
        if len < udp_len {
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

    /// Source port.
    pub fn src_port(&self) -> u16 {
        self.u16_at(field::SRC_PORT)
    }

    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        self.u16_at(field::DST_PORT)
    }

    /// Length field: header plus payload.
    pub fn len(&self) -> u16 {
        self.u16_at(field::LENGTH)
    }

    /// True when the length field is 0 (never valid; see [`Packet::check_len`]).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checksum field (0: the sender computed none).
    pub fn checksum(&self) -> u16 {
        self.u16_at(field::CHECKSUM)
    }

    /// The datagram: header and payload, up to the length field.
    pub fn datagram(&self) -> &[u8] {
        let d = self.buffer.as_ref();
        d.get(..usize::from(self.len())).unwrap_or(d)
    }

    /// The payload, from the header to the length field.
    pub fn payload(&self) -> &[u8] {
        self.datagram().get(HEADER_LEN..).unwrap_or(&[])
    }

    /// True when the checksum is absent (0) or verifies over the
    /// pseudo-header and the datagram.
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        if self.checksum() == 0 {
            return true;
        }
        let pseudo = pseudo_header(src, dst, super::ipv4::Protocol::Udp.into(), self.len());
        checksum::combine(&[pseudo, checksum::data(self.datagram())]) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn set_u16_at(&mut self, f: super::Field, v: u16) {
        self.buffer.as_mut()[f].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets the source port (the checksum is not updated).
    pub fn set_src_port(&mut self, v: u16) {
        self.set_u16_at(field::SRC_PORT, v)
    }

    /// Sets the destination port (the checksum is not updated).
    pub fn set_dst_port(&mut self, v: u16) {
        self.set_u16_at(field::DST_PORT, v)
    }

    /// Sets the length field.
    pub fn set_len(&mut self, v: u16) {
        self.set_u16_at(field::LENGTH, v)
    }

    /// Sets the checksum field.
    pub fn set_checksum(&mut self, v: u16) {
        self.set_u16_at(field::CHECKSUM, v)
    }

    /// The payload, writable (up to the length field).
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = usize::from(self.len());
        self.buffer
            .as_mut()
            .get_mut(HEADER_LEN..end)
            .unwrap_or(&mut [])
    }

    /// Computes the checksum over the pseudo-header and the datagram (a
    /// computed 0 is sent as 0xffff, RFC 768).
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let pseudo = pseudo_header(src, dst, super::ipv4::Protocol::Udp.into(), self.len());
        let ck = !checksum::combine(&[pseudo, checksum::data(self.datagram())]);
        self.set_checksum(if ck == 0 { 0xffff } else { ck });
    }

    /// Patches a present checksum with `update`; an absent one (0) stays 0,
    /// and a result of 0 is sent as 0xffff.
    fn patch_checksum(&mut self, update: impl FnOnce(u16) -> u16) {
        let ck = self.checksum();
        if ck != 0 {
            let new = update(ck);
            self.set_checksum(if new == 0 { 0xffff } else { new });
        }
    }

    /// Rewrites the source port and patches the checksum (RFC 1624).
    pub fn rewrite_src_port(&mut self, v: u16) {
        let old = self.src_port();
        self.patch_checksum(|ck| checksum::update(ck, old, v));
        self.set_src_port(v);
    }

    /// Rewrites the destination port and patches the checksum (RFC 1624).
    pub fn rewrite_dst_port(&mut self, v: u16) {
        let old = self.dst_port();
        self.patch_checksum(|ck| checksum::update(ck, old, v));
        self.set_dst_port(v);
    }

    /// Patches the checksum for an IPv4 address change of the pseudo-header
    /// (the caller rewrites the IP header itself).
    pub fn update_checksum_for_addr(&mut self, old: Ipv4Addr, new: Ipv4Addr) {
        self.patch_checksum(|ck| update_for_addr(ck, old, new));
    }
}

/// A parsed UDP header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Repr {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Payload length (length field minus 8).
    pub payload_len: usize,
}

impl Repr {
    /// Reads a checked datagram; when `verify_checksum`, a present checksum
    /// must verify over the pseudo-header of `src -> dst` (`BadChecksum`).
    pub fn parse<T: AsRef<[u8]>>(
        packet: &Packet<T>,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        verify_checksum: bool,
    ) -> Result<Repr> {
        packet.check_len()?;
        if verify_checksum && !packet.verify_checksum(src, dst) {
            return Err(Error::BadChecksum);
        }
        Ok(Repr {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            payload_len: packet.payload().len(),
        })
    }

    /// Header plus payload length.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN + self.payload_len
    }

    /// Writes the header and the checksum; the buffer must hold
    /// [`Repr::buffer_len`] bytes with the payload already in place.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut Packet<T>,
        src: Ipv4Addr,
        dst: Ipv4Addr,
    ) -> Result<()> {
        let len = u16::try_from(self.buffer_len()).map_err(|_| Error::BadTotalLen)?;
        if packet.buffer.as_ref().len() < self.buffer_len() {
            return Err(Error::Truncated);
        }
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_len(len);
        packet.fill_checksum(src, dst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 10);
    const DST: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 10);

    /// A DNS query for example.com (A), 198.18.1.10:53000 -> 198.18.2.10:53,
    /// checksum computed independently (Python).
    const DNS_QUERY: &str = "cf080035 0025 25f2
        abcd0100 00010000 00000000 07657861 6d706c65 03636f6d 00000100 01";

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn parses_a_dns_query() {
        let b = hex(DNS_QUERY);
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!((p.src_port(), p.dst_port(), p.len()), (53000, 53, 37));
        assert!(p.verify_checksum(SRC, DST));
        let r = Repr::parse(&p, SRC, DST, true).unwrap();
        assert_eq!(r.payload_len, 29);
        let mut out = vec![0u8; r.buffer_len()];
        out[8..].copy_from_slice(p.payload());
        r.emit(&mut Packet::new_unchecked(&mut out[..]), SRC, DST)
            .unwrap();
        assert_eq!(out, b);
    }

    #[test]
    fn length_field_is_checked_against_the_buffer() {
        let b = hex(DNS_QUERY);
        assert_eq!(Packet::new_checked(&b[..7]).unwrap_err(), Error::Truncated);
        assert_eq!(Packet::new_checked(&b[..36]).unwrap_err(), Error::Truncated);
        let mut short = b.clone();
        short[4..6].copy_from_slice(&7u16.to_be_bytes());
        assert_eq!(
            Packet::new_checked(&short[..]).unwrap_err(),
            Error::BadTotalLen
        );
        // Trailing bytes past the length field are not part of the datagram.
        let mut padded = b.clone();
        padded.extend_from_slice(&[0xee; 5]);
        let p = Packet::new_checked(&padded[..]).unwrap();
        assert_eq!(p.datagram(), &b[..]);
        assert!(p.verify_checksum(SRC, DST));
    }

    #[test]
    fn zero_checksum_means_none() {
        let mut b = hex(DNS_QUERY);
        b[6] = 0;
        b[7] = 0;
        let p = Packet::new_checked(&b[..]).unwrap();
        assert!(p.verify_checksum(Ipv4Addr::new(1, 2, 3, 4), DST));
        b[6] = 1;
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(
            Repr::parse(&p, SRC, DST, true).unwrap_err(),
            Error::BadChecksum
        );
    }

    #[test]
    fn rewrites_leave_a_zero_checksum_zero() {
        let mut b = hex(DNS_QUERY);
        b[6] = 0;
        b[7] = 0;
        let mut p = Packet::new_checked(&mut b[..]).unwrap();
        p.rewrite_src_port(1);
        p.rewrite_dst_port(2);
        p.update_checksum_for_addr(SRC, Ipv4Addr::new(203, 0, 113, 1));
        assert_eq!(p.checksum(), 0);
        assert_eq!((p.src_port(), p.dst_port()), (1, 2));
    }

    #[test]
    fn rewrites_keep_a_present_checksum_valid() {
        let mut b = hex(DNS_QUERY);
        let mut p = Packet::new_checked(&mut b[..]).unwrap();
        let nat = Ipv4Addr::new(203, 0, 113, 1);
        p.rewrite_src_port(61000);
        p.update_checksum_for_addr(DST, nat);
        assert!(p.verify_checksum(SRC, nat));
        assert_ne!(p.checksum(), 0);
    }
}
