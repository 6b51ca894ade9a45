//! The privileged seam: every change the plugin makes to links, addresses and routes goes
//! through [`NetOps`], so the command logic is unit-tested with a fake and only
//! [`Rtnetlink`] needs root.
//!
//! The routed model, per pod: a veth pair, `CNI_IFNAME` (usually `eth0`) inside the pod
//! namespace with the pod's `/32`, a link-scoped route to the gateway and a default route
//! via it; the host end (named from the attachment, see [`host_ifname`]) carries the
//! gateway address as a `/32` (so it answers the pod's ARP for the gateway) and a `/32`
//! route to the pod. No bridge.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteScope};
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::netns::{self, NetnsError};

/// Errors changing or reading the network.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The namespace could not be entered.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// An interface with the name we need already exists.
    #[error("interface {name} already exists")]
    Exists {
        /// The interface name.
        name: String,
    },
    /// An interface we just created or must use is missing.
    #[error("interface {name} not found")]
    NoSuchLink {
        /// The interface name.
        name: String,
    },
    /// The kernel refused a netlink request.
    #[error("{op}: {reason}")]
    Netlink {
        /// What we asked for.
        op: String,
        /// The kernel's answer.
        reason: String,
    },
}

/// What one pod attachment needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNetwork {
    /// The pod's network namespace (`CNI_NETNS`).
    pub netns: PathBuf,
    /// The interface inside the pod (`CNI_IFNAME`).
    pub ifname: String,
    /// The host end of the veth pair.
    pub host_ifname: String,
    /// The pod's address (a `/32`).
    pub ip: Ipv4Addr,
    /// The gateway the pod routes through (lives on the host end).
    pub gateway: Ipv4Addr,
    /// MTU of both ends.
    pub mtu: u32,
}

/// The links created for a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodLinks {
    /// MAC of the host end, `aa:bb:cc:dd:ee:ff`.
    pub host_mac: String,
    /// MAC of the pod end.
    pub pod_mac: String,
}

/// What CHECK found of a pod's attachment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodState {
    /// The pod interface exists in the pod namespace.
    pub pod_link: bool,
    /// It carries the pod's `/32`.
    pub pod_address: bool,
    /// The pod has a default route via the gateway on that interface.
    pub pod_default_route: bool,
    /// The host end exists.
    pub host_link: bool,
    /// The host has the `/32` route to the pod through the host end.
    pub host_route: bool,
}

/// Privileged network operations (the seam between command logic and the kernel).
pub trait NetOps {
    /// Creates and configures the veth pair, addresses and routes of one pod.
    fn setup_pod(&self, pod: &PodNetwork) -> Result<PodLinks, NetError>;
    /// Removes a pod's veth pair (and with it its addresses and routes); missing pieces
    /// (namespace, interfaces) are not errors.
    fn teardown_pod(
        &self,
        netns: Option<&Path>,
        ifname: &str,
        host_ifname: &str,
    ) -> Result<(), NetError>;
    /// Reads back what [`NetOps::setup_pod`] created.
    fn inspect_pod(&self, pod: &PodNetwork) -> Result<PodState, NetError>;
    /// Whether the network namespace at `path` exists.
    fn netns_exists(&self, path: &Path) -> bool;
}

/// The host-side interface name of an attachment: `fk` + 11 hex digits of a hash of
/// `(container_id, ifname)` (stable, so DEL and GC find it without state; 13 characters,
/// within the kernel's 15).
pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    // FNV-1a, 64 bits: stable across releases, unlike std's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in container_id.bytes().chain([0]).chain(ifname.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("fk{:011x}", hash >> 20)
}

/// [`NetOps`] through rtnetlink, on the real kernel. Host-side work happens in the
/// namespace of the calling process.
#[derive(Debug, Clone, Default)]
pub struct Rtnetlink;

fn netlink_error(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetError {
    let op = op.into();
    move |e| NetError::Netlink {
        op,
        reason: e.to_string(),
    }
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| -c.get()),
        _ => None,
    }
}

const ENODEV: i32 = 19;
const EEXIST: i32 = 17;
const ESRCH: i32 = 3;

fn format_mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn link_mac(link: &LinkMessage) -> String {
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(bytes) => Some(format_mac(bytes)),
            _ => None,
        })
        .unwrap_or_default()
}

/// The link called `name`, `None` when there is none.
pub(crate) async fn link_by_name(
    handle: &Handle,
    name: &str,
) -> Result<Option<LinkMessage>, NetError> {
    let result = handle
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await;
    match result {
        Ok(link) => Ok(link),
        Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
        Err(e) => Err(netlink_error(format!("get link {name}"))(e)),
    }
}

