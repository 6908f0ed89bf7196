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
use crate::dpdk::{DpdkError, Eal, Mbuf, MbufRing, RingConsumer};
use std::net::Ipv4Addr;

use crate::flow::{address_hash, owner_of_hash, proto, FlowKey, L4Info};
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

/// Decides where a worker's packets go (no rings: testable alone).
#[derive(Debug)]
pub struct Dispatcher {
    id: usize,
    workers: usize,
    frags: FragmentTable,
    /// Reply keys whose connection another worker holds (DNAT).
    redirects: Arc<Redirects>,
}

/// One worker's end of the dispatch.
pub struct Dispatch {
    decide: Dispatcher,
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
}

impl std::fmt::Debug for Dispatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatch")
            .field("decide", &self.decide)
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
            let (tx_ring, tx_inbound) = MbufRing::create(eal, &format!("{name}-t{w}"), ring_size)?;
            to.push(ring);
            tx_to.push(tx_ring);
            consumers.push((inbound, tx_inbound));
        }
        Ok(consumers
            .into_iter()
            .enumerate()
            .map(|(id, (inbound, tx_inbound))| Dispatch {
                decide: Dispatcher::new(id, workers, redirects.clone()),
                inbound,
                tx_inbound,
                to: to.clone(),
                tx_to: tx_to.clone(),
                stage: (0..workers).map(|_| Vec::new()).collect(),
                tx_stage: (0..workers).map(|_| Vec::new()).collect(),
            })
            .collect())
    }

    /// Where the Ethernet frame `frame` goes (see [`Dispatcher::route`]).
    #[inline]
    pub fn route(&mut self, now_ms: u64, frame: &[u8]) -> Route {
        self.decide.route(now_ms, frame)
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

impl Dispatcher {
    /// The decisions of worker `id` of `workers`.
    pub fn new(id: usize, workers: usize, redirects: Arc<Redirects>) -> Dispatcher {
        Dispatcher {
            id,
            workers,
            frags: FragmentTable::new(FRAGMENT_GROUPS, FRAGMENT_TIMEOUT_MS),
            redirects,
        }
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
        if let Some(key) = quick_key(ip) {
            let owner = self
                .redirects
                .get(&key)
                .unwrap_or_else(|| key.owner(self.workers));
            return self.to_worker(owner);
        }
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
}

/// The flow key of a plain TCP, UDP or SCTP packet (no options, not a
/// fragment, long enough), read straight from the header: the common case,
/// without the full parse. Anything else: `None`.
#[inline]
fn quick_key(ip: &[u8]) -> Option<FlowKey> {
    let h: &[u8; 24] = ip.get(..24)?.try_into().ok()?;
    let proto = h[9];
    if h[0] != 0x45
        || u16::from_be_bytes([h[6], h[7]]) & 0x3fff != 0
        || !matches!(proto, proto::TCP | proto::UDP | proto::SCTP)
    {
        return None;
    }
    Some(FlowKey::new(
        Ipv4Addr::new(h[12], h[13], h[14], h[15]),
        u16::from_be_bytes([h[20], h[21]]),
        Ipv4Addr::new(h[16], h[17], h[18], h[19]),
        u16::from_be_bytes([h[22], h[23]]),
        proto,
    ))
}

/// The input port of a handed packet, and whether it is final.
pub fn handed_port(mbuf: &Mbuf) -> (u16, bool) {
    let p = mbuf.port();
    (p & !FINAL, p & FINAL != 0)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::conntrack::{reply_key, Shard, ShardConfig};
    use crate::flow::{proto, reta_entry, FlowKey, OWNER_TABLE};

    fn checksum(b: &[u8]) -> u16 {
        let mut s: u32 = b
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .sum();
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        !(s as u16)
    }

    /// An Ethernet frame carrying IPv4 `proto` from `src` to `dst` with
    /// `l4` as payload; `frag`: (offset in 8-byte units, more fragments).
    fn frame(
        src: Ipv4Addr,
        dst: Ipv4Addr,
        p: u8,
        l4: &[u8],
        ident: u16,
        frag: (u16, bool),
    ) -> Vec<u8> {
        let mut f = vec![0u8; 14];
        f[12] = 0x08;
        let total = 20 + l4.len();
        let mut ip = vec![0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&ident.to_be_bytes());
        let ff = frag.0 | if frag.1 { 0x2000 } else { 0 };
        ip[6..8].copy_from_slice(&ff.to_be_bytes());
        ip[8] = 64;
        ip[9] = p;
        ip[12..16].copy_from_slice(&src.octets());
        ip[16..20].copy_from_slice(&dst.octets());
        let c = checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(l4);
        f
    }

    /// The L4 header of a packet of flow `k` (TCP SYN, UDP, ICMP echo).
    fn l4_of(k: &FlowKey) -> Vec<u8> {
        match k.proto {
            proto::TCP => {
                let mut t = vec![0u8; 20];
                t[0..2].copy_from_slice(&k.sport.to_be_bytes());
                t[2..4].copy_from_slice(&k.dport.to_be_bytes());
                t[12] = 0x50;
                t[13] = 0x02;
                t[14] = 0xff;
                t
            }
            proto::UDP => {
                let mut u = vec![0u8; 16];
                u[0..2].copy_from_slice(&k.sport.to_be_bytes());
                u[2..4].copy_from_slice(&k.dport.to_be_bytes());
                u[4..6].copy_from_slice(&16u16.to_be_bytes());
                u
            }
            _ => {
                let mut i = vec![8u8, 0, 0, 0, 0, 0, 0, 1];
                i[4..6].copy_from_slice(&k.sport.to_be_bytes());
                let c = checksum(&i);
                i[2..4].copy_from_slice(&c.to_be_bytes());
                i
            }
        }
    }

    fn frame_of(k: &FlowKey) -> Vec<u8> {
        frame(k.src, k.dst, k.proto, &l4_of(k), 1, (0, false))
    }

    fn dispatchers(n: usize) -> Vec<Dispatcher> {
        let r = Arc::new(Redirects::default());
        (0..n).map(|id| Dispatcher::new(id, n, r.clone())).collect()
    }

    fn expect(at: usize, owner: usize) -> Route {
        if at == owner {
            Route::Here
        } else {
            Route::Final(owner)
        }
    }

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// The dispatch, the NIC's redirection table, the SNAT port choice and
    /// the sync core's installs (`FlowKey::owner`) agree on every flow's
    /// owner, for 1 to 16 workers.
    #[test]
    fn dispatch_redirection_table_snat_and_installs_agree_for_1_to_16_workers() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let public = Ipv4Addr::new(198, 18, 2, 1);
        for n in 1..=16 {
            let mut ds = dispatchers(n);
            let mut shards: Vec<Shard> = (0..n)
                .map(|i| {
                    Shard::new(
                        ShardConfig {
                            capacity: 4096,
                            shard: i,
                            shards: n,
                            ..ShardConfig::default()
                        },
                        0,
                    )
                })
                .collect();
            let reta: Vec<u16> = (0..512).map(|i| reta_entry(i, n)).collect();
            for i in 0..300 {
                let x = rng.next();
                let p = [proto::TCP, proto::UDP, proto::ICMP][i % 3];
                let k = FlowKey::new(
                    Ipv4Addr::new(198, 18, 1, (x % 250) as u8 + 1),
                    (x >> 16) as u16 | 1,
                    Ipv4Addr::new(198, 19, (x >> 32) as u8, (x >> 40) as u8),
                    if p == proto::ICMP {
                        0
                    } else {
                        (x >> 48) as u16 | 1
                    },
                    p,
                );
                let owner = k.owner(n);
                assert_eq!(usize::from(reta[k.symmetric_hash() as usize % 512]), owner);
                let (fwd, rev) = (frame_of(&k), frame_of(&reply_key(&k)));
                for (at, d) in ds.iter_mut().enumerate() {
                    assert_eq!(d.route(0, &fwd), expect(at, owner), "{k:?} at {at} of {n}");
                    assert_eq!(d.route(0, &rev), expect(at, owner), "reply of {k:?}");
                }
                // SNAT chosen by the owner: the translated reply lands there.
                if let Ok(nat) = shards[owner].snat(&k, public) {
                    let reply = reply_key(&nat.translated);
                    assert_eq!(reply.owner(n), owner);
                    for (at, d) in ds.iter_mut().enumerate() {
                        assert_eq!(d.route(0, &frame_of(&reply)), expect(at, owner));
                    }
                }
            }
            assert_eq!(OWNER_TABLE % 64, 0);
        }
    }

    #[test]
    fn fragments_go_through_the_owner_of_their_addresses_to_the_flows_owner() {
        let n = 4;
        let mut ds = dispatchers(n);
        // A UDP flow whose owner differs from its fragment holder.
        let (k, holder) = (1..5000u16)
            .map(|sp| {
                FlowKey::new(
                    Ipv4Addr::new(198, 18, 1, 10),
                    sp,
                    Ipv4Addr::new(198, 18, 2, 10),
                    9000,
                    proto::UDP,
                )
            })
            .map(|k| (k, owner_of_hash(address_hash(k.src, k.dst), n)))
            .find(|(k, h)| k.owner(n) != *h)
            .expect("a flow owned away from its address pair's holder");
        let owner = k.owner(n);
        let mut udp = l4_of(&k);
        udp.resize(24, 0);
        // The whole datagram: 24 bytes here, 16 in the later fragment.
        udp[4..6].copy_from_slice(&40u16.to_be_bytes());
        let first = frame(k.src, k.dst, proto::UDP, &udp, 77, (0, true));
        let later = frame(k.src, k.dst, proto::UDP, &[0u8; 16], 77, (3, false));
        let other = (0..n).find(|&w| w != holder).unwrap();
        // Anywhere but the holder: to the holder, to be dispatched again.
        assert_eq!(ds[other].route(0, &first), Route::Dispatch(holder));
        assert_eq!(ds[other].route(0, &later), Route::Dispatch(holder));
        // A later fragment whose first one the holder has not seen stays.
        assert_eq!(ds[holder].route(0, &later), Route::Here);
        // The holder learns the flow from the first fragment.
        assert_eq!(ds[holder].route(0, &first), Route::Final(owner));
        assert_eq!(ds[holder].route(1, &later), Route::Final(owner));
    }

    #[test]
    fn icmp_errors_go_to_the_quoted_flows_owner_and_redirects_win() {
        let n = 5;
        let mut ds = dispatchers(n);
        let k = FlowKey::new(
            Ipv4Addr::new(198, 18, 1, 10),
            40_000,
            Ipv4Addr::new(198, 18, 2, 10),
            53,
            proto::UDP,
        );
        let owner = k.owner(n);
        // A router on the way reports k's packet: type 3, the quoted
        // header and 8 bytes of UDP.
        let quoted = frame(k.src, k.dst, proto::UDP, &l4_of(&k)[..8], 5, (0, false));
        let mut icmp = vec![3u8, 1, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&quoted[14..]);
        let c = checksum(&icmp);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        let router = Ipv4Addr::new(198, 18, 2, 254);
        let err = frame(router, k.src, proto::ICMP, &icmp, 9, (0, false));
        for (at, d) in ds.iter_mut().enumerate() {
            assert_eq!(d.route(0, &err), expect(at, owner), "at {at}");
        }
        // A reply key recorded for another worker (DNAT) goes there.
        let r = reply_key(&k);
        let elsewhere = (owner + 1) % n;
        ds[0].redirects.insert(r, elsewhere);
        for (at, d) in ds.iter_mut().enumerate() {
            assert_eq!(d.route(0, &frame_of(&r)), expect(at, elsewhere));
            assert_eq!(
                d.route(0, &frame_of(&k)),
                expect(at, owner),
                "the original direction is not redirected"
            );
        }
        ds[0].redirects.remove(&r, elsewhere);
        assert!(ds[0].redirects.is_empty());
    }
}
