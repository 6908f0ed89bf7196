//! The configuration types of a node, their defaults and small accessors.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::cidr::Ipv4Cidr;

/// The whole configuration of one tandem node (one member of an HA pair).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Who this node is.
    pub node: NodeIdentity,
    /// The local control socket used by `tandemctl`.
    #[serde(default)]
    pub control: ControlConfig,
    /// How DPDK's EAL is initialised.
    #[serde(default)]
    pub eal: EalConfig,
    /// Worker threads, memory pools, queues and the neighbour table.
    #[serde(default)]
    pub dataplane: DataplaneConfig,
    /// The cluster's directory (relative to this file's), when this node
    /// is a member of a cluster: its `cluster.ron` then holds the
    /// interfaces, routes, firewall and HA sections for both members, and
    /// this file may not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<PathBuf>,
    /// What loading the cluster's file found (none for a node alone).
    #[serde(skip)]
    pub membership: Option<crate::cluster::Membership>,
    /// The data ports; at least one.
    #[serde(default)]
    pub interfaces: Vec<InterfaceConfig>,
    /// Static routes in addition to the connected subnets.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// The stateful firewall: policy file and connection tables.
    #[serde(default)]
    pub firewall: FirewallConfig,
    /// High availability: the cluster this node is a member of. Without it
    /// the node runs alone and is always active.
    #[serde(default)]
    pub ha: Option<HaConfig>,
}

/// A secret of the configuration (the pre-shared key): written and read
/// as a plain string, never shown by `Debug` (a configuration printed in
/// a log or a panic does not leak it), wiped from memory on drop.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// A secret holding `s`.
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// Whether it holds nothing (a key kept elsewhere).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The secret itself: hand it straight to its one consumer (the key
    /// derivation, the strength check).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Secret(<redacted, {} characters>)",
            self.0.chars().count()
        )
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