async fn set_up(handle: &Handle, index: u32, name: &str) -> Result<(), NetError> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(netlink_error(format!("set {name} up")))
}

async fn add_address(
    handle: &Handle,
    index: u32,
    ip: Ipv4Addr,
    name: &str,
) -> Result<(), NetError> {
    match handle
        .address()
        .add(index, IpAddr::V4(ip), 32)
        .execute()
        .await
    {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
        Err(e) => Err(netlink_error(format!("add {ip}/32 to {name}"))(e)),
    }
}

async fn add_route(handle: &Handle, route: RouteMessage, what: &str) -> Result<(), NetError> {
    handle
        .route()
        .add(route)
        .execute()
        .await
        .map_err(netlink_error(format!("add route {what}")))
}

async fn has_address(handle: &Handle, index: u32, ip: Ipv4Addr) -> Result<bool, NetError> {
    let addrs: Vec<_> = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(netlink_error("list addresses"))?;
    Ok(addrs.iter().any(|a| {
        a.header.prefix_len == 32
            && a.attributes
                .iter()
                .any(|attr| matches!(attr, AddressAttribute::Address(IpAddr::V4(v)) if *v == ip))
    }))
}

/// Main-table IPv4 routes.
pub(crate) async fn main_routes(handle: &Handle) -> Result<Vec<RouteMessage>, NetError> {
    let routes: Vec<RouteMessage> = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(netlink_error("list routes"))?;
    Ok(routes
        .into_iter()
        .filter(|r| {
            r.header.address_family == AddressFamily::Inet
                && r.header.table == netlink_packet_route::route::RouteHeader::RT_TABLE_MAIN
        })
        .collect())
}

