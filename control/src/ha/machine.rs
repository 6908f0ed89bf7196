//! The member's HA state machine (DESIGN.md "Election and failover",
//! HA-REFERENCE F7, F18, F20): sans-IO, `on_event(now, ev)` in, actions out.
//!
//! States: `Phase::Startup` (waiting for the peer) or `Phase::Running`, crossed
//! with our role (Active / Passive) and the peer's liveness (alive on some
//! path / silent with an ICMP check in progress / silent and answering ICMP).
//!
//! Swaps while the peer is alive are break-before-make: the active yields
//! first (announcing `yields`), and a passive only becomes active when the
//! peer reports passive and yields to it, so a working path never gives two
//! actives. Taking over from a silent peer needs `dead_time` of silence on
//! every path (both HA links and the last-resort heartbeat on the data
//! network) and an unanswered ICMP check. The check starts before the peer
//! is declared dead, once it has been silent for [`Config::check_after`],
//! so that its answer (or its timeout) is known by the time `dead_time`
//! ends: a dead peer is replaced after `dead_time`, not after `dead_time`
//! plus the check.

use std::cmp::Reverse;
use std::collections::VecDeque;
use std::time::Duration;

/// A point in time: the time since an arbitrary origin of a monotonic clock
/// chosen by the caller (the machine never reads a clock).
pub type Time = Duration;

/// The role of a member; maps 1:1 to `tandem_dataplane::worker::Role`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Filters and forwards.
    Active,
    /// Silent on the data ports.
    Passive,
}

/// A path to the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LinkId {
    /// The main HA link.
    Main,
    /// The backup HA link.
    Backup,
    /// The last-resort heartbeat over a data interface (not an HA link).
    Data,
}

impl LinkId {
    /// All paths, HA links first.
    pub const ALL: [LinkId; 3] = [LinkId::Main, LinkId::Backup, LinkId::Data];

    fn idx(self) -> usize {
        match self {
            LinkId::Main => 0,
            LinkId::Backup => 1,
            LinkId::Data => 2,
        }
    }

    /// An HA link (main or backup).
    pub fn is_ha(self) -> bool {
        self != LinkId::Data
    }
}

/// What a member announces in its heartbeats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerState {
    /// Its current role.
    pub role: Role,
    /// Its quality factor 0..=100.
    pub quality: u8,
    /// Its priority (50 for "active firewall if equal", else 0).
    pub priority: u8,
    /// Its forced status (haactive / hapassive), `None` after hareset.
    pub forced: Option<Role>,
    /// Its connection table is complete (always true for an active).
    pub synchronized: bool,
    /// Its unique member serial (the last tie-breaker: lower wins).
    pub serial: u64,
    /// Its boot epoch (`Config::epoch`): a change means it restarted.
    pub epoch: u64,
    /// Milliseconds since its machine started.
    pub uptime_ms: u64,
    /// Counts the sender's heartbeat rounds; within one epoch a lower value
    /// is an older heartbeat (reordered across links) and its state is ignored.
    pub gen: u64,
    /// It is passive and considers the receiver the rightful active.
    pub yields: bool,
    /// It is active because it took over from a silent peer, and has not
    /// had a synchronized passive since: its table is the fresher one, so
    /// it stays when both turn out to be active (a peer that was frozen or
    /// cut off comes back).
    pub took_over: bool,
}

/// Why a member changes role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// No peer heard during the start-up wait, and ICMP found none.
    StartupAlone,
    /// The peer was silent on every path and did not answer ICMP.
    PeerDead {
        /// Our connection table was complete (else the log says it was not).
        table_complete: bool,
    },
    /// The peer yielded to us (election: forced, quality, priority, serial).
    Elected,
    /// We yield to a better peer (forced, quality beyond the margin, priority).
    PeerPreferred,
    /// Both were active (after a partition); we are the deterministic loser.
    DualActive,
    /// The operator forced us passive.
    ForcedPassive,
    /// The operator forced us active while the peer is silent.
    ForcedActive,
}

