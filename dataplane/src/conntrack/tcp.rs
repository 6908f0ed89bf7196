//! TCP tracking: one connection state plus, per direction, the sequence
//! window data of Guido van Rooij's "Real Stateful TCP Packet Filtering
//! in IP Filter" (as in pf and Linux `nf_conntrack_proto_tcp`).
//!
//! For each direction (the *sender* of a segment) we keep `end` (highest
//! sequence number sent + 1), `maxend` (highest sequence number the peer
//! has allowed, its ack + window) and `maxwin` (largest window the
//! direction advertised), with the RFC 7323 window-scale shift applied
//! once both SYNs carried the option. A segment of `[seq, end)` with
//! acknowledgement `ack` is in window iff
//!
//! - `seq <= sender.maxend` and `end >= sender.end - receiver.maxwin`
//!   (not beyond what the receiver allowed, not older than a window), and
//! - `ack <= receiver.end` and `ack >= receiver.end - MAXACKWIN`
//!   (does not acknowledge unsent data nor data older than a window);
//!
//! RSTs are checked on the sequence number only (RFC 5961 section 3: a RST is
//! acceptable only in window; in SYN_SENT only if it acknowledges the SYN).

use super::{Dir, TrackDrop, Verdict};
use crate::flow::{tcp_flags as F, TcpInfo};

/// The connection state (Linux conntrack-style, one state per connection;
/// the per-direction facts are in [`TcpPeer`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TcpState {
    /// The initiator's SYN seen.
    SynSent,
    /// The responder's SYN-ACK seen.
    SynReceived,
    /// Handshake complete.
    Established,
    /// One side sent FIN, not yet acknowledged.
    FinWait,
    /// One side's FIN acknowledged; the other may still send.
    CloseWait,
    /// Both sides sent FIN; not both acknowledged.
    LastAck,
    /// Both FINs acknowledged: 2 MSL.
    TimeWait,
    /// Reset.
    Closed,
}

impl TcpState {
    /// Snake-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            TcpState::SynSent => "syn_sent",
            TcpState::SynReceived => "syn_received",
            TcpState::Established => "established",
            TcpState::FinWait => "fin_wait",
            TcpState::CloseWait => "close_wait",
            TcpState::LastAck => "last_ack",
            TcpState::TimeWait => "time_wait",
            TcpState::Closed => "closed",
        }
    }
}

/// [`TcpPeer::flags`]: the direction's SYN carried a window-scale option.
pub const PEER_WSCALE: u8 = 0x01;
/// [`TcpPeer::flags`]: the direction sent a FIN.
pub const PEER_FIN: u8 = 0x02;
/// [`TcpPeer::flags`]: the direction's FIN was acknowledged.
pub const PEER_FIN_ACKED: u8 = 0x04;

/// Sequence-window data of one direction (the sender of its segments).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct TcpPeer {
    /// Highest sequence number sent, plus one (`td_end`).
    pub end: u32,
    /// Highest sequence number the other side allows (`td_maxend`).
    pub maxend: u32,
    /// Largest (scaled) window this side advertised (`td_maxwin`); 0
    /// until the direction is seen.
    pub maxwin: u32,
    /// Window-scale shift in effect for this side's windows.
    pub scale: u8,
    /// `PEER_*` bits.
    pub flags: u8,
}

/// TCP state of one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TcpConn {
    /// Connection state.
    pub state: TcpState,
    /// Picked up mid-stream (window scale unknown): out-of-window
    /// segments re-anchor the windows instead of being dropped.
    pub liberal: bool,
    /// Window data, indexed by [`Dir`].
    pub peers: [TcpPeer; 2],
}

#[inline]
fn before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}
#[inline]
fn after(a: u32, b: u32) -> bool {
    before(b, a)
}

/// The flag combinations a TCP segment may carry (PSH, ECE, CWR
/// ignored), as Linux's `tcp_valid_flags`.
pub(crate) fn valid_flags(flags: u8) -> bool {
    let f = flags & !(F::PSH | F::ECE | F::CWR | F::URG);
    f == F::SYN
        || f == F::SYN | F::ACK
        || f == F::RST
        || f == F::RST | F::ACK
        || f == F::FIN | F::ACK
        || f == F::ACK
}

fn seg_end(t: &TcpInfo) -> u32 {
    let mut end = t.seq.wrapping_add(t.payload_len);
    if t.flags & F::SYN != 0 {
        end = end.wrapping_add(1);
    }
    if t.flags & F::FIN != 0 {
        end = end.wrapping_add(1);
    }
    end
}

