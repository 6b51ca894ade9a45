//! The overlay option: node routes through a VXLAN device, for nodes without a shared L2
//! (where `podCIDR via nodeIP` is impossible because the node is not on-link).
//!
//! One device per node (default `fk.vxlan`, VNI 1, UDP 4789, no learning) whose MAC is
//! derived from the node's IP ([`vtep_mac`]: `0a:58:` + the four octets, locally
//! administered). For each remote node, three static entries, all derived from the
//! snapshot (no multicast, no learning; flannel's vxlan backend works the same way):
//! - a route `podCIDR via <podCIDR's first address> dev fk.vxlan onlink` (`proto 201`);
//! - a permanent neighbour entry: that first address is at `vtep_mac(nodeIP)`;
//! - an FDB entry: `vtep_mac(nodeIP)` is behind `dst nodeIP`.
//!
//! The remote node decapsulates (the inner destination MAC is its own device's) and
//! routes to the pod over its `/32` host route. [`VxlanRouteTable::list`] reads the
//! routes back and recovers each node IP from its neighbour entry's MAC, so the
//! [`RouteSyncer`](crate::routes::RouteSyncer) diff works unchanged.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use futures::TryStreamExt;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{RouteProtocol, RouteType};
use rtnetlink::{Handle, LinkVxlan, RouteMessageBuilder};

use crate::cidr::Ipv4Cidr;
use crate::netns;
use crate::netops::{is_missing, link_by_name, main_routes, route_parts};
use crate::routes::{ROUTE_PROTOCOL, RouteError, RouteTable};

/// The MAC of the VXLAN device of the node at `node_ip`.
pub fn vtep_mac(node_ip: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = node_ip.octets();
    [0x0a, 0x58, a, b, c, d]
}

fn node_ip_of(mac: &[u8]) -> Option<Ipv4Addr> {
    match mac {
        [0x0a, 0x58, a, b, c, d] => Some(Ipv4Addr::new(*a, *b, *c, *d)),
        _ => None,
    }
}

/// Node routes over a VXLAN device in a network namespace (ours when `netns` is `None`).
#[derive(Debug, Clone)]
pub struct VxlanRouteTable {
    netns: Option<PathBuf>,
    device: String,
    vni: u32,
    port: u16,
    local_ip: Ipv4Addr,
    mtu: u32,
}

fn netlink(op: String) -> impl FnOnce(rtnetlink::Error) -> RouteError {
    move |e| RouteError::Netlink {
        op,
        reason: e.to_string(),
    }
}

fn net_error(e: crate::netops::NetError) -> RouteError {
    RouteError::Netlink {
        op: "netlink".into(),
        reason: e.to_string(),
    }
}

fn gateway_of(dst: Ipv4Cidr) -> Result<Ipv4Addr, RouteError> {
    dst.first_host().ok_or_else(|| RouteError::Netlink {
        op: format!("route {dst}"),
        reason: "a pod CIDR needs at least one host address".into(),
    })
}

impl VxlanRouteTable {
    /// The overlay of the node whose underlay address is `local_ip`, with the defaults
    /// (`fk.vxlan`, VNI 1, port 4789, MTU 1450).
    pub fn new(netns: Option<PathBuf>, local_ip: Ipv4Addr) -> Self {
        VxlanRouteTable {
            netns,
            device: "fk.vxlan".into(),
            vni: 1,
            port: 4789,
            local_ip,
            mtu: 1450,
        }
    }

    /// Sets the device MTU (underlay MTU - 50; pod MTUs must not exceed it).
    pub fn with_mtu(mut self, mtu: u32) -> Self {
        self.mtu = mtu;
        self
    }

    /// The device's index, creating the device when it is missing.
    async fn device_index(&self, handle: &Handle, create: bool) -> Result<Option<u32>, RouteError> {
        if let Some(link) = link_by_name(handle, &self.device)
            .await
            .map_err(net_error)?
        {
            return Ok(Some(link.header.index));
        }
        if !create {
            return Ok(None);
        }
        let message = LinkVxlan::new(&self.device, self.vni)
            .local(self.local_ip)
            .port(self.port)
            .learning(false)
            .address(vtep_mac(self.local_ip).to_vec())
            .mtu(self.mtu)
            .up()
            .build();
        handle
            .link()
            .add(message)
            .execute()
            .await
            .map_err(netlink(format!("create {}", self.device)))?;
        let link = link_by_name(handle, &self.device)
            .await
            .map_err(net_error)?
            .ok_or_else(|| RouteError::Netlink {
                op: format!("create {}", self.device),
                reason: "device missing after creation".into(),
            })?;
        Ok(Some(link.header.index))
    }

    fn neighbour(index: u32, gateway: Ipv4Addr) -> NeighbourMessage {
        let mut message = NeighbourMessage::default();
        message.header.family = AddressFamily::Inet;
        message.header.ifindex = index;
        message
            .attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                gateway,
            )));
        message
    }

    fn fdb(index: u32, via: Ipv4Addr) -> NeighbourMessage {
        let mut message = NeighbourMessage::default();
        message.header.family = AddressFamily::Bridge;
        message.header.ifindex = index;
        message.header.flags = NeighbourFlags::Own;
        message.header.state = NeighbourState::Permanent;
        message
            .attributes
            .push(NeighbourAttribute::LinkLayerAddress(vtep_mac(via).to_vec()));
        message
            .attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(via)));
        message
    }

    fn route(
        dst: Ipv4Cidr,
        gateway: Ipv4Addr,
        index: u32,
    ) -> netlink_packet_route::route::RouteMessage {
        RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst.network(), dst.prefix())
            .gateway(gateway)
            .output_interface(index)
            .onlink()
            .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
            .kind(RouteType::Unicast)
            .build()
    }
}