/// Membership of an active/passive cluster of two nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaConfig {
    /// Identifies the cluster on the HA links (both members carry the same).
    pub cluster_id: u32,
    /// The pre-shared key that authenticates (and, with `encrypt`,
    /// encrypts) the traffic between the members: at least 12 characters
    /// mixing three of lower case, upper case, digits and other characters.
    /// Never shown by `Debug`, wiped on drop. Left out of the file, the
    /// key is in each member's key store (`secrets/ha-psk` beside
    /// `node.ron`, sealed in the TPM when the member has one), which
    /// tandem reads into this field ([`HaConfig::psk_stored`]).
    #[serde(default, skip_serializing_if = "Secret::is_empty")]
    pub psk: Secret,
    /// Not in any file: `psk` came from the member's key store, so a
    /// cluster file written from this configuration leaves it out.
    #[serde(skip)]
    pub psk_stored: bool,
    /// Encrypt the state sync between the members (always authenticated).
    #[serde(default)]
    pub encrypt: bool,
    /// The HA links, main first, then the optional backup: dedicated
    /// kernel interfaces (not DPDK ports) with their own addresses.
    pub links: Vec<HaLinkConfig>,
    /// UDP port of the state sync (K2K).
    #[serde(default = "default_sync_port")]
    pub sync_port: u16,
    /// Only connections older than this many seconds are synchronised
    /// (0: all, at once).
    #[serde(default)]
    pub sync_min_age_secs: u32,
    /// After a takeover, TCP windows are tracked loosely for this long, so
    /// that windows that moved on since the last sync do not reset
    /// connections.
    #[serde(default = "default_takeover_grace_ms")]
    pub takeover_grace_ms: u32,
    /// Gratuitous ARP for every address on becoming active: how many per
    /// address.
    #[serde(default = "default_garp_count")]
    pub garp_count: u8,
    /// Elect the active member automatically (heartbeats on UDP 5405,
    /// quality, priority). Off: the roles are set by hand only (haactive /
    /// hapassive), as in a lab that wants to drive the swaps itself.
    #[serde(default = "yes")]
    pub election: bool,
    /// When no HA link carries heartbeats, send them over the data ports
    /// too (the last-resort heartbeat).
    #[serde(default = "yes")]
    pub last_resort: bool,
    /// Before taking over from a peer silent on every path, check with
    /// ICMP over the data ports that its dataplane is gone (it answers
    /// while it forwards). Off: a silent peer is dead.
    #[serde(default = "yes")]
    pub icmp_check: bool,
    /// At start-up, wait this long for the peer before deciding alone.
    #[serde(default = "default_startup_wait_ms")]
    pub startup_wait_ms: u32,
    /// How long the ICMP check waits for the peer's answer.
    #[serde(default = "default_icmp_timeout_ms")]
    pub icmp_timeout_ms: u32,
    /// Real-time (SCHED_RR) priority of the control thread, which sends
    /// and reads the heartbeats, so busy workers cannot delay it (0: the
    /// normal scheduler).
    #[serde(default = "default_control_priority")]
    pub control_priority: u8,
    /// Time between two of the `garp_count` gratuitous ARPs of an address
    /// on becoming active (0: all at once).
    #[serde(default = "default_garp_spacing_ms")]
    pub garp_spacing_ms: u32,
    /// Keep sending gratuitous ARP for every address this often while
    /// active (0: only on becoming active).
    #[serde(default)]
    pub garp_interval_ms: u32,
    /// Each member of an LACP aggregate counts in the quality factor with
    /// the aggregate's weight (off: the aggregate counts once, up while a
    /// member is).
    #[serde(default)]
    pub lacp_members_have_weight: bool,
    /// The same for active-backup aggregates.
    #[serde(default)]
    pub failover_members_have_weight: bool,
    /// Keep LACP aggregates in distribution on the passive member (off:
    /// the passive stops its LACPDUs, so partners take its members out;
    /// a takeover then waits for LACP to converge).
    #[serde(default = "yes")]
    pub lacp_when_passive: bool,
    /// Bounce (down, up) the data interfaces of a member that becomes
    /// passive, so switches forget its MAC addresses at once.
    #[serde(default)]
    pub bounce_on_swap: bool,
    /// Disks in the quality factor: each path must stay a writable
    /// directory with the given free space.
    #[serde(default)]
    pub quality_disks: Vec<DiskQualityConfig>,
    /// The TPM in the quality factor (`TPMQualityIncluded`).
    #[serde(default)]
    pub quality_tpm: Option<TpmQualityConfig>,
    /// The hardware sensors in the quality factor with this weight: no
    /// hwmon temperature at or above its critical mark.
    #[serde(default)]
    pub quality_hwmon_weight: Option<u16>,
    /// "Active firewall if equal": 50 for the preferred member, else 0.
    #[serde(default)]
    pub priority: u8,
    /// Heartbeat interval in milliseconds.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u32,
    /// The peer is dead after this many milliseconds without a heartbeat
    /// on any link.
    #[serde(default = "default_dead_ms")]
    pub dead_ms: u32,
}

fn default_heartbeat_ms() -> u32 {
    5
}

fn yes() -> bool {
    true
}

fn default_startup_wait_ms() -> u32 {
    1000
}

fn default_icmp_timeout_ms() -> u32 {
    10
}

fn default_garp_spacing_ms() -> u32 {
    20
}

fn default_control_priority() -> u8 {
    10
}

fn default_dead_ms() -> u32 {
    25
}

/// A disk check of the quality factor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskQualityConfig {
    /// A directory on the disk (e.g. the log directory).
    pub path: std::path::PathBuf,
    /// Less free space than this (MB) fails the check.
    #[serde(default = "default_min_free_mb")]
    pub min_free_mb: u64,
    /// Weight in the quality factor (0..=9999).
    #[serde(default = "default_weight")]
    pub weight: u16,
}

fn default_min_free_mb() -> u64 {
    100
}

/// The TPM check of the quality factor (`TPMQualityIncluded`): with the
/// node's `control.tpm`, the TPM must answer (`tpm2_getcap`); without it,
/// `device` must exist.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpmQualityConfig {
    /// The TPM device (e.g. /dev/tpmrm0), checked for presence only when
    /// the node has no `control.tpm`.
    #[serde(default)]
    pub device: Option<std::path::PathBuf>,
    /// Weight in the quality factor (0..=9999).
    #[serde(default = "default_weight")]
    pub weight: u16,
}

