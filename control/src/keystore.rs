//! The member's key store: where the cluster's pre-shared key lives when
//! the cluster's file leaves it out (`ha.psk` absent from `cluster.ron`).
//!
//! The store is the directory `secrets/` beside `node.ron` (mode 0700;
//! `control.key_store` names another),
//! the member's own (the configuration sync never sends it):
//! - `ha-psk`: the key in clear, as the operator writes it (root only,
//!   mode 0600). A member without a TPM keeps it there ("sealing is off");
//! - `ha-psk.sealed`: the key sealed in the member's TPM
//!   ([`crate::tpm`]) to the PCR value of the running `tandemd`, or the
//!   TPM password. A member with a TPM that finds `ha-psk` at start seals
//!   it, then wipes and removes the clear file;
//! - `ha-psk.handoff`: written by an update before the member restarts
//!   into its new version: the key sealed, without the password, to the
//!   PCR value the new `tandemd` will measure ([`crate::tpm::predicted_pcr`]
//!   of the package's digest). After the update the PCR differs: the
//!   sealed copy is refused, and the member opens the hand-off instead,
//!   so it rejoins by itself; it says until `tandemctl system tpm pcrseal
//!   tpmpassword=<password> serial=local|passive` reseals the lasting
//!   copy to the new value (and removes the hand-off). A rollback to the
//!   previous version finds its sealed copy valid again (the PCR is reset
//!   before each measurement) and removes the hand-off.
//!
//! What the running key came from is in `hainfo` (`key store`).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tandem_config::{ConfigError, NodeConfig, Secret};

use crate::eventlog::EventLog;
use crate::tpm::{Sealed, Tpm, TpmError};

/// The store's directory, beside `node.ron`.
pub const DIR: &str = "secrets";
/// The key in clear (no TPM, or not sealed yet).
pub const CLEAR: &str = "ha-psk";
/// The key sealed in the TPM.
pub const SEALED: &str = "ha-psk.sealed";
/// The key sealed for an update's new version.
pub const HANDOFF: &str = "ha-psk.handoff";

/// Where the running key came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    /// The cluster's (or node's) configuration file: not in the store.
    ConfigFile(PathBuf),
    /// `secrets/ha-psk`, for the reason given (no TPM, or sealing failed).
    Clear(String),
    /// `secrets/ha-psk.sealed`, unsealed through the PCR.
    Sealed,
    /// The sealed copy was refused (the PCR changed: another version
    /// runs) and the update's hand-off from `from` opened.
    Handoff {
        /// The version that sealed it.
        from: String,
    },
}

