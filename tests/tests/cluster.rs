//! Two real tandemd processes as a cluster (two-node lab: both members on
//! the same LAN and WAN bridges, HA links between them): the state sync.
//! These tests turn the election off (`ha.election: false`) and set the
//! roles by hand (haactive / hapassive), so that each swap happens exactly
//! when the test wants it; tests/tests/election.rs runs the election.

use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tandem_tests::host::{self, IperfServer};
use tandem_tests::lab::addr;
use tandem_tests::node::{self, HaSection};
use tandem_tests::tools;
use tandem_tests::{heavy_lock, require_root, Lab, Node};

use tandem_tests::cluster::{role, worker_sum, Cluster};

fn cluster(tag: &str) -> Cluster {
    cluster_with(tag, None)
}

/// The policy of the stateful cluster tests.
const POLICY: &str = r#"(
    rules: [
        (action: Pass, from: ["198.18.1.0/24"], proto: Tcp, dst_ports: ["80", "5201"]),
        (action: Pass, from: ["198.18.1.0/24"], proto: Icmp, icmp_types: [8]),
    ],
    default_action: Block,
)"#;

/// Both members with the firewall on (same policy), both passive at start.
fn cluster_with(tag: &str, policy: Option<&str>) -> Cluster {
    cluster_full(tag, policy, &[], |ha| ha.election = false)
}

/// The general fixture: `tweak` edits each member's HA section.
fn cluster_full(
    tag: &str,
    policy: Option<&str>,
    env: &[(usize, &str, &str)],
    tweak: impl Fn(&mut HaSection),
) -> Cluster {
    tandem_tests::cluster::start(tag, policy, env, |_, ha| tweak(ha)).expect("starting the cluster")
}

fn passive_drops(stats: &Value) -> u64 {
    stats["drops_total"]["passive"].as_u64().unwrap_or(0)
}

