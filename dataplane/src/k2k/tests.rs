//! K2K tests: codec round trips and rejections, authentication, replay
//! and epochs, and two sessions over a simulated lossy, reordering,
//! duplicating link (seeded, so a failure reproduces).

use super::wire::{CONTROL_SEQ_BIT, FLAG_ENCRYPTED, KEY_LEN};
use super::*;
use crate::conntrack::{
    BucketMask, ConnSnapshot, ConnUpdate, DgramState, EspConn, IcmpConn, Nat, NatKind, ProtoState,
    SctpConn, SctpState, TcpConn, TcpPeer, TcpState,
};
use crate::flow::{proto, FlowKey};
use proptest::prelude::*;
use std::collections::HashSet;
use std::net::Ipv4Addr;

const CLUSTER: u32 = 0x00c0_ffee;

fn cfg(serial: &str, epoch: u32) -> SessionConfig {
    SessionConfig::new(
        CLUSTER,
        serial_from_str(serial),
        Psk::new(b"correct horse battery staple"),
        epoch,
    )
}

fn key(i: u32) -> FlowKey {
    FlowKey::new(
        Ipv4Addr::from(0x0a00_0000 | (i & 0xffff)),
        (i % 50000) as u16 + 1024,
        Ipv4Addr::new(192, 0, 2, (i % 250) as u8 + 1),
        443,
        proto::TCP,
    )
}

fn tcp_snapshot(i: u32) -> ConnSnapshot {
    let k = key(i);
    ConnSnapshot {
        orig: k,
        nat: Some(Nat {
            kind: NatKind::Snat,
            orig: k,
            translated: FlowKey {
                src: Ipv4Addr::new(203, 0, 113, 1),
                sport: 40000,
                ..k
            },
        }),
        state: ProtoState::Tcp(TcpConn {
            state: TcpState::Established,
            liberal: false,
            peers: [
                TcpPeer {
                    end: 1000 + i,
                    maxend: 70000,
                    maxwin: 65535,
                    scale: 7,
                    flags: 1,
                },
                TcpPeer {
                    end: 5000,
                    maxend: 9000 + i,
                    maxwin: 29200,
                    scale: 7,
                    flags: 1,
                },
            ],
        }),
        rule: 7,
        sync: true,
        log: false,
        in_port: 0,
        out_port: 1,
        age_ms: 12_345,
        idle_ms: 10,
        remaining_ms: 7_200_000,
        packets: [10, 12],
        bytes: [1500, 90000],
    }
}

/// Record `i` of a test stream: mostly creates, some refreshes, deletes.
fn rec(i: u32) -> Record {
    match i % 4 {
        0 | 1 => Record::ConnCreate(tcp_snapshot(i)),
        2 => Record::ConnRefresh {
            key: key(i),
            remaining_ms: u64::from(i),
        },
        _ => Record::ConnDelete { key: key(i) },
    }
}

fn encode(records: &[Record]) -> Vec<u8> {
    let mut buf = vec![0u8; 65000];
    let mut w = BodyWriter::new(&mut buf);
    for r in records {
        assert!(w.push(r));
    }
    let n = w.len();
    buf.truncate(n);
    buf
}

fn decode(body: &[u8]) -> Result<(Vec<Record>, BodyInfo), DecodeError> {
    let mut out = vec![];
    let info = decode_body(body, |r| out.push(r))?;
    Ok((out, info))
}

// ----- Strategies. -----

fn arb_key() -> impl Strategy<Value = FlowKey> {
    (
        any::<u32>(),
        any::<u32>(),
        any::<u16>(),
        any::<u16>(),
        any::<u8>(),
    )
        .prop_map(|(s, d, sp, dp, p)| FlowKey::new(Ipv4Addr::from(s), sp, Ipv4Addr::from(d), dp, p))
}

fn arb_peer() -> impl Strategy<Value = TcpPeer> {
    (
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        0u8..=14,
        any::<u8>(),
    )
        .prop_map(|(end, maxend, maxwin, scale, flags)| TcpPeer {
            end,
            maxend,
            maxwin,
            scale,
            flags,
        })
}

fn arb_dgram() -> impl Strategy<Value = DgramState> {
    prop_oneof![
        Just(DgramState::Unreplied),
        Just(DgramState::Replied),
        Just(DgramState::Stream)
    ]
}

fn arb_state() -> impl Strategy<Value = ProtoState> {
    let tcp_state = (0usize..8).prop_map(|i| {
        [
            TcpState::SynSent,
            TcpState::SynReceived,
            TcpState::Established,
            TcpState::FinWait,
            TcpState::CloseWait,
            TcpState::LastAck,
            TcpState::TimeWait,
            TcpState::Closed,
        ][i]
    });
    let sctp_state = (0usize..6).prop_map(|i| {
        [
            SctpState::CookieWait,
            SctpState::CookieEchoed,
            SctpState::Established,
            SctpState::ShutdownSent,
            SctpState::ShutdownAckSent,
            SctpState::Closed,
        ][i]
    });
    prop_oneof![
        (tcp_state, any::<bool>(), arb_peer(), arb_peer()).prop_map(|(state, liberal, a, b)| {
            ProtoState::Tcp(TcpConn {
                state,
                liberal,
                peers: [a, b],
            })
        }),
        arb_dgram().prop_map(ProtoState::Udp),
        arb_dgram().prop_map(ProtoState::Gre),
        arb_dgram().prop_map(ProtoState::Other),
        (any::<u8>(), any::<bool>())
            .prop_map(|(ty, replied)| ProtoState::Icmp(IcmpConn { ty, replied })),
        (arb_dgram(), any::<[u32; 2]>())
            .prop_map(|(state, spi)| ProtoState::Esp(EspConn { state, spi })),
        (sctp_state, any::<[u32; 2]>())
            .prop_map(|(state, vtag)| ProtoState::Sctp(SctpConn { state, vtag })),
    ]
}

