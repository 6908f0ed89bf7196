//! `tandemd`: one node. Loads the configuration, opens the control socket,
//! starts the dataplane, the API thread (which serves the control socket,
//! see [`crate::apiserver`]) and runs the control thread (a mio loop) until
//! SIGTERM or SIGINT.
//!
//! The control thread sends the heartbeats and runs the election: it never
//! blocks. It answers the API thread's typed actions from the state it has,
//! watches the dataplane threads (a dead or stuck one takes the quality to
//! 0, see [`crate::watchdog`]) and only ever pushes event-log lines to the
//! log's writer thread.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam::channel::{bounded, Receiver};
use mio::net::UnixStream;
use mio::{Events, Interest, Poll, Token, Waker};
use tandem_config::NodeConfig;
use tandem_dataplane::node::{Node, NodeError};
use tandem_dataplane::worker::Role;

use crate::api::{IdentityReport, Response};
use crate::apiserver::{
    ApiContext, ApiThread, ControlAction, ControlRequest, ControlShared, ACTION_QUEUE, FAULTS_ENV,
};
use crate::cluster::Cluster;
use crate::eventlog::EventLog;
use crate::socket::{ControlSocket, SocketError};
use crate::watchdog::{Sample, Watchdog, PROGRESS_TIMEOUT};

/// Why `tandemd` could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The configuration is invalid.
    #[error("{0}")]
    Config(#[from] tandem_config::ConfigError),
    /// The control socket could not be opened.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// The dataplane could not start.
    #[error("dataplane: {0}")]
    Node(#[from] NodeError),
    /// The HA keys could not be derived from the pre-shared key.
    #[error("HA keys: {0}")]
    Keys(#[from] tandem_dataplane::hakeys::KeyError),
    /// An operating-system call of the control loop failed.
    #[error("control loop: {0}")]
    Io(#[from] std::io::Error),
    /// The identity file and the configuration disagree, or a named
    /// identity file is missing.
    #[error("{0}")]
    Identity(String),
    /// The event log's writer thread could not start.
    #[error(
        "cannot start the event log's writer thread: {0}. Check the process and memory limits"
    )]
    EventLog(std::io::Error),
    /// The installation slots tandem-boot named cannot be used.
    #[error("installation slots: {0}")]
    Update(String),
    /// The cluster key is not in the member's key store, or does not open.
    #[error("cluster key: {0}")]
    KeyStore(String),
}

/// The identity file: `control.identity`, or `identity.ron` beside the
/// configuration file.
pub fn identity_path(cfg: &NodeConfig, config_path: &Path) -> PathBuf {
    cfg.control.identity.clone().unwrap_or_else(|| {
        config_path
            .parent()
            .unwrap_or(Path::new("."))
            .join(tandem_config::IDENTITY_FILE)
    })
}

/// The node's identity: its identity file, whose serial must be
/// `node.serial`; without one (and none named in `control.identity`) the
/// node runs alone and reports only its serial and version.
pub fn node_identity(cfg: &NodeConfig, config_path: &Path) -> Result<IdentityReport, DaemonError> {
    let path = identity_path(cfg, config_path);
    let mut report = IdentityReport {
        file: path.display().to_string(),
        serial: cfg.node.serial.clone(),
        model: None,
        licence: None,
        ports: None,
        firmware: tandem_dataplane::build::get().version.to_owned(),
    };
    if cfg.control.identity.is_none() && !path.exists() {
        return Ok(report);
    }
    let id = tandem_config::load_identity(&path)?;
    if id.serial != cfg.node.serial {
        return Err(DaemonError::Identity(format!(
            "{}: serial {:?} is not this node's ({:?} in node.serial of {}): the identity file describes the hardware, so correct node.serial, or give this node's own identity file",
            path.display(),
            id.serial,
            cfg.node.serial,
            config_path.display()
        )));
    }
    report.model = Some(id.model);
    report.licence = Some(id.licence.as_str().to_owned());
    report.ports = Some(id.ports);
    Ok(report)
}

const SIGNAL: Token = Token(0);
/// The API thread woke us: actions are waiting.
const ACTIONS: Token = Token(1);
pub(crate) const CLUSTER_BASE: usize = 64;
const HOUSEKEEPING: Duration = Duration::from_millis(500);
/// How long a stopping active member waits for the peer to take over.
const HAND_OVER: Duration = Duration::from_millis(500);
/// Active-backup aggregates follow their members' carriers this often.
const AGGREGATES: Duration = Duration::from_millis(10);
/// The dataplane threads' progress is checked this often.
const WATCHDOG: Duration = Duration::from_millis(10);

/// The control thread's state.
struct Daemon {
    /// The forced status set by haactive/hapassive (none after hareset).
    forced: Option<Role>,
    cfg: Arc<NodeConfig>,
    node: Arc<Node>,
    started_at: Instant,
    events: EventLog,
    /// The election, when the configuration enables it.
    cluster: Option<Cluster>,
    /// What the last housekeeping saw, to log changes: (peer up,
    /// synchronized, link in use, role).
    seen: (bool, bool, u8, Role),
    /// What the other threads read of this one.
    shared: Arc<ControlShared>,
    /// The dataplane threads' health.
    watchdog: Watchdog,
    /// The members' service on TCP 1300 (cluster members only).
    peer: Option<crate::peer::service::PeerService>,
    /// Both members' configuration status, refreshed by its own thread.
    confwatch: Option<crate::peer::confsync::ConfigWatch>,
    /// What hainfo last showed of it (kept when the watch is busy).
    config_info: std::cell::RefCell<Option<crate::api::ConfigSyncInfo>>,
    /// The peer's identity and when it last answered, as the watch saw
    /// them (kept when the watch is busy).
    peer_view: std::cell::RefCell<PeerView>,
    /// This member's identity (hainfo's model, version, licence).
    identity: crate::api::IdentityReport,
    /// The configuration sync (a member with a cluster directory).
    conf: Option<Arc<crate::peer::confsync::ConfSync>>,
}

/// What the configuration watch last knew of the peer.
#[derive(Default)]
struct PeerView {
    /// Its identity.
    identity: Option<crate::api::IdentityReport>,
    /// When it last answered (Unix ms) and on which link.
    answered: Option<(u64, String)>,
    /// Why it did not.
    error: Option<String>,
    /// What it says of itself.
    member: Option<crate::api::MemberStatusReport>,
    /// It refused to say (an older tandem).
    member_refused: bool,
}

/// How [`run`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// On a termination signal.
    Stopped,
    /// For a restart with the configuration as it is now on disk (a
    /// firewall that joined a cluster): the caller starts tandemd again.
    Restart,
    /// To start the version just installed in the other slot: the caller
    /// exits with [`crate::update::EXIT_UPDATE`] for tandem-boot.
    Update,
}

