//! `tandem-lab`: the lab from the command line.
//!
//! - `tandem-lab demo`: single-node lab, tandemd, ping + 20 MB HTTP + 10 s
//!   iperf3 through it, status and stats; exits non-zero if traffic failed.
//! - `tandem-lab bench-iperf [--seconds N] [--runs R] [--labs tandem,linux,bridge]
//!   [--out FILE]`: iperf3 through tandemd vs a Linux router vs a bridge.
//! - `tandem-lab cleanup [--force]`: removes stale lab namespaces.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tandem_tests::args::Args;
use tandem_tests::host::{self, HttpServer, IperfServer};
use tandem_tests::lab::{self, Lab, LabKind};
use tandem_tests::node::{self, Node};
use tandem_tests::{LabError, Result};

const USAGE: &str = "usage: tandem-lab <command>
  demo                          two-node cluster (election, firewall, state sync): a live
                                iperf3, kill -9 of the active mid-transfer, the largest gap
  demo-single                   single-node lab: tandemd + ping, 20 MB HTTP, 10 s iperf3
  bench-iperf [--seconds N] [--runs R] [--labs tandem,linux,bridge] [--out FILE]
                                iperf3 through tandemd vs Linux router vs bridge
                                (default 10 s, 3 runs, results/iperf.json)
  bench-sync [--rates 2000,5000,10000,20000] [--seconds 3] [--sender python|tandem-gen]
             [--out FILE]
                                new connections per second through the active of a
                                two-node cluster: replication lag p50/p99 per rate and
                                whether the passive kept up (results/sync.json)
  chaos [--seed N] [--faults K] [--connections C] [--flows F] [--out FILE]
                                a seeded run of K faults (kill -9, SIGSTOP, HA-link cuts
                                and blackholes, loss bursts, a cut data link, forced swaps,
                                clean restarts) under live TCP and a table of UDP flows;
                                fails unless every TCP connection survives, one member is
                                active and a verify finds both tables equal
  cleanup [--force]             remove lab namespaces of dead runs (--force: all)
env: TANDEM_BIN_DIR (where tandemd/tandemctl are), TANDEM_LAB_KEEP=1 (keep temp dirs)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    if matches!(cmd.as_str(), "-h" | "--help" | "help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    if !tandem_tests::cmd::is_root() {
        eprintln!("tandem-lab needs root (network namespaces)");
        return ExitCode::from(2);
    }
    let rest = &args[1..];
    let r = match cmd.as_str() {
        "demo" => cluster_demo(),
        "demo-single" => demo(),
        "bench-iperf" => parse_bench(rest).and_then(|o| bench_iperf(&o)),
        "bench-sync" => bench_sync(rest),
        "chaos" => chaos(rest),
        "cleanup" => {
            let force = rest.iter().any(|a| a == "--force");
            let removed = lab::cleanup(lab::LAB_MARK, force);
            println!(
                "removed {} namespace(s): {}",
                removed.len(),
                removed.join(" ")
            );
            Ok(())
        }
        other => Err(LabError::Other(format!(
            "unknown command {other:?}\n{USAGE}"
        ))),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tandem-lab {cmd}: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

fn chaos(rest: &[String]) -> Result<()> {
    let mut cfg = tandem_tests::chaos::ChaosConfig::default();
    let mut out = std::path::PathBuf::from("results/chaos.json");
    let mut a = Args::new(rest, USAGE);
    while let Some(flag) = a.next_flag() {
        match flag {
            "--seed" => cfg.seed = a.number(flag, 0..=u64::MAX)?,
            "--faults" => cfg.faults = a.number(flag, 1..=10_000)?,
            "--connections" => cfg.tcp_connections = a.number(flag, 1..=1000)?,
            "--flows" => cfg.udp_flows = a.number(flag, 1..=1_000_000)?,
            "--out" => out = a.value(flag)?.into(),
            other => {
                return Err(LabError::Other(format!(
                    "unknown option {other:?}\n{USAGE}"
                )))
            }
        }
    }
    let report = tandem_tests::chaos::run(&cfg)?;
    println!("{}", pretty(&report));
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| LabError::io(format!("creating {}", dir.display()), e))?;
    }
    std::fs::write(&out, pretty(&report) + "\n")
        .map_err(|e| LabError::io(format!("writing {}", out.display()), e))?;
    println!("written to {}", out.display());
    if report["passed"] == true {
        Ok(())
    } else {
        Err(LabError::Other(format!(
            "the chaos run failed: {} TCP connections lost, {} actives, verify {}",
            report["tcp_lost"], report["final_actives"], report["final_verify"]
        )))
    }
}

