//! The node's TPM 2.0: measuring `tandemd` into a PCR at start, and
//! sealing a secret (the HA key's material) so that it unseals without
//! anybody's help while the measured software is unchanged, and with the
//! operator's TPM password after an update.
//!
//! # Why tpm2-tools
//!
//! Every TPM operation runs one of Debian's tpm2-tools 5.4 (`tpm2_pcrread`,
//! `tpm2_create`, `tpm2_unseal`, ...) as a subprocess against an explicit
//! TCTI (`-T device:/dev/tpmrm0` in production, `-T
//! swtpm:host=127.0.0.1,port=P` against the emulator in the tests), and
//! not the `tss-esapi` crate:
//! - no FFI and no TSS library state in `tandemd` itself: a TPM stack
//!   that crashes or hangs takes one subprocess with it, which is killed
//!   after a bounded time ([`TOOL_TIMEOUT`]);
//! - every step is a command an operator can repeat by hand against the
//!   same TCTI; the errors name the command that failed, with the tool's
//!   own message.
//!
//! # The sealed secret
//!
//! [`Tpm::seal`] creates a sealed data object (at most 128 bytes) under a
//! storage key kept at a persistent handle (0x81000100 by default, see
//! [`Tpm::with_persistent`]). The storage key (an ECC P-256 primary key of
//! the owner hierarchy, with an empty authorization) is created and made
//! persistent at the first seal, with the TPM password; later unseals use
//! it without any password. The object's policy is
//!
//! ```text
//! PolicyOR( PolicyPCR(sha256:<pcr> = its value at sealing),
//!           PolicySecret(owner) )
//! ```
//!
//! and its attributes allow no password use (`userwithauth` clear,
//! `adminwithpolicy` set): it unseals through one of the two branches
//! only.
//! - [`Tpm::unseal_pcr`]: the PCR branch; at every start, without
//!   anybody. It fails with [`TpmError::PcrChanged`] once the PCR differs
//!   (another `tandemd` binary was measured: an update).
//! - [`Tpm::unseal_owner`]: the owner branch, with the TPM password (the
//!   owner hierarchy's authorization, see [`Tpm::set_password`]). The
//!   branch names the owner hierarchy, not its password: changing the
//!   password does not invalidate sealed secrets.
//! - [`Tpm::pcrseal`]: unseal with the password, seal again to the current
//!   PCR value (`tandemctl system tpm pcrseal tpmpassword=...`).
//!
//! The PolicySecret(owner) branch digest does not depend on the TPM nor on
//! the password; it is computed here ([`owner_branch_digest`]) so that an
//! unseal through the PCR branch needs no password, and checked against
//! the TPM's own computation (a trial session) at every seal.
//!
//! # Secrets and resources
//!
//! Secrets never appear on a command line (argv is visible in `/proc`):
//! passwords reach the tools as `file:PATH` (a 0600 file holding
//! `hex:<password>`), the sealed data through stdin; unsealed data is read
//! from the tool's stdout into a [`Zeroizing`] buffer. Every operation works
//! in its own 0700 subdirectory of the working directory, whose files are
//! overwritten with zeros and removed when it ends, also on errors.
//!
//! A TPM without a resource manager (swtpm, `/dev/tpm0`) keeps what a tool
//! leaves loaded; its room is small (3 transient objects in swtpm, then
//! `0x902`). Every policy session is flushed through its file when the
//! operation ends, and all transient objects (`tpm2_flushcontext -t`)
//! after each tool that loads one. Operations of one [`Tpm`] are
//! serialized.

use std::cell::{Cell, RefCell};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ring::digest::{digest, Context, SHA256};
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::peer::files::{hex, unhex};

/// The persistent handle of the storage key unless told otherwise
/// ([`Tpm::with_persistent`]).
pub const DEFAULT_PERSISTENT: u32 = 0x8100_0100;
/// The longest a tool may run before it is killed.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a key generation (`tpm2_createprimary`, `tpm2_create`) may
/// run before it is killed.
pub const KEYGEN_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest [`Tpm::health`] waits for the TPM.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);
/// The most bytes a sealed data object holds (TPM `MAX_SYM_DATA`).
pub const MAX_SECRET: usize = 128;
/// The longest TPM password [`Tpm::set_password`] sets (bytes): the size
/// of a SHA-256 digest, which every TPM accepts for a hierarchy.
pub const MAX_PASSWORD: usize = 32;

/// The storage key's template: ECC P-256 with AES-128-CFB, SHA-256 names,
/// a restricted decryption key without dictionary-attack protection (its
/// authorization is empty). Primary keys are derived from the hierarchy's
/// seed and the template: the same template gives the same key.
const PRIMARY_ALG: &str = "ecc256:aes128cfb";
const PRIMARY_ATTRS: &str =
    "restricted|decrypt|fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda";
/// The sealed object's attributes: policy use only (`userwithauth` clear,
/// `adminwithpolicy` set), bound to this TPM and parent, and exempt from
/// the dictionary-attack lockout (a failed PCR policy is not a guess).
const SEALED_ATTRS: &str = "fixedtpm|fixedparent|adminwithpolicy|noda";

/// `TPM_CC_PolicySecret`.
const TPM_CC_POLICY_SECRET: u32 = 0x0000_0151;
/// `TPM_RH_OWNER`: the name of the owner hierarchy.
const TPM_RH_OWNER: u32 = 0x4000_0001;

// Response codes, as `rc_kind` reduces them (format 1: without the
// handle/session/parameter number; format 0: as they are).
const RC_VALUE: u32 = 0x084;
const RC_HANDLE: u32 = 0x08B;
const RC_AUTH_FAIL: u32 = 0x08E;
const RC_POLICY_FAIL: u32 = 0x09D;
const RC_BAD_AUTH: u32 = 0x0A2;
const RC_OBJECT_MEMORY: u32 = 0x902;
const RC_SESSION_MEMORY: u32 = 0x903;
const RC_SESSION_HANDLES: u32 = 0x905;
const RC_OBJECT_HANDLES: u32 = 0x906;
const RC_LOCKOUT: u32 = 0x921;
/// The TSS layer of the TCTI (`TSS2_TCTI_RC_LAYER`).
const TCTI_LAYER: u32 = 10;

/// What the operator is told when the PCR branch no longer matches.
const PCRSEAL_ADVICE: &str =
    "run `tandemctl system tpm pcrseal tpmpassword=<password> serial=local|passive`";

/// Why a TPM operation failed. Each message says what failed, what the
/// tool said, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum TpmError {
    /// A tool of tpm2-tools cannot be run.
    #[error("cannot run {tool}: {source}; install the Debian package tpm2-tools")]
    NotInstalled {
        /// The tool (`tpm2_unseal`).
        tool: String,
        /// Why it could not start.
        source: io::Error,
    },
    /// A tool did not finish in time and was killed.
    #[error("{what}: `{command}` did not finish within {secs} s and was killed; check that the TPM at {tcti} answers (`tpm2_getcap -T {tcti} properties-fixed`) and that no other program holds it")]
    Timeout {
        /// What was being done.
        what: String,
        /// The command line.
        command: String,
        /// The TCTI.
        tcti: String,
        /// The limit.
        secs: u64,
    },
    /// The TPM cannot be reached through the TCTI.
    #[error("{what}: cannot reach the TPM at {tcti} ({stderr}); check that the TPM device exists (/dev/tpmrm0) and tandemd may open it, or that the TPM emulator runs")]
    Unreachable {
        /// What was being done.
        what: String,
        /// The TCTI.
        tcti: String,
        /// The tool's error output, trimmed.
        stderr: String,
    },
    /// The TPM password (the owner hierarchy's authorization) is wrong.
    #[error("{what}: the TPM password is wrong ({stderr}); give the TPM password (the owner hierarchy's authorization, as last set). The TPM does not count wrong owner passwords toward its dictionary-attack lockout (TPM 2.0 exempts every hierarchy but lockout's), so it does not block repeated guesses: keep the password long and unguessable")]
    BadPassword {
        /// What was being done.
        what: String,
        /// The tool's error output, trimmed.
        stderr: String,
    },
    /// The TPM refuses authorizations after too many failures.
    #[error("{what}: the TPM is in its dictionary-attack lockout after too many wrong authorizations ({stderr}); wait for it to expire (`tpm2_getcap -T {tcti} properties-variable` shows TPM2_PT_LOCKOUT_*) or reset it with the lockout authorization (`tpm2_dictionarylockout -T {tcti} -c -p <lockout password>`)")]
    Lockout {
        /// What was being done.
        what: String,
        /// The TCTI.
        tcti: String,
        /// The tool's error output, trimmed.
        stderr: String,
    },
    /// The PCR no longer has the value the secret was sealed to.
    #[error("cannot unseal the secret: the PCR values changed since the secret was sealed (an update; PCR {pcr}): {advice} ({stderr})", advice = PCRSEAL_ADVICE)]
    PcrChanged {
        /// The PCR.
        pcr: u8,
        /// The tool's error output, trimmed.
        stderr: String,
    },
    /// The TPM has no room for another object or session.
    #[error("{what}: the TPM has no room for another object or session ({stderr}); something left them loaded: flush them with `tpm2_flushcontext -T {tcti} -t` and `tpm2_flushcontext -T {tcti} -s`, then try again")]
    Full {
        /// What was being done.
        what: String,
        /// The TCTI.
        tcti: String,
        /// The tool's error output, trimmed.
        stderr: String,
    },
    /// The storage key the secret was sealed under is not in the TPM.
    #[error("the TPM has no storage key at handle {handle:#010x} (the TPM was cleared, or the key evicted): a secret sealed under it cannot be unsealed any more; set the secret up again and seal it with the TPM password")]
    NoStorageKey {
        /// The persistent handle.
        handle: u32,
    },
    /// A tool failed for another reason.
    #[error("{0}")]
    Failed(Box<ToolFailure>),
    /// The TPM answered something this code does not expect.
    #[error("the TPM answered something unexpected: {0}; report it with the output of `tpm2_getcap properties-fixed`")]
    Unexpected(String),
    /// Reading or writing a local file failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: io::Error,
    },
    /// A stored sealed secret does not parse.
    #[error(
        "the stored sealed secret is invalid ({0}); it cannot be unsealed: set the secret up again"
    )]
    Blob(String),
    /// An argument is out of range.
    #[error("{0}")]
    Invalid(String),
}

