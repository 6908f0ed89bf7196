//! TCP segments (RFC 9293): checked view, options (RFC 9293, RFC 7323,
//! RFC 2018), checksum over the IPv4 pseudo-header, and the incremental
//! checksum updates NAT needs (RFC 1624).
//!
//! The pseudo-header helpers [`pseudo_header`] and [`update_for_addr`] are
//! shared with UDP.

use std::net::Ipv4Addr;

use super::{checksum, Error, Result};

/// Length of a header without options.
pub const MIN_HEADER_LEN: usize = 20;
/// Largest header (data offset 15).
pub const MAX_HEADER_LEN: usize = 60;
/// Largest window shift a receiver honours (RFC 7323 2.3: larger values are
/// taken as 14).
pub const MAX_WINDOW_SHIFT: u8 = 14;

/// The flag bits of the flags byte (the same values as
/// [`crate::flow::tcp_flags`]).
pub mod flags {
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

mod field {
    use crate::wire::Field;

    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    pub const SEQ_NUM: Field = 4..8;
    pub const ACK_NUM: Field = 8..12;
    pub const DATA_OFF: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WINDOW: Field = 14..16;
    pub const CHECKSUM: Field = 16..18;
    pub const URGENT: Field = 18..20;
    pub const OPTIONS_START: usize = 20;
}

mod opt {
    pub const END: u8 = 0;
    pub const NOP: u8 = 1;
    pub const MSS: u8 = 2;
    pub const WS: u8 = 3;
    pub const SACK_PERM: u8 = 4;
    pub const SACK: u8 = 5;
    pub const TSTAMP: u8 = 8;
}

/// One's-complement sum of the IPv4 pseudo-header (RFC 9293 3.1, RFC 768)
/// for a transport message of `length` bytes.
pub fn pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, length: u16) -> u16 {
    let (s, d) = (src.octets(), dst.octets());
    checksum::combine(&[
        u16::from_be_bytes([s[0], s[1]]),
        u16::from_be_bytes([s[2], s[3]]),
        u16::from_be_bytes([d[0], d[1]]),
        u16::from_be_bytes([d[2], d[3]]),
        u16::from(protocol),
        length,
    ])
}

/// New transport checksum after an address of the pseudo-header changed
/// from `old` to `new` (source or destination NAT), RFC 1624 eq. 3 applied
/// to both 16-bit halves.
pub fn update_for_addr(old_checksum: u16, old: Ipv4Addr, new: Ipv4Addr) -> u16 {
    let (o, n) = (old.octets(), new.octets());
    !checksum::combine(&[
        !old_checksum,
        !u16::from_be_bytes([o[0], o[1]]),
        !u16::from_be_bytes([o[2], o[3]]),
        u16::from_be_bytes([n[0], n[1]]),
        u16::from_be_bytes([n[2], n[3]]),
    ])
}

