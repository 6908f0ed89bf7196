//! Two installation slots (`a` and `b`) under a root directory, and the
//! boot record that says which one runs:
//!
//! ```text
//! ROOT/slots/a/bin/tandemd, bin/tandemctl, manifest.json
//! ROOT/slots/b/...
//! ROOT/boot.json   {"active": "b", "previous": "a", "trial": {...}}
//! ```
//!
//! An update installs into the slot that does not run and makes it the
//! active one on trial: the launcher (`tandem-boot`) starts it, and it
//! must confirm within the trial time (it rejoined its peer, its table is
//! complete). A version that does not start, exits, or does not confirm
//! in time is rolled back: the previous slot becomes active again, and
//! the boot record says why. The previous version always stays bootable
//! until the next update replaces it.
//!
//! Every change of the boot record is written to a temporary file,
//! synced and renamed over the old one: a crash leaves either record.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Starts of a version on trial before it is rolled back.
pub const MAX_TRIAL_STARTS: u32 = 2;

/// A slot's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    /// The first.
    A,
    /// The second.
    B,
}

impl Slot {
    /// The other slot.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// "a" or "b".
    pub fn as_str(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }
}

/// A version on trial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trial {
    /// When it was installed (Unix seconds).
    pub since_unix: u64,
    /// Times the launcher started it.
    pub starts: u32,
    /// Seconds it has to confirm after each start.
    pub confirm_within_secs: u64,
}

/// The boot record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootRecord {
    /// The slot that runs.
    pub active: Slot,
    /// The slot that ran before the last update (rollback target).
    pub previous: Option<Slot>,
    /// The active slot is on trial.
    pub trial: Option<Trial>,
    /// The last rollback: when and why.
    pub last_rollback: Option<String>,
    /// tandemd has put the last rollback in its event log.
    #[serde(default)]
    pub rollback_logged: bool,
}

impl Default for BootRecord {
    fn default() -> Self {
        BootRecord {
            active: Slot::A,
            previous: None,
            trial: None,
            last_rollback: None,
            rollback_logged: false,
        }
    }
}

/// What one slot holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotInfo {
    /// The slot.
    pub slot: Slot,
    /// Its version, if it holds one.
    pub version: Option<String>,
    /// Its K2K protocol version.
    pub k2k_version: Option<u8>,
    /// When it was installed.
    pub installed_unix: Option<u64>,
}

/// `X.Y.Z` with each part a number below 10,000 (`0.2.0`).
pub fn check_version(v: &str) -> Result<(), String> {
    let parts: Vec<&str> = v.split('.').collect();
    let ok = parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 4 && p.bytes().all(|b| b.is_ascii_digit()));
    if ok {
        Ok(())
    } else {
        Err(format!("version {v:?} is not of the form X.Y.Z (numbers)"))
    }
}

/// The slots under a root directory.
#[derive(Debug, Clone)]
pub struct Slots {
    root: PathBuf,
}

