//! The HA election end to end (issue 5): two real tandemd members with the
//! election on (the default), real hosts, a live TCP transfer (iperf3,
//! 100 ms intervals) through the cluster in every test, and the largest
//! gap in it measured and bounded.

use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tandem_tests::cluster::{
    self, largest_gap, role, wait_ctl, wait_role, wait_synchronized, worker_sum, Cluster,
};
use tandem_tests::cmd::signal_group;
use tandem_tests::host::{self, IperfServer};
use tandem_tests::lab::addr;
use tandem_tests::node::HaSection;
use tandem_tests::{link, require_root, tools, Lab};

/// The policy of the election tests: TCP to iperf3 and pings through.
const POLICY: &str = r#"(
    rules: [
        (action: Pass, from: ["198.18.1.0/24"], proto: Tcp, dst_ports: ["5201"]),
        (action: Pass, from: ["198.18.1.0/24"], proto: Icmp, icmp_types: [8]),
    ],
    default_action: Block,
)"#;

/// iperf3 report interval.
const INTERVAL: f64 = 0.1;

fn start(tag: &str, tweak: impl Fn(usize, &mut HaSection)) -> Cluster {
    cluster::start(tag, Some(POLICY), &[], tweak).expect("starting the cluster")
}

/// Waits for the single active member and a synchronized passive; returns
/// (active, passive) indices.
fn settled(c: &Cluster) -> (usize, usize) {
    let active = c
        .wait_single_active(Duration::from_secs(8))
        .expect("one member elected");
    let passive = 1 - active;
    wait_synchronized(
        &c.nodes[passive],
        "the passive synchronized",
        Duration::from_secs(10),
    )
    .expect("synchronized");
    host::wait_for_ping(c.lab.client(), addr::SERVER, Duration::from_secs(20))
        .expect("through the active");
    (active, passive)
}

/// Runs an iperf3 transfer of `secs` seconds through the cluster, calls
/// `during` after `at` seconds, and returns the largest gap in the stream
/// and what `during` returned. Fails the test if the transfer fails.
fn transfer<T: Send>(
    lab: &Lab,
    secs: u32,
    at: Duration,
    during: impl FnOnce() -> T + Send,
) -> (Duration, T) {
    let _srv = IperfServer::start(lab.server(), addr::SERVER, 5201).unwrap();
    let client = lab.client();
    let (res, out) = thread::scope(|s| {
        let run = s.spawn(|| {
            host::iperf_client(
                client,
                addr::SERVER,
                5201,
                secs,
                &["-i", &INTERVAL.to_string()],
            )
        });
        thread::sleep(at);
        let out = during();
        (run.join().expect("iperf thread"), out)
    });
    let res = res.expect("the transfer completed (no reset, no stall)");
    let intervals = tools::iperf_intervals(&res.raw);
    let gap = largest_gap(&intervals, INTERVAL);
    eprintln!(
        "transfer: {:.0} Mbit/s mean, largest gap {gap:?}",
        res.bits_per_second / 1e6
    );
    (gap, out)
}

fn hainfo(n: &tandem_tests::Node) -> Value {
    n.ctl(&["hainfo"]).expect("hainfo")
}

fn forwarded(n: &tandem_tests::Node) -> u64 {
    worker_sum(&n.stats().expect("stats"), "forwarded")
}

fn log_text(n: &tandem_tests::Node) -> String {
    n.ctl(&["log", "--lines", "300"]).expect("log")["lines"].to_string()
}

#[test]
fn the_lower_serial_is_elected_and_hainfo_shows_both_members() {
    require_root!();
    let c = start("elstart", |_, ha| {
        ha.extra = "garp_interval_ms: 200,".into()
    });
    let (active, passive) = settled(&c);
    assert_eq!(active, 0, "equal members: the lower serial (fw1) wins");
    // The active keeps announcing its addresses every 200 ms.
    let garps = || worker_sum(&c.nodes[active].stats().unwrap(), "garps_sent");
    let g0 = garps();
    thread::sleep(Duration::from_millis(1100));
    let sent = garps() - g0;
    assert!(
        (12..=48).contains(&sent),
        "a series of 3 GARPs for 2 addresses every 200 ms for 1.1 s: {sent}"
    );
    assert_eq!(
        worker_sum(&c.nodes[passive].stats().unwrap(), "garps_sent"),
        0
    );
    let info = hainfo(&c.nodes[passive]);
    eprintln!(
        "{}",
        c.nodes[passive].ctl_text(&["hainfo"]).unwrap_or_default()
    );
    assert_eq!(info["state"], "running");
    assert_eq!(info["local"]["role"], "passive");
    assert_eq!(info["local"]["synchronized"], true);
    assert_eq!(info["peer"]["role"], "active");
    assert_eq!(info["peer"]["quality"], 100);
    let links = info["links"].as_array().unwrap();
    for name in ["HA-main", "HA-backup"] {
        let l = links.iter().find(|l| l["name"] == name).unwrap();
        assert_eq!(l["peer_heard"], true, "{name}: {info}");
    }
    // While an HA link works, nothing goes over the data network.
    let lr = links.iter().find(|l| l["name"] == "last-resort").unwrap();
    assert_eq!(lr["carrier"], false, "{info}");
}

