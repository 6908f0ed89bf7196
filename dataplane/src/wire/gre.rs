//! GRE (RFC 2784 with the key and sequence number of RFC 2890) and the
//! enhanced GRE of PPTP (RFC 2637, version 1, carrying a call id).

use super::{checksum, Error, Result};

/// Length of the fixed part of the header (flags, version, protocol type).
pub const MIN_HEADER_LEN: usize = 4;
/// Protocol type PPTP carries in enhanced GRE (PPP).
pub const PROTOCOL_PPP: u16 = 0x880b;

mod field {
    use crate::wire::Field;

    pub const FLAGS: usize = 0;
    pub const FLAGS_VERSION: usize = 1;
    pub const PROTOCOL: Field = 2..4;
    pub const OPTIONAL: usize = 4;
}

const FLAG_C: u8 = 0x80;
const FLAG_R: u8 = 0x40;
const FLAG_K: u8 = 0x20;
const FLAG_S: u8 = 0x10;
const FLAG_SSR: u8 = 0x08;
const FLAG_A: u8 = 0x80;
const VERSION_MASK: u8 = 0x07;

/// A read/write view of a GRE packet (the IPv4 payload).
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

    /// Ensures the fixed part and every optional field the flags announce
    /// are in the buffer (`Truncated`). Version and flag combinations are
    /// checked by [`Repr::parse`].
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < MIN_HEADER_LEN || len < self.header_len() {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    fn u32_at(&self, at: usize) -> u32 {
        let d = &self.buffer.as_ref()[at..at + 4];
        u32::from_be_bytes([d[0], d[1], d[2], d[3]])
    }

    /// Checksum present (C). RFC 1701's routing bit also announces the
    /// checksum/offset word.
    pub fn checksum_present(&self) -> bool {
        self.flags() & FLAG_C != 0
    }

    /// Routing present (R, RFC 1701; must be 0 in RFC 2784).
    pub fn routing_present(&self) -> bool {
        self.flags() & FLAG_R != 0
    }

    /// Key present (K; always set in version 1).
    pub fn key_present(&self) -> bool {
        self.flags() & FLAG_K != 0
    }

    /// Sequence number present (S).
    pub fn seq_present(&self) -> bool {
        self.flags() & FLAG_S != 0
    }

    /// Strict source route (s, RFC 1701; must be 0).
    pub fn strict_source_route(&self) -> bool {
        self.flags() & FLAG_SSR != 0
    }

    /// Acknowledgement number present (A, version 1 only).
    pub fn ack_present(&self) -> bool {
        self.version() == 1 && self.buffer.as_ref()[field::FLAGS_VERSION] & FLAG_A != 0
    }

    /// Version (0 GRE, 1 enhanced GRE).
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS_VERSION] & VERSION_MASK
    }

    /// Protocol type of the payload (an EtherType).
    pub fn protocol_type(&self) -> u16 {
        let d = &self.buffer.as_ref()[field::PROTOCOL];
        u16::from_be_bytes([d[0], d[1]])
    }

    fn checksum_word(&self) -> bool {
        self.checksum_present() || self.routing_present()
    }

    fn key_at(&self) -> usize {
        field::OPTIONAL + if self.checksum_word() { 4 } else { 0 }
    }

    fn seq_at(&self) -> usize {
        self.key_at() + if self.key_present() { 4 } else { 0 }
    }

    fn ack_at(&self) -> usize {
        self.seq_at() + if self.seq_present() { 4 } else { 0 }
    }

    /// Header length in bytes, optional fields included (routing entries
    /// of RFC 1701 are not counted).
    pub fn header_len(&self) -> usize {
        self.ack_at() + if self.ack_present() { 4 } else { 0 }
    }

    /// The checksum field, if present.
    pub fn checksum(&self) -> Option<u16> {
        self.checksum_present().then(|| {
            let d = &self.buffer.as_ref()[field::OPTIONAL..field::OPTIONAL + 2];
            u16::from_be_bytes([d[0], d[1]])
        })
    }

    /// The key field, if present (version 1: payload length and call id).
    pub fn key(&self) -> Option<u32> {
        self.key_present().then(|| self.u32_at(self.key_at()))
    }

    /// The PPTP call id (version 1: the low half of the key field).
    pub fn call_id(&self) -> Option<u16> {
        match (self.version(), self.key()) {
            (1, Some(key)) => Some(key as u16),
            _ => None,
        }
    }

    /// The sequence number, if present.
    pub fn seq_number(&self) -> Option<u32> {
        self.seq_present().then(|| self.u32_at(self.seq_at()))
    }

    /// The acknowledgement number, if present (version 1).
    pub fn ack_number(&self) -> Option<u32> {
        self.ack_present().then(|| self.u32_at(self.ack_at()))
    }

    /// The payload, after the header.
    pub fn payload(&self) -> &[u8] {
        self.buffer.as_ref().get(self.header_len()..).unwrap_or(&[])
    }

    /// True when there is no checksum, or it verifies over the whole packet.
    pub fn verify_checksum(&self) -> bool {
        !self.checksum_present() || checksum::verifies(self.buffer.as_ref())
    }
}

