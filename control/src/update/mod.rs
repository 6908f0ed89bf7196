//! Updating a member: the signed firmware package ([`package`]), the two
//! installation slots that keep the previous version bootable
//! ([`slots`]), and what tandemd does with them:
//! - [`install`]: a package checked against the trusted keys goes into
//!   the slot that does not run, on trial;
//! - [`receive`] / [`send`]: the same, for the peer, over the members'
//!   service (TCP 1300, authenticated and encrypted);
//! - [`request_restart`]: tandemd then stops (handing over if active)
//!   with [`EXIT_UPDATE`], and `tandem-boot` starts the new slot;
//! - [`Trial`]: the new version confirms itself once it has rejoined its
//!   peer; if it does not within the trial time, `tandem-boot` rolls it
//!   back.
//!
//! A node runs under `tandem-boot`, which passes `--slots ROOT` to
//! tandemd; without it there are no slots and updates are refused with
//! what to do.

pub mod package;
pub mod slots;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use crate::eventlog::EventLog;
use crate::peer::confsync::{now_unix_ms, CHUNK};
use crate::peer::files::{hex, unhex};
use crate::peer::service::{PeerAnswer, PeerClient, PeerRequest};
use slots::{Slot, Slots};

/// tandemd's exit status when it stops to start the version it just
/// installed (`tandem-boot` starts the active slot again).
pub const EXIT_UPDATE: u8 = 75;
/// Where the keys a package must be signed with are kept by default.
pub const DEFAULT_TRUSTED_KEYS: &str = "/etc/tandem/trusted-keys";
/// How long an updated version has by default to rejoin its peer before
/// it is rolled back (seconds).
pub const DEFAULT_CONFIRM_SECS: u64 = 120;
/// The largest package a member accepts from its peer (bytes).
pub const MAX_PACKAGE: u64 = 512 << 20;
/// How long the new version must stay healthy before it confirms itself.
pub const HEALTHY_FOR: Duration = Duration::from_secs(3);

/// What this member updates with.
#[derive(Debug)]
pub struct Setup {
    /// The installation slots (`tandem-boot --root`), if it runs under it.
    pub slots: Option<Slots>,
    /// The directory of the trusted public keys (`NAME.pub`).
    pub trusted_keys: PathBuf,
    /// Seconds a new version has to confirm itself.
    pub confirm_within_secs: u64,
}

static SETUP: OnceLock<Setup> = OnceLock::new();
/// When tandemd should stop to start its new version (Unix ms; 0: no).
static RESTART_AT_MS: AtomicU64 = AtomicU64::new(0);
/// Published by the control thread at housekeeping: this member has
/// rejoined (see [`set_healthy`]).
static HEALTHY: AtomicBool = AtomicBool::new(false);

/// Sets this member's update setup (once, at start).
pub fn init(setup: Setup) {
    let _ = SETUP.set(setup);
}

/// This member's update setup, once [`init`] ran.
pub fn setup() -> Option<&'static Setup> {
    SETUP.get()
}

/// The slots, or what to do without them.
fn slots() -> Result<&'static Slots, String> {
    setup().and_then(|s| s.slots.as_ref()).ok_or_else(|| {
        "this member has no installation slots (tandemd was not started by tandem-boot): \
         start it with tandem-boot --root DIR (the systemd unit does), or install by hand"
            .to_owned()
    })
}

/// Asks tandemd to stop (handing over first if active) and start its new
/// version, `after` from now (the answer that says so leaves first).
pub fn request_restart(after: Duration) {
    RESTART_AT_MS.store(now_unix_ms() + after.as_millis() as u64, Ordering::Release);
}

/// Whether tandemd should stop now to start its new version (the control
/// thread asks every turn: one atomic load).
pub fn restart_due() -> bool {
    let at = RESTART_AT_MS.load(Ordering::Acquire);
    at > 0 && now_unix_ms() >= at
}

/// Whether a restart into a new version is asked for (due or not).
pub fn restart_requested() -> bool {
    RESTART_AT_MS.load(Ordering::Acquire) > 0
}

/// The control thread's verdict at housekeeping: this member runs and
/// has rejoined its peer (heard, and active or with a complete table).
pub fn set_healthy(healthy: bool) {
    HEALTHY.store(healthy, Ordering::Relaxed);
}

