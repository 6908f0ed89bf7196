//! The software dispatch between workers: a packet that arrived at a
//! worker that does not own its flow is handed to the owner over a
//! lock-free ring, in bursts (as VPP's handoff does). The owner is
//! [`crate::flow::owner_of_hash`] of the flow's symmetric hash, the one
//! function the NIC's redirection table, the SNAT port choice and the sync
//! core also use.
//!
//! What needs it: every packet on a port the NIC cannot steer (one queue,
//! no RSS, a kernel fanout), and on an RSS port what the NIC hashes
//! differently from the owner: ICMP (the identifier), GRE with a key, ICMP
//! errors (their flow is the quoted one), fragments.
//!
//! Fragments: a later fragment has no ports, so its flow is known only to
//! whoever saw the first fragment. Every fragment of a datagram therefore
//! goes first to the worker that owns its address pair (the fragment
//! owner), which remembers the first fragment's flow and hands each
//! fragment on to the flow's owner, marked final so that it is not
//! dispatched again.
//!
//! A ring that is full drops the packet, counted as `handoff_full`.

use std::sync::Arc;

use crate::conntrack::Redirects;
use crate::counters::{WorkerCounters, WorkerDrop};
use crate::dpdk::{Eal, Mbuf, MbufRing, RingConsumer, DpdkError};
use crate::flow::{address_hash, owner_of_hash, L4Info};
use crate::frag::FragmentTable;
use crate::parse::{parse_ipv4, Fragment};

/// Marks a handed packet as final in the port field of its mbuf: the
/// receiver processes it without dispatching it again.
const FINAL: u16 = 0x8000;

/// Fragment groups a dispatcher remembers (first fragments whose later
/// fragments may still come).
const FRAGMENT_GROUPS: usize = 1024;

/// How long a fragment group is remembered.
const FRAGMENT_TIMEOUT_MS: u64 = 2_000;

/// Where a packet goes, as the dispatch decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// This worker processes it.
    Here,
    /// Hand it to this worker, which processes it.
    Final(usize),
    /// Hand it to this worker, which dispatches it again (a fragment to
    /// its fragment owner).
    Dispatch(usize),
}

/// One worker's end of the dispatch.
pub struct Dispatch {
    id: usize,
    workers: usize,
    /// Packets handed to this worker.
    inbound: RingConsumer,
    /// Frames other workers want sent on this worker's TX queues.
    tx_inbound: RingConsumer,
    /// Every worker's inbound ring, by worker id.
    to: Vec<Arc<MbufRing>>,
    /// Every worker's TX ring, by worker id.
    tx_to: Vec<Arc<MbufRing>>,
    stage: Vec<Vec<Mbuf>>,
    tx_stage: Vec<Vec<Mbuf>>,
    frags: FragmentTable,
    /// Reply keys whose connection another worker holds (DNAT).
    redirects: Arc<Redirects>,
}

impl std::fmt::Debug for Dispatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatch")
            .field("id", &self.id)
            .field("workers", &self.workers)
            .finish_non_exhaustive()
    }
}

impl Dispatch {
    /// The dispatch ends of `workers` workers, each with rings of
    /// `ring_size` packets (`name` prefixes the rings' names), sharing the
    /// shards' `redirects`.
    pub fn build(
        eal: &Eal,
        name: &str,
        workers: usize,
        ring_size: usize,
        redirects: &Arc<Redirects>,
    ) -> Result<Vec<Dispatch>, DpdkError> {
        let mut to = Vec::with_capacity(workers);
        let mut tx_to = Vec::with_capacity(workers);
        let mut consumers = Vec::with_capacity(workers);
        for w in 0..workers {
            let (ring, inbound) = MbufRing::create(eal, &format!("{name}-h{w}"), ring_size)?;
            let (tx_ring, tx_inbound) =
                MbufRing::create(eal, &format!("{name}-t{w}"), ring_size)?;
            to.push(ring);
            tx_to.push(tx_ring);
            consumers.push((inbound, tx_inbound));
        }
        Ok(consumers
            .into_iter()
            .enumerate()
            .map(|(id, (inbound, tx_inbound))| Dispatch {
                id,
                workers,
                inbound,
                tx_inbound,
                to: to.clone(),
                tx_to: tx_to.clone(),
                stage: (0..workers).map(|_| Vec::new()).collect(),
                tx_stage: (0..workers).map(|_| Vec::new()).collect(),
                frags: FragmentTable::new(FRAGMENT_GROUPS, FRAGMENT_TIMEOUT_MS),
                redirects: redirects.clone(),
            })
            .collect())
    }

