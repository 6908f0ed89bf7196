//! The DPDK-free core of `tandem-gen`, the traffic generator: address
//! ranges confined to the benchmarking network, the flows and their frame
//! templates, the probe every frame carries, frame sizes (fixed or IMIX),
//! rate pacing, and the receiver's per-flow accounting (loss, reordering,
//! duplicates, latency). Nothing here reads a clock or touches a port: time
//! is passed in as TSC ticks, frames are byte slices the caller owns.
//!
//! A frame is Ethernet II + IPv4 (20 bytes, DF, TTL 64) + UDP (checksum 0,
//! "none", which IPv4 allows) + an 18-byte probe:
//!
//! ```text
//! offset 42: magic  u16  0x7467 ("tg")
//!        44: flow   u32  flow id (0..flows; +flows for the B->A direction)
//!        48: seq    u48  per-flow sequence number, from 0
//!        54: tsc    u48  sender's TSC (low 48 bits) when the frame left
//! ```
//!
//! 42 + 18 = 60 bytes: the smallest Ethernet frame without its FCS, so a
//! 64-byte frame holds the whole probe. Sizes are given as on the wire
//! with the 4-byte FCS (RFC 2544's 64..1518); the buffer holds 4 bytes
//! fewer and the rest of the payload is zero.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use hdrhistogram::Histogram;
use serde::Serialize;
use tandem_dataplane::wire::{
    checksum, EtherType, EthernetAddress, EthernetFrame, EthernetRepr, IpProtocol, Ipv4Packet,
    Ipv4Repr, UdpPacket,
};

/// RFC 2544's benchmarking network, 198.18.0.0/15: the only addresses
/// tandem-gen sends from or to.
pub const BENCH_NET: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 18, 0, 0), 15);

/// Most flows (per direction) one generator tracks.
pub const MAX_FLOWS: u32 = 1 << 23;
/// Longest run, seconds (warm-up and measurement each).
pub const MAX_SECONDS: f64 = 3600.0;
/// Smallest frame size, with FCS.
pub const MIN_SIZE: u16 = 64;
/// Largest frame size, with FCS (a 1500-byte MTU).
pub const MAX_SIZE: u16 = 1518;
/// The FCS the wire adds and the buffer does not hold.
pub const FCS_LEN: usize = 4;
/// Ethernet + IPv4 + UDP headers.
pub const HEADERS_LEN: usize = 14 + 20 + 8;
/// Offset of the probe in the frame.
pub const PROBE_OFFSET: usize = HEADERS_LEN;
/// Length of the probe.
pub const PROBE_LEN: usize = 18;
/// The probe's magic number.
pub const MAGIC: u16 = 0x7467;
/// First UDP source port of the flows.
pub const SRC_PORT_BASE: u16 = 1024;
/// Source ports per source address (1024..=65535).
pub const SRC_PORTS: u32 = 65536 - SRC_PORT_BASE as u32;
/// The width of the probe's sequence number and time stamp.
const MASK48: u64 = (1 << 48) - 1;
/// Sequence numbers below the highest seen that the receiver still tells
/// apart (late vs duplicate), per flow.
pub const REORDER_WINDOW: u64 = 128;

/// What is wrong with the generator's settings, said so the operator can
/// fix it.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum GenError {
    /// An address range does not parse.
    #[error("{option} {text:?} is not an address range: write a prefix (198.18.1.0/24), a range (198.18.1.10-198.18.1.250) or one address (198.18.2.10)")]
    BadRange {
        /// The command-line option.
        option: &'static str,
        /// What was given.
        text: String,
    },
    /// An address range reaches outside 198.18.0.0/15.
    #[error("{option} {range} reaches outside 198.18.0.0/15: tandem-gen only sends from and to RFC 2544's benchmarking network (198.18.0.0-198.19.255.255), so that its traffic can never hit a real host. Give a range inside it, such as 198.18.1.0/24")]
    OutsideBenchNet {
        /// The command-line option.
        option: &'static str,
        /// The range given.
        range: AddrRange,
    },
    /// The frame size is outside 64..=1518.
    #[error("--size {0} is out of range: give the Ethernet frame size with its FCS, from 64 to 1518 bytes (or --imix for 7:4:1 of 64/594/1518)")]
    BadSize(u32),
    /// Too many or no flows.
    #[error("--flows {0}: give 1 to 8388608 flows")]
    BadFlows(u64),
    /// More flows than distinct (source address, source port) pairs.
    #[error("--flows {flows} does not fit --src-net {range}: it has {addresses} addresses x 64512 source ports = {max} distinct flows. Use fewer flows or a wider --src-net")]
    FlowsDoNotFit {
        /// Flows asked for.
        flows: u32,
        /// The source range.
        range: AddrRange,
        /// Addresses in it.
        addresses: u32,
        /// Flows that fit.
        max: u64,
    },
    /// A time outside the allowed bounds.
    #[error("{option} {value}: give {lowest} up to 3600 seconds")]
    BadSeconds {
        /// The command-line option.
        option: &'static str,
        /// What was given.
        value: f64,
        /// The lowest value allowed, in words.
        lowest: &'static str,
    },
}

/// An inclusive range of IPv4 addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddrRange {
    /// First address.
    pub first: Ipv4Addr,
    /// Last address (>= first).
    pub last: Ipv4Addr,
}

impl AddrRange {
    /// Parses `a.b.c.d/len` (the prefix's hosts: without the network and
    /// broadcast addresses when the prefix is /30 or shorter),
    /// `a.b.c.d-e.f.g.h`, or one address; then checks that it lies inside
    /// 198.18.0.0/15. `option` names the command-line option in errors.
    pub fn parse_bench(option: &'static str, text: &str) -> Result<AddrRange, GenError> {
        let bad = || GenError::BadRange {
            option,
            text: text.to_owned(),
        };
        let text = text.trim();
        let range = if let Some((addr, len)) = text.split_once('/') {
            let addr = Ipv4Addr::from_str(addr).map_err(|_| bad())?;
            let len: u8 = len.parse().map_err(|_| bad())?;
            if len > 32 {
                return Err(bad());
            }
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            let net = u32::from(addr) & mask;
            let bcast = net | !mask;
            let (first, last) = if len <= 30 {
                (net + 1, bcast - 1)
            } else {
                (net, bcast)
            };
            AddrRange {
                first: first.into(),
                last: last.into(),
            }
        } else if let Some((a, b)) = text.split_once('-') {
            let first = Ipv4Addr::from_str(a.trim()).map_err(|_| bad())?;
            let last = Ipv4Addr::from_str(b.trim()).map_err(|_| bad())?;
            if first > last {
                return Err(bad());
            }
            AddrRange { first, last }
        } else {
            let a = Ipv4Addr::from_str(text).map_err(|_| bad())?;
            AddrRange { first: a, last: a }
        };
        if !in_bench_net(range.first) || !in_bench_net(range.last) {
            return Err(GenError::OutsideBenchNet { option, range });
        }
        Ok(range)
    }

    /// Number of addresses.
    pub fn len(&self) -> u32 {
        u32::from(self.last) - u32::from(self.first) + 1
    }

    /// Never true (a range holds at least one address); for clippy.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The `i`-th address, wrapping around.
    pub fn nth(&self, i: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.first) + i % self.len())
    }
}

impl fmt::Display for AddrRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// True for addresses inside 198.18.0.0/15.
pub fn in_bench_net(a: Ipv4Addr) -> bool {
    let mask = u32::MAX << (32 - BENCH_NET.1);
    u32::from(a) & mask == u32::from(BENCH_NET.0)
}

/// Frame sizes: one, or the simple IMIX.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sizes {
    /// Every frame this many bytes (with FCS).
    Fixed(u16),
    /// 7:4:1 of 64, 594 and 1518 bytes, interleaved.
    Imix,
}

/// One IMIX cycle: 7 x 64, 4 x 594, 1 x 1518, spread out.
const IMIX_CYCLE: [u16; 12] = [64, 594, 64, 64, 1518, 64, 594, 64, 64, 594, 64, 594];

impl Sizes {
    /// Checks a fixed size.
    pub fn fixed(size: u32) -> Result<Sizes, GenError> {
        match u16::try_from(size) {
            Ok(s) if (MIN_SIZE..=MAX_SIZE).contains(&s) => Ok(Sizes::Fixed(s)),
            _ => Err(GenError::BadSize(size)),
        }
    }

