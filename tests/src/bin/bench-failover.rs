//! `bench-failover`: failover of a firewall pair under live traffic, tandem
//! against the reference Linux pair, in the same two-node lab topology.
//!
//! For each cluster (a: two `tandemd` members with the election on; b: the
//! two firewall namespaces as Linux routers with nftables, conntrackd FTFW
//! and keepalived VRRP, see [`tandem_tests::linuxpair`]), `--rounds` times:
//! a paced TCP stream (both directions, 200 bytes every 1 ms, every
//! reception timestamped) and `--connections` idle-ish TCP connections (a
//! short line every 200 ms, echoed) are opened through the cluster; the
//! active member is killed (tandem: `kill -9` of its tandemd; Linux:
//! `kill -9` of keepalived and conntrackd and its two data legs set down);
//! the bench waits until the other member is active, the stream flows again
//! and every connection delivers again (all bounded); then the killed
//! member is restarted and must come back passive and synchronized before
//! the next round kills the current active. Per round: the largest gap of
//! the stream, the connections lost (errored, reset or not delivering
//! again). Results: printed and written to results/failover.json.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tandem_tests::args::Args;
use tandem_tests::lab::{addr, Lab};
use tandem_tests::linuxpair::{LinuxPair, LinuxPairOptions, VrrpState};
use tandem_tests::node::{self, HaSection, Node, NodeConfig};
use tandem_tests::tools::{self, json_lines, median};
use tandem_tests::{cmd, host, LabError, Proc, Result};

