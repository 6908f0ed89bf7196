//! The HA path over the data network: the last-resort heartbeat and the
//! ICMP check of the peer (HA-REFERENCE F20), carried by the dataplane so
//! that they prove what matters, that the peer's *dataplane* is alive.
//!
//! Both are IPv4 ICMP echo frames sent to the Ethernet broadcast address
//! with the interface's (cluster) address as both source and destination,
//! TTL 1 and a tandem identifier, so no host takes them for its own and
//! no router forwards them:
//!
//! | identifier | echo request | echo reply |
//! |---|---|---|
//! | [`ID_HEARTBEAT`] | a heartbeat (HMAC-sealed by the control thread), handed to it | never sent |
//! | [`ID_PROBE`] | an ICMP check: answered at once by the worker that receives it, whatever the node's role | handed to the control thread |
//!
//! The worker answers a check itself, without the control thread: a peer
//! whose dataplane forwards but whose control thread is late still answers,
//! so it is not taken over. A killed or frozen peer does not answer.
//!
//! Workers hand frames to the control thread through a bounded channel
//! ([`HaDataHandle::received`]) and worker 0 sends the frames the control
//! thread builds ([`HaDataHandle::send`]) on the port it names, in either
//! role (the passive is otherwise silent on data ports).

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam::channel::{bounded, Receiver, Sender, TrySendError};

use crate::wire::checksum;

/// ICMP identifier of a last-resort heartbeat.
pub const ID_HEARTBEAT: u16 = 0x5405;
/// ICMP identifier of an ICMP check.
pub const ID_PROBE: u16 = 0x5406;

const ETH: usize = 14;
const IP: usize = 20;
const ICMP: usize = 8;
/// Bytes before the payload.
pub const HEADER_LEN: usize = ETH + IP + ICMP;
/// Largest payload carried.
pub const MAX_PAYLOAD: usize = 256;

/// What an HA frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A last-resort heartbeat from the peer.
    Heartbeat,
    /// The peer checks that we are alive: answer it.
    ProbeRequest,
    /// The answer to our check.
    ProbeReply,
}

/// The kind of an HA frame, or `None` for every other frame. Cheap: a few
/// byte compares, done for every frame a worker receives.
#[inline]
pub fn classify(frame: &[u8]) -> Option<Kind> {
    if frame.len() < HEADER_LEN
        || frame[12..14] != [0x08, 0x00]
        || frame[ETH] != 0x45
        || frame[ETH + 9] != 1
        || frame[ETH + 12..ETH + 16] != frame[ETH + 16..ETH + 20]
    {
        return None;
    }
    let icmp = ETH + IP;
    let id = u16::from_be_bytes([frame[icmp + 4], frame[icmp + 5]]);
    match (frame[icmp], id) {
        (8, ID_HEARTBEAT) => Some(Kind::Heartbeat),
        (8, ID_PROBE) => Some(Kind::ProbeRequest),
        (0, ID_PROBE) => Some(Kind::ProbeReply),
        _ => None,
    }
}

/// The payload of an HA frame (after the ICMP header, up to the IP total
/// length), or `None` when the lengths do not add up.
pub fn payload(frame: &[u8]) -> Option<&[u8]> {
    let total = usize::from(u16::from_be_bytes([frame[ETH + 2], frame[ETH + 3]]));
    if total < IP + ICMP || ETH + total > frame.len() {
        return None;
    }
    Some(&frame[HEADER_LEN..ETH + total])
}

/// Builds an HA frame (heartbeat or check request) from `mac` with address
/// `addr` carrying `payload`; returns its length in `out`, or `None` when
/// `out` is too small or the payload too large.
pub fn build_request(
    out: &mut [u8],
    mac: [u8; 6],
    addr: Ipv4Addr,
    id: u16,
    seq: u16,
    payload: &[u8],
) -> Option<usize> {
    let len = HEADER_LEN + payload.len();
    if payload.len() > MAX_PAYLOAD || out.len() < len {
        return None;
    }
    let f = &mut out[..len];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip = &mut f[ETH..ETH + IP];
    ip[0] = 0x45;
    ip[1] = 0xc0; // network control
    ip[2..4].copy_from_slice(&((IP + ICMP + payload.len()) as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&seq.to_be_bytes());
    ip[6..8].copy_from_slice(&[0x40, 0x00]); // DF
    ip[8] = 1; // TTL: never routed
    ip[9] = 1; // ICMP
    ip[10..12].copy_from_slice(&[0, 0]);
    ip[12..16].copy_from_slice(&addr.octets());
    ip[16..20].copy_from_slice(&addr.octets());
    let c = checksum::checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let icmp = &mut f[ETH + IP..];
    icmp[0] = 8;
    icmp[1] = 0;
    icmp[2..4].copy_from_slice(&[0, 0]);
    icmp[4..6].copy_from_slice(&id.to_be_bytes());
    icmp[6..8].copy_from_slice(&seq.to_be_bytes());
    icmp[8..].copy_from_slice(payload);
    let c = checksum::checksum(icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    Some(len)
}

/// Turns a check request (classified [`Kind::ProbeRequest`]) into its reply
/// in place: unicast back to the sender from `mac`, ICMP type 0.
pub fn answer_in_place(frame: &mut [u8], mac: [u8; 6]) {
    let (dst, src) = frame.split_at_mut(6);
    dst.copy_from_slice(&src[..6]);
    src[..6].copy_from_slice(&mac);
    let icmp = ETH + IP;
    let old = u16::from_be_bytes([frame[icmp], frame[icmp + 1]]);
    frame[icmp] = 0;
    let new = u16::from_be_bytes([frame[icmp], frame[icmp + 1]]);
    let c = u16::from_be_bytes([frame[icmp + 2], frame[icmp + 3]]);
    let c = checksum::update(c, old, new);
    frame[icmp + 2..icmp + 4].copy_from_slice(&c.to_be_bytes());
}

/// A frame a worker handed to the control thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The port it came in on.
    pub port: u16,
    /// Heartbeat or check reply.
    pub kind: Kind,
    /// The ICMP payload.
    pub payload: Vec<u8>,
}

/// A frame the control thread wants sent.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The port.
    pub port: u16,
    /// The whole Ethernet frame.
    pub frame: Vec<u8>,
}

