//! The handshake and the framing of the members' service on TCP 1300
//! (join, configuration sync): sans-IO, bytes in and bytes out.
//!
//! Both sides prove that they hold the cluster's key without sending it,
//! then every frame is sealed with a key of its own direction:
//!
//! ```text
//! C -> S  ClientHello  "T13C" | proto | purpose | serial | nc (32 random bytes)
//! S -> C  ServerHello  "T13S" | proto | cluster id | serial | ns (32 random bytes)
//!         (the client now derives the cluster's keys: HaKeys::control)
//! C -> S  proof_c = HMAC-SHA256(control, "tandem-1300 c" || SHA-256(T))
//! S -> C  proof_s = HMAC-SHA256(control, "tandem-1300 s" || SHA-256(T) || proof_c)
//!         T = the exact bytes of both hellos
//! k_cs, k_sc = HKDF-SHA256(salt = nc || ns, ikm = control, info = "c2s"/"s2c" || SHA-256(T))
//! ```
//!
//! Before the proofs, frames are `len u16 BE (<= 256) | body`; after them
//! `len u32 BE | ChaCha20-Poly1305(body)` with the nonce `0u32 || seq u64`
//! counting each direction's frames from 0 and the 4 length bytes as
//! associated data. So:
//! - the key never travels, and a recorded handshake proves nothing
//!   against a fresh `ns`;
//! - a nonce is never reused: each connection has fresh keys (both
//!   nonces salt them), each direction its own key and counter;
//! - inside a connection, a frame replayed, reordered, dropped, altered or
//!   cut fails to open, and the connection ends.
//!
//! Whoever connects without the key learns only the server's hello:
//! nothing to test guesses against. A captured proof costs a guesser one
//! Argon2id per guess, as a captured heartbeat does.

use std::fmt;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use ring::{digest, hkdf, hmac};
use zeroize::Zeroizing;

/// The protocol version this build speaks.
pub const PROTO: u8 = 1;
/// Length of each side's random nonce.
pub const NONCE_LEN: usize = 32;
/// Largest body of a frame before the proofs.
pub const MAX_PREAUTH: usize = 256;
/// Largest plaintext of a sealed frame.
pub const MAX_BODY: usize = 64 * 1024;
/// Largest sealed frame on the wire (length, body, tag).
pub const MAX_SEALED: usize = 4 + MAX_BODY + TAG_LEN;
/// Length of a proof.
pub const PROOF_LEN: usize = 32;
const TAG_LEN: usize = 16;
const MAX_SERIAL: usize = 32;

/// Why the other side connects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// A firewall joining the cluster.
    Join,
    /// The other member (status, sync).
    Member,
    /// A joiner measuring its backup link.
    LinkCheck,
}

impl Purpose {
    fn code(self) -> u8 {
        match self {
            Purpose::Join => 1,
            Purpose::Member => 2,
            Purpose::LinkCheck => 3,
        }
    }

    fn from_code(c: u8) -> Option<Purpose> {
        Some(match c {
            1 => Purpose::Join,
            2 => Purpose::Member,
            3 => Purpose::LinkCheck,
            _ => return None,
        })
    }
}

/// What went wrong in a handshake or with a frame; the message is the
/// operator's (and the peer's, for a refusal).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HandshakeError {
    /// A hello that is not one of ours (bad magic, length or field).
    Malformed(&'static str),
    /// The other side speaks another protocol version.
    Version {
        /// Theirs.
        theirs: u8,
    },
    /// The client's proof does not match: it does not hold the key.
    ClientProof,
    /// The server's proof does not match: it does not hold the key (the
    /// wrong address, or another cluster).
    ServerProof,
    /// A step came out of order (a caller defect).
    Order(&'static str),
    /// The server refused, and said why.
    Refused(String),
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::Malformed(what) => {
                write!(f, "not a tandem member's handshake: {what}")
            }
            HandshakeError::Version { theirs } => write!(
                f,
                "the other firewall speaks protocol {theirs} on TCP 1300, this one {PROTO}: update the older one"
            ),
            HandshakeError::ClientProof => f.write_str(
                "authentication failed: the pre-shared key does not match the cluster's",
            ),
            HandshakeError::ServerProof => f.write_str(
                "the member did not prove the pre-shared key (the wrong address, or another cluster)",
            ),
            HandshakeError::Order(what) => write!(f, "handshake step out of order: {what}"),
            HandshakeError::Refused(why) => write!(f, "refused by the member: {why}"),
        }
    }
}

