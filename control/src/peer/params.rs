//! `tandemctl ha set` (HA-REFERENCE F9-F12): a parameter of the cluster
//! changed once, on one member, and applied on both: the cluster file is
//! rewritten here (atomic, validated as this member runs it), what applies
//! at once is applied here (priority, bounce on swap, LACP when passive,
//! gratuitous ARP interval, the sync's minimum age, interface weights),
//! then the change is sent to the peer like a `hasync`, which applies it
//! the same way. Without the peer (or with `--no-sync`) the change waits
//! as a local modification, and hainfo says so.

use serde::{Deserialize, Serialize};
use tandem_config::cluster::{ClusterFile, CLUSTER_FILE};

use super::confsync::ConfSync;
use super::files::Staging;

/// One change of `ha set`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "param", rename_all = "snake_case", deny_unknown_fields)]
pub enum HaSet {
    /// F9, "active firewall if equal": `this`, `other` or `none`.
    Prefer {
        /// Which member.
        member: String,
    },
    /// F10: only connections older than this are synchronized (0: all).
    SyncMinAge {
        /// Seconds.
        secs: u32,
    },
    /// F11: the swap options (each left out stays as it is).
    Swap {
        /// Bounce the data interfaces on becoming passive.
        #[serde(default)]
        bounce: Option<bool>,
        /// Keep LACP aggregates in distribution while passive.
        #[serde(default)]
        lacp_when_passive: Option<bool>,
        /// Repeat gratuitous ARP this often while active (0: never).
        #[serde(default)]
        garp_interval_ms: Option<u32>,
    },
    /// F12: data interfaces' weights in the quality factor, 0..=9999.
    Weight {
        /// (interface name, weight).
        weights: Vec<(String, u16)>,
    },
}

/// Applies `change` to the cluster file of member `me`; what changed, in
/// words.
pub fn change(file: &mut ClusterFile, me: &str, change: &HaSet) -> Result<Vec<String>, String> {
    let mut said = Vec::new();
    match change {
        HaSet::Prefer { member } => {
            let want = match member.as_str() {
                "this" => Some(me.to_owned()),
                "none" => None,
                "other" => Some(
                    file.members
                        .iter()
                        .find(|m| m.serial != me)
                        .map(|m| m.serial.clone())
                        .ok_or("the cluster has no other member to prefer")?,
                ),
                other => return Err(format!("prefer {other:?}: allowed this, other or none")),
            };
            said.push(format!(
                "prefer: {} (was {})",
                want.as_deref().unwrap_or("none"),
                file.prefer.as_deref().unwrap_or("none")
            ));
            file.prefer = want;
        }
        HaSet::SyncMinAge { secs } => {
            said.push(format!(
                "sync_min_age_secs: {secs} (was {})",
                file.ha.sync_min_age_secs
            ));
            file.ha.sync_min_age_secs = *secs;
        }
        HaSet::Swap {
            bounce,
            lacp_when_passive,
            garp_interval_ms,
        } => {
            if bounce.is_none() && lacp_when_passive.is_none() && garp_interval_ms.is_none() {
                return Err(
                    "swap: give --bounce on|off, --lacp-when-passive on|off or --garp-interval MS"
                        .into(),
                );
            }
            if let Some(b) = bounce {
                said.push(format!(
                    "bounce_on_swap: {b} (was {})",
                    file.ha.bounce_on_swap
                ));
                file.ha.bounce_on_swap = *b;
            }
            if let Some(l) = lacp_when_passive {
                said.push(format!(
                    "lacp_when_passive: {l} (was {})",
                    file.ha.lacp_when_passive
                ));
                file.ha.lacp_when_passive = *l;
            }
            if let Some(g) = garp_interval_ms {
                said.push(format!(
                    "garp_interval_ms: {g} (was {})",
                    file.ha.garp_interval_ms
                ));
                file.ha.garp_interval_ms = *g;
            }
        }
        HaSet::Weight { weights } => {
            if weights.is_empty() {
                return Err("weight: give INTERFACE=WEIGHT (0..=9999)".into());
            }
            for (name, w) in weights {
                if *w > 9999 {
                    return Err(format!("weight {name}={w}: allowed 0..=9999"));
                }
                let names: Vec<String> = file.interfaces.iter().map(|i| i.name.clone()).collect();
                let i = file
                    .interfaces
                    .iter_mut()
                    .find(|i| &i.name == name)
                    .ok_or_else(|| {
                        format!(
                            "weight: no interface {name:?} (interfaces: {})",
                            names.join(", ")
                        )
                    })?;
                said.push(format!("{name}.weight: {w} (was {})", i.weight));
                i.weight = *w;
            }
        }
    }
    Ok(said)
}

