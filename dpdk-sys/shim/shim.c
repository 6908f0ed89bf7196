/* See shim.h. Every function here is a thin, allocation-free forwarder. */
#define ALLOW_EXPERIMENTAL_API 1
#include <stdio.h>
#include <string.h>
#include <pthread.h>
#include <sched.h>
#include <rte_config.h>
#include <rte_errno.h>
#include <rte_log.h>
#include <rte_lcore.h>
#include <rte_cycles.h>
#include <rte_pause.h>
#include <rte_ethdev.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>
#include <rte_ring.h>
#include <rte_acl.h>
#include <rte_malloc.h>
#include <rte_eth_bond.h>
#include <rte_eth_bond_8023ad.h>

#include "shim.h"

int tandem_errno(void) { return rte_errno; }
unsigned tandem_lcore_id(void) { return rte_lcore_id(); }
uint64_t tandem_tsc(void) { return rte_get_tsc_cycles(); }
void tandem_pause(void) { rte_pause(); }
/* DPDK's log on stderr instead of the EAL's stdout+syslog stream (call
 * before rte_eal_init): keeps stdout for a program's own output. */
int tandem_log_to_stderr(void) { return rte_openlog_stream(stderr); }

int tandem_port_info(uint16_t port, struct tandem_port_info *out)
{
	struct rte_eth_dev_info info;
	int rc = rte_eth_dev_info_get(port, &info);
	if (rc != 0)
		return rc;
	memset(out, 0, sizeof(*out));
	if (info.driver_name)
		strncpy(out->driver_name, info.driver_name, sizeof(out->driver_name) - 1);
	rte_eth_dev_get_name_by_port(port, out->device_name);
	out->max_rx_queues = info.max_rx_queues;
	out->max_tx_queues = info.max_tx_queues;
	out->min_mtu = info.min_mtu;
	out->max_mtu = info.max_mtu;
	out->flow_type_rss_offloads = info.flow_type_rss_offloads;
	out->hash_key_size = info.hash_key_size;
	out->reta_size = info.reta_size;
	out->tx_offload_capa = info.tx_offload_capa;
	out->rx_offload_capa = info.rx_offload_capa;
	out->socket_id = rte_eth_dev_socket_id(port);
	return 0;
}

int tandem_port_configure(uint16_t port, const struct tandem_port_conf *c,
			  struct rte_mempool *pool)
{
	struct rte_eth_conf conf;
	struct rte_eth_dev_info info;
	int rc, socket;
	uint16_t q;

	rc = rte_eth_dev_info_get(port, &info);
	if (rc != 0)
		return rc;
	memset(&conf, 0, sizeof(conf));
	if (c->rss_hf != 0 && c->nb_rx_queues > 1) {
		conf.rxmode.mq_mode = RTE_ETH_MQ_RX_RSS;
		conf.rx_adv_conf.rss_conf.rss_hf = c->rss_hf & info.flow_type_rss_offloads;
		conf.rx_adv_conf.rss_conf.rss_key = (uint8_t *)c->rss_key;
		conf.rx_adv_conf.rss_conf.rss_key_len = c->rss_key_len;
	}
	if (info.tx_offload_capa & RTE_ETH_TX_OFFLOAD_MBUF_FAST_FREE)
		conf.txmode.offloads |= RTE_ETH_TX_OFFLOAD_MBUF_FAST_FREE;
	rc = rte_eth_dev_configure(port, c->nb_rx_queues, c->nb_tx_queues, &conf);
	if (rc != 0)
		return rc;
	if (c->mtu != 0) {
		rc = rte_eth_dev_set_mtu(port, c->mtu);
		/* Virtual devices without an MTU setting keep their own. */
		if (rc != 0 && rc != -ENOTSUP)
			return rc;
	}
	uint16_t nb_rxd = c->nb_rx_desc, nb_txd = c->nb_tx_desc;
	rc = rte_eth_dev_adjust_nb_rx_tx_desc(port, &nb_rxd, &nb_txd);
	if (rc != 0)
		return rc;
	socket = rte_eth_dev_socket_id(port);
	if (socket < 0)
		socket = (int)rte_socket_id();
	for (q = 0; q < c->nb_rx_queues; q++) {
		rc = rte_eth_rx_queue_setup(port, q, nb_rxd, (unsigned)socket, NULL, pool);
		if (rc != 0)
			return rc;
	}
	for (q = 0; q < c->nb_tx_queues; q++) {
		struct rte_eth_txconf txconf = info.default_txconf;
		txconf.offloads = conf.txmode.offloads;
		rc = rte_eth_tx_queue_setup(port, q, nb_txd, (unsigned)socket, &txconf);
		if (rc != 0)
			return rc;
	}
	return 0;
}

