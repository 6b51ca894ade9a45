//! This node's own settings, one entry of an array map written by the loader.

/// What the tc programs need to know about the node.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NodeConfig {
    /// The address flows to remote backends are SNATed to, network byte order (IPv4 in
    /// word 0); all zero: no SNAT, remote backends are not used from outside.
    pub snat_addr: [u32; 4],
    /// `AF_INET` or `AF_INET6` (zero when unset).
    pub family: u8,
    /// Zero.
    pub pad: [u8; 3],
}

const _: () = assert!(core::mem::size_of::<NodeConfig>() == 20);

#[cfg(feature = "user")]
unsafe impl aya::Pod for NodeConfig {}
