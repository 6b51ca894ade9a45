//! An in-memory [`MapOps`] for tests and benchmarks of the sync layer.

use std::collections::BTreeMap;

use ferrokube_ebpf_common::{Backend, Counters, ServiceKey, ServiceValue, SlotKey};

use super::{KernelState, MapOps, MapsError};

/// The three maps as ordered maps, with a log of every write.
#[derive(Debug, Default, Clone)]
pub struct MemoryMaps {
    /// Frontends.
    pub services: BTreeMap<[u8; 20], (ServiceKey, ServiceValue)>,
    /// Slots.
    pub slots: BTreeMap<SlotKey, u32>,
    /// Backends.
    pub backends: BTreeMap<u32, Backend>,
    /// Maglev entries by index (absent: zero).
    pub maglev: BTreeMap<u32, u32>,
    /// Every operation, in order, as text (for assertions).
    pub log: Vec<String>,
}

fn service_key_bytes(key: &ServiceKey) -> [u8; 20] {
    let mut out = [0u8; 20];
    for (i, w) in key.addr.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&w.to_be_bytes());
    }
    out[16..18].copy_from_slice(&key.port.to_be_bytes());
    out[18] = key.proto;
    out[19] = key.family;
    out
}

impl MapOps for MemoryMaps {
    fn put_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<(), MapsError> {
        self.log
            .push(format!("put_service {} {:?}", value.service_id, value));
        self.services.insert(service_key_bytes(key), (*key, *value));
        Ok(())
    }
    fn delete_service(&mut self, key: &ServiceKey) -> Result<(), MapsError> {
        self.log.push(format!("delete_service {key:?}"));
        self.services.remove(&service_key_bytes(key));
        Ok(())
    }
    fn put_slot(&mut self, key: &SlotKey, backend_id: u32) -> Result<(), MapsError> {
        self.log.push(format!(
            "put_slot {}:{} {backend_id}",
            key.service_id, key.slot
        ));
        self.slots.insert(*key, backend_id);
        Ok(())
    }
    fn delete_slot(&mut self, key: &SlotKey) -> Result<(), MapsError> {
        self.log
            .push(format!("delete_slot {}:{}", key.service_id, key.slot));
        self.slots.remove(key);
        Ok(())
    }
    fn put_backend(&mut self, id: u32, backend: &Backend) -> Result<(), MapsError> {
        self.log.push(format!("put_backend {id}"));
        self.backends.insert(id, *backend);
        Ok(())
    }
    fn delete_backend(&mut self, id: u32) -> Result<(), MapsError> {
        self.log.push(format!("delete_backend {id}"));
        self.backends.remove(&id);
        Ok(())
    }
    fn reset_service_counters(&mut self, _service_id: u32) -> Result<(), MapsError> {
        Ok(())
    }
    fn reset_backend_counters(&mut self, _backend_id: u32) -> Result<(), MapsError> {
        Ok(())
    }
    fn dump(&self) -> Result<KernelState, MapsError> {
        Ok(KernelState {
            services: self.services.values().copied().collect(),
            slots: self.slots.iter().map(|(k, v)| (*k, *v)).collect(),
            backends: self.backends.iter().map(|(k, v)| (*k, *v)).collect(),
        })
    }
    fn service_counters(&self, _service_id: u32) -> Result<Counters, MapsError> {
        Ok(Counters::default())
    }
    fn backend_counters(&self, _backend_id: u32) -> Result<Counters, MapsError> {
        Ok(Counters::default())
    }
    fn put_maglev(&mut self, index: u32, backend_id: u32) -> Result<(), MapsError> {
        self.maglev.insert(index, backend_id);
        Ok(())
    }
    fn maglev_entries(&self, start: u32, len: u32) -> Result<Vec<u32>, MapsError> {
        Ok((start..start + len)
            .map(|i| self.maglev.get(&i).copied().unwrap_or(0))
            .collect())
    }
}
