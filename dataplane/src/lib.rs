//! The tandem dataplane: the DPDK port layer and the per-packet logic of a
//! node (parsing, routing, ARP) driven by poll-mode workers.
//!
//! Everything but [`dpdk`] is safe Rust; the per-packet logic ([`wire`],
//! [`lpm`], [`neigh`], [`router`]) is sans-IO and takes the time as an
//! argument.
#![deny(unsafe_code)]

pub mod dpdk;
