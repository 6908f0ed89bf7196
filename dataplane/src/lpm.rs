//! IPv4 longest-prefix match: the routing table the router consults per packet.
//!
//! Structure: one hash map per prefix length (0..=32), keyed by the prefix's
//! significant bits, plus a 33-bit mask of the lengths that hold at least
//! one route. A lookup walks the non-empty lengths from longest to shortest
//! and probes one map each, so its cost is one hash probe per distinct
//! prefix length in use (a firewall's table typically has 3-6), with no
//! allocation and no pointer chasing through a trie.
//!
//! Why not DIR-24-8: it answers in one or two memory reads, but its first
//! level alone is 16M entries (32-64 MiB per table, rebuilt whenever the
//! table changes), which is wasted on tables of tens of routes and heavy
//! for the lab (two nodes on one 2-core machine). If full Internet tables
//! ever matter, DIR-24-8 can replace this behind the same API.
//!
//! The table is built off the hot path and then shared read-only (`&self`
//! lookups); a changed table is a new table published to the workers.

use core::fmt;
use core::hash::{BuildHasherDefault, Hasher};
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

/// Where packets to a prefix go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// Output port.
    pub port: u16,
    /// The gateway to hand packets to; `None` for a connected route, where
    /// packets are delivered to their destination address itself.
    pub next_hop: Option<Ipv4Addr>,
}

/// Why a route could not be inserted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LpmError {
    /// The prefix length is above 32.
    InvalidPrefixLength(u8),
    /// The address has bits set beyond the prefix length.
    HostBitsSet {
        /// The address given.
        prefix: Ipv4Addr,
        /// The prefix length given.
        len: u8,
    },
    /// A route for exactly this prefix exists already.
    Exists {
        /// The prefix.
        prefix: Ipv4Addr,
        /// Its length.
        len: u8,
    },
}

impl fmt::Display for LpmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LpmError::InvalidPrefixLength(len) => {
                write!(
                    f,
                    "prefix length /{len} is invalid: an IPv4 prefix length is 0 to 32"
                )
            }
            LpmError::HostBitsSet { prefix, len } => write!(
                f,
                "{prefix}/{len} has host bits set: write the network address, {}/{len}",
                mask(*prefix, *len)
            ),
            LpmError::Exists { prefix, len } => write!(
                f,
                "a route to {prefix}/{len} exists already: remove the duplicate route"
            ),
        }
    }
}

impl std::error::Error for LpmError {}

/// The network address of `addr/len` (host bits cleared). `len` above 32
/// is taken as 32.
pub fn mask(addr: Ipv4Addr, len: u8) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(addr) & netmask(len))
}

/// The netmask of a prefix length as a `u32` (`len` above 32 is taken as 32).
pub fn netmask(len: u8) -> u32 {
    match len {
        0 => 0,
        l if l >= 32 => u32::MAX,
        l => u32::MAX << (32 - l),
    }
}

/// True when `addr` is inside `prefix/len`.
pub fn contains(prefix: Ipv4Addr, len: u8, addr: Ipv4Addr) -> bool {
    let m = netmask(len);
    u32::from(addr) & m == u32::from(prefix) & m
}

/// The key of `addr` in the map of length `len`: its top `len` bits,
/// shifted down so the low bits (which the hash table indexes by) vary.
fn key(addr: u32, len: u8) -> u32 {
    (u64::from(addr) >> (32 - u32::from(len))) as u32
}

/// A fast hasher for the `u32` keys (multiply and fold); keys are
/// operator-configured prefixes, not attacker-chosen, so no seed is needed.
#[derive(Default)]
struct PrefixHasher(u64);

const MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;

impl Hasher for PrefixHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(MULTIPLIER);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = (self.0 ^ u64::from(n)).wrapping_mul(MULTIPLIER);
    }

    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 29)
    }
}

type LenMap = HashMap<u32, Route, BuildHasherDefault<PrefixHasher>>;

