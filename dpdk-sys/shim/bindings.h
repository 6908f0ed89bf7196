/* The headers bindgen reads: the exported (non-inline) DPDK API we call,
 * plus our shim. The allowlist in build.rs keeps the output small. */
#define ALLOW_EXPERIMENTAL_API 1
#include <rte_config.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_lcore.h>
#include <rte_cycles.h>
#include <rte_ethdev.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>
#include <rte_ring.h>
#include <rte_eth_ring.h>
#include <rte_acl.h>
#include <rte_eth_bond.h>
#include "shim.h"
