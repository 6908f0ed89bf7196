//! What an operator sees (issue 13), on two real tandemd members:
//! - `hainfo -v` field by field on both members (model, version, mode and
//!   since when, versions, licence, boot, state, configuration, links),
//!   and `hamode`;
//! - the Prometheus endpoint (`control.metrics`) scraped over HTTP by a
//!   monitoring client (urllib, and the exposition-format parser of the
//!   Prometheus project's Python client): each member's role, quality,
//!   HA links, sync and dataplane counters; during a kill -9 failover the
//!   passive's scrapes show it become active.
//!
//! Needs root (network namespaces): fails, not skips, without it.

use std::time::{Duration, Instant};

use serde_json::Value;
use tandem_tests::cluster::{self, Cluster};
use tandem_tests::lab::{addr, heavy_lock, Lab};
use tandem_tests::{require_root, tools};

const METRICS_PORT: u16 = 9105;

const POLICY: &str = tandem_tests::firewall::TRANSFER_AND_FLOWS;

/// [`POLICY`] with its UDP rule named and logged.
const POLICY_LOG: &str = r#"(
    rules: [
        (action: Pass, from: ["198.18.1.0/24"], proto: Tcp, dst_ports: ["5201"]),
        (name: "udp9000", action: Pass, from: ["198.18.1.0/24"], proto: Udp, dst_ports: ["9000"], log: true),
    ],
    default_action: Block,
)"#;

/// Member `i`'s (1 or 2) metrics address: its main HA address.
fn metrics_addr(i: usize) -> &'static str {
    if i == 1 {
        addr::HA_MAIN_1
    } else {
        addr::HA_MAIN_2
    }
}

fn start(tag: &str) -> Cluster {
    let lab = Lab::two_nodes(tag).expect("the lab");
    cluster::start_on(lab, heavy_lock(), Some(POLICY), &[], |i, cfg| {
        cfg.metrics = Some(format!("{}:{METRICS_PORT}", metrics_addr(i)));
    })
    .expect("the cluster")
}

/// One scrape of member `i` (1 or 2), from its own namespace: the samples
/// by `name{label=value,...}` (labels sorted).
fn scrape(c: &Cluster, i: usize) -> serde_json::Map<String, Value> {
    let args: Vec<String> = [
        "--addr",
        metrics_addr(i),
        "--port",
        &METRICS_PORT.to_string(),
        "--timeout",
        "5",
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    let v = tools::run_tool(
        c.lab.fw(i),
        "prom_scrape.py",
        &args,
        Duration::from_secs(10),
    )
    .expect("a scrape the parser accepts");
    assert_eq!(v["status"], 200, "{v}");
    assert!(
        v["content_type"]
            .as_str()
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
        "{v}"
    );
    v["samples"].as_object().expect("samples").clone()
}

fn sample(s: &serde_json::Map<String, Value>, key: &str) -> f64 {
    s.get(key)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("no sample {key} in {:?}", s.keys().collect::<Vec<_>>()))
}

fn local_role_key(serial: &str) -> String {
    format!("tandem_ha_role_active{{member=local,serial={serial}}}")
}

