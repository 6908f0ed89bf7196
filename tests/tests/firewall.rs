//! The stateful firewall of one real tandemd (single-node lab with a
//! policy): allowed, blocked and rejected traffic, return traffic, TCP
//! window tracking, NAT, policy reload under load and `conn flush`.
//! Needs the workspace binaries (`cargo build --workspace --bins`, or
//! `TANDEM_BIN_DIR`) and root. The scenarios run one at a time (heavy
//! lock). JSON/CLI assumptions live in `tandem_tests::firewall`.

use std::path::PathBuf;
use std::sync::MutexGuard;
use std::time::{Duration, Instant};

use tandem_tests::firewall::{self, reason, ConnFilter, PolicyReload};
use tandem_tests::host::{self, HttpServer, IperfServer};
use tandem_tests::lab::addr;
use tandem_tests::node;
use tandem_tests::tools::{self, InjectMode, Outcome, Sniffer, ToolServer};
use tandem_tests::{heavy_lock, require_root, Lab, Node};

/// The policy of the brief: web, UDP and ping from the LAN, rejects on
/// 23/tcp and 7777/udp, a silent block on 9999/udp, SNAT of 8081/tcp and
/// DNAT of 198.18.2.1:8080 to the client's port 80.
const BASE_POLICY: &str = r#"(
  objects: { "lan": Network("198.18.1.0/24"), "server": Host("198.18.2.10") },
  rules: [
    (name: "web", action: Pass, from: ["lan"], to: ["server"], proto: Tcp, dst_ports: ["80", "5201", "8080"]),
    (action: Pass, from: ["lan"], proto: Udp, dst_ports: ["5201", "9000"]),
    (action: Pass, from: ["lan"], proto: Icmp, icmp_types: [8]),
    (action: Reject, proto: Tcp, dst_ports: ["23"]),
    (action: Reject, proto: Udp, dst_ports: ["7777"]),
    (action: Block, proto: Udp, dst_ports: ["9999"]),
  ],
  nat: [
    (kind: Source, out: Some("out"), from: ["198.18.1.0/24"], proto: Tcp, dst_ports: ["8081"], to_address: Interface),
    (kind: Destination, in: Some("out"), to: ["198.18.2.1"], proto: Tcp, dst_ports: ["8080"], translate_to: "198.18.1.10", translate_port: Some(80)),
  ],
  default_action: Block,
)
"#;

/// A single-node lab whose tandemd runs `policy`. Drop order: node, lab,
/// lock.
struct Fixture {
    node: Node,
    lab: Lab,
    policy: PathBuf,
    _lock: MutexGuard<'static, ()>,
}

fn fixture(tag: &str, policy: &str) -> Fixture {
    let lock = heavy_lock();
    if let Err(e) = node::find_bin("tandemd").and(node::find_bin("tandemctl")) {
        panic!("{e}");
    }
    let lab = Lab::single_node(tag).expect("building the single-node lab");
    let path = firewall::write_policy(&lab, "policy.ron", policy).unwrap();
    let node = firewall::start_with_policy(&lab, 1, &path)
        .unwrap_or_else(|e| panic!("starting tandemd with policy {}: {e}", path.display()));
    // Pings from the LAN are allowed by every policy here.
    host::wait_for_ping(lab.client(), addr::SERVER, Duration::from_secs(20))
        .expect("no ping reply from the server through tandemd");
    Fixture {
        node,
        lab,
        policy: path,
        _lock: lock,
    }
}

impl Fixture {
    /// Fails (with tandemd's logs) if tandemd died during the scenario.
    fn still_running(&mut self) {
        if let Err(e) = self.node.proc.ensure_running() {
            panic!("{e}");
        }
    }

