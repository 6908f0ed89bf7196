//! Rule logging: the matches of filter rules with `log: true`, written to
//! the event log (service RULE; and so to syslog) by a thread of its own
//! (`tandem-rulelog`), never by a worker or the control thread.
//!
//! Each worker keeps at most [`RULE_LOG_PER_SEC`] matches a second (bursts
//! of [`RULE_LOG_BURST`]) in a bounded queue; what the limit or a full
//! queue kept out is counted, and this thread says how many every
//! [`REPORT_EVERY`] in the log. A line, written within
//! [`DRAIN_EVERY`] of the match:
//!
//! ```text
//! RULE: rule 1 (dns) pass udp 198.18.1.2:40000 -> 198.18.2.2:53 in in out out, 60 bytes
//! ```

use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_dataplane::firewall::{RuleLogRecord, RULE_LOG_BURST, RULE_LOG_PER_SEC};
use tandem_dataplane::node::Node;
use tandem_dataplane::policy::{Action, DEFAULT};

use crate::eventlog::EventLog;

/// The queues are read this often.
pub const DRAIN_EVERY: Duration = Duration::from_millis(200);
/// Matches not logged are reported this often at most.
pub const REPORT_EVERY: Duration = Duration::from_secs(10);

/// The running thread.
pub struct RuleLog {
    _thread: crate::background::Background,
}

fn proto_name(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        47 => "gre".into(),
        50 => "esp".into(),
        132 => "sctp".into(),
        n => format!("proto {n}"),
    }
}

/// The log line of one match.
pub fn line(r: &RuleLogRecord, names: &[String], port_name: &dyn Fn(u16) -> String) -> String {
    let rule = if r.rule == DEFAULT {
        "the default action".to_owned()
    } else {
        match names.get(r.rule as usize) {
            Some(n) if *n != format!("rule {}", r.rule) => format!("rule {} ({n})", r.rule),
            _ => format!("rule {}", r.rule),
        }
    };
    let action = match r.action {
        Action::Pass => "pass",
        Action::Block => "block",
        Action::Reject => "reject",
    };
    let k = &r.key;
    let ends = |a: Ipv4Addr, p: u16| {
        if k.proto == 6 || k.proto == 17 || k.proto == 132 {
            format!("{a}:{p}")
        } else {
            a.to_string()
        }
    };
    format!(
        "{rule} {action} {} {} -> {} in {} out {}, {} bytes",
        proto_name(k.proto),
        ends(k.src, k.sport),
        ends(k.dst, k.dport),
        port_name(r.in_port),
        port_name(r.out_port),
        r.len
    )
}

impl RuleLog {
    /// Starts draining `node`'s rule-log queues into `log`.
    pub fn start(node: Arc<Node>, log: EventLog) -> std::io::Result<RuleLog> {
        let thread = crate::background::Background::spawn("tandem-rulelog", move |s| {
            let mut reported = (0u64, 0u64);
            let mut last_report = Instant::now();
            let mut policy_id = 0;
            let mut names: Vec<String> = Vec::new();
            let port_name = |port: u16| {
                node.interfaces()
                    .iter()
                    .find(|i| i.port.id() == port)
                    .map_or_else(|| format!("port {port}"), |i| i.config.name.clone())
            };
            while !s.load(Ordering::Relaxed) {
                let (records, limited, full) = node.take_rule_logs(4096);
                if !records.is_empty() {
                    if let Some(p) = node.policy().filter(|p| p.id != policy_id) {
                        policy_id = p.id;
                        names = p.rule_list.iter().map(|r| r.name.clone()).collect();
                    }
                    for r in &records {
                        log.event("RULE", line(r, &names, &port_name));
                    }
                }
                if (limited, full) != reported && last_report.elapsed() >= REPORT_EVERY {
                    log.event(
                            "RULE",
                            format_args!(
                                "{} matches of logged rules not logged over the limit ({RULE_LOG_PER_SEC} a second per worker, bursts of {RULE_LOG_BURST}), {} for a full queue, since the last such line",
                                limited - reported.0,
                                full - reported.1
                            ),
                        );
                    reported = (limited, full);
                    last_report = Instant::now();
                }
                std::thread::sleep(DRAIN_EVERY);
            }
        })?;
        Ok(RuleLog { _thread: thread })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_dataplane::flow::FlowKey;

    #[test]
    fn a_match_reads_as_an_operator_writes_it() {
        let r = RuleLogRecord {
            at_ms: 5,
            rule: 1,
            action: Action::Pass,
            key: FlowKey::new(
                Ipv4Addr::new(198, 18, 1, 2),
                40000,
                Ipv4Addr::new(198, 18, 2, 2),
                53,
                17,
            ),
            in_port: 0,
            out_port: 1,
            len: 60,
        };
        let names = vec!["rule 0".to_string(), "dns".to_string()];
        let port = |p: u16| ["in", "out"][usize::from(p)].to_string();
        assert_eq!(
            line(&r, &names, &port),
            "rule 1 (dns) pass udp 198.18.1.2:40000 -> 198.18.2.2:53 in in out out, 60 bytes"
        );
        let icmp = RuleLogRecord {
            rule: 0,
            action: Action::Block,
            key: FlowKey::new(
                Ipv4Addr::new(198, 18, 1, 2),
                7,
                Ipv4Addr::new(198, 18, 2, 2),
                0,
                1,
            ),
            ..r
        };
        assert_eq!(
            line(&icmp, &names, &port),
            "rule 0 block icmp 198.18.1.2 -> 198.18.2.2 in in out out, 60 bytes"
        );
        let default = RuleLogRecord {
            rule: DEFAULT,
            ..icmp
        };
        assert!(line(&default, &names, &port).starts_with("the default action block"));
    }
}
