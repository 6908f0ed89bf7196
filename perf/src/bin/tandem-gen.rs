//! tandem-gen: a one-core DPDK traffic generator for measuring a
//! dataplane. It sends UDP/IPv4 frames on port A and receives them on
//! port B (with `--bidir` also B -> A), all inside 198.18.0.0/15; every
//! frame carries a flow id, a per-flow sequence number and a TSC time
//! stamp, so the receiving side counts loss, reordering, duplicates and
//! one-way latency per flow.
//!
//! ```text
//! tandem-gen --port-a net_memif0,role=client,socket=/tmp/x/a.sock \
//!            --port-b net_memif1,role=client,socket=/tmp/x/b.sock \
//!            [--bidir] [--flows 1] [--size 64 | --imix] [--rate 0 | --rate-percent P] \
//!            [--duration 10] [--warmup 1] [--dst-mac MAC] [--lcore 0]
//! ```
//!
//! stdout: one JSON line per second, `{"t":..,"tx_pps":..,"rx_pps":..}`,
//! then one final JSON line (see [`tandem_perf::gen::Report`] for its
//! keys). DPDK's log and errors go to stderr. One thread does everything:
//! it sends and polls both ports' receive queues in every iteration (a
//! memif client must keep receiving on a port for its peer to send to it).
//!
//! With `--tcp-conns RATE` it measures new TCP connections per second
//! instead: the clients behind port A open connections (SYN, ACK, one data
//! segment with FIN, last ACK) to the servers behind port B, which the
//! generator also plays, statelessly (see [`tandem_perf::gen_tcp`]); the
//! final line is a [`tandem_perf::gen_tcp::TcpReport`].
//!
//! The EAL runs with `--in-memory` (hugepages must be mounted and
//! reserved) or, with `--no-huge`, with `--no-huge --no-shconf`: nothing
//! is left behind in either case. SIGINT/SIGTERM end the run early with a
//! report.

use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::Parser;
use tandem_dataplane::dpdk::{
    self, DpdkError, Eal, Mbuf, Mempool, Port, PortSetup, RxQueue, TxQueue,
};
use tandem_dataplane::wire::EthernetAddress;
use tandem_perf::gen::{
    arp_reply, arp_request, arp_sender, check_seconds, in_bench_net, memif_client_socket, restamp,
    AddrRange, FlowPlan, Pacer, PortSpec, Probe, Report, RxAccount, Sizes, Template, Tick,
    Timeline, FCS_LEN,
};
use tandem_perf::gen_tcp::{
    ConnPlan, Replies, TcpClient, TcpPlanError, TcpReport, TcpServer, TcpTick, MAX_CONN_TIMEOUT,
    MAX_FRAME, MAX_OPEN,
};

