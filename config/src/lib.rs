//! The configuration of a tandem node: the RON schema, its defaults, and
//! validation whose errors name the file, the line, the field, what is
//! wrong and what is allowed.
//!
//! ```no_run
//! let cfg = tandem_config::load(std::path::Path::new("/etc/tandem/node.ron"))?;
//! let argv = cfg.eal_args();
//! # Ok::<(), tandem_config::ConfigError>(())
//! ```
//!
//! Files are parsed with RON's `implicit_some` extension on, so optional
//! values may be written plainly (`via: "198.18.1.254"`) or as
//! `Some("198.18.1.254")`.
#![deny(unsafe_code)]
#![deny(missing_docs)]

mod cidr;
pub mod cluster;
mod error;
mod identity;
mod locate;
pub mod policy;
mod schema;
mod validate;

#[cfg(test)]
mod tests;

use std::path::Path;

pub use cidr::{CidrParseError, Ipv4Cidr, MAX_PREFIX_LEN};
pub use error::{ConfigError, Diagnostic, Position};
pub use identity::{load_identity, parse_identity, psk_problems, Identity, Licence, IDENTITY_FILE};
pub use schema::{
    AggregateConfig, AggregateMode, ControlConfig, DataplaneConfig, Device, DiskQualityConfig,
    EalConfig, FirewallConfig, HaConfig, HaLinkConfig, IdleConfig, InterfaceConfig, LacpRate,
    NeighbourConfig, NodeConfig, NodeIdentity, PollMode, RouteConfig, Secret, SyslogConfig,
    SyslogTarget, TimeoutsConfig, TpmConfig, TpmQualityConfig, WorkerConfig,
    DEFAULT_CONTROL_SOCKET, DEFAULT_MTU, EAL_LOG_LEVEL, SYSLOG_FACILITIES,
};

use locate::SourceMap;

/// The example configurations shipped in `config/examples/`, as
/// `(file name, text)`; each one validates.
pub const EXAMPLES: &[(&str, &str)] = &[
    ("node-lab.ron", include_str!("../examples/node-lab.ron")),
    (
        "node-appliance.ron",
        include_str!("../examples/node-appliance.ron"),
    ),
];

/// Reads, parses and validates the node configuration at `path`, merged
/// with its cluster's shared file when it names one (`cluster`, see
/// [`cluster`]).
pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_in(
        &text,
        &path.display().to_string(),
        path.parent().unwrap_or(Path::new("")),
    )
}

/// [`load`] of a cluster member's `node.ron` at `path` with its cluster
/// directory taken from `cluster_dir` instead of its own (a revision
/// staged before it is swapped in).
pub fn load_with_cluster_dir(path: &Path, cluster_dir: &Path) -> Result<NodeConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let origin = path.display().to_string();
    let map = SourceMap::new(&text);
    let options =
        ron::Options::default().with_default_extension(ron::extensions::Extensions::IMPLICIT_SOME);
    let mut cfg: NodeConfig = options
        .from_str(&text)
        .map_err(|e| ConfigError::Syntax(ron_diagnostic(&e, &map, &origin)))?;
    if cfg.cluster.is_none() {
        return Err(ConfigError::Invalid(vec![Diagnostic {
            origin,
            position: None,
            field: "cluster".into(),
            message: "is not set: this node is not a cluster member, it has no cluster directory"
                .into(),
        }]));
    }
    cfg.cluster = Some(cluster_dir.to_owned());
    cluster::merge(cfg, path.parent().unwrap_or(Path::new("")), &origin, &map)
}

/// Parses and validates a node configuration; `origin` names the text in
/// messages (usually its file name). A `cluster` directory is taken from
/// the current directory.
pub fn parse(text: &str, origin: &str) -> Result<NodeConfig, ConfigError> {
    parse_in(text, origin, Path::new(""))
}

fn parse_in(text: &str, origin: &str, dir: &Path) -> Result<NodeConfig, ConfigError> {
    let map = SourceMap::new(text);
    let options =
        ron::Options::default().with_default_extension(ron::extensions::Extensions::IMPLICIT_SOME);
    let cfg: NodeConfig = options
        .from_str(text)
        .map_err(|e| ConfigError::Syntax(ron_diagnostic(&e, &map, origin)))?;
    if cfg.cluster.is_some() {
        return cluster::merge(cfg, dir, origin, &map);
    }
    let problems = validate::validate(&cfg, origin, Some(&map));
    if problems.is_empty() {
        Ok(cfg)
    } else {
        Err(ConfigError::Invalid(problems))
    }
}

impl NodeConfig {
    /// The file that holds the HA pre-shared key: the cluster's file for
    /// a cluster member, else the node's file at `path`.
    pub fn key_file(&self, path: &Path) -> std::path::PathBuf {
        match &self.membership {
            Some(m) => m.dir.join(cluster::CLUSTER_FILE),
            None => path.to_owned(),
        }
    }

    /// Checks the validation rules on a configuration built in code (a
    /// parsed one has passed them already); errors carry no position.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let problems = validate::validate(self, "configuration", None);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

/// Turns a RON error into a diagnostic with a field path and a message in
/// the crate's "what is wrong; what is allowed" form.
fn ron_diagnostic(e: &ron::error::SpannedError, map: &SourceMap<'_>, origin: &str) -> Diagnostic {
    use ron::error::Error as E;
    let offset = map.offset_of_ron(e.position.line, e.position.col);
    // RON stops right after a value it rejects, but at the closing
    // parenthesis of a struct that lacks a field.
    let missing = matches!(e.code, E::MissingStructField { .. });
    let (path, value_at) = map.entry_at(offset, !missing);
    let mut field = path.to_owned();
    // Point at the offending field or element itself when the error is
    // about a value; keep RON's position for syntax errors.
    let position = match e.code {
        E::Message(_)
        | E::InvalidValueForType { .. }
        | E::IntegerOutOfBounds
        | E::NoSuchEnumVariant { .. }
        | E::NoSuchStructField { .. }
        | E::DuplicateStructField { .. }
        | E::MissingStructField { .. }
            if !field.is_empty() || missing =>
        {
            value_at
        }
        _ => map.position(offset),
    };
    let allowed = |field: &str| {
        validate::allowed_values(field).map_or_else(String::new, |a| format!("; allowed {a}"))
    };
    let message = match &e.code {
        E::NoSuchStructField {
            expected, found, ..
        } => format!(
            "unknown field `{found}`; allowed fields: {}",
            expected.join(", ")
        ),
        E::MissingStructField { field: missing, .. } => {
            field = join(&field, missing);
            "is missing; it is required".to_owned()
        }
        E::DuplicateStructField { .. } => "is given twice; allowed once".to_owned(),
        E::NoSuchEnumVariant {
            expected, found, ..
        } => format!(
            "unknown variant `{found}`; allowed one of: {}",
            expected.join(", ")
        ),
        E::IntegerOutOfBounds => format!(
            "integer out of range{}",
            validate::allowed_values(&field).map_or_else(
                || "; allowed the range of the field's type".to_owned(),
                |a| format!("; allowed {a}")
            )
        ),
        E::InvalidValueForType { expected, found } => {
            format!("expected {expected}, found {found}{}", allowed(&field))
        }
        E::Message(m) => m.clone(),
        other => {
            let text = other.to_string();
            let mut chars = text.chars();
            let text: String = match chars.next() {
                Some(first) => first.to_lowercase().chain(chars).collect(),
                None => text,
            };
            format!("{text}{}", allowed(&field))
        }
    };
    Diagnostic {
        origin: origin.to_owned(),
        position: Some(position),
        field,
        message,
    }
}
