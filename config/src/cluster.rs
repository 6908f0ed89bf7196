//! The cluster's shared configuration: what both members of a cluster run
//! identically, written once, in a directory beside each member's own
//! `node.ron` (HA-REFERENCE F1-F4: the parameters "synchronised in the
//! cluster").
//!
//! A member's `node.ron` keeps what is its own (`node`, `control`, `eal`,
//! `dataplane`) and names the directory with `cluster: "cluster"`. The
//! directory holds `cluster.ron` (this module's [`ClusterFile`]) and the
//! policy, and is byte-for-byte the same on both members:
//!
//! ```ron
//! (
//!     members: [(serial: "TDLAB0001", slot: 0), (serial: "TDLAB0002", slot: 1)],
//!     interfaces: [ ... ],
//!     routes: [ ... ],
//!     firewall: (policy: "policy.ron"),
//!     ha: (
//!         cluster_id: 7, psk: "...",
//!         // Each link's `address` is the slot 0 member's, `peer` the
//!         // slot 1 member's: a member in slot 1 swaps them.
//!         links: [(name: "HA-main", interface: "ha0",
//!                  address: "198.19.0.1/30", peer: "198.19.0.2")],
//!     ),
//! )
//! ```
//!
//! [`crate::load`] merges the two files into one [`NodeConfig`], so the
//! rest of tandem sees a configuration as if written in one file, and
//! every problem names the file and line it is in.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cidr::Ipv4Cidr;
use crate::error::ConfigError;
use crate::locate::SourceMap;
use crate::schema::{FirewallConfig, HaConfig, InterfaceConfig, NodeConfig, RouteConfig};
use crate::validate::{ident_char, in_charset, Checker};

/// The shared file's name in the cluster directory.
pub const CLUSTER_FILE: &str = "cluster.ron";

/// The sections of a node's configuration that the cluster's file holds.
pub const SHARED_SECTIONS: [&str; 4] = ["interfaces", "routes", "firewall", "ha"];

/// The priority of the preferred member ("active firewall if equal").
pub const PREFERRED_PRIORITY: u8 = 50;

/// `cluster.ron`: what both members share.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// The members by serial, each in its slot (0 or 1): the slot says
    /// which of each HA link's two addresses is the member's.
    pub members: Vec<Member>,
    /// F9, "active firewall if equal": the serial of the member preferred
    /// when both are equal (none: neither).
    #[serde(default)]
    pub prefer: Option<String>,
    /// The data interfaces (both members have the same).
    pub interfaces: Vec<InterfaceConfig>,
    /// Static routes.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// The firewall; its policy is a file of the cluster directory.
    #[serde(default)]
    pub firewall: FirewallConfig,
    /// The HA parameters, each link seen from slot 0 (`address` is slot
    /// 0's, `peer` slot 1's). `priority` is not written here: `prefer`
    /// sets it.
    pub ha: HaConfig,
    /// F15: named groups of files (leases, lists, certificates...) that
    /// the active member sends to the other on their own period, outside
    /// the configuration's revision; the files of group NAME are in
    /// `<cluster directory>.groups/NAME/`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub file_groups: Vec<FileGroup>,
}

/// A group of files synchronized on its own period (F15).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileGroup {
    /// 1..=32 characters from `[a-z0-9_-]`.
    pub name: String,
    /// The active member sends it this often (1..=86400 seconds).
    pub every_secs: u32,
}

/// A member of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    /// Its serial (its `identity.ron`, its `node.serial`).
    pub serial: String,
    /// 0 or 1.
    pub slot: u8,
}

/// What a member learnt from its cluster's file when it was loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Membership {
    /// The cluster directory as `node.ron` names it (`cluster`).
    pub relative: PathBuf,
    /// The same joined to the node file's directory.
    pub dir: PathBuf,
    /// This member's slot.
    pub slot: u8,
    /// Every member, this one included.
    pub members: Vec<Member>,
    /// The preferred member, if any.
    pub prefer: Option<String>,
    /// The file groups (F15).
    pub file_groups: Vec<FileGroup>,
}

