//! The protocol of the local control socket between `tandemctl` and `tandemd`.
//!
//! One JSON request per line from the client, one JSON response line back,
//! then the daemon closes the connection. Requests are tagged by `cmd`:
//!
//! ```text
//! -> {"cmd":"status"}
//! <- {"result":"status","node":"fw-a","serial":"...", ...}
//! -> {"cmd":"reboot"}
//! <- {"result":"error","message":"unknown command \"reboot\"; the commands are: status, stats, conn_list, conn_flush, policy_reload, policy_show, ha_active, ha_passive, ha_reset, sync, sync_digest, sync_verify, log, ha_info, identity, peer_status, ha_sync, ha_sync_test, ha_diff, ha_create, ha_join, ha_enha, ha_set, ha_key, ha_cluster_remove, ha_cluster_activate, system_update, system_tpm_pcrseal, system_tpm_password, debug"}
//! ```
//!
//! To add a command: add a variant to [`Request`], its name to
//! [`Request::COMMANDS`] and to [`Request::name`] (the tests check the three
//! agree), and if it needs a new answer, a variant to [`Response`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The longest request line the daemon reads, newline excluded.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Where `tandemd` listens and `tandemctl` connects unless told otherwise.
pub const DEFAULT_SOCKET_PATH: &str = "/run/tandem/tandemd.sock";

/// A command sent by an operator tool to the daemon.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Identity, interfaces, routes, neighbours and workers of this node.
    Status,
    /// Packet and drop counters of the ports and workers.
    Stats,
    /// The tracked connections, filtered.
    ConnList {
        /// Which connections to list.
        #[serde(default)]
        filter: ConnFilter,
    },
    /// Deletes every tracked connection.
    ConnFlush,
    /// Reads the policy file again and switches every worker to it.
    PolicyReload,
    /// The policy in force: each rule with its hits.
    PolicyShow,
    /// Forces this member active (ignores quality), as `haactive`.
    HaActive,
    /// Forces this member passive, as `hapassive`.
    HaPassive,
    /// Removes the forced status, as `hareset`.
    HaReset,
    /// State-sync (K2K) counters and replication lag.
    Sync,
    /// The digest of the replicated part of the connection table (per
    /// bucket: connections and XOR of fingerprints); equal on both members
    /// when they hold the same connections.
    SyncDigest,
    /// Compares both members' tables over the state sync (digests taken at
    /// the same point of the stream); `start`: begin a verify now,
    /// otherwise only report the last one finished.
    SyncVerify {
        /// Begin one now.
        #[serde(default)]
        start: bool,
    },
    /// The last lines of the event log.
    Log {
        /// How many lines (default 50).
        #[serde(default)]
        lines: Option<usize>,
    },
    /// The cluster as the election sees it (members, links, checks), as
    /// `hainfo`.
    HaInfo,
    /// The node's identity (serial, model, licence, data ports, firmware):
    /// what a cluster checks when a member joins.
    Identity,
    /// Asks the peer over the members' service (TCP 1300, authenticated
    /// by the cluster key) who it is, as `hapeer`.
    PeerStatus,
    /// Sends this member's cluster directory (`cluster.ron`, the policy)
    /// to the peer, which applies it whole and reloads what changed, as
    /// `hasync`.
    HaSync {
        /// Replace the peer's own local modifications too.
        #[serde(default)]
        force: bool,
    },
    /// Lists the files of the cluster directory that differ between the
    /// members, as `hasynctest`.
    HaSyncTest,
    /// The difference between the peer's copy of a file of the cluster
    /// directory and this member's, as `hadiff FILE`.
    HaDiff {
        /// The file, relative to the cluster directory (required).
        #[serde(default)]
        file: Option<String>,
    },
    /// Reseals the cluster key in the TPM to the PCR value of the version
    /// that runs, with the TPM password, as `system tpm pcrseal
    /// tpmpassword=PASSWORD serial=local|passive`.
    SystemTpmPcrseal {
        /// The TPM password (the owner hierarchy's) (required).
        #[serde(default)]
        password: Option<tandem_config::Secret>,
        /// `local` (this member), `passive` (the passive member, this one
        /// or its peer), `remote` (the peer) or a member's serial
        /// (required).
        #[serde(default)]
        serial: Option<String>,
    },
    /// Sets this member's TPM password (the owner hierarchy's
    /// authorization), as `system tpm password [old=OLD] new=NEW`.
    SystemTpmPassword {
        /// The password now (none: the TPM has none, as a new one).
        #[serde(default)]
        old: Option<tandem_config::Secret>,
        /// The new password (required).
        #[serde(default)]
        new: Option<tandem_config::Secret>,
    },
    /// Installs a signed update package on this member or its peer, as
    /// `system update --package FILE --target local|remote`.
    SystemUpdate {
        /// The package: an absolute path on this node (required).
        #[serde(default)]
        package: Option<String>,
        /// `local` (this member: a hand-over first if it is active, then
        /// the restart into the new version) or `remote` (the peer, over
        /// the members' service) (required).
        #[serde(default)]
        target: Option<String>,
    },
    /// Turns this node, running alone, into the first member of a new
    /// cluster without a restart (it stays active), as `ha create`.
    HaCreate {
        /// The HA links and options (required).
        #[serde(default)]
        create: Option<crate::peer::create::CreateArgs>,
        /// The cluster's pre-shared key (required; never logged).
        #[serde(default)]
        psk: Option<tandem_config::Secret>,
    },
    /// Re-reads the cluster's file on this member and applies what changed
    /// in it (the parameters that need no restart at once), as `enha`.
    HaEnha,
    /// Changes a parameter of the cluster (F9-F12) here and on the peer,
    /// as `ha set`.
    HaSet {
        /// The change (required).
        #[serde(default)]
        set: Option<crate::peer::params::HaSet>,
        /// Do not send it to the peer now (it waits as a local
        /// modification).
        #[serde(default)]
        no_sync: bool,
    },
    /// Changes the cluster's pre-shared key on both members with no HA
    /// outage (F8), as `ha set key`.
    HaKey {
        /// The new key (required).
        #[serde(default)]
        psk: Option<tandem_config::Secret>,
    },
    /// Marks a member for removal from the cluster (RMA), applied by
    /// [`Request::HaClusterActivate`], as `ha cluster remove`.
    HaClusterRemove {
        /// Its serial, or `remote` for the other member (required).
        #[serde(default)]
        serial: Option<String>,
        /// Also while it is heard.
        #[serde(default)]
        force: bool,
    },
    /// Applies the pending membership change, as `ha cluster activate`.
    HaClusterActivate,
    /// Joins the cluster of a member over TCP 1300, then restarts tandemd
    /// as a member, as `ha join`.
    HaJoin {
        /// The HA links and the member (required).
        #[serde(default)]
        join: Option<crate::peer::join::JoinArgs>,
        /// The cluster's pre-shared key (required; never logged).
        #[serde(default)]
        psk: Option<tandem_config::Secret>,
    },
    /// Injects a fault, for tests of the black-hole watchdog only: refused
    /// unless tandemd was started with `TANDEM_TEST_FAULTS=1`.
    Debug {
        /// The fault (required).
        #[serde(default)]
        fault: Option<DebugFault>,
    },
}