fn arb_snapshot() -> impl Strategy<Value = ConnSnapshot> {
    (
        arb_key(),
        prop::option::of((any::<bool>(), arb_key())),
        arb_state(),
        (
            any::<u32>(),
            any::<bool>(),
            any::<bool>(),
            any::<u16>(),
            any::<u16>(),
        ),
        (any::<u64>(), any::<u32>(), any::<u32>()),
        (any::<[u64; 2]>(), any::<[u64; 2]>()),
    )
        .prop_map(
            |(orig, nat, state, (rule, sync, log, in_port, out_port), (age, idle, rem), (p, b))| {
                ConnSnapshot {
                    orig,
                    nat: nat.map(|(snat, translated)| Nat {
                        kind: if snat { NatKind::Snat } else { NatKind::Dnat },
                        orig,
                        translated,
                    }),
                    state,
                    rule,
                    sync,
                    log,
                    in_port,
                    out_port,
                    age_ms: age,
                    idle_ms: u64::from(idle),
                    remaining_ms: u64::from(rem),
                    packets: p,
                    bytes: b,
                }
            },
        )
}

fn arb_record() -> impl Strategy<Value = Record> {
    prop_oneof![
        (
            1u8..=200,
            any::<u8>(),
            any::<bool>(),
            any::<u32>(),
            any::<[u8; 16]>(),
            any::<u32>(),
            0u64..CONTROL_SEQ_BIT
        )
            .prop_map(
                |(min, extra, reply, capabilities, serial, epoch, base_seq)| {
                    Record::Hello(Hello {
                        min_version: min,
                        max_version: min.saturating_add(extra % 8),
                        reply,
                        capabilities,
                        serial,
                        epoch,
                        base_seq,
                    })
                }
            ),
        (any::<u64>(), any::<u64>()).prop_map(|(a, b)| Record::Nack {
            first: a.min(b),
            last: a.max(b)
        }),
        (any::<u32>(), any::<[u8; 32]>()).prop_map(|(id, m)| Record::BulkRequest {
            id,
            mask: BucketMask(m)
        }),
        (any::<u32>(), any::<[u8; 32]>()).prop_map(|(id, m)| Record::BulkStart {
            id,
            mask: BucketMask(m)
        }),
        any::<u32>().prop_map(|id| Record::VerifyRequest { id }),
        (any::<u32>(), 0u8..16, any::<[(u32, u64); 16]>()).prop_map(|(id, k, buckets)| {
            Record::VerifyDigest {
                id,
                first: k * 16,
                buckets,
            }
        }),
        (0u8..2, 0u8..4).prop_map(|(link, heard)| Record::Keepalive { link, heard }),
        (any::<u32>(), any::<u64>()).prop_map(|(id, count)| Record::BulkEnd { id, count }),
        arb_key().prop_map(|key| Record::UpdateRequest { key }),
        arb_snapshot().prop_map(Record::ConnCreate),
        (arb_key(), arb_state(), any::<u32>()).prop_map(|(key, state, r)| {
            Record::ConnUpdate(ConnUpdate {
                key,
                state,
                remaining_ms: u64::from(r),
            })
        }),
        (arb_key(), any::<u32>()).prop_map(|(key, r)| Record::ConnRefresh {
            key,
            remaining_ms: u64::from(r)
        }),
        arb_key().prop_map(|key| Record::ConnDelete { key }),
    ]
}

proptest! {
    #[test]
    fn every_record_type_round_trips(records in prop::collection::vec(arb_record(), 1..40)) {
        let body = encode(&records);
        let (back, info) = decode(&body).unwrap();
        prop_assert_eq!(info.records, records.len());
        prop_assert_eq!(info.unknown_groups, 0);
        prop_assert_eq!(back, records);
    }

    #[test]
    fn decoding_arbitrary_bodies_never_panics(body in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = decode(&body);
        let _ = Header::parse(&body, 1, 255);
    }
}

#[test]
fn records_of_one_type_share_a_group() {
    let body = encode(&[rec(0), rec(1), rec(2)]);
    // Two creates in one group, then a refresh group.
    assert_eq!(
        body.len(),
        2 * GROUP_HEADER_LEN + 2 * CREATE_LEN + RecordType::ConnRefresh.wire_len()
    );
    assert_eq!(body[0], RecordType::ConnCreate as u8);
    assert_eq!(u16::from_be_bytes([body[4], body[5]]), 2);
}

#[test]
fn conn_create_is_116_bytes_on_the_wire() {
    assert_eq!(CREATE_LEN, 116);
    assert_eq!(OVERHEAD, 92);
    assert_eq!(RecordType::ConnUpdate.wire_len(), 49);
    assert_eq!(RecordType::ConnRefresh.wire_len(), 17);
    assert_eq!(RecordType::ConnDelete.wire_len(), KEY_LEN);
}

#[test]
fn unknown_record_type_is_skipped() {
    let mut buf = vec![0u8; 2000];
    let mut w = BodyWriter::new(&mut buf);
    assert!(w.push(&rec(0)));
    assert!(w.push_raw(0x7e, &[0xaa; 20]));
    assert!(w.push_raw(0x7e, &[0xbb; 20]));
    assert!(w.push(&rec(3)));
    let n = w.len();
    let (back, info) = decode(&buf[..n]).unwrap();
    assert_eq!(back, vec![rec(0), rec(3)]);
    assert_eq!(info.unknown_groups, 1);
    assert_eq!(info.unknown_records, 2);
}