/// Counters of the HA path over the data network (all workers add).
#[derive(Debug, Default)]
pub struct HaDataCounters {
    /// Heartbeats received.
    pub heartbeats_in: AtomicU64,
    /// Check requests answered.
    pub probes_answered: AtomicU64,
    /// Check replies received.
    pub probe_replies_in: AtomicU64,
    /// Frames sent for the control thread.
    pub sent: AtomicU64,
    /// Frames not handed over (channel full, bad length) or not sent (no mbuf).
    pub dropped: AtomicU64,
}

impl HaDataCounters {
    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// The workers' side.
#[derive(Debug, Clone)]
pub struct HaDataPath {
    to_control: Sender<Received>,
    /// Only worker 0 sends for the control thread.
    outgoing: Option<Receiver<Outgoing>>,
    /// Shared counters.
    pub counters: Arc<HaDataCounters>,
}

/// The control thread's side.
#[derive(Debug)]
pub struct HaDataHandle {
    from_workers: Receiver<Received>,
    to_worker: Sender<Outgoing>,
    /// Shared counters.
    pub counters: Arc<HaDataCounters>,
}

/// A connected pair: the handle for the control thread and the path to
/// clone into every worker (give `outgoing` to worker 0 only, see
/// [`HaDataPath::without_sending`]).
pub fn channel() -> (HaDataHandle, HaDataPath) {
    let (to_control, from_workers) = bounded(256);
    let (to_worker, outgoing) = bounded(64);
    let counters = Arc::new(HaDataCounters::default());
    (
        HaDataHandle {
            from_workers,
            to_worker,
            counters: counters.clone(),
        },
        HaDataPath {
            to_control,
            outgoing: Some(outgoing),
            counters,
        },
    )
}

impl HaDataPath {
    /// A copy for a worker that receives but does not send.
    pub fn without_sending(&self) -> HaDataPath {
        HaDataPath {
            outgoing: None,
            ..self.clone()
        }
    }

    /// Hands a received heartbeat or check reply to the control thread
    /// (check requests are answered by the worker, never handed over).
    pub fn deliver(&self, port: u16, kind: Kind, frame: &[u8]) {
        let c = &self.counters;
        HaDataCounters::bump(match kind {
            Kind::Heartbeat => &c.heartbeats_in,
            Kind::ProbeReply => &c.probe_replies_in,
            Kind::ProbeRequest => {
                HaDataCounters::bump(&c.dropped);
                return;
            }
        });
        let Some(p) = payload(frame) else {
            HaDataCounters::bump(&c.dropped);
            return;
        };
        let r = Received {
            port,
            kind,
            payload: p.to_vec(),
        };
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.to_control.try_send(r)
        {
            HaDataCounters::bump(&c.dropped);
        }
    }

    /// Counts a check answered by the worker.
    pub fn answered(&self) {
        HaDataCounters::bump(&self.counters.probes_answered);
    }

    /// The next frame the control thread wants sent (worker 0 only).
    pub fn next_outgoing(&self) -> Option<Outgoing> {
        self.outgoing.as_ref()?.try_recv().ok()
    }

    /// Counts a frame sent (`true`) or lost for want of an mbuf.
    pub fn sent(&self, ok: bool) {
        let c = &self.counters;
        HaDataCounters::bump(if ok { &c.sent } else { &c.dropped });
    }
}

impl HaDataHandle {
    /// Everything the workers handed over since the last call.
    pub fn received(&self) -> impl Iterator<Item = Received> + '_ {
        self.from_workers.try_iter()
    }

