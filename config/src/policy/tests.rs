//! Policy parsing, resolution and every validation rule.

use super::*;

const IFACES: &[&str] = &["in", "out"];

const BASE: &str = r#"(
    objects: {
        "lan": Network("198.18.1.0/24"),
        "web1": Host("198.18.2.10"),
        "dmz": Group(["web1", "198.18.3.0/24"]),
    },
    rules: [
        (name: "web", action: Pass, from: ["lan"], to: ["web1"], proto: Tcp, dst_ports: ["80", "443", "8000-8100"], log: false, sync: true),
        (action: Pass, in: Some("in"), proto: Icmp, icmp_types: [8]),
        (action: Reject, proto: Tcp, dst_ports: ["23"]),
        (action: Block, from: ["any"]),
    ],
    nat: [
        (kind: Source, out: Some("out"), from: ["lan"], to_address: Interface),
        (kind: Source, out: Some("out"), from: ["198.18.1.128/25"], to_address: Pool("198.18.2.100-198.18.2.110")),
        (kind: Destination, in: Some("out"), to: ["198.18.2.1"], proto: Tcp, dst_ports: ["8080"], translate_to: "198.18.1.10", translate_port: Some(80)),
    ],
    default_action: Block,
)
"#;

fn with(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "{from:?} not in BASE");
    BASE.replacen(from, to, 1)
}

fn line_of(text: &str, needle: &str) -> usize {
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in text"));
    text[..at].matches('\n').count() + 1
}

/// Asserts one problem on `field`, on the line of `line_needle`, whose
/// message contains `says`.
fn rejects(text: &str, field: &str, line_needle: &str, says: &str) -> String {
    let err = parse(text, "p.ron", Some(IFACES)).expect_err("policy should be rejected");
    let all = err.to_string();
    assert_eq!(err.diagnostics().len(), 1, "{all}");
    assert_eq!(err.diagnostics()[0].field, field, "{all}");
    let line = line_of(text, line_needle);
    assert!(
        all.starts_with(&format!("p.ron:{line}:")),
        "want line {line}: {all}"
    );
    assert!(all.contains(says), "want {says:?} in: {all}");
    all
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn range(a: &str, b: &str) -> AddrRange {
    AddrRange {
        first: ip(a),
        last: ip(b),
    }
}

#[test]
fn base_policy_parses_with_defaults() {
    let p = parse(BASE, "p.ron", Some(IFACES)).unwrap();
    assert_eq!(p.rules.len(), 4);
    let r = &p.rules[1];
    assert_eq!(r.in_interface.as_deref(), Some("in"));
    assert_eq!(r.proto, Some(Proto::Icmp));
    assert!(
        !r.log && r.sync && r.enabled,
        "defaults: log off, sync on, enabled"
    );
    assert_eq!(p.nat[2].translate_port, Some(80));
    assert_eq!(p.default_action, Action::Block);
}

#[test]
fn default_action_defaults_to_block() {
    let p = parse("(rules: [])", "p.ron", None).unwrap();
    assert_eq!(p.default_action, Action::Block);
    assert!(p.objects.is_empty() && p.nat.is_empty());
}

#[test]
fn example_policy_is_valid() {
    let (name, text) = EXAMPLE;
    parse(text, name, Some(IFACES)).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn every_policy_example_file_is_shipped() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|f| f.starts_with("policy-"))
        .collect();
    assert_eq!(files, [EXAMPLE.0]);
    load(&dir.join(EXAMPLE.0), Some(IFACES)).unwrap();
}

#[test]
fn validate_checks_a_policy_built_in_code() {
    let mut p = parse(BASE, "p.ron", None).unwrap();
    assert!(p.validate(Some(IFACES)).is_ok());
    p.rules[0].from = vec!["nosuch".into()];
    let err = p.validate(Some(IFACES)).unwrap_err();
    assert_eq!(err.diagnostics()[0].field, "rules[0].from[0]");
    assert!(err.diagnostics()[0].position.is_none());
}