impl RouteTable for VxlanRouteTable {
    fn list(&self) -> Result<Vec<(Ipv4Cidr, Ipv4Addr)>, RouteError> {
        let this = self.clone();
        netns::with_netlink(self.netns.as_deref(), move |handle| async move {
            let Some(index) = this.device_index(&handle, false).await? else {
                return Ok(Vec::new());
            };
            let neighbours: Vec<NeighbourMessage> = handle
                .neighbours()
                .get()
                .execute()
                .try_collect()
                .await
                .map_err(netlink("list neighbours".into()))?;
            let mac_of = |gateway: Ipv4Addr| {
                neighbours.iter().find_map(|n| {
                    let mut dst = None;
                    let mut mac = None;
                    for attr in &n.attributes {
                        match attr {
                            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                                dst = Some(*a)
                            }
                            NeighbourAttribute::LinkLayerAddress(m) => mac = Some(m.clone()),
                            _ => {}
                        }
                    }
                    (n.header.ifindex == index && dst == Some(gateway))
                        .then_some(mac)
                        .flatten()
                })
            };
            let routes = main_routes(&handle).await.map_err(net_error)?;
            Ok(routes
                .iter()
                .filter(|r| r.header.protocol == RouteProtocol::Other(ROUTE_PROTOCOL))
                .filter_map(|r| {
                    let (dst, gw, oif) = route_parts(r);
                    if oif != Some(index) {
                        return None;
                    }
                    let dst = Ipv4Cidr::new(dst?, r.header.destination_prefix_length).ok()?;
                    // A route without its neighbour entry reports no node: the syncer
                    // then re-programs it.
                    let node = gw.and_then(&mac_of).and_then(|m| node_ip_of(&m));
                    Some((dst, node.unwrap_or(Ipv4Addr::UNSPECIFIED)))
                })
                .collect())
        })?
    }

    fn replace(&self, dst: Ipv4Cidr, via: Ipv4Addr) -> Result<(), RouteError> {
        let this = self.clone();
        let gateway = gateway_of(dst)?;
        netns::with_netlink(self.netns.as_deref(), move |handle| async move {
            let index =
                this.device_index(&handle, true)
                    .await?
                    .ok_or_else(|| RouteError::Netlink {
                        op: format!("create {}", this.device),
                        reason: "no device".into(),
                    })?;
            handle
                .neighbours()
                .add(index, IpAddr::V4(gateway))
                .link_layer_address(&vtep_mac(via))
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await
                .map_err(netlink(format!("neighbour {gateway} -> {via}")))?;
            handle
                .neighbours()
                .add_bridge(index, &vtep_mac(via))
                .destination(IpAddr::V4(via))
                .flags(NeighbourFlags::Own)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await
                .map_err(netlink(format!("fdb dst {via}")))?;
            handle
                .route()
                .add(Self::route(dst, gateway, index))
                .replace()
                .execute()
                .await
                .map_err(netlink(format!(
                    "route {dst} via {gateway} dev {}",
                    this.device
                )))
        })?
    }

    fn remove(&self, dst: Ipv4Cidr, via: Ipv4Addr) -> Result<(), RouteError> {
        let this = self.clone();
        let gateway = gateway_of(dst)?;
        netns::with_netlink(self.netns.as_deref(), move |handle| async move {
            let Some(index) = this.device_index(&handle, false).await? else {
                return Ok(());
            };
            let ignore_missing = |op: String| {
                move |r: Result<(), rtnetlink::Error>| match r {
                    Ok(()) => Ok(()),
                    Err(e) if is_missing(&e) || matches!(errno(&e), Some(2)) => Ok(()),
                    Err(e) => Err(netlink(op)(e)),
                }
            };
            ignore_missing(format!("route del {dst}"))(
                handle
                    .route()
                    .del(Self::route(dst, gateway, index))
                    .execute()
                    .await,
            )?;
            ignore_missing(format!("neighbour del {gateway}"))(
                handle
                    .neighbours()
                    .del(Self::neighbour(index, gateway))
                    .execute()
                    .await,
            )?;
            if via.is_unspecified() {
                return Ok(());
            }
            ignore_missing(format!("fdb del {via}"))(
                handle
                    .neighbours()
                    .del(Self::fdb(index, via))
                    .execute()
                    .await,
            )
        })?
    }
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| -c.get()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vtep_mac_round_trips() {
        let ip = Ipv4Addr::new(192, 168, 20, 2);
        let mac = vtep_mac(ip);
        assert_eq!(mac, [0x0a, 0x58, 192, 168, 20, 2]);
        // Locally administered, unicast.
        assert_eq!(mac[0] & 0b11, 0b10);
        assert_eq!(node_ip_of(&mac), Some(ip));
        assert_eq!(node_ip_of(&[0, 1, 2, 3, 4, 5]), None);
    }
}
