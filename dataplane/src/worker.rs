//! The poll-mode worker: owns one RX/TX queue pair per port, moves packets
//! in bursts through the [`Router`], and backs off when idle in adaptive
//! mode so that a shared machine keeps its other threads on time.

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, Sender};

use crate::conntrack::BucketMask;
use crate::counters::{WorkerCounters, WorkerDrop};
use crate::dispatch::{handed_port, Dispatch, Route};
use crate::dpdk::{self, Mbuf, Mempool, RxQueue, TxQueue};
use crate::firewall::{ConnChunk, ConnQuery, Firewall};
use crate::hadata::{self, HaDataPath};
use crate::policy::Policy;
use crate::router::{Action, HeldResult, Router};
use crate::sync::{Install, WorkerSync};

/// What the control thread asks of a worker; the worker serves it between
/// bursts, so nothing it owns is ever shared.
#[derive(Debug)]
pub enum WorkerCommand {
    /// Switch to this policy snapshot.
    SetPolicy(Arc<Policy>),
    /// One step of a listing: the connections the query wants among at
    /// most `slots` table slots from slot `from` (see
    /// [`Firewall::list_chunk`]).
    ListConnections {
        /// Which ones.
        query: ConnQuery,
        /// The first slot to walk.
        from: usize,
        /// How many slots to walk (at most [`MAX_SLOTS_PER_COMMAND`]).
        slots: usize,
        /// Where to send them.
        reply: Sender<ConnChunk>,
    },
    /// One step of a flush: deletes the connections of at most `slots`
    /// table slots from slot `from`; sends back how many and where the
    /// next step starts.
    Flush {
        /// The first slot.
        from: usize,
        /// How many slots (at most [`MAX_SLOTS_PER_COMMAND`]).
        slots: usize,
        /// Where to send the count and the next slot.
        reply: Sender<(u64, Option<usize>)>,
    },
    /// Send back the digest of the replicated part of the table.
    Digest {
        /// Where to send it.
        reply: Sender<crate::conntrack::TableDigest>,
    },
    /// A fault injected by a test (tandemd allows it only when started
    /// with `TANDEM_TEST_FAULTS=1`): the black-hole watchdog must notice.
    Fault(WorkerFault),
    /// The node became a cluster member (see
    /// [`crate::node::Node::enable_ha`]).
    EnableHa(Box<HaWorker>),
    /// HA parameters changed at run time (`ha set`).
    SetHaParams {
        /// See [`WorkerSettings::garp_interval_ms`].
        garp_interval_ms: u64,
        /// See [`WorkerSettings::lacp_quiet_when_passive`].
        lacp_quiet_when_passive: bool,
        /// Only connections older than this are synchronized (F10).
        sync_min_age_ms: u64,
    },
}

/// What a worker of a node that becomes a cluster member gets.
#[derive(Debug)]
pub struct HaWorker {
    /// Its end of the HA path over the data ports.
    pub ha_data: HaDataPath,
    /// Its side of the state sync (a worker with a firewall).
    pub sync: Option<WorkerSync>,
    /// See [`WorkerSettings::garp_count`].
    pub garp_count: u8,
    /// See [`WorkerSettings::garp_interval_ms`].
    pub garp_interval_ms: u64,
    /// See [`WorkerSettings::garp_spacing_ms`].
    pub garp_spacing_ms: u64,
    /// See [`WorkerSettings::lacp_quiet_when_passive`].
    pub lacp_quiet_when_passive: bool,
    /// Only connections older than this are synchronized (F10).
    pub sync_min_age_ms: u64,
    /// How long TCP windows are tracked loosely after a takeover.
    pub takeover_grace_ms: u64,
}

/// The most table slots a worker walks for one listing or flush command:
/// the work a command may take from the packets is bounded whatever the
/// caller asks.
pub const MAX_SLOTS_PER_COMMAND: usize = 65_536;

/// The longest stall a test may inject into a worker.
pub const MAX_INJECTED_STALL: Duration = Duration::from_secs(10);

/// Faults a test can inject into a worker (see [`WorkerCommand::Fault`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerFault {
    /// Stop polling for this long (at most [`MAX_INJECTED_STALL`]), as a
    /// worker stuck in a loop would.
    Stall(Duration),
    /// Panic: the worker's thread ends.
    Panic,
}

/// Which counter an answer built by the node goes to.
#[derive(Clone, Copy)]
enum Answer {
    IcmpError,
    Reject,
}

/// The role of the node in its cluster, as the workers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    /// Filters and forwards.
    Active = 0,
    /// Silent on the data ports: forwards nothing, answers nothing (it only
    /// learns neighbours from the ARP it hears), holds replicated
    /// connections larval.
    Passive = 1,
}

/// The value the node's role takes while it drains after handing the
/// active role over (make-before-break): passive to the cluster, but its
/// workers still forward the packets of the connections they have, for
/// the neighbours that still send here, and open none.
pub const DRAINING: u8 = 2;

