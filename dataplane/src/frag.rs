//! Fragment tracking without reassembly: a small fixed-capacity table, one
//! per worker, that remembers the flow of a datagram's first fragment so
//! that its later fragments (which carry no ports) get the same flow, and
//! so the same verdict.
//!
//! Sans-IO: every call takes `now_ms`; nothing allocates after
//! [`FragmentTable::new`]. A later fragment that arrives before its first
//! fragment (or after its entry expired or was evicted) is a miss: the
//! firewall drops and counts it.
//!
//! The table is open-addressed with a bounded probe window: an entry lives
//! in one of [`PROBE`] consecutive slots after its hash, and lookups scan
//! the whole window (no tombstones). When the window is full of live
//! entries, the one closest to expiry is evicted.

use std::net::Ipv4Addr;

use crate::flow::{FlowKey, L4Info};
use crate::parse::{Fragment, ParsedIpv4};

/// How long the flow of a first fragment is remembered by default.
pub const DEFAULT_TIMEOUT_MS: u64 = 2_000;
/// Slots an entry may occupy after its hash position.
pub const PROBE: usize = 8;

/// The fragment group of a datagram (RFC 791: source, destination,
/// protocol, identification).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FragmentKey {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// IP protocol.
    pub proto: u8,
    /// IP identification.
    pub ident: u16,
}

impl FragmentKey {
    /// The group of a parsed packet.
    pub fn of(parsed: &ParsedIpv4) -> FragmentKey {
        FragmentKey {
            src: parsed.src,
            dst: parsed.dst,
            proto: parsed.proto,
            ident: parsed.ident,
        }
    }

    fn hash(&self) -> u64 {
        let a = (u64::from(u32::from(self.src)) << 32) | u64::from(u32::from(self.dst));
        let b = (u64::from(self.proto) << 16) | u64::from(self.ident);
        let mut h = a.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h ^= h >> 29;
        h = (h ^ b).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h ^ (h >> 32)
    }
}

/// What the table remembers of a first fragment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragmentEntry {
    /// The datagram's flow (with the first fragment's ports).
    pub flow: FlowKey,
    /// The first fragment's transport facts.
    pub l4: L4Info,
    /// When the entry stops being valid.
    pub expires_ms: u64,
}

/// Counters of a [`FragmentTable`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragmentCounters {
    /// Entries in the table now.
    pub entries: u64,
    /// First fragments remembered (new entries).
    pub inserts: u64,
    /// Live entries pushed out by an insert into a full probe window.
    pub evictions: u64,
    /// Lookups that found the flow.
    pub hits: u64,
    /// Lookups that found nothing (or an expired entry).
    pub misses: u64,
    /// Entries dropped because they timed out.
    pub expired: u64,
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    key: FragmentKey,
    entry: FragmentEntry,
}

/// The per-worker table of first-fragment flows.
#[derive(Debug)]
pub struct FragmentTable {
    slots: Box<[Option<Slot>]>,
    mask: usize,
    timeout_ms: u64,
    /// Next slot [`FragmentTable::expire`] looks at.
    cursor: usize,
    counters: FragmentCounters,
}