    fn drops(&self, reason: &str) -> u64 {
        self.node.drops(reason).expect("tandemctl stats")
    }
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[test]
fn allowed_tcp_udp_icmp_pass_and_are_listed() {
    require_root!();
    let mut f = fixture("fwallow", BASE_POLICY);
    let (client, server) = (f.lab.client(), f.lab.server());
    // TCP: a file over HTTP, intact.
    let http = HttpServer::start(server, addr::SERVER, 80, f.lab.dir(), 2).unwrap();
    let out = f.lab.dir().join("download.bin");
    let name = http
        .file
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let c = host::curl_download(client, addr::SERVER, 80, &name, &out, secs(30)).unwrap();
    assert!(c.ok(), "curl through the firewall failed: {c:?}");
    assert_eq!(host::sha256_file(&out).unwrap(), http.sha256);
    // UDP: the echo comes back.
    let _echo = ToolServer::udp_echo(server, addr::SERVER, 9000).unwrap();
    let u = tools::udp_probe(client, addr::SERVER, 9000, "fw-udp", 3, secs(1)).unwrap();
    assert_eq!(u.outcome, Outcome::Reply, "{:?}", u.raw);
    assert_eq!(u.text.as_deref(), Some("fw-udp"));
    // ICMP.
    let p = host::ping(client, addr::SERVER, 3, secs(5)).unwrap();
    assert_eq!(p.received, 3, "{}", p.output);
    // A TCP connection held open while the table is read.
    let held = tools::hold_tcp(client, addr::SERVER, 80, secs(6)).unwrap();
    let list = f.node.conns().expect("tandemctl conn list");
    eprintln!("conn list: {}", list.raw);
    let tcp = list.find(
        "tcp",
        addr::CLIENT,
        Some(held.sport),
        addr::SERVER,
        Some(80),
    );
    assert_eq!(tcp.len(), 1, "held TCP connection not listed: {}", list.raw);
    assert_eq!(tcp[0].state, "established", "{}", tcp[0].raw);
    assert_eq!(tcp[0].nat, None, "{}", tcp[0].raw);
    assert_eq!(
        tcp[0].rule,
        Some(0),
        "let in by rule 0 (web): {}",
        tcp[0].raw
    );
    let udp = list.find("udp", addr::CLIENT, Some(u.sport), addr::SERVER, Some(9000));
    assert_eq!(udp.len(), 1, "UDP flow not listed: {}", list.raw);
    assert_eq!(udp[0].rule, Some(1), "{}", udp[0].raw);
    assert!(
        !list
            .find("icmp", addr::CLIENT, None, addr::SERVER, None)
            .is_empty(),
        "ICMP flow not listed: {}",
        list.raw
    );
    assert!(list.total >= 3, "{}", list.raw);
    // Filters.
    let only_udp = f
        .node
        .conn_list(&ConnFilter {
            proto: Some("udp".into()),
            ..Default::default()
        })
        .unwrap();
    assert!(!only_udp.conns.is_empty());
    assert!(
        only_udp.conns.iter().all(|c| c.proto == "udp"),
        "{}",
        only_udp.raw
    );
    let by_port = f
        .node
        .conn_list(&ConnFilter {
            port: Some(9000),
            src: Some(addr::CLIENT.into()),
            ..Default::default()
        })
        .unwrap();
    assert!(
        !by_port
            .find("udp", addr::CLIENT, Some(u.sport), addr::SERVER, Some(9000))
            .is_empty(),
        "{}",
        by_port.raw
    );
    assert!(
        by_port
            .conns
            .iter()
            .all(|c| c.dport == Some(9000) || c.sport == Some(9000)),
        "{}",
        by_port.raw
    );
    let stats = f.node.stats().unwrap();
    eprintln!("stats: {stats}");
    assert!(
        firewall::firewall_counter(&stats, "created").unwrap_or(0) >= 3,
        "firewall.created: {stats}"
    );
    drop(held);
    f.still_running();
}

#[test]
fn blocked_traffic_times_out_and_rejected_traffic_is_refused() {
    require_root!();
    let mut f = fixture("fwblock", BASE_POLICY);
    let (client, server) = (f.lab.client(), f.lab.server());
    // Listeners everywhere, so any refusal or silence is the firewall's.
    let udp9999 = ToolServer::udp_echo(server, addr::SERVER, 9999).unwrap();
    let udp7777 = ToolServer::udp_echo(server, addr::SERVER, 7777).unwrap();
    let tcp22 = ToolServer::tcp_echo(server, addr::SERVER, 22).unwrap();
    let tcp23 = ToolServer::tcp_echo(server, addr::SERVER, 23).unwrap();
    let block0 = f.drops(reason::POLICY_BLOCK);
    let reject0 = f.drops(reason::POLICY_REJECT);

    let u = tools::udp_probe(client, addr::SERVER, 9999, "blocked", 2, secs(1)).unwrap();
    assert_eq!(
        u.outcome,
        Outcome::Timeout,
        "UDP 9999 must get silence: {:?}",
        u.raw
    );
    let t = tools::tcp_probe(client, addr::SERVER, 22, secs(2), None).unwrap();
    assert_eq!(
        t.outcome,
        Outcome::Timeout,
        "TCP 22 must time out: {:?}",
        t.raw
    );
    assert!(t.seconds >= 1.9, "{:?}", t.raw);

    let t = tools::tcp_probe(client, addr::SERVER, 23, secs(2), None).unwrap();
    assert_eq!(
        t.outcome,
        Outcome::Refused,
        "TCP 23 must be reset: {:?}",
        t.raw
    );
    assert!(t.seconds < 1.0, "reset took {} s", t.seconds);
    let u = tools::udp_probe(client, addr::SERVER, 7777, "rejected", 2, secs(1)).unwrap();
    assert_eq!(
        u.outcome,
        Outcome::Refused,
        "UDP 7777 must get port unreachable: {:?}",
        u.raw
    );
    assert!(u.seconds < 1.0, "{:?}", u.raw);

    for (srv, what) in [
        (&udp9999, "udp 9999"),
        (&udp7777, "udp 7777"),
        (&tcp22, "tcp 22"),
        (&tcp23, "tcp 23"),
    ] {
        assert!(
            srv.received().is_empty() && !srv.events().iter().any(|e| e["event"] == "accept"),
            "{what} reached the server: {:?}",
            srv.events()
        );
    }
    let block1 = f.drops(reason::POLICY_BLOCK);
    let reject1 = f.drops(reason::POLICY_REJECT);
    eprintln!("policy_block {block0} -> {block1}, policy_reject {reject0} -> {reject1}");
    // 2 datagrams + at least 2 SYNs (the first and a retransmit in 2 s).
    assert!(block1 >= block0 + 3, "policy_block {block0} -> {block1}");
    // 1 SYN + 1 datagram (the refused socket stops there).
    assert!(
        reject1 >= reject0 + 2,
        "policy_reject {reject0} -> {reject1}"
    );
    // Allowed traffic still flows.
    let p = host::ping(client, addr::SERVER, 2, secs(4)).unwrap();
    assert_eq!(p.received, 2, "{}", p.output);
    f.still_running();
}

#[test]
fn return_traffic_passes_but_unsolicited_inbound_does_not() {
    require_root!();
    let mut f = fixture("fwreturn", BASE_POLICY);
    let (client, server) = (f.lab.client(), f.lab.server());
    let on_server = ToolServer::tcp_echo(server, addr::SERVER, 80).unwrap();
    let on_client = ToolServer::tcp_echo(client, addr::CLIENT, 80).unwrap();
    // Outbound: the answer (return traffic) comes back.
    let t = tools::tcp_probe(client, addr::SERVER, 80, secs(2), Some("out-and-back")).unwrap();
    assert_eq!(t.outcome, Outcome::Connected, "{:?}", t.raw);
    assert_eq!(t.reply.as_deref(), Some("out-and-back"));
    assert!(on_server.saw("out-and-back"));
    // Inbound to the same port: nothing.
    let block0 = f.drops(reason::POLICY_BLOCK);
    let t = tools::tcp_probe(server, addr::CLIENT, 80, secs(2), None).unwrap();
    assert_eq!(
        t.outcome,
        Outcome::Timeout,
        "server -> client:80: {:?}",
        t.raw
    );
    assert!(
        !on_client.events().iter().any(|e| e["event"] == "accept"),
        "{:?}",
        on_client.events()
    );
    assert!(f.drops(reason::POLICY_BLOCK) > block0);
    // A crafted ACK with no connection, towards an allowed port: dropped
    // (counted as no_connection), never on the server's wire.
    let marker = "FW-BARE-ACK-4e21";
    let nc0 = f.drops(reason::NO_CONNECTION);
    let sniff = Sniffer::start(server, "eth0", marker, Some(80), secs(3)).unwrap();
    let r = tools::tcp_inject(
        client,
        "eth0",
        addr::SERVER,
        80,
        &InjectMode::Bare { sport: 47123 },
        marker,
        3,
    )
    .unwrap();
    assert_eq!(r.injected, 3, "{}", r.raw);
    let s = sniff.finish().unwrap();
    assert_eq!(s.matched, 0, "the crafted ACK crossed the firewall: {s:?}");
    let nc1 = f.drops(reason::NO_CONNECTION);
    eprintln!("no_connection {nc0} -> {nc1}");
    assert!(nc1 >= nc0 + 3, "no_connection {nc0} -> {nc1}");
    f.still_running();
}

#[test]
fn out_of_window_segment_is_dropped_and_the_connection_survives() {
    require_root!();
    let mut f = fixture("fwwindow", BASE_POLICY);
    let (client, server) = (f.lab.client(), f.lab.server());
    let echo = ToolServer::tcp_echo(server, addr::SERVER, 5201).unwrap();
    let marker = "FW-OOW-MARKER-c0de";
    let oow0 = f.drops(reason::TCP_OUT_OF_WINDOW);
    let sniff = Sniffer::start(server, "eth0", marker, Some(5201), secs(5)).unwrap();
    let r = tools::tcp_inject(
        client,
        "eth0",
        addr::SERVER,
        5201,
        &InjectMode::Window { offset: 1 << 30 },
        marker,
        2,
    )
    .unwrap();
    eprintln!("inject: {}", r.raw);
    assert_eq!(r.error, None, "{}", r.raw);
    assert!(r.hello_ok, "the real connection did not work: {}", r.raw);
    assert_eq!(r.injected, 2);
    assert!(
        r.after_ok,
        "the real connection broke after the injection: {}",
        r.raw
    );
    let s = sniff.finish().unwrap();
    assert_eq!(s.matched, 0, "out-of-window segment crossed: {s:?}");
    assert!(!echo.saw(marker));
    assert!(echo.saw("hello-after"));
    let oow1 = f.drops(reason::TCP_OUT_OF_WINDOW);
    eprintln!("tcp_out_of_window {oow0} -> {oow1}");
    assert!(oow1 >= oow0 + 2, "tcp_out_of_window {oow0} -> {oow1}");
    f.still_running();
}

/// SNAT of 8081 and DNAT of 198.18.2.1:8080, with pass rules for both
/// (before and after translation, whichever the filter looks at).
const NAT_POLICY: &str = r#"(
  objects: { "lan": Network("198.18.1.0/24"), "server": Host("198.18.2.10") },
  rules: [
    (name: "snat-web", action: Pass, from: ["lan"], to: ["server"], proto: Tcp, dst_ports: ["8081"]),
    (name: "dnat-web", action: Pass, in: Some("out"), to: ["198.18.2.1", "198.18.1.10"], proto: Tcp, dst_ports: ["8080", "80"]),
    (action: Pass, from: ["lan"], proto: Icmp, icmp_types: [8]),
  ],
  nat: [
    (kind: Source, out: Some("out"), from: ["198.18.1.0/24"], proto: Tcp, dst_ports: ["8081"], to_address: Interface),
    (kind: Destination, in: Some("out"), to: ["198.18.2.1"], proto: Tcp, dst_ports: ["8080"], translate_to: "198.18.1.10", translate_port: Some(80)),
  ],
  default_action: Block,
)
"#;

