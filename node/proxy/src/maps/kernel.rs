//! [`MapOps`] on the kernel's maps (aya), from a loaded object or from their pins.

use std::path::Path;

use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuValues};
use ferrokube_ebpf_common::{Backend, Counters, ServiceKey, ServiceValue, SlotKey, map_names};

use nix::errno::Errno;

use super::{KernelState, MapOps, MapsError};

/// The Service maps of one node.
pub struct KernelMaps {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    slots: HashMap<MapData, SlotKey, u32>,
    backends: HashMap<MapData, u32, Backend>,
    service_stats: PerCpuArray<MapData, Counters>,
    backend_stats: PerCpuArray<MapData, Counters>,
    maglev: Array<MapData, u32>,
    capacity: Capacity,
    nr_cpus: usize,
}

impl std::fmt::Debug for KernelMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelMaps")
            .field("capacity", &self.capacity)
            .field("nr_cpus", &self.nr_cpus)
            .finish_non_exhaustive()
    }
}

/// Map sizes, for "map full" errors.
#[derive(Debug, Clone, Copy)]
pub struct Capacity {
    /// Frontends.
    pub services: u32,
    /// Slots.
    pub slots: u32,
    /// Backends.
    pub backends: u32,
    /// Maglev entries (tables times their size).
    pub maglev: u32,
}

fn kernel(map: &'static str) -> impl Fn(MapError) -> MapsError {
    move |source| MapsError::Kernel { map, source }
}

fn typed<T: TryFrom<Map, Error = MapError>>(
    map: Option<Map>,
    name: &'static str,
) -> Result<T, MapsError> {
    T::try_from(map.ok_or(MapsError::Missing(name))?).map_err(kernel(name))
}

fn max_entries(map: &Map) -> u32 {
    let data: &MapData = match map {
        Map::HashMap(d) | Map::PerCpuArray(d) | Map::LruHashMap(d) | Map::Array(d) => d,
        _ => return 0,
    };
    data.info().map(|info| info.max_entries()).unwrap_or(0)
}

/// Is this "no space left in the map" (`E2BIG` from the kernel)?
fn is_full(error: &MapError) -> bool {
    matches!(error, MapError::SyscallError(e) if e.io_error.raw_os_error() == Some(Errno::E2BIG as i32))
}

impl KernelMaps {
    /// Takes the maps out of a loaded object.
    pub fn from_ebpf(ebpf: &mut aya::Ebpf) -> Result<Self, MapsError> {
        let mut take = |name: &'static str| ebpf.take_map(name);
        Self::from_maps(
            take(map_names::SERVICES),
            take(map_names::SLOTS),
            take(map_names::BACKENDS),
            take(map_names::SERVICE_STATS),
            take(map_names::BACKEND_STATS),
            take(map_names::MAGLEV),
        )
    }

    /// Opens the maps pinned in `dir` (what `ferrokube proxy list` reads).
    pub fn from_pins(dir: &Path) -> Result<Self, MapsError> {
        let open = |name: &'static str| -> Result<Option<Map>, MapsError> {
            let data = MapData::from_pin(dir.join(name)).map_err(kernel(name))?;
            Map::from_map_data(data).map(Some).map_err(kernel(name))
        };
        Self::from_maps(
            open(map_names::SERVICES)?,
            open(map_names::SLOTS)?,
            open(map_names::BACKENDS)?,
            open(map_names::SERVICE_STATS)?,
            open(map_names::BACKEND_STATS)?,
            open(map_names::MAGLEV)?,
        )
    }

    fn from_maps(
        services: Option<Map>,
        slots: Option<Map>,
        backends: Option<Map>,
        service_stats: Option<Map>,
        backend_stats: Option<Map>,
        maglev: Option<Map>,
    ) -> Result<Self, MapsError> {
        let capacity = Capacity {
            services: services.as_ref().map(max_entries).unwrap_or(0),
            slots: slots.as_ref().map(max_entries).unwrap_or(0),
            backends: backends.as_ref().map(max_entries).unwrap_or(0),
            maglev: maglev.as_ref().map(max_entries).unwrap_or(0),
        };
        let nr_cpus =
            aya::util::nr_cpus().map_err(|(what, e)| MapsError::Cpus(format!("{what}: {e}")))?;
        Ok(Self {
            services: typed(services, map_names::SERVICES)?,
            slots: typed(slots, map_names::SLOTS)?,
            backends: typed(backends, map_names::BACKENDS)?,
            service_stats: typed(service_stats, map_names::SERVICE_STATS)?,
            backend_stats: typed(backend_stats, map_names::BACKEND_STATS)?,
            maglev: typed(maglev, map_names::MAGLEV)?,
            capacity,
            nr_cpus,
        })
    }

    /// The maps' sizes.
    pub fn capacity(&self) -> Capacity {
        self.capacity
    }

    fn zero(&self) -> Result<PerCpuValues<Counters>, MapsError> {
        PerCpuValues::try_from(vec![Counters::default(); self.nr_cpus])
            .map_err(|e| MapsError::Cpus(e.to_string()))
    }
}

