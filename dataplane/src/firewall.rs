//! The stateful firewall of one worker: parse, connection tracking, NAT
//! and the filter policy, plugged into the router as its [`Filter`].
//!
//! Order of a packet (the order of Linux's PREROUTING/FORWARD/POSTROUTING
//! and of pf's rdr/filter/nat):
//! 1. parse (drops counted per [`ParseDrop`]); non-first fragments take the
//!    flow of their first fragment from the [`FragmentTable`];
//! 2. a packet of a known connection is tracked (TCP windows, states) and
//!    translated as its connection says, then routed;
//! 3. an ICMP error passes only if it is about a known connection;
//! 4. a packet that may open a connection: destination NAT, routing, the
//!    filter policy (on the translated destination), source NAT, creation.
//!
//! Traffic addressed to the node itself (not translated) is left to the
//! router (ICMP echo) and is not tracked, so it is never synchronised
//! (HA-REFERENCE F17).
//!
//! Everything is sans-IO: time comes in as `now_ms`.

use std::net::Ipv4Addr;
use std::sync::Arc;

use crate::conntrack::{
    reply_key, ConnId, ConnMeta, ConnView, CreateError, Dir, Nat, NatKind, Shard, ShardConfig,
    Track, TrackDrop,
};
use crate::counters::Counter;
use crate::flow::{proto, FlowKey, L4Info};
use crate::frag::FragmentTable;
use crate::parse::{parse_ipv4, update_l4_checksum_for_addr, Fragment, ParseDrop, ParsedIpv4};
use crate::policy::{Action as PolicyAction, Policy, Query, SnatTarget};
use crate::router::{Filter, FilterVerdict, Reject, Router};
use crate::wire::{checksum, IcmpPacket, Ipv4Packet, TcpPacket, UdpPacket};

/// Drops decided by the firewall outside the parser and the TCP/SCTP
/// state machines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FwDrop {
    /// A `Block` rule (or the default action) matched.
    PolicyBlock,
    /// A `Reject` rule matched (an answer was sent).
    PolicyReject,
    /// The packet cannot open a connection and belongs to none (a TCP
    /// segment without SYN, an ICMP reply nobody asked for).
    NoConnection,
    /// The connection table of this worker is full.
    TableFull,
    /// Its keys collide with another live connection (NAT binding clash).
    ConnConflict,
    /// Inconsistent packet for a new connection.
    ConnInvalid,
    /// No source port left for source NAT.
    NatExhausted,
    /// A later fragment whose first fragment was not seen (or dropped).
    FragmentMiss,
    /// An ICMP error about no known connection.
    IcmpErrorUnrelated,
    /// A new connection reached a member that handed the active role
    /// over and only forwards the connections it has (draining).
    Draining,
}

impl FwDrop {
    /// Number of variants.
    pub const COUNT: usize = 10;
    /// Every variant, in counter order.
    pub const ALL: [FwDrop; Self::COUNT] = [
        FwDrop::PolicyBlock,
        FwDrop::PolicyReject,
        FwDrop::NoConnection,
        FwDrop::TableFull,
        FwDrop::ConnConflict,
        FwDrop::ConnInvalid,
        FwDrop::NatExhausted,
        FwDrop::FragmentMiss,
        FwDrop::IcmpErrorUnrelated,
        FwDrop::Draining,
    ];

    /// Stable snake_case name used in counters and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            FwDrop::PolicyBlock => "policy_block",
            FwDrop::PolicyReject => "policy_reject",
            FwDrop::NoConnection => "no_connection",
            FwDrop::TableFull => "table_full",
            FwDrop::ConnConflict => "conn_conflict",
            FwDrop::ConnInvalid => "conn_invalid",
            FwDrop::NatExhausted => "nat_exhausted",
            FwDrop::FragmentMiss => "fragment_miss",
            FwDrop::IcmpErrorUnrelated => "icmp_error_unrelated",
            FwDrop::Draining => "draining",
        }
    }
}

/// What the control thread can read of one worker's firewall. Written by
/// the worker only (the shard's own counters are mirrored here by
/// [`Firewall::publish`]).
#[derive(Debug)]
// 128: the adjacent-line prefetcher pulls cache lines in pairs.
#[repr(align(128))]
pub struct FirewallCounters {
    /// Packets let through (known connection or new accepted one).
    pub passed: Counter,
    /// Drops per [`FwDrop`].
    pub drops: [Counter; FwDrop::COUNT],
    /// Drops per [`ParseDrop`].
    pub parse_drops: [Counter; ParseDrop::COUNT],
    /// Drops per [`TrackDrop`] (mirrored from the shard).
    pub track_drops: [Counter; TrackDrop::COUNT],
    /// Connections in the shard now (mirrored).
    pub connections: Counter,
    /// Capacity of the shard.
    pub capacity: Counter,
    /// Connections created (mirrored).
    pub created: Counter,
    /// Connections deleted (mirrored).
    pub deleted: Counter,
    /// Connections expired (mirrored).
    pub expired: Counter,
    /// Delta records produced for the HA sync (mirrored).
    pub deltas: Counter,
    /// Rules of the policy in force.
    pub rules: Counter,
    /// Larval (replicated, not active) connections (mirrored).
    pub larval: Counter,
    /// Per-rule counters of the policy in force here, as (policy id, one
    /// per rule then the default action's): the worker publishes a new
    /// set when it takes a new policy.
    pub rule_hits: std::sync::Mutex<(u64, Arc<[RuleCounter]>)>,
    /// Matches of rules with `log: true`, for the control side to write.
    pub rule_log: crossbeam::queue::ArrayQueue<RuleLogRecord>,
    /// Matches of logged rules not logged: over the rate limit.
    pub rule_log_suppressed: Counter,
    /// Matches of logged rules not logged: the queue was full.
    pub rule_log_queue_full: Counter,
}