/// A fault `tandemctl debug` injects (tests only).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DebugFault {
    /// A worker stops polling for a while, as one stuck in a loop would.
    StallWorker {
        /// Worker index.
        worker: usize,
        /// How long, ms (at most 10,000).
        ms: u64,
    },
    /// A worker panics: its thread ends.
    PanicWorker {
        /// Worker index.
        worker: usize,
    },
    /// The members' service answers each ping this much later (0: on
    /// time): an HA link with latency (the lab's kernel has no netem).
    DelayPongs {
        /// Milliseconds (at most 10,000).
        ms: u64,
    },
    /// The members' service drops the next join's connection when the
    /// joiner asks for its first file: a join cut half-way.
    CutJoin,
}

/// Which connections `conn list` shows (every field narrows the list).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ConnFilter {
    /// Protocol name (tcp, udp, icmp, gre, esp, sctp) or number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<String>,
    /// Either end's address is inside this address or CIDR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    /// Source (initiator) address or CIDR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<String>,
    /// Destination (responder) address or CIDR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst: Option<String>,
    /// Either port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// At most this many connections (the total is still counted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

impl Request {
    /// The value of `cmd` of every request the daemon understands.
    pub const COMMANDS: &'static [&'static str] = &[
        "status",
        "stats",
        "conn_list",
        "conn_flush",
        "policy_reload",
        "policy_show",
        "ha_active",
        "ha_passive",
        "ha_reset",
        "sync",
        "sync_digest",
        "sync_verify",
        "log",
        "ha_info",
        "identity",
        "peer_status",
        "ha_sync",
        "ha_sync_test",
        "ha_diff",
        "ha_create",
        "ha_join",
        "ha_enha",
        "ha_set",
        "ha_key",
        "ha_cluster_remove",
        "ha_cluster_activate",
        "system_update",
        "system_tpm_pcrseal",
        "system_tpm_password",
        "debug",
    ];

    /// The value of `cmd` for this request.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::Stats => "stats",
            Request::ConnList { .. } => "conn_list",
            Request::ConnFlush => "conn_flush",
            Request::PolicyReload => "policy_reload",
            Request::PolicyShow => "policy_show",
            Request::HaActive => "ha_active",
            Request::HaPassive => "ha_passive",
            Request::HaReset => "ha_reset",
            Request::Sync => "sync",
            Request::SyncDigest => "sync_digest",
            Request::SyncVerify { .. } => "sync_verify",
            Request::Log { .. } => "log",
            Request::HaInfo => "ha_info",
            Request::Identity => "identity",
            Request::PeerStatus => "peer_status",
            Request::HaSync { .. } => "ha_sync",
            Request::HaSyncTest => "ha_sync_test",
            Request::HaDiff { .. } => "ha_diff",
            Request::HaCreate { .. } => "ha_create",
            Request::HaJoin { .. } => "ha_join",
            Request::HaEnha => "ha_enha",
            Request::HaSet { .. } => "ha_set",
            Request::HaKey { .. } => "ha_key",
            Request::HaClusterRemove { .. } => "ha_cluster_remove",
            Request::HaClusterActivate => "ha_cluster_activate",
            Request::SystemUpdate { .. } => "system_update",
            Request::SystemTpmPcrseal { .. } => "system_tpm_pcrseal",
            Request::SystemTpmPassword { .. } => "system_tpm_password",
            Request::Debug { .. } => "debug",
        }
    }

    /// This request as one protocol line, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        to_line(self).unwrap_or_else(|_| format!("{{\"cmd\":\"{}\"}}\n", self.name()).into_bytes())
    }
}

/// A node's identity, as [`Request::Identity`] answers it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct IdentityReport {
    /// The identity file this node reads (present or not).
    pub file: String,
    /// The serial (`node.serial` without an identity file).
    pub serial: String,
    /// The model; `None` without an identity file.
    pub model: Option<String>,
    /// `master` or `slave`; `None` without an identity file.
    pub licence: Option<String>,
    /// Data ports of the hardware; `None` without an identity file.
    pub ports: Option<u16>,
    /// The running tandemd's version.
    pub firmware: String,
}

