//! The filter and NAT policy of a node: a RON file of its own (the node
//! configuration names it; a reload re-reads it), with named address
//! objects, filter rules evaluated first match wins, NAT rules and a
//! default action.
//!
//! ```ron
//! (
//!   objects: { "lan": Network("198.18.1.0/24"), "web1": Host("198.18.2.10") },
//!   rules: [
//!     (name: "web", action: Pass, from: ["lan"], to: ["web1"], proto: Tcp, dst_ports: ["80", "443"]),
//!     (action: Block, from: ["any"]),
//!   ],
//!   nat: [(kind: Source, out: Some("out"), from: ["lan"], to_address: Interface)],
//!   default_action: Block,
//! )
//! ```
//!
//! Loading reports problems exactly as the node configuration does: file,
//! line, column, field path, what is wrong and what is allowed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::cidr::Ipv4Cidr;
use crate::error::ConfigError;
use crate::locate::SourceMap;
use crate::validate::Checker;

/// A node's filter and NAT policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Named addresses that rules refer to by name.
    #[serde(default)]
    pub objects: BTreeMap<String, Object>,
    /// Filter rules; the first enabled rule that matches decides.
    #[serde(default)]
    pub rules: Vec<FilterRule>,
    /// Address translation rules; the first matching rule of each kind
    /// applies.
    #[serde(default)]
    pub nat: Vec<NatRule>,
    /// What happens to traffic no rule matches; default `Block`.
    #[serde(default = "default_action")]
    pub default_action: Action,
}

fn default_action() -> Action {
    Action::Block
}

fn yes() -> bool {
    true
}

/// A named address object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Object {
    /// One address, `Host("198.18.2.10")`.
    Host(Ipv4Addr),
    /// A network, canonical (no host bits), `Network("198.18.1.0/24")`.
    Network(Ipv4Cidr),
    /// An inclusive address range, `Range("198.18.1.10-198.18.1.20")`.
    Range(String),
    /// Other objects or literal addresses, networks and ranges; not empty,
    /// no cycles.
    Group(Vec<String>),
}

/// What a filter rule does with the traffic it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Action {
    /// Let it through (and track the connection).
    Pass,
    /// Drop it silently.
    Block,
    /// Drop it and tell the sender (TCP reset, ICMP unreachable otherwise).
    Reject,
}

/// An IP protocol to match.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Proto {
    /// TCP (6).
    Tcp,
    /// UDP (17).
    Udp,
    /// ICMP (1).
    Icmp,
    /// GRE (47).
    Gre,
    /// ESP (50).
    Esp,
    /// SCTP (132).
    Sctp,
    /// Any protocol by number.
    Number(u8),
}

impl Proto {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
            Proto::Icmp => 1,
            Proto::Gre => 47,
            Proto::Esp => 50,
            Proto::Sctp => 132,
            Proto::Number(n) => n,
        }
    }

    /// Whether the protocol has ports (TCP, UDP, SCTP).
    pub fn has_ports(self) -> bool {
        matches!(self.number(), 6 | 17 | 132)
    }

    /// Whether the protocol is ICMP (so rules may match ICMP types).
    pub fn is_icmp(self) -> bool {
        self.number() == 1
    }
}

/// One filter rule. Empty address and port lists match anything.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterRule {
    /// A label for logs and counters; unique when given.
    #[serde(default)]
    pub name: Option<String>,
    /// What to do with matching traffic.
    pub action: Action,
    /// Only traffic arriving on this interface (by name), written `in`.
    #[serde(default, rename = "in")]
    pub in_interface: Option<String>,
    /// Only traffic leaving through this interface (by name), written `out`.
    #[serde(default, rename = "out")]
    pub out_interface: Option<String>,
    /// Source addresses: "any", an address, a network, a range "a-b" or an
    /// object name; empty matches any.
    #[serde(default)]
    pub from: Vec<String>,
    /// Destination addresses, written as `from`.
    #[serde(default)]
    pub to: Vec<String>,
    /// The IP protocol; any when absent.
    #[serde(default)]
    pub proto: Option<Proto>,
    /// Source ports "80" or ranges "1000-2000" (TCP, UDP, SCTP only).
    #[serde(default)]
    pub src_ports: Vec<String>,
    /// Destination ports, written as `src_ports`.
    #[serde(default)]
    pub dst_ports: Vec<String>,
    /// ICMP types (ICMP only).
    #[serde(default)]
    pub icmp_types: Vec<u8>,
    /// Log the connections this rule opens or the packets it stops (the
    /// event log and syslog, service RULE, at most 100 a second per
    /// worker); default false.
    #[serde(default)]
    pub log: bool,
    /// Synchronise this connection between firewalls (HA); default true.
    #[serde(default = "yes")]
    pub sync: bool,
    /// A disabled rule is kept in the file but never matches; default true.
    #[serde(default = "yes")]
    pub enabled: bool,
}

