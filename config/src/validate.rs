//! Validation of a parsed [`NodeConfig`]: ranges, formats and the rules
//! that span fields (unique names, non-overlapping subnets, routable next
//! hops).

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

use crate::cidr::Ipv4Cidr;
use crate::error::Diagnostic;
use crate::locate::SourceMap;
use crate::schema::{vdev_arg, vdev_name, Device, NodeConfig};

/// Allowed values of fields with a fixed range, by field path with list
/// indices removed. Shared by validation and by the translation of RON's
/// "integer out of bounds" errors.
pub(crate) fn allowed_values(path: &str) -> Option<&'static str> {
    let mut generic = String::with_capacity(path.len());
    let mut in_index = false;
    for c in path.chars() {
        match c {
            '[' => {
                in_index = true;
                generic.push_str("[]");
            }
            ']' => in_index = false,
            _ if in_index => {}
            c => generic.push(c),
        }
    }
    Some(match generic.as_str() {
        "node.name" => "1..=63 characters from [A-Za-z0-9._-]",
        "node.serial" => "1..=32 characters from [A-Za-z0-9._-]",
        "control.socket" => "an absolute path such as /run/tandem/tandemd.sock",
        "eal.file_prefix" => "1..=63 characters from [A-Za-z0-9._-]",
        "eal.lcores" => "an EAL lcore map of digits and , - @ ( ) such as \"0-3\" or \"0@0,1@2\"",
        "eal.memory_mb" => "64..=4294967295 megabytes",
        "dataplane.workers" => "1..=128 workers",
        "dataplane.workers[].cpu" => "a CPU number not used by another worker",
        "dataplane.burst" => "1..=256",
        "dataplane.mbufs" => "1023..=4194303",
        "dataplane.mbuf_cache" => "0..=512",
        "dataplane.rx_descriptors" | "dataplane.tx_descriptors" => {
            "a power of two in 64..=8192 (64, 128, 256, 512, 1024, 2048, 4096, 8192)"
        }
        "dataplane.handoff_ring" => "a power of two in 256..=65536",
        "dataplane.sync_cpu" => "a CPU number not used by a worker",
        "dataplane.neighbour.capacity" => "16..=1048576",
        "dataplane.neighbour.reachable_secs" => "1..=4294967295",
        "dataplane.neighbour.retry_ms" => "1..=4294967295",
        "dataplane.neighbour.hold_packets" => "0..=65535",
        "dataplane.idle.spin_polls" => "0..=4294967295",
        "dataplane.idle.max_sleep_us" => "1..=100000",
        "interfaces" => "at least one interface",
        "firewall.connections" => "1024..=16777216 connections (per node, split over the workers)",
        "firewall.delta_ring" => "64..=4194304 changes per worker",
        "firewall.fragment_timeout_ms" => "100..=60000",
        g if g.starts_with("firewall.timeouts.") => "1..=2592000 seconds (30 days)",
        "ha.psk" => "at least 12 characters mixing three of: lower case, upper case, digits, other characters, none of them half of the key or more",
        "ha.links" => "1 or 2 links (main, then backup)",
        "ha.links[].name" => "1..=32 characters from [A-Za-z0-9._-]",
        "ha.links[].interface" => "a Linux interface name: 1..=15 characters, no '/', ':' or white space",
        "ha.links[].peer" => "an address of the link's network other than this node's and than the network and broadcast addresses",
        "ha.sync_port" => "1..=65535",
        "ha.takeover_grace_ms" => "0..=600000",
        "ha.garp_count" => "1..=20",
        "ha.priority" => "0 or 50 (\"active firewall if equal\"), at most 100",
        "ha.heartbeat_ms" => "5..=1000 milliseconds",
        "ha.dead_ms" => "at least 3 heartbeat intervals, at most 10000 milliseconds",
        "ha.startup_wait_ms" => "0..=600000 milliseconds",
        "ha.garp_spacing_ms" => "0 (all at once) ..=10000 milliseconds",
        "ha.control_priority" => "0 (normal scheduling) or a SCHED_RR priority 1..=99",
        "ha.icmp_timeout_ms" => "5..=5000 milliseconds",
        "ha.garp_interval_ms" => "0 (off) or 100..=3600000 milliseconds",
        "interfaces[].weight" => "0..=9999 (default 100)",
        "interfaces[].aggregate.members" => "2..=8 member devices, each used once on the node",
        "interfaces[].name" => "1..=15 characters from [a-z0-9_-], unique on the node",
        "interfaces[].mtu" => "576..=9000",
        "interfaces[].kernel_interface" => {
            "a Linux interface name: 1..=15 characters, no '/', ':' or white space"
        }
        other => return crate::policy::allowed_values(other),
    })
}