/// A DPDK traffic generator: UDP flows inside 198.18.0.0/15 from port A to
/// port B (and back with --bidir), with per-flow loss, reordering,
/// duplicates and latency.
#[derive(Parser, Debug)]
#[command(name = "tandem-gen")]
struct Args {
    /// Port A (sends): a DPDK vdev spec, e.g.
    /// net_memif0,role=client,socket=/tmp/x/a.sock or
    /// net_af_packet0,iface=veth0,framecnt=8192, or the PCI address of a
    /// NIC bound to vfio-pci (0000:03:00.0).
    #[arg(long)]
    port_a: String,
    /// Port B (receives): a vdev spec with a different device name, or
    /// another PCI address.
    #[arg(long)]
    port_b: String,
    /// Send both ways: A -> B and B -> A (the reply direction: addresses
    /// and ports swapped), each at --rate.
    #[arg(long)]
    bidir: bool,
    /// Source addresses of the A -> B flows: a prefix, a range a-b or one
    /// address, inside 198.18.0.0/15.
    #[arg(long, default_value = "198.18.1.10-198.18.1.250")]
    src_net: String,
    /// Destination addresses of the A -> B flows, inside 198.18.0.0/15.
    #[arg(long, default_value = "198.18.2.10")]
    dst_net: String,
    /// UDP destination port of the A -> B flows.
    #[arg(long, default_value_t = 9)]
    dst_port: u16,
    /// Destination MAC of the frames sent on A (the device under test's
    /// port facing A). Default: port B's own MAC (right for a wire or an
    /// L2 forwarder such as testpmd io).
    #[arg(long)]
    dst_mac: Option<EthernetAddress>,
    /// Destination MAC of the frames sent on B with --bidir. Default: port
    /// A's own MAC.
    #[arg(long)]
    dst_mac_b: Option<EthernetAddress>,
    /// The gateway the frames of A go through (a router or firewall
    /// pair's address on A's segment, inside 198.18.0.0/15): its MAC is
    /// resolved by ARP when --dst-mac is not given, and every ARP from it
    /// (a gratuitous one after a failover) moves A's frames to the MAC it
    /// names. UDP mode only.
    #[arg(long, conflicts_with = "tcp_conns")]
    gw_a: Option<Ipv4Addr>,
    /// The same for the frames of B with --bidir.
    #[arg(long, conflicts_with = "tcp_conns")]
    gw_b: Option<Ipv4Addr>,
    /// Microseconds to sleep in a loop turn that sent and received
    /// nothing, 0 to 10000 (0: poll without a pause). For paced runs on a
    /// machine shared with the device under test.
    #[arg(long, default_value_t = 0)]
    idle_sleep_us: u64,
    /// Distinct flows (5-tuples) per direction, spread over the source
    /// addresses first, then over source ports 1024-65535.
    #[arg(long, default_value_t = 1)]
    flows: u64,
    /// Frame size in bytes with the 4-byte FCS, 64 to 1518.
    #[arg(long, default_value_t = 64, conflicts_with = "imix")]
    size: u32,
    /// Simple IMIX instead of one size: 7:4:1 of 64, 594 and 1518 bytes.
    #[arg(long)]
    imix: bool,
    /// Frames per second per direction; 0 sends as fast as the port takes.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Instead of --rate: this percentage (more than 0, at most 100) of
    /// port A's line rate as the driver reports its link speed, counting
    /// 20 bytes of preamble and gap per frame (10GbE at 64 B: 14.88 Mpps
    /// for 100). Virtual devices that report no speed are refused.
    #[arg(long, conflicts_with_all = ["rate", "tcp_conns"])]
    rate_percent: Option<f64>,
    /// Seconds measured (after the warm-up), at most 3600.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds sent before the measured period and left out of its
    /// counts, at most 3600.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// CPU (and EAL lcore) the generator runs on.
    #[arg(long, default_value_t = 0)]
    lcore: u32,
    /// DPDK --file-prefix (unique per DPDK process on the machine).
    /// Default: tandem-gen-<pid>.
    #[arg(long)]
    file_prefix: Option<String>,
    /// Run the EAL without hugepages (--no-huge --no-shconf): for
    /// functional tests; rates are much lower.
    #[arg(long)]
    no_huge: bool,
    /// DPDK memory in MiB with --no-huge.
    #[arg(long, default_value_t = 512)]
    memory_mb: u32,
    /// Frames per TX burst, 1 to 256.
    #[arg(long, default_value_t = 32)]
    burst: usize,
    /// Mbufs in the packet pool.
    #[arg(long, default_value_t = 16383)]
    mbufs: u32,
    /// Seconds to wait for both links to come up (a memif client connects
    /// to its server).
    #[arg(long, default_value_t = 10.0)]
    link_timeout: f64,
    /// DPDK log level (EAL --log-level), e.g. warning, notice, info.
    #[arg(long, default_value = "warning")]
    log_level: String,
    /// After the report, keep both ports open without polling them for up
    /// to this many seconds, until SIGINT or SIGTERM: the device under
    /// test can be stopped first. DPDK 22.11's memif PMD can crash a
    /// process that polls a port while its peer disconnects (it unmaps the
    /// rings from its interrupt thread), so neither side should poll when
    /// the other goes. 0: close at once.
    #[arg(long, default_value_t = 0.0)]
    hold_open: f64,
    /// Count the frames received per this many milliseconds of the
    /// measured period (1 to 1000; 0: off) and give them in the report
    /// as rx_timeline, with the wall-clock time of the first interval:
    /// throughput over time, e.g. across a failover. UDP mode.
    #[arg(long, default_value_t = 0)]
    timeline_ms: u32,
    /// TCP mode: open this many new connections per second (0: as fast
    /// as --max-open allows), each a whole exchange (handshake, one data
    /// segment, teardown) between a client behind port A and a server
    /// behind port B, both played by the generator. Replaces the UDP
    /// flows.
    #[arg(long, value_name = "RATE", conflicts_with_all = ["bidir", "imix", "rate", "flows", "size"])]
    tcp_conns: Option<u64>,
    /// TCP mode: most connections open at once (SYN sent, not completed
    /// nor timed out), 1 to 1048576.
    #[arg(long, default_value_t = 65536)]
    max_open: u64,
    /// TCP mode: seconds after its SYN a connection that has not
    /// completed counts as timed out (more than 0, at most 10).
    #[arg(long, default_value_t = 1.0)]
    conn_timeout: f64,
}

/// Everything checked before DPDK starts.
struct Plan {
    a_to_b: FlowPlan,
    sizes: Sizes,
    duration: f64,
    warmup: f64,
    link_timeout: f64,
    tcp: Option<TcpPlan>,
}

/// The TCP mode's settings, checked.
struct TcpPlan {
    conns: ConnPlan,
    rate: u64,
    max_open: u64,
    timeout: f64,
}

