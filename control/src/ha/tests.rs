//! Tests of the quality factor, the heartbeat format, the machine, and
//! seeded simulations checking the HA invariants.

use super::heartbeat::{Codec, DecodeError, LEN};
use super::machine::{Action, Config, Event, Ha, HaEvent, LinkId, PeerState, Reason, Role};
use super::quality::{
    quality, Aggregate, AggregateId, AggregateKind, Interface, Penalty, QualityConfig,
};
use super::sim::{Pair, Rng};
use std::time::Duration;

fn ms(x: u64) -> Duration {
    Duration::from_millis(x)
}

// ---------------------------------------------------------------- quality

#[test]
fn quality_reference_example_is_63() {
    let ifs = [
        Interface::new("out", true),
        Interface::new("in", false),
        Interface {
            weight: 75,
            ..Interface::new("dmz2", true)
        },
    ];
    // 175 / 275 = 63.6 -> 63 (rounded down)
    assert_eq!(quality(&ifs, &[], &[], &QualityConfig::default()), 63);
}

#[test]
fn quality_is_100_without_weighted_interfaces_and_ignores_ha_and_weight_0() {
    assert_eq!(quality(&[], &[], &[], &QualityConfig::default()), 100);
    let ifs = [
        Interface {
            weight: 0,
            ..Interface::new("unused", false)
        },
        Interface {
            ha: true,
            ..Interface::new("ha-main", false)
        },
        Interface::new("out", true),
    ];
    assert_eq!(quality(&ifs, &[], &[], &QualityConfig::default()), 100);
}

#[test]
fn quality_counts_an_aggregate_as_one_interface_unless_members_weigh() {
    let agg = |kind| Aggregate {
        id: AggregateId(1),
        kind,
        weight: 100,
    };
    let member = |n: &str, up| Interface {
        aggregate: Some(AggregateId(1)),
        ..Interface::new(n, up)
    };
    let ifs = [
        member("p0", true),
        member("p1", false),
        Interface::new("in", true),
    ];
    let none = QualityConfig::default();
    for kind in [AggregateKind::Lacp, AggregateKind::Redundancy] {
        assert_eq!(quality(&ifs, &[agg(kind)], &[], &none), 100);
    }
    let lacp = QualityConfig {
        lacp_members_have_weight: true,
        ..QualityConfig::default()
    };
    assert_eq!(quality(&ifs, &[agg(AggregateKind::Lacp)], &[], &lacp), 66);
    assert_eq!(
        quality(&ifs, &[agg(AggregateKind::Redundancy)], &[], &lacp),
        100
    );
    let fo = QualityConfig {
        failover_members_have_weight: true,
        ..QualityConfig::default()
    };
    assert_eq!(
        quality(&ifs, &[agg(AggregateKind::Redundancy)], &[], &fo),
        66
    );
    let down = [
        member("p0", false),
        member("p1", false),
        Interface::new("in", true),
    ];
    assert_eq!(quality(&down, &[agg(AggregateKind::Lacp)], &[], &none), 50);
}

#[test]
fn quality_penalties_pull_it_down() {
    let ifs = [Interface::new("out", true)];
    let pen = [Penalty {
        name: "disk /var".into(),
        ok: false,
        weight: 100,
    }];
    assert_eq!(quality(&ifs, &[], &pen, &QualityConfig::default()), 50);
}

// ---------------------------------------------------------------- heartbeat

fn state() -> PeerState {
    PeerState {
        role: Role::Active,
        quality: 63,
        priority: 50,
        forced: Some(Role::Passive),
        synchronized: true,
        serial: 0xDEAD_BEEF,
        epoch: 1,
        uptime_ms: 12345,
        gen: 9,
        yields: false,
        took_over: true,
    }
}