pub(crate) fn in_charset(s: &str, max: usize, ok: impl Fn(char) -> bool) -> bool {
    (1..=max).contains(&s.chars().count()) && s.chars().all(ok)
}

pub(crate) fn ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

fn iface_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-')
}

/// Whether `s` is `DDDD:BB:DD.F` in hex (device 0..=1f, function 0..=7).
fn is_pci_address(s: &str) -> bool {
    let b = s.as_bytes();
    let hex = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_hexdigit);
    b.len() == 12
        && hex(0..4)
        && b[4] == b':'
        && hex(5..7)
        && b[7] == b':'
        && hex(8..10)
        && u8::from_str_radix(&s[8..10], 16).is_ok_and(|d| d <= 0x1f)
        && b[10] == b'.'
        && (b'0'..=b'7').contains(&b[11])
}

fn is_linux_ifname(s: &str) -> bool {
    (1..=15).contains(&s.len())
        && s != "."
        && s != ".."
        && !s.chars().any(|c| c == '/' || c == ':' || c.is_whitespace())
}

/// Why an interface address cannot be a host address, if it cannot.
fn bad_host_address(a: &Ipv4Cidr) -> Option<&'static str> {
    let ip = a.addr;
    if a.prefix_len == 0 {
        Some("a /0 prefix cannot be an interface subnet")
    } else if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_broadcast() {
        Some("it is not a unicast address")
    } else if u32::from(ip) >> 28 == 0xf {
        Some("it is in the reserved 240.0.0.0/4 range")
    } else if a.prefix_len <= 30 && ip == a.network() {
        Some("it is the network address of its subnet")
    } else if a.prefix_len <= 30 && ip == a.broadcast() {
        Some("it is the broadcast address of its subnet")
    } else {
        None
    }
}

/// Collects diagnostics, placing each with the source map when there is one.
pub(crate) struct Checker<'a> {
    origin: &'a str,
    map: Option<&'a SourceMap<'a>>,
    /// The cluster's file, where the sections it holds
    /// ([`crate::cluster::SHARED_SECTIONS`]) are placed.
    shared: Option<(&'a str, &'a SourceMap<'a>)>,
    pub(crate) out: Vec<Diagnostic>,
}

impl<'a> Checker<'a> {
    /// A checker for the text `origin`, with its source map if parsed.
    pub(crate) fn new(origin: &'a str, map: Option<&'a SourceMap<'a>>) -> Self {
        Checker {
            origin,
            map,
            shared: None,
            out: Vec::new(),
        }
    }

    pub(crate) fn fail(&mut self, field: impl Into<String>, message: impl Into<String>) {
        let field = field.into();
        let anchor = field.clone();
        self.fail_at(field, &anchor, message);
    }

    /// A problem with `field` shown at the place of `anchor` (for a field
    /// that is missing because another one requires it).
    pub(crate) fn fail_at(
        &mut self,
        field: impl Into<String>,
        anchor: &str,
        message: impl Into<String>,
    ) {
        let field = field.into();
        let section = field.split(['.', '[']).next().unwrap_or_default();
        let (origin, map) = match self.shared {
            Some((origin, map)) if crate::cluster::SHARED_SECTIONS.contains(&section) => {
                (origin, Some(map))
            }
            _ => (self.origin, self.map),
        };
        let anchor = match map {
            Some(m) if !m.is_written(&field) => anchor,
            _ => &field,
        };
        self.out.push(Diagnostic {
            origin: origin.to_owned(),
            position: map.map(|m| m.locate(anchor)),
            field,
            message: message.into(),
        });
    }

