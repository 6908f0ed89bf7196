//! Wrappers of the lab's python host tools in `tests/scripts/` (stdlib
//! only): UDP echo and probe, TCP echo and probe, a peer-address HTTP
//! server, a marker sniffer and a TCP segment injector; plus iperf3
//! interval helpers. Every tool is bounded by its own `--timeout` and by
//! the lab's time limits, and every address is checked to lie in
//! 198.18.0.0/15 here and again in the script.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::cmd;
use crate::error::{LabError, Result};
use crate::link::check_lab_addr;
use crate::netns::{Netns, Proc};

/// The directory of the python tools: `$TANDEM_LAB_SCRIPTS` if set, else
/// `tests/scripts` of this crate's source tree.
pub fn scripts_dir() -> PathBuf {
    std::env::var_os("TANDEM_LAB_SCRIPTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts"))
}

fn python() -> &'static str {
    if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// The argv running `script` (a file of [`scripts_dir`]) with `args`
/// (`python3 -B`, so nothing is written next to the scripts).
pub fn tool_argv(script: &str, args: &[String]) -> Result<Vec<String>> {
    let path = scripts_dir().join(script);
    if !path.is_file() {
        return Err(LabError::Other(format!(
            "lab tool {} not found",
            path.display()
        )));
    }
    let mut v = vec![
        python().to_string(),
        "-B".to_string(),
        path.to_string_lossy().into_owned(),
    ];
    v.extend(args.iter().cloned());
    Ok(v)
}

/// Parses every line of `text` that is a JSON object.
pub fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .filter(Value::is_object)
        .collect()
}

