//! ICMPv4 (RFC 792): echo request/reply, and the destination unreachable and
//! time exceeded errors a router sends, quoting the offending datagram.

use super::ipv4::Packet as Ipv4Packet;
use super::{checksum, enum_with_unknown, Error, Result};

enum_with_unknown! {
    /// ICMP message type.
    pub enum Message(u8) {
        /// Echo reply.
        EchoReply = 0,
        /// Destination unreachable.
        DstUnreachable = 3,
        /// Source quench (deprecated, still an error).
        SourceQuench = 4,
        /// Redirect.
        Redirect = 5,
        /// Echo request.
        EchoRequest = 8,
        /// Router advertisement.
        RouterAdvert = 9,
        /// Router solicitation.
        RouterSolicit = 10,
        /// Time exceeded.
        TimeExceeded = 11,
        /// Parameter problem.
        ParamProblem = 12,
        /// Timestamp.
        Timestamp = 13,
        /// Timestamp reply.
        TimestampReply = 14,
    }
}

impl Message {
    /// An ICMP error message, about which no ICMP error may be sent
    /// (RFC 1122 3.2.2, RFC 1812 4.3.2.7).
    pub fn is_error(self) -> bool {
        matches!(
            self,
            Message::DstUnreachable
                | Message::SourceQuench
                | Message::Redirect
                | Message::TimeExceeded
                | Message::ParamProblem
        )
    }
}

enum_with_unknown! {
    /// Codes of destination unreachable.
    pub enum DstUnreachable(u8) {
        /// Network unreachable.
        NetUnreachable = 0,
        /// Host unreachable.
        HostUnreachable = 1,
        /// Protocol unreachable.
        ProtoUnreachable = 2,
        /// Port unreachable.
        PortUnreachable = 3,
        /// Fragmentation needed and DF set (carries the next-hop MTU).
        FragRequired = 4,
        /// Communication administratively prohibited.
        AdminProhibited = 13,
    }
}

enum_with_unknown! {
    /// Codes of time exceeded.
    pub enum TimeExceeded(u8) {
        /// TTL reached zero in transit.
        TtlExpired = 0,
        /// Fragment reassembly time exceeded.
        FragExpired = 1,
    }
}

/// Length of the ICMP header (type, code, checksum, 4 bytes of rest).
pub const HEADER_LEN: usize = 8;
/// How much of the offending datagram's payload an error quotes (RFC 792).
pub const QUOTED_PAYLOAD_LEN: usize = 8;

mod field {
    use crate::wire::{Field, Rest};

    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Field = 2..4;
    pub const ECHO_IDENT: Field = 4..6;
    pub const ECHO_SEQNO: Field = 6..8;
    pub const UNUSED: Field = 4..8;
    pub const MTU: Field = 6..8;
    pub const TYPE_CODE: Field = 0..2;
    pub const PAYLOAD: Rest = 8..;
}

