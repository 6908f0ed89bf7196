//! The benchmark suite end to end, at its smallest size (issue 11): `make
//! bench`'s script with `--smoke` runs every measure (in-process
//! benchmarks, tandem-gen against testpmd and tandemd over memif, K2K
//! replication in a two-node lab, failovers of four kinds against the
//! Linux pair, a short chaos run), then gathers the figures and draws the
//! plots. The numbers of so short a run mean nothing; this asserts that
//! each measure ran and gave a sane figure under its stable key, with
//! the baseline of the same run where it has one, and that every plot
//! was drawn.
//!
//! Needs root (namespaces, hugepages), dpdk-testpmd, keepalived and
//! conntrackd (scripts/install-deps.sh): fails, not skips, without them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tandem_tests::{cmd, node, require_root};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the repository")
        .to_path_buf()
}

/// Figures a smoke run gives, with the lowest sane value (exclusive where
/// noted by > 0) and the highest.
const RATES: &[(&str, f64, f64)] = &[
    // Mpps on one core: something passed, below any memif's limit.
    ("dataplane.testpmd_io_mpps", 0.05, 100.0),
    ("dataplane.testpmd_mac_mpps", 0.05, 100.0),
    ("dataplane.router_mpps", 0.05, 100.0),
    ("dataplane.firewall_mpps", 0.05, 100.0),
    ("scale.firewall_1m_mpps", 0.01, 100.0),
    ("conns.firewall_tcp_per_sec", 1000.0, 1e8),
    ("rules.conns_10_per_sec", 1000.0, 1e8),
    ("rules.conns_1000_per_sec", 1000.0, 1e8),
    ("rules.conns_10000_per_sec", 1000.0, 1e8),
    ("latency.testpmd_p50_us", 0.1, 100_000.0),
    ("latency.firewall_p50_us", 0.1, 100_000.0),
    ("inproc.router_ns_per_pkt", 1.0, 1e6),
    ("inproc.established_burst_ns_per_pkt", 1.0, 1e6),
    ("rules.small_burst64_ns", 0.5, 1e6),
    ("rules.large_burst64_ns", 0.5, 1e6),
    ("scale.bytes_per_connection", 50.0, 1000.0),
    ("k2k.auth_records_per_sec", 1000.0, 1e9),
    ("k2k.encrypted_bytes_per_record", 50.0, 1000.0),
    ("k2k.ha_bytes_per_connection_10k", 50.0, 2000.0),
    ("k2k.lag_p50_ms_10k", 0.0, 5000.0),
    ("k2k.lag_p99_ms_100k", 0.0, 60_000.0),
    // A kill costs a silence of the detection time's order; the Linux pair
    // is the baseline.
    ("failover.tandem_kill_gen_gap_median_ms", 5.0, 2000.0),
    ("failover.linux_kill_gen_gap_median_ms", 5.0, 5000.0),
    ("failover.tandem_stop_gen_gap_median_ms", 5.0, 2000.0),
    ("failover.tandem_swap_gen_gap_median_ms", 0.0, 2000.0),
    ("failover.tandem_term_gen_gap_median_ms", 0.0, 2000.0),
];

/// Figures that must be exactly 0.
const ZEROES: &[&str] = &[
    "failover.tandem_kill_connections_lost",
    "failover.tandem_stop_connections_lost",
    "failover.tandem_swap_connections_lost",
    "failover.tandem_term_connections_lost",
    "chaos.tcp_lost",
    "chaos.verify_differences",
];

/// Figures measured against a baseline of the same run.
const WITH_BASELINE: &[&str] = &[
    "dataplane.firewall_mpps",
    "dataplane.router_mpps",
    "latency.firewall_p50_us",
    "scale.firewall_1m_mpps",
    "rules.conns_10000_per_sec",
    "failover.tandem_kill_gen_gap_median_ms",
    "failover.tandem_kill_gap_median_ms",
    "k2k.encrypted_records_per_sec",
];

#[test]
fn every_measure_of_the_benchmark_suite_runs_and_gives_a_sane_figure() {
    require_root!();
    let _lock = tandem_tests::heavy_lock();
    let out_dir = std::env::temp_dir().join(format!("tandem-bench-smoke-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out_dir);
    let mut c = cmd::command(&[
        repo().join("perf/scripts/bench-all.sh").as_os_str(),
        "--smoke".as_ref(),
        "--results".as_ref(),
        out_dir.as_os_str(),
        "--bin".as_ref(),
        node::bin_dir().as_os_str(),
    ]);
    c.current_dir(repo());
    let out = cmd::run_timeout(c, Duration::from_secs(600)).expect("bench-all --smoke ends");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench-all --smoke failed:\n{text}");
    let doc: Value = serde_json::from_str(
        &std::fs::read_to_string(out_dir.join("bench.json")).expect("bench.json written"),
    )
    .expect("bench.json is JSON");
    let f = &doc["figures"];
    let value = |k: &str| -> f64 {
        f[k]["value"]
            .as_f64()
            .unwrap_or_else(|| panic!("{k} missing from the report: {}", doc["missing"]))
    };
    for &(k, lo, hi) in RATES {
        let v = value(k);
        assert!(
            v.is_finite() && v >= lo && v <= hi,
            "{k} = {v} is not between {lo} and {hi} ({})",
            f[k]
        );
        assert!(
            f[k]["unit"].as_str().is_some_and(|u| !u.is_empty()),
            "{k} has a unit"
        );
    }
    for &k in ZEROES {
        assert_eq!(value(k), 0.0, "{k}: {}", f[k]);
    }
    for &k in WITH_BASELINE {
        let r = f[k]["ratio"].as_f64();
        assert!(
            r.is_some_and(|r| r.is_finite() && r > 0.0) && f[k]["baseline_value"].is_number(),
            "{k} is given with its baseline and ratio: {}",
            f[k]
        );
    }
    // The smoke run skips only the 4-million-connection table.
    let missing: Vec<&str> = doc["missing"]
        .as_array()
        .expect("missing is a list")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        missing
            .iter()
            .all(|m| m.starts_with("scale.firewall_4m_mpps")),
        "only the 4M table is missing: {missing:?}"
    );
    for plot in [
        "dataplane.svg",
        "latency.svg",
        "latency-histogram.svg",
        "failover.svg",
        "failover-timeline.svg",
        "rules.svg",
    ] {
        let svg = std::fs::read_to_string(out_dir.join("plots").join(plot))
            .unwrap_or_else(|e| panic!("{plot}: {e}"));
        assert!(
            svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
            "{plot} is an SVG document"
        );
    }
    let timeline = std::fs::read_to_string(out_dir.join("plots/failover-timeline.svg")).unwrap();
    for panel in [
        "tandem, kill -9",
        "Linux pair",
        "SIGSTOP",
        "forced swap",
        "clean stop",
    ] {
        assert!(
            timeline.contains(panel),
            "a panel for {panel} in the failover timeline"
        );
    }
    std::fs::remove_dir_all(&out_dir).unwrap();
}
