//! Per-worker counters: written by their worker only, read by anyone.
//!
//! Each worker owns one [`WorkerCounters`]; it adds to its counters with a
//! plain load + store (no locked instruction, no shared cache line: the
//! struct is cache-line aligned), and the control thread reads them with
//! relaxed loads for `tandemctl stats`.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::router::DropReason;

/// Drops that happen in the worker rather than in the per-packet logic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum WorkerDrop {
    /// The TX queue did not take the packet.
    TxQueueFull,
    /// A packet waiting for ARP did not fit in the hold queue.
    HoldQueueFull,
    /// A held packet's next hop did not answer ARP in time.
    NeighbourTimeout,
    /// A multi-segment mbuf (larger than one data room) arrived.
    MultiSegment,
    /// No mbuf was free to build a reply or ARP request.
    NoMbuf,
    /// An ICMP error was suppressed by the rate limit.
    IcmpRateLimited,
    /// The node is passive: its data ports are silent.
    Passive,
    /// The handoff ring of the worker that owns the packet's flow was
    /// full (that worker is overloaded or stalled).
    HandoffFull,
}

impl WorkerDrop {
    /// Number of variants.
    pub const COUNT: usize = 8;
    /// Every variant, in counter order.
    pub const ALL: [WorkerDrop; Self::COUNT] = [
        WorkerDrop::TxQueueFull,
        WorkerDrop::HoldQueueFull,
        WorkerDrop::NeighbourTimeout,
        WorkerDrop::MultiSegment,
        WorkerDrop::NoMbuf,
        WorkerDrop::IcmpRateLimited,
        WorkerDrop::Passive,
        WorkerDrop::HandoffFull,
    ];

    /// Stable snake_case name used in counters and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerDrop::TxQueueFull => "tx_queue_full",
            WorkerDrop::HoldQueueFull => "hold_queue_full",
            WorkerDrop::NeighbourTimeout => "neighbour_timeout",
            WorkerDrop::MultiSegment => "multi_segment",
            WorkerDrop::NoMbuf => "no_mbuf",
            WorkerDrop::IcmpRateLimited => "icmp_rate_limited",
            WorkerDrop::Passive => "passive",
            WorkerDrop::HandoffFull => "handoff_full",
        }
    }
}

/// A counter written by one thread and read by others.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`. Only the owning worker may call this.
    #[inline]
    pub fn add(&self, n: u64) {
        // Single writer: a load and a store are enough and avoid a locked
        // read-modify-write on the hot path.
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    /// Sets the value (for mirrors of state the owner keeps elsewhere).
    /// Only the owning worker may call this.
    #[inline]
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// The current value.
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Everything one worker counts.
#[derive(Debug, Default)]
// 128: the adjacent-line prefetcher pulls cache lines in pairs.
#[repr(align(128))]
pub struct WorkerCounters {
    /// Packets received from all queues.
    pub rx_packets: Counter,
    /// Packets handed to TX queues.
    pub tx_packets: Counter,
    /// Packets routed to another hop.
    pub forwarded: Counter,
    /// ARP and ICMP echo replies sent.
    pub replies: Counter,
    /// Packets held while their next hop was resolved.
    pub held: Counter,
    /// ARP requests sent.
    pub arp_requests_sent: Counter,
    /// ICMP errors sent.
    pub icmp_errors_sent: Counter,
    /// Gratuitous ARPs sent on becoming active.
    pub garps_sent: Counter,
    /// Rejections sent (TCP resets, ICMP unreachables of reject rules).
    pub rejects_sent: Counter,
    /// Packets handed to the worker that owns their flow.
    pub handoffs_out: Counter,
    /// Packets other workers handed to this one.
    pub handoffs_in: Counter,
    /// Frames handed to the worker that holds the output port's TX queue
    /// (the port has fewer TX queues than the node has workers).
    pub tx_handoffs: Counter,
    /// Poll iterations.
    pub polls: Counter,
    /// Poll iterations that found nothing.
    pub idle_polls: Counter,
    /// Times the worker slept (adaptive mode).
    pub sleeps: Counter,
    /// Drops decided by the per-packet logic, by reason.
    pub drops: [Counter; DropReason::COUNT],
    /// Drops in the worker itself, by reason.
    pub worker_drops: [Counter; WorkerDrop::COUNT],
}

impl WorkerCounters {
    /// Counts a drop decided by the per-packet logic.
    #[inline]
    pub fn drop_packet(&self, reason: DropReason) {
        self.drops[reason as usize].add(1);
    }

    /// Counts `n` drops in the worker.
    #[inline]
    pub fn worker_drop(&self, reason: WorkerDrop, n: u64) {
        self.worker_drops[reason as usize].add(n);
    }

    /// Every drop counter with its name, in a stable order.
    pub fn drop_counts(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        DropReason::ALL
            .iter()
            .map(|r| (r.as_str(), self.drops[*r as usize].get()))
            .chain(
                WorkerDrop::ALL
                    .iter()
                    .map(|r| (r.as_str(), self.worker_drops[*r as usize].get())),
            )
    }
}