impl Membership {
    /// The other member's serial, if the cluster has two.
    pub fn peer_serial(&self) -> Option<&str> {
        self.members
            .iter()
            .find(|m| m.slot != self.slot)
            .map(|m| m.serial.as_str())
    }
}

impl ClusterFile {
    /// The HA section as the member in `slot` runs it: its own address
    /// first on each link, and the priority from `prefer`.
    pub fn ha_for(&self, slot: u8, serial: &str) -> HaConfig {
        let mut ha = self.ha.clone();
        if slot == 1 {
            for l in &mut ha.links {
                let own = l.peer;
                l.peer = l.address.addr;
                l.address = Ipv4Cidr {
                    addr: own,
                    prefix_len: l.address.prefix_len,
                };
            }
        }
        ha.priority = if self.prefer.as_deref() == Some(serial) {
            PREFERRED_PRIORITY
        } else {
            0
        };
        ha
    }
}

/// What each field of the cluster file allows, for the messages.
fn allowed(field: &str) -> &'static str {
    match field {
        "members" => "one or two members, each with its own serial and slot",
        "members[].slot" => "0 or 1, each slot used once",
        "members[].serial" => "1..=32 characters from [A-Za-z0-9._-], each serial listed once",
        "prefer" => "the serial of a member, or None",
        "ha.priority" => "0 or left out: prefer names the preferred member",
        "firewall.policy" => "a file inside the cluster directory, given relative to it (no ..)",
        "file_groups[].name" => "1..=32 characters from [a-z0-9_-], each group named once",
        "file_groups[].every_secs" => "1..=86400 seconds",
        _ => "",
    }
}

/// Checks what only the cluster file has (members, prefer, the policy's
/// place); the merged configuration is validated as a whole afterwards.
fn check_cluster(c: &mut Checker<'_>, file: &ClusterFile) {
    if file.members.is_empty() || file.members.len() > 2 {
        c.fail(
            "members",
            format!(
                "{} members listed; allowed {}",
                file.members.len(),
                allowed("members")
            ),
        );
    }
    for (i, m) in file.members.iter().enumerate() {
        if !in_charset(&m.serial, 32, ident_char)
            || file.members[..i].iter().any(|o| o.serial == m.serial)
        {
            c.fail(
                format!("members[{i}].serial"),
                format!(
                    "{:?} is not allowed; allowed {}",
                    m.serial,
                    allowed("members[].serial")
                ),
            );
        }
        if m.slot > 1 || file.members[..i].iter().any(|o| o.slot == m.slot) {
            c.fail(
                format!("members[{i}].slot"),
                format!(
                    "{} is not allowed; allowed {}",
                    m.slot,
                    allowed("members[].slot")
                ),
            );
        }
    }
    if let Some(p) = &file.prefer {
        if !file.members.iter().any(|m| &m.serial == p) {
            c.fail(
                "prefer",
                format!("{p:?} is not a member; allowed {}", allowed("prefer")),
            );
        }
    }
    for (i, g) in file.file_groups.iter().enumerate() {
        let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-';
        if g.name.is_empty()
            || g.name.len() > 32
            || !g.name.chars().all(ok)
            || file.file_groups[..i].iter().any(|o| o.name == g.name)
        {
            c.fail(
                format!("file_groups[{i}].name"),
                format!(
                    "{:?} is not allowed; allowed {}",
                    g.name,
                    allowed("file_groups[].name")
                ),
            );
        }
        if !(1..=86_400).contains(&g.every_secs) {
            c.fail(
                format!("file_groups[{i}].every_secs"),
                format!(
                    "{} is out of range; allowed {}",
                    g.every_secs,
                    allowed("file_groups[].every_secs")
                ),
            );
        }
    }
    if file.ha.priority != 0 {
        c.fail(
            "ha.priority",
            format!("is {}; {}", file.ha.priority, allowed("ha.priority")),
        );
    }
    if let Some(p) = &file.firewall.policy {
        if !inside(p) {
            c.fail(
                "firewall.policy",
                format!(
                    "{} is outside the cluster directory; allowed {}",
                    p.display(),
                    allowed("firewall.policy")
                ),
            );
        }
    }
}

