//! The members' service on TCP 1300 (issue 12) between two real tandemd:
//! each member asks the other who it is over an authenticated, sealed
//! session (`tandemctl hapeer`); hostile clients on the HA link (garbage,
//! an oversized frame, a proof made without the key, half a frame, more
//! connections than allowed) are each refused with a reason, counted and
//! logged, and change nothing: no swap, the service still answers.
//!
//! Needs root (network namespaces): fails, not skips, without it.

use std::time::Duration;

use serde_json::Value;
use tandem_tests::cluster::{self, role};
use tandem_tests::lab::addr;
use tandem_tests::node::HaSection;
use tandem_tests::{require_root, tools};

#[test]
fn members_know_each_other_over_1300_and_hostile_clients_change_nothing() {
    require_root!();
    let c = cluster::start("peer", None, &[], |_, _: &mut HaSection| {}).expect("the cluster");
    let a = c
        .wait_single_active(Duration::from_secs(8))
        .expect("one member elected");
    let (fw1, fw2) = (&c.nodes[0], &c.nodes[1]);

    // Each asks the other, over the main HA link.
    for (me, peer, peer_addr) in [
        (fw1, "TDLAB0002", addr::HA_MAIN_2),
        (fw2, "TDLAB0001", addr::HA_MAIN_1),
    ] {
        let v = me.ctl(&["hapeer"]).expect("tandemctl hapeer");
        assert_eq!(v["result"], "peer", "{v}");
        assert_eq!(v["link"], "HA-main", "{v}");
        assert_eq!(v["addr"], format!("{peer_addr}:1300"), "{v}");
        assert_eq!(v["identity"]["serial"], peer, "{v}");
        assert_eq!(v["identity"]["model"], "TD-LAB", "{v}");
        assert_eq!(v["identity"]["licence"], "master", "{v}");
        assert_eq!(v["identity"]["firmware"], env!("CARGO_PKG_VERSION"), "{v}");
    }
    let text = fw1.ctl_text(&["hapeer"]).expect("tandemctl hapeer");
    assert!(
        text.starts_with("peer TDLAB0002 answers on 198.19.69.2:1300 over HA-main"),
        "{text}"
    );

    // The hostile clients, from fw2's side of the HA link, against fw1.
    let swaps_before = fw1.ctl(&["hainfo"]).expect("hainfo")["swaps"].clone();
    let argv = tools::tool_argv(
        "peer_hostile.py",
        &["--addr".into(), addr::HA_MAIN_1.into()],
    )
    .expect("the tool");
    let out = c
        .lab
        .fw(2)
        .exec_timeout(&argv, Duration::from_secs(40))
        .expect("peer_hostile.py runs");
    let cases: Vec<Value> = tools::json_lines(&String::from_utf8_lossy(&out.stdout));
    let answer = |name: &str| -> String {
        cases.iter().find(|v| v["case"] == name).unwrap_or_else(|| {
            panic!(
                "case {name} ran: {cases:?} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })["answer"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert!(
        answer("garbage").contains("not a tandem member's handshake"),
        "{cases:?}"
    );
    assert!(answer("oversize").contains("at most 256"), "{cases:?}");
    assert!(
        answer("badproof").contains("the pre-shared key does not match the cluster's"),
        "{cases:?}"
    );
    assert!(
        answer("half").contains("no complete handshake within 5 s"),
        "{cases:?}"
    );
    assert!(answer("busy").contains("busy"), "{cases:?}");
    for v in &cases {
        assert_eq!(v["closed"], true, "the server closed: {v}");
    }

    // Counted, logged, and nothing changed.
    let info = fw1.ctl(&["hainfo"]).expect("hainfo");
    let p = &info["peer_service"];
    for k in [
        "refused_malformed",
        "refused_oversize",
        "refused_auth",
        "refused_timeout",
        "refused_busy",
    ] {
        assert!(p[k].as_u64() >= Some(1), "{k} counted: {p}");
    }
    assert!(p["authenticated"].as_u64() >= Some(1), "{p}");
    assert_eq!(info["swaps"], swaps_before, "no swap: {info}");
    assert_eq!(role(&c.nodes[a]).0, "active");
    let log = fw1.ctl(&["log", "-n", "200"]).expect("log");
    let lines = log["lines"].to_string();
    assert!(
        lines.contains("members' service (TCP 1300): refused 198.19.69.2:")
            && lines.contains("pre-shared key does not match"),
        "{lines}"
    );
    assert!(
        lines.contains("members' service listening on 198.19.69.1:1300, 198.19.70.1:1300"),
        "{lines}"
    );
    // Still served.
    let v = fw2
        .ctl(&["hapeer"])
        .expect("tandemctl hapeer after the attack");
    assert_eq!(v["identity"]["serial"], "TDLAB0001", "{v}");
}