#[test]
fn the_metrics_endpoint_shows_both_members_and_a_failover() {
    require_root!();
    let mut c = start("metrics");
    let (a, p) = c.settled().expect("one active, the passive synchronized");
    let serial = |i: usize| format!("TDLAB000{}", i + 1);
    let sent = cluster::open_udp_flows(&c.lab, 500, 9000, 1000).expect("UDP flows");
    assert_eq!(sent, 500);
    cluster::wait_same_table(&c.nodes[a], &c.nodes[p], 500, Duration::from_secs(15))
        .expect("the passive has the flows");

    let act = scrape(&c, a + 1);
    let pas = scrape(&c, p + 1);
    eprintln!(
        "a scrape of the active, {} samples; some of them:",
        act.len()
    );
    for (k, v) in act.iter().filter(|(k, _)| {
        k.starts_with("tandem_ha_")
            || k.starts_with("tandem_sync_")
            || k.starts_with("tandem_firewall_")
    }) {
        eprintln!("  {k} {v}");
    }
    assert_eq!(sample(&act, &local_role_key(&serial(a))), 1.0);
    assert_eq!(sample(&pas, &local_role_key(&serial(p))), 0.0);
    assert_eq!(sample(&act, "tandem_active{}"), 1.0);
    assert_eq!(sample(&pas, "tandem_active{}"), 0.0);
    for (s, passive) in [(&act, false), (&pas, true)] {
        assert_eq!(sample(s, "tandem_scrape_error{source=status}"), 0.0);
        assert_eq!(sample(s, "tandem_scrape_error{source=stats}"), 0.0);
        for link in ["HA-main", "HA-backup"] {
            assert_eq!(
                sample(s, &format!("tandem_ha_link_carrier{{link={link}}}")),
                1.0
            );
            assert_eq!(
                sample(s, &format!("tandem_ha_link_peer_heard{{link={link}}}")),
                1.0
            );
            assert!(
                sample(
                    s,
                    &format!("tandem_ha_link_heartbeats_total{{link={link}}}")
                ) > 10.0
            );
        }
        assert!(sample(s, "tandem_firewall_connections{}") >= 500.0);
        if passive {
            assert_eq!(sample(s, "tandem_sync_synchronized{}"), 1.0);
        }
        assert_eq!(sample(s, "tandem_interface_up{interface=in}"), 1.0);
        for iface in ["in", "out"] {
            assert_eq!(
                sample(
                    s,
                    &format!("tandem_ha_quality_interface_up{{interface={iface}}}")
                ),
                1.0
            );
            assert_eq!(
                sample(
                    s,
                    &format!("tandem_ha_quality_interface_weight{{interface={iface}}}")
                ),
                100.0
            );
        }
        assert!(s
            .keys()
            .any(|k| k.starts_with("tandem_port_rx_packets_total{interface=in}")));
        assert!(s
            .keys()
            .any(|k| k.starts_with("tandem_worker_rx_packets_total{worker=0}")));
    }
    assert_eq!(
        sample(
            &pas,
            &format!("tandem_ha_quality{{member=peer,serial={}}}", serial(a))
        ),
        100.0
    );
    assert!(sample(&act, "tandem_sync_records_queued_total{}") >= 500.0);

    // kill -9 of the active: the passive's scrapes show the role change.
    let before = scrape(&c, p + 1);
    let alive = format!("tandem_ha_peer_alive{{serial={}}}", serial(a));
    assert_eq!(sample(&before, &alive), 1.0);
    let swaps_before = sample(&before, "tandem_ha_swaps_total{}");
    c.nodes[a].proc.signal("KILL");
    let t0 = Instant::now();
    let mut seen = Vec::new();
    let after = loop {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the passive's metrics never showed it active: {seen:?}"
        );
        let s = scrape(&c, p + 1);
        let role = sample(&s, &local_role_key(&serial(p)));
        seen.push((t0.elapsed().as_millis(), role));
        if role == 1.0 {
            break s;
        }
    };
    eprintln!("the passive's scrapes after the kill (ms, role_active): {seen:?}");
    assert_eq!(sample(&after, "tandem_active{}"), 1.0);
    assert_eq!(
        sample(&after, "tandem_ha_swaps_total{}"),
        swaps_before + 1.0
    );
    let t1 = Instant::now();
    while sample(&scrape(&c, p + 1), &alive) != 0.0 {
        assert!(
            t1.elapsed() < Duration::from_secs(5),
            "the dead peer still shown alive"
        );
    }
}