/// Which address a NAT rule rewrites.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NatKind {
    /// Rewrite the source (after routing): masquerade, source pools.
    Source,
    /// Rewrite the destination (before routing): port forwarding.
    Destination,
}

/// The new source address of a source NAT rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnatAddress {
    /// The first address of the rule's `out` interface (masquerade).
    Interface,
    /// One address.
    Address(Ipv4Addr),
    /// A range of addresses, `Pool("198.18.2.100-198.18.2.110")`.
    Pool(String),
}

/// One NAT rule. Matching fields work as in [`FilterRule`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatRule {
    /// A label for logs; unique among NAT rules when given.
    #[serde(default)]
    pub name: Option<String>,
    /// Source or destination translation.
    pub kind: NatKind,
    /// Only traffic arriving on this interface, written `in`.
    #[serde(default, rename = "in")]
    pub in_interface: Option<String>,
    /// Only traffic leaving through this interface, written `out`
    /// (source NAT only: destination NAT runs before routing).
    #[serde(default, rename = "out")]
    pub out_interface: Option<String>,
    /// Original source addresses; empty matches any.
    #[serde(default)]
    pub from: Vec<String>,
    /// Original destination addresses; empty matches any.
    #[serde(default)]
    pub to: Vec<String>,
    /// The IP protocol; any when absent.
    #[serde(default)]
    pub proto: Option<Proto>,
    /// Original source ports (TCP, UDP, SCTP only).
    #[serde(default)]
    pub src_ports: Vec<String>,
    /// Original destination ports (TCP, UDP, SCTP only).
    #[serde(default)]
    pub dst_ports: Vec<String>,
    /// Source NAT: the new source address; required for `Source`.
    #[serde(default)]
    pub to_address: Option<SnatAddress>,
    /// Destination NAT: the new destination address; required for
    /// `Destination`.
    #[serde(default)]
    pub translate_to: Option<Ipv4Addr>,
    /// Destination NAT: the new destination port; 1..=65535, needs a
    /// protocol with ports. The original port is kept when absent.
    #[serde(default)]
    pub translate_port: Option<u16>,
    /// A disabled rule never matches; default true.
    #[serde(default = "yes")]
    pub enabled: bool,
}

/// An inclusive range of IPv4 addresses, what every address form of the
/// policy resolves to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AddrRange {
    /// The first address.
    pub first: Ipv4Addr,
    /// The last address (not below `first`).
    pub last: Ipv4Addr,
}

impl AddrRange {
    /// Every address.
    pub const ANY: AddrRange = AddrRange {
        first: Ipv4Addr::UNSPECIFIED,
        last: Ipv4Addr::BROADCAST,
    };

    /// Whether `ip` is in the range.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.first <= ip && ip <= self.last
    }

    /// The range of a prefix (network to broadcast).
    pub fn of_cidr(c: Ipv4Cidr) -> AddrRange {
        AddrRange {
            first: c.network(),
            last: c.broadcast(),
        }
    }

    /// The smallest set of prefixes that covers exactly this range.
    pub fn to_cidrs(&self) -> Vec<Ipv4Cidr> {
        let mut out = Vec::new();
        let mut lo = u64::from(u32::from(self.first));
        let hi = u64::from(u32::from(self.last));
        while lo <= hi {
            // The largest aligned block starting at lo that fits.
            let mut size: u64 = if lo == 0 {
                1 << 32
            } else {
                lo & lo.wrapping_neg()
            };
            while lo + size - 1 > hi {
                size >>= 1;
            }
            let len = 32 - size.trailing_zeros() as u8;
            out.push(Ipv4Cidr {
                addr: Ipv4Addr::from(lo as u32),
                prefix_len: len,
            });
            lo += size;
        }
        out
    }
}

