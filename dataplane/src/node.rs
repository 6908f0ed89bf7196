//! A running dataplane: the EAL, the mempool, the ports of the configured
//! interfaces, the shared router and the worker threads, built from a
//! [`NodeConfig`] and torn down in the right order.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tandem_config::{AggregateMode, Device, InterfaceConfig, LacpRate, NodeConfig};

use crossbeam::channel::{bounded, Sender};

use crate::conntrack::{ConnView, ShardConfig};
use crate::counters::WorkerCounters;
use crate::dpdk::{DpdkError, Eal, LinkState, Mempool, Port, PortCounters, PortSetup};
use crate::firewall::{ConnChunk, ConnQuery, Firewall, FirewallCounters, FirewallSettings};
use crate::hadata::HaDataHandle;
use crate::neigh::{NeighbourTable, NeighbourTimers};
use crate::policy::{Policy, PolicyError};
use crate::router::{Router, RouterError, RouterInterface, StaticRoute};
use crate::sync::{SyncCore, SyncLink, SyncSettings};
use crate::wire::EthernetAddress;
use crate::worker::{PollMode, Role, Worker, WorkerCommand, WorkerFault, WorkerSettings};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A DPDK call failed.
    #[error(transparent)]
    Dpdk(#[from] DpdkError),
    /// A data interface's device could not be opened.
    #[error("interface {name:?} ({device}): {source}")]
    Interface {
        /// The interface's name in the configuration.
        name: String,
        /// Its device as configured (PCI address or vdev spec).
        device: String,
        /// What DPDK said.
        source: DpdkError,
    },
    /// The routing setup is inconsistent.
    #[error("routing: {0}")]
    Router(#[from] RouterError),
    /// The policy file could not be read or compiled.
    #[error("policy: {0}")]
    Policy(String),
    /// The sync core could not start.
    #[error("state sync: {0}")]
    Sync(String),
    /// A worker thread could not be started, or does not answer.
    #[error("worker {id}: {msg}")]
    Worker {
        /// Worker index.
        id: usize,
        /// What went wrong.
        msg: String,
    },
    /// A walk over the connection table took longer than allowed.
    #[error("{what} stopped after {ms} ms at worker {id}, slot {slot}: the workers answer too slowly (busy with traffic?); narrow the filter (--proto, --addr, --port) or retry")]
    TooSlow {
        /// "conn list" or "conn flush".
        what: &'static str,
        /// How long it ran.
        ms: u64,
        /// The worker it was at.
        id: usize,
        /// The slot it was at.
        slot: usize,
    },
    /// The node is stopping: long requests are cut short.
    #[error("tandemd is stopping: the request was cut short")]
    Stopping,
    /// No worker has this index.
    #[error("there is no worker {id}: this node has {count} workers (0 to {last})", last = count.saturating_sub(1))]
    NoSuchWorker {
        /// The index asked for.
        id: usize,
        /// How many workers there are.
        count: usize,
    },
}

/// One configured interface and its port.
#[derive(Debug)]
pub struct NodeInterface {
    /// The interface's configuration.
    pub config: InterfaceConfig,
    /// The DPDK port.
    pub port: Port,
    /// The port's MAC address.
    pub mac: EthernetAddress,
}

/// Where a link state was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkSource {
    /// From the DPDK driver.
    Dpdk,
    /// From the carrier of the kernel interface behind the port (af_packet
    /// and af_xdp ports, whose driver does not see carrier changes).
    Kernel(String),
    /// From the members of a link aggregate (up while one carries traffic).
    Aggregate,
}

/// A worker thread and what the control thread can see of it.
#[derive(Debug)]
pub struct WorkerHandle {
    /// Worker index.
    pub id: usize,
    /// The CPU it is pinned to, if any.
    pub cpu: Option<usize>,
    /// Its DPDK lcore id once registered.
    pub lcore: Arc<std::sync::OnceLock<u32>>,
    /// Its counters.
    pub counters: Arc<WorkerCounters>,
    /// Its firewall's counters, when the node filters.
    pub firewall: Option<Arc<FirewallCounters>>,
    commands: Sender<WorkerCommand>,
    thread: Option<JoinHandle<()>>,
}

impl WorkerHandle {
    /// Whether the worker's thread has ended. It only ends when the node
    /// stops, so before that it means the worker panicked.
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_some_and(JoinHandle::is_finished)
    }

    /// A counter the worker bumps on every turn of its poll loop: a live
    /// worker moves it at least every `max_sleep_us` (adaptive) or all the
    /// time (busy polling).
    pub fn progress(&self) -> u64 {
        self.counters.polls.get()
    }
}

/// How long a request waits for a worker to take or answer one command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// Table slots a worker walks per listing command (see
/// [`WorkerCommand::ListConnections`]): about a millisecond of work.
pub const LIST_SLOTS: usize = 16_384;

/// Table slots a worker flushes per command: a step's delete records fit
/// in the delta ring.
pub const FLUSH_SLOTS: usize = 4_096;

/// The policy in force and where it came from.
#[derive(Debug, Clone)]
pub struct PolicyInfo {
    /// The file.
    pub path: std::path::PathBuf,
    /// Filter rules (enabled ones, plus implicit ones).
    pub rules: usize,
    /// NAT rules.
    pub nat_rules: usize,
    /// The compiled policy's identity ([`crate::policy::Policy::id`]).
    pub id: u64,
    /// Each rule of the file, in order: (name, or `rule N`; action; logged;
    /// enabled).
    pub rule_list: Vec<RuleSummary>,
    /// The default action.
    pub default_action: String,
}

