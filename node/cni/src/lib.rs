//! ferrokube's CNI plugin and node routes.
//!
//! This crate owns pod networking on a node: the CNI 1.1 plugin (ADD, DEL, CHECK,
//! VERSION, GC, STATUS; results in the configuration's `cniVersion` among 1.1.0, 1.0.0,
//! 0.4.0), the routed pod model (one veth pair per pod, the pod's `/32`, a default route
//! via a gateway address on the host end, a `/32` host route back; no bridge), the
//! on-disk, lock-protected IPAM of the node's pod CIDR, the route syncer between nodes
//! (host-gw, or a VXLAN overlay for nodes without a shared L2), and the installer that
//! places the plugin and its configuration list.
//!
//! Every kernel change goes through rtnetlink behind two seams, [`netops::NetOps`]
//! (pod attachments) and [`routes::RouteTable`] (node routes), so the command logic is
//! unit-tested without root. Namespaces are entered per worker thread with `nix`'s safe
//! `setns`: the crate has no `unsafe`.

pub mod cidr;
pub mod config;
pub mod install;
pub mod ipam;
pub mod netns;
pub mod netops;
pub mod plugin;
pub mod routes;
pub mod spec;
pub mod vxlan;

pub use cidr::Ipv4Cidr;
pub use plugin::{Outcome, PluginError, run};