impl Role {
    /// The role stored in `v` ([`DRAINING`] is passive).
    pub fn from_u8(v: u8) -> Role {
        if v == Role::Passive as u8 || v == DRAINING {
            Role::Passive
        } else {
            Role::Active
        }
    }

    /// "active" or "passive".
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Active => "active",
            Role::Passive => "passive",
        }
    }
}

/// How long TCP windows are tracked loosely once a member starts
/// draining (both members forward parts of the same streams).
const DRAIN_GRACE_MS: u64 = 10_000;

/// How often a worker does its housekeeping (connection expiry, fragment
/// table, counter mirrors).
const MAINTENANCE_MS: u64 = 10;

/// How a worker waits when its queues are empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollMode {
    /// Spin forever: a dedicated core per worker (appliances).
    Busy,
    /// Spin, then pause, then sleep with growing intervals up to a cap;
    /// back to spinning as soon as a packet arrives (shared machines).
    Adaptive {
        /// Empty polls before the worker starts sleeping.
        spin_polls: u32,
        /// Longest sleep.
        max_sleep: Duration,
    },
}

/// Settings of one worker.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Worker index.
    pub id: usize,
    /// Packets per RX burst.
    pub burst: usize,
    /// Idle behaviour.
    pub poll_mode: PollMode,
    /// Packets held while ARP resolves their next hop.
    pub hold_capacity: usize,
    /// How long a held packet waits before it is dropped.
    pub hold_timeout_ms: u64,
    /// ICMP errors per second this worker may send.
    pub icmp_errors_per_sec: u32,
    /// Gratuitous ARPs per address this worker sends when the node becomes
    /// active (0 for all workers but one).
    pub garp_count: u8,
    /// While active, repeat the gratuitous ARPs this often (0: only on
    /// becoming active).
    pub garp_interval_ms: u64,
    /// Time between two of the `garp_count` rounds (0: all at once).
    pub garp_spacing_ms: u64,
    /// Ports that are LACP aggregates: the bonding PMD sends its LACPDUs
    /// from TX bursts, so the worker kicks their TX queues regularly.
    pub lacp_ports: Vec<u16>,
    /// While passive, leave the LACP aggregates alone (no RX, no LACPDUs),
    /// so partners take this member's links out of distribution.
    pub lacp_quiet_when_passive: bool,
}

struct Held {
    mbuf: Mbuf,
    port: u16,
    next_hop: Ipv4Addr,
    since_ms: u64,
}

/// A token bucket for ICMP errors (RFC 1812 4.3.2.8: rate-limit them).
struct TokenBucket {
    tokens: u32,
    cap: u32,
    per_sec: u32,
    last_ms: u64,
}

impl TokenBucket {
    fn take(&mut self, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.last_ms);
        let refill = (elapsed * u64::from(self.per_sec) / 1000) as u32;
        if refill > 0 {
            self.tokens = self.tokens.saturating_add(refill).min(self.cap);
            self.last_ms = now_ms;
        }
        if self.tokens > 0 {
            self.tokens -= 1;
            true
        } else {
            false
        }
    }
}

/// One poll-mode worker and everything it owns.
pub struct Worker {
    settings: WorkerSettings,
    rx: Vec<RxQueue>,
    tx: Vec<TxQueue>,
    /// Packets waiting to be sent, per TX queue (same index as `tx`).
    pending: Vec<Vec<Mbuf>>,
    /// Index into `tx` by port id.
    tx_index: Vec<Option<usize>>,
    router: Arc<Router>,
    pool: Arc<Mempool>,
    counters: Arc<WorkerCounters>,
    held: VecDeque<Held>,
    icmp_bucket: TokenBucket,
    epoch: Instant,
    firewall: Option<Firewall>,
    commands: Option<Receiver<WorkerCommand>>,
    next_maintenance_ms: u64,
    role: Arc<AtomicU8>,
    /// Bumped by the control thread to have the addresses announced again
    /// (gratuitous ARP) while active.
    announce_gen: Arc<std::sync::atomic::AtomicU64>,
    announce_seen: u64,
    current_role: Role,
    /// Passive, but still forwarding known connections ([`DRAINING`]).
    draining: bool,
    sync: Option<WorkerSync>,
    bulk_cursor: Option<usize>,
    /// The dump generation last asked for by the sync core.
    dump_gen: u64,
    /// The digest buckets of the dump in progress.
    dump_mask: BucketMask,
    /// The last drain-point digest taken.
    digest_gen: u64,
    /// When the peer's bulk in progress began (this worker's clock), and
    /// the buckets it carries.
    bulk_since: Option<(u64, BucketMask)>,
    /// A sweep of unconfirmed larval entries: (confirmed before, cursor,
    /// buckets).
    sweep: Option<(u64, usize, BucketMask)>,
    ha_data: Option<HaDataPath>,
    /// The handoff to the other workers (several workers only).
    dispatch: Option<Dispatch>,
    /// By port id: the worker whose TX queue sends for this one (the port
    /// has fewer TX queues than the node has workers).
    tx_proxy: Vec<Option<usize>>,
    /// Admitted packets waiting to be routed, with their input port.
    batch: Vec<(u16, Mbuf)>,
    next_garp_ms: u64,
    garp_rounds_left: u8,
    next_garp_round_ms: u64,
}