/// One rule of the policy as `policy show` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSummary {
    /// Its name, or `rule N` (N: its index, from 0).
    pub name: String,
    /// pass, block or reject.
    pub action: String,
    /// `log: true`.
    pub log: bool,
    /// Enabled.
    pub enabled: bool,
}

/// A running dataplane.
pub struct Node {
    interfaces: Vec<NodeInterface>,
    router: Arc<Router>,
    workers: Vec<WorkerHandle>,
    stop: Arc<AtomicBool>,
    epoch: Instant,
    pool: Option<Arc<Mempool>>,
    /// The policy in force (read by any thread, replaced by a reload).
    policy: Mutex<Option<PolicyInfo>>,
    /// Held while a reload compiles: one reload at a time.
    reloading: Mutex<()>,
    /// Set when the node stops: table walks in progress give up.
    requests_cancelled: AtomicBool,
    role: Arc<AtomicU8>,
    /// Bumped to have the workers announce the addresses again.
    announce: Arc<std::sync::atomic::AtomicU64>,
    /// The state sync (a cluster member with a firewall); set at start or
    /// by [`Node::enable_ha`].
    sync: std::sync::OnceLock<SyncCore>,
    ha_data: std::sync::OnceLock<HaDataHandle>,
    /// The member's HA keys (made at start or by [`Node::enable_ha`]),
    /// shared by the state sync, the election and the members' service.
    keys: std::sync::OnceLock<Arc<crate::hakeys::KeyRing>>,
    /// The shards' delta rings of a node that started alone with a
    /// firewall, kept for [`Node::enable_ha`].
    spare_deltas: Mutex<Vec<crate::conntrack::DeltaConsumer>>,
    /// A passive member keeps its LACP aggregates out of distribution.
    lacp_quiet_when_passive: AtomicBool,
    eal: Option<Eal>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("interfaces", &self.interfaces)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Initialises DPDK from the configuration, opens every interface's
    /// port with one queue pair per worker, and starts the workers.
    pub fn start(cfg: &NodeConfig, config_dir: &Path) -> Result<Node, NodeError> {
        let policy_path = cfg.firewall.policy_path(config_dir);
        let eal = Eal::init(&cfg.eal_args())?;
        let dp = &cfg.dataplane;
        let pool = Mempool::new(&eal, "tandem_mbufs", dp.mbufs, dp.mbuf_cache)?;
        let queues = dp.workers.len() as u16;
        let mut interfaces = Vec::with_capacity(cfg.interfaces.len());
        for ic in &cfg.interfaces {
            let setup = PortSetup {
                queues,
                rx_descriptors: dp.rx_descriptors,
                tx_descriptors: dp.tx_descriptors,
                mtu: ic.mtu,
            };
            let port = Port::open(&eal, ic.device.name(), &setup, pool.clone()).map_err(|e| {
                NodeError::Interface {
                    name: ic.name.clone(),
                    device: match &ic.device {
                        tandem_config::Device::Pci(a) => format!("PCI {a}"),
                        tandem_config::Device::Vdev(s) => format!("vdev {s}"),
                    },
                    source: e,
                }
            })?;
            if let Some(agg) = &ic.aggregate {
                // Over af_packet members the bond cannot turn on
                // all-multicast, and would drop ARP: promiscuous instead
                // (the router checks destination MACs itself).
                if !crate::dpdk::port_allmulticast(port.id()) {
                    crate::dpdk::set_promiscuous(port.id(), true)?;
                }
                if agg.mode == AggregateMode::Lacp && agg.lacp_rate == LacpRate::Fast {
                    crate::dpdk::set_bond_lacp_timers(port.id(), &crate::dpdk::LacpTimers::FAST)?;
                }
            }
            let mac = EthernetAddress(port.mac()?);
            interfaces.push(NodeInterface {
                config: ic.clone(),
                port,
                mac,
            });
        }

        let n = &dp.neighbour;
        let neighbours = Arc::new(NeighbourTable::new(
            n.capacity as usize,
            NeighbourTimers {
                reachable_ms: u64::from(n.reachable_secs) * 1000,
                timeout_ms: u64::from(n.timeout_secs) * 1000,
                retry_ms: u64::from(n.retry_ms),
            },
        ));
        let router_ifaces = interfaces
            .iter()
            .map(|i| RouterInterface {
                port: i.port.id(),
                mac: i.mac,
                addresses: i
                    .config
                    .addresses
                    .iter()
                    .map(|a| (a.addr, a.prefix_len))
                    .collect(),
                mtu: i.config.mtu,
            })
            .collect();
        let port_of = |name: &str| {
            interfaces
                .iter()
                .find(|i| i.config.name == name)
                .map(|i| i.port.id())
        };
        let routes: Vec<StaticRoute> = cfg
            .routes
            .iter()
            .map(|r| StaticRoute {
                destination: r.destination.addr,
                prefix_len: r.destination.prefix_len,
                via: r.via,
                port: r.interface.as_deref().and_then(port_of),
            })
            .collect();
        let router = Arc::new(Router::new(router_ifaces, &routes, neighbours)?);

        let mut node = Node {
            interfaces,
            router,
            workers: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            epoch: Instant::now(),
            pool: Some(pool),
            policy: Mutex::new(None),
            reloading: Mutex::new(()),
            requests_cancelled: AtomicBool::new(false),
            // A cluster member starts passive, silent until it is told (or
            // elects itself) to be active; a lone node is active.
            announce: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            role: Arc::new(AtomicU8::new(if cfg.ha.is_some() {
                Role::Passive
            } else {
                Role::Active
            } as u8)),
            sync: std::sync::OnceLock::new(),
            ha_data: std::sync::OnceLock::new(),
            keys: std::sync::OnceLock::new(),
            spare_deltas: Mutex::new(Vec::new()),
            lacp_quiet_when_passive: AtomicBool::new(
                cfg.ha.as_ref().is_some_and(|h| !h.lacp_when_passive),
            ),
            eal: Some(eal),
        };
        let policy = match policy_path {
            Some(path) => {
                let (policy, info) = node.compile_policy(&path)?;
                *node
                    .policy
                    .get_mut()
                    .unwrap_or_else(PoisonError::into_inner) = Some(info);
                Some(policy)
            }
            None => None,
        };
        node.spawn_workers(cfg, policy)?;
        Ok(node)
    }

