//! Behaviour of the connection table.

use super::*;
use crate::flow::{proto, tcp_flags as F, FlowKey, L4Info, TcpInfo};
use proptest::prelude::*;
use std::collections::{BTreeMap, HashSet};

const S: u64 = 1000;

fn a(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 1, last)
}
fn b(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 2, last)
}
fn key(p: u8, sport: u16, dport: u16) -> FlowKey {
    FlowKey::new(a(10), sport, b(10), dport, p)
}
fn tcp(flags: u8, seq: u32, ack: u32, window: u16, len: u32) -> L4Info {
    L4Info::Tcp(TcpInfo {
        seq,
        ack,
        flags,
        window,
        wscale: None,
        payload_len: len,
    })
}
fn tcp_ws(flags: u8, seq: u32, ack: u32, window: u16, ws: Option<u8>) -> L4Info {
    L4Info::Tcp(TcpInfo {
        seq,
        ack,
        flags,
        window,
        wscale: ws,
        payload_len: 0,
    })
}
fn cfg(capacity: u32) -> ShardConfig {
    ShardConfig {
        capacity,
        ..ShardConfig::default()
    }
}
fn meta() -> ConnMeta {
    ConnMeta {
        rule: 7,
        sync: true,
        ..ConnMeta::default()
    }
}
fn state_of(sh: &Shard, id: ConnId) -> &'static str {
    sh.get(id).unwrap().state().name()
}
fn remaining(sh: &Shard, now: u64, id: ConnId) -> u64 {
    sh.view(now, id).unwrap().remaining_ms
}

/// Client ISN 1000, server ISN 5000, windows 65535: returns the
/// established connection.
fn handshake(sh: &mut Shard, now: u64, k: &FlowKey) -> ConnId {
    let syn = tcp(F::SYN, 1000, 0, 65535, 0);
    let id = sh.create(now, k, &syn, meta()).unwrap();
    assert_eq!(sh.track(now, id, Dir::Original, &syn, 60), Track::Accept);
    assert_eq!(state_of(sh, id), "syn_sent");
    let synack = tcp(F::SYN | F::ACK, 5000, 1001, 65535, 0);
    assert_eq!(sh.track(now, id, Dir::Reply, &synack, 60), Track::Accept);
    assert_eq!(state_of(sh, id), "syn_received");
    let ack = tcp(F::ACK, 1001, 5001, 65535, 0);
    assert_eq!(sh.track(now, id, Dir::Original, &ack, 52), Track::Accept);
    assert_eq!(state_of(sh, id), "established");
    id
}

#[test]
fn both_directions_find_the_connection_and_say_which_way() {
    let mut sh = Shard::new(cfg(16), 0);
    let k = key(proto::TCP, 40000, 80);
    let id = handshake(&mut sh, 0, &k);
    assert_eq!(sh.lookup(&k), Some((id, Dir::Original)));
    assert_eq!(sh.lookup(&k.reverse()), Some((id, Dir::Reply)));
    assert_eq!(sh.lookup(&key(proto::TCP, 40001, 80)), None);
    let v = sh.view(0, id).unwrap();
    assert_eq!(v.packets, [2, 1]);
    assert_eq!(v.bytes, [112, 60]);
    assert_eq!(v.rule, 7);
}

#[test]
fn tcp_handshake_teardown_and_time_wait_expiry() {
    let mut sh = Shard::new(cfg(16), 0);
    let k = key(proto::TCP, 40000, 80);
    let id = handshake(&mut sh, 0, &k);
    assert_eq!(remaining(&sh, 0, id), 2 * 3600 * S);
    // Client sends 100 bytes, server acks.
    let t = 1000;
    assert_eq!(
        sh.track(
            t,
            id,
            Dir::Original,
            &tcp(F::ACK | F::PSH, 1001, 5001, 65535, 100),
            152
        ),
        Track::Accept
    );
    assert_eq!(
        sh.track(t, id, Dir::Reply, &tcp(F::ACK, 5001, 1101, 65535, 0), 52),
        Track::Accept
    );
    // Client closes.
    assert_eq!(
        sh.track(
            t,
            id,
            Dir::Original,
            &tcp(F::FIN | F::ACK, 1101, 5001, 65535, 0),
            52
        ),
        Track::Accept
    );
    assert_eq!(state_of(&sh, id), "fin_wait");
    assert_eq!(remaining(&sh, t, id), 120 * S);
    // Server acks the FIN.
    assert_eq!(
        sh.track(t, id, Dir::Reply, &tcp(F::ACK, 5001, 1102, 65535, 0), 52),
        Track::Accept
    );
    assert_eq!(state_of(&sh, id), "close_wait");
    assert_eq!(remaining(&sh, t, id), 60 * S);
    // Server closes.
    assert_eq!(
        sh.track(
            t,
            id,
            Dir::Reply,
            &tcp(F::FIN | F::ACK, 5001, 1102, 65535, 0),
            52
        ),
        Track::Accept
    );
    assert_eq!(state_of(&sh, id), "last_ack");
    assert_eq!(remaining(&sh, t, id), 30 * S);
    // Client acks: TIME_WAIT for 2 MSL.
    assert_eq!(
        sh.track(t, id, Dir::Original, &tcp(F::ACK, 1102, 5002, 65535, 0), 52),
        Track::Accept
    );
    assert_eq!(state_of(&sh, id), "time_wait");
    assert_eq!(remaining(&sh, t, id), 120 * S);
    assert_eq!(sh.expire(t + 119 * S, 100), 0);
    assert_eq!(sh.expire(t + 121 * S, 100), 1);
    assert_eq!(sh.lookup(&k), None);
    assert_eq!(sh.counters().expired, 1);
}

#[test]
fn syn_after_time_wait_reopens_as_a_new_connection() {
    let mut sh = Shard::new(cfg(16), 0);
    let k = key(proto::TCP, 40000, 80);
    let id = handshake(&mut sh, 0, &k);
    sh.track(
        0,
        id,
        Dir::Original,
        &tcp(F::FIN | F::ACK, 1001, 5001, 65535, 0),
        52,
    );
    sh.track(
        0,
        id,
        Dir::Reply,
        &tcp(F::FIN | F::ACK, 5001, 1002, 65535, 0),
        52,
    );
    sh.track(0, id, Dir::Original, &tcp(F::ACK, 1002, 5002, 65535, 0), 52);
    assert_eq!(state_of(&sh, id), "time_wait");
    let syn = tcp(F::SYN, 90_000, 0, 65535, 0);
    assert_eq!(sh.track(10, id, Dir::Original, &syn, 60), Track::Stale);
    assert_eq!(sh.lookup(&k), None);
    let id2 = sh.create(10, &k, &syn, meta()).unwrap();
    assert_eq!(sh.track(10, id2, Dir::Original, &syn, 60), Track::Accept);
    assert_eq!(state_of(&sh, id2), "syn_sent");
}

#[test]
fn rst_in_window_closes_with_a_short_timeout() {
    let mut sh = Shard::new(cfg(16), 0);
    let id = handshake(&mut sh, 0, &key(proto::TCP, 40000, 80));
    assert_eq!(
        sh.track(5, id, Dir::Reply, &tcp(F::RST, 5001, 0, 0, 0), 40),
        Track::Closed
    );
    assert_eq!(state_of(&sh, id), "closed");
    assert_eq!(remaining(&sh, 5, id), 10 * S);
    // The wheel was told about the earlier deadline.
    assert_eq!(sh.expire(5 + 11 * S, 100), 1);
}

