//! Parsing, defaults, every validation rule, examples and the EAL argv.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use crate::*;

const BASE: &str = r#"(
    node: (name: "fw1", serial: "LAB-FW1"),
    control: (socket: "/run/tandem/fw1.sock"),
    eal: (no_huge: true, memory_mb: 256),
    dataplane: (
        workers: [(cpu: None)],
    ),
    interfaces: [
        (name: "in", device: Vdev("net_af_packet0,iface=fw-in"), addresses: ["198.18.1.1/24"]),
        (name: "out", device: Vdev("net_af_packet1,iface=fw-out"), addresses: ["198.18.2.1/24"]),
    ],
    routes: [],
)
"#;

/// BASE with `from` replaced by `to` (which must occur).
fn with(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "{from:?} not in BASE");
    BASE.replacen(from, to, 1)
}

/// The 1-based line of the first occurrence of `needle` in `text`.
fn line_of(text: &str, needle: &str) -> usize {
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in text"));
    text[..at].matches('\n').count() + 1
}

/// Asserts that `text` fails with exactly one problem, on `field`, on the
/// line of `line_needle`, and that the message states `allowed`.
fn rejects(text: &str, field: &str, line_needle: &str, allowed: &str) -> String {
    let err = parse(text, "t.ron").expect_err("configuration should be rejected");
    let all = err.to_string();
    assert_eq!(err.diagnostics().len(), 1, "{all}");
    let d = &err.diagnostics()[0];
    assert_eq!(d.field, field, "{all}");
    let line = line_of(text, line_needle);
    assert!(
        all.starts_with(&format!("t.ron:{line}:")),
        "want line {line}: {all}"
    );
    assert!(all.contains(&format!(" {field}: ")), "{all}");
    assert!(all.contains(allowed), "want {allowed:?} in: {all}");
    all
}

// ---- parsing and defaults ----

#[test]
fn base_configuration_is_valid() {
    let cfg = parse(BASE, "t.ron").unwrap();
    assert_eq!(cfg.node.name, "fw1");
    assert_eq!(cfg.interfaces.len(), 2);
    assert_eq!(
        cfg.interfaces[0].addresses,
        vec!["198.18.1.1/24".parse::<Ipv4Cidr>().unwrap()]
    );
}

#[test]
fn omitted_sections_take_their_defaults() {
    let text = r#"(
        node: (name: "fw1", serial: "S1"),
        interfaces: [(name: "in", device: Pci("0000:03:00.0"))],
    )"#;
    let cfg = parse(text, "t.ron").unwrap();
    assert_eq!(
        cfg.control.socket,
        PathBuf::from("/run/tandem/tandemd.sock")
    );
    let eal = &cfg.eal;
    assert_eq!(eal.file_prefix, None);
    assert_eq!(eal.lcores, None);
    assert!(!eal.no_huge);
    assert_eq!(eal.memory_mb, None);
    assert!(eal.in_memory);
    assert!(eal.extra_args.is_empty());
    let d = &cfg.dataplane;
    assert_eq!(d.workers, vec![WorkerConfig { cpu: None }]);
    assert_eq!(d.poll_mode, PollMode::Adaptive);
    assert_eq!(d.burst, 32);
    assert_eq!(d.mbufs, 16383);
    assert_eq!(d.mbuf_cache, 256);
    assert_eq!(d.rx_descriptors, 1024);
    assert_eq!(d.tx_descriptors, 1024);
    assert_eq!(
        d.neighbour,
        NeighbourConfig {
            capacity: 4096,
            reachable_secs: 30,
            timeout_secs: 300,
            retry_ms: 1000,
            hold_packets: 64,
        }
    );
    assert_eq!(d.idle.spin_polls, 256);
    assert_eq!(d.idle.max_sleep_us, 500);
    let i = &cfg.interfaces[0];
    assert!(i.addresses.is_empty());
    assert_eq!(i.mtu, 1500);
    assert_eq!(i.kernel_interface, None);
    assert!(cfg.routes.is_empty());
    assert_eq!(cfg.file_prefix(), "tandem-fw1");
    // The code defaults agree with the parsed ones.
    assert_eq!(cfg.eal, EalConfig::default());
    assert_eq!(cfg.dataplane, DataplaneConfig::default());
    assert_eq!(cfg.control, ControlConfig::default());
}

#[test]
fn in_memory_defaults_off_with_no_huge() {
    let cfg = parse(BASE, "t.ron").unwrap();
    assert!(cfg.eal.no_huge);
    assert!(!cfg.eal.in_memory);
    let cfg = parse(&with("no_huge: true, ", "in_memory: false, "), "t.ron").unwrap();
    assert!(!cfg.eal.in_memory);
}

#[test]
fn optional_values_may_be_written_plainly_or_as_some() {
    let plain = with("(cpu: None)", "(cpu: 3)");
    let some = with("(cpu: None)", "(cpu: Some(3))");
    assert_eq!(
        parse(&plain, "t.ron").unwrap().dataplane.workers[0].cpu,
        Some(3)
    );
    assert_eq!(
        parse(&some, "t.ron").unwrap().dataplane.workers[0].cpu,
        Some(3)
    );
}

#[test]
fn serialized_configuration_parses_back_equal() {
    for (name, text) in EXAMPLES {
        let cfg = parse(text, name).unwrap();
        let again = ron::ser::to_string_pretty(&cfg, Default::default()).unwrap();
        assert_eq!(parse(&again, "again.ron").unwrap(), cfg, "{again}");
    }
}

#[test]
fn kernel_interface_is_explicit_or_derived_from_iface() {
    let cfg = parse(BASE, "t.ron").unwrap();
    assert_eq!(cfg.interfaces[0].kernel_interface(), Some("fw-in"));
    assert_eq!(cfg.interfaces[1].kernel_interface(), Some("fw-out"));
    let mut i = cfg.interfaces[0].clone();
    i.kernel_interface = Some("veth9".into());
    assert_eq!(i.kernel_interface(), Some("veth9"));
    i.kernel_interface = None;
    i.device = Device::Vdev("net_af_xdp0,iface=eth7,start_queue=0".into());
    assert_eq!(i.kernel_interface(), Some("eth7"));
    i.device = Device::Vdev("net_tap0,iface=tap3".into());
    assert_eq!(i.kernel_interface(), None);
    i.device = Device::Pci("0000:03:00.0".into());
    assert_eq!(i.kernel_interface(), None);
}