int tandem_port_link(uint16_t port, struct tandem_link *out)
{
	struct rte_eth_link link;
	int rc = rte_eth_link_get_nowait(port, &link);
	if (rc != 0)
		return rc;
	out->speed_mbps = link.link_speed;
	out->up = link.link_status == RTE_ETH_LINK_UP;
	out->full_duplex = link.link_duplex == RTE_ETH_LINK_FULL_DUPLEX;
	out->autoneg = link.link_autoneg == RTE_ETH_LINK_AUTONEG;
	return 0;
}

int tandem_port_mac(uint16_t port, uint8_t out[6])
{
	struct rte_ether_addr addr;
	int rc = rte_eth_macaddr_get(port, &addr);
	if (rc != 0)
		return rc;
	memcpy(out, addr.addr_bytes, 6);
	return 0;
}

uint16_t tandem_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n)
{
	return rte_eth_rx_burst(port, queue, pkts, n);
}

uint16_t tandem_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n)
{
	return rte_eth_tx_burst(port, queue, pkts, n);
}

struct rte_mbuf *tandem_mbuf_alloc(struct rte_mempool *mp) { return rte_pktmbuf_alloc(mp); }
int tandem_mbuf_alloc_bulk(struct rte_mempool *mp, struct rte_mbuf **mbufs, unsigned n)
{
	return rte_pktmbuf_alloc_bulk(mp, mbufs, n);
}
void tandem_mbuf_free(struct rte_mbuf *m) { rte_pktmbuf_free(m); }
uint8_t *tandem_mbuf_data(struct rte_mbuf *m) { return rte_pktmbuf_mtod(m, uint8_t *); }
uint16_t tandem_mbuf_data_len(const struct rte_mbuf *m) { return m->data_len; }
uint32_t tandem_mbuf_pkt_len(const struct rte_mbuf *m) { return m->pkt_len; }
uint16_t tandem_mbuf_nb_segs(const struct rte_mbuf *m) { return m->nb_segs; }
uint16_t tandem_mbuf_headroom(const struct rte_mbuf *m) { return rte_pktmbuf_headroom(m); }
uint16_t tandem_mbuf_tailroom(const struct rte_mbuf *m) { return rte_pktmbuf_tailroom(m); }
uint8_t *tandem_mbuf_append(struct rte_mbuf *m, uint16_t len) { return (uint8_t *)rte_pktmbuf_append(m, len); }
uint8_t *tandem_mbuf_prepend(struct rte_mbuf *m, uint16_t len) { return (uint8_t *)rte_pktmbuf_prepend(m, len); }
uint8_t *tandem_mbuf_adj(struct rte_mbuf *m, uint16_t len) { return (uint8_t *)rte_pktmbuf_adj(m, len); }
int tandem_mbuf_trim(struct rte_mbuf *m, uint16_t len) { return rte_pktmbuf_trim(m, len); }
uint16_t tandem_mbuf_port(const struct rte_mbuf *m) { return m->port; }
uint32_t tandem_mbuf_rss(const struct rte_mbuf *m, int *valid)
{
	*valid = (m->ol_flags & RTE_MBUF_F_RX_RSS_HASH) != 0;
	return *valid ? m->hash.rss : 0;
}

void tandem_mbuf_set_port(struct rte_mbuf *m, uint16_t port) { m->port = port; }

int tandem_port_reta_set(uint16_t port, const uint16_t *table, uint16_t size)
{
	struct rte_eth_rss_reta_entry64 conf[RTE_ETH_RSS_RETA_SIZE_512 / RTE_ETH_RETA_GROUP_SIZE * 4];
	uint16_t i;

	if (size == 0 || size % RTE_ETH_RETA_GROUP_SIZE != 0 ||
	    size / RTE_ETH_RETA_GROUP_SIZE > RTE_DIM(conf))
		return -EINVAL;
	memset(conf, 0, sizeof(conf));
	for (i = 0; i < size; i++) {
		conf[i / RTE_ETH_RETA_GROUP_SIZE].mask = UINT64_MAX;
		conf[i / RTE_ETH_RETA_GROUP_SIZE].reta[i % RTE_ETH_RETA_GROUP_SIZE] = table[i];
	}
	return rte_eth_dev_rss_reta_update(port, conf, size);
}

