//! Ethernet II frames, with 802.1Q / 802.1ad tags recognised.

use core::fmt;

use super::{enum_with_unknown, Error, Result};

enum_with_unknown! {
    /// The EtherType field: what the frame (or the tag) carries.
    pub enum EtherType(u16) {
        /// IPv4.
        Ipv4 = 0x0800,
        /// ARP.
        Arp = 0x0806,
        /// An 802.1Q VLAN tag follows.
        Vlan = 0x8100,
        /// An 802.1ad (QinQ) service tag follows.
        QinQ = 0x88a8,
        /// IPv6.
        Ipv6 = 0x86dd,
    }
}

impl EtherType {
    /// True for the EtherTypes that announce a VLAN tag.
    pub fn is_vlan_tag(self) -> bool {
        matches!(self, EtherType::Vlan | EtherType::QinQ)
    }
}

/// A 48-bit Ethernet (MAC) address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Address(pub [u8; 6]);

impl Address {
    /// ff:ff:ff:ff:ff:ff.
    pub const BROADCAST: Address = Address([0xff; 6]);
    /// 00:00:00:00:00:00 (the "unknown" target hardware address in ARP requests).
    pub const UNSPECIFIED: Address = Address([0; 6]);

    /// Builds an address from a 6-byte slice; `None` if the length differs.
    pub fn from_bytes(bytes: &[u8]) -> Option<Address> {
        <[u8; 6]>::try_from(bytes).ok().map(Address)
    }

    /// The six octets.
    pub const fn as_bytes(&self) -> &[u8; 6] {
        &self.0
    }

    /// A single station's address: group bit clear and not all zeroes.
    pub fn is_unicast(&self) -> bool {
        !self.is_multicast() && *self != Self::UNSPECIFIED
    }

    /// A group address (I/G bit set); broadcast is one.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// ff:ff:ff:ff:ff:ff.
    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }

    /// A locally administered address (U/L bit set).
    pub fn is_local(&self) -> bool {
        self.0[0] & 0x02 != 0
    }

    /// The address packed into the low 48 bits of a `u64` (big-endian order).
    pub fn to_u64(self) -> u64 {
        let b = self.0;
        u64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]])
    }

    /// The inverse of [`Address::to_u64`]; bits above 48 are ignored.
    pub fn from_u64(v: u64) -> Address {
        let b = v.to_be_bytes();
        Address([b[2], b[3], b[4], b[5], b[6], b[7]])
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Parsing "aa:bb:cc:dd:ee:ff" (or with '-') failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddressParseError;

impl fmt::Display for AddressParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("expected a MAC address written as six hex pairs, like 02:00:00:00:00:01")
    }
}

impl std::error::Error for AddressParseError {}

impl core::str::FromStr for Address {
    type Err = AddressParseError;

    fn from_str(s: &str) -> core::result::Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in out.iter_mut() {
            let part = parts.next().ok_or(AddressParseError)?;
            if part.len() != 2 {
                return Err(AddressParseError);
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| AddressParseError)?;
        }
        if parts.next().is_some() {
            return Err(AddressParseError);
        }
        Ok(Address(out))
    }
}

mod field {
    use crate::wire::Field;

    pub const DESTINATION: Field = 0..6;
    pub const SOURCE: Field = 6..12;
    pub const ETHERTYPE: Field = 12..14;
    pub const TCI: Field = 14..16;
    pub const INNER_ETHERTYPE: Field = 16..18;
}

/// Length of an untagged Ethernet II header.
pub const HEADER_LEN: usize = 14;
/// Length of a header carrying one 802.1Q tag.
pub const TAGGED_HEADER_LEN: usize = 18;

