//! Where the replies of a translated connection go when their key belongs
//! to another worker.
//!
//! A connection lives in the shard of the worker that owns its original
//! key. Without translation the reply key is the reverse and has the same
//! owner (the hash is symmetric); SNAT chooses its port so that it does too.
//! DNAT cannot choose anything: the reply key (server -> client) usually
//! belongs to another worker. That shard records it here, and the software
//! dispatch of every worker looks a packet's key up before it hands the
//! packet to the key's owner (as VPP's NAT finds a session's thread in a
//! flow table shared by all threads).
//!
//! Written only by the shard that holds the connection (on link and
//! removal, so also for the passive's installs), read by every worker;
//! split into 64 locks so that readers rarely meet a writer. Workers skip
//! the lookup while it is empty.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::RwLock;

use crate::flow::FlowKey;

const LOCKS: usize = 64;

/// The reply keys that belong to another worker than their connection's.
#[derive(Debug)]
pub struct Redirects {
    parts: Vec<RwLock<HashMap<FlowKey, u16>>>,
    len: AtomicUsize,
}

impl Default for Redirects {
    fn default() -> Self {
        Redirects {
            parts: (0..LOCKS).map(|_| RwLock::new(HashMap::new())).collect(),
            len: AtomicUsize::new(0),
        }
    }
}

impl Redirects {
    fn part(&self, key: &FlowKey) -> &RwLock<HashMap<FlowKey, u16>> {
        // Bits above those that choose the owner.
        &self.parts[(key.symmetric_hash() >> 7) as usize % LOCKS]
    }

    /// Packets with `key` go to worker `owner`.
    pub fn insert(&self, key: FlowKey, owner: usize) {
        let mut p = self
            .part(&key)
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if p.insert(key, owner as u16).is_none() {
            self.len.fetch_add(1, Ordering::Release);
        }
    }

    /// Forgets `key` if it still points at `owner`.
    pub fn remove(&self, key: &FlowKey, owner: usize) {
        let mut p = self
            .part(key)
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if p.get(key) == Some(&(owner as u16)) {
            p.remove(key);
            self.len.fetch_sub(1, Ordering::Release);
        }
    }

    /// The worker packets with `key` go to, if it is recorded.
    #[inline]
    pub fn get(&self, key: &FlowKey) -> Option<usize> {
        if self.len.load(Ordering::Acquire) == 0 {
            return None;
        }
        self.part(key)
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(key)
            .map(|&w| usize::from(w))
    }

    /// Keys recorded.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// True when nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