/// A relative path that stays inside its directory.
pub fn inside(p: &Path) -> bool {
    !p.as_os_str().is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)))
}

/// Loads `node.ron`'s cluster (`cfg.cluster`, `node_dir` being the node
/// file's directory) and merges it into `cfg`; `node_map` and `origin`
/// place problems in the node's file.
pub(crate) fn merge(
    mut cfg: NodeConfig,
    node_dir: &Path,
    origin: &str,
    node_map: &SourceMap<'_>,
) -> Result<NodeConfig, ConfigError> {
    let Some(rel) = cfg.cluster.clone() else {
        return Ok(cfg);
    };
    // The shared sections may only be in one place.
    let mut c = Checker::new(origin, Some(node_map));
    for section in SHARED_SECTIONS {
        if node_map.is_written(section) {
            c.fail(
                section,
                format!(
                    "is written here, but this node is a cluster member (cluster: {:?}): {section} belongs in {}; remove it here",
                    rel.display(),
                    rel.join(CLUSTER_FILE).display()
                ),
            );
        }
    }
    if !c.out.is_empty() {
        return Err(ConfigError::Invalid(c.out));
    }
    let dir = node_dir.join(&rel);
    let path = dir.join(CLUSTER_FILE);
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
        path: path.clone(),
        source,
    })?;
    let shared_origin = path.display().to_string();
    let map = SourceMap::new(&text);
    let file: ClusterFile = ron::Options::default()
        .with_default_extension(ron::extensions::Extensions::IMPLICIT_SOME)
        .from_str(&text)
        .map_err(|e| ConfigError::Syntax(crate::ron_diagnostic(&e, &map, &shared_origin)))?;
    let mut c = Checker::new(&shared_origin, Some(&map));
    check_cluster(&mut c, &file);
    let Some(me) = file.members.iter().find(|m| m.serial == cfg.node.serial) else {
        c.fail(
            "members",
            format!(
                "this firewall (serial {}) is not a member of the cluster (members: {}); join it with tandemctl ha join",
                cfg.node.serial,
                file.members
                    .iter()
                    .map(|m| m.serial.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        return Err(ConfigError::Invalid(c.out));
    };
    if !c.out.is_empty() {
        return Err(ConfigError::Invalid(c.out));
    }
    let slot = me.slot;
    cfg.ha = Some(file.ha_for(slot, &cfg.node.serial));
    cfg.interfaces = file.interfaces.clone();
    cfg.routes = file.routes.clone();
    cfg.firewall = file.firewall.clone();
    // The policy is read through the cluster directory's name, so that a
    // reload reads the revision in force.
    cfg.firewall.policy = file.firewall.policy.as_ref().map(|p| rel.join(p));
    cfg.membership = Some(Membership {
        relative: rel.clone(),
        dir,
        slot,
        members: file.members.clone(),
        prefer: file.prefer.clone(),
        file_groups: file.file_groups.clone(),
    });
    let problems =
        crate::validate::validate_split(&cfg, origin, Some(node_map), Some((&shared_origin, &map)));
    if problems.is_empty() {
        Ok(cfg)
    } else {
        Err(ConfigError::Invalid(problems))
    }
}

/// A cluster file written from a member's running configuration (`cfg`,
/// with its HA section and membership): the inverse of [`merge`] for its
/// slot, the policy named by its file name in the cluster directory.
pub fn cluster_file_of(cfg: &NodeConfig) -> Option<ClusterFile> {
    let ms = cfg.membership.as_ref()?;
    let mut ha = cfg.ha.clone()?;
    if ms.slot == 1 {
        for l in &mut ha.links {
            let own = l.address.addr;
            l.address = Ipv4Cidr {
                addr: l.peer,
                prefix_len: l.address.prefix_len,
            };
            l.peer = own;
        }
    }
    ha.priority = 0;
    if ha.psk_stored {
        // The key came from the member's key store: it stays there.
        ha.psk = crate::schema::Secret::default();
        ha.psk_stored = false;
    }
    let mut firewall = cfg.firewall.clone();
    firewall.policy = firewall
        .policy
        .as_ref()
        .map(|p| p.strip_prefix(&ms.relative).unwrap_or(p).to_path_buf());
    Some(ClusterFile {
        members: ms.members.clone(),
        prefer: ms.prefer.clone(),
        interfaces: cfg.interfaces.clone(),
        routes: cfg.routes.clone(),
        firewall,
        ha,
        file_groups: ms.file_groups.clone(),
    })
}

/// The diagnostics of a cluster file alone, for tools that check one
/// before it is installed.
pub fn check_cluster_text(text: &str, origin: &str) -> Result<ClusterFile, ConfigError> {
    let map = SourceMap::new(text);
    let file: ClusterFile = ron::Options::default()
        .with_default_extension(ron::extensions::Extensions::IMPLICIT_SOME)
        .from_str(text)
        .map_err(|e| ConfigError::Syntax(crate::ron_diagnostic(&e, &map, origin)))?;
    let mut c = Checker::new(origin, Some(&map));
    check_cluster(&mut c, &file);
    if c.out.is_empty() {
        Ok(file)
    } else {
        Err(ConfigError::Invalid(c.out))
    }
}

/// The sections of `node.ron` that stay a member's own.
#[derive(Serialize)]
struct NodeOwn<'a> {
    node: &'a crate::schema::NodeIdentity,
    control: &'a crate::schema::ControlConfig,
    eal: &'a crate::schema::EalConfig,
    dataplane: &'a crate::schema::DataplaneConfig,
    cluster: &'a Path,
}

/// The text of `node.ron` for `cfg` as a member of the cluster in the
/// directory `cluster` (relative to the file): its own sections only.
pub fn member_node_file(cfg: &NodeConfig, cluster: &Path) -> Result<String, String> {
    let own = NodeOwn {
        node: &cfg.node,
        control: &cfg.control,
        eal: &cfg.eal,
        dataplane: &cfg.dataplane,
        cluster,
    };
    ron::ser::to_string_pretty(&own, ron::ser::PrettyConfig::default())
        .map(|t| {
            format!(
                "// The node's own sections; the cluster's are in {}/{CLUSTER_FILE}.\n{t}\n",
                cluster.display()
            )
        })
        .map_err(|e| format!("cannot write the node's configuration: {e}"))
}

/// The text of a cluster file.
pub fn cluster_file_text(file: &ClusterFile) -> Result<String, String> {
    ron::ser::to_string_pretty(file, ron::ser::PrettyConfig::default())
        .map(|t| {
            format!(
                "// The cluster's configuration, the same on every member: written by\n// tandemctl (ha join, hasync); each HA link as slot 0 sees it.\n{t}\n"
            )
        })
        .map_err(|e| format!("cannot write the cluster's configuration: {e}"))
}

/// One HA link of a new cluster: (name, kernel interface, this member's
/// address, the second member's).
pub type NewLink = (String, String, Ipv4Cidr, std::net::Ipv4Addr);

/// The HA section of a new cluster (`tandemctl ha create`): every
/// parameter at its default but the ones given.
pub fn new_ha(
    cluster_id: u32,
    psk: &str,
    encrypt: bool,
    lacp_when_passive: bool,
    links: &[NewLink],
) -> Result<HaConfig, String> {
    let q = |s: &str| ron::to_string(s).map_err(|e| e.to_string());
    let mut ls = Vec::new();
    for (n, d, a, p) in links {
        ls.push(format!(
            "(name: {}, interface: {}, address: \"{a}\", peer: \"{p}\")",
            q(n)?,
            q(d)?
        ));
    }
    let text = format!(
        "(cluster_id: {cluster_id}, psk: {}, encrypt: {encrypt}, lacp_when_passive: {lacp_when_passive}, links: [{}])",
        q(psk)?,
        ls.join(", ")
    );
    ron::from_str(&text).map_err(|e| format!("the HA section: {e}"))
}
