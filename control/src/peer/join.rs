//! A firewall joins a cluster (HA-REFERENCE F2, F3) with `tandemctl ha
//! join`: it proves the cluster key to a member over TCP 1300, the member
//! checks that it may join (model, data ports, licences, room in the
//! cluster, its HA links and addresses), records it in the cluster's
//! file, and the joiner takes every file of the cluster directory, then
//! restarts as a member (passive: its data ports stay silent while the
//! member forwards).
//!
//! Order, so that a join cut at any point leaves both as they were or
//! lets a second attempt finish it:
//! 1. the joiner checks itself, brings up its HA addresses, connects and
//!    proves the key (the member proves it back);
//! 2. it measures the link (5 pings, median under [`MAX_LATENCY`]);
//! 3. the member checks the request ([`check_join`]) and prepares its
//!    cluster file with the joiner in its slot, without applying it;
//! 4. the joiner fetches every file (the prepared cluster file included)
//!    into a staging directory, checks each against its SHA-256, and
//!    validates the whole as it will run it;
//! 5. the member applies its new cluster file (atomic, revision + 1);
//! 6. the joiner moves the staged directory in and its new `node.ron`
//!    over the old one (kept as `node.ron.pre-cluster`), then restarts.
//!
//! Before 5, neither changed anything (the joiner removes the HA addresses
//! it added). Between 5 and 6 the member lists the joiner: the same
//! firewall may join again (a listed serial rejoins its slot).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tandem_config::cluster::{ClusterFile, Member, CLUSTER_FILE};
use tandem_config::{Identity, Ipv4Cidr, Licence, NodeConfig};

use super::confsync::{revision_text, size_text, ConfSync};
use super::files::{self, FileEntry, Staging, SyncState};
use super::service::{PeerAnswer, PeerRequest};

/// The longest median round trip of the main HA link a join accepts.
pub const MAX_LATENCY: Duration = Duration::from_millis(200);
/// Pings measuring it.
pub const PINGS: usize = 5;

/// A joiner's HA link in its request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinLink {
    /// The kernel interface.
    pub interface: String,
    /// Its address with the prefix.
    pub address: String,
}

/// What a joiner says of itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinAsk {
    /// Its serial.
    pub serial: String,
    /// Its model.
    pub model: String,
    /// `master` or `slave`.
    pub licence: String,
    /// Its data ports.
    pub ports: u16,
    /// Its firmware version.
    pub firmware: String,
    /// Its HA links, main first.
    pub links: Vec<JoinLink>,
}

/// What the member knows of itself when it checks a join.
pub struct MemberView<'a> {
    /// Its serial.
    pub serial: &'a str,
    /// Its identity (read at each join: it is the hardware's).
    pub identity: &'a Identity,
    /// Its firmware version.
    pub firmware: &'a str,
    /// Its cluster file.
    pub file: &'a ClusterFile,
}

/// The address of slot `slot` on link `i` of the cluster file.
fn slot_address(file: &ClusterFile, i: usize, slot: u8) -> Option<Ipv4Cidr> {
    let l = file.ha.links.get(i)?;
    Some(if slot == 0 {
        l.address
    } else {
        Ipv4Cidr {
            addr: l.peer,
            prefix_len: l.address.prefix_len,
        }
    })
}

/// Whether `ask`, connecting from `from`, may join the cluster of `me`:
/// the slot it gets and the warnings (a firmware difference), or why not.
pub fn check_join(
    me: &MemberView<'_>,
    ask: &JoinAsk,
    from: IpAddr,
) -> Result<(u8, Vec<String>), String> {
    let id = me.identity;
    if ask.model != id.model {
        return Err(format!(
            "different model: this firewall is {}, the cluster's members are {} (a cluster is two firewalls of the same model)",
            ask.model, id.model
        ));
    }
    if ask.ports != id.ports {
        return Err(format!(
            "different number of network interfaces: this firewall has {} data ports, {} has {}",
            ask.ports, me.serial, id.ports
        ));
    }
    if ask.licence == Licence::Slave.as_str() && id.licence == Licence::Slave {
        return Err(format!(
            "licence conflict: this firewall and {} both have a slave licence (a cluster needs a master licence)",
            me.serial
        ));
    }
    let members = &me.file.members;
    let ours = members
        .iter()
        .find(|m| m.serial == me.serial)
        .map_or(0, |m| m.slot);
    let slot = match members.iter().find(|m| m.serial == ask.serial) {
        Some(m) => m.slot,
        None if members.len() >= 2 => {
            let names: Vec<&str> = members.iter().map(|m| m.serial.as_str()).collect();
            return Err(format!(
                "Too many firewalls in the HA cluster (members {}). To replace a member, run 'tandemctl ha cluster remove serial=SERIAL' then 'tandemctl ha cluster activate' on {}",
                names.join(", "),
                me.serial
            ));
        }
        None => 1 - ours.min(1),
    };
    let links = &me.file.ha.links;
    if ask.links.len() != links.len() {
        return Err(format!(
            "the cluster has {} HA link{} ({}), this firewall gave {}: give --main{} with the same interfaces",
            links.len(),
            if links.len() == 1 { "" } else { "s" },
            links
                .iter()
                .map(|l| format!("{} on {}", l.name, l.interface))
                .collect::<Vec<_>>()
                .join(", "),
            ask.links.len(),
            if links.len() > 1 { " and --backup" } else { "" }
        ));
    }
    for (i, (l, a)) in links.iter().zip(&ask.links).enumerate() {
        if a.interface != l.interface {
            return Err(format!(
                "{}: the cluster's link is on interface {}, this firewall gave {}",
                l.name, l.interface, a.interface
            ));
        }
        let want = slot_address(me.file, i, slot).unwrap_or(l.address);
        if a.address != want.to_string() {
            return Err(format!(
                "{}: {} is not the address of the cluster's free place on this link ({want}): give that one",
                l.name, a.address
            ));
        }
        if i == 0 && from != IpAddr::V4(want.addr) {
            return Err(format!(
                "{}: the join came from {from}, not from the address it gives ({})",
                l.name, want.addr
            ));
        }
    }
    let mut warnings = Vec::new();
    if ask.firmware != me.firmware {
        warnings.push(format!(
            "firmware {} (this firewall) differs from {} ({}): the cluster runs in fail-soft mode (the state sync speaks the version both know) until both run the same",
            ask.firmware, me.firmware, me.serial
        ));
    }
    Ok((slot, warnings))
}

