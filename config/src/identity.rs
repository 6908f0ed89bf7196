//! The node's identity file (`identity.ron`, beside the node's
//! configuration unless `control.identity` says otherwise): what a cluster
//! checks when a firewall joins it (HA-REFERENCE F2, F3): the serial, the
//! model, the licence and the number of data ports. It describes the
//! hardware, so the installer writes it once and tandemd only reads it;
//! the firmware version is the running binary's, never the file's.
//!
//! ```ron
//! (serial: "TDLAB0001", model: "TD-LAB", licence: Master, ports: 2)
//! ```

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, Diagnostic};
use crate::locate::SourceMap;
use crate::validate::{ident_char, in_charset, Checker};

/// The file name of the identity, beside the node configuration.
pub const IDENTITY_FILE: &str = "identity.ron";

/// Which licence a firewall has: a cluster needs at least one master.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Licence {
    /// May form a cluster with either licence.
    Master,
    /// May only join a member with a master licence.
    Slave,
}

impl Licence {
    /// `master` or `slave`.
    pub fn as_str(self) -> &'static str {
        match self {
            Licence::Master => "master",
            Licence::Slave => "slave",
        }
    }
}

/// A firewall's identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// The hardware serial: 1..=32 characters from `[A-Za-z0-9._-]`; the
    /// node configuration's `node.serial` must be the same.
    pub serial: String,
    /// The model: 1..=32 characters from `[A-Za-z0-9._-]`; both members of
    /// a cluster are of one model.
    pub model: String,
    /// The licence.
    pub licence: Licence,
    /// Data ports of the hardware, 1..=64 (HA links not counted): both
    /// members of a cluster have as many.
    pub ports: u16,
}

/// What each field allows, for the messages.
pub(crate) fn allowed_values(field: &str) -> Option<&'static str> {
    Some(match field {
        "serial" | "model" => "1..=32 characters from [A-Za-z0-9._-]",
        "ports" => "1..=64 data ports",
        _ => return None,
    })
}

/// Reads, parses and checks the identity file at `path`.
pub fn load_identity(path: &Path) -> Result<Identity, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_identity(&text, &path.display().to_string())
}

/// Parses and checks an identity; `origin` names the text in messages.
pub fn parse_identity(text: &str, origin: &str) -> Result<Identity, ConfigError> {
    let map = SourceMap::new(text);
    let id: Identity = ron::Options::default()
        .from_str(text)
        .map_err(|e| ConfigError::Syntax(crate::ron_diagnostic(&e, &map, origin)))?;
    let mut c = Checker::new(origin, Some(&map));
    for (field, value) in [("serial", &id.serial), ("model", &id.model)] {
        if !in_charset(value, 32, ident_char) {
            c.fail(
                field,
                format!(
                    "{value:?} is not allowed; allowed {}",
                    allowed_values(field).unwrap_or_default()
                ),
            );
        }
    }
    if !(1..=64).contains(&id.ports) {
        c.fail(
            "ports",
            format!(
                "{} is out of range; allowed {}",
                id.ports,
                allowed_values("ports").unwrap_or_default()
            ),
        );
    }
    let problems: Vec<Diagnostic> = c.out;
    if problems.is_empty() {
        Ok(id)
    } else {
        Err(ConfigError::Invalid(problems))
    }
}

/// Why a pre-shared key is too weak, one reason per entry (empty: strong
/// enough). A key has at least 12 characters, mixes three kinds of
/// characters (lower case, upper case, digits, others) and no character
/// makes up half of it or more.
pub fn psk_problems(psk: &str) -> Vec<String> {
    let mut out = Vec::new();
    let n = psk.chars().count();
    if n < 12 {
        out.push(format!("{n} characters (at least 12)"));
    }
    let kinds = [
        ("lower case", psk.chars().any(|ch| ch.is_ascii_lowercase())),
        ("upper case", psk.chars().any(|ch| ch.is_ascii_uppercase())),
        ("digits", psk.chars().any(|ch| ch.is_ascii_digit())),
        (
            "other characters",
            psk.chars().any(|ch| !ch.is_ascii_alphanumeric()),
        ),
    ];
    let have: Vec<&str> = kinds.iter().filter(|k| k.1).map(|k| k.0).collect();
    if have.len() < 3 {
        out.push(format!(
            "{} kind{} of characters ({}) where 3 of lower case, upper case, digits, other characters are needed",
            have.len(),
            if have.len() == 1 { "" } else { "s" },
            if have.is_empty() { "none".to_owned() } else { have.join(", ") }
        ));
    }
    if n > 0 {
        let mut counts = std::collections::HashMap::new();
        for ch in psk.chars() {
            *counts.entry(ch).or_insert(0usize) += 1;
        }
        if let Some((&ch, &k)) = counts.iter().max_by_key(|(&ch, &k)| (k, ch)) {
            if k * 2 >= n {
                out.push(format!(
                    "{ch:?} makes up {k} of its {n} characters (each character less than half)"
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_parses_and_each_bad_field_is_named_with_its_line() {
        let id = parse_identity(
            r#"(serial: "TDLAB0001", model: "TD-LAB", licence: Master, ports: 2)"#,
            "identity.ron",
        )
        .unwrap();
        assert_eq!(
            id,
            Identity {
                serial: "TDLAB0001".into(),
                model: "TD-LAB".into(),
                licence: Licence::Master,
                ports: 2,
            }
        );
        let e = parse_identity(
            "(\n serial: \"TD LAB\",\n model: \"\",\n licence: Slave,\n ports: 0,\n)",
            "identity.ron",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("identity.ron:2:")
                && e.contains("serial: \"TD LAB\" is not allowed; allowed 1..=32 characters"),
            "{e}"
        );
        assert!(e.contains("identity.ron:3:") && e.contains("model:"), "{e}");
        assert!(
            e.contains("ports: 0 is out of range; allowed 1..=64"),
            "{e}"
        );
        let e = parse_identity(
            r#"(serial: "A", model: "B", licence: Gold, ports: 2)"#,
            "identity.ron",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("identity.ron:1:") && e.contains("Gold"), "{e}");
        let e = parse_identity(
            r#"(serial: "A", model: "B", licence: Master, ports: 2, firmware: "9")"#,
            "identity.ron",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("firmware"), "an unknown field is refused: {e}");
    }

    #[test]
    fn the_example_identity_parses() {
        let id = parse_identity(
            include_str!("../examples/identity.ron"),
            "examples/identity.ron",
        )
        .unwrap();
        assert_eq!(
            (id.serial.as_str(), id.licence, id.ports),
            ("TDLAB0001", Licence::Master, 2)
        );
    }

    #[test]
    fn a_weak_key_is_refused_with_every_reason() {
        assert!(psk_problems("Correct-Horse-9").is_empty());
        assert!(psk_problems("lab-cluster-psk-0001").is_empty());
        let p = psk_problems("secret1");
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!(p[0], "7 characters (at least 12)");
        assert!(
            p[1].starts_with("2 kinds of characters (lower case, digits)"),
            "{p:?}"
        );
        let p = psk_problems("aaaaaaaaaaaaA1-");
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("'a' makes up 12 of its 15 characters"),
            "{p:?}"
        );
        let p = psk_problems("");
        assert_eq!(p[0], "0 characters (at least 12)");
        assert!(p[1].starts_with("0 kinds of characters (none)"), "{p:?}");
    }
}
