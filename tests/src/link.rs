//! Links: veth pairs created directly in their namespaces, Linux bridges in
//! a switch namespace, addresses, routes and link state.

use std::net::Ipv4Addr;

use serde_json::Value;

use crate::error::{LabError, Result};
use crate::netns::Netns;

/// Parses `ip` (with or without a `/len`) and checks it lies in the lab's
/// 198.18.0.0/15; anything else is [`LabError::ForbiddenAddress`].
pub fn check_lab_addr(ip: &str) -> Result<Ipv4Addr> {
    let bare = ip.split('/').next().unwrap_or(ip);
    let a: Ipv4Addr = bare
        .parse()
        .map_err(|_| LabError::ForbiddenAddress(ip.to_string()))?;
    let o = a.octets();
    if o[0] == 198 && (o[1] == 18 || o[1] == 19) {
        Ok(a)
    } else {
        Err(LabError::ForbiddenAddress(ip.to_string()))
    }
}

fn check_ifname(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 15 || name.contains(['/', ' ']) {
        Err(LabError::Other(format!(
            "bad interface name {name:?} (1-15 characters, no '/' or space)"
        )))
    } else {
        Ok(())
    }
}

/// Creates a veth pair with one end `a_dev` in `a` and the other `b_dev`
/// in `b`, both directly (`ip link add A netns NSA type veth peer name B
/// netns NSB`), so nothing ever appears in the root namespace. Both ends
/// are left down.
pub fn veth(a: &Netns, a_dev: &str, b: &Netns, b_dev: &str) -> Result<()> {
    check_ifname(a_dev)?;
    check_ifname(b_dev)?;
    crate::cmd::run_root(&[
        "ip",
        "link",
        "add",
        a_dev,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        b_dev,
        "netns",
        b.name(),
    ])
    .map(|_| ())
}

/// Creates a Linux bridge `name` (STP off, so ports forward at once) in
/// `switch` and sets it up. Bridges never live in the root namespace.
pub fn bridge(switch: &Netns, name: &str) -> Result<()> {
    check_ifname(name)?;
    switch.run(&[
        "ip",
        "link",
        "add",
        name,
        "type",
        "bridge",
        "stp_state",
        "0",
        "forward_delay",
        "0",
    ])?;
    set_up(switch, name)
}

/// Enslaves `dev` to `bridge` (both in `switch`) and sets `dev` up.
pub fn attach(switch: &Netns, bridge: &str, dev: &str) -> Result<()> {
    switch.run(&["ip", "link", "set", "dev", dev, "master", bridge])?;
    set_up(switch, dev)
}

/// Sets `dev` in `ns` up.
pub fn set_up(ns: &Netns, dev: &str) -> Result<()> {
    set_link(ns, dev, true)
}

/// Sets `dev` in `ns` down (a cut cable, for failover tests).
pub fn set_down(ns: &Netns, dev: &str) -> Result<()> {
    set_link(ns, dev, false)
}

/// Sets `dev` in `ns` up or down.
pub fn set_link(ns: &Netns, dev: &str, up: bool) -> Result<()> {
    ns.run(&[
        "ip",
        "link",
        "set",
        "dev",
        dev,
        if up { "up" } else { "down" },
    ])
    .map(|_| ())
}

/// Adds the address `cidr` (for instance "198.18.1.10/24") to `dev`;
/// refuses addresses outside 198.18.0.0/15.
pub fn add_addr(ns: &Netns, dev: &str, cidr: &str) -> Result<()> {
    check_lab_addr(cidr)?;
    ns.run(&["ip", "addr", "add", cidr, "dev", dev]).map(|_| ())
}

/// Sets the default route of `ns` via `gw` (must be a lab address).
pub fn default_route(ns: &Netns, gw: &str) -> Result<()> {
    check_lab_addr(gw)?;
    ns.run(&["ip", "route", "add", "default", "via", gw])
        .map(|_| ())
}

/// Turns off transmit checksum offload (and so TSO) on `dev`: af_packet
/// would forward the partial checksums of a Linux host as they are.
pub fn tx_offload_off(ns: &Netns, dev: &str) -> Result<()> {
    ns.run(&["ethtool", "-K", dev, "tx", "off"]).map(|_| ())
}

/// Turns GRO off on `dev` (the veth default, made explicit): GRO frames
/// bigger than af_packet's frame size collapse throughput.
pub fn gro_off(ns: &Netns, dev: &str) -> Result<()> {
    ns.run(&["ethtool", "-K", dev, "gro", "off"]).map(|_| ())
}

/// Disables IPv6 on one interface.
pub fn ipv6_off(ns: &Netns, dev: &str) -> Result<()> {
    ns.sysctl(&format!("net.ipv6.conf.{dev}.disable_ipv6"), "1")
}

/// True if `dev` in `ns` has carrier (sysfs `carrier`).
pub fn carrier(ns: &Netns, dev: &str) -> Result<bool> {
    let out = ns.exec(&["cat", &format!("/sys/class/net/{dev}/carrier")])?;
    Ok(out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "1")
}

/// Kernel counters of one interface (`ip -s -j link show`): kernel-side
/// drops do not show in DPDK's statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Received packets.
    pub rx_packets: u64,
    /// Received bytes.
    pub rx_bytes: u64,
    /// Packets dropped on receive.
    pub rx_dropped: u64,
    /// Transmitted packets.
    pub tx_packets: u64,
    /// Transmitted bytes.
    pub tx_bytes: u64,
    /// Packets dropped on transmit.
    pub tx_dropped: u64,
}

/// Reads the kernel counters of `dev` in `ns`.
pub fn link_stats(ns: &Netns, dev: &str) -> Result<LinkStats> {
    let s = ns.run(&["ip", "-s", "-j", "link", "show", "dev", dev])?;
    let v: Value = serde_json::from_str(&s).map_err(|e| LabError::Parse {
        what: "ip -s -j link".into(),
        detail: e.to_string(),
    })?;
    let st = &v[0]["stats64"];
    let g = |dir: &str, k: &str| st[dir][k].as_u64().unwrap_or(0);
    Ok(LinkStats {
        rx_packets: g("rx", "packets"),
        rx_bytes: g("rx", "bytes"),
        rx_dropped: g("rx", "dropped"),
        tx_packets: g("tx", "packets"),
        tx_bytes: g("tx", "bytes"),
        tx_dropped: g("tx", "dropped"),
    })
}