/// A join being served on one connection of the members' service.
pub struct Joining {
    serial: String,
    slot: u8,
    revision: u64,
    /// The cluster file with the joiner, not applied yet.
    cluster: Vec<u8>,
    /// The directory as the joiner gets it (with that cluster file).
    files: Vec<FileEntry>,
}

impl ConfSync {
    /// Serves a join request (member side). `from` is where the
    /// connection comes from, `firmware` this build's version.
    pub fn handle_join(
        &self,
        request: PeerRequest,
        joining: &mut Option<Joining>,
        from: SocketAddr,
        firmware: &str,
    ) -> PeerAnswer {
        let refuse = |reason: String| PeerAnswer::Refused { reason };
        match request {
            PeerRequest::Ping { t } => PeerAnswer::Pong { t },
            PeerRequest::JoinRequest { ask } => match self.accept(&ask, from.ip(), firmware) {
                Ok((j, warnings)) => {
                    let answer = PeerAnswer::JoinAccepted {
                        slot: j.slot,
                        revision: j.revision,
                        files: j.files.clone(),
                        warnings,
                    };
                    *joining = Some(j);
                    answer
                }
                Err(e) => {
                    self.log.event(
                        "HA",
                        format_args!("join of {} from {} refused: {e}", ask.serial, from.ip()),
                    );
                    refuse(e)
                }
            },
            PeerRequest::JoinFile { path, offset } => {
                let Some(j) = joining.as_ref() else {
                    return refuse("no join in progress on this connection".into());
                };
                if !j.files.iter().any(|f| f.path == path) {
                    return refuse(format!("{path} is not in the cluster directory"));
                }
                let bytes = if path == CLUSTER_FILE {
                    Ok(j.cluster.clone())
                } else {
                    files::read_bounded(&self.dir.join(&path))
                };
                match bytes {
                    Ok(b) => {
                        let from = usize::try_from(offset).unwrap_or(usize::MAX).min(b.len());
                        let to = (from + super::confsync::CHUNK).min(b.len());
                        PeerAnswer::FileChunk {
                            size: b.len() as u64,
                            data: files::hex(&b[from..to]),
                        }
                    }
                    Err(e) => refuse(e),
                }
            }
            PeerRequest::JoinCommit => match joining.take() {
                None => refuse("no join in progress on this connection".into()),
                Some(j) => match self.record(&j) {
                    Ok(()) => PeerAnswer::JoinCommitted {
                        revision: j.revision,
                    },
                    Err(e) => refuse(e),
                },
            },
            PeerRequest::JoinAbort { reason } => {
                if let Some(j) = joining.take() {
                    self.log.event(
                        "HA",
                        format_args!("join of {} abandoned by the joiner: {reason}", j.serial),
                    );
                }
                PeerAnswer::SyncStored
            }
            _ => refuse("not a request of a join".into()),
        }
    }

    fn accept(
        &self,
        ask: &JoinAsk,
        from: IpAddr,
        firmware: &str,
    ) -> Result<(Joining, Vec<String>), String> {
        let identity = match &self.identity_file {
            Some(p) => tandem_config::load_identity(p).map_err(|e| {
                format!("the member cannot read its own identity ({e}): fix it on the member first")
            })?,
            None => {
                return Err(
                    "the member has no identity file: a cluster compares identities; write it on the member first".into(),
                )
            }
        };
        let mut file = self
            .cluster_file()
            .map_err(|e| format!("on the member: {e}"))?;
        let (slot, warnings) = check_join(
            &MemberView {
                serial: &self.serial,
                identity: &identity,
                firmware,
                file: &file,
            },
            ask,
            from,
        )?;
        if !file.members.iter().any(|m| m.serial == ask.serial) {
            file.members.push(Member {
                serial: ask.serial.clone(),
                slot,
            });
            file.members.sort_by_key(|m| m.slot);
        }
        let cluster = tandem_config::cluster::cluster_file_text(&file)?.into_bytes();
        let manifest = self.manifest_with(&cluster)?;
        let state = SyncState::load(&self.state_file)?.unwrap_or_default();
        Ok((
            Joining {
                serial: ask.serial.clone(),
                slot,
                revision: state.revision.saturating_add(1),
                cluster,
                files: manifest,
            },
            warnings,
        ))
    }

