//! perf/scripts/bench-report.py on result files of known content: every
//! figure under its stable key with its unit, ratios against the baseline
//! of the same run, the SVG plots written, and what did not run listed as
//! missing instead of invented.

use std::path::PathBuf;
use std::process::Command;

use serde_json::{json, Value};

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/bench-report.py")
}

#[test]
fn the_report_gathers_figures_with_units_baselines_and_ratios() {
    let dir = std::env::temp_dir().join(format!("bench-report-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, v: &Value| std::fs::write(dir.join(name), v.to_string()).unwrap();
    write(
        "dataplane.json",
        &json!({
            "testpmd_mpps": 10.0, "testpmd_mac_mpps": 9.0, "router_mpps": 8.0, "firewall_mpps": 5.0,
            "firewall_1000000_mpps": 4.0,
            "testpmd_paced_latency_ns": {"p50": 1000, "p99": 4000, "p999": 8000},
            "firewall_paced_latency_ns": {"p50": 3000, "p99": 6000, "p999": 16000},
            "runs": {
                "testpmd_paced": [{"latency_hist_ns": [[256, 1], [512, 3]]}],
                "firewall_paced": [{"latency_hist_ns": [[512, 2], [1024, 2]]}, {"latency_hist_ns": [[1024, 4]]}],
            },
        }),
    );
    // An in-process benchmark's output: a table, then its JSON line.
    std::fs::write(
        dir.join("firewall.json"),
        "a table\n{\"router_ns_per_pkt\": 50.0, \"established_burst_ns_per_pkt\": 125.0}\n",
    )
    .unwrap();
    write(
        "failover.json",
        &json!({"clusters": [
            {"cluster": "tandem", "gap_ms": {"median": 38.0, "max": 41.0}, "connections_lost": 0, "connections_total": 1020,
             // Three rounds: the plot shows the one of the median silence (31.5 ms).
             "rounds": [
                {"gen": {"max_gap_ms": [40.0, 12.0], "timeline": {"bin_ms": 10, "from_ms": -20.0, "rx_pps": [20000, 20000, 0, 0, 0, 0, 20000]}}},
                {"gen": {"max_gap_ms": [25.0, 31.5], "timeline": {"bin_ms": 10, "from_ms": -20.0, "rx_pps": [20000, 20000, 0, 0, 0, 20000, 20000]}}},
                {"gen": {"max_gap_ms": [22.0, 21.0], "timeline": {"bin_ms": 10, "from_ms": -20.0, "rx_pps": [20000, 20000, 0, 0, 20000, 20000, 20000]}}},
             ]},
            {"cluster": "linux", "gap_ms": {"median": 44.0, "max": 48.0}, "connections_lost": 0},
        ]}),
    );
    let out = Command::new("python3")
        .arg(script())
        .args(["--results".as_ref(), dir.as_os_str()])
        .output()
        .expect("python3 runs (make test installs it)");
    assert!(
        out.status.success(),
        "bench-report failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("bench.json")).unwrap()).unwrap();
    let f = &doc["figures"];
    assert_eq!(f["dataplane.firewall_mpps"]["value"], 5.0);
    assert_eq!(f["dataplane.firewall_mpps"]["unit"], "Mpps");
    assert_eq!(
        f["dataplane.firewall_mpps"]["baseline"],
        "dataplane.testpmd_io_mpps"
    );
    assert_eq!(f["dataplane.firewall_mpps"]["ratio"], 0.5);
    assert_eq!(f["scale.firewall_1m_mpps"]["ratio"], 0.8);
    assert_eq!(f["latency.firewall_p50_us"]["value"], 3.0);
    assert_eq!(f["latency.firewall_p999_us"]["ratio"], 2.0);
    assert_eq!(f["inproc.established_burst_ns_per_pkt"]["ratio"], 2.5);
    assert_eq!(
        f["failover.tandem_kill_gap_median_ms"]["baseline_value"],
        44.0
    );
    assert_eq!(f["failover.tandem_kill_connections_lost"]["value"], 0);
    // What did not run is listed, not filled in.
    assert!(f.get("k2k.encrypted_records_per_sec").is_none());
    let missing: Vec<&str> = doc["missing"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        missing
            .iter()
            .any(|m| m.starts_with("k2k.encrypted_records_per_sec")),
        "{missing:?}"
    );
    assert!(missing.iter().any(|m| m.starts_with("chaos.faults")));
    // A figure whose baseline is there is not listed.
    assert!(
        !missing
            .iter()
            .any(|m| m.starts_with("dataplane.firewall_mpps")),
        "{missing:?}"
    );
    for plot in ["dataplane.svg", "latency.svg", "failover.svg", "rules.svg"] {
        let svg = std::fs::read_to_string(dir.join("plots").join(plot)).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
            "{plot}"
        );
    }
    // The latency histogram, rounds summed, in % of the frames: the
    // firewall's 6 of 8 below 1024 ns are 75 %.
    let hist = std::fs::read_to_string(dir.join("plots/latency-histogram.svg")).unwrap();
    assert!(hist.contains(">75<"), "{hist}");
    assert!(hist.contains("&lt;1.02 us"), "{hist}");
    // Throughput over time across the failover: the median round of the
    // three, the fault marked.
    let tl = std::fs::read_to_string(dir.join("plots/failover-timeline.svg")).unwrap();
    assert!(
        tl.contains("tandem, kill -9: largest silence 31.5 ms"),
        "{tl}"
    );
    assert!(tl.contains(">fault<") && tl.contains("<polyline"), "{tl}");
    assert!(
        !tl.contains("Linux pair"),
        "no Linux rounds, no Linux panel: {tl}"
    );
    assert!(
        doc["plots"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "plots/failover-timeline.svg"),
        "{doc}"
    );
    let svg = std::fs::read_to_string(dir.join("plots/dataplane.svg")).unwrap();
    assert!(
        svg.contains(">5<"),
        "the firewall's bar is labelled 5: {svg}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_report_refuses_a_result_file_without_json() {
    let dir = std::env::temp_dir().join(format!("bench-report-bad-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("k2k.json"), "only a table, the run was cut\n").unwrap();
    let out = Command::new("python3")
        .arg(script())
        .args(["--results".as_ref(), dir.as_os_str()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("k2k.json holds no JSON"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
