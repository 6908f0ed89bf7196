/* tandem's C shim over DPDK 22.11: exports the static inline hot-path
 * functions (rx/tx burst, mbuf operations, rings, rte_errno, lcore id) as
 * real symbols, and wraps the few calls whose argument structs carry
 * bitfields or large unions behind plain structs of our own. */
#ifndef TANDEM_SHIM_H
#define TANDEM_SHIM_H

#include <stdint.h>
#include <stddef.h>

struct rte_mbuf;
struct rte_mempool;
struct rte_ring;

/** What the port layer needs to know about a device. */
struct tandem_port_info {
	char driver_name[64];
	char device_name[64];
	uint16_t max_rx_queues;
	uint16_t max_tx_queues;
	uint16_t min_mtu;
	uint16_t max_mtu;
	uint64_t flow_type_rss_offloads;
	uint8_t hash_key_size;
	uint16_t reta_size;
	uint64_t tx_offload_capa;
	uint64_t rx_offload_capa;
	int socket_id;
};

/** Link state, read without waiting. */
struct tandem_link {
	uint32_t speed_mbps;
	uint8_t up;
	uint8_t full_duplex;
	uint8_t autoneg;
};

/** Port set-up: queues, MTU and RSS (rss_hf 0 disables RSS). */
struct tandem_port_conf {
	uint16_t nb_rx_queues;
	uint16_t nb_tx_queues;
	uint16_t nb_rx_desc;
	uint16_t nb_tx_desc;
	uint16_t mtu;
	uint64_t rss_hf;
	const uint8_t *rss_key;
	uint8_t rss_key_len;
};

int tandem_errno(void);
unsigned tandem_lcore_id(void);
uint64_t tandem_tsc(void);
void tandem_pause(void);
int tandem_log_to_stderr(void);

int tandem_port_info(uint16_t port, struct tandem_port_info *out);
int tandem_port_configure(uint16_t port, const struct tandem_port_conf *conf,
			  struct rte_mempool *pool);
int tandem_port_link(uint16_t port, struct tandem_link *out);
int tandem_port_mac(uint16_t port, uint8_t out[6]);

uint16_t tandem_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts,
			 uint16_t n);
uint16_t tandem_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts,
			 uint16_t n);

struct rte_mbuf *tandem_mbuf_alloc(struct rte_mempool *mp);
int tandem_mbuf_alloc_bulk(struct rte_mempool *mp, struct rte_mbuf **mbufs,
			   unsigned n);
void tandem_mbuf_free(struct rte_mbuf *m);
uint8_t *tandem_mbuf_data(struct rte_mbuf *m);
uint16_t tandem_mbuf_data_len(const struct rte_mbuf *m);
uint32_t tandem_mbuf_pkt_len(const struct rte_mbuf *m);
uint16_t tandem_mbuf_nb_segs(const struct rte_mbuf *m);
uint16_t tandem_mbuf_headroom(const struct rte_mbuf *m);
uint16_t tandem_mbuf_tailroom(const struct rte_mbuf *m);
uint8_t *tandem_mbuf_append(struct rte_mbuf *m, uint16_t len);
uint8_t *tandem_mbuf_prepend(struct rte_mbuf *m, uint16_t len);
uint8_t *tandem_mbuf_adj(struct rte_mbuf *m, uint16_t len);
int tandem_mbuf_trim(struct rte_mbuf *m, uint16_t len);
uint16_t tandem_mbuf_port(const struct rte_mbuf *m);
/* RSS hash if the device computed one, else 0 with *valid = 0. */
uint32_t tandem_mbuf_rss(const struct rte_mbuf *m, int *valid);

/** Sets the port id an mbuf carries (the input port of a handed-off packet). */
void tandem_mbuf_set_port(struct rte_mbuf *m, uint16_t port);
/** Programs the whole RSS redirection table (size: a multiple of 64, at most 2048). */
int tandem_port_reta_set(uint16_t port, const uint16_t *table, uint16_t size);
/** Reads the whole RSS redirection table back. */
int tandem_port_reta_get(uint16_t port, uint16_t *table, uint16_t size);
/** Reads the RSS key (len bytes of room) and hash types; returns the key length or a negative errno. */
int tandem_port_rss_key_get(uint16_t port, uint8_t *key, uint8_t len, uint64_t *hf);
unsigned tandem_ring_enqueue_burst(struct rte_ring *r, void *const *objs,
				   unsigned n);
unsigned tandem_ring_dequeue_burst(struct rte_ring *r, void **objs, unsigned n);
unsigned tandem_ring_count(const struct rte_ring *r);

/* ---- Packet classification (librte_acl) ----
 * One fixed field layout for every context: protocol, source and
 * destination address, source and destination port, input and output
 * port. The shim owns the RTE_ACL_RULE_DEF struct and the field
 * definitions, so Rust sees plain structs only. */
