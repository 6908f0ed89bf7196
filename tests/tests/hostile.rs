//! A hostile host on a data segment (issue 9): it must not be able to block
//! a takeover, starve the control thread or learn the key. Two real
//! tandemd members with the election on, and a lab host of our own on the
//! WAN bridge that reflects the ICMP checks or floods HA-shaped frames.
//!
//! These tests need root (network namespaces): they fail, not skip,
//! without it.

use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tandem_tests::cluster::{self, role, wait_ctl, wait_synchronized, Cluster};
use tandem_tests::lab::addr;
use tandem_tests::netns::{Netns, Proc};
use tandem_tests::node::HaSection;
use tandem_tests::{link, require_root, tools};

/// The lab's HA timing (defaults): dead time and ICMP check timeout.
const DEAD_MS: f64 = 25.0;
const CHECK_MS: f64 = 10.0;
/// The dead time of the last resort (the data ports): four times the HA
/// links', at least 100 ms (`Config::dead_time_of`).
const LAST_RESORT_DEAD_MS: f64 = 100.0;

/// Pings and iperf3 through, as in the election tests.
const POLICY: &str = r#"(
    rules: [
        (action: Pass, from: ["198.18.1.0/24"], proto: Tcp, dst_ports: ["5201"]),
        (action: Pass, from: ["198.18.1.0/24"], proto: Icmp, icmp_types: [8]),
    ],
    default_action: Block,
)"#;

fn start(tag: &str) -> Cluster {
    cluster::start(tag, Some(POLICY), &[], |_, _: &mut HaSection| {}).expect("starting the cluster")
}

/// Waits for the single active member; returns (active, passive).
fn settled(c: &Cluster) -> (usize, usize) {
    let a = c
        .wait_single_active(Duration::from_secs(8))
        .expect("one member elected");
    wait_synchronized(
        &c.nodes[1 - a],
        "the passive synchronized",
        Duration::from_secs(10),
    )
    .expect("synchronized");
    (a, 1 - a)
}

fn hainfo(n: &tandem_tests::Node) -> Value {
    n.ctl(&["hainfo"]).expect("hainfo")
}

fn log_lines(n: &tandem_tests::Node) -> Vec<String> {
    n.ctl(&["log", "--lines", "400"]).expect("log")["lines"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|l| l.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Milliseconds since midnight (UTC) of an event-log line
/// (`YYYY-MM-DD HH:MM:SS.mmm ...`).
fn line_ms(line: &str) -> Option<u64> {
    let t = line.get(11..23)?;
    let h: u64 = t.get(0..2)?.parse().ok()?;
    let m: u64 = t.get(3..5)?.parse().ok()?;
    let s: u64 = t.get(6..8)?.parse().ok()?;
    let ms: u64 = t.get(9..12)?.parse().ok()?;
    Some(((h * 60 + m) * 60 + s) * 1000 + ms)
}

/// Milliseconds since midnight (UTC) now.
fn now_ms_of_day() -> u64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_millis() % 86_400_000) as u64
}

/// A lab host of our own, `<prefix>-evil`, on the WAN bridge (198.18.2.66),
/// promiscuous; dropped (killed, deleted) with the returned guard.
struct EvilHost {
    ns: Netns,
}

impl EvilHost {
    fn on_wan(lab: &tandem_tests::Lab) -> EvilHost {
        let ns = Netns::create(&format!("{}-evil", lab.prefix()), &lab.dir().join("logs"))
            .expect("evil namespace");
        link::veth(&ns, "eth0", lab.switch(), "evil").expect("veth");
        link::attach(lab.switch(), "wan", "evil").expect("attach");
        link::add_addr(&ns, "eth0", "198.18.2.66/24").expect("address");
        link::set_up(&ns, "eth0").expect("up");
        ns.run(&["ip", "link", "set", "eth0", "promisc", "on"])
            .expect("promisc");
        EvilHost { ns }
    }

    fn spawn(&self, label: &str, script: &str, args: &[&str]) -> Proc {
        let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        tools::spawn_tool(&self.ns, label, script, &args).expect("evil tool")
    }
}