/// One HA link of this node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaLinkConfig {
    /// A name for logs and status ("HA-main", "HA-backup").
    pub name: String,
    /// The kernel interface of the link.
    pub interface: String,
    /// This node's address on the link, with its prefix (/31 allowed).
    pub address: Ipv4Cidr,
    /// The peer's address on the link (same network).
    pub peer: Ipv4Addr,
}

/// Default UDP port of the state sync.
pub const DEFAULT_SYNC_PORT: u16 = 44242;

fn default_sync_port() -> u16 {
    DEFAULT_SYNC_PORT
}

fn default_takeover_grace_ms() -> u32 {
    30_000
}

fn default_garp_count() -> u8 {
    3
}

/// The stateful firewall of the node. Without a `policy` the node is a plain
/// router: no connection tracking, no filtering, no NAT.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FirewallConfig {
    /// The filter and NAT policy (RON, see `config/examples/policy-lab.ron`);
    /// a relative path is taken from the node configuration's directory.
    pub policy: Option<PathBuf>,
    /// Connections the node can track, split evenly over the workers.
    pub connections: u32,
    /// Verify TCP/UDP/ICMP checksums of forwarded packets (drop and count
    /// the bad ones). Turn off only behind NICs that verify them.
    pub verify_checksums: bool,
    /// How long a first fragment's flow is remembered for the fragments
    /// that follow it, in milliseconds.
    pub fragment_timeout_ms: u32,
    /// Connection timeouts per protocol and state, in seconds; those left
    /// out keep their built-in defaults (close to Linux conntrack's, TCP
    /// established 2 h).
    pub timeouts: TimeoutsConfig,
    /// Room for connection changes waiting for the state sync, per
    /// worker. When it overflows, the changes are lost, counted and logged,
    /// and the peer gets the whole table again (a bulk): larger absorbs
    /// longer bursts of new connections.
    pub delta_ring: u32,
}

/// Connection timeouts in seconds (`None`: the built-in default).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutsConfig {
    /// `tcp_syn_sent` in seconds (default: built in).
    pub tcp_syn_sent: Option<u32>,
    /// `tcp_syn_received` in seconds (default: built in).
    pub tcp_syn_received: Option<u32>,
    /// `tcp_established` in seconds (default: built in).
    pub tcp_established: Option<u32>,
    /// `tcp_fin_wait` in seconds (default: built in).
    pub tcp_fin_wait: Option<u32>,
    /// `tcp_close_wait` in seconds (default: built in).
    pub tcp_close_wait: Option<u32>,
    /// `tcp_last_ack` in seconds (default: built in).
    pub tcp_last_ack: Option<u32>,
    /// `tcp_time_wait` in seconds (default: built in).
    pub tcp_time_wait: Option<u32>,
    /// `tcp_closed` in seconds (default: built in).
    pub tcp_closed: Option<u32>,
    /// `udp_unreplied` in seconds (default: built in).
    pub udp_unreplied: Option<u32>,
    /// `udp_replied` in seconds (default: built in).
    pub udp_replied: Option<u32>,
    /// `udp_stream` in seconds (default: built in).
    pub udp_stream: Option<u32>,
    /// `icmp` in seconds (default: built in).
    pub icmp: Option<u32>,
    /// `gre_unreplied` in seconds (default: built in).
    pub gre_unreplied: Option<u32>,
    /// `gre` in seconds (default: built in).
    pub gre: Option<u32>,
    /// `esp_unreplied` in seconds (default: built in).
    pub esp_unreplied: Option<u32>,
    /// `esp` in seconds (default: built in).
    pub esp: Option<u32>,
    /// `sctp_handshake` in seconds (default: built in).
    pub sctp_handshake: Option<u32>,
    /// `sctp_established` in seconds (default: built in).
    pub sctp_established: Option<u32>,
    /// `sctp_shutdown` in seconds (default: built in).
    pub sctp_shutdown: Option<u32>,
    /// `sctp_closed` in seconds (default: built in).
    pub sctp_closed: Option<u32>,
    /// `other_unreplied` in seconds (default: built in).
    pub other_unreplied: Option<u32>,
    /// `other` in seconds (default: built in).
    pub other: Option<u32>,
}