/// A read/write view of a TCP segment. The buffer is the IPv4 payload
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

    /// Ensures every accessor stays in bounds:
    /// - the buffer holds 20 bytes (`Truncated`),
    /// - the data offset is at least 5 words (`BadHeaderLen`),
    /// - the buffer holds the whole header, options included (`Truncated`).
    ///
    /// The options are not checked here (see [`Packet::options`]).
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

    fn u32_at(&self, f: super::Field) -> u32 {
        let d = &self.buffer.as_ref()[f];
        u32::from_be_bytes([d[0], d[1], d[2], d[3]])
    }

    /// Source port.
    pub fn src_port(&self) -> u16 {
        self.u16_at(field::SRC_PORT)
    }

    /// Destination port.
    pub fn dst_port(&self) -> u16 {
        self.u16_at(field::DST_PORT)
    }

    /// Sequence number.
    pub fn seq_number(&self) -> u32 {
        self.u32_at(field::SEQ_NUM)
    }

    /// Acknowledgement number (meaningful with ACK).
    pub fn ack_number(&self) -> u32 {
        self.u32_at(field::ACK_NUM)
    }

    /// Header length in bytes (data offset * 4), options included.
    pub fn header_len(&self) -> u8 {
        (self.buffer.as_ref()[field::DATA_OFF] >> 4) * 4
    }

    /// The flags byte (CWR ECE URG ACK PSH RST SYN FIN, see [`flags`]).
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// SYN flag.
    pub fn syn(&self) -> bool {
        self.flags() & flags::SYN != 0
    }

    /// ACK flag.
    pub fn ack(&self) -> bool {
        self.flags() & flags::ACK != 0
    }

    /// FIN flag.
    pub fn fin(&self) -> bool {
        self.flags() & flags::FIN != 0
    }

    /// RST flag.
    pub fn rst(&self) -> bool {
        self.flags() & flags::RST != 0
    }

    /// Advertised window (unscaled).
    pub fn window_len(&self) -> u16 {
        self.u16_at(field::WINDOW)
    }

    /// Checksum field.
    pub fn checksum(&self) -> u16 {
        self.u16_at(field::CHECKSUM)
    }

    /// Urgent pointer (meaningful with URG).
    pub fn urgent_at(&self) -> u16 {
        self.u16_at(field::URGENT)
    }

    /// The raw option bytes (between byte 20 and the data offset).
    pub fn options_bytes(&self) -> &[u8] {
        self.buffer
            .as_ref()
            .get(field::OPTIONS_START..usize::from(self.header_len()))
            .unwrap_or(&[])
    }

    /// The options, in order; a malformed option ends the walk with
    /// `Err(Malformed)`.
    pub fn options(&self) -> Options<'_> {
        Options::new(self.options_bytes())
    }

    /// The payload, after the options.
    pub fn payload(&self) -> &[u8] {
        self.buffer
            .as_ref()
            .get(usize::from(self.header_len())..)
            .unwrap_or(&[])
    }

    /// True when the checksum over the pseudo-header and the whole segment
    /// verifies. A segment longer than 65535 bytes never verifies.
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        let data = self.buffer.as_ref();
        let Ok(len) = u16::try_from(data.len()) else {
            return false;
        };
        let pseudo = pseudo_header(src, dst, super::ipv4::Protocol::Tcp.into(), len);
        checksum::combine(&[pseudo, checksum::data(data)]) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn set_u16_at(&mut self, f: super::Field, v: u16) {
        self.buffer.as_mut()[f].copy_from_slice(&v.to_be_bytes());
    }

    fn set_u32_at(&mut self, f: super::Field, v: u32) {
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

    /// Sets the sequence number.
    pub fn set_seq_number(&mut self, v: u32) {
        self.set_u32_at(field::SEQ_NUM, v)
    }

    /// Sets the acknowledgement number.
    pub fn set_ack_number(&mut self, v: u32) {
        self.set_u32_at(field::ACK_NUM, v)
    }

    /// Sets the header length in bytes (a multiple of 4 up to 60); the
    /// reserved bits are cleared.
    pub fn set_header_len(&mut self, v: u8) {
        self.buffer.as_mut()[field::DATA_OFF] = ((v / 4) & 0x0f) << 4;
    }

    /// Sets the flags byte.
    pub fn set_flags(&mut self, v: u8) {
        self.buffer.as_mut()[field::FLAGS] = v;
    }

    /// Sets the window.
    pub fn set_window_len(&mut self, v: u16) {
        self.set_u16_at(field::WINDOW, v)
    }

    /// Sets the checksum field.
    pub fn set_checksum(&mut self, v: u16) {
        self.set_u16_at(field::CHECKSUM, v)
    }

    /// Sets the urgent pointer.
    pub fn set_urgent_at(&mut self, v: u16) {
        self.set_u16_at(field::URGENT, v)
    }

    /// The option bytes, writable.
    pub fn options_bytes_mut(&mut self) -> &mut [u8] {
        let end = usize::from(self.header_len());
        self.buffer
            .as_mut()
            .get_mut(field::OPTIONS_START..end)
            .unwrap_or(&mut [])
    }

    /// The payload, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = usize::from(self.header_len());
        self.buffer.as_mut().get_mut(start..).unwrap_or(&mut [])
    }

    /// Recomputes the checksum over the pseudo-header and the whole buffer.
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let data = self.buffer.as_ref();
        let len = u16::try_from(data.len()).unwrap_or(u16::MAX);
        let pseudo = pseudo_header(src, dst, super::ipv4::Protocol::Tcp.into(), len);
        let ck = !checksum::combine(&[pseudo, checksum::data(data)]);
        self.set_checksum(ck);
    }

    /// Rewrites the source port and patches the checksum (RFC 1624).
    pub fn rewrite_src_port(&mut self, v: u16) {
        let ck = checksum::update(self.checksum(), self.src_port(), v);
        self.set_src_port(v);
        self.set_checksum(ck);
    }

    /// Rewrites the destination port and patches the checksum (RFC 1624).
    pub fn rewrite_dst_port(&mut self, v: u16) {
        let ck = checksum::update(self.checksum(), self.dst_port(), v);
        self.set_dst_port(v);
        self.set_checksum(ck);
    }

    /// Patches the checksum for an IPv4 address change of the pseudo-header
    /// (the caller rewrites the IP header itself).
    pub fn update_checksum_for_addr(&mut self, old: Ipv4Addr, new: Ipv4Addr) {
        let ck = update_for_addr(self.checksum(), old, new);
        self.set_checksum(ck);
    }
}