int tandem_port_reta_get(uint16_t port, uint16_t *table, uint16_t size)
{
	struct rte_eth_rss_reta_entry64 conf[RTE_ETH_RSS_RETA_SIZE_512 / RTE_ETH_RETA_GROUP_SIZE * 4];
	uint16_t i;
	int rc;

	if (size == 0 || size % RTE_ETH_RETA_GROUP_SIZE != 0 ||
	    size / RTE_ETH_RETA_GROUP_SIZE > RTE_DIM(conf))
		return -EINVAL;
	memset(conf, 0, sizeof(conf));
	for (i = 0; i < size / RTE_ETH_RETA_GROUP_SIZE; i++)
		conf[i].mask = UINT64_MAX;
	rc = rte_eth_dev_rss_reta_query(port, conf, size);
	if (rc != 0)
		return rc;
	for (i = 0; i < size; i++)
		table[i] = conf[i / RTE_ETH_RETA_GROUP_SIZE].reta[i % RTE_ETH_RETA_GROUP_SIZE];
	return 0;
}

int tandem_port_rss_key_get(uint16_t port, uint8_t *key, uint8_t len, uint64_t *hf)
{
	struct rte_eth_rss_conf conf;
	int rc;

	memset(&conf, 0, sizeof(conf));
	conf.rss_key = key;
	conf.rss_key_len = len;
	rc = rte_eth_dev_rss_hash_conf_get(port, &conf);
	if (rc != 0)
		return rc;
	*hf = conf.rss_hf;
	return conf.rss_key_len;
}

unsigned tandem_ring_enqueue_burst(struct rte_ring *r, void *const *objs, unsigned n)
{
	return rte_ring_enqueue_burst(r, objs, n, NULL);
}
unsigned tandem_ring_dequeue_burst(struct rte_ring *r, void **objs, unsigned n)
{
	return rte_ring_dequeue_burst(r, objs, n, NULL);
}
unsigned tandem_ring_count(const struct rte_ring *r) { return rte_ring_count(r); }

/* ---- librte_acl ---- */

enum {
	TANDEM_ACL_PROTO,
	TANDEM_ACL_SRC,
	TANDEM_ACL_DST,
	TANDEM_ACL_SPORT,
	TANDEM_ACL_DPORT,
	TANDEM_ACL_IN_PORT,
	TANDEM_ACL_OUT_PORT,
	TANDEM_ACL_NUM_FIELDS
};

RTE_ACL_RULE_DEF(tandem_acl_rte_rule, TANDEM_ACL_NUM_FIELDS);

/* rte_acl consumes the first field as one byte, then reads every later
 * input index as a 4-byte group. The trie follows this order: proto | dst |
 * sport+dport | src | in_port+out_port. Destination and ports before the
 * source (which "any" rules often leave open) halved the trie of a 10,000
 * rule policy (16 -> 7.6 MB) and its lookup time against the key's own
 * order; the interfaces, rarely set, come last. */
