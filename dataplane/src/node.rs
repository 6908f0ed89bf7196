//! A running dataplane: the EAL, the mempool, the ports of the configured
//! interfaces, the shared router and the worker threads, built from a
//! [`NodeConfig`] and torn down in the right order.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tandem_config::{Device, InterfaceConfig, NodeConfig};

use crate::counters::WorkerCounters;
use crate::dpdk::{DpdkError, Eal, LinkState, Mempool, Port, PortCounters, PortSetup};
use crate::neigh::{NeighbourTable, NeighbourTimers};
use crate::router::{Router, RouterError, RouterInterface, StaticRoute};
use crate::wire::EthernetAddress;
use crate::worker::{PollMode, Worker, WorkerSettings};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A DPDK call failed.
    #[error(transparent)]
    Dpdk(#[from] DpdkError),
    /// The routing setup is inconsistent.
    #[error("routing: {0}")]
    Router(#[from] RouterError),
    /// A worker thread could not be started.
    #[error("cannot start worker {id}: {msg}")]
    Worker {
        /// Worker index.
        id: usize,
        /// What went wrong.
        msg: String,
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
    thread: Option<JoinHandle<()>>,
}

/// A running dataplane.
pub struct Node {
    interfaces: Vec<NodeInterface>,
    router: Arc<Router>,
    workers: Vec<WorkerHandle>,
    stop: Arc<AtomicBool>,
    epoch: Instant,
    pool: Option<Arc<Mempool>>,
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
    pub fn start(cfg: &NodeConfig) -> Result<Node, NodeError> {
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
            let port = Port::open(&eal, ic.device.name(), &setup, pool.clone())?;
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
            eal: Some(eal),
        };
        node.spawn_workers(cfg)?;
        Ok(node)
    }

    fn spawn_workers(&mut self, cfg: &NodeConfig) -> Result<(), NodeError> {
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
        for (id, wc) in dp.workers.iter().enumerate() {
            // Worker `id` owns queue `id` of every port; take from the back
            // so the indices stay valid (workers are spawned in order).
            let mut rx = Vec::new();
            let mut tx = Vec::new();
            for (rxs, txs) in queue_sets.iter_mut() {
                rx.push(rxs.remove(0));
                tx.push(txs.remove(0));
            }
            let settings = WorkerSettings {
                id,
                burst: dp.burst as usize,
                poll_mode,
                hold_capacity: dp.neighbour.hold_packets as usize,
                hold_timeout_ms: 3 * u64::from(dp.neighbour.retry_ms).max(1000),
                icmp_errors_per_sec: 100,
            };
            let counters = Arc::new(WorkerCounters::default());
            let lcore = Arc::new(std::sync::OnceLock::new());
            let mut worker = Worker::new(
                settings,
                rx,
                tx,
                self.router.clone(),
                self.pool.clone().expect("pool lives until shutdown"),
                counters.clone(),
                self.epoch,
            );
            let stop = self.stop.clone();
            let cpu = wc.cpu;
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
        self.stop_all();
    }

    fn stop_all(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
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
