//! Protocol state of a connection (all protocols but TCP's details, which
//! are in [`super::tcp`]) and the timeouts per protocol and state.

use super::tcp::{TcpConn, TcpState};
use super::{Dir, TrackDrop, Verdict};
use crate::flow::{proto, FlowKey, L4Info};

/// State of a datagram flow (UDP, GRE, ESP, other protocols).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DgramState {
    /// Only the initiator has sent.
    Unreplied,
    /// The responder answered.
    Replied,
    /// Traffic continued after the reply (both directions seen, then
    /// more): the long timeout applies.
    Stream,
}

/// State of an ICMP query (echo, timestamp, information, address mask).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IcmpConn {
    /// The request type that created the flow.
    pub ty: u8,
    /// Whether a matching reply was seen.
    pub replied: bool,
}

/// State of an ESP flow: the SPI seen in each direction (0 = none yet;
/// a new SPI in a direction is an SA rekey and replaces the old one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EspConn {
    /// Unreplied or replied.
    pub state: DgramState,
    /// SPI per [`Dir`].
    pub spi: [u32; 2],
}

/// SCTP association state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SctpState {
    /// INIT seen.
    CookieWait,
    /// INIT ACK seen (and possibly COOKIE ECHO).
    CookieEchoed,
    /// COOKIE ACK seen.
    Established,
    /// SHUTDOWN seen.
    ShutdownSent,
    /// SHUTDOWN ACK seen.
    ShutdownAckSent,
    /// SHUTDOWN COMPLETE or ABORT seen.
    Closed,
}

/// SCTP association: state and the verification tag each direction must
/// carry (learnt from the INIT ACK for the responder's packets and from
/// the COOKIE ECHO for the initiator's; 0 = not learnt yet).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SctpConn {
    /// State.
    pub state: SctpState,
    /// Verification tag per [`Dir`].
    pub vtag: [u32; 2],
}

/// SCTP chunk types used by the tracker.
mod chunk {
    pub const INIT: u8 = 1;
    pub const INIT_ACK: u8 = 2;
    pub const ABORT: u8 = 6;
    pub const SHUTDOWN: u8 = 7;
    pub const SHUTDOWN_ACK: u8 = 8;
    pub const COOKIE_ECHO: u8 = 10;
    pub const COOKIE_ACK: u8 = 11;
    pub const SHUTDOWN_COMPLETE: u8 = 14;
}

/// The protocol state of a connection: what a replica needs to resume it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProtoState {
    /// TCP.
    Tcp(TcpConn),
    /// UDP.
    Udp(DgramState),
    /// ICMP query.
    Icmp(IcmpConn),
    /// GRE.
    Gre(DgramState),
    /// ESP.
    Esp(EspConn),
    /// SCTP.
    Sctp(SctpConn),
    /// Any other IP protocol.
    Other(DgramState),
}

/// Timeouts in milliseconds per protocol and state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP SYN_SENT.
    pub tcp_syn_sent: u64,
    /// TCP SYN_RECEIVED.
    pub tcp_syn_received: u64,
    /// TCP ESTABLISHED.
    pub tcp_established: u64,
    /// TCP FIN_WAIT.
    pub tcp_fin_wait: u64,
    /// TCP CLOSE_WAIT.
    pub tcp_close_wait: u64,
    /// TCP LAST_ACK.
    pub tcp_last_ack: u64,
    /// TCP TIME_WAIT (2 MSL).
    pub tcp_time_wait: u64,
    /// TCP after RST.
    pub tcp_closed: u64,
    /// UDP before a reply.
    pub udp_unreplied: u64,
    /// UDP after one reply.
    pub udp_replied: u64,
    /// UDP stream.
    pub udp_stream: u64,
    /// ICMP query.
    pub icmp: u64,
    /// GRE before a reply.
    pub gre_unreplied: u64,
    /// GRE after a reply.
    pub gre: u64,
    /// ESP before a reply.
    pub esp_unreplied: u64,
    /// ESP after a reply.
    pub esp: u64,
    /// SCTP COOKIE_WAIT and COOKIE_ECHOED.
    pub sctp_handshake: u64,
    /// SCTP ESTABLISHED.
    pub sctp_established: u64,
    /// SCTP SHUTDOWN_SENT and SHUTDOWN_ACK_SENT.
    pub sctp_shutdown: u64,
    /// SCTP after SHUTDOWN COMPLETE or ABORT.
    pub sctp_closed: u64,
    /// Other protocols before a reply.
    pub other_unreplied: u64,
    /// Other protocols after a reply.
    pub other: u64,
}