impl Worker {
    /// Builds a worker from its queues (one RX and one TX queue per port).
    /// `epoch` is the node-wide time origin shared by every worker, so the
    /// shared neighbour table sees one clock.
    pub fn new(
        settings: WorkerSettings,
        rx: Vec<RxQueue>,
        tx: Vec<TxQueue>,
        router: Arc<Router>,
        pool: Arc<Mempool>,
        counters: Arc<WorkerCounters>,
        epoch: Instant,
    ) -> Worker {
        let max_port = tx.iter().map(|q| q.port() as usize).max().unwrap_or(0);
        let mut tx_index = vec![None; max_port + 1];
        for (i, q) in tx.iter().enumerate() {
            tx_index[q.port() as usize] = Some(i);
        }
        let burst = settings.burst.clamp(1, dpdk::MAX_BURST);
        let pending = tx.iter().map(|_| Vec::with_capacity(burst * 4)).collect();
        let icmp_bucket = TokenBucket {
            tokens: settings.icmp_errors_per_sec,
            cap: settings.icmp_errors_per_sec.max(1),
            per_sec: settings.icmp_errors_per_sec,
            last_ms: 0,
        };
        Worker {
            held: VecDeque::with_capacity(settings.hold_capacity),
            settings: WorkerSettings { burst, ..settings },
            rx,
            tx,
            pending,
            tx_index,
            router,
            pool,
            counters,
            icmp_bucket,
            epoch,
            firewall: None,
            commands: None,
            next_maintenance_ms: 0,
            role: Arc::new(AtomicU8::new(Role::Active as u8)),
            announce_gen: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            announce_seen: 0,
            current_role: Role::Active,
            draining: false,
            sync: None,
            bulk_cursor: None,
            dump_gen: 0,
            dump_mask: BucketMask::ALL,
            digest_gen: 0,
            bulk_since: None,
            sweep: None,
            ha_data: None,
            dispatch: None,
            tx_proxy: Vec::new(),
            batch: Vec::with_capacity(dpdk::MAX_BURST),
            next_garp_ms: 0,
            garp_rounds_left: 0,
            next_garp_round_ms: 0,
        }
    }

    /// Takes the consumer side of this worker's delta ring (for the sync
    /// core), if the worker filters.
    pub fn take_delta_consumer(&mut self) -> Option<crate::conntrack::DeltaConsumer> {
        self.firewall.as_mut()?.shard_mut().take_delta_consumer()
    }

    /// Connects this worker to the others: packets it does not own go to
    /// their owner; frames for a port it has no TX queue of go to the
    /// worker in `tx_proxy` (by port id).
    pub fn with_dispatch(mut self, dispatch: Dispatch, tx_proxy: Vec<Option<usize>>) -> Worker {
        self.dispatch = Some(dispatch);
        self.tx_proxy = tx_proxy;
        self
    }

    /// Connects this worker to the HA path over the data network
    /// (last-resort heartbeats and ICMP checks, see [`crate::hadata`]).
    pub fn with_ha_data(mut self, path: HaDataPath) -> Worker {
        self.ha_data = Some(path);
        self
    }

    /// Handles an HA frame (classified by [`hadata::classify`]), before the
    /// policy and the role: policed first (port, token bucket), then a
    /// check request is answered at once (in either role) and heartbeats
    /// and check answers are handed to the control thread. Whatever is
    /// refused is counted and its mbuf freed.
    fn handle_ha_frame(&mut self, now: u64, in_port: u16, kind: hadata::Kind, mut mbuf: Mbuf) {
        let Some(ha) = &mut self.ha_data else { return };
        if !ha.admit(now, in_port, kind) {
            return;
        }
        if kind != hadata::Kind::ProbeRequest {
            ha.deliver(in_port, kind, mbuf.data());
            return;
        }
        let Some(mac) = self.router.interface(in_port).map(|i| i.mac.0) else {
            return;
        };
        if ha.answer(mbuf.data_mut(), mac) {
            self.enqueue(in_port, mbuf);
        }
    }

