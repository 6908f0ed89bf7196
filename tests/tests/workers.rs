//! Several workers per member, end to end (issue 10): real tandemd with 3
//! workers sharing the lab's 2 cores (adaptive polling). The outside leg
//! has 3 af_packet queue pairs (the kernel's fanout spreads packets over
//! them by its own hash: every packet a worker does not own is handed to
//! its owner). The inside leg has one queue: worker 0 receives everything
//! there, and workers 1 and 2 send through it; in the single-node test it
//! is on DPDK's pcap driver, so that IPv4 fragments reach the node as
//! fragments (af_packet's fanout reassembles them). Traffic of every kind
//! crosses: TCP, UDP, ICMP echo, fragmented UDP, keyed GRE, SNAT and DNAT;
//! each worker must own connections and the handoffs must show. The
//! cluster test kills the active of two 3-worker members under load.

use std::time::{Duration, Instant};

use serde_json::Value;
use tandem_tests::cluster::{
    self, digest, open_udp_flows, restart_config, role, verify_clean, wait_role, wait_same_table,
    wait_synchronized, Cluster,
};
use tandem_tests::host::{self, HttpServer, IperfServer};
use tandem_tests::lab::addr;
use tandem_tests::node::{HaSection, NodeConfig};
use tandem_tests::tools::{self, ToolServer};
use tandem_tests::{firewall, heavy_lock, require_root, Lab, Node};

const WORKERS: usize = 3;
/// Queue pairs of the inside and outside legs.
const QUEUES: [usize; 2] = [1, 3];

const POLICY: &str = r#"(
  objects: { "lan": Network("198.18.1.0/24"), "server": Host("198.18.2.10") },
  rules: [
    (action: Pass, from: ["lan"], to: ["server"], proto: Tcp, dst_ports: ["80", "5201", "8081"]),
    (action: Pass, from: ["lan"], proto: Udp, dst_ports: ["9000-9001"]),
    (action: Pass, from: ["lan"], proto: Icmp, icmp_types: [8]),
    (action: Pass, from: ["lan"], proto: Gre),
    (action: Pass, in: Some("out"), to: ["198.18.2.1", "198.18.1.10"], proto: Tcp, dst_ports: ["8080", "80"]),
  ],
  nat: [
    (kind: Source, out: Some("out"), from: ["198.18.1.0/24"], proto: Tcp, dst_ports: ["8081"], to_address: Interface),
    (kind: Destination, in: Some("out"), to: ["198.18.2.1"], proto: Tcp, dst_ports: ["8080"], translate_to: "198.18.1.10", translate_port: Some(80)),
  ],
  default_action: Block,
)
"#;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn workers_of(stats: &Value) -> Vec<Value> {
    stats["workers"].as_array().cloned().unwrap_or_default()
}

fn sum(ws: &[Value], key: &str) -> u64 {
    ws.iter().map(|w| w[key].as_u64().unwrap_or(0)).sum()
}

fn drop_count(ws: &[Value], reason: &str) -> u64 {
    ws.iter()
        .map(|w| w["drops"][reason].as_u64().unwrap_or(0))
        .sum()
}

/// Each worker's connections, from `tandemctl stats`.
fn owned(n: &Node) -> Vec<u64> {
    workers_of(&n.stats().expect("stats"))
        .iter()
        .map(|w| w["connections"].as_u64().unwrap_or(0))
        .collect()
}