    /// Size (with FCS) of the `i`-th frame.
    #[inline]
    pub fn nth(&self, i: u64) -> u16 {
        match self {
            Sizes::Fixed(s) => *s,
            Sizes::Imix => IMIX_CYCLE[(i % IMIX_CYCLE.len() as u64) as usize],
        }
    }

    /// Mean frame size with FCS.
    pub fn mean(&self) -> f64 {
        match self {
            Sizes::Fixed(s) => f64::from(*s),
            Sizes::Imix => {
                IMIX_CYCLE.iter().map(|&s| f64::from(s)).sum::<f64>() / IMIX_CYCLE.len() as f64
            }
        }
    }

    /// Largest frame size with FCS.
    pub fn max(&self) -> u16 {
        match self {
            Sizes::Fixed(s) => *s,
            Sizes::Imix => MAX_SIZE,
        }
    }
}

/// Checks a time in seconds: finite, at most 3600, and above 0 (or at
/// least 0 when `zero_ok`).
pub fn check_seconds(option: &'static str, value: f64, zero_ok: bool) -> Result<f64, GenError> {
    let low_ok = if zero_ok { value >= 0.0 } else { value > 0.0 };
    if value.is_finite() && low_ok && value <= MAX_SECONDS {
        Ok(value)
    } else {
        Err(GenError::BadSeconds {
            option,
            value,
            lowest: if zero_ok { "0" } else { "more than 0" },
        })
    }
}

/// The socket a memif client port connects to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemifSocket {
    /// The `socket=` path (DPDK's default `/run/memif.sock`).
    pub path: String,
    /// In the abstract namespace (`socket-abstract=yes`, DPDK 22.11's
    /// default): no file exists at `path`.
    pub abstract_ns: bool,
}

impl MemifSocket {
    /// The name `/proc/net/unix` shows for it (`@` marks abstract ones).
    pub fn proc_name(&self) -> String {
        if self.abstract_ns {
            format!("@{}", self.path)
        } else {
            self.path.clone()
        }
    }

    /// Whether `/proc/net/unix` (its text given) shows a socket of this
    /// name listening: the memif server is up.
    pub fn listening_in(&self, proc_net_unix: &str) -> bool {
        const ACCEPTCON: u32 = 0x0001_0000;
        let name = self.proc_name();
        proc_net_unix.lines().skip(1).any(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            cols.len() >= 8
                && cols[7..].join(" ") == name
                && u32::from_str_radix(cols[3], 16).is_ok_and(|f| f & ACCEPTCON != 0)
        })
    }
}

/// The socket of a memif client port: `Some` for a vdev spec of
/// `net_memif*` with `role=client`, `None` otherwise. DPDK 22.11's memif
/// client fails to start when nothing listens there, so the generator
/// waits for the server first.
pub fn memif_client_socket(spec: &str) -> Option<MemifSocket> {
    let mut parts = spec.split(',');
    if !parts.next()?.starts_with("net_memif") {
        return None;
    }
    let mut client = false;
    let mut sock = MemifSocket {
        path: "/run/memif.sock".into(),
        abstract_ns: true,
    };
    for kv in parts {
        match kv.split_once('=') {
            Some(("role", r)) => client = r == "client",
            Some(("socket", p)) => sock.path = p.into(),
            Some(("socket-abstract", a)) => sock.abstract_ns = a != "no",
            _ => {}
        }
    }
    client.then_some(sock)
}

/// One flow's addresses and ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowTuple {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// UDP source port.
    pub sport: u16,
    /// UDP destination port.
    pub dport: u16,
}

impl FlowTuple {
    /// The same flow seen from the other end (the replies).
    pub fn reversed(&self) -> FlowTuple {
        FlowTuple {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
        }
    }
}

/// The flows of one direction: flow `i` comes from source address
/// `i mod |src|` and source port `1024 + (i div |src|)`, to destination
/// address `i mod |dst|` on one destination port, so all tuples differ.
#[derive(Clone, Debug)]
pub struct FlowPlan {
    /// Source addresses.
    pub src: AddrRange,
    /// Destination addresses.
    pub dst: AddrRange,
    /// UDP destination port.
    pub dport: u16,
    /// Number of flows.
    pub flows: u32,
}

impl FlowPlan {
    /// Checks the flow count against the ranges.
    pub fn new(
        src: AddrRange,
        dst: AddrRange,
        dport: u16,
        flows: u64,
    ) -> Result<FlowPlan, GenError> {
        if flows == 0 || flows > u64::from(MAX_FLOWS) {
            return Err(GenError::BadFlows(flows));
        }
        let flows = flows as u32;
        let max = u64::from(src.len()) * u64::from(SRC_PORTS);
        if u64::from(flows) > max {
            return Err(GenError::FlowsDoNotFit {
                flows,
                range: src,
                addresses: src.len(),
                max,
            });
        }
        Ok(FlowPlan {
            src,
            dst,
            dport,
            flows,
        })
    }

    /// Flow `i` (`i < flows`).
    pub fn tuple(&self, i: u32) -> FlowTuple {
        let n = self.src.len();
        FlowTuple {
            src: self.src.nth(i % n),
            dst: self.dst.nth(i),
            sport: SRC_PORT_BASE + ((i / n) % SRC_PORTS) as u16,
            dport: self.dport,
        }
    }
}

/// The headers of one flow's frames, built once: a frame is the template,
/// its lengths and IPv4 checksum patched for the size, and the probe.
#[derive(Clone, Copy, Debug)]
pub struct Template {
    bytes: [u8; HEADERS_LEN],
    /// Buffer length (without FCS) the template's lengths are for.
    len: u16,
}

impl Template {
    /// Builds the headers of `t` for frames of `size` bytes (with FCS).
    pub fn new(
        src_mac: EthernetAddress,
        dst_mac: EthernetAddress,
        t: &FlowTuple,
        size: u16,
    ) -> Template {
        let len = size - FCS_LEN as u16;
        let mut bytes = [0u8; HEADERS_LEN];
        let eth = EthernetRepr {
            src_addr: src_mac,
            dst_addr: dst_mac,
            vlan_tci: None,
            ethertype: EtherType::Ipv4,
        };
        eth.emit(&mut EthernetFrame::new_unchecked(&mut bytes[..14]))
            .expect("14 bytes hold an untagged Ethernet header");
        let ip = Ipv4Repr {
            src_addr: t.src,
            dst_addr: t.dst,
            protocol: IpProtocol::Udp,
            payload_len: usize::from(len) - 14 - 20,
            ttl: 64,
            dscp_ecn: 0,
            dont_frag: true,
        };
        ip.emit(&mut Ipv4Packet::new_unchecked(&mut bytes[14..34]))
            .expect("20 bytes hold the IPv4 header");
        let mut udp = UdpPacket::new_unchecked(&mut bytes[34..42]);
        udp.set_src_port(t.sport);
        udp.set_dst_port(t.dport);
        udp.set_len(len - 34);
        udp.set_checksum(0);
        Template { bytes, len }
    }

    /// Writes a whole frame of `size` bytes (with FCS) into `buf`, which
    /// must hold exactly `size - 4` bytes: headers, probe, zero padding.
    #[inline]
    pub fn write(&self, buf: &mut [u8], probe: &Probe) {
        let len = buf.len() as u16;
        buf[..HEADERS_LEN].copy_from_slice(&self.bytes);
        if len != self.len {
            let old_total = self.len - 14;
            let new_total = len - 14;
            let old_ck = u16::from_be_bytes([buf[24], buf[25]]);
            let ck = checksum::update(old_ck, old_total, new_total);
            buf[16..18].copy_from_slice(&new_total.to_be_bytes());
            buf[24..26].copy_from_slice(&ck.to_be_bytes());
            buf[38..40].copy_from_slice(&(len - 34).to_be_bytes());
        }
        probe.write(&mut buf[PROBE_OFFSET..PROBE_OFFSET + PROBE_LEN]);
        buf[PROBE_OFFSET + PROBE_LEN..].fill(0);
    }
}

