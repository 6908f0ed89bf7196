//! Running commands with time limits, signalling process groups.

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{LabError, Result};

/// Default time limit of a short command (`ip`, `sysctl`, `ethtool`, ...).
pub const SHORT_TIMEOUT: Duration = Duration::from_secs(15);

/// Renders a command line for messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Builds a `Command` from an argv.
pub fn command<S: AsRef<OsStr>>(argv: &[S]) -> Command {
    assert!(!argv.is_empty(), "empty argv");
    let mut cmd = Command::new(argv[0].as_ref());
    cmd.args(argv[1..].iter().map(|a| a.as_ref()));
    cmd
}

fn drain<R: Read + Send + 'static>(mut r: R) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        let _ = tx.send(v);
    });
    rx
}

/// Runs `cmd` in its own process group with stdin closed, capturing its
/// output; kills the whole group with SIGKILL if it runs longer than
/// `timeout` and returns [`LabError::Timeout`]. A non-zero exit is NOT an
/// error here (see [`check`]).
pub fn run_timeout(mut cmd: Command, timeout: Duration) -> Result<Output> {
    let desc = describe(&cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd
        .spawn()
        .map_err(|e| LabError::io(format!("spawning `{desc}`"), e))?;
    let out_rx = drain(child.stdout.take().expect("piped stdout"));
    let err_rx = drain(child.stderr.take().expect("piped stderr"));
    let deadline = Instant::now() + timeout;
    let mut nap = Duration::from_millis(2);
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) => {}
            Err(e) => return Err(LabError::io(format!("waiting for `{desc}`"), e)),
        }
        let now = Instant::now();
        if now >= deadline {
            signal_group(child.id(), "KILL");
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(nap.min(deadline - now));
        nap = (nap * 2).min(Duration::from_millis(50));
    };
    // Grandchildren that escaped the group could keep the pipes open: bound the wait.
    let stdout = out_rx
        .recv_timeout(Duration::from_secs(2))
        .unwrap_or_default();
    let stderr = err_rx
        .recv_timeout(Duration::from_secs(2))
        .unwrap_or_default();
    match status {
        Some(status) => Ok(Output {
            status,
            stdout,
            stderr,
        }),
        None => Err(LabError::Timeout {
            what: desc,
            timeout,
        }),
    }
}

/// Turns a non-zero exit into [`LabError::Command`]; returns stdout.
pub fn check(desc: &str, out: Output) -> Result<String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(LabError::Command {
            cmd: desc.to_string(),
            code: out.status.code(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Runs an argv in the root namespace with [`SHORT_TIMEOUT`] and fails on a
/// non-zero exit; returns stdout.
pub fn run_root<S: AsRef<OsStr>>(argv: &[S]) -> Result<String> {
    let cmd = command(argv);
    let desc = describe(&cmd);
    let out = run_timeout(cmd, SHORT_TIMEOUT)?;
    check(&desc, out)
}

/// Sends `signal` (a name such as "TERM" or "KILL") to the process group
/// `pgid` with kill(1). Errors (group already gone) are ignored.
pub fn signal_group(pgid: u32, signal: &str) {
    if pgid <= 1 {
        return;
    }
    let _ = Command::new("kill")
        .args(["-s", signal, "--", &format!("-{pgid}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Sends `signal` to each pid of `pids` with one kill(1). Errors are ignored.
pub fn signal_pids(pids: &[u32], signal: &str) {
    let pids: Vec<String> = pids
        .iter()
        .filter(|p| **p > 1)
        .map(|p| p.to_string())
        .collect();
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .args(["-s", signal, "--"])
        .args(&pids)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// True if a process with this pid exists (zombies included).
pub fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// True if the current process runs as root (effective uid 0).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Polls `f` until it returns `Some`, at most until `timeout` has passed,
/// sleeping `step` between tries. Returns `None` on timeout.
pub fn poll_until<T>(
    timeout: Duration,
    step: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    // Bounded by count too, whatever the clock does.
    let max_tries = (timeout.as_millis() / step.as_millis().max(1)) as usize + 2;
    for _ in 0..max_tries {
        if let Some(v) = f() {
            return Some(v);
        }
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        thread::sleep(step.min(deadline - now));
    }
    None
}
