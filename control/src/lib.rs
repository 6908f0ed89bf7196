//! The tandem control plane: `tandemd` (the node daemon: control thread,
//! control socket) and `tandemctl` (the operator's CLI).
#![deny(unsafe_code)]

pub mod api;
pub mod apiserver;
pub mod background;
pub mod bootepoch;
pub mod build_info;
pub mod client;
pub mod cluster;
pub mod daemon;
pub mod eventlog;
pub mod ha;
pub mod health;
pub mod keystore;
pub mod metrics;
pub mod peer;
pub mod reports;
pub mod rulelog;
pub mod socket;
pub mod syslog;
pub mod tpm;
pub mod update;
pub mod watchdog;
