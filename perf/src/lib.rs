//! tandem benchmarks.
#![deny(unsafe_code)]

/// The traffic generator's parts that need no DPDK (tandem-gen).
pub mod gen;
/// The TCP mode of tandem-gen (new connections per second), without DPDK.
pub mod gen_tcp;