const S: u64 = 1000;

impl Default for Timeouts {
    /// Close to Linux conntrack's, with established TCP and SCTP at 2 h.
    fn default() -> Self {
        Timeouts {
            tcp_syn_sent: 30 * S,
            tcp_syn_received: 60 * S,
            tcp_established: 2 * 3600 * S,
            tcp_fin_wait: 120 * S,
            tcp_close_wait: 60 * S,
            tcp_last_ack: 30 * S,
            tcp_time_wait: 120 * S,
            tcp_closed: 10 * S,
            udp_unreplied: 30 * S,
            udp_replied: 30 * S,
            udp_stream: 180 * S,
            icmp: 30 * S,
            gre_unreplied: 30 * S,
            gre: 180 * S,
            esp_unreplied: 30 * S,
            esp: 180 * S,
            sctp_handshake: 3 * S,
            sctp_established: 2 * 3600 * S,
            sctp_shutdown: 3 * S,
            sctp_closed: 10 * S,
            other_unreplied: 30 * S,
            other: 600 * S,
        }
    }
}

/// The tracked protocol of an IP protocol number and the `L4Info` a
/// packet of it must carry.
pub(crate) fn l4_matches(p: u8, l4: &L4Info) -> bool {
    match l4 {
        L4Info::Tcp(_) => p == proto::TCP,
        L4Info::Udp => p == proto::UDP,
        L4Info::IcmpQuery { .. } | L4Info::IcmpError { .. } | L4Info::IcmpOther { .. } => {
            p == proto::ICMP
        }
        L4Info::Gre { .. } => p == proto::GRE,
        L4Info::Esp { .. } => p == proto::ESP,
        L4Info::Sctp { .. } => p == proto::SCTP,
        L4Info::Other => !matches!(
            p,
            proto::TCP | proto::UDP | proto::ICMP | proto::GRE | proto::ESP | proto::SCTP
        ),
    }
}

/// The reply type of an ICMP query type, if `ty` is a query.
pub(crate) fn icmp_reply_type(ty: u8) -> Option<u8> {
    match ty {
        8 => Some(0),
        13 => Some(14),
        15 => Some(16),
        17 => Some(18),
        _ => None,
    }
}

/// Why a packet cannot create a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum InitError {
    /// Not an opening packet (TCP non-SYN without loose pickup, ICMP
    /// reply or error, SCTP non-INIT).
    NotInitial,
    /// The L4 facts do not match the key's protocol, or TCP flags are
    /// invalid.
    Invalid,
}

impl ProtoState {
    /// The state created by a connection's first packet.
    pub(crate) fn initial(
        key: &FlowKey,
        l4: &L4Info,
        loose_pickup: bool,
    ) -> Result<Self, InitError> {
        if !l4_matches(key.proto, l4) {
            return Err(InitError::Invalid);
        }
        use crate::flow::tcp_flags as F;
        Ok(match *l4 {
            L4Info::Tcp(t) => {
                if !super::tcp::valid_flags(t.flags) {
                    return Err(InitError::Invalid);
                }
                let syn_only = t.flags & (F::SYN | F::ACK | F::RST) == F::SYN;
                let pickup = loose_pickup && t.flags & (F::SYN | F::RST) == 0;
                if !syn_only && !pickup {
                    return Err(InitError::NotInitial);
                }
                ProtoState::Tcp(TcpConn::new(&t))
            }
            L4Info::Udp => ProtoState::Udp(DgramState::Unreplied),
            L4Info::IcmpQuery { ty, .. } => {
                if icmp_reply_type(ty).is_none() {
                    return Err(InitError::NotInitial);
                }
                ProtoState::Icmp(IcmpConn { ty, replied: false })
            }
            L4Info::IcmpError { .. } | L4Info::IcmpOther { .. } => {
                return Err(InitError::NotInitial)
            }
            L4Info::Gre { .. } => ProtoState::Gre(DgramState::Unreplied),
            L4Info::Esp { spi } => ProtoState::Esp(EspConn {
                state: DgramState::Unreplied,
                spi: [spi, 0],
            }),
            L4Info::Sctp { vtag, first_chunk } => {
                if first_chunk != chunk::INIT || vtag != 0 {
                    return Err(InitError::NotInitial);
                }
                ProtoState::Sctp(SctpConn {
                    state: SctpState::CookieWait,
                    vtag: [0, 0],
                })
            }
            L4Info::Other => ProtoState::Other(DgramState::Unreplied),
        })
    }