impl Drop for EvilHost {
    fn drop(&mut self) {
        self.ns.kill_all();
    }
}

/// The last JSON line of a finished tool with a "result".
fn result_of(p: &mut Proc, timeout: Duration) -> Value {
    p.wait_timeout(timeout);
    tools::json_lines(&p.stdout())
        .into_iter()
        .rev()
        .find(|v| v.get("result").is_some())
        .unwrap_or_else(|| panic!("no result from {}: {}", p.label(), p.logs_tail(20)))
}

/// (a) Both HA links cut, the peers hear each other over the data ports
/// (last resort); a host on the WAN segment reflects every ICMP check it
/// sees (the switch floods every frame: ageing 0), and the active is
/// killed. The passive must take over within the dead time plus the
/// check, as if the reflector were not there, and say it refused the
/// reflection.
#[test]
fn a_host_reflecting_the_icmp_checks_does_not_block_the_takeover() {
    require_root!();
    let mut c = start("hrefl");
    let (a, p) = settled(&c);
    c.lab
        .switch()
        .run(&[
            "ip",
            "link",
            "set",
            "dev",
            "wan",
            "type",
            "bridge",
            "ageing_time",
            "0",
        ])
        .expect("the WAN switch floods everything");
    let evil = EvilHost::on_wan(&c.lab);
    for l in ["ha-main", "ha-backup"] {
        link::set_link(c.lab.fw(a + 1), l, false).expect("cut");
    }
    wait_ctl(
        &c.nodes[p],
        &["hainfo"],
        "the passive hears the active over the data ports only",
        Duration::from_secs(5),
        |i| {
            i["links"].as_array().is_some_and(|ls| {
                ls.iter()
                    .all(|l| (l["name"] == "last-resort") == (l["peer_heard"] == true))
            })
        },
    )
    .expect("last resort");
    // Let the passive learn the active's MAC from its last-resort
    // heartbeats: the check then goes unicast, the switch floods it.
    thread::sleep(Duration::from_millis(300));
    let before = hainfo(&c.nodes[p])["data_path"].clone();
    let mut reflector = evil.spawn(
        "reflector",
        "ha_reflector.py",
        &["--iface", "eth0", "--duration", "6"],
    );
    let survivor = c.nodes.remove(p);
    let mut victim = c.nodes.remove(0);
    let killed_at = now_ms_of_day();
    let t = Instant::now();
    victim.proc.signal("KILL");
    let end = t + Duration::from_secs(3);
    while role(&survivor).0 != "active" && Instant::now() < end {
        thread::sleep(Duration::from_millis(5));
    }
    let polled = t.elapsed();
    drop(victim);
    thread::sleep(Duration::from_millis(300));
    let lines = log_lines(&survivor);
    let log = lines.join("\n");
    assert_eq!(role(&survivor).0, "active", "the passive took over: {log}");
    let swap = lines
        .iter()
        .find(|l| l.contains("swap: passive -> active"))
        .unwrap_or_else(|| panic!("a swap line: {log}"));
    let took = line_ms(swap)
        .map(|s| (s + 86_400_000 - killed_at) % 86_400_000)
        .expect("timestamp");
    let refl = result_of(&mut reflector, Duration::from_secs(8));
    let after = hainfo(&survivor)["data_path"].clone();
    eprintln!(
        "takeover {took} ms after the kill by the log ({polled:?} polled); reflector {refl}; data path before {before} after {after}"
    );
    // The precondition: the hostile host saw the check and reflected it.
    assert!(
        refl["checks"].as_u64() >= Some(1),
        "the reflector saw no check: the test proves nothing ({refl})"
    );
    assert!(
        after["reflected"].as_u64() > before["reflected"].as_u64(),
        "the reflections were counted: {after}"
    );
    assert_eq!(
        after["answers_accepted"], before["answers_accepted"],
        "no reflection was taken for an answer: {after}"
    );
    assert!(
        log.contains("ICMP check: refused a reply")
            && log.contains("a reflection of our own frame"),
        "the log says the reflection was refused: {log}"
    );
    assert!(log.contains("to the peer's MAC"), "{log}");
    assert!(log.contains("the peer is dead"), "{log}");
    // The last resort's dead time (the check ends with it), and a margin
    // for a loaded 2-core machine (the kill is timed by the test's clock,
    // the swap by the log's, to 1 ms).
    let limit = LAST_RESORT_DEAD_MS + CHECK_MS + 150.0;
    assert!(
        (took as f64) < limit,
        "takeover {took} ms after the kill, limit {limit} ms: {log}"
    );
    drop(survivor);
}