impl TcpConn {
    /// The state of a connection whose first segment is `t`: a SYN, or
    /// (loose pickup) any valid segment, which makes the connection
    /// established and liberal.
    pub(crate) fn new(t: &TcpInfo) -> TcpConn {
        let end = seg_end(t);
        let win = u32::from(t.window).max(1);
        let mut c = TcpConn {
            state: TcpState::SynSent,
            liberal: false,
            peers: [TcpPeer::default(); 2],
        };
        let o = &mut c.peers[0];
        o.end = end;
        if t.flags & F::SYN != 0 {
            o.maxend = end;
            o.maxwin = win;
            if let Some(ws) = t.wscale {
                o.scale = ws.min(14);
                o.flags |= PEER_WSCALE;
            }
        } else {
            c.state = TcpState::Established;
            c.liberal = true;
            o.maxwin = win;
            o.maxend = end.wrapping_add(win);
            if t.flags & F::ACK != 0 {
                c.peers[1].end = t.ack;
                c.peers[1].maxend = t.ack;
            }
        }
        c
    }

    /// Tracks one segment from `dir`. `window_check` off accepts any
    /// sequence numbers; `loose` (takeover grace) accepts out-of-window
    /// segments and re-anchors the windows. Returns the verdict and
    /// whether the state changed.
    pub(crate) fn track(
        &mut self,
        dir: Dir,
        t: &TcpInfo,
        window_check: bool,
        loose: bool,
    ) -> (Verdict, bool) {
        if !valid_flags(t.flags) {
            return (Verdict::Drop(TrackDrop::TcpBadFlags), false);
        }
        let d = dir as usize;
        let syn = t.flags & F::SYN != 0;
        let ack = t.flags & F::ACK != 0;
        let rst = t.flags & F::RST != 0;
        let before_state = self.state;
        use TcpState as S;

        // Flags against the state (before the window: a wrong-side SYN is
        // a flag problem even when its numbers happen to fit).
        match (self.state, dir, syn, ack, rst) {
            // SYN_SENT: only the initiator's SYN again, the responder's
            // SYN(-ACK) or an RST acknowledging the SYN.
            (S::SynSent, Dir::Original, true, false, _) => {}
            (S::SynSent, Dir::Reply, true, _, _) => {}
            (S::SynSent, Dir::Reply, false, _, true) => {
                if ack && t.ack == self.peers[0].end {
                    self.state = S::Closed;
                    return (Verdict::Closed, true);
                }
                return (Verdict::Drop(TrackDrop::TcpRstOutOfWindow), false);
            }
            (S::SynSent, _, _, _, _) => {
                return (Verdict::Drop(TrackDrop::TcpInvalidForState), false)
            }
            // SYN_RECEIVED: SYN or SYN-ACK retransmissions, the final ACK
            // (possibly with data or FIN) from the initiator, RSTs.
            (S::SynReceived, Dir::Original, true, false, _) => {}
            (S::SynReceived, Dir::Reply, true, true, _) => {}
            (S::SynReceived, _, false, _, true) => {}
            (S::SynReceived, Dir::Original, false, true, false) => {}
            (S::SynReceived, _, _, _, _) => {
                return (Verdict::Drop(TrackDrop::TcpInvalidForState), false)
            }
            // After TIME_WAIT or a reset, the initiator may open anew.
            (S::TimeWait | S::Closed, Dir::Original, true, false, _) => {
                return (Verdict::Stale, true);
            }
            // Established and later: a SYN-ACK retransmitted by the
            // responder is fine (window-checked); any other SYN is not.
            (_, Dir::Reply, true, true, _) => {}
            (_, _, true, _, _) => return (Verdict::Drop(TrackDrop::TcpInvalidForState), false),
            _ => {}
        }

        if let Err(e) = self.in_window(d, t, window_check, loose) {
            return (Verdict::Drop(e), false);
        }

        if rst {
            self.state = S::Closed;
            return (Verdict::Closed, before_state != S::Closed);
        }
        match self.state {
            S::SynSent if dir == Dir::Reply => self.state = S::SynReceived,
            S::SynReceived if dir == Dir::Original && ack && !syn => self.state = S::Established,
            _ => {}
        }
        if matches!(
            self.state,
            S::Established | S::FinWait | S::CloseWait | S::LastAck
        ) {
            let o = 1 - d;
            if t.flags & F::FIN != 0 {
                self.peers[d].flags |= PEER_FIN;
            }
            if ack && self.peers[o].flags & PEER_FIN != 0 && !before(t.ack, self.peers[o].end) {
                self.peers[o].flags |= PEER_FIN_ACKED;
            }
            let fins = [self.peers[0].flags, self.peers[1].flags];
            let sent = fins.iter().filter(|f| *f & PEER_FIN != 0).count();
            let acked = fins.iter().filter(|f| *f & PEER_FIN_ACKED != 0).count();
            self.state = match (sent, acked) {
                (0, _) => S::Established,
                (1, 0) => S::FinWait,
                (1, _) => S::CloseWait,
                (_, 2) => S::TimeWait,
                _ => S::LastAck,
            };
        }
        (Verdict::Accept, self.state != before_state)
    }