#[test]
fn a_key_change_keeps_heartbeats_flowing_both_ways_at_every_step() {
    let (mut a, mut b) = (Codec::new(b"old key", 7), Codec::new(b"old key", 7));
    let ok = |tx: &mut Codec, rx: &mut Codec| rx.decode(&tx.encode(LinkId::Main, &state())).is_ok();
    // B stages first: it still sends under the old key, and takes both.
    b.set_keys(b"old key", Some(b"new key"));
    assert!(ok(&mut a, &mut b) && ok(&mut b, &mut a));
    // A commits: it sends under the new key, B takes it as its staged key.
    a.set_keys(b"new key", Some(b"old key"));
    assert!(ok(&mut a, &mut b) && b.last_under_alt());
    assert!(
        ok(&mut b, &mut a) && a.last_under_alt(),
        "A still takes the old key"
    );
    // B commits: both send under the new key.
    b.set_keys(b"new key", Some(b"old key"));
    assert!(ok(&mut a, &mut b) && !b.last_under_alt());
    assert!(
        ok(&mut b, &mut a) && !a.last_under_alt(),
        "A heard B under the new key"
    );
    // Retired: the old key is refused.
    a.set_keys(b"new key", None);
    let mut old = Codec::new(b"old key", 7);
    assert_eq!(
        a.decode(&old.encode(LinkId::Backup, &state())),
        Err(DecodeError::BadTag)
    );
    assert!(ok(&mut b, &mut a));
}

#[test]
fn heartbeat_round_trips() {
    let mut tx = Codec::new(b"secret", 7);
    let mut rx = Codec::new(b"secret", 7);
    for link in LinkId::ALL {
        let b = tx.encode(link, &state());
        let hb = rx.decode(&b).expect("valid");
        assert_eq!(hb.state, state());
        assert_eq!(hb.link, link);
    }
}

#[test]
fn our_own_looped_back_heartbeat_does_not_move_the_replay_window() {
    let mut me = Codec::new(b"secret", 7);
    let mut rx = Codec::new(b"secret", 7).with_own_serial(0xDEAD_BEEF);
    let mut own = state();
    own.epoch = 1 << 40; // a later epoch than the peer's
    let b = me.encode(LinkId::Data, &own);
    assert_eq!(rx.decode(&b), Err(DecodeError::Own));
    let mut peer_state = state();
    peer_state.serial = 2;
    let b = Codec::new(b"secret", 7).encode(LinkId::Data, &peer_state);
    assert!(rx.decode(&b).is_ok(), "the peer's older epoch still passes");
}

/// A member's state and codec: serial `serial`, boot epoch `epoch`.
fn member(serial: u64, epoch: u64) -> (PeerState, Codec) {
    let s = PeerState {
        serial,
        epoch,
        ..state()
    };
    let c = Codec::new(b"secret", 7)
        .with_own_serial(serial)
        .with_own_epoch(epoch);
    (s, c)
}

/// Two members' codecs (epochs `a` and `b`) exchange heartbeats on the
/// main link until both accept the other's; returns the rounds it took.
fn handshake(ca: &mut Codec, a: &PeerState, cb: &mut Codec, b: &PeerState) -> usize {
    let (mut a_ok, mut b_ok) = (false, false);
    for round in 1..=10 {
        b_ok |= cb.decode(&ca.encode(LinkId::Main, a)).is_ok();
        a_ok |= ca.decode(&cb.encode(LinkId::Main, b)).is_ok();
        if a_ok && b_ok {
            return round;
        }
    }
    panic!("no handshake in 10 rounds");
}

#[test]
fn a_new_epoch_counts_only_once_it_echoes_ours_and_a_restart_costs_one_exchange() {
    let (sa, mut ca) = member(1, 1000);
    let (sb, mut cb) = member(2, 2000);
    // First contact: A's first heartbeat cannot echo B yet.
    assert_eq!(
        cb.decode(&ca.encode(LinkId::Main, &sa)),
        Err(DecodeError::Unproven)
    );
    assert!(handshake(&mut ca, &sa, &mut cb, &sb) <= 2);
    // B restarts with a higher epoch (its clock even went back: the
    // epoch comes from its state directory): one more exchange.
    let (sb2, mut cb2) = member(2, 2001);
    assert!(handshake(&mut ca, &sa, &mut cb2, &sb2) <= 2);
}

#[test]
fn heartbeats_captured_before_the_receiver_restarted_keep_no_dead_peer_alive() {
    let (sa, mut ca) = member(1, 1000);
    let (sb, mut cb) = member(2, 2000);
    handshake(&mut ca, &sa, &mut cb, &sb);
    // A host on a data segment records A's last-resort heartbeats; A dies.
    let capture: Vec<_> = (0..50).map(|_| ca.encode(LinkId::Data, &sa)).collect();
    // B restarts (a new epoch) and gets the capture replayed: none counts.
    let (_, mut cb2) = member(2, 2001);
    for hb in &capture {
        assert!(cb2.decode(hb).is_err(), "a replayed heartbeat counted");
    }
    // The same capture replayed to the B that saw it live: replays.
    for hb in &capture[..10] {
        cb.decode(hb).expect("live");
    }
    for hb in &capture[..10] {
        assert_eq!(cb.decode(hb), Err(DecodeError::Replay));
    }
}