    /// Reads and compiles the policy at `path` for this node's interfaces
    /// (with DPDK's ACL classifier, the EAL being up).
    fn compile_policy(&self, path: &Path) -> Result<(Arc<Policy>, PolicyInfo), NodeError> {
        let names: Vec<&str> = self
            .interfaces
            .iter()
            .map(|i| i.config.name.as_str())
            .collect();
        let cfg = tandem_config::policy::load(path, Some(&names))
            .map_err(|e| NodeError::Policy(e.to_string()))?;
        let ifaces: Vec<(String, u16)> = self
            .interfaces
            .iter()
            .map(|i| (i.config.name.clone(), i.port.id()))
            .collect();
        let policy = Policy::compile(&cfg, &ifaces)
            .map_err(|e: PolicyError| NodeError::Policy(e.to_string()))?;
        let action = |a: crate::policy::Action| match a {
            crate::policy::Action::Pass => "pass",
            crate::policy::Action::Block => "block",
            crate::policy::Action::Reject => "reject",
        };
        let info = PolicyInfo {
            path: path.to_owned(),
            rules: policy.stats().rules,
            nat_rules: cfg.nat.iter().filter(|n| n.enabled).count(),
            id: policy.id(),
            rule_list: cfg
                .rules
                .iter()
                .enumerate()
                .map(|(i, r)| RuleSummary {
                    name: r.name.clone().unwrap_or_else(|| format!("rule {i}")),
                    action: action(r.action).into(),
                    log: r.log,
                    enabled: r.enabled,
                })
                .collect(),
            default_action: action(cfg.default_action).into(),
        };
        Ok((Arc::new(policy), info))
    }

    /// The members of interface `i`'s link aggregate (none for a plain
    /// interface), as (port name, carries traffic: in distribution for
    /// LACP, carrier for active-backup, whose bond fails over to any member
    /// with carrier within one `poll_aggregates`). A member that
    /// keeps its LACP aggregates out of distribution while passive reports
    /// the members' carriers instead: distribution then only says which
    /// role it has (and after becoming active LACP takes a few seconds to
    /// converge, which must not count as a failure and swap it back).
    pub fn aggregate(&self, i: usize) -> Option<Vec<(String, bool)>> {
        let iface = self.interfaces.get(i)?;
        let agg = iface.config.aggregate.as_ref()?;
        let info = crate::dpdk::bond_info(iface.port.id()).ok()??;
        // Active-backup: any member with carrier carries traffic once the
        // bond fails over to it (poll_aggregates), so carriers count.
        let by_carrier = agg.mode == AggregateMode::ActiveBackup
            || (self.lacp_quiet_when_passive.load(Ordering::Relaxed)
                && agg.mode == AggregateMode::Lacp);
        let carrying = if by_carrier { &info.up } else { &info.active };
        Some(
            info.members
                .iter()
                .map(|&m| {
                    (
                        crate::dpdk::port_name(m).unwrap_or_else(|_| format!("port {m}")),
                        carrying.contains(&m),
                    )
                })
                .collect(),
        )
    }

    /// Moves every active-backup aggregate to a member with carrier when
    /// its active member lost it (the bonding PMD cannot see af_packet
    /// carriers): call every 100 ms or so. Returns the interfaces that
    /// failed over.
    pub fn poll_aggregates(&self) -> Vec<String> {
        let mut moved = Vec::new();
        for iface in &self.interfaces {
            let Some(agg) = &iface.config.aggregate else {
                continue;
            };
            if agg.mode == AggregateMode::ActiveBackup
                && matches!(
                    crate::dpdk::bond_follow_carriers(iface.port.id()),
                    Ok(Some(_))
                )
            {
                moved.push(iface.config.name.clone());
            }
        }
        moved
    }

    /// Sets every data port's link down then up again (where the driver
    /// can), so switches forget this member's MAC addresses; returns what
    /// failed, by interface.
    pub fn bounce_ports(&self) -> Vec<(String, String)> {
        let mut failed = Vec::new();
        for iface in &self.interfaces {
            let r = iface
                .port
                .set_link(false)
                .and_then(|()| iface.port.set_link(true));
            if let Err(e) = r {
                failed.push((iface.config.name.clone(), e.to_string()));
            }
        }
        failed
    }

    /// The HA path over the data ports, on a cluster member.
    pub fn ha_data(&self) -> Option<&HaDataHandle> {
        self.ha_data.get()
    }

    /// The sync core, when the node is a cluster member with a firewall.
    pub fn sync(&self) -> Option<&SyncCore> {
        self.sync.get()
    }

    /// The node's role.
    pub fn role(&self) -> Role {
        Role::from_u8(self.role.load(Ordering::Acquire))
    }

    /// Publishes a new role; every worker follows before its next burst
    /// (on becoming active: larval connections go live, gratuitous ARPs).
    pub fn set_role(&self, role: Role) {
        self.role.store(role as u8, Ordering::Release);
    }

