//! Datagram sealing: ChaCha20-Poly1305 keys derived from the cluster's
//! pre-shared key with HKDF-SHA256 (both from `ring`).
//!
//! Every key depends on the sender's session id, a random 16-byte value
//! it draws at every start, so no key is ever used by two runs of a node:
//!
//! - hello key(sender) = HKDF-SHA256(salt = cluster id as 4 big-endian
//!   bytes, ikm = PSK, info = "tandem k2k v2 hello" || sender serial (16)
//!   || sender session id (16)). It seals only what a node sends before it
//!   knows the receiver's current session (Hellos).
//! - data key(sender -> receiver) = HKDF-SHA256(same salt and ikm, info =
//!   "tandem k2k v2 data" || sender serial || sender session id ||
//!   receiver session id). Everything else. Because the receiver's id is
//!   in it, a datagram recorded before the receiver restarted does not
//!   authenticate after the restart: replays cannot be applied.
//! - nonce = 4 zero bytes || seq (8, big-endian). A sender never reuses a
//!   sequence number within its session (the stream and the control
//!   datagrams count apart, bit 63), and each session has its own keys,
//!   so a (key, nonce) pair is never reused, whatever the clock does and
//!   however often a node restarts. A retransmission resends the
//!   identical bytes.
//! - authenticated only: AAD = header and body, empty plaintext, the tag
//!   follows the body. Encrypted: AAD = header, plaintext = body.
//!
//! The derived key bytes go straight from HKDF's output into ring's key
//! type and never sit in a buffer of ours; the PSK copy we keep is zeroed
//! on drop (`zeroize`). ring does not wipe its own key schedules on drop.

use super::wire::{Header, Serial, SessionId, HEADER_LEN, NO_SESSION, TAG_LEN};
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use ring::hkdf;
use std::fmt;
use zeroize::Zeroizing;

/// The HKDF info prefix of hello keys.
pub const HELLO_LABEL: &[u8] = b"tandem k2k v2 hello";
/// The HKDF info prefix of data keys.
pub const DATA_LABEL: &[u8] = b"tandem k2k v2 data";

/// The cluster's pre-shared key. Zeroed on drop; `Debug` does not show it.
#[derive(Clone)]
pub struct Psk(Zeroizing<Vec<u8>>);

impl Psk {
    /// A key from its bytes (the caller should wipe its own copy).
    pub fn new(bytes: &[u8]) -> Psk {
        Psk(Zeroizing::new(bytes.to_vec()))
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the key is empty (refused by the session).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `other` is the same key (constant time).
    pub fn same_as(&self, other: &Psk) -> bool {
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .zip(other.0.iter())
                .fold(0u8, |a, (x, y)| a | (x ^ y))
                == 0
    }
}

impl fmt::Debug for Psk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Psk(<{} bytes>)", self.0.len())
    }
}

/// The sealing key of one direction (the datagrams of one sender).
pub(crate) struct DirKey(LessSafeKey);

impl fmt::Debug for DirKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DirKey(<redacted>)")
    }
}

/// The datagram does not authenticate under the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Unauthentic;

fn nonce(seq: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&seq.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

fn derive(psk: &Psk, cluster_id: u32, info: &[&[u8]]) -> DirKey {
    let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, &cluster_id.to_be_bytes());
    let prk = salt.extract(&psk.0);
    // 32 bytes is far below HKDF's limit of 255 * 32.
    let okm = prk
        .expand(info, &CHACHA20_POLY1305)
        .expect("HKDF output length within limit");
    DirKey(LessSafeKey::new(UnboundKey::from(okm)))
}

impl DirKey {
    /// The key of the Hellos `sender` sends in session `session`.
    pub(crate) fn hello(
        psk: &Psk,
        cluster_id: u32,
        sender: &Serial,
        session: &SessionId,
    ) -> DirKey {
        derive(psk, cluster_id, &[HELLO_LABEL, sender, session])
    }

