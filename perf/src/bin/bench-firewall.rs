//! Whole-packet benchmark of one worker's sans-IO path: the router with the
//! stateful firewall (parse, connection lookup and tracking, policy on the
//! ACL classifier, connection creation), one packet at a time and in
//! bursts, against the plain router in the same process as the baseline;
//! then 1, 2 and N workers at once, and the software dispatch's costs (the
//! owner decision, a handoff through a DPDK ring between two threads). No
//! NIC: frames are copied from templates into a buffer (as a NIC would
//! have written them) and processed in place.
//!
//! ```text
//! bench-firewall [--flows 100000] [--packets 5000000] [--rules 10] [--threads N]
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
    /// Most worker threads of the scaling pass (1 and 2 always run;
    /// default: the machine's cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
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

/// The frames of `flows` flows from `first`: handshakes and established
/// data both ways.
struct Frames {
    syns: Vec<(u16, Vec<u8>)>,
    synacks: Vec<(u16, Vec<u8>)>,
    acks: Vec<(u16, Vec<u8>)>,
    data: Vec<(u16, Vec<u8>)>,
}

fn frames(first: usize, flows: usize) -> Frames {
    let range = first..first + flows;
    Frames {
        syns: range
            .clone()
            .map(|i| (0u16, tcp_frame(i, 0x02, 1000, 0, 0, false)))
            .collect(),
        synacks: range
            .clone()
            .map(|i| (1u16, tcp_frame(i, 0x12, 5000, 1001, 0, true)))
            .collect(),
        acks: range
            .clone()
            .map(|i| (0u16, tcp_frame(i, 0x10, 1001, 5001, 0, false)))
            .collect(),
        // Established data, both ways (a retransmitted segment stays in
        // window).
        data: range
            .flat_map(|i| {
                [
                    (0u16, tcp_frame(i, 0x18, 1001, 5001, 40, false)),
                    (1u16, tcp_frame(i, 0x10, 5001, 1041, 0, true)),
                ]
            })
            .collect(),
    }
}

/// Opens every flow of `f` in `fw` (three-way handshakes); returns the
/// SYN pass's ns per new connection.
fn open(router: &Router, fw: &mut Firewall, f: &Frames) -> f64 {
    let new_ns = pass(&f.syns, f.syns.len(), |p, b| {
        router.process_filtered(1, p, b, fw)
    });
    pass(&f.synacks, f.synacks.len(), |p, b| {
        router.process_filtered(2, p, b, fw)
    });
    pass(&f.acks, f.acks.len(), |p, b| {
        router.process_filtered(3, p, b, fw)
    });
    new_ns
}

/// Established traffic through `fw` in bursts; ns per packet.
fn established_bursts(
    router: &Router,
    fw: Firewall,
    data: &[(u16, Vec<u8>)],
    packets: usize,
) -> (f64, Firewall) {
    let cell = std::cell::RefCell::new(fw);
    let ns = pass_burst(
        data,
        packets,
        |ips| cell.borrow_mut().prepare_burst(ips.iter().copied()),
        |p, b| router.process_filtered(5, p, b, &mut *cell.borrow_mut()),
        || cell.borrow_mut().end_burst(),
    );
    (ns, cell.into_inner())
}

/// `threads` workers at once, each with its own firewall and `flows`
/// flows, bursts of established traffic: aggregate Mpps and the mean ns
/// per packet of one thread.
fn threaded(
    router: &Arc<Router>,
    policy: &Arc<Policy>,
    threads: usize,
    flows: usize,
    packets: usize,
) -> (f64, f64) {
    let barrier = Arc::new(std::sync::Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (router, policy, barrier) = (router.clone(), policy.clone(), barrier.clone());
            std::thread::spawn(move || {
                let f = frames(t * flows, flows);
                let mut fw = firewall(&policy, flows);
                open(&router, &mut fw, &f);
                barrier.wait();
                let (ns, _) = established_bursts(&router, fw, &f.data, packets);
                ns
            })
        })
        .collect();
    barrier.wait();
    let t0 = Instant::now();
    let per: Vec<f64> = handles
        .into_iter()
        .map(|h| h.join().expect("bench thread"))
        .collect();
    let wall = t0.elapsed().as_secs_f64();
    let mpps = (threads * packets) as f64 / wall / 1e6;
    (mpps, per.iter().sum::<f64>() / per.len() as f64)
}

