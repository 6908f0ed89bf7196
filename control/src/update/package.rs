//! The firmware package: a tar archive of
//! - `manifest.json`: the product, the version, the K2K protocol version,
//!   and each file with its size, mode and SHA-256;
//! - `manifest.sig`: an Ed25519 signature of `manifest.json` (64 bytes)
//!   by a key the node trusts;
//! - the files the manifest lists (`bin/tandemd`, `bin/tandemctl`), in
//!   its order.
//!
//! [`unpack`] checks the signature before it reads anything the manifest
//! says, then each file's size and digest while it writes it into a
//! staging directory; any mismatch removes what was written and names
//! what was wrong. Only a complete, verified directory is returned, for
//! the caller to move into an installation slot.
//!
//! Keys: [`keygen`] writes a PKCS#8 Ed25519 key (the vendor's, kept off
//! the nodes) and its public half (`.pub`, hex), which a node trusts by
//! its presence in its trusted-keys directory.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use ring::digest::{Context, SHA256};
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};

/// The manifest's format version this code reads and writes.
pub const FORMAT: u32 = 1;
/// The product a package must be for.
pub const PRODUCT: &str = "tandem";
/// The files a package must carry.
pub const REQUIRED: [&str; 2] = ["bin/tandemd", "bin/tandemctl"];
/// The largest manifest read (bytes).
const MAX_MANIFEST: u64 = 64 * 1024;
/// The largest file a package may carry (bytes).
const MAX_FILE: u64 = 1 << 30;

/// What a package says of itself (signed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: u32,
    /// [`PRODUCT`].
    pub product: String,
    /// The tandem version it installs (`0.2.0`).
    pub version: String,
    /// The highest K2K protocol version that build speaks.
    pub k2k_version: u8,
    /// When it was built (Unix seconds).
    pub built_unix: u64,
    /// Its files, in the archive's order.
    pub files: Vec<FileEntry>,
}

/// One file of a package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Relative path (`bin/tandemd`).
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// Unix mode bits (0o755).
    pub mode: u32,
    /// SHA-256, hex.
    pub sha256: String,
}

/// Why a package is refused.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    /// Reading or writing failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: io::Error,
    },
    /// Not the layout of a package.
    #[error("not a tandem package: {0}")]
    Layout(String),
    /// The manifest does not parse or says something impossible.
    #[error("the package's manifest is invalid: {0}")]
    Manifest(String),
    /// No trusted key signed it.
    #[error("the package's signature is not from a trusted key ({0}); nothing was installed: add the vendor's public key to the trusted keys, or get a package signed by one")]
    Signature(String),
    /// A file differs from what the manifest says.
    #[error("{path} in the package does not match its manifest ({what}); nothing was installed: the package is damaged or was altered")]
    Digest {
        /// The file.
        path: String,
        /// How it differs.
        what: String,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> PackageError {
    let what = what.into();
    move |source| PackageError::Io { what, source }
}

/// A public key as a node keeps it: 32 bytes, hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKey {
    /// Where it came from (for messages).
    pub name: String,
    /// The key.
    pub key: [u8; 32],
}

impl TrustedKey {
    /// Parses the hex text of a `.pub` file.
    pub fn parse(name: &str, text: &str) -> Result<TrustedKey, String> {
        let b = crate::peer::files::unhex(text.trim())
            .map_err(|e| format!("{name}: not a hex public key: {e}"))?;
        let key: [u8; 32] = b
            .try_into()
            .map_err(|_| format!("{name}: an Ed25519 public key is 32 bytes (64 hex digits)"))?;
        Ok(TrustedKey {
            name: name.to_owned(),
            key,
        })
    }

    /// The `*.pub` files of `dir`; a file that does not parse is an error
    /// (a key the operator meant to trust must not be skipped silently).
    pub fn load_dir(dir: &Path) -> Result<Vec<TrustedKey>, String> {
        let rd = std::fs::read_dir(dir).map_err(|e| {
            format!(
                "cannot read the trusted keys in {}: {e} (put the vendor's public key there as NAME.pub)",
                dir.display()
            )
        })?;
        let mut keys = Vec::new();
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) != Some("pub") {
                continue;
            }
            let text = std::fs::read_to_string(&p)
                .map_err(|e| format!("cannot read {}: {e}", p.display()))?;
            keys.push(TrustedKey::parse(&p.display().to_string(), &text)?);
        }
        keys.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(keys)
    }
}