/// Runs a node from the configuration file at `config_path` until a
/// termination signal arrives, or a join or an update asks for a restart.
/// `slots`: the installation slots' root that tandem-boot passes.
pub fn run(config_path: &Path, slots: Option<&Path>) -> Result<Exit, DaemonError> {
    let mut cfg = tandem_config::load(config_path)?;
    let name = cfg.node.name.clone();
    let slots = match slots.map(crate::update::slots::Slots::open).transpose() {
        Ok(s) => s,
        Err(e) => return Err(DaemonError::Update(e)),
    };
    crate::update::init(crate::update::Setup {
        slots,
        trusted_keys: cfg
            .control
            .trusted_keys
            .clone()
            .unwrap_or_else(|| PathBuf::from(crate::update::DEFAULT_TRUSTED_KEYS)),
        confirm_within_secs: cfg
            .control
            .update_confirm_secs
            .unwrap_or(crate::update::DEFAULT_CONFIRM_SECS),
    });

    let log_path = cfg
        .control
        .event_log
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("/var/log/tandem/{name}.log")));
    let events_log =
        EventLog::open(&name, Some(&log_path), 1 << 20, 5).map_err(DaemonError::EventLog)?;
    if let Some(sc) = &cfg.control.syslog {
        // Checked by the configuration's validation: an error here is a
        // configuration tandemd --check would refuse.
        match crate::syslog::target(sc) {
            Ok(t) => {
                let said = crate::syslog::describe(&t);
                events_log.attach_syslog(crate::syslog::Syslog::new(t, &name));
                events_log.event(
                    "SYSTEM",
                    format_args!("the event log goes to syslog too: {said}"),
                );
            }
            Err(e) => events_log.event("SYSTEM", format_args!("WARNING: no syslog: {e}")),
        }
    }
    if let Some(t) = &cfg.control.tpm {
        let state_dir = cfg
            .control
            .state_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("/var/lib/tandem"));
        crate::tpm::start(t, &state_dir, &events_log);
    }
    let result = match crate::keystore::open(&mut cfg, config_path, &events_log) {
        Ok(()) => serve(cfg, config_path, events_log.clone()),
        Err(e) => Err(DaemonError::KeyStore(e)),
    };
    if let Err(e) = &result {
        events_log.event("SYSTEM", format_args!("tandemd stopped on an error: {e}"));
    }
    // What the writer thread still holds reaches the file before the
    // process ends, also when starting failed.
    events_log.flush(Duration::from_secs(1));
    result
}

