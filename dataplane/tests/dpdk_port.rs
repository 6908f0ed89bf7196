//! The DPDK layer against real virtual devices: EAL up, a mempool, a
//! net_ring port (whose TX ring feeds its own RX ring) and a net_null port.
//! One EAL per process, so everything runs in a single test.

use tandem_dataplane::dpdk::{Eal, MbufRing, Mempool, Port, PortSetup};

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

    // More workers than the device has queues: it opens with the queues
    // it has; the software dispatch and the TX handoff serve the rest.
    let many = PortSetup {
        queues: 2000,
        ..setup
    };
    let p = Port::open(&eal, "net_null1", &many, pool.clone()).expect("opens with its queues");
    assert_eq!(p.rx_queues(), p.info().max_rx_queues.min(2000));
    assert_eq!(p.tx_queues(), p.info().max_tx_queues.min(2000));
    assert_eq!(p.steering().as_str(), "software", "{:?}", p.steering());
    let (rx, tx) = p.take_queues().expect("queues");
    assert_eq!(
        (rx.len(), tx.len()),
        (p.rx_queues() as usize, p.tx_queues() as usize)
    );

    // A handoff ring between two threads: everything put in comes out, in
    // order, once; a full ring takes what fits and leaves the rest.
    let (ring, mut consumer) = MbufRing::create(&eal, "test-h0", 256).expect("ring");
    assert_eq!(ring.capacity(), 255);
    let in_use = pool.in_use();
    let producer = {
        let ring = ring.clone();
        let pool = pool.clone();
        std::thread::spawn(move || {
            let mut sent = 0u32;
            while sent < 5000 {
                let mut burst: Vec<_> = (0..32)
                    .map(|k| {
                        let mut m = pool.alloc().expect("mbuf");
                        assert!(m.set_len(64));
                        m.data_mut()[..4].copy_from_slice(&(sent + k).to_be_bytes());
                        m
                    })
                    .collect();
                while !burst.is_empty() {
                    let before = burst.len();
                    ring.enqueue(&mut burst);
                    if burst.len() == before {
                        std::thread::yield_now();
                    }
                }
                sent += 32;
            }
        })
    };
    let mut next = 0u32;
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while next < 5024 && std::time::Instant::now() < deadline {
        consumer.dequeue(&mut got, 64);
        for m in got.drain(..) {
            let v = u32::from_be_bytes(m.data()[..4].try_into().unwrap());
            assert_eq!(v, next, "in order, once");
            next += 1;
        }
    }
    producer.join().expect("producer");
    assert_eq!(next, 5024);
    let mut full: Vec<_> = (0..300).map(|_| pool.alloc().expect("mbuf")).collect();
    assert_eq!(ring.enqueue(&mut full), 255, "a full ring takes what fits");
    assert_eq!(full.len(), 45);
    drop(full);
    drop(consumer);
    drop(ring);
    assert_eq!(pool.in_use(), in_use, "a dropped ring frees what it held");
}