/// What one rule did since its policy was loaded.
#[derive(Debug, Default)]
pub struct RuleCounter {
    /// Connections it opened (pass) or packets it stopped (block,
    /// reject).
    pub hits: Counter,
    /// Bytes (IP lengths) of those packets: for a pass rule, every packet
    /// in both directions of the connections it opened under this policy.
    pub bytes: Counter,
}

/// Matches of logged rules a worker logs per second at most (then they
/// are counted in `rule_log_suppressed`).
pub const RULE_LOG_PER_SEC: u64 = 100;
/// Matches a worker logs at once after a quiet spell.
pub const RULE_LOG_BURST: u64 = 200;
/// Log records waiting for the control side, per worker.
pub const RULE_LOG_QUEUE: usize = 512;

/// One match of a rule with `log: true` (fixed size, nothing allocated).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleLogRecord {
    /// When (ms since the node's epoch).
    pub at_ms: u64,
    /// The rule ([`crate::policy::Verdict::rule`]).
    pub rule: u32,
    /// What it decided.
    pub action: PolicyAction,
    /// The packet's flow.
    pub key: FlowKey,
    /// Port it came in on, and the one it would leave by.
    pub in_port: u16,
    /// The output port.
    pub out_port: u16,
    /// The packet's length.
    pub len: u16,
}

impl Default for FirewallCounters {
    fn default() -> Self {
        FirewallCounters {
            passed: Counter::default(),
            drops: Default::default(),
            parse_drops: std::array::from_fn(|_| Counter::default()),
            track_drops: Default::default(),
            connections: Counter::default(),
            capacity: Counter::default(),
            created: Counter::default(),
            deleted: Counter::default(),
            expired: Counter::default(),
            deltas: Counter::default(),
            rules: Counter::default(),
            larval: Counter::default(),
            rule_hits: std::sync::Mutex::new((0, Arc::from(Vec::new()))),
            rule_log: crossbeam::queue::ArrayQueue::new(RULE_LOG_QUEUE),
            rule_log_suppressed: Counter::default(),
            rule_log_queue_full: Counter::default(),
        }
    }
}

impl FirewallCounters {
    /// Every drop counter with its name.
    pub fn drop_counts(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        FwDrop::ALL
            .iter()
            .map(|r| (r.as_str(), self.drops[*r as usize].get()))
            .chain(
                ParseDrop::ALL
                    .iter()
                    .map(|r| (r.as_str(), self.parse_drops[*r as usize].get())),
            )
            .chain(
                TrackDrop::ALL
                    .iter()
                    .map(|r| (r.as_str(), self.track_drops[*r as usize].get())),
            )
    }
}

/// Settings of a worker's firewall.
#[derive(Debug, Clone)]
pub struct FirewallSettings {
    /// The connection-table shard.
    pub shard: ShardConfig,
    /// Verify TCP/UDP/ICMP checksums.
    pub verify_checksums: bool,
    /// Fragment-table slots.
    pub fragment_capacity: usize,
    /// Fragment-table timeout.
    pub fragment_timeout_ms: u64,
}

/// Which connections a listing wants (every field narrows it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnQuery {
    /// IP protocol.
    pub proto: Option<u8>,
    /// Either end inside this network.
    pub addr: Option<(Ipv4Addr, u8)>,
    /// Initiator inside this network.
    pub src: Option<(Ipv4Addr, u8)>,
    /// Responder (as addressed) inside this network.
    pub dst: Option<(Ipv4Addr, u8)>,
    /// Either port of the original key.
    pub port: Option<u16>,
    /// At most this many views are returned (all are counted).
    pub limit: usize,
}

fn in_net(a: Ipv4Addr, (net, len): (Ipv4Addr, u8)) -> bool {
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len.min(32)))
    };
    u32::from(a) & mask == u32::from(net) & mask
}

impl ConnQuery {
    /// Whether `v` is wanted.
    pub fn matches(&self, v: &ConnView) -> bool {
        let k = &v.orig;
        self.proto.is_none_or(|p| p == v.proto)
            && self
                .addr
                .is_none_or(|n| in_net(k.src, n) || in_net(k.dst, n))
            && self.src.is_none_or(|n| in_net(k.src, n))
            && self.dst.is_none_or(|n| in_net(k.dst, n))
            && self.port.is_none_or(|p| k.sport == p || k.dport == p)
    }
}

/// One step of a connection listing ([`Firewall::list_chunk`]).
#[derive(Debug, Clone, Default)]
pub struct ConnChunk {
    /// The connections wanted, at most the query's limit.
    pub views: Vec<ConnView>,
    /// How many connections of the walked slots matched.
    pub matched: u64,
    /// The slot the next step starts from; none when the table is done.
    pub next: Option<usize>,
}