/// The software dispatch's cost: deciding the owner of each frame
/// (`Dispatcher::route`: parse, hash, owner), ns per packet.
fn dispatch_decision(data: &[(u16, Vec<u8>)], packets: usize, workers: usize) -> f64 {
    use tandem_dataplane::dispatch::{Dispatcher, Route};
    let mut d = Dispatcher::new(0, workers, Arc::new(Default::default()));
    let mut here = 0usize;
    let start = Instant::now();
    for i in 0..packets {
        if d.route(0, &data[i % data.len()].1) == Route::Here {
            here += 1;
        }
    }
    let ns = start.elapsed().as_nanos() as f64 / packets as f64;
    black_box(here);
    ns
}

/// A handoff between two threads through a DPDK ring, in bursts of 32:
/// ns per packet of the pair's throughput (enqueue on one worker,
/// dequeue on the other, with the mbuf's port field set and read, as the
/// dispatch does).
fn handoff(eal: &Eal, packets: usize) -> f64 {
    use tandem_dataplane::dpdk::{MbufRing, Mempool};
    let pool = Mempool::new(eal, "bench_pool", 16_383, 256).expect("mempool");
    let (ring, mut consumer) = MbufRing::create(eal, "bench-h", 4096).expect("ring");
    let bursts = packets / 32;
    // The producer reuses the mbufs the consumer sends back.
    let (back_tx, back_rx) =
        std::sync::mpsc::sync_channel::<Vec<tandem_dataplane::dpdk::Mbuf>>(256);
    let mut stock: Vec<Vec<_>> = (0..128)
        .map(|_| (0..32).map(|_| pool.alloc().expect("mbuf")).collect())
        .collect();
    let start = Instant::now();
    let producer = {
        let ring = ring.clone();
        std::thread::spawn(move || {
            let mut sent = 0;
            while sent < bursts * 32 {
                let mut b = match stock.pop() {
                    Some(b) => b,
                    None => back_rx.recv().expect("mbufs back"),
                };
                // The consumer may send back short bursts: exactly the
                // total goes through the ring.
                b.truncate(bursts * 32 - sent);
                sent += b.len();
                for m in b.iter_mut() {
                    m.set_port(0x8001);
                }
                while !b.is_empty() {
                    if ring.enqueue(&mut b) == 0 {
                        std::hint::spin_loop();
                    }
                }
                // The emptied vector is dropped; the next comes from stock
                // or back.
            }
        })
    };
    let mut got = Vec::with_capacity(64);
    let mut n = 0usize;
    let mut ports = 0u64;
    while n < bursts * 32 {
        if consumer.dequeue(&mut got, 32) == 0 {
            std::hint::spin_loop();
            continue;
        }
        n += got.len();
        ports += got.iter().map(|m| u64::from(m.port())).sum::<u64>();
        let full = std::mem::replace(&mut got, Vec::with_capacity(64));
        let _ = back_tx.try_send(full);
    }
    producer.join().expect("producer");
    let ns = start.elapsed().as_nanos() as f64 / n.max(1) as f64;
    black_box(ports);
    ns
}

