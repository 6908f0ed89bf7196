//! Changing the cluster's pre-shared key (HA-REFERENCE F8, issue 12) on
//! two real tandemd members, through `tandemctl ha set key` as an
//! operator would, while a TCP transfer runs through the active and the
//! state sync is encrypted:
//! - the change runs from the passive (either member may start it) and
//!   ends with both members under the new key and the old one refused;
//! - no swap, no heartbeat refused, the transfer is not disturbed;
//! - connections opened after the change reach the passive (the state
//!   sync runs under the new key);
//! - both cluster files carry the new key: the passive, killed and
//!   started again from its files, rejoins and takes the table;
//! - a weak key and the key in force are refused, changing nothing;
//! - a cluster that keeps its key in each member's key store, sealed in
//!   the member's TPM (one swtpm each), changes it the same way: each
//!   store seals the new key, no file carries it in clear, and a member
//!   restarted from its files unseals it and rejoins.
//!
//! Needs root (network namespaces): fails, not skips, without it.

use std::os::unix::fs::PermissionsExt;
use std::thread;
use std::time::Duration;

use serde_json::Value;
use tandem_tests::cluster::{self, largest_gap, open_udp_flows, wait_ctl, wait_same_table};
use tandem_tests::host::{self, IperfServer};
use tandem_tests::lab::{addr, heavy_lock, Lab};
use tandem_tests::node::HaSection;
use tandem_tests::{require_root, tools, Node};

const POLICY: &str = tandem_tests::firewall::TRANSFER_AND_FLOWS;

const OLD_KEY: &str = "Lab-Cluster-Key-2026";
const NEW_KEY: &str = "Rotated-Lab-Key-2027!";

fn ctl(n: &Node, args: &[&str]) -> (Option<i32>, String, String) {
    n.ctl_out(args, Duration::from_secs(60))
        .expect("tandemctl runs")
}

fn hainfo(n: &Node) -> Value {
    n.ctl(&["hainfo"]).expect("hainfo")
}

fn cluster_file(n: &Node) -> String {
    std::fs::read_to_string(n.cluster_dir().expect("cluster dir").join("cluster.ron"))
        .expect("cluster.ron")
}

fn key_file(dir: &std::path::Path, name: &str, key: &str) -> String {
    let f = dir.join(name);
    std::fs::write(&f, format!("{key}\n")).unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    f.to_string_lossy().into_owned()
}

/// Waits (bounded) until `n` shows its key steady (the change over).
fn wait_steady(n: &Node) {
    wait_ctl(
        n,
        &["hainfo"],
        "the key steady again",
        Duration::from_secs(10),
        |v| v["key"] == "steady",
    )
    .expect("steady");
}

/// Kills the passive `p` and starts it from its files; waits (bounded)
/// until it is synchronized under the new key.
fn restart_passive(c: &mut cluster::Cluster, p: usize) {
    let ns = c.lab.fw(p + 1);
    c.nodes[p]
        .kill_and_start_from_files(ns)
        .expect("the passive started again");
    c.nodes[p]
        .wait_ready(Duration::from_secs(30))
        .expect("ready");
    cluster::wait_synchronized(
        &c.nodes[p],
        "the restarted passive synchronized under the new key",
        Duration::from_secs(20),
    )
    .expect("synchronized");
}