struct State {
    dir: PathBuf,
    tpm: Option<Arc<Tpm>>,
    psk: Secret,
    held: Held,
    /// The key before a key change that is not committed yet.
    prev: Option<Secret>,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

/// Held by every change of the store's files after start (hand-off, key
/// change, reseal), one at a time and in this order before [`STATE`]:
/// [`STATE`] itself is only held for short reads and updates, so hainfo
/// never waits on a TPM operation.
static STORE: Mutex<()> = Mutex::new(());

fn store_lock() -> std::sync::MutexGuard<'static, ()> {
    STORE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn state() -> std::sync::MutexGuard<'static, Option<State>> {
    STATE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The store's directory of the node `cfg` read from `config_path`:
/// `control.key_store`, [`DIR`] by default, beside the file.
pub fn dir_of(cfg: &NodeConfig, config_path: &Path) -> PathBuf {
    let base = config_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    base.join(cfg.control.key_store.as_deref().unwrap_or(Path::new(DIR)))
}

/// At start, after the TPM's: completes `cfg`'s HA section with the key
/// from the store when the configuration leaves it out (sealing a clear
/// key file when the member has a TPM), and remembers where it came
/// from. An error says why this member has no key and what to do.
pub fn open(cfg: &mut NodeConfig, config_path: &Path, log: &EventLog) -> Result<(), String> {
    // A TPM that did not measure tandemd is not used for the key.
    let tpm = crate::tpm::node().filter(|_| crate::tpm::measured_pcr().is_some());
    open_with(cfg, config_path, tpm, log)
}

/// [`open`] with the TPM given.
fn open_with(
    cfg: &mut NodeConfig,
    config_path: &Path,
    tpm: Option<Arc<Tpm>>,
    log: &EventLog,
) -> Result<(), String> {
    let dir = dir_of(cfg, config_path);
    let key_file = cfg.key_file(config_path);
    let Some(ha) = cfg.ha.as_mut() else {
        return Ok(());
    };
    if !ha.psk.is_empty() {
        *state() = Some(State {
            dir,
            tpm,
            psk: ha.psk.clone(),
            held: Held::ConfigFile(key_file),
            prev: None,
        });
        return Ok(());
    }
    let (psk, held) = read(&dir, config_path, tpm.as_deref(), log)?;
    let weak = tandem_config::psk_problems(psk.expose());
    if !weak.is_empty() {
        return Err(format!(
            "the cluster key in {} is too weak: {}; write a stronger one (and change it on both members with `tandemctl ha set key`)",
            dir.display(),
            weak.join("; ")
        ));
    }
    ha.psk = psk.clone();
    ha.psk_stored = true;
    *state() = Some(State {
        dir,
        tpm,
        psk,
        held,
        prev: None,
    });
    Ok(())
}

/// The key from the store at `dir`, and where it came from.
fn read(
    dir: &Path,
    config_path: &Path,
    tpm: Option<&Tpm>,
    log: &EventLog,
) -> Result<(Secret, Held), String> {
    let clear = dir.join(CLEAR);
    let sealed = dir.join(SEALED);
    let Some(tpm) = tpm else {
        if sealed.exists() && !clear.exists() {
            return Err(format!(
                "the cluster key is sealed in a TPM ({}), which this tandemd cannot use: control.tpm is not set, or the TPM did not measure tandemd (the event log's TPM line says why)",
                sealed.display()
            ));
        }
        if !clear.exists() {
            return Err(no_key(dir));
        }
        let psk = read_clear(&clear)?;
        return Ok((
            psk,
            Held::Clear("no TPM (control.tpm is not set): sealing is off".into()),
        ));
    };
    if clear.exists() {
        let psk = read_clear(&clear)?;
        return match tpm.seal_unattended(psk.expose().as_bytes(), None) {
            Ok(s) => {
                write_private(&sealed, s.to_json().as_bytes())?;
                wipe(&clear)?;
                // A hand-off left from before holds another key.
                let handoff = dir.join(HANDOFF);
                if handoff.exists() {
                    wipe(&handoff)?;
                }
                log.event(
                    "SYSTEM",
                    format_args!(
                        "key store: the cluster key of {} is now sealed in the TPM ({}, PCR {} or the TPM password); the clear file is wiped and removed",
                        clear.display(),
                        sealed.display(),
                        tpm.pcr()
                    ),
                );
                Ok((psk, Held::Sealed))
            }
            Err(e) => {
                log.event(
                    "SYSTEM",
                    format_args!(
                        "WARNING: key store: the cluster key stays in clear in {}: sealing it in the TPM failed: {e}",
                        clear.display()
                    ),
                );
                Ok((psk, Held::Clear(format!("sealing in the TPM failed: {e}"))))
            }
        };
    }
    if !sealed.exists() {
        return Err(no_key(dir));
    }
    let blob = read_sealed(&sealed)?;
    let handoff = dir.join(HANDOFF);
    match tpm.unseal_pcr(&blob) {
        Ok(k) => {
            let psk = secret_of(&k, &sealed)?;
            if handoff.exists() {
                // A rollback, or a hand-off left by an update that did
                // not start: the lasting copy opens, the hand-off goes.
                let _ = wipe(&handoff);
                log.event(
                    "SYSTEM",
                    format_args!("key store: the sealed cluster key opens for this version again; the update's hand-off is removed"),
                );
            }
            log.event(
                "SYSTEM",
                format_args!(
                    "key store: the cluster key is unsealed from the TPM (PCR {})",
                    tpm.pcr()
                ),
            );
            Ok((psk, Held::Sealed))
        }
        Err(TpmError::PcrChanged { .. }) => {
            log.event(
                "SYSTEM",
                format_args!(
                    "key store: unsealing the cluster key refused: PCR {} changed since it was sealed (another tandemd runs: an update)",
                    tpm.pcr()
                ),
            );
            let Some((from, blob)) = read_handoff(&handoff)? else {
                return Err(format!(
                    "the cluster key is sealed to another PCR {} value than this tandemd's, and no update left a hand-off: reseal it with `tandemctl system tpm pcrseal tpmpassword=<password> serial=local --config {} --tandemd <the tandemd to start>` (the TPM password opens it whatever the PCR)",
                    tpm.pcr(),
                    config_path.display()
                ));
            };
            match tpm.unseal_pcr(&blob) {
                Ok(k) => {
                    let psk = secret_of(&k, &handoff)?;
                    log.event(
                        "SYSTEM",
                        format_args!(
                            "key store: the cluster key opened from the hand-off version {from} sealed for this version; until `tandemctl system tpm pcrseal tpmpassword=<password> serial=local|passive` runs, its lasting copy stays sealed to the old PCR value"
                        ),
                    );
                    Ok((psk, Held::Handoff { from }))
                }
                Err(e) => Err(format!(
                    "the cluster key is sealed to another PCR {} value, and the hand-off version {from} left does not open either ({e}): reseal it with `tandemctl system tpm pcrseal tpmpassword=<password> serial=local --config {} --tandemd <the tandemd to start>`",
                    tpm.pcr(),
                    config_path.display()
                )),
            }
        }
        Err(e) => Err(format!("unsealing the cluster key from the TPM: {e}")),
    }
}

fn no_key(dir: &Path) -> String {
    format!(
        "no cluster key: the configuration has no ha.psk and {} holds neither {CLEAR} nor {SEALED}: write the key into {} (one line, mode 0600, root only); with a TPM (control.tpm) tandemd seals it at start",
        dir.display(),
        dir.join(CLEAR).display()
    )
}

fn secret_of(bytes: &[u8], from: &Path) -> Result<Secret, String> {
    String::from_utf8(bytes.to_vec())
        .map(Secret::new)
        .map_err(|_| format!("{} holds a key that is not UTF-8 text", from.display()))
}

/// Reads the clear key file: root's, mode 0600 or stricter, one line.
fn read_clear(path: &Path) -> Result<Secret, String> {
    let m = fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mode = m.mode() & 0o777;
    let euid = nix::unistd::geteuid().as_raw();
    if mode & 0o077 != 0 || m.uid() != euid {
        return Err(format!(
            "{} holds the cluster key and is mode {mode:04o}, owner uid {}: only its owner ({euid}) may read it; run chown root:root and chmod 600 on it",
            path.display(),
            m.uid()
        ));
    }
    let text =
        fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let key = text.strip_suffix('\n').unwrap_or(&text);
    if key.is_empty() || key.contains('\n') {
        return Err(format!(
            "{} must hold the cluster key on one line",
            path.display()
        ));
    }
    Ok(Secret::new(key))
}

fn read_sealed(path: &Path) -> Result<Sealed, String> {
    let text =
        fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Sealed::from_json(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The hand-off at `path`, if there is one: (the version that wrote it,
/// the sealed key).
fn read_handoff(path: &Path) -> Result<Option<(String, Sealed)>, String> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let from = v["from"].as_str().unwrap_or("?").to_owned();
    let sealed = v["sealed"]
        .as_str()
        .ok_or_else(|| format!("{}: no sealed key in it", path.display()))?;
    let sealed = Sealed::from_json(sealed).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Some((from, sealed)))
}

/// Writes `bytes` to `path` atomically, mode 0600, in a 0700 directory.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let what = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    if let Some(d) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(d)
            .map_err(what)?;
    }
    // Each file its own temporary name: two files of the store written at
    // once never share one.
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(what)?;
    f.write_all(bytes).map_err(what)?;
    f.sync_all().map_err(what)?;
    fs::rename(&tmp, path).map_err(what)
}

