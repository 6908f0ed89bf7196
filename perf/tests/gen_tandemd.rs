//! tandem-gen through tandemd's stateful firewall, end to end: runs
//! perf/scripts/gen-tandemd.sh (tandemd with one worker between two memif
//! server ports, tandem-gen on both ends, no hugepages) with the debug
//! binaries, once with UDP flows and once in the TCP mode, and checks
//! what tandem-gen counted against what tandemd counted.
//!
//! It builds nothing: tandem-gen is this crate's binary, tandemd and
//! tandemctl are the control crate's, found next to it (`cargo build -p
//! tandem-control --bins`, which `make test` does). It needs root (DPDK,
//! memif) and two CPUs, and fails saying so when they are missing. Every
//! run is bounded: the script bounds its processes, and the test stops
//! the script (which stops its processes) after 60 s.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/gen-tandemd.sh");
const GEN: &str = env!("CARGO_BIN_EXE_tandem-gen");

/// tandemd and tandemctl, next to tandem-gen; the test fails naming the
/// command that builds them when they are missing.
fn control_binaries() -> PathBuf {
    let dir = Path::new(GEN).parent().expect("tandem-gen's directory");
    let tandemd = dir.join("tandemd");
    for b in [&tandemd, &dir.join("tandemctl")] {
        assert!(
            b.is_file(),
            "{} is missing: this test runs tandemd's debug build next to tandem-gen; build it with `cargo build -p tandem-control --bins` (with the same CARGO_TARGET_DIR)",
            b.display()
        );
    }
    tandemd
}

/// The effective user id, from /proc/self/status.
fn euid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

fn require_root_and_two_cpus() {
    assert_eq!(
        euid(),
        Some(0),
        "this test needs root (DPDK with memif, tandemd's dataplane): run it as root, as CI does"
    );
    assert!(
        std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2,
        "this test needs 2 CPUs (tandem-gen on CPU 0, tandemd's worker on CPU 1)"
    );
}

/// What one run of the script printed.
struct Run {
    ok: bool,
    lines: Vec<Value>,
    stats: Value,
    stderr: String,
}

