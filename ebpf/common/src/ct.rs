//! Connection tracking for the tc NodePort path: an LRU hash of packet tuples, each entry
//! saying how to rewrite one direction of one flow.
//!
//! A flow from a client `C:c` to an external frontend `F:f` balanced to backend `B:b`
//! makes up to four entries (`kind`):
//! - [`CT_FORWARD`] `(C:c -> F:f)`: ingress, rewrite the destination to `B:b`;
//! - [`CT_REPLY`] `(B:b -> C:c)`: egress, rewrite the source back to `F:f`;
//! - [`CT_SNAT_OUT`] `(C:c -> B:b)`: egress, a remote backend: rewrite the source to the
//!   node address and a port of its own, `N:n`;
//! - [`CT_SNAT_IN`] `(B:b -> N:n)`: ingress, the remote backend's reply: rewrite the
//!   destination back to `C:c` (the kernel then forwards it out, where `CT_REPLY` applies).
//!
//! A [`CT_FORWARD`] entry keeps a flow on its backend (a terminating backend keeps its
//! connections). A TCP SYN reuses it only while the backend still sits in the slot it was
//! chosen from and, for a remote backend, while the flow's SNAT port is still its own
//! (else it is a new connection and starts afresh); a UDP datagram only while
//! the backend still exists, so UDP flows leave a removed backend at once. Entries
//! leave by LRU eviction; a [`CT_SNAT_IN`] entry (which owns a SNAT port) records when
//! its flow last sent a packet and whether it closed, so its port can be taken over by a
//! new flow once it is free (see [`crate::NodeConfig`]).

/// One direction of one flow, as the packet carries it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtKey {
    /// Source address in network byte order; IPv4 in word 0, the rest zero.
    pub saddr: [u32; 4],
    /// Destination address, likewise.
    pub daddr: [u32; 4],
    /// Source port in network byte order.
    pub sport: u16,
    /// Destination port in network byte order.
    pub dport: u16,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub proto: u8,
    /// `AF_INET` or `AF_INET6`.
    pub family: u8,
    /// [`CT_FORWARD`], [`CT_REPLY`], [`CT_SNAT_OUT`] or [`CT_SNAT_IN`].
    pub kind: u8,
    /// Zero.
    pub pad: u8,
}

/// The address and port to write (destination or source, by the entry's kind).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtValue {
    /// Address in network byte order.
    pub addr: [u32; 4],
    /// Port in network byte order.
    pub port: u16,
    /// `AF_INET` or `AF_INET6`.
    pub family: u8,
    /// [`CT_CLOSING`] once a FIN or RST was seen ([`CT_SNAT_IN`] entries).
    pub flags: u8,
    /// The frontend's service id.
    pub service_id: u32,
    /// [`CT_FORWARD`]: the backend's id, to check the choice still holds when a new
    /// connection reuses the tuple (zero in other entries).
    pub backend_id: u32,
    /// [`CT_FORWARD`]: the slot the backend was found in (zero in other entries).
    pub slot: u32,
    /// [`CT_SNAT_IN`]: `bpf_ktime_get_ns` of the flow's last packet (either direction),
    /// to tell a SNAT port still in use from one a finished flow left behind.
    pub last_seen_ns: u64,
}

/// [`CtValue::flags`]: the flow sent a FIN or a RST.
pub const CT_CLOSING: u8 = 1;

/// Client to frontend, seen at ingress: rewrite the destination.
pub const CT_FORWARD: u8 = 1;
/// Backend to client, seen at egress: rewrite the source to the frontend.
pub const CT_REPLY: u8 = 2;
/// Client to remote backend, seen at egress: rewrite the source to the node.
pub const CT_SNAT_OUT: u8 = 3;
/// Remote backend to node, seen at ingress: rewrite the destination to the client.
pub const CT_SNAT_IN: u8 = 4;

/// Default first SNAT source port: above Linux's default ephemeral range (32768-60999),
/// so they do not collide with the node's own connections.
pub const SNAT_PORT_MIN: u16 = 61_000;
/// Default number of SNAT source ports (61000..=65535).
pub const SNAT_PORTS: u16 = 4_536;
/// Default: a SNAT port whose flow closed (FIN/RST), or whose UDP flow went quiet, is
/// reused after this long (the peer's TIME_WAIT).
pub const SNAT_CLOSED_REUSE_SECS: u32 = 60;
/// Default: a SNAT port whose TCP flow sent nothing for this long is reused.
pub const SNAT_IDLE_REUSE_SECS: u32 = 6 * 3600;

const _: () = assert!(core::mem::size_of::<CtKey>() == 40);
const _: () = assert!(core::mem::size_of::<CtValue>() == 40);

#[cfg(feature = "user")]
unsafe impl aya::Pod for CtKey {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for CtValue {}