/// Overwrites the time stamp of a frame [`Template::write`] built (a
/// frame that waited for room in the TX ring goes out with a fresh one).
#[inline]
pub fn restamp(frame: &mut [u8], tsc: u64) {
    let at = PROBE_OFFSET + 12;
    if let Some(b) = frame.get_mut(at..at + 6) {
        b.copy_from_slice(&(tsc & MASK48).to_be_bytes()[2..]);
    }
}

/// What each frame carries for the receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    /// Flow id.
    pub flow: u32,
    /// Per-flow sequence number (48 bits).
    pub seq: u64,
    /// Sender's TSC, low 48 bits.
    pub tsc: u64,
}

impl Probe {
    /// Writes the probe into `b`, which holds at least [`PROBE_LEN`]
    /// bytes (the TCP mode puts it in its data segment).
    pub fn write(&self, b: &mut [u8]) {
        b[0..2].copy_from_slice(&MAGIC.to_be_bytes());
        b[2..6].copy_from_slice(&self.flow.to_be_bytes());
        b[6..12].copy_from_slice(&(self.seq & MASK48).to_be_bytes()[2..]);
        b[12..18].copy_from_slice(&(self.tsc & MASK48).to_be_bytes()[2..]);
    }

    /// Reads the probe of a received frame: `None` unless it is an
    /// untagged IPv4/UDP frame whose payload starts with the magic.
    /// Nothing in `frame` can make it panic.
    #[inline]
    pub fn parse(frame: &[u8]) -> Option<Probe> {
        let eth = EthernetFrame::new_checked(frame).ok()?;
        if eth.ethertype() != EtherType::Ipv4 {
            return None;
        }
        let ip = Ipv4Packet::new_checked(&frame[14..]).ok()?;
        if ip.protocol() != IpProtocol::Udp || ip.is_fragment() {
            return None;
        }
        let udp = UdpPacket::new_checked(ip.payload()).ok()?;
        Probe::from_bytes(udp.payload())
    }

    /// Reads a probe from the start of `p`: `None` unless it holds
    /// [`PROBE_LEN`] bytes starting with the magic.
    #[inline]
    pub fn from_bytes(p: &[u8]) -> Option<Probe> {
        if p.len() < PROBE_LEN || p[0..2] != MAGIC.to_be_bytes() {
            return None;
        }
        let u48 = |b: &[u8]| {
            let mut x = [0u8; 8];
            x[2..].copy_from_slice(b);
            u64::from_be_bytes(x)
        };
        Some(Probe {
            flow: u32::from_be_bytes([p[2], p[3], p[4], p[5]]),
            seq: u48(&p[6..12]),
            tsc: u48(&p[12..18]),
        })
    }
}

/// Paces a sender at `rate` frames per second of TSC time. It lets
/// frames go in batches of up to 10 us worth (at most a burst): at
/// millions of frames per second, bursts of one or two would cost more
/// per frame than the rate allows.
#[derive(Clone, Copy, Debug)]
pub struct Pacer {
    rate: u64,
    hz: u64,
    start: u64,
    /// Most frames a late sender may catch up at once.
    max_burst: u64,
    /// Fewest frames let go at once (10 us worth, 1 to max_burst).
    min_batch: u64,
}

/// The pacer's batching window, microseconds.
pub const PACING_WINDOW_US: u64 = 10;

impl Pacer {
    /// A pacer that starts at `start_tsc`; `rate` 0 means no limit.
    pub fn new(rate: u64, hz: u64, start_tsc: u64, max_burst: usize) -> Pacer {
        let max_burst = (max_burst as u64).max(1);
        Pacer {
            rate,
            hz: hz.max(1),
            start: start_tsc,
            max_burst,
            min_batch: (rate * PACING_WINDOW_US / 1_000_000).clamp(1, max_burst),
        }
    }

    /// How many frames may go now, given that `generated` have been made
    /// since the start: 0, or `min_batch` up to `max_burst`.
    #[inline]
    pub fn allowance(&self, now_tsc: u64, generated: u64) -> usize {
        if self.rate == 0 {
            return self.max_burst as usize;
        }
        let ticks = now_tsc.saturating_sub(self.start);
        let due = (u128::from(ticks) * u128::from(self.rate) / u128::from(self.hz)) as u64;
        let n = due.saturating_sub(generated);
        if n < self.min_batch {
            0
        } else {
            n.min(self.max_burst) as usize
        }
    }
}

/// What one received probe was, to its flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// The next one, or one after a gap.
    InOrder,
    /// Below the highest seen and not seen before (it was late).
    Reordered,
    /// Seen before.
    Duplicate,
    /// Sent during the warm-up: not counted.
    Warmup,
}

/// The receiver's view of one flow's sequence numbers.
#[derive(Clone, Copy, Debug, Default)]
pub struct FlowTracker {
    /// Sequence numbers below this were sent during the warm-up.
    floor: u64,
    /// One past the highest sequence number seen.
    next: u64,
    /// Bit k: `next - 1 - k` was seen.
    seen: u128,
}

impl FlowTracker {
    /// Starts counting at sequence number `floor` (the first the sender
    /// sends in the measured period).
    pub fn start_at(floor: u64) -> FlowTracker {
        FlowTracker {
            floor,
            next: floor,
            seen: 0,
        }
    }

    /// Files sequence number `seq`. Too old to tell apart (more than
    /// [`REORDER_WINDOW`] below the highest seen) counts as reordered.
    #[inline]
    pub fn record(&mut self, seq: u64) -> Arrival {
        if seq < self.floor {
            return Arrival::Warmup;
        }
        if seq >= self.next {
            let shift = seq - self.next + 1;
            self.seen = if shift >= 128 { 0 } else { self.seen << shift };
            self.seen |= 1;
            self.next = seq + 1;
            return Arrival::InOrder;
        }
        let k = self.next - 1 - seq;
        if k >= REORDER_WINDOW {
            return Arrival::Reordered;
        }
        let bit = 1u128 << k;
        if self.seen & bit != 0 {
            Arrival::Duplicate
        } else {
            self.seen |= bit;
            Arrival::Reordered
        }
    }
}

/// The receiver's counts over every flow, and the latency histogram.
#[derive(Debug)]
pub struct RxAccount {
    trackers: Vec<FlowTracker>,
    /// Distinct probes of the measured period received.
    pub received: u64,
    /// Probes that arrived below their flow's highest sequence number.
    pub reordered: u64,
    /// Probes received more than once.
    pub duplicates: u64,
    /// Probes sent during the warm-up (not counted elsewhere).
    pub warmup: u64,
    /// Frames that are not probes, or probes of unknown flows.
    pub foreign: u64,
    /// One-way latency in ns of the received probes (not duplicates).
    pub latency_ns: Histogram<u64>,
    /// Numerator and denominator of ticks -> ns.
    hz: u64,
    /// Flow ids from this one on are the second direction (B -> A).
    split: u32,
    /// TSC of the last probe counted, per direction.
    last_rx: [Option<u64>; 2],
    /// Largest silence between two counted probes, per direction, ticks.
    max_gap: [u64; 2],
    /// Received probes per interval, when asked for ([`RxAccount::start_timeline`]).
    timeline: Option<Timeline>,
}

/// Received frames per interval of the measured period: throughput over
/// time, e.g. across a failover.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Timeline {
    /// The interval, milliseconds.
    pub bin_ms: u32,
    /// When the first interval began, milliseconds since the Unix epoch
    /// (to place events measured elsewhere, such as a kill).
    pub start_unix_ms: u64,
    /// Frames received in each interval (both directions), from the
    /// first; intervals after the last frame are not listed.
    pub rx: Vec<u32>,
    #[serde(skip)]
    start_tsc: u64,
    #[serde(skip)]
    bin_ticks: u64,
    #[serde(skip)]
    max_bins: usize,
}

impl Timeline {
    /// Most intervals a timeline holds; frames after the last are not
    /// counted in it.
    pub const MAX_BINS: usize = 100_000;

    #[inline]
    fn record(&mut self, now_tsc: u64) {
        let i = (now_tsc.saturating_sub(self.start_tsc) / self.bin_ticks) as usize;
        if i >= self.max_bins {
            return;
        }
        if i >= self.rx.len() {
            self.rx.resize(i + 1, 0);
        }
        self.rx[i] = self.rx[i].saturating_add(1);
    }
}