#[test]
fn a_kill_9_of_the_active_moves_a_live_transfer_within_the_detection_time() {
    require_root!();
    let mut c = start("elkill", |_, _| {});
    let (active, _) = settled(&c);
    let mut victim = c.nodes.remove(active);
    let t0 = Instant::now();
    let (gap, took) = transfer(&c.lab, 6, Duration::from_secs(2), || {
        victim.proc.signal("KILL");
        let t = Instant::now();
        // The survivor takes over after dead time + ICMP check.
        let end = t + Duration::from_secs(3);
        while role(&c.nodes[0]).0 != "active" && Instant::now() < end {
            thread::sleep(Duration::from_millis(5));
        }
        t.elapsed()
    });
    drop(victim);
    eprintln!("takeover seen after {took:?} (test ran {:?})", t0.elapsed());
    let survivor = &c.nodes[0];
    assert_eq!(role(survivor).0, "active", "the passive took over");
    let log = log_text(survivor);
    assert!(
        log.contains("ICMP check"),
        "checked before taking over: {log}"
    );
    assert!(log.contains("the peer is dead"), "{log}");
    assert!(
        gap <= Duration::from_millis(1500),
        "largest gap {gap:?} (log: {log})"
    );
}

#[test]
fn forced_status_overrides_the_election_and_hareset_keeps_the_incumbent() {
    require_root!();
    let c = start("elforce", |_, _| {});
    let (a, p) = settled(&c);
    let (gap, ()) = transfer(&c.lab, 6, Duration::from_secs(2), || {
        let r = c.nodes[p].ctl(&["haactive"]).expect("haactive");
        assert_eq!(r["forced"], "active");
        wait_role(
            &c.nodes[p],
            "active",
            "the forced member becomes active",
            Duration::from_secs(2),
        )
        .expect("forced swap");
    });
    assert!(gap <= Duration::from_millis(1000), "gap {gap:?}");
    assert_eq!(role(&c.nodes[a]).0, "passive");
    // hareset: the forced status goes, the current active stays.
    c.nodes[p].ctl(&["hareset"]).expect("hareset");
    thread::sleep(Duration::from_millis(500));
    assert_eq!(role(&c.nodes[p]), ("active".to_owned(), None));
    assert_eq!(role(&c.nodes[a]).0, "passive");
    // hapassive on the active hands over to the peer.
    c.nodes[p].ctl(&["hapassive"]).expect("hapassive");
    wait_role(
        &c.nodes[a],
        "active",
        "hapassive moves the role back",
        Duration::from_secs(2),
    )
    .expect("swap back");
    assert_eq!(role(&c.nodes[p]).0, "passive");
    // Forced passive on both: nobody may be active; the log says why.
    c.nodes[a].ctl(&["hapassive"]).expect("hapassive");
    thread::sleep(Duration::from_millis(500));
    assert_eq!(role(&c.nodes[a]).0, "passive");
    assert_eq!(role(&c.nodes[p]).0, "passive");
}

#[test]
fn cutting_the_actives_inside_link_swaps_on_quality() {
    require_root!();
    let c = start("elqual", |_, _| {});
    let (a, p) = settled(&c);
    let (gap, ()) = transfer(&c.lab, 6, Duration::from_secs(2), || {
        c.lab.set_fw_port(a + 1, "in", false).expect("cut");
        wait_role(
            &c.nodes[p],
            "active",
            "the better member takes over",
            Duration::from_secs(3),
        )
        .expect("swap on quality");
    });
    let info = hainfo(&c.nodes[p]);
    assert_eq!(info["peer"]["quality"], 50, "{info}");
    assert_eq!(info["local"]["quality"], 100, "{info}");
    assert!(gap <= Duration::from_millis(1500), "gap {gap:?}");
    // The link comes back: equal quality, the current active stays.
    c.lab.set_fw_port(a + 1, "in", true).expect("restore");
    thread::sleep(Duration::from_millis(1000));
    assert_eq!(role(&c.nodes[p]).0, "active", "no preemption back");
}