#[test]
fn validate_checks_a_configuration_built_in_code() {
    let mut cfg = parse(BASE, "t.ron").unwrap();
    assert!(cfg.validate().is_ok());
    cfg.dataplane.burst = 0;
    let err = cfg.validate().unwrap_err();
    assert_eq!(
        err.to_string(),
        "configuration: dataplane.burst: 0 is out of range; allowed 1..=256"
    );
}

#[test]
fn load_names_the_file_in_messages() {
    let dir = std::env::temp_dir().join(format!("tandem-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("node.ron");
    std::fs::write(&path, with("memory_mb: 256", "memory_mb: 8")).unwrap();
    let err = load(&path).unwrap_err();
    assert!(
        err.to_string().starts_with(&format!("{}:", path.display())),
        "{err}"
    );
    let missing = load(&dir.join("absent.ron")).unwrap_err();
    assert!(matches!(missing, ConfigError::Read { .. }));
    assert!(
        missing.to_string().contains("absent.ron: cannot read"),
        "{missing}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---- errors reported by the parser ----

#[test]
fn malformed_prefix_names_field_line_and_form() {
    let text = with(r#"["198.18.2.1/24"]"#, r#"["198.18.1.300/24"]"#);
    let msg = rejects(
        &text,
        "interfaces[1].addresses[0]",
        "198.18.1.300",
        "expected a.b.c.d/len with len 0..=32",
    );
    assert!(
        msg.contains(r#""198.18.1.300/24" is not an IPv4 prefix"#),
        "{msg}"
    );
    // Points at the string itself.
    let line = text.lines().nth(9).unwrap();
    let column = line.find("\"198.18.1.300").unwrap() + 1;
    assert!(msg.starts_with(&format!("t.ron:10:{column}: ")), "{msg}");
}

#[test]
fn unknown_field_is_rejected_with_the_allowed_fields() {
    let text = with("memory_mb: 256", "memory_mb: 256, hugepages: 4");
    let msg = rejects(
        &text,
        "eal.hugepages",
        "hugepages",
        "allowed fields: file_prefix, lcores",
    );
    assert!(msg.contains("unknown field `hugepages`"), "{msg}");
}

#[test]
fn missing_required_field_is_named() {
    let text = with(r#"name: "out", "#, "");
    let msg = rejects(&text, "interfaces[1].name", "net_af_packet1", "required");
    assert!(msg.contains("missing"), "{msg}");
}

#[test]
fn unknown_enum_variant_lists_the_variants() {
    let text = with(
        "workers: [(cpu: None)],",
        "workers: [(cpu: None)],\n        poll_mode: Lazy,",
    );
    rejects(
        &text,
        "dataplane.poll_mode",
        "Lazy",
        "allowed one of: Busy, Adaptive",
    );
}

#[test]
fn integer_out_of_type_range_states_the_allowed_range() {
    let text = with(
        "addresses: [\"198.18.2.1/24\"]",
        "addresses: [\"198.18.2.1/24\"], mtu: 70000",
    );
    rejects(&text, "interfaces[1].mtu", "70000", "allowed 576..=9000");
}

#[test]
fn syntax_error_carries_ron_line_and_column() {
    let text = with(r#"serial: "LAB-FW1")"#, r#"serial: "LAB-FW1" oops)"#);
    let err = parse(&text, "t.ron").unwrap_err();
    assert!(matches!(err, ConfigError::Syntax(_)));
    assert!(err.to_string().starts_with("t.ron:2:"), "{err}");
}

// ---- one test per validation rule ----

#[test]
fn node_name_must_use_the_allowed_characters() {
    let text = with(r#"name: "fw1""#, r#"name: "fw 1""#);
    rejects(
        &text,
        "node.name",
        "fw 1",
        "1..=63 characters from [A-Za-z0-9._-]",
    );
}

#[test]
fn node_serial_must_be_at_most_32_characters() {
    let long = "S".repeat(33);
    let text = with(r#"serial: "LAB-FW1""#, &format!("serial: \"{long}\""));
    rejects(
        &text,
        "node.serial",
        &long,
        "1..=32 characters from [A-Za-z0-9._-]",
    );
}

#[test]
fn control_socket_must_be_absolute() {
    let text = with("/run/tandem/fw1.sock", "run/fw1.sock");
    rejects(&text, "control.socket", "run/fw1.sock", "an absolute path");
}

#[test]
fn eal_file_prefix_must_be_a_plain_name() {
    let text = with("eal: (no_huge", "eal: (file_prefix: \"../x\", no_huge");
    rejects(&text, "eal.file_prefix", "../x", "[A-Za-z0-9._-]");
}

#[test]
fn eal_lcores_must_be_an_lcore_map() {
    let text = with("eal: (no_huge", "eal: (lcores: \"all\", no_huge");
    rejects(&text, "eal.lcores", "\"all\"", "such as \"0-3\"");
}

#[test]
fn memory_mb_is_required_with_no_huge() {
    let text = with("no_huge: true, memory_mb: 256", "no_huge: true");
    rejects(
        &text,
        "eal.memory_mb",
        "no_huge",
        "64..=4294967295 megabytes",
    );
}

#[test]
fn memory_mb_must_be_at_least_64() {
    let text = with("memory_mb: 256", "memory_mb: 32");
    rejects(&text, "eal.memory_mb", "memory_mb", "64..=");
}

#[test]
fn in_memory_is_forbidden_with_no_huge() {
    let text = with("no_huge: true,", "no_huge: true, in_memory: true,");
    rejects(&text, "eal.in_memory", "in_memory", "allowed: false");
}

#[test]
fn workers_must_not_be_empty() {
    let text = with("workers: [(cpu: None)]", "workers: []");
    rejects(&text, "dataplane.workers", "workers", "1..=128 workers");
}

#[test]
fn workers_must_not_exceed_128() {
    let many = vec!["()"; 129].join(", ");
    let text = with("[(cpu: None)]", &format!("[{many}]"));
    rejects(&text, "dataplane.workers", "workers", "1..=128 workers");
}

#[test]
fn two_workers_must_not_share_a_cpu() {
    let text = with("[(cpu: None)]", "[(cpu: 1),\n (cpu: 1)]");
    let msg = rejects(
        &text,
        "dataplane.workers[1].cpu",
        " (cpu: 1)]",
        "not used by another worker",
    );
    assert!(msg.contains("dataplane.workers[0]"), "{msg}");
}

#[test]
fn the_sync_core_must_not_share_a_workers_cpu() {
    let text = with(
        "workers: [(cpu: None)],",
        "workers: [(cpu: 1), (cpu: 2)], sync_cpu: Some(2),",
    );
    let msg = rejects(
        &text,
        "dataplane.sync_cpu",
        "sync_cpu",
        "not used by a worker",
    );
    assert!(msg.contains("dataplane.workers[1]"), "{msg}");
    let ok = with(
        "workers: [(cpu: None)],",
        "workers: [(cpu: 1), (cpu: 2)], sync_cpu: Some(3),",
    );
    let cfg = parse(&ok, "t.ron").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.dataplane.sync_cpu, Some(3));
}

#[test]
fn the_handoff_ring_must_be_a_power_of_two_in_range() {
    for bad in ["100", "128", "131072"] {
        let text = with(
            "workers: [(cpu: None)],",
            &format!("workers: [(cpu: None)], handoff_ring: {bad},"),
        );
        rejects(
            &text,
            "dataplane.handoff_ring",
            "handoff_ring",
            "a power of two in 256..=65536",
        );
    }
}

#[test]
fn burst_must_be_in_range() {
    let text = with(
        "workers: [(cpu: None)],",
        "workers: [(cpu: None)], burst: 512,",
    );
    rejects(&text, "dataplane.burst", "burst", "allowed 1..=256");
}

#[test]
fn mbufs_must_be_in_range() {
    let text = with(
        "workers: [(cpu: None)],",
        "workers: [(cpu: None)], mbufs: 100,",
    );
    rejects(&text, "dataplane.mbufs", "mbufs", "allowed 1023..=4194303");
}

#[test]
fn mbuf_cache_must_be_at_most_512() {
    let text = with(
        "workers: [(cpu: None)],",
        "workers: [(cpu: None)], mbuf_cache: 513,",
    );
    rejects(
        &text,
        "dataplane.mbuf_cache",
        "mbuf_cache",
        "allowed 0..=512",
    );
}

#[test]
fn rx_descriptors_must_be_a_power_of_two_in_range() {
    let text = with(
        "workers: [(cpu: None)],",
        "workers: [(cpu: None)], rx_descriptors: 1000,",
    );
    rejects(
        &text,
        "dataplane.rx_descriptors",
        "rx_desc",
        "a power of two in 64..=8192",
    );
    let text = with(
        "workers: [(cpu: None)],",
        "workers: [(cpu: None)], rx_descriptors: 16384,",
    );
    rejects(
        &text,
        "dataplane.rx_descriptors",
        "rx_desc",
        "a power of two in 64..=8192",
    );
}

#[test]
fn tx_descriptors_must_be_a_power_of_two_in_range() {
    let text = with(
        "workers: [(cpu: None)],",
        "workers: [(cpu: None)], tx_descriptors: 32,",
    );
    rejects(
        &text,
        "dataplane.tx_descriptors",
        "tx_desc",
        "a power of two in 64..=8192",
    );
}

#[test]
fn neighbour_capacity_must_be_in_range() {
    let text = with(
        "workers: [(cpu: None)],",
        "workers: [(cpu: None)],\n neighbour: (capacity: 8),",
    );
    rejects(
        &text,
        "dataplane.neighbour.capacity",
        "capacity",
        "allowed 16..=1048576",
    );
}

#[test]
fn neighbour_timeout_must_not_be_shorter_than_reachable() {
    let text = with(
        "workers: [(cpu: None)],",
        "workers: [(cpu: None)],\n neighbour: (reachable_secs: 60, timeout_secs: 20),",
    );
    rejects(
        &text,
        "dataplane.neighbour.timeout_secs",
        "timeout_secs",
        "allowed 60..=",
    );
}

#[test]
fn neighbour_reachable_and_retry_must_be_positive() {
    let text = with(
        "workers: [(cpu: None)],",
        "workers: [(cpu: None)],\n neighbour: (reachable_secs: 0),",
    );
    rejects(
        &text,
        "dataplane.neighbour.reachable_secs",
        "reachable",
        "allowed 1..=",
    );
    let text = with(
        "workers: [(cpu: None)],",
        "workers: [(cpu: None)],\n neighbour: (retry_ms: 0),",
    );
    rejects(
        &text,
        "dataplane.neighbour.retry_ms",
        "retry_ms",
        "allowed 1..=",
    );
}

#[test]
fn idle_max_sleep_must_be_in_range() {
    let text = with(
        "workers: [(cpu: None)],",
        "workers: [(cpu: None)],\n idle: (max_sleep_us: 0),",
    );
    rejects(
        &text,
        "dataplane.idle.max_sleep_us",
        "max_sleep_us",
        "allowed 1..=100000",
    );
}

#[test]
fn at_least_one_interface_is_required() {
    let start = BASE.find("interfaces: [").unwrap();
    let end = BASE[start..].find("],").unwrap() + start + 2;
    let text = format!("{}interfaces: [],{}", &BASE[..start], &BASE[end..]);
    rejects(&text, "interfaces", "interfaces", "at least one interface");
}

#[test]
fn interface_name_must_use_the_allowed_characters() {
    let text = with(r#"name: "out""#, r#"name: "Out""#);
    rejects(
        &text,
        "interfaces[1].name",
        "\"Out\"",
        "1..=15 characters from [a-z0-9_-]",
    );
}

#[test]
fn interface_names_must_be_unique() {
    let text = with(r#"name: "out""#, r#"name: "in""#);
    let msg = rejects(
        &text,
        "interfaces[1].name",
        "net_af_packet1",
        "unique on the node",
    );
    assert!(msg.contains("interfaces[0]"), "{msg}");
}

#[test]
fn pci_address_must_be_domain_bus_device_function() {
    let text = with(
        r#"Vdev("net_af_packet1,iface=fw-out")"#,
        r#"Pci("03:00.0")"#,
    );
    rejects(
        &text,
        "interfaces[1].device",
        "03:00.0",
        "such as \"0000:03:00.0\"",
    );
    let text = with(
        r#"Vdev("net_af_packet1,iface=fw-out")"#,
        r#"Pci("0000:03:20.0")"#,
    );
    rejects(
        &text,
        "interfaces[1].device",
        "03:20.0",
        "device 00..=1f, function 0..=7",
    );
}

#[test]
fn devices_must_not_be_shared_by_two_interfaces() {
    let text = with("net_af_packet1,iface=fw-out", "net_af_packet0,iface=fw-out");
    rejects(
        &text,
        "interfaces[1].device",
        "iface=fw-out",
        "used by one interface only",
    );
}

#[test]
fn vdev_driver_must_start_with_net() {
    let text = with("net_af_packet1,iface=fw-out", "af_packet1,iface=fw-out");
    rejects(
        &text,
        "interfaces[1].device",
        "af_packet1",
        "net_<driver><n>",
    );
}

#[test]
fn af_packet_vdev_needs_an_iface() {
    let text = with("net_af_packet1,iface=fw-out", "net_af_packet1,qpairs=1");
    rejects(
        &text,
        "interfaces[1].device",
        "net_af_packet1",
        "iface=fw-in",
    );
}

#[test]
fn kernel_interface_must_be_a_linux_interface_name() {
    let text = with(
        r#"["198.18.2.1/24"]"#,
        r#"["198.18.2.1/24"], kernel_interface: "a/b""#,
    );
    rejects(
        &text,
        "interfaces[1].kernel_interface",
        "a/b",
        "1..=15 characters, no '/'",
    );
}

#[test]
fn kernel_interface_must_not_be_behind_two_ports() {
    let text = with("iface=fw-out", "iface=fw-in");
    rejects(
        &text,
        "interfaces[1].device",
        "iface=fw-in\"), addresses: [\"198.18.2",
        "one DPDK port per kernel interface",
    );
}

#[test]
fn mtu_must_be_in_range() {
    let text = with(r#"["198.18.2.1/24"]"#, r#"["198.18.2.1/24"], mtu: 100"#);
    rejects(&text, "interfaces[1].mtu", "mtu: 100", "allowed 576..=9000");
}

#[test]
fn interface_address_must_be_a_host_address() {
    let text = with(r#"["198.18.2.1/24"]"#, r#"["198.18.2.0/24"]"#);
    let msg = rejects(
        &text,
        "interfaces[1].addresses[0]",
        "198.18.2.0",
        "unicast host address",
    );
    assert!(msg.contains("network address"), "{msg}");
    let text = with(r#"["198.18.2.1/24"]"#, r#"["198.18.2.1/0"]"#);
    rejects(
        &text,
        "interfaces[1].addresses[0]",
        "198.18.2.1/0",
        "prefix length of 1..=32",
    );
}

#[test]
fn an_address_must_not_appear_twice_on_the_node() {
    let text = with(
        r#"["198.18.2.1/24"]"#,
        r#"["198.18.2.1/24", "198.18.2.1/25"]"#,
    );
    let msg = rejects(
        &text,
        "interfaces[1].addresses[1]",
        "198.18.2.1/25",
        "each address once per node",
    );
    assert!(msg.contains("interfaces[1].addresses[0]"), "{msg}");
}

#[test]
fn subnets_of_two_interfaces_must_not_overlap() {
    let text = with(r#"["198.18.2.1/24"]"#, r#"["198.18.1.129/25"]"#);
    let msg = rejects(
        &text,
        "interfaces[1].addresses[0]",
        "198.18.1.129",
        "do not overlap between interfaces",
    );
    assert!(msg.contains("198.18.1.0/24"), "{msg}");
}

#[test]
fn route_destination_must_not_have_host_bits() {
    let text = with(
        "routes: [],",
        r#"routes: [(destination: "198.19.1.7/16", via: "198.18.1.254")],"#,
    );
    rejects(
        &text,
        "routes[0].destination",
        "198.19.1.7",
        "write the network as \"198.19.0.0/16\"",
    );
}

#[test]
fn route_needs_via_or_interface() {
    let text = with(
        "routes: [],",
        "routes: [\n (destination: \"198.19.0.0/16\")],",
    );
    rejects(&text, "routes[0]", "(destination", "allowed: via");
}

#[test]
fn route_interface_must_exist() {
    let text = with(
        "routes: [],",
        r#"routes: [(destination: "198.19.0.0/16", interface: "dmz")],"#,
    );
    rejects(
        &text,
        "routes[0].interface",
        "\"dmz\"",
        r#"one of ["in", "out"]"#,
    );
}

#[test]
fn route_via_must_be_in_a_connected_subnet() {
    let text = with(
        "routes: [],",
        r#"routes: [(destination: "198.19.0.0/16", via: "198.18.9.1")],"#,
    );
    rejects(
        &text,
        "routes[0].via",
        "198.18.9.1",
        r#"["198.18.1.0/24", "198.18.2.0/24"]"#,
    );
}

#[test]
fn route_via_must_be_in_a_subnet_of_the_given_interface() {
    let text = with(
        "routes: [],",
        r#"routes: [(destination: "198.19.0.0/16", via: "198.18.1.254", interface: "out")],"#,
    );
    rejects(
        &text,
        "routes[0].via",
        "198.18.1.254",
        r#"interface "out"; allowed an address in ["198.18.2.0/24"]"#,
    );
}

#[test]
fn route_via_must_not_be_an_own_address() {
    let text = with(
        "routes: [],",
        r#"routes: [(destination: "198.19.0.0/16", via: "198.18.2.1")],"#,
    );
    rejects(
        &text,
        "routes[0].via",
        "via: \"198.18.2.1",
        "allowed a neighbour's address",
    );
}

#[test]
fn route_destinations_must_be_unique() {
    let text = with(
        "routes: [],",
        "routes: [(destination: \"198.19.0.0/16\", interface: \"in\"),\n (destination: \"198.19.0.0/16\", interface: \"out\")],",
    );
    rejects(
        &text,
        "routes[1].destination",
        " (destination: \"198.19.0.0/16\", interface: \"out",
        "one route per destination",
    );
}

#[test]
fn every_broken_rule_is_reported() {
    let text = with("memory_mb: 256", "memory_mb: 8").replace(r#""fw1""#, r#""""#);
    let err = parse(&text, "t.ron").unwrap_err();
    let fields: Vec<&str> = err.diagnostics().iter().map(|d| d.field.as_str()).collect();
    assert_eq!(fields, ["node.name", "eal.memory_mb"], "{err}");
    assert_eq!(err.to_string().lines().count(), 2);
}

// ---- examples and the EAL argv ----

#[test]
fn every_example_file_is_shipped_and_validates() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        // Policy examples are checked by the policy module's tests, the
        // identity example by the identity module's.
        .filter(|f| !f.starts_with("policy-") && f != "identity.ron")
        .collect();
    files.sort();
    let mut shipped: Vec<String> = EXAMPLES.iter().map(|(n, _)| n.to_string()).collect();
    shipped.sort();
    assert_eq!(files, shipped, "config/examples/ and EXAMPLES differ");
    for f in &files {
        if let Err(e) = load(&dir.join(f)) {
            panic!("{e}");
        }
    }
}

fn example(name: &str) -> NodeConfig {
    let (_, text) = EXAMPLES.iter().find(|(n, _)| *n == name).unwrap();
    parse(text, name).unwrap()
}

#[test]
fn lab_example_is_the_documented_lab_node() {
    let cfg = example("node-lab.ron");
    assert_eq!(cfg.control.socket, PathBuf::from("/run/tandem/fw1.sock"));
    assert_eq!(cfg.dataplane.workers, vec![WorkerConfig { cpu: None }]);
    assert_eq!(cfg.dataplane.poll_mode, PollMode::Adaptive);
    let names: Vec<_> = cfg
        .interfaces
        .iter()
        .map(|i| (i.name.as_str(), i.kernel_interface()))
        .collect();
    assert_eq!(names, [("in", Some("fw-in")), ("out", Some("fw-out"))]);
    assert_eq!(
        cfg.interfaces[1].addresses[0].addr,
        Ipv4Addr::new(198, 18, 2, 1)
    );
}

#[test]
fn eal_args_for_the_lab_example() {
    assert_eq!(
        example("node-lab.ron").eal_args(),
        [
            "tandemd",
            "--file-prefix=tandem-fw1",
            "-l",
            "0",
            "--no-huge",
            "--no-shconf",
            "-m",
            "256",
            "--no-telemetry",
            "--log-level=warning",
            "--vdev=net_af_packet0,iface=fw-in",
            "--vdev=net_af_packet1,iface=fw-out",
            "--no-pci",
        ]
    );
}

#[test]
fn eal_args_for_the_appliance_example() {
    let cfg = example("node-appliance.ron");
    assert_eq!(cfg.dataplane.poll_mode, PollMode::Busy);
    assert_eq!(
        cfg.eal_args(),
        [
            "tandemd",
            "--file-prefix=tandem",
            "--lcores=0-4",
            "--in-memory",
            "-m",
            "2048",
            "--no-telemetry",
            "--log-level=warning",
            "-a",
            "0000:03:00.0",
            "-a",
            "0000:03:00.1",
            "-a",
            "0000:04:00.0",
            "-a",
            "0000:04:00.1",
            "--huge-unlink",
        ]
    );
}

#[test]
fn examples_use_only_benchmarking_addresses() {
    let bench: Ipv4Cidr = "198.18.0.0/15".parse().unwrap();
    for (name, _) in EXAMPLES {
        let cfg = example(name);
        for i in &cfg.interfaces {
            for a in &i.addresses {
                assert!(bench.contains(a.addr), "{name}: {a}");
            }
        }
        for r in &cfg.routes {
            assert!(
                r.destination.prefix_len == 0 || bench.contains(r.destination.addr),
                "{name}"
            );
            if let Some(v) = r.via {
                assert!(bench.contains(v), "{name}: {v}");
            }
        }
    }
}

// ---- firewall ----

#[test]
fn firewall_section_defaults_to_a_plain_router() {
    let cfg = parse(BASE, "t.ron").unwrap();
    assert_eq!(cfg.firewall.policy, None);
    assert_eq!(cfg.firewall.connections, 65536);
    assert!(cfg.firewall.verify_checksums);
}

#[test]
fn firewall_policy_path_is_taken_relative_to_the_node_configuration() {
    let text = with(
        "routes: [],",
        "routes: [],\n    firewall: (policy: \"policy.ron\", connections: 4096),",
    );
    let cfg = parse(&text, "t.ron").unwrap();
    assert_eq!(
        cfg.firewall
            .policy_path(std::path::Path::new("/etc/tandem")),
        Some(PathBuf::from("/etc/tandem/policy.ron"))
    );
    let text = with(
        "routes: [],",
        "routes: [],\n    firewall: (policy: \"/srv/p.ron\"),",
    );
    let cfg = parse(&text, "t.ron").unwrap();
    assert_eq!(
        cfg.firewall
            .policy_path(std::path::Path::new("/etc/tandem")),
        Some(PathBuf::from("/srv/p.ron"))
    );
}

#[test]
fn firewall_connections_must_be_in_range() {
    let text = with(
        "routes: [],",
        "routes: [],\n    firewall: (connections: 10),",
    );
    rejects(
        &text,
        "firewall.connections",
        "connections: 10",
        "1024..=16777216",
    );
}

// ---- ha ----

const HA: &str = r#"routes: [],
    ha: (
        cluster_id: 7,
        psk: "Lab-Cluster-Key-2026",
        links: [
            (name: "HA-main", interface: "ha-main", address: "198.19.69.1/30", peer: "198.19.69.2"),
            (name: "HA-backup", interface: "ha-backup", address: "198.19.70.1/31", peer: "198.19.70.0"),
        ],
    ),"#;

#[test]
fn ha_section_with_main_and_backup_links_is_valid() {
    let cfg = parse(&with("routes: [],", HA), "t.ron").unwrap();
    let ha = cfg.ha.expect("ha section");
    assert_eq!(ha.links.len(), 2);
    assert_eq!(ha.sync_port, 44242);
    assert!(!ha.encrypt);
    assert_eq!(
        ha.links[1].peer,
        Ipv4Addr::new(198, 19, 70, 0),
        "/31 links use both addresses"
    );
}

#[test]
fn weak_pre_shared_key_is_refused() {
    let text = with(
        "routes: [],",
        &HA.replace("Lab-Cluster-Key-2026", "password"),
    );
    rejects(&text, "ha.psk", "psk:", "at least 12 characters");
}

#[test]
fn ha_peer_must_be_on_the_link_network() {
    let text = with(
        "routes: [],",
        &HA.replace("peer: \"198.19.69.2\"", "peer: \"198.19.71.2\""),
    );
    rejects(
        &text,
        "ha.links[0].peer",
        "198.19.71.2",
        "an address of the link's network",
    );
}

#[test]
fn ha_link_may_not_overlap_a_data_network() {
    let text = with(
        "routes: [],",
        &HA.replace("198.19.69.1/30", "198.18.1.200/24")
            .replace("198.19.69.2", "198.18.1.201"),
    );
    let err = parse(&text, "t.ron").expect_err("overlap");
    assert!(err.to_string().contains("ha.links[0].address"), "{err}");
    assert!(
        err.to_string().contains("overlaps a data interface"),
        "{err}"
    );
}

#[test]
fn firewall_timeouts_override_only_what_is_written() {
    let text = with(
        "routes: [],",
        "routes: [],\n    firewall: (timeouts: (tcp_established: 600, udp_stream: 60)),",
    );
    let cfg = parse(&text, "t.ron").unwrap();
    assert_eq!(cfg.firewall.timeouts.tcp_established, Some(600));
    assert_eq!(cfg.firewall.timeouts.udp_stream, Some(60));
    assert_eq!(cfg.firewall.timeouts.icmp, None);
    let text = with(
        "routes: [],",
        "routes: [],\n    firewall: (timeouts: (icmp: 0)),",
    );
    rejects(
        &text,
        "firewall.timeouts.icmp",
        "icmp: 0",
        "1..=2592000 seconds",
    );
}

#[test]
fn election_and_split_brain_protection_are_on_by_default() {
    let cfg = parse(&with("routes: [],", HA), "t.ron").unwrap();
    let ha = cfg.ha.expect("ha section");
    assert!(ha.election && ha.last_resort && ha.icmp_check);
    assert_eq!((ha.startup_wait_ms, ha.icmp_timeout_ms), (1000, 10));
    assert_eq!(
        (ha.heartbeat_ms, ha.dead_ms, ha.control_priority),
        (5, 25, 10)
    );
    assert_eq!(ha.garp_interval_ms, 0);
    assert!(cfg.interfaces.iter().all(|i| i.weight == 100));
}

#[test]
fn interface_weight_and_ha_timers_are_range_checked() {
    let text = with(
        r#"["198.18.2.1/24"]"#,
        r#"["198.18.2.1/24"], weight: 10000"#,
    );
    rejects(
        &text,
        "interfaces[1].weight",
        "10000",
        "0..=9999 (default 100)",
    );
    let text = with(
        "routes: [],",
        &HA.replace("cluster_id: 7,", "cluster_id: 7, icmp_timeout_ms: 1,"),
    );
    rejects(&text, "ha.icmp_timeout_ms", "icmp_timeout_ms", "5..=5000");
    let text = with(
        "routes: [],",
        &HA.replace("cluster_id: 7,", "cluster_id: 7, garp_interval_ms: 10,"),
    );
    rejects(
        &text,
        "ha.garp_interval_ms",
        "garp_interval_ms",
        "0 (off) or 100",
    );
}

const BOND_IN: &str = r#"(name: "in", device: Vdev("net_bonding0"), addresses: ["198.18.1.1/24"],
            aggregate: Some((mode: Lacp, lacp_rate: Fast, members: [Vdev("net_af_packet2,iface=in0"), Vdev("net_af_packet3,iface=in1")]))),"#;

#[test]
fn an_aggregate_puts_its_members_then_the_bond_on_the_eal_command_line() {
    let text = with(
        r#"(name: "in", device: Vdev("net_af_packet0,iface=fw-in"), addresses: ["198.18.1.1/24"]),"#,
        BOND_IN,
    );
    let cfg = parse(&text, "t.ron").unwrap();
    let agg = cfg.interfaces[0].aggregate.as_ref().expect("aggregate");
    assert_eq!(
        (agg.mode, agg.lacp_rate),
        (AggregateMode::Lacp, LacpRate::Fast)
    );
    let args = cfg.eal_args();
    let at = |s: &str| {
        args.iter()
            .position(|a| a == s)
            .unwrap_or_else(|| panic!("{s} in {args:?}"))
    };
    let bond = "--vdev=net_bonding0,mode=4,slave=net_af_packet2,slave=net_af_packet3";
    assert!(at("--vdev=net_af_packet2,iface=in0") < at(bond));
    assert!(at("--vdev=net_af_packet3,iface=in1") < at(bond));
    let ab = text.replace("mode: Lacp", "mode: ActiveBackup");
    let args = parse(&ab, "t.ron").unwrap().eal_args();
    assert!(
        args.contains(&"--vdev=net_bonding0,mode=1,slave=net_af_packet2,slave=net_af_packet3,primary=net_af_packet2".to_owned()),
        "{args:?}"
    );
}

#[test]
fn an_aggregate_needs_a_bonding_device_and_two_to_eight_unique_members() {
    let base = r#"(name: "in", device: Vdev("net_af_packet0,iface=fw-in"), addresses: ["198.18.1.1/24"]),"#;
    let text = with(base, &BOND_IN.replace("net_bonding0", "net_ring0"));
    rejects(&text, "interfaces[0].device", "net_ring0", "bonding vdev");
    let text = with(
        base,
        &BOND_IN.replace(r#", Vdev("net_af_packet3,iface=in1")"#, ""),
    );
    rejects(
        &text,
        "interfaces[0].aggregate.members",
        "aggregate",
        "2..=8 member devices",
    );
    let text = with(
        base,
        &BOND_IN.replace("net_af_packet3,iface=in1", "net_af_packet1,iface=in1"),
    );
    let err = parse(&text, "t.ron").expect_err("member reused");
    assert!(
        err.to_string()
            .contains("\"net_af_packet1\" is already the device of interfaces[0]"),
        "{err}"
    );
}

#[test]
fn quality_checks_need_absolute_paths_and_weights_in_range() {
    let text = with(
        "routes: [],",
        &HA.replace(
            "cluster_id: 7,",
            "cluster_id: 7, quality_disks: [(path: \"var/log\")],",
        ),
    );
    rejects(
        &text,
        "ha.quality_disks[0].path",
        "quality_disks",
        "absolute directory path",
    );
    let text = with(
        "routes: [],",
        &HA.replace(
            "cluster_id: 7,",
            "cluster_id: 7, quality_tpm: Some((device: \"/dev/tpmrm0\", weight: 10000)),",
        ),
    );
    rejects(
        &text,
        "ha.quality_tpm.weight",
        "quality_tpm",
        "10000 is out of range",
    );
    let ok = with(
        "routes: [],",
        &HA.replace(
            "cluster_id: 7,",
            "cluster_id: 7, quality_disks: [(path: \"/var/log\")], quality_hwmon_weight: Some(50),",
        ),
    );
    let ha = parse(&ok, "t.ron").unwrap().ha.unwrap();
    assert_eq!(ha.quality_disks[0].min_free_mb, 100);
    assert_eq!(ha.quality_disks[0].weight, 100);
    assert_eq!(ha.quality_hwmon_weight, Some(50));
}

#[test]
fn the_pre_shared_key_is_never_shown_by_debug() {
    let cfg = parse(&with("routes: [],", HA), "node.ron").unwrap();
    let ha = cfg.ha.as_ref().unwrap();
    assert_eq!(ha.psk.expose(), "Lab-Cluster-Key-2026");
    for shown in [format!("{cfg:?}"), format!("{ha:#?}")] {
        assert!(!shown.contains("Lab-Cluster-Key-2026"), "{shown}");
        assert!(
            shown.contains("Secret(<redacted, 20 characters>)"),
            "{shown}"
        );
    }
}

#[test]
fn an_ha_link_may_not_be_a_data_ports_kernel_interface() {
    let text = with(
        "routes: [],",
        &HA.replace("interface: \"ha-main\"", "interface: \"fw-out\""),
    );
    let all = rejects(
        &text,
        "ha.links[0].interface",
        "interface: \"fw-out\"",
        "needs an interface of its own",
    );
    assert!(
        all.contains("\"fw-out\" is the kernel interface of data interface \"out\""),
        "{all}"
    );
}

// ---- the cluster's shared file ----

/// A node file for a cluster member: its own sections only.
fn member_node(name: &str, serial: &str) -> String {
    format!(
        r#"(
    node: (name: "{name}", serial: "{serial}"),
    control: (socket: "/run/tandem/{name}.sock"),
    eal: (no_huge: true, memory_mb: 256),
    dataplane: (workers: [(cpu: None)]),
    cluster: "cluster",
)
"#
    )
}

const CLUSTER: &str = r#"(
    members: [(serial: "LAB-FW1", slot: 0), (serial: "LAB-FW2", slot: 1)],
    interfaces: [
        (name: "in", device: Vdev("net_af_packet0,iface=fw-in"), addresses: ["198.18.1.1/24"]),
        (name: "out", device: Vdev("net_af_packet1,iface=fw-out"), addresses: ["198.18.2.1/24"]),
    ],
    routes: [],
    firewall: (policy: "policy.ron"),
    ha: (
        cluster_id: 7,
        psk: "Lab-Cluster-Key-2026",
        links: [
            (name: "HA-main", interface: "ha-main", address: "198.19.69.1/30", peer: "198.19.69.2"),
            (name: "HA-backup", interface: "ha-backup", address: "198.19.70.1/31", peer: "198.19.70.0"),
        ],
    ),
)
"#;

/// A private directory with `fwN/node.ron` per member and one shared
/// `fwN/cluster/cluster.ron` copy each; removed on drop.
struct ClusterDir(PathBuf);

impl ClusterDir {
    fn new(tag: &str, cluster: &str) -> ClusterDir {
        let dir = std::env::temp_dir().join(format!(
            "tandem-config-cluster-{tag}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        for (name, serial) in [("fw1", "LAB-FW1"), ("fw2", "LAB-FW2"), ("fw3", "LAB-FW3")] {
            let d = dir.join(name);
            std::fs::create_dir_all(d.join("cluster")).unwrap();
            std::fs::write(d.join("node.ron"), member_node(name, serial)).unwrap();
            std::fs::write(d.join("cluster/cluster.ron"), cluster).unwrap();
        }
        ClusterDir(dir)
    }

    fn node(&self, name: &str) -> PathBuf {
        self.0.join(name).join("node.ron")
    }
}

impl Drop for ClusterDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The single-file configuration of member `name` equivalent to CLUSTER.
fn single_file(name: &str, serial: &str, slot: u8) -> NodeConfig {
    let links = if slot == 0 {
        r#"(name: "HA-main", interface: "ha-main", address: "198.19.69.1/30", peer: "198.19.69.2"),
            (name: "HA-backup", interface: "ha-backup", address: "198.19.70.1/31", peer: "198.19.70.0"),"#
    } else {
        r#"(name: "HA-main", interface: "ha-main", address: "198.19.69.2/30", peer: "198.19.69.1"),
            (name: "HA-backup", interface: "ha-backup", address: "198.19.70.0/31", peer: "198.19.70.1"),"#
    };
    let text = format!(
        r#"(
    node: (name: "{name}", serial: "{serial}"),
    control: (socket: "/run/tandem/{name}.sock"),
    eal: (no_huge: true, memory_mb: 256),
    dataplane: (workers: [(cpu: None)]),
    interfaces: [
        (name: "in", device: Vdev("net_af_packet0,iface=fw-in"), addresses: ["198.18.1.1/24"]),
        (name: "out", device: Vdev("net_af_packet1,iface=fw-out"), addresses: ["198.18.2.1/24"]),
    ],
    routes: [],
    firewall: (policy: "cluster/policy.ron"),
    ha: (
        cluster_id: 7,
        psk: "Lab-Cluster-Key-2026",
        links: [
            {links}
        ],
    ),
)
"#
    );
    parse(&text, "single.ron").unwrap()
}

#[test]
fn a_cluster_member_runs_what_the_single_file_would_say_from_its_slot() {
    let d = ClusterDir::new("merge", CLUSTER);
    for (name, serial, slot) in [("fw1", "LAB-FW1", 0), ("fw2", "LAB-FW2", 1)] {
        let mut merged = load(&d.node(name)).unwrap();
        let ms = merged.membership.take().expect("membership");
        assert_eq!(ms.slot, slot);
        assert_eq!(ms.dir, d.0.join(name).join("cluster"));
        assert_eq!(
            ms.peer_serial(),
            Some(if slot == 0 { "LAB-FW2" } else { "LAB-FW1" })
        );
        merged.cluster = None;
        assert_eq!(merged, single_file(name, serial, slot), "{name}");
    }
}

#[test]
fn the_cluster_file_written_back_from_either_member_is_the_same() {
    let d = ClusterDir::new("roundtrip", CLUSTER);
    let want = cluster::check_cluster_text(CLUSTER, "cluster.ron").unwrap();
    for name in ["fw1", "fw2"] {
        let cfg = load(&d.node(name)).unwrap();
        assert_eq!(
            cluster::cluster_file_of(&cfg).as_ref(),
            Some(&want),
            "{name}"
        );
    }
}

#[test]
fn the_preferred_member_gets_the_priority_and_no_other() {
    let text = CLUSTER.replacen(
        "interfaces: [",
        "prefer: \"LAB-FW2\",\n    interfaces: [",
        1,
    );
    let d = ClusterDir::new("prefer", &text);
    let p = |n| load(&d.node(n)).unwrap().ha.unwrap().priority;
    assert_eq!((p("fw1"), p("fw2")), (0, cluster::PREFERRED_PRIORITY));
}

#[test]
fn a_firewall_not_listed_is_told_to_join() {
    let d = ClusterDir::new("stranger", CLUSTER);
    let err = load(&d.node("fw3")).unwrap_err().to_string();
    assert!(
        err.contains("cluster/cluster.ron:2:")
            && err.contains(
                "this firewall (serial LAB-FW3) is not a member of the cluster (members: LAB-FW1, LAB-FW2); join it with tandemctl ha join"
            ),
        "{err}"
    );
}

#[test]
fn a_member_file_may_not_also_hold_a_shared_section() {
    let d = ClusterDir::new("twice", CLUSTER);
    let text = member_node("fw1", "LAB-FW1").replace(
        "cluster: \"cluster\",",
        "cluster: \"cluster\",\n    routes: [],",
    );
    std::fs::write(d.node("fw1"), text).unwrap();
    let err = load(&d.node("fw1")).unwrap_err().to_string();
    assert!(
        err.contains("node.ron:7:")
            && err.contains("routes: is written here, but this node is a cluster member")
            && err.contains("routes belongs in cluster/cluster.ron; remove it here"),
        "{err}"
    );
}

#[test]
fn a_problem_in_the_shared_file_names_that_file_and_line() {
    let text = CLUSTER.replace("\"198.18.2.1/24\"", "\"198.18.1.2/24\"");
    let d = ClusterDir::new("overlap", &text);
    let err = load(&d.node("fw2")).unwrap_err();
    let diags = err.diagnostics();
    assert_eq!(diags.len(), 1, "{err}");
    assert!(
        diags[0].origin.ends_with("fw2/cluster/cluster.ron"),
        "{err}"
    );
    assert_eq!(
        diags[0].position.unwrap().line,
        line_of(&text, "198.18.1.2/24")
    );
    // And a node-side problem still names node.ron.
    let d = ClusterDir::new("nodeside", CLUSTER);
    std::fs::write(
        d.node("fw1"),
        member_node("fw1", "LAB-FW1").replace("memory_mb: 256", "memory_mb: 8"),
    )
    .unwrap();
    let err = load(&d.node("fw1")).unwrap_err();
    assert!(
        err.diagnostics()[0].origin.ends_with("fw1/node.ron"),
        "{err}"
    );
}

#[test]
fn members_prefer_priority_and_policy_place_are_checked() {
    for (from, to, field, says) in [
        (
            "slot: 1)",
            "slot: 0)",
            "members[1].slot",
            "0 or 1, each slot used once",
        ),
        (
            "slot: 1)",
            "slot: 2)",
            "members[1].slot",
            "0 or 1, each slot used once",
        ),
        (
            "\"LAB-FW2\", slot",
            "\"LAB-FW1\", slot",
            "members[1].serial",
            "each serial listed once",
        ),
        (
            "interfaces: [",
            "prefer: \"NOPE\",\n    interfaces: [",
            "prefer",
            "\"NOPE\" is not a member",
        ),
        (
            "cluster_id: 7,",
            "cluster_id: 7, priority: 50,",
            "ha.priority",
            "prefer names the preferred member",
        ),
        (
            "policy: \"policy.ron\"",
            "policy: \"../policy.ron\"",
            "firewall.policy",
            "inside the cluster directory",
        ),
        (
            "policy: \"policy.ron\"",
            "policy: \"/etc/policy.ron\"",
            "firewall.policy",
            "inside the cluster directory",
        ),
        (
            "interfaces: [",
            "file_groups: [(name: \"Leases\", every_secs: 60)],\n    interfaces: [",
            "file_groups[0].name",
            "[a-z0-9_-]",
        ),
        (
            "interfaces: [",
            "file_groups: [(name: \"leases\", every_secs: 0)],\n    interfaces: [",
            "file_groups[0].every_secs",
            "1..=86400 seconds",
        ),
    ] {
        assert!(CLUSTER.contains(from), "{from}");
        let text = CLUSTER.replacen(from, to, 1);
        let err = cluster::check_cluster_text(&text, "cluster.ron").unwrap_err();
        let d = &err.diagnostics()[0];
        assert!(
            d.field == field && d.message.contains(says),
            "{from} -> {to}: {err}"
        );
    }
}

#[test]
fn a_member_written_back_by_tandemctl_loads_the_same() {
    let d = ClusterDir::new("written", CLUSTER);
    let cfg = load(&d.node("fw2")).unwrap();
    let node = cluster::member_node_file(&cfg, std::path::Path::new("cluster")).unwrap();
    let file = cluster::cluster_file_of(&cfg).unwrap();
    let shared = cluster::cluster_file_text(&file).unwrap();
    let again = d.0.join("again");
    std::fs::create_dir_all(again.join("cluster")).unwrap();
    std::fs::write(again.join("node.ron"), node).unwrap();
    std::fs::write(again.join("cluster/cluster.ron"), shared).unwrap();
    let mut reloaded = load(&again.join("node.ron")).unwrap();
    let mut want = cfg.clone();
    // Only where the directory is differs.
    reloaded.membership.as_mut().unwrap().dir = want.membership.as_ref().unwrap().dir.clone();
    want.firewall.policy = reloaded.firewall.policy.clone();
    assert_eq!(reloaded, want);
}