/// An IPv4 routing table with longest-prefix-match lookup.
#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    /// `by_len[l]`: routes of prefix length `l`, keyed by [`key`].
    by_len: Vec<LenMap>,
    /// Bit `l` set when `by_len[l]` is not empty.
    lengths: u64,
    /// The same routes in address order, for listing.
    ordered: BTreeMap<(u32, u8), Route>,
}

impl RouteTable {
    /// An empty table.
    pub fn new() -> RouteTable {
        RouteTable {
            by_len: (0..=32).map(|_| LenMap::default()).collect(),
            lengths: 0,
            ordered: BTreeMap::new(),
        }
    }

    /// Adds a route to `prefix/len`. The prefix must be a network address
    /// (no host bits) and not already present.
    pub fn insert(&mut self, prefix: Ipv4Addr, len: u8, route: Route) -> Result<(), LpmError> {
        if len > 32 {
            return Err(LpmError::InvalidPrefixLength(len));
        }
        if mask(prefix, len) != prefix {
            return Err(LpmError::HostBitsSet { prefix, len });
        }
        if self.by_len.is_empty() {
            *self = RouteTable::new();
        }
        let a = u32::from(prefix);
        let map = &mut self.by_len[usize::from(len)];
        if map.contains_key(&key(a, len)) {
            return Err(LpmError::Exists { prefix, len });
        }
        map.insert(key(a, len), route);
        self.lengths |= 1 << len;
        self.ordered.insert((a, len), route);
        Ok(())
    }

    /// Removes the route to exactly `prefix/len`, returning it.
    pub fn remove(&mut self, prefix: Ipv4Addr, len: u8) -> Option<Route> {
        if len > 32 || self.by_len.is_empty() {
            return None;
        }
        let a = u32::from(mask(prefix, len));
        let map = &mut self.by_len[usize::from(len)];
        let route = map.remove(&key(a, len))?;
        if map.is_empty() {
            self.lengths &= !(1 << len);
        }
        self.ordered.remove(&(a, len));
        Some(route)
    }

    /// The route of the longest prefix containing `addr`. Allocation-free.
    #[inline]
    pub fn lookup(&self, addr: Ipv4Addr) -> Option<&Route> {
        let a = u32::from(addr);
        let mut pending = self.lengths;
        while pending != 0 {
            let len = 63 - pending.leading_zeros();
            pending &= !(1u64 << len);
            // `len` is at most 32: only bits 0..=32 are ever set.
            if let Some(route) = self.by_len.get(len as usize)?.get(&key(a, len as u8)) {
                return Some(route);
            }
        }
        None
    }

    /// The route to exactly `prefix/len`, if present.
    pub fn get(&self, prefix: Ipv4Addr, len: u8) -> Option<&Route> {
        if len > 32 {
            return None;
        }
        self.ordered.get(&(u32::from(mask(prefix, len)), len))
    }

