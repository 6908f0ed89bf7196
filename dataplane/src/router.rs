//! The per-packet forwarding decision of a routed IPv4 node.
//!
//! [`Router::process`] takes one received frame and decides: forward it
//! (rewritten in place), answer it (ARP reply, ICMP echo reply, in place),
//! hold it until its next hop is resolved, consume it, or drop it with a
//! counted reason (and maybe an ICMP error for the caller to send). The
//! router is immutable after construction and shared read-only by the
//! workers; the only shared mutable state is the [`NeighbourTable`].
//!
//! Invariant: when `process` returns `Drop`, the frame is untouched, so the
//! caller can hand it to [`Router::build_icmp_error`].

use core::fmt;
use std::net::Ipv4Addr;
use std::sync::Arc;

use crate::lpm::{self, LpmError, Route, RouteTable};
use crate::neigh::{Lookup, NeighbourTable, Resolution};
use crate::wire::{
    checksum, ethernet, icmp, ipv4, ArpOperation, ArpPacket, ArpRepr, EtherType, EthernetAddress,
    EthernetFrame, EthernetRepr, IcmpDstUnreachable, IcmpPacket, IcmpRepr, IcmpTimeExceeded,
    IpProtocol, Ipv4Packet, Ipv4Repr,
};

/// TTL of packets the node originates (echo replies, ICMP errors).
pub const DEFAULT_TTL: u8 = 64;
/// Length the node pads the frames it builds to (Ethernet minimum, no FCS).
pub const MIN_FRAME_LEN: usize = 60;

/// A data port as the router sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouterInterface {
    /// DPDK port id.
    pub port: u16,
    /// The port's MAC address.
    pub mac: EthernetAddress,
    /// The node's addresses on this port, with their prefix lengths; the
    /// first one is the source of ICMP errors for packets received here.
    pub addresses: Vec<(Ipv4Addr, u8)>,
    /// Largest IP packet (total length) the port may send.
    pub mtu: u16,
}

/// A configured route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StaticRoute {
    /// Destination network address.
    pub destination: Ipv4Addr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// Gateway; `None` for a destination reachable directly on `port`.
    pub via: Option<Ipv4Addr>,
    /// Output port; `None` to take the port of the connected route to `via`.
    pub port: Option<u16>,
}

/// Why a router could not be built from the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouterError {
    /// Two interfaces have the same port id.
    DuplicatePort(u16),
    /// An interface address is unusable.
    InvalidAddress {
        /// The port.
        port: u16,
        /// The address.
        address: Ipv4Addr,
        /// Its prefix length.
        prefix_len: u8,
    },
    /// An address is configured twice.
    DuplicateAddress(Ipv4Addr),
    /// The MTU is below the IPv4 minimum of 68.
    InvalidMtu {
        /// The port.
        port: u16,
        /// The MTU given.
        mtu: u16,
    },
    /// Two connected networks (or a connected network and a static route)
    /// are the same prefix.
    RouteConflict(LpmError),
    /// A static route is invalid as written.
    InvalidRoute {
        /// The route's destination.
        destination: Ipv4Addr,
        /// Its prefix length.
        prefix_len: u8,
        /// What is wrong.
        error: LpmError,
    },
    /// A static route names neither a gateway nor a port.
    RouteWithoutTarget {
        /// The route's destination.
        destination: Ipv4Addr,
        /// Its prefix length.
        prefix_len: u8,
    },
    /// A static route names a port that is not an interface.
    UnknownPort {
        /// The route's destination.
        destination: Ipv4Addr,
        /// Its prefix length.
        prefix_len: u8,
        /// The port named.
        port: u16,
    },
    /// A static route's gateway is on no connected network, so its port
    /// cannot be found.
    GatewayNotConnected {
        /// The route's destination.
        destination: Ipv4Addr,
        /// Its prefix length.
        prefix_len: u8,
        /// The gateway.
        via: Ipv4Addr,
    },
}

impl fmt::Display for RouterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouterError::DuplicatePort(p) => {
                write!(
                    f,
                    "port {p} is configured twice: give each interface its own port"
                )
            }
            RouterError::InvalidAddress {
                port,
                address,
                prefix_len,
            } => write!(
                f,
                "address {address}/{prefix_len} on port {port} is unusable: use a unicast \
                 address with a prefix length of 1 to 32 that is not the network or \
                 broadcast address"
            ),
            RouterError::DuplicateAddress(a) => {
                write!(
                    f,
                    "address {a} is configured twice: keep it on one interface"
                )
            }
            RouterError::InvalidMtu { port, mtu } => {
                write!(
                    f,
                    "MTU {mtu} on port {port} is below the IPv4 minimum of 68"
                )
            }
            RouterError::RouteConflict(e) => write!(f, "route conflict: {e}"),
            RouterError::InvalidRoute {
                destination,
                prefix_len,
                error,
            } => {
                write!(f, "static route {destination}/{prefix_len}: {error}")
            }
            RouterError::RouteWithoutTarget {
                destination,
                prefix_len,
            } => write!(
                f,
                "static route {destination}/{prefix_len} has neither a gateway nor a port: \
                 give it `via` or `port`"
            ),
            RouterError::UnknownPort {
                destination,
                prefix_len,
                port,
            } => write!(
                f,
                "static route {destination}/{prefix_len} uses port {port}, which is not a \
                 configured interface"
            ),
            RouterError::GatewayNotConnected {
                destination,
                prefix_len,
                via,
            } => write!(
                f,
                "static route {destination}/{prefix_len}: gateway {via} is on no connected \
                 network: fix the gateway or give the route a port"
            ),
        }
    }
}

impl std::error::Error for RouterError {}

/// An ICMP error the caller may send about a dropped packet (with
/// [`Router::build_icmp_error`]; rate limiting is the caller's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IcmpError {
    /// Destination unreachable, network unreachable (no route).
    NetUnreachable,
    /// Destination unreachable, host unreachable (next hop did not answer ARP).
    HostUnreachable,
    /// Destination unreachable, fragmentation needed and DF set, with the
    /// MTU of the next hop.
    FragNeeded(u16),
    /// Time exceeded in transit (TTL).
    TimeExceeded,
    /// Communication administratively prohibited (a reject rule).
    AdminProhibited,
    /// Port unreachable (a reject rule, answering like a closed port).
    PortUnreachable,
}

/// What the caller does with the frame after [`Router::process`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// The frame was rewritten in place (MACs, TTL - 1, checksum): transmit
    /// it on `port`.
    Forward {
        /// Output port.
        port: u16,
    },
    /// The frame was turned into a reply in place (same length): transmit
    /// it on the input port.
    Reply,
    /// The next hop is unresolved. The frame was rewritten except for the
    /// destination MAC; keep it and call [`Router::finish_held`] later. If
    /// `send_arp`, send an ARP request for `next_hop` on `port` now.
    ///
    /// Also used, with `send_arp: true`, for the one packet (per `retry_ms`)
    /// that finds its next hop Stale: that frame is complete already and
    /// `finish_held` answers `Ready` at once; holding it is how the refresh
    /// request gets sent without a field in `Forward`.
    Hold {
        /// Output port.
        port: u16,
        /// The address to resolve.
        next_hop: Ipv4Addr,
        /// This caller should send the ARP request.
        send_arp: bool,
    },
    /// Used by the node; nothing to send.
    Consumed,
    /// The [`Filter`] refused the packet (it counted why). If `reject` is
    /// set, answer the sender with it ([`Router::build_reject`]).
    Filtered {
        /// The rejection to send, if the rule says reject.
        reject: Option<Reject>,
    },
    /// Drop the frame and count `reason`. The frame is untouched. If `icmp`
    /// is set, the caller may send that error ([`Router::build_icmp_error`]).
    Drop {
        /// Why.
        reason: DropReason,
        /// The ICMP error to send, if one is allowed.
        icmp: Option<IcmpError>,
    },
}

impl Action {
    fn drop(reason: DropReason) -> Action {
        Action::Drop { reason, icmp: None }
    }
}

/// How a rejected packet is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    /// A TCP reset (for TCP segments).
    TcpReset,
    /// ICMP destination unreachable, communication administratively
    /// prohibited (type 3 code 13).
    AdminProhibited,
    /// ICMP port unreachable (type 3 code 3), as a closed UDP port answers.
    PortUnreachable,
}

/// What a [`Filter`] decided about an IPv4 packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterVerdict {
    /// Nothing to decide here (for example: addressed to the node itself):
    /// the router delivers or routes the packet as usual.
    Continue,
    /// Forward along this route (the filter looked it up after any
    /// destination NAT it applied to the packet).
    Route(Route),
    /// Drop; the filter has counted why.
    Drop,
    /// Drop and answer the sender.
    Reject(Reject),
}

/// The stateful part of the dataplane that the router consults for every
/// IPv4 packet that passed its sanity checks, before local delivery and
/// routing: connection tracking, NAT and the filter policy. It may rewrite
/// the IP packet (NAT) and look routes up through `router`.
pub trait Filter {
    /// Decides about one IPv4 packet (`ip` starts at the IP header) that
    /// arrived on `in_port`.
    fn check(&mut self, now_ms: u64, in_port: u16, ip: &mut [u8], router: &Router)
        -> FilterVerdict;
}

/// The filter of a plain router: lets everything through.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoFilter;

impl Filter for NoFilter {
    fn check(&mut self, _: u64, _: u16, _: &mut [u8], _: &Router) -> FilterVerdict {
        FilterVerdict::Continue
    }
}

/// The outcome of [`Router::finish_held`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeldResult {
    /// Destination MAC filled in: transmit on the port.
    Ready,
    /// Still resolving: keep the frame.
    Waiting,
    /// The next hop did not answer: drop the frame (count
    /// [`DropReason::NeighbourUnresolved`]); the caller may send
    /// [`IcmpError::HostUnreachable`].
    Unresolvable,
}

macro_rules! drop_reasons {
    ($( $(#[$doc:meta])* $variant:ident => $name:literal, )+) => {
        /// Why a frame was dropped; one counter each.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum DropReason {
            $( $(#[$doc])* $variant, )+
        }

        impl DropReason {
            /// Number of reasons (size of a counter array).
            pub const COUNT: usize = [$( DropReason::$variant, )+].len();
            /// Every reason, in counter-index order (`reason as usize`).
            pub const ALL: [DropReason; DropReason::COUNT] = [$( DropReason::$variant, )+];

            /// Stable snake_case name, used in counters and JSON.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( DropReason::$variant => $name, )+
                }
            }
        }
    };
}

drop_reasons! {
    /// Shorter than its headers say, or than any header at all.
    Truncated => "truncated",
    /// Received on a port the router has no interface for.
    UnknownPort => "unknown_port",
    /// Not addressed to the port's MAC (nor broadcast/multicast ARP).
    NotForUs => "not_for_us",
    /// Source MAC is multicast, zero or the port's own.
    InvalidSrcMac => "invalid_src_mac",
    /// 802.1Q/802.1ad tagged (VLANs not supported yet).
    Vlan => "vlan",
    /// Neither IPv4 nor ARP.
    UnsupportedEthertype => "unsupported_ethertype",
    /// ARP that is not Ethernet/IPv4, or an unknown operation.
    ArpMalformed => "arp_malformed",
    /// ARP with a non-unicast sender MAC, or a reply from an address that
    /// is not on the port's networks.
    ArpInvalidSender => "arp_invalid_sender",
    /// ARP claiming one of the node's own addresses.
    ArpOwnAddress => "arp_own_address",
    /// ARP about an address that is not the port's.
    ArpNotForUs => "arp_not_for_us",
    /// An ARP reply could not be learned: neighbour table full.
    NeighbourTableFull => "neighbour_table_full",
    /// IP version is not 4.
    IpBadVersion => "ip_bad_version",
    /// IPv4 header length below 20 bytes.
    IpBadHeaderLen => "ip_bad_header_len",
    /// IPv4 total length smaller than the header.
    IpBadLength => "ip_bad_length",
    /// IPv4 header checksum wrong.
    IpBadChecksum => "ip_bad_checksum",
    /// Source address that cannot be a sender (0/8, 127/8, multicast,
    /// 240/4, limited broadcast, one of the node's own).
    MartianSource => "martian_source",
    /// Destination that must never be routed (0/8, 127/8, 240/4).
    MartianDestination => "martian_destination",
    /// Destination is the limited broadcast or a connected network's
    /// broadcast address.
    DstBroadcast => "dst_broadcast",
    /// Destination is multicast.
    DstMulticast => "dst_multicast",
    /// Addressed to the node, and not an ICMP echo request.
    LocalUnsupported => "local_unsupported",
    /// An echo request to the node with a bad ICMP checksum.
    IcmpBadChecksum => "icmp_bad_checksum",
    /// TTL would reach zero.
    TtlExceeded => "ttl_exceeded",
    /// No route to the destination.
    NoRoute => "no_route",
    /// Larger than the output MTU, with DF set.
    MtuExceeded => "mtu_exceeded",
    /// Larger than the output MTU without DF (fragmentation not supported).
    FragmentationNeeded => "fragmentation_needed",
    /// The next hop never answered ARP (held frame given up).
    NeighbourUnresolved => "neighbour_unresolved",
}

/// One route as listed by [`Router::routes`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteEntry {
    /// Destination network address.
    pub destination: Ipv4Addr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// Port and next hop.
    pub route: Route,
    /// A network of one of the interfaces (as opposed to a static route).
    pub connected: bool,
}

