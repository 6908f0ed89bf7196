//! The cluster's life through `tandemctl` only (issue 12), while a TCP
//! transfer runs through the first firewall: it creates a cluster without
//! a restart (it stays active, the transfer goes on); a second firewall
//! out of its box joins it. Each refusal of the join (a wrong key, another
//! model, another number of data ports, an address that is not the free
//! slot's, a broadcast address) is produced first and changes nothing on
//! either side; then the join succeeds: the joiner restarts as a member
//! (same pid), passive, with the same configuration as the member, and the
//! transfer is not disturbed. On firewalls with a TPM (one swtpm each),
//! the cluster that `ha create` makes keeps its key in each member's key
//! store, sealed in its TPM, and the joiner seals the key it was given.
//!
//! Needs root (network namespaces): fails, not skips, without it.

use std::path::Path;
use std::thread;
use std::time::Duration;

use tandem_tests::cluster::{self, largest_gap, wait_role};
use tandem_tests::host::{self, IperfServer};
use tandem_tests::lab::addr;
use tandem_tests::{require_root, tools, LabBuilder, LabKind, Node};

const POLICY: &str = r#"(
    rules: [
        (action: Pass, from: ["198.18.1.0/24"], proto: Tcp, dst_ports: ["5201"]),
        (action: Pass, from: ["198.18.1.0/24"], proto: Icmp, icmp_types: [8]),
    ],
    default_action: Block,
)"#;

const KEY: &str = "Lab-Cluster-Key-2026";

