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