#[test]
fn heartbeat_rejects_wrong_key_cluster_replay_and_tampering() {
    let mut tx = Codec::new(b"secret", 7);
    let b1 = tx.encode(LinkId::Main, &state());
    let b2 = tx.encode(LinkId::Main, &state());
    assert_eq!(
        Codec::new(b"other", 7).decode(&b1),
        Err(DecodeError::BadTag)
    );
    assert_eq!(
        Codec::new(b"secret", 8).decode(&b1),
        Err(DecodeError::WrongCluster(7))
    );
    let mut rx = Codec::new(b"secret", 7);
    rx.decode(&b2).expect("fresh");
    assert_eq!(rx.decode(&b1), Err(DecodeError::Replay));
    assert_eq!(rx.decode(&b2), Err(DecodeError::Replay));
    // a restarted sender (higher epoch) starts its sequence again
    let mut tx2 = Codec::new(b"secret", 7);
    let restarted = PeerState {
        epoch: 2,
        ..state()
    };
    rx.decode(&tx2.encode(LinkId::Main, &restarted))
        .expect("new epoch");
    for i in 0..LEN * 8 {
        let mut t = tx2.encode(LinkId::Backup, &restarted);
        t[i / 8] ^= 1 << (i % 8);
        assert!(rx.decode(&t).is_err(), "bit {i} flipped was accepted");
    }
    assert_eq!(rx.decode(&b1[..10]), Err(DecodeError::BadLength(10)));
}

#[test]
fn heartbeat_decode_never_panics_on_random_bytes() {
    let mut rng = Rng::new(1);
    let mut rx = Codec::new(b"secret", 7);
    let mut tx = Codec::new(b"secret", 7);
    let good = tx.encode(LinkId::Main, &state());
    for _ in 0..20_000 {
        let len = rng.below(80) as usize;
        let mut b: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        if rng.chance(0.5) && len >= 12 {
            b[..12.min(len)].copy_from_slice(&good[..12.min(len)]);
        }
        let _ = rx.decode(&b);
    }
}

// ---------------------------------------------------------------- machine

fn fast(serial: u64) -> Config {
    Config {
        startup_wait: ms(300),
        ..Config::new(serial)
    }
}

#[test]
fn alone_at_startup_becomes_active_after_wait_and_icmp() {
    let mut ha = Ha::new(fast(1), ms(0));
    let mut t = ms(0);
    let mut probe_at = None;
    while t < ms(1000) && ha.role() == Role::Passive {
        t = ha.poll_timeout().max(t);
        for a in ha.on_event(t, Event::Tick) {
            if a == Action::StartIcmpProbe {
                probe_at = Some(t);
            }
        }
        if probe_at.is_some_and(|p| t >= p + ms(10)) {
            ha.on_event(t, Event::IcmpTimeout);
        }
    }
    assert_eq!(ha.role(), Role::Active);
    assert!(probe_at.expect("probed") >= ms(300));
}

#[test]
fn passive_answered_by_icmp_does_not_take_over() {
    let mut ha = Ha::new(fast(1), ms(0));
    let peer = PeerState {
        serial: 2,
        uptime_ms: 1,
        ..state()
    };
    let peer = PeerState {
        forced: None,
        ..peer
    };
    ha.on_event(
        ms(1),
        Event::PeerHeartbeat {
            link: LinkId::Main,
            peer,
        },
    );
    assert_eq!(ha.role(), Role::Passive);
    let mut t = ms(1);
    while t < ms(2000) {
        t = ha.poll_timeout().max(t + Duration::from_micros(1));
        for a in ha.on_event(t, Event::Tick) {
            if a == Action::StartIcmpProbe {
                ha.on_event(t, Event::IcmpReply);
            }
        }
        assert_eq!(ha.role(), Role::Passive);
    }
}