    /// Checks `value` against an inclusive range, naming it in the message.
    fn range<T>(&mut self, field: &str, value: T, lo: T, hi: T)
    where
        T: PartialOrd + std::fmt::Display,
    {
        if value < lo || value > hi {
            let allowed =
                allowed_values(field).map_or_else(|| format!("{lo}..={hi}"), str::to_owned);
            self.fail(field, format!("{value} is out of range; allowed {allowed}"));
        }
    }
}

/// Checks every rule; returns all broken ones, in document order of the
/// rules.
pub(crate) fn validate(
    cfg: &NodeConfig,
    origin: &str,
    map: Option<&SourceMap<'_>>,
) -> Vec<Diagnostic> {
    validate_split(cfg, origin, map, None)
}

/// [`validate`] of a configuration merged from a node's file (`origin`,
/// `map`) and its cluster's (`shared`): each problem names the file its
/// field is written in.
pub(crate) fn validate_split<'a>(
    cfg: &NodeConfig,
    origin: &'a str,
    map: Option<&'a SourceMap<'a>>,
    shared: Option<(&'a str, &'a SourceMap<'a>)>,
) -> Vec<Diagnostic> {
    let mut c = Checker {
        origin,
        map,
        shared,
        out: Vec::new(),
    };
    node(&mut c, cfg);
    eal(&mut c, cfg);
    dataplane(&mut c, cfg);
    interfaces(&mut c, cfg);
    routes(&mut c, cfg);
    firewall(&mut c, cfg);
    ha(&mut c, cfg);
    c.out
}

fn firewall(c: &mut Checker<'_>, cfg: &NodeConfig) {
    let f = &cfg.firewall;
    c.range("firewall.connections", f.connections, 1024, 16_777_216);
    c.range("firewall.delta_ring", f.delta_ring, 64, 4_194_304);
    c.range(
        "firewall.fragment_timeout_ms",
        f.fragment_timeout_ms,
        100,
        60_000,
    );
    let t = &f.timeouts;
    for (name, v) in [
        ("tcp_syn_sent", t.tcp_syn_sent),
        ("tcp_syn_received", t.tcp_syn_received),
        ("tcp_established", t.tcp_established),
        ("tcp_fin_wait", t.tcp_fin_wait),
        ("tcp_close_wait", t.tcp_close_wait),
        ("tcp_last_ack", t.tcp_last_ack),
        ("tcp_time_wait", t.tcp_time_wait),
        ("tcp_closed", t.tcp_closed),
        ("udp_unreplied", t.udp_unreplied),
        ("udp_replied", t.udp_replied),
        ("udp_stream", t.udp_stream),
        ("icmp", t.icmp),
        ("gre_unreplied", t.gre_unreplied),
        ("gre", t.gre),
        ("esp_unreplied", t.esp_unreplied),
        ("esp", t.esp),
        ("sctp_handshake", t.sctp_handshake),
        ("sctp_established", t.sctp_established),
        ("sctp_shutdown", t.sctp_shutdown),
        ("sctp_closed", t.sctp_closed),
        ("other_unreplied", t.other_unreplied),
        ("other", t.other),
    ] {
        if let Some(v) = v {
            c.range(&format!("firewall.timeouts.{name}"), v, 1, 30 * 86_400);
        }
    }
    let workers = cfg.dataplane.workers.len().max(1) as u32;
    if f.connections >= 1024 && f.connections / workers < 256 {
        c.fail(
            "firewall.connections",
            format!(
                "{} connections over {workers} workers leaves fewer than 256 per worker; allowed {}",
                f.connections,
                allowed("firewall.connections")
            ),
        );
    }
}

