//! How the configuration sync meets the running node: what validates a
//! staged revision (this node's `node.ron` merged with it, its policy
//! compiled for this node's interfaces), what applying one does (the
//! policy reloaded live; other sections wait for a restart, and say so),
//! and how a member reaches the other's service.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tandem_config::NodeConfig;
use tandem_dataplane::hakeys::HaKeys;
use tandem_dataplane::node::Node;

use super::confsync::ConfSync;
use super::service::{PeerClient, PORT};
use crate::apiserver::ControlShared;
use crate::cluster::LiveParams;
use crate::eventlog::EventLog;
use mio::Waker;

/// The peer's service on each HA link, main first: (link name, address).
pub fn peer_links(cfg: &NodeConfig) -> Vec<(String, SocketAddr)> {
    cfg.ha
        .as_ref()
        .map(|ha| {
            ha.links
                .iter()
                .map(|l| (l.name.clone(), SocketAddr::new(l.peer.into(), PORT)))
                .collect()
        })
        .unwrap_or_default()
}

/// A session with the peer over the first HA link that answers; with the
/// link's name.
pub fn connect_peer(
    links: &[(String, SocketAddr)],
    keys: &HaKeys,
    serial: &str,
    timeout: Duration,
) -> Result<(PeerClient, String), String> {
    let mut failures = Vec::new();
    for (name, addr) in links {
        match PeerClient::connect(*addr, keys, serial, timeout) {
            Ok(c) => return Ok((c, name.clone())),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    Err(format!(
        "no answer from the peer's members' service (TCP {PORT}) on any HA link: {}",
        failures.join("; ")
    ))
}

/// What differs between two configurations of a member, the policy's
/// content aside: the sections that wait for a restart, and whether the
/// HA parameters that apply at once ([`LiveParams`]) changed.
fn changes(a: &NodeConfig, b: &NodeConfig, names: &[&str]) -> (Vec<&'static str>, bool) {
    let mut restart = Vec::new();
    let unweighted = |c: &NodeConfig| {
        let mut i = c.interfaces.clone();
        for x in &mut i {
            x.weight = 0;
        }
        i
    };
    if unweighted(a) != unweighted(b) {
        restart.push("interfaces");
    }
    if a.routes != b.routes {
        restart.push("routes");
    }
    let (mut fa, mut fb) = (a.firewall.clone(), b.firewall.clone());
    fa.policy = None;
    fb.policy = None;
    if fa != fb {
        restart.push("firewall");
    }
    let fixed = |c: &NodeConfig| {
        c.ha.clone().map(|mut h| {
            h.priority = 0;
            h.bounce_on_swap = false;
            h.lacp_when_passive = false;
            h.garp_interval_ms = 0;
            h.sync_min_age_secs = 0;
            // A key change (ha set key) applies itself, live.
            h.psk = tandem_config::Secret::new("");
            h
        })
    };
    if fixed(a) != fixed(b) {
        restart.push("ha");
    }
    let live = LiveParams::of(a, names) != LiveParams::of(b, names);
    (restart, live)
}

/// The state file of the configuration sync of node `cfg`.
pub fn state_file(cfg: &NodeConfig) -> PathBuf {
    cfg.control
        .state_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("/var/lib/tandem"))
        .join(format!("{}.cluster-sync.json", cfg.node.name))
}

/// The configuration sync of a cluster member whose configuration, read
/// from `config_path`, names a cluster directory; `None` for a node whose
/// configuration is one file.
pub fn conf_sync(
    cfg: &Arc<NodeConfig>,
    config_path: &Path,
    node: &Arc<Node>,
    log: &EventLog,
    control: (Arc<ControlShared>, Arc<Waker>),
) -> Option<Result<Arc<ConfSync>, String>> {
    let membership = cfg.membership.as_ref()?;
    let config_dir = config_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let validate = {
        let (node, config_path, config_dir) =
            (node.clone(), config_path.to_owned(), config_dir.clone());
        Box::new(move |staged: &Path| -> Result<String, String> {
            let cfg = crate::keystore::load_with_cluster_dir(&config_path, staged)
                .map_err(|e| e.to_string())?;
            let mut summary = format!(
                "{} interfaces, {} routes",
                cfg.interfaces.len(),
                cfg.routes.len()
            );
            if let Some(p) = cfg.firewall.policy_path(&config_dir) {
                let info = node.check_policy(&p).map_err(|e| e.to_string())?;
                summary += &format!(", a policy of {} rules", info.rules);
            }
            Ok(summary)
        })
    };
    let apply = {
        let (node, config_path) = (node.clone(), config_path.to_owned());
        let running = Mutex::new(cfg.clone());
        let (shared, waker) = control;
        let policy_file = cfg
            .firewall
            .policy
            .as_ref()
            .and_then(|p| p.strip_prefix(&membership.relative).ok())
            .map(|p| p.to_string_lossy().into_owned());
        Box::new(move |changed: &[String]| -> Vec<String> {
            let mut out = Vec::new();
            let new = match crate::keystore::load(&config_path) {
                Ok(c) => Arc::new(c),
                Err(e) => {
                    return vec![format!(
                        "WARNING: the configuration does not load any more ({e}); tandemd runs on with the one it has"
                    )]
                }
            };
            if policy_file
                .as_ref()
                .is_some_and(|p| changed.iter().any(|c| c == p))
            {
                out.push(match node.reload_policy() {
                    Ok(info) => format!(
                        "policy reloaded: {} rules, {} NAT rules",
                        info.rules, info.nat_rules
                    ),
                    Err(e) => format!("policy reload refused, the old policy stays: {e}"),
                });
            }
            let mut running = running
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let names: Vec<&str> = node
                .interfaces()
                .iter()
                .map(|i| i.config.name.as_str())
                .collect();
            let (restart, live) = changes(&running, &new, &names);
            if live {
                if let Some(p) = LiveParams::of(&new, &names) {
                    match node.set_ha_params(
                        u64::from(p.garp_interval_ms),
                        p.lacp_when_passive,
                        u64::from(p.sync_min_age_secs) * 1000,
                    ) {
                        Ok(()) => {
                            out.push(format!(
                                "HA parameters applied at once: priority {}, bounce on swap {}, LACP when passive {}, gratuitous ARP every {} ms, sync of connections older than {} s, weights {}",
                                p.priority,
                                if p.bounce_on_swap { "on" } else { "off" },
                                if p.lacp_when_passive { "on" } else { "off" },
                                p.garp_interval_ms,
                                p.sync_min_age_secs,
                                names
                                    .iter()
                                    .zip(&p.weights)
                                    .map(|(n, w)| format!("{n}={w}"))
                                    .collect::<Vec<_>>()
                                    .join(" ")
                            ));
                            shared.hand_live(new.clone(), p, &waker);
                        }
                        Err(e) => out.push(format!("HA parameters not applied: {e}")),
                    }
                }
            }
            if !restart.is_empty() {
                out.push(format!(
                    "{} changed: applied at the next start of tandemd on this member",
                    restart.join(", ")
                ));
            }
            *running = new;
            out
        })
    };
    let is_active = {
        let node = node.clone();
        Box::new(move || node.role() == tandem_dataplane::worker::Role::Active)
    };
    Some(ConfSync::new(
        &cfg.node.serial,
        &membership.dir,
        &state_file(cfg),
        Some(crate::daemon::identity_path(cfg, config_path)),
        super::confsync::Hooks {
            validate,
            apply,
            is_active,
        },
        log.clone(),
    ))
}
