//! tandem node configuration.
#![deny(unsafe_code)]