fn step(t0: Instant, msg: &str) {
    println!("[{:>6.1}s] {msg}", t0.elapsed().as_secs_f64());
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

fn mbit(bps: f64) -> String {
    format!("{:.1} Mbit/s", bps / 1e6)
}

fn demo() -> Result<()> {
    let t0 = Instant::now();
    node::find_bin("tandemd")?;
    node::find_bin("tandemctl")?;
    step(
        t0,
        "building the single-node lab (client, server, fw1, switch)",
    );
    let lab = Lab::single_node("demo")?;
    step(
        t0,
        &format!("lab {} ready in {}", lab.prefix(), lab.dir().display()),
    );
    let mut node = lab.start_node(1)?;
    step(
        t0,
        &format!(
            "tandemd started (pid {}), waiting for its control socket",
            node.proc.pid()
        ),
    );
    node.wait_ready(Duration::from_secs(30))?;
    step(t0, "tandemctl status:");
    println!("{}", node.ctl_text(&["status"])?);

    let mut failures = Vec::new();
    let server_ip = lab.server_ip();

    step(
        t0,
        &format!("ping {server_ip} from the client through tandemd"),
    );
    match host::wait_for_ping(lab.client(), server_ip, Duration::from_secs(15)) {
        Ok(d) => {
            step(t0, &format!("first reply after {d:?}"));
            let p = host::ping(lab.client(), server_ip, 10, Duration::from_secs(10))?;
            step(
                t0,
                &format!(
                    "ping: {}/{} replies, {}% loss, avg rtt {:?} ms",
                    p.received, p.transmitted, p.loss_pct, p.rtt_avg_ms
                ),
            );
            if p.received == 0 {
                failures.push("ping: no reply".to_string());
            }
        }
        Err(e) => failures.push(format!("ping: {e}")),
    }

    step(
        t0,
        "starting an HTTP server with a 20 MB file on the server",
    );
    let http = HttpServer::start(lab.server(), server_ip, 8080, lab.dir(), 20)?;
    step(t0, &format!("curl {}", http.url()));
    let out = lab.dir().join("download.bin");
    let name = http
        .file
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let c = host::curl_download(
        lab.client(),
        server_ip,
        8080,
        &name,
        &out,
        Duration::from_secs(60),
    )?;
    let sha = if c.ok() {
        host::sha256_file(&out).unwrap_or_default()
    } else {
        String::new()
    };
    step(
        t0,
        &format!(
            "curl: exit {:?}, HTTP {}, {} bytes in {:.2} s ({}), sha256 {}",
            c.exit_code,
            c.http_code,
            c.bytes,
            c.seconds,
            mbit(c.bits_per_second()),
            if sha == http.sha256 {
                "matches"
            } else {
                "DIFFERS"
            }
        ),
    );
    if !c.ok() || c.bytes != http.size || sha != http.sha256 {
        failures.push(format!("curl: {c:?}"));
    }
    drop(http);

    step(t0, "iperf3 for 10 s client -> server");
    let srv = IperfServer::start(lab.server(), server_ip, 5201)?;
    match host::iperf_client(lab.client(), server_ip, 5201, 10, &[]) {
        Ok(r) => {
            step(
                t0,
                &format!(
                    "iperf3: {} received, {} retransmits",
                    mbit(r.bits_per_second),
                    r.retransmits
                ),
            );
            if r.bits_per_second <= 0.0 {
                failures.push("iperf3: zero throughput".into());
            }
        }
        Err(e) => failures.push(format!("iperf3: {e}")),
    }
    drop(srv);

    node.proc.ensure_running()?;
    step(t0, "tandemctl stats:");
    match node.ctl_text(&["stats"]) {
        Ok(s) => println!("{s}"),
        Err(e) => failures.push(format!("stats: {e}")),
    }
    step(t0, "stopping tandemd and tearing the lab down");
    let st = node.stop();
    step(t0, &format!("tandemd exited: {st:?}"));
    drop(lab);
    if failures.is_empty() {
        step(t0, "demo OK");
        Ok(())
    } else {
        Err(LabError::Other(format!(
            "traffic failed:\n  {}",
            failures.join("\n  ")
        )))
    }
}

struct BenchOpts {
    seconds: u32,
    runs: u32,
    labs: Vec<String>,
    out: String,
}

fn parse_bench(args: &[String]) -> Result<BenchOpts> {
    let mut o = BenchOpts {
        seconds: 10,
        runs: 3,
        labs: vec!["tandem".into(), "linux".into(), "bridge".into()],
        out: "results/iperf.json".into(),
    };
    let mut a = Args::new(args, USAGE);
    while let Some(flag) = a.next_flag() {
        match flag {
            "--seconds" => o.seconds = a.number(flag, 1..=300)?,
            "--runs" => o.runs = a.number(flag, 1..=50)?,
            "--labs" => {
                let v = a.value(flag)?;
                o.labs = v.split(',').map(str::to_string).collect();
                if o.labs
                    .iter()
                    .any(|l| !["tandem", "linux", "bridge"].contains(&l.as_str()))
                {
                    return Err(a.bad(flag, v, "a comma-separated list of tandem, linux, bridge"));
                }
            }
            "--out" => o.out = a.value(flag)?.to_owned(),
            _ => return Err(a.unknown(flag)),
        }
    }
    Ok(o)
}

fn bench_one(which: &str, o: &BenchOpts, t0: Instant) -> Result<Value> {
    let lab = match which {
        "tandem" => Lab::single_node("bench")?,
        "linux" => Lab::linux_router("bench")?,
        _ => Lab::bridge_only("bench")?,
    };
    step(t0, &format!("{which}: lab {} built", lab.prefix()));
    let mut node: Option<Node> = None;
    if lab.kind() == (LabKind::Tandem { nodes: 1 }) {
        let mut n = lab.start_node(1)?;
        n.wait_ready(Duration::from_secs(30))?;
        step(t0, &format!("{which}: tandemd ready"));
        node = Some(n);
    }
    let ip = lab.server_ip();
    host::wait_for_ping(lab.client(), ip, Duration::from_secs(15))?;
    let _srv = IperfServer::start(lab.server(), ip, 5201)?;
    let mut runs = Vec::new();
    for r in 1..=o.runs {
        let res = host::iperf_client(lab.client(), ip, 5201, o.seconds, &[])?;
        step(
            t0,
            &format!(
                "{which}: run {r}/{}: {}, {} retransmits",
                o.runs,
                mbit(res.bits_per_second),
                res.retransmits
            ),
        );
        runs.push(
            json!({"bits_per_second": res.bits_per_second, "retransmits": res.retransmits,
                         "seconds": res.seconds}),
        );
    }
    let stats = match node.as_mut() {
        Some(n) => {
            n.proc.ensure_running()?;
            n.stats().ok()
        }
        None => None,
    };
    let bps: Vec<f64> = runs
        .iter()
        .filter_map(|r| r["bits_per_second"].as_f64())
        .collect();
    let mean = bps.iter().sum::<f64>() / bps.len().max(1) as f64;
    let min = bps.iter().copied().fold(f64::INFINITY, f64::min);
    let max = bps.iter().copied().fold(0.0, f64::max);
    Ok(
        json!({"lab": which, "runs": runs, "mean_bps": mean, "min_bps": min, "max_bps": max,
              "tandem_stats": stats}),
    )
}

fn bench_iperf(o: &BenchOpts) -> Result<()> {
    let t0 = Instant::now();
    if o.labs.iter().any(|l| l == "tandem") {
        node::find_bin("tandemd")?;
        node::find_bin("tandemctl")?;
    }
    let mut results = Vec::new();
    for which in &o.labs {
        results.push(bench_one(which, o, t0)?);
    }
    let mean_of = |l: &str| {
        results
            .iter()
            .find(|r| r["lab"] == l)
            .and_then(|r| r["mean_bps"].as_f64())
    };
    println!(
        "\n{:<8} {:>14} {:>14} {:>14} {:>8}",
        "lab", "mean", "min", "max", "retr"
    );
    for r in &results {
        let retr: u64 = r["runs"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x["retransmits"].as_u64()).sum())
            .unwrap_or(0);
        println!(
            "{:<8} {:>14} {:>14} {:>14} {:>8}",
            r["lab"].as_str().unwrap_or("?"),
            mbit(r["mean_bps"].as_f64().unwrap_or(0.0)),
            mbit(r["min_bps"].as_f64().unwrap_or(0.0)),
            mbit(r["max_bps"].as_f64().unwrap_or(0.0)),
            retr
        );
    }
    let ratio = |a: &str, b: &str| match (mean_of(a), mean_of(b)) {
        (Some(x), Some(y)) if y > 0.0 => Some(x / y),
        _ => None,
    };
    let r_linux = ratio("tandem", "linux");
    let r_bridge = ratio("tandem", "bridge");
    if let Some(r) = r_linux {
        println!("tandem / linux router: {r:.3}");
    }
    if let Some(r) = r_bridge {
        println!("tandem / bridge:       {r:.3}");
    }
    let doc = json!({
        "benchmark": "iperf3 TCP client -> server, single stream",
        "seconds": o.seconds,
        "runs": o.runs,
        "labs": results,
        "ratio_tandem_linux": r_linux,
        "ratio_tandem_bridge": r_bridge,
        "unix_time": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    });
    let out = std::path::Path::new(&o.out);
    if let Some(p) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(p)
            .map_err(|e| LabError::io(format!("creating {}", p.display()), e))?;
    }
    std::fs::write(out, pretty(&doc))
        .map_err(|e| LabError::io(format!("writing {}", out.display()), e))?;
    println!("wrote {}", out.display());
    Ok(())
}