#[test]
fn rst_out_of_window_is_dropped_and_counted() {
    let mut sh = Shard::new(cfg(16), 0);
    let id = handshake(&mut sh, 0, &key(proto::TCP, 40000, 80));
    let blind = tcp(F::RST, 5001 + 10_000_000, 0, 0, 0);
    assert_eq!(
        sh.track(5, id, Dir::Reply, &blind, 40),
        Track::Drop(TrackDrop::TcpRstOutOfWindow)
    );
    assert_eq!(state_of(&sh, id), "established");
    assert_eq!(
        sh.counters().drops[TrackDrop::TcpRstOutOfWindow as usize],
        1
    );
}

#[test]
fn rst_answering_a_syn_must_acknowledge_it() {
    let mut sh = Shard::new(cfg(16), 0);
    let k = key(proto::TCP, 40000, 81);
    let syn = tcp(F::SYN, 1000, 0, 65535, 0);
    let id = sh.create(0, &k, &syn, meta()).unwrap();
    sh.track(0, id, Dir::Original, &syn, 60);
    let wrong = tcp(F::RST | F::ACK, 0, 777, 0, 0);
    assert_eq!(
        sh.track(1, id, Dir::Reply, &wrong, 40),
        Track::Drop(TrackDrop::TcpRstOutOfWindow)
    );
    let right = tcp(F::RST | F::ACK, 0, 1001, 0, 0);
    assert_eq!(sh.track(1, id, Dir::Reply, &right, 40), Track::Closed);
}

#[test]
fn out_of_window_segment_is_dropped_and_counted() {
    let mut sh = Shard::new(cfg(16), 0);
    let id = handshake(&mut sh, 0, &key(proto::TCP, 40000, 80));
    // Beyond what the server allowed (ack 1001 + window 65535).
    let far = tcp(F::ACK, 1001 + 200_000, 5001, 65535, 100);
    assert_eq!(
        sh.track(1, id, Dir::Original, &far, 152),
        Track::Drop(TrackDrop::TcpOutOfWindow)
    );
    // Acknowledging data the server never sent.
    let bad_ack = tcp(F::ACK, 1001, 5001 + 100_000, 65535, 0);
    assert_eq!(
        sh.track(1, id, Dir::Original, &bad_ack, 52),
        Track::Drop(TrackDrop::TcpOutOfWindow)
    );
    assert_eq!(sh.counters().drops[TrackDrop::TcpOutOfWindow as usize], 2);
    // In-window data still passes and counters did not move for drops.
    let ok = tcp(F::ACK, 1001, 5001, 65535, 1000);
    assert_eq!(sh.track(1, id, Dir::Original, &ok, 1052), Track::Accept);
    assert_eq!(sh.view(1, id).unwrap().packets, [3, 1]);
}

#[test]
fn window_check_off_accepts_any_sequence_numbers() {
    let mut c = cfg(16);
    c.tcp.window_check = false;
    let mut sh = Shard::new(c, 0);
    let id = handshake(&mut sh, 0, &key(proto::TCP, 40000, 80));
    let far = tcp(F::ACK, 1001 + 200_000, 5001, 65535, 100);
    assert_eq!(sh.track(1, id, Dir::Original, &far, 152), Track::Accept);
}

fn scaled_handshake(sh: &mut Shard, k: &FlowKey, server_ws: Option<u8>) -> ConnId {
    let syn = tcp_ws(F::SYN, 1000, 0, 1000, Some(7));
    let id = sh.create(0, k, &syn, meta()).unwrap();
    sh.track(0, id, Dir::Original, &syn, 60);
    assert_eq!(
        sh.track(
            0,
            id,
            Dir::Reply,
            &tcp_ws(F::SYN | F::ACK, 5000, 1001, 1000, server_ws),
            60
        ),
        Track::Accept
    );
    assert_eq!(
        sh.track(0, id, Dir::Original, &tcp(F::ACK, 1001, 5001, 1000, 0), 52),
        Track::Accept
    );
    // The server advertises 1000 << shift.
    assert_eq!(
        sh.track(0, id, Dir::Reply, &tcp(F::ACK, 5001, 1001, 1000, 0), 52),
        Track::Accept
    );
    id
}

#[test]
fn window_scaling_widens_the_window_when_both_sides_offer_it() {
    let mut sh = Shard::new(cfg(16), 0);
    let id = scaled_handshake(&mut sh, &key(proto::TCP, 40000, 80), Some(7));
    // 100 kB ahead: inside 1000 << 7 = 128000.
    let seg = tcp(F::ACK, 1001 + 100_000, 5001, 1000, 1000);
    assert_eq!(sh.track(1, id, Dir::Original, &seg, 1052), Track::Accept);
    match sh.get(id).unwrap().state() {
        ProtoState::Tcp(t) => assert_eq!((t.peers[0].scale, t.peers[1].scale), (7, 7)),
        s => panic!("{s:?}"),
    }
}

#[test]
fn window_scaling_is_off_unless_both_sides_offer_it() {
    let mut sh = Shard::new(cfg(16), 0);
    let id = scaled_handshake(&mut sh, &key(proto::TCP, 40000, 80), None);
    let seg = tcp(F::ACK, 1001 + 100_000, 5001, 1000, 1000);
    assert_eq!(
        sh.track(1, id, Dir::Original, &seg, 1052),
        Track::Drop(TrackDrop::TcpOutOfWindow)
    );
}

#[test]
fn loose_grace_period_accepts_and_reanchors_out_of_window_segments() {
    let mut sh = Shard::new(cfg(16), 0);
    let id = handshake(&mut sh, 0, &key(proto::TCP, 40000, 80));
    sh.set_loose_until(10 * S);
    // The connection moved on by 50 MB while we were not looking.
    let c2s = tcp(F::ACK, 1001 + 50_000_000, 5001 + 7_000_000, 65535, 1000);
    assert_eq!(sh.track(S, id, Dir::Original, &c2s, 1052), Track::Accept);
    let s2c = tcp(F::ACK, 5001 + 7_000_000, 1001 + 50_001_000, 65535, 0);
    assert_eq!(sh.track(S, id, Dir::Reply, &s2c, 52), Track::Accept);
    // After the grace period, tracking continues from the new anchor...
    let next = tcp(F::ACK, 1001 + 50_001_000, 5001 + 7_000_000, 65535, 1000);
    assert_eq!(
        sh.track(11 * S, id, Dir::Original, &next, 1052),
        Track::Accept
    );
    // ... and is strict again.
    let old = tcp(F::ACK, 1001, 5001, 65535, 1000);
    assert_eq!(
        sh.track(11 * S, id, Dir::Original, &old, 1052),
        Track::Drop(TrackDrop::TcpOutOfWindow)
    );
}

#[test]
fn syn_on_an_established_connection_is_dropped() {
    let mut sh = Shard::new(cfg(16), 0);
    let id = handshake(&mut sh, 0, &key(proto::TCP, 40000, 80));
    let syn = tcp(F::SYN, 5001, 0, 65535, 0);
    assert_eq!(
        sh.track(1, id, Dir::Reply, &syn, 60),
        Track::Drop(TrackDrop::TcpInvalidForState)
    );
    let syn = tcp(F::SYN, 1001, 0, 65535, 0);
    assert_eq!(
        sh.track(1, id, Dir::Original, &syn, 60),
        Track::Drop(TrackDrop::TcpInvalidForState)
    );
    // A retransmitted SYN-ACK (the final ACK was lost) is fine.
    let synack = tcp(F::SYN | F::ACK, 5000, 1001, 65535, 0);
    assert_eq!(sh.track(1, id, Dir::Reply, &synack, 60), Track::Accept);
    assert_eq!(state_of(&sh, id), "established");
    assert_eq!(
        sh.counters().drops[TrackDrop::TcpInvalidForState as usize],
        2
    );
}

