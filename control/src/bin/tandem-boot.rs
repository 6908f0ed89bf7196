//! `tandem-boot`: starts tandemd from the active installation slot and
//! keeps the previous version bootable.
//!
//! - The first start installs the binaries beside tandem-boot into slot
//!   `a` (the factory installation).
//! - tandemd exits with `EXIT_UPDATE` after installing a new version:
//!   tandem-boot starts the slot the boot record now names.
//! - A version on trial that exits, or does not confirm itself (it
//!   rejoined its peer) within its trial time, is rolled back: the
//!   previous slot runs again and the boot record says why (tandemd puts
//!   it in the event log).
//! - SIGTERM and SIGINT go to tandemd, and tandem-boot ends with it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use tandem_control::update::package::{sha256_file, FileEntry, Manifest, FORMAT, PRODUCT};
use tandem_control::update::slots::{Slot, Slots};
use tandem_control::update::EXIT_UPDATE;

/// Starts tandemd from the active installation slot, rolls a new version
/// back when it does not confirm itself.
#[derive(Parser, Debug)]
#[command(name = "tandem-boot", about)]
struct Args {
    /// The installation root: ROOT/slots/{a,b}, ROOT/boot.json.
    #[arg(long, value_name = "DIR")]
    root: PathBuf,
    /// tandemd's arguments (after `--`), such as `--config FILE`.
    #[arg(last = true, required = true)]
    args: Vec<OsString>,
}

/// Starts of tandemd in one run of tandem-boot (updates and rollbacks
/// included) before it gives up.
const MAX_STARTS: usize = 16;
/// How long tandemd has to stop after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(30);

fn say(what: std::fmt::Arguments<'_>) {
    eprintln!("tandem-boot: {what}");
}

fn main() -> ExitCode {
    tandem_control::set_build!();
    let args: Args = tandem_control::build_info::parse_args();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            say(format_args!("{e}"));
            ExitCode::FAILURE
        }
    }
}

/// Slot `a` gets the binaries beside this program, when no slot holds a
/// version yet.
fn factory_install(slots: &Slots) -> Result<(), String> {
    if slots.daemon(Slot::A).is_file() || slots.daemon(Slot::B).is_file() {
        return Ok(());
    }
    let here = std::env::current_exe()
        .map_err(|e| format!("cannot find this program's directory: {e}"))?;
    let dir = here.parent().unwrap_or(Path::new("/"));
    let bin = slots.dir(Slot::A).join("bin");
    std::fs::create_dir_all(&bin).map_err(|e| format!("cannot create {}: {e}", bin.display()))?;
    let mut files = Vec::new();
    for name in ["tandemd", "tandemctl"] {
        let src = dir.join(name);
        let dst = bin.join(name);
        std::fs::copy(&src, &dst).map_err(|e| {
            format!(
                "cannot install {} into {}: {e} (tandem-boot installs the binaries beside it on its first start)",
                src.display(),
                dst.display()
            )
        })?;
        let (size, sha256) = sha256_file(&dst).map_err(|e| e.to_string())?;
        files.push(FileEntry {
            path: format!("bin/{name}"),
            size,
            mode: 0o755,
            sha256,
        });
    }
    let b = tandem_dataplane::build::get();
    let m = Manifest {
        format: FORMAT,
        product: PRODUCT.into(),
        version: b.version.into(),
        k2k_version: b.k2k_version,
        built_unix: 0,
        files,
    };
    let text = serde_json::to_vec_pretty(&m).map_err(|e| e.to_string())?;
    let path = slots.dir(Slot::A).join("manifest.json");
    std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    say(format_args!(
        "installed version {} into slot a (first start)",
        b.version
    ));
    Ok(())
}

fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    }
}

/// Stops `child`: SIGTERM, then SIGKILL after [`STOP_GRACE`].
fn stop(child: &mut Child) -> Option<ExitStatus> {
    signal(child, nix::sys::signal::Signal::SIGTERM);
    let t0 = Instant::now();
    while t0.elapsed() < STOP_GRACE {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(child, nix::sys::signal::Signal::SIGKILL);
    child.wait().ok()
}

fn run(args: &Args) -> Result<ExitCode, String> {
    let slots = Slots::open(&args.root)?;
    factory_install(&slots)?;
    let stop_signal = Arc::new(AtomicUsize::new(0));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register_usize(sig, stop_signal.clone(), sig as usize)
            .map_err(|e| format!("cannot catch signal {sig}: {e}"))?;
    }
    for _ in 0..MAX_STARTS {
        let (slot, rolled) = slots.next_start()?;
        if let Some(why) = rolled {
            say(format_args!("rolled back to slot {}: {why}", slot.as_str()));
        }
        let record = slots.record()?;
        let version = slots.info(slot).version.unwrap_or_else(|| "?".into());
        let daemon = slots.daemon(slot);
        let mut child = Command::new(&daemon)
            .args(&args.args)
            .arg("--slots")
            .arg(&args.root)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", daemon.display()))?;
        let trial_deadline = record
            .trial
            .as_ref()
            .map(|t| Instant::now() + Duration::from_secs(t.confirm_within_secs));
        let mut next_look = Instant::now() + Duration::from_secs(1);
        let mut stopping = false;
        let mut timed_out = false;
        let status = loop {
            match child.try_wait() {
                Ok(Some(st)) => break st,
                Ok(None) => {}
                Err(e) => return Err(format!("cannot watch tandemd: {e}")),
            }
            if !stopping && stop_signal.load(Ordering::Relaxed) != 0 {
                // The operator (or systemd) stops the node.
                stopping = true;
                signal(&child, nix::sys::signal::Signal::SIGTERM);
            }
            if !stopping && Instant::now() >= next_look {
                next_look = Instant::now() + Duration::from_secs(1);
                let still_on_trial = slots.record().map(|r| r.trial.is_some()).unwrap_or(false);
                if still_on_trial && trial_deadline.is_some_and(|d| Instant::now() >= d) {
                    let secs = record.trial.as_ref().map_or(0, |t| t.confirm_within_secs);
                    let why = format!(
                        "version {version} in slot {} did not rejoin its peer within {secs} s",
                        slot.as_str()
                    );
                    slots.roll_back(&why)?;
                    say(format_args!("{why}: rolling back"));
                    timed_out = true;
                    match stop(&mut child) {
                        Some(st) => break st,
                        None => return Err("tandemd could not be stopped".into()),
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if stopping {
            return Ok(exit_code(status));
        }
        if timed_out || status.code() == Some(i32::from(EXIT_UPDATE)) {
            continue;
        }
        // tandemd ended by itself: a version on trial is rolled back, a
        // confirmed one ends tandem-boot (systemd restarts the unit).
        if slots.record()?.trial.is_some() {
            let why = format!(
                "version {version} in slot {} stopped ({status}) before it rejoined its peer",
                slot.as_str()
            );
            slots.roll_back(&why)?;
            say(format_args!("{why}: rolling back"));
            continue;
        }
        return Ok(exit_code(status));
    }
    Err(format!(
        "tandemd was started {MAX_STARTS} times in this run: giving up (see the event log)"
    ))
}

fn exit_code(st: ExitStatus) -> ExitCode {
    match st.code() {
        Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
        None => ExitCode::FAILURE,
    }
}
