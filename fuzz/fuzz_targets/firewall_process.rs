//! Whole-packet processing: a sequence of arbitrary frames through the
//! router with a stateful firewall (the lab policy: filter rules, source
//! and destination NAT) on one worker's shard. Nothing may panic, and the
//! table must stay consistent (every listed connection is found again by
//! its key).
#![no_main]

use std::net::Ipv4Addr;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use tandem_dataplane::conntrack::ShardConfig;
use tandem_dataplane::firewall::{ConnQuery, Firewall, FirewallCounters, FirewallSettings};
use tandem_dataplane::neigh::{NeighbourTable, NeighbourTimers};
use tandem_dataplane::policy::Policy;
use tandem_dataplane::router::{Router, RouterInterface, StaticRoute};
use tandem_dataplane::wire::{EthernetAddress, Ipv4Packet};

const MACS: [EthernetAddress; 2] = [EthernetAddress([2, 0, 0, 0, 0, 1]), EthernetAddress([2, 0, 0, 0, 0, 2])];

fn setup() -> (&'static Router, Firewall) {
    static SHARED: OnceLock<(Router, Arc<Policy>)> = OnceLock::new();
    let (router, policy) = SHARED.get_or_init(shared);
    let settings = FirewallSettings {
        shard: ShardConfig { capacity: 256, delta_capacity: 64, host_capacity: 64, ..ShardConfig::default() },
        verify_checksums: false,
        fragment_capacity: 16,
        fragment_timeout_ms: 2000,
    };
    let fw = Firewall::new(settings, policy.clone(), Arc::new(FirewallCounters::default()), 0);
    (router, fw)
}

fn shared() -> (Router, Arc<Policy>) {
    let interfaces = vec![
        RouterInterface { port: 0, mac: MACS[0], addresses: vec![(Ipv4Addr::new(198, 18, 1, 1), 24)], mtu: 1500 },
        RouterInterface { port: 1, mac: MACS[1], addresses: vec![(Ipv4Addr::new(198, 18, 2, 1), 24)], mtu: 1500 },
    ];
    let routes = [StaticRoute {
        destination: Ipv4Addr::new(0, 0, 0, 0),
        prefix_len: 0,
        via: Some(Ipv4Addr::new(198, 18, 2, 254)),
        port: None,
    }];
    let neighbours = Arc::new(NeighbourTable::new(64, NeighbourTimers::default()));
    let router = Router::new(interfaces, &routes, neighbours).expect("lab router");
    let (name, text) = tandem_config::policy::EXAMPLE;
    let cfg = tandem_config::policy::parse(text, name, Some(&["in", "out"])).expect("example policy");
    let policy = Policy::compile(&cfg, &[("in".into(), 0), ("out".into(), 1)]).expect("compiles");
    (router, Arc::new(policy))
}

fuzz_target!(|data: &[u8]| {
    let (router, mut fw) = setup();
    let mut now = 0u64;
    let mut rest = data;
    // Each frame: ctl byte (bit 0 port, bit 1 fix MAC, bit 2 fix IPv4
    // checksum, bits 3-7 time step in 100 ms), length byte, frame bytes.
    for _ in 0..64 {
        let [ctl, len, tail @ ..] = rest else { break };
        let n = usize::from(*len).min(tail.len());
        let (frame, next) = tail.split_at(n);
        rest = next;
        now += u64::from(ctl >> 3) * 100;
        let port = u16::from(ctl & 1);
        let mut frame = frame.to_vec();
        if ctl & 2 != 0 && frame.len() >= 6 {
            frame[..6].copy_from_slice(&MACS[usize::from(port)].0);
        }
        if ctl & 4 != 0 && frame.len() >= 34 {
            let mut ip = Ipv4Packet::new_unchecked(&mut frame[14..]);
            if ip.header_len() as usize >= 20 && ip.header_len() as usize <= 60 {
                ip.fill_checksum();
            }
        }
        let _ = router.process_filtered(now, port, &mut frame, &mut fw);
        if ctl & 0xf8 == 0xf8 {
            fw.maintain(now);
        }
    }
    let q = ConnQuery { limit: usize::MAX, ..ConnQuery::default() };
    let chunk = fw.list_chunk(now, &q, 0, usize::MAX);
    assert_eq!(chunk.views.len() as u64, chunk.matched);
    assert!(chunk.next.is_none(), "one chunk covers the whole table");
    for v in &chunk.views {
        assert!(fw.shard().lookup(&v.orig).is_some(), "listed connection not found by its key");
    }
});
