//! K2K throughput: ConnCreate records through two sessions in one process
//! (encode, seal, decode, open, deliver, ack), authenticated-only and
//! encrypted, with the bytes on the wire per connection. No sockets: this
//! is the sync core's CPU cost per record; the e2e tests measure the link.
//!
//! ```text
//! bench-k2k [--records 1000000]
//! ```

use std::net::Ipv4Addr;
use std::time::Instant;

use clap::Parser;
use tandem_dataplane::conntrack::{ConnSnapshot, DgramState, ProtoState};
use tandem_dataplane::flow::{proto, FlowKey};
use tandem_dataplane::k2k::{serial_from_str, Psk, Record, Session, SessionConfig};

/// Benchmark the K2K session.
#[derive(Parser, Debug)]
struct Args {
    /// Records per pass.
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
}

fn snapshot(i: u64) -> ConnSnapshot {
    ConnSnapshot {
        orig: FlowKey::new(
            Ipv4Addr::new(198, 18, 1, (10 + i % 200) as u8),
            (1024 + i % 60000) as u16,
            Ipv4Addr::new(198, 18, 2, 10),
            80,
            proto::UDP,
        ),
        nat: None,
        state: ProtoState::Udp(DgramState::Stream),
        rule: 1,
        sync: true,
        log: false,
        in_port: 0,
        out_port: 1,
        age_ms: 1000,
        idle_ms: 10,
        remaining_ms: 30_000,
        packets: [3, 2],
        bytes: [300, 200],
    }
}

fn session(serial: &str, encrypt: bool) -> Session {
    let mut c = SessionConfig::new(
        7,
        serial_from_str(serial),
        Psk::new(b"Bench-Cluster-Key-2026"),
        1,
    );
    c.encrypt = encrypt;
    c.queue_capacity = 65_536;
    Session::new(c).expect("session")
}

/// Moves `records` ConnCreate records from a to b; returns (records/s,
/// wire bytes per record).
fn pass(records: u64, encrypt: bool) -> (f64, f64) {
    let (mut a, mut b) = (session("BENCH-A", encrypt), session("BENCH-B", encrypt));
    let mut buf = vec![0u8; 2048];
    let mut now = 0u64;
    // Handshake.
    for _ in 0..10 {
        while let Some(n) = a.poll_transmit(now, &mut buf) {
            let _ = b.handle_datagram(now, &buf[..n]);
        }
        while let Some(n) = b.poll_transmit(now, &mut buf) {
            let _ = a.handle_datagram(now, &buf[..n]);
        }
        now += 10;
        a.handle_timeout(now);
        b.handle_timeout(now);
    }
    while a.poll_event().is_some() {}
    let bytes0 = a.counters().bytes_sent;
    let start = Instant::now();
    let (mut queued, mut delivered) = (0u64, 0u64);
    let mut rounds = 0u64;
    while delivered < records && rounds < records * 4 {
        rounds += 1;
        while queued < records && a.queue_space() > 0 {
            if a.queue(now, &Record::ConnCreate(snapshot(queued))).is_err() {
                break;
            }
            queued += 1;
        }
        while let Some(n) = a.poll_transmit(now, &mut buf) {
            let _ = b.handle_datagram(now, &buf[..n]);
        }
        while b.poll_record().is_some() {
            delivered += 1;
        }
        now += 1;
        b.handle_timeout(now);
        while let Some(n) = b.poll_transmit(now, &mut buf) {
            let _ = a.handle_datagram(now, &buf[..n]);
        }
        a.handle_timeout(now);
    }
    let secs = start.elapsed().as_secs_f64();
    let bytes = a.counters().bytes_sent - bytes0;
    (
        delivered as f64 / secs,
        bytes as f64 / delivered.max(1) as f64,
    )
}

fn main() {
    let args = Args::parse();
    let (auth_rate, auth_bytes) = pass(args.records, false);
    let (enc_rate, enc_bytes) = pass(args.records, true);
    println!(
        "{:<28} {:>14} {:>16}",
        "mode (one core, in memory)", "records/s", "bytes/record"
    );
    println!(
        "{:<28} {:>14.0} {:>16.1}",
        "authenticated", auth_rate, auth_bytes
    );
    println!(
        "{:<28} {:>14.0} {:>16.1}",
        "authenticated + encrypted", enc_rate, enc_bytes
    );
    println!(
        "{}",
        serde_json::json!({
            "bench": "k2k",
            "records": args.records,
            "auth_records_per_sec": auth_rate,
            "auth_bytes_per_record": auth_bytes,
            "encrypted_records_per_sec": enc_rate,
            "encrypted_bytes_per_record": enc_bytes,
        })
    );
}
