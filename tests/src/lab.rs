//! Lab topologies: client, server, firewall node(s), switch namespace.
//!
//! ```text
//!  <p>-client            <p>-sw                       <p>-fw1 (<p>-fw2)
//!  eth0 198.18.1.10 --- client [lan] fw1-in ------- fw-in   (DPDK or kernel)
//!                                     fw1-out ------ fw-out
//!  <p>-server                 [wan]
//!  eth0 198.18.2.10 --- server
//! ```
//! With two nodes, fw2's legs join the same bridges and two kernel-owned
//! HA links join fw1 and fw2 directly (`ha-main` 198.19.69.1/30 <-> .2,
//! `ha-backup` 198.19.70.1/30 <-> .2).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::cmd;
use crate::error::{LabError, Result};
use crate::link;
use crate::netns::{self, Netns};
use crate::node::{Node, NodeConfig};

/// Every lab namespace name starts with this.
pub const LAB_MARK: &str = "tl-";

/// Parent of every lab's temp directory.
pub const LAB_ROOT: &str = "/tmp/tandem-lab";

/// The lab's addresses (all in 198.18.0.0/15).
pub mod addr {
    /// The client host.
    pub const CLIENT: &str = "198.18.1.10";
    /// The server host (WAN side).
    pub const SERVER: &str = "198.18.2.10";
    /// The server host in the bridge-only lab (same LAN as the client).
    pub const SERVER_SAME_LAN: &str = "198.18.1.20";
    /// The firewall's LAN address (client's gateway).
    pub const LAN_GW: &str = "198.18.1.1";
    /// The firewall's WAN address (server's gateway).
    pub const WAN_GW: &str = "198.18.2.1";
    /// HA main link, fw1 side.
    pub const HA_MAIN_1: &str = "198.19.69.1";
    /// HA main link, fw2 side.
    pub const HA_MAIN_2: &str = "198.19.69.2";
    /// HA backup link, fw1 side.
    pub const HA_BACKUP_1: &str = "198.19.70.1";
    /// HA backup link, fw2 side.
    pub const HA_BACKUP_2: &str = "198.19.70.2";
}

/// What sits between the client and the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabKind {
    /// `nodes` tandem nodes (1 or 2) whose legs carry no kernel address.
    Tandem {
        /// Number of firewall namespaces (fw1, fw2).
        nodes: usize,
    },
    /// A plain Linux router in `<p>-fw1` (benchmark baseline).
    LinuxRouter,
    /// Client and server on one bridge, no router (benchmark baseline).
    BridgeOnly,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);
static HEAVY: Mutex<()> = Mutex::new(());

/// A test-wide lock for heavy scenarios (iperf, tandemd): on 2 cores,
/// parallel labs starve each other. Poisoning is ignored.
pub fn heavy_lock() -> MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

/// A fresh, short, unique lab prefix: `tl-<tag>-<pid>-<n>` (tag: up to 8
/// lowercase alphanumerics).
pub fn unique_prefix(tag: &str) -> String {
    let tag: String = tag
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .take(8)
        .collect();
    let tag = if tag.is_empty() { "lab".into() } else { tag };
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{LAB_MARK}{tag}-{}-{n}", std::process::id())
}

/// The pid of the process that created a lab namespace or directory named
/// `tl-<tag>-<pid>-<n>[-role]`.
pub fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(LAB_MARK)?;
    rest.split('-').nth(1)?.parse().ok()
}

/// Builder of a [`Lab`].
#[derive(Debug, Clone)]
pub struct LabBuilder {
    tag: String,
    kind: LabKind,
    ha_links: bool,
    fresh_ha: bool,
}

impl LabBuilder {
    /// A single-tandem-node lab tagged `tag` (see [`unique_prefix`]).
    pub fn new(tag: &str) -> LabBuilder {
        LabBuilder {
            tag: tag.to_string(),
            kind: LabKind::Tandem { nodes: 1 },
            ha_links: false,
            fresh_ha: false,
        }
    }

    /// Both ends of the HA links stay down and without addresses, as on
    /// firewalls out of their boxes (`tandemctl ha create` and `ha join`
    /// set them).
    pub fn fresh_ha(mut self, on: bool) -> LabBuilder {
        self.fresh_ha = on;
        self
    }

    /// Selects the topology.
    pub fn kind(mut self, kind: LabKind) -> LabBuilder {
        self.kind = kind;
        self
    }