/// A passive member that hears an active peer, then silence from `t0`:
/// drives the machine with ticks (and the caller's `on_probe`) until `end`;
/// returns when the check started and when it became active.
fn silence_after_heartbeats(
    cfg: Config,
    t0: Duration,
    end: Duration,
    mut on_probe: impl FnMut(&mut Ha, Duration),
) -> (Option<Duration>, Option<Duration>) {
    let mut ha = Ha::new(cfg, ms(0));
    let peer = PeerState {
        serial: 2,
        forced: None,
        synchronized: true,
        ..state()
    };
    ha.on_event(ms(0), Event::SyncComplete(true));
    let (mut probe, mut active) = (None, None);
    let mut t = ms(0);
    let mut next_hb = ms(1);
    while t < end {
        if next_hb < t0 && next_hb <= ha.poll_timeout() {
            t = next_hb;
            next_hb += ha_interval();
            ha.on_event(
                t,
                Event::PeerHeartbeat {
                    link: LinkId::Main,
                    peer,
                },
            );
            continue;
        }
        t = ha.poll_timeout().max(t + Duration::from_micros(1));
        for a in ha.on_event(t, Event::Tick) {
            if a == Action::StartIcmpProbe {
                probe.get_or_insert(t);
                on_probe(&mut ha, t);
            }
            if matches!(a, Action::BecomeActive { .. }) {
                active.get_or_insert(t);
            }
        }
    }
    (probe, active)
}

fn ha_interval() -> Duration {
    ms(5)
}

#[test]
fn the_icmp_check_starts_before_dead_time_so_a_dead_peer_is_replaced_at_dead_time() {
    let cfg = Config {
        interval: ha_interval(),
        dead_time: ms(25),
        icmp_timeout: ms(10),
        ..fast(1)
    };
    assert_eq!(cfg.check_after(), ms(15));
    assert_eq!(cfg.detection_time(), ms(25));
    // The last heartbeat is at 496 ms (every 5 ms from 1 ms, before 500).
    let last = ms(496);
    let (probe, active) = silence_after_heartbeats(cfg.clone(), ms(500), ms(700), |_, _| {});
    let (probe, active) = (probe.expect("a check"), active.expect("a takeover"));
    assert!(
        probe >= last + ms(15) && probe < last + ms(16),
        "the check starts 15 ms into the silence: {:?}",
        probe - last
    );
    assert!(
        active >= last + ms(25) && active < last + ms(26),
        "the takeover comes at dead_time, not dead_time + icmp_timeout: {:?}",
        active - last
    );
    // A peer whose dataplane answers the early check is not taken over.
    let (probe, active) = silence_after_heartbeats(cfg.clone(), ms(500), ms(900), |ha, t| {
        ha.on_event(t, Event::IcmpReply);
    });
    assert!(probe.is_some());
    assert_eq!(active, None, "the peer answered the check");
    // A longer check than half of dead_time starts at half of it, and the
    // takeover waits for its end.
    let slow = Config {
        icmp_timeout: ms(20),
        ..cfg
    };
    assert_eq!(slow.check_after(), ms(12) + Duration::from_micros(500));
    let (probe, active) = silence_after_heartbeats(slow, ms(500), ms(700), |_, _| {});
    let (probe, active) = (probe.unwrap(), active.unwrap());
    assert!(
        probe >= last + ms(12) && probe < last + ms(14),
        "{:?}",
        probe - last
    );
    assert!(
        active >= last + ms(32) && active < last + ms(34),
        "{:?}",
        active - last
    );
}

#[test]
fn a_peer_heard_again_during_the_early_check_is_not_taken_over() {
    let cfg = Config {
        interval: ha_interval(),
        dead_time: ms(25),
        icmp_timeout: ms(10),
        ..fast(1)
    };
    let mut ha = Ha::new(cfg, ms(0));
    let peer = PeerState {
        serial: 2,
        forced: None,
        ..state()
    };
    let hb = |ha: &mut Ha, t| {
        ha.on_event(
            t,
            Event::PeerHeartbeat {
                link: LinkId::Main,
                peer,
            },
        )
    };
    hb(&mut ha, ms(1));
    // 18 ms of silence: the check starts (at 16 ms), unanswered.
    let acts = ha.on_event(ms(17), Event::Tick);
    assert!(acts.contains(&Action::StartIcmpProbe), "{acts:?}");
    assert_eq!(ha.icmp_check(), "probing");
    // The peer is heard again before dead_time: the check is dropped and
    // its timeout changes nothing.
    hb(&mut ha, ms(20));
    assert_eq!(ha.icmp_check(), "idle");
    ha.on_event(ms(27), Event::IcmpTimeout);
    for t in [30, 40, 44] {
        ha.on_event(ms(t), Event::Tick);
        assert_eq!(ha.role(), Role::Passive, "at {t} ms");
    }
}