impl std::fmt::Display for Reason {
    /// The reason in the words of the event log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Reason::StartupAlone => {
                "alone at start-up: no peer heard during the start-up wait, and no answer to the ICMP check"
            }
            Reason::PeerDead {
                table_complete: true,
            } => "the peer is dead: silent on every path and no answer to the ICMP check; our connection table is complete",
            Reason::PeerDead {
                table_complete: false,
            } => "the peer is dead: silent on every path and no answer to the ICMP check; our connection table was not complete",
            Reason::Elected => {
                "elected: the peer yielded (forced status, quality, priority or serial)"
            }
            Reason::PeerPreferred => {
                "the peer is preferred (forced status, better quality, or priority)"
            }
            Reason::DualActive => {
                "both members were active: this one yields by the tie-break"
            }
            Reason::ForcedPassive => "forced passive by the operator (hapassive)",
            Reason::ForcedActive => {
                "forced active by the operator (haactive) while the peer is silent"
            }
        })
    }
}

/// One line of the HA event log (F7).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HaEvent {
    /// The peer was heard for the first time (or again after being lost everywhere).
    PeerFound {
        /// Peer serial.
        serial: u64,
    },
    /// The peer went silent on one path.
    PeerLost(LinkId),
    /// The peer is heard again on one path.
    PeerBack(LinkId),
    /// Our end of an HA link went down / up.
    LinkState(LinkId, bool),
    /// No HA link carries heartbeats any more.
    AllHaLinksLost,
    /// Last-resort heartbeats over the data network started / stopped.
    LastResort(bool),
    /// We changed role.
    Swap {
        /// The new role.
        to: Role,
        /// Why.
        reason: Reason,
    },
    /// We took over although our table was not synchronised.
    TakeoverWithIncompleteTable,
    /// Our quality changed.
    QualityChanged {
        /// Before.
        from: u8,
        /// After.
        to: u8,
    },
    /// The peer's quality changed.
    PeerQualityChanged {
        /// Before.
        from: u8,
        /// After.
        to: u8,
    },
    /// The forced status changed.
    ForcedChanged(Option<Role>),
    /// ICMP monitoring of the peer started (every path silent for
    /// [`Config::check_after`]).
    IcmpMonitoringStarted,
    /// The outcome of an ICMP check.
    IcmpResult {
        /// The peer answered.
        peer_alive: bool,
    },
    /// Both members are active.
    DualActiveDetected,
    /// The dual-active episode is over.
    DualActiveResolved {
        /// We are the one that yielded.
        we_yielded: bool,
    },
    /// The peer restarted (its uptime went back).
    PeerRestarted,
    /// Our own process was not scheduled for this long (events arrived late).
    LocalStall {
        /// Gap in milliseconds.
        ms: u64,
    },
    /// Our table is complete / incomplete.
    Synchronized(bool),
}

/// What the caller must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Publish `Role::Active` to the dataplane (GARP etc.).
    BecomeActive {
        /// Why.
        reason: Reason,
    },
    /// Publish `Role::Passive` to the dataplane.
    BecomePassive {
        /// Why.
        reason: Reason,
    },
    /// Send one heartbeat carrying `state` on `link`.
    SendHeartbeat {
        /// Where.
        link: LinkId,
        /// What to announce.
        state: PeerState,
    },
    /// Ping the peer over the data network and answer with `IcmpReply` or
    /// `IcmpTimeout` within `Config::icmp_timeout`.
    StartIcmpProbe,
    /// Our table is stale (we yielded after a dual-active episode): ask the
    /// active for a bulk sync; answer with `SyncComplete(true)` when done.
    RequestResync,
    /// Write a line to the HA event log.
    Log(HaEvent),
}