impl std::error::Error for HandshakeError {}

/// What a frame's bytes can do wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The announced length is over the limit.
    TooLong {
        /// What was announced.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The frame does not open under the expected key and counter: altered,
    /// replayed, reordered, or from someone without the key.
    Unauthentic,
    /// A direction sent 2^64 frames (never, in practice).
    Exhausted,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLong { len, max } => {
                write!(f, "a frame of {len} bytes announced, at most {max} allowed")
            }
            FrameError::Unauthentic => {
                f.write_str("a frame failed authentication (altered, replayed or out of order)")
            }
            FrameError::Exhausted => f.write_str("the frame counter is exhausted"),
        }
    }
}

impl std::error::Error for FrameError {}

/// The client's first message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientHello {
    /// Why it connects.
    pub purpose: Purpose,
    /// Its serial.
    pub serial: String,
    /// Its random nonce.
    pub nonce: [u8; NONCE_LEN],
}

/// The server's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerHello {
    /// The cluster it serves (the client derives the keys of this one).
    pub cluster_id: u32,
    /// Its serial.
    pub serial: String,
    /// Its random nonce.
    pub nonce: [u8; NONCE_LEN],
}

fn serial_ok(s: &str) -> bool {
    (1..=MAX_SERIAL).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Reads `magic | proto | <fixed> | serial_len | serial | nonce`.
fn decode_hello<'a>(
    b: &'a [u8],
    magic: &[u8; 4],
    fixed: usize,
) -> Result<(&'a [u8], String, [u8; NONCE_LEN]), HandshakeError> {
    if b.len() < 6 + fixed || &b[..4] != magic {
        return Err(HandshakeError::Malformed("no hello"));
    }
    if b[4] != PROTO {
        return Err(HandshakeError::Version { theirs: b[4] });
    }
    let fields = &b[5..5 + fixed];
    let n = usize::from(b[5 + fixed]);
    let rest = &b[6 + fixed..];
    if rest.len() != n + NONCE_LEN {
        return Err(HandshakeError::Malformed("a hello of the wrong length"));
    }
    let serial = std::str::from_utf8(&rest[..n])
        .ok()
        .filter(|s| serial_ok(s))
        .ok_or(HandshakeError::Malformed(
            "a serial of 1..=32 characters from [A-Za-z0-9._-]",
        ))?
        .to_owned();
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&rest[n..]);
    Ok((fields, serial, nonce))
}

fn encode_hello(magic: &[u8; 4], fixed: &[u8], serial: &str, nonce: &[u8; NONCE_LEN]) -> Vec<u8> {
    let mut v = Vec::with_capacity(6 + fixed.len() + serial.len() + NONCE_LEN);
    v.extend_from_slice(magic);
    v.push(PROTO);
    v.extend_from_slice(fixed);
    v.push(serial.len().min(MAX_SERIAL) as u8);
    v.extend_from_slice(&serial.as_bytes()[..serial.len().min(MAX_SERIAL)]);
    v.extend_from_slice(nonce);
    v
}

impl ClientHello {
    /// Its bytes (the body of a pre-auth frame).
    pub fn encode(&self) -> Vec<u8> {
        encode_hello(b"T13C", &[self.purpose.code()], &self.serial, &self.nonce)
    }

    /// Parses a body.
    pub fn decode(b: &[u8]) -> Result<ClientHello, HandshakeError> {
        let (fields, serial, nonce) = decode_hello(b, b"T13C", 1)?;
        let purpose =
            Purpose::from_code(fields[0]).ok_or(HandshakeError::Malformed("an unknown purpose"))?;
        Ok(ClientHello {
            purpose,
            serial,
            nonce,
        })
    }
}

impl ServerHello {
    /// Its bytes (the body of a pre-auth frame).
    pub fn encode(&self) -> Vec<u8> {
        encode_hello(
            b"T13S",
            &self.cluster_id.to_be_bytes(),
            &self.serial,
            &self.nonce,
        )
    }