impl FirewallConfig {
    /// The policy file's path, relative paths taken from `base` (the
    /// directory of the node configuration).
    pub fn policy_path(&self, base: &std::path::Path) -> Option<PathBuf> {
        self.policy.as_ref().map(|p| {
            if p.is_absolute() {
                p.clone()
            } else {
                base.join(p)
            }
        })
    }
}

impl Default for FirewallConfig {
    fn default() -> Self {
        FirewallConfig {
            policy: None,
            connections: 65536,
            verify_checksums: true,
            fragment_timeout_ms: 2000,
            timeouts: TimeoutsConfig::default(),
            delta_ring: 16384,
        }
    }
}

/// The node's identity: a name unique in its cluster and the hardware
/// serial used when members join or are replaced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeIdentity {
    /// 1..=63 characters from `[A-Za-z0-9._-]`.
    pub name: String,
    /// 1..=32 characters from `[A-Za-z0-9._-]`.
    pub serial: String,
}

/// Where the control socket of `tandemd` listens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// Absolute path of the Unix socket; default `/run/tandem/tandemd.sock`.
    pub socket: PathBuf,
    /// The event log (HA, sync, policy events), rotated at 1 MiB, 5 kept;
    /// default `/var/log/tandem/<node name>.log`.
    pub event_log: Option<PathBuf>,
    /// Where the node keeps what must survive a restart (its boot epoch);
    /// default `/var/lib/tandem`.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// The identity file (serial, model, licence, data ports: what a
    /// cluster checks when a member joins); default `identity.ron` beside
    /// the configuration file. A node without one runs alone.
    #[serde(default)]
    pub identity: Option<PathBuf>,
    /// Serve Prometheus metrics (`GET /metrics`, text format) on this
    /// address, such as `"198.18.0.10:9105"` on a management network or
    /// `"127.0.0.1:9105"`; none by default. The endpoint has no
    /// authentication: do not bind it where untrusted hosts reach it.
    #[serde(default)]
    pub metrics: Option<std::net::SocketAddr>,
    /// Send the event log (and rule logs) to syslog too (RFC 5424).
    #[serde(default)]
    pub syslog: Option<SyslogConfig>,
    /// Firmware updates: the directory of the public keys (`NAME.pub`,
    /// hex) a package must be signed with; default
    /// `/etc/tandem/trusted-keys`.
    #[serde(default)]
    pub trusted_keys: Option<PathBuf>,
    /// Seconds an updated version has to rejoin its peer before
    /// tandem-boot rolls it back (10..=3600); default 120.
    #[serde(default)]
    pub update_confirm_secs: Option<u64>,
    /// The member's key store, where the cluster key is kept when the
    /// cluster's file leaves `ha.psk` out (relative to this file's
    /// directory); default `secrets`.
    #[serde(default)]
    pub key_store: Option<PathBuf>,
    /// The node's TPM 2.0: tandemd measures itself into a PCR at start,
    /// and `ha.quality_tpm` asks it whether it answers. None: no TPM.
    #[serde(default)]
    pub tpm: Option<TpmConfig>,
}

/// `control.tpm`: the node's TPM 2.0, driven through tpm2-tools.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpmConfig {
    /// The TCTI: `device:/dev/tpmrm0` (default: the kernel's resource
    /// manager) or `swtpm:host=127.0.0.1,port=2321` (an emulator).
    #[serde(default = "default_tcti")]
    pub tcti: String,
    /// The PCR tandemd measures its own binary into (0..=23; default 23,
    /// the application PCR).
    #[serde(default = "default_tpm_pcr")]
    pub pcr: u8,
}

fn default_tcti() -> String {
    "device:/dev/tpmrm0".into()
}

fn default_tpm_pcr() -> u8 {
    23
}