#[test]
fn data_before_the_handshake_completes_is_dropped() {
    let mut sh = Shard::new(cfg(16), 0);
    let k = key(proto::TCP, 40000, 80);
    let syn = tcp(F::SYN, 1000, 0, 65535, 0);
    let id = sh.create(0, &k, &syn, meta()).unwrap();
    sh.track(0, id, Dir::Original, &syn, 60);
    let data = tcp(F::ACK | F::PSH, 1001, 0, 65535, 100);
    assert_eq!(
        sh.track(0, id, Dir::Original, &data, 152),
        Track::Drop(TrackDrop::TcpInvalidForState)
    );
    let srv = tcp(F::ACK, 5001, 1001, 65535, 100);
    assert_eq!(
        sh.track(0, id, Dir::Reply, &srv, 152),
        Track::Drop(TrackDrop::TcpInvalidForState)
    );
    let bad = tcp(F::SYN | F::FIN, 1000, 0, 65535, 0);
    assert_eq!(
        sh.track(0, id, Dir::Original, &bad, 60),
        Track::Drop(TrackDrop::TcpBadFlags)
    );
}

#[test]
fn tcp_needs_a_syn_to_open_unless_loose_pickup() {
    let mut sh = Shard::new(cfg(16), 0);
    let k = key(proto::TCP, 40000, 80);
    let mid = tcp(F::ACK, 777_000, 888_000, 65535, 100);
    assert_eq!(sh.create(0, &k, &mid, meta()), Err(CreateError::NotInitial));
    assert_eq!(
        sh.create(0, &k, &tcp(F::SYN | F::ACK, 1, 2, 3, 0), meta()),
        Err(CreateError::NotInitial)
    );
    assert_eq!(
        sh.create(0, &k, &L4Info::Udp, meta()),
        Err(CreateError::Invalid)
    );
    let mut c = cfg(16);
    c.tcp.loose_pickup = true;
    let mut sh = Shard::new(c, 0);
    let id = sh.create(0, &k, &mid, meta()).unwrap();
    assert_eq!(sh.track(0, id, Dir::Original, &mid, 152), Track::Accept);
    assert_eq!(state_of(&sh, id), "established");
    let reply = tcp(F::ACK, 888_000, 777_100, 65535, 100);
    assert_eq!(sh.track(0, id, Dir::Reply, &reply, 152), Track::Accept);
}

#[test]
fn udp_reply_promotes_to_replied_then_stream() {
    let mut sh = Shard::new(cfg(16), 0);
    let k = key(proto::UDP, 5353, 53);
    let id = sh.create(0, &k, &L4Info::Udp, meta()).unwrap();
    assert_eq!(
        sh.track(0, id, Dir::Original, &L4Info::Udp, 60),
        Track::Accept
    );
    assert_eq!(
        (state_of(&sh, id), remaining(&sh, 0, id)),
        ("unreplied", 30 * S)
    );
    assert_eq!(sh.lookup(&k.reverse()), Some((id, Dir::Reply)));
    assert_eq!(sh.track(1, id, Dir::Reply, &L4Info::Udp, 90), Track::Accept);
    assert_eq!(
        (state_of(&sh, id), remaining(&sh, 1, id)),
        ("replied", 30 * S)
    );
    assert_eq!(
        sh.track(2, id, Dir::Original, &L4Info::Udp, 60),
        Track::Accept
    );
    assert_eq!(
        (state_of(&sh, id), remaining(&sh, 2, id)),
        ("stream", 180 * S)
    );
}

#[test]
fn icmp_echo_request_and_reply_pair() {
    let mut sh = Shard::new(cfg(16), 0);
    // ICMP: identifier in sport, 0 in dport, both ways.
    let k = key(proto::ICMP, 0x1234, 0);
    let req = L4Info::IcmpQuery { ty: 8, code: 0 };
    let rep = L4Info::IcmpQuery { ty: 0, code: 0 };
    assert_eq!(sh.create(0, &k, &rep, meta()), Err(CreateError::NotInitial));
    let id = sh.create(0, &k, &req, meta()).unwrap();
    sh.track(0, id, Dir::Original, &req, 84);
    let back = FlowKey::new(b(10), 0x1234, a(10), 0, proto::ICMP);
    assert_eq!(sh.lookup(&back), Some((id, Dir::Reply)));
    assert_eq!(
        sh.track(1, id, Dir::Reply, &req, 84),
        Track::Drop(TrackDrop::IcmpUnexpectedType)
    );
    assert_eq!(sh.track(1, id, Dir::Reply, &rep, 84), Track::Accept);
    assert_eq!(state_of(&sh, id), "replied");
    assert_eq!(remaining(&sh, 1, id), 30 * S);
}

#[test]
fn icmp_errors_are_associated_by_the_caller_through_the_quoted_flow() {
    let mut sh = Shard::new(cfg(16), 0);
    let k = key(proto::UDP, 5353, 53);
    let id = sh.create(0, &k, &L4Info::Udp, meta()).unwrap();
    // A router between client and server answers the client's datagram:
    // the error quotes the client's packet as it was sent.
    let err = L4Info::IcmpError {
        ty: 11,
        code: 0,
        inner: k,
    };
    let outer = FlowKey::new(Ipv4Addr::new(198, 18, 3, 1), 0, a(10), 0, proto::ICMP);
    assert_eq!(
        sh.create(0, &outer, &err, meta()),
        Err(CreateError::NotInitial)
    );
    let L4Info::IcmpError { inner, .. } = err else {
        unreachable!()
    };
    assert_eq!(sh.lookup(&inner), Some((id, Dir::Original)));
    // An error the server sends about its reply quotes the reply key.
    assert_eq!(sh.lookup(&k.reverse()), Some((id, Dir::Reply)));
}

#[test]
fn gre_lifecycle() {
    let mut sh = Shard::new(cfg(16), 0);
    let k = key(proto::GRE, 0, 0);
    let g = L4Info::Gre { version: 0 };
    let id = sh.create(0, &k, &g, meta()).unwrap();
    sh.track(0, id, Dir::Original, &g, 100);
    assert_eq!(
        (state_of(&sh, id), remaining(&sh, 0, id)),
        ("unreplied", 30 * S)
    );
    sh.track(1, id, Dir::Reply, &g, 100);
    assert_eq!(
        (state_of(&sh, id), remaining(&sh, 1, id)),
        ("replied", 180 * S)
    );
    assert_eq!(
        sh.track(1, id, Dir::Reply, &L4Info::Udp, 100),
        Track::Drop(TrackDrop::L4Mismatch)
    );
    assert_eq!(sh.expire(1 + 181 * S, 10), 1);
}

#[test]
fn esp_records_the_spi_of_each_direction_and_follows_rekeys() {
    let mut sh = Shard::new(cfg(16), 0);
    let k = key(proto::ESP, 0, 0);
    let id = sh
        .create(0, &k, &L4Info::Esp { spi: 0x100 }, meta())
        .unwrap();
    sh.track(0, id, Dir::Original, &L4Info::Esp { spi: 0x100 }, 100);
    sh.track(0, id, Dir::Reply, &L4Info::Esp { spi: 0x200 }, 100);
    let spis = |sh: &Shard| match sh.get(id).unwrap().state() {
        ProtoState::Esp(e) => e.spi,
        s => panic!("{s:?}"),
    };
    assert_eq!(spis(&sh), [0x100, 0x200]);
    assert_eq!(
        (state_of(&sh, id), remaining(&sh, 0, id)),
        ("replied", 180 * S)
    );
    sh.track(1, id, Dir::Original, &L4Info::Esp { spi: 0x101 }, 100);
    assert_eq!(spis(&sh), [0x101, 0x200]);
}