/// How a tool failed, for [`TpmError::Failed`].
#[derive(Debug)]
pub struct ToolFailure {
    /// What was being done.
    pub what: String,
    /// The command line (no secrets: they are in files).
    pub command: String,
    /// How it ended (`exit status: 1`).
    pub status: String,
    /// The TPM response code in the tool's message, if any.
    pub code: Option<u32>,
    /// The tool's error output, trimmed.
    pub stderr: String,
    /// What to do.
    pub advice: String,
}

impl std::fmt::Display for ToolFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: `{}` failed ({}): {}",
            self.what, self.command, self.status, self.stderr
        )?;
        if self.advice.is_empty() {
            write!(
                f,
                "; repeat the command by hand (add -V for a trace) to see more"
            )
        } else {
            write!(f, "; {}", self.advice)
        }
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> TpmError {
    let what = what.into();
    move |source| TpmError::Io { what, source }
}

/// What [`Tpm::measure_file`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measured {
    /// The file's SHA-256.
    pub digest: [u8; 32],
    /// The PCR's value afterwards.
    pub pcr_value: [u8; 32],
}

/// A sealed secret as the caller stores it: the sealed data object's
/// public and private areas (`tpm2_create -u` / `-r`; the private area is
/// encrypted by the TPM's storage key and useless elsewhere) and the PCR
/// value its policy names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// `TPM2B_PUBLIC` (the `tpm2_create -u` output).
    pub public: Vec<u8>,
    /// `TPM2B_PRIVATE` (the `tpm2_create -r` output).
    pub private: Vec<u8>,
    /// The SHA-256 bank value of the PCR when it was sealed.
    pub pcr_value: [u8; 32],
}

/// The JSON form of [`Sealed`]: each field in hex.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SealedJson {
    public: String,
    private: String,
    pcr_value: String,
}

impl Sealed {
    /// `{"public":"<hex>","private":"<hex>","pcr_value":"<hex>"}`.
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "public": hex(&self.public),
            "private": hex(&self.private),
            "pcr_value": hex(&self.pcr_value),
        })
        .to_string()
    }

    /// Parses [`Sealed::to_json`]'s output.
    pub fn from_json(text: &str) -> Result<Sealed, TpmError> {
        let j: SealedJson =
            serde_json::from_str(text).map_err(|e| TpmError::Blob(format!("not its JSON: {e}")))?;
        let field = |name: &str, v: &str| {
            unhex(v).map_err(|e| TpmError::Blob(format!("{name} is not hex: {e}")))
        };
        let public = field("public", &j.public)?;
        let private = field("private", &j.private)?;
        let pcr_value: [u8; 32] = field("pcr_value", &j.pcr_value)?
            .try_into()
            .map_err(|_| TpmError::Blob("pcr_value is not 32 bytes".to_owned()))?;
        if public.is_empty() || private.is_empty() || public.len() > 4096 || private.len() > 4096 {
            return Err(TpmError::Blob(
                "its public or private area is empty or too large".to_owned(),
            ));
        }
        Ok(Sealed {
            public,
            private,
            pcr_value,
        })
    }
}

/// The policy digest of `PolicySecret(owner)` with an empty policyRef, in
/// a SHA-256 session: `H(H(0^32 || TPM_CC_PolicySecret || name(owner)) ||
/// policyRef)` (TPM 2.0 part 3, PolicySecret; the name of a hierarchy is
/// its handle). It is the same on every TPM and for every owner password.
pub fn owner_branch_digest() -> [u8; 32] {
    let mut c = Context::new(&SHA256);
    c.update(&[0u8; 32]);
    c.update(&TPM_CC_POLICY_SECRET.to_be_bytes());
    c.update(&TPM_RH_OWNER.to_be_bytes());
    let inner = c.finish();
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, inner.as_ref()).as_ref());
    out
}