/// `control.syslog`: where the event log goes besides its file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogConfig {
    /// The local syslog socket (`/dev/log`, or `socket`).
    #[serde(default)]
    pub local: bool,
    /// The local socket's path, when not `/dev/log` (a chroot, a test).
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// A collector: `"udp://ADDRESS:PORT"` or `"tcp://ADDRESS:PORT"`.
    #[serde(default)]
    pub remote: Option<String>,
    /// `local0` (default) .. `local7`, `daemon` or `user`.
    #[serde(default)]
    pub facility: Option<String>,
}

/// [`SyslogConfig`] checked: where messages go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyslogTarget {
    /// The local socket, if any.
    pub local: Option<PathBuf>,
    /// The remote collector, if any: (over TCP, address).
    pub remote: Option<(bool, std::net::SocketAddr)>,
    /// The facility code (16 = local0).
    pub facility: u8,
}

/// The syslog facilities an operator may name.
pub const SYSLOG_FACILITIES: &[(&str, u8)] = &[
    ("user", 1),
    ("daemon", 3),
    ("local0", 16),
    ("local1", 17),
    ("local2", 18),
    ("local3", 19),
    ("local4", 20),
    ("local5", 21),
    ("local6", 22),
    ("local7", 23),
];

impl SyslogConfig {
    /// Where messages go; the error says what is wrong and what is
    /// allowed.
    pub fn target(&self) -> Result<SyslogTarget, String> {
        let facility = match &self.facility {
            None => 16,
            Some(f) => SYSLOG_FACILITIES
                .iter()
                .find(|(n, _)| n == f)
                .map(|(_, v)| *v)
                .ok_or_else(|| {
                    format!(
                        "{f:?} is not a facility; allowed {}",
                        SYSLOG_FACILITIES
                            .iter()
                            .map(|(n, _)| *n)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })?,
        };
        let remote = match &self.remote {
            None => None,
            Some(r) => {
                let (tcp, rest) = if let Some(a) = r.strip_prefix("udp://") {
                    (false, a)
                } else if let Some(a) = r.strip_prefix("tcp://") {
                    (true, a)
                } else {
                    return Err(format!(
                        "remote {r:?}: write udp://ADDRESS:PORT or tcp://ADDRESS:PORT"
                    ));
                };
                let addr: std::net::SocketAddr = rest.parse().map_err(|_| {
                    format!("remote {r:?}: {rest:?} is not ADDRESS:PORT (an IP address and a port)")
                })?;
                Some((tcp, addr))
            }
        };
        if !self.local && remote.is_none() {
            return Err("neither local: true nor a remote collector: nothing to send to".into());
        }
        if let Some(p) = self.socket.as_ref().filter(|p| !p.is_absolute()) {
            return Err(format!(
                "socket {:?}: an absolute path such as /dev/log",
                p.display().to_string()
            ));
        }
        Ok(SyslogTarget {
            local: self.local.then(|| {
                self.socket
                    .clone()
                    .unwrap_or_else(|| PathBuf::from("/dev/log"))
            }),
            remote,
            facility,
        })
    }
}

/// The default control socket path.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/tandem/tandemd.sock";

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            socket: PathBuf::from(DEFAULT_CONTROL_SOCKET),
            event_log: None,
            state_dir: None,
            identity: None,
            metrics: None,
            syslog: None,
            trusted_keys: None,
            update_confirm_secs: None,
            key_store: None,
            tpm: None,
        }
    }
}

/// DPDK EAL settings, turned into an argv by [`NodeConfig::eal_args`].
///
/// `in_memory` defaults to `true`, except with `no_huge: true` where it
/// defaults to `false` (DPDK refuses `--in-memory` with `--no-huge`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "EalSpec", into = "EalSpec")]
pub struct EalConfig {
    /// `--file-prefix`; default `tandem-<node.name>` so that two nodes on
    /// one host do not share DPDK runtime files.
    pub file_prefix: Option<String>,
    /// Passed as `--lcores=<value>`; when absent EAL gets `-l 0`.
    pub lcores: Option<String>,
    /// Run without hugepages (`--no-huge --no-shconf`), for labs.
    pub no_huge: bool,
    /// `-m <n>` megabytes of memory; required (and at least 64) with
    /// `no_huge`.
    pub memory_mb: Option<u32>,
    /// `--in-memory`: no shared runtime files; forbidden with `no_huge`.
    pub in_memory: bool,
    /// Appended verbatim to the EAL argv.
    pub extra_args: Vec<String>,
}

