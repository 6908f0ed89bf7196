//! K2K: the state-sync stream between the two members of an HA pair
//! (UDP 44242 on the HA links; DESIGN.md "K2K", wire layout in
//! `docs/k2k.md`).
//!
//! Sans-IO, like the rest of the firewall logic: [`Session`] takes
//! received datagrams and `now`, and hands back datagrams to send (into
//! the caller's buffer), delivered records, events and timers. The sync
//! core owns the socket, the clock and the shards.
//!
//! - [`wire`]: the versioned header, `{type, flags, length, count}` record
//!   groups (unknown types skipped, longer records accepted), the records
//!   (connection create / update / refresh / delete, bulk start / end /
//!   request, update request, Hello, NACK).
//! - [`crypto`]: ChaCha20-Poly1305 keys per pair of sessions from the
//!   cluster's pre-shared key (HKDF-SHA256, `ring`); every datagram
//!   authenticated, the body encrypted when configured.
//! - [`session`]: random session ids and the Hello exchange that proves
//!   freshness, replay window, sequencing, cumulative acks,
//!   NACKs, retransmission from a bounded buffer, bulk-resync signalling,
//!   version negotiation (fail-soft to the lower common version),
//!   counters per drop reason, replication-lag samples.
//!
//! The caller's loop, per peer:
//!
//! ```text
//! on datagram:  session.handle_datagram(now, bytes)   (Err = dropped, counted)
//! on delta:     session.queue_delta(&delta)
//! on timer:     session.handle_timeout(now)
//! then:         while let Some(n) = session.poll_transmit(now, &mut buf) { send(&buf[..n]) }
//!               while let Some(e) = session.poll_event() { BulkNeeded -> start_bulk/queue/end_bulk ... }
//!               while let Some(r) = session.poll_record() { r.to_delta(now) -> shard.apply }
//!               sleep until session.poll_timeout()
//! ```

pub mod crypto;
pub mod session;
#[cfg(test)]
mod tests;
pub mod wire;

pub use crypto::{seal_datagram, Psk};
pub use session::{
    random_session_id, BulkReason, ConfigError, Counters, DropReason, Event, LagSample, PeerInfo,
    QueueError, Session, SessionConfig, MAX_NACK_RANGES, MIN_MTU, WINDOW,
};
pub use wire::{
    decode_body, serial_from_str, BodyInfo, BodyWriter, DecodeError, Header, Hello, Record,
    RecordType, Serial, SessionId, BUILD_GROUP, CONTROL_SEQ_BIT, CREATE_LEN, GROUP_HEADER_LEN,
    HEADER_LEN, MAGIC, MIN_VERSION, NEXT_VERSION, NO_SESSION, OVERHEAD, TAG_LEN, VERSION,
};