/// [`run`] once the event log is open.
fn serve(cfg: NodeConfig, config_path: &Path, events_log: EventLog) -> Result<Exit, DaemonError> {
    let mut poll = Poll::new()?;
    let (sig_rx, sig_tx) = std::os::unix::net::UnixStream::pair()?;
    sig_rx.set_nonblocking(true)?;
    sig_tx.set_nonblocking(true)?;
    let mut sig_rx = UnixStream::from_std(sig_rx);
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::low_level::pipe::register(sig, sig_tx.try_clone()?)?;
    }
    poll.registry()
        .register(&mut sig_rx, SIGNAL, Interest::READABLE)?;

    // The socket first: a second tandemd on the same socket must fail
    // before it touches the devices of the first.
    let socket = ControlSocket::bind(&cfg.control.socket)?;

    events_log.event(
        "SYSTEM",
        format_args!(
            "starting: {} interfaces, {} workers",
            cfg.interfaces.len(),
            cfg.dataplane.workers.len()
        ),
    );
    let config_dir = config_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let identity = node_identity(&cfg, config_path)?;
    // The HA keys first (memory-hard on purpose, once per start): the
    // dataplane's state sync, the workers' check answers and the election
    // all take theirs from this derivation.
    let keys = match &cfg.ha {
        Some(ha) => {
            let keys = tandem_dataplane::hakeys::for_cluster(ha.psk.expose(), ha.cluster_id)?;
            events_log.event(
                "HA",
                format_args!(
                    "HA keys derived from the pre-shared key (Argon2id) in {} ms",
                    keys.took().as_millis()
                ),
            );
            if let Some(w) = crate::keystore::clear_file_of(&cfg, config_path)
                .as_deref()
                .and_then(crate::cluster::key_file_exposure)
            {
                events_log.event("HA", format_args!("WARNING: {w}"));
                eprintln!("tandemd: WARNING: {w}");
            }
            Some(keys)
        }
        None => None,
    };
    let node = Node::start(&cfg, &config_dir)?;
    if let Some(p) = node.policy() {
        events_log.event(
            "POLICY",
            format_args!(
                "policy {}: {} rules, {} NAT rules",
                p.path.display(),
                p.rules,
                p.nat_rules
            ),
        );
    }
    for (i, iface) in node.interfaces().iter().enumerate() {
        let (link, _) = node.link(i);
        events_log.event(
            "SYSTEM",
            format_args!(
                "interface {} on port {} ({}), mac {}, link {}",
                iface.config.name,
                iface.port.id(),
                iface.port.info().driver,
                iface.mac,
                if link.up { "up" } else { "down" }
            ),
        );
        let port = &iface.port;
        let steering = match port.steering() {
            tandem_dataplane::dpdk::Steering::Software(why) => {
                format!("packets reach their worker through the software dispatch: {why}")
            }
            s => format!("steering {}", s.as_str()),
        };
        if node.workers().len() > 1 {
            events_log.event(
                "SYSTEM",
                format_args!(
                    "interface {}: {} RX / {} TX queues for {} workers, {steering}",
                    iface.config.name,
                    port.rx_queues(),
                    port.tx_queues(),
                    node.workers().len()
                ),
            );
        }
    }
    let faults = std::env::var(FAULTS_ENV).is_ok_and(|v| v == "1");
    if faults {
        events_log.event(
            "SYSTEM",
            format_args!(
                "{FAULTS_ENV}=1: fault injection (tandemctl debug) is allowed; for tests only"
            ),
        );
    }
    let mut watched: Vec<String> = node
        .workers()
        .iter()
        .map(|w| format!("worker {}", w.id))
        .collect();
    if node.sync().is_some() {
        watched.push("the sync thread".into());
    }
    let progress = progress_timeout(&cfg);
    let mut daemon = Daemon {
        forced: None,
        cfg: Arc::new(cfg),
        node: Arc::new(node),
        started_at: Instant::now(),
        seen: (false, false, u8::MAX, Role::Passive),
        events: events_log,
        cluster: None,
        shared: Arc::new(ControlShared::default()),
        watchdog: Watchdog::new(watched, progress, Instant::now()),
        peer: None,
        confwatch: None,
        config_info: std::cell::RefCell::new(None),
        peer_view: std::cell::RefCell::new(PeerView::default()),
        identity: identity.clone(),
        conf: None,
    };
    let control_waker = Arc::new(Waker::new(poll.registry(), ACTIONS)?);
    let conf = match crate::peer::wiring::conf_sync(
        &daemon.cfg,
        config_path,
        &daemon.node,
        &daemon.events,
        (daemon.shared.clone(), control_waker.clone()),
    ) {
        None => None,
        Some(Ok(c)) => Some(c),
        Some(Err(e)) => {
            daemon.events.event(
                "HA",
                format_args!("WARNING: the configuration sync is off: {e}"),
            );
            None
        }
    };
    daemon.conf.clone_from(&conf);
    if let Some(keys) = &keys {
        daemon.cluster = Cluster::new(
            &daemon.cfg,
            &daemon.node,
            poll.registry(),
            CLUSTER_BASE,
            keys,
            config_path,
            false,
        )?;
        if let (Some(c), Some(conf)) = (daemon.cluster.as_mut(), &conf) {
            c.share_serials(conf.serials.clone());
        }
        let warnings = daemon
            .cluster
            .as_mut()
            .map(|c| std::mem::take(&mut c.startup_warnings))
            .unwrap_or_default();
        for w in warnings {
            daemon.events.event("HA", format_args!("WARNING: {w}"));
        }
        // The keys every HA channel shares (a key change goes through it).
        let ring = daemon
            .node
            .key_ring()
            .cloned()
            .unwrap_or_else(|| tandem_dataplane::hakeys::KeyRing::new(keys.clone()));
        if let Some(ha) = &daemon.cfg.ha {
            let addrs: Vec<std::net::SocketAddr> = ha
                .links
                .iter()
                .map(|l| {
                    std::net::SocketAddr::new(l.address.addr.into(), crate::peer::service::PORT)
                })
                .collect();
            if let Some(conf) = &conf {
                let links = crate::peer::wiring::peer_links(&daemon.cfg);
                let (k, serial) = (ring.clone(), daemon.cfg.node.serial.clone());
                match crate::peer::confsync::ConfigWatch::start(
                    conf.clone(),
                    Box::new(move || {
                        crate::peer::wiring::connect_peer(
                            &links,
                            &k.current(),
                            &serial,
                            Duration::from_secs(2),
                        )
                    }),
                ) {
                    Ok(w) => daemon.confwatch = Some(w),
                    Err(e) => daemon.events.event(
                        "HA",
                        format_args!("WARNING: the configuration status watch is off: {e}"),
                    ),
                }
            }
            match crate::peer::service::PeerService::start(
                &addrs,
                ring.clone(),
                identity.clone(),
                conf.clone(),
                daemon.events.clone(),
            ) {
                Ok(p) => {
                    daemon.events.event(
                        "HA",
                        format_args!(
                            "members' service listening on {} (TCP, the cluster key required)",
                            p.listening
                                .iter()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    );
                    daemon.peer = Some(p);
                }
                Err(e) => daemon.events.event(
                    "HA",
                    format_args!("WARNING: the members' service is off: {e}"),
                ),
            }
        }
    }
    if daemon.cluster.is_some() {
        daemon.events.event(
            "HA",
            "election on: heartbeats on UDP 5405 over the HA links, last resort and ICMP check over the data ports",
        );
    }
    let (actions_tx, actions) = bounded::<ControlAction>(ACTION_QUEUE);
    let socket_path = socket.path().to_owned();
    let api = ApiThread::spawn(
        socket,
        ApiContext {
            node: daemon.node.clone(),
            cfg: std::sync::Mutex::new(daemon.cfg.clone()),
            config_path: config_path.to_owned(),
            started: SystemTime::now(),
            started_at: daemon.started_at,
            events: daemon.events.clone(),
            shared: daemon.shared.clone(),
            faults,
            identity,
            conf: std::sync::Mutex::new(conf),
            registry: poll.registry().try_clone().ok(),
        },
        actions_tx,
        control_waker,
    )?;
    // Before the control thread turns real-time (threads inherit it).
    let _rule_log = match daemon.node.policy() {
        Some(_) => match crate::rulelog::RuleLog::start(daemon.node.clone(), daemon.events.clone())
        {
            Ok(r) => Some(r),
            Err(e) => {
                daemon
                    .events
                    .event("SYSTEM", format_args!("WARNING: rule logging is off: {e}"));
                None
            }
        },
        None => None,
    };
    let _metrics = match daemon.cfg.control.metrics {
        Some(addr) => match crate::metrics::Metrics::start(addr, &socket_path) {
            Ok(m) => {
                daemon.events.event(
                    "SYSTEM",
                    format_args!("{}", crate::metrics::describe(m.listening, &socket_path)),
                );
                Some(m)
            }
            Err(e) => {
                daemon.events.event(
                    "SYSTEM",
                    format_args!("WARNING: no metrics: {e}; tandemd runs without them"),
                );
                eprintln!("tandemd: WARNING: no metrics: {e}");
                None
            }
        },
        None => None,
    };
    // The workers, the sync core, the health checker, the log writer and
    // the API thread are started: only this (control) thread gets the
    // real-time class, so heartbeats leave on time even when the workers
    // keep every core busy.
    daemon.go_realtime();
    daemon.seen.3 = daemon.node.role();
    daemon.events.event(
        "SYSTEM",
        format_args!(
            "running as {}; control socket {}",
            daemon.node.role().as_str(),
            socket_path.display()
        ),
    );
    // A version on trial confirms itself once it rejoined (its own
    // thread: the confirmation writes the boot record).
    let _trial = crate::update::Trial::start(&daemon.events);

    let mut events = Events::with_capacity(64);
    let mut next_housekeeping = Instant::now() + HOUSEKEEPING;
    let mut next_aggregates = Instant::now() + AGGREGATES;
    let mut next_watchdog = Instant::now() + WATCHDOG;
    let mut exit = Exit::Stopped;
    'run: loop {
        let now = Instant::now();
        let mut deadline = next_housekeeping.min(next_aggregates).min(next_watchdog);
        if let Some(c) = &daemon.cluster {
            deadline = deadline.min(c.next_wakeup());
        }
        if let Err(e) = poll.poll(&mut events, Some(deadline.saturating_duration_since(now))) {
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e.into());
        }
        for event in events.iter() {
            if event.token() == SIGNAL {
                let mut buf = [0u8; 16];
                let _ = sig_rx.read(&mut buf);
                break 'run;
            }
            if let Some(c) = &mut daemon.cluster {
                if c.owns(event.token()) {
                    c.on_readable(event.token(), &daemon.node, &mut daemon.events);
                }
            }
        }
        daemon.serve_actions(&actions);
        if let Some(i) = daemon.shared.take_install() {
            daemon.install(*i);
            daemon.shared.set_installed();
        }
        if let Some((cfg, p)) = daemon.shared.take_live() {
            daemon.cfg = cfg;
            if let Some(c) = &mut daemon.cluster {
                c.apply_params(&p);
            }
        }
        if daemon.shared.restart_now() {
            exit = Exit::Restart;
            break 'run;
        }
        if crate::update::restart_due() {
            exit = Exit::Update;
            break 'run;
        }
        if let Some(c) = &mut daemon.cluster {
            if Instant::now() >= c.next_wakeup() {
                c.poll(&daemon.node, &mut daemon.events);
                // What the API thread's requests see (a removal refused
                // while the peer is heard): published at once, not at the
                // next housekeeping.
                if c.peer_heard() {
                    daemon.shared.set_peer_heard_now();
                }
            }
        }
        let now = Instant::now();
        if now >= next_aggregates {
            for iface in daemon.node.poll_aggregates() {
                daemon.events.event(
                    "SYSTEM",
                    format_args!("aggregate {iface}: active member lost its carrier, failed over"),
                );
            }
            next_aggregates = now + AGGREGATES;
        }
        if now >= next_watchdog {
            daemon.check_dataplane(now);
            next_watchdog = now + WATCHDOG;
        }
        if now >= next_housekeeping {
            daemon.watch();
            next_housekeeping = now + HOUSEKEEPING;
        }
    }
    daemon.events.event(
        "SYSTEM",
        match exit {
            Exit::Stopped => "stopping on signal",
            Exit::Restart => "stopping to start again with the new configuration",
            Exit::Update => "stopping to start the version just installed",
        },
    );
    // Table walks in progress give up: the API thread stops promptly.
    daemon.node.cancel_requests();
    // The peer hears why the silence comes (off this thread: the
    // hand-over below still sends heartbeats).
    let leaving = daemon.cluster.as_ref().and_then(|_| {
        let links = crate::peer::wiring::peer_links(&daemon.cfg);
        let keys = daemon.node.key_ring()?.current();
        let serial = daemon.cfg.node.serial.clone();
        let reason = match exit {
            Exit::Stopped => "stopping (tandemd got SIGTERM or SIGINT)",
            Exit::Restart => "restarting with a new configuration",
            Exit::Update => "restarting into a new version (an update)",
        };
        std::thread::Builder::new()
            .name("tandem-leaving".into())
            .spawn(move || {
                crate::peer::service::announce_leaving(
                    &links,
                    &keys,
                    &serial,
                    reason,
                    Duration::from_millis(300),
                )
            })
            .ok()
    });
    if let Some(c) = &mut daemon.cluster {
        // An active member hands over before it goes: no dead time to wait.
        c.hand_over(&daemon.node, &mut daemon.events, HAND_OVER);
    }
    if let Some(t) = leaving {
        let told = t.join().unwrap_or(false);
        daemon.events.event(
            "HA",
            if told {
                "the peer was told this member is going down"
            } else {
                "the peer could not be told this member is going down (no answer on TCP 1300)"
            },
        );
    }
    api.stop();
    let Daemon {
        node,
        cluster,
        events,
        peer,
        confwatch,
        ..
    } = daemon;
    // The members' service and the configuration watch hold the node
    // (to validate and apply a received revision): they stop first.
    drop(confwatch);
    drop(peer);
    drop(cluster);
    match Arc::try_unwrap(node) {
        Ok(node) => node.shutdown(),
        Err(_) => {
            events.event(
                "SYSTEM",
                "the dataplane is still in use by another thread: stopping without releasing DPDK",
            );
            if exit == Exit::Restart {
                // Starting again on devices still held would fail in
                // confusing ways: stop, and say how to start.
                events.event(
                    "SYSTEM",
                    "not starting again in place: start tandemd again (the new configuration is in place)",
                );
                exit = Exit::Stopped;
            }
        }
    }
    events.event("SYSTEM", "stopped");
    Ok(exit)
}