#[test]
fn longer_record_length_is_accepted_and_trailing_bytes_ignored() {
    // A "version 2" ConnDelete with 7 extra bytes per record.
    let mut body = vec![RecordType::ConnDelete as u8, 0, 0, 20, 0, 2];
    for i in [5u32, 6] {
        let mut r = [0x55u8; 20];
        Record::ConnDelete { key: key(i) }.emit(&mut r);
        body.extend_from_slice(&r);
    }
    let (back, _) = decode(&body).unwrap();
    assert_eq!(
        back,
        vec![
            Record::ConnDelete { key: key(5) },
            Record::ConnDelete { key: key(6) }
        ]
    );
}

#[test]
fn every_body_rejection_has_its_reason() {
    let good = encode(&[rec(0)]);
    // Group header cut short.
    assert_eq!(
        decode(&[0x10, 0, 0]).unwrap_err(),
        DecodeError::GroupHeaderTruncated
    );
    // Group longer than the body.
    assert_eq!(
        decode(&good[..good.len() - 1]).unwrap_err(),
        DecodeError::GroupTruncated
    );
    // Known type, record shorter than its size.
    let mut short = good.clone();
    short[2..4].copy_from_slice(&100u16.to_be_bytes());
    assert_eq!(decode(&short).unwrap_err(), DecodeError::RecordTooShort);
    // Out-of-range values: NAT kind, state tag, TCP state, window scale,
    // NACK range, Hello versions.
    let mut bad = good.clone();
    bad[GROUP_HEADER_LEN + 13] = 9;
    assert_eq!(decode(&bad).unwrap_err(), DecodeError::BadValue);
    let mut bad = good.clone();
    bad[GROUP_HEADER_LEN + 36] = 99;
    assert_eq!(decode(&bad).unwrap_err(), DecodeError::BadValue);
    let mut bad = good.clone();
    bad[GROUP_HEADER_LEN + 37] = 8;
    assert_eq!(decode(&bad).unwrap_err(), DecodeError::BadValue);
    let mut bad = good.clone();
    bad[GROUP_HEADER_LEN + 36 + 4 + 12] = 15;
    assert_eq!(decode(&bad).unwrap_err(), DecodeError::BadValue);
    let mut nack = encode(&[Record::Nack { first: 1, last: 2 }]);
    nack[GROUP_HEADER_LEN + 7] = 9;
    assert_eq!(decode(&nack).unwrap_err(), DecodeError::BadValue);
    let hello = Hello {
        min_version: 2,
        max_version: 1,
        reply: false,
        capabilities: 0,
        serial: [0; 16],
        epoch: 1,
        base_seq: 1,
    };
    let mut body = vec![0u8; 100];
    let mut w = BodyWriter::new(&mut body);
    w.push(&Record::Hello(hello));
    let n = w.len();
    assert_eq!(decode(&body[..n]).unwrap_err(), DecodeError::BadValue);
}

#[test]
fn every_header_rejection_has_its_reason() {
    let mut a = Session::new(cfg("A", 1)).unwrap();
    let mut buf = [0u8; 1400];
    let n = a.poll_transmit(0, &mut buf).unwrap();
    let d = &buf[..n];
    assert!(Header::parse(d, 2, 2).is_ok());
    assert_eq!(
        Header::parse(&d[..OVERHEAD - 1], 2, 2).unwrap_err(),
        DecodeError::Truncated
    );
    let mut x = d.to_vec();
    x[0] = b'X';
    assert_eq!(Header::parse(&x, 2, 2).unwrap_err(), DecodeError::BadMagic);
    let mut x = d.to_vec();
    x[4] = 4;
    assert_eq!(
        Header::parse(&x, 2, 3).unwrap_err(),
        DecodeError::UnknownVersion
    );
    let mut x = d.to_vec();
    x[6..8].copy_from_slice(&10u16.to_be_bytes());
    assert_eq!(
        Header::parse(&x, 2, 2).unwrap_err(),
        DecodeError::BadHeaderLength
    );
    x[6..8].copy_from_slice(&(n as u16).to_be_bytes());
    assert_eq!(
        Header::parse(&x, 2, 2).unwrap_err(),
        DecodeError::BadHeaderLength
    );
}

// ----- Authentication, replay, epochs. -----

/// A's first datagram (a Hello) and a fresh B.
fn hello_pair(encrypt: bool) -> (Session, Session, Vec<u8>) {
    let mut ca = cfg("A", 1);
    ca.encrypt = encrypt;
    let mut a = Session::new(ca).unwrap();
    let b = Session::new(cfg("B", 1)).unwrap();
    let mut buf = [0u8; 1400];
    let n = a.poll_transmit(0, &mut buf).unwrap();
    (a, b, buf[..n].to_vec())
}

#[test]
fn datagram_sealed_with_the_wrong_key_is_rejected() {
    let mut c = cfg("A", 1);
    c.psk = Psk::new(b"not the cluster key");
    let mut a = Session::new(c).unwrap();
    let mut b = Session::new(cfg("B", 1)).unwrap();
    let mut buf = [0u8; 1400];
    let n = a.poll_transmit(0, &mut buf).unwrap();
    assert_eq!(b.handle_datagram(0, &buf[..n]), Err(DropReason::BadAuth));
    assert_eq!(b.counters().dropped(DropReason::BadAuth), 1);
    assert!(b.peer().is_none());
    assert!(b.poll_event().is_none());
}

