//! The filter policy: which connections may be created, which are logged
//! and synchronised to the peer, and which NAT rule applies to them.
//!
//! [`Policy::compile`] turns a validated [`PolicyConfig`] (plus the node's
//! interface-to-port map) into an immutable,
//! `Send + Sync` classifier. Workers hold an `Arc<Policy>` and swap it
//! between bursts on reload; nothing here changes after compilation.
//!
//! Semantics, whatever the backend:
//! - filter rules are evaluated in file order and the first enabled rule
//!   that matches decides ([`Verdict::rule`] is its index in the file);
//! - there is no implicit HA rule (F22): the members talk over HA links
//!   that are kernel interfaces, never DPDK ports, so no HA service
//!   crosses the policy; the HA frames that do reach the data ports (the
//!   last-resort heartbeats and the ICMP checks) are taken and policed by
//!   [`crate::hadata`] before any packet meets the policy (docs/ha.md);
//! - `default_action` applies when nothing matches;
//! - destination NAT is looked up before routing, source NAT after (the
//!   output port is then known); the first matching rule of each kind
//!   applies.
//!
//! Two backends give the same answers:
//! - **ACL** (production): DPDK's librte_acl, a multi-bit trie over all
//!   fields whose lookup cost depends on the key length, not on the number
//!   of rules. File order becomes priority (rule `i` of `N` gets `N - i`;
//!   librte_acl returns the highest-priority match). It needs the EAL, since
//!   its memory comes from DPDK's heaps.
//! - **Linear** ([`LinearClassifier`]): a scan in rule order. It is the
//!   reference the ACL backend is checked against, and what
//!   [`Policy::compile`] uses when the EAL is not initialised (unit tests,
//!   tools); its cost grows with the number of rules.

use std::net::Ipv4Addr;

use tandem_config::policy::{
    parse_addr_range, parse_port_range, AddrRange, NatKind, NatRule, PortRange, SnatAddress,
};
use tandem_config::ConfigError;

use crate::dpdk::{AclContext, AclError, AclKey, AclRule, Eal, ACL_MAX_PRIORITY};
use crate::flow::{proto, FlowKey};

pub use tandem_config::policy::{Action, PolicyConfig};

/// [`Verdict::rule`] when no rule matched and `default_action` applied.
pub const DEFAULT: u32 = u32::MAX;

/// Default UDP port of the heartbeats.
pub const HA_HEARTBEAT_PORT: u16 = 5405;
/// Default UDP port of the K2K state sync.
pub const HA_SYNC_PORT: u16 = 44242;
/// Default TCP port of join, config sync and control between members.
pub const HA_CONTROL_PORT: u16 = 1300;

/// What the policy is asked about one packet (the first of a connection).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Query {
    /// DPDK port the packet arrived on.
    pub in_port: u16,
    /// DPDK port it leaves through (after routing; ignored by DNAT).
    pub out_port: u16,
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// IP protocol number.
    pub proto: u8,
    /// Source port (TCP, UDP, SCTP; otherwise ignored).
    pub sport: u16,
    /// Destination port (TCP, UDP, SCTP; otherwise ignored).
    pub dport: u16,
    /// ICMP type (ICMP only; `None` when unknown, e.g. a fragment).
    pub icmp_type: Option<u8>,
}

impl Default for Query {
    fn default() -> Self {
        Query {
            in_port: 0,
            out_port: 0,
            src: Ipv4Addr::UNSPECIFIED,
            dst: Ipv4Addr::UNSPECIFIED,
            proto: 0,
            sport: 0,
            dport: 0,
            icmp_type: None,
        }
    }
}

impl Query {
    /// The query of a flow key (whose ICMP `sport` is the echo identifier,
    /// not the type, so the type is given separately).
    pub fn from_flow(key: &FlowKey, in_port: u16, out_port: u16, icmp_type: Option<u8>) -> Query {
        Query {
            in_port,
            out_port,
            src: key.src,
            dst: key.dst,
            proto: key.proto,
            sport: key.sport,
            dport: key.dport,
            icmp_type,
        }
    }

    /// The classifier key: ICMP carries its type in the source port field
    /// (0xffff when unknown, which no type range contains).
    #[inline]
    fn acl_key(&self) -> AclKey {
        let (sport, dport) = if self.proto == proto::ICMP {
            (self.icmp_type.map_or(0xffff, u16::from), 0)
        } else {
            (self.sport, self.dport)
        };
        AclKey::new(
            self.proto,
            self.src,
            self.dst,
            sport,
            dport,
            self.in_port,
            self.out_port,
        )
    }
}

/// The policy's decision about a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Verdict {
    /// Index of the deciding rule in `rules`, or [`DEFAULT`].
    pub rule: u32,
    /// Pass, block or reject.
    pub action: Action,
    /// Log the connection.
    pub log: bool,
    /// Synchronise the connection to the peer (HA, F14).
    pub sync: bool,
}

impl Default for Verdict {
    fn default() -> Self {
        Verdict {
            rule: DEFAULT,
            action: Action::Block,
            log: false,
            sync: true,
        }
    }
}

