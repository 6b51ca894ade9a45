//! Maglev consistent hashing: the flow hash both the kernel (to pick a lookup-table
//! position) and user space (tests) compute, and the layout of the lookup tables.
//!
//! Tables live in one array map (`FK_MAGLEV`) of `u32` backend ids: table `t` of size `M`
//! (prime, [`crate::NodeConfig::maglev_size`]) occupies entries `t * M .. (t + 1) * M`. A
//! frontend balanced by Maglev carries [`crate::SERVICE_MAGLEV`] and its table number in
//! the upper 16 bits of [`crate::ServiceValue::flags`] ([`table_of`]).

/// Default table size `M`: a prime, as Cilium's default (at least ~100 per backend keeps
/// the imbalance within about 1 % for up to ~160 backends).
pub const DEFAULT_SIZE: u16 = 16_381;
/// Default number of tables (frontends balanced by Maglev) per node.
pub const DEFAULT_TABLES: u32 = 64;

/// Where a frontend's table number sits in `ServiceValue::flags`.
pub const TABLE_SHIFT: u32 = 16;

/// The table number of a frontend from its `ServiceValue::flags`.
#[inline(always)]
pub const fn table_of(flags: u32) -> u32 {
    flags >> TABLE_SHIFT
}

#[inline(always)]
const fn mix(mut h: u32) -> u32 {
    // murmur3's finalizer.
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// The flow hash of a packet's 5-tuple (addresses and ports as raw network-order
/// values, as the packet carries them): the same on every node and every run.
#[inline(always)]
pub const fn flow_hash(saddr: u32, daddr: u32, sport: u16, dport: u16, proto: u8) -> u32 {
    let mut h = mix(saddr ^ 0x9e37_79b9);
    h = mix(h ^ daddr);
    h = mix(h ^ ((sport as u32) << 16 | dport as u32));
    mix(h ^ proto as u32)
}

/// The hash of a client address alone (Maglev with `sessionAffinity: ClientIP`).
#[inline(always)]
pub const fn client_hash(saddr: u32) -> u32 {
    mix(saddr ^ 0x9e37_79b9)
}