    /// Sends the frames the control thread queued (worker 0 only).
    fn send_ha_frames(&mut self) {
        let mut any = false;
        while let Some(out) = self.ha_data.as_ref().and_then(|h| h.next_outgoing()) {
            let m = self.pool.alloc().and_then(|mut m| {
                let frame = out.frame();
                let buf = m.append(u16::try_from(frame.len()).ok()?)?;
                buf.copy_from_slice(frame);
                Some(m)
            });
            if let Some(ha) = &self.ha_data {
                ha.sent(m.is_some());
            }
            if let Some(m) = m {
                self.enqueue(out.port, m);
                any = true;
            }
        }
        if any {
            self.flush_all();
        }
    }

    /// Connects this worker's shard to the sync core.
    pub fn set_sync(&mut self, sync: WorkerSync) {
        self.sync = Some(sync);
    }

    /// Installs what the peer replicated (bounded per call; as an active
    /// member, without ever overriding a live entry), sweeps the larval
    /// entries a complete bulk did not confirm, and serves a bulk-dump
    /// request a little at a time.
    fn serve_sync(&mut self) {
        let (Some(sync), Some(fw)) = (&self.sync, &mut self.firewall) else {
            return;
        };
        let want = sync.dump.requested.load(Ordering::Acquire);
        let digest = sync.dump.digest_requested.load(Ordering::Acquire);
        if sync.installs.is_empty()
            && want == self.dump_gen
            && digest == self.digest_gen
            && self.bulk_cursor.is_none()
            && self.sweep.is_none()
        {
            return;
        }
        let now = self.epoch.elapsed().as_millis() as u64;
        // A draining member applies the new active's records as a passive
        // does (the new active is the authority: its state updates must
        // land, or the entries stay at what they were at the swap); the
        // entries it has stay live meanwhile, since `apply` does not make
        // a live entry larval.
        let active = self.current_role == Role::Active;
        for _ in 0..1024 {
            let Some(item) = sync.installs.pop() else {
                break;
            };
            match item {
                Install::Record(d) => {
                    let _ = if active {
                        fw.shard_mut().apply_active(now, &d)
                    } else {
                        fw.shard_mut().apply(now, &d)
                    };
                }
                Install::BulkStart { mask } => self.bulk_since = Some((now, mask)),
                Install::BulkEnd { complete } => {
                    let since = self.bulk_since.take();
                    if let (true, false, Some((before, mask))) = (complete, active, since) {
                        self.sweep = Some((before, 0, mask));
                    }
                    sync.dump.ends_applied.fetch_add(1, Ordering::AcqRel);
                }
                Install::Digest { gen } => {
                    // Everything before the marker is applied: the digest
                    // of this point of the peer's stream.
                    sync.dump.put_digest(gen, fw.shard().digest(), 0);
                }
            }
        }
        if digest != self.digest_gen {
            // At a drain point: the digest, and how far the ring had come.
            self.digest_gen = digest;
            let pos = fw.shard().delta_position() as u64;
            sync.dump.put_digest(digest, fw.shard().digest(), pos);
        }
        if let Some((before, cursor, mask)) = &mut self.sweep {
            fw.shard_mut()
                .sweep_larval_buckets(now, *before, cursor, 16_384, mask);
            if *cursor >= fw.shard().capacity() {
                self.sweep = None;
            }
        }
        if want != self.dump_gen {
            // A new dump (or none): start the walk over.
            self.dump_gen = want;
            self.bulk_cursor = (want != 0).then_some(0);
            if let Ok(m) = sync.dump.mask.lock() {
                self.dump_mask = *m;
            }
        }
        if let Some(cursor) = &mut self.bulk_cursor {
            fw.shard_mut()
                .bulk_sync_buckets(now, cursor, 4096, &self.dump_mask);
            if *cursor >= fw.shard().capacity() {
                self.bulk_cursor = None;
                let end = fw.shard().delta_position() as u64;
                sync.dump.end.store(end, Ordering::Release);
                sync.dump.done.store(want, Ordering::Release);
            }
        }
    }

    /// Announces the addresses again whenever `gen` is bumped (while
    /// active).
    pub fn with_announce(mut self, gen: Arc<std::sync::atomic::AtomicU64>) -> Worker {
        self.announce_seen = gen.load(Ordering::Acquire);
        self.announce_gen = gen;
        self
    }

    /// Follows the node's role (active when not given).
    pub fn with_role(mut self, role: Arc<AtomicU8>) -> Worker {
        self.current_role = Role::from_u8(role.load(Ordering::Acquire));
        self.role = role;
        self
    }

    /// Whether this worker forwards: active, or passive and draining.
    fn forwarding(&self) -> bool {
        self.current_role == Role::Active || self.draining
    }