/// One worker's stateful firewall.
#[derive(Debug)]
pub struct Firewall {
    shard: Shard,
    frags: FragmentTable,
    policy: Arc<Policy>,
    counters: Arc<FirewallCounters>,
    verify: bool,
    /// The burst being processed: each packet parsed and looked up ahead,
    /// in order (see [`Firewall::prepare_burst`]).
    hints: Vec<Hint>,
    hint_next: usize,
    /// Per-rule counters of `policy` (shared with the counters once
    /// published).
    hits: Arc<[RuleCounter]>,
    hits_published: bool,
    /// When `policy` was taken: connections created before it were
    /// opened by another policy's rules, so their bytes are not counted.
    policy_since_ms: u64,
    /// The rule log's token bucket: (milli-tokens, last refill ms).
    log_bucket: (u64, u64),
    /// Handing over: known connections only (see [`FwDrop::Draining`]).
    draining: bool,
}

fn new_hits(policy: &Policy) -> Arc<[RuleCounter]> {
    (0..policy.counter_slots())
        .map(|_| RuleCounter::default())
        .collect()
}

/// What [`Firewall::prepare_burst`] found for one packet.
#[derive(Debug, Clone, Copy)]
struct Hint {
    /// Address of the packet's IPv4 header (identifies it in the burst).
    ip: usize,
    parsed: ParsedIpv4,
    hit: Option<(crate::conntrack::ConnId, Dir)>,
}

/// The L4 header of a parsed packet, mutable, for NAT rewrites.
fn l4_mut<'a>(ip: &'a mut [u8], p: &ParsedIpv4) -> Option<&'a mut [u8]> {
    let end = usize::from(p.total_len).min(ip.len());
    ip.get_mut(p.l4_offset..end)
}

impl Firewall {
    /// A firewall with an empty table, enforcing `policy`.
    pub fn new(
        settings: FirewallSettings,
        policy: Arc<Policy>,
        counters: Arc<FirewallCounters>,
        now_ms: u64,
    ) -> Self {
        let shard = Shard::new(settings.shard, now_ms);
        counters.capacity.set(shard.capacity() as u64);
        counters.rules.set(policy.stats().rules as u64);
        let hits = new_hits(&policy);
        let mut fw = Firewall {
            shard,
            frags: FragmentTable::new(settings.fragment_capacity, settings.fragment_timeout_ms),
            policy,
            counters,
            verify: settings.verify_checksums,
            hints: Vec::with_capacity(crate::conntrack::BURST),
            hint_next: 0,
            hits,
            hits_published: false,
            policy_since_ms: now_ms,
            draining: false,
            log_bucket: (RULE_LOG_BURST * 1000, now_ms),
        };
        fw.publish_hits();
        fw
    }

    /// Shares this policy's rule hits with the counters (never waits: a
    /// reader holding them now means another try at the next
    /// maintenance).
    fn publish_hits(&mut self) {
        if let Ok(mut h) = self.counters.rule_hits.try_lock() {
            *h = (self.policy.id(), self.hits.clone());
            self.hits_published = true;
        }
    }

    /// Counts a new connection or a stopped packet for the rule that
    /// decided it, and logs the match when the rule says so (within
    /// [`RULE_LOG_PER_SEC`]).
    #[inline]
    fn count_rule(
        &mut self,
        now_ms: u64,
        v: crate::policy::Verdict,
        key: &FlowKey,
        q: &Query,
        len: u16,
    ) {
        if let Some(c) = self.hits.get(self.policy.counter_slot(v.rule)) {
            c.hits.add(1);
            c.bytes.add(u64::from(len));
        }
        if !v.log {
            return;
        }
        let (milli, last) = &mut self.log_bucket;
        let elapsed = now_ms.saturating_sub(*last).min(60_000);
        *milli = (*milli + elapsed * RULE_LOG_PER_SEC).min(RULE_LOG_BURST * 1000);
        *last = now_ms;
        if *milli < 1000 {
            self.counters.rule_log_suppressed.add(1);
            return;
        }
        *milli -= 1000;
        let rec = RuleLogRecord {
            at_ms: now_ms,
            rule: v.rule,
            action: v.action,
            key: *key,
            in_port: q.in_port,
            out_port: q.out_port,
            len,
        };
        if self.counters.rule_log.push(rec).is_err() {
            self.counters.rule_log_queue_full.add(1);
        }
    }

