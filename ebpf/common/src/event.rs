//! Translation events: one per new connection translated by `connect4` and per new flow
//! recorded by tc or XDP, sent through a ring buffer (`FK_EVENTS`) to `ferrokube proxy
//! events`. A full ring drops events (never packets).

/// One translation.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) when it happened.
    pub time_ns: u64,
    /// The client's address, network order (IPv4 in word 0; zero for `connect4`, where
    /// the socket may not be bound yet).
    pub client: [u32; 4],
    /// The frontend's address.
    pub frontend: [u32; 4],
    /// The chosen backend's address.
    pub backend: [u32; 4],
    /// Client port, network order (zero for `connect4`).
    pub client_port: u16,
    /// Frontend port, network order.
    pub frontend_port: u16,
    /// Backend port, network order.
    pub backend_port: u16,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub proto: u8,
    /// [`SOURCE_CONNECT4`], [`SOURCE_TC`] or [`SOURCE_XDP`].
    pub source: u8,
    /// The frontend's service id.
    pub service_id: u32,
    /// The backend's id.
    pub backend_id: u32,
}

/// [`Event::source`]: the socket LB's `connect4` hook.
pub const SOURCE_CONNECT4: u8 = 1;
/// [`Event::source`]: tc ingress on the external interface.
pub const SOURCE_TC: u8 = 2;
/// [`Event::source`]: the XDP fast path.
pub const SOURCE_XDP: u8 = 3;

/// Default ring size in bytes (a power of two, a multiple of the page size).
pub const RING_BYTES: u32 = 1 << 20;

const _: () = assert!(core::mem::size_of::<Event>() == 72);

#[cfg(feature = "user")]
unsafe impl aya::Pod for Event {}
