//! tandem nodes in the lab: the RON config the lab writes, `tandemd`
//! started inside a namespace, and `tandemctl` queries.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cmd;
use crate::error::{LabError, Result};
use crate::netns::{Netns, Proc};

/// Finds the directory holding `tandemd` and `tandemctl`: `$TANDEM_BIN_DIR`
/// if set, else the directory of the running executable, one level up if
/// that is `deps` (`target/<profile>/deps/..` -> `target/<profile>/`).
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("TANDEM_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    dir
}

/// Path of the tandem binary `name` in [`bin_dir`], or a clear error.
pub fn find_bin(name: &str) -> Result<PathBuf> {
    let dir = bin_dir();
    let p = dir.join(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(LabError::BinaryNotFound(format!(
            "{name} not found in {}: run `cargo build --workspace --bins` first \
             (or set TANDEM_BIN_DIR)",
            dir.display()
        )))
    }
}

/// The directory of the next version's build (`scripts/build-next.sh`:
/// the same tree built with `TANDEM_VERSION=0.2.0` and
/// `TANDEM_K2K_VERSION=3`), or what to run to make it. `make test` builds
/// it first.
pub fn next_bin_dir() -> Result<PathBuf> {
    let dir = bin_dir().join("next");
    if dir.join("tandemd").is_file() && dir.join("tandemctl").is_file() {
        Ok(dir)
    } else {
        Err(LabError::BinaryNotFound(format!(
            "the next version's build is not in {}: run scripts/build-next.sh (make test does)",
            dir.display()
        )))
    }
}

/// The next version's tandemd ([`next_bin_dir`]), as a node's `program`.
pub fn next_tandemd() -> Result<Vec<String>> {
    Ok(vec![next_bin_dir()?
        .join("tandemd")
        .to_string_lossy()
        .into_owned()])
}

/// One data interface of a node config.
#[derive(Debug, Clone)]
pub struct IfaceConfig {
    /// Logical name ("in", "out").
    pub name: String,
    /// DPDK vdev string, e.g. `net_af_packet0,iface=fw-in,framecnt=8192`.
    pub vdev: String,
    /// Addresses with prefix length.
    pub addresses: Vec<String>,
    /// Weight in the HA quality factor (tandemd's default 100 when `None`).
    pub weight: Option<u16>,
    /// More fields of the interface, written as is (e.g. an aggregate).
    pub extra: String,
}

/// A static route of a node config.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Destination network, e.g. "198.18.3.0/24".
    pub destination: String,
    /// Next hop address.
    pub via: String,
}

/// The tandemd node config the lab writes (schema owned by the config
/// crate; this renders the lab's subset as RON).
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Node name ("fw1").
    pub name: String,
    /// Serial number ("TDLAB0001").
    pub serial: String,
    /// Control socket path.
    pub socket: PathBuf,
    /// DPDK `--file-prefix` (unique per node and lab).
    pub file_prefix: String,
    /// DPDK lcore map, e.g. "0@(0-1)".
    pub lcores: Option<String>,
    /// `--no-huge` (functional tests) or hugepages (benchmarks).
    pub no_huge: bool,
    /// DPDK memory in MB.
    pub memory_mb: Option<u32>,
    /// Number of workers (each `cpu: None`).
    pub workers: usize,
    /// "Adaptive" (lab) or "Spin".
    pub poll_mode: String,
    /// Data interfaces.
    pub interfaces: Vec<IfaceConfig>,
    /// Static routes.
    pub routes: Vec<RouteConfig>,
    /// The `firewall` section; `None` leaves it out (a plain router).
    pub firewall: Option<FirewallConfig>,
    /// The `ha` section; `None` leaves it out (a lone, always active node).
    pub ha: Option<HaSection>,
    /// Extra environment of the tandemd process (e.g.
    /// `TANDEM_TEST_FAULTS`).
    pub env: Vec<(String, String)>,
    /// What runs instead of this build's tandemd, before `--config FILE`:
    /// another build's tandemd ([`next_tandemd`]), or tandem-boot and its
    /// arguments up to `--`. Empty: this build's tandemd.
    pub program: Vec<String>,
    /// The node's identity file (RON), written beside the config as
    /// `<socket>.identity.ron` and named in `control.identity`; `None`
    /// names no file (tandemd then looks for `identity.ron` beside the
    /// config, which the lab does not write).
    pub identity: Option<String>,
    /// `control.metrics`: where tandemd serves Prometheus metrics.
    pub metrics: Option<String>,
    /// `control.syslog`, as RON (`(remote: Some("udp://..."))`).
    pub syslog: Option<String>,
    /// More fields of the `control` section, written as is (e.g.
    /// `trusted_keys: Some("/..."),`).
    pub control_extra: String,
}