fn ha(c: &mut Checker<'_>, cfg: &NodeConfig) {
    let Some(ha) = &cfg.ha else { return };
    // No key in the file: it is in the member's key store, checked when
    // it is read.
    let weak = crate::identity::psk_problems(ha.psk.expose());
    if !ha.psk.is_empty() && !weak.is_empty() {
        c.fail(
            "ha.psk",
            format!(
                "the pre-shared key is too weak: {}; allowed {}",
                weak.join("; "),
                allowed("ha.psk")
            ),
        );
    }
    if ha.links.is_empty() || ha.links.len() > 2 {
        c.fail(
            "ha.links",
            format!(
                "{} links given; allowed {}",
                ha.links.len(),
                allowed("ha.links")
            ),
        );
    }
    c.range("ha.sync_port", ha.sync_port, 1, 65535);
    c.range("ha.takeover_grace_ms", ha.takeover_grace_ms, 0, 600_000);
    c.range("ha.garp_count", ha.garp_count, 1, 20);
    c.range("ha.priority", ha.priority, 0, 100);
    c.range("ha.heartbeat_ms", ha.heartbeat_ms, 5, 1000);
    c.range(
        "ha.dead_ms",
        ha.dead_ms,
        ha.heartbeat_ms.saturating_mul(3).max(15),
        10_000,
    );
    c.range("ha.startup_wait_ms", ha.startup_wait_ms, 0, 600_000);
    c.range("ha.control_priority", ha.control_priority, 0, 99);
    c.range("ha.garp_spacing_ms", ha.garp_spacing_ms, 0, 10_000);
    for (i, d) in ha.quality_disks.iter().enumerate() {
        c.range(&format!("ha.quality_disks[{i}].weight"), d.weight, 0, 9999);
        if !d.path.is_absolute() {
            c.fail(
                format!("ha.quality_disks[{i}].path"),
                format!(
                    "{:?} is relative; allowed an absolute directory path",
                    d.path
                ),
            );
        }
    }
    if let Some(t) = &ha.quality_tpm {
        c.range("ha.quality_tpm.weight", t.weight, 0, 9999);
        if t.device.is_none() && cfg.control.tpm.is_none() {
            c.fail(
                "ha.quality_tpm",
                "there is nothing to check: give the node's TPM in control.tpm (tcti), or a device whose presence is checked",
            );
        }
    }
    if let Some(w) = ha.quality_hwmon_weight {
        c.range("ha.quality_hwmon_weight", w, 0, 9999);
    }
    c.range("ha.icmp_timeout_ms", ha.icmp_timeout_ms, 5, 5000);
    if ha.garp_interval_ms != 0 {
        c.range("ha.garp_interval_ms", ha.garp_interval_ms, 100, 3_600_000);
    }
    let mut seen = HashSet::new();
    for (i, l) in ha.links.iter().enumerate() {
        if !in_charset(&l.name, 32, ident_char) {
            c.fail(
                format!("ha.links[{i}].name"),
                format!(
                    "{:?} is not a valid link name; allowed {}",
                    l.name,
                    allowed("ha.links[].name")
                ),
            );
        }
        let iface_ok = !l.interface.is_empty()
            && l.interface.len() <= 15
            && !l
                .interface
                .chars()
                .any(|ch| ch == '/' || ch == ':' || ch.is_whitespace());
        if !iface_ok || !seen.insert(l.interface.clone()) {
            c.fail(
                format!("ha.links[{i}].interface"),
                format!(
                    "{:?} is not a usable, distinct interface; allowed {}",
                    l.interface,
                    allowed("ha.links[].interface")
                ),
            );
        }
        // The HA links are the kernel's: a data port's interface, which
        // the dataplane owns, can carry no heartbeat, sync or join (F22:
        // no implicit rule lets HA traffic through the policy).
        if let Some(d) = cfg
            .interfaces
            .iter()
            .find(|d| d.kernel_interface() == Some(l.interface.as_str()))
        {
            c.fail(
                format!("ha.links[{i}].interface"),
                format!(
                    "{:?} is the kernel interface of data interface {:?}: an HA link needs an interface of its own that the dataplane does not take",
                    l.interface, d.name
                ),
            );
        }
        let net = l.address;
        let host_ok =
            net.prefix_len >= 31 || (l.peer != net.network() && l.peer != net.broadcast());
        if !net.contains(l.peer) || l.peer == net.addr || !host_ok {
            c.fail(
                format!("ha.links[{i}].peer"),
                format!(
                    "{} is not a peer address on {net}; allowed {}",
                    l.peer,
                    allowed("ha.links[].peer")
                ),
            );
        }
        if cfg
            .interfaces
            .iter()
            .any(|ifc| ifc.addresses.iter().any(|a| a.overlaps(&net)))
        {
            c.fail(
                format!("ha.links[{i}].address"),
                format!(
                    "{net} overlaps a data interface's network; HA links need their own networks"
                ),
            );
        }
    }
}