    /// Passive for the cluster, but the workers keep forwarding the
    /// connections they have (and open none) until [`Node::set_role`]:
    /// the old active of a planned swap, while the neighbours move to the
    /// new one ([`crate::worker::DRAINING`]).
    pub fn set_draining(&self) {
        self.role.store(crate::worker::DRAINING, Ordering::Release);
    }

    /// Has the workers send the gratuitous ARPs of every address again
    /// (while active): after a dual-active episode, the neighbours may have
    /// learnt the member that yielded.
    pub fn reannounce(&self) {
        self.announce.fetch_add(1, Ordering::AcqRel);
    }

    /// The (hits, bytes) of each rule of the policy in force, summed over
    /// the workers that run it (a worker still on the previous policy is
    /// left out): one per rule of the file, then the default action's.
    pub fn rule_hits(&self) -> Option<Vec<(u64, u64)>> {
        let id = self.policy()?.id;
        let mut sum: Vec<(u64, u64)> = Vec::new();
        for w in &self.workers {
            let Some(fw) = &w.firewall else { continue };
            let (wid, hits) = fw
                .rule_hits
                .lock()
                .map(|h| (h.0, h.1.clone()))
                .unwrap_or_else(|e| {
                    let h = e.into_inner();
                    (h.0, h.1.clone())
                });
            if wid != id {
                continue;
            }
            if sum.len() < hits.len() {
                sum.resize(hits.len(), (0, 0));
            }
            for (s, c) in sum.iter_mut().zip(hits.iter()) {
                s.0 += c.hits.get();
                s.1 += c.bytes.get();
            }
        }
        Some(sum)
    }

    /// Takes at most `max` logged rule matches of each worker, and the
    /// matches not logged so far (over the rate limit, queue full).
    pub fn take_rule_logs(&self, max: usize) -> (Vec<crate::firewall::RuleLogRecord>, u64, u64) {
        let (mut out, mut limited, mut full) = (Vec::new(), 0, 0);
        for w in &self.workers {
            let Some(fw) = &w.firewall else { continue };
            for _ in 0..max {
                match fw.rule_log.pop() {
                    Some(r) => out.push(r),
                    None => break,
                }
            }
            limited += fw.rule_log_suppressed.get();
            full += fw.rule_log_queue_full.get();
        }
        out.sort_by_key(|r| r.at_ms);
        (out, limited, full)
    }