fn sctp(vtag: u32, first_chunk: u8) -> L4Info {
    L4Info::Sctp { vtag, first_chunk }
}

#[test]
fn sctp_association_lifecycle_with_verification_tags() {
    let mut sh = Shard::new(cfg(16), 0);
    let k = key(proto::SCTP, 5000, 38412);
    assert_eq!(
        sh.create(0, &k, &sctp(0, 0), meta()),
        Err(CreateError::NotInitial)
    );
    let id = sh.create(0, &k, &sctp(0, 1), meta()).unwrap();
    assert_eq!(
        sh.track(0, id, Dir::Original, &sctp(0, 1), 100),
        Track::Accept
    );
    assert_eq!(
        (state_of(&sh, id), remaining(&sh, 0, id)),
        ("cookie_wait", 3 * S)
    );
    // INIT ACK carries the initiator's tag (0xA), COOKIE ECHO the
    // responder's (0xB).
    assert_eq!(
        sh.track(0, id, Dir::Reply, &sctp(0xA, 2), 100),
        Track::Accept
    );
    assert_eq!(state_of(&sh, id), "cookie_echoed");
    assert_eq!(
        sh.track(0, id, Dir::Original, &sctp(0xB, 10), 100),
        Track::Accept
    );
    assert_eq!(
        sh.track(0, id, Dir::Reply, &sctp(0xA, 11), 100),
        Track::Accept
    );
    assert_eq!(
        (state_of(&sh, id), remaining(&sh, 0, id)),
        ("established", 2 * 3600 * S)
    );
    assert_eq!(
        sh.track(1, id, Dir::Original, &sctp(0xB, 0), 1000),
        Track::Accept
    );
    assert_eq!(
        sh.track(1, id, Dir::Original, &sctp(0xA, 0), 1000),
        Track::Drop(TrackDrop::SctpBadVtag)
    );
    assert_eq!(
        sh.track(1, id, Dir::Reply, &sctp(0xC, 3), 100),
        Track::Drop(TrackDrop::SctpBadVtag)
    );
    assert_eq!(
        sh.track(1, id, Dir::Original, &sctp(0, 1), 100),
        Track::Drop(TrackDrop::SctpInvalidForState)
    );
    assert_eq!(
        sh.track(2, id, Dir::Original, &sctp(0xB, 7), 100),
        Track::Accept
    );
    assert_eq!(state_of(&sh, id), "shutdown_sent");
    assert_eq!(
        sh.track(2, id, Dir::Reply, &sctp(0xA, 8), 100),
        Track::Accept
    );
    assert_eq!(state_of(&sh, id), "shutdown_ack_sent");
    assert_eq!(
        sh.track(2, id, Dir::Original, &sctp(0xB, 14), 100),
        Track::Closed
    );
    assert_eq!(
        (state_of(&sh, id), remaining(&sh, 2, id)),
        ("closed", 10 * S)
    );
    assert_eq!(sh.counters().drops[TrackDrop::SctpBadVtag as usize], 2);
}

#[test]
fn sctp_abort_may_reflect_the_peer_tag() {
    let mut sh = Shard::new(cfg(16), 0);
    let k = key(proto::SCTP, 5000, 38412);
    let id = sh.create(0, &k, &sctp(0, 1), meta()).unwrap();
    sh.track(0, id, Dir::Reply, &sctp(0xA, 2), 100);
    sh.track(0, id, Dir::Original, &sctp(0xB, 10), 100);
    sh.track(0, id, Dir::Reply, &sctp(0xA, 11), 100);
    // ABORT with the T bit: carries the sender's own tag.
    assert_eq!(
        sh.track(1, id, Dir::Reply, &sctp(0xB, 6), 100),
        Track::Closed
    );
}

#[test]
fn timeouts_follow_the_state_and_are_configurable() {
    let mut c = cfg(16);
    c.timeouts.tcp_syn_sent = 5 * S;
    c.timeouts.tcp_established = 600 * S;
    let mut sh = Shard::new(c, 0);
    let k = key(proto::TCP, 40000, 80);
    let syn = tcp(F::SYN, 1000, 0, 65535, 0);
    let id = sh.create(0, &k, &syn, meta()).unwrap();
    sh.track(0, id, Dir::Original, &syn, 60);
    assert_eq!(remaining(&sh, 0, id), 5 * S);
    sh.track(
        0,
        id,
        Dir::Reply,
        &tcp(F::SYN | F::ACK, 5000, 1001, 65535, 0),
        60,
    );
    assert_eq!(remaining(&sh, 0, id), 60 * S);
    sh.track(0, id, Dir::Original, &tcp(F::ACK, 1001, 5001, 65535, 0), 52);
    assert_eq!(remaining(&sh, 0, id), 600 * S);
    // An unanswered SYN dies after its own timeout.
    let k2 = key(proto::TCP, 40001, 80);
    let id2 = sh.create(0, &k2, &syn, meta()).unwrap();
    sh.track(0, id2, Dir::Original, &syn, 60);
    assert_eq!(sh.expire(6 * S, 10), 1);
    assert_eq!(sh.lookup(&k2), None);
    assert!(sh.lookup(&k).is_some());
    // Activity pushes the deadline; the wheel re-checks lazily.
    sh.track(
        500 * S,
        id,
        Dir::Original,
        &tcp(F::ACK, 1001, 5001, 65535, 0),
        52,
    );
    assert_eq!(sh.expire(700 * S, 10), 0);
    assert_eq!(sh.expire(1101 * S, 10), 1);
}

#[test]
fn a_packet_on_an_expired_entry_finds_it_stale() {
    let mut sh = Shard::new(cfg(16), 0);
    let k = key(proto::UDP, 5353, 53);
    let id = sh.create(0, &k, &L4Info::Udp, meta()).unwrap();
    sh.track(0, id, Dir::Original, &L4Info::Udp, 60);
    assert_eq!(
        sh.track(31 * S, id, Dir::Original, &L4Info::Udp, 60),
        Track::Stale
    );
    assert_eq!(sh.lookup(&k), None);
    // Creating over an expired, not yet reaped entry reclaims it.
    let id = sh.create(31 * S, &k, &L4Info::Udp, meta()).unwrap();
    assert!(sh.create(62 * S, &k, &L4Info::Udp, meta()).is_ok());
    assert!(sh.get(id).is_some());
}

#[test]
fn full_table_keeps_established_connections_and_refuses_new_ones() {
    let mut sh = Shard::new(cfg(4), 0);
    let mut ids = vec![];
    for p in 0..4 {
        ids.push(handshake(&mut sh, 0, &key(proto::TCP, 40000 + p, 80)));
    }
    let syn = tcp(F::SYN, 1000, 0, 65535, 0);
    assert_eq!(
        sh.create(1, &key(proto::TCP, 50000, 80), &syn, meta()),
        Err(CreateError::TableFull)
    );
    assert_eq!(sh.counters().table_full, 1);
    for id in &ids {
        assert_eq!(state_of(&sh, *id), "established");
    }
    // Once one has expired, the new connection takes its place.
    let udp = key(proto::UDP, 1, 2);
    sh.track(0, ids[0], Dir::Original, &tcp(F::RST, 1001, 0, 0, 0), 40);
    assert!(sh.create(11 * S, &udp, &L4Info::Udp, meta()).is_ok());
    assert_eq!(sh.len(), 4);
    assert_eq!(
        sh.create(12 * S, &key(proto::UDP, 3, 4), &L4Info::Udp, meta()),
        Err(CreateError::TableFull)
    );
}