/// Runs a tool to completion in `ns` (killed after `limit`) and returns
/// its last JSON line (its result).
pub fn run_tool(ns: &Netns, script: &str, args: &[String], limit: Duration) -> Result<Value> {
    let argv = tool_argv(script, args)?;
    let out = ns.exec_timeout(&argv, limit)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    json_lines(&stdout)
        .pop()
        .filter(|v| v.get("result").is_some())
        .ok_or_else(|| LabError::Command {
            cmd: format!("{} in {}", argv.join(" "), ns.name()),
            code: out.status.code(),
            stderr: format!(
                "no JSON result; stdout: {} stderr: {}",
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
}

/// Starts a long-running tool in `ns` and waits (bounded) until it prints
/// `{"event":"ready"}`.
pub fn spawn_tool(ns: &Netns, label: &str, script: &str, args: &[String]) -> Result<Proc> {
    let argv = tool_argv(script, args)?;
    let mut proc = ns.spawn(label, &argv)?;
    wait_event(&mut proc, "ready", Duration::from_secs(10))?;
    Ok(proc)
}

/// Waits (bounded) until `proc` printed a JSON line with `"event": event`;
/// returns that line. Fails at once if the process exits first.
pub fn wait_event(proc: &mut Proc, event: &str, timeout: Duration) -> Result<Value> {
    let found = cmd::poll_until(timeout, Duration::from_millis(20), || {
        let hit = json_lines(&proc.stdout())
            .into_iter()
            .find(|v| v["event"] == event);
        if hit.is_none() && !proc.is_running() {
            // One last look: it may have printed and exited meanwhile.
            return Some(
                json_lines(&proc.stdout())
                    .into_iter()
                    .find(|v| v["event"] == event)
                    .ok_or(()),
            );
        }
        hit.map(Ok)
    });
    match found {
        Some(Ok(v)) => Ok(v),
        Some(Err(())) => Err(LabError::ProcessExited {
            label: proc.label().to_string(),
            status: format!("{:?}", proc.try_wait()),
            logs: proc.logs_tail(20),
        }),
        None => Err(LabError::Timeout {
            what: format!(
                "event {event:?} from {}\n{}",
                proc.label(),
                proc.logs_tail(20)
            ),
            timeout,
        }),
    }
}

/// What a probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// UDP: an answer came back.
    Reply,
    /// TCP: the handshake completed.
    Connected,
    /// TCP reset to the SYN, or ICMP port unreachable for UDP.
    Refused,
    /// Nothing at all came back in time.
    Timeout,
    /// Another ICMP error (errno name, e.g. "EHOSTUNREACH").
    Unreachable(String),
}

fn outcome_of(v: &Value) -> Result<Outcome> {
    Ok(match v["outcome"].as_str().unwrap_or("") {
        "reply" => Outcome::Reply,
        "connected" => Outcome::Connected,
        "refused" => Outcome::Refused,
        "timeout" => Outcome::Timeout,
        "unreachable" => Outcome::Unreachable(v["errno"].as_str().unwrap_or("?").to_string()),
        other => {
            return Err(LabError::Parse {
                what: "probe outcome".into(),
                detail: format!("{other:?} in {v}"),
            })
        }
    })
}

/// Result of [`udp_probe`].
#[derive(Debug, Clone)]
pub struct UdpProbe {
    /// What came back.
    pub outcome: Outcome,
    /// The local address and port used (the flow's source).
    pub src: String,
    /// The local port used.
    pub sport: u16,
    /// The answer's text, if any.
    pub text: Option<String>,
    /// Time from start to the outcome, s.
    pub seconds: f64,
    /// The tool's JSON.
    pub raw: Value,
}

/// A steady stream of `rate` UDP datagrams a second for `secs` from `ns`
/// to an echo server at `dst:port` (`udp_stream.py`): sent, received,
/// lost (either way), the runs of lost sequence numbers and the longest
/// time without an echo (`max_gap_ms`).
pub fn udp_stream(ns: &Netns, dst: &str, port: u16, rate: u32, secs: f64) -> Result<Value> {
    check_lab_addr(dst)?;
    let args = vec![
        "--dst".into(),
        dst.into(),
        "--port".into(),
        port.to_string(),
        "--rate".into(),
        rate.to_string(),
        "--duration".into(),
        format!("{secs:.3}"),
    ];
    run_tool(
        ns,
        "udp_stream.py",
        &args,
        Duration::from_secs_f64(secs + 10.0),
    )
}

/// Sends `payload` by UDP from `ns` to `dst:port` up to `count` times,
/// waiting `wait` for an answer each time (`udp_probe.py`).
pub fn udp_probe(
    ns: &Netns,
    dst: &str,
    port: u16,
    payload: &str,
    count: u32,
    wait: Duration,
) -> Result<UdpProbe> {
    check_lab_addr(dst)?;
    let total = wait.as_secs_f64() * f64::from(count.max(1)) + 2.0;
    let args = vec![
        "--dst".into(),
        dst.into(),
        "--port".into(),
        port.to_string(),
        "--payload".into(),
        payload.into(),
        "--count".into(),
        count.max(1).to_string(),
        "--wait".into(),
        format!("{:.3}", wait.as_secs_f64()),
        "--timeout".into(),
        format!("{total:.3}"),
    ];
    let v = run_tool(
        ns,
        "udp_probe.py",
        &args,
        Duration::from_secs_f64(total + 10.0),
    )?;
    Ok(UdpProbe {
        outcome: outcome_of(&v)?,
        src: v["src"].as_str().unwrap_or("").to_string(),
        sport: v["sport"].as_u64().unwrap_or(0) as u16,
        text: v["text"].as_str().map(str::to_string),
        seconds: v["seconds"].as_f64().unwrap_or(0.0),
        raw: v,
    })
}

/// Result of [`tcp_probe`].
#[derive(Debug, Clone)]
pub struct TcpProbe {
    /// What the connect saw.
    pub outcome: Outcome,
    /// Time from start to the outcome of the connect, s.
    pub seconds: f64,
    /// The local port, if connected.
    pub sport: Option<u16>,
    /// The first answer bytes to `send`, if any.
    pub reply: Option<String>,
    /// The tool's JSON.
    pub raw: Value,
}

fn tcp_probe_args(dst: &str, port: u16, connect_timeout: Duration) -> Vec<String> {
    vec![
        "--dst".into(),
        dst.into(),
        "--port".into(),
        port.to_string(),
        "--connect-timeout".into(),
        format!("{:.3}", connect_timeout.as_secs_f64()),
    ]
}

/// Connects by TCP from `ns` to `dst:port` (`tcp_probe.py`), within
/// `connect_timeout`; if connected and `send` is given, sends it and
/// returns the first answer bytes.
pub fn tcp_probe(
    ns: &Netns,
    dst: &str,
    port: u16,
    connect_timeout: Duration,
    send: Option<&str>,
) -> Result<TcpProbe> {
    check_lab_addr(dst)?;
    let mut args = tcp_probe_args(dst, port, connect_timeout);
    if let Some(s) = send {
        args.extend(["--send".to_string(), s.to_string()]);
    }
    let total = connect_timeout.as_secs_f64() + 8.0;
    args.extend(["--timeout".to_string(), format!("{total:.3}")]);
    let v = run_tool(
        ns,
        "tcp_probe.py",
        &args,
        Duration::from_secs_f64(total + 10.0),
    )?;
    Ok(TcpProbe {
        outcome: outcome_of(&v)?,
        seconds: v["seconds"].as_f64().unwrap_or(0.0),
        sport: v["sport"].as_u64().map(|p| p as u16),
        reply: v["reply"].as_str().map(str::to_string),
        raw: v,
    })
}

/// A TCP connection held open by `tcp_probe.py --hold` (closed when the
/// hold ends or the process is dropped).
pub struct HeldConnection {
    /// The probe process.
    pub proc: Proc,
    /// Its local address.
    pub src: String,
    /// Its local port.
    pub sport: u16,
}

/// Opens a TCP connection from `ns` to `dst:port` and keeps it open for
/// `hold` (waits, bounded, until it is connected).
pub fn hold_tcp(ns: &Netns, dst: &str, port: u16, hold: Duration) -> Result<HeldConnection> {
    check_lab_addr(dst)?;
    let mut args = tcp_probe_args(dst, port, Duration::from_secs(3));
    args.extend([
        "--hold".to_string(),
        format!("{:.3}", hold.as_secs_f64()),
        "--timeout".to_string(),
        format!("{:.3}", hold.as_secs_f64() + 5.0),
    ]);
    let argv = tool_argv("tcp_probe.py", &args)?;
    let mut proc = ns.spawn("tcp-hold", &argv)?;
    let ev = wait_event(&mut proc, "connected", Duration::from_secs(8))?;
    Ok(HeldConnection {
        src: ev["src"].as_str().unwrap_or("").to_string(),
        sport: ev["sport"].as_u64().unwrap_or(0) as u16,
        proc,
    })
}

/// A server tool (`udp_echo.py`, `tcp_echo.py`, `peer_addr_server.py`)
/// whose JSON log lines tell what it received.
pub struct ToolServer {
    /// The server process.
    pub proc: Proc,
    /// Address it listens on.
    pub ip: String,
    /// Port it listens on.
    pub port: u16,
}

impl ToolServer {
    fn start(ns: &Netns, script: &str, ip: &str, port: u16) -> Result<ToolServer> {
        check_lab_addr(ip)?;
        let args = vec![
            "--bind".into(),
            ip.into(),
            "--port".into(),
            port.to_string(),
            "--timeout".into(),
            "600".into(),
        ];
        let label = script.trim_end_matches(".py").replace('_', "-");
        let proc = spawn_tool(ns, &label, script, &args)?;
        Ok(ToolServer {
            proc,
            ip: ip.to_string(),
            port,
        })
    }

    /// A GRE echo server on `ip` in `ns` (`gre_echo.py serve`): echoes
    /// keyed GRE packets back to their source.
    pub fn gre_echo(ns: &Netns, ip: &str) -> Result<ToolServer> {
        check_lab_addr(ip)?;
        let args = vec![
            "serve".into(),
            "--bind".into(),
            ip.into(),
            "--timeout".into(),
            "600".into(),
        ];
        let mut proc = spawn_tool(ns, "gre-echo", "gre_echo.py", &args)?;
        wait_event(&mut proc, "ready", Duration::from_secs(10))?;
        Ok(ToolServer {
            proc,
            ip: ip.to_string(),
            port: 0,
        })
    }

    /// A UDP echo server on `ip:port` in `ns`.
    pub fn udp_echo(ns: &Netns, ip: &str, port: u16) -> Result<ToolServer> {
        Self::start(ns, "udp_echo.py", ip, port)
    }

    /// A TCP echo server on `ip:port` in `ns` that logs what it receives.
    pub fn tcp_echo(ns: &Netns, ip: &str, port: u16) -> Result<ToolServer> {
        Self::start(ns, "tcp_echo.py", ip, port)
    }

    /// An HTTP server on `ip:port` in `ns` answering with the peer address
    /// it sees (`{"peer": ..., "peer_port": ...}`).
    pub fn peer_addr(ns: &Netns, ip: &str, port: u16) -> Result<ToolServer> {
        Self::start(ns, "peer_addr_server.py", ip, port)
    }

    /// Every JSON event it logged so far.
    pub fn events(&self) -> Vec<Value> {
        json_lines(&self.proc.stdout())
    }

    /// Its `recv`/`request` events.
    pub fn received(&self) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|v| v["event"] == "recv" || v["event"] == "request")
            .collect()
    }

    /// True if any received chunk's text contains `marker`.
    pub fn saw(&self, marker: &str) -> bool {
        self.received()
            .iter()
            .any(|v| v["text"].as_str().is_some_and(|t| t.contains(marker)))
    }

    /// The peer addresses it saw.
    pub fn peers(&self) -> Vec<String> {
        self.received()
            .iter()
            .filter_map(|v| v["peer"].as_str().map(str::to_string))
            .collect()
    }
}