/// The destination, gateway and output interface of a route.
pub(crate) fn route_parts(
    route: &RouteMessage,
) -> (Option<Ipv4Addr>, Option<Ipv4Addr>, Option<u32>) {
    let mut dst = None;
    let mut gw = None;
    let mut oif = None;
    for attr in &route.attributes {
        match attr {
            RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = Some(*a),
            RouteAttribute::Gateway(RouteAddress::Inet(a)) => gw = Some(*a),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    (dst, gw, oif)
}

async fn delete_link_named(handle: &Handle, name: &str) -> Result<(), NetError> {
    if let Some(link) = link_by_name(handle, name).await? {
        match handle.link().del(link.header.index).execute().await {
            Ok(()) => {}
            Err(e) if errno(&e) == Some(ENODEV) => {}
            Err(e) => return Err(netlink_error(format!("delete link {name}"))(e)),
        }
    }
    Ok(())
}

impl NetOps for Rtnetlink {
    fn setup_pod(&self, pod: &PodNetwork) -> Result<PodLinks, NetError> {
        let host = pod.clone();
        let host_mac = netns::with_netlink(None, move |handle| async move {
            let pod = host;
            let ns = std::fs::File::open(&pod.netns).map_err(|_| {
                NetError::Netns(NetnsError::Missing {
                    path: pod.netns.clone(),
                })
            })?;
            // Create the pair from the host, the peer directly inside the pod namespace
            // under its final name (so it never clashes with a host interface).
            let peer = LinkUnspec::new_with_name(&pod.ifname)
                .mtu(pod.mtu)
                .setns_by_fd(ns.as_raw_fd())
                .build();
            let veth = LinkVeth::new(&pod.host_ifname, &pod.ifname)
                .mtu(pod.mtu)
                .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
                .build();
            match handle.link().add(veth).execute().await {
                Ok(()) => {}
                Err(e) if errno(&e) == Some(EEXIST) => {
                    return Err(NetError::Exists {
                        name: format!(
                            "{} or {} in {}",
                            pod.host_ifname,
                            pod.ifname,
                            pod.netns.display()
                        ),
                    });
                }
                Err(e) => return Err(netlink_error("create veth pair")(e)),
            }
            drop(ns);
            let link = link_by_name(&handle, &pod.host_ifname)
                .await?
                .ok_or_else(|| NetError::NoSuchLink {
                    name: pod.host_ifname.clone(),
                })?;
            let index = link.header.index;
            set_up(&handle, index, &pod.host_ifname).await?;
            add_address(&handle, index, pod.gateway, &pod.host_ifname).await?;
            let to_pod = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(pod.ip, 32)
                .output_interface(index)
                .scope(RouteScope::Link)
                .build();
            add_route(
                &handle,
                to_pod,
                &format!("{}/32 dev {}", pod.ip, pod.host_ifname),
            )
            .await?;
            Ok::<_, NetError>(link_mac(&link))
        })??;

        let inside = pod.clone();
        let pod_mac = netns::with_netlink(Some(&pod.netns), move |handle| async move {
            let pod = inside;
            let link =
                link_by_name(&handle, &pod.ifname)
                    .await?
                    .ok_or_else(|| NetError::NoSuchLink {
                        name: pod.ifname.clone(),
                    })?;
            let index = link.header.index;
            set_up(&handle, index, &pod.ifname).await?;
            add_address(&handle, index, pod.ip, &pod.ifname).await?;
            let to_gateway = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(pod.gateway, 32)
                .output_interface(index)
                .scope(RouteScope::Link)
                .build();
            add_route(
                &handle,
                to_gateway,
                &format!("{}/32 dev {}", pod.gateway, pod.ifname),
            )
            .await?;
            let default = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
                .gateway(pod.gateway)
                .output_interface(index)
                .build();
            add_route(&handle, default, &format!("default via {}", pod.gateway)).await?;
            Ok::<_, NetError>(link_mac(&link))
        })??;
        Ok(PodLinks { host_mac, pod_mac })
    }

    fn teardown_pod(
        &self,
        netns: Option<&Path>,
        ifname: &str,
        host_ifname: &str,
    ) -> Result<(), NetError> {
        if let Some(path) = netns.filter(|p| netns::exists(p)) {
            let ifname = ifname.to_string();
            match netns::with_netlink(Some(path), move |handle| async move {
                delete_link_named(&handle, &ifname).await
            }) {
                Ok(result) => result?,
                // Gone between the check and the entry, or no namespace any more (an
                // unmounted bind-mount target): nothing left to remove there, and DEL must
                // still succeed.
                Err(e @ (NetnsError::Missing { .. } | NetnsError::Enter { .. })) => {
                    tracing::warn!("skipping the pod side: {e}");
                }
                Err(e) => return Err(e.into()),
            }
        }
        let host_ifname = host_ifname.to_string();
        netns::with_netlink(None, move |handle| async move {
            delete_link_named(&handle, &host_ifname).await
        })??;
        Ok(())
    }

    fn inspect_pod(&self, pod: &PodNetwork) -> Result<PodState, NetError> {
        let inside = pod.clone();
        let mut state = netns::with_netlink(Some(&pod.netns), move |handle| async move {
            let pod = inside;
            let mut state = PodState::default();
            let Some(link) = link_by_name(&handle, &pod.ifname).await? else {
                return Ok::<_, NetError>(state);
            };
            state.pod_link = true;
            let index = link.header.index;
            state.pod_address = has_address(&handle, index, pod.ip).await?;
            state.pod_default_route = main_routes(&handle).await?.iter().any(|r| {
                let (dst, gw, oif) = route_parts(r);
                r.header.destination_prefix_length == 0
                    && dst.is_none_or(|d| d.is_unspecified())
                    && gw == Some(pod.gateway)
                    && oif == Some(index)
            });
            Ok(state)
        })??;
        let host = pod.clone();
        let (host_link, host_route) = netns::with_netlink(None, move |handle| async move {
            let pod = host;
            let Some(link) = link_by_name(&handle, &pod.host_ifname).await? else {
                return Ok::<_, NetError>((false, false));
            };
            let index = link.header.index;
            let route = main_routes(&handle).await?.iter().any(|r| {
                let (dst, _, oif) = route_parts(r);
                r.header.destination_prefix_length == 32
                    && dst == Some(pod.ip)
                    && oif == Some(index)
            });
            Ok((true, route))
        })??;
        state.host_link = host_link;
        state.host_route = host_route;
        Ok(state)
    }

    fn netns_exists(&self, path: &Path) -> bool {
        netns::exists(path)
    }
}

/// `ESRCH` ("no such process"): what the kernel answers when deleting a route that is
/// already gone.
pub(crate) fn is_missing(e: &rtnetlink::Error) -> bool {
    matches!(errno(e), Some(ESRCH) | Some(ENODEV))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ifname_is_short_stable_and_distinct() {
        let a = host_ifname("abc", "eth0");
        assert_eq!(a, host_ifname("abc", "eth0"));
        assert_eq!(a.len(), 13);
        assert!(a.starts_with("fk"));
        assert_ne!(a, host_ifname("abc", "eth1"));
        assert_ne!(a, host_ifname("abd", "eth0"));
        // The separator keeps ("ab", "ceth0") apart from ("abc", "eth0").
        assert_ne!(host_ifname("ab", "ceth0"), a);
    }

    #[test]
    fn mac_formatting() {
        assert_eq!(format_mac(&[0x0a, 0xff, 0, 1, 2, 3]), "0a:ff:00:01:02:03");
    }
}
