//! Updating a cluster with tandemctl only (issue 14): both members run
//! under tandem-boot with two installation slots; the next version is a
//! real second build of this tree (`scripts/build-next.sh`: 0.2.0, K2K 3),
//! packaged and signed with `tandemctl system package`.
//!
//! - A rolling upgrade (the passive over the members' service, then the
//!   active with its hand-over) keeps a TCP transfer and loses not one
//!   datagram of a 1 kpps numbered UDP probe; the pair runs fail-soft on
//!   K2K 2 between the two steps and on K2K 3 after. The cluster key is
//!   sealed in each member's TPM (one swtpm each): after its update a
//!   member's sealed key is refused (its PCR changed), it rejoins on the
//!   hand-off its previous version sealed for it, and `system tpm pcrseal
//!   serial=passive` run on the active reseals it with the TPM password
//!   (a wrong password reseals nothing).
//! - Packages with an altered file or a foreign signature are refused,
//!   locally and by the peer, and nothing changes.
//! - A new version that cannot start, or that starts and never rejoins,
//!   is rolled back by tandem-boot, and the event log says why.
//!
//! Needs root (network namespaces): fails, not skips, without it.

use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tandem_tests::cluster::{self, Cluster};
use tandem_tests::lab::{addr, heavy_lock, Lab};
use tandem_tests::node::{find_bin, next_bin_dir};
use tandem_tests::tools::{self, ToolServer};
use tandem_tests::{host, require_root, Node};

const POLICY: &str = tandem_tests::firewall::TRANSFER_AND_FLOWS;
/// The trial time of an updated version (seconds).
const CONFIRM_SECS: u64 = 20;