/// The routing core: interfaces, routes and the shared neighbour table.
#[derive(Debug)]
pub struct Router {
    interfaces: Vec<RouterInterface>,
    /// `by_port[port]`: index into `interfaces`.
    by_port: Vec<Option<usize>>,
    /// All the node's addresses.
    local: Vec<Ipv4Addr>,
    /// Broadcast addresses of the connected networks (prefixes up to /30).
    broadcasts: Vec<Ipv4Addr>,
    routes: RouteTable,
    /// The prefixes of `routes` that are connected networks.
    connected: Vec<(Ipv4Addr, u8)>,
    neighbours: Arc<NeighbourTable>,
}

impl Router {
    /// Builds the router: connected routes from the interface addresses,
    /// then the static routes (a route without a port takes the port of the
    /// connected route to its gateway).
    pub fn new(
        interfaces: Vec<RouterInterface>,
        routes: &[StaticRoute],
        neighbours: Arc<NeighbourTable>,
    ) -> Result<Router, RouterError> {
        let mut by_port: Vec<Option<usize>> = Vec::new();
        let mut local = Vec::new();
        let mut broadcasts = Vec::new();
        let mut table = RouteTable::new();
        for (idx, iface) in interfaces.iter().enumerate() {
            let p = usize::from(iface.port);
            if by_port.len() <= p {
                by_port.resize(p + 1, None);
            }
            if by_port[p].replace(idx).is_some() {
                return Err(RouterError::DuplicatePort(iface.port));
            }
            if iface.mtu < 68 {
                return Err(RouterError::InvalidMtu {
                    port: iface.port,
                    mtu: iface.mtu,
                });
            }
            for &(address, prefix_len) in &iface.addresses {
                let invalid = RouterError::InvalidAddress {
                    port: iface.port,
                    address,
                    prefix_len,
                };
                if prefix_len == 0 || prefix_len > 32 || is_martian(address) {
                    return Err(invalid);
                }
                let network = lpm::mask(address, prefix_len);
                let broadcast = Ipv4Addr::from(u32::from(network) | !lpm::netmask(prefix_len));
                if prefix_len <= 30 && (address == network || address == broadcast) {
                    return Err(invalid);
                }
                if local.contains(&address) {
                    return Err(RouterError::DuplicateAddress(address));
                }
                local.push(address);
                if prefix_len <= 30 {
                    broadcasts.push(broadcast);
                }
                // Two addresses of one port in the same network share one route.
                let connected = Route {
                    port: iface.port,
                    next_hop: None,
                };
                if table.get(network, prefix_len) != Some(&connected) {
                    table
                        .insert(network, prefix_len, connected)
                        .map_err(RouterError::RouteConflict)?;
                }
            }
        }
        let connected = table.clone();
        let connected_prefixes = connected.iter().map(|(a, l, _)| (a, l)).collect();
        for r in routes {
            let (destination, prefix_len) = (r.destination, r.prefix_len);
            let port = match (r.port, r.via) {
                (Some(port), _) => {
                    let known = by_port.get(usize::from(port)).copied().flatten().is_some();
                    if !known {
                        return Err(RouterError::UnknownPort {
                            destination,
                            prefix_len,
                            port,
                        });
                    }
                    port
                }
                (None, Some(via)) => match connected.lookup(via) {
                    Some(route) => route.port,
                    None => {
                        return Err(RouterError::GatewayNotConnected {
                            destination,
                            prefix_len,
                            via,
                        })
                    }
                },
                (None, None) => {
                    return Err(RouterError::RouteWithoutTarget {
                        destination,
                        prefix_len,
                    })
                }
            };
            table
                .insert(
                    destination,
                    prefix_len,
                    Route {
                        port,
                        next_hop: r.via,
                    },
                )
                .map_err(|error| match error {
                    LpmError::Exists { .. } => RouterError::RouteConflict(error),
                    _ => RouterError::InvalidRoute {
                        destination,
                        prefix_len,
                        error,
                    },
                })?;
        }
        Ok(Router {
            interfaces,
            by_port,
            local,
            broadcasts,
            routes: table,
            connected: connected_prefixes,
            neighbours,
        })
    }

    /// The interfaces, in configuration order.
    pub fn interfaces(&self) -> &[RouterInterface] {
        &self.interfaces
    }

    /// The interface of `port`, if any.
    pub fn interface(&self, port: u16) -> Option<&RouterInterface> {
        let idx = (*self.by_port.get(usize::from(port))?)?;
        self.interfaces.get(idx)
    }