/// A read/write view of an Ethernet II frame (without FCS).
#[derive(Debug, Clone)]
pub struct Frame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// Wraps a buffer without checking it; accessors may panic on a short
    /// buffer. For buffers this node built itself.
    pub const fn new_unchecked(buffer: T) -> Frame<T> {
        Frame { buffer }
    }

    /// Wraps a buffer after [`Frame::check_len`].
    pub fn new_checked(buffer: T) -> Result<Frame<T>> {
        let frame = Self::new_unchecked(buffer);
        frame.check_len()?;
        Ok(frame)
    }

    /// Ensures every accessor stays in bounds: the buffer holds the header,
    /// including the VLAN tag when the EtherType announces one.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if self.ethertype().is_vlan_tag() && len < TAGGED_HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// The underlying buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Header length: 18 with a VLAN tag, else 14.
    pub fn header_len(&self) -> usize {
        if self.ethertype().is_vlan_tag() {
            TAGGED_HEADER_LEN
        } else {
            HEADER_LEN
        }
    }

    /// Destination address.
    pub fn dst_addr(&self) -> Address {
        let mut b = [0u8; 6];
        b.copy_from_slice(&self.buffer.as_ref()[field::DESTINATION]);
        Address(b)
    }

    /// Source address.
    pub fn src_addr(&self) -> Address {
        let mut b = [0u8; 6];
        b.copy_from_slice(&self.buffer.as_ref()[field::SOURCE]);
        Address(b)
    }

    /// The outer EtherType (`Vlan`/`QinQ` for a tagged frame).
    pub fn ethertype(&self) -> EtherType {
        let d = &self.buffer.as_ref()[field::ETHERTYPE];
        EtherType::from(u16::from_be_bytes([d[0], d[1]]))
    }

    /// The VLAN tag control information (PCP, DEI, VID) of a tagged frame.
    pub fn vlan_tci(&self) -> Option<u16> {
        if !self.ethertype().is_vlan_tag() {
            return None;
        }
        let d = self.buffer.as_ref().get(field::TCI)?;
        Some(u16::from_be_bytes([d[0], d[1]]))
    }

    /// The EtherType of the payload: after the tag for a tagged frame.
    pub fn payload_ethertype(&self) -> EtherType {
        if !self.ethertype().is_vlan_tag() {
            return self.ethertype();
        }
        match self.buffer.as_ref().get(field::INNER_ETHERTYPE) {
            Some(d) => EtherType::from(u16::from_be_bytes([d[0], d[1]])),
            None => EtherType::Unknown(0),
        }
    }

    /// The bytes after the header (tag included in the header).
    pub fn payload(&self) -> &[u8] {
        let start = self.header_len();
        self.buffer.as_ref().get(start..).unwrap_or(&[])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    /// Sets the destination address.
    pub fn set_dst_addr(&mut self, addr: Address) {
        self.buffer.as_mut()[field::DESTINATION].copy_from_slice(&addr.0);
    }

    /// Sets the source address.
    pub fn set_src_addr(&mut self, addr: Address) {
        self.buffer.as_mut()[field::SOURCE].copy_from_slice(&addr.0);
    }

    /// Sets the outer EtherType.
    pub fn set_ethertype(&mut self, value: EtherType) {
        self.buffer.as_mut()[field::ETHERTYPE].copy_from_slice(&u16::from(value).to_be_bytes());
    }

    /// The bytes after the header, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = self.header_len();
        self.buffer.as_mut().get_mut(start..).unwrap_or(&mut [])
    }
}

/// A parsed Ethernet header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Repr {
    /// Source address.
    pub src_addr: Address,
    /// Destination address.
    pub dst_addr: Address,
    /// The 802.1Q tag control information, if the frame is tagged.
    pub vlan_tci: Option<u16>,
    /// The payload's EtherType (inside the tag, if any).
    pub ethertype: EtherType,
}

impl Repr {
    /// Reads the header of a checked frame.
    pub fn parse<T: AsRef<[u8]>>(frame: &Frame<T>) -> Result<Repr> {
        frame.check_len()?;
        Ok(Repr {
            src_addr: frame.src_addr(),
            dst_addr: frame.dst_addr(),
            vlan_tci: frame.vlan_tci(),
            ethertype: frame.payload_ethertype(),
        })
    }

    /// Header length this representation emits.
    pub const fn buffer_len(&self) -> usize {
        if self.vlan_tci.is_some() {
            TAGGED_HEADER_LEN
        } else {
            HEADER_LEN
        }
    }

