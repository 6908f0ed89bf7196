//! The systemd units of `dist/systemd` (issue 13):
//! - `systemd-analyze verify` accepts tandemd.service, the hugepage
//!   reservation and the vfio-pci binding template (with the binaries of
//!   this build in place of /usr/local/bin), and refuses a unit whose
//!   binary is missing (the check can fail);
//! - the unit's `ExecReload=` line, run as systemd would run it against a
//!   real tandemd, reloads the policy in place (`systemctl reload`): the
//!   new rule applies and the event log says so. (The lab has no systemd
//!   as PID 1, so systemd itself does not start tandemd here.)
//!
//! Needs root (network namespaces) and systemd-analyze: fails, not skips,
//! without them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tandem_tests::lab::{heavy_lock, Lab};
use tandem_tests::node::find_bin;
use tandem_tests::{firewall, require_root};

fn dist() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("dist")
        .join("systemd")
}

/// The units copied to a fresh directory, the binaries of this build in
/// place of /usr/local/bin.
fn staged(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tandem-units-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let tandemd = find_bin("tandemd").expect("tandemd built");
    let tandemctl = find_bin("tandemctl").expect("tandemctl built");
    let boot = find_bin("tandem-boot").expect("tandem-boot built");
    for e in std::fs::read_dir(dist()).expect("dist/systemd") {
        let e = e.unwrap();
        let text = std::fs::read_to_string(e.path()).unwrap();
        let text = text
            .replace("/usr/local/bin/tandem-boot", &boot.to_string_lossy())
            .replace("/usr/local/bin/tandemd", &tandemd.to_string_lossy())
            .replace("/usr/local/bin/tandemctl", &tandemctl.to_string_lossy());
        std::fs::write(dir.join(e.file_name()), text).unwrap();
    }
    dir
}

fn verify(dir: &Path, units: &[&str]) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg("--man=no")
        .args(units)
        .current_dir(dir)
        .output()
        .expect("systemd-analyze runs (Debian package systemd)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn the_units_verify_and_a_unit_with_a_missing_binary_does_not() {
    let dir = staged("verify");
    // The template, as an instance (the instance name is the PCI address
    // on a real machine).
    std::fs::copy(
        dir.join("tandem-vfio@.service"),
        dir.join("tandem-vfio@x.service"),
    )
    .unwrap();
    let (ok, out) = verify(
        &dir,
        &[
            "./tandemd.service",
            "./tandem-hugepages.service",
            "./tandem-vfio@x.service",
        ],
    );
    assert!(ok, "{out}");
    let unit = std::fs::read_to_string(dir.join("tandemd.service")).unwrap();
    for want in [
        "RuntimeDirectory=tandem",
        "RuntimeDirectoryMode=0700",
        "ExecReload=",
        "Requires=dev-hugepages.mount",
        "LimitMEMLOCK=infinity",
        // tandemd runs from its installation slot (updates, rollback).
        "tandem-boot --root /var/lib/tandem/firmware -- --config",
    ] {
        assert!(unit.contains(want), "{want}");
    }
    std::fs::write(
        dir.join("broken.service"),
        unit.replace(
            &find_bin("tandem-boot")
                .unwrap()
                .to_string_lossy()
                .into_owned(),
            "/nonexistent/tandem-boot",
        ),
    )
    .unwrap();
    let (ok, out) = verify(&dir, &["./broken.service"]);
    assert!(!ok && out.contains("/nonexistent/tandem-boot"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

const POLICY: &str = r#"(
    rules: [
        (action: Pass, from: ["198.18.1.0/24"], proto: Icmp, icmp_types: [8]),
    ],
    default_action: Block,
)"#;

#[test]
fn the_units_reload_line_reloads_the_policy_in_place() {
    require_root!();
    let _lock = heavy_lock();
    let dir = staged("reload");
    let lab = Lab::single_node("sdreload").expect("the lab");
    let path = firewall::write_policy(&lab, "policy.ron", POLICY).unwrap();
    let node = firewall::start_with_policy(&lab, 1, &path).expect("tandemd");
    let pid = node.proc.pid();
    let unit = std::fs::read_to_string(dir.join("tandemd.service")).unwrap();
    let reload = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecReload="))
        .expect("an ExecReload line");
    // The unit's socket is /run/tandem/tandemd.sock; the lab's node has its
    // own.
    let line = reload.replace("/run/tandem/tandemd.sock", &node.socket.to_string_lossy());
    let argv: Vec<&str> = line.split_whitespace().collect();
    let more = POLICY.replace(
        "icmp_types: [8]),",
        "icmp_types: [8]),\n        (action: Pass, from: [\"198.18.1.0/24\"], proto: Udp, dst_ports: [\"53\"]),",
    );
    std::fs::write(&path, more).unwrap();
    let out = tandem_tests::cmd::run_timeout(
        {
            let mut c = Command::new(argv[0]);
            c.args(&argv[1..]);
            c
        },
        Duration::from_secs(30),
    )
    .expect("the reload command runs");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(node.proc.pid(), pid, "reloaded in place, not restarted");
    let s = node.ctl(&["stats"]).expect("stats");
    assert_eq!(s["firewall"]["rules"], 2, "{s}");
    let log = node.ctl(&["log", "--lines", "50"]).expect("log")["lines"].to_string();
    assert!(log.contains("policy reloaded"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}
