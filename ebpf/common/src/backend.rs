//! Backend slots (per Service) and backends (by id).

/// A Service's backend slot: slot `i` of `0..ServiceValue::count`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotKey {
    /// The frontend's `ServiceValue::service_id`.
    pub service_id: u32,
    /// Slot index.
    pub slot: u32,
}

/// One backend address (a Pod IP and target port).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend {
    /// Address in network byte order; IPv4 in word 0, the rest zero.
    pub addr: [u32; 4],
    /// Port in network byte order.
    pub port: u16,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub proto: u8,
    /// `AF_INET` or `AF_INET6`.
    pub family: u8,
    /// [`BACKEND_LOCAL`] when the endpoint runs on this node.
    pub flags: u8,
    /// Zero.
    pub pad: [u8; 3],
}

/// [`Backend::flags`]: the endpoint's `nodeName` is this node, so traffic from outside
/// reaches it without SNAT.
pub const BACKEND_LOCAL: u8 = 1;

const _: () = assert!(core::mem::size_of::<SlotKey>() == 8);
const _: () = assert!(core::mem::size_of::<Backend>() == 24);

#[cfg(feature = "user")]
unsafe impl aya::Pod for SlotKey {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for Backend {}