/// One TCP option.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpOption<'a> {
    /// End of option list (kind 0): the walk stops after it.
    EndOfList,
    /// No-operation padding (kind 1).
    NoOperation,
    /// Maximum segment size (kind 2).
    MaxSegmentSize(u16),
    /// Window scale shift count (kind 3), as sent (may exceed
    /// [`MAX_WINDOW_SHIFT`]).
    WindowScale(u8),
    /// SACK permitted (kind 4).
    SackPermitted,
    /// SACK blocks (kind 5): up to 4 `(left, right)` edges.
    SackRange([Option<(u32, u32)>; 4]),
    /// Timestamps (kind 8).
    Timestamp {
        /// TSval.
        tsval: u32,
        /// TSecr.
        tsecr: u32,
    },
    /// Any other kind, with its data (after kind and length).
    Unknown {
        /// Option kind.
        kind: u8,
        /// Option data.
        data: &'a [u8],
    },
}

/// Iterator over the options of a header. Yields `Err(Malformed)` once (and
/// then stops) on an option whose length is below 2, runs past the header,
/// or does not match its kind.
#[derive(Clone, Debug)]
pub struct Options<'a> {
    rest: &'a [u8],
}

impl<'a> Options<'a> {
    /// Walks raw option bytes.
    pub fn new(bytes: &'a [u8]) -> Options<'a> {
        Options { rest: bytes }
    }
}

impl<'a> Iterator for Options<'a> {
    type Item = Result<TcpOption<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        let (&kind, after_kind) = self.rest.split_first()?;
        match kind {
            opt::END => {
                self.rest = &[];
                return Some(Ok(TcpOption::EndOfList));
            }
            opt::NOP => {
                self.rest = after_kind;
                return Some(Ok(TcpOption::NoOperation));
            }
            _ => {}
        }
        let malformed = |s: &mut Self| {
            s.rest = &[];
            Some(Err(Error::Malformed))
        };
        let Some(&len) = after_kind.first() else {
            return malformed(self);
        };
        let len = usize::from(len);
        let (Some(whole), Some(rest)) = (self.rest.get(..len), self.rest.get(len..)) else {
            return malformed(self);
        };
        if len < 2 {
            return malformed(self);
        }
        let data = &whole[2..];
        let option = match (kind, data.len()) {
            (opt::MSS, 2) => TcpOption::MaxSegmentSize(u16::from_be_bytes([data[0], data[1]])),
            (opt::WS, 1) => TcpOption::WindowScale(data[0]),
            (opt::SACK_PERM, 0) => TcpOption::SackPermitted,
            (opt::SACK, n) if n % 8 == 0 && (8..=32).contains(&n) => {
                let mut blocks = [None; 4];
                for (slot, b) in blocks.iter_mut().zip(data.chunks_exact(8)) {
                    let left = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                    let right = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
                    *slot = Some((left, right));
                }
                TcpOption::SackRange(blocks)
            }
            (opt::TSTAMP, 8) => TcpOption::Timestamp {
                tsval: u32::from_be_bytes([data[0], data[1], data[2], data[3]]),
                tsecr: u32::from_be_bytes([data[4], data[5], data[6], data[7]]),
            },
            (opt::MSS | opt::WS | opt::SACK_PERM | opt::SACK | opt::TSTAMP, _) => {
                return malformed(self)
            }
            (kind, _) => TcpOption::Unknown { kind, data },
        };
        self.rest = rest;
        Some(Ok(option))
    }
}

