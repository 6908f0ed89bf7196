//! High availability: the election of the active member, sans-IO.
//!
//! - [`quality`]: the quality factor (F12, F19).
//! - [`machine`]: the member's state machine (F7, F18, F20).
//! - [`heartbeat`]: the authenticated heartbeat wire format (UDP 5405).
//!
//! The daemon owns the sockets and the clock: it feeds [`machine::Event`]s
//! with `now`, carries out [`machine::Action`]s and wakes at
//! [`machine::Ha::poll_timeout`].

pub mod heartbeat;
pub mod machine;
pub mod quality;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;