    /// Snake-case name of the state, for `tandemctl`.
    pub fn name(&self) -> &'static str {
        fn dgram(s: DgramState) -> &'static str {
            match s {
                DgramState::Unreplied => "unreplied",
                DgramState::Replied => "replied",
                DgramState::Stream => "stream",
            }
        }
        match self {
            ProtoState::Tcp(t) => t.state.as_str(),
            ProtoState::Udp(s) | ProtoState::Gre(s) | ProtoState::Other(s) => dgram(*s),
            ProtoState::Esp(e) => dgram(e.state),
            ProtoState::Icmp(i) => {
                if i.replied {
                    "replied"
                } else {
                    "requested"
                }
            }
            ProtoState::Sctp(s) => match s.state {
                SctpState::CookieWait => "cookie_wait",
                SctpState::CookieEchoed => "cookie_echoed",
                SctpState::Established => "established",
                SctpState::ShutdownSent => "shutdown_sent",
                SctpState::ShutdownAckSent => "shutdown_ack_sent",
                SctpState::Closed => "closed",
            },
        }
    }

    /// The timeout of the current state.
    pub fn timeout(&self, t: &Timeouts) -> u64 {
        match self {
            ProtoState::Tcp(c) => match c.state {
                TcpState::SynSent => t.tcp_syn_sent,
                TcpState::SynReceived => t.tcp_syn_received,
                TcpState::Established => t.tcp_established,
                TcpState::FinWait => t.tcp_fin_wait,
                TcpState::CloseWait => t.tcp_close_wait,
                TcpState::LastAck => t.tcp_last_ack,
                TcpState::TimeWait => t.tcp_time_wait,
                TcpState::Closed => t.tcp_closed,
            },
            ProtoState::Udp(s) => match s {
                DgramState::Unreplied => t.udp_unreplied,
                DgramState::Replied => t.udp_replied,
                DgramState::Stream => t.udp_stream,
            },
            ProtoState::Icmp(_) => t.icmp,
            ProtoState::Gre(s) => match s {
                DgramState::Unreplied => t.gre_unreplied,
                _ => t.gre,
            },
            ProtoState::Esp(e) => match e.state {
                DgramState::Unreplied => t.esp_unreplied,
                _ => t.esp,
            },
            ProtoState::Sctp(s) => match s.state {
                SctpState::CookieWait | SctpState::CookieEchoed => t.sctp_handshake,
                SctpState::Established => t.sctp_established,
                SctpState::ShutdownSent | SctpState::ShutdownAckSent => t.sctp_shutdown,
                SctpState::Closed => t.sctp_closed,
            },
            ProtoState::Other(s) => match s {
                DgramState::Unreplied => t.other_unreplied,
                _ => t.other,
            },
        }
    }

    /// Tracks one packet of a non-TCP protocol (TCP is handled by the
    /// shard, which knows the window configuration).
    pub(crate) fn track_dgram(&mut self, dir: Dir, l4: &L4Info) -> (Verdict, bool) {
        let reply = dir == Dir::Reply;
        let step = |s: &mut DgramState| -> bool {
            let next = match (*s, reply) {
                (DgramState::Unreplied, false) => DgramState::Unreplied,
                (DgramState::Unreplied, true) => DgramState::Replied,
                _ => DgramState::Stream,
            };
            let changed = next != *s;
            *s = next;
            changed
        };
        match (self, l4) {
            (ProtoState::Udp(s), L4Info::Udp)
            | (ProtoState::Gre(s), L4Info::Gre { .. })
            | (ProtoState::Other(s), L4Info::Other) => (Verdict::Accept, step(s)),
            (ProtoState::Icmp(i), L4Info::IcmpQuery { ty, .. }) => {
                let want = if reply {
                    icmp_reply_type(i.ty).unwrap_or(0)
                } else {
                    i.ty
                };
                if *ty != want {
                    return (Verdict::Drop(TrackDrop::IcmpUnexpectedType), false);
                }
                let changed = reply && !i.replied;
                i.replied |= reply;
                (Verdict::Accept, changed)
            }
            (ProtoState::Esp(e), L4Info::Esp { spi }) => {
                let d = dir as usize;
                let mut changed = e.spi[d] != *spi;
                e.spi[d] = *spi;
                if reply && e.state == DgramState::Unreplied {
                    e.state = DgramState::Replied;
                    changed = true;
                }
                (Verdict::Accept, changed)
            }
            (ProtoState::Sctp(s), L4Info::Sctp { vtag, first_chunk }) => {
                track_sctp(s, dir, *vtag, *first_chunk)
            }
            _ => (Verdict::Drop(TrackDrop::L4Mismatch), false),
        }
    }
}