/// The daemon's answer to one [`Request`].
#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    /// Answer to [`Request::Status`].
    Status(StatusReport),
    /// Answer to [`Request::Stats`].
    Stats(StatsReport),
    /// Answer to [`Request::ConnList`].
    Connections(ConnectionsReport),
    /// Answer to [`Request::SyncDigest`].
    Digest(DigestReport),
    /// Answer to [`Request::SyncVerify`].
    Verify(VerifyStatus),
    /// Answer to [`Request::ConnFlush`].
    Flushed {
        /// How many connections were deleted.
        count: u64,
    },
    /// Answer to the forced-status requests: the role now and the forced
    /// status now.
    Role {
        /// "active" or "passive".
        role: String,
        /// "active", "passive" or none.
        forced: Option<String>,
    },
    /// Answer to [`Request::Log`].
    Log {
        /// Oldest first.
        lines: Vec<String>,
    },
    /// Answer to [`Request::Sync`].
    Sync(SyncReport),
    /// Answer to [`Request::HaInfo`].
    HaInfo(Box<HaInfo>),
    /// Answer to [`Request::Identity`].
    Identity(IdentityReport),
    /// Answer to [`Request::PeerStatus`].
    Peer {
        /// The HA link that answered.
        link: String,
        /// The peer's address and port.
        addr: String,
        /// Connection, handshake and answer, microseconds.
        took_us: u64,
        /// What the peer says it is.
        identity: IdentityReport,
    },
    /// Answer to [`Request::PolicyReload`].
    Policy {
        /// Rules in the policy now in force.
        rules: usize,
        /// NAT rules in the policy now in force.
        nat_rules: usize,
        /// The file it was read from.
        path: String,
    },
    /// Answer to [`Request::PolicyShow`].
    PolicyRules(Box<PolicyReport>),
    /// Answer to [`Request::HaSync`], [`Request::HaSyncTest`] and
    /// [`Request::HaDiff`]: what happened, line by line, and the error that
    /// stopped it, if any.
    Lines {
        /// The report.
        lines: Vec<String>,
        /// Why it stopped before the end (then nothing was applied on the
        /// peer unless the lines say so).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// The request was carried out; `message` says what happened.
    Done {
        /// Human-readable, meant to be shown to the operator as is.
        message: String,
    },
    /// The request was refused or failed; `message` says why and what to do.
    Error {
        /// Human-readable reason, meant to be shown to the operator as is.
        message: String,
    },
}

impl Response {
    /// An [`Response::Error`] carrying `message`.
    pub fn error(message: impl Into<String>) -> Self {
        Response::Error {
            message: message.into(),
        }
    }

    /// This response as one protocol line, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        to_line(self).unwrap_or_else(|e| {
            let fallback = Response::error(format!("tandemd could not encode its answer: {e}"));
            to_line(&fallback).unwrap_or_else(|_| {
                b"{\"result\":\"error\",\"message\":\"tandemd could not encode its answer\"}\n"
                    .to_vec()
            })
        })
    }
}

fn to_line<T: Serialize>(msg: &T) -> Result<Vec<u8>, serde_json::Error> {
    let mut line = serde_json::to_vec(msg)?;
    line.push(b'\n');
    Ok(line)
}

/// Who this node is and how its dataplane is set up.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct StatusReport {
    /// Node name from the configuration.
    pub node: String,
    /// Hardware serial number of the node.
    pub serial: String,
    /// Version of the running `tandemd`.
    pub version: String,
    /// Process id of the running `tandemd`.
    pub pid: u32,
    /// When `tandemd` started, in seconds since the Unix epoch.
    pub started_unix: u64,
    /// Seconds since `tandemd` started.
    pub uptime_secs: u64,
    /// Configuration file the daemon runs from.
    pub config_path: String,
    /// How workers wait for packets (for example "busy" or "adaptive").
    pub poll_mode: String,
    /// Dataplane interfaces.
    pub interfaces: Vec<InterfaceStatus>,
    /// Routing table.
    pub routes: Vec<RouteStatus>,
    /// Neighbour (ARP) table.
    pub neighbours: Vec<NeighbourStatus>,
    /// Packet-processing workers.
    pub workers: Vec<WorkerStatus>,
    /// "active" or "passive" ("active" for a node without a cluster).
    #[serde(default)]
    pub role: String,
    /// The forced status, if any ("active" or "passive").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forced: Option<String>,
}

/// One dataplane interface.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct InterfaceStatus {
    /// Interface name from the configuration.
    pub name: String,
    /// Device it runs on (PCI address or vdev name).
    pub device: String,
    /// DPDK port id.
    pub port_id: u16,
    /// MAC address, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// Addresses in CIDR notation.
    pub addresses: Vec<String>,
    /// MTU in bytes.
    pub mtu: u16,
    /// Whether the link is up.
    pub link_up: bool,
    /// Where the link state comes from: `"dpdk"` or `"kernel:<ifname>"`.
    pub link_source: String,
    /// Link speed in Mbit/s, 0 when unknown.
    pub speed_mbps: u32,
    /// Number of receive queues.
    pub rx_queues: u16,
    /// Number of transmit queues.
    pub tx_queues: u16,
    /// How received packets reach the worker that owns their flow:
    /// `single` (one worker), `rss` (the NIC's redirection table, checked)
    /// or `software` (handed between workers).
    #[serde(default)]
    pub steering: String,
    /// Why the port is steered in software, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steering_why: Option<String>,
}

/// One route.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RouteStatus {
    /// Destination prefix in CIDR notation.
    pub destination: String,
    /// Next hop, `None` for a directly connected network.
    pub via: Option<String>,
    /// Interface the route leaves by.
    pub interface: String,
    /// `"connected"` or `"static"`.
    pub kind: String,
}

/// One neighbour table entry.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct NeighbourStatus {
    /// Neighbour IP address.
    pub ip: String,
    /// Resolved MAC address, `None` while unresolved.
    pub mac: Option<String>,
    /// Interface the neighbour is on.
    pub interface: String,
    /// Resolution state (for example "reachable" or "incomplete").
    pub state: String,
    /// Milliseconds since the entry was last confirmed.
    pub age_ms: u64,
}

/// One packet-processing worker.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct WorkerStatus {
    /// Worker index.
    pub id: usize,
    /// CPU it is pinned to, if pinned.
    pub cpu: Option<usize>,
    /// DPDK lcore it runs on, if any.
    pub lcore: Option<u32>,
    /// Number of queues it polls.
    pub queues: u16,
}

/// Packet and drop counters of the node.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct StatsReport {
    /// Per-port hardware counters.
    pub ports: Vec<PortStats>,
    /// Per-worker software counters.
    pub workers: Vec<WorkerStats>,
    /// Drops summed over all workers, by reason.
    pub drops_total: BTreeMap<String, u64>,
    /// The stateful firewall, when a policy is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firewall: Option<FirewallStats>,
}

