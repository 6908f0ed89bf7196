//! A seeded chaos run on the two-node lab: both members with the election
//! on and an encrypted sync, long-lived TCP connections and a table of
//! UDP flows through the cluster, and `faults` faults drawn from a seed
//! (kill -9 and restart, SIGSTOP, HA-link cuts and blackholes, loss
//! bursts on the HA links, a cut data link, a forced swap, a clean
//! restart). After each fault the pair must settle (exactly one active,
//! the passive synchronized); at the end every TCP connection must be
//! alive and a verify must find both tables equal. The same seed draws the
//! same faults, so a failure reproduces.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::cluster::{self, role, verify_clean, wait_synchronized, Cluster};
use crate::lab::{addr, Lab};
use crate::node::{HaSection, NodeConfig};
use crate::{cmd, link, tools, LabError, Result};

/// What the run is asked for.
#[derive(Debug, Clone)]
pub struct ChaosConfig {
    /// The seed that draws the faults and their timing.
    pub seed: u64,
    /// How many faults.
    pub faults: usize,
    /// Long-lived TCP connections through the cluster.
    pub tcp_connections: usize,
    /// UDP flows opened at the start (the table the sync must keep).
    pub udp_flows: u64,
    /// Lab tag (namespace prefix).
    pub tag: String,
}

impl Default for ChaosConfig {
    fn default() -> Self {
        ChaosConfig {
            seed: 1,
            faults: 8,
            tcp_connections: 20,
            udp_flows: 20_000,
            tag: "chaos".into(),
        }
    }
}

/// The faults a run draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// kill -9 of the active; it is started again after `restart_ms`.
    KillActive {
        /// Time until the restart.
        restart_ms: u64,
    },
    /// kill -9 of the passive; started again after `restart_ms`.
    KillPassive {
        /// Time until the restart.
        restart_ms: u64,
    },
    /// SIGSTOP of the active for `ms`.
    FreezeActive {
        /// How long.
        ms: u64,
    },
    /// One HA link set down for `ms` (0: main, 1: backup).
    CutHaLink {
        /// Which link.
        link: usize,
        /// How long.
        ms: u64,
    },
    /// Everything arriving on the main HA link dropped for `ms`, carrier up.
    BlackholeHaMain {
        /// How long.
        ms: u64,
    },
    /// `percent` loss of the UDP on both HA links, both ways, for `ms`.
    LossBurst {
        /// Loss in percent.
        percent: u32,
        /// How long.
        ms: u64,
    },
    /// The active's inside data link cut for `ms` (a swap on quality).
    CutActiveDataLink {
        /// How long.
        ms: u64,
    },
    /// hapassive on the active, then hareset once the peer took over.
    ForcedSwap,
    /// A clean stop (SIGTERM) of the active and its restart.
    CleanRestartActive,
}

impl Fault {
    fn name(&self) -> String {
        match self {
            Fault::KillActive { restart_ms } => {
                format!("kill -9 of the active, restart after {restart_ms} ms")
            }
            Fault::KillPassive { restart_ms } => {
                format!("kill -9 of the passive, restart after {restart_ms} ms")
            }
            Fault::FreezeActive { ms } => format!("SIGSTOP of the active for {ms} ms"),
            Fault::CutHaLink { link, ms } => format!(
                "HA link {} down for {ms} ms",
                if *link == 0 { "main" } else { "backup" }
            ),
            Fault::BlackholeHaMain { ms } => {
                format!("main HA link blackholed (carrier up) for {ms} ms")
            }
            Fault::LossBurst { percent, ms } => {
                format!("{percent} % loss on both HA links for {ms} ms")
            }
            Fault::CutActiveDataLink { ms } => format!("the active's inside link cut for {ms} ms"),
            Fault::ForcedSwap => "forced swap (hapassive, then hareset)".into(),
            Fault::CleanRestartActive => "clean stop and restart of the active".into(),
        }
    }
}

/// splitmix64: a small seeded generator (the same seed, the same run).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// The faults of a run with `seed`, in order.
pub fn draw(seed: u64, n: usize) -> Vec<Fault> {
    let mut r = Rng(seed);
    (0..n)
        .map(|_| match r.range(0, 9) {
            0 | 1 => Fault::KillActive {
                restart_ms: r.range(300, 2000),
            },
            2 => Fault::KillPassive {
                restart_ms: r.range(100, 1500),
            },
            3 => Fault::FreezeActive {
                ms: r.range(100, 400),
            },
            4 => Fault::CutHaLink {
                link: r.range(0, 1) as usize,
                ms: r.range(200, 1500),
            },
            5 => Fault::BlackholeHaMain {
                ms: r.range(300, 2000),
            },
            6 => Fault::LossBurst {
                percent: r.range(5, 30) as u32,
                ms: r.range(500, 2500),
            },
            7 => Fault::CutActiveDataLink {
                ms: r.range(500, 2000),
            },
            8 => Fault::ForcedSwap,
            _ => Fault::CleanRestartActive,
        })
        .collect()
}