/// The `ha` section of a node config.
#[derive(Debug, Clone)]
pub struct HaSection {
    /// Cluster id (the same on both members).
    pub cluster_id: u32,
    /// Pre-shared key; empty: left out of the file (in the member's key
    /// store, `control.key_store`).
    pub psk: String,
    /// Encrypt the sync.
    pub encrypt: bool,
    /// (name, kernel interface, local CIDR, peer address) per link, main first.
    pub links: Vec<(String, String, String, String)>,
    /// Only connections older than this are synchronised (0: all).
    pub sync_min_age_secs: u32,
    /// Elect the active member automatically.
    pub election: bool,
    /// More fields of the section, written as is (e.g.
    /// `garp_interval_ms: 200,`).
    pub extra: String,
    /// This member's slot in the cluster (0 for fw1, 1 for fw2): which of
    /// each link's two addresses is its own in the cluster's file.
    pub slot: u8,
    /// The members' serials by slot.
    pub members: Vec<String>,
    /// This member is the preferred one ("active firewall if equal",
    /// priority 50).
    pub prefer: bool,
}

impl HaSection {
    /// The lab cluster's section for member `i` (1 or 2): both HA links,
    /// a key that passes the strength check.
    pub fn lab(i: usize) -> HaSection {
        use crate::lab::addr;
        let (main, main_peer, backup, backup_peer) = if i == 1 {
            (
                addr::HA_MAIN_1,
                addr::HA_MAIN_2,
                addr::HA_BACKUP_1,
                addr::HA_BACKUP_2,
            )
        } else {
            (
                addr::HA_MAIN_2,
                addr::HA_MAIN_1,
                addr::HA_BACKUP_2,
                addr::HA_BACKUP_1,
            )
        };
        HaSection {
            cluster_id: 7,
            psk: "Lab-Cluster-Key-2026".into(),
            encrypt: false,
            sync_min_age_secs: 0,
            election: true,
            extra: String::new(),
            slot: if i == 1 { 0 } else { 1 },
            members: vec!["TDLAB0001".into(), "TDLAB0002".into()],
            prefer: false,
            links: vec![
                (
                    "HA-main".into(),
                    "ha-main".into(),
                    format!("{main}/30"),
                    main_peer.into(),
                ),
                (
                    "HA-backup".into(),
                    "ha-backup".into(),
                    format!("{backup}/30"),
                    backup_peer.into(),
                ),
            ],
        }
    }
}

/// The `firewall` section of a node config.
#[derive(Debug, Clone)]
pub struct FirewallConfig {
    /// Absolute path of the policy file (RON); `None`: no policy.
    pub policy: Option<PathBuf>,
    /// Size of the connection table.
    pub connections: u32,
    /// More fields of the section, written as is (e.g.
    /// `timeouts: (udp_unreplied: Some(600)),`).
    pub extra: String,
}

fn ron_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn ron_opt_str(s: &Option<String>) -> String {
    s.as_deref()
        .map_or_else(|| "None".to_string(), |v| format!("Some({})", ron_str(v)))
}

impl NodeConfig {
    /// The single-node lab config of node `name` (serial `TDLAB000<n>`):
    /// legs `fw-in` (198.18.1.1/24) and `fw-out` (198.18.2.1/24) over
    /// af_packet, one adaptive worker, no hugepages, 256 MB.
    pub fn lab_default(name: &str, index: usize, socket: &Path, file_prefix: &str) -> NodeConfig {
        NodeConfig {
            name: name.to_string(),
            serial: format!("TDLAB{index:04}"),
            socket: socket.to_path_buf(),
            file_prefix: file_prefix.to_string(),
            lcores: Some("0@(0-1)".to_string()),
            no_huge: true,
            memory_mb: Some(256),
            workers: 1,
            poll_mode: "Adaptive".to_string(),
            interfaces: vec![
                IfaceConfig {
                    name: "in".into(),
                    vdev: "net_af_packet0,iface=fw-in,framecnt=8192".into(),
                    addresses: vec!["198.18.1.1/24".into()],
                    weight: None,
                    extra: String::new(),
                },
                IfaceConfig {
                    name: "out".into(),
                    vdev: "net_af_packet1,iface=fw-out,framecnt=8192".into(),
                    addresses: vec!["198.18.2.1/24".into()],
                    weight: None,
                    extra: String::new(),
                },
            ],
            routes: vec![],
            firewall: None,
            ha: None,
            env: Vec::new(),
            program: Vec::new(),
            control_extra: String::new(),
            identity: Some(format!(
                "(serial: \"TDLAB{index:04}\", model: \"TD-LAB\", licence: Master, ports: 2)\n"
            )),
            metrics: None,
            syslog: None,
        }
    }