/// The state sync with the peer (K2K).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// The peer answered (authenticated Hello).
    pub peer_up: bool,
    /// This node has received a complete bulk from the peer since it came
    /// up (its table is complete).
    pub synchronized: bool,
    /// The HA link carrying the sync, if any is up.
    pub link: Option<String>,
    /// Records handed to the session.
    pub records_queued: u64,
    /// Records refused (peer down, queue full).
    pub records_refused: u64,
    /// Datagrams sent.
    pub datagrams_sent: u64,
    /// Datagrams accepted.
    pub datagrams_received: u64,
    /// Datagrams dropped (forged, replayed, stale, other peer...).
    pub datagrams_dropped: u64,
    /// Replicated records handed to the workers.
    pub installs: u64,
    /// Replicated records lost to a full install queue.
    pub installs_dropped: u64,
    /// Bulk syncs sent to the peer.
    pub bulks_sent: u64,
    /// Bulk syncs received.
    pub bulks_received: u64,
    /// Larval connections (replicated, not active).
    pub larval: u64,
    /// Replication lag percentiles (queue to ack), ms: p50, p90, p99, max.
    pub lag_ms: [u64; 4],
    /// Lag samples taken.
    pub lag_samples: u64,
    /// The session's own counters, by name (drops per reason, ...).
    pub details: BTreeMap<String, u64>,
}

/// The digest of the replicated connections (see [`Request::SyncDigest`]).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct DigestReport {
    /// Replicated connections (the active's synced ones, the passive's
    /// larval ones).
    pub connections: u64,
    /// Per bucket (256, by a fixed hash of the keys): connections and the
    /// XOR of their fingerprints (hex).
    pub buckets: Vec<(u64, String)>,
}

/// The last table verify (see [`Request::SyncVerify`]).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyStatus {
    /// Id of the last verify finished (0: none yet); a verify started now
    /// is done when this grows.
    pub done: u64,
    /// A verify was started by this request.
    pub started: bool,
    /// How long the last one took, in ms.
    pub ms: u64,
    /// Replicated connections here.
    pub ours: u64,
    /// Replicated connections on the peer.
    pub theirs: u64,
    /// Digest buckets that differed (0: both tables hold the same
    /// connections).
    pub differing_buckets: u64,
    /// Buckets being repaired (they also differed at the verify before).
    pub repairing: u64,
    /// Verifies finished, differences found and repairs started since
    /// tandemd started (background ones included).
    pub verifies: u64,
    /// Differing buckets found in all.
    pub differences_total: u64,
    /// Repairs started in all.
    pub repairs: u64,
}

/// The policy in force, rule by rule (`policy show`).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyReport {
    /// The file.
    pub path: String,
    /// Each rule of the file, in order.
    pub rules: Vec<RuleReport>,
    /// The default action and how many it decided.
    pub default_action: String,
    /// Packets the default action decided.
    pub default_hits: u64,
    /// Bytes of the packets the default action decided (and of the
    /// connections it opened, when it passes).
    #[serde(default)]
    pub default_bytes: u64,
    /// Matches of logged rules not logged (over the rate limit, queue
    /// full) since start.
    pub log_suppressed: u64,
}

/// One rule in `policy show`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleReport {
    /// Its index in the file (what the event log and `conn list` name).
    pub index: usize,
    /// Its name, or `rule N`.
    pub name: String,
    /// pass, block or reject.
    pub action: String,
    /// Its matches are logged.
    pub log: bool,
    /// Enabled.
    pub enabled: bool,
    /// Connections it opened (pass) or packets it stopped (block,
    /// reject) since the policy was loaded.
    pub hits: u64,
    /// Bytes (IP lengths): of every packet, both ways, of the connections
    /// it opened under this policy (pass), or of the packets it stopped.
    #[serde(default)]
    pub bytes: u64,
}

/// A data interface in the quality factor.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct QualityPart {
    /// The interface (an aggregate's member by its own name).
    pub interface: String,
    /// Its weight (0: left out).
    pub weight: u16,
    /// Its link is up.
    pub up: bool,
}

/// One member as `hainfo` shows it.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct HaMemberInfo {
    /// Serial (the peer's: the last 8 characters, as its heartbeats carry).
    pub serial: String,
    /// "active" or "passive".
    pub role: String,
    /// Forced status ("active", "passive") or none.
    pub forced: Option<String>,
    /// Quality factor 0..=100.
    pub quality: u8,
    /// Priority (50: "active firewall if equal").
    pub priority: u8,
    /// Its connection table is complete.
    pub synchronized: bool,
    /// Time since its election machine started, ms.
    pub uptime_ms: u64,
    /// When it took its current role (Unix seconds). For the peer, what
    /// it says of itself over the members' service; when it did not say,
    /// when this member saw the change or first heard it
    /// (`since_observed`).
    pub since_unix: Option<u64>,
    /// `since_unix` is when this member saw the peer's role, not the
    /// peer's own time.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub since_observed: bool,
    /// Heard now on some path (the peer; always true for the local member).
    pub alive: bool,
    /// Hardware model (identity file; the peer's from the members'
    /// service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The tandem version it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Its HA licence: `master` or `slave`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub licence: Option<String>,
    /// When its tandemd started (Unix seconds; the peer's from the boot
    /// epoch its heartbeats carry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_unix: Option<u64>,
    /// Its HA service: `starting`, `running` (active), `ready` (passive,
    /// table complete, can take over), `not ready (table incomplete)`,
    /// `lost` (the peer, not heard).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ha_state: Option<String>,
    /// Why the election holds back for it, if it does (the start-up wait;
    /// a passive whose table is incomplete does not preempt); `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub election_hold: Option<String>,
    /// The heartbeat (election) protocol version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_version: Option<u8>,
    /// The state sync (K2K) protocol version: the highest it speaks
    /// (local), the one in use with it (peer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k2k_version: Option<u8>,
    /// Its configuration has no change the other member lacks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conf_synchronized: Option<bool>,
    /// A configuration transfer running on it, or `none running`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_sync: Option<String>,
    /// The id of the last whole-table bulk it sent or received whole
    /// (the same on both members when they are in step; this member's
    /// only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_id: Option<u32>,
    /// Its installation slots: the one it runs, the backup one (`none`
    /// without tandem-boot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<SlotsView>,
}

