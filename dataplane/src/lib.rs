//! tandem dataplane.
#![deny(unsafe_code)]
