//! The lab's error type.

use std::time::Duration;

/// Everything that can go wrong while building or driving a lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// An I/O operation (spawn, file write, ...) failed.
    #[error("I/O error while {context}: {source}")]
    Io {
        /// What the lab was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A command ran but exited unsuccessfully.
    #[error("command `{cmd}` failed (exit code {code:?}): {stderr}")]
    Command {
        /// The command line.
        cmd: String,
        /// Its exit code, `None` if killed by a signal.
        code: Option<i32>,
        /// Its standard error (trimmed).
        stderr: String,
    },
    /// A command or a wait did not finish in time.
    #[error("`{what}` did not finish within {timeout:?}")]
    Timeout {
        /// The command line or the condition waited for.
        what: String,
        /// The time limit.
        timeout: Duration,
    },
    /// An address outside the lab's 198.18.0.0/15 was about to be used.
    #[error("refusing to use address {0}: lab traffic must stay inside 198.18.0.0/15")]
    ForbiddenAddress(String),
    /// A tandem binary was not found.
    #[error("{0}")]
    BinaryNotFound(String),
    /// The output of a tool could not be understood.
    #[error("could not parse the output of {what}: {detail}")]
    Parse {
        /// Which tool.
        what: String,
        /// What was wrong.
        detail: String,
    },
    /// A lab process exited when it should have kept running.
    #[error("process `{label}` exited early ({status}); logs:\n{logs}")]
    ProcessExited {
        /// The process's label.
        label: String,
        /// Its exit status.
        status: String,
        /// The tail of its stdout and stderr.
        logs: String,
    },
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// Result alias of the lab.
pub type Result<T> = std::result::Result<T, LabError>;

impl LabError {
    /// Wraps an I/O error with a description of what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        LabError::Io {
            context: context.into(),
            source,
        }
    }
}
