//! Whole-packet benchmark of one worker's sans-IO path: the router with the
//! stateful firewall (parse, connection lookup and tracking, policy on the
//! ACL classifier, connection creation), against the plain router in the
//! same process as the baseline. No NIC: frames are copied from templates
//! into a buffer (as a NIC would have written them) and processed in place.
//!
//! ```text
//! bench-firewall [--flows 100000] [--packets 5000000] [--rules 10]
//! ```
//!
//! Prints a table and one JSON line.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use tandem_config::policy::PolicyConfig;
use tandem_dataplane::conntrack::ShardConfig;
use tandem_dataplane::dpdk::Eal;
use tandem_dataplane::firewall::{Firewall, FirewallCounters, FirewallSettings};
use tandem_dataplane::neigh::{NeighbourTable, NeighbourTimers};
use tandem_dataplane::policy::Policy;
use tandem_dataplane::router::{Action, Router, RouterInterface};
use tandem_dataplane::wire::{checksum, EthernetAddress};

/// Benchmark the firewall path of a worker.
#[derive(Parser, Debug)]
struct Args {
    /// Distinct flows (connections created, then used).
    #[arg(long, default_value_t = 100_000)]
    flows: usize,
    /// Packets per established-traffic pass.
    #[arg(long, default_value_t = 5_000_000)]
    packets: usize,
    /// Filter rules in the policy (the flows match the last one).
    #[arg(long, default_value_t = 10)]
    rules: usize,
}

const LAN_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 1]);
const WAN_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 2]);
const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 1, 10];
const SERVER_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 2, 10]);

fn router() -> Router {
    let ifaces = vec![
        RouterInterface {
            port: 0,
            mac: LAN_MAC,
            addresses: vec![(Ipv4Addr::new(198, 18, 1, 1), 24)],
            mtu: 1500,
        },
        RouterInterface {
            port: 1,
            mac: WAN_MAC,
            addresses: vec![(Ipv4Addr::new(198, 18, 2, 1), 24)],
            mtu: 1500,
        },
    ];
    let neigh = Arc::new(NeighbourTable::new(4096, NeighbourTimers::default()));
    let r = Router::new(ifaces, &[], neigh).expect("router");
    r.neighbours()
        .learn(1, Ipv4Addr::new(198, 18, 2, 10), SERVER_MAC, 0);
    for host in 10..=250u8 {
        r.neighbours().learn(
            0,
            Ipv4Addr::new(198, 18, 1, host),
            EthernetAddress(CLIENT_MAC),
            0,
        );
    }
    r
}

fn policy(rules: usize) -> PolicyConfig {
    let mut text = String::from("(rules: [\n");
    for i in 0..rules.saturating_sub(1) {
        // Rules that do not match the benchmark's flows, of the usual kinds.
        text.push_str(&format!(
            "(action: Pass, from: [\"198.19.{}.0/24\"], to: [\"198.18.{}.{}\"], proto: Tcp, dst_ports: [\"{}\"]),\n",
            i % 250,
            3 + (i / 250) % 200,
            1 + i % 250,
            1000 + i % 60000
        ));
    }
    text.push_str(
        "(action: Pass, from: [\"198.18.1.0/24\"], proto: Tcp),\n], default_action: Block)",
    );
    tandem_config::policy::parse(&text, "bench-policy.ron", Some(&["in", "out"]))
        .expect("generated policy")
}

/// An Ethernet + IPv4 + TCP frame from the client side.
fn tcp_frame(flow: usize, flags: u8, seq: u32, ack: u32, payload: usize, reply: bool) -> Vec<u8> {
    let client = Ipv4Addr::new(198, 18, 1, 10 + (flow / 50_000) as u8);
    let server = Ipv4Addr::new(198, 18, 2, 10);
    let cport = 10_000 + (flow % 50_000) as u16;
    let (src, dst, sport, dport) = if reply {
        (server, client, 80, cport)
    } else {
        (client, server, cport, 80)
    };
    let mut f = vec![0u8; 14 + 20 + 20 + payload];
    let (dmac, smac) = if reply {
        (WAN_MAC.0, SERVER_MAC.0)
    } else {
        (LAN_MAC.0, CLIENT_MAC)
    };
    f[0..6].copy_from_slice(&dmac);
    f[6..12].copy_from_slice(&smac);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((40 + payload) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let ck = checksum::checksum(ip);
    ip[10..12].copy_from_slice(&ck.to_be_bytes());
    let t = &mut f[34..54];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&ack.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&65535u16.to_be_bytes());
    f
}