fn plan(a: &Args) -> Result<Plan, String> {
    let src = AddrRange::parse_bench("--src-net", &a.src_net).map_err(|e| e.to_string())?;
    let dst = AddrRange::parse_bench("--dst-net", &a.dst_net).map_err(|e| e.to_string())?;
    let a_to_b = FlowPlan::new(src, dst, a.dst_port, a.flows).map_err(|e| e.to_string())?;
    let sizes = if a.imix {
        Sizes::Imix
    } else {
        Sizes::fixed(a.size).map_err(|e| e.to_string())?
    };
    let duration = check_seconds("--duration", a.duration, false).map_err(|e| e.to_string())?;
    let warmup = check_seconds("--warmup", a.warmup, true).map_err(|e| e.to_string())?;
    let link_timeout =
        check_seconds("--link-timeout", a.link_timeout, false).map_err(|e| e.to_string())?;
    check_seconds("--hold-open", a.hold_open, true).map_err(|e| e.to_string())?;
    for (option, gw) in [("--gw-a", a.gw_a), ("--gw-b", a.gw_b)] {
        if let Some(ip) = gw {
            if !in_bench_net(ip) {
                return Err(format!(
                    "{option} {ip}: give the gateway's address inside 198.18.0.0/15 (the benchmarking network)"
                ));
            }
        }
    }
    if a.gw_b.is_some() && !a.bidir {
        return Err("--gw-b needs --bidir (only then are frames sent on B)".into());
    }
    if let Some(pc) = a.rate_percent {
        if !(pc > 0.0 && pc <= 100.0) {
            return Err(format!(
                "--rate-percent {pc}: give more than 0 and at most 100 (% of port A's line rate)"
            ));
        }
    }
    if a.timeline_ms > 1000 {
        return Err(format!(
            "--timeline-ms {}: give 1 to 1000 milliseconds (0: no timeline)",
            a.timeline_ms
        ));
    }
    if a.timeline_ms > 0 {
        if a.tcp_conns.is_some() {
            return Err("--timeline-ms is for the UDP mode, not with --tcp-conns".into());
        }
        let bins = duration * 1000.0 / f64::from(a.timeline_ms);
        if bins > Timeline::MAX_BINS as f64 {
            return Err(format!(
                "--timeline-ms {} over --duration {duration} s makes {bins:.0} intervals: at most {} (raise the interval or shorten the run)",
                a.timeline_ms,
                Timeline::MAX_BINS
            ));
        }
    }
    if a.idle_sleep_us > 10_000 {
        return Err(format!(
            "--idle-sleep-us {}: give 0 to 10000 microseconds",
            a.idle_sleep_us
        ));
    }
    if !(1..=dpdk::MAX_BURST).contains(&a.burst) {
        return Err(format!(
            "--burst {}: give 1 to {}",
            a.burst,
            dpdk::MAX_BURST
        ));
    }
    if a.mbufs < 4096 {
        return Err(format!(
            "--mbufs {}: give at least 4096 (the rings of both ports and the bursts in flight need them)",
            a.mbufs
        ));
    }
    let tcp = match a.tcp_conns {
        None => None,
        Some(rate) => {
            let conns = ConnPlan {
                src,
                dst,
                dport: a.dst_port,
            };
            conns
                .check_run(rate, warmup + duration)
                .map_err(|e| e.to_string())?;
            if !(1..=MAX_OPEN).contains(&a.max_open) {
                return Err(TcpPlanError::BadMaxOpen(a.max_open).to_string());
            }
            let t = a.conn_timeout;
            if !(t.is_finite() && t > 0.0 && t <= MAX_CONN_TIMEOUT) {
                return Err(TcpPlanError::BadTimeout(t).to_string());
            }
            Some(TcpPlan {
                conns,
                rate,
                max_open: a.max_open,
                timeout: t,
            })
        }
    };
    Ok(Plan {
        a_to_b,
        sizes,
        duration,
        warmup,
        link_timeout,
        tcp,
    })
}

/// One port: its queues and what it sends.
struct Side {
    port: Port,
    rx: RxQueue,
    tx: TxQueue,
    /// The port is started (a memif client's start can fail until its
    /// server accepts; its queues are not polled until then).
    started: bool,
}

impl Side {
    /// Opens the port of `option`. A memif client (`retry_start`) whose
    /// first start is turned away is kept, with the error in
    /// `last_error`: the link wait restarts it.
    fn open(
        eal: &Eal,
        option: &str,
        name: &str,
        pool: &Arc<Mempool>,
        retry_start: bool,
        last_error: &mut String,
    ) -> Result<Side, String> {
        let setup = PortSetup {
            queues: 1,
            rx_descriptors: 1024,
            tx_descriptors: 1024,
            mtu: 0,
        };
        let explain = |e: DpdkError| {
            format!("{option} ({name}): {e}. A memif client does not start when its server is not listening on the socket (start the server first); an af_packet port needs an existing interface")
        };
        let (port, started) = if retry_start {
            let (port, error) =
                Port::open_retrying_start(eal, name, &setup, pool.clone()).map_err(explain)?;
            if let Some(e) = &error {
                *last_error = e.to_string();
            }
            (port, error.is_none())
        } else {
            (
                Port::open(eal, name, &setup, pool.clone()).map_err(explain)?,
                true,
            )
        };
        let (mut rx, mut tx) = port
            .take_queues()
            .ok_or_else(|| format!("{option} ({name}): queues already taken"))?;
        Ok(Side {
            rx: rx.remove(0),
            tx: tx.remove(0),
            port,
            started,
        })
    }
}

/// The sending half of one direction.
struct Sender {
    templates: Vec<Template>,
    /// Flow id of the first template.
    flow_base: u32,
    next_seq: Vec<u64>,
    next_flow: usize,
    /// Frames built (sent or pending).
    generated: u64,
    /// Frames the port accepted.
    sent: u64,
    /// Built frames the port has not taken yet (they go first next time,
    /// with a fresh time stamp).
    pending: Vec<Mbuf>,
    pacer: Pacer,
    sizes: Sizes,
    burst: usize,
    alloc_failures: u64,
    /// Destination MAC written into every frame (it follows a gateway).
    dst: EthernetAddress,
}

impl Sender {
    #[inline]
    fn step(&mut self, pool: &Mempool, tx: &mut TxQueue, now: u64) {
        let old = self.pending.len();
        for m in &mut self.pending {
            restamp(m.data_mut(), now);
        }
        let n = self
            .pacer
            .allowance(now, self.generated)
            .min(self.burst - old);
        if n > 0 {
            if pool.alloc_bulk(&mut self.pending, n) {
                for m in &mut self.pending[old..] {
                    let size = self.sizes.nth(self.generated);
                    self.generated += 1;
                    let f = self.next_flow;
                    self.next_flow = if f + 1 == self.templates.len() {
                        0
                    } else {
                        f + 1
                    };
                    let probe = Probe {
                        flow: self.flow_base + f as u32,
                        seq: self.next_seq[f],
                        tsc: now,
                    };
                    self.next_seq[f] += 1;
                    match m.append(size - FCS_LEN as u16) {
                        Some(buf) => {
                            self.templates[f].write(buf, &probe);
                            buf[0..6].copy_from_slice(&self.dst.0);
                        }
                        None => unreachable!("a default mbuf holds a 1514-byte frame"),
                    }
                }
            } else {
                self.alloc_failures += 1;
            }
        }
        if !self.pending.is_empty() {
            self.sent += tx.tx_burst(&mut self.pending) as u64;
        }
    }
}

