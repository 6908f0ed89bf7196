//! Errors of loading a configuration: where, which field, what is wrong and
//! what is allowed.

use std::fmt;
use std::io;
use std::path::PathBuf;

pub use crate::locate::Position;

/// One problem in a configuration text, with its place.
///
/// Displays as `tandem.ron:12:5: interfaces[1].addresses[0]: <message>`;
/// the message says what is wrong and what is allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file name (or other origin) given to [`crate::parse`].
    pub origin: String,
    /// Where the offending value (or its closest written parent) is;
    /// `None` when the configuration was not parsed from text.
    pub position: Option<Position>,
    /// The field path, `interfaces[1].addresses[0]`; empty for the whole
    /// document.
    pub field: String,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.origin)?;
        if let Some(p) = self.position {
            write!(f, "{}:{}:", p.line, p.column)?;
        }
        if !self.field.is_empty() {
            write!(f, " {}:", self.field)?;
        }
        write!(f, " {}", self.message)
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read the configuration file: {source}; check the path and its permissions", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The text is not RON of the configuration's shape (syntax, unknown or
    /// missing field, wrong type, malformed value).
    #[error("{0}")]
    Syntax(Diagnostic),
    /// The text parsed but breaks validation rules; every broken rule is
    /// listed (at least one), one per line.
    #[error("{}", Lines(.0))]
    Invalid(Vec<Diagnostic>),
}

impl ConfigError {
    /// The located problems (empty for [`ConfigError::Read`]).
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Syntax(d) => std::slice::from_ref(d),
            ConfigError::Invalid(ds) => ds,
        }
    }
}

struct Lines<'a>(&'a [Diagnostic]);

impl fmt::Display for Lines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}
