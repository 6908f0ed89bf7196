//! The firewall side of a node as the end-to-end tests see it: policy
//! files, `tandemctl conn list/flush`, `tandemctl policy reload` and the
//! firewall counters of `tandemctl stats`. Every assumption about the JSON
//! shapes lives here, so a changed shape is fixed in one place:
//!
//! - `conn list` -> `{"result":"connections","connections":[{"proto":"tcp",
//!   "src":"198.18.1.10","sport":40000,"dst":"198.18.2.10","dport":80,
//!   "state":"established","nat":{"kind":"source"|"destination","addr":..,
//!   "port":..} (absent or null without NAT),"rule":0,...}],"total":N}`,
//!   filters `--proto P --addr A --src A --dst A --port N`; `dst`/`dport`
//!   are the responder as the initiator addressed it (before DNAT);
//! - `conn flush` -> `{"result":"flushed","count":N}`;
//! - `policy reload` -> `{"result":"policy","rules":N,"path":".."}`, or
//!   exit 1 with `{"result":"error","message":".."}` (stdout or stderr);
//! - `stats` -> `drops_total.<reason>` and a top-level `firewall` object.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::cmd;
use crate::error::{LabError, Result};
use crate::lab::Lab;
use crate::node::{find_bin, Node};

/// Drop reasons of `stats.drops_total` the tests look at.
pub mod reason {
    /// A packet matched a Block rule (or the Block default).
    pub const POLICY_BLOCK: &str = "policy_block";
    /// A packet matched a Reject rule.
    pub const POLICY_REJECT: &str = "policy_reject";
    /// A TCP segment outside the tracked window.
    pub const TCP_OUT_OF_WINDOW: &str = "tcp_out_of_window";
    /// A non-SYN TCP segment with no connection.
    pub const NO_CONNECTION: &str = "no_connection";
}

/// A policy for a TCP transfer (iperf3 on 5201) and UDP flows (9000) from
/// the client's network, everything else blocked.
pub const TRANSFER_AND_FLOWS: &str = r#"(
    rules: [
        (action: Pass, from: ["198.18.1.0/24"], proto: Tcp, dst_ports: ["5201"]),
        (action: Pass, from: ["198.18.1.0/24"], proto: Udp, dst_ports: ["9000"]),
    ],
    default_action: Block,
)"#;

/// Writes `text` as the policy file `<lab dir>/<name>` and returns its
/// absolute path.
pub fn write_policy(lab: &Lab, name: &str, text: &str) -> Result<PathBuf> {
    let p = lab.dir().join(name);
    std::fs::write(&p, text).map_err(|e| LabError::io(format!("writing {}", p.display()), e))?;
    Ok(p)
}

/// Starts tandemd in `fw<i>` with the lab's default config plus
/// `firewall: (policy: Some(policy), connections: 65536)`, and waits
/// (bounded) until its control socket answers.
pub fn start_with_policy(lab: &Lab, i: usize, policy: &Path) -> Result<Node> {
    let cfg = lab.node_config(i).with_policy(policy);
    let mut node = lab.start_node_with(i, &cfg)?;
    node.wait_ready(Duration::from_secs(30))?;
    Ok(node)
}

/// One entry of `conn list`.
#[derive(Debug, Clone)]
pub struct Conn {
    /// "tcp", "udp", "icmp", ...
    pub proto: String,
    /// Source address (the initiator's).
    pub src: String,
    /// Source port (`None` without ports).
    pub sport: Option<u16>,
    /// Destination address.
    pub dst: String,
    /// Destination port.
    pub dport: Option<u16>,
    /// State name ("established", ...).
    pub state: String,
    /// The NAT binding (`None` when `null` or absent).
    pub nat: Option<Value>,
    /// Index of the rule that let it in.
    pub rule: Option<u64>,
    /// The entry as tandemctl printed it.
    pub raw: Value,
}

