//! Self-test of the host tools of `tests/scripts/` through the Linux-router
//! lab (no tandemd): they are proven here independently of the firewall
//! they are meant to test. Also unit tests of the firewall accessors'
//! parsers (no root needed).

use std::time::Duration;

use serde_json::json;
use tandem_tests::firewall::{self, drop_count, firewall_counter, PolicyReload};
use tandem_tests::host;
use tandem_tests::lab::addr;
use tandem_tests::node::NodeConfig;
use tandem_tests::tools::{self, InjectMode, Outcome, Sniffer, ToolServer};
use tandem_tests::{heavy_lock, require_root, Lab, Netns};

/// Adds nftables rules to the Linux router's forward path: `rules` are
/// argument lists of `nft add rule inet lab fwd ...`.
fn router_drops(fw: &Netns, rules: &[&[&str]]) {
    fw.run(&["nft", "add", "table", "inet", "lab"]).unwrap();
    fw.run(&[
        "nft", "add", "chain", "inet", "lab", "labfwd", "{", "type", "filter", "hook", "forward",
        "priority", "0", ";", "}",
    ])
    .unwrap();
    for r in rules {
        let mut argv = vec!["nft", "add", "rule", "inet", "lab", "labfwd"];
        argv.extend_from_slice(r);
        fw.run(&argv).unwrap();
    }
}

fn router_lab(tag: &str) -> Lab {
    let lab = Lab::linux_router(tag).expect("building the Linux-router lab");
    host::wait_for_ping(lab.client(), addr::SERVER, Duration::from_secs(10))
        .expect("no ping through the Linux router");
    lab
}

#[test]
fn udp_echo_and_probe_outcomes() {
    require_root!();
    let lab = router_lab("tsudp");
    let echo = ToolServer::udp_echo(lab.server(), addr::SERVER, 9000).unwrap();
    let p = tools::udp_probe(
        lab.client(),
        addr::SERVER,
        9000,
        "hello-udp",
        3,
        Duration::from_secs(1),
    )
    .unwrap();
    eprintln!("reply probe: {:?}", p.raw);
    assert_eq!(p.outcome, Outcome::Reply);
    assert_eq!(p.text.as_deref(), Some("hello-udp"));
    assert_eq!(p.src, addr::CLIENT);
    assert!(p.sport > 0);
    assert!(echo.saw("hello-udp"));
    assert_eq!(echo.peers(), vec![addr::CLIENT.to_string()]);
    // No listener: the server itself answers ICMP port unreachable.
    let p = tools::udp_probe(
        lab.client(),
        addr::SERVER,
        7777,
        "x",
        2,
        Duration::from_secs(1),
    )
    .unwrap();
    assert_eq!(p.outcome, Outcome::Refused, "{:?}", p.raw);
    assert!(p.seconds < 1.0, "{:?}", p.raw);
    // Silently dropped on the way: a timeout, not a refusal.
    router_drops(lab.fw(1), &[&["udp", "dport", "9999", "drop"]]);
    let p = tools::udp_probe(
        lab.client(),
        addr::SERVER,
        9999,
        "x",
        2,
        Duration::from_millis(700),
    )
    .unwrap();
    assert_eq!(p.outcome, Outcome::Timeout, "{:?}", p.raw);
    assert!(p.seconds >= 1.3, "{:?}", p.raw);
}