/// Puts `text` in place as the cluster file, atomically, once it is
/// validated as this member would run it; nothing changes on an error.
pub(crate) fn install_cluster_text(conf: &ConfSync, text: &[u8]) -> Result<(), String> {
    let _one_writer = conf
        .dir_lock
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let manifest = conf.manifest_with(text)?;
    let (mut staging, _) = Staging::begin(&conf.dir, manifest)?;
    staging.put(CLUSTER_FILE, 0, text)?;
    staging.verify()?;
    conf.validate_staged(staging.path())
        .map_err(|e| format!("the change would not run here: {e}; nothing was changed"))?;
    staging.switch()
}

/// `ha set` on the job thread: the report's lines, and the error that
/// stopped it (nothing written then). `send` pushes the change to the
/// peer (a hasync), or says why it could not.
pub fn set(
    conf: &ConfSync,
    what: &HaSet,
    send: impl FnOnce(&ConfSync) -> (Vec<String>, Result<(), String>),
) -> (Vec<String>, Result<(), String>) {
    let mut lines = Vec::new();
    let res = (|| -> Result<(), String> {
        let mut file = conf.cluster_file()?;
        let said = change(&mut file, &conf.serial, what)?;
        let text = tandem_config::cluster::cluster_file_text(&file)?.into_bytes();
        install_cluster_text(conf, &text)?;
        for s in &said {
            lines.push(format!("{}: {s}", conf.serial));
            conf.log
                .event("HA", format_args!("ha set: cluster parameter {s}"));
        }
        for e in conf.apply_changed(&[CLUSTER_FILE.to_owned()]) {
            conf.log.event("HA", format_args!("ha set: {e}"));
            lines.push(format!("{}: {e}", conf.serial));
        }
        Ok(())
    })();
    if let Err(e) = res {
        return (lines, Err(e));
    }
    let (sent, res) = send(conf);
    lines.extend(sent);
    match res {
        Ok(()) => (lines, Ok(())),
        Err(e) => {
            lines.push(format!(
                "not sent to the peer: {e}; the change is a local modification until tandemctl hasync runs (hainfo shows it)"
            ));
            (lines, Ok(()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> ClusterFile {
        tandem_config::cluster::check_cluster_text(super::super::TEST_CLUSTER_RON, "cluster.ron")
            .unwrap()
    }

    #[test]
    fn each_parameter_changes_the_cluster_file_and_says_what_it_was() {
        let mut f = file();
        let s = change(
            &mut f,
            "TDLAB0001",
            &HaSet::Prefer {
                member: "other".into(),
            },
        )
        .unwrap();
        assert_eq!(s, ["prefer: TDLAB0002 (was none)"]);
        assert_eq!(f.prefer.as_deref(), Some("TDLAB0002"));
        change(&mut f, "TDLAB0001", &HaSet::SyncMinAge { secs: 5 }).unwrap();
        assert_eq!(f.ha.sync_min_age_secs, 5);
        let s = change(
            &mut f,
            "TDLAB0001",
            &HaSet::Swap {
                bounce: Some(true),
                lacp_when_passive: None,
                garp_interval_ms: Some(500),
            },
        )
        .unwrap();
        assert_eq!(
            s,
            [
                "bounce_on_swap: true (was false)",
                "garp_interval_ms: 500 (was 0)"
            ]
        );
        change(
            &mut f,
            "TDLAB0001",
            &HaSet::Weight {
                weights: vec![("in".into(), 200)],
            },
        )
        .unwrap();
        assert_eq!(f.interfaces[0].weight, 200);
    }

    #[test]
    fn bad_values_are_refused_with_what_is_allowed() {
        let mut f = file();
        let before = f.clone();
        for (c, says) in [
            (
                HaSet::Prefer {
                    member: "both".into(),
                },
                "allowed this, other or none",
            ),
            (
                HaSet::Weight {
                    weights: vec![("in".into(), 10_000)],
                },
                "allowed 0..=9999",
            ),
            (
                HaSet::Weight {
                    weights: vec![("dmz".into(), 1)],
                },
                "no interface \"dmz\" (interfaces: in)",
            ),
            (HaSet::Weight { weights: vec![] }, "give INTERFACE=WEIGHT"),
            (
                HaSet::Swap {
                    bounce: None,
                    lacp_when_passive: None,
                    garp_interval_ms: None,
                },
                "give --bounce",
            ),
        ] {
            let e = change(&mut f, "TDLAB0001", &c).unwrap_err();
            assert!(e.contains(says), "{e}");
        }
        assert_eq!(f, before);
    }
}