/// A read/write view of an ICMPv4 message. The buffer is the IPv4 payload
/// (ending at the IP total length); the checksum covers all of it.
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

    /// Ensures the 8-byte header is present.
    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < HEADER_LEN {
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

    /// Message type.
    pub fn msg_type(&self) -> Message {
        Message::from(self.buffer.as_ref()[field::TYPE])
    }

    /// Message code.
    pub fn msg_code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    /// Checksum field.
    pub fn checksum(&self) -> u16 {
        self.u16_at(field::CHECKSUM)
    }

    /// Echo identifier (meaningful for echo request/reply).
    pub fn echo_ident(&self) -> u16 {
        self.u16_at(field::ECHO_IDENT)
    }

    /// Echo sequence number (meaningful for echo request/reply).
    pub fn echo_seq_no(&self) -> u16 {
        self.u16_at(field::ECHO_SEQNO)
    }

    /// Next-hop MTU of a "fragmentation needed" error (RFC 1191).
    pub fn next_hop_mtu(&self) -> u16 {
        self.u16_at(field::MTU)
    }

    /// Bytes after the 8-byte header (echo data, or the quoted datagram).
    pub fn data(&self) -> &[u8] {
        self.buffer.as_ref().get(field::PAYLOAD).unwrap_or(&[])
    }

    /// True when the checksum over the whole message verifies.
    pub fn verify_checksum(&self) -> bool {
        checksum::verifies(self.buffer.as_ref())
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn set_u16_at(&mut self, f: super::Field, v: u16) {
        self.buffer.as_mut()[f].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets the type.
    pub fn set_msg_type(&mut self, v: Message) {
        self.buffer.as_mut()[field::TYPE] = v.into();
    }

    /// Sets the code.
    pub fn set_msg_code(&mut self, v: u8) {
        self.buffer.as_mut()[field::CODE] = v;
    }

    /// Sets the checksum field.
    pub fn set_checksum(&mut self, v: u16) {
        self.set_u16_at(field::CHECKSUM, v)
    }

    /// Sets the echo identifier.
    pub fn set_echo_ident(&mut self, v: u16) {
        self.set_u16_at(field::ECHO_IDENT, v)
    }

    /// Sets the echo sequence number.
    pub fn set_echo_seq_no(&mut self, v: u16) {
        self.set_u16_at(field::ECHO_SEQNO, v)
    }

    /// Zeroes the 4 "rest of header" bytes.
    pub fn clear_rest(&mut self) {
        self.buffer.as_mut()[field::UNUSED].fill(0);
    }

    /// Sets the next-hop MTU of a "fragmentation needed" error.
    pub fn set_next_hop_mtu(&mut self, v: u16) {
        self.set_u16_at(field::MTU, v)
    }

    /// Bytes after the header, writable.
    pub fn data_mut(&mut self) -> &mut [u8] {
        self.buffer
            .as_mut()
            .get_mut(field::PAYLOAD)
            .unwrap_or(&mut [])
    }

    /// Recomputes the checksum over the whole message.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let ck = checksum::checksum(self.buffer.as_ref());
        self.set_checksum(ck);
    }

    /// Turns an echo request into an echo reply in place, patching the
    /// checksum incrementally (identifier, sequence and data are kept).
    pub fn echo_request_to_reply(&mut self) {
        let old = self.u16_at(field::TYPE_CODE);
        self.set_msg_type(Message::EchoReply);
        self.set_msg_code(0);
        let new = self.u16_at(field::TYPE_CODE);
        let ck = checksum::update(self.checksum(), old, new);
        self.set_checksum(ck);
    }
}

/// The part of an offending datagram an ICMP error quotes: its IP header
/// (options included) and the first 8 bytes of its payload, or less if the
/// payload is shorter.
pub fn quote<'a>(original: &Ipv4Packet<&'a [u8]>) -> &'a [u8] {
    let packet: &'a [u8] = original.clone().into_inner();
    let header_len = usize::from(original.header_len());
    let total = usize::from(original.total_len());
    let end = total.min(header_len + QUOTED_PAYLOAD_LEN).min(packet.len());
    packet.get(..end).unwrap_or(&[])
}

/// A parsed ICMP message of the kinds this node handles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Repr<'a> {
    /// Echo request.
    EchoRequest {
        /// Identifier.
        ident: u16,
        /// Sequence number.
        seq_no: u16,
        /// Data to echo back.
        data: &'a [u8],
    },
    /// Echo reply.
    EchoReply {
        /// Identifier.
        ident: u16,
        /// Sequence number.
        seq_no: u16,
        /// Echoed data.
        data: &'a [u8],
    },
    /// Destination unreachable.
    DstUnreachable {
        /// Why.
        reason: DstUnreachable,
        /// Next-hop MTU for `FragRequired`, else 0.
        mtu: u16,
        /// The quoted offending datagram (see [`quote`]).
        data: &'a [u8],
    },
    /// Time exceeded.
    TimeExceeded {
        /// Why.
        reason: TimeExceeded,
        /// The quoted offending datagram (see [`quote`]).
        data: &'a [u8],
    },
}