#[test]
fn the_cluster_key_changes_on_both_members_with_no_outage() {
    require_root!();
    let mut c = cluster::start("keychg", Some(POLICY), &[], |_, ha: &mut HaSection| {
        ha.encrypt = true;
    })
    .expect("the cluster");
    let (a, p) = c.settled().expect("one active, the passive synchronized");
    let dir = c.lab.dir().to_path_buf();
    let (act, pas) = (&c.nodes[a], &c.nodes[p]);
    let before: Vec<(u64, u64)> = [act, pas]
        .iter()
        .map(|n| {
            let v = hainfo(n);
            assert_eq!(v["key"], "steady", "{v}");
            (
                v["swaps"].as_u64().unwrap(),
                v["heartbeats_rejected"].as_u64().unwrap(),
            )
        })
        .collect();

    // Refusals first: nothing changes.
    let weak = key_file(&dir, "weak.key", "secret1");
    let (code, out, err) = ctl(pas, &["ha", "set", "key", "--psk-file", &weak]);
    assert_eq!(code, Some(1), "{out}");
    assert!(err.contains("the new key is too weak"), "{err}");
    let same = key_file(&dir, "same.key", OLD_KEY);
    let (code, out, err) = ctl(pas, &["ha", "set", "key", "--psk-file", &same]);
    assert_eq!(code, Some(1), "{out}");
    assert!(err.contains("the key in force"), "{err}");
    let (code, _, err) = ctl(pas, &["ha", "set", "--no-sync", "key", "--psk-file", &same]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--no-sync does not apply"), "{err}");
    for n in [act, pas] {
        assert!(cluster_file(n).contains(OLD_KEY));
        assert_eq!(hainfo(n)["key"], "steady");
    }

    let _srv = IperfServer::start(c.lab.server(), addr::SERVER, 5201).unwrap();
    let client = c.lab.client();
    let new = key_file(&dir, "new.key", NEW_KEY);
    let res = thread::scope(|s| {
        let run = s.spawn(|| host::iperf_client(client, addr::SERVER, 5201, 10, &["-i", "0.1"]));
        thread::sleep(Duration::from_secs(1));
        let (code, out, err) = ctl(pas, &["ha", "set", "key", "--psk-file", &new]);
        eprintln!("tandemctl ha set key on the passive:\n{out}{err}");
        assert_eq!(code, Some(0), "{out}{err}");
        for step in [
            "(1/6) Key check",
            "(3/6) Stage",
            "(4/6) Stage and file",
            "(5/6) Commit",
        ] {
            assert!(out.contains(step), "{step}: {out}");
        }
        assert!(out.contains("both send under the new key"), "{out}");
        assert!(out.contains("the old key is refused now"), "{out}");
        for n in [act, pas] {
            wait_steady(n);
            let f = cluster_file(n);
            assert!(f.contains(NEW_KEY) && !f.contains(OLD_KEY), "{f}");
            let log = n.ctl(&["log", "--lines", "300"]).expect("log")["lines"].to_string();
            for line in [
                "HA key change staged",
                "HA key change committed",
                "HA key change finished: the peer is heard under the new key; the old key is refused now",
            ] {
                assert!(log.contains(line), "{}: {line}\n{log}", n.name);
            }
        }
        // The state sync runs under the new key: connections opened now
        // reach the passive.
        let sent = open_udp_flows(&c.lab, 2000, 9000, 1000).expect("UDP flows");
        assert_eq!(sent, 2000);
        let n = wait_same_table(act, pas, 2000, Duration::from_secs(15))
            .expect("the passive has the new connections");
        eprintln!("after the key change: {n} connections on both members");
        run.join().expect("iperf thread")
    });
    let res = res.expect("the transfer completed (no reset, no stall)");
    let gap = largest_gap(&tools::iperf_intervals(&res.raw), 0.1);
    eprintln!(
        "transfer: {:.0} Mbit/s, largest gap {gap:?}",
        res.bits_per_second / 1e6
    );
    assert!(gap < Duration::from_millis(500), "largest gap {gap:?}");
    for (n, (swaps, rejected)) in [act, pas].iter().zip(&before) {
        let v = hainfo(n);
        assert_eq!(v["swaps"].as_u64(), Some(*swaps), "no swap on {}", n.name);
        assert_eq!(
            v["heartbeats_rejected"].as_u64(),
            Some(*rejected),
            "no heartbeat refused on {}",
            n.name
        );
    }
    assert_eq!(cluster::role(act).0, "active");

    // The passive, killed and started from its files, comes back under
    // the new key: the active (which refuses the old one now) hears it
    // and sends it the table.
    restart_passive(&mut c, p);
    wait_same_table(&c.nodes[a], &c.nodes[p], 2000, Duration::from_secs(15))
        .expect("the restarted passive has the table");
    let v = hainfo(&c.nodes[a]);
    assert_eq!(v["peer"]["alive"], true, "{v}");
    assert_eq!(v["swaps"].as_u64(), Some(before[0].0), "no swap");
}

#[test]
fn a_key_sealed_in_each_members_tpm_changes_the_same_way() {
    require_root!();
    let lab = Lab::two_nodes("keytpm").expect("the lab");
    let dir = lab.dir().to_path_buf();
    // Dropped after the cluster (declared before it).
    let mut tpms = Vec::new();
    for i in 1..=2 {
        tpms.push(host::swtpm(lab.fw(i), &dir.join(format!("tpm-fw{i}"))).expect("swtpm"));
        let store = dir.join(format!("fw{i}.secrets"));
        std::fs::create_dir_all(&store).unwrap();
        key_file(&store, "ha-psk", OLD_KEY);
    }
    let mut c = cluster::start_on(lab, heavy_lock(), Some(POLICY), &[], |i, cfg| {
        cfg.control_extra = format!(
            "tpm: Some((tcti: {:?})), key_store: Some(\"fw{i}.secrets\")",
            host::swtpm_tcti()
        );
        if let Some(ha) = cfg.ha.as_mut() {
            ha.psk.clear();
            ha.encrypt = true;
        }
    })
    .expect("the cluster");
    let (a, p) = c.settled().expect("one active, the passive synchronized");
    let sealed = |i: usize| dir.join(format!("fw{i}.secrets")).join("ha-psk.sealed");
    let before: Vec<Vec<u8>> = (1..=2).map(|i| std::fs::read(sealed(i)).unwrap()).collect();
    for n in &c.nodes {
        assert!(
            hainfo(n)["key_store"]
                .as_str()
                .is_some_and(|k| k.starts_with("sealed in the TPM")),
            "{}",
            hainfo(n)
        );
    }

    let new = key_file(&dir, "new.key", NEW_KEY);
    let (code, out, err) = ctl(&c.nodes[a], &["ha", "set", "key", "--psk-file", &new]);
    eprintln!("tandemctl ha set key on the active:\n{out}{err}");
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("the key store of each member holds the new key"),
        "{out}"
    );
    assert!(out.contains("the old key is refused now"), "{out}");
    for (i, n) in c.nodes.iter().enumerate() {
        wait_steady(n);
        let store = dir.join(format!("fw{}.secrets", i + 1));
        let now = std::fs::read(sealed(i + 1)).unwrap();
        assert_ne!(now, before[i], "fw{}: the store seals the new key", i + 1);
        let names: Vec<String> = std::fs::read_dir(&store)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["ha-psk.sealed"], "fw{}: nothing else", i + 1);
        let f = cluster_file(n);
        assert!(!f.contains(NEW_KEY) && !f.contains(OLD_KEY), "{f}");
    }

    // The passive, killed and started from its files, unseals the new
    // key and rejoins.
    restart_passive(&mut c, p);
    let log = std::fs::read_to_string(c.nodes[p].socket.with_extension("log")).unwrap_or_default();
    assert!(
        log.contains("key store: the cluster key is unsealed from the TPM"),
        "{log}"
    );
}
