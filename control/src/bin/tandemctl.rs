//! `tandemctl`: the operator's CLI for the local `tandemd`.
//!
//! Exit codes: 0 on success, 1 when tandemd answers with an error, 2 when
//! tandemd cannot be reached or its answer cannot be read (and on bad
//! command-line arguments, as clap does).

use std::ffi::OsString;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tandem_control::api::{ConnFilter, DebugFault, Request, Response, DEFAULT_SOCKET_PATH};
use tandem_control::client::{
    format_connections, format_hainfo, format_identity, format_stats, format_status, format_sync,
    request,
};

/// Environment variable naming the control socket when --socket is not given.
const SOCKET_ENV: &str = "TANDEM_SOCKET";

/// Talks to the tandemd of this node over its control socket (root only).
#[derive(Parser, Debug)]
#[command(name = "tandemctl", version)]
struct Cli {
    /// Control socket of the tandemd to talk to [env: TANDEM_SOCKET=] [default: /run/tandem/tandemd.sock]
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,

    /// Print tandemd's answer as pretty JSON instead of tables
    #[arg(long, global = true)]
    json: bool,

    /// How long to wait for tandemd's answer, in milliseconds [default:
    /// 30000 for conn list, conn flush and policy reload, 2000 otherwise]
    #[arg(long, global = true, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(1..))]
    timeout_ms: Option<u64>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Identity, interfaces, routes, neighbours and workers of the node
    Status,
    /// Port, worker and drop counters
    Stats {
        /// Show every drop counter, zeros included
        #[arg(long)]
        all: bool,
    },
    /// The connection table
    Conn {
        #[command(subcommand)]
        action: ConnAction,
    },
    /// The filter policy
    Policy {
        #[command(subcommand)]
        action: PolicyAction,
    },
    /// Forces this member active, whatever its quality (until hareset)
    Haactive,
    /// Forces this member passive (until hareset)
    Hapassive,
    /// Removes the forced status
    Hareset,
    /// State sync with the peer: counters, replication lag
    Sync {
        #[command(subcommand)]
        action: Option<SyncAction>,
    },
    /// The cluster: both members (model, version, role and since when,
    /// quality, priority, configuration and table state, boot, HA links),
    /// the links and the last-resort path, the ICMP check
    Hainfo {
        /// Every field: protocol versions, election hold, licence, state,
        /// last configuration sync, when each link changed
        #[arg(short, long)]
        verbose: bool,
    },
    /// This member's mode: active or passive
    Hamode,
    /// This firewall's identity: serial, model, licence, data ports and
    /// firmware version (what a cluster checks when a member joins)
    Identity,
    /// Prints the shell completion script for tandemctl: bash, zsh or
    /// fish (e.g. tandemctl completions bash >
    /// /etc/bash_completion.d/tandemctl); needs no tandemd
    Completions {
        /// bash, zsh or fish (also elvish, powershell)
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Asks the peer who it is over the members' service (TCP 1300,
    /// authenticated by the cluster key, tried on each HA link)
    Hapeer,
    /// Sends this member's cluster configuration (cluster.ron, the policy)
    /// to the peer, which checks it, applies it whole and reloads what
    /// changed
    Hasync {
        /// Also replace the peer's own local modifications
        #[arg(long)]
        force: bool,
    },
    /// Lists the files of the cluster configuration that differ between
    /// this member and the peer (none: the two are identical)
    Hasynctest,
    /// Shows how a file of the cluster configuration differs between the
    /// peer's copy and this member's
    Hadiff {
        /// The file, relative to the cluster directory (policy.ron,
        /// cluster.ron)
        file: String,
    },
    /// The cluster's life: join a cluster
    Ha {
        #[command(subcommand)]
        action: HaAction,
    },
    /// Firmware: update a member from a signed package, build packages
    System {
        #[command(subcommand)]
        action: SystemAction,
    },
    /// Re-reads the cluster's configuration (cluster.ron) on this member
    /// and applies the HA parameters that changed in it; says what waits
    /// for a restart
    Enha,
    /// The event log (HA, sync, policy events)
    Log {
        /// How many of the last lines
        #[arg(long, short = 'n', default_value_t = 50)]
        lines: usize,
    },
    /// Fault injection for tests (refused unless tandemd was started with
    /// TANDEM_TEST_FAULTS=1; never in production)
    Debug {
        #[command(subcommand)]
        action: DebugAction,
    },
}

#[derive(Subcommand, Debug)]
enum ClusterAction {
    /// Marks a member for removal (a failed firewall being replaced);
    /// `activate` applies it. Refused while that member is heard
    Remove {
        /// serial=SERIAL, or serial=remote for the other member
        #[arg(value_name = "serial=SERIAL|remote")]
        member: String,
        /// Also while the member is heard
        #[arg(long)]
        force: bool,
    },
    /// Applies the pending removal: the member's place is free for a
    /// replacement to join
    Activate,
}

#[derive(Subcommand, Debug)]
enum SetParam {
    /// "Active firewall if equal": this member, the other one, or none
    Prefer {
        /// this, other or none
        member: String,
    },
    /// Synchronize only connections older than this (0: all, at once)
    SyncMinAge {
        /// Seconds
        secs: u32,
    },
    /// Swap options
    Swap {
        /// Bounce the data interfaces on becoming passive: on or off
        #[arg(long, value_parser = on_off)]
        bounce: Option<bool>,
        /// Keep LACP aggregates in distribution while passive: on or off
        #[arg(long, value_parser = on_off)]
        lacp_when_passive: Option<bool>,
        /// Repeat gratuitous ARP this often while active, in ms (0: never)
        #[arg(long, value_name = "MS")]
        garp_interval: Option<u32>,
    },
    /// Data interfaces' weights in the quality factor: IFACE=WEIGHT ...
    /// (0..=9999)
    Weight {
        /// IFACE=WEIGHT
        #[arg(required = true, value_parser = iface_weight)]
        weights: Vec<(String, u16)>,
    },
    /// The cluster's pre-shared key, changed on both members with no HA
    /// outage (both keys are accepted while the change travels)
    Key {
        /// Read the new key from the first line of FILE (else it is typed
        /// twice)
        #[arg(long, value_name = "FILE")]
        psk_file: Option<PathBuf>,
    },
}

fn on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("{s:?}: allowed on or off")),
    }
}