    /// Adds (or not) the two HA veth links between fw1 and fw2 (only with
    /// two tandem nodes).
    pub fn ha_links(mut self, on: bool) -> LabBuilder {
        self.ha_links = on;
        self
    }

    /// Builds the lab. On error, everything created so far is torn down.
    pub fn build(self) -> Result<Lab> {
        if let LabKind::Tandem { nodes } = self.kind {
            if !(1..=2).contains(&nodes) {
                return Err(LabError::Other(format!("1 or 2 tandem nodes, not {nodes}")));
            }
        }
        let prefix = unique_prefix(&self.tag);
        let dir = Path::new(LAB_ROOT).join(&prefix);
        std::fs::create_dir_all(dir.join("logs"))
            .map_err(|e| LabError::io(format!("creating {}", dir.display()), e))?;
        let mut lab = Lab {
            namespaces: Vec::new(),
            prefix,
            dir,
            kind: self.kind,
            keep: std::env::var_os("TANDEM_LAB_KEEP").is_some(),
        };
        lab.wire(self.ha_links, self.fresh_ha)?;
        Ok(lab)
    }
}

/// A built lab. Dropping it kills every process in its namespaces, deletes
/// them (and so their veths and bridges) and removes its temp directory
/// (kept, and its path printed, if the thread is panicking or
/// `TANDEM_LAB_KEEP` is set).
pub struct Lab {
    namespaces: Vec<(String, Netns)>,
    prefix: String,
    dir: PathBuf,
    kind: LabKind,
    keep: bool,
}

impl Lab {
    /// Client, server, one tandem node `fw1`, switch.
    pub fn single_node(tag: &str) -> Result<Lab> {
        LabBuilder::new(tag).build()
    }

    /// Client, server, tandem nodes `fw1` and `fw2` on the same bridges,
    /// and the two HA links between them.
    pub fn two_nodes(tag: &str) -> Result<Lab> {
        LabBuilder::new(tag)
            .kind(LabKind::Tandem { nodes: 2 })
            .ha_links(true)
            .build()
    }

    /// Same shape, but `fw1` is a plain Linux router (198.18.1.1/24,
    /// 198.18.2.1/24, ip_forward=1).
    pub fn linux_router(tag: &str) -> Result<Lab> {
        LabBuilder::new(tag).kind(LabKind::LinuxRouter).build()
    }

    /// Client 198.18.1.10/24 and server 198.18.1.20/24 on one bridge.
    pub fn bridge_only(tag: &str) -> Result<Lab> {
        LabBuilder::new(tag).kind(LabKind::BridgeOnly).build()
    }

    fn add_ns(&mut self, role: &str) -> Result<()> {
        let ns = Netns::create(&format!("{}-{role}", self.prefix), &self.dir.join("logs"))?;
        self.namespaces.push((role.to_string(), ns));
        Ok(())
    }

    fn host(&self, role: &str, sw_port: &str, cidr: &str, gw: Option<&str>) -> Result<()> {
        let ns = self.ns(role);
        let sw = self.switch();
        link::veth(ns, "eth0", sw, sw_port)?;
        link::tx_offload_off(ns, "eth0")?;
        link::add_addr(ns, "eth0", cidr)?;
        link::set_up(ns, "eth0")?;
        if let Some(gw) = gw {
            link::default_route(ns, gw)?;
        }
        Ok(())
    }