    /// Where [`NodeConfig::identity`] is written.
    pub fn identity_path(&self) -> PathBuf {
        self.socket.with_extension("identity.ron")
    }

    /// The same config with `workers` workers and, for interface `i`,
    /// `queues[i]` queue pairs on its af_packet device (`qpairs`; 1 when
    /// missing): a port with fewer queues than workers is served through
    /// the software dispatch and the other workers' TX handoff.
    pub fn with_workers(mut self, workers: usize, queues: &[usize]) -> NodeConfig {
        self.workers = workers.max(1);
        for (i, iface) in self.interfaces.iter_mut().enumerate() {
            let q = queues.get(i).copied().unwrap_or(1);
            if q > 1 && iface.vdev.starts_with("net_af_packet") {
                iface.vdev = format!("{},qpairs={q}", iface.vdev);
            }
        }
        self
    }

    /// The same config with interface `i` on DPDK's pcap driver (one
    /// queue pair, incoming frames only, the kernel interface's MAC)
    /// instead of af_packet, whose kernel side reassembles IPv4 fragments
    /// before the node sees them (its fanout's defrag flag): through pcap
    /// the node receives fragments as they are.
    pub fn with_pcap(mut self, i: usize) -> NodeConfig {
        if let Some(iface) = self.interfaces.get_mut(i) {
            let kernel = iface
                .vdev
                .split(',')
                .find_map(|kv| kv.strip_prefix("iface="))
                .unwrap_or("fw-in")
                .to_string();
            iface.vdev = format!("net_pcap{i},rx_iface_in={kernel},tx_iface={kernel},phy_mac=1");
        }
        self
    }

    /// The same config with a `firewall` section using the policy file
    /// `policy` and a table of 65536 connections.
    pub fn with_policy(mut self, policy: &Path) -> NodeConfig {
        self.firewall = Some(FirewallConfig {
            policy: Some(policy.to_path_buf()),
            connections: 65536,
            extra: String::new(),
        });
        self
    }

    /// Renders the config as RON, in one file.
    pub fn to_ron(&self) -> String {
        let mut s = String::from("(\n");
        s += &self.own_sections();
        s += &self.shared_sections(None);
        s += ")\n";
        s
    }

    /// Renders a cluster member's config as its two files: `node.ron`
    /// naming the cluster directory `cluster`, and the cluster's
    /// `cluster.ron` (with the policy as `policy.ron` there, if any).
    pub fn to_split_ron(&self, cluster: &str) -> (String, String) {
        let node = format!(
            "(\n{}    cluster: {},\n)\n",
            self.own_sections(),
            ron_str(cluster)
        );
        let policy = self
            .firewall
            .as_ref()
            .and_then(|f| f.policy.as_ref())
            .map(|_| "policy.ron");
        let mut shared = String::from("(\n");
        if let Some(ha) = &self.ha {
            let members: Vec<String> = ha
                .members
                .iter()
                .enumerate()
                .map(|(slot, serial)| format!("(serial: {}, slot: {slot})", ron_str(serial)))
                .collect();
            shared += &format!("    members: [{}],\n", members.join(", "));
            if ha.prefer {
                shared += &format!("    prefer: Some({}),\n", ron_str(&self.serial));
            }
        }
        shared += &self.shared_sections(Some(policy));
        shared += ")\n";
        (node, shared)
    }

