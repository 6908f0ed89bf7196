//! The cluster directory as the configuration sync sees it: its manifest
//! (every file with its size and SHA-256), the member's sync state (the
//! revision and the manifest at the last sync), the staging of a revision
//! received from the peer and its atomic switch, and a line diff for
//! `hadiff`.
//!
//! A revision is applied whole or not at all:
//! 1. the received files are written into a staging directory beside the
//!    cluster directory (same file system), which starts as a copy of the
//!    current one; each file is checked against its size and SHA-256 when
//!    its last byte arrives, and the whole staging directory against the
//!    sender's manifest before anything else;
//! 2. the staged configuration is validated (merged with `node.ron`, the
//!    policy compiled) by the caller;
//! 3. one `renameat2(RENAME_EXCHANGE)` swaps the staging directory and
//!    the cluster directory: a reader sees the old revision or the new
//!    one, never a mix, also after a crash at any point;
//! 4. the old revision is kept beside as `<dir>.previous`.
//!
//! A half-received file or an interrupted sync never reaches the cluster
//! directory; stale staging directories are removed at start.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use ring::digest::{Context, SHA256};
use serde::{Deserialize, Serialize};

/// Most files in a cluster directory.
pub const MAX_FILES: usize = 1024;
/// Largest file.
pub const MAX_FILE: u64 = 16 * 1024 * 1024;
/// Longest relative path.
pub const MAX_PATH: usize = 255;

/// One file of a manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Its path relative to the cluster directory (`/`-separated).
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its SHA-256, in hex.
    pub sha256: String,
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The bytes of lower-case or upper-case hex `s`.
pub fn unhex(s: &str) -> Result<Vec<u8>, String> {
    if !s.len().is_multiple_of(2) {
        return Err(format!("hex of odd length {}", s.len()));
    }
    s.as_bytes()
        .chunks(2)
        .map(|p| {
            std::str::from_utf8(p)
                .ok()
                .and_then(|t| u8::from_str_radix(t, 16).ok())
                .ok_or_else(|| format!("{:?} is not hex", String::from_utf8_lossy(p)))
        })
        .collect()
}

/// SHA-256 of `bytes`, in hex.
pub fn sha256(bytes: &[u8]) -> String {
    let mut c = Context::new(&SHA256);
    c.update(bytes);
    hex(c.finish().as_ref())
}

/// Checks a path received from the peer before any disk access: relative,
/// `/`-separated names of `[A-Za-z0-9._-]` that are not `.` or `..`, at
/// most [`MAX_PATH`] bytes.
pub fn check_path(p: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/');
    if p.is_empty() || p.len() > MAX_PATH {
        return Err(format!(
            "path of {} bytes; allowed 1..={MAX_PATH} bytes",
            p.len()
        ));
    }
    if !p.chars().all(ok_char) {
        return Err(format!("{p:?} has a character outside [A-Za-z0-9._/-]"));
    }
    if p.split('/').any(|n| n.is_empty() || n == "." || n == "..") {
        return Err(format!(
            "{p:?} is not a plain relative path (an empty, . or .. name)"
        ));
    }
    Ok(())
}

