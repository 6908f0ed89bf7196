//! Sync integrity under scale and faults (issue 9): two real tandemd
//! members with the election on and `encrypt: true`, tables of up to
//! 100,000 connections opened by a real host, and faults at bad moments
//! (kill -9 and a restart 1.5 s later, two restarts within a second, a
//! blackholed HA link with its carrier up, loss on both HA links, a delta
//! ring forced to overflow, a captured stream replayed). Every test ends
//! with both members holding the same replicated connections (equal
//! `tandemctl sync digest`), and the new active holding every connection
//! of the old where a swap happened.

use std::time::{Duration, Instant};

use serde_json::Value;
use tandem_tests::cluster::{
    self, digest, open_udp_flows, restart_config, role, verify, verify_clean, wait_ctl, wait_role,
    wait_same_table, wait_synchronized, Cluster,
};
use tandem_tests::lab::addr;
use tandem_tests::node::{HaSection, NodeConfig};
use tandem_tests::{require_root, tools, Lab};

/// UDP flows to ports 9000-9001 (two ports: 128,000 source ports), pings.
const POLICY: &str = r#"(
    rules: [
        (action: Pass, from: ["198.18.1.0/24"], proto: Udp, dst_ports: ["9000-9001"]),
        (action: Pass, from: ["198.18.1.0/24"], proto: Icmp, icmp_types: [8]),
    ],
    default_action: Block,
)"#;

/// The members' configuration: encrypted sync, a table for 262,144
/// connections, unanswered UDP flows kept for 10 minutes (the flows of
/// these tests send one datagram each), `extra_fw` more firewall fields.
fn member_config(lab: &Lab, i: usize, extra_fw: &str) -> NodeConfig {
    let mut cfg = lab
        .node_config(i)
        .with_policy(&lab.dir().join("policy.ron"));
    if let Some(fw) = cfg.firewall.as_mut() {
        fw.connections = 262_144;
        fw.extra = format!("timeouts: (udp_unreplied: Some(600)), {extra_fw}");
    }
    cfg.ha = Some(HaSection {
        encrypt: true,
        ..HaSection::lab(i)
    });
    cfg
}

/// Both members up (fw1 elected), the passive synchronized; returns the
/// cluster and the members' configurations (for restarts).
fn start(tag: &str, extra_fw: &str) -> (Cluster, Vec<NodeConfig>) {
    let lock = tandem_tests::heavy_lock();
    let lab = Lab::two_nodes(tag).expect("lab");
    tandem_tests::firewall::write_policy(&lab, "policy.ron", POLICY).expect("policy");
    let configs: Vec<NodeConfig> = (1..=2).map(|i| member_config(&lab, i, extra_fw)).collect();
    let c = cluster::start_on(lab, lock, None, &[], |i, cfg| {
        *cfg = configs[i - 1].clone();
    })
    .expect("starting the cluster");
    let a = c
        .wait_single_active(Duration::from_secs(10))
        .expect("one member elected");
    assert_eq!(a, 0, "fw1 (lower serial) is elected");
    wait_synchronized(&c.nodes[1], "fw2 synchronized", Duration::from_secs(10))
        .expect("fw2 synchronized");
    (c, configs)
}

fn sync(n: &tandem_tests::Node) -> Value {
    n.ctl(&["sync"]).expect("sync")
}

fn detail(s: &Value, key: &str) -> u64 {
    s["details"][key].as_u64().unwrap_or(0)
}

fn log_text(n: &tandem_tests::Node) -> String {
    n.ctl(&["log", "--lines", "400"]).expect("log")["lines"].to_string()
}

