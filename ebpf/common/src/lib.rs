//! Map keys and values shared by ferrokube's eBPF programs (`ebpf/programs`) and their
//! user-space loader (`node/proxy`). `#![no_std]`, `#[repr(C)]`, no implicit padding, so
//! both sides agree on the bytes.
//!
//! Addresses are 16 bytes (`[u32; 4]` in network byte order) with an address family, so
//! IPv6 Services use the same maps: an IPv4 address sits in word 0 and the rest is zero.
//! Ports are stored as the kernel hands them to socket hooks: network byte order in a
//! `u16`.
//!
//! With the `user` feature each type implements `aya::Pod` for the loader.
#![no_std]
// `aya::Pod` is an unsafe marker trait: implementing it asserts a type is plain bytes with
// no padding, which the `#[repr(C)]` layouts below guarantee (checked by the size asserts).
#![cfg_attr(feature = "user", allow(unsafe_code))]

pub mod affinity;
pub mod backend;
pub mod ct;
pub mod event;
pub mod maglev;
pub mod node;
pub mod revnat;
pub mod service;
pub mod stats;

pub use affinity::{AffinityKey, AffinityValue, ClientAffinityKey};
pub use backend::{BACKEND_LOCAL, Backend, SlotKey};
pub use ct::{CtKey, CtValue};
pub use event::Event;
pub use node::NodeConfig;
pub use revnat::{RevNatKey, RevNatValue};
pub use service::{SERVICE_EXTERNAL, SERVICE_MAGLEV, ServiceKey, ServiceValue};
pub use stats::Counters;

/// `AF_INET`.
pub const FAMILY_V4: u8 = 2;
/// `AF_INET6`.
pub const FAMILY_V6: u8 = 10;
/// `IPPROTO_TCP`.
pub const PROTO_TCP: u8 = 6;
/// `IPPROTO_UDP`.
pub const PROTO_UDP: u8 = 17;

/// Names of the maps as the programs declare them; also their pin file names.
pub mod map_names {
    /// Frontends: [`crate::ServiceKey`] -> [`crate::ServiceValue`].
    pub const SERVICES: &str = "FK_SERVICES";
    /// Backend slots: [`crate::SlotKey`] -> backend id (`u32`).
    pub const SLOTS: &str = "FK_SLOTS";
    /// Backends by id: `u32` -> [`crate::Backend`].
    pub const BACKENDS: &str = "FK_BACKENDS";
    /// Per-socket reverse NAT: [`crate::RevNatKey`] -> [`crate::RevNatValue`] (LRU).
    pub const REVNAT: &str = "FK_REVNAT";
    /// Session affinity: [`crate::AffinityKey`] -> [`crate::AffinityValue`] (LRU).
    pub const AFFINITY: &str = "FK_AFFINITY";
    /// Session affinity by client address (tc path): [`crate::ClientAffinityKey`] ->
    /// [`crate::AffinityValue`] (LRU).
    pub const CLIENT_AFFINITY: &str = "FK_CLIENT_AFF";
    /// Connection tracking of the tc path: [`crate::CtKey`] -> [`crate::CtValue`] (LRU).
    pub const CT: &str = "FK_CT";
    /// This node's settings: one [`crate::NodeConfig`] at index 0.
    pub const NODE: &str = "FK_NODE";
    /// Per-Service counters, per CPU, indexed by service id.
    pub const SERVICE_STATS: &str = "FK_SVC_STATS";
    /// Per-backend counters, per CPU, indexed by backend id.
    pub const BACKEND_STATS: &str = "FK_BE_STATS";
    /// Counters of the XDP fast path, per CPU (see [`crate::stats::xdp`]).
    pub const XDP_STATS: &str = "FK_XDP_STATS";
    /// Maglev lookup tables: an array of backend ids (`u32`), `M` per table (see
    /// [`crate::maglev`]).
    pub const MAGLEV: &str = "FK_MAGLEV";
    /// Translation events: a ring buffer of [`crate::Event`].
    pub const EVENTS: &str = "FK_EVENTS";
}

/// Names of the programs in the object file.
pub mod program_names {
    /// cgroup/connect4.
    pub const CONNECT4: &str = "fk_connect4";
    /// cgroup/sendmsg4.
    pub const SENDMSG4: &str = "fk_sendmsg4";
    /// cgroup/recvmsg4.
    pub const RECVMSG4: &str = "fk_recvmsg4";
    /// cgroup/getpeername4.
    pub const GETPEERNAME4: &str = "fk_getpeername4";
    /// cgroup sock_release: drops a closing socket's reverse translation.
    pub const SOCK_RELEASE: &str = "fk_sock_release";
    /// tc ingress on the external interface.
    pub const TC_INGRESS: &str = "fk_tc_ingress";
    /// tc egress on the external interface.
    pub const TC_EGRESS: &str = "fk_tc_egress";
    /// XDP on the external interface (the NodePort fast path for remote backends).
    pub const XDP: &str = "fk_xdp";
    /// XDP that passes everything, for the far end of a veth (see `fk_xdp`).
    pub const XDP_PASS: &str = "fk_xdp_pass";
}

/// Default map sizes, overridable by the loader.
pub mod sizes {
    /// Frontends (Service address, port, protocol).
    pub const MAX_SERVICES: u32 = 100_000;
    /// Distinct backend addresses.
    pub const MAX_BACKENDS: u32 = 200_000;
    /// Backend slots over all Services.
    pub const MAX_SLOTS: u32 = 1_000_000;
    /// Sockets remembered for reverse translation.
    pub const MAX_REVNAT: u32 = 262_144;
    /// (client, Service) pairs remembered for session affinity.
    pub const MAX_AFFINITY: u32 = 262_144;
    /// Connection-tracking entries of the tc path (up to four per flow).
    pub const MAX_CT: u32 = 524_288;
}