/// The manifest of `dir`: every regular file below it, sorted by path.
/// Fails on a symbolic link, a special file, too many or too large files.
pub fn scan(dir: &Path) -> Result<Vec<FileEntry>, String> {
    let mut out = Vec::new();
    walk(dir, "", &mut out)?;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn walk(root: &Path, rel: &str, out: &mut Vec<FileEntry>) -> Result<(), String> {
    let here = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    let entries =
        fs::read_dir(&here).map_err(|e| format!("cannot list {}: {e}", here.display()))?;
    for e in entries {
        let e = e.map_err(|e| format!("cannot list {}: {e}", here.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let path = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        check_path(&path).map_err(|w| format!("{}: {w}", here.join(&name).display()))?;
        let kind = e
            .file_type()
            .map_err(|e| format!("{}: {e}", here.join(&name).display()))?;
        if kind.is_dir() {
            walk(root, &path, out)?;
        } else if kind.is_file() {
            if out.len() >= MAX_FILES {
                return Err(format!(
                    "{} holds more than {MAX_FILES} files",
                    root.display()
                ));
            }
            let full = root.join(&path);
            let bytes = read_bounded(&full)?;
            out.push(FileEntry {
                path,
                size: bytes.len() as u64,
                sha256: sha256(&bytes),
            });
        } else {
            return Err(format!(
                "{} is not a regular file or a directory (a link or a special file cannot be synchronized)",
                here.join(&name).display()
            ));
        }
    }
    Ok(())
}

/// The file at `path`, refused over [`MAX_FILE`].
pub fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    let size = fs::metadata(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    if size > MAX_FILE {
        return Err(format!(
            "{} is {size} bytes; at most {MAX_FILE} can be synchronized",
            path.display()
        ));
    }
    fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// The digest of a manifest: equal digests, identical directories.
pub fn digest(files: &[FileEntry]) -> String {
    let mut c = Context::new(&SHA256);
    for f in files {
        c.update(f.path.as_bytes());
        c.update(&[0]);
        c.update(f.size.to_string().as_bytes());
        c.update(&[0]);
        c.update(f.sha256.as_bytes());
        c.update(b"\n");
    }
    hex(c.finish().as_ref())
}

/// What differs between two manifests, by path: (path, here, there).
pub fn differences<'a>(
    here: &'a [FileEntry],
    there: &'a [FileEntry],
) -> Vec<(&'a str, Option<&'a FileEntry>, Option<&'a FileEntry>)> {
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < here.len() || j < there.len() {
        match (here.get(i), there.get(j)) {
            (Some(a), Some(b)) if a.path == b.path => {
                if a != b {
                    out.push((a.path.as_str(), Some(a), Some(b)));
                }
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) if a.path < b.path => {
                out.push((a.path.as_str(), Some(a), None));
                i += 1;
            }
            (Some(_), Some(b)) | (None, Some(b)) => {
                out.push((b.path.as_str(), None, Some(b)));
                j += 1;
            }
            (Some(a), None) => {
                out.push((a.path.as_str(), Some(a), None));
                i += 1;
            }
            (None, None) => break,
        }
    }
    out
}

/// What a member remembers of its last configuration sync (in its state
/// directory).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncState {
    /// The revision: the same on both members after a sync, one more
    /// than the larger of the two before it.
    pub revision: u64,
    /// The manifest digest at that sync: the directory differs from it
    /// when the configuration was changed here since.
    pub digest: String,
    /// When (Unix seconds).
    pub at: u64,
    /// The member that sent it (this one for a sync it sent, or the
    /// member's own serial for the state taken at the first start).
    pub from: String,
}

impl SyncState {
    /// Reads the state at `path`; `None` if there is none yet.
    pub fn load(path: &Path) -> Result<Option<SyncState>, String> {
        match fs::read(path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Writes it atomically (a temporary file, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<(), String> {
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| e.to_string())?;
        write_atomic(path, &bytes)
    }
}

/// Writes `bytes` to `path` through a temporary file, fsynced, renamed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    let res = (|| -> io::Result<()> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    res.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        format!("cannot write {}: {e}", path.display())
    })
}

/// The staging directory of a revision being received, beside the
/// cluster directory `dir`; removed when dropped unless switched in.
pub struct Staging {
    dir: PathBuf,
    staging: PathBuf,
    /// The sender's manifest: what the staging directory must hold.
    want: Vec<FileEntry>,
    /// The file being received: (path, bytes so far).
    current: Option<(String, Vec<u8>)>,
    done: bool,
}

/// The staging directories' name prefix: `<dir name>.staging-`.
fn staging_prefix(dir: &Path) -> String {
    format!(
        "{}.staging-",
        dir.file_name().unwrap_or_default().to_string_lossy()
    )
}

/// Removes what an interrupted sync left beside `dir`.
pub fn remove_stale_staging(dir: &Path) -> usize {
    let (Some(parent), prefix) = (dir.parent(), staging_prefix(dir)) else {
        return 0;
    };
    let Ok(entries) = fs::read_dir(parent) else {
        return 0;
    };
    let mut n = 0;
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix)
            && fs::remove_dir_all(e.path()).is_ok()
        {
            n += 1;
        }
    }
    n
}