    /// Every route, connected and static, in address order (for the
    /// status command).
    pub fn routes(&self) -> impl Iterator<Item = RouteEntry> + '_ {
        self.routes
            .iter()
            .map(|(destination, prefix_len, route)| RouteEntry {
                destination,
                prefix_len,
                route: *route,
                connected: self.connected.contains(&(destination, prefix_len)),
            })
    }

    /// The routing table.
    pub fn route_table(&self) -> &RouteTable {
        &self.routes
    }

    /// The shared neighbour table.
    pub fn neighbours(&self) -> &NeighbourTable {
        &self.neighbours
    }

    /// True when `addr` is one of the node's addresses.
    pub fn is_local(&self, addr: Ipv4Addr) -> bool {
        self.local.contains(&addr)
    }

    /// Decides what to do with a frame received on `in_port`, rewriting it
    /// in place for `Forward`, `Reply` and `Hold`. Never panics, whatever
    /// the bytes.
    pub fn process(&self, now_ms: u64, in_port: u16, frame: &mut [u8]) -> Action {
        self.process_filtered(now_ms, in_port, frame, &mut NoFilter)
    }

    /// [`Router::process`] with a stateful [`Filter`] consulted for every
    /// IPv4 packet before local delivery and routing.
    pub fn process_filtered<F: Filter>(
        &self,
        now_ms: u64,
        in_port: u16,
        frame: &mut [u8],
        filter: &mut F,
    ) -> Action {
        let Some(iface) = self.interface(in_port) else {
            return Action::drop(DropReason::UnknownPort);
        };
        let Ok(eth) = EthernetFrame::new_checked(&*frame) else {
            return Action::drop(DropReason::Truncated);
        };
        let (dst_mac, src_mac) = (eth.dst_addr(), eth.src_addr());
        let inner = eth.payload_ethertype();
        let tagged = eth.ethertype().is_vlan_tag();
        let for_us = dst_mac == iface.mac || (dst_mac.is_multicast() && inner == EtherType::Arp);
        if !for_us {
            return Action::drop(DropReason::NotForUs);
        }
        if !src_mac.is_unicast() || src_mac == iface.mac {
            return Action::drop(DropReason::InvalidSrcMac);
        }
        if tagged {
            return Action::drop(DropReason::Vlan);
        }
        match inner {
            EtherType::Arp => self.process_arp(now_ms, iface, frame),
            EtherType::Ipv4 => self.process_ipv4(now_ms, iface, frame, filter),
            _ => Action::drop(DropReason::UnsupportedEthertype),
        }
    }

    /// Completes a frame that `process` answered with `Hold { port, next_hop, .. }`.
    pub fn finish_held(
        &self,
        now_ms: u64,
        frame: &mut [u8],
        port: u16,
        next_hop: Ipv4Addr,
    ) -> HeldResult {
        let Ok(mut eth) = EthernetFrame::new_checked(frame) else {
            return HeldResult::Unresolvable;
        };
        if self.interface(port).is_none() {
            return HeldResult::Unresolvable;
        }
        match self.neighbours.resolve(port, next_hop, now_ms) {
            Resolution::Resolved(mac) => {
                eth.set_dst_addr(mac);
                HeldResult::Ready
            }
            Resolution::Pending => HeldResult::Waiting,
            Resolution::Failed => HeldResult::Unresolvable,
        }
    }

    /// Writes a broadcast ARP request for `target` from `port` into `buf`
    /// (padded to 60 bytes); returns its length, or `None` if the port is
    /// unknown or has no address, or `buf` is too small.
    pub fn build_arp_request(&self, port: u16, target: Ipv4Addr, buf: &mut [u8]) -> Option<usize> {
        let iface = self.interface(port)?;
        let sender = source_for(iface, target)?;
        Self::emit_arp_request(iface, sender, target, buf)
    }

    /// Writes into `buf` a gratuitous ARP (a broadcast request for the
    /// address itself) announcing that `addr`, one of `port`'s addresses,
    /// is at `port`'s MAC: what a member sends when it becomes active so
    /// the neighbours move the cluster's addresses to it.
    pub fn build_garp(&self, port: u16, addr: Ipv4Addr, buf: &mut [u8]) -> Option<usize> {
        let iface = self.interface(port)?;
        if !iface.addresses.iter().any(|&(a, _)| a == addr) {
            return None;
        }
        Self::emit_arp_request(iface, addr, addr, buf)
    }

    fn emit_arp_request(
        iface: &RouterInterface,
        sender: Ipv4Addr,
        target: Ipv4Addr,
        buf: &mut [u8],
    ) -> Option<usize> {
        let buf = buf.get_mut(..MIN_FRAME_LEN)?;
        buf.fill(0);
        let eth = EthernetRepr {
            src_addr: iface.mac,
            dst_addr: EthernetAddress::BROADCAST,
            vlan_tci: None,
            ethertype: EtherType::Arp,
        };
        let mut frame = EthernetFrame::new_unchecked(&mut *buf);
        eth.emit(&mut frame).ok()?;
        let repr = ArpRepr {
            operation: ArpOperation::Request,
            source_hardware_addr: iface.mac,
            source_protocol_addr: sender,
            target_hardware_addr: EthernetAddress::UNSPECIFIED,
            target_protocol_addr: target,
        };
        repr.emit(&mut ArpPacket::new_unchecked(frame.payload_mut()))
            .ok()?;
        Some(MIN_FRAME_LEN)
    }

    /// Writes into `buf` the ICMP error `err` about `original` (a frame
    /// received on `in_port`, as `process` left it on `Drop`, or a held frame
    /// given up). The error quotes the original IP header and 8 bytes of its
    /// payload and comes from `in_port`'s first address. It goes straight
    /// back to the frame's source MAC on `in_port`; for a held frame, whose
    /// source MAC is already the node's own, it follows the route to the
    /// original source if that next hop's MAC is in the neighbour table.
    /// Returns `(out port, length)`, or `None` when no error may be sent
    /// (about an ICMP error, a non-first fragment, a broadcast or multicast,
    /// a martian source) or it cannot be built.
    pub fn build_icmp_error(
        &self,
        original: &[u8],
        in_port: u16,
        err: IcmpError,
        buf: &mut [u8],
    ) -> Option<(u16, usize)> {
        let iface = self.interface(in_port)?;
        let (src_ip, _) = *iface.addresses.first()?;
        let eth = EthernetFrame::new_checked(original).ok()?;
        if eth.ethertype() != EtherType::Ipv4 || eth.dst_addr().is_multicast() {
            return None;
        }
        let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
        if ip.version() != 4 || !self.icmp_error_allowed(&ip) {
            return None;
        }
        let dst_ip = ip.src_addr();
        if is_martian(dst_ip) || self.is_local(dst_ip) || self.is_broadcast(dst_ip) {
            return None;
        }
        // Where to send it: back to whoever handed us the frame; for a frame
        // already rewritten (a held frame), along the route to its source if
        // that next hop's MAC is known.
        let (out_port, dst_mac, out_mac) = match self.reflect(iface, &eth) {
            Some(way) => way,
            None => {
                let route = self.routes.lookup(dst_ip)?;
                let out = self.interface(route.port)?;
                let hop = route.next_hop.unwrap_or(dst_ip);
                (route.port, self.neighbours.peek(route.port, hop)?, out.mac)
            }
        };
        let quote = icmp::quote(&ip);
        let icmp_repr = match err {
            IcmpError::NetUnreachable => IcmpRepr::DstUnreachable {
                reason: IcmpDstUnreachable::NetUnreachable,
                mtu: 0,
                data: quote,
            },
            IcmpError::HostUnreachable => IcmpRepr::DstUnreachable {
                reason: IcmpDstUnreachable::HostUnreachable,
                mtu: 0,
                data: quote,
            },
            IcmpError::FragNeeded(mtu) => IcmpRepr::DstUnreachable {
                reason: IcmpDstUnreachable::FragRequired,
                mtu,
                data: quote,
            },
            IcmpError::AdminProhibited => IcmpRepr::DstUnreachable {
                reason: IcmpDstUnreachable::AdminProhibited,
                mtu: 0,
                data: quote,
            },
            IcmpError::PortUnreachable => IcmpRepr::DstUnreachable {
                reason: IcmpDstUnreachable::PortUnreachable,
                mtu: 0,
                data: quote,
            },
            IcmpError::TimeExceeded => IcmpRepr::TimeExceeded {
                reason: IcmpTimeExceeded::TtlExpired,
                data: quote,
            },
        };
        let ip_repr = Ipv4Repr {
            src_addr: src_ip,
            dst_addr: dst_ip,
            protocol: IpProtocol::Icmp,
            payload_len: icmp_repr.buffer_len(),
            ttl: DEFAULT_TTL,
            dscp_ecn: 0xc0, // internetwork control
            dont_frag: false,
        };
        let ip_end = ethernet::HEADER_LEN + ip_repr.buffer_len() + ip_repr.payload_len;
        let len = ip_end.max(MIN_FRAME_LEN);
        let buf = buf.get_mut(..len)?;
        buf.fill(0);
        let eth_repr = EthernetRepr {
            src_addr: out_mac,
            dst_addr: dst_mac,
            vlan_tci: None,
            ethertype: EtherType::Ipv4,
        };
        eth_repr
            .emit(&mut EthernetFrame::new_unchecked(&mut *buf))
            .ok()?;
        let ip_buf = buf.get_mut(ethernet::HEADER_LEN..ip_end)?;
        ip_repr
            .emit(&mut Ipv4Packet::new_unchecked(&mut *ip_buf))
            .ok()?;
        let icmp_buf = ip_buf.get_mut(ipv4::MIN_HEADER_LEN..)?;
        icmp_repr
            .emit(&mut IcmpPacket::new_unchecked(icmp_buf))
            .ok()?;
        Some((out_port, len))
    }

    /// Builds the answer to a rejected frame (as received on `in_port`)
    /// into `buf`: a TCP reset for a TCP segment whose rule says
    /// [`Reject::TcpReset`] (sent from the address the segment was
    /// addressed to, so the client sees the connection refused), else an
    /// ICMP error. Returns `(out port, length)`, or `None` when nothing may
    /// be sent (a reset about a reset, an ICMP error about an ICMP error,
    /// broadcasts, non-first fragments).
    pub fn build_reject(
        &self,
        original: &[u8],
        in_port: u16,
        reject: Reject,
        buf: &mut [u8],
    ) -> Option<(u16, usize)> {
        match reject {
            Reject::TcpReset => self.build_tcp_reset(original, in_port, buf).or_else(|| {
                self.build_icmp_error(original, in_port, IcmpError::AdminProhibited, buf)
            }),
            Reject::AdminProhibited => {
                self.build_icmp_error(original, in_port, IcmpError::AdminProhibited, buf)
            }
            Reject::PortUnreachable => {
                self.build_icmp_error(original, in_port, IcmpError::PortUnreachable, buf)
            }
        }
    }

    fn build_tcp_reset(
        &self,
        original: &[u8],
        in_port: u16,
        buf: &mut [u8],
    ) -> Option<(u16, usize)> {
        const TCP_HEADER: usize = 20;
        let iface = self.interface(in_port)?;
        let eth = EthernetFrame::new_checked(original).ok()?;
        if eth.ethertype() != EtherType::Ipv4 || eth.dst_addr().is_multicast() {
            return None;
        }
        let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
        if ip.protocol() != IpProtocol::Tcp || ip.is_fragment() || !self.icmp_error_allowed(&ip) {
            return None;
        }
        let tcp = ip.payload();
        if tcp.len() < TCP_HEADER {
            return None;
        }
        let flags = tcp[13];
        if flags & 0x04 != 0 {
            return None; // never answer a reset
        }
        let (sport, dport) = ([tcp[0], tcp[1]], [tcp[2], tcp[3]]);
        let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
        let ack = u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]);
        let data_off = usize::from(tcp[12] >> 4) * 4;
        let payload = tcp.len().saturating_sub(data_off) as u32;
        let (dst_ip, src_ip) = (ip.src_addr(), ip.dst_addr());
        if is_martian(dst_ip) || self.is_broadcast(dst_ip) {
            return None;
        }
        let (out_port, dst_mac, out_mac) = self.reflect(iface, &eth)?;
        // RFC 793 "Reset Generation": if the segment carries an ACK the
        // reset takes its sequence number from it; otherwise sequence 0
        // and an ACK of everything the segment occupied.
        let (rst_seq, rst_ack, rst_flags) = if flags & 0x10 != 0 {
            (ack, 0, 0x04)
        } else {
            let occupied = payload + u32::from(flags & 0x02 != 0) + u32::from(flags & 0x01 != 0);
            (0, seq.wrapping_add(occupied), 0x14)
        };
        let ip_repr = Ipv4Repr {
            src_addr: src_ip,
            dst_addr: dst_ip,
            protocol: IpProtocol::Tcp,
            payload_len: TCP_HEADER,
            ttl: DEFAULT_TTL,
            dscp_ecn: 0,
            dont_frag: true,
        };
        let ip_end = ethernet::HEADER_LEN + ip_repr.buffer_len() + TCP_HEADER;
        let len = ip_end.max(MIN_FRAME_LEN);
        let buf = buf.get_mut(..len)?;
        buf.fill(0);
        EthernetRepr {
            src_addr: out_mac,
            dst_addr: dst_mac,
            vlan_tci: None,
            ethertype: EtherType::Ipv4,
        }
        .emit(&mut EthernetFrame::new_unchecked(&mut *buf))
        .ok()?;
        let ip_buf = buf.get_mut(ethernet::HEADER_LEN..ip_end)?;
        ip_repr
            .emit(&mut Ipv4Packet::new_unchecked(&mut *ip_buf))
            .ok()?;
        let seg = ip_buf.get_mut(ipv4::MIN_HEADER_LEN..)?;
        seg[0..2].copy_from_slice(&dport);
        seg[2..4].copy_from_slice(&sport);
        seg[4..8].copy_from_slice(&rst_seq.to_be_bytes());
        seg[8..12].copy_from_slice(&rst_ack.to_be_bytes());
        seg[12] = (TCP_HEADER as u8 / 4) << 4;
        seg[13] = rst_flags;
        let csum = tcp_checksum(src_ip, dst_ip, seg);
        seg[16..18].copy_from_slice(&csum.to_be_bytes());
        Some((out_port, len))
    }

    // ---- ARP ----

    fn process_arp(&self, now_ms: u64, iface: &RouterInterface, frame: &mut [u8]) -> Action {
        let Some(payload) = frame.get(ethernet::HEADER_LEN..) else {
            return Action::drop(DropReason::Truncated);
        };
        let repr = match ArpPacket::new_checked(payload).and_then(|p| ArpRepr::parse(&p)) {
            Ok(r) => r,
            Err(crate::wire::Error::Truncated) => return Action::drop(DropReason::Truncated),
            Err(_) => return Action::drop(DropReason::ArpMalformed),
        };
        let sha = repr.source_hardware_addr;
        let (spa, tpa) = (repr.source_protocol_addr, repr.target_protocol_addr);
        if !matches!(repr.operation, ArpOperation::Request | ArpOperation::Reply) {
            return Action::drop(DropReason::ArpMalformed);
        }
        if !sha.is_unicast() || sha == iface.mac {
            return Action::drop(DropReason::ArpInvalidSender);
        }
        if self.is_local(spa) {
            return Action::drop(DropReason::ArpOwnAddress);
        }
        // Learn only senders that can be neighbours on this port.
        let sender_on_link =
            !spa.is_unspecified() && on_link(iface, spa) && !self.is_broadcast(spa);
        if spa == tpa {
            // Gratuitous ARP (request or reply): refresh, never create.
            if sender_on_link {
                self.neighbours.update(iface.port, spa, sha, now_ms);
            }
            return Action::Consumed;
        }
        if !iface.addresses.iter().any(|&(a, _)| a == tpa) {
            return Action::drop(DropReason::ArpNotForUs);
        }
        match repr.operation {
            ArpOperation::Request => {
                if sender_on_link {
                    // A full table is counted by the table; the reply goes out anyway.
                    self.neighbours.learn(iface.port, spa, sha, now_ms);
                }
                let reply = ArpRepr {
                    operation: ArpOperation::Reply,
                    source_hardware_addr: iface.mac,
                    source_protocol_addr: tpa,
                    target_hardware_addr: sha,
                    target_protocol_addr: spa,
                };
                let mut eth = EthernetFrame::new_unchecked(&mut *frame);
                eth.set_dst_addr(sha);
                eth.set_src_addr(iface.mac);
                match reply.emit(&mut ArpPacket::new_unchecked(eth.payload_mut())) {
                    Ok(()) => Action::Reply,
                    Err(_) => Action::drop(DropReason::Truncated),
                }
            }
            _ => {
                if !sender_on_link {
                    return Action::drop(DropReason::ArpInvalidSender);
                }
                if self.neighbours.learn(iface.port, spa, sha, now_ms) {
                    Action::Consumed
                } else {
                    Action::drop(DropReason::NeighbourTableFull)
                }
            }
        }
    }

    // ---- IPv4 ----

    fn process_ipv4<F: Filter>(
        &self,
        now_ms: u64,
        iface: &RouterInterface,
        frame: &mut [u8],
        filter: &mut F,
    ) -> Action {
        let Some(ip_bytes) = frame.get(ethernet::HEADER_LEN..) else {
            return Action::drop(DropReason::Truncated);
        };
        match ip_bytes.first() {
            None => return Action::drop(DropReason::Truncated),
            Some(b) if b >> 4 != 4 => return Action::drop(DropReason::IpBadVersion),
            Some(_) => {}
        }
        let ip = match Ipv4Packet::new_checked(ip_bytes) {
            Ok(p) => p,
            Err(crate::wire::Error::BadHeaderLen) => {
                return Action::drop(DropReason::IpBadHeaderLen)
            }
            Err(crate::wire::Error::BadTotalLen) => return Action::drop(DropReason::IpBadLength),
            Err(_) => return Action::drop(DropReason::Truncated),
        };
        if !ip.verify_checksum() {
            return Action::drop(DropReason::IpBadChecksum);
        }
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        if is_martian(src) || self.is_local(src) || self.is_broadcast(src) {
            return Action::drop(DropReason::MartianSource);
        }
        if dst.is_multicast() {
            return Action::drop(DropReason::DstMulticast);
        }
        if dst.is_broadcast() || self.is_broadcast(dst) {
            return Action::drop(DropReason::DstBroadcast);
        }
        if is_martian(dst) {
            return Action::drop(DropReason::MartianDestination);
        }
        if !self.is_local(dst) && ip.ttl() <= 1 {
            return self.drop_with_icmp(DropReason::TtlExceeded, &ip, IcmpError::TimeExceeded);
        }

        // The stateful filter: connection tracking, NAT, policy. It may
        // rewrite the IP packet, so the header is read again afterwards.
        let ip_len = ip.total_len() as usize;
        let verdict = match frame.get_mut(ethernet::HEADER_LEN..ethernet::HEADER_LEN + ip_len) {
            Some(ip_bytes) => filter.check(now_ms, iface.port, ip_bytes, self),
            None => return Action::drop(DropReason::Truncated),
        };
        let chosen = match verdict {
            FilterVerdict::Continue => None,
            FilterVerdict::Route(route) => Some(route),
            FilterVerdict::Drop => return Action::Filtered { reject: None },
            FilterVerdict::Reject(r) => return Action::Filtered { reject: Some(r) },
        };
        let Some(ip_bytes) = frame.get(ethernet::HEADER_LEN..) else {
            return Action::drop(DropReason::Truncated);
        };
        let ip = Ipv4Packet::new_unchecked(ip_bytes);
        let dst = ip.dst_addr();
        if chosen.is_none() && self.is_local(dst) {
            return self.process_local(iface, frame);
        }

        // Forwarding. Every drop decision of the router comes before its
        // first write.
        let Some(route) = chosen.or_else(|| self.routes.lookup(dst).copied()) else {
            return self.drop_with_icmp(DropReason::NoRoute, &ip, IcmpError::NetUnreachable);
        };
        let Some(out) = self.interface(route.port) else {
            return self.drop_with_icmp(DropReason::NoRoute, &ip, IcmpError::NetUnreachable);
        };
        if ip.ttl() <= 1 {
            return self.drop_with_icmp(DropReason::TtlExceeded, &ip, IcmpError::TimeExceeded);
        }
        if ip.total_len() > out.mtu {
            return if ip.dont_frag() {
                self.drop_with_icmp(DropReason::MtuExceeded, &ip, IcmpError::FragNeeded(out.mtu))
            } else {
                Action::drop(DropReason::FragmentationNeeded)
            };
        }
        let next_hop = route.next_hop.unwrap_or(dst);
        let lookup = self.neighbours.lookup(route.port, next_hop, now_ms);

        let mut eth = EthernetFrame::new_unchecked(&mut *frame);
        eth.set_src_addr(out.mac);
        Ipv4Packet::new_unchecked(eth.payload_mut()).decrement_ttl();
        match lookup {
            Lookup::Known(mac, refresh_due) => {
                eth.set_dst_addr(mac);
                if refresh_due {
                    Action::Hold {
                        port: route.port,
                        next_hop,
                        send_arp: true,
                    }
                } else {
                    Action::Forward { port: route.port }
                }
            }
            Lookup::Unknown { send_request } => Action::Hold {
                port: route.port,
                next_hop,
                send_arp: send_request,
            },
        }
    }

    fn process_local(&self, iface: &RouterInterface, frame: &mut [u8]) -> Action {
        let mut eth = EthernetFrame::new_unchecked(&mut *frame);
        let peer_mac = eth.src_addr();
        let Ok(mut ip) = Ipv4Packet::new_checked(eth.payload_mut()) else {
            return Action::drop(DropReason::Truncated);
        };
        if ip.protocol() != IpProtocol::Icmp || ip.is_fragment() {
            return Action::drop(DropReason::LocalUnsupported);
        }
        let Ok(icmp) = IcmpPacket::new_checked(ip.payload_mut()) else {
            return Action::drop(DropReason::LocalUnsupported);
        };
        if icmp.msg_type() != crate::wire::IcmpMessage::EchoRequest || icmp.msg_code() != 0 {
            return Action::drop(DropReason::LocalUnsupported);
        }
        if !icmp.verify_checksum() {
            return Action::drop(DropReason::IcmpBadChecksum);
        }
        // Echo reply in place, from the address that was pinged, back on
        // the input port to the MAC that sent the request.
        let mut icmp = icmp;
        icmp.echo_request_to_reply();
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        ip.set_src_addr(dst);
        ip.set_dst_addr(src);
        ip.set_ttl(DEFAULT_TTL);
        ip.fill_checksum();
        eth.set_dst_addr(peer_mac);
        eth.set_src_addr(iface.mac);
        Action::Reply
    }

    // ---- helpers ----

    fn drop_with_icmp<T: AsRef<[u8]>>(
        &self,
        reason: DropReason,
        ip: &Ipv4Packet<T>,
        err: IcmpError,
    ) -> Action {
        let icmp = self.icmp_error_allowed(ip).then_some(err);
        Action::Drop { reason, icmp }
    }

    /// RFC 1812 4.3.2.7: no ICMP error about an ICMP error, about a
    /// fragment other than the first, or about a broadcast/multicast.
    fn icmp_error_allowed<T: AsRef<[u8]>>(&self, ip: &Ipv4Packet<T>) -> bool {
        if ip.is_non_first_fragment() {
            return false;
        }
        let dst = ip.dst_addr();
        if dst.is_multicast() || dst.is_broadcast() || self.is_broadcast(dst) {
            return false;
        }
        if ip.protocol() == IpProtocol::Icmp {
            return match ip.payload().first() {
                Some(&t) => !crate::wire::IcmpMessage::from(t).is_error(),
                None => false,
            };
        }
        true
    }

    fn is_broadcast(&self, addr: Ipv4Addr) -> bool {
        addr.is_broadcast() || self.broadcasts.contains(&addr)
    }

    /// Back to the sender of `eth` on `iface`: `(port, dst MAC, src MAC)`.
    fn reflect<T: AsRef<[u8]>>(
        &self,
        iface: &RouterInterface,
        eth: &EthernetFrame<T>,
    ) -> Option<(u16, EthernetAddress, EthernetAddress)> {
        let peer = eth.src_addr();
        if !peer.is_unicast() || self.interfaces.iter().any(|i| i.mac == peer) {
            return None;
        }
        Some((iface.port, peer, iface.mac))
    }
}