    /// The node's time base: ms since this instant are what records carry.
    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    /// The policy in force, if the node filters.
    pub fn policy(&self) -> Option<PolicyInfo> {
        self.policy
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The member's HA key ring, made from `ha`'s pre-shared key the first
    /// time (the derivation is memoized per process: the daemon did it
    /// already); `None` if the keys cannot be derived (the daemon refuses
    /// such a configuration before it gets here).
    fn ring_for(&self, ha: &tandem_config::HaConfig) -> Option<Arc<crate::hakeys::KeyRing>> {
        if let Some(r) = self.keys.get() {
            return Some(r.clone());
        }
        let k = crate::hakeys::for_cluster(ha.psk.expose(), ha.cluster_id).ok()?;
        Some(
            self.keys
                .get_or_init(|| crate::hakeys::KeyRing::new(k))
                .clone(),
        )
    }

    /// The member's HA keys (a cluster member only).
    pub fn key_ring(&self) -> Option<&Arc<crate::hakeys::KeyRing>> {
        self.keys.get()
    }

    /// Turns a node that runs alone into a cluster member with `cfg`'s HA
    /// section, without stopping it: the workers get the HA path over the
    /// data ports and their HA settings, and the state sync starts on the
    /// shards' delta rings. The role stays what it is (a node alone is
    /// active: it stays the active member). Fails if HA is on already.
    pub fn enable_ha(&self, cfg: &NodeConfig) -> Result<(), NodeError> {
        let ha = cfg
            .ha
            .as_ref()
            .ok_or_else(|| NodeError::Sync("the configuration has no ha section".into()))?;
        if self.ha_data.get().is_some() || self.sync.get().is_some() {
            return Err(NodeError::Sync(
                "this node is a cluster member already".into(),
            ));
        }
        let keys = self.ring_for(ha);
        let (handle, path) = crate::hadata::channel();
        let deltas = std::mem::take(
            &mut *self
                .spare_deltas
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let mut handles: Vec<Option<crate::sync::WorkerSync>> =
            (0..self.workers.len()).map(|_| None).collect();
        if !deltas.is_empty() {
            let (core, h) = SyncCore::start(
                sync_settings(cfg, ha, keys),
                deltas,
                self.role.clone(),
                self.epoch,
            )
            .map_err(|e| NodeError::Sync(e.to_string()))?;
            for (slot, h) in handles.iter_mut().zip(h) {
                *slot = Some(h);
            }
            let _ = self.sync.set(core);
        }
        self.lacp_quiet_when_passive
            .store(!ha.lacp_when_passive, Ordering::Relaxed);
        for (w, sync) in self.workers.iter().zip(handles) {
            let settings = crate::worker::HaWorker {
                ha_data: if w.id == 0 {
                    path.clone()
                } else {
                    path.without_sending()
                },
                sync,
                garp_count: if w.id == 0 { ha.garp_count } else { 0 },
                garp_interval_ms: u64::from(ha.garp_interval_ms),
                garp_spacing_ms: u64::from(ha.garp_spacing_ms),
                lacp_quiet_when_passive: !ha.lacp_when_passive,
                sync_min_age_ms: u64::from(ha.sync_min_age_secs) * 1000,
                takeover_grace_ms: u64::from(ha.takeover_grace_ms),
            };
            w.commands
                .send_timeout(WorkerCommand::EnableHa(Box::new(settings)), COMMAND_TIMEOUT)
                .map_err(|_| NodeError::Worker {
                    id: w.id,
                    msg: "does not take commands (stopped or stuck)".into(),
                })?;
        }
        let _ = self.ha_data.set(handle);
        Ok(())
    }

    /// Changes the workers' HA parameters that apply at once (`ha set`):
    /// the gratuitous ARP interval, LACP on the passive member, the
    /// minimum age of synchronized connections.
    pub fn set_ha_params(
        &self,
        garp_interval_ms: u64,
        lacp_when_passive: bool,
        sync_min_age_ms: u64,
    ) -> Result<(), NodeError> {
        self.lacp_quiet_when_passive
            .store(!lacp_when_passive, Ordering::Relaxed);
        for w in &self.workers {
            w.commands
                .send_timeout(
                    WorkerCommand::SetHaParams {
                        garp_interval_ms,
                        lacp_quiet_when_passive: !lacp_when_passive,
                        sync_min_age_ms,
                    },
                    COMMAND_TIMEOUT,
                )
                .map_err(|_| NodeError::Worker {
                    id: w.id,
                    msg: "does not take commands (stopped or stuck)".into(),
                })?;
        }
        Ok(())
    }

    /// Compiles the policy at `path` for this node's interfaces without
    /// applying it: what a reload of it would say.
    pub fn check_policy(&self, path: &Path) -> Result<PolicyInfo, NodeError> {
        self.compile_policy(path).map(|(_, info)| info)
    }

    /// Reads the policy file again, compiles it on the calling thread (a
    /// big policy takes a while: not for the control thread), and hands the
    /// new snapshot to every worker (they switch between bursts;
    /// connections stay). On error the old policy stays in force. One
    /// reload at a time: a second caller waits for the first.
    pub fn reload_policy(&self) -> Result<PolicyInfo, NodeError> {
        let _one_at_a_time = self
            .reloading
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(current) = self.policy() else {
            return Err(NodeError::Policy(
                "this node runs as a plain router: no filter policy is configured (set firewall.policy in the node configuration)".into(),
            ));
        };
        let (policy, info) = self.compile_policy(&current.path)?;
        for w in &self.workers {
            w.commands
                .send_timeout(WorkerCommand::SetPolicy(policy.clone()), COMMAND_TIMEOUT)
                .map_err(|_| NodeError::Worker {
                    id: w.id,
                    msg: "does not take commands (stopped or stuck)".into(),
                })?;
        }
        *self.policy.lock().unwrap_or_else(PoisonError::into_inner) = Some(info.clone());
        Ok(info)
    }

    /// Asks worker `w` one command and waits (bounded) for its answer.
    fn ask<T>(
        &self,
        w: &WorkerHandle,
        command: impl FnOnce(Sender<T>) -> WorkerCommand,
    ) -> Result<T, NodeError> {
        let (tx, rx) = bounded(1);
        w.commands
            .send_timeout(command(tx), COMMAND_TIMEOUT)
            .ok()
            .and_then(|()| rx.recv_timeout(COMMAND_TIMEOUT).ok())
            .ok_or_else(|| NodeError::Worker {
                id: w.id,
                msg: format!(
                    "did not answer within {} s (stopped or stuck)",
                    COMMAND_TIMEOUT.as_secs()
                ),
            })
    }

    /// Walks every worker's table in steps: `step(worker, from)` has the
    /// worker serve one step from slot `from` (between two bursts) and
    /// says where the next one starts (none when the table is done).
    /// Gives up at `deadline` or when the node stops; at most
    /// (capacity / `slots` + 2) steps per worker.
    fn walk(
        &self,
        what: &'static str,
        slots: usize,
        deadline: Instant,
        mut step: impl FnMut(&WorkerHandle, usize) -> Result<Option<usize>, NodeError>,
    ) -> Result<(), NodeError> {
        let started = Instant::now();
        for w in &self.workers {
            let capacity = w.firewall.as_ref().map_or(0, |f| f.capacity.get()) as usize;
            let mut from = 0;
            for _ in 0..capacity / slots.max(1) + 2 {
                if self.requests_cancelled.load(Ordering::Relaxed) {
                    return Err(NodeError::Stopping);
                }
                if Instant::now() >= deadline {
                    return Err(NodeError::TooSlow {
                        what,
                        ms: started.elapsed().as_millis() as u64,
                        id: w.id,
                        slot: from,
                    });
                }
                match step(w, from)? {
                    Some(next) if next > from => from = next,
                    _ => break,
                }
            }
        }
        Ok(())
    }

    /// The connections `query` wants, from every worker, with the owning
    /// worker; and how many matched in all. Each worker walks its table
    /// [`LIST_SLOTS`] slots at a time; the whole walk gives up at
    /// `deadline`. Not an atomic snapshot: connections created or removed
    /// during the walk may be missed.
    pub fn connections(
        &self,
        query: &ConnQuery,
        deadline: Instant,
    ) -> Result<(Vec<(usize, ConnView)>, u64), NodeError> {
        let mut all = Vec::new();
        let mut total = 0;
        self.walk("conn list", LIST_SLOTS, deadline, |w, from| {
            let query = ConnQuery {
                limit: query.limit.saturating_sub(all.len()),
                ..query.clone()
            };
            let chunk: ConnChunk = self.ask(w, |reply| WorkerCommand::ListConnections {
                query,
                from,
                slots: LIST_SLOTS,
                reply,
            })?;
            total += chunk.matched;
            all.extend(chunk.views.into_iter().map(|v| (w.id, v)));
            Ok(chunk.next)
        })?;
        Ok((all, total))
    }

    /// The digest of the replicated part of the whole table (every
    /// worker's shard merged).
    pub fn table_digest(&self) -> Result<crate::conntrack::TableDigest, NodeError> {
        let mut all = crate::conntrack::TableDigest::default();
        for w in &self.workers {
            let (tx, rx) = bounded(1);
            let d = w
                .commands
                .send_timeout(WorkerCommand::Digest { reply: tx }, COMMAND_TIMEOUT)
                .ok()
                .and_then(|()| rx.recv_timeout(COMMAND_TIMEOUT).ok())
                .ok_or_else(|| NodeError::Worker {
                    id: w.id,
                    msg: "did not answer within 2 s".into(),
                })?;
            all.merge(&d);
        }
        Ok(all)
    }

    /// Deletes every connection of every worker, [`FLUSH_SLOTS`] slots at
    /// a time; returns how many. Gives up at `deadline` (what was deleted
    /// so far stays deleted).
    pub fn flush_connections(&self, deadline: Instant) -> Result<u64, NodeError> {
        let mut n = 0;
        self.walk("conn flush", FLUSH_SLOTS, deadline, |w, from| {
            let (deleted, next) = self.ask(w, |reply| WorkerCommand::Flush {
                from,
                slots: FLUSH_SLOTS,
                reply,
            })?;
            n += deleted;
            Ok(next)
        })?;
        Ok(n)
    }

    /// Injects `fault` into worker `id` (tests of the black-hole watchdog;
    /// the daemon allows it only when told to).
    pub fn inject_fault(&self, id: usize, fault: WorkerFault) -> Result<(), NodeError> {
        let w = self.workers.get(id).ok_or(NodeError::NoSuchWorker {
            id,
            count: self.workers.len(),
        })?;
        w.commands
            .send_timeout(WorkerCommand::Fault(fault), COMMAND_TIMEOUT)
            .map_err(|_| NodeError::Worker {
                id,
                msg: "does not take commands (stopped or stuck)".into(),
            })
    }

    /// Cuts short the table walks in progress and refuses new ones (the
    /// node is stopping).
    pub fn cancel_requests(&self) {
        self.requests_cancelled.store(true, Ordering::Relaxed);
    }

    fn spawn_workers(
        &mut self,
        cfg: &NodeConfig,
        policy: Option<Arc<Policy>>,
    ) -> Result<(), NodeError> {
        let shards = cfg.dataplane.workers.len().max(1);
        let seed = {
            use std::hash::{BuildHasher, Hasher};
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
        };
        let dp = &cfg.dataplane;
        let mut queue_sets: Vec<_> = self
            .interfaces
            .iter()
            .map(|i| {
                i.port
                    .take_queues()
                    .expect("a fresh port hands out its queues")
            })
            .collect();
        let poll_mode = match dp.poll_mode {
            tandem_config::PollMode::Busy => PollMode::Busy,
            tandem_config::PollMode::Adaptive => PollMode::Adaptive {
                spin_polls: dp.idle.spin_polls,
                max_sleep: Duration::from_micros(u64::from(dp.idle.max_sleep_us)),
            },
        };
        // Cluster members exchange last-resort heartbeats and ICMP checks
        // over the data ports (worker 0 sends, every worker receives).
        let ha_path = cfg.ha.as_ref().map(|_| {
            let (handle, path) = crate::hadata::channel();
            let _ = self.ha_data.set(handle);
            path
        });
        // Several workers: each hands the packets it does not own to their
        // owner, and frames for a port it has no TX queue of to the worker
        // that has one.
        let redirects = Arc::new(crate::conntrack::Redirects::default());
        let mut dispatch: Vec<Option<crate::dispatch::Dispatch>> = if shards > 1 {
            let eal = self.eal.as_ref().expect("EAL lives until shutdown");
            crate::dispatch::Dispatch::build(
                eal,
                &format!("tw{}", std::process::id() % 100_000),
                shards,
                dp.handoff_ring as usize,
                &redirects,
            )?
            .into_iter()
            .map(Some)
            .collect()
        } else {
            (0..shards).map(|_| None).collect()
        };
        let max_port = self
            .interfaces
            .iter()
            .map(|i| i.port.id() as usize)
            .max()
            .unwrap_or(0);
        let mut built = Vec::new();
        for (id, wc) in dp.workers.iter().enumerate() {
            // Worker `id` polls RX queue `id` and sends on TX queue `id` of
            // every port that has that many; a port with fewer TX queues
            // sends this worker's frames through worker `id % queues`.
            let mut rx = Vec::new();
            let mut tx = Vec::new();
            let mut tx_proxy = vec![None; max_port + 1];
            for ((rxs, txs), iface) in queue_sets.iter_mut().zip(&self.interfaces) {
                if let Some(q) = rxs.iter().position(|q| q.queue() as usize == id) {
                    rx.push(rxs.remove(q));
                }
                if let Some(q) = txs.iter().position(|q| q.queue() as usize == id) {
                    tx.push(txs.remove(q));
                } else {
                    let queues = iface.port.tx_queues().max(1) as usize;
                    tx_proxy[iface.port.id() as usize] = Some(id % queues);
                }
            }
            let settings = WorkerSettings {
                id,
                burst: dp.burst as usize,
                poll_mode,
                hold_capacity: dp.neighbour.hold_packets as usize,
                hold_timeout_ms: 3 * u64::from(dp.neighbour.retry_ms).max(1000),
                icmp_errors_per_sec: 100,
                garp_count: if id == 0 {
                    cfg.ha.as_ref().map_or(3, |h| h.garp_count)
                } else {
                    0
                },
                garp_interval_ms: cfg.ha.as_ref().map_or(0, |h| u64::from(h.garp_interval_ms)),
                garp_spacing_ms: cfg.ha.as_ref().map_or(0, |h| u64::from(h.garp_spacing_ms)),
                lacp_ports: self
                    .interfaces
                    .iter()
                    .filter(|i| {
                        i.config
                            .aggregate
                            .as_ref()
                            .is_some_and(|a| a.mode == AggregateMode::Lacp)
                    })
                    .map(|i| i.port.id())
                    .collect(),
                lacp_quiet_when_passive: cfg.ha.as_ref().is_some_and(|h| !h.lacp_when_passive),
            };
            let counters = Arc::new(WorkerCounters::default());
            let lcore = Arc::new(std::sync::OnceLock::new());
            let (cmd_tx, cmd_rx) = bounded(16);
            let mut worker = Worker::new(
                settings,
                rx,
                tx,
                self.router.clone(),
                self.pool.clone().expect("pool lives until shutdown"),
                counters.clone(),
                self.epoch,
            )
            .with_commands(cmd_rx)
            .with_role(self.role.clone())
            .with_announce(self.announce.clone());
            if let Some(d) = dispatch.get_mut(id).and_then(Option::take) {
                worker = worker.with_dispatch(d, tx_proxy);
            }
            if let Some(p) = &ha_path {
                worker = worker.with_ha_data(if id == 0 {
                    p.clone()
                } else {
                    p.without_sending()
                });
            }
            let mut fw_counters = None;
            if let Some(policy) = &policy {
                let c = Arc::new(FirewallCounters::default());
                let fw = &cfg.firewall;
                let settings = FirewallSettings {
                    shard: ShardConfig {
                        capacity: (fw.connections as usize / shards) as u32,
                        timeouts: timeouts(&fw.timeouts),
                        shard: id,
                        shards,
                        hash_seed: seed ^ (id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                        delta_capacity: fw.delta_ring as usize,
                        // F10: only connections older than this are synced.
                        sync_min_age_ms: cfg
                            .ha
                            .as_ref()
                            .map_or(0, |h| u64::from(h.sync_min_age_secs) * 1000),
                        tcp: crate::conntrack::TcpTrackingConfig {
                            takeover_grace_ms: cfg
                                .ha
                                .as_ref()
                                .map_or(30_000, |h| u64::from(h.takeover_grace_ms)),
                            ..Default::default()
                        },
                        ..ShardConfig::default()
                    },
                    verify_checksums: fw.verify_checksums,
                    fragment_capacity: 1024,
                    fragment_timeout_ms: u64::from(fw.fragment_timeout_ms),
                };
                let mut fw = Firewall::new(settings, policy.clone(), c.clone(), self.now_ms());
                if shards > 1 {
                    fw.shard_mut().set_redirects(redirects.clone());
                }
                worker = worker.with_firewall(fw);
                fw_counters = Some(c);
            }
            built.push((id, wc.cpu, worker, lcore, counters, fw_counters, cmd_tx));
        }

        // A cluster member with a firewall streams its connections to the
        // peer: the sync core takes every shard's delta ring.
        let keys = cfg.ha.as_ref().and_then(|ha| self.ring_for(ha));
        if let (Some(ha), true) = (&cfg.ha, policy.is_some()) {
            let consumers: Vec<_> = built
                .iter_mut()
                .map(|b| {
                    b.2.take_delta_consumer()
                        .expect("a new firewall has its delta ring")
                })
                .collect();
            let (core, handles) = SyncCore::start(
                sync_settings(cfg, ha, keys),
                consumers,
                self.role.clone(),
                self.epoch,
            )
            .map_err(|e| NodeError::Sync(e.to_string()))?;
            for (b, h) in built.iter_mut().zip(handles) {
                b.2.set_sync(h);
            }
            let _ = self.sync.set(core);
        } else if policy.is_some() {
            // Alone with a firewall: the rings wait for `enable_ha`.
            let spare: Vec<_> = built
                .iter_mut()
                .filter_map(|b| b.2.take_delta_consumer())
                .collect();
            *self
                .spare_deltas
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = spare;
        }

        for (id, cpu, mut worker, lcore, counters, fw_counters, cmd_tx) in built {
            let stop = self.stop.clone();
            let lcore_slot = lcore.clone();
            let thread = std::thread::Builder::new()
                .name(format!("tandem-w{id}"))
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
                    }
                    // A registered thread gets an lcore id and mempool
                    // caches; without one it still works, more slowly.
                    if let Ok(l) = crate::dpdk::register_current_thread() {
                        let _ = lcore_slot.set(l);
                    }
                    worker.run(&stop);
                })
                .map_err(|e| NodeError::Worker {
                    id,
                    msg: e.to_string(),
                })?;
            self.workers.push(WorkerHandle {
                id,
                cpu,
                lcore,
                counters,
                firewall: fw_counters,
                commands: cmd_tx,
                thread: Some(thread),
            });
        }
        Ok(())
    }