/// Highest latency the histogram tells apart (60 s); above it saturates.
const MAX_LATENCY_NS: u64 = 60_000_000_000;

impl RxAccount {
    /// An account of `flows` flows (ids `0..flows`), all counting from
    /// sequence number 0, for a TSC of `hz`.
    pub fn new(flows: usize, hz: u64) -> RxAccount {
        RxAccount {
            trackers: vec![FlowTracker::start_at(0); flows],
            received: 0,
            reordered: 0,
            duplicates: 0,
            warmup: 0,
            foreign: 0,
            latency_ns: Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3)
                .expect("valid histogram bounds"),
            hz: hz.max(1),
            split: u32::MAX,
            last_rx: [None; 2],
            max_gap: [0; 2],
            timeline: None,
        }
    }

    /// Counts the received probes per `bin_ms` milliseconds from TSC
    /// `now_tsc` (which is `start_unix_ms` on the wall clock), for at most
    /// [`Timeline::MAX_BINS`] intervals ([`Report::rx_timeline`]).
    pub fn start_timeline(&mut self, bin_ms: u32, now_tsc: u64, start_unix_ms: u64) {
        let bin_ticks = (self.hz * u64::from(bin_ms.max(1)) / 1000).max(1);
        self.timeline = Some(Timeline {
            bin_ms: bin_ms.max(1),
            start_unix_ms,
            rx: Vec::new(),
            start_tsc: now_tsc,
            bin_ticks,
            max_bins: Timeline::MAX_BINS,
        });
    }

    /// The timeline of [`Self::start_timeline`], if one was started.
    pub fn timeline(&self) -> Option<&Timeline> {
        self.timeline.as_ref()
    }

    /// Flows `split..` are the second direction: their silences are
    /// measured apart ([`RxAccount::max_gap_us`]).
    pub fn with_split(mut self, split: u32) -> RxAccount {
        self.split = split;
        self
    }

    /// The largest silence between two received probes of the measured
    /// period, per direction (A -> B, then B -> A when there is one), in
    /// microseconds: how long a failover in the middle stopped the
    /// traffic.
    pub fn max_gap_us(&self) -> Vec<u64> {
        let n = if self.split == u32::MAX { 1 } else { 2 };
        self.max_gap[..n]
            .iter()
            .map(|&t| (u128::from(t) * 1_000_000 / u128::from(self.hz)) as u64)
            .collect()
    }

    /// Starts the measured period: clears the counts; flow `i` counts from
    /// sequence number `first_seq[i]` on (what the sender sends next).
    pub fn start_measuring(&mut self, first_seq: &[u64]) {
        for (t, &s) in self.trackers.iter_mut().zip(first_seq) {
            *t = FlowTracker::start_at(s);
        }
        self.received = 0;
        self.reordered = 0;
        self.duplicates = 0;
        self.warmup = 0;
        self.foreign = 0;
        self.latency_ns.reset();
        self.last_rx = [None; 2];
        self.max_gap = [0; 2];
    }

    /// Files one received frame at TSC `now`.
    #[inline]
    pub fn frame(&mut self, frame: &[u8], now_tsc: u64) {
        match Probe::parse(frame) {
            Some(p) => self.probe(&p, now_tsc),
            None => self.foreign += 1,
        }
    }

    /// Files one received probe at TSC `now`.
    #[inline]
    pub fn probe(&mut self, p: &Probe, now_tsc: u64) {
        let Some(t) = self.trackers.get_mut(p.flow as usize) else {
            self.foreign += 1;
            return;
        };
        match t.record(p.seq) {
            Arrival::Warmup => {
                self.warmup += 1;
                return;
            }
            Arrival::Duplicate => {
                self.duplicates += 1;
                return;
            }
            Arrival::Reordered => self.reordered += 1,
            Arrival::InOrder => {}
        }
        self.received += 1;
        let dir = usize::from(p.flow >= self.split);
        if let Some(last) = self.last_rx[dir] {
            self.max_gap[dir] = self.max_gap[dir].max(now_tsc.saturating_sub(last));
        }
        self.last_rx[dir] = Some(now_tsc);
        if let Some(t) = &mut self.timeline {
            t.record(now_tsc);
        }
        let ticks = now_tsc.wrapping_sub(p.tsc) & MASK48;
        let ns = (u128::from(ticks) * 1_000_000_000 / u128::from(self.hz)) as u64;
        self.latency_ns.saturating_record(ns.max(1));
    }
}

/// The latency percentiles of the report, in ns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest.
    pub max: u64,
}

impl Latency {
    /// Reads the percentiles of a histogram (all 0 when it is empty).
    pub fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            p50: h.value_at_quantile(0.5),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// A port of the generator as given on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortSpec {
    /// A DPDK virtual device: its name (before the first comma) and the
    /// whole spec for EAL's --vdev.
    Vdev {
        /// The device name, e.g. net_memif0.
        name: String,
        /// The spec, e.g. net_memif0,role=client,socket=/tmp/x/a.sock.
        spec: String,
    },
    /// A PCI device bound to a DPDK driver (vfio-pci): its address as
    /// DPDK names the port (domain included, lowercase).
    Pci(String),
}

impl PortSpec {
    /// Parses `--port-a`/`--port-b` (`option`): a PCI address
    /// (0000:03:00.0 or 03:00.0) or a vdev spec starting with net_.
    pub fn parse(option: &str, spec: &str) -> Result<PortSpec, String> {
        if let Some(pci) = pci_address(spec) {
            return Ok(PortSpec::Pci(pci));
        }
        let name = spec.split(',').next().unwrap_or_default();
        let ok_name = name.starts_with("net_")
            && name.len() > 4
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !ok_name || spec.chars().any(char::is_whitespace) {
            return Err(format!(
                "{option} {spec:?} is neither a PCI address nor a DPDK vdev spec: give a NIC's PCI address bound to vfio-pci (0000:03:00.0), or a device name starting with net_ and its arguments (net_memif0,role=client,socket=/tmp/x/a.sock or net_af_packet0,iface=veth0)"
            ));
        }
        Ok(PortSpec::Vdev {
            name: name.to_owned(),
            spec: spec.to_owned(),
        })
    }

    /// The name DPDK gives the port.
    pub fn name(&self) -> &str {
        match self {
            PortSpec::Vdev { name, .. } => name,
            PortSpec::Pci(a) => a,
        }
    }

    /// The EAL arguments that make the device a port.
    pub fn eal_args(&self) -> [String; 2] {
        match self {
            PortSpec::Vdev { spec, .. } => ["--vdev".into(), spec.clone()],
            PortSpec::Pci(a) => ["-a".into(), a.clone()],
        }
    }
}

/// `s` as a full PCI address (domain:bus:device.function, lowercase),
/// if it is one (with or without the domain).
fn pci_address(s: &str) -> Option<String> {
    let hex = |p: &str, n: usize| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit());
    let (head, func) = s.rsplit_once('.')?;
    if func.len() != 1 || !matches!(func.as_bytes()[0], b'0'..=b'7') {
        return None;
    }
    let parts: Vec<&str> = head.split(':').collect();
    let (domain, bus, dev) = match parts[..] {
        [d, b, v] => (d, b, v),
        [b, v] => ("0000", b, v),
        _ => return None,
    };
    (hex(domain, 4) && hex(bus, 2) && hex(dev, 2))
        .then(|| format!("{domain}:{bus}:{dev}.{func}").to_ascii_lowercase())
}

/// Ethernet's per-frame overhead on the wire besides the frame itself:
/// preamble, start delimiter and inter-frame gap.
pub const WIRE_OVERHEAD: f64 = 20.0;

/// Frames per second that fill `percent` % of a link of `speed_mbps`
/// with frames of `mean_frame` bytes (FCS included) on average; `None`
/// when the link speed is unknown (0) or `percent` is not in (0, 100].
pub fn line_rate_pps(speed_mbps: u32, mean_frame: f64, percent: f64) -> Option<u64> {
    if speed_mbps == 0 || !(percent > 0.0 && percent <= 100.0) || mean_frame <= 0.0 {
        return None;
    }
    let bits = (mean_frame + WIRE_OVERHEAD) * 8.0;
    Some(
        (f64::from(speed_mbps) * 1e6 * percent / 100.0 / bits)
            .round()
            .max(1.0) as u64,
    )
}

