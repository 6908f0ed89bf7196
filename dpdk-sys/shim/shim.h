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

unsigned tandem_ring_enqueue_burst(struct rte_ring *r, void *const *objs,
				   unsigned n);
unsigned tandem_ring_dequeue_burst(struct rte_ring *r, void **objs, unsigned n);
unsigned tandem_ring_count(const struct rte_ring *r);

#endif