#[test]
fn expiry_work_is_bounded_per_call() {
    let mut sh = Shard::new(cfg(256), 0);
    for p in 0..100 {
        let id = sh
            .create(0, &key(proto::UDP, p, 53), &L4Info::Udp, meta())
            .unwrap();
        sh.track(0, id, Dir::Original, &L4Info::Udp, 60);
    }
    let now = 31 * S;
    let mut calls = vec![];
    loop {
        let n = sh.expire(now, 16);
        assert!(n <= 16);
        if n == 0 {
            break;
        }
        calls.push(n);
    }
    assert_eq!(calls.iter().sum::<usize>(), 100);
    assert!(calls.len() >= 7);
    assert!(sh.is_empty());
}

#[test]
fn create_refuses_existing_and_conflicting_keys() {
    let mut sh = Shard::new(cfg(16), 0);
    let k = key(proto::UDP, 5353, 53);
    let id = sh.create(0, &k, &L4Info::Udp, meta()).unwrap();
    assert_eq!(
        sh.create(0, &k, &L4Info::Udp, meta()),
        Err(CreateError::Exists(id))
    );
    assert_eq!(
        sh.create(0, &k.reverse(), &L4Info::Udp, meta()),
        Err(CreateError::KeyConflict(id))
    );
    let selfie = FlowKey::new(a(1), 7, a(1), 7, proto::UDP);
    assert_eq!(
        sh.create(0, &selfie, &L4Info::Udp, meta()),
        Err(CreateError::Invalid)
    );
}

#[test]
fn snat_reply_packets_find_the_connection() {
    let mut sh = Shard::new(cfg(16), 0);
    let k = key(proto::TCP, 40000, 80);
    let pub_ip = Ipv4Addr::new(198, 18, 2, 1);
    let nat = sh.snat(&k, pub_ip).unwrap();
    assert_eq!(nat.translated.src, pub_ip);
    // Port preserved when free.
    assert_eq!(nat.translated.sport, 40000);
    let syn = tcp(F::SYN, 1000, 0, 65535, 0);
    let id = sh
        .create(
            0,
            &k,
            &syn,
            ConnMeta {
                nat: Some(nat),
                ..meta()
            },
        )
        .unwrap();
    assert_eq!(sh.lookup(&nat.translated.reverse()), Some((id, Dir::Reply)));
    assert_eq!(sh.lookup(&k.reverse()), None);
    assert_eq!(sh.get(id).unwrap().nat(), Some(nat));
    // A second client with the same port gets another one.
    let k2 = FlowKey { src: a(11), ..k };
    let nat2 = sh.snat(&k2, pub_ip).unwrap();
    assert_ne!(nat2.translated.sport, 40000);
}

#[test]
fn dnat_reply_comes_from_the_real_server() {
    let mut sh = Shard::new(cfg(16), 0);
    let k = key(proto::TCP, 40000, 80);
    let real = FlowKey {
        dst: Ipv4Addr::new(198, 18, 2, 99),
        dport: 8080,
        ..k
    };
    let nat = Nat {
        kind: NatKind::Dnat,
        orig: k,
        translated: real,
    };
    let syn = tcp(F::SYN, 1000, 0, 65535, 0);
    let id = sh
        .create(
            0,
            &k,
            &syn,
            ConnMeta {
                nat: Some(nat),
                ..meta()
            },
        )
        .unwrap();
    assert_eq!(sh.lookup(&real.reverse()), Some((id, Dir::Reply)));
    assert_eq!(sh.get(id).unwrap().nat(), Some(nat));
    let wrong = Nat {
        orig: key(proto::TCP, 1, 2),
        ..nat
    };
    assert_eq!(
        sh.create(
            0,
            &key(proto::TCP, 40001, 80),
            &syn,
            ConnMeta {
                nat: Some(wrong),
                ..meta()
            }
        ),
        Err(CreateError::Invalid)
    );
}

#[test]
fn snat_ports_run_out_and_come_back_on_delete() {
    let mut c = cfg(64);
    c.nat_ports = PortRange {
        first: 2000,
        last: 2003,
    };
    let mut sh = Shard::new(c, 0);
    let pub_ip = Ipv4Addr::new(198, 18, 2, 1);
    let mut ids = vec![];
    for p in 0..4 {
        let k = key(proto::UDP, 10_000 + p, 53);
        let nat = sh.snat(&k, pub_ip).unwrap();
        ids.push(
            sh.create(
                0,
                &k,
                &L4Info::Udp,
                ConnMeta {
                    nat: Some(nat),
                    ..meta()
                },
            )
            .unwrap(),
        );
    }
    let k = key(proto::UDP, 20_000, 53);
    assert_eq!(sh.snat(&k, pub_ip), Err(NatError::PortsExhausted));
    assert_eq!(sh.counters().nat_exhausted, 1);
    // Another remote end has its own ports.
    assert!(sh.snat(&key(proto::UDP, 20_000, 54), pub_ip).is_ok());
    assert!(sh.delete(0, ids[2]));
    assert!(sh.snat(&k, pub_ip).is_ok());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn snat_ports_land_replies_on_the_owning_shard(
        n in 1usize..=16,
        flows in proptest::collection::vec((any::<u32>(), any::<u16>(), any::<u32>(), any::<u16>(), prop_oneof![Just(proto::TCP), Just(proto::UDP), Just(proto::ICMP)]), 1..40),
    ) {
        let pub_ip = Ipv4Addr::new(198, 18, 2, 1);
        let mut shards: Vec<Shard> = (0..n)
            .map(|i| Shard::new(ShardConfig { capacity: 64, shard: i, shards: n, ..ShardConfig::default() }, 0))
            .collect();
        let mut replies = HashSet::new();
        for (src, sport, dst, dport, p) in flows {
            let dport = if p == proto::ICMP { 0 } else { dport };
            let k = FlowKey::new(src.into(), sport, dst.into(), dport, p);
            let owner = k.owner(n);
            let sh = &mut shards[owner];
            if sh.lookup(&k).is_some() { continue; }
            let nat = sh.snat(&k, pub_ip).unwrap();
            let reply = reply_key(&nat.translated);
            prop_assert_eq!(reply.owner(n), owner);
            prop_assert!(replies.insert(reply), "reply key handed out twice");
            let l4 = match p {
                proto::TCP => tcp(F::SYN, 1, 0, 1000, 0),
                proto::UDP => L4Info::Udp,
                _ => L4Info::IcmpQuery { ty: 8, code: 0 },
            };
            let id = sh.create(0, &k, &l4, ConnMeta { nat: Some(nat), ..meta() }).unwrap();
            prop_assert_eq!(sh.lookup(&reply), Some((id, Dir::Reply)));
        }
    }

    #[test]
    fn lookup_finds_exactly_the_live_keys(ops in proptest::collection::vec((0u16..48, any::<bool>()), 1..300)) {
        let mut sh = Shard::new(cfg(32), 0);
        let mut model: BTreeMap<u16, ConnId> = BTreeMap::new();
        for (p, add) in ops {
            let k = key(proto::UDP, p, 53);
            if add {
                match sh.create(0, &k, &L4Info::Udp, meta()) {
                    Ok(id) => { prop_assert!(!model.contains_key(&p)); model.insert(p, id); }
                    Err(CreateError::Exists(id)) => prop_assert_eq!(model.get(&p), Some(&id)),
                    Err(CreateError::TableFull) => prop_assert_eq!(model.len(), 32),
                    Err(e) => prop_assert!(false, "{e}"),
                }
            } else if let Some(id) = model.remove(&p) {
                prop_assert!(sh.delete(0, id));
            }
            for q in 0..48u16 {
                let k = key(proto::UDP, q, 53);
                let want = model.get(&q).copied();
                prop_assert_eq!(sh.lookup(&k).map(|x| x.0), want);
                prop_assert_eq!(sh.lookup(&k.reverse()).map(|x| x.0), want);
            }
        }
        prop_assert_eq!(sh.len(), model.len());
    }
}

