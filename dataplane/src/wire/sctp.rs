//! SCTP (RFC 9260): the common header (ports, verification tag, CRC32c
//! checksum) and the header of the first chunk, which is what a stateful
//! firewall looks at.

use super::{Error, Result};

/// Length of the common header.
pub const HEADER_LEN: usize = 12;
/// Length of a chunk header (type, flags, length).
pub const CHUNK_HEADER_LEN: usize = 4;

/// Chunk types connection tracking cares about.
pub mod chunk {
    /// DATA.
    pub const DATA: u8 = 0;
    /// INIT.
    pub const INIT: u8 = 1;
    /// INIT ACK.
    pub const INIT_ACK: u8 = 2;
    /// ABORT.
    pub const ABORT: u8 = 6;
    /// SHUTDOWN.
    pub const SHUTDOWN: u8 = 7;
    /// SHUTDOWN ACK.
    pub const SHUTDOWN_ACK: u8 = 8;
    /// COOKIE ECHO.
    pub const COOKIE_ECHO: u8 = 10;
    /// COOKIE ACK.
    pub const COOKIE_ACK: u8 = 11;
    /// SHUTDOWN COMPLETE.
    pub const SHUTDOWN_COMPLETE: u8 = 14;
}

mod field {
    use crate::wire::Field;

    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    pub const VERIFICATION_TAG: Field = 4..8;
    pub const CHECKSUM: Field = 8..12;
    pub const CHUNK_TYPE: usize = 12;
    pub const CHUNK_FLAGS: usize = 13;
    pub const CHUNK_LENGTH: Field = 14..16;
}

/// The CRC32c (Castagnoli, reflected polynomial 0x82f63b78) table.
const CRC32C_TABLE: [u32; 256] = crc32c_table();

const fn crc32c_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

fn crc32c_update(mut crc: u32, data: &[u8]) -> u32 {
    for &b in data {
        crc = CRC32C_TABLE[usize::from((crc as u8) ^ b)] ^ (crc >> 8);
    }
    crc
}

/// CRC32c of `data` (as SCTP and iSCSI define it).
pub fn crc32c(data: &[u8]) -> u32 {
    !crc32c_update(!0, data)
}

/// A read/write view of an SCTP packet (the IPv4 payload).
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

    /// Ensures the common header and the first chunk's header are present
    /// (`Truncated`; a packet carries at least one chunk). The chunk length
    /// is checked by [`Repr::parse`].
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < HEADER_LEN + CHUNK_HEADER_LEN {
            Err(Error::Truncated)
        } else {
            Ok(())
        }
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

    /// Verification tag.
    pub fn verification_tag(&self) -> u32 {
        let d = &self.buffer.as_ref()[field::VERIFICATION_TAG];
        u32::from_be_bytes([d[0], d[1], d[2], d[3]])
    }

    /// Checksum field, as the CRC32c value (it is sent least significant
    /// byte first).
    pub fn checksum(&self) -> u32 {
        let d = &self.buffer.as_ref()[field::CHECKSUM];
        u32::from_le_bytes([d[0], d[1], d[2], d[3]])
    }

    /// Type of the first chunk ([`chunk`]).
    pub fn chunk_type(&self) -> u8 {
        self.buffer.as_ref()[field::CHUNK_TYPE]
    }

    /// Flags of the first chunk.
    pub fn chunk_flags(&self) -> u8 {
        self.buffer.as_ref()[field::CHUNK_FLAGS]
    }

    /// Length of the first chunk (header included, padding excluded).
    pub fn chunk_len(&self) -> u16 {
        self.u16_at(field::CHUNK_LENGTH)
    }

    /// The CRC32c of the packet with the checksum field taken as zero.
    pub fn compute_checksum(&self) -> u32 {
        let d = self.buffer.as_ref();
        let crc = crc32c_update(!0, d.get(..field::CHECKSUM.start).unwrap_or(&[]));
        let crc = crc32c_update(crc, &[0; 4]);
        !crc32c_update(crc, d.get(field::CHECKSUM.end..).unwrap_or(&[]))
    }

    /// True when the CRC32c over the whole packet verifies.
    pub fn verify_checksum(&self) -> bool {
        self.compute_checksum() == self.checksum()
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the source port (the CRC is not updated).
    pub fn set_src_port(&mut self, v: u16) {
        self.buffer.as_mut()[field::SRC_PORT].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets the destination port (the CRC is not updated).
    pub fn set_dst_port(&mut self, v: u16) {
        self.buffer.as_mut()[field::DST_PORT].copy_from_slice(&v.to_be_bytes());
    }

    /// Recomputes the CRC32c over the whole buffer (SCTP has no incremental
    /// update: NAT of ports recomputes it).
    pub fn fill_checksum(&mut self) {
        let crc = self.compute_checksum();
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&crc.to_le_bytes());
    }
}