fn iface_weight(s: &str) -> Result<(String, u16), String> {
    let (i, w) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected IFACE=WEIGHT such as in=200"))?;
    let w: u16 = w
        .parse()
        .ok()
        .filter(|w| *w <= 9999)
        .ok_or_else(|| format!("{s:?}: the weight must be 0..=9999"))?;
    Ok((i.to_owned(), w))
}

#[derive(Subcommand, Debug)]
enum HaAction {
    /// Changes a parameter of the cluster on this member and sends it to
    /// the peer: both apply it at once
    Set {
        /// Change it here only (it waits as a local modification until
        /// hasync)
        #[arg(long)]
        no_sync: bool,
        #[command(subcommand)]
        param: SetParam,
    },
    /// The cluster's members: replace a failed one (RMA)
    Cluster {
        #[command(subcommand)]
        action: ClusterAction,
    },
    /// Turns this firewall, running alone, into the first member of a new
    /// cluster, without a restart: it stays active and waits for a second
    /// firewall to join
    Create {
        /// The main HA link: INTERFACE,ADDRESS/PREFIX[,peer=ADDRESS][,name=NAME]
        /// (peer: the second member's address, guessed on a /30 or /31)
        #[arg(long, value_name = "IF,ADDR/P[,peer=A][,name=N]")]
        main: String,
        /// The backup HA link, in the same form
        #[arg(long, value_name = "IF,ADDR/P[,peer=A][,name=N]")]
        backup: Option<String>,
        /// Read the pre-shared key from this file (its first line);
        /// without it the key is asked twice on the terminal
        #[arg(long, value_name = "FILE")]
        psk_file: Option<PathBuf>,
        /// Encrypt the state sync (it is always authenticated)
        #[arg(long)]
        encrypt: bool,
        /// Take a passive member's LACP aggregates out of distribution
        #[arg(long)]
        no_lacp_when_passive: bool,
    },
    /// Joins the cluster of a member: proves the pre-shared key to it over
    /// TCP 1300, takes the cluster's configuration, and restarts tandemd
    /// as a member (passive: the data ports stay silent while the member
    /// forwards)
    Join {
        /// The main HA link: INTERFACE,ADDRESS/PREFIX (this firewall's
        /// address on it, e.g. ha-main,198.19.69.2/30)
        #[arg(long, value_name = "IF,ADDR/P")]
        main: String,
        /// The backup HA link, if the cluster has one: INTERFACE,ADDRESS/PREFIX
        #[arg(long, value_name = "IF,ADDR/P")]
        backup: Option<String>,
        /// The member's address on the main link
        #[arg(long, value_name = "ADDR")]
        member: std::net::Ipv4Addr,
        /// Read the pre-shared key from this file (its first line);
        /// without it the key is asked twice on the terminal
        #[arg(long, value_name = "FILE")]
        psk_file: Option<PathBuf>,
        /// Return once tandemd restarts, without waiting for the peer
        #[arg(long)]
        no_wait: bool,
    },
}

/// `IF,ADDR/P[,peer=A][,name=N]` of `ha create`.
fn create_link(
    option: &str,
    text: &str,
) -> Result<tandem_control::peer::create::CreateLink, String> {
    let mut parts = text.split(',');
    let (Some(interface), Some(address)) = (parts.next(), parts.next()) else {
        return Err(format!(
            "{option} {text:?}: expected INTERFACE,ADDRESS/PREFIX[,peer=ADDRESS][,name=NAME] such as ha-main,198.19.69.1/30"
        ));
    };
    let link = join_link(option, &format!("{interface},{address}"))?;
    let mut out = tandem_control::peer::create::CreateLink {
        interface: link.interface,
        name: None,
        address: link.address,
        peer: None,
    };
    for p in parts {
        match p.split_once('=') {
            Some(("peer", a)) => {
                out.peer = Some(a.parse().map_err(|e| format!("{option} peer={a}: {e}"))?);
            }
            Some(("name", n)) if !n.is_empty() => out.name = Some(n.to_owned()),
            _ => return Err(format!("{option}: {p:?} is not peer=ADDRESS or name=NAME")),
        }
    }
    Ok(out)
}

/// `IF,ADDR/P` of `ha join`.
fn join_link(option: &str, text: &str) -> Result<tandem_control::peer::join::JoinLink, String> {
    let (interface, address) = text.split_once(',').ok_or_else(|| {
        format!(
            "{option} {text:?}: expected INTERFACE,ADDRESS/PREFIX such as ha-main,198.19.69.2/30"
        )
    })?;
    address
        .parse::<tandem_config::Ipv4Cidr>()
        .map_err(|e| format!("{option} {text:?}: {e}"))?;
    if interface.is_empty() {
        return Err(format!("{option} {text:?}: the interface is empty"));
    }
    Ok(tandem_control::peer::join::JoinLink {
        interface: interface.to_owned(),
        address: address.to_owned(),
    })
}