/// Writes a new signing key (PKCS#8, mode 0600) to `key` and its public
/// half (hex) to `key` + `.pub`.
pub fn keygen(key: &Path) -> Result<PathBuf, String> {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| "no randomness".to_owned())?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| "bad key".to_owned())?;
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(key)
            .map_err(|e| format!("cannot create {}: {e}", key.display()))?;
        f.write_all(pkcs8.as_ref())
            .map_err(|e| format!("cannot write {}: {e}", key.display()))?;
    }
    let public = key.with_extension("pub");
    std::fs::write(
        &public,
        format!("{}\n", crate::peer::files::hex(pair.public_key().as_ref())),
    )
    .map_err(|e| format!("cannot write {}: {e}", public.display()))?;
    Ok(public)
}

/// Reads `r` to its end: its size and SHA-256 (hex), each chunk also
/// written to `sink` if there is one.
pub fn digest_stream(
    r: &mut impl Read,
    mut sink: Option<&mut dyn Write>,
) -> io::Result<(u64, String)> {
    let mut ctx = Context::new(&SHA256);
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        ctx.update(&buf[..n]);
        if let Some(w) = sink.as_mut() {
            w.write_all(&buf[..n])?;
        }
    }
    Ok((size, crate::peer::files::hex(ctx.finish().as_ref())))
}

/// A file's size and SHA-256 (hex).
pub fn sha256_file(path: &Path) -> Result<(u64, String), PackageError> {
    let mut f = File::open(path).map_err(io_err(format!("opening {}", path.display())))?;
    digest_stream(&mut f, None).map_err(io_err(format!("reading {}", path.display())))
}

/// Builds the package `out` of `files` ((path in the package, source
/// file)), signed with the PKCS#8 key at `key`.
pub fn build(
    out: &Path,
    version: &str,
    k2k_version: u8,
    files: &[(String, PathBuf)],
    key: &Path,
) -> Result<Manifest, PackageError> {
    let pkcs8 = std::fs::read(key).map_err(io_err(format!("reading {}", key.display())))?;
    let pair = Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|_| {
        PackageError::Signature(format!("{} is not a PKCS#8 Ed25519 key", key.display()))
    })?;
    let mut entries = Vec::new();
    for (path, src) in files {
        check_path(path)?;
        let (size, sha256) = sha256_file(src)?;
        let mode = {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(src)
                .map_err(io_err(format!("reading {}", src.display())))?
                .permissions()
                .mode()
                & 0o777
        };
        entries.push(FileEntry {
            path: path.clone(),
            size,
            mode,
            sha256,
        });
    }
    let manifest = Manifest {
        format: FORMAT,
        product: PRODUCT.into(),
        version: version.into(),
        k2k_version,
        built_unix: crate::peer::confsync::now_unix(),
        files: entries,
    };
    check_manifest(&manifest)?;
    let text =
        serde_json::to_vec_pretty(&manifest).map_err(|e| PackageError::Manifest(e.to_string()))?;
    let sig = pair.sign(&text);
    let f = File::create(out).map_err(io_err(format!("creating {}", out.display())))?;
    let mut tar = tar::Builder::new(io::BufWriter::new(f));
    let mut add = |name: &str, data: &[u8], mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_mtime(manifest.built_unix);
        h.set_cksum();
        tar.append_data(&mut h, name, data)
            .map_err(io_err(format!("writing {}", out.display())))
    };
    add("manifest.json", &text, 0o644)?;
    add("manifest.sig", sig.as_ref(), 0o644)?;
    for ((_, src), e) in files.iter().zip(&manifest.files) {
        let mut h = tar::Header::new_gnu();
        h.set_size(e.size);
        h.set_mode(e.mode);
        h.set_mtime(manifest.built_unix);
        h.set_cksum();
        let f = File::open(src).map_err(io_err(format!("opening {}", src.display())))?;
        tar.append_data(&mut h, &e.path, f)
            .map_err(io_err(format!("writing {}", out.display())))?;
    }
    let w = tar
        .into_inner()
        .map_err(io_err(format!("writing {}", out.display())))?;
    let f = w.into_inner().map_err(|e| PackageError::Io {
        what: format!("writing {}", out.display()),
        source: e.into_error(),
    })?;
    f.sync_all()
        .map_err(io_err(format!("writing {}", out.display())))?;
    Ok(manifest)
}

