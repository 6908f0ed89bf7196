//! Network namespaces as RAII handles, and processes running inside them.

use std::ffi::OsStr;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::cmd::{self, SHORT_TIMEOUT};
use crate::error::{LabError, Result};

/// Time a [`Proc`] gets between SIGTERM and SIGKILL by default.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3);

/// A network namespace created by the lab (`ip netns add`).
///
/// Dropping it kills every process still inside it (`ip netns pids`) and
/// deletes it, which also removes the veths living in it.
pub struct Netns {
    name: String,
    log_dir: PathBuf,
}

impl Netns {
    /// Creates the namespace `name`, brings its loopback up and disables
    /// IPv6 in it (for interfaces created later too), so the lab is quiet.
    /// Process logs of [`Netns::spawn`] go to `log_dir`.
    pub fn create(name: &str, log_dir: &Path) -> Result<Netns> {
        if name.is_empty() || name.len() > 64 || name.contains('/') {
            return Err(LabError::Other(format!("bad namespace name {name:?}")));
        }
        std::fs::create_dir_all(log_dir)
            .map_err(|e| LabError::io(format!("creating {}", log_dir.display()), e))?;
        // `ip netns exec` bind-mounts /etc/netns/NAME/* over /etc: an empty
        // resolv.conf and a hosts file keep name lookups inside the
        // namespace (glibc then asks 127.0.0.1), so no test host ever sends
        // a DNS query towards the machine's real resolver.
        let etc = etc_dir(name);
        std::fs::create_dir_all(&etc)
            .and_then(|()| std::fs::write(etc.join("resolv.conf"), "# tandem lab: no resolver\n"))
            .and_then(|()| std::fs::write(etc.join("hosts"), "127.0.0.1 localhost\n"))
            .map_err(|e| LabError::io(format!("writing {}", etc.display()), e))?;
        cmd::run_root(&["ip", "netns", "add", name])?;
        let ns = Netns {
            name: name.to_string(),
            log_dir: log_dir.to_path_buf(),
        };
        ns.run(&["ip", "link", "set", "lo", "up"])?;
        ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
        ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where [`Netns::spawn`] writes process logs.
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// A `Command` running `argv` inside the namespace (`ip netns exec`).
    pub fn command<S: AsRef<OsStr>>(&self, argv: &[S]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]);
        c.args(argv.iter().map(|a| a.as_ref()));
        c
    }

    /// Runs `argv` inside the namespace with a time limit of
    /// [`SHORT_TIMEOUT`]; returns its output whatever its exit code.
    pub fn exec<S: AsRef<OsStr>>(&self, argv: &[S]) -> Result<Output> {
        self.exec_timeout(argv, SHORT_TIMEOUT)
    }

    /// Runs `argv` inside the namespace; the whole process group is killed
    /// after `timeout` ([`LabError::Timeout`]).
    pub fn exec_timeout<S: AsRef<OsStr>>(&self, argv: &[S], timeout: Duration) -> Result<Output> {
        cmd::run_timeout(self.command(argv), timeout)
    }

    /// Runs `argv` inside the namespace and fails on a non-zero exit;
    /// returns stdout.
    pub fn run<S: AsRef<OsStr>>(&self, argv: &[S]) -> Result<String> {
        let c = self.command(argv);
        let desc = cmd::describe(&c);
        cmd::check(&desc, cmd::run_timeout(c, SHORT_TIMEOUT)?)
    }

    /// Sets a sysctl inside the namespace (`sysctl -q -w key=value`).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.run(&["sysctl", "-q", "-w", &format!("{key}={value}")])
            .map(|_| ())
    }

    /// Starts a long-running `argv` inside the namespace as
    /// `ip netns exec NAME setsid ARGV...` (no shell): `ip` and `setsid`
    /// exec in place, so [`Proc::pid`] is the program's own pid, which also
    /// leads its own session and process group. Stdout and stderr go to
    /// `<log_dir>/<label>.out` / `.err`.
    pub fn spawn<S: AsRef<OsStr>>(&self, label: &str, argv: &[S]) -> Result<Proc> {
        self.spawn_with(label, argv, |_| {})
    }

    /// Like [`Netns::spawn`], letting `tweak` adjust the `Command` first
    /// (environment, working directory).
    pub fn spawn_with<S: AsRef<OsStr>>(
        &self,
        label: &str,
        argv: &[S],
        tweak: impl FnOnce(&mut Command),
    ) -> Result<Proc> {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, "setsid"]);
        c.args(argv.iter().map(|a| a.as_ref()));
        tweak(&mut c);
        let safe: String = label
            .chars()
            .map(|ch| {
                if ch.is_ascii_alphanumeric() || ch == '-' {
                    ch
                } else {
                    '_'
                }
            })
            .collect();
        let stdout_path = unique_path(&self.log_dir, &format!("{}-{safe}", self.name), "out");
        let stderr_path = stdout_path.with_extension("err");
        let out = File::create(&stdout_path)
            .map_err(|e| LabError::io(format!("creating {}", stdout_path.display()), e))?;
        let err = File::create(&stderr_path)
            .map_err(|e| LabError::io(format!("creating {}", stderr_path.display()), e))?;
        let desc = cmd::describe(&c);
        c.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = c
            .spawn()
            .map_err(|e| LabError::io(format!("spawning `{desc}`"), e))?;
        Ok(Proc {
            label: format!("{}:{label}", self.name),
            command: desc,
            child,
            stdout_path,
            stderr_path,
            status: None,
            grace: DEFAULT_GRACE,
        })
    }

    /// Pids of every process whose network namespace is this one.
    pub fn pids(&self) -> Vec<u32> {
        pids_of(&self.name)
    }

    /// Kills (SIGKILL) every process in the namespace; waits (bounded) until
    /// none is left.
    pub fn kill_all(&self) {
        kill_all_in(&self.name);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        kill_all_in(&self.name);
        if let Err(e) = cmd::run_root(&["ip", "netns", "del", &self.name]) {
            eprintln!("[lab] warning: deleting namespace {}: {e}", self.name);
        }
        let _ = std::fs::remove_dir_all(etc_dir(&self.name));
    }
}

