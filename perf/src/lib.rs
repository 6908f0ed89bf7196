//! tandem benchmarks.
#![deny(unsafe_code)]