/// A relative path of plain components (no `..`, no absolute path).
fn check_path(p: &str) -> Result<(), PackageError> {
    let ok = !p.is_empty()
        && p.len() <= 200
        && p.split('/').all(|c| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        });
    if ok {
        Ok(())
    } else {
        Err(PackageError::Manifest(format!(
            "{p:?} is not a relative path of letters, digits, '.', '_' and '-'"
        )))
    }
}

fn check_manifest(m: &Manifest) -> Result<(), PackageError> {
    if m.format != FORMAT {
        return Err(PackageError::Manifest(format!(
            "format {} (this tandem reads format {FORMAT})",
            m.format
        )));
    }
    if m.product != PRODUCT {
        return Err(PackageError::Manifest(format!(
            "a package for {:?}, not {PRODUCT:?}",
            m.product
        )));
    }
    crate::update::slots::check_version(&m.version).map_err(PackageError::Manifest)?;
    if m.k2k_version == 0 {
        return Err(PackageError::Manifest("K2K version 0".into()));
    }
    for f in &m.files {
        check_path(&f.path)?;
        if f.size > MAX_FILE {
            return Err(PackageError::Manifest(format!(
                "{} is {} bytes (at most {MAX_FILE})",
                f.path, f.size
            )));
        }
        if f.sha256.len() != 64 {
            return Err(PackageError::Manifest(format!(
                "{}: a SHA-256 is 64 hex digits",
                f.path
            )));
        }
    }
    for r in REQUIRED {
        if !m.files.iter().any(|f| f.path == r) {
            return Err(PackageError::Manifest(format!("no {r} in it")));
        }
    }
    let mut paths: Vec<&str> = m.files.iter().map(|f| f.path.as_str()).collect();
    paths.sort_unstable();
    if paths.windows(2).any(|w| w[0] == w[1]) {
        return Err(PackageError::Manifest("a file is listed twice".into()));
    }
    Ok(())
}

/// Reads at most `max` bytes of an entry.
fn read_small(r: &mut impl Read, max: u64, what: &str) -> Result<Vec<u8>, PackageError> {
    let mut v = Vec::new();
    r.take(max + 1)
        .read_to_end(&mut v)
        .map_err(io_err(format!("reading {what}")))?;
    if v.len() as u64 > max {
        return Err(PackageError::Layout(format!(
            "{what} is larger than {max} bytes"
        )));
    }
    Ok(v)
}

/// Checks the package at `pkg` against `trusted` and writes its files
/// under `staging` (created; it must not exist). On any error `staging`
/// is removed. Returns the manifest and the key that signed it.
pub fn unpack(
    pkg: &Path,
    trusted: &[TrustedKey],
    staging: &Path,
) -> Result<(Manifest, String), PackageError> {
    let r = unpack_inner(pkg, trusted, staging);
    if r.is_err() {
        let _ = std::fs::remove_dir_all(staging);
    }
    r
}