/// The value a resettable PCR holds once [`Tpm::measure_file`] measured a
/// binary of SHA-256 `digest` into it: `SHA-256(0^32 || digest)` (a reset
/// PCR is all zeros; an extension hashes the old value and the digest).
/// An update seals the cluster key to this value for its new version.
pub fn predicted_pcr(digest: &[u8; 32]) -> [u8; 32] {
    let mut ctx = Context::new(&SHA256);
    ctx.update(&[0u8; 32]);
    ctx.update(digest);
    ctx.finish()
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

/// The node's TPM, reached through tpm2-tools with an explicit TCTI.
#[derive(Debug)]
pub struct Tpm {
    /// The TCTI every tool gets (`-T`).
    tcti: String,
    /// The PCR (SHA-256 bank) measurements go to and secrets are sealed to.
    pcr: u8,
    /// The root-only (0700) working directory for context and secret files.
    dir: PathBuf,
    /// The storage key's persistent handle.
    persistent: u32,
    /// Serializes the operations (their sessions and flushes).
    lock: Mutex<()>,
}

/// Numbers the working subdirectories of this process.
static SEQ: AtomicU64 = AtomicU64::new(0);

impl Tpm {
    /// A TPM reached with `tcti` (`device:/dev/tpmrm0`,
    /// `swtpm:host=127.0.0.1,port=2321`), measuring into and sealing to
    /// PCR `pcr` (SHA-256 bank), with `dir` as its working directory:
    /// created with mode 0700 if missing, set to 0700 if not; it must be
    /// this user's. Leftovers of earlier processes in it are overwritten
    /// and removed.
    pub fn new(tcti: impl Into<String>, pcr: u8, dir: impl Into<PathBuf>) -> Result<Tpm, TpmError> {
        let tcti = tcti.into();
        let dir = dir.into();
        if tcti.trim().is_empty() {
            return Err(TpmError::Invalid(
                "no TPM TCTI given: give one such as device:/dev/tpmrm0".to_owned(),
            ));
        }
        if pcr > 23 {
            return Err(TpmError::Invalid(format!(
                "PCR {pcr} does not exist: a TPM has PCRs 0 to 23"
            )));
        }
        let text = dir.to_str().ok_or_else(|| {
            TpmError::Invalid(format!(
                "the TPM working directory {} is not UTF-8: choose another",
                dir.display()
            ))
        })?;
        // tpm2-tools split their arguments at these characters
        // (`session:FILE+AUTH`, `sha256:FILE,FILE`).
        if !dir.is_absolute() || text.contains([',', '+', ':']) {
            return Err(TpmError::Invalid(format!(
                "the TPM working directory {} must be an absolute path without ',', '+' or ':'",
                dir.display()
            )));
        }
        prepare_dir(&dir)?;
        remove_stale(&dir);
        Ok(Tpm {
            tcti,
            pcr,
            dir,
            persistent: DEFAULT_PERSISTENT,
            lock: Mutex::new(()),
        })
    }

    /// The same TPM with the storage key at persistent handle `handle`
    /// (owner range 0x81000000 to 0x817FFFFF).
    pub fn with_persistent(mut self, handle: u32) -> Result<Tpm, TpmError> {
        if !(0x8100_0000..=0x817F_FFFF).contains(&handle) {
            return Err(TpmError::Invalid(format!(
                "{handle:#010x} is not an owner persistent handle: choose one from 0x81000000 to 0x817fffff"
            )));
        }
        self.persistent = handle;
        Ok(self)
    }

    /// The TCTI.
    pub fn tcti(&self) -> &str {
        &self.tcti
    }

    /// The PCR.
    pub fn pcr(&self) -> u8 {
        self.pcr
    }

    /// The storage key's persistent handle.
    pub fn persistent(&self) -> u32 {
        self.persistent
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the TPM answers, within [`HEALTH_TIMEOUT`]:
    /// `tpm2_getcap properties-fixed`.
    pub fn health(&self) -> Result<(), TpmError> {
        let _g = self.lock();
        let out = self.tool(
            "checking the TPM",
            "tpm2_getcap",
            &["properties-fixed".to_owned()],
            None,
            HEALTH_TIMEOUT,
            "check the TPM with `tpm2_selftest` and the kernel log",
        )?;
        if !String::from_utf8_lossy(&out).contains("TPM2_PT_FAMILY_INDICATOR") {
            return Err(TpmError::Unexpected(
                "tpm2_getcap properties-fixed did not list TPM2_PT_FAMILY_INDICATOR".to_owned(),
            ));
        }
        Ok(())
    }

    /// The SHA-256 bank value of the PCR: `tpm2_pcrread sha256:<pcr> -o FILE`.
    pub fn read_pcr(&self) -> Result<[u8; 32], TpmError> {
        let _g = self.lock();
        let work = Work::new(self)?;
        self.read_pcr_in(&work)
    }

    /// Extends the PCR's SHA-256 bank with `digest`:
    /// `tpm2_pcrextend <pcr>:sha256=<hex>`.
    pub fn extend(&self, digest: &[u8; 32]) -> Result<(), TpmError> {
        let _g = self.lock();
        self.extend_locked(digest)
    }

    /// Measures `path` (its SHA-256) into the PCR: resets the PCR, then
    /// extends it with the digest, so that the PCR holds
    /// [`predicted_pcr`]`(digest)` whatever ran before, in this boot or
    /// the last: a restart of the same binary, a rollback to the previous
    /// version and a reboot all give the same value.
    ///
    /// Commands: `tpm2_pcrreset <pcr>`, `tpm2_pcrextend`, `tpm2_pcrread`.
    /// The PCR must be resettable from locality 0 (16 or 23 in the PC
    /// Client profile; the configuration allows no other).
    pub fn measure_file(&self, path: &Path) -> Result<Measured, TpmError> {
        let digest = sha256_file(path)?;
        let _g = self.lock();
        let work = Work::new(self)?;
        self.tool(
            &format!("resetting PCR {}", self.pcr),
            "tpm2_pcrreset",
            &[self.pcr.to_string()],
            None,
            TOOL_TIMEOUT,
            "tandemd measures into a PCR that locality 0 may reset: 16 or 23 (control.tpm.pcr)",
        )?;
        self.extend_locked(&digest)?;
        let pcr_value = self.read_pcr_in(&work)?;
        let expected = predicted_pcr(&digest);
        if pcr_value != expected {
            return Err(TpmError::Unexpected(format!(
                "PCR {} holds {} after its reset and one extension, not {}: another program extends it too",
                self.pcr,
                hex(&pcr_value),
                hex(&expected)
            )));
        }
        Ok(Measured { digest, pcr_value })
    }

    /// Changes the TPM password, the owner hierarchy's authorization,
    /// from `old` (`None`: empty, as a new or cleared TPM has it) to `new`
    /// (at most [`MAX_PASSWORD`] bytes; empty clears it):
    /// `tpm2_changeauth -c owner [-p file:OLD] file:NEW`.
    pub fn set_password(&self, old: Option<&str>, new: &str) -> Result<(), TpmError> {
        if new.len() > MAX_PASSWORD {
            return Err(TpmError::Invalid(format!(
                "the TPM password is {} bytes long: give at most {MAX_PASSWORD}",
                new.len()
            )));
        }
        let _g = self.lock();
        let work = Work::new(self)?;
        let new_file = work.password("new", new)?;
        let mut args = vec!["-c".to_owned(), "owner".to_owned()];
        if let Some(old) = old {
            args.push("-p".to_owned());
            args.push(work.password("old", old)?);
        }
        args.push(new_file);
        self.tool(
            "changing the TPM password",
            "tpm2_changeauth",
            &args,
            None,
            TOOL_TIMEOUT,
            "check that the TPM is not owned by another program (tpm2_getcap properties-variable shows ownerAuthSet)",
        )?;
        Ok(())
    }

    /// Seals `secret` (1 to [`MAX_SECRET`] bytes) to the PCR's current
    /// value, or the TPM password `password` (see the module's doc). The
    /// password authorizes making the storage key persistent (the first
    /// time) and computing the owner branch; a wrong one is
    /// [`TpmError::BadPassword`].
    ///
    /// Commands: `tpm2_pcrread`; three trial sessions
    /// (`tpm2_startauthsession`, then `tpm2_policypcr -f -L`,
    /// `tpm2_policysecret -c owner -L`, `tpm2_policyor -L sha256:A,B`,
    /// each `tpm2_flushcontext`ed); `tpm2_getcap handles-persistent` and,
    /// without a storage key, `tpm2_createprimary -C o` and
    /// `tpm2_evictcontrol -C o`; `tpm2_create -C <persistent> -L -i -`.
    pub fn seal(&self, secret: &[u8], password: &str) -> Result<Sealed, TpmError> {
        let _g = self.lock();
        self.seal_locked(secret, None, Some(password))
    }

    /// Seals `secret` without the TPM password, to the PCR value `pcr`
    /// (`None`: its current value): what tandemd does by itself (a key
    /// file found at start, the hand-off to an update's new version).
    /// The owner branch is the computed [`owner_branch_digest`] (the TPM
    /// checks it only when the branch is used); the storage key must
    /// exist, or the owner hierarchy have no password yet (a new TPM),
    /// else [`TpmError::BadPassword`].
    pub fn seal_unattended(
        &self,
        secret: &[u8],
        pcr: Option<&[u8; 32]>,
    ) -> Result<Sealed, TpmError> {
        let _g = self.lock();
        self.seal_locked(secret, pcr, None)
    }

    /// Unseals through the PCR branch: no password, the PCR must have the
    /// value it had at sealing, else [`TpmError::PcrChanged`].
    ///
    /// Commands: `tpm2_load -C <persistent>`; a trial `tpm2_policypcr` for
    /// the branch digest; `tpm2_startauthsession --policy-session`,
    /// `tpm2_policypcr -f`, `tpm2_policyor`, `tpm2_unseal -p session:FILE`,
    /// `tpm2_flushcontext`.
    pub fn unseal_pcr(&self, sealed: &Sealed) -> Result<Zeroizing<Vec<u8>>, TpmError> {
        let _g = self.lock();
        self.unseal_locked(sealed, Branch::Pcr)
    }

    /// Unseals through the owner branch with the TPM password, whatever
    /// the PCR; a wrong password is [`TpmError::BadPassword`].
    ///
    /// Commands: as [`Tpm::unseal_pcr`], with `tpm2_policysecret -c owner
    /// file:PASSWORD` in place of `tpm2_policypcr` in the policy session.
    pub fn unseal_owner(
        &self,
        sealed: &Sealed,
        password: &str,
    ) -> Result<Zeroizing<Vec<u8>>, TpmError> {
        let _g = self.lock();
        self.unseal_locked(sealed, Branch::Owner(password))
    }

    /// `SYSTEM TPM PCRSEAL tpmpassword=...`: unseals `sealed` with the TPM
    /// password and seals the secret again to the PCR's current value
    /// (same storage key); the caller stores the new blob in place of the
    /// old one.
    pub fn pcrseal(&self, sealed: &Sealed, password: &str) -> Result<Sealed, TpmError> {
        let _g = self.lock();
        let secret = self.unseal_locked(sealed, Branch::Owner(password))?;
        self.seal_locked(&secret, None, Some(password))
    }

    /// [`Tpm::pcrseal`] to the PCR value `pcr` instead of the PCR's
    /// current one: for a tandemd that does not run ([`predicted_pcr`] of
    /// its digest), without touching the PCR.
    pub fn pcrseal_to(
        &self,
        sealed: &Sealed,
        password: &str,
        pcr: &[u8; 32],
    ) -> Result<Sealed, TpmError> {
        let _g = self.lock();
        let secret = self.unseal_locked(sealed, Branch::Owner(password))?;
        self.seal_locked(&secret, Some(pcr), Some(password))
    }

    // ---- the operations, under the lock ----

    fn read_pcr_in(&self, work: &Work<'_>) -> Result<[u8; 32], TpmError> {
        let out = work.path("pcr.bin");
        self.tool(
            &format!("reading PCR {}", self.pcr),
            "tpm2_pcrread",
            &[
                format!("sha256:{}", self.pcr),
                "-o".to_owned(),
                path_arg(&out),
            ],
            None,
            TOOL_TIMEOUT,
            "check that the TPM has an allocated SHA-256 PCR bank (`tpm2_getcap pcrs`)",
        )?;
        let b = fs::read(&out).map_err(io_err(format!("reading {}", out.display())))?;
        b.try_into().map_err(|b: Vec<u8>| {
            TpmError::Unexpected(format!(
                "tpm2_pcrread gave {} bytes for one SHA-256 PCR, not 32 (is the SHA-256 bank allocated?)",
                b.len()
            ))
        })
    }

    fn extend_locked(&self, digest: &[u8; 32]) -> Result<(), TpmError> {
        self.tool(
            &format!("extending PCR {}", self.pcr),
            "tpm2_pcrextend",
            &[format!("{}:sha256={}", self.pcr, hex(digest))],
            None,
            TOOL_TIMEOUT,
            "check that the TPM has an allocated SHA-256 PCR bank (`tpm2_getcap pcrs`)",
        )?;
        Ok(())
    }

    fn seal_locked(
        &self,
        secret: &[u8],
        pcr: Option<&[u8; 32]>,
        password: Option<&str>,
    ) -> Result<Sealed, TpmError> {
        if secret.is_empty() || secret.len() > MAX_SECRET {
            return Err(TpmError::Invalid(format!(
                "a sealed secret is 1 to {MAX_SECRET} bytes, not {}",
                secret.len()
            )));
        }
        let work = Work::new(self)?;
        let pw = work.password("owner", password.unwrap_or(""))?;
        let pcr_value = match pcr {
            Some(v) => *v,
            None => self.read_pcr_in(&work)?,
        };
        let pcr_policy = self.pcr_branch(&work, &pcr_value)?;

        let secret_policy = match password {
            // The owner branch, by the TPM (this also checks the password).
            Some(_) => {
                let secret_policy = work.path("secret.policy");
                let s = work.start_session("trial-secret", false)?;
                self.policy_secret(
                    "computing the owner branch of the sealing policy",
                    &s,
                    &pw,
                    Some(&secret_policy),
                )?;
                work.end_session(&s)?;
                let computed = fs::read(&secret_policy)
                    .map_err(io_err(format!("reading {}", secret_policy.display())))?;
                if computed != owner_branch_digest() {
                    return Err(TpmError::Unexpected(format!(
                        "the TPM computes the PolicySecret(owner) digest as {}, not {}",
                        hex(&computed),
                        hex(&owner_branch_digest())
                    )));
                }
                secret_policy
            }
            None => work.file("secret.policy", &owner_branch_digest())?,
        };

        let or_policy = work.path("or.policy");
        let s = work.start_session("trial-or", false)?;
        self.policy_or(
            "combining the sealing policy's branches",
            &s,
            (&pcr_policy, &secret_policy),
            Some(&or_policy),
            "",
        )?;
        work.end_session(&s)?;

        self.ensure_storage_key(&work, &pw)?;

        let public = work.path("sealed.pub");
        let private = work.path("sealed.priv");
        let handle = format!("{:#010x}", self.persistent);
        let r = self.tool(
            "sealing the secret",
            "tpm2_create",
            &[
                "-C".to_owned(),
                handle.clone(),
                "-g".to_owned(),
                "sha256".to_owned(),
                "-a".to_owned(),
                SEALED_ATTRS.to_owned(),
                "-L".to_owned(),
                path_arg(&or_policy),
                "-i".to_owned(),
                "-".to_owned(),
                "-u".to_owned(),
                path_arg(&public),
                "-r".to_owned(),
                path_arg(&private),
            ],
            Some(secret),
            KEYGEN_TIMEOUT,
            &format!(
                "if the object at {handle} is not tandem's storage key, evict it (`tpm2_evictcontrol -C o -c {handle} -P <password>`) or configure another handle"
            ),
        );
        work.flush_transients();
        r?;
        let read = |p: &Path| fs::read(p).map_err(io_err(format!("reading {}", p.display())));
        Ok(Sealed {
            public: read(&public)?,
            private: read(&private)?,
            pcr_value,
        })
    }

    fn unseal_locked(
        &self,
        sealed: &Sealed,
        branch: Branch<'_>,
    ) -> Result<Zeroizing<Vec<u8>>, TpmError> {
        let work = Work::new(self)?;
        if !self.has_storage_key()? {
            return Err(TpmError::NoStorageKey {
                handle: self.persistent,
            });
        }
        let pcr_bin = work.file("sealed-pcr.bin", &sealed.pcr_value)?;
        let pcr_policy = self.pcr_branch(&work, &sealed.pcr_value)?;
        let secret_policy = work.file("secret.policy", &owner_branch_digest())?;
        let public = work.file("sealed.pub", &sealed.public)?;
        let private = work.file("sealed.priv", &sealed.private)?;
        let ctx = work.path("sealed.ctx");
        let r = self.tool(
            "loading the sealed secret",
            "tpm2_load",
            &[
                "-C".to_owned(),
                format!("{:#010x}", self.persistent),
                "-u".to_owned(),
                path_arg(&public),
                "-r".to_owned(),
                path_arg(&private),
                "-c".to_owned(),
                path_arg(&ctx),
            ],
            None,
            TOOL_TIMEOUT,
            "the stored sealed secret does not belong to this TPM's storage key: set the secret up again",
        );
        work.flush_transients();
        r?;

        let s = work.start_session("policy", true)?;
        match branch {
            Branch::Pcr => self
                .policy_pcr(
                    "satisfying the PCR branch of the sealing policy",
                    &s,
                    &pcr_bin,
                    None,
                )
                .map_err(|e| self.pcr_changed(e))?,
            Branch::Owner(password) => {
                let pw = work.password("owner", password)?;
                self.policy_secret(
                    "satisfying the owner branch of the sealing policy",
                    &s,
                    &pw,
                    None,
                )?;
            }
        }
        let or = self.policy_or(
            "satisfying the sealing policy",
            &s,
            (&pcr_policy, &secret_policy),
            None,
            "the stored sealed secret does not match its policy: set the secret up again",
        );
        if let Branch::Pcr = branch {
            or.map_err(|e| self.pcr_changed(e))?;
        } else {
            or?;
        }
        let secret = self.tool(
            "unsealing the secret",
            "tpm2_unseal",
            &[
                "-c".to_owned(),
                path_arg(&ctx),
                "-p".to_owned(),
                format!("session:{}", path_arg(&s)),
            ],
            None,
            TOOL_TIMEOUT,
            "the stored sealed secret does not match its policy: set the secret up again",
        );
        work.flush_transients();
        let secret = match branch {
            Branch::Pcr => secret.map_err(|e| self.pcr_changed(e))?,
            Branch::Owner(_) => secret?,
        };
        work.end_session(&s)?;
        Ok(secret)
    }

    /// The PCR branch's digest for `value`, by a trial session:
    /// `tpm2_policypcr -l sha256:<pcr> -f FILE -L pcr.policy`.
    /// `tpm2_policypcr` in session `s` over the PCR value in the file
    /// `values`; with `out`, the policy digest is written there (a trial).
    fn policy_pcr(
        &self,
        what: &str,
        s: &Path,
        values: &Path,
        out: Option<&Path>,
    ) -> Result<(), TpmError> {
        let mut args = vec![
            "-S".to_owned(),
            path_arg(s),
            "-l".to_owned(),
            format!("sha256:{}", self.pcr),
            "-f".to_owned(),
            path_arg(values),
        ];
        if let Some(o) = out {
            args.extend(["-L".to_owned(), path_arg(o)]);
        }
        self.tool(
            what,
            "tpm2_policypcr",
            &args,
            None,
            TOOL_TIMEOUT,
            "check that the TPM has an allocated SHA-256 PCR bank (`tpm2_getcap pcrs`)",
        )?;
        Ok(())
    }

    /// `tpm2_policysecret -c owner` in session `s` with the password file
    /// argument `pw`; with `out`, the policy digest is written there.
    fn policy_secret(
        &self,
        what: &str,
        s: &Path,
        pw: &str,
        out: Option<&Path>,
    ) -> Result<(), TpmError> {
        let mut args = vec![
            "-S".to_owned(),
            path_arg(s),
            "-c".to_owned(),
            "owner".to_owned(),
        ];
        if let Some(o) = out {
            args.extend(["-L".to_owned(), path_arg(o)]);
        }
        args.push(pw.to_owned());
        self.tool(what, "tpm2_policysecret", &args, None, TOOL_TIMEOUT, "")?;
        Ok(())
    }

    /// `tpm2_policyor` of the two branches in session `s`; with `out`, the
    /// policy digest is written there.
    fn policy_or(
        &self,
        what: &str,
        s: &Path,
        branches: (&Path, &Path),
        out: Option<&Path>,
        hint: &str,
    ) -> Result<(), TpmError> {
        let mut args = vec!["-S".to_owned(), path_arg(s)];
        if let Some(o) = out {
            args.extend(["-L".to_owned(), path_arg(o)]);
        }
        args.push(format!(
            "sha256:{},{}",
            path_arg(branches.0),
            path_arg(branches.1)
        ));
        self.tool(what, "tpm2_policyor", &args, None, TOOL_TIMEOUT, hint)?;
        Ok(())
    }

    fn pcr_branch(&self, work: &Work<'_>, value: &[u8; 32]) -> Result<PathBuf, TpmError> {
        let values = work.file("branch-pcr.bin", value)?;
        let policy = work.path("pcr.policy");
        let s = work.start_session("trial-pcr", false)?;
        self.policy_pcr(
            "computing the PCR branch of the sealing policy",
            &s,
            &values,
            Some(&policy),
        )?;
        work.end_session(&s)?;
        Ok(policy)
    }

    /// Maps a refusal of the PCR branch (PolicyPCR's `TPM_RC_VALUE`: the
    /// PCR differs; PolicyOR's: no branch matches; the unseal's
    /// `TPM_RC_POLICY_FAIL`) to [`TpmError::PcrChanged`].
    fn pcr_changed(&self, e: TpmError) -> TpmError {
        match e {
            TpmError::Failed(f)
                if f.code
                    .is_some_and(|c| matches!(rc_kind(c), RC_VALUE | RC_POLICY_FAIL)) =>
            {
                TpmError::PcrChanged {
                    pcr: self.pcr,
                    stderr: f.stderr,
                }
            }
            e => e,
        }
    }

    /// Whether the storage key's persistent handle is in use:
    /// `tpm2_getcap handles-persistent`.
    fn has_storage_key(&self) -> Result<bool, TpmError> {
        let out = self.tool(
            "listing the TPM's persistent objects",
            "tpm2_getcap",
            &["handles-persistent".to_owned()],
            None,
            TOOL_TIMEOUT,
            "",
        )?;
        let text = String::from_utf8_lossy(&out);
        Ok(text.lines().any(|l| {
            let h = l.trim().trim_start_matches('-').trim();
            let h = h
                .strip_prefix("0x")
                .or_else(|| h.strip_prefix("0X"))
                .unwrap_or("");
            u32::from_str_radix(h, 16).ok() == Some(self.persistent)
        }))
    }

    /// Creates the storage key and makes it persistent unless its handle
    /// is in use (then that object is the parent; `tpm2_create` refuses
    /// one that is not a storage key).
    fn ensure_storage_key(&self, work: &Work<'_>, pw: &str) -> Result<(), TpmError> {
        if self.has_storage_key()? {
            return Ok(());
        }
        let ctx = work.path("primary.ctx");
        let r = self.tool(
            "creating the TPM storage key",
            "tpm2_createprimary",
            &[
                "-C".to_owned(),
                "o".to_owned(),
                "-P".to_owned(),
                pw.to_owned(),
                "-g".to_owned(),
                "sha256".to_owned(),
                "-G".to_owned(),
                PRIMARY_ALG.to_owned(),
                "-a".to_owned(),
                PRIMARY_ATTRS.to_owned(),
                "-c".to_owned(),
                path_arg(&ctx),
            ],
            None,
            KEYGEN_TIMEOUT,
            "",
        );
        work.flush_transients();
        r?;
        let handle = format!("{:#010x}", self.persistent);
        let r = self.tool(
            "making the TPM storage key persistent",
            "tpm2_evictcontrol",
            &[
                "-C".to_owned(),
                "o".to_owned(),
                "-P".to_owned(),
                pw.to_owned(),
                "-c".to_owned(),
                path_arg(&ctx),
                handle.clone(),
            ],
            None,
            TOOL_TIMEOUT,
            &format!(
                "check that the TPM has room for a persistent object (`tpm2_getcap handles-persistent`) and that {handle} is free"
            ),
        );
        work.flush_transients();
        r?;
        Ok(())
    }

    // ---- running the tools ----

    /// Runs `tool -T <tcti> args`, `input` on its stdin, killed after
    /// `limit`; its stdout, or the error its failure means.
    fn tool(
        &self,
        what: &str,
        tool: &str,
        args: &[String],
        input: Option<&[u8]>,
        limit: Duration,
        advice: &str,
    ) -> Result<Zeroizing<Vec<u8>>, TpmError> {
        let command = format!("{tool} -T {} {}", self.tcti, args.join(" "));
        let ran = run(tool, &self.tcti, args, input, limit).map_err(|e| match e {
            RunError::Spawn(source) if source.kind() == io::ErrorKind::NotFound => {
                TpmError::NotInstalled {
                    tool: tool.to_owned(),
                    source,
                }
            }
            RunError::Spawn(source) => TpmError::Io {
                what: format!("{what}: starting {tool}"),
                source,
            },
            RunError::Timeout => TpmError::Timeout {
                what: what.to_owned(),
                command: command.clone(),
                tcti: self.tcti.clone(),
                secs: limit.as_secs(),
            },
        })?;
        if ran.success {
            return Ok(ran.stdout);
        }
        Err(self.classify(what, command, ran, advice))
    }

    /// The error a failed tool's message means.
    fn classify(&self, what: &str, command: String, ran: Ran, advice: &str) -> TpmError {
        let stderr = trim_stderr(&ran.stderr);
        let codes = rc_codes(&ran.stderr);
        let what = what.to_owned();
        let tcti = self.tcti.clone();
        for &code in &codes {
            if code >> 16 == TCTI_LAYER {
                return TpmError::Unreachable { what, tcti, stderr };
            }
            if code >> 16 != 0 {
                continue;
            }
            match rc_kind(code) {
                RC_AUTH_FAIL | RC_BAD_AUTH => return TpmError::BadPassword { what, stderr },
                RC_LOCKOUT => return TpmError::Lockout { what, tcti, stderr },
                RC_OBJECT_MEMORY | RC_SESSION_MEMORY | RC_OBJECT_HANDLES | RC_SESSION_HANDLES => {
                    return TpmError::Full { what, tcti, stderr }
                }
                RC_HANDLE if ran.stderr.contains(&format!("{:x}", self.persistent)) => {
                    return TpmError::NoStorageKey {
                        handle: self.persistent,
                    }
                }
                _ => {}
            }
        }
        let lower = ran.stderr.to_ascii_lowercase();
        if lower.contains("could not load tcti") || lower.contains("tcti init") {
            return TpmError::Unreachable { what, tcti, stderr };
        }
        let code = codes.into_iter().find(|c| c >> 16 == 0);
        TpmError::Failed(Box::new(ToolFailure {
            what,
            command,
            status: ran.status,
            code,
            stderr,
            advice: advice.to_owned(),
        }))
    }
}

/// Which branch of the sealing policy an unseal satisfies.
#[derive(Clone, Copy)]
enum Branch<'a> {
    /// PolicyPCR at the sealed value.
    Pcr,
    /// PolicySecret(owner) with this password.
    Owner(&'a str),
}

/// A TPM response code reduced to what it says: a format-1 code (bit 7)
/// without the number of the handle, session or parameter it is about
/// (bits 6 and 8 to 11); a format-0 code as it is.
fn rc_kind(code: u32) -> u32 {
    let code = code & 0xFFFF;
    if code & 0x80 != 0 {
        code & 0xBF
    } else {
        code
    }
}

/// The response codes in a tool's message: each `(0x...)` (tpm2-tools
/// print `Esys_Unseal(0x99D)` and `ErrorCode (0x0000099d)`).
fn rc_codes(stderr: &str) -> Vec<u32> {
    let mut codes = Vec::new();
    for (i, _) in stderr.match_indices("(0x") {
        let rest = &stderr[i + 3..];
        let end = rest
            .find(|c: char| !c.is_ascii_hexdigit())
            .unwrap_or(rest.len());
        if rest[end..].starts_with(')') {
            if let Ok(c) = u32::from_str_radix(&rest[..end], 16) {
                if !codes.contains(&c) {
                    codes.push(c);
                }
            }
        }
    }
    codes
}

/// A tool's message on one line, at most 1000 characters: its own
/// `ERROR: ` lines (`Esys_Unseal(0x99D) - tpm:session(1):a policy check
/// failed`) and the system error behind a TCTI failure (`errno 111:
/// Connection refused`); all of it when it has neither.
fn trim_stderr(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let mut kept: Vec<&str> = Vec::new();
    for l in &lines {
        if let Some(m) = l.strip_prefix("ERROR: ") {
            kept.push(m);
        } else if let Some(i) = l.find("errno") {
            // `WARNING:tcti:src/util/io.c:262:socket_connect() Failed to
            // connect to host 127.0.0.1, port 2321: errno 111: ...`
            let start = l.find(") ").map(|j| j + 2).filter(|&j| j <= i).unwrap_or(0);
            kept.push(&l[start..]);
        }
    }
    if kept.is_empty() {
        kept = lines;
    }
    let mut s = kept.join(" | ");
    if s.is_empty() {
        s = "no message".to_owned();
    }
    if s.len() > 1000 {
        let mut cut = 1000;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str(" ...");
    }
    s
}

/// How a tool ended.
struct Ran {
    success: bool,
    status: String,
    stdout: Zeroizing<Vec<u8>>,
    stderr: String,
}

enum RunError {
    Spawn(io::Error),
    Timeout,
}

/// Runs `tool -T tcti args` in its own process group, `input` on stdin,
/// and kills the group after `limit`.
fn run(
    tool: &str,
    tcti: &str,
    args: &[String],
    input: Option<&[u8]>,
    limit: Duration,
) -> Result<Ran, RunError> {
    let mut cmd = Command::new(tool);
    cmd.arg("-T")
        .arg(tcti)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().map_err(RunError::Spawn)?;
    if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
        // At most MAX_SECRET bytes: less than a pipe's buffer, so this
        // does not block. A tool that exits without reading it fails
        // on its own.
        let _ = stdin.write_all(data);
    }
    let out = child.stdout.take();
    let err = child.stderr.take();
    std::thread::scope(|s| {
        let out = s.spawn(move || {
            let mut buf = Zeroizing::new(Vec::with_capacity(8192));
            if let Some(mut o) = out {
                let _ = o.read_to_end(&mut buf);
            }
            buf
        });
        let err = s.spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut e) = err {
                let _ = e.read_to_end(&mut buf);
            }
            buf
        });
        let deadline = Instant::now() + limit;
        let mut pause = Duration::from_millis(2);
        let status = loop {
            match child.try_wait() {
                Ok(Some(st)) => break Some(st),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                _ => {
                    if let Ok(pid) = i32::try_from(child.id()) {
                        let _ = nix::sys::signal::killpg(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
            }
        };
        let stdout = out.join().unwrap_or_else(|_| Zeroizing::new(Vec::new()));
        let stderr = err.join().unwrap_or_default();
        let status = status.ok_or(RunError::Timeout)?;
        Ok(Ran {
            success: status.success(),
            status: status.to_string(),
            stdout,
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        })
    })
}

/// A path as a tool's argument (the working directory is UTF-8, checked
/// by [`Tpm::new`]).
fn path_arg(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// One operation's 0700 subdirectory of the working directory, with the
/// sessions it started. Dropping it flushes what is left in the TPM and
/// overwrites and removes its files.
struct Work<'a> {
    tpm: &'a Tpm,
    dir: PathBuf,
    /// Started sessions not flushed yet.
    sessions: RefCell<Vec<PathBuf>>,
    /// A tool that loads objects ran since the last flush of transients.
    dirty: Cell<bool>,
}

impl<'a> Work<'a> {
    fn new(tpm: &'a Tpm) -> Result<Work<'a>, TpmError> {
        let dir = tpm.dir.join(format!(
            "op-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        if dir.exists() {
            shred_dir(&dir);
        }
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(io_err(format!("creating {}", dir.display())))?;
        Ok(Work {
            tpm,
            dir,
            sessions: RefCell::new(Vec::new()),
            dirty: Cell::new(false),
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Writes `bytes` to a new 0600 file `name`.
    fn file(&self, name: &str, bytes: &[u8]) -> Result<PathBuf, TpmError> {
        let p = self.path(name);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&p)
            .map_err(io_err(format!("creating {}", p.display())))?;
        f.write_all(bytes)
            .map_err(io_err(format!("writing {}", p.display())))?;
        Ok(p)
    }

    /// A password file and its tpm2-tools argument (`file:PATH`). The file
    /// holds `hex:<password>`: tpm2-tools read a `file:` password as a
    /// password argument again (`hex:`, `str:`, `file:` prefixes, a
    /// trailing newline dropped), hex keeps any password intact.
    fn password(&self, name: &str, password: &str) -> Result<String, TpmError> {
        let text = Zeroizing::new(if password.is_empty() {
            String::new()
        } else {
            format!("hex:{}", hex(password.as_bytes()))
        });
        let p = self.file(&format!("{name}.auth"), text.as_bytes())?;
        Ok(format!("file:{}", path_arg(&p)))
    }

    /// Starts a session (`policy`: a policy session, else a trial one):
    /// `tpm2_startauthsession [--policy-session] -S FILE`.
    fn start_session(&self, name: &str, policy: bool) -> Result<PathBuf, TpmError> {
        let p = self.path(&format!("{name}.session"));
        let mut args = vec!["-S".to_owned(), path_arg(&p)];
        if policy {
            args.push("--policy-session".to_owned());
        }
        self.tpm.tool(
            "starting a TPM session",
            "tpm2_startauthsession",
            &args,
            None,
            TOOL_TIMEOUT,
            "",
        )?;
        self.sessions.borrow_mut().push(p.clone());
        Ok(p)
    }

    /// Flushes a session started by [`Work::start_session`]:
    /// `tpm2_flushcontext FILE`.
    fn end_session(&self, session: &Path) -> Result<(), TpmError> {
        self.tpm.tool(
            "flushing a TPM session",
            "tpm2_flushcontext",
            &[path_arg(session)],
            None,
            TOOL_TIMEOUT,
            "flush the TPM's sessions by hand (`tpm2_flushcontext -s`)",
        )?;
        self.sessions.borrow_mut().retain(|s| s != session);
        Ok(())
    }

    /// Flushes every transient object (`tpm2_flushcontext -t`); without a
    /// resource manager the tools leave the objects they load in the TPM.
    /// Best effort: what is left is flushed again when the work ends.
    fn flush_transients(&self) {
        self.dirty.set(true);
        if self
            .tpm
            .tool(
                "flushing the TPM's transient objects",
                "tpm2_flushcontext",
                &["-t".to_owned()],
                None,
                TOOL_TIMEOUT,
                "",
            )
            .is_ok()
        {
            self.dirty.set(false);
        }
    }
}

impl Drop for Work<'_> {
    fn drop(&mut self) {
        let left: Vec<PathBuf> = self.sessions.borrow().clone();
        for s in left {
            if self.end_session(&s).is_err() {
                // A tool that failed while it held the session may have
                // left it loaded, its file stale: flush loaded sessions.
                let _ = self.tpm.tool(
                    "flushing the TPM's loaded sessions",
                    "tpm2_flushcontext",
                    &["-l".to_owned()],
                    None,
                    TOOL_TIMEOUT,
                    "",
                );
            }
        }
        if self.dirty.get() {
            self.flush_transients();
        }
        shred_dir(&self.dir);
    }
}

/// Overwrites every file of `dir` with zeros and removes it all.
fn shred_dir(dir: &Path) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if let Ok(m) = fs::symlink_metadata(&p) {
                if m.is_file() {
                    if let Ok(mut f) = OpenOptions::new().write(true).open(&p) {
                        let _ = f.write_all(&vec![0u8; m.len().min(1 << 20) as usize]);
                        let _ = f.sync_all();
                    }
                }
            }
        }
    }
    let _ = fs::remove_dir_all(dir);
}

/// Creates `dir` (0700) or makes it 0700; it must be this user's.
fn prepare_dir(dir: &Path) -> Result<(), TpmError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(format!(
            "creating the TPM working directory {}",
            dir.display()
        )))?;
    let m = fs::symlink_metadata(dir).map_err(io_err(format!("reading {}", dir.display())))?;
    if !m.is_dir() {
        return Err(TpmError::Invalid(format!(
            "the TPM working directory {} is not a directory: remove it or choose another",
            dir.display()
        )));
    }
    let me = nix::unistd::geteuid().as_raw();
    if m.uid() != me {
        return Err(TpmError::Invalid(format!(
            "the TPM working directory {} belongs to user {}, not to this process's user {me}: remove it or choose another",
            dir.display(),
            m.uid()
        )));
    }
    if m.mode() & 0o777 != 0o700 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(io_err(format!("making {} private (0700)", dir.display())))?;
    }
    Ok(())
}