fn track_sctp(s: &mut SctpConn, dir: Dir, vtag: u32, ch: u8) -> (Verdict, bool) {
    use SctpState as St;
    let d = dir as usize;
    let before = *s;
    let bad_state = (Verdict::Drop(TrackDrop::SctpInvalidForState), false);
    if ch == chunk::INIT {
        // Only the initiator's INIT retransmitted during the handshake.
        return if dir == Dir::Original && s.state == St::CookieWait && vtag == 0 {
            (Verdict::Accept, false)
        } else {
            bad_state
        };
    }
    let expected = s.vtag[d];
    if expected == 0 {
        // Learn the tag from the chunk that first carries it; an ABORT
        // during the handshake may come before (tag unknown: accepted).
        match (s.state, dir, ch) {
            (St::CookieWait, Dir::Reply, chunk::INIT_ACK) => {
                s.vtag[d] = vtag;
                s.state = St::CookieEchoed;
            }
            (St::CookieEchoed, Dir::Original, chunk::COOKIE_ECHO) => s.vtag[d] = vtag,
            (St::CookieWait | St::CookieEchoed, _, chunk::ABORT) => {}
            _ => return bad_state,
        }
    } else if vtag != expected {
        // ABORT and SHUTDOWN COMPLETE may reflect the peer's tag (T bit).
        let reflected =
            matches!(ch, chunk::ABORT | chunk::SHUTDOWN_COMPLETE) && vtag == s.vtag[1 - d];
        if !reflected {
            return (Verdict::Drop(TrackDrop::SctpBadVtag), false);
        }
    }
    match (s.state, dir, ch) {
        (_, _, chunk::ABORT) => s.state = St::Closed,
        (St::CookieEchoed, Dir::Reply, chunk::COOKIE_ACK) => s.state = St::Established,
        (St::Established, _, chunk::SHUTDOWN) => s.state = St::ShutdownSent,
        (St::ShutdownSent, _, chunk::SHUTDOWN_ACK) => s.state = St::ShutdownAckSent,
        (St::ShutdownAckSent, _, chunk::SHUTDOWN_COMPLETE) => s.state = St::Closed,
        (St::CookieWait, _, _) => return bad_state,
        _ => {}
    }
    let changed = *s != before;
    if s.state == St::Closed {
        (Verdict::Closed, changed)
    } else {
        (Verdict::Accept, changed)
    }
}

/// Whether a protocol state belongs to IP protocol `p`.
pub(crate) fn l4_matches_state(p: u8, s: &ProtoState) -> bool {
    match s {
        ProtoState::Tcp(_) => p == proto::TCP,
        ProtoState::Udp(_) => p == proto::UDP,
        ProtoState::Icmp(_) => p == proto::ICMP,
        ProtoState::Gre(_) => p == proto::GRE,
        ProtoState::Esp(_) => p == proto::ESP,
        ProtoState::Sctp(_) => p == proto::SCTP,
        ProtoState::Other(_) => l4_matches(p, &L4Info::Other),
    }
}
