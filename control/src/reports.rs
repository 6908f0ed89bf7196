//! The answers built from the dataplane's state (status, stats, sync,
//! connections). They run on the API thread or its job thread, never on
//! the control thread (they read sysfs, walk tables, allocate).

use std::collections::BTreeMap;
use std::time::UNIX_EPOCH;

use tandem_dataplane::conntrack::{ConnView, NatKind};
use tandem_dataplane::firewall::ConnQuery;
use tandem_dataplane::node::{device_text, LinkSource};
use tandem_dataplane::sync::SyncCore;

use crate::api::{
    ConnFilter, ConnectionStatus, FirewallStats, InterfaceStatus, NatStatus, NeighbourStatus,
    PortStats, RouteStatus, StatsReport, StatusReport, SyncReport, WorkerStats, WorkerStatus,
};
use crate::apiserver::ApiContext;

/// The `sync` answer: the state sync's counters and state.
pub fn sync_report(ctx: &ApiContext, core: &SyncCore) -> SyncReport {
    use std::sync::atomic::Ordering::Relaxed;
    let sh = core.shared();
    let link = sh.link_in_use.load(Relaxed);
    let larval = ctx
        .node
        .workers()
        .iter()
        .filter_map(|w| w.firewall.as_ref())
        .map(|f| f.larval.get())
        .sum();
    SyncReport {
        peer_up: sh.peer_up.load(Relaxed),
        synchronized: sh.synchronized.load(Relaxed),
        link: ctx
            .cfg()
            .ha
            .as_ref()
            .and_then(|h| h.links.get(usize::from(link)))
            .map(|l| l.name.clone()),
        records_queued: sh.records_queued.load(Relaxed),
        records_refused: sh.records_refused.load(Relaxed),
        datagrams_sent: sh.datagrams_sent.load(Relaxed),
        datagrams_received: sh.datagrams_received.load(Relaxed),
        datagrams_dropped: sh.datagrams_dropped.load(Relaxed),
        installs: sh.installs.load(Relaxed),
        installs_dropped: sh.installs_dropped.load(Relaxed),
        bulks_sent: sh.bulks_sent.load(Relaxed),
        bulks_received: sh.bulks_received.load(Relaxed),
        larval,
        lag_ms: [0, 1, 2, 3].map(|i| sh.lag_ms[i].load(Relaxed)),
        lag_samples: sh.lag_samples.load(Relaxed),
        details: sh
            .details
            .lock()
            .map(|d| d.iter().cloned().collect())
            .unwrap_or_default(),
    }
}

/// The `policy show` answer: the rules in force with their hits.
pub fn policy(ctx: &ApiContext) -> crate::api::PolicyReport {
    let Some(p) = ctx.node.policy() else {
        return crate::api::PolicyReport::default();
    };
    let hits = ctx.node.rule_hits().unwrap_or_default();
    let at = |i: usize| hits.get(i).copied().unwrap_or((0, 0));
    let suppressed = ctx
        .node
        .workers()
        .iter()
        .filter_map(|w| w.firewall.as_ref())
        .map(|f| f.rule_log_suppressed.get() + f.rule_log_queue_full.get())
        .sum();
    crate::api::PolicyReport {
        path: p.path.display().to_string(),
        rules: p
            .rule_list
            .iter()
            .enumerate()
            .map(|(i, r)| crate::api::RuleReport {
                index: i,
                name: r.name.clone(),
                action: r.action.clone(),
                log: r.log,
                enabled: r.enabled,
                hits: at(i).0,
                bytes: at(i).1,
            })
            .collect(),
        default_action: p.default_action.clone(),
        default_hits: at(p.rule_list.len()).0,
        default_bytes: at(p.rule_list.len()).1,
        log_suppressed: suppressed,
    }
}