fn allowed(field: &str) -> &'static str {
    allowed_values(field).unwrap_or("see the documentation")
}

fn node(c: &mut Checker<'_>, cfg: &NodeConfig) {
    let n = &cfg.node;
    if !in_charset(&n.name, 63, ident_char) {
        c.fail(
            "node.name",
            format!(
                "{:?} is not a valid node name; allowed {}",
                n.name,
                allowed("node.name")
            ),
        );
    }
    if !in_charset(&n.serial, 32, ident_char) {
        c.fail(
            "node.serial",
            format!(
                "{:?} is not a valid serial; allowed {}",
                n.serial,
                allowed("node.serial")
            ),
        );
    }
    if let Some(Err(e)) = cfg.control.syslog.as_ref().map(crate::SyslogConfig::target) {
        c.fail("control.syslog", e);
    }
    if let Some(t) = &cfg.control.tpm {
        if t.pcr != 16 && t.pcr != 23 {
            c.fail(
                "control.tpm.pcr",
                format!(
                    "{} is not a PCR tandemd may reset before it measures itself; allowed 16 or 23 (23, the application PCR, by default)",
                    t.pcr
                ),
            );
        }
        let known = ["device:", "swtpm:", "mssim:", "tabrmd"];
        if !known.iter().any(|k| t.tcti.starts_with(k)) {
            c.fail(
                "control.tpm.tcti",
                format!(
                    "{:?} is not a TCTI tandem knows; allowed device:/dev/tpmrm0, swtpm:host=ADDR,port=P, mssim:... or tabrmd",
                    t.tcti
                ),
            );
        }
    }
    if let Some(secs) = cfg.control.update_confirm_secs {
        if !(10..=3600).contains(&secs) {
            c.fail(
                "control.update_confirm_secs",
                format!("{secs} is out of range; allowed 10 to 3600 seconds"),
            );
        }
    }
    if let Some(d) = &cfg.control.trusted_keys {
        if !d.is_absolute() {
            c.fail(
                "control.trusted_keys",
                format!(
                    "{:?} is not an absolute directory path; allowed an absolute path such as \"/etc/tandem/trusted-keys\"",
                    d.display().to_string()
                ),
            );
        }
    }
    let socket = &cfg.control.socket;
    if !socket.is_absolute() || socket.file_name().is_none() {
        c.fail(
            "control.socket",
            format!(
                "{:?} is not an absolute socket path; allowed {}",
                socket.display().to_string(),
                allowed("control.socket")
            ),
        );
    }
}

fn eal(c: &mut Checker<'_>, cfg: &NodeConfig) {
    let e = &cfg.eal;
    if let Some(p) = &e.file_prefix {
        if !in_charset(p, 63, ident_char) {
            c.fail(
                "eal.file_prefix",
                format!(
                    "{p:?} is not a valid file prefix; allowed {}",
                    allowed("eal.file_prefix")
                ),
            );
        }
    }
    if let Some(l) = &e.lcores {
        let ok = !l.is_empty()
            && l.chars().any(|ch| ch.is_ascii_digit())
            && l.chars()
                .all(|ch| ch.is_ascii_digit() || ",-@()".contains(ch));
        if !ok {
            c.fail(
                "eal.lcores",
                format!(
                    "{l:?} is not an lcore map; allowed {}",
                    allowed("eal.lcores")
                ),
            );
        }
    }
    match e.memory_mb {
        None if e.no_huge => c.fail_at(
            "eal.memory_mb",
            "eal.no_huge",
            format!(
                "is required when no_huge is true (EAL then reserves plain memory); allowed {}",
                allowed("eal.memory_mb")
            ),
        ),
        Some(m) if m < 64 => c.fail(
            "eal.memory_mb",
            format!("{m} is too small; allowed {}", allowed("eal.memory_mb")),
        ),
        _ => {}
    }
    if e.no_huge && e.in_memory {
        c.fail(
            "eal.in_memory",
            "true cannot be combined with no_huge: true (EAL refuses --in-memory with \
             --no-huge); allowed: false, or leave it out",
        );
    }
}