/// What an installation did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Installed {
    /// The version installed.
    pub version: String,
    /// Its K2K protocol version.
    pub k2k_version: u8,
    /// The slot it went into.
    pub slot: Slot,
    /// The trusted key that signed it.
    pub signer: String,
    /// What was done so that the new version opens the cluster key
    /// sealed in the TPM (none: the key is not sealed).
    #[serde(default)]
    pub key_handoff: Option<String>,
}

/// Checks the package at `pkg` against the trusted keys and installs it
/// into the slot that does not run, on trial. Nothing changes on error.
pub fn install(pkg: &Path) -> Result<Installed, String> {
    let slots = slots()?;
    let setup = setup().ok_or("no update setup")?;
    let trusted = package::TrustedKey::load_dir(&setup.trusted_keys)?;
    if trusted.is_empty() {
        return Err(format!(
            "no trusted key in {}: put the vendor's public key there (NAME.pub) and try again",
            setup.trusted_keys.display()
        ));
    }
    let staging = slots.root().join(format!("staging-{}", now_unix_ms()));
    let (m, signer) = package::unpack(pkg, &trusted, &staging).map_err(|e| e.to_string())?;
    let refuse = |why: String| {
        let _ = std::fs::remove_dir_all(&staging);
        Err(why)
    };
    let running = tandem_dataplane::build::get();
    if m.version == running.version {
        return refuse(format!(
            "this member already runs version {}: nothing to install",
            m.version
        ));
    }
    if m.k2k_version < tandem_dataplane::k2k::MIN_VERSION {
        return refuse(format!(
            "version {} speaks K2K up to version {}, and this cluster needs {} at least: it could not keep the state in sync",
            m.version,
            m.k2k_version,
            tandem_dataplane::k2k::MIN_VERSION
        ));
    }
    // The cluster key, when sealed in the TPM, is sealed for the new
    // tandemd too, so that the member rejoins after the restart.
    let tandemd = m.files.iter().find(|f| f.path == "bin/tandemd");
    let key_handoff = match tandemd.map(|f| crate::keystore::handoff(&m.version, &f.sha256)) {
        Some(Ok(said)) => said,
        Some(Err(e)) => {
            return refuse(format!(
                "{e}: the new version could not open the cluster key, nothing installed"
            ))
        }
        None => None,
    };
    match slots.install(&staging, &m, setup.confirm_within_secs) {
        Ok(slot) => {
            refresh_view();
            Ok(Installed {
                version: m.version,
                k2k_version: m.k2k_version,
                slot,
                signer,
                key_handoff,
            })
        }
        Err(e) => {
            crate::keystore::drop_handoff();
            refuse(e)
        }
    }
}

/// A package being received from the peer (one per connection).
#[derive(Debug)]
pub struct Incoming {
    path: PathBuf,
    file: File,
    size: u64,
    sha256: String,
    written: u64,
}