impl FragmentTable {
    /// A table of at least `capacity` slots (rounded up to a power of two,
    /// at least [`PROBE`]) whose entries live `timeout_ms`.
    pub fn new(capacity: usize, timeout_ms: u64) -> FragmentTable {
        let len = capacity
            .max(PROBE)
            .checked_next_power_of_two()
            .unwrap_or(1 << 20);
        FragmentTable {
            slots: vec![None; len].into_boxed_slice(),
            mask: len - 1,
            timeout_ms,
            cursor: 0,
            counters: FragmentCounters::default(),
        }
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Entry lifetime.
    pub fn timeout_ms(&self) -> u64 {
        self.timeout_ms
    }

    /// Counters.
    pub fn counters(&self) -> FragmentCounters {
        self.counters
    }

    fn window(&self, key: &FragmentKey) -> impl Iterator<Item = usize> {
        let start = key.hash() as usize;
        let mask = self.mask;
        (0..PROBE).map(move |i| start.wrapping_add(i) & mask)
    }

    fn find(&self, key: &FragmentKey) -> Option<usize> {
        self.window(key)
            .find(|&i| matches!(&self.slots[i], Some(s) if s.key == *key))
    }

    fn clear(&mut self, i: usize) {
        if self.slots[i].take().is_some() {
            self.counters.entries -= 1;
        }
    }

    /// Remembers the flow of a first fragment (anything else is ignored:
    /// returns false). A second first fragment of the same group replaces
    /// the entry.
    pub fn insert(&mut self, now_ms: u64, parsed: &ParsedIpv4) -> bool {
        if !matches!(parsed.fragment, Fragment::First { .. }) {
            return false;
        }
        let key = FragmentKey::of(parsed);
        let slot = Slot {
            key,
            entry: FragmentEntry {
                flow: parsed.flow,
                l4: parsed.l4,
                expires_ms: now_ms.saturating_add(self.timeout_ms),
            },
        };
        let target = self.find(&key).or_else(|| {
            // A free or expired slot, else the live one closest to expiry.
            self.window(&key).min_by_key(|&i| match &self.slots[i] {
                None => (0, 0),
                Some(s) if s.entry.expires_ms <= now_ms => (1, 0),
                Some(s) => (2, s.entry.expires_ms),
            })
        });
        let Some(i) = target else {
            return false;
        };
        match &self.slots[i] {
            Some(s) if s.key == key => {}
            Some(s) if s.entry.expires_ms <= now_ms => self.counters.expired += 1,
            Some(_) => self.counters.evictions += 1,
            None => self.counters.entries += 1,
        }
        if self.slots[i].is_none_or(|s| s.key != key) {
            self.counters.inserts += 1;
        }
        self.slots[i] = Some(slot);
        true
    }

    /// The entry of a fragment group, if it is there and not expired (an
    /// expired one is dropped). Counts a hit or a miss.
    pub fn get(&mut self, now_ms: u64, key: &FragmentKey) -> Option<FragmentEntry> {
        let found = self.find(key).and_then(|i| {
            let entry = self.slots[i]?.entry;
            if entry.expires_ms <= now_ms {
                self.clear(i);
                self.counters.expired += 1;
                None
            } else {
                Some(entry)
            }
        });
        match found {
            Some(_) => self.counters.hits += 1,
            None => self.counters.misses += 1,
        }
        found
    }

    /// The flow of the first fragment of `(src, dst, proto, ident)`, for a
    /// later fragment of that datagram.
    pub fn lookup(
        &mut self,
        now_ms: u64,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        proto: u8,
        ident: u16,
    ) -> Option<FlowKey> {
        let key = FragmentKey {
            src,
            dst,
            proto,
            ident,
        };
        self.get(now_ms, &key).map(|e| e.flow)
    }

    /// Forgets a fragment group (when its last fragment, MF = 0, has
    /// passed). Returns whether it was there.
    pub fn remove(&mut self, src: Ipv4Addr, dst: Ipv4Addr, proto: u8, ident: u16) -> bool {
        let key = FragmentKey {
            src,
            dst,
            proto,
            ident,
        };
        match self.find(&key) {
            Some(i) => {
                self.clear(i);
                true
            }
            None => false,
        }
    }

    /// Drops expired entries among the next `budget` slots (a bounded
    /// amount of work per call; the scan wraps around). Returns how many
    /// were dropped.
    pub fn expire(&mut self, now_ms: u64, budget: usize) -> usize {
        let mut dropped = 0;
        for _ in 0..budget.min(self.slots.len()) {
            let i = self.cursor;
            self.cursor = (self.cursor + 1) & self.mask;
            if matches!(&self.slots[i], Some(s) if s.entry.expires_ms <= now_ms) {
                self.clear(i);
                self.counters.expired += 1;
                dropped += 1;
            }
        }
        dropped
    }
}

impl Default for FragmentTable {
    /// 1024 slots, [`DEFAULT_TIMEOUT_MS`].
    fn default() -> Self {
        FragmentTable::new(1024, DEFAULT_TIMEOUT_MS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::proto;
    use crate::parse::parse_ipv4;
    use crate::wire::{checksum, Ipv4Packet};

    const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 10);
    const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 10);

