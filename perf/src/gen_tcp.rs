//! The DPDK-free core of tandem-gen's TCP mode (`--tcp-conns`): new
//! connections per second through a stateful firewall. The generator is
//! both ends: the client behind port A opens connection `i`, the server
//! behind port B answers it, and every segment is checked against the
//! numbers connection `i` must carry. Nothing here reads a clock or
//! touches a port: time is TSC ticks passed in, frames are byte slices.
//!
//! One connection, `c` and `s` the client's and the server's initial
//! sequence numbers, `P` = 18 (the probe):
//!
//! ```text
//! A -> B  SYN          seq c                      (MSS 1460)
//! B -> A  SYN-ACK      seq s      ack c+1          (MSS 1460)
//! A -> B  ACK          seq c+1    ack s+1
//! A -> B  FIN-PSH-ACK  seq c+1    ack s+1          P bytes: the probe
//! B -> A  FIN-ACK      seq s+1    ack c+P+2        (acks data and FIN)
//! A -> B  ACK          seq c+P+2  ack s+2          (the last ACK)
//! ```
//!
//! Windows are 65535 without scaling. The firewall sees SYN_SENT,
//! SYN_RECEIVED, ESTABLISHED, FIN_WAIT, LAST_ACK and TIME_WAIT.
//!
//! Connection `i` is the 4-tuple of [`ConnPlan::tuple`]; both ISNs are a
//! hash of `i` ([`client_isn`], [`server_isn`]), and `i` is recovered
//! from the tuple of any segment ([`ConnPlan::index_of`]). So the server
//! keeps no state at all (it builds each answer from the received frame),
//! and the client keeps 8 bytes per connection in a window of the last
//! 2^20 connections ([`RING`]): its state and the TSC of its SYN, for the
//! handshake latency and the timeouts. Tuples are never reused in a run
//! (a firewall keeps closed connections in TIME_WAIT for minutes).
//!
//! Frames are padded to 60 bytes (the minimum Ethernet frame without its
//! FCS), as on a wire; the IPv4 total length says where the segment ends.

use std::net::Ipv4Addr;

use hdrhistogram::Histogram;
use serde::Serialize;
use tandem_dataplane::wire::tcp::flags as F;
use tandem_dataplane::wire::{
    EtherType, EthernetAddress, EthernetFrame, EthernetRepr, IpProtocol, Ipv4Packet, Ipv4Repr,
    TcpPacket, TcpRepr,
};

use crate::gen::{AddrRange, FlowTuple, Latency, Probe, PROBE_LEN, SRC_PORTS, SRC_PORT_BASE};

/// Smallest frame sent (without FCS): shorter ones are zero-padded.
pub const MIN_FRAME: usize = 60;
/// Largest frame sent: Ethernet, IPv4, TCP with the MSS option, probe.
pub const MAX_FRAME: usize = 14 + 20 + 24 + PROBE_LEN;
/// The window both ends advertise (unscaled).
pub const WINDOW: u16 = 65535;
/// The MSS option of the SYN and the SYN-ACK.
pub const MSS: u16 = 1460;
/// Connections the client keeps track of at once (the window of its
/// per-connection slots): opening waits when the oldest unfinished
/// connection is this many behind the next.
pub const RING: u64 = 1 << 20;
/// Largest `--max-open`.
pub const MAX_OPEN: u64 = RING;
/// Longest `--conn-timeout`, seconds.
pub const MAX_CONN_TIMEOUT: f64 = 10.0;
/// Slots [`TcpClient::poll_timeouts`] looks at per call at most.
pub const EXPIRE_PER_POLL: usize = 1024;
const MASK48: u64 = (1 << 48) - 1;

/// What is wrong with the TCP mode's settings.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TcpPlanError {
    /// The run would need more tuples than the ranges hold.
    #[error("--tcp-conns {rate} for --warmup + --duration = {seconds} s opens up to {needed} connections, but --src-net {range} gives only {addresses} addresses x 64512 source ports = {tuples} distinct tuples, and no tuple is used twice in a run (a firewall keeps closed connections in TIME_WAIT for 120 s). Lower --tcp-conns, --duration or --warmup, or widen --src-net (up to 198.18.0.0/15)")]
    TuplesExhausted {
        /// Connections per second asked for.
        rate: u64,
        /// Warm-up plus duration.
        seconds: f64,
        /// Connections the run would open.
        needed: u64,
        /// The source range.
        range: AddrRange,
        /// Addresses in it.
        addresses: u32,
        /// Tuples it gives.
        tuples: u64,
    },
    /// `--max-open` out of range.
    #[error("--max-open {0}: give 1 to 1048576 connections open at once")]
    BadMaxOpen(u64),
    /// `--conn-timeout` out of range.
    #[error("--conn-timeout {0}: give more than 0 and at most 10 seconds")]
    BadTimeout(f64),
}

/// The connections of a TCP run: connection `i` comes from source address
/// `i mod |src|`, source port `1024 + i div |src|`, to destination
/// address `i mod |dst|`, port `dport` (as [`crate::gen::FlowPlan`]), so
/// `|src| x 64512` connections have distinct tuples.
#[derive(Clone, Copy, Debug)]
pub struct ConnPlan {
    /// Client addresses (behind port A).
    pub src: AddrRange,
    /// Server addresses (behind port B).
    pub dst: AddrRange,
    /// Server port.
    pub dport: u16,
}

impl ConnPlan {
    /// Distinct connections (tuples) the plan holds.
    pub fn tuples(&self) -> u64 {
        u64::from(self.src.len()) * u64::from(SRC_PORTS)
    }

    /// Checks that a run of `seconds` at `rate` connections per second
    /// (0: as fast as possible, bounded at run time) fits the tuples.
    pub fn check_run(&self, rate: u64, seconds: f64) -> Result<(), TcpPlanError> {
        if rate == 0 {
            return Ok(());
        }
        // The pacer lets a burst go early; the run ends a little late.
        let needed = (rate as f64 * seconds * 1.01).ceil() as u64 + 256;
        if needed > self.tuples() {
            return Err(TcpPlanError::TuplesExhausted {
                rate,
                seconds,
                needed,
                range: self.src,
                addresses: self.src.len(),
                tuples: self.tuples(),
            });
        }
        Ok(())
    }

    /// Connection `i` from the client's side (`i < tuples()`).
    pub fn tuple(&self, i: u64) -> FlowTuple {
        let n = u64::from(self.src.len());
        FlowTuple {
            src: self.src.nth((i % n) as u32),
            dst: self.dst.nth((i % u64::from(self.dst.len())) as u32),
            sport: SRC_PORT_BASE + ((i / n) % u64::from(SRC_PORTS)) as u16,
            dport: self.dport,
        }
    }

    /// The connection whose client is `client:cport` and whose server is
    /// `server:sport`, if the plan has it.
    pub fn index_of(
        &self,
        client: Ipv4Addr,
        cport: u16,
        server: Ipv4Addr,
        sport: u16,
    ) -> Option<u64> {
        if sport != self.dport || cport < SRC_PORT_BASE || !self.src.contains(client) {
            return None;
        }
        let off = u64::from(u32::from(client) - u32::from(self.src.first));
        let i = u64::from(cport - SRC_PORT_BASE) * u64::from(self.src.len()) + off;
        (self.dst.nth((i % u64::from(self.dst.len())) as u32) == server).then_some(i)
    }
}

