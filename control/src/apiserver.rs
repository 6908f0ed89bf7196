//! The API thread: serves the control socket off the control thread
//! (firecracker's `api_server_adapter` pattern).
//!
//! The control thread sends the heartbeats (every few ms, in the real-time
//! class): it must never wait on an operator. So the socket lives here:
//! [`ControlSocket`] accepts, reads and parses a request into a typed
//! [`Request`], and this thread decides where it goes:
//! - what needs the control loop's state (`hainfo`, `haactive`,
//!   `hapassive`, `hareset`) becomes a typed [`ControlAction`] on a bounded
//!   channel, with a [`Waker`] for the control loop, which answers at once
//!   from the state it has, through a [`Reply`] (a non-blocking send and a
//!   wake of this thread);
//! - what is slow (`conn list`, `conn flush`, `policy reload`: table walks
//!   and policy compilation) goes to the job thread, one at a time; this
//!   thread keeps serving other clients meanwhile;
//! - the rest (`status`, `stats`, `sync`, `log`, `debug`) is answered here.
//!
//! Answers given later reach the socket as [`Completion`]s over a channel
//! and a wake of this thread's poll.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam::channel::{bounded, unbounded, Receiver, Sender, TrySendError};
use mio::{Events, Poll, Token, Waker};
use tandem_config::NodeConfig;
use tandem_dataplane::node::Node;
use tandem_dataplane::worker::{Role, WorkerFault, MAX_INJECTED_STALL};

use crate::api::{ConnectionsReport, DebugFault, IdentityReport, Request, Response};
use crate::eventlog::{EventLog, MEMORY_LINES};
use crate::reports;
use crate::socket::{ClientId, ControlSocket, SocketError};

const WAKE: Token = Token(0);
const SOCKET_BASE: usize = 16;

/// Actions waiting for the control loop; more are answered "busy".
pub const ACTION_QUEUE: usize = 16;

/// Slow requests waiting for the job thread (one runs at a time); more are
/// answered "busy".
pub const JOB_QUEUE: usize = 4;

/// The longest a table walk (conn list, conn flush) may take.
pub const JOB_LIMIT: Duration = Duration::from_secs(30);

/// The neighbour table is aged this often (bounded work, on this thread).
const HOUSEKEEPING: Duration = Duration::from_millis(500);

/// The environment variable that allows `tandemctl debug` (fault
/// injection) when set to `1` at start. For tests only.
pub const FAULTS_ENV: &str = "TANDEM_TEST_FAULTS";

/// What the control loop publishes for the other threads.
#[derive(Debug, Default)]
pub struct ControlShared {
    /// The forced status: 0 none, 1 active, 2 passive.
    forced: AtomicU8,
    /// 0 none; 1 a job asks tandemd to restart once its answer is sent; 2
    /// the answer is out: the control loop stops and tandemd starts again.
    restart: AtomicU8,
    /// What `ha create` built for the control loop, which takes it (with
    /// `try_lock`: it never waits) and sets `installed`.
    install: Mutex<Option<Box<Installed>>>,
    installed: AtomicBool,
    /// When the peer's heartbeats were last seen arriving (Unix ms; the
    /// control loop's housekeeping, every 500 ms).
    peer_heard_ms: std::sync::atomic::AtomicU64,
    /// A configuration whose HA parameters changed at run time, for the
    /// control loop (taken with `try_lock`).
    live: Mutex<Option<(Arc<NodeConfig>, crate::cluster::LiveParams)>>,
}

/// What a node that creates a cluster hands to its control loop.
pub struct Installed {
    /// The configuration now in force.
    pub cfg: Arc<NodeConfig>,
    /// The election.
    pub cluster: crate::cluster::Cluster,
    /// The members' service.
    pub peer: Option<crate::peer::service::PeerService>,
    /// The configuration status watch.
    pub confwatch: Option<crate::peer::confsync::ConfigWatch>,
    /// The configuration sync.
    pub conf: Option<Arc<crate::peer::confsync::ConfSync>>,
}

impl std::fmt::Debug for Installed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Installed").finish_non_exhaustive()
    }
}

impl ControlShared {
    /// A job asks for a restart of tandemd after its answer (a firewall
    /// that joined a cluster starts again as a member).
    pub fn request_restart(&self) {
        self.restart.store(1, Ordering::Release);
    }

    /// Hands the control loop (woken by `waker`) a configuration whose HA
    /// parameters changed; it applies them at its next turn.
    pub fn hand_live(&self, cfg: Arc<NodeConfig>, p: crate::cluster::LiveParams, waker: &Waker) {
        *self
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((cfg, p));
        let _ = waker.wake();
    }

    /// What [`ControlShared::hand_live`] left, if anything (never waits).
    pub fn take_live(&self) -> Option<(Arc<NodeConfig>, crate::cluster::LiveParams)> {
        self.live.try_lock().ok().and_then(|mut g| g.take())
    }

    /// Publishes that the peer is heard now (control thread).
    pub fn set_peer_heard_now(&self) {
        self.peer_heard_ms
            .store(crate::peer::confsync::now_unix_ms(), Ordering::Relaxed);
    }