#[test]
fn losing_the_main_ha_link_is_not_a_failover() {
    require_root!();
    let c = start("elmain", |_, _| {});
    let (a, p) = settled(&c);
    let before = forwarded(&c.nodes[p]);
    let (gap, ()) = transfer(&c.lab, 4, Duration::from_secs(1), || {
        link::set_link(c.lab.fw(1), "ha-main", false).expect("cut the main link");
        thread::sleep(Duration::from_millis(1500));
    });
    assert_eq!(role(&c.nodes[a]).0, "active");
    assert_eq!(role(&c.nodes[p]).0, "passive");
    assert_eq!(forwarded(&c.nodes[p]), before, "the passive forwarded");
    let info = hainfo(&c.nodes[p]);
    let links = info["links"].as_array().unwrap();
    let heard = |n: &str| links.iter().find(|l| l["name"] == n).unwrap()["peer_heard"] == true;
    assert!(!heard("HA-main") && heard("HA-backup"), "{info}");
    assert!(
        log_text(&c.nodes[p]).contains("HA communication on link HA-main (198.19.69.1) has failed")
    );
    assert!(gap <= Duration::from_millis(300), "gap {gap:?}");
}

#[test]
fn with_both_ha_links_cut_exactly_one_member_forwards_and_answers_arp() {
    require_root!();
    let c = start("elboth", |_, _| {});
    let (a, p) = settled(&c);
    let before = forwarded(&c.nodes[p]);
    let (gap, ()) = transfer(&c.lab, 5, Duration::from_secs(1), || {
        for l in ["ha-main", "ha-backup"] {
            link::set_link(c.lab.fw(1), l, false).expect("cut");
        }
        thread::sleep(Duration::from_millis(2500));
    });
    assert_eq!(role(&c.nodes[a]).0, "active");
    assert_eq!(role(&c.nodes[p]).0, "passive", "no split brain");
    assert_eq!(forwarded(&c.nodes[p]), before, "the passive forwarded");
    let info = hainfo(&c.nodes[p]);
    let lr = info["links"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "last-resort")
        .cloned()
        .unwrap();
    assert_eq!(lr["carrier"], true, "last resort on: {info}");
    assert_eq!(
        lr["peer_heard"], true,
        "peer heard over the data ports: {info}"
    );
    // Only one MAC answers for the gateway address.
    let macs = tools::arp_census(c.lab.client(), "eth0", addr::CLIENT, addr::LAN_GW, 3)
        .expect("ARP census");
    assert_eq!(macs.len(), 1, "ARP answered by {macs:?}");
    assert!(gap <= Duration::from_millis(300), "gap {gap:?}");
    // The links come back: still one active, no swap.
    for l in ["ha-main", "ha-backup"] {
        link::set_link(c.lab.fw(1), l, true).expect("restore");
    }
    thread::sleep(Duration::from_millis(1000));
    assert_eq!(role(&c.nodes[a]).0, "active");
    assert_eq!(hainfo(&c.nodes[a])["swaps"], 1, "only the initial election");
}

#[test]
fn a_killed_active_restarts_as_passive_gets_a_bulk_and_does_not_preempt() {
    require_root!();
    let mut c = start("elrejoin", |_, _| {});
    let (a, p) = settled(&c);
    assert_eq!(a, 0, "fw1 (lower serial) is elected");
    let Cluster { nodes, lab, .. } = &mut c;
    let (gap, ()) = transfer(lab, 9, Duration::from_secs(1), || {
        // fw1 dies; fw2 takes over; fw1 comes back while traffic flows.
        nodes[a].proc.signal("KILL");
        thread::sleep(Duration::from_millis(700));
        cluster::restart(lab, nodes, a + 1, HaSection::lab(a + 1)).expect("restart fw1");
        wait_ctl(
            &nodes[a],
            &["sync"],
            "the restarted member gets a bulk",
            Duration::from_secs(10),
            |s| s["synchronized"] == true && s["bulks_received"].as_u64() >= Some(1),
        )
        .expect("bulk");
    });
    assert_eq!(role(&c.nodes[p]).0, "active", "the survivor stays active");
    assert_eq!(
        role(&c.nodes[a]).0,
        "passive",
        "the restarted member (lower serial, same quality) does not preempt"
    );
    let info = hainfo(&c.nodes[a]);
    assert_eq!(info["peer"]["role"], "active", "{info}");
    assert!(gap <= Duration::from_millis(1500), "gap {gap:?}");
}

