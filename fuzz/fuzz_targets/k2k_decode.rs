//! The K2K receive path on arbitrary bytes: the header and body decoders
//! and a [`Session`] must not panic, and a datagram the session refuses
//! must deliver nothing. Half the inputs are sealed with the cluster key
//! first, so that the fuzzer also reaches the code behind authentication
//! (body decoding, Hello, NACK, acks, in-order delivery).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_dataplane::k2k::{
    decode_body, seal_datagram, serial_from_str, Header, Psk, Session, SessionConfig,
    CONTROL_SEQ_BIT as CONTROL, HEADER_LEN, TAG_LEN,
};

const CLUSTER: u32 = 42;
const PSK: &[u8] = b"fuzzing key";

/// A session with a fixed session id (`id` repeated), so that a crash
/// input reproduces.
fn session(serial: &str, id: u8) -> Session {
    let mut cfg = SessionConfig::new(CLUSTER, serial_from_str(serial), Psk::new(PSK), 1);
    cfg.session_id = [id; 16];
    Session::new(cfg).expect("valid configuration")
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    // The codec alone.
    let _ = Header::parse(rest, 2, u8::MAX);
    let _ = decode_body(rest, |_| {});

    // A receiver that already knows its peer A (the Hello exchange done),
    // so stream datagrams are not refused for want of a Hello.
    let mut a = session("A", 1);
    let mut b = session("B", 2);
    let mut buf = vec![0u8; 70_000];
    for _ in 0..8 {
        while let Some(n) = a.poll_transmit(0, &mut buf) {
            let _ = b.handle_datagram(0, &buf[..n]);
        }
        while let Some(n) = b.poll_transmit(0, &mut buf) {
            let _ = a.handle_datagram(0, &buf[..n]);
        }
    }
    assert!(b.is_established(), "the handshake completes");
    while b.poll_record().is_some() {}

    let datagram: &[u8] = if mode & 1 == 0 {
        rest
    } else {
        // Sealed with the right key: the first 9 bytes choose flags and
        // sequence number, the rest is the body.
        if rest.len() < 9 {
            return;
        }
        let mut seq = u64::from_be_bytes(rest[1..9].try_into().expect("8 bytes"));
        if mode & 2 == 0 {
            seq = (seq % 4096) | if mode & 4 != 0 { CONTROL } else { 0 };
        }
        // Sealed with the data key of A's session towards B's (or, for
        // some inputs, a session B does not know).
        let header = Header {
            version: 2,
            flags: rest[0],
            cluster_id: CLUSTER,
            serial: serial_from_str("A"),
            session: if mode & 0x40 == 0 { a.session_id() } else { [9; 16] },
            peer_session: b.session_id(),
            seq,
            ack: u64::from(mode >> 3),
        };
        let body = &rest[9..];
        let Some(n) = seal_datagram(&Psk::new(PSK), &header, body, &mut buf) else {
            return;
        };
        assert_eq!(n, HEADER_LEN + body.len() + TAG_LEN);
        &buf[..n]
    };
    let datagram = datagram.to_vec();
    let accepted = b.handle_datagram(1, &datagram).is_ok();
    let mut delivered = 0;
    while b.poll_record().is_some() {
        delivered += 1;
    }
    if !accepted {
        assert_eq!(delivered, 0, "a refused datagram delivered records");
    }
    // Whatever state it left, the session keeps working.
    while b.poll_event().is_some() {}
    b.handle_timeout(10_000);
    let mut out = vec![0u8; 1500];
    for _ in 0..64 {
        if b.poll_transmit(10_000, &mut out).is_none() {
            break;
        }
    }
    let _ = b.poll_timeout();
});