#[test]
fn a_better_synchronized_peer_makes_the_active_yield_and_announce_it() {
    let mut ha = Ha::new(fast(1), ms(0));
    let mut peer = PeerState {
        role: Role::Passive,
        quality: 50,
        priority: 0,
        forced: None,
        synchronized: true,
        serial: 2,
        epoch: 1,
        uptime_ms: 1,
        gen: 1,
        yields: true,
        took_over: false,
    };
    ha.on_event(ms(1), Event::SyncComplete(true));
    let acts = ha.on_event(
        ms(1),
        Event::PeerHeartbeat {
            link: LinkId::Main,
            peer,
        },
    );
    assert!(acts.contains(&Action::BecomeActive {
        reason: Reason::Elected
    }));
    peer.yields = false;
    ha.on_event(
        ms(2),
        Event::PeerHeartbeat {
            link: LinkId::Main,
            peer,
        },
    );
    assert_eq!(ha.role(), Role::Active);
    let acts = ha.on_event(ms(3), Event::LocalQuality(40));
    assert!(acts.contains(&Action::BecomePassive {
        reason: Reason::PeerPreferred
    }));
    assert!(acts.iter().any(|a| matches!(a, Action::SendHeartbeat { state, .. } if state.role == Role::Passive && state.yields)));
}

// ---------------------------------------------------------------- simulation

#[derive(Clone, Copy, Debug)]
enum Fault {
    Cut(usize, Duration),
    Freeze(usize, Duration),
    Crash(usize, Duration),
    Quality(usize, u8),
    Forced(usize, Option<Role>),
}

#[derive(Clone, Copy)]
struct Mix {
    loss: f64,
    /// A path that is never cut and never loses a packet.
    anchor: Option<usize>,
    cuts: bool,
    /// Only one HA link may be cut.
    one_ha_link_only: bool,
    node_faults: bool,
    freeze: bool,
    quality: bool,
    forced: bool,
}

const QUIET: Mix = Mix {
    loss: 0.0,
    anchor: None,
    cuts: false,
    one_ha_link_only: false,
    node_faults: false,
    freeze: false,
    quality: false,
    forced: false,
};

struct Run {
    pair: Pair,
    causes: u32,
    swaps_after_convergence: u32,
    forced_passive_violation: bool,
    forced_end: [Option<Role>; 2],
}

const CONVERGED: u64 = 500;
const FAULTS_END: u64 = 2500;
const END: u64 = 3500;