impl Conn {
    /// True if this is `proto src:sport -> dst:dport` (a `None` port
    /// matches anything).
    pub fn is(
        &self,
        proto: &str,
        src: &str,
        sport: Option<u16>,
        dst: &str,
        dport: Option<u16>,
    ) -> bool {
        self.proto.eq_ignore_ascii_case(proto)
            && self.src == src
            && self.dst == dst
            && (sport.is_none() || self.sport == sport)
            && (dport.is_none() || self.dport == dport)
    }

    /// `nat.kind` ("source" or "destination"), if translated.
    pub fn nat_kind(&self) -> Option<&str> {
        self.nat.as_ref()?.get("kind")?.as_str()
    }

    /// `nat.addr`: the new source (SNAT) or new destination (DNAT).
    pub fn nat_addr(&self) -> Option<&str> {
        self.nat.as_ref()?.get("addr")?.as_str()
    }

    /// `nat.port`: the port after translation.
    pub fn nat_port(&self) -> Option<u16> {
        self.nat
            .as_ref()?
            .get("port")?
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
    }
}

/// The answer of `conn list`.
#[derive(Debug, Clone)]
pub struct ConnList {
    /// The listed connections.
    pub conns: Vec<Conn>,
    /// `total` as tandemctl reports it.
    pub total: u64,
    /// The whole answer.
    pub raw: Value,
}

impl ConnList {
    /// The connections matching `proto src:sport -> dst:dport`.
    pub fn find(
        &self,
        proto: &str,
        src: &str,
        sport: Option<u16>,
        dst: &str,
        dport: Option<u16>,
    ) -> Vec<&Conn> {
        self.conns
            .iter()
            .filter(|c| c.is(proto, src, sport, dst, dport))
            .collect()
    }
}

/// Parses a `conn list` answer.
pub fn parse_conn_list(v: &Value) -> Result<ConnList> {
    let bad = |d: &str| LabError::Parse {
        what: "tandemctl conn list".into(),
        detail: format!("{d}: {v}"),
    };
    let arr = v["connections"]
        .as_array()
        .ok_or_else(|| bad("no connections array"))?;
    let port = |x: &Value| x.as_u64().and_then(|p| u16::try_from(p).ok());
    let conns = arr
        .iter()
        .map(|c| Conn {
            proto: c["proto"].as_str().unwrap_or("").to_ascii_lowercase(),
            src: c["src"].as_str().unwrap_or("").to_string(),
            sport: port(&c["sport"]),
            dst: c["dst"].as_str().unwrap_or("").to_string(),
            dport: port(&c["dport"]),
            state: c["state"].as_str().unwrap_or("").to_string(),
            nat: c.get("nat").filter(|n| !n.is_null()).cloned(),
            rule: c["rule"].as_u64(),
            raw: c.clone(),
        })
        .collect::<Vec<_>>();
    let total = v["total"].as_u64().unwrap_or(conns.len() as u64);
    Ok(ConnList {
        conns,
        total,
        raw: v.clone(),
    })
}

/// Filters of `conn list`.
#[derive(Debug, Clone, Default)]
pub struct ConnFilter {
    /// `--proto`.
    pub proto: Option<String>,
    /// `--addr` (either end).
    pub addr: Option<String>,
    /// `--src`.
    pub src: Option<String>,
    /// `--dst`.
    pub dst: Option<String>,
    /// `--port`.
    pub port: Option<u16>,
}

impl ConnFilter {
    fn args(&self) -> Vec<String> {
        let mut a = Vec::new();
        for (flag, val) in [
            ("--proto", self.proto.clone()),
            ("--addr", self.addr.clone()),
            ("--src", self.src.clone()),
            ("--dst", self.dst.clone()),
            ("--port", self.port.map(|p| p.to_string())),
        ] {
            if let Some(v) = val {
                a.push(flag.to_string());
                a.push(v);
            }
        }
        a
    }
}