/// A running `sniff.py`: counts frames carrying a marker on an interface.
pub struct Sniffer {
    proc: Proc,
    duration: Duration,
}

/// What [`Sniffer::finish`] saw.
#[derive(Debug, Clone)]
pub struct SniffResult {
    /// IPv4 frames seen.
    pub frames: u64,
    /// Frames carrying the marker.
    pub matched: u64,
    /// Summaries of (up to 50) matching frames.
    pub matches: Vec<Value>,
}

impl Sniffer {
    /// Starts watching `iface` in `ns` for `duration` for frames whose L4
    /// payload contains `marker` (and `port` as source or destination, if
    /// given); waits until it listens.
    pub fn start(
        ns: &Netns,
        iface: &str,
        marker: &str,
        port: Option<u16>,
        duration: Duration,
    ) -> Result<Sniffer> {
        let mut args = vec![
            "--iface".to_string(),
            iface.to_string(),
            "--marker".to_string(),
            marker.to_string(),
            "--duration".to_string(),
            format!("{:.3}", duration.as_secs_f64()),
        ];
        if let Some(p) = port {
            args.extend(["--port".to_string(), p.to_string()]);
        }
        let proc = spawn_tool(ns, "sniff", "sniff.py", &args)?;
        Ok(Sniffer { proc, duration })
    }

