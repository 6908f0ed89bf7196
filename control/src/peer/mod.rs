//! The members' service on TCP 1300 (HA-REFERENCE F1-F4, F15, F16): a
//! firewall joining the cluster, and the configuration sync between the
//! members. Authenticated by the cluster key, sealed frame by frame
//! ([`handshake`]).

pub mod confsync;
pub mod create;
pub mod files;
pub mod handshake;
pub mod join;
pub mod keychange;
pub mod params;
pub mod service;
pub mod wiring;

/// A two-member cluster file with one HA link, for the unit tests.
#[cfg(test)]
pub(crate) const TEST_CLUSTER_RON: &str = r#"(
    members: [(serial: "TDLAB0001", slot: 0), (serial: "TDLAB0002", slot: 1)],
    interfaces: [(name: "in", device: Vdev("net_af_packet0,iface=fw-in"), addresses: ["198.18.1.1/24"])],
    ha: (cluster_id: 7, psk: "Lab-Cluster-Key-2026", links: [
        (name: "HA-main", interface: "ha-main", address: "198.19.69.1/30", peer: "198.19.69.2"),
    ]),
)"#;
