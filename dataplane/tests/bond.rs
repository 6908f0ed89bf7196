//! Link aggregates on DPDK's bonding PMD over af_packet ports on veth pairs
//! in a private network namespace: two 802.3ad bonds negotiate LACP with
//! each other, pass frames over both members, lose one member and keep
//! passing frames on the other; two active-backup bonds fail over when the
//! primary's carrier drops. One EAL per process, so everything runs in a
//! single test (as root: it creates a namespace and veths).

use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_dataplane::dpdk::{
    bond_follow_carriers, bond_info, lacp_member, port_allmulticast, port_counters,
    port_kernel_carrier, port_kernel_interface, set_bond_lacp_timers, set_promiscuous, BondMode,
    Eal, LacpTimers, Mbuf, Mempool, Port, PortSetup, RxQueue, TxQueue,
};

/// A network namespace with veth pairs, deleted when dropped (also when the
/// test panics). What runs inside ends with the process.
struct Netns {
    name: String,
}

impl Netns {
    fn create(name: &str) -> Netns {
        // A namespace left over by a killed earlier run has the same name.
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(std::process::Stdio::null())
            .status();
        let ok = Command::new("ip")
            .args(["netns", "add", name])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip netns add {name} (the test needs root)");
        Netns { name: name.into() }
    }

