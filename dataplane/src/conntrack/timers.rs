//! Expiry: a single-level hashed timer wheel with lazy updates.
//!
//! [`SLOTS`] buckets of [`TICK_MS`] each (8192 x 128 ms, one turn is
//! about 17.5 minutes). An entry sits in the bucket of the deadline it had
//! when it was scheduled, on an intrusive doubly-linked list (links kept
//! beside the entries, 12 bytes each). Activity only moves the entry's
//! deadline, never the entry: when its bucket comes due, the owner
//! re-checks the deadline and either deletes the entry or schedules it
//! again (for a 2 h timeout that is one re-check every 17.5 minutes). A
//! bucket is drained only once its whole time range has passed, so an
//! entry expires at most one tick after its deadline. Draining detaches
//! the bucket to a separate list first, so that entries rescheduled into
//! the same bucket (a full turn later) are not met again in the same pass.

/// Bucket width in milliseconds.
pub(crate) const TICK_MS: u64 = 128;
/// Number of buckets.
pub(crate) const SLOTS: usize = 8192;

const NIL: u32 = u32::MAX;
/// `Link::tick` of an entry on the draining list.
const DRAINING: u32 = u32::MAX - 1;

#[derive(Clone, Copy, Debug)]
struct Link {
    next: u32,
    prev: u32,
    /// The tick the entry is scheduled for (its bucket is `tick % SLOTS`),
    /// `DRAINING`, or `NIL` when not scheduled.
    tick: u32,
}

/// The wheel; entries are the connection slots `0..capacity`.
#[derive(Debug)]
pub(crate) struct TimerWheel {
    heads: Vec<u32>,
    links: Vec<Link>,
    draining: u32,
    /// The next tick to drain.
    cursor: u64,
}

impl TimerWheel {
    pub fn new(capacity: u32, now_ms: u64) -> TimerWheel {
        TimerWheel {
            heads: vec![NIL; SLOTS],
            links: vec![
                Link {
                    next: NIL,
                    prev: NIL,
                    tick: NIL
                };
                capacity as usize
            ],
            draining: NIL,
            cursor: now_ms / TICK_MS,
        }
    }

    /// Bytes of wheel state per entry.
    pub const LINK_BYTES: usize = std::mem::size_of::<Link>();

    /// Puts `id` (not scheduled) in the bucket of `deadline_ms`.
    pub fn schedule(&mut self, id: u32, deadline_ms: u64) {
        debug_assert_eq!(self.links[id as usize].tick, NIL);
        let tick = (deadline_ms / TICK_MS).max(self.cursor);
        let b = (tick % SLOTS as u64) as u32;
        let head = self.heads[b as usize];
        self.links[id as usize] = Link {
            next: head,
            prev: NIL,
            tick: tick as u32,
        };
        if head != NIL {
            self.links[head as usize].prev = id;
        }
        self.heads[b as usize] = id;
    }

    /// Takes `id` off whatever list holds it (no-op if none).
    pub fn unschedule(&mut self, id: u32) {
        let l = self.links[id as usize];
        if l.tick == NIL {
            return;
        }
        if l.prev != NIL {
            self.links[l.prev as usize].next = l.next;
        } else if l.tick == DRAINING {
            self.draining = l.next;
        } else {
            self.heads[l.tick as usize % SLOTS] = l.next;
        }
        if l.next != NIL {
            self.links[l.next as usize].prev = l.prev;
        }
        self.links[id as usize].tick = NIL;
    }

    /// Makes sure `id` is met no later than the bucket of `deadline_ms`:
    /// schedules it if it is not, moves it if it sits in a later bucket
    /// (a deadline moved earlier, e.g. established -> closed). Later
    /// deadlines are left to the lazy re-check.
    pub fn ensure(&mut self, id: u32, deadline_ms: u64) {
        let t = self.links[id as usize].tick;
        if t == DRAINING {
            return;
        }
        if t == NIL || deadline_ms / TICK_MS < u64::from(t) {
            self.unschedule(id);
            self.schedule(id, deadline_ms);
        }
    }

    /// Pops the next entry whose bucket has fully elapsed by `now_ms`
    /// (unlinked; the caller re-checks its deadline and deletes or
    /// reschedules it), or `None` when no bucket is due.
    pub fn pop_due(&mut self, now_ms: u64) -> Option<u32> {
        let now_tick = now_ms / TICK_MS;
        // Ticks before now_tick - SLOTS map to buckets visited anyway.
        if now_tick > self.cursor + SLOTS as u64 {
            self.cursor = now_tick - SLOTS as u64;
        }
        while self.draining == NIL {
            if self.cursor >= now_tick {
                return None;
            }
            let b = (self.cursor % SLOTS as u64) as usize;
            self.cursor += 1;
            let head = std::mem::replace(&mut self.heads[b], NIL);
            let mut i = head;
            while i != NIL {
                self.links[i as usize].tick = DRAINING;
                i = self.links[i as usize].next;
            }
            self.draining = head;
        }
        let id = self.draining;
        self.unschedule(id);
        Some(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_pop_only_after_their_bucket_elapsed() {
        let mut w = TimerWheel::new(8, 0);
        w.schedule(1, 1000);
        w.schedule(2, 5000);
        assert_eq!(w.pop_due(999), None);
        assert_eq!(w.pop_due(1000 + TICK_MS), Some(1));
        assert_eq!(w.pop_due(1000 + TICK_MS), None);
        w.unschedule(2);
        assert_eq!(w.pop_due(10_000), None);
    }

    #[test]
    fn a_far_deadline_is_met_again_each_turn_until_due() {
        let turn = TICK_MS * SLOTS as u64;
        let mut w = TimerWheel::new(4, 0);
        w.schedule(3, 3 * turn);
        let mut now = 0;
        let mut seen = 0;
        while now <= 3 * turn + TICK_MS {
            now += TICK_MS;
            while let Some(id) = w.pop_due(now) {
                seen += 1;
                if now < 3 * turn {
                    w.schedule(id, 3 * turn);
                }
            }
        }
        // Its bucket is 0: met at the end of ticks 0, SLOTS and 2 * SLOTS
        // (not due, rescheduled), then due at the end of tick 3 * SLOTS.
        assert_eq!(seen, 4);
    }
}