/// The ring operations alone, one thread: a burst of 32 in, the same out;
/// ns per packet.
fn ring_ops(eal: &Eal, packets: usize) -> f64 {
    use tandem_dataplane::dpdk::{MbufRing, Mempool};
    let pool = Mempool::new(eal, "bench_pool1", 1023, 64).expect("mempool");
    let (ring, mut consumer) = MbufRing::create(eal, "bench-h1", 256).expect("ring");
    let mut b: Vec<_> = (0..32).map(|_| pool.alloc().expect("mbuf")).collect();
    let start = Instant::now();
    for _ in 0..packets / 32 {
        ring.enqueue(&mut b);
        consumer.dequeue(&mut b, 32);
    }
    let ns = start.elapsed().as_nanos() as f64 / (packets / 32 * 32).max(1) as f64;
    assert_eq!(b.len(), 32);
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
    let eal = Eal::init(&eal_args).expect("EAL");
    let router = Arc::new(router());
    let cfg = policy(args.rules);
    let policy = Arc::new(
        Policy::compile(&cfg, &[("in".into(), 0), ("out".into(), 1)]).expect("policy compiles"),
    );
    let backend = format!("{:?}", policy.backend());
    let flows = args.flows.max(1);
    let f = frames(0, flows);

    // Baseline: the plain router on the same frames.
    let router_ns = pass(&f.data, args.packets, |p, b| router.process(0, p, b));

    let mut fw = firewall(&policy, flows);
    let new_ns = open(&router, &mut fw, &f);
    let new_per_sec = 1e9 / new_ns;
    fw.publish();
    let established = fw.shard().len();
    let est_ns = pass(&f.data, args.packets, |p, b| {
        router.process_filtered(4, p, b, &mut fw)
    });
    let (burst_ns, fw) = established_bursts(&router, fw, &f.data, args.packets);
    let bytes_per_conn = fw.shard().bytes_per_conn();
    drop(fw);

    // Several workers at once (each its own firewall and flows).
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut counts = vec![1usize, 2];
    if args.threads > 2 {
        counts.push(args.threads);
    } else if cores > 2 {
        counts.push(cores);
    }
    let per_thread_flows = (flows / 2).max(1);
    let scaling: Vec<(usize, f64, f64)> = counts
        .iter()
        .map(|&t| {
            let (mpps, ns) = threaded(&router, &policy, t, per_thread_flows, args.packets / 2);
            (t, mpps, ns)
        })
        .collect();

    // The software dispatch: the decision, and the handoff itself.
    let decide_ns = dispatch_decision(&f.data, args.packets, 4);
    let ring_ns = ring_ops(&eal, args.packets);
    let handoff_ns = handoff(&eal, args.packets);

    println!("backend: {backend}, rules: {}, flows: {flows}, connections after handshakes: {established}", args.rules);
    println!(
        "{:<48} {:>10} {:>12}",
        "path (one core, in-place frames)", "ns/pkt", "Mpps"
    );
    for (what, ns) in [
        ("router only (baseline)", router_ns),
        ("firewall, established TCP", est_ns),
        ("firewall, established TCP, bursts of 32", burst_ns),
        ("firewall, new TCP connection (SYN)", new_ns),
        ("dispatch decision (parse, hash, owner)", decide_ns),
        ("handoff: ring in + out, one thread", ring_ns),
        ("handoff between two threads (ring, bursts)", handoff_ns),
    ] {
        println!("{what:<48} {ns:>10.1} {:>12.2}", 1e3 / ns);
    }
    println!("new connections per second per core: {new_per_sec:.0}");
    println!(
        "established firewall / router cost: {:.2}x (one at a time), {:.2}x (bursts)",
        est_ns / router_ns,
        burst_ns / router_ns
    );
    println!(
        "dispatch + handoff / router cost: {:.2}x (paid by packets that arrive at a worker that does not own them)",
        (decide_ns + handoff_ns) / router_ns
    );
    println!("workers at once ({cores} cores here; {per_thread_flows} flows each, bursts):");
    for (t, mpps, ns) in &scaling {
        println!(
            "  {t} thread(s): {mpps:>6.2} Mpps together, {ns:>6.1} ns/pkt per thread, {:.2} Mpps per thread",
            mpps / *t as f64
        );
    }
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
            "dispatch_decision_ns": decide_ns,
            "handoff_ns": handoff_ns,
            "ring_ops_ns": ring_ns,
            "threads": scaling.iter().map(|(t, mpps, ns)| serde_json::json!({"threads": t, "mpps": mpps, "ns_per_pkt": ns})).collect::<Vec<_>>(),
            "cores": cores,
            "bytes_per_conn": bytes_per_conn,
            "established_over_router": est_ns / router_ns,
        })
    );
}