/// One path to the peer as `hainfo` shows it.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct HaLinkInfo {
    /// "HA-main", "HA-backup", or "last-resort" (over the data ports).
    pub name: String,
    /// The kernel interface (the data interfaces for the last resort).
    pub interface: String,
    /// Our address on the link.
    pub address: String,
    /// The peer's address on the link.
    pub peer: String,
    /// Our end is up (last resort: its heartbeats are being sent).
    pub carrier: bool,
    /// The peer's heartbeats arrive on it.
    pub peer_heard: bool,
    /// When the peer was last heard on it, ms ago.
    pub last_heard_ms_ago: Option<u64>,
    /// Heartbeats received on it while it was alive.
    pub heartbeats: u64,
    /// The longest gap between two of them, ms (a gap of the dead time
    /// would be a failover).
    pub max_gap_ms: f64,
    /// The longest gap that ended in the last 4 to 8 seconds, ms.
    #[serde(default)]
    pub recent_max_gap_ms: f64,
    /// Gaps longer than two heartbeat intervals.
    pub late: u64,
    /// In words: `OK` (up, the peer heard), `no carrier`, `peer not
    /// heard`.
    #[serde(default)]
    pub state: String,
    /// When that state began (Unix seconds; the start of tandemd if it
    /// never changed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_since_unix: Option<u64>,
    /// Heartbeats the kernel did not take on it (send errors).
    #[serde(default)]
    pub send_errors: u64,
    /// The link as the peer sees it, from its members' service (absent
    /// while it does not answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_view: Option<MemberLinkState>,
}

/// What a member says of itself over the members' service that its
/// heartbeats do not carry (hainfo's peer column).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberStatusReport {
    /// Its role (`active`, `passive`).
    pub role: String,
    /// When it took it (Unix seconds).
    pub role_since_unix: Option<u64>,
    /// A configuration transfer running on it, in words.
    pub file_sync: Option<String>,
    /// The id of the last bulk it sent or received.
    #[serde(default)]
    pub sync_id: Option<u32>,
    /// Its HA links as it sees them.
    pub links: Vec<MemberLinkState>,
    /// Its installation slots (absent without tandem-boot, or from an
    /// older tandem).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<SlotsView>,
}

/// A member's installation slots (hainfo's `backup partition`).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotsView {
    /// The slot it runs from (`a`, `b`).
    pub active: String,
    /// The version it runs is on trial (not confirmed yet).
    pub on_trial: bool,
    /// The other slot.
    pub backup_slot: String,
    /// The version in the other slot (a rollback's target), if any.
    pub backup_version: Option<String>,
    /// The last rollback: when and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rollback: Option<String>,
}

/// One HA link as a member sees it.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberLinkState {
    /// The link's name (`HA-main`, `HA-backup`).
    pub name: String,
    /// `OK`, `no carrier`, `peer not heard`.
    pub state: String,
    /// Since when (Unix seconds).
    pub since_unix: Option<u64>,
}

/// Answer to `hainfo`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct HaInfo {
    /// The election runs (else the roles are set by hand only).
    pub election: bool,
    /// "starting (waiting for the peer)", "running", "running alone (peer silent)".
    pub state: String,
    /// This member.
    pub local: HaMemberInfo,
    /// The peer, once heard.
    pub peer: Option<HaMemberInfo>,
    /// HA links and the last-resort path.
    pub links: Vec<HaLinkInfo>,
    /// "idle", "probing", "peer answered".
    pub icmp_check: String,
    /// Round trip of the last answered ICMP check, microseconds.
    pub last_icmp_rtt_us: Option<u64>,
    /// Both members are active right now (a partition being resolved).
    pub dual_active: bool,
    /// Role changes since start.
    pub swaps: u64,
    /// The last role change, as logged.
    pub last_swap: Option<String>,
    /// Heartbeats refused (bad tag, wrong cluster, wrong sender...).
    pub heartbeats_rejected: u64,
    /// Failing quality checks (disks, TPM, sensors).
    pub quality_problems: Vec<String>,
    /// The quality factor's interfaces: weight and state.
    #[serde(default)]
    pub quality_parts: Vec<QualityPart>,
    /// The HA path over the data ports: what came in, and why frames were
    /// refused (policed, bad length, unauthentic, reflected, wrong peer...).
    pub data_path: Box<tandem_dataplane::hadata::HaDataStats>,
    /// Set when the configuration file, which holds the pre-shared key, is
    /// readable by others than root: what is wrong and what to do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file_warning: Option<String>,
    /// The state-sync (K2K) protocol version in use with the peer (0: not
    /// established).
    pub sync_version: u8,
    /// Members heard now, this one included (1 or 2).
    #[serde(default)]
    pub members_heard: u8,
    /// The HA link the state sync uses now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_link: Option<String>,
    /// Where the peer's identity and configuration status come from, and
    /// how old they are (the members' service), or why they are missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_status_source: Option<String>,
    /// The cluster key (F8): `steady` (one key), or a change under way,
    /// `staged` or `committed`, with the seconds since.
    #[serde(default)]
    pub key: String,
    /// The members' service on TCP 1300: where it listens, what it served
    /// and refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_service: Option<crate::peer::service::PeerServiceReport>,
    /// The configuration sync: both members' revisions, whether they are
    /// the same, and the notice when not (cluster members with a cluster
    /// directory only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Box<ConfigSyncInfo>>,
    /// The node's TPM: what tandemd measured into its PCR at start, or
    /// why not (absent without `control.tpm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<String>,
    /// Where the cluster key is kept, and whether it is sealed in the TPM
    /// ([`crate::keystore::status`]; absent without an HA section).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_store: Option<String>,
}

/// One member's configuration in `hainfo`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberConfigInfo {
    /// The member.
    pub serial: String,
    /// Its revision, `00042`.
    pub revision: String,
    /// Its cluster directory was changed since its last sync.
    pub local_changes: bool,
    /// The first 12 hex digits of its manifest digest.
    pub digest: String,
    /// Its last sync: `2026-12-07 01:30:00 UTC from TDLAB0001`, or
    /// `never`.
    pub last_sync: String,
}

/// The configuration sync in `hainfo`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigSyncInfo {
    /// This member.
    pub local: MemberConfigInfo,
    /// The peer, when its members' service answered.
    pub peer: Option<MemberConfigInfo>,
    /// Why the peer's did not (while it is not known).
    pub peer_error: Option<String>,
    /// Both cluster directories are identical (none while the peer's is
    /// not known).
    pub synchronized: Option<bool>,
    /// What an operator should do when they are not.
    pub notice: Option<String>,
    /// The file groups (F15): the last send of each.
    #[serde(default)]
    pub file_groups: Vec<String>,
}