fn tampering_any_byte_is_rejected(encrypt: bool) {
    let (_a, mut b, d) = hello_pair(encrypt);
    for i in 0..d.len() {
        for bit in [0x01u8, 0x80] {
            let mut x = d.clone();
            x[i] ^= bit;
            assert!(b.handle_datagram(0, &x).is_err(), "byte {i} bit {bit:#x}");
        }
    }
    // Truncated by one byte, or extended by one.
    assert_eq!(
        b.handle_datagram(0, &d[..d.len() - 1]),
        Err(DropReason::BadAuth)
    );
    let mut longer = d.clone();
    longer.push(0);
    assert_eq!(b.handle_datagram(0, &longer), Err(DropReason::BadAuth));
    assert!(b.peer().is_none(), "nothing applied");
    assert_eq!(b.counters().hellos_received, 0);
    // The genuine Hello is authentic, but it does not know B's session:
    // B only answers it (so that A can prove it is live).
    assert_eq!(b.handle_datagram(0, &d), Ok(()));
    assert_eq!(b.counters().hellos_received, 1);
    assert!(b.peer().is_none());
    let mut buf = [0u8; 1400];
    assert!(
        b.poll_transmit(0, &mut buf).is_some(),
        "B answers the Hello"
    );
}

#[test]
fn tampered_byte_is_rejected_when_authenticated_only() {
    tampering_any_byte_is_rejected(false);
}

#[test]
fn tampered_byte_is_rejected_when_encrypted() {
    tampering_any_byte_is_rejected(true);
}

#[test]
fn wrong_cluster_reflected_and_unknown_version_are_rejected() {
    let (_a, mut b, d) = hello_pair(false);
    let mut other = cfg("B", 1);
    other.cluster_id = 7;
    let mut b2 = Session::new(other).unwrap();
    assert_eq!(b2.handle_datagram(0, &d), Err(DropReason::WrongCluster));
    // A datagram of A's reflected back to A.
    let mut a2 = Session::new(cfg("A", 1)).unwrap();
    assert_eq!(a2.handle_datagram(0, &d), Err(DropReason::Reflected));
    let mut x = d.clone();
    x[4] = 3;
    assert_eq!(b.handle_datagram(0, &x), Err(DropReason::UnknownVersion));
    let mut pinned = cfg("B", 1);
    pinned.peer_serial = Some(serial_from_str("C"));
    let mut b3 = Session::new(pinned).unwrap();
    assert_eq!(b3.handle_datagram(0, &d), Err(DropReason::WrongPeer));
    assert_eq!(
        b.handle_datagram(0, &[0u8; 70_000]),
        Err(DropReason::Oversize)
    );
}

#[test]
fn encrypted_body_is_not_in_clear_and_authenticated_body_is() {
    for encrypt in [false, true] {
        let mut sim = Sim::new(
            {
                let mut c = cfg("A", 1);
                c.encrypt = encrypt;
                c
            },
            cfg("B", 1),
            Link::perfect(),
            1,
        );
        sim.establish();
        let r = Record::ConnDelete { key: key(77) };
        let mut plain = [0u8; KEY_LEN];
        r.emit(&mut plain);
        sim.nodes[0].queue(sim.now, &r).unwrap();
        let mut buf = [0u8; 1400];
        let n = sim.nodes[0].poll_transmit(sim.now, &mut buf).unwrap();
        let d = &buf[..n];
        assert_eq!(d[5] & FLAG_ENCRYPTED != 0, encrypt);
        let found = d.windows(KEY_LEN).any(|w| w == plain);
        assert_eq!(found, !encrypt);
        assert_eq!(sim.nodes[1].handle_datagram(sim.now, d), Ok(()));
        assert_eq!(sim.nodes[1].poll_record(), Some(r));
    }
}

#[test]
fn replayed_datagram_is_rejected() {
    let mut sim = Sim::new(cfg("A", 1), cfg("B", 1), Link::perfect(), 1);
    sim.establish();
    sim.nodes[0].queue(sim.now, &rec(1)).unwrap();
    let mut buf = [0u8; 1400];
    let n = sim.nodes[0].poll_transmit(sim.now, &mut buf).unwrap();
    let b = &mut sim.nodes[1];
    assert_eq!(b.handle_datagram(sim.now, &buf[..n]), Ok(()));
    assert_eq!(b.poll_record(), Some(rec(1)));
    assert_eq!(
        b.handle_datagram(sim.now, &buf[..n]),
        Err(DropReason::Replayed)
    );
    assert_eq!(b.poll_record(), None);
    // A control datagram (pure ack) replayed.
    let n = b.poll_transmit(sim.now + 100, &mut buf).unwrap();
    let a = &mut sim.nodes[0];
    assert_eq!(a.handle_datagram(sim.now, &buf[..n]), Ok(()));
    assert_eq!(
        a.handle_datagram(sim.now, &buf[..n]),
        Err(DropReason::Replayed)
    );
    assert_eq!(a.counters().dropped(DropReason::Replayed), 1);
}

#[test]
fn a_datagram_of_the_peers_previous_session_is_refused_after_it_restarts() {
    let mut sim = Sim::new(cfg("A", 1), cfg("B", 1), Link::perfect(), 1);
    sim.establish();
    // Capture a datagram of B's first run.
    sim.nodes[1].request_update(sim.now, key(1)).unwrap();
    let mut buf = [0u8; 1400];
    let n = sim.nodes[1].poll_transmit(sim.now, &mut buf).unwrap();
    let old = buf[..n].to_vec();
    // B restarts; its clock even went back (epoch 0 < 1): nobody is
    // locked out, the session ids tell the runs apart.
    sim.nodes[1] = Session::new(cfg("B", 0)).unwrap();
    sim.establish();
    assert_eq!(sim.nodes[0].peer().unwrap().epoch, 0);
    assert_eq!(
        sim.nodes[0].peer().unwrap().session,
        sim.nodes[1].session_id()
    );
    assert_eq!(
        sim.nodes[0].handle_datagram(sim.now, &old),
        Err(DropReason::StaleSession)
    );
}

/// Every datagram `from` sends until nothing is due.
fn all_transmits(from: &mut Session, now: u64) -> Vec<Vec<u8>> {
    let mut out = vec![];
    let mut buf = [0u8; 1400];
    while let Some(n) = from.poll_transmit(now, &mut buf) {
        out.push(buf[..n].to_vec());
        assert!(out.len() < 10_000);
    }
    out
}