impl Staging {
    /// A staging directory for the revision whose manifest is `want`,
    /// starting as a copy of the files of `dir` that `want` keeps as they
    /// are. Returns it with the paths the sender must send.
    pub fn begin(dir: &Path, want: Vec<FileEntry>) -> Result<(Staging, Vec<String>), String> {
        if want.len() > MAX_FILES {
            return Err(format!(
                "a manifest of {} files; at most {MAX_FILES}",
                want.len()
            ));
        }
        for f in &want {
            check_path(&f.path)?;
            if f.size > MAX_FILE {
                return Err(format!(
                    "{} is {} bytes; at most {MAX_FILE}",
                    f.path, f.size
                ));
            }
            if f.sha256.len() != 64 || unhex(&f.sha256).is_err() {
                return Err(format!("{}: {:?} is not a SHA-256", f.path, f.sha256));
            }
        }
        if want.windows(2).any(|w| w[0].path >= w[1].path) {
            return Err("the manifest is not sorted by path, or lists a path twice".into());
        }
        let ours = scan(dir)?;
        let parent = dir
            .parent()
            .ok_or_else(|| format!("{} has no parent directory", dir.display()))?;
        let mut nonce = [0u8; 8];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
            .map_err(|_| "no random numbers".to_string())?;
        let staging = parent.join(format!("{}{}", staging_prefix(dir), hex(&nonce)));
        {
            use std::os::unix::fs::DirBuilderExt;
            // The cluster file holds the pre-shared key: root only.
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&staging)
                .map_err(|e| format!("{}: {e}", staging.display()))?;
        }
        let s = Staging {
            dir: dir.to_path_buf(),
            staging,
            want,
            current: None,
            done: false,
        };
        let mut needed = Vec::new();
        for f in &s.want {
            if ours.iter().any(|o| o == f) {
                s.write_file(&f.path, &read_bounded(&dir.join(&f.path))?)?;
            } else {
                needed.push(f.path.clone());
            }
        }
        Ok((s, needed))
    }

    fn write_file(&self, rel: &str, bytes: &[u8]) -> Result<(), String> {
        let to = self.staging.join(rel);
        if let Some(p) = to.parent() {
            fs::create_dir_all(p).map_err(|e| format!("{}: {e}", p.display()))?;
        }
        let res = (|| -> io::Result<()> {
            use std::os::unix::fs::OpenOptionsExt;
            // Root only: the cluster file holds the pre-shared key.
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&to)?;
            f.write_all(bytes)?;
            f.sync_all()
        })();
        res.map_err(|e| format!("cannot write {}: {e}", to.display()))
    }

    /// Bytes of file `path` from `offset`; the file is checked and written
    /// when its last byte is in. Files come one at a time, in any order.
    pub fn put(&mut self, path: &str, offset: u64, data: &[u8]) -> Result<(), String> {
        let entry = self
            .want
            .iter()
            .find(|f| f.path == path)
            .ok_or_else(|| format!("{path} is not in the manifest of this sync"))?
            .clone();
        let (cur, bytes) = self
            .current
            .get_or_insert_with(|| (path.to_owned(), Vec::new()));
        if cur != path {
            return Err(format!("{path} started before {cur} was complete"));
        }
        if offset != bytes.len() as u64 {
            return Err(format!(
                "{path}: bytes from {offset} where {} were expected",
                bytes.len()
            ));
        }
        if bytes.len() as u64 + data.len() as u64 > entry.size {
            return Err(format!(
                "{path}: more than the {} bytes of the manifest",
                entry.size
            ));
        }
        bytes.extend_from_slice(data);
        if bytes.len() as u64 == entry.size {
            let (_, bytes) = self.current.take().unwrap_or_default();
            let got = sha256(&bytes);
            if got != entry.sha256 {
                return Err(format!(
                    "{path}: SHA-256 {got} where the manifest says {}",
                    entry.sha256
                ));
            }
            self.write_file(path, &bytes)?;
        }
        Ok(())
    }

    /// The staged directory (for validation before the switch).
    pub fn path(&self) -> &Path {
        &self.staging
    }

    /// Checks that the staging directory holds exactly the manifest.
    pub fn verify(&self) -> Result<(), String> {
        if let Some((p, b)) = &self.current {
            return Err(format!("{p} is incomplete ({} bytes)", b.len()));
        }
        let got = scan(&self.staging)?;
        if got != self.want {
            let missing: Vec<&str> = differences(&got, &self.want)
                .into_iter()
                .map(|(p, _, _)| p)
                .collect();
            return Err(format!(
                "the staged files differ from the sender's manifest: {}",
                missing.join(", ")
            ));
        }
        Ok(())
    }

    /// Swaps the staged revision in, atomically; the old one is kept as
    /// `<dir>.previous`.
    pub fn switch(mut self) -> Result<(), String> {
        self.verify()?;
        nix::fcntl::renameat2(
            None,
            &self.staging,
            None,
            &self.dir,
            nix::fcntl::RenameFlags::RENAME_EXCHANGE,
        )
        .map_err(|e| {
            format!(
                "cannot swap {} and {}: {e}",
                self.staging.display(),
                self.dir.display()
            )
        })?;
        self.done = true;
        // The old revision is at the staging name now.
        let previous = PathBuf::from(format!("{}.previous", self.dir.display()));
        let _ = fs::remove_dir_all(&previous);
        let _ = fs::rename(&self.staging, &previous);
        if let Some(parent) = self.dir.parent() {
            let _ = fs::File::open(parent).and_then(|d| d.sync_all());
        }
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_dir_all(&self.staging);
        }
    }
}