/// Opens `n` flows and waits until the active (`nodes[a]`) tracks nearly
/// all of them (a frame or two may be lost on the way into af_packet) and
/// the passive holds the same; returns how many.
fn fill(c: &Cluster, n: u64, rate: u64, a: usize) -> u64 {
    let t0 = Instant::now();
    let sent = open_udp_flows(&c.lab, n, 9000, rate).expect("flows sent");
    assert_eq!(sent, n, "the generator sent every flow");
    let want = n * 98 / 100;
    let held = wait_same_table(&c.nodes[a], &c.nodes[1 - a], want, Duration::from_secs(60))
        .expect("both members hold the flows");
    eprintln!(
        "{held} of {n} flows tracked by the active and replicated in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    held
}

#[test]
fn a_hundred_thousand_connections_survive_a_kill_and_the_restarted_member_resynchronizes() {
    require_root!();
    let (mut c, configs) = start("igkill", "");
    let held = fill(&c, 100_000, 20_000, 0);
    // The active dies; the passive takes over with every connection.
    let t0 = Instant::now();
    c.nodes[0].proc.signal("KILL");
    wait_role(
        &c.nodes[1],
        "active",
        "fw2 takes over",
        Duration::from_secs(5),
    )
    .expect("takeover");
    eprintln!("takeover seen after {:?}", t0.elapsed());
    let (after, _) = digest(&c.nodes[1]).expect("digest");
    assert_eq!(
        after, held,
        "the new active holds every connection of the old"
    );
    // fw1 comes back 1.5 s after the kill and gets the whole table.
    std::thread::sleep(Duration::from_millis(1500).saturating_sub(t0.elapsed()));
    let Cluster { nodes, lab, .. } = &mut c;
    restart_config(lab, nodes, 1, &configs[0]).expect("fw1 restarted");
    let t1 = Instant::now();
    wait_synchronized(
        &nodes[0],
        "the restarted fw1 synchronized",
        Duration::from_secs(10),
    )
    .expect("synchronized within 10 s");
    eprintln!("fw1 synchronized {:?} after its restart", t1.elapsed());
    let same = wait_same_table(&nodes[1], &nodes[0], held, Duration::from_secs(10))
        .expect("fw1 holds the whole table");
    assert_eq!(same, held);
    assert_eq!(role(&nodes[0]).0, "passive", "fw1 does not preempt");
    let v = verify_clean(&nodes[0], 3).expect("verify");
    assert_eq!(v["ours"], held, "{v}");
    let s = sync(&nodes[1]);
    eprintln!(
        "fw2 sync: bulks_sent {} deltas_lost {} lag_ms {}",
        s["bulks_sent"],
        detail(&s, "deltas_lost"),
        s["lag_ms"]
    );
}

#[test]
fn the_passive_restarted_twice_within_a_second_never_repeats_a_nonce() {
    require_root!();
    let (mut c, configs) = start("ignonce", "");
    let held = fill(&c, 5_000, 20_000, 0);
    // Every K2K datagram on both HA links, seen from fw1.
    let fw1 = c.lab.fw(1);
    let mut captures = Vec::new();
    for iface in ["ha-main", "ha-backup"] {
        let out = c.lab.dir().join(format!("k2k-{iface}.hex"));
        let args: Vec<String> = [
            "capture",
            "--iface",
            iface,
            "--duration",
            "12",
            "--out",
            &out.to_string_lossy(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        captures.push(
            tools::spawn_tool(fw1, &format!("k2k-{iface}"), "k2k_capture.py", &args)
                .expect("capture"),
        );
    }
    let Cluster { nodes, lab, .. } = &mut c;
    let t0 = Instant::now();
    restart_config(lab, nodes, 2, &configs[1]).expect("first restart");
    restart_config(lab, nodes, 2, &configs[1]).expect("second restart");
    eprintln!("two restarts of fw2 in {:?}", t0.elapsed());
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "the restarts took {:?}",
        t0.elapsed()
    );
    wait_synchronized(&nodes[1], "fw2 synchronized", Duration::from_secs(10))
        .expect("synchronized");
    wait_same_table(&nodes[0], &nodes[1], held, Duration::from_secs(10)).expect("same table");
    verify_clean(&nodes[1], 3).expect("verify");
    let mut total = 0;
    let mut sessions = std::collections::BTreeSet::new();
    for mut p in captures {
        let end = Instant::now() + Duration::from_secs(15);
        while p.is_running() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(100));
        }
        let v = tools::json_lines(&p.stdout())
            .into_iter()
            .find(|v| v["result"] == "k2k_capture")
            .expect("the capture's result");
        eprintln!(
            "capture: {} datagrams, {} distinct, reused {}",
            v["datagrams"], v["distinct"], v["reused"]
        );
        assert_eq!(v["reused"], 0, "a (key, nonce) pair carried two datagrams");
        total += v["datagrams"].as_u64().unwrap_or(0);
        for s in v["sessions"].as_array().into_iter().flatten() {
            sessions.insert(s.as_str().unwrap_or_default().to_owned());
        }
    }
    assert!(total > 100, "the capture saw the sync ({total} datagrams)");
    assert!(
        sessions.len() >= 3,
        "fw1's session and at least two of fw2's runs: {sessions:?}"
    );
}