/// An input of the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A timer fired (or any wake-up): the machine checks its deadlines.
    Tick,
    /// An authenticated heartbeat from the peer arrived on `link`.
    PeerHeartbeat {
        /// The path it came on.
        link: LinkId,
        /// What the peer announces.
        peer: PeerState,
    },
    /// A last-resort heartbeat arrived over the data network.
    LastResortHeartbeat {
        /// What the peer announces.
        peer: PeerState,
    },
    /// Our end of an HA link went up or down.
    LinkState(LinkId, bool),
    /// Our quality factor is now this.
    LocalQuality(u8),
    /// haactive (`Some(Active)`), hapassive (`Some(Passive)`), hareset (`None`).
    Forced(Option<Role>),
    /// Our connection table is (or is no longer) complete.
    SyncComplete(bool),
    /// The peer answered the ICMP check.
    IcmpReply,
    /// The peer did not answer the ICMP check.
    IcmpTimeout,
}

/// Configuration of the machine; `Config::new(serial)` gives the defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Our unique member serial (lower wins the last tie).
    pub serial: u64,
    /// Our boot epoch: must differ at each start (e.g. wall-clock ms at start;
    /// default 0).
    pub epoch: u64,
    /// 50 for "active firewall if equal", else 0.
    pub priority: u8,
    /// Heartbeat interval on every live link (default 20 ms).
    pub interval: Duration,
    /// Silence after which a path is dead (default 100 ms).
    pub dead_time: Duration,
    /// How long to wait for the peer at start-up (default 1 s).
    pub startup_wait: Duration,
    /// Safety deadline of an ICMP check if the caller never answers (default 50 ms);
    /// the caller should answer within it.
    pub icmp_timeout: Duration,
    /// How often to re-check a silent peer that answers ICMP (default 200 ms).
    pub icmp_recheck: Duration,
    /// A peer must be at least this much better in quality to preempt (default 1).
    pub quality_margin: u8,
    /// ... for at least this long (default 0).
    pub quality_hold: Duration,
    /// Send last-resort heartbeats over the data network when no HA link works
    /// (default true).
    pub last_resort: bool,
    /// Our quality at start (default 100).
    pub initial_quality: u8,
    /// A gap between two events longer than this means our process stalled;
    /// silent paths then get a fresh `dead_time` (default `dead_time / 2`).
    pub stall_threshold: Duration,
}

impl Config {
    /// The defaults for member `serial`.
    pub fn new(serial: u64) -> Self {
        Config {
            serial,
            epoch: 0,
            priority: 0,
            interval: Duration::from_millis(20),
            dead_time: Duration::from_millis(100),
            startup_wait: Duration::from_secs(1),
            icmp_timeout: Duration::from_millis(50),
            icmp_recheck: Duration::from_millis(200),
            quality_margin: 1,
            quality_hold: Duration::ZERO,
            last_resort: true,
            initial_quality: 100,
            stall_threshold: Duration::from_millis(50),
        }
    }

    /// The silence after which a passive member starts the ICMP check of
    /// its peer: `icmp_timeout` before `dead_time` ends, so the check's
    /// verdict is due when the peer is declared dead; never before half of
    /// `dead_time` (a check of a peer that merely missed a heartbeat or two
    /// would be noise), so with an `icmp_timeout` over half of `dead_time`
    /// the takeover waits for the check to end.
    pub fn check_after(&self) -> Duration {
        self.dead_time
            .saturating_sub(self.icmp_timeout)
            .max(self.dead_time / 2)
    }

    /// The silence after which `link` is dead: `dead_time` on the HA
    /// links; on the data ports (the last resort) four times that, and at
    /// least 100 ms. The last resort shares the data path with the traffic:
    /// with both HA links cut and the data ports saturated, its
    /// heartbeats and the ICMP check are lost in bursts, and the dead time
    /// of an HA link there made both members active in turns (a CI run of
    /// election.rs `with_both_ha_links_cut_exactly_one_member_forwards_and_answers_arp`).
    /// A peer silent on the HA links and the data ports at once (a double
    /// fault) is found dead by then.
    pub fn dead_time_of(&self, link: LinkId) -> Duration {
        match link {
            LinkId::Data => (self.dead_time * 4).max(Duration::from_millis(100)),
            LinkId::Main | LinkId::Backup => self.dead_time,
        }
    }

