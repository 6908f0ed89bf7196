//! Delta records (what the sync core streams to the peer) and the
//! single-producer single-consumer ring that carries them from a worker
//! to the sync core.
//!
//! The ring is a fixed array of slots with a producer index (`tail`) and a
//! consumer index (`head`), each only written by its owner and published
//! with a Release store / read with an Acquire load, the classic Lamport
//! SPSC queue. Safe Rust cannot hand a slot's interior from one thread to
//! the other through atomics alone, so each slot is a `Mutex<Delta>`: the
//! index protocol guarantees that producer and consumer never touch the
//! same slot at the same time, so the lock is never contended and costs
//! one uncontended atomic swap to lock and one to unlock (std's futex
//! mutex, no allocation, no syscall when uncontended). Everything is
//! allocated at creation; `push` never allocates nor blocks and reports a
//! full ring to the caller.

use super::nat::{reply_key, Nat};
use super::state::ProtoState;
use crate::flow::FlowKey;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Everything needed to resume a connection on the peer. Times are
/// relative to the moment the snapshot was taken, so the two nodes'
/// clocks need not agree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnSnapshot {
    /// The original key (initiator to responder, before NAT).
    pub orig: FlowKey,
    /// The NAT binding, if any (the reply key follows from it).
    pub nat: Option<Nat>,
    /// Protocol state, including TCP windows, ESP SPIs, SCTP tags.
    pub state: ProtoState,
    /// The filter rule that accepted the connection.
    pub rule: u32,
    /// Sync this connection to the peer (the rule's HA option).
    pub sync: bool,
    /// Log this connection.
    pub log: bool,
    /// Port the connection's original direction came in on.
    pub in_port: u16,
    /// Port the original direction goes out on.
    pub out_port: u16,
    /// Milliseconds since creation.
    pub age_ms: u64,
    /// Milliseconds since the last packet.
    pub idle_ms: u64,
    /// Milliseconds until the connection expires.
    pub remaining_ms: u64,
    /// Packets per direction ([`super::Dir`] index).
    pub packets: [u64; 2],
    /// Bytes per direction.
    pub bytes: [u64; 2],
}

impl ConnSnapshot {
    /// The key the responder's packets carry.
    pub fn reply(&self) -> FlowKey {
        reply_key(&self.nat.map_or(self.orig, |n| n.translated))
    }
}

/// A state transition of a known connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnUpdate {
    /// The connection's original key.
    pub key: FlowKey,
    /// Its protocol state now (TCP windows included).
    pub state: ProtoState,
    /// Milliseconds until it expires.
    pub remaining_ms: u64,
}

/// What happened to a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeltaKind {
    /// A connection the peer does not have yet (first sync of it).
    Create(ConnSnapshot),
    /// A state transition (TCP state, UDP replied/stream, SPI or SCTP tag
    /// learnt, ...).
    Update(ConnUpdate),
    /// A long-lived connection is still active.
    Refresh {
        /// Original key.
        key: FlowKey,
        /// Milliseconds until it expires.
        remaining_ms: u64,
    },
    /// The connection is gone (expired, closed, flushed, deleted).
    Delete {
        /// Original key.
        key: FlowKey,
    },
}

/// One record of a shard's delta stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Delta {
    /// When the record was made (the worker's clock).
    pub at_ms: u64,
    /// When the connection was created (the worker's clock).
    pub created_ms: u64,
    /// What happened.
    pub kind: DeltaKind,
}

impl Delta {
    /// The original key of the connection the record is about.
    pub fn key(&self) -> FlowKey {
        match &self.kind {
            DeltaKind::Create(s) => s.orig,
            DeltaKind::Update(u) => u.key,
            DeltaKind::Refresh { key, .. } | DeltaKind::Delete { key } => *key,
        }
    }
}

const ZERO_KEY: FlowKey = FlowKey::new(Ipv4Addr::UNSPECIFIED, 0, Ipv4Addr::UNSPECIFIED, 0, 0);

#[repr(align(64))]
#[derive(Debug, Default)]
struct Padded(AtomicUsize);

#[derive(Debug)]
struct Ring {
    slots: Box<[Mutex<Delta>]>,
    /// Next slot to read (written by the consumer).
    head: Padded,
    /// Next slot to write (written by the producer).
    tail: Padded,
    /// Records the producer could not push and that are lost (written by
    /// the producer, read by the consumer to start a repair).
    lost: Padded,
}

/// The delta ring is full (the record was not queued).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueFull;

/// The worker's end of a delta ring.
#[derive(Debug)]
pub struct DeltaProducer {
    ring: Arc<Ring>,
    tail: usize,
    /// The consumer's head as last seen (refreshed when the ring looks
    /// full, so most pushes do not read the consumer's cache line).
    head_cache: usize,
}

/// The sync core's end of a delta ring.
#[derive(Debug)]
pub struct DeltaConsumer {
    ring: Arc<Ring>,
    head: usize,
}

