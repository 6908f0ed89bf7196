//! Connection-table benchmark, one shard on one core: new connections
//! (create + first track of the SYN), established-flow lookups + track
//! with random access over the whole table, expiry, and the memory cost
//! of an entry. A second thread drains the delta ring as the sync core
//! would. Prints a table and one JSON line.
//!
//! ```text
//! bench-conntrack [--connections 1000000] [--ops 10000000] [--seed 1]
//! ```

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tandem_dataplane::conntrack::{ConnId, ConnMeta, Dir, Shard, ShardConfig, Track, BURST};
use tandem_dataplane::flow::{proto, tcp_flags as F, FlowKey, L4Info, TcpInfo};

struct Args {
    connections: u32,
    ops: u64,
    seed: u64,
}

fn usage() -> ! {
    eprintln!("usage: bench-conntrack [--connections N] [--ops N] [--seed N]");
    std::process::exit(2)
}

fn args() -> Args {
    let mut a = Args {
        connections: 1_000_000,
        ops: 10_000_000,
        seed: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || -> u64 {
            it.next()
                .and_then(|v| v.replace('_', "").parse().ok())
                .unwrap_or_else(|| usage())
        };
        match flag.as_str() {
            "--connections" => a.connections = val().clamp(1, 1 << 24) as u32,
            "--ops" => a.ops = val(),
            "--seed" => a.seed = val(),
            _ => usage(),
        }
    }
    a
}

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Connection `i`'s original key: a distinct client per connection (these
/// are numbers, nothing is sent), a pseudo-random port and server.
fn key_of(i: u32, seed: u64) -> FlowKey {
    let h = (u64::from(i) ^ seed).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    FlowKey::new(
        Ipv4Addr::from(0x0a00_0000 | i),
        1024 + (h >> 48) as u16 % 60_000,
        Ipv4Addr::from(0xc0a8_0000 | ((h >> 16) as u32 & 0xffff)),
        443,
        proto::TCP,
    )
}

fn seg(flags: u8, seq: u32, ack: u32, len: u32) -> L4Info {
    L4Info::Tcp(TcpInfo {
        seq,
        ack,
        flags,
        window: 65535,
        wscale: Some(7),
        payload_len: len,
    })
}