/// The new source of a source-NAT rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SnatTarget {
    /// One address.
    Address(Ipv4Addr),
    /// An inclusive range of addresses to pick from.
    Pool {
        /// First address.
        first: Ipv4Addr,
        /// Last address.
        last: Ipv4Addr,
    },
    /// The first address of the interface behind this DPDK port (the
    /// rule's `out` interface: masquerade). Resolved by the caller from the
    /// node configuration, so an address change needs no recompile.
    Interface {
        /// The out interface's DPDK port.
        port: u16,
    },
}

/// Which classifier a [`Policy`] runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// ACL when the EAL is initialised, linear otherwise.
    Auto,
    /// The linear scan (reference).
    Linear,
    /// librte_acl (needs the EAL).
    Acl,
}

/// Why a policy could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The configuration breaks a validation rule (a policy built in code,
    /// or interfaces that do not exist on this node).
    #[error("invalid policy:\n{0}")]
    Invalid(#[from] ConfigError),
    /// The ACL backend was requested without an initialised EAL.
    #[error("the ACL classifier needs the DPDK EAL, which is not initialised")]
    NoEal,
    /// A rule expands to more classifier entries than allowed.
    #[error("{what} expands to {entries} classifier entries (addresses x ports); allowed at most {MAX_ENTRIES}: use networks or ranges that align on prefixes, or fewer port ranges")]
    TooLarge {
        /// The rule, e.g. `rules[3]`.
        what: String,
        /// The entries it would need.
        entries: u64,
    },
    /// More rules than the classifier can order.
    #[error("{0} rules; allowed at most {ACL_MAX_PRIORITY}")]
    TooManyRules(usize),
    /// librte_acl failed.
    #[error(transparent)]
    Acl(#[from] AclError),
}

/// The most classifier entries a policy (filter or one NAT kind) may need.
pub const MAX_ENTRIES: u64 = 4_000_000;

/// What one classifier entry slot matches: every field must match; empty
/// lists match anything. A slot (a rule) may have several of these.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleMatch {
    /// IP protocol, or any.
    pub proto: Option<u8>,
    /// Source address ranges (empty: any).
    pub src: Vec<AddrRange>,
    /// Destination address ranges (empty: any).
    pub dst: Vec<AddrRange>,
    /// Source port ranges (empty: any).
    pub sport: Vec<PortRange>,
    /// Destination port ranges (empty: any).
    pub dport: Vec<PortRange>,
    /// ICMP types (empty: any).
    pub icmp_types: Vec<u8>,
    /// Input port, or any.
    pub in_port: Option<u16>,
    /// Output port, or any.
    pub out_port: Option<u16>,
}

impl RuleMatch {
    /// Whether `q` matches, field by field (the reference semantics).
    pub fn matches(&self, q: &Query) -> bool {
        let addr = |set: &[AddrRange], ip| set.is_empty() || set.iter().any(|r| r.contains(ip));
        let port =
            |set: &[PortRange], p| set.is_empty() || set.iter().any(|&(lo, hi)| lo <= p && p <= hi);
        self.proto.is_none_or(|p| p == q.proto)
            && self.in_port.is_none_or(|p| p == q.in_port)
            && self.out_port.is_none_or(|p| p == q.out_port)
            && addr(&self.src, q.src)
            && addr(&self.dst, q.dst)
            && port(&self.sport, q.sport)
            && port(&self.dport, q.dport)
            && (self.icmp_types.is_empty()
                || (q.proto == proto::ICMP
                    && q.icmp_type.is_some_and(|t| self.icmp_types.contains(&t))))
    }

    /// How many ACL entries the match expands to.
    fn entries(&self) -> u64 {
        let prefixes = |set: &[AddrRange]| {
            if set.is_empty() {
                1
            } else {
                set.iter().map(|r| r.to_cidrs().len() as u64).sum()
            }
        };
        let n = |len: usize| len.max(1) as u64;
        prefixes(&self.src)
            * prefixes(&self.dst)
            * n(self.sport.len() + self.icmp_types.len())
            * n(self.dport.len())
    }

    /// The ACL entries of this match (cross product of prefixes and port
    /// ranges); ICMP types go in the source port field.
    fn acl_rules(&self, priority: i32, userdata: u32, out: &mut Vec<AclRule>) {
        let prefixes = |set: &[AddrRange]| -> Vec<(Ipv4Addr, u8)> {
            if set.is_empty() {
                vec![(Ipv4Addr::UNSPECIFIED, 0)]
            } else {
                set.iter()
                    .flat_map(|r| r.to_cidrs())
                    .map(|c| (c.addr, c.prefix_len))
                    .collect()
            }
        };
        let ports = |set: &[PortRange]| -> Vec<PortRange> {
            if set.is_empty() {
                vec![(0, u16::MAX)]
            } else {
                set.to_vec()
            }
        };
        let sports = if self.icmp_types.is_empty() {
            ports(&self.sport)
        } else {
            self.icmp_types
                .iter()
                .map(|&t| (u16::from(t), u16::from(t)))
                .collect()
        };
        let dports = ports(&self.dport);
        let dsts = prefixes(&self.dst);
        for src in prefixes(&self.src) {
            for &dst in &dsts {
                for &sport in &sports {
                    for &dport in &dports {
                        out.push(AclRule {
                            proto: self.proto,
                            src,
                            dst,
                            sport,
                            dport,
                            in_port: self.in_port,
                            out_port: self.out_port,
                            priority,
                            userdata,
                        });
                    }
                }
            }
        }
    }
}

