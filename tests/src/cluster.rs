//! Two real `tandemd` members in a two-node lab, and what tests ask of
//! them (roles, counters, sync state, hainfo), shared by the state-sync
//! tests, the election tests, the demo and the benchmarks.

use std::sync::MutexGuard;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::lab::{heavy_lock, Lab};
use crate::node::{self, HaSection, Node, NodeConfig};
use crate::{LabError, Result};

/// A two-node lab with both members up. Drop order: nodes, lab, lock.
pub struct Cluster {
    /// fw1 then fw2 (tests may take one out to kill it).
    pub nodes: Vec<Node>,
    /// The lab.
    pub lab: Lab,
    _lock: MutexGuard<'static, ()>,
}

/// Starts both members of a new two-node lab tagged `tag`: the firewall on
/// with the policy text `policy` (plain routers when `None`), `env` extra
/// environment per member `(i, key, value)` (i = 1 or 2), and `tweak`
/// editing each member's HA section (the lab default has the election on).
pub fn start(
    tag: &str,
    policy: Option<&str>,
    env: &[(usize, &str, &str)],
    tweak: impl Fn(usize, &mut HaSection),
) -> Result<Cluster> {
    let lock = heavy_lock();
    let lab = Lab::two_nodes(tag)?;
    start_on(lab, lock, policy, env, |i, cfg| {
        if let Some(ha) = cfg.ha.as_mut() {
            tweak(i, ha);
        }
    })
}

/// As [`start`] on a lab built (and maybe rewired) by the caller, who holds
/// the heavy lock; `tweak` edits each member's whole configuration.
pub fn start_on(
    lab: Lab,
    lock: MutexGuard<'static, ()>,
    policy: Option<&str>,
    env: &[(usize, &str, &str)],
    tweak: impl Fn(usize, &mut NodeConfig),
) -> Result<Cluster> {
    node::find_bin("tandemd")?;
    node::find_bin("tandemctl")?;
    let policy = match policy {
        Some(text) => Some(crate::firewall::write_policy(&lab, "policy.ron", text)?),
        None => None,
    };
    let mut nodes = Vec::new();
    for i in 1..=2 {
        let mut cfg = lab.node_config(i);
        if let Some(p) = &policy {
            cfg = cfg.with_policy(p);
        }
        cfg.ha = Some(HaSection::lab(i));
        cfg.env = env
            .iter()
            .filter(|e| e.0 == i)
            .map(|e| (e.1.to_owned(), e.2.to_owned()))
            .collect();
        tweak(i, &mut cfg);
        let mut n = lab.start_node_with(i, &cfg)?;
        n.wait_ready(Duration::from_secs(30))?;
        nodes.push(n);
    }
    Ok(Cluster {
        nodes,
        lab,
        _lock: lock,
    })
}

impl Cluster {
    /// Member `i` (1 or 2) is killed and started again: see [`restart`].
    pub fn restart(&mut self, i: usize, ha: HaSection) -> Result<()> {
        restart(&self.lab, &mut self.nodes, i, ha)
    }