    /// Parses a body.
    pub fn decode(b: &[u8]) -> Result<ServerHello, HandshakeError> {
        let (fields, serial, nonce) = decode_hello(b, b"T13S", 4)?;
        let mut id = [0u8; 4];
        id.copy_from_slice(fields);
        Ok(ServerHello {
            cluster_id: u32::from_be_bytes(id),
            serial,
            nonce,
        })
    }
}

/// The body of a pre-auth frame that refuses the client and says why (at
/// most [`MAX_PREAUTH`] bytes in all).
pub fn refusal(why: &str) -> Vec<u8> {
    let mut v = b"T13R".to_vec();
    let room = MAX_PREAUTH - v.len();
    let mut end = why.len().min(room);
    while !why.is_char_boundary(end) {
        end -= 1;
    }
    v.extend_from_slice(&why.as_bytes()[..end]);
    v
}

/// The reason of a refusal body, if `body` is one.
fn refused(body: &[u8]) -> Option<HandshakeError> {
    body.strip_prefix(b"T13R")
        .map(|why| HandshakeError::Refused(String::from_utf8_lossy(why).into_owned()))
}

/// `len u16 BE | body`, the framing before the proofs.
pub fn preauth_frame(body: &[u8]) -> Vec<u8> {
    let n = body.len().min(MAX_PREAUTH);
    let mut v = Vec::with_capacity(2 + n);
    v.extend_from_slice(&(n as u16).to_be_bytes());
    v.extend_from_slice(&body[..n]);
    v
}

/// The hash of both hellos: what the proofs and the session keys bind.
fn transcript(ch: &[u8], sh: &[u8]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(&(ch.len() as u32).to_be_bytes());
    ctx.update(ch);
    ctx.update(&(sh.len() as u32).to_be_bytes());
    ctx.update(sh);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

fn proof(control: &[u8], label: &[u8], th: &[u8; 32], extra: &[u8]) -> hmac::Tag {
    let key = hmac::Key::new(hmac::HMAC_SHA256, control);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(label);
    ctx.update(th);
    ctx.update(extra);
    ctx.sign()
}

fn verify(control: &[u8], label: &[u8], th: &[u8; 32], extra: &[u8], got: &[u8]) -> bool {
    let key = hmac::Key::new(hmac::HMAC_SHA256, control);
    let mut msg = Vec::with_capacity(label.len() + 32 + extra.len());
    msg.extend_from_slice(label);
    msg.extend_from_slice(th);
    msg.extend_from_slice(extra);
    hmac::verify(&key, &msg, got).is_ok()
}

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn direction_key(control: &[u8], salt: &[u8], label: &[u8], th: &[u8; 32]) -> LessSafeKey {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(control);
    let mut k = Zeroizing::new([0u8; 32]);
    let info = [label, &th[..]];
    prk.expand(&info, Len(32))
        .and_then(|okm| okm.fill(&mut k[..]))
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    LessSafeKey::new(
        UnboundKey::new(&CHACHA20_POLY1305, &k[..]).expect("32 bytes is a ChaCha20 key"),
    )
}

/// One direction's key and counter.
struct Direction {
    key: LessSafeKey,
    seq: u64,
}

impl Direction {
    fn nonce(&mut self) -> Result<Nonce, FrameError> {
        let seq = self.seq;
        self.seq = seq.checked_add(1).ok_or(FrameError::Exhausted)?;
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&seq.to_be_bytes());
        Ok(Nonce::assume_unique_for_key(n))
    }
}

/// An authenticated connection's keys: seals what it sends, opens what it
/// receives, each direction with its own key and counter.
pub struct Session {
    send: Direction,
    recv: Direction,
    /// The other side's serial, as its hello gave it.
    pub peer_serial: String,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("peer_serial", &self.peer_serial)
            .field("sent", &self.send.seq)
            .field("received", &self.recv.seq)
            .finish_non_exhaustive()
    }
}