impl TcpOption<'_> {
    /// Bytes this option takes in a header.
    pub fn buffer_len(&self) -> usize {
        match self {
            TcpOption::EndOfList | TcpOption::NoOperation => 1,
            TcpOption::MaxSegmentSize(_) => 4,
            TcpOption::WindowScale(_) => 3,
            TcpOption::SackPermitted => 2,
            TcpOption::SackRange(blocks) => 2 + 8 * blocks.iter().flatten().count(),
            TcpOption::Timestamp { .. } => 10,
            TcpOption::Unknown { data, .. } => 2 + data.len(),
        }
    }

    /// Writes the option at the start of `buf`; returns the bytes written,
    /// or `Truncated` if it does not fit (or an unknown option's data is
    /// longer than 253 bytes).
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        let len = self.buffer_len();
        let out = buf.get_mut(..len).ok_or(Error::Truncated)?;
        let len_byte = u8::try_from(len).map_err(|_| Error::Truncated)?;
        match *self {
            TcpOption::EndOfList => out[0] = opt::END,
            TcpOption::NoOperation => out[0] = opt::NOP,
            TcpOption::MaxSegmentSize(mss) => {
                out[..2].copy_from_slice(&[opt::MSS, len_byte]);
                out[2..].copy_from_slice(&mss.to_be_bytes());
            }
            TcpOption::WindowScale(shift) => out.copy_from_slice(&[opt::WS, len_byte, shift]),
            TcpOption::SackPermitted => out.copy_from_slice(&[opt::SACK_PERM, len_byte]),
            TcpOption::SackRange(blocks) => {
                out[..2].copy_from_slice(&[opt::SACK, len_byte]);
                for (dst, (left, right)) in
                    out[2..].chunks_exact_mut(8).zip(blocks.iter().flatten())
                {
                    dst[..4].copy_from_slice(&left.to_be_bytes());
                    dst[4..].copy_from_slice(&right.to_be_bytes());
                }
            }
            TcpOption::Timestamp { tsval, tsecr } => {
                out[..2].copy_from_slice(&[opt::TSTAMP, len_byte]);
                out[2..6].copy_from_slice(&tsval.to_be_bytes());
                out[6..].copy_from_slice(&tsecr.to_be_bytes());
            }
            TcpOption::Unknown { kind, data } => {
                out[..2].copy_from_slice(&[kind, len_byte]);
                out[2..].copy_from_slice(data);
            }
        }
        Ok(len)
    }
}

/// A parsed TCP header with the options connection tracking uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Repr {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Sequence number.
    pub seq_number: u32,
    /// Acknowledgement number.
    pub ack_number: u32,
    /// Flags byte ([`flags`]).
    pub flags: u8,
    /// Advertised window (unscaled).
    pub window_len: u16,
    /// Maximum segment size option.
    pub max_seg_size: Option<u16>,
    /// Window scale option, clamped to [`MAX_WINDOW_SHIFT`].
    pub window_scale: Option<u8>,
    /// SACK-permitted option.
    pub sack_permitted: bool,
    /// Timestamps option `(tsval, tsecr)`.
    pub timestamp: Option<(u32, u32)>,
    /// Bytes after the header.
    pub payload_len: usize,
}

impl Repr {
    /// Reads a checked segment: every option must be well formed
    /// (`Malformed`), and when `verify_checksum` the checksum over the
    /// pseudo-header of `src -> dst` must verify (`BadChecksum`).
    pub fn parse<T: AsRef<[u8]>>(
        packet: &Packet<T>,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        verify_checksum: bool,
    ) -> Result<Repr> {
        packet.check_len()?;
        let mut repr = Repr {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            seq_number: packet.seq_number(),
            ack_number: packet.ack_number(),
            flags: packet.flags(),
            window_len: packet.window_len(),
            payload_len: packet.payload().len(),
            ..Repr::default()
        };
        for option in packet.options() {
            match option? {
                TcpOption::MaxSegmentSize(mss) => repr.max_seg_size = Some(mss),
                TcpOption::WindowScale(shift) => {
                    repr.window_scale = Some(shift.min(MAX_WINDOW_SHIFT))
                }
                TcpOption::SackPermitted => repr.sack_permitted = true,
                TcpOption::Timestamp { tsval, tsecr } => repr.timestamp = Some((tsval, tsecr)),
                _ => {}
            }
        }
        if verify_checksum && !packet.verify_checksum(src, dst) {
            return Err(Error::BadChecksum);
        }
        Ok(repr)
    }

