//! tandem control plane.
#![deny(unsafe_code)]