/// Answer to `conn list`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectionsReport {
    /// The connections that matched (at most `limit`).
    pub connections: Vec<ConnectionStatus>,
    /// How many matched in all.
    pub total: u64,
}

/// One tracked connection.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectionStatus {
    /// The worker (and shard) that owns it.
    pub worker: usize,
    /// Protocol name.
    pub proto: String,
    /// Initiator address.
    pub src: String,
    /// Initiator port (or ICMP identifier).
    pub sport: u16,
    /// Responder address as the initiator addressed it.
    pub dst: String,
    /// Responder port.
    pub dport: u16,
    /// Protocol state.
    pub state: String,
    /// Address translation, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat: Option<NatStatus>,
    /// Index of the rule that let it in.
    pub rule: u32,
    /// Replicated to the HA peer.
    pub sync: bool,
    /// Replicated from the HA peer and not yet activated.
    pub larval: bool,
    /// Milliseconds since creation.
    pub age_ms: u64,
    /// Milliseconds since the last packet.
    pub idle_ms: u64,
    /// Milliseconds until it expires without traffic.
    pub expires_ms: u64,
    /// Packets initiator -> responder.
    pub packets_orig: u64,
    /// Packets responder -> initiator.
    pub packets_reply: u64,
    /// Bytes initiator -> responder.
    pub bytes_orig: u64,
    /// Bytes responder -> initiator.
    pub bytes_reply: u64,
}

/// The translation of a connection.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct NatStatus {
    /// "source" or "destination".
    pub kind: String,
    /// Address the packets carry after translation (source NAT: the new
    /// source; destination NAT: the new destination).
    pub addr: String,
    /// Port after translation.
    pub port: u16,
}

/// Counters of the stateful firewall, summed over the workers.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct FirewallStats {
    /// Connections in the tables now.
    pub connections: u64,
    /// Connections created.
    pub created: u64,
    /// Connections deleted (closed, flushed).
    pub deleted: u64,
    /// Connections expired by their timeout.
    pub expired: u64,
    /// Capacity of the connection tables (all workers).
    pub capacity: u64,
    /// Packets passed by the policy or an existing connection.
    pub passed: u64,
    /// Deltas produced for the HA sync.
    pub deltas: u64,
    /// Rules in the policy in force.
    pub rules: usize,
}

/// Hardware counters of one port.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Interface name from the configuration.
    pub name: String,
    /// DPDK port id.
    pub port_id: u16,
    /// Packets received.
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Packets transmitted.
    pub tx_packets: u64,
    /// Bytes transmitted.
    pub tx_bytes: u64,
    /// Packets the NIC dropped because the receive queues were full.
    pub rx_missed: u64,
    /// Erroneous packets received.
    pub rx_errors: u64,
    /// Packets that failed to transmit.
    pub tx_errors: u64,
    /// Receive failures for lack of mbufs.
    pub rx_nombuf: u64,
}

/// Software counters of one worker.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// Worker index.
    pub id: usize,
    /// Packets received.
    pub rx_packets: u64,
    /// Packets transmitted.
    pub tx_packets: u64,
    /// Packets forwarded.
    pub forwarded: u64,
    /// Replies generated by the node itself (ARP, ICMP echo).
    pub replies: u64,
    /// Packets held while waiting for neighbour resolution.
    pub held: u64,
    /// ARP requests sent.
    pub arp_requests_sent: u64,
    /// ICMP errors sent.
    pub icmp_errors_sent: u64,
    /// Rejections sent (TCP resets, ICMP unreachables of reject rules).
    #[serde(default)]
    pub rejects_sent: u64,
    /// Gratuitous ARPs sent on becoming active.
    #[serde(default)]
    pub garps_sent: u64,
    /// Packets the transmit queues did not take.
    pub tx_dropped: u64,
    /// Packets handed to the worker that owns their flow.
    #[serde(default)]
    pub handoffs_out: u64,
    /// Packets other workers handed to this one.
    #[serde(default)]
    pub handoffs_in: u64,
    /// Frames handed to the worker holding the output port's TX queue.
    #[serde(default)]
    pub tx_handoffs: u64,
    /// Connections in this worker's shard of the table.
    #[serde(default)]
    pub connections: u64,
    /// Receive polls.
    pub polls: u64,
    /// Receive polls that returned nothing.
    pub idle_polls: u64,
    /// Times the worker slept for lack of traffic.
    pub sleeps: u64,
    /// Drops by reason.
    pub drops: BTreeMap<String, u64>,
}

/// Why a request line was rejected; the message is sent back to the client.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// The line exceeds [`MAX_REQUEST_BYTES`].
    #[error("request too long: a request is one JSON object on one line of at most {max} bytes")]
    TooLong {
        /// The limit, [`MAX_REQUEST_BYTES`].
        max: usize,
    },
    /// The line is blank.
    #[error("empty request: send one JSON object per line, for example {{\"cmd\":\"status\"}}")]
    Empty,
    /// The line is not JSON.
    #[error("request is not valid JSON ({reason}); send one JSON object per line, for example {{\"cmd\":\"status\"}}")]
    NotJson {
        /// The JSON parser's message.
        reason: String,
    },
    /// The JSON has no string field `cmd`.
    #[error("request has no \"cmd\" field; the commands are: {allowed}")]
    MissingCommand {
        /// Comma-separated list of [`Request::COMMANDS`].
        allowed: String,
    },
    /// `cmd` names no known command.
    #[error("unknown command {cmd:?}; the commands are: {allowed}")]
    UnknownCommand {
        /// The command as sent.
        cmd: String,
        /// Comma-separated list of [`Request::COMMANDS`].
        allowed: String,
    },
    /// The command is known but its arguments are wrong.
    #[error("bad arguments for {cmd:?}: {reason}")]
    BadArguments {
        /// The command as sent.
        cmd: String,
        /// What is wrong with them.
        reason: String,
    },
}

fn allowed_commands() -> String {
    Request::COMMANDS.join(", ")
}

