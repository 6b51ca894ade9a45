//! Routes between nodes (host-gw): for every other node with a pod CIDR and an address,
//! `podCIDR via nodeIP` in the main table; routes to nodes that left are removed.
//!
//! Input is a stream of snapshots, each the complete list of [`NodeRoute`]s (a Node watch
//! will feed it; tests feed it directly). Our routes carry the routing protocol number
//! [`ROUTE_PROTOCOL`], so the syncer only ever touches routes it made. A snapshot that
//! fails to apply is logged and the next snapshot retries everything.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use futures::{Stream, StreamExt};
use netlink_packet_route::route::RouteProtocol;
use rtnetlink::RouteMessageBuilder;

use crate::cidr::Ipv4Cidr;
use crate::netns::{self, NetnsError};
use crate::netops::{is_missing, main_routes, route_parts};

/// The `proto` of routes ferrokube programs (`ip route` shows `proto 201`).
pub const ROUTE_PROTOCOL: u8 = 201;

/// Errors of the route syncer.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The namespace could not be entered.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// The kernel refused a route change or dump.
    #[error("{op}: {reason}")]
    Netlink {
        /// What we asked for.
        op: String,
        /// The kernel's answer.
        reason: String,
    },
    /// The blocking task applying a snapshot died.
    #[error("route sync task failed: {0}")]
    Task(String),
}

/// One node as the route syncer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRoute {
    /// Node name.
    pub node: String,
    /// Its pod CIDR.
    pub pod_cidr: Ipv4Cidr,
    /// Its InternalIP (must be on a directly connected network of this node).
    pub node_ip: Ipv4Addr,
}

/// A routing table the syncer programs (the seam: [`NetlinkRouteTable`] in production,
/// a map in unit tests).
pub trait RouteTable {
    /// Our routes now: destination and gateway.
    fn list(&self) -> Result<Vec<(Ipv4Cidr, Ipv4Addr)>, RouteError>;
    /// Adds or replaces the route to `dst`.
    fn replace(&self, dst: Ipv4Cidr, via: Ipv4Addr) -> Result<(), RouteError>;
    /// Removes our route to `dst` (absent: not an error).
    fn remove(&self, dst: Ipv4Cidr, via: Ipv4Addr) -> Result<(), RouteError>;
}

/// What one sync changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Routes added or re-pointed.
    pub replaced: Vec<(Ipv4Cidr, Ipv4Addr)>,
    /// Stale routes removed.
    pub removed: Vec<(Ipv4Cidr, Ipv4Addr)>,
}

/// Keeps the table equal to "every other node's pod CIDR via its address".
#[derive(Debug, Clone)]
pub struct RouteSyncer<T> {
    table: T,
    local_node: String,
}

impl<T: RouteTable> RouteSyncer<T> {
    /// A syncer for the node called `local_node` (whose own CIDR is never routed).
    pub fn new(table: T, local_node: impl Into<String>) -> Self {
        RouteSyncer {
            table,
            local_node: local_node.into(),
        }
    }

    /// Applies one snapshot: O(changes) kernel calls after one dump.
    pub fn sync(&self, nodes: &[NodeRoute]) -> Result<SyncReport, RouteError> {
        let desired: BTreeMap<Ipv4Cidr, Ipv4Addr> = nodes
            .iter()
            .filter(|n| n.node != self.local_node)
            .map(|n| (n.pod_cidr, n.node_ip))
            .collect();
        let current: BTreeMap<Ipv4Cidr, Ipv4Addr> = self.table.list()?.into_iter().collect();
        let mut report = SyncReport::default();
        for (dst, via) in &desired {
            if current.get(dst) != Some(via) {
                self.table.replace(*dst, *via)?;
                report.replaced.push((*dst, *via));
            }
        }
        for (dst, via) in &current {
            if !desired.contains_key(dst) {
                self.table.remove(*dst, *via)?;
                report.removed.push((*dst, *via));
            }
        }
        if !report.replaced.is_empty() || !report.removed.is_empty() {
            tracing::info!(?report, "node routes synced");
        }
        Ok(report)
    }
}

impl<T: RouteTable + Clone + Send + Sync + 'static> RouteSyncer<T> {
    /// Applies every snapshot of `snapshots` until it ends; calls `applied` after each
    /// (with the report or the error, which is logged and retried with the next one).
    pub async fn run<S>(
        &self,
        snapshots: S,
        mut applied: impl FnMut(&Result<SyncReport, RouteError>),
    ) where
        S: Stream<Item = Vec<NodeRoute>>,
    {
        let mut snapshots = std::pin::pin!(snapshots);
        while let Some(nodes) = snapshots.next().await {
            let syncer = self.clone();
            let result = tokio::task::spawn_blocking(move || syncer.sync(&nodes))
                .await
                .unwrap_or_else(|e| Err(RouteError::Task(e.to_string())));
            if let Err(e) = &result {
                tracing::warn!("node route sync failed (retried on the next update): {e}");
            }
            applied(&result);
        }
    }
}

/// The main IPv4 table of a network namespace (the process's own when `netns` is
/// `None`), through rtnetlink.
#[derive(Debug, Clone, Default)]
pub struct NetlinkRouteTable {
    netns: Option<PathBuf>,
}

impl NetlinkRouteTable {
    /// The table of the namespace at `netns` (`None`: ours).
    pub fn new(netns: Option<PathBuf>) -> Self {
        NetlinkRouteTable { netns }
    }