#[test]
fn three_workers_carry_every_kind_of_traffic_with_nat() {
    require_root!();
    let _lock = heavy_lock();
    let lab = Lab::single_node("wkfw").expect("lab");
    let policy = firewall::write_policy(&lab, "policy.ron", POLICY).unwrap();
    let cfg = lab
        .node_config(1)
        .with_policy(&policy)
        .with_workers(WORKERS, &QUEUES)
        .with_pcap(0);
    let mut node = lab
        .start_node_with(1, &cfg)
        .expect("tandemd with 3 workers");
    node.wait_ready(secs(30)).expect("ready");
    let (client, server) = (lab.client(), lab.server());
    host::wait_for_ping(client, addr::SERVER, secs(20)).expect("ping through tandemd");

    let status = node.status().expect("status");
    eprintln!("interfaces: {}", status["interfaces"]);
    for (i, q) in QUEUES.iter().enumerate() {
        let iface = &status["interfaces"][i];
        assert_eq!(iface["rx_queues"], *q as u64, "{iface}");
        assert_eq!(iface["steering"], "software", "{iface}");
    }
    assert_eq!(
        status["workers"].as_array().map(Vec::len),
        Some(WORKERS),
        "{status}"
    );
    let log = node.ctl(&["log", "--lines", "100"]).expect("log")["lines"].to_string();
    assert!(
        log.contains("interface in: 1 RX / 1 TX queues for 3 workers, packets reach their worker through the software dispatch: the device has one RX queue"),
        "{log}"
    );
    assert!(
        log.contains("interface out: 3 RX / 3 TX queues for 3 workers, packets reach their worker through the software dispatch"),
        "{log}"
    );

    // TCP: a file over HTTP, intact; then 8 parallel streams.
    let http = HttpServer::start(server, addr::SERVER, 80, lab.dir(), 4).unwrap();
    let name = http
        .file
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let out = lab.dir().join("download.bin");
    let c = host::curl_download(client, addr::SERVER, 80, &name, &out, secs(30)).unwrap();
    assert!(c.ok(), "curl through 3 workers: {c:?}");
    assert_eq!(host::sha256_file(&out).unwrap(), http.sha256);
    let _iperf = IperfServer::start(server, addr::SERVER, 5201).unwrap();
    let ip = host::iperf_client(client, addr::SERVER, 5201, 3, &["-P", "8"]).expect("iperf3 -P 8");
    eprintln!(
        "iperf3 -P 8 through 3 workers: {:.0} Mbit/s",
        ip.bits_per_second / 1e6
    );
    assert!(ip.bits_per_second > 1e6, "{:?}", ip.raw);

    // UDP: 3000 flows (one datagram each) and an echo.
    let sent = open_udp_flows(&lab, 3_000, 9000, 3_000).expect("flows");
    assert_eq!(sent, 3_000);
    let _echo = ToolServer::udp_echo(server, addr::SERVER, 9000).unwrap();
    for i in 0..6 {
        let u = tools::udp_probe(client, addr::SERVER, 9000, &format!("w{i}"), 3, secs(1)).unwrap();
        assert_eq!(
            u.text.as_deref(),
            Some(format!("w{i}").as_str()),
            "{:?}",
            u.raw
        );
    }

    // ICMP: six pings (six identifiers), then fragmented echoes.
    for _ in 0..6 {
        let p = host::ping(client, addr::SERVER, 2, secs(5)).unwrap();
        assert_eq!(p.received, 2, "{}", p.output);
    }
    // Fragmented UDP, inside to outside: six 3000-byte datagrams (two
    // fragments each, from six source ports) reach the server whole. (Its
    // echoes come back fragmented through the af_packet leg, which
    // reassembles them into frames larger than its ring's: not counted.)
    let big: String = "f".repeat(3000);
    for _ in 0..6 {
        let _ = tools::udp_probe(
            client,
            addr::SERVER,
            9000,
            &big,
            1,
            Duration::from_millis(300),
        );
    }
    let whole = _echo
        .events()
        .iter()
        .filter(|e| e["event"] == "recv" && e["len"] == 3000)
        .count();
    assert_eq!(
        whole,
        6,
        "fragmented datagrams reassembled by the server; drops: {}",
        node.stats()
            .map(|s| s["drops_total"].clone())
            .unwrap_or_default()
    );

    // GRE with six keys.
    let _gre = ToolServer::gre_echo(server, addr::SERVER).unwrap();
    for key in 1..=6 {
        let echoed = tools::gre_probe(client, addr::SERVER, key, 3).unwrap();
        assert_eq!(echoed, 3, "GRE key {key}");
    }

    // SNAT: six connections, all seen from the firewall's WAN address.
    let peer = ToolServer::peer_addr(server, addr::SERVER, 8081).unwrap();
    for _ in 0..6 {
        let (code, body) = tools::curl_body(client, addr::SERVER, 8081, "/who", secs(10)).unwrap();
        assert_eq!(code, Some(0), "curl through SNAT: {body}");
        let v: Value = serde_json::from_str(&body).expect("peer JSON");
        assert_eq!(v["peer"], addr::WAN_GW, "SNAT source: {body}");
    }
    drop(peer);

    // DNAT: six downloads from the server through 198.18.2.1:8080 to the
    // client's port 80; the replies' keys mostly belong to another worker
    // than the connection's.
    let inside = HttpServer::start(client, addr::CLIENT, 80, lab.dir(), 1).unwrap();
    let name = inside
        .file
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    for i in 0..6 {
        let out = lab.dir().join(format!("dnat{i}.bin"));
        let c = host::curl_download(server, addr::WAN_GW, 8080, &name, &out, secs(30)).unwrap();
        assert!(c.ok(), "download {i} through DNAT: {c:?}");
        assert_eq!(host::sha256_file(&out).unwrap(), inside.sha256);
    }

    let stats = node.stats().expect("stats");
    let ws = workers_of(&stats);
    eprintln!("workers: {}", serde_json::to_string(&ws).unwrap());
    assert_eq!(ws.len(), WORKERS);
    for w in &ws {
        assert!(
            w["forwarded"].as_u64().unwrap_or(0) > 0,
            "every worker forwarded: {w}"
        );
        assert!(
            w["connections"].as_u64().unwrap_or(0) > 100,
            "every worker owns connections: {w}"
        );
    }
    assert!(
        sum(&ws, "handoffs_out") > 0,
        "packets were handed to their owner"
    );
    assert_eq!(sum(&ws, "handoffs_out"), sum(&ws, "handoffs_in"));
    assert!(
        sum(&ws, "tx_handoffs") > 0,
        "workers 1 and 2 sent through worker 0"
    );
    assert_eq!(drop_count(&ws, "handoff_full"), 0);
    node.proc.ensure_running().expect("tandemd alive");
}