#[test]
fn a_frozen_active_is_replaced_and_yields_when_it_wakes_up() {
    require_root!();
    let c = start("elfreeze", |_, _| {});
    let (a, p) = settled(&c);
    let pid = c.nodes[a].proc.pid();
    let (gap, ()) = transfer(&c.lab, 6, Duration::from_secs(1), || {
        signal_group(pid, "STOP");
        let end = Instant::now() + Duration::from_secs(3);
        while role(&c.nodes[p]).0 != "active" && Instant::now() < end {
            thread::sleep(Duration::from_millis(10));
        }
        thread::sleep(Duration::from_millis(500));
        signal_group(pid, "CONT");
        thread::sleep(Duration::from_millis(1500));
    });
    // After waking, both were active for a moment; exactly one stays.
    let i = c
        .wait_single_active(Duration::from_secs(3))
        .expect("dual-active resolved");
    eprintln!("active after the freeze: fw{}", i + 1);
    assert_eq!(
        i, p,
        "the member that took over (fresher table) stays active"
    );
    wait_ctl(
        &c.nodes[a],
        &["sync"],
        "the yielding member resynchronizes",
        Duration::from_secs(10),
        |s| s["synchronized"] == true && s["bulks_received"].as_u64() >= Some(1),
    )
    .expect("resync after the dual-active episode");
    let log = format!("{}{}", log_text(&c.nodes[0]), log_text(&c.nodes[1]));
    assert!(
        log.contains("both members are active (dual active)"),
        "{log}"
    );
    // The frozen member says it was not scheduled, and that it yields.
    let woke = log_text(&c.nodes[a]);
    assert!(
        woke.contains("this process was not scheduled for ")
            && woke.contains("dual active resolved: this member yields"),
        "{woke}"
    );
    assert!(gap <= Duration::from_millis(2000), "gap {gap:?}");
}

/// fw1's inside leg as a link aggregate (LACP, or active-backup with
/// `active_backup`) of two veths towards a DPDK bonding partner
/// (`bond-partner` in its own namespace, bridging the aggregate to the LAN
/// switch). Drop order: cluster, partner, namespace.
struct LacpLab {
    c: Cluster,
    _partner: tandem_tests::Proc,
    _bp: tandem_tests::Netns,
}

fn lacp_lab(tag: &str, ha_extra: &str) -> LacpLab {
    aggregate_lab(tag, false, ha_extra)
}

fn aggregate_lab(tag: &str, active_backup: bool, ha_extra: &str) -> LacpLab {
    let lock = tandem_tests::heavy_lock();
    let lab = Lab::two_nodes(tag).expect("lab");
    let bp = tandem_tests::Netns::create(&format!("{}-bp", lab.prefix()), &lab.dir().join("logs"))
        .expect("partner namespace");
    let (fw1, sw) = (lab.fw(1), lab.switch());
    for (f, b) in [("fw-in0", "m0"), ("fw-in1", "m1")] {
        link::veth(fw1, f, &bp, b).unwrap();
        link::ipv6_off(fw1, f).unwrap();
        link::gro_off(fw1, f).unwrap();
        link::set_up(fw1, f).unwrap();
        link::set_up(&bp, b).unwrap();
    }
    link::veth(&bp, "uplink", sw, "fw1-bp").unwrap();
    link::attach(sw, "lan", "fw1-bp").unwrap();
    link::set_up(&bp, "uplink").unwrap();
    link::set_up(sw, "fw1-bp").unwrap();
    // fw1's plain inside leg is not used: unplug it from the LAN.
    link::set_link(sw, "fw1-in", false).unwrap();
    let bin = tandem_tests::node::find_bin("bond-partner").expect("bond-partner is built");
    let bin = bin.to_string_lossy().into_owned();
    let prefix = format!("{}-bp", lab.prefix());
    let mut args = vec![
        bin.as_str(),
        "--file-prefix",
        &prefix,
        "--bond-member",
        "m0",
        "--bond-member",
        "m1",
        "--port",
        "uplink",
    ];
    args.extend(if active_backup {
        ["--mode", "1"].as_slice()
    } else {
        ["--mode", "4", "--lacp-timers", "fast"].as_slice()
    });
    let partner = bp.spawn("bond-partner", &args).expect("bond-partner");
    let agg_mode = if active_backup {
        "ActiveBackup"
    } else {
        "Lacp"
    };
    let c = cluster::start_on(lab, lock, Some(POLICY), &[], |i, cfg| {
        if i == 1 {
            let inside = &mut cfg.interfaces[0];
            inside.vdev = "net_bonding0".into();
            inside.extra = format!(
                ", aggregate: Some((mode: {agg_mode}, lacp_rate: Fast, members: [\
                 Vdev(\"net_af_packet2,iface=fw-in0,framecnt=8192\"), \
                 Vdev(\"net_af_packet3,iface=fw-in1,framecnt=8192\")]))"
            );
        }
        if let Some(ha) = cfg.ha.as_mut() {
            ha.extra = ha_extra.to_owned();
        }
    })
    .expect("cluster with an aggregate");
    // LACP converges (both members in distribution: fw1's quality 100),
    // then fw1 is made the active member.
    wait_ctl(
        &c.nodes[0],
        &["hainfo"],
        "fw1's aggregate in distribution",
        Duration::from_secs(15),
        |v| v["local"]["quality"] == 100,
    )
    .expect("LACP up");
    c.nodes[0].ctl(&["haactive"]).expect("haactive");
    wait_role(&c.nodes[0], "active", "fw1 active", Duration::from_secs(3)).expect("fw1 active");
    c.nodes[0].ctl(&["hareset"]).expect("hareset");
    wait_synchronized(&c.nodes[1], "fw2 synchronized", Duration::from_secs(10))
        .expect("synchronized");
    host::wait_for_ping(c.lab.client(), addr::SERVER, Duration::from_secs(20))
        .expect("through fw1's aggregate");
    LacpLab {
        c,
        _partner: partner,
        _bp: bp,
    }
}

