//! The far end of a link aggregate in end-to-end tests: a DPDK bond (802.3ad
//! or active-backup) over af_packet ports on the given kernel interfaces,
//! bridged to one more af_packet port. Every frame received on the bond
//! goes out of the port and every frame received on the port goes out of
//! the bond. The Linux kernel here has no bonding driver, so an LACP
//! partner for tandemd has to be DPDK.
//!
//! ```text
//! bond-partner --file-prefix P --bond-member IFACE --bond-member IFACE \
//!              [--mode 4|1] [--lacp-timers dpdk|fast] --port IFACE
//! ```
//!
//! Prints one JSON line per second on stdout:
//! `{"t_s":3,"mode":4,"members":["m0","m1"],"up":["m0","m1"],
//!   "active":["m0","m1"],"active_members":2,"primary":"m0",
//!   "bond_rx":..,"bond_tx":..,"port_rx":..,"port_tx":..,"dropped":..,
//!   "failovers":0}`
//! so a test can wait for `"active_members":2`. `active` is what
//! `tandem_dataplane::dpdk::bond_info` reports: the members in distribution
//! (802.3ad) or the current one (active-backup), leaving out members whose
//! kernel interface has no carrier. In active-backup mode the carrier of
//! the members is followed every 100 ms (`bond_follow_carriers`).
//!
//! Runs until SIGTERM or SIGINT, whose default action ends it: the EAL runs
//! with `--no-huge --no-shconf`, so nothing is left behind (the af_packet
//! sockets close with the process).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use tandem_dataplane::dpdk::{
    bond_follow_carriers, bond_info, port_kernel_interface, set_bond_lacp_timers, set_promiscuous,
    BondInfo, Eal, LacpTimers, Mbuf, Mempool, Port, PortSetup, RxQueue, TxQueue,
};

/// A DPDK bond bridged to one port: the LACP / active-backup partner of
/// tandemd in end-to-end tests.
#[derive(Parser, Debug)]
struct Args {
    /// DPDK --file-prefix (unique per process on the machine).
    #[arg(long)]
    file_prefix: String,
    /// A kernel interface to make a bond member (give it twice or more).
    #[arg(long = "bond-member", required = true)]
    bond_members: Vec<String>,
    /// Bonding mode: 4 (802.3ad, LACP) or 1 (active-backup).
    #[arg(long, default_value_t = 4, value_parser = parse_mode)]
    mode: u8,
    /// 802.3ad timers: DPDK's defaults (a LACPDU every 29 s, a silent
    /// partner noticed after 90 s) or fast (every second, noticed after
    /// 3 s). Must match the other end's, which must be DPDK too for fast.
    #[arg(long, value_enum, default_value_t = Timers::Dpdk)]
    lacp_timers: Timers,
    /// The kernel interface bridged to the bond.
    #[arg(long)]
    port: String,
    /// The EAL's lcore (the CPU the forwarding loop is pinned to).
    #[arg(long, default_value_t = 0)]
    lcore: u32,
    /// DPDK memory in MiB (no hugepages).
    #[arg(long, default_value_t = 256)]
    memory_mb: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Timers {
    /// DPDK 22.11's defaults.
    Dpdk,
    /// LacpTimers::FAST.
    Fast,
}

fn parse_mode(s: &str) -> Result<u8, String> {
    match s {
        "4" => Ok(4),
        "1" => Ok(1),
        _ => Err(format!(
            "{s:?}: the modes are 4 (802.3ad) and 1 (active-backup)"
        )),
    }
}

/// Checks a kernel interface name before it goes into a vdev spec.
fn check_iface(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() < 16
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a kernel interface name (1-15 characters of [A-Za-z0-9._-])"
        ))
    }
}

/// One port's queue pair.
struct Io {
    port: Port,
    rx: RxQueue,
    tx: TxQueue,
}

impl Io {
    fn open(eal: &Eal, name: &str, pool: &std::sync::Arc<Mempool>) -> Result<Io, String> {
        let setup = PortSetup {
            queues: 1,
            rx_descriptors: 1024,
            tx_descriptors: 1024,
            mtu: 0,
        };
        let port = Port::open(eal, name, &setup, pool.clone()).map_err(|e| e.to_string())?;
        let (mut rx, mut tx) = port
            .take_queues()
            .ok_or_else(|| format!("{name}: queues already taken"))?;
        Ok(Io {
            rx: rx.remove(0),
            tx: tx.remove(0),
            port,
        })
    }
}

/// Frames moved from `from` to `to`: (received, sent). What `to` does not
/// take is dropped (freed).
fn forward(from: &mut Io, to: &mut Io, buf: &mut Vec<Mbuf>) -> (usize, usize) {
    let got = from.rx.rx_burst(buf, 64);
    let sent = if buf.is_empty() {
        0
    } else {
        to.tx.tx_burst(buf)
    };
    buf.clear();
    (got, sent)
}

fn names(ids: &[u16], of: &dyn Fn(u16) -> String) -> Vec<String> {
    ids.iter().map(|&p| of(p)).collect()
}