/// `tandemctl hainfo -v` on both members, field by field, and `hamode`.
#[test]
fn hainfo_v_shows_every_field_for_both_members_and_hamode_the_mode() {
    require_root!();
    let c = start("hainfo");
    let (a, p) = c.settled().expect("one active, the passive synchronized");
    let serial = |i: usize| format!("TDLAB000{}", i + 1);
    for (i, role, other) in [(a, "active", "passive"), (p, "passive", "active")] {
        let n = &c.nodes[i];
        let v = cluster::wait_ctl(
            n,
            &["hainfo"],
            "the peer's identity and configuration known",
            Duration::from_secs(10),
            |v| {
                v["peer"]["model"] == "TD-LAB"
                    && v["config"]["synchronized"] == true
                    && v["links"][1]["peer_view"]["state"] == "OK"
            },
        )
        .expect("hainfo complete");
        // The peer's own account: its role's start as it says it, the
        // same as the peer's hainfo shows for itself; its file sync; its
        // view of each link.
        let theirs = c.nodes[1 - i].ctl(&["hainfo"]).expect("the peer's hainfo");
        assert_eq!(
            v["peer"]["since_unix"], theirs["local"]["since_unix"],
            "the peer's own time: {v}"
        );
        assert!(v["peer"].get("since_observed").is_none(), "{v}");
        assert_eq!(v["peer"]["file_sync"], "none running", "{v}");
        for (l, t) in v["links"]
            .as_array()
            .unwrap()
            .iter()
            .zip(theirs["links"].as_array().unwrap())
            .take(2)
        {
            assert_eq!(l["peer_view"]["name"], t["name"], "{l}");
            assert_eq!(l["peer_view"]["state"], "OK", "{l}");
            assert_eq!(
                l["peer_view"]["since_unix"], t["state_since_unix"],
                "{l} / {t}"
            );
        }
        for (who, want_role, want_serial) in
            [("local", role, serial(i)), ("peer", other, serial(1 - i))]
        {
            let m = &v[who];
            assert_eq!(m["serial"], want_serial.as_str(), "{who}: {m}");
            assert_eq!(m["role"], want_role, "{who}: {m}");
            assert_eq!(m["model"], "TD-LAB", "{who}: {m}");
            assert_eq!(m["licence"], "master", "{who}: {m}");
            assert_eq!(m["version"], v["local"]["version"], "{who}: {m}");
            assert_eq!(m["quality"], 100, "{who}: {m}");
            assert_eq!(m["conf_synchronized"], true, "{who}: {m}");
            assert_eq!(m["heartbeat_version"], 2, "{who}: {m}");
            assert_eq!(m["k2k_version"], 2, "{who}: {m}");
            assert_eq!(m["election_hold"], "none", "{who}: {m}");
            assert_eq!(
                m["ha_state"],
                if want_role == "active" {
                    "running"
                } else {
                    "ready"
                },
                "{who}: {m}"
            );
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            for t in ["since_unix", "boot_unix"] {
                let x = m[t].as_u64().unwrap_or_else(|| panic!("{who}.{t}: {m}"));
                assert!(x <= now + 1 && x + 120 > now, "{who}.{t} = {x}, now {now}");
            }
        }
        assert_eq!(v["members_heard"], 2, "{v}");
        assert_eq!(v["sync_link"], "HA-main", "{v}");
        assert_eq!(v["local"]["file_sync"], "none running", "{v}");
        assert!(
            v["peer_status_source"]
                .as_str()
                .is_some_and(|s| s.contains("from the members' service on HA-main")),
            "{v}"
        );
        for l in v["links"].as_array().unwrap().iter().take(2) {
            assert_eq!(l["state"], "OK", "{l}");
            assert!(l["state_since_unix"].as_u64().is_some(), "{l}");
        }
        let text = n.ctl_text(&["hainfo", "-v"]).expect("hainfo -v");
        eprintln!("tandemctl hainfo -v on {}:\n{text}", serial(i));
        let field = |name: &str| -> Vec<String> {
            let line = text
                .lines()
                .find(|l| l.trim_start().starts_with(&format!("{name}  ")))
                .unwrap_or_else(|| panic!("no {name} row:\n{text}"));
            line.trim_start()[name.len()..]
                .split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect()
        };
        assert!(text.contains(&format!("{} (local)", serial(i))), "{text}");
        assert_eq!(field("model"), ["TD-LAB", "TD-LAB"], "{text}");
        assert_eq!(field("mode"), [role, other], "{text}");
        assert_eq!(field("quality"), ["100%", "100%"], "{text}");
        assert_eq!(field("licence"), ["master", "master"], "{text}");
        assert_eq!(field("conf synchronized"), ["yes", "yes"], "{text}");
        assert_eq!(field("config revision"), ["00001", "00001"], "{text}");
        assert_eq!(field("table"), ["complete", "complete"], "{text}");
        assert_eq!(field("K2K version"), ["2", "2"], "{text}");
        assert_eq!(field("election version"), ["2", "2"], "{text}");
        assert_eq!(
            field("conn sync version"),
            ["n/a (part of K2K)", "n/a (part of K2K)"]
        );
        assert_eq!(
            field("backup partition")[0],
            "n/a: no slots (not started by tandem-boot)"
        );
        assert_eq!(
            field("state")[0],
            if role == "active" { "running" } else { "ready" }
        );
        // The id of the bulk this member sent (active) or received
        // (passive): the active's first bulk to the passive.
        let syncid = field("syncid");
        assert!(syncid[0].parse::<u32>().is_ok_and(|n| n > 0), "{syncid:?}");
        assert_eq!(syncid[0], syncid[1], "the same bulk on both: {text}");
        assert_eq!(
            field("supervisor"),
            if role == "active" {
                ["yes", "no"]
            } else {
                ["no", "yes"]
            }
        );
        let main = field("main link");
        let (ours, peers) = if i == 0 {
            (addr::HA_MAIN_1, addr::HA_MAIN_2)
        } else {
            (addr::HA_MAIN_2, addr::HA_MAIN_1)
        };
        assert_eq!(
            main,
            [format!("{ours}: OK"), format!("{peers}: OK")],
            "the peer's column is its own view: {text}"
        );
        assert_eq!(
            field("file sync"),
            ["none running", "none running"],
            "{text}"
        );
        assert!(text.contains("members heard: 2 of 2"), "{text}");
        for row in [
            "version",
            "boot",
            "  since",
            "file sync",
            "last conf sync",
            "election hold",
        ] {
            field(row.trim_start());
        }
        let plain = n.ctl_text(&["hainfo"]).expect("hainfo");
        assert!(
            !plain.contains("licence") && plain.contains("model"),
            "{plain}"
        );

        let (code, out, err) = n
            .ctl_out(&["hamode"], Duration::from_secs(10))
            .expect("hamode");
        assert_eq!(
            (code, out.as_str()),
            (Some(0), format!("{role}\n").as_str()),
            "{err}"
        );
        let (code, out, _) = n
            .ctl_out(&["--json", "hamode"], Duration::from_secs(10))
            .expect("hamode --json");
        assert_eq!(code, Some(0));
        let j: Value = serde_json::from_str(&out).expect("JSON");
        assert_eq!(j, serde_json::json!({"mode": role, "forced": null}));
    }
}

