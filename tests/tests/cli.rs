//! The operator's first contact: tandemd refusing a bad configuration with
//! a message that says where and what, tandemctl explaining what to do when
//! no tandemd answers, and bad arguments refused. Real binaries, no lab.

use std::process::Command;

use tandem_tests::node::find_bin;

fn run(bin: &str, args: &[&str]) -> (i32, String, String) {
    let o = Command::new(find_bin(bin).expect("workspace binaries are built"))
        .args(args)
        .output()
        .expect("runs");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn write(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tandem-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn tandemd_check_names_file_line_field_and_what_is_allowed() {
    let bad = write(
        "bad.ron",
        "(\n    node: (name: \"fw1\", serial: \"S1\"),\n    interfaces: [\n        (name: \"in\", device: Vdev(\"net_af_packet0,iface=fw-in\"), addresses: [\"198.18.1.300/24\"]),\n    ],\n)\n",
    );
    let (code, _, err) = run("tandemd", &["--config", bad.to_str().unwrap(), "--check"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("bad.ron:4:"), "file and line: {err}");
    assert!(
        err.contains("interfaces[0].addresses[0]"),
        "field path: {err}"
    );
    assert!(
        err.contains("expected a.b.c.d/len"),
        "what is allowed: {err}"
    );

    let good = write(
        "good.ron",
        "(\n    node: (name: \"fw1\", serial: \"S1\"),\n    interfaces: [(name: \"in\", device: Vdev(\"net_af_packet0,iface=fw-in\"), addresses: [\"198.18.1.1/24\"])],\n)\n",
    );
    let (code, out, err) = run("tandemd", &["--config", good.to_str().unwrap(), "--check"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("configuration is valid"), "{out}");

    let (code, _, err) = run(
        "tandemd",
        &["--config", "/nonexistent/tandem.ron", "--check"],
    );
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/tandem.ron"), "{err}");
}

#[test]
fn tandemctl_without_a_daemon_says_what_to_check() {
    let (code, _, err) = run(
        "tandemctl",
        &["--socket", "/nonexistent/tandemd.sock", "status"],
    );
    assert_eq!(code, 2);
    assert!(err.contains("Is tandemd running?"), "{err}");
    assert!(err.contains("--socket"), "{err}");
}

#[test]
fn tandemctl_refuses_bad_arguments_with_usage() {
    let (code, _, err) = run("tandemctl", &["reboot"]);
    assert_eq!(code, 2);
    assert!(err.contains("unrecognized subcommand"), "{err}");
    let (code, _, err) = run("tandemctl", &["conn", "list", "--port", "99999"]);
    assert_eq!(code, 2);
    assert!(err.contains("99999"), "{err}");
}

/// The identity file beside the configuration is checked with it: its
/// serial must be the node's, and a bad field is named with its line.
#[test]
fn tandemd_check_reads_the_identity_file_beside_the_configuration() {
    let dir = std::env::temp_dir().join(format!("tandem-cli-ident-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("node.ron");
    std::fs::write(
        &cfg,
        "(\n    node: (name: \"fw1\", serial: \"S1\"),\n    interfaces: [(name: \"in\", device: Vdev(\"net_af_packet0,iface=fw-in\"), addresses: [\"198.18.1.1/24\"])],\n)\n",
    )
    .unwrap();
    let id = dir.join("identity.ron");
    let check = || run("tandemd", &["--config", cfg.to_str().unwrap(), "--check"]);
    // None: the node runs alone, and says so.
    let (code, out, err) = check();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("no identity file"), "{out}");
    std::fs::write(
        &id,
        "(serial: \"S1\", model: \"TD-LAB\", licence: Slave, ports: 2)\n",
    )
    .unwrap();
    let (code, out, err) = check();
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("identity: serial S1, model TD-LAB, licence slave, 2 data ports"),
        "{out}"
    );
    std::fs::write(
        &id,
        "(serial: \"S2\", model: \"TD-LAB\", licence: Slave, ports: 2)\n",
    )
    .unwrap();
    let (code, _, err) = check();
    assert_eq!(code, 2);
    assert!(
        err.contains("serial \"S2\" is not this node's (\"S1\" in node.serial"),
        "{err}"
    );
    std::fs::write(
        &id,
        "(\n serial: \"S1\",\n model: \"TD LAB\",\n licence: Slave,\n ports: 2,\n)\n",
    )
    .unwrap();
    let (code, _, err) = check();
    assert_eq!(code, 2);
    assert!(
        err.contains("identity.ron:3:") && err.contains("model:"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Shell completions come from tandemctl itself, need no tandemd, and the
/// bash script is valid bash that completes the commands.
#[test]
fn tandemctl_prints_shell_completions_without_a_daemon() {
    let (code, out, err) = run(
        "tandemctl",
        &[
            "--socket",
            "/nonexistent/tandemd.sock",
            "completions",
            "bash",
        ],
    );
    assert_eq!(code, 0, "{err}");
    for cmd in ["hainfo", "hamode", "hasync", "policy", "completions"] {
        assert!(out.contains(cmd), "{cmd} not completed");
    }
    let script = write("tandemctl.bash", &out);
    let check = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .expect("bash runs");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    for shell in ["zsh", "fish"] {
        let (code, out, err) = run("tandemctl", &["completions", shell]);
        assert_eq!(code, 0, "{shell}: {err}");
        assert!(out.contains("hainfo"), "{shell}");
    }
    let (code, _, err) = run("tandemctl", &["completions", "tcsh"]);
    assert_eq!(code, 2);
    assert!(err.contains("possible values: bash"), "{err}");
}
