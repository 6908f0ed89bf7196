//! The members' service on TCP 1300: a thread of its own (`tandem-peer`)
//! listening on the HA addresses, and the client that asks the peer.
//!
//! Every connection runs the [`handshake`]; whatever is not a member
//! proving the cluster key is refused, counted, logged (once per source
//! and reason every 10 s) and closed, and changes nothing:
//! - at most [`MAX_CONNECTIONS`] at once (more: refused `busy`);
//! - the handshake done within [`HANDSHAKE_TIME`], an open session idle at
//!   most [`IDLE_TIME`];
//! - frames over their limit are refused before they are read.
//!
//! After the handshake, requests and answers are JSON objects in sealed
//! (encrypted) frames: the member's identity (`tandemctl hapeer`), the
//! configuration sync and file groups ([`super::confsync`]), joins
//! ([`super::join`]) and the steps of a key change ([`super::keychange`]).
//! During a key change a member proving either key is served.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream as MioStream};
use mio::{Events, Interest, Poll, Token};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use tandem_dataplane::hakeys::{HaKeys, KeyRing};

use super::confsync::ConfSync;
use super::handshake::{
    preauth_frame, refusal, ClientHandshake, FrameError, FrameReader, HandshakeError, Purpose,
    ServerHandshake, Session, NONCE_LEN,
};
use crate::api::IdentityReport;
use crate::eventlog::EventLog;

/// The TCP port of the members' service.
pub const PORT: u16 = 1300;
/// Most connections served at once.
pub const MAX_CONNECTIONS: usize = 8;
/// Time from the connection to the end of the handshake.
pub const HANDSHAKE_TIME: Duration = Duration::from_secs(5);
/// Longest silence of an open session.
pub const IDLE_TIME: Duration = Duration::from_secs(10);

/// When the peer last said it is going down (Unix ms; 0: never): the
/// election's log lines say the silence that follows is expected.
pub static PEER_LEAVING_MS: AtomicU64 = AtomicU64::new(0);

/// Test fault (`tandemctl debug delay-pongs`, only with
/// `TANDEM_TEST_FAULTS=1`): each pong leaves this many milliseconds late.
pub static TEST_PONG_DELAY_MS: AtomicU64 = AtomicU64::new(0);
/// Test fault (`tandemctl debug cut-join`): the next join's connection is
/// dropped when the joiner asks for its first file.
pub static TEST_CUT_JOIN: AtomicBool = AtomicBool::new(false);

/// What the service counted since start.
#[derive(Debug, Default)]
pub struct PeerCounters {
    accepted: AtomicU64,
    authenticated: AtomicU64,
    requests: AtomicU64,
    refused_malformed: AtomicU64,
    refused_auth: AtomicU64,
    refused_oversize: AtomicU64,
    refused_timeout: AtomicU64,
    refused_busy: AtomicU64,
}

/// [`PeerCounters`] as reports show them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerServiceReport {
    /// The addresses it listens on.
    pub listening: Vec<String>,
    /// Connections accepted.
    pub accepted: u64,
    /// Connections whose client proved the key.
    pub authenticated: u64,
    /// Requests answered in sessions.
    pub requests: u64,
    /// Refused: not our protocol (or another version), a bad request.
    pub refused_malformed: u64,
    /// Refused: the client did not prove the key.
    pub refused_auth: u64,
    /// Refused: a frame over its limit.
    pub refused_oversize: u64,
    /// Refused: the handshake or a session took too long.
    pub refused_timeout: u64,
    /// Refused: too many connections at once.
    pub refused_busy: u64,
}

impl PeerCounters {
    /// The counts now.
    pub fn report(&self, listening: &[SocketAddr]) -> PeerServiceReport {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PeerServiceReport {
            listening: listening.iter().map(ToString::to_string).collect(),
            accepted: g(&self.accepted),
            authenticated: g(&self.authenticated),
            requests: g(&self.requests),
            refused_malformed: g(&self.refused_malformed),
            refused_auth: g(&self.refused_auth),
            refused_oversize: g(&self.refused_oversize),
            refused_timeout: g(&self.refused_timeout),
            refused_busy: g(&self.refused_busy),
        }
    }
}

/// A request in a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum PeerRequest {
    /// Who are you?
    Status,
    /// Your configuration: revision, manifest, local modifications.
    ConfigStatus,
    /// Bytes of a file of your cluster directory from `offset` (at most
    /// [`super::confsync::CHUNK`]).
    GetFile {
        /// Relative path in the cluster directory.
        path: String,
        /// Where to start.
        offset: u64,
    },
    /// A sync begins: this is the sender's whole directory; answer with
    /// the files you need.
    SyncBegin {
        /// The sender's serial.
        from: String,
        /// The revision both will have after it.
        revision: u64,
        /// The sender's manifest.
        files: Vec<super::files::FileEntry>,
        /// Replace local modifications of the receiver.
        force: bool,
        /// A file group (F15) instead of the configuration: no revision,
        /// no validation, the active member's files win.
        #[serde(default)]
        group: Option<String>,
    },
    /// The manifest of a file group (F15).
    GroupStatus {
        /// The group.
        name: String,
    },
    /// Bytes of a wanted file (hex), in order.
    SyncPut {
        /// Relative path.
        path: String,
        /// Where these bytes go.
        offset: u64,
        /// The bytes, hex.
        data: String,
    },
    /// All sent: check, validate and apply.
    SyncCommit,
    /// A round trip (join: the link's latency).
    Ping {
        /// Echoed.
        t: u64,
    },
    /// A firewall asks to join (a join session only).
    JoinRequest {
        /// What it says of itself.
        ask: super::join::JoinAsk,
    },
    /// Bytes of a file of the directory a joiner gets.
    JoinFile {
        /// Relative path.
        path: String,
        /// Where to start.
        offset: u64,
    },
    /// The joiner has every file and validated them: record it.
    JoinCommit,
    /// The joiner gives up (what it found wrong).
    JoinAbort {
        /// Why.
        reason: String,
    },
    /// A key change (F8), step 1: accept this new pre-shared key too (the
    /// session is encrypted; the key never travels otherwise).
    KeyStage {
        /// The new key.
        psk: tandem_config::Secret,
    },
    /// Step 3: send under the staged key (the cluster file carries it).
    KeyCommit,
    /// The change is given up: forget the staged key.
    KeyAbort,
    /// The sender is going down (a stop, a restart): what follows on the
    /// HA links is expected.
    Leaving {
        /// Why, in words.
        reason: String,
    },
    /// What you say of yourself that your heartbeats do not carry: when
    /// you took your role, a transfer running, your view of the links.
    MemberStatus,
    /// An update package follows (`tandemctl system update --target
    /// remote`): its size and SHA-256 (hex).
    PackageBegin {
        /// Bytes.
        size: u64,
        /// SHA-256 of the whole package, hex.
        sha256: String,
    },
    /// Bytes of the package (hex), in order.
    PackagePut {
        /// Where these bytes go.
        offset: u64,
        /// The bytes, hex.
        data: String,
    },
    /// All sent: check the package, install it and restart into it.
    PackageCommit,
    /// `system tpm pcrseal serial=passive` run on the other member: reseal
    /// this member's cluster key with the TPM password.
    TpmPcrseal {
        /// The TPM password of this member's TPM.
        password: tandem_config::Secret,
    },
}