    /// Applies the cluster file with the joiner (atomic) and records the
    /// revision.
    fn record(&self, j: &Joining) -> Result<(), String> {
        self.write_cluster_file(&j.files, &j.cluster, j.revision)
            .map_err(|e| {
                format!("the cluster's configuration changed during the join ({e}); join again")
            })?;
        if let Ok(mut s) = self.serials.lock() {
            if !s.contains(&j.serial) {
                s.push(j.serial.clone());
            }
        }
        self.log.event(
            "HA",
            format_args!(
                "{} joined the cluster in slot {} (configuration revision {})",
                j.serial,
                j.slot,
                revision_text(j.revision)
            ),
        );
        Ok(())
    }
}

/// What `tandemctl ha join` gives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinArgs {
    /// The main HA link: interface and this firewall's address on it.
    pub main: JoinLink,
    /// The backup HA link, if the cluster has one.
    #[serde(default)]
    pub backup: Option<JoinLink>,
    /// The member's address on the main link.
    pub member: Ipv4Addr,
}

/// An HA address this join added, removed again if the join fails.
struct Added(String, String);

/// Runs `ip ARGS`; its output, or what it said when it failed.
pub(crate) fn ip(args: &[&str]) -> Result<String, String> {
    let o = std::process::Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip {}: {e}", args.join(" ")))?;
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }
}

/// Where a firewall that is not a member yet keeps its cluster directory
/// once it creates or joins one: (the configuration's directory, the
/// cluster directory's name there, its path). Fails if it is a member
/// already or the directory exists.
pub(crate) fn fresh_cluster_dir(
    cfg: &NodeConfig,
    config_path: &Path,
) -> Result<(PathBuf, PathBuf, PathBuf), String> {
    if cfg.ha.is_some() || cfg.cluster.is_some() {
        return Err("this firewall is already a cluster member (its configuration has an ha section or a cluster directory)".into());
    }
    let config_dir = config_path.parent().unwrap_or(Path::new("")).to_path_buf();
    let rel = PathBuf::from(format!(
        "{}.cluster",
        config_path
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
    ));
    let dir = config_dir.join(&rel);
    if dir.exists() {
        return Err(format!(
            "{} exists: the cluster directory of an earlier cluster? Move it away first",
            dir.display()
        ));
    }
    Ok((config_dir, rel, dir))
}

/// Checks an HA link's interface and address on this firewall: the
/// interface exists and is not a data port's, the address is a host's in
/// a network with room for two members.
pub(crate) fn check_ha_interface(
    cfg: &NodeConfig,
    interface: &str,
    text: &str,
    a: Ipv4Cidr,
) -> Result<(), String> {
    if !Path::new("/sys/class/net").join(interface).exists() {
        return Err(format!(
            "{interface}: no such interface on this firewall (ip link shows them)"
        ));
    }
    if cfg
        .interfaces
        .iter()
        .any(|i| i.kernel_interface() == Some(interface))
    {
        return Err(format!(
            "{interface} is a data port's kernel interface: HA links need interfaces of their own"
        ));
    }
    if a.prefix_len > 31 {
        return Err(format!(
            "{text}: a /{} has no room for two members",
            a.prefix_len
        ));
    }
    if a.prefix_len <= 30 && (a.addr == a.network() || a.addr == a.broadcast()) {
        return Err(format!(
            "{text}: the network or broadcast address of its network, not a host's"
        ));
    }
    Ok(())
}

/// Puts address `a` on `dev` and brings it up; whether it added it (it
/// was not there).
pub(crate) fn add_address(dev: &str, a: Ipv4Cidr) -> Result<bool, String> {
    let have = ip(&["-4", "-o", "addr", "show", "dev", dev])?;
    let cidr = a.to_string();
    let added = !have.split_whitespace().any(|w| w == cidr);
    if added {
        ip(&["-4", "addr", "replace", &cidr, "dev", dev])?;
    }
    ip(&["link", "set", dev, "up"])?;
    Ok(added)
}

/// The joiner's side, run on the API's job thread: the report's lines,
/// and the error that stopped it (nothing changed then).
pub fn join(
    cfg: &NodeConfig,
    config_path: &Path,
    identity_file: &Path,
    psk: &tandem_config::Secret,
    args: &JoinArgs,
) -> (Vec<String>, Result<(), String>) {
    let mut lines = Vec::new();
    let mut added: Vec<Added> = Vec::new();
    let res = join_steps(
        cfg,
        config_path,
        identity_file,
        psk,
        args,
        &mut lines,
        &mut added,
    );
    if res.is_err() {
        for Added(addr, dev) in &added {
            let _ = ip(&["-4", "addr", "del", addr, "dev", dev]);
        }
    }
    (lines, res)
}

fn step(lines: &mut Vec<String>, n: usize, what: &str, info: &str) {
    lines.push(format!("[{n:>2}/9] {what:<14} {info}"));
}