    /// Applies a role change the control thread published: on becoming
    /// active, replicated connections go live (with the takeover grace
    /// period for TCP windows) before the first packet is forwarded, and
    /// the node announces its addresses.
    fn follow_role(&mut self) {
        let raw = self.role.load(Ordering::Acquire);
        let (role, draining) = (Role::from_u8(raw), raw == DRAINING);
        if role == self.current_role && draining == self.draining {
            return;
        }
        self.current_role = role;
        self.draining = draining;
        if let Some(fw) = &mut self.firewall {
            fw.set_draining(draining);
        }
        if draining {
            // Handing over: the entries stay live for the packets that
            // still come here; the new active forwards the same streams,
            // so TCP windows are tracked loosely meanwhile.
            let grace = self.now_ms() + DRAIN_GRACE_MS;
            if let Some(fw) = &mut self.firewall {
                if fw.shard().loose_until_ms() < grace {
                    fw.shard_mut().set_loose_until(grace);
                }
            }
        } else if role == Role::Active {
            let now = self.now_ms();
            if let Some(fw) = &mut self.firewall {
                fw.shard_mut().activate_all(now);
                fw.publish();
            }
            // A sweep belongs to a passive table.
            self.sweep = None;
            self.announce();
            self.next_garp_ms = now + self.settings.garp_interval_ms;
        } else if let Some(fw) = &mut self.firewall {
            // The new active's stream is authoritative from now on: our
            // entries wait larval for its bulk to confirm or sweep them.
            fw.shard_mut().deactivate_all();
            fw.publish();
        }
    }

    /// Sends the gratuitous ARPs of every address of every port.
    /// Starts a series of `garp_count` rounds of gratuitous ARPs for every
    /// address, `garp_spacing_ms` apart (all at once when 0); the first
    /// round leaves now.
    fn announce(&mut self) {
        if self.settings.garp_count == 0 {
            return;
        }
        let rounds = if self.settings.garp_spacing_ms == 0 {
            self.settings.garp_count
        } else {
            1
        };
        self.garp_round(rounds);
        self.garp_rounds_left = self.settings.garp_count - rounds;
        self.next_garp_round_ms = self.now_ms() + self.settings.garp_spacing_ms;
    }

    /// The rest of a series started by [`Worker::announce`], when due.
    fn announce_more(&mut self, now: u64) {
        if self.garp_rounds_left > 0 && now >= self.next_garp_round_ms {
            self.garp_round(1);
            self.garp_rounds_left -= 1;
            self.next_garp_round_ms = now + self.settings.garp_spacing_ms;
        }
    }

    /// `rounds` gratuitous ARPs for every address of every port.
    fn garp_round(&mut self, rounds: u8) {
        let router = self.router.clone();
        for _ in 0..rounds {
            for iface in router.interfaces() {
                for &(addr, _) in &iface.addresses {
                    let Some(mut m) = self.pool.alloc() else {
                        self.counters.worker_drop(WorkerDrop::NoMbuf, 1);
                        continue;
                    };
                    let Some(buf) = m.append(64) else { continue };
                    if let Some(len) = router.build_garp(iface.port, addr, buf) {
                        m.set_len(len);
                        self.counters.garps_sent.add(1);
                        self.enqueue(iface.port, m);
                    }
                }
            }
        }
        self.flush_all();
    }

    /// Makes this worker a stateful firewall (without one it routes
    /// everything it may).
    pub fn with_firewall(mut self, firewall: Firewall) -> Worker {
        self.firewall = Some(firewall);
        self
    }

    /// Lets the control thread reach this worker.
    pub fn with_commands(mut self, commands: Receiver<WorkerCommand>) -> Worker {
        self.commands = Some(commands);
        self
    }

    fn serve_commands(&mut self, now: u64) {
        let Some(rx) = &self.commands else { return };
        while let Ok(cmd) = rx.try_recv() {
            match cmd {
                WorkerCommand::SetPolicy(p) => {
                    if let Some(fw) = &mut self.firewall {
                        fw.set_policy(now, p);
                    }
                }
                WorkerCommand::SetHaParams {
                    garp_interval_ms,
                    lacp_quiet_when_passive,
                    sync_min_age_ms,
                } => {
                    self.settings.garp_interval_ms = garp_interval_ms;
                    self.settings.lacp_quiet_when_passive = lacp_quiet_when_passive;
                    if let Some(fw) = &mut self.firewall {
                        fw.shard_mut().set_sync_min_age(sync_min_age_ms);
                    }
                }
                WorkerCommand::EnableHa(h) => {
                    let h = *h;
                    self.ha_data = Some(h.ha_data);
                    if let Some(sync) = h.sync {
                        self.sync = Some(sync);
                    }
                    self.settings.garp_count = h.garp_count;
                    self.settings.garp_interval_ms = h.garp_interval_ms;
                    self.settings.garp_spacing_ms = h.garp_spacing_ms;
                    self.settings.lacp_quiet_when_passive = h.lacp_quiet_when_passive;
                    if let Some(fw) = &mut self.firewall {
                        let shard = fw.shard_mut();
                        shard.set_sync_min_age(h.sync_min_age_ms);
                        shard.set_takeover_grace(h.takeover_grace_ms);
                    }
                }
                WorkerCommand::ListConnections {
                    query,
                    from,
                    slots,
                    reply,
                } => {
                    let slots = slots.min(MAX_SLOTS_PER_COMMAND);
                    let answer = self
                        .firewall
                        .as_ref()
                        .map_or_else(ConnChunk::default, |fw| {
                            fw.list_chunk(now, &query, from, slots)
                        });
                    let _ = reply.try_send(answer);
                }
                WorkerCommand::Flush { from, slots, reply } => {
                    let slots = slots.min(MAX_SLOTS_PER_COMMAND);
                    let answer = self
                        .firewall
                        .as_mut()
                        .map_or((0, None), |fw| fw.flush_chunk(now, from, slots));
                    let _ = reply.try_send(answer);
                }
                WorkerCommand::Fault(WorkerFault::Stall(d)) => {
                    std::thread::sleep(d.min(MAX_INJECTED_STALL));
                }
                WorkerCommand::Fault(WorkerFault::Panic) => {
                    panic!(
                        "worker {}: panic injected by a test (tandemctl debug panic-worker)",
                        self.settings.id
                    );
                }
                WorkerCommand::Digest { reply } => {
                    let d = self
                        .firewall
                        .as_ref()
                        .map(|fw| fw.shard().digest())
                        .unwrap_or_default();
                    let _ = reply.try_send(d);
                }
            }
        }
    }

