//! tandem-gen for real: through dpdk-testpmd in io mode between two memif
//! server ports, on the host, without hugepages (functional, not a
//! benchmark: see perf/README-gen.md for the measured rates). It fails,
//! saying what to install, when dpdk-testpmd is missing or the machine has
//! one CPU.
//!
//! Both processes run with `--no-huge --no-shconf` and private memif
//! sockets (abstract, named after a private temp directory): nothing is
//! left behind, and every process started here is killed by its pid when
//! the test ends, passed or not.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const TESTPMD: &str = "/usr/bin/dpdk-testpmd";

/// A child process killed (SIGKILL) and reaped when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A private directory removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What this test needs; missing, it fails with what to install or
/// provide (`make test` installs dpdk-testpmd with the `dpdk` package).
fn require_testpmd_and_two_cpus() {
    assert!(
        Path::new(TESTPMD).exists(),
        "{TESTPMD} is missing: apt-get install dpdk (scripts/install-deps.sh does)"
    );
    assert!(
        std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2,
        "this test needs 2 CPUs (testpmd forwards on CPU 1)"
    );
}

/// testpmd forwarding between two memif servers at `dir/{a,b}.sock`.
fn start_testpmd(dir: &Path, tag: &str) -> Guard {
    let log = std::fs::File::create(dir.join(format!("testpmd-{tag}.log"))).expect("testpmd log");
    let child = Command::new(TESTPMD)
        .args(["-l", "0,1", "--main-lcore", "0"])
        .arg(format!("--file-prefix=tp-{tag}"))
        .args([
            "--no-huge",
            "--no-shconf",
            "-m",
            "512",
            "--no-pci",
            "--no-telemetry",
        ])
        .arg(format!(
            "--vdev=net_memif0,role=server,socket={}",
            dir.join("a.sock").display()
        ))
        .arg(format!(
            "--vdev=net_memif1,role=server,socket={}",
            dir.join("b.sock").display()
        ))
        .args([
            "--",
            "--forward-mode=io",
            "--auto-start",
            "--no-lsc-interrupt",
            "--stats-period=1",
            "--nb-cores=1",
            "--total-num-mbufs=16384",
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start dpdk-testpmd");
    Guard(child)
}

/// Runs tandem-gen against the testpmd of `dir` with `extra` options;
/// returns (exit success, JSON lines of stdout, stderr). Bounded: killed
/// after 40 s.
fn run_gen(dir: &Path, tag: &str, extra: &[&str]) -> (bool, Vec<Value>, String) {
    let out = dir.join(format!("gen-{tag}.out"));
    let err = dir.join(format!("gen-{tag}.err"));
    let child = Command::new(env!("CARGO_BIN_EXE_tandem-gen"))
        .args(["--no-huge", "--lcore", "0", "--link-timeout", "15"])
        .arg(format!("--file-prefix=gen-{tag}"))
        .arg(format!(
            "--port-a=net_memif0,role=client,socket={}",
            dir.join("a.sock").display()
        ))
        .arg(format!(
            "--port-b=net_memif1,role=client,socket={}",
            dir.join("b.sock").display()
        ))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("out"))
        .stderr(std::fs::File::create(&err).expect("err"))
        .spawn()
        .expect("start tandem-gen");
    let mut gen = Guard(child);
    let deadline = Instant::now() + Duration::from_secs(40);
    let status = loop {
        if let Some(s) = gen.0.try_wait().expect("wait") {
            break Some(s);
        }
        if Instant::now() >= deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(gen);
    let stdout = std::fs::read_to_string(&out).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    let lines = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    (status.is_some_and(|s| s.success()), lines, stderr)
}

/// Whether testpmd still runs, or how it ended.
fn testpmd_state(testpmd: &mut Guard) -> String {
    match testpmd.0.try_wait() {
        Ok(None) => "is running".into(),
        Ok(Some(status)) => format!("has ended ({status})"),
        Err(e) => format!("cannot be waited for ({e})"),
    }
}

/// The last lines testpmd wrote.
fn testpmd_log(dir: &Path, tag: &str) -> String {
    let log = std::fs::read_to_string(dir.join(format!("testpmd-{tag}.log"))).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// One tandem-gen run (`extra` options) through a testpmd of its own,
/// which ends with it: testpmd 22.11 forwarding over memif can crash
/// (SIGSEGV, seen in this test) when a client disconnects while its core
/// forwards, so no server outlives its client here. Returns the JSON
/// lines and tandem-gen's stderr; fails with both processes' words.
fn gen_through_testpmd(dir: &Path, tag: &str, extra: &[&str]) -> (Vec<Value>, String) {
    // tandem-gen starts right after testpmd: it waits for the memif
    // servers and retries until their ports are started.
    let mut testpmd = start_testpmd(dir, tag);
    let (ok, lines, stderr) = run_gen(dir, tag, extra);
    assert!(
        ok,
        "tandem-gen failed: {stderr}\ntestpmd {}:\n{}",
        testpmd_state(&mut testpmd),
        testpmd_log(dir, tag)
    );
    (lines, stderr)
}

fn u(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

#[test]
fn tandem_gen_counts_what_testpmd_forwards_over_memif() {
    require_testpmd_and_two_cpus();
    let tag = format!("{}", std::process::id());
    let dir = std::env::temp_dir().join(format!("tandem-gen-test-{tag}"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let dir = TempDir(dir);
    // As fast as it goes, one direction, many flows.
    let (lines, _) = gen_through_testpmd(
        &dir.0,
        &format!("max-{tag}"),
        &["--duration", "2", "--warmup", "0.5", "--flows", "256"],
    );
    let (report, ticks) = lines.split_last().expect("a report line");
    assert!(ticks.len() >= 2, "per-second lines: {ticks:?}");
    for t in ticks {
        assert!(
            t["t"].is_u64() && t["tx_pps"].is_u64() && t["rx_pps"].is_u64(),
            "{t}"
        );
    }
    let (sent, received, lost) = (u(report, "sent"), u(report, "received"), u(report, "lost"));
    assert!(sent > 10_000, "{report}");
    assert_eq!(received + lost, sent, "{report}");
    // testpmd drops when its core is taken away (a shared machine), but
    // io forwarding over memif neither reorders nor duplicates.
    assert!(received * 2 >= sent, "{report}");
    assert_eq!(u(report, "reordered"), 0, "{report}");
    assert_eq!(u(report, "duplicates"), 0, "{report}");
    assert_eq!(u(report, "foreign"), 0, "{report}");
    assert_eq!(u(report, "flows"), 256);
    assert!(u(&report["latency_ns"], "p50") > 0, "{report}");
    assert!(u(&report["latency_ns"], "max") >= u(&report["latency_ns"], "p99"));

    // Both ways, IMIX, paced.
    let (lines, _) = gen_through_testpmd(
        &dir.0,
        &format!("bidir-{tag}"),
        &[
            "--duration",
            "2",
            "--warmup",
            "0.5",
            "--bidir",
            "--imix",
            "--rate",
            "100000",
            "--flows",
            "10",
        ],
    );
    let report = lines.last().expect("a report line");
    let sent = u(report, "sent");
    // 2 directions x 100 kpps x 2 s, give or take the start of the pacing.
    assert!((380_000..=410_000).contains(&sent), "{report}");
    assert!(u(report, "received") * 10 >= sent * 9, "{report}");
    assert_eq!(report["imix"], Value::Bool(true));
    assert_eq!(report["bidir"], Value::Bool(true));

    // A fraction of the line rate: memif reports 100 Gbit/s, and 0.1 % of
    // it at 64 B (84 B on a wire) is 148,810 frames/s.
    let (lines, stderr) = gen_through_testpmd(
        &dir.0,
        &format!("percent-{tag}"),
        &[
            "--duration",
            "1",
            "--warmup",
            "0.2",
            "--rate-percent",
            "0.1",
        ],
    );
    let report = lines.last().expect("a report line");
    assert_eq!(u(report, "rate_pps"), 148_810, "{report}");
    assert!((140_000..=160_000).contains(&u(report, "sent")), "{report}");
    assert!(stderr.contains("0.1 % of 100000 Mbit/s"), "{stderr}");
}

#[test]
fn tandem_gen_refuses_addresses_outside_the_benchmark_network() {
    let out = Command::new(env!("CARGO_BIN_EXE_tandem-gen"))
        .args([
            "--port-a=net_memif0,role=client,socket=/nonexistent/a.sock",
            "--port-b=net_memif1,role=client,socket=/nonexistent/b.sock",
            "--dst-net=203.0.113.0/24",
        ])
        .output()
        .expect("run tandem-gen");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--dst-net 203.0.113.1-203.0.113.254 reaches outside 198.18.0.0/15"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}

/// A NIC given by its PCI address goes to DPDK as an allow-listed device;
/// one that is not there (nor bound to vfio-pci) is named in the error.
/// (No NIC can be passed through on the lab machine: the forwarding path
/// of PCI ports is tandemd's, exercised on hardware.)
#[test]
fn tandem_gen_names_a_pci_nic_that_dpdk_does_not_find() {
    let out = Command::new(env!("CARGO_BIN_EXE_tandem-gen"))
        .args([
            "--port-a=0000:ff:1f.6",
            "--port-b=ff:1f.7",
            "--no-huge",
            "--memory-mb=256",
            "--duration=1",
            "--link-timeout=1",
        ])
        .output()
        .expect("run tandem-gen");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--port-a (0000:ff:1f.6)") && err.contains("vfio-pci"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
    let out = Command::new(env!("CARGO_BIN_EXE_tandem-gen"))
        .args(["--port-a=0000:03:00.0", "--port-b=03:00.0"])
        .output()
        .expect("run tandem-gen");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--port-a and --port-b are both 0000:03:00.0"),
        "{err}"
    );
}