#[test]
fn losing_one_lacp_member_swaps_only_when_members_carry_weight() {
    require_root!();
    for weigh in [false, true] {
        let l = lacp_lab(
            if weigh { "ellacpw" } else { "ellacp" },
            &format!("lacp_members_have_weight: {weigh},"),
        );
        let (c, bp) = (&l.c, &l._bp);
        let (gap, ()) = transfer(&c.lab, 7, Duration::from_secs(1), || {
            link::set_link(bp, "m1", false).expect("cut one member");
            thread::sleep(Duration::from_millis(1500));
        });
        let info = hainfo(&c.nodes[if weigh { 1 } else { 0 }]);
        eprintln!("members weigh: {weigh}; gap {gap:?}; {info}");
        if weigh {
            // out 100 up + two members of 100, one down: 200/300.
            assert_eq!(info["peer"]["quality"], 66, "{info}");
            assert_eq!(role(&c.nodes[1]).0, "active", "swap on quality");
            assert_eq!(role(&c.nodes[0]).0, "passive");
            assert!(gap <= Duration::from_millis(1500), "gap {gap:?}");
        } else {
            assert_eq!(
                info["local"]["quality"], 100,
                "the aggregate still counts as up"
            );
            assert_eq!(role(&c.nodes[0]).0, "active", "no swap");
            assert_eq!(role(&c.nodes[1]).0, "passive");
            // Frames hashed onto the lost member wait for the LACP timeout
            // (3 s with fast timers) on the partner's side.
            assert!(gap <= Duration::from_millis(4000), "gap {gap:?}");
        }
    }
}

#[test]
fn full_traffic_causes_no_false_failover_and_heartbeats_stay_on_time() {
    require_root!();
    let c = start("elload", |_, _| {});
    let (a, p) = settled(&c);
    let swaps = |n: &tandem_tests::Node| hainfo(n)["swaps"].as_u64().unwrap_or(99);
    let before = (swaps(&c.nodes[a]), swaps(&c.nodes[p]));
    // Both directions at full speed for 8 s: the active's worker and the
    // kernel's veths take both cores of this machine.
    let _srv = IperfServer::start(c.lab.server(), addr::SERVER, 5201).unwrap();
    let res = host::iperf_client(c.lab.client(), addr::SERVER, 5201, 8, &["--bidir"])
        .expect("iperf3 --bidir");
    eprintln!("load: {:.0} Mbit/s", res.bits_per_second / 1e6);
    assert_eq!(
        (swaps(&c.nodes[a]), swaps(&c.nodes[p])),
        before,
        "a swap under load"
    );
    for n in &c.nodes {
        let info = hainfo(n);
        for l in info["links"].as_array().unwrap() {
            if l["name"] == "last-resort" {
                continue;
            }
            let gap = l["max_gap_ms"].as_f64().unwrap_or(f64::MAX);
            eprintln!(
                "{} {}: {} heartbeats, max gap {gap:.1} ms, {} late",
                info["local"]["serial"], l["name"], l["heartbeats"], l["late"]
            );
            assert!(l["heartbeats"].as_u64() > Some(100), "{info}");
            assert!(
                gap < 100.0,
                "a gap of the dead time would be a failover: {info}"
            );
        }
    }
}