/// How long a dataplane thread may go without turning its loop:
/// [`PROGRESS_TIMEOUT`], or four of an adaptive worker's longest sleeps if
/// that is longer (`idle.max_sleep_us` may be up to 100 ms).
fn progress_timeout(cfg: &NodeConfig) -> Duration {
    match cfg.dataplane.poll_mode {
        tandem_config::PollMode::Adaptive => PROGRESS_TIMEOUT
            .max(Duration::from_micros(u64::from(cfg.dataplane.idle.max_sleep_us)) * 4),
        tandem_config::PollMode::Busy => PROGRESS_TIMEOUT,
    }
}

impl Daemon {
    /// Answers what the API thread handed over, from the state we have
    /// (nothing here waits); at most a queue's worth per turn.
    fn serve_actions(&mut self, actions: &Receiver<ControlAction>) {
        for _ in 0..ACTION_QUEUE {
            let Ok(action) = actions.try_recv() else {
                return;
            };
            let response = match action.request {
                ControlRequest::HaInfo => self.ha_info(),
                ControlRequest::Forced(f) => self.forced_status(f),
            };
            action.reply.send(&response);
        }
    }

    /// Reads every dataplane thread's progress; a dead or stuck one takes
    /// the quality to 0 (the peer takes over), and is logged.
    fn check_dataplane(&mut self, now: Instant) {
        let mut samples: Vec<Sample> = self
            .node
            .workers()
            .iter()
            .map(|w| Sample {
                progress: w.progress(),
                finished: w.is_finished(),
            })
            .collect();
        if let Some(core) = self.node.sync() {
            samples.push(Sample {
                progress: core
                    .shared()
                    .loops
                    .load(std::sync::atomic::Ordering::Relaxed),
                finished: false,
            });
        }
        for change in self.watchdog.check(now, &samples) {
            self.events.event("HA", &change);
        }
        if let Some(c) = &mut self.cluster {
            c.dataplane_failed = !self.watchdog.healthy();
        }
    }

