//! This node's own settings, one entry of an array map written by the loader on every
//! start (adopted programs read the new values at once).

/// What the programs need to know about the node.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NodeConfig {
    /// The address flows to remote backends are SNATed to, network byte order (IPv4 in
    /// word 0); all zero: no SNAT, remote backends are not used from outside.
    pub snat_addr: [u32; 4],
    /// `AF_INET` or `AF_INET6` (zero when unset).
    pub family: u8,
    /// Nonzero: the programs send aya-log records (`ferrokube proxy --bpf-log`). Read on
    /// every packet or call that could log, so the agent's setting applies at once, to
    /// adopted programs too.
    pub log: u8,
    /// First SNAT source port (host byte order).
    pub snat_port_min: u16,
    /// Number of SNAT source ports from `snat_port_min`.
    pub snat_ports: u16,
    /// The size `M` of each Maglev lookup table (a prime; zero: no tables).
    pub maglev_size: u16,
    /// A SNAT port whose flow closed (FIN/RST) or whose UDP flow went quiet is reused
    /// after this many seconds.
    pub closed_reuse_secs: u32,
    /// A SNAT port whose TCP flow sent nothing for this many seconds is reused.
    pub idle_reuse_secs: u32,
}

const _: () = assert!(core::mem::size_of::<NodeConfig>() == 32);

#[cfg(feature = "user")]
unsafe impl aya::Pod for NodeConfig {}