    /// Options [`Repr::emit`] writes, in the order Linux sends them on a SYN.
    fn emitted_options(&self) -> [Option<TcpOption<'static>>; 5] {
        [
            self.max_seg_size.map(TcpOption::MaxSegmentSize),
            self.sack_permitted.then_some(TcpOption::SackPermitted),
            self.timestamp
                .map(|(tsval, tsecr)| TcpOption::Timestamp { tsval, tsecr }),
            self.window_scale.map(|_| TcpOption::NoOperation),
            self.window_scale.map(TcpOption::WindowScale),
        ]
    }

    /// Header length [`Repr::emit`] writes: 20 bytes plus the options,
    /// padded to a multiple of 4.
    pub fn header_len(&self) -> usize {
        let options: usize = self
            .emitted_options()
            .iter()
            .flatten()
            .map(TcpOption::buffer_len)
            .sum();
        MIN_HEADER_LEN + options.div_ceil(4) * 4
    }

    /// Header plus payload length.
    pub fn buffer_len(&self) -> usize {
        self.header_len() + self.payload_len
    }

    /// Writes the header and options (NOP padded), then the checksum over
    /// the whole buffer: the buffer must be exactly [`Repr::buffer_len`]
    /// bytes with the payload already in place after the header.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut Packet<T>,
        src: Ipv4Addr,
        dst: Ipv4Addr,
    ) -> Result<()> {
        if packet.buffer.as_ref().len() != self.buffer_len() {
            return Err(Error::Truncated);
        }
        let header_len = self.header_len();
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_seq_number(self.seq_number);
        packet.set_ack_number(self.ack_number);
        packet.set_header_len(header_len as u8);
        packet.set_flags(self.flags);
        packet.set_window_len(self.window_len);
        packet.set_urgent_at(0);
        let options = packet.options_bytes_mut();
        options.fill(opt::NOP);
        let mut at = 0;
        for option in self.emitted_options().iter().flatten() {
            at += option.emit(options.get_mut(at..).unwrap_or(&mut []))?;
        }
        packet.fill_checksum(src, dst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 10);
    const DST: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 10);

    /// A Linux 6.x SYN, 198.18.1.10:40000 -> 198.18.2.10:80 (mss 1460,
    /// sackOK, TS val 0x11223344 ecr 0, nop, wscale 7), checksum computed
    /// independently (Python).
    const LINUX_SYN: &str = "9c400050 12345678 00000000 a002faf0 74330000
                             020405b4 0402080a 11223344 00000000 01030307";

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn parses_a_linux_syn_with_its_options() {
        let b = hex(LINUX_SYN);
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!((p.src_port(), p.dst_port()), (40000, 80));
        assert_eq!(p.seq_number(), 0x1234_5678);
        assert_eq!(p.header_len(), 40);
        assert_eq!(p.flags(), flags::SYN);
        assert!(p.syn() && !p.ack() && !p.fin() && !p.rst());
        assert_eq!(p.window_len(), 64240);
        assert!(p.verify_checksum(SRC, DST));
        assert!(!p.verify_checksum(DST, Ipv4Addr::new(198, 18, 2, 11)));
        let options: Vec<_> = p.options().collect::<Result<_>>().unwrap();
        assert_eq!(
            options,
            [
                TcpOption::MaxSegmentSize(1460),
                TcpOption::SackPermitted,
                TcpOption::Timestamp {
                    tsval: 0x1122_3344,
                    tsecr: 0
                },
                TcpOption::NoOperation,
                TcpOption::WindowScale(7),
            ]
        );
        let r = Repr::parse(&p, SRC, DST, true).unwrap();
        assert_eq!(r.max_seg_size, Some(1460));
        assert_eq!(r.window_scale, Some(7));
        assert!(r.sack_permitted);
        assert_eq!(r.timestamp, Some((0x1122_3344, 0)));
        assert_eq!(r.payload_len, 0);
    }

    #[test]
    fn repr_emit_reproduces_the_linux_syn() {
        let b = hex(LINUX_SYN);
        let r = Repr::parse(&Packet::new_checked(&b[..]).unwrap(), SRC, DST, true).unwrap();
        let mut out = vec![0u8; r.buffer_len()];
        r.emit(&mut Packet::new_unchecked(&mut out[..]), SRC, DST)
            .unwrap();
        assert_eq!(out, b);
    }

    #[test]
    fn length_errors_are_distinguished() {
        let b = hex(LINUX_SYN);
        assert_eq!(Packet::new_checked(&b[..19]).unwrap_err(), Error::Truncated);
        assert_eq!(Packet::new_checked(&b[..39]).unwrap_err(), Error::Truncated);
        let mut off4 = b.clone();
        off4[12] = 0x40;
        assert_eq!(
            Packet::new_checked(&off4[..]).unwrap_err(),
            Error::BadHeaderLen
        );
        let mut off15 = b;
        off15[12] = 0xf0;
        assert_eq!(
            Packet::new_checked(&off15[..]).unwrap_err(),
            Error::Truncated
        );
    }

    #[test]
    fn sack_blocks_are_read() {
        let opts = [1, 1, 5, 18, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4];
        let got: Vec<_> = Options::new(&opts).collect::<Result<_>>().unwrap();
        assert_eq!(
            got[2],
            TcpOption::SackRange([Some((1, 2)), Some((3, 4)), None, None])
        );
    }

    #[test]
    fn end_of_list_stops_the_walk_and_unknown_kinds_are_kept() {
        let opts = [30, 4, 0xaa, 0xbb, 0, 0xff, 0xff, 0xff];
        let got: Vec<_> = Options::new(&opts).collect::<Result<_>>().unwrap();
        assert_eq!(
            got,
            [
                TcpOption::Unknown {
                    kind: 30,
                    data: &[0xaa, 0xbb]
                },
                TcpOption::EndOfList
            ]
        );
    }

    #[test]
    fn malformed_options_are_an_error_not_a_panic() {
        let cases: [&[u8]; 9] = [
            &[2],                // kind without length
            &[2, 4, 5],          // runs past the header
            &[2, 1, 0, 0],       // length below 2
            &[30, 0],            // length 0
            &[2, 3, 5],          // MSS of the wrong length
            &[3, 4, 7, 0],       // window scale of the wrong length
            &[4, 3, 0],          // SACK-permitted with data
            &[5, 6, 0, 0, 0, 0], // SACK block not a multiple of 8
            &[8, 9, 0, 0, 0, 0, 0, 0, 0],
        ];
        for opts in cases {
            let got: Vec<_> = Options::new(opts).collect();
            assert_eq!(got.last(), Some(&Err(Error::Malformed)), "{opts:?}");
            assert_eq!(got.iter().filter(|o| o.is_err()).count(), 1);
        }
    }

    #[test]
    fn window_scale_above_14_is_clamped() {
        let r = Repr {
            src_port: 1,
            dst_port: 2,
            flags: flags::SYN,
            window_scale: Some(15),
            ..Repr::default()
        };
        let mut b = vec![0u8; r.buffer_len()];
        r.emit(&mut Packet::new_unchecked(&mut b[..]), SRC, DST)
            .unwrap();
        let p = Packet::new_checked(&b[..]).unwrap();
        assert!(p.options().any(|o| o == Ok(TcpOption::WindowScale(15))));
        let back = Repr::parse(&p, SRC, DST, true).unwrap();
        assert_eq!(back.window_scale, Some(MAX_WINDOW_SHIFT));
    }

    #[test]
    fn bad_checksum_is_reported_only_when_asked() {
        let mut b = hex(LINUX_SYN);
        b[4] ^= 1;
        let p = Packet::new_checked(&b[..]).unwrap();
        assert_eq!(
            Repr::parse(&p, SRC, DST, true).unwrap_err(),
            Error::BadChecksum
        );
        assert!(Repr::parse(&p, SRC, DST, false).is_ok());
    }

    #[test]
    fn port_and_address_rewrites_keep_the_checksum_valid() {
        let mut b = hex(LINUX_SYN);
        b.extend_from_slice(b"hello");
        let mut p = Packet::new_checked(&mut b[..]).unwrap();
        p.fill_checksum(SRC, DST);
        p.rewrite_src_port(1024);
        p.rewrite_dst_port(8080);
        let nat = Ipv4Addr::new(203, 0, 113, 7);
        p.update_checksum_for_addr(SRC, nat);
        assert_eq!((p.src_port(), p.dst_port()), (1024, 8080));
        assert!(p.verify_checksum(nat, DST));
        assert!(!p.verify_checksum(SRC, DST));
    }
}