/// The largest recent heartbeat gap on the HA links of `n`, per link:
/// (name, largest gap of the last 4-8 s, largest since start), ms.
fn gaps(n: &tandem_tests::Node) -> Vec<(String, f64, f64)> {
    hainfo(n)["links"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["name"] != "last-resort")
        .map(|l| {
            (
                l["name"].as_str().unwrap_or("?").to_owned(),
                l["recent_max_gap_ms"].as_f64().unwrap_or(f64::MAX),
                l["max_gap_ms"].as_f64().unwrap_or(f64::MAX),
            )
        })
        .collect()
}

/// The largest recent gap over both links of both members.
fn worst(g: &[Vec<(String, f64, f64)>]) -> f64 {
    g.iter().flatten().map(|x| x.1).fold(0.0, f64::max)
}

/// What one flood did: the flooder's result, the recent heartbeat gaps
/// of both members right after it, and the slowest control-socket answer
/// during it.
struct Flood {
    result: Value,
    gaps: Vec<Vec<(String, f64, f64)>>,
    slowest_status: Duration,
}

/// Floods the WAN segment from `evil` with frames of `shape` ("ha" or
/// "junk") for 8 s (the whole of the gap window), asking both members
/// for their status every 400 ms meanwhile.
fn flood(c: &Cluster, evil: &EvilHost, shape: &str) -> Flood {
    let mut p = evil.spawn(
        &format!("flood-{shape}"),
        "ha_flood.py",
        &[
            "--iface",
            "eth0",
            "--addr",
            addr::WAN_GW,
            "--cluster",
            "7",
            "--duration",
            "8",
            "--shape",
            shape,
        ],
    );
    let mut slowest = Duration::ZERO;
    for _ in 0..19 {
        thread::sleep(Duration::from_millis(400));
        for n in &c.nodes {
            let t = Instant::now();
            let s = n
                .status()
                .expect("the control socket answers under the flood");
            slowest = slowest.max(t.elapsed());
            assert!(s["role"].is_string(), "{s}");
        }
    }
    let result = result_of(&mut p, Duration::from_secs(10));
    Flood {
        result,
        gaps: c.nodes.iter().map(gaps).collect(),
        slowest_status: slowest,
    }
}