/// Outcome of `policy reload`.
#[derive(Debug, Clone)]
pub enum PolicyReload {
    /// The new policy is in force.
    Loaded {
        /// Number of rules.
        rules: u64,
        /// The file loaded.
        path: String,
    },
    /// tandemctl failed (exit code non-zero) with this message.
    Failed {
        /// tandemctl's exit code.
        code: Option<i32>,
        /// The error message (the `message` field, or the raw output).
        message: String,
    },
}

/// `(exit code, stdout, stderr)` of `tandemctl --socket S --json ARGS`,
/// whatever the exit code (10 s limit).
pub fn ctl_raw(socket: &Path, args: &[&str]) -> Result<(Option<i32>, String, String)> {
    let ctl = find_bin("tandemctl")?;
    let mut c = Command::new(&ctl);
    c.arg("--socket").arg(socket).arg("--json").args(args);
    let o = cmd::run_timeout(c, Duration::from_secs(10))?;
    Ok((
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    ))
}

/// Parses a `policy reload` run: exit code, stdout, stderr.
pub fn parse_policy_reload(code: Option<i32>, stdout: &str, stderr: &str) -> Result<PolicyReload> {
    let json = |s: &str| serde_json::from_str::<Value>(s.trim()).ok();
    let v = json(stdout).or_else(|| json(stderr));
    match (code, v) {
        (Some(0), Some(v)) if v["result"] == "policy" => Ok(PolicyReload::Loaded {
            rules: v["rules"].as_u64().unwrap_or(0),
            path: v["path"].as_str().unwrap_or("").to_string(),
        }),
        (Some(0), v) => Err(LabError::Parse {
            what: "tandemctl policy reload".into(),
            detail: format!("exit 0 but {v:?}; stdout {stdout:?} stderr {stderr:?}"),
        }),
        (code, Some(v)) if v["result"] == "error" => Ok(PolicyReload::Failed {
            code,
            message: v["message"].as_str().unwrap_or("").to_string(),
        }),
        (code, _) => Ok(PolicyReload::Failed {
            code,
            message: format!("{} {}", stdout.trim(), stderr.trim()),
        }),
    }
}

impl Node {
    /// `tandemctl conn list [filters]`.
    pub fn conn_list(&self, filter: &ConnFilter) -> Result<ConnList> {
        let mut args = vec!["conn".to_string(), "list".to_string()];
        args.extend(filter.args());
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        parse_conn_list(&self.ctl(&argv)?)
    }

    /// `tandemctl conn list` without filters.
    pub fn conns(&self) -> Result<ConnList> {
        self.conn_list(&ConnFilter::default())
    }

    /// `tandemctl conn flush`: the number of connections removed.
    pub fn conn_flush(&self) -> Result<u64> {
        let v = self.ctl(&["conn", "flush"])?;
        v["count"].as_u64().ok_or_else(|| LabError::Parse {
            what: "tandemctl conn flush".into(),
            detail: v.to_string(),
        })
    }

    /// `tandemctl policy reload` (failure is a [`PolicyReload::Failed`],
    /// not an error).
    pub fn policy_reload(&self) -> Result<PolicyReload> {
        let (code, out, err) = ctl_raw(&self.socket, &["policy", "reload"])?;
        parse_policy_reload(code, &out, &err)
    }

    /// `drops_total.<reason>` of a fresh `tandemctl stats`.
    pub fn drops(&self, reason: &str) -> Result<u64> {
        Ok(drop_count(&self.stats()?, reason))
    }
}

/// `drops_total.<reason>` of a `tandemctl stats` answer (0 if absent).
pub fn drop_count(stats: &Value, reason: &str) -> u64 {
    stats["drops_total"][reason].as_u64().unwrap_or(0)
}

/// `firewall.<key>` of a `tandemctl stats` answer (e.g. "connections",
/// "created"); `None` if absent.
pub fn firewall_counter(stats: &Value, key: &str) -> Option<u64> {
    stats["firewall"][key].as_u64()
}