impl fmt::Display for AddrRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// An inclusive port range.
pub type PortRange = (u16, u16);

/// Parses `"80"` or `"1000-2000"`.
pub fn parse_port_range(text: &str) -> Result<PortRange, String> {
    let port = |s: &str| -> Option<u16> {
        if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let bad = || {
        format!(
            "{text:?} is not a port or port range; allowed {}",
            ALLOWED_PORT
        )
    };
    match text.split_once('-') {
        None => port(text).map(|p| (p, p)).ok_or_else(bad),
        Some((a, b)) => {
            let (lo, hi) = (port(a).ok_or_else(bad)?, port(b).ok_or_else(bad)?);
            if lo > hi {
                Err(format!(
                    "{text:?} is an empty range (its first port is above its last); \
                     allowed a range \"lo-hi\" with lo <= hi"
                ))
            } else {
                Ok((lo, hi))
            }
        }
    }
}

/// Parses `"a.b.c.d-e.f.g.h"`.
pub fn parse_addr_range(text: &str) -> Result<AddrRange, String> {
    let (a, b) = text.split_once('-').ok_or_else(|| {
        format!("{text:?} is not an address range; allowed \"first-last\" such as \"198.18.1.10-198.18.1.20\"")
    })?;
    let parse = |s: &str| {
        s.parse::<Ipv4Addr>().map_err(|_| {
            format!(
                "{text:?} is not an address range: {s:?} is not an IPv4 address; \
                 allowed \"first-last\" such as \"198.18.1.10-198.18.1.20\""
            )
        })
    };
    let (first, last) = (parse(a)?, parse(b)?);
    if first > last {
        return Err(format!(
            "{text:?} is an empty range (its first address is above its last); \
             allowed \"first-last\" with first <= last"
        ));
    }
    Ok(AddrRange { first, last })
}

const ALLOWED_PORT: &str = "a port \"80\" or a range \"8000-8100\" of ports 0..=65535";
const ALLOWED_OBJECT_NAME: &str =
    "1..=63 characters from [A-Za-z0-9._-] starting with a letter or '_', not \"any\"";

/// Why an address entry does not resolve.
#[derive(Debug)]
enum Unresolved {
    /// Explained in this message.
    Bad(String),
    /// Refers to an object that has its own (reported) problem.
    BadObject,
}

impl PolicyConfig {
    /// The address ranges an address list (`from`, `to`, a group's
    /// members) stands for, sorted and merged; an empty list or one that
    /// contains "any" is [`AddrRange::ANY`]. Fails on what validation
    /// rejects.
    pub fn resolve_addresses(&self, list: &[String]) -> Result<Vec<AddrRange>, String> {
        if list.is_empty() {
            return Ok(vec![AddrRange::ANY]);
        }
        let mut out = Vec::new();
        for entry in list {
            match self.resolve_entry(entry, &mut Vec::new()) {
                Ok(r) => out.extend(r),
                Err(Unresolved::Bad(m)) => return Err(m),
                Err(Unresolved::BadObject) => {
                    return Err(format!("{entry:?} refers to an invalid object"))
                }
            }
        }
        Ok(merge(out))
    }

    fn resolve_entry(
        &self,
        entry: &str,
        stack: &mut Vec<String>,
    ) -> Result<Vec<AddrRange>, Unresolved> {
        if entry == "any" {
            return Ok(vec![AddrRange::ANY]);
        }
        if let Some(literal) = literal_address(entry) {
            return literal.map(|r| vec![r]).map_err(Unresolved::Bad);
        }
        let Some(object) = self.objects.get(entry) else {
            let known: Vec<&str> = self.objects.keys().map(String::as_str).collect();
            return Err(Unresolved::Bad(format!(
                "{entry:?} is neither an address nor a known object; allowed \"any\", an \
                 address \"198.18.1.10\", a network \"198.18.1.0/24\", a range \
                 \"198.18.1.10-198.18.1.20\" or an object name (defined: {known:?})"
            )));
        };
        if stack.iter().any(|s| s == entry) || stack.len() > 64 {
            return Err(Unresolved::BadObject);
        }
        match object {
            Object::Host(a) => Ok(vec![AddrRange {
                first: *a,
                last: *a,
            }]),
            Object::Network(c) if c.is_canonical() => Ok(vec![AddrRange::of_cidr(*c)]),
            Object::Range(r) => parse_addr_range(r)
                .map(|r| vec![r])
                .map_err(|_| Unresolved::BadObject),
            Object::Group(members) if !members.is_empty() => {
                stack.push(entry.to_owned());
                let mut out = Vec::new();
                for m in members {
                    match self.resolve_entry(m, stack) {
                        Ok(r) => out.extend(r),
                        Err(_) => {
                            stack.pop();
                            return Err(Unresolved::BadObject);
                        }
                    }
                }
                stack.pop();
                Ok(out)
            }
            _ => Err(Unresolved::BadObject),
        }
    }

    /// Checks every rule; with `interfaces`, also that `in`/`out` name one
    /// of them. Errors carry no position (use [`parse`] for text).
    pub fn validate(&self, interfaces: Option<&[&str]>) -> Result<(), ConfigError> {
        let problems = validate(self, interfaces, "policy", None);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }
}

/// Merges overlapping and adjacent ranges.
fn merge(mut v: Vec<AddrRange>) -> Vec<AddrRange> {
    v.sort();
    let mut out: Vec<AddrRange> = Vec::with_capacity(v.len());
    for r in v {
        match out.last_mut() {
            Some(l) if u64::from(u32::from(r.first)) <= u64::from(u32::from(l.last)) + 1 => {
                l.last = l.last.max(r.last);
            }
            _ => out.push(r),
        }
    }
    out
}

/// `Some` when `entry` is written as an address, network or range (it
/// starts with a digit): the range, or why it is malformed.
fn literal_address(entry: &str) -> Option<Result<AddrRange, String>> {
    if !entry.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    Some(if entry.contains('-') {
        parse_addr_range(entry)
    } else if entry.contains('/') {
        match entry.parse::<Ipv4Cidr>() {
            Err(e) => Err(format!("{e}")),
            Ok(c) if !c.is_canonical() => Err(format!(
                "\"{c}\" has host bits set; write the network as \"{}\" or the host as \"{}\"",
                c.trunc(),
                c.addr
            )),
            Ok(c) => Ok(AddrRange::of_cidr(c)),
        }
    } else {
        entry
            .parse::<Ipv4Addr>()
            .map(|a| AddrRange { first: a, last: a })
            .map_err(|_| {
                format!(
                    "{entry:?} is not an IPv4 address; allowed an address \"198.18.1.10\", a \
                     network \"198.18.1.0/24\" or a range \"198.18.1.10-198.18.1.20\""
                )
            })
    })
}

/// The example policy shipped in `config/examples/policy-lab.ron`.
pub const EXAMPLE: (&str, &str) = ("policy-lab.ron", include_str!("../examples/policy-lab.ron"));

/// Reads, parses and validates the policy at `path`; with `interfaces`
/// (the node's interface names), `in`/`out` must name one of them.
pub fn load(path: &Path, interfaces: Option<&[&str]>) -> Result<PolicyConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, &path.display().to_string(), interfaces)
}