/// Parses one request line (trailing `\n` or `\r\n` allowed).
pub fn parse_request(line: &[u8]) -> Result<Request, ApiError> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.len() > MAX_REQUEST_BYTES {
        return Err(ApiError::TooLong {
            max: MAX_REQUEST_BYTES,
        });
    }
    if line.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::Empty);
    }
    let value: serde_json::Value = serde_json::from_slice(line).map_err(|e| ApiError::NotJson {
        reason: e.to_string(),
    })?;
    let cmd = match value.get("cmd").and_then(serde_json::Value::as_str) {
        Some(cmd) => cmd.to_owned(),
        None => {
            return Err(ApiError::MissingCommand {
                allowed: allowed_commands(),
            })
        }
    };
    if !Request::COMMANDS.contains(&cmd.as_str()) {
        return Err(ApiError::UnknownCommand {
            cmd,
            allowed: allowed_commands(),
        });
    }
    serde_json::from_value(value).map_err(|e| ApiError::BadArguments {
        cmd,
        reason: e.to_string(),
    })
}

/// Parses one response line (trailing newline allowed), as `tandemctl` does.
pub fn parse_response(line: &[u8]) -> Result<Response, serde_json::Error> {
    serde_json::from_slice(line)
}

/// A status report with every kind of entry, for tests.
#[cfg(test)]
pub(crate) fn sample_status() -> StatusReport {
    StatusReport {
        node: "fw-a".into(),
        serial: "SN-0001".into(),
        version: "0.1.0".into(),
        pid: 4242,
        started_unix: 1_700_000_000,
        uptime_secs: 2 * 86_400 + 3 * 3_600 + 4 * 60 + 5,
        config_path: "/etc/tandem/tandem.ron".into(),
        poll_mode: "adaptive".into(),
        interfaces: vec![
            InterfaceStatus {
                name: "lan".into(),
                device: "0000:00:08.0".into(),
                port_id: 0,
                mac: "02:00:00:00:00:01".into(),
                addresses: vec!["10.0.0.1/24".into(), "fd00::1/64".into()],
                mtu: 1500,
                link_up: true,
                link_source: "dpdk".into(),
                speed_mbps: 10_000,
                rx_queues: 2,
                tx_queues: 2,
                steering: "rss".into(),
                steering_why: None,
            },
            InterfaceStatus {
                name: "wan-uplink".into(),
                device: "net_af_packet0".into(),
                port_id: 1,
                mac: "02:00:00:00:00:02".into(),
                addresses: vec![],
                mtu: 9000,
                link_up: false,
                link_source: "kernel:veth1".into(),
                speed_mbps: 0,
                rx_queues: 1,
                tx_queues: 1,
                steering: "software".into(),
                steering_why: Some("the device has one RX queue".into()),
            },
        ],
        routes: vec![
            RouteStatus {
                destination: "10.0.0.0/24".into(),
                via: None,
                interface: "lan".into(),
                kind: "connected".into(),
            },
            RouteStatus {
                destination: "0.0.0.0/0".into(),
                via: Some("192.0.2.1".into()),
                interface: "wan-uplink".into(),
                kind: "static".into(),
            },
        ],
        neighbours: vec![
            NeighbourStatus {
                ip: "10.0.0.2".into(),
                mac: Some("02:00:00:00:00:99".into()),
                interface: "lan".into(),
                state: "reachable".into(),
                age_ms: 1_250,
            },
            NeighbourStatus {
                ip: "192.0.2.1".into(),
                mac: None,
                interface: "wan-uplink".into(),
                state: "incomplete".into(),
                age_ms: 40,
            },
        ],
        workers: vec![
            WorkerStatus {
                id: 0,
                cpu: Some(1),
                lcore: Some(1),
                queues: 2,
            },
            WorkerStatus {
                id: 1,
                cpu: None,
                lcore: None,
                queues: 1,
            },
        ],
        role: "active".into(),
        forced: None,
    }
}