    /// Milliseconds since the node started: the clock of the dataplane.
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The configured interfaces with their ports.
    pub fn interfaces(&self) -> &[NodeInterface] {
        &self.interfaces
    }

    /// The router shared by the workers.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// The workers.
    pub fn workers(&self) -> &[WorkerHandle] {
        &self.workers
    }

    /// The link state of interface `i`: from the kernel interface behind
    /// the port where there is one, else from the driver.
    pub fn link(&self, i: usize) -> (LinkState, LinkSource) {
        let iface = &self.interfaces[i];
        let driver = iface.port.link().unwrap_or(LinkState {
            up: false,
            speed_mbps: 0,
            full_duplex: false,
        });
        if iface.config.aggregate.is_some() {
            // An aggregate is up while a member carries traffic.
            let up = self.aggregate(i).is_some_and(|a| a.iter().any(|m| m.1));
            return (LinkState { up, ..driver }, LinkSource::Aggregate);
        }
        match iface.config.kernel_interface() {
            Some(k) => (
                LinkState {
                    up: kernel_carrier(k),
                    ..driver
                },
                LinkSource::Kernel(k.to_owned()),
            ),
            None => (driver, LinkSource::Dpdk),
        }
    }

    /// The driver's counters of interface `i`.
    pub fn port_counters(&self, i: usize) -> PortCounters {
        self.interfaces[i].port.counters().unwrap_or_default()
    }