/// The `status` answer.
pub fn status(ctx: &ApiContext) -> StatusReport {
    let node = &ctx.node;
    let port_name = |port: u16| {
        node.interfaces()
            .iter()
            .find(|i| i.port.id() == port)
            .map_or_else(|| format!("port{port}"), |i| i.config.name.clone())
    };
    let interfaces = node
        .interfaces()
        .iter()
        .enumerate()
        .map(|(i, iface)| {
            let (link, source) = node.link(i);
            InterfaceStatus {
                name: iface.config.name.clone(),
                device: device_text(&iface.config.device),
                port_id: iface.port.id(),
                mac: iface.mac.to_string(),
                addresses: iface
                    .config
                    .addresses
                    .iter()
                    .map(|a| a.to_string())
                    .collect(),
                mtu: iface.config.mtu,
                link_up: link.up,
                link_source: match source {
                    LinkSource::Dpdk => "dpdk".into(),
                    LinkSource::Kernel(k) => format!("kernel:{k}"),
                    LinkSource::Aggregate => "aggregate".into(),
                },
                speed_mbps: link.speed_mbps,
                rx_queues: iface.port.rx_queues(),
                tx_queues: iface.port.tx_queues(),
                steering: iface.port.steering().as_str().into(),
                steering_why: match iface.port.steering() {
                    tandem_dataplane::dpdk::Steering::Software(why) => Some(why.clone()),
                    _ => None,
                },
            }
        })
        .collect();
    let routes = node
        .router()
        .routes()
        .map(|r| RouteStatus {
            destination: format!("{}/{}", r.destination, r.prefix_len),
            via: r.route.next_hop.map(|v| v.to_string()),
            interface: port_name(r.route.port),
            kind: if r.connected {
                "connected".into()
            } else {
                "static".into()
            },
        })
        .collect();
    let neighbours = node
        .router()
        .neighbours()
        .snapshot(node.now_ms())
        .into_iter()
        .map(|n| NeighbourStatus {
            ip: n.ip.to_string(),
            mac: n.mac.map(|m| m.to_string()),
            interface: port_name(n.port),
            state: n.state.as_str().into(),
            age_ms: n.age_ms,
        })
        .collect();
    let workers = node
        .workers()
        .iter()
        .map(|w| WorkerStatus {
            id: w.id,
            cpu: w.cpu,
            lcore: w.lcore.get().copied(),
            queues: node.interfaces().len() as u16,
        })
        .collect();
    StatusReport {
        node: ctx.cfg().node.name.clone(),
        serial: ctx.cfg().node.serial.clone(),
        version: tandem_dataplane::build::get().version.into(),
        pid: std::process::id(),
        started_unix: ctx
            .started
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        uptime_secs: ctx.started_at.elapsed().as_secs(),
        config_path: ctx.config_path.display().to_string(),
        poll_mode: match ctx.cfg().dataplane.poll_mode {
            tandem_config::PollMode::Busy => "busy".into(),
            tandem_config::PollMode::Adaptive => "adaptive".into(),
        },
        interfaces,
        routes,
        neighbours,
        workers,
        role: ctx.node.role().as_str().into(),
        forced: ctx.shared.forced().map(|r| r.as_str().into()),
    }
}

/// The `stats` answer.
pub fn stats(ctx: &ApiContext) -> StatsReport {
    let node = &ctx.node;
    let ports = node
        .interfaces()
        .iter()
        .enumerate()
        .map(|(i, iface)| {
            let c = node.port_counters(i);
            PortStats {
                name: iface.config.name.clone(),
                port_id: iface.port.id(),
                rx_packets: c.rx_packets,
                rx_bytes: c.rx_bytes,
                tx_packets: c.tx_packets,
                tx_bytes: c.tx_bytes,
                rx_missed: c.rx_missed,
                rx_errors: c.rx_errors,
                tx_errors: c.tx_errors,
                rx_nombuf: c.rx_nombuf,
            }
        })
        .collect();
    let mut drops_total: BTreeMap<String, u64> = BTreeMap::new();
    let workers = node
        .workers()
        .iter()
        .map(|w| {
            let c = &w.counters;
            // The router and the firewall's parser share a few reason
            // names (ip_bad_length, ...): a name's counts add up.
            let mut drops: BTreeMap<String, u64> = BTreeMap::new();
            for (k, v) in c
                .drop_counts()
                .chain(w.firewall.iter().flat_map(|f| f.drop_counts()))
            {
                *drops.entry(k.to_owned()).or_default() += v;
            }
            for (k, v) in &drops {
                *drops_total.entry(k.clone()).or_default() += v;
            }
            WorkerStats {
                id: w.id,
                rx_packets: c.rx_packets.get(),
                tx_packets: c.tx_packets.get(),
                forwarded: c.forwarded.get(),
                replies: c.replies.get(),
                held: c.held.get(),
                arp_requests_sent: c.arp_requests_sent.get(),
                icmp_errors_sent: c.icmp_errors_sent.get(),
                rejects_sent: c.rejects_sent.get(),
                garps_sent: c.garps_sent.get(),
                tx_dropped: c.worker_drops
                    [tandem_dataplane::counters::WorkerDrop::TxQueueFull as usize]
                    .get(),
                handoffs_out: c.handoffs_out.get(),
                handoffs_in: c.handoffs_in.get(),
                tx_handoffs: c.tx_handoffs.get(),
                connections: w.firewall.as_ref().map_or(0, |f| f.connections.get()),
                polls: c.polls.get(),
                idle_polls: c.idle_polls.get(),
                sleeps: c.sleeps.get(),
                drops,
            }
        })
        .collect();
    let firewall = node.policy().map(|p| {
        let mut f = FirewallStats {
            rules: p.rules,
            ..FirewallStats::default()
        };
        for c in node.workers().iter().filter_map(|w| w.firewall.as_ref()) {
            f.connections += c.connections.get();
            f.capacity += c.capacity.get();
            f.created += c.created.get();
            f.deleted += c.deleted.get();
            f.expired += c.expired.get();
            f.passed += c.passed.get();
            f.deltas += c.deltas.get();
        }
        f
    });
    StatsReport {
        ports,
        workers,
        drops_total,
        firewall,
    }
}

