/* See shim.h. Every function here is a thin, allocation-free forwarder. */
#define ALLOW_EXPERIMENTAL_API 1
#include <string.h>
#include <rte_config.h>
#include <rte_errno.h>
#include <rte_lcore.h>
#include <rte_cycles.h>
#include <rte_pause.h>
#include <rte_ethdev.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>
#include <rte_ring.h>

#include "shim.h"

int tandem_errno(void) { return rte_errno; }
unsigned tandem_lcore_id(void) { return rte_lcore_id(); }
uint64_t tandem_tsc(void) { return rte_get_tsc_cycles(); }
void tandem_pause(void) { rte_pause(); }

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

unsigned tandem_ring_enqueue_burst(struct rte_ring *r, void *const *objs, unsigned n)
{
	return rte_ring_enqueue_burst(r, objs, n, NULL);
}
unsigned tandem_ring_dequeue_burst(struct rte_ring *r, void **objs, unsigned n)
{
	return rte_ring_dequeue_burst(r, objs, n, NULL);
}
unsigned tandem_ring_count(const struct rte_ring *r) { return rte_ring_count(r); }