/// The reference classifier: slots in order, first match wins. Its cost
/// grows with the number of rules; production uses the ACL backend.
#[derive(Clone, Debug, Default)]
pub struct LinearClassifier {
    /// (slot, match) in evaluation order.
    entries: Vec<(u32, RuleMatch)>,
}

impl LinearClassifier {
    /// A classifier over `slots`: slot `i` matches when any of its
    /// matches does.
    pub fn new(slots: &[Vec<RuleMatch>]) -> LinearClassifier {
        LinearClassifier {
            entries: slots
                .iter()
                .enumerate()
                .flat_map(|(i, ms)| ms.iter().map(move |m| (i as u32, m.clone())))
                .collect(),
        }
    }

    /// The first slot that matches `q`.
    pub fn first_match(&self, q: &Query) -> Option<u32> {
        self.entries
            .iter()
            .find(|(_, m)| m.matches(q))
            .map(|&(slot, _)| slot)
    }
}

/// One classifier over ordered slots, on either backend.
#[derive(Debug)]
enum Matcher {
    Linear(LinearClassifier),
    Acl { ctx: AclContext },
}

/// Keys classified per ACL call in bursts.
const CHUNK: usize = 64;

impl Matcher {
    fn build(
        slots: &[Vec<RuleMatch>],
        names: &[String],
        acl: Option<&Eal>,
    ) -> Result<Matcher, PolicyError> {
        let Some(eal) = acl else {
            return Ok(Matcher::Linear(LinearClassifier::new(slots)));
        };
        if slots.len() >= ACL_MAX_PRIORITY as usize {
            return Err(PolicyError::TooManyRules(slots.len()));
        }
        let mut total = 0u64;
        for (ms, what) in slots.iter().zip(names) {
            let entries: u64 = ms.iter().map(RuleMatch::entries).sum();
            if entries > MAX_ENTRIES {
                return Err(PolicyError::TooLarge {
                    what: what.clone(),
                    entries,
                });
            }
            total += entries;
        }
        if total > MAX_ENTRIES {
            return Err(PolicyError::TooLarge {
                what: "the policy".into(),
                entries: total,
            });
        }
        let mut rules = Vec::with_capacity(total as usize);
        let n = slots.len() as i32;
        for (i, ms) in slots.iter().enumerate() {
            for m in ms {
                m.acl_rules(n - i as i32, i as u32 + 1, &mut rules);
            }
        }
        Ok(Matcher::Acl {
            ctx: AclContext::build(eal, &rules)?,
        })
    }

    #[inline]
    fn first(&self, q: &Query) -> Option<u32> {
        match self {
            Matcher::Linear(l) => l.first_match(q),
            Matcher::Acl { ctx } => {
                let mut r = [0u32; 1];
                ctx.classify(&[q.acl_key()], &mut r);
                r[0].checked_sub(1)
            }
        }
    }

    /// Calls `each(i, slot)` for every query, in order.
    #[inline]
    fn burst(&self, qs: &[Query], mut each: impl FnMut(usize, Option<u32>)) {
        match self {
            Matcher::Linear(l) => qs
                .iter()
                .enumerate()
                .for_each(|(i, q)| each(i, l.first_match(q))),
            Matcher::Acl { ctx } => {
                let mut keys = [AclKey::default(); CHUNK];
                let mut res = [0u32; CHUNK];
                for (c, chunk) in qs.chunks(CHUNK).enumerate() {
                    for (k, q) in keys.iter_mut().zip(chunk) {
                        *k = q.acl_key();
                    }
                    ctx.classify(&keys[..chunk.len()], &mut res[..chunk.len()]);
                    for (j, &r) in res[..chunk.len()].iter().enumerate() {
                        each(c * CHUNK + j, r.checked_sub(1));
                    }
                }
            }
        }
    }

    fn entries_and_memory(&self) -> (usize, u64) {
        match self {
            Matcher::Linear(l) => (l.entries.len(), 0),
            Matcher::Acl { ctx } => (ctx.rules(), ctx.memory_bytes()),
        }
    }
}

/// Sizes of a compiled policy, for status and benchmarks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyStats {
    /// The backend in use ([`Backend::Linear`] or [`Backend::Acl`]).
    pub backend: Backend,
    /// Enabled filter rules.
    pub rules: usize,
    /// Classifier entries of the filter (ACL: after expanding address
    /// ranges and port lists).
    pub entries: usize,
    /// DPDK memory of the filter and NAT classifiers (ACL only).
    pub memory_bytes: u64,
}

/// A compiled, immutable policy. `Send + Sync`: share it as `Arc<Policy>`.
#[derive(Debug)]
pub struct Policy {
    /// Unique per compiled policy (in this process): rule counters of
    /// another policy are not summed with these.
    id: u64,
    /// Rules in the file (enabled or not): rule indices are below this.
    file_rules: usize,
    filter: Matcher,
    verdicts: Vec<Verdict>,
    default: Verdict,
    dnat: Matcher,
    dnat_targets: Vec<(Ipv4Addr, Option<u16>)>,
    snat: Matcher,
    snat_targets: Vec<SnatTarget>,
    backend: Backend,
}