#[allow(clippy::too_many_lines)]
fn join_steps(
    cfg: &NodeConfig,
    config_path: &Path,
    identity_file: &Path,
    psk: &tandem_config::Secret,
    args: &JoinArgs,
    lines: &mut Vec<String>,
    added: &mut Vec<Added>,
) -> Result<(), String> {
    // 1. This firewall.
    let (config_dir, cluster_rel, cluster_dir) = fresh_cluster_dir(cfg, config_path)?;
    let identity = tandem_config::load_identity(identity_file).map_err(|e| {
        format!("this firewall has no usable identity file ({e}); the installer writes it (serial, model, licence, ports), and a cluster compares it")
    })?;
    let weak = tandem_config::psk_problems(psk.expose());
    if !weak.is_empty() {
        return Err(format!(
            "the pre-shared key is too weak: {}",
            weak.join("; ")
        ));
    }
    let links: Vec<(&JoinLink, Ipv4Cidr)> = std::iter::once(&args.main)
        .chain(args.backup.as_ref())
        .map(|l| {
            l.address
                .parse::<Ipv4Cidr>()
                .map(|a| (l, a))
                .map_err(|e| format!("{}: {e}", l.address))
        })
        .collect::<Result<_, _>>()?;
    for (l, a) in &links {
        check_ha_interface(cfg, &l.interface, &l.address, *a)?;
    }
    let main = links[0].1;
    if !main.contains(args.member) || args.member == main.addr {
        return Err(format!(
            "--member {} is not another address of the main link's network {}",
            args.member,
            main.trunc()
        ));
    }
    step(
        lines,
        1,
        "this firewall",
        &format!(
            "{} (model {}, firmware {}, licence {}, {} data ports)",
            identity.serial,
            identity.model,
            tandem_dataplane::build::get().version,
            identity.licence.as_str(),
            identity.ports
        ),
    );
    // 2. HA addresses.
    for (l, a) in &links {
        if add_address(&l.interface, *a)? {
            added.push(Added(a.to_string(), l.interface.clone()));
        }
    }
    step(
        lines,
        2,
        "HA addresses",
        &links
            .iter()
            .map(|(l, a)| format!("{} {a}", l.interface))
            .collect::<Vec<_>>()
            .join(", "),
    );
    // 3. Connect and prove the key.
    let addr = SocketAddr::new(args.member.into(), super::service::PORT);
    let t0 = Instant::now();
    let client = connect_join(addr, psk, &identity.serial)?;
    step(
        lines,
        3,
        "authenticated",
        &format!(
            "both proved the pre-shared key: member {} at {addr}, cluster {} ({} ms)",
            client.1,
            client.2,
            t0.elapsed().as_millis()
        ),
    );
    let mut client = client.0;
    let abort = |client: &mut super::service::PeerClient, why: &str| {
        let _ = client.ask(&PeerRequest::JoinAbort {
            reason: why.to_owned(),
        });
    };
    // 4. Latency.
    let mut rtts = Vec::new();
    for i in 0..PINGS {
        let t = Instant::now();
        match client.ask(&PeerRequest::Ping { t: i as u64 }) {
            Ok(PeerAnswer::Pong { .. }) => rtts.push(t.elapsed()),
            Ok(other) => return Err(super::service::unexpected(&other)),
            Err(e) => return Err(e.to_string()),
        }
    }
    rtts.sort();
    let median = rtts[PINGS / 2];
    if median >= MAX_LATENCY {
        let why = format!(
            "HA link latency on the main link is {:.0} ms (median of {PINGS} round trips); it must be under {} ms",
            median.as_secs_f64() * 1e3,
            MAX_LATENCY.as_millis()
        );
        abort(&mut client, &why);
        return Err(why);
    }
    step(
        lines,
        4,
        "latency",
        &format!(
            "main link {:.2} ms (median of {PINGS}; limit {} ms)",
            median.as_secs_f64() * 1e3,
            MAX_LATENCY.as_millis()
        ),
    );
    // 5. The member's checks.
    let ask = JoinAsk {
        serial: identity.serial.clone(),
        model: identity.model.clone(),
        licence: identity.licence.as_str().into(),
        ports: identity.ports,
        firmware: tandem_dataplane::build::get().version.into(),
        links: links
            .iter()
            .map(|(l, a)| JoinLink {
                interface: l.interface.clone(),
                address: a.to_string(),
            })
            .collect(),
    };
    let (slot, revision, manifest, warnings) = match client.ask(&PeerRequest::JoinRequest { ask }) {
        Ok(PeerAnswer::JoinAccepted {
            slot,
            revision,
            files,
            warnings,
        }) => (slot, revision, files, warnings),
        Ok(other) => return Err(super::service::unexpected(&other)),
        Err(super::service::PeerError::Refused { reason, .. }) => {
            return Err(format!("join refused by the member: {reason}"))
        }
        Err(e) => return Err(e.to_string()),
    };
    step(
        lines,
        5,
        "accepted",
        &format!(
            "same model ({}), {} data ports, licence {}: slot {slot}",
            identity.model,
            identity.ports,
            identity.licence.as_str()
        ),
    );
    for w in &warnings {
        lines.push(format!("        warning: {w}"));
    }
    // 6. The files, into a staging directory (bounded: the member holds
    // the key, but a broken one must not fill this disk).
    if manifest.len() > files::MAX_FILES
        || manifest.iter().any(|f| f.size > files::MAX_FILE)
        || manifest.iter().map(|f| f.size).sum::<u64>() > 4 * files::MAX_FILE
    {
        let why = format!(
            "the member's directory is too large ({} files; at most {} files of {} bytes, {} bytes in all)",
            manifest.len(),
            files::MAX_FILES,
            files::MAX_FILE,
            4 * files::MAX_FILE
        );
        abort(&mut client, &why);
        return Err(why);
    }
    let staging = StagingDir::new(&config_dir, &cluster_rel)?;
    for (i, f) in manifest.iter().enumerate() {
        files::check_path(&f.path)?;
        let mut bytes = Vec::new();
        loop {
            match client.ask(&PeerRequest::JoinFile {
                path: f.path.clone(),
                offset: bytes.len() as u64,
            }) {
                Ok(PeerAnswer::FileChunk { size, data }) => {
                    let chunk = files::unhex(&data)?;
                    if size != f.size || (chunk.is_empty() && (bytes.len() as u64) < size) {
                        return Err(format!(
                            "{}: the member sent {size} bytes of {}",
                            f.path, f.size
                        ));
                    }
                    bytes.extend(chunk);
                    if bytes.len() as u64 >= size {
                        break;
                    }
                }
                Ok(other) => return Err(super::service::unexpected(&other)),
                Err(e) => return Err(e.to_string()),
            }
        }
        if files::sha256(&bytes) != f.sha256 {
            let why = format!("{}: its SHA-256 is not the manifest's", f.path);
            abort(&mut client, &why);
            return Err(why);
        }
        staging.write(&f.path, &bytes)?;
        step(
            lines,
            6,
            "files",
            &format!(
                "{}/{} {} ({})",
                i + 1,
                manifest.len(),
                f.path,
                size_text(f.size)
            ),
        );
    }
    // 7. Validate the whole as this firewall will run it.
    let node_text = tandem_config::cluster::member_node_file(cfg, &cluster_rel)?;
    let node_tmp = config_dir.join(format!(".{}.join", cluster_rel.display()));
    files::write_atomic(&node_tmp, node_text.as_bytes())?;
    let checked = tandem_config::load_with_cluster_dir(&node_tmp, &staging.path).and_then(|c| {
        if let Some(p) = c.firewall.policy_path(&config_dir) {
            let names: Vec<&str> = c.interfaces.iter().map(|i| i.name.as_str()).collect();
            tandem_config::policy::load(&p, Some(&names)).map(|_| c)
        } else {
            Ok(c)
        }
    });
    let merged = match checked {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_file(&node_tmp);
            let why = format!("the cluster's configuration would not run on this firewall: {e}");
            abort(&mut client, &why);
            return Err(why);
        }
    };
    step(
        lines,
        7,
        "validated",
        &format!(
            "{} interfaces, {} routes, {} HA links as a member",
            merged.interfaces.len(),
            merged.routes.len(),
            merged.ha.as_ref().map_or(0, |h| h.links.len())
        ),
    );
    // 8. The member records this firewall.
    match client.ask(&PeerRequest::JoinCommit) {
        Ok(PeerAnswer::JoinCommitted { .. }) => {}
        Ok(other) => return Err(super::service::unexpected(&other)),
        Err(e) => {
            let _ = std::fs::remove_file(&node_tmp);
            return Err(e.to_string());
        }
    }
    step(
        lines,
        8,
        "recorded",
        &format!(
            "the member lists this firewall (revision {})",
            revision_text(revision)
        ),
    );
    // 9. Apply here: the directory, then node.ron (the old one kept); a
    // cluster that keeps its key in each member's store has none in its
    // file: the key given goes into this member's store.
    let store = crate::keystore::dir_of(cfg, config_path);
    let key_in_store = merged.ha.as_ref().is_some_and(|h| h.psk.is_empty());
    if key_in_store {
        crate::keystore::write_clear(&store, psk)?;
    }
    let pre =
        install_member_files(config_path, &staging, &node_tmp, &cluster_dir).inspect_err(|_| {
            if key_in_store {
                crate::keystore::remove_stored(&store);
            }
        })?;
    SyncState {
        revision,
        digest: files::digest(&manifest),
        at: super::confsync::now_unix(),
        from: merged
            .membership
            .as_ref()
            .and_then(|m| m.peer_serial())
            .unwrap_or_default()
            .to_owned(),
    }
    .save(&super::wiring::state_file(cfg))?;
    added.clear();
    step(
        lines,
        9,
        "applied",
        &format!(
            "{} and {} (the old file kept as {}); tandemd restarts as a member",
            config_path.display(),
            cluster_dir.display(),
            pre.display()
        ),
    );
    Ok(())
}