/// Parses and validates a policy; `origin` names the text in messages.
pub fn parse(
    text: &str,
    origin: &str,
    interfaces: Option<&[&str]>,
) -> Result<PolicyConfig, ConfigError> {
    let map = SourceMap::new(text);
    let options =
        ron::Options::default().with_default_extension(ron::extensions::Extensions::IMPLICIT_SOME);
    let cfg: PolicyConfig = options
        .from_str(text)
        .map_err(|e| ConfigError::Syntax(crate::ron_diagnostic(&e, &map, origin)))?;
    let problems = validate(&cfg, interfaces, origin, Some(&map));
    if problems.is_empty() {
        Ok(cfg)
    } else {
        Err(ConfigError::Invalid(problems))
    }
}

/// Allowed values of policy fields with a fixed range, by generic path.
pub(crate) fn allowed_values(generic: &str) -> Option<&'static str> {
    Some(match generic {
        "rules[].icmp_types[]" => "ICMP types 0..=255",
        "rules[].proto" | "nat[].proto" => "Tcp, Udp, Icmp, Gre, Esp, Sctp or Number(0..=255)",
        "nat[].translate_port" => "1..=65535",
        "rules[].action" | "default_action" => "Pass, Block or Reject",
        _ => return None,
    })
}

fn validate(
    cfg: &PolicyConfig,
    interfaces: Option<&[&str]>,
    origin: &str,
    map: Option<&SourceMap<'_>>,
) -> Vec<crate::Diagnostic> {
    let mut c = Checker::new(origin, map);
    let bad = objects(&mut c, cfg);
    let mut names = HashMap::new();
    for (i, r) in cfg.rules.iter().enumerate() {
        let p = format!("rules[{i}]");
        name(&mut c, &p, r.name.as_deref(), &mut names, "rules");
        let m = Match {
            in_interface: r.in_interface.as_deref(),
            out_interface: r.out_interface.as_deref(),
            from: &r.from,
            to: &r.to,
            proto: r.proto,
            src_ports: &r.src_ports,
            dst_ports: &r.dst_ports,
        };
        matching(&mut c, cfg, &bad, interfaces, &p, &m);
        if !r.icmp_types.is_empty() && !r.proto.is_some_and(Proto::is_icmp) {
            c.fail(
                format!("{p}.icmp_types"),
                format!(
                    "ICMP types need proto Icmp, but proto is {}; allowed: set proto: Icmp, \
                     or remove icmp_types",
                    proto_text(r.proto)
                ),
            );
        }
    }
    let mut names = HashMap::new();
    for (i, r) in cfg.nat.iter().enumerate() {
        let p = format!("nat[{i}]");
        name(&mut c, &p, r.name.as_deref(), &mut names, "nat");
        let m = Match {
            in_interface: r.in_interface.as_deref(),
            out_interface: r.out_interface.as_deref(),
            from: &r.from,
            to: &r.to,
            proto: r.proto,
            src_ports: &r.src_ports,
            dst_ports: &r.dst_ports,
        };
        matching(&mut c, cfg, &bad, interfaces, &p, &m);
        nat(&mut c, &p, r);
    }
    c.out
}

