//! Wire formats: zero-copy views and plain representations of the protocols
//! the routed node speaks (Ethernet II with 802.1Q recognition, ARP for
//! Ethernet/IPv4, IPv4, ICMPv4), the transport headers the firewall tracks
//! (TCP, UDP, GRE, ESP, SCTP) and the internet checksum.
//!
//! Every protocol follows one pattern:
//! - a `Packet<T: AsRef<[u8]>>` (or `Frame`) view over a buffer, with all
//!   field offsets in a private `field` module. `new_checked` validates the
//!   lengths once; after that no accessor can panic, whatever the bytes are.
//!   `new_unchecked` skips the check and is for buffers the caller built.
//! - a `Repr` with `parse` (view -> plain values, semantic checks such as
//!   versions and checksums) and `emit` (plain values -> bytes).
//!
//! Nothing here allocates, reads a clock or touches I/O.

pub mod arp;
pub mod checksum;
pub mod esp;
pub mod ethernet;
pub mod gre;
pub mod icmp;
pub mod ipv4;
pub mod sctp;
pub mod tcp;
pub mod udp;

pub use arp::{Operation as ArpOperation, Packet as ArpPacket, Repr as ArpRepr};
pub use esp::{Packet as EspPacket, Repr as EspRepr};
pub use ethernet::{
    Address as EthernetAddress, EtherType, Frame as EthernetFrame, Repr as EthernetRepr,
};
pub use gre::{Packet as GrePacket, Repr as GreRepr};
pub use icmp::{
    DstUnreachable as IcmpDstUnreachable, Message as IcmpMessage, Packet as IcmpPacket,
    Repr as IcmpRepr, TimeExceeded as IcmpTimeExceeded,
};
pub use ipv4::{Packet as Ipv4Packet, Protocol as IpProtocol, Repr as Ipv4Repr};
pub use sctp::{Packet as SctpPacket, Repr as SctpRepr};
pub use tcp::{Packet as TcpPacket, Repr as TcpRepr, TcpOption};
pub use udp::{Packet as UdpPacket, Repr as UdpRepr};

use core::fmt;

/// A byte range of a header field.
type Field = core::ops::Range<usize>;
/// The remainder of a buffer from a given offset.
type Rest = core::ops::RangeFrom<usize>;

/// Why a buffer could not be viewed or parsed as a protocol message.
///
/// The variants are distinct so the router can count each kind of bad
/// packet under its own drop reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Error {
    /// The buffer is shorter than the header (or than the length the header
    /// itself announces).
    Truncated,
    /// The IP version field is not the expected one.
    BadVersion,
    /// The IPv4 header length field (or the TCP data offset) is below the
    /// 20-byte minimum.
    BadHeaderLen,
    /// The IPv4 total length (or the UDP length) is smaller than its own
    /// header.
    BadTotalLen,
    /// A checksum does not verify.
    BadChecksum,
    /// A field holds a value its protocol forbids (a TCP option whose
    /// length does not fit, ESP SPI 0, a chunk length past the packet, ...).
    Malformed,
    /// Well-formed but of a kind this node does not handle (e.g. ARP for a
    /// non-Ethernet or non-IPv4 network, an ICMP type we do not parse).
    Unsupported,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Error::Truncated => "truncated packet",
            Error::BadVersion => "wrong IP version",
            Error::BadHeaderLen => "header length (IPv4 IHL, TCP data offset) below 20 bytes",
            Error::BadTotalLen => "IPv4 total length smaller than its header",
            Error::BadChecksum => "checksum mismatch",
            Error::Malformed => "malformed header field",
            Error::Unsupported => "unsupported packet kind",
        };
        f.write_str(s)
    }
}

impl std::error::Error for Error {}

/// Result of wire-level parsing.
pub type Result<T> = core::result::Result<T, Error>;

/// Declares a `u8`/`u16`-backed protocol enum with an `Unknown` catch-all and
/// lossless conversions both ways.
macro_rules! enum_with_unknown {
    (
        $( #[$enum_attr:meta] )*
        pub enum $name:ident($ty:ty) {
            $(
              $( #[$variant_attr:meta] )*
              $variant:ident = $value:expr
            ),+ $(,)?
        }
    ) => {
        $( #[$enum_attr] )*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $(
              $( #[$variant_attr] )*
              $variant
            ),*,
            /// A value this implementation has no name for.
            Unknown($ty)
        }

        impl ::core::convert::From<$ty> for $name {
            fn from(value: $ty) -> Self {
                match value {
                    $( $value => $name::$variant ),*,
                    other => $name::Unknown(other)
                }
            }
        }

        impl ::core::convert::From<$name> for $ty {
            fn from(value: $name) -> Self {
                match value {
                    $( $name::$variant => $value ),*,
                    $name::Unknown(other) => other
                }
            }
        }
    }
}
pub(crate) use enum_with_unknown;