    /// Puts the calling (control) thread in the real-time class of a
    /// cluster member's `control_priority` (0, or not a member: stays).
    fn go_realtime(&mut self) {
        let Some(prio) = self
            .cfg
            .ha
            .as_ref()
            .map(|h| h.control_priority)
            .filter(|&p| p > 0)
        else {
            return;
        };
        match tandem_dataplane::dpdk::set_current_thread_realtime(prio) {
            Ok(()) => self.events.event(
                "SYSTEM",
                format_args!("control thread in the real-time class (SCHED_RR {prio})"),
            ),
            Err(e) => self.events.event(
                "SYSTEM",
                format_args!(
                    "control thread stays in the normal class: SCHED_RR {prio} refused: {e}"
                ),
            ),
        }
    }

    /// Takes the election, the members' service and the configuration
    /// watch of a cluster this node just created (`ha create`): from now
    /// on it sends heartbeats, as the active member.
    fn install(&mut self, i: crate::apiserver::Installed) {
        let crate::apiserver::Installed {
            cfg,
            cluster,
            peer,
            confwatch,
            conf,
        } = i;
        // A node alone has none of these: nothing is dropped (and joined)
        // here.
        debug_assert!(self.cluster.is_none() && self.peer.is_none() && self.confwatch.is_none());
        self.cfg = cfg;
        self.cluster = Some(cluster);
        self.peer = peer;
        self.confwatch = confwatch;
        self.conf = conf;
        // The sync thread started with HA: the watchdog watches it too.
        let mut watched: Vec<String> = self
            .node
            .workers()
            .iter()
            .map(|w| format!("worker {}", w.id))
            .collect();
        if self.node.sync().is_some() {
            watched.push("the sync thread".into());
        }
        self.watchdog = Watchdog::new(watched, progress_timeout(&self.cfg), Instant::now());
        // Heartbeats leave on time from now on: the real-time class, as a
        // member started with HA gets at start.
        self.go_realtime();
        self.events.event(
            "HA",
            "cluster created: election on, this member active; heartbeats on UDP 5405 over the HA links",
        );
    }