fn unpack_inner(
    pkg: &Path,
    trusted: &[TrustedKey],
    staging: &Path,
) -> Result<(Manifest, String), PackageError> {
    let f = File::open(pkg).map_err(io_err(format!("opening {}", pkg.display())))?;
    let mut archive = tar::Archive::new(io::BufReader::new(f));
    let mut entries = archive
        .entries()
        .map_err(io_err(format!("reading {}", pkg.display())))?;
    let mut next = |want: &str| -> Result<tar::Entry<'_, _>, PackageError> {
        let e = entries
            .next()
            .ok_or_else(|| PackageError::Layout(format!("it ends before {want}")))?
            .map_err(|e| PackageError::Layout(format!("{e} (before {want})")))?;
        let name = e
            .path()
            .map_err(|e| PackageError::Layout(e.to_string()))?
            .to_string_lossy()
            .into_owned();
        if name != want {
            return Err(PackageError::Layout(format!(
                "{name:?} where {want} should be"
            )));
        }
        if e.header().entry_type() != tar::EntryType::Regular {
            return Err(PackageError::Layout(format!("{want} is not a plain file")));
        }
        Ok(e)
    };
    let text = read_small(&mut next("manifest.json")?, MAX_MANIFEST, "manifest.json")?;
    let sig = read_small(&mut next("manifest.sig")?, 64, "manifest.sig")?;
    let signer = trusted
        .iter()
        .find(|k| {
            UnparsedPublicKey::new(&ED25519, &k.key)
                .verify(&text, &sig)
                .is_ok()
        })
        .ok_or_else(|| {
            PackageError::Signature(if trusted.is_empty() {
                "this node trusts no key".into()
            } else {
                format!(
                    "checked against {}",
                    trusted
                        .iter()
                        .map(|k| k.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
        })?;
    let manifest: Manifest =
        serde_json::from_slice(&text).map_err(|e| PackageError::Manifest(e.to_string()))?;
    check_manifest(&manifest)?;
    std::fs::create_dir(staging).map_err(io_err(format!("creating {}", staging.display())))?;
    for fe in &manifest.files {
        let mut e = next(&fe.path)?;
        if e.header().size().ok() != Some(fe.size) {
            return Err(PackageError::Digest {
                path: fe.path.clone(),
                what: format!(
                    "{} bytes, the manifest says {}",
                    e.header().size().unwrap_or(0),
                    fe.size
                ),
            });
        }
        let dest = staging.join(&fe.path);
        if let Some(d) = dest.parent() {
            std::fs::create_dir_all(d).map_err(io_err(format!("creating {}", d.display())))?;
        }
        let mut out = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(fe.mode & 0o755)
                .open(&dest)
                .map_err(io_err(format!("creating {}", dest.display())))?
        };
        let (size, got) = digest_stream(&mut e, Some(&mut out)).map_err(io_err(format!(
            "copying {} from the package to {}",
            fe.path,
            dest.display()
        )))?;
        out.sync_all()
            .map_err(io_err(format!("writing {}", dest.display())))?;
        if size != fe.size || got != fe.sha256 {
            return Err(PackageError::Digest {
                path: fe.path.clone(),
                what: format!("SHA-256 {got}, the manifest says {}", fe.sha256),
            });
        }
    }
    if let Some(extra) = entries.next() {
        let name = extra
            .ok()
            .and_then(|e| e.path().ok().map(|p| p.to_string_lossy().into_owned()))
            .unwrap_or_default();
        return Err(PackageError::Layout(format!(
            "{name:?} is not in the manifest"
        )));
    }
    Ok((manifest, signer.name.clone()))
}

/// The manifest of a package, checked against `trusted`, without
/// unpacking it.
pub fn inspect(pkg: &Path, trusted: &[TrustedKey]) -> Result<Manifest, PackageError> {
    let dir = std::env::temp_dir().join(format!(
        "tandem-inspect-{}-{}",
        std::process::id(),
        crate::peer::confsync::now_unix_ms()
    ));
    let r = unpack(pkg, trusted, &dir).map(|(m, _)| m);
    let _ = std::fs::remove_dir_all(&dir);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn dir(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("tandem-pkg-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    /// A key, two "binaries" and a package of them.
    fn package(d: &Path) -> (PathBuf, TrustedKey) {
        let key = d.join("vendor.key");
        let public = keygen(&key).unwrap();
        let tk =
            TrustedKey::parse("vendor.pub", &std::fs::read_to_string(public).unwrap()).unwrap();
        for (name, body) in [("tandemd", "daemon v2"), ("tandemctl", "cli v2")] {
            std::fs::write(d.join(name), body).unwrap();
        }
        let pkg = d.join("tandem-0.2.0.tpkg");
        build(
            &pkg,
            "0.2.0",
            3,
            &[
                ("bin/tandemd".into(), d.join("tandemd")),
                ("bin/tandemctl".into(), d.join("tandemctl")),
            ],
            &key,
        )
        .unwrap();
        (pkg, tk)
    }

    #[test]
    fn a_signed_package_unpacks_with_every_file_checked() {
        let d = dir("ok");
        let (pkg, tk) = package(&d.0);
        let staging = d.0.join("staging");
        let (m, signer) = unpack(&pkg, &[tk], &staging).unwrap();
        assert_eq!((m.version.as_str(), m.k2k_version), ("0.2.0", 3));
        assert_eq!(signer, "vendor.pub");
        assert_eq!(
            std::fs::read_to_string(staging.join("bin/tandemd")).unwrap(),
            "daemon v2"
        );
    }

    #[test]
    fn an_altered_file_a_foreign_key_or_no_key_is_refused_and_nothing_stays() {
        let d = dir("bad");
        let (pkg, tk) = package(&d.0);
        let staging = d.0.join("staging");
        // Another vendor's key.
        let other = d.0.join("other.key");
        let op = keygen(&other).unwrap();
        let ok = TrustedKey::parse("other.pub", &std::fs::read_to_string(op).unwrap()).unwrap();
        let e = unpack(&pkg, &[ok], &staging).unwrap_err();
        assert!(
            matches!(e, PackageError::Signature(_)) && e.to_string().contains("other.pub"),
            "{e}"
        );
        assert!(!staging.exists());
        let e = unpack(&pkg, &[], &staging).unwrap_err();
        assert!(e.to_string().contains("trusts no key"), "{e}");
        // One byte of tandemd changed (same length): the digest says so.
        let mut bytes = std::fs::read(&pkg).unwrap();
        let at = bytes.windows(9).position(|w| w == b"daemon v2").unwrap();
        bytes[at] = b'D';
        let altered = d.0.join("altered.tpkg");
        std::fs::write(&altered, &bytes).unwrap();
        let e = unpack(&altered, std::slice::from_ref(&tk), &staging).unwrap_err();
        assert!(
            matches!(&e, PackageError::Digest { path, .. } if path == "bin/tandemd"),
            "{e}"
        );
        assert!(!staging.exists(), "nothing stays");
        // The manifest changed: the signature no longer holds.
        let mut bytes = std::fs::read(&pkg).unwrap();
        let at = bytes.windows(5).position(|w| w == b"0.2.0").unwrap();
        bytes[at + 2] = b'9';
        std::fs::write(&altered, &bytes).unwrap();
        let e = unpack(&altered, std::slice::from_ref(&tk), &staging).unwrap_err();
        assert!(matches!(e, PackageError::Signature(_)), "{e}");
        // Not a package at all.
        std::fs::write(&altered, b"hello").unwrap();
        let e = unpack(&altered, &[tk], &staging).unwrap_err();
        assert!(matches!(e, PackageError::Layout(_)), "{e}");
        assert!(!staging.exists());
    }

    #[test]
    fn manifests_with_unsafe_paths_or_missing_binaries_are_refused() {
        for p in ["../x", "/etc/passwd", "bin//x", "bin/./x", "a b", ""] {
            assert!(check_path(p).is_err(), "{p}");
        }
        assert!(check_path("bin/tandemd").is_ok());
        let m = Manifest {
            format: FORMAT,
            product: PRODUCT.into(),
            version: "0.2.0".into(),
            k2k_version: 2,
            built_unix: 0,
            files: vec![FileEntry {
                path: "bin/tandemd".into(),
                size: 1,
                mode: 0o755,
                sha256: "0".repeat(64),
            }],
        };
        let e = check_manifest(&m).unwrap_err();
        assert!(e.to_string().contains("no bin/tandemctl"), "{e}");
    }
}
