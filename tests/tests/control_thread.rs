//! The control thread that sends the heartbeats never waits on operator
//! requests, and a dead or stuck dataplane thread hands the active role to
//! the peer (issue 9). Two real tandemd members with the election on;
//! faults are injected with `tandemctl debug` (allowed by
//! `TANDEM_TEST_FAULTS=1`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tandem_tests::cluster::{self, role, wait_role, wait_synchronized, Cluster};
use tandem_tests::host;
use tandem_tests::lab::addr;
use tandem_tests::node::find_bin;
use tandem_tests::{require_root, Node, Proc};

/// The policy the members start with: UDP to the sink, pings.
const POLICY: &str = r#"(
    rules: [
        (action: Pass, from: ["198.18.1.0/24"], proto: Udp, dst_ports: ["9000"]),
        (action: Pass, from: ["198.18.1.0/24"], proto: Icmp, icmp_types: [8]),
    ],
    default_action: Block,
)"#;

/// Connections the active holds while the operator lists, flushes and
/// reloads. The issue's figure is 150,000; see `docs/ha.md` for what the
/// lab takes.
const CONNECTIONS: u64 = 150_000;

/// Rules of the policy reloaded under load.
const RELOAD_RULES: usize = 10_000;

/// The lab's dead time (`ha.dead_ms` default): the largest heartbeat gap
/// the peer sees must stay under half of it.
const DEAD_MS: f64 = 25.0;

/// A UDP receiver on the server that never reads: datagrams to it end in
/// its full buffer, so the server answers nothing (no ICMP unreachable
/// comes back through the firewall).
fn udp_sink(c: &Cluster) -> Proc {
    let script = format!(
        "import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('{}',9000))\nprint('bound',flush=True)\ntime.sleep(300)\n",
        addr::SERVER
    );
    c.lab
        .server()
        .spawn("udp-sink", &["python3", "-c", &script])
        .expect("starting the UDP sink")
}

/// Sends one UDP datagram to the server's port 9000 from each of `n`
/// (source address, source port) pairs (198.18.1.10 and up, ports 1024 and
/// up), paced at about 64 per millisecond, from a raw socket in the client
/// namespace: each opens one connection on the active.
fn open_udp_flows(c: &Cluster, n: u64) {
    let script = format!(
        r#"import socket,struct,time,errno
n={n}
dst=socket.inet_aton('{dst}')
s=socket.socket(socket.AF_INET,socket.SOCK_RAW,socket.IPPROTO_RAW)
s.setsockopt(socket.SOL_SOCKET,socket.SO_SNDBUF,4<<20)
t0=time.time()
for i in range(n):
    src=socket.inet_aton('198.18.1.%d' % (10 + i // 60000))
    ip=struct.pack('!BBHHHBBH4s4s',0x45,0,29,0,0,64,17,0,src,dst)
    udp=struct.pack('!HHHH',1024 + i % 60000,9000,9,0)+b'x'
    for _ in range(100):
        try:
            s.sendto(ip+udp,('{dst}',0))
            break
        except OSError as e:
            if e.errno != errno.ENOBUFS: raise
            time.sleep(0.001)
    if i % 64 == 63: time.sleep(0.001)
print('sent',n,round(time.time()-t0,2),flush=True)
"#,
        dst = addr::SERVER
    );
    let o = c
        .lab
        .client()
        .exec_timeout(&["python3", "-c", &script], Duration::from_secs(120))
        .expect("running the flow generator");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("sent"),
        "flow generator: {out} {}",
        String::from_utf8_lossy(&o.stderr)
    );
    eprintln!("flow generator: {}", out.trim());
}

/// Captures the heartbeats of the member at `from` arriving on (or, when
/// `outgoing`, leaving by) `iface` of `ns` with an AF_PACKET socket and
/// kernel timestamps (the capture's own scheduling does not count) until
/// `stop` exists (at most 90 s); its stdout ends with one JSON line: the
/// Unix time of every heartbeat, see [`Heartbeats`].
fn capture_heartbeats(
    ns: &tandem_tests::Netns,
    iface: &str,
    from: &str,
    outgoing: bool,
    stop: &std::path::Path,
) -> Proc {
    let script = format!(
        r#"import socket,struct,time,select,json,os
s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW,socket.htons(3))
s.bind(('{iface}',0))
s.setsockopt(socket.SOL_SOCKET,socket.SO_RCVBUF,4<<20)
s.setsockopt(socket.SOL_SOCKET,35,1)
src=socket.inet_aton('{from}')
print('listening',flush=True)
end=time.time()+90
times=[]
while time.time()<end and not os.path.exists('{stop}'):
    r,_,_=select.select([s],[],[],0.1)
    if not r: continue
    data,anc,flags,addr=s.recvmsg(2048,64)
    if (addr[2]==4)!={out} or len(data)<42 or data[12:14]!=b'\x08\x00' or data[23]!=17 or data[26:30]!=src: continue
    ihl=(data[14]&15)*4
    if struct.unpack('!H',data[14+ihl+2:14+ihl+4])[0]!=5405: continue
    ts=None
    for lvl,typ,v in anc:
        if lvl==socket.SOL_SOCKET and typ==35: ts=struct.unpack('qq',v[:16])
    if ts is None: continue
    times.append(ts[0]+ts[1]/1e9)
print(json.dumps({{"times":times}}),flush=True)
"#,
        stop = stop.display(),
        out = if outgoing { "True" } else { "False" }
    );
    ns.spawn("hb-capture", &["python3", "-c", &script])
        .expect("starting the heartbeat capture")
}