/// splitmix64's finalizer: a fixed, well-spread hash.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The client's initial sequence number of connection `i`.
pub fn client_isn(i: u64) -> u32 {
    mix(i) as u32
}

/// The server's initial sequence number of connection `i`.
pub fn server_isn(i: u64) -> u32 {
    (mix(i) >> 32) as u32
}

/// The six segments of a connection, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// A -> B: SYN.
    Syn,
    /// B -> A: SYN-ACK.
    SynAck,
    /// A -> B: the handshake's ACK.
    Ack,
    /// A -> B: the probe with FIN.
    DataFin,
    /// B -> A: acknowledges the data and the FIN, with its own FIN.
    FinAck,
    /// A -> B: acknowledges the server's FIN.
    LastAck,
}

impl Step {
    /// Every step, in order.
    pub const ALL: [Step; 6] = [
        Step::Syn,
        Step::SynAck,
        Step::Ack,
        Step::DataFin,
        Step::FinAck,
        Step::LastAck,
    ];

    /// Sent by the client (A -> B).
    pub fn from_client(self) -> bool {
        !matches!(self, Step::SynAck | Step::FinAck)
    }

    /// The flags byte.
    pub fn flags(self) -> u8 {
        match self {
            Step::Syn => F::SYN,
            Step::SynAck => F::SYN | F::ACK,
            Step::Ack | Step::LastAck => F::ACK,
            Step::DataFin => F::FIN | F::PSH | F::ACK,
            Step::FinAck => F::FIN | F::ACK,
        }
    }

    /// Payload bytes.
    pub fn payload_len(self) -> usize {
        if self == Step::DataFin {
            PROBE_LEN
        } else {
            0
        }
    }

    /// Sequence and acknowledgement numbers of connection `i`'s segment.
    pub fn numbers(self, i: u64) -> (u32, u32) {
        let (c, s) = (client_isn(i), server_isn(i));
        let p = PROBE_LEN as u32;
        match self {
            Step::Syn => (c, 0),
            Step::SynAck => (s, c.wrapping_add(1)),
            Step::Ack | Step::DataFin => (c.wrapping_add(1), s.wrapping_add(1)),
            Step::FinAck => (s.wrapping_add(1), c.wrapping_add(p + 2)),
            Step::LastAck => (c.wrapping_add(p + 2), s.wrapping_add(2)),
        }
    }

    /// Whether a received segment is this step of connection `i`.
    fn matches(self, i: u64, seg: &Segment<'_>) -> bool {
        seg.flags == self.flags()
            && seg.payload.len() == self.payload_len()
            && (seg.seq, seg.ack) == self.numbers(i)
    }
}

/// Builds `step` of connection `i` into `out` (from `src_mac` to
/// `dst_mac`; `payload` is the probe of [`Step::DataFin`], ignored
/// otherwise) and returns the frame length: 60 to [`MAX_FRAME`] bytes.
pub fn build(
    plan: &ConnPlan,
    step: Step,
    i: u64,
    src_mac: EthernetAddress,
    dst_mac: EthernetAddress,
    payload: &[u8; PROBE_LEN],
    out: &mut [u8; MAX_FRAME],
) -> usize {
    let t = plan.tuple(i);
    let t = if step.from_client() { t } else { t.reversed() };
    let (seq, ack) = step.numbers(i);
    let syn = matches!(step, Step::Syn | Step::SynAck);
    let tcp = TcpRepr {
        src_port: t.sport,
        dst_port: t.dport,
        seq_number: seq,
        ack_number: ack,
        flags: step.flags(),
        window_len: WINDOW,
        max_seg_size: syn.then_some(MSS),
        payload_len: step.payload_len(),
        ..TcpRepr::default()
    };
    let tcp_len = tcp.buffer_len();
    let len = 14 + 20 + tcp_len;
    EthernetRepr {
        src_addr: src_mac,
        dst_addr: dst_mac,
        vlan_tci: None,
        ethertype: EtherType::Ipv4,
    }
    .emit(&mut EthernetFrame::new_unchecked(&mut out[..14]))
    .expect("14 bytes hold an Ethernet header");
    Ipv4Repr {
        src_addr: t.src,
        dst_addr: t.dst,
        protocol: IpProtocol::Tcp,
        payload_len: tcp_len,
        ttl: 64,
        dscp_ecn: 0,
        dont_frag: true,
    }
    .emit(&mut Ipv4Packet::new_unchecked(&mut out[14..34]))
    .expect("20 bytes hold an IPv4 header");
    let hl = tcp.header_len();
    if step == Step::DataFin {
        out[34 + hl..len].copy_from_slice(payload);
    }
    tcp.emit(
        &mut TcpPacket::new_unchecked(&mut out[34..len]),
        t.src,
        t.dst,
    )
    .expect("the buffer is the segment's length");
    if len < MIN_FRAME {
        out[len..MIN_FRAME].fill(0);
    }
    len.max(MIN_FRAME)
}

/// A received TCP segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment<'a> {
    /// Sender's MAC (where an answer goes).
    pub src_mac: EthernetAddress,
    /// Addresses and ports as sent.
    pub tuple: FlowTuple,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgement number.
    pub ack: u32,
    /// Flags byte.
    pub flags: u8,
    /// Data after the TCP header (up to the IPv4 total length).
    pub payload: &'a [u8],
}

/// Why a received frame is not a segment to handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unusable {
    /// Not IPv4/TCP (or TCP of no connection of the plan).
    Foreign,
    /// IPv4/TCP but broken: truncated, a fragment, a checksum that does
    /// not verify, options that do not parse.
    Bad,
}

/// Reads an untagged Ethernet/IPv4/TCP frame, verifying the IPv4 and TCP
/// checksums. Nothing in `frame` can make it panic.
pub fn parse(frame: &[u8]) -> Result<Segment<'_>, Unusable> {
    let eth = EthernetFrame::new_checked(frame).map_err(|_| Unusable::Foreign)?;
    if eth.ethertype() != EtherType::Ipv4 {
        return Err(Unusable::Foreign);
    }
    let ipb = frame.get(14..).ok_or(Unusable::Foreign)?;
    let ip = Ipv4Packet::new_checked(ipb).map_err(|_| Unusable::Bad)?;
    if ip.protocol() != IpProtocol::Tcp {
        return Err(Unusable::Foreign);
    }
    let repr = Ipv4Repr::parse(&ip).map_err(|_| Unusable::Bad)?;
    if ip.is_fragment() {
        return Err(Unusable::Bad);
    }
    let hl = usize::from(ip.header_len());
    let l4 = ipb.get(hl..hl + repr.payload_len).ok_or(Unusable::Bad)?;
    let tcp = TcpPacket::new_checked(l4).map_err(|_| Unusable::Bad)?;
    let t = TcpRepr::parse(&tcp, repr.src_addr, repr.dst_addr, true).map_err(|_| Unusable::Bad)?;
    let payload = l4
        .get(usize::from(tcp.header_len())..)
        .ok_or(Unusable::Bad)?;
    Ok(Segment {
        src_mac: eth.src_addr(),
        tuple: FlowTuple {
            src: repr.src_addr,
            dst: repr.dst_addr,
            sport: t.src_port,
            dport: t.dst_port,
        },
        seq: t.seq_number,
        ack: t.ack_number,
        flags: t.flags,
        payload,
    })
}