#[test]
fn a_capture_replayed_after_the_receiver_restarts_applies_nothing() {
    let mut sim = Sim::new(cfg("A", 1), cfg("B", 1), Link::perfect(), 1);
    // Everything A sends in its whole run, the handshake and a bulk
    // included, is captured.
    let mut capture: Vec<Vec<u8>> = vec![];
    sim.establish();
    sim.nodes[0].start_bulk(sim.now).unwrap();
    for i in 0..20 {
        sim.nodes[0]
            .queue(sim.now, &Record::ConnCreate(tcp_snapshot(i)))
            .unwrap();
    }
    sim.nodes[0].end_bulk(sim.now).unwrap();
    capture.extend(all_transmits(&mut sim.nodes[0], sim.now));
    assert!(capture.len() >= 2);
    // B restarts and the capture is replayed to it, twice.
    let mut b = Session::new(cfg("B", 2)).unwrap();
    for _ in 0..2 {
        for d in &capture {
            assert!(b.handle_datagram(sim.now, d).is_err(), "accepted a replay");
        }
    }
    assert!(b.peer().is_none());
    assert!(b.poll_record().is_none(), "a replayed record was delivered");
    assert!(
        !std::iter::from_fn(|| b.poll_event())
            .any(|e| matches!(e, Event::PeerUp { .. } | Event::BulkReceived { .. })),
        "a replay started a session"
    );
    assert_eq!(
        b.counters().dropped(DropReason::StaleSession),
        2 * capture.len() as u64
    );
}

#[test]
fn a_replayed_hello_of_the_peers_old_session_does_not_bring_it_back() {
    let mut sim = Sim::new(cfg("A", 1), cfg("B", 1), Link::perfect(), 1);
    // A's first Hello (sealed with its hello key: it knew no session of B).
    let mut buf = [0u8; 1400];
    let n = sim.nodes[0].poll_transmit(0, &mut buf).unwrap();
    let first_hello = buf[..n].to_vec();
    sim.establish();
    let old_a = sim.nodes[0].session_id();
    sim.nodes[0] = Session::new(cfg("A", 1)).unwrap();
    sim.establish();
    let b = &mut sim.nodes[1];
    assert_ne!(b.peer().unwrap().session, old_a);
    while b.poll_event().is_some() {}
    assert_eq!(
        b.handle_datagram(sim.now, &first_hello),
        Err(DropReason::StaleSession)
    );
    assert!(b.poll_event().is_none());
}

#[test]
fn restarts_with_the_same_epoch_never_reuse_a_key_and_nonce() {
    // Two runs of A with the same configuration and epoch (a restart
    // within the same second): the (key, nonce) of every datagram differ,
    // which shows as different session ids in headers with the same seq.
    let mut seen = std::collections::HashMap::new();
    for _run in 0..3 {
        let mut sim = Sim::new(cfg("A", 7), cfg("B", 1), Link::perfect(), 1);
        sim.establish();
        for i in 0..5 {
            sim.nodes[0].queue(sim.now, &rec(i)).unwrap();
            for d in all_transmits(&mut sim.nodes[0], sim.now) {
                let (h, _) = Header::parse(&d, 2, 2).unwrap();
                // The key is named by (session, peer session); the nonce
                // is the seq.
                let k = (h.session, h.peer_session, h.seq);
                let prev = seen.insert(k, d.clone());
                assert!(prev.is_none_or(|p| p == d), "nonce reused under one key");
            }
            for _ in 0..1000 {
                if !sim.step() {
                    break;
                }
            }
        }
    }
    let sessions: HashSet<_> = seen.keys().map(|k| k.0).collect();
    assert_eq!(sessions.len(), 3, "each run drew its own session id");
}

// ----- The simulated link. -----

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 > 1.0 - p
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

#[derive(Clone, Copy)]
struct Link {
    loss: f64,
    dup: f64,
    delay_ms: u64,
    jitter_ms: u64,
}

impl Link {
    fn perfect() -> Link {
        Link {
            loss: 0.0,
            dup: 0.0,
            delay_ms: 1,
            jitter_ms: 0,
        }
    }
    fn lossy(loss: f64) -> Link {
        Link {
            loss,
            dup: 0.05,
            delay_ms: 2,
            jitter_ms: 6,
        }
    }
}

struct Sim {
    now: u64,
    nodes: [Session; 2],
    flight: Vec<(u64, usize, Vec<u8>)>,
    rng: Rng,
    link: Link,
    /// Drop everything sent towards node i.
    blocked: [bool; 2],
    events: [Vec<Event>; 2],
    delivered: [Vec<Record>; 2],
}

impl Sim {
    fn new(a: SessionConfig, b: SessionConfig, link: Link, seed: u64) -> Sim {
        Sim {
            now: 0,
            nodes: [Session::new(a).unwrap(), Session::new(b).unwrap()],
            flight: vec![],
            rng: Rng(seed),
            link,
            blocked: [false; 2],
            events: [vec![], vec![]],
            delivered: [vec![], vec![]],
        }
    }

    fn pump(&mut self) {
        let mut buf = [0u8; 1500];
        for i in 0..2 {
            self.nodes[i].handle_timeout(self.now);
            while let Some(n) = self.nodes[i].poll_transmit(self.now, &mut buf) {
                let to = 1 - i;
                if self.blocked[to] || self.rng.chance(self.link.loss) {
                    continue;
                }
                let copies = if self.rng.chance(self.link.dup) { 2 } else { 1 };
                for _ in 0..copies {
                    let at =
                        self.now + self.link.delay_ms + self.rng.below(self.link.jitter_ms + 1);
                    self.flight.push((at, to, buf[..n].to_vec()));
                }
            }
            while let Some(e) = self.nodes[i].poll_event() {
                self.events[i].push(e);
            }
            while let Some(r) = self.nodes[i].poll_record() {
                self.delivered[i].push(r);
            }
        }
    }