#[test]
fn tcp_probe_outcomes_and_held_connection() {
    require_root!();
    let lab = router_lab("tstcp");
    let echo = ToolServer::tcp_echo(lab.server(), addr::SERVER, 5201).unwrap();
    let p = tools::tcp_probe(
        lab.client(),
        addr::SERVER,
        5201,
        Duration::from_secs(2),
        Some("ping-tcp"),
    )
    .unwrap();
    eprintln!("connect probe: {:?}", p.raw);
    assert_eq!(p.outcome, Outcome::Connected);
    assert_eq!(p.reply.as_deref(), Some("ping-tcp"));
    assert!(p.sport.is_some());
    assert!(echo.saw("ping-tcp"));
    // Closed port: the server's reset, at once.
    let p = tools::tcp_probe(lab.client(), addr::SERVER, 23, Duration::from_secs(2), None).unwrap();
    assert_eq!(p.outcome, Outcome::Refused, "{:?}", p.raw);
    assert!(p.seconds < 1.0, "{:?}", p.raw);
    // Dropped on the way: a timeout after the connect timeout.
    router_drops(lab.fw(1), &[&["tcp", "dport", "22", "drop"]]);
    let p = tools::tcp_probe(lab.client(), addr::SERVER, 22, Duration::from_secs(2), None).unwrap();
    assert_eq!(p.outcome, Outcome::Timeout, "{:?}", p.raw);
    assert!(p.seconds >= 1.9 && p.seconds < 4.0, "{:?}", p.raw);
    // A held connection is visible, with its port, while it is held.
    let held = tools::hold_tcp(lab.client(), addr::SERVER, 5201, Duration::from_secs(3)).unwrap();
    assert_eq!(held.src, addr::CLIENT);
    let ss = lab
        .client()
        .run(&["ss", "-Htn", "state", "established"])
        .unwrap();
    assert!(
        ss.contains(&format!("{}:{}", addr::CLIENT, held.sport)),
        "{ss}"
    );
}