/// A delta ring of `capacity` records (rounded up to at least 2).
pub fn delta_queue(capacity: usize) -> (DeltaProducer, DeltaConsumer) {
    let capacity = capacity.max(2);
    let blank = Delta {
        at_ms: 0,
        created_ms: 0,
        kind: DeltaKind::Delete { key: ZERO_KEY },
    };
    let ring = Arc::new(Ring {
        slots: (0..capacity).map(|_| Mutex::new(blank)).collect(),
        head: Padded::default(),
        tail: Padded::default(),
        lost: Padded::default(),
    });
    (
        DeltaProducer {
            ring: ring.clone(),
            tail: 0,
            head_cache: 0,
        },
        DeltaConsumer { ring, head: 0 },
    )
}

impl DeltaProducer {
    /// Appends `d`; refuses it when the ring is full.
    pub fn push(&mut self, d: Delta) -> Result<(), QueueFull> {
        let cap = self.ring.slots.len();
        if self.tail - self.head_cache == cap {
            self.head_cache = self.ring.head.0.load(Ordering::Acquire);
            if self.tail - self.head_cache == cap {
                return Err(QueueFull);
            }
        }
        *self.ring.slots[self.tail % cap]
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = d;
        self.tail += 1;
        self.ring.tail.0.store(self.tail, Ordering::Release);
        Ok(())
    }

    /// Records waiting to be consumed.
    pub fn len(&self) -> usize {
        self.tail - self.ring.head.0.load(Ordering::Acquire)
    }

    /// Whether the ring is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Capacity of the ring.
    pub fn capacity(&self) -> usize {
        self.ring.slots.len()
    }

    /// Records pushed since the ring was made: the position the consumer
    /// reaches once it has taken every one of them.
    pub fn position(&self) -> usize {
        self.tail
    }

    /// Counts a record that could not be pushed and is lost (the
    /// consumer sees the count and has the loss repaired).
    pub fn record_loss(&mut self) {
        let n = self.ring.lost.0.load(Ordering::Relaxed);
        self.ring.lost.0.store(n + 1, Ordering::Release);
    }
}

impl DeltaConsumer {
    /// Takes the oldest record.
    pub fn pop(&mut self) -> Option<Delta> {
        let tail = self.ring.tail.0.load(Ordering::Acquire);
        if self.head == tail {
            return None;
        }
        let cap = self.ring.slots.len();
        let d = *self.ring.slots[self.head % cap]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.head += 1;
        self.ring.head.0.store(self.head, Ordering::Release);
        Some(d)
    }

    /// Takes up to `max` records, oldest first, handing each to `f`;
    /// returns how many.
    pub fn drain(&mut self, max: usize, mut f: impl FnMut(Delta)) -> usize {
        let mut n = 0;
        while n < max {
            let Some(d) = self.pop() else { break };
            f(d);
            n += 1;
        }
        n
    }

    /// Records waiting.
    pub fn len(&self) -> usize {
        self.ring.tail.0.load(Ordering::Acquire) - self.head
    }

    /// Records taken since the ring was made (compare with
    /// [`DeltaProducer::position`]).
    pub fn position(&self) -> usize {
        self.head
    }

    /// Records the producer lost to a full ring since the ring was made.
    pub fn losses(&self) -> usize {
        self.ring.lost.0.load(Ordering::Acquire)
    }

    /// Whether no record waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(i: u64) -> Delta {
        Delta {
            at_ms: i,
            created_ms: 0,
            kind: DeltaKind::Delete { key: ZERO_KEY },
        }
    }

    #[test]
    fn full_ring_refuses_and_keeps_order() {
        let (mut p, mut c) = delta_queue(4);
        for i in 0..4 {
            p.push(d(i)).unwrap();
        }
        assert!(p.push(d(9)).is_err());
        assert_eq!(c.pop().unwrap().at_ms, 0);
        p.push(d(4)).unwrap();
        let mut got = vec![];
        c.drain(10, |x| got.push(x.at_ms));
        assert_eq!(got, vec![1, 2, 3, 4]);
        assert!(c.pop().is_none());
    }

    #[test]
    fn positions_and_losses_are_seen_across_the_ring() {
        let (mut p, mut c) = delta_queue(2);
        p.push(d(0)).unwrap();
        p.push(d(1)).unwrap();
        assert!(p.push(d(2)).is_err());
        p.record_loss();
        assert_eq!((p.position(), c.position(), c.losses()), (2, 0, 1));
        c.drain(10, |_| {});
        assert_eq!(c.position(), p.position());
    }

    #[test]
    fn producer_and_consumer_threads_see_every_record_in_order() {
        let (mut p, mut c) = delta_queue(64);
        const N: u64 = 100_000;
        let t = std::thread::spawn(move || {
            let mut i = 0;
            while i < N {
                if p.push(d(i)).is_ok() {
                    i += 1;
                } else {
                    std::thread::yield_now();
                }
            }
        });
        let mut next = 0;
        while next < N {
            match c.pop() {
                Some(x) => {
                    assert_eq!(x.at_ms, next);
                    next += 1;
                }
                None => std::thread::yield_now(),
            }
        }
        t.join().unwrap();
    }
}
