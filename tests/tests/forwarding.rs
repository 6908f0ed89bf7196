//! Forwarding through one real tandemd (single-node lab). Needs the
//! workspace binaries: `cargo build --workspace --bins` first (or
//! `TANDEM_BIN_DIR`). The scenarios run one at a time (heavy lock).

use std::sync::MutexGuard;
use std::time::Duration;

use tandem_tests::host::{self, HttpServer, IperfServer};
use tandem_tests::lab::addr;
use tandem_tests::node::{self, forwarded_total, port_counters};
use tandem_tests::{heavy_lock, require_root, Lab, Node};

/// A single-node lab with a ready tandemd. Drop order: node, lab, lock.
struct Fixture {
    node: Node,
    lab: Lab,
    _lock: MutexGuard<'static, ()>,
}

fn fixture(tag: &str) -> Fixture {
    let lock = heavy_lock();
    if let Err(e) = node::find_bin("tandemd").and(node::find_bin("tandemctl")) {
        panic!("{e}");
    }
    let lab = Lab::single_node(tag).expect("building the single-node lab");
    let mut node = lab.start_node(1).expect("starting tandemd");
    let status = node
        .wait_ready(Duration::from_secs(30))
        .expect("tandemd's control socket did not answer");
    eprintln!("tandemd ready: {status}");
    Fixture {
        node,
        lab,
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
}

#[test]
fn client_pings_the_gateway() {
    require_root!();
    let mut f = fixture("fwdgw");
    let d = host::wait_for_ping(f.lab.client(), addr::LAN_GW, Duration::from_secs(20))
        .expect("no reply from tandemd's LAN address");
    eprintln!("first reply from {} after {d:?}", addr::LAN_GW);
    let p = host::ping(f.lab.client(), addr::LAN_GW, 5, Duration::from_secs(6)).unwrap();
    assert_eq!((p.transmitted, p.received), (5, 5), "{}", p.output);
    assert_eq!(p.loss_pct, 0.0);
    f.still_running();
}

#[test]
fn client_pings_the_server_through_the_node() {
    require_root!();
    let mut f = fixture("fwdping");
    host::wait_for_ping(f.lab.client(), addr::SERVER, Duration::from_secs(20))
        .expect("no reply from the server through tandemd");
    let p = host::ping(f.lab.client(), addr::SERVER, 5, Duration::from_secs(6)).unwrap();
    assert_eq!((p.transmitted, p.received), (5, 5), "{}", p.output);
    // The server reaches the client back through its own gateway too.
    let p = host::ping(f.lab.server(), addr::CLIENT, 3, Duration::from_secs(5)).unwrap();
    assert_eq!(p.received, 3, "{}", p.output);
    f.still_running();
}

#[test]
fn client_downloads_20_mb_over_http() {
    require_root!();
    let mut f = fixture("fwdhttp");
    host::wait_for_ping(f.lab.client(), addr::SERVER, Duration::from_secs(20)).unwrap();
    let http = HttpServer::start(f.lab.server(), addr::SERVER, 8080, f.lab.dir(), 20).unwrap();
    let out = f.lab.dir().join("download.bin");
    let name = http
        .file
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let c = host::curl_download(
        f.lab.client(),
        addr::SERVER,
        8080,
        &name,
        &out,
        Duration::from_secs(90),
    )
    .unwrap();
    assert!(c.ok(), "curl failed: {c:?}");
    assert_eq!(c.bytes, http.size);
    assert_eq!(
        host::sha256_file(&out).unwrap(),
        http.sha256,
        "content differs"
    );
    eprintln!(
        "20 MB through tandemd in {:.2} s ({:.0} Mbit/s)",
        c.seconds,
        c.bits_per_second() / 1e6
    );
    f.still_running();
}

#[test]
fn iperf3_for_5_seconds() {
    require_root!();
    let mut f = fixture("fwdiperf");
    host::wait_for_ping(f.lab.client(), addr::SERVER, Duration::from_secs(20)).unwrap();
    let _srv = IperfServer::start(f.lab.server(), addr::SERVER, 5201).unwrap();
    let r = host::iperf_client(f.lab.client(), addr::SERVER, 5201, 5, &[]).unwrap();
    eprintln!(
        "iperf3 through tandemd: {:.1} Mbit/s, {} retransmits",
        r.bits_per_second / 1e6,
        r.retransmits
    );
    assert!(r.bits_per_second > 0.0);
    f.still_running();
}

#[test]
fn stats_count_forwarded_packets() {
    require_root!();
    let mut f = fixture("fwdstats");
    let before = f.node.stats().expect("tandemctl stats");
    host::wait_for_ping(f.lab.client(), addr::SERVER, Duration::from_secs(20)).unwrap();
    let p = host::ping(f.lab.client(), addr::SERVER, 5, Duration::from_secs(6)).unwrap();
    assert!(p.received > 0, "{}", p.output);
    let after = f.node.stats().expect("tandemctl stats");
    eprintln!("stats after: {after}");
    assert!(forwarded_total(&after) > 0, "nothing forwarded: {after}");
    assert!(forwarded_total(&after) > forwarded_total(&before));
    for port in ["in", "out"] {
        let (rx0, tx0) = port_counters(&before, port).unwrap_or((0, 0));
        let (rx1, tx1) = port_counters(&after, port)
            .unwrap_or_else(|| panic!("no port {port:?} in stats: {after}"));
        assert!(
            rx1 > rx0,
            "port {port}: rx_packets did not move ({rx0} -> {rx1})"
        );
        assert!(
            tx1 > tx0,
            "port {port}: tx_packets did not move ({tx0} -> {tx1})"
        );
    }
    f.still_running();
}

/// `tandemctl identity`: the hardware facts of the lab's identity file
/// and the running firmware, as text and as JSON.
#[test]
fn tandemctl_identity_shows_the_identity_file_and_the_firmware() {
    require_root!();
    let mut f = fixture("fwdident");
    let v = f.node.ctl(&["identity"]).expect("tandemctl identity");
    assert_eq!(v["result"], "identity", "{v}");
    assert_eq!(v["serial"], "TDLAB0001", "{v}");
    assert_eq!(v["model"], "TD-LAB", "{v}");
    assert_eq!(v["licence"], "master", "{v}");
    assert_eq!(v["ports"], 2, "{v}");
    assert_eq!(v["firmware"], env!("CARGO_PKG_VERSION"), "{v}");
    assert!(
        v["file"].as_str().unwrap().ends_with("fw1.identity.ron"),
        "{v}"
    );
    let text = f.node.ctl_text(&["identity"]).expect("tandemctl identity");
    for line in [
        "serial    TDLAB0001",
        "model     TD-LAB",
        "licence   master",
        "ports     2",
    ] {
        assert!(text.contains(line), "{line:?} in:\n{text}");
    }
    f.still_running();
}