    fn message(dst: Ipv4Cidr, via: Ipv4Addr) -> netlink_packet_route::route::RouteMessage {
        RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst.network(), dst.prefix())
            .gateway(via)
            .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
            .build()
    }
}

fn netlink(op: String) -> impl FnOnce(rtnetlink::Error) -> RouteError {
    move |e| RouteError::Netlink {
        op,
        reason: e.to_string(),
    }
}

impl RouteTable for NetlinkRouteTable {
    fn list(&self) -> Result<Vec<(Ipv4Cidr, Ipv4Addr)>, RouteError> {
        netns::with_netlink(self.netns.as_deref(), |handle| async move {
            let routes = main_routes(&handle)
                .await
                .map_err(|e| RouteError::Netlink {
                    op: "list routes".into(),
                    reason: e.to_string(),
                })?;
            Ok(routes
                .iter()
                .filter(|r| r.header.protocol == RouteProtocol::Other(ROUTE_PROTOCOL))
                .filter_map(|r| {
                    let (dst, gw, _) = route_parts(r);
                    let dst = Ipv4Cidr::new(
                        dst.unwrap_or(Ipv4Addr::UNSPECIFIED),
                        r.header.destination_prefix_length,
                    )
                    .ok()?;
                    Some((dst, gw?))
                })
                .collect())
        })?
    }

    fn replace(&self, dst: Ipv4Cidr, via: Ipv4Addr) -> Result<(), RouteError> {
        netns::with_netlink(self.netns.as_deref(), move |handle| async move {
            handle
                .route()
                .add(Self::message(dst, via))
                .replace()
                .execute()
                .await
                .map_err(netlink(format!("route replace {dst} via {via}")))
        })?
    }

    fn remove(&self, dst: Ipv4Cidr, via: Ipv4Addr) -> Result<(), RouteError> {
        netns::with_netlink(self.netns.as_deref(), move |handle| async move {
            match handle.route().del(Self::message(dst, via)).execute().await {
                Ok(()) => Ok(()),
                Err(e) if is_missing(&e) => Ok(()),
                Err(e) => Err(netlink(format!("route del {dst} via {via}"))(e)),
            }
        })?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Debug, Clone, Default)]
    struct Fake(Arc<Mutex<BTreeMap<Ipv4Cidr, Ipv4Addr>>>);

    impl RouteTable for Fake {
        fn list(&self) -> Result<Vec<(Ipv4Cidr, Ipv4Addr)>, RouteError> {
            Ok(self
                .0
                .lock()
                .unwrap()
                .iter()
                .map(|(k, v)| (*k, *v))
                .collect())
        }
        fn replace(&self, dst: Ipv4Cidr, via: Ipv4Addr) -> Result<(), RouteError> {
            self.0.lock().unwrap().insert(dst, via);
            Ok(())
        }
        fn remove(&self, dst: Ipv4Cidr, _via: Ipv4Addr) -> Result<(), RouteError> {
            self.0.lock().unwrap().remove(&dst);
            Ok(())
        }
    }

    fn node(name: &str, cidr: &str, ip: [u8; 4]) -> NodeRoute {
        NodeRoute {
            node: name.into(),
            pod_cidr: cidr.parse().unwrap(),
            node_ip: ip.into(),
        }
    }

    #[test]
    fn programs_other_nodes_and_removes_stale_ones() {
        let table = Fake::default();
        let syncer = RouteSyncer::new(table.clone(), "a");
        let a = node("a", "10.244.0.0/24", [192, 168, 0, 1]);
        let b = node("b", "10.244.1.0/24", [192, 168, 0, 2]);
        let c = node("c", "10.244.2.0/24", [192, 168, 0, 3]);
        let r = syncer.sync(&[a.clone(), b.clone(), c.clone()]).unwrap();
        assert_eq!(r.replaced.len(), 2, "own CIDR is not routed");
        assert_eq!(table.list().unwrap().len(), 2);
        // No change: no kernel calls.
        assert_eq!(
            syncer.sync(&[a.clone(), b.clone(), c]).unwrap(),
            SyncReport::default()
        );
        // c leaves, b moves.
        let b2 = node("b", "10.244.1.0/24", [192, 168, 0, 9]);
        let r = syncer.sync(&[a, b2]).unwrap();
        assert_eq!(
            r.removed,
            vec![("10.244.2.0/24".parse().unwrap(), [192, 168, 0, 3].into())]
        );
        assert_eq!(
            r.replaced,
            vec![("10.244.1.0/24".parse().unwrap(), [192, 168, 0, 9].into())]
        );
        assert_eq!(
            table.list().unwrap(),
            vec![("10.244.1.0/24".parse().unwrap(), [192, 168, 0, 9].into())]
        );
    }

    #[test]
    fn run_applies_every_snapshot() {
        let table = Fake::default();
        let syncer = RouteSyncer::new(table.clone(), "a");
        let snapshots = futures::stream::iter(vec![
            vec![node("b", "10.244.1.0/24", [192, 168, 0, 2])],
            vec![],
        ]);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut reports = Vec::new();
        runtime.block_on(syncer.run(snapshots, |r| reports.push(r.as_ref().unwrap().clone())));
        assert_eq!(reports.len(), 2);
        assert_eq!(reports[1].removed.len(), 1);
        assert!(table.list().unwrap().is_empty());
    }
}