/// The cluster's policy: the chatter's TCP, UDP flows, pings.
const POLICY: &str = r#"(
    rules: [
        (action: Pass, from: ["198.18.1.0/24"], proto: Tcp, dst_ports: ["7000"]),
        (action: Pass, from: ["198.18.1.0/24"], proto: Udp, dst_ports: ["9000-9001"]),
        (action: Pass, from: ["198.18.1.0/24"], proto: Icmp, icmp_types: [8]),
    ],
    default_action: Block,
)"#;

fn member_config(lab: &Lab, i: usize) -> NodeConfig {
    let mut cfg = lab
        .node_config(i)
        .with_policy(&lab.dir().join("policy.ron"));
    if let Some(fw) = cfg.firewall.as_mut() {
        fw.connections = 262_144;
        fw.extra = "timeouts: (udp_unreplied: Some(3600)),".into();
    }
    cfg.ha = Some(HaSection {
        encrypt: true,
        ..HaSection::lab(i)
    });
    cfg
}

fn nft(lab: &Lab, i: usize, cmds: &[String]) -> Result<()> {
    for c in cmds {
        let o = lab.fw(i).exec(&["nft", c])?;
        if !o.status.success() {
            return Err(LabError::Other(format!(
                "nft {c} in fw{i}: {}",
                String::from_utf8_lossy(&o.stderr)
            )));
        }
    }
    Ok(())
}

fn nft_delete(lab: &Lab, i: usize, table: &str) {
    let _ = lab.fw(i).exec(&["nft", "delete", "table", "inet", table]);
}

fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// The largest heartbeat inter-arrival any member saw on any HA link.
fn max_heartbeat_gap(c: &Cluster) -> f64 {
    c.nodes
        .iter()
        .filter_map(|n| n.ctl(&["hainfo"]).ok())
        .flat_map(|h| {
            h["links"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter_map(|l| l["max_gap_ms"].as_f64())
        })
        .fold(0.0, f64::max)
}

/// Applies `f` to the cluster (the active is `nodes[a]`) and undoes it.
fn apply(c: &mut Cluster, configs: &[NodeConfig], a: usize, f: Fault) -> Result<()> {
    let p = 1 - a;
    match f {
        Fault::KillActive { restart_ms } | Fault::KillPassive { restart_ms } => {
            let who = if matches!(f, Fault::KillActive { .. }) {
                a
            } else {
                p
            };
            c.nodes[who].proc.signal("KILL");
            sleep_ms(restart_ms);
            let Cluster { nodes, lab, .. } = c;
            cluster::restart_config(lab, nodes, who + 1, &configs[who])?;
        }
        Fault::FreezeActive { ms } => {
            let pid = c.nodes[a].proc.pid();
            cmd::signal_group(pid, "STOP");
            sleep_ms(ms);
            cmd::signal_group(pid, "CONT");
        }
        Fault::CutHaLink { link: l, ms } => {
            let dev = if l == 0 { "ha-main" } else { "ha-backup" };
            link::set_down(c.lab.fw(1), dev)?;
            sleep_ms(ms);
            link::set_up(c.lab.fw(1), dev)?;
        }
        Fault::BlackholeHaMain { ms } => {
            for i in [1, 2] {
                nft(
                    &c.lab,
                    i,
                    &[
                        "add table inet chaos_bh".into(),
                        "add chain inet chaos_bh input { type filter hook input priority -10 ; }"
                            .into(),
                        "add rule inet chaos_bh input iifname \"ha-main\" drop".into(),
                    ],
                )?;
            }
            sleep_ms(ms);
            for i in [1, 2] {
                nft_delete(&c.lab, i, "chaos_bh");
            }
        }
        Fault::LossBurst { percent, ms } => {
            let modulo = (100 / percent.max(1)).max(2);
            for i in [1, 2] {
                nft(
                    &c.lab,
                    i,
                    &[
                        "add table inet chaos_loss".into(),
                        "add chain inet chaos_loss input { type filter hook input priority -10 ; }"
                            .into(),
                        format!(
                            "add rule inet chaos_loss input iifname {{ \"ha-main\", \"ha-backup\" }} meta l4proto udp numgen random mod {modulo} == 0 drop"
                        ),
                    ],
                )?;
            }
            sleep_ms(ms);
            for i in [1, 2] {
                nft_delete(&c.lab, i, "chaos_loss");
            }
        }
        Fault::CutActiveDataLink { ms } => {
            c.lab.set_fw_port(a + 1, "in", false)?;
            sleep_ms(ms);
            c.lab.set_fw_port(a + 1, "in", true)?;
        }
        Fault::ForcedSwap => {
            c.nodes[a].ctl(&["hapassive"])?;
            cluster::wait_role(
                &c.nodes[p],
                "active",
                "the peer takes over",
                Duration::from_secs(5),
            )?;
            c.nodes[a].ctl(&["hareset"])?;
        }
        Fault::CleanRestartActive => {
            c.nodes[a].stop();
            let Cluster { nodes, lab, .. } = c;
            cluster::restart_config(lab, nodes, a + 1, &configs[a])?;
        }
    }
    Ok(())
}

/// Waits (bounded) for one active member and a synchronized passive;
/// returns the active's index.
fn settle(c: &Cluster) -> Result<usize> {
    let a = c.wait_single_active(Duration::from_secs(15))?;
    wait_synchronized(
        &c.nodes[1 - a],
        "the passive synchronized after the fault",
        Duration::from_secs(30),
    )?;
    Ok(a)
}

/// Runs the chaos run described by `cfg`, printing a line per fault, and
/// returns its report (JSON). It fails (an error) when the pair does not
/// settle after a fault; the report's `passed` says whether every TCP
/// connection survived and the final verify found no difference.
pub fn run(cfg: &ChaosConfig) -> Result<Value> {
    let t0 = Instant::now();
    let lock = crate::heavy_lock();
    let lab = Lab::two_nodes(&cfg.tag)?;
    crate::firewall::write_policy(&lab, "policy.ron", POLICY)?;
    let configs: Vec<NodeConfig> = (1..=2).map(|i| member_config(&lab, i)).collect();
    let mut c = cluster::start_on(lab, lock, None, &[], |i, n| *n = configs[i - 1].clone())?;
    let mut a = settle(&c)?;
    let server = tools::spawn_tool(
        c.lab.server(),
        "chatter-serve",
        "tcp_chatter.py",
        &[
            "serve".into(),
            "--bind".into(),
            addr::SERVER.into(),
            "--port".into(),
            "7000".into(),
        ],
    )?;
    let flows = cluster::open_udp_flows(&c.lab, cfg.udp_flows, 9000, 20_000)?;
    let faults = draw(cfg.seed, cfg.faults);
    // Long enough for every fault and its settling; stopped early.
    let duration = (60 + 20 * cfg.faults as u64).min(3600);
    let mut chatter = tools::spawn_tool(
        c.lab.client(),
        "chatter",
        "tcp_chatter.py",
        &[
            "chat".into(),
            "--dst".into(),
            addr::SERVER.into(),
            "--port".into(),
            "7000".into(),
            "--connections".into(),
            cfg.tcp_connections.to_string(),
            "--duration".into(),
            duration.to_string(),
        ],
    )?;
    println!(
        "chaos seed {}: {} faults, {} TCP connections, {} UDP flows",
        cfg.seed, cfg.faults, cfg.tcp_connections, flows
    );
    let mut records = Vec::new();
    let mut max_gap: f64 = 0.0;
    let mut rng = Rng(cfg.seed ^ 0x5eed);
    for (k, f) in faults.iter().enumerate() {
        sleep_ms(rng.range(500, 2000));
        max_gap = max_gap.max(max_heartbeat_gap(&c));
        let started = Instant::now();
        let before = a;
        apply(&mut c, &configs, a, *f)?;
        a = settle(&c)
            .map_err(|e| LabError::Other(format!("after fault {} ({}): {e}", k + 1, f.name())))?;
        let ms = started.elapsed().as_millis() as u64;
        println!(
            "[{:>6.1}s] fault {:>3}: {:<55} active fw{} -> fw{}, settled in {ms} ms",
            t0.elapsed().as_secs_f64(),
            k + 1,
            f.name(),
            before + 1,
            a + 1
        );
        records.push(json!({"fault": f.name(), "active_before": before + 1,
            "active_after": a + 1, "settled_ms": ms}));
    }
    max_gap = max_gap.max(max_heartbeat_gap(&c));
    let passive = 1 - a;
    let verified = verify_clean(&c.nodes[passive], 4)?;
    let actives = c.nodes.iter().filter(|n| role(n).0 == "active").count();
    chatter.signal("TERM");
    let end = Instant::now() + Duration::from_secs(10);
    while chatter.is_running() && Instant::now() < end {
        sleep_ms(100);
    }
    let result = tools::json_lines(&chatter.stdout())
        .into_iter()
        .find(|v| v["result"] == "tcp_chatter")
        .ok_or_else(|| LabError::Other("the TCP chatter gave no result".into()))?;
    drop(server);
    let sync_of = |n: &crate::Node| n.ctl(&["sync"]).unwrap_or(Value::Null);
    let (s1, s2) = (sync_of(&c.nodes[0]), sync_of(&c.nodes[1]));
    let sum =
        |k: &str| s1["details"][k].as_u64().unwrap_or(0) + s2["details"][k].as_u64().unwrap_or(0);
    let lost = result["lost"].as_u64().unwrap_or(u64::MAX);
    let passed = lost == 0 && actives == 1 && verified["differing_buckets"] == 0;
    Ok(json!({
        "seed": cfg.seed,
        "faults": records.len(),
        "fault_log": records,
        "tcp_connections": result["connections"],
        "tcp_lost": lost,
        "tcp_failures": result["failures"],
        "tcp_exchanges": result["exchanges"],
        "tcp_max_wait_ms": result["max_wait_ms"],
        "udp_flows": flows,
        "final_actives": actives,
        "final_verify": verified,
        "verify_differences_found": sum("verify_differences"),
        "verify_repairs": sum("verify_repairs"),
        "deltas_lost": sum("deltas_lost"),
        "largest_heartbeat_gap_ms": max_gap,
        "seconds": t0.elapsed().as_secs(),
        "passed": passed,
    }))
}