/// A stats report with zero and non-zero drop counters, for tests.
#[cfg(test)]
pub(crate) fn sample_stats() -> StatsReport {
    let worker = |id: usize, drops: &[(&str, u64)]| WorkerStats {
        id,
        rx_packets: 1_000 * (id as u64 + 1),
        tx_packets: 990,
        forwarded: 980,
        replies: 10,
        held: 0,
        arp_requests_sent: 3,
        icmp_errors_sent: 1,
        rejects_sent: 0,
        garps_sent: 0,
        tx_dropped: 0,
        handoffs_out: 0,
        handoffs_in: 0,
        tx_handoffs: 0,
        connections: 0,
        polls: 10_000,
        idle_polls: 7_500,
        sleeps: 12,
        drops: drops.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
    };
    StatsReport {
        ports: vec![PortStats {
            name: "lan".into(),
            port_id: 0,
            rx_packets: 123_456,
            rx_bytes: 98_765_432,
            tx_packets: 120_000,
            tx_bytes: 95_000_000,
            rx_missed: 7,
            rx_errors: 0,
            tx_errors: 0,
            rx_nombuf: 0,
        }],
        workers: vec![
            worker(0, &[("no_route", 5), ("bad_checksum", 0)]),
            worker(1, &[("no_route", 2), ("ttl_exceeded", 0)]),
        ],
        firewall: None,
        drops_total: BTreeMap::from([
            ("bad_checksum".to_owned(), 0),
            ("no_route".to_owned(), 7),
            ("ttl_exceeded".to_owned(), 0),
        ]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_command_parses_to_the_request_of_that_name() {
        for cmd in Request::COMMANDS {
            let line = format!("{{\"cmd\":\"{cmd}\"}}\n");
            let req = parse_request(line.as_bytes()).unwrap();
            assert_eq!(req.name(), *cmd);
            assert_eq!(parse_request(&req.to_line()).unwrap(), req, "round trip");
        }
    }

    #[test]
    fn every_request_name_is_listed() {
        // Stops compiling when a variant is added: add it to the list below.
        match Request::Status {
            Request::Status
            | Request::Stats
            | Request::ConnList { .. }
            | Request::ConnFlush
            | Request::PolicyReload
            | Request::PolicyShow
            | Request::HaActive
            | Request::HaPassive
            | Request::HaReset
            | Request::Sync
            | Request::SyncDigest
            | Request::SyncVerify { .. }
            | Request::HaInfo
            | Request::Identity
            | Request::PeerStatus
            | Request::HaSync { .. }
            | Request::HaSyncTest
            | Request::HaDiff { .. }
            | Request::HaCreate { .. }
            | Request::HaJoin { .. }
            | Request::HaEnha
            | Request::HaSet { .. }
            | Request::HaKey { .. }
            | Request::HaClusterRemove { .. }
            | Request::HaClusterActivate
            | Request::SystemUpdate { .. }
            | Request::SystemTpmPcrseal { .. }
            | Request::SystemTpmPassword { .. }
            | Request::Log { .. }
            | Request::Debug { .. } => {}
        }
        let all = [
            Request::Status,
            Request::Stats,
            Request::ConnList {
                filter: ConnFilter::default(),
            },
            Request::ConnFlush,
            Request::PolicyReload,
            Request::PolicyShow,
            Request::HaActive,
            Request::HaPassive,
            Request::HaReset,
            Request::Sync,
            Request::SyncDigest,
            Request::SyncVerify { start: false },
            Request::Log { lines: None },
            Request::HaInfo,
            Request::Identity,
            Request::PeerStatus,
            Request::HaSync { force: false },
            Request::HaSyncTest,
            Request::HaDiff { file: None },
            Request::HaCreate {
                create: None,
                psk: None,
            },
            Request::HaJoin {
                join: None,
                psk: None,
            },
            Request::HaEnha,
            Request::HaSet {
                set: None,
                no_sync: false,
            },
            Request::HaKey { psk: None },
            Request::HaClusterRemove {
                serial: None,
                force: false,
            },
            Request::HaClusterActivate,
            Request::SystemUpdate {
                package: None,
                target: None,
            },
            Request::SystemTpmPcrseal {
                password: None,
                serial: None,
            },
            Request::SystemTpmPassword {
                old: None,
                new: None,
            },
            Request::Debug { fault: None },
        ];
        assert_eq!(all.len(), Request::COMMANDS.len());
        for req in all {
            assert!(Request::COMMANDS.contains(&req.name()), "{}", req.name());
        }
    }

    #[test]
    fn crlf_and_extra_fields_are_accepted() {
        assert_eq!(
            parse_request(b"{\"cmd\":\"stats\",\"client\":\"x\"}\r\n").unwrap(),
            Request::Stats
        );
    }

    #[test]
    fn unknown_command_lists_the_allowed_ones() {
        let err = parse_request(br#"{"cmd":"reboot"}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown command \"reboot\"; the commands are: status, stats, conn_list, conn_flush, policy_reload, policy_show, ha_active, ha_passive, ha_reset, sync, sync_digest, sync_verify, log, ha_info, identity, peer_status, ha_sync, ha_sync_test, ha_diff, ha_create, ha_join, ha_enha, ha_set, ha_key, ha_cluster_remove, ha_cluster_activate, system_update, system_tpm_pcrseal, system_tpm_password, debug"
        );
    }

    #[test]
    fn non_json_missing_cmd_and_blank_lines_are_rejected() {
        assert!(matches!(
            parse_request(b"status"),
            Err(ApiError::NotJson { .. })
        ));
        assert!(matches!(
            parse_request(b"\xff\xfe"),
            Err(ApiError::NotJson { .. })
        ));
        assert!(matches!(
            parse_request(br#"{"command":"status"}"#),
            Err(ApiError::MissingCommand { .. })
        ));
        assert!(matches!(
            parse_request(br#"{"cmd":7}"#),
            Err(ApiError::MissingCommand { .. })
        ));
        assert!(matches!(
            parse_request(br#"["status"]"#),
            Err(ApiError::MissingCommand { .. })
        ));
        assert_eq!(parse_request(b" \n"), Err(ApiError::Empty));
    }

    #[test]
    fn overlong_line_is_rejected_before_parsing() {
        let mut line = vec![b' '; MAX_REQUEST_BYTES + 1];
        line.extend_from_slice(br#"{"cmd":"status"}"#);
        assert_eq!(
            parse_request(&line),
            Err(ApiError::TooLong {
                max: MAX_REQUEST_BYTES
            })
        );
        let mut ok = vec![b' '; MAX_REQUEST_BYTES - 16];
        ok.extend_from_slice(br#"{"cmd":"status"}"#);
        assert_eq!(ok.len(), MAX_REQUEST_BYTES);
        assert_eq!(parse_request(&ok), Ok(Request::Status));
    }

    #[test]
    fn responses_are_tagged_by_result() {
        let line = Response::error("nope").to_line();
        assert_eq!(line, b"{\"result\":\"error\",\"message\":\"nope\"}\n");
        let stats = Response::Stats(StatsReport {
            ports: vec![],
            workers: vec![],
            drops_total: BTreeMap::from([("no_route".to_owned(), 3)]),
            firewall: None,
        });
        let text = String::from_utf8(stats.to_line()).unwrap();
        assert_eq!(
            text,
            "{\"result\":\"stats\",\"ports\":[],\"workers\":[],\"drops_total\":{\"no_route\":3}}\n"
        );
        match parse_response(text.as_bytes()).unwrap() {
            Response::Stats(s) => assert_eq!(s.drops_total["no_route"], 3),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_debug_request_names_its_fault_and_a_bad_one_says_what_is_wrong() {
        let req = parse_request(br#"{"cmd":"debug","fault":{"kind":"panic_worker","worker":1}}"#)
            .unwrap();
        assert_eq!(
            req,
            Request::Debug {
                fault: Some(DebugFault::PanicWorker { worker: 1 })
            }
        );
        assert_eq!(parse_request(&req.to_line()).unwrap(), req);
        let stall = Request::Debug {
            fault: Some(DebugFault::StallWorker {
                worker: 0,
                ms: 3000,
            }),
        };
        assert_eq!(
            String::from_utf8(stall.to_line()).unwrap(),
            "{\"cmd\":\"debug\",\"fault\":{\"kind\":\"stall_worker\",\"worker\":0,\"ms\":3000}}\n"
        );
        let err = parse_request(br#"{"cmd":"debug","fault":{"kind":"reboot"}}"#).unwrap_err();
        assert!(
            matches!(err, ApiError::BadArguments { .. })
                && err.to_string().contains("stall_worker"),
            "{err}"
        );
    }
}
