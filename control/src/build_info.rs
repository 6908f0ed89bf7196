//! The programs' build-time identity: `TANDEM_VERSION` (`X.Y.Z`, default
//! the crate's version) and `TANDEM_K2K_VERSION` (default the K2K version
//! this code implements), read by [`set_build!`] in each program's
//! `main` so that only the programs are rebuilt when they change (a
//! second build of the same tree as the next version:
//! `scripts/build-next.sh`).

use tandem_dataplane::build::{self, Build};

/// Sets the build identity from the build-time settings given (as
/// `option_env!` read them in the program).
pub fn set_from(version: Option<&'static str>, k2k: Option<&'static str>) -> Result<(), String> {
    let mut b = Build::default();
    if let Some(v) = version.filter(|v| !v.is_empty()) {
        crate::update::slots::check_version(v).map_err(|e| format!("TANDEM_VERSION: {e}"))?;
        b.version = v;
    }
    if let Some(k) = k2k.filter(|k| !k.is_empty()) {
        b.k2k_version = k
            .parse()
            .map_err(|_| format!("TANDEM_K2K_VERSION {k:?} is not a number (2 or 3)"))?;
    }
    build::set(b).map_err(|e| format!("TANDEM_K2K_VERSION: {e}"))
}

/// In a program's `main`: sets the build identity from this program's
/// build-time settings, or says what is wrong with them and exits 2.
#[macro_export]
macro_rules! set_build {
    () => {
        if let Err(e) = $crate::build_info::set_from(
            option_env!("TANDEM_VERSION"),
            option_env!("TANDEM_K2K_VERSION"),
        ) {
            eprintln!("this build of tandem is broken: {e}");
            std::process::exit(2);
        }
    };
}

/// The program's arguments, with `--version` saying this build's version
/// (not the crate's).
pub fn parse_args<T: clap::Parser>() -> T {
    let cmd = T::command().version(build::get().version);
    match T::from_arg_matches(&cmd.get_matches()) {
        Ok(a) => a,
        Err(e) => e.exit(),
    }
}

/// `tandemd --build-info`: what a package's manifest must say of it.
pub fn json() -> serde_json::Value {
    let b = build::get();
    serde_json::json!({ "product": "tandem", "version": b.version, "k2k_version": b.k2k_version })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_are_named() {
        let e = set_from(Some("2.0"), None).unwrap_err();
        assert!(e.contains("TANDEM_VERSION") && e.contains("X.Y.Z"), "{e}");
        let e = set_from(None, Some("three")).unwrap_err();
        assert!(
            e.contains("TANDEM_K2K_VERSION") && e.contains("not a number"),
            "{e}"
        );
        let e = set_from(None, Some("9")).unwrap_err();
        assert!(e.contains("not one this code implements"), "{e}");
    }
}
