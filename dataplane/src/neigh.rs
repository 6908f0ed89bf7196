//! The neighbour (ARP) table: which MAC address answers for an IPv4 address
//! on a port, shared by every worker.
//!
//! Concurrency scheme:
//! - A fixed array of cache-line-sized slots, allocated once in
//!   [`NeighbourTable::new`]; open addressing with linear probing inside a
//!   bounded window, so no call allocates afterwards (except `snapshot`).
//! - Readers (`lookup`, `resolve`) never lock and never write the slot
//!   contents: each slot is a seqlock over atomics. A reader loads the
//!   sequence (odd = being written), the fields, then the sequence again,
//!   and retries on a change. The MAC and state share one `AtomicU64`, and
//!   the key/MAC/time triple is only taken when the sequence is unchanged,
//!   so a reader can never see a torn MAC or a MAC of another key.
//! - Writers (`learn`, `update`, creating an Incomplete entry, `expire`) are
//!   serialised by one `Mutex` that also owns the expiry cursor. Writes are
//!   rare (ARP traffic, first packet to a new neighbour); a lookup that must
//!   create an entry only *tries* the lock and, if another thread holds it,
//!   answers "unknown, don't send a request" instead of waiting, so the
//!   packet path never blocks.
//! - The "request sent at" time is a separate atomic claimed with a
//!   compare-exchange, which is what makes `send_request` true at most once
//!   per `retry_ms` per entry across all workers.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::Ipv4Addr;
use std::sync::atomic::{fence, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, TryLockError};

use crate::wire::EthernetAddress;

/// Timers of the neighbour state machine, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NeighbourTimers {
    /// A confirmed entry is Reachable this long, then Stale: still used, but
    /// a fresh request is due.
    pub reachable_ms: u64,
    /// An entry not confirmed (Reachable/Stale) or not requested (Incomplete)
    /// for this long is expired and its slot reusable.
    pub timeout_ms: u64,
    /// Minimum interval between two requests for the same entry.
    pub retry_ms: u64,
}

impl Default for NeighbourTimers {
    /// Linux-like values: 30 s reachable, 60 s timeout, 1 s between requests.
    fn default() -> Self {
        NeighbourTimers {
            reachable_ms: 30_000,
            timeout_ms: 60_000,
            retry_ms: 1_000,
        }
    }
}

/// An Incomplete entry that stayed unanswered this many retry intervals is
/// failed: packets waiting on it are unresolvable.
pub const UNANSWERED_REQUESTS_BEFORE_FAILED: u64 = 3;

/// The answer to [`NeighbourTable::lookup`] on the forwarding path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Send to this MAC. `true`: the entry is stale and this caller should
    /// send a fresh request (given to one caller per `retry_ms`).
    Known(EthernetAddress, bool),
    /// Not resolved yet. `send_request`: this caller should send the ARP
    /// request (given to one caller per `retry_ms` per entry).
    Unknown {
        /// Send an ARP request for the address now.
        send_request: bool,
    },
}

/// The answer to [`NeighbourTable::resolve`], for packets waiting on a
/// resolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// Resolved to this MAC.
    Resolved(EthernetAddress),
    /// A request is outstanding; keep waiting.
    Pending,
    /// No answer after [`UNANSWERED_REQUESTS_BEFORE_FAILED`] retry
    /// intervals, or no entry at all: give up.
    Failed,
}

/// The state of an entry as shown to the operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NeighbourState {
    /// A request was sent, no answer yet.
    Incomplete,
    /// Confirmed less than `reachable_ms` ago.
    Reachable,
    /// Confirmed longer ago; used, and a refresh is due.
    Stale,
}

impl NeighbourState {
    /// Stable lower-case name (status output, JSON).
    pub fn as_str(self) -> &'static str {
        match self {
            NeighbourState::Incomplete => "incomplete",
            NeighbourState::Reachable => "reachable",
            NeighbourState::Stale => "stale",
        }
    }
}

