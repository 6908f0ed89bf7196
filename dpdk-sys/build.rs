//! Builds the bindings to the system's DPDK (found with pkg-config) and
//! compiles the C shim that exports DPDK's `static inline` hot functions.

use std::env;
use std::path::PathBuf;
use std::process::Command;

/// DPDK functions (exported, not inline) that tandem calls.
const FUNCTIONS: &[&str] = &[
    "rte_eal_init",
    "rte_eal_cleanup",
    "rte_strerror",
    "rte_thread_register",
    "rte_thread_unregister",
    "rte_socket_id",
    "rte_lcore_count",
    "rte_get_tsc_hz",
    "rte_pktmbuf_pool_create",
    "rte_pktmbuf_free_bulk",
    "rte_mempool_free",
    "rte_mempool_avail_count",
    "rte_mempool_in_use_count",
    "rte_eth_dev_count_avail",
    "rte_eth_dev_get_port_by_name",
    "rte_eth_dev_start",
    "rte_eth_dev_stop",
    "rte_eth_dev_close",
    "rte_eth_dev_set_link_up",
    "rte_eth_dev_set_link_down",
    "rte_eth_stats_get",
    "rte_eth_stats_reset",
    "rte_eth_promiscuous_enable",
    "rte_eth_promiscuous_disable",
    "rte_eth_promiscuous_get",
    "rte_eth_allmulticast_get",
    "rte_eth_allmulticast_enable",
    "rte_ring_create",
    "rte_ring_free",
    "rte_acl_free",
    // The bonding PMD (librte_net_bond; linked explicitly below).
    "rte_eth_bond_mode_get",
    "rte_eth_bond_slaves_get",
    "rte_eth_bond_active_slaves_get",
    "rte_eth_bond_primary_get",
    "rte_eth_bond_primary_set",
    "tandem_.*",
];

/// Types bindgen must emit in full; every other type is opaque.
const TYPES: &[&str] = &[
    "rte_eth_stats",
    "tandem_port_info",
    "tandem_link",
    "tandem_port_conf",
    "tandem_acl_rule",
    "tandem_acl_key",
    "tandem_lacp_member",
    "tandem_lacp_timers",
];

/// Constants tandem uses (RSS flags, socket ids, ring flags, errno values).
const VARS: &[&str] = &[
    "RTE_ETH_RSS_.*",
    "SOCKET_ID_ANY",
    "RTE_MAX_LCORE",
    "RTE_MBUF_DEFAULT_BUF_SIZE",
    "RTE_PKTMBUF_HEADROOM",
    "RING_F_SP_ENQ",
    "RING_F_SC_DEQ",
    "RTE_ETHDEV_QUEUE_STAT_CNTRS",
    "LCORE_ID_ANY",
    "RTE_MAX_ETHPORTS",
    "BONDING_MODE_.*",
];

fn main() {
    println!("cargo:rerun-if-changed=shim/shim.c");
    println!("cargo:rerun-if-changed=shim/shim.h");
    println!("cargo:rerun-if-changed=shim/bindings.h");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");

    let lib = pkg_config::Config::new()
        .atleast_version("22.11")
        .probe("libdpdk")
        .unwrap_or_else(|e| {
            panic!(
                "DPDK 22.11 not found through pkg-config ({e}). \
                 On Debian 12: apt-get install libdpdk-dev dpdk dpdk-dev libclang-dev pkg-config"
            )
        });
    let cflags = Command::new("pkg-config")
        .args(["--cflags", "libdpdk"])
        .output()
        .expect("pkg-config must be installed to find DPDK");
    let cflags = String::from_utf8(cflags.stdout).expect("pkg-config printed non-UTF-8 flags");
    let cflags: Vec<String> = cflags.split_whitespace().map(str::to_owned).collect();

    let mut cc = cc::Build::new();
    cc.file("shim/shim.c")
        .include("shim")
        .opt_level(3)
        .warnings(false);
    for flag in &cflags {
        cc.flag(flag);
    }
    for path in &lib.include_paths {
        cc.include(path);
    }
    cc.compile("tandem_dpdk_shim");

    // pkg-config's libdpdk lists the libraries, not the drivers (the EAL
    // dlopens those from its driver directory). The bonding PMD's API is
    // called directly, so link it: the dynamic loader then loads it at
    // start-up (its constructor registers net_bonding), and the EAL's own
    // dlopen of the same file in the driver directory finds it loaded.
    // Linked after the shim, which calls it too.
    println!("cargo:rustc-link-lib=dylib=rte_net_bond");

    let mut builder = bindgen::Builder::default()
        .header("shim/bindings.h")
        .clang_arg("-Ishim")
        .clang_args(cflags.iter())
        .allowlist_recursively(false)
        .derive_default(true)
        .derive_debug(true)
        .layout_tests(false)
        .generate_comments(false)
        .prepend_enum_name(false)
        .size_t_is_usize(true)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()));
    for f in FUNCTIONS {
        builder = builder.allowlist_function(f);
    }
    for t in TYPES {
        builder = builder.allowlist_type(t);
    }
    for v in VARS {
        builder = builder.allowlist_var(v);
    }
    // rte_acl_ctx is opaque to everyone but DPDK (struct rte_acl_ctx is
    // private to librte_acl), as are the other types below.
    // rte_mbuf, rte_mempool, rte_ring, rte_eth_rxconf and rte_eth_txconf are
    // not emitted at all: src/lib.rs declares them as opaque types, since the
    // shim is the only code that looks inside them.
    let bindings = builder
        .generate()
        .expect("bindgen failed on DPDK's headers (is libclang-dev installed?)");
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    bindings
        .write_to_file(out.join("bindings.rs"))
        .expect("cannot write the generated bindings");
}
