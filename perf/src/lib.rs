//! tandem benchmarks.
#![deny(unsafe_code)]

/// The traffic generator's parts that need no DPDK (tandem-gen).
pub mod gen;