#[test]
fn members_start_passive_and_silent() {
    require_root!();
    let c = cluster("clsil");
    for n in &c.nodes {
        assert_eq!(role(n), ("passive".to_owned(), None));
    }
    // Nobody answers for the cluster's address while both are passive.
    let p = host::ping(c.lab.client(), addr::LAN_GW, 3, Duration::from_secs(5)).unwrap();
    assert_eq!(p.received, 0, "a passive member answered: {}", p.output);
    for n in &c.nodes {
        let s = n.stats().unwrap();
        assert!(
            passive_drops(&s) > 0,
            "the ARP requests reached the member and were dropped: {s}"
        );
        assert_eq!(worker_sum(&s, "replies"), 0, "{s}");
        assert_eq!(worker_sum(&s, "forwarded"), 0, "{s}");
        let tx: u64 = s["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["tx_packets"].as_u64().unwrap())
            .sum();
        assert_eq!(tx, 0, "a passive member transmitted: {s}");
    }
}

#[test]
fn forced_swap_moves_a_live_transfer_to_the_other_member() {
    require_root!();
    let c = cluster("clswap");
    let (fw1, fw2) = (&c.nodes[0], &c.nodes[1]);
    let r = fw1.ctl(&["haactive"]).expect("haactive");
    assert_eq!(r["role"], "active");
    assert_eq!(role(fw1), ("active".to_owned(), Some("active".to_owned())));
    host::wait_for_ping(c.lab.client(), addr::SERVER, Duration::from_secs(20))
        .expect("through fw1");

    let _srv = IperfServer::start(c.lab.server(), addr::SERVER, 5201).unwrap();
    let client = c.lab.client();
    let res = thread::scope(|s| {
        let run = s.spawn(|| host::iperf_client(client, addr::SERVER, 5201, 8, &["-i", "1"]));
        thread::sleep(Duration::from_secs(3));
        let before = worker_sum(&fw2.stats().unwrap(), "forwarded");
        assert_eq!(before, 0, "fw2 forwarded while passive");
        let t0 = Instant::now();
        fw1.ctl(&["hapassive"]).expect("hapassive");
        fw2.ctl(&["haactive"]).expect("haactive");
        eprintln!("swap commands took {:?}", t0.elapsed());
        run.join().expect("iperf thread")
    })
    .expect("iperf3 through the swap");
    assert!(res.bits_per_second > 0.0);
    let intervals = tools::iperf_intervals(&res.raw);
    let stalled = intervals.iter().filter(|&&bps| bps < 1e6).count();
    eprintln!(
        "iperf intervals (Mbit/s): {:?}",
        intervals
            .iter()
            .map(|b| (b / 1e6).round())
            .collect::<Vec<_>>()
    );
    assert!(
        stalled <= 1,
        "the transfer stalled for {stalled} s around the swap: {intervals:?}"
    );

    let s2 = fw2.stats().unwrap();
    assert!(
        worker_sum(&s2, "forwarded") > 1000,
        "traffic moved to fw2: {s2}"
    );
    assert!(
        worker_sum(&s2, "garps_sent") >= 2,
        "fw2 announced the addresses: {s2}"
    );
    let fwd1 = worker_sum(&fw1.stats().unwrap(), "forwarded");
    thread::sleep(Duration::from_millis(500));
    host::ping(c.lab.client(), addr::SERVER, 3, Duration::from_secs(5)).unwrap();
    assert_eq!(
        worker_sum(&fw1.stats().unwrap(), "forwarded"),
        fwd1,
        "fw1 is silent after the swap"
    );

    let r = fw2.ctl(&["hareset"]).expect("hareset");
    assert_eq!(r["forced"], Value::Null);
    assert_eq!(
        role(fw2),
        ("active".to_owned(), None),
        "hareset keeps the role"
    );
}

#[test]
fn forced_status_is_refused_on_a_lone_node() {
    require_root!();
    let _lock = heavy_lock();
    let lab = Lab::single_node("cllone").unwrap();
    let mut n = lab.start_node(1).unwrap();
    n.wait_ready(Duration::from_secs(30)).unwrap();
    assert_eq!(role(&n), ("active".to_owned(), None));
    let err = n
        .ctl(&["haactive"])
        .expect_err("a lone node has no forced status");
    assert!(err.to_string().contains("not a cluster member"), "{err}");
}

/// Waits (bounded) until `f` holds for `n`'s `tandemctl sync` answer.
fn wait_sync(n: &Node, what: &str, timeout: Duration, f: impl Fn(&Value) -> bool) -> Value {
    tandem_tests::cluster::wait_ctl(n, &["sync"], what, timeout, f).expect(what)
}

fn conn_total(n: &Node, args: &[&str]) -> (u64, Value) {
    let mut a = vec!["conn", "list", "--limit", "100000"];
    a.extend_from_slice(args);
    let v = n.ctl(&a).expect("conn list");
    (v["total"].as_u64().unwrap_or(0), v)
}

#[test]
fn connections_through_the_active_are_held_larval_on_the_passive() {
    require_root!();
    let c = cluster_with("clsync", Some(POLICY));
    let (fw1, fw2) = (&c.nodes[0], &c.nodes[1]);
    fw1.ctl(&["haactive"]).expect("haactive");
    wait_sync(fw1, "fw1 sees its peer", Duration::from_secs(10), |s| {
        s["peer_up"] == true
    });
    wait_sync(
        fw2,
        "fw2 gets the initial bulk",
        Duration::from_secs(10),
        |s| s["synchronized"] == true,
    );

    let _echo = tools::ToolServer::tcp_echo(c.lab.server(), addr::SERVER, 80).unwrap();
    // Many connections, held open by one python process.
    const N: usize = 300;
    let script = format!(
        "import socket,time\nss=[]\nfor i in range({N}):\n s=socket.create_connection(('{}',80),timeout=5); ss.append(s)\nprint('open',len(ss),flush=True)\ntime.sleep(30)\n",
        addr::SERVER
    );
    let mut holder = c
        .lab
        .client()
        .spawn("holder", &["python3", "-c", &script])
        .unwrap();
    let end = Instant::now() + Duration::from_secs(20);
    while !holder.stdout().contains("open") {
        holder.ensure_running().unwrap();
        assert!(
            Instant::now() < end,
            "connections not opened: {}",
            holder.logs_tail(20)
        );
        thread::sleep(Duration::from_millis(100));
    }
    let (on_active, _) = conn_total(fw1, &["--proto", "tcp", "--port", "80"]);
    assert!(on_active >= N as u64, "fw1 tracks {on_active}");
    let end = Instant::now() + Duration::from_secs(10);
    let (mut on_passive, mut v) = conn_total(fw2, &["--proto", "tcp", "--port", "80"]);
    while on_passive < N as u64 && Instant::now() < end {
        thread::sleep(Duration::from_millis(200));
        (on_passive, v) = conn_total(fw2, &["--proto", "tcp", "--port", "80"]);
    }
    assert!(on_passive >= N as u64, "fw2 holds {on_passive} of {N}: {v}");
    let conns = v["connections"].as_array().unwrap();
    assert!(
        conns.iter().all(|c| c["larval"] == true),
        "replicated connections are larval on the passive"
    );
    assert!(conns.iter().any(|c| c["state"] == "established"), "{v}");
    let s1 = fw1.ctl(&["sync"]).unwrap();
    eprintln!("fw1 sync: {s1}");
    assert!(s1["records_queued"].as_u64().unwrap() >= N as u64);
}

#[test]
fn a_stateful_transfer_survives_a_forced_swap() {
    require_root!();
    let c = cluster_with("clsswap", Some(POLICY));
    let (fw1, fw2) = (&c.nodes[0], &c.nodes[1]);
    fw1.ctl(&["haactive"]).expect("haactive");
    wait_sync(fw2, "fw2 synchronized", Duration::from_secs(10), |s| {
        s["synchronized"] == true
    });
    host::wait_for_ping(c.lab.client(), addr::SERVER, Duration::from_secs(20))
        .expect("through fw1");

    let _srv = IperfServer::start(c.lab.server(), addr::SERVER, 5201).unwrap();
    let client = c.lab.client();
    let res = thread::scope(|s| {
        let run = s.spawn(|| host::iperf_client(client, addr::SERVER, 5201, 8, &["-i", "1"]));
        thread::sleep(Duration::from_secs(3));
        fw1.ctl(&["hapassive"]).expect("hapassive");
        fw2.ctl(&["haactive"]).expect("haactive");
        run.join().expect("iperf thread")
    })
    .expect("iperf3 through the swap: the connection must not be reset");
    let intervals = tools::iperf_intervals(&res.raw);
    eprintln!(
        "iperf intervals (Mbit/s): {:?}",
        intervals
            .iter()
            .map(|b| (b / 1e6).round())
            .collect::<Vec<_>>()
    );
    let stalled = intervals.iter().filter(|&&bps| bps < 1e6).count();
    assert!(
        stalled <= 1,
        "the transfer stalled {stalled} s: {intervals:?}"
    );
    let s2 = fw2.stats().unwrap();
    assert!(
        worker_sum(&s2, "forwarded") > 1000,
        "fw2 carried the transfer: {s2}"
    );
    let no_conn = s2["drops_total"]["no_connection"].as_u64().unwrap_or(0);
    assert!(
        no_conn < 50,
        "fw2 did not know the connection ({no_conn} no_connection drops)"
    );
    // The event log tells the story (F7).
    let log = fw2.ctl(&["log", "--lines", "100"]).expect("log");
    let text: Vec<&str> = log["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l.as_str())
        .collect();
    for want in [
        "SYNC: whole connection table received from the peer",
        "HA: swap: passive -> active (forced)",
    ] {
        assert!(
            text.iter().any(|l| l.contains(want)),
            "{want:?} not in fw2's event log: {text:#?}"
        );
    }
    let file = std::fs::read_to_string(c.lab.dir().join("fw2.log")).unwrap_or_default();
    assert!(
        file.contains("HA: swap: passive -> active (forced)"),
        "the event log file: {file}"
    );
}

/// Opens `n` short UDP flows (one datagram each, source ports 20000 + i,
/// so every flow is distinct)
/// from the client to the server's port 9000, in one python process.
fn udp_flows(c: &Cluster, n: usize) {
    let script = format!(
        "import socket,time\nfor i in range({n}):\n s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.bind(('0.0.0.0', 20000 + i)); s.sendto(b'x',('{}',9000)); s.close()\n if i % 20 == 19: time.sleep(0.001)\nprint('sent',flush=True)\n",
        addr::SERVER
    );
    let o = c
        .lab
        .client()
        .exec_timeout(&["python3", "-c", &script], Duration::from_secs(60))
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("sent"), "{o:?}");
}

const UDP_POLICY: &str = r#"(
    rules: [
        (action: Pass, from: ["198.18.1.0/24"], proto: Udp, dst_ports: ["9000"]),
        (action: Pass, from: ["198.18.1.0/24"], proto: Tcp, dst_ports: ["5201"]),
        (action: Pass, from: ["198.18.1.0/24"], proto: Icmp, icmp_types: [8]),
    ],
    default_action: Block,
)"#;

