//! The configuration sync between the members (HA-REFERENCE F16, F2's
//! "configuration files"): both members keep the cluster directory
//! (`cluster.ron`, the policy) identical, and each knows whether it was
//! changed since the last sync.
//!
//! - **Status**: a member's manifest digest, its revision and whether its
//!   directory differs from what it had at its last sync ("local
//!   modifications"). Each member asks the other every
//!   [`WATCH_PERIOD`] ([`ConfigWatch`]); `hainfo` shows both and a notice
//!   naming the members with local modifications.
//! - **hasync** ([`send`]) pushes this member's directory to the peer: the
//!   peer asks only for the files that differ, stages and checks them
//!   ([`super::files::Staging`]), validates the whole (its `node.ron`
//!   merged with the new `cluster.ron`, the policy compiled), swaps it in
//!   at once and reloads what changed (the policy, without a restart).
//!   A peer with local modifications of its own refuses unless forced.
//! - **hasynctest** ([`compare`]) lists the files that differ, **hadiff**
//!   ([`diff`]) shows one.
//!
//! Everything here runs on the members' service thread (receiving) or the
//! API's job thread (sending); never on the control thread.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::files::{self, FileEntry, Staging, SyncState};
use super::service::{PeerAnswer, PeerClient, PeerRequest};
use crate::eventlog::EventLog;

/// Bytes of a file per frame (hex doubles them; a sealed frame holds
/// 64 KiB).
pub const CHUNK: usize = 24 * 1024;
/// How often each member asks the other for its configuration status.
pub const WATCH_PERIOD: Duration = Duration::from_secs(2);

/// A member's configuration as the other one sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigStatus {
    /// The member.
    pub serial: String,
    /// Its revision (the same on both after a sync).
    pub revision: u64,
    /// Its manifest digest (hex SHA-256): equal digests, identical
    /// directories.
    pub digest: String,
    /// Its directory differs from what it had at its last sync.
    pub local_changes: bool,
    /// When it last synchronized (Unix seconds; 0: never).
    pub last_sync_at: u64,
    /// From which member (empty: never).
    pub last_sync_from: String,
    /// Its manifest.
    pub files: Vec<FileEntry>,
}

/// What applying a received revision does on the node: given the paths
/// that changed, the lines saying what it did (a policy reloaded, what
/// waits for a restart).
pub type ApplyFn = dyn Fn(&[String]) -> Vec<String> + Send + Sync;
/// Validates a staged cluster directory as this node would run it;
/// `Ok` says what it holds, `Err` why it cannot run.
pub type ValidateFn = dyn Fn(&Path) -> Result<String, String> + Send + Sync;

/// What the configuration sync asks of the node it runs on.
pub struct Hooks {
    /// Validates a staged cluster directory as the node would run it.
    pub validate: Box<ValidateFn>,
    /// Applies what changed (reloads, live parameters).
    pub apply: Box<ApplyFn>,
    /// Whether the node is the active member now.
    pub is_active: Box<dyn Fn() -> bool + Send + Sync>,
}

/// A member's side of the configuration sync.
pub struct ConfSync {
    /// This member's serial.
    pub serial: String,
    /// The cluster directory.
    pub dir: PathBuf,
    /// Where the sync state is kept.
    pub state_file: PathBuf,
    /// The identity file (the member compares it with a joiner's).
    pub identity_file: Option<PathBuf>,
    validate: Box<ValidateFn>,
    apply: Box<ApplyFn>,
    pub(crate) log: EventLog,
    /// A revision is being received.
    receiving: AtomicBool,
    /// The members' full serials as the cluster file lists them (a join
    /// adds one); the control thread reads it with `try_lock` to name a
    /// peer whose heartbeats carry only the serial's last 8 bytes.
    pub serials: Arc<Mutex<Vec<String>>>,
    /// A member `ha cluster remove` marked, removed by `ha cluster
    /// activate`.
    pub(crate) pending_removal: Mutex<Option<String>>,
    /// Held while the directory is swapped (a received sync, a join
    /// recorded, `activate`, `ha set`): one writer at a time, none lost.
    pub(crate) dir_lock: Mutex<()>,
    /// The file groups of the cluster file (F15).
    pub(crate) groups: Mutex<Vec<tandem_config::cluster::FileGroup>>,
    /// Whether this member is active now (only the active sends file
    /// groups).
    is_active: Box<dyn Fn() -> bool + Send + Sync>,
    /// The new pre-shared key of a key change the peer staged here (F8),
    /// until it is committed or given up.
    pub(crate) staged_psk: Mutex<Option<tandem_config::Secret>>,
}