fn firewall(policy: &Arc<Policy>, flows: usize) -> Firewall {
    let settings = FirewallSettings {
        shard: ShardConfig {
            capacity: (flows * 2).max(1024) as u32,
            ..ShardConfig::default()
        },
        // A NIC verifies checksums; the bench measures the firewall.
        verify_checksums: false,
        fragment_capacity: 1024,
        fragment_timeout_ms: 2000,
    };
    Firewall::new(
        settings,
        policy.clone(),
        Arc::new(FirewallCounters::default()),
        0,
    )
}

/// Runs `frames` round-robin `packets` times through `f`; returns ns/packet.
fn pass(
    frames: &[(u16, Vec<u8>)],
    packets: usize,
    mut f: impl FnMut(u16, &mut [u8]) -> Action,
) -> f64 {
    let mut buf = [0u8; 256];
    let mut forwarded = 0usize;
    let start = Instant::now();
    for i in 0..packets {
        let (port, frame) = &frames[i % frames.len()];
        let b = &mut buf[..frame.len()];
        b.copy_from_slice(frame);
        if matches!(f(*port, b), Action::Forward { .. }) {
            forwarded += 1;
        }
    }
    let ns = start.elapsed().as_nanos() as f64 / packets as f64;
    assert!(
        forwarded * 10 >= packets * 9,
        "only {forwarded} of {packets} packets were forwarded"
    );
    black_box(forwarded);
    ns
}

/// Like [`pass`], in bursts of 32 frames, as a worker receives them:
/// `prepare` sees the burst's IPv4 headers first, then `f` runs on each
/// frame, then `end`.
fn pass_burst(
    frames: &[(u16, Vec<u8>)],
    packets: usize,
    mut prepare: impl FnMut(&[&[u8]]),
    mut f: impl FnMut(u16, &mut [u8]) -> Action,
    mut end: impl FnMut(),
) -> f64 {
    const B: usize = 32;
    let mut bufs = vec![[0u8; 256]; B];
    let mut forwarded = 0usize;
    let start = Instant::now();
    let mut i = 0;
    while i < packets {
        let n = B.min(packets - i);
        for (k, b) in bufs.iter_mut().enumerate().take(n) {
            let frame = &frames[(i + k) % frames.len()].1;
            b[..frame.len()].copy_from_slice(frame);
        }
        let ips: Vec<&[u8]> = (0..n)
            .map(|k| {
                let len = frames[(i + k) % frames.len()].1.len();
                &bufs[k][14..len]
            })
            .collect();
        prepare(&ips);
        for k in 0..n {
            let (port, frame) = &frames[(i + k) % frames.len()];
            if matches!(
                f(*port, &mut bufs[k][..frame.len()]),
                Action::Forward { .. }
            ) {
                forwarded += 1;
            }
        }
        end();
        i += n;
    }
    let ns = start.elapsed().as_nanos() as f64 / packets as f64;
    assert!(
        forwarded * 10 >= packets * 9,
        "only {forwarded} of {packets} packets were forwarded"
    );
    black_box(forwarded);
    ns
}

