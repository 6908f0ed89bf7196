//! The keys of the HA protocols, derived once at start from the cluster's
//! pre-shared key.
//!
//! Last-resort heartbeats and ICMP checks travel over the data networks,
//! where any host can record them: a key derived quickly from the
//! pre-shared key would let it test guesses offline at billions per
//! second. So the pre-shared key goes through Argon2id (memory-hard,
//! [`KdfParams::DEFAULT`], a few hundred milliseconds once per start) into
//! a master secret, and HKDF-SHA256 splits that into one key per purpose:
//!
//! ```text
//! master    = Argon2id(psk, salt = "tandem-ha-kdf-v1" || cluster id (u32 BE), 32 bytes)
//! prk       = HKDF-Extract(salt = "tandem-ha-keys-v1", master)
//! heartbeat = HKDF-Expand(prk, "heartbeat"    || cluster id, 32)   HMAC of the heartbeats (UDP 5405 and last resort)
//! check     = HKDF-Expand(prk, "icmp-check"   || cluster id, 32)   HMAC of the ICMP checks and their answers
//! k2k       = HKDF-Expand(prk, "k2k-master"   || cluster id, 32)   input of the state sync's own derivation
//! control   = HKDF-Expand(prk, "peer-control" || cluster id, 32)   the members' proof and session keys on TCP 1300
//! ```
//!
//! Every secret we hold is zeroed on drop ([`Zeroizing`]); `Debug` never
//! shows one. (ring's HMAC keys and HKDF states, built from these bytes,
//! are not wiped by ring.)

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ring::hkdf;
use zeroize::Zeroizing;

/// Length of every derived key.
pub const KEY_LEN: usize = 32;

/// A derived secret of [`KEY_LEN`] bytes, zeroed on drop.
#[derive(Clone)]
pub struct KeyBytes(Zeroizing<[u8; KEY_LEN]>);

impl KeyBytes {
    /// The bytes (hand them straight to the consumer; do not copy them
    /// into buffers that outlive the call).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0[..]
    }
}

impl fmt::Debug for KeyBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyBytes(<redacted>)")
    }
}

/// The cost of the memory-hard derivation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes over the memory.
    pub passes: u32,
    /// Lanes.
    pub lanes: u32,
}

impl KdfParams {
    /// 64 MiB, 2 passes, 1 lane: about 130 ms on one core of the lab
    /// machine (measured by `hakeys::tests::the_default_cost_is_a_few_hundred_ms`),
    /// paid once per start, off the heartbeat path.
    pub const DEFAULT: KdfParams = KdfParams {
        memory_kib: 64 * 1024,
        passes: 2,
        lanes: 1,
    };
}

/// Why the keys could not be derived.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The pre-shared key is empty.
    #[error("the HA pre-shared key (ha.psk) is empty: set the cluster key on both members")]
    EmptyPsk,
    /// Argon2 refused its parameters (a build defect, not a configuration one).
    #[error("the key derivation (Argon2id) failed: {0}; report this defect")]
    Kdf(String),
}

/// The HA keys of one cluster (see the module documentation).
pub struct HaKeys {
    cluster_id: u32,
    heartbeat: KeyBytes,
    check: KeyBytes,
    k2k: KeyBytes,
    control: KeyBytes,
    took: Duration,
}

impl fmt::Debug for HaKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HaKeys")
            .field("cluster_id", &self.cluster_id)
            .field("took", &self.took)
            .finish_non_exhaustive()
    }
}

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn expand(prk: &hkdf::Prk, label: &[u8], cluster_id: u32) -> Result<KeyBytes, KeyError> {
    let cid = cluster_id.to_be_bytes();
    let info = [label, &cid[..]];
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    prk.expand(&info, Len(KEY_LEN))
        .and_then(|okm| okm.fill(&mut out[..]))
        .map_err(|_| KeyError::Kdf("HKDF output length".into()))?;
    Ok(KeyBytes(out))
}

impl HaKeys {
    /// Derives the keys of `cluster_id` from `psk` with the default cost.
    pub fn derive(psk: &[u8], cluster_id: u32) -> Result<HaKeys, KeyError> {
        Self::derive_with(psk, cluster_id, KdfParams::DEFAULT)
    }