/// Opens `n` UDP flows through the active (fw1) towards a UDP echo on the
/// server, and waits (bounded) until fw1 tracks them and fw2 holds as many;
/// returns (fw1's count, fw2's count).
fn replicate_udp_flows(c: &Cluster, n: u64, passive_timeout: Duration) -> (u64, u64) {
    let _echo = tools::ToolServer::udp_echo(c.lab.server(), addr::SERVER, 9000).unwrap();
    udp_flows(c, n as usize);
    let filter = ["--proto", "udp", "--port", "9000"];
    let active = wait_total(&c.nodes[0], &filter, n, Duration::from_secs(10));
    let passive = wait_total(&c.nodes[1], &filter, active, passive_timeout);
    (active, passive)
}

fn wait_total(n: &Node, args: &[&str], want: u64, timeout: Duration) -> u64 {
    let end = Instant::now() + timeout;
    loop {
        let (got, _) = conn_total(n, args);
        if got >= want || Instant::now() >= end {
            return got;
        }
        thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn ten_thousand_connections_all_appear_on_the_passive() {
    require_root!();
    let c = cluster_with("cl10k", Some(UDP_POLICY));
    let (fw1, fw2) = (&c.nodes[0], &c.nodes[1]);
    fw1.ctl(&["haactive"]).expect("haactive");
    wait_sync(fw2, "fw2 synchronized", Duration::from_secs(10), |s| {
        s["synchronized"] == true
    });
    const N: u64 = 10_000;
    let (active, passive) = replicate_udp_flows(&c, N, Duration::from_secs(20));
    assert!(active >= N, "fw1 tracks {active} of {N}");
    let s1 = fw1.ctl(&["sync"]).unwrap();
    let s2 = fw2.ctl(&["sync"]).unwrap();
    eprintln!(
        "fw1 sync: lag_ms {} bytes_sent {} records_queued {}",
        s1["lag_ms"], s1["details"]["bytes_sent"], s1["records_queued"]
    );
    eprintln!(
        "fw2 sync: installs {} dropped {}",
        s2["installs"], s2["installs_dropped"]
    );
    assert_eq!(
        passive, active,
        "every connection of the active is on the passive"
    );
}

#[test]
fn the_passive_converges_with_ten_percent_loss_on_the_ha_link() {
    require_root!();
    let c = cluster_with("clloss", Some(UDP_POLICY));
    let (fw1, fw2) = (&c.nodes[0], &c.nodes[1]);
    // Drop 10 % of the sync datagrams arriving at fw2, and 10 % of its
    // acknowledgements arriving at fw1.
    for (fw, name) in [(c.lab.fw(2), "fw2"), (c.lab.fw(1), "fw1")] {
        for cmd in [
            "add table inet loss",
            "add chain inet loss input { type filter hook input priority 0 ; }",
            "add rule inet loss input udp dport 44242 numgen random mod 10 == 0 counter drop",
        ] {
            let o = fw.exec(&["sh", "-c", &format!("nft '{cmd}'")]).unwrap();
            assert!(o.status.success(), "nft {cmd} in {name}: {o:?}");
        }
    }
    fw1.ctl(&["haactive"]).expect("haactive");
    wait_sync(
        fw2,
        "fw2 synchronized despite loss",
        Duration::from_secs(20),
        |s| s["synchronized"] == true,
    );
    const N: u64 = 3000;
    let (active, passive) = replicate_udp_flows(&c, N, Duration::from_secs(30));
    let dropped = c
        .lab
        .fw(2)
        .exec(&["nft", "list", "table", "inet", "loss"])
        .unwrap();
    eprintln!("nft on fw2: {}", String::from_utf8_lossy(&dropped.stdout));
    assert!(
        String::from_utf8_lossy(&dropped.stdout).contains("packets"),
        "the loss rule counted"
    );
    assert_eq!(passive, active, "the passive converged");
    // The session's counters are published once a second.
    let s1 = wait_sync(
        fw1,
        "losses were repaired by retransmission",
        Duration::from_secs(3),
        |s| s["details"]["retransmits"].as_u64().unwrap_or(0) > 0,
    );
    eprintln!(
        "fw1 retransmits {} nacks_received {}",
        s1["details"]["retransmits"], s1["details"]["nacks_received"]
    );
}

#[test]
fn a_restarted_passive_gets_a_bulk_sync_and_can_take_over() {
    require_root!();
    let mut c = cluster_with("clrest", Some(UDP_POLICY));
    c.nodes[0].ctl(&["haactive"]).expect("haactive");
    wait_sync(
        &c.nodes[1],
        "fw2 synchronized",
        Duration::from_secs(10),
        |s| s["synchronized"] == true,
    );
    let _echo = tools::ToolServer::udp_echo(c.lab.server(), addr::SERVER, 9000).unwrap();
    udp_flows(&c, 500);
    let _srv = IperfServer::start(c.lab.server(), addr::SERVER, 5201).unwrap();
    let client = c.lab.client();
    let (res, fw2) = thread::scope(|s| {
        let run = s.spawn(|| host::iperf_client(client, addr::SERVER, 5201, 10, &["-i", "1"]));
        thread::sleep(Duration::from_secs(1));
        // The passive dies mid-traffic and comes back empty.
        let mut old = c.nodes.pop().unwrap();
        old.proc.signal("KILL");
        drop(old);
        let mut cfg = c
            .lab
            .node_config(2)
            .with_policy(&c.lab.dir().join("policy.ron"));
        cfg.ha = Some(HaSection {
            election: false,
            ..HaSection::lab(2)
        });
        let mut fw2 = c.lab.start_node_with(2, &cfg).expect("restart fw2");
        fw2.wait_ready(Duration::from_secs(30))
            .expect("control socket");
        let s2 = wait_sync(
            &fw2,
            "the restarted fw2 gets a bulk",
            Duration::from_secs(10),
            |s| s["synchronized"] == true,
        );
        eprintln!("restarted fw2: {s2}");
        let (on_active, _) = conn_total(&c.nodes[0], &["--proto", "udp", "--port", "9000"]);
        let (udp, _) = conn_total(&fw2, &["--proto", "udp", "--port", "9000"]);
        assert!(on_active >= 400, "the active tracks the flows: {on_active}");
        assert_eq!(udp, on_active, "the bulk carried every existing connection");
        c.nodes[0].ctl(&["hapassive"]).expect("hapassive");
        fw2.ctl(&["haactive"]).expect("haactive");
        (run.join().expect("iperf thread"), fw2)
    });
    let res = res.expect("the transfer survived the restart and the takeover");
    let intervals = tools::iperf_intervals(&res.raw);
    eprintln!(
        "iperf intervals (Mbit/s): {:?}",
        intervals
            .iter()
            .map(|b| (b / 1e6).round())
            .collect::<Vec<_>>()
    );
    assert!(
        intervals.iter().filter(|&&b| b < 1e6).count() <= 1,
        "{intervals:?}"
    );
    assert!(worker_sum(&fw2.stats().unwrap(), "forwarded") > 1000);
}

#[test]
fn a_datagram_sealed_with_the_wrong_key_is_rejected_and_counted() {
    require_root!();
    let c = cluster_with("clkey", Some(UDP_POLICY));
    let (fw1, fw2) = (&c.nodes[0], &c.nodes[1]);
    fw1.ctl(&["haactive"]).expect("haactive");
    wait_sync(fw2, "fw2 synchronized", Duration::from_secs(10), |s| {
        s["synchronized"] == true
    });
    let before = fw2.ctl(&["sync"]).unwrap();
    let bad_auth = |s: &Value| s["details"]["drop_bad_auth"].as_u64().unwrap_or(0);
    let probe = node::find_bin("k2k-probe").expect("k2k-probe is built with the workspace");
    let to = format!("{}:44242", addr::HA_MAIN_2);
    let from = format!("{}:0", addr::HA_MAIN_1);
    // The real peer's serial and epoch, so that only the key is wrong.
    let epoch = fw1.ctl(&["sync"]).unwrap()["details"]["epoch"].to_string();
    let o = c
        .lab
        .fw(1)
        .exec(&[
            probe.to_str().unwrap(),
            "--psk",
            "Wrong-Cluster-Key-2026",
            "--serial",
            "TDLAB0001",
            "--epoch",
            &epoch,
            "--to",
            &to,
            "--from",
            &from,
            "--count",
            "5",
        ])
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let after = wait_sync(
        fw2,
        "the forged datagrams are counted",
        Duration::from_secs(5),
        |s| bad_auth(s) >= bad_auth(&before) + 5,
    );
    assert_eq!(
        after["synchronized"], true,
        "the real session is undisturbed: {after}"
    );
    assert_eq!(after["installs"], before["installs"], "nothing was applied");
}

#[test]
fn a_member_of_the_next_protocol_version_still_syncs() {
    require_root!();
    // fw1 runs the next version, a second build of this tree whose K2K is
    // one version higher (it offers v3 and adds the v3 record group to
    // every datagram); fw2 is this build (v2).
    let next = tandem_tests::node::next_tandemd().expect("the next version's build");
    let lab = tandem_tests::lab::Lab::two_nodes("clver").expect("the lab");
    let c = tandem_tests::cluster::start_on(
        lab,
        tandem_tests::lab::heavy_lock(),
        Some(UDP_POLICY),
        &[],
        |i, cfg| {
            if let Some(ha) = cfg.ha.as_mut() {
                ha.election = false;
            }
            if i == 1 {
                cfg.program = next.clone();
            }
        },
    )
    .expect("starting the cluster");
    let (fw1, fw2) = (&c.nodes[0], &c.nodes[1]);
    fw1.ctl(&["haactive"]).expect("haactive");
    wait_sync(
        fw2,
        "fw2 synchronized with the newer fw1",
        Duration::from_secs(10),
        |s| s["synchronized"] == true,
    );
    let (active, passive) = replicate_udp_flows(&c, 300, Duration::from_secs(10));
    assert_eq!(passive, active, "the mixed-version pair keeps state");
    // The session counters are published once a second.
    let skipped = |s: &Value| s["details"]["unknown_groups"].as_u64().unwrap_or(0) > 0;
    wait_sync(
        fw2,
        "the v2 member skipped the v3 record type",
        Duration::from_secs(3),
        skipped,
    );
    let s1 = wait_sync(
        fw1,
        "fw1's counters published",
        Duration::from_secs(3),
        |s| s["details"]["version"] != 0,
    );
    assert_eq!(
        s1["details"]["version"], 2,
        "fail-soft: the pair speaks the lower version"
    );
}

#[test]
fn young_connections_are_held_back_until_they_reach_the_sync_age() {
    require_root!();
    let c = cluster_full("clage", Some(UDP_POLICY), &[], |ha| {
        ha.election = false;
        ha.sync_min_age_secs = 3
    });
    let (fw1, fw2) = (&c.nodes[0], &c.nodes[1]);
    fw1.ctl(&["haactive"]).expect("haactive");
    wait_sync(fw2, "fw2 synchronized", Duration::from_secs(10), |s| {
        s["synchronized"] == true
    });
    let client = c.lab.client();
    thread::scope(|s| {
        // One ICMP connection with a packet every 200 ms for 6 s.
        let ping = s.spawn(|| host::ping(client, addr::SERVER, 30, Duration::from_secs(10)));
        thread::sleep(Duration::from_millis(1500));
        let (young_active, _) = conn_total(fw1, &["--proto", "icmp"]);
        let (young_passive, _) = conn_total(fw2, &["--proto", "icmp"]);
        assert_eq!(young_active, 1, "fw1 tracks the ping");
        assert_eq!(
            young_passive, 0,
            "a connection younger than 3 s is not synchronised"
        );
        let aged = wait_total(fw2, &["--proto", "icmp"], 1, Duration::from_secs(4));
        assert_eq!(aged, 1, "once 3 s old (and active) it is synchronised");
        ping.join().expect("ping thread").expect("ping");
    });
}

#[test]
fn the_sync_moves_to_the_backup_link_when_the_main_one_is_cut() {
    require_root!();
    let c = cluster_with("clbkp", Some(UDP_POLICY));
    let (fw1, fw2) = (&c.nodes[0], &c.nodes[1]);
    fw1.ctl(&["haactive"]).expect("haactive");
    let s = wait_sync(fw2, "fw2 synchronized", Duration::from_secs(10), |s| {
        s["synchronized"] == true
    });
    assert_eq!(s["link"], "HA-main");
    // Cut the main HA link on fw1's side.
    let o = c
        .lab
        .fw(1)
        .exec(&["ip", "link", "set", "ha-main", "down"])
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    wait_sync(
        fw1,
        "fw1 sends on the backup link",
        Duration::from_secs(3),
        |s| s["link"] == "HA-backup",
    );
    let (active, passive) = replicate_udp_flows(&c, 200, Duration::from_secs(10));
    assert_eq!(
        passive, active,
        "the connections reached fw2 over the backup link"
    );
}
