//! Helpers that run Linux tools inside a lab namespace: ping, curl, a
//! python HTTP server, iperf3. Every one is bounded in time, and every
//! destination is checked to lie in 198.18.0.0/15.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cmd;
use crate::error::{LabError, Result};
use crate::link::check_lab_addr;
use crate::netns::{Netns, Proc};

/// Outcome of one `ping` run.
#[derive(Debug, Clone)]
pub struct PingResult {
    /// Echo requests sent.
    pub transmitted: u32,
    /// Echo replies received.
    pub received: u32,
    /// Loss in percent as ping reports it.
    pub loss_pct: f64,
    /// Average round-trip time, if any reply came back.
    pub rtt_avg_ms: Option<f64>,
    /// ping's exit code.
    pub exit_code: Option<i32>,
    /// ping's full stdout.
    pub output: String,
}

/// Pings `dst` from `ns` `count` times (0.2 s apart, 1 s reply timeout)
/// and parses the summary; the run is cut after `timeout`.
pub fn ping(ns: &Netns, dst: &str, count: u32, timeout: Duration) -> Result<PingResult> {
    check_lab_addr(dst)?;
    let deadline = timeout.as_secs().max(1).to_string();
    let count_s = count.max(1).to_string();
    let out = ns.exec_timeout(
        &[
            "ping", "-n", "-c", &count_s, "-i", "0.2", "-W", "1", "-w", &deadline, dst,
        ],
        timeout + Duration::from_secs(5),
    )?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !text.contains("packets transmitted") {
        return Err(LabError::Command {
            cmd: format!("ping {dst} in {}", ns.name()),
            code: out.status.code(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    parse_ping(&text, out.status.code())
}

/// Pings `dst` with `size`-byte payloads that may be fragmented (`-M
/// dont`): above the path MTU every request and reply travels as IPv4
/// fragments.
pub fn ping_fragmented(
    ns: &Netns,
    dst: &str,
    count: u32,
    size: u32,
    timeout: Duration,
) -> Result<PingResult> {
    check_lab_addr(dst)?;
    let deadline = timeout.as_secs().max(1).to_string();
    let count_s = count.max(1).to_string();
    let size_s = size.clamp(1, 65_000).to_string();
    let out = ns.exec_timeout(
        &[
            "ping", "-n", "-M", "dont", "-s", &size_s, "-c", &count_s, "-i", "0.2", "-W", "1",
            "-w", &deadline, dst,
        ],
        timeout + Duration::from_secs(5),
    )?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    parse_ping(&text, out.status.code())
}

/// Parses the summary lines of iputils ping.
pub fn parse_ping(text: &str, exit_code: Option<i32>) -> Result<PingResult> {
    let bad = |d: &str| LabError::Parse {
        what: "ping".into(),
        detail: format!("{d}: {text:?}"),
    };
    let line = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .ok_or_else(|| bad("no summary line"))?;
    let mut transmitted = None;
    let mut received = None;
    let mut loss = None;
    for part in line.split(',') {
        let part = part.trim();
        let num = part.split_whitespace().next().unwrap_or("");
        if part.ends_with("packets transmitted") {
            transmitted = num.parse().ok();
        } else if part.ends_with("received") {
            received = num.parse().ok();
        } else if part.ends_with("packet loss") {
            loss = num.trim_end_matches('%').parse().ok();
        }
    }
    // "rtt min/avg/max/mdev = 0.040/0.052/0.071/0.011 ms"
    let rtt_avg_ms = text
        .lines()
        .find(|l| l.starts_with("rtt") || l.starts_with("round-trip"))
        .and_then(|l| l.split('=').nth(1))
        .and_then(|v| v.trim().split('/').nth(1))
        .and_then(|v| v.parse().ok());
    Ok(PingResult {
        transmitted: transmitted.ok_or_else(|| bad("transmitted"))?,
        received: received.ok_or_else(|| bad("received"))?,
        loss_pct: loss.ok_or_else(|| bad("loss"))?,
        rtt_avg_ms,
        exit_code,
        output: text.to_string(),
    })
}

/// Pings `dst` once a try until a reply comes back, at most for `timeout`;
/// returns how long it took.
pub fn wait_for_ping(ns: &Netns, dst: &str, timeout: Duration) -> Result<Duration> {
    check_lab_addr(dst)?;
    let start = Instant::now();
    let max_tries = timeout.as_secs().max(1) * 2 + 2;
    for _ in 0..max_tries {
        if start.elapsed() >= timeout {
            break;
        }
        let out = ns.exec_timeout(
            &["ping", "-n", "-c", "1", "-W", "1", dst],
            Duration::from_secs(5),
        )?;
        if out.status.success() {
            return Ok(start.elapsed());
        }
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("exec of") || err.contains("not found") {
            return Err(LabError::Command {
                cmd: format!("ping {dst} in {}", ns.name()),
                code: out.status.code(),
                stderr: err.trim().to_string(),
            });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(LabError::Timeout {
        what: format!("first ping reply from {dst} in {}", ns.name()),
        timeout,
    })
}

/// Waits (bounded) until something listens on TCP `port` in `ns`.
pub fn wait_listening(ns: &Netns, port: u16, timeout: Duration) -> Result<()> {
    let filter = format!("sport = :{port}");
    cmd::poll_until(timeout, Duration::from_millis(100), || {
        let out = ns.exec(&["ss", "-Hltn", &filter]).ok()?;
        (out.status.success() && !String::from_utf8_lossy(&out.stdout).trim().is_empty())
            .then_some(())
    })
    .ok_or_else(|| LabError::Timeout {
        what: format!("a listener on TCP port {port} in {}", ns.name()),
        timeout,
    })
}

/// The TCP port of a node's software TPM inside its namespace (its
/// control channel is the next one).
pub const SWTPM_PORT: u16 = 2321;

/// A software TPM 2.0 (swtpm, Debian's package) in `ns` on 127.0.0.1
/// ([`SWTPM_PORT`]), its state in `dir` (fresh for each lab); started and
/// waited for (bounded). Its TCTI: [`swtpm_tcti`].
pub fn swtpm(ns: &Netns, dir: &Path) -> Result<Proc> {
    std::fs::create_dir_all(dir)
        .map_err(|e| LabError::io(format!("creating {}", dir.display()), e))?;
    let server = format!("type=tcp,port={SWTPM_PORT},bindaddr=127.0.0.1");
    let ctrl = format!("type=tcp,port={},bindaddr=127.0.0.1", SWTPM_PORT + 1);
    let state = format!("dir={}", dir.display());
    let mut proc = ns.spawn(
        "swtpm",
        // A hardware TPM takes no host CPU: the emulator runs at a lower
        // priority than the nodes it serves on the lab's shared cores.
        &[
            "nice",
            "-n",
            "10",
            "swtpm",
            "socket",
            "--tpm2",
            "--server",
            &server,
            "--ctrl",
            &ctrl,
            "--tpmstate",
            &state,
            "--flags",
            "not-need-init,startup-clear",
        ],
    )?;
    if let Err(e) = wait_listening(ns, SWTPM_PORT, Duration::from_secs(5)) {
        proc.ensure_running()?;
        return Err(e);
    }
    Ok(proc)
}

/// The TCTI of [`swtpm`] as seen from its namespace.
pub fn swtpm_tcti() -> String {
    format!("swtpm:host=127.0.0.1,port={SWTPM_PORT}")
}

/// Writes `bytes` pseudo-random (xorshift, seeded) bytes to `path`.
pub fn generate_file(path: &Path, bytes: u64, seed: u64) -> Result<()> {
    let f =
        File::create(path).map_err(|e| LabError::io(format!("creating {}", path.display()), e))?;
    let mut w = BufWriter::with_capacity(1 << 20, f);
    let mut x = seed | 1;
    let mut left = bytes;
    let mut buf = [0u8; 8192];
    while left > 0 {
        for chunk in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        let n = left.min(buf.len() as u64) as usize;
        w.write_all(&buf[..n])
            .map_err(|e| LabError::io(format!("writing {}", path.display()), e))?;
        left -= n as u64;
    }
    w.flush()
        .map_err(|e| LabError::io(format!("writing {}", path.display()), e))
}

/// SHA-256 of a local file, hex (`sha256sum`).
pub fn sha256_file(path: &Path) -> Result<String> {
    let out = cmd::run_root(&[std::ffi::OsStr::new("sha256sum"), path.as_os_str()])?;
    out.split_whitespace()
        .next()
        .map(str::to_string)
        .ok_or_else(|| LabError::Parse {
            what: "sha256sum".into(),
            detail: out.clone(),
        })
}

fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// `python3 -m http.server` serving one generated file.
pub struct HttpServer {
    /// The server process.
    pub proc: Proc,
    /// Address it listens on.
    pub ip: String,
    /// TCP port.
    pub port: u16,
    /// The served file.
    pub file: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Its SHA-256 (hex).
    pub sha256: String,
}

impl HttpServer {
    /// Generates a file of `size_mb` MiB in `dir/www`, serves `dir/www`
    /// from `ns` on `ip:port` and waits (bounded) until it listens.
    pub fn start(ns: &Netns, ip: &str, port: u16, dir: &Path, size_mb: u64) -> Result<HttpServer> {
        check_lab_addr(ip)?;
        let www = dir.join("www");
        std::fs::create_dir_all(&www).map_err(|e| LabError::io("creating www dir", e))?;
        let file = www.join(format!("blob-{size_mb}mb.bin"));
        let size = size_mb * 1024 * 1024;
        generate_file(&file, size, 0x7a4d_e3c1 ^ size)?;
        let sha256 = sha256_file(&file)?;
        let port_s = port.to_string();
        let www_s = www.to_string_lossy().into_owned();
        let mut proc = ns.spawn(
            "http-server",
            &[
                python(),
                "-m",
                "http.server",
                &port_s,
                "--bind",
                ip,
                "--directory",
                &www_s,
            ],
        )?;
        if let Err(e) = wait_listening(ns, port, Duration::from_secs(10)) {
            proc.ensure_running()?;
            return Err(e);
        }
        Ok(HttpServer {
            proc,
            ip: ip.to_string(),
            port,
            file,
            size,
            sha256,
        })
    }

    /// The URL of the served file.
    pub fn url(&self) -> String {
        let name = self.file.file_name().unwrap_or_default().to_string_lossy();
        format!("http://{}:{}/{}", self.ip, self.port, name)
    }
}

/// Outcome of one curl download.
#[derive(Debug, Clone)]
pub struct CurlResult {
    /// curl's exit code (0 = success; 28 = timeout).
    pub exit_code: Option<i32>,
    /// HTTP status.
    pub http_code: u32,
    /// Bytes downloaded.
    pub bytes: u64,
    /// Total time in seconds.
    pub seconds: f64,
    /// Where the body was written.
    pub path: PathBuf,
    /// curl's stderr.
    pub stderr: String,
}

impl CurlResult {
    /// True if curl succeeded with HTTP 200.
    pub fn ok(&self) -> bool {
        self.exit_code == Some(0) && self.http_code == 200
    }

    /// Average download rate in bits per second.
    pub fn bits_per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.bytes as f64 * 8.0 / self.seconds
        } else {
            0.0
        }
    }
}

/// Downloads `http://ip:port/path` from `ns` into `out` with curl (no
/// proxy, `--max-time` = `timeout`).
pub fn curl_download(
    ns: &Netns,
    ip: &str,
    port: u16,
    path: &str,
    out: &Path,
    timeout: Duration,
) -> Result<CurlResult> {
    check_lab_addr(ip)?;
    let url = format!("http://{ip}:{port}/{}", path.trim_start_matches('/'));
    let max_time = timeout.as_secs().max(1).to_string();
    let out_s = out.to_string_lossy().into_owned();
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
            "-o",
            &out_s,
            "-w",
            "%{size_download} %{time_total} %{http_code}",
            &url,
        ],
        timeout + Duration::from_secs(10),
    )?;
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let mut it = text.split_whitespace();
    let bytes = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    let seconds = it.next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let http_code = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    Ok(CurlResult {
        exit_code: o.status.code(),
        http_code,
        bytes,
        seconds,
        path: out.to_path_buf(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    })
}

/// An `iperf3 -s` server.
pub struct IperfServer {
    /// The server process.
    pub proc: Proc,
    /// Address it listens on.
    pub ip: String,
    /// TCP port.
    pub port: u16,
}

impl IperfServer {
    /// Starts `iperf3 -s -B ip -p port` in `ns` and waits (bounded) until
    /// it listens.
    pub fn start(ns: &Netns, ip: &str, port: u16) -> Result<IperfServer> {
        check_lab_addr(ip)?;
        let port_s = port.to_string();
        let mut proc = ns.spawn("iperf3-server", &["iperf3", "-s", "-B", ip, "-p", &port_s])?;
        if let Err(e) = wait_listening(ns, port, Duration::from_secs(10)) {
            proc.ensure_running()?;
            return Err(e);
        }
        Ok(IperfServer {
            proc,
            ip: ip.to_string(),
            port,
        })
    }
}

/// Outcome of one iperf3 client run (`--json`).
#[derive(Debug, Clone)]
pub struct IperfResult {
    /// Throughput seen by the receiver, bits/s.
    pub bits_per_second: f64,
    /// Throughput seen by the sender, bits/s.
    pub sent_bits_per_second: f64,
    /// TCP retransmissions of the sender.
    pub retransmits: u64,
    /// Measured duration in seconds.
    pub seconds: f64,
    /// iperf3's whole JSON report.
    pub raw: Value,
}

/// Runs `iperf3 -c ip -p port -t seconds --json` from `ns` (plus `extra`
/// arguments, for instance `["-R"]`) and parses the result. The run is
/// killed after `seconds + 20` s.
pub fn iperf_client(
    ns: &Netns,
    ip: &str,
    port: u16,
    seconds: u32,
    extra: &[&str],
) -> Result<IperfResult> {
    check_lab_addr(ip)?;
    let port_s = port.to_string();
    let t_s = seconds.max(1).to_string();
    let mut argv = vec![
        "iperf3",
        "-c",
        ip,
        "-p",
        &port_s,
        "-t",
        &t_s,
        "--json",
        "--connect-timeout",
        "5000",
    ];
    argv.extend_from_slice(extra);
    let o = ns.exec_timeout(&argv, Duration::from_secs(u64::from(seconds) + 20))?;
    let text = String::from_utf8_lossy(&o.stdout);
    parse_iperf(&text)
}

/// Parses the JSON report of an iperf3 client.
pub fn parse_iperf(text: &str) -> Result<IperfResult> {
    let v: Value = serde_json::from_str(text).map_err(|e| LabError::Parse {
        what: "iperf3 --json".into(),
        detail: format!("{e}: {}", text.chars().take(400).collect::<String>()),
    })?;
    if let Some(err) = v.get("error").and_then(Value::as_str) {
        return Err(LabError::Other(format!("iperf3 failed: {err}")));
    }
    let end = &v["end"];
    let recv = &end["sum_received"];
    let sent = &end["sum_sent"];
    let bits = recv["bits_per_second"]
        .as_f64()
        .ok_or_else(|| LabError::Parse {
            what: "iperf3 --json".into(),
            detail: "no end.sum_received.bits_per_second".into(),
        })?;
    Ok(IperfResult {
        bits_per_second: bits,
        sent_bits_per_second: sent["bits_per_second"].as_f64().unwrap_or(0.0),
        retransmits: sent["retransmits"].as_u64().unwrap_or(0),
        seconds: recv["seconds"].as_f64().unwrap_or(0.0),
        raw: v,
    })
}