    /// Waits (bounded) for the end of its duration and returns its count.
    pub fn finish(mut self) -> Result<SniffResult> {
        let limit = self.duration + Duration::from_secs(10);
        if self.proc.wait_timeout(limit).is_none() {
            return Err(LabError::Timeout {
                what: format!("sniffer {}", self.proc.label()),
                timeout: limit,
            });
        }
        let v = json_lines(&self.proc.stdout())
            .into_iter()
            .find(|v| v["result"] == "sniff")
            .ok_or_else(|| LabError::Parse {
                what: "sniff.py".into(),
                detail: self.proc.logs_tail(20),
            })?;
        Ok(SniffResult {
            frames: v["frames"].as_u64().unwrap_or(0),
            matched: v["matched"].as_u64().unwrap_or(0),
            matches: v["matches"].as_array().cloned().unwrap_or_default(),
        })
    }
}

/// How [`tcp_inject`] crafts its segment.
#[derive(Debug, Clone)]
pub enum InjectMode {
    /// Open a real connection to an echo server first, then inject into it
    /// with `seq = current send point + offset` (2^30: far out of window;
    /// 0: exactly in window).
    Window {
        /// Added to the connection's current send sequence number.
        offset: u32,
    },
    /// No connection: an ACK|PSH segment from `sport` with arbitrary
    /// sequence numbers.
    Bare {
        /// The source port of the crafted segment.
        sport: u16,
    },
}

/// Result of [`tcp_inject`].
#[derive(Debug, Clone)]
pub struct InjectResult {
    /// Segments injected.
    pub injected: u64,
    /// The real connection worked before injecting (window mode).
    pub hello_ok: bool,
    /// The real connection still worked afterwards (window mode).
    pub after_ok: bool,
    /// The source port of the connection (or the crafted one).
    pub sport: u16,
    /// An error of the tool, if any.
    pub error: Option<String>,
    /// The tool's JSON.
    pub raw: Value,
}