/// A unified diff of two texts, `---`/`+++` named `a_name` and `b_name`,
/// with 3 lines of context; empty when they are equal. Texts whose
/// differing middles (after the common start and end) would need more
/// than 4 million comparisons are only said to differ.
pub fn unified_diff(a: &str, b: &str, a_name: &str, b_name: &str) -> String {
    let a: Vec<&str> = a.lines().collect();
    let b: Vec<&str> = b.lines().collect();
    if a == b {
        return String::new();
    }
    let pre = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let suf = a[pre..]
        .iter()
        .rev()
        .zip(b[pre..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (am, bm) = (&a[pre..a.len() - suf], &b[pre..b.len() - suf]);
    let mut out = format!("--- {a_name}\n+++ {b_name}\n");
    // The comparison table is (n + 1) x (m + 1) counters: at most 4
    // million (16 MB); larger differences are only said to differ.
    if (am.len() + 1).saturating_mul(bm.len() + 1) > 4_000_000 {
        out += &format!(
            "@@ the files differ in lines {}..{} of {} and {}..{} of {} (too many to show) @@\n",
            pre + 1,
            pre + am.len(),
            a_name,
            pre + 1,
            pre + bm.len(),
            b_name
        );
        return out;
    }
    // (kind, line) over the whole texts: ' ' same, '-' only in a, '+' only
    // in b; the middle by a longest common subsequence.
    let mut ops: Vec<(char, &str)> = a[..pre].iter().map(|l| (' ', *l)).collect();
    let (n, m) = (am.len(), bm.len());
    let mut lcs = vec![0u32; (n + 1) * (m + 1)];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i * (m + 1) + j] = if am[i] == bm[j] {
                lcs[(i + 1) * (m + 1) + j + 1] + 1
            } else {
                lcs[(i + 1) * (m + 1) + j].max(lcs[i * (m + 1) + j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && am[i] == bm[j] {
            ops.push((' ', am[i]));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[(i + 1) * (m + 1) + j] >= lcs[i * (m + 1) + j + 1]) {
            ops.push(('-', am[i]));
            i += 1;
        } else {
            ops.push(('+', bm[j]));
            j += 1;
        }
    }
    ops.extend(a[a.len() - suf..].iter().map(|l| (' ', *l)));
    // Hunks: changes with up to 3 lines of context, merged when close.
    const CONTEXT: usize = 3;
    let changed: Vec<usize> = (0..ops.len()).filter(|&k| ops[k].0 != ' ').collect();
    let mut k = 0;
    while k < changed.len() {
        let start = changed[k].saturating_sub(CONTEXT);
        let mut end = changed[k];
        while k + 1 < changed.len() && changed[k + 1] <= end + 2 * CONTEXT + 1 {
            k += 1;
            end = changed[k];
        }
        k += 1;
        let end = (end + CONTEXT + 1).min(ops.len());
        // Line numbers of the hunk's start in a and b.
        let a_start = ops[..start].iter().filter(|o| o.0 != '+').count();
        let b_start = ops[..start].iter().filter(|o| o.0 != '-').count();
        let a_len = ops[start..end].iter().filter(|o| o.0 != '+').count();
        let b_len = ops[start..end].iter().filter(|o| o.0 != '-').count();
        out += &format!(
            "@@ -{},{a_len} +{},{b_len} @@\n",
            a_start + usize::from(a_len > 0),
            b_start + usize::from(b_len > 0)
        );
        for (kind, line) in &ops[start..end] {
            out.push(*kind);
            out += line;
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Tmp(PathBuf);
    impl Tmp {
        fn new(tag: &str) -> Tmp {
            let p = std::env::temp_dir().join(format!("tandem-files-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(p.join("cluster")).unwrap();
            Tmp(p)
        }
        fn dir(&self) -> PathBuf {
            self.0.join("cluster")
        }
    }
    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn entry(path: &str, bytes: &[u8]) -> FileEntry {
        FileEntry {
            path: path.into(),
            size: bytes.len() as u64,
            sha256: sha256(bytes),
        }
    }

    #[test]
    fn a_staged_revision_replaces_the_directory_whole() {
        let t = Tmp::new("switch");
        fs::write(t.dir().join("cluster.ron"), "old cluster").unwrap();
        fs::write(t.dir().join("policy.ron"), "old policy").unwrap();
        fs::write(t.dir().join("gone.ron"), "removed by the sync").unwrap();
        let want = vec![
            entry("cluster.ron", b"old cluster"),
            entry("groups/a.txt", b"new group file"),
            entry("policy.ron", b"new policy"),
        ];
        let (mut s, needed) = Staging::begin(&t.dir(), want.clone()).unwrap();
        assert_eq!(needed, ["groups/a.txt", "policy.ron"]);
        // Not switched yet: a verify fails while files are missing.
        assert!(s.verify().unwrap_err().contains("groups/a.txt"));
        s.put("policy.ron", 0, b"new ").unwrap();
        assert!(s.verify().unwrap_err().contains("incomplete"));
        s.put("policy.ron", 4, b"policy").unwrap();
        s.put("groups/a.txt", 0, b"new group file").unwrap();
        assert_eq!(
            fs::read_to_string(t.dir().join("policy.ron")).unwrap(),
            "old policy",
            "nothing reaches the directory before the switch"
        );
        s.switch().unwrap();
        assert_eq!(scan(&t.dir()).unwrap(), want);
        assert_eq!(
            fs::read_to_string(t.0.join("cluster.previous/gone.ron")).unwrap(),
            "removed by the sync"
        );
        assert_eq!(remove_stale_staging(&t.dir()), 0, "no staging left");
    }

    #[test]
    fn bad_bytes_paths_and_an_interrupted_sync_change_nothing() {
        let t = Tmp::new("refuse");
        fs::write(t.dir().join("policy.ron"), "policy").unwrap();
        let before = scan(&t.dir()).unwrap();
        for bad in ["../x", "/etc/passwd", "a//b", "a/./b", "sp ace", ""] {
            let r = Staging::begin(&t.dir(), vec![entry(bad, b"x")]);
            assert!(r.is_err(), "{bad:?} accepted");
        }
        let want = vec![entry("policy.ron", b"new policy")];
        let (mut s, _) = Staging::begin(&t.dir(), want.clone()).unwrap();
        assert!(s
            .put("other.ron", 0, b"x")
            .unwrap_err()
            .contains("not in the manifest"));
        assert!(s.put("policy.ron", 3, b"x").unwrap_err().contains("from 3"));
        assert!(s
            .put("policy.ron", 0, b"new policy and more")
            .unwrap_err()
            .contains("more than the 10 bytes"));
        let e = s.put("policy.ron", 0, b"NEW POLICY").unwrap_err();
        assert!(e.contains("SHA-256"), "{e}");
        drop(s);
        // A sync cut half-way leaves the directory and no staging.
        let (mut s, _) = Staging::begin(&t.dir(), want).unwrap();
        s.put("policy.ron", 0, b"new").unwrap();
        let staged = s.path().to_path_buf();
        assert!(s.switch().unwrap_err().contains("incomplete"));
        assert!(!staged.exists());
        assert_eq!(scan(&t.dir()).unwrap(), before);
        // A crash leaves a staging directory: removed at the next start.
        let (s, _) = Staging::begin(&t.dir(), vec![entry("policy.ron", b"x")]).unwrap();
        std::mem::forget(s);
        assert_eq!(remove_stale_staging(&t.dir()), 1);
    }

    #[test]
    fn a_link_in_the_directory_is_refused() {
        let t = Tmp::new("link");
        std::os::unix::fs::symlink("/etc/hostname", t.dir().join("host")).unwrap();
        assert!(scan(&t.dir()).unwrap_err().contains("not a regular file"));
    }

    #[test]
    fn differences_name_each_path_once() {
        let a = vec![entry("a", b"1"), entry("b", b"2"), entry("d", b"4")];
        let b = vec![entry("b", b"2"), entry("c", b"3"), entry("d", b"5")];
        let d: Vec<(&str, bool, bool)> = differences(&a, &b)
            .into_iter()
            .map(|(p, x, y)| (p, x.is_some(), y.is_some()))
            .collect();
        assert_eq!(
            d,
            [("a", true, false), ("c", false, true), ("d", true, true)]
        );
        assert_ne!(digest(&a), digest(&b));
        assert_eq!(digest(&a), digest(&a.clone()));
    }

    #[test]
    fn the_diff_shows_changed_lines_with_context() {
        let a = "1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n";
        let b = "1\n2\n3\n4\nfive\n6\n7\n8\n9\n10\n11\n";
        let d = unified_diff(a, b, "peer", "local");
        assert_eq!(
            d,
            "--- peer\n+++ local\n@@ -2,9 +2,10 @@\n 2\n 3\n 4\n-5\n+five\n 6\n 7\n 8\n 9\n 10\n+11\n"
        );
        assert_eq!(unified_diff(a, a, "x", "y"), "");
        // Far apart: two hunks.
        let long: String = (1..=30).map(|i| format!("{i}\n")).collect();
        let changed: String = (1..=30)
            .map(|i| match i {
                3 => "three\n".to_owned(),
                27 => "twenty-seven\n".to_owned(),
                _ => format!("{i}\n"),
            })
            .collect();
        let d = unified_diff(&long, &changed, "a", "b");
        assert_eq!(d.matches("@@ -").count(), 2, "{d}");
        assert!(d.contains("@@ -1,6 +1,6 @@\n 1\n 2\n-3\n+three\n"), "{d}");
    }

    #[test]
    fn hex_round_trips_and_refuses_garbage() {
        assert_eq!(unhex(&hex(b"\x00\xffab")).unwrap(), b"\x00\xffab");
        assert!(unhex("abc").is_err());
        assert!(unhex("zz").is_err());
    }
}
