//! Per-socket reverse translation: a socket that was sent to a backend reports the
//! Service address as its peer (getpeername) and as the source of datagrams (recvmsg).

/// A socket (by cookie) and the backend it was translated to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RevNatKey {
    /// `bpf_get_socket_cookie` of the client socket.
    pub cookie: u64,
    /// Backend address in network byte order.
    pub addr: [u32; 4],
    /// Backend port in network byte order.
    pub port: u16,
    /// `AF_INET` or `AF_INET6`.
    pub family: u8,
    /// Zero.
    pub pad: u8,
    /// Zero.
    pub pad2: u32,
}

/// The Service address the socket asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RevNatValue {
    /// Service address in network byte order.
    pub addr: [u32; 4],
    /// Service port in network byte order.
    pub port: u16,
    /// `AF_INET` or `AF_INET6`.
    pub family: u8,
    /// Zero.
    pub pad: u8,
    /// The frontend's service id.
    pub service_id: u32,
}

const _: () = assert!(core::mem::size_of::<RevNatKey>() == 32);
const _: () = assert!(core::mem::size_of::<RevNatValue>() == 24);

#[cfg(feature = "user")]
unsafe impl aya::Pod for RevNatKey {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for RevNatValue {}