/// The per-namespace /etc overlay directory of `ip netns exec`.
pub fn etc_dir(name: &str) -> PathBuf {
    Path::new("/etc/netns").join(name)
}

fn unique_path(dir: &Path, stem: &str, ext: &str) -> PathBuf {
    let first = dir.join(format!("{stem}.{ext}"));
    if !first.exists() {
        return first;
    }
    (1..1000)
        .map(|i| dir.join(format!("{stem}.{i}.{ext}")))
        .find(|p| !p.exists())
        .unwrap_or(first)
}

/// Pids of the processes in namespace `name` (`ip netns pids`).
pub fn pids_of(name: &str) -> Vec<u32> {
    cmd::run_root(&["ip", "netns", "pids", name])
        .map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// SIGKILLs every process in namespace `name`, waiting at most 3 s for them
/// to disappear.
pub fn kill_all_in(name: &str) {
    for _ in 0..30 {
        let pids = pids_of(name);
        if pids.is_empty() {
            return;
        }
        cmd::signal_pids(&pids, "KILL");
        thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "[lab] warning: processes still in namespace {name}: {:?}",
        pids_of(name)
    );
}

/// A process started by [`Netns::spawn`].
///
/// Dropping it stops it: SIGTERM to its process group, SIGKILL after the
/// grace period. If the thread is panicking, the tail of its logs is
/// printed for post-mortem.
pub struct Proc {
    label: String,
    command: String,
    child: Child,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    status: Option<ExitStatus>,
    grace: Duration,
}

impl Proc {
    /// The program's pid (also its process group and session id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// "namespace:label".
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The command line it was started with.
    pub fn command_line(&self) -> &str {
        &self.command
    }

    /// Sets the time between SIGTERM and SIGKILL used by [`Proc::stop`].
    pub fn set_grace(&mut self, grace: Duration) {
        self.grace = grace;
    }

    /// Its exit status if it has exited (reaps it).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Ok(Some(s)) = self.child.try_wait() {
                self.status = Some(s);
            }
        }
        self.status
    }

    /// True while it has not exited.
    pub fn is_running(&mut self) -> bool {
        self.try_wait().is_none()
    }

    /// Waits at most `timeout` for it to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        cmd::poll_until(timeout, Duration::from_millis(20), || self.try_wait())
    }

    /// Sends `signal` ("TERM", "STOP", "CONT", ...) to its process group,
    /// if it is still running.
    pub fn signal(&mut self, signal: &str) {
        if self.is_running() {
            cmd::signal_group(self.pid(), signal);
        }
    }

    /// Stops it (SIGTERM to the group, SIGKILL after the grace period) and
    /// returns its exit status.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        if self.try_wait().is_some() {
            return self.status;
        }
        cmd::signal_group(self.pid(), "CONT");
        cmd::signal_group(self.pid(), "TERM");
        if let Some(s) = self.wait_timeout(self.grace) {
            return Some(s);
        }
        eprintln!(
            "[lab] {} ignored SIGTERM for {:?}: SIGKILL",
            self.label, self.grace
        );
        cmd::signal_group(self.pid(), "KILL");
        let _ = self.child.kill();
        self.wait_timeout(Duration::from_secs(5))
    }

    /// Everything it wrote to stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// Everything it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Paths of its stdout and stderr files.
    pub fn log_paths(&self) -> (&Path, &Path) {
        (&self.stdout_path, &self.stderr_path)
    }

    /// The last `lines` lines of stdout and stderr, labelled, for messages.
    pub fn logs_tail(&self, lines: usize) -> String {
        fn tail(s: &str, n: usize) -> String {
            let v: Vec<&str> = s.lines().collect();
            v[v.len().saturating_sub(n)..].join("\n")
        }
        format!(
            "--- {} ({}) stdout [{}] ---\n{}\n--- {} stderr [{}] ---\n{}",
            self.label,
            self.command,
            self.stdout_path.display(),
            tail(&self.stdout(), lines),
            self.label,
            self.stderr_path.display(),
            tail(&self.stderr(), lines)
        )
    }

    /// Fails with [`LabError::ProcessExited`] (logs included) if it has
    /// exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        match self.try_wait() {
            None => Ok(()),
            Some(s) => Err(LabError::ProcessExited {
                label: self.label.clone(),
                status: s.to_string(),
                logs: self.logs_tail(40),
            }),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let start = Instant::now();
        let was_running = self.is_running();
        self.stop();
        if thread::panicking() {
            eprintln!(
                "[lab] post-mortem of {} (was running: {was_running}, stopped in {:?}):\n{}",
                self.label,
                start.elapsed(),
                self.logs_tail(30)
            );
        }
    }
}