/// A real syslog collector (rsyslogd) in fw2's namespace, on its main HA
/// address: UDP 5514 and TCP 5515.
struct Collector {
    _proc: tandem_tests::netns::Proc,
    file: std::path::PathBuf,
}

fn collector(lab: &Lab) -> Collector {
    let dir = lab.dir().join("rsyslog");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("received.log");
    let conf = dir.join("rsyslog.conf");
    std::fs::write(
        &conf,
        format!(
            r#"global(workDirectory="{d}")
module(load="imudp")
input(type="imudp" address="{a}" port="5514")
module(load="imtcp")
input(type="imtcp" address="{a}" port="5515")
*.* action(type="omfile" file="{f}" template="RSYSLOG_SyslogProtocol23Format")
"#,
            d = dir.display(),
            a = addr::HA_MAIN_2,
            f = file.display()
        ),
    )
    .unwrap();
    let pid = dir.join("rsyslogd.pid");
    let proc = lab
        .fw(2)
        .spawn(
            "rsyslogd",
            &[
                "rsyslogd",
                "-n",
                "-f",
                &conf.to_string_lossy(),
                "-i",
                &pid.to_string_lossy(),
            ],
        )
        .expect("rsyslogd runs (Debian package rsyslog)");
    // Listening once its pid file is written.
    let t0 = Instant::now();
    while !pid.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "rsyslogd did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Collector { _proc: proc, file }
}