/// Writes the key in clear into the store at `dir` (`ha join` into a
/// cluster whose file has no key): tandemd seals it at its next start
/// when the member has a TPM.
pub fn write_clear(dir: &Path, psk: &Secret) -> Result<(), String> {
    write_private(&dir.join(CLEAR), format!("{}\n", psk.expose()).as_bytes())
}

/// Overwrites the file at `path` with zeros, then removes it.
fn wipe(path: &Path) -> Result<(), String> {
    let what = |e: std::io::Error| format!("cannot wipe {}: {e}", path.display());
    let len = fs::metadata(path).map_err(what)?.len();
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(what)?;
    f.write_all(&vec![0u8; len as usize]).map_err(what)?;
    f.sync_all().map_err(what)?;
    fs::remove_file(path).map_err(what)
}

/// Fills the key a reloaded configuration leaves out with the one this
/// member runs with.
pub fn fill(cfg: &mut NodeConfig) {
    let Some(ha) = cfg.ha.as_mut() else { return };
    if !ha.psk.is_empty() {
        return;
    }
    if let Some(s) = state().as_ref() {
        ha.psk = s.psk.clone();
        ha.psk_stored = true;
    }
}

/// [`tandem_config::load`] with the key filled from the store.
pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
    let mut cfg = tandem_config::load(path)?;
    fill(&mut cfg);
    Ok(cfg)
}