impl Slots {
    /// The slots under `root` (created when missing).
    pub fn open(root: &Path) -> Result<Slots, String> {
        for s in [Slot::A, Slot::B] {
            let d = root.join("slots").join(s.as_str());
            std::fs::create_dir_all(&d)
                .map_err(|e| format!("cannot create {}: {e}", d.display()))?;
        }
        Ok(Slots {
            root: root.to_path_buf(),
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A slot's directory.
    pub fn dir(&self, s: Slot) -> PathBuf {
        self.root.join("slots").join(s.as_str())
    }

    /// The daemon binary of a slot.
    pub fn daemon(&self, s: Slot) -> PathBuf {
        self.dir(s).join("bin/tandemd")
    }

    fn record_path(&self) -> PathBuf {
        self.root.join("boot.json")
    }

    /// The boot record (the default one before the first install).
    pub fn record(&self) -> Result<BootRecord, String> {
        let p = self.record_path();
        match std::fs::read(&p) {
            Ok(b) => {
                serde_json::from_slice(&b).map_err(|e| format!("{} is damaged: {e}", p.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BootRecord::default()),
            Err(e) => Err(format!("cannot read {}: {e}", p.display())),
        }
    }

    /// Writes the boot record atomically.
    pub fn write_record(&self, r: &BootRecord) -> Result<(), String> {
        let p = self.record_path();
        let tmp = p.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(r).map_err(|e| e.to_string())?;
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&text)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &p)?;
            std::fs::File::open(&self.root)?.sync_all()
        };
        write().map_err(|e| format!("cannot write {}: {e}", p.display()))
    }

    /// What a slot holds.
    pub fn info(&self, s: Slot) -> SlotInfo {
        let m: Option<super::package::Manifest> = std::fs::read(self.dir(s).join("manifest.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        SlotInfo {
            slot: s,
            version: m.as_ref().map(|m| m.version.clone()),
            k2k_version: m.as_ref().map(|m| m.k2k_version),
            installed_unix: std::fs::metadata(self.dir(s).join("manifest.json"))
                .ok()
                .and_then(|md| md.modified().ok())
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs()),
        }
    }

    /// Puts a verified, unpacked package (`staging`, see
    /// [`super::package::unpack`]) into the slot that does not run, and
    /// makes it the active one on trial (`confirm_within_secs` after each
    /// start). Returns the slot.
    pub fn install(
        &self,
        staging: &Path,
        manifest: &super::package::Manifest,
        confirm_within_secs: u64,
    ) -> Result<Slot, String> {
        let mut r = self.record()?;
        if r.trial.is_some() {
            return Err(format!(
                "slot {} is still on trial (the last update is not confirmed): wait until it is confirmed or rolled back",
                r.active.as_str()
            ));
        }
        let target = r.active.other();
        let dir = self.dir(target);
        let _ = std::fs::remove_dir_all(&dir);
        let text = serde_json::to_vec_pretty(manifest).map_err(|e| e.to_string())?;
        std::fs::write(staging.join("manifest.json"), text)
            .map_err(|e| format!("cannot write the manifest into {}: {e}", staging.display()))?;
        std::fs::rename(staging, &dir).map_err(|e| {
            format!(
                "cannot move {} to {}: {e}",
                staging.display(),
                dir.display()
            )
        })?;
        r.previous = Some(r.active);
        r.active = target;
        r.trial = Some(Trial {
            since_unix: crate::peer::confsync::now_unix(),
            starts: 0,
            confirm_within_secs,
        });
        self.write_record(&r)?;
        Ok(target)
    }

    /// The launcher's step before starting tandemd: the slot to start,
    /// after counting a start of a version on trial, or rolling it back
    /// when it already had [`MAX_TRIAL_STARTS`]. The second value is the
    /// rollback's reason, when one happened.
    pub fn next_start(&self) -> Result<(Slot, Option<String>), String> {
        let mut r = self.record()?;
        let mut rolled = None;
        if let Some(t) = &mut r.trial {
            if t.starts >= MAX_TRIAL_STARTS {
                let why = format!(
                    "the version in slot {} was started {} times without confirming",
                    r.active.as_str(),
                    t.starts
                );
                self.roll_back_record(&mut r, &why);
                rolled = Some(why);
            } else {
                t.starts += 1;
            }
        }
        self.write_record(&r)?;
        Ok((r.active, rolled))
    }

    /// The version on trial works: it stays.
    pub fn confirm(&self) -> Result<bool, String> {
        let mut r = self.record()?;
        if r.trial.take().is_none() {
            return Ok(false);
        }
        self.write_record(&r)?;
        Ok(true)
    }

    /// Gives up the version on trial: the previous slot is active again.
    /// Returns false when nothing was on trial.
    pub fn roll_back(&self, why: &str) -> Result<bool, String> {
        let mut r = self.record()?;
        if r.trial.is_none() || r.previous.is_none() {
            return Ok(false);
        }
        self.roll_back_record(&mut r, why);
        self.write_record(&r)?;
        Ok(true)
    }

    fn roll_back_record(&self, r: &mut BootRecord, why: &str) {
        if let Some(p) = r.previous {
            r.previous = Some(r.active);
            r.active = p;
        }
        r.trial = None;
        r.rollback_logged = false;
        r.last_rollback = Some(format!(
            "{}: {why}",
            crate::peer::confsync::utc_text(crate::peer::confsync::now_unix())
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::update::package::{FileEntry, Manifest};

    fn manifest(v: &str) -> Manifest {
        Manifest {
            format: 1,
            product: "tandem".into(),
            version: v.into(),
            k2k_version: 3,
            built_unix: 0,
            files: vec![FileEntry {
                path: "bin/tandemd".into(),
                size: 0,
                mode: 0o755,
                sha256: "0".repeat(64),
            }],
        }
    }

    fn staged(root: &Path, v: &str) -> PathBuf {
        let s = root.join(format!("staging-{v}"));
        std::fs::create_dir_all(s.join("bin")).unwrap();
        std::fs::write(s.join("bin/tandemd"), v).unwrap();
        s
    }

    fn root(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tandem-slots-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn an_update_goes_to_the_other_slot_on_trial_and_a_confirmation_keeps_it() {
        let d = root("ok");
        let s = Slots::open(&d).unwrap();
        let slot = s
            .install(&staged(&d, "0.2.0"), &manifest("0.2.0"), 120)
            .unwrap();
        assert_eq!(slot, Slot::B);
        assert_eq!(s.info(Slot::B).version.as_deref(), Some("0.2.0"));
        let (start, rolled) = s.next_start().unwrap();
        assert_eq!((start, rolled), (Slot::B, None));
        assert_eq!(s.record().unwrap().trial.unwrap().starts, 1);
        // A second update while on trial is refused.
        let e = s
            .install(&staged(&d, "0.3.0"), &manifest("0.3.0"), 120)
            .unwrap_err();
        assert!(e.contains("still on trial"), "{e}");
        assert!(s.confirm().unwrap());
        let r = s.record().unwrap();
        assert_eq!(
            (r.active, r.previous, r.trial),
            (Slot::B, Some(Slot::A), None)
        );
        // The next update replaces the old slot, not the running one.
        assert_eq!(
            s.install(&staged(&d, "0.3.0"), &manifest("0.3.0"), 120)
                .unwrap(),
            Slot::A
        );
        assert_eq!(s.info(Slot::B).version.as_deref(), Some("0.2.0"));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_version_that_never_confirms_is_rolled_back_after_its_starts() {
        let d = root("rollback");
        let s = Slots::open(&d).unwrap();
        s.install(&staged(&d, "0.2.0"), &manifest("0.2.0"), 120)
            .unwrap();
        for _ in 0..MAX_TRIAL_STARTS {
            assert_eq!(s.next_start().unwrap(), (Slot::B, None));
        }
        let (slot, why) = s.next_start().unwrap();
        assert_eq!(slot, Slot::A);
        assert!(why.unwrap().contains("without confirming"));
        let r = s.record().unwrap();
        assert_eq!((r.active, r.previous), (Slot::A, Some(Slot::B)));
        assert!(r
            .last_rollback
            .unwrap()
            .contains("slot b was started 2 times"));
        // Nothing on trial any more: a rollback does nothing.
        assert!(!s.roll_back("again").unwrap());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn versions_are_numbers() {
        assert!(check_version("0.2.0").is_ok());
        for v in ["0.2", "0.2.0.1", "a.b.c", "0..1", "12345.0.0", ""] {
            assert!(check_version(v).is_err(), "{v}");
        }
    }
}