impl Policy {
    /// Compiles `cfg` for a node whose interfaces are `ifaces` (name, DPDK
    /// port). Uses the ACL backend when the EAL is initialised, the linear
    /// one otherwise.
    pub fn compile(cfg: &PolicyConfig, ifaces: &[(String, u16)]) -> Result<Policy, PolicyError> {
        Policy::compile_with(cfg, ifaces, Backend::Auto)
    }

    /// [`Policy::compile`] on a chosen backend.
    pub fn compile_with(
        cfg: &PolicyConfig,
        ifaces: &[(String, u16)],
        backend: Backend,
    ) -> Result<Policy, PolicyError> {
        let names: Vec<&str> = ifaces.iter().map(|(n, _)| n.as_str()).collect();
        cfg.validate(Some(&names))?;
        let eal = match backend {
            Backend::Linear => None,
            Backend::Acl => Some(Eal::running().ok_or(PolicyError::NoEal)?),
            Backend::Auto => Eal::running(),
        };
        let backend = if eal.is_some() {
            Backend::Acl
        } else {
            Backend::Linear
        };
        let port_of = |name: &Option<String>| {
            name.as_ref()
                .and_then(|n| ifaces.iter().find(|(i, _)| i == n))
                .map(|&(_, p)| p)
        };
        let resolve = |list: &[String]| -> Vec<AddrRange> {
            // Validated above; "any" is the empty set.
            match cfg.resolve_addresses(list) {
                Ok(v) if v == [AddrRange::ANY] => Vec::new(),
                Ok(v) => v,
                Err(_) => Vec::new(),
            }
        };
        let ports = |list: &[String]| -> Vec<PortRange> {
            list.iter()
                .filter_map(|p| parse_port_range(p).ok())
                .collect()
        };

        // Filter: the enabled rules, in file order.
        let mut slots: Vec<Vec<RuleMatch>> = Vec::new();
        let mut slot_names = Vec::new();
        let mut verdicts = Vec::new();
        for (i, r) in cfg.rules.iter().enumerate().filter(|(_, r)| r.enabled) {
            slots.push(vec![RuleMatch {
                proto: r.proto.map(|p| p.number()),
                src: resolve(&r.from),
                dst: resolve(&r.to),
                sport: ports(&r.src_ports),
                dport: ports(&r.dst_ports),
                icmp_types: r.icmp_types.clone(),
                in_port: port_of(&r.in_interface),
                out_port: port_of(&r.out_interface),
            }]);
            slot_names.push(format!("rules[{i}]"));
            verdicts.push(Verdict {
                rule: i as u32,
                action: r.action,
                log: r.log,
                sync: r.sync,
            });
        }
        let filter = Matcher::build(&slots, &slot_names, eal)?;

        let nat_match = |r: &NatRule| RuleMatch {
            proto: r.proto.map(|p| p.number()),
            src: resolve(&r.from),
            dst: resolve(&r.to),
            sport: ports(&r.src_ports),
            dport: ports(&r.dst_ports),
            icmp_types: Vec::new(),
            in_port: port_of(&r.in_interface),
            out_port: port_of(&r.out_interface),
        };
        let nat_of = |kind: NatKind| {
            cfg.nat
                .iter()
                .enumerate()
                .filter(move |(_, r)| r.enabled && r.kind == kind)
        };
        let (mut dslots, mut dnames, mut dnat_targets) = (Vec::new(), Vec::new(), Vec::new());
        for (i, r) in nat_of(NatKind::Destination) {
            let Some(to) = r.translate_to else { continue };
            dslots.push(vec![nat_match(r)]);
            dnames.push(format!("nat[{i}]"));
            dnat_targets.push((to, r.translate_port));
        }
        let (mut sslots, mut snames, mut snat_targets) = (Vec::new(), Vec::new(), Vec::new());
        for (i, r) in nat_of(NatKind::Source) {
            let target = match &r.to_address {
                Some(SnatAddress::Address(a)) => SnatTarget::Address(*a),
                Some(SnatAddress::Pool(p)) => match parse_addr_range(p) {
                    Ok(r) => SnatTarget::Pool {
                        first: r.first,
                        last: r.last,
                    },
                    Err(_) => continue,
                },
                Some(SnatAddress::Interface) => match port_of(&r.out_interface) {
                    Some(port) => SnatTarget::Interface { port },
                    None => continue,
                },
                None => continue,
            };
            sslots.push(vec![nat_match(r)]);
            snames.push(format!("nat[{i}]"));
            snat_targets.push(target);
        }
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Ok(Policy {
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            file_rules: cfg.rules.len(),
            filter,
            verdicts,
            default: Verdict {
                rule: DEFAULT,
                action: cfg.default_action,
                log: false,
                sync: true,
            },
            dnat: Matcher::build(&dslots, &dnames, eal)?,
            dnat_targets,
            snat: Matcher::build(&sslots, &snames, eal)?,
            snat_targets,
            backend,
        })
    }