fn dataplane(c: &mut Checker<'_>, cfg: &NodeConfig) {
    let d = &cfg.dataplane;
    let workers = d.workers.len();
    if !(1..=128).contains(&workers) {
        c.fail(
            "dataplane.workers",
            format!(
                "{workers} workers configured; allowed {}",
                allowed("dataplane.workers")
            ),
        );
    }
    let mut cpus = HashMap::new();
    for (i, w) in d.workers.iter().enumerate() {
        if let Some(cpu) = w.cpu {
            if let Some(first) = cpus.insert(cpu, i) {
                c.fail(
                    format!("dataplane.workers[{i}].cpu"),
                    format!(
                        "CPU {cpu} is already used by dataplane.workers[{first}]; allowed {}",
                        allowed("dataplane.workers[].cpu")
                    ),
                );
            }
        }
    }
    if let Some(cpu) = d.sync_cpu {
        if let Some(w) = cpus.get(&cpu) {
            c.fail(
                "dataplane.sync_cpu",
                format!(
                    "CPU {cpu} is already used by dataplane.workers[{w}]; allowed {}",
                    allowed("dataplane.sync_cpu")
                ),
            );
        }
    }
    if !d.handoff_ring.is_power_of_two() || !(256..=65_536).contains(&d.handoff_ring) {
        c.fail(
            "dataplane.handoff_ring",
            format!(
                "{} is not allowed; allowed {}",
                d.handoff_ring,
                allowed("dataplane.handoff_ring")
            ),
        );
    }
    c.range("dataplane.burst", d.burst, 1, 256);
    c.range("dataplane.mbufs", d.mbufs, 1023, 4_194_303);
    c.range("dataplane.mbuf_cache", d.mbuf_cache, 0, 512);
    for (field, n) in [
        ("dataplane.rx_descriptors", d.rx_descriptors),
        ("dataplane.tx_descriptors", d.tx_descriptors),
    ] {
        if !n.is_power_of_two() || !(64..=8192).contains(&n) {
            c.fail(
                field,
                format!("{n} is not allowed; allowed {}", allowed(field)),
            );
        }
    }
    let n = &d.neighbour;
    c.range("dataplane.neighbour.capacity", n.capacity, 16, 1_048_576);
    c.range(
        "dataplane.neighbour.reachable_secs",
        n.reachable_secs,
        1,
        u32::MAX,
    );
    c.range("dataplane.neighbour.retry_ms", n.retry_ms, 1, u32::MAX);
    if n.timeout_secs < n.reachable_secs {
        c.fail(
            "dataplane.neighbour.timeout_secs",
            format!(
                "{} is shorter than reachable_secs ({}); allowed {}..=4294967295",
                n.timeout_secs, n.reachable_secs, n.reachable_secs
            ),
        );
    }
    c.range(
        "dataplane.idle.max_sleep_us",
        d.idle.max_sleep_us,
        1,
        100_000,
    );
}