impl Default for EalConfig {
    fn default() -> Self {
        EalSpec::default().into()
    }
}

/// The written form of [`EalConfig`]: `in_memory` may be left out, and its
/// default depends on `no_huge`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct EalSpec {
    file_prefix: Option<String>,
    lcores: Option<String>,
    no_huge: bool,
    memory_mb: Option<u32>,
    in_memory: Option<bool>,
    extra_args: Vec<String>,
}

impl From<EalSpec> for EalConfig {
    fn from(s: EalSpec) -> Self {
        EalConfig {
            file_prefix: s.file_prefix,
            lcores: s.lcores,
            no_huge: s.no_huge,
            memory_mb: s.memory_mb,
            in_memory: s.in_memory.unwrap_or(!s.no_huge),
            extra_args: s.extra_args,
        }
    }
}

impl From<EalConfig> for EalSpec {
    fn from(c: EalConfig) -> Self {
        EalSpec {
            file_prefix: c.file_prefix,
            lcores: c.lcores,
            no_huge: c.no_huge,
            memory_mb: c.memory_mb,
            in_memory: Some(c.in_memory),
            extra_args: c.extra_args,
        }
    }
}

/// How the dataplane runs: its workers and their resources.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataplaneConfig {
    /// One entry per worker thread; 1..=128; default one unpinned worker.
    pub workers: Vec<WorkerConfig>,
    /// Spin or back off when idle; default `Adaptive`.
    pub poll_mode: PollMode,
    /// Packets per rx/tx burst; 1..=256, default 32.
    pub burst: u16,
    /// Mbufs in the mempool of each socket; 1023..=4_194_303, default 16383.
    pub mbufs: u32,
    /// Per-lcore mempool cache; at most 512, default 256.
    pub mbuf_cache: u32,
    /// Rx ring size per queue; power of two 64..=8192, default 1024.
    pub rx_descriptors: u16,
    /// Tx ring size per queue; power of two 64..=8192, default 1024.
    pub tx_descriptors: u16,
    /// Packets each worker's handoff ring holds (packets other workers
    /// hand to it because it owns their flow); power of two 256..=65536,
    /// default 4096.
    pub handoff_ring: u32,
    /// Pin the sync core (the thread that streams connections to the
    /// peer) to this CPU; unpinned when `None`.
    pub sync_cpu: Option<usize>,
    /// The ARP/neighbour table.
    pub neighbour: NeighbourConfig,
    /// The back-off of the adaptive poll mode.
    pub idle: IdleConfig,
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        Self {
            workers: vec![WorkerConfig::default()],
            poll_mode: PollMode::default(),
            burst: 32,
            mbufs: 16383,
            mbuf_cache: 256,
            rx_descriptors: 1024,
            tx_descriptors: 1024,
            handoff_ring: 4096,
            sync_cpu: None,
            neighbour: NeighbourConfig::default(),
            idle: IdleConfig::default(),
        }
    }
}

/// One dataplane worker thread.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Pin the worker to this CPU; unpinned when `None`.
    pub cpu: Option<usize>,
}

/// What a worker does when its queues are empty.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PollMode {
    /// Spin without pause: lowest latency, needs a dedicated core.
    Busy,
    /// Back off (pause, then sleep up to `idle.max_sleep_us`) after
    /// `idle.spin_polls` empty polls, so shared cores stay usable.
    #[default]
    Adaptive,
}

/// The neighbour (ARP) table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NeighbourConfig {
    /// Entries; 16..=1_048_576, default 4096.
    pub capacity: u32,
    /// Seconds an entry is used without re-validation; default 30.
    pub reachable_secs: u32,
    /// Seconds before an unused entry is dropped; default 300, at least
    /// `reachable_secs`.
    pub timeout_secs: u32,
    /// ARP request retry interval in milliseconds; default 1000.
    pub retry_ms: u32,
    /// Packets held per worker while a neighbour is resolved; default 64.
    pub hold_packets: u16,
}