    fn ip(&self, args: &[&str]) {
        let out = Command::new("ip")
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .output()
            .expect("ip runs");
        assert!(
            out.status.success(),
            "ip -n {} {args:?}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn veth(&self, a: &str, b: &str) {
        self.ip(&["link", "add", a, "type", "veth", "peer", "name", b]);
        self.ip(&["link", "set", a, "up"]);
        self.ip(&["link", "set", b, "up"]);
    }

    /// Moves the calling thread into the namespace (threads it starts
    /// afterwards, such as the EAL's, are in it too).
    fn enter(&self) {
        let f = std::fs::File::open(format!("/run/netns/{}", self.name)).expect("netns file");
        // SAFETY: a valid namespace descriptor; setns changes the network
        // namespace of this thread only.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

const ETHERTYPE: [u8; 2] = [0x88, 0xb5]; // IEEE local experimental
const MAGIC: &[u8; 8] = b"tndmbond";

/// A bond opened as a port with its one queue pair.
struct Bond {
    port: Port,
    rx: RxQueue,
    tx: TxQueue,
    members: Vec<u16>,
}

impl Bond {
    fn open(eal: &Eal, name: &str, pool: &Arc<Mempool>) -> Bond {
        let setup = PortSetup {
            queues: 1,
            rx_descriptors: 512,
            tx_descriptors: 512,
            mtu: 0,
        };
        let port = Port::open(eal, name, &setup, pool.clone())
            .unwrap_or_else(|e| panic!("{name} opens: {e}"));
        assert_eq!(port.info().driver, "net_bonding");
        let (mut rx, mut tx) = port.take_queues().expect("queues");
        let members = bond_info(port.id())
            .expect("bond info")
            .expect("a bond")
            .members;
        Bond {
            rx: rx.remove(0),
            tx: tx.remove(0),
            port,
            members,
        }
    }

    /// Receives and drops what arrived, kicks the transmit path (LACPDUs);
    /// returns how many test frames with `tag` arrived.
    fn pump(&mut self, tag: u8) -> usize {
        let mut got: Vec<Mbuf> = Vec::new();
        self.rx.rx_burst(&mut got, 64);
        self.tx.kick();
        got.iter()
            .filter(|m| {
                let d = m.data();
                d.len() >= 23 && d[12..14] == ETHERTYPE && &d[14..22] == MAGIC && d[22] == tag
            })
            .count()
    }
}

fn pump_all(bonds: &mut [&mut Bond]) {
    for b in bonds.iter_mut() {
        b.pump(0);
    }
}

/// Sends `n` test frames from `from` to `to` (destination: `to`'s MAC;
/// sources vary so the 802.3ad hash spreads them over the members) and
/// returns how many `to` received within `wait`, pumping `others`.
fn send_and_count(
    pool: &Mempool,
    from: &mut Bond,
    to: &mut Bond,
    n: usize,
    tag: u8,
    wait: Duration,
) -> usize {
    let dst = to.port.mac().expect("mac");
    send_frames(pool, from, to, n, tag, dst, wait)
}

const BROADCAST: [u8; 6] = [0xff; 6];

/// As `send_and_count`, to destination `dst`.
fn send_frames(
    pool: &Mempool,
    from: &mut Bond,
    to: &mut Bond,
    n: usize,
    tag: u8,
    dst: [u8; 6],
    wait: Duration,
) -> usize {
    let mut burst = Vec::new();
    for i in 0..n {
        let mut m = pool.alloc().expect("mbuf");
        assert!(m.set_len(64));
        let d = m.data_mut();
        d.fill(0);
        d[..6].copy_from_slice(&dst);
        d[6..12].copy_from_slice(&[0x02, 0x54, 0x4e, 0, 0, (i % 16) as u8]);
        d[12..14].copy_from_slice(&ETHERTYPE);
        d[14..22].copy_from_slice(MAGIC);
        d[22] = tag;
        d[23..27].copy_from_slice(&(i as u32).to_be_bytes());
        burst.push(m);
    }
    let deadline = Instant::now() + wait;
    let mut got = 0;
    while !burst.is_empty() && Instant::now() < deadline {
        from.tx.tx_burst(&mut burst);
        got += to.pump(tag);
        from.pump(0);
    }
    drop(burst);
    while got < n && Instant::now() < deadline {
        got += to.pump(tag);
        from.pump(0);
        std::thread::sleep(Duration::from_micros(200));
    }
    got
}

/// Pumps the bonds until `done` holds or `limit` passes; returns the time
/// it took, or None.
fn wait_until(
    bonds: &mut [&mut Bond],
    limit: Duration,
    mut done: impl FnMut() -> bool,
) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        pump_all(bonds);
        if done() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    None
}

/// The members of a bond that carry traffic (by port id: the closures of
/// `wait_until` cannot borrow the bonds it pumps).
fn active(bond: u16) -> Vec<u16> {
    bond_info(bond).expect("info").expect("bond").active
}

fn distributing(bond: u16, member: u16) -> bool {
    lacp_member(bond, member)
        .expect("lacp state")
        .is_some_and(|l| l.distributing())
}

fn rx_of(port: u16) -> u64 {
    port_counters(port).expect("member counters").rx_packets
}

#[test]
fn lacp_and_active_backup_bonds_survive_the_loss_of_a_member() {
    let ns = Netns::create(&format!("tandem-bond-{}", std::process::id()));
    let _ = Command::new("ip")
        .args(["netns", "exec", &ns.name, "sysctl", "-qw"])
        .args([
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ])
        .status();
    for (a, b) in [("a0", "b0"), ("a1", "b1"), ("c0", "d0"), ("c1", "d1")] {
        ns.veth(a, b);
    }
    ns.enter();

    let mut args: Vec<String> = [
        "tandem-bond-test",
        "--no-huge",
        "--no-shconf",
        "-m",
        "256",
        "-l",
        "0",
        "--no-pci",
        "--no-telemetry",
        "--log-level=warning",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (i, iface) in ["a0", "a1", "b0", "b1", "c0", "c1", "d0", "d1"]
        .iter()
        .enumerate()
    {
        args.push(format!("--vdev=net_af_packet{i},iface={iface}"));
    }
    for (i, (mode, m0, m1)) in [(4, 0, 1), (4, 2, 3), (1, 4, 5), (1, 6, 7)]
        .iter()
        .enumerate()
    {
        args.push(format!(
            "--vdev=net_bonding{i},mode={mode},slave=net_af_packet{m0},slave=net_af_packet{m1}"
        ));
    }
    let eal = Eal::init(&args).expect("EAL with af_packet ports and four bonds");
    let pool = Mempool::new(&eal, "bond_pool", 8191, 64).expect("mempool");

    // ---- 802.3ad ----
    let mut a = Bond::open(&eal, "net_bonding0", &pool);
    let mut b = Bond::open(&eal, "net_bonding1", &pool);
    let ia = bond_info(a.port.id()).unwrap().unwrap();
    assert_eq!(ia.mode, BondMode::Lacp);
    assert_eq!(ia.members.len(), 2);
    assert_eq!(
        port_kernel_interface(ia.members[1]).as_deref(),
        Some("a1"),
        "a member's kernel interface is found by its ifindex"
    );
    assert_eq!(port_kernel_carrier(ia.members[1]), Some(true));
    assert_eq!(bond_info(member_port(&eal)).ok(), Some(None));
    for bond in [&a, &b] {
        set_bond_lacp_timers(bond.port.id(), &LacpTimers::FAST).expect("fast LACP timers");
    }

    let (pa, pb) = (a.port.id(), b.port.id());
    let negotiated = wait_until(&mut [&mut a, &mut b], Duration::from_secs(20), || {
        active(pa).len() == 2 && active(pb).len() == 2
    });
    let negotiated = negotiated.expect("LACP puts both members of both bonds in distribution");
    eprintln!("LACP: both members distributing after {negotiated:?}");

    let b_rx: Vec<u64> = b.members.iter().map(|&m| rx_of(m)).collect();
    let n = 256;
    let got = send_and_count(&pool, &mut a, &mut b, n, 1, Duration::from_secs(3));
    assert_eq!(got, n, "every frame crosses the aggregate");
    let per_member: Vec<u64> = b
        .members
        .iter()
        .zip(&b_rx)
        .map(|(&m, before)| rx_of(m) - before)
        .collect();
    assert!(
        per_member.iter().all(|&c| c > 0),
        "the frames were spread over both members: {per_member:?}"
    );
    let got = send_and_count(&pool, &mut b, &mut a, n, 2, Duration::from_secs(3));
    assert_eq!(got, n, "and back");

    // Broadcast (ARP) over af_packet members, which cannot do allmulticast:
    // dropped by the 802.3ad receive path until the bond is promiscuous.
    assert!(
        !port_allmulticast(pb),
        "af_packet members refuse allmulticast"
    );
    let bcast = send_frames(
        &pool,
        &mut a,
        &mut b,
        32,
        9,
        BROADCAST,
        Duration::from_millis(300),
    );
    assert_eq!(
        bcast, 0,
        "an 802.3ad bond drops broadcasts unless promiscuous"
    );
    set_promiscuous(pb, true).expect("promiscuous bond");
    assert!(port_allmulticast(pb));
    let bcast = send_frames(
        &pool,
        &mut a,
        &mut b,
        32,
        10,
        BROADCAST,
        Duration::from_secs(3),
    );
    assert_eq!(bcast, 32, "a promiscuous 802.3ad bond receives broadcasts");

    // Cut one member: a1 down takes b1's carrier too.
    let (a0, a1, b0, b1) = (a.members[0], a.members[1], b.members[0], b.members[1]);
    let cut = Instant::now();
    ns.ip(&["link", "set", "a1", "down"]);
    let seen = wait_until(&mut [&mut a, &mut b], Duration::from_secs(2), || {
        active(pa) == [a0] && active(pb) == [b0]
    })
    .expect("the cut member leaves `active` on both ends as soon as the carrier drops");
    eprintln!("LACP: carrier loss visible in bond_info after {seen:?}");
    let info = bond_info(pa).unwrap().unwrap();
    assert_eq!(info.up, [a0]);
    assert_eq!(info.members.len(), 2, "the cut member stays a member");

    let expired = wait_until(&mut [&mut a, &mut b], Duration::from_secs(15), || {
        !distributing(pa, a1) && !distributing(pb, b1)
    })
    .expect("LACP stops distributing on the cut member once the partner is silent");
    let expired_at = cut.elapsed();
    eprintln!("LACP: bonds stop distributing on the cut member {expired_at:?} after the cut (waited {expired:?})");
    let got = send_and_count(&pool, &mut a, &mut b, n, 3, Duration::from_secs(3));
    assert_eq!(got, n, "the aggregate passes every frame on one member");
    let got = send_and_count(&pool, &mut b, &mut a, n, 4, Duration::from_secs(3));
    assert_eq!(got, n, "both ways");

    // Bring it back: LACP takes the member into distribution again.
    ns.ip(&["link", "set", "a1", "up"]);
    let back = wait_until(&mut [&mut a, &mut b], Duration::from_secs(20), || {
        active(pa).len() == 2 && active(pb).len() == 2
    })
    .expect("the restored member distributes again");
    eprintln!("LACP: restored member distributing after {back:?}");

    // ---- active-backup ----
    let mut c = Bond::open(&eal, "net_bonding2", &pool);
    let mut d = Bond::open(&eal, "net_bonding3", &pool);
    let (pc, pd) = (c.port.id(), d.port.id());
    // The bond's link monitor (every 10 ms) takes the members in.
    let (c0, d0) = (c.members[0], d.members[0]);
    wait_until(&mut [&mut c, &mut d], Duration::from_secs(2), || {
        active(pc) == [c0] && active(pd) == [d0]
    })
    .expect("the first member is the active one");
    let ic = bond_info(pc).unwrap().unwrap();
    assert_eq!(ic.mode, BondMode::ActiveBackup);
    assert_eq!(ic.primary, Some(c.members[0]));
    assert_eq!(ic.active, [c.members[0]]);
    assert_eq!(ic.up, c.members);
    let d_rx: Vec<u64> = d.members.iter().map(|&m| rx_of(m)).collect();
    let got = send_and_count(&pool, &mut c, &mut d, n, 5, Duration::from_secs(3));
    assert_eq!(got, n, "frames cross the active-backup pair");
    assert_eq!(rx_of(d.members[0]) - d_rx[0], n as u64, "on the primary");
    assert_eq!(rx_of(d.members[1]), d_rx[1], "nothing on the backup");

    ns.ip(&["link", "set", "c0", "down"]);
    let lost = send_and_count(&pool, &mut c, &mut d, 32, 6, Duration::from_millis(300));
    assert_eq!(
        lost, 0,
        "with the primary cut and nothing told, frames are lost"
    );
    let cut = Instant::now();
    assert_eq!(
        bond_follow_carriers(c.port.id()).unwrap(),
        Some(c.members[1])
    );
    assert_eq!(
        bond_follow_carriers(d.port.id()).unwrap(),
        Some(d.members[1])
    );
    eprintln!(
        "active-backup: both ends failed over in {:?}",
        cut.elapsed()
    );
    assert_eq!(bond_follow_carriers(c.port.id()).unwrap(), None, "once");
    assert_eq!(active(c.port.id()), [c.members[1]]);
    assert_eq!(bond_info(c.port.id()).unwrap().unwrap().up, [c.members[1]]);
    let got = send_and_count(&pool, &mut c, &mut d, n, 7, Duration::from_secs(3));
    assert_eq!(got, n, "the backup carries everything");
    let got = send_and_count(&pool, &mut d, &mut c, n, 8, Duration::from_secs(3));
    assert_eq!(got, n, "both ways");

    ns.ip(&["link", "set", "c0", "up"]);
    assert_eq!(bond_follow_carriers(c.port.id()).unwrap(), None);
    assert_eq!(
        active(c.port.id()),
        [c.members[1]],
        "no return to the old primary"
    );
    assert_eq!(bond_info(c.port.id()).unwrap().unwrap().up.len(), 2);
    assert!(
        bond_follow_carriers(member_port(&eal)).is_err(),
        "not a bond"
    );
}

/// A member af_packet port (not a bond).
fn member_port(eal: &Eal) -> u16 {
    eal.port_by_name("net_af_packet0").expect("member port")
}