    /// Whether the peer was heard in the last 3 s (six housekeeping turns:
    /// a heartbeat gap of a loaded machine does not make it "gone").
    pub fn peer_heard(&self) -> bool {
        let at = self.peer_heard_ms.load(Ordering::Relaxed);
        at > 0 && crate::peer::confsync::now_unix_ms().saturating_sub(at) < 3_000
    }

    /// Whether the control loop should stop now for a restart.
    pub fn restart_now(&self) -> bool {
        self.restart.load(Ordering::Acquire) == 2
    }

    /// Hands `i` to the control loop (woken by `waker`) and waits, at most
    /// 2 s, until it took it.
    pub fn install(&self, i: Installed, waker: &Waker) -> Result<(), String> {
        self.installed.store(false, Ordering::Release);
        *self
            .install
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Box::new(i));
        let _ = waker.wake();
        let t0 = Instant::now();
        while !self.installed.load(Ordering::Acquire) {
            if t0.elapsed() > std::time::Duration::from_secs(2) {
                return Err("the control thread did not take the election within 2 s".into());
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        Ok(())
    }

    /// What `ha create` left for the control loop, if anything (never
    /// waits).
    pub fn take_install(&self) -> Option<Box<Installed>> {
        self.install.try_lock().ok().and_then(|mut g| g.take())
    }

    /// The control loop took it.
    pub fn set_installed(&self) {
        self.installed.store(true, Ordering::Release);
    }

    /// Publishes the forced status (control thread).
    pub fn set_forced(&self, forced: Option<Role>) {
        let v = match forced {
            None => 0,
            Some(Role::Active) => 1,
            Some(Role::Passive) => 2,
        };
        self.forced.store(v, Ordering::Release);
    }

    /// The forced status the control loop last published.
    pub fn forced(&self) -> Option<Role> {
        match self.forced.load(Ordering::Acquire) {
            1 => Some(Role::Active),
            2 => Some(Role::Passive),
            _ => None,
        }
    }
}

/// What the API thread and its job thread read (all shared, nothing that
/// belongs to the control loop).
pub struct ApiContext {
    /// The dataplane.
    pub node: Arc<Node>,
    /// The configuration the node runs (replaced when it creates a
    /// cluster): read it with [`ApiContext::cfg`].
    pub cfg: Mutex<Arc<NodeConfig>>,
    /// Where it was read from.
    pub config_path: PathBuf,
    /// When tandemd started (wall clock).
    pub started: SystemTime,
    /// When tandemd started.
    pub started_at: Instant,
    /// The event log.
    pub events: EventLog,
    /// What the control loop publishes.
    pub shared: Arc<ControlShared>,
    /// `tandemctl debug` is allowed ([`FAULTS_ENV`] was `1` at start).
    pub faults: bool,
    /// The node's identity, read at start.
    pub identity: IdentityReport,
    /// The configuration sync (a cluster member with a cluster
    /// directory): read it with [`ApiContext::conf`].
    pub conf: Mutex<Option<Arc<crate::peer::confsync::ConfSync>>>,
    /// The control loop's registry (`ha create` registers the election's
    /// sockets with it).
    pub registry: Option<mio::Registry>,
}

impl ApiContext {
    /// The configuration in force.
    pub fn cfg(&self) -> Arc<NodeConfig> {
        self.cfg
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The configuration sync, if this node has a cluster directory.
    pub fn conf(&self) -> Option<Arc<crate::peer::confsync::ConfSync>> {
        self.conf
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// A request the control loop answers from the state it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlRequest {
    /// `hainfo`.
    HaInfo,
    /// `haactive` (active), `hapassive` (passive), `hareset` (none).
    Forced(Option<Role>),
}

/// A [`ControlRequest`] and where its answer goes.
#[derive(Debug)]
pub struct ControlAction {
    /// What is asked.
    pub request: ControlRequest,
    /// Where the answer goes.
    pub reply: Reply,
}

/// An answer given later, on its way to the socket.
#[derive(Debug)]
pub struct Completion {
    id: ClientId,
    line: Vec<u8>,
}

/// Where the answer to one client goes: sending never blocks (an unbounded
/// channel holding at most one answer per client, and a wake of the API
/// thread's poll).
#[derive(Debug)]
pub struct Reply {
    id: ClientId,
    tx: Sender<Completion>,
    waker: Arc<Waker>,
}

impl Reply {
    /// Sends the answer (encoded here).
    pub fn send(self, response: &Response) {
        self.send_line(response.to_line());
    }

    fn send_line(self, line: Vec<u8>) {
        // The API thread may be gone (stopping): nothing to answer then.
        if self.tx.send(Completion { id: self.id, line }).is_ok() {
            let _ = self.waker.wake();
        }
    }
}

/// A slow request for the job thread.
struct Job {
    request: Request,
    reply: Reply,
}

/// The running API thread.
pub struct ApiThread {
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ApiThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiThread").finish_non_exhaustive()
    }
}

impl ApiThread {
    /// Starts the API thread (and its job thread) serving `socket`;
    /// `actions` and `control_waker` reach the control loop.
    pub fn spawn(
        mut socket: ControlSocket,
        ctx: ApiContext,
        actions: Sender<ControlAction>,
        control_waker: Arc<Waker>,
    ) -> Result<ApiThread, SocketError> {
        let poll = Poll::new().map_err(|source| SocketError::Register { source })?;
        let waker = Arc::new(
            Waker::new(poll.registry(), WAKE).map_err(|source| SocketError::Register { source })?,
        );
        socket.register(poll.registry(), SOCKET_BASE)?;
        let ctx = Arc::new(ctx);
        let (jobs_tx, jobs_rx) = bounded::<Job>(JOB_QUEUE);
        let jobs = std::thread::Builder::new()
            .name("tandem-api-jobs".into())
            .spawn({
                let ctx = ctx.clone();
                let waker = control_waker.clone();
                move || run_jobs(&ctx, &jobs_rx, &waker)
            })
            .map_err(|source| SocketError::Thread { source })?;
        let stop = Arc::new(AtomicBool::new(false));
        let (done_tx, done_rx) = unbounded();
        let server = Server {
            poll,
            socket,
            ctx,
            actions,
            control_waker,
            jobs: Some((jobs_tx, jobs)),
            done_tx,
            done_rx,
            waker: waker.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("tandem-api".into())
            .spawn({
                let stop = stop.clone();
                move || server.run(&stop)
            })
            .map_err(|source| SocketError::Thread { source })?;
        Ok(ApiThread {
            waker,
            stop,
            thread: Some(thread),
        })
    }

    /// Stops serving (clients in progress are dropped), waits for the
    /// running job to end (cut short with [`Node::cancel_requests`] first)
    /// and closes the socket.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Server {
    poll: Poll,
    socket: ControlSocket,
    ctx: Arc<ApiContext>,
    actions: Sender<ControlAction>,
    control_waker: Arc<Waker>,
    jobs: Option<(Sender<Job>, JoinHandle<()>)>,
    done_tx: Sender<Completion>,
    done_rx: Receiver<Completion>,
    waker: Arc<Waker>,
}

impl Server {
    fn run(mut self, stop: &AtomicBool) {
        let mut events = Events::with_capacity(64);
        let mut next_housekeeping = Instant::now() + HOUSEKEEPING;
        while !stop.load(Ordering::Acquire) {
            let now = Instant::now();
            let deadline = self
                .socket
                .next_deadline()
                .map_or(next_housekeeping, |d| d.min(next_housekeeping));
            if let Err(e) = self
                .poll
                .poll(&mut events, Some(deadline.saturating_duration_since(now)))
            {
                if e.kind() != std::io::ErrorKind::Interrupted {
                    self.ctx.events.event(
                        "SYSTEM",
                        format_args!("control socket: the API thread's event loop failed ({e}); retrying in 100 ms"),
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
                continue;
            }
            for event in events.iter() {
                if self.socket.owns(event.token()) {
                    let Server {
                        poll,
                        socket,
                        ctx,
                        actions,
                        control_waker,
                        jobs,
                        done_tx,
                        waker,
                        ..
                    } = &mut self;
                    let route = Route {
                        ctx,
                        actions,
                        control_waker,
                        jobs: jobs.as_ref().map(|j| &j.0),
                        done_tx,
                        waker,
                    };
                    socket
                        .handle_event(poll.registry(), event, &mut |req, id| route.handle(req, id));
                }
            }
            while let Ok(c) = self.done_rx.try_recv() {
                self.socket.answer(self.poll.registry(), c.id, c.line);
            }
            let now = Instant::now();
            self.socket.poll_timeouts(now);
            if now >= next_housekeeping {
                self.ctx.node.housekeeping();
                next_housekeeping = now + HOUSEKEEPING;
            }
        }
        // No new job; the running one ends (cut short if the node stops).
        if let Some((tx, thread)) = self.jobs.take() {
            drop(tx);
            let _ = thread.join();
        }
    }
}

/// Where each request goes (borrowed parts of the [`Server`]).
struct Route<'a> {
    ctx: &'a ApiContext,
    actions: &'a Sender<ControlAction>,
    control_waker: &'a Waker,
    jobs: Option<&'a Sender<Job>>,
    done_tx: &'a Sender<Completion>,
    waker: &'a Arc<Waker>,
}

impl Route<'_> {
    fn reply(&self, id: ClientId) -> Reply {
        Reply {
            id,
            tx: self.done_tx.clone(),
            waker: self.waker.clone(),
        }
    }