#[test]
fn snat_and_dnat() {
    require_root!();
    let mut f = fixture("fwnat", NAT_POLICY);
    let (client, server) = (f.lab.client(), f.lab.server());
    // SNAT: the server sees the firewall's WAN address.
    let peer = ToolServer::peer_addr(server, addr::SERVER, 8081).unwrap();
    let (code, body) = tools::curl_body(client, addr::SERVER, 8081, "/who", secs(10)).unwrap();
    assert_eq!(code, Some(0), "curl through SNAT: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("peer_addr_server JSON");
    assert_eq!(v["peer"], addr::WAN_GW, "SNAT source: {body}");
    assert_eq!(peer.peers(), vec![addr::WAN_GW.to_string()]);
    let held = tools::hold_tcp(client, addr::SERVER, 8081, secs(6)).unwrap();
    let list = f.node.conns().unwrap();
    eprintln!("conn list (SNAT): {}", list.raw);
    let c = list.find(
        "tcp",
        addr::CLIENT,
        Some(held.sport),
        addr::SERVER,
        Some(8081),
    );
    assert_eq!(c.len(), 1, "{}", list.raw);
    assert_eq!(c[0].nat_kind(), Some("source"), "{}", c[0].raw);
    assert_eq!(c[0].nat_addr(), Some(addr::WAN_GW), "{}", c[0].raw);
    drop(held);

    // DNAT: 198.18.2.1:8080 from the server reaches the client's port 80.
    let http = HttpServer::start(client, addr::CLIENT, 80, f.lab.dir(), 1).unwrap();
    let out = f.lab.dir().join("dnat.bin");
    let name = http
        .file
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let c = host::curl_download(server, addr::WAN_GW, 8080, &name, &out, secs(30)).unwrap();
    assert!(c.ok(), "curl through DNAT failed: {c:?}");
    assert_eq!(host::sha256_file(&out).unwrap(), http.sha256);
    // python's http.server logs "<peer> - - [...] \"GET ...\"" on stderr.
    let log = http.proc.stderr();
    assert!(
        log.lines()
            .any(|l| l.starts_with(addr::SERVER) && l.contains(&name)),
        "the client-side server did not see the server's real address:\n{log}"
    );
    let held = tools::hold_tcp(server, addr::WAN_GW, 8080, secs(6)).unwrap();
    let list = f
        .node
        .conn_list(&ConnFilter {
            src: Some(addr::SERVER.into()),
            ..Default::default()
        })
        .unwrap();
    eprintln!("conn list (DNAT): {}", list.raw);
    let c: Vec<_> = list
        .conns
        .iter()
        .filter(|c| c.proto == "tcp" && c.src == addr::SERVER && c.sport == Some(held.sport))
        .collect();
    assert_eq!(c.len(), 1, "{}", list.raw);
    assert_eq!(c[0].nat_kind(), Some("destination"), "{}", c[0].raw);
    assert_eq!(c[0].nat_addr(), Some(addr::CLIENT), "{}", c[0].raw);
    assert_eq!(c[0].nat_port(), Some(80), "{}", c[0].raw);
    assert_eq!(
        (c[0].dst.as_str(), c[0].dport),
        (addr::WAN_GW, Some(8080)),
        "dst is the address the initiator used: {}",
        c[0].raw
    );
    drop(held);
    f.still_running();
}

fn reload_policy(udp_ports: &[&str], extra_rules: &str) -> String {
    let ports: Vec<String> = udp_ports.iter().map(|p| format!("\"{p}\"")).collect();
    format!(
        r#"(
  objects: {{ "lan": Network("198.18.1.0/24"), "server": Host("198.18.2.10") }},
  rules: [
    (name: "iperf", action: Pass, from: ["lan"], to: ["server"], proto: Tcp, dst_ports: ["5201"]),
    (name: "udp", action: Pass, from: ["lan"], to: ["server"], proto: Udp, dst_ports: [{}]),
    (name: "ping", action: Pass, from: ["lan"], proto: Icmp, icmp_types: [8]),
{extra_rules}  ],
  nat: [],
  default_action: Block,
)
"#,
        ports.join(", ")
    )
}