/// [`tandem_config::load_with_cluster_dir`] with the key filled.
pub fn load_with_cluster_dir(path: &Path, dir: &Path) -> Result<NodeConfig, ConfigError> {
    let mut cfg = tandem_config::load_with_cluster_dir(path, dir)?;
    fill(&mut cfg);
    Ok(cfg)
}

/// The file that holds the key of `cfg` (read from `config_path`) in
/// clear, if one does (for the warnings about who can read it).
pub fn clear_file_of(cfg: &NodeConfig, config_path: &Path) -> Option<PathBuf> {
    if !cfg.ha.as_ref()?.psk_stored {
        return Some(cfg.key_file(config_path));
    }
    let g = state();
    let s = g.as_ref()?;
    matches!(s.held, Held::Clear(_)).then(|| s.dir.join(CLEAR))
}

/// hainfo's `key store` line.
///
/// Never waits: it may be asked on the control thread; while a reseal
/// holds the store it says so.
pub fn status() -> Option<String> {
    let g = match STATE.try_lock() {
        Ok(g) => g,
        Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => {
            return Some("busy: a TPM operation on the key runs".into())
        }
    };
    let s = g.as_ref()?;
    let pcr = s.tpm.as_ref().map_or(0, |t| t.pcr());
    Some(match &s.held {
        Held::ConfigFile(p) => format!(
            "off: the cluster key is in {} (not sealed); leave ha.psk out of it and write the key into {}/{CLEAR} on each member to keep it in the store",
            p.display(),
            s.dir.display()
        ),
        Held::Clear(why) => format!("{}/{CLEAR}, root only; {why}", s.dir.display()),
        Held::Sealed => format!(
            "sealed in the TPM ({}/{SEALED}; PCR {pcr} or the TPM password)",
            s.dir.display()
        ),
        Held::Handoff { from } => format!(
            "PCR {pcr} changed: the sealed key is refused; running on the hand-off version {from} sealed for this version: run `tandemctl system tpm pcrseal tpmpassword=<password> serial=local|passive`"
        ),
    })
}

