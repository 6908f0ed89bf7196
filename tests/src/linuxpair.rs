//! The reference Linux firewall pair, for failover comparisons with tandem:
//! the two firewall namespaces of a two-node lab ([`Lab::two_nodes`]) made
//! Linux routers with an nftables stateful filter, conntrackd (FTFW mode)
//! replicating the connection table over the main HA link, and keepalived
//! (VRRPv3, one sync group) holding the lab's gateway addresses
//! ([`addr::LAN_GW`], [`addr::WAN_GW`], the addresses the tandem members
//! share) on the inside and outside legs.
//!
//! ```text
//!  fw1: fw-in 198.18.1.2/24 (+ VIP 198.18.1.1 when master)   fw2: .3
//!       fw-out 198.18.2.2/24 (+ VIP 198.18.2.1 when master)        .3
//!       ha-main 198.19.69.1 <--- conntrackd FTFW, UDP 3780 ---> .2
//! ```
//!
//! keepalived's sync-group notify script follows conntrackd's
//! `primary-backup.sh` (commit the external cache, flush, resync, bulk on
//! becoming master; resync request on becoming backup) and records each
//! transition in the member's directory. Each member's pid files, lock file,
//! control socket and logs live in `<lab dir>/linux-fw<i>/`, so several
//! labs never share them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cmd;
use crate::error::{LabError, Result};
use crate::lab::{addr, Lab, LabKind};
use crate::link;
use crate::netns::{self, Netns, Proc};

/// UDP port of conntrackd's replication on the main HA link.
pub const CONNTRACKD_PORT: u16 = 3780;

/// VRRP router ids of the inside and outside instances.
pub const VRID_IN: u8 = 51;
/// See [`VRID_IN`].
pub const VRID_OUT: u8 = 52;

/// The member's own (non-floating) address on leg `leg` ("in" or "out"):
/// 198.18.1.(1+i) inside, 198.18.2.(1+i) outside.
pub fn leg_addr(i: usize, leg: &str) -> String {
    let net = if leg == "in" { 1 } else { 2 };
    format!("198.18.{net}.{}", 1 + i)
}

/// The member's address on the main HA link.
pub fn ha_addr(i: usize) -> &'static str {
    if i == 1 {
        addr::HA_MAIN_1
    } else {
        addr::HA_MAIN_2
    }
}

/// The nftables ruleset of both members: forward only what conntrack
/// knows as established/related, plus new connections from the inside;
/// everything else (invalid, new from the outside) is dropped.
pub const NFT_RULESET: &str = "table inet tl_failover
delete table inet tl_failover
table inet tl_failover {
    chain forward {
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        ct state invalid counter drop
        iifname \"fw-in\" oifname \"fw-out\" ct state new accept
        counter
    }
}
";

/// What keepalived says a member is (the last transition its notify script
/// recorded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VrrpState {
    /// Holds the gateway addresses.
    Master,
    /// Listens to the master's adverts.
    Backup,
    /// An interface of the sync group is down.
    Fault,
    /// No transition recorded yet (or keepalived not running).
    Unknown,
}

impl VrrpState {
    fn parse(s: &str) -> VrrpState {
        match s.trim() {
            "master" => VrrpState::Master,
            "backup" => VrrpState::Backup,
            "fault" => VrrpState::Fault,
            _ => VrrpState::Unknown,
        }
    }
}

/// Options of the pair.
#[derive(Debug, Clone)]
pub struct LinuxPairOptions {
    /// VRRP advert interval (VRRPv3: whole centiseconds, 0.01 s to 40 s;
    /// default 0.01 s, the fastest keepalived accepts: a dead master is
    /// noticed after 3 intervals plus the skew time, about 36 ms).
    pub advert_int: Duration,
    /// conntrackd's external cache: `true` (the manual's recommended
    /// fail-over script setup: the backup keeps replicated entries in user
    /// space, committed to the kernel when it becomes master) or `false`
    /// (`DisableExternalCache on`: entries go straight into the backup's
    /// kernel table).
    pub external_cache: bool,
    /// Run conntrackd at all. `false` is a control experiment: no state
    /// replication, so the new master knows none of the connections (with
    /// `nf_conntrack_tcp_loose=0` they must all be lost).
    pub conntrackd: bool,
}