    /// hainfo: the election's view, or the hand-set role when it is off.
    fn ha_info(&self) -> Response {
        if self.cfg.ha.is_none() {
            return Response::error(
                "this node is not a cluster member (no ha section in its configuration): it is always active",
            );
        }
        match &self.cluster {
            Some(c) => {
                let mut info = c.info(&self.cfg, &self.node);
                info.quality_problems.extend(self.watchdog.problems());
                info.peer_service = self.peer.as_ref().map(|p| p.counters.report(&p.listening));
                // Never wait for the watch thread: the last view when it
                // holds its lock.
                if let Some(w) = &self.confwatch {
                    if let Ok(v) = w.view.try_lock() {
                        *self.config_info.borrow_mut() = v.info();
                        *self.peer_view.borrow_mut() = PeerView {
                            identity: v.peer_identity.clone(),
                            answered: v.peer_answered.clone(),
                            error: v.peer_error.clone(),
                            member: v.peer_member.clone(),
                            member_refused: v.peer_member_refused,
                        };
                    }
                }
                info.config = self.config_info.borrow().clone().map(Box::new);
                self.complete_members(&mut info);
                Response::HaInfo(Box::new(info))
            }
            None => Response::HaInfo(Box::new(crate::api::HaInfo {
                election: false,
                state: "election off (ha.election: false): roles are set by hand".into(),
                local: crate::api::HaMemberInfo {
                    serial: self.cfg.node.serial.clone(),
                    role: self.node.role().as_str().into(),
                    forced: self.forced.map(|r| r.as_str().into()),
                    uptime_ms: self.started_at.elapsed().as_millis() as u64,
                    alive: true,
                    ..Default::default()
                },
                icmp_check: "off".into(),
                ..Default::default()
            })),
        }
    }