impl<'a> Repr<'a> {
    /// Reads a checked message; the checksum must verify. Other types are
    /// `Unsupported`.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Packet<&'a T>) -> Result<Repr<'a>> {
        packet.check_len()?;
        if !packet.verify_checksum() {
            return Err(Error::BadChecksum);
        }
        let data: &'a [u8] = packet.buffer.as_ref().get(field::PAYLOAD).unwrap_or(&[]);
        match (packet.msg_type(), packet.msg_code()) {
            (Message::EchoRequest, 0) => Ok(Repr::EchoRequest {
                ident: packet.echo_ident(),
                seq_no: packet.echo_seq_no(),
                data,
            }),
            (Message::EchoReply, 0) => Ok(Repr::EchoReply {
                ident: packet.echo_ident(),
                seq_no: packet.echo_seq_no(),
                data,
            }),
            (Message::DstUnreachable, code) => {
                let reason = DstUnreachable::from(code);
                let mtu = if reason == DstUnreachable::FragRequired {
                    packet.next_hop_mtu()
                } else {
                    0
                };
                Ok(Repr::DstUnreachable { reason, mtu, data })
            }
            (Message::TimeExceeded, code) => Ok(Repr::TimeExceeded {
                reason: TimeExceeded::from(code),
                data,
            }),
            _ => Err(Error::Unsupported),
        }
    }

    /// Message length [`Repr::emit`] writes.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN
            + match self {
                Repr::EchoRequest { data, .. }
                | Repr::EchoReply { data, .. }
                | Repr::DstUnreachable { data, .. }
                | Repr::TimeExceeded { data, .. } => data.len(),
            }
    }

    /// Writes the message and its checksum; the buffer must hold exactly
    /// [`Repr::buffer_len`] bytes (the checksum covers the whole buffer).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) -> Result<()> {
        if packet.buffer.as_ref().len() != self.buffer_len() {
            return Err(Error::Truncated);
        }
        packet.clear_rest();
        let data = match *self {
            Repr::EchoRequest {
                ident,
                seq_no,
                data,
            }
            | Repr::EchoReply {
                ident,
                seq_no,
                data,
            } => {
                let t = if matches!(self, Repr::EchoRequest { .. }) {
                    Message::EchoRequest
                } else {
                    Message::EchoReply
                };
                packet.set_msg_type(t);
                packet.set_msg_code(0);
                packet.set_echo_ident(ident);
                packet.set_echo_seq_no(seq_no);
                data
            }
            Repr::DstUnreachable { reason, mtu, data } => {
                packet.set_msg_type(Message::DstUnreachable);
                packet.set_msg_code(reason.into());
                packet.set_next_hop_mtu(mtu);
                data
            }
            Repr::TimeExceeded { reason, data } => {
                packet.set_msg_type(Message::TimeExceeded);
                packet.set_msg_code(reason.into());
                data
            }
        };
        packet.data_mut().copy_from_slice(data);
        packet.fill_checksum();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A real echo request payload (ping -c1, id 0x1c2b, seq 1, 8 data bytes).
    const ECHO: [u8; 16] = [
        0x08, 0x00, 0x00, 0x00, 0x1c, 0x2b, 0x00, 0x01, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67,
        0x68,
    ];

    fn echo() -> [u8; 16] {
        let mut b = ECHO;
        let ck = checksum::checksum(&b);
        b[2..4].copy_from_slice(&ck.to_be_bytes());
        b
    }

    #[test]
    fn parses_echo_request() {
        let b = echo();
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(
            Repr::parse(&p).unwrap(),
            Repr::EchoRequest {
                ident: 0x1c2b,
                seq_no: 1,
                data: b"abcdefgh"
            }
        );
    }

    #[test]
    fn bad_checksum_is_rejected() {
        let mut b = echo();
        b[9] ^= 0xff;
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(Repr::parse(&p).unwrap_err(), Error::BadChecksum);
        assert_eq!(Packet::new_checked(&b[..7]).unwrap_err(), Error::Truncated);
    }

    #[test]
    fn echo_request_to_reply_in_place_keeps_checksum_valid() {
        let mut b = echo();
        Packet::new_checked(&mut b[..])
            .unwrap()
            .echo_request_to_reply();
        let p = Packet::new_checked(&b[..]).unwrap();
        assert!(p.verify_checksum());
        assert_eq!(
            Repr::parse(&p).unwrap(),
            Repr::EchoReply {
                ident: 0x1c2b,
                seq_no: 1,
                data: b"abcdefgh"
            }
        );
    }

    #[test]
    fn errors_are_classified() {
        assert!(Message::DstUnreachable.is_error());
        assert!(Message::TimeExceeded.is_error());
        assert!(!Message::EchoRequest.is_error());
        assert!(!Message::Unknown(200).is_error());
    }

    #[test]
    fn quote_is_header_plus_eight_bytes() {
        let mut ip = [0u8; 60];
        ip[0] = 0x46; // 24-byte header
        ip[2..4].copy_from_slice(&60u16.to_be_bytes());
        let p = Ipv4Packet::new_checked(&ip[..]).unwrap();
        assert_eq!(quote(&p).len(), 32);
        ip[2..4].copy_from_slice(&28u16.to_be_bytes());
        let p = Ipv4Packet::new_checked(&ip[..]).unwrap();
        assert_eq!(quote(&p).len(), 28);
    }

    #[test]
    fn frag_needed_round_trips_with_mtu() {
        let quoted = [0x45u8; 28];
        let r = Repr::DstUnreachable {
            reason: DstUnreachable::FragRequired,
            mtu: 1400,
            data: &quoted,
        };
        let mut b = [0u8; 36];
        r.emit(&mut Packet::new_unchecked(&mut b[..])).unwrap();
        assert_eq!(&b[..2], &[3, 4]);
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(Repr::parse(&p).unwrap(), r);
    }
}