/// Before an update's restart: seals the running key for the new
/// `tandemd` (SHA-256 `digest`, hex) into the hand-off, when the key is
/// sealed in the TPM; says what it did (`None`: nothing to do).
pub fn handoff(to_version: &str, digest: &str) -> Result<Option<String>, String> {
    let _store = store_lock();
    let (dir, tpm, psk, held) = match state().as_ref() {
        Some(s) => (s.dir.clone(), s.tpm.clone(), s.psk.clone(), s.held.clone()),
        None => return Ok(None),
    };
    match held {
        Held::Sealed => {}
        // This version runs on a hand-off itself: its lasting copy is
        // sealed for the version before. A new hand-off would replace the
        // one this version starts with, and a rollback to it would find
        // no key.
        Held::Handoff { from } => {
            return Err(format!(
                "this member runs on the hand-off version {from} left, its sealed key not resealed yet: run `tandemctl system tpm pcrseal tpmpassword=<password> serial=...` for it first"
            ))
        }
        Held::ConfigFile(_) | Held::Clear(_) => return Ok(None),
    }
    let Some(tpm) = tpm else {
        return Ok(None);
    };
    let d: [u8; 32] = crate::peer::files::unhex(digest)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| format!("the package's tandemd digest {digest:?} is not SHA-256 hex"))?;
    let pcr = crate::tpm::predicted_pcr(&d);
    let sealed = tpm
        .seal_unattended(psk.expose().as_bytes(), Some(&pcr))
        .map_err(|e| format!("sealing the cluster key for version {to_version}: {e}"))?;
    let from = tandem_dataplane::build::get().version;
    let text = serde_json::json!({
        "from": from,
        "to": to_version,
        "sealed": sealed.to_json(),
    })
    .to_string();
    write_private(&dir.join(HANDOFF), text.as_bytes())?;
    Ok(Some(format!(
        "the cluster key is sealed for version {to_version} (PCR {} = {}…) in {}",
        tpm.pcr(),
        &crate::peer::files::hex(&pcr)[..16],
        dir.join(HANDOFF).display()
    )))
}

/// The suffix of the previous copy a key change keeps until it commits.
const PREV: &str = "prev";

/// A key change (`ha set key`) in a cluster that keeps its key in the
/// members' stores: stores `psk` in place of the running key (sealed in
/// the TPM when the key is, without the password: the storage key exists
/// by then), keeping the previous copy until [`commit_change`] or
/// [`undo_change`]. Refused while the member runs on an update's
/// hand-off: the operator reseals first.
pub fn stage_change(psk: &Secret) -> Result<(), String> {
    let _store = store_lock();
    let (dir, tpm, held) = match state().as_ref() {
        Some(s) => (s.dir.clone(), s.tpm.clone(), s.held.clone()),
        None => return Err("this member runs without a cluster key".into()),
    };
    let (file, bytes) = match (&held, tpm) {
        (Held::Sealed, Some(tpm)) => {
            let sealed = tpm
                .seal_unattended(psk.expose().as_bytes(), None)
                .map_err(|e| format!("sealing the new key in the TPM: {e}"))?;
            (dir.join(SEALED), sealed.to_json().into_bytes())
        }
        (Held::Clear(_), _) => (dir.join(CLEAR), format!("{}\n", psk.expose()).into_bytes()),
        (Held::Handoff { from }, _) => {
            return Err(format!(
                "this member runs on the hand-off version {from} left: reseal its key first (`tandemctl system tpm pcrseal tpmpassword=<password> serial=...`)"
            ))
        }
        (Held::ConfigFile(p), _) => {
            return Err(format!("the key is in {}, not in the store", p.display()))
        }
        (Held::Sealed, None) => return Err("the key is sealed but the TPM is gone".into()),
    };
    let prev = prev_of(&file);
    fs::rename(&file, &prev).map_err(|e| format!("cannot keep {}: {e}", file.display()))?;
    if let Err(e) = write_private(&file, &bytes) {
        let _ = fs::rename(&prev, &file);
        return Err(e);
    }
    if let Some(s) = state().as_mut() {
        s.prev = Some(std::mem::replace(&mut s.psk, psk.clone()));
    }
    Ok(())
}

fn prev_of(file: &Path) -> PathBuf {
    PathBuf::from(format!("{}.{PREV}", file.display()))
}

/// The key change committed: the previous copy goes.
pub fn commit_change() {
    let _store = store_lock();
    let mut g = state();
    let Some(s) = g.as_mut() else { return };
    s.prev = None;
    for f in [SEALED, CLEAR] {
        let prev = prev_of(&s.dir.join(f));
        if prev.exists() {
            let _ = wipe(&prev);
        }
    }
}