impl Default for LinuxPairOptions {
    fn default() -> LinuxPairOptions {
        LinuxPairOptions {
            advert_int: Duration::from_millis(10),
            external_cache: true,
            conntrackd: true,
        }
    }
}

struct Member {
    index: usize,
    dir: PathBuf,
    conntrackd: Option<Proc>,
    keepalived: Option<Proc>,
}

/// The pair, running in `lab`'s `fw1` and `fw2`. Dropping it stops the
/// daemons (the lab's own teardown would kill them anyway).
pub struct LinuxPair<'l> {
    lab: &'l Lab,
    opts: LinuxPairOptions,
    members: Vec<Member>,
}

fn io_err(what: &Path, e: std::io::Error) -> LabError {
    LabError::io(format!("writing {}", what.display()), e)
}

impl<'l> LinuxPair<'l> {
    /// Configures both firewall namespaces of `lab` (a two-node lab with HA
    /// links, no tandemd running) and starts the daemons: fw1 first, which
    /// becomes master, then fw2, which must settle as synchronized backup.
    pub fn setup(lab: &'l Lab, opts: LinuxPairOptions) -> Result<LinuxPair<'l>> {
        if lab.kind() != (LabKind::Tandem { nodes: 2 }) {
            return Err(LabError::Other(format!(
                "the Linux pair needs a two-node lab, not {:?}",
                lab.kind()
            )));
        }
        let centis = opts.advert_int.as_millis() / 10;
        if !(1..=4000).contains(&centis) {
            return Err(LabError::Other(format!(
                "VRRP advert interval {:?} out of 0.01-40 s",
                opts.advert_int
            )));
        }
        for bin in ["keepalived", "conntrackd", "conntrack", "nft"] {
            if !["/usr/sbin", "/usr/bin", "/sbin"]
                .iter()
                .any(|d| Path::new(d).join(bin).is_file())
            {
                return Err(LabError::BinaryNotFound(format!(
                    "{bin} not found: run scripts/install-deps.sh (keepalived conntrackd conntrack nftables)"
                )));
            }
        }
        let mut pair = LinuxPair {
            lab,
            opts,
            members: Vec::new(),
        };
        for i in 1..=2 {
            let dir = lab.dir().join(format!("linux-fw{i}"));
            std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
            pair.members.push(Member {
                index: i,
                dir,
                conntrackd: None,
                keepalived: None,
            });
            pair.configure_router(i)?;
            pair.write_configs(i)?;
        }
        pair.start_daemons(1)?;
        pair.wait_state(1, VrrpState::Master, Duration::from_secs(15))?;
        pair.start_daemons(2)?;
        pair.wait_state(2, VrrpState::Backup, Duration::from_secs(15))?;
        Ok(pair)
    }

    fn member(&self, i: usize) -> &Member {
        &self.members[i - 1]
    }

    fn ns(&self, i: usize) -> &Netns {
        self.lab.fw(i)
    }

    /// The member's run directory (configs, pid files, socket, logs).
    pub fn dir(&self, i: usize) -> &Path {
        &self.member(i).dir
    }

    fn configure_router(&self, i: usize) -> Result<()> {
        let ns = self.ns(i);
        link::add_addr(ns, "fw-in", &format!("{}/24", leg_addr(i, "in")))?;
        link::add_addr(ns, "fw-out", &format!("{}/24", leg_addr(i, "out")))?;
        ns.sysctl("net.ipv4.ip_forward", "1")?;
        let rules = self.dir(i).join("ruleset.nft");
        std::fs::write(&rules, NFT_RULESET).map_err(|e| io_err(&rules, e))?;
        ns.run(&["nft", "-f", &rules.to_string_lossy()])?;
        // Loaded with the ruleset's ct expressions: a segment of a connection
        // the member does not know is INVALID, never picked up mid-stream.
        ns.sysctl("net.netfilter.nf_conntrack_tcp_loose", "0")?;
        Ok(())
    }

    fn conntrackd_conf(&self, i: usize) -> PathBuf {
        self.dir(i).join("conntrackd.conf")
    }

    fn write_configs(&self, i: usize) -> Result<()> {
        let dir = self.dir(i);
        let peer = 3 - i;
        let cache = if self.opts.external_cache {
            ""
        } else {
            "\n        DisableExternalCache on"
        };
        let ignore: String = [
            "127.0.0.1".to_string(),
            addr::LAN_GW.to_string(),
            addr::WAN_GW.to_string(),
            leg_addr(1, "in"),
            leg_addr(1, "out"),
            leg_addr(2, "in"),
            leg_addr(2, "out"),
            addr::HA_MAIN_1.to_string(),
            addr::HA_MAIN_2.to_string(),
            addr::HA_BACKUP_1.to_string(),
            addr::HA_BACKUP_2.to_string(),
        ]
        .iter()
        .map(|a| format!("            IPv4_address {a}\n"))
        .collect();
        let conntrackd = format!(
            "# conntrackd of fw{i} (bench-failover's Linux pair)
Sync {{
    Mode FTFW {{
        ResendQueueSize 131072{cache}
    }}
    UDP {{
        IPv4_address {me}
        IPv4_Destination_Address {peer_ip}
        Port {port}
        Interface ha-main
        SndSocketBuffer 1249280
        RcvSocketBuffer 1249280
        Checksum on
    }}
}}
General {{
    Systemd off
    HashSize 8192
    HashLimit 131072
    LogFile {dir}/conntrackd.log
    Syslog off
    LockFile {dir}/conntrackd.lock
    UNIX {{
        Path {dir}/conntrackd.ctl
    }}
    NetlinkBufferSize 2097152
    NetlinkBufferSizeMaxGrowth 8388608
    Filter From Userspace {{
        Protocol Accept {{
            TCP
            UDP
            ICMP
        }}
        Address Ignore {{
{ignore}        }}
    }}
}}
",
            me = ha_addr(i),
            peer_ip = ha_addr(peer),
            port = CONNTRACKD_PORT,
            dir = dir.display(),
        );
        let conf = self.conntrackd_conf(i);
        std::fs::write(&conf, conntrackd).map_err(|e| io_err(&conf, e))?;

        // The notify script: conntrackd's primary-backup.sh with this
        // member's config, plus a record of each transition.
        let notify = dir.join("notify.sh");
        let script = format!(
            "#!/bin/sh
# keepalived notify script of fw{i}: conntrackd's primary-backup.sh
C={conf}
D={dir}
echo \"$1 $(date +%s.%N)\" >> $D/states.log
echo \"$1\" > $D/state.tmp && mv $D/state.tmp $D/state
[ -f $D/no-conntrackd ] && exit 0
case \"$1\" in
  master)
    conntrackd -C $C -c   # commit the external cache into the kernel table
    conntrackd -C $C -f   # flush the internal and the external caches
    conntrackd -C $C -R   # resynchronize the internal cache with the kernel
    conntrackd -C $C -B   # send a bulk update to the backup
    ;;
  backup)
    conntrackd -C $C -s >/dev/null 2>&1 || conntrackd -C $C -d
    conntrackd -C $C -t   # shorten kernel timers (zombie entries)
    conntrackd -C $C -n   # request a resync from the master
    ;;
  fault)
    conntrackd -C $C -t
    ;;
esac
echo \"$1 done $(date +%s.%N)\" >> $D/states.log
",
            conf = conf.display(),
            dir = dir.display(),
        );
        std::fs::write(&notify, script).map_err(|e| io_err(&notify, e))?;
        cmd::run_root(&["chmod", "0755", &notify.to_string_lossy()])?;

        let advert = format!("{:.2}", self.opts.advert_int.as_secs_f64());
        let instance = |name: &str, leg: &str, vrid: u8, vip: &str| {
            format!(
                "vrrp_instance {name} {{
    state BACKUP
    nopreempt
    interface fw-{leg}
    virtual_router_id {vrid}
    priority 100
    advert_int {advert}
    virtual_ipaddress {{
        {vip}/24 dev fw-{leg}
    }}
}}
"
            )
        };
        let keepalived = format!(
            "# keepalived of fw{i} (bench-failover's Linux pair)
global_defs {{
    router_id tl-fw{i}
    script_user root
    vrrp_version 3
    vrrp_garp_master_repeat 3
    vrrp_garp_master_delay 1
}}
vrrp_sync_group TL_FW {{
    group {{
        VI_IN
        VI_OUT
    }}
    notify_master \"{notify} master\"
    notify_backup \"{notify} backup\"
    notify_fault \"{notify} fault\"
}}
{vin}{vout}",
            notify = notify.display(),
            vin = instance("VI_IN", "in", VRID_IN, addr::LAN_GW),
            vout = instance("VI_OUT", "out", VRID_OUT, addr::WAN_GW),
        );
        let kconf = dir.join("keepalived.conf");
        std::fs::write(&kconf, keepalived).map_err(|e| io_err(&kconf, e))?;
        Ok(())
    }

    /// conntrackd `-C <conf> ARGS` in member `i`'s namespace (10 s limit):
    /// (success, stdout).
    pub fn conntrackd_ctl(&self, i: usize, args: &[&str]) -> Result<(bool, String)> {
        let conf = self.conntrackd_conf(i).to_string_lossy().into_owned();
        let mut argv = vec!["conntrackd", "-C", &conf];
        argv.extend_from_slice(args);
        let o = self.ns(i).exec_timeout(&argv, Duration::from_secs(10))?;
        Ok((
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        ))
    }

    fn start_daemons(&mut self, i: usize) -> Result<()> {
        let dir = self.dir(i).to_path_buf();
        for f in [
            "conntrackd.lock",
            "conntrackd.ctl",
            "keepalived.pid",
            "vrrp.pid",
            "state",
        ] {
            let _ = std::fs::remove_file(dir.join(f));
        }
        let conf = self.conntrackd_conf(i).to_string_lossy().into_owned();
        let ns = self.lab.fw(i);
        let ct = if self.opts.conntrackd {
            let mut ct = ns.spawn("conntrackd", &["conntrackd", "-C", &conf])?;
            let up = cmd::poll_until(Duration::from_secs(10), Duration::from_millis(50), || {
                if !ct.is_running() {
                    return Some(false);
                }
                let ok = self
                    .conntrackd_ctl(i, &["-s"])
                    .map(|(ok, _)| ok)
                    .unwrap_or(false);
                ok.then_some(true)
            });
            if up != Some(true) {
                return Err(LabError::Other(format!(
                    "conntrackd of fw{i} did not come up\n{}",
                    ct.logs_tail(20)
                )));
            }
            Some(ct)
        } else {
            let marker = dir.join("no-conntrackd");
            std::fs::write(&marker, "").map_err(|e| io_err(&marker, e))?;
            None
        };
        let kconf = dir.join("keepalived.conf");
        let s = |p: &str| dir.join(p).to_string_lossy().into_owned();
        let ka = ns.spawn(
            "keepalived",
            &[
                "keepalived",
                "--dont-fork",
                "--log-console",
                "--log-detail",
                "--no-syslog",
                "--vrrp",
                "--use-file",
                &kconf.to_string_lossy(),
                "--pid",
                &s("keepalived.pid"),
                "--vrrp_pid",
                &s("vrrp.pid"),
            ],
        )?;
        let m = &mut self.members[i - 1];
        m.conntrackd = ct;
        m.keepalived = Some(ka);
        Ok(())
    }

    /// Member `i`'s VRRP state (its last recorded transition).
    pub fn state(&self, i: usize) -> VrrpState {
        std::fs::read_to_string(self.dir(i).join("state"))
            .map(|s| VrrpState::parse(&s))
            .unwrap_or(VrrpState::Unknown)
    }

    /// The member that is master, if exactly one is.
    pub fn master(&self) -> Option<usize> {
        let m: Vec<usize> = (1..=2)
            .filter(|&i| self.state(i) == VrrpState::Master)
            .collect();
        (m.len() == 1).then(|| m[0])
    }

    /// Waits (bounded) until member `i` is in `want`.
    pub fn wait_state(&mut self, i: usize, want: VrrpState, timeout: Duration) -> Result<()> {
        let ok = cmd::poll_until(timeout, Duration::from_millis(20), || {
            (self.state(i) == want).then_some(())
        });
        ok.ok_or_else(|| LabError::Timeout {
            what: format!(
                "fw{i} in VRRP state {want:?} (is {:?})\n{}",
                self.state(i),
                self.logs_tail(i, 20)
            ),
            timeout,
        })
    }

    /// Pids of keepalived and conntrackd processes in member `i`'s
    /// namespace (children and daemonised ones included).
    pub fn daemon_pids(&self, i: usize) -> Vec<u32> {
        netns::pids_of(self.ns(i).name())
            .into_iter()
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .map(|c| matches!(c.trim(), "keepalived" | "conntrackd"))
                    .unwrap_or(false)
            })
            .collect()
    }

    /// Member `i` dies: in one shell command in its namespace, SIGSTOP to
    /// every keepalived and conntrackd process there, its two data legs
    /// (`fw-in`, `fw-out`) set down so its kernel stops forwarding as a dead
    /// machine would, then SIGKILL to the same processes. Its kernel state (conntrack
    /// table, addresses) is left as it was until [`LinuxPair::restart`].
    pub fn crash(&mut self, i: usize) -> Result<()> {
        let pids: Vec<String> = self
            .daemon_pids(i)
            .iter()
            .map(ToString::to_string)
            .collect();
        // SIGSTOP first: nothing of the member reacts any more (no process
        // sees a parent die or a link go down, so no priority-0 advert or
        // notify script), then the legs go down and everything is killed.
        let pids = pids.join(" ");
        let script = format!(
            "kill -STOP {pids} 2>/dev/null; ip link set dev fw-in down; ip link set dev fw-out down; kill -KILL {pids} 2>/dev/null; true"
        );
        let o = self
            .ns(i)
            .exec_timeout(&["sh", "-c", &script], Duration::from_secs(10))?;
        if !o.status.success() {
            return Err(LabError::Other(format!(
                "crashing fw{i}: {}",
                String::from_utf8_lossy(&o.stderr)
            )));
        }
        let m = &mut self.members[i - 1];
        for p in [m.keepalived.as_mut(), m.conntrackd.as_mut()]
            .into_iter()
            .flatten()
        {
            p.signal("KILL");
            p.wait_timeout(Duration::from_secs(5));
        }
        let left = self.daemon_pids(i);
        if !left.is_empty() {
            cmd::signal_pids(&left, "KILL");
        }
        Ok(())
    }

    /// Member `i` comes back as after a reboot: its conntrack table flushed
    /// and any gateway address left by the killed keepalived removed (a
    /// booting machine has neither), its legs set up, then conntrackd and
    /// keepalived started again. It joins as backup (nopreempt) and asks
    /// the master for a resync; see [`LinuxPair::synchronized`].
    pub fn restart(&mut self, i: usize) -> Result<()> {
        if !self.daemon_pids(i).is_empty() {
            return Err(LabError::Other(format!("fw{i} is still running")));
        }
        let m = &mut self.members[i - 1];
        m.keepalived = None;
        m.conntrackd = None;
        let ns = self.lab.fw(i);
        ns.exec(&["conntrack", "-F"])?;
        for (dev, vip) in [("fw-in", addr::LAN_GW), ("fw-out", addr::WAN_GW)] {
            let _ = ns.exec(&["ip", "addr", "del", &format!("{vip}/24"), "dev", dev]);
        }
        link::set_up(ns, "fw-in")?;
        link::set_up(ns, "fw-out")?;
        self.start_daemons(i)
    }

    /// `current active connections` of conntrackd's internal and external
    /// caches (`conntrackd -s`) of member `i`.
    pub fn cache_counts(&self, i: usize) -> Result<(u64, u64)> {
        let (ok, out) = self.conntrackd_ctl(i, &["-s"])?;
        if !ok {
            return Err(LabError::Other(format!("conntrackd -s on fw{i} failed")));
        }
        Ok(parse_cache_counts(&out))
    }

    /// True if `backup` is backup and its external cache holds at least as
    /// many entries as the master's internal cache (with the external cache
    /// disabled: as many entries in its kernel table as the master's).
    pub fn synchronized(&self, backup: usize) -> Result<bool> {
        let master = 3 - backup;
        if self.state(backup) != VrrpState::Backup || self.state(master) != VrrpState::Master {
            return Ok(false);
        }
        if !self.opts.conntrackd {
            return Ok(true);
        }
        let (m_int, _) = self.cache_counts(master)?;
        let (_, b_ext) = self.cache_counts(backup)?;
        if self.opts.external_cache {
            Ok(b_ext >= m_int)
        } else {
            Ok(self.kernel_count(backup)? >= self.kernel_count(master)?)
        }
    }

    /// Entries of member `i`'s kernel conntrack table (`conntrack -C`).
    pub fn kernel_count(&self, i: usize) -> Result<u64> {
        let o = self.ns(i).exec(&["conntrack", "-C"])?;
        Ok(String::from_utf8_lossy(&o.stdout)
            .trim()
            .parse()
            .unwrap_or(0))
    }

    /// The tail of member `i`'s transitions, keepalived and conntrackd logs.
    pub fn logs_tail(&self, i: usize, lines: usize) -> String {
        let tail = |p: &Path| {
            let s = std::fs::read_to_string(p).unwrap_or_default();
            let v: Vec<&str> = s.lines().collect();
            v[v.len().saturating_sub(lines)..].join("\n")
        };
        let m = self.member(i);
        let mut s = format!(
            "--- fw{i} transitions ---\n{}\n--- fw{i} conntrackd.log ---\n{}\n",
            tail(&m.dir.join("states.log")),
            tail(&m.dir.join("conntrackd.log"))
        );
        if let Some(k) = &m.keepalived {
            s += &k.logs_tail(lines);
        }
        s
    }

    /// Every recorded transition of member `i` ("master 1795..." lines).
    pub fn transitions(&self, i: usize) -> Vec<String> {
        std::fs::read_to_string(self.dir(i).join("states.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The member's index (for messages).
    pub fn members(&self) -> Vec<usize> {
        self.members.iter().map(|m| m.index).collect()
    }

    /// Stops both members' daemons (their processes: SIGTERM, then SIGKILL
    /// to whatever is left, daemonised ones included).
    pub fn stop(&mut self) {
        for m in &mut self.members {
            m.keepalived = None;
            m.conntrackd = None;
        }
        for i in 1..=2 {
            let left = self.daemon_pids(i);
            if !left.is_empty() {
                cmd::signal_pids(&left, "KILL");
            }
        }
    }
}

impl Drop for LinuxPair<'_> {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Parses the `current active connections` lines of the `cache internal`
/// and `cache external` sections of `conntrackd -s`.
pub fn parse_cache_counts(text: &str) -> (u64, u64) {
    let (mut internal, mut external) = (0, 0);
    let mut section = "";
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with("cache internal") {
            section = "internal";
        } else if l.starts_with("cache external") {
            section = "external";
        } else if l.starts_with("traffic") || l.starts_with("UDP") || l.starts_with("message") {
            section = "";
        } else if let Some(rest) = l.strip_prefix("current active connections:") {
            let n = rest.trim().parse().unwrap_or(0);
            match section {
                "internal" => internal = n,
                "external" => external = n,
                _ => {}
            }
        }
    }
    (internal, external)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leg_addresses_are_lab_addresses_distinct_from_the_gateways() {
        for i in 1..=2 {
            for leg in ["in", "out"] {
                let a = leg_addr(i, leg);
                assert!(link::check_lab_addr(&a).is_ok());
                assert_ne!(a, addr::LAN_GW);
                assert_ne!(a, addr::WAN_GW);
            }
        }
        assert_eq!(leg_addr(2, "out"), "198.18.2.3");
    }

    #[test]
    fn cache_counts_are_read_per_section() {
        let s = "cache internal:\ncurrent active connections:           52\n\
                 connections created:                  60    failed:            0\n\
                 cache external:\ncurrent active connections:            7\n\
                 traffic processed:\n                   0 Bytes                         0 Pckts\n";
        assert_eq!(parse_cache_counts(s), (52, 7));
    }
}
