//! The tandem dataplane: the DPDK port layer and the per-packet logic of a
//! node (parsing, routing, ARP) driven by poll-mode workers.
//!
//! Everything but [`dpdk`] is safe Rust; the per-packet logic ([`wire`],
//! [`lpm`], [`neigh`], [`router`]) is sans-IO and takes the time as an
//! argument, so it is unit-tested and fuzzed without DPDK.
#![deny(unsafe_code)]

pub mod build;
pub mod conntrack;
pub mod counters;
pub mod dispatch;
pub mod dpdk;
pub mod firewall;
pub mod flow;
pub mod frag;
pub mod hadata;
pub mod hakeys;
pub mod k2k;
pub mod lpm;
pub mod neigh;
pub mod node;
pub mod parse;
pub mod policy;
pub mod router;
pub mod sync;
pub mod wire;
pub mod worker;