    /// One step: send what is due, jump to the next timer or arrival,
    /// deliver what arrived. False when nothing is left to happen.
    fn step(&mut self) -> bool {
        self.pump();
        let next = [
            self.nodes[0].poll_timeout(),
            self.nodes[1].poll_timeout(),
            self.flight.iter().map(|f| f.0).min(),
        ]
        .into_iter()
        .flatten()
        .min();
        let Some(next) = next else { return false };
        self.now = next.max(self.now + 1);
        let mut due = vec![];
        let mut i = 0;
        while i < self.flight.len() {
            if self.flight[i].0 <= self.now {
                due.push(self.flight.swap_remove(i));
            } else {
                i += 1;
            }
        }
        due.sort_by_key(|f| f.0);
        for (_, to, d) in due {
            let _ = self.nodes[to].handle_datagram(self.now, &d);
        }
        self.pump();
        true
    }

    fn run_until(&mut self, max_ms: u64, mut done: impl FnMut(&Sim) -> bool) {
        let end = self.now + max_ms;
        while !done(self) {
            assert!(
                self.now < end,
                "not done after {max_ms} ms of simulated time"
            );
            if !self.step() {
                assert!(done(self), "nothing left to happen and not done");
            }
        }
    }

    /// Runs until each node knows the other's current session.
    fn establish(&mut self) {
        self.run_until(60_000, |s| {
            let knows = |i: usize| {
                s.nodes[i].is_established()
                    && s.nodes[i].peer().map(|p| p.session) == Some(s.nodes[1 - i].session_id())
            };
            knows(0) && knows(1)
        });
    }

    /// Streams `n` records from node 0 (paced by queue space) and runs
    /// until node 0 has them all acknowledged.
    fn stream(&mut self, from: u32, n: u32) {
        let mut i = from;
        let end = from + n;
        let limit = self.now + 600_000;
        while i < end || self.nodes[0].queued() > 0 || self.nodes[0].in_flight() > 0 {
            assert!(
                self.now < limit,
                "stream did not drain: {:?} {:?} {:?} {:?} delivered {}",
                self.nodes[0],
                self.nodes[1],
                self.nodes[0].counters(),
                self.nodes[1].counters(),
                self.delivered[1].len()
            );
            while i < end && self.nodes[0].queue_space() > 0 {
                self.nodes[0].queue(self.now, &rec(i)).unwrap();
                i += 1;
            }
            if !self.step() {
                break;
            }
        }
        // Let the last acks and deliveries settle.
        let t = self.now + 100;
        while self.now < t && self.step() {}
    }
}

fn small_queue(serial: &str) -> SessionConfig {
    let mut c = cfg(serial, 1);
    c.queue_capacity = 500;
    c
}

fn converges_over_lossy_link(loss: f64, seed: u64, encrypt: bool) {
    let mut a = small_queue("A");
    a.encrypt = encrypt;
    let mut sim = Sim::new(a, small_queue("B"), Link::lossy(loss), seed);
    sim.establish();
    sim.stream(0, 5000);
    let want: Vec<Record> = (0..5000).map(rec).collect();
    assert_eq!(sim.delivered[1].len(), want.len(), "exactly once");
    assert_eq!(sim.delivered[1], want, "in order");
    let ca = sim.nodes[0].counters().clone();
    let cb = sim.nodes[1].counters().clone();
    assert_eq!(ca.records_acked, 5000);
    assert_eq!(cb.records_received, 5000);
    assert!(ca.retransmits > 0, "losses were repaired");
    assert!(cb.nacks_sent > 0, "gaps were NACKed");
    assert_eq!(cb.dropped(DropReason::BadAuth), 0);
    assert_eq!(ca.evicted_unacked, 0);
    assert!(!sim.events[0]
        .iter()
        .any(|e| matches!(e, Event::BulkNeeded(BulkReason::StreamLost))));
    let (mut lag, mut max_lag) = (0, 0);
    while let Some(s) = sim.nodes[0].poll_lag_sample() {
        lag += u64::from(s.records);
        max_lag = max_lag.max(s.lag_ms);
    }
    assert!(lag > 0);
    eprintln!(
        "loss {loss}: {} ms simulated, {} data datagrams, {} retransmits, {} rto, \
         {} nacks, {} replayed, srtt {:?}, max lag {max_lag} ms",
        sim.now,
        ca.data_datagrams_sent,
        ca.retransmits,
        ca.rto_expirations,
        cb.nacks_sent,
        cb.dropped(DropReason::Replayed),
        sim.nodes[0].srtt_ms()
    );
}

#[test]
fn sessions_converge_over_a_link_losing_10_percent() {
    converges_over_lossy_link(0.10, 0x5eed_0010, false);
}

#[test]
fn sessions_converge_over_a_link_losing_30_percent() {
    converges_over_lossy_link(0.30, 0x5eed_0030, false);
}

#[test]
fn encrypted_sessions_converge_over_a_link_losing_30_percent() {
    converges_over_lossy_link(0.30, 0x5eed_0031, true);
}

#[test]
fn sessions_converge_over_many_seeds() {
    for seed in 0..8 {
        let mut sim = Sim::new(small_queue("A"), small_queue("B"), Link::lossy(0.2), seed);
        sim.establish();
        sim.stream(0, 400);
        assert_eq!(
            sim.delivered[1],
            (0..400).map(rec).collect::<Vec<_>>(),
            "seed {seed}"
        );
    }
}