    fn wire(&mut self, ha_links: bool, fresh_ha: bool) -> Result<()> {
        for role in ["sw", "client", "server"] {
            self.add_ns(role)?;
        }
        let sw = self.ns("sw");
        link::bridge(sw, "lan")?;
        if self.kind == LabKind::BridgeOnly {
            self.host("client", "client", &format!("{}/24", addr::CLIENT), None)?;
            self.host(
                "server",
                "server",
                &format!("{}/24", addr::SERVER_SAME_LAN),
                None,
            )?;
            link::attach(self.switch(), "lan", "client")?;
            link::attach(self.switch(), "lan", "server")?;
            return Ok(());
        }
        link::bridge(sw, "wan")?;
        self.host(
            "client",
            "client",
            &format!("{}/24", addr::CLIENT),
            Some(addr::LAN_GW),
        )?;
        self.host(
            "server",
            "server",
            &format!("{}/24", addr::SERVER),
            Some(addr::WAN_GW),
        )?;
        link::attach(self.switch(), "lan", "client")?;
        link::attach(self.switch(), "wan", "server")?;
        let nodes = match self.kind {
            LabKind::Tandem { nodes } => nodes,
            _ => 1,
        };
        for i in 1..=nodes {
            let role = format!("fw{i}");
            self.add_ns(&role)?;
            let fw = self.ns(&role);
            let sw = self.switch();
            let (p_in, p_out) = (format!("{role}-in"), format!("{role}-out"));
            link::veth(fw, "fw-in", sw, &p_in)?;
            link::veth(fw, "fw-out", sw, &p_out)?;
            for dev in ["fw-in", "fw-out"] {
                link::ipv6_off(fw, dev)?;
                link::gro_off(fw, dev)?;
            }
            if self.kind == LabKind::LinuxRouter {
                link::add_addr(fw, "fw-in", &format!("{}/24", addr::LAN_GW))?;
                link::add_addr(fw, "fw-out", &format!("{}/24", addr::WAN_GW))?;
                fw.sysctl("net.ipv4.ip_forward", "1")?;
            }
            link::set_up(fw, "fw-in")?;
            link::set_up(fw, "fw-out")?;
            link::attach(sw, "lan", &p_in)?;
            link::attach(sw, "wan", &p_out)?;
        }
        if ha_links && nodes == 2 {
            let (a, b) = (self.ns("fw1"), self.ns("fw2"));
            for (dev, x, y) in [
                ("ha-main", addr::HA_MAIN_1, addr::HA_MAIN_2),
                ("ha-backup", addr::HA_BACKUP_1, addr::HA_BACKUP_2),
            ] {
                link::veth(a, dev, b, dev)?;
                if !fresh_ha {
                    link::add_addr(a, dev, &format!("{x}/30"))?;
                    link::add_addr(b, dev, &format!("{y}/30"))?;
                    link::set_up(a, dev)?;
                    link::set_up(b, dev)?;
                }
            }
        }
        Ok(())
    }

    /// The lab's prefix (`tl-<tag>-<pid>-<n>`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The lab's temp directory (configs, sockets, logs, files).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The topology.
    pub fn kind(&self) -> LabKind {
        self.kind
    }

    /// The namespace of `role` ("client", "server", "sw", "fw1", "fw2"), if
    /// present.
    pub fn try_ns(&self, role: &str) -> Option<&Netns> {
        self.namespaces
            .iter()
            .find(|(r, _)| r == role)
            .map(|(_, n)| n)
    }

    /// The namespace of `role`; panics if the lab has none.
    pub fn ns(&self, role: &str) -> &Netns {
        self.try_ns(role)
            .unwrap_or_else(|| panic!("lab {} has no namespace {role:?}", self.prefix))
    }

    /// Names of all the lab's namespaces.
    pub fn namespace_names(&self) -> Vec<String> {
        self.namespaces
            .iter()
            .map(|(_, n)| n.name().to_string())
            .collect()
    }

    /// Adds the traffic generator's host: namespace `gen` with `lan0` on
    /// the lan bridge and `wan0` on the wan bridge, no addresses (tandem-gen
    /// sends and receives raw frames on both through af_packet and answers
    /// ARP for its hosts itself). Labs with a router only.
    pub fn add_gen_host(&mut self) -> Result<&Netns> {
        if matches!(self.kind, LabKind::BridgeOnly) {
            return Err(LabError::Other(
                "a generator host needs a lab with a router between lan and wan".into(),
            ));
        }
        self.add_ns("gen")?;
        let (gen, sw) = (self.ns("gen"), self.switch());
        for (dev, port, bridge) in [("lan0", "gen-lan", "lan"), ("wan0", "gen-wan", "wan")] {
            link::veth(gen, dev, sw, port)?;
            link::ipv6_off(gen, dev)?;
            link::tx_offload_off(gen, dev)?;
            link::set_up(gen, dev)?;
            link::attach(sw, bridge, port)?;
        }
        Ok(self.ns("gen"))
    }

    /// The client host.
    pub fn client(&self) -> &Netns {
        self.ns("client")
    }

    /// The server host.
    pub fn server(&self) -> &Netns {
        self.ns("server")
    }

    /// The switch namespace (bridges `lan`, `wan`).
    pub fn switch(&self) -> &Netns {
        self.ns("sw")
    }

