//! The firewall's burst path against its one-packet path: the same
//! packets, through two firewalls, one packet at a time and in bursts of
//! 32 (`prepare_burst`, the packets, `end_burst`), must get the same
//! verdicts and leave the same tables, whatever the mix: handshakes,
//! data both ways, resets, closes, connections created and deleted by an
//! earlier packet of the same burst. And what the per-rule counters
//! count of those packets.

use std::net::Ipv4Addr;
use std::sync::Arc;

use tandem_dataplane::conntrack::ShardConfig;
use tandem_dataplane::firewall::{Firewall, FirewallCounters, FirewallSettings, FwDrop};
use tandem_dataplane::neigh::{NeighbourTable, NeighbourTimers};
use tandem_dataplane::policy::{Backend, Policy};
use tandem_dataplane::router::{Action, Router, RouterInterface};
use tandem_dataplane::wire::{checksum, EthernetAddress};

const LAN_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 1]);
const WAN_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 2]);
const HOST_MAC: [u8; 6] = [2, 0, 0, 0, 9, 9];

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
    let neigh = Arc::new(NeighbourTable::new(1024, NeighbourTimers::default()));
    let r = Router::new(ifaces, &[], neigh).expect("router");
    r.neighbours().learn(
        1,
        Ipv4Addr::new(198, 18, 2, 10),
        EthernetAddress(HOST_MAC),
        0,
    );
    r.neighbours().learn(
        0,
        Ipv4Addr::new(198, 18, 1, 10),
        EthernetAddress(HOST_MAC),
        0,
    );
    r
}

fn firewall() -> Firewall {
    firewall_counted(Arc::new(FirewallCounters::default()))
}

/// Pass TCP from the inside LAN, block the rest (each call compiles it
/// again: a new policy id).
fn policy() -> Policy {
    let cfg = tandem_config::policy::parse(
        "(rules: [(action: Pass, from: [\"198.18.1.0/24\"], proto: Tcp)], default_action: Block)",
        "t.ron",
        Some(&["in", "out"]),
    )
    .expect("policy");
    Policy::compile_with(
        &cfg,
        &[("in".into(), 0), ("out".into(), 1)],
        Backend::Linear,
    )
    .expect("compiles")
}

fn firewall_counted(counters: Arc<FirewallCounters>) -> Firewall {
    Firewall::new(
        FirewallSettings {
            shard: ShardConfig {
                capacity: 1024,
                ..ShardConfig::default()
            },
            verify_checksums: true,
            fragment_capacity: 16,
            fragment_timeout_ms: 1000,
        },
        Arc::new(policy()),
        counters,
        0,
    )
}

/// A TCP frame of flow `f` (client 198.18.1.10:20000+f, server
/// 198.18.2.10:80), from the server when `reply`.
fn tcp(f: u16, flags: u8, seq: u32, ack: u32, reply: bool) -> (u16, Vec<u8>) {
    let client = Ipv4Addr::new(198, 18, 1, 10);
    let server = Ipv4Addr::new(198, 18, 2, 10);
    let (src, dst, sport, dport, port, dmac) = if reply {
        (server, client, 80, 20_000 + f, 1u16, WAN_MAC.0)
    } else {
        (client, server, 20_000 + f, 80, 0u16, LAN_MAC.0)
    };
    let mut b = vec![0u8; 54];
    b[0..6].copy_from_slice(&dmac);
    b[6..12].copy_from_slice(&HOST_MAC);
    b[12..14].copy_from_slice(&[0x08, 0x00]);
    {
        let ip = &mut b[14..34];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&40u16.to_be_bytes());
        ip[8] = 64;
        ip[9] = 6;
        ip[12..16].copy_from_slice(&src.octets());
        ip[16..20].copy_from_slice(&dst.octets());
        let c = checksum::checksum(ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
    }
    {
        let t = &mut b[34..54];
        t[0..2].copy_from_slice(&sport.to_be_bytes());
        t[2..4].copy_from_slice(&dport.to_be_bytes());
        t[4..8].copy_from_slice(&seq.to_be_bytes());
        t[8..12].copy_from_slice(&ack.to_be_bytes());
        t[12] = 5 << 4;
        t[13] = flags;
        t[14..16].copy_from_slice(&65535u16.to_be_bytes());
    }
    // The TCP checksum over the pseudo-header.
    let mut pseudo = Vec::with_capacity(32);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 6, 0, 20]);
    pseudo.extend_from_slice(&b[34..54]);
    let c = checksum::checksum(&pseudo);
    b[50..52].copy_from_slice(&c.to_be_bytes());
    (port, b)
}

/// A seeded mix of packets over 40 flows: handshakes, data, resets,
/// closes, repeated SYNs of live or closed flows.
fn traffic(seed: u64, n: usize) -> Vec<(u16, Vec<u8>)> {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..n)
        .map(|_| {
            let r = next();
            let f = (r % 40) as u16;
            match (r >> 8) % 9 {
                0 => tcp(f, 0x02, 1000, 0, false),
                1 => tcp(f, 0x12, 5000, 1001, true),
                2 | 3 => tcp(f, 0x10, 1001, 5001, false),
                4 => tcp(f, 0x18, 5001, 1001, true),
                5 => tcp(f, 0x04, 1001, 0, false),
                6 => tcp(f, 0x11, 1001, 5001, false),
                7 => tcp(f, 0x11, 5001, 1002, true),
                _ => tcp(f, 0x10, 5002, 1002, true),
            }
        })
        .collect()
}