/// The event log reaches a real collector over UDP (fw1) and TCP (fw2) as
/// RFC 5424 messages that rsyslog parses: host, application, service as
/// MSGID, the text; the election's swap line arrives too, and the matches
/// of a rule with `log: true` hit by real traffic (in the event log, in
/// syslog, and counted in `policy show`).
#[test]
fn the_event_log_reaches_a_syslog_collector_over_udp_and_tcp() {
    require_root!();
    let lab = Lab::two_nodes("syslog").expect("the lab");
    let col = collector(&lab);
    let c = cluster::start_on(lab, heavy_lock(), Some(POLICY_LOG), &[], |i, cfg| {
        cfg.syslog = Some(if i == 1 {
            format!("(remote: Some(\"udp://{}:5514\"))", addr::HA_MAIN_2)
        } else {
            format!(
                "(remote: Some(\"tcp://{}:5515\"), facility: Some(\"daemon\"))",
                addr::HA_MAIN_2
            )
        });
    })
    .expect("the cluster");
    let a = c
        .wait_single_active(Duration::from_secs(8))
        .expect("one member elected");
    let (code, out, err) = c.nodes[a]
        .ctl_out(&["policy", "reload"], Duration::from_secs(30))
        .expect("policy reload");
    assert_eq!(code, Some(0), "{out}{err}");
    // Real traffic through the active hits the logged rule.
    assert_eq!(
        cluster::open_udp_flows(&c.lab, 20, 9000, 200).expect("flows"),
        20
    );
    let rule_line = " RULE - rule 1 (udp9000) pass udp 198.18.1.";
    let t0 = Instant::now();
    let text = loop {
        let text = std::fs::read_to_string(&col.file).unwrap_or_default();
        let has = |host: &str, what: &str| {
            text.lines()
                .any(|l| l.contains(&format!(" {host} tandemd ")) && l.contains(what))
        };
        if has("fw1", "the event log goes to syslog too: udp://")
            && has("fw2", "the event log goes to syslog too: tcp://")
            && has(&format!("fw{}", a + 1), " POLICY - policy reloaded")
            && has(&format!("fw{}", a + 1), " HA - swap: passive -> active")
            && text.lines().filter(|l| l.contains(rule_line)).count() >= 20
        {
            break text;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the collector did not get the lines:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let sample: Vec<&str> = text.lines().filter(|l| l.contains("swap:")).collect();
    eprintln!(
        "received by rsyslog (RFC 5424 as it parsed it), the swap lines:\n{}",
        sample.join("\n")
    );
    let rules: Vec<&str> = text.lines().filter(|l| l.contains(rule_line)).collect();
    eprintln!("a rule log line as rsyslog got it:\n{}", rules[0]);
    assert!(rules[0].contains(":9000 in in out out, "), "{}", rules[0]);
    // Info (6) for rule logs: local0 -> 134, daemon -> 30.
    let pri = if a == 0 { "<134>1 " } else { "<30>1 " };
    assert!(rules.iter().all(|l| l.starts_with(pri)), "{rules:?}");
    let log = c.nodes[a].ctl(&["log", "--lines", "300"]).expect("log")["lines"].to_string();
    assert!(
        log.contains("RULE: rule 1 (udp9000) pass udp 198.18.1."),
        "{log}"
    );
    let (code, out, _) = c.nodes[a]
        .ctl_out(&["policy", "show"], Duration::from_secs(10))
        .expect("policy show");
    eprintln!("tandemctl policy show on the active:\n{out}");
    assert_eq!(code, Some(0));
    let row = out
        .lines()
        .find(|l| l.contains("udp9000"))
        .expect("the rule's row");
    let cols: Vec<&str> = row.split_whitespace().collect();
    let hits: u64 = cols[cols.len() - 2].parse().unwrap();
    let bytes: u64 = cols[cols.len() - 1].parse().unwrap();
    assert!(hits >= 20, "{out}");
    // At least an IP and a UDP header for each flow's first datagram.
    assert!(bytes >= hits * 28, "{out}");
    let j = c.nodes[a]
        .ctl(&["policy", "show"])
        .expect("policy show --json");
    assert_eq!(j["rules"][1]["name"], "udp9000");
    assert_eq!(j["rules"][1]["log"], true);
    assert!(j["rules"][1]["hits"].as_u64().unwrap() >= 20, "{j}");
    assert!(j["rules"][1]["bytes"].as_u64().unwrap() >= 20 * 28, "{j}");
    // PRI: local0 (16) for fw1, daemon (3) for fw2; notice (5).
    assert!(
        text.lines()
            .any(|l| l.starts_with("<133>1 ") && l.contains(" fw1 tandemd ")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("<29>1 ") && l.contains(" fw2 tandemd ")),
        "{text}"
    );
}

fn log_of(n: &tandem_tests::Node) -> String {
    n.ctl(&["log", "--lines", "500"]).expect("log")["lines"].to_string()
}

/// Waits (bounded) until `n`'s event log has every line of `want`.
fn wait_log(n: &tandem_tests::Node, want: &[&str], what: &str) -> String {
    let t0 = Instant::now();
    loop {
        let log = log_of(n);
        if want.iter().all(|w| log.contains(w)) {
            return log;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{what}: missing {:?} in\n{log}",
            want.iter()
                .filter(|w| !log.contains(**w))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The event log after a policy reload, an HA link cut and restored, a
/// kill -9 failover and the killed member's restart: each member's log
/// has the lines an operator looks for, with full serials, from its own
/// point of view.
#[test]
fn the_event_log_tells_a_reload_a_link_cut_a_failover_and_a_restart() {
    require_root!();
    let mut c = start("events");
    let (a, p) = c.settled().expect("one active, the passive synchronized");
    let serial = |i: usize| format!("TDLAB000{}", i + 1);
    let (act_addr, pas_addr) = (metrics_addr(a + 1), metrics_addr(p + 1));
    wait_log(
        &c.nodes[p],
        &[&format!("peer {} found (cluster member)", serial(a))],
        "the passive found the active",
    );

    let (code, out, err) = c.nodes[a]
        .ctl_out(&["policy", "reload"], Duration::from_secs(30))
        .expect("policy reload");
    assert_eq!(code, Some(0), "{out}{err}");
    wait_log(&c.nodes[a], &["POLICY: policy reloaded from"], "the reload");

    // The passive's cable on "in" cut, then restored: its quality falls
    // and rises, each member says so from its own point of view.
    c.lab.set_fw_port(p + 1, "in", false).expect("cut in");
    wait_log(
        &c.nodes[p],
        &[&format!(
            "quality of {} (this member): 100 -> 50 (down: in)",
            serial(p)
        )],
        "the quality drop, on the passive",
    );
    wait_log(
        &c.nodes[a],
        &[&format!(
            "quality of the peer {} (was passive): 100 -> 50",
            serial(p)
        )],
        "the peer's quality drop, on the active",
    );
    c.lab.set_fw_port(p + 1, "in", true).expect("restore in");
    wait_log(
        &c.nodes[p],
        &[&format!(
            "quality of {} (this member): 50 -> 100 (every interface up, every check passing)",
            serial(p)
        )],
        "the quality back, on the passive",
    );

    // The main HA link cut on the passive's side, then restored.
    tandem_tests::link::set_link(c.lab.fw(p + 1), "ha-main", false).expect("cut");
    wait_log(
        &c.nodes[a],
        &[&format!(
            "HA communication on link HA-main ({pas_addr}) has failed"
        )],
        "the cut, on the active",
    );
    // The state sync moves to the backup link, and back after the repair.
    wait_log(
        &c.nodes[p],
        &["SYNC: state sync now on HA-backup"],
        "the state sync on the backup link",
    );
    tandem_tests::link::set_link(c.lab.fw(p + 1), "ha-main", true).expect("restore");
    wait_log(
        &c.nodes[p],
        &["SYNC: state sync now on HA-main (it was on HA-backup)"],
        "the state sync back on the main link",
    );
    wait_log(
        &c.nodes[a],
        &[&format!(
            "HA communication on link HA-main ({pas_addr}) is back"
        )],
        "the link back, on the active",
    );

    // The passive's HA address removed under its socket: the kernel
    // refuses its heartbeats, which is logged (not dropped silently).
    let fw = c.lab.fw(p + 1);
    fw.exec(&[
        "ip",
        "addr",
        "del",
        &format!("{pas_addr}/30"),
        "dev",
        "ha-main",
    ])
    .expect("ip addr del");
    let log = wait_log(
        &c.nodes[p],
        &["heartbeats on link HA-main (", ") not sent: "],
        "the send errors, on the passive",
    );
    tandem_tests::link::add_addr(fw, "ha-main", &format!("{pas_addr}/30")).expect("ip addr add");
    let line = log
        .split("\",\"")
        .find(|l| l.contains(") not sent: "))
        .unwrap_or_default();
    eprintln!("{line}");
    wait_log(
        &c.nodes[a],
        &[&format!(
            "HA communication on link HA-main ({pas_addr}) is back"
        )],
        "the address back",
    );

    // Datagrams on the heartbeat port that are no heartbeats: refused,
    // counted, and logged with the reason (once for the burst).
    let before = c.nodes[a].ctl(&["hainfo"]).expect("hainfo")["heartbeats_rejected"]
        .as_u64()
        .expect("heartbeats_rejected");
    fw.exec(&[
        "python3",
        "-c",
        &format!(
            "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nfor _ in range(5): s.sendto(b'not a heartbeat', ('{act_addr}', 5405))"
        ),
    ])
    .expect("send junk to the heartbeat port");
    wait_log(
        &c.nodes[a],
        &[&format!(
            "HA: heartbeat from {pas_addr} on HA-main refused: not a tandem heartbeat (malformed)"
        )],
        "the refused heartbeats, on the active",
    );
    let after = c.nodes[a].ctl(&["hainfo"]).expect("hainfo")["heartbeats_rejected"]
        .as_u64()
        .expect("heartbeats_rejected");
    assert!(after >= before + 5, "{before} -> {after}");

    // kill -9 of the active: the passive takes over and says why.
    c.nodes[a].proc.signal("KILL");
    let log = wait_log(
        &c.nodes[p],
        &["swap: passive -> active", "the peer is dead"],
        "the takeover, on the passive",
    );
    assert!(log.contains(&format!(
        "HA communication on link HA-main ({act_addr}) has failed"
    )));

    // The killed member starts again: it finds the new active, takes the
    // table, and the new active sees its peer back.
    let ns = c.lab.fw(a + 1);
    c.nodes[a].kill_and_start_from_files(ns).expect("restart");
    c.nodes[a]
        .wait_ready(Duration::from_secs(30))
        .expect("ready");
    wait_log(
        &c.nodes[a],
        &[
            "SYSTEM: starting",
            &format!("peer {} found (cluster member)", serial(p)),
            "whole connection table received",
        ],
        "the restarted member",
    );
    let log = wait_log(
        &c.nodes[p],
        &[&format!(
            "the peer {} restarted (its tandemd started at 20",
            serial(a)
        )],
        "the new active",
    );
    eprintln!(
        "the new active's event log:\n{}",
        log.replace("\",\"", "\n")
            .trim_matches(|c| c == '[' || c == ']' || c == '"')
    );
    cluster::wait_synchronized(&c.nodes[a], "synchronized again", Duration::from_secs(15))
        .expect("synchronized");
    // The bulk that completed it, under one id on both sides.
    let sent = wait_log(
        &c.nodes[p],
        &["SYNC: whole connection table sent to the peer: "],
        "the bulk sent",
    );
    let bulk_id = |log: &str, what: &str| -> String {
        let at = log.rfind(what).unwrap_or_else(|| panic!("{what} in {log}"));
        log[at..]
            .split(", bulk ")
            .nth(1)
            .and_then(|t| t.split(|c: char| !c.is_ascii_digit()).next())
            .unwrap_or_else(|| panic!("a bulk id after {what}"))
            .to_owned()
    };
    let id = bulk_id(&sent, "whole connection table sent to the peer: ");
    assert!(
        sent.contains(&format!(
            "SYNC: sending the whole connection table to the peer (the peer restarted), bulk {id}"
        )),
        "{sent}"
    );
    wait_log(
        &c.nodes[a],
        &[
            &format!(
                "SYNC: state sync with peer {} is up (K2K version ",
                serial(p)
            ),
            &format!("SYNC: the peer announces its whole connection table, bulk {id}"),
            &format!("our table is complete, bulk {id}"),
        ],
        "the bulk received, with the sender's id",
    );

    // A clean stop of the active: it tells the peer first and hands over;
    // the peer's log says the silence was expected.
    c.nodes[p].stop();
    let log = wait_log(
        &c.nodes[a],
        &[
            &format!(
                "the peer {} announces it is going down: stopping (tandemd got SIGTERM or SIGINT)",
                serial(p)
            ),
            "(expected: the peer announced it is going down)",
        ],
        "the clean stop, on the other member",
    );
    let stopped = std::fs::read_to_string(c.nodes[p].socket.with_extension("log"))
        .expect("the stopped member's log file");
    assert!(
        stopped.contains("SYSTEM: stopping on signal")
            && stopped.contains("stopping: handing the active role to the peer")
            && stopped.contains("swap: active -> passive (handing over: this member is stopping)")
            && stopped.contains("the peer was told this member is going down")
            && stopped.trim_end().ends_with("SYSTEM: stopped"),
        "{stopped}"
    );
    assert!(
        !stopped.contains("forced status passive") && !stopped.contains("by the operator"),
        "a hand-over is no operator's forced status:\n{stopped}"
    );
    let _ = log;
    assert_eq!(cluster::role(&c.nodes[a]).0, "active");

    // A start that fails (its data port does not exist): the event log
    // says why, and tandemd exits non-zero.
    let mut bad = c.lab.node_config(p + 1);
    bad.socket = c.lab.dir().join("bad.sock");
    bad.file_prefix = format!("{}-bad", bad.file_prefix);
    bad.interfaces[0].vdev = "net_af_packet0,iface=fw-nope,framecnt=8192".into();
    let mut n = tandem_tests::Node::start(c.lab.fw(p + 1), &bad, &c.lab.dir().join("bad.ron"))
        .expect("spawn");
    let status = n
        .proc
        .wait_timeout(Duration::from_secs(30))
        .expect("tandemd gives up within 30 s");
    assert!(!status.success(), "{status:?}");
    let log = std::fs::read_to_string(bad.socket.with_extension("log")).expect("its log file");
    eprintln!("a failed start's event log:\n{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("SYSTEM: tandemd stopped on an error: ") && l.contains("fw-nope")),
        "{log}"
    );
}