struct rte_acl_ctx;

/** One classification rule: each field is a value plus a mask, a prefix
 * length or an inclusive range. Host byte order. */
struct tandem_acl_rule {
	uint8_t proto;          /* IP protocol ... */
	uint8_t proto_mask;     /* ... 0xff exact, 0 any */
	uint8_t src_len;        /* source prefix length 0..=32 */
	uint8_t dst_len;        /* destination prefix length 0..=32 */
	uint32_t src;           /* source address */
	uint32_t dst;           /* destination address */
	uint16_t sport_lo, sport_hi;   /* source port (or ICMP type) range */
	uint16_t dport_lo, dport_hi;   /* destination port range */
	uint16_t in_port, in_port_mask;   /* DPDK port in; mask 0 any */
	uint16_t out_port, out_port_mask; /* DPDK port out; mask 0 any */
	int32_t priority;       /* 1..=RTE_ACL_MAX_PRIORITY, highest wins */
	uint32_t userdata;      /* returned on a match; not 0 */
};

/** The input of a classification, in network byte order, laid out as the
 * context's field definitions expect: the 1-byte protocol first, then
 * 4-byte groups. */
struct tandem_acl_key {
	uint8_t proto;
	uint8_t pad[3];
	uint32_t src;
	uint32_t dst;
	uint16_t sport;
	uint16_t dport;
	uint16_t in_port;
	uint16_t out_port;
};

/* Creates an empty context for up to max_rules rules; NULL + rte_errno. */
struct rte_acl_ctx *tandem_acl_create(const char *name, int socket_id,
				      uint32_t max_rules);
/* Adds n rules; 0 or a negative errno. */
int tandem_acl_add_rules(struct rte_acl_ctx *ctx,
			 const struct tandem_acl_rule *rules, uint32_t n);
/* Builds the run-time structures (one category); 0 or a negative errno. */
int tandem_acl_build(struct rte_acl_ctx *ctx);
/* Classifies n keys: results[i] is the userdata of the highest-priority
 * matching rule, 0 when none matches. 0 or a negative errno. */
int tandem_acl_classify(const struct rte_acl_ctx *ctx,
			const struct tandem_acl_key *keys, uint32_t *results,
			uint32_t n);
/* Bytes allocated from DPDK's heaps on all sockets (for memory reports). */
uint64_t tandem_heap_allocated(void);

/* ---- Link bonding (librte_net_bond) ----
 * The 802.3ad structures of rte_eth_bond_8023ad.h are packed and hold a
 * callback pointer and enums: the shim copies what tandem reads into
 * plain structs. */

/** One member's 802.3ad (LACP) state as the bond sees it. The state bytes
 * carry the 802.1AX bits (0x01 active, 0x02 short timeout, 0x04
 * aggregation, 0x08 synchronization, 0x10 collecting, 0x20 distributing,
 * 0x40 defaulted, 0x80 expired). */
struct tandem_lacp_member {
	uint8_t selected;       /* 0 unselected, 1 standby, 2 selected */
	uint8_t actor_state;
	uint8_t partner_state;
	uint16_t agg_port_id;   /* port id of the aggregator it is attached to */
};

/** The 802.3ad timers of a bond, in milliseconds. */
struct tandem_lacp_timers {
	uint32_t fast_periodic_ms;
	uint32_t slow_periodic_ms;
	uint32_t short_timeout_ms;
	uint32_t long_timeout_ms;
	uint32_t aggregate_wait_timeout_ms;
	uint32_t tx_period_ms;
	uint32_t rx_marker_period_ms;
	uint32_t update_timeout_ms;
};

/* LACP state of a member that is active (link up) in an 802.3ad bond;
 * 0 or a negative errno (-EINVAL: not an 802.3ad bond or not an active
 * member). */
int tandem_bond_lacp_member(uint16_t bond, uint16_t member,
			    struct tandem_lacp_member *out);
/* Reads / replaces the 802.3ad timers of a bond (replacing them restarts
 * its state machine timer; the members keep their state). 0 or a negative
 * errno. */
int tandem_bond_lacp_timers_get(uint16_t bond, struct tandem_lacp_timers *out);
int tandem_bond_lacp_timers_set(uint16_t bond,
				const struct tandem_lacp_timers *timers);
/* The kernel interface index behind a port (af_packet, af_xdp, tap), or 0
 * when the driver names none. */
uint32_t tandem_port_ifindex(uint16_t port);

/* Puts the calling thread in the SCHED_RR real-time class at `priority`
 * (1..=99), as DPDK's control threads can be: 0 or a positive errno. */
int tandem_thread_set_realtime(int priority);

#endif
