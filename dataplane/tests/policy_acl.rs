//! The ACL backend of the policy against the linear reference, on the real
//! librte_acl: one EAL for the whole test binary (no hugepages), random
//! policies and queries from fixed seeds, bounded in size and time.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, OnceLock};

use tandem_config::policy::{
    FilterRule, NatKind, NatRule, Object, PolicyConfig, Proto, SnatAddress,
};
use tandem_dataplane::dpdk::Eal;
use tandem_dataplane::policy::{Action, Backend, Policy, Query, Verdict};

fn eal() -> &'static Eal {
    static EAL: OnceLock<Eal> = OnceLock::new();
    EAL.get_or_init(|| {
        let args: Vec<String> = [
            "tandem-policy-test",
            "--no-huge",
            "--no-shconf",
            "-m",
            "512",
            "-l",
            "0",
            "--no-pci",
            "--no-telemetry",
            "--log-level=warning",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        Eal::init(&args).expect("EAL init without hugepages")
    })
}

/// xorshift64*: reproducible from its seed, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const IFACES: [(&str, u16); 3] = [("in", 0), ("out", 1), ("ha", 2)];

fn ifaces() -> Vec<(String, u16)> {
    IFACES.iter().map(|&(n, p)| (n.to_owned(), p)).collect()
}

/// An address in 198.18.0.0/22, where the random rules and queries live.
fn addr(rng: &mut Rng) -> Ipv4Addr {
    Ipv4Addr::from(0xc612_0000 + rng.below(1024) as u32)
}

fn addr_entry(rng: &mut Rng, objects: &[String]) -> String {
    match rng.below(7) {
        0 => "any".into(),
        1 => addr(rng).to_string(),
        2 | 3 => {
            let len = [22u8, 23, 24, 26, 28, 30][rng.below(6) as usize];
            let a = u32::from(addr(rng)) & (u32::MAX << (32 - len));
            format!("{}/{len}", Ipv4Addr::from(a))
        }
        4 => {
            let a = u32::from(addr(rng));
            let b = a + rng.below(300) as u32;
            format!("{}-{}", Ipv4Addr::from(a), Ipv4Addr::from(b))
        }
        _ => objects[rng.below(objects.len() as u64) as usize].clone(),
    }
}

fn ports(rng: &mut Rng) -> Vec<String> {
    (0..rng.below(3))
        .map(|_| {
            let a = rng.below(100) as u16;
            if rng.chance(50) {
                a.to_string()
            } else {
                format!("{a}-{}", a + rng.below(40) as u16)
            }
        })
        .collect()
}

fn iface(rng: &mut Rng) -> Option<String> {
    rng.chance(25)
        .then(|| IFACES[rng.below(3) as usize].0.to_owned())
}

fn random_policy(rng: &mut Rng, rules: usize) -> PolicyConfig {
    let mut objects = BTreeMap::new();
    objects.insert("h1".to_owned(), Object::Host(addr(rng)));
    objects.insert(
        "n1".to_owned(),
        Object::Network("198.18.1.0/24".parse().unwrap()),
    );
    objects.insert(
        "r1".to_owned(),
        Object::Range("198.18.2.5-198.18.2.77".into()),
    );
    objects.insert(
        "g1".to_owned(),
        Object::Group(vec!["h1".into(), "r1".into(), "198.18.3.128/25".into()]),
    );
    objects.insert(
        "g2".to_owned(),
        Object::Group(vec!["g1".into(), "n1".into()]),
    );
    let names: Vec<String> = objects.keys().cloned().collect();
    let list = |rng: &mut Rng| -> Vec<String> {
        (0..rng.below(3)).map(|_| addr_entry(rng, &names)).collect()
    };
    let protos = [Proto::Tcp, Proto::Udp, Proto::Icmp, Proto::Gre, Proto::Sctp];
    let mut filter = Vec::new();
    for _ in 0..rules {
        let proto = rng
            .chance(80)
            .then(|| protos[rng.below(protos.len() as u64) as usize]);
        let with_ports = proto.is_some_and(Proto::has_ports);
        filter.push(FilterRule {
            name: None,
            action: [Action::Pass, Action::Block, Action::Reject][rng.below(3) as usize],
            in_interface: iface(rng),
            out_interface: iface(rng),
            from: list(rng),
            to: list(rng),
            proto,
            src_ports: if with_ports && rng.chance(20) {
                ports(rng)
            } else {
                Vec::new()
            },
            dst_ports: if with_ports { ports(rng) } else { Vec::new() },
            icmp_types: if proto == Some(Proto::Icmp) {
                (0..rng.below(3)).map(|_| rng.below(12) as u8).collect()
            } else {
                Vec::new()
            },
            log: rng.chance(30),
            sync: rng.chance(70),
            enabled: rng.chance(90),
        });
    }
    let mut nat = Vec::new();
    for _ in 0..rng.below(8) {
        let dnat = rng.chance(50);
        let proto = rng.chance(70).then_some(Proto::Tcp);
        nat.push(NatRule {
            name: None,
            kind: if dnat {
                NatKind::Destination
            } else {
                NatKind::Source
            },
            in_interface: iface(rng),
            out_interface: if dnat { None } else { Some("out".into()) },
            from: list(rng),
            to: list(rng),
            proto,
            src_ports: Vec::new(),
            dst_ports: if proto.is_some() {
                ports(rng)
            } else {
                Vec::new()
            },
            to_address: (!dnat).then(|| match rng.below(3) {
                0 => SnatAddress::Interface,
                1 => SnatAddress::Address(addr(rng)),
                _ => SnatAddress::Pool("198.18.9.1-198.18.9.9".into()),
            }),
            translate_to: dnat.then(|| addr(rng)),
            translate_port: (dnat && proto.is_some() && rng.chance(50))
                .then(|| 1 + rng.below(1000) as u16),
            enabled: rng.chance(90),
        });
    }
    PolicyConfig {
        objects,
        rules: filter,
        nat,
        default_action: if rng.chance(50) {
            Action::Pass
        } else {
            Action::Block
        },
    }
}