fn main() {
    let args = Args::parse();
    let eal_args: Vec<String> = [
        "bench-firewall",
        "--no-huge",
        "--no-shconf",
        "-m",
        "1024",
        "--no-pci",
        "--no-telemetry",
        "--log-level=warning",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let _eal = Eal::init(&eal_args).expect("EAL");
    let router = router();
    let cfg = policy(args.rules);
    let policy = Arc::new(
        Policy::compile(&cfg, &[("in".into(), 0), ("out".into(), 1)], None)
            .expect("policy compiles"),
    );
    let backend = format!("{:?}", policy.backend());
    let flows = args.flows.max(1);

    // Handshakes: SYN (client), SYN-ACK (server), ACK (client).
    let syns: Vec<_> = (0..flows)
        .map(|i| (0u16, tcp_frame(i, 0x02, 1000, 0, 0, false)))
        .collect();
    let synacks: Vec<_> = (0..flows)
        .map(|i| (1u16, tcp_frame(i, 0x12, 5000, 1001, 0, true)))
        .collect();
    let acks: Vec<_> = (0..flows)
        .map(|i| (0u16, tcp_frame(i, 0x10, 1001, 5001, 0, false)))
        .collect();
    // Established data, both ways (a retransmitted segment stays in window).
    let data: Vec<_> = (0..flows)
        .flat_map(|i| {
            [
                (0u16, tcp_frame(i, 0x18, 1001, 5001, 40, false)),
                (1u16, tcp_frame(i, 0x10, 5001, 1041, 0, true)),
            ]
        })
        .collect();

    // Baseline: the plain router on the same frames.
    let router_ns = pass(&data, args.packets, |p, b| router.process(0, p, b));

    let mut fw = firewall(&policy, flows);
    let t = Instant::now();
    let new_ns = pass(&syns, flows, |p, b| {
        router.process_filtered(1, p, b, &mut fw)
    });
    let new_per_sec = flows as f64 / t.elapsed().as_secs_f64();
    pass(&synacks, flows, |p, b| {
        router.process_filtered(2, p, b, &mut fw)
    });
    pass(&acks, flows, |p, b| {
        router.process_filtered(3, p, b, &mut fw)
    });
    fw.publish();
    let established = fw.shard().len();
    let est_ns = pass(&data, args.packets, |p, b| {
        router.process_filtered(4, p, b, &mut fw)
    });
    let fw_cell = std::cell::RefCell::new(fw);
    let burst_ns = pass_burst(
        &data,
        args.packets,
        |ips| fw_cell.borrow_mut().prepare_burst(ips.iter().copied()),
        |p, b| router.process_filtered(5, p, b, &mut *fw_cell.borrow_mut()),
        || fw_cell.borrow_mut().end_burst(),
    );
    let fw = fw_cell.into_inner();
    let bytes_per_conn = fw.shard().bytes_per_conn();

    println!("backend: {backend}, rules: {}, flows: {flows}, connections after handshakes: {established}", args.rules);
    println!(
        "{:<44} {:>10} {:>12}",
        "path (one core, in-place frames)", "ns/pkt", "Mpps"
    );
    for (what, ns) in [
        ("router only (baseline)", router_ns),
        ("firewall, established TCP", est_ns),
        ("firewall, established TCP, bursts of 32", burst_ns),
        ("firewall, new TCP connection (SYN)", new_ns),
    ] {
        println!("{what:<44} {ns:>10.1} {:>12.2}", 1e3 / ns);
    }
    println!("new connections per second per core: {new_per_sec:.0}");
    println!(
        "established firewall / router cost: {:.2}x (one at a time), {:.2}x (bursts)",
        est_ns / router_ns,
        burst_ns / router_ns
    );
    println!("bytes per connection entry (entry + index + timer + free list): {bytes_per_conn}");
    println!(
        "{}",
        serde_json::json!({
            "bench": "firewall",
            "backend": backend,
            "rules": args.rules,
            "flows": flows,
            "router_ns_per_pkt": router_ns,
            "established_ns_per_pkt": est_ns,
            "established_mpps": 1e3 / est_ns,
            "established_burst_ns_per_pkt": burst_ns,
            "established_burst_over_router": burst_ns / router_ns,
            "new_conn_ns": new_ns,
            "new_conn_per_sec": new_per_sec,
            "bytes_per_conn": bytes_per_conn,
            "established_over_router": est_ns / router_ns,
        })
    );
}