impl Drop for Incoming {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn refused(reason: impl Into<String>) -> PeerAnswer {
    PeerAnswer::Refused {
        reason: reason.into(),
    }
}

/// The members' service's side of [`send`]: a package from the peer
/// `from`, checked like a local one, then this member restarts into it.
pub fn receive(
    request: PeerRequest,
    incoming: &mut Option<Incoming>,
    from: &str,
    log: &EventLog,
) -> PeerAnswer {
    match request {
        PeerRequest::PackageBegin { size, sha256 } => {
            let slots = match slots() {
                Ok(s) => s,
                Err(e) => return refused(e),
            };
            if size > MAX_PACKAGE {
                return refused(format!(
                    "a package of {size} bytes is over this member's limit of {MAX_PACKAGE}"
                ));
            }
            if restart_requested() {
                return refused("this member is already restarting into a new version");
            }
            let path = slots.root().join("incoming.pkg");
            match File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
            {
                Ok(file) => {
                    *incoming = Some(Incoming {
                        path,
                        file,
                        size,
                        sha256,
                        written: 0,
                    });
                    PeerAnswer::SyncStored
                }
                Err(e) => refused(format!("cannot write {}: {e}", path.display())),
            }
        }
        PeerRequest::PackagePut { offset, data } => {
            let Some(inc) = incoming.as_mut() else {
                return refused("no package transfer begun on this connection");
            };
            let bytes = match unhex(&data) {
                Ok(b) => b,
                Err(e) => return refused(format!("package bytes: {e}")),
            };
            if offset != inc.written || inc.written + bytes.len() as u64 > inc.size {
                return refused(format!(
                    "package bytes at {offset} (+{}) do not follow the {} received of {}",
                    bytes.len(),
                    inc.written,
                    inc.size
                ));
            }
            if let Err(e) = inc.file.write_all(&bytes) {
                *incoming = None;
                return refused(format!("cannot store the package: {e}"));
            }
            inc.written += bytes.len() as u64;
            PeerAnswer::SyncStored
        }
        PeerRequest::PackageCommit => {
            let Some(mut inc) = incoming.take() else {
                return refused("no package transfer begun on this connection");
            };
            if inc.written != inc.size {
                return refused(format!(
                    "the package is incomplete: {} of {} bytes",
                    inc.written, inc.size
                ));
            }
            match digest_of(&mut inc.file) {
                Ok(d) if d == inc.sha256 => {}
                Ok(d) => {
                    return refused(format!(
                        "the package arrived damaged (SHA-256 {d}, the sender's {})",
                        inc.sha256
                    ))
                }
                Err(e) => return refused(format!("cannot read the package back: {e}")),
            }
            match install(&inc.path) {
                Ok(i) => {
                    log.event(
                        "SYSTEM",
                        format_args!(
                            "update: version {} (K2K {}) received from {from}, signed by {}, installed in slot {} on trial; restarting into it",
                            i.version,
                            i.k2k_version,
                            key_name(&i.signer),
                            i.slot.as_str()
                        ),
                    );
                    if let Some(h) = &i.key_handoff {
                        log.event("SYSTEM", format_args!("update: {h}"));
                    }
                    request_restart(Duration::from_millis(300));
                    PeerAnswer::PackageInstalled(i)
                }
                Err(e) => {
                    log.event(
                        "SYSTEM",
                        format_args!("update from {from} refused, nothing installed: {e}"),
                    );
                    refused(e)
                }
            }
        }
        _ => refused("not a package request"),
    }
}

/// A trusted key's file name without its directory.
fn key_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn digest_of(f: &mut File) -> std::io::Result<String> {
    f.seek(SeekFrom::Start(0))?;
    package::digest_stream(f, None).map(|(_, d)| d)
}

/// Sends the package at `pkg` to the peer over `client`; the peer checks
/// and installs it, then restarts into it. Returns what it installed.
pub fn send(client: &mut PeerClient, pkg: &Path) -> Result<Installed, String> {
    let mut f = File::open(pkg).map_err(|e| format!("cannot open {}: {e}", pkg.display()))?;
    let size = f
        .metadata()
        .map_err(|e| format!("cannot read {}: {e}", pkg.display()))?
        .len();
    let sha256 = digest_of(&mut f).map_err(|e| format!("cannot read {}: {e}", pkg.display()))?;
    f.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    let ask = |client: &mut PeerClient, r: &PeerRequest| match client.ask(r) {
        Ok(PeerAnswer::Refused { reason })
        | Err(crate::peer::service::PeerError::Refused { reason, .. }) => {
            Err(format!("the peer refused the package: {reason}"))
        }
        Ok(a) => Ok(a),
        Err(e) => Err(format!("the package did not reach the peer: {e}")),
    };
    ask(client, &PeerRequest::PackageBegin { size, sha256 })?;
    let mut buf = vec![0u8; CHUNK];
    let mut offset = 0u64;
    while offset < size {
        let n = f
            .read(&mut buf)
            .map_err(|e| format!("cannot read {}: {e}", pkg.display()))?;
        if n == 0 {
            return Err(format!("{} got shorter while it was sent", pkg.display()));
        }
        ask(
            client,
            &PeerRequest::PackagePut {
                offset,
                data: hex(&buf[..n]),
            },
        )?;
        offset += n as u64;
    }
    // Checking and installing a large package takes the peer a moment.
    client.set_timeout(Duration::from_secs(30));
    match ask(client, &PeerRequest::PackageCommit)? {
        PeerAnswer::PackageInstalled(i) => Ok(i),
        other => Err(format!("unexpected answer from the peer: {other:?}")),
    }
}

/// A new version on trial confirms itself once it has been healthy (see
/// [`set_healthy`]) for [`HEALTHY_FOR`]; a thread of its own, since the
/// confirmation writes a file.
pub struct Trial {
    _thread: crate::background::Background,
}

impl Trial {
    /// Starts the watch if this member runs a version on trial; says so
    /// in the log either way (and what a rollback before this start was).
    pub fn start(log: &EventLog) -> Option<Trial> {
        let slots = setup()?.slots.as_ref()?;
        let mut record = match slots.record() {
            Ok(r) => r,
            Err(e) => {
                log.event("SYSTEM", format_args!("WARNING: update slots: {e}"));
                return None;
            }
        };
        let running = tandem_dataplane::build::get();
        if let (Some(why), false) = (&record.last_rollback, record.rollback_logged) {
            log.event(
                "SYSTEM",
                format_args!(
                    "update rolled back: {why}; running version {} from slot {}",
                    running.version,
                    record.active.as_str()
                ),
            );
            record.rollback_logged = true;
            if let Err(e) = slots.write_record(&record) {
                log.event("SYSTEM", format_args!("WARNING: update slots: {e}"));
            }
        }
        refresh_view();
        let Some(trial) = record.trial.clone() else {
            log.event(
                "SYSTEM",
                format_args!(
                    "running version {} (K2K {}) from slot {}",
                    running.version,
                    running.k2k_version,
                    record.active.as_str()
                ),
            );
            return None;
        };
        log.event(
            "SYSTEM",
            format_args!(
                "running version {} (K2K {}) from slot {} on trial (start {} of {}): it must rejoin its peer within {} s or tandem-boot rolls it back to slot {}",
                running.version,
                running.k2k_version,
                record.active.as_str(),
                trial.starts,
                slots::MAX_TRIAL_STARTS,
                trial.confirm_within_secs,
                record.previous.map_or("-", Slot::as_str)
            ),
        );
        let watch_log = log.clone();
        let slots = slots.clone();
        let thread = crate::background::Background::spawn("tandem-trial", move |stop| {
            let log = watch_log;
            let t0 = std::time::Instant::now();
            let mut healthy_since = None;
            let limit = Duration::from_secs(trial.confirm_within_secs) + Duration::from_secs(5);
            while !stop.load(Ordering::Relaxed) && t0.elapsed() < limit {
                std::thread::sleep(Duration::from_millis(250));
                if !HEALTHY.load(Ordering::Relaxed) {
                    healthy_since = None;
                    continue;
                }
                let since = *healthy_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() < HEALTHY_FOR {
                    continue;
                }
                let confirmed = slots.confirm();
                refresh_view();
                match confirmed {
                    Ok(_) => log.event(
                        "SYSTEM",
                        format_args!(
                            "update confirmed: version {} rejoined its peer after {:.1} s; the previous version stays in slot {} for a rollback",
                            tandem_dataplane::build::get().version,
                            t0.elapsed().as_secs_f64(),
                            record.previous.map_or("-", Slot::as_str)
                        ),
                    ),
                    Err(e) => log.event(
                        "SYSTEM",
                        format_args!("WARNING: the update could not be confirmed: {e}"),
                    ),
                }
                return;
            }
        });
        match thread {
            Ok(t) => Some(Trial { _thread: t }),
            Err(e) => {
                log.event(
                    "SYSTEM",
                    format_args!("WARNING: no trial watch ({e}): this version will be rolled back"),
                );
                None
            }
        }
    }
}

/// The slots as hainfo shows them, kept by the threads that change them
/// (never the control thread, which reads it with `try_lock`).
static VIEW: std::sync::Mutex<Option<crate::api::SlotsView>> = std::sync::Mutex::new(None);

/// Reads the slots again for [`view`] (after a change; not on the
/// control thread: it reads files).
pub fn refresh_view() {
    let v = slots().ok().and_then(|slots| {
        let r = slots.record().ok()?;
        let other = slots.info(r.active.other());
        Some(crate::api::SlotsView {
            active: r.active.as_str().to_owned(),
            on_trial: r.trial.is_some(),
            backup_slot: other.slot.as_str().to_owned(),
            backup_version: other.version,
            last_rollback: r.last_rollback,
        })
    });
    *VIEW
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = v;
}

/// This member's slots as last read (`None` without slots; never waits).
pub fn view() -> Option<crate::api::SlotsView> {
    VIEW.try_lock().ok().and_then(|g| g.clone())
}
