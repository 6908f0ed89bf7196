//! Policy classification benchmark: a 10-rule and an N-rule (default
//! 10,000) policy of the same kinds of rules, classified on the ACL backend
//! (librte_acl) with random queries, one at a time and in bursts of 32 and
//! 64; the linear reference on a sample for contrast. Prints a table and
//! one JSON line.
//!
//! ```text
//! bench-policy [--rules 10000] [--queries 1000000] [--seed 1] [--budget-secs 120]
//! ```

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use tandem_config::policy::{FilterRule, PolicyConfig, Proto};
use tandem_dataplane::dpdk::Eal;
use tandem_dataplane::policy::{Action, Backend, Policy, Query, Verdict};

/// Benchmark the filter policy classifier.
#[derive(Parser, Debug)]
struct Args {
    /// Rules of the large policy (the small one has 10).
    #[arg(long, default_value_t = 10_000)]
    rules: usize,
    /// Random queries per policy.
    #[arg(long, default_value_t = 1_000_000)]
    queries: usize,
    /// Seed of the rule and query generator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Stop measuring a pass after this many seconds.
    #[arg(long, default_value_t = 120)]
    budget_secs: u64,
}

/// xorshift64*.
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
}

const KINDS: usize = 10;
const IFACES: [(&str, u16); 2] = [("in", 0), ("out", 1)];

/// A /len network drawn from the 10/8 block as plain numbers: the
/// benchmark only classifies queries, it sends no traffic anywhere.
fn net(rng: &mut Rng, len: u8) -> String {
    let a = (0x0a00_0000 | (rng.next() as u32 & 0x00ff_ffff)) & (u32::MAX << (32 - len));
    if len == 32 {
        Ipv4Addr::from(a).to_string()
    } else {
        format!("{}/{len}", Ipv4Addr::from(a))
    }
}