/// Up to two frames to send in answer to one received frame.
#[derive(Clone, Debug)]
pub struct Replies {
    frames: [[u8; MAX_FRAME]; 2],
    lens: [usize; 2],
    n: usize,
}

impl Default for Replies {
    fn default() -> Self {
        Replies {
            frames: [[0; MAX_FRAME]; 2],
            lens: [0; 2],
            n: 0,
        }
    }
}

impl Replies {
    /// The frames, in the order they go.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.frames[..self.n]
            .iter()
            .zip(&self.lens)
            .map(|(f, &l)| &f[..l])
    }

    /// Number of frames.
    pub fn len(&self) -> usize {
        self.n
    }

    /// No frame to send.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    fn push(
        &mut self,
        plan: &ConnPlan,
        step: Step,
        i: u64,
        macs: (EthernetAddress, EthernetAddress),
        payload: &[u8; PROBE_LEN],
    ) {
        if self.n < 2 {
            self.lens[self.n] = build(
                plan,
                step,
                i,
                macs.0,
                macs.1,
                payload,
                &mut self.frames[self.n],
            );
            self.n += 1;
        }
    }
}

/// Connection counts of the client.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ClientCounts {
    /// SYNs sent.
    pub opened: u64,
    /// SYN-ACKs received.
    pub established: u64,
    /// FIN-ACKs received (the last ACK sent).
    pub completed: u64,
    /// Not completed within the timeout of their SYN.
    pub timeouts: u64,
    /// Of the timeouts: no SYN-ACK came.
    pub handshake_timeouts: u64,
    /// Reset by the other side (or a firewall rejecting them).
    pub resets: u64,
}

impl ClientCounts {
    /// Connections that did not complete: timeouts and resets.
    pub fn failed(&self) -> u64 {
        self.timeouts + self.resets
    }
}

/// Slot states (top byte of a slot; the low 48 bits hold the SYN's TSC).
const FREE: u64 = 0;
const SYN_SENT: u64 = 1;
const ESTABLISHED: u64 = 2;
const DONE: u64 = 3;
const FAILED: u64 = 4;

/// The client behind port A: opens connections in index order, answers
/// the server's segments, times out what does not complete.
#[derive(Debug)]
pub struct TcpClient {
    plan: ConnPlan,
    mac: EthernetAddress,
    dut_mac: EthernetAddress,
    /// Connection `i` in slot `i mod RING`, for `oldest <= i < next`.
    slots: Vec<u64>,
    next: u64,
    oldest: u64,
    open: u64,
    max_open: u64,
    peak_open: u64,
    timeout: u64,
    hz: u64,
    measure_from: u64,
    /// Counts over the whole run (warm-up included).
    pub all: ClientCounts,
    /// Counts of the connections opened in the measured period.
    pub measured: ClientCounts,
    /// SYN sent -> SYN-ACK received, ns, of the measured connections.
    pub handshake_ns: Histogram<u64>,
    /// Answers for connections already timed out or reset.
    pub late: u64,
    /// Answers received twice.
    pub duplicates: u64,
    /// Segments of our connections with wrong numbers or flags, broken
    /// frames (bad checksums).
    pub bad: u64,
    /// Frames that are not TCP of our connections.
    pub foreign: u64,
}

/// Highest latency the histogram tells apart (60 s).
const MAX_LATENCY_NS: u64 = 60_000_000_000;