/// The pre-shared key from `file` (its first line), or typed twice on the
/// terminal without echo.
fn read_psk(file: Option<&PathBuf>) -> Result<tandem_config::Secret, String> {
    if let Some(f) = file {
        let text =
            std::fs::read_to_string(f).map_err(|e| format!("--psk-file {}: {e}", f.display()))?;
        let key = text.lines().next().unwrap_or_default().to_owned();
        if key.is_empty() {
            return Err(format!(
                "--psk-file {}: the first line is empty",
                f.display()
            ));
        }
        return Ok(tandem_config::Secret::new(key));
    }
    const INSTEAD: &str = "give the pre-shared key with --psk-file FILE";
    let first = prompt_hidden("pre-shared key: ", INSTEAD)?;
    let second = prompt_hidden("the same again: ", INSTEAD)?;
    if first != second {
        return Err("the two keys typed differ; nothing was done".into());
    }
    Ok(tandem_config::Secret::new(first))
}

/// A line typed on the terminal without echo; without a terminal, the
/// error says `instead`.
fn prompt_hidden(prompt: &str, instead: &str) -> Result<String, String> {
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
    let stdin = io::stdin();
    let old = tcgetattr(&stdin).map_err(|_| format!("no terminal to type it on: {instead}"))?;
    let mut quiet = old.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    eprint!("{prompt}");
    tcsetattr(&stdin, SetArg::TCSANOW, &quiet).map_err(|e| e.to_string())?;
    let mut line = String::new();
    let read = stdin.read_line(&mut line);
    let _ = tcsetattr(&stdin, SetArg::TCSANOW, &old);
    eprintln!();
    read.map_err(|e| e.to_string())?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

#[derive(Subcommand, Debug)]
enum DebugAction {
    /// Worker N stops polling for a while (as if stuck in a loop)
    StallWorker {
        /// Worker index
        worker: usize,
        /// How long, in milliseconds (at most 10000)
        #[arg(long, default_value_t = 3000)]
        ms: u64,
    },
    /// Worker N panics (its thread ends)
    PanicWorker {
        /// Worker index
        worker: usize,
    },
    /// The members' service answers pings this much later (0: on time),
    /// as over a slow HA link
    DelayPongs {
        /// Milliseconds (at most 10000)
        #[arg(long)]
        ms: u64,
    },
    /// The members' service drops the next join at its first file
    CutJoin,
}

#[derive(Subcommand, Debug)]
enum ConnAction {
    /// Lists tracked connections (every option narrows the list)
    List {
        /// Protocol: tcp, udp, icmp, gre, esp, sctp or a number
        #[arg(long)]
        proto: Option<String>,
        /// Either end inside this address or CIDR
        #[arg(long)]
        addr: Option<String>,
        /// Initiator inside this address or CIDR
        #[arg(long)]
        src: Option<String>,
        /// Responder inside this address or CIDR
        #[arg(long)]
        dst: Option<String>,
        /// Either port
        #[arg(long)]
        port: Option<u16>,
        /// Show at most N connections
        #[arg(long, value_name = "N", default_value_t = 1000)]
        limit: usize,
    },
    /// Deletes every tracked connection (established ones then need a new handshake)
    Flush,
}

#[derive(Subcommand, Debug)]
enum SyncAction {
    /// The digest of the replicated connections (equal on both members
    /// when they hold the same connections)
    Digest,
    /// Compares both members' tables over the state sync; exits 1 when
    /// they differ (differences are repaired when they persist)
    Verify,
}

#[derive(Subcommand, Debug)]
enum PolicyAction {
    /// Reads the policy file again; workers switch to it between bursts
    Reload,
    /// The rules in force, each with its hits (connections opened,
    /// packets stopped) since the policy was loaded
    Show,
}

/// `tandemctl system ...`.
#[derive(Subcommand, Debug)]
enum SystemAction {
    /// Installs a signed package on this member (--target local: it hands
    /// the active role over first, restarts into the new version and
    /// rejoins as passive) or on the peer (--target remote: sent over the
    /// members' service; the peer restarts into it). A new version that
    /// does not rejoin within its trial time is rolled back by itself
    Update {
        /// The package file (tandemctl system package build makes one)
        #[arg(long, value_name = "FILE")]
        package: PathBuf,
        /// local (this member) or remote (the peer)
        #[arg(long, value_parser = ["local", "remote"])]
        target: String,
    },
    /// Makes signing keys and packages (needs no tandemd)
    Package {
        #[command(subcommand)]
        action: PackageAction,
    },
    /// The TPM that seals the cluster key
    Tpm {
        #[command(subcommand)]
        action: TpmAction,
    },
}

/// `tandemctl system tpm ...`.
#[derive(Subcommand, Debug)]
enum TpmAction {
    /// Reseals the cluster key to the PCR value of the tandemd that runs,
    /// with the TPM password: after an update, on the updated member
    /// (serial=passive from the active one). With --config and --tandemd
    /// it works without tandemd, on this machine only (serial=local),
    /// for a member whose tandemd cannot start because its key does not
    /// unseal
    Pcrseal {
        /// tpmpassword=PASSWORD serial=local|passive|remote|SERIAL
        #[arg(value_name = "KEY=VALUE", num_args = 0..=2)]
        args: Vec<String>,
        /// The member's node.ron (offline: no tandemd)
        #[arg(long, value_name = "FILE", requires = "tandemd")]
        config: Option<PathBuf>,
        /// The tandemd binary the key is resealed for (offline)
        #[arg(long, value_name = "FILE", requires = "config")]
        tandemd: Option<PathBuf>,
    },
    /// Sets this member's TPM password (the owner hierarchy's
    /// authorization), which pcrseal asks for; keys sealed before stay
    /// valid
    Password {
        /// [old=PASSWORD] new=PASSWORD (typed, twice, when new= is not
        /// given)
        #[arg(value_name = "KEY=VALUE", num_args = 0..=2)]
        args: Vec<String>,
    },
}

/// `old=...` and `new=...` of `system tpm password`.
fn password_args(
    args: &[String],
) -> Result<(Option<tandem_config::Secret>, tandem_config::Secret), String> {
    let (mut old, mut new) = (None, None);
    for a in args {
        match a.split_once('=') {
            Some(("old", v)) => old = Some(tandem_config::Secret::new(v)),
            Some(("new", v)) => new = Some(tandem_config::Secret::new(v)),
            _ => {
                return Err(format!(
                    "{:?} is not an argument of system tpm password; allowed old=PASSWORD and new=PASSWORD",
                    a.split_once('=').map_or(a.as_str(), |(k, _)| k)
                ))
            }
        }
    }
    let new = match new {
        Some(n) => n,
        None => {
            const INSTEAD: &str = "give the new TPM password as new=PASSWORD";
            let first = prompt_hidden("new TPM password: ", INSTEAD)?;
            if prompt_hidden("the same again: ", INSTEAD)? != first {
                return Err("the two passwords typed differ; nothing was done".into());
            }
            tandem_config::Secret::new(first)
        }
    };
    Ok((old, new))
}

/// `tpmpassword=...` and `serial=...` of `system tpm pcrseal`.
fn pcrseal_args(args: &[String]) -> Result<(tandem_config::Secret, String), String> {
    let (mut password, mut serial) = (None, None);
    for a in args {
        match a.split_once('=') {
            Some(("tpmpassword", v)) => password = Some(tandem_config::Secret::new(v)),
            Some(("serial", v)) if !v.is_empty() => serial = Some(v.to_owned()),
            _ => {
                return Err(format!(
                    "{:?} is not an argument of system tpm pcrseal; allowed tpmpassword=PASSWORD and serial=local|passive|remote|SERIAL",
                    a.split_once('=').map_or(a.as_str(), |(k, _)| k)
                ))
            }
        }
    }
    let password = match password {
        Some(p) => p,
        None => tandem_config::Secret::new(prompt_hidden(
            "TPM password: ",
            "give the TPM password as tpmpassword=PASSWORD",
        )?),
    };
    let serial = serial.ok_or("system tpm pcrseal needs serial=local|passive|remote|SERIAL")?;
    Ok((password, serial))
}

/// `tandemctl system package ...`.
#[derive(Subcommand, Debug)]
enum PackageAction {
    /// Writes a new Ed25519 signing key (PKCS#8, mode 0600) and its
    /// public half (KEY.pub), which the nodes trust by finding it in
    /// their trusted-keys directory
    Keygen {
        /// Where to write the private key (must not exist)
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
    },
    /// Builds a package of the tandemd and tandemctl in a directory,
    /// with the version and K2K version tandemd says of itself
    /// (tandemd --build-info), signed with KEY
    Build {
        /// The directory holding tandemd and tandemctl
        #[arg(long, value_name = "DIR")]
        bin_dir: PathBuf,
        /// The signing key (PKCS#8, from keygen)
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// The package to write
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Checks a package against the trusted keys in a directory and
    /// prints its manifest
    Inspect {
        /// The package
        package: PathBuf,
        /// The trusted public keys (NAME.pub)
        #[arg(long, value_name = "DIR", default_value = tandem_control::update::DEFAULT_TRUSTED_KEYS)]
        trusted_keys: PathBuf,
    },
}

/// `system package ...`: answered here, without tandemd.
fn package_action(action: &PackageAction) -> Result<String, String> {
    use tandem_control::update::package;
    match action {
        PackageAction::Keygen { key } => {
            let public = package::keygen(key)?;
            Ok(format!(
                "signing key written to {} (keep it off the nodes); public key {}: copy it into each node's trusted-keys directory\n",
                key.display(),
                public.display()
            ))
        }
        PackageAction::Build { bin_dir, key, out } => {
            let tandemd = bin_dir.join("tandemd");
            let o = std::process::Command::new(&tandemd)
                .arg("--build-info")
                .output()
                .map_err(|e| format!("cannot run {} --build-info: {e}", tandemd.display()))?;
            let info: serde_json::Value = serde_json::from_slice(&o.stdout).map_err(|_| {
                format!(
                    "{} --build-info did not print its version (is it a tandemd of this release or later?)",
                    tandemd.display()
                )
            })?;
            let version = info["version"]
                .as_str()
                .ok_or("tandemd --build-info: no version")?;
            let k2k = info["k2k_version"]
                .as_u64()
                .and_then(|v| u8::try_from(v).ok())
                .ok_or("tandemd --build-info: no K2K version")?;
            let files: Vec<(String, PathBuf)> = package::REQUIRED
                .iter()
                .map(|p| {
                    let name = p.trim_start_matches("bin/");
                    ((*p).to_owned(), bin_dir.join(name))
                })
                .collect();
            let m = package::build(out, version, k2k, &files, key).map_err(|e| e.to_string())?;
            Ok(format!(
                "{}: tandem {} (K2K {}), {} files, signed\n",
                out.display(),
                m.version,
                m.k2k_version,
                m.files.len()
            ))
        }
        PackageAction::Inspect {
            package: pkg,
            trusted_keys,
        } => {
            let keys = package::TrustedKey::load_dir(trusted_keys)?;
            let m = package::inspect(pkg, &keys).map_err(|e| e.to_string())?;
            let mut text = format!(
                "{}: tandem {} (K2K {}), signature and digests verified\n",
                pkg.display(),
                m.version,
                m.k2k_version
            );
            for f in &m.files {
                text += &format!("  {}  {} bytes  sha256 {}\n", f.path, f.size, f.sha256);
            }
            Ok(text)
        }
    }
}

/// How long to wait for an answer when --timeout-ms is not given: the
/// table walks and the policy compilation take longer on big tables.
fn default_timeout_ms(req: &Request) -> u64 {
    match req {
        Request::ConnList { .. } | Request::ConnFlush | Request::PolicyReload => 30_000,
        // Up to 2 s per HA link.
        Request::PeerStatus => 10_000,
        // A session (2 s per link), then the files: a peer validating a
        // large policy takes a while.
        Request::HaSync { .. } | Request::HaSyncTest | Request::HaDiff { .. } => 60_000,
        Request::HaJoin { .. } | Request::HaCreate { .. } => 90_000,
        Request::HaSet { .. } | Request::HaEnha => 30_000,
        // Two key derivations, a sync, then up to 10 s for both members
        // to retire the old key.
        Request::HaKey { .. } => 60_000,
        // Checking a package, or sending it to the peer.
        Request::SystemUpdate { .. } => 300_000,
        Request::SystemTpmPcrseal { .. } | Request::SystemTpmPassword { .. } => 60_000,
        _ => 2000,
    }
}

/// --socket, else a non-empty $TANDEM_SOCKET, else the default path.
fn socket_path(flag: Option<PathBuf>, env: Option<OsString>) -> PathBuf {
    flag.or_else(|| env.filter(|v| !v.is_empty()).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET_PATH))
}

/// What `tandemctl` prints and how it exits for one answer.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    stdout: Option<String>,
    /// Shown on stderr after "tandemctl: ".
    error: Option<String>,
    code: u8,
}