/// Rule `j` of a policy: kind `j % 10`, with its own addresses. Kinds mix
/// /16, /24, /32 and any; single ports, lists, ranges and any; TCP, UDP,
/// ICMP, GRE, ESP and any protocol; interfaces; all three actions.
fn rule(rng: &mut Rng, j: usize) -> FilterRule {
    let mut r = FilterRule {
        name: None,
        action: Action::Pass,
        in_interface: None,
        out_interface: None,
        from: Vec::new(),
        to: Vec::new(),
        proto: None,
        src_ports: Vec::new(),
        dst_ports: Vec::new(),
        icmp_types: Vec::new(),
        log: false,
        sync: true,
        enabled: true,
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    match j % KINDS {
        0 => {
            r.from = vec![net(rng, 16)];
            r.to = vec![net(rng, 32)];
            r.proto = Some(Proto::Tcp);
            r.dst_ports = s(&[["80", "443"][rng.below(2) as usize]]);
        }
        1 => {
            r.to = vec![net(rng, 24)];
            r.proto = Some(Proto::Tcp);
            let lo = 1024 + rng.below(50_000) as u16;
            r.dst_ports = vec![format!("{lo}-{}", lo + 100)];
        }
        2 => {
            r.from = vec![net(rng, 24)];
            r.to = vec![net(rng, 32)];
            r.proto = Some(Proto::Udp);
            r.dst_ports = s(&["53"]);
        }
        3 => {
            r.from = vec![net(rng, 16)];
            r.proto = Some(Proto::Icmp);
            r.icmp_types = vec![8];
        }
        4 => {
            r.from = vec![net(rng, 32)];
            r.to = vec![net(rng, 32)];
            r.proto = Some(Proto::Tcp);
            r.dst_ports = s(&["22", "3389"]);
        }
        5 => {
            r.to = vec![net(rng, 16)];
            r.proto = Some(Proto::Udp);
            r.dst_ports = s(&["10000-20000"]);
            r.in_interface = Some("in".into());
        }
        6 => {
            r.from = vec![net(rng, 32)];
            r.to = vec![net(rng, 32)];
            r.proto = Some(Proto::Gre);
        }
        7 => {
            r.from = vec![net(rng, 24)];
            r.to = vec![net(rng, 24)];
            r.proto = Some(Proto::Esp);
        }
        8 => {
            r.from = vec![net(rng, 32)];
            r.out_interface = Some("out".into());
            r.action = Action::Block;
        }
        _ => {
            r.from = vec![net(rng, 24)];
            r.to = vec![net(rng, 24)];
            r.proto = Some(Proto::Tcp);
            r.src_ports = s(&["1024-65535"]);
            r.dst_ports = s(&["25"]);
            r.action = Action::Reject;
        }
    }
    r
}

fn policy_config(rng: &mut Rng, rules: usize) -> PolicyConfig {
    PolicyConfig {
        objects: Default::default(),
        rules: (0..rules).map(|j| rule(rng, j)).collect(),
        nat: Vec::new(),
        default_action: Action::Block,
    }
}

/// An address inside an entry ("a.b.c.d" or "a.b.c.d/len"), or anywhere in
/// 10/8 for "any".
fn inside(rng: &mut Rng, list: &[String]) -> Ipv4Addr {
    let Some(e) = list.first() else {
        return Ipv4Addr::from(0x0a00_0000 | (rng.next() as u32 & 0x00ff_ffff));
    };
    let (a, len) = match e.split_once('/') {
        Some((a, l)) => (a.parse::<Ipv4Addr>().unwrap(), l.parse::<u32>().unwrap()),
        None => (e.parse().unwrap(), 32),
    };
    let host = if len == 32 {
        0
    } else {
        rng.next() as u32 & (u32::MAX >> len)
    };
    Ipv4Addr::from(u32::from(a) | host)
}

fn port_in(rng: &mut Rng, list: &[String]) -> u16 {
    match list.get(rng.below(list.len().max(1) as u64) as usize) {
        None => rng.below(65536) as u16,
        Some(p) => match p.split_once('-') {
            None => p.parse().unwrap(),
            Some((a, b)) => {
                let (a, b): (u16, u16) = (a.parse().unwrap(), b.parse().unwrap());
                a + rng.below(u64::from(b - a) + 1) as u16
            }
        },
    }
}

/// 70% of the queries aim at a random rule (so matches land all over the
/// policy), 30% are random.
fn queries(rng: &mut Rng, cfg: &PolicyConfig, n: usize) -> Vec<Query> {
    (0..n)
        .map(|_| {
            let aimed = rng.below(10) < 7;
            let r = &cfg.rules[rng.below(cfg.rules.len() as u64) as usize];
            let proto = match (aimed, r.proto) {
                (true, Some(p)) => p.number(),
                _ => [6u8, 17, 1, 47, 50][rng.below(5) as usize],
            };
            let (from, to): (&[String], &[String]) =
                if aimed { (&r.from, &r.to) } else { (&[], &[]) };
            Query {
                in_port: rng.below(2) as u16,
                out_port: rng.below(2) as u16,
                src: inside(rng, from),
                dst: inside(rng, to),
                proto,
                sport: if aimed {
                    port_in(rng, &r.src_ports)
                } else {
                    rng.below(65536) as u16
                },
                dport: if aimed {
                    port_in(rng, &r.dst_ports)
                } else {
                    rng.below(65536) as u16
                },
                icmp_type: Some(if aimed { 8 } else { rng.below(16) as u8 }),
            }
        })
        .collect()
}

/// Nanoseconds per classification, one at a time.
fn single(p: &Policy, qs: &[Query], budget: Duration) -> f64 {
    let start = Instant::now();
    let mut n = 0usize;
    for chunk in qs.chunks(4096) {
        for q in chunk {
            black_box(p.classify(black_box(q)));
        }
        n += chunk.len();
        if start.elapsed() > budget {
            break;
        }
    }
    start.elapsed().as_nanos() as f64 / n.max(1) as f64
}

/// Nanoseconds per classification in bursts of `burst`, and the p50/p99
/// of a burst's time.
fn bursts(p: &Policy, qs: &[Query], burst: usize, budget: Duration) -> (f64, u64, u64) {
    let mut out = vec![Verdict::default(); burst];
    let mut hist = Histogram::<u64>::new(3).expect("histogram");
    let start = Instant::now();
    let mut n = 0usize;
    for chunk in qs.chunks(burst) {
        let t = Instant::now();
        p.classify_burst(black_box(chunk), &mut out);
        black_box(&out);
        let _ = hist.record(t.elapsed().as_nanos() as u64);
        n += chunk.len();
        if n % 65536 < burst && start.elapsed() > budget {
            break;
        }
    }
    (
        start.elapsed().as_nanos() as f64 / n.max(1) as f64,
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
    )
}

struct Run {
    rules: usize,
    entries: usize,
    build_ms: f64,
    memory_bytes: u64,
    single_ns: f64,
    burst32_ns: f64,
    burst64_ns: f64,
    burst64_p50_ns: u64,
    burst64_p99_ns: u64,
    linear_ns: f64,
    matched_pct: f64,
}

fn run(rng: &mut Rng, rules: usize, nq: usize, budget: Duration) -> Run {
    let cfg = policy_config(rng, rules);
    let ifaces: Vec<(String, u16)> = IFACES.iter().map(|&(n, p)| (n.into(), p)).collect();
    let t = Instant::now();
    let acl = Policy::compile_with(&cfg, &ifaces, Backend::Acl)
        .unwrap_or_else(|e| panic!("compiling {rules} rules: {e}"));
    let build_ms = t.elapsed().as_secs_f64() * 1e3;
    let linear = Policy::compile_with(&cfg, &ifaces, Backend::Linear).expect("linear");
    let qs = queries(rng, &cfg, nq);
    // Both backends agree on a sample (the full cross-check is in the tests).
    let sample = &qs[..qs.len().min(2000)];
    let mut matched = 0;
    for q in sample {
        let v = acl.classify(q);
        assert_eq!(v, linear.classify(q), "backends disagree on {q:?}");
        matched += usize::from(v.rule != tandem_dataplane::policy::DEFAULT);
    }
    // Warm caches, then measure.
    single(&acl, &qs[..qs.len().min(100_000)], budget);
    let stats = acl.stats();
    let single_ns = single(&acl, &qs, budget);
    let (burst32_ns, _, _) = bursts(&acl, &qs, 32, budget);
    let (burst64_ns, p50, p99) = bursts(&acl, &qs, 64, budget);
    let linear_q = &qs[..qs
        .len()
        .min((20_000_000 / rules.max(1)).clamp(1000, 200_000))];
    let linear_ns = single(&linear, linear_q, budget);
    Run {
        rules,
        entries: stats.entries,
        build_ms,
        memory_bytes: stats.memory_bytes,
        single_ns,
        burst32_ns,
        burst64_ns,
        burst64_p50_ns: p50,
        burst64_p99_ns: p99,
        linear_ns,
        matched_pct: 100.0 * matched as f64 / sample.len().max(1) as f64,
    }
}

fn hugepages_free() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let free = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("HugePages_Free:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    if std::path::Path::new("/dev/hugepages").is_dir() {
        free
    } else {
        0
    }
}

