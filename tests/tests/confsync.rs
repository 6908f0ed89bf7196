//! The configuration sync between two real tandemd members (issue 12),
//! driven through `tandemctl` as an operator would, while a TCP transfer
//! runs through the active:
//! - both start with the same cluster directory: hainfo says so on both;
//! - the operator changes the policy on the active (and reloads it
//!   there): hainfo on both names that member in its notice,
//!   `hasynctest` lists the file and `hadiff` shows the new rule;
//! - `hasync` from the other member is refused (it would overwrite the
//!   change) and changes nothing;
//! - a policy the peer could not run is refused by the peer whole:
//!   nothing applied there;
//! - `hasync` from the active makes both identical: the peer reloads the
//!   policy without a restart, `hasynctest` lists nothing, the notice is
//!   gone, and the transfer is not disturbed.
//!
//! Needs root (network namespaces): fails, not skips, without it.

use std::path::PathBuf;
use std::thread;
use std::time::Duration;

use serde_json::Value;
use tandem_tests::cluster::{self, largest_gap, wait_ctl};
use tandem_tests::host::{self, IperfServer};
use tandem_tests::lab::addr;
use tandem_tests::node::HaSection;
use tandem_tests::{require_root, tools, Node};

const POLICY: &str = r#"(
    rules: [
        (action: Pass, from: ["198.18.1.0/24"], proto: Tcp, dst_ports: ["5201"]),
        (action: Pass, from: ["198.18.1.0/24"], proto: Icmp, icmp_types: [8]),
    ],
    default_action: Block,
)"#;

/// The same with one more rule (UDP 53 from the inside).
const POLICY_DNS: &str = r#"(
    rules: [
        (action: Pass, from: ["198.18.1.0/24"], proto: Tcp, dst_ports: ["5201"]),
        (action: Pass, from: ["198.18.1.0/24"], proto: Icmp, icmp_types: [8]),
        (action: Pass, from: ["198.18.1.0/24"], proto: Udp, dst_ports: ["53"]),
    ],
    default_action: Block,
)"#;

fn policy_of(n: &Node) -> PathBuf {
    n.cluster_dir()
        .expect("a member's cluster directory")
        .join("policy.ron")
}

/// `tandemctl ARGS` on `n` as an operator reads it: (exit code, stdout,
/// stderr); killed after 40 s.
fn ctl(n: &Node, args: &[&str]) -> (Option<i32>, String, String) {
    n.ctl_out(args, Duration::from_secs(40))
        .expect("tandemctl runs")
}

fn wait_config(n: &Node, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    wait_ctl(n, &["hainfo"], what, Duration::from_secs(10), |v| {
        f(&v["config"])
    })
    .expect(what)["config"]
        .clone()
}