/// An answer in a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PeerAnswer {
    /// The member's identity and version.
    Status(IdentityReport),
    /// The member's configuration.
    ConfigStatus(super::confsync::ConfigStatus),
    /// Answer to [`PeerRequest::MemberStatus`].
    MemberStatus(crate::api::MemberStatusReport),
    /// Answer to [`PeerRequest::PackageCommit`]: installed, restarting.
    PackageInstalled(crate::update::Installed),
    /// Answer to [`PeerRequest::TpmPcrseal`]: what was resealed.
    Resealed {
        /// In words.
        message: String,
    },
    /// Bytes of a file.
    FileChunk {
        /// The file's whole size.
        size: u64,
        /// These bytes, hex.
        data: String,
    },
    /// The files the receiver of a sync needs.
    SyncWant {
        /// Relative paths.
        paths: Vec<String>,
    },
    /// A chunk is stored (or an abandoned join noted).
    SyncStored,
    /// A file group's manifest.
    GroupFiles {
        /// Its files.
        files: Vec<super::files::FileEntry>,
    },
    /// Answer to a ping.
    Pong {
        /// The ping's.
        t: u64,
    },
    /// The member accepts the joiner: its slot, the directory it gets.
    JoinAccepted {
        /// The joiner's slot.
        slot: u8,
        /// The revision both will have.
        revision: u64,
        /// The manifest of the directory the joiner gets.
        files: Vec<super::files::FileEntry>,
        /// What the joiner should know (a firmware difference).
        warnings: Vec<String>,
    },
    /// The member lists the joiner now.
    JoinCommitted {
        /// The revision in force.
        revision: u64,
    },
    /// The sync is applied.
    SyncApplied {
        /// The revision now in force.
        revision: u64,
        /// What the receiver did (policy reloaded, what waits for a
        /// restart).
        effects: Vec<String>,
    },
    /// Where a key change stands on the member now (`staged`,
    /// `committed`, `steady`).
    KeyStep {
        /// The phase.
        phase: String,
    },
    /// A notice was taken.
    Noted,
    /// The request was refused.
    Refused {
        /// Why.
        reason: String,
    },
}

/// The running service.
pub struct PeerService {
    _thread: crate::background::Background,
    /// What it counts.
    pub counters: Arc<PeerCounters>,
    /// Where it listens.
    pub listening: Vec<SocketAddr>,
    /// What it answers to [`PeerRequest::MemberStatus`]: the control
    /// thread publishes it (with `try_lock`, never waiting).
    pub status: Arc<std::sync::Mutex<crate::api::MemberStatusReport>>,
}

enum Step {
    Hello,
    Proof,
    Open(Box<Session>),
}

struct Conn {
    stream: MioStream,
    from: SocketAddr,
    reader: FrameReader,
    hs: ServerHandshake,
    step: Step,
    deadline: Instant,
    /// A configuration sync being received on this connection.
    receiving: Option<super::confsync::Receiving>,
    /// Why the client connects, once its hello is in.
    purpose: Option<Purpose>,
    /// The serial its hello gave.
    serial: String,
    /// A join being served on this connection.
    joining: Option<super::join::Joining>,
    /// An update package being received on this connection.
    package: Option<crate::update::Incoming>,
}

/// Why a connection ends, for the counters and the log.
enum End {
    Closed,
    Malformed(String),
    Auth(String),
    Oversize(String),
    Timeout,
}

impl PeerService {
    /// Listens on `addrs` (the HA addresses, port [`PORT`]) for the
    /// members of the cluster whose keys are `keys`, answering as
    /// `identity`. Fails if no address can be bound.
    pub fn start(
        addrs: &[SocketAddr],
        keys: Arc<KeyRing>,
        identity: IdentityReport,
        conf: Option<Arc<ConfSync>>,
        log: EventLog,
    ) -> io::Result<PeerService> {
        let poll = Poll::new()?;
        let mut listeners = Vec::new();
        let mut listening = Vec::new();
        for (i, a) in addrs.iter().enumerate() {
            match TcpListener::bind(*a) {
                Ok(mut l) => {
                    poll.registry()
                        .register(&mut l, Token(i), Interest::READABLE)?;
                    listening.push(l.local_addr().unwrap_or(*a));
                    listeners.push(l);
                }
                Err(e) => log.event(
                    "HA",
                    format_args!("members' service: cannot listen on {a}: {e}"),
                ),
            }
        }
        if listeners.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                "no HA address to listen on for the members' service (TCP 1300)",
            ));
        }
        let counters = Arc::new(PeerCounters::default());
        let status = Arc::new(std::sync::Mutex::new(
            crate::api::MemberStatusReport::default(),
        ));
        let (c, st) = (counters.clone(), status.clone());
        let local = Local {
            identity,
            status: st,
        };
        let thread = crate::background::Background::spawn("tandem-peer", move |stop| {
            serve(poll, listeners, keys, local, conf, log, stop, c);
        })?;
        Ok(PeerService {
            _thread: thread,
            counters,
            listening,
            status,
        })
    }
}

const CONN_BASE: usize = 16;

/// What the service says of this member.
struct Local {
    identity: IdentityReport,
    status: Arc<std::sync::Mutex<crate::api::MemberStatusReport>>,
}

