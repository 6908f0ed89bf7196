//! tandem-gen through a cluster from the lab's generator host
//! ([`Lab::add_gen_host`]): UDP both ways, following the gateways'
//! gratuitous ARPs, so a failover shows as frames lost and a silence per
//! direction. Used by `bench-failover --gen-rate` and the e2e test
//! `tests/generator.rs`.

use std::time::Duration;

use serde_json::Value;

use crate::lab::{addr, Lab};
use crate::netns::Proc;
use crate::tools::json_lines;
use crate::{node, LabError, Result};

/// The interval of tandem-gen's timeline in [`start`], milliseconds.
pub const TIMELINE_MS: u32 = 10;

/// Starts tandem-gen in `lab`'s generator host: `flows` UDP flows
/// (198.18.1.100.. to 198.18.2.100.., port 9) both ways at `rate` frames
/// per second each, after a warm-up of `warmup_s`, for at most 300 s
/// (end it with [`report`]), counting what it receives per 10 ms
/// ([`timeline_around`]). `tag` names the process and its DPDK files.
pub fn start(lab: &Lab, tag: &str, rate: u32, flows: u32, warmup_s: f64) -> Result<Proc> {
    if !(1..=1000).contains(&flows) {
        return Err(LabError::Other(format!(
            "generator flows {flows}: 1 to 1000"
        )));
    }
    let bin = node::find_bin("tandem-gen")?;
    let last = |base: u8| format!("198.18.{base}.{}", 100 + (flows - 1).min(155));
    lab.ns("gen").spawn(
        tag,
        &[
            bin.to_str().unwrap_or("tandem-gen"),
            "--lcore",
            "1",
            "--no-huge",
            "--memory-mb",
            "256",
            "--file-prefix",
            &format!("{tag}-{}", std::process::id()),
            "--port-a",
            "net_af_packet0,iface=lan0,framecnt=2048",
            "--port-b",
            "net_af_packet1,iface=wan0,framecnt=2048",
            "--bidir",
            "--rate",
            &rate.to_string(),
            "--flows",
            &flows.to_string(),
            "--src-net",
            &format!("198.18.1.100-{}", last(1)),
            "--dst-net",
            &format!("198.18.2.100-{}", last(2)),
            "--gw-a",
            addr::LAN_GW,
            "--gw-b",
            addr::WAN_GW,
            "--idle-sleep-us",
            "50",
            "--timeline-ms",
            &TIMELINE_MS.to_string(),
            "--warmup",
            &warmup_s.to_string(),
            "--duration",
            "300",
        ],
    )
}

/// Ends a run of [`start`] (SIGINT: it reports) and returns tandem-gen's
/// report.
pub fn report(mut gen: Proc) -> Result<Value> {
    gen.signal("INT");
    if gen.wait_timeout(Duration::from_secs(10)).is_none() {
        gen.stop();
        return Err(LabError::Other(
            "tandem-gen did not end within 10 s of SIGINT".into(),
        ));
    }
    json_lines(&gen.stdout())
        .into_iter()
        .rev()
        .find(|v| v.get("sent").is_some())
        .ok_or_else(|| LabError::Other(format!("tandem-gen gave no report: {}", gen.logs_tail(20))))
}

/// The part of a report's timeline (received frames per interval, both
/// directions) from `before_ms` before the wall-clock time `at_unix_ms`
/// (such as a kill) to `after_ms` after it: `{"bin_ms", "from_ms" (the
/// first interval's start relative to the event, <= 0), "rx_pps": [...]}`,
/// with the counts turned into frames per second. `None` when the report
/// has no timeline or the event is outside it.
pub fn timeline_around(
    report: &Value,
    at_unix_ms: f64,
    before_ms: u64,
    after_ms: u64,
) -> Option<Value> {
    let t = report.get("rx_timeline")?;
    let bin = t["bin_ms"].as_u64().filter(|&b| b > 0)?;
    let start = t["start_unix_ms"].as_u64()? as f64;
    let rx: Vec<u64> = t["rx"]
        .as_array()?
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    let at = at_unix_ms - start;
    if at < 0.0 || at >= (rx.len() as u64 * bin) as f64 {
        return None;
    }
    let at_bin = (at / bin as f64) as u64;
    let first = at_bin.saturating_sub(before_ms / bin);
    let last = (at_bin + after_ms / bin).min(rx.len() as u64 - 1);
    let per_s = 1000.0 / bin as f64;
    let pps: Vec<u64> = rx[first as usize..=last as usize]
        .iter()
        .map(|&n| (n as f64 * per_s).round() as u64)
        .collect();
    let from_ms = (first * bin) as f64 - at;
    Some(serde_json::json!({
        "bin_ms": bin,
        "from_ms": (from_ms * 10.0).round() / 10.0,
        "rx_pps": pps,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_timeline_around_an_event_is_cut_and_placed_relative_to_it() {
        let r = json!({"rx_timeline": {"bin_ms": 10, "start_unix_ms": 1000,
            "rx": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]}});
        // The event at 1045 ms: in the 5th interval (index 4).
        let t = timeline_around(&r, 1045.0, 20, 30).unwrap();
        assert_eq!(t["bin_ms"], 10);
        assert_eq!(t["from_ms"], -25.0);
        assert_eq!(t["rx_pps"], json!([300, 400, 500, 600, 700, 800]));
        // Cut at both ends of the timeline.
        let t = timeline_around(&r, 1005.0, 100, 1000).unwrap();
        assert_eq!(t["from_ms"], -5.0);
        assert_eq!(t["rx_pps"].as_array().unwrap().len(), 10);
        assert!(timeline_around(&r, 999.0, 10, 10).is_none());
        assert!(timeline_around(&r, 1100.0, 10, 10).is_none());
        assert!(timeline_around(&json!({}), 1005.0, 10, 10).is_none());
    }
}
