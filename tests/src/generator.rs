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

/// Starts tandem-gen in `lab`'s generator host: `flows` UDP flows
/// (198.18.1.100.. to 198.18.2.100.., port 9) both ways at `rate` frames
/// per second each, after a warm-up of `warmup_s`, for at most 300 s
/// (end it with [`report`]). `tag` names the process and its DPDK files.
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