impl Session {
    fn new(
        control: &[u8],
        ch: &ClientHello,
        sh: &ServerHello,
        th: &[u8; 32],
        client: bool,
    ) -> Session {
        let mut salt = [0u8; 2 * NONCE_LEN];
        salt[..NONCE_LEN].copy_from_slice(&ch.nonce);
        salt[NONCE_LEN..].copy_from_slice(&sh.nonce);
        let c2s = direction_key(control, &salt, b"c2s", th);
        let s2c = direction_key(control, &salt, b"s2c", th);
        let (send, recv, peer) = if client {
            (c2s, s2c, &sh.serial)
        } else {
            (s2c, c2s, &ch.serial)
        };
        Session {
            send: Direction { key: send, seq: 0 },
            recv: Direction { key: recv, seq: 0 },
            peer_serial: peer.clone(),
        }
    }

    /// `body` as one sealed frame (`len u32 BE | ciphertext | tag`).
    pub fn seal(&mut self, body: &[u8]) -> Result<Vec<u8>, FrameError> {
        if body.len() > MAX_BODY {
            return Err(FrameError::TooLong {
                len: body.len(),
                max: MAX_BODY,
            });
        }
        let len = ((body.len() + TAG_LEN) as u32).to_be_bytes();
        let nonce = self.send.nonce()?;
        let mut out = Vec::with_capacity(4 + body.len() + TAG_LEN);
        out.extend_from_slice(&len);
        out.extend_from_slice(body);
        let tag = self
            .send
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(len), &mut out[4..])
            .map_err(|_| FrameError::Unauthentic)?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Opens one sealed frame (its 4 length bytes included) received next.
    /// Any failure ends the connection: the counter has moved on.
    pub fn open(&mut self, frame: &[u8]) -> Result<Vec<u8>, FrameError> {
        if frame.len() < 4 + TAG_LEN {
            return Err(FrameError::Unauthentic);
        }
        let mut len = [0u8; 4];
        len.copy_from_slice(&frame[..4]);
        if u32::from_be_bytes(len) as usize != frame.len() - 4 {
            return Err(FrameError::Unauthentic);
        }
        let nonce = self.recv.nonce()?;
        let mut buf = frame[4..].to_vec();
        let plain = self
            .recv
            .key
            .open_in_place(nonce, Aad::from(len), &mut buf)
            .map_err(|_| FrameError::Unauthentic)?;
        let n = plain.len();
        buf.truncate(n);
        Ok(buf)
    }
}

/// Splits a byte stream into frames: `len u16` before the proofs
/// ([`FrameReader::preauth`]), `len u32` after ([`FrameReader::sealed`]);
/// an announced length over the limit is refused before it is read.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
    sealed: bool,
}

impl FrameReader {
    /// A reader of pre-auth frames.
    pub fn preauth() -> FrameReader {
        FrameReader::default()
    }

    /// From now on, sealed frames (bytes already buffered stay).
    pub fn switch_to_sealed(&mut self) {
        self.sealed = true;
    }

    /// Bytes received.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received and not yet taken as a frame.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The next whole frame: a pre-auth frame's body, or a sealed frame
    /// with its length bytes (for [`Session::open`]); `None` until one is
    /// whole.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let (hdr, max) = if self.sealed {
            (4, MAX_SEALED - 4)
        } else {
            (2, MAX_PREAUTH)
        };
        if self.buf.len() < hdr {
            return Ok(None);
        }
        let len = if self.sealed {
            u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize
        } else {
            usize::from(u16::from_be_bytes([self.buf[0], self.buf[1]]))
        };
        if len > max {
            return Err(FrameError::TooLong { len, max });
        }
        if self.buf.len() < hdr + len {
            return Ok(None);
        }
        let frame: Vec<u8> = if self.sealed {
            self.buf.drain(..hdr + len).collect()
        } else {
            self.buf.drain(..hdr + len).skip(hdr).collect()
        };
        Ok(Some(frame))
    }
}

/// The server's side: answers a hello, checks the client's proof, proves
/// itself.
pub struct ServerHandshake {
    control: Zeroizing<Vec<u8>>,
    /// During a key change: the other control key, also accepted.
    alt: Option<Zeroizing<Vec<u8>>>,
    hello: ServerHello,
    client: Option<(ClientHello, [u8; 32])>,
}