impl Outcome {
    fn print(text: String) -> Self {
        Outcome {
            stdout: Some(text),
            error: None,
            code: 0,
        }
    }

    fn fail(message: String, code: u8) -> Self {
        Outcome {
            stdout: None,
            error: Some(message),
            code,
        }
    }
}

/// How long `sync verify` waits for the verify to finish.
const VERIFY_WAIT: Duration = Duration::from_secs(15);

fn render(command: &Command, response: &Response, json: bool) -> Outcome {
    if let (Command::Hamode, Response::Status(s), true) = (command, response, json) {
        let v = serde_json::json!({ "mode": s.role, "forced": s.forced });
        return Outcome::print(format!("{v}\n"));
    }
    if json {
        let text = match serde_json::to_string_pretty(response) {
            Ok(text) => text + "\n",
            Err(e) => return Outcome::fail(format!("cannot print the answer as JSON: {e}"), 2),
        };
        // Scripts get the JSON on stdout; the exit code says it failed.
        return match response {
            Response::Error { message }
            | Response::Lines {
                error: Some(message),
                ..
            } => Outcome {
                stdout: Some(text),
                error: Some(message.clone()),
                code: 1,
            },
            _ => Outcome::print(text),
        };
    }
    match (command, response) {
        (_, Response::Error { message }) => Outcome::fail(message.clone(), 1),
        (Command::Status, Response::Status(report)) => Outcome::print(format_status(report)),
        (Command::Stats { all }, Response::Stats(report)) => {
            Outcome::print(format_stats(report, *all))
        }
        (Command::Conn { .. }, Response::Connections(report)) => {
            Outcome::print(format_connections(report))
        }
        (Command::Conn { .. }, Response::Flushed { count }) => {
            Outcome::print(format!("flushed {count} connections\n"))
        }
        (Command::Haactive | Command::Hapassive | Command::Hareset, Response::Role { role, forced }) => {
            Outcome::print(format!(
                "role: {role}, forced: {}\n",
                forced.as_deref().unwrap_or("no")
            ))
        }
        (Command::Sync { .. }, Response::Sync(r)) => Outcome::print(format_sync(r)),
        (Command::Sync { .. }, Response::Verify(v)) => {
            let text = format!(
                "verify: {} connections here, {} on the peer, {} of 256 digest buckets differ{} ({} ms)\n",
                v.ours,
                v.theirs,
                v.differing_buckets,
                if v.repairing > 0 {
                    format!(", repairing {}", v.repairing)
                } else {
                    String::new()
                },
                v.ms
            );
            if v.differing_buckets == 0 {
                Outcome::print(text)
            } else {
                Outcome {
                    stdout: Some(text),
                    error: None,
                    code: 1,
                }
            }
        }
        (Command::Sync { .. }, Response::Digest(d)) => {
            let differing: Vec<String> = d
                .buckets
                .iter()
                .enumerate()
                .filter(|(_, b)| b.0 > 0)
                .map(|(i, (n, x))| format!("  bucket {i:3}: {n} connections, {x}\n"))
                .collect();
            Outcome::print(format!(
                "replicated connections: {}\n{}",
                d.connections,
                differing.concat()
            ))
        }
        (Command::Hainfo { verbose }, Response::HaInfo(r)) => {
            Outcome::print(format_hainfo(r, *verbose))
        }
        (Command::Hamode, Response::Status(s)) => Outcome::print(match &s.forced {
            Some(f) => format!("{} (forced {f})\n", s.role),
            None => format!("{}\n", s.role),
        }),
        (Command::Identity, Response::Identity(r)) => Outcome::print(format_identity(r)),
        (Command::Hapeer, Response::Peer { link, addr, took_us, identity }) => Outcome::print(format!(
            "peer {} answers on {addr} over {link} in {:.1} ms (both proved the cluster key)\n{}",
            identity.serial,
            *took_us as f64 / 1e3,
            format_identity(identity)
        )),
        (Command::Hasync { .. }, Response::Lines { lines, error }) => {
            let mut text: String = lines.iter().map(|l| format!("{l}\n")).collect();
            match error {
                None => {
                    text += "OK\n";
                    Outcome::print(text)
                }
                Some(e) => Outcome {
                    stdout: Some(text),
                    error: Some(format!("hasync failed: {e}")),
                    code: 1,
                },
            }
        }
        (Command::Ha { .. } | Command::System { .. }, Response::Done { message }) => {
            Outcome::print(format!("{message}\n"))
        }
        (Command::System { .. }, Response::Lines { lines, error }) => {
            let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
            match error {
                None => Outcome::print(text),
                Some(e) => Outcome {
                    stdout: Some(text),
                    error: Some(format!("system update failed: {e}")),
                    code: 1,
                },
            }
        }
        (Command::Ha { .. }, Response::Lines { lines, error }) => {
            let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
            match error {
                None => Outcome::print(text),
                Some(e) => Outcome {
                    stdout: Some(text),
                    error: Some(e.clone()),
                    code: 1,
                },
            }
        }
        (
            Command::Hasynctest | Command::Hadiff { .. } | Command::Enha,
            Response::Lines { lines, .. },
        ) => {
            Outcome::print(lines.iter().map(|l| format!("{l}\n")).collect())
        }
        (Command::Log { .. }, Response::Log { lines }) => {
            Outcome::print(lines.iter().map(|l| format!("{l}\n")).collect())
        }
        (Command::Debug { .. }, Response::Done { message }) => Outcome::print(format!("{message}\n")),
        (Command::Policy { .. }, Response::Policy { rules, nat_rules, path }) => {
            Outcome::print(format!("policy reloaded from {path}: {rules} rules, {nat_rules} NAT rules\n"))
        }
        (Command::Policy { .. }, Response::PolicyRules(p)) => {
            Outcome::print(tandem_control::client::format_policy(p))
        }
        (_, other) => Outcome::fail(
            format!(
                "tandemd answered with an unexpected {} report. Check that tandemctl and tandemd are the same version.",
                kind(other)
            ),
            2,
        ),
    }
}