/// Makes a firewall a member on disk (`ha create`, `ha join`): keeps its
/// `node.ron` as `node.ron.pre-cluster`, moves the staged cluster
/// directory to `cluster_dir`, then the new `node.ron` (written at
/// `node_tmp`) over the old one. On failure the cluster directory is
/// removed again, so a second attempt is not refused. Returns where the
/// old file is kept.
pub(crate) fn install_member_files(
    config_path: &Path,
    staging: &StagingDir,
    node_tmp: &Path,
    cluster_dir: &Path,
) -> Result<PathBuf, String> {
    let pre = config_path.with_extension("ron.pre-cluster");
    std::fs::copy(config_path, &pre).map_err(|e| {
        format!(
            "cannot keep {} as {}: {e}",
            config_path.display(),
            pre.display()
        )
    })?;
    staging.install(cluster_dir)?;
    if let Err(e) = std::fs::rename(node_tmp, config_path) {
        let _ = std::fs::remove_dir_all(cluster_dir);
        return Err(format!(
            "cannot install the new {}: {e}; nothing changed",
            config_path.display()
        ));
    }
    Ok(pre)
}

/// A staging directory beside the configuration (a join's, a create's);
/// removed when dropped unless installed.
pub(crate) struct StagingDir {
    path: PathBuf,
    installed: std::cell::Cell<bool>,
}