    /// The verdict for the first packet of a connection.
    #[inline]
    pub fn classify(&self, q: &Query) -> Verdict {
        self.verdict(self.filter.first(q))
    }

    /// [`Policy::classify`] for a burst: `out[i]` is the verdict of `qs[i]`
    /// (for the first `min(qs.len(), out.len())` queries).
    #[inline]
    pub fn classify_burst(&self, qs: &[Query], out: &mut [Verdict]) {
        let n = qs.len().min(out.len());
        self.filter
            .burst(&qs[..n], |i, slot| out[i] = self.verdict(slot));
    }

    #[inline]
    fn verdict(&self, slot: Option<u32>) -> Verdict {
        slot.and_then(|s| self.verdicts.get(s as usize).copied())
            .unwrap_or(self.default)
    }

    /// The destination NAT of the first matching rule: the new destination
    /// address and, if the rule translates it, port. Ask before routing.
    pub fn nat_destination(&self, q: &Query) -> Option<(Ipv4Addr, Option<u16>)> {
        self.dnat
            .first(q)
            .and_then(|s| self.dnat_targets.get(s as usize).copied())
    }

    /// The source NAT of the first matching rule. Ask after routing, with
    /// `out_port` set.
    pub fn nat_source(&self, q: &Query) -> Option<SnatTarget> {
        self.snat
            .first(q)
            .and_then(|s| self.snat_targets.get(s as usize).copied())
    }

    /// The backend in use ([`Backend::Linear`] or [`Backend::Acl`]).
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// This compiled policy's identity (see [`Policy`]).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Slots of per-rule counters: one per rule of the file, then one for
    /// the default action (index [`Policy::counter_slot`]).
    pub fn counter_slots(&self) -> usize {
        self.file_rules + 1
    }

    /// The counter slot of `rule` (a [`Verdict::rule`]).
    #[inline]
    pub fn counter_slot(&self, rule: u32) -> usize {
        if rule == DEFAULT {
            self.file_rules
        } else {
            (rule as usize).min(self.file_rules)
        }
    }