#[test]
fn first_contact_raises_peer_up_and_bulk_needed_on_both_sides() {
    let mut sim = Sim::new(cfg("A", 1), cfg("B", 1), Link::perfect(), 1);
    sim.establish();
    for i in 0..2 {
        assert!(matches!(sim.events[i][0], Event::PeerUp { version: 2, .. }));
        assert_eq!(sim.events[i][1], Event::BulkNeeded(BulkReason::PeerUp));
    }
    // Then quiet: no Hello ping-pong.
    let sent = sim.nodes[0].counters().datagrams_sent + sim.nodes[1].counters().datagrams_sent;
    let t = sim.now + 10_000;
    while sim.now < t && sim.step() {}
    assert_eq!(
        sim.nodes[0].counters().datagrams_sent + sim.nodes[1].counters().datagrams_sent,
        sent
    );
}

#[test]
fn tail_loss_is_repaired_by_the_retransmission_timeout() {
    let mut sim = Sim::new(cfg("A", 1), cfg("B", 1), Link::perfect(), 1);
    sim.establish();
    sim.blocked[1] = true;
    for i in 0..30 {
        sim.nodes[0].queue(sim.now, &rec(i)).unwrap();
    }
    sim.pump();
    sim.blocked[1] = false;
    sim.run_until(10_000, |s| s.delivered[1].len() == 30);
    assert!(sim.nodes[0].counters().rto_expirations > 0);
    assert_eq!(sim.delivered[1], (0..30).map(rec).collect::<Vec<_>>());
}

#[test]
fn nack_older_than_the_retransmit_buffer_triggers_a_bulk() {
    let mut a = cfg("A", 1);
    a.retransmit_capacity = 8;
    let mut sim = Sim::new(a, cfg("B", 1), Link::perfect(), 1);
    sim.establish();
    sim.events = [vec![], vec![]];
    // Five records arrive before the hole.
    for i in 1000..1005 {
        sim.nodes[0]
            .queue(sim.now, &Record::ConnCreate(tcp_snapshot(i)))
            .unwrap();
    }
    sim.run_until(5_000, |s| s.delivered[1].len() == 5);
    sim.delivered[1].clear();
    // 20 datagrams' worth of creates sent into the void: the first ones
    // fall out of the 8-datagram buffer.
    sim.blocked[1] = true;
    for i in 0..220 {
        sim.nodes[0]
            .queue(sim.now, &Record::ConnCreate(tcp_snapshot(i)))
            .unwrap();
    }
    sim.pump();
    assert!(sim.nodes[0].counters().evicted_unacked > 0);
    sim.blocked[1] = false;
    sim.run_until(30_000, |s| {
        s.events[0].contains(&Event::BulkNeeded(BulkReason::StreamLost))
    });
    // B skipped what A can no longer send and got the rest in order.
    sim.run_until(30_000, |s| {
        s.nodes[0].in_flight() == 0
            && s.events[1]
                .iter()
                .any(|e| matches!(e, Event::RecordsLost { .. }))
    });
    let got: Vec<u32> = sim.delivered[1]
        .iter()
        .map(|r| match r {
            Record::ConnCreate(s) => s.packets[0] as u32,
            _ => unreachable!(),
        })
        .collect();
    assert!(!got.is_empty() && got.len() < 220);
    // The event says where the hole is in the record stream: after the
    // five records delivered before it.
    let at: Vec<u64> = sim.events[1]
        .iter()
        .filter_map(|e| match e {
            Event::RecordsLost { at_record, .. } => Some(*at_record),
            _ => None,
        })
        .collect();
    assert_eq!(at, vec![5]);
    // The caller answers with a bulk; B sees it complete.
    let id = sim.nodes[0].start_bulk(sim.now).unwrap();
    for i in 0..50 {
        sim.nodes[0]
            .queue(sim.now, &Record::ConnCreate(tcp_snapshot(i)))
            .unwrap();
    }
    assert_eq!(sim.nodes[0].end_bulk(sim.now), Ok(50));
    sim.run_until(30_000, |s| {
        s.events[1].contains(&Event::BulkReceived {
            id,
            sent: 50,
            received: 50,
        })
    });
}

#[test]
fn bulk_request_from_the_peer_raises_bulk_needed() {
    let mut sim = Sim::new(cfg("A", 1), cfg("B", 1), Link::perfect(), 1);
    sim.establish();
    sim.nodes[1].request_bulk(sim.now).unwrap();
    sim.run_until(1000, |s| {
        s.events[0].contains(&Event::BulkNeeded(BulkReason::PeerRequested))
    });
}

#[test]
fn peer_restart_is_detected_and_the_stream_resumes() {
    let mut sim = Sim::new(cfg("A", 1), cfg("B", 7), Link::lossy(0.1), 3);
    sim.establish();
    sim.stream(0, 100);
    assert_eq!(sim.delivered[1].len(), 100);
    // B restarts (new epoch); A has records queued for the old B.
    sim.nodes[1] = Session::new(cfg("B", 8)).unwrap();
    sim.delivered[1].clear();
    sim.events = [vec![], vec![]];
    sim.nodes[0].queue(sim.now, &rec(999)).unwrap();
    sim.establish();
    assert!(sim.events[0].contains(&Event::PeerRestarted {
        old_epoch: 7,
        new_epoch: 8,
        version: 2
    }));
    assert!(sim.events[0].contains(&Event::BulkNeeded(BulkReason::PeerRestarted)));
    assert_eq!(sim.nodes[0].counters().peer_restarts, 1);
    // What was queued for the old instance is not sent to the new one.
    sim.stream(100, 200);
    assert_eq!(sim.delivered[1], (100..300).map(rec).collect::<Vec<_>>());
}

// ----- Versions. -----

fn v3(serial: &str) -> SessionConfig {
    let mut c = small_queue(serial);
    c.max_version = 3;
    c
}