impl ServerHandshake {
    /// A server of cluster `cluster_id` (whose control key is `control`),
    /// member `serial`, with a fresh random `nonce`.
    pub fn new(control: &[u8], cluster_id: u32, serial: &str, nonce: [u8; NONCE_LEN]) -> Self {
        ServerHandshake {
            control: Zeroizing::new(control.to_vec()),
            alt: None,
            hello: ServerHello {
                cluster_id,
                serial: serial.to_owned(),
                nonce,
            },
            client: None,
        }
    }

    /// During a key change, a client proving `control` (the other key of
    /// the change) is accepted too; the session is keyed by the key it
    /// proved.
    pub fn with_alt_control(mut self, control: &[u8]) -> Self {
        self.alt = Some(Zeroizing::new(control.to_vec()));
        self
    }

    /// The client's hello (a pre-auth frame's body): returns it and the
    /// body of our hello to send.
    pub fn on_hello(&mut self, body: &[u8]) -> Result<(ClientHello, Vec<u8>), HandshakeError> {
        if self.client.is_some() {
            return Err(HandshakeError::Order("a second client hello"));
        }
        let ch = ClientHello::decode(body)?;
        let sh = self.hello.encode();
        let th = transcript(body, &sh);
        self.client = Some((ch.clone(), th));
        Ok((ch, sh))
    }

    /// The client's proof (a pre-auth frame's body): on success, the body
    /// of our proof to send and the session.
    pub fn on_proof(&mut self, body: &[u8]) -> Result<(Vec<u8>, Session), HandshakeError> {
        let Some((ch, th)) = self.client.take() else {
            return Err(HandshakeError::Order("a proof before the hello"));
        };
        let proves =
            |k: &[u8]| body.len() == PROOF_LEN && verify(k, b"tandem-1300 c", &th, &[], body);
        let key: &[u8] = if proves(&self.control) {
            &self.control
        } else if let Some(alt) = self.alt.as_deref().filter(|k| proves(k)) {
            alt
        } else {
            return Err(HandshakeError::ClientProof);
        };
        let mine = proof(key, b"tandem-1300 s", &th, body);
        let session = Session::new(key, &ch, &self.hello, &th, false);
        Ok((mine.as_ref().to_vec(), session))
    }
}

/// The client's side: says hello, learns the cluster, proves the key,
/// checks the server's proof.
pub struct ClientHandshake {
    hello: ClientHello,
    hello_bytes: Vec<u8>,
    server: Option<(ServerHello, [u8; 32])>,
    sent: Option<(Zeroizing<Vec<u8>>, [u8; PROOF_LEN])>,
}

impl ClientHandshake {
    /// A client `serial` connecting for `purpose` with a fresh random
    /// `nonce`; also returns the body of its hello to send.
    pub fn new(purpose: Purpose, serial: &str, nonce: [u8; NONCE_LEN]) -> (Self, Vec<u8>) {
        let hello = ClientHello {
            purpose,
            serial: serial.to_owned(),
            nonce,
        };
        let bytes = hello.encode();
        (
            ClientHandshake {
                hello,
                hello_bytes: bytes.clone(),
                server: None,
                sent: None,
            },
            bytes,
        )
    }

    /// The server's hello: which cluster (derive its keys before
    /// [`Self::prove`]) and which member.
    pub fn on_hello(&mut self, body: &[u8]) -> Result<ServerHello, HandshakeError> {
        if self.server.is_some() {
            return Err(HandshakeError::Order("a second server hello"));
        }
        if let Some(r) = refused(body) {
            return Err(r);
        }
        let sh = ServerHello::decode(body)?;
        let th = transcript(&self.hello_bytes, body);
        self.server = Some((sh.clone(), th));
        Ok(sh)
    }

    /// Our proof under the cluster's control key (the body to send).
    pub fn prove(&mut self, control: &[u8]) -> Result<Vec<u8>, HandshakeError> {
        let Some((_, th)) = &self.server else {
            return Err(HandshakeError::Order("a proof before the server's hello"));
        };
        let tag = proof(control, b"tandem-1300 c", th, &[]);
        let mut p = [0u8; PROOF_LEN];
        p.copy_from_slice(tag.as_ref());
        self.sent = Some((Zeroizing::new(control.to_vec()), p));
        Ok(p.to_vec())
    }