/// A revision being received on one connection of the members' service;
/// dropped (with its staging directory) when the connection ends.
pub struct Receiving {
    staging: Option<Staging>,
    files: Vec<FileEntry>,
    from: String,
    revision: u64,
    /// A file group instead of the configuration.
    group: Option<String>,
    conf: Arc<ConfSync>,
}

impl Drop for Receiving {
    fn drop(&mut self) {
        self.conf.receiving.store(false, Ordering::Release);
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `00042`, as revisions are shown.
pub fn revision_text(r: u64) -> String {
    format!("{r:05}")
}

/// A size for people: `812 B`, `1.1 KiB`, `2.0 MiB`.
pub fn size_text(n: u64) -> String {
    match n {
        0..=1023 => format!("{n} B"),
        1024..=1_048_575 => format!("{:.1} KiB", n as f64 / 1024.0),
        _ => format!("{:.1} MiB", n as f64 / 1_048_576.0),
    }
}

impl ConfSync {
    /// The sync of the cluster directory `dir` of member `serial`, its
    /// state in `state_file`. Removes what an interrupted sync left, and
    /// takes the directory as it is as the starting point when there is
    /// no state yet.
    pub fn new(
        serial: &str,
        dir: &Path,
        state_file: &Path,
        identity_file: Option<PathBuf>,
        hooks: Hooks,
        log: EventLog,
    ) -> Result<Arc<ConfSync>, String> {
        let Hooks {
            validate,
            apply,
            is_active,
        } = hooks;
        let removed = files::remove_stale_staging(dir);
        if removed > 0 {
            log.event(
                "HA",
                format_args!(
                    "configuration sync: removed {removed} staging director{} of an interrupted sync",
                    if removed == 1 { "y" } else { "ies" }
                ),
            );
        }
        if SyncState::load(state_file)?.is_none() {
            let manifest = files::scan(dir)?;
            SyncState {
                revision: 1,
                digest: files::digest(&manifest),
                at: 0,
                from: String::new(),
            }
            .save(state_file)?;
        }
        let conf = Arc::new(ConfSync {
            serial: serial.to_owned(),
            dir: dir.to_owned(),
            state_file: state_file.to_owned(),
            identity_file,
            validate,
            apply,
            log,
            receiving: AtomicBool::new(false),
            serials: Arc::new(Mutex::new(Vec::new())),
            pending_removal: Mutex::new(None),
            dir_lock: Mutex::new(()),
            groups: Mutex::new(Vec::new()),
            is_active,
            staged_psk: Mutex::new(None),
        });
        conf.refresh_serials();
        Ok(conf)
    }

    /// A configuration revision is being received now.
    pub fn receiving(&self) -> bool {
        self.receiving.load(Ordering::Acquire)
    }

    /// Takes the members' serials from the cluster file (kept as they
    /// were if it does not load).
    pub(crate) fn refresh_serials(&self) {
        if let Ok(f) = self.cluster_file() {
            if let Ok(mut s) = self.serials.lock() {
                *s = f.members.iter().map(|m| m.serial.clone()).collect();
            }
            if let Ok(mut g) = self.groups.lock() {
                *g = f.file_groups;
            }
        }
    }

    /// Sends file group `g` to the peer if its files differ there: how
    /// many files it sent (0: the same already).
    pub(crate) fn push_group(
        &self,
        client: &mut PeerClient,
        g: &tandem_config::cluster::FileGroup,
    ) -> Result<usize, String> {
        let ask =
            |client: &mut PeerClient, r: &PeerRequest| client.ask(r).map_err(|e| e.to_string());
        let local = self.group_files(&g.name)?;
        let peer = match ask(
            client,
            &PeerRequest::GroupStatus {
                name: g.name.clone(),
            },
        )? {
            PeerAnswer::GroupFiles { files } => files,
            other => return Err(super::service::unexpected(&other)),
        };
        if local == peer {
            return Ok(0);
        }
        let want = match ask(
            client,
            &PeerRequest::SyncBegin {
                from: self.serial.clone(),
                revision: 0,
                files: local.clone(),
                force: true,
                group: Some(g.name.clone()),
            },
        )? {
            PeerAnswer::SyncWant { paths } => paths,
            other => return Err(super::service::unexpected(&other)),
        };
        let dir = self.group_dir(&g.name)?;
        for path in &want {
            send_file(client, &dir.join(path), path)?;
        }
        match ask(client, &PeerRequest::SyncCommit)? {
            PeerAnswer::SyncApplied { .. } => {}
            other => return Err(super::service::unexpected(&other)),
        }
        self.log.event(
            "HA",
            format_args!(
                "file group {} sent to the peer: {} of {} files changed",
                g.name,
                want.len(),
                local.len()
            ),
        );
        Ok(want.len().max(1))
    }

    /// Whether `serial` is the cluster's other member (listed, not us).
    pub fn is_peer(&self, serial: &str) -> bool {
        serial != self.serial
            && self
                .serials
                .lock()
                .map(|s| s.iter().any(|x| x == serial))
                .unwrap_or(false)
    }

    /// This member's configuration status now.
    pub fn status(&self) -> Result<ConfigStatus, String> {
        // Not between a swap and its state: no false "local
        // modifications".
        let _no_writer = self
            .dir_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let files = files::scan(&self.dir)?;
        let digest = files::digest(&files);
        let state = SyncState::load(&self.state_file)?.unwrap_or_default();
        Ok(ConfigStatus {
            serial: self.serial.clone(),
            revision: state.revision,
            local_changes: digest != state.digest,
            digest,
            last_sync_at: state.at,
            last_sync_from: state.from,
            files,
        })
    }

    /// Answers a configuration request of the members' service;
    /// `receiving` is the connection's sync in progress.
    pub fn handle(
        self: &Arc<Self>,
        request: PeerRequest,
        receiving: &mut Option<Receiving>,
    ) -> PeerAnswer {
        let refuse = |reason: String| PeerAnswer::Refused { reason };
        match request {
            PeerRequest::ConfigStatus => match self.status() {
                Ok(s) => PeerAnswer::ConfigStatus(s),
                Err(e) => refuse(e),
            },
            PeerRequest::GetFile { path, offset } => match self.chunk(&path, offset) {
                Ok((size, data)) => PeerAnswer::FileChunk {
                    size,
                    data: files::hex(&data),
                },
                Err(e) => refuse(e),
            },
            PeerRequest::GroupStatus { name } => match self.group_files(&name) {
                Ok(files) => PeerAnswer::GroupFiles { files },
                Err(e) => refuse(e),
            },
            PeerRequest::SyncBegin {
                from,
                revision,
                files,
                force,
                group,
            } => {
                let sender = from.clone();
                match self.begin(from, revision, files, force, group) {
                    Ok((r, want)) => {
                        *receiving = Some(r);
                        PeerAnswer::SyncWant { paths: want }
                    }
                    Err(e) => {
                        self.log.event(
                            "HA",
                            format_args!("configuration sync from {sender} refused: {e}"),
                        );
                        refuse(e)
                    }
                }
            }
            PeerRequest::SyncPut { path, offset, data } => {
                let put = match receiving.as_mut().and_then(|r| r.staging.as_mut()) {
                    None => Err("no sync in progress on this connection".to_string()),
                    Some(s) => files::unhex(&data).and_then(|b| s.put(&path, offset, &b)),
                };
                match put {
                    Ok(()) => PeerAnswer::SyncStored,
                    Err(e) => {
                        // A bad chunk ends the sync: nothing was applied.
                        *receiving = None;
                        refuse(format!("{e}; the sync is abandoned, nothing was applied"))
                    }
                }
            }
            PeerRequest::SyncCommit => match receiving.take() {
                None => refuse("no sync in progress on this connection".into()),
                Some(r) => {
                    let sender = r.from.clone();
                    match self.commit(r) {
                        Ok((revision, effects)) => PeerAnswer::SyncApplied { revision, effects },
                        Err(e) => {
                            self.log.event(
                                "HA",
                                format_args!("configuration sync from {sender} not applied: {e}"),
                            );
                            refuse(e)
                        }
                    }
                }
            },
            _ => refuse("not a configuration request".into()),
        }
    }

    fn chunk(&self, path: &str, offset: u64) -> Result<(u64, Vec<u8>), String> {
        files::check_path(path)?;
        // Only a file of the manifest: a regular file (no link) inside.
        if !files::scan(&self.dir)?.iter().any(|f| f.path == path) {
            return Err(format!("{path}: no such file here"));
        }
        let bytes = files::read_bounded(&self.dir.join(path))
            .map_err(|e| format!("{path}: no such file here ({e})"))?;
        let from = usize::try_from(offset)
            .ok()
            .filter(|&o| o <= bytes.len())
            .ok_or_else(|| format!("{path}: offset {offset} beyond its {} bytes", bytes.len()))?;
        let to = (from + CHUNK).min(bytes.len());
        Ok((bytes.len() as u64, bytes[from..to].to_vec()))
    }

    fn begin(
        self: &Arc<Self>,
        from: String,
        revision: u64,
        files: Vec<FileEntry>,
        force: bool,
        group: Option<String>,
    ) -> Result<(Receiving, Vec<String>), String> {
        let dir = match &group {
            Some(name) => {
                let dir = self.group_dir(name)?;
                std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                dir
            }
            None => self.dir.clone(),
        };
        let status = match group {
            Some(_) => None,
            None => Some(self.status()?),
        };
        if status.is_some_and(|s| s.local_changes) && !force {
            return Err(format!(
                "{} has local modifications that this sync would replace (tandemctl hasynctest and hadiff FILE on {from} show them); run tandemctl hasync --force on {from} to replace them, or tandemctl hasync on {} to send them instead",
                self.serial, self.serial
            ));
        }
        if self
            .receiving
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err("busy: another sync is being received; try again".into());
        }
        let mut r = Receiving {
            staging: None,
            files: files.clone(),
            from,
            revision,
            group,
            conf: self.clone(),
        };
        let (staging, want) = Staging::begin(&dir, files)?;
        r.staging = Some(staging);
        Ok((r, want))
    }

    /// The directory of file group `name` (F15), if the cluster has it.
    pub(crate) fn group_dir(&self, name: &str) -> Result<PathBuf, String> {
        let known = self
            .groups
            .lock()
            .map(|g| g.iter().any(|x| x.name == name))
            .unwrap_or(false);
        if !known || name.contains('/') {
            return Err(format!(
                "no file group {name:?} in this cluster (cluster.ron file_groups)"
            ));
        }
        Ok(PathBuf::from(format!("{}.groups", self.dir.display())).join(name))
    }

    /// The manifest of file group `name` (empty while it has no files).
    pub(crate) fn group_files(&self, name: &str) -> Result<Vec<FileEntry>, String> {
        let dir = self.group_dir(name)?;
        if dir.is_dir() {
            files::scan(&dir)
        } else {
            Ok(Vec::new())
        }
    }

    fn commit(&self, mut r: Receiving) -> Result<(u64, Vec<String>), String> {
        let staging = r
            .staging
            .take()
            .ok_or_else(|| "no sync in progress".to_string())?;
        if let Some(group) = &r.group {
            // Data, not configuration: swapped in whole, nothing to
            // validate or reload, no revision.
            staging
                .verify()
                .map_err(|e| format!("{e}; nothing was applied"))?;
            staging.switch()?;
            self.log.event(
                "HA",
                format_args!(
                    "file group {group} received from {}: {} files",
                    r.from,
                    r.files.len()
                ),
            );
            return Ok((0, Vec::new()));
        }
        let _one_writer = self
            .dir_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        staging
            .verify()
            .map_err(|e| format!("{e}; nothing was applied"))?;
        let summary = (self.validate)(staging.path()).map_err(|e| {
            format!("the configuration received would not run here: {e}; nothing was applied")
        })?;
        let before = files::scan(&self.dir)?;
        staging.switch()?;
        let digest = files::digest(&r.files);
        SyncState {
            revision: r.revision,
            digest,
            at: now_unix(),
            from: r.from.clone(),
        }
        .save(&self.state_file)?;
        self.refresh_serials();
        let changed: Vec<String> = files::differences(&before, &r.files)
            .into_iter()
            .map(|(p, _, _)| p.to_owned())
            .collect();
        self.log.event(
            "HA",
            format_args!(
                "configuration revision {} received from {} and applied ({}; changed: {})",
                revision_text(r.revision),
                r.from,
                summary,
                if changed.is_empty() {
                    "nothing".to_owned()
                } else {
                    changed.join(", ")
                }
            ),
        );
        let effects = (self.apply)(&changed);
        for e in &effects {
            self.log
                .event("HA", format_args!("configuration sync: {e}"));
        }
        Ok((r.revision, effects))
    }

    /// Validates a staged cluster directory as this node would run it.
    pub(crate) fn validate_staged(&self, staged: &Path) -> Result<String, String> {
        (self.validate)(staged)
    }

    /// Applies what changed in the cluster directory (the paths): the
    /// lines saying what was done.
    pub(crate) fn apply_changed(&self, changed: &[String]) -> Vec<String> {
        self.refresh_serials();
        (self.apply)(changed)
    }

    /// Records that this member sent `revision` with its directory as
    /// `digest`.
    fn sent(&self, revision: u64, digest: &str) -> Result<(), String> {
        SyncState {
            revision,
            digest: digest.to_owned(),
            at: now_unix(),
            from: self.serial.clone(),
        }
        .save(&self.state_file)
    }
}

/// One line of a `hasync` report: who did the step, which step, what.
pub(crate) fn step(
    lines: &mut Vec<String>,
    who: &str,
    n: usize,
    of: usize,
    action: &str,
    info: &str,
) {
    lines.push(format!("{who:<12} ({n}/{of}) {action:<24} {info}"));
}

/// `hasync`: sends this member's cluster directory to the peer on
/// `client`; the report's lines, and an error when it failed (the lines
/// say how far it went).
pub fn send(
    conf: &ConfSync,
    client: &mut PeerClient,
    link: &str,
    force: bool,
) -> (Vec<String>, Result<(), String>) {
    const STEPS: usize = 6;
    let me = conf.serial.as_str();
    let mut lines = Vec::new();
    let res = (|| -> Result<(), String> {
        let t0 = Instant::now();
        let peer = match client.ask(&PeerRequest::ConfigStatus) {
            Ok(PeerAnswer::ConfigStatus(s)) => s,
            Ok(other) => return Err(super::service::unexpected(&other)),
            Err(e) => return Err(e.to_string()),
        };
        step(
            &mut lines,
            me,
            1,
            STEPS,
            "Link evaluation",
            &format!(
                "{} answers on {link} ({}) in {:.1} ms",
                peer.serial,
                client.addr(),
                t0.elapsed().as_secs_f64() * 1e3
            ),
        );
        let local = conf.status()?;
        let diffs = files::differences(&local.files, &peer.files);
        step(
            &mut lines,
            me,
            2,
            STEPS,
            "Comparison",
            &format!(
                "{} files to consider, {} differ",
                local.files.len(),
                diffs.len()
            ),
        );
        let revision = local.revision.max(peer.revision).saturating_add(1);
        let want = match client.ask(&PeerRequest::SyncBegin {
            from: me.to_owned(),
            revision,
            files: local.files.clone(),
            force,
            group: None,
        }) {
            Ok(PeerAnswer::SyncWant { paths }) => paths,
            Ok(other) => return Err(super::service::unexpected(&other)),
            Err(e) => return Err(e.to_string()),
        };
        step(
            &mut lines,
            &peer.serial,
            3,
            STEPS,
            "Pre-check",
            &format!(
                "{} file{} wanted",
                want.len(),
                if want.len() == 1 { "" } else { "s" }
            ),
        );
        for (i, path) in want.iter().enumerate() {
            let size = send_file(client, &conf.dir.join(path), path)?;
            step(
                &mut lines,
                me,
                4,
                STEPS,
                "Synchronization",
                &format!("{}/{} {path} ({})", i + 1, want.len(), size_text(size)),
            );
        }
        if want.is_empty() {
            step(
                &mut lines,
                me,
                4,
                STEPS,
                "Synchronization",
                "nothing to send",
            );
        }
        let (applied, effects) = match client.ask(&PeerRequest::SyncCommit) {
            Ok(PeerAnswer::SyncApplied { revision, effects }) => (revision, effects),
            Ok(other) => return Err(super::service::unexpected(&other)),
            Err(e) => return Err(e.to_string()),
        };
        step(
            &mut lines,
            &peer.serial,
            5,
            STEPS,
            "Verification and apply",
            &format!(
                "hashes and configuration valid; revision {}",
                revision_text(applied)
            ),
        );
        conf.sent(applied, &local.digest)?;
        if effects.is_empty() {
            step(
                &mut lines,
                &peer.serial,
                6,
                STEPS,
                "Services",
                "nothing to reload",
            );
        }
        for e in &effects {
            step(&mut lines, &peer.serial, 6, STEPS, "Services", e);
        }
        conf.log.event(
            "HA",
            format_args!(
                "configuration revision {} sent to {} ({} of {} files)",
                revision_text(applied),
                peer.serial,
                want.len(),
                local.files.len()
            ),
        );
        Ok(())
    })();
    (lines, res)
}

/// Sends the file at `full` as `path` of a sync in progress on `client`,
/// in chunks: its size.
fn send_file(client: &mut PeerClient, full: &Path, path: &str) -> Result<u64, String> {
    let bytes = files::read_bounded(full)?;
    let mut offset = 0usize;
    loop {
        let end = (offset + CHUNK).min(bytes.len());
        match client.ask(&PeerRequest::SyncPut {
            path: path.to_owned(),
            offset: offset as u64,
            data: files::hex(&bytes[offset..end]),
        }) {
            Ok(PeerAnswer::SyncStored) => {}
            Ok(other) => return Err(super::service::unexpected(&other)),
            Err(e) => return Err(e.to_string()),
        }
        offset = end;
        if offset >= bytes.len() {
            return Ok(bytes.len() as u64);
        }
    }
}

/// `hasynctest`: the lines listing every file that differs between this
/// member and the peer (only the first two when none does).
pub fn compare(conf: &ConfSync, client: &mut PeerClient) -> Result<Vec<String>, String> {
    let peer = match client.ask(&PeerRequest::ConfigStatus) {
        Ok(PeerAnswer::ConfigStatus(s)) => s,
        Ok(other) => return Err(super::service::unexpected(&other)),
        Err(e) => return Err(e.to_string()),
    };
    let local = conf.status()?;
    let mut lines = vec![
        "building file list ...".to_owned(),
        format!(
            "{} files to consider",
            local.files.len().max(peer.files.len())
        ),
    ];
    let show = |e: Option<&FileEntry>| {
        e.map_or_else(
            || "absent".to_owned(),
            |e| format!("{} {}", &e.sha256[..8], size_text(e.size)),
        )
    };
    for (path, here, there) in files::differences(&local.files, &peer.files) {
        lines.push(format!(
            "{path}   local {}   {} {}",
            show(here),
            peer.serial,
            show(there)
        ));
    }
    Ok(lines)
}

/// `hadiff FILE`: a unified diff from the peer's copy to ours (empty when
/// they are the same).
pub fn diff(conf: &ConfSync, client: &mut PeerClient, path: &str) -> Result<String, String> {
    files::check_path(path)?;
    let local_path = conf.dir.join(path);
    let local = if local_path.exists() {
        files::read_bounded(&local_path)?
    } else {
        Vec::new()
    };
    let mut theirs = Vec::new();
    let mut peer_has = true;
    loop {
        match client.ask(&PeerRequest::GetFile {
            path: path.to_owned(),
            offset: theirs.len() as u64,
        }) {
            Ok(PeerAnswer::FileChunk { size, data }) => {
                theirs.extend(files::unhex(&data)?);
                if theirs.len() as u64 >= size || data.is_empty() {
                    break;
                }
            }
            Ok(other) => return Err(super::service::unexpected(&other)),
            Err(super::service::PeerError::Refused { reason, .. })
                if reason.contains("no such file") =>
            {
                peer_has = false;
                break;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    if !peer_has && !local_path.exists() {
        return Err(format!(
            "{path} is in neither member's cluster directory (tandemctl hasynctest lists the files)"
        ));
    }
    let text = |b: &[u8], name: &str| {
        String::from_utf8(b.to_vec()).map_err(|_| format!("{name} is not text: no diff to show"))
    };
    Ok(files::unified_diff(
        &text(&theirs, "the peer's copy")?,
        &text(&local, "the local copy")?,
        &format!("peer:{path}"),
        &format!("local:{path}"),
    ))
}

/// Both members' configuration as last seen by [`ConfigWatch`].
#[derive(Clone, Debug, Default)]
pub struct ConfigView {
    /// This member's.
    pub local: Option<ConfigStatus>,
    /// The peer's, when it answered.
    pub peer: Option<ConfigStatus>,
    /// Why it did not.
    pub peer_error: Option<String>,
    /// The file groups: the last send of each, in words.
    pub groups: Vec<String>,
    /// The peer's identity and version (asked once per session).
    pub peer_identity: Option<crate::api::IdentityReport>,
    /// When the peer last answered (Unix ms), and on which HA link.
    pub peer_answered: Option<(u64, String)>,
    /// What the peer says of itself (its role's start, its view of the
    /// links), from its last answer.
    pub peer_member: Option<crate::api::MemberStatusReport>,
    /// The peer refused the question (an older tandem): not asked again
    /// in this session.
    pub peer_member_refused: bool,
}

/// A thread (`tandem-confwatch`) that reads this member's configuration
/// status and asks the peer for its own every [`WATCH_PERIOD`].
pub struct ConfigWatch {
    /// What it saw last (read with `try_lock` by the control thread).
    pub view: Arc<Mutex<ConfigView>>,
    _thread: crate::background::Background,
}

impl ConfigWatch {
    /// Starts watching; `connect` opens a session with the peer (trying
    /// each HA link).
    pub fn start(
        conf: Arc<ConfSync>,
        connect: Box<dyn Fn() -> Result<(PeerClient, String), String> + Send>,
    ) -> std::io::Result<ConfigWatch> {
        let view = Arc::new(Mutex::new(ConfigView::default()));
        let v = view.clone();
        let thread = crate::background::Background::spawn("tandem-confwatch", move |s| {
            let mut client: Option<PeerClient> = None;
            let mut peer_identity: Option<crate::api::IdentityReport> = None;
            let (mut peer_member, mut member_refused) = (None, false);
            let mut link = String::new();
            // Per group: when it was last sent, and what that said.
            let mut pushed: std::collections::HashMap<String, (Instant, String)> =
                std::collections::HashMap::new();
            while !s.load(Ordering::Relaxed) {
                let local = conf.status().ok();
                let peer = (|| {
                    if client.is_none() {
                        let (c, l) = connect()?;
                        (client, link, peer_identity) = (Some(c), l, None);
                        member_refused = false;
                    }
                    let c = client.as_mut().ok_or("no session")?;
                    if peer_identity.is_none() {
                        if let Ok(PeerAnswer::Status(id)) = c.ask(&PeerRequest::Status) {
                            peer_identity = Some(id);
                        }
                    }
                    let status = match c.ask(&PeerRequest::ConfigStatus) {
                        Ok(PeerAnswer::ConfigStatus(p)) => p,
                        Ok(other) => return Err(super::service::unexpected(&other)),
                        Err(e) => return Err(e.to_string()),
                    };
                    // Asked once per session of a peer that refuses it
                    // (each refusal is counted and logged there).
                    if !member_refused {
                        match c.ask(&PeerRequest::MemberStatus) {
                            Ok(PeerAnswer::MemberStatus(m)) => peer_member = Some(m),
                            Ok(PeerAnswer::Refused { .. }) => {
                                (peer_member, member_refused) = (None, true);
                            }
                            Ok(other) => return Err(super::service::unexpected(&other)),
                            Err(e) => return Err(e.to_string()),
                        }
                    }
                    Ok(status)
                })();
                if peer.is_err() {
                    (client, peer_member) = (None, None);
                }
                // F15: the active member sends each group on its period.
                let groups = conf.groups.lock().map(|g| g.clone()).unwrap_or_default();
                if let (true, Some(c)) = ((conf.is_active)(), client.as_mut()) {
                    for g in &groups {
                        let due = pushed.get(&g.name).is_none_or(|(at, _)| {
                            at.elapsed() >= Duration::from_secs(u64::from(g.every_secs))
                        });
                        if !due {
                            continue;
                        }
                        let said = match conf.push_group(c, g) {
                            Ok(0) => "the same on both".to_owned(),
                            Ok(n) => format!("{n} files sent"),
                            Err(e) => {
                                let said = format!("not sent: {e}");
                                // Logged once per new failure; hainfo
                                // shows it until a send works.
                                if !pushed
                                    .get(&g.name)
                                    .is_some_and(|(_, last)| last.contains(&said))
                                {
                                    conf.log.event(
                                        "HA",
                                        format_args!(
                                            "file group {} {said}; retried every {} s",
                                            g.name, g.every_secs
                                        ),
                                    );
                                }
                                said
                            }
                        };
                        pushed.insert(
                            g.name.clone(),
                            (
                                Instant::now(),
                                format!("{}: {said} at {}", g.name, utc_text(now_unix())),
                            ),
                        );
                    }
                }
                if let Ok(mut g) = v.lock() {
                    g.groups = groups
                        .iter()
                        .map(|x| {
                            pushed.get(&x.name).map_or_else(
                                || {
                                    format!(
                                        "{}: every {} s, not sent by this member",
                                        x.name, x.every_secs
                                    )
                                },
                                |(_, said)| said.clone(),
                            )
                        })
                        .collect();
                    g.local = local;
                    g.peer_identity.clone_from(&peer_identity);
                    g.peer_member.clone_from(&peer_member);
                    g.peer_member_refused = member_refused;
                    match peer {
                        Ok(p) => {
                            g.peer = Some(p);
                            g.peer_error = None;
                            g.peer_answered = Some((now_unix_ms(), link.clone()));
                        }
                        Err(e) => {
                            g.peer = None;
                            g.peer_error = Some(e);
                        }
                    }
                }
                let until = Instant::now() + WATCH_PERIOD;
                while Instant::now() < until && !s.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        })?;
        Ok(ConfigWatch {
            view,
            _thread: thread,
        })
    }
}

/// The notice `hainfo` shows when the members' configurations are not
/// the same, naming who has what to send.
pub fn notice(local: &ConfigStatus, peer: Option<&ConfigStatus>) -> Option<String> {
    let changed: Vec<&str> = std::iter::once(local)
        .chain(peer)
        .filter(|s| s.local_changes)
        .map(|s| s.serial.as_str())
        .collect();
    if !changed.is_empty() {
        return Some(format!(
            "Notice: the configuration of {} has local modifications that the other member does not have yet: run tandemctl hasync on {}",
            changed.join(" and "),
            changed.join(" or ")
        ));
    }
    let peer = peer?;
    (peer.digest != local.digest).then(|| {
        format!(
            "Notice: the members' configurations differ (revision {} on {}, {} on {}) though neither was changed since its last sync: run tandemctl hasync on the member whose configuration is right",
            revision_text(local.revision),
            local.serial,
            revision_text(peer.revision),
            peer.serial
        )
    })
}

/// A Unix time as `2026-12-07 01:30:00 UTC`.
pub fn utc_text(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn member_info(s: &ConfigStatus) -> crate::api::MemberConfigInfo {
    crate::api::MemberConfigInfo {
        serial: s.serial.clone(),
        revision: revision_text(s.revision),
        local_changes: s.local_changes,
        digest: s.digest.chars().take(12).collect(),
        last_sync: if s.last_sync_at == 0 {
            "never".into()
        } else {
            format!("{} from {}", utc_text(s.last_sync_at), s.last_sync_from)
        },
    }
}

impl ConfigView {
    /// What `hainfo` shows of it; none before the first look.
    pub fn info(&self) -> Option<crate::api::ConfigSyncInfo> {
        let local = self.local.as_ref()?;
        Some(crate::api::ConfigSyncInfo {
            local: member_info(local),
            peer: self.peer.as_ref().map(member_info),
            peer_error: self.peer_error.clone(),
            synchronized: self
                .peer
                .as_ref()
                .map(|p| p.digest == local.digest && !p.local_changes && !local.local_changes),
            notice: notice(local, self.peer.as_ref()),
            file_groups: self.groups.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(serial: &str, digest: &str, changed: bool) -> ConfigStatus {
        ConfigStatus {
            serial: serial.into(),
            revision: 3,
            digest: digest.into(),
            local_changes: changed,
            ..Default::default()
        }
    }

    #[test]
    fn the_notice_names_who_changed_and_what_to_run() {
        let a = status("TDLAB0001", "aa", true);
        let b = status("TDLAB0002", "bb", false);
        let n = notice(&a, Some(&b)).unwrap();
        assert!(
            n.contains("of TDLAB0001 has local modifications") && n.contains("hasync on TDLAB0001"),
            "{n}"
        );
        let same = status("TDLAB0002", "aa", false);
        assert_eq!(notice(&status("TDLAB0001", "aa", false), Some(&same)), None);
        let n = notice(&status("TDLAB0001", "aa", false), Some(&b)).unwrap();
        assert!(
            n.contains("differ (revision 00003 on TDLAB0001, 00003 on TDLAB0002)"),
            "{n}"
        );
        assert_eq!(notice(&status("TDLAB0001", "aa", false), None), None);
    }

    #[test]
    fn times_and_sizes_read_as_people_write_them() {
        assert_eq!(utc_text(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_text(1_796_606_200), "2026-12-07 01:16:40 UTC");
        assert_eq!(utc_text(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(size_text(812), "812 B");
        assert_eq!(size_text(1130), "1.1 KiB");
        assert_eq!(revision_text(42), "00042");
    }
}