/// Runs gen-tandemd.sh with tandem-gen options `args`, without
/// hugepages; stopped (SIGTERM, then SIGKILL) after 60 s.
fn run_script(args: &[&str]) -> Run {
    let tandemd = control_binaries();
    let mut child = Command::new("bash")
        .arg(SCRIPT)
        .args(args)
        .env("GEN", GEN)
        .env("TANDEMD", &tandemd)
        .env("NO_HUGE", "1")
        .env("GEN_LCORE", "0")
        .env("FW_CPU", "1")
        .env_remove("KEEP")
        .env_remove("FIREWALL")
        .env_remove("CONNECTIONS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start gen-tandemd.sh");
    let out = child.stdout.take().expect("stdout");
    let err = child.stderr.take().expect("stderr");
    let read_out = std::thread::spawn(move || std::io::read_to_string(out).unwrap_or_default());
    let read_err = std::thread::spawn(move || std::io::read_to_string(err).unwrap_or_default());
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s);
        }
        if Instant::now() >= deadline {
            // The script's trap stops tandemd and tandem-gen.
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let grace = Instant::now() + Duration::from_secs(10);
            while child.try_wait().expect("wait").is_none() && Instant::now() < grace {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = read_out.join().unwrap_or_default();
    let stderr = read_err.join().unwrap_or_default();
    let lines = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let stats = stderr
        .lines()
        .find_map(|l| l.strip_prefix("tandemd-stats "))
        .map(|j| serde_json::from_str(j).expect("tandemd-stats is JSON"))
        .unwrap_or(Value::Null);
    Run {
        ok: status.is_some_and(|s| s.success()),
        lines,
        stats,
        stderr,
    }
}

fn u(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

/// A counter summed over tandemd's workers.
fn workers_sum(stats: &Value, f: impl Fn(&Value) -> u64) -> u64 {
    stats["workers"]
        .as_array()
        .unwrap_or_else(|| panic!("no workers in tandemd's stats: {stats}"))
        .iter()
        .map(f)
        .sum()
}

fn drop_count(stats: &Value, reason: &str) -> u64 {
    workers_sum(stats, |w| {
        w["drops"][reason]
            .as_u64()
            .unwrap_or_else(|| panic!("no drop reason {reason} in {w}"))
    })
}

#[test]
fn tandem_gen_udp_flows_and_tcp_connections_pass_tandemds_firewall() {
    require_root_and_two_cpus();
    let started = Instant::now();

    // (a) UDP: every flow a connection; what was sent is received or lost.
    let r = run_script(&[
        "--duration",
        "2",
        "--warmup",
        "0.5",
        "--flows",
        "100",
        "--rate",
        "200000",
    ]);
    assert!(r.ok, "gen-tandemd.sh (UDP) failed:\n{}", r.stderr);
    let report = r.lines.last().expect("a report line");
    let (sent, received, lost) = (u(report, "sent"), u(report, "received"), u(report, "lost"));
    assert!(sent > 100_000, "{report}");
    assert_eq!(received + lost, sent, "{report}");
    assert!(received * 10 >= sent * 9, "{report}");
    assert_eq!(u(report, "foreign"), 0, "{report}");
    let conns = workers_sum(&r.stats, |w| u(w, "connections"));
    assert_eq!(conns, 100, "tandemd's connections: {}", r.stats);
    assert_eq!(u(&r.stats["firewall"], "connections"), 100, "{}", r.stats);

    // (b) TCP at 2000 new connections per second.
    let r = run_script(&["--duration", "2", "--warmup", "0.5", "--tcp-conns", "2000"]);
    assert!(r.ok, "gen-tandemd.sh (TCP) failed:\n{}", r.stderr);
    let (report, ticks) = r.lines.split_last().expect("a report line");
    assert!(ticks.len() >= 2, "per-second lines: {ticks:?}");
    for t in ticks {
        assert!(t["opened_ps"].is_u64() && t["completed_ps"].is_u64(), "{t}");
    }
    assert_eq!(report["mode"], "tcp", "{report}");
    let opened = u(report, "opened");
    let completed = u(report, "completed");
    let in_flight = u(report, "in_flight");
    // 2000/s for 2 s, give or take the start of the pacing.
    assert!((3_800..=4_100).contains(&opened), "{report}");
    assert!(
        completed * 100 >= (opened - in_flight) * 95,
        "completed {completed} of {opened} ({in_flight} in flight at the end): {report}"
    );
    assert_eq!(u(report, "failed"), 0, "{report}");
    assert_eq!(u(report, "bad"), 0, "{report}");
    assert_eq!(u(report, "established"), opened, "{report}");
    assert_eq!(u(report, "server_syns"), opened, "{report}");
    assert_eq!(u(report, "server_last_acks"), completed, "{report}");
    assert!(u(&report["handshake_ns"], "p50") > 0, "{report}");
    let cps = report["conns_per_sec"].as_f64().expect("conns_per_sec");
    assert!((1_800.0..=2_100.0).contains(&cps), "{report}");
    // tandemd tracked them all (the warm-up's too), closed, in TIME_WAIT,
    // and dropped none of their segments.
    let conns = workers_sum(&r.stats, |w| u(w, "connections"));
    assert!(
        conns >= opened,
        "tandemd's connections {conns} < opened {opened}: {}",
        r.stats
    );
    assert!(u(&r.stats["firewall"], "created") >= opened, "{}", r.stats);
    for reason in [
        "tcp_out_of_window",
        "tcp_invalid_flags_for_state",
        "tcp_bad_flags",
        "tcp_bad_checksum",
        "tcp_rst_out_of_window",
        "no_connection",
        "policy_block",
        "table_full",
    ] {
        assert_eq!(drop_count(&r.stats, reason), 0, "{reason}: {}", r.stats);
    }
    eprintln!(
        "gen_tandemd: both runs in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn tcp_runs_that_would_reuse_tuples_are_refused() {
    let out = Command::new(GEN)
        .args([
            "--port-a=net_memif0,role=client,socket=/nonexistent/a.sock",
            "--port-b=net_memif1,role=client,socket=/nonexistent/b.sock",
            "--src-net=198.18.1.10",
            "--tcp-conns=100000",
            "--duration=10",
        ])
        .output()
        .expect("run tandem-gen");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("64512 distinct tuples"), "{err}");
    assert!(
        err.contains("--tcp-conns") && err.contains("--src-net"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}
