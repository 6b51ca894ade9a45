//! The frontend map: which (address, port, protocol) is a Service, and how many backends
//! it has.

/// A Service frontend: ClusterIP (or other Service address), port and protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// Address in network byte order; IPv4 in word 0, the rest zero.
    pub addr: [u32; 4],
    /// Port in network byte order.
    pub port: u16,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub proto: u8,
    /// `AF_INET` or `AF_INET6`.
    pub family: u8,
}

impl ServiceKey {
    /// An IPv4 frontend from the raw kernel representation (network byte order).
    pub const fn v4(addr_be: u32, port_be: u16, proto: u8) -> Self {
        Self {
            addr: [addr_be, 0, 0, 0],
            port: port_be,
            proto,
            family: crate::FAMILY_V4,
        }
    }
}

/// What the programs need to translate a frontend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceValue {
    /// Stable id of this frontend: slot keys, counters and reverse NAT refer to it.
    pub service_id: u32,
    /// Number of backend slots `0..count`; zero means "refuse new connections".
    pub count: u32,
    /// Session affinity timeout in seconds; zero means none (random per connection).
    pub affinity_timeout: u32,
    /// [`SERVICE_EXTERNAL`], [`SERVICE_MAGLEV`] and, with the latter, the Maglev table
    /// number in the upper 16 bits ([`crate::maglev::table_of`]); zero for a ClusterIP.
    pub flags: u32,
}

/// [`ServiceValue::flags`]: a NodePort, ExternalIP or LoadBalancer IP frontend, which the
/// tc programs on the node's external interface translate for traffic from outside.
pub const SERVICE_EXTERNAL: u32 = 1;

/// [`ServiceValue::flags`]: new flows from outside pick their backend from the frontend's
/// Maglev lookup table (by a hash of the 5-tuple, or of the client address under session
/// affinity) instead of a random slot.
pub const SERVICE_MAGLEV: u32 = 2;

const _: () = assert!(core::mem::size_of::<ServiceKey>() == 20);
const _: () = assert!(core::mem::size_of::<ServiceValue>() == 16);

#[cfg(feature = "user")]
unsafe impl aya::Pod for ServiceKey {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for ServiceValue {}