impl TcpClient {
    /// A client of `plan` sending from `mac` to the device under test at
    /// `dut_mac`; at most `max_open` connections open at once (checked:
    /// 1 to [`MAX_OPEN`]); a connection that has not completed
    /// `timeout_s` after its SYN counts as timed out; `hz` is the TSC's.
    pub fn new(
        plan: ConnPlan,
        mac: EthernetAddress,
        dut_mac: EthernetAddress,
        max_open: u64,
        timeout_s: f64,
        hz: u64,
    ) -> Result<TcpClient, TcpPlanError> {
        if !(1..=MAX_OPEN).contains(&max_open) {
            return Err(TcpPlanError::BadMaxOpen(max_open));
        }
        if !(timeout_s.is_finite() && timeout_s > 0.0 && timeout_s <= MAX_CONN_TIMEOUT) {
            return Err(TcpPlanError::BadTimeout(timeout_s));
        }
        let hz = hz.max(1);
        Ok(TcpClient {
            plan,
            mac,
            dut_mac,
            slots: vec![FREE; RING as usize],
            next: 0,
            oldest: 0,
            open: 0,
            max_open,
            peak_open: 0,
            timeout: ((timeout_s * hz as f64) as u64).max(1),
            hz,
            measure_from: u64::MAX,
            all: ClientCounts::default(),
            measured: ClientCounts::default(),
            handshake_ns: Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3)
                .expect("valid histogram bounds"),
            late: 0,
            duplicates: 0,
            bad: 0,
            foreign: 0,
        })
    }

    /// Connections that may be opened now: below `max_open` open, within
    /// the window of slots, and tuples left.
    pub fn room(&self) -> u64 {
        let tuples_left = self.plan.tuples().saturating_sub(self.next);
        let window = RING - (self.next - self.oldest);
        (self.max_open - self.open).min(window).min(tuples_left)
    }

    /// Every tuple of the plan has been used.
    pub fn exhausted(&self) -> bool {
        self.next >= self.plan.tuples()
    }

    /// Connections open (SYN sent, neither completed nor failed).
    pub fn open(&self) -> u64 {
        self.open
    }

    /// Most connections open at once so far.
    pub fn peak_open(&self) -> u64 {
        self.peak_open
    }

    /// Index of the next connection.
    pub fn next_index(&self) -> u64 {
        self.next
    }

    /// Every connection opened has completed, failed or timed out.
    pub fn idle(&self) -> bool {
        self.oldest == self.next
    }

    /// Idle, and the server has received the last ACK of every measured
    /// connection the client completed (it is still on its way through
    /// the device under test when the client is done).
    pub fn settled_with(&self, server: &TcpServer) -> bool {
        self.idle() && server.counts.last_acks >= self.measured.completed
    }

    #[inline]
    fn slot(&self, i: u64) -> u64 {
        self.slots[(i % RING) as usize]
    }

    #[inline]
    fn set(&mut self, i: u64, state: u64, tsc: u64) {
        self.slots[(i % RING) as usize] = state << 56 | (tsc & MASK48);
    }

    #[inline]
    fn count(&mut self, i: u64, f: impl Fn(&mut ClientCounts)) {
        f(&mut self.all);
        if i >= self.measure_from {
            f(&mut self.measured);
        }
    }

    /// Opens the next connection at TSC `now`: writes its SYN into `out`
    /// and returns the frame length, or `None` when there is no
    /// [`room`](Self::room).
    pub fn open_next(&mut self, now: u64, out: &mut [u8; MAX_FRAME]) -> Option<usize> {
        if self.room() == 0 {
            return None;
        }
        let i = self.next;
        self.next += 1;
        self.set(i, SYN_SENT, now);
        self.open += 1;
        self.peak_open = self.peak_open.max(self.open);
        self.count(i, |c| c.opened += 1);
        Some(build(
            &self.plan,
            Step::Syn,
            i,
            self.mac,
            self.dut_mac,
            &[0; PROBE_LEN],
            out,
        ))
    }

    /// Takes back the last `k` connections opened: their SYNs were built
    /// but the port did not take them (they go again, with the same
    /// tuples, next time).
    pub fn unopen(&mut self, k: u64) {
        for _ in 0..k.min(self.next - self.oldest) {
            let i = self.next - 1;
            if self.slot(i) >> 56 != SYN_SENT {
                break;
            }
            self.set(i, FREE, 0);
            self.next = i;
            self.open -= 1;
            self.count(i, |c| c.opened -= 1);
        }
    }

    /// Starts the measured period: the connections opened from now on
    /// are counted in [`measured`](Self::measured) and the latency; the
    /// frame counts start over.
    pub fn start_measuring(&mut self) {
        self.measure_from = self.next;
        self.measured = ClientCounts::default();
        self.handshake_ns.reset();
        self.late = 0;
        self.duplicates = 0;
        self.bad = 0;
        self.foreign = 0;
    }

    /// Index of the first connection of the measured period (`u64::MAX`
    /// before it starts).
    pub fn measure_from(&self) -> u64 {
        self.measure_from
    }

    /// Handles a frame received on port A at TSC `now`; `out` gets what
    /// to send back on A (nothing, the ACK and the probe with FIN after a
    /// SYN-ACK, or the last ACK after the FIN-ACK).
    pub fn handle(&mut self, frame: &[u8], now: u64, out: &mut Replies) {
        out.n = 0;
        let seg = match parse(frame) {
            Ok(s) => s,
            Err(Unusable::Foreign) => {
                self.foreign += 1;
                return;
            }
            Err(Unusable::Bad) => {
                self.bad += 1;
                return;
            }
        };
        let t = seg.tuple;
        let Some(i) = self.plan.index_of(t.dst, t.dport, t.src, t.sport) else {
            self.foreign += 1;
            return;
        };
        if i >= self.next {
            self.bad += 1;
            return;
        }
        if i < self.oldest {
            self.late += 1;
            return;
        }
        let slot = self.slot(i);
        let state = slot >> 56;
        if seg.flags & F::RST != 0 {
            if state == SYN_SENT || state == ESTABLISHED {
                self.set(i, FAILED, slot);
                self.open -= 1;
                self.count(i, |c| c.resets += 1);
            } else {
                self.late += 1;
            }
            return;
        }
        let macs = (self.mac, seg.src_mac);
        if Step::SynAck.matches(i, &seg) {
            match state {
                SYN_SENT => {
                    self.set(i, ESTABLISHED, slot);
                    self.count(i, |c| c.established += 1);
                    if i >= self.measure_from {
                        let ticks = now.wrapping_sub(slot) & MASK48;
                        let ns = (u128::from(ticks) * 1_000_000_000 / u128::from(self.hz)) as u64;
                        self.handshake_ns.saturating_record(ns.max(1));
                    }
                    let probe = Probe {
                        flow: i as u32,
                        seq: i,
                        tsc: now,
                    };
                    let mut payload = [0u8; PROBE_LEN];
                    probe.write(&mut payload);
                    out.push(&self.plan, Step::Ack, i, macs, &payload);
                    out.push(&self.plan, Step::DataFin, i, macs, &payload);
                }
                ESTABLISHED | DONE => self.duplicates += 1,
                _ => self.late += 1,
            }
        } else if Step::FinAck.matches(i, &seg) {
            match state {
                ESTABLISHED => {
                    self.set(i, DONE, slot);
                    self.open -= 1;
                    self.count(i, |c| c.completed += 1);
                    out.push(&self.plan, Step::LastAck, i, macs, &[0; PROBE_LEN]);
                }
                DONE => self.duplicates += 1,
                FAILED => self.late += 1,
                _ => self.bad += 1,
            }
        } else {
            self.bad += 1;
        }
    }

    /// Retires the oldest connections that are finished, counting those
    /// still open `timeout` after their SYN as timed out (at most
    /// [`EXPIRE_PER_POLL`] slots per call). Call it often.
    pub fn poll_timeouts(&mut self, now: u64) {
        self.retire(now, EXPIRE_PER_POLL, false);
    }

    /// Ends the run: every connection still open counts as timed out.
    pub fn finish(&mut self, now: u64) {
        self.retire(now, RING as usize, true);
    }

    fn retire(&mut self, now: u64, max: usize, all: bool) {
        for _ in 0..max {
            if self.oldest == self.next {
                return;
            }
            let i = self.oldest;
            let slot = self.slot(i);
            let state = slot >> 56;
            if state == SYN_SENT || state == ESTABLISHED {
                if !all && (now.wrapping_sub(slot) & MASK48) < self.timeout {
                    return;
                }
                self.open -= 1;
                self.count(i, |c| {
                    c.timeouts += 1;
                    if state == SYN_SENT {
                        c.handshake_timeouts += 1;
                    }
                });
            }
            self.set(i, FREE, 0);
            self.oldest += 1;
        }
    }
}

/// What the server answered, of the measured connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ServerCounts {
    /// SYNs answered with a SYN-ACK.
    pub syns: u64,
    /// Handshake ACKs received.
    pub acks: u64,
    /// Probes with FIN answered with a FIN-ACK.
    pub fins: u64,
    /// Last ACKs received.
    pub last_acks: u64,
}

/// The server behind port B: stateless, it answers each segment from the
/// segment alone.
#[derive(Clone, Debug)]
pub struct TcpServer {
    plan: ConnPlan,
    mac: EthernetAddress,
    measure_from: u64,
    /// What it received and answered (connections of the measured
    /// period).
    pub counts: ServerCounts,
    /// Segments of our connections with wrong numbers or flags, broken
    /// frames.
    pub bad: u64,
    /// Frames that are not TCP of our connections.
    pub foreign: u64,
}

impl TcpServer {
    /// A server of `plan` answering from `mac`.
    pub fn new(plan: ConnPlan, mac: EthernetAddress) -> TcpServer {
        TcpServer {
            plan,
            mac,
            measure_from: u64::MAX,
            counts: ServerCounts::default(),
            bad: 0,
            foreign: 0,
        }
    }

    /// Counts from connection `first` on (the client's
    /// [`TcpClient::measure_from`]); the frame counts start over.
    pub fn start_measuring(&mut self, first: u64) {
        self.measure_from = first;
        self.counts = ServerCounts::default();
        self.bad = 0;
        self.foreign = 0;
    }