#[test]
fn a_failed_disk_check_lowers_the_quality_and_swaps() {
    require_root!();
    let lock = tandem_tests::heavy_lock();
    let lab = Lab::two_nodes("eldisk").expect("lab");
    let disk = |i: usize| lab.dir().join(format!("disk-fw{i}"));
    for i in 1..=2 {
        std::fs::create_dir_all(disk(i)).unwrap();
    }
    let dirs = [disk(1), disk(2)];
    let c = cluster::start_on(lab, lock, Some(POLICY), &[], |i, cfg| {
        if let Some(ha) = cfg.ha.as_mut() {
            ha.extra = format!(
                "quality_disks: [(path: {:?}, min_free_mb: 1)],",
                dirs[i - 1].to_string_lossy()
            );
        }
    })
    .expect("cluster");
    // The active's disk fails (its directory is gone).
    a_failed_check_swaps(&c, "disk-fw", |a| {
        std::fs::remove_dir_all(&dirs[a]).unwrap()
    });
}

/// During a transfer, `fail` makes a check of the active (index given)
/// fail: the peer takes over within the heartbeat budget, and the old
/// active's quality is 200/300 with a problem naming `problem`.
fn a_failed_check_swaps(c: &Cluster, problem: &str, fail: impl FnOnce(usize) + Send) {
    let (a, p) = settled(c);
    let (gap, ()) = transfer(&c.lab, 6, Duration::from_secs(1), || {
        fail(a);
        wait_role(
            &c.nodes[p],
            "active",
            "the member whose checks pass takes over",
            Duration::from_secs(8),
        )
        .expect("swap on the failed check");
    });
    let info = hainfo(&c.nodes[a]);
    assert_eq!(
        info["local"]["quality"], 66,
        "in, out and the check: 200/300: {info}"
    );
    assert!(
        info["quality_problems"].to_string().contains(problem),
        "{info}"
    );
    assert!(gap <= Duration::from_millis(1500), "gap {gap:?}");
}

#[test]
fn a_tpm_that_stops_answering_lowers_the_quality_and_swaps() {
    require_root!();
    let lock = tandem_tests::heavy_lock();
    let lab = Lab::two_nodes("eltpm").expect("lab");
    // One software TPM per member, in its namespace.
    let mut tpms: Vec<tandem_tests::Proc> = (1..=2)
        .map(|i| host::swtpm(lab.fw(i), &lab.dir().join(format!("tpm-fw{i}"))).expect("swtpm"))
        .collect();
    let c = cluster::start_on(lab, lock, Some(POLICY), &[], |_, cfg| {
        cfg.control_extra = format!("tpm: Some((tcti: {:?}))", host::swtpm_tcti());
        if let Some(ha) = cfg.ha.as_mut() {
            ha.extra = "quality_tpm: Some(()),".into();
        }
    })
    .expect("cluster");
    settled(&c);
    for n in &c.nodes {
        let info = hainfo(n);
        assert_eq!(info["local"]["quality"], 100, "in, out and the TPM: {info}");
        assert!(
            info["tpm"].to_string().contains("measured into PCR 23"),
            "tandemd measured itself: {info}"
        );
    }
    // The active's TPM stops answering.
    a_failed_check_swaps(&c, "TPM", |a| tpms[a].signal("KILL"));
}

/// The partner's last report of its bond's members in distribution.
fn partner_active_members(p: &tandem_tests::Proc) -> Option<u64> {
    tools::json_lines(&p.stdout())
        .iter()
        .rev()
        .find_map(|v| v["active_members"].as_u64())
}

/// Waits (bounded) until the partner reports `want` members in
/// distribution; fails with `what` and the partner's last reports.
fn wait_partner_members(p: &tandem_tests::Proc, want: u64, what: &str, timeout: Duration) {
    let end = Instant::now() + timeout;
    while partner_active_members(p) != Some(want) && Instant::now() < end {
        thread::sleep(Duration::from_millis(200));
    }
    let out = p.stdout();
    let tail: Vec<&str> = out.lines().rev().take(3).collect();
    assert_eq!(
        partner_active_members(p),
        Some(want),
        "{what}; partner: {tail:?}"
    );
}