fn scenario(seed: u64, mix: Mix) -> Run {
    let mut rng = Rng::new(seed ^ 0xA5A5_5A5A);
    let mut a = Config::new(1);
    let mut b = Config::new(2);
    a.startup_wait = ms(300);
    b.startup_wait = ms(300);
    if rng.chance(0.5) {
        a.priority = 50;
    }
    if rng.chance(0.3) {
        b.quality_hold = ms(rng.below(100));
        a.quality_hold = b.quality_hold;
    }
    let mut pair = Pair::new(seed, a, b);
    for (i, p) in pair.paths.iter_mut().enumerate() {
        if Some(i) != mix.anchor {
            p.loss = mix.loss * rng.below(100) as f64 / 100.0;
            p.jitter = Duration::from_micros(rng.below(1500));
        }
        p.delay = Duration::from_micros(50 + rng.below(1000));
    }
    // Start-up: the second member may start late.
    if rng.chance(0.5) {
        pair.crash(1, ms(rng.below(400)));
    }
    pair.run_until(ms(CONVERGED));
    let base: u32 = pair.nodes.iter().map(|n| n.became_active).sum();
    let mut faults = Vec::new();
    let nf = rng.below(6);
    for _ in 0..nf {
        let t = CONVERGED + rng.below(FAULTS_END - CONVERGED);
        let n = rng.below(2) as usize;
        let d = ms(10 + rng.below(400));
        let f = match rng.below(5) {
            0 if mix.cuts => {
                let mut path = rng.below(3) as usize;
                if mix.one_ha_link_only {
                    path = rng.below(2) as usize;
                }
                if Some(path) == mix.anchor {
                    continue;
                }
                Fault::Cut(path, d)
            }
            1 if mix.node_faults => {
                if mix.freeze && rng.chance(0.5) {
                    Fault::Freeze(n, d)
                } else {
                    Fault::Crash(n, d)
                }
            }
            2 if mix.quality => Fault::Quality(n, [100, 90, 63, 50, 0][rng.below(5) as usize]),
            3 if mix.forced => Fault::Forced(
                n,
                [None, Some(Role::Active), Some(Role::Passive)][rng.below(3) as usize],
            ),
            _ => continue,
        };
        faults.push((ms(t), f));
    }
    if mix.one_ha_link_only {
        // Never cut both HA links at the same time.
        let first = faults.iter().find_map(|(_, f)| match f {
            Fault::Cut(p, _) => Some(*p),
            _ => None,
        });
        faults.retain(|(_, f)| !matches!(f, Fault::Cut(p, _) if Some(*p) != first));
    }
    faults.sort_by_key(|(t, _)| *t);
    let causes = faults.len() as u32;
    let mut heals: Vec<(Duration, usize)> = Vec::new();
    let mut forced = [None, None];
    let mut violation = false;
    let step_check =
        |pair: &mut Pair, until: Duration, forced: &[Option<Role>; 2], v: &mut bool| {
            while pair.now < until {
                pair.step(until);
                for (n, f) in forced.iter().enumerate() {
                    if *f == Some(Role::Passive) && pair.effectively_active(n) {
                        *v = true;
                    }
                }
            }
        };
    for (t, f) in faults {
        heals.sort();
        while let Some(&(ht, p)) = heals.first() {
            if ht > t {
                break;
            }
            step_check(&mut pair, ht, &forced, &mut violation);
            pair.paths[p].cut = false;
            heals.remove(0);
        }
        step_check(&mut pair, t, &forced, &mut violation);
        match f {
            Fault::Cut(p, d) => {
                pair.paths[p].cut = true;
                heals.push((t + d, p));
            }
            Fault::Freeze(n, d) => pair.freeze(n, d),
            Fault::Crash(n, d) => pair.crash(n, d),
            Fault::Quality(n, q) => pair.feed(n, Event::LocalQuality(q)),
            Fault::Forced(n, r) => {
                forced[n] = r;
                pair.nodes[n].forced = r;
                pair.feed(n, Event::Forced(r));
            }
        }
    }
    for (ht, p) in heals {
        let until = ht.max(pair.now);
        step_check(&mut pair, until, &forced, &mut violation);
        pair.paths[p].cut = false;
    }
    step_check(&mut pair, ms(FAULTS_END), &forced, &mut violation);
    for p in pair.paths.iter_mut() {
        p.cut = false;
    }
    // A restarted machine forgets forced status: the daemon re-applies it.
    for (n, f) in forced.iter().enumerate() {
        if f.is_some() {
            pair.feed(n, Event::Forced(*f));
        }
    }
    step_check(&mut pair, ms(END), &forced, &mut violation);
    let total: u32 = pair.nodes.iter().map(|n| n.became_active).sum();
    Run {
        pair,
        causes,
        swaps_after_convergence: total - base,
        forced_passive_violation: violation,
        forced_end: forced,
    }
}

fn seeds(n: u64, salt: u64) -> impl Iterator<Item = u64> {
    (0..n).map(move |i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt)
}

fn detection_bound() -> Duration {
    let c = Config::new(0);
    c.detection_time() + 3 * c.interval + ms(5)
}

fn fail(seed: u64, what: &str, run: &Run) -> ! {
    let mut logs = String::new();
    for (i, n) in run.pair.nodes.iter().enumerate() {
        for (t, l) in &n.log {
            logs += &format!("{t:>10.3?} n{i} {l}\n");
        }
    }
    panic!(
        "seed {seed:#x}: {what}; rerun with that seed. causes {}, logs:\n{logs}",
        run.causes
    );
}

const RUNS: u64 = 5000;

#[test]
fn never_two_actives_while_a_path_works() {
    for seed in seeds(RUNS, 1) {
        let mut r = Rng::new(seed);
        let mix = Mix {
            loss: 0.2,
            anchor: Some(r.below(3) as usize),
            cuts: true,
            node_faults: true,
            quality: true,
            forced: true,
            ..QUIET
        };
        let run = scenario(seed, mix);
        if run.pair.dual_active_with_path > Duration::ZERO {
            fail(
                seed,
                &format!("dual active for {:?}", run.pair.dual_active_with_path),
                &run,
            );
        }
    }
}