    /// Derives the keys with an explicit Argon2id cost (tests use a cheap one).
    pub fn derive_with(psk: &[u8], cluster_id: u32, p: KdfParams) -> Result<HaKeys, KeyError> {
        use argon2::{Algorithm, Argon2, Params, Version};
        if psk.is_empty() {
            return Err(KeyError::EmptyPsk);
        }
        let t0 = Instant::now();
        let params = Params::new(p.memory_kib, p.passes, p.lanes, Some(KEY_LEN))
            .map_err(|e| KeyError::Kdf(e.to_string()))?;
        let mut salt = [0u8; 20];
        salt[..16].copy_from_slice(b"tandem-ha-kdf-v1");
        salt[16..].copy_from_slice(&cluster_id.to_be_bytes());
        let mut master = Zeroizing::new([0u8; KEY_LEN]);
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_into(psk, &salt, &mut master[..])
            .map_err(|e| KeyError::Kdf(e.to_string()))?;
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"tandem-ha-keys-v1").extract(&master[..]);
        Ok(HaKeys {
            cluster_id,
            heartbeat: expand(&prk, b"heartbeat", cluster_id)?,
            check: expand(&prk, b"icmp-check", cluster_id)?,
            k2k: expand(&prk, b"k2k-master", cluster_id)?,
            control: expand(&prk, b"peer-control", cluster_id)?,
            took: t0.elapsed(),
        })
    }

    /// The cluster the keys belong to.
    pub fn cluster_id(&self) -> u32 {
        self.cluster_id
    }

    /// The key of the heartbeats' HMAC.
    pub fn heartbeat(&self) -> &KeyBytes {
        &self.heartbeat
    }

    /// The key of the ICMP checks and of the answers the workers compute.
    pub fn check(&self) -> &KeyBytes {
        &self.check
    }

    /// The master key of the state sync (K2K derives its own keys from it).
    pub fn k2k_master(&self) -> &KeyBytes {
        &self.k2k
    }

    /// The key of the members' service on TCP 1300 (join, configuration
    /// sync): both prove it in the handshake, and the session keys come
    /// from it.
    pub fn control(&self) -> &KeyBytes {
        &self.control
    }

    /// How long the derivation took.
    pub fn took(&self) -> Duration {
        self.took
    }
}

/// The keys derived in this process, so that the derivation runs once per
/// start whoever asks first (the daemon, the dataplane's state sync, the
/// election). One entry: a process is one member of one cluster.
struct Memo {
    psk: Zeroizing<Vec<u8>>,
    cluster_id: u32,
    keys: Arc<HaKeys>,
}

static MEMO: Mutex<Option<Memo>> = Mutex::new(None);

fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The keys of `cluster_id` under `psk`: derived on the first call of the
/// process (slow, on purpose), the same keys on later calls.
pub fn for_cluster(psk: &str, cluster_id: u32) -> Result<Arc<HaKeys>, KeyError> {
    let mut memo = MEMO.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(m) = memo.as_ref() {
        if m.cluster_id == cluster_id && same(&m.psk, psk.as_bytes()) {
            return Ok(m.keys.clone());
        }
    }
    let keys = Arc::new(HaKeys::derive(psk.as_bytes(), cluster_id)?);
    *memo = Some(Memo {
        psk: Zeroizing::new(psk.as_bytes().to_vec()),
        cluster_id,
        keys: keys.clone(),
    });
    Ok(keys)
}

/// The state sync's master key for `ha` ([`for_cluster`]); empty if the
/// keys cannot be derived, which the state sync refuses at start with a
/// clear error (the daemon derives the keys first and reports why).
pub fn k2k_master(ha: &tandem_config::HaConfig) -> KeyBytes {
    for_cluster(ha.psk.expose(), ha.cluster_id).map_or_else(
        |_| KeyBytes(Zeroizing::new([0u8; KEY_LEN])),
        |k| k.k2k_master().clone(),
    )
}

/// Records `keys` as the keys of `psk` (a key change derived them on its
/// own thread): a later [`for_cluster`] with the new key finds them.
pub fn remember(psk: &str, keys: &Arc<HaKeys>) {
    let mut memo = MEMO.lock().unwrap_or_else(|e| e.into_inner());
    *memo = Some(Memo {
        psk: Zeroizing::new(psk.as_bytes().to_vec()),
        cluster_id: keys.cluster_id,
        keys: keys.clone(),
    });
}