    fn maintain(&mut self) {
        let now = self.now_ms();
        if now < self.next_maintenance_ms {
            return;
        }
        self.next_maintenance_ms = now + MAINTENANCE_MS;
        self.serve_commands(now);
        self.kick_lacp();
        let gen = self.announce_gen.load(Ordering::Acquire);
        if gen != self.announce_seen {
            self.announce_seen = gen;
            if self.current_role == Role::Active {
                self.announce();
            }
        }
        if self.current_role == Role::Active {
            self.announce_more(now);
        } else {
            self.garp_rounds_left = 0;
        }
        let every = self.settings.garp_interval_ms;
        if every > 0 && self.current_role == Role::Active && now >= self.next_garp_ms {
            if self.next_garp_ms != 0 {
                self.announce();
            }
            self.next_garp_ms = now + every;
        }
        if let Some(fw) = &mut self.firewall {
            fw.maintain(now);
        }
    }

    /// An empty TX burst on every LACP aggregate, for its LACPDUs.
    fn kick_lacp(&mut self) {
        if self.lacp_quiet() {
            return;
        }
        for &port in &self.settings.lacp_ports {
            if let Some(i) = self.tx_index.get(usize::from(port)).copied().flatten() {
                self.tx[i].kick();
            }
        }
    }

    /// Passive with LACP kept out of distribution.
    fn lacp_quiet(&self) -> bool {
        self.settings.lacp_quiet_when_passive && !self.forwarding()
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Polls until `stop` is set.
    pub fn run(&mut self, stop: &AtomicBool) {
        let mut empty_polls: u32 = 0;
        let mut sleep = Duration::from_micros(1);
        let mut rx_buf: Vec<Mbuf> = Vec::with_capacity(self.settings.burst);
        while !stop.load(Ordering::Relaxed) {
            self.follow_role();
            self.serve_sync();
            self.send_ha_frames();
            let n = self.poll_once(&mut rx_buf);
            self.maintain();
            self.counters.polls.add(1);
            if n > 0 {
                empty_polls = 0;
                sleep = Duration::from_micros(1);
                continue;
            }
            self.counters.idle_polls.add(1);
            if let PollMode::Adaptive {
                spin_polls,
                max_sleep,
            } = self.settings.poll_mode
            {
                empty_polls = empty_polls.saturating_add(1);
                if empty_polls < spin_polls {
                    dpdk::pause();
                } else {
                    std::thread::sleep(sleep);
                    self.counters.sleeps.add(1);
                    sleep = (sleep * 2).min(max_sleep);
                }
            }
        }
        self.flush_all();
    }

    /// One pass over every RX queue, the held packets and the TX buffers.
    /// Returns the number of packets received.
    pub fn poll_once(&mut self, rx_buf: &mut Vec<Mbuf>) -> usize {
        let mut total = 0;
        let quiet = self.lacp_quiet();
        for qi in 0..self.rx.len() {
            if quiet && self.settings.lacp_ports.contains(&self.rx[qi].port()) {
                continue;
            }
            let n = self.rx[qi].rx_burst(rx_buf, self.settings.burst);
            if n == 0 {
                continue;
            }
            total += n;
            self.counters.rx_packets.add(n as u64);
            let in_port = self.rx[qi].port();
            let now = self.now_ms();
            for mbuf in rx_buf.drain(..) {
                self.admit(now, in_port, mbuf, false);
            }
            self.process_batch(now);
            if let Some(d) = &mut self.dispatch {
                d.flush(&self.counters);
            }
        }
        total += self.serve_handoffs(rx_buf);
        if !self.held.is_empty() {
            self.service_held(self.now_ms());
        }
        self.flush_all();
        total
    }

    /// Processes what other workers handed to this one: packets whose flow
    /// it owns (or fragments to dispatch), and frames to send on its TX
    /// queues.
    fn serve_handoffs(&mut self, buf: &mut Vec<Mbuf>) -> usize {
        let Some(d) = &mut self.dispatch else {
            return 0;
        };
        let max = self.settings.burst * 4;
        let n = d.receive(buf, max);
        if n > 0 {
            self.counters.handoffs_in.add(n as u64);
            let now = self.now_ms();
            for mbuf in buf.drain(..) {
                let (in_port, final_) = handed_port(&mbuf);
                self.admit(now, in_port, mbuf, final_);
            }
            self.process_batch(now);
        }
        let mut sent = 0;
        if let Some(d) = &mut self.dispatch {
            sent = d.receive_tx(buf, max);
            d.flush(&self.counters);
        }
        for mbuf in buf.drain(..) {
            let port = mbuf.port();
            match self.tx_index.get(port as usize).copied().flatten() {
                Some(i) => self.pending[i].push(mbuf),
                None => self.counters.worker_drop(WorkerDrop::TxQueueFull, 1),
            }
        }
        n + sent
    }

    /// Admits one frame received on `in_port`: HA frames and, while
    /// passive, everything are dealt with here; unless `dispatched` (a
    /// packet another worker already routed here), a packet whose flow
    /// another worker owns is handed to it; the rest joins the batch this
    /// worker processes (see [`Self::process_batch`]).
    fn admit(&mut self, now: u64, in_port: u16, mut mbuf: Mbuf, dispatched: bool) {
        if mbuf.segments() != 1 {
            self.counters.worker_drop(WorkerDrop::MultiSegment, 1);
            return;
        }
        if self.ha_data.is_some() {
            if let Some(kind) = hadata::classify(mbuf.data()) {
                self.handle_ha_frame(now, in_port, kind, mbuf);
                return;
            }
        }
        if self.current_role != Role::Active {
            let arp = mbuf.data().get(12..14) == Some(&[0x08, 0x06][..]);
            // Silent: only learn neighbours from ARP (warm for a takeover;
            // a draining member forwards, but must not answer for the
            // addresses the new active announces).
            if !self.draining || arp {
                if arp {
                    let _ = self.router.process(now, in_port, mbuf.data_mut());
                }
                self.counters.worker_drop(WorkerDrop::Passive, 1);
                return;
            }
        }
        if !dispatched {
            if let Some(d) = &mut self.dispatch {
                match d.route(now, mbuf.data()) {
                    Route::Here => {}
                    Route::Final(w) => {
                        d.hand(w, in_port, mbuf, true);
                        return;
                    }
                    Route::Dispatch(w) => {
                        d.hand(w, in_port, mbuf, false);
                        return;
                    }
                }
            }
        }
        self.batch.push((in_port, mbuf));
    }

    /// Routes and filters the admitted packets, a burst at a time: the
    /// firewall parses the burst and looks its connections up together
    /// first, so that their cache misses overlap.
    fn process_batch(&mut self, now: u64) {
        let mut batch = std::mem::take(&mut self.batch);
        while !batch.is_empty() {
            let n = batch.len().min(crate::conntrack::BURST);
            if let Some(fw) = &mut self.firewall {
                fw.prepare_burst(batch[..n].iter().filter_map(|(_, m)| {
                    let d = m.data();
                    (d.get(12..14) == Some(&[0x08, 0x00][..])).then(|| &d[14..])
                }));
            }
            for (in_port, mbuf) in batch.drain(..n) {
                self.process(now, in_port, mbuf);
            }
            if let Some(fw) = &mut self.firewall {
                fw.end_burst();
            }
        }
        self.batch = batch;
    }

    /// Routes (and filters) one admitted packet.
    fn process(&mut self, now: u64, in_port: u16, mut mbuf: Mbuf) {
        let action = match &mut self.firewall {
            Some(fw) => self
                .router
                .process_filtered(now, in_port, mbuf.data_mut(), fw),
            None => self.router.process(now, in_port, mbuf.data_mut()),
        };
        match action {
            Action::Forward { port } => {
                self.counters.forwarded.add(1);
                self.enqueue(port, mbuf);
            }
            Action::Reply => {
                self.counters.replies.add(1);
                self.enqueue(in_port, mbuf);
            }
            Action::Hold {
                port,
                next_hop,
                send_arp,
            } => {
                if send_arp {
                    self.send_arp_request(port, next_hop);
                }
                if self.held.len() >= self.settings.hold_capacity {
                    self.counters.worker_drop(WorkerDrop::HoldQueueFull, 1);
                } else {
                    self.counters.held.add(1);
                    self.held.push_back(Held {
                        mbuf,
                        port,
                        next_hop,
                        since_ms: now,
                    });
                }
            }
            Action::Consumed => {}
            Action::Filtered { reject } => {
                if let Some(r) = reject {
                    self.send_reject(now, in_port, &mbuf, r);
                }
            }
            Action::Drop { reason, icmp } => {
                self.counters.drop_packet(reason);
                if let Some(err) = icmp {
                    self.send_icmp_error(now, in_port, &mbuf, err);
                }
            }
        }
    }

    fn send_arp_request(&mut self, port: u16, target: Ipv4Addr) {
        let Some(mut m) = self.pool.alloc() else {
            self.counters.worker_drop(WorkerDrop::NoMbuf, 1);
            return;
        };
        let Some(buf) = m.append(64) else {
            self.counters.worker_drop(WorkerDrop::NoMbuf, 1);
            return;
        };
        if let Some(len) = self.router.build_arp_request(port, target, buf) {
            m.set_len(len);
            self.counters.arp_requests_sent.add(1);
            self.enqueue(port, m);
        }
    }

    fn send_icmp_error(
        &mut self,
        now: u64,
        in_port: u16,
        original: &Mbuf,
        err: crate::router::IcmpError,
    ) {
        let router = self.router.clone();
        self.send_answer(now, Answer::IcmpError, |buf| {
            router.build_icmp_error(original.data(), in_port, err, buf)
        });
    }

    fn send_reject(
        &mut self,
        now: u64,
        in_port: u16,
        original: &Mbuf,
        reject: crate::router::Reject,
    ) {
        let router = self.router.clone();
        self.send_answer(now, Answer::Reject, |buf| {
            router.build_reject(original.data(), in_port, reject, buf)
        });
    }

    /// Sends an answer the node builds about a packet (ICMP error, reset),
    /// within the rate limit; `build` writes it and says where it goes.
    fn send_answer(
        &mut self,
        now: u64,
        kind: Answer,
        build: impl FnOnce(&mut [u8]) -> Option<(u16, usize)>,
    ) {
        if !self.icmp_bucket.take(now) {
            self.counters.worker_drop(WorkerDrop::IcmpRateLimited, 1);
            return;
        }
        let Some(mut m) = self.pool.alloc() else {
            self.counters.worker_drop(WorkerDrop::NoMbuf, 1);
            return;
        };
        let Some(buf) = m.append(128) else {
            self.counters.worker_drop(WorkerDrop::NoMbuf, 1);
            return;
        };
        if let Some((port, len)) = build(buf) {
            m.set_len(len);
            match kind {
                Answer::IcmpError => self.counters.icmp_errors_sent.add(1),
                Answer::Reject => self.counters.rejects_sent.add(1),
            }
            self.enqueue(port, m);
        }
    }

    fn service_held(&mut self, now: u64) {
        for _ in 0..self.held.len() {
            let Some(mut h) = self.held.pop_front() else {
                break;
            };
            match self
                .router
                .finish_held(now, h.mbuf.data_mut(), h.port, h.next_hop)
            {
                HeldResult::Ready => {
                    self.counters.forwarded.add(1);
                    self.enqueue(h.port, h.mbuf);
                }
                HeldResult::Waiting
                    if now.saturating_sub(h.since_ms) < self.settings.hold_timeout_ms =>
                {
                    self.held.push_back(h);
                }
                HeldResult::Waiting | HeldResult::Unresolvable => {
                    self.counters.worker_drop(WorkerDrop::NeighbourTimeout, 1);
                }
            }
        }
    }

    fn enqueue(&mut self, port: u16, mbuf: Mbuf) {
        if let Some(i) = self.tx_index.get(port as usize).copied().flatten() {
            self.pending[i].push(mbuf);
            return;
        }
        match (
            self.tx_proxy.get(port as usize).copied().flatten(),
            &mut self.dispatch,
        ) {
            (Some(w), Some(d)) => d.hand_tx(w, port, mbuf),
            _ => self.counters.worker_drop(WorkerDrop::TxQueueFull, 1),
        }
    }

    fn flush_all(&mut self) {
        if let Some(d) = &mut self.dispatch {
            d.flush(&self.counters);
        }
        for (q, pending) in self.tx.iter_mut().zip(self.pending.iter_mut()) {
            if pending.is_empty() {
                continue;
            }
            let sent = q.tx_burst(pending);
            self.counters.tx_packets.add(sent as u64);
            if !pending.is_empty() {
                // The queue is full: drop what it did not take rather than
                // building up latency; the counters say so.
                self.counters
                    .worker_drop(WorkerDrop::TxQueueFull, pending.len() as u64);
                pending.clear();
            }
        }
    }
}