/// Removes the working subdirectories of processes that are gone.
fn remove_stale(dir: &Path) {
    let me = std::process::id().to_string();
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("op-")) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or("");
        if pid != me && !Path::new("/proc").join(pid).exists() {
            shred_dir(&e.path());
        }
    }
}

/// The SHA-256 of the file at `path`.
pub(crate) fn sha256_file(path: &Path) -> Result<[u8; 32], TpmError> {
    let what = format!("reading {} to measure it", path.display());
    let mut f = File::open(path).map_err(io_err(what.clone()))?;
    let mut ctx = Context::new(&SHA256);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(io_err(what.clone()))?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    Ok(out)
}

/// This node's TPM (`control.tpm`), once tandemd opened it; what the
/// quality factor's TPM check asks.
static NODE: std::sync::OnceLock<std::sync::Arc<Tpm>> = std::sync::OnceLock::new();
/// The PCR value after tandemd measured itself at start.
static MEASURED_PCR: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
/// What tandemd measured at start, for hainfo.
static MEASURED: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// This node's TPM, if tandemd opened one.
pub fn node() -> Option<std::sync::Arc<Tpm>> {
    NODE.get().cloned()
}

/// The PCR value tandemd's own measurement left at start, if it measured
/// itself: the key store seals and unseals only then (a key sealed to a
/// PCR that was never measured would not open at the next start).
pub fn measured_pcr() -> Option<[u8; 32]> {
    MEASURED_PCR.get().copied()
}

