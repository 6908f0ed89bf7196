//! `tandemctl ha set key` (HA-REFERENCE F8): the cluster's pre-shared key
//! changed on both members with no HA outage.
//!
//! Every HA channel (heartbeats, ICMP checks and their answers, the state
//! sync, the members' service) takes its keys from the member's
//! [`KeyRing`], and accepts both keys while a change travels:
//!
//! 1. stage: the peer, then this member, accept the new key too; both
//!    still send under the old one;
//! 2. the cluster file, which carries the key, is rewritten here and sent
//!    to the peer like a `hasync` (a restart from now on reads the new
//!    key on both); a cluster that keeps its key in each member's key
//!    store ([`crate::keystore`]) has each store take the new key at the
//!    stage instead (the previous copy kept until the commit);
//! 3. commit: the peer, then this member, send under the new key and
//!    still accept the old one;
//! 4. retire: each member's control thread drops the old key once it has
//!    heard the peer's heartbeats under the new one for
//!    [`crate::cluster::KEY_RETIRE_AFTER`].
//!
//! A member left staged follows by itself: when it hears the peer under
//! the staged key it commits too; staged for [`crate::cluster::KEY_STAGE_LIMIT`]
//! without that, it gives the change up. A failure before the commit
//! undoes the change on both (the cluster file included).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_config::Secret;
use tandem_dataplane::hakeys::{self, HaKeys, KeyPhase, KeyRing};

use super::confsync::{step, ConfSync};
use super::service::{PeerAnswer, PeerClient, PeerRequest};

/// Steps of the report.
const STEPS: usize = 6;

/// How long `ha set key` waits for both members to retire the old key
/// before it reports the change as still finishing.
pub const WAIT_RETIRED: Duration = Duration::from_secs(10);

/// The peer's side: a step of a key change asked by the other member.
pub fn handle(conf: &ConfSync, ring: &KeyRing, request: PeerRequest) -> PeerAnswer {
    let refused = |reason: String| PeerAnswer::Refused { reason };
    let mut staged = conf
        .staged_psk
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match request {
        PeerRequest::KeyStage { psk } => {
            let problems = tandem_config::psk_problems(psk.expose());
            if !problems.is_empty() {
                return refused(format!("the new key is too weak: {}", problems.join("; ")));
            }
            let keys = match HaKeys::derive(psk.expose().as_bytes(), ring.current().cluster_id()) {
                Ok(k) => Arc::new(k),
                Err(e) => return refused(e.to_string()),
            };
            if let Err(e) = ring.stage(keys) {
                return refused(e);
            }
            // A cluster that keeps its key in the members' stores: the
            // new key goes into this member's store now (a restart from
            // here on runs under it, as with the cluster's file).
            if keys_in_stores(conf) {
                if let Err(e) = crate::keystore::stage_change(&psk) {
                    ring.abort();
                    return refused(format!(
                        "this member's key store cannot take the new key: {e}"
                    ));
                }
            }
            *staged = Some(psk);
            PeerAnswer::KeyStep {
                phase: KeyPhase::Staged.as_str().into(),
            }
        }
        PeerRequest::KeyCommit => {
            let Some(psk) = staged.as_ref() else {
                return match ring.get().phase {
                    KeyPhase::Committed => PeerAnswer::KeyStep {
                        phase: KeyPhase::Committed.as_str().into(),
                    },
                    _ => {
                        refused("no key change is staged on this member: nothing to commit".into())
                    }
                };
            };
            if keys_in_stores(conf) {
                if crate::keystore::stored_key().as_ref() != Some(psk) {
                    return refused(
                        "this member's key store does not hold the new key: nothing committed"
                            .into(),
                    );
                }
            } else {
                match conf.cluster_file() {
                    Ok(f) if f.ha.psk == *psk => {}
                    Ok(_) => {
                        return refused(
                            "this member's cluster file does not carry the new key (the sync of the change did not land): nothing committed".into(),
                        )
                    }
                    Err(e) => return refused(e),
                }
            }
            // Staged here and not followed by itself yet: commit.
            if ring.get().phase == KeyPhase::Staged {
                if let Err(e) = ring.commit() {
                    return refused(e);
                }
            }
            hakeys::remember(psk.expose(), &ring.current());
            crate::keystore::commit_change();
            *staged = None;
            PeerAnswer::KeyStep {
                phase: KeyPhase::Committed.as_str().into(),
            }
        }
        PeerRequest::KeyAbort => {
            ring.abort();
            crate::keystore::undo_change();
            *staged = None;
            PeerAnswer::KeyStep {
                phase: ring.get().phase.as_str().into(),
            }
        }
        _ => refused("not a step of a key change".into()),
    }
}