fn interfaces(c: &mut Checker<'_>, cfg: &NodeConfig) {
    if cfg.interfaces.is_empty() {
        c.fail(
            "interfaces",
            format!("is empty; allowed {}", allowed("interfaces")),
        );
    }
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut devices: HashMap<&str, usize> = HashMap::new();
    let mut netdevs: HashMap<&str, usize> = HashMap::new();
    let mut addrs: HashMap<Ipv4Addr, String> = HashMap::new();
    // Each interface's subnets, checked against the earlier interfaces'.
    let mut subnets: Vec<(usize, usize, Ipv4Cidr)> = Vec::new();
    for (i, f) in cfg.interfaces.iter().enumerate() {
        let p = format!("interfaces[{i}]");
        if !in_charset(&f.name, 15, iface_char) {
            c.fail(
                format!("{p}.name"),
                format!(
                    "{:?} is not a valid interface name; allowed {}",
                    f.name,
                    allowed("interfaces[].name")
                ),
            );
        } else if let Some(first) = names.insert(&f.name, i) {
            c.fail(
                format!("{p}.name"),
                format!(
                    "{:?} is already the name of interfaces[{first}]; allowed {}",
                    f.name,
                    allowed("interfaces[].name")
                ),
            );
        }
        match &f.device {
            Device::Pci(a) => {
                if !is_pci_address(a) {
                    c.fail(
                        format!("{p}.device"),
                        format!(
                            "{a:?} is not a PCI address; expected domain:bus:device.function \
                             in hex such as \"0000:03:00.0\" (device 00..=1f, function 0..=7)"
                        ),
                    );
                }
            }
            Device::Vdev(spec) => {
                let name = vdev_name(spec);
                let driver_ok = name.len() > 4
                    && name.starts_with("net_")
                    && name
                        .chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || ch == '_');
                if !driver_ok {
                    c.fail(
                        format!("{p}.device"),
                        format!(
                            "{spec:?} does not start with a network vdev name; expected \
                             net_<driver><n>[,key=value...] such as \"net_af_packet0,iface=fw-in\""
                        ),
                    );
                } else if (name.starts_with("net_af_packet") || name.starts_with("net_af_xdp"))
                    && !matches!(vdev_arg(spec, "iface"), Some(v) if !v.is_empty())
                {
                    c.fail(
                        format!("{p}.device"),
                        format!(
                            "{spec:?} lacks the iface= argument that names its kernel \
                             interface; expected e.g. \"{name},iface=fw-in\""
                        ),
                    );
                }
            }
        }
        let dev = f.device.name();
        if !dev.is_empty() {
            if let Some(first) = devices.insert(dev, i) {
                c.fail(
                    format!("{p}.device"),
                    format!(
                        "{dev:?} is already the device of interfaces[{first}]; allowed a \
                         device used by one interface only"
                    ),
                );
            }
        }
        c.range(&format!("{p}.mtu"), f.mtu, 576, 9000);
        c.range(&format!("{p}.weight"), f.weight, 0, 9999);
        if let Some(agg) = &f.aggregate {
            if !f.device.name().starts_with("net_bonding") {
                c.fail(
                    format!("{p}.device"),
                    format!(
                        "an aggregate's device must be a bonding vdev; expected e.g. \
                         Vdev(\"net_bonding0\"), got {:?}",
                        f.device.name()
                    ),
                );
            }
            if !(2..=8).contains(&agg.members.len()) {
                c.fail(
                    format!("{p}.aggregate.members"),
                    format!(
                        "{} members given; allowed {}",
                        agg.members.len(),
                        allowed("interfaces[].aggregate.members")
                    ),
                );
            }
            for (j, m) in agg.members.iter().enumerate() {
                let name = m.name();
                if let Some(first) = devices.insert(name, i) {
                    c.fail(
                        format!("{p}.aggregate.members[{j}]"),
                        format!(
                            "{name:?} is already used by interfaces[{first}]; allowed a \
                             device used once on the node"
                        ),
                    );
                }
            }
        }
        if let Some(k) = &f.kernel_interface {
            if !is_linux_ifname(k) {
                c.fail(
                    format!("{p}.kernel_interface"),
                    format!(
                        "{k:?} is not a Linux interface name; allowed {}",
                        allowed("interfaces[].kernel_interface")
                    ),
                );
            }
        }
        if let Some(k) = f.kernel_interface() {
            if let Some(first) = netdevs.insert(k, i) {
                let field = if f.kernel_interface.is_some() {
                    format!("{p}.kernel_interface")
                } else {
                    format!("{p}.device")
                };
                c.fail(
                    field,
                    format!(
                        "kernel interface {k:?} is already behind interfaces[{first}]; \
                         allowed one DPDK port per kernel interface"
                    ),
                );
            }
        }
        for (j, a) in f.addresses.iter().enumerate() {
            let field = format!("{p}.addresses[{j}]");
            if let Some(why) = bad_host_address(a) {
                c.fail(
                    &field,
                    format!(
                        "\"{a}\" cannot be an interface address: {why}; allowed a unicast \
                         host address with a prefix length of 1..=32"
                    ),
                );
                continue;
            }
            if let Some(first) = addrs.insert(a.addr, field.clone()) {
                c.fail(
                    &field,
                    format!(
                        "{} is already configured at {first}; allowed each address once per node",
                        a.addr
                    ),
                );
                continue;
            }
            if let Some(&(oi, oj, other)) =
                subnets.iter().find(|(oi, _, o)| *oi != i && o.overlaps(a))
            {
                c.fail(
                    &field,
                    format!(
                        "subnet {} overlaps subnet {} of interfaces[{oi}] ({:?}) at \
                         interfaces[{oi}].addresses[{oj}]; allowed subnets that do not \
                         overlap between interfaces",
                        a.trunc(),
                        other.trunc(),
                        cfg.interfaces[oi].name
                    ),
                );
            }
            subnets.push((i, j, *a));
        }
    }
}