/// What tandemd measured at start, in words (hainfo), if it has a TPM.
pub fn measured() -> Option<&'static str> {
    MEASURED.get().map(String::as_str)
}

/// At start: opens the node's TPM (`control.tpm`) with its working
/// directory under `state_dir`, measures the running tandemd into the PCR
/// (reset, then extended: see [`Tpm::measure_file`]) and says what it did, or why it could not:
/// a node whose TPM does not answer still runs (its quality factor counts
/// the TPM as failed when `ha.quality_tpm` is set).
pub fn start(cfg: &tandem_config::TpmConfig, state_dir: &Path, log: &crate::eventlog::EventLog) {
    let dir = state_dir.join("tpm");
    let tpm = match Tpm::new(cfg.tcti.clone(), cfg.pcr, &dir) {
        Ok(t) => std::sync::Arc::new(t),
        Err(e) => {
            log.event("SYSTEM", format_args!("WARNING: TPM ({}): {e}", cfg.tcti));
            let _ = MEASURED.set(format!("not in use: {e}"));
            return;
        }
    };
    let exe = Path::new("/proc/self/exe");
    let text = match tpm.measure_file(exe) {
        Ok(m) => {
            let line = format!(
                "tandemd (sha256 {}) measured into PCR {}; PCR {} is now {}",
                &hex(&m.digest)[..16],
                cfg.pcr,
                cfg.pcr,
                &hex(&m.pcr_value)[..16]
            );
            log.event("SYSTEM", format_args!("TPM ({}): {line}", cfg.tcti));
            let _ = MEASURED_PCR.set(m.pcr_value);
            line
        }
        Err(e) => {
            log.event(
                "SYSTEM",
                format_args!(
                    "WARNING: TPM ({}): tandemd could not be measured: {e}",
                    cfg.tcti
                ),
            );
            format!("not measured: {e}")
        }
    };
    let _ = MEASURED.set(text);
    let _ = NODE.set(tpm);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::process::Child;

    const TOOLS: [&str; 14] = [
        "swtpm",
        "tpm2_createprimary",
        "tpm2_create",
        "tpm2_load",
        "tpm2_unseal",
        "tpm2_pcrread",
        "tpm2_pcrextend",
        "tpm2_startauthsession",
        "tpm2_policypcr",
        "tpm2_policysecret",
        "tpm2_policyor",
        "tpm2_flushcontext",
        "tpm2_evictcontrol",
        "tpm2_pcrreset",
    ];

    /// Fails (not skips) when a tool is missing.
    fn require_tools() {
        let path = std::env::var_os("PATH").unwrap_or_default();
        for t in TOOLS
            .iter()
            .chain(["tpm2_changeauth", "tpm2_getcap"].iter())
        {
            let found = std::env::split_paths(&path).any(|d| d.join(t).is_file());
            assert!(
                found,
                "{t} is not installed: these tests need the Debian packages swtpm swtpm-tools tpm2-tools"
            );
        }
    }

    /// Two free consecutive ports on 127.0.0.1 (swtpm's TCTI uses P and
    /// P+1).
    fn free_ports() -> u16 {
        for _ in 0..100 {
            let a = TcpListener::bind("127.0.0.1:0").unwrap();
            let p = a.local_addr().unwrap().port();
            if p < u16::MAX && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
                return p;
            }
        }
        panic!("no two free consecutive ports on 127.0.0.1");
    }

    /// One swtpm per test, killed when dropped.
    pub(crate) struct Swtpm {
        child: Option<Child>,
        pub(crate) root: PathBuf,
        port: u16,
    }

    static N: AtomicU64 = AtomicU64::new(0);

    impl Swtpm {
        pub(crate) fn start(tag: &str) -> Swtpm {
            require_tools();
            let root = std::env::temp_dir().join(format!(
                "tandem-tpm-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&root);
            let state = root.join("state");
            fs::create_dir_all(&state).unwrap();
            let log = File::create(root.join("swtpm.log")).unwrap();
            let port = free_ports();
            let child = Command::new("swtpm")
                .arg("socket")
                .arg("--tpm2")
                .arg("--server")
                .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
                .arg("--ctrl")
                .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
                .arg("--tpmstate")
                .arg(format!("dir={}", state.display()))
                .arg("--flags")
                .arg("not-need-init,startup-clear")
                .stdin(Stdio::null())
                .stdout(Stdio::from(log.try_clone().unwrap()))
                .stderr(Stdio::from(log))
                .spawn()
                .expect("cannot start swtpm: install the Debian packages swtpm swtpm-tools");
            let mut sw = Swtpm {
                child: Some(child),
                root,
                port,
            };
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    break;
                }
                if let Some(c) = sw.child.as_mut() {
                    if let Ok(Some(st)) = c.try_wait() {
                        let log = fs::read_to_string(sw.root.join("swtpm.log")).unwrap_or_default();
                        panic!("swtpm exited ({st}): {log}");
                    }
                }
                assert!(
                    Instant::now() < deadline,
                    "swtpm does not accept on 127.0.0.1:{port} after 5 s"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            sw
        }

        pub(crate) fn tcti(&self) -> String {
            format!("swtpm:host=127.0.0.1,port={}", self.port)
        }

        pub(crate) fn tpm(&self) -> Tpm {
            Tpm::new(self.tcti(), 23, self.root.join("work")).unwrap()
        }

        fn kill(&mut self) {
            if let Some(mut c) = self.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    impl Drop for Swtpm {
        fn drop(&mut self) {
            self.kill();
            let _ = fs::remove_dir_all(&self.root);
        }
    }

    fn sha(b: &[u8]) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(digest(&SHA256, b).as_ref());
        out
    }

    fn extended(old: &[u8; 32], d: &[u8; 32]) -> [u8; 32] {
        let mut c = Context::new(&SHA256);
        c.update(old);
        c.update(d);
        let mut out = [0u8; 32];
        out.copy_from_slice(c.finish().as_ref());
        out
    }

    /// No transient objects and no sessions are left in the TPM.
    fn assert_clean(tpm: &Tpm) {
        for cap in [
            "handles-transient",
            "handles-loaded-session",
            "handles-saved-session",
        ] {
            let out = tpm
                .tool(
                    "test",
                    "tpm2_getcap",
                    &[cap.to_owned()],
                    None,
                    TOOL_TIMEOUT,
                    "",
                )
                .unwrap();
            let text = String::from_utf8_lossy(&out);
            assert!(!text.contains("0x"), "{cap} left in the TPM: {text}");
        }
    }

    #[test]
    fn the_owner_branch_digest_is_the_known_constant() {
        // What `tpm2_policysecret -c owner -L` gives in a trial session
        // (swtpm 0.7.1; checked again at every seal).
        assert_eq!(
            hex(&owner_branch_digest()),
            "0d84f55daf6e43ac97966e62c9bb989d3397777d25c5f749868055d65394f952"
        );
    }

    #[test]
    fn response_codes_are_read_from_the_tools_messages() {
        let m = "WARNING:esys:src/tss2-esys/api/Esys_Unseal.c:295:Esys_Unseal_Finish() Received TPM Error\nERROR:esys:src/tss2-esys/api/Esys_Unseal.c:98:Esys_Unseal() Esys Finish ErrorCode (0x0000099d)\nERROR: Esys_Unseal(0x99D) - tpm:session(1):a policy check failed";
        assert_eq!(rc_codes(m), vec![0x99d]);
        assert_eq!(rc_kind(0x99d), RC_POLICY_FAIL);
        assert_eq!(rc_kind(0x98e), RC_AUTH_FAIL);
        assert_eq!(rc_kind(0x9a2), RC_BAD_AUTH);
        assert_eq!(rc_kind(0x1c4), RC_VALUE);
        assert_eq!(rc_kind(0x921), RC_LOCKOUT);
        assert_eq!(rc_kind(0x902), RC_OBJECT_MEMORY);
    }

    #[test]
    fn a_tools_message_is_cut_to_what_it_says() {
        let m = "WARNING:esys:src/tss2-esys/api/Esys_PolicySecret.c:343:Esys_PolicySecret_Finish() Received TPM Error\nERROR:esys:src/tss2-esys/api/Esys_PolicySecret.c:115:Esys_PolicySecret() Esys Finish ErrorCode (0x000009a2)\nERROR: Esys_PolicySecret(0x9A2) - tpm:session(1):authorization failure without DA implications\nERROR: Unable to run tpm2_policysecret\n";
        assert_eq!(
            trim_stderr(m),
            "Esys_PolicySecret(0x9A2) - tpm:session(1):authorization failure without DA implications | Unable to run tpm2_policysecret"
        );
        let m = "WARNING:tcti:src/util/io.c:262:socket_connect() Failed to connect to host 127.0.0.1, port 2321: errno 111: Connection refused\nERROR: Could not load tcti, got: \"swtpm:host=127.0.0.1,port=2321\"\n";
        assert_eq!(
            trim_stderr(m),
            "Failed to connect to host 127.0.0.1, port 2321: errno 111: Connection refused | Could not load tcti, got: \"swtpm:host=127.0.0.1,port=2321\""
        );
        assert_eq!(trim_stderr("  \n"), "no message");
    }

    #[test]
    fn a_sealed_secret_round_trips_through_json() {
        let s = Sealed {
            public: vec![1, 2, 3],
            private: vec![4, 5],
            pcr_value: [7; 32],
        };
        assert_eq!(Sealed::from_json(&s.to_json()).unwrap(), s);
        assert!(matches!(
            Sealed::from_json(r#"{"public":"01","private":"02","pcr_value":"00"}"#),
            Err(TpmError::Blob(_))
        ));
    }

    #[test]
    fn tpm_seal_unseal_pcr_owner_and_pcrseal() {
        let sw = Swtpm::start("seal");
        let tpm = sw.tpm();
        tpm.set_password(None, "owner pw").unwrap();
        let secret = b"the HA key material".to_vec();

        let e = tpm.seal(&secret, "wrong").unwrap_err();
        assert!(matches!(e, TpmError::BadPassword { .. }), "{e}");

        let sealed = tpm.seal(&secret, "owner pw").unwrap();
        assert_eq!(sealed.pcr_value, tpm.read_pcr().unwrap());
        let sealed = Sealed::from_json(&sealed.to_json()).unwrap();
        assert_eq!(&*tpm.unseal_pcr(&sealed).unwrap(), &secret);
        assert_clean(&tpm);

        // An update: another binary measured.
        tpm.extend(&sha(b"tandemd 0.2")).unwrap();
        let e = tpm.unseal_pcr(&sealed).unwrap_err();
        assert!(matches!(e, TpmError::PcrChanged { pcr: 23, .. }), "{e}");
        assert!(
            e.to_string().contains("tandemctl system tpm pcrseal"),
            "{e}"
        );
        assert_clean(&tpm);

        assert_eq!(&*tpm.unseal_owner(&sealed, "owner pw").unwrap(), &secret);
        let e = tpm.unseal_owner(&sealed, "not it").unwrap_err();
        assert!(matches!(e, TpmError::BadPassword { .. }), "{e}");
        assert_clean(&tpm);

        let resealed = tpm.pcrseal(&sealed, "owner pw").unwrap();
        assert_ne!(resealed.pcr_value, sealed.pcr_value);
        assert_eq!(&*tpm.unseal_pcr(&resealed).unwrap(), &secret);

        // A new password: the owner branch follows it.
        tpm.set_password(Some("owner pw"), "second").unwrap();
        assert_eq!(&*tpm.unseal_owner(&resealed, "second").unwrap(), &secret);
        assert_clean(&tpm);
        // Nothing is left in the working directory.
        assert_eq!(fs::read_dir(sw.root.join("work")).unwrap().count(), 0);
    }

    #[test]
    fn tpm_measure_file_gives_the_same_value_for_the_same_binary() {
        let sw = Swtpm::start("measure");
        let tpm = sw.tpm();
        let a = sw.root.join("tandemd-a");
        let b = sw.root.join("tandemd-b");
        fs::write(&a, b"binary a").unwrap();
        fs::write(&b, b"binary b").unwrap();

        // Whatever the PCR held before: reset, then one extension.
        tpm.extend(&sha(b"something else")).unwrap();
        let m1 = tpm.measure_file(&a).unwrap();
        assert_eq!(m1.digest, sha(b"binary a"));
        assert_eq!(m1.pcr_value, extended(&[0; 32], &m1.digest));
        assert_eq!(m1.pcr_value, predicted_pcr(&m1.digest));
        assert_eq!(tpm.read_pcr().unwrap(), m1.pcr_value);

        // A restart of the same binary: the same value.
        assert_eq!(tpm.measure_file(&a).unwrap().pcr_value, m1.pcr_value);
        // Another binary: its own value; back to the first (a rollback):
        // the first value again.
        let m3 = tpm.measure_file(&b).unwrap();
        assert_eq!(m3.pcr_value, predicted_pcr(&sha(b"binary b")));
        assert_ne!(m3.pcr_value, m1.pcr_value);
        assert_eq!(tpm.measure_file(&a).unwrap().pcr_value, m1.pcr_value);
    }

    #[test]
    fn tpm_seals_unattended_to_a_predicted_value() {
        let sw = Swtpm::start("predict");
        let tpm = sw.tpm();
        let a = sw.root.join("tandemd-a");
        let b = sw.root.join("tandemd-b");
        fs::write(&a, b"version 1").unwrap();
        fs::write(&b, b"version 2").unwrap();
        tpm.measure_file(&a).unwrap();
        // A new TPM: no password, no storage key yet; sealing without
        // the password creates it.
        let now = tpm.seal_unattended(b"cluster key", None).unwrap();
        let next = tpm
            .seal_unattended(b"cluster key", Some(&predicted_pcr(&sha(b"version 2"))))
            .unwrap();
        assert_eq!(&*tpm.unseal_pcr(&now).unwrap(), b"cluster key");
        let e = tpm.unseal_pcr(&next).unwrap_err();
        assert!(matches!(e, TpmError::PcrChanged { .. }), "{e}");

        // Version 2 starts: the copy sealed for it opens, the other not.
        tpm.measure_file(&b).unwrap();
        assert_eq!(&*tpm.unseal_pcr(&next).unwrap(), b"cluster key");
        let e = tpm.unseal_pcr(&now).unwrap_err();
        assert!(matches!(e, TpmError::PcrChanged { .. }), "{e}");

        // With a TPM password set, the owner branch of an unattended seal
        // opens with it (the computed branch digest is the TPM's).
        tpm.set_password(None, "owner pw").unwrap();
        assert_eq!(
            &*tpm.unseal_owner(&now, "owner pw").unwrap(),
            b"cluster key"
        );
        // And the storage key exists: unattended sealing still works.
        tpm.seal_unattended(b"again", None).unwrap();
        assert_clean(&tpm);
    }

    #[test]
    fn tpm_health_follows_the_tpm() {
        let mut sw = Swtpm::start("health");
        let tpm = sw.tpm();
        tpm.health().unwrap();
        sw.kill();
        let t = Instant::now();
        let e = tpm.health().unwrap_err();
        assert!(t.elapsed() < HEALTH_TIMEOUT + Duration::from_secs(1), "{e}");
        assert!(
            matches!(e, TpmError::Unreachable { .. } | TpmError::Timeout { .. }),
            "{e}"
        );
    }
}