fn main() {
    let args = args();
    let n = args.connections;
    let cfg = ShardConfig {
        capacity: n,
        delta_capacity: 65_536,
        hash_seed: args.seed.wrapping_mul(0x2545_f491_4f6c_dd1d),
        ..ShardConfig::default()
    };
    let t0 = Instant::now();
    let mut sh = Shard::new(cfg, 0);
    let alloc_ms = t0.elapsed().as_secs_f64() * 1e3;

    // The sync core: drains deltas on another thread.
    let mut rx = sh.take_delta_consumer().expect("consumer");
    let stop = Arc::new(AtomicBool::new(false));
    let drained = Arc::new(AtomicU64::new(0));
    let sync_core = {
        let (stop, drained) = (stop.clone(), drained.clone());
        std::thread::spawn(move || loop {
            let k = rx.drain(4096, |d| {
                black_box(d);
            });
            drained.fetch_add(k as u64, Ordering::Relaxed);
            if k == 0 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        })
    };

    let meta = ConnMeta {
        rule: 1,
        sync: true,
        ..ConnMeta::default()
    };
    let syn = seg(F::SYN, 1000, 0, 0);
    let mut now = 1_000u64;

    // New connections: create + track of the SYN.
    let mut ids: Vec<ConnId> = Vec::with_capacity(n as usize);
    let t = Instant::now();
    for i in 0..n {
        let k = key_of(i, args.seed);
        if i % 4096 == 0 {
            now += 1;
        }
        match sh.create(now, &k, &syn, meta) {
            Ok(id) => {
                black_box(sh.track(now, id, Dir::Original, &syn, 60));
                ids.push(id);
            }
            Err(e) => panic!("create {i}: {e}"),
        }
    }
    let create_s = t.elapsed().as_secs_f64();
    let create_rate = f64::from(n) / create_s;

    // Complete the handshakes (through lookup, as the worker would).
    let t = Instant::now();
    let synack = seg(F::SYN | F::ACK, 5000, 1001, 0);
    let ack = seg(F::ACK, 1001, 5001, 0);
    for i in 0..n {
        let k = key_of(i, args.seed);
        let (id, dir) = sh.lookup(&k.reverse()).expect("reply key");
        assert_eq!(sh.track(now, id, dir, &synack, 60), Track::Accept);
        assert_eq!(sh.track(now, id, Dir::Original, &ack, 52), Track::Accept);
    }
    let handshake_rate = 2.0 * f64::from(n) / t.elapsed().as_secs_f64();

    // Established flows: random connection, random direction, lookup +
    // track of a pure ACK (in window).
    let mut rng = Rng(args.seed | 1);
    let c2s = seg(F::ACK, 1001, 5001, 0);
    let s2c = seg(F::ACK, 5001, 1001, 0);
    let mut accepted = 0u64;
    let t = Instant::now();
    for op in 0..args.ops {
        let r = rng.next();
        let i = (r % u64::from(n)) as u32;
        let reply = r >> 63 == 1;
        let k = key_of(i, args.seed);
        let k = if reply { k.reverse() } else { k };
        if op % 65_536 == 0 {
            now += 1;
        }
        if let Some((id, dir)) = sh.lookup(&k) {
            let l4 = if dir == Dir::Reply { &s2c } else { &c2s };
            if sh.track(now, id, dir, l4, 52) == Track::Accept {
                accepted += 1;
            }
        }
    }
    let est_s = t.elapsed().as_secs_f64();
    let est_rate = args.ops as f64 / est_s;
    assert_eq!(accepted, args.ops);

    // The same in bursts of 32 (lookup_burst overlaps the cache misses of
    // the burst), as the worker sees packets.
    let mut accepted = 0u64;
    let mut keys = [key_of(0, 0); BURST];
    let mut found = [None; BURST];
    let bursts = args.ops / BURST as u64;
    let t = Instant::now();
    for b in 0..bursts {
        for k in keys.iter_mut() {
            let r = rng.next();
            let key = key_of((r % u64::from(n)) as u32, args.seed);
            *k = if r >> 63 == 1 { key.reverse() } else { key };
        }
        if b % 2048 == 0 {
            now += 1;
        }
        sh.lookup_burst(&keys, &mut found);
        for (id, dir) in found.iter().flatten() {
            let l4 = if *dir == Dir::Reply { &s2c } else { &c2s };
            if sh.track(now, *id, *dir, l4, 52) == Track::Accept {
                accepted += 1;
            }
        }
    }
    let burst_rate = (bursts * BURST as u64) as f64 / t.elapsed().as_secs_f64();
    assert_eq!(accepted, bursts * BURST as u64);

    // Misses: lookups of keys that are not in the table (new flows'
    // first packet).
    let t = Instant::now();
    let mut misses = 0u64;
    let miss_ops = args.ops.min(4_000_000);
    for _ in 0..miss_ops {
        let r = rng.next();
        let mut k = key_of((r % u64::from(n)) as u32, args.seed);
        k.dport = 80;
        misses += u64::from(sh.lookup(&k).is_none());
    }
    let miss_rate = miss_ops as f64 / t.elapsed().as_secs_f64();
    assert_eq!(misses, miss_ops);

    // Expiry: everything times out (2 h established).
    let later = now + 3 * 3600 * 1000;
    let t = Instant::now();
    let mut expired = 0usize;
    loop {
        let k = sh.expire(later, 1024);
        if k == 0 {
            break;
        }
        expired += k;
    }
    let expire_rate = expired as f64 / t.elapsed().as_secs_f64();
    assert_eq!(expired, n as usize);

    stop.store(true, Ordering::Relaxed);
    sync_core.join().expect("sync core");
    let c = sh.counters();
    let bpc = sh.bytes_per_conn();
    let entry = std::mem::size_of::<tandem_dataplane::conntrack::Conn>();

    println!("conntrack, one shard, {n} connections");
    println!("  table allocation           {alloc_ms:>12.1} ms");
    println!("  bytes per connection       {bpc:>12} (entry {entry})");
    println!("  new conns (create + SYN)   {create_rate:>12.0} /s");
    println!("  handshake packets          {handshake_rate:>12.0} /s");
    println!(
        "  established lookup+track   {est_rate:>12.0} /s  ({:.1} ns/op)",
        1e9 / est_rate
    );
    println!(
        "  same, bursts of {BURST}         {burst_rate:>12.0} /s  ({:.1} ns/op)",
        1e9 / burst_rate
    );
    println!("  lookup misses              {miss_rate:>12.0} /s");
    println!("  expiry                     {expire_rate:>12.0} /s");
    println!(
        "  deltas pushed {} drained {} dropped {}",
        c.deltas,
        drained.load(Ordering::Relaxed),
        c.deltas_dropped
    );
    println!(
        "{{\"bench\":\"conntrack\",\"connections\":{n},\"ops\":{},\"bytes_per_conn\":{bpc},\"entry_bytes\":{entry},\"create_per_sec\":{create_rate:.0},\"handshake_pkts_per_sec\":{handshake_rate:.0},\"established_track_per_sec\":{est_rate:.0},\"established_track_burst_per_sec\":{burst_rate:.0},\"lookup_miss_per_sec\":{miss_rate:.0},\"expire_per_sec\":{expire_rate:.0},\"deltas\":{},\"deltas_dropped\":{}}}",
        args.ops, c.deltas, c.deltas_dropped
    );
}