    /// Waits (bounded) until exactly one member is active and returns its
    /// index in `nodes`.
    pub fn wait_single_active(&self, timeout: Duration) -> Result<usize> {
        let end = Instant::now() + timeout;
        loop {
            let roles: Vec<String> = self.nodes.iter().map(|n| role(n).0).collect();
            if roles.iter().filter(|r| *r == "active").count() == 1 {
                return Ok(roles.iter().position(|r| r == "active").unwrap_or(0));
            }
            if Instant::now() >= end {
                return Err(LabError::Timeout {
                    what: format!("a single active member (roles {roles:?})"),
                    timeout,
                });
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (bounded) for one active member and a synchronized passive:
    /// (the active's index, the passive's).
    pub fn settled(&self) -> Result<(usize, usize)> {
        let a = self.wait_single_active(Duration::from_secs(8))?;
        let p = 1 - a;
        wait_synchronized(
            &self.nodes[p],
            "the passive synchronized",
            Duration::from_secs(15),
        )?;
        Ok((a, p))
    }
}

/// Member `i` (1 or 2) of `lab` is killed (if still running) and started
/// again with the lab's policy (if the cluster has one) and `ha`; it
/// replaces `nodes[i - 1]`.
pub fn restart(lab: &Lab, nodes: &mut Vec<Node>, i: usize, ha: HaSection) -> Result<()> {
    restart_with(lab, nodes, i, ha, &[], false)
}

/// As [`restart`], running `program` (another build: see
/// [`NodeConfig::program`]; empty: this build), after a clean stop
/// (SIGTERM, as for an upgrade) when `graceful`.
pub fn restart_with(
    lab: &Lab,
    nodes: &mut Vec<Node>,
    i: usize,
    ha: HaSection,
    program: &[String],
    graceful: bool,
) -> Result<()> {
    let mut old = nodes.remove(i - 1);
    if graceful {
        old.stop();
    } else {
        old.proc.signal("KILL");
    }
    drop(old);
    let mut cfg = lab.node_config(i);
    let policy = lab.dir().join("policy.ron");
    if policy.is_file() {
        cfg = cfg.with_policy(&policy);
    }
    cfg.ha = Some(ha);
    cfg.program = program.to_vec();
    let mut n = lab.start_node_with(i, &cfg)?;
    n.wait_ready(Duration::from_secs(30))?;
    nodes.insert(i - 1, n);
    Ok(())
}

/// A member's (role, forced status).
pub fn role(n: &Node) -> (String, Option<String>) {
    match n.status() {
        Ok(s) => (
            s["role"].as_str().unwrap_or_default().to_owned(),
            s["forced"].as_str().map(str::to_owned),
        ),
        Err(_) => (String::from("unreachable"), None),
    }
}

/// The sum over the workers of counter `key` in a `stats` answer.
pub fn worker_sum(stats: &Value, key: &str) -> u64 {
    stats["workers"].as_array().map_or(0, |ws| {
        ws.iter().map(|w| w[key].as_u64().unwrap_or(0)).sum()
    })
}

/// Waits (bounded) until `f` holds for `n`'s answer to `tandemctl args`.
pub fn wait_ctl(
    n: &Node,
    args: &[&str],
    what: &str,
    timeout: Duration,
    f: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let end = Instant::now() + timeout;
    loop {
        let v = n.ctl(args)?;
        if f(&v) {
            return Ok(v);
        }
        if Instant::now() >= end {
            return Err(LabError::Timeout {
                what: format!("{what}: last answer {v}"),
                timeout,
            });
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Waits (bounded) until `n` has `role` ("active" or "passive").
pub fn wait_role(n: &Node, role: &str, what: &str, timeout: Duration) -> Result<Value> {
    wait_ctl(n, &["status"], what, timeout, |s| s["role"] == role)
}

/// Waits (bounded) until `n`'s connection table is complete (a bulk sync
/// arrived since the peer came up).
pub fn wait_synchronized(n: &Node, what: &str, timeout: Duration) -> Result<Value> {
    wait_ctl(n, &["sync"], what, timeout, |s| s["synchronized"] == true)
}

/// Member `i` (1 or 2) of `lab` is killed (SIGKILL) if still running and
/// started again with `cfg`; it replaces `nodes[i - 1]`.
pub fn restart_config(lab: &Lab, nodes: &mut Vec<Node>, i: usize, cfg: &NodeConfig) -> Result<()> {
    let mut old = nodes.remove(i - 1);
    old.proc.signal("KILL");
    drop(old);
    let mut n = lab.start_node_with(i, cfg)?;
    n.wait_ready(Duration::from_secs(30))?;
    nodes.insert(i - 1, n);
    Ok(())
}

/// The digest of `n`'s replicated connections (`tandemctl sync digest`):
/// (connections, per bucket (connections, XOR of fingerprints)).
pub fn digest(n: &Node) -> Result<(u64, Vec<(u64, String)>)> {
    let v = n.ctl(&["sync", "digest"])?;
    let buckets = v["buckets"]
        .as_array()
        .map(|b| {
            b.iter()
                .map(|x| {
                    (
                        x[0].as_u64().unwrap_or(0),
                        x[1].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Ok((v["connections"].as_u64().unwrap_or(0), buckets))
}

/// Waits (bounded) until `a` and `b` hold the same replicated connections
/// (equal digests) and at least `min` of them; returns how many. On
/// timeout the error names the differing buckets.
pub fn wait_same_table(a: &Node, b: &Node, min: u64, timeout: Duration) -> Result<u64> {
    let end = Instant::now() + timeout;
    loop {
        let (da, db) = (digest(a)?, digest(b)?);
        if da == db && da.0 >= min {
            return Ok(da.0);
        }
        if Instant::now() >= end {
            let differing: Vec<usize> = (0..da.1.len().max(db.1.len()))
                .filter(|&i| da.1.get(i) != db.1.get(i))
                .collect();
            return Err(LabError::Timeout {
                what: format!(
                    "the same table on {} ({} connections) and {} ({}), at least {min}: {} buckets differ {:?}",
                    a.name,
                    da.0,
                    b.name,
                    db.0,
                    differing.len(),
                    &differing[..differing.len().min(16)]
                ),
                timeout,
            });
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// `tandemctl sync verify` on `n`: both members' tables compared over the
/// state sync; the answer (`differing_buckets` 0: the same connections).
pub fn verify(n: &Node) -> Result<Value> {
    n.ctl(&["sync", "verify"])
}

/// Runs `sync verify` on `n` until it finds no difference (a difference
/// seen twice is repaired by the sync itself), at most `tries` times;
/// returns the last answer.
pub fn verify_clean(n: &Node, tries: usize) -> Result<Value> {
    let mut last = Value::Null;
    for _ in 0..tries.max(1) {
        last = verify(n)?;
        if last["differing_buckets"] == 0 {
            return Ok(last);
        }
        thread::sleep(Duration::from_millis(500));
    }
    Err(LabError::Timeout {
        what: format!("a clean verify on {}: last {last}", n.name),
        timeout: Duration::from_millis(500 * tries as u64),
    })
}

/// Opens `count` UDP flows from the lab's client to the server's port
/// `dport` (and the ports after it, 64,000 flows each) at `rate` flows per
/// second; returns how many were sent.
pub fn open_udp_flows(lab: &Lab, count: u64, dport: u16, rate: u64) -> Result<u64> {
    use crate::lab::addr;
    let limit = Duration::from_secs(count / rate.max(1) + 30);
    let args: Vec<String> = [
        "--src",
        addr::CLIENT,
        "--dst",
        addr::SERVER,
        "--dport",
        &dport.to_string(),
        "--count",
        &count.to_string(),
        "--rate",
        &rate.to_string(),
        "--timeout",
        &limit.as_secs().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let v = crate::tools::run_tool(
        lab.client(),
        "udp_flows.py",
        &args,
        limit + Duration::from_secs(5),
    )?;
    Ok(v["sent"].as_u64().unwrap_or(0))
}

/// The longest stretch of a stream without data, from iperf3 intervals of
/// `interval_s` seconds: consecutive intervals that moved less than 1 % of
/// the median, times the interval.
pub fn largest_gap(intervals_bps: &[f64], interval_s: f64) -> Duration {
    let mut sorted: Vec<f64> = intervals_bps.to_vec();
    sorted.sort_by(f64::total_cmp);
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
    let (mut run, mut best) = (0u32, 0u32);
    for &b in intervals_bps {
        if b < median * 0.01 {
            run += 1;
            best = best.max(run);
        } else {
            run = 0;
        }
    }
    Duration::from_secs_f64(f64::from(best) * interval_s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_gap_counts_the_longest_run_of_empty_intervals() {
        let i = [9e8, 9e8, 0.0, 0.0, 9e8, 0.0, 0.0, 0.0, 9e8, 9e8];
        assert_eq!(largest_gap(&i, 0.1), Duration::from_millis(300));
        assert_eq!(largest_gap(&[9e8; 5], 0.1), Duration::ZERO);
        assert_eq!(largest_gap(&[], 0.1), Duration::ZERO);
    }
}
