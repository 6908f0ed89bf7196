//! `Router::process` on arbitrary frames, with the lab's two interfaces
//! (198.18.1.1/24 on port 0, 198.18.2.1/24 on port 1): it must not panic.
#![no_main]

use std::net::Ipv4Addr;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use tandem_dataplane::neigh::{NeighbourTable, NeighbourTimers};
use tandem_dataplane::router::{Action, Router, RouterInterface, StaticRoute};
use tandem_dataplane::wire::{EthernetAddress, Ipv4Packet};

const MACS: [EthernetAddress; 2] = [
    EthernetAddress([2, 0, 0, 0, 0, 1]),
    EthernetAddress([2, 0, 0, 0, 0, 2]),
];

fn router() -> &'static Router {
    static ROUTER: OnceLock<Router> = OnceLock::new();
    ROUTER.get_or_init(|| {
        let interfaces = vec![
            RouterInterface {
                port: 0,
                mac: MACS[0],
                addresses: vec![(Ipv4Addr::new(198, 18, 1, 1), 24)],
                mtu: 1500,
            },
            RouterInterface {
                port: 1,
                mac: MACS[1],
                addresses: vec![(Ipv4Addr::new(198, 18, 2, 1), 24)],
                mtu: 1500,
            },
        ];
        let routes = [StaticRoute {
            destination: Ipv4Addr::new(0, 0, 0, 0),
            prefix_len: 0,
            via: Some(Ipv4Addr::new(198, 18, 2, 254)),
            port: None,
        }];
        let neighbours = Arc::new(NeighbourTable::new(64, NeighbourTimers::default()));
        Router::new(interfaces, &routes, neighbours).expect("lab router")
    })
}

fuzz_target!(|data: &[u8]| {
    // Byte 0: bits 0-1 the input port (2 and 3 are unknown ports), bit 2
    // addresses the frame to the port's MAC so the fuzzer gets past the MAC
    // check, bit 3 fixes the IPv4 header checksum; bytes 1..9 the time.
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let (time, frame) = rest.split_at(rest.len().min(8));
    let mut now = [0u8; 8];
    now[..time.len()].copy_from_slice(time);
    let now_ms = u64::from_le_bytes(now);
    let port = u16::from(ctl & 0x03);
    let mut frame = frame.to_vec();
    if ctl & 0x04 != 0 && frame.len() >= 6 {
        frame[..6].copy_from_slice(&MACS[usize::from(ctl & 1)].0);
    }
    if ctl & 0x08 != 0 {
        // An untagged IPv4 frame gets a valid header checksum, which the
        // fuzzer could not find by itself, to reach the routing code.
        if let Some(ip) = frame.get_mut(14..) {
            if let Ok(mut ip) = Ipv4Packet::new_checked(ip) {
                ip.fill_checksum();
            }
        }
    }
    let original = frame.clone();
    let router = router();
    match router.process(now_ms, port, &mut frame) {
        Action::Drop {
            icmp: Some(err), ..
        } => {
            // The frame is untouched on Drop: build the error it allows.
            assert_eq!(frame, original, "process changed a dropped frame");
            let mut buf = [0u8; 1600];
            if let Some((_, len)) = router.build_icmp_error(&frame, port, err, &mut buf) {
                assert!(len <= buf.len());
            }
        }
        Action::Drop { .. } => assert_eq!(frame, original, "process changed a dropped frame"),
        Action::Hold { port, next_hop, .. } => {
            let _ = router.finish_held(now_ms, &mut frame, port, next_hop);
        }
        _ => {}
    }
});