impl Default for NeighbourConfig {
    fn default() -> Self {
        Self {
            capacity: 4096,
            reachable_secs: 30,
            timeout_secs: 300,
            retry_ms: 1000,
            hold_packets: 64,
        }
    }
}

/// The back-off of [`PollMode::Adaptive`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdleConfig {
    /// Empty polls before the worker starts pausing; default 256.
    pub spin_polls: u32,
    /// Longest sleep between polls in microseconds; 1..=100000, default 500.
    pub max_sleep_us: u32,
}

impl Default for IdleConfig {
    fn default() -> Self {
        Self {
            spin_polls: 256,
            max_sleep_us: 500,
        }
    }
}

/// One data port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterfaceConfig {
    /// Unique name used by routes and policy; 1..=15 chars `[a-z0-9_-]`.
    pub name: String,
    /// The DPDK port behind the interface.
    pub device: Device,
    /// The interface's addresses with their connected subnets; may be empty.
    #[serde(default)]
    pub addresses: Vec<Ipv4Cidr>,
    /// 576..=9000, default 1500.
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    /// The kernel netdev behind the port, watched for link state; see
    /// [`InterfaceConfig::kernel_interface`].
    #[serde(default)]
    pub kernel_interface: Option<String>,
    /// Weight of the interface in the HA quality factor (0..=9999; 0: its
    /// link does not count).
    #[serde(default = "default_weight")]
    pub weight: u16,
    /// A link aggregate: `device` is then a DPDK bonding vdev
    /// (`Vdev("net_bonding0")`) over these members.
    #[serde(default)]
    pub aggregate: Option<AggregateConfig>,
}

/// A link aggregate (DPDK's bonding PMD).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateConfig {
    /// LACP (802.3ad) or active-backup redundancy.
    pub mode: AggregateMode,
    /// The member ports, 2..=8; the first is the active-backup primary.
    pub members: Vec<Device>,
    /// LACP timers: `Standard` (IEEE: 30 s LACPDUs, 90 s timeout) or
    /// `Fast` (1 s, 3 s: only when the partner runs DPDK with `Fast` too,
    /// as DPDK never asks its partner for fast LACPDUs).
    #[serde(default)]
    pub lacp_rate: LacpRate,
}

/// How an aggregate uses its members.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AggregateMode {
    /// 802.3ad (bonding mode 4): every member in distribution carries traffic.
    Lacp,
    /// One member carries traffic, the next takes over when it goes down
    /// (bonding mode 1).
    ActiveBackup,
}

impl AggregateMode {
    /// The bonding PMD's mode number.
    pub fn bonding_mode(self) -> u8 {
        match self {
            AggregateMode::Lacp => 4,
            AggregateMode::ActiveBackup => 1,
        }
    }
}

/// LACP timer set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum LacpRate {
    /// IEEE defaults (DPDK's).
    #[default]
    Standard,
    /// Fast periodic LACPDUs and a 3 s timeout.
    Fast,
}

/// The default weight of an interface in the quality factor.
pub const DEFAULT_WEIGHT: u16 = 100;

fn default_weight() -> u16 {
    DEFAULT_WEIGHT
}

/// The default interface MTU.
pub const DEFAULT_MTU: u16 = 1500;

fn default_mtu() -> u16 {
    DEFAULT_MTU
}

impl InterfaceConfig {
    /// The kernel netdev behind the port: `kernel_interface` if given, else
    /// the `iface=` argument of an af_packet or af_xdp vdev.
    pub fn kernel_interface(&self) -> Option<&str> {
        if let Some(k) = &self.kernel_interface {
            return Some(k);
        }
        match &self.device {
            Device::Vdev(spec) => {
                let driver = vdev_name(spec);
                if driver.starts_with("net_af_packet") || driver.starts_with("net_af_xdp") {
                    vdev_arg(spec, "iface")
                } else {
                    None
                }
            }
            Device::Pci(_) => None,
        }
    }
}