impl HaKeys {
    /// Whether `other` holds the same keys (constant time).
    pub fn same_as(&self, other: &HaKeys) -> bool {
        self.cluster_id == other.cluster_id
            && same(self.heartbeat.as_bytes(), other.heartbeat.as_bytes())
            && same(self.control.as_bytes(), other.control.as_bytes())
    }
}

// ---------------------------------------------------------------------
// Key change (HA-REFERENCE F8)
// ---------------------------------------------------------------------

/// Where a change of the cluster key stands on this member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyPhase {
    /// One key.
    Steady,
    /// The new keys are accepted too; ours still go out under the old.
    Staged,
    /// Ours go out under the new keys; the old ones are still accepted
    /// until the peer is heard under the new ones.
    Committed,
}

impl KeyPhase {
    /// As hainfo says it.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyPhase::Steady => "steady",
            KeyPhase::Staged => "staged",
            KeyPhase::Committed => "committed",
        }
    }
}

/// The keys in force: what we send under, and what we also accept.
#[derive(Clone, Debug)]
pub struct KeySet {
    /// We send under these, and try them first.
    pub current: Arc<HaKeys>,
    /// Also accepted during a change: the new keys once staged, the old
    /// ones once committed.
    pub other: Option<Arc<HaKeys>>,
    /// Where the change stands.
    pub phase: KeyPhase,
    /// Bumped at every step (consumers compare it with theirs).
    pub generation: u64,
    /// When the last step was taken.
    pub since: Instant,
}

impl KeySet {
    /// The keys accepted, current first.
    pub fn accepted(&self) -> impl Iterator<Item = &Arc<HaKeys>> {
        std::iter::once(&self.current).chain(self.other.iter())
    }
}

/// The HA keys of a member, shared by everything that seals or opens HA
/// traffic: the election (heartbeats, ICMP checks), the workers (check
/// answers), the state sync and the members' service. A key change
/// goes through [`KeyRing::stage`], [`KeyRing::commit`] and
/// [`KeyRing::retire`]; each consumer sees [`KeyRing::generation`] move
/// and takes the new [`KeySet`] on its own thread.
#[derive(Debug)]
pub struct KeyRing {
    set: std::sync::RwLock<KeySet>,
    generation: std::sync::atomic::AtomicU64,
}