    /// Firewall namespace `i` (1 or 2).
    pub fn fw(&self, i: usize) -> &Netns {
        self.ns(&format!("fw{i}"))
    }

    /// The server's address in this lab.
    pub fn server_ip(&self) -> &'static str {
        match self.kind {
            LabKind::BridgeOnly => addr::SERVER_SAME_LAN,
            _ => addr::SERVER,
        }
    }

    /// Sets the switch port of firewall `i`'s leg `leg` ("in" or "out") up
    /// or down: a cut (or restored) cable as seen by the node.
    pub fn set_fw_port(&self, i: usize, leg: &str, up: bool) -> Result<()> {
        link::set_link(self.switch(), &format!("fw{i}-{leg}"), up)
    }

    /// Control socket path of node `i`.
    pub fn node_socket(&self, i: usize) -> PathBuf {
        self.dir.join(format!("fw{i}.sock"))
    }

    /// The default tandemd config of node `i` in this lab.
    pub fn node_config(&self, i: usize) -> NodeConfig {
        NodeConfig::lab_default(
            &format!("fw{i}"),
            i,
            &self.node_socket(i),
            &format!("{}-fw{i}", self.prefix),
        )
    }

    /// Starts tandemd in `fw<i>` with [`Lab::node_config`].
    pub fn start_node(&self, i: usize) -> Result<Node> {
        self.start_node_with(i, &self.node_config(i))
    }

    /// Starts tandemd in `fw<i>` with `config` (written to
    /// `<dir>/fw<i>.ron`).
    pub fn start_node_with(&self, i: usize, config: &NodeConfig) -> Result<Node> {
        if !matches!(self.kind, LabKind::Tandem { .. }) {
            return Err(LabError::Other(format!(
                "lab {} is not a tandem lab ({:?})",
                self.prefix, self.kind
            )));
        }
        Node::start(self.fw(i), config, &self.dir.join(format!("fw{i}.ron")))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Kill everything first (a process could hold a veth of another
        // namespace), then delete the namespaces (last created first).
        for (_, ns) in &self.namespaces {
            ns.kill_all();
        }
        while let Some((_, ns)) = self.namespaces.pop() {
            drop(ns);
        }
        remove_dpdk_runtime(&self.prefix);
        if std::thread::panicking() || self.keep {
            eprintln!("[lab] kept {} for post-mortem", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Removes DPDK runtime directories `/var/run/dpdk/<prefix>-*` left by the
/// lab's nodes.
fn remove_dpdk_runtime(prefix: &str) {
    let Ok(rd) = std::fs::read_dir("/var/run/dpdk") else {
        return;
    };
    for e in rd.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(LAB_MARK) && n.starts_with(prefix) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Names of every namespace (`ip netns list`).
pub fn list_namespaces() -> Vec<String> {
    cmd::run_root(&["ip", "netns", "list"])
        .map(|s| {
            s.lines()
                .filter_map(|l| l.split_whitespace().next().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Removes leftovers of earlier (crashed or killed) runs: every lab
/// namespace (name starting with [`LAB_MARK`]) that starts with `prefix`
/// and whose creating process is gone, after killing what still runs in it;
/// the matching temp directories and DPDK runtime directories too. Labs of
/// live processes are left alone unless `force`. Returns the namespaces
/// removed.
pub fn cleanup(prefix: &str, force: bool) -> Vec<String> {
    let stale = |name: &str| {
        name.starts_with(LAB_MARK)
            && name.starts_with(prefix)
            && (force || !matches!(owner_pid(name), Some(p) if cmd::pid_alive(p)))
    };
    let mut removed = Vec::new();
    for name in list_namespaces().into_iter().filter(|n| stale(n)) {
        netns::kill_all_in(&name);
        match cmd::run_root(&["ip", "netns", "del", &name]) {
            Ok(_) => removed.push(name),
            Err(e) => eprintln!("[lab] could not delete namespace {name}: {e}"),
        }
    }
    for root in [LAB_ROOT, "/var/run/dpdk", "/etc/netns"] {
        if let Ok(rd) = std::fs::read_dir(root) {
            for e in rd.flatten() {
                if stale(&e.file_name().to_string_lossy()) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }
    removed
}

/// [`cleanup`] without force: removes only leftovers of dead processes.
pub fn cleanup_stale(prefix: &str) -> Vec<String> {
    cleanup(prefix, false)
}
