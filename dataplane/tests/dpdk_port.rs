//! The DPDK layer against real virtual devices: EAL up, a mempool, a
//! net_ring port (whose TX ring feeds its own RX ring) and a net_null port.
//! One EAL per process, so everything runs in a single test.

use tandem_dataplane::dpdk::{Eal, Mempool, Port, PortSetup};

fn frame(len: usize, tag: u8) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, tag]);
    f[12] = 0x08;
    f[14..]
        .iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = (i as u8) ^ tag);
    f
}

#[test]
fn dpdk_ports_move_packets_and_account_for_them() {
    let args: Vec<String> = [
        "tandem-test",
        "--no-huge",
        "--no-shconf",
        "-m",
        "128",
        "-l",
        "0",
        "--no-pci",
        "--no-telemetry",
        "--log-level=warning",
        "--vdev=net_ring0",
        "--vdev=net_null0",
        "--vdev=net_null1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let eal = Eal::init(&args).expect("EAL init with virtual devices");
    assert!(matches!(
        Eal::init(&args),
        Err(tandem_dataplane::dpdk::DpdkError::EalAlreadyInitialised)
    ));
    assert!(eal.port_count() >= 2, "both vdevs are ports");
    assert!(eal.port_by_name("net_nosuch9").is_err());

    let pool = Mempool::new(&eal, "test_pool", 1023, 32).expect("mempool");
    let setup = PortSetup {
        queues: 1,
        rx_descriptors: 256,
        tx_descriptors: 256,
        mtu: 0,
    };
    let ring = Port::open(&eal, "net_ring0", &setup, pool.clone()).expect("net_ring0 opens");
    assert_eq!(ring.info().driver, "net_ring");
    assert!(ring.link().expect("link").up);
    let (mut rxq, mut txq) = ring.take_queues().expect("queues once");
    assert!(ring.take_queues().is_none(), "queues are handed out once");
    let (mut rx, mut tx) = (rxq.remove(0), txq.remove(0));

    let before = pool.in_use();
    let mut out = Vec::new();
    for tag in 0..8u8 {
        let f = frame(60 + tag as usize * 100, tag);
        let mut m = pool.alloc().expect("mbuf");
        assert!(m.set_len(f.len()));
        m.data_mut().copy_from_slice(&f);
        out.push(m);
    }
    assert_eq!(pool.in_use(), before + 8);
    assert_eq!(tx.tx_burst(&mut out), 8);
    assert!(out.is_empty());

    let mut got = Vec::new();
    for _ in 0..100 {
        rx.rx_burst(&mut got, 32);
        if got.len() >= 8 {
            break;
        }
    }
    assert_eq!(got.len(), 8, "every frame sent on the ring comes back");
    for (tag, m) in got.iter().enumerate() {
        assert_eq!(
            m.data(),
            &frame(60 + tag * 100, tag as u8)[..],
            "frame {tag} intact and in order"
        );
        assert_eq!(m.segments(), 1);
    }
    drop(got);
    assert_eq!(
        pool.in_use(),
        before,
        "dropping mbufs returns them to the pool"
    );
    let c = ring.counters().expect("counters");
    assert_eq!((c.tx_packets, c.rx_packets), (8, 8));

    // net_null swallows everything it is given and counts it.
    let null = Port::open(&eal, "net_null0", &setup, pool.clone()).expect("net_null0 opens");
    let (_, mut ntx) = null.take_queues().expect("queues");
    let mut burst: Vec<_> = (0..4).map(|_| pool.alloc().expect("mbuf")).collect();
    for m in burst.iter_mut() {
        assert!(m.set_len(64));
    }
    assert_eq!(ntx[0].tx_burst(&mut burst), 4);
    assert_eq!(null.counters().expect("counters").tx_packets, 4);
    assert_eq!(null.info().driver, "net_null");
    null.mac().expect("a started port has a MAC address");

    // Too many queues for a single-queue device: a clear error.
    let too_many = PortSetup {
        queues: 2000,
        ..setup
    };
    let err = Port::open(&eal, "net_null1", &too_many, pool.clone()).expect_err("queue limit");
    assert!(err.to_string().contains("workers"), "{err}");
}