#[test]
fn groups_resolve_to_merged_ranges() {
    let p = parse(BASE, "p.ron", None).unwrap();
    assert_eq!(
        p.resolve_addresses(&["dmz".into()]).unwrap(),
        vec![
            range("198.18.2.10", "198.18.2.10"),
            range("198.18.3.0", "198.18.3.255")
        ]
    );
    assert_eq!(
        p.resolve_addresses(&["lan".into(), "198.18.2.0-198.18.2.10".into()])
            .unwrap(),
        vec![range("198.18.1.0", "198.18.2.10")],
        "adjacent ranges merge"
    );
    assert_eq!(p.resolve_addresses(&[]).unwrap(), vec![AddrRange::ANY]);
    assert_eq!(
        p.resolve_addresses(&["web1".into(), "any".into()]).unwrap(),
        vec![AddrRange::ANY]
    );
}

#[test]
fn ranges_split_into_exact_prefixes() {
    let r = range("198.18.1.10", "198.18.1.20");
    let cidrs = r.to_cidrs();
    let texts: Vec<String> = cidrs.iter().map(|c| c.to_string()).collect();
    assert_eq!(
        texts,
        [
            "198.18.1.10/31",
            "198.18.1.12/30",
            "198.18.1.16/30",
            "198.18.1.20/32"
        ]
    );
    assert_eq!(AddrRange::ANY.to_cidrs().len(), 1);
    assert_eq!(AddrRange::ANY.to_cidrs()[0].prefix_len, 0);
    let top = range("255.255.255.254", "255.255.255.255").to_cidrs();
    assert_eq!(top.len(), 1);
    assert_eq!(top[0].prefix_len, 31);
}

#[test]
fn ports_parse_single_and_ranges() {
    assert_eq!(parse_port_range("80"), Ok((80, 80)));
    assert_eq!(parse_port_range("8000-8100"), Ok((8000, 8100)));
    assert_eq!(parse_port_range("0-65535"), Ok((0, 65535)));
    for bad in ["", "65536", "+80", "80-", "a", "1-2-3"] {
        assert!(parse_port_range(bad).is_err(), "{bad:?}");
    }
}

// ---- validation errors ----