    /// Parses the IPv4 packets of a burst (each slice starts at an IPv4
    /// header; at most [`crate::conntrack::BURST`] are taken) and looks
    /// their connections up together, so that the cache misses of the
    /// burst overlap; [`Filter::check`] of each of these packets then
    /// uses what was found (checked again against the table, which the
    /// burst's earlier packets may change). Call [`Self::end_burst`] once
    /// the burst is processed.
    pub fn prepare_burst<'a>(&mut self, ips: impl Iterator<Item = &'a [u8]>) {
        self.hints.clear();
        self.hint_next = 0;
        let mut keys = [FlowKey::new(Ipv4Addr::UNSPECIFIED, 0, Ipv4Addr::UNSPECIFIED, 0, 0);
            crate::conntrack::BURST];
        for ip in ips.take(crate::conntrack::BURST) {
            // Fragments, and what does not parse, take the normal path.
            if let Ok(p) = parse_ipv4(ip, self.verify) {
                if p.fragment == Fragment::None {
                    keys[self.hints.len()] = p.flow;
                    self.hints.push(Hint {
                        ip: ip.as_ptr() as usize,
                        parsed: p,
                        hit: None,
                    });
                }
            }
        }
        let n = self.hints.len();
        let mut hits = [None; crate::conntrack::BURST];
        self.shard.lookup_burst(&keys[..n], &mut hits[..n]);
        for (h, hit) in self.hints.iter_mut().zip(hits) {
            h.hit = hit;
        }
    }

    /// Forgets the burst of [`Self::prepare_burst`].
    pub fn end_burst(&mut self) {
        self.hints.clear();
        self.hint_next = 0;
    }

    /// The hint of the packet whose IPv4 header is `ip`, if it was
    /// prepared (packets dropped before the filter are skipped).
    fn take_hint(&mut self, ip: &[u8]) -> Option<Hint> {
        let at = ip.as_ptr() as usize;
        while let Some(h) = self.hints.get(self.hint_next).copied() {
            self.hint_next += 1;
            if h.ip == at {
                return Some(h);
            }
        }
        None
    }

    /// Switches to a new policy (between bursts). Existing connections
    /// keep working: they are not re-evaluated.
    pub fn set_policy(&mut self, now_ms: u64, policy: Arc<Policy>) {
        self.counters.rules.set(policy.stats().rules as u64);
        self.hits = new_hits(&policy);
        self.policy_since_ms = now_ms;
        self.policy = policy;
        self.hits_published = false;
        self.publish_hits();
    }

    /// While draining, packets of known connections pass and new ones are
    /// dropped (counted as [`FwDrop::Draining`]): the new active would
    /// not know them.
    pub fn set_draining(&mut self, on: bool) {
        self.draining = on;
    }

    /// The connection-table shard (the sync core and listings use it).
    pub fn shard(&self) -> &Shard {
        &self.shard
    }

    /// The connection-table shard, mutable (HA installs, flush).
    pub fn shard_mut(&mut self) -> &mut Shard {
        &mut self.shard
    }

    /// Housekeeping with bounded work: expires connections and fragment
    /// entries, and publishes the counters.
    pub fn maintain(&mut self, now_ms: u64) {
        self.shard.expire(now_ms, 512);
        self.frags.expire(now_ms, 64);
        self.publish();
        if !self.hits_published {
            self.publish_hits();
        }
    }

    /// Copies the shard's counters to the shared ones.
    pub fn publish(&self) {
        let s = self.shard.counters();
        let c = &self.counters;
        c.connections.set(self.shard.len() as u64);
        c.larval.set(self.shard.larval() as u64);
        c.created.set(s.created);
        c.deleted.set(s.deleted);
        c.expired.set(s.expired);
        c.deltas.set(s.deltas);
        for (i, v) in s.drops.iter().enumerate() {
            c.track_drops[i].set(*v);
        }
    }

    /// One step of a listing: walks at most `slots` table slots from slot
    /// `from`, returns the views of the connections `q` wants (at most
    /// `q.limit`), how many matched, and where the next step starts (none
    /// at the end of the table). Bounded work, so a worker answers between
    /// bursts without stalling its packets; a listing made of steps is not
    /// an atomic snapshot (connections created or removed meanwhile may be
    /// missed).
    pub fn list_chunk(&self, now_ms: u64, q: &ConnQuery, from: usize, slots: usize) -> ConnChunk {
        let end = from.saturating_add(slots.max(1)).min(self.shard.capacity());
        let mut chunk = ConnChunk {
            views: Vec::new(),
            matched: 0,
            next: (end < self.shard.capacity()).then_some(end),
        };
        for i in from..end {
            let Some(v) = self.shard.view(now_ms, ConnId(i as u32)) else {
                continue;
            };
            if q.matches(&v) {
                chunk.matched += 1;
                if chunk.views.len() < q.limit {
                    chunk.views.push(v);
                }
            }
        }
        chunk
    }

    /// One step of a flush: deletes the connections of at most `slots`
    /// table slots from slot `from` (a delete delta for each synced one);
    /// returns how many, and where the next step starts (none at the end
    /// of the table).
    pub fn flush_chunk(&mut self, now_ms: u64, from: usize, slots: usize) -> (u64, Option<usize>) {
        let end = from.saturating_add(slots.max(1)).min(self.shard.capacity());
        let mut n = 0;
        for i in from..end {
            n += u64::from(self.shard.delete(now_ms, ConnId(i as u32)));
        }
        self.publish();
        (n, (end < self.shard.capacity()).then_some(end))
    }

    fn drop(&self, why: FwDrop) -> FilterVerdict {
        self.counters.drops[why as usize].add(1);
        FilterVerdict::Drop
    }

    fn pass(&self, router: &Router, dst: Ipv4Addr) -> FilterVerdict {
        self.counters.passed.add(1);
        match router.route_table().lookup(dst) {
            Some(r) => FilterVerdict::Route(*r),
            // The router drops it and answers net unreachable.
            None => FilterVerdict::Continue,
        }
    }

    fn snat_address(&self, router: &Router, target: SnatTarget, key: &FlowKey) -> Option<Ipv4Addr> {
        match target {
            SnatTarget::Address(a) => Some(a),
            SnatTarget::Interface { port } => {
                router.interface(port)?.addresses.first().map(|a| a.0)
            }
            SnatTarget::Pool { first, last } => {
                // The same inside host always gets the same pool address
                // (sticky, as operators expect of a pool).
                let span = u32::from(last).saturating_sub(u32::from(first)) + 1;
                let pick = u32::from(key.src).wrapping_mul(0x9e37_79b1) % span;
                Some(Ipv4Addr::from(u32::from(first) + pick))
            }
        }
    }

    fn new_connection(
        &mut self,
        now_ms: u64,
        in_port: u16,
        ip: &mut [u8],
        p: &ParsedIpv4,
        router: &Router,
    ) -> FilterVerdict {
        if self.draining {
            return self.drop(FwDrop::Draining);
        }
        let key = p.flow;
        let icmp_type = match p.l4 {
            L4Info::IcmpQuery { ty, .. } | L4Info::IcmpOther { ty, .. } => Some(ty),
            _ => None,
        };
        let mut q = Query::from_flow(&key, in_port, 0, icmp_type);
        let dnat = self.policy.nat_destination(&q);
        let mut translated = key;
        if let Some((addr, port)) = dnat {
            translated.dst = addr;
            if let Some(port) = port {
                translated.dport = port;
            }
        } else if router.is_local(key.dst) {
            // To the node itself: the router answers (not tracked).
            return FilterVerdict::Continue;
        }
        let Some(route) = router.route_table().lookup(translated.dst).copied() else {
            return FilterVerdict::Continue;
        };
        q.out_port = route.port;
        q.dst = translated.dst;
        q.dport = translated.dport;
        let verdict = self.policy.classify(&q);
        self.count_rule(now_ms, verdict, &key, &q, p.total_len);
        match verdict.action {
            PolicyAction::Pass => {}
            PolicyAction::Block => return self.drop(FwDrop::PolicyBlock),
            PolicyAction::Reject => {
                self.counters.drops[FwDrop::PolicyReject as usize].add(1);
                return FilterVerdict::Reject(match key.proto {
                    proto::TCP => Reject::TcpReset,
                    proto::UDP => Reject::PortUnreachable,
                    _ => Reject::AdminProhibited,
                });
            }
        }
        let nat = if dnat.is_some() {
            Some(Nat {
                kind: NatKind::Dnat,
                orig: key,
                translated,
            })
        } else {
            match self
                .policy
                .nat_source(&q)
                .and_then(|t| self.snat_address(router, t, &key))
            {
                Some(addr) => match self.shard.snat(&key, addr) {
                    Ok(n) => Some(n),
                    Err(_) => return self.drop(FwDrop::NatExhausted),
                },
                None => None,
            }
        };
        let meta = ConnMeta {
            rule: verdict.rule,
            sync: verdict.sync,
            log: verdict.log,
            in_port,
            out_port: route.port,
            nat,
        };
        let id = match self.shard.create(now_ms, &key, &p.l4, meta) {
            Ok(id) => id,
            Err(CreateError::TableFull) => return self.drop(FwDrop::TableFull),
            Err(CreateError::NotInitial) => return self.drop(FwDrop::NoConnection),
            Err(CreateError::Exists(_) | CreateError::KeyConflict(_)) => {
                return self.drop(FwDrop::ConnConflict)
            }
            Err(CreateError::Invalid) => return self.drop(FwDrop::ConnInvalid),
        };
        match self
            .shard
            .track(now_ms, id, Dir::Original, &p.l4, u32::from(p.total_len))
        {
            Track::Accept | Track::Closed => {}
            // A brand-new entry refusing its first packet: counted by the
            // shard; nothing was sent.
            Track::Drop(_) | Track::Stale => return FilterVerdict::Drop,
        }
        if let Some(n) = nat {
            translate(ip, p, &n, Dir::Original);
        }
        self.pass(router, translated.dst)
    }

    fn icmp_error(
        &mut self,
        ip: &mut [u8],
        p: &ParsedIpv4,
        inner: FlowKey,
        router: &Router,
    ) -> FilterVerdict {
        // `inner` is the packet the error is about, as it was on the wire
        // the error comes from (translated, if its connection has NAT): its
        // reply is what the table knows on this side, and the direction
        // found is the one the error travels.
        match self.shard.lookup(&reply_key(&inner)) {
            Some((id, error_dir)) => {
                let nat = self.shard.get(id).and_then(|c| c.nat());
                if let Some(n) = nat {
                    translate_icmp_error(ip, p, &n, error_dir.other());
                }
                let dst = Ipv4Packet::new_unchecked(&*ip).dst_addr();
                self.pass(router, dst)
            }
            None => self.drop(FwDrop::IcmpErrorUnrelated),
        }
    }
}