    /// The longest time a dead peer goes unnoticed: `dead_time`, or the
    /// end of an ICMP check started at [`Self::check_after`] if that is
    /// later.
    pub fn detection_time(&self) -> Duration {
        self.dead_time.max(self.check_after() + self.icmp_timeout)
    }
}

/// Start-up or running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the peer until this time.
    Startup {
        /// End of the wait.
        until: Time,
    },
    /// Election done at least once.
    Running,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Check {
    Idle,
    Probing { deadline: Time },
    Answered { next: Time },
}

#[derive(Clone, Copy, Debug, Default)]
struct Path {
    /// Our end is up (HA links; the data path is always "up").
    up: bool,
    last_rx: Option<Time>,
    alive: bool,
}

/// The HA state machine of one member.
#[derive(Debug)]
pub struct Ha {
    cfg: Config,
    started: Time,
    last_event: Time,
    phase: Phase,
    role: Role,
    forced: Option<Role>,
    quality: u8,
    sync_complete: bool,
    paths: [Path; 3],
    peer: Option<PeerState>,
    peer_seen: bool,
    next_hb: Time,
    gen: u64,
    check: Check,
    challenge_since: Option<Time>,
    dual_active: bool,
    took_over: bool,
    last_resort_on: bool,
    all_ha_lost_logged: bool,
    actions: VecDeque<Action>,
}

impl Ha {
    /// A member that was running alone and becomes the first member of a
    /// new cluster (`tandemctl ha create`): already active, its table the
    /// reference, no start-up wait (its traffic must not stop).
    pub fn new_incumbent(cfg: Config, now: Time) -> Self {
        let mut ha = Ha::new(cfg, now);
        ha.phase = Phase::Running;
        ha.role = Role::Active;
        ha.sync_complete = true;
        ha
    }

    /// A member starting at `now`: passive, waiting for the peer.
    pub fn new(cfg: Config, now: Time) -> Self {
        let until = now + cfg.startup_wait;
        let quality = cfg.initial_quality.min(100);
        Ha {
            started: now,
            last_event: now,
            phase: Phase::Startup { until },
            role: Role::Passive,
            forced: None,
            quality,
            sync_complete: false,
            paths: [
                Path {
                    up: true,
                    ..Path::default()
                },
                Path {
                    up: true,
                    ..Path::default()
                },
                Path {
                    up: true,
                    ..Path::default()
                },
            ],
            peer: None,
            peer_seen: false,
            next_hb: now,
            gen: 0,
            check: Check::Idle,
            challenge_since: None,
            dual_active: false,
            took_over: false,
            last_resort_on: false,
            all_ha_lost_logged: false,
            actions: VecDeque::new(),
            cfg,
        }
    }

    /// Our current role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Start-up or running.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The peer's last announced state, if any.
    pub fn peer(&self) -> Option<&PeerState> {
        self.peer.as_ref()
    }

    /// The peer is heard on `link` (for hainfo).
    pub fn path_alive(&self, link: LinkId) -> bool {
        self.paths[link.idx()].alive
    }

    /// Our end of `link` is up (HA links; the data path is always up).
    pub fn path_up(&self, link: LinkId) -> bool {
        self.paths[link.idx()].up
    }

    /// When the peer was last heard on `link`.
    pub fn last_heard(&self, link: LinkId) -> Option<Time> {
        self.paths[link.idx()].last_rx
    }

    /// The forced status (haactive / hapassive), if any.
    pub fn forced(&self) -> Option<Role> {
        self.forced
    }

    /// Our quality factor.
    pub fn quality(&self) -> u8 {
        self.quality
    }

    /// Our table is complete (as last reported).
    pub fn sync_complete(&self) -> bool {
        self.sync_complete
    }

    /// Last-resort heartbeats over the data network are being sent.
    pub fn last_resort_on(&self) -> bool {
        self.last_resort_on
    }