impl Sender {
    /// Sends to `mac` from now on, the frames not taken yet included.
    fn set_dst(&mut self, mac: EthernetAddress) {
        if self.dst != mac {
            self.dst = mac;
            for m in &mut self.pending {
                m.data_mut()[0..6].copy_from_slice(&mac.0);
            }
        }
    }
}

/// A gateway followed by its ARP frames (`--gw-a`, `--gw-b`).
struct Gateway {
    ip: Ipv4Addr,
    mac: Option<EthernetAddress>,
    /// New MACs after the first.
    moves: u64,
}

impl Gateway {
    /// Learns from an ARP frame whose sender is the gateway.
    fn learn(&mut self, frame: &[u8]) {
        if let Some((ip, mac)) = arp_sender(frame) {
            if ip == self.ip && self.mac != Some(mac) {
                if self.mac.is_some() {
                    self.moves += 1;
                }
                self.mac = Some(mac);
            }
        }
    }
}

/// The hosts a port stands for: it answers ARP for them from its MAC (so
/// that a router between the ports resolves them).
#[derive(Clone, Copy)]
struct Hosts {
    range: AddrRange,
    mac: EthernetAddress,
}

/// Receives a burst on `side` and files it, answering ARP requests for
/// `hosts`; returns how many frames came.
#[inline]
fn receive(
    side: &mut Side,
    hosts: &Hosts,
    gw: &mut Option<Gateway>,
    buf: &mut Vec<Mbuf>,
    acc: &mut RxAccount,
) -> usize {
    let n = side.rx.rx_burst(buf, 64);
    if n > 0 {
        let now = dpdk::tsc();
        let mut replies = Vec::new();
        for mut m in buf.drain(..) {
            if m.data().get(12..14) == Some(&[0x08, 0x06][..]) {
                if let Some(g) = gw {
                    g.learn(m.data());
                }
                if arp_reply(m.data_mut(), hosts.mac, |ip| hosts.range.contains(ip)) {
                    replies.push(m);
                }
                continue;
            }
            acc.frame(m.data(), now);
        }
        if !replies.is_empty() {
            side.tx.tx_burst(&mut replies);
        }
    }
    n
}