/// Where a port comes from.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Device {
    /// A PCI device, `"0000:03:00.0"` (domain:bus:device.function).
    Pci(String),
    /// A virtual device spec as given to `--vdev`,
    /// `"net_af_packet0,iface=veth0,framecnt=8192"`.
    Vdev(String),
}

impl Device {
    /// The name DPDK knows the port by: the PCI address or the vdev name.
    pub fn name(&self) -> &str {
        match self {
            Device::Pci(a) => a,
            Device::Vdev(spec) => vdev_name(spec),
        }
    }
}

/// The vdev name (driver + instance) of a vdev spec: the part before the
/// first comma.
pub(crate) fn vdev_name(spec: &str) -> &str {
    spec.split(',').next().unwrap_or("").trim()
}

/// The value of `key=` in a vdev spec.
pub(crate) fn vdev_arg<'a>(spec: &'a str, key: &str) -> Option<&'a str> {
    spec.split(',')
        .skip(1)
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim())
}

/// A static route.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The destination network, canonical (no host bits).
    pub destination: Ipv4Cidr,
    /// The next hop; inside a connected subnet.
    #[serde(default)]
    pub via: Option<Ipv4Addr>,
    /// The egress interface, by name.
    #[serde(default)]
    pub interface: Option<String>,
}

impl NodeConfig {
    /// The EAL `--file-prefix`: the configured one or `tandem-<node.name>`.
    pub fn file_prefix(&self) -> String {
        self.eal
            .file_prefix
            .clone()
            .unwrap_or_else(|| format!("tandem-{}", self.node.name))
    }

    /// The interface called `name`.
    pub fn interface(&self, name: &str) -> Option<&InterfaceConfig> {
        self.interfaces.iter().find(|i| i.name == name)
    }

    /// The EAL argv, program name first.
    pub fn eal_args(&self) -> Vec<String> {
        let eal = &self.eal;
        let mut args = vec![
            "tandemd".to_owned(),
            format!("--file-prefix={}", self.file_prefix()),
        ];
        match &eal.lcores {
            Some(l) => args.push(format!("--lcores={l}")),
            None => args.extend(["-l".to_owned(), "0".to_owned()]),
        }
        if eal.no_huge {
            args.extend(["--no-huge".to_owned(), "--no-shconf".to_owned()]);
        } else if eal.in_memory {
            args.push("--in-memory".to_owned());
        }
        if let Some(m) = eal.memory_mb {
            args.extend(["-m".to_owned(), m.to_string()]);
        }
        args.push("--no-telemetry".to_owned());
        args.push(EAL_LOG_LEVEL.to_owned());
        let mut pci = 0;
        let mut device = |d: &Device, args: &mut Vec<String>| match d {
            Device::Vdev(spec) => args.push(format!("--vdev={spec}")),
            Device::Pci(addr) => {
                pci += 1;
                args.extend(["-a".to_owned(), addr.clone()]);
            }
        };
        for iface in &self.interfaces {
            match (&iface.aggregate, &iface.device) {
                (Some(agg), Device::Vdev(spec)) => {
                    // Members first: the bond refers to them by name.
                    for m in &agg.members {
                        device(m, &mut args);
                    }
                    let mut bond = format!("{spec},mode={}", agg.mode.bonding_mode());
                    for m in &agg.members {
                        bond += &format!(",slave={}", m.name());
                    }
                    if let (AggregateMode::ActiveBackup, Some(first)) =
                        (agg.mode, agg.members.first())
                    {
                        bond += &format!(",primary={}", first.name());
                    }
                    args.push(format!("--vdev={bond}"));
                }
                (_, d) => device(d, &mut args),
            }
        }
        if pci == 0 {
            args.push("--no-pci".to_owned());
        }
        args.extend(eal.extra_args.iter().cloned());
        args
    }
}

/// Keeps EAL quiet: the global log level, which DPDK 22.11 accepts as a
/// bare level name. Override with `eal.extra_args` (the last one wins).
pub const EAL_LOG_LEVEL: &str = "--log-level=warning";