#[test]
fn installed_connections_are_larval_until_activated() {
    let mut active = Shard::new(cfg(16), 0);
    let k = key(proto::TCP, 40000, 80);
    let id = handshake(&mut active, 0, &k);
    let snap = active.snapshot(5 * S, id).unwrap();
    assert_eq!(snap.age_ms, 5 * S);

    let mut passive = Shard::new(cfg(16), 1_000_000);
    let now = 1_000_000;
    let pid = passive.install(now, &snap).unwrap();
    let c = passive.get(pid).unwrap();
    assert!(c.is_larval());
    assert_eq!(c.state(), &snap.state);
    assert_eq!(passive.lookup(&k.reverse()), Some((pid, Dir::Reply)));
    assert_eq!(passive.larval(), 1);
    let data = tcp(F::ACK, 1001, 5001, 65535, 100);
    assert_eq!(
        passive.track(now, pid, Dir::Original, &data, 152),
        Track::Drop(TrackDrop::Larval)
    );
    // Installing again updates in place.
    assert_eq!(passive.install(now, &snap), Ok(pid));
    assert_eq!(passive.len(), 1);
    // Takeover: live, with a grace period for windows that moved on.
    assert_eq!(passive.activate_all(now + S), 1);
    assert!(!passive.get(pid).unwrap().is_larval());
    assert_eq!(passive.loose_until_ms(), now + S + 30 * S);
    let moved = tcp(F::ACK, 1001 + 9_000_000, 5001 + 1_000_000, 65535, 100);
    assert_eq!(
        passive.track(now + 2 * S, pid, Dir::Original, &moved, 152),
        Track::Accept
    );
    assert_eq!(passive.view(now + 2 * S, pid).unwrap().packets, [3, 1]);
}

#[test]
fn install_replaces_a_colliding_local_entry() {
    let mut sh = Shard::new(cfg(16), 0);
    let k = key(proto::UDP, 5353, 53);
    let local = sh.create(0, &k.reverse(), &L4Info::Udp, meta()).unwrap();
    let mut other = Shard::new(cfg(16), 0);
    let id = other.create(0, &k, &L4Info::Udp, meta()).unwrap();
    let snap = other.snapshot(0, id).unwrap();
    let pid = sh.install(0, &snap).unwrap();
    assert!(sh.get(local).is_none() || pid == local);
    assert_eq!(sh.lookup(&k), Some((pid, Dir::Original)));
    assert_eq!(sh.counters().install_replaced, 1);
}

#[test]
fn an_active_member_never_lets_a_replicated_record_override_a_live_entry() {
    // The old active's late records reach a member that is active now.
    let mut old = Shard::new(cfg(16), 0);
    let k = key(proto::TCP, 40000, 80);
    let oid = handshake(&mut old, 0, &k);
    let stale = old.snapshot(S, oid).unwrap();

    let mut now_active = Shard::new(cfg(16), 0);
    let id = handshake(&mut now_active, 0, &k);
    let before = *now_active.get(id).unwrap();
    let late = Delta {
        at_ms: S,
        created_ms: 0,
        kind: DeltaKind::Create(stale),
    };
    assert_eq!(now_active.apply_active(2 * S, &late), Err(ApplyError::Live));
    let del = Delta {
        at_ms: S,
        created_ms: 0,
        kind: DeltaKind::Delete { key: k },
    };
    assert_eq!(now_active.apply_active(2 * S, &del), Err(ApplyError::Live));
    let after = now_active.get(id).unwrap();
    assert!(!after.is_larval(), "the live entry was made larval");
    assert_eq!(after.state(), before.state());
    assert_eq!(now_active.counters().sync_kept_live, 2);
    // Its packets still pass.
    let data = tcp(F::ACK, 1001, 5001, 65535, 100);
    assert_eq!(
        now_active.track(3 * S, id, Dir::Original, &data, 152),
        Track::Accept
    );

    // A connection the active does not have arrives live, not larval: its
    // packets must not be dropped.
    let k2 = key(proto::TCP, 40001, 80);
    let oid2 = handshake(&mut old, 0, &k2);
    let snap2 = old.snapshot(S, oid2).unwrap();
    let create2 = Delta {
        at_ms: S,
        created_ms: 0,
        kind: DeltaKind::Create(snap2),
    };
    assert_eq!(now_active.apply_active(2 * S, &create2), Ok(()));
    let (id2, _) = now_active.lookup(&k2).unwrap();
    assert!(!now_active.get(id2).unwrap().is_larval());
    assert_eq!(now_active.larval(), 0);
    assert_eq!(
        now_active.track(3 * S, id2, Dir::Original, &data, 152),
        Track::Accept
    );
}

#[test]
fn a_complete_bulk_sweeps_the_larval_entries_it_did_not_confirm() {
    let mut active = Shard::new(cfg(64), 0);
    let mut passive = Shard::new(cfg(64), 0);
    let keys: Vec<FlowKey> = (0..6).map(|p| key(proto::UDP, 1000 + p, 53)).collect();
    for k in &keys {
        let id = active.create(0, k, &L4Info::Udp, meta()).unwrap();
        passive
            .install(0, &active.snapshot(0, id).unwrap())
            .unwrap();
    }
    // Two connections end on the active while their deletes are lost.
    for k in &keys[..2] {
        let (id, _) = active.lookup(k).unwrap();
        active.delete(S, id);
    }
    // The bulk, begun at 2 s, confirms the four that remain.
    let bulk_since = 2 * S;
    for k in &keys[2..] {
        let (id, _) = active.lookup(k).unwrap();
        let d = Delta {
            at_ms: 3 * S,
            created_ms: 0,
            kind: DeltaKind::Create(active.snapshot(3 * S, id).unwrap()),
        };
        passive.apply(3 * S, &d).unwrap();
    }
    assert_eq!(passive.len(), 6);
    let mut cursor = 0;
    let mut removed = 0;
    while cursor < passive.capacity() {
        removed += passive.sweep_larval(4 * S, bulk_since, &mut cursor, 10);
    }
    assert_eq!(removed, 2);
    assert_eq!(passive.counters().swept, 2);
    let left: HashSet<FlowKey> = passive.iter(4 * S).map(|v| v.orig).collect();
    assert_eq!(left, keys[2..].iter().copied().collect());
}

#[test]
fn a_member_that_becomes_passive_holds_its_entries_larval() {
    let mut sh = Shard::new(cfg(16), 0);
    let mut rx = sh.take_delta_consumer().unwrap();
    let k = key(proto::UDP, 5353, 53);
    let id = sh.create(0, &k, &L4Info::Udp, meta()).unwrap();
    drain(&mut rx);
    assert_eq!(sh.deactivate_all(), 1);
    assert!(sh.get(id).unwrap().is_larval());
    assert_eq!(sh.larval(), 1);
    // The new active's stream now rules it; removing it says nothing to
    // the peer.
    let del = Delta {
        at_ms: S,
        created_ms: 0,
        kind: DeltaKind::Delete { key: k },
    };
    sh.apply(S, &del).unwrap();
    assert!(sh.is_empty());
    assert!(drain(&mut rx).is_empty());
    assert_eq!(sh.larval(), 0);
}