/// The matching fields shared by filter and NAT rules.
struct Match<'a> {
    in_interface: Option<&'a str>,
    out_interface: Option<&'a str>,
    from: &'a [String],
    to: &'a [String],
    proto: Option<Proto>,
    src_ports: &'a [String],
    dst_ports: &'a [String],
}

fn proto_text(p: Option<Proto>) -> String {
    match p {
        None => "not set (any protocol)".to_owned(),
        Some(p) => format!("{p:?}"),
    }
}

fn name<'a>(
    c: &mut Checker<'_>,
    p: &str,
    name: Option<&'a str>,
    seen: &mut HashMap<&'a str, String>,
    list: &str,
) {
    let Some(n) = name else { return };
    if n.is_empty() || n.chars().count() > 63 || n.chars().any(char::is_control) {
        c.fail(
            format!("{p}.name"),
            format!("{n:?} is not a valid rule name; allowed 1..=63 printable characters"),
        );
    } else if let Some(first) = seen.insert(n, p.to_owned()) {
        c.fail(
            format!("{p}.name"),
            format!(
                "{n:?} is already the name of {first}; allowed names unique among the {list} rules"
            ),
        );
    }
}

fn matching(
    c: &mut Checker<'_>,
    cfg: &PolicyConfig,
    bad: &HashSet<String>,
    interfaces: Option<&[&str]>,
    p: &str,
    m: &Match<'_>,
) {
    for (field, iface) in [("in", m.in_interface), ("out", m.out_interface)] {
        if let (Some(name), Some(known)) = (iface, interfaces) {
            if !known.contains(&name) {
                c.fail(
                    format!("{p}.{field}"),
                    format!("{name:?} is not an interface of this node; allowed one of {known:?}"),
                );
            }
        }
    }
    for (field, list) in [("from", m.from), ("to", m.to)] {
        for (j, entry) in list.iter().enumerate() {
            let f = format!("{p}.{field}[{j}]");
            if bad.contains(entry.as_str()) {
                continue;
            }
            if let Err(Unresolved::Bad(msg)) = cfg.resolve_entry(entry, &mut Vec::new()) {
                c.fail(f, msg);
            }
        }
    }
    for (field, list) in [("src_ports", m.src_ports), ("dst_ports", m.dst_ports)] {
        if list.is_empty() {
            continue;
        }
        if !m.proto.is_some_and(Proto::has_ports) {
            c.fail(
                format!("{p}.{field}"),
                format!(
                    "ports need a protocol with ports, but proto is {}; allowed proto Tcp, \
                     Udp or Sctp (Number(6), Number(17), Number(132)), or no ports",
                    proto_text(m.proto)
                ),
            );
            continue;
        }
        for (j, text) in list.iter().enumerate() {
            if let Err(msg) = parse_port_range(text) {
                c.fail(format!("{p}.{field}[{j}]"), msg);
            }
        }
    }
}