/// The final JSON line. Keys are stable: scripts read them.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Frames the ports accepted during the measured period.
    pub sent: u64,
    /// Distinct frames of the measured period received.
    pub received: u64,
    /// sent - received: frames that never arrived (including any the
    /// device under test still held after the drain).
    pub lost: u64,
    /// Frames that arrived after a later one of their flow.
    pub reordered: u64,
    /// Frames received more than once (extra copies).
    pub duplicates: u64,
    /// Sending rate, millions of frames per second.
    pub tx_mpps: f64,
    /// Receiving rate, millions of frames per second.
    pub rx_mpps: f64,
    /// One-way latency of the received frames.
    pub latency_ns: Latency,
    /// The latency histogram: `[upper bound ns, frames]` per bucket of
    /// twice the width of the one before, from 256 ns (the first bucket
    /// holds everything below), empty buckets at the ends left out.
    pub latency_hist_ns: Vec<[u64; 2]>,
    /// The measured period, seconds (the warm-up excluded).
    pub duration_s: f64,
    /// Flows per direction.
    pub flows: u32,
    /// Frame size with FCS (the mean for IMIX).
    pub size: f64,
    /// IMIX or one size.
    pub imix: bool,
    /// Both directions (A->B and B->A).
    pub bidir: bool,
    /// The rate asked for, frames per second per direction (0: unlimited).
    pub rate_pps: u64,
    /// Received frames that were not ours (no probe, unknown flow).
    pub foreign: u64,
    /// Largest silence between two received frames of the measured
    /// period, microseconds, per direction (A -> B, then B -> A).
    pub max_gap_us: Vec<u64>,
    /// Times a followed gateway (`--gw-a`/`--gw-b`) announced a new MAC
    /// (a failover of the device under test), after the first.
    pub gateway_moves: u64,
    /// Frames received per interval of the measured period (`--timeline-ms`;
    /// absent without it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rx_timeline: Option<Timeline>,
}

impl Report {
    /// Fills the derived fields from the counts.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        sent: u64,
        rx: &RxAccount,
        duration_s: f64,
        flows: u32,
        sizes: Sizes,
        bidir: bool,
        rate_pps: u64,
    ) -> Report {
        let mpps = |n: u64| {
            if duration_s > 0.0 {
                n as f64 / duration_s / 1e6
            } else {
                0.0
            }
        };
        Report {
            sent,
            received: rx.received,
            lost: sent.saturating_sub(rx.received),
            reordered: rx.reordered,
            duplicates: rx.duplicates,
            tx_mpps: round3(mpps(sent)),
            rx_mpps: round3(mpps(rx.received)),
            latency_ns: Latency::of(&rx.latency_ns),
            latency_hist_ns: log2_buckets(&rx.latency_ns),
            duration_s: round3(duration_s),
            flows,
            size: round3(sizes.mean()),
            imix: sizes == Sizes::Imix,
            bidir,
            rate_pps,
            foreign: rx.foreign,
            max_gap_us: rx.max_gap_us(),
            gateway_moves: 0,
            rx_timeline: rx.timeline().cloned(),
        }
    }
}

/// The histogram's counts in buckets doubling from 256 ns (see
/// [`Report::latency_hist_ns`]).
pub fn log2_buckets(h: &Histogram<u64>) -> Vec<[u64; 2]> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut out: Vec<[u64; 2]> = h
        .iter_log(256, 2.0)
        .map(|v| [v.value_iterated_to() + 1, v.count_since_last_iteration()])
        .collect();
    while out.last().is_some_and(|b| b[1] == 0) {
        out.pop();
    }
    let first = out.iter().position(|b| b[1] > 0).unwrap_or(0);
    out.drain(..first);
    out
}

/// One per-second line.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Tick {
    /// Seconds since the start (warm-up included).
    pub t: u64,
    /// Frames sent per second over the last interval.
    pub tx_pps: u64,
    /// Frames received per second over the last interval.
    pub rx_pps: u64,
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

impl AddrRange {
    /// Whether `ip` is one of the range's addresses.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.first <= ip && ip <= self.last
    }
}

/// The sender of an ARP frame (request, reply or gratuitous) for IPv4
/// over Ethernet: its address and MAC. Anything else: `None`.
pub fn arp_sender(frame: &[u8]) -> Option<(Ipv4Addr, EthernetAddress)> {
    if frame.len() < 42
        || frame[12..14] != [0x08, 0x06]
        || frame[14..20] != [0x00, 0x01, 0x08, 0x00, 0x06, 0x04]
        || !matches!(frame[20..22], [0, 1] | [0, 2])
    {
        return None;
    }
    let mac: [u8; 6] = frame[22..28].try_into().ok()?;
    Some((
        Ipv4Addr::new(frame[28], frame[29], frame[30], frame[31]),
        EthernetAddress(mac),
    ))
}

/// A broadcast ARP request from `mac` / `ip` for `target` (60 bytes, the
/// shortest Ethernet frame without its FCS).
pub fn arp_request(mac: EthernetAddress, ip: Ipv4Addr, target: Ipv4Addr) -> [u8; 60] {
    let mut f = [0u8; 60];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac.0);
    f[12..14].copy_from_slice(&[0x08, 0x06]);
    f[14..22].copy_from_slice(&[0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01]);
    f[22..28].copy_from_slice(&mac.0);
    f[28..32].copy_from_slice(&ip.octets());
    f[38..42].copy_from_slice(&target.octets());
    f
}

/// Turns an ARP request for an address `owns` accepts into the reply from
/// `mac`, in place (the generator stands for the hosts behind its ports,
/// so that a router between them can resolve them). Anything else is left
/// alone: `false`.
pub fn arp_reply(frame: &mut [u8], mac: EthernetAddress, owns: impl Fn(Ipv4Addr) -> bool) -> bool {
    // Ethernet (14) + ARP for IPv4 over Ethernet (28).
    if frame.len() < 42
        || frame[12..14] != [0x08, 0x06]
        || frame[14..22] != [0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01]
    {
        return false;
    }
    let target = Ipv4Addr::new(frame[38], frame[39], frame[40], frame[41]);
    if !owns(target) {
        return false;
    }
    let (sender_mac, sender_ip): ([u8; 6], [u8; 4]) = (
        frame[22..28].try_into().unwrap_or_default(),
        frame[28..32].try_into().unwrap_or_default(),
    );
    frame[0..6].copy_from_slice(&sender_mac);
    frame[6..12].copy_from_slice(&mac.0);
    frame[21] = 2; // reply
    frame[22..28].copy_from_slice(&mac.0);
    frame[28..32].copy_from_slice(&target.octets());
    frame[32..38].copy_from_slice(&sender_mac);
    frame[38..42].copy_from_slice(&sender_ip);
    true
}

#[cfg(test)]
mod tests {
    #[test]
    fn arp_senders_are_read_from_requests_replies_and_gratuitous_arps() {
        let mac = EthernetAddress([2, 0, 0, 0, 0, 0x42]);
        let gw = Ipv4Addr::new(198, 18, 1, 1);
        let req = arp_request(mac, Ipv4Addr::new(198, 18, 1, 100), gw);
        assert_eq!(
            arp_sender(&req),
            Some((Ipv4Addr::new(198, 18, 1, 100), mac))
        );
        // The gateway's answer, built by the responder of our own hosts.
        let mut reply = req;
        let gw_mac = EthernetAddress([2, 0, 0, 0, 0, 0x01]);
        assert!(arp_reply(&mut reply, gw_mac, |ip| ip == gw));
        assert_eq!(arp_sender(&reply), Some((gw, gw_mac)));
        // Not ARP, cut short, or another operation: nothing.
        let mut other = req;
        other[21] = 3;
        assert_eq!(arp_sender(&other), None);
        assert_eq!(arp_sender(&req[..41]), None);
        let mut ip = req;
        ip[12..14].copy_from_slice(&[0x08, 0x00]);
        assert_eq!(arp_sender(&ip), None);
    }