/// Turns the operator's filter into the workers' query; errors say what is
/// allowed.
pub fn conn_query(f: &ConnFilter) -> Result<ConnQuery, String> {
    let net =
        |field: &str, v: &Option<String>| -> Result<Option<(std::net::Ipv4Addr, u8)>, String> {
            let Some(v) = v else { return Ok(None) };
            let (addr, len) = v.split_once('/').unwrap_or((v.as_str(), "32"));
            match (addr.parse(), len.parse::<u8>()) {
                (Ok(a), Ok(l)) if l <= 32 => Ok(Some((a, l))),
                _ => Err(format!(
                    "{field} {v:?} is not an IPv4 address or CIDR; allowed a.b.c.d or a.b.c.d/len"
                )),
            }
        };
    let proto = match f.proto.as_deref() {
        None => None,
        Some(p) => Some(match p.to_ascii_lowercase().as_str() {
            "tcp" => 6,
            "udp" => 17,
            "icmp" => 1,
            "gre" => 47,
            "esp" => 50,
            "sctp" => 132,
            other => other.parse::<u8>().map_err(|_| {
                format!("proto {p:?} is unknown; allowed tcp, udp, icmp, gre, esp, sctp or a number 0-255")
            })?,
        }),
    };
    Ok(ConnQuery {
        proto,
        addr: net("addr", &f.addr)?,
        src: net("src", &f.src)?,
        dst: net("dst", &f.dst)?,
        port: f.port,
        limit: f.limit.unwrap_or(1000),
    })
}

fn proto_name(p: u8) -> String {
    match p {
        6 => "tcp".into(),
        17 => "udp".into(),
        1 => "icmp".into(),
        47 => "gre".into(),
        50 => "esp".into(),
        132 => "sctp".into(),
        n => n.to_string(),
    }
}

/// One connection as `conn list` shows it.
pub fn conn_status(worker: usize, v: &ConnView) -> ConnectionStatus {
    ConnectionStatus {
        worker,
        proto: proto_name(v.proto),
        src: v.orig.src.to_string(),
        sport: v.orig.sport,
        dst: v.orig.dst.to_string(),
        dport: v.orig.dport,
        state: v.state.to_string(),
        nat: v.nat.map(|n| match n.kind {
            NatKind::Snat => NatStatus {
                kind: "source".into(),
                addr: n.translated.src.to_string(),
                port: n.translated.sport,
            },
            NatKind::Dnat => NatStatus {
                kind: "destination".into(),
                addr: n.translated.dst.to_string(),
                port: n.translated.dport,
            },
        }),
        rule: v.rule,
        sync: v.sync,
        larval: v.larval,
        age_ms: v.age_ms,
        idle_ms: v.idle_ms,
        expires_ms: v.remaining_ms,
        packets_orig: v.packets[0],
        packets_reply: v.packets[1],
        bytes_orig: v.bytes[0],
        bytes_reply: v.bytes[1],
    }
}

/// `sync verify`: starts one when asked and reports the last finished
/// (the sync core runs it; `tandemctl` waits for `done` to grow).
pub fn sync_verify(ctx: &ApiContext, start: bool) -> crate::api::Response {
    use crate::api::Response;
    use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
    let Some(core) = ctx.node.sync() else {
        return Response::error(
            "no state sync on this node: it needs an ha section and a firewall policy in its configuration",
        );
    };
    let sh = core.shared();
    if start {
        sh.verify_wanted.store(true, Release);
    }
    let r = sh.last_verify.lock().map(|r| *r).unwrap_or_default();
    Response::Verify(crate::api::VerifyStatus {
        done: sh.verify_done.load(Acquire),
        started: start,
        ms: r.ms,
        ours: r.ours,
        theirs: r.theirs,
        differing_buckets: r.differing_buckets,
        repairing: r.repairing,
        verifies: sh.verifies.load(Relaxed),
        differences_total: sh.verify_differences.load(Relaxed),
        repairs: sh.verify_repairs.load(Relaxed),
    })
}