    /// The ICMP check: "idle", "probing" or "peer answered".
    pub fn icmp_check(&self) -> &'static str {
        match self.check {
            Check::Idle => "idle",
            Check::Probing { .. } => "probing",
            Check::Answered { .. } => "peer answered",
        }
    }

    /// Both members are active (seen, not yet resolved).
    pub fn dual_active(&self) -> bool {
        self.dual_active
    }

    /// Changes this member's priority ("active firewall if equal", set on
    /// both members at once by `ha set prefer`); the next heartbeat carries
    /// it and the next election uses it.
    pub fn set_priority(&mut self, priority: u8) {
        self.cfg.priority = priority;
    }

    /// The peer is heard on some path.
    pub fn peer_heard(&self) -> bool {
        self.peer_alive()
    }

    /// What we announce now.
    pub fn local_state(&self, now: Time) -> PeerState {
        let me = self.me(now);
        let yields = self.role == Role::Passive
            && self.peer_alive()
            && self.peer.is_some_and(|p| rank(&p) > rank(&me));
        PeerState { yields, ..me }
    }

    fn me(&self, now: Time) -> PeerState {
        let gen = self.gen;
        PeerState {
            role: self.role,
            quality: self.quality,
            priority: self.cfg.priority,
            forced: self.forced,
            synchronized: self.role == Role::Active || self.sync_complete,
            serial: self.cfg.serial,
            epoch: self.cfg.epoch,
            uptime_ms: u64::try_from(now.saturating_sub(self.started).as_millis())
                .unwrap_or(u64::MAX),
            yields: false,
            took_over: self.took_over,
            gen,
        }
    }

    /// Feed one event; the actions can then be drained with `poll_action`.
    pub fn handle_event(&mut self, now: Time, ev: Event) {
        self.detect_stall(now);
        match ev {
            Event::Tick => {}
            Event::PeerHeartbeat { link, peer } => self.on_heartbeat(now, link, peer),
            Event::LastResortHeartbeat { peer } => self.on_heartbeat(now, LinkId::Data, peer),
            Event::LinkState(link, up) => {
                let p = &mut self.paths[link.idx()];
                if p.up != up {
                    p.up = up;
                    self.log(HaEvent::LinkState(link, up));
                }
            }
            Event::LocalQuality(q) => {
                let q = q.min(100);
                if q != self.quality {
                    self.log(HaEvent::QualityChanged {
                        from: self.quality,
                        to: q,
                    });
                    self.quality = q;
                    self.next_hb = now; // tell the peer at once
                }
            }
            Event::Forced(f) => {
                if f != self.forced {
                    self.forced = f;
                    self.log(HaEvent::ForcedChanged(f));
                    self.next_hb = now;
                }
            }
            Event::SyncComplete(done) => {
                if done != self.sync_complete {
                    self.sync_complete = done;
                    // Only a passive's table can be incomplete: the
                    // active's is the reference (the state sync logs
                    // the bulk it sends a restarted peer).
                    if self.role == Role::Passive {
                        self.log(HaEvent::Synchronized(done));
                    }
                    self.next_hb = now;
                }
            }
            Event::IcmpReply => {
                if let Check::Probing { .. } = self.check {
                    self.log(HaEvent::IcmpResult { peer_alive: true });
                    self.check = Check::Answered {
                        next: now + self.cfg.icmp_recheck,
                    };
                }
            }
            Event::IcmpTimeout => {
                if let Check::Probing { .. } = self.check {
                    // Take over in evaluate (if still silent).
                    self.check = Check::Probing { deadline: now };
                }
            }
        }
        self.evaluate(now);
        self.last_event = now;
    }

    /// `handle_event` then drain the actions.
    pub fn on_event(&mut self, now: Time, ev: Event) -> Vec<Action> {
        self.handle_event(now, ev);
        self.actions.drain(..).collect()
    }

    /// The next action to carry out.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When to call again with `Event::Tick` at the latest.
    pub fn poll_timeout(&self) -> Time {
        let mut t = self.next_hb;
        if let Phase::Startup { until } = self.phase {
            t = t.min(until);
        }
        for link in LinkId::ALL {
            let p = &self.paths[link.idx()];
            if let (true, Some(rx)) = (p.alive, p.last_rx) {
                t = t.min(rx + self.cfg.dead_time_of(link));
            }
        }
        match self.check {
            Check::Probing { deadline } => t = t.min(deadline),
            Check::Answered { next } => t = t.min(next),
            Check::Idle => {
                if let Some(rx) = self.early_check_due() {
                    t = t.min(rx);
                }
            }
        }
        if let Some(since) = self.challenge_since {
            t = t.min(since + self.cfg.quality_hold);
        }
        t
    }

    fn log(&mut self, e: HaEvent) {
        self.actions.push_back(Action::Log(e));
    }

    fn detect_stall(&mut self, now: Time) {
        let gap = now.saturating_sub(self.last_event);
        if gap > self.cfg.stall_threshold {
            self.log(HaEvent::LocalStall {
                ms: u64::try_from(gap.as_millis()).unwrap_or(u64::MAX),
            });
            // Whatever we did not read while stalled is not the peer's fault:
            // give every live path a fresh dead_time, restart any ICMP check.
            for p in &mut self.paths {
                if p.alive {
                    p.last_rx = Some(now);
                }
            }
            if let Check::Probing { .. } = self.check {
                self.check = Check::Idle;
            }
            if let Phase::Startup { until } = self.phase {
                self.phase = Phase::Startup {
                    until: until.max(now + self.cfg.dead_time),
                };
            }
        }
    }

    fn on_heartbeat(&mut self, now: Time, link: LinkId, peer: PeerState) {
        if peer.serial == self.cfg.serial {
            return; // our own heartbeat looped back
        }
        let p = &mut self.paths[link.idx()];
        if link.is_ha() && !p.up {
            p.up = true; // the link evidently works
        }
        p.last_rx = Some(now);
        if let Some(old) = self.peer {
            if old.epoch == peer.epoch && old.serial == peer.serial {
                if peer.gen < old.gen {
                    return; // older than what we know: liveness only
                }
            } else {
                self.log(HaEvent::PeerRestarted);
            }
            if old.quality != peer.quality {
                self.log(HaEvent::PeerQualityChanged {
                    from: old.quality,
                    to: peer.quality,
                });
            }
        }
        self.peer = Some(peer);
    }

    fn peer_alive(&self) -> bool {
        self.paths.iter().any(|p| p.alive)
    }

    fn set_role(&mut self, now: Time, role: Role, reason: Reason) {
        if self.role == role {
            return;
        }
        self.role = role;
        self.challenge_since = None;
        self.took_over = role == Role::Active && matches!(reason, Reason::PeerDead { .. });
        self.log(HaEvent::Swap { to: role, reason });
        self.actions.push_back(match role {
            Role::Active => Action::BecomeActive { reason },
            Role::Passive => Action::BecomePassive { reason },
        });
        self.next_hb = now; // announce the new role at once
    }

    fn evaluate(&mut self, now: Time) {
        self.update_paths(now);
        let alive = self.peer_alive();
        if self.forced == Some(Role::Passive) && self.role == Role::Active {
            self.set_role(now, Role::Passive, Reason::ForcedPassive);
        }
        if let Phase::Startup { until } = self.phase {
            if alive || now >= until {
                self.phase = Phase::Running;
            } else {
                self.send_heartbeats(now);
                return;
            }
        }
        if alive {
            match self.early_check_due() {
                // Silent long enough on every path: check the peer now, so
                // the verdict is in when `dead_time` ends.
                Some(due) if now >= due => {
                    if self.check == Check::Idle {
                        self.start_check(now);
                    }
                }
                Some(_) => {
                    if self.check != Check::Idle {
                        self.check = Check::Idle;
                    }
                }
                // Not a member that would take over: no check.
                None => {
                    if self.check != Check::Idle {
                        self.check = Check::Idle;
                    }
                }
            }
            self.elect(now);
        } else {
            self.peer_silent(now);
        }
        self.send_heartbeats(now);
    }

    fn update_paths(&mut self, now: Time) {
        let was_alive = self.peer_alive();
        for link in LinkId::ALL {
            let p = self.paths[link.idx()];
            let dead = self.cfg.dead_time_of(link);
            let alive = p.up && p.last_rx.is_some_and(|rx| now < rx + dead);
            if alive != p.alive {
                self.paths[link.idx()].alive = alive;
                self.log(if alive {
                    HaEvent::PeerBack(link)
                } else {
                    HaEvent::PeerLost(link)
                });
            }
        }
        let alive = self.peer_alive();
        if alive && (!was_alive || !self.peer_seen) {
            self.peer_seen = true;
            let serial = self.peer.map_or(0, |p| p.serial);
            self.log(HaEvent::PeerFound { serial });
        }
        let ha_alive = self.paths[0].alive || self.paths[1].alive;
        if !ha_alive && self.peer_seen && !self.all_ha_lost_logged {
            self.all_ha_lost_logged = true;
            self.log(HaEvent::AllHaLinksLost);
        } else if ha_alive {
            self.all_ha_lost_logged = false;
        }
        // Last resort: while no HA link carries the peer's heartbeats. (If
        // only the peer cannot hear us on them, it asks our dataplane with
        // the ICMP check before anything else, so it never takes over.)
        let lr = self.cfg.last_resort && !ha_alive;
        if lr != self.last_resort_on {
            self.last_resort_on = lr;
            self.log(HaEvent::LastResort(lr));
        }
    }

    fn send_heartbeats(&mut self, now: Time) {
        if now < self.next_hb {
            return;
        }
        self.gen += 1;
        let state = self.local_state(now);
        for link in [LinkId::Main, LinkId::Backup] {
            if self.paths[link.idx()].up {
                self.actions
                    .push_back(Action::SendHeartbeat { link, state });
            }
        }
        if self.last_resort_on {
            self.actions.push_back(Action::SendHeartbeat {
                link: LinkId::Data,
                state,
            });
        }
        self.next_hb = if now >= self.next_hb + self.cfg.interval {
            now + self.cfg.interval
        } else {
            self.next_hb + self.cfg.interval
        };
    }

    fn peer_silent(&mut self, now: Time) {
        self.challenge_since = None;
        if self.dual_active {
            self.dual_active = false;
        }
        if self.role == Role::Active || self.forced == Some(Role::Passive) {
            self.check = Check::Idle;
            return;
        }
        if self.forced == Some(Role::Active) {
            // The operator's word: no ICMP check can keep us passive.
            self.check = Check::Idle;
            self.set_role(now, Role::Active, Reason::ForcedActive);
            return;
        }
        match self.check {
            Check::Idle => self.start_check(now),
            Check::Answered { next } if now >= next => {
                self.actions.push_back(Action::StartIcmpProbe);
                self.check = Check::Probing {
                    deadline: now + self.cfg.icmp_timeout,
                };
            }
            Check::Probing { deadline } if now >= deadline => {
                self.log(HaEvent::IcmpResult { peer_alive: false });
                self.check = Check::Idle;
                let reason = if self.peer_seen {
                    Reason::PeerDead {
                        table_complete: self.sync_complete,
                    }
                } else {
                    Reason::StartupAlone
                };
                if self.peer_seen && !self.sync_complete {
                    self.log(HaEvent::TakeoverWithIncompleteTable);
                }
                self.set_role(now, Role::Active, reason);
            }
            _ => {}
        }
    }

    /// A member that would take over from a silent peer: passive, running,
    /// not forced either way.
    fn may_take_over(&self) -> bool {
        self.role == Role::Passive && self.forced.is_none() && self.phase == Phase::Running
    }

    /// When a peer that is still alive has been silent long enough for
    /// the ICMP check to start: as [`Config::check_after`] says, before the
    /// last live path dies (each path with its own dead time,
    /// [`Config::dead_time_of`]). `None` when no check would be started
    /// (the peer is not alive, or we would not take over).
    fn early_check_due(&self) -> Option<Time> {
        if !self.may_take_over() || !self.peer_seen {
            return None;
        }
        LinkId::ALL
            .into_iter()
            .filter_map(|link| {
                let p = &self.paths[link.idx()];
                let rx = p.last_rx.filter(|_| p.alive)?;
                let dead = self.cfg.dead_time_of(link);
                Some(rx + (dead - self.cfg.icmp_timeout.min(dead / 2)))
            })
            .max()
    }

    fn start_check(&mut self, now: Time) {
        self.log(HaEvent::IcmpMonitoringStarted);
        self.actions.push_back(Action::StartIcmpProbe);
        self.check = Check::Probing {
            deadline: now + self.cfg.icmp_timeout,
        };
    }

    fn elect(&mut self, now: Time) {
        let Some(peer) = self.peer else { return };
        let me = self.me(now);
        if self.forced == Some(Role::Passive) && self.role == Role::Active {
            self.set_role(now, Role::Passive, Reason::ForcedPassive);
            return;
        }
        match (self.role, peer.role) {
            (Role::Active, Role::Passive) => {
                if peer.synchronized {
                    self.took_over = false;
                }
                if self.dual_active {
                    self.dual_active = false;
                    self.log(HaEvent::DualActiveResolved { we_yielded: false });
                }
                if challenger_wins(&me, &peer, self.cfg.quality_margin) {
                    let forced_cause = peer.forced.is_some() || me.forced.is_some();
                    let since = *self.challenge_since.get_or_insert(now);
                    if forced_cause || now >= since + self.cfg.quality_hold {
                        self.set_role(now, Role::Passive, Reason::PeerPreferred);
                    }
                } else {
                    self.challenge_since = None;
                }
            }
            (Role::Passive, Role::Passive) => {
                if peer.yields && rank(&me) > rank(&peer) && self.forced != Some(Role::Passive) {
                    self.set_role(now, Role::Active, Reason::Elected);
                }
            }
            (Role::Passive, Role::Active) => {
                self.challenge_since = None;
            }
            (Role::Active, Role::Active) => {
                if !self.dual_active {
                    self.dual_active = true;
                    self.log(HaEvent::DualActiveDetected);
                }
                if dual_rank(&me) < dual_rank(&peer) {
                    self.dual_active = false;
                    self.set_role(now, Role::Passive, Reason::DualActive);
                    self.log(HaEvent::DualActiveResolved { we_yielded: true });
                    self.sync_complete = false;
                    self.actions.push_back(Action::RequestResync);
                }
            }
        }
    }
}

