//! The key index: a fixed-size open-addressing table (linear probing,
//! backward-shift deletion, no tombstones) from a directional [`FlowKey`]
//! to `(connection slot, direction)`.
//!
//! A slot is one `u32`: the high bits hold a tag taken from the key's hash
//! (so most non-matching probes are rejected without touching the entry),
//! the low bits `slot << 1 | dir`. `u32::MAX` marks an empty slot; the
//! encoding never produces it (see [`KeyIndex::new`]). The table holds at
//! most `2 * capacity` keys and is sized to a load factor of at most 1/2.

use crate::flow::FlowKey;

const EMPTY: u32 = u32::MAX;

/// Most keys [`KeyIndex::find_burst`] takes at once.
pub(crate) const BURST: usize = 32;

/// A seeded, fast, non-cryptographic hash of a directional key (two
/// folded 64x64->128 multiplies, in the style of wyhash).
#[inline]
pub(crate) fn hash_key(seed: u64, k: &FlowKey) -> u64 {
    const P0: u64 = 0xa076_1d64_78bd_642f;
    const P1: u64 = 0xe703_7ed1_a0b4_28db;
    const P2: u64 = 0x8ebc_6af0_9c88_c6e3;
    let a = (u64::from(u32::from(k.src)) << 32) | u64::from(u32::from(k.dst));
    let b = (u64::from(k.sport) << 32) | (u64::from(k.dport) << 16) | u64::from(k.proto);
    let m = fold(a ^ seed ^ P0, b ^ P1);
    fold(m ^ P2, seed ^ P1 ^ b)
}

#[inline]
fn fold(x: u64, y: u64) -> u64 {
    let r = u128::from(x) * u128::from(y);
    (r as u64) ^ ((r >> 64) as u64)
}

/// The open-addressing index over `u32` slots.
#[derive(Debug)]
pub(crate) struct KeyIndex {
    slots: Vec<u32>,
    mask: usize,
    /// Bits of `slot << 1 | dir` (the rest of the `u32` is the tag).
    payload_bits: u32,
    seed: u64,
}

/// Where a key sits: the index position, the connection slot, the
/// direction bit.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Hit {
    pub pos: usize,
    pub slot: u32,
    pub dir: u8,
}

impl KeyIndex {
    /// An index for `capacity` connections (2 keys each).
    ///
    /// Connection slots are `< capacity < 2^b` with `b = bits(capacity)`,
    /// so `slot << 1 | dir <= 2^(b+1) - 3` is never all ones and no full
    /// slot equals `EMPTY`.
    pub fn new(capacity: u32, seed: u64) -> KeyIndex {
        assert!(
            capacity > 0 && capacity < (1 << 26),
            "capacity out of range"
        );
        let bits = 32 - capacity.leading_zeros();
        let payload_bits = bits + 1;
        let keys = 2 * capacity as usize;
        let mut n = keys.next_power_of_two().max(16);
        if keys * 2 > n {
            n *= 2;
        }
        KeyIndex {
            slots: vec![EMPTY; n],
            mask: n - 1,
            payload_bits,
            seed,
        }
    }

    /// Bytes of index per connection at full capacity.
    pub fn bytes(&self) -> usize {
        self.slots.len() * 4
    }

    #[inline]
    pub fn hash(&self, key: &FlowKey) -> u64 {
        hash_key(self.seed, key)
    }

    #[inline]
    fn tag(&self, h: u64) -> u32 {
        ((h >> 32) as u32) >> self.payload_bits
    }

    /// Finds `key`; `key_of(slot, dir)` returns the stored key of a
    /// candidate.
    #[inline]
    pub fn find(&self, key: &FlowKey, key_of: impl Fn(u32, u8) -> FlowKey) -> Option<Hit> {
        let h = self.hash(key);
        let tag = self.tag(h);
        let mut pos = h as usize & self.mask;
        loop {
            let s = self.slots[pos];
            if s == EMPTY {
                return None;
            }
            if s >> self.payload_bits == tag {
                let payload = s & ((1 << self.payload_bits) - 1);
                let (slot, dir) = (payload >> 1, (payload & 1) as u8);
                if key_of(slot, dir) == *key {
                    return Some(Hit { pos, slot, dir });
                }
            }
            pos = (pos + 1) & self.mask;
        }
    }

    /// Finds a burst of keys (at most [`BURST`]), in stages so that the
    /// cache misses of different keys overlap: all hashes, then all first
    /// probes, then `touch` (a prefetch) of the entries they point at, then
    /// the key comparisons. `out[i]` receives `keys[i]`'s hit.
    pub fn find_burst(
        &self,
        keys: &[FlowKey],
        out: &mut [Option<Hit>],
        key_of: impl Fn(u32, u8) -> FlowKey,
        touch: impl Fn(u32),
    ) {
        let n = keys.len().min(out.len()).min(BURST);
        let mut hashes = [0u64; BURST];
        let mut first = [EMPTY; BURST];
        for (h, k) in hashes.iter_mut().zip(&keys[..n]) {
            *h = self.hash(k);
        }
        for (f, h) in first.iter_mut().zip(&hashes[..n]) {
            *f = self.slots[*h as usize & self.mask];
        }
        // The entries the first probes point at, before comparing any.
        for (f, h) in first.iter().zip(&hashes[..n]) {
            if *f != EMPTY && *f >> self.payload_bits == self.tag(*h) {
                let payload = *f & ((1 << self.payload_bits) - 1);
                touch(payload >> 1);
            }
        }
        for i in 0..n {
            let (h, key) = (hashes[i], &keys[i]);
            let tag = self.tag(h);
            let mut pos = h as usize & self.mask;
            let mut s = first[i];
            out[i] = loop {
                if s == EMPTY {
                    break None;
                }
                if s >> self.payload_bits == tag {
                    let payload = s & ((1 << self.payload_bits) - 1);
                    let (slot, dir) = (payload >> 1, (payload & 1) as u8);
                    if key_of(slot, dir) == *key {
                        break Some(Hit { pos, slot, dir });
                    }
                }
                pos = (pos + 1) & self.mask;
                s = self.slots[pos];
            };
        }
    }

    /// Inserts `key` (which must not be present) for `(slot, dir)`.
    pub fn insert(&mut self, key: &FlowKey, slot: u32, dir: u8) {
        let h = self.hash(key);
        let v = (self.tag(h) << self.payload_bits) | (slot << 1) | u32::from(dir);
        let mut pos = h as usize & self.mask;
        while self.slots[pos] != EMPTY {
            pos = (pos + 1) & self.mask;
        }
        self.slots[pos] = v;
    }

    /// Removes the key found at `pos`, shifting the following cluster
    /// back so that no tombstone is left. `key_of` as in [`Self::find`].
    pub fn remove_at(&mut self, pos: usize, key_of: impl Fn(u32, u8) -> FlowKey) {
        let mut hole = pos;
        let mut k = (hole + 1) & self.mask;
        loop {
            let s = self.slots[k];
            if s == EMPTY {
                break;
            }
            let payload = s & ((1 << self.payload_bits) - 1);
            let home = self.hash(&key_of(payload >> 1, (payload & 1) as u8)) as usize & self.mask;
            // The entry at k may move into the hole iff its home is not
            // cyclically within (hole, k].
            if (k.wrapping_sub(home) & self.mask) >= (k.wrapping_sub(hole) & self.mask) {
                self.slots[hole] = s;
                hole = k;
            }
            k = (k + 1) & self.mask;
        }
        self.slots[hole] = EMPTY;
    }
}