/// A parsed GRE header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Repr {
    /// Version: 0 (RFC 2784) or 1 (PPTP).
    pub version: u8,
    /// Protocol type of the payload.
    pub protocol_type: u16,
    /// Key (version 1: payload length << 16 | call id).
    pub key: Option<u32>,
    /// Sequence number.
    pub seq_number: Option<u32>,
    /// Acknowledgement number (version 1).
    pub ack_number: Option<u32>,
}

impl Repr {
    /// Reads a checked packet:
    /// - versions other than 0 and 1 are `Unsupported`;
    /// - routing (R, s) is `Malformed` (RFC 2784 receivers discard it);
    /// - a version 1 header without key, with a checksum, or not carrying
    ///   PPP is `Malformed` (RFC 2637 4.1);
    /// - when `verify_checksum`, a present checksum must verify (`BadChecksum`).
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>, verify_checksum: bool) -> Result<Repr> {
        packet.check_len()?;
        let version = packet.version();
        if version > 1 {
            return Err(Error::Unsupported);
        }
        if packet.routing_present() || packet.strict_source_route() {
            return Err(Error::Malformed);
        }
        if version == 1
            && (!packet.key_present()
                || packet.checksum_present()
                || packet.protocol_type() != PROTOCOL_PPP)
        {
            return Err(Error::Malformed);
        }
        if verify_checksum && !packet.verify_checksum() {
            return Err(Error::BadChecksum);
        }
        Ok(Repr {
            version,
            protocol_type: packet.protocol_type(),
            key: packet.key(),
            seq_number: packet.seq_number(),
            ack_number: packet.ack_number(),
        })
    }

    /// The PPTP call id (version 1).
    pub fn call_id(&self) -> Option<u16> {
        match (self.version, self.key) {
            (1, Some(key)) => Some(key as u16),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn plain_gre_has_a_four_byte_header() {
        let b = hex("0000 0800 45000014");
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(
            (p.version(), p.protocol_type(), p.header_len()),
            (0, 0x0800, 4)
        );
        assert_eq!((p.key(), p.seq_number(), p.checksum()), (None, None, None));
        assert_eq!(p.payload().len(), 4);
        let r = Repr::parse(&p, true).unwrap();
        assert_eq!(r.key, None);
    }

    #[test]
    fn checksum_key_and_sequence_are_located_by_the_flags() {
        // C K S: checksum+reserved, key 0x01020304, seq 7, then 4 payload bytes.
        let mut b = hex("b000 0800 00000000 01020304 00000007 deadbeef");
        let ck = checksum::checksum(&b);
        b[4..6].copy_from_slice(&ck.to_be_bytes());
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.header_len(), 16);
        assert_eq!(p.checksum(), Some(ck));
        assert_eq!(p.key(), Some(0x0102_0304));
        assert_eq!(p.seq_number(), Some(7));
        assert_eq!(p.call_id(), None);
        assert!(p.verify_checksum());
        b[19] ^= 1;
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(Repr::parse(&p, true).unwrap_err(), Error::BadChecksum);
        assert!(Repr::parse(&p, false).is_ok());
        assert_eq!(Packet::new_checked(&b[..15]).unwrap_err(), Error::Truncated);
    }

    #[test]
    fn pptp_enhanced_gre_carries_a_call_id_and_ack() {
        // K S, A, version 1, PPP, payload length 4, call id 0x4321, seq 1, ack 9.
        let b = hex("3081 880b 0004 4321 00000001 00000009 ff03c021");
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.version(), 1);
        assert_eq!(p.header_len(), 16);
        assert_eq!(p.call_id(), Some(0x4321));
        assert_eq!(p.seq_number(), Some(1));
        assert_eq!(p.ack_number(), Some(9));
        let r = Repr::parse(&p, true).unwrap();
        assert_eq!(r.call_id(), Some(0x4321));
        assert_eq!(r.ack_number, Some(9));
    }

    #[test]
    fn bad_versions_and_flag_combinations_are_rejected() {
        let v2 = hex("0002 0800");
        let p = Packet::new_checked(&v2[..]).unwrap();
        assert_eq!(Repr::parse(&p, true).unwrap_err(), Error::Unsupported);
        let v1_without_key = hex("0001 880b");
        let p = Packet::new_checked(&v1_without_key[..]).unwrap();
        assert_eq!(Repr::parse(&p, true).unwrap_err(), Error::Malformed);
        let v1_not_ppp = hex("2001 0800 00004321");
        let p = Packet::new_checked(&v1_not_ppp[..]).unwrap();
        assert_eq!(Repr::parse(&p, true).unwrap_err(), Error::Malformed);
        let routing = hex("4000 0800 00000000");
        let p = Packet::new_checked(&routing[..]).unwrap();
        assert_eq!(Repr::parse(&p, true).unwrap_err(), Error::Malformed);
    }
}
