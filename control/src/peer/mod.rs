//! The members' service on TCP 1300 (HA-REFERENCE F1-F4, F15, F16): a
//! firewall joining the cluster, and the configuration sync between the
//! members. Authenticated by the cluster key, sealed frame by frame
//! ([`handshake`]).

pub mod confsync;
pub mod create;
pub mod files;
pub mod handshake;
pub mod join;
pub mod keychange;
pub mod params;
pub mod service;
pub mod wiring;