    /// Handles a frame received on port B: writes the answer (a SYN-ACK
    /// or a FIN-ACK) into `out` and returns its length, or `None` when
    /// there is nothing to send.
    pub fn handle(&mut self, frame: &[u8], out: &mut [u8; MAX_FRAME]) -> Option<usize> {
        let seg = match parse(frame) {
            Ok(s) => s,
            Err(Unusable::Foreign) => {
                self.foreign += 1;
                return None;
            }
            Err(Unusable::Bad) => {
                self.bad += 1;
                return None;
            }
        };
        let t = seg.tuple;
        let Some(i) = self.plan.index_of(t.src, t.sport, t.dst, t.dport) else {
            self.foreign += 1;
            return None;
        };
        let measured = i >= self.measure_from;
        let c = &mut self.counts;
        let answer = if Step::Syn.matches(i, &seg) {
            c.syns += u64::from(measured);
            Step::SynAck
        } else if Step::Ack.matches(i, &seg) {
            c.acks += u64::from(measured);
            return None;
        } else if Step::LastAck.matches(i, &seg) {
            c.last_acks += u64::from(measured);
            return None;
        } else if Step::DataFin.matches(i, &seg)
            && Probe::from_bytes(seg.payload).is_some_and(|p| p.seq == i)
        {
            c.fins += u64::from(measured);
            Step::FinAck
        } else {
            self.bad += 1;
            return None;
        };
        Some(build(
            &self.plan,
            answer,
            i,
            self.mac,
            seg.src_mac,
            &[0; PROBE_LEN],
            out,
        ))
    }
}

/// The final JSON line of a TCP run. Keys are stable: scripts read them.
/// Connection counts are of the connections opened in the measured
/// period (followed to their end after it); frame counts (`late`,
/// `duplicates`, `bad`, `foreign`) are of the measured period and the
/// drain.
#[derive(Clone, Debug, Serialize)]
pub struct TcpReport {
    /// Always "tcp".
    pub mode: &'static str,
    /// SYNs sent.
    pub opened: u64,
    /// SYN-ACKs received.
    pub established: u64,
    /// FIN-ACKs received (and the last ACK sent).
    pub completed: u64,
    /// `timeouts + resets`.
    pub failed: u64,
    /// Not completed within `--conn-timeout` of the SYN.
    pub timeouts: u64,
    /// Of the timeouts, those without a SYN-ACK.
    pub handshake_timeouts: u64,
    /// Reset (RST received).
    pub resets: u64,
    /// Connections open when the measured period ended.
    pub in_flight: u64,
    /// `completed` per measured second.
    pub conns_per_sec: f64,
    /// `opened` per measured second.
    pub opened_per_sec: f64,
    /// SYN sent -> SYN-ACK received.
    pub handshake_ns: Latency,
    /// The measured period, seconds.
    pub duration_s: f64,
    /// `--tcp-conns` (0: as fast as possible).
    pub rate_cps: u64,
    /// `--max-open`.
    pub max_open: u64,
    /// Most connections open at once (whole run).
    pub peak_open: u64,
    /// The server's SYN-ACKs sent.
    pub server_syns: u64,
    /// Handshake ACKs the server received.
    pub server_acks: u64,
    /// The server's FIN-ACKs sent.
    pub server_fins: u64,
    /// Last ACKs the server received.
    pub server_last_acks: u64,
    /// Answers for connections already timed out or reset.
    pub late: u64,
    /// Answers received twice.
    pub duplicates: u64,
    /// Segments of our connections with wrong numbers, flags or
    /// checksums (both sides).
    pub bad: u64,
    /// Frames that were not TCP of our connections (both sides; ARP not
    /// counted).
    pub foreign: u64,
    /// Answers dropped because the TX ring stayed full (more than 2048
    /// waiting on a port; their connections time out). SYNs the ring
    /// does not take are not counted: they go again.
    pub tx_dropped: u64,
    /// The run used every tuple of --src-net and stopped opening.
    pub exhausted: bool,
}

impl TcpReport {
    /// The report of a finished run (after [`TcpClient::finish`]).
    pub fn new(
        client: &TcpClient,
        server: &TcpServer,
        in_flight: u64,
        duration_s: f64,
        rate_cps: u64,
        tx_dropped: u64,
    ) -> TcpReport {
        let m = &client.measured;
        let per_s = |n: u64| {
            if duration_s > 0.0 {
                (n as f64 / duration_s).round()
            } else {
                0.0
            }
        };
        TcpReport {
            mode: "tcp",
            opened: m.opened,
            established: m.established,
            completed: m.completed,
            failed: m.failed(),
            timeouts: m.timeouts,
            handshake_timeouts: m.handshake_timeouts,
            resets: m.resets,
            in_flight,
            conns_per_sec: per_s(m.completed),
            opened_per_sec: per_s(m.opened),
            handshake_ns: Latency::of(&client.handshake_ns),
            duration_s: (duration_s * 1000.0).round() / 1000.0,
            rate_cps,
            max_open: client.max_open,
            peak_open: client.peak_open,
            server_syns: server.counts.syns,
            server_acks: server.counts.acks,
            server_fins: server.counts.fins,
            server_last_acks: server.counts.last_acks,
            late: client.late,
            duplicates: client.duplicates,
            bad: client.bad + server.bad,
            foreign: client.foreign + server.foreign,
            tx_dropped,
            exhausted: client.exhausted(),
        }
    }
}