    /// Writes the header; the buffer must hold [`Repr::buffer_len`] bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, frame: &mut Frame<T>) -> Result<()> {
        if frame.buffer.as_ref().len() < self.buffer_len() {
            return Err(Error::Truncated);
        }
        frame.set_src_addr(self.src_addr);
        frame.set_dst_addr(self.dst_addr);
        match self.vlan_tci {
            None => frame.set_ethertype(self.ethertype),
            Some(tci) => {
                frame.set_ethertype(EtherType::Vlan);
                let b = frame.buffer.as_mut();
                b[field::TCI].copy_from_slice(&tci.to_be_bytes());
                b[field::INNER_ETHERTYPE].copy_from_slice(&u16::from(self.ethertype).to_be_bytes());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A real ARP request capture: who-has 198.18.1.1 tell 198.18.1.10.
    const ARP_FRAME: [u8; 42] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x00, 0x00, 0x00, 0x01, 0x0a, 0x08, 0x06, 0x00,
        0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, 0x02, 0x00, 0x00, 0x00, 0x01, 0x0a, 0xc6, 0x12,
        0x01, 0x0a, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xc6, 0x12, 0x01, 0x01,
    ];

    #[test]
    fn address_displays_as_lowercase_colon_hex() {
        let a = Address([0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff]);
        assert_eq!(a.to_string(), "aa:bb:cc:dd:ee:ff");
        assert_eq!("aa:bb:cc:dd:ee:ff".parse::<Address>(), Ok(a));
        assert!("aa:bb:cc:dd:ee".parse::<Address>().is_err());
        assert!("aa:bb:cc:dd:ee:ff:00".parse::<Address>().is_err());
    }

    #[test]
    fn address_classes() {
        assert!(Address::BROADCAST.is_multicast());
        assert!(Address::BROADCAST.is_broadcast());
        assert!(!Address::BROADCAST.is_unicast());
        assert!(Address([0x01, 0x00, 0x5e, 0, 0, 1]).is_multicast());
        assert!(Address([0x02, 0, 0, 0, 0, 1]).is_unicast());
        assert!(!Address::UNSPECIFIED.is_unicast());
        let a = Address([1, 2, 3, 4, 5, 6]);
        assert_eq!(Address::from_u64(a.to_u64()), a);
    }

    #[test]
    fn parses_real_arp_broadcast() {
        let f = Frame::new_checked(&ARP_FRAME[..]).unwrap();
        assert_eq!(f.dst_addr(), Address::BROADCAST);
        assert_eq!(f.src_addr(), Address([2, 0, 0, 0, 1, 0x0a]));
        assert_eq!(f.ethertype(), EtherType::Arp);
        assert_eq!(f.payload().len(), 28);
        assert_eq!(f.vlan_tci(), None);
    }

    #[test]
    fn short_frame_is_truncated() {
        assert_eq!(
            Frame::new_checked(&ARP_FRAME[..13]).unwrap_err(),
            Error::Truncated
        );
    }

    #[test]
    fn vlan_tag_is_recognised() {
        let mut b = [0u8; 20];
        b[12..14].copy_from_slice(&[0x81, 0x00]);
        b[14..16].copy_from_slice(&[0x20, 0x0a]);
        b[16..18].copy_from_slice(&[0x08, 0x00]);
        let f = Frame::new_checked(&b[..]).unwrap();
        assert_eq!(f.vlan_tci(), Some(0x200a));
        assert_eq!(f.payload_ethertype(), EtherType::Ipv4);
        assert_eq!(f.header_len(), 18);
        assert_eq!(f.payload().len(), 2);
        assert_eq!(Frame::new_checked(&b[..17]).unwrap_err(), Error::Truncated);
    }

    #[test]
    fn repr_round_trips_tagged_and_untagged() {
        for vlan_tci in [None, Some(42)] {
            let repr = Repr {
                src_addr: Address([2, 0, 0, 0, 0, 1]),
                dst_addr: Address::BROADCAST,
                vlan_tci,
                ethertype: EtherType::Arp,
            };
            let mut b = [0u8; 18];
            let mut f = Frame::new_unchecked(&mut b[..]);
            repr.emit(&mut f).unwrap();
            let f = Frame::new_checked(&b[..]).unwrap();
            assert_eq!(Repr::parse(&f).unwrap(), repr);
        }
    }
}