    /// Sizes of the compiled policy.
    pub fn stats(&self) -> PolicyStats {
        let (entries, mem) = self.filter.entries_and_memory();
        let (_, dmem) = self.dnat.entries_and_memory();
        let (_, smem) = self.snat.entries_and_memory();
        PolicyStats {
            backend: self.backend,
            rules: self.verdicts.len(),
            entries,
            memory_bytes: mem + dmem + smem,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const IN: u16 = 0;
    const OUT: u16 = 1;
    const HA: u16 = 2;

    fn ifaces() -> Vec<(String, u16)> {
        vec![("in".into(), IN), ("out".into(), OUT), ("ha".into(), HA)]
    }

    fn cfg(text: &str) -> PolicyConfig {
        tandem_config::policy::parse(text, "t.ron", None).unwrap_or_else(|e| panic!("{e}"))
    }

    fn policy(text: &str) -> Policy {
        Policy::compile_with(&cfg(text), &ifaces(), Backend::Linear).unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    /// A TCP query from `src` to `dst`:`dport`, in -> out.
    fn tcp(src: &str, dst: &str, dport: u16) -> Query {
        Query {
            in_port: IN,
            out_port: OUT,
            src: ip(src),
            dst: ip(dst),
            proto: proto::TCP,
            sport: 40000,
            dport,
            icmp_type: None,
        }
    }

    fn icmp(src: &str, dst: &str, t: Option<u8>) -> Query {
        Query {
            proto: proto::ICMP,
            icmp_type: t,
            sport: 7,
            dport: 0,
            ..tcp(src, dst, 0)
        }
    }

    const LAB: &str = r#"(
        objects: { "lan": Network("198.18.1.0/24"), "web1": Host("198.18.2.10"),
                   "dmz": Group(["web1", "198.18.3.0/24"]), "both": Group(["dmz", "lan"]) },
        rules: [
            (name: "web", action: Pass, from: ["lan"], to: ["web1"], proto: Tcp, dst_ports: ["80", "443", "8000-8100"], log: true, sync: false),
            (action: Pass, in: Some("in"), proto: Icmp, icmp_types: [8]),
            (action: Reject, proto: Tcp, dst_ports: ["23"]),
            (action: Pass, to: ["dmz"], proto: Udp, enabled: false),
            (action: Pass, from: ["198.18.1.10-198.18.1.20"], to: ["both"], proto: Udp, src_ports: ["1000-2000"]),
            (action: Pass, out: Some("ha"), proto: Gre),
            (action: Block, from: ["any"]),
        ],
        nat: [
            (kind: Source, out: Some("out"), from: ["198.18.1.128/25"], to_address: Pool("198.18.2.100-198.18.2.110")),
            (kind: Source, out: Some("out"), from: ["lan"], to_address: Interface),
            (kind: Source, out: Some("ha"), to_address: Address("198.19.69.1")),
            (kind: Destination, in: Some("out"), to: ["198.18.2.1"], proto: Tcp, dst_ports: ["8080"], translate_to: "198.18.1.10", translate_port: Some(80)),
            (kind: Destination, in: Some("out"), to: ["198.18.2.2"], translate_to: "198.18.1.11"),
        ],
        default_action: Pass,
    )"#;

    #[test]
    fn first_matching_rule_wins() {
        let p = policy(LAB);
        let v = p.classify(&tcp("198.18.1.5", "198.18.2.10", 443));
        assert_eq!((v.rule, v.action), (0, Action::Pass));
        // Telnet to web1 from the LAN: rule 0 does not match the port,
        // rule 2 rejects before the catch-all block.
        let v = p.classify(&tcp("198.18.1.5", "198.18.2.10", 23));
        assert_eq!((v.rule, v.action), (2, Action::Reject));
        // Anything else: the catch-all, not the default.
        let v = p.classify(&tcp("198.18.1.5", "198.18.2.10", 22));
        assert_eq!((v.rule, v.action), (6, Action::Block));
    }

    #[test]
    fn default_action_applies_when_no_rule_matches() {
        let p = policy(r#"(rules: [(action: Block, proto: Udp)], default_action: Pass)"#);
        let v = p.classify(&tcp("198.18.1.5", "198.18.2.10", 80));
        assert_eq!(
            v,
            Verdict {
                rule: DEFAULT,
                action: Action::Pass,
                log: false,
                sync: true
            }
        );
        let p = policy("(rules: [])");
        assert_eq!(
            p.classify(&tcp("1.2.3.4", "5.6.7.8", 1)).action,
            Action::Block
        );
    }

    #[test]
    fn rule_flags_are_carried_in_the_verdict() {
        let p = policy(LAB);
        let v = p.classify(&tcp("198.18.1.5", "198.18.2.10", 8050));
        assert_eq!(
            v,
            Verdict {
                rule: 0,
                action: Action::Pass,
                log: true,
                sync: false
            }
        );
        let v = p.classify(&tcp("198.18.1.5", "198.18.2.10", 23));
        assert!(!v.log && v.sync, "defaults: no log, sync on");
    }

    #[test]
    fn reject_is_its_own_action() {
        let p = policy(LAB);
        assert_eq!(
            p.classify(&tcp("9.9.9.9", "8.8.8.8", 23)).action,
            Action::Reject
        );
    }

    #[test]
    fn disabled_rules_never_match_and_keep_numbering() {
        let p = policy(LAB);
        // Rule 3 (disabled) would pass UDP to the DMZ.
        let q = Query {
            proto: proto::UDP,
            ..tcp("9.9.9.9", "198.18.3.7", 53)
        };
        assert_eq!(p.classify(&q).rule, 6);
        // Rule 4 keeps its file index.
        let q = Query {
            proto: proto::UDP,
            sport: 1500,
            ..tcp("198.18.1.15", "198.18.3.7", 53)
        };
        assert_eq!(p.classify(&q).rule, 4);
    }

    #[test]
    fn source_and_destination_addresses_are_matched() {
        let p = policy(LAB);
        assert_eq!(
            p.classify(&tcp("198.18.4.5", "198.18.2.10", 80)).rule,
            6,
            "source outside lan"
        );
        assert_eq!(
            p.classify(&tcp("198.18.1.5", "198.18.2.11", 80)).rule,
            6,
            "other destination"
        );
        assert_eq!(p.classify(&tcp("198.18.1.0", "198.18.2.10", 80)).rule, 0);
        assert_eq!(p.classify(&tcp("198.18.1.255", "198.18.2.10", 80)).rule, 0);
    }

    #[test]
    fn protocol_is_matched() {
        let p = policy(LAB);
        let q = Query {
            proto: proto::UDP,
            ..tcp("198.18.1.5", "198.18.2.10", 80)
        };
        assert_eq!(p.classify(&q).rule, 6);
        let q = Query {
            proto: 99,
            ..tcp("198.18.1.5", "198.18.2.10", 80)
        };
        assert_eq!(p.classify(&q).rule, 6);
    }

    #[test]
    fn port_lists_and_ranges_are_matched_inclusively() {
        let p = policy(LAB);
        for (port, rule) in [
            (80, 0),
            (443, 0),
            (8000, 0),
            (8100, 0),
            (7999, 6),
            (8101, 6),
            (81, 6),
        ] {
            assert_eq!(
                p.classify(&tcp("198.18.1.5", "198.18.2.10", port)).rule,
                rule,
                "port {port}"
            );
        }
        // Source ports (rule 4: 1000-2000).
        let udp = |sport| Query {
            proto: proto::UDP,
            sport,
            ..tcp("198.18.1.15", "198.18.1.9", 53)
        };
        assert_eq!(p.classify(&udp(1000)).rule, 4);
        assert_eq!(p.classify(&udp(2000)).rule, 4);
        assert_eq!(p.classify(&udp(999)).rule, 6);
        assert_eq!(p.classify(&udp(2001)).rule, 6);
    }

    #[test]
    fn address_ranges_are_matched_inclusively() {
        let p = policy(LAB);
        let udp = |src| Query {
            proto: proto::UDP,
            sport: 1500,
            ..tcp(src, "198.18.1.9", 53)
        };
        assert_eq!(p.classify(&udp("198.18.1.10")).rule, 4);
        assert_eq!(p.classify(&udp("198.18.1.20")).rule, 4);
        assert_eq!(p.classify(&udp("198.18.1.9")).rule, 6);
        assert_eq!(p.classify(&udp("198.18.1.21")).rule, 6);
    }

    #[test]
    fn icmp_types_are_matched_and_unknown_types_do_not_match() {
        let p = policy(LAB);
        assert_eq!(p.classify(&icmp("9.9.9.9", "198.18.1.1", Some(8))).rule, 1);
        assert_eq!(p.classify(&icmp("9.9.9.9", "198.18.1.1", Some(0))).rule, 6);
        assert_eq!(p.classify(&icmp("9.9.9.9", "198.18.1.1", None)).rule, 6);
        let any_icmp = policy("(rules: [(action: Pass, proto: Icmp)])");
        assert_eq!(any_icmp.classify(&icmp("9.9.9.9", "1.1.1.1", None)).rule, 0);
    }

    #[test]
    fn input_and_output_interfaces_are_matched() {
        let p = policy(LAB);
        let ping = icmp("9.9.9.9", "198.18.1.1", Some(8));
        assert_eq!(
            p.classify(&Query {
                in_port: OUT,
                ..ping
            })
            .rule,
            6,
            "rule 1 is in: in only"
        );
        let gre = Query {
            proto: proto::GRE,
            ..tcp("1.1.1.1", "2.2.2.2", 0)
        };
        assert_eq!(p.classify(&gre).rule, 6);
        assert_eq!(
            p.classify(&Query {
                out_port: HA,
                ..gre
            })
            .rule,
            5
        );
    }

    #[test]
    fn objects_and_nested_groups_are_matched() {
        let p = policy(LAB);
        let udp = |dst| Query {
            proto: proto::UDP,
            sport: 1500,
            ..tcp("198.18.1.15", dst, 53)
        };
        // "both" = dmz (web1 + 198.18.3.0/24) + lan.
        for dst in ["198.18.2.10", "198.18.3.200", "198.18.1.77"] {
            assert_eq!(p.classify(&udp(dst)).rule, 4, "{dst}");
        }
        assert_eq!(p.classify(&udp("198.18.2.11")).rule, 6);
    }

    #[test]
    fn destination_nat_finds_the_first_matching_rule() {
        let p = policy(LAB);
        let q = Query {
            in_port: OUT,
            ..tcp("9.9.9.9", "198.18.2.1", 8080)
        };
        assert_eq!(p.nat_destination(&q), Some((ip("198.18.1.10"), Some(80))));
        assert_eq!(p.nat_destination(&Query { dport: 8081, ..q }), None);
        assert_eq!(p.nat_destination(&Query { in_port: IN, ..q }), None);
        let q = Query {
            in_port: OUT,
            proto: proto::UDP,
            ..tcp("9.9.9.9", "198.18.2.2", 53)
        };
        assert_eq!(p.nat_destination(&q), Some((ip("198.18.1.11"), None)));
    }

    #[test]
    fn source_nat_finds_the_first_matching_rule() {
        let p = policy(LAB);
        let q = tcp("198.18.1.200", "9.9.9.9", 80);
        assert_eq!(
            p.nat_source(&q),
            Some(SnatTarget::Pool {
                first: ip("198.18.2.100"),
                last: ip("198.18.2.110")
            })
        );
        assert_eq!(
            p.nat_source(&tcp("198.18.1.5", "9.9.9.9", 80)),
            Some(SnatTarget::Interface { port: OUT })
        );
        assert_eq!(p.nat_source(&Query { out_port: IN, ..q }), None);
        assert_eq!(
            p.nat_source(&Query { out_port: HA, ..q }),
            Some(SnatTarget::Address(ip("198.19.69.1")))
        );
        assert_eq!(p.nat_source(&tcp("198.18.9.5", "9.9.9.9", 80)), None);
    }

    #[test]
    fn burst_classification_equals_single_classification() {
        let p = policy(LAB);
        let qs: Vec<Query> = (0..100u16)
            .map(|i| {
                tcp(
                    &format!("198.18.1.{}", i * 2),
                    "198.18.2.10",
                    [80, 23, 22, 8050][i as usize % 4],
                )
            })
            .collect();
        let mut out = vec![Verdict::default(); qs.len()];
        p.classify_burst(&qs, &mut out);
        for (q, v) in qs.iter().zip(&out) {
            assert_eq!(*v, p.classify(q));
        }
    }

    #[test]
    fn compile_rejects_interfaces_the_node_does_not_have() {
        let c = cfg(r#"(rules: [(action: Pass, in: Some("dmz"))])"#);
        let err = Policy::compile_with(&c, &ifaces(), Backend::Linear).unwrap_err();
        assert!(matches!(err, PolicyError::Invalid(_)), "{err}");
        assert!(
            err.to_string()
                .contains("\"dmz\" is not an interface of this node"),
            "{err}"
        );
    }

    #[test]
    fn acl_backend_needs_the_eal() {
        if Eal::running().is_none() {
            let err =
                Policy::compile_with(&cfg("(rules: [])"), &ifaces(), Backend::Acl).unwrap_err();
            assert!(matches!(err, PolicyError::NoEal));
            let p = Policy::compile(&cfg("(rules: [])"), &ifaces()).unwrap();
            assert_eq!(p.backend(), Backend::Linear);
        }
    }

    #[test]
    fn policy_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Policy>();
        check::<std::sync::Arc<Policy>>();
    }

    // ---- the ACL expansion, checked without DPDK ----

    /// What librte_acl does with our entries: highest priority among the
    /// entries that match the query's key.
    fn simulate_acl(rules: &[AclRule], q: &Query) -> Option<u32> {
        let (sport, dport) = if q.proto == proto::ICMP {
            (q.icmp_type.map_or(0xffff, u16::from), 0)
        } else {
            (q.sport, q.dport)
        };
        let prefix = |(a, len): (Ipv4Addr, u8), ip: Ipv4Addr| {
            len == 0 || (u32::from(a) ^ u32::from(ip)) >> (32 - u32::from(len)) == 0
        };
        rules
            .iter()
            .filter(|r| {
                r.proto.is_none_or(|p| p == q.proto)
                    && prefix(r.src, q.src)
                    && prefix(r.dst, q.dst)
                    && (r.sport.0..=r.sport.1).contains(&sport)
                    && (r.dport.0..=r.dport.1).contains(&dport)
                    && r.in_port.is_none_or(|p| p == q.in_port)
                    && r.out_port.is_none_or(|p| p == q.out_port)
            })
            .max_by_key(|r| r.priority)
            .map(|r| r.userdata - 1)
    }

    fn expand(slots: &[Vec<RuleMatch>]) -> Vec<AclRule> {
        let mut out = Vec::new();
        for (i, ms) in slots.iter().enumerate() {
            for m in ms {
                m.acl_rules(slots.len() as i32 - i as i32, i as u32 + 1, &mut out);
            }
        }
        out
    }

    fn arb_range() -> impl Strategy<Value = AddrRange> {
        // Addresses in a small space so that queries hit them.
        (0u32..64, 0u32..64).prop_map(|(a, b)| {
            let (a, b) = (a.min(b), a.max(b));
            AddrRange {
                first: Ipv4Addr::from(0xc612_0100 + a),
                last: Ipv4Addr::from(0xc612_0100 + b),
            }
        })
    }

    fn arb_ports() -> impl Strategy<Value = Vec<PortRange>> {
        prop::collection::vec(
            (0u16..40, 0u16..40).prop_map(|(a, b)| (a.min(b), a.max(b))),
            0..3,
        )
    }

    fn arb_match() -> impl Strategy<Value = RuleMatch> {
        (
            prop::option::of(prop::sample::select(vec![
                proto::TCP,
                proto::UDP,
                proto::ICMP,
                proto::GRE,
            ])),
            prop::collection::vec(arb_range(), 0..3),
            prop::collection::vec(arb_range(), 0..3),
            arb_ports(),
            arb_ports(),
            prop::collection::vec(0u8..4, 0..3),
            prop::option::of(0u16..3),
            prop::option::of(0u16..3),
        )
            .prop_map(
                |(proto, src, dst, sport, dport, types, in_port, out_port)| {
                    let ports = matches!(proto, Some(proto::TCP) | Some(proto::UDP));
                    RuleMatch {
                        proto,
                        src,
                        dst,
                        sport: if ports { sport } else { Vec::new() },
                        dport: if ports { dport } else { Vec::new() },
                        icmp_types: if proto == Some(proto::ICMP) {
                            types
                        } else {
                            Vec::new()
                        },
                        in_port,
                        out_port,
                    }
                },
            )
    }

    fn arb_query() -> impl Strategy<Value = Query> {
        (
            0u16..3,
            0u16..3,
            0u32..70,
            0u32..70,
            prop::sample::select(vec![proto::TCP, proto::UDP, proto::ICMP, proto::GRE, 99]),
            0u16..45,
            0u16..45,
            prop::option::of(0u8..5),
        )
            .prop_map(|(i, o, s, d, proto, sport, dport, t)| Query {
                in_port: i,
                out_port: o,
                src: Ipv4Addr::from(0xc612_0100 + s),
                dst: Ipv4Addr::from(0xc612_0100 + d),
                proto,
                sport,
                dport,
                icmp_type: t,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        #[test]
        fn acl_expansion_gives_the_linear_answer(
            slots in prop::collection::vec(prop::collection::vec(arb_match(), 1..3), 0..12),
            queries in prop::collection::vec(arb_query(), 50),
        ) {
            let linear = LinearClassifier::new(&slots);
            let rules = expand(&slots);
            for q in &queries {
                prop_assert_eq!(linear.first_match(q), simulate_acl(&rules, q), "{:?}", q);
            }
        }
    }

    #[test]
    fn expansion_counts_match_the_entries_estimate() {
        let m = RuleMatch {
            proto: Some(proto::TCP),
            src: vec![AddrRange {
                first: ip("198.18.1.10"),
                last: ip("198.18.1.20"),
            }],
            dst: Vec::new(),
            sport: Vec::new(),
            dport: vec![(80, 80), (443, 443)],
            icmp_types: Vec::new(),
            in_port: None,
            out_port: None,
        };
        let mut out = Vec::new();
        m.acl_rules(1, 1, &mut out);
        assert_eq!(out.len() as u64, m.entries());
        assert_eq!(out.len(), 4 * 2);
    }
}