    fn in_window(
        &mut self,
        d: usize,
        t: &TcpInfo,
        window_check: bool,
        loose: bool,
    ) -> Result<(), TrackDrop> {
        let syn = t.flags & F::SYN != 0;
        let ackf = t.flags & F::ACK != 0;
        let rst = t.flags & F::RST != 0;
        let seq = t.seq;
        let end = seg_end(t);
        let mut win = u32::from(t.window);
        let state = self.state;
        let [p0, p1] = &mut self.peers;
        let (sender, receiver) = if d == 0 { (p0, p1) } else { (p1, p0) };

        if sender.maxwin == 0 {
            // First segment of this direction.
            if syn {
                sender.end = end;
                sender.maxend = end;
                sender.maxwin = win.max(1);
                if let Some(ws) = t.wscale {
                    sender.scale = ws.min(14);
                    sender.flags |= PEER_WSCALE;
                }
                if sender.flags & receiver.flags & PEER_WSCALE == 0 {
                    sender.scale = 0;
                    receiver.scale = 0;
                }
                if !ackf {
                    return Ok(()); // simultaneous open
                }
            } else {
                sender.end = end;
                sender.maxwin = (win << sender.scale).max(1);
                sender.maxend = end.wrapping_add(sender.maxwin);
                if receiver.maxwin == 0 && ackf {
                    receiver.end = t.ack;
                    receiver.maxend = t.ack;
                }
            }
        } else if syn && !ackf && d == 0 && state == TcpState::SynSent && after(end, sender.end) {
            // The initiator retried with a new ISN.
            *sender = TcpPeer {
                end,
                maxend: end,
                maxwin: win.max(1),
                scale: t.wscale.map_or(0, |w| w.min(14)),
                flags: if t.wscale.is_some() { PEER_WSCALE } else { 0 },
            };
            return Ok(());
        }

        let ack = if !ackf || (rst && t.ack == 0) {
            receiver.end
        } else {
            t.ack
        };
        if !syn {
            win <<= sender.scale;
        }
        let maxackwin = if sender.maxwin != 0 {
            sender.maxwin
        } else {
            66_000
        };
        let seq_ok = before(seq, sender.maxend.wrapping_add(1))
            && after(
                end,
                sender.end.wrapping_sub(receiver.maxwin).wrapping_sub(1),
            );
        let ack_ok = before(ack, receiver.end.wrapping_add(1))
            && after(ack, receiver.end.wrapping_sub(maxackwin).wrapping_sub(1));
        let ok = if rst { seq_ok } else { seq_ok && ack_ok };

        if ok || !window_check {
            if sender.maxwin < win {
                sender.maxwin = win;
            }
            if after(end, sender.end) {
                sender.end = end;
            }
            if receiver.maxwin != 0 && after(end, sender.maxend) {
                receiver.maxwin = receiver
                    .maxwin
                    .wrapping_add(end.wrapping_sub(sender.maxend));
            }
            let lim = ack.wrapping_add(win);
            if after(lim, receiver.maxend.wrapping_sub(1)) {
                receiver.maxend = lim.wrapping_add(u32::from(win == 0));
            }
            return Ok(());
        }
        if loose || self.liberal {
            // Re-anchor: believe the segment, as after a mid-stream pickup.
            if after(end, sender.end) {
                sender.end = end;
            }
            if after(end, sender.maxend) {
                sender.maxend = end;
            }
            sender.maxwin = sender.maxwin.max(win);
            if ackf {
                if after(ack, receiver.end) {
                    receiver.end = ack;
                }
                let lim = ack.wrapping_add(win);
                if after(lim, receiver.maxend) {
                    receiver.maxend = lim;
                }
            }
            return Ok(());
        }
        Err(if rst {
            TrackDrop::TcpRstOutOfWindow
        } else {
            TrackDrop::TcpOutOfWindow
        })
    }
}