impl KeyRing {
    /// A ring holding `keys` only.
    pub fn new(keys: Arc<HaKeys>) -> Arc<KeyRing> {
        Arc::new(KeyRing {
            set: std::sync::RwLock::new(KeySet {
                current: keys,
                other: None,
                phase: KeyPhase::Steady,
                generation: 0,
                since: Instant::now(),
            }),
            generation: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The step count (cheap: one atomic load).
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The keys in force.
    pub fn get(&self) -> KeySet {
        self.set.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The keys in force, unless a step is being written this instant
    /// (for threads that must not wait: try again on the next turn).
    pub fn try_get(&self) -> Option<KeySet> {
        match self.set.try_read() {
            Ok(s) => Some(s.clone()),
            Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner().clone()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// The keys we send under.
    pub fn current(&self) -> Arc<HaKeys> {
        self.get().current
    }

    /// Runs a step under the write lock; with `wait` false, gives up
    /// (`Ok(false)`, nothing changed) when a reader holds the keys this
    /// instant, for threads that must not wait.
    fn step_with(
        &self,
        wait: bool,
        f: impl FnOnce(&mut KeySet) -> Result<bool, String>,
    ) -> Result<bool, String> {
        let mut s = match self.set.try_write() {
            Ok(s) => s,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) if !wait => return Ok(false),
            Err(std::sync::TryLockError::WouldBlock) => {
                self.set.write().unwrap_or_else(|e| e.into_inner())
            }
        };
        let changed = f(&mut s)?;
        if changed {
            s.generation += 1;
            s.since = Instant::now();
            self.generation
                .store(s.generation, std::sync::atomic::Ordering::Release);
        }
        Ok(changed)
    }

    fn step(&self, f: impl FnOnce(&mut KeySet) -> Result<bool, String>) -> Result<(), String> {
        self.step_with(true, f).map(|_| ())
    }

    /// Step 1: `new` is accepted too. Again with the same keys: nothing
    /// changes; with other keys: they replace a staged change that was
    /// never committed.
    pub fn stage(&self, new: Arc<HaKeys>) -> Result<(), String> {
        self.step(|s| match s.phase {
            _ if s.current.same_as(&new) && s.phase != KeyPhase::Committed => Err(
                "the new key is the key in force: choose another one".into(),
            ),
            KeyPhase::Committed => Err(
                "the previous key change is still finishing (the old key is accepted until the peer is heard under the new one): try again in a few seconds".into(),
            ),
            KeyPhase::Staged if s.other.as_ref().is_some_and(|o| o.same_as(&new)) => Ok(false),
            _ => {
                s.other = Some(new);
                s.phase = KeyPhase::Staged;
                Ok(true)
            }
        })
    }

    /// Step 2: ours go out under the staged keys; the old ones are still
    /// accepted. Again once committed: nothing changes.
    pub fn commit(&self) -> Result<(), String> {
        self.step_with(true, Self::commit_step).map(|_| ())
    }

    /// [`KeyRing::commit`] for a thread that must not wait: true if it
    /// committed a staged change now.
    pub fn try_commit(&self) -> bool {
        self.step_with(false, Self::commit_step).unwrap_or(false)
    }

    fn commit_step(s: &mut KeySet) -> Result<bool, String> {
        match s.phase {
            KeyPhase::Steady => Err("no key change is staged on this member".into()),
            KeyPhase::Committed => Ok(false),
            KeyPhase::Staged => {
                let new = s.other.take().expect("a staged change holds its keys");
                s.other = Some(std::mem::replace(&mut s.current, new));
                s.phase = KeyPhase::Committed;
                Ok(true)
            }
        }
    }

    /// Step 3: the old keys are no longer accepted. True if this ended a
    /// committed change (never waits: false when the keys are being read
    /// this instant; try again).
    pub fn retire(&self) -> bool {
        self.step_with(false, |s| {
            if s.phase != KeyPhase::Committed {
                return Ok(false);
            }
            s.other = None;
            s.phase = KeyPhase::Steady;
            Ok(true)
        })
        .unwrap_or(false)
    }

    /// Undoes a staged change that was not committed. True if there was
    /// one (never waits, as [`KeyRing::retire`]).
    pub fn abort(&self) -> bool {
        self.step_with(false, |s| {
            if s.phase != KeyPhase::Staged {
                return Ok(false);
            }
            s.other = None;
            s.phase = KeyPhase::Steady;
            Ok(true)
        })
        .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHEAP: KdfParams = KdfParams {
        memory_kib: 64,
        passes: 1,
        lanes: 1,
    };

    #[test]
    fn keys_differ_per_purpose_per_cluster_and_per_psk() {
        let a = HaKeys::derive_with(b"Lab-Cluster-Key-2026", 7, CHEAP).unwrap();
        let b = HaKeys::derive_with(b"Lab-Cluster-Key-2026", 7, CHEAP).unwrap();
        assert_eq!(a.heartbeat().as_bytes(), b.heartbeat().as_bytes());
        assert_ne!(a.heartbeat().as_bytes(), a.check().as_bytes());
        assert_ne!(a.check().as_bytes(), a.k2k_master().as_bytes());
        assert_ne!(a.k2k_master().as_bytes(), a.control().as_bytes());
        assert_ne!(a.heartbeat().as_bytes(), a.control().as_bytes());
        let c = HaKeys::derive_with(b"Lab-Cluster-Key-2026", 8, CHEAP).unwrap();
        assert_ne!(a.heartbeat().as_bytes(), c.heartbeat().as_bytes());
        let d = HaKeys::derive_with(b"Lab-Cluster-Key-2027", 7, CHEAP).unwrap();
        assert_ne!(a.heartbeat().as_bytes(), d.heartbeat().as_bytes());
        // The pre-shared key itself is not one of them.
        assert_ne!(&a.k2k_master().as_bytes()[..20], b"Lab-Cluster-Key-2026");
    }

    #[test]
    fn an_empty_key_is_refused_with_a_clear_error() {
        let e = HaKeys::derive_with(b"", 7, CHEAP).unwrap_err();
        assert_eq!(e, KeyError::EmptyPsk);
        assert!(e.to_string().contains("ha.psk"));
    }

    #[test]
    fn debug_never_shows_a_key() {
        let a = HaKeys::derive_with(b"Lab-Cluster-Key-2026", 7, CHEAP).unwrap();
        let text = format!("{a:?} {:?}", a.check());
        for k in [a.heartbeat(), a.check(), a.k2k_master()] {
            assert!(!text.contains(&format!("{:?}", k.as_bytes())), "{text}");
        }
        assert!(text.contains("redacted"), "{text}");
    }

    /// The default cost is memory-hard and takes a noticeable time, paid
    /// once: the memo hands the same keys out again at no cost.
    #[test]
    fn the_default_cost_is_a_few_hundred_ms_and_paid_once() {
        let a = for_cluster("Lab-Cluster-Key-2026", 77).unwrap();
        eprintln!("Argon2id {:?}: {:?}", KdfParams::DEFAULT, a.took());
        assert!(a.took() >= Duration::from_millis(20), "{:?}", a.took());
        let t = Instant::now();
        let b = for_cluster("Lab-Cluster-Key-2026", 77).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(t.elapsed() < Duration::from_millis(20));
        let c = HaKeys::derive_with(b"Lab-Cluster-Key-2026", 77, KdfParams::DEFAULT).unwrap();
        assert_eq!(a.k2k_master().as_bytes(), c.k2k_master().as_bytes());
    }

    #[test]
    fn a_key_change_goes_stage_commit_retire_and_refuses_what_would_break_it() {
        let old = Arc::new(HaKeys::derive_with(b"Lab-Cluster-Key-2026", 7, CHEAP).unwrap());
        let new = Arc::new(HaKeys::derive_with(b"Lab-Cluster-Key-2027", 7, CHEAP).unwrap());
        let ring = KeyRing::new(old.clone());
        assert_eq!(ring.generation(), 0);
        assert!(ring
            .commit()
            .unwrap_err()
            .contains("no key change is staged"));
        let same = Arc::new(HaKeys::derive_with(b"Lab-Cluster-Key-2026", 7, CHEAP).unwrap());
        assert!(ring.stage(same).unwrap_err().contains("the key in force"));
        assert_eq!(ring.generation(), 0, "a refused step changes nothing");

        ring.stage(new.clone()).unwrap();
        let s = ring.get();
        assert_eq!(s.phase, KeyPhase::Staged);
        assert!(s.current.same_as(&old), "still sending under the old keys");
        assert!(s.other.as_ref().unwrap().same_as(&new));
        assert_eq!(s.accepted().count(), 2);
        ring.stage(new.clone()).unwrap();
        assert_eq!(
            ring.generation(),
            1,
            "staging the same keys again is no step"
        );

        assert!(ring.try_commit());
        let s = ring.get();
        assert_eq!((s.phase, s.generation), (KeyPhase::Committed, 2));
        assert!(!ring.try_commit(), "committed already");
        assert!(s.current.same_as(&new));
        assert!(
            s.other.as_ref().unwrap().same_as(&old),
            "the old keys still accepted"
        );
        ring.commit().unwrap();
        assert_eq!(ring.generation(), 2);
        let third = Arc::new(HaKeys::derive_with(b"Lab-Cluster-Key-2028", 7, CHEAP).unwrap());
        assert!(ring.stage(third).unwrap_err().contains("still finishing"));
        assert!(!ring.abort(), "a committed change is not undone");

        assert!(ring.retire());
        let s = ring.get();
        assert_eq!((s.phase, s.generation), (KeyPhase::Steady, 3));
        assert!(s.other.is_none() && s.current.same_as(&new));
        assert!(!ring.retire());

        ring.stage(old.clone()).unwrap();
        assert!(ring.abort());
        let s = ring.get();
        assert_eq!(s.phase, KeyPhase::Steady);
        assert!(s.current.same_as(&new) && s.other.is_none());
        assert!(ring.try_get().is_some());
    }
}