static const struct rte_acl_field_def tandem_acl_defs[TANDEM_ACL_NUM_FIELDS] = {
	{ .type = RTE_ACL_FIELD_TYPE_BITMASK, .size = sizeof(uint8_t),
	  .field_index = TANDEM_ACL_PROTO, .input_index = 0,
	  .offset = offsetof(struct tandem_acl_key, proto) },
	{ .type = RTE_ACL_FIELD_TYPE_MASK, .size = sizeof(uint32_t),
	  .field_index = TANDEM_ACL_DST, .input_index = 1,
	  .offset = offsetof(struct tandem_acl_key, dst) },
	{ .type = RTE_ACL_FIELD_TYPE_RANGE, .size = sizeof(uint16_t),
	  .field_index = TANDEM_ACL_SPORT, .input_index = 2,
	  .offset = offsetof(struct tandem_acl_key, sport) },
	{ .type = RTE_ACL_FIELD_TYPE_RANGE, .size = sizeof(uint16_t),
	  .field_index = TANDEM_ACL_DPORT, .input_index = 2,
	  .offset = offsetof(struct tandem_acl_key, dport) },
	{ .type = RTE_ACL_FIELD_TYPE_MASK, .size = sizeof(uint32_t),
	  .field_index = TANDEM_ACL_SRC, .input_index = 3,
	  .offset = offsetof(struct tandem_acl_key, src) },
	{ .type = RTE_ACL_FIELD_TYPE_BITMASK, .size = sizeof(uint16_t),
	  .field_index = TANDEM_ACL_IN_PORT, .input_index = 4,
	  .offset = offsetof(struct tandem_acl_key, in_port) },
	{ .type = RTE_ACL_FIELD_TYPE_BITMASK, .size = sizeof(uint16_t),
	  .field_index = TANDEM_ACL_OUT_PORT, .input_index = 4,
	  .offset = offsetof(struct tandem_acl_key, out_port) },
};

struct rte_acl_ctx *tandem_acl_create(const char *name, int socket_id, uint32_t max_rules)
{
	struct rte_acl_param p = {
		.name = name,
		.socket_id = socket_id,
		.rule_size = RTE_ACL_RULE_SZ(TANDEM_ACL_NUM_FIELDS),
		.max_rule_num = max_rules,
	};
	return rte_acl_create(&p);
}

int tandem_acl_add_rules(struct rte_acl_ctx *ctx, const struct tandem_acl_rule *rules, uint32_t n)
{
	struct tandem_acl_rte_rule buf[64];
	uint32_t i = 0;

	while (i < n) {
		uint32_t k, chunk = n - i < 64 ? n - i : 64;
		memset(buf, 0, sizeof(buf[0]) * chunk);
		for (k = 0; k < chunk; k++) {
			const struct tandem_acl_rule *r = &rules[i + k];
			struct rte_acl_field *f = buf[k].field;
			buf[k].data.category_mask = 1;
			buf[k].data.priority = r->priority;
			buf[k].data.userdata = r->userdata;
			f[TANDEM_ACL_PROTO].value.u8 = r->proto;
			f[TANDEM_ACL_PROTO].mask_range.u8 = r->proto_mask;
			f[TANDEM_ACL_SRC].value.u32 = r->src;
			f[TANDEM_ACL_SRC].mask_range.u32 = r->src_len;
			f[TANDEM_ACL_DST].value.u32 = r->dst;
			f[TANDEM_ACL_DST].mask_range.u32 = r->dst_len;
			f[TANDEM_ACL_SPORT].value.u16 = r->sport_lo;
			f[TANDEM_ACL_SPORT].mask_range.u16 = r->sport_hi;
			f[TANDEM_ACL_DPORT].value.u16 = r->dport_lo;
			f[TANDEM_ACL_DPORT].mask_range.u16 = r->dport_hi;
			f[TANDEM_ACL_IN_PORT].value.u16 = r->in_port;
			f[TANDEM_ACL_IN_PORT].mask_range.u16 = r->in_port_mask;
			f[TANDEM_ACL_OUT_PORT].value.u16 = r->out_port;
			f[TANDEM_ACL_OUT_PORT].mask_range.u16 = r->out_port_mask;
		}
		int rc = rte_acl_add_rules(ctx, (const struct rte_acl_rule *)buf, chunk);
		if (rc != 0)
			return rc;
		i += chunk;
	}
	return 0;
}

int tandem_acl_build(struct rte_acl_ctx *ctx)
{
	struct rte_acl_config cfg;
	memset(&cfg, 0, sizeof(cfg));
	cfg.num_categories = 1;
	cfg.num_fields = TANDEM_ACL_NUM_FIELDS;
	memcpy(cfg.defs, tandem_acl_defs, sizeof(tandem_acl_defs));
	cfg.max_size = 0;
	return rte_acl_build(ctx, &cfg);
}