    /// The sections that are the node's own.
    fn own_sections(&self) -> String {
        let mut s = String::new();
        s += &format!(
            "    node: (name: {}, serial: {}),\n",
            ron_str(&self.name),
            ron_str(&self.serial)
        );
        s += &format!(
            "    control: (socket: {}, event_log: Some({}), state_dir: Some({}){}),\n",
            ron_str(&self.socket.to_string_lossy()),
            ron_str(&self.socket.with_extension("log").to_string_lossy()),
            ron_str(
                &self
                    .socket
                    .parent()
                    .unwrap_or(std::path::Path::new("/tmp"))
                    .join("state")
                    .to_string_lossy()
            ),
            if self.identity.is_some() {
                format!(
                    ", identity: Some({})",
                    ron_str(&self.identity_path().to_string_lossy())
                )
            } else {
                String::new()
            } + &self
                .metrics
                .as_ref()
                .map(|m| format!(", metrics: Some({})", ron_str(m)))
                .unwrap_or_default()
                + &self
                    .syslog
                    .as_ref()
                    .map(|s| format!(", syslog: Some({s})"))
                    .unwrap_or_default()
                + &Some(&self.control_extra)
                    .filter(|x| !x.is_empty())
                    .map(|x| format!(", {}", x.trim_end_matches(',')))
                    .unwrap_or_default()
        );
        s += &format!(
            "    eal: (file_prefix: Some({}), lcores: {}, no_huge: {}, memory_mb: {}),\n",
            ron_str(&self.file_prefix),
            ron_opt_str(&self.lcores),
            self.no_huge,
            self.memory_mb
                .map_or_else(|| "None".to_string(), |m| format!("Some({m})"))
        );
        let workers = vec!["(cpu: None)"; self.workers.max(1)].join(", ");
        s += &format!(
            "    dataplane: (workers: [{workers}], poll_mode: {}),\n",
            self.poll_mode
        );
        s
    }

    /// The sections a cluster shares; `cluster_policy` (in a cluster's
    /// file) names the policy file in the cluster directory and writes
    /// each HA link as slot 0 sees it.
    fn shared_sections(&self, cluster_policy: Option<Option<&str>>) -> String {
        let mut s = String::new();
        s += "    interfaces: [\n";
        for i in &self.interfaces {
            let addrs: Vec<String> = i.addresses.iter().map(|a| ron_str(a)).collect();
            s += &format!(
                "        (name: {}, device: Vdev({}), addresses: [{}]{}{}),\n",
                ron_str(&i.name),
                ron_str(&i.vdev),
                addrs.join(", "),
                i.weight
                    .map_or_else(String::new, |w| format!(", weight: {w}")),
                i.extra
            );
        }
        s += "    ],\n";
        if self.routes.is_empty() {
            s += "    routes: [],\n";
        } else {
            s += "    routes: [\n";
            for r in &self.routes {
                s += &format!(
                    "        (destination: {}, via: {}),\n",
                    ron_str(&r.destination),
                    ron_str(&r.via)
                );
            }
            s += "    ],\n";
        }
        if let Some(fw) = &self.firewall {
            let policy = match cluster_policy {
                Some(name) => name.map(str::to_owned),
                None => fw.policy.as_ref().map(|p| p.to_string_lossy().into_owned()),
            };
            let extra = if fw.extra.is_empty() {
                String::new()
            } else {
                format!(", {}", fw.extra.trim_end_matches([',', ' ']))
            };
            s += &format!(
                "    firewall: (policy: {}, connections: {}{extra}),\n",
                ron_opt_str(&policy),
                fw.connections,
            );
        }
        if let Some(ha) = &self.ha {
            let in_cluster = cluster_policy.is_some();
            let priority = if ha.prefer && !in_cluster {
                "priority: 50, "
            } else {
                ""
            };
            // No key: each member keeps it in its key store.
            let psk = if ha.psk.is_empty() {
                String::new()
            } else {
                format!("psk: {}, ", ron_str(&ha.psk))
            };
            s += &format!(
                "    ha: (cluster_id: {}, {psk}encrypt: {}, sync_min_age_secs: {}, election: {}, {priority}{} links: [\n",
                ha.cluster_id,
                ha.encrypt,
                ha.sync_min_age_secs,
                ha.election,
                ha.extra
            );
            for (name, iface, cidr, peer) in &ha.links {
                // The cluster's file writes each link as slot 0 sees it.
                let (cidr, peer) = if in_cluster && ha.slot == 1 {
                    let prefix = cidr.split_once('/').map_or("32", |(_, p)| p);
                    let own = cidr.split_once('/').map_or(cidr.as_str(), |(a, _)| a);
                    (format!("{peer}/{prefix}"), own.to_owned())
                } else {
                    (cidr.clone(), peer.clone())
                };
                s += &format!(
                    "        (name: {}, interface: {}, address: {}, peer: {}),\n",
                    ron_str(name),
                    ron_str(iface),
                    ron_str(&cidr),
                    ron_str(&peer)
                );
            }
            s += "    ]),\n";
        }
        s
    }