/// The policy of the sync benchmark: UDP 9000 from the LAN.
const SYNC_POLICY: &str = r#"(rules: [(action: Pass, from: ["198.18.1.0/24"], proto: Udp, dst_ports: ["9000"])], default_action: Block)"#;

fn sync_value(n: &Node) -> Result<Value> {
    n.ctl(&["sync"])
}

fn udp_total(n: &Node) -> u64 {
    n.ctl(&[
        "conn", "list", "--proto", "udp", "--port", "9000", "--limit", "1",
    ])
    .ok()
    .and_then(|v| v["total"].as_u64())
    .unwrap_or(0)
}

/// How bench-sync opens its connections.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sender {
    /// A python loop of kernel UDP sockets (up to about 20,000 a second).
    Python,
    /// tandem-gen on the client's interface (af_packet): one frame per
    /// flow, paced, from many source addresses and ports.
    Gen,
}

/// Sends `flows` new UDP flows at `rate` per second from the client with
/// tandem-gen over af_packet; returns the rate it achieved.
fn gen_flows(lab: &Lab, rate: u64, flows: u64) -> Result<f64> {
    let gen = node::find_bin("tandem-gen")?;
    let client = lab.client();
    // The gateway's MAC (the active's), as the client's kernel learns it.
    client.exec_timeout(
        &["ping", "-n", "-c", "1", "-W", "1", lab::addr::LAN_GW],
        Duration::from_secs(3),
    )?;
    let neigh = client.run(&["ip", "neigh", "show", lab::addr::LAN_GW])?;
    let mac = neigh
        .split_whitespace()
        .skip_while(|w| *w != "lladdr")
        .nth(1)
        .ok_or_else(|| LabError::Other(format!("no MAC for the gateway: {neigh:?}")))?
        .to_string();
    let seconds = (flows as f64 / rate as f64).max(0.5);
    let o = client.exec_timeout(
        &[
            gen.to_str().unwrap_or("tandem-gen"),
            "--lcore",
            "1",
            "--no-huge",
            "--memory-mb",
            "256",
            "--port-a",
            "net_af_packet0,iface=eth0,framecnt=4096",
            "--port-b",
            "net_null0,no-rx=1",
            "--dst-mac",
            &mac,
            "--src-net",
            "198.18.1.100-198.18.1.199",
            "--dst-net",
            lab::addr::SERVER,
            "--dst-port",
            "9000",
            "--flows",
            &flows.to_string(),
            "--rate",
            &rate.to_string(),
            "--warmup",
            "0",
            "--duration",
            &format!("{seconds:.3}"),
        ],
        Duration::from_secs_f64(seconds + 30.0),
    )?;
    let report = json_last(&String::from_utf8_lossy(&o.stdout)).ok_or_else(|| {
        LabError::Other(format!(
            "tandem-gen gave no report: {}",
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .filter(|l| !l.starts_with("EAL"))
                .collect::<Vec<_>>()
                .join("\n")
        ))
    })?;
    Ok(report["tx_mpps"].as_f64().unwrap_or(0.0) * 1e6)
}