/// (b) A flood of heartbeat-, check- and answer-shaped frames (valid
/// looking, wrong key) on the WAN segment at the highest rate one host
/// process makes here, for 8 s: no swap, the HA-link heartbeats keep
/// arriving on time (largest gap under half the dead time), the control
/// socket answers, and the policing counters show the flood. For
/// comparison, the same flood with an identifier that is not tandem's
/// runs first.
#[test]
fn a_flood_of_ha_shaped_frames_neither_swaps_nor_delays_the_heartbeats() {
    require_root!();
    let c = start("hflood");
    let (a, p) = settled(&c);
    let evil = EvilHost::on_wan(&c.lab);
    // A quiet baseline window (the gap statistics cover the last 4-8 s).
    thread::sleep(Duration::from_millis(8500));
    let quiet: Vec<_> = c.nodes.iter().map(gaps).collect();
    let swaps = |n: &tandem_tests::Node| hainfo(n)["swaps"].as_u64().unwrap_or(99);
    let swaps_before = (swaps(&c.nodes[a]), swaps(&c.nodes[p]));
    let junk = flood(&c, &evil, "junk");
    let before: Vec<Value> = c
        .nodes
        .iter()
        .map(|n| hainfo(n)["data_path"].clone())
        .collect();
    let ha = flood(&c, &evil, "ha");
    let after: Vec<Value> = c
        .nodes
        .iter()
        .map(|n| hainfo(n)["data_path"].clone())
        .collect();
    eprintln!(
        "largest recent HA-link heartbeat gap: quiet {:.1} ms, junk flood {:.1} ms ({}), HA-shaped flood {:.1} ms ({}); slowest status {:?} / {:?}",
        worst(&quiet),
        worst(&junk.gaps),
        junk.result,
        worst(&ha.gaps),
        ha.result,
        junk.slowest_status,
        ha.slowest_status
    );
    for i in 0..2 {
        eprintln!(
            "fw{}: gaps quiet {:?} junk {:?} ha {:?}; data path before {} after {}",
            i + 1,
            quiet[i],
            junk.gaps[i],
            ha.gaps[i],
            before[i],
            after[i]
        );
    }
    assert!(
        ha.result["sent"].as_u64() > Some(100_000),
        "the flood did not happen: {}",
        ha.result
    );
    assert_eq!(
        (swaps(&c.nodes[a]), swaps(&c.nodes[p])),
        swaps_before,
        "a swap under the flood"
    );
    assert_eq!(role(&c.nodes[a]).0, "active");
    assert_eq!(role(&c.nodes[p]).0, "passive");
    // Half the dead time; on a machine whose two cores are busy with
    // other work (builds of other engineers) the heartbeats are late by
    // themselves, so the bound is then the same run's own noise: the
    // quiet window and the flood of the same rate with a foreign
    // identifier (LAB.md: measure against a baseline of the same run).
    // The HA-shaped flood must add no more than half again to it (the
    // largest gap of a window is a single sample: on this shared machine
    // it moves by a few milliseconds between two windows of the same
    // load), and never come near the dead time.
    let noise = worst(&quiet).max(worst(&junk.gaps));
    let limit = (DEAD_MS / 2.0).max(noise * 1.5).min(DEAD_MS * 0.8);
    eprintln!("heartbeat gap limit {limit:.1} ms (noise {noise:.1} ms)");
    // A flood that starves the control thread does so in every window; a
    // stall of the whole shared machine (seen as one late heartbeat on
    // both members at once) comes and goes. Over the limit once, the
    // HA-shaped flood runs again and the better window is judged.
    let mut judged = ha.gaps.clone();
    if worst(&judged) >= limit {
        let again = flood(&c, &evil, "ha");
        eprintln!(
            "over the limit: a second HA-shaped flood window gives {:.1} ms ({:?})",
            worst(&again.gaps),
            again.gaps
        );
        assert_eq!(
            (swaps(&c.nodes[a]), swaps(&c.nodes[p])),
            swaps_before,
            "a swap under the second flood"
        );
        if worst(&again.gaps) < worst(&judged) {
            judged = again.gaps;
        }
    }
    for (i, node_gaps) in judged.iter().enumerate() {
        for (name, recent, _) in node_gaps {
            assert!(
                *recent < limit,
                "fw{} {name}: a heartbeat gap of {recent:.1} ms under the flood, in the better of two windows (limit {limit:.1} ms: half the dead time, or 1.5 times this run's noise {noise:.1} ms)",
                i + 1,
            );
        }
        let d = |k: &str| after[i][k].as_u64().unwrap_or(0) - before[i][k].as_u64().unwrap_or(0);
        assert!(
            d("policed") > 100_000,
            "fw{}: the flood was policed: {}",
            i + 1,
            after[i]
        );
        assert!(
            d("unauthentic") > 100,
            "fw{}: what passed the buckets failed authentication: {}",
            i + 1,
            after[i]
        );
        assert_eq!(
            d("channel_full"),
            0,
            "fw{}: the flood never filled the channel to the control thread: {}",
            i + 1,
            after[i]
        );
        assert_eq!(
            d("answers_accepted") + d("checks_answered"),
            0,
            "fw{}: nothing of the flood was answered or accepted: {}",
            i + 1,
            after[i]
        );
    }
    assert!(
        ha.slowest_status < Duration::from_secs(1),
        "slowest {:?}",
        ha.slowest_status
    );
    // hainfo says whether the cluster's file (it holds the key) is
    // readable by others than root, as the file is.
    use std::os::unix::fs::MetadataExt;
    let key_file = c.nodes[a]
        .cluster_dir()
        .expect("a member's cluster directory")
        .join("cluster.ron");
    let m = std::fs::metadata(key_file).expect("cluster.ron");
    let exposed = m.mode() & 0o077 != 0 || m.uid() != 0;
    let w = hainfo(&c.nodes[a])["key_file_warning"].clone();
    assert_eq!(
        w.as_str().is_some_and(|w| w.contains("chmod 600")),
        exposed,
        "mode {:o}: {w}",
        m.mode()
    );
    // The flood cost the state sync nothing: both tables are the same.
    cluster::verify_clean(&c.nodes[p], 3).expect("a clean verify after the flood");
}