const USAGE: &str = "usage: bench-failover [--rounds N] [--connections N] [--only tandem|linux]
                      [--fault kill|stop|swap|term] [--gen-rate PPS]
                      [--advert-int SECONDS] [--linux-cache external|disabled]
                      [--linux-sync on|off] [--baseline SECONDS] [--out FILE]
  --rounds N          failovers per cluster (default 20)
  --connections N     idle-ish TCP connections per round besides the stream (default 50)
  --only C            run one cluster only (default: tandem, then linux)
  --fault F           what happens to the active (default kill): kill = kill -9, back by a
                      restart; stop = SIGSTOP, back by SIGCONT (it must yield); swap = a
                      forced swap (hapassive, then hareset); term = a clean stop (SIGTERM,
                      it hands over), back by a restart. stop, swap and term: tandem only
  --gen-rate PPS      also run tandem-gen each round (UDP both ways, PPS per direction, 64
                      flows, af_packet from a host on both segments, following the
                      gateways' ARP): frames lost and the largest silence (default 0: off)
  --advert-int S      keepalived VRRP advert interval (default 0.01, the fastest keepalived
                      2.2.7 accepts: VRRPv3 counts in centiseconds; 0.01-40)
  --linux-cache M     conntrackd external cache (default external: committed on becoming
                      master, as conntrackd's primary-backup.sh does)
  --linux-sync off     control experiment: no conntrackd (connections must be lost)
  --baseline S        stream time before each kill (default 1.5)
  --out FILE          default results/failover.json
env: TANDEM_BIN_DIR (where tandemd/tandemctl are), TANDEM_LAB_KEEP=1 (keep temp dirs)";

/// The TCP port of the traffic tool's server.
const PORT: u16 = 5001;

/// The tandem members' policy: the tool's port and ping from the LAN.
const POLICY: &str = r#"(
    rules: [
        (name: "failover", action: Pass, from: ["198.18.1.0/24"], proto: Tcp, dst_ports: ["5001"]),
        (name: "ping", action: Pass, from: ["198.18.1.0/24"], proto: Icmp, icmp_types: [8]),
        (name: "gen", action: Pass, from: ["198.18.1.0/24"], proto: Udp, dst_ports: ["9"]),
    ],
    default_action: Block,
)"#;

/// The traffic tool (python3, stdlib only), written into the lab directory.
const TOOL: &str = r##""""bench-failover's traffic tool (stdlib only; written into the lab dir).

server: listens on --bind:--port. A connection says what it is in its first
line: "S" (the stream: both sides send --chunk bytes every --pace s and
timestamp every reception) or "I" (an idle-ish connection: every line is
echoed back).
client: opens the stream and --conns idle-ish connections to --dst:--port;
each idle-ish connection sends one short line every --interval s (random
phase) and records when its echoes come back.
Both print JSON lines: ready, gap (a silence of a stream of at least
--gap-ms between two receptions: wall-clock start/end and the client's
port), conn_error, status (every --status s: the client's stream and the
last echo of each connection; the server's streams), final. Bounded by
--duration; SIGTERM ends them cleanly.
Only lab addresses (198.18.0.0/15) are accepted.
"""
import argparse
import errno
import json
import random
import selectors
import signal
import socket
import sys
import time

STOP = False


def on_term(*_):
    global STOP
    STOP = True


def lab_ip(s):
    p = s.split(".")
    if len(p) != 4 or p[0] != "198" or p[1] not in ("18", "19"):
        raise SystemExit("not a lab address: " + s)
    return s


def out(**kw):
    sys.stdout.write(json.dumps(kw, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def err_name(e):
    if isinstance(e, ConnectionResetError):
        return "reset"
    n = getattr(e, "errno", None)
    return errno.errorcode.get(n, str(e)) if n else str(e)


class Conn:
    def __init__(self, sock, kind, idx, port):
        self.sock = sock
        self.port = port  # the client's port (local on the client, peer on the server)
        self.kind = kind  # "S", "I" or "?" (server: hello not read yet)
        self.idx = idx
        self.rbuf = b""
        self.wbuf = b""
        self.err = None
        self.err_at = None
        self.rx = 0
        self.first_rx = None
        self.last_rx = None
        self.max_gap = 0.0
        self.next_send = 0.0
        self.seq = 0
        self.echoes = 0
        self.last_echo = None
        self.blocked = 0


class Tool:
    def __init__(self, a):
        self.a = a
        self.sel = selectors.DefaultSelector()
        self.conns = []
        self.chunk = b"x" * a.chunk

    def fail(self, c, why):
        if c.err is None:
            c.err = why
            c.err_at = time.time()
            if self.a.mode == "client" or c.kind == "S":
                out(event="conn_error", kind=c.kind, idx=c.idx, port=c.port, err=why,
                    t=round(c.err_at, 4))
        try:
            self.sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        if self.a.mode == "server":
            c.sock.close()
            self.conns.remove(c)

    def push(self, c, data):
        c.wbuf += data
        self.flush(c)

    def flush(self, c):
        if c.err is not None or not c.wbuf:
            return
        try:
            n = c.sock.send(c.wbuf)
            c.wbuf = c.wbuf[n:]
        except BlockingIOError:
            c.blocked += 1
        except OSError as e:
            self.fail(c, err_name(e))

    def on_stream_rx(self, c, now, label):
        if c.last_rx is not None:
            g = now - c.last_rx
            if g > c.max_gap:
                c.max_gap = g
            if g * 1000.0 >= self.a.gap_ms:
                out(event="gap", dir=label, port=c.port, start=round(c.last_rx, 4),
                    end=round(now, 4), ms=round(g * 1000.0, 1))
        else:
            c.first_rx = now
        c.last_rx = now

    def readable(self, c, now):
        try:
            data = c.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as e:
            self.fail(c, err_name(e))
            return
        if not data:
            self.fail(c, "eof")
            return
        c.rx += len(data)
        if c.kind == "?":
            c.rbuf += data
            if b"\n" not in c.rbuf:
                return
            hello, data = c.rbuf.split(b"\n", 1)
            c.rbuf = b""
            c.kind = "S" if hello.strip() == b"S" else "I"
            c.next_send = now
        if c.kind == "S":
            self.on_stream_rx(c, now, self.label)
        elif self.a.mode == "server":
            c.rbuf += data
            if b"\n" in c.rbuf:
                lines, c.rbuf = c.rbuf.rsplit(b"\n", 1)
                self.push(c, lines + b"\n")
        else:
            c.rbuf += data
            n = c.rbuf.count(b"\n")
            if n:
                c.rbuf = c.rbuf.rsplit(b"\n", 1)[1]
                c.echoes += n
                c.last_echo = now

    def sends(self, now):
        due = now + 0.05
        for c in list(self.conns):
            if c.err is not None or c.kind == "?":
                continue
            if c.wbuf:
                self.flush(c)
            if now >= c.next_send:
                if c.kind == "S":
                    if not c.wbuf:
                        self.push(c, self.chunk)
                    else:
                        c.blocked += 1
                    step = self.a.pace
                elif self.a.mode == "client":
                    c.seq += 1
                    self.push(c, ("%d %.4f\n" % (c.seq, now)).encode())
                    step = self.a.interval
                else:
                    c.next_send = now + 3600
                    continue
                c.next_send += step
                if c.next_send < now - 0.1:
                    c.next_send = now + step
            if c.next_send < due:
                due = c.next_send
        return due

    def status(self, now, final=False):
        ev = "final" if final else "status"
        d = {"event": ev, "t": round(now, 4)}
        streams = [c for c in self.conns if c.kind == "S"]
        if self.a.mode == "server":
            d["streams"] = [[c.port, c.last_rx and round(c.last_rx, 4)] for c in streams]
            out(**d)
            return
        st = None
        if streams:
            c = streams[0]
            open_gap = (now - c.last_rx) if c.last_rx is not None else None
            st = {"port": c.port, "rx": c.rx, "last_rx": c.last_rx and round(c.last_rx, 4),
                  "max_gap_ms": round(c.max_gap * 1000.0, 1), "err": c.err,
                  "err_at": c.err_at, "blocked": c.blocked,
                  "open_gap_ms": open_gap and round(open_gap * 1000.0, 1)}
        idle = [c for c in self.conns if c.kind == "I"]
        d["stream"] = st
        d["idle"] = len(idle)
        d["last_echo"] = [c.last_echo and round(c.last_echo, 3) for c in idle]
        d["echoes"] = [c.echoes for c in idle]
        d["errors"] = [[c.idx, c.err, c.err_at] for c in idle if c.err is not None]
        out(**d)

    def connect(self, kind, idx):
        s = socket.create_connection((self.a.dst, self.a.port), timeout=self.a.connect_timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(kind.encode() + b"\n")
        s.setblocking(False)
        c = Conn(s, kind, idx, s.getsockname()[1])
        c.next_send = time.time() + (random.random() * self.a.interval if kind == "I" else 0.0)
        self.conns.append(c)
        self.sel.register(s, selectors.EVENT_READ, c)
        return c

    def run(self):
        a = self.a
        end = time.time() + a.duration
        lsock = None
        if a.mode == "server":
            self.label = "c->s"
            lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            lsock.bind((a.bind, a.port))
            lsock.listen(512)
            lsock.setblocking(False)
            self.sel.register(lsock, selectors.EVENT_READ, None)
            out(event="ready", bind=a.bind, port=a.port)
        else:
            self.label = "s->c"
            t0 = time.time()
            try:
                self.connect("S", 0)
                for i in range(a.conns):
                    self.connect("I", i)
            except OSError as e:
                out(event="connect_failed", err=err_name(e), opened=len(self.conns))
                return 3
            out(event="ready", conns=len(self.conns), stream_port=self.conns[0].port,
                seconds=round(time.time() - t0, 3))
        next_status = time.time() + a.status
        while not STOP:
            now = time.time()
            if now >= end:
                break
            due = self.sends(now)
            timeout = max(0.0, min(due - time.time(), 0.001, next_status - now))
            for key, _ in self.sel.select(timeout):
                now = time.time()
                if key.data is None:
                    for _ in range(64):
                        try:
                            cs, _addr = lsock.accept()
                        except BlockingIOError:
                            break
                        cs.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        cs.setblocking(False)
                        c = Conn(cs, "?", len(self.conns), _addr[1])
                        self.conns.append(c)
                        self.sel.register(cs, selectors.EVENT_READ, c)
                else:
                    self.readable(key.data, now)
            now = time.time()
            if now >= next_status:
                self.status(now)
                next_status = now + a.status
        self.status(time.time(), final=True)
        for c in self.conns:
            try:
                c.sock.close()
            except OSError:
                pass
        return 0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=["server", "client"], required=True)
    p.add_argument("--bind", default="198.18.2.10")
    p.add_argument("--dst", default="198.18.2.10")
    p.add_argument("--port", type=int, default=5001)
    p.add_argument("--conns", type=int, default=50)
    p.add_argument("--interval", type=float, default=0.2)
    p.add_argument("--pace", type=float, default=0.001)
    p.add_argument("--chunk", type=int, default=200)
    p.add_argument("--gap-ms", type=float, default=20.0)
    p.add_argument("--status", type=float, default=0.1)
    p.add_argument("--connect-timeout", type=float, default=3.0)
    p.add_argument("--duration", type=float, default=120.0)
    a = p.parse_args()
    lab_ip(a.bind)
    lab_ip(a.dst)
    a.conns = max(0, min(a.conns, 2000))
    a.duration = max(1.0, min(a.duration, 900.0))
    a.pace = max(0.0005, a.pace)
    a.interval = max(0.01, a.interval)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    sys.exit(Tool(a).run())


if __name__ == "__main__":
    main()
"##;

/// Bounds of every wait of a round.
const WAIT_ACTIVE: Duration = Duration::from_secs(30);
const WAIT_FLOW: Duration = Duration::from_secs(30);
const WAIT_CONNS: Duration = Duration::from_secs(20);
const WAIT_READY_PASSIVE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
struct Opts {
    rounds: u32,
    connections: u32,
    clusters: Vec<String>,
    advert_int: Duration,
    external_cache: bool,
    linux_sync: bool,
    baseline: Duration,
    fault: Fault,
    gen_rate: u32,
    out: PathBuf,
}

fn parse_args(args: &[String]) -> Result<Opts> {
    let mut o = Opts {
        rounds: 20,
        connections: 50,
        clusters: vec!["tandem".into(), "linux".into()],
        advert_int: Duration::from_millis(10),
        external_cache: true,
        linux_sync: true,
        baseline: Duration::from_millis(1500),
        fault: Fault::Kill,
        gen_rate: 0,
        out: PathBuf::from("results/failover.json"),
    };
    let mut a = Args::new(args, USAGE);
    while let Some(flag) = a.next_flag() {
        match flag {
            "--rounds" => o.rounds = a.number(flag, 1..=200)?,
            "--connections" => o.connections = a.number(flag, 0..=1000)?,
            "--only" => o.clusters = vec![a.choice(flag, &["tandem", "linux"])?.to_owned()],
            "--advert-int" => {
                let s: f64 = a.number(flag, 0.01..=40.0)?;
                o.advert_int = Duration::from_millis((s * 100.0).round() as u64 * 10);
            }
            "--linux-cache" => {
                o.external_cache = a.choice(flag, &["external", "disabled"])? == "external";
            }
            "--linux-sync" => o.linux_sync = a.choice(flag, &["on", "off"])? == "on",
            "--baseline" => o.baseline = Duration::from_secs_f64(a.number(flag, 0.2..=30.0)?),
            "--fault" => {
                o.fault = match a.choice(flag, &["kill", "stop", "swap", "term"])? {
                    "stop" => Fault::Stop,
                    "swap" => Fault::Swap,
                    "term" => Fault::Term,
                    _ => Fault::Kill,
                }
            }
            "--gen-rate" => o.gen_rate = a.number(flag, 0..=1_000_000)?,
            "--out" => o.out = PathBuf::from(a.value(flag)?),
            "-h" | "--help" => return Err(LabError::Other(USAGE.into())),
            _ => return Err(a.unknown(flag)),
        }
    }
    if o.fault != Fault::Kill && o.clusters.iter().any(|c| c == "linux") {
        if args.iter().any(|a| a == "--only") {
            return Err(LabError::Other(format!(
                "--fault {} is for tandem only (the Linux pair has --fault kill): use --only tandem",
                o.fault.name()
            )));
        }
        o.clusters = vec!["tandem".into()];
    }
    Ok(o)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let opts = match parse_args(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if !cmd::is_root() {
        eprintln!("bench-failover needs root (network namespaces)");
        return ExitCode::from(2);
    }
    match run(&opts) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("bench-failover: some rounds failed (see above and the results file)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("bench-failover: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

fn wall() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn step(t0: Instant, msg: &str) {
    println!("[{:>6.1}s] {msg}", t0.elapsed().as_secs_f64());
}

fn ms(d: f64) -> f64 {
    (d * 1e4).round() / 10.0
}

/// What a round does to the active member.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fault {
    /// kill -9, then a restart.
    Kill,
    /// SIGSTOP, then SIGCONT once the peer has taken over.
    Stop,
    /// A forced swap (`hapassive`), then `hareset`.
    Swap,
    /// A clean stop (SIGTERM: it hands over first), then a restart.
    Term,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Stop => "stop",
            Fault::Swap => "swap",
            Fault::Term => "term",
        }
    }
}

/// A two-member cluster as the rounds drive it; members are 1 and 2.
trait Pair {
    /// "tandem" or "linux".
    fn label(&self) -> &'static str;
    /// Members that say they are active.
    fn actives(&mut self) -> Vec<usize>;
    /// True if member `i` says it is active.
    fn is_active(&mut self, i: usize) -> bool;
    /// Does `fault` to member `i` (see the module doc for what a kill
    /// means).
    fn fault(&mut self, i: usize, fault: Fault) -> Result<()>;
    /// Brings member `i` back after `fault`.
    fn recover(&mut self, i: usize, fault: Fault) -> Result<()>;
    /// True once member `i` is passive and synchronized with the active.
    fn ready_passive(&mut self, i: usize) -> bool;
    /// What member `i` recorded about the last failover.
    fn evidence(&mut self, i: usize) -> Value;
    /// What member `i` (just back as passive) holds of the active's table.
    fn sync_detail(&mut self, i: usize) -> Value;
    /// Logs of both members, for failure reports.
    fn diagnostics(&mut self) -> String;
    /// Role changes over the whole run (to spot spurious ones).
    fn role_changes(&mut self) -> Value;
}

struct TandemPair<'l> {
    lab: &'l Lab,
    configs: Vec<NodeConfig>,
    nodes: Vec<Option<Node>>,
}

impl<'l> TandemPair<'l> {
    fn start(lab: &'l Lab) -> Result<TandemPair<'l>> {
        let policy = tandem_tests::firewall::write_policy(lab, "policy.ron", POLICY)?;
        let mut pair = TandemPair {
            lab,
            configs: Vec::new(),
            nodes: Vec::new(),
        };
        for i in 1..=2 {
            let mut cfg = lab.node_config(i).with_policy(&policy);
            let mut ha = HaSection::lab(i);
            ha.election = true;
            cfg.ha = Some(ha);
            pair.configs.push(cfg);
            pair.nodes.push(None);
            pair.recover(i, Fault::Kill)?;
        }
        Ok(pair)
    }

    fn node(&self, i: usize) -> Option<&Node> {
        self.nodes[i - 1].as_ref()
    }

    fn role(&self, i: usize) -> Option<String> {
        let s = self.node(i)?.status().ok()?;
        s["role"].as_str().map(str::to_string)
    }
}

impl Pair for TandemPair<'_> {
    fn label(&self) -> &'static str {
        "tandem"
    }

    fn actives(&mut self) -> Vec<usize> {
        (1..=2)
            .filter(|&i| self.role(i).as_deref() == Some("active"))
            .collect()
    }

    fn is_active(&mut self, i: usize) -> bool {
        self.role(i).as_deref() == Some("active")
    }

    fn fault(&mut self, i: usize, fault: Fault) -> Result<()> {
        let not_running = || LabError::Other(format!("fw{i} is not running"));
        match fault {
            Fault::Kill | Fault::Term => {
                let mut n = self.nodes[i - 1].take().ok_or_else(not_running)?;
                n.proc
                    .signal(if fault == Fault::Kill { "KILL" } else { "TERM" });
                if n.proc.wait_timeout(Duration::from_secs(5)).is_none() {
                    return Err(LabError::Other(format!(
                        "tandemd of fw{i} did not end within 5 s of SIG{}",
                        if fault == Fault::Kill { "KILL" } else { "TERM" }
                    )));
                }
            }
            Fault::Stop => self.nodes[i - 1]
                .as_mut()
                .ok_or_else(not_running)?
                .proc
                .signal("STOP"),
            Fault::Swap => {
                self.nodes[i - 1]
                    .as_ref()
                    .ok_or_else(not_running)?
                    .ctl(&["hapassive"])?;
            }
        }
        Ok(())
    }

    fn recover(&mut self, i: usize, fault: Fault) -> Result<()> {
        match fault {
            Fault::Kill | Fault::Term => {
                let mut n = self.lab.start_node_with(i, &self.configs[i - 1])?;
                n.wait_ready(Duration::from_secs(30))?;
                self.nodes[i - 1] = Some(n);
            }
            Fault::Stop => {
                if let Some(n) = self.nodes[i - 1].as_mut() {
                    n.proc.signal("CONT");
                }
            }
            Fault::Swap => {
                if let Some(n) = self.nodes[i - 1].as_ref() {
                    n.ctl(&["hareset"])?;
                }
            }
        }
        Ok(())
    }

    fn ready_passive(&mut self, i: usize) -> bool {
        let Some(n) = self.node(i) else { return false };
        let passive = n.status().ok().is_some_and(|s| s["role"] == "passive");
        passive
            && n.ctl(&["sync"])
                .ok()
                .is_some_and(|s| s["synchronized"] == true)
    }

    fn evidence(&mut self, i: usize) -> Value {
        let Some(n) = self.node(i) else {
            return Value::Null;
        };
        let ha = n.ctl(&["hainfo"]).unwrap_or(Value::Null);
        let log = n
            .ctl(&["log", "--lines", "12"])
            .map(|l| l["lines"].clone())
            .unwrap_or(Value::Null);
        json!({"swaps": ha["swaps"], "last_swap": ha["last_swap"], "log": log})
    }

    fn sync_detail(&mut self, i: usize) -> Value {
        let Some(n) = self.node(i) else {
            return Value::Null;
        };
        let s = n.ctl(&["sync"]).unwrap_or(Value::Null);
        let active = self.node(3 - i).and_then(|a| {
            a.ctl(&["conn", "list", "--limit", "1"])
                .ok()
                .and_then(|v| v["total"].as_u64())
        });
        json!({"synchronized": s["synchronized"], "larval": s["larval"],
               "bulks_received": s["bulks_received"], "active_connections": active})
    }

    fn role_changes(&mut self) -> Value {
        // The event log of each member (a file in the lab directory that
        // outlives restarts): every swap to active, whoever logged it.
        let swaps: usize = (1..=2)
            .map(|i| {
                std::fs::read_to_string(self.lab.node_socket(i).with_extension("log"))
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| l.contains("swap: passive -> active"))
                    .count()
            })
            .sum();
        json!({"swaps_to_active_logged": swaps})
    }

    fn diagnostics(&mut self) -> String {
        let mut s = String::new();
        for i in 1..=2 {
            match self.node(i) {
                Some(n) => {
                    let log = n.ctl_text(&["log", "--lines", "60"]).unwrap_or_default();
                    let ha = n.ctl_text(&["hainfo"]).unwrap_or_default();
                    s += &format!("--- fw{i} hainfo ---\n{ha}\n--- fw{i} log ---\n{log}\n");
                    s += &n.proc.logs_tail(20);
                    s.push('\n');
                }
                None => s += &format!("--- fw{i}: not running ---\n"),
            }
        }
        s
    }
}

struct LinuxCluster<'l> {
    pair: LinuxPair<'l>,
}

impl Pair for LinuxCluster<'_> {
    fn label(&self) -> &'static str {
        "linux"
    }

    fn actives(&mut self) -> Vec<usize> {
        (1..=2)
            .filter(|&i| self.pair.state(i) == VrrpState::Master)
            .collect()
    }

    fn is_active(&mut self, i: usize) -> bool {
        self.pair.state(i) == VrrpState::Master
    }

    fn fault(&mut self, i: usize, fault: Fault) -> Result<()> {
        match fault {
            Fault::Kill => self.pair.crash(i),
            f => Err(LabError::Other(format!(
                "the Linux pair has only --fault kill, not {}",
                f.name()
            ))),
        }
    }

    fn recover(&mut self, i: usize, _: Fault) -> Result<()> {
        self.pair.restart(i)
    }

    fn ready_passive(&mut self, i: usize) -> bool {
        self.pair.synchronized(i).unwrap_or(false)
    }

    fn evidence(&mut self, i: usize) -> Value {
        let t = self.pair.transitions(i);
        json!({"transitions": t[t.len().saturating_sub(2)..]})
    }

    fn sync_detail(&mut self, i: usize) -> Value {
        let m = self.pair.cache_counts(3 - i).ok();
        let b = self.pair.cache_counts(i).ok();
        json!({"master_internal_cache": m.map(|c| c.0), "backup_external_cache": b.map(|c| c.1),
               "master_kernel_table": self.pair.kernel_count(3 - i).ok()})
    }

    fn role_changes(&mut self) -> Value {
        let masters: usize = (1..=2)
            .map(|i| {
                self.pair
                    .transitions(i)
                    .iter()
                    .filter(|l| l.starts_with("master ") && !l.contains("done"))
                    .count()
            })
            .sum();
        json!({"vrrp_master_transitions": masters})
    }

    fn diagnostics(&mut self) -> String {
        format!(
            "{}\n{}",
            self.pair.logs_tail(1, 30),
            self.pair.logs_tail(2, 30)
        )
    }
}

/// The last `status` line of a running tool.
fn last_status(p: &Proc) -> Option<Value> {
    let out = p.stdout();
    out.lines()
        .rev()
        .filter(|l| l.contains("\"event\":\"status\""))
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
}

/// When the server last received on the stream from client port `port`.
fn server_last_rx(server: &Proc, port: u64) -> f64 {
    last_status(server)
        .and_then(|s| {
            s["streams"].as_array().and_then(|a| {
                a.iter()
                    .find(|e| e[0].as_u64() == Some(port))
                    .and_then(|e| e[1].as_f64())
            })
        })
        .unwrap_or(0.0)
}

/// A silence of a stream: (start, end, ms, direction).
type Gap = (f64, f64, f64, String);

fn gap_events(lines: &[Value], port: u64) -> Vec<Gap> {
    lines
        .iter()
        .filter(|v| v["event"] == "gap" && v["port"].as_u64() == Some(port))
        .map(|v| {
            (
                v["start"].as_f64().unwrap_or(0.0),
                v["end"].as_f64().unwrap_or(0.0),
                v["ms"].as_f64().unwrap_or(0.0),
                v["dir"].as_str().unwrap_or("?").to_string(),
            )
        })
        .collect()
}

/// A client tool: one stream and `conns` idle-ish connections.
struct Traffic {
    proc: Proc,
    stream_port: u64,
    conns: usize,
}

impl Traffic {
    fn start(lab: &Lab, tool: &Path, label: &str, conns: u32) -> Result<Traffic> {
        let conns_s = conns.to_string();
        let port = PORT.to_string();
        let argv = [
            "/usr/bin/python3",
            "-B",
            &tool.to_string_lossy(),
            "--mode",
            "client",
            "--dst",
            addr::SERVER,
            "--port",
            &port,
            "--conns",
            &conns_s,
            "--duration",
            "900",
        ];
        let mut proc = lab.client().spawn(label, &argv)?;
        let ready = tools::wait_event(&mut proc, "ready", Duration::from_secs(30))?;
        let t = Traffic {
            stream_port: ready["stream_port"].as_u64().unwrap_or(0),
            proc,
            conns: conns as usize,
        };
        // Every connection delivered once before anything else happens.
        cmd::poll_until(Duration::from_secs(10), Duration::from_millis(50), || {
            t.status()
                .filter(|s| {
                    s["last_echo"]
                        .as_array()
                        .is_some_and(|a| a.iter().all(Value::is_f64))
                })
                .map(|_| ())
        })
        .ok_or_else(|| {
            LabError::Other(format!(
                "{label}: not every connection got an echo within 10 s\n{}",
                t.proc.logs_tail(3)
            ))
        })?;
        Ok(t)
    }

    fn status(&self) -> Option<Value> {
        last_status(&self.proc)
    }

    fn flowing_since(&self, server: &Proc, t: f64) -> bool {
        let own = self
            .status()
            .and_then(|s| s["stream"]["last_rx"].as_f64())
            .unwrap_or(0.0);
        own > t && server_last_rx(server, self.stream_port) > t
    }

    /// Idle-ish connections that received an echo after `t` or failed.
    fn settled_since(&self, t: f64) -> usize {
        let Some(s) = self.status() else { return 0 };
        let errs = s["errors"].as_array().map_or(0, Vec::len);
        let fresh = s["last_echo"].as_array().map_or(0, |a| {
            a.iter()
                .filter(|e| e.as_f64().is_some_and(|x| x > t))
                .count()
        });
        fresh + errs
    }

    /// Indices of the idle-ish connections that failed or delivered nothing
    /// after `t`, per `v` (a status or final line).
    fn lost_since(&self, v: &Value, t: f64) -> Vec<usize> {
        let errs: Vec<usize> = v["errors"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e[0].as_u64())
                    .map(|i| i as usize)
                    .collect()
            })
            .unwrap_or_default();
        let echo = v["last_echo"].as_array().cloned().unwrap_or_default();
        (0..self.conns)
            .filter(|i| {
                errs.contains(i) || !echo.get(*i).and_then(Value::as_f64).is_some_and(|x| x > t)
            })
            .collect()
    }
}

/// What one stream saw around one kill.
struct StreamRound {
    gap: f64,
    failover_gap: f64,
    baseline_gap: f64,
    resumed_after_ms: Option<f64>,
    lost: bool,
    err: Option<String>,
    worst: Value,
}

fn stream_round(
    client_lines: &[Value],
    server_lines: &[Value],
    port: u64,
    window: (f64, f64, f64),
    flowing: bool,
    client_now: &Value,
) -> StreamRound {
    let (from, t_kill, to) = window;
    let gaps: Vec<Gap> = gap_events(client_lines, port)
        .into_iter()
        .chain(gap_events(server_lines, port))
        .filter(|g| g.1 > from && g.0 < to)
        .collect();
    let err = client_now["stream"]["err"].as_str().map(str::to_string);
    let lost = err.is_some() || !flowing;
    let open_gap = if lost {
        client_now["stream"]["open_gap_ms"].as_f64().unwrap_or(0.0)
    } else {
        0.0
    };
    let max_of = |f: &dyn Fn(&Gap) -> bool| {
        gaps.iter()
            .filter(|g| f(g))
            .map(|g| g.2)
            .fold(0.0, f64::max)
    };
    let baseline_gap = max_of(&|g| g.1 <= t_kill);
    let failover_gap = max_of(&|g| g.1 > t_kill).max(open_gap);
    let worst_gap = gaps
        .iter()
        .filter(|g| g.1 > t_kill)
        .max_by(|a, b| a.2.total_cmp(&b.2));
    let resumed_after_ms = if lost {
        None
    } else {
        // The stream resumed when its last silence after the kill ended.
        Some(
            gaps.iter()
                .filter(|g| g.1 > t_kill && g.0 < t_kill + 60.0)
                .map(|g| g.1)
                .fold(t_kill, f64::max),
        )
        .map(|t| ms(t - t_kill))
    };
    StreamRound {
        gap: baseline_gap.max(failover_gap),
        failover_gap,
        baseline_gap,
        resumed_after_ms,
        lost,
        err,
        worst: worst_gap.map_or(
            Value::Null,
            |g| json!({"dir": g.3, "start_after_kill_ms": ms(g.0 - t_kill), "ms": g.2}),
        ),
    }
}

/// tandem-gen in the lab's generator host for one round: UDP both ways
/// through the cluster, following the gateways' ARP (a takeover's
/// gratuitous ARP moves its frames to the new active).
struct Gen {
    proc: Proc,
}

impl Gen {
    fn start(lab: &Lab, rate: u32, n: u32) -> Result<Gen> {
        let proc = tandem_tests::generator::start(lab, &format!("fo-gen-{n}"), rate, 64, 0.5)?;
        Ok(Gen { proc })
    }

    /// Ends the run (SIGINT: it reports) and returns what it saw, with
    /// its throughput from 0.5 s before the fault (at `t_fault`, wall
    /// clock, seconds) to 1 s after.
    fn finish(self, t_fault: f64) -> Value {
        match tandem_tests::generator::report(self.proc) {
            Ok(r) => json!({
                "sent": r["sent"], "lost": r["lost"], "reordered": r["reordered"],
                "max_gap_ms": r["max_gap_us"].as_array().map(|a| a.iter().filter_map(Value::as_f64).map(|us| us / 1e3).collect::<Vec<_>>()),
                "gateway_moves": r["gateway_moves"], "rate_pps": r["rate_pps"],
                "timeline": tandem_tests::generator::timeline_around(&r, t_fault * 1e3, 500, 1000),
            }),
            Err(e) => json!({"error": e.to_string()}),
        }
    }
}

/// The long-lived set: opened once before the first kill, kept through
/// every round.
struct LongLived {
    traffic: Traffic,
    lost: Vec<usize>,
    stream_lost: bool,
}

/// One round: fresh traffic up, kill the active, measure, restart the victim.
#[allow(clippy::too_many_arguments)]
fn round(
    pair: &mut dyn Pair,
    lab: &Lab,
    tool: &Path,
    server: &Proc,
    long: &mut LongLived,
    o: &Opts,
    n: u32,
    t0: Instant,
) -> Result<Value> {
    let who = pair.label();
    let actives = cmd::poll_until(Duration::from_secs(20), Duration::from_millis(50), || {
        let a = pair.actives();
        (a.len() == 1).then_some(a)
    })
    .ok_or_else(|| LabError::Other(format!("{who}: no single active member before round {n}")))?;
    let victim = actives[0];
    let survivor = 3 - victim;
    let t_start = wall();
    let gen = if o.gen_rate > 0 {
        Some(Gen::start(lab, o.gen_rate, n)?)
    } else {
        None
    };
    let fresh = Traffic::start(lab, tool, &format!("fo-client-{who}-{n}"), o.connections)?;
    std::thread::sleep(o.baseline);

    let t_kill = wall();
    let k = Instant::now();
    pair.fault(victim, o.fault)?;
    let kill_ms = k.elapsed().as_secs_f64() * 1e3;
    let became_active = cmd::poll_until(WAIT_ACTIVE, Duration::from_millis(10), || {
        pair.is_active(survivor).then(wall)
    });
    let after = became_active.unwrap_or(t_kill);
    // Both streams flow again, both ways, after the takeover.
    let mut flow = [false, false];
    if became_active.is_some() {
        let _ = cmd::poll_until(WAIT_FLOW, Duration::from_millis(20), || {
            flow = [
                fresh.flowing_since(server, after),
                long.stream_lost || long.traffic.flowing_since(server, after),
            ];
            (flow[0] && flow[1]).then_some(())
        });
    }
    // Every idle-ish connection delivers again (an echo received after the
    // takeover), or has failed.
    let _ = cmd::poll_until(WAIT_CONNS, Duration::from_millis(50), || {
        (fresh.settled_since(after) >= fresh.conns
            && long.traffic.settled_since(after) + long.lost.len() >= long.traffic.conns)
            .then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    let long_now = long.traffic.status().unwrap_or(Value::Null);
    let gen = gen.map(|g| g.finish(t_kill));
    let mut fresh = fresh;
    fresh.proc.stop();
    let t_end = wall();
    let f_lines = json_lines(&fresh.proc.stdout());
    let s_lines = json_lines(&server.stdout());
    let l_lines = json_lines(&long.traffic.proc.stdout());
    let fin = f_lines
        .iter()
        .rev()
        .find(|v| v["event"] == "final")
        .cloned()
        .ok_or_else(|| {
            LabError::Other(format!(
                "{who} round {n}: the client tool gave no final line\n{}",
                fresh.proc.logs_tail(5)
            ))
        })?;
    let window = (t_start, t_kill, t_end);
    let fs = stream_round(&f_lines, &s_lines, fresh.stream_port, window, flow[0], &fin);
    let ls = stream_round(
        &l_lines,
        &s_lines,
        long.traffic.stream_port,
        window,
        flow[1] && !long.stream_lost,
        &long_now,
    );
    let fresh_lost = fresh.lost_since(&fin, after);
    let lost = fresh_lost.len() + usize::from(fs.lost);
    let mut long_new = Vec::new();
    for i in long.traffic.lost_since(&long_now, after) {
        if !long.lost.contains(&i) {
            long.lost.push(i);
            long_new.push(i);
        }
    }
    let long_stream_new = ls.lost && !long.stream_lost;
    long.stream_lost |= ls.lost;
    let long_lost_total = long.lost.len() + usize::from(long.stream_lost);
    let gap = fs.gap.max(ls.gap);
    let failover_gap = fs.failover_gap.max(ls.failover_gap);
    let baseline_gap = fs.baseline_gap.max(ls.baseline_gap);
    let evidence = pair.evidence(survivor);
    let failed_over = became_active.is_some();
    let active_ms = became_active.map(|t| ms(t - t_kill));

    // The victim comes back and must be passive and synchronized.
    let r = Instant::now();
    let restarted = pair.recover(victim, o.fault);
    let ready = restarted.is_ok()
        && cmd::poll_until(WAIT_READY_PASSIVE, Duration::from_millis(100), || {
            pair.ready_passive(victim).then_some(())
        })
        .is_some();
    let ready_s = r.elapsed().as_secs_f64();
    let sync_detail = if ready {
        pair.sync_detail(victim)
    } else {
        Value::Null
    };
    let fmt_ms = |v: Option<f64>| v.map_or("NEVER".to_string(), |x| format!("{x:.0}"));
    step(
        t0,
        &format!(
            "{who} round {n}/{}: {} of fw{victim}; fw{survivor} active after {} ms; streams resumed after {}/{} ms; largest gap {gap:.0} ms (after the kill {failover_gap:.0}, before it {baseline_gap:.0}); lost {lost}/{}{}; long-lived lost so far {long_lost_total}/{}; fw{victim} back passive+synchronized {}{}",
            o.rounds,
            o.fault.name(),
            fmt_ms(active_ms),
            fmt_ms(fs.resumed_after_ms),
            fmt_ms(ls.resumed_after_ms),
            fresh.conns + 1,
            if fs.lost { " (incl. the stream)" } else { "" },
            long.traffic.conns + 1,
            if ready { format!("in {ready_s:.1} s") } else { format!("NOT within {ready_s:.0} s") },
            gen.as_ref().map_or(String::new(), |g| format!(
                "; tandem-gen lost {} of {}, largest silence {} ms, gateway moves {}",
                g["lost"], g["sent"], g["max_gap_ms"], g["gateway_moves"]
            )),
        ),
    );
    let stream_json = |s: &StreamRound| {
        json!({"gap_ms": s.gap, "failover_gap_ms": s.failover_gap, "baseline_gap_ms": s.baseline_gap,
               "resumed_after_ms": s.resumed_after_ms, "lost": s.lost, "error": s.err, "worst_gap": s.worst})
    };
    let mut v = json!({
        "round": n, "fault": o.fault.name(), "gen": gen, "killed": format!("fw{victim}"), "survivor": format!("fw{survivor}"),
        "kill_command_ms": ms(kill_ms / 1e3),
        "failed_over": failed_over, "active_after_ms": active_ms,
        "gap_ms": gap, "failover_gap_ms": failover_gap, "baseline_gap_ms": baseline_gap,
        "stream": stream_json(&fs), "long_lived_stream": stream_json(&ls),
        "connections": fresh.conns + 1, "lost": lost, "lost_idle": fresh_lost,
        "long_lived_lost_now": long_new, "long_lived_stream_lost_now": long_stream_new,
        "long_lived_lost_total": long_lost_total,
        "restart_ready": ready, "restart_ready_s": (ready_s * 10.0).round() / 10.0,
        "evidence": evidence, "back_sync": sync_detail,
    });
    if let Err(e) = &restarted {
        v["restart_error"] = json!(e.to_string());
    }
    if !failed_over || lost > 0 || !long_new.is_empty() || long_stream_new || !ready {
        let d = pair.diagnostics();
        eprintln!("{who} round {n}: trouble; both members' logs:\n{d}");
        v["diagnostics"] = json!(d);
    }
    if !failed_over || !ready {
        return Ok(json!({"fatal": true, "round": v}));
    }
    Ok(v)
}

fn stats(v: &[f64]) -> Value {
    if v.is_empty() {
        return Value::Null;
    }
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(0.0, f64::max);
    json!({"min": min, "median": median(v), "max": max, "n": v.len()})
}

fn run_cluster(which: &str, o: &Opts, t0: Instant) -> Result<Value> {
    let mut lab = Lab::two_nodes("bfail")?;
    if o.gen_rate > 0 {
        lab.add_gen_host()?;
    }
    step(t0, &format!("{which}: lab {} built", lab.prefix()));
    let tool = lab.dir().join("failover_tool.py");
    std::fs::write(&tool, TOOL)
        .map_err(|e| LabError::io(format!("writing {}", tool.display()), e))?;
    let mut setup = json!({});
    let mut pair: Box<dyn Pair> = if which == "tandem" {
        let p = TandemPair::start(&lab)?;
        setup = json!({"members": "two tandemd, election on, policy: TCP 5001 + ping from the LAN",
                       "heartbeats": "tandem defaults"});
        Box::new(p)
    } else {
        let p = LinuxPair::setup(
            &lab,
            LinuxPairOptions {
                advert_int: o.advert_int,
                external_cache: o.external_cache,
                conntrackd: o.linux_sync,
            },
        )?;
        setup["members"] = json!("Linux routers: nftables (ct established,related accept; new from fw-in accept; policy drop), nf_conntrack_tcp_loose=0");
        setup["keepalived"] = json!(format!("VRRPv3, one sync group (inside + outside VIPs 198.18.1.1, 198.18.2.1), advert_int {:.2} s, nopreempt, equal priorities", o.advert_int.as_secs_f64()));
        setup["conntrackd"] = if o.linux_sync {
            json!(format!(
                "FTFW over UDP on ha-main, external cache {}",
                if o.external_cache {
                    "on (notify master: -c; -f; -R; -B, as primary-backup.sh)"
                } else {
                    "disabled"
                }
            ))
        } else {
            json!("NOT RUN (--linux-sync off: control experiment without state replication)")
        };
        setup["kill"] = json!("kill -9 of every keepalived and conntrackd process of the master, then `ip link set dev fw-in down; ip link set dev fw-out down` in its namespace (one shell command)");
        setup["restart"] = json!("conntrack -F and the VIPs removed (a rebooted node has neither), fw-in/fw-out up, conntrackd then keepalived started; it joins as backup (nopreempt) and requests a resync (conntrackd -n)");
        Box::new(LinuxCluster { pair: p })
    };
    // One active, the other passive and synchronized, and traffic passes.
    let first = cmd::poll_until(Duration::from_secs(30), Duration::from_millis(100), || {
        let a = pair.actives();
        (a.len() == 1).then(|| a[0])
    })
    .ok_or_else(|| {
        LabError::Other(format!(
            "{which}: no single active member\n{}",
            pair.diagnostics()
        ))
    })?;
    cmd::poll_until(Duration::from_secs(30), Duration::from_millis(100), || {
        pair.ready_passive(3 - first).then_some(())
    })
    .ok_or_else(|| {
        LabError::Other(format!(
            "{which}: the passive never synchronized\n{}",
            pair.diagnostics()
        ))
    })?;
    host::wait_for_ping(lab.client(), addr::SERVER, Duration::from_secs(20))?;
    step(
        t0,
        &format!(
            "{which}: fw{first} active, fw{} passive and synchronized",
            3 - first
        ),
    );
    let port = PORT.to_string();
    let mut server = lab.server().spawn(
        "fo-server",
        &[
            "/usr/bin/python3",
            "-B",
            &tool.to_string_lossy(),
            "--mode",
            "server",
            "--bind",
            addr::SERVER,
            "--port",
            &port,
            "--duration",
            "900",
        ],
    )?;
    tools::wait_event(&mut server, "ready", Duration::from_secs(10))?;
    let mut long = LongLived {
        traffic: Traffic::start(&lab, &tool, &format!("fo-long-{which}"), o.connections)?,
        lost: Vec::new(),
        stream_lost: false,
    };
    step(
        t0,
        &format!(
            "{which}: {} long-lived connections + stream open",
            o.connections
        ),
    );
    let mut rounds = Vec::new();
    let mut error = None;
    for n in 1..=o.rounds {
        match round(pair.as_mut(), &lab, &tool, &server, &mut long, o, n, t0) {
            Ok(v) if v["fatal"] == true => {
                rounds.push(v["round"].clone());
                error = Some(format!(
                    "round {n}: the cluster did not recover (see diagnostics)"
                ));
                break;
            }
            Ok(v) => rounds.push(v),
            Err(e) => {
                let d = pair.diagnostics();
                eprintln!("{which} round {n} FAILED: {e}\n{d}");
                error = Some(format!("round {n}: {e}"));
                break;
            }
        }
    }
    // The long-lived set at the end: still delivering after the last takeover?
    std::thread::sleep(Duration::from_millis(500));
    let end_status = long.traffic.status().unwrap_or(Value::Null);
    let recent = wall() - 1.0;
    let stalled_at_end = long
        .traffic
        .lost_since(&end_status, recent)
        .into_iter()
        .filter(|i| !long.lost.contains(i))
        .count();
    long.traffic.proc.stop();
    server.stop();
    let mut role_changes = pair.role_changes();
    // One takeover per round, plus the first election.
    role_changes["expected"] = json!(rounds.len() + 1);
    drop(pair);
    let long_lost = long.lost.len() + stalled_at_end + usize::from(long.stream_lost);
    let col = |k: &str| -> Vec<f64> { rounds.iter().filter_map(|r| r[k].as_f64()).collect() };
    let lost: u64 = rounds.iter().filter_map(|r| r["lost"].as_u64()).sum();
    let total: u64 = rounds
        .iter()
        .filter_map(|r| r["connections"].as_u64())
        .sum();
    // tandem-gen's view: per round the largest silence of either
    // direction, and the frames lost.
    let gen_gaps: Vec<f64> = rounds
        .iter()
        .filter_map(|r| r["gen"]["max_gap_ms"].as_array())
        .map(|a| a.iter().filter_map(Value::as_f64).fold(0.0, f64::max))
        .collect();
    let gen_lost: u64 = rounds
        .iter()
        .filter_map(|r| r["gen"]["lost"].as_u64())
        .sum();
    Ok(json!({
        "gen_gap_ms": stats(&gen_gaps), "gen_lost_total": gen_lost,
        "cluster": which, "setup": setup, "rounds_done": rounds.len(), "error": error,
        "connections_total": total, "connections_lost": lost,
        "long_lived_connections": o.connections + 1, "long_lived_lost": long_lost,
        "role_changes": role_changes,
        "gap_ms": stats(&col("gap_ms")),
        "failover_gap_ms": stats(&col("failover_gap_ms")),
        "baseline_gap_ms": stats(&col("baseline_gap_ms")),
        "active_after_ms": stats(&col("active_after_ms")),
        "restart_ready_s": stats(&col("restart_ready_s")),
        "rounds": rounds,
    }))
}

fn run(o: &Opts) -> Result<bool> {
    let t0 = Instant::now();
    if o.clusters.iter().any(|c| c == "tandem") {
        node::find_bin("tandemd")?;
        node::find_bin("tandemctl")?;
    }
    let mut results = Vec::new();
    for which in &o.clusters {
        let r = match run_cluster(which, o, t0) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{which}: FAILED: {e}");
                json!({"cluster": which, "error": e.to_string(), "rounds_done": 0})
            }
        };
        results.push(r);
    }
    println!(
        "\n{:<7} {:>6} {:>10} {:>10} {:>22} {:>22} {:>22} {:>12}",
        "cluster",
        "rounds",
        "lost",
        "long lost",
        "gap min/med/max ms",
        "kill gap min/med/max",
        "no-kill gap min/med/max",
        "active ms med"
    );
    let f = |v: &Value, k: &str| v[k].as_f64().map_or("-".to_string(), |x| format!("{x:.0}"));
    let mmm = |v: &Value| format!("{}/{}/{}", f(v, "min"), f(v, "median"), f(v, "max"));
    for r in &results {
        println!(
            "{:<7} {:>6} {:>10} {:>10} {:>22} {:>22} {:>22} {:>12}",
            r["cluster"].as_str().unwrap_or("?"),
            r["rounds_done"],
            format!("{}/{}", r["connections_lost"], r["connections_total"]),
            format!("{}/{}", r["long_lived_lost"], r["long_lived_connections"]),
            mmm(&r["gap_ms"]),
            mmm(&r["failover_gap_ms"]),
            mmm(&r["baseline_gap_ms"]),
            f(&r["active_after_ms"], "median"),
        );
    }
    let get = |c: &str, k: &str, s: &str| {
        results
            .iter()
            .find(|r| r["cluster"] == c)
            .and_then(|r| r[k][s].as_f64())
    };
    let ratio = |k: &str, s: &str| match (get("tandem", k, s), get("linux", k, s)) {
        (Some(t), Some(l)) if l > 0.0 => Some(t / l),
        _ => None,
    };
    let r_med = ratio("gap_ms", "median");
    let r_max = ratio("gap_ms", "max");
    if let (Some(a), Some(b)) = (r_med, r_max) {
        println!("largest gap, tandem / linux: median {a:.3}, max {b:.3}");
    }
    let ok = results
        .iter()
        .all(|r| r["error"].is_null() && r["rounds_done"].as_u64() == Some(u64::from(o.rounds)));
    let doc = json!({
        "benchmark": "failover by killing the active member under live TCP traffic, tandem vs Linux (keepalived + conntrackd)",
        "rounds": o.rounds,
        "fault": o.fault.name(),
        "connections_per_round": o.connections,
        "stream": "one TCP connection, 200 bytes every 1 ms each way, every reception timestamped; gap = largest silence between two receptions, either direction",
        "idle_connections": "a line every 200 ms each (random phase), echoed; lost = errored/reset or no echo received after the takeover within 20 s",
        "sets": "per round a fresh set (stream + N connections) opened before the kill and closed after the round; plus one long-lived set (stream + N) opened before round 1 and kept through every round (so it crosses every takeover and every bulk sync to a restarted member)",
        "gaps": "gap_ms = largest silence of either stream, either direction, in the round; failover_gap_ms = the largest one ending after the kill; baseline_gap_ms = the largest one before the kill (noise of this machine)",
        "clusters": results,
        "ratio_gap_median_tandem_linux": r_med,
        "ratio_gap_max_tandem_linux": r_max,
        "load_average": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        "unix_time": wall() as u64,
    });
    if let Some(p) = o.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(p)
            .map_err(|e| LabError::io(format!("creating {}", p.display()), e))?;
    }
    std::fs::write(
        &o.out,
        serde_json::to_string_pretty(&doc).unwrap_or_default(),
    )
    .map_err(|e| LabError::io(format!("writing {}", o.out.display()), e))?;
    println!("wrote {}", o.out.display());
    Ok(ok)
}