/// Whether the cluster keeps its key in each member's key store: its
/// file carries none.
fn keys_in_stores(conf: &ConfSync) -> bool {
    conf.cluster_file().is_ok_and(|f| f.ha.psk.is_empty())
}

fn ask_step(client: &mut PeerClient, r: &PeerRequest) -> Result<String, String> {
    match client.ask(r) {
        Ok(PeerAnswer::KeyStep { phase }) => Ok(phase),
        Ok(other) => Err(super::service::unexpected(&other)),
        Err(e) => Err(e.to_string()),
    }
}

/// `ha set key` on the job thread: changes the cluster key to `psk` on
/// both members. `connect` opens a session with the peer under the keys
/// given. It waits up to `wait_retired` for both members to drop the old
/// key ([`WAIT_RETIRED`] from tandemctl). The report's lines, and the
/// error that stopped it (what it undid is in the lines).
pub fn change(
    conf: &ConfSync,
    ring: &Arc<KeyRing>,
    psk: &Secret,
    connect: impl Fn(&HaKeys) -> Result<(PeerClient, String), String>,
    wait_retired: Duration,
) -> (Vec<String>, Result<(), String>) {
    let me = conf.serial.clone();
    let peer_serial = conf
        .serials
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .find(|s| **s != me)
        .cloned()
        .unwrap_or_else(|| "peer".into());
    let mut lines = Vec::new();
    let set = ring.get();
    if set.phase != KeyPhase::Steady {
        return (
            lines,
            Err(format!(
                "a key change is under way here ({}, {} s ago): wait until hainfo shows the key steady",
                set.phase.as_str(),
                set.since.elapsed().as_secs()
            )),
        );
    }
    let problems = tandem_config::psk_problems(psk.expose());
    if !problems.is_empty() {
        return (
            lines,
            Err(format!(
                "the new key is too weak: {}; nothing was changed",
                problems.join("; ")
            )),
        );
    }
    step(
        &mut lines,
        &me,
        1,
        STEPS,
        "Key check",
        &format!("{} characters, strong", psk.expose().chars().count()),
    );
    let new = match HaKeys::derive(psk.expose().as_bytes(), set.current.cluster_id()) {
        Ok(k) => Arc::new(k),
        Err(e) => return (lines, Err(format!("{e}; nothing was changed"))),
    };
    if new.same_as(&set.current) {
        return (
            lines,
            Err("the new key is the key in force: choose another one; nothing was changed".into()),
        );
    }
    step(
        &mut lines,
        &me,
        2,
        STEPS,
        "Key derivation",
        &format!("Argon2id in {} ms", new.took().as_millis()),
    );
    let (mut client, link) = match connect(&set.current) {
        Ok(c) => c,
        Err(e) => {
            return (
                lines,
                Err(format!(
                    "{e}; the key is changed on both members at once, so the peer must answer: nothing was changed"
                )),
            )
        }
    };
    if let Err(e) = ask_step(&mut client, &PeerRequest::KeyStage { psk: psk.clone() }) {
        return (
            lines,
            Err(format!(
                "the peer did not stage the new key: {e}; nothing was changed"
            )),
        );
    }
    step(
        &mut lines,
        &peer_serial,
        3,
        STEPS,
        "Stage",
        &format!("accepts both keys (asked on {link})"),
    );
    // A cluster that keeps its key in the members' stores: each store
    // takes the new key at the stage; no cluster file carries it.
    let store = keys_in_stores(conf);
    let undo = |lines: &mut Vec<String>, client: &mut PeerClient, old: Option<&[u8]>| {
        ring.abort();
        crate::keystore::undo_change();
        if let Some(text) = old {
            if let Err(e) = super::params::install_cluster_text(conf, text) {
                lines.push(format!(
                    "WARNING: the cluster file could not be put back ({e}): it carries the new key, tandemd runs on the old one; run ha set key again"
                ));
            }
        }
        match ask_step(client, &PeerRequest::KeyAbort) {
            Ok(_) => lines.push("undone on both members: the old key only".into()),
            Err(e) => lines.push(format!(
                "undone here; the peer did not answer ({e}): it gives the staged key up by itself"
            )),
        }
    };
    if let Err(e) = ring.stage(new.clone()) {
        undo(&mut lines, &mut client, None);
        return (lines, Err(e));
    }
    if store {
        if let Err(e) = crate::keystore::stage_change(psk) {
            undo(&mut lines, &mut client, None);
            return (lines, Err(format!("this member's key store: {e}")));
        }
        step(
            &mut lines,
            &me,
            4,
            STEPS,
            "Stage and file",
            "accepts both keys; the key store of each member holds the new key",
        );
    } else {
        let old_text = match super::files::read_bounded(
            &conf.dir.join(tandem_config::cluster::CLUSTER_FILE),
        ) {
            Ok(t) => t,
            Err(e) => {
                undo(&mut lines, &mut client, None);
                return (lines, Err(e));
            }
        };
        let written = conf.cluster_file().and_then(|mut f| {
            f.ha.psk = psk.clone();
            let text = tandem_config::cluster::cluster_file_text(&f)?;
            super::params::install_cluster_text(conf, text.as_bytes())
        });
        if let Err(e) = written {
            undo(&mut lines, &mut client, None);
            return (lines, Err(e));
        }
        step(
            &mut lines,
            &me,
            4,
            STEPS,
            "Stage and file",
            "accepts both keys; cluster.ron carries the new key",
        );
        let (sent, res) = super::confsync::send(conf, &mut client, &link, false);
        lines.extend(sent.into_iter().map(|l| format!("  {l}")));
        if let Err(e) = res {
            undo(&mut lines, &mut client, Some(&old_text));
            return (
                lines,
                Err(format!(
                    "the cluster file with the new key could not be sent to the peer: {e}"
                )),
            );
        }
    }
    let peer = ask_step(&mut client, &PeerRequest::KeyCommit);
    if let Err(e) = ring.commit() {
        return (lines, Err(e));
    }
    hakeys::remember(psk.expose(), &new);
    crate::keystore::commit_change();
    match peer {
        Ok(_) => step(
            &mut lines,
            &peer_serial,
            5,
            STEPS,
            "Commit",
            "both send under the new key and accept the old one",
        ),
        Err(e) => step(
            &mut lines,
            &me,
            5,
            STEPS,
            "Commit",
            &format!(
                "committed here; the peer did not confirm ({e}): it commits by itself when it hears us under the new key"
            ),
        ),
    }
    let t0 = Instant::now();
    while t0.elapsed() < wait_retired && ring.get().phase != KeyPhase::Steady {
        std::thread::sleep(Duration::from_millis(50));
    }
    if ring.get().phase == KeyPhase::Steady {
        step(
            &mut lines,
            &me,
            6,
            STEPS,
            "Retire",
            &format!(
                "the peer is heard under the new key; the old key is refused now ({:.1} s)",
                t0.elapsed().as_secs_f64()
            ),
        );
    } else {
        step(
            &mut lines,
            &me,
            6,
            STEPS,
            "Retire",
            "the old key is still accepted: the peer is not heard under the new one yet (hainfo shows the key change); it is dropped once it is",
        );
    }
    (lines, Ok(()))
}