    /// This worker's id.
    pub fn id(&self) -> usize {
        self.id
    }

    /// Where the Ethernet frame `frame` goes. Anything but IPv4 (ARP,
    /// LACP, ...) and anything unparsable is processed here (the router
    /// counts what it drops).
    pub fn route(&mut self, now_ms: u64, frame: &[u8]) -> Route {
        if frame.get(12..14) != Some(&[0x08, 0x00][..]) {
            return Route::Here;
        }
        let Some(ip) = frame.get(14..) else {
            return Route::Here;
        };
        let Ok(p) = parse_ipv4(ip, false) else {
            return Route::Here;
        };
        let key = match p.fragment {
            Fragment::None => match p.l4 {
                L4Info::IcmpError { inner, .. } => {
                    // About a packet of either direction of a connection.
                    if let Some(w) = self
                        .redirects
                        .get(&inner)
                        .or_else(|| self.redirects.get(&inner.reverse()))
                    {
                        return self.to_worker(w);
                    }
                    inner
                }
                _ => p.flow,
            },
            Fragment::First { .. } | Fragment::NonFirst { .. } => {
                let holder = owner_of_hash(address_hash(p.src, p.dst), self.workers);
                if holder != self.id {
                    return Route::Dispatch(holder);
                }
                if let Fragment::First { .. } = p.fragment {
                    self.frags.insert(now_ms, &p);
                    p.flow
                } else {
                    let found = self.frags.lookup(now_ms, p.src, p.dst, p.proto, p.ident);
                    if !p.more_fragments {
                        self.frags.remove(p.src, p.dst, p.proto, p.ident);
                    }
                    match found {
                        Some(k) => k,
                        // Its first fragment was not seen: the firewall
                        // here drops it as a miss and counts it.
                        None => return Route::Here,
                    }
                }
            }
        };
        let owner = self
            .redirects
            .get(&key)
            .unwrap_or_else(|| key.owner(self.workers));
        self.to_worker(owner)
    }

    fn to_worker(&self, w: usize) -> Route {
        if w == self.id {
            Route::Here
        } else {
            Route::Final(w)
        }
    }

    /// Stages `mbuf`, received on `in_port`, for worker `to`.
    pub fn hand(&mut self, to: usize, in_port: u16, mut mbuf: Mbuf, final_: bool) {
        mbuf.set_port(if final_ { in_port | FINAL } else { in_port });
        self.stage[to].push(mbuf);
    }

    /// Stages a frame to be sent on `port` by worker `to` (which holds a
    /// TX queue of that port).
    pub fn hand_tx(&mut self, to: usize, port: u16, mut mbuf: Mbuf) {
        mbuf.set_port(port);
        self.tx_stage[to].push(mbuf);
    }

    /// Puts the staged packets into their rings; what does not fit is
    /// dropped and counted.
    pub fn flush(&mut self, counters: &WorkerCounters) {
        for (w, staged) in self.stage.iter_mut().enumerate() {
            if staged.is_empty() {
                continue;
            }
            let n = self.to[w].enqueue(staged);
            counters.handoffs_out.add(n as u64);
            if !staged.is_empty() {
                counters.worker_drop(WorkerDrop::HandoffFull, staged.len() as u64);
                staged.clear();
            }
        }
        for (w, staged) in self.tx_stage.iter_mut().enumerate() {
            if staged.is_empty() {
                continue;
            }
            let n = self.tx_to[w].enqueue(staged);
            counters.tx_handoffs.add(n as u64);
            if !staged.is_empty() {
                counters.worker_drop(WorkerDrop::HandoffFull, staged.len() as u64);
                staged.clear();
            }
        }
    }

    /// Takes up to `max` packets handed to this worker into `out`.
    pub fn receive(&mut self, out: &mut Vec<Mbuf>, max: usize) -> usize {
        self.inbound.dequeue(out, max)
    }

    /// Takes up to `max` frames to send into `out`; each one's port is
    /// its output port.
    pub fn receive_tx(&mut self, out: &mut Vec<Mbuf>, max: usize) -> usize {
        self.tx_inbound.dequeue(out, max)
    }
}

/// The input port of a handed packet, and whether it is final.
pub fn handed_port(mbuf: &Mbuf) -> (u16, bool) {
    let p = mbuf.port();
    (p & !FINAL, p & FINAL != 0)
}