#[test]
fn policy_reload_under_iperf_keeps_the_transfer_alive() {
    require_root!();
    let v1 = reload_policy(&["9000"], "");
    let mut f = fixture("fwreload", &v1);
    let (client, server) = (f.lab.client(), f.lab.server());
    let _echo = [9000, 9001, 9002].map(|p| ToolServer::udp_echo(server, addr::SERVER, p).unwrap());
    let probe = |port: u16| {
        tools::udp_probe(client, addr::SERVER, port, "reload", 2, secs(1))
            .unwrap()
            .outcome
    };
    assert_eq!(probe(9000), Outcome::Reply);
    assert_eq!(probe(9001), Outcome::Timeout, "9001 is not allowed by v1");
    let _iperf = IperfServer::start(server, addr::SERVER, 5201).unwrap();

    let v2 = reload_policy(
        &["9000", "9001"],
        "    (name: \"telnet\", action: Reject, proto: Tcp, dst_ports: [\"23\"]),\n    \
         (name: \"noise\", action: Block, proto: Udp, dst_ports: [\"9999\"], log: true),\n",
    );
    // v3 is v2 plus 9002, with an error on a known line.
    let v3 = reload_policy(
        &["9000", "9001", "9002"],
        "    (name: \"bad\", action: Allow, proto: Tcp, dst_ports: [\"24\"]),\n",
    );
    let bad_line = v3.lines().position(|l| l.contains("Allow")).unwrap() + 1;
    let policy = f.policy.clone();
    let fname = policy.file_name().unwrap().to_string_lossy().into_owned();

    let (iperf, reloads) = std::thread::scope(|s| {
        let run = s.spawn(|| host::iperf_client(client, addr::SERVER, 5201, 10, &[]));
        std::thread::sleep(secs(3));
        let t = Instant::now();
        std::fs::write(&policy, &v2).unwrap();
        let good = f.node.policy_reload().expect("tandemctl policy reload");
        let good_took = t.elapsed();
        let after_good = probe(9001);
        std::fs::write(&policy, &v3).unwrap();
        let bad = f.node.policy_reload().expect("tandemctl policy reload");
        let still_9001 = probe(9001);
        let not_9002 = probe(9002);
        let iperf = run.join().expect("iperf thread");
        (
            iperf,
            (good, good_took, after_good, bad, still_9001, not_9002),
        )
    });
    let (good, good_took, after_good, bad, still_9001, not_9002) = reloads;
    eprintln!("valid reload ({good_took:?}): {good:?}\ninvalid reload: {bad:?}");
    match &good {
        PolicyReload::Loaded { rules, path } => {
            assert_eq!(*rules, 5, "{good:?}");
            assert_eq!(path, &policy.to_string_lossy(), "{good:?}");
        }
        PolicyReload::Failed { .. } => panic!("valid reload failed: {good:?}"),
    }
    assert_eq!(after_good, Outcome::Reply, "v2 (9001 allowed) not in force");
    match &bad {
        PolicyReload::Failed { code, message } => {
            assert_ne!(*code, Some(0));
            assert!(
                message.contains(&format!("{fname}:{bad_line}")),
                "the message must name {fname}:{bad_line}: {message}"
            );
        }
        PolicyReload::Loaded { .. } => panic!("invalid policy accepted: {bad:?}"),
    }
    assert_eq!(still_9001, Outcome::Reply, "the old policy (v2) is gone");
    assert_eq!(not_9002, Outcome::Timeout, "the invalid policy took effect");

    let r = iperf.expect("iperf3 through the reloads");
    let rates = tools::iperf_intervals(&r.raw);
    eprintln!(
        "iperf3 {:.0} Mbit/s, {} retransmits, intervals (Mbit/s): {:?}",
        r.bits_per_second / 1e6,
        r.retransmits,
        rates.iter().map(|b| (b / 1e6) as u64).collect::<Vec<_>>()
    );
    assert!(rates.len() >= 9, "{rates:?}");
    let slow = tools::slow_intervals(&r.raw, 0.1);
    assert!(
        slow.is_empty(),
        "intervals {slow:?} below 10 % of the median: {rates:?}"
    );
    f.still_running();
}