/// The common header and first chunk header of an SCTP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Repr {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Verification tag.
    pub verification_tag: u32,
    /// Type of the first chunk.
    pub first_chunk: u8,
    /// Flags of the first chunk.
    pub first_chunk_flags: u8,
}

impl Repr {
    /// Reads a checked packet: the first chunk's length must cover its own
    /// header and stay inside the packet (`Malformed`); when
    /// `verify_checksum`, the CRC32c must verify (`BadChecksum`).
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>, verify_checksum: bool) -> Result<Repr> {
        packet.check_len()?;
        let chunk_len = usize::from(packet.chunk_len());
        if chunk_len < CHUNK_HEADER_LEN || HEADER_LEN + chunk_len > packet.buffer.as_ref().len() {
            return Err(Error::Malformed);
        }
        if verify_checksum && !packet.verify_checksum() {
            return Err(Error::BadChecksum);
        }
        Ok(Repr {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            verification_tag: packet.verification_tag(),
            first_chunk: packet.chunk_type(),
            first_chunk_flags: packet.chunk_flags(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_rfc3720_vectors() {
        // RFC 3720 B.4: 32 bytes of zeroes, of 0xff, and 0..31 ascending.
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62a8_ab43);
        let ascending: Vec<u8> = (0..32).collect();
        assert_eq!(crc32c(&ascending), 0x46dd_794e);
    }

    /// An SCTP INIT (5000 -> 36412, vtag 0), 20-byte INIT chunk.
    fn init() -> Vec<u8> {
        let mut b = vec![
            0x13, 0x88, 0x8e, 0x3c, 0, 0, 0, 0, 0, 0, 0, 0, // common header
            0x01, 0x00, 0x00, 0x14, // INIT, flags 0, length 20
            0x11, 0x22, 0x33, 0x44, 0x00, 0x01, 0xa0, 0x00, 0x00, 0x0a, 0xff, 0xff, 0x01, 0x02,
            0x03, 0x04,
        ];
        Packet::new_unchecked(&mut b[..]).fill_checksum();
        b
    }

    #[test]
    fn parses_common_header_and_first_chunk() {
        let b = init();
        let p = Packet::new_checked(&b[..]).unwrap();
        assert!(p.verify_checksum());
        assert_eq!(
            Repr::parse(&p, true).unwrap(),
            Repr {
                src_port: 5000,
                dst_port: 36412,
                verification_tag: 0,
                first_chunk: chunk::INIT,
                first_chunk_flags: 0,
            }
        );
        // The CRC is stored least significant byte first.
        assert_eq!(&b[8..12], &p.checksum().to_le_bytes());
    }

    #[test]
    fn bad_chunk_length_and_crc_are_rejected() {
        let mut b = init();
        b[20] ^= 1;
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(Repr::parse(&p, true).unwrap_err(), Error::BadChecksum);
        assert!(Repr::parse(&p, false).is_ok());
        for len in [0u16, 3, 21] {
            let mut b = init();
            b[14..16].copy_from_slice(&len.to_be_bytes());
            let p = Packet::new_checked(&b[..]).unwrap();
            assert_eq!(Repr::parse(&p, false).unwrap_err(), Error::Malformed);
        }
        assert_eq!(
            Packet::new_checked(&init()[..15]).unwrap_err(),
            Error::Truncated
        );
    }
}