/// `tandemctl ARGS` without a daemon (the package commands).
fn tandemctl(args: &[&str]) -> (Option<i32>, String, String) {
    let o = std::process::Command::new(find_bin("tandemctl").expect("tandemctl"))
        .args(args)
        .output()
        .expect("tandemctl runs");
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn s(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// The lab's packages: the vendor's key, trusted by both members, and the
/// next version signed with it.
struct Packages {
    dir: PathBuf,
    key: PathBuf,
    next: PathBuf,
}

impl Packages {
    fn make(lab: &Lab) -> Packages {
        let dir = lab.dir().join("packages");
        std::fs::create_dir_all(&dir).expect("packages dir");
        let key = dir.join("vendor.key");
        let (code, out, err) = tandemctl(&["system", "package", "keygen", "--key", s(&key)]);
        assert_eq!(code, Some(0), "{out}{err}");
        for i in 1..=2 {
            let trusted = trusted_dir(lab, i);
            std::fs::create_dir_all(&trusted).expect("trusted keys dir");
            std::fs::copy(key.with_extension("pub"), trusted.join("vendor.pub")).expect("copy");
        }
        let next = sign(
            &dir.join("tandem-next.pkg"),
            &next_bin_dir().expect("the next version's build"),
            &key,
        );
        let (code, out, err) = tandemctl(&[
            "system",
            "package",
            "inspect",
            s(&next),
            "--trusted-keys",
            s(&trusted_dir(lab, 1)),
        ]);
        assert_eq!(code, Some(0), "{out}{err}");
        assert!(out.contains("tandem 0.2.0 (K2K 3)"), "{out}");
        Packages { dir, key, next }
    }

    /// A package of `bin_dir` signed with the vendor's key.
    fn build(&self, name: &str, bin_dir: &Path) -> PathBuf {
        sign(&self.dir.join(name), bin_dir, &self.key)
    }
}

/// `tandemctl system package build` of `bin_dir` into `out`, signed with
/// `key`.
fn sign(out: &Path, bin_dir: &Path, key: &Path) -> PathBuf {
    let (code, o, e) = tandemctl(&[
        "system",
        "package",
        "build",
        "--bin-dir",
        s(bin_dir),
        "--key",
        s(key),
        "--out",
        s(out),
    ]);
    assert_eq!(code, Some(0), "{o}{e}");
    out.to_path_buf()
}

fn trusted_dir(lab: &Lab, i: usize) -> PathBuf {
    lab.dir().join(format!("fw{i}.trusted"))
}

/// The lab cluster's key, as the operator writes it into each member's
/// key store.
const CLUSTER_KEY: &str = "Lab-Cluster-Key-2026";
/// The TPM password (the owner hierarchy's) the operator sets.
const TPM_PASSWORD: &str = "Tpm-Owner-Pw-7";

/// Both members under tandem-boot, each with its slots and trusted keys.
/// With `tpms` (one swtpm per member, kept running by the caller), the
/// cluster's file has no key: each member's key store holds it, which
/// tandemd seals in its TPM at the first start.
fn start_booted(tag: &str, tpm: bool) -> (Cluster, Packages, Vec<tandem_tests::Proc>) {
    let lab = Lab::two_nodes(tag).expect("the lab");
    let pkgs = Packages::make(&lab);
    let boot = find_bin("tandem-boot").expect("tandem-boot");
    let dir = lab.dir().to_path_buf();
    let mut tpms = Vec::new();
    if tpm {
        for i in 1..=2 {
            tpms.push(host::swtpm(lab.fw(i), &dir.join(format!("tpm-fw{i}"))).expect("swtpm"));
            let store = dir.join(format!("fw{i}.secrets"));
            std::fs::create_dir_all(&store).expect("key store");
            let key = store.join("ha-psk");
            std::fs::write(&key, format!("{CLUSTER_KEY}\n")).expect("key file");
            std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .expect("chmod 600");
        }
    }
    let c = cluster::start_on(lab, heavy_lock(), Some(POLICY), &[], |i, cfg| {
        cfg.program = vec![
            s(&boot).to_owned(),
            "--root".into(),
            s(&dir.join(format!("fw{i}.slots"))).to_owned(),
            "--".into(),
        ];
        cfg.control_extra = format!(
            "trusted_keys: Some({:?}), update_confirm_secs: Some({CONFIRM_SECS})",
            s(&dir.join(format!("fw{i}.trusted")))
        );
        if tpm {
            cfg.control_extra += &format!(
                ", tpm: Some((tcti: {:?})), key_store: Some(\"fw{i}.secrets\")",
                host::swtpm_tcti()
            );
            if let Some(ha) = cfg.ha.as_mut() {
                ha.psk.clear();
            }
        }
    })
    .expect("the cluster");
    (c, pkgs, tpms)
}

/// The operator sets the TPM password of `n` (a new TPM has none); a
/// second change that does not give the password now is refused.
fn set_tpm_password(n: &Node) {
    let new = format!("new={TPM_PASSWORD}");
    let (code, out, err) = n
        .ctl_out(
            &["system", "tpm", "password", &new],
            Duration::from_secs(30),
        )
        .expect("tandemctl system tpm password");
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("the TPM password is changed"), "{out}");
    let (code, out, err) = n
        .ctl_out(
            &["system", "tpm", "password", "new=Other-Pw-123"],
            Duration::from_secs(30),
        )
        .expect("tandemctl system tpm password");
    assert_ne!(code, Some(0), "{out}");
    assert!(err.contains("the TPM password is wrong"), "{err}");
}

/// `system tpm pcrseal tpmpassword=PW serial=passive` on `n`.
fn pcrseal(n: &Node, password: &str) -> (Option<i32>, String, String) {
    n.ctl_out(
        &[
            "system",
            "tpm",
            "pcrseal",
            &format!("tpmpassword={password}"),
            "serial=passive",
        ],
        Duration::from_secs(60),
    )
    .expect("tandemctl system tpm pcrseal")
}

/// hainfo's `key store` of `n`.
fn key_store(n: &Node) -> String {
    hainfo(n)["key_store"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn hainfo(n: &Node) -> Value {
    n.ctl(&["hainfo"]).expect("hainfo")
}

/// Waits (bounded) until `n` answers as version `v` with its table
/// complete and its update confirmed; returns its hainfo.
fn wait_settled_on(n: &Node, v: &str, timeout: Duration) -> Value {
    let t0 = Instant::now();
    let mut last = Value::Null;
    while t0.elapsed() < timeout {
        if let Ok(info) = n.ctl(&["hainfo"]) {
            let l = &info["local"];
            if l["version"] == v
                && l["synchronized"] == true
                && l["slots"]["on_trial"] == false
                && info["peer"]["alive"] == true
            {
                return info;
            }
            last = info;
        }
        thread::sleep(Duration::from_millis(250));
    }
    panic!(
        "{} is not settled on version {v} after {timeout:?}: {last}\n{}",
        n.name,
        log_text(n)
    );
}

fn log_text(n: &Node) -> String {
    std::fs::read_to_string(n.socket.with_extension("log")).unwrap_or_default()
}

fn update(n: &Node, pkg: &Path, target: &str) -> (Option<i32>, String, String) {
    n.ctl_out(
        &["system", "update", "--package", s(pkg), "--target", target],
        Duration::from_secs(120),
    )
    .expect("tandemctl system update")
}

#[test]
fn a_rolling_upgrade_with_tandemctl_keeps_the_transfer_and_every_probe_packet() {
    require_root!();
    let (c, pkgs, _tpms) = start_booted("upg", true);
    let (a, p) = c.settled().expect("one active, the passive synchronized");
    for (i, n) in c.nodes.iter().enumerate() {
        let info = hainfo(n);
        assert_eq!(info["local"]["version"], "0.1.0", "{info}");
        assert_eq!(info["local"]["slots"]["active"], "a", "{info}");
        assert_eq!(info["local"]["slots"]["backup_version"], Value::Null);
        // The key the operator wrote is sealed in the member's TPM, the
        // clear file gone; the cluster's file has none.
        assert!(
            info["key_store"]
                .as_str()
                .is_some_and(|k| k.starts_with("sealed in the TPM")),
            "{info}"
        );
        let store = c.lab.dir().join(format!("fw{}.secrets", i + 1));
        assert!(
            !store.join("ha-psk").exists(),
            "the clear key file is removed"
        );
        assert!(store.join("ha-psk.sealed").exists());
        let shared =
            std::fs::read_to_string(n.cluster_dir().expect("a member").join("cluster.ron"))
                .expect("cluster.ron");
        assert!(!shared.contains(CLUSTER_KEY), "{shared}");
        assert!(
            log_text(n).contains("key store: the cluster key of"),
            "{}",
            log_text(n)
        );
        set_tpm_password(n);
    }
    let _echo = ToolServer::udp_echo(c.lab.server(), addr::SERVER, 9000).expect("echo server");
    let _iperf = host::IperfServer::start(c.lab.server(), addr::SERVER, 5201).expect("iperf");
    const SECS: u32 = 60;
    let client = c.lab.client();
    let start = Instant::now();
    let (probe, transfer, steps) = thread::scope(|sc| {
        let probe = sc.spawn(|| tools::udp_stream(client, addr::SERVER, 9000, 1000, SECS.into()));
        // When each step ended, in ms after the probe's start (to place
        // its largest gap).
        let mut marks: Vec<(&'static str, u128)> = Vec::new();
        let mark = |what: &'static str, marks: &mut Vec<(&'static str, u128)>| {
            marks.push((what, start.elapsed().as_millis()));
        };
        let transfer = sc.spawn(|| {
            host::iperf_client(client, addr::SERVER, 5201, SECS, &["-b", "20M", "-i", "1"])
        });
        thread::sleep(Duration::from_secs(2));
        let t0 = Instant::now();
        // 1. The passive, from the active, over the members' service.
        let (code, out, err) = update(&c.nodes[a], &pkgs.next, "remote");
        assert_eq!(code, Some(0), "{out}{err}");
        assert!(
            out.contains("the peer installed version 0.2.0 (K2K 3) in slot b"),
            "{out}"
        );
        assert!(
            out.contains("on the peer, the cluster key is sealed for version 0.2.0 (PCR 23"),
            "{out}"
        );
        mark("the passive's update sent", &mut marks);
        let info = wait_settled_on(&c.nodes[p], "0.2.0", Duration::from_secs(40));
        mark("the passive settled on 0.2.0", &mut marks);
        // Its PCR changed: the sealed key is refused; it rejoined on the
        // hand-off, until the operator reseals with the TPM password.
        let ks = info["key_store"].as_str().unwrap_or_default().to_owned();
        assert!(
            ks.contains("PCR 23 changed: the sealed key is refused"),
            "{info}"
        );
        let (code, out, err) = pcrseal(&c.nodes[a], "Not-The-Password-1");
        assert_ne!(code, Some(0), "a wrong TPM password reseals nothing: {out}");
        assert!(err.contains("TPM password"), "{err}");
        assert!(key_store(&c.nodes[p]).contains("PCR 23 changed"));
        let (code, out, err) = pcrseal(&c.nodes[a], TPM_PASSWORD);
        assert_eq!(code, Some(0), "{out}{err}");
        assert!(
            out.contains("on the peer: the cluster key is resealed to PCR 23"),
            "{out}"
        );
        assert!(key_store(&c.nodes[p]).starts_with("sealed in the TPM"));
        mark("the passive resealed", &mut marks);
        let mixed = hainfo(&c.nodes[a]);
        eprintln!(
            "fail-soft: versions {} / {}, K2K in use {}",
            mixed["local"]["version"], mixed["peer"]["version"], mixed["sync_version"]
        );
        assert_eq!(info["local"]["slots"]["backup_version"], "0.1.0", "{info}");
        assert_eq!(mixed["local"]["version"], "0.1.0", "{mixed}");
        assert_eq!(mixed["peer"]["version"], "0.2.0", "{mixed}");
        assert_eq!(
            mixed["sync_version"], 2,
            "fail-soft on the common K2K: {mixed}"
        );
        let t1 = t0.elapsed();
        // 2. The active: hand-over, restart into 0.2.0, back as passive.
        let (code, out, err) = update(&c.nodes[a], &pkgs.next, "local");
        assert_eq!(code, Some(0), "{out}{err}");
        assert!(
            out.contains("installed version 0.2.0 (K2K 3) in slot b"),
            "{out}"
        );
        mark("the active's update installed", &mut marks);
        let info = wait_settled_on(&c.nodes[a], "0.2.0", Duration::from_secs(40));
        mark("the old active settled on 0.2.0", &mut marks);
        assert!(
            info["key_store"].to_string().contains("PCR 23 changed"),
            "{info}"
        );
        // The new active reseals the updated member's key.
        let (code, out, err) = pcrseal(&c.nodes[p], TPM_PASSWORD);
        assert_eq!(code, Some(0), "{out}{err}");
        assert!(key_store(&c.nodes[a]).starts_with("sealed in the TPM"));
        mark("the old active resealed", &mut marks);
        let steps = (t1, t0.elapsed(), info, marks);
        (
            probe.join().expect("probe thread"),
            transfer.join().expect("transfer thread"),
            steps,
        )
    });
    let (t1, t2, info, marks) = steps;
    let probe = probe.expect("the probe ran");
    let transfer = transfer.expect("the transfer completed (no reset, no stall)");
    eprintln!(
        "rolling upgrade: passive updated in {t1:?}, both in {t2:?}; probe sent {} lost {} (runs {}), largest gap {} ms at {} ms; transfer {:.0} Mbit/s; steps ended at (ms): {marks:?}",
        probe["sent"], probe["lost"], probe["lost_runs"], probe["max_gap_ms"], probe["max_gap_at_ms"],
        transfer.bits_per_second / 1e6
    );
    assert!(
        t2 < Duration::from_secs(u64::from(SECS) - 5),
        "the upgrade outlasted the probe"
    );
    assert_eq!(cluster::role(&c.nodes[p]).0, "active");
    assert_eq!(cluster::role(&c.nodes[a]).0, "passive");
    assert_eq!(info["peer"]["version"], "0.2.0", "{info}");
    assert_eq!(info["sync_version"], 3, "both on the new protocol: {info}");
    assert_eq!(probe["sent"], 60_000, "{probe}");
    assert_eq!(
        probe["lost"], 0,
        "the rolling upgrade lost probe packets: {probe}"
    );
    let log = log_text(&c.nodes[a]);
    for line in [
        "update: the peer installed version 0.2.0",
        "update: version 0.2.0 (K2K 3) installed in slot b on trial",
        "stopping to start the version just installed",
        "draining: forwarding the connections this member has",
        "running version 0.2.0 (K2K 3) from slot b on trial",
        "update confirmed: version 0.2.0 rejoined its peer",
    ] {
        assert!(log.contains(line), "{line:?} missing from\n{log}");
    }
    let log = log_text(&c.nodes[p]);
    for line in [
        "update: version 0.2.0 (K2K 3) received from TDLAB000",
        "update: the cluster key is sealed for version 0.2.0",
        "key store: unsealing the cluster key refused: PCR 23 changed since it was sealed",
        "key store: the cluster key opened from the hand-off version 0.1.0 sealed for this version",
        "TPM pcrseal asked by TDLAB000",
    ] {
        assert!(log.contains(line), "{line:?} missing from\n{log}");
    }
    // Resealed: the hand-offs are gone on both members.
    for i in 1..=2 {
        let store = c.lab.dir().join(format!("fw{i}.secrets"));
        assert!(!store.join("ha-psk.handoff").exists(), "fw{i}");
    }
}

#[test]
fn altered_or_foreign_packages_are_refused_and_nothing_changes() {
    require_root!();
    let (c, pkgs, _) = start_booted("upgbad", false);
    let (a, p) = c.settled().expect("one active, the passive synchronized");
    // A byte of tandemd changed after signing: the manifest's digest no
    // longer matches.
    let bytes = std::fs::read(&pkgs.next).expect("package");
    let manifest_end = bytes
        .windows(12)
        .position(|w| w == b"manifest.sig")
        .expect("manifest.sig in the archive");
    let mut altered = bytes.clone();
    // Well past the two small members' headers: inside bin/tandemd.
    let at = manifest_end + 64 * 1024;
    altered[at] ^= 0x55;
    let altered_pkg = pkgs.dir.join("altered.pkg");
    std::fs::write(&altered_pkg, &altered).expect("write");
    // The same binaries signed by a key nobody trusts.
    let rogue_key = pkgs.dir.join("rogue.key");
    let (code, out, err) = tandemctl(&["system", "package", "keygen", "--key", s(&rogue_key)]);
    assert_eq!(code, Some(0), "{out}{err}");
    let rogue = sign(
        &pkgs.dir.join("rogue.pkg"),
        &next_bin_dir().expect("next build"),
        &rogue_key,
    );

    for (pkg, why) in [
        (&altered_pkg, "does not match its manifest"),
        (&rogue, "not from a trusted key"),
    ] {
        for (target, on) in [("local", a), ("remote", a), ("local", p)] {
            let (code, out, err) = update(&c.nodes[on], pkg, target);
            assert_eq!(code, Some(1), "{target} on fw{}: {out}{err}", on + 1);
            assert!(err.contains(why), "{target}: {err}");
            assert!(err.contains("nothing was installed"), "{target}: {err}");
        }
    }
    // Nothing changed: both on 0.1.0 from slot a, slot b empty, no restart.
    thread::sleep(Duration::from_secs(1));
    for n in &c.nodes {
        let info = hainfo(n);
        assert_eq!(info["local"]["version"], "0.1.0", "{info}");
        assert_eq!(info["local"]["slots"]["active"], "a", "{info}");
        assert_eq!(
            info["local"]["slots"]["backup_version"],
            Value::Null,
            "{info}"
        );
        let log = log_text(n);
        assert!(!log.contains("stopping to start the version"), "{log}");
        assert!(log.contains("update refused, nothing installed"), "{log}");
    }
    assert!(
        log_text(&c.nodes[p]).contains("update from TDLAB000"),
        "the peer logs the refused remote update"
    );
    assert_eq!(cluster::role(&c.nodes[a]).0, "active");
}

/// A fake tandemd for a package: says it is `version` when asked, and
/// then either fails at once or runs without ever joining.
fn broken_build(dir: &Path, version: &str, run: &str) -> PathBuf {
    let bin = dir.join(format!("broken-{version}"));
    std::fs::create_dir_all(&bin).expect("dir");
    let script = format!(
        "#!/bin/sh\nif [ \"$1\" = --build-info ]; then\n  echo '{{\"product\":\"tandem\",\"version\":\"{version}\",\"k2k_version\":2}}'\n  exit 0\nfi\n{run}\n"
    );
    for name in ["tandemd", "tandemctl"] {
        let p = bin.join(name);
        std::fs::write(&p, &script).expect("write");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    bin
}

#[test]
fn a_new_version_that_cannot_start_or_never_rejoins_is_rolled_back() {
    require_root!();
    let (c, pkgs, _) = start_booted("upgrb", false);
    let (_, p) = c.settled().expect("one active, the passive synchronized");
    let crashing = pkgs.build(
        "crashing.pkg",
        &broken_build(&pkgs.dir, "0.3.0", "echo 'cannot start' >&2; exit 1"),
    );
    let hanging = pkgs.build(
        "hanging.pkg",
        &broken_build(&pkgs.dir, "0.4.0", "exec sleep 600"),
    );
    // A version that exits at once: tandem-boot starts the previous one
    // again, which rejoins.
    let (code, out, err) = update(&c.nodes[p], &crashing, "local");
    assert_eq!(code, Some(0), "{out}{err}");
    let t0 = Instant::now();
    let info = wait_settled_on(&c.nodes[p], "0.1.0", Duration::from_secs(40));
    eprintln!("the crashing version was rolled back in {:?}", t0.elapsed());
    assert_eq!(info["local"]["slots"]["active"], "a", "{info}");
    let why = info["local"]["slots"]["last_rollback"].to_string();
    assert!(
        why.contains("version 0.3.0 in slot b stopped (exit status: 1) before it rejoined"),
        "{info}"
    );
    let log = log_text(&c.nodes[p]);
    assert!(
        log.contains("update rolled back: ") && log.contains("0.3.0 in slot b stopped"),
        "{log}"
    );
    // A version that runs but never rejoins: rolled back after the trial.
    let (code, out, err) = update(&c.nodes[p], &hanging, "local");
    assert_eq!(code, Some(0), "{out}{err}");
    let t0 = Instant::now();
    let info = wait_settled_on(&c.nodes[p], "0.1.0", Duration::from_secs(CONFIRM_SECS + 40));
    let took = t0.elapsed();
    eprintln!("the silent version was rolled back in {took:?}");
    assert!(took >= Duration::from_secs(CONFIRM_SECS), "{took:?}");
    let why = info["local"]["slots"]["last_rollback"].to_string();
    assert!(
        why.contains(&format!(
            "version 0.4.0 in slot b did not rejoin its peer within {CONFIRM_SECS} s"
        )),
        "{info}"
    );
    assert!(
        log_text(&c.nodes[p]).contains("did not rejoin its peer within"),
        "the event log says why"
    );
}
