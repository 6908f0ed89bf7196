//! The tandem lab: network namespaces, veths, bridges, Linux hosts and
//! real `tandemd` processes, for end-to-end tests, the demo and benchmarks.
//!
//! Safety rules the lab enforces: hosts only get addresses from
//! 198.18.0.0/15 and only send there ([`link::check_lab_addr`]); nothing is
//! created in the root namespace but the namespaces themselves; every wait
//! is bounded; a [`lab::Lab`] tears itself down on drop (also while
//! panicking), and [`lab::cleanup_stale`] removes leftovers of killed runs.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod args;
pub mod chaos;
pub mod chart;
pub mod cluster;
pub mod cmd;
pub mod error;
pub mod firewall;
pub mod generator;
pub mod host;
pub mod lab;
pub mod link;
pub mod linuxpair;
pub mod netns;
pub mod node;
pub mod tools;

pub use error::{LabError, Result};
pub use lab::{cleanup_stale, heavy_lock, Lab, LabBuilder, LabKind};
pub use netns::{Netns, Proc};
pub use node::{Node, NodeConfig};

/// Fails the current test with a clear message unless the process runs as
/// root: the lab needs root for namespaces, and a test that did not run
/// must never count as passed. Run the suite as root (`sudo make test`).
#[macro_export]
macro_rules! require_root {
    () => {
        assert!(
            $crate::cmd::is_root(),
            "{}: this end-to-end test builds network namespaces and needs root; run it as root (sudo make test)",
            module_path!()
        );
    };
}