fn nat(c: &mut Checker<'_>, p: &str, r: &NatRule) {
    match r.kind {
        NatKind::Source => {
            match &r.to_address {
                None => c.fail_at(
                    format!("{p}.to_address"),
                    p,
                    "is required for a Source rule; allowed Interface, Address(\"a.b.c.d\") \
                     or Pool(\"first-last\")",
                ),
                Some(SnatAddress::Interface) if r.out_interface.is_none() => c.fail(
                    format!("{p}.to_address"),
                    "Interface takes the address of the rule's out interface, but out is not \
                     set; allowed: set out: Some(\"<interface>\"), or use Address/Pool",
                ),
                Some(SnatAddress::Pool(text)) => {
                    if let Err(msg) = parse_addr_range(text) {
                        c.fail(format!("{p}.to_address"), msg);
                    }
                }
                _ => {}
            }
            for (field, set) in [
                ("translate_to", r.translate_to.is_some()),
                ("translate_port", r.translate_port.is_some()),
            ] {
                if set {
                    c.fail(
                        format!("{p}.{field}"),
                        "belongs to Destination rules; a Source rule takes to_address",
                    );
                }
            }
        }
        NatKind::Destination => {
            if r.translate_to.is_none() {
                c.fail_at(
                    format!("{p}.translate_to"),
                    p,
                    "is required for a Destination rule; allowed an IPv4 address \"a.b.c.d\"",
                );
            }
            if r.to_address.is_some() {
                c.fail(
                    format!("{p}.to_address"),
                    "belongs to Source rules; a Destination rule takes translate_to \
                     (and translate_port)",
                );
            }
            if r.out_interface.is_some() {
                c.fail(
                    format!("{p}.out"),
                    "destination NAT is decided before routing, so the out interface is not \
                     known yet; allowed: in, or no interface",
                );
            }
            match r.translate_port {
                Some(0) => c.fail(
                    format!("{p}.translate_port"),
                    "0 is out of range; allowed 1..=65535",
                ),
                Some(_) if !r.proto.is_some_and(Proto::has_ports) => c.fail(
                    format!("{p}.translate_port"),
                    format!(
                        "a port translation needs a protocol with ports, but proto is {}; \
                         allowed proto Tcp, Udp or Sctp",
                        proto_text(r.proto)
                    ),
                ),
                _ => {}
            }
        }
    }
}