#[test]
fn no_takeover_silently_loses_a_connection_older_than_the_lag_bound() {
    // The table is streamed as records over lossy HA links that get cut;
    // members crash, freeze, change quality and are forced. A member that
    // takes over while saying its table is complete must hold every
    // connection older than the lag bound.
    let mut takeovers = 0;
    let mut announced = 0;
    for seed in seeds(RUNS / 5, 7) {
        let mix = Mix {
            loss: 0.2,
            cuts: true,
            node_faults: true,
            freeze: true,
            quality: true,
            forced: true,
            ..QUIET
        };
        let run = scenario(seed, mix);
        let t = &run.pair.table;
        takeovers += t.takeovers;
        announced += t.announced_losses;
        if t.silent_losses > 0 {
            fail(
                seed,
                &format!("{} takeovers lost connections silently", t.silent_losses),
                &run,
            );
        }
    }
    eprintln!(
        "{takeovers} takeovers; connections lost at takeovers announced as incomplete: {announced}"
    );
    assert!(takeovers > 500, "the runs exercised takeovers: {takeovers}");
}

#[test]
fn dual_active_never_outlasts_the_detection_time() {
    for seed in seeds(RUNS, 2) {
        let mix = Mix {
            loss: 0.3,
            cuts: true,
            node_faults: true,
            freeze: true,
            quality: true,
            forced: true,
            ..QUIET
        };
        let run = scenario(seed, mix);
        if run.pair.longest_dual_with_path > detection_bound() {
            fail(
                seed,
                &format!("dual active for {:?}", run.pair.longest_dual_with_path),
                &run,
            );
        }
    }
}

#[test]
fn healthy_peer_is_never_deposed_and_one_ha_link_cut_swaps_nothing() {
    for seed in seeds(RUNS, 3) {
        let mix = Mix {
            loss: 0.15,
            cuts: true,
            one_ha_link_only: true,
            ..QUIET
        };
        let run = scenario(seed, mix);
        if run.swaps_after_convergence != 0 {
            fail(
                seed,
                &format!("{} swaps without cause", run.swaps_after_convergence),
                &run,
            );
        }
    }
}

#[test]
fn no_flapping_swaps_bounded_by_causes() {
    for seed in seeds(RUNS, 4) {
        let mix = Mix {
            loss: 0.2,
            cuts: true,
            node_faults: true,
            freeze: true,
            quality: true,
            forced: true,
            ..QUIET
        };
        let run = scenario(seed, mix);
        if run.swaps_after_convergence > 2 * run.causes {
            fail(
                seed,
                &format!(
                    "{} swaps for {} causes",
                    run.swaps_after_convergence, run.causes
                ),
                &run,
            );
        }
    }
}

#[test]
fn forced_status_always_wins_and_the_pair_converges_to_one_active() {
    for seed in seeds(RUNS, 5) {
        let mix = Mix {
            loss: 0.1,
            cuts: true,
            node_faults: true,
            quality: true,
            forced: true,
            ..QUIET
        };
        let run = scenario(seed, mix);
        if run.forced_passive_violation {
            fail(seed, "a member forced passive was active", &run);
        }
        let f = run.forced_end;
        let actives = run.pair.actives();
        let want = if f == [Some(Role::Passive); 2] { 0 } else { 1 };
        if actives != want {
            fail(
                seed,
                &format!("{actives} actives at the end, want {want}"),
                &run,
            );
        }
        for n in 0..2 {
            if f[n] == Some(Role::Active)
                && f[1 - n] != Some(Role::Active)
                && !run.pair.effectively_active(n)
            {
                fail(seed, &format!("member {n} forced active is passive"), &run);
            }
        }
    }
}

#[test]
fn simulation_is_not_vacuous_takeovers_and_dual_active_happen() {
    let (mut takeovers, mut dual_yields, mut icmp_saves) = (0, 0, 0);
    for seed in seeds(500, 6) {
        let mix = Mix {
            loss: 0.2,
            cuts: true,
            node_faults: true,
            freeze: true,
            quality: true,
            forced: true,
            ..QUIET
        };
        let run = scenario(seed, mix);
        for n in &run.pair.nodes {
            for (_, l) in &n.log {
                takeovers += usize::from(l.contains("PeerDead"));
                dual_yields += usize::from(l.contains("DualActiveResolved { we_yielded: true }"));
                icmp_saves += usize::from(l.contains("IcmpResult { peer_alive: true }"));
            }
        }
    }
    eprintln!(
        "takeovers {takeovers}, dual-active yields {dual_yields}, ICMP answered {icmp_saves}"
    );
    // ICMP rarely decides here: the last-resort heartbeat answers first.
    let _ = icmp_saves;
    assert!(takeovers > 50 && dual_yields > 5);
}

