//! A deterministic simulator of two members and the paths between them
//! (main and backup HA links, the data network for ICMP and the last-resort
//! heartbeat), after quinn-proto's `Pair` and smoltcp's fault injector.

use super::machine::{Action, Config, Event, Ha, LinkId, Role, Time};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

/// SplitMix64: small, seeded, deterministic.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in 0..n (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    /// True with probability p.
    pub fn chance(&mut self, p: f64) -> bool {
        let x = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        x < p
    }
}

/// One path's fault settings (both directions).
#[derive(Clone, Copy, Debug)]
pub struct PathCfg {
    pub loss: f64,
    pub delay: Duration,
    pub jitter: Duration,
    pub cut: bool,
}

impl Default for PathCfg {
    fn default() -> Self {
        PathCfg {
            loss: 0.0,
            delay: Duration::from_micros(200),
            jitter: Duration::ZERO,
            cut: false,
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Ev {
    Deliver { to: usize, ev: Event },
    Sync { to: usize, gen: u64 },
}

/// The connection table as the state sync moves it: the active creates a
/// connection every [`Pair::conn_every`]; each is a record streamed to the
/// passive over a working HA link (a lost datagram costs a retransmission
/// timeout; with no link the records wait, and those older than the
/// retransmit buffer are lost, which the passive learns when a link comes
/// back: its table stops counting as complete and a bulk follows). A bulk
/// (`start_sync`) needs a working HA link and leaves the passive with
/// every connection created before it ended.
#[derive(Debug, Default)]
pub struct Table {
    /// When each connection was created (its id is the index).
    pub created: Vec<Time>,
    /// Per member: the connections it holds are the ids below this (the
    /// stream and bulks are ordered).
    pub upto: [usize; 2],
    /// Records in flight to the passive: (id, deliver at, created at).
    inflight: std::collections::VecDeque<(usize, Time, Time)>,
    /// Records that arrived ahead of a gap (delivered when it fills).
    early: std::collections::BTreeSet<usize>,
    /// The member that sends the records (the active that created them).
    source: Option<usize>,
    /// Records were lost beyond the buffer: the receiver learns it when a
    /// link works again.
    lost_pending: Option<usize>,
    next_create: Time,
    /// Takeovers by a member that said its table was complete while
    /// lacking connections older than [`Pair::lag_bound`]: silent loss.
    pub silent_losses: u32,
    /// Connections lost at takeovers announced as incomplete.
    pub announced_losses: u64,
    /// Connections missing at takeovers while the old active still runs:
    /// its stream delivers them late (installed live, not lost).
    pub late_at_takeovers: u64,
    /// When the receiver last heard the source (keepalives).
    links_down_since: Option<Time>,
    /// The receiver was told its table is incomplete because the stream
    /// went silent (it asks for a bulk when a link works again).
    silent_unsynced: Option<usize>,
    /// Takeovers in all.
    pub takeovers: u32,
}

/// A member in the simulation.
#[derive(Debug)]
pub struct Node {
    pub ha: Ha,
    pub cfg: Config,
    /// Role published to the dataplane.
    pub role: Role,
    pub frozen_until: Option<Time>,
    /// Crashed until this time (then restarted with a new machine).
    pub down_until: Option<Time>,
    pub became_active: u32,
    /// Operator's forced status, re-applied at restart (it is configuration).
    pub forced: Option<Role>,
    pub sync_gen: u64,
    pub log: Vec<(Time, String)>,
}

/// Two members and the paths between them.
#[derive(Debug)]
pub struct Pair {
    pub now: Time,
    pub rng: Rng,
    pub nodes: [Node; 2],
    pub paths: [PathCfg; 3],
    pub sync_time: Duration,
    pub icmp_rtt: Duration,
    queue: BinaryHeap<Reverse<(Time, u64, usize)>>,
    events: Vec<Option<Ev>>,
    seq: u64,
    /// Total time both members were effectively active.
    pub dual_active: Duration,
    /// ... of which at least one path worked.
    pub dual_active_with_path: Duration,
    /// Longest continuous stretch of dual-active with a working path.
    pub longest_dual_with_path: Duration,
    cur_dual_with_path: Duration,
    pub trace: bool,
    /// The connection table and its sync.
    pub table: Table,
    /// The active creates a connection this often.
    pub conn_every: Duration,
    /// Records older than this that never reached the peer are lost.
    pub buffer: Duration,
    /// Connections younger than this may be missing at a takeover (in
    /// flight): the replication lag bound.
    pub lag_bound: Duration,
    /// A stream silent on every HA link for this long makes the passive's
    /// table incomplete (the sync core's silence detection: ten dead
    /// times, at least 250 ms).
    pub silence: Duration,
}

fn idx(l: LinkId) -> usize {
    match l {
        LinkId::Main => 0,
        LinkId::Backup => 1,
        LinkId::Data => 2,
    }
}

impl Pair {
    pub fn new(seed: u64, a: Config, b: Config) -> Self {
        let now = Duration::ZERO;
        let mk = |cfg: Config| Node {
            ha: Ha::new(cfg.clone(), now),
            cfg,
            role: Role::Passive,
            frozen_until: None,
            down_until: None,
            became_active: 0,
            forced: None,
            sync_gen: 0,
            log: Vec::new(),
        };
        Pair {
            now,
            rng: Rng::new(seed),
            nodes: [mk(a), mk(b)],
            paths: [PathCfg::default(); 3],
            sync_time: Duration::from_millis(30),
            icmp_rtt: Duration::from_micros(500),
            queue: BinaryHeap::new(),
            events: Vec::new(),
            seq: 0,
            dual_active: Duration::ZERO,
            dual_active_with_path: Duration::ZERO,
            longest_dual_with_path: Duration::ZERO,
            cur_dual_with_path: Duration::ZERO,
            trace: false,
            table: Table::default(),
            conn_every: Duration::from_millis(5),
            buffer: Duration::from_millis(2000),
            lag_bound: Duration::from_millis(300),
            silence: Duration::from_millis(250),
        }
    }

    fn schedule(&mut self, at: Time, ev: Ev) {
        self.seq += 1;
        self.events.push(Some(ev));
        self.queue
            .push(Reverse((at, self.seq, self.events.len() - 1)));
    }

    /// Running: not crashed and not frozen.
    pub fn running(&self, n: usize) -> bool {
        let node = &self.nodes[n];
        node.down_until.is_none_or(|t| self.now >= t)
            && node.frozen_until.is_none_or(|t| self.now >= t)
    }

    /// Forwarding traffic: running and active.
    pub fn effectively_active(&self, n: usize) -> bool {
        self.running(n) && self.nodes[n].role == Role::Active
    }

    pub fn actives(&self) -> usize {
        (0..2).filter(|&n| self.effectively_active(n)).count()
    }

    fn any_path_works(&self) -> bool {
        self.paths.iter().any(|p| !p.cut)
    }

    fn node_timeout(&self, n: usize) -> Option<Time> {
        let node = &self.nodes[n];
        if let Some(t) = node.down_until {
            if self.now < t {
                return Some(t);
            }
        }
        if let Some(t) = node.frozen_until {
            if self.now < t {
                return Some(t);
            }
        }
        Some(node.ha.poll_timeout().max(self.now))
    }

    /// Time of the next thing that happens.
    pub fn next_time(&self) -> Time {
        let mut t = Time::MAX;
        if let Some(Reverse((at, _, _))) = self.queue.peek() {
            t = t.min(*at);
        }
        for n in 0..2 {
            if let Some(x) = self.node_timeout(n) {
                t = t.min(x);
            }
        }
        t = t.min(self.table.next_create.max(self.now));
        let works = self.ha_link_works();
        for &(_, at, born) in &self.table.inflight {
            // With no HA link the records wait: the next thing is the
            // oldest one falling out of the buffer.
            let due = if works {
                at
            } else {
                born + self.buffer + Duration::from_nanos(1)
            };
            t = t.min(due.max(self.now));
        }
        t
    }

    fn ha_link_works(&self) -> bool {
        !self.paths[0].cut || !self.paths[1].cut
    }

    /// Creates connections on the single active member and moves the
    /// records to the passive.
    fn table_step(&mut self) {
        let active: Vec<usize> = (0..2).filter(|&n| self.effectively_active(n)).collect();
        while self.table.next_create <= self.now {
            let at = self.table.next_create;
            self.table.next_create += self.conn_every;
            let [a] = active[..] else { continue };
            if self.table.source != Some(a) {
                // A new source. What a crashed one had in flight is gone;
                // a live one's stream still arrives (installed live by the
                // new active: nothing to model for the table).
                self.table.source = Some(a);
                self.table.inflight.clear();
                self.table.early.clear();
                self.table.links_down_since = None;
                self.table.silent_unsynced = None;
            }
            let id = self.table.created.len();
            self.table.created.push(at);
            if self.table.upto[a] == id {
                // The active holds what it creates (after a gap it took
                // over with, the gap stays: upto does not move).
                self.table.upto[a] = id + 1;
            }
            let p = self.paths[0];
            self.table.inflight.push_back((id, at + p.delay, at));
        }
        let Some(src) = self.table.source else { return };
        let dst = 1 - src;
        // The receiver hears the source (its keepalives every few ms)
        // while both run and a link works; silent for `silence`, its table
        // stops counting as complete; heard again, it asks for a bulk.
        if self.running(dst) {
            let hears = self.running(src) && self.ha_link_works();
            let last = *self.table.links_down_since.get_or_insert(self.now);
            if hears {
                self.table.links_down_since = Some(self.now);
                if let Some(n) = self.table.silent_unsynced.take() {
                    if !self.effectively_active(n) {
                        self.start_sync(n);
                    }
                }
            } else if self.now.saturating_sub(last) > self.silence
                && self.table.silent_unsynced.is_none()
            {
                self.table.silent_unsynced = Some(dst);
                self.feed(dst, Event::SyncComplete(false));
            }
        }
        if !self.ha_link_works() {
            // Waiting; the oldest beyond the buffer are lost.
            while let Some(&(_, _, born)) = self.table.inflight.front() {
                if self.now.saturating_sub(born) > self.buffer {
                    self.table.inflight.pop_front();
                    self.table.lost_pending = Some(dst);
                } else {
                    break;
                }
            }
            return;
        }
        if let Some(n) = self.table.lost_pending.take() {
            // The receiver learns of the loss (the sender's Hello skips
            // the stream ahead): not complete, a bulk follows.
            if self.running(n) {
                self.start_sync(n);
            }
        }
        let loss = if self.paths[0].cut {
            self.paths[1].loss
        } else {
            self.paths[0].loss
        };
        // Each record (a datagram) independently: a lost one is resent
        // after a timeout while the others go on; the receiver delivers in
        // order (a reorder buffer), as K2K does.
        let (now, both_run) = (self.now, self.running(dst) && self.running(src));
        let mut delivered = Vec::new();
        for r in self.table.inflight.iter_mut() {
            if r.1 > now {
                continue;
            }
            if !both_run || self.rng.chance(loss) {
                // A frozen end, or lost: resent later.
                r.1 = now + Duration::from_millis(20);
            } else {
                delivered.push(r.0);
            }
        }
        if !delivered.is_empty() {
            self.table.inflight.retain(|r| !delivered.contains(&r.0));
            self.table.early.extend(delivered);
            while self.table.early.remove(&self.table.upto[dst]) {
                self.table.upto[dst] += 1;
            }
        }
    }

    /// The invariant at a takeover: a member that says its table is
    /// complete holds every connection older than the lag bound.
    fn check_takeover(&mut self, n: usize) {
        self.table.takeovers += 1;
        let horizon = self.now.saturating_sub(self.lag_bound);
        let old = self.table.created.partition_point(|&t| t <= horizon);
        let lacking = old.saturating_sub(self.table.upto[n]);
        let source_runs = self.table.source.is_some_and(|s| s != n && self.running(s));
        if lacking > 0 && source_runs {
            // A planned swap: the old active's stream still delivers them.
            self.table.late_at_takeovers += lacking as u64;
        } else if lacking > 0 {
            if self.nodes[n].ha.sync_complete() {
                self.table.silent_losses += 1;
                let now = self.now;
                self.nodes[n].log.push((
                    now,
                    format!("SILENT LOSS: {lacking} connections older than the lag bound missing"),
                ));
            } else {
                self.table.announced_losses += lacking as u64;
            }
        }
    }

    fn advance(&mut self, to: Time) {
        if to > self.now {
            let dt = to - self.now;
            if self.actives() == 2 {
                self.dual_active += dt;
                if self.any_path_works() {
                    self.dual_active_with_path += dt;
                    self.cur_dual_with_path += dt;
                    self.longest_dual_with_path =
                        self.longest_dual_with_path.max(self.cur_dual_with_path);
                }
            } else {
                self.cur_dual_with_path = Duration::ZERO;
            }
            self.now = to;
        }
    }

    /// Process everything due at the next event time (never beyond `limit`).
    pub fn step(&mut self, limit: Time) {
        let t = self.next_time().min(limit);
        self.advance(t);
        // restarts
        for n in 0..2 {
            if let Some(d) = self.nodes[n].down_until {
                if self.now >= d {
                    self.nodes[n].down_until = None;
                    self.nodes[n].cfg.epoch += 1;
                    self.table.upto[n] = 0;
                    self.nodes[n].ha = Ha::new(self.nodes[n].cfg.clone(), self.now);
                    self.nodes[n].role = Role::Passive;
                    self.start_sync(n);
                    if let Some(f) = self.nodes[n].forced {
                        self.feed(n, Event::Forced(Some(f)));
                    }
                }
            }
            if self.nodes[n].frozen_until.is_some_and(|f| self.now >= f) {
                self.nodes[n].frozen_until = None;
            }
        }
        self.table_step();
        while let Some(Reverse((at, _, i))) = self.queue.peek().copied() {
            if at > self.now {
                break;
            }
            self.queue.pop();
            if let Some(ev) = self.events[i].take() {
                match ev {
                    Ev::Deliver { to, ev } => self.feed(to, ev),
                    Ev::Sync { to, gen } => {
                        if self.nodes[to].sync_gen != gen {
                            continue;
                        }
                        let source_up = self
                            .table
                            .source
                            .is_some_and(|s| s != to && self.running(s));
                        if self.ha_link_works() && (source_up || self.table.source.is_none()) {
                            // The bulk carried everything created so far.
                            self.table.upto[to] = self.table.created.len();
                            self.feed(to, Event::SyncComplete(true));
                        } else {
                            // No link (or no one to send it): try again.
                            let at = self.now + self.sync_time;
                            self.schedule(at, Ev::Sync { to, gen });
                        }
                    }
                }
            }
        }
        if self.queue.is_empty() {
            self.events.clear();
        }
        for n in 0..2 {
            if self.running(n) && self.nodes[n].ha.poll_timeout() <= self.now {
                self.feed(n, Event::Tick);
            }
        }
    }

    /// Feed an event to node `n` (dropped when it is not running) and carry out its actions.
    pub fn feed(&mut self, n: usize, ev: Event) {
        if !self.running(n) {
            return;
        }
        let now = self.now;
        let actions = self.nodes[n].ha.on_event(now, ev);
        for a in actions {
            self.act(n, a);
        }
    }

    fn act(&mut self, n: usize, a: Action) {
        let peer = 1 - n;
        if self.trace {
            eprintln!("{:>8.3?} n{n} {a:?}", self.now);
        }
        match a {
            Action::BecomeActive { .. } => {
                if self.nodes[n].role != Role::Active {
                    self.check_takeover(n);
                }
                self.nodes[n].role = Role::Active;
                self.nodes[n].became_active += 1;
            }
            Action::BecomePassive { .. } => {
                self.nodes[n].role = Role::Passive;
                self.start_sync(n);
            }
            Action::RequestResync => self.start_sync(n),
            Action::SendHeartbeat { link, state } => {
                let p = self.paths[idx(link)];
                if p.cut || self.rng.chance(p.loss) {
                    return;
                }
                let j = if p.jitter.is_zero() {
                    Duration::ZERO
                } else {
                    Duration::from_nanos(self.rng.below(p.jitter.as_nanos() as u64))
                };
                let ev = if link == LinkId::Data {
                    Event::LastResortHeartbeat { peer: state }
                } else {
                    Event::PeerHeartbeat { link, peer: state }
                };
                self.schedule(self.now + p.delay + j, Ev::Deliver { to: peer, ev });
            }
            Action::StartIcmpProbe => {
                let p = self.paths[2];
                // Three echo requests; the peer's workers answer in either
                // role, as long as the process runs (not crashed, frozen).
                let answered =
                    !p.cut && self.running(peer) && (0..3).any(|_| !self.rng.chance(p.loss));
                let (at, ev) = if answered {
                    (self.now + self.icmp_rtt, Event::IcmpReply)
                } else {
                    (
                        self.now + self.nodes[n].cfg.icmp_timeout,
                        Event::IcmpTimeout,
                    )
                };
                self.schedule(at, Ev::Deliver { to: n, ev });
            }
            Action::Log(e) => {
                let now = self.now;
                self.nodes[n].log.push((now, format!("{e:?}")));
            }
        }
    }

    /// The member's table stops counting as complete (the sync core says
    /// so at once) and a bulk is on its way.
    fn start_sync(&mut self, n: usize) {
        let gen = self.nodes[n].sync_gen + 1;
        self.nodes[n].sync_gen = gen;
        self.feed(n, Event::SyncComplete(false));
        let at = self.now + self.sync_time;
        self.schedule(at, Ev::Sync { to: n, gen });
    }

    pub fn run_until(&mut self, t: Time) {
        while self.now < t {
            self.step(t);
        }
    }

    /// Freeze member `n` (SIGSTOP) for `d`.
    pub fn freeze(&mut self, n: usize, d: Duration) {
        self.nodes[n].frozen_until = Some(self.now + d);
    }

    /// Crash member `n` now; it restarts with a fresh machine after `down`.
    pub fn crash(&mut self, n: usize, down: Duration) {
        self.nodes[n].down_until = Some(self.now + down);
        self.nodes[n].role = Role::Passive;
    }
}