    /// All routes as `(prefix, len, route)`, in address order then length.
    pub fn iter(&self) -> impl Iterator<Item = (Ipv4Addr, u8, &Route)> + '_ {
        self.ordered
            .iter()
            .map(|(&(a, len), r)| (Ipv4Addr::from(a), len, r))
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.ordered.len()
    }

    /// True when the table has no route.
    pub fn is_empty(&self) -> bool {
        self.ordered.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn r(port: u16) -> Route {
        Route {
            port,
            next_hop: None,
        }
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn longest_prefix_wins() {
        let mut t = RouteTable::new();
        t.insert(ip("0.0.0.0"), 0, r(0)).unwrap();
        t.insert(ip("198.18.0.0"), 15, r(1)).unwrap();
        t.insert(ip("198.18.1.0"), 24, r(2)).unwrap();
        t.insert(ip("198.18.1.7"), 32, r(3)).unwrap();
        assert_eq!(t.lookup(ip("198.18.1.7")), Some(&r(3)));
        assert_eq!(t.lookup(ip("198.18.1.8")), Some(&r(2)));
        assert_eq!(t.lookup(ip("198.19.200.1")), Some(&r(1)));
        assert_eq!(t.lookup(ip("8.8.8.8")), Some(&r(0)));
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn no_default_route_means_no_match() {
        let mut t = RouteTable::new();
        t.insert(ip("198.18.1.0"), 24, r(2)).unwrap();
        assert_eq!(t.lookup(ip("198.18.2.1")), None);
        assert_eq!(RouteTable::default().lookup(ip("1.2.3.4")), None);
    }

    #[test]
    fn invalid_inserts_are_rejected() {
        let mut t = RouteTable::new();
        assert_eq!(
            t.insert(ip("1.0.0.0"), 33, r(0)),
            Err(LpmError::InvalidPrefixLength(33))
        );
        assert!(matches!(
            t.insert(ip("198.18.1.1"), 24, r(0)),
            Err(LpmError::HostBitsSet { .. })
        ));
        t.insert(ip("198.18.1.0"), 24, r(0)).unwrap();
        assert!(matches!(
            t.insert(ip("198.18.1.0"), 24, r(1)),
            Err(LpmError::Exists { .. })
        ));
        // Same address, different length: a different prefix.
        t.insert(ip("198.18.1.0"), 25, r(1)).unwrap();
    }

    #[test]
    fn remove_falls_back_to_shorter_prefix() {
        let mut t = RouteTable::default();
        t.insert(ip("10.0.0.0"), 8, r(1)).unwrap();
        t.insert(ip("10.1.0.0"), 16, r(2)).unwrap();
        assert_eq!(t.remove(ip("10.1.0.0"), 16), Some(r(2)));
        assert_eq!(t.lookup(ip("10.1.2.3")), Some(&r(1)));
        assert_eq!(t.remove(ip("10.1.0.0"), 16), None);
        assert_eq!(t.iter().count(), 1);
    }

    #[test]
    fn iter_is_in_address_order() {
        let mut t = RouteTable::new();
        t.insert(ip("198.18.2.0"), 24, r(2)).unwrap();
        t.insert(ip("0.0.0.0"), 0, r(0)).unwrap();
        t.insert(ip("198.18.1.0"), 24, r(1)).unwrap();
        let v: Vec<_> = t.iter().map(|(a, l, _)| (a, l)).collect();
        assert_eq!(
            v,
            vec![
                (ip("0.0.0.0"), 0),
                (ip("198.18.1.0"), 24),
                (ip("198.18.2.0"), 24)
            ]
        );
    }

    fn naive(routes: &[(u32, u8, Route)], addr: u32) -> Option<Route> {
        routes
            .iter()
            .filter(|(p, l, _)| addr & netmask(*l) == *p)
            .max_by_key(|(_, l, _)| *l)
            .map(|(_, _, r)| *r)
    }

    /// Addresses clustered so that generated prefixes nest and overlap.
    fn clustered() -> impl Strategy<Value = u32> {
        prop_oneof![
            any::<u32>(),
            (0u32..0x1_0000).prop_map(|x| 0xc612_0000 | x),
            (0u32..0x100).prop_map(|x| 0xc612_0100 | x),
            (0u32..0x100).prop_map(|x| x << 24),
        ]
    }

    proptest! {
        #[test]
        fn lookup_matches_linear_scan(
            raw in proptest::collection::vec((clustered(), 0u8..=32, any::<u16>()), 0..200),
            probes in proptest::collection::vec(clustered(), 0..200),
        ) {
            let mut t = RouteTable::new();
            let mut model: Vec<(u32, u8, Route)> = Vec::new();
            for (a, len, port) in raw {
                let p = a & netmask(len);
                let route = r(port);
                let res = t.insert(Ipv4Addr::from(p), len, route);
                if model.iter().any(|(mp, ml, _)| *mp == p && *ml == len) {
                    prop_assert!(res.is_err());
                } else {
                    prop_assert!(res.is_ok());
                    model.push((p, len, route));
                }
            }
            // Probe random addresses and addresses inside/next to each prefix.
            let mut addrs = probes;
            for (p, l, _) in &model {
                addrs.push(*p);
                addrs.push(p | !netmask(*l));
                addrs.push(p.wrapping_sub(1));
            }
            for a in addrs {
                prop_assert_eq!(t.lookup(Ipv4Addr::from(a)).copied(), naive(&model, a));
            }
        }
    }
}