    /// A UDP fragment of datagram `ident`: the first one carries ports
    /// 5000 -> 53, later ones 16 bytes of data at `offset`.
    fn udp_fragment(ident: u16, more: bool, offset: u16) -> ParsedIpv4 {
        let l4: Vec<u8> = if offset == 0 {
            // The length field counts the whole datagram (1480 bytes) when
            // this is only its first fragment; no checksum.
            let len: u16 = if more { 1480 } else { 16 };
            let mut h = vec![0x13, 0x88, 0x00, 0x35];
            h.extend_from_slice(&len.to_be_bytes());
            h.resize(16, 0);
            h
        } else {
            vec![0xaa; 16]
        };
        let mut b = vec![0u8; 20 + l4.len()];
        let total = b.len() as u16;
        let mut p = Ipv4Packet::new_unchecked(&mut b[..]);
        p.set_version_and_header_len(4, 20);
        p.set_total_len(total);
        p.set_ident(ident);
        p.set_flags_and_offset(false, more, offset);
        p.set_ttl(64);
        p.set_protocol(proto::UDP.into());
        p.set_src_addr(CLIENT);
        p.set_dst_addr(SERVER);
        p.payload_mut().copy_from_slice(&l4);
        p.fill_checksum();
        assert!(checksum::verifies(&b[..20]));
        parse_ipv4(&b, true).unwrap()
    }

    fn lookup(t: &mut FragmentTable, now: u64, ident: u16) -> Option<FlowKey> {
        t.lookup(now, CLIENT, SERVER, proto::UDP, ident)
    }

    #[test]
    fn later_fragments_get_the_flow_of_the_first() {
        let mut t = FragmentTable::new(64, DEFAULT_TIMEOUT_MS);
        let first = udp_fragment(7, true, 0);
        assert!(t.insert(1000, &first));
        let later = udp_fragment(7, true, 8);
        assert_eq!(later.flow.sport, 0);
        assert_eq!(lookup(&mut t, 1001, later.ident), Some(first.flow));
        assert_eq!(first.flow.sport, 5000);
        let key = FragmentKey::of(&later);
        assert_eq!(t.get(1002, &key).unwrap().l4, first.l4);
        let c = t.counters();
        assert_eq!((c.entries, c.inserts, c.hits, c.misses), (1, 1, 2, 0));
    }

    #[test]
    fn only_first_fragments_are_inserted() {
        let mut t = FragmentTable::new(64, DEFAULT_TIMEOUT_MS);
        assert!(!t.insert(0, &udp_fragment(1, false, 0)));
        assert!(!t.insert(0, &udp_fragment(1, true, 8)));
        assert_eq!(t.counters().entries, 0);
    }

    #[test]
    fn a_later_fragment_before_its_first_is_a_miss() {
        let mut t = FragmentTable::new(64, DEFAULT_TIMEOUT_MS);
        assert_eq!(lookup(&mut t, 0, 9), None);
        t.insert(0, &udp_fragment(9, true, 0));
        assert_eq!(lookup(&mut t, 0, 10), None);
        assert_eq!(t.lookup(0, SERVER, CLIENT, proto::UDP, 9), None);
        assert_eq!(t.lookup(0, CLIENT, SERVER, proto::TCP, 9), None);
        assert_eq!(t.counters().misses, 4);
    }