/// Checks the objects; returns the names of those with a problem (so that
/// rules referring to them do not repeat it).
fn objects(c: &mut Checker<'_>, cfg: &PolicyConfig) -> HashSet<String> {
    let mut bad = HashSet::new();
    for (name, object) in &cfg.objects {
        let p = format!("objects[{name}]");
        let name_ok = name != "any"
            && (1..=63).contains(&name.len())
            && name.starts_with(|ch: char| ch.is_ascii_alphabetic() || ch == '_')
            && name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-'));
        if !name_ok {
            c.fail(
                &p,
                format!("{name:?} is not a valid object name; allowed {ALLOWED_OBJECT_NAME}"),
            );
            bad.insert(name.clone());
        }
        match object {
            Object::Host(_) => {}
            Object::Network(n) => {
                if !n.is_canonical() {
                    c.fail(
                        &p,
                        format!(
                            "\"{n}\" has host bits set; write the network as \"{}\" or use \
                             Host(\"{}\")",
                            n.trunc(),
                            n.addr
                        ),
                    );
                    bad.insert(name.clone());
                }
            }
            Object::Range(r) => {
                if let Err(msg) = parse_addr_range(r) {
                    c.fail(&p, msg);
                    bad.insert(name.clone());
                }
            }
            Object::Group(members) => {
                if members.is_empty() {
                    c.fail(
                        &p,
                        "is an empty group; allowed a group of at least one object name, \
                         address, network or range",
                    );
                    bad.insert(name.clone());
                }
                for (j, m) in members.iter().enumerate() {
                    let known = m == "any" || cfg.objects.contains_key(m.as_str());
                    match literal_address(m) {
                        Some(Err(msg)) => {
                            c.fail(format!("{p}[{j}]"), msg);
                            bad.insert(name.clone());
                        }
                        None if !known => {
                            let names: Vec<&str> = cfg.objects.keys().map(String::as_str).collect();
                            c.fail(
                                format!("{p}[{j}]"),
                                format!(
                                    "{m:?} is neither an address nor a known object; allowed \
                                     an address, a network, a range or an object name \
                                     (defined: {names:?})"
                                ),
                            );
                            bad.insert(name.clone());
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    // Cycles among groups, each reported once at its first member by name.
    let mut reported: HashSet<Vec<String>> = HashSet::new();
    for name in cfg.objects.keys() {
        let mut path = vec![name.clone()];
        if let Some(cycle) = find_cycle(cfg, &mut path) {
            let mut key = cycle[..cycle.len() - 1].to_vec();
            key.sort();
            if reported.insert(key.clone()) {
                c.fail(
                    format!("objects[{}]", key[0]),
                    format!(
                        "groups form a cycle ({}); allowed groups that do not contain \
                         themselves, directly or through other groups",
                        rotate_to(&cycle, &key[0]).join(" -> ")
                    ),
                );
            }
            bad.extend(key);
        }
    }
    // Groups that contain a bad object are bad too (transitively).
    loop {
        let before = bad.len();
        for (name, object) in &cfg.objects {
            if let Object::Group(members) = object {
                if members.iter().any(|m| bad.contains(m.as_str())) {
                    bad.insert(name.clone());
                }
            }
        }
        if bad.len() == before {
            break;
        }
    }
    bad
}

/// Depth-first search for a path of group membership that returns to
/// `path[0]`; returns it (first name repeated at the end).
fn find_cycle(cfg: &PolicyConfig, path: &mut Vec<String>) -> Option<Vec<String>> {
    let last = path.last()?.clone();
    let Some(Object::Group(members)) = cfg.objects.get(&last) else {
        return None;
    };
    for m in members {
        if *m == path[0] {
            let mut cycle = path.clone();
            cycle.push(m.clone());
            return Some(cycle);
        }
        if path.contains(m) || path.len() > cfg.objects.len() {
            continue;
        }
        if cfg.objects.contains_key(m.as_str()) {
            path.push(m.clone());
            if let Some(c) = find_cycle(cfg, path) {
                return Some(c);
            }
            path.pop();
        }
    }
    None
}

/// The cycle `a -> b -> c -> a` written to start at `start`.
fn rotate_to(cycle: &[String], start: &str) -> Vec<String> {
    let body = &cycle[..cycle.len() - 1];
    let at = body.iter().position(|s| s == start).unwrap_or(0);
    let mut out: Vec<String> = body[at..].iter().chain(&body[..at]).cloned().collect();
    out.push(start.to_owned());
    out
}

#[cfg(test)]
mod tests;