    /// Answers now (`Some`), or hands the request on (`None`: the answer
    /// comes back as a [`Completion`]).
    fn handle(&self, req: Request, id: ClientId) -> Option<Response> {
        let ctx = self.ctx;
        match req {
            Request::Status => Some(Response::Status(reports::status(ctx))),
            Request::Stats => Some(Response::Stats(reports::stats(ctx))),
            Request::Identity => Some(Response::Identity(ctx.identity.clone())),
            Request::Log { lines } => Some(Response::Log {
                lines: ctx.events.tail(lines.unwrap_or(50).min(MEMORY_LINES)),
            }),
            Request::Sync => Some(match ctx.node.sync() {
                Some(core) => Response::Sync(reports::sync_report(ctx, core)),
                None => Response::error(
                    "no state sync on this node: it needs an ha section and a firewall policy in its configuration",
                ),
            }),
            Request::SyncVerify { start } => Some(reports::sync_verify(ctx, start)),
            Request::HaInfo => self.to_control(ControlRequest::HaInfo, id),
            Request::HaActive => self.to_control(ControlRequest::Forced(Some(Role::Active)), id),
            Request::HaPassive => self.to_control(ControlRequest::Forced(Some(Role::Passive)), id),
            Request::HaReset => self.to_control(ControlRequest::Forced(None), id),
            Request::Debug { fault } => Some(debug(ctx, fault)),
            Request::ConnList { .. }
            | Request::ConnFlush
            | Request::PolicyReload
            | Request::PolicyShow
            | Request::SyncDigest
                if ctx.node.policy().is_none() =>
            {
                Some(Response::error(
                    "this node runs as a plain router: no filter policy is configured (set firewall.policy in the node configuration)",
                ))
            }
            Request::PolicyShow => Some(Response::PolicyRules(Box::new(reports::policy(ctx)))),
            Request::PeerStatus if ctx.cfg().ha.is_none() => Some(Response::error(
                "this node is not a cluster member (no ha section in its configuration): it has no peer",
            )),
            Request::HaSync { .. } | Request::HaSyncTest | Request::HaDiff { .. }
                if ctx.conf().is_none() =>
            {
                Some(Response::error(
                    "this node has no cluster directory (its configuration is one file, without cluster: in node.ron): there is no configuration to synchronize",
                ))
            }
            Request::HaCreate { create: None, .. } | Request::HaCreate { psk: None, .. } => {
                Some(Response::error(
                    "ha create needs the main HA link (interface and address) and the pre-shared key",
                ))
            }
            Request::HaSet { set: None, .. } => Some(Response::error(
                "ha set needs a parameter: prefer, sync-min-age, swap or weight",
            )),
            Request::HaKey { psk: None } => Some(Response::error(
                "ha set key needs the new pre-shared key (--psk-file FILE, or typed twice)",
            )),
            Request::HaSet { .. } | Request::HaEnha | Request::HaKey { .. }
                if ctx.conf().is_none() =>
            {
                Some(Response::error(
                    "this node is not a member of a cluster with a cluster directory: there is no cluster parameter to set",
                ))
            }
            Request::HaClusterRemove { serial: None, .. } => Some(Response::error(
                "ha cluster remove needs the member: serial=SERIAL, or serial=remote for the other member",
            )),
            Request::HaClusterRemove { .. } | Request::HaClusterActivate
                if ctx.conf().is_none() =>
            {
                Some(Response::error(
                    "this node is not a member of a cluster with a cluster directory: there is no membership to change",
                ))
            }
            Request::HaClusterRemove {
                serial: Some(serial),
                force,
            } => Some(
                match ctx.conf().map(|c| c.remove_member(&serial, ctx.shared.peer_heard(), force)) {
                    Some(Ok(message)) => Response::Done { message },
                    Some(Err(e)) => Response::error(e),
                    None => Response::error("no cluster directory"),
                },
            ),
            Request::HaJoin { join: None, .. } | Request::HaJoin { psk: None, .. } => {
                Some(Response::error(
                    "ha join needs the main HA link (interface and address), the member's address and the pre-shared key",
                ))
            }
            Request::HaDiff { file: None } => Some(Response::error(
                "hadiff needs a file: a path relative to the cluster directory, such as policy.ron (tandemctl hasynctest lists the files that differ)",
            )),
            Request::SystemTpmPcrseal { password: None, .. } => Some(Response::error(
                "system tpm pcrseal needs the TPM password: tpmpassword=PASSWORD",
            )),
            Request::SystemTpmPcrseal { serial: None, .. } => Some(Response::error(
                "system tpm pcrseal needs the member: serial=local (this one), serial=passive (the passive member) or a member's serial",
            )),
            Request::SystemTpmPcrseal { .. } => self.to_jobs(req, id),
            Request::SystemTpmPassword { new: None, .. } => Some(Response::error(
                "system tpm password needs the new password: new=PASSWORD (and old=PASSWORD when the TPM has one)",
            )),
            Request::SystemTpmPassword { .. } => self.to_jobs(req, id),
            Request::SystemUpdate { package, target } => match (package.as_deref(), target.as_deref()) {
                (None, _) => Some(Response::error(
                    "system update needs the package: --package FILE (an absolute path on this node)",
                )),
                (Some(p), _) if !p.starts_with('/') => Some(Response::error(format!(
                    "the package path {p:?} is not absolute: give the whole path on this node"
                ))),
                (_, Some("local" | "remote")) => self.to_jobs(
                    Request::SystemUpdate {
                        package: package.clone(),
                        target: target.clone(),
                    },
                    id,
                ),
                (_, t) => Some(Response::error(format!(
                    "system update needs --target local (this member) or --target remote (the peer), not {}",
                    t.map_or_else(|| "nothing".to_owned(), |t| format!("{t:?}"))
                ))),
            },
            Request::ConnList { .. }
            | Request::ConnFlush
            | Request::PolicyReload
            | Request::SyncDigest
            | Request::PeerStatus
            | Request::HaSync { .. }
            | Request::HaSyncTest
            | Request::HaDiff { .. }
            | Request::HaCreate { .. }
            | Request::HaJoin { .. }
            | Request::HaSet { .. }
            | Request::HaKey { .. }
            | Request::HaEnha
            | Request::HaClusterActivate => self.to_jobs(req, id),
        }
    }