    /// Writes the RON config to `path`. A cluster member (with an `ha`
    /// section) gets the split layout: `path` names its cluster directory
    /// `<stem>.cluster/` beside it, which holds `cluster.ron` and a copy
    /// of the policy (see [`NodeConfig::cluster_dir`]).
    pub fn write(&self, path: &Path) -> Result<()> {
        let io = |what: &Path, e| LabError::io(format!("writing {}", what.display()), e);
        if let Some(id) = &self.identity {
            let p = self.identity_path();
            std::fs::write(&p, id).map_err(|e| io(&p, e))?;
        }
        let Some(dir) = self.ha.as_ref().map(|_| Self::cluster_dir(path)) else {
            return std::fs::write(path, self.to_ron()).map_err(|e| io(path, e));
        };
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (node, shared) = self.to_split_ron(&name);
        if let Some(policy) = self.firewall.as_ref().and_then(|f| f.policy.as_ref()) {
            let to = dir.join("policy.ron");
            std::fs::copy(policy, &to).map_err(|e| io(&to, e))?;
        }
        let cluster = dir.join("cluster.ron");
        std::fs::write(&cluster, shared).map_err(|e| io(&cluster, e))?;
        std::fs::write(path, node).map_err(|e| io(path, e))
    }

    /// The cluster directory of a member whose `node.ron` is `path`.
    pub fn cluster_dir(path: &Path) -> PathBuf {
        path.with_extension("cluster")
    }
}

/// A running `tandemd` inside a lab namespace.
pub struct Node {
    /// Node name ("fw1").
    pub name: String,
    /// The tandemd process (stopped with SIGTERM on drop).
    pub proc: Proc,
    /// Its control socket.
    pub socket: PathBuf,
    /// Its config file.
    pub config_path: PathBuf,
    /// What runs before `--config FILE` ([`NodeConfig::program`], or this
    /// build's tandemd).
    pub program: Vec<String>,
}

impl Node {
    /// Writes `config` to `config_path` and starts `tandemd --config FILE`
    /// in `ns`. Does not wait for readiness: see [`Node::wait_ready`].
    pub fn start(ns: &Netns, config: &NodeConfig, config_path: &Path) -> Result<Node> {
        let program = if config.program.is_empty() {
            vec![find_bin("tandemd")?.to_string_lossy().into_owned()]
        } else {
            config.program.clone()
        };
        find_bin("tandemctl")?;
        config.write(config_path)?;
        let _ = std::fs::remove_file(&config.socket);
        let cfg_s = config_path.to_string_lossy().into_owned();
        let env = config.env.clone();
        let mut argv: Vec<&str> = program.iter().map(String::as_str).collect();
        argv.extend(["--config", &cfg_s]);
        let mut proc = ns.spawn_with(&format!("tandemd-{}", config.name), &argv, |c| {
            c.envs(env);
        })?;
        proc.set_grace(Duration::from_secs(5));
        Ok(Node {
            name: config.name.clone(),
            proc,
            socket: config.socket.clone(),
            config_path: config_path.to_path_buf(),
            program,
        })
    }

    /// Kills tandemd (SIGKILL) and starts it again in `ns` from its files
    /// as they are now: nothing is rewritten, so what tandemd changed in
    /// them (a joined cluster, a new key) is what it starts with. Does not
    /// wait for readiness.
    pub fn kill_and_start_from_files(&mut self, ns: &Netns) -> Result<()> {
        self.proc.signal("KILL");
        if self.proc.wait_timeout(Duration::from_secs(5)).is_none() {
            return Err(LabError::Other(format!(
                "tandemd of {} did not die within 5 s of SIGKILL",
                self.name
            )));
        }
        let _ = std::fs::remove_file(&self.socket);
        let cfg_s = self.config_path.to_string_lossy().into_owned();
        let mut argv: Vec<&str> = self.program.iter().map(String::as_str).collect();
        argv.extend(["--config", &cfg_s]);
        let mut proc = ns.spawn_with(&format!("tandemd-{}-again", self.name), &argv, |_| {})?;
        proc.set_grace(Duration::from_secs(5));
        self.proc = proc;
        Ok(())
    }

