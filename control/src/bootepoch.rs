//! The boot epoch: a number that grows at every start of a member,
//! whatever the wall clock does. Heartbeats carry it, and the peer tells a
//! restart (a higher epoch) from a replay (a lower or equal one); an epoch
//! taken from a wall clock that was stepped back would make the peer drop
//! every heartbeat of the restarted member as a replay. The last epoch is
//! kept in a file of the state directory; the next one is the larger of
//! the wall clock in milliseconds and the last one plus one.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Where the last boot epoch of node `name` is kept in `dir`.
pub fn epoch_file(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.boot-epoch"))
}

/// The epoch of this start: above the wall clock `now_ms` and above every
/// epoch used before (the file `path`); written back (synced, atomically)
/// before it is used. An unreadable file counts as absent; a file that
/// cannot be written is an error that says what to do.
pub fn next_epoch(path: &Path, now_ms: u64) -> Result<u64, String> {
    let last = std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let epoch = now_ms.max(last.saturating_add(1)).max(1);
    let write = || -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{epoch}")?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        format!(
            "cannot keep the boot epoch in {}: {e}; check that the state directory (control.state_dir) exists and is writable by root",
            path.display()
        )
    })?;
    Ok(epoch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tandem-epoch-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn the_epoch_follows_the_clock_and_grows_when_the_clock_goes_back() {
        let d = dir("back");
        let f = epoch_file(&d, "fw1");
        assert_eq!(next_epoch(&f, 1_000_000).unwrap(), 1_000_000);
        // Restarted within the same millisecond, then after the clock was
        // stepped back an hour: always above the last one.
        assert_eq!(next_epoch(&f, 1_000_000).unwrap(), 1_000_001);
        assert_eq!(next_epoch(&f, 1_000_000 - 360_000).unwrap(), 1_000_002);
        // The clock moves on past it: the clock again.
        assert_eq!(next_epoch(&f, 2_000_000).unwrap(), 2_000_000);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_damaged_file_counts_as_absent_and_an_unwritable_one_is_an_error() {
        let d = dir("bad");
        let f = epoch_file(&d, "fw1");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(&f, "not a number").unwrap();
        assert_eq!(next_epoch(&f, 5).unwrap(), 5);
        let e = next_epoch(Path::new("/proc/tandem-no/such/dir/x"), 5).unwrap_err();
        assert!(e.contains("control.state_dir"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