#[test]
fn bursts_decide_exactly_as_one_packet_at_a_time() {
    let r = router();
    for seed in 1..=40u64 {
        let packets = traffic(seed * 0x9e37_79b9, 2_000);
        let mut one = firewall();
        let mut burst = firewall();
        let mut now = 0;
        let mut single: Vec<Action> = Vec::new();
        for (port, p) in &packets {
            now += 1;
            let mut b = p.clone();
            single.push(r.process_filtered(now, *port, &mut b, &mut one));
        }
        let mut bursted: Vec<Action> = Vec::new();
        now = 0;
        for chunk in packets.chunks(32) {
            let mut bufs: Vec<Vec<u8>> = chunk.iter().map(|(_, p)| p.clone()).collect();
            burst.prepare_burst(bufs.iter().map(|b| &b[14..]));
            for (k, b) in bufs.iter_mut().enumerate() {
                now += 1;
                bursted.push(r.process_filtered(now, chunk[k].0, b, &mut burst));
            }
            burst.end_burst();
        }
        let forwarded = single
            .iter()
            .filter(|a| matches!(a, Action::Forward { .. }))
            .count();
        assert!(
            forwarded > 200 && forwarded < 1_800,
            "a mix of passes and drops: {forwarded} of 2000 forwarded"
        );
        assert_eq!(single, bursted, "seed {seed}");
        assert_eq!(one.shard().len(), burst.shard().len(), "seed {seed}");
        assert_eq!(one.shard().digest(), burst.shard().digest(), "seed {seed}");
    }
}

/// (hits, bytes) of the pass rule and of the default action.
fn rule_counts(c: &FirewallCounters) -> Vec<(u64, u64)> {
    let (_, r) = c.rule_hits.lock().expect("counters").clone();
    r.iter().map(|r| (r.hits.get(), r.bytes.get())).collect()
}

#[test]
fn a_rule_counts_its_connections_and_their_bytes_both_ways_until_a_new_policy() {
    let r = router();
    let counters = Arc::new(FirewallCounters::default());
    let mut fw = firewall_counted(counters.clone());
    let send = |fw: &mut Firewall, now, (port, mut b): (u16, Vec<u8>)| {
        r.process_filtered(now, port, &mut b, fw)
    };
    // A handshake and data both ways: one connection, 7 packets of 40.
    for (i, p) in [
        tcp(1, 0x02, 1000, 0, false),
        tcp(1, 0x12, 5000, 1001, true),
        tcp(1, 0x10, 1001, 5001, false),
        tcp(1, 0x18, 1001, 5001, false),
        tcp(1, 0x18, 5001, 1001, true),
        tcp(1, 0x10, 1001, 5001, false),
        tcp(1, 0x10, 5001, 1001, true),
    ]
    .into_iter()
    .enumerate()
    {
        let a = send(&mut fw, 10 + i as u64, p);
        assert!(matches!(a, Action::Forward { .. }), "packet {i}: {a:?}");
    }
    // The server opening a connection: stopped by the default action.
    let a = send(&mut fw, 20, tcp(2, 0x02, 1, 0, true));
    assert!(!matches!(a, Action::Forward { .. }), "{a:?}");
    assert_eq!(rule_counts(&counters), [(1, 7 * 40), (1, 40)]);
    // A new policy: new counters; the old connection still passes, but
    // its bytes belong to the rule of the policy that opened it.
    fw.set_policy(100, Arc::new(policy()));
    assert_eq!(rule_counts(&counters), [(0, 0), (0, 0)]);
    let a = send(&mut fw, 101, tcp(1, 0x10, 1001, 5001, false));
    assert!(matches!(a, Action::Forward { .. }), "{a:?}");
    assert_eq!(rule_counts(&counters), [(0, 0), (0, 0)]);
    // A connection opened under the new policy counts again.
    send(&mut fw, 102, tcp(3, 0x02, 1000, 0, false));
    send(&mut fw, 103, tcp(3, 0x12, 5000, 1001, true));
    assert_eq!(rule_counts(&counters), [(1, 80), (0, 0)]);
}

#[test]
fn a_draining_firewall_forwards_the_connections_it_has_and_opens_none() {
    let r = router();
    let counters = Arc::new(FirewallCounters::default());
    let mut fw = firewall_counted(counters.clone());
    let send = |fw: &mut Firewall, now, (port, mut b): (u16, Vec<u8>)| {
        r.process_filtered(now, port, &mut b, fw)
    };
    let fwd = |a: &Action| matches!(a, Action::Forward { .. });
    assert!(fwd(&send(&mut fw, 1, tcp(1, 0x02, 1000, 0, false))));
    assert!(fwd(&send(&mut fw, 2, tcp(1, 0x12, 5000, 1001, true))));
    fw.set_draining(true);
    // The known connection, both ways.
    assert!(fwd(&send(&mut fw, 3, tcp(1, 0x10, 1001, 5001, false))));
    assert!(fwd(&send(&mut fw, 4, tcp(1, 0x18, 5001, 1001, true))));
    // A new one is not opened, and the drop is counted.
    assert!(!fwd(&send(&mut fw, 5, tcp(2, 0x02, 1000, 0, false))));
    let drained = FwDrop::Draining as usize;
    assert_eq!(counters.drops[drained].get(), 1);
    assert_eq!(fw.shard().len(), 1);
    fw.set_draining(false);
    assert!(fwd(&send(&mut fw, 6, tcp(2, 0x02, 1000, 0, false))));
    assert_eq!(fw.shard().len(), 2);
}