/// One entry, as listed by [`NeighbourTable::snapshot`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NeighbourEntry {
    /// Port the neighbour is on.
    pub port: u16,
    /// Its IPv4 address.
    pub ip: Ipv4Addr,
    /// State at the snapshot time.
    pub state: NeighbourState,
    /// Its MAC, once known.
    pub mac: Option<EthernetAddress>,
    /// Milliseconds since it was confirmed (or, Incomplete, created).
    pub age_ms: u64,
}

const KEY_EMPTY: u64 = 0;
const KEY_TOMBSTONE: u64 = 1 << 63;
const KEY_LIVE: u64 = 1 << 48;
const STATE_SHIFT: u32 = 48;
const MAC_MASK: u64 = (1 << STATE_SHIFT) - 1;
const STATE_INCOMPLETE: u64 = 1;
const STATE_REACHABLE: u64 = 2;
const NEVER: u64 = u64::MAX;
/// Longest probe sequence, in slots.
const MAX_WINDOW: usize = 32;
/// Slots examined to make room when an insert finds the table full.
const REAP_BUDGET: usize = 256;
/// Read attempts on a slot being written before a reader gives up.
const READ_RETRIES: usize = 1024;

fn make_key(port: u16, ip: Ipv4Addr) -> u64 {
    KEY_LIVE | (u64::from(port) << 32) | u64::from(u32::from(ip))
}

fn key_port(key: u64) -> u16 {
    (key >> 32) as u16
}

fn key_ip(key: u64) -> Ipv4Addr {
    Ipv4Addr::from(key as u32)
}

/// One slot. Aligned to a cache line so writers of one slot do not slow
/// readers of its neighbours.
#[repr(align(64))]
#[derive(Default)]
struct Slot {
    /// Seqlock sequence: odd while a write is in progress.
    seq: AtomicU64,
    /// `KEY_EMPTY` (never used: ends a probe), `KEY_TOMBSTONE` (freed:
    /// probes continue past it), or `KEY_LIVE | port << 32 | ip`.
    key: AtomicU64,
    /// MAC in bits 0..48, state above.
    mac_state: AtomicU64,
    /// Reachable: when confirmed. Incomplete: when created.
    since: AtomicU64,
    /// When the last request was claimed (`NEVER` if none); outside the
    /// seqlock, updated by compare-exchange.
    requested: AtomicU64,
}

/// A consistent copy of a slot's seqlocked fields.
#[derive(Clone, Copy)]
struct View {
    key: u64,
    mac_state: u64,
    since: u64,
}

impl View {
    fn state(&self) -> u64 {
        self.mac_state >> STATE_SHIFT
    }

    fn mac(&self) -> EthernetAddress {
        EthernetAddress::from_u64(self.mac_state & MAC_MASK)
    }

    fn is_live(&self) -> bool {
        self.key & KEY_LIVE != 0 && self.key & KEY_TOMBSTONE == 0
    }
}

enum Probe {
    Found(usize, View),
    Absent,
    /// A slot on the probe path was being written for too long.
    Busy,
}

/// State owned by the writer lock.
struct Writer {
    cursor: usize,
}

/// The neighbour table. One instance is shared (`Arc`) by all workers; all
/// methods take `&self`.
pub struct NeighbourTable {
    slots: Box<[Slot]>,
    mask: usize,
    window: usize,
    capacity: usize,
    seed: u64,
    timers: NeighbourTimers,
    len: AtomicUsize,
    insert_failures: AtomicU64,
    writer: Mutex<Writer>,
}

impl core::fmt::Debug for NeighbourTable {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("NeighbourTable")
            .field("capacity", &self.capacity)
            .field("len", &self.len())
            .field("timers", &self.timers)
            .finish()
    }
}

