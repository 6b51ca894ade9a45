//! Session affinity (`sessionAffinity: ClientIP`): which backend a client last used for a
//! Service. At the socket layer the client is its network namespace (one Pod, one
//! address), identified by the namespace cookie.

/// A client and a Service.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    /// `bpf_get_netns_cookie` of the client socket's namespace.
    pub netns_cookie: u64,
    /// The frontend's service id.
    pub service_id: u32,
    /// Zero.
    pub pad: u32,
}

/// A client seen from the network (tc on the external interface) and a Service: the
/// client is its source address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientAffinityKey {
    /// Client address in network byte order; IPv4 in word 0, the rest zero.
    pub addr: [u32; 4],
    /// The frontend's service id.
    pub service_id: u32,
    /// `AF_INET` or `AF_INET6`.
    pub family: u8,
    /// Zero.
    pub pad: [u8; 3],
}

/// The backend last chosen, where it sat, and when.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityValue {
    /// The backend id.
    pub backend_id: u32,
    /// Its slot when chosen: reused only while the slot still holds it.
    pub slot: u32,
    /// `bpf_ktime_get_ns` of the last use.
    pub last_used_ns: u64,
}

const _: () = assert!(core::mem::size_of::<AffinityKey>() == 16);
const _: () = assert!(core::mem::size_of::<AffinityValue>() == 16);
const _: () = assert!(core::mem::size_of::<ClientAffinityKey>() == 24);

#[cfg(feature = "user")]
unsafe impl aya::Pod for AffinityKey {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for AffinityValue {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for ClientAffinityKey {}