    /// The server's proof: on success, the session.
    pub fn on_proof(&mut self, body: &[u8]) -> Result<Session, HandshakeError> {
        if let Some(r) = refused(body) {
            return Err(r);
        }
        let (Some((sh, th)), Some((control, mine))) = (&self.server, &self.sent) else {
            return Err(HandshakeError::Order("the server's proof before ours"));
        };
        if body.len() != PROOF_LEN || !verify(control, b"tandem-1300 s", th, mine, body) {
            return Err(HandshakeError::ServerProof);
        }
        Ok(Session::new(control, &self.hello, sh, th, true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = &[7u8; 32];
    const OTHER: &[u8] = &[8u8; 32];

    /// Fresh nonces for each handshake of a test (as SystemRandom gives).
    fn nonces() -> ([u8; NONCE_LEN], [u8; NONCE_LEN]) {
        static N: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
        let n = N.fetch_add(2, std::sync::atomic::Ordering::Relaxed);
        ([n; NONCE_LEN], [n.wrapping_add(1); NONCE_LEN])
    }

    /// A whole handshake between a client with `ck` and a server with
    /// `sk`; the sessions, or the first error.
    fn handshake(ck: &[u8], sk: &[u8]) -> Result<(Session, Session), HandshakeError> {
        let (nc, ns) = nonces();
        let (mut c, ch) = ClientHandshake::new(Purpose::Join, "TDLAB0002", nc);
        let mut s = ServerHandshake::new(sk, 42, "TDLAB0001", ns);
        let (seen, sh) = s.on_hello(&ch)?;
        assert_eq!(
            (seen.purpose, seen.serial.as_str()),
            (Purpose::Join, "TDLAB0002")
        );
        let info = c.on_hello(&sh)?;
        assert_eq!((info.cluster_id, info.serial.as_str()), (42, "TDLAB0001"));
        let pc = c.prove(ck)?;
        let (ps, ss) = s.on_proof(&pc)?;
        let cs = c.on_proof(&ps)?;
        Ok((cs, ss))
    }

    #[test]
    fn both_sides_prove_the_key_and_talk_sealed_both_ways() {
        let (mut c, mut s) = handshake(KEY, KEY).unwrap();
        assert_eq!(
            (c.peer_serial.as_str(), s.peer_serial.as_str()),
            ("TDLAB0001", "TDLAB0002")
        );
        for i in 0..3u8 {
            let f = c.seal(&[i; 100]).unwrap();
            assert_eq!(f.len(), 4 + 100 + 16);
            assert!(
                !f.windows(100).any(|w| w == [i; 100]),
                "the body is encrypted"
            );
            assert_eq!(s.open(&f).unwrap(), vec![i; 100]);
            let g = s.seal(b"ack").unwrap();
            assert_eq!(c.open(&g).unwrap(), b"ack");
        }
        assert_eq!(s.open(&c.seal(&[]).unwrap()).unwrap(), Vec::<u8>::new());
    }

    #[test]
    fn during_a_key_change_a_server_takes_either_key_and_keys_the_session_by_it() {
        for ck in [KEY, OTHER] {
            let (nc, ns) = nonces();
            let (mut c, ch) = ClientHandshake::new(Purpose::Member, "TDLAB0002", nc);
            let mut s = ServerHandshake::new(KEY, 42, "TDLAB0001", ns).with_alt_control(OTHER);
            let (_, sh) = s.on_hello(&ch).unwrap();
            c.on_hello(&sh).unwrap();
            let pc = c.prove(ck).unwrap();
            let (ps, mut ss) = s.on_proof(&pc).unwrap();
            let mut cs = c.on_proof(&ps).unwrap();
            assert_eq!(ss.open(&cs.seal(b"hi").unwrap()).unwrap(), b"hi");
        }
        // A third key is still refused.
        let (nc, ns) = nonces();
        let (mut c, ch) = ClientHandshake::new(Purpose::Member, "TDLAB0002", nc);
        let mut s = ServerHandshake::new(KEY, 42, "TDLAB0001", ns).with_alt_control(OTHER);
        let (_, sh) = s.on_hello(&ch).unwrap();
        c.on_hello(&sh).unwrap();
        let pc = c.prove(&[9u8; 32]).unwrap();
        assert_eq!(s.on_proof(&pc).unwrap_err(), HandshakeError::ClientProof);
    }

    #[test]
    fn a_wrong_key_fails_on_the_side_that_checks_it() {
        assert_eq!(
            handshake(OTHER, KEY).unwrap_err(),
            HandshakeError::ClientProof
        );
        // A server without the key (an impostor answering on the address)
        // cannot prove it: the client refuses.
        let (mut c, ch) = ClientHandshake::new(Purpose::Join, "TDLAB0002", [1; NONCE_LEN]);
        let mut s = ServerHandshake::new(OTHER, 42, "TDLAB0001", [2; NONCE_LEN]);
        let (_, sh) = s.on_hello(&ch).unwrap();
        c.on_hello(&sh).unwrap();
        let pc = c.prove(KEY).unwrap();
        // The impostor forges a proof of its own.
        let forged = proof(OTHER, b"tandem-1300 s", &transcript(&ch, &sh), &pc);
        assert_eq!(
            c.on_proof(forged.as_ref()).unwrap_err(),
            HandshakeError::ServerProof
        );
        assert!(HandshakeError::ClientProof
            .to_string()
            .contains("the pre-shared key does not match"));
    }

    #[test]
    fn a_recorded_proof_does_not_pass_against_a_fresh_server_nonce() {
        let (mut c, ch) = ClientHandshake::new(Purpose::Member, "TDLAB0002", [1; NONCE_LEN]);
        let mut s1 = ServerHandshake::new(KEY, 42, "TDLAB0001", [2; NONCE_LEN]);
        let (_, sh) = s1.on_hello(&ch).unwrap();
        c.on_hello(&sh).unwrap();
        let recorded = c.prove(KEY).unwrap();
        // Replayed to a new connection: the server's nonce differs.
        let mut s2 = ServerHandshake::new(KEY, 42, "TDLAB0001", [3; NONCE_LEN]);
        s2.on_hello(&ch).unwrap();
        assert_eq!(
            s2.on_proof(&recorded).unwrap_err(),
            HandshakeError::ClientProof
        );
        // A truncated proof and a proof before the hello are refused too.
        let mut s3 = ServerHandshake::new(KEY, 42, "TDLAB0001", [2; NONCE_LEN]);
        assert!(matches!(
            s3.on_proof(&recorded),
            Err(HandshakeError::Order(_))
        ));
        s3.on_hello(&ch).unwrap();
        assert_eq!(
            s3.on_proof(&recorded[..31]).unwrap_err(),
            HandshakeError::ClientProof
        );
    }

    #[test]
    fn sealed_frames_replayed_reordered_altered_or_cut_do_not_open() {
        let (mut c, mut s) = handshake(KEY, KEY).unwrap();
        let f0 = c.seal(b"zero").unwrap();
        let f1 = c.seal(b"one").unwrap();
        // Out of order.
        assert_eq!(s.open(&f1).unwrap_err(), FrameError::Unauthentic);
        let (mut c, mut s) = handshake(KEY, KEY).unwrap();
        let f0b = c.seal(b"zero").unwrap();
        assert_ne!(f0, f0b, "fresh keys per connection");
        // From another connection (same counter).
        assert_eq!(s.open(&f0).unwrap_err(), FrameError::Unauthentic);
        let (mut c, mut s) = handshake(KEY, KEY).unwrap();
        let f = c.seal(b"zero").unwrap();
        assert_eq!(s.open(&f).unwrap(), b"zero");
        // Replayed.
        assert_eq!(s.open(&f).unwrap_err(), FrameError::Unauthentic);
        let (mut c, mut s) = handshake(KEY, KEY).unwrap();
        let mut f = c.seal(b"zero").unwrap();
        f[6] ^= 1;
        assert_eq!(s.open(&f).unwrap_err(), FrameError::Unauthentic);
        let (mut c, mut s) = handshake(KEY, KEY).unwrap();
        let f = c.seal(b"zero").unwrap();
        assert_eq!(
            s.open(&f[..f.len() - 1]).unwrap_err(),
            FrameError::Unauthentic
        );
        // Its own frame reflected back: the other direction's key.
        let (mut c, _) = handshake(KEY, KEY).unwrap();
        let f = c.seal(b"zero").unwrap();
        assert_eq!(c.open(&f).unwrap_err(), FrameError::Unauthentic);
        // Too long to seal.
        assert!(matches!(
            c.seal(&vec![0; MAX_BODY + 1]),
            Err(FrameError::TooLong { .. })
        ));
    }

    #[test]
    fn hellos_round_trip_and_bad_ones_are_named() {
        let ch = ClientHello {
            purpose: Purpose::LinkCheck,
            serial: "TD-1.x_2".into(),
            nonce: [9; NONCE_LEN],
        };
        assert_eq!(ClientHello::decode(&ch.encode()).unwrap(), ch);
        let sh = ServerHello {
            cluster_id: 0xdead_beef,
            serial: "S".into(),
            nonce: [5; NONCE_LEN],
        };
        assert_eq!(ServerHello::decode(&sh.encode()).unwrap(), sh);
        let mut b = ch.encode();
        b[4] = 9;
        assert_eq!(
            ClientHello::decode(&b).unwrap_err(),
            HandshakeError::Version { theirs: 9 }
        );
        assert!(HandshakeError::Version { theirs: 9 }
            .to_string()
            .contains("protocol 9"));
        let mut b = ch.encode();
        b[5] = 77;
        assert!(ClientHello::decode(&b).is_err(), "unknown purpose");
        let b = ch.encode();
        assert!(ClientHello::decode(&b[..b.len() - 1]).is_err(), "short");
        assert!(ClientHello::decode(&sh.encode()).is_err(), "a server hello");
        assert!(ClientHello::decode(b"GET / HTTP/1.1\r\n\r\n").is_err());
        let bad = ClientHello {
            serial: "a b".into(),
            ..ch.clone()
        };
        assert!(ClientHello::decode(&bad.encode()).is_err(), "bad serial");
        assert!(ClientHello::decode(&[]).is_err());
    }

    #[test]
    fn a_refusal_reaches_the_client_with_its_reason() {
        let (mut c, _) = ClientHandshake::new(Purpose::Join, "TDLAB0002", [1; NONCE_LEN]);
        assert_eq!(
            c.on_hello(&refusal("busy: 8 connections")).unwrap_err(),
            HandshakeError::Refused("busy: 8 connections".into())
        );
        let long = "é".repeat(300);
        let r = refusal(&long);
        assert!(r.len() <= MAX_PREAUTH);
        assert!(std::str::from_utf8(&r[4..]).is_ok(), "cut on a character");
    }

    #[test]
    fn the_reader_splits_frames_and_refuses_oversized_ones_before_reading_them() {
        let mut r = FrameReader::preauth();
        let a = preauth_frame(b"hello");
        let b = preauth_frame(b"proof");
        let mut all = a.clone();
        all.extend_from_slice(&b);
        // Byte by byte.
        let mut got = Vec::new();
        for &x in &all {
            r.push(&[x]);
            while let Some(f) = r.next_frame().unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, vec![b"hello".to_vec(), b"proof".to_vec()]);
        let mut r = FrameReader::preauth();
        r.push(&[0x01, 0x01]); // 257 bytes announced
        assert_eq!(
            r.next_frame().unwrap_err(),
            FrameError::TooLong {
                len: 257,
                max: MAX_PREAUTH
            }
        );
        let (mut c, mut s) = handshake(KEY, KEY).unwrap();
        let mut r = FrameReader::preauth();
        r.switch_to_sealed();
        let f = c.seal(b"x").unwrap();
        r.push(&f[..3]);
        assert_eq!(r.next_frame().unwrap(), None);
        r.push(&f[3..]);
        let whole = r.next_frame().unwrap().unwrap();
        assert_eq!(s.open(&whole).unwrap(), b"x");
        r.push(&[0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(r.next_frame(), Err(FrameError::TooLong { .. })));
    }
}