    /// The key of everything `sender` (session `session`) sends to the
    /// receiver's session `peer_session`.
    pub(crate) fn data(
        psk: &Psk,
        cluster_id: u32,
        sender: &Serial,
        session: &SessionId,
        peer_session: &SessionId,
    ) -> DirKey {
        derive(
            psk,
            cluster_id,
            &[DATA_LABEL, sender, session, peer_session],
        )
    }

    /// The key a datagram with header `h` is sealed with.
    pub(crate) fn for_header(psk: &Psk, h: &Header) -> DirKey {
        if h.peer_session == NO_SESSION {
            DirKey::hello(psk, h.cluster_id, &h.serial, &h.session)
        } else {
            DirKey::data(psk, h.cluster_id, &h.serial, &h.session, &h.peer_session)
        }
    }

    /// Seals `d[..hdr_len + body_len]` (header then body) in place and
    /// appends the tag; returns the datagram's length. `d` must have room
    /// for the tag.
    pub(crate) fn seal(
        &self,
        encrypt: bool,
        seq: u64,
        d: &mut [u8],
        hdr_len: usize,
        body_len: usize,
    ) -> usize {
        let n = hdr_len + body_len;
        let (head, tail) = d.split_at_mut(n);
        let tag = if encrypt {
            let (h, body) = head.split_at_mut(hdr_len);
            self.0
                .seal_in_place_separate_tag(nonce(seq), Aad::from(&h[..]), body)
        } else {
            self.0
                .seal_in_place_separate_tag(nonce(seq), Aad::from(&head[..]), &mut [])
        }
        // Fails only for inputs of more than 256 GiB.
        .expect("AEAD input length within limit");
        tail[..TAG_LEN].copy_from_slice(tag.as_ref());
        n + TAG_LEN
    }

    /// Authenticates (and, if `encrypted`, decrypts) datagram `d` whose
    /// header is `d[..hdr_len]`; returns the plaintext body (in `d` when
    /// only authenticated, in `scratch` when decrypted). The caller has
    /// checked `d.len() >= hdr_len + TAG_LEN` and `scratch.len() >= d.len()`.
    pub(crate) fn open<'a>(
        &self,
        encrypted: bool,
        seq: u64,
        d: &'a [u8],
        hdr_len: usize,
        scratch: &'a mut [u8],
    ) -> Result<&'a [u8], Unauthentic> {
        let n = d.len() - TAG_LEN;
        if encrypted {
            let sealed = &mut scratch[..d.len() - hdr_len];
            sealed.copy_from_slice(&d[hdr_len..]);
            let plain = self
                .0
                .open_in_place(nonce(seq), Aad::from(&d[..hdr_len]), sealed)
                .map_err(|_| Unauthentic)?;
            Ok(&*plain)
        } else {
            let mut tag = [0u8; TAG_LEN];
            tag.copy_from_slice(&d[n..]);
            self.0
                .open_in_place(nonce(seq), Aad::from(&d[..n]), &mut tag)
                .map_err(|_| Unauthentic)?;
            Ok(&d[hdr_len..n])
        }
    }
}

/// Seals a datagram made of `header` (whose flags say whether to
/// encrypt) and `body` into `out` with the key its header names (the
/// hello key without a peer session, else the data key) under `psk`;
/// returns its length, or `None` if `out` is too small. For tools and
/// tests that craft datagrams (a wrong-key probe, the fuzz target); a
/// [`super::Session`] seals its own.
pub fn seal_datagram(psk: &Psk, header: &Header, body: &[u8], out: &mut [u8]) -> Option<usize> {
    let n = HEADER_LEN + body.len() + TAG_LEN;
    if out.len() < n {
        return None;
    }
    header.emit(out);
    out[HEADER_LEN..HEADER_LEN + body.len()].copy_from_slice(body);
    let key = DirKey::for_header(psk, header);
    Some(key.seal(
        header.is_encrypted(),
        header.seq,
        out,
        HEADER_LEN,
        body.len(),
    ))
}

const _: () = assert!(TAG_LEN == aead::MAX_TAG_LEN);