fn forced_rank(f: Option<Role>) -> u8 {
    match f {
        Some(Role::Active) => 2,
        None => 1,
        Some(Role::Passive) => 0,
    }
}

/// What [`rank`] compares: forced, synchronized, quality, priority, serial
/// (lower first).
pub type Rank = (u8, bool, u8, u8, Reverse<u64>);

/// The total order used when there is no single incumbent (both passive, or
/// both active): forced, synchronized, quality, priority, lower serial.
pub fn rank(s: &PeerState) -> Rank {
    (
        forced_rank(s.forced),
        s.synchronized,
        s.quality,
        s.priority,
        Reverse(s.serial),
    )
}

/// The order that decides who stays when both are active: forced first,
/// then the member that took over from a silent peer (the other one was
/// frozen or cut off, so its table is stale), then [`rank`].
pub fn dual_rank(s: &PeerState) -> (u8, bool, Rank) {
    (forced_rank(s.forced), s.took_over, rank(s))
}

/// Whether the passive `challenger` should replace the active `incumbent`:
/// forced first; then only a synchronized challenger may preempt, on a
/// quality better by at least `margin`, or equal quality and higher priority.
/// Otherwise the current active stays.
pub fn challenger_wins(incumbent: &PeerState, challenger: &PeerState, margin: u8) -> bool {
    let (fi, fc) = (
        forced_rank(incumbent.forced),
        forced_rank(challenger.forced),
    );
    if fi != fc {
        return fc > fi;
    }
    if !challenger.synchronized {
        return false;
    }
    if challenger.quality != incumbent.quality {
        return challenger.quality >= incumbent.quality.saturating_add(margin.max(1));
    }
    challenger.priority > incumbent.priority
}