#[test]
fn a_capture_replayed_after_the_receiver_restarts_applies_nothing() {
    require_root!();
    let (mut c, configs) = start("igreplay", "");
    fill(&c, 2_000, 20_000, 0);
    let out = c.lab.dir().join("k2k-capture.hex");
    let args: Vec<String> = [
        "capture",
        "--iface",
        "ha-main",
        "--duration",
        "6",
        "--out",
        &out.to_string_lossy(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut cap =
        tools::spawn_tool(c.lab.fw(1), "k2k-cap", "k2k_capture.py", &args).expect("capture");
    let Cluster { nodes, lab, .. } = &mut c;
    // fw2 restarts: fw1 sends it the whole table, captured.
    restart_config(lab, nodes, 2, &configs[1]).expect("restart");
    wait_synchronized(&nodes[1], "fw2 synchronized", Duration::from_secs(10))
        .expect("synchronized");
    let end = Instant::now() + Duration::from_secs(10);
    while cap.is_running() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
    }
    let v = tools::json_lines(&cap.stdout())
        .into_iter()
        .find(|v| v["result"] == "k2k_capture")
        .expect("capture result");
    let captured = v["datagrams"].as_u64().unwrap_or(0);
    assert!(captured > 100, "the bulk was captured: {v}");
    // fw2 restarts again, then gets the capture replayed from fw1's
    // address, twice.
    restart_config(lab, nodes, 2, &configs[1]).expect("restart");
    wait_synchronized(&nodes[1], "fw2 synchronized", Duration::from_secs(10))
        .expect("synchronized");
    let before = sync(&nodes[1]);
    let table_before = digest(&nodes[1]).expect("digest");
    let args: Vec<String> = [
        "replay",
        "--file",
        &out.to_string_lossy(),
        "--bind",
        addr::HA_MAIN_1,
        "--to",
        addr::HA_MAIN_2,
        "--times",
        "2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let r = tools::run_tool(lab.fw(1), "k2k_capture.py", &args, Duration::from_secs(40))
        .expect("replay");
    let replayed = r["sent"].as_u64().unwrap_or(0);
    assert_eq!(replayed, 2 * captured);
    // The session's counters are published once a second.
    let after = wait_ctl(
        &nodes[1],
        &["sync"],
        "the replayed datagrams were refused as from a gone session",
        Duration::from_secs(5),
        |s| detail(s, "drop_stale_session") >= detail(&before, "drop_stale_session") + replayed / 2,
    )
    .expect("counted");
    assert_eq!(
        after["installs"], before["installs"],
        "a replayed record was applied"
    );
    assert_eq!(after["bulks_received"], before["bulks_received"]);
    assert_eq!(digest(&nodes[1]).expect("digest"), table_before);
    assert_eq!(role(&nodes[1]).0, "passive");
    wait_same_table(&nodes[0], &nodes[1], 1, Duration::from_secs(5)).expect("same table");
    verify_clean(&nodes[1], 3).expect("verify");
}

/// Drops everything that arrives on `iface` in member `i`'s namespace
/// (the link keeps its carrier: a blackhole).
fn blackhole(lab: &Lab, i: usize, iface: &str) {
    for cmd in [
        "add table inet blackhole".to_owned(),
        "add chain inet blackhole input { type filter hook input priority -10 ; }".to_owned(),
        format!("add rule inet blackhole input iifname \"{iface}\" counter drop"),
    ] {
        let o = lab.fw(i).exec(&["nft", &cmd]).expect("nft");
        assert!(o.status.success(), "nft {cmd} in fw{i}: {o:?}");
    }
}

#[test]
fn a_blackholed_main_ha_link_moves_the_sync_to_the_backup_and_nothing_is_lost() {
    require_root!();
    let (c, _) = start("igblack", "");
    let held = fill(&c, 2_000, 20_000, 0);
    let link = |n: &tandem_tests::Node| sync(n)["link"].as_str().map(str::to_owned);
    assert_eq!(link(&c.nodes[0]).as_deref(), Some("HA-main"));
    let t0 = Instant::now();
    blackhole(&c.lab, 1, "ha-main");
    blackhole(&c.lab, 2, "ha-main");
    let mut moved = None;
    while t0.elapsed() < Duration::from_secs(5) {
        if link(&c.nodes[0]).as_deref() == Some("HA-backup") {
            moved = Some(t0.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let moved = moved.expect("the sync moved to HA-backup");
    eprintln!("sync on HA-backup {moved:?} after the blackhole (polled)");
    assert!(
        moved < Duration::from_millis(500),
        "took {moved:?} to leave a dead link"
    );
    // New connections still reach the passive, through the backup link.
    let more = open_udp_flows(&c.lab, 3_000, 9001, 20_000).expect("flows");
    assert_eq!(more, 3_000);
    let total = wait_same_table(
        &c.nodes[0],
        &c.nodes[1],
        held + 3_000 * 98 / 100,
        Duration::from_secs(20),
    )
    .expect("same table over the backup link");
    eprintln!("{total} connections on both members");
    assert_eq!(role(&c.nodes[0]).0, "active", "no swap");
    assert_eq!(role(&c.nodes[1]).0, "passive", "no swap");
    assert_eq!(link(&c.nodes[1]).as_deref(), Some("HA-backup"));
    verify_clean(&c.nodes[1], 3).expect("verify");
}

#[test]
fn ten_percent_loss_on_both_ha_links_during_a_burst_of_new_connections() {
    require_root!();
    let (c, _) = start("igloss", "");
    for i in [1, 2] {
        for cmd in [
            "add table inet loss",
            "add chain inet loss input { type filter hook input priority 0 ; }",
            "add rule inet loss input udp dport 44242 numgen random mod 10 == 0 counter drop",
        ] {
            let o = c.lab.fw(i).exec(&["nft", cmd]).expect("nft");
            assert!(o.status.success(), "nft {cmd}: {o:?}");
        }
    }
    let held = fill(&c, 20_000, 20_000, 0);
    let s = sync(&c.nodes[0]);
    eprintln!(
        "fw1: retransmits {} nacks_received {} deltas_lost {}",
        detail(&s, "retransmits"),
        detail(&s, "nacks_received"),
        detail(&s, "deltas_lost")
    );
    assert!(detail(&s, "retransmits") > 0, "the loss was repaired: {s}");
    assert!(held >= 19_600);
    verify_clean(&c.nodes[1], 3).expect("verify");
}

#[test]
fn a_delta_ring_overflow_is_counted_logged_and_repaired() {
    require_root!();
    // A ring of 64 changes per worker: a burst overflows it.
    let (c, _) = start("igring", "delta_ring: 64,");
    let sent = open_udp_flows(&c.lab, 20_000, 9000, 40_000).expect("flows");
    assert_eq!(sent, 20_000);
    let s = wait_ctl(
        &c.nodes[0],
        &["sync"],
        "fw1 counted lost changes",
        Duration::from_secs(10),
        |s| detail(s, "deltas_lost") > 0,
    )
    .expect("the ring overflowed");
    eprintln!(
        "fw1 lost {} changes to a full ring",
        detail(&s, "deltas_lost")
    );
    let held = wait_same_table(&c.nodes[0], &c.nodes[1], 19_600, Duration::from_secs(30))
        .expect("repaired: the passive holds every connection");
    eprintln!("{held} connections on both members after the repair");
    let log = log_text(&c.nodes[0]);
    assert!(
        log.contains("changes lost (its delta ring was full)"),
        "the loss is logged: {log}"
    );
    let log2 = log_text(&c.nodes[1]);
    assert!(
        log2.contains("our connection table is not synchronized")
            && log2.contains("whole connection table received"),
        "the passive said it was not synchronized, then got the table: {log2}"
    );
    wait_synchronized(
        &c.nodes[1],
        "fw2 synchronized again",
        Duration::from_secs(10),
    )
    .expect("synchronized");
    verify_clean(&c.nodes[1], 3).expect("verify");
}

#[test]
fn a_short_seeded_chaos_run_loses_no_connection_and_ends_with_equal_tables() {
    require_root!();
    let cfg = tandem_tests::chaos::ChaosConfig {
        seed: 7,
        faults: 6,
        tcp_connections: 10,
        udp_flows: 5_000,
        tag: "igchaos".into(),
    };
    let report = tandem_tests::chaos::run(&cfg).expect("the pair settled after every fault");
    eprintln!("{report}");
    assert_eq!(report["tcp_lost"], 0, "TCP connections lost: {report}");
    assert_eq!(report["final_actives"], 1);
    assert_eq!(report["final_verify"]["differing_buckets"], 0);
    assert!(
        report["tcp_exchanges"].as_u64().unwrap_or(0) > 100,
        "{report}"
    );
    assert_eq!(report["passed"], true);
}

#[test]
fn a_verify_finds_a_damaged_passive_table_and_repairs_it() {
    require_root!();
    let (c, _) = start("igverify", "");
    let held = fill(&c, 10_000, 20_000, 0);
    let (fw1, fw2) = (&c.nodes[0], &c.nodes[1]);
    let v = verify(fw2).expect("verify");
    assert_eq!(v["differing_buckets"], 0, "{v}");
    assert_eq!(v["ours"], held, "{v}");
    assert_eq!(v["theirs"], held, "{v}");
    // The verify runs from the active too.
    assert_eq!(verify(fw1).expect("verify")["differing_buckets"], 0);
    // The passive loses its whole table behind the sync's back.
    let flushed = fw2.ctl(&["conn", "flush"]).expect("flush");
    assert_eq!(flushed["count"], held, "{flushed}");
    let first = verify(fw2).expect("verify");
    eprintln!("first verify after the damage: {first}");
    assert!(
        first["differing_buckets"].as_u64().unwrap_or(0) > 200,
        "{first}"
    );
    assert_eq!(first["ours"], 0);
    assert_eq!(
        first["repairing"], 0,
        "one sighting is not enough to repair"
    );
    // The second sighting repairs; the passive says it is not synchronized
    // until the repair ends.
    let second = verify(fw2).expect("verify");
    assert!(second["repairing"].as_u64().unwrap_or(0) > 200, "{second}");
    let same = wait_same_table(fw1, fw2, held, Duration::from_secs(20)).expect("repaired");
    assert_eq!(same, held);
    wait_synchronized(
        fw2,
        "fw2 synchronized after the repair",
        Duration::from_secs(10),
    )
    .expect("synchronized");
    let clean = verify_clean(fw2, 3).expect("clean verify");
    assert!(clean["repairs"].as_u64().unwrap_or(0) >= 1, "{clean}");
    // The sync core's events reach the log within a housekeeping round.
    wait_ctl(
        fw2,
        &["log", "--lines", "400"],
        "the verify's findings are logged",
        Duration::from_secs(3),
        |l| {
            let t = l["lines"].to_string();
            t.contains("digest buckets differ") && t.contains("repairing")
        },
    )
    .expect("logged");
}
