//! The Service maps as the sync layer sees them: a small write interface ([`MapOps`]) with
//! two implementations, the kernel's pinned maps ([`KernelMaps`]) and an in-memory copy
//! for tests and benchmarks ([`MemoryMaps`]).

mod kernel;
mod memory;

pub use kernel::KernelMaps;
pub use memory::MemoryMaps;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ferrokube_ebpf_common::{
    BACKEND_LOCAL, Backend, Counters, FAMILY_V4, FAMILY_V6, ServiceKey, ServiceValue, SlotKey,
};

use crate::model::{BackendAddr, Frontend, Protocol};

/// Errors reading or writing the maps.
#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    /// A map is full: the configured size is too small for the cluster.
    #[error("map {map} is full ({capacity} entries): raise its size")]
    Full {
        /// The map's name.
        map: &'static str,
        /// Its configured number of entries.
        capacity: u32,
    },
    /// A map the programs declare is missing from the object or the pin directory.
    #[error("map {0} not found")]
    Missing(&'static str),
    /// The kernel refused a map operation.
    #[error("map {map}: {source}")]
    Kernel {
        /// The map's name.
        map: &'static str,
        /// What aya reported.
        #[source]
        source: aya::maps::MapError,
    },
    /// The number of CPUs (for per-CPU maps) is unknown.
    #[error("cannot read the number of CPUs: {0}")]
    Cpus(String),
}

impl MapsError {
    /// Is this "no such map" (a pin that is not there)?
    pub fn is_not_found(&self) -> bool {
        match self {
            Self::Missing(_) => true,
            Self::Kernel {
                source: aya::maps::MapError::SyscallError(e),
                ..
            } => e.io_error.kind() == std::io::ErrorKind::NotFound,
            _ => false,
        }
    }
}

/// Everything the maps hold that the sync layer owns, read back for adoption.
#[derive(Debug, Default, Clone)]
pub struct KernelState {
    /// Frontends.
    pub services: Vec<(ServiceKey, ServiceValue)>,
    /// Backend slots.
    pub slots: Vec<(SlotKey, u32)>,
    /// Backends by id.
    pub backends: Vec<(u32, Backend)>,
}

/// Writes to the Service maps, one entry at a time.
pub trait MapOps {
    /// Inserts or replaces a frontend.
    fn put_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<(), MapsError>;
    /// Removes a frontend.
    fn delete_service(&mut self, key: &ServiceKey) -> Result<(), MapsError>;
    /// Inserts or replaces a backend slot.
    fn put_slot(&mut self, key: &SlotKey, backend_id: u32) -> Result<(), MapsError>;
    /// Removes a backend slot.
    fn delete_slot(&mut self, key: &SlotKey) -> Result<(), MapsError>;
    /// Inserts or replaces a backend.
    fn put_backend(&mut self, id: u32, backend: &Backend) -> Result<(), MapsError>;
    /// Removes a backend.
    fn delete_backend(&mut self, id: u32) -> Result<(), MapsError>;
    /// Zeroes a Service's counters (its id is new).
    fn reset_service_counters(&mut self, service_id: u32) -> Result<(), MapsError>;
    /// Zeroes a backend's counters (its id is new).
    fn reset_backend_counters(&mut self, backend_id: u32) -> Result<(), MapsError>;
    /// Reads everything back.
    fn dump(&self) -> Result<KernelState, MapsError>;
    /// A Service's counters summed over CPUs.
    fn service_counters(&self, service_id: u32) -> Result<Counters, MapsError>;
    /// A backend's counters summed over CPUs.
    fn backend_counters(&self, backend_id: u32) -> Result<Counters, MapsError>;
    /// Writes entry `index` of the Maglev tables (table `t`, position `p`: `t * M + p`).
    fn put_maglev(&mut self, index: u32, backend_id: u32) -> Result<(), MapsError>;
    /// Reads `len` Maglev entries from `start` (one table).
    fn maglev_entries(&self, start: u32, len: u32) -> Result<Vec<u32>, MapsError>;
}

fn addr_words(ip: IpAddr) -> ([u32; 4], u8) {
    match ip {
        IpAddr::V4(v4) => ([u32::from_ne_bytes(v4.octets()), 0, 0, 0], FAMILY_V4),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            ([w(0), w(4), w(8), w(12)], FAMILY_V6)
        }
    }
}

fn words_addr(words: [u32; 4], family: u8) -> Option<IpAddr> {
    match family {
        FAMILY_V4 => Some(IpAddr::V4(Ipv4Addr::from(words[0].to_ne_bytes()))),
        FAMILY_V6 => {
            let mut o = [0u8; 16];
            for (i, w) in words.iter().enumerate() {
                o[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
            }
            Some(IpAddr::V6(Ipv6Addr::from(o)))
        }
        _ => None,
    }
}

impl Frontend {
    /// The map key.
    pub fn key(&self) -> ServiceKey {
        let (addr, family) = addr_words(self.ip);
        ServiceKey {
            addr,
            port: self.port.to_be(),
            proto: self.proto.number(),
            family,
        }
    }

    /// From a map key (`None` for a family or protocol we do not know).
    pub fn from_key(key: &ServiceKey) -> Option<Self> {
        Some(Self {
            ip: words_addr(key.addr, key.family)?,
            port: u16::from_be(key.port),
            proto: Protocol::from_number(key.proto)?,
        })
    }
}

impl BackendAddr {
    /// The map value.
    pub fn value(&self) -> Backend {
        let (addr, family) = addr_words(self.ip);
        Backend {
            addr,
            port: self.port.to_be(),
            proto: self.proto.number(),
            family,
            flags: if self.local { BACKEND_LOCAL } else { 0 },
            pad: [0; 3],
        }
    }

    /// From a map value (`None` for a family or protocol we do not know).
    pub fn from_value(value: &Backend) -> Option<Self> {
        Some(Self {
            ip: words_addr(value.addr, value.family)?,
            port: u16::from_be(value.port),
            proto: Protocol::from_number(value.proto)?,
            local: value.flags & BACKEND_LOCAL != 0,
        })
    }
}