impl Filter for Firewall {
    fn check(
        &mut self,
        now_ms: u64,
        in_port: u16,
        ip: &mut [u8],
        router: &Router,
    ) -> FilterVerdict {
        let hint = self.take_hint(ip);
        let p = match hint {
            Some(h) => h.parsed,
            None => match parse_ipv4(ip, self.verify) {
                Ok(p) => p,
                Err(d) => {
                    self.counters.parse_drops[d as usize].add(1);
                    return FilterVerdict::Drop;
                }
            },
        };
        match p.fragment {
            Fragment::None => {}
            Fragment::First { .. } => {
                self.frags.insert(now_ms, &p);
            }
            Fragment::NonFirst { .. } => {
                let Some(flow) = self.frags.lookup(now_ms, p.src, p.dst, p.proto, p.ident) else {
                    return self.drop(FwDrop::FragmentMiss);
                };
                if !p.more_fragments {
                    self.frags.remove(p.src, p.dst, p.proto, p.ident);
                }
                // A later fragment follows its first fragment's connection;
                // it has no L4 header to track or translate.
                return match self.shard.lookup(&flow) {
                    Some((id, dir)) => {
                        if let Some(n) = self.shard.get(id).and_then(|c| c.nat()) {
                            translate_addresses(ip, &n, dir);
                        }
                        let dst = Ipv4Packet::new_unchecked(&*ip).dst_addr();
                        self.pass(router, dst)
                    }
                    None => self.drop(FwDrop::FragmentMiss),
                };
            }
        }
        // The burst's lookup, if it still holds (an earlier packet of the
        // burst may have created or deleted entries).
        let found = match hint.and_then(|h| h.hit) {
            Some((id, dir)) if self.shard.get(id).is_some_and(|c| c.key(dir) == p.flow) => {
                Some((id, dir))
            }
            _ => self.shard.lookup(&p.flow),
        };
        if let Some((id, dir)) = found {
            match self
                .shard
                .track(now_ms, id, dir, &p.l4, u32::from(p.total_len))
            {
                Track::Accept | Track::Closed => {
                    // (A closing packet may have removed the entry.)
                    let c = self.shard.get(id);
                    // Bytes of connections this policy's rules opened.
                    if let Some(c) = c.filter(|c| c.created_ms() >= self.policy_since_ms) {
                        if let Some(r) = self.hits.get(self.policy.counter_slot(c.rule())) {
                            r.bytes.add(u64::from(p.total_len));
                        }
                    }
                    if let Some(n) = c.and_then(|c| c.nat()) {
                        translate(ip, &p, &n, dir);
                    }
                    let dst = Ipv4Packet::new_unchecked(&*ip).dst_addr();
                    return self.pass(router, dst);
                }
                // Counted by the shard.
                Track::Drop(_) => return FilterVerdict::Drop,
                // The old entry is gone: this packet may open a new one.
                Track::Stale => {}
            }
        }
        if let L4Info::IcmpError { inner, .. } = p.l4 {
            return self.icmp_error(ip, &p, inner, router);
        }
        self.new_connection(now_ms, in_port, ip, &p, router)
    }
}