fn run(a: Args) -> Result<(), String> {
    let p = plan(&a)?;
    let spec_a = PortSpec::parse("--port-a", &a.port_a)?;
    let spec_b = PortSpec::parse("--port-b", &a.port_b)?;
    let (name_a, name_b) = (spec_a.name().to_owned(), spec_b.name().to_owned());
    if name_a == name_b {
        return Err(format!(
            "--port-a and --port-b are both {name_a}: give two different devices (net_memif0 and net_memif1, or two PCI addresses)"
        ));
    }
    let prefix = a
        .file_prefix
        .clone()
        .unwrap_or_else(|| format!("tandem-gen-{}", std::process::id()));
    let mut eal_args: Vec<String> = vec![
        "tandem-gen".into(),
        "-l".into(),
        a.lcore.to_string(),
        format!("--file-prefix={prefix}"),
        "--no-telemetry".into(),
        format!("--log-level={}", a.log_level),
    ];
    // Only the PCI devices named (none: no PCI scan at all).
    if !matches!(spec_a, PortSpec::Pci(_)) && !matches!(spec_b, PortSpec::Pci(_)) {
        eal_args.push("--no-pci".into());
    }
    eal_args.extend(spec_a.eal_args());
    eal_args.extend(spec_b.eal_args());
    if a.no_huge {
        eal_args.extend([
            "--no-huge".into(),
            "--no-shconf".into(),
            "-m".into(),
            a.memory_mb.to_string(),
        ]);
    } else {
        eal_args.push("--in-memory".into());
    }
    // A memif client cannot start before its server listens: wait for
    // the servers' sockets (bounded by --link-timeout).
    let waited = std::time::Instant::now();
    for (option, spec) in [("--port-a", &a.port_a), ("--port-b", &a.port_b)] {
        let Some(sock) = memif_client_socket(spec) else {
            continue;
        };
        loop {
            let table = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
            if sock.listening_in(&table) {
                break;
            }
            if waited.elapsed().as_secs_f64() >= p.link_timeout {
                return Err(format!(
                    "{option}: no memif server listens on {} (as /proc/net/unix shows it) after {} s: start the device under test (the memif server) first, or fix socket= / socket-abstract=",
                    sock.proc_name(),
                    p.link_timeout
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    dpdk::log_to_stderr();
    let eal = Eal::init(&eal_args).map_err(|e| {
        format!("{e}. Without hugepages (mount hugetlbfs on /dev/hugepages and reserve pages in /proc/sys/vm/nr_hugepages) run with --no-huge")
    })?;
    // Eal::init gives the thread the process's CPU set back: pin it to the
    // lcore's CPU ourselves (one busy thread, one CPU).
    if !core_affinity::set_for_current(core_affinity::CoreId {
        id: a.lcore as usize,
    }) {
        eprintln!(
            "tandem-gen: warning: could not pin to CPU {}; running unpinned",
            a.lcore
        );
    }
    let hz = eal.tsc_hz();
    let pool = Mempool::new(&eal, "tandem_gen", a.mbufs, 256).map_err(|e| e.to_string())?;
    let clients = [
        memif_client_socket(&a.port_a).is_some(),
        memif_client_socket(&a.port_b).is_some(),
    ];
    let mut last_error = String::new();
    let mut side_a = Side::open(
        &eal,
        "--port-a",
        &name_a,
        &pool,
        clients[0],
        &mut last_error,
    )?;
    let mut side_b = Side::open(
        &eal,
        "--port-b",
        &name_b,
        &pool,
        clients[1],
        &mut last_error,
    )?;
    let mut buf: Vec<Mbuf> = Vec::with_capacity(dpdk::MAX_BURST);

    // Wait for both links, receiving all the while (a memif client that
    // does not receive stalls its peer). A memif client turned away (its
    // server listened but had not started its port yet, or was too busy
    // to accept) does not retry by itself: restart it every second.
    let deadline = dpdk::tsc() + (p.link_timeout * hz as f64) as u64;
    let mut next_retry = dpdk::tsc() + hz;
    loop {
        let up_a = side_a.port.link().map(|l| l.up).unwrap_or(false);
        let up_b = side_b.port.link().map(|l| l.up).unwrap_or(false);
        if up_a && up_b {
            break;
        }
        let now = dpdk::tsc();
        if now >= deadline {
            let down: Vec<&str> = [(up_a, "--port-a"), (up_b, "--port-b")]
                .iter()
                .filter(|(up, _)| !up)
                .map(|(_, o)| *o)
                .collect();
            return Err(format!(
                "{} still down after {} s{}. A memif client needs its server running with its ports started (start the device under test first); an af_packet port needs its interface up",
                down.join(" and "),
                p.link_timeout,
                if last_error.is_empty() { String::new() } else { format!(" (last retry: {last_error})") }
            ));
        }
        if now >= next_retry {
            next_retry = now + hz;
            for (side, up, client) in [
                (&mut side_a, up_a, clients[0]),
                (&mut side_b, up_b, clients[1]),
            ] {
                if client && !up {
                    side.started = side
                        .port
                        .restart()
                        .map_err(|e| last_error = e.to_string())
                        .is_ok();
                }
            }
        }
        for side in [&mut side_a, &mut side_b] {
            if side.started {
                side.rx.rx_burst(&mut buf, 64);
            }
        }
        buf.clear();
        std::thread::sleep(std::time::Duration::from_millis(1));
    }

    let mac_a = EthernetAddress(side_a.port.mac().map_err(|e| e.to_string())?);
    let mac_b = EthernetAddress(side_b.port.mac().map_err(|e| e.to_string())?);
    let flows = p.a_to_b.flows;
    let size0 = p.sizes.nth(0);
    let hosts_a = Hosts {
        range: p.a_to_b.src,
        mac: mac_a,
    };
    let hosts_b = Hosts {
        range: p.a_to_b.dst,
        mac: mac_b,
    };
    let gateway = |ip: Option<Ipv4Addr>| {
        ip.map(|ip| Gateway {
            ip,
            mac: None,
            moves: 0,
        })
    };
    let mut gw_a = gateway(a.gw_a);
    let mut gw_b = gateway(a.gw_b);
    let mut acc = RxAccount::new(flows as usize * if a.bidir { 2 } else { 1 }, hz);
    if a.bidir {
        acc = acc.with_split(flows);
    }
    // The gateways' MACs by ARP, unless given: a request every 100 ms from
    // the first host of the side, until the link timeout.
    let resolve_deadline = dpdk::tsc() + (p.link_timeout * hz as f64) as u64;
    let mut next_request = 0;
    loop {
        let want_a = a.dst_mac.is_none() && gw_a.as_ref().is_some_and(|g| g.mac.is_none());
        let want_b = a.dst_mac_b.is_none() && gw_b.as_ref().is_some_and(|g| g.mac.is_none());
        if !want_a && !want_b {
            break;
        }
        let now = dpdk::tsc();
        if now >= resolve_deadline {
            let ip = if want_a { a.gw_a } else { a.gw_b };
            return Err(format!(
                "--gw-{} {}: no ARP answer within --link-timeout {} s (is the gateway up on that segment?)",
                if want_a { "a" } else { "b" },
                ip.map(|i| i.to_string()).unwrap_or_default(),
                p.link_timeout
            ));
        }
        if now >= next_request {
            next_request = now + hz / 10;
            for (want, side, gw, from, mac) in [
                (want_a, &mut side_a, a.gw_a, p.a_to_b.src.nth(0), mac_a),
                (want_b, &mut side_b, a.gw_b, p.a_to_b.dst.nth(0), mac_b),
            ] {
                if let (true, Some(gw)) = (want, gw) {
                    let mut m = Vec::with_capacity(1);
                    if pool.alloc_bulk(&mut m, 1) {
                        if let Some(b) = m[0].append(60) {
                            b.copy_from_slice(&arp_request(mac, from, gw));
                        }
                        side.tx.tx_burst(&mut m);
                    }
                }
            }
        }
        receive(&mut side_a, &hosts_a, &mut gw_a, &mut buf, &mut acc);
        receive(&mut side_b, &hosts_b, &mut gw_b, &mut buf, &mut acc);
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let dst_a = a
        .dst_mac
        .or(gw_a.as_ref().and_then(|g| g.mac))
        .unwrap_or(mac_b);
    let dst_b = a
        .dst_mac_b
        .or(gw_b.as_ref().and_then(|g| g.mac))
        .unwrap_or(mac_a);
    let rate = match a.rate_percent {
        None => a.rate,
        Some(pc) => {
            let speed = side_a.port.link().map(|l| l.speed_mbps).unwrap_or(0);
            let rate = tandem_perf::gen::line_rate_pps(speed, p.sizes.mean(), pc).ok_or_else(|| {
                format!("--rate-percent {pc}: port A reports no link speed (virtual devices such as memif may not): give --rate in frames per second")
            })?;
            eprintln!("tandem-gen: {pc} % of {speed} Mbit/s at {:.1} B per frame is {rate} frames/s per direction", p.sizes.mean());
            rate
        }
    };
    let sender = |src_mac, dst_mac, reverse: bool, base: u32, start: u64| {
        let templates: Vec<Template> = (0..flows)
            .map(|i| {
                let t = p.a_to_b.tuple(i);
                let t = if reverse { t.reversed() } else { t };
                Template::new(src_mac, dst_mac, &t, size0)
            })
            .collect();
        Sender {
            next_seq: vec![0; templates.len()],
            templates,
            flow_base: base,
            next_flow: 0,
            generated: 0,
            sent: 0,
            pending: Vec::with_capacity(dpdk::MAX_BURST),
            pacer: Pacer::new(rate, hz, start, a.burst),
            sizes: p.sizes,
            burst: a.burst,
            alloc_failures: 0,
            dst: dst_mac,
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(|e| format!("cannot handle signal {sig}: {e}"))?;
    }
    if let Some(tcp) = &p.tcp {
        let mut ports = Ports {
            hz,
            pool,
            a: side_a,
            b: side_b,
            mac_a,
            mac_b,
        };
        let result = run_tcp(&a, &p, tcp, &mut ports, &stop);
        hold_open(a.hold_open, &stop);
        drop(buf);
        let Ports { a, b, pool, .. } = ports;
        a.port.close();
        b.port.close();
        drop(pool);
        eal.cleanup();
        return result;
    }

    let start = dpdk::tsc();
    let mut tx_a = sender(mac_a, dst_a, false, 0, start);
    let mut tx_b = a.bidir.then(|| sender(mac_b, dst_b, true, flows, start));
    let measure_at = start + (p.warmup * hz as f64) as u64;
    let end_at = measure_at + (p.duration * hz as f64) as u64;
    let mut measuring = false;
    let mut sent_base = 0u64;
    let mut measure_start = measure_at;
    let mut rx_frames = 0u64;
    let mut next_tick = start + hz;
    let mut tick_t = 0u64;
    let mut last = (start, 0u64, 0u64);
    let total_sent = |a: &Sender, b: &Option<Sender>| a.sent + b.as_ref().map_or(0, |b| b.sent);

    let mut now = start;
    while now < end_at {
        if !measuring && now >= measure_at {
            let mut first: Vec<u64> = tx_a.next_seq.clone();
            if let Some(b) = &tx_b {
                first.extend_from_slice(&b.next_seq);
            }
            acc.start_measuring(&first);
            if a.timeline_ms > 0 {
                let unix_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                acc.start_timeline(a.timeline_ms, now, unix_ms);
            }
            // Frames built but not sent yet belong to the warm-up.
            sent_base = total_sent(&tx_a, &tx_b)
                + tx_a.pending.len() as u64
                + tx_b.as_ref().map_or(0, |b| b.pending.len() as u64);
            measure_start = now;
            measuring = true;
        }
        if now >= next_tick {
            tick_t += 1;
            let sent = total_sent(&tx_a, &tx_b);
            let dt = (now - last.0) as f64 / hz as f64;
            let line = Tick {
                t: tick_t,
                tx_pps: ((sent - last.1) as f64 / dt) as u64,
                rx_pps: ((rx_frames - last.2) as f64 / dt) as u64,
            };
            println!("{}", serde_json::to_string(&line).unwrap_or_default());
            last = (now, sent, rx_frames);
            next_tick += hz;
            if stop.load(Ordering::Relaxed) {
                break;
            }
        }
        let before = (total_sent(&tx_a, &tx_b), rx_frames);
        tx_a.step(&pool, &mut side_a.tx, now);
        if let Some(b) = &mut tx_b {
            b.step(&pool, &mut side_b.tx, now);
        }
        rx_frames += receive(&mut side_a, &hosts_a, &mut gw_a, &mut buf, &mut acc) as u64;
        rx_frames += receive(&mut side_b, &hosts_b, &mut gw_b, &mut buf, &mut acc) as u64;
        // A gateway that moved (a failover) takes the frames from now on.
        if let Some(mac) = gw_a.as_ref().and_then(|g| g.mac) {
            tx_a.set_dst(mac);
        }
        if let (Some(mac), Some(b)) = (gw_b.as_ref().and_then(|g| g.mac), &mut tx_b) {
            b.set_dst(mac);
        }
        if a.idle_sleep_us > 0 && before == (total_sent(&tx_a, &tx_b), rx_frames) {
            std::thread::sleep(std::time::Duration::from_micros(a.idle_sleep_us));
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
        now = dpdk::tsc();
    }
    let stopped_at = dpdk::tsc();
    let sent_total = total_sent(&tx_a, &tx_b);
    // What was built and not taken was never sent.
    tx_a.pending.clear();
    if let Some(b) = &mut tx_b {
        b.pending.clear();
    }
    // Drain: frames still on their way, until 50 ms without one (at most
    // 1 s).
    let quiet = hz / 20;
    let drain_end = stopped_at + hz;
    let mut last_rx = stopped_at;
    loop {
        let n = receive(&mut side_a, &hosts_a, &mut gw_a, &mut buf, &mut acc)
            + receive(&mut side_b, &hosts_b, &mut gw_b, &mut buf, &mut acc);
        let t = dpdk::tsc();
        if n > 0 {
            last_rx = t;
        }
        if t >= drain_end || t - last_rx >= quiet {
            break;
        }
    }
    let (sent, duration) = if measuring {
        (
            sent_total.saturating_sub(sent_base),
            (stopped_at - measure_start) as f64 / hz as f64,
        )
    } else {
        (0, 0.0)
    };
    let mut report = Report::new(sent, &acc, duration, flows, p.sizes, a.bidir, rate);
    report.gateway_moves = [&gw_a, &gw_b]
        .iter()
        .filter_map(|g| g.as_ref().map(|g| g.moves))
        .sum();
    println!("{}", serde_json::to_string(&report).unwrap_or_default());
    let failures = tx_a.alloc_failures + tx_b.as_ref().map_or(0, |b| b.alloc_failures);
    if failures > 0 {
        eprintln!("tandem-gen: the packet pool ran dry {failures} times (raise --mbufs)");
    }
    hold_open(a.hold_open, &stop);
    drop(tx_a);
    drop(tx_b);
    drop(buf);
    side_a.port.close();
    side_b.port.close();
    drop(pool);
    eal.cleanup();
    Ok(())
}

/// Both ports, up, and what the TCP mode needs of them.
struct Ports {
    hz: u64,
    pool: Arc<Mempool>,
    a: Side,
    b: Side,
    mac_a: EthernetAddress,
    mac_b: EthernetAddress,
}

/// The frame counts of the TCP mode's loop.
#[derive(Default)]
struct Frames {
    tx: u64,
    rx: u64,
    /// Answers the TX ring did not take.
    tx_dropped: u64,
    /// Answers not sent for want of an mbuf.
    alloc_failures: u64,
}

/// Puts `frame` into `m` (resized to it).
#[inline]
fn fill(m: &mut Mbuf, frame: &[u8]) -> bool {
    if m.set_len(frame.len()) {
        m.data_mut().copy_from_slice(frame);
        true
    } else {
        false
    }
}

/// Answers a side keeps when its TX ring is full, to send first next
/// time; beyond this many they are dropped (and their connections time
/// out).
const MAX_PENDING: usize = 2048;

/// Sends `tx` on `side`; what the ring does not take stays in `tx` for
/// the next call (in order), up to [`MAX_PENDING`] frames: the rest is
/// dropped and counted.
#[inline]
fn flush(side: &mut Side, tx: &mut Vec<Mbuf>, f: &mut Frames) {
    if !tx.is_empty() {
        f.tx += side.tx.tx_burst(tx) as u64;
        if tx.len() > MAX_PENDING {
            f.tx_dropped += (tx.len() - MAX_PENDING) as u64;
            tx.truncate(MAX_PENDING);
        }
    }
}

/// The client's side: receives on port A, answers ARP for the clients
/// and the server's segments (reusing the received mbuf for the first
/// answer); returns how many frames came.
#[inline]
fn receive_client(
    ports: &mut Ports,
    hosts: &Hosts,
    client: &mut TcpClient,
    bufs: &mut (Vec<Mbuf>, Vec<Mbuf>),
    replies: &mut Replies,
    f: &mut Frames,
) -> usize {
    let (rx, tx) = bufs;
    let n = ports.a.rx.rx_burst(rx, 64);
    if n == 0 {
        flush(&mut ports.a, tx, f);
        return 0;
    }
    let now = dpdk::tsc();
    for mut m in rx.drain(..) {
        if m.data().get(12..14) == Some(&[0x08, 0x06][..]) {
            if arp_reply(m.data_mut(), hosts.mac, |ip| hosts.range.contains(ip)) {
                tx.push(m);
            }
            continue;
        }
        client.handle(m.data(), now, replies);
        let mut reuse = Some(m);
        for frame in replies.iter() {
            let mut out = match reuse.take() {
                Some(m) => m,
                None => match ports.pool.alloc() {
                    Some(m) => m,
                    None => {
                        f.alloc_failures += 1;
                        continue;
                    }
                },
            };
            if fill(&mut out, frame) {
                tx.push(out);
            }
        }
    }
    f.rx += n as u64;
    flush(&mut ports.a, tx, f);
    n
}

/// The server's side: receives on port B, answers ARP for the servers
/// and the client's SYNs and FINs in the received mbuf; returns how many
/// frames came.
#[inline]
fn receive_server(
    ports: &mut Ports,
    hosts: &Hosts,
    server: &mut TcpServer,
    bufs: &mut (Vec<Mbuf>, Vec<Mbuf>),
    f: &mut Frames,
) -> usize {
    let (rx, tx) = bufs;
    let n = ports.b.rx.rx_burst(rx, 64);
    if n == 0 {
        flush(&mut ports.b, tx, f);
        return 0;
    }
    let mut frame = [0u8; MAX_FRAME];
    for mut m in rx.drain(..) {
        if m.data().get(12..14) == Some(&[0x08, 0x06][..]) {
            if arp_reply(m.data_mut(), hosts.mac, |ip| hosts.range.contains(ip)) {
                tx.push(m);
            }
            continue;
        }
        if let Some(len) = server.handle(m.data(), &mut frame) {
            if fill(&mut m, &frame[..len]) {
                tx.push(m);
            }
        }
    }
    f.rx += n as u64;
    flush(&mut ports.b, tx, f);
    n
}

/// The TCP mode: opens `--tcp-conns` connections per second from the
/// clients behind A to the servers behind B and answers both ends, for
/// `--warmup` + `--duration`; then follows the connections still open to
/// their end (at most `--conn-timeout`) and prints the report.
fn run_tcp(
    a: &Args,
    p: &Plan,
    tcp: &TcpPlan,
    ports: &mut Ports,
    stop: &AtomicBool,
) -> Result<(), String> {
    let hz = ports.hz;
    let dut_a = a.dst_mac.unwrap_or(ports.mac_b);
    let mut client = TcpClient::new(tcp.conns, ports.mac_a, dut_a, tcp.max_open, tcp.timeout, hz)
        .map_err(|e| e.to_string())?;
    let mut server = TcpServer::new(tcp.conns, ports.mac_b);
    let hosts_a = Hosts {
        range: tcp.conns.src,
        mac: ports.mac_a,
    };
    let hosts_b = Hosts {
        range: tcp.conns.dst,
        mac: ports.mac_b,
    };
    let mut bufs_a = (
        Vec::with_capacity(dpdk::MAX_BURST),
        Vec::with_capacity(2 * dpdk::MAX_BURST),
    );
    let mut bufs_b = (
        Vec::with_capacity(dpdk::MAX_BURST),
        Vec::with_capacity(dpdk::MAX_BURST),
    );
    let mut syns: Vec<Mbuf> = Vec::with_capacity(dpdk::MAX_BURST);
    let mut replies = Replies::default();
    let mut frame = [0u8; MAX_FRAME];
    let mut f = Frames::default();
    let mut syn_alloc_failures = 0u64;

    let start = dpdk::tsc();
    let pacer = Pacer::new(tcp.rate, hz, start, a.burst);
    let measure_at = start + (p.warmup * hz as f64) as u64;
    let end_at = measure_at + (p.duration * hz as f64) as u64;
    let mut measuring = false;
    let mut measure_start = measure_at;
    let mut next_tick = start + hz;
    let mut tick_t = 0u64;
    let mut last = (start, client.all, 0u64, 0u64);
    let mut now = start;
    while now < end_at {
        if !measuring && now >= measure_at {
            client.start_measuring();
            server.start_measuring(client.measure_from());
            measure_start = now;
            measuring = true;
        }
        if now >= next_tick {
            tick_t += 1;
            let dt = (now - last.0) as f64 / hz as f64;
            let c = client.all;
            let ps = |n: u64, before: u64| ((n - before) as f64 / dt) as u64;
            let line = TcpTick {
                t: tick_t,
                opened_ps: ps(c.opened, last.1.opened),
                completed_ps: ps(c.completed, last.1.completed),
                failed_ps: ps(c.failed(), last.1.failed()),
                open: client.open(),
                tx_pps: ps(f.tx, last.2),
                rx_pps: ps(f.rx, last.3),
            };
            println!("{}", serde_json::to_string(&line).unwrap_or_default());
            last = (now, c, f.tx, f.rx);
            next_tick += hz;
            if stop.load(Ordering::Relaxed) {
                break;
            }
        }
        // Open: as many as the rate, the open cap and the tuples allow,
        // once port A's answers are out (they go first).
        let n = if bufs_a.1.is_empty() {
            pacer
                .allowance(now, client.next_index())
                .min(client.room() as usize)
        } else {
            0
        };
        if n > 0 {
            if ports.pool.alloc_bulk(&mut syns, n) {
                for m in &mut syns {
                    let Some(len) = client.open_next(now, &mut frame) else {
                        unreachable!("no more SYNs than room() allows")
                    };
                    match m.append(len as u16) {
                        Some(buf) => buf.copy_from_slice(&frame[..len]),
                        None => unreachable!("a default mbuf holds a 76-byte frame"),
                    }
                }
                f.tx += ports.a.tx.tx_burst(&mut syns) as u64;
                // What the ring did not take goes again next time.
                client.unopen(syns.len() as u64);
                syns.clear();
            } else {
                syn_alloc_failures += 1;
            }
        }
        receive_client(
            ports,
            &hosts_a,
            &mut client,
            &mut bufs_a,
            &mut replies,
            &mut f,
        );
        receive_server(ports, &hosts_b, &mut server, &mut bufs_b, &mut f);
        client.poll_timeouts(now);
        if stop.load(Ordering::Relaxed) {
            break;
        }
        now = dpdk::tsc();
    }
    let stopped_at = dpdk::tsc();
    let in_flight = client.open();
    // Follow the connections still open to their end: until none is
    // left and the server has every last ACK, at most --conn-timeout (and
    // 10 ms).
    let drain_end = stopped_at + (tcp.timeout * hz as f64) as u64 + hz / 100;
    loop {
        receive_client(
            ports,
            &hosts_a,
            &mut client,
            &mut bufs_a,
            &mut replies,
            &mut f,
        );
        receive_server(ports, &hosts_b, &mut server, &mut bufs_b, &mut f);
        let t = dpdk::tsc();
        client.poll_timeouts(t);
        if client.settled_with(&server) || t >= drain_end {
            break;
        }
    }
    client.finish(dpdk::tsc());
    // Answers never sent.
    f.tx_dropped += (bufs_a.1.len() + bufs_b.1.len()) as u64;
    bufs_a.1.clear();
    bufs_b.1.clear();
    let duration = if measuring {
        (stopped_at - measure_start) as f64 / hz as f64
    } else {
        0.0
    };
    let report = TcpReport::new(
        &client,
        &server,
        in_flight,
        duration,
        tcp.rate,
        f.tx_dropped,
    );
    println!("{}", serde_json::to_string(&report).unwrap_or_default());
    if client.exhausted() {
        eprintln!(
            "tandem-gen: every tuple of --src-net {} was used ({}); it stopped opening connections: widen --src-net or lower --tcp-conns or the time",
            tcp.conns.src,
            tcp.conns.tuples()
        );
    }
    if syn_alloc_failures + f.alloc_failures > 0 {
        eprintln!(
            "tandem-gen: the packet pool ran dry {} times (raise --mbufs)",
            syn_alloc_failures + f.alloc_failures
        );
    }
    Ok(())
}

/// `--hold-open`: the report is out; wait (ports open, not polled) for
/// SIGINT/SIGTERM, at most `seconds`. A run ended by a signal does not
/// wait.
fn hold_open(seconds: f64, stop: &AtomicBool) {
    if seconds <= 0.0 || stop.load(Ordering::Relaxed) {
        return;
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let end = std::time::Instant::now() + std::time::Duration::from_secs_f64(seconds);
    while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < end {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tandem-gen: error: {e}");
            ExitCode::FAILURE
        }
    }
}
