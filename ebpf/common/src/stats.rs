//! Counters, per CPU, per Service and per backend.

/// What the socket programs count for a Service or a backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Counters {
    /// Connections (connect) and datagrams (unconnected sendmsg) translated.
    pub translations: u64,
    /// Connections or datagrams refused because the Service had no backend.
    pub refused: u64,
}

const _: () = assert!(core::mem::size_of::<Counters>() == 16);

#[cfg(feature = "user")]
unsafe impl aya::Pod for Counters {}

/// Indices of the XDP fast path's counters (`FK_XDP_STATS`, a per-CPU array of `u64`).
pub mod xdp {
    /// Packets of flows to remote backends translated and sent back out (client side).
    pub const FORWARD: u32 = 0;
    /// Replies from remote backends translated and sent back out to their clients.
    pub const REVERSE: u32 = 1;
    /// Packets of such flows passed to tc instead (next hop unresolved, TTL, ...).
    pub const FALLBACK: u32 = 2;
    /// New flows (to remote backends) picked and recorded by the XDP program.
    pub const NEW: u32 = 3;
    /// Number of counters.
    pub const COUNT: u32 = 4;
}