impl NeighbourTable {
    /// A table for up to `capacity` entries (at least 1). Allocates all its
    /// memory now: twice `capacity` slots rounded up to a power of two.
    pub fn new(capacity: usize, timers: NeighbourTimers) -> NeighbourTable {
        let capacity = capacity.max(1);
        let n = capacity.saturating_mul(2).next_power_of_two();
        let slots: Box<[Slot]> = (0..n).map(|_| Slot::default()).collect();
        NeighbourTable {
            mask: n - 1,
            window: n.min(MAX_WINDOW),
            capacity,
            seed: RandomState::new().hash_one(0x7a6e_u64),
            timers,
            len: AtomicUsize::new(0),
            insert_failures: AtomicU64::new(0),
            writer: Mutex::new(Writer { cursor: 0 }),
            slots,
        }
    }

    /// Maximum number of entries.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The timers in use.
    pub fn timers(&self) -> NeighbourTimers {
        self.timers
    }

    /// Number of entries (including ones past their timeout that `expire`
    /// has not reached yet).
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// True when there is no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many times an entry could not be created because the table was
    /// full (a counter for the status command).
    pub fn insert_failures(&self) -> u64 {
        self.insert_failures.load(Ordering::Relaxed)
    }

    /// Forwarding-path lookup of `ip` on `port`. Lock-free when the entry
    /// exists. When it does not, creates an Incomplete entry and answers
    /// `Unknown { send_request: true }`; if the table is full, or another
    /// thread is writing the table at that instant, answers
    /// `Unknown { send_request: false }` without waiting.
    pub fn lookup(&self, port: u16, ip: Ipv4Addr, now_ms: u64) -> Lookup {
        let key = make_key(port, ip);
        match self.find(key) {
            Probe::Busy => Lookup::Unknown {
                send_request: false,
            },
            Probe::Found(i, v) if !self.is_expired(i, &v, now_ms) => self.answer(i, &v, now_ms),
            _ => self.create_incomplete(key, now_ms),
        }
    }

    /// Side-effect-free query for packets waiting on a resolution.
    pub fn resolve(&self, port: u16, ip: Ipv4Addr, now_ms: u64) -> Resolution {
        match self.find(make_key(port, ip)) {
            Probe::Busy => Resolution::Pending,
            Probe::Found(i, v) if !self.is_expired(i, &v, now_ms) => {
                if v.state() == STATE_REACHABLE {
                    Resolution::Resolved(v.mac())
                } else if now_ms.saturating_sub(v.since)
                    < UNANSWERED_REQUESTS_BEFORE_FAILED.saturating_mul(self.timers.retry_ms)
                {
                    Resolution::Pending
                } else {
                    Resolution::Failed
                }
            }
            _ => Resolution::Failed,
        }
    }

    /// The MAC of a resolved entry, ignoring timers (an entry past its
    /// timeout that `expire` has not freed yet is still returned). No side
    /// effects; for replies such as ICMP errors, which may use a slightly
    /// old entry rather than wait for a resolution.
    pub fn peek(&self, port: u16, ip: Ipv4Addr) -> Option<EthernetAddress> {
        match self.find(make_key(port, ip)) {
            Probe::Found(_, v) if v.state() == STATE_REACHABLE => Some(v.mac()),
            _ => None,
        }
    }