fn sum(values: PerCpuValues<Counters>) -> Counters {
    values.iter().fold(Counters::default(), |acc, c| Counters {
        translations: acc.translations + c.translations,
        refused: acc.refused + c.refused,
    })
}

/// Deleting what is already gone is fine.
fn ignore_missing(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e))
            if e.io_error.raw_os_error() == Some(Errno::ENOENT as i32) =>
        {
            Ok(())
        }
        other => other,
    }
}

impl MapOps for KernelMaps {
    fn put_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<(), MapsError> {
        let capacity = self.capacity.services;
        self.services.insert(key, value, 0).map_err(|e| {
            if is_full(&e) {
                MapsError::Full {
                    map: map_names::SERVICES,
                    capacity,
                }
            } else {
                kernel(map_names::SERVICES)(e)
            }
        })
    }
    fn delete_service(&mut self, key: &ServiceKey) -> Result<(), MapsError> {
        ignore_missing(self.services.remove(key)).map_err(kernel(map_names::SERVICES))
    }
    fn put_slot(&mut self, key: &SlotKey, backend_id: u32) -> Result<(), MapsError> {
        let capacity = self.capacity.slots;
        self.slots.insert(key, backend_id, 0).map_err(|e| {
            if is_full(&e) {
                MapsError::Full {
                    map: map_names::SLOTS,
                    capacity,
                }
            } else {
                kernel(map_names::SLOTS)(e)
            }
        })
    }
    fn delete_slot(&mut self, key: &SlotKey) -> Result<(), MapsError> {
        ignore_missing(self.slots.remove(key)).map_err(kernel(map_names::SLOTS))
    }
    fn put_backend(&mut self, id: u32, backend: &Backend) -> Result<(), MapsError> {
        let capacity = self.capacity.backends;
        self.backends.insert(id, backend, 0).map_err(|e| {
            if is_full(&e) {
                MapsError::Full {
                    map: map_names::BACKENDS,
                    capacity,
                }
            } else {
                kernel(map_names::BACKENDS)(e)
            }
        })
    }
    fn delete_backend(&mut self, id: u32) -> Result<(), MapsError> {
        ignore_missing(self.backends.remove(&id)).map_err(kernel(map_names::BACKENDS))
    }
    fn reset_service_counters(&mut self, service_id: u32) -> Result<(), MapsError> {
        let zero = self.zero()?;
        self.service_stats
            .set(service_id, zero, 0)
            .map_err(kernel(map_names::SERVICE_STATS))
    }
    fn reset_backend_counters(&mut self, backend_id: u32) -> Result<(), MapsError> {
        let zero = self.zero()?;
        self.backend_stats
            .set(backend_id, zero, 0)
            .map_err(kernel(map_names::BACKEND_STATS))
    }
    fn dump(&self) -> Result<KernelState, MapsError> {
        Ok(KernelState {
            services: self
                .services
                .iter()
                .collect::<Result<_, _>>()
                .map_err(kernel(map_names::SERVICES))?,
            slots: self
                .slots
                .iter()
                .collect::<Result<_, _>>()
                .map_err(kernel(map_names::SLOTS))?,
            backends: self
                .backends
                .iter()
                .collect::<Result<_, _>>()
                .map_err(kernel(map_names::BACKENDS))?,
        })
    }
    fn service_counters(&self, service_id: u32) -> Result<Counters, MapsError> {
        self.service_stats
            .get(&service_id, 0)
            .map(sum)
            .map_err(kernel(map_names::SERVICE_STATS))
    }
    fn backend_counters(&self, backend_id: u32) -> Result<Counters, MapsError> {
        self.backend_stats
            .get(&backend_id, 0)
            .map(sum)
            .map_err(kernel(map_names::BACKEND_STATS))
    }
    fn put_maglev(&mut self, index: u32, backend_id: u32) -> Result<(), MapsError> {
        let capacity = self.capacity.maglev;
        if index >= capacity {
            return Err(MapsError::Full {
                map: map_names::MAGLEV,
                capacity,
            });
        }
        self.maglev
            .set(index, backend_id, 0)
            .map_err(kernel(map_names::MAGLEV))
    }
    fn maglev_entries(&self, start: u32, len: u32) -> Result<Vec<u32>, MapsError> {
        (start..start.saturating_add(len))
            .map(|i| self.maglev.get(&i, 0).map_err(kernel(map_names::MAGLEV)))
            .collect()
    }
}