#[test]
fn hasync_makes_both_members_identical_without_disturbing_traffic() {
    require_root!();
    let c = cluster::start("cfsync", Some(POLICY), &[], |_, _: &mut HaSection| {})
        .expect("the cluster");
    let a = c
        .wait_single_active(Duration::from_secs(8))
        .expect("one member elected");
    let p = 1 - a;
    let (act, pas) = (&c.nodes[a], &c.nodes[p]);
    let (act_serial, pas_serial) = (format!("TDLAB000{}", a + 1), format!("TDLAB000{}", p + 1));

    // Same files at start: both say so.
    for n in [act, pas] {
        let v = wait_config(n, "both configurations known and the same", |c| {
            c["synchronized"] == true
        });
        assert_eq!(v["notice"], Value::Null, "{v}");
        assert_eq!(v["local"]["revision"], "00001", "{v}");
    }
    let (code, out, err) = ctl(act, &["hasynctest"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, "building file list ...\n2 files to consider\n");

    let _srv = IperfServer::start(c.lab.server(), addr::SERVER, 5201).unwrap();
    let client = c.lab.client();
    let (res, ()) = thread::scope(|s| {
        let run = s.spawn(|| host::iperf_client(client, addr::SERVER, 5201, 14, &["-i", "0.1"]));
        thread::sleep(Duration::from_secs(1));

        // The operator changes the policy on the active and reloads it.
        std::fs::write(policy_of(act), POLICY_DNS).unwrap();
        let (code, out, err) = ctl(act, &["policy", "reload"]);
        assert_eq!(code, Some(0), "{out}{err}");
        for n in [act, pas] {
            let v = wait_config(n, "the notice naming the changed member", |c| {
                c["notice"].as_str().is_some_and(|t| {
                    t.contains(&format!("of {act_serial} has local modifications"))
                })
            });
            assert_eq!(v["synchronized"], false, "{v}");
        }
        let text = act.ctl_text(&["hainfo"]).expect("hainfo text");
        assert!(
            text.contains(&format!(
                "Notice: the configuration of {act_serial} has local modifications"
            )),
            "{text}"
        );
        let (_, out, _) = ctl(act, &["hasynctest"]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(
            lines[2].starts_with("policy.ron   local ") && lines[2].contains(&pas_serial),
            "{out}"
        );
        let (code, out, err) = ctl(act, &["hadiff", "policy.ron"]);
        assert_eq!(code, Some(0), "{err}");
        assert!(
            out.starts_with("--- peer:policy.ron\n+++ local:policy.ron\n@@ ")
                && out.contains(
                    "\n+        (action: Pass, from: [\"198.18.1.0/24\"], proto: Udp, dst_ports: [\"53\"]),\n"
                ),
            "{out}"
        );

        // From the other member, hasync would overwrite the change: refused.
        let (code, out, err) = ctl(pas, &["hasync"]);
        assert_eq!(code, Some(1), "{out}");
        assert!(
            err.contains(&format!(
                "{act_serial} has local modifications that this sync would replace"
            )),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(policy_of(act)).unwrap(), POLICY_DNS);

        // A policy the peer cannot run (an interface it does not have) is
        // refused by the peer whole.
        let bad = POLICY_DNS.replace("proto: Udp,", "proto: Udp, in_interface: \"dmz\",");
        std::fs::write(policy_of(act), &bad).unwrap();
        let (code, out, err) = ctl(act, &["hasync"]);
        assert_eq!(code, Some(1), "{out}");
        assert!(
            err.contains("the configuration received would not run here")
                && err.contains("nothing was applied"),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(policy_of(pas)).unwrap(), POLICY);
        // Both members log the failed sync, each from its side.
        let log_of =
            |n: &Node| n.ctl(&["log", "--lines", "200"]).expect("log")["lines"].to_string();
        let (sent, got) = (log_of(act), log_of(pas));
        assert!(
            sent.contains("HA: configuration sync to the peer failed: "),
            "{sent}"
        );
        assert!(
            got.contains(&format!(
                "HA: configuration sync from {act_serial} not applied: "
            )) && got.contains("would not run here"),
            "{got}"
        );
        std::fs::write(policy_of(act), POLICY_DNS).unwrap();

        // hasync from the active.
        let (code, out, err) = ctl(act, &["hasync"]);
        assert_eq!(code, Some(0), "{out}{err}");
        eprintln!("tandemctl hasync on {act_serial}:\n{out}");
        assert!(out.contains("1/1 policy.ron ("), "{out}");
        assert!(out.contains("revision 00002"), "{out}");
        assert!(out.contains("policy reloaded: 3 rules"), "{out}");
        assert!(out.ends_with("OK\n"), "{out}");
        assert_eq!(std::fs::read_to_string(policy_of(pas)).unwrap(), POLICY_DNS);
        let (_, out, _) = ctl(act, &["hasynctest"]);
        assert_eq!(out, "building file list ...\n2 files to consider\n");
        for n in [act, pas] {
            let v = wait_config(n, "both identical again", |c| c["synchronized"] == true);
            assert_eq!(v["notice"], Value::Null, "{v}");
            assert_eq!(v["local"]["revision"], "00002", "{v}");
            assert_eq!(v["peer"]["revision"], "00002", "{v}");
        }
        // Parameters set once, applied on both (F9-F12), with no swap.
        let (code, out, err) = ctl(act, &["ha", "set", "weight", "in=200"]);
        eprintln!("tandemctl ha set weight in=200 on {act_serial}:\n{out}");
        assert_eq!(code, Some(0), "{out}{err}");
        assert!(out.contains("in.weight: 200 (was 100)"), "{out}");
        assert!(out.contains("HA parameters applied at once"), "{out}");
        let cluster_of = |n: &Node| {
            std::fs::read_to_string(n.cluster_dir().unwrap().join("cluster.ron")).unwrap()
        };
        assert_eq!(
            cluster_of(act),
            cluster_of(pas),
            "both cluster files the same"
        );
        assert!(cluster_of(pas).contains("weight: 200"));
        let (code, _, err) = ctl(act, &["ha", "set", "weight", "dmz=1"]);
        assert_eq!(code, Some(1));
        assert!(
            err.contains("no interface \"dmz\" (interfaces: in, out)"),
            "{err}"
        );
        let (code, out, err) = ctl(act, &["ha", "set", "prefer", "this"]);
        assert_eq!(code, Some(0), "{out}{err}");
        wait_ctl(
            pas,
            &["hainfo"],
            "the peer's priority 50",
            Duration::from_secs(5),
            |v| v["peer"]["priority"] == 50 && v["local"]["priority"] == 0,
        )
        .expect("priority on both");
        let (code, out, err) = ctl(act, &["ha", "set", "--no-sync", "sync-min-age", "5"]);
        assert_eq!(code, Some(0), "{out}{err}");
        assert!(
            out.contains("not sent to the peer: --no-sync was given"),
            "{out}"
        );
        wait_config(pas, "the notice for the unsent change", |c| {
            c["notice"]
                .as_str()
                .is_some_and(|t| t.contains(&act_serial))
        });
        let (code, out, err) = ctl(act, &["hasync"]);
        assert_eq!(code, Some(0), "{out}{err}");
        for n in [act, pas] {
            wait_config(n, "both identical after the parameters", |c| {
                c["synchronized"] == true
            });
        }
        assert_eq!(cluster_of(act), cluster_of(pas));

        // A hand edit of cluster.ron, applied by enha, then sent.
        let file = act.cluster_dir().unwrap().join("cluster.ron");
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.contains("garp_interval_ms: 0,"), "{text}");
        std::fs::write(
            &file,
            text.replace("garp_interval_ms: 0,", "garp_interval_ms: 300,"),
        )
        .unwrap();
        let (code, out, err) = ctl(act, &["enha"]);
        assert_eq!(code, Some(0), "{out}{err}");
        assert!(out.contains("gratuitous ARP every 300 ms"), "{out}");
        let (_, out, _) = ctl(act, &["enha"]);
        assert!(
            out.contains("nothing changed since tandemd last applied it"),
            "{out}"
        );
        let (code, out, err) = ctl(act, &["hasync"]);
        assert_eq!(code, Some(0), "{out}{err}");
        assert!(out.contains("gratuitous ARP every 300 ms"), "{out}");

        // F15: a file group, sent by the active on its own period,
        // outside the configuration's revision.
        let text = std::fs::read_to_string(&file).unwrap();
        std::fs::write(
            &file,
            text.replacen(
                "(\n",
                "(\n    file_groups: [(name: \"leases\", every_secs: 1)],\n",
                1,
            ),
        )
        .unwrap();
        let (code, out, err) = ctl(act, &["enha"]);
        assert_eq!(code, Some(0), "{out}{err}");
        let (code, out, err) = ctl(act, &["hasync"]);
        assert_eq!(code, Some(0), "{out}{err}");
        let group_dir = |n: &Node| {
            let d = n.cluster_dir().unwrap();
            PathBuf::from(format!("{}.groups", d.display())).join("leases")
        };
        std::fs::create_dir_all(group_dir(act)).unwrap();
        std::fs::write(group_dir(act).join("dhcp.leases"), "lease 198.18.1.50\n").unwrap();
        let t0 = std::time::Instant::now();
        while std::fs::read_to_string(group_dir(pas).join("dhcp.leases"))
            .ok()
            .as_deref()
            != Some("lease 198.18.1.50\n")
        {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "the file group did not reach the passive"
            );
            thread::sleep(Duration::from_millis(100));
        }
        eprintln!("file group: on the passive after {:?}", t0.elapsed());
        let v = wait_config(act, "the group's last send in hainfo", |c| {
            c["file_groups"][0]
                .as_str()
                .is_some_and(|g| g.starts_with("leases: "))
        });
        assert_eq!(
            v["synchronized"], true,
            "a group is not a configuration change: {v}"
        );

        let log = pas.ctl(&["log", "--lines", "200"]).expect("log")["lines"].to_string();
        assert!(
            log.contains(&format!(
                "configuration revision 00002 received from {act_serial} and applied"
            )) && log.contains("configuration sync: policy reloaded: 3 rules"),
            "{log}"
        );
        (run.join().expect("iperf thread"), ())
    });
    let res = res.expect("the transfer completed (no reset, no stall)");
    let gap = largest_gap(&tools::iperf_intervals(&res.raw), 0.1);
    eprintln!(
        "transfer: {:.0} Mbit/s, largest gap {gap:?}",
        res.bits_per_second / 1e6
    );
    assert!(gap < Duration::from_millis(500), "largest gap {gap:?}");
    assert_eq!(cluster::role(act).0, "active", "no swap");
}