fn report(t: Duration, info: &BondInfo, c: &Counters, of: &dyn Fn(u16) -> String) -> String {
    serde_json::json!({
        "t_s": t.as_secs(),
        "mode": info.mode.number(),
        "members": names(&info.members, of),
        "up": names(&info.up, of),
        "active": names(&info.active, of),
        "active_members": info.active.len(),
        "primary": info.primary.map(of),
        "bond_rx": c.bond_rx,
        "bond_tx": c.bond_tx,
        "port_rx": c.port_rx,
        "port_tx": c.port_tx,
        "dropped": c.dropped,
        "failovers": c.failovers,
    })
    .to_string()
}

#[derive(Default)]
struct Counters {
    bond_rx: u64,
    bond_tx: u64,
    port_rx: u64,
    port_tx: u64,
    dropped: u64,
    failovers: u64,
}

fn run(a: &Args) -> Result<(), String> {
    for i in a.bond_members.iter().chain([&a.port]) {
        check_iface(i)?;
    }
    if a.bond_members.contains(&a.port) {
        return Err(format!("{} is both a bond member and the port", a.port));
    }
    for (i, m) in a.bond_members.iter().enumerate() {
        if a.bond_members[..i].contains(m) {
            return Err(format!("{m} is given twice as a bond member"));
        }
    }
    let mut args: Vec<String> = vec![
        "bond-partner".into(),
        format!("--file-prefix={}", a.file_prefix),
        "-l".into(),
        a.lcore.to_string(),
        "--no-huge".into(),
        "--no-shconf".into(),
        "-m".into(),
        a.memory_mb.to_string(),
        "--no-pci".into(),
        "--no-telemetry".into(),
        "--log-level=warning".into(),
    ];
    let mut slaves = String::new();
    for (i, m) in a.bond_members.iter().enumerate() {
        args.push(format!("--vdev=net_af_packet{i},iface={m},framecnt=8192"));
        slaves.push_str(&format!(",slave=net_af_packet{i}"));
    }
    let port_dev = format!("net_af_packet{}", a.bond_members.len());
    args.push(format!("--vdev={port_dev},iface={},framecnt=8192", a.port));
    args.push(format!("--vdev=net_bonding0,mode={}{slaves}", a.mode));

    let eal = Eal::init(&args).map_err(|e| e.to_string())?;
    let pool = Mempool::new(&eal, "partner_mbufs", 16383, 128).map_err(|e| e.to_string())?;
    let mut bond = Io::open(&eal, "net_bonding0", &pool)?;
    let mut port = Io::open(&eal, &port_dev, &pool)?;
    let bond_id = bond.port.id();
    // A bridge takes every frame; an 802.3ad bond over af_packet members
    // would even drop broadcasts (ARP) otherwise.
    for p in [bond_id, port.port.id()] {
        set_promiscuous(p, true).map_err(|e| e.to_string())?;
    }
    if a.mode == 4 && a.lacp_timers == Timers::Fast {
        set_bond_lacp_timers(bond_id, &LacpTimers::FAST).map_err(|e| e.to_string())?;
    }
    let of = |p: u16| port_kernel_interface(p).unwrap_or_else(|| format!("port{p}"));

    let start = Instant::now();
    let mut next_carrier = start;
    let mut next_report = start + Duration::from_secs(1);
    let mut c = Counters::default();
    let mut buf: Vec<Mbuf> = Vec::with_capacity(64);
    loop {
        let (r1, s1) = forward(&mut bond, &mut port, &mut buf);
        let (r2, s2) = forward(&mut port, &mut bond, &mut buf);
        // LACPDUs leave only from inside a transmit call on the bond.
        bond.tx.kick();
        c.bond_rx += r1 as u64;
        c.port_tx += s1 as u64;
        c.port_rx += r2 as u64;
        c.bond_tx += s2 as u64;
        c.dropped += (r1 - s1 + r2 - s2) as u64;
        let now = Instant::now();
        if now >= next_carrier {
            next_carrier = now + Duration::from_millis(100);
            match bond_follow_carriers(bond_id) {
                Ok(Some(p)) => {
                    c.failovers += 1;
                    eprintln!("bond-partner: failed over to {}", of(p));
                }
                Ok(None) => {}
                Err(e) => eprintln!("bond-partner: {e}"),
            }
        }
        if now >= next_report {
            next_report += Duration::from_secs(1);
            match bond_info(bond_id) {
                Ok(Some(info)) => println!("{}", report(now - start, &info, &c, &of)),
                Ok(None) => return Err("net_bonding0 is not a bond".into()),
                Err(e) => eprintln!("bond-partner: {e}"),
            }
        }
        if r1 == 0 && r2 == 0 {
            // Idle: yield the core (the lab shares two), well within the
            // 100 ms the 802.3ad machines allow between bursts.
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

fn main() -> ExitCode {
    let a = Args::parse();
    match run(&a) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bond-partner: {e}");
            ExitCode::FAILURE
        }
    }
}
