//! Self-test of the lab itself (no tandemd needed): topologies, host
//! helpers, teardown (also on panic) and stale cleanup.

use std::process::Command;
use std::time::{Duration, Instant};

use tandem_tests::host::{self, HttpServer, IperfServer};
use tandem_tests::lab::{self, addr, list_namespaces, Lab};
use tandem_tests::link::{self, check_lab_addr};
use tandem_tests::{cleanup_stale, heavy_lock, require_root, LabError, Netns};

fn assert_gone(names: &[String]) {
    let now = list_namespaces();
    for n in names {
        assert!(
            !now.contains(n),
            "namespace {n} still exists after teardown: {now:?}"
        );
    }
}

#[test]
fn addresses_outside_the_lab_are_refused() {
    assert!(check_lab_addr("198.18.1.10").is_ok());
    assert!(check_lab_addr("198.19.70.2/30").is_ok());
    for bad in [
        "8.8.8.8",
        "198.20.0.1",
        "203.0.113.1/24",
        "127.0.0.1",
        "::1",
        "host",
    ] {
        assert!(
            matches!(check_lab_addr(bad), Err(LabError::ForbiddenAddress(_))),
            "{bad} accepted"
        );
    }
}

#[test]
fn parsers() {
    let p = host::parse_ping(
        "PING 198.18.2.10 (198.18.2.10) 56(84) bytes of data.\n\n--- 198.18.2.10 ping statistics ---\n\
         5 packets transmitted, 4 received, 20% packet loss, time 812ms\n\
         rtt min/avg/max/mdev = 0.040/0.052/0.071/0.011 ms\n",
        Some(1),
    )
    .unwrap();
    assert_eq!((p.transmitted, p.received), (5, 4));
    assert_eq!(p.loss_pct, 20.0);
    assert_eq!(p.rtt_avg_ms, Some(0.052));
    let p = host::parse_ping(
        "3 packets transmitted, 0 received, +3 errors, 100% packet loss, time 2030ms\n",
        Some(1),
    )
    .unwrap();
    assert_eq!((p.received, p.loss_pct, p.rtt_avg_ms), (0, 100.0, None));
    let i = host::parse_iperf(
        r#"{"end":{"sum_sent":{"bits_per_second":2e8,"retransmits":7},
            "sum_received":{"bits_per_second":1.9e8,"seconds":5.0}}}"#,
    )
    .unwrap();
    assert_eq!((i.bits_per_second, i.retransmits), (1.9e8, 7));
    assert!(host::parse_iperf(r#"{"error":"unable to connect"}"#).is_err());
    assert_eq!(lab::owner_pid("tl-fwd-1234-7-client"), Some(1234));
    assert_eq!(lab::owner_pid("other-1234-7"), None);
}

#[test]
fn linux_router_lab_pings_and_tears_down() {
    require_root!();
    let names;
    {
        let lab = Lab::linux_router("selfrt").unwrap();
        names = lab.namespace_names();
        assert_eq!(names.len(), 4, "{names:?}");
        let now = list_namespaces();
        assert!(names.iter().all(|n| now.contains(n)));
        let d = host::wait_for_ping(lab.client(), addr::SERVER, Duration::from_secs(10)).unwrap();
        eprintln!("first reply through the Linux router after {d:?}");
        let p = host::ping(lab.client(), addr::SERVER, 5, Duration::from_secs(5)).unwrap();
        assert_eq!((p.transmitted, p.received), (5, 5), "{}", p.output);
        assert_eq!(p.loss_pct, 0.0);
        // The gateway answers too, and the hosts cannot reach anything else.
        host::ping(lab.client(), addr::LAN_GW, 1, Duration::from_secs(3)).unwrap();
        assert!(host::ping(lab.client(), "8.8.8.8", 1, Duration::from_secs(1)).is_err());
        // Kernel counters are readable; a cut switch port stops the traffic.
        let st = link::link_stats(lab.fw(1), "fw-in").unwrap();
        assert!(st.rx_packets >= 5, "{st:?}");
        lab.set_fw_port(1, "in", false).unwrap();
        let p = host::ping(lab.client(), addr::SERVER, 2, Duration::from_secs(2)).unwrap();
        assert_eq!(p.received, 0);
        assert!(!link::carrier(lab.fw(1), "fw-in").unwrap());
        lab.set_fw_port(1, "in", true).unwrap();
        host::wait_for_ping(lab.client(), addr::SERVER, Duration::from_secs(10)).unwrap();
    }
    assert_gone(&names);
}

#[test]
fn bridge_only_lab_pings() {
    require_root!();
    let lab = Lab::bridge_only("selfbr").unwrap();
    assert_eq!(lab.server_ip(), addr::SERVER_SAME_LAN);
    host::wait_for_ping(lab.client(), lab.server_ip(), Duration::from_secs(10)).unwrap();
    let p = host::ping(lab.client(), lab.server_ip(), 3, Duration::from_secs(5)).unwrap();
    assert_eq!(p.received, 3);
    let names = lab.namespace_names();
    drop(lab);
    assert_gone(&names);
}

#[test]
fn two_node_lab_has_ha_links_and_silent_legs() {
    require_root!();
    let lab = Lab::two_nodes("self2n").unwrap();
    assert_eq!(lab.namespace_names().len(), 5);
    for (from, to) in [
        (1, addr::HA_MAIN_2),
        (1, addr::HA_BACKUP_2),
        (2, addr::HA_MAIN_1),
    ] {
        let p = host::ping(lab.fw(from), to, 2, Duration::from_secs(4)).unwrap();
        assert!(p.received >= 1, "fw{from} -> {to}: {}", p.output);
    }
    for i in [1, 2] {
        let a = lab
            .fw(i)
            .run(&["ip", "-4", "-o", "addr", "show", "dev", "fw-in"])
            .unwrap();
        assert!(a.trim().is_empty(), "fw{i}/fw-in has a kernel address: {a}");
        assert!(link::carrier(lab.fw(i), "fw-out").unwrap());
    }
    // Without a firewall running, the gateway does not answer.
    let p = host::ping(lab.client(), addr::LAN_GW, 1, Duration::from_secs(1)).unwrap();
    assert_eq!(p.received, 0);
}

#[test]
fn spawned_process_has_its_real_pid_and_is_stopped() {
    require_root!();
    let lab = Lab::bridge_only("selfproc").unwrap();
    let mut p = lab.client().spawn("sleeper", &["sleep", "30"]).unwrap();
    let pid = p.pid();
    // `ip` and `setsid` exec in place: the pid becomes sleep's (bounded wait).
    let t = Instant::now();
    let mut comm = String::new();
    while t.elapsed() < Duration::from_secs(3) {
        comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
        if comm.trim() == "sleep" {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(comm.trim(), "sleep");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let pgid: u32 = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(pgid, pid, "the program leads its own process group");
    assert!(lab.client().pids().contains(&pid));
    let t = Instant::now();
    let st = p.stop().expect("stopped");
    assert!(t.elapsed() < Duration::from_secs(2), "SIGTERM was enough");
    assert!(!st.success());
    // exec has a time limit that kills the command.
    let t = Instant::now();
    let e = lab
        .client()
        .exec_timeout(&["sleep", "10"], Duration::from_millis(300));
    assert!(
        matches!(e, Err(LabError::Timeout { .. })),
        "{:?}",
        e.map(|o| o.status)
    );
    assert!(t.elapsed() < Duration::from_secs(3));
    // Output of a process is captured to files.
    let mut echo = lab
        .server()
        .spawn("echo", &["sh", "-c", "echo hello; echo oops >&2"])
        .unwrap();
    echo.wait_timeout(Duration::from_secs(5)).expect("exits");
    assert_eq!(echo.stdout().trim(), "hello");
    assert_eq!(echo.stderr().trim(), "oops");
}

#[test]
fn a_panicking_test_still_tears_down() {
    require_root!();
    let (tx, rx) = std::sync::mpsc::channel();
    let r = std::thread::spawn(move || {
        let lab = Lab::single_node("selfpanic").unwrap();
        // A process left running, not owned by any Proc handle.
        let mut c = lab.server().command(&["sleep", "60"]);
        let child = c.spawn().unwrap();
        tx.send((lab.namespace_names(), lab.dir().to_path_buf(), child.id()))
            .unwrap();
        std::mem::forget(child);
        panic!("deliberate panic inside a lab");
    })
    .join();
    assert!(r.is_err(), "the thread should have panicked");
    let (names, dir, pid) = rx.recv().unwrap();
    assert_gone(&names);
    // The sleeper was killed (a zombie of ours at most).
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        state.is_empty() || state.contains(") Z"),
        "sleep still runs: {state}"
    );
    // The temp dir is kept for post-mortem after a panic; remove it now.
    assert!(dir.exists());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn cleanup_stale_removes_leftovers_of_dead_runs_only() {
    require_root!();
    // pid_max is at most 4194304: this owner cannot be alive.
    let dead = format!("{}stale-4194999-{}", lab::LAB_MARK, std::process::id());
    let logs = std::env::temp_dir().join(format!("{dead}-logs"));
    let a = Netns::create(&format!("{dead}-a"), &logs).unwrap();
    let b = Netns::create(&format!("{dead}-b"), &logs).unwrap();
    link::veth(&a, "x", &b, "y").unwrap();
    let mut sleeper = Command::new("ip")
        .args(["netns", "exec", a.name(), "sleep", "30"])
        .spawn()
        .unwrap();
    let dir = std::path::Path::new(lab::LAB_ROOT).join(&dead);
    std::fs::create_dir_all(&dir).unwrap();
    // Simulate a killed run: no destructor runs.
    std::mem::forget(a);
    std::mem::forget(b);
    // A live lab with the same tag is left alone.
    let live = Lab::bridge_only("stale").unwrap();

    let removed = cleanup_stale(&format!("{}stale-", lab::LAB_MARK));
    assert!(removed.contains(&format!("{dead}-a")), "{removed:?}");
    assert!(removed.contains(&format!("{dead}-b")), "{removed:?}");
    assert!(
        removed.iter().all(|n| !n.starts_with(live.prefix())),
        "{removed:?}"
    );
    assert_gone(&removed);
    let now = list_namespaces();
    assert!(live.namespace_names().iter().all(|n| now.contains(n)));
    assert!(!dir.exists());
    let t = Instant::now();
    while sleeper.try_wait().unwrap().is_none() && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        sleeper.try_wait().unwrap().is_some(),
        "process in stale namespace not killed"
    );
    let _ = std::fs::remove_dir_all(logs);
}

#[test]
fn host_helpers_through_the_linux_router() {
    require_root!();
    let _heavy = heavy_lock();
    let lab = Lab::linux_router("selfhost").unwrap();
    host::wait_for_ping(lab.client(), addr::SERVER, Duration::from_secs(10)).unwrap();
    let http = HttpServer::start(lab.server(), addr::SERVER, 8080, lab.dir(), 20).unwrap();
    assert_eq!(http.size, 20 * 1024 * 1024);
    let out = lab.dir().join("dl.bin");
    let name = http
        .file
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let c = host::curl_download(
        lab.client(),
        addr::SERVER,
        8080,
        &name,
        &out,
        Duration::from_secs(60),
    )
    .unwrap();
    assert!(c.ok(), "{c:?}");
    assert_eq!(c.bytes, http.size);
    assert_eq!(host::sha256_file(&out).unwrap(), http.sha256);
    eprintln!(
        "curl 20 MB through the Linux router: {:.0} Mbit/s",
        c.bits_per_second() / 1e6
    );
    let _srv = IperfServer::start(lab.server(), addr::SERVER, 5201).unwrap();
    let r = host::iperf_client(lab.client(), addr::SERVER, 5201, 2, &[]).unwrap();
    eprintln!(
        "iperf3 2 s through the Linux router: {:.0} Mbit/s",
        r.bits_per_second / 1e6
    );
    assert!(r.bits_per_second > 0.0);
}

#[test]
fn node_config_renders_the_lab_shape() {
    let c = tandem_tests::NodeConfig::lab_default(
        "fw1",
        1,
        std::path::Path::new("/tmp/tandem-lab/x/fw1.sock"),
        "tl-x-1-0-fw1",
    );
    let ron = c.to_ron();
    for want in [
        r#"node: (name: "fw1", serial: "TDLAB0001"),"#,
        r#"control: (socket: "/tmp/tandem-lab/x/fw1.sock", event_log: Some("/tmp/tandem-lab/x/fw1.log"), state_dir: Some("/tmp/tandem-lab/x/state"), identity: Some("/tmp/tandem-lab/x/fw1.identity.ron")),"#,
        r#"eal: (file_prefix: Some("tl-x-1-0-fw1"), lcores: Some("0@(0-1)"), no_huge: true, memory_mb: Some(256)),"#,
        r#"dataplane: (workers: [(cpu: None)], poll_mode: Adaptive),"#,
        r#"(name: "in", device: Vdev("net_af_packet0,iface=fw-in,framecnt=8192"), addresses: ["198.18.1.1/24"]),"#,
        r#"(name: "out", device: Vdev("net_af_packet1,iface=fw-out,framecnt=8192"), addresses: ["198.18.2.1/24"]),"#,
        "routes: [],",
    ] {
        assert!(ron.contains(want), "missing {want}\n{ron}");
    }
}