/// The last JSON line of `text`.
fn json_last(text: &str) -> Option<Value> {
    text.lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
}

/// One rate on a fresh two-node cluster (so the lag histogram holds this
/// rate only).
fn bench_sync_rate(rate: u64, seconds: u64, sender: Sender, t0: Instant) -> Result<Value> {
    let lab = Lab::two_nodes("bsync")?;
    let policy = tandem_tests::firewall::write_policy(&lab, "policy.ron", SYNC_POLICY)?;
    let mut nodes = Vec::new();
    // Room for every flow of the run (tandem-gen's runs open up to a
    // million).
    let flows = match sender {
        Sender::Python => (rate * seconds).min(60_000),
        Sender::Gen => (rate * seconds).min(1_000_000),
    };
    for i in 1..=2 {
        let mut cfg = lab.node_config(i).with_policy(&policy);
        if let Some(fw) = cfg.firewall.as_mut() {
            fw.connections = (flows as u32 + flows as u32 / 4).max(65536);
        }
        cfg.ha = Some(node::HaSection::lab(i));
        let mut n = lab.start_node_with(i, &cfg)?;
        n.wait_ready(Duration::from_secs(30))?;
        nodes.push(n);
    }
    nodes[0].ctl(&["haactive"])?;
    let end = Instant::now() + Duration::from_secs(10);
    while sync_value(&nodes[1])?["synchronized"] != true {
        if Instant::now() > end {
            return Err(LabError::Other("the passive never synchronized".into()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Paced sender: `flows` distinct UDP flows (source ports 2000 + i) at
    // `rate` per second.
    let script = format!(
        "import socket,time\nt=time.time()\nfor i in range({flows}):\n s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.bind(('0.0.0.0',2000+i)); s.sendto(b'x',('{}',9000)); s.close()\n if i % 50 == 49:\n  d=t+(i+1)/{rate}-time.time()\n  if d>0: time.sleep(d)\nprint(round(({flows})/(time.time()-t)),flush=True)\n",
        lab::addr::SERVER
    );
    let achieved = match sender {
        Sender::Python => {
            let o = lab.client().exec_timeout(
                &["python3", "-c", &script],
                Duration::from_secs(seconds * 4 + 30),
            )?;
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse()
                .unwrap_or(0.0)
        }
        Sender::Gen => gen_flows(&lab, rate, flows)?,
    };
    let end = Instant::now() + Duration::from_secs(15);
    let (mut active, mut passive) = (udp_total(&nodes[0]), udp_total(&nodes[1]));
    while passive < active && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(250));
        active = udp_total(&nodes[0]);
        passive = udp_total(&nodes[1]);
    }
    std::thread::sleep(Duration::from_millis(1100)); // counters publish once a second
    let s1 = sync_value(&nodes[0])?;
    let s2 = sync_value(&nodes[1])?;
    let lag = &s1["lag_ms"];
    // The passive kept up when it holds every connection the active
    // tracks, with nothing dropped on the way; whether the active saw every
    // flow offered (af_packet, the lab's two cores) is a separate figure.
    let kept_up = passive == active && s2["installs_dropped"] == 0 && s1["records_refused"] == 0;
    let active_saw_all = active >= flows * 99 / 100;
    let active_rate = if flows > 0 {
        active as f64 * achieved / flows as f64
    } else {
        0.0
    };
    let stats = nodes[0].ctl(&["stats"]).unwrap_or(Value::Null);
    let active_drops: serde_json::Map<String, Value> = stats["drops_total"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, v)| v.as_u64().unwrap_or(0) > 0)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    let rx_missed: u64 = stats["ports"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["rx_missed"].as_u64()).sum())
        .unwrap_or(0);
    step(
        t0,
        &format!(
            "rate {rate}/s (offered {achieved:.0}/s, tracked by the active {active_rate:.0}/s): active {active}/{flows}, passive {passive}, lag p50 {} p99 {} max {} ms, {}{}",
            lag[0], lag[2], lag[3],
            if kept_up { "the passive kept up" } else { "the passive did NOT keep up" },
            if active_saw_all { String::new() } else { format!(" (the active missed {} flows: rx_missed {rx_missed}, drops {active_drops:?})", flows - active.min(flows)) }
        ),
    );
    let bytes = s1["details"]["bytes_sent"].as_u64().unwrap_or(0);
    Ok(json!({
        "rate": rate, "sender": if sender == Sender::Gen { "tandem-gen" } else { "python" }, "achieved_rate": achieved, "flows": flows, "active": active, "passive": passive,
        "active_rate": active_rate, "active_saw_all": active_saw_all,
        "active_rx_missed": rx_missed, "active_drops": active_drops,
        "lag_ms_p50": lag[0], "lag_ms_p90": lag[1], "lag_ms_p99": lag[2], "lag_ms_max": lag[3],
        "records_queued": s1["records_queued"], "bytes_sent": bytes,
        "bytes_per_connection": if passive > 0 { bytes as f64 / passive as f64 } else { 0.0 },
        "installs_dropped": s2["installs_dropped"], "kept_up": kept_up,
    }))
}

