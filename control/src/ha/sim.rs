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
        t
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
        while let Some(Reverse((at, _, i))) = self.queue.peek().copied() {
            if at > self.now {
                break;
            }
            self.queue.pop();
            if let Some(ev) = self.events[i].take() {
                match ev {
                    Ev::Deliver { to, ev } => self.feed(to, ev),
                    Ev::Sync { to, gen } => {
                        if self.nodes[to].sync_gen == gen {
                            self.feed(to, Event::SyncComplete(true));
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
                // Three echo requests; the peer's dataplane answers only when active.
                let answered = !p.cut
                    && self.effectively_active(peer)
                    && (0..3).any(|_| !self.rng.chance(p.loss));
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

    fn start_sync(&mut self, n: usize) {
        let gen = self.nodes[n].sync_gen + 1;
        self.nodes[n].sync_gen = gen;
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
