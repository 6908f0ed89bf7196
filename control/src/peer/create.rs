//! `tandemctl ha create` (HA-REFERENCE F1): a node that runs alone turns
//! into the first member of a new cluster without a restart, so the
//! traffic through it goes on: it stays active, starts the election, the
//! state sync and the members' service, and its configuration moves into
//! a cluster directory that a second firewall can join
//! ([`super::join`]).
//!
//! Steps, the fallible ones first:
//! 1. checks: not a member, an identity file, the HA interfaces (present,
//!    not data ports), host addresses, the peer's address on each link
//!    (the other host of a /30 or /31, else given), the key's strength;
//! 2. the HA addresses (`ip addr replace`; removed again on failure);
//! 3. a random cluster id, the keys (Argon2id);
//! 4. the cluster directory staged (`cluster.ron` with this member in
//!    slot 0, the policy) and validated with the new `node.ron`;
//! 5. the dataplane goes HA ([`tandem_dataplane::node::Node::enable_ha`]),
//!    the election (as the incumbent active member), the configuration
//!    sync and the members' service are built;
//! 6. the files move in (the old `node.ron` kept as
//!    `node.ron.pre-cluster`), and the control loop takes the election.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use mio::Waker;
use serde::{Deserialize, Serialize};
use tandem_config::cluster::{ClusterFile, Member, CLUSTER_FILE};
use tandem_config::{Ipv4Cidr, Secret};

use super::files::{self, SyncState};
use crate::apiserver::{ApiContext, Installed};

/// One HA link of `ha create`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateLink {
    /// The kernel interface.
    pub interface: String,
    /// The link's name in logs and hainfo (default HA-main, HA-backup).
    #[serde(default)]
    pub name: Option<String>,
    /// This member's address with the prefix.
    pub address: String,
    /// The second member's address (default: the other host of a /30 or
    /// /31).
    #[serde(default)]
    pub peer: Option<Ipv4Addr>,
}

/// What `tandemctl ha create` gives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateArgs {
    /// The main HA link.
    pub main: CreateLink,
    /// The backup HA link.
    #[serde(default)]
    pub backup: Option<CreateLink>,
    /// Encrypt the state sync (it is always authenticated).
    #[serde(default)]
    pub encrypt: bool,
    /// Keep LACP aggregates in distribution on the passive member.
    #[serde(default = "yes")]
    pub lacp_when_passive: bool,
}

fn yes() -> bool {
    true
}

/// The other host of a /30 or /31 that holds `a`.
fn other_host(a: Ipv4Cidr) -> Option<Ipv4Addr> {
    let net = u32::from(a.network());
    let me = u32::from(a.addr);
    match a.prefix_len {
        31 => Some(Ipv4Addr::from(net + u32::from(me == net))),
        30 => Some(Ipv4Addr::from(if me == net + 1 {
            net + 2
        } else {
            net + 1
        })),
        _ => None,
    }
}

fn step(lines: &mut Vec<String>, n: usize, what: &str, info: &str) {
    lines.push(format!("[{n}/6] {what:<14} {info}"));
}

/// Runs `ha create` on the job thread: the report's lines and the error
/// that stopped it (before step 5 nothing changed).
pub fn create(
    ctx: &ApiContext,
    args: &CreateArgs,
    psk: &Secret,
    waker: &Arc<Waker>,
) -> (Vec<String>, Result<(), String>) {
    let mut lines = Vec::new();
    let mut added: Vec<(String, String)> = Vec::new();
    let res = create_steps(ctx, args, psk, waker, &mut lines, &mut added);
    if res.is_err() {
        for (addr, dev) in &added {
            let _ = super::join::ip(&["-4", "addr", "del", addr, "dev", dev]);
        }
    }
    (lines, res)
}