    /// Periodic housekeeping for the control thread: ages the neighbour
    /// table with bounded work.
    pub fn housekeeping(&self) {
        self.router.neighbours().expire(self.now_ms(), 256);
    }

    /// Stops the workers, closes the ports and releases DPDK.
    pub fn shutdown(mut self) {
        self.cancel_requests();
        self.stop_all();
    }

    fn stop_all(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
        self.sync.take();
        for iface in self.interfaces.drain(..) {
            iface.port.close();
        }
        self.pool.take();
        if let Some(eal) = self.eal.take() {
            eal.cleanup();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// Reads the carrier of a kernel interface from sysfs (down if unknown).
pub fn kernel_carrier(ifname: &str) -> bool {
    let base = Path::new("/sys/class/net").join(ifname);
    let carrier = std::fs::read_to_string(base.join("carrier"))
        .map(|s| s.trim() == "1")
        .unwrap_or(false);
    let oper = std::fs::read_to_string(base.join("operstate"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    carrier && oper != "down" && oper != "lowerlayerdown"
}

/// The devices of a configuration as the status command shows them.
pub fn device_text(d: &Device) -> String {
    match d {
        Device::Pci(a) => format!("pci:{a}"),
        Device::Vdev(s) => format!("vdev:{s}"),
    }
}

/// The connection timeouts of the configuration (seconds) over the
/// built-in defaults (milliseconds).
fn timeouts(t: &tandem_config::TimeoutsConfig) -> crate::conntrack::Timeouts {
    let mut out = crate::conntrack::Timeouts::default();
    let ms = |v: Option<u32>, d: &mut u64| {
        if let Some(v) = v {
            *d = u64::from(v) * 1000;
        }
    };
    ms(t.tcp_syn_sent, &mut out.tcp_syn_sent);
    ms(t.tcp_syn_received, &mut out.tcp_syn_received);
    ms(t.tcp_established, &mut out.tcp_established);
    ms(t.tcp_fin_wait, &mut out.tcp_fin_wait);
    ms(t.tcp_close_wait, &mut out.tcp_close_wait);
    ms(t.tcp_last_ack, &mut out.tcp_last_ack);
    ms(t.tcp_time_wait, &mut out.tcp_time_wait);
    ms(t.tcp_closed, &mut out.tcp_closed);
    ms(t.udp_unreplied, &mut out.udp_unreplied);
    ms(t.udp_replied, &mut out.udp_replied);
    ms(t.udp_stream, &mut out.udp_stream);
    ms(t.icmp, &mut out.icmp);
    ms(t.gre_unreplied, &mut out.gre_unreplied);
    ms(t.gre, &mut out.gre);
    ms(t.esp_unreplied, &mut out.esp_unreplied);
    ms(t.esp, &mut out.esp);
    ms(t.sctp_handshake, &mut out.sctp_handshake);
    ms(t.sctp_established, &mut out.sctp_established);
    ms(t.sctp_shutdown, &mut out.sctp_shutdown);
    ms(t.sctp_closed, &mut out.sctp_closed);
    ms(t.other_unreplied, &mut out.other_unreplied);
    ms(t.other, &mut out.other);
    out
}

/// The sync core's settings from the node's HA section: one K2K session to
/// the peer, on the main link, else the backup.
fn sync_settings(
    cfg: &NodeConfig,
    ha: &tandem_config::HaConfig,
    keys: Option<Arc<crate::hakeys::KeyRing>>,
) -> SyncSettings {
    use crate::k2k::{serial_from_str, Psk, SessionConfig};
    // The boot number shown to the peer (its log); the session's random
    // id, drawn by SessionConfig::new, is what keeps keys and nonces
    // unique across restarts, whatever the clock does.
    let epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_secs() as u32)
        .max(1);
    let mut session = SessionConfig::new(
        ha.cluster_id,
        serial_from_str(&cfg.node.serial),
        Psk::new(
            keys.as_ref()
                .map_or_else(
                    || crate::hakeys::k2k_master(ha),
                    |k| k.current().k2k_master().clone(),
                )
                .as_bytes(),
        ),
        epoch,
    );
    session.encrypt = ha.encrypt;
    // A build of the next protocol version offers it (see
    // k2k::NEXT_VERSION); the pair speaks the lower one meanwhile.
    let build = crate::build::get();
    let next_version = (build.k2k_version > session.max_version).then_some(build.k2k_version);
    if let Some(v) = next_version {
        session.max_version = v;
    }
    let links = ha
        .links
        .iter()
        .map(|l| SyncLink {
            name: l.name.clone(),
            interface: l.interface.clone(),
            local: std::net::SocketAddrV4::new(l.address.addr, ha.sync_port),
            peer: std::net::SocketAddrV4::new(l.peer, ha.sync_port),
        })
        .collect();
    SyncSettings {
        session,
        links,
        next_version,
        link_dead_ms: u64::from(ha.dead_ms),
        cpu: cfg.dataplane.sync_cpu,
        keys,
    }
}