/// The key change undone: the previous copy is the stored key again.
pub fn undo_change() {
    let _store = store_lock();
    let mut g = state();
    let Some(s) = g.as_mut() else { return };
    let Some(old) = s.prev.take() else { return };
    for f in [SEALED, CLEAR] {
        let file = s.dir.join(f);
        let prev = prev_of(&file);
        if prev.exists() {
            let _ = fs::rename(&prev, &file);
        }
    }
    s.psk = old;
}

/// The key the store holds now (a key change compares it).
pub fn stored_key() -> Option<Secret> {
    state().as_ref().map(|s| s.psk.clone())
}

/// `ha create` undone: the key it stored in `dir` goes (clear or
/// sealed), and the store forgets it.
pub fn remove_stored(dir: &Path) {
    *state() = None;
    for f in [CLEAR, SEALED] {
        let p = dir.join(f);
        if p.exists() {
            let _ = wipe(&p);
        }
    }
}

/// Removes a hand-off an update left when its installation failed.
pub fn drop_handoff() {
    let _store = store_lock();
    if let Some(s) = state().as_ref() {
        let p = s.dir.join(HANDOFF);
        if p.exists() {
            let _ = wipe(&p);
        }
    }
}

/// `system tpm pcrseal`: opens the sealed key with the TPM password and
/// seals it again to the PCR's value now (the running version's); the
/// hand-off goes. Says what it did.
pub fn pcrseal(password: &str) -> Result<String, String> {
    // One change of the store at a time (a key change staged meanwhile
    // would be overwritten with the old key); hainfo's status() does not
    // wait for it.
    let _store = store_lock();
    let (dir, tpm, psk, held) = match state().as_ref() {
        Some(s) => (s.dir.clone(), s.tpm.clone(), s.psk.clone(), s.held.clone()),
        None => return Err("this member runs without a cluster key (no HA section)".into()),
    };
    let said = reseal(&dir, tpm, &psk, &held, password)?;
    if let Some(s) = state().as_mut() {
        s.held = Held::Sealed;
    }
    Ok(said)
}

fn reseal(
    dir: &Path,
    tpm: Option<Arc<Tpm>>,
    psk: &Secret,
    held: &Held,
    password: &str,
) -> Result<String, String> {
    let Some(tpm) = tpm else {
        return Err(
            "this member has no TPM (control.tpm is not set): its cluster key is not sealed, there is nothing to reseal"
                .into(),
        );
    };
    let sealed_path = dir.join(SEALED);
    if !sealed_path.exists() {
        return Err(format!(
            "{} does not exist: this member's cluster key is not sealed in its TPM ({})",
            sealed_path.display(),
            match held {
                Held::ConfigFile(p) => format!("it is in {}", p.display()),
                Held::Clear(why) => why.clone(),
                _ => "it was removed".into(),
            }
        ));
    }
    let old = read_sealed(&sealed_path)?;
    let new = tpm.pcrseal(&old, password).map_err(|e| e.to_string())?;
    let key = tpm
        .unseal_owner(&new, password)
        .map_err(|e| e.to_string())?;
    if key.as_slice() != psk.expose().as_bytes() {
        return Err(format!(
            "{} holds another key than the one this member runs with: nothing resealed; write the running key into {}/{CLEAR} and restart",
            sealed_path.display(),
            dir.display()
        ));
    }
    store_resealed(dir, &new)?;
    Ok(format!(
        "the cluster key is resealed to PCR {} = {}… (this version's measurement) or the TPM password",
        tpm.pcr(),
        &crate::peer::files::hex(&new.pcr_value)[..16]
    ))
}

/// Stores a resealed key in the store at `dir`; the hand-off goes.
fn store_resealed(dir: &Path, sealed: &Sealed) -> Result<(), String> {
    write_private(&dir.join(SEALED), sealed.to_json().as_bytes())?;
    let handoff = dir.join(HANDOFF);
    if handoff.exists() {
        wipe(&handoff)?;
    }
    Ok(())
}