#[test]
fn unknown_object_name_lists_the_defined_objects() {
    let t = with(r#"to: ["web1"]"#, r#"to: ["web2"]"#);
    let msg = rejects(
        &t,
        "rules[0].to[0]",
        "web2",
        "\"web2\" is neither an address nor a known object",
    );
    assert!(msg.contains("[\"dmz\", \"lan\", \"web1\"]"), "{msg}");
}

#[test]
fn malformed_address_is_named() {
    let t = with(r#"to: ["web1"]"#, r#"to: ["198.18.2.300"]"#);
    rejects(
        &t,
        "rules[0].to[0]",
        "198.18.2.300",
        "is not an IPv4 address",
    );
}

#[test]
fn network_with_host_bits_is_rejected() {
    let t = with(r#"from: ["lan"]"#, r#"from: ["198.18.1.5/24"]"#);
    rejects(
        &t,
        "rules[0].from[0]",
        "198.18.1.5/24",
        "write the network as \"198.18.1.0/24\"",
    );
}

#[test]
fn backwards_address_range_is_rejected() {
    let t = with(r#"from: ["lan"]"#, r#"from: ["198.18.1.20-198.18.1.10"]"#);
    rejects(&t, "rules[0].from[0]", "198.18.1.20-", "is an empty range");
}

#[test]
fn ports_need_a_protocol_with_ports() {
    let t = with(
        r#"(action: Reject, proto: Tcp, dst_ports: ["23"])"#,
        r#"(action: Reject, proto: Icmp, dst_ports: ["23"])"#,
    );
    rejects(
        &t,
        "rules[2].dst_ports",
        "proto: Icmp, dst_ports",
        "ports need a protocol with ports, but proto is Icmp",
    );
    let t = with(
        r#"(action: Reject, proto: Tcp, dst_ports: ["23"])"#,
        r#"(action: Reject, src_ports: ["23"])"#,
    );
    rejects(&t, "rules[2].src_ports", "src_ports", "proto is not set");
}

#[test]
fn protocol_numbers_with_ports_accept_ports() {
    let t = with(
        r#"(action: Reject, proto: Tcp, dst_ports: ["23"])"#,
        r#"(action: Reject, proto: Number(17), dst_ports: ["23"])"#,
    );
    parse(&t, "p.ron", Some(IFACES)).unwrap();
}

#[test]
fn backwards_port_range_is_rejected() {
    let t = with(r#""8000-8100""#, r#""8100-8000""#);
    rejects(
        &t,
        "rules[0].dst_ports[2]",
        "8100-8000",
        "is an empty range",
    );
}

#[test]
fn malformed_port_states_the_allowed_form() {
    let t = with(r#""443""#, r#""https""#);
    rejects(
        &t,
        "rules[0].dst_ports[1]",
        "https",
        "allowed a port \"80\" or a range",
    );
    let t = with(r#""443""#, r#""70000""#);
    rejects(&t, "rules[0].dst_ports[1]", "70000", "of ports 0..=65535");
}

#[test]
fn icmp_types_need_proto_icmp() {
    let t = with("proto: Icmp, icmp_types", "proto: Udp, icmp_types");
    rejects(
        &t,
        "rules[1].icmp_types",
        "icmp_types",
        "ICMP types need proto Icmp, but proto is Udp",
    );
}

#[test]
fn icmp_type_out_of_range_states_the_range() {
    let t = with("icmp_types: [8]", "icmp_types: [300]");
    let err = parse(&t, "p.ron", None).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("rules[1].icmp_types[0]"), "{msg}");
    assert!(msg.contains("ICMP types 0..=255"), "{msg}");
}

#[test]
fn unknown_interface_lists_the_node_interfaces() {
    let t = with(r#"in: Some("in")"#, r#"in: Some("lan0")"#);
    rejects(
        &t,
        "rules[1].in",
        "lan0",
        "\"lan0\" is not an interface of this node; allowed one of [\"in\", \"out\"]",
    );
    // Without an interface list the names are not checked.
    parse(&t, "p.ron", None).unwrap();
}

#[test]
fn empty_group_is_rejected() {
    let t = with(
        r#""dmz": Group(["web1", "198.18.3.0/24"])"#,
        r#""dmz": Group([])"#,
    );
    rejects(&t, "objects[dmz]", "\"dmz\"", "is an empty group");
}

#[test]
fn group_with_unknown_member_is_rejected_once() {
    let t = with(r#"Group(["web1","#, r#"Group(["web9","#);
    let t = t.replacen(r#"to: ["web1"]"#, r#"to: ["dmz"]"#, 1);
    rejects(
        &t,
        "objects[dmz][0]",
        "web9",
        "\"web9\" is neither an address nor a known object",
    );
}

#[test]
fn group_cycles_are_reported_once_with_the_cycle() {
    let t = with(
        r#""dmz": Group(["web1", "198.18.3.0/24"]),"#,
        r#""dmz": Group(["web1", "ring"]), "ring": Group(["dmz"]),"#,
    );
    let t = t.replacen(r#"to: ["web1"]"#, r#"to: ["ring"]"#, 1);
    let msg = rejects(
        &t,
        "objects[dmz]",
        "\"dmz\"",
        "groups form a cycle (dmz -> ring -> dmz)",
    );
    let self_loop = with(r#"Group(["web1","#, r#"Group(["dmz","#);
    rejects(&self_loop, "objects[dmz]", "\"dmz\"", "(dmz -> dmz)");
    assert!(msg.contains("allowed groups that do not contain themselves"));
}

#[test]
fn network_object_with_host_bits_is_rejected() {
    let t = with(r#"Network("198.18.1.0/24")"#, r#"Network("198.18.1.1/24")"#);
    rejects(&t, "objects[lan]", "\"lan\"", "has host bits set");
}

#[test]
fn bad_range_object_is_rejected() {
    let t = with(
        r#""web1": Host("198.18.2.10"),"#,
        r#""web1": Host("198.18.2.10"), "r": Range("198.18.2.9"),"#,
    );
    rejects(&t, "objects[r]", "\"r\"", "is not an address range");
}

#[test]
fn object_names_must_not_look_like_addresses_or_any() {
    let t = with(r#""web1": Host"#, r#""any": Host"#);
    let t = t.replacen(r#"["web1""#, r#"["198.18.2.10""#, 1);
    let t = t.replacen(r#"to: ["web1"]"#, r#"to: ["198.18.2.10"]"#, 1);
    rejects(&t, "objects[any]", "\"any\"", "is not a valid object name");
}

#[test]
fn rule_names_must_be_unique() {
    let t = with(
        "(action: Block, from",
        r#"(name: "web", action: Block, from"#,
    );
    rejects(
        &t,
        "rules[3].name",
        r#"(name: "web", action: Block"#,
        "is already the name of rules[0]",
    );
}

#[test]
fn unknown_action_lists_the_actions() {
    let t = with("action: Reject", "action: Drop");
    let msg = parse(&t, "p.ron", None).unwrap_err().to_string();
    assert!(msg.contains("unknown variant `Drop`"), "{msg}");
    assert!(msg.contains("Pass, Block, Reject"), "{msg}");
}

#[test]
fn unknown_rule_field_lists_the_fields() {
    let t = with("log: false, sync: true", "log: false, sink: true");
    let msg = parse(&t, "p.ron", None).unwrap_err().to_string();
    assert!(msg.contains("unknown field `sink`"), "{msg}");
    assert!(msg.contains("icmp_types"), "{msg}");
}

#[test]
fn source_nat_needs_to_address() {
    let t = with(r#", to_address: Interface)"#, ")");
    rejects(
        &t,
        "nat[0].to_address",
        "kind: Source, out: Some(\"out\"), from: [\"lan\"]",
        "is required for a Source rule",
    );
}

#[test]
fn masquerade_needs_an_out_interface() {
    let t = with(
        r#"(kind: Source, out: Some("out"), from: ["lan"]"#,
        r#"(kind: Source, from: ["lan"]"#,
    );
    rejects(
        &t,
        "nat[0].to_address",
        "to_address: Interface",
        "out is not set",
    );
}

#[test]
fn bad_pool_is_rejected() {
    let t = with("198.18.2.100-198.18.2.110", "198.18.2.110-198.18.2.100");
    rejects(&t, "nat[1].to_address", "Pool(", "is an empty range");
}

#[test]
fn source_nat_rejects_destination_fields() {
    let t = with(
        "to_address: Interface",
        r#"to_address: Interface, translate_to: "198.18.1.1""#,
    );
    rejects(
        &t,
        "nat[0].translate_to",
        "translate_to: \"198.18.1.1\"",
        "belongs to Destination rules",
    );
}

#[test]
fn destination_nat_needs_translate_to() {
    let t = with(r#"translate_to: "198.18.1.10", "#, "");
    rejects(
        &t,
        "nat[2].translate_to",
        "kind: Destination",
        "is required for a Destination rule",
    );
}

#[test]
fn destination_nat_cannot_match_the_out_interface() {
    let t = with(
        r#"(kind: Destination, in: Some("out")"#,
        r#"(kind: Destination, out: Some("out")"#,
    );
    rejects(
        &t,
        "nat[2].out",
        "kind: Destination",
        "decided before routing",
    );
}

#[test]
fn destination_nat_rejects_to_address() {
    let t = with(
        "translate_port: Some(80)",
        "translate_port: Some(80), to_address: Interface",
    );
    rejects(
        &t,
        "nat[2].to_address",
        "translate_port: Some(80), to_address",
        "belongs to Source rules",
    );
}

#[test]
fn port_translation_needs_a_protocol_with_ports() {
    let t = with(r#"proto: Tcp, dst_ports: ["8080"]"#, "proto: Gre");
    rejects(
        &t,
        "nat[2].translate_port",
        "translate_port",
        "needs a protocol with ports, but proto is Gre",
    );
    let t = with("translate_port: Some(80)", "translate_port: Some(0)");
    rejects(
        &t,
        "nat[2].translate_port",
        "translate_port",
        "allowed 1..=65535",
    );
}

#[test]
fn every_problem_is_reported() {
    let t = with(r#"to: ["web1"]"#, r#"to: ["web2"]"#);
    let t = t.replacen(r#"in: Some("in")"#, r#"in: Some("x")"#, 1);
    let err = parse(&t, "p.ron", Some(IFACES)).unwrap_err();
    let fields: Vec<&str> = err.diagnostics().iter().map(|d| d.field.as_str()).collect();
    assert_eq!(fields, ["rules[0].to[0]", "rules[1].in"]);
}

#[test]
fn load_names_the_file() {
    let dir = std::env::temp_dir().join(format!("tandem-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("policy.ron");
    std::fs::write(&path, with("proto: Icmp, icmp", "proto: Udp, icmp")).unwrap();
    let msg = load(&path, None).unwrap_err().to_string();
    assert!(msg.starts_with(&path.display().to_string()), "{msg}");
    let missing = load(&dir.join("nope.ron"), None).unwrap_err().to_string();
    assert!(missing.contains("cannot read"), "{missing}");
    std::fs::remove_dir_all(&dir).unwrap();
}