    #[test]
    fn the_last_fragment_removes_the_entry() {
        let mut t = FragmentTable::new(64, DEFAULT_TIMEOUT_MS);
        t.insert(0, &udp_fragment(3, true, 0));
        let last = udp_fragment(3, false, 16);
        assert!(!last.more_fragments);
        assert!(lookup(&mut t, 1, last.ident).is_some());
        assert!(t.remove(last.src, last.dst, last.proto, last.ident));
        assert!(!t.remove(last.src, last.dst, last.proto, last.ident));
        assert_eq!(lookup(&mut t, 2, 3), None);
        assert_eq!(t.counters().entries, 0);
    }

    #[test]
    fn entries_time_out() {
        let mut t = FragmentTable::new(64, 2_000);
        t.insert(1_000, &udp_fragment(5, true, 0));
        assert!(lookup(&mut t, 2_999, 5).is_some());
        assert_eq!(lookup(&mut t, 3_000, 5), None);
        let c = t.counters();
        assert_eq!((c.entries, c.expired, c.misses), (0, 1, 1));
    }

    #[test]
    fn timeout_is_configurable() {
        let mut t = FragmentTable::new(64, 50);
        assert_eq!(t.timeout_ms(), 50);
        t.insert(0, &udp_fragment(5, true, 0));
        assert!(lookup(&mut t, 49, 5).is_some());
        assert!(lookup(&mut t, 50, 5).is_none());
    }

    #[test]
    fn expire_is_bounded_by_its_budget_and_wraps() {
        let mut t = FragmentTable::new(16, 100);
        for ident in 0..10 {
            t.insert(0, &udp_fragment(ident, true, 0));
        }
        assert_eq!(t.counters().entries, 10);
        assert_eq!(t.expire(50, 16), 0);
        let mut dropped = 0;
        for _ in 0..4 {
            let n = t.expire(100, 4);
            assert!(n <= 4);
            dropped += n;
        }
        assert_eq!(dropped, 10);
        assert_eq!(t.counters().entries, 0);
        assert_eq!(t.counters().expired, 10);
    }

    #[test]
    fn a_full_table_evicts_the_oldest_entry_of_the_window() {
        // Capacity 8 = one probe window: every key competes for it.
        let mut t = FragmentTable::new(8, 1_000);
        assert_eq!(t.capacity(), PROBE);
        for ident in 0..8u16 {
            assert!(t.insert(u64::from(ident), &udp_fragment(ident, true, 0)));
        }
        assert!(t.insert(100, &udp_fragment(100, true, 0)));
        let c = t.counters();
        assert_eq!((c.entries, c.inserts, c.evictions), (8, 9, 1));
        // Ident 0 was inserted first, so it expires first: it is the victim.
        assert_eq!(lookup(&mut t, 101, 0), None);
        for ident in (1..8).chain([100]) {
            assert!(lookup(&mut t, 101, ident).is_some(), "ident {ident}");
        }
    }

    #[test]
    fn an_expired_slot_is_reused_before_a_live_one_is_evicted() {
        let mut t = FragmentTable::new(8, 1_000);
        t.insert(0, &udp_fragment(0, true, 0));
        for ident in 1..8u16 {
            t.insert(500, &udp_fragment(ident, true, 0));
        }
        t.insert(1_200, &udp_fragment(50, true, 0));
        let c = t.counters();
        assert_eq!((c.entries, c.evictions, c.expired), (8, 0, 1));
    }

    #[test]
    fn a_repeated_first_fragment_refreshes_its_entry() {
        let mut t = FragmentTable::new(64, 1_000);
        t.insert(0, &udp_fragment(4, true, 0));
        t.insert(900, &udp_fragment(4, true, 0));
        assert!(lookup(&mut t, 1_500, 4).is_some());
        let c = t.counters();
        assert_eq!((c.entries, c.inserts), (1, 1));
    }

    #[test]
    fn capacity_is_rounded_up_to_a_power_of_two() {
        assert_eq!(FragmentTable::new(0, 1).capacity(), 8);
        assert_eq!(FragmentTable::new(100, 1).capacity(), 128);
        assert_eq!(FragmentTable::default().capacity(), 1024);
    }
}