impl StagingDir {
    /// A new one for the cluster directory `cluster_rel` of `config_dir`.
    pub(crate) fn new(config_dir: &Path, cluster_rel: &Path) -> Result<StagingDir, String> {
        let mut nonce = [0u8; 8];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
            .map_err(|_| "no random numbers".to_string())?;
        let path = config_dir.join(format!(
            "{}.staging-{}",
            cluster_rel.display(),
            files::hex(&nonce)
        ));
        std::fs::create_dir(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700));
        Ok(StagingDir {
            path,
            installed: std::cell::Cell::new(false),
        })
    }

    /// Its path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Writes file `rel` in it (mode 0600: the cluster file holds the key).
    pub(crate) fn write(&self, rel: &str, bytes: &[u8]) -> Result<(), String> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let to = self.path.join(rel);
        if let Some(p) = to.parent() {
            std::fs::create_dir_all(p).map_err(|e| format!("{}: {e}", p.display()))?;
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&to)
            .map_err(|e| format!("{}: {e}", to.display()))?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .map_err(|e| format!("{}: {e}", to.display()))
    }

    /// Moves it to `to`.
    pub(crate) fn install(&self, to: &Path) -> Result<(), String> {
        std::fs::rename(&self.path, to).map_err(|e| {
            format!(
                "cannot move {} to {}: {e}",
                self.path.display(),
                to.display()
            )
        })?;
        self.installed.set(true);
        if let Some(d) = to.parent() {
            let _ = std::fs::File::open(d).and_then(|f| f.sync_all());
        }
        Ok(())
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        if !self.installed.get() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Connects to a member as a joiner: the keys are derived once the
/// member said which cluster it serves. Returns the session, the
/// member's serial and the cluster id.
fn connect_join(
    addr: SocketAddr,
    psk: &tandem_config::Secret,
    serial: &str,
) -> Result<(super::service::PeerClient, String, u32), String> {
    super::service::PeerClient::connect_with(
        addr,
        serial,
        super::handshake::Purpose::Join,
        Duration::from_secs(5),
        |cluster_id| {
            tandem_dataplane::hakeys::for_cluster(psk.expose(), cluster_id)
                .map(|k| k.control().as_bytes().to_vec())
                .map_err(|e| e.to_string())
        },
    )
    .map_err(|e| match e {
        super::service::PeerError::Connect { .. } => format!(
            "no answer from {addr} within 5 s: check the HA link, the member's address and that it is a cluster member"
        ),
        super::service::PeerError::Handshake {
            source: super::handshake::HandshakeError::Refused(why),
            ..
        } => format!("join refused by the member: {why}"),
        other => other.to_string(),
    })
}

impl ConfSync {
    /// `ha cluster remove`: marks member `which` (a serial, or `remote`
    /// for the other member) for removal at the next `ha cluster
    /// activate`. Refused while that member is heard (`peer_heard`),
    /// unless `force`.
    pub fn remove_member(
        &self,
        which: &str,
        peer_heard: bool,
        force: bool,
    ) -> Result<String, String> {
        let file = self.cluster_file()?;
        let names = || {
            file.members
                .iter()
                .map(|m| m.serial.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let serial = if which == "remote" {
            file.members
                .iter()
                .find(|m| m.serial != self.serial)
                .map(|m| m.serial.clone())
                .ok_or_else(|| format!("the cluster has no other member (members: {})", names()))?
        } else {
            which.to_owned()
        };
        if serial == self.serial {
            return Err(format!(
                "{serial} is this firewall: remove a member from the other one"
            ));
        }
        if !file.members.iter().any(|m| m.serial == serial) {
            return Err(format!("{serial} is not a member (members: {})", names()));
        }
        if peer_heard && !force {
            return Err(format!(
                "{serial} was heard on the HA links in the last 3 s: stop it or disconnect it first (or add --force)"
            ));
        }
        *self
            .pending_removal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(serial.clone());
        Ok(format!(
            "{serial} will leave the cluster: run 'tandemctl ha cluster activate' to apply"
        ))
    }

    /// `ha cluster activate`: applies the pending removal (the cluster
    /// file without the member, atomic, revision + 1): its slot is free
    /// for a replacement.
    pub fn activate(&self, peer_heard: bool) -> Result<String, String> {
        let Some(serial) = self
            .pending_removal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        else {
            return Err("nothing to activate: run tandemctl ha cluster remove SERIAL first".into());
        };
        if peer_heard {
            return Err(format!(
                "{serial} was heard on the HA links in the last 3 s: nothing changed; stop or disconnect it, then run tandemctl ha cluster remove again"
            ));
        }
        let mut file = self.cluster_file()?;
        let slot = file
            .members
            .iter()
            .find(|m| m.serial == serial)
            .map(|m| m.slot)
            .ok_or_else(|| format!("{serial} is not a member any more"))?;
        file.members.retain(|m| m.serial != serial);
        let cluster = tandem_config::cluster::cluster_file_text(&file)?.into_bytes();
        let manifest = self.manifest_with(&cluster)?;
        let revision = SyncState::load(&self.state_file)?
            .unwrap_or_default()
            .revision
            + 1;
        self.write_cluster_file(&manifest, &cluster, revision)?;
        if let Ok(mut s) = self.serials.lock() {
            s.retain(|x| x != &serial);
        }
        let addresses: Vec<String> = (0..file.ha.links.len())
            .filter_map(|i| slot_address(&file, i, slot).map(|a| a.addr.to_string()))
            .collect();
        let msg = format!(
            "membership applied (revision {}): {serial} removed; members {}; slot {slot} ({}) free for a replacement",
            revision_text(revision),
            file.members
                .iter()
                .map(|m| m.serial.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            addresses.join(", ")
        );
        self.log.event("HA", format_args!("{msg}"));
        Ok(msg)
    }

    /// The directory's manifest with `cluster` as its cluster file.
    pub(crate) fn manifest_with(&self, cluster: &[u8]) -> Result<Vec<FileEntry>, String> {
        let mut manifest: Vec<FileEntry> = files::scan(&self.dir)?
            .into_iter()
            .filter(|f| f.path != CLUSTER_FILE)
            .collect();
        manifest.push(FileEntry {
            path: CLUSTER_FILE.into(),
            size: cluster.len() as u64,
            sha256: files::sha256(cluster),
        });
        manifest.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(manifest)
    }

    /// Swaps in the directory of `manifest` whose cluster file is
    /// `cluster` (the other files as they are), atomically, and records
    /// `revision` as synchronized (this member made it).
    fn write_cluster_file(
        &self,
        manifest: &[FileEntry],
        cluster: &[u8],
        revision: u64,
    ) -> Result<(), String> {
        let _one_writer = self
            .dir_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (mut staging, _) = Staging::begin(&self.dir, manifest.to_vec())?;
        staging.put(CLUSTER_FILE, 0, cluster)?;
        staging.switch()?;
        SyncState {
            revision,
            digest: files::digest(manifest),
            at: super::confsync::now_unix(),
            from: self.serial.clone(),
        }
        .save(&self.state_file)
    }

    /// The cluster file as it is on disk.
    pub(crate) fn cluster_file(&self) -> Result<ClusterFile, String> {
        let text = String::from_utf8(files::read_bounded(&self.dir.join(CLUSTER_FILE))?)
            .map_err(|_| "the cluster file is not text".to_string())?;
        tandem_config::cluster::check_cluster_text(&text, CLUSTER_FILE)
            .map_err(|e| format!("the cluster file does not load: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(members: &[(&str, u8)]) -> ClusterFile {
        let text = format!(
            r#"(
    members: [{}],
    interfaces: [(name: "in", device: Vdev("net_af_packet0,iface=fw-in"), addresses: ["198.18.1.1/24"])],
    ha: (cluster_id: 7, psk: "Lab-Cluster-Key-2026", links: [
        (name: "HA-main", interface: "ha-main", address: "198.19.69.1/30", peer: "198.19.69.2"),
        (name: "HA-backup", interface: "ha-backup", address: "198.19.70.1/30", peer: "198.19.70.2"),
    ]),
)"#,
            members
                .iter()
                .map(|(s, slot)| format!("(serial: \"{s}\", slot: {slot})"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        tandem_config::cluster::check_cluster_text(&text, "cluster.ron").unwrap()
    }

    fn identity(licence: Licence) -> Identity {
        Identity {
            serial: "TDLAB0001".into(),
            model: "TD-LAB".into(),
            licence,
            ports: 2,
        }
    }

    fn ask() -> JoinAsk {
        JoinAsk {
            serial: "TDLAB0002".into(),
            model: "TD-LAB".into(),
            licence: "master".into(),
            ports: 2,
            firmware: "0.1.0".into(),
            links: vec![
                JoinLink {
                    interface: "ha-main".into(),
                    address: "198.19.69.2/30".into(),
                },
                JoinLink {
                    interface: "ha-backup".into(),
                    address: "198.19.70.2/30".into(),
                },
            ],
        }
    }

    const FROM: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 19, 69, 2));

    #[test]
    fn a_removed_member_leaves_its_slot_free_only_once_activated() {
        let root = std::env::temp_dir().join(format!("tandem-rma-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dir = root.join("cluster");
        std::fs::create_dir_all(&dir).unwrap();
        let two =
            tandem_config::cluster::cluster_file_text(&file(&[("TDLAB0001", 0), ("TDLAB0002", 1)]))
                .unwrap();
        std::fs::write(dir.join(CLUSTER_FILE), &two).unwrap();
        let conf = ConfSync::new(
            "TDLAB0001",
            &dir,
            &root.join("state.json"),
            None,
            crate::peer::confsync::Hooks {
                validate: Box::new(|_: &Path| Ok(String::new())),
                apply: Box::new(|_: &[String]| Vec::new()),
                is_active: Box::new(|| false),
            },
            crate::eventlog::EventLog::open("fw1", None, 0, 0).unwrap(),
        )
        .unwrap();
        let e = conf.activate(false).unwrap_err();
        assert!(e.contains("nothing to activate"), "{e}");
        let e = conf.remove_member("remote", true, false).unwrap_err();
        assert!(e.contains("TDLAB0002 was heard on the HA links"), "{e}");
        let e = conf.remove_member("TDLAB0001", false, false).unwrap_err();
        assert!(e.contains("is this firewall"), "{e}");
        let e = conf.remove_member("TDLAB0009", false, false).unwrap_err();
        assert!(
            e.contains("TDLAB0009 is not a member (members: TDLAB0001, TDLAB0002)"),
            "{e}"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join(CLUSTER_FILE)).unwrap(),
            two
        );
        let m = conf.remove_member("remote", false, false).unwrap();
        assert!(m.starts_with("TDLAB0002 will leave the cluster"), "{m}");
        assert_eq!(
            std::fs::read_to_string(dir.join(CLUSTER_FILE)).unwrap(),
            two,
            "nothing before activate"
        );
        let e = conf.activate(true).unwrap_err();
        assert!(e.contains("in the last 3 s: nothing changed"), "{e}");
        conf.remove_member("remote", false, false).unwrap();
        let m = conf.activate(false).unwrap();
        assert!(
            m.contains("revision 00002): TDLAB0002 removed; members TDLAB0001; slot 1 (198.19.69.2, 198.19.70.2) free"),
            "{m}"
        );
        let f = conf.cluster_file().unwrap();
        assert_eq!(f.members.len(), 1);
        assert!(!conf.status().unwrap().local_changes);
        // The free slot takes a new firewall.
        let id = identity(Licence::Master);
        let mut a = ask();
        a.serial = "TDLAB0003".into();
        let got = check_join(
            &MemberView {
                serial: "TDLAB0001",
                identity: &id,
                firmware: "0.1.0",
                file: &f,
            },
            &a,
            FROM,
        );
        assert_eq!(got, Ok((1, vec![])));
        let _ = std::fs::remove_dir_all(&root);
    }

    fn check(f: &ClusterFile, licence: Licence, a: &JoinAsk) -> Result<(u8, Vec<String>), String> {
        let id = identity(licence);
        check_join(
            &MemberView {
                serial: "TDLAB0001",
                identity: &id,
                firmware: "0.1.0",
                file: f,
            },
            a,
            FROM,
        )
    }

    #[test]
    fn a_firewall_like_the_member_joins_the_free_slot() {
        let f = file(&[("TDLAB0001", 0)]);
        assert_eq!(check(&f, Licence::Master, &ask()), Ok((1, vec![])));
        // Listed already (a join cut after the member recorded it): again.
        let f2 = file(&[("TDLAB0001", 0), ("TDLAB0002", 1)]);
        assert_eq!(check(&f2, Licence::Master, &ask()), Ok((1, vec![])));
        // Slave joining a master: fine; another firmware: a warning.
        let mut a = ask();
        a.licence = "slave".into();
        a.firmware = "0.2.0".into();
        let (_, w) = check(&f, Licence::Master, &a).unwrap();
        assert!(w[0].contains("fail-soft"), "{w:?}");
    }

    #[test]
    fn each_refusal_says_what_differs() {
        let f = file(&[("TDLAB0001", 0)]);
        type Change = Box<dyn Fn(&mut JoinAsk)>;
        let cases: Vec<(Change, Licence, &str)> = vec![
            (Box::new(|a| a.model = "TD-BIG".into()), Licence::Master, "different model: this firewall is TD-BIG, the cluster's members are TD-LAB"),
            (Box::new(|a| a.ports = 3), Licence::Master, "different number of network interfaces: this firewall has 3 data ports, TDLAB0001 has 2"),
            (Box::new(|a| a.licence = "slave".into()), Licence::Slave, "licence conflict: this firewall and TDLAB0001 both have a slave licence"),
            (Box::new(|a| { a.links.pop(); }), Licence::Master, "the cluster has 2 HA links (HA-main on ha-main, HA-backup on ha-backup), this firewall gave 1"),
            (Box::new(|a| a.links[1].interface = "eth9".into()), Licence::Master, "HA-backup: the cluster's link is on interface ha-backup, this firewall gave eth9"),
            (Box::new(|a| a.links[0].address = "198.19.69.3/30".into()), Licence::Master, "HA-main: 198.19.69.3/30 is not the address of the cluster's free place on this link (198.19.69.2/30)"),
        ];
        for (change, licence, says) in cases {
            let mut a = ask();
            change(&mut a);
            let e = check(&f, licence, &a).unwrap_err();
            assert!(e.contains(says), "{e}\nwanted: {says}");
        }
        let full = file(&[("TDLAB0001", 0), ("TDLAB0003", 1)]);
        let e = check(&full, Licence::Master, &ask()).unwrap_err();
        assert!(
            e.starts_with("Too many firewalls in the HA cluster (members TDLAB0001, TDLAB0003)")
                && e.contains("tandemctl ha cluster remove"),
            "{e}"
        );
        // A join whose connection comes from elsewhere than it says.
        let id = identity(Licence::Master);
        let e = check_join(
            &MemberView {
                serial: "TDLAB0001",
                identity: &id,
                firmware: "0.1.0",
                file: &f,
            },
            &ask(),
            IpAddr::V4(Ipv4Addr::new(198, 19, 69, 3)),
        )
        .unwrap_err();
        assert!(e.contains("came from 198.19.69.3"), "{e}");
    }
}