#[test]
fn v3_sender_with_an_extra_record_type_still_syncs_with_a_v2_peer() {
    let mut sim = Sim::new(v3("A"), small_queue("B"), Link::lossy(0.1), 11);
    sim.nodes[0].set_extension(0x40, vec![0xee; 24]);
    sim.establish();
    assert_eq!(sim.nodes[0].version(), 2, "fail-soft to the lower version");
    assert_eq!(sim.nodes[1].version(), 2);
    sim.stream(0, 1000);
    assert_eq!(sim.delivered[1], (0..1000).map(rec).collect::<Vec<_>>());
    let c = sim.nodes[1].counters();
    assert!(
        c.unknown_groups
            >= sim.nodes[0].counters().data_datagrams_sent - c.dropped(DropReason::Replayed),
        "{c:?} {:?}",
        sim.nodes[0].counters()
    );
    assert!(c.unknown_groups > 0);
    assert_eq!(c.dropped(DropReason::UnknownVersion), 0);
}

#[test]
fn two_v3_nodes_speak_v3_and_a_v2_node_refuses_v3_datagrams() {
    let mut sim = Sim::new(v3("A"), v3("B"), Link::perfect(), 1);
    sim.establish();
    assert_eq!(sim.nodes[0].version(), 3);
    assert_eq!(sim.nodes[1].version(), 3);
    sim.nodes[0].queue(sim.now, &rec(1)).unwrap();
    let mut buf = [0u8; 1400];
    let n = sim.nodes[0].poll_transmit(sim.now, &mut buf).unwrap();
    assert_eq!(buf[4], 3);
    let mut v2 = Session::new(cfg("B", 1)).unwrap();
    assert_eq!(
        v2.handle_datagram(sim.now, &buf[..n]),
        Err(DropReason::UnknownVersion)
    );
}

#[test]
fn bad_configurations_are_refused() {
    let mut c = cfg("A", 0);
    c.session_id = [0; 16];
    assert_eq!(
        Session::new(c.clone()).unwrap_err(),
        ConfigError::ZeroSession
    );
    c.session_id = [1; 16];
    c.mtu = 100;
    assert_eq!(Session::new(c.clone()).unwrap_err(), ConfigError::BadMtu);
    c.mtu = 1400;
    c.psk = Psk::new(b"");
    assert_eq!(Session::new(c).unwrap_err(), ConfigError::EmptyPsk);
    assert!(!format!("{:?}", cfg("A", 1)).contains("horse"));
}

#[test]
fn a_1400_byte_datagram_carries_11_creates() {
    let mut sim = Sim::new(cfg("A", 1), cfg("B", 1), Link::perfect(), 1);
    sim.establish();
    for i in 0..30 {
        sim.nodes[0]
            .queue(sim.now, &Record::ConnCreate(tcp_snapshot(i)))
            .unwrap();
    }
    let mut buf = [0u8; 1400];
    let n = sim.nodes[0].poll_transmit(sim.now, &mut buf).unwrap();
    assert_eq!(sim.nodes[0].queued(), 19);
    assert_eq!(n, OVERHEAD + GROUP_HEADER_LEN + 11 * CREATE_LEN);
}

/// A key change in the middle of a stream over a lossy link: the receiver
/// takes the new key first, the sender commits with datagrams in flight
/// (sealed again under the new key), and the receiver retires the old key
/// at once, so that every old-key datagram still in the air is refused
/// and must be repaired under the new one. Nothing is lost, nothing
/// arrives twice, no bulk, no restart; afterwards the old key opens
/// nothing.
#[test]
fn a_key_change_mid_stream_loses_nothing_and_retires_the_old_key() {
    let old = Psk::new(b"correct horse battery staple");
    let new = Psk::new(b"Another-Cluster-Key-2027");
    let mut sim = Sim::new(
        small_queue("A"),
        small_queue("B"),
        Link::lossy(0.1),
        0x5eed_0f08,
    );
    sim.establish();
    sim.stream(0, 300);
    // Stage on both, then queue more and commit A with datagrams in flight.
    for n in &mut sim.nodes {
        n.set_keys(old.clone(), Some(new.clone()));
    }
    for i in 300..600 {
        sim.nodes[0].queue(sim.now, &rec(i)).unwrap();
    }
    let limit = sim.now + 60_000;
    while sim.nodes[0].in_flight() < 8 {
        assert!(sim.now < limit && sim.step(), "nothing in flight");
    }
    let in_flight = sim.nodes[0].in_flight();
    sim.nodes[0].set_keys(new.clone(), Some(old.clone()));
    assert_eq!(sim.nodes[0].counters().resealed, in_flight);
    sim.nodes[1].set_keys(new.clone(), None);
    sim.stream(600, 1400);
    sim.nodes[0].set_keys(new.clone(), None);
    sim.stream(2000, 500);
    let want: Vec<Record> = (0..2500).map(rec).collect();
    assert_eq!(sim.delivered[1].len(), want.len(), "exactly once");
    assert_eq!(sim.delivered[1], want, "in order");
    for (i, n) in sim.nodes.iter().enumerate() {
        assert_eq!(n.counters().key_changes, 1, "node {i}");
        assert_eq!(n.counters().peer_restarts, 0, "node {i}");
        assert!(!sim.events[i]
            .iter()
            .any(|e| matches!(e, Event::BulkNeeded(BulkReason::StreamLost))));
    }
    // A goes back to the old key on its own: B refuses all it sends.
    let before = sim.nodes[1].counters().dropped(DropReason::BadAuth);
    sim.nodes[0].set_keys(old, None);
    sim.nodes[0].queue(sim.now, &rec(9999)).unwrap();
    let t = sim.now + 2000;
    while sim.now < t && sim.step() {}
    assert!(sim.nodes[1].counters().dropped(DropReason::BadAuth) > before);
    assert_eq!(
        sim.delivered[1].len(),
        2500,
        "nothing opened under the old key"
    );
}