#[test]
fn a_passive_without_lacp_when_passive_leaves_distribution_and_rejoins_when_active() {
    require_root!();
    let l = lacp_lab("ellacpq", "lacp_when_passive: false,");
    let (c, partner) = (&l.c, &l._partner);
    wait_partner_members(
        partner,
        2,
        "fw1 active: both members",
        Duration::from_secs(15),
    );
    // fw1 goes passive: its LACPDUs stop, the partner times its links out.
    c.nodes[0].ctl(&["hapassive"]).expect("hapassive");
    wait_partner_members(
        partner,
        0,
        "the passive's aggregate left distribution",
        Duration::from_secs(8),
    );
    // Active again: LACP converges and traffic flows through fw1.
    c.nodes[1].ctl(&["hapassive"]).expect("hapassive on fw2");
    c.nodes[0].ctl(&["hareset"]).expect("hareset");
    wait_partner_members(partner, 2, "back in distribution", Duration::from_secs(10));
    assert_eq!(role(&c.nodes[0]).0, "active");
    host::wait_for_ping(c.lab.client(), addr::SERVER, Duration::from_secs(10))
        .expect("through fw1's aggregate again");
}

#[test]
fn a_member_with_priority_takes_the_role_back_only_once_synchronized() {
    require_root!();
    let prio = |i: usize, ha: &mut HaSection| {
        if i == 1 {
            ha.prefer = true;
        }
    };
    let mut c = start("elprio", prio);
    let (a, _) = settled(&c);
    assert_eq!(a, 0, "fw1 has priority 50");
    let Cluster { nodes, lab, .. } = &mut c;
    let (gap, ()) = transfer(lab, 9, Duration::from_secs(1), || {
        nodes[0].proc.signal("KILL");
        wait_role(
            &nodes[1],
            "active",
            "fw2 takes over",
            Duration::from_secs(3),
        )
        .expect("takeover");
        let mut ha = HaSection::lab(1);
        prio(1, &mut ha);
        cluster::restart(lab, nodes, 1, ha).expect("restart fw1");
        wait_role(
            &nodes[0],
            "active",
            "fw1 (priority 50) takes the role back",
            Duration::from_secs(10),
        )
        .expect("preemption by priority");
    });
    let log = log_text(&nodes[0]);
    let complete = log
        .find("our connection table is complete")
        .expect("synchronized");
    let swap = log.find("swap: passive -> active").expect("swap");
    assert!(
        complete < swap,
        "no preemption before the table is complete: {log}"
    );
    assert_eq!(role(&nodes[1]).0, "passive");
    assert!(gap <= Duration::from_millis(1500), "gap {gap:?}");
}

#[test]
fn an_active_backup_aggregate_fails_over_to_its_backup_member_without_a_swap() {
    require_root!();
    let l = aggregate_lab("elab", true, "");
    let (c, bp) = (&l.c, &l._bp);
    let (gap, ()) = transfer(&c.lab, 6, Duration::from_secs(1), || {
        // The primary member's cable is cut (both bonds fail over to m1).
        link::set_link(bp, "m0", false).expect("cut the primary member");
        thread::sleep(Duration::from_millis(1500));
    });
    let info = hainfo(&c.nodes[0]);
    assert_eq!(
        info["local"]["quality"], 100,
        "the aggregate still counts as up: {info}"
    );
    assert_eq!(role(&c.nodes[0]).0, "active", "no swap");
    assert!(
        log_text(&c.nodes[0]).contains("aggregate in: active member lost its carrier, failed over"),
        "{}",
        log_text(&c.nodes[0])
    );
    assert!(gap <= Duration::from_millis(1000), "gap {gap:?}");
}

#[test]
fn without_the_last_resort_the_icmp_check_keeps_a_cut_off_passive_passive() {
    require_root!();
    let c = start("elicmp", |_, ha| ha.extra = "last_resort: false,".into());
    let (a, p) = settled(&c);
    let before = forwarded(&c.nodes[p]);
    let (gap, ()) = transfer(&c.lab, 5, Duration::from_secs(1), || {
        for l in ["ha-main", "ha-backup"] {
            link::set_link(c.lab.fw(1), l, false).expect("cut");
        }
        thread::sleep(Duration::from_millis(2500));
    });
    assert_eq!(role(&c.nodes[a]).0, "active");
    assert_eq!(
        role(&c.nodes[p]).0,
        "passive",
        "the ICMP check found the peer alive"
    );
    assert_eq!(forwarded(&c.nodes[p]), before, "the passive forwarded");
    let log = log_text(&c.nodes[p]);
    assert!(
        log.contains(&format!(
            "peer TDLAB000{} (was active) silent on every path: starting ICMP monitoring",
            a + 1
        )),
        "{log}"
    );
    assert!(
        log.contains("ICMP check: the peer's dataplane answers, it is not taken over"),
        "{log}"
    );
    let info = hainfo(&c.nodes[p]);
    assert_eq!(info["icmp_check"], "peer answered", "{info}");
    let macs = tools::arp_census(c.lab.client(), "eth0", addr::CLIENT, addr::LAN_GW, 3)
        .expect("ARP census");
    assert_eq!(macs.len(), 1, "ARP answered by {macs:?}");
    assert!(gap <= Duration::from_millis(300), "gap {gap:?}");
}