/// Two members with 3 workers each, election on, encrypted sync.
fn member_config(lab: &Lab, i: usize) -> NodeConfig {
    let mut cfg = lab
        .node_config(i)
        .with_policy(&lab.dir().join("policy.ron"))
        .with_workers(WORKERS, &QUEUES);
    if let Some(fw) = cfg.firewall.as_mut() {
        fw.connections = 262_144;
        fw.extra = "timeouts: (udp_unreplied: Some(600))".into();
    }
    cfg.ha = Some(HaSection {
        encrypt: true,
        ..HaSection::lab(i)
    });
    cfg
}

#[test]
fn a_kill_of_a_three_worker_active_loses_no_connection() {
    require_root!();
    let lock = heavy_lock();
    let lab = Lab::two_nodes("wkkill").expect("lab");
    firewall::write_policy(&lab, "policy.ron", POLICY).expect("policy");
    let configs: Vec<NodeConfig> = (1..=2).map(|i| member_config(&lab, i)).collect();
    let mut c = cluster::start_on(lab, lock, None, &[], |i, cfg| {
        *cfg = configs[i - 1].clone();
    })
    .expect("cluster");
    assert_eq!(c.wait_single_active(secs(10)).expect("elected"), 0);
    wait_synchronized(&c.nodes[1], "fw2 synchronized", secs(10)).expect("fw2 synchronized");

    // Long-lived TCP connections echoing all along, and 100,000 UDP flows.
    let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<String>>();
    let mut serve = tools::spawn_tool(
        c.lab.server(),
        "chatter-serve",
        "tcp_chatter.py",
        &argv(&[
            "serve",
            "--bind",
            addr::SERVER,
            "--port",
            "80",
            "--timeout",
            "300",
        ]),
    )
    .unwrap();
    tools::wait_event(&mut serve, "ready", secs(10)).expect("chatter server");
    let mut chatter = tools::spawn_tool(
        c.lab.client(),
        "chatter",
        "tcp_chatter.py",
        &argv(&[
            "chat",
            "--dst",
            addr::SERVER,
            "--port",
            "80",
            "--connections",
            "24",
            "--interval",
            "0.1",
            "--duration",
            "120",
        ]),
    )
    .unwrap();
    tools::wait_event(&mut chatter, "ready", secs(10)).expect("chatter connected");
    let t0 = Instant::now();
    let sent = open_udp_flows(&c.lab, 100_000, 9000, 20_000).expect("flows");
    assert_eq!(sent, 100_000);
    let held = wait_same_table(&c.nodes[0], &c.nodes[1], 98_000, secs(60)).expect("replicated");
    eprintln!("{held} flows tracked and replicated in {:?}", t0.elapsed());
    let fw1_owned = owned(&c.nodes[0]);
    let fw2_owned = owned(&c.nodes[1]);
    eprintln!("fw1 workers own {fw1_owned:?}, fw2 (passive) {fw2_owned:?}");
    assert!(fw1_owned.iter().all(|&n| n > 25_000), "{fw1_owned:?}");
    assert_eq!(
        fw1_owned, fw2_owned,
        "the passive installs each connection on its owner"
    );

    let t0 = Instant::now();
    c.nodes[0].proc.signal("KILL");
    wait_role(&c.nodes[1], "active", "fw2 takes over", secs(5)).expect("takeover");
    eprintln!("takeover seen after {:?}", t0.elapsed());
    let (after, _) = digest(&c.nodes[1]).expect("digest");
    assert_eq!(after, held, "the new active holds every connection");

    let Cluster { nodes, lab, .. } = &mut c;
    restart_config(lab, nodes, 1, &configs[0]).expect("fw1 back");
    wait_synchronized(&nodes[0], "fw1 synchronized", secs(15)).expect("fw1 synchronized");
    wait_same_table(&nodes[1], &nodes[0], held, secs(15)).expect("fw1 holds the table");
    assert_eq!(role(&nodes[0]).0, "passive");
    verify_clean(&nodes[0], 3).expect("verify");

    chatter.signal("TERM");
    let end = Instant::now() + secs(10);
    while chatter.is_running() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
    }
    let v = tools::json_lines(&chatter.stdout())
        .into_iter()
        .find(|v| v["result"] == "tcp_chatter")
        .expect("the chatter's result");
    eprintln!("chatter: {v}");
    assert_eq!(v["connections"], 24, "{v}");
    assert_eq!(v["lost"], 0, "no TCP connection lost: {v}");
    assert!(v["exchanges"].as_u64().unwrap_or(0) > 24 * 20, "{v}");
    let ws = workers_of(&nodes[1].stats().expect("stats"));
    for w in &ws {
        assert!(
            w["forwarded"].as_u64().unwrap_or(0) > 0,
            "fw2's workers all forward: {w}"
        );
    }
    assert_eq!(drop_count(&ws, "handoff_full"), 0);
}