/// Rewrites the IP addresses of `ip` (and the IP header checksum) for a
/// packet of a connection with binding `n` going `dir`; returns the
/// (old, new) address pairs changed, for the L4 checksum.
fn translate_addresses(ip: &mut [u8], n: &Nat, dir: Dir) -> Option<(Ipv4Addr, Ipv4Addr)> {
    let mut pkt = Ipv4Packet::new_unchecked(&mut *ip);
    let change = match (n.kind, dir) {
        (NatKind::Snat, Dir::Original) => {
            let old = pkt.src_addr();
            pkt.set_src_addr(n.translated.src);
            (old, n.translated.src)
        }
        (NatKind::Snat, Dir::Reply) => {
            let old = pkt.dst_addr();
            pkt.set_dst_addr(n.orig.src);
            (old, n.orig.src)
        }
        (NatKind::Dnat, Dir::Original) => {
            let old = pkt.dst_addr();
            pkt.set_dst_addr(n.translated.dst);
            (old, n.translated.dst)
        }
        (NatKind::Dnat, Dir::Reply) => {
            let old = pkt.src_addr();
            pkt.set_src_addr(n.orig.dst);
            (old, n.orig.dst)
        }
    };
    pkt.fill_checksum();
    (change.0 != change.1).then_some(change)
}

/// The (field, new value) of the port a packet of binding `n` going `dir`
/// carries after translation: `true` for the source port.
fn port_change(n: &Nat, dir: Dir) -> (bool, u16) {
    match (n.kind, dir) {
        (NatKind::Snat, Dir::Original) => (true, n.translated.sport),
        (NatKind::Snat, Dir::Reply) => (false, n.orig.sport),
        (NatKind::Dnat, Dir::Original) => (false, n.translated.dport),
        (NatKind::Dnat, Dir::Reply) => (true, n.orig.dport),
    }
}