fn bench_sync(args: &[String]) -> Result<()> {
    let mut rates = vec![2000u64, 5000, 10_000, 20_000];
    let mut seconds = 3u64;
    let mut sender = Sender::Python;
    let mut out = String::from("results/sync.json");
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--rates" => {
                rates = it
                    .next()
                    .map(|v| v.split(',').filter_map(|r| r.trim().parse().ok()).collect())
                    .unwrap_or_default();
            }
            "--seconds" => {
                seconds = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(3)
                    .clamp(1, 30)
            }
            "--sender" => {
                sender = match it.next().map(String::as_str) {
                    Some("python") => Sender::Python,
                    Some("tandem-gen") => Sender::Gen,
                    v => {
                        return Err(LabError::Other(format!(
                            "bench-sync: --sender {v:?}: allowed are python (kernel sockets, up to about 20,000/s) and tandem-gen"
                        )))
                    }
                }
            }
            "--out" => {
                out = it
                    .next()
                    .cloned()
                    .ok_or_else(|| LabError::Other("bench-sync: --out needs a file".into()))?
            }
            other => {
                return Err(LabError::Other(format!(
                    "bench-sync: unknown argument {other:?}\n{USAGE}"
                )))
            }
        }
    }
    if rates.is_empty() {
        return Err(LabError::Other(
            "bench-sync: --rates needs numbers, e.g. 2000,5000".into(),
        ));
    }
    let t0 = Instant::now();
    let mut results = Vec::new();
    for r in rates {
        results.push(bench_sync_rate(r, seconds, sender, t0)?);
    }
    let best = results
        .iter()
        .filter(|r| r["kept_up"] == true)
        .filter_map(|r| r["active_rate"].as_f64())
        .fold(0.0, f64::max);
    println!(
        "highest new-connection rate (tracked by the active) the passive kept up with: {best:.0}/s"
    );
    let doc = json!({"benchmark": "k2k replication of new UDP connections, two-node lab", "results": results, "highest_sustained_rate": best});
    if let Some(dir) = std::path::Path::new(&out).parent() {
        std::fs::create_dir_all(dir).ok();
    }
    std::fs::write(&out, pretty(&doc)).map_err(|e| LabError::io(format!("writing {out}"), e))?;
    println!("wrote {out}");
    Ok(())
}