/// Runs `tcp_inject.py` in `ns` (which must have `iface` towards `dst`):
/// injects `count` crafted TCP segments carrying `marker` towards
/// `dst:port` (see [`InjectMode`]).
pub fn tcp_inject(
    ns: &Netns,
    iface: &str,
    dst: &str,
    port: u16,
    mode: &InjectMode,
    marker: &str,
    count: u32,
) -> Result<InjectResult> {
    check_lab_addr(dst)?;
    let mut args = vec![
        "--dst".to_string(),
        dst.to_string(),
        "--port".to_string(),
        port.to_string(),
        "--iface".to_string(),
        iface.to_string(),
        "--marker".to_string(),
        marker.to_string(),
        "--count".to_string(),
        count.to_string(),
        "--timeout".to_string(),
        "15".to_string(),
    ];
    match mode {
        InjectMode::Window { offset } => {
            args.extend(["--mode", "window", "--offset"].map(str::to_string));
            args.push(offset.to_string());
        }
        InjectMode::Bare { sport } => {
            args.extend(["--mode", "bare", "--sport"].map(str::to_string));
            args.push(sport.to_string());
        }
    }
    let v = run_tool(ns, "tcp_inject.py", &args, Duration::from_secs(30))?;
    Ok(InjectResult {
        injected: v["injected"].as_u64().unwrap_or(0),
        hello_ok: v["hello_ok"].as_bool().unwrap_or(false),
        after_ok: v["after_ok"].as_bool().unwrap_or(false),
        sport: v["sport"].as_u64().unwrap_or(0) as u16,
        error: v["error"].as_str().map(str::to_string),
        raw: v,
    })
}

/// `curl -s http://ip:port/path` from `ns` (no proxy, `--max-time`
/// `timeout`): `(curl exit code, body)`.
pub fn curl_body(
    ns: &Netns,
    ip: &str,
    port: u16,
    path: &str,
    timeout: Duration,
) -> Result<(Option<i32>, String)> {
    check_lab_addr(ip)?;
    let url = format!("http://{ip}:{port}/{}", path.trim_start_matches('/'));
    let max_time = format!("{:.1}", timeout.as_secs_f64().max(1.0));
    let o = ns.exec_timeout(
        &[
            "curl",
            "-sS",
            "--noproxy",
            "*",
            "--connect-timeout",
            "5",
            "--max-time",
            &max_time,
            &url,
        ],
        timeout + Duration::from_secs(10),
    )?;
    Ok((
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    ))
}

/// The per-second receive rates (bits/s) of an iperf3 `--json` report
/// (`intervals[*].sum.bits_per_second`).
pub fn iperf_intervals(raw: &Value) -> Vec<f64> {
    raw["intervals"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i["sum"]["bits_per_second"].as_f64())
                .collect()
        })
        .unwrap_or_default()
}

/// The median of `v` (0 if empty).
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Indices of the intervals whose rate is below `fraction` of the median
/// (the last interval is ignored when it is shorter than 0.5 s, as iperf3
/// ends with a partial one).
pub fn slow_intervals(raw: &Value, fraction: f64) -> Vec<usize> {
    let rates = iperf_intervals(raw);
    let lens: Vec<f64> = raw["intervals"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|i| i["sum"]["seconds"].as_f64().unwrap_or(1.0))
                .collect()
        })
        .unwrap_or_default();
    let m = median(&rates);
    rates
        .iter()
        .enumerate()
        .filter(|(i, r)| lens.get(*i).copied().unwrap_or(1.0) >= 0.5 && **r < fraction * m)
        .map(|(i, _)| i)
        .collect()
}

/// Runs `arp_who.py` in `ns`: `count` ARP requests for `target` from
/// `source` on `iface`; returns every MAC that answered with its count.
pub fn arp_census(
    ns: &Netns,
    iface: &str,
    source: &str,
    target: &str,
    count: u32,
) -> Result<BTreeMap<String, u64>> {
    check_lab_addr(target)?;
    check_lab_addr(source)?;
    let args: Vec<String> = [
        "--iface",
        iface,
        "--target",
        target,
        "--source",
        source,
        "--count",
        &count.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let v = run_tool(ns, "arp_who.py", &args, Duration::from_secs(15))?;
    Ok(v["macs"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default())
}

/// Sends `count` GRE packets with key `key` from `ns` to `dst`, each
/// waiting up to 1 s for its echo (`gre_echo.py probe`); returns how many
/// came back.
pub fn gre_probe(ns: &Netns, dst: &str, key: u32, count: u32) -> Result<u64> {
    check_lab_addr(dst)?;
    let limit = f64::from(count.max(1)) + 5.0;
    let args = vec![
        "probe".into(),
        "--dst".into(),
        dst.into(),
        "--key".into(),
        key.to_string(),
        "--count".into(),
        count.max(1).to_string(),
        "--timeout".into(),
        format!("{limit:.0}"),
    ];
    let v = run_tool(
        ns,
        "gre_echo.py",
        &args,
        Duration::from_secs_f64(limit + 10.0),
    )?;
    Ok(v["echoed"].as_u64().unwrap_or(0))
}