#[allow(clippy::too_many_lines)]
fn create_steps(
    ctx: &ApiContext,
    args: &CreateArgs,
    psk: &Secret,
    waker: &Arc<Waker>,
    lines: &mut Vec<String>,
    added: &mut Vec<(String, String)>,
) -> Result<(), String> {
    let cfg = ctx.cfg();
    // 1. Checks.
    let config_path = &ctx.config_path;
    let (config_dir, rel, cluster_dir) = super::join::fresh_cluster_dir(&cfg, config_path)?;
    if ctx.identity.model.is_none() {
        return Err(format!(
            "this firewall has no identity file ({}): the installer writes it (serial, model, licence, ports), and a cluster compares it",
            ctx.identity.file
        ));
    }
    let weak = tandem_config::psk_problems(psk.expose());
    if !weak.is_empty() {
        return Err(format!(
            "the pre-shared key is too weak: {}",
            weak.join("; ")
        ));
    }
    let mut links = Vec::new();
    for (i, l) in std::iter::once(&args.main).chain(&args.backup).enumerate() {
        let a: Ipv4Cidr = l
            .address
            .parse()
            .map_err(|e| format!("{}: {e}", l.address))?;
        super::join::check_ha_interface(&cfg, &l.interface, &l.address, a)?;
        let peer = match (l.peer, other_host(a)) {
            (Some(p), _) => p,
            (None, Some(p)) => p,
            (None, None) => {
                return Err(format!(
                    "{}: on a /{} the second member's address cannot be guessed: add peer=ADDRESS",
                    l.address, a.prefix_len
                ))
            }
        };
        if !a.contains(peer) || peer == a.addr {
            return Err(format!(
                "{}: the second member's address {peer} is not another host of {}",
                l.address,
                a.trunc()
            ));
        }
        let name = l.name.clone().unwrap_or_else(|| {
            if i == 0 {
                "HA-main".into()
            } else {
                "HA-backup".into()
            }
        });
        links.push((name, l.interface.clone(), a, peer));
    }
    step(
        lines,
        1,
        "this firewall",
        &format!(
            "{} (model {}, firmware {}, licence {})",
            ctx.identity.serial,
            ctx.identity.model.as_deref().unwrap_or_default(),
            ctx.identity.firmware,
            ctx.identity.licence.as_deref().unwrap_or_default()
        ),
    );
    // 2. HA addresses.
    for (_, dev, a, _) in &links {
        if super::join::add_address(dev, *a)? {
            added.push((a.to_string(), dev.clone()));
        }
    }
    step(
        lines,
        2,
        "HA links",
        &links
            .iter()
            .map(|(n, d, a, p)| format!("{n} on {d} {a} (second member {p})"))
            .collect::<Vec<_>>()
            .join("; "),
    );
    // 3. The cluster's id and keys.
    let mut id = [0u8; 4];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id)
        .map_err(|_| "no random numbers".to_string())?;
    let cluster_id = u32::from_be_bytes(id).max(1);
    let t0 = Instant::now();
    let keys = tandem_dataplane::hakeys::for_cluster(psk.expose(), cluster_id)
        .map_err(|e| e.to_string())?;
    step(
        lines,
        3,
        "keys",
        &format!(
            "cluster {cluster_id}; keys derived (Argon2id) in {} ms; key of {} characters, strong",
            t0.elapsed().as_millis(),
            psk.expose().chars().count()
        ),
    );
    // 4. The cluster directory, staged and validated. A member with a
    // TPM keeps the key in its key store, sealed; the cluster's file then
    // has none.
    let sealed_key = crate::tpm::node().is_some();
    let mut ha = tandem_config::cluster::new_ha(
        cluster_id,
        psk.expose(),
        args.encrypt,
        args.lacp_when_passive,
        &links,
    )?;
    if sealed_key {
        ha.psk = Secret::default();
    }
    let policy_src = cfg.firewall.policy_path(&config_dir);
    let mut firewall = cfg.firewall.clone();
    firewall.policy = policy_src.as_ref().map(|_| PathBuf::from("policy.ron"));
    let file = ClusterFile {
        members: vec![Member {
            serial: cfg.node.serial.clone(),
            slot: 0,
        }],
        prefer: None,
        interfaces: cfg.interfaces.clone(),
        routes: cfg.routes.clone(),
        firewall,
        ha,
        file_groups: Vec::new(),
    };
    let staging = super::join::StagingDir::new(&config_dir, &rel)?;
    staging.write(
        CLUSTER_FILE,
        tandem_config::cluster::cluster_file_text(&file)?.as_bytes(),
    )?;
    if let Some(p) = &policy_src {
        staging.write("policy.ron", &files::read_bounded(p)?)?;
    }
    let node_text = tandem_config::cluster::member_node_file(&cfg, &rel)?;
    let node_tmp = config_dir.join(format!(".{}.create", rel.display()));
    files::write_atomic(&node_tmp, node_text.as_bytes())?;
    let checked = tandem_config::load_with_cluster_dir(&node_tmp, staging.path())
        .map_err(|e| e.to_string())
        .and_then(|c| match c.firewall.policy_path(&config_dir) {
            Some(p) => ctx
                .node
                .check_policy(&p)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            None => Ok(()),
        });
    if let Err(e) = checked {
        let _ = std::fs::remove_file(&node_tmp);
        return Err(format!("the cluster's configuration would not run: {e}"));
    }
    let manifest = files::scan(staging.path())?;
    step(
        lines,
        4,
        "configuration",
        &format!(
            "{} and {} staged and valid ({} files)",
            rel.join(CLUSTER_FILE).display(),
            config_path.display(),
            manifest.len()
        ),
    );
    // 5. Move the files in, then turn HA on.
    let store = crate::keystore::dir_of(&cfg, config_path);
    let pre = super::join::install_member_files(config_path, &staging, &node_tmp, &cluster_dir)?;
    SyncState {
        revision: 1,
        digest: files::digest(&manifest),
        at: 0,
        from: String::new(),
    }
    .save(&super::wiring::state_file(&cfg))?;
    let undo = |why: String| -> String {
        let _ = std::fs::rename(&pre, config_path);
        let _ = std::fs::remove_dir_all(&cluster_dir);
        if sealed_key {
            crate::keystore::remove_stored(&store);
        }
        format!("{why}; the configuration files are back as they were: restart tandemd before trying again")
    };
    let mut new_cfg = tandem_config::load(config_path).map_err(|e| undo(e.to_string()))?;
    if sealed_key {
        crate::keystore::write_clear(&store, psk).map_err(&undo)?;
        crate::keystore::open(&mut new_cfg, config_path, &ctx.events).map_err(&undo)?;
        lines.push(format!(
            "        key store: {}",
            crate::keystore::status().unwrap_or_default()
        ));
    }
    let new_cfg = Arc::new(new_cfg);
    ctx.node
        .enable_ha(&new_cfg)
        .map_err(|e| undo(format!("the dataplane cannot turn HA on: {e}")))?;
    let registry = ctx
        .registry
        .as_ref()
        .ok_or_else(|| undo("no registry of the control loop".into()))?;
    let mut cluster = crate::cluster::Cluster::new(
        &new_cfg,
        &ctx.node,
        registry,
        crate::daemon::CLUSTER_BASE,
        &keys,
        config_path,
        true,
    )
    .map_err(|e| undo(format!("the election cannot start: {e}")))?
    .ok_or_else(|| undo("the election is off in the new configuration".into()))?;
    let conf = super::wiring::conf_sync(
        &new_cfg,
        config_path,
        &ctx.node,
        &ctx.events,
        (ctx.shared.clone(), waker.clone()),
    )
    .transpose()
    .map_err(|e| undo(format!("the configuration sync cannot start: {e}")))?;
    if let Some(c) = &conf {
        cluster.share_serials(c.serials.clone());
    }
    let addrs: Vec<SocketAddr> = links
        .iter()
        .map(|(_, _, a, _)| SocketAddr::new(a.addr.into(), super::service::PORT))
        .collect();
    let ring = ctx
        .node
        .key_ring()
        .cloned()
        .unwrap_or_else(|| tandem_dataplane::hakeys::KeyRing::new(keys.clone()));
    let peer = super::service::PeerService::start(
        &addrs,
        ring.clone(),
        ctx.identity.clone(),
        conf.clone(),
        ctx.events.clone(),
    )
    .map_err(|e| {
        ctx.events.event(
            "HA",
            format_args!("WARNING: the members' service is off: {e}"),
        )
    })
    .ok();
    let confwatch = conf.as_ref().and_then(|c| {
        let links = super::wiring::peer_links(&new_cfg);
        let (ring, serial) = (ring.clone(), new_cfg.node.serial.clone());
        super::confsync::ConfigWatch::start(
            c.clone(),
            Box::new(move || {
                super::wiring::connect_peer(
                    &links,
                    &ring.current(),
                    &serial,
                    std::time::Duration::from_secs(2),
                )
            }),
        )
        .ok()
    });
    ctx.shared.install(
        Installed {
            cfg: new_cfg.clone(),
            cluster,
            peer,
            confwatch,
            conf: conf.clone(),
        },
        waker,
    )?;
    added.clear();
    *ctx.cfg
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = new_cfg;
    *ctx.conf
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = conf;
    step(
        lines,
        5,
        "HA on",
        "this firewall stays active; election, state sync and members' service (TCP 1300) started",
    );
    step(
        lines,
        6,
        "next",
        &format!(
            "on the second firewall: tandemctl ha join --main {},{}/{} --member {}",
            links[0].1, links[0].3, links[0].2.prefix_len, links[0].2.addr
        ),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_second_member_of_a_30_or_31_is_the_other_host() {
        let c = |s: &str| s.parse::<Ipv4Cidr>().unwrap();
        assert_eq!(
            other_host(c("198.19.69.1/30")),
            Some(Ipv4Addr::new(198, 19, 69, 2))
        );
        assert_eq!(
            other_host(c("198.19.69.2/30")),
            Some(Ipv4Addr::new(198, 19, 69, 1))
        );
        assert_eq!(
            other_host(c("198.19.70.0/31")),
            Some(Ipv4Addr::new(198, 19, 70, 1))
        );
        assert_eq!(
            other_host(c("198.19.70.1/31")),
            Some(Ipv4Addr::new(198, 19, 70, 0))
        );
        assert_eq!(other_host(c("198.19.70.1/29")), None);
    }
}