    #[test]
    fn the_latency_histogram_doubles_its_buckets_and_counts_every_frame() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        assert!(log2_buckets(&h).is_empty());
        for ns in [100, 300, 300, 1_000, 5_000, 5_000, 5_000] {
            h.record(ns).unwrap();
        }
        let b = log2_buckets(&h);
        assert_eq!(b.iter().map(|x| x[1]).sum::<u64>(), 7, "{b:?}");
        assert_eq!(b[0], [256, 1], "everything below 256 ns first: {b:?}");
        for w in b.windows(2) {
            assert_eq!(w[1][0], w[0][0] * 2, "doubling: {b:?}");
        }
        assert_eq!(b.last().unwrap()[1], 3, "5 us in the last bucket: {b:?}");
        assert!(b.last().unwrap()[0] >= 5_000 && b.last().unwrap()[0] < 10_000);
    }

    #[test]
    fn the_largest_silence_is_measured_per_direction() {
        let hz = 1_000_000_000;
        let mut acc = RxAccount::new(4, hz).with_split(2);
        acc.start_measuring(&[0; 4]);
        let p = |flow, seq| Probe { flow, seq, tsc: 0 };
        // A -> B (flows 0, 1) every 1 ms with one 40 ms hole; B -> A
        // (flows 2, 3) every 1 ms.
        let mut t = 0;
        for i in 0..100u64 {
            t += if i == 50 { 40_000_000 } else { 1_000_000 };
            acc.probe(&p((i % 2) as u32, i / 2), t);
            acc.probe(&p(2 + (i % 2) as u32, i / 2), t);
        }
        assert_eq!(acc.max_gap_us(), vec![40_000, 40_000]);
        let mut acc = RxAccount::new(4, hz).with_split(2);
        acc.start_measuring(&[0; 4]);
        let mut t = 0;
        for i in 0..100u64 {
            t += 1_000_000;
            acc.probe(
                &p((i % 2) as u32, i / 2),
                t + if i >= 50 { 25_000_000 } else { 0 },
            );
            acc.probe(&p(2 + (i % 2) as u32, i / 2), t);
        }
        assert_eq!(acc.max_gap_us(), vec![26_000, 1_000]);
        // Duplicates and warm-up frames are no arrivals.
        assert_eq!(RxAccount::new(1, hz).max_gap_us(), vec![0]);
    }

    #[test]
    fn arp_requests_for_our_hosts_are_answered_in_place() {
        let mac = EthernetAddress([2, 0, 0, 0, 0, 0x42]);
        let hosts = AddrRange::parse_bench("--dst-net", "198.18.2.10-198.18.2.20").unwrap();
        let mut req = vec![0xffu8; 6];
        req.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x06]);
        req.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        req.extend_from_slice(&[2, 0, 0, 0, 0, 1, 198, 18, 2, 1]);
        req.extend_from_slice(&[0, 0, 0, 0, 0, 0, 198, 18, 2, 15]);
        req.resize(60, 0);
        let mut f = req.clone();
        assert!(arp_reply(&mut f, mac, |ip| hosts.contains(ip)));
        assert_eq!(&f[0..6], &[2, 0, 0, 0, 0, 1]);
        assert_eq!(&f[6..12], &mac.0);
        assert_eq!(f[21], 2);
        assert_eq!(&f[22..32], &[2, 0, 0, 0, 0, 0x42, 198, 18, 2, 15]);
        assert_eq!(&f[32..42], &[2, 0, 0, 0, 0, 1, 198, 18, 2, 1]);
        // Not ours, or not a request: untouched.
        let mut other = req.clone();
        other[41] = 99;
        let before = other.clone();
        assert!(!arp_reply(&mut other, mac, |ip| hosts.contains(ip)));
        assert_eq!(other, before);
        let mut reply = req.clone();
        reply[21] = 2;
        assert!(!arp_reply(&mut reply, mac, |ip| hosts.contains(ip)));
    }

    use super::*;

    const HZ: u64 = 2_000_000_000;
    const SMAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 1]);
    const DMAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 2]);

    fn range(s: &str) -> AddrRange {
        AddrRange::parse_bench("--src-net", s).unwrap()
    }

    #[test]
    fn ranges_inside_the_bench_net_parse() {
        assert_eq!(
            range("198.18.1.0/24"),
            AddrRange {
                first: Ipv4Addr::new(198, 18, 1, 1),
                last: Ipv4Addr::new(198, 18, 1, 254)
            }
        );
        assert_eq!(range("198.18.1.0/24").len(), 254);
        assert_eq!(range("198.18.2.10").len(), 1);
        assert_eq!(range("198.18.1.10-198.18.1.250").len(), 241);
        assert_eq!(range("198.18.0.0/15").len(), (1 << 17) - 2);
        assert_eq!(range("198.19.255.255/32").len(), 1);
        assert_eq!(range("198.18.0.4/31").len(), 2);
    }

    #[test]
    fn ranges_outside_the_bench_net_are_refused() {
        for bad in [
            "203.0.113.0/24",
            "198.16.0.0/14",
            "198.18.0.0/14",
            "198.17.255.255",
            "198.20.0.1",
            "198.19.255.250-198.20.0.5",
            "0.0.0.0/0",
            "192.0.2.1",
        ] {
            let e = AddrRange::parse_bench("--dst-net", bad).unwrap_err();
            assert!(matches!(e, GenError::OutsideBenchNet { .. }), "{bad}: {e}");
            assert!(e.to_string().contains("198.18.0.0/15"), "{e}");
            assert!(e.to_string().contains("--dst-net"), "{e}");
        }
        for garbage in [
            "",
            "198.18.1",
            "198.18.1.0/33",
            "198.18.1.9-198.18.1.1",
            "x/24",
        ] {
            let e = AddrRange::parse_bench("--src-net", garbage).unwrap_err();
            assert!(matches!(e, GenError::BadRange { .. }), "{garbage}: {e}");
        }
    }

    #[test]
    fn memif_clients_name_their_socket() {
        let s = memif_client_socket("net_memif0,role=client,socket=/tmp/x/a.sock").unwrap();
        assert_eq!(s.proc_name(), "@/tmp/x/a.sock");
        let s = memif_client_socket("net_memif3,role=client,socket-abstract=no").unwrap();
        assert_eq!(s.proc_name(), "/run/memif.sock");
        assert_eq!(
            memif_client_socket("net_memif0,role=server,socket=/tmp/a"),
            None
        );
        assert_eq!(memif_client_socket("net_memif0,socket=/tmp/a"), None);
        assert_eq!(memif_client_socket("net_af_packet0,iface=veth0"), None);
    }

    #[test]
    fn a_listening_memif_server_shows_in_proc_net_unix() {
        let proc = "Num       RefCount Protocol Flags    Type St Inode Path\n\
            00000000b0dfa26a: 00000002 00000000 00010000 0005 01 1728539 @/tmp/g/a.sock\n\
            00000000b0dfa26b: 00000003 00000000 00000000 0005 03 1728540 @/tmp/g/b.sock\n\
            00000000b0dfa26c: 00000002 00000000 00010000 0001 01 1728541 /run/x.sock\n";
        let sock = |spec: &str| memif_client_socket(spec).unwrap();
        assert!(sock("net_memif0,role=client,socket=/tmp/g/a.sock").listening_in(proc));
        // Connected, not listening.
        assert!(!sock("net_memif0,role=client,socket=/tmp/g/b.sock").listening_in(proc));
        // A file socket is not the abstract one of the same path.
        assert!(!sock("net_memif0,role=client,socket=/run/x.sock").listening_in(proc));
        assert!(
            sock("net_memif0,role=client,socket=/run/x.sock,socket-abstract=no").listening_in(proc)
        );
        assert!(!sock("net_memif0,role=client,socket=/tmp/g/c.sock").listening_in(proc));
    }

    #[test]
    fn sizes_outside_64_to_1518_are_refused() {
        assert_eq!(Sizes::fixed(64).unwrap(), Sizes::Fixed(64));
        assert_eq!(Sizes::fixed(1518).unwrap(), Sizes::Fixed(1518));
        for bad in [0, 63, 1519, 9000, 70_000] {
            assert_eq!(Sizes::fixed(bad).unwrap_err(), GenError::BadSize(bad));
        }
    }

    #[test]
    fn imix_is_7_4_1_of_64_594_1518() {
        let cycle: Vec<u16> = (0..12).map(|i| Sizes::Imix.nth(i)).collect();
        assert_eq!(cycle.iter().filter(|&&s| s == 64).count(), 7);
        assert_eq!(cycle.iter().filter(|&&s| s == 594).count(), 4);
        assert_eq!(cycle.iter().filter(|&&s| s == 1518).count(), 1);
        assert_eq!(Sizes::Imix.nth(12), Sizes::Imix.nth(0));
        assert!((Sizes::Imix.mean() - 4342.0 / 12.0).abs() < 1e-9);
    }

    #[test]
    fn seconds_are_bounded() {
        assert!(check_seconds("--duration", 10.0, false).is_ok());
        assert!(check_seconds("--duration", 3600.0, false).is_ok());
        assert!(check_seconds("--duration", 3600.5, false).is_err());
        assert!(check_seconds("--duration", 0.0, false).is_err());
        assert!(check_seconds("--duration", f64::NAN, false).is_err());
        assert!(check_seconds("--warmup", 0.0, true).is_ok());
        let e = check_seconds("--warmup", -1.0, true).unwrap_err();
        assert_eq!(e.to_string(), "--warmup -1: give 0 up to 3600 seconds");
    }

    #[test]
    fn flows_differ_and_fit_their_ranges() {
        let plan = FlowPlan::new(
            range("198.18.1.10-198.18.1.12"),
            range("198.18.2.10"),
            9,
            10,
        )
        .unwrap();
        let tuples: Vec<FlowTuple> = (0..10).map(|i| plan.tuple(i)).collect();
        for (i, a) in tuples.iter().enumerate() {
            assert!(in_bench_net(a.src) && in_bench_net(a.dst));
            for b in &tuples[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(tuples[0].sport, 1024);
        assert_eq!(tuples[3].sport, 1025);
        assert_eq!(tuples[3].src, Ipv4Addr::new(198, 18, 1, 10));
        assert!(matches!(
            FlowPlan::new(range("198.18.2.10"), range("198.18.2.10"), 9, 64513),
            Err(GenError::FlowsDoNotFit { .. })
        ));
        assert!(FlowPlan::new(range("198.18.2.10"), range("198.18.2.10"), 9, 64512).is_ok());
        assert_eq!(
            FlowPlan::new(range("198.18.0.0/15"), range("198.18.2.10"), 9, 0).unwrap_err(),
            GenError::BadFlows(0)
        );
    }

    fn frame(t: &Template, size: u16, probe: &Probe) -> Vec<u8> {
        let mut buf = vec![0xaa; usize::from(size) - FCS_LEN];
        t.write(&mut buf, probe);
        buf
    }

    #[test]
    fn built_frames_parse_back_with_valid_headers() {
        let tuple = FlowTuple {
            src: Ipv4Addr::new(198, 18, 1, 10),
            dst: Ipv4Addr::new(198, 18, 2, 10),
            sport: 1024,
            dport: 9,
        };
        let t = Template::new(SMAC, DMAC, &tuple, 64);
        let probe = Probe {
            flow: 77,
            seq: (1 << 47) + 5,
            tsc: 0x1234_5678_9abc,
        };
        for size in [64u16, 65, 594, 1518] {
            let f = frame(&t, size, &probe);
            assert_eq!(f.len(), usize::from(size) - 4);
            assert_eq!(Probe::parse(&f), Some(probe), "size {size}");
            let eth = EthernetFrame::new_checked(&f[..]).unwrap();
            assert_eq!(eth.dst_addr(), DMAC);
            assert_eq!(eth.src_addr(), SMAC);
            let ip = Ipv4Packet::new_checked(&f[14..]).unwrap();
            let repr = Ipv4Repr::parse(&ip).expect("valid IPv4 header and checksum");
            assert_eq!(repr.src_addr, tuple.src);
            assert_eq!(repr.dst_addr, tuple.dst);
            assert_eq!(usize::from(ip.total_len()), f.len() - 14, "size {size}");
            let udp = UdpPacket::new_checked(ip.payload()).unwrap();
            assert_eq!(usize::from(udp.len()), f.len() - 34);
            assert_eq!(
                (udp.src_port(), udp.dst_port(), udp.checksum()),
                (1024, 9, 0)
            );
            assert!(f[PROBE_OFFSET + PROBE_LEN..].iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn restamp_changes_only_the_time_stamp() {
        let tuple = FlowTuple {
            src: Ipv4Addr::new(198, 18, 1, 10),
            dst: Ipv4Addr::new(198, 18, 2, 10),
            sport: 2000,
            dport: 9,
        };
        let t = Template::new(SMAC, DMAC, &tuple, 64);
        let probe = Probe {
            flow: 1,
            seq: 2,
            tsc: 3,
        };
        let mut f = frame(&t, 64, &probe);
        restamp(&mut f, (5 << 48) | 99);
        assert_eq!(Probe::parse(&f), Some(Probe { tsc: 99, ..probe }));
    }

    #[test]
    fn frames_that_are_not_probes_are_ignored() {
        let tuple = FlowTuple {
            src: Ipv4Addr::new(198, 18, 1, 10),
            dst: Ipv4Addr::new(198, 18, 2, 10),
            sport: 2000,
            dport: 9,
        };
        let t = Template::new(SMAC, DMAC, &tuple, 64);
        let good = frame(
            &t,
            64,
            &Probe {
                flow: 1,
                seq: 2,
                tsc: 3,
            },
        );
        // Every truncation, a wrong magic, a wrong protocol, a wrong EtherType.
        for n in 0..good.len() {
            assert_eq!(Probe::parse(&good[..n]), None, "truncated to {n}");
        }
        let mut f = good.clone();
        f[PROBE_OFFSET] ^= 1;
        assert_eq!(Probe::parse(&f), None);
        let mut f = good.clone();
        f[23] = 6;
        assert_eq!(Probe::parse(&f), None);
        let mut f = good.clone();
        f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        assert_eq!(Probe::parse(&f), None);
        let mut acc = RxAccount::new(4, HZ);
        acc.frame(&f, 10);
        acc.frame(&good[..20], 10);
        assert_eq!((acc.foreign, acc.received), (2, 0));
    }

    #[test]
    fn pacer_spreads_frames_over_time() {
        // 100 kpps: one frame per 10 us (20000 ticks at 2 GHz).
        let p = Pacer::new(100_000, HZ, 1000, 32);
        assert_eq!(p.allowance(1000, 0), 0);
        assert_eq!(p.allowance(1000 + 19_999, 0), 0);
        assert_eq!(p.allowance(1000 + 20_000, 0), 1);
        assert_eq!(p.allowance(1000 + 200_000, 4), 6);
        // Late: at most a burst.
        assert_eq!(p.allowance(1000 + HZ, 0), 32);
        assert_eq!(p.allowance(1000 + HZ, 100_000), 0);
        let unlimited = Pacer::new(0, HZ, 0, 32);
        assert_eq!(unlimited.allowance(0, 1 << 40), 32);
    }

    #[test]
    fn pacer_batches_10_us_at_high_rates() {
        // 1 Mpps: 10 frames per 10 us; nothing goes before 10 are due.
        let p = Pacer::new(1_000_000, HZ, 0, 32);
        assert_eq!(p.allowance(2_000 * 9, 0), 0);
        assert_eq!(p.allowance(2_000 * 10, 0), 10);
        // 5 Mpps: 50 due per 10 us, so full bursts of 32.
        let p = Pacer::new(5_000_000, HZ, 0, 32);
        assert_eq!(p.allowance(400 * 31, 0), 0);
        assert_eq!(p.allowance(400 * 32, 0), 32);
        // Over a second the count is exact whatever the batching.
        let p = Pacer::new(1_234_567, HZ, 0, 32);
        let mut generated = 0u64;
        let mut now = 0;
        while now < HZ {
            generated += p.allowance(now, generated) as u64;
            now += 1_000;
        }
        assert!(
            (1_234_567 - 32..=1_234_567).contains(&generated),
            "{generated}"
        );
    }

    fn probe(flow: u32, seq: u64) -> Probe {
        Probe { flow, seq, tsc: 0 }
    }

    #[test]
    fn in_order_flows_count_no_loss_reorder_or_duplicate() {
        let mut acc = RxAccount::new(3, HZ);
        for seq in 0..1000 {
            for flow in 0..3 {
                acc.probe(&probe(flow, seq), 0);
            }
        }
        assert_eq!((acc.received, acc.reordered, acc.duplicates), (3000, 0, 0));
        let r = Report::new(3000, &acc, 1.0, 3, Sizes::Fixed(64), false, 0);
        assert_eq!(r.lost, 0);
    }

    #[test]
    fn gaps_count_as_lost() {
        let mut acc = RxAccount::new(1, HZ);
        for seq in (0..100).filter(|s| s % 10 != 3) {
            acc.probe(&probe(0, seq), 0);
        }
        let r = Report::new(100, &acc, 1.0, 1, Sizes::Fixed(64), false, 0);
        assert_eq!(
            (r.received, r.lost, r.reordered, r.duplicates),
            (90, 10, 0, 0)
        );
    }

    #[test]
    fn late_frames_count_as_reordered_not_lost() {
        let mut acc = RxAccount::new(2, HZ);
        for seq in [0, 2, 1, 3, 7, 4, 5, 6, 8] {
            acc.probe(&probe(1, seq), 0);
        }
        let r = Report::new(9, &acc, 1.0, 2, Sizes::Fixed(64), false, 0);
        assert_eq!(
            (r.received, r.lost, r.reordered, r.duplicates),
            (9, 0, 4, 0)
        );
    }

    #[test]
    fn repeated_frames_count_as_duplicates() {
        let mut acc = RxAccount::new(1, HZ);
        for seq in [0, 1, 1, 2, 0, 3, 2, 3, 3] {
            acc.probe(&probe(0, seq), 0);
        }
        let r = Report::new(4, &acc, 1.0, 1, Sizes::Fixed(64), false, 0);
        assert_eq!(
            (r.received, r.lost, r.reordered, r.duplicates),
            (4, 0, 0, 5)
        );
        // A duplicate of a late frame is still a duplicate.
        let mut acc = RxAccount::new(1, HZ);
        for seq in [0, 5, 3, 3, 100, 3] {
            acc.probe(&probe(0, seq), 0);
        }
        assert_eq!((acc.received, acc.reordered, acc.duplicates), (4, 1, 2));
    }

    #[test]
    fn very_late_frames_beyond_the_window_count_as_reordered() {
        let mut acc = RxAccount::new(1, HZ);
        acc.probe(&probe(0, 0), 0);
        acc.probe(&probe(0, 1000), 0);
        acc.probe(&probe(0, 1), 0);
        assert_eq!((acc.received, acc.reordered, acc.duplicates), (3, 1, 0));
    }

    #[test]
    fn warmup_frames_are_not_counted() {
        let mut acc = RxAccount::new(2, HZ);
        for seq in 0..10 {
            acc.probe(&probe(0, seq), 0);
        }
        // The sender's next sequence numbers: flow 0 at 10, flow 1 at 3
        // (three of flow 1 still in flight).
        acc.start_measuring(&[10, 3]);
        for seq in [0, 1, 2, 3, 4] {
            acc.probe(&probe(1, seq), 0);
        }
        for seq in 10..15 {
            acc.probe(&probe(0, seq), 0);
        }
        assert_eq!((acc.received, acc.warmup, acc.reordered), (7, 3, 0));
    }

    #[test]
    fn unknown_flows_are_foreign() {
        let mut acc = RxAccount::new(2, HZ);
        acc.probe(&probe(2, 0), 0);
        assert_eq!((acc.received, acc.foreign), (0, 1));
    }

    #[test]
    fn latency_comes_from_the_time_stamps_and_wraps_at_48_bits() {
        let mut acc = RxAccount::new(1, HZ);
        // 2000 ticks at 2 GHz = 1 us.
        acc.probe(
            &Probe {
                flow: 0,
                seq: 0,
                tsc: 1000,
            },
            3000,
        );
        // Sent just before the 48-bit wrap, received after it: 4 us.
        acc.probe(
            &Probe {
                flow: 0,
                seq: 1,
                tsc: MASK48 - 999,
            },
            (1 << 48) + 7000,
        );
        let l = Latency::of(&acc.latency_ns);
        assert!((995..=1005).contains(&l.p50), "{l:?}");
        assert!((3990..=4010).contains(&l.max), "{l:?}");
    }

    #[test]
    fn ports_are_pci_addresses_or_vdev_specs() {
        assert_eq!(
            PortSpec::parse("--port-a", "0000:03:00.1"),
            Ok(PortSpec::Pci("0000:03:00.1".into()))
        );
        let short = PortSpec::parse("--port-a", "AF:00.0").unwrap();
        assert_eq!(short.name(), "0000:af:00.0");
        assert_eq!(short.eal_args(), ["-a".to_string(), "0000:af:00.0".into()]);
        let v = PortSpec::parse("--port-b", "net_memif1,role=client,socket=/tmp/b.sock").unwrap();
        assert_eq!(v.name(), "net_memif1");
        assert_eq!(
            v.eal_args(),
            [
                "--vdev".to_string(),
                "net_memif1,role=client,socket=/tmp/b.sock".into()
            ]
        );
        for bad in [
            "03:00.8",
            "0000:3:00.0",
            "eth0",
            "net_",
            "net_x y",
            "0000:03:00",
            "00:03:00.0",
        ] {
            let e = PortSpec::parse("--port-a", bad).unwrap_err();
            assert!(
                e.contains("--port-a") && e.contains("PCI address"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn a_fraction_of_line_rate_counts_the_wire_overhead() {
        // 10GbE, 64-byte frames: the classic 14.88 Mpps.
        assert_eq!(line_rate_pps(10_000, 64.0, 100.0), Some(14_880_952));
        assert_eq!(line_rate_pps(10_000, 1518.0, 50.0), Some(406_372));
        assert_eq!(line_rate_pps(100_000, 64.0, 10.0), Some(14_880_952));
        assert_eq!(line_rate_pps(0, 64.0, 10.0), None, "unknown speed");
        assert_eq!(line_rate_pps(10_000, 64.0, 0.0), None);
        assert_eq!(line_rate_pps(10_000, 64.0, 101.0), None);
    }

    #[test]
    fn the_timeline_counts_frames_per_interval_and_shows_a_silence() {
        let mut acc = RxAccount::new(1, HZ);
        acc.start_measuring(&[0]);
        let ms = HZ / 1000;
        let t0 = 5 * HZ;
        acc.start_timeline(10, t0, 1_700_000_000_000);
        // 1 frame per ms for 30 ms, silence for 25 ms, then 1 per ms again.
        for (seq, at) in (0..30).chain(55..70).enumerate() {
            acc.probe(
                &Probe {
                    flow: 0,
                    seq: seq as u64,
                    tsc: t0 + at * ms,
                },
                t0 + at * ms,
            );
        }
        let r = Report::new(45, &acc, 1.0, 1, Sizes::fixed(64).unwrap(), false, 1000);
        let t = r.rx_timeline.expect("a timeline");
        assert_eq!((t.bin_ms, t.start_unix_ms), (10, 1_700_000_000_000));
        assert_eq!(t.rx, vec![10, 10, 10, 0, 0, 5, 10]);
        let v = serde_json::to_value(Report::new(
            0,
            &RxAccount::new(1, HZ),
            1.0,
            1,
            Sizes::Imix,
            false,
            0,
        ))
        .unwrap();
        assert!(
            v.get("rx_timeline").is_none(),
            "no timeline unless asked: {v}"
        );
    }

    #[test]
    fn report_has_the_stable_keys() {
        let acc = RxAccount::new(1, HZ);
        let r = Report::new(0, &acc, 2.0, 1, Sizes::Imix, true, 1000);
        let v = serde_json::to_value(&r).unwrap();
        for key in [
            "sent",
            "received",
            "lost",
            "reordered",
            "duplicates",
            "tx_mpps",
            "rx_mpps",
            "latency_ns",
            "duration_s",
            "flows",
            "size",
        ] {
            assert!(v.get(key).is_some(), "{key} missing from {v}");
        }
        for key in ["p50", "p99", "p999", "max"] {
            assert!(v["latency_ns"].get(key).is_some(), "{key} missing from {v}");
        }
        let tick = serde_json::to_string(&Tick {
            t: 1,
            tx_pps: 2,
            rx_pps: 3,
        })
        .unwrap();
        assert_eq!(tick, r#"{"t":1,"tx_pps":2,"rx_pps":3}"#);
    }
}