    /// What the election does not know of the members: identity,
    /// version, start, configuration state (hainfo, hainfo -v).
    fn complete_members(&self, info: &mut crate::api::HaInfo) {
        let id = &self.identity;
        let l = &mut info.local;
        l.model.clone_from(&id.model);
        l.licence.clone_from(&id.licence);
        l.version = Some(id.firmware.clone());
        l.boot_unix = SystemTime::now()
            .checked_sub(self.started_at.elapsed())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs());
        l.file_sync = self.file_sync();
        l.slots = crate::update::view();
        info.tpm = crate::tpm::measured().map(str::to_owned);
        info.key_store = crate::keystore::status();
        let cfg = info.config.as_deref();
        l.conf_synchronized = cfg.map(|c| !c.local.local_changes && c.synchronized != Some(false));
        let view = self.peer_view.borrow();
        if let Some(p) = info.peer.as_mut() {
            if let Some(pid) = &view.identity {
                p.model.clone_from(&pid.model);
                p.licence.clone_from(&pid.licence);
                p.version = Some(pid.firmware.clone());
            }
            // What the peer says of itself, while it answers and still
            // has the role it had when it said.
            match view.member.as_ref().filter(|_| view.error.is_none()) {
                Some(m) => {
                    // (A role changed since it said: the time seen here.)
                    if m.role_since_unix.is_some() && m.role == p.role {
                        p.since_unix = m.role_since_unix;
                        p.since_observed = false;
                    }
                    p.file_sync.clone_from(&m.file_sync);
                    p.sync_id = m.sync_id;
                    p.slots.clone_from(&m.slots);
                    for l in &mut info.links {
                        l.peer_view = m.links.iter().find(|x| x.name == l.name).cloned();
                    }
                }
                None if view.member_refused => {
                    p.file_sync = Some("n/a (the peer runs an older tandem)".into());
                }
                None => {}
            }
            p.conf_synchronized = cfg
                .and_then(|c| c.peer.as_ref().map(|m| (m, c.synchronized)))
                .map(|(m, same)| !m.local_changes && same != Some(false));
        }
        info.peer_status_source = match (&view.answered, &view.error) {
            (Some((at, link)), None) => Some(format!(
                "identity and configuration status from the members' service on {link}, {:.1} s ago",
                crate::peer::confsync::now_unix_ms().saturating_sub(*at) as f64 / 1e3
            )),
            (_, Some(e)) => Some(format!("the members' service does not answer: {e}")),
            (None, None) if self.confwatch.is_some() => {
                Some("the members' service was not asked yet".into())
            }
            (None, None) => None,
        };
    }

    /// A configuration transfer running on this member, in words.
    fn file_sync(&self) -> Option<String> {
        self.conf.as_ref().map(|c| {
            if c.receiving() {
                "receiving a configuration revision".into()
            } else {
                "none running".into()
            }
        })
    }

    /// haactive / hapassive / hareset. Until the election arrives, the
    /// forced status is what decides the role; hareset keeps the current
    /// role and removes the constraint.
    fn forced_status(&mut self, forced: Option<Role>) -> Response {
        if self.cfg.ha.is_none() {
            return Response::error(
                "this node is not a cluster member (no ha section in its configuration): it is always active",
            );
        }
        self.forced = forced;
        self.shared.set_forced(forced);
        if let Some(c) = &mut self.cluster {
            // The election decides, forced status first (it logs the
            // change).
            c.forced(self.forced, &self.node, &mut self.events);
            self.seen.3 = self.node.role();
        } else if let Some(role) = self.forced {
            self.events
                .event("HA", format_args!("forced status set to {}", role.as_str()));
            if self.node.role() != role {
                self.events.event(
                    "HA",
                    format_args!(
                        "swap: {} -> {} (forced)",
                        self.node.role().as_str(),
                        role.as_str()
                    ),
                );
                self.node.set_role(role);
                self.seen.3 = role;
            }
        } else {
            self.events.event("HA", "forced status removed");
        }
        Response::Role {
            role: self.node.role().as_str().into(),
            forced: self.forced.map(|r| r.as_str().into()),
        }
    }

    /// Logs what changed since the last housekeeping: the role, the peer
    /// and the table's state, the HA link in use.
    fn watch(&mut self) {
        use std::sync::atomic::Ordering::Relaxed;
        // What the members' service tells the peer of this member (never
        // waiting: the service may be answering with the last one).
        if let (Some(c), Some(p)) = (&self.cluster, &self.peer) {
            if let Ok(mut g) = p.status.try_lock() {
                *g = c.member_status(&self.node, self.file_sync());
                g.slots = crate::update::view();
            }
        }
        if self.cluster.as_ref().is_some_and(Cluster::peer_heard) {
            self.shared.set_peer_heard_now();
        }
        // A new version on trial confirms itself once it has rejoined:
        // the peer heard, and active or with a complete table (a node
        // without a cluster: running).
        let rejoined = match &self.cluster {
            None => true,
            Some(c) => {
                c.peer_heard()
                    && (self.node.role() == Role::Active
                        || self
                            .node
                            .sync()
                            .is_some_and(|s| s.shared().synchronized.load(Relaxed)))
            }
        };
        crate::update::set_healthy(rejoined && self.watchdog.healthy());
        let role = self.node.role();
        // With the election on, the swap itself was logged with its reason.
        if role != self.seen.3 && self.cluster.is_none() {
            self.events
                .event("HA", format_args!("role now {}", role.as_str()));
            self.seen.3 = role;
        }
        let Some(core) = self.node.sync() else { return };
        let sh = core.shared();
        let (peer, synced, link) = (
            sh.peer_up.load(Relaxed),
            sh.synchronized.load(Relaxed),
            sh.link_in_use.load(Relaxed),
        );
        let link_name = |l: u8| {
            self.cfg
                .ha
                .as_ref()
                .and_then(|h| h.links.get(usize::from(l)))
                .map(|x| x.name.clone())
        };
        // The peer coming and going, and why the table stopped (or started)
        // being complete, come from the sync core itself, with reasons.
        let mut lines = Vec::new();
        while let Some(e) = sh.next_event() {
            lines.push(e.to_string());
        }
        if link != self.seen.2 {
            lines.push(match (link_name(link), link_name(self.seen.2)) {
                (Some(now), Some(was)) if peer => {
                    format!("state sync now on {now} (it was on {was})")
                }
                (Some(now), _) => format!("state sync now on {now}"),
                (None, _) => "state sync has no HA link in use".to_owned(),
            });
        }
        self.seen = (peer, synced, link, role);
        for l in lines {
            self.events.event("SYNC", l);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lab_config() -> NodeConfig {
        let text = include_str!("../../config/examples/node-lab.ron");
        tandem_config::parse(text, "node-lab.ron").unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_worker_that_may_sleep_long_gets_a_longer_progress_timeout() {
        let mut cfg = lab_config();
        cfg.dataplane.poll_mode = tandem_config::PollMode::Adaptive;
        cfg.dataplane.idle.max_sleep_us = 500;
        assert_eq!(progress_timeout(&cfg), PROGRESS_TIMEOUT);
        cfg.dataplane.idle.max_sleep_us = 100_000;
        assert_eq!(progress_timeout(&cfg), Duration::from_millis(400));
        cfg.dataplane.poll_mode = tandem_config::PollMode::Busy;
        assert_eq!(progress_timeout(&cfg), PROGRESS_TIMEOUT);
    }
}