#[test]
fn a_rolling_upgrade_hands_over_cleanly_and_ends_on_the_new_protocol() {
    require_root!();
    let mut c = start("elupg", |_, _| {});
    let (a, p) = settled(&c);
    assert_eq!((a, p), (0, 1));
    // The next version: a second build of this tree (K2K version 3).
    let v3 = tandem_tests::node::next_tandemd().expect("the next version's build");
    let Cluster { nodes, lab, .. } = &mut c;
    let (gap, versions) = transfer(lab, 10, Duration::from_secs(1), || {
        // 1. The passive (fw2) is upgraded: stopped, started on the new
        //    version; the pair speaks the older one (fail-soft).
        cluster::restart_with(lab, nodes, 2, HaSection::lab(2), &v3, true).expect("fw2 up");
        wait_synchronized(&nodes[1], "fw2 synchronized", Duration::from_secs(10))
            .expect("fw2 synchronized");
        let mixed = hainfo(&nodes[1])["sync_version"].as_u64();
        // 2. The active (fw1) is upgraded: its clean stop hands over to fw2
        //    at once; it comes back passive.
        cluster::restart_with(lab, nodes, 1, HaSection::lab(1), &v3, true).expect("fw1 up");
        wait_synchronized(&nodes[0], "fw1 synchronized", Duration::from_secs(10))
            .expect("fw1 synchronized");
        (mixed, hainfo(&nodes[0])["sync_version"].as_u64())
    });
    assert_eq!(
        versions,
        (Some(2), Some(3)),
        "fail-soft during, new protocol after"
    );
    assert_eq!(role(&nodes[1]).0, "active");
    assert_eq!(role(&nodes[0]).0, "passive");
    let log = log_text(&nodes[1]);
    assert!(
        log.contains("swap: passive -> active (elected: the peer yielded"),
        "handed over: {log}"
    );
    assert!(
        !log.contains("the peer is dead"),
        "no dead-time takeover: {log}"
    );
    assert!(gap <= Duration::from_millis(500), "gap {gap:?}");
}

#[test]
fn a_member_alone_at_start_up_waits_for_its_peer_then_takes_the_role() {
    require_root!();
    let lock = tandem_tests::heavy_lock();
    let lab = Lab::two_nodes("elalone").expect("lab");
    let policy = tandem_tests::firewall::write_policy(&lab, "policy.ron", POLICY).unwrap();
    let mut cfg = lab.node_config(2).with_policy(&policy);
    cfg.ha = Some(HaSection::lab(2));
    let mut fw2 = lab.start_node_with(2, &cfg).expect("fw2");
    fw2.wait_ready(Duration::from_secs(30)).expect("fw2 ready");
    let t0 = Instant::now();
    assert_eq!(role(&fw2).0, "passive", "waiting for the peer");
    wait_role(
        &fw2,
        "active",
        "fw2 alone takes the role",
        Duration::from_secs(5),
    )
    .expect("active alone");
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(700),
        "the start-up wait (1 s) was kept: {waited:?}"
    );
    assert!(
        log_text(&fw2).contains("alone at start-up"),
        "{}",
        log_text(&fw2)
    );
    host::wait_for_ping(lab.client(), addr::SERVER, Duration::from_secs(10)).expect("through fw2");
    // The peer arrives: it joins as passive, synchronizes, fw2 stays.
    let mut cfg = lab.node_config(1).with_policy(&policy);
    cfg.ha = Some(HaSection::lab(1));
    let mut fw1 = lab.start_node_with(1, &cfg).expect("fw1");
    fw1.wait_ready(Duration::from_secs(30)).expect("fw1 ready");
    wait_synchronized(&fw1, "fw1 synchronized", Duration::from_secs(10)).expect("fw1 synchronized");
    thread::sleep(Duration::from_millis(300));
    assert_eq!(
        role(&fw1).0,
        "passive",
        "the newcomer (lower serial) does not preempt"
    );
    assert_eq!(role(&fw2).0, "active");
    drop((fw1, fw2));
    drop(lab);
    drop(lock);
}