fn kind(response: &Response) -> &'static str {
    match response {
        Response::Status(_) => "status",
        Response::Stats(_) => "stats",
        Response::Connections(_) => "connections",
        Response::Flushed { .. } => "flushed",
        Response::Policy { .. } => "policy",
        Response::PolicyRules(_) => "policy rules",
        Response::Role { .. } => "role",
        Response::Sync(_) => "sync",
        Response::Digest(_) => "digest",
        Response::Verify(_) => "verify",
        Response::HaInfo(_) => "hainfo",
        Response::Identity(_) => "identity",
        Response::Peer { .. } => "peer",
        Response::Log { .. } => "log",
        Response::Lines { .. } => "lines",
        Response::Done { .. } => "done",
        Response::Error { .. } => "error",
    }
}

/// Prints to stdout; a closed pipe (`tandemctl stats | head`) is not an error.
fn print(text: &str) -> ExitCode {
    let mut stdout = io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tandemctl: cannot write the output: {e}");
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    tandem_control::set_build!();
    let cli: Cli = tandem_control::build_info::parse_args();
    let socket = socket_path(cli.socket, std::env::var_os(SOCKET_ENV));
    if let Command::Completions { shell } = &cli.command {
        let mut cmd = <Cli as clap::CommandFactory>::command();
        let mut out = Vec::new();
        clap_complete::generate(*shell, &mut cmd, "tandemctl", &mut out);
        return print(&String::from_utf8_lossy(&out));
    }
    if let Command::System {
        action: SystemAction::Package { action },
    } = &cli.command
    {
        return match package_action(action) {
            Ok(text) => print(&text),
            Err(e) => {
                eprintln!("tandemctl: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let req = match &cli.command {
        Command::Status => Request::Status,
        Command::System {
            action: SystemAction::Update { package, target },
        } => match std::path::absolute(package) {
            Ok(p) => Request::SystemUpdate {
                package: Some(p.to_string_lossy().into_owned()),
                target: Some(target.clone()),
            },
            Err(e) => {
                eprintln!("tandemctl: {}: {e}", package.display());
                return ExitCode::from(2);
            }
        },
        Command::System {
            action: SystemAction::Package { .. },
        } => unreachable!("answered above, without tandemd"),
        Command::System {
            action:
                SystemAction::Tpm {
                    action:
                        TpmAction::Pcrseal {
                            args,
                            config,
                            tandemd,
                        },
                },
        } => {
            let (password, serial) = match pcrseal_args(args) {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("tandemctl: {e}");
                    return ExitCode::from(2);
                }
            };
            if let (Some(config), Some(tandemd)) = (config, tandemd) {
                if serial != "local" {
                    eprintln!(
                        "tandemctl: without tandemd (--config) only serial=local can be resealed"
                    );
                    return ExitCode::from(2);
                }
                return match tandem_control::keystore::pcrseal_offline(
                    config,
                    tandemd,
                    password.expose(),
                ) {
                    Ok(text) => print(&format!("{text}\n")),
                    Err(e) => {
                        eprintln!("tandemctl: {e}");
                        ExitCode::FAILURE
                    }
                };
            }
            Request::SystemTpmPcrseal {
                password: Some(password),
                serial: Some(serial),
            }
        }
        Command::System {
            action:
                SystemAction::Tpm {
                    action: TpmAction::Password { args },
                },
        } => match password_args(args) {
            Ok((old, new)) => Request::SystemTpmPassword {
                old,
                new: Some(new),
            },
            Err(e) => {
                eprintln!("tandemctl: {e}");
                return ExitCode::from(2);
            }
        },
        Command::Identity => Request::Identity,
        Command::Completions { .. } => unreachable!("answered above, without tandemd"),
        Command::Hapeer => Request::PeerStatus,
        Command::Hasync { force } => Request::HaSync { force: *force },
        Command::Enha => Request::HaEnha,
        Command::Ha {
            action:
                HaAction::Set {
                    no_sync,
                    param: SetParam::Key { psk_file },
                },
        } => {
            if *no_sync {
                eprintln!("tandemctl: ha set key changes the key on both members at once: --no-sync does not apply");
                return ExitCode::from(2);
            }
            match read_psk(psk_file.as_ref()) {
                Ok(p) => Request::HaKey { psk: Some(p) },
                Err(e) => {
                    eprintln!("tandemctl: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        Command::Ha {
            action: HaAction::Set { no_sync, param },
        } => {
            use tandem_control::peer::params::HaSet;
            Request::HaSet {
                set: Some(match param {
                    SetParam::Prefer { member } => HaSet::Prefer {
                        member: member.clone(),
                    },
                    SetParam::SyncMinAge { secs } => HaSet::SyncMinAge { secs: *secs },
                    SetParam::Swap {
                        bounce,
                        lacp_when_passive,
                        garp_interval,
                    } => HaSet::Swap {
                        bounce: *bounce,
                        lacp_when_passive: *lacp_when_passive,
                        garp_interval_ms: *garp_interval,
                    },
                    SetParam::Weight { weights } => HaSet::Weight {
                        weights: weights.clone(),
                    },
                    SetParam::Key { .. } => unreachable!("ha set key is its own request"),
                }),
                no_sync: *no_sync,
            }
        }
        Command::Ha {
            action:
                HaAction::Cluster {
                    action: ClusterAction::Remove { member, force },
                },
        } => Request::HaClusterRemove {
            serial: Some(member.strip_prefix("serial=").unwrap_or(member).to_owned()),
            force: *force,
        },
        Command::Ha {
            action:
                HaAction::Cluster {
                    action: ClusterAction::Activate,
                },
        } => Request::HaClusterActivate,
        Command::Ha {
            action:
                HaAction::Create {
                    main,
                    backup,
                    psk_file,
                    encrypt,
                    no_lacp_when_passive,
                },
        } => {
            let args = create_link("--main", main).and_then(|m| {
                Ok(tandem_control::peer::create::CreateArgs {
                    main: m,
                    backup: backup
                        .as_deref()
                        .map(|b| create_link("--backup", b))
                        .transpose()?,
                    encrypt: *encrypt,
                    lacp_when_passive: !*no_lacp_when_passive,
                })
            });
            match args.and_then(|a| read_psk(psk_file.as_ref()).map(|p| (a, p))) {
                Ok((a, p)) => Request::HaCreate {
                    create: Some(a),
                    psk: Some(p),
                },
                Err(e) => {
                    eprintln!("tandemctl: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        Command::Ha {
            action:
                HaAction::Join {
                    main,
                    backup,
                    member,
                    psk_file,
                    ..
                },
        } => {
            let args = join_link("--main", main).and_then(|m| {
                Ok(tandem_control::peer::join::JoinArgs {
                    main: m,
                    backup: backup
                        .as_deref()
                        .map(|b| join_link("--backup", b))
                        .transpose()?,
                    member: *member,
                })
            });
            let psk = args.and_then(|a| read_psk(psk_file.as_ref()).map(|p| (a, p)));
            match psk {
                Ok((a, p)) => Request::HaJoin {
                    join: Some(a),
                    psk: Some(p),
                },
                Err(e) => {
                    eprintln!("tandemctl: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        Command::Hasynctest => Request::HaSyncTest,
        Command::Hadiff { file } => Request::HaDiff {
            file: Some(file.clone()),
        },
        Command::Stats { .. } => Request::Stats,
        Command::Conn {
            action:
                ConnAction::List {
                    proto,
                    addr,
                    src,
                    dst,
                    port,
                    limit,
                },
        } => Request::ConnList {
            filter: ConnFilter {
                proto: proto.clone(),
                addr: addr.clone(),
                src: src.clone(),
                dst: dst.clone(),
                port: *port,
                limit: Some(*limit),
            },
        },
        Command::Conn {
            action: ConnAction::Flush,
        } => Request::ConnFlush,
        Command::Haactive => Request::HaActive,
        Command::Hapassive => Request::HaPassive,
        Command::Hareset => Request::HaReset,
        Command::Sync { action: None } => Request::Sync,
        Command::Sync {
            action: Some(SyncAction::Digest),
        } => Request::SyncDigest,
        Command::Sync {
            action: Some(SyncAction::Verify),
        } => Request::SyncVerify { start: true },
        Command::Hainfo { .. } => Request::HaInfo,
        Command::Hamode => Request::Status,
        Command::Log { lines } => Request::Log {
            lines: Some(*lines),
        },
        Command::Policy {
            action: PolicyAction::Reload,
        } => Request::PolicyReload,
        Command::Policy {
            action: PolicyAction::Show,
        } => Request::PolicyShow,
        Command::Debug { action } => Request::Debug {
            fault: Some(match action {
                DebugAction::StallWorker { worker, ms } => DebugFault::StallWorker {
                    worker: *worker,
                    ms: *ms,
                },
                DebugAction::PanicWorker { worker } => DebugFault::PanicWorker { worker: *worker },
                DebugAction::DelayPongs { ms } => DebugFault::DelayPongs { ms: *ms },
                DebugAction::CutJoin => DebugFault::CutJoin,
            }),
        },
    };
    let timeout = Duration::from_millis(cli.timeout_ms.unwrap_or(default_timeout_ms(&req)));
    let mut response = match request(&socket, &req, timeout) {
        Ok(response) => response,
        Err(e) => {
            eprintln!("tandemctl: {e}");
            return ExitCode::from(2);
        }
    };
    if let Response::Verify(first) = &response {
        // The verify runs in the daemon: wait (bounded) for it to finish.
        let before = first.done;
        let end = std::time::Instant::now() + VERIFY_WAIT;
        loop {
            std::thread::sleep(Duration::from_millis(100));
            match request(&socket, &Request::SyncVerify { start: false }, timeout) {
                Ok(Response::Verify(v)) if v.done > before => {
                    response = Response::Verify(v);
                    break;
                }
                Ok(Response::Verify(_)) if std::time::Instant::now() < end => {}
                Ok(Response::Verify(_)) => {
                    eprintln!(
                        "tandemctl: no verify finished within {VERIFY_WAIT:?}: check that the peer's state sync is up (tandemctl sync)"
                    );
                    return ExitCode::from(2);
                }
                Ok(other) => {
                    response = other;
                    break;
                }
                Err(e) => {
                    eprintln!("tandemctl: {e}");
                    return ExitCode::from(2);
                }
            }
        }
    }
    let outcome = render(&cli.command, &response, cli.json);
    if let Some(message) = &outcome.error {
        eprintln!("tandemctl: {message}");
    }
    let printed = outcome.stdout.as_deref().map_or(ExitCode::SUCCESS, print);
    if outcome.code != 0 {
        return ExitCode::from(outcome.code);
    }
    if let (
        Command::Ha {
            action: HaAction::Join { no_wait: false, .. },
        },
        Response::Lines { error: None, .. },
    ) = (&cli.command, &response)
    {
        return wait_member(&socket);
    }
    printed
}

/// After a join: waits (60 s at most) for tandemd to run again as a
/// member that hears its peer and holds the whole connection table.
fn wait_member(socket: &std::path::Path) -> ExitCode {
    const WAIT: Duration = Duration::from_secs(60);
    let t0 = std::time::Instant::now();
    let mut last = String::from("tandemd did not answer");
    std::thread::sleep(Duration::from_millis(500));
    while t0.elapsed() < WAIT {
        match request(socket, &Request::HaInfo, Duration::from_secs(2)) {
            Ok(Response::HaInfo(h)) => match &h.peer {
                Some(p) if p.alive && h.local.synchronized => {
                    return print(&format!(
                        "back as a member after {:.1} s: {}, peer {} {}, connection table complete\nJoined.\n",
                        t0.elapsed().as_secs_f64(),
                        h.local.role,
                        p.serial,
                        p.role
                    ));
                }
                Some(p) => {
                    last = format!(
                        "peer {} {}, this member {} and {}",
                        p.serial,
                        if p.alive { "heard" } else { "not heard" },
                        h.local.role,
                        if h.local.synchronized {
                            "synchronized"
                        } else {
                            "not synchronized yet"
                        }
                    );
                }
                None => last = "the peer is not heard yet".into(),
            },
            Ok(other) => last = format!("{other:?}"),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "tandemctl: the join is done, but tandemd is not back as a synchronized member after {} s ({last}): see tandemctl hainfo and the event log",
        WAIT.as_secs()
    );
    ExitCode::from(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_options_go_before_or_after_the_subcommand() {
        let cli = Cli::try_parse_from([
            "tandemctl",
            "stats",
            "--all",
            "--json",
            "--socket",
            "/tmp/x.sock",
        ])
        .unwrap();
        assert!(cli.json);
        assert_eq!(cli.socket, Some(PathBuf::from("/tmp/x.sock")));
        assert_eq!(cli.timeout_ms, None);
        assert_eq!(default_timeout_ms(&Request::Stats), 2000);
        assert_eq!(default_timeout_ms(&Request::ConnFlush), 30_000);
        assert!(matches!(cli.command, Command::Stats { all: true }));
        let cli = Cli::try_parse_from(["tandemctl", "--timeout-ms", "50", "status"]).unwrap();
        assert_eq!(cli.timeout_ms, Some(50));
        assert!(matches!(cli.command, Command::Status));
    }

    #[test]
    fn bad_arguments_are_refused() {
        assert!(Cli::try_parse_from(["tandemctl"]).is_err());
        assert!(Cli::try_parse_from(["tandemctl", "reboot"]).is_err());
        assert!(Cli::try_parse_from(["tandemctl", "--timeout-ms", "0", "status"]).is_err());
        assert!(Cli::try_parse_from(["tandemctl", "status", "--all"]).is_err());
    }

    #[test]
    fn socket_flag_beats_the_environment_which_beats_the_default() {
        let flag = Some(PathBuf::from("/a.sock"));
        let env = Some(OsString::from("/b.sock"));
        assert_eq!(socket_path(flag, env.clone()), PathBuf::from("/a.sock"));
        assert_eq!(socket_path(None, env), PathBuf::from("/b.sock"));
        assert_eq!(
            socket_path(None, Some(OsString::new())),
            PathBuf::from(DEFAULT_SOCKET_PATH)
        );
        assert_eq!(socket_path(None, None), PathBuf::from(DEFAULT_SOCKET_PATH));
    }

    #[test]
    fn error_answers_exit_1_and_mismatched_answers_exit_2() {
        let err = Response::error("nope");
        assert_eq!(
            render(&Command::Status, &err, false),
            Outcome::fail("nope".to_owned(), 1)
        );
        let json = render(&Command::Status, &err, true);
        assert_eq!((json.code, json.error.as_deref()), (1, Some("nope")));
        assert!(json
            .stdout
            .unwrap()
            .starts_with("{\n  \"result\": \"error\""));
        let stats = Response::Stats(tandem_control::api::StatsReport {
            ports: vec![],
            workers: vec![],
            drops_total: Default::default(),
            firewall: None,
        });
        assert_eq!(render(&Command::Status, &stats, false).code, 2);
        let json = render(&Command::Status, &stats, true);
        assert_eq!(json.code, 0);
        assert!(json
            .stdout
            .unwrap()
            .starts_with("{\n  \"result\": \"stats\""));
    }
}
