//! What this build of tandem is: its version and the highest K2K protocol
//! version it speaks. Both are build-time settings of the programs
//! (`TANDEM_VERSION`, `TANDEM_K2K_VERSION`; see `tandem_control::build_info`),
//! which set them here once at start; the library reads them from here.
//! Without them (the library's own tests) the crate's version and
//! [`crate::k2k::VERSION`] apply.

use std::sync::OnceLock;

/// This build's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Build {
    /// `X.Y.Z`.
    pub version: &'static str,
    /// The highest K2K protocol version it speaks: [`crate::k2k::VERSION`],
    /// or [`crate::k2k::NEXT_VERSION`] for a build of the next protocol.
    pub k2k_version: u8,
}

impl Default for Build {
    fn default() -> Self {
        Build {
            version: env!("CARGO_PKG_VERSION"),
            k2k_version: crate::k2k::VERSION,
        }
    }
}

static BUILD: OnceLock<Build> = OnceLock::new();

/// Sets this build's identity (once, before anything reads it). The error
/// says what is wrong: a K2K version this code does not implement, or a
/// second, different setting.
pub fn set(b: Build) -> Result<(), String> {
    if !(crate::k2k::VERSION..=crate::k2k::NEXT_VERSION).contains(&b.k2k_version) {
        return Err(format!(
            "K2K protocol version {} is not one this code implements ({} or {})",
            b.k2k_version,
            crate::k2k::VERSION,
            crate::k2k::NEXT_VERSION
        ));
    }
    let now = *BUILD.get_or_init(|| b);
    if now == b {
        Ok(())
    } else {
        Err(format!("the build identity is already set to {now:?}"))
    }
}

/// This build's identity.
pub fn get() -> Build {
    *BUILD.get_or_init(Build::default)
}