fn main() {
    let args = Args::parse();
    let huge = hugepages_free() > 0;
    let mut eal_args: Vec<String> = vec![
        "bench-policy".into(),
        "-l".into(),
        "0".into(),
        "--no-pci".into(),
        "--no-telemetry".into(),
        "--log-level=warning".into(),
        format!("--file-prefix=bench-policy-{}", std::process::id()),
    ];
    if huge {
        eal_args.push("--in-memory".into());
    } else {
        eal_args.extend(["--no-huge", "--no-shconf", "-m", "2048"].map(String::from));
    }
    let memory = if huge {
        "hugepages (--in-memory)"
    } else {
        "no hugepages (--no-huge; mount hugetlbfs on /dev/hugepages for faster numbers)"
    };
    println!("EAL memory: {memory}");
    let _eal = Eal::init(&eal_args).unwrap_or_else(|e| panic!("{e}"));
    let budget = Duration::from_secs(args.budget_secs);
    let mut rng = Rng(args.seed.max(1));
    let small = run(&mut rng, KINDS, args.queries, budget);
    let large = run(&mut rng, args.rules.max(KINDS), args.queries, budget);

    println!(
        "{:>8} {:>9} {:>10} {:>10} {:>9} {:>9} {:>9} {:>10} {:>10} {:>11} {:>8}",
        "rules",
        "entries",
        "build ms",
        "mem KiB",
        "single",
        "burst32",
        "burst64",
        "b64 p50",
        "b64 p99",
        "linear",
        "matched"
    );
    for r in [&small, &large] {
        println!(
            "{:>8} {:>9} {:>10.1} {:>10} {:>7.1}ns {:>7.1}ns {:>7.1}ns {:>8}ns {:>8}ns {:>9.1}ns {:>7.1}%",
            r.rules,
            r.entries,
            r.build_ms,
            r.memory_bytes / 1024,
            r.single_ns,
            r.burst32_ns,
            r.burst64_ns,
            r.burst64_p50_ns,
            r.burst64_p99_ns,
            r.linear_ns,
            r.matched_pct
        );
    }
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    let (rs, r32, r64) = (
        ratio(large.single_ns, small.single_ns),
        ratio(large.burst32_ns, small.burst32_ns),
        ratio(large.burst64_ns, small.burst64_ns),
    );
    println!(
        "ratio {}/{}: single {rs:.2}x, burst32 {r32:.2}x, burst64 {r64:.2}x (goal <= 2x); linear {:.1}x",
        large.rules,
        small.rules,
        ratio(large.linear_ns, small.linear_ns)
    );
    let json = |r: &Run| {
        serde_json::json!({
            "rules": r.rules, "entries": r.entries, "build_ms": r.build_ms,
            "memory_bytes": r.memory_bytes, "single_ns": r.single_ns,
            "burst32_ns": r.burst32_ns, "burst64_ns": r.burst64_ns,
            "burst64_p50_ns": r.burst64_p50_ns, "burst64_p99_ns": r.burst64_p99_ns,
            "linear_ns": r.linear_ns, "matched_pct": r.matched_pct,
        })
    };
    println!(
        "{}",
        serde_json::json!({
            "bench": "policy",
            "backend": "acl",
            "hugepages": huge,
            "queries": args.queries,
            "seed": args.seed,
            "small": json(&small),
            "large": json(&large),
            "ratio_single": rs,
            "ratio_burst32": r32,
            "ratio_burst64": r64,
        })
    );
}
