//! Planned swaps lose no packet (issue 14, make-before-break): a steady
//! 1,000 datagrams a second UDP stream from the client to an echo server
//! behind the cluster, each datagram numbered, runs while
//! - the operator forces the active passive (`tandemctl hapassive`),
//! - then the new active stops cleanly (SIGTERM, as systemd or an upgrade
//!   does);
//!
//! and not one datagram or echo is missing. The old active keeps
//! forwarding the connections it has until the peer has been active for
//! a while (its log says "draining" and when the drain ended, with what
//! it forwarded meanwhile), so nothing depends on the neighbours moving
//! at the very moment of the swap.
//!
//! Needs root (network namespaces): fails, not skips, without it.

use std::thread;
use std::time::Duration;

use serde_json::Value;
use tandem_tests::cluster;
use tandem_tests::lab::{addr, Lab};
use tandem_tests::tools::{self, ToolServer};
use tandem_tests::{require_root, Node};

const POLICY: &str = tandem_tests::firewall::TRANSFER_AND_FLOWS;
/// The probe's rate (datagrams a second) and length (seconds).
const RATE: u32 = 1000;
const SECONDS: f64 = 4.0;

fn log_of(n: &Node) -> String {
    n.ctl(&["log", "--lines", "300"]).expect("log")["lines"].to_string()
}

/// Runs the probe and, 1.5 s into it, `act`; returns the probe's result.
fn probe_during(lab: &Lab, what: &str, act: impl FnOnce() + Send) -> Value {
    let client = lab.client();
    let res = thread::scope(|s| {
        let run = s.spawn(|| tools::udp_stream(client, addr::SERVER, 9000, RATE, SECONDS));
        thread::sleep(Duration::from_millis(1500));
        act();
        run.join().expect("probe thread")
    })
    .expect("the probe ran");
    eprintln!(
        "{what}: sent {} received {} lost {} (runs {}), largest gap {} ms",
        res["sent"], res["received"], res["lost"], res["lost_runs"], res["max_gap_ms"]
    );
    let expected = (f64::from(RATE) * SECONDS) as u64;
    assert_eq!(res["sent"].as_u64(), Some(expected), "{what}: {res}");
    res
}

#[test]
fn a_forced_swap_and_a_clean_stop_lose_no_probe_packet() {
    require_root!();
    let mut c = cluster::start("swap0", Some(POLICY), &[], |_, _| {}).expect("the cluster");
    let (a, p) = c.settled().expect("one active, the passive synchronized");
    let _echo = ToolServer::udp_echo(c.lab.server(), addr::SERVER, 9000).expect("echo server");

    // A quiet run first: the probe itself loses nothing in this lab.
    let quiet = probe_during(&c.lab, "no swap", || {});
    assert_eq!(
        quiet["lost"], 0,
        "the lab loses packets without a swap: {quiet}"
    );

    // hapassive on the active while the stream runs.
    let forced = probe_during(&c.lab, "forced swap (hapassive)", || {
        let (code, out, err) = c.nodes[a]
            .ctl_out(&["hapassive"], Duration::from_secs(10))
            .expect("hapassive");
        assert_eq!(code, Some(0), "{out}{err}");
    });
    assert_eq!(cluster::role(&c.nodes[p]).0, "active");
    assert_eq!(cluster::role(&c.nodes[a]).0, "passive");
    let log = log_of(&c.nodes[a]);
    assert!(
        log.contains("draining: forwarding the connections this member has")
            && log.contains("drain over after ")
            && log.contains(": the peer is active; "),
        "{log}"
    );
    assert_eq!(forced["lost"], 0, "the forced swap lost packets: {forced}");

    // The forced status removed; then the new active stops cleanly.
    let (code, out, err) = c.nodes[a]
        .ctl_out(&["hareset"], Duration::from_secs(10))
        .expect("hareset");
    assert_eq!(code, Some(0), "{out}{err}");
    cluster::wait_synchronized(
        &c.nodes[a],
        "the passive synchronized",
        Duration::from_secs(15),
    )
    .expect("synchronized");
    let stopped = probe_during(&c.lab, "clean stop (SIGTERM) of the active", || {
        c.nodes[p].stop();
    });
    assert_eq!(cluster::role(&c.nodes[a]).0, "active");
    let log = std::fs::read_to_string(c.nodes[p].socket.with_extension("log"))
        .expect("the stopped member's log");
    assert!(
        log.contains("stopping: handing the active role to the peer")
            && log.contains("drain over after "),
        "{log}"
    );
    assert_eq!(stopped["lost"], 0, "the clean stop lost packets: {stopped}");
}

/// A connection opened at the new active while the old one drains is
/// carried by the old one when it takes the role back: the draining member
/// applied the new active's records (the connection's state as it
/// progressed), not only the first one.
#[test]
fn a_connection_opened_during_a_drain_survives_the_next_takeover() {
    require_root!();
    let mut c = cluster::start("swap1", Some(POLICY), &[], |_, _| {}).expect("the cluster");
    let (a, p) = c.settled().expect("one active, the passive synchronized");
    let _srv = tandem_tests::host::IperfServer::start(c.lab.server(), addr::SERVER, 5201)
        .expect("iperf server");
    let (code, out, err) = c.nodes[a]
        .ctl_out(&["hapassive"], Duration::from_secs(10))
        .expect("hapassive");
    assert_eq!(code, Some(0), "{out}{err}");
    let client = c.lab.client();
    let res = thread::scope(|s| {
        // Opened now, through the new active, while the old one drains.
        let run = s.spawn(|| {
            tandem_tests::host::iperf_client(
                client,
                addr::SERVER,
                5201,
                5,
                &["-b", "50M", "-i", "0.5"],
            )
        });
        thread::sleep(Duration::from_millis(1500));
        let (code, out, err) = c.nodes[a]
            .ctl_out(&["hareset"], Duration::from_secs(10))
            .expect("hareset");
        assert_eq!(code, Some(0), "{out}{err}");
        // The new active stops: the old one takes the connection back.
        c.nodes[p].stop();
        run.join().expect("iperf thread")
    });
    let res = res.expect("the transfer completed (no reset, no stall) across both swaps");
    let intervals = tools::iperf_intervals(&res.raw);
    let stalled = intervals.iter().filter(|b| **b == 0.0).count();
    eprintln!(
        "transfer: {:.0} Mbit/s, {stalled} empty half-seconds of {}",
        res.bits_per_second / 1e6,
        intervals.len()
    );
    assert_eq!(cluster::role(&c.nodes[a]).0, "active");
    assert!(stalled <= 2, "the transfer stalled: {intervals:?}");
}