    /// Records that `ip` on `port` is at `mac` (creating the entry if
    /// needed). Returns false, and counts an insert failure, when the table
    /// is full; false also for a non-unicast `mac`.
    pub fn learn(&self, port: u16, ip: Ipv4Addr, mac: EthernetAddress, now_ms: u64) -> bool {
        if !mac.is_unicast() {
            return false;
        }
        let mut w = self.lock();
        let ok = self.insert_locked(&mut w, make_key(port, ip), reachable(mac), now_ms, NEVER);
        if !ok {
            self.insert_failures.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    /// Like [`learn`](Self::learn), but only for an entry that exists (and
    /// has not timed out): for gratuitous ARP, which must not create entries.
    pub fn update(&self, port: u16, ip: Ipv4Addr, mac: EthernetAddress, now_ms: u64) -> bool {
        if !mac.is_unicast() {
            return false;
        }
        let _w = self.lock();
        match self.find(make_key(port, ip)) {
            Probe::Found(i, v) if !self.is_expired(i, &v, now_ms) => {
                self.write(i, v.key, reachable(mac), now_ms);
                self.slots[i].requested.store(NEVER, Ordering::Relaxed);
                true
            }
            _ => false,
        }
    }

    /// Frees the slots of timed-out entries, examining at most `max_slots`
    /// slots from where the previous call stopped. Returns how many entries
    /// it removed. Call it periodically (e.g. from the control thread).
    pub fn expire(&self, now_ms: u64, max_slots: usize) -> usize {
        let mut w = self.lock();
        self.reap_locked(&mut w, now_ms, max_slots)
    }

    /// Every live entry, sorted by port then address, for the status
    /// command. Allocates; not for the packet path.
    pub fn snapshot(&self, now_ms: u64) -> Vec<NeighbourEntry> {
        let mut out = Vec::new();
        for i in 0..self.slots.len() {
            let Some(v) = self.read(i) else { continue };
            if !v.is_live() || self.is_expired(i, &v, now_ms) {
                continue;
            }
            let age_ms = now_ms.saturating_sub(v.since);
            let (state, mac) = if v.state() == STATE_REACHABLE {
                let s = if age_ms >= self.timers.reachable_ms {
                    NeighbourState::Stale
                } else {
                    NeighbourState::Reachable
                };
                (s, Some(v.mac()))
            } else {
                (NeighbourState::Incomplete, None)
            };
            out.push(NeighbourEntry {
                port: key_port(v.key),
                ip: key_ip(v.key),
                state,
                mac,
                age_ms,
            });
        }
        out.sort_by_key(|e| (e.port, e.ip));
        out
    }

    // ---- internals ----

    fn lock(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn home(&self, key: u64) -> usize {
        // splitmix64 finaliser over the seeded key.
        let mut z = key ^ self.seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z as usize) & self.mask
    }

    /// Seqlock read of slot `i`; `None` if it stayed mid-write.
    fn read(&self, i: usize) -> Option<View> {
        let slot = self.slots.get(i)?;
        for _ in 0..READ_RETRIES {
            let s1 = slot.seq.load(Ordering::Acquire);
            if s1 & 1 == 1 {
                core::hint::spin_loop();
                continue;
            }
            let view = View {
                key: slot.key.load(Ordering::Relaxed),
                mac_state: slot.mac_state.load(Ordering::Relaxed),
                since: slot.since.load(Ordering::Relaxed),
            };
            fence(Ordering::Acquire);
            if slot.seq.load(Ordering::Relaxed) == s1 {
                return Some(view);
            }
        }
        None
    }

    /// Seqlock write of slot `i`. Caller holds the writer lock.
    fn write(&self, i: usize, key: u64, mac_state: u64, since: u64) {
        let slot = &self.slots[i];
        let s = slot.seq.load(Ordering::Relaxed);
        slot.seq.store(s.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        slot.key.store(key, Ordering::Relaxed);
        slot.mac_state.store(mac_state, Ordering::Relaxed);
        slot.since.store(since, Ordering::Relaxed);
        slot.seq.store(s.wrapping_add(2), Ordering::Release);
    }

    fn find(&self, key: u64) -> Probe {
        let home = self.home(key);
        for d in 0..self.window {
            let i = (home + d) & self.mask;
            match self.read(i) {
                None => return Probe::Busy,
                Some(v) if v.key == KEY_EMPTY => return Probe::Absent,
                Some(v) if v.key == key => return Probe::Found(i, v),
                Some(_) => {}
            }
        }
        Probe::Absent
    }

    fn is_expired(&self, i: usize, v: &View, now_ms: u64) -> bool {
        let last = if v.state() == STATE_REACHABLE {
            v.since
        } else {
            match self.slots[i].requested.load(Ordering::Relaxed) {
                NEVER => v.since,
                r => r.max(v.since),
            }
        };
        now_ms.saturating_sub(last) >= self.timers.timeout_ms
    }

    /// Gives the right to send a request to one caller per `retry_ms`.
    fn claim_request(&self, i: usize, now_ms: u64) -> bool {
        let requested = &self.slots[i].requested;
        let r = requested.load(Ordering::Relaxed);
        let due = r == NEVER || now_ms.saturating_sub(r) >= self.timers.retry_ms;
        due && requested
            .compare_exchange(r, now_ms, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    fn answer(&self, i: usize, v: &View, now_ms: u64) -> Lookup {
        if v.state() == STATE_REACHABLE {
            let stale = now_ms.saturating_sub(v.since) >= self.timers.reachable_ms;
            Lookup::Known(v.mac(), stale && self.claim_request(i, now_ms))
        } else {
            Lookup::Unknown {
                send_request: self.claim_request(i, now_ms),
            }
        }
    }

    fn create_incomplete(&self, key: u64, now_ms: u64) -> Lookup {
        let mut w = match self.writer.try_lock() {
            Ok(w) => w,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => {
                return Lookup::Unknown {
                    send_request: false,
                }
            }
        };
        // Another thread may have created it since our lock-free probe.
        if let Probe::Found(i, v) = self.find(key) {
            if !self.is_expired(i, &v, now_ms) {
                return self.answer(i, &v, now_ms);
            }
        }
        let incomplete = STATE_INCOMPLETE << STATE_SHIFT;
        if self.insert_locked(&mut w, key, incomplete, now_ms, now_ms) {
            Lookup::Unknown { send_request: true }
        } else {
            self.insert_failures.fetch_add(1, Ordering::Relaxed);
            Lookup::Unknown {
                send_request: false,
            }
        }
    }

    /// Writes `key` (overwriting its entry if present, else into the first
    /// free slot of its window). Caller holds the writer lock.
    fn insert_locked(
        &self,
        w: &mut Writer,
        key: u64,
        mac_state: u64,
        since: u64,
        requested: u64,
    ) -> bool {
        let target = match self.find(key) {
            Probe::Found(i, _) => Some(i),
            _ => {
                if self.len() >= self.capacity {
                    // Full, maybe of timed-out entries `expire` has not
                    // reached yet: reap some, with bounded work.
                    self.reap_locked(w, since, REAP_BUDGET);
                }
                self.free_slot(key, since)
            }
        };
        let Some(i) = target else { return false };
        self.slots[i].requested.store(requested, Ordering::Relaxed);
        self.write(i, key, mac_state, since);
        true
    }

    /// A slot for a new key: the first empty, freed or timed-out slot of the
    /// key's window, if the table is below capacity. Adjusts `len`.
    fn free_slot(&self, key: u64, now_ms: u64) -> Option<usize> {
        let home = self.home(key);
        let below_capacity = self.len() < self.capacity;
        for d in 0..self.window {
            let i = (home + d) & self.mask;
            let v = self.read(i)?;
            if !v.is_live() {
                if below_capacity {
                    self.len.fetch_add(1, Ordering::Relaxed);
                    return Some(i);
                }
                if v.key == KEY_EMPTY {
                    // Nothing lies beyond an empty slot on this probe path,
                    // and a key placed there could not be found.
                    break;
                }
            } else if self.is_expired(i, &v, now_ms) {
                // Reuse a timed-out entry in place: `len` is unchanged.
                return Some(i);
            }
        }
        None
    }

    /// Frees timed-out entries among the next `max_slots` slots from the
    /// cursor. Caller holds the writer lock.
    fn reap_locked(&self, w: &mut Writer, now_ms: u64, max_slots: usize) -> usize {
        let mut removed = 0;
        for _ in 0..max_slots.min(self.slots.len()) {
            let i = w.cursor;
            w.cursor = (i + 1) & self.mask;
            let Some(v) = self.read(i) else { continue };
            if v.is_live() && self.is_expired(i, &v, now_ms) {
                self.free_locked(i);
                removed += 1;
            }
        }
        removed
    }

    /// Frees slot `i`, then turns trailing tombstones back into empty slots
    /// so probes stay short. Caller holds the writer lock.
    fn free_locked(&self, i: usize) {
        self.write(i, KEY_TOMBSTONE, 0, 0);
        self.len.fetch_sub(1, Ordering::Relaxed);
        // A tombstone followed by an empty slot ends every probe path
        // through it, so it can become empty itself.
        let next = (i + 1) & self.mask;
        if self.slots[next].key.load(Ordering::Relaxed) != KEY_EMPTY {
            return;
        }
        let mut j = i;
        for _ in 0..self.slots.len() {
            if self.slots[j].key.load(Ordering::Relaxed) != KEY_TOMBSTONE {
                break;
            }
            self.write(j, KEY_EMPTY, 0, 0);
            j = j.wrapping_sub(1) & self.mask;
        }
    }
}

fn reachable(mac: EthernetAddress) -> u64 {
    (STATE_REACHABLE << STATE_SHIFT) | mac.to_u64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    const T: NeighbourTimers = NeighbourTimers {
        reachable_ms: 1_000,
        timeout_ms: 5_000,
        retry_ms: 100,
    };

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 1, last)
    }

    fn mac(last: u8) -> EthernetAddress {
        EthernetAddress([2, 0, 0, 0, 1, last])
    }

    #[test]
    fn unknown_neighbour_gets_one_request_per_retry_interval() {
        let t = NeighbourTable::new(16, T);
        assert_eq!(
            t.lookup(1, ip(10), 0),
            Lookup::Unknown { send_request: true }
        );
        assert_eq!(
            t.lookup(1, ip(10), 50),
            Lookup::Unknown {
                send_request: false
            }
        );
        assert_eq!(
            t.lookup(1, ip(10), 99),
            Lookup::Unknown {
                send_request: false
            }
        );
        assert_eq!(
            t.lookup(1, ip(10), 100),
            Lookup::Unknown { send_request: true }
        );
        assert_eq!(
            t.lookup(1, ip(10), 150),
            Lookup::Unknown {
                send_request: false
            }
        );
        assert_eq!(t.len(), 1);
        // The same address on another port is another neighbour.
        assert_eq!(
            t.lookup(2, ip(10), 150),
            Lookup::Unknown { send_request: true }
        );
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn learned_neighbour_is_known_then_stale_with_rate_limited_refresh() {
        let t = NeighbourTable::new(16, T);
        assert!(t.learn(1, ip(10), mac(10), 0));
        assert_eq!(t.lookup(1, ip(10), 999), Lookup::Known(mac(10), false));
        assert_eq!(t.lookup(1, ip(10), 1_000), Lookup::Known(mac(10), true));
        assert_eq!(t.lookup(1, ip(10), 1_050), Lookup::Known(mac(10), false));
        assert_eq!(t.lookup(1, ip(10), 1_100), Lookup::Known(mac(10), true));
        // A confirmation makes it fresh again.
        assert!(t.learn(1, ip(10), mac(11), 1_200));
        assert_eq!(t.lookup(1, ip(10), 1_300), Lookup::Known(mac(11), false));
    }

    #[test]
    fn learn_completes_an_incomplete_entry() {
        let t = NeighbourTable::new(16, T);
        assert_eq!(
            t.lookup(1, ip(10), 0),
            Lookup::Unknown { send_request: true }
        );
        assert_eq!(t.resolve(1, ip(10), 10), Resolution::Pending);
        assert!(t.learn(1, ip(10), mac(10), 20));
        assert_eq!(t.resolve(1, ip(10), 30), Resolution::Resolved(mac(10)));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn unanswered_entry_fails_after_three_retry_intervals() {
        let t = NeighbourTable::new(16, T);
        t.lookup(1, ip(10), 0);
        assert_eq!(t.resolve(1, ip(10), 299), Resolution::Pending);
        assert_eq!(t.resolve(1, ip(10), 300), Resolution::Failed);
        assert_eq!(t.resolve(1, ip(99), 0), Resolution::Failed);
    }

    #[test]
    fn entries_time_out_and_expire_frees_them() {
        let t = NeighbourTable::new(16, T);
        t.learn(1, ip(10), mac(10), 0);
        t.lookup(1, ip(11), 0);
        assert_eq!(t.lookup(1, ip(10), 4_999), Lookup::Known(mac(10), true));
        assert_eq!(t.expire(4_999, usize::MAX), 0);
        assert_eq!(t.len(), 2);
        // Timed out: treated as absent even before expire() runs.
        assert_eq!(t.resolve(1, ip(10), 5_000), Resolution::Failed);
        assert_eq!(t.expire(5_000, usize::MAX), 2);
        assert_eq!(t.len(), 0);
        assert!(t.snapshot(5_000).is_empty());
    }

    #[test]
    fn incomplete_entry_lives_while_requests_continue() {
        let t = NeighbourTable::new(16, T);
        for now in (0..20_000).step_by(100) {
            t.lookup(1, ip(10), now);
        }
        assert_eq!(t.expire(20_000, usize::MAX), 0);
        assert_eq!(t.resolve(1, ip(10), 20_000), Resolution::Failed);
        assert_eq!(t.expire(25_000, usize::MAX), 1);
    }

    #[test]
    fn expire_work_is_bounded_and_resumes_at_cursor() {
        let t = NeighbourTable::new(64, T);
        for i in 0..50 {
            assert!(t.learn(1, ip(i), mac(i), 0));
        }
        let slots = t.slots.len();
        let mut removed = 0;
        let mut calls = 0;
        while removed < 50 {
            let n = t.expire(10_000, 8);
            assert!(n <= 8);
            removed += n;
            calls += 1;
            assert!(calls <= slots / 8 + 1, "cursor did not advance");
        }
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn full_table_rejects_new_entries_and_counts_them() {
        let t = NeighbourTable::new(4, T);
        for i in 0..4 {
            assert!(t.learn(1, ip(i), mac(i), 0));
        }
        assert!(!t.learn(1, ip(200), mac(200), 0));
        assert_eq!(
            t.lookup(1, ip(201), 0),
            Lookup::Unknown {
                send_request: false
            }
        );
        assert_eq!(t.insert_failures(), 2);
        assert_eq!(t.len(), 4);
        // Existing entries can still be refreshed.
        assert!(t.learn(1, ip(3), mac(33), 10));
        assert_eq!(t.lookup(1, ip(3), 10), Lookup::Known(mac(33), false));
        // Once entries time out, their slots are reused even without expire().
        assert!(t.learn(1, ip(200), mac(200), 6_000));
    }

    #[test]
    fn update_only_touches_existing_entries() {
        let t = NeighbourTable::new(16, T);
        assert!(!t.update(1, ip(10), mac(10), 0));
        assert_eq!(t.len(), 0);
        t.learn(1, ip(10), mac(10), 0);
        assert!(t.update(1, ip(10), mac(20), 10));
        assert_eq!(t.lookup(1, ip(10), 10), Lookup::Known(mac(20), false));
    }

    #[test]
    fn non_unicast_mac_is_never_learned() {
        let t = NeighbourTable::new(16, T);
        assert!(!t.learn(1, ip(10), EthernetAddress::BROADCAST, 0));
        assert!(!t.learn(1, ip(10), EthernetAddress([1, 0, 0x5e, 0, 0, 1]), 0));
        assert!(t.is_empty());
    }

    #[test]
    fn snapshot_shows_states_sorted() {
        let t = NeighbourTable::new(16, T);
        t.learn(2, ip(1), mac(1), 0);
        t.learn(1, ip(9), mac(9), 500);
        t.lookup(1, ip(3), 1_200);
        let s = t.snapshot(1_400);
        let got: Vec<_> = s
            .iter()
            .map(|e| (e.port, e.ip, e.state, e.mac, e.age_ms))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, ip(3), NeighbourState::Incomplete, None, 200),
                (1, ip(9), NeighbourState::Reachable, Some(mac(9)), 900),
                (2, ip(1), NeighbourState::Stale, Some(mac(1)), 1_400),
            ]
        );
    }

    #[test]
    fn churn_through_a_small_table_never_loses_entries() {
        // Many generations of distinct keys through a table of 64: every
        // learn must succeed once the previous generation expired, and every
        // live key must be found (tombstone clean-up keeps probes valid).
        let t = NeighbourTable::new(64, T);
        let mut now = 0;
        for generation in 0..200u32 {
            let keys: Vec<Ipv4Addr> = (0..64u32)
                .map(|k| Ipv4Addr::from(0x0a00_0000 + generation * 64 + k))
                .collect();
            for (k, a) in keys.iter().enumerate() {
                assert!(
                    t.learn(1, *a, mac(k as u8), now),
                    "generation {generation} key {k}"
                );
            }
            for (k, a) in keys.iter().enumerate() {
                assert_eq!(t.lookup(1, *a, now), Lookup::Known(mac(k as u8), false));
            }
            now += T.timeout_ms;
            if generation % 2 == 0 {
                t.expire(now, usize::MAX);
            }
        }
    }

    #[test]
    fn random_operations_agree_with_a_model() {
        // A simple model: key -> (mac, confirmed) for learned entries.
        let t = NeighbourTable::new(32, T);
        let mut model: HashMap<u8, (EthernetAddress, u64)> = HashMap::new();
        let mut rng = 0x1234_5678_u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut now = 0;
        for _ in 0..20_000 {
            let k = (next() % 24) as u8;
            now += next() % 50;
            match next() % 3 {
                0 => {
                    assert!(t.learn(1, ip(k), mac(k ^ (now as u8)), now));
                    model.insert(k, (mac(k ^ (now as u8)), now));
                }
                1 => {
                    t.expire(now, 7);
                }
                _ => {
                    let r = t.resolve(1, ip(k), now);
                    match model.get(&k) {
                        Some((m, at)) if now - at < T.timeout_ms => {
                            assert_eq!(r, Resolution::Resolved(*m))
                        }
                        _ => assert_ne!(r, Resolution::Resolved(mac(0)), "unexpected"),
                    }
                }
            }
        }
    }

    #[test]
    fn concurrent_readers_never_see_a_torn_or_foreign_mac() {
        // One writer learns keys with MACs that encode the key and a
        // generation byte repeated four times, expiring as it goes so slots
        // are reused by other keys; readers check every MAC they get.
        const KEYS: u32 = 512;
        let t = Arc::new(NeighbourTable::new(256, T));
        let stop = Arc::new(AtomicBool::new(false));
        let clock = Arc::new(AtomicU64::new(0));
        let encode = |k: u32, g: u8| {
            let kb = (k as u16).to_be_bytes();
            EthernetAddress([kb[0] & 0xfe, kb[1], g, g, g, g])
        };
        let readers: Vec<_> = (0..2)
            .map(|r| {
                let (t, stop, clock) = (t.clone(), stop.clone(), clock.clone());
                std::thread::spawn(move || {
                    let mut seen = 0u64;
                    let mut k = r;
                    while !stop.load(Ordering::Relaxed) {
                        k = (k * 7 + 13) % KEYS;
                        let now = clock.load(Ordering::Relaxed);
                        let a = Ipv4Addr::from(0x0a00_0000 + k);
                        if let Lookup::Known(m, _) = t.lookup(1, a, now) {
                            let want = encode(k, m.0[2]);
                            assert_eq!(m, want, "key {k} got {m}");
                            seen += 1;
                        }
                    }
                    seen
                })
            })
            .collect();
        for round in 0..150u32 {
            let now = u64::from(round) * 100;
            clock.store(now, Ordering::Relaxed);
            for k in 0..KEYS {
                if (k + round) % 3 == 0 {
                    t.learn(
                        1,
                        Ipv4Addr::from(0x0a00_0000 + k),
                        encode(k, round as u8),
                        now,
                    );
                }
            }
            t.expire(now, 64);
        }
        stop.store(true, Ordering::Relaxed);
        let seen: u64 = readers.into_iter().map(|h| h.join().unwrap()).sum();
        assert!(seen > 0, "readers never saw an entry");
    }

    #[test]
    fn table_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<NeighbourTable>();
    }
}