    /// Queues `frame` for sending on `port`; false when the queue is full.
    pub fn send(&self, port: u16, frame: Vec<u8>) -> bool {
        let ok = self.to_worker.try_send(Outgoing { port, frame }).is_ok();
        if !ok {
            HaDataCounters::bump(&self.counters.dropped);
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const PEER: [u8; 6] = [2, 0, 0, 0, 0, 2];
    const ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);

    fn frame(id: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; 512];
        let n = build_request(&mut out, MAC, ADDR, id, 7, payload).unwrap();
        out.truncate(n);
        out
    }

    #[test]
    fn requests_are_classified_and_carry_their_payload() {
        let hb = frame(ID_HEARTBEAT, b"heartbeat");
        assert_eq!(classify(&hb), Some(Kind::Heartbeat));
        assert_eq!(payload(&hb), Some(&b"heartbeat"[..]));
        let p = frame(ID_PROBE, b"nonce");
        assert_eq!(classify(&p), Some(Kind::ProbeRequest));
        // Valid IPv4 and ICMP checksums: a capture shows ordinary pings.
        assert!(checksum::verifies(&p[ETH..ETH + IP]));
        assert!(checksum::verifies(&p[ETH + IP..]));
    }

    #[test]
    fn a_probe_is_answered_in_place_back_to_its_sender() {
        let mut p = frame(ID_PROBE, b"0123456789abcdef");
        answer_in_place(&mut p, PEER);
        assert_eq!(classify(&p), Some(Kind::ProbeReply));
        assert_eq!(&p[0..6], &MAC);
        assert_eq!(&p[6..12], &PEER);
        assert!(checksum::verifies(&p[ETH + IP..]));
        assert_eq!(payload(&p), Some(&b"0123456789abcdef"[..]));
    }

    #[test]
    fn ordinary_traffic_is_not_taken_for_ha_frames() {
        // A normal ping from a host to the gateway: src != dst.
        let mut p = frame(ID_PROBE, b"x");
        p[ETH + 15] = 9;
        assert_eq!(classify(&p), None);
        // Another identifier.
        let mut q = frame(0x1234, b"x");
        assert_eq!(classify(&q), None);
        // IP options (IHL 6) or another protocol.
        q = frame(ID_HEARTBEAT, b"x");
        q[ETH] = 0x46;
        assert_eq!(classify(&q), None);
        q = frame(ID_HEARTBEAT, b"x");
        q[ETH + 9] = 17;
        assert_eq!(classify(&q), None);
        // Truncated, ARP.
        assert_eq!(classify(&frame(ID_HEARTBEAT, b"")[..HEADER_LEN - 1]), None);
        let mut arp = frame(ID_HEARTBEAT, b"x");
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(classify(&arp), None);
    }

    #[test]
    fn lengths_that_do_not_add_up_are_refused() {
        let mut p = frame(ID_HEARTBEAT, b"abc");
        p[ETH + 2..ETH + 4].copy_from_slice(&500u16.to_be_bytes());
        assert_eq!(payload(&p), None);
        p[ETH + 2..ETH + 4].copy_from_slice(&3u16.to_be_bytes());
        assert_eq!(payload(&p), None);
        let mut small = [0u8; 40];
        assert_eq!(
            build_request(&mut small, MAC, ADDR, ID_PROBE, 1, b"x"),
            None
        );
        let mut out = [0u8; 1024];
        assert_eq!(
            build_request(&mut out, MAC, ADDR, ID_PROBE, 1, &[0; MAX_PAYLOAD + 1]),
            None
        );
    }

    proptest::proptest! {
        /// Whatever arrives on a data port, classifying it and reading its
        /// payload never panics, and only frames with a tandem identifier
        /// are taken.
        #[test]
        fn arbitrary_frames_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            if let Some(kind) = classify(&bytes) {
                let id = u16::from_be_bytes([bytes[38], bytes[39]]);
                proptest::prop_assert!(id == ID_HEARTBEAT || id == ID_PROBE, "{:?}", kind);
                let _ = payload(&bytes);
                let mut copy = bytes.clone();
                answer_in_place(&mut copy, MAC);
            }
        }
    }

    #[test]
    fn the_channel_carries_frames_both_ways_and_counts_overflow() {
        let (handle, path) = channel();
        let w1 = path.without_sending();
        let hb = frame(ID_HEARTBEAT, b"hb");
        w1.deliver(3, Kind::Heartbeat, &hb);
        let got: Vec<_> = handle.received().collect();
        assert_eq!(
            got,
            vec![Received {
                port: 3,
                kind: Kind::Heartbeat,
                payload: b"hb".to_vec()
            }]
        );
        assert!(handle.send(1, vec![1, 2, 3]));
        assert!(w1.next_outgoing().is_none(), "only worker 0 sends");
        assert_eq!(path.next_outgoing().map(|o| o.port), Some(1));
        for _ in 0..300 {
            w1.deliver(3, Kind::Heartbeat, &hb);
        }
        assert_eq!(handle.counters.dropped.load(Ordering::Relaxed), 300 - 256);
    }
}