#[test]
fn conn_flush_empties_the_table() {
    require_root!();
    let mut f = fixture("fwflush", BASE_POLICY);
    let (client, server) = (f.lab.client(), f.lab.server());
    let _echo = ToolServer::udp_echo(server, addr::SERVER, 9000).unwrap();
    let _web = ToolServer::tcp_echo(server, addr::SERVER, 80).unwrap();
    for i in 0..3 {
        let u = tools::udp_probe(
            client,
            addr::SERVER,
            9000,
            &format!("flush-{i}"),
            2,
            secs(1),
        )
        .unwrap();
        assert_eq!(u.outcome, Outcome::Reply);
    }
    // A TCP connection open during the flush (a closed one may already be
    // gone from the table).
    let held = tools::hold_tcp(client, addr::SERVER, 80, secs(4)).unwrap();
    let ours = ConnFilter {
        src: Some(addr::CLIENT.into()),
        ..Default::default()
    };
    let before = f.node.conn_list(&ours).unwrap();
    eprintln!("before flush: {}", before.raw);
    assert!(before.total >= 4, "{}", before.raw);
    assert!(
        !before
            .find(
                "tcp",
                addr::CLIENT,
                Some(held.sport),
                addr::SERVER,
                Some(80)
            )
            .is_empty(),
        "{}",
        before.raw
    );
    let n = f.node.conn_flush().expect("tandemctl conn flush");
    assert!(n >= before.total, "flushed {n} of {}", before.total);
    let after = f.node.conn_list(&ours).unwrap();
    assert_eq!(after.total, 0, "{}", after.raw);
    assert!(after.conns.is_empty(), "{}", after.raw);
    // New flows are tracked again.
    let u = tools::udp_probe(client, addr::SERVER, 9000, "again", 2, secs(1)).unwrap();
    assert_eq!(u.outcome, Outcome::Reply);
    let again = f.node.conn_list(&ours).unwrap();
    assert!(
        !again
            .find("udp", addr::CLIENT, Some(u.sport), addr::SERVER, Some(9000))
            .is_empty(),
        "{}",
        again.raw
    );
    f.still_running();
}