/// Translates a packet of a connection with binding `n` going `dir`:
/// addresses, ports (ICMP: the query identifier) and every checksum.
fn translate(ip: &mut [u8], p: &ParsedIpv4, n: &Nat, dir: Dir) {
    let addr = translate_addresses(ip, n, dir);
    let (src_port, port) = port_change(n, dir);
    let Some(l4) = l4_mut(ip, p) else { return };
    if let Some((old, new)) = addr {
        // A first fragment carries the whole datagram's checksum: the
        // incremental update stays right.
        let _ = update_l4_checksum_for_addr(p.proto, l4, old, new);
    }
    match p.proto {
        proto::TCP if l4.len() >= 20 => {
            let mut t = TcpPacket::new_unchecked(l4);
            if src_port {
                t.rewrite_src_port(port);
            } else {
                t.rewrite_dst_port(port);
            }
        }
        proto::UDP if l4.len() >= 8 => {
            let mut u = UdpPacket::new_unchecked(l4);
            if src_port {
                u.rewrite_src_port(port);
            } else {
                u.rewrite_dst_port(port);
            }
        }
        proto::ICMP if l4.len() >= 8 && matches!(p.l4, L4Info::IcmpQuery { .. }) => {
            // The identifier rides in `sport` both ways (flow.rs).
            let ident = match dir {
                Dir::Original => n.translated.sport,
                Dir::Reply => n.orig.sport,
            };
            let mut icmp = IcmpPacket::new_unchecked(l4);
            crate::parse::rewrite_icmp_ident(&mut icmp, ident);
        }
        _ => {}
    }
}