fn random_query(rng: &mut Rng) -> Query {
    let proto = [6u8, 17, 1, 47, 132, 50][rng.below(6) as usize];
    Query {
        in_port: rng.below(3) as u16,
        out_port: rng.below(3) as u16,
        src: addr(rng),
        dst: addr(rng),
        proto,
        sport: rng.below(150) as u16,
        dport: rng.below(150) as u16,
        icmp_type: rng.chance(90).then(|| rng.below(14) as u8),
    }
}

fn assert_same(acl: &Policy, linear: &Policy, qs: &[Query], what: &str) {
    let mut burst = vec![Verdict::default(); qs.len()];
    acl.classify_burst(qs, &mut burst);
    for (q, b) in qs.iter().zip(&burst) {
        let want = linear.classify(q);
        assert_eq!(acl.classify(q), want, "{what}: classify {q:?}");
        assert_eq!(*b, want, "{what}: classify_burst {q:?}");
        assert_eq!(
            acl.nat_destination(q),
            linear.nat_destination(q),
            "{what}: nat_destination {q:?}"
        );
        assert_eq!(
            acl.nat_source(q),
            linear.nat_source(q),
            "{what}: nat_source {q:?}"
        );
    }
}

fn both(cfg: &PolicyConfig) -> (Policy, Policy) {
    eal();
    let acl = Policy::compile_with(cfg, &ifaces(), Backend::Acl).unwrap_or_else(|e| panic!("{e}"));
    let linear = Policy::compile_with(cfg, &ifaces(), Backend::Linear).unwrap();
    assert_eq!(acl.backend(), Backend::Acl);
    (acl, linear)
}

#[test]
fn acl_agrees_with_linear_on_random_policies() {
    let mut rng = Rng(0x7a6d_656d_2026);
    for round in 0..24 {
        let rules = [0, 1, 5, 40, 200][round % 5];
        let cfg = random_policy(&mut rng, rules);
        let (acl, linear) = both(&cfg);
        let qs: Vec<Query> = (0..1500).map(|_| random_query(&mut rng)).collect();
        assert_same(
            &acl,
            &linear,
            &qs,
            &format!("round {round} ({rules} rules)"),
        );
    }
}

#[test]
fn acl_agrees_with_linear_on_the_example_policy() {
    let (name, text) = tandem_config::policy::EXAMPLE;
    let cfg = tandem_config::policy::parse(text, name, None).unwrap();
    let (acl, linear) = both(&cfg);
    let mut rng = Rng(42);
    let qs: Vec<Query> = (0..3000)
        .map(|_| {
            let mut q = random_query(&mut rng);
            // Aim at the example's networks and services.
            q.dport = [80, 443, 8050, 8080, 23, 53, 22][rng.below(7) as usize];
            q
        })
        .collect();
    assert_same(&acl, &linear, &qs, "example");
}

#[test]
fn acl_builds_ten_thousand_rules_and_is_shared_across_threads() {
    let mut rng = Rng(7);
    let cfg = random_policy(&mut rng, 10_000);
    let (acl, linear) = both(&cfg);
    let stats = acl.stats();
    assert_eq!(stats.backend, Backend::Acl);
    assert!(stats.entries >= stats.rules, "{stats:?}");
    let acl = Arc::new(acl);
    let qs: Arc<Vec<Query>> = Arc::new((0..2000).map(|_| random_query(&mut rng)).collect());
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (acl, qs) = (acl.clone(), qs.clone());
            std::thread::spawn(move || qs.iter().map(|q| acl.classify(q)).collect::<Vec<_>>())
        })
        .collect();
    let want: Vec<Verdict> = qs.iter().map(|q| linear.classify(q)).collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), want);
    }
}

#[test]
fn empty_acl_policy_gives_the_default_action() {
    let cfg = PolicyConfig {
        objects: BTreeMap::new(),
        rules: Vec::new(),
        nat: Vec::new(),
        default_action: Action::Pass,
    };
    let (acl, _) = both(&cfg);
    let mut rng = Rng(3);
    let q = random_query(&mut rng);
    assert_eq!(acl.classify(&q).action, Action::Pass);
    assert_eq!(acl.nat_source(&q), None);
}