/// Addresses that can be neither a source nor a routed destination:
/// 0.0.0.0/8, 127.0.0.0/8, 224.0.0.0/4 (multicast), 240.0.0.0/4 (reserved,
/// including the limited broadcast).
/// The TCP checksum of `segment` (checksum field zero) between two
/// addresses (RFC 793 pseudo-header).
fn tcp_checksum(src: Ipv4Addr, dst: Ipv4Addr, segment: &[u8]) -> u16 {
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&src.octets());
    pseudo[4..8].copy_from_slice(&dst.octets());
    pseudo[9] = 6;
    pseudo[10..12].copy_from_slice(&(segment.len() as u16).to_be_bytes());
    !checksum::combine(&[checksum::data(&pseudo), checksum::data(segment)])
}

fn is_martian(a: Ipv4Addr) -> bool {
    let o = a.octets();
    o[0] == 0 || o[0] == 127 || o[0] >= 224
}

/// True when `addr` is inside one of the networks of `iface`.
fn on_link(iface: &RouterInterface, addr: Ipv4Addr) -> bool {
    iface
        .addresses
        .iter()
        .any(|&(a, len)| lpm::contains(a, len, addr))
}

/// The interface address to speak to `target` from: one in the same
/// network if any, else the first.
fn source_for(iface: &RouterInterface, target: Ipv4Addr) -> Option<Ipv4Addr> {
    iface
        .addresses
        .iter()
        .find(|&&(a, len)| lpm::contains(a, len, target))
        .or_else(|| iface.addresses.first())
        .map(|&(a, _)| a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::neigh::NeighbourTimers;
    use crate::wire::checksum;
    use proptest::prelude::*;

    const TIMERS: NeighbourTimers = NeighbourTimers {
        reachable_ms: 30_000,
        timeout_ms: 60_000,
        retry_ms: 1_000,
    };

    const LAN: u16 = 0;
    const WAN: u16 = 1;
    const SMALL: u16 = 2;
    const LAN_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 1]);
    const WAN_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 2]);
    const SMALL_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 3]);
    const CLIENT_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 1, 0x0a]);
    const SERVER_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 2, 0x0a]);
    const GW_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 2, 0xfe]);

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn interfaces() -> Vec<RouterInterface> {
        vec![
            RouterInterface {
                port: LAN,
                mac: LAN_MAC,
                addresses: vec![(ip("198.18.1.1"), 24)],
                mtu: 1500,
            },
            RouterInterface {
                port: WAN,
                mac: WAN_MAC,
                addresses: vec![(ip("198.18.2.1"), 24)],
                mtu: 1500,
            },
            RouterInterface {
                port: SMALL,
                mac: SMALL_MAC,
                addresses: vec![(ip("198.19.69.1"), 30)],
                mtu: 576,
            },
        ]
    }

    fn static_routes() -> Vec<StaticRoute> {
        vec![
            StaticRoute {
                destination: ip("0.0.0.0"),
                prefix_len: 0,
                via: Some(ip("198.18.2.254")),
                port: None,
            },
            StaticRoute {
                destination: ip("198.19.0.0"),
                prefix_len: 24,
                via: Some(ip("198.18.1.254")),
                port: None,
            },
        ]
    }

    fn router_with(routes: &[StaticRoute], capacity: usize) -> Router {
        Router::new(
            interfaces(),
            routes,
            Arc::new(NeighbourTable::new(capacity, TIMERS)),
        )
        .unwrap()
    }

    fn router() -> Router {
        router_with(&static_routes(), 64)
    }

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// A captured `ping -c1 198.18.1.1` from 198.18.1.10 (iputils, 56 data bytes).
    fn captured_echo_request() -> Vec<u8> {
        hex("02000000000102000000010a08004500
             00543b1c40004001715dc612010ac612
             01010800eac11c2b00018f3a5b660000
             00003c9e0b0000000000101112131415
             161718191a1b1c1d1e1f202122232425
             262728292a2b2c2d2e2f303132333435
             3637")
    }

    /// A captured ARP request: who-has 198.18.1.1 tell 198.18.1.10, padded to 60 bytes.
    fn captured_arp_request() -> Vec<u8> {
        hex("ffffffffffff02000000010a08060001
             080006040001 02000000010a c612010a
             000000000000 c6120101
             000000000000000000000000000000000000")
    }

    fn eth(dst: EthernetAddress, src: EthernetAddress, ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst.0);
        f.extend_from_slice(&src.0);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    struct Ip {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        proto: u8,
        ttl: u8,
        df: bool,
        mf: bool,
        frag_offset: u16,
        options: Vec<u8>,
    }

    impl Ip {
        fn new(src: &str, dst: &str, proto: u8) -> Ip {
            Ip {
                src: ip(src),
                dst: ip(dst),
                proto,
                ttl: 64,
                df: true,
                mf: false,
                frag_offset: 0,
                options: vec![],
            }
        }

        fn build(&self, payload: &[u8]) -> Vec<u8> {
            let hl = 20 + self.options.len();
            let mut b = vec![0u8; hl];
            b[0] = 0x40 | (hl / 4) as u8;
            b[2..4].copy_from_slice(&((hl + payload.len()) as u16).to_be_bytes());
            b[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
            let flags =
                (u16::from(self.df) << 14) | (u16::from(self.mf) << 13) | (self.frag_offset >> 3);
            b[6..8].copy_from_slice(&flags.to_be_bytes());
            b[8] = self.ttl;
            b[9] = self.proto;
            b[12..16].copy_from_slice(&self.src.octets());
            b[16..20].copy_from_slice(&self.dst.octets());
            b[20..].copy_from_slice(&self.options);
            let ck = checksum::checksum(&b);
            b[10..12].copy_from_slice(&ck.to_be_bytes());
            b.extend_from_slice(payload);
            b
        }
    }

    fn icmp_msg(t: u8, code: u8, rest: [u8; 4], data: &[u8]) -> Vec<u8> {
        let mut b = vec![t, code, 0, 0];
        b.extend_from_slice(&rest);
        b.extend_from_slice(data);
        let ck = checksum::checksum(&b);
        b[2..4].copy_from_slice(&ck.to_be_bytes());
        b
    }

    fn echo(data: &[u8]) -> Vec<u8> {
        icmp_msg(8, 0, [0x1c, 0x2b, 0, 1], data)
    }

    fn udp() -> Vec<u8> {
        // src port 40000, dst 53, length 12, checksum 0, 4 bytes data.
        vec![0x9c, 0x40, 0x00, 0x35, 0x00, 0x0c, 0, 0, 1, 2, 3, 4]
    }

    /// An IPv4 frame from the client (LAN) to our LAN MAC.
    fn from_client(ipb: &Ip, payload: &[u8]) -> Vec<u8> {
        eth(LAN_MAC, CLIENT_MAC, 0x0800, &ipb.build(payload))
    }

    fn arp_frame(
        dst: EthernetAddress,
        op: u16,
        sha: EthernetAddress,
        spa: &str,
        tha: EthernetAddress,
        tpa: &str,
    ) -> Vec<u8> {
        let mut p = vec![0, 1, 8, 0, 6, 4];
        p.extend_from_slice(&op.to_be_bytes());
        p.extend_from_slice(&sha.0);
        p.extend_from_slice(&ip(spa).octets());
        p.extend_from_slice(&tha.0);
        p.extend_from_slice(&ip(tpa).octets());
        eth(dst, sha, 0x0806, &p)
    }

    fn dropped(reason: DropReason) -> Action {
        Action::Drop { reason, icmp: None }
    }

    fn ip_of(frame: &[u8]) -> Ipv4Packet<&[u8]> {
        Ipv4Packet::new_checked(&frame[14..]).unwrap()
    }

    fn mac_at(frame: &[u8], at: usize) -> EthernetAddress {
        EthernetAddress::from_bytes(&frame[at..at + 6]).unwrap()
    }

    fn learn_server(r: &Router) {
        assert!(r.neighbours().learn(WAN, ip("198.18.2.10"), SERVER_MAC, 0));
    }

    // ---------------- ARP ----------------

    #[test]
    fn arp_request_for_our_address_is_answered_in_place_and_sender_learned() {
        let r = router();
        let mut f = captured_arp_request();
        let len = f.len();
        assert_eq!(r.process(0, LAN, &mut f), Action::Reply);
        assert_eq!(f.len(), len);
        assert_eq!(mac_at(&f, 0), CLIENT_MAC);
        assert_eq!(mac_at(&f, 6), LAN_MAC);
        let a = ArpRepr::parse(&ArpPacket::new_checked(&f[14..]).unwrap()).unwrap();
        assert_eq!(
            a,
            ArpRepr {
                operation: ArpOperation::Reply,
                source_hardware_addr: LAN_MAC,
                source_protocol_addr: ip("198.18.1.1"),
                target_hardware_addr: CLIENT_MAC,
                target_protocol_addr: ip("198.18.1.10"),
            }
        );
        assert_eq!(
            r.neighbours().lookup(LAN, ip("198.18.1.10"), 1),
            Lookup::Known(CLIENT_MAC, false)
        );
    }

    #[test]
    fn arp_request_sent_to_multicast_mac_is_accepted() {
        let r = router();
        let mut f = arp_frame(
            EthernetAddress([1, 0, 0x5e, 0, 0, 1]),
            1,
            CLIENT_MAC,
            "198.18.1.10",
            EthernetAddress::UNSPECIFIED,
            "198.18.1.1",
        );
        assert_eq!(r.process(0, LAN, &mut f), Action::Reply);
    }

    #[test]
    fn arp_request_for_another_address_is_dropped_arp_not_for_us() {
        let r = router();
        let mut f = arp_frame(
            EthernetAddress::BROADCAST,
            1,
            CLIENT_MAC,
            "198.18.1.10",
            EthernetAddress::UNSPECIFIED,
            "198.18.1.20",
        );
        let orig = f.clone();
        assert_eq!(r.process(0, LAN, &mut f), dropped(DropReason::ArpNotForUs));
        assert_eq!(f, orig);
        assert!(r.neighbours().is_empty());
    }

    #[test]
    fn arp_request_for_address_of_another_port_is_not_answered() {
        let r = router();
        let mut f = arp_frame(
            EthernetAddress::BROADCAST,
            1,
            CLIENT_MAC,
            "198.18.1.10",
            EthernetAddress::UNSPECIFIED,
            "198.18.2.1",
        );
        assert_eq!(r.process(0, LAN, &mut f), dropped(DropReason::ArpNotForUs));
    }

    #[test]
    fn arp_reply_to_us_is_learned_and_consumed() {
        let r = router();
        let mut f = arp_frame(WAN_MAC, 2, SERVER_MAC, "198.18.2.10", WAN_MAC, "198.18.2.1");
        assert_eq!(r.process(5, WAN, &mut f), Action::Consumed);
        assert_eq!(
            r.neighbours().resolve(WAN, ip("198.18.2.10"), 6),
            Resolution::Resolved(SERVER_MAC)
        );
    }

    #[test]
    fn arp_reply_from_off_link_sender_is_not_learned() {
        let r = router();
        let mut f = arp_frame(WAN_MAC, 2, SERVER_MAC, "203.0.113.9", WAN_MAC, "198.18.2.1");
        assert_eq!(
            r.process(5, WAN, &mut f),
            dropped(DropReason::ArpInvalidSender)
        );
        assert!(r.neighbours().is_empty());
    }

    #[test]
    fn arp_request_from_off_link_sender_is_answered_but_not_learned() {
        let r = router();
        let mut f = arp_frame(
            EthernetAddress::BROADCAST,
            1,
            CLIENT_MAC,
            "203.0.113.9",
            EthernetAddress::UNSPECIFIED,
            "198.18.1.1",
        );
        assert_eq!(r.process(0, LAN, &mut f), Action::Reply);
        assert!(r.neighbours().is_empty());
    }

    #[test]
    fn arp_probe_from_unspecified_address_is_answered_not_learned() {
        let r = router();
        let mut f = arp_frame(
            EthernetAddress::BROADCAST,
            1,
            CLIENT_MAC,
            "0.0.0.0",
            EthernetAddress::UNSPECIFIED,
            "198.18.1.1",
        );
        assert_eq!(r.process(0, LAN, &mut f), Action::Reply);
        assert!(r.neighbours().is_empty());
    }

    #[test]
    fn gratuitous_arp_updates_existing_entry_only() {
        let r = router();
        let new_mac = EthernetAddress([2, 0, 0, 0, 2, 0xbb]);
        let mut garp = arp_frame(
            EthernetAddress::BROADCAST,
            1,
            new_mac,
            "198.18.2.10",
            EthernetAddress::UNSPECIFIED,
            "198.18.2.10",
        );
        assert_eq!(r.process(0, WAN, &mut garp.clone()), Action::Consumed);
        assert!(
            r.neighbours().is_empty(),
            "gratuitous ARP must not create entries"
        );
        learn_server(&r);
        assert_eq!(r.process(10, WAN, &mut garp), Action::Consumed);
        assert_eq!(
            r.neighbours().resolve(WAN, ip("198.18.2.10"), 11),
            Resolution::Resolved(new_mac)
        );
        // Gratuitous reply form too.
        let mut garp2 = arp_frame(
            EthernetAddress::BROADCAST,
            2,
            SERVER_MAC,
            "198.18.2.10",
            EthernetAddress::BROADCAST,
            "198.18.2.10",
        );
        assert_eq!(r.process(20, WAN, &mut garp2), Action::Consumed);
        assert_eq!(
            r.neighbours().resolve(WAN, ip("198.18.2.10"), 21),
            Resolution::Resolved(SERVER_MAC)
        );
    }

    #[test]
    fn arp_claiming_our_own_address_is_dropped() {
        let r = router();
        let mut f = arp_frame(
            EthernetAddress::BROADCAST,
            1,
            CLIENT_MAC,
            "198.18.1.1",
            EthernetAddress::UNSPECIFIED,
            "198.18.1.1",
        );
        assert_eq!(
            r.process(0, LAN, &mut f),
            dropped(DropReason::ArpOwnAddress)
        );
    }

    #[test]
    fn arp_with_multicast_sender_mac_is_dropped() {
        let r = router();
        let mut f = arp_frame(
            EthernetAddress::BROADCAST,
            1,
            CLIENT_MAC,
            "198.18.1.10",
            EthernetAddress::UNSPECIFIED,
            "198.18.1.1",
        );
        f[22] = 0x01; // sender hardware address becomes multicast
        assert_eq!(
            r.process(0, LAN, &mut f),
            dropped(DropReason::ArpInvalidSender)
        );
    }

    #[test]
    fn malformed_and_truncated_arp_are_dropped() {
        let r = router();
        let good = arp_frame(
            EthernetAddress::BROADCAST,
            1,
            CLIENT_MAC,
            "198.18.1.10",
            EthernetAddress::UNSPECIFIED,
            "198.18.1.1",
        );
        let mut short = good[..14 + 20].to_vec();
        assert_eq!(
            r.process(0, LAN, &mut short),
            dropped(DropReason::Truncated)
        );
        let mut bad_len = good.clone();
        bad_len[14 + 4] = 16;
        assert_eq!(
            r.process(0, LAN, &mut bad_len),
            dropped(DropReason::ArpMalformed)
        );
        let mut bad_op = good.clone();
        bad_op[14 + 7] = 9;
        assert_eq!(
            r.process(0, LAN, &mut bad_op),
            dropped(DropReason::ArpMalformed)
        );
        let mut bad_htype = good;
        bad_htype[14 + 1] = 6;
        assert_eq!(
            r.process(0, LAN, &mut bad_htype),
            dropped(DropReason::ArpMalformed)
        );
    }

    #[test]
    fn arp_reply_into_full_table_is_dropped_neighbour_table_full() {
        let r = router_with(&static_routes(), 1);
        learn_server(&r);
        let mut f = arp_frame(WAN_MAC, 2, GW_MAC, "198.18.2.254", WAN_MAC, "198.18.2.1");
        assert_eq!(
            r.process(0, WAN, &mut f),
            dropped(DropReason::NeighbourTableFull)
        );
        assert_eq!(r.neighbours().insert_failures(), 1);
    }

    // ---------------- Ethernet ----------------

    #[test]
    fn frame_for_another_mac_is_dropped_not_for_us() {
        let r = router();
        let mut f = from_client(&Ip::new("198.18.1.10", "198.18.2.10", 17), &udp());
        f[5] = 0x99;
        assert_eq!(r.process(0, LAN, &mut f), dropped(DropReason::NotForUs));
    }

    #[test]
    fn broadcast_ipv4_frame_is_dropped_not_for_us() {
        let r = router();
        let mut f = eth(
            EthernetAddress::BROADCAST,
            CLIENT_MAC,
            0x0800,
            &Ip::new("198.18.1.10", "198.18.2.10", 17).build(&udp()),
        );
        assert_eq!(r.process(0, LAN, &mut f), dropped(DropReason::NotForUs));
    }

    #[test]
    fn frame_with_multicast_source_mac_is_dropped() {
        let r = router();
        let mut f = eth(
            LAN_MAC,
            EthernetAddress::BROADCAST,
            0x0800,
            &Ip::new("198.18.1.10", "198.18.2.10", 17).build(&udp()),
        );
        assert_eq!(
            r.process(0, LAN, &mut f),
            dropped(DropReason::InvalidSrcMac)
        );
    }

    #[test]
    fn vlan_tagged_frame_is_dropped_vlan() {
        let r = router();
        let inner = Ip::new("198.18.1.10", "198.18.2.10", 17).build(&udp());
        let mut tagged = vec![0x00, 0x0a, 0x08, 0x00];
        tagged.extend_from_slice(&inner);
        let mut f = eth(LAN_MAC, CLIENT_MAC, 0x8100, &tagged);
        assert_eq!(r.process(0, LAN, &mut f), dropped(DropReason::Vlan));
    }

    #[test]
    fn ipv6_frame_is_dropped_unsupported_ethertype() {
        let r = router();
        let mut f = eth(LAN_MAC, CLIENT_MAC, 0x86dd, &[0x60; 40]);
        assert_eq!(
            r.process(0, LAN, &mut f),
            dropped(DropReason::UnsupportedEthertype)
        );
    }

    #[test]
    fn short_frames_are_dropped_truncated() {
        let r = router();
        let full = from_client(&Ip::new("198.18.1.10", "198.18.2.10", 17), &udp());
        for len in [0, 5, 13, 14, 20, 33] {
            let mut f = full[..len].to_vec();
            assert_eq!(
                r.process(0, LAN, &mut f),
                dropped(DropReason::Truncated),
                "len {len}"
            );
        }
        // The IP total length claims more than the frame holds.
        let mut f = full[..full.len() - 1].to_vec();
        assert_eq!(r.process(0, LAN, &mut f), dropped(DropReason::Truncated));
    }

    #[test]
    fn frame_on_unknown_port_is_dropped() {
        let r = router();
        let mut f = captured_echo_request();
        assert_eq!(r.process(0, 7, &mut f), dropped(DropReason::UnknownPort));
    }

    // ---------------- IPv4 header checks ----------------

    #[test]
    fn bad_ip_version_is_dropped_ip_bad_version() {
        let r = router();
        let mut f = from_client(&Ip::new("198.18.1.10", "198.18.2.10", 17), &udp());
        f[14] = 0x65;
        assert_eq!(r.process(0, LAN, &mut f), dropped(DropReason::IpBadVersion));
    }

    #[test]
    fn ihl_below_five_is_dropped_ip_bad_header_len() {
        let r = router();
        let mut f = from_client(&Ip::new("198.18.1.10", "198.18.2.10", 17), &udp());
        f[14] = 0x44;
        assert_eq!(
            r.process(0, LAN, &mut f),
            dropped(DropReason::IpBadHeaderLen)
        );
    }

    #[test]
    fn total_length_below_header_is_dropped_ip_bad_length() {
        let r = router();
        let mut f = from_client(&Ip::new("198.18.1.10", "198.18.2.10", 17), &udp());
        f[16..18].copy_from_slice(&19u16.to_be_bytes());
        assert_eq!(r.process(0, LAN, &mut f), dropped(DropReason::IpBadLength));
    }

    #[test]
    fn bad_header_checksum_is_dropped_ip_bad_checksum() {
        let r = router();
        let mut f = from_client(&Ip::new("198.18.1.10", "198.18.2.10", 17), &udp());
        f[14 + 10] ^= 0x01;
        assert_eq!(
            r.process(0, LAN, &mut f),
            dropped(DropReason::IpBadChecksum)
        );
    }

    #[test]
    fn martian_sources_are_dropped() {
        let r = router();
        for src in [
            "0.0.0.0",
            "0.1.2.3",
            "127.0.0.1",
            "224.0.0.5",
            "240.0.0.1",
            "255.255.255.255",
            "198.18.1.1",
            "198.18.2.1",
            "198.18.1.255",
        ] {
            let mut f = from_client(&Ip::new(src, "198.18.2.10", 17), &udp());
            assert_eq!(
                r.process(0, LAN, &mut f),
                dropped(DropReason::MartianSource),
                "{src}"
            );
        }
    }

    #[test]
    fn broadcast_and_multicast_destinations_are_dropped() {
        let r = router();
        for (dst, reason) in [
            ("255.255.255.255", DropReason::DstBroadcast),
            ("198.18.1.255", DropReason::DstBroadcast),
            ("198.18.2.255", DropReason::DstBroadcast),
            ("224.0.0.5", DropReason::DstMulticast),
            ("239.1.2.3", DropReason::DstMulticast),
        ] {
            let mut f = from_client(&Ip::new("198.18.1.10", dst, 17), &udp());
            assert_eq!(r.process(0, LAN, &mut f), dropped(reason), "{dst}");
        }
    }

    #[test]
    fn martian_destinations_are_dropped() {
        let r = router();
        for dst in ["127.0.0.1", "0.1.2.3", "240.0.0.1"] {
            let mut f = from_client(&Ip::new("198.18.1.10", dst, 17), &udp());
            assert_eq!(
                r.process(0, LAN, &mut f),
                dropped(DropReason::MartianDestination),
                "{dst}"
            );
        }
    }

    // ---------------- local delivery ----------------

    #[test]
    fn echo_request_to_our_address_is_answered_in_place() {
        let r = router();
        let mut f = captured_echo_request();
        let req = f.clone();
        assert_eq!(r.process(0, LAN, &mut f), Action::Reply);
        assert_eq!(f.len(), req.len());
        assert_eq!(mac_at(&f, 0), CLIENT_MAC);
        assert_eq!(mac_at(&f, 6), LAN_MAC);
        let p = ip_of(&f);
        assert!(p.verify_checksum());
        assert_eq!(p.src_addr(), ip("198.18.1.1"));
        assert_eq!(p.dst_addr(), ip("198.18.1.10"));
        assert_eq!(p.ttl(), DEFAULT_TTL);
        let icmp = IcmpPacket::new_checked(p.payload()).unwrap();
        match IcmpRepr::parse(&icmp).unwrap() {
            IcmpRepr::EchoReply {
                ident,
                seq_no,
                data,
            } => {
                assert_eq!((ident, seq_no), (0x1c2b, 1));
                assert_eq!(data, &req[42..]);
            }
            other => panic!("not an echo reply: {other:?}"),
        }
    }

    #[test]
    fn echo_request_to_address_of_another_port_is_answered_from_in_port() {
        let r = router();
        let mut f = from_client(&Ip::new("198.18.1.10", "198.18.2.1", 1), &echo(b"hello"));
        assert_eq!(r.process(0, LAN, &mut f), Action::Reply);
        assert_eq!(mac_at(&f, 6), LAN_MAC);
        assert_eq!(ip_of(&f).src_addr(), ip("198.18.2.1"));
    }

    #[test]
    fn echo_request_with_options_is_answered_with_valid_checksums() {
        let r = router();
        let mut ipb = Ip::new("198.18.1.10", "198.18.1.1", 1);
        ipb.options = vec![0x94, 0x04, 0, 0];
        let mut f = from_client(&ipb, &echo(b"opt"));
        assert_eq!(r.process(0, LAN, &mut f), Action::Reply);
        let p = ip_of(&f);
        assert!(p.verify_checksum());
        assert!(IcmpPacket::new_checked(p.payload())
            .unwrap()
            .verify_checksum());
    }

    #[test]
    fn echo_request_with_bad_icmp_checksum_is_dropped() {
        let r = router();
        let mut payload = echo(b"x");
        payload[3] ^= 0xff;
        let mut f = from_client(&Ip::new("198.18.1.10", "198.18.1.1", 1), &payload);
        assert_eq!(
            r.process(0, LAN, &mut f),
            dropped(DropReason::IcmpBadChecksum)
        );
    }

    #[test]
    fn other_traffic_to_our_address_is_local_unsupported() {
        let r = router();
        let mut f = from_client(&Ip::new("198.18.1.10", "198.18.1.1", 17), &udp());
        assert_eq!(
            r.process(0, LAN, &mut f),
            dropped(DropReason::LocalUnsupported)
        );
        let mut reply = from_client(
            &Ip::new("198.18.1.10", "198.18.1.1", 1),
            &icmp_msg(0, 0, [0; 4], b""),
        );
        assert_eq!(
            r.process(0, LAN, &mut reply),
            dropped(DropReason::LocalUnsupported)
        );
        let mut frag = Ip::new("198.18.1.10", "198.18.1.1", 1);
        frag.df = false;
        frag.mf = true;
        let mut f = from_client(&frag, &echo(b"frag"));
        assert_eq!(
            r.process(0, LAN, &mut f),
            dropped(DropReason::LocalUnsupported)
        );
    }

    // ---------------- forwarding ----------------

    #[test]
    fn forward_to_known_neighbour_rewrites_macs_ttl_and_checksum() {
        let r = router();
        learn_server(&r);
        let mut f = from_client(&Ip::new("198.18.1.10", "198.18.2.10", 17), &udp());
        let orig = f.clone();
        assert_eq!(r.process(1, LAN, &mut f), Action::Forward { port: WAN });
        assert_eq!(mac_at(&f, 0), SERVER_MAC);
        assert_eq!(mac_at(&f, 6), WAN_MAC);
        let p = ip_of(&f);
        assert_eq!(p.ttl(), 63);
        assert!(p.verify_checksum());
        // Nothing else changed.
        assert_eq!(f.len(), orig.len());
        assert_eq!(f[12..22], orig[12..22]);
        assert_eq!(f[14 + 9], orig[14 + 9]);
        assert_eq!(f[14 + 12..], orig[14 + 12..]);
    }

    #[test]
    fn forward_via_gateway_uses_gateway_mac() {
        let r = router();
        assert!(r.neighbours().learn(WAN, ip("198.18.2.254"), GW_MAC, 0));
        let mut f = from_client(&Ip::new("198.18.1.10", "203.0.113.7", 6), &[0u8; 20]);
        assert_eq!(r.process(1, LAN, &mut f), Action::Forward { port: WAN });
        assert_eq!(mac_at(&f, 0), GW_MAC);
        // Destination address unchanged: only the link layer goes to the gateway.
        assert_eq!(ip_of(&f).dst_addr(), ip("203.0.113.7"));
    }

    #[test]
    fn forward_keeps_options_and_ethernet_padding() {
        let r = router();
        learn_server(&r);
        let mut ipb = Ip::new("198.18.1.10", "198.18.2.10", 17);
        ipb.options = vec![1, 1, 1, 0]; // NOPs and end of list
        let mut f = from_client(&ipb, &[]);
        f.resize(60, 0);
        assert_eq!(r.process(1, LAN, &mut f), Action::Forward { port: WAN });
        assert_eq!(f.len(), 60);
        assert!(ip_of(&f).verify_checksum());
        assert_eq!(ip_of(&f).options(), &[1, 1, 1, 0]);
    }

    #[test]
    fn hairpin_forwarding_back_out_of_in_port_is_allowed() {
        let r = router();
        assert!(r.neighbours().learn(LAN, ip("198.18.1.254"), GW_MAC, 0));
        let mut f = from_client(&Ip::new("198.18.1.10", "198.19.0.5", 17), &udp());
        assert_eq!(r.process(1, LAN, &mut f), Action::Forward { port: LAN });
        assert_eq!(mac_at(&f, 0), GW_MAC);
        assert_eq!(mac_at(&f, 6), LAN_MAC);
    }

    #[test]
    fn stale_neighbour_is_still_used_and_one_packet_triggers_a_refresh() {
        let r = router();
        learn_server(&r);
        let now = TIMERS.reachable_ms + 1;
        let pkt = from_client(&Ip::new("198.18.1.10", "198.18.2.10", 17), &udp());
        let mut first = pkt.clone();
        assert_eq!(
            r.process(now, LAN, &mut first),
            Action::Hold {
                port: WAN,
                next_hop: ip("198.18.2.10"),
                send_arp: true
            }
        );
        // That frame is complete: finishing it is immediate and changes nothing.
        let before = first.clone();
        assert_eq!(mac_at(&first, 0), SERVER_MAC);
        assert_eq!(
            r.finish_held(now, &mut first, WAN, ip("198.18.2.10")),
            HeldResult::Ready
        );
        assert_eq!(first, before);
        // Other packets go straight out until the next retry interval.
        let mut f = pkt.clone();
        assert_eq!(
            r.process(now + 1, LAN, &mut f),
            Action::Forward { port: WAN }
        );
        assert_eq!(f, first);
        let mut f = pkt;
        assert!(matches!(
            r.process(now + TIMERS.retry_ms, LAN, &mut f),
            Action::Hold { send_arp: true, .. }
        ));
    }

    #[test]
    fn unknown_next_hop_is_held_then_finished_after_arp_reply() {
        let r = router();
        let pkt = from_client(&Ip::new("198.18.1.10", "198.18.2.10", 17), &udp());
        let mut f = pkt.clone();
        let hold = Action::Hold {
            port: WAN,
            next_hop: ip("198.18.2.10"),
            send_arp: true,
        };
        assert_eq!(r.process(0, LAN, &mut f), hold);
        // Rewritten except the destination MAC.
        assert_eq!(mac_at(&f, 0), LAN_MAC);
        assert_eq!(mac_at(&f, 6), WAN_MAC);
        assert_eq!(ip_of(&f).ttl(), 63);
        assert!(ip_of(&f).verify_checksum());
        // A second packet to the same host does not ask again.
        let mut f2 = pkt.clone();
        assert_eq!(
            r.process(10, LAN, &mut f2),
            Action::Hold {
                port: WAN,
                next_hop: ip("198.18.2.10"),
                send_arp: false
            }
        );
        assert_eq!(
            r.finish_held(20, &mut f, WAN, ip("198.18.2.10")),
            HeldResult::Waiting
        );
        // The ARP reply arrives.
        let mut reply = arp_frame(WAN_MAC, 2, SERVER_MAC, "198.18.2.10", WAN_MAC, "198.18.2.1");
        assert_eq!(r.process(30, WAN, &mut reply), Action::Consumed);
        assert_eq!(
            r.finish_held(40, &mut f, WAN, ip("198.18.2.10")),
            HeldResult::Ready
        );
        assert_eq!(mac_at(&f, 0), SERVER_MAC);
        let mut direct = pkt;
        assert_eq!(
            r.process(50, LAN, &mut direct),
            Action::Forward { port: WAN }
        );
        assert_eq!(direct, f);
    }

    #[test]
    fn held_frame_is_unresolvable_after_unanswered_requests() {
        let r = router();
        let mut f = from_client(&Ip::new("198.18.1.10", "198.18.2.10", 17), &udp());
        assert!(matches!(
            r.process(0, LAN, &mut f),
            Action::Hold { send_arp: true, .. }
        ));
        assert_eq!(
            r.finish_held(2_999, &mut f, WAN, ip("198.18.2.10")),
            HeldResult::Waiting
        );
        assert_eq!(
            r.finish_held(3_000, &mut f, WAN, ip("198.18.2.10")),
            HeldResult::Unresolvable
        );
        assert_eq!(
            r.finish_held(0, &mut f[..5], WAN, ip("198.18.2.10")),
            HeldResult::Unresolvable
        );
    }

    #[test]
    fn ttl_one_or_zero_is_dropped_with_time_exceeded() {
        let r = router();
        learn_server(&r);
        for ttl in [0, 1] {
            let mut ipb = Ip::new("198.18.1.10", "198.18.2.10", 17);
            ipb.ttl = ttl;
            let mut f = from_client(&ipb, &udp());
            let orig = f.clone();
            assert_eq!(
                r.process(0, LAN, &mut f),
                Action::Drop {
                    reason: DropReason::TtlExceeded,
                    icmp: Some(IcmpError::TimeExceeded)
                }
            );
            assert_eq!(f, orig, "a dropped frame is left untouched");
        }
        let mut ipb = Ip::new("198.18.1.10", "198.18.2.10", 17);
        ipb.ttl = 2;
        assert!(matches!(
            r.process(0, LAN, &mut from_client(&ipb, &udp())),
            Action::Forward { .. }
        ));
    }

    #[test]
    fn no_route_is_dropped_with_net_unreachable() {
        let r = router_with(&[], 16);
        let mut f = from_client(&Ip::new("198.18.1.10", "203.0.113.7", 17), &udp());
        assert_eq!(
            r.process(0, LAN, &mut f),
            Action::Drop {
                reason: DropReason::NoRoute,
                icmp: Some(IcmpError::NetUnreachable)
            }
        );
    }

    #[test]
    fn oversize_packet_with_df_is_dropped_with_frag_needed() {
        let r = router();
        let mut f = from_client(&Ip::new("198.18.1.10", "198.19.69.2", 17), &[0u8; 600]);
        assert_eq!(
            r.process(0, LAN, &mut f),
            Action::Drop {
                reason: DropReason::MtuExceeded,
                icmp: Some(IcmpError::FragNeeded(576))
            }
        );
    }

    #[test]
    fn oversize_packet_without_df_is_dropped_fragmentation_needed() {
        let r = router();
        let mut ipb = Ip::new("198.18.1.10", "198.19.69.2", 17);
        ipb.df = false;
        let mut f = from_client(&ipb, &[0u8; 600]);
        assert_eq!(
            r.process(0, LAN, &mut f),
            dropped(DropReason::FragmentationNeeded)
        );
        // Exactly the MTU fits.
        let mut f = from_client(&ipb, &[0u8; 556]);
        assert!(matches!(
            r.process(0, LAN, &mut f),
            Action::Hold { port: SMALL, .. }
        ));
    }

    #[test]
    fn no_icmp_error_about_an_icmp_error() {
        let r = router();
        let mut ipb = Ip::new("198.18.1.10", "198.18.2.10", 1);
        ipb.ttl = 1;
        let err = icmp_msg(3, 3, [0; 4], &[0x45; 28]);
        let mut f = from_client(&ipb, &err);
        assert_eq!(r.process(0, LAN, &mut f), dropped(DropReason::TtlExceeded));
        assert_eq!(
            r.build_icmp_error(&f, LAN, IcmpError::TimeExceeded, &mut [0u8; 1514]),
            None
        );
        // An echo request is not an error: traceroute with ICMP gets its answer.
        let mut f = from_client(&ipb, &echo(b"trace"));
        assert_eq!(
            r.process(0, LAN, &mut f),
            Action::Drop {
                reason: DropReason::TtlExceeded,
                icmp: Some(IcmpError::TimeExceeded)
            }
        );
    }

    #[test]
    fn no_icmp_error_about_non_first_fragments() {
        let r = router();
        let mut ipb = Ip::new("198.18.1.10", "198.18.2.10", 17);
        ipb.ttl = 1;
        ipb.df = false;
        ipb.frag_offset = 1480;
        let mut f = from_client(&ipb, &[0u8; 16]);
        assert_eq!(r.process(0, LAN, &mut f), dropped(DropReason::TtlExceeded));
        assert_eq!(
            r.build_icmp_error(&f, LAN, IcmpError::TimeExceeded, &mut [0u8; 1514]),
            None
        );
        ipb.frag_offset = 0;
        ipb.mf = true;
        let mut f = from_client(&ipb, &[0u8; 16]);
        assert_eq!(
            r.process(0, LAN, &mut f),
            Action::Drop {
                reason: DropReason::TtlExceeded,
                icmp: Some(IcmpError::TimeExceeded)
            }
        );
    }

    // ---------------- builders ----------------

    #[test]
    fn time_exceeded_quotes_original_header_and_eight_bytes() {
        let r = router();
        let mut ipb = Ip::new("198.18.1.10", "198.18.2.10", 17);
        ipb.ttl = 1;
        let f = from_client(&ipb, &[0xabu8; 100]);
        let mut buf = [0u8; 1514];
        let (port, len) = r
            .build_icmp_error(&f, LAN, IcmpError::TimeExceeded, &mut buf)
            .unwrap();
        assert_eq!(port, LAN);
        assert_eq!(len, 14 + 20 + 8 + 28);
        let out = &buf[..len];
        assert_eq!(mac_at(out, 0), CLIENT_MAC);
        assert_eq!(mac_at(out, 6), LAN_MAC);
        let p = ip_of(out);
        assert!(p.verify_checksum());
        assert_eq!(p.src_addr(), ip("198.18.1.1"));
        assert_eq!(p.dst_addr(), ip("198.18.1.10"));
        assert_eq!(p.protocol(), IpProtocol::Icmp);
        let icmp = IcmpPacket::new_checked(p.payload()).unwrap();
        assert_eq!(
            IcmpRepr::parse(&icmp).unwrap(),
            IcmpRepr::TimeExceeded {
                reason: IcmpTimeExceeded::TtlExpired,
                data: &f[14..14 + 28]
            }
        );
    }

    #[test]
    fn frag_needed_error_carries_next_hop_mtu() {
        let r = router();
        let f = from_client(&Ip::new("198.18.1.10", "198.19.69.2", 17), &[0u8; 600]);
        let mut buf = [0u8; 1514];
        let (_, len) = r
            .build_icmp_error(&f, LAN, IcmpError::FragNeeded(576), &mut buf)
            .unwrap();
        let p = ip_of(&buf[..len]);
        let icmp = IcmpPacket::new_checked(p.payload()).unwrap();
        assert_eq!(
            (
                u8::from(icmp.msg_type()),
                icmp.msg_code(),
                icmp.next_hop_mtu()
            ),
            (3, 4, 576)
        );
        assert!(icmp.verify_checksum());
    }

    #[test]
    fn icmp_error_about_empty_payload_quotes_header_only_and_needs_room() {
        let r = router();
        let mut ipb = Ip::new("198.18.1.10", "198.18.2.10", 17);
        ipb.ttl = 1;
        let f = from_client(&ipb, &[]);
        let mut buf = [0u8; 100];
        let (_, len) = r
            .build_icmp_error(&f, LAN, IcmpError::TimeExceeded, &mut buf)
            .unwrap();
        assert_eq!(len, 14 + 20 + 8 + 20);
        assert_eq!(ip_of(&buf[..len]).total_len(), 20 + 8 + 20);
        assert_eq!(
            r.build_icmp_error(&f, LAN, IcmpError::TimeExceeded, &mut [0u8; 61]),
            None
        );
        assert_eq!(
            r.build_icmp_error(&f, 9, IcmpError::TimeExceeded, &mut buf),
            None
        );
    }

    #[test]
    fn host_unreachable_for_held_frame_follows_route_to_source() {
        let r = router();
        let mut f = from_client(&Ip::new("198.18.1.10", "198.18.2.10", 17), &udp());
        assert!(matches!(r.process(0, LAN, &mut f), Action::Hold { .. }));
        // The held frame's source MAC is now ours: without a known way back, no error.
        let mut buf = [0u8; 1514];
        assert_eq!(
            r.build_icmp_error(&f, LAN, IcmpError::HostUnreachable, &mut buf),
            None
        );
        assert!(r.neighbours().learn(LAN, ip("198.18.1.10"), CLIENT_MAC, 1));
        let (port, len) = r
            .build_icmp_error(&f, LAN, IcmpError::HostUnreachable, &mut buf)
            .unwrap();
        assert_eq!(port, LAN);
        assert_eq!(mac_at(&buf, 0), CLIENT_MAC);
        let p = ip_of(&buf[..len]);
        let icmp = IcmpPacket::new_checked(p.payload()).unwrap();
        assert_eq!((u8::from(icmp.msg_type()), icmp.msg_code()), (3, 1));
    }

    #[test]
    fn arp_request_builder_writes_broadcast_request_from_port_address() {
        let r = router();
        let mut buf = [0xeeu8; 64];
        assert_eq!(
            r.build_arp_request(WAN, ip("198.18.2.10"), &mut buf),
            Some(60)
        );
        let f = EthernetFrame::new_checked(&buf[..60]).unwrap();
        assert_eq!(f.dst_addr(), EthernetAddress::BROADCAST);
        assert_eq!(f.src_addr(), WAN_MAC);
        assert_eq!(f.ethertype(), EtherType::Arp);
        let a = ArpRepr::parse(&ArpPacket::new_checked(f.payload()).unwrap()).unwrap();
        assert_eq!(a.operation, ArpOperation::Request);
        assert_eq!(a.source_hardware_addr, WAN_MAC);
        assert_eq!(a.source_protocol_addr, ip("198.18.2.1"));
        assert_eq!(a.target_hardware_addr, EthernetAddress::UNSPECIFIED);
        assert_eq!(a.target_protocol_addr, ip("198.18.2.10"));
        assert!(buf[42..60].iter().all(|&b| b == 0), "padding is zeroed");
        assert_eq!(
            r.build_arp_request(WAN, ip("198.18.2.10"), &mut [0u8; 59]),
            None
        );
        assert_eq!(r.build_arp_request(9, ip("198.18.2.10"), &mut buf), None);
    }

    #[test]
    fn arp_request_round_trips_through_a_peer_router() {
        // Our request, fed to a second router owning the target, is answered;
        // the answer, fed back to us, is learned.
        let r = router();
        let mut buf = [0u8; 60];
        r.build_arp_request(LAN, ip("198.18.1.2"), &mut buf)
            .unwrap();
        let mut ifs = interfaces();
        ifs[0].mac = CLIENT_MAC;
        ifs[0].addresses = vec![(ip("198.18.1.2"), 24)];
        let peer = Router::new(ifs, &[], Arc::new(NeighbourTable::new(4, TIMERS))).unwrap();
        assert_eq!(peer.process(0, LAN, &mut buf), Action::Reply);
        assert_eq!(
            peer.neighbours().resolve(LAN, ip("198.18.1.1"), 0),
            Resolution::Resolved(LAN_MAC)
        );
        assert_eq!(r.process(1, LAN, &mut buf), Action::Consumed);
        assert_eq!(
            r.neighbours().resolve(LAN, ip("198.18.1.2"), 1),
            Resolution::Resolved(CLIENT_MAC)
        );
    }

    // ---------------- construction ----------------

    #[test]
    fn static_route_without_port_takes_port_of_gateway_network() {
        let r = router();
        let routes: Vec<_> = r
            .routes()
            .map(|e| (e.destination, e.prefix_len, e.route, e.connected))
            .collect();
        let route = |port, via: Option<&str>| Route {
            port,
            next_hop: via.map(ip),
        };
        assert_eq!(
            routes,
            vec![
                (ip("0.0.0.0"), 0, route(WAN, Some("198.18.2.254")), false),
                (ip("198.18.1.0"), 24, route(LAN, None), true),
                (ip("198.18.2.0"), 24, route(WAN, None), true),
                (
                    ip("198.19.0.0"),
                    24,
                    route(LAN, Some("198.18.1.254")),
                    false
                ),
                (ip("198.19.69.0"), 30, route(SMALL, None), true),
            ]
        );
        assert_eq!(r.interfaces().len(), 3);
        assert_eq!(r.interface(SMALL).unwrap().mtu, 576);
    }

    #[test]
    fn invalid_configurations_are_rejected_with_reasons() {
        let n = || Arc::new(NeighbourTable::new(4, TIMERS));
        let mut dup = interfaces();
        dup[1].port = LAN;
        assert_eq!(
            Router::new(dup, &[], n()).unwrap_err(),
            RouterError::DuplicatePort(LAN)
        );

        let mut same_net = interfaces();
        same_net[1].addresses = vec![(ip("198.18.1.2"), 24)];
        assert!(matches!(
            Router::new(same_net, &[], n()),
            Err(RouterError::RouteConflict(_))
        ));

        let mut net_addr = interfaces();
        net_addr[0].addresses = vec![(ip("198.18.1.0"), 24)];
        assert!(matches!(
            Router::new(net_addr, &[], n()),
            Err(RouterError::InvalidAddress { .. })
        ));

        let mut tiny = interfaces();
        tiny[0].mtu = 60;
        assert!(matches!(
            Router::new(tiny, &[], n()),
            Err(RouterError::InvalidMtu { .. })
        ));

        let far_gw = StaticRoute {
            destination: ip("10.0.0.0"),
            prefix_len: 8,
            via: Some(ip("203.0.113.1")),
            port: None,
        };
        let e = Router::new(interfaces(), &[far_gw], n()).unwrap_err();
        assert!(matches!(e, RouterError::GatewayNotConnected { .. }));
        assert!(e.to_string().contains("203.0.113.1"), "{e}");

        let bad_port = StaticRoute {
            destination: ip("10.0.0.0"),
            prefix_len: 8,
            via: None,
            port: Some(9),
        };
        assert!(matches!(
            Router::new(interfaces(), &[bad_port], n()),
            Err(RouterError::UnknownPort { port: 9, .. })
        ));

        let no_target = StaticRoute {
            destination: ip("10.0.0.0"),
            prefix_len: 8,
            via: None,
            port: None,
        };
        assert!(matches!(
            Router::new(interfaces(), &[no_target], n()),
            Err(RouterError::RouteWithoutTarget { .. })
        ));

        let host_bits = StaticRoute {
            destination: ip("10.0.0.1"),
            prefix_len: 8,
            via: Some(ip("198.18.1.254")),
            port: None,
        };
        assert!(matches!(
            Router::new(interfaces(), &[host_bits], n()),
            Err(RouterError::InvalidRoute { .. })
        ));

        let dup_route = StaticRoute {
            destination: ip("198.18.1.0"),
            prefix_len: 24,
            via: Some(ip("198.18.2.254")),
            port: None,
        };
        assert!(matches!(
            Router::new(interfaces(), &[dup_route], n()),
            Err(RouterError::RouteConflict(_))
        ));
    }

    #[test]
    fn static_route_with_port_and_no_gateway_is_on_link() {
        let on_link = StaticRoute {
            destination: ip("198.19.70.0"),
            prefix_len: 30,
            via: None,
            port: Some(SMALL),
        };
        let r = router_with(&[on_link], 16);
        assert!(r.neighbours().learn(SMALL, ip("198.19.70.2"), GW_MAC, 0));
        let mut f = from_client(&Ip::new("198.18.1.10", "198.19.70.2", 17), &udp());
        assert_eq!(r.process(0, LAN, &mut f), Action::Forward { port: SMALL });
    }

    #[test]
    fn drop_reason_names_are_unique_stable_snake_case() {
        let mut names = std::collections::HashSet::new();
        for (i, reason) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, i, "ALL is in discriminant order");
            let n = reason.as_str();
            assert!(n.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{n}");
            assert!(names.insert(n), "duplicate {n}");
        }
        assert_eq!(DropReason::COUNT, DropReason::ALL.len());
        assert_eq!(DropReason::TtlExceeded.as_str(), "ttl_exceeded");
        assert_eq!(DropReason::NotForUs.as_str(), "not_for_us");
    }

    #[test]
    fn router_is_shareable_between_workers() {
        fn check<T: Send + Sync>() {}
        check::<Router>();
    }

    // ---------------- fuzz-style properties ----------------

    /// Frames that get past the Ethernet checks so deeper code is exercised.
    fn frame_strategy() -> impl Strategy<Value = Vec<u8>> {
        let raw = proptest::collection::vec(any::<u8>(), 0..200);
        let to_us = (
            prop_oneof![
                Just(0x0800u16),
                Just(0x0806u16),
                Just(0x8100u16),
                any::<u16>()
            ],
            proptest::collection::vec(any::<u8>(), 0..120),
        )
            .prop_map(|(et, rest)| eth(LAN_MAC, CLIENT_MAC, et, &rest));
        let ipv4 = (
            any::<u8>(),
            any::<u8>(),
            any::<[u8; 4]>(),
            0usize..80,
            proptest::collection::vec(any::<u8>(), 0..100),
            any::<bool>(),
        )
            .prop_map(|(ttl, proto, dst, len_fudge, payload, fix_len)| {
                let mut ipb = Ip::new("198.18.1.10", "198.18.2.10", proto);
                ipb.ttl = ttl;
                ipb.dst = Ipv4Addr::from(dst);
                let mut b = ipb.build(&payload);
                if !fix_len {
                    b[2..4].copy_from_slice(&(len_fudge as u16).to_be_bytes());
                    b[10] = 0;
                    b[11] = 0;
                    let ck = checksum::checksum(&b[..20]);
                    b[10..12].copy_from_slice(&ck.to_be_bytes());
                }
                eth(LAN_MAC, CLIENT_MAC, 0x0800, &b)
            });
        prop_oneof![raw, to_us, ipv4]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn process_never_panics_and_drops_leave_frame_untouched(
            mut frame in frame_strategy(),
            port in 0u16..4,
            now in 0u64..200_000,
        ) {
            let r = router();
            r.neighbours().learn(WAN, ip("198.18.2.254"), GW_MAC, 0);
            let orig = frame.clone();
            let action = r.process(now, port, &mut frame);
            prop_assert_eq!(frame.len(), orig.len());
            match action {
                Action::Drop { icmp, .. } => {
                    prop_assert_eq!(&frame, &orig);
                    if let Some(err) = icmp {
                        let mut buf = [0u8; 1514];
                        if let Some((_, len)) = r.build_icmp_error(&frame, port, err, &mut buf) {
                            let p = Ipv4Packet::new_checked(&buf[14..len]).unwrap();
                            prop_assert!(p.verify_checksum());
                            prop_assert!(IcmpPacket::new_checked(p.payload()).unwrap().verify_checksum());
                        }
                    }
                }
                Action::Forward { port, .. } | Action::Hold { port, .. } => {
                    prop_assert!(r.interface(port).is_some());
                    let p = Ipv4Packet::new_checked(&frame[14..]).unwrap();
                    prop_assert!(p.verify_checksum());
                }
                Action::Reply | Action::Consumed => {}
                Action::Filtered { .. } => prop_assert!(false, "NoFilter never filters"),
            }
        }

        #[test]
        fn builders_never_panic_on_arbitrary_input(
            mut frame in proptest::collection::vec(any::<u8>(), 0..120),
            port in 0u16..4,
            mtu in any::<u16>(),
            target in any::<[u8; 4]>(),
            buf_len in 0usize..200,
        ) {
            let r = router();
            let mut buf = vec![0u8; buf_len];
            for err in [IcmpError::NetUnreachable, IcmpError::HostUnreachable, IcmpError::FragNeeded(mtu), IcmpError::TimeExceeded] {
                let _ = r.build_icmp_error(&frame, port, err, &mut buf);
            }
            let _ = r.build_arp_request(port, Ipv4Addr::from(target), &mut buf);
            let _ = r.finish_held(0, &mut frame, port, Ipv4Addr::from(target));
        }
    }

    fn tcp_segment(flags: u8, seq: u32, ack: u32, payload: &[u8]) -> Vec<u8> {
        let mut t = vec![0u8; 20];
        t[0..2].copy_from_slice(&40000u16.to_be_bytes());
        t[2..4].copy_from_slice(&23u16.to_be_bytes());
        t[4..8].copy_from_slice(&seq.to_be_bytes());
        t[8..12].copy_from_slice(&ack.to_be_bytes());
        t[12] = 5 << 4;
        t[13] = flags;
        t.extend_from_slice(payload);
        t
    }

    fn client_frame(ip_packet: &[u8]) -> Vec<u8> {
        eth(LAN_MAC, CLIENT_MAC, 0x0800, ip_packet)
    }

    #[test]
    fn reject_of_a_syn_is_a_reset_that_acks_it_from_the_refused_address() {
        let r = router();
        let syn = client_frame(
            &Ip::new("198.18.1.10", "198.18.2.10", 6).build(&tcp_segment(0x02, 1000, 0, &[])),
        );
        let mut buf = [0u8; 128];
        let (port, len) = r
            .build_reject(&syn, LAN, Reject::TcpReset, &mut buf)
            .expect("a reset");
        assert_eq!(port, LAN);
        let f = EthernetFrame::new_checked(&buf[..len]).unwrap();
        assert_eq!(f.src_addr(), LAN_MAC);
        assert_eq!(f.dst_addr(), CLIENT_MAC);
        let ip = Ipv4Packet::new_checked(f.payload()).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(
            (ip.src_addr(), ip.dst_addr()),
            (ip_addr("198.18.2.10"), ip_addr("198.18.1.10"))
        );
        let t = ip.payload();
        assert_eq!(u16::from_be_bytes([t[0], t[1]]), 23);
        assert_eq!(u16::from_be_bytes([t[2], t[3]]), 40000);
        assert_eq!(
            u32::from_be_bytes([t[8], t[9], t[10], t[11]]),
            1001,
            "acks the SYN"
        );
        assert_eq!(t[13], 0x14, "RST+ACK");
        assert_eq!(
            tcp_checksum(ip.src_addr(), ip.dst_addr(), &{
                let mut z = t.to_vec();
                z[16] = 0;
                z[17] = 0;
                z
            }),
            u16::from_be_bytes([t[16], t[17]])
        );
    }

    #[test]
    fn reject_of_an_acking_segment_takes_its_sequence_from_the_ack() {
        let r = router();
        let seg = client_frame(
            &Ip::new("198.18.1.10", "198.18.2.10", 6).build(&tcp_segment(0x18, 5, 777, b"hello")),
        );
        let mut buf = [0u8; 128];
        let (_, len) = r
            .build_reject(&seg, LAN, Reject::TcpReset, &mut buf)
            .expect("a reset");
        let t = &buf[14 + 20..len];
        assert_eq!(u32::from_be_bytes([t[4], t[5], t[6], t[7]]), 777);
        assert_eq!(t[13], 0x04, "RST only");
    }

    #[test]
    fn a_reset_is_never_answered_and_udp_rejects_become_icmp() {
        let r = router();
        let rst = client_frame(
            &Ip::new("198.18.1.10", "198.18.2.10", 6).build(&tcp_segment(0x04, 5, 0, &[])),
        );
        let mut buf = [0u8; 128];
        // A reset is never answered with a reset: the rejection falls back
        // to ICMP administratively prohibited, so the sender still learns.
        let (_, len) = r
            .build_reject(&rst, LAN, Reject::TcpReset, &mut buf)
            .expect("the ICMP fallback");
        let ip = Ipv4Packet::new_checked(&buf[14..len]).unwrap();
        assert_eq!(
            ip.protocol(),
            IpProtocol::Icmp,
            "never a reset about a reset"
        );
        assert_eq!(
            (ip.payload()[0], ip.payload()[1]),
            (3, 13),
            "admin prohibited"
        );
        let dgram = client_frame(&Ip::new("198.18.1.10", "198.18.2.10", 17).build(&udp()));
        let (_, len) = r
            .build_reject(&dgram, LAN, Reject::PortUnreachable, &mut buf)
            .expect("icmp");
        let ip = Ipv4Packet::new_checked(&buf[14..len]).unwrap();
        assert_eq!(ip.protocol(), IpProtocol::Icmp);
        assert_eq!(
            (ip.payload()[0], ip.payload()[1]),
            (3, 3),
            "port unreachable"
        );
        let (_, _len) = r
            .build_reject(&dgram, LAN, Reject::AdminProhibited, &mut buf)
            .expect("icmp");
        assert_eq!(
            (buf[14 + 20], buf[14 + 21]),
            (3, 13),
            "administratively prohibited"
        );
    }

    fn ip_addr(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn gratuitous_arp_announces_an_own_address_to_everyone() {
        let r = router();
        let mut buf = [0u8; 64];
        let len = r
            .build_garp(LAN, ip("198.18.1.1"), &mut buf)
            .expect("own address");
        let f = EthernetFrame::new_checked(&buf[..len]).unwrap();
        assert_eq!(f.dst_addr(), EthernetAddress::BROADCAST);
        assert_eq!(f.src_addr(), LAN_MAC);
        let arp = ArpRepr::parse(&ArpPacket::new_checked(f.payload()).unwrap()).unwrap();
        assert_eq!(arp.operation, ArpOperation::Request);
        assert_eq!(arp.source_protocol_addr, ip("198.18.1.1"));
        assert_eq!(arp.target_protocol_addr, ip("198.18.1.1"));
        assert_eq!(arp.source_hardware_addr, LAN_MAC);
        assert!(
            r.build_garp(LAN, ip("198.18.2.1"), &mut buf).is_none(),
            "not this port's address"
        );
    }
}