/// One per-second line of a TCP run (whole run, warm-up included).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct TcpTick {
    /// Seconds since the start.
    pub t: u64,
    /// SYNs sent per second.
    pub opened_ps: u64,
    /// Connections completed per second.
    pub completed_ps: u64,
    /// Connections failed (timed out, reset) per second.
    pub failed_ps: u64,
    /// Connections open now.
    pub open: u64,
    /// Frames sent per second (both ports).
    pub tx_pps: u64,
    /// Frames received per second (both ports).
    pub rx_pps: u64,
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use tandem_dataplane::conntrack::{
        ConnMeta, Dir, ProtoState, Shard, ShardConfig, TcpState, Track,
    };
    use tandem_dataplane::parse::parse_ipv4;

    use super::*;
    use crate::gen::in_bench_net;

    const HZ: u64 = 2_000_000_000;
    const MAC_A: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 0xa]);
    const MAC_B: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 0xb]);
    const DUT: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 0xd]);

    fn range(s: &str) -> AddrRange {
        AddrRange::parse_bench("--src-net", s).unwrap()
    }

    fn plan() -> ConnPlan {
        ConnPlan {
            src: range("198.18.1.10-198.18.1.250"),
            dst: range("198.18.2.10-198.18.2.12"),
            dport: 80,
        }
    }

    fn client(max_open: u64) -> TcpClient {
        TcpClient::new(plan(), MAC_A, DUT, max_open, 1.0, HZ).unwrap()
    }

    /// A client and a server with the SYN of the client's first
    /// connection (opened at TSC 0) and the server's SYN-ACK to it.
    fn first_handshake() -> (TcpClient, TcpServer, Vec<u8>, Vec<u8>) {
        let mut cl = client(16);
        let mut sv = TcpServer::new(plan(), MAC_B);
        let mut out = [0u8; MAX_FRAME];
        let len = cl.open_next(0, &mut out).unwrap();
        let syn = out[..len].to_vec();
        let len = sv.handle(&syn, &mut out).unwrap();
        let synack = out[..len].to_vec();
        (cl, sv, syn, synack)
    }

    /// The firewall's view: tandemd's connection table with its window
    /// checks, fed the frames as its worker parses them.
    struct Firewall {
        shard: Shard,
        now_ms: u64,
    }

    impl Firewall {
        fn new() -> Firewall {
            let cfg = ShardConfig {
                capacity: 1 << 16,
                ..ShardConfig::default()
            };
            Firewall {
                shard: Shard::new(cfg, 1),
                now_ms: 1,
            }
        }

        /// Tracks one frame; panics unless the firewall accepts it.
        fn pass(&mut self, frame: &[u8]) {
            let p = parse_ipv4(&frame[14..], true).expect("tandemd parses the frame");
            let t = match self.shard.lookup(&p.flow) {
                Some((id, dir)) => self.shard.track(self.now_ms, id, dir, &p.l4, 0),
                None => {
                    let id = self
                        .shard
                        .create(self.now_ms, &p.flow, &p.l4, ConnMeta::default())
                        .expect("a SYN creates a connection");
                    self.shard.track(self.now_ms, id, Dir::Original, &p.l4, 0)
                }
            };
            assert_eq!(t, Track::Accept, "{:?} {:?}", p.flow, p.l4);
        }

        fn state(&self, plan: &ConnPlan, i: u64) -> TcpState {
            let t = plan.tuple(i);
            let key = tandem_dataplane::flow::FlowKey::new(t.src, t.sport, t.dst, t.dport, 6);
            let (id, _) = self.shard.lookup(&key).expect("tracked");
            match self.shard.get(id).expect("live").state() {
                ProtoState::Tcp(c) => c.state,
                other => panic!("{other:?}"),
            }
        }
    }

    fn owned(r: &Replies) -> Vec<Vec<u8>> {
        r.iter().map(<[u8]>::to_vec).collect()
    }

    #[test]
    fn every_step_builds_a_frame_whose_checksums_verify() {
        let plan = plan();
        let mut probe = [0u8; PROBE_LEN];
        Probe {
            flow: 7,
            seq: 7,
            tsc: 99,
        }
        .write(&mut probe);
        for i in [0, 1, 240, 241, 1_000_000, plan.tuples() - 1] {
            for step in Step::ALL {
                let mut out = [0u8; MAX_FRAME];
                let len = build(&plan, step, i, MAC_A, DUT, &probe, &mut out);
                assert!((MIN_FRAME..=MAX_FRAME).contains(&len), "{step:?} {len}");
                let f = &out[..len];
                let ip = Ipv4Packet::new_checked(&f[14..]).unwrap();
                assert!(ip.verify_checksum(), "{step:?}");
                assert!(ip.dont_frag());
                let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
                assert!(
                    tcp.verify_checksum(ip.src_addr(), ip.dst_addr()),
                    "{step:?}"
                );
                let seg = parse(f).unwrap();
                let t = plan.tuple(i);
                let t = if step.from_client() { t } else { t.reversed() };
                assert_eq!(seg.tuple, t);
                assert_eq!((seg.seq, seg.ack), step.numbers(i));
                assert_eq!(seg.flags, step.flags());
                assert_eq!(seg.payload.len(), step.payload_len(), "{step:?}");
                assert_eq!(tcp.window_len(), WINDOW);
                if step == Step::DataFin {
                    assert_eq!(seg.payload, &probe[..]);
                }
                assert_eq!(seg.src_mac, MAC_A);
            }
        }
    }

    #[test]
    fn sequence_numbers_follow_the_exchange() {
        for i in [0u64, 5, 1 << 33] {
            let (c, s) = (client_isn(i), server_isn(i));
            let n = |st: Step| st.numbers(i);
            // Each side's sequence number moves by what it sent (SYN 1,
            // data P, FIN 1); each ACK acknowledges all the other sent.
            assert_eq!(n(Step::Syn).0, c);
            assert_eq!(n(Step::SynAck), (s, c.wrapping_add(1)));
            assert_eq!(n(Step::Ack), (c.wrapping_add(1), s.wrapping_add(1)));
            assert_eq!(n(Step::DataFin), n(Step::Ack));
            let after_fin = c.wrapping_add(1 + PROBE_LEN as u32 + 1);
            assert_eq!(n(Step::FinAck), (s.wrapping_add(1), after_fin));
            assert_eq!(n(Step::LastAck), (after_fin, s.wrapping_add(2)));
        }
        // Different connections, different ISNs.
        let isns: HashSet<u32> = (0..10_000).map(client_isn).collect();
        assert!(isns.len() > 9_990);
        assert!((0..1000).all(|i| client_isn(i) != server_isn(i)));
    }

    #[test]
    fn a_full_exchange_passes_tandemds_connection_tracking() {
        let plan = plan();
        let mut cl = client(16);
        let mut sv = TcpServer::new(plan, MAC_B);
        cl.start_measuring();
        sv.start_measuring(cl.measure_from());
        let mut fw = Firewall::new();
        let mut out = [0u8; MAX_FRAME];
        let mut replies = Replies::default();

        let len = cl.open_next(1000, &mut out).unwrap();
        let syn = out[..len].to_vec();
        fw.pass(&syn);
        let len = sv.handle(&syn, &mut out).expect("SYN-ACK");
        let synack = out[..len].to_vec();
        assert_eq!(&synack[0..6], &MAC_A.0, "answers the sender's MAC");
        fw.pass(&synack);
        assert_eq!(fw.state(&plan, 0), TcpState::SynReceived);
        cl.handle(&synack, 1000 + 2000, &mut replies);
        let sent = owned(&replies);
        assert_eq!(sent.len(), 2, "ACK and the probe with FIN");
        assert_eq!(&sent[0][0..6], &MAC_B.0);
        for f in &sent {
            fw.pass(f);
            assert_eq!(sv.handle(f, &mut out).is_some(), f.len() > MIN_FRAME);
        }
        assert_eq!(fw.state(&plan, 0), TcpState::FinWait);
        let len = sv.handle(&sent[1], &mut out).unwrap();
        let finack = out[..len].to_vec();
        fw.pass(&finack);
        assert_eq!(fw.state(&plan, 0), TcpState::LastAck);
        cl.handle(&finack, 5000, &mut replies);
        let last = owned(&replies);
        assert_eq!(last.len(), 1);
        fw.pass(&last[0]);
        assert!(sv.handle(&last[0], &mut out).is_none());
        assert_eq!(fw.state(&plan, 0), TcpState::TimeWait);

        let m = cl.measured;
        assert_eq!(
            (m.opened, m.established, m.completed, m.failed()),
            (1, 1, 1, 0)
        );
        assert_eq!(cl.open(), 0);
        // The FIN was handled twice above: the server is stateless.
        assert_eq!(
            sv.counts,
            ServerCounts {
                syns: 1,
                acks: 1,
                fins: 2,
                last_acks: 1
            }
        );
        assert_eq!((cl.bad, cl.foreign, sv.bad, sv.foreign), (0, 0, 0, 0));
        // 2000 ticks at 2 GHz: 1 us.
        let l = Latency::of(&cl.handshake_ns);
        assert!((995..=1005).contains(&l.p50), "{l:?}");
        cl.poll_timeouts(6000);
        assert!(cl.idle());
    }

    #[test]
    fn many_interleaved_connections_all_complete_through_the_firewall() {
        let plan = plan();
        let mut cl = client(1000);
        let mut sv = TcpServer::new(plan, MAC_B);
        let mut fw = Firewall::new();
        let mut out = [0u8; MAX_FRAME];
        let mut replies = Replies::default();
        // Frames travel in batches: everything A sent, then everything B
        // sent, as bursts through a forwarder.
        let mut to_b: Vec<Vec<u8>> = Vec::new();
        let mut to_a: Vec<Vec<u8>> = Vec::new();
        let mut now = 0u64;
        for _round in 0..50 {
            for _ in 0..20 {
                if let Some(len) = cl.open_next(now, &mut out) {
                    to_b.push(out[..len].to_vec());
                }
            }
            for f in to_b.drain(..) {
                fw.pass(&f);
                if let Some(len) = sv.handle(&f, &mut out) {
                    to_a.push(out[..len].to_vec());
                }
            }
            for f in to_a.drain(..) {
                fw.pass(&f);
                cl.handle(&f, now, &mut replies);
                to_b.extend(owned(&replies));
            }
            now += 1000;
            cl.poll_timeouts(now);
        }
        for _ in 0..4 {
            for f in to_b.drain(..) {
                fw.pass(&f);
                if let Some(len) = sv.handle(&f, &mut out) {
                    to_a.push(out[..len].to_vec());
                }
            }
            for f in to_a.drain(..) {
                fw.pass(&f);
                cl.handle(&f, now, &mut replies);
                to_b.extend(owned(&replies));
            }
        }
        assert_eq!(cl.all.opened, 1000);
        assert_eq!(cl.all.completed, 1000);
        assert_eq!(cl.open(), 0);
        for i in [0, 499, 999] {
            assert_eq!(fw.state(&plan, i), TcpState::TimeWait);
        }
        assert_eq!(fw.shard.len(), 1000);
    }

    #[test]
    fn tuples_never_repeat_and_lead_back_to_their_connection() {
        let plan = ConnPlan {
            src: range("198.18.1.10-198.18.1.12"),
            dst: range("198.18.2.10-198.18.2.11"),
            dport: 80,
        };
        assert_eq!(plan.tuples(), 3 * 64512);
        let mut seen = HashSet::new();
        for i in 0..plan.tuples() {
            let t = plan.tuple(i);
            assert!(in_bench_net(t.src) && in_bench_net(t.dst));
            assert!(seen.insert((t.src, t.sport, t.dst, t.dport)), "{i} repeats");
            assert_eq!(plan.index_of(t.src, t.sport, t.dst, t.dport), Some(i));
        }
        // Not ours: wrong server port, server address, client address.
        let t = plan.tuple(4);
        assert_eq!(plan.index_of(t.src, t.sport, t.dst, 81), None);
        assert_eq!(plan.index_of(t.src, t.sport, plan.tuple(5).dst, 80), None);
        let outside = Ipv4Addr::new(198, 18, 1, 13);
        assert_eq!(plan.index_of(outside, t.sport, t.dst, 80), None);
        assert_eq!(plan.index_of(t.src, 1023, t.dst, 80), None);
    }

    #[test]
    fn the_client_stops_when_the_tuples_run_out() {
        let plan = ConnPlan {
            src: range("198.18.1.10"),
            dst: range("198.18.2.10"),
            dport: 80,
        };
        let mut cl = TcpClient::new(plan, MAC_A, DUT, MAX_OPEN, 1.0, HZ).unwrap();
        let mut out = [0u8; MAX_FRAME];
        let mut n = 0;
        while cl.open_next(0, &mut out).is_some() {
            n += 1;
            assert!(n <= 64512);
        }
        assert_eq!(n, 64512);
        assert!(cl.exhausted());
        assert_eq!(cl.room(), 0);
    }

    #[test]
    fn runs_that_would_reuse_tuples_are_refused_before_they_start() {
        let plan = ConnPlan {
            src: range("198.18.1.10-198.18.1.19"),
            dst: range("198.18.2.10"),
            dport: 80,
        };
        assert!(plan.check_run(50_000, 10.0).is_ok());
        assert!(plan.check_run(0, 3600.0).is_ok());
        let e = plan.check_run(100_000, 11.0).unwrap_err();
        let msg = e.to_string();
        for word in [
            "--tcp-conns",
            "--duration",
            "--warmup",
            "--src-net",
            "645120",
        ] {
            assert!(msg.contains(word), "{word} not in {msg}");
        }
        assert_eq!(
            TcpClient::new(plan, MAC_A, DUT, 0, 1.0, HZ).unwrap_err(),
            TcpPlanError::BadMaxOpen(0)
        );
        assert!(TcpClient::new(plan, MAC_A, DUT, MAX_OPEN + 1, 1.0, HZ).is_err());
        assert!(TcpClient::new(plan, MAC_A, DUT, 1, 0.0, HZ).is_err());
        assert!(TcpClient::new(plan, MAC_A, DUT, 1, 10.5, HZ).is_err());
    }

    #[test]
    fn bad_and_foreign_frames_are_ignored_and_counted() {
        let plan = plan();
        let (mut cl, mut sv, syn, synack) = first_handshake();
        let mut out = [0u8; MAX_FRAME];
        let mut replies = Replies::default();
        assert_eq!(sv.counts.syns, 0, "not measuring yet");

        // Every truncation of a valid frame (up to the end of the segment;
        // the rest is padding): ignored, never a panic.
        let end = 14 + usize::from(u16::from_be_bytes([synack[16], synack[17]]));
        assert_eq!(end, 14 + 20 + 24);
        for n in 0..end {
            cl.handle(&synack[..n], 0, &mut replies);
            assert!(replies.is_empty());
            assert!(sv.handle(&syn[..n], &mut out).is_none());
        }
        let before = (cl.bad, cl.foreign);
        // A flipped bit: the TCP checksum fails.
        let mut f = synack.clone();
        f[14 + 20 + 4] ^= 1;
        cl.handle(&f, 0, &mut replies);
        // The right checksum over the wrong ack: our tuple, wrong numbers.
        let t = plan.tuple(0);
        let mut f = synack.clone();
        f[34 + 8] ^= 0x40;
        TcpPacket::new_unchecked(&mut f[34..34 + 24]).fill_checksum(t.dst, t.src);
        assert!(parse(&f).is_ok());
        cl.handle(&f, 0, &mut replies);
        assert!(replies.is_empty());
        assert_eq!((cl.bad, cl.foreign), (before.0 + 2, before.1));
        // A UDP probe, an ARP request, an IPv6 frame: foreign.
        let mut udp = synack.clone();
        udp[23] = 17;
        cl.handle(&udp, 0, &mut replies);
        let mut arp = synack.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        cl.handle(&arp, 0, &mut replies);
        // A connection never opened: bad; a SYN-ACK to another port: foreign.
        let len = build(&plan, Step::SynAck, 5, MAC_B, MAC_A, &[0; 18], &mut out);
        cl.handle(&out[..len], 0, &mut replies);
        let other = ConnPlan { dport: 443, ..plan };
        let len = build(&other, Step::SynAck, 0, MAC_B, MAC_A, &[0; 18], &mut out);
        cl.handle(&out[..len], 0, &mut replies);
        assert!(replies.is_empty());
        assert_eq!((cl.bad, cl.foreign), (before.0 + 3, before.1 + 3));
        // The real SYN-ACK still works.
        cl.handle(&synack, 0, &mut replies);
        assert_eq!(replies.len(), 2);
        // The server: a SYN-ACK (its own direction) is foreign, a data
        // segment without the probe bad.
        let (b, fo) = (sv.bad, sv.foreign);
        assert!(sv.handle(&synack, &mut out).is_none());
        assert_eq!(sv.foreign, fo + 1);
        let mut df = owned(&replies)[1].clone();
        df[34 + 20] ^= 0xff;
        TcpPacket::new_unchecked(&mut df[34..34 + 20 + PROBE_LEN]).fill_checksum(t.src, t.dst);
        assert!(sv.handle(&df, &mut out).is_none());
        assert_eq!(sv.bad, b + 1);
    }

    #[test]
    fn unanswered_connections_time_out_after_their_syn() {
        let plan = plan();
        let mut cl = client(16);
        let mut sv = TcpServer::new(plan, MAC_B);
        cl.start_measuring();
        let mut out = [0u8; MAX_FRAME];
        let mut replies = Replies::default();
        let mut syns = Vec::new();
        for k in 0..3 {
            let len = cl.open_next(k * 10, &mut out).unwrap();
            syns.push(out[..len].to_vec());
        }
        // Connection 1 gets its SYN-ACK (then nothing), 2 completes.
        for i in [1, 2] {
            let len = sv.handle(&syns[i], &mut out).unwrap();
            cl.handle(&out[..len], 100, &mut replies);
        }
        let data_fin = owned(&replies)[1].clone();
        let len = sv.handle(&data_fin, &mut out).unwrap();
        cl.handle(&out[..len], 200, &mut replies);
        assert_eq!(cl.open(), 2);
        cl.poll_timeouts(HZ - 1);
        assert_eq!(cl.measured.timeouts, 0);
        cl.poll_timeouts(HZ + 10);
        let m = cl.measured;
        assert_eq!((m.timeouts, m.handshake_timeouts, m.completed), (2, 1, 1));
        assert!(cl.idle());
        assert_eq!(cl.open(), 0);
        // The answer after the timeout is late, not a completion.
        let len = sv.handle(&syns[0], &mut out).unwrap();
        cl.handle(&out[..len], HZ + 20, &mut replies);
        assert!(replies.is_empty());
        assert_eq!(cl.late, 1);
        // finish() times out whatever is still open, whatever its age.
        cl.open_next(HZ + 30, &mut out).unwrap();
        cl.finish(HZ + 31);
        assert_eq!(cl.measured.timeouts, 3);
        assert!(cl.idle());
    }

    #[test]
    fn duplicates_and_resets_are_counted() {
        let plan = plan();
        let (mut cl, _, _, synack) = first_handshake();
        let mut out = [0u8; MAX_FRAME];
        let mut replies = Replies::default();
        cl.handle(&synack, 1, &mut replies);
        cl.handle(&synack, 2, &mut replies);
        assert!(replies.is_empty(), "no second ACK");
        assert_eq!((cl.duplicates, cl.all.established), (1, 1));
        // A reset (from a firewall's reject rule) fails connection 1.
        let len = cl.open_next(3, &mut out).unwrap();
        let _ = len;
        let mut rst = [0u8; MAX_FRAME];
        let len = build(&plan, Step::SynAck, 1, MAC_B, MAC_A, &[0; 18], &mut rst);
        let mut f = rst[..len].to_vec();
        f[34 + 13] = F::RST | F::ACK;
        let t = plan.tuple(1);
        TcpPacket::new_unchecked(&mut f[34..34 + 24]).fill_checksum(t.dst, t.src);
        cl.handle(&f, 4, &mut replies);
        assert_eq!((cl.all.resets, cl.all.failed(), cl.open()), (1, 1, 1));
    }

    #[test]
    fn max_open_caps_the_connections_in_flight_and_unsent_syns_come_back() {
        let mut cl = client(3);
        let mut out = [0u8; MAX_FRAME];
        for _ in 0..3 {
            assert!(cl.open_next(0, &mut out).is_some());
        }
        assert_eq!(cl.room(), 0);
        assert!(cl.open_next(0, &mut out).is_none());
        assert_eq!(cl.peak_open(), 3);
        // The port took only the first: the other two go again.
        cl.unopen(2);
        assert_eq!((cl.next_index(), cl.open(), cl.all.opened), (1, 1, 1));
        let len = cl.open_next(0, &mut out).unwrap();
        let seg = parse(&out[..len]).unwrap();
        assert_eq!(seg.tuple, plan().tuple(1));
    }

    #[test]
    fn warmup_connections_are_left_out_of_the_measured_counts() {
        let plan = plan();
        let mut cl = client(16);
        let mut sv = TcpServer::new(plan, MAC_B);
        let mut out = [0u8; MAX_FRAME];
        let mut replies = Replies::default();
        let len = cl.open_next(0, &mut out).unwrap();
        let early = out[..len].to_vec();
        cl.start_measuring();
        sv.start_measuring(cl.measure_from());
        let len = cl.open_next(0, &mut out).unwrap();
        let measured = out[..len].to_vec();
        for syn in [early, measured] {
            let len = sv.handle(&syn, &mut out).unwrap();
            cl.handle(&out[..len], 10, &mut replies);
        }
        assert_eq!((cl.all.established, cl.measured.established), (2, 1));
        assert_eq!(cl.measured.opened, 1);
        assert_eq!(sv.counts.syns, 1);
        assert_eq!(cl.handshake_ns.len(), 1);
    }

    #[test]
    fn report_has_the_stable_keys() {
        let cl = client(16);
        let sv = TcpServer::new(plan(), MAC_B);
        let r = TcpReport::new(&cl, &sv, 0, 2.0, 1000, 0);
        let v = serde_json::to_value(&r).unwrap();
        for key in [
            "mode",
            "opened",
            "established",
            "completed",
            "failed",
            "timeouts",
            "handshake_timeouts",
            "resets",
            "in_flight",
            "conns_per_sec",
            "opened_per_sec",
            "handshake_ns",
            "duration_s",
            "rate_cps",
            "max_open",
            "peak_open",
            "server_syns",
            "server_acks",
            "server_fins",
            "server_last_acks",
            "late",
            "duplicates",
            "bad",
            "foreign",
            "tx_dropped",
            "exhausted",
        ] {
            assert!(v.get(key).is_some(), "{key} missing from {v}");
        }
        assert_eq!(v.as_object().unwrap().len(), 26);
        assert_eq!(v["mode"], "tcp");
        for key in ["p50", "p99", "p999", "max"] {
            assert!(v["handshake_ns"].get(key).is_some());
        }
        let tick = TcpTick {
            t: 1,
            opened_ps: 2,
            completed_ps: 3,
            failed_ps: 4,
            open: 5,
            tx_pps: 6,
            rx_pps: 7,
        };
        assert_eq!(
            serde_json::to_string(&tick).unwrap(),
            r#"{"t":1,"opened_ps":2,"completed_ps":3,"failed_ps":4,"open":5,"tx_pps":6,"rx_pps":7}"#
        );
    }
}
