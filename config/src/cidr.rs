//! IPv4 prefixes written as `a.b.c.d/len`.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An IPv4 address with a prefix length, as written in the configuration
/// (`"198.18.1.1/24"`).
///
/// On an interface it is the interface's address and its connected subnet,
/// so host bits are meaningful; as a route destination it names a network
/// and must be canonical (see [`Ipv4Cidr::is_canonical`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Cidr {
    /// The address as written (host bits included).
    pub addr: Ipv4Addr,
    /// The number of leading network bits, 0..=32.
    pub prefix_len: u8,
}

/// The largest prefix length of an IPv4 prefix.
pub const MAX_PREFIX_LEN: u8 = 32;

/// Why a string is not an IPv4 prefix; names the string and the accepted form.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not an IPv4 prefix; expected a.b.c.d/len with len 0..=32")]
pub struct CidrParseError {
    /// The rejected text.
    pub text: String,
}

impl Ipv4Cidr {
    /// Builds a prefix; `None` when `prefix_len` is above 32.
    pub const fn new(addr: Ipv4Addr, prefix_len: u8) -> Option<Self> {
        if prefix_len > MAX_PREFIX_LEN {
            None
        } else {
            Some(Self { addr, prefix_len })
        }
    }

    /// The prefix length clamped to 32, so that methods never panic on a
    /// hand-built value with an out-of-range length.
    fn len(&self) -> u32 {
        u32::from(self.prefix_len.min(MAX_PREFIX_LEN))
    }

    /// The netmask as a host-order integer.
    fn mask_bits(&self) -> u32 {
        match self.len() {
            0 => 0,
            n => u32::MAX << (32 - n),
        }
    }

    /// The subnet mask, e.g. 255.255.255.0 for a /24.
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.mask_bits())
    }

    /// The network address (host bits cleared).
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask_bits())
    }

    /// The directed broadcast address (host bits set).
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask_bits())
    }

    /// Whether `ip` lies inside this prefix's subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask_bits() == u32::from(self.network())
    }

    /// Whether the two subnets share at least one address.
    pub fn overlaps(&self, other: &Ipv4Cidr) -> bool {
        self.contains(other.network()) || other.contains(self.network())
    }

    /// The same prefix with the host bits cleared (`198.18.1.1/24` ->
    /// `198.18.1.0/24`).
    pub fn trunc(&self) -> Ipv4Cidr {
        Ipv4Cidr {
            addr: self.network(),
            prefix_len: self.len() as u8,
        }
    }

    /// Whether no host bit is set, as required for a route destination.
    pub fn is_canonical(&self) -> bool {
        self.addr == self.network()
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = CidrParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = || CidrParseError {
            text: text.to_owned(),
        };
        let (addr, len) = text.split_once('/').ok_or_else(err)?;
        // `u8::from_str` would accept "+24"; only plain decimal digits are a
        // prefix length.
        if len.is_empty() || len.len() > 2 || !len.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        let prefix_len: u8 = len.parse().map_err(|_| err())?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| err())?;
        Ipv4Cidr::new(addr, prefix_len).ok_or_else(err)
    }
}

impl Serialize for Ipv4Cidr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ipv4Cidr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_displays_the_written_form() {
        let c = cidr("198.18.1.1/24");
        assert_eq!(c.addr, Ipv4Addr::new(198, 18, 1, 1));
        assert_eq!(c.prefix_len, 24);
        assert_eq!(c.to_string(), "198.18.1.1/24");
        assert_eq!(cidr("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert_eq!(cidr("198.18.2.7/32").prefix_len, 32);
    }

    #[test]
    fn rejects_malformed_prefixes_naming_the_text_and_the_form() {
        for bad in [
            "198.18.1.300/24",
            "198.18.1.1",
            "198.18.1.1/33",
            "198.18.1.1/",
            "198.18.1.1/+4",
            "198.18.1.1/024",
            "198.18.1/24",
            "198.18.01.1/24",
            " 198.18.1.1/24",
            "",
        ] {
            let err = bad.parse::<Ipv4Cidr>().unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(&format!("{bad:?}")), "{msg}");
            assert!(
                msg.contains("expected a.b.c.d/len with len 0..=32"),
                "{msg}"
            );
        }
    }

    #[test]
    fn computes_network_netmask_and_broadcast() {
        let c = cidr("198.18.1.77/24");
        assert_eq!(c.network(), Ipv4Addr::new(198, 18, 1, 0));
        assert_eq!(c.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(c.broadcast(), Ipv4Addr::new(198, 18, 1, 255));
        let all = cidr("198.18.1.77/0");
        assert_eq!(all.network(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(all.netmask(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(all.broadcast(), Ipv4Addr::BROADCAST);
        let host = cidr("198.18.1.77/32");
        assert_eq!(host.network(), host.addr);
        assert_eq!(host.broadcast(), host.addr);
        assert_eq!(host.netmask(), Ipv4Addr::BROADCAST);
        let odd = cidr("198.19.255.255/15");
        assert_eq!(odd.network(), Ipv4Addr::new(198, 18, 0, 0));
        assert_eq!(odd.netmask(), Ipv4Addr::new(255, 254, 0, 0));
    }

    #[test]
    fn contains_checks_subnet_membership() {
        let c = cidr("198.18.1.1/24");
        assert!(c.contains(Ipv4Addr::new(198, 18, 1, 254)));
        assert!(c.contains(Ipv4Addr::new(198, 18, 1, 0)));
        assert!(!c.contains(Ipv4Addr::new(198, 18, 2, 1)));
        assert!(cidr("0.0.0.0/0").contains(Ipv4Addr::new(198, 19, 9, 9)));
        assert!(cidr("198.18.1.1/32").contains(Ipv4Addr::new(198, 18, 1, 1)));
        assert!(!cidr("198.18.1.1/32").contains(Ipv4Addr::new(198, 18, 1, 2)));
    }

    #[test]
    fn overlap_trunc_and_canonical_form() {
        assert!(cidr("198.18.0.0/16").overlaps(&cidr("198.18.5.1/24")));
        assert!(cidr("198.18.5.1/24").overlaps(&cidr("198.18.0.0/16")));
        assert!(!cidr("198.18.1.1/24").overlaps(&cidr("198.18.2.1/24")));
        assert_eq!(cidr("198.18.1.9/24").trunc(), cidr("198.18.1.0/24"));
        assert!(cidr("198.18.1.0/24").is_canonical());
        assert!(!cidr("198.18.1.9/24").is_canonical());
    }

    #[test]
    fn hand_built_out_of_range_length_does_not_panic() {
        assert!(Ipv4Cidr::new(Ipv4Addr::LOCALHOST, 33).is_none());
        let c = Ipv4Cidr {
            addr: Ipv4Addr::new(198, 18, 1, 1),
            prefix_len: 40,
        };
        assert_eq!(c.netmask(), Ipv4Addr::BROADCAST);
        assert!(c.contains(c.addr));
    }
}