/// A member alone at start-up checks with a broadcast ICMP check (it
/// knows no peer MAC) before it takes the role: a host on the WAN
/// segment that reflects the check must not keep it passive (before,
/// any reflection of our own nonce and tag was an answer: no member
/// would ever have become active).
#[test]
fn a_reflector_does_not_keep_a_lone_member_from_starting_active() {
    require_root!();
    let lock = tandem_tests::heavy_lock();
    let lab = tandem_tests::Lab::two_nodes("hralone").expect("lab");
    let policy = tandem_tests::firewall::write_policy(&lab, "policy.ron", POLICY).unwrap();
    let evil = EvilHost::on_wan(&lab);
    let mut reflector = evil.spawn(
        "reflector",
        "ha_reflector.py",
        &["--iface", "eth0", "--duration", "20", "--max", "3"],
    );
    let mut cfg = lab.node_config(2).with_policy(&policy);
    cfg.ha = Some(HaSection::lab(2));
    let mut fw2 = lab.start_node_with(2, &cfg).expect("fw2");
    fw2.wait_ready(Duration::from_secs(30)).expect("fw2 ready");
    cluster::wait_role(
        &fw2,
        "active",
        "fw2 alone takes the role despite the reflector",
        Duration::from_secs(5),
    )
    .expect("active alone");
    let lines = log_lines(&fw2);
    let log = lines.join("\n");
    let at = |needle: &str| {
        lines
            .iter()
            .find(|l| l.contains(needle))
            .and_then(|l| line_ms(l))
            .unwrap_or_else(|| panic!("{needle:?} in the log: {log}"))
    };
    let took = (at("swap: passive -> active") + 86_400_000
        - at("peer silent on every path: ICMP check"))
        % 86_400_000;
    let info = hainfo(&fw2);
    reflector.signal("TERM");
    let refl = tools::json_lines(&reflector.stdout());
    let reflected = refl.iter().filter(|v| v["event"] == "reflected").count();
    eprintln!(
        "check to takeover {took} ms; reflector reflected {reflected} checks; data path {}",
        info["data_path"]
    );
    assert!(
        reflected >= 1,
        "the reflector saw no check: the test proves nothing: {refl:?}"
    );
    assert!(
        log.contains("ICMP check on 2 data ports (0 to the peer's MAC)"),
        "broadcast checks: {log}"
    );
    assert!(
        log.contains("a reflection of our own frame"),
        "the refusal is logged: {log}"
    );
    assert!(log.contains("alone at start-up"), "{log}");
    assert!(
        info["data_path"]["reflected"].as_u64() >= Some(1),
        "{}",
        info["data_path"]
    );
    assert_eq!(info["data_path"]["answers_accepted"], 0, "{info}");
    assert!(
        (took as f64) < CHECK_MS + 150.0,
        "the check took {took} ms to give up: {log}"
    );
    drop(reflector);
    drop(fw2);
    drop(evil);
    drop(lab);
    drop(lock);
}