/// `tandemctl ARGS` on `n` as an operator reads it: (exit code, stdout,
/// stderr); killed after 120 s.
fn ctl(n: &Node, args: &[&str]) -> (Option<i32>, String, String) {
    n.ctl_out(args, Duration::from_secs(120))
        .expect("tandemctl runs")
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Two firewalls out of their box: HA links cabled, no cluster.
fn fresh_lab(tag: &str) -> tandem_tests::Lab {
    LabBuilder::new(tag)
        .kind(LabKind::Tandem { nodes: 2 })
        .ha_links(true)
        .fresh_ha(true)
        .build()
        .expect("lab")
}

#[test]
fn two_fresh_firewalls_become_a_cluster_while_traffic_runs_and_refusals_change_nothing() {
    require_root!();
    let lock = tandem_tests::heavy_lock();
    let lab = fresh_lab("join");
    let policy = tandem_tests::firewall::write_policy(&lab, "policy.ron", POLICY).unwrap();

    // fw1: alone, forwarding.
    let mut cfg1 = lab.node_config(1).with_policy(&policy);
    cfg1.env = vec![("TANDEM_TEST_FAULTS".into(), "1".into())];
    let mut fw1 = lab.start_node_with(1, &cfg1).expect("fw1");
    fw1.wait_ready(Duration::from_secs(30)).expect("fw1 ready");
    wait_role(&fw1, "active", "fw1 active alone", Duration::from_secs(10)).expect("active");
    let pid1 = fw1.proc.pid();
    let cluster1 =
        tandem_tests::node::NodeConfig::cluster_dir(&fw1.config_path).join("cluster.ron");

    // fw2: out of its box: data ports without addresses, no HA.
    let mut cfg2 = lab.node_config(2);
    for i in &mut cfg2.interfaces {
        i.addresses.clear();
    }
    let identity2 = cfg2.identity_path();
    let mut fw2 = lab.start_node_with(2, &cfg2).expect("fw2");
    fw2.wait_ready(Duration::from_secs(30)).expect("fw2 ready");
    let pid2 = fw2.proc.pid();
    let config2 = fw2.config_path.clone();

    let key = lab.dir().join("ha.key");
    std::fs::write(&key, format!("{KEY}\n")).unwrap();
    let wrong = lab.dir().join("wrong.key");
    std::fs::write(&wrong, "Another-Cluster-Key-2026\n").unwrap();
    let join = |fw2: &Node, main: &str, psk: &Path| {
        ctl(
            fw2,
            &[
                "ha",
                "join",
                "--main",
                main,
                "--backup",
                &format!("ha-backup,{}/30", addr::HA_BACKUP_2),
                "--member",
                addr::HA_MAIN_1,
                "--psk-file",
                &psk.to_string_lossy(),
            ],
        )
    };
    let main = format!("ha-main,{}/30", addr::HA_MAIN_2);
    let ha_addrs = || {
        let o = lab
            .fw(2)
            .exec(&["ip", "-4", "-o", "addr", "show", "dev", "ha-main"])
            .expect("ip addr");
        String::from_utf8_lossy(&o.stdout).into_owned()
    };

    let _srv = IperfServer::start(lab.server(), addr::SERVER, 5201).unwrap();
    let client = lab.client();
    let (res, ()) = thread::scope(|s| {
        let run = s.spawn(|| host::iperf_client(client, addr::SERVER, 5201, 40, &["-i", "0.1"]));
        thread::sleep(Duration::from_secs(1));

        // fw1 creates the cluster, running.
        let (code, out, err) = ctl(
            &fw1,
            &[
                "ha",
                "create",
                "--main",
                &format!("ha-main,{}/30", addr::HA_MAIN_1),
                "--backup",
                &format!("ha-backup,{}/30", addr::HA_BACKUP_1),
                "--psk-file",
                &key.to_string_lossy(),
            ],
        );
        eprintln!("tandemctl ha create on fw1:\n{out}{err}");
        assert_eq!(code, Some(0), "{out}{err}");
        for want in [
            "HA-main on ha-main 198.19.69.1/30 (second member 198.19.69.2)",
            "keys derived (Argon2id)",
            "[5/6] HA on",
            "tandemctl ha join --main ha-main,198.19.69.2/30 --member 198.19.69.1",
        ] {
            assert!(out.contains(want), "missing {want:?}\n{out}");
        }
        assert_eq!(fw1.proc.pid(), pid1, "no restart");
        assert_eq!(cluster::role(&fw1).0, "active");
        let h1 = fw1.ctl(&["hainfo"]).expect("hainfo");
        assert_eq!(h1["election"], true, "{h1}");
        assert_eq!(h1["local"]["role"], "active", "{h1}");
        assert!(read(&cluster1).contains("serial: \"TDLAB0001\""));
        assert!(read(&fw1.config_path).contains("cluster: \"fw1.cluster\""));

        // Refusals: each says why, and changes nothing on either side.
        let before1 = read(&cluster1);
        let before2 = read(&config2);
        let identity_text = read(&identity2);
        let cases: Vec<(&str, String, &Path, Option<String>)> = vec![
            (
                "authentication failed: the pre-shared key does not match the cluster's",
                main.clone(),
                &wrong,
                None,
            ),
            (
                "different model: this firewall is TD-BIG, the cluster's members are TD-LAB",
                main.clone(),
                &key,
                Some(identity_text.replace("TD-LAB", "TD-BIG")),
            ),
            (
                "different number of network interfaces: this firewall has 3 data ports, TDLAB0001 has 2",
                main.clone(),
                &key,
                Some(identity_text.replace("ports: 2", "ports: 3")),
            ),
            (
                "HA-main: 198.19.69.2/29 is not the address of the cluster's free place on this link (198.19.69.2/30)",
                "ha-main,198.19.69.2/29".into(),
                &key,
                None,
            ),
            (
                "198.19.69.3/30: the network or broadcast address of its network, not a host's",
                "ha-main,198.19.69.3/30".into(),
                &key,
                None,
            ),
        ];
        for (says, main, psk, identity) in cases {
            if let Some(t) = &identity {
                std::fs::write(&identity2, t).unwrap();
            }
            let (code, out, err) = join(&fw2, &main, psk);
            std::fs::write(&identity2, &identity_text).unwrap();
            eprintln!("refused as expected: {}", err.trim());
            assert_eq!(code, Some(1), "{out}{err}");
            assert!(err.contains(says), "wanted {says:?}\n{out}{err}");
            assert_eq!(read(&cluster1), before1, "fw1's cluster file changed");
            assert_eq!(read(&config2), before2, "fw2's configuration changed");
            assert!(!tandem_tests::node::NodeConfig::cluster_dir(&config2).exists());
            assert_eq!(ha_addrs(), "", "the join left its address on ha-main");
            assert_eq!(fw2.proc.pid(), pid2);
        }
        let log1 = fw1.ctl(&["log", "--lines", "300"]).expect("log")["lines"].to_string();
        assert!(
            log1.contains("join of TDLAB0002 from 198.19.69.2 refused: different model"),
            "{log1}"
        );

        // An HA link too slow (the lab's kernel has no netem: the member
        // delays its pongs), and a join cut half-way by the member.
        let debug = |args: &[&str]| {
            let (code, out, err) = ctl(&fw1, args);
            assert_eq!(code, Some(0), "{args:?}: {out}{err}");
        };
        debug(&["debug", "delay-pongs", "--ms", "250"]);
        let (code, out, err) = join(&fw2, &main, &key);
        debug(&["debug", "delay-pongs", "--ms", "0"]);
        assert_eq!(code, Some(1), "{out}{err}");
        assert!(
            err.contains("HA link latency on the main link is 25")
                && err.contains("it must be under 200 ms"),
            "{out}{err}"
        );
        debug(&["debug", "cut-join"]);
        let (code, out, err) = join(&fw2, &main, &key);
        eprintln!("cut as expected: {}", err.trim());
        assert_eq!(code, Some(1), "{out}{err}");
        for (what, ok) in [
            ("fw1's cluster file", read(&cluster1) == before1),
            ("fw2's configuration", read(&config2) == before2),
            ("fw2's HA addresses", ha_addrs().is_empty()),
            (
                "no staging left",
                !std::fs::read_dir(lab.dir())
                    .unwrap()
                    .any(|e| e.unwrap().file_name().to_string_lossy().contains("staging")),
            ),
        ] {
            assert!(ok, "a cut join changed {what}");
        }

        // The join.
        let (code, out, err) = join(&fw2, &main, &key);
        eprintln!("tandemctl ha join on fw2:\n{out}{err}");
        assert_eq!(code, Some(0), "{out}{err}");
        for want in [
            "[ 3/9] authenticated  both proved the pre-shared key: member TDLAB0001",
            "[ 5/9] accepted       same model (TD-LAB), 2 data ports, licence master: slot 1",
            "cluster.ron (",
            "policy.ron (",
            "[ 8/9] recorded       the member lists this firewall (revision 00002)",
            "back as a member after",
            "Joined.",
        ] {
            assert!(out.contains(want), "missing {want:?}\n{out}");
        }
        assert_eq!(fw2.proc.pid(), pid2, "tandemd restarted in place");
        assert!(cluster::role(&fw2).0 == "passive" && cluster::role(&fw1).0 == "active");
        let h1 = fw1.ctl(&["hainfo"]).expect("hainfo");
        assert_eq!(h1["peer"]["serial"], "TDLAB0002", "{h1}");
        let h2 = fw2.ctl(&["hainfo"]).expect("hainfo");
        assert_eq!(h2["peer"]["serial"], "TDLAB0001", "{h2}");
        assert!(read(&cluster1).contains("serial: \"TDLAB0002\""));
        for n in [&fw1, &fw2] {
            let v = cluster::wait_ctl(
                n,
                &["hainfo"],
                "the same configuration on both",
                Duration::from_secs(10),
                |v| v["config"]["synchronized"] == true,
            )
            .expect("configurations the same");
            assert_eq!(v["config"]["local"]["revision"], "00002", "{v}");
            let (_, out, _) = ctl(n, &["hasynctest"]);
            assert_eq!(out, "building file list ...\n2 files to consider\n");
        }
        // The event log file (the in-memory one starts again with tandemd).
        let log2 = read(&fw2.socket.with_extension("log"));
        assert!(
            log2.contains("stopping to start again with the new configuration")
                && !log2.contains("without releasing DPDK")
                && log2.contains("running as passive"),
            "{log2}"
        );
        let log1 = fw1.ctl(&["log", "--lines", "300"]).expect("log")["lines"].to_string();
        assert!(
            log1.contains("TDLAB0002 joined the cluster in slot 1 (configuration revision 00002)")
                && log1.contains("peer TDLAB0002 found"),
            "{log1}"
        );

        // RMA: fw2 fails and a new firewall takes its place.
        let (code, out, err) = ctl(&fw1, &["ha", "cluster", "remove", "serial=remote"]);
        assert_eq!(
            code,
            Some(1),
            "{out}{err} {}",
            fw1.ctl(&["hainfo"]).expect("hainfo")["peer"]
        );
        assert!(
            err.contains("TDLAB0002 was heard on the HA links in the last 3 s"),
            "{err}"
        );
        fw2.proc.signal("KILL");
        cluster::wait_ctl(
            &fw1,
            &["hainfo"],
            "fw2 silent",
            Duration::from_secs(5),
            |v| v["peer"]["alive"] == false,
        )
        .expect("fw2 silent");
        // Heard in the last 3 s still counts as alive for a removal.
        thread::sleep(Duration::from_millis(3_500));
        let _ = std::fs::remove_dir_all(tandem_tests::node::NodeConfig::cluster_dir(&config2));
        let _ = std::fs::remove_file(config2.with_extension("ron.pre-cluster"));
        let _ = std::fs::remove_file(lab.dir().join("state/fw2.cluster-sync.json"));
        for dev in ["ha-main", "ha-backup"] {
            lab.fw(2)
                .exec(&["ip", "addr", "flush", "dev", dev])
                .expect("ip addr flush");
        }
        let mut cfg3 = lab.node_config(2);
        cfg3.serial = "TDLAB0003".into();
        cfg3.identity = cfg3.identity.map(|t| t.replace("TDLAB0002", "TDLAB0003"));
        for i in &mut cfg3.interfaces {
            i.addresses.clear();
        }
        let mut fw3 = lab.start_node_with(2, &cfg3).expect("the replacement");
        fw3.wait_ready(Duration::from_secs(30)).expect("fw3 ready");
        let pid3 = fw3.proc.pid();
        let (code, out, err) = join(&fw3, &main, &key);
        assert_eq!(code, Some(1), "{out}{err}");
        assert!(
            err.contains("Too many firewalls in the HA cluster (members TDLAB0001, TDLAB0002)"),
            "{err}"
        );
        let (code, out, err) = ctl(&fw1, &["ha", "cluster", "remove", "serial=remote"]);
        assert_eq!(code, Some(0), "{out}{err}");
        assert!(out.contains("TDLAB0002 will leave the cluster"), "{out}");
        let (code, out, err) = ctl(&fw1, &["ha", "cluster", "activate"]);
        assert_eq!(code, Some(0), "{out}{err}");
        assert!(
            out.contains(
                "TDLAB0002 removed; members TDLAB0001; slot 1 (198.19.69.2, 198.19.70.2) free"
            ),
            "{out}"
        );
        let (code, out, err) = join(&fw3, &main, &key);
        eprintln!("the replacement's join:\n{out}{err}");
        assert_eq!(code, Some(0), "{out}{err}");
        assert!(
            out.contains("the member lists this firewall (revision 00004)"),
            "{out}"
        );
        assert_eq!(fw3.proc.pid(), pid3);
        assert!(read(&cluster1).contains("serial: \"TDLAB0003\""));
        assert!(!read(&cluster1).contains("TDLAB0002"));
        // It took the state: the running transfer's connection is there.
        let conns = fw3
            .ctl(&["conn", "list", "--port", "5201"])
            .expect("conn list");
        assert!(
            conns["total"].as_u64().unwrap_or(0) >= 1,
            "the replacement holds no connection of the transfer: {conns}"
        );
        cluster::verify_clean(&fw3, 3).expect("the same table on both");
        (run.join().expect("iperf thread"), ())
    });
    let res = res.expect("the transfer completed (no reset, no stall)");
    let gap = largest_gap(&tools::iperf_intervals(&res.raw), 0.1);
    eprintln!(
        "transfer through fw1 during the join: {:.0} Mbit/s, largest gap {gap:?}",
        res.bits_per_second / 1e6
    );
    assert!(gap < Duration::from_millis(500), "largest gap {gap:?}");
    drop(fw2);
    drop(fw1);
    drop(lab);
    drop(lock);
}

#[test]
fn on_firewalls_with_a_tpm_create_and_join_seal_the_key_in_each() {
    require_root!();
    let _lock = tandem_tests::heavy_lock();
    let lab = fresh_lab("jointpm");
    let dir = lab.dir().to_path_buf();
    let _tpms: Vec<tandem_tests::Proc> = (1..=2)
        .map(|i| host::swtpm(lab.fw(i), &dir.join(format!("tpm-fw{i}"))).expect("swtpm"))
        .collect();
    let tpm = |i: usize| {
        format!(
            "tpm: Some((tcti: {:?})), key_store: Some(\"fw{i}.secrets\")",
            host::swtpm_tcti()
        )
    };
    let cfg1 = lab.node_config(1);
    // A firewall (a policy): the state sync runs.
    let policy = tandem_tests::firewall::write_policy(&lab, "policy.ron", POLICY).unwrap();
    let mut cfg1 = cfg1.with_policy(&policy);
    cfg1.control_extra = tpm(1);
    let mut fw1 = lab.start_node_with(1, &cfg1).expect("fw1");
    fw1.wait_ready(Duration::from_secs(30)).expect("fw1 ready");
    let mut cfg2 = lab.node_config(2);
    cfg2.control_extra = tpm(2);
    for i in &mut cfg2.interfaces {
        i.addresses.clear();
    }
    let mut fw2 = lab.start_node_with(2, &cfg2).expect("fw2");
    fw2.wait_ready(Duration::from_secs(30)).expect("fw2 ready");
    let key = dir.join("ha.key");
    std::fs::write(&key, format!("{KEY}\n")).unwrap();
    let key = key.to_string_lossy().into_owned();

    let (code, out, err) = ctl(
        &fw1,
        &[
            "ha",
            "create",
            "--main",
            &format!("ha-main,{}/30", addr::HA_MAIN_1),
            "--psk-file",
            &key,
        ],
    );
    eprintln!("tandemctl ha create on fw1:\n{out}{err}");
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("key store: sealed in the TPM"), "{out}");
    let (code, out, err) = ctl(
        &fw2,
        &[
            "ha",
            "join",
            "--main",
            &format!("ha-main,{}/30", addr::HA_MAIN_2),
            "--member",
            addr::HA_MAIN_1,
            "--psk-file",
            &key,
        ],
    );
    eprintln!("tandemctl ha join on fw2:\n{out}{err}");
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("Joined."), "{out}");
    for (i, n) in [&fw1, &fw2].into_iter().enumerate() {
        let v = cluster::wait_ctl(
            n,
            &["hainfo"],
            "the peer heard, the same configuration, the key sealed",
            Duration::from_secs(15),
            |v| {
                v["peer"]["alive"] == true
                    && v["config"]["synchronized"] == true
                    && v["key_store"]
                        .as_str()
                        .is_some_and(|k| k.starts_with("sealed in the TPM"))
            },
        )
        .expect("a cluster whose members seal the key");
        assert_eq!(v["local"]["synchronized"], true, "{v}");
        let store = dir.join(format!("fw{}.secrets", i + 1));
        assert!(store.join("ha-psk.sealed").exists(), "fw{}", i + 1);
        assert!(!store.join("ha-psk").exists(), "fw{}: no clear key", i + 1);
        let shared =
            read(&tandem_tests::node::NodeConfig::cluster_dir(&n.config_path).join("cluster.ron"));
        assert!(!shared.contains(KEY) && !shared.contains("psk"), "{shared}");
    }
}
