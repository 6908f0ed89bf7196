//! The daemon's end of the local control socket.
//!
//! [`ControlSocket`] is a Unix-domain stream listener driven by a mio
//! [`Poll`](mio::Poll) that the caller owns (the API thread, see
//! [`crate::apiserver`]). It is a thin front end: it accepts a client,
//! checks it is root, reads one request line, parses it into a [`Request`]
//! and hands that to the caller's handler, writes the [`Response`] line
//! back and closes. It never touches dataplane state. The handler answers
//! at once, or later (work done on another thread): it returns `None` and
//! the caller passes the answer to [`ControlSocket::answer`] with the
//! client's [`ClientId`].
//!
//! Nothing here blocks: reads and writes are non-blocking and resume on the
//! next readiness event. At most [`MAX_CLIENTS`] clients are served at once
//! (more are answered "busy" and closed), and each one has
//! [`CLIENT_TIMEOUT`] to send its request, [`ANSWER_TIMEOUT`] for the
//! answer to be ready and [`CLIENT_TIMEOUT`] again to read it, enforced by
//! [`ControlSocket::poll_timeouts`].

use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Registry, Token};
use nix::errno::Errno;
use nix::sys::socket::{getsockopt, send, sockopt::PeerCredentials, MsgFlags};
use thiserror::Error;

use crate::api::{parse_request, ApiError, Request, Response, MAX_REQUEST_BYTES};

/// How many clients are served at the same time; more are told "busy".
pub const MAX_CLIENTS: usize = 16;

/// How long a client has to send its request, and then to read the answer.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long an answer given later (a table walk, a policy compilation) may
/// take before the client is told it timed out.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// How many consecutive tokens, from the base given to
/// [`ControlSocket::register`], the socket uses: the listener, then one per
/// client slot.
pub const TOKEN_SPAN: usize = 1 + MAX_CLIENTS;

/// The answer to a client that is not root.
pub const PERMISSION_DENIED: &str = "permission denied: the control socket is for root only";

const READ_CHUNK: usize = 4096;