#[test]
fn peer_addr_server_sees_the_source_and_a_masquerade() {
    require_root!();
    let lab = router_lab("tspeer");
    let srv = ToolServer::peer_addr(lab.server(), addr::SERVER, 8081).unwrap();
    let (code, body) = tools::curl_body(
        lab.client(),
        addr::SERVER,
        8081,
        "/who",
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(code, Some(0), "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["peer"], addr::CLIENT);
    // With a masquerade on the router, the server sees the router's
    // address (what tandem's SNAT test expects of tandem).
    let fw = lab.fw(1);
    fw.run(&["nft", "add", "table", "ip", "labnat"]).unwrap();
    fw.run(&[
        "nft",
        "add",
        "chain",
        "ip",
        "labnat",
        "post",
        "{",
        "type",
        "nat",
        "hook",
        "postrouting",
        "priority",
        "100",
        ";",
        "}",
    ])
    .unwrap();
    fw.run(&[
        "nft",
        "add",
        "rule",
        "ip",
        "labnat",
        "post",
        "oifname",
        "fw-out",
        "tcp",
        "dport",
        "8081",
        "masquerade",
    ])
    .unwrap();
    let (code, body) = tools::curl_body(
        lab.client(),
        addr::SERVER,
        8081,
        "/who",
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(code, Some(0), "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["peer"], addr::WAN_GW);
    assert_eq!(
        srv.peers(),
        vec![addr::CLIENT.to_string(), addr::WAN_GW.to_string()]
    );
}

#[test]
fn out_of_window_segment_crosses_a_plain_router_but_not_the_server_stack() {
    require_root!();
    let lab = router_lab("tsoow");
    let echo = ToolServer::tcp_echo(lab.server(), addr::SERVER, 5201).unwrap();
    let marker = "OOW-MARKER-5a17";
    let sniff = Sniffer::start(
        lab.server(),
        "eth0",
        marker,
        Some(5201),
        Duration::from_secs(4),
    )
    .unwrap();
    let r = tools::tcp_inject(
        lab.client(),
        "eth0",
        addr::SERVER,
        5201,
        &InjectMode::Window { offset: 1 << 30 },
        marker,
        2,
    )
    .unwrap();
    eprintln!("inject: {}", r.raw);
    assert_eq!(r.error, None);
    assert!(r.hello_ok && r.after_ok, "{}", r.raw);
    assert_eq!(r.injected, 2);
    let s = sniff.finish().unwrap();
    eprintln!("sniffed: {s:?}");
    // No firewall: both segments arrive on the server's wire...
    assert_eq!(s.matched, 2, "{s:?}");
    assert_eq!(s.matches[0]["sport"], r.sport);
    assert_eq!(s.matches[0]["flags"], "PA");
    // ...but the server's TCP drops them (out of window).
    assert!(!echo.saw(marker));
    assert!(echo.saw("hello-after"));
}

#[test]
fn in_window_segment_reaches_the_application() {
    // Proves the injector's sequence numbers and checksums are right: with
    // offset 0 the server's TCP accepts the crafted data.
    require_root!();
    let lab = router_lab("tsinw");
    let echo = ToolServer::tcp_echo(lab.server(), addr::SERVER, 5201).unwrap();
    let marker = "INW-MARKER-77c3";
    let r = tools::tcp_inject(
        lab.client(),
        "eth0",
        addr::SERVER,
        5201,
        &InjectMode::Window { offset: 0 },
        marker,
        1,
    )
    .unwrap();
    eprintln!("inject: {}", r.raw);
    assert!(r.hello_ok && r.injected == 1, "{}", r.raw);
    // The server's application received the crafted bytes (bounded wait).
    let seen =
        tandem_tests::cmd::poll_until(Duration::from_secs(3), Duration::from_millis(50), || {
            echo.saw(marker).then_some(())
        });
    assert!(seen.is_some(), "events: {:?}", echo.events());
}

#[test]
fn bare_ack_segment_crosses_a_plain_router() {
    require_root!();
    let lab = router_lab("tsbare");
    let _echo = ToolServer::tcp_echo(lab.server(), addr::SERVER, 80).unwrap();
    let marker = "BARE-MARKER-9d01";
    let sniff = Sniffer::start(
        lab.server(),
        "eth0",
        marker,
        Some(80),
        Duration::from_secs(3),
    )
    .unwrap();
    let r = tools::tcp_inject(
        lab.client(),
        "eth0",
        addr::SERVER,
        80,
        &InjectMode::Bare { sport: 47123 },
        marker,
        3,
    )
    .unwrap();
    assert_eq!((r.injected, r.sport), (3, 47123), "{}", r.raw);
    let s = sniff.finish().unwrap();
    assert_eq!(s.matched, 3, "{s:?}");
    assert_eq!(s.matches[0]["src"], addr::CLIENT);
    assert_eq!(s.matches[0]["dport"], 80);
}

#[test]
fn tools_refuse_addresses_outside_the_lab() {
    require_root!();
    let lab = Lab::bridge_only("tsrefuse").unwrap();
    // Checked in Rust...
    assert!(tools::udp_probe(
        lab.client(),
        "203.0.113.9",
        9,
        "x",
        1,
        Duration::from_secs(1)
    )
    .is_err());
    // ...and by the scripts themselves.
    for (script, args) in [
        ("udp_probe.py", vec!["--dst", "8.8.8.8", "--port", "53"]),
        ("tcp_probe.py", vec!["--dst", "1.1.1.1", "--port", "80"]),
        ("tcp_inject.py", vec!["--dst", "192.0.2.1", "--port", "80"]),
        ("udp_echo.py", vec!["--bind", "0.0.0.0", "--port", "9000"]),
    ] {
        let args: Vec<String> = args.into_iter().map(str::to_string).collect();
        let argv = tools::tool_argv(script, &args).unwrap();
        let o = lab
            .client()
            .exec_timeout(&argv, Duration::from_secs(10))
            .unwrap();
        assert!(!o.status.success(), "{script} accepted {args:?}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("refusing"),
            "{script}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

#[test]
fn iperf_interval_helpers_on_a_real_run() {
    require_root!();
    let _lock = heavy_lock();
    let lab = router_lab("tsiperf");
    let _srv = host::IperfServer::start(lab.server(), addr::SERVER, 5201).unwrap();
    let r = host::iperf_client(lab.client(), addr::SERVER, 5201, 3, &[]).unwrap();
    let rates = tools::iperf_intervals(&r.raw);
    eprintln!(
        "intervals (Mbit/s): {:?}",
        rates.iter().map(|b| (b / 1e6) as u64).collect::<Vec<_>>()
    );
    assert!(rates.len() >= 3, "{rates:?}");
    assert!(tools::median(&rates) > 0.0);
    eprintln!("slow intervals: {:?}", tools::slow_intervals(&r.raw, 0.1));
}

// ---- parsers (no root) ----

#[test]
fn interval_math() {
    assert_eq!(tools::median(&[]), 0.0);
    assert_eq!(tools::median(&[3.0, 1.0, 2.0]), 2.0);
    assert_eq!(tools::median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    let raw = json!({"intervals": [
        {"sum": {"bits_per_second": 100.0, "seconds": 1.0}},
        {"sum": {"bits_per_second": 5.0, "seconds": 1.0}},
        {"sum": {"bits_per_second": 110.0, "seconds": 1.0}},
        {"sum": {"bits_per_second": 1.0, "seconds": 0.1}},
    ]});
    assert_eq!(tools::iperf_intervals(&raw).len(), 4);
    assert_eq!(tools::slow_intervals(&raw, 0.1), vec![1]);
    let lines = tools::json_lines("noise\n{\"event\":\"ready\"}\n[1]\n{\"result\":1}\n");
    assert_eq!(lines.len(), 2);
}

#[test]
fn firewall_accessors_parse_the_documented_shapes() {
    let v = json!({"result": "connections", "total": 2, "connections": [
        {"proto": "tcp", "src": "198.18.1.10", "sport": 40000, "dst": "198.18.2.10",
         "dport": 80, "state": "established", "nat": null, "rule": 0, "sync": true,
         "larval": false},
        {"proto": "icmp", "src": "198.18.1.10", "dst": "198.18.2.10", "state": "reply",
         "nat": {"kind": "source", "addr": "198.18.2.1", "port": 40001}, "rule": 2},
    ]});
    let l = firewall::parse_conn_list(&v).unwrap();
    assert_eq!(l.total, 2);
    assert_eq!(
        l.find("tcp", "198.18.1.10", Some(40000), "198.18.2.10", Some(80))
            .len(),
        1
    );
    assert_eq!(l.conns[0].nat, None);
    assert_eq!(l.conns[0].rule, Some(0));
    assert_eq!(l.conns[1].nat_kind(), Some("source"));
    assert_eq!(l.conns[1].nat_addr(), Some("198.18.2.1"));
    assert_eq!(l.conns[1].nat_port(), Some(40001));
    assert_eq!(l.conns[0].nat_kind(), None);
    assert_eq!(
        l.find("ICMP", "198.18.1.10", None, "198.18.2.10", None)
            .len(),
        1
    );
    assert!(firewall::parse_conn_list(&json!({"result": "error"})).is_err());

    match firewall::parse_policy_reload(
        Some(0),
        r#"{"result":"policy","rules":7,"path":"/x/p.ron"}"#,
        "",
    )
    .unwrap()
    {
        PolicyReload::Loaded { rules, path } => assert_eq!((rules, path.as_str()), (7, "/x/p.ron")),
        other => panic!("{other:?}"),
    }
    match firewall::parse_policy_reload(
        Some(1),
        "",
        r#"{"result":"error","message":"/x/p.ron:5:12: unknown variant"}"#,
    )
    .unwrap()
    {
        PolicyReload::Failed { code, message } => {
            assert_eq!(code, Some(1));
            assert!(message.starts_with("/x/p.ron:5:"));
        }
        other => panic!("{other:?}"),
    }
    let stats = json!({"drops_total": {"policy_block": 4}, "firewall": {"connections": 3}});
    assert_eq!(drop_count(&stats, "policy_block"), 4);
    assert_eq!(drop_count(&stats, "policy_reject"), 0);
    assert_eq!(firewall_counter(&stats, "connections"), Some(3));
    assert_eq!(firewall_counter(&stats, "created"), None);
}

#[test]
fn node_config_renders_the_firewall_section() {
    let cfg = NodeConfig::lab_default("fw1", 1, "/tmp/s.sock".as_ref(), "tl-x-fw1");
    assert!(!cfg.to_ron().contains("firewall"));
    let ron = cfg.with_policy("/tmp/p.ron".as_ref()).to_ron();
    assert!(
        ron.contains("firewall: (policy: Some(\"/tmp/p.ron\"), connections: 65536),"),
        "{ron}"
    );
}
