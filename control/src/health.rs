//! What besides the data interfaces pulls the quality factor down
//! (HA-REFERENCE F19): disks (a configured path must be writable and keep
//! a minimum of free space), the TPM (it answers, or without the node's
//! `control.tpm` its device must be there), and the
//! hardware sensors (no hwmon temperature at or above its critical mark).
//! Each is a [`Penalty`] with its weight; checked about once a second.

use std::fs;
use std::path::{Path, PathBuf};

use nix::sys::statvfs::statvfs;
use nix::unistd::{access, AccessFlags};
use tandem_config::HaConfig;

use crate::ha::quality::Penalty;

/// One disk check: `path` must be a writable directory with at least
/// `min_free_mb` free.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskCheck {
    /// The directory.
    pub path: PathBuf,
    /// Free space below this fails the check.
    pub min_free_mb: u64,
    /// Its weight in the quality factor.
    pub weight: u16,
}

/// Why a disk check fails, or `None` when it passes.
pub fn disk_problem(d: &DiskCheck) -> Option<String> {
    let p = &d.path;
    match fs::metadata(p) {
        Err(e) => return Some(format!("{}: {e}", p.display())),
        Ok(m) if !m.is_dir() => return Some(format!("{}: not a directory", p.display())),
        Ok(_) => {}
    }
    if let Err(e) = access(p.as_path(), AccessFlags::W_OK) {
        return Some(format!("{}: not writable ({e})", p.display()));
    }
    match statvfs(p.as_path()) {
        Err(e) => Some(format!("{}: statvfs: {e}", p.display())),
        Ok(s) => {
            let free_mb = s.blocks_available() * s.fragment_size() / (1 << 20);
            (free_mb < d.min_free_mb).then(|| {
                format!(
                    "{}: {free_mb} MB free, below {} MB",
                    p.display(),
                    d.min_free_mb
                )
            })
        }
    }
}

/// The hwmon sensors under `root` (normally /sys/class/hwmon) that are at
/// or above their critical temperature, as "hwmonN/tempK: value/crit".
pub fn hot_sensors(root: &Path) -> Vec<String> {
    let mut hot = Vec::new();
    let Ok(dirs) = fs::read_dir(root) else {
        return hot;
    };
    let read = |p: PathBuf| -> Option<i64> { fs::read_to_string(p).ok()?.trim().parse().ok() };
    for dir in dirs.flatten().take(64) {
        let base = dir.path();
        for k in 1..=32 {
            let Some(t) = read(base.join(format!("temp{k}_input"))) else {
                continue;
            };
            if let Some(crit) = read(base.join(format!("temp{k}_crit"))) {
                if crit > 0 && t >= crit {
                    hot.push(format!(
                        "{}/temp{k}: {} >= {} mC",
                        dir.file_name().to_string_lossy(),
                        t,
                        crit
                    ));
                }
            }
        }
    }
    hot
}

/// The checks of a member's configuration.
#[derive(Clone, Debug, Default)]
pub struct Health {
    disks: Vec<DiskCheck>,
    tpm: Option<(TpmCheck, u16)>,
    hwmon: Option<(PathBuf, u16)>,
}

/// How the TPM is checked.
#[derive(Clone, Debug)]
enum TpmCheck {
    /// It answers (the node's `control.tpm`).
    Answers(std::sync::Arc<crate::tpm::Tpm>),
    /// Its device is there.
    Device(PathBuf),
}

impl Health {
    /// The checks `ha` configures; the TPM check asks `tpm` (the node's
    /// TPM) when there is one.
    pub fn new(ha: &HaConfig, tpm: Option<std::sync::Arc<crate::tpm::Tpm>>) -> Health {
        Health {
            disks: ha
                .quality_disks
                .iter()
                .map(|d| DiskCheck {
                    path: d.path.clone(),
                    min_free_mb: d.min_free_mb,
                    weight: d.weight,
                })
                .collect(),
            tpm: ha.quality_tpm.as_ref().and_then(|t| {
                let check = match (&tpm, &t.device) {
                    (Some(tpm), _) => TpmCheck::Answers(tpm.clone()),
                    (None, Some(dev)) => TpmCheck::Device(dev.clone()),
                    // Refused by the configuration's validation.
                    (None, None) => return None,
                };
                Some((check, t.weight))
            }),
            hwmon: ha
                .quality_hwmon_weight
                .map(|w| (PathBuf::from("/sys/class/hwmon"), w)),
        }
    }

    /// Nothing is checked.
    pub fn is_empty(&self) -> bool {
        self.disks.is_empty() && self.tpm.is_none() && self.hwmon.is_none()
    }

    /// Runs every check: the penalties, and a line per failing check.
    pub fn check(&self) -> (Vec<Penalty>, Vec<String>) {
        let mut penalties = Vec::new();
        let mut problems = Vec::new();
        for d in &self.disks {
            let why = disk_problem(d);
            penalties.push(Penalty {
                name: format!("disk {}", d.path.display()),
                ok: why.is_none(),
                weight: d.weight,
            });
            problems.extend(why.map(|w| format!("disk {w}")));
        }
        if let Some((check, weight)) = &self.tpm {
            let why = match check {
                TpmCheck::Answers(tpm) => tpm.health().err().map(|e| format!("TPM: {e}")),
                TpmCheck::Device(dev) => fs::metadata(dev)
                    .is_err()
                    .then(|| format!("TPM device {} is missing", dev.display())),
            };
            penalties.push(Penalty {
                name: "tpm".into(),
                ok: why.is_none(),
                weight: *weight,
            });
            problems.extend(why);
        }
        if let Some((root, weight)) = &self.hwmon {
            let hot = hot_sensors(root);
            penalties.push(Penalty {
                name: "hardware sensors".into(),
                ok: hot.is_empty(),
                weight: *weight,
            });
            problems.extend(hot.into_iter().map(|h| format!("sensor {h}")));
        }
        (penalties, problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tandem-health-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_disk_passes_until_it_is_gone_or_full() {
        let d = tmp("disk");
        let mut c = DiskCheck {
            path: d.clone(),
            min_free_mb: 1,
            weight: 100,
        };
        assert_eq!(disk_problem(&c), None);
        c.min_free_mb = u64::MAX / (1 << 20);
        assert!(disk_problem(&c).unwrap().contains("MB free, below"));
        c.min_free_mb = 1;
        fs::remove_dir_all(&d).unwrap();
        assert!(disk_problem(&c).is_some(), "a missing path fails");
        fs::write(&d, b"x").unwrap();
        assert!(disk_problem(&c).unwrap().contains("not a directory"));
        fs::remove_file(&d).unwrap();
    }

    #[test]
    fn a_sensor_at_its_critical_mark_is_reported() {
        let root = tmp("hwmon");
        let h = root.join("hwmon0");
        fs::create_dir_all(&h).unwrap();
        fs::write(h.join("temp1_input"), "45000\n").unwrap();
        fs::write(h.join("temp1_crit"), "100000\n").unwrap();
        fs::write(h.join("temp2_input"), "101000\n").unwrap();
        fs::write(h.join("temp2_crit"), "100000\n").unwrap();
        fs::write(h.join("temp3_input"), "garbage").unwrap();
        let hot = hot_sensors(&root);
        assert_eq!(hot, vec!["hwmon0/temp2: 101000 >= 100000 mC".to_owned()]);
        assert!(hot_sensors(&root.join("nowhere")).is_empty());
        fs::remove_dir_all(&root).unwrap();
    }
}
