//! Sends one K2K Hello sealed with a key of the caller's choice to a
//! tandemd's sync port: the lab's probe that a member refuses datagrams
//! sealed with the wrong pre-shared key (and counts them).
//!
//! ```text
//! k2k-probe --psk KEY --cluster 7 --serial TDLAB0001 --epoch E --to 198.19.69.2:44242 [--from 198.19.69.1:0] [--count 5]
//! ```
//!
//! Refuses any destination outside 198.18.0.0/15 (the lab's addresses).

use std::net::{SocketAddrV4, UdpSocket};
use std::process::ExitCode;

use clap::Parser;
use tandem_dataplane::k2k::{
    random_session_id, seal_datagram, serial_from_str, BodyWriter, Header, Hello, Psk, Record,
    CONTROL_SEQ_BIT, MIN_VERSION, NO_SESSION, VERSION,
};

/// Send K2K Hellos sealed with a given key.
#[derive(Parser, Debug)]
struct Args {
    /// The pre-shared key to seal with (the K2K key is derived from it as
    /// the members derive theirs).
    #[arg(long)]
    psk: String,
    /// Cluster id.
    #[arg(long, default_value_t = 7)]
    cluster: u32,
    /// Sender serial (the real peer's, to get past the serial checks).
    #[arg(long)]
    serial: String,
    /// Destination (address:port), inside 198.18.0.0/15.
    #[arg(long)]
    to: SocketAddrV4,
    /// Source address (port 0: any).
    #[arg(long, default_value = "0.0.0.0:0")]
    from: SocketAddrV4,
    /// Boot number to claim (informational in the protocol).
    #[arg(long, default_value_t = 1)]
    epoch: u32,
    /// Datagrams to send.
    #[arg(long, default_value_t = 5)]
    count: u32,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let o = a.to.ip().octets();
    if o[0] != 198 || (o[1] != 18 && o[1] != 19) {
        eprintln!(
            "k2k-probe: {} is outside 198.18.0.0/15; the probe only talks to the lab",
            a.to
        );
        return ExitCode::from(2);
    }
    let sock = match UdpSocket::bind(a.from) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("k2k-probe: cannot bind {}: {e}", a.from);
            return ExitCode::from(2);
        }
    };
    let serial = serial_from_str(&a.serial);
    // Members seal with the K2K master key derived from the pre-shared key
    // (Argon2id then HKDF), not with the pre-shared key itself.
    let keys = match tandem_dataplane::hakeys::for_cluster(&a.psk, a.cluster) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("k2k-probe: {e}");
            return ExitCode::from(2);
        }
    };
    let psk = Psk::new(keys.k2k_master().as_bytes());
    let epoch = a.epoch;
    // A session of its own: sealed with the hello key of (serial, session).
    let session = random_session_id();
    let mut sent = 0;
    for i in 0..a.count {
        let mut body = [0u8; 256];
        let mut w = BodyWriter::new(&mut body);
        w.push(&Record::Hello(Hello {
            min_version: MIN_VERSION,
            max_version: VERSION,
            reply: false,
            capabilities: 0,
            serial,
            epoch,
            base_seq: 0,
        }));
        let len = w.len();
        let header = Header {
            version: MIN_VERSION,
            flags: 0,
            cluster_id: a.cluster,
            serial,
            session,
            peer_session: NO_SESSION,
            // Far ahead of the real peer's sequence numbers: not a replay.
            seq: CONTROL_SEQ_BIT | (1 << 40) | u64::from(i),
            ack: 0,
        };
        let mut out = [0u8; 512];
        let Some(n) = seal_datagram(&psk, &header, &body[..len], &mut out) else {
            continue;
        };
        if sock.send_to(&out[..n], a.to).is_ok() {
            sent += 1;
        }
    }
    println!("{{\"sent\":{sent}}}");
    ExitCode::SUCCESS
}
