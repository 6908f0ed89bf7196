//! tandem-gen against a real cluster (issue 11): our generator on a lab
//! host with a leg on each segment sends UDP both ways through two
//! tandemd members, follows the takeover's gratuitous ARPs when the
//! active is killed, and reports what the failover cost: frames lost and
//! the largest silence per direction. `make bench` runs the same in
//! `bench-failover --gen-rate`.
//!
//! Needs root (network namespaces): fails, not skips, without it.

use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tandem_tests::cluster::{self, role, wait_synchronized};
use tandem_tests::generator;
use tandem_tests::node::HaSection;
use tandem_tests::require_root;

const POLICY: &str = r#"(
    rules: [
        (action: Pass, from: ["198.18.1.0/24"], proto: Udp, dst_ports: ["9"]),
        (action: Pass, from: ["198.18.1.0/24"], proto: Icmp, icmp_types: [8]),
    ],
    default_action: Block,
)"#;

/// Frames per second per direction.
const RATE: u64 = 5000;

#[test]
fn the_generator_follows_a_takeover_and_measures_what_it_cost() {
    require_root!();
    let mut c = cluster::start("gen", Some(POLICY), &[], |_, _: &mut HaSection| {})
        .expect("starting the cluster");
    let a = c
        .wait_single_active(Duration::from_secs(8))
        .expect("one member elected");
    wait_synchronized(
        &c.nodes[1 - a],
        "the passive synchronized",
        Duration::from_secs(10),
    )
    .expect("synchronized");
    c.lab.add_gen_host().expect("the generator's host");
    let gen =
        generator::start(&c.lab, "tandem-gen", RATE as u32, 16, 1.0).expect("start tandem-gen");
    // Two seconds of traffic through the active, then its kill.
    thread::sleep(Duration::from_secs(3));
    let survivor = c.nodes.remove(1 - a);
    let mut victim = c.nodes.remove(0);
    let kill_unix_ms = wall_ms();
    victim.proc.signal("KILL");
    let t = Instant::now();
    while role(&survivor).0 != "active" && t.elapsed() < Duration::from_secs(3) {
        thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(role(&survivor).0, "active", "the passive took over");
    // Two seconds through the new active, then the report.
    thread::sleep(Duration::from_secs(2));
    let report = generator::report(gen).expect("tandem-gen's report");
    eprintln!("tandem-gen: {report}");
    let sent = report["sent"].as_u64().unwrap();
    let lost = report["lost"].as_u64().unwrap();
    // About 4 s both ways at RATE.
    assert!(
        sent > 6 * RATE,
        "the generator sent both ways all along: {report}"
    );
    // The takeover costs some frames (the dead time and the check), and
    // traffic flows again after it: a generator stuck on the dead
    // member's MAC would lose the last two seconds, half of it all.
    assert!(lost > 0, "a kill -9 costs frames: {report}");
    assert!(
        lost * 10 < sent,
        "frames flow through the new active: {report}"
    );
    assert_eq!(
        report["gateway_moves"], 2,
        "both gateways moved to the new active (its gratuitous ARPs on each segment): {report}"
    );
    let gaps: Vec<u64> = report["max_gap_us"]
        .as_array()
        .expect("max_gap_us per direction")
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    assert_eq!(gaps.len(), 2, "both directions: {report}");
    for g in gaps {
        // The kill shows as a silence of its own (more than the 0.2 ms
        // between frames at this rate), ended by the takeover within the
        // lab's bound.
        assert!(
            (10_000..1_000_000).contains(&g),
            "a silence of the takeover's size in each direction: {report}"
        );
    }
    // Throughput over time around the kill (what bench-failover plots):
    // full before it, nothing in some 10 ms interval after it, full again
    // by the end.
    let t = generator::timeline_around(&report, kill_unix_ms, 500, 1500)
        .unwrap_or_else(|| panic!("a timeline around the kill: {report}"));
    let pps: Vec<u64> = t["rx_pps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    let from = t["from_ms"].as_f64().unwrap();
    let kill_bin = (-from / f64::from(generator::TIMELINE_MS)) as usize;
    let full = 2 * RATE;
    let before = &pps[..kill_bin.saturating_sub(1)];
    let after = &pps[kill_bin..];
    let median = |v: &[u64]| {
        let mut v = v.to_vec();
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or(0)
    };
    assert!(
        before.len() >= 40 && median(before) * 10 >= full * 9,
        "the full rate both ways before the kill: {t}"
    );
    assert!(
        after.iter().take(100).any(|&p| p == 0),
        "an empty 10 ms interval within 1 s of the kill: {t}"
    );
    assert!(
        after.len() >= 140 && median(&after[after.len() - 40..]) * 10 >= full * 9,
        "the full rate again through the new active: {t}"
    );
}

fn wall_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1e3)
}