#[allow(clippy::needless_pass_by_value, clippy::too_many_arguments)]
fn serve(
    mut poll: Poll,
    listeners: Vec<TcpListener>,
    keys: Arc<KeyRing>,
    local: Local,
    conf: Option<Arc<ConfSync>>,
    log: EventLog,
    stop: &AtomicBool,
    counters: Arc<PeerCounters>,
) {
    let rng = SystemRandom::new();
    let mut events = Events::with_capacity(64);
    let mut conns: HashMap<usize, Conn> = HashMap::new();
    let mut next_token = CONN_BASE;
    // (source address, reason) -> when it was last logged.
    let mut logged: HashMap<(IpAddr, &'static str), Instant> = HashMap::new();
    let mut buf = vec![0u8; 16 * 1024];
    // Listeners that may hold more connections than one turn accepted:
    // their readiness is edge-triggered, so they are served again at once.
    let mut backlog: Vec<usize> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let wait = if backlog.is_empty() {
            Duration::from_millis(100)
        } else {
            Duration::ZERO
        };
        if poll.poll(&mut events, Some(wait)).is_err() {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        let now = Instant::now();
        let mut ready: Vec<usize> = Vec::new();
        let mut listening: Vec<usize> = std::mem::take(&mut backlog);
        for ev in &events {
            let t = ev.token().0;
            if t < CONN_BASE {
                listening.push(t);
            } else {
                ready.push(t);
            }
        }
        listening.sort_unstable();
        listening.dedup();
        for t in listening {
            let Some(l) = listeners.get(t) else { continue };
            // Every waiting connection (bounded per turn).
            for n in 0..=64 {
                if n == 64 {
                    backlog.push(t);
                    break;
                }
                let Ok((mut stream, from)) = l.accept() else {
                    break;
                };
                counters.accepted.fetch_add(1, Ordering::Relaxed);
                if conns.len() >= MAX_CONNECTIONS {
                    counters.refused_busy.fetch_add(1, Ordering::Relaxed);
                    let _ = stream.write(&preauth_frame(&refusal(&format!(
                        "busy: {MAX_CONNECTIONS} connections open, try again later"
                    ))));
                    note(
                        &log,
                        &mut logged,
                        from,
                        "busy",
                        "too many connections at once",
                    );
                    continue;
                }
                let mut nonce = [0u8; NONCE_LEN];
                if rng.fill(&mut nonce).is_err() {
                    continue;
                }
                let token = next_token;
                next_token = next_token.wrapping_add(1).max(CONN_BASE);
                if poll
                    .registry()
                    .register(&mut stream, Token(token), Interest::READABLE)
                    .is_err()
                {
                    continue;
                }
                conns.insert(
                    token,
                    Conn {
                        stream,
                        from,
                        reader: FrameReader::preauth(),
                        hs: {
                            // During a key change a member proving either
                            // key is served (under the key it proved).
                            let set = keys.get();
                            let hs = ServerHandshake::new(
                                set.current.control().as_bytes(),
                                set.current.cluster_id(),
                                &local.identity.serial,
                                nonce,
                            );
                            match &set.other {
                                Some(o) => hs.with_alt_control(o.control().as_bytes()),
                                None => hs,
                            }
                        },
                        step: Step::Hello,
                        deadline: now + HANDSHAKE_TIME,
                        receiving: None,
                        purpose: None,
                        serial: String::new(),
                        joining: None,
                        package: None,
                    },
                );
            }
        }
        let mut ended: Vec<(usize, End)> = Vec::new();
        for t in ready {
            let Some(c) = conns.get_mut(&t) else { continue };
            if let Some(end) =
                read_and_serve(c, &mut buf, &local, conf.as_ref(), &keys, &counters, &log)
            {
                ended.push((t, end));
            }
        }
        for (t, c) in &conns {
            if now >= c.deadline && !ended.iter().any(|(e, _)| e == t) {
                ended.push((*t, End::Timeout));
            }
        }
        for (t, end) in ended {
            let Some(mut c) = conns.remove(&t) else {
                continue;
            };
            let _ = poll.registry().deregister(&mut c.stream);
            let (counter, key, why) = match &end {
                End::Closed => continue,
                End::Malformed(w) => (&counters.refused_malformed, "malformed", w.clone()),
                End::Auth(w) => (&counters.refused_auth, "auth", w.clone()),
                End::Oversize(w) => (&counters.refused_oversize, "oversize", w.clone()),
                End::Timeout => (
                    &counters.refused_timeout,
                    "timeout",
                    match c.step {
                        Step::Open(_) => format!("idle for {} s", IDLE_TIME.as_secs()),
                        _ => format!(
                            "no complete handshake within {} s",
                            HANDSHAKE_TIME.as_secs()
                        ),
                    },
                ),
            };
            counter.fetch_add(1, Ordering::Relaxed);
            if !matches!(c.step, Step::Open(_)) {
                let _ = c.stream.write(&preauth_frame(&refusal(&why)));
            }
            note(&log, &mut logged, c.from, key, &why);
        }
    }
}

/// Writes all of `buf` on a non-blocking stream, waiting (1 ms at a time,
/// 2 s at most) when the socket's buffer is full: a 64 KiB frame may not
/// fit at once. Only this service's thread waits.
fn write_all_bounded(stream: &mut MioStream, mut buf: &[u8]) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(2);
    while !buf.is_empty() {
        match stream.write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(io::ErrorKind::TimedOut.into());
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Logs a refusal, at most once per source and reason every 10 s.
fn note(
    log: &EventLog,
    logged: &mut HashMap<(IpAddr, &'static str), Instant>,
    from: SocketAddr,
    key: &'static str,
    why: &str,
) {
    let now = Instant::now();
    let k = (from.ip(), key);
    if logged
        .get(&k)
        .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(10))
    {
        return;
    }
    logged.insert(k, now);
    if logged.len() > 1024 {
        logged.retain(|_, t| now.duration_since(*t) < Duration::from_secs(10));
    }
    log.event(
        "HA",
        format_args!("members' service (TCP 1300): refused {from}: {why}"),
    );
}

/// Reads what `c` sent and answers it; `Some` when the connection ends.
fn read_and_serve(
    c: &mut Conn,
    buf: &mut [u8],
    local: &Local,
    conf: Option<&Arc<ConfSync>>,
    keys: &KeyRing,
    counters: &PeerCounters,
    log: &EventLog,
) -> Option<End> {
    loop {
        match c.stream.read(buf) {
            Ok(0) => return Some(End::Closed),
            Ok(n) => c.reader.push(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Some(End::Closed),
        }
        // A client that sends more than a frame's worth without a whole
        // frame is refused by the reader's limit below.
        if c.reader.pending() > super::handshake::MAX_SEALED + 4 {
            break;
        }
    }
    loop {
        let frame = match c.reader.next_frame() {
            Ok(Some(f)) => f,
            Ok(None) => return None,
            Err(e @ FrameError::TooLong { .. }) => return Some(End::Oversize(e.to_string())),
            Err(e) => return Some(End::Malformed(e.to_string())),
        };
        match std::mem::replace(&mut c.step, Step::Hello) {
            Step::Hello => match c.hs.on_hello(&frame) {
                Ok((ch, sh)) => {
                    c.purpose = Some(ch.purpose);
                    c.serial = ch.serial.clone();
                    if write_all_bounded(&mut c.stream, &preauth_frame(&sh)).is_err() {
                        return Some(End::Closed);
                    }
                    c.step = Step::Proof;
                }
                Err(e) => return Some(End::Malformed(e.to_string())),
            },
            Step::Proof => match c.hs.on_proof(&frame) {
                Ok((proof, session)) => {
                    if write_all_bounded(&mut c.stream, &preauth_frame(&proof)).is_err() {
                        return Some(End::Closed);
                    }
                    counters.authenticated.fetch_add(1, Ordering::Relaxed);
                    c.reader.switch_to_sealed();
                    c.deadline = Instant::now() + IDLE_TIME;
                    c.step = Step::Open(Box::new(session));
                }
                Err(e @ HandshakeError::ClientProof) => return Some(End::Auth(e.to_string())),
                Err(e) => return Some(End::Malformed(e.to_string())),
            },
            Step::Open(mut session) => {
                let Ok(body) = session.open(&frame) else {
                    return Some(End::Malformed(FrameError::Unauthentic.to_string()));
                };
                let mut unknown = false;
                let answer = match serde_json::from_slice::<PeerRequest>(&body) {
                    Ok(PeerRequest::Status) => {
                        counters.requests.fetch_add(1, Ordering::Relaxed);
                        PeerAnswer::Status(local.identity.clone())
                    }
                    Ok(PeerRequest::MemberStatus) => {
                        counters.requests.fetch_add(1, Ordering::Relaxed);
                        PeerAnswer::MemberStatus(
                            local
                                .status
                                .lock()
                                .map(|g| g.clone())
                                .unwrap_or_else(|e| e.into_inner().clone()),
                        )
                    }
                    Ok(PeerRequest::Leaving { reason }) if c.purpose == Some(Purpose::Member) => {
                        counters.requests.fetch_add(1, Ordering::Relaxed);
                        PEER_LEAVING_MS.store(super::confsync::now_unix_ms(), Ordering::Relaxed);
                        log.event(
                            "HA",
                            format_args!(
                                "the peer {} announces it is going down: {reason}",
                                c.serial
                            ),
                        );
                        PeerAnswer::Noted
                    }
                    Ok(
                        request @ (PeerRequest::PackageBegin { .. }
                        | PeerRequest::PackagePut { .. }
                        | PeerRequest::PackageCommit),
                    ) => {
                        counters.requests.fetch_add(1, Ordering::Relaxed);
                        match conf {
                            // Only the other member, proving the key and
                            // naming itself, may update this one.
                            Some(conf)
                                if c.purpose == Some(Purpose::Member) && conf.is_peer(&c.serial) =>
                            {
                                crate::update::receive(request, &mut c.package, &c.serial, log)
                            }
                            _ => PeerAnswer::Refused {
                                reason: format!(
                                    "{} is not the other member of this cluster: packages come from it only",
                                    c.serial
                                ),
                            },
                        }
                    }
                    Ok(PeerRequest::TpmPcrseal { password }) => {
                        counters.requests.fetch_add(1, Ordering::Relaxed);
                        match conf {
                            Some(conf)
                                if c.purpose == Some(Purpose::Member) && conf.is_peer(&c.serial) =>
                            {
                                match crate::keystore::pcrseal(password.expose()) {
                                    Ok(message) => {
                                        log.event(
                                            "SYSTEM",
                                            format_args!("TPM pcrseal asked by {}: {message}", c.serial),
                                        );
                                        PeerAnswer::Resealed { message }
                                    }
                                    Err(reason) => {
                                        log.event(
                                            "SYSTEM",
                                            format_args!("TPM pcrseal asked by {} refused: {reason}", c.serial),
                                        );
                                        PeerAnswer::Refused { reason }
                                    }
                                }
                            }
                            _ => PeerAnswer::Refused {
                                reason: format!(
                                    "{} is not the other member of this cluster: only it may reseal this member's key",
                                    c.serial
                                ),
                            },
                        }
                    }
                    Ok(PeerRequest::JoinFile { .. })
                        if TEST_CUT_JOIN.swap(false, Ordering::Relaxed) =>
                    {
                        return Some(End::Closed);
                    }
                    Ok(request) => {
                        counters.requests.fetch_add(1, Ordering::Relaxed);
                        if matches!(request, PeerRequest::Ping { .. }) {
                            let ms = TEST_PONG_DELAY_MS.load(Ordering::Relaxed);
                            if ms > 0 {
                                std::thread::sleep(Duration::from_millis(ms));
                            }
                        }
                        let join = matches!(
                            request,
                            PeerRequest::Ping { .. }
                                | PeerRequest::JoinRequest { .. }
                                | PeerRequest::JoinFile { .. }
                                | PeerRequest::JoinCommit
                                | PeerRequest::JoinAbort { .. }
                        );
                        match (conf, c.purpose) {
                            (None, _) => PeerAnswer::Refused {
                                reason: "this member's configuration is one file, not a cluster directory: it cannot synchronize or take a joiner".into(),
                            },
                            (Some(conf), Some(Purpose::Join)) if join => conf.handle_join(
                                request,
                                &mut c.joining,
                                c.from,
                                &local.identity.firmware,
                            ),
                            (Some(_), Some(Purpose::Join)) => PeerAnswer::Refused {
                                reason: "a join session takes join requests only".into(),
                            },
                            (Some(_), _) if join && !matches!(request, PeerRequest::Ping { .. }) => {
                                PeerAnswer::Refused {
                                    reason: "join requests need a join session".into(),
                                }
                            }
                            (Some(_), _) if matches!(request, PeerRequest::Ping { .. }) => {
                                match request {
                                    PeerRequest::Ping { t } => PeerAnswer::Pong { t },
                                    _ => unreachable!(),
                                }
                            }
                            // Configuration requests come from the other
                            // member only, naming itself.
                            (Some(conf), _) if !conf.is_peer(&c.serial) => PeerAnswer::Refused {
                                reason: format!(
                                    "{} is not the other member of this cluster: configuration requests come from it only",
                                    c.serial
                                ),
                            },
                            (Some(_), _)
                                if matches!(&request, PeerRequest::SyncBegin { from, .. } if *from != c.serial) =>
                            {
                                PeerAnswer::Refused {
                                    reason: "a sync names another sender than the session's member".into(),
                                }
                            }
                            (Some(conf), _)
                                if matches!(
                                    request,
                                    PeerRequest::KeyStage { .. }
                                        | PeerRequest::KeyCommit
                                        | PeerRequest::KeyAbort
                                ) =>
                            {
                                super::keychange::handle(conf, keys, request)
                            }
                            (Some(conf), _) => conf.handle(request, &mut c.receiving),
                        }
                    }
                    Err(e) => {
                        unknown = true;
                        PeerAnswer::Refused {
                            reason: format!("not a request of the members' service: {e}"),
                        }
                    }
                };
                let out = serde_json::to_vec(&answer)
                    .ok()
                    .and_then(|b| session.seal(&b).ok());
                match out {
                    Some(f) if write_all_bounded(&mut c.stream, &f).is_ok() => {}
                    _ => return Some(End::Closed),
                }
                if unknown {
                    return Some(End::Malformed("a request it does not know".into()));
                }
                c.deadline = Instant::now() + IDLE_TIME;
                c.step = Step::Open(session);
            }
        }
    }
}

/// Why asking the peer failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// No TCP connection.
    #[error("no connection to {addr}: {source}; check the HA link and that the member runs")]
    Connect {
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// The connection broke or timed out.
    #[error("{addr}: {source}")]
    Io {
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// The handshake failed.
    #[error("{addr}: {source}")]
    Handshake {
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: HandshakeError,
    },
    /// The answer was not one.
    #[error("{addr}: {source}")]
    Answer {
        /// Where.
        addr: SocketAddr,
        /// What.
        #[source]
        source: FrameError,
    },
    /// The member refused the request.
    #[error("{addr} refused: {reason}")]
    Refused {
        /// Where.
        addr: SocketAddr,
        /// Why, in its words.
        reason: String,
    },
    /// The member answered with something else.
    #[error("{addr}: unexpected answer: {what}")]
    Unexpected {
        /// Where.
        addr: SocketAddr,
        /// What it said.
        what: String,
    },
}

fn read_frame(
    stream: &mut TcpStream,
    reader: &mut FrameReader,
    addr: SocketAddr,
) -> Result<Vec<u8>, PeerError> {
    let mut buf = [0u8; 4096];
    loop {
        match reader.next_frame() {
            Ok(Some(f)) => return Ok(f),
            Ok(None) => {}
            Err(source) => return Err(PeerError::Answer { addr, source }),
        }
        match stream.read(&mut buf) {
            Ok(0) => {
                return Err(PeerError::Io {
                    addr,
                    source: io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the member closed the connection",
                    ),
                })
            }
            Ok(n) => reader.push(&buf[..n]),
            Err(source) => return Err(PeerError::Io { addr, source }),
        }
    }
}

/// An authenticated session with the other member's service.
pub struct PeerClient {
    stream: TcpStream,
    reader: FrameReader,
    session: Session,
    addr: SocketAddr,
}

impl PeerClient {
    /// Connects to the member at `addr` as member `serial` holding the
    /// cluster's `keys`, both proving the key, within `timeout` per step.
    pub fn connect(
        addr: SocketAddr,
        keys: &HaKeys,
        serial: &str,
        timeout: Duration,
    ) -> Result<PeerClient, PeerError> {
        let cluster = keys.cluster_id();
        let control = keys.control().as_bytes().to_vec();
        let (client, _, _) =
            PeerClient::connect_with(addr, serial, Purpose::Member, timeout, |id| {
                if id == cluster {
                    Ok(control)
                } else {
                    Err(format!(
                        "the member serves cluster {id}, this firewall is in cluster {cluster}"
                    ))
                }
            })?;
        Ok(client)
    }

    /// Connects for `purpose`; `control_key` gives the control key of the
    /// cluster the server says it serves (a joiner derives it then).
    /// Returns the session, the server's serial and its cluster id.
    pub fn connect_with<K: AsRef<[u8]>>(
        addr: SocketAddr,
        serial: &str,
        purpose: Purpose,
        timeout: Duration,
        control_key: impl FnOnce(u32) -> Result<K, String>,
    ) -> Result<(PeerClient, String, u32), PeerError> {
        let io = |source| PeerError::Io { addr, source };
        let hs = |source| PeerError::Handshake { addr, source };
        let mut stream = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|source| PeerError::Connect { addr, source })?;
        stream.set_read_timeout(Some(timeout)).map_err(io)?;
        stream.set_write_timeout(Some(timeout)).map_err(io)?;
        let _ = stream.set_nodelay(true);
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| io(io::Error::other("no random numbers")))?;
        let (mut c, hello) = ClientHandshake::new(purpose, serial, nonce);
        let mut reader = FrameReader::preauth();
        stream.write_all(&preauth_frame(&hello)).map_err(io)?;
        let sh = c
            .on_hello(&read_frame(&mut stream, &mut reader, addr)?)
            .map_err(hs)?;
        let key = control_key(sh.cluster_id).map_err(|w| hs(HandshakeError::Refused(w)))?;
        let proof = c.prove(key.as_ref()).map_err(hs)?;
        stream.write_all(&preauth_frame(&proof)).map_err(io)?;
        let session = c
            .on_proof(&read_frame(&mut stream, &mut reader, addr)?)
            .map_err(hs)?;
        reader.switch_to_sealed();
        Ok((
            PeerClient {
                stream,
                reader,
                session,
                addr,
            },
            sh.serial,
            sh.cluster_id,
        ))
    }

    /// Where it is connected.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits at most `t` for each answer from now on.
    pub fn set_timeout(&mut self, t: Duration) {
        let _ = self.stream.set_read_timeout(Some(t));
    }

    /// Sends `request` and reads the answer; a refusal is an error.
    pub fn ask(&mut self, request: &PeerRequest) -> Result<PeerAnswer, PeerError> {
        let addr = self.addr;
        let req = serde_json::to_vec(request).unwrap_or_default();
        let frame = self
            .session
            .seal(&req)
            .map_err(|source| PeerError::Answer { addr, source })?;
        self.stream
            .write_all(&frame)
            .map_err(|source| PeerError::Io { addr, source })?;
        let answer = read_frame(&mut self.stream, &mut self.reader, addr)?;
        let body = self
            .session
            .open(&answer)
            .map_err(|source| PeerError::Answer { addr, source })?;
        match serde_json::from_slice::<PeerAnswer>(&body) {
            Ok(PeerAnswer::Refused { reason }) => Err(PeerError::Refused { addr, reason }),
            Ok(a) => Ok(a),
            Err(e) => Err(PeerError::Unexpected {
                addr,
                what: e.to_string(),
            }),
        }
    }
}

/// What to say of an answer that is not the one a step expects.
pub fn unexpected(answer: &PeerAnswer) -> String {
    let kind = serde_json::to_value(answer)
        .ok()
        .and_then(|v| v["type"].as_str().map(str::to_owned))
        .unwrap_or_default();
    format!(
        "the other firewall answered {kind:?} where this step expects another answer: run the same tandem version on both (tandemctl hapeer shows its firmware)"
    )
}

/// Tells the peer this member is going down (best effort, within
/// `timeout` per HA link); false if no link answered.
pub fn announce_leaving(
    links: &[(String, SocketAddr)],
    keys: &HaKeys,
    serial: &str,
    reason: &str,
    timeout: Duration,
) -> bool {
    links.iter().any(|(_, addr)| {
        PeerClient::connect(*addr, keys, serial, timeout).is_ok_and(|mut c| {
            matches!(
                c.ask(&PeerRequest::Leaving {
                    reason: reason.to_owned()
                }),
                Ok(PeerAnswer::Noted)
            )
        })
    })
}

/// Asks the member at `addr` who it is, as member `serial` holding the
/// cluster's `keys`, within `timeout` per step.
pub fn query_status(
    addr: SocketAddr,
    keys: &HaKeys,
    serial: &str,
    timeout: Duration,
) -> Result<IdentityReport, PeerError> {
    let mut c = PeerClient::connect(addr, keys, serial, timeout)?;
    match c.ask(&PeerRequest::Status)? {
        PeerAnswer::Status(id) => Ok(id),
        other => Err(PeerError::Unexpected {
            addr,
            what: unexpected(&other),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_dataplane::hakeys::KdfParams;

    const CHEAP: KdfParams = KdfParams {
        memory_kib: 64,
        passes: 1,
        lanes: 1,
    };

    fn keys(psk: &[u8], id: u32) -> Arc<HaKeys> {
        Arc::new(HaKeys::derive_with(psk, id, CHEAP).unwrap())
    }

    fn identity(serial: &str) -> IdentityReport {
        IdentityReport {
            file: "identity.ron".into(),
            serial: serial.into(),
            model: Some("TD-LAB".into()),
            licence: Some("master".into()),
            ports: Some(2),
            firmware: "0.1.0".into(),
        }
    }

    fn service(psk: &[u8]) -> (PeerService, EventLog) {
        let log = EventLog::open("fw1", None, 0, 0).unwrap();
        let s = PeerService::start(
            &["127.0.0.1:0".parse().unwrap()],
            KeyRing::new(keys(psk, 7)),
            identity("TDLAB0001"),
            None,
            log.clone(),
        )
        .unwrap();
        (s, log)
    }

    fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
        let t = Instant::now();
        while !f() {
            assert!(t.elapsed() < Duration::from_secs(5), "{what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn a_member_with_the_key_gets_the_identity_and_one_without_is_refused() {
        let (s, log) = service(b"Lab-Cluster-Key-2026");
        let addr = s.listening[0];
        let id = query_status(
            addr,
            &keys(b"Lab-Cluster-Key-2026", 7),
            "TDLAB0002",
            Duration::from_secs(2),
        )
        .unwrap();
        assert_eq!(id, identity("TDLAB0001"));
        let err = query_status(
            addr,
            &keys(b"Another-Key-2026!", 7),
            "TDLAB0002",
            Duration::from_secs(2),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("the pre-shared key does not match"), "{err}");
        // Another cluster: the client sees it in the hello and stops.
        let err = query_status(
            addr,
            &keys(b"Lab-Cluster-Key-2026", 8),
            "TDLAB0002",
            Duration::from_secs(2),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("serves cluster 7"), "{err}");
        let c = &s.counters;
        wait_for("counted", || c.refused_auth.load(Ordering::Relaxed) == 1);
        let r = c.report(&s.listening);
        assert_eq!(
            (r.authenticated, r.requests, r.refused_auth),
            (1, 1, 1),
            "{r:?}"
        );
        wait_for("logged", || {
            log.tail(10)
                .iter()
                .any(|l| l.contains("refused 127.0.0.1:") && l.contains("pre-shared key"))
        });
    }

    #[test]
    fn garbage_oversized_frames_and_silence_are_refused_and_counted() {
        let (s, _log) = service(b"Lab-Cluster-Key-2026");
        let addr = s.listening[0];
        let talk = |bytes: &[u8]| {
            let mut t = TcpStream::connect(addr).unwrap();
            t.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
            t.write_all(bytes).unwrap();
            let mut out = Vec::new();
            let _ = t.read_to_end(&mut out);
            out
        };
        let answer = talk(b"\x00\x10GET / HTTP/1.1\r\n");
        assert!(
            String::from_utf8_lossy(&answer).contains("not a tandem member's handshake"),
            "{answer:?}"
        );
        let answer = talk(&[0xff, 0xff, 1, 2, 3]);
        assert!(
            String::from_utf8_lossy(&answer).contains("at most 256"),
            "{answer:?}"
        );
        // Half a frame, then nothing: refused when the handshake time is up.
        let t0 = Instant::now();
        let answer = talk(&[0x00, 0x40, b'T', b'1']);
        assert!(t0.elapsed() >= HANDSHAKE_TIME - Duration::from_millis(200));
        assert!(
            String::from_utf8_lossy(&answer).contains("no complete handshake"),
            "{answer:?}"
        );
        let r = s.counters.report(&s.listening);
        assert_eq!(
            (
                r.refused_malformed,
                r.refused_oversize,
                r.refused_timeout,
                r.authenticated
            ),
            (1, 1, 1, 0),
            "{r:?}"
        );
    }

    #[test]
    fn more_than_the_connection_limit_are_refused_busy() {
        let (s, _log) = service(b"Lab-Cluster-Key-2026");
        let addr = s.listening[0];
        let held: Vec<TcpStream> = (0..MAX_CONNECTIONS)
            .map(|_| TcpStream::connect(addr).unwrap())
            .collect();
        wait_for("all accepted", || {
            s.counters.accepted.load(Ordering::Relaxed) == MAX_CONNECTIONS as u64
        });
        let mut extra = TcpStream::connect(addr).unwrap();
        extra
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut out = Vec::new();
        let _ = extra.read_to_end(&mut out);
        assert!(String::from_utf8_lossy(&out).contains("busy"), "{out:?}");
        assert_eq!(s.counters.refused_busy.load(Ordering::Relaxed), 1);
        drop(held);
        // Room again once they are gone.
        wait_for("served again", || {
            query_status(
                addr,
                &keys(b"Lab-Cluster-Key-2026", 7),
                "TDLAB0002",
                Duration::from_secs(2),
            )
            .is_ok()
        });
    }
}

#[cfg(test)]
mod sync_tests {
    //! The configuration sync through the real service on loopback: two
    //! cluster directories, one member sending, the other receiving.
    use super::*;
    use crate::peer::confsync::{self, ConfSync};
    use crate::peer::files;
    use std::path::PathBuf;
    use tandem_dataplane::hakeys::{KdfParams, KeyPhase};

    struct Tmp(PathBuf);
    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn keys() -> Arc<HaKeys> {
        let cheap = KdfParams {
            memory_kib: 64,
            passes: 1,
            lanes: 1,
        };
        Arc::new(HaKeys::derive_with(b"Lab-Cluster-Key-2026", 7, cheap).unwrap())
    }

    /// A member's sync of `root/<name>/cluster` whose validation refuses
    /// a policy containing "INVALID" and whose apply says what changed.
    fn member(root: &std::path::Path, name: &str, serial: &str, policy: &str) -> Arc<ConfSync> {
        let dir = root.join(name).join("cluster");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cluster.ron"), super::super::TEST_CLUSTER_RON).unwrap();
        std::fs::write(dir.join("policy.ron"), policy).unwrap();
        ConfSync::new(
            serial,
            &dir,
            &root.join(name).join("state.json"),
            None,
            crate::peer::confsync::Hooks {
                validate: Box::new(|staged: &std::path::Path| {
                    let p = std::fs::read_to_string(staged.join("policy.ron")).unwrap_or_default();
                    if p.contains("INVALID") {
                        Err("policy.ron: INVALID is not a rule".into())
                    } else {
                        Ok("valid".into())
                    }
                }),
                apply: Box::new(|changed: &[String]| {
                    vec![format!("changed {}", changed.join(","))]
                }),
                is_active: Box::new(|| false),
            },
            EventLog::open(name, None, 0, 0).unwrap(),
        )
        .unwrap()
    }

    fn setup(tag: &str) -> (Tmp, Arc<ConfSync>, Arc<ConfSync>, PeerService) {
        let (t, a, b, s, _) = setup_with_ring(tag);
        (t, a, b, s)
    }

    /// Member TDLAB0002 serving (its key ring too), TDLAB0001 asking.
    fn setup_with_ring(
        tag: &str,
    ) -> (Tmp, Arc<ConfSync>, Arc<ConfSync>, PeerService, Arc<KeyRing>) {
        let ring = KeyRing::new(keys());
        let root = std::env::temp_dir().join(format!("tandem-sync-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let a = member(&root, "fw1", "TDLAB0001", "policy v1\n");
        let b = member(&root, "fw2", "TDLAB0002", "policy v1\n");
        let service = PeerService::start(
            &["127.0.0.1:0".parse().unwrap()],
            ring.clone(),
            IdentityReport {
                file: "identity.ron".into(),
                serial: "TDLAB0002".into(),
                model: None,
                licence: None,
                ports: None,
                firmware: "0.1.0".into(),
            },
            Some(b.clone()),
            EventLog::open("fw2", None, 0, 0).unwrap(),
        )
        .unwrap();
        (Tmp(root), a, b, service, ring)
    }

    fn client(s: &PeerService) -> PeerClient {
        PeerClient::connect(s.listening[0], &keys(), "TDLAB0001", Duration::from_secs(2)).unwrap()
    }

    #[test]
    fn a_sync_sends_what_differs_and_both_end_identical() {
        let (_t, a, b, s) = setup("ok");
        std::fs::write(a.dir.join("policy.ron"), "policy v2\n").unwrap();
        assert!(a.status().unwrap().local_changes);
        let (lines, res) = confsync::send(&a, &mut client(&s), "HA-main", false);
        res.unwrap();
        assert!(
            lines.iter().any(|l| l.contains("1/1 policy.ron (10 B)")),
            "{lines:?}"
        );
        assert!(
            lines.iter().any(|l| l.contains("changed policy.ron")),
            "{lines:?}"
        );
        let (sa, sb) = (a.status().unwrap(), b.status().unwrap());
        assert_eq!(sa.digest, sb.digest);
        assert_eq!((sa.revision, sb.revision), (2, 2));
        assert!(!sa.local_changes && !sb.local_changes);
        assert_eq!(sb.last_sync_from, "TDLAB0001");
        let lines = confsync::compare(&a, &mut client(&s)).unwrap();
        assert_eq!(lines.len(), 2, "{lines:?}");
    }

    #[test]
    fn only_the_other_member_naming_itself_may_read_or_push_the_configuration() {
        let (_t, a, _b, s) = setup("who");
        let mut stranger =
            PeerClient::connect(s.listening[0], &keys(), "TDLAB0009", Duration::from_secs(2))
                .unwrap();
        let e = stranger
            .ask(&PeerRequest::ConfigStatus)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("TDLAB0009 is not the other member of this cluster"),
            "{e}"
        );
        let e = client(&s)
            .ask(&PeerRequest::SyncBegin {
                from: "TDLAB0009".into(),
                revision: 2,
                files: a.status().unwrap().files,
                force: false,
                group: None,
            })
            .unwrap_err()
            .to_string();
        assert!(e.contains("names another sender"), "{e}");
    }

    #[test]
    fn a_cut_sync_an_invalid_revision_and_bad_chunks_change_nothing() {
        let (_t, a, b, s) = setup("cut");
        let before = files::scan(&b.dir).unwrap();
        // Cut after half a file: the connection ends, nothing applied, no
        // staging left.
        std::fs::write(a.dir.join("policy.ron"), "policy v2, longer\n").unwrap();
        let st = a.status().unwrap();
        let mut c = client(&s);
        let want = c
            .ask(&PeerRequest::SyncBegin {
                from: "TDLAB0001".into(),
                revision: 2,
                files: st.files.clone(),
                force: false,
                group: None,
            })
            .unwrap();
        assert_eq!(
            want,
            PeerAnswer::SyncWant {
                paths: vec!["policy.ron".into()]
            }
        );
        c.ask(&PeerRequest::SyncPut {
            path: "policy.ron".into(),
            offset: 0,
            data: files::hex(b"policy"),
        })
        .unwrap();
        drop(c);
        let parent = b.dir.parent().unwrap().to_path_buf();
        let staged = || {
            std::fs::read_dir(&parent)
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .contains("staging")
                })
                .count()
        };
        let t = Instant::now();
        while staged() > 0 {
            assert!(t.elapsed() < Duration::from_secs(5), "the staging stays");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(files::scan(&b.dir).unwrap(), before);
        // Bytes that do not match the manifest: refused, the sync ends.
        let mut c = client(&s);
        c.ask(&PeerRequest::SyncBegin {
            from: "TDLAB0001".into(),
            revision: 2,
            files: st.files.clone(),
            force: false,
            group: None,
        })
        .unwrap();
        let e = c
            .ask(&PeerRequest::SyncPut {
                path: "policy.ron".into(),
                offset: 0,
                data: files::hex(b"policy v2, LONGER\n"),
            })
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("SHA-256") && e.contains("nothing was applied"),
            "{e}"
        );
        let e = c.ask(&PeerRequest::SyncCommit).unwrap_err().to_string();
        assert!(e.contains("no sync in progress"), "{e}");
        // A revision the receiver cannot run: refused whole.
        std::fs::write(a.dir.join("policy.ron"), "INVALID\n").unwrap();
        let (_, res) = confsync::send(&a, &mut client(&s), "HA-main", false);
        let e = res.unwrap_err();
        assert!(e.contains("would not run here: policy.ron: INVALID"), "{e}");
        assert_eq!(files::scan(&b.dir).unwrap(), before);
        // A receiver with local modifications refuses unless forced.
        std::fs::write(b.dir.join("policy.ron"), "edited on fw2\n").unwrap();
        std::fs::write(a.dir.join("policy.ron"), "policy v3\n").unwrap();
        let (_, res) = confsync::send(&a, &mut client(&s), "HA-main", false);
        assert!(res
            .unwrap_err()
            .contains("TDLAB0002 has local modifications"));
        let (_, res) = confsync::send(&a, &mut client(&s), "HA-main", true);
        res.unwrap();
        assert_eq!(
            std::fs::read_to_string(b.dir.join("policy.ron")).unwrap(),
            "policy v3\n"
        );
        // hadiff of a file neither has, and of a path outside.
        let e = confsync::diff(&a, &mut client(&s), "nothing.ron").unwrap_err();
        assert!(e.contains("in neither member's"), "{e}");
        let e = confsync::diff(&a, &mut client(&s), "../fw1/state.json").unwrap_err();
        assert!(e.contains("not a plain relative path"), "{e}");
    }

    const NEW_KEY: &str = "Rotated-Cluster-Key-2027";

    fn connect_to(
        s: &PeerService,
    ) -> impl Fn(&HaKeys) -> Result<(PeerClient, String), String> + '_ {
        |k: &HaKeys| {
            PeerClient::connect(s.listening[0], k, "TDLAB0001", Duration::from_secs(2))
                .map(|c| (c, "HA-main".to_string()))
                .map_err(|e| e.to_string())
        }
    }

    fn psk_of(c: &ConfSync) -> String {
        c.cluster_file().unwrap().ha.psk.expose().to_owned()
    }

    /// `ha set key` between two members: staged on both, the cluster file
    /// with the new key on both, committed on both; while the change is
    /// committed a member proving either key is served, once the old key
    /// is retired only the new one.
    #[test]
    fn a_key_change_reaches_both_members_and_the_old_key_is_refused_once_retired() {
        let (_t, a, b, s, ring_b) = setup_with_ring("key");
        let ring_a = KeyRing::new(keys());
        let psk = tandem_config::Secret::new(NEW_KEY);
        let (lines, res) =
            super::super::keychange::change(&a, &ring_a, &psk, connect_to(&s), Duration::ZERO);
        res.unwrap();
        let text = lines.join("\n");
        for step in [
            "(1/6) Key check",
            "(2/6) Key derivation",
            "(3/6) Stage",
            "(4/6) Stage and file",
            "(5/6) Commit",
            "(6/6) Retire",
        ] {
            assert!(text.contains(step), "{step}: {text}");
        }
        assert!(text.contains("accepts both keys"), "{text}");
        for (name, ring) in [("A", &ring_a), ("B", &ring_b)] {
            let set = ring.get();
            assert_eq!(set.phase, KeyPhase::Committed, "{name}");
            assert!(
                !set.current.same_as(&keys()),
                "{name} sends under the new key"
            );
            assert!(
                set.other.as_ref().unwrap().same_as(&keys()),
                "{name} still accepts the old"
            );
        }
        assert_eq!((psk_of(&a), psk_of(&b)), (NEW_KEY.into(), NEW_KEY.into()));
        let (sa, sb) = (a.status().unwrap(), b.status().unwrap());
        assert_eq!(sa.digest, sb.digest, "both cluster directories identical");
        // Both keys open a session while committed ...
        PeerClient::connect(s.listening[0], &keys(), "TDLAB0001", Duration::from_secs(2)).unwrap();
        let new = ring_b.current();
        PeerClient::connect(s.listening[0], &new, "TDLAB0001", Duration::from_secs(2)).unwrap();
        // ... only the new one once retired.
        assert!(ring_b.retire());
        let e = PeerClient::connect(s.listening[0], &keys(), "TDLAB0001", Duration::from_secs(2))
            .err()
            .expect("the old key is refused")
            .to_string();
        assert!(e.contains("key"), "{e}");
        PeerClient::connect(s.listening[0], &new, "TDLAB0001", Duration::from_secs(2)).unwrap();
        // A second change while this one is still committed here: refused.
        let (_, res) = super::super::keychange::change(
            &a,
            &ring_a,
            &tandem_config::Secret::new("Third-Cluster-Key-2028"),
            connect_to(&s),
            Duration::ZERO,
        );
        assert!(res.unwrap_err().contains("under way"));
    }

    /// A change the peer cannot take (it has local modifications, so the
    /// sync of the cluster file is refused) is undone on both members:
    /// the old key only, the cluster file as it was. A weak key changes
    /// nothing anywhere.
    #[test]
    fn a_key_change_that_fails_half_way_is_undone_on_both_members() {
        let (_t, a, b, s, ring_b) = setup_with_ring("keyundo");
        let ring_a = KeyRing::new(keys());
        let (_, res) = super::super::keychange::change(
            &a,
            &ring_a,
            &tandem_config::Secret::new("weak"),
            connect_to(&s),
            Duration::ZERO,
        );
        assert!(res.unwrap_err().contains("too weak"));
        std::fs::write(b.dir.join("policy.ron"), "policy changed on B\n").unwrap();
        let before = std::fs::read(a.dir.join("cluster.ron")).unwrap();
        let (lines, res) = super::super::keychange::change(
            &a,
            &ring_a,
            &tandem_config::Secret::new(NEW_KEY),
            connect_to(&s),
            Duration::ZERO,
        );
        let e = res.unwrap_err();
        assert!(e.contains("could not be sent to the peer"), "{e}");
        assert!(
            lines.iter().any(|l| l.contains("undone on both members")),
            "{lines:?}"
        );
        assert_eq!(std::fs::read(a.dir.join("cluster.ron")).unwrap(), before);
        for ring in [&ring_a, &ring_b] {
            let set = ring.get();
            assert_eq!(set.phase, KeyPhase::Steady);
            assert!(set.current.same_as(&keys()) && set.other.is_none());
        }
        assert_eq!(psk_of(&b), "Lab-Cluster-Key-2026");
    }
}