/// Why the control socket could not be set up.
#[derive(Debug, Error)]
pub enum SocketError {
    /// The directory for the socket is missing and could not be created.
    #[error("cannot create the control socket directory {}: {source}. Check that its parent exists and is writable by root, or choose another socket path.", dir.display())]
    CreateDir {
        /// The directory.
        dir: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Another process is listening on the socket path.
    #[error("another tandemd is already running on {}: stop it first, or give this one another control socket path.", path.display())]
    AlreadyRunning {
        /// The socket path.
        path: PathBuf,
    },
    /// Something that is not a socket sits at the socket path.
    #[error("{} exists and is not a socket: remove it, or choose another control socket path.", path.display())]
    NotASocket {
        /// The socket path.
        path: PathBuf,
    },
    /// What sits at the socket path could not be examined.
    #[error("cannot check the existing control socket {}: {source}. Remove it by hand if no tandemd is running.", path.display())]
    Inspect {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A stale socket left by a dead daemon could not be removed.
    #[error("cannot remove the stale control socket {}: {source}. Remove it by hand.", path.display())]
    RemoveStale {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Binding the listener failed.
    #[error("cannot open the control socket at {}: {source}. Check that the directory is writable by root and the path is shorter than 108 bytes.", path.display())]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The socket could not be restricted to root.
    #[error("cannot restrict the control socket {} to root (mode 0600): {source}. Check the file system it is on.", path.display())]
    Permissions {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The token range does not fit in a `usize`.
    #[error("control socket token base {token_base} is too large: it needs {TOKEN_SPAN} consecutive tokens")]
    TokenRange {
        /// The base asked for.
        token_base: usize,
    },
    /// Registering with the event loop failed.
    #[error("cannot register the control socket with the event loop: {source}")]
    Register {
        /// The underlying error.
        source: io::Error,
    },
    /// The thread that serves the socket could not start.
    #[error("cannot start the thread that serves the control socket: {source}. Check the process and memory limits")]
    Thread {
        /// The underlying error.
        source: io::Error,
    },
}

/// The listening control socket and the clients it is serving.
pub struct ControlSocket {
    path: PathBuf,
    /// Device and inode of the socket file we bound, so that `Drop` only
    /// removes our own file and never a successor's.
    file_id: (u64, u64),
    listener: UnixListener,
    token_base: Option<usize>,
    clients: Vec<Option<Client>>,
    client_timeout: Duration,
    answer_timeout: Duration,
    allowed_uid: u32,
    /// Numbers the clients, so a late answer never reaches the next
    /// client of the same slot.
    admitted: u64,
}

/// Who an answer given later is for (see [`ControlSocket::answer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientId {
    slot: usize,
    serial: u64,
}

impl std::fmt::Debug for ControlSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlSocket")
            .field("path", &self.path)
            .field("token_base", &self.token_base)
            .field("clients", &self.client_count())
            .finish()
    }
}

struct Client {
    stream: UnixStream,
    deadline: Instant,
    phase: Phase,
    serial: u64,
}

enum Phase {
    /// Collecting the request line.
    Reading(Vec<u8>),
    /// The request is with the caller; the answer comes through
    /// [`ControlSocket::answer`].
    Waiting,
    /// Sending the response line.
    Writing { out: Vec<u8>, written: usize },
}

/// What a client needs next from the event loop.
enum Next {
    Readable,
    Writable,
    Close,
}

enum ReadOutcome {
    /// No full line yet.
    Pending,
    /// A line ends at this index of the buffer (newline excluded).
    Line(usize),
    /// More than [`MAX_REQUEST_BYTES`] without a newline.
    TooLong,
    /// Peer gone before sending anything.
    Closed,
}

impl ControlSocket {
    /// Opens the control socket at `path`, root only.
    ///
    /// Creates the parent directory (mode 0700) if it is missing, refuses to
    /// take over a socket on which another process still listens, replaces a
    /// stale one, and restricts the new socket to mode 0600.
    pub fn bind(path: &Path) -> Result<Self, SocketError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(|source| SocketError::CreateDir {
                        dir: dir.to_owned(),
                        source,
                    })?;
            }
        }
        remove_stale(path)?;
        let listener = UnixListener::bind(path).map_err(|source| SocketError::Bind {
            path: path.to_owned(),
            source,
        })?;
        let restricted = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .and_then(|()| std::fs::symlink_metadata(path));
        let meta = match restricted {
            Ok(meta) => meta,
            Err(source) => {
                drop(listener);
                let _ = std::fs::remove_file(path);
                return Err(SocketError::Permissions {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        Ok(ControlSocket {
            path: path.to_owned(),
            file_id: (meta.dev(), meta.ino()),
            listener,
            token_base: None,
            clients: (0..MAX_CLIENTS).map(|_| None).collect(),
            client_timeout: CLIENT_TIMEOUT,
            answer_timeout: ANSWER_TIMEOUT,
            allowed_uid: 0,
            admitted: 0,
        })
    }

    /// Registers the listener with the caller's event loop. The socket uses
    /// tokens `token_base .. token_base + TOKEN_SPAN`; keep them free.
    pub fn register(&mut self, registry: &Registry, token_base: usize) -> Result<(), SocketError> {
        token_base
            .checked_add(TOKEN_SPAN)
            .ok_or(SocketError::TokenRange { token_base })?;
        registry
            .register(&mut self.listener, Token(token_base), Interest::READABLE)
            .map_err(|source| SocketError::Register { source })?;
        self.token_base = Some(token_base);
        Ok(())
    }

    /// Whether an event with this token belongs to the control socket.
    pub fn owns(&self, token: Token) -> bool {
        self.token_base
            .is_some_and(|base| token.0 >= base && token.0 - base < TOKEN_SPAN)
    }

    /// Serves one readiness event of a token this socket [owns](Self::owns):
    /// accepts new clients, or advances one client's read, `handler` call
    /// and write. Events for other tokens are ignored. The handler answers
    /// at once (`Some`), or `None`: the answer comes later through
    /// [`answer`](Self::answer) with the `ClientId` it was given.
    pub fn handle_event(
        &mut self,
        registry: &Registry,
        event: &Event,
        handler: &mut dyn FnMut(Request, ClientId) -> Option<Response>,
    ) {
        let Some(base) = self.token_base else {
            return;
        };
        if !self.owns(event.token()) {
            return;
        }
        match event.token().0 - base {
            0 => self.accept_all(registry, base),
            n => self.advance(registry, n - 1, handler),
        }
    }

    /// Sends `line` (one encoded [`Response`], newline included) to the
    /// client `id` that was told to wait. Nothing happens if that client is
    /// gone (hung up or timed out). Returns whether it was still waiting.
    pub fn answer(&mut self, registry: &Registry, id: ClientId, line: Vec<u8>) -> bool {
        let Some(base) = self.token_base else {
            return false;
        };
        let timeout = self.client_timeout;
        let Some(client) = self
            .clients
            .get_mut(id.slot)
            .and_then(Option::as_mut)
            .filter(|c| c.serial == id.serial && matches!(c.phase, Phase::Waiting))
        else {
            return false;
        };
        client.phase = Phase::Writing {
            out: line,
            written: 0,
        };
        client.deadline = Instant::now() + timeout;
        let next = match &mut client.phase {
            Phase::Writing { out, written } => write_response(&client.stream, out, written),
            _ => Next::Close,
        };
        let close = match next {
            Next::Writable => registry
                .reregister(
                    &mut client.stream,
                    Token(base + 1 + id.slot),
                    Interest::WRITABLE,
                )
                .is_err(),
            Next::Readable => false,
            Next::Close => true,
        };
        if close {
            if let Some(mut client) = self.clients[id.slot].take() {
                let _ = registry.deregister(&mut client.stream);
            }
        }
        true
    }

    /// Closes the clients whose time is up; one still sending its request,
    /// or still waiting for its answer, is told why first. Call it whenever [`next_deadline`](Self::next_deadline)
    /// has passed (calling it more often is harmless).
    pub fn poll_timeouts(&mut self, now: Instant) {
        let timeout_ms = self.client_timeout.as_millis();
        let answer_ms = self.answer_timeout.as_millis();
        for slot in &mut self.clients {
            if slot.as_ref().is_none_or(|c| c.deadline > now) {
                continue;
            }
            if let Some(client) = slot.take() {
                let message = match client.phase {
                    Phase::Reading(_) => Some(format!(
                        "timed out: no complete request within {timeout_ms} ms; send one JSON object on one line, ended by a newline"
                    )),
                    Phase::Waiting => Some(format!(
                        "timed out: tandemd did not finish the request within {answer_ms} ms; it may still complete: check with status or the log"
                    )),
                    Phase::Writing { .. } => None,
                };
                if let Some(message) = message {
                    send_best_effort(&client.stream, &Response::error(message));
                }
                // Closing the descriptor also removes it from the poll set.
                drop(client);
            }
        }
    }

    /// The earliest time at which [`poll_timeouts`](Self::poll_timeouts)
    /// has something to do, if any client is connected.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.clients.iter().flatten().map(|c| c.deadline).min()
    }

    /// Changes how long each new client has to send its request, and then to
    /// read the answer (default [`CLIENT_TIMEOUT`]).
    pub fn set_client_timeout(&mut self, timeout: Duration) {
        self.client_timeout = timeout;
    }

    /// Changes how long an answer given later may take (default
    /// [`ANSWER_TIMEOUT`]).
    pub fn set_answer_timeout(&mut self, timeout: Duration) {
        self.answer_timeout = timeout;
    }

    /// Number of clients being served.
    pub fn client_count(&self) -> usize {
        self.clients.iter().flatten().count()
    }

    /// Where the socket is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    #[cfg(test)]
    fn set_allowed_uid(&mut self, uid: u32) {
        self.allowed_uid = uid;
    }

    fn accept_all(&mut self, registry: &Registry, base: usize) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => self.admit(registry, base, stream),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // WouldBlock: all accepted. Anything else (out of descriptors,
                // aborted connection): give up until the next event.
                Err(_) => break,
            }
        }
    }

    fn admit(&mut self, registry: &Registry, base: usize, mut stream: UnixStream) {
        match getsockopt(&stream, PeerCredentials) {
            Ok(cred) if cred.uid() == self.allowed_uid => {}
            Ok(_) => return send_best_effort(&stream, &Response::error(PERMISSION_DENIED)),
            Err(e) => {
                let message = format!(
                    "cannot check who is connecting ({}); the control socket is for root only",
                    e.desc()
                );
                return send_best_effort(&stream, &Response::error(message));
            }
        }
        let Some(slot) = self.clients.iter().position(Option::is_none) else {
            let message = format!(
                "busy: tandemd is already serving {MAX_CLIENTS} control clients; retry in a moment"
            );
            return send_best_effort(&stream, &Response::error(message));
        };
        if registry
            .register(&mut stream, Token(base + 1 + slot), Interest::READABLE)
            .is_err()
        {
            return;
        }
        self.admitted += 1;
        self.clients[slot] = Some(Client {
            stream,
            deadline: Instant::now() + self.client_timeout,
            phase: Phase::Reading(Vec::new()),
            serial: self.admitted,
        });
    }

    fn advance(
        &mut self,
        registry: &Registry,
        slot: usize,
        handler: &mut dyn FnMut(Request, ClientId) -> Option<Response>,
    ) {
        let Some(client) = self.clients.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let token = Token(self.token_base.unwrap_or_default() + 1 + slot);
        let id = ClientId {
            slot,
            serial: client.serial,
        };
        let timeouts = (self.client_timeout, self.answer_timeout);
        let close = match client.advance(handler, id, timeouts) {
            Next::Readable => false,
            Next::Writable => registry
                .reregister(&mut client.stream, token, Interest::WRITABLE)
                .is_err(),
            Next::Close => true,
        };
        if close {
            if let Some(mut client) = self.clients[slot].take() {
                let _ = registry.deregister(&mut client.stream);
            }
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        if let Ok(meta) = std::fs::symlink_metadata(&self.path) {
            if (meta.dev(), meta.ino()) == self.file_id {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

impl Client {
    /// Reads what has arrived, answers once the request is complete (or
    /// waits for the answer), and says what to wait for next. Reading the
    /// answer gets its own timeout (`timeouts.0`), so that a slow handler
    /// does not eat the client's time; an answer given later has
    /// `timeouts.1` to come.
    fn advance(
        &mut self,
        handler: &mut dyn FnMut(Request, ClientId) -> Option<Response>,
        id: ClientId,
        timeouts: (Duration, Duration),
    ) -> Next {
        let (timeout, answer_timeout) = timeouts;
        if let Phase::Reading(buf) = &mut self.phase {
            let response = match read_request(&mut self.stream, buf) {
                ReadOutcome::Pending => return Next::Readable,
                ReadOutcome::Closed => return Next::Close,
                ReadOutcome::TooLong => Response::error(
                    ApiError::TooLong {
                        max: MAX_REQUEST_BYTES,
                    }
                    .to_string(),
                ),
                ReadOutcome::Line(end) => match parse_request(&buf[..end]) {
                    Ok(request) => match handler(request, id) {
                        Some(response) => response,
                        None => {
                            // Readiness events meanwhile (more input, a
                            // half-close) are ignored until the answer.
                            self.phase = Phase::Waiting;
                            self.deadline = Instant::now() + answer_timeout;
                            return Next::Readable;
                        }
                    },
                    Err(e) => Response::error(e.to_string()),
                },
            };
            self.phase = Phase::Writing {
                out: response.to_line(),
                written: 0,
            };
            self.deadline = Instant::now() + timeout;
        }
        match &mut self.phase {
            Phase::Writing { out, written } => write_response(&self.stream, out, written),
            Phase::Reading(_) | Phase::Waiting => Next::Readable,
        }
    }
}

/// Reads until a newline, the size limit, would-block or end of stream.
fn read_request(stream: &mut UnixStream, buf: &mut Vec<u8>) -> ReadOutcome {
    let mut chunk = [0u8; READ_CHUNK];
    loop {
        // One byte past the limit leaves room for the newline of a line of
        // exactly MAX_REQUEST_BYTES.
        let room = (MAX_REQUEST_BYTES + 1).saturating_sub(buf.len());
        if room == 0 {
            return ReadOutcome::TooLong;
        }
        match stream.read(&mut chunk[..room.min(READ_CHUNK)]) {
            // A client may half-close instead of sending a newline.
            Ok(0) if buf.is_empty() => return ReadOutcome::Closed,
            Ok(0) => return ReadOutcome::Line(buf.len()),
            Ok(n) => {
                let start = buf.len();
                buf.extend_from_slice(&chunk[..n]);
                if let Some(i) = buf[start..].iter().position(|&b| b == b'\n') {
                    return ReadOutcome::Line(start + i);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ReadOutcome::Pending,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return ReadOutcome::Closed,
        }
    }
}

/// Writes what the socket takes; `Close` once all is written or on error.
fn write_response(stream: &UnixStream, out: &[u8], written: &mut usize) -> Next {
    while *written < out.len() {
        // MSG_NOSIGNAL: a client that hung up gets EPIPE, not a SIGPIPE that
        // would kill the daemon if it does not ignore the signal.
        match send(stream.as_raw_fd(), &out[*written..], MsgFlags::MSG_NOSIGNAL) {
            Ok(0) => return Next::Close,
            Ok(n) => *written += n,
            Err(Errno::EAGAIN) => return Next::Writable,
            Err(Errno::EINTR) => continue,
            Err(_) => return Next::Close,
        }
    }
    Next::Close
}

/// One attempt to send a short answer to a client about to be closed. A
/// freshly accepted socket has an empty send buffer, so it fits.
fn send_best_effort(stream: &UnixStream, response: &Response) {
    let line = response.to_line();
    let mut written = 0;
    let _ = write_response(stream, &line, &mut written);
}

/// Removes a socket file left by a dead daemon; refuses if a live one
/// listens on it or if it is not a socket.
fn remove_stale(path: &Path) -> Result<(), SocketError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(SocketError::Inspect {
                path: path.to_owned(),
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(SocketError::NotASocket {
            path: path.to_owned(),
        });
    }
    // A non-blocking connect, so a live but stuck daemon cannot hang us.
    match UnixStream::connect(path) {
        Ok(_) => Err(SocketError::AlreadyRunning {
            path: path.to_owned(),
        }),
        // Listening, but its backlog is full: alive all the same.
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(SocketError::AlreadyRunning {
            path: path.to_owned(),
        }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => std::fs::remove_file(path)
            .map_err(|source| SocketError::RemoveStale {
                path: path.to_owned(),
                source,
            }),
        Err(source) => Err(SocketError::Inspect {
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::api::{parse_response, sample_stats, sample_status};
    use std::io::Write;
    use std::net::Shutdown;
    use std::os::unix::net::{UnixListener as StdListener, UnixStream as StdStream};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::thread::JoinHandle;

    /// A directory under the system temp dir, removed on drop.
    pub(crate) struct TempDir(pub(crate) PathBuf);

    impl TempDir {
        pub(crate) fn new(name: &str) -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir =
                std::env::temp_dir().join(format!("tandem-ctl-{}-{n}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A `ControlSocket` served by a mio loop on its own thread, answering
    /// status and stats with the sample reports.
    pub(crate) struct TestServer {
        pub(crate) path: PathBuf,
        stop: Arc<AtomicBool>,
        thread: Option<JoinHandle<usize>>,
        _dir: TempDir,
    }

    impl TestServer {
        pub(crate) fn start(name: &str) -> Self {
            Self::start_with(name, |_| {})
        }

        pub(crate) fn start_with(name: &str, configure: impl FnOnce(&mut ControlSocket)) -> Self {
            let dir = TempDir::new(name);
            let path = dir.0.join("run/tandemd.sock");
            let mut sock = ControlSocket::bind(&path).unwrap();
            configure(&mut sock);
            let stop = Arc::new(AtomicBool::new(false));
            let thread = std::thread::spawn({
                let stop = stop.clone();
                move || serve(sock, &stop)
            });
            TestServer {
                path,
                stop,
                thread: Some(thread),
                _dir: dir,
            }
        }

        /// Stops the loop; returns how many requests reached the handler.
        pub(crate) fn stop(mut self) -> usize {
            self.stop.store(true, Ordering::Relaxed);
            self.thread.take().unwrap().join().unwrap()
        }
    }

    impl Drop for TestServer {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
        }
    }

    fn serve(mut sock: ControlSocket, stop: &AtomicBool) -> usize {
        let mut poll = mio::Poll::new().unwrap();
        let mut events = mio::Events::with_capacity(64);
        sock.register(poll.registry(), 100).unwrap();
        let mut calls = 0;
        // Stats is answered later, from the loop (as work done on another
        // thread would be); the rest at once.
        // Sync is never answered (the client must time out).
        let later = std::cell::RefCell::new(Vec::new());
        let mut handler = |req: Request, id: ClientId| {
            calls += 1;
            match req {
                Request::Status => Some(Response::Status(sample_status())),
                Request::Stats => {
                    later.borrow_mut().push(id);
                    None
                }
                Request::Sync => None,
                _ => Some(Response::error("not served by this test")),
            }
        };
        let give_up = Instant::now() + Duration::from_secs(30);
        while !stop.load(Ordering::Relaxed) && Instant::now() < give_up {
            poll.poll(&mut events, Some(Duration::from_millis(5)))
                .unwrap();
            for event in events.iter() {
                assert!(sock.owns(event.token()), "{event:?}");
                sock.handle_event(poll.registry(), event, &mut handler);
            }
            for id in later.take() {
                let line = Response::Stats(sample_stats()).to_line();
                sock.answer(poll.registry(), id, line);
            }
            sock.poll_timeouts(Instant::now());
        }
        calls
    }

    fn connect(path: &Path) -> StdStream {
        let stream = StdStream::connect(path).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream
            .set_write_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream
    }

    /// Reads one line (or up to end of stream); a reset after the line,
    /// which a close with unread input causes, is not an error.
    fn read_line(stream: &mut StdStream) -> String {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while !buf.contains(&b'\n') {
            match stream.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("reading the answer: {e}"),
            }
        }
        String::from_utf8(buf).unwrap()
    }

    /// Sends `bytes` (ignoring a reset: the server may close early), reads
    /// the answer.
    fn exchange(path: &Path, bytes: &[u8]) -> String {
        let mut stream = connect(path);
        let _ = stream.write_all(bytes);
        read_line(&mut stream)
    }

    fn error_message(line: &str) -> String {
        match parse_response(line.as_bytes()) {
            Ok(Response::Error { message }) => message,
            other => panic!("expected an error response, got {other:?} from {line:?}"),
        }
    }

    fn assert_closed(stream: &mut StdStream) {
        let mut rest = Vec::new();
        match stream.read_to_end(&mut rest) {
            Ok(_) => assert!(rest.is_empty(), "{rest:?}"),
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset),
        }
    }

    #[test]
    fn status_request_round_trips_and_the_connection_closes() {
        let server = TestServer::start("status");
        let mut stream = connect(&server.path);
        stream.write_all(b"{\"cmd\":\"status\"}\n").unwrap();
        let line = read_line(&mut stream);
        assert!(line.ends_with('\n'));
        match parse_response(line.as_bytes()).unwrap() {
            Response::Status(report) => assert_eq!(report, sample_status()),
            other => panic!("{other:?}"),
        }
        assert_closed(&mut stream);
        let line = exchange(&server.path, b"{\"cmd\":\"stats\"}\n");
        assert!(matches!(
            parse_response(line.as_bytes()),
            Ok(Response::Stats(_))
        ));
        assert_eq!(server.stop(), 2);
    }

    #[test]
    fn request_ended_by_half_close_instead_of_newline_is_answered() {
        let server = TestServer::start("halfclose");
        let mut stream = connect(&server.path);
        stream.write_all(b"{\"cmd\":\"stats\"}").unwrap();
        stream.shutdown(Shutdown::Write).unwrap();
        let line = read_line(&mut stream);
        assert!(line.starts_with("{\"result\":\"stats\""), "{line}");
    }

    #[test]
    fn malformed_json_gets_an_error_and_never_reaches_the_handler() {
        let server = TestServer::start("malformed");
        let message = error_message(&exchange(&server.path, b"{\"cmd\": status\n"));
        assert!(
            message.starts_with("request is not valid JSON"),
            "{message}"
        );
        let message = error_message(&exchange(&server.path, b"\x00\xff\n"));
        assert!(
            message.starts_with("request is not valid JSON"),
            "{message}"
        );
        assert_eq!(server.stop(), 0);
    }

    #[test]
    fn unknown_command_gets_the_list_of_commands() {
        let server = TestServer::start("unknown");
        let message = error_message(&exchange(&server.path, b"{\"cmd\":\"haactive\"}\n"));
        assert_eq!(
            message,
            "unknown command \"haactive\"; the commands are: status, stats, conn_list, conn_flush, policy_reload, policy_show, ha_active, ha_passive, ha_reset, sync, sync_digest, sync_verify, log, ha_info, identity, peer_status, ha_sync, ha_sync_test, ha_diff, ha_create, ha_join, ha_enha, ha_set, ha_key, ha_cluster_remove, ha_cluster_activate, system_update, system_tpm_pcrseal, system_tpm_password, debug"
        );
        assert_eq!(server.stop(), 0);
    }

    #[test]
    fn oversize_request_gets_an_error_and_is_not_read_to_the_end() {
        let server = TestServer::start("oversize");
        let mut big = vec![b' '; MAX_REQUEST_BYTES + 4096];
        big.extend_from_slice(b"{\"cmd\":\"status\"}\n");
        let message = error_message(&exchange(&server.path, &big));
        assert!(message.starts_with("request too long"), "{message}");
        // A request of exactly the limit is still served.
        let mut exact = vec![b' '; MAX_REQUEST_BYTES - 16];
        exact.extend_from_slice(b"{\"cmd\":\"status\"}\n");
        let line = exchange(&server.path, &exact);
        assert!(line.starts_with("{\"result\":\"status\""), "{line}");
        assert_eq!(server.stop(), 1);
    }

    #[test]
    fn clients_beyond_the_limit_are_told_busy_and_the_rest_are_served() {
        let server = TestServer::start("many");
        // Connections are accepted in order: the first MAX_CLIENTS take the
        // slots and stay silent, the next ones are turned away.
        let mut held: Vec<StdStream> = (0..MAX_CLIENTS).map(|_| connect(&server.path)).collect();
        for _ in 0..3 {
            let mut extra = connect(&server.path);
            let message = error_message(&read_line(&mut extra));
            assert!(message.starts_with("busy:"), "{message}");
            assert_closed(&mut extra);
        }
        for stream in &mut held {
            stream.write_all(b"{\"cmd\":\"stats\"}\n").unwrap();
        }
        for stream in &mut held {
            let line = read_line(stream);
            assert!(line.starts_with("{\"result\":\"stats\""), "{line}");
        }
        drop(held);
        // The slots are free again.
        let line = exchange(&server.path, b"{\"cmd\":\"status\"}\n");
        assert!(line.starts_with("{\"result\":\"status\""), "{line}");
        assert_eq!(server.stop(), MAX_CLIENTS + 1);
    }

    #[test]
    fn half_written_request_times_out_and_frees_its_slot() {
        let server = TestServer::start_with("timeout", |s| {
            s.set_client_timeout(Duration::from_millis(200))
        });
        let started = Instant::now();
        let mut stream = connect(&server.path);
        stream.write_all(b"{\"cmd\":\"sta").unwrap();
        let message = error_message(&read_line(&mut stream));
        let waited = started.elapsed();
        assert!(message.starts_with("timed out"), "{message}");
        assert!(waited >= Duration::from_millis(190), "{waited:?}");
        assert!(waited < Duration::from_secs(3), "{waited:?}");
        assert_closed(&mut stream);
        // Silent clients do not accumulate: fill every slot, let them time
        // out, and a new client is served.
        let silent: Vec<StdStream> = (0..MAX_CLIENTS).map(|_| connect(&server.path)).collect();
        std::thread::sleep(Duration::from_millis(400));
        let line = exchange(&server.path, b"{\"cmd\":\"status\"}\n");
        assert!(line.starts_with("{\"result\":\"status\""), "{line}");
        drop(silent);
    }

    #[test]
    fn an_answer_that_does_not_come_in_time_is_a_clear_timeout() {
        let server = TestServer::start_with("answerlate", |s| {
            s.set_answer_timeout(Duration::from_millis(200))
        });
        let started = Instant::now();
        let message = error_message(&exchange(&server.path, b"{\"cmd\":\"sync\"}\n"));
        assert!(
            message.starts_with("timed out: tandemd did not finish the request within 200 ms"),
            "{message}"
        );
        assert!(started.elapsed() >= Duration::from_millis(190));
        // The slot is free again; answers given later still work.
        let line = exchange(&server.path, b"{\"cmd\":\"stats\"}\n");
        assert!(line.starts_with("{\"result\":\"stats\""), "{line}");
        assert_eq!(server.stop(), 2);
    }

    #[test]
    fn an_answer_for_a_client_that_is_gone_goes_nowhere() {
        let dir = TempDir::new("gone");
        let mut sock = ControlSocket::bind(&dir.0.join("s.sock")).unwrap();
        let poll = mio::Poll::new().unwrap();
        sock.register(poll.registry(), 10).unwrap();
        let nobody = ClientId { slot: 0, serial: 1 };
        assert!(!sock.answer(poll.registry(), nobody, b"{}\n".to_vec()));
        let out_of_range = ClientId {
            slot: MAX_CLIENTS + 3,
            serial: 1,
        };
        assert!(!sock.answer(poll.registry(), out_of_range, b"{}\n".to_vec()));
    }

    #[test]
    fn client_that_is_not_the_allowed_user_is_refused() {
        let uid = nix::unistd::getuid().as_raw();
        let server = TestServer::start_with("peercred", |s| s.set_allowed_uid(uid + 1));
        let message = error_message(&exchange(&server.path, b"{\"cmd\":\"status\"}\n"));
        assert_eq!(message, PERMISSION_DENIED);
        assert_eq!(server.stop(), 0);
    }

    #[test]
    fn client_that_hangs_up_early_does_not_disturb_the_server() {
        let server = TestServer::start("hangup");
        drop(connect(&server.path));
        let mut stream = connect(&server.path);
        stream.write_all(b"{\"cmd\":\"status\"}\n").unwrap();
        drop(stream);
        let line = exchange(&server.path, b"{\"cmd\":\"stats\"}\n");
        assert!(line.starts_with("{\"result\":\"stats\""), "{line}");
    }

    #[test]
    fn bind_creates_a_private_directory_and_a_root_only_socket() {
        let dir = TempDir::new("perms");
        let path = dir.0.join("a/b/tandemd.sock");
        let sock = ControlSocket::bind(&path).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.0.join("a/b")), 0o700);
        assert_eq!(mode(&path), 0o600);
        assert_eq!(sock.path(), path);
        drop(sock);
        assert!(!path.exists(), "drop removes the socket file");
    }

    #[test]
    fn bind_refuses_a_socket_that_a_live_process_listens_on() {
        let dir = TempDir::new("live");
        let path = dir.0.join("tandemd.sock");
        let first = ControlSocket::bind(&path).unwrap();
        let err = ControlSocket::bind(&path).unwrap_err();
        assert!(matches!(err, SocketError::AlreadyRunning { .. }), "{err}");
        assert!(err
            .to_string()
            .starts_with("another tandemd is already running on "));
        assert!(path.exists(), "the live socket is left alone");
        drop(first);
    }

    #[test]
    fn bind_replaces_a_stale_socket_and_refuses_other_files() {
        let dir = TempDir::new("stale");
        let path = dir.0.join("tandemd.sock");
        drop(StdListener::bind(&path).unwrap());
        assert!(path.exists());
        let sock = ControlSocket::bind(&path).unwrap();
        assert!(StdStream::connect(&path).is_ok(), "the new socket listens");
        drop(sock);

        std::fs::write(&path, b"not a socket").unwrap();
        let err = ControlSocket::bind(&path).unwrap_err();
        assert!(matches!(err, SocketError::NotASocket { .. }), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"not a socket");
    }

    #[test]
    fn drop_leaves_a_successors_socket_alone() {
        let dir = TempDir::new("successor");
        let path = dir.0.join("tandemd.sock");
        let old = ControlSocket::bind(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let new = ControlSocket::bind(&path).unwrap();
        drop(old);
        assert!(path.exists());
        drop(new);
        assert!(!path.exists());
    }

    #[test]
    fn tokens_outside_the_span_are_not_owned() {
        let dir = TempDir::new("tokens");
        let mut sock = ControlSocket::bind(&dir.0.join("s.sock")).unwrap();
        assert!(!sock.owns(Token(0)));
        let poll = mio::Poll::new().unwrap();
        sock.register(poll.registry(), 10).unwrap();
        assert!(!sock.owns(Token(9)));
        assert!(sock.owns(Token(10)));
        assert!(sock.owns(Token(10 + TOKEN_SPAN - 1)));
        assert!(!sock.owns(Token(10 + TOKEN_SPAN)));
        let err = sock.register(poll.registry(), usize::MAX - 3).unwrap_err();
        assert!(matches!(err, SocketError::TokenRange { .. }));
        assert_eq!(sock.next_deadline(), None);
    }
}