/// The heartbeats a capture saw (Unix times, s).
struct Heartbeats(Vec<f64>);

impl Heartbeats {
    /// The capture's output.
    fn parse(out: &str) -> Heartbeats {
        let v: Value = out
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .next_back()
            .unwrap_or(Value::Null);
        Heartbeats(
            v["times"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_f64)
                .collect(),
        )
    }

    /// How many arrived within `(from, to)`, and the largest gap between
    /// two consecutive ones of which the second is in it (ms, and when).
    fn window(&self, (from, to): (f64, f64)) -> (usize, f64, f64) {
        let mut worst = (0.0, 0.0);
        let mut n = 0;
        for w in self.0.windows(2) {
            if w[1] > from && w[1] <= to {
                n += 1;
                let gap = (w[1] - w[0]) * 1e3;
                if gap > worst.0 {
                    worst = (gap, w[1]);
                }
            }
        }
        (n, worst.0, worst.1)
    }
}

/// Now, in seconds since the Unix epoch.
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `firewall.connections` of `n`'s stats (counters, no table walk).
fn tracked(n: &Node) -> u64 {
    n.stats()
        .map_or(0, |s| s["firewall"]["connections"].as_u64().unwrap_or(0))
}

/// Waits (bounded) until `n` tracks at least `want` connections, or its
/// count stops growing for 2 s; returns the count.
fn wait_tracked(n: &Node, want: u64, timeout: Duration) -> u64 {
    let end = Instant::now() + timeout;
    let (mut last, mut since) = (0, Instant::now());
    loop {
        let got = tracked(n);
        if got >= want || Instant::now() >= end {
            return got;
        }
        if got != last {
            (last, since) = (got, Instant::now());
        } else if since.elapsed() > Duration::from_secs(2) {
            return got;
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// `tandemctl --json ARGS` with an answer timeout of `ms` and a process
/// limit of a minute: (exit code, stdout, stderr, time taken).
fn ctl_long(n: &Node, ms: u64, args: &[&str]) -> (Option<i32>, String, String, Duration) {
    let ctl = find_bin("tandemctl").expect("tandemctl");
    let mut cmd = std::process::Command::new(ctl);
    cmd.arg("--socket")
        .arg(&n.socket)
        .arg("--json")
        .arg("--timeout-ms")
        .arg(ms.to_string())
        .args(args);
    let t = Instant::now();
    let wall = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    };
    let from = wall(std::time::SystemTime::now());
    let o = tandem_tests::cmd::run_timeout(cmd, Duration::from_secs(60)).expect("tandemctl ran");
    eprintln!(
        "tandemctl {args:?}: from {from:.3} to {:.3} (Unix time)",
        wall(std::time::SystemTime::now())
    );
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
        t.elapsed(),
    )
}

/// The largest heartbeat gap `n` saw on each HA link, ms.
fn max_gaps(n: &Node) -> Vec<(String, f64)> {
    let info = n.ctl(&["hainfo"]).expect("hainfo");
    info["links"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["name"] != "last-resort")
        .map(|l| {
            (
                l["name"].as_str().unwrap_or("?").to_owned(),
                l["max_gap_ms"].as_f64().unwrap_or(f64::MAX),
            )
        })
        .collect()
}

/// The lines of `n`'s event log that say a path to the peer failed or
/// that the peer had to be checked over the data ports: a heartbeat gap of
/// the dead time or more (hainfo's `max_gap_ms` only counts gaps while the
/// path is alive, so such a gap does not show there).
fn path_failures(n: &Node) -> Vec<String> {
    let v = n.ctl(&["log", "--lines", "1000"]).expect("log");
    v["lines"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter(|l| l.contains("has failed") || l.contains("ICMP check") || l.contains("peer lost"))
        .map(str::to_owned)
        .collect()
}

fn swaps(n: &Node) -> u64 {
    n.ctl(&["hainfo"]).expect("hainfo")["swaps"]
        .as_u64()
        .unwrap_or(u64::MAX)
}

/// A policy with `n` filler rules (to hosts of 198.19.0.0/16, never used)
/// before the rules of [`POLICY`].
fn big_policy(n: usize) -> String {
    let mut s = String::from("(\n    rules: [\n");
    for i in 0..n {
        s += &format!(
            "        (action: Pass, from: [\"198.18.1.0/24\"], to: [\"198.19.{}.{}\"], proto: Tcp, dst_ports: [\"{}\"]),\n",
            i / 250,
            i % 250 + 1,
            1000 + i % 50_000
        );
    }
    s += "        (action: Pass, from: [\"198.18.1.0/24\"], proto: Udp, dst_ports: [\"9000\"]),\n";
    s += "        (action: Pass, from: [\"198.18.1.0/24\"], proto: Icmp, icmp_types: [8]),\n";
    s += "    ],\n    default_action: Block,\n)\n";
    s
}

/// How the control socket answered `hainfo` while something else ran.
#[derive(Debug, Default)]
struct Responsiveness {
    answers: u64,
    failures: Vec<String>,
    slowest: Duration,
}

/// Asks `n` for `hainfo` every 50 ms until `stop`, recording the answer
/// times.
fn watch_socket(n: &Node, stop: &AtomicBool, out: &Mutex<Responsiveness>) {
    let end = Instant::now() + Duration::from_secs(120);
    while !stop.load(Ordering::Relaxed) && Instant::now() < end {
        let t = Instant::now();
        let r = n.ctl(&["hainfo"]);
        let took = t.elapsed();
        let mut o = out.lock().unwrap_or_else(|e| e.into_inner());
        match r {
            Ok(_) => {
                o.answers += 1;
                o.slowest = o.slowest.max(took);
            }
            Err(e) => o.failures.push(format!("after {took:?}: {e}")),
        }
        drop(o);
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn conn_list_flush_and_a_big_policy_reload_leave_the_heartbeats_on_time() {
    require_root!();
    let c = cluster::start_on(
        tandem_tests::Lab::two_nodes("ctlbusy").expect("lab"),
        tandem_tests::heavy_lock(),
        Some(POLICY),
        &[],
        |_, cfg| {
            if let Some(fw) = cfg.firewall.as_mut() {
                fw.connections = 2 * CONNECTIONS as u32;
                fw.extra = "timeouts: (udp_unreplied: Some(600)),".into();
            }
        },
    )
    .expect("starting the cluster");
    let active = c
        .wait_single_active(Duration::from_secs(8))
        .expect("one member elected");
    let passive = 1 - active;
    wait_synchronized(
        &c.nodes[passive],
        "the passive synchronized",
        Duration::from_secs(10),
    )
    .expect("synchronized");
    let (a, p) = (&c.nodes[active], &c.nodes[passive]);

    let _sink = udp_sink(&c);
    let t = Instant::now();
    let mut held = 0;
    for _ in 0..3 {
        open_udp_flows(&c, CONNECTIONS);
        held = wait_tracked(a, CONNECTIONS, Duration::from_secs(30));
        if held >= CONNECTIONS {
            break;
        }
        eprintln!("the active tracks {held}: sending the missing flows again");
    }
    eprintln!(
        "the active tracks {held} connections after {:?}",
        t.elapsed()
    );
    assert!(
        held >= CONNECTIONS,
        "the active tracks {held} of {CONNECTIONS}"
    );
    let replicated = wait_tracked(p, held, Duration::from_secs(30));
    eprintln!("the passive holds {replicated}");

    // The heartbeats the active sends, as they reach the passive's HA
    // links (the passive's own scheduling does not count there).
    let stop_capture = c.lab.dir().join("stop-capture");
    let mut captures: Vec<(String, Proc)> = [
        ("HA-main", "ha-main", addr::HA_MAIN_1),
        ("HA-backup", "ha-backup", addr::HA_BACKUP_1),
    ]
    .into_iter()
    .map(|(name, iface, from)| {
        let from = if active == 0 {
            from
        } else if from == addr::HA_MAIN_1 {
            addr::HA_MAIN_2
        } else {
            addr::HA_BACKUP_2
        };
        (
            name.to_owned(),
            capture_heartbeats(c.lab.fw(passive + 1), iface, from, false, &stop_capture),
        )
    })
    .collect();
    let from = if active == 0 {
        addr::HA_MAIN_1
    } else {
        addr::HA_MAIN_2
    };
    captures.push((
        "HA-main as sent".into(),
        capture_heartbeats(c.lab.fw(active + 1), "ha-main", from, true, &stop_capture),
    ));
    let before = max_gaps(p);
    let swaps_before = (swaps(a), swaps(p));
    let failures_before = path_failures(p).len();
    eprintln!("largest heartbeat gaps on the passive before: {before:?}");

    // A baseline in the same run (5 s before the requests, 5 s or as long
    // as they took after them): the machine's own noise (other builds, the
    // kernel's packet path on this 2-core machine), nothing asked.
    thread::sleep(Duration::from_millis(300));
    let baseline_from = unix_now();
    thread::sleep(Duration::from_secs(5));
    let baseline = (baseline_from, unix_now());

    let stop = AtomicBool::new(false);
    let watch = Mutex::new(Responsiveness::default());
    let ops_from = unix_now();
    let (list, reload, flush) = thread::scope(|s| {
        s.spawn(|| watch_socket(a, &stop, &watch));
        thread::sleep(Duration::from_millis(300));
        let list = ctl_long(a, 60_000, &["conn", "list", "--limit", "10000000"]);
        let policy = a.cluster_dir().expect("a member's cluster directory");
        std::fs::write(policy.join("policy.ron"), big_policy(RELOAD_RULES))
            .expect("writing the big policy");
        let reload = ctl_long(a, 60_000, &["policy", "reload"]);
        let flush = ctl_long(a, 60_000, &["conn", "flush"]);
        thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        (list, reload, flush)
    });
    let ops = (ops_from, unix_now());
    // And as long again after, nothing asked.
    let after_from = unix_now();
    thread::sleep(Duration::from_secs_f64((ops.1 - ops.0).clamp(5.0, 10.0)));
    let after_ops = (after_from, unix_now());

    // Each request did its work.
    let listed: Value = serde_json::from_str(list.1.trim()).unwrap_or_else(|e| {
        panic!(
            "conn list: {e}; exit {:?}, stderr {}",
            list.0,
            list.2.trim()
        )
    });
    let shown = listed["connections"].as_array().map_or(0, Vec::len) as u64;
    let total = listed["total"].as_u64().unwrap_or(0);
    eprintln!("conn list: {shown} shown of {total} in {:?}", list.3);
    assert!(
        shown >= held && total >= held,
        "listed {shown} of {total}, {held} held"
    );
    eprintln!(
        "policy reload: {} in {:?}",
        reload.1.trim().chars().take(200).collect::<String>(),
        reload.3
    );
    let reloaded: Value = serde_json::from_str(reload.1.trim()).unwrap_or(Value::Null);
    assert_eq!(
        reload.0,
        Some(0),
        "policy reload: {} {}",
        reload.1,
        reload.2
    );
    assert!(
        reloaded["rules"].as_u64().unwrap_or(0) >= RELOAD_RULES as u64,
        "{reloaded}"
    );
    let flushed: Value = serde_json::from_str(flush.1.trim()).unwrap_or(Value::Null);
    eprintln!("conn flush: {flushed} in {:?}", flush.3);
    assert!(
        flushed["count"].as_u64().unwrap_or(0) >= held,
        "flush: {} {}",
        flush.1,
        flush.2
    );

    std::fs::write(&stop_capture, b"").expect("stopping the captures");
    let mut wire = Vec::new();
    for (name, proc) in &mut captures {
        proc.wait_timeout(Duration::from_secs(5));
        let hb = Heartbeats::parse(&proc.stdout());
        let (bn, bgap, bat) = hb.window(baseline);
        let (an, agap, aat) = hb.window(after_ops);
        let (bn, bgap, bat) = if agap > bgap {
            (bn + an, agap, aat)
        } else {
            (bn + an, bgap, bat)
        };
        let (n, gap, at) = hb.window(ops);
        eprintln!(
            "{name}: baseline {bn} heartbeats, largest gap {bgap:.1} ms (at {bat:.3}); \
             during the requests {n} heartbeats, largest gap {gap:.1} ms (at {at:.3})"
        );
        wire.push((name.clone(), (bn, bgap), (n, gap)));
    }

    // The control socket answered all along.
    let watch = watch.into_inner().unwrap_or_else(|e| e.into_inner());
    eprintln!(
        "hainfo on the active meanwhile: {} answers, slowest {:?}, failures {:?}",
        watch.answers, watch.slowest, watch.failures
    );

    // The heartbeats left on time: the peer saw no gap of half the dead
    // time, and nobody swapped.
    let after = max_gaps(p);
    eprintln!("largest heartbeat gaps on the passive after: {after:?}");
    let failures = path_failures(p);
    let new_failures = &failures[failures_before.min(failures.len())..];
    eprintln!("the passive's log: {new_failures:#?}");
    assert_eq!(role(a).0, "active", "no swap");
    assert_eq!(role(p).0, "passive", "no swap");
    assert_eq!((swaps(a), swaps(p)), swaps_before, "no swap");
    // What the peer's HA links received (hainfo's max_gap_ms, printed
    // above, also counts the passive's own lateness in reading them). The
    // bound is half the dead time. On this shared 2-core VM the kernel
    // (softirq work of the veth data path in other threads' system calls,
    // which the real-time control thread must wait for) sometimes delays a
    // heartbeat by ~10 ms with nothing asked: a gap no larger than the
    // same run's baseline (+2 ms) is that noise, not the requests; it is
    // reported, not counted. A blocked control thread (the issue: 165 ms)
    // fails either way, and a gap of the dead time shows in the log.
    for (link, (bn, bgap), (n, gap)) in &wire {
        assert!(
            *bn >= 100 && *n >= 100,
            "{link}: {bn} and {n} heartbeats captured"
        );
        if link.ends_with("as sent") {
            continue;
        }
        let noise = *gap >= DEAD_MS / 2.0 && *gap <= bgap + 2.0;
        if noise {
            eprintln!(
                "!!! {link}: gap {gap:.1} ms during the requests, {bgap:.1} ms in the baseline: the machine is that noisy now"
            );
        }
        assert!(
            *gap < DEAD_MS / 2.0 || noise,
            "{link}: the peer received the heartbeats with a gap of {gap:.1} ms while the requests ran (baseline {bgap:.1} ms, dead time {DEAD_MS} ms)"
        );
    }
    assert!(
        new_failures.is_empty(),
        "the peer lost the heartbeats for the dead time: {new_failures:#?}"
    );
    assert!(watch.failures.is_empty(), "{:?}", watch.failures);
    assert!(watch.answers >= 3, "{watch:?}");
    assert!(
        watch.slowest < Duration::from_millis(500),
        "hainfo took {:?} while the requests ran",
        watch.slowest
    );

    // Fault injection exists for tests only: refused without the variable.
    let (code, _, err, _) = ctl_long(a, 2000, &["debug", "panic-worker", "0"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("TANDEM_TEST_FAULTS=1"), "{err}");
    thread::sleep(Duration::from_millis(300));
    assert_eq!(role(a).0, "active", "the worker is still there");
    // The flush reached the passive too (deletes are replicated): both
    // tables are the same.
    cluster::verify_clean(&c.nodes[passive], 3).expect("a clean verify after the requests");
}

/// Both members with fault injection allowed, the election settled, the
/// passive synchronized and traffic through the active: (cluster, active,
/// passive).
fn faulty_cluster(tag: &str) -> (Cluster, usize, usize) {
    let env = [
        (1, "TANDEM_TEST_FAULTS", "1"),
        (2, "TANDEM_TEST_FAULTS", "1"),
    ];
    let c = cluster::start(tag, Some(POLICY), &env, |_, _| {}).expect("starting the cluster");
    let active = c
        .wait_single_active(Duration::from_secs(8))
        .expect("one member elected");
    let passive = 1 - active;
    wait_synchronized(
        &c.nodes[passive],
        "the passive synchronized",
        Duration::from_secs(10),
    )
    .expect("synchronized");
    host::wait_for_ping(c.lab.client(), addr::SERVER, Duration::from_secs(20))
        .expect("through the active");
    // Linux hosts ignore a gratuitous ARP that comes within `locktime`
    // (1 s) of the last update of the entry: let the hosts' ARP entries
    // for the gateways age past it, so the new active's GARPs count.
    thread::sleep(Duration::from_millis(1500));
    (c, active, passive)
}

/// Injects `fault` (tandemctl debug ARGS) into the active and waits
/// (bounded) for the passive to take over; returns how long it took.
fn fault_and_takeover(c: &Cluster, active: usize, passive: usize, args: &[&str]) -> Duration {
    let mut argv = vec!["debug"];
    argv.extend_from_slice(args);
    let t0 = Instant::now();
    let r = c.nodes[active].ctl(&argv).expect("tandemctl debug");
    assert_eq!(r["result"], "done", "{r}");
    wait_role(
        &c.nodes[passive],
        "active",
        "the peer takes over from a member whose worker failed",
        Duration::from_secs(3),
    )
    .expect("takeover");
    let took = t0.elapsed();
    eprintln!("{args:?}: the peer is active {took:?} after the fault");
    assert_eq!(role(&c.nodes[active]).0, "passive", "no dual active");
    took
}

fn log_lines(n: &Node) -> String {
    n.ctl(&["log", "--lines", "300"]).expect("log")["lines"].to_string()
}

#[test]
fn a_worker_that_panics_on_the_active_hands_the_role_to_the_peer_and_the_log_says_why() {
    require_root!();
    let (c, active, passive) = faulty_cluster("ctlpanic");
    let took = fault_and_takeover(&c, active, passive, &["panic-worker", "0"]);
    // Detection (at most 100 ms for a stall, at once for a death) plus a
    // heartbeat round and the swap; 1 s leaves room for a loaded machine.
    assert!(took < Duration::from_secs(1), "takeover after {took:?}");
    let old = &c.nodes[active];
    // The thread ends once the panic is unwound and printed (with a
    // backtrace, that takes a while): until then it is only stuck.
    cluster::wait_ctl(
        old,
        &["log", "--lines", "300"],
        "the log says why",
        Duration::from_secs(5),
        |v| {
            v["lines"]
                .to_string()
                .contains("worker 0 died (its thread ended")
        },
    )
    .expect("the log says the worker died");
    let info = old.ctl(&["hainfo"]).expect("hainfo");
    assert_eq!(info["local"]["quality"], 0, "{info}");
    assert!(
        info["quality_problems"]
            .to_string()
            .contains("worker 0 died"),
        "{info}"
    );
    // The peer forwards now; the member with the dead worker stays
    // passive, and its control socket still answers.
    host::wait_for_ping(c.lab.client(), addr::SERVER, Duration::from_secs(5))
        .expect("through the new active");
    thread::sleep(Duration::from_millis(500));
    assert_eq!(role(old).0, "passive");
    assert_eq!(role(&c.nodes[passive]).0, "active");
}

#[test]
fn a_worker_that_stalls_on_the_active_hands_the_role_over_and_is_logged_when_it_recovers() {
    require_root!();
    let (c, active, passive) = faulty_cluster("ctlstall");
    let took = fault_and_takeover(&c, active, passive, &["stall-worker", "0", "--ms", "2000"]);
    assert!(took < Duration::from_secs(1), "takeover after {took:?}");
    let old = &c.nodes[active];
    assert!(
        log_lines(old).contains("worker 0 stopped making progress (its loop has not turned for"),
        "the log says why"
    );
    // The worker turns again after 2 s: logged, quality back; the peer
    // stays active (equal quality: the current active stays).
    cluster::wait_ctl(
        old,
        &["hainfo"],
        "the quality comes back",
        Duration::from_secs(5),
        |v| v["local"]["quality"] == 100,
    )
    .expect("quality back");
    assert!(log_lines(old).contains("worker 0 makes progress again"));
    thread::sleep(Duration::from_millis(500));
    assert_eq!(role(&c.nodes[passive]).0, "active", "no swap back");
    assert_eq!(role(old).0, "passive");
    host::wait_for_ping(c.lab.client(), addr::SERVER, Duration::from_secs(5))
        .expect("through the new active");
}