/// `system tpm pcrseal serial=local --config FILE` without tandemd (it
/// cannot start while its key does not unseal): the same, against the
/// TPM and store of the configuration at `config_path`, for the tandemd
/// binary at `tandemd`.
pub fn pcrseal_offline(
    config_path: &Path,
    tandemd: &Path,
    password: &str,
) -> Result<String, String> {
    let cfg = tandem_config::load(config_path).map_err(|e| e.to_string())?;
    let t = cfg
        .control
        .tpm
        .as_ref()
        .ok_or("control.tpm is not set in this configuration: its cluster key is not sealed")?;
    let state_dir = cfg
        .control
        .state_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("/var/lib/tandem"));
    let tpm = Tpm::new(t.tcti.clone(), t.pcr, state_dir.join("tpm")).map_err(|e| e.to_string())?;
    // Sealed to the value that tandemd will measure, without touching the
    // PCR (a running tandemd's measurement stays as it is).
    let digest = crate::tpm::sha256_file(tandemd).map_err(|e| e.to_string())?;
    let pcr = crate::tpm::predicted_pcr(&digest);
    let dir = dir_of(&cfg, config_path);
    let sealed_path = dir.join(SEALED);
    let old = read_sealed(&sealed_path)?;
    let new = tpm
        .pcrseal_to(&old, password, &pcr)
        .map_err(|e| e.to_string())?;
    store_resealed(&dir, &new)?;
    Ok(format!(
        "the cluster key in {} is resealed to PCR {} = {}… (what {} will measure) or the TPM password",
        sealed_path.display(),
        t.pcr,
        &crate::peer::files::hex(&pcr)[..16],
        tandemd.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::files::hex;
    use crate::tpm::tests::Swtpm;
    use std::os::unix::fs::PermissionsExt;

    const KEY: &str = "Lab-Cluster-Key-2026";

    fn sha(b: &[u8]) -> String {
        hex(ring::digest::digest(&ring::digest::SHA256, b).as_ref())
    }

    /// A node's file without the key, with the TPM at `tcti`.
    fn node_file(dir: &Path, tcti: &str) -> PathBuf {
        let text = format!(
            r#"(
    node: (name: "fw1", serial: "LAB-FW1"),
    control: (socket: "{}", state_dir: Some("{}"), tpm: Some((tcti: "{tcti}"))),
    eal: (no_huge: true, memory_mb: 256),
    dataplane: (workers: [(cpu: None)]),
    interfaces: [(name: "in", device: Vdev("net_null0"), addresses: ["198.18.1.1/24"])],
    ha: (cluster_id: 7, links: [(name: "HA-main", interface: "ha0", address: "198.19.0.1/30", peer: "198.19.0.2")]),
)"#,
            dir.join("fw1.sock").display(),
            dir.join("state").display()
        );
        let p = dir.join("node.ron");
        fs::write(&p, text).unwrap();
        p
    }

    fn opened(path: &Path, tpm: Option<&Arc<Tpm>>, log: &EventLog) -> Result<NodeConfig, String> {
        let mut cfg = tandem_config::load(path).map_err(|e| e.to_string())?;
        open_with(&mut cfg, path, tpm.cloned(), log).map(|()| cfg)
    }

    /// One test: the store is this process's (a static).
    #[test]
    fn the_key_store_seals_hands_off_to_an_update_and_reseals() {
        let sw = Swtpm::start("keystore");
        let dir = sw.root.join("etc");
        fs::create_dir_all(&dir).unwrap();
        let log = EventLog::open("fw1", None, 0, 0).unwrap();
        let path = node_file(&dir, &sw.tcti());
        let store = dir.join(DIR);
        let (clear, sealed, handoff_file) =
            (store.join(CLEAR), store.join(SEALED), store.join(HANDOFF));

        // No key anywhere: refused, saying where to write it.
        let e = opened(&path, None, &log).unwrap_err();
        assert!(e.contains("no cluster key") && e.contains("ha-psk"), "{e}");
        // A key file others can read: refused.
        fs::create_dir_all(&store).unwrap();
        fs::write(&clear, format!("{KEY}\n")).unwrap();
        fs::set_permissions(&clear, fs::Permissions::from_mode(0o644)).unwrap();
        let e = opened(&path, None, &log).unwrap_err();
        assert!(e.contains("chmod 600"), "{e}");
        // Root's, 0600, no TPM: used as is.
        fs::set_permissions(&clear, fs::Permissions::from_mode(0o600)).unwrap();
        let cfg = opened(&path, None, &log).unwrap();
        let ha = cfg.ha.as_ref().unwrap();
        assert_eq!((ha.psk.expose(), ha.psk_stored), (KEY, true));
        assert!(
            status().unwrap().contains("sealing is off"),
            "{:?}",
            status()
        );
        assert_eq!(clear_file_of(&cfg, &path), Some(clear.clone()));

        // With the TPM: sealed, the clear file wiped.
        let tpm = Arc::new(sw.tpm());
        let (exe_a, exe_b) = (sw.root.join("tandemd-a"), sw.root.join("tandemd-b"));
        fs::write(&exe_a, b"version a").unwrap();
        fs::write(&exe_b, b"version b").unwrap();
        tpm.measure_file(&exe_a).unwrap();
        let cfg = opened(&path, Some(&tpm), &log).unwrap();
        assert_eq!(cfg.ha.as_ref().unwrap().psk.expose(), KEY);
        assert!(!clear.exists() && sealed.exists());
        assert!(status().unwrap().starts_with("sealed in the TPM"));
        assert_eq!(clear_file_of(&cfg, &path), None);
        // The next start unseals it through the PCR.
        assert_eq!(
            opened(&path, Some(&tpm), &log)
                .unwrap()
                .ha
                .unwrap()
                .psk
                .expose(),
            KEY
        );

        // An update to version b: the hand-off, then b starts.
        let said = handoff("0.2.0", &sha(b"version b")).unwrap().unwrap();
        assert!(said.contains("sealed for version 0.2.0"), "{said}");
        assert!(handoff_file.exists());
        tpm.measure_file(&exe_b).unwrap();
        let cfg = opened(&path, Some(&tpm), &log).unwrap();
        assert_eq!(cfg.ha.as_ref().unwrap().psk.expose(), KEY);
        assert!(
            status().unwrap().contains("PCR 23 changed"),
            "{:?}",
            status()
        );
        let lines = log.tail(5).join("\n");
        assert!(
            lines.contains("unsealing the cluster key refused"),
            "{lines}"
        );
        // A restart of b before the reseal: the hand-off still opens.
        opened(&path, Some(&tpm), &log).unwrap();
        // Another update before the reseal is refused: a new hand-off
        // would replace the one b starts with.
        let e = handoff("0.3.0", &sha(b"version c")).unwrap_err();
        assert!(e.contains("pcrseal"), "{e}");
        assert!(handoff_file.exists());

        // The reseal: a wrong password changes nothing; the right one
        // reseals to b's value and removes the hand-off.
        tpm.set_password(None, "owner pw").unwrap();
        let e = pcrseal("wrong pw").unwrap_err();
        assert!(e.contains("TPM password is wrong"), "{e}");
        assert!(handoff_file.exists());
        let said = pcrseal("owner pw").unwrap();
        assert!(said.contains("resealed to PCR 23"), "{said}");
        assert!(!handoff_file.exists());
        assert!(status().unwrap().starts_with("sealed in the TPM"));
        opened(&path, Some(&tpm), &log).unwrap();

        // Back to a without a hand-off: refused, naming the offline
        // reseal; which then works.
        tpm.measure_file(&exe_a).unwrap();
        let e = opened(&path, Some(&tpm), &log).unwrap_err();
        assert!(
            e.contains("tandemctl system tpm pcrseal") && e.contains("--config"),
            "{e}"
        );
        let said = pcrseal_offline(&path, &exe_a, "owner pw").unwrap();
        assert!(said.contains("resealed to PCR 23"), "{said}");
        opened(&path, Some(&tpm), &log).unwrap();

        // An update that rolls back: a's sealed copy opens again and the
        // hand-off goes.
        handoff("0.2.0", &sha(b"version b")).unwrap().unwrap();
        tpm.measure_file(&exe_a).unwrap();
        opened(&path, Some(&tpm), &log).unwrap();
        assert!(!handoff_file.exists());
        assert!(status().unwrap().starts_with("sealed in the TPM"));
    }
}