#[test]
fn digests_agree_when_the_peer_holds_the_same_connections() {
    let mut active = Shard::new(cfg(64), 0);
    let mut rx = active.take_delta_consumer().unwrap();
    let mut passive = Shard::new(cfg(64), 0);
    for p in 0..20 {
        active
            .create(0, &key(proto::UDP, 2000 + p, 53), &L4Info::Udp, meta())
            .unwrap();
    }
    // A connection the policy does not sync is not in the digest.
    let private = ConnMeta {
        sync: false,
        ..meta()
    };
    active
        .create(0, &key(proto::UDP, 9, 53), &L4Info::Udp, private)
        .unwrap();
    for d in drain(&mut rx) {
        passive.apply(0, &d).unwrap();
    }
    assert_eq!(active.digest(), passive.digest());
    assert_eq!(active.digest().connections(), 20);
    // One lost on the way: exactly its bucket differs.
    let lost = key(proto::UDP, 2005, 53);
    let (id, _) = passive.lookup(&lost).unwrap();
    passive.delete(0, id);
    let diff = active.digest().differences(&passive.digest());
    let (id, _) = active.lookup(&lost).unwrap();
    let c = active.get(id).unwrap();
    let bucket = (conn_fingerprint(&c.key(Dir::Original), &c.key(Dir::Reply)) >> 56) as usize;
    assert_eq!(diff, vec![bucket]);
}

fn drain(c: &mut DeltaConsumer) -> Vec<Delta> {
    let mut v = vec![];
    c.drain(usize::MAX, |d| v.push(d));
    v
}

#[test]
fn deltas_cover_creation_transitions_refresh_and_deletion() {
    let mut c = cfg(16);
    c.refresh_interval_ms = 10 * S;
    let mut sh = Shard::new(c, 0);
    let mut rx = sh.take_delta_consumer().unwrap();
    let k = key(proto::TCP, 40000, 80);
    let id = handshake(&mut sh, 0, &k);
    let kinds: Vec<_> = drain(&mut rx)
        .iter()
        .map(|d| match d.kind {
            DeltaKind::Create(s) => format!("create {}", s.state.name()),
            DeltaKind::Update(u) => format!("update {}", u.state.name()),
            DeltaKind::Refresh { .. } => "refresh".into(),
            DeltaKind::Delete { .. } => "delete".into(),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "create syn_sent",
            "update syn_received",
            "update established"
        ]
    );
    // Data packets: nothing, until a refresh is due.
    for t in 1..10 {
        sh.track(
            t * S,
            id,
            Dir::Original,
            &tcp(F::ACK, 1001, 5001, 65535, 0),
            52,
        );
    }
    assert!(drain(&mut rx).is_empty());
    sh.track(
        10 * S,
        id,
        Dir::Original,
        &tcp(F::ACK, 1001, 5001, 65535, 0),
        52,
    );
    let d = drain(&mut rx);
    assert!(
        matches!(d[..], [Delta { kind: DeltaKind::Refresh { remaining_ms, .. }, created_ms: 0, .. }] if remaining_ms == 2 * 3600 * S)
    );
    assert_eq!(sh.flush(11 * S), 1);
    assert!(
        matches!(drain(&mut rx)[..], [Delta { kind: DeltaKind::Delete { key }, .. }] if key == k)
    );
}

#[test]
fn excluded_and_young_connections_are_not_synced_early() {
    let mut c = cfg(16);
    c.sync_min_age_ms = 5 * S;
    let mut sh = Shard::new(c, 0);
    let mut rx = sh.take_delta_consumer().unwrap();
    let excluded = sh
        .create(
            0,
            &key(proto::UDP, 1, 53),
            &L4Info::Udp,
            ConnMeta {
                sync: false,
                ..meta()
            },
        )
        .unwrap();
    let young = sh
        .create(0, &key(proto::UDP, 2, 53), &L4Info::Udp, meta())
        .unwrap();
    for t in [0, S, 4 * S] {
        sh.track(t, excluded, Dir::Original, &L4Info::Udp, 60);
        sh.track(t, young, Dir::Original, &L4Info::Udp, 60);
    }
    assert!(drain(&mut rx).is_empty());
    sh.track(6 * S, excluded, Dir::Original, &L4Info::Udp, 60);
    sh.track(6 * S, young, Dir::Original, &L4Info::Udp, 60);
    let d = drain(&mut rx);
    assert_eq!(d.len(), 1);
    assert!(
        matches!(d[0].kind, DeltaKind::Create(s) if s.orig == key(proto::UDP, 2, 53) && s.age_ms == 6 * S)
    );
    // Deleting a never-synced connection says nothing.
    sh.delete(7 * S, excluded);
    assert!(drain(&mut rx).is_empty());
}

#[test]
fn a_full_delta_ring_is_counted_and_asks_for_a_bulk_resync() {
    let mut c = cfg(64);
    c.delta_capacity = 4;
    let mut sh = Shard::new(c, 0);
    let mut rx = sh.take_delta_consumer().unwrap();
    for p in 0..10 {
        sh.create(0, &key(proto::UDP, p, 53), &L4Info::Udp, meta())
            .unwrap();
    }
    assert_eq!(sh.counters().deltas_dropped, 6);
    // The sync core sees the loss on its end of the ring.
    assert_eq!(rx.losses(), 6);
    assert_eq!(drain(&mut rx).len(), 4);
    let mut cursor = 0;
    let mut got = 0;
    while cursor < sh.capacity() {
        got += sh.bulk_sync(1, &mut cursor, 3);
        let n = drain(&mut rx).len();
        assert!(n <= 4);
    }
    assert_eq!(got, 10);
    assert_eq!(
        rx.losses(),
        6,
        "a bulk dump that waits for room loses nothing"
    );
}

#[test]
fn host_table_counts_open_and_created_connections() {
    let mut c = cfg(64);
    c.host_capacity = 2;
    let mut sh = Shard::new(c, 0);
    let mk = |h: u8, p: u16| FlowKey::new(a(h), p, b(1), 53, proto::UDP);
    let x = sh.create(0, &mk(1, 1), &L4Info::Udp, meta()).unwrap();
    sh.create(0, &mk(1, 2), &L4Info::Udp, meta()).unwrap();
    sh.create(0, &mk(2, 1), &L4Info::Udp, meta()).unwrap();
    sh.create(0, &mk(3, 1), &L4Info::Udp, meta()).unwrap();
    assert_eq!(
        sh.host(a(1)),
        Some(HostView {
            addr: a(1),
            open: 2,
            created: 2
        })
    );
    assert_eq!(sh.host(a(3)), None);
    assert_eq!(sh.host_stats(), (2, 1));
    sh.delete(0, x);
    assert_eq!(sh.host(a(1)).unwrap().open, 1);
    assert_eq!(sh.flush(0), 3);
    assert_eq!(sh.hosts().count(), 0);
}

#[test]
fn conn_list_shows_each_connection() {
    let mut sh = Shard::new(cfg(16), 0);
    let id = handshake(&mut sh, 0, &key(proto::TCP, 40000, 80));
    sh.create(0, &key(proto::UDP, 1, 53), &L4Info::Udp, meta())
        .unwrap();
    let list: Vec<ConnView> = sh.iter(3 * S).collect();
    assert_eq!(list.len(), 2);
    let v = list.iter().find(|v| v.id == id).unwrap();
    assert_eq!(
        (v.state, v.proto, v.age_ms, v.idle_ms, v.larval, v.sync),
        ("established", proto::TCP, 3 * S, 3 * S, false, true)
    );
}

#[test]
fn an_entry_costs_less_than_256_bytes() {
    let sh = Shard::new(cfg(1 << 20), 0);
    let b = sh.bytes_per_conn();
    assert!(b < 256, "{b} bytes per connection");
}

// ---- delta stream completeness ----