    /// The member's cluster directory (`cluster.ron`, its copy of the
    /// policy), if it runs in a cluster.
    pub fn cluster_dir(&self) -> Option<PathBuf> {
        Some(NodeConfig::cluster_dir(&self.config_path)).filter(|d| d.is_dir())
    }

    /// Runs `tandemctl --socket S --json ARGS` (10 s limit) and parses its
    /// stdout as JSON.
    pub fn ctl(&self, args: &[&str]) -> Result<Value> {
        ctl_json(&self.socket, args)
    }

    /// `tandemctl ARGS` as an operator sees it, whatever its exit code:
    /// (exit code, stdout, stderr); killed after `timeout`.
    pub fn ctl_out(
        &self,
        args: &[&str],
        timeout: Duration,
    ) -> Result<(Option<i32>, String, String)> {
        let mut c = Command::new(find_bin("tandemctl")?);
        c.arg("--socket").arg(&self.socket).args(args);
        let o = cmd::run_timeout(c, timeout)?;
        Ok((
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        ))
    }

    /// `tandemctl ARGS` as an operator sees it (human-readable text).
    pub fn ctl_text(&self, args: &[&str]) -> Result<String> {
        let ctl = find_bin("tandemctl")?;
        let mut c = Command::new(&ctl);
        c.arg("--socket").arg(&self.socket).args(args);
        let desc = cmd::describe(&c);
        cmd::check(&desc, cmd::run_timeout(c, Duration::from_secs(10))?)
    }

    /// `tandemctl --json status`.
    pub fn status(&self) -> Result<Value> {
        self.ctl(&["status"])
    }

    /// `tandemctl --json stats`.
    pub fn stats(&self) -> Result<Value> {
        self.ctl(&["stats"])
    }

    /// Waits until the control socket answers `status`, at most `timeout`;
    /// fails at once (with its logs) if tandemd exits meanwhile.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<Value> {
        let start = Instant::now();
        let mut last_err = String::from("no attempt");
        let mut step = Duration::from_millis(100);
        for _ in 0..1000 {
            self.proc.ensure_running()?;
            if self.socket.exists() {
                match self.status() {
                    Ok(v) => return Ok(v),
                    Err(e) => last_err = e.to_string(),
                }
            } else {
                last_err = format!("{} does not exist yet", self.socket.display());
            }
            if start.elapsed() >= timeout {
                break;
            }
            std::thread::sleep(step.min(timeout.saturating_sub(start.elapsed())));
            step = (step * 3 / 2).min(Duration::from_millis(500));
        }
        Err(LabError::Timeout {
            what: format!(
                "tandemd {} control socket (last error: {last_err})\n{}",
                self.name,
                self.proc.logs_tail(30)
            ),
            timeout,
        })
    }

    /// Stops tandemd (SIGTERM, SIGKILL after 5 s); returns its exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        self.proc.stop()
    }
}

/// Runs `tandemctl --socket SOCKET --json ARGS` (10 s limit) and parses
/// stdout as JSON.
pub fn ctl_json(socket: &Path, args: &[&str]) -> Result<Value> {
    let ctl = find_bin("tandemctl")?;
    let mut c = Command::new(&ctl);
    c.arg("--socket").arg(socket).arg("--json").args(args);
    let desc = cmd::describe(&c);
    let out = cmd::check(&desc, cmd::run_timeout(c, Duration::from_secs(10))?)?;
    serde_json::from_str(&out).map_err(|e| LabError::Parse {
        what: desc,
        detail: format!("{e}: {}", out.chars().take(400).collect::<String>()),
    })
}

/// Sum of `workers[*].forwarded` in a `tandemctl stats` answer.
pub fn forwarded_total(stats: &Value) -> u64 {
    stats["workers"]
        .as_array()
        .map(|ws| ws.iter().filter_map(|w| w["forwarded"].as_u64()).sum())
        .unwrap_or(0)
}

/// `(rx_packets, tx_packets)` of the port `name` in a `tandemctl stats`
/// answer (`None` if there is no such port).
pub fn port_counters(stats: &Value, name: &str) -> Option<(u64, u64)> {
    stats["ports"].as_array()?.iter().find_map(|p| {
        (p["name"].as_str() == Some(name)).then(|| {
            (
                p["rx_packets"].as_u64().unwrap_or(0),
                p["tx_packets"].as_u64().unwrap_or(0),
            )
        })
    })
}