int tandem_acl_classify(const struct rte_acl_ctx *ctx, const struct tandem_acl_key *keys,
			uint32_t *results, uint32_t n)
{
	const uint8_t *data[64];
	uint32_t i = 0;

	while (i < n) {
		uint32_t k, chunk = n - i < 64 ? n - i : 64;
		for (k = 0; k < chunk; k++)
			data[k] = (const uint8_t *)&keys[i + k];
		int rc = rte_acl_classify(ctx, data, results + i, chunk, 1);
		if (rc != 0)
			return rc;
		i += chunk;
	}
	return 0;
}

uint64_t tandem_heap_allocated(void)
{
	uint64_t total = 0;
	unsigned i, n = rte_socket_count();
	for (i = 0; i < n; i++) {
		struct rte_malloc_socket_stats st;
		if (rte_malloc_get_socket_stats(rte_socket_id_by_idx(i), &st) == 0)
			total += st.heap_allocsz_bytes;
	}
	return total;
}

/* ---- Link bonding ---- */

int tandem_bond_lacp_member(uint16_t bond, uint16_t member,
			    struct tandem_lacp_member *out)
{
	struct rte_eth_bond_8023ad_slave_info info;
	int rc;

	memset(&info, 0, sizeof(info));
	rc = rte_eth_bond_8023ad_slave_info(bond, member, &info);
	if (rc != 0)
		return rc < 0 ? rc : -rc;
	out->selected = (uint8_t)info.selected;
	out->actor_state = info.actor_state;
	out->partner_state = info.partner_state;
	out->agg_port_id = info.agg_port_id;
	return 0;
}

int tandem_bond_lacp_timers_get(uint16_t bond, struct tandem_lacp_timers *out)
{
	struct rte_eth_bond_8023ad_conf conf;
	int rc;

	memset(&conf, 0, sizeof(conf));
	rc = rte_eth_bond_8023ad_conf_get(bond, &conf);
	if (rc != 0)
		return rc < 0 ? rc : -rc;
	out->fast_periodic_ms = conf.fast_periodic_ms;
	out->slow_periodic_ms = conf.slow_periodic_ms;
	out->short_timeout_ms = conf.short_timeout_ms;
	out->long_timeout_ms = conf.long_timeout_ms;
	out->aggregate_wait_timeout_ms = conf.aggregate_wait_timeout_ms;
	out->tx_period_ms = conf.tx_period_ms;
	out->rx_marker_period_ms = conf.rx_marker_period_ms;
	out->update_timeout_ms = conf.update_timeout_ms;
	return 0;
}

int tandem_bond_lacp_timers_set(uint16_t bond,
				const struct tandem_lacp_timers *t)
{
	struct rte_eth_bond_8023ad_conf conf;
	int rc;

	memset(&conf, 0, sizeof(conf));
	rc = rte_eth_bond_8023ad_conf_get(bond, &conf);
	if (rc != 0)
		return rc < 0 ? rc : -rc;
	conf.fast_periodic_ms = t->fast_periodic_ms;
	conf.slow_periodic_ms = t->slow_periodic_ms;
	conf.short_timeout_ms = t->short_timeout_ms;
	conf.long_timeout_ms = t->long_timeout_ms;
	conf.aggregate_wait_timeout_ms = t->aggregate_wait_timeout_ms;
	conf.tx_period_ms = t->tx_period_ms;
	conf.rx_marker_period_ms = t->rx_marker_period_ms;
	conf.update_timeout_ms = t->update_timeout_ms;
	/* No external state machine: the PMD runs LACP itself. */
	conf.slowrx_cb = NULL;
	rc = rte_eth_bond_8023ad_setup(bond, &conf);
	if (rc != 0)
		return rc < 0 ? rc : -rc;
	/* The setup resets the aggregator selection to "stable": keep the one
	 * the bond had (agg_mode= of the vdev). */
	if (rte_eth_bond_8023ad_agg_selection_get(bond) != (int)conf.agg_selection)
		rc = rte_eth_bond_8023ad_agg_selection_set(bond, conf.agg_selection);
	return rc < 0 ? rc : -rc;
}

uint32_t tandem_port_ifindex(uint16_t port)
{
	struct rte_eth_dev_info info;

	if (rte_eth_dev_info_get(port, &info) != 0)
		return 0;
	return info.if_index;
}

int tandem_thread_set_realtime(int priority)
{
	struct sched_param p = { .sched_priority = priority };
	return pthread_setschedparam(pthread_self(), SCHED_RR, &p);
}