/// The demo's policy: the LAN may reach the server's iperf3 and ping.
const DEMO_POLICY: &str = r#"(
    rules: [
        (name: "iperf", action: Pass, from: ["198.18.1.0/24"], proto: Tcp, dst_ports: ["5201"]),
        (name: "ping", action: Pass, from: ["198.18.1.0/24"], proto: Icmp, icmp_types: [8]),
    ],
    default_action: Block,
)"#;

/// The main job: a two-node cluster elects its active member, carries a
/// live transfer, loses the active to a kill -9, and keeps the transfer;
/// the killed member comes back as passive.
fn cluster_demo() -> Result<()> {
    use tandem_tests::cluster::{self, largest_gap};
    let t0 = Instant::now();
    step(
        t0,
        "building the two-node lab (client, server, fw1, fw2, switch, HA links main + backup) and starting tandemd on fw1 and fw2",
    );
    let mut c = cluster::start("demo", Some(DEMO_POLICY), &[], |_, _| {})?;
    let active = c.wait_single_active(Duration::from_secs(10))?;
    let passive = 1 - active;
    step(t0, &format!("fw{} elected active", active + 1));
    cluster::wait_ctl(
        &c.nodes[passive],
        &["sync"],
        "the passive synchronized",
        Duration::from_secs(15),
        |s| s["synchronized"] == true,
    )?;
    step(
        t0,
        &format!("fw{} synchronized (bulk received)", passive + 1),
    );
    host::wait_for_ping(c.lab.client(), lab::addr::SERVER, Duration::from_secs(20))?;
    for (i, n) in c.nodes.iter().enumerate() {
        step(t0, &format!("fw{} tandemctl hainfo (before):", i + 1));
        println!("{}", n.ctl_text(&["hainfo"])?);
    }
    let _srv = IperfServer::start(c.lab.server(), lab::addr::SERVER, 5201)?;
    step(
        t0,
        &format!(
            "iperf3 for 12 s client -> server through the cluster (100 ms intervals); kill -9 of fw{}'s tandemd after 4 s",
            active + 1
        ),
    );
    let cluster::Cluster { nodes, lab, .. } = &mut c;
    let client = lab.client();
    let started = Instant::now();
    let mut marks = Vec::new();
    let res = std::thread::scope(|s| -> Result<_> {
        let run =
            s.spawn(|| host::iperf_client(client, lab::addr::SERVER, 5201, 12, &["-i", "0.1"]));
        std::thread::sleep(Duration::from_secs(4));
        step(
            t0,
            &format!(
                "fw{} holds these connections (larval, replicated by K2K):",
                passive + 1
            ),
        );
        println!("{}", nodes[passive].ctl_text(&["conn", "list"])?);
        step(t0, &format!("kill -9 tandemd on fw{}", active + 1));
        let killed_at = Instant::now();
        nodes[active].proc.signal("KILL");
        marks.push(tandem_tests::chart::Mark {
            at_s: killed_at.duration_since(started).as_secs_f64(),
            label: format!("kill -9 of fw{}", active + 1),
        });
        let end = killed_at + Duration::from_secs(5);
        while cluster::role(&nodes[passive]).0 != "active" && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(5));
        }
        marks.push(tandem_tests::chart::Mark {
            at_s: started.elapsed().as_secs_f64(),
            label: format!("fw{} active (seen)", passive + 1),
        });
        step(
            t0,
            &format!(
                "fw{} active {:?} after the kill (seen through its control socket)",
                passive + 1,
                killed_at.elapsed()
            ),
        );
        step(t0, &format!("fw{} tandemctl hainfo (after):", passive + 1));
        println!("{}", nodes[passive].ctl_text(&["hainfo"])?);
        step(t0, &format!("restarting tandemd on fw{}", active + 1));
        cluster::restart(lab, nodes, active + 1, node::HaSection::lab(active + 1))?;
        cluster::wait_ctl(
            &nodes[active],
            &["sync"],
            "the restarted member synchronized",
            Duration::from_secs(15),
            |s| s["synchronized"] == true,
        )?;
        step(
            t0,
            &format!(
                "fw{} rejoined as {} and received a bulk sync",
                active + 1,
                cluster::role(&nodes[active]).0
            ),
        );
        run.join()
            .map_err(|_| LabError::Other("iperf3 thread panicked".into()))
    })??;
    let intervals = tandem_tests::tools::iperf_intervals(&res.raw);
    let gap = largest_gap(&intervals, 0.1);
    let mbps: Vec<f64> = intervals.iter().map(|b| b / 1e6).collect();
    step(t0, "iperf3 through the cluster, Mbit/s per 100 ms:");
    print!(
        "{}",
        tandem_tests::chart::terminal(&mbps, 0.1, "Mbit/s", 8, &marks)
    );
    let svg_path = std::path::Path::new("results").join("demo-failover.svg");
    let svg = tandem_tests::chart::svg(
        &mbps,
        0.1,
        "Mbit/s",
        &format!(
            "iperf3 through the tandem cluster, kill -9 of fw{} (largest gap {} ms)",
            active + 1,
            gap.as_millis()
        ),
        &marks,
    );
    match std::fs::create_dir_all("results").and_then(|()| std::fs::write(&svg_path, svg)) {
        Ok(()) => step(t0, &format!("chart written to {}", svg_path.display())),
        Err(e) => step(t0, &format!("could not write {}: {e}", svg_path.display())),
    }
    step(
        t0,
        &format!(
            "transfer completed: {} mean, {} retransmits, largest gap {} ms",
            mbit(res.bits_per_second),
            res.retransmits,
            gap.as_millis()
        ),
    );
    for (i, n) in c.nodes.iter().enumerate() {
        step(t0, &format!("fw{} tandemctl hainfo (end):", i + 1));
        println!("{}", n.ctl_text(&["hainfo"])?);
    }
    step(t0, &format!("fw{} HA event log:", passive + 1));
    println!("{}", c.nodes[passive].ctl_text(&["log", "-n", "30"])?);
    step(t0, "stopping both members and tearing the lab down");
    drop(c);
    if gap > Duration::from_secs(2) {
        return Err(LabError::Other(format!(
            "the transfer stalled for {} ms around the failover",
            gap.as_millis()
        )));
    }
    step(
        t0,
        "demo OK: the established transfer survived the loss of the active member",
    );
    Ok(())
}