fn routes(c: &mut Checker<'_>, cfg: &NodeConfig) {
    let mut seen: HashSet<Ipv4Cidr> = HashSet::new();
    let own: HashSet<Ipv4Addr> = cfg
        .interfaces
        .iter()
        .flat_map(|f| f.addresses.iter().map(|a| a.addr))
        .collect();
    for (i, r) in cfg.routes.iter().enumerate() {
        let p = format!("routes[{i}]");
        let dest = r.destination;
        if !dest.is_canonical() {
            c.fail(
                format!("{p}.destination"),
                format!(
                    "\"{dest}\" has host bits set; write the network as \"{}\"",
                    dest.trunc()
                ),
            );
        }
        if !seen.insert(dest.trunc()) {
            c.fail(
                format!("{p}.destination"),
                format!("\"{}\" is already the destination of an earlier route; allowed one route per destination", dest.trunc()),
            );
        }
        if r.via.is_none() && r.interface.is_none() {
            c.fail(
                &p,
                "has neither via nor interface; allowed: via (a next hop in a connected \
                 subnet), interface (an interface name), or both",
            );
        }
        let names: Vec<&str> = cfg.interfaces.iter().map(|f| f.name.as_str()).collect();
        let iface = match &r.interface {
            Some(name) => match cfg.interface(name) {
                Some(f) => Some(f),
                None => {
                    c.fail(
                        format!("{p}.interface"),
                        format!("{name:?} is not a configured interface; allowed one of {names:?}"),
                    );
                    continue;
                }
            },
            None => None,
        };
        let Some(via) = r.via else { continue };
        let field = format!("{p}.via");
        if own.contains(&via) {
            c.fail(
                &field,
                format!("{via} is an address of this node; allowed a neighbour's address"),
            );
            continue;
        }
        let connected = |f: &crate::schema::InterfaceConfig| {
            f.addresses
                .iter()
                .any(|a| a.prefix_len < 32 && a.contains(via))
        };
        let subnets_of = |f: &crate::schema::InterfaceConfig| {
            f.addresses
                .iter()
                .map(|a| a.trunc().to_string())
                .collect::<Vec<_>>()
        };
        match iface {
            Some(f) if !connected(f) => c.fail(
                &field,
                format!(
                    "{via} is not in a connected subnet of interface {:?}; allowed an address in {:?}",
                    f.name,
                    subnets_of(f)
                ),
            ),
            None if !cfg.interfaces.iter().any(connected) => {
                let all: Vec<String> = cfg.interfaces.iter().flat_map(subnets_of).collect();
                c.fail(
                    &field,
                    format!("{via} is not in a connected subnet; allowed an address in {all:?}"),
                );
            }
            _ => {}
        }
    }
}