    /// Hands a long `request` to the job thread.
    fn to_jobs(&self, request: Request, id: ClientId) -> Option<Response> {
        let Some(jobs) = self.jobs else {
            return Some(Response::error("tandemd is stopping"));
        };
        match jobs.try_send(Job {
            request,
            reply: self.reply(id),
        }) {
            Ok(()) => None,
            Err(TrySendError::Full(_)) => Some(Response::error(format!(
                "busy: {JOB_QUEUE} long requests (conn list, conn flush, policy reload, hapeer, hasync, hasynctest, hadiff, system update) are already waiting; retry when they are done"
            ))),
            Err(TrySendError::Disconnected(_)) => Some(Response::error("tandemd is stopping")),
        }
    }

    /// Hands `request` to the control loop and wakes it.
    fn to_control(&self, request: ControlRequest, id: ClientId) -> Option<Response> {
        let action = ControlAction {
            request,
            reply: self.reply(id),
        };
        match self.actions.try_send(action) {
            Ok(()) => {
                let _ = self.control_waker.wake();
                None
            }
            Err(TrySendError::Full(_)) => Some(Response::error(format!(
                "busy: {ACTION_QUEUE} requests are waiting for the control loop; retry in a moment"
            ))),
            Err(TrySendError::Disconnected(_)) => Some(Response::error("tandemd is stopping")),
        }
    }
}

/// `tandemctl debug`: injects a fault, when allowed.
fn debug(ctx: &ApiContext, fault: Option<DebugFault>) -> Response {
    if !ctx.faults {
        return Response::error(format!(
            "refused: fault injection exists for tests only; start tandemd with {FAULTS_ENV}=1 to allow it (never in production)"
        ));
    }
    let Some(fault) = fault else {
        return Response::error(
            "debug needs a fault: {\"kind\":\"stall_worker\",\"worker\":N,\"ms\":M}, {\"kind\":\"panic_worker\",\"worker\":N}, {\"kind\":\"delay_pongs\",\"ms\":M} or {\"kind\":\"cut_join\"}",
        );
    };
    let (worker, what, wf) = match fault {
        DebugFault::DelayPongs { ms } => {
            let ms = ms.min(10_000);
            crate::peer::service::TEST_PONG_DELAY_MS.store(ms, Ordering::Relaxed);
            let what = format!("the members' service delays its pongs by {ms} ms");
            ctx.events
                .event("SYSTEM", format_args!("test fault injected: {what}"));
            return Response::Done {
                message: format!("fault injected: {what}"),
            };
        }
        DebugFault::CutJoin => {
            crate::peer::service::TEST_CUT_JOIN.store(true, Ordering::Relaxed);
            let what = "the members' service cuts the next join at its first file";
            ctx.events
                .event("SYSTEM", format_args!("test fault injected: {what}"));
            return Response::Done {
                message: format!("fault injected: {what}"),
            };
        }
        DebugFault::StallWorker { worker, ms } => {
            let d = Duration::from_millis(ms).min(MAX_INJECTED_STALL);
            (
                worker,
                format!("worker {worker} stalls for {} ms", d.as_millis()),
                WorkerFault::Stall(d),
            )
        }
        DebugFault::PanicWorker { worker } => (
            worker,
            format!("worker {worker} panics"),
            WorkerFault::Panic,
        ),
    };
    match ctx.node.inject_fault(worker, wf) {
        Ok(()) => {
            ctx.events
                .event("SYSTEM", format_args!("test fault injected: {what}"));
            Response::Done {
                message: format!("fault injected: {what}"),
            }
        }
        Err(e) => Response::error(format!("cannot inject the fault: {e}")),
    }
}

/// The keys this member sends under now (the key ring's: a key change
/// moves them), else those of its configuration.
fn peer_keys(ctx: &ApiContext) -> Result<Arc<tandem_dataplane::hakeys::HaKeys>, String> {
    if let Some(r) = ctx.node.key_ring() {
        return Ok(r.current());
    }
    let cfg = ctx.cfg();
    let ha = cfg
        .ha
        .as_ref()
        .ok_or("this node is not a cluster member: it has no peer")?;
    tandem_dataplane::hakeys::for_cluster(ha.psk.expose(), ha.cluster_id).map_err(|e| e.to_string())
}

/// `hapeer`: the peer's identity over the members' service, asked on each
/// HA link in turn (main first) until one answers.
fn peer_status(ctx: &ApiContext) -> Response {
    let cfg = ctx.cfg();
    let Some(ha) = &cfg.ha else {
        return Response::error("this node is not a cluster member: it has no peer");
    };
    let keys = match peer_keys(ctx) {
        Ok(k) => k,
        Err(e) => return Response::error(e),
    };
    let mut failures = Vec::new();
    for l in &ha.links {
        let addr = std::net::SocketAddr::new(l.peer.into(), crate::peer::service::PORT);
        let t0 = Instant::now();
        match crate::peer::service::query_status(
            addr,
            &keys,
            &ctx.identity.serial,
            std::time::Duration::from_secs(2),
        ) {
            Ok(identity) => {
                return Response::Peer {
                    link: l.name.clone(),
                    addr: addr.to_string(),
                    took_us: t0.elapsed().as_micros() as u64,
                    identity,
                }
            }
            Err(e) => failures.push(format!("{}: {e}", l.name)),
        }
    }
    Response::error(format!(
        "no answer from the peer's members' service (TCP 1300) on any HA link: {}",
        failures.join("; ")
    ))
}

/// A session with the peer's members' service (on the first HA link
/// that answers, 2 s per link), with the link's name.
fn connect_peer(ctx: &ApiContext) -> Result<(crate::peer::service::PeerClient, String), String> {
    let cfg = ctx.cfg();
    if cfg.ha.is_none() {
        return Err("this node is not a cluster member: it has no peer".into());
    }
    let keys = peer_keys(ctx)?;
    crate::peer::wiring::connect_peer(
        &crate::peer::wiring::peer_links(&cfg),
        &keys,
        &ctx.identity.serial,
        std::time::Duration::from_secs(2),
    )
}

/// Runs `f` with the configuration sync and a session with the peer (on
/// the first HA link that answers, 2 s per link).
fn with_peer(
    ctx: &ApiContext,
    f: impl FnOnce(
        &crate::peer::confsync::ConfSync,
        &mut crate::peer::service::PeerClient,
        &str,
    ) -> Response,
) -> Response {
    let Some(conf) = ctx.conf() else {
        return Response::error("this node has no cluster directory: nothing to synchronize");
    };
    match connect_peer(ctx) {
        Ok((mut client, link)) => f(&conf, &mut client, &link),
        Err(e) => Response::error(e),
    }
}

/// The job thread: runs the slow requests one at a time; ends when the
/// API thread drops its sender.
fn run_jobs(ctx: &ApiContext, jobs: &Receiver<Job>, control: &Arc<Waker>) {
    while let Ok(job) = jobs.recv() {
        let response = run_job(ctx, job.request, control);
        // Encoded here: a listing of 100,000 connections takes a while.
        job.reply.send_line(response.to_line());
        if ctx.shared.restart.load(Ordering::Acquire) == 1 {
            // The answer reaches tandemctl first, then the control loop
            // stops and tandemd starts again.
            std::thread::sleep(std::time::Duration::from_millis(300));
            ctx.shared.restart.store(2, Ordering::Release);
            let _ = control.wake();
        }
    }
}

fn run_job(ctx: &ApiContext, request: Request, control: &Arc<Waker>) -> Response {
    let node = &ctx.node;
    match request {
        Request::ConnList { filter } => match reports::conn_query(&filter) {
            Ok(q) => match node.connections(&q, Instant::now() + JOB_LIMIT) {
                Ok((conns, total)) => Response::Connections(ConnectionsReport {
                    connections: conns
                        .iter()
                        .map(|(w, v)| reports::conn_status(*w, v))
                        .collect(),
                    total,
                }),
                Err(e) => Response::error(e.to_string()),
            },
            Err(e) => Response::error(e),
        },
        Request::SyncDigest => match node.table_digest() {
            Ok(d) => Response::Digest(crate::api::DigestReport {
                connections: d.connections(),
                buckets: d
                    .buckets
                    .iter()
                    .map(|&(n, x)| (n, format!("{x:016x}")))
                    .collect(),
            }),
            Err(e) => Response::error(e.to_string()),
        },
        Request::ConnFlush => match node.flush_connections(Instant::now() + JOB_LIMIT) {
            Ok(count) => {
                ctx.events.event(
                    "FIREWALL",
                    format_args!("connection table flushed: {count} connections"),
                );
                Response::Flushed { count }
            }
            Err(e) => Response::error(format!("{e}; connections deleted so far stay deleted")),
        },
        Request::PolicyReload => match node.reload_policy() {
            Ok(info) => {
                ctx.events.event(
                    "POLICY",
                    format_args!(
                        "policy reloaded from {}: {} rules",
                        info.path.display(),
                        info.rules
                    ),
                );
                Response::Policy {
                    rules: info.rules,
                    nat_rules: info.nat_rules,
                    path: info.path.display().to_string(),
                }
            }
            Err(e) => {
                ctx.events.event(
                    "POLICY",
                    format_args!("policy reload refused, the old policy stays: {e}"),
                );
                Response::error(format!("{e}; the policy in force is unchanged"))
            }
        },
        Request::PeerStatus => peer_status(ctx),
        Request::HaEnha => match ctx.conf() {
            None => Response::error("no cluster directory"),
            Some(conf) => {
                let mut lines =
                    conf.apply_changed(&[tandem_config::cluster::CLUSTER_FILE.to_owned()]);
                for l in &lines {
                    ctx.events.event("HA", format_args!("enha: {l}"));
                }
                if lines.is_empty() {
                    lines.push(
                        "cluster.ron: nothing changed since tandemd last applied it".to_owned(),
                    );
                }
                Response::Lines { lines, error: None }
            }
        },
        Request::HaSet {
            set: Some(what),
            no_sync,
        } => {
            let Some(conf) = ctx.conf() else {
                return Response::error("no cluster directory");
            };
            let (lines, res) = crate::peer::params::set(&conf, &what, |conf| {
                if no_sync {
                    return (Vec::new(), Err("--no-sync was given".into()));
                }
                match connect_peer(ctx) {
                    Ok((mut client, link)) => {
                        crate::peer::confsync::send(conf, &mut client, &link, false)
                    }
                    Err(e) => (Vec::new(), Err(e)),
                }
            });
            Response::Lines {
                lines,
                error: res.err(),
            }
        }
        Request::HaKey { psk: Some(psk) } => {
            let (Some(conf), Some(ring)) = (ctx.conf(), ctx.node.key_ring().cloned()) else {
                return Response::error("this node is not a cluster member: it has no cluster key");
            };
            let cfg = ctx.cfg();
            let links = crate::peer::wiring::peer_links(&cfg);
            let (lines, res) = crate::peer::keychange::change(
                &conf,
                &ring,
                &psk,
                |keys| {
                    crate::peer::wiring::connect_peer(
                        &links,
                        keys,
                        &ctx.identity.serial,
                        std::time::Duration::from_secs(2),
                    )
                },
                crate::peer::keychange::WAIT_RETIRED,
            );
            if let Err(e) = &res {
                ctx.events
                    .event("HA", format_args!("ha set key did not change the key: {e}"));
            }
            Response::Lines {
                lines,
                error: res.err(),
            }
        }
        Request::HaClusterActivate => match ctx.conf().map(|c| c.activate(ctx.shared.peer_heard()))
        {
            Some(Ok(message)) => Response::Done { message },
            Some(Err(e)) => Response::error(e),
            None => Response::error("no cluster directory"),
        },
        Request::HaCreate {
            create: Some(args),
            psk: Some(psk),
        } => {
            let (lines, res) = crate::peer::create::create(ctx, &args, &psk, control);
            if let Err(e) = &res {
                ctx.events
                    .event("HA", format_args!("ha create refused: {e}"));
            }
            Response::Lines {
                lines,
                error: res.err(),
            }
        }
        Request::HaJoin {
            join: Some(args),
            psk: Some(psk),
        } => {
            let cfg = ctx.cfg();
            let (lines, res) = crate::peer::join::join(
                &cfg,
                &ctx.config_path,
                &crate::daemon::identity_path(&cfg, &ctx.config_path),
                &psk,
                &args,
            );
            match &res {
                Ok(()) => {
                    ctx.events.event(
                        "HA",
                        format_args!(
                            "joined the cluster of {}; restarting as a member",
                            args.member
                        ),
                    );
                    ctx.shared.request_restart();
                }
                Err(e) => ctx
                    .events
                    .event("HA", format_args!("join refused, nothing changed: {e}")),
            }
            Response::Lines {
                lines,
                error: res.err(),
            }
        }
        Request::HaSync { force } => with_peer(ctx, |conf, client, link| {
            let (lines, res) = crate::peer::confsync::send(conf, client, link, force);
            if let Err(e) = &res {
                ctx.events.event(
                    "HA",
                    format_args!("configuration sync to the peer failed: {e}"),
                );
            }
            Response::Lines {
                lines,
                error: res.err(),
            }
        }),
        Request::HaSyncTest => with_peer(
            ctx,
            |conf, client, _| match crate::peer::confsync::compare(conf, client) {
                Ok(lines) => Response::Lines { lines, error: None },
                Err(e) => Response::error(e),
            },
        ),
        Request::HaDiff { file: Some(file) } => with_peer(ctx, |conf, client, _| {
            match crate::peer::confsync::diff(conf, client, &file) {
                Ok(text) => Response::Lines {
                    lines: text.lines().map(str::to_owned).collect(),
                    error: None,
                },
                Err(e) => Response::error(e),
            }
        }),
        Request::SystemUpdate {
            package: Some(package),
            target: Some(target),
        } => system_update(ctx, Path::new(&package), &target),
        Request::SystemTpmPcrseal {
            password: Some(password),
            serial: Some(serial),
        } => system_tpm_pcrseal(ctx, &password, &serial),
        Request::SystemTpmPassword {
            old,
            new: Some(new),
        } => system_tpm_password(ctx, old.as_ref(), &new),
        other => Response::error(format!(
            "{} is not a long request (tandemd bug: please report it)",
            other.name()
        )),
    }
}

/// `system tpm password`: this member's TPM password (the owner
/// hierarchy's) changed; sealed keys stay valid (their policy names the
/// hierarchy, not its password).
fn system_tpm_password(
    ctx: &ApiContext,
    old: Option<&tandem_config::Secret>,
    new: &tandem_config::Secret,
) -> Response {
    let Some(tpm) = crate::tpm::node() else {
        return Response::error(
            "this member has no TPM in use (control.tpm is not set, or it did not answer at start: see hainfo's tpm line)",
        );
    };
    if new.is_empty() {
        return Response::error("the new TPM password is empty: give one (new=PASSWORD)");
    }
    match tpm.set_password(old.map(tandem_config::Secret::expose), new.expose()) {
        Ok(()) => {
            ctx.events
                .event("SYSTEM", format_args!("TPM password changed"));
            Response::Done {
                message:
                    "the TPM password is changed; keys sealed before it still open with the new one"
                        .into(),
            }
        }
        Err(e) => {
            ctx.events
                .event("SYSTEM", format_args!("TPM password not changed: {e}"));
            Response::error(e.to_string())
        }
    }
}

/// `system tpm pcrseal`: the cluster key resealed here, or on the peer
/// over the members' service.
fn system_tpm_pcrseal(
    ctx: &ApiContext,
    password: &tandem_config::Secret,
    serial: &str,
) -> Response {
    let me = ctx.identity.serial.as_str();
    let active_here = ctx.node.role() == Role::Active;
    let local = match serial {
        "local" => true,
        "remote" => false,
        "passive" => !active_here,
        s if s == me => true,
        s if ctx
            .conf()
            .is_some_and(|c| c.is_peer(s)) =>
        {
            false
        }
        s => {
            return Response::error(format!(
                "serial={s} names no member of this cluster; allowed local, passive, remote, {me} (this member) or the peer's serial"
            ))
        }
    };
    if local {
        return match crate::keystore::pcrseal(password.expose()) {
            Ok(message) => {
                ctx.events
                    .event("SYSTEM", format_args!("TPM pcrseal: {message}"));
                Response::Done { message }
            }
            Err(e) => {
                ctx.events
                    .event("SYSTEM", format_args!("TPM pcrseal refused: {e}"));
                Response::error(e)
            }
        };
    }
    let (mut client, link) = match connect_peer(ctx) {
        Ok(c) => c,
        Err(e) => return Response::error(e),
    };
    let request = crate::peer::service::PeerRequest::TpmPcrseal {
        password: password.clone(),
    };
    match client.ask(&request) {
        Ok(crate::peer::service::PeerAnswer::Resealed { message }) => {
            ctx.events.event(
                "SYSTEM",
                format_args!("TPM pcrseal on the peer (over {link}): {message}"),
            );
            Response::Done {
                message: format!("on the peer: {message}"),
            }
        }
        Ok(crate::peer::service::PeerAnswer::Refused { reason })
        | Err(crate::peer::service::PeerError::Refused { reason, .. }) => {
            Response::error(format!("the peer refused: {reason}"))
        }
        Ok(other) => Response::error(crate::peer::service::unexpected(&other)),
        Err(e) => Response::error(format!("the peer did not answer over {link}: {e}")),
    }
}

/// `system update`: the package installed here (then the restart into
/// it, after a hand-over if active) or sent to the peer (which does the
/// same).
fn system_update(ctx: &ApiContext, package: &Path, target: &str) -> Response {
    if crate::update::restart_requested() {
        return Response::error("this member is already restarting into a new version");
    }
    if target == "remote" {
        let (mut client, link) = match connect_peer(ctx) {
            Ok(c) => c,
            Err(e) => return Response::error(e),
        };
        return match crate::update::send(&mut client, package) {
            Ok(i) => {
                ctx.events.event(
                    "SYSTEM",
                    format_args!(
                        "update: the peer installed version {} (K2K {}) in its slot {} and restarts into it",
                        i.version,
                        i.k2k_version,
                        i.slot.as_str()
                    ),
                );
                Response::Lines {
                    lines: vec![
                        format!("sent {} to the peer over {link}", package.display()),
                        format!(
                            "the peer installed version {} (K2K {}) in slot {} on trial, signed by {}",
                            i.version,
                            i.k2k_version,
                            i.slot.as_str(),
                            i.signer
                        ),
                        match &i.key_handoff {
                            Some(h) => format!("on the peer, {h}"),
                            None => "the peer's cluster key is not sealed in a TPM: nothing to hand over".into(),
                        },
                        "it restarts into it now and must rejoin within its trial time, or it rolls back by itself".into(),
                    ],
                    error: None,
                }
            }
            Err(e) => {
                ctx.events
                    .event("SYSTEM", format_args!("update of the peer failed: {e}"));
                Response::error(e)
            }
        };
    }
    match crate::update::install(package) {
        Ok(i) => {
            ctx.events.event(
                "SYSTEM",
                format_args!(
                    "update: version {} (K2K {}) installed in slot {} on trial, signed by {}; restarting into it",
                    i.version,
                    i.k2k_version,
                    i.slot.as_str(),
                    i.signer
                ),
            );
            // The answer leaves first; the control loop then hands the
            // active role over (if it has it) and stops.
            if let Some(h) = &i.key_handoff {
                ctx.events.event("SYSTEM", format_args!("update: {h}"));
            }
            crate::update::request_restart(std::time::Duration::from_millis(300));
            let mut lines = vec![format!(
                "installed version {} (K2K {}) in slot {} on trial, signed by {}",
                i.version,
                i.k2k_version,
                i.slot.as_str(),
                i.signer
            )];
            lines.extend(i.key_handoff.clone());
            lines.push("restarting into it now (an active member hands over first); it must rejoin within its trial time, or it rolls back by itself".into());
            Response::Lines { lines, error: None }
        }
        Err(e) => {
            ctx.events.event(
                "SYSTEM",
                format_args!("update refused, nothing installed: {e}"),
            );
            Response::error(e)
        }
    }
}