#[derive(Clone, Debug)]
enum Op {
    /// Open a flow (protocol selector, flow number).
    Open(u8, u8),
    /// A packet on flow n: direction, kind selector.
    Pkt(u8, bool, u8),
    /// Let time pass and expire.
    Wait(u16),
    Delete(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..4, 0u8..12).prop_map(|(p, n)| Op::Open(p, n)),
        (0u8..12, any::<bool>(), 0u8..8).prop_map(|(n, d, k)| Op::Pkt(n, d, k)),
        (0u16..4000).prop_map(Op::Wait),
        (0u8..12).prop_map(Op::Delete),
    ]
}

fn flow_key(p: u8, n: u8) -> (FlowKey, L4Info) {
    let sport = 10_000 + u16::from(n);
    match p {
        0 => (key(proto::TCP, sport, 80), tcp(F::SYN, 1000, 0, 65535, 0)),
        1 => (key(proto::UDP, sport, 53), L4Info::Udp),
        2 => (
            key(proto::ICMP, sport, 0),
            L4Info::IcmpQuery { ty: 8, code: 0 },
        ),
        _ => (key(proto::SCTP, sport, 9), sctp(0, 1)),
    }
}

/// A packet of kind `k` for a connection of protocol `proto` going
/// `dir`: a plausible TCP conversation, datagrams, SCTP chunks.
fn packet(p: u8, reply: bool, k: u8) -> L4Info {
    match p {
        proto::TCP => match (reply, k % 4) {
            (false, 0) => tcp(F::ACK, 1001, 5001, 65535, 0),
            (true, 0) => tcp(F::SYN | F::ACK, 5000, 1001, 65535, 0),
            (false, 1) => tcp(F::FIN | F::ACK, 1001, 5001, 65535, 0),
            (true, 1) => tcp(F::FIN | F::ACK, 5001, 1002, 65535, 0),
            (false, 2) => tcp(F::ACK, 1002, 5002, 65535, 0),
            (_, 3) if k > 5 => tcp(F::RST, if reply { 5001 } else { 1001 }, 0, 0, 0),
            _ => tcp(
                F::ACK,
                if reply { 5001 } else { 1001 },
                if reply { 1001 } else { 5001 },
                65535,
                0,
            ),
        },
        proto::UDP => L4Info::Udp,
        proto::ICMP => L4Info::IcmpQuery {
            ty: if reply { 0 } else { 8 },
            code: 0,
        },
        _ => match (reply, k % 4) {
            (true, 0) => sctp(0xA, 2),
            (false, 1) => sctp(0xB, 10),
            (true, 1) => sctp(0xA, 11),
            (false, 2) => sctp(0xB, 0),
            (true, 2) => sctp(0xA, 7),
            (false, 3) => sctp(0xB, 8),
            _ => sctp(if reply { 0xA } else { 0xB }, 14),
        },
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Random packet sequences on random flows: replaying the delta
    /// stream into a fresh shard reproduces the same connections in the
    /// same states.
    #[test]
    fn delta_stream_replays_into_the_same_connections(ops in proptest::collection::vec(op(), 1..200)) {
        let mut c = cfg(64);
        c.refresh_interval_ms = 2 * S;
        let mut sh = Shard::new(c.clone(), 0);
        let mut rx = sh.take_delta_consumer().unwrap();
        let mut replica = Shard::new(c, 0);
        let mut now = 0u64;
        let mut keys: BTreeMap<u8, FlowKey> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Open(p, n) => {
                    let (k, l4) = flow_key(p, n);
                    if let Ok(id) = sh.create(now, &k, &l4, meta()) {
                        sh.track(now, id, Dir::Original, &l4, 60);
                        keys.insert(n, k);
                    }
                }
                Op::Pkt(n, reply, kind) => {
                    if let Some(k) = keys.get(&n) {
                        if let Some((id, dir)) = sh.lookup(k) {
                            let dir = if reply { dir.other() } else { dir };
                            let l4 = packet(k.proto, dir == Dir::Reply, kind);
                            sh.track(now, id, dir, &l4, 100);
                        }
                    }
                }
                Op::Wait(ms) => {
                    now += u64::from(ms) * 10;
                    sh.expire(now, 4);
                }
                Op::Delete(n) => {
                    if let Some((id, _)) = keys.get(&n).and_then(|k| sh.lookup(k)) {
                        sh.delete(now, id);
                    }
                }
            }
            // The sync core drains as it goes; the replica applies in order.
            for d in drain(&mut rx) {
                prop_assert!(replica.apply(now, &d).is_ok(), "{:?}", d);
            }
        }
        prop_assert_eq!(rx.losses(), 0);
        let mine: BTreeMap<FlowKey, (FlowKey, &'static str, u32)> =
            sh.iter(now).map(|v| (v.orig, (v.reply, v.state, v.rule))).collect();
        let theirs: BTreeMap<FlowKey, (FlowKey, &'static str, u32)> =
            replica.iter(now).map(|v| (v.orig, (v.reply, v.state, v.rule))).collect();
        prop_assert_eq!(&mine, &theirs);
        prop_assert!(replica.iter(now).all(|v| v.larval));
        // The replica's deadlines trail ours by less than a refresh
        // interval, and never lead them.
        for v in sh.iter(now) {
            let (id, _) = replica.lookup(&v.orig).unwrap();
            let r = replica.view(now, id).unwrap();
            prop_assert!(r.remaining_ms <= v.remaining_ms, "{:?} {:?}", v, r);
            prop_assert!(v.remaining_ms < r.remaining_ms + 2 * S, "{:?} {:?}", v, r);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn burst_lookup_agrees_with_single_lookups(present in proptest::collection::vec(0u16..200, 0..100), asked in proptest::collection::vec((0u16..200, any::<bool>()), 0..40)) {
        let mut sh = Shard::new(cfg(128), 0);
        for p in present {
            let _ = sh.create(0, &key(proto::UDP, p, 53), &L4Info::Udp, meta());
        }
        let keys: Vec<FlowKey> = asked
            .iter()
            .map(|&(p, rev)| if rev { key(proto::UDP, p, 53).reverse() } else { key(proto::UDP, p, 53) })
            .collect();
        let mut out = [None; BURST];
        sh.lookup_burst(&keys, &mut out);
        for (i, k) in keys.iter().take(BURST).enumerate() {
            prop_assert_eq!(out[i], sh.lookup(k));
        }
    }
}

#[test]
fn a_dnat_reply_key_owned_by_another_worker_is_redirected_while_the_connection_lives() {
    let n = 3;
    let redirects = std::sync::Arc::new(Redirects::default());
    let mut found = 0;
    for sport in 40_000..40_060u16 {
        let k = key(proto::TCP, sport, 8080);
        let real = FlowKey {
            dst: Ipv4Addr::new(198, 18, 1, 10),
            dport: 80,
            ..k
        };
        let reply = real.reverse();
        let owner = k.owner(n);
        let mut sh = Shard::new(
            ShardConfig {
                capacity: 64,
                shard: owner,
                shards: n,
                ..ShardConfig::default()
            },
            0,
        );
        sh.set_redirects(redirects.clone());
        let nat = Nat {
            kind: NatKind::Dnat,
            orig: k,
            translated: real,
        };
        let id = sh
            .create(
                0,
                &k,
                &tcp(F::SYN, 1000, 0, 65535, 0),
                ConnMeta {
                    nat: Some(nat),
                    ..meta()
                },
            )
            .unwrap();
        let foreign = reply.owner(n) != owner;
        assert_eq!(redirects.get(&reply), foreign.then_some(owner), "{k:?}");
        assert_eq!(
            redirects.get(&k),
            None,
            "the original key needs no redirect"
        );
        found += usize::from(foreign);
        assert!(sh.delete(1, id));
        assert_eq!(redirects.get(&reply), None, "removed with the connection");
    }
    assert!(
        found > 10,
        "most DNAT replies belong to another worker ({found} of 60)"
    );
    assert!(redirects.is_empty());
}