/// Translates an ICMP error about a packet of a connection with binding
/// `n`; the quoted packet went `quoted_dir`, the error travels the other
/// way. The outer header is translated like any packet of the other
/// direction; the quoted header like a packet of `quoted_dir` translated
/// back. ICMP checksums are recomputed (errors are small and rare).
fn translate_icmp_error(ip: &mut [u8], p: &ParsedIpv4, n: &Nat, quoted_dir: Dir) {
    let error_dir = quoted_dir.other();
    translate_addresses(ip, n, error_dir);
    let Some(icmp) = l4_mut(ip, p) else { return };
    let Some(inner) = icmp.get_mut(8..) else {
        return;
    };
    if inner.len() < 20 || inner[0] >> 4 != 4 {
        return;
    }
    let ihl = usize::from(inner[0] & 0x0f) * 4;
    // The quoted packet, as the far side saw it, was translated; as the
    // near side sent it, it was not: put it back the way it went out on
    // the side the error is going to.
    let (is_src, addr, port) = match (n.kind, quoted_dir) {
        (NatKind::Snat, Dir::Original) => (true, n.orig.src, n.orig.sport),
        (NatKind::Snat, Dir::Reply) => (false, n.orig.src, n.orig.sport),
        (NatKind::Dnat, Dir::Original) => (false, n.orig.dst, n.orig.dport),
        (NatKind::Dnat, Dir::Reply) => (true, n.orig.dst, n.orig.dport),
    };
    {
        let mut q = Ipv4Packet::new_unchecked(&mut inner[..]);
        if is_src {
            q.set_src_addr(addr);
        } else {
            q.set_dst_addr(addr);
        }
        q.fill_checksum();
    }
    if let Some(ports) = inner.get_mut(ihl..ihl + 4) {
        let at = if is_src { 0 } else { 2 };
        ports[at..at + 2].copy_from_slice(&port.to_be_bytes());
    }
    // The quoted L4 checksum is not fixed (only 8 bytes are quoted);
    // recompute the ICMP checksum over the whole message.
    icmp[2] = 0;
    icmp[3] = 0;
    let ck = checksum::checksum(icmp);
    icmp[2..4].copy_from_slice(&ck.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::ConnMeta;
    use crate::policy::Backend;

    /// A firewall with a table of `capacity` slots and `n` UDP
    /// connections (198.18.1.10:10000+i -> 198.18.2.10:9000).
    fn firewall_with(capacity: u32, n: u16) -> Firewall {
        let cfg = tandem_config::policy::parse("(rules: [], default_action: Pass)", "t.ron", None)
            .unwrap_or_else(|e| panic!("{e}"));
        let ifaces = vec![("in".to_owned(), 0), ("out".to_owned(), 1)];
        let policy = Policy::compile_with(&cfg, &ifaces, Backend::Linear).unwrap();
        let settings = FirewallSettings {
            shard: ShardConfig {
                capacity,
                ..ShardConfig::default()
            },
            verify_checksums: true,
            fragment_capacity: 16,
            fragment_timeout_ms: 1000,
        };
        let mut fw = Firewall::new(
            settings,
            Arc::new(policy),
            Arc::new(FirewallCounters::default()),
            0,
        );
        for i in 0..n {
            let key = FlowKey::new(
                Ipv4Addr::new(198, 18, 1, 10),
                10_000 + i,
                Ipv4Addr::new(198, 18, 2, 10),
                9000,
                proto::UDP,
            );
            fw.shard_mut()
                .create(1, &key, &L4Info::Udp, ConnMeta::default())
                .unwrap();
        }
        fw
    }

    #[test]
    fn a_listing_in_chunks_walks_the_whole_table_once_and_each_chunk_is_bounded() {
        let fw = firewall_with(1000, 300);
        let q = ConnQuery {
            limit: usize::MAX,
            ..ConnQuery::default()
        };
        let (mut from, mut steps, mut seen, mut matched) = (Some(0), 0, Vec::new(), 0);
        while let Some(f) = from {
            let c = fw.list_chunk(2, &q, f, 64);
            assert!(c.views.len() <= 64, "a step walks at most 64 slots");
            matched += c.matched;
            seen.extend(c.views.iter().map(|v| v.orig.sport));
            from = c.next;
            steps += 1;
            assert!(steps <= 1000 / 64 + 1, "the walk ends");
        }
        assert_eq!(steps, 1000usize.div_ceil(64));
        assert_eq!(matched, 300);
        seen.sort_unstable();
        assert_eq!(seen, (10_000..10_300).collect::<Vec<u16>>(), "each once");
    }

    #[test]
    fn a_listing_chunk_counts_every_match_but_returns_at_most_the_limit() {
        let fw = firewall_with(512, 100);
        let q = ConnQuery {
            limit: 7,
            port: Some(9000),
            ..ConnQuery::default()
        };
        let c = fw.list_chunk(2, &q, 0, 512);
        assert_eq!((c.views.len(), c.matched, c.next), (7, 100, None));
        let none = ConnQuery {
            limit: 10,
            port: Some(1),
            ..ConnQuery::default()
        };
        assert_eq!(fw.list_chunk(2, &none, 0, 512).matched, 0);
        // A start past the end is an empty, final step.
        let past = fw.list_chunk(2, &q, 10_000, 64);
        assert_eq!((past.matched, past.next), (0, None));
    }

    #[test]
    fn a_flush_in_chunks_deletes_everything_a_bounded_step_at_a_time() {
        let mut fw = firewall_with(1000, 300);
        let (first, next) = fw.flush_chunk(2, 0, 100);
        assert_eq!(next, Some(100));
        assert!(first <= 100);
        assert_eq!(fw.shard().len() as u64, 300 - first);
        let (mut total, mut from) = (first, next);
        while let Some(f) = from {
            let (n, next) = fw.flush_chunk(2, f, 100);
            total += n;
            from = next;
        }
        assert_eq!(total, 300);
        assert!(fw.shard().is_empty());
        assert_eq!(fw.counters.connections.get(), 0, "counters published");
    }

    /// Each decision counts for its rule (the default action last); a
    /// logged rule's matches are queued within the rate limit and the
    /// rest counted; a new policy starts new counters, published for the
    /// readers.
    #[test]
    fn rule_hits_are_counted_and_logged_matches_rate_limited() {
        let cfg = tandem_config::policy::parse(
            r#"(rules: [
                (name: "dns", action: Pass, proto: Udp, dst_ports: ["53"], log: true),
                (action: Block, proto: Tcp),
            ], default_action: Block)"#,
            "t.ron",
            None,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let ifaces = vec![("in".to_owned(), 0), ("out".to_owned(), 1)];
        let policy = Arc::new(Policy::compile_with(&cfg, &ifaces, Backend::Linear).unwrap());
        let counters = Arc::new(FirewallCounters::default());
        let mut fw = Firewall::new(
            FirewallSettings {
                shard: ShardConfig::default(),
                verify_checksums: true,
                fragment_capacity: 16,
                fragment_timeout_ms: 1000,
            },
            policy.clone(),
            counters.clone(),
            0,
        );
        let key = |proto, dport| {
            FlowKey::new(
                Ipv4Addr::new(198, 18, 1, 10),
                40000,
                Ipv4Addr::new(198, 18, 2, 10),
                dport,
                proto,
            )
        };
        let mut decide = |now: u64, k: FlowKey| {
            let q = Query::from_flow(&k, 0, 1, None);
            let v = policy.classify(&q);
            fw.count_rule(now, v, &k, &q, 60);
            v
        };
        // 300 DNS matches at once: the burst (200) is logged, 100 not.
        for _ in 0..300 {
            assert_eq!(decide(0, key(proto::UDP, 53)).rule, 0);
        }
        for _ in 0..5 {
            decide(0, key(proto::TCP, 23));
        }
        decide(0, key(proto::UDP, 123));
        // A second later, 100 more may be logged.
        for _ in 0..150 {
            decide(1000, key(proto::UDP, 53));
        }
        let (id, hits) = counters.rule_hits.lock().unwrap().clone();
        assert_eq!(id, policy.id());
        let got: Vec<(u64, u64)> = hits.iter().map(|c| (c.hits.get(), c.bytes.get())).collect();
        assert_eq!(
            got,
            [(450, 450 * 60), (5, 5 * 60), (1, 60)],
            "per rule, then the default action"
        );
        assert_eq!(counters.rule_log.len(), 300);
        assert_eq!(counters.rule_log_suppressed.get(), 150);
        let r = counters.rule_log.pop().unwrap();
        assert_eq!(
            (r.rule, r.action, r.key.dport, r.len),
            (0, PolicyAction::Pass, 53, 60)
        );
        // A new policy: new counters, published.
        let again = Arc::new(Policy::compile_with(&cfg, &ifaces, Backend::Linear).unwrap());
        fw.set_policy(2000, again.clone());
        let (id, hits) = counters.rule_hits.lock().unwrap().clone();
        assert_eq!(id, again.id());
        assert!(hits.iter().all(|c| c.hits.get() == 0 && c.bytes.get() == 0));
        assert_ne!(again.id(), policy.id());
    }
}