/// A member that found no peer at start-up and became active.
fn alone_active(serial: u64) -> Ha {
    let mut ha = Ha::new(
        Config {
            startup_wait: ms(0),
            ..Config::new(serial)
        },
        ms(0),
    );
    ha.on_event(ms(1), Event::Tick);
    ha.on_event(ms(1), Event::IcmpTimeout);
    ha
}

#[test]
fn after_a_freeze_the_member_that_took_over_stays_active() {
    // Member 1 (lower serial) was active and froze; member 2 took over.
    // When 1 wakes up still active, it yields although it ranks first.
    let mut ha = alone_active(1);
    assert_eq!(ha.role(), Role::Active);
    let peer = PeerState {
        role: Role::Active,
        forced: None,
        serial: 2,
        took_over: true,
        ..state()
    };
    let acts = ha.on_event(
        ms(3),
        Event::PeerHeartbeat {
            link: LinkId::Main,
            peer,
        },
    );
    assert_eq!(ha.role(), Role::Passive, "{acts:?}");
    assert!(acts.contains(&Action::RequestResync), "{acts:?}");
    // Without the takeover mark, the lower serial would have stayed.
    let mut ha = alone_active(1);
    ha.on_event(
        ms(3),
        Event::PeerHeartbeat {
            link: LinkId::Main,
            peer: PeerState {
                took_over: false,
                ..peer
            },
        },
    );
    assert_eq!(ha.role(), Role::Active);
}

#[test]
fn forced_active_takes_over_from_a_silent_peer_even_if_it_answers_icmp() {
    let mut ha = Ha::new(fast(2), ms(0));
    ha.on_event(ms(1), Event::Forced(Some(Role::Active)));
    let mut t = ms(1);
    while t < ms(1000) && ha.role() == Role::Passive {
        t = ha.poll_timeout().max(t + Duration::from_micros(1));
        for a in ha.on_event(t, Event::Tick) {
            if a == Action::StartIcmpProbe {
                ha.on_event(t, Event::IcmpReply);
            }
        }
    }
    assert_eq!(ha.role(), Role::Active, "the operator's word wins");
}

#[test]
fn swap_reasons_are_words_not_code() {
    for r in [
        Reason::StartupAlone,
        Reason::PeerDead {
            table_complete: true,
        },
        Reason::PeerDead {
            table_complete: false,
        },
        Reason::Elected,
        Reason::PeerPreferred,
        Reason::DualActive,
        Reason::ForcedPassive,
        Reason::ForcedActive,
    ] {
        let text = r.to_string();
        // No Rust names such as PeerDead (mixed-case words), no braces.
        let camel = text.split(|c: char| !c.is_ascii_alphanumeric()).any(|w| {
            w.chars().any(|c| c.is_ascii_lowercase())
                && w.chars().skip(1).any(|c| c.is_ascii_uppercase())
        });
        assert!(
            text.len() > 20 && !text.contains('{') && !camel,
            "{r:?}: {text}"
        );
    }
    assert!(Reason::PeerDead {
        table_complete: false
    }
    .to_string()
    .contains("was not complete"));
}

#[test]
fn only_a_passive_logs_that_its_table_is_complete_or_not() {
    let log_of = |acts: Vec<Action>| {
        acts.into_iter()
            .filter(|a| matches!(a, Action::Log(HaEvent::Synchronized(_))))
            .count()
    };
    let mut ha = Ha::new(fast(1), ms(0));
    assert_eq!(ha.role(), Role::Passive);
    assert_eq!(log_of(ha.on_event(ms(1), Event::SyncComplete(true))), 1);
    assert_eq!(log_of(ha.on_event(ms(2), Event::SyncComplete(false))), 1);
    // Active (forced): the peer's restart clears the flag, and nothing
    // says that our own table is incomplete.
    ha.on_event(ms(3), Event::Forced(Some(Role::Active)));
    let mut t = ms(3);
    while ha.role() != Role::Active && t < ms(2000) {
        t = ha.poll_timeout().max(t + Duration::from_micros(1));
        ha.on_event(t, Event::Tick);
    }
    assert_eq!(ha.role(), Role::Active);
    assert_eq!(log_of(ha.on_event(t, Event::SyncComplete(true))), 0);
    assert_eq!(log_of(ha.on_event(t, Event::SyncComplete(false))), 0);
}
