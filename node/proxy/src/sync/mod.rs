//! The sync layer: turns Service/EndpointSlice changes into the fewest map writes.
//!
//! [`Syncer`] keeps the objects ([`Objects`]), the desired frontends and a mirror of what
//! the maps hold. Each change recomputes only the Services it touches and writes only the
//! entries whose content differs: a backend added to a Service writes one backend (if the
//! address is new), one slot and the frontend's count. Slots keep their positions when
//! backends come and go (a removed backend's slot is refilled from the end), so
//! established choices are not reshuffled.
//!
//! Writes are ordered so the programs never see a dangling reference: backends before the
//! slots that name them, slots before the count that exposes them, the count before the
//! slots it stops exposing, and those before the backends they named.
//!
//! External frontends balanced by Maglev ([`LbAlgorithm::Maglev`], per Service by the
//! `service.cilium.io/lb-algorithm` annotation, else [`Limits::lb_algorithm`]) also own
//! a lookup table, recomputed only when their set of backends changes and written entry
//! by entry where it differs (before the frontend exposes new backends through it).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use std::net::Ipv4Addr;

use ferrokube_ebpf_common::{SERVICE_EXTERNAL, SERVICE_MAGLEV, ServiceValue, SlotKey, maglev};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tracing::{debug, warn};

use crate::maglev::table_of_ids;
use crate::maps::{MapOps, MapsError};
use crate::model::{
    BackendAddr, Change, Desired, Frontend, FrontendSpec, LbAlgorithm, ObjectRef, Objects,
};

/// Errors applying desired state.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// A map operation failed (including a full map).
    #[error(transparent)]
    Maps(#[from] MapsError),
    /// No free id left: more frontends or backends than the maps were sized for.
    #[error("no free {what} id: the {what} map holds at most {capacity} entries")]
    Full {
        /// "service" or "backend".
        what: &'static str,
        /// The configured size.
        capacity: u32,
    },
    /// Some frontends did not fit in a full map and were left out whole (never written
    /// in part); every other frontend of the input was applied.
    #[error(
        "map {map} is full ({capacity} entries): {} frontend(s) not applied, first {}",
        skipped.len(),
        skipped.first().map(ToString::to_string).unwrap_or_default()
    )]
    MapFull {
        /// The map that was full first (`FK_SERVICES`, `FK_BACKENDS` or `FK_SLOTS`).
        map: &'static str,
        /// Its configured number of entries.
        capacity: u32,
        /// The frontends left out.
        skipped: Vec<Frontend>,
    },
}

impl SyncError {
    /// The map and its size, if this error is a full map.
    pub fn full_map(&self) -> Option<(&'static str, u32)> {
        match self {
            SyncError::Full { what, capacity } => Some((
                if *what == "service" {
                    ferrokube_ebpf_common::map_names::SERVICES
                } else {
                    ferrokube_ebpf_common::map_names::BACKENDS
                },
                *capacity,
            )),
            SyncError::Maps(MapsError::Full { map, capacity }) => Some((map, *capacity)),
            SyncError::MapFull { map, capacity, .. } => Some((map, *capacity)),
            SyncError::Maps(_) => None,
        }
    }
}

/// Entries the sync layer holds in each map (gauges for the metrics).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EntryCounts {
    /// Frontends.
    pub services: usize,
    /// Backend slots.
    pub slots: usize,
    /// Backends.
    pub backends: usize,
}

/// What one sync wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ApplyStats {
    /// Frontend entries written.
    pub service_writes: usize,
    /// Frontend entries removed.
    pub service_deletes: usize,
    /// Slot entries written.
    pub slot_writes: usize,
    /// Slot entries removed.
    pub slot_deletes: usize,
    /// Backend entries written.
    pub backend_writes: usize,
    /// Backend entries removed.
    pub backend_deletes: usize,
    /// Maglev lookup-table entries written.
    pub maglev_writes: usize,
}

impl ApplyStats {
    /// Total map operations.
    pub fn total(&self) -> usize {
        self.service_writes
            + self.service_deletes
            + self.slot_writes
            + self.slot_deletes
            + self.backend_writes
            + self.backend_deletes
            + self.maglev_writes
    }

    fn add(&mut self, other: ApplyStats) {
        self.service_writes += other.service_writes;
        self.service_deletes += other.service_deletes;
        self.slot_writes += other.slot_writes;
        self.slot_deletes += other.slot_deletes;
        self.backend_writes += other.backend_writes;
        self.backend_deletes += other.backend_deletes;
        self.maglev_writes += other.maglev_writes;
    }
}

/// One Kubernetes object of interest.
#[derive(Clone, Debug)]
pub enum Object {
    /// A Service.
    Service(Box<Service>),
    /// An EndpointSlice.
    Slice(Box<EndpointSlice>),
}

/// Input to the sync layer.
#[derive(Clone, Debug)]
pub enum Input {
    /// The complete set of objects (an initial list, or a file): replaces everything.
    Snapshot(Vec<Object>),
    /// One change.
    Change(Change),
}

/// Hands out ids `1..=capacity`, reusing freed ones.
#[derive(Debug)]
struct Ids {
    next: u32,
    free: Vec<u32>,
    capacity: u32,
    what: &'static str,
}

impl Ids {
    fn new(what: &'static str, capacity: u32) -> Self {
        Self {
            next: 1,
            free: Vec::new(),
            capacity,
            what,
        }
    }

    fn allocate(&mut self) -> Result<u32, SyncError> {
        if let Some(id) = self.free.pop() {
            return Ok(id);
        }
        if self.next > self.capacity {
            return Err(SyncError::Full {
                what: self.what,
                capacity: self.capacity,
            });
        }
        self.next += 1;
        Ok(self.next - 1)
    }

    fn release(&mut self, id: u32) {
        self.free.push(id);
    }

    /// Marks the adopted ids as used.
    fn adopt(&mut self, used: &BTreeSet<u32>) {
        let top = used.iter().next_back().copied().unwrap_or(0);
        self.next = top + 1;
        self.free = (1..=top).filter(|id| !used.contains(id)).rev().collect();
    }
}

#[derive(Debug, Clone)]
struct Applied {
    service_id: u32,
    slots: Vec<u32>,
    affinity_timeout: u32,
    flags: u32,
    /// A Maglev frontend's table number and what the table holds (backend ids; empty:
    /// not written, or not trusted).
    maglev: Option<(u32, Vec<u32>)>,
}

/// Map sizes the sync layer allocates ids within.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Frontends (service ids `1..=max_services`).
    pub max_services: u32,
    /// Backends (backend ids `1..=max_backends`).
    pub max_backends: u32,
    /// Maglev tables (table numbers `1..=maglev_tables`; the map holds one more).
    pub maglev_tables: u32,
    /// Maglev table size `M` (a prime).
    pub maglev_size: u16,
    /// How external frontends pick backends unless their Service says otherwise.
    pub lb_algorithm: LbAlgorithm,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_services: ferrokube_ebpf_common::sizes::MAX_SERVICES,
            max_backends: ferrokube_ebpf_common::sizes::MAX_BACKENDS,
            maglev_tables: ferrokube_ebpf_common::maglev::DEFAULT_TABLES,
            maglev_size: ferrokube_ebpf_common::maglev::DEFAULT_SIZE,
            lb_algorithm: LbAlgorithm::Random,
        }
    }
}

/// Desired state in, minimal map writes out.
#[derive(Debug)]
pub struct Syncer<M> {
    maps: M,
    objects: Objects,
    desired: Desired,
    applied: HashMap<Frontend, Applied>,
    backend_ids: HashMap<BackendAddr, u32>,
    /// backend id -> (address, number of slots naming it)
    backend_refs: HashMap<u32, (BackendAddr, usize)>,
    service_ids: Ids,
    backend_id_pool: Ids,
    maglev_tables: Ids,
    limits: Limits,
    /// Backends removed from the maps since [`Syncer::take_removed_backends`].
    removed: Vec<BackendAddr>,
    /// Frontends left out because a map was full, per map, since start.
    map_full: BTreeMap<&'static str, u64>,
}

impl<M: MapOps> Syncer<M> {
    /// A syncer over `maps`, adopting whatever they already hold (a restart keeps every
    /// entry that is still desired; the first sync writes only differences). Entries the
    /// sync layer cannot account for (slots past a count, unreferenced backends: a crash
    /// mid-apply) are removed.
    pub fn adopt(maps: M, node: &str, limits: Limits) -> Result<Self, SyncError> {
        let mut syncer = Self {
            maps,
            objects: Objects::new(node),
            desired: Desired::new(),
            applied: HashMap::new(),
            backend_ids: HashMap::new(),
            backend_refs: HashMap::new(),
            service_ids: Ids::new("service", limits.max_services),
            backend_id_pool: Ids::new("backend", limits.max_backends),
            maglev_tables: Ids::new("Maglev table", limits.maglev_tables),
            limits,
            removed: Vec::new(),
            map_full: BTreeMap::new(),
        };
        syncer.readopt()?;
        Ok(syncer)
    }

    /// Rebuilds the mirror of the maps from their contents (at start, and after a failed
    /// apply left them partly written), removing entries nothing can reach.
    fn readopt(&mut self) -> Result<(), SyncError> {
        let limits = self.limits;
        let maps = &mut self.maps;
        let state = maps.dump()?;
        let mut applied = HashMap::new();
        let mut used_service_ids = BTreeSet::new();
        let mut used_tables = BTreeSet::new();
        let size = u32::from(limits.maglev_size);
        let slots: BTreeMap<SlotKey, u32> = state.slots.iter().copied().collect();
        let backends: HashMap<u32, BackendAddr> = state
            .backends
            .iter()
            .filter_map(|(id, b)| Some((*id, BackendAddr::from_value(b)?)))
            .collect();
        let mut backend_refs: HashMap<u32, (BackendAddr, usize)> = HashMap::new();
        let mut kept_slots = BTreeSet::new();
        for (key, value) in &state.services {
            let Some(frontend) = Frontend::from_key(key) else {
                maps.delete_service(key)?;
                continue;
            };
            let mut list = Vec::new();
            for slot in 0..value.count {
                let slot_key = SlotKey {
                    service_id: value.service_id,
                    slot,
                };
                match slots.get(&slot_key).filter(|id| backends.contains_key(id)) {
                    Some(id) => {
                        list.push(*id);
                        kept_slots.insert(slot_key);
                    }
                    None => break,
                }
            }
            if list.len() != value.count as usize {
                // A hole: expose only the consistent prefix.
                maps.put_service(
                    key,
                    &ServiceValue {
                        count: list.len() as u32,
                        ..*value
                    },
                )?;
            }
            for id in &list {
                if let Some(addr) = backends.get(id) {
                    backend_refs.entry(*id).or_insert((*addr, 0)).1 += 1;
                }
            }
            used_service_ids.insert(value.service_id);
            let maglev = if value.flags & SERVICE_MAGLEV != 0 {
                let table = maglev::table_of(value.flags);
                used_tables.insert(table);
                let mut entries = maps.maglev_entries(table * size, size)?;
                let ids: BTreeSet<u32> = list.iter().copied().collect();
                // Trusted only when every entry names one of the frontend's backends
                // (and every backend appears): else rewritten on the next apply.
                let named: BTreeSet<u32> = entries.iter().copied().collect();
                if list.is_empty() || named != ids {
                    entries.clear();
                }
                Some((table, entries))
            } else {
                None
            };
            applied.insert(
                frontend,
                Applied {
                    service_id: value.service_id,
                    slots: list,
                    affinity_timeout: value.affinity_timeout,
                    flags: value.flags,
                    maglev,
                },
            );
        }
        for key in slots.keys().filter(|k| !kept_slots.contains(k)) {
            maps.delete_slot(key)?;
        }
        let mut backend_ids = HashMap::new();
        for (id, addr) in &backends {
            if backend_refs.contains_key(id) {
                backend_ids.insert(*addr, *id);
            } else {
                maps.delete_backend(*id)?;
            }
        }
        let mut service_ids = Ids::new("service", limits.max_services);
        service_ids.adopt(&used_service_ids);
        let mut backend_id_pool = Ids::new("backend", limits.max_backends);
        backend_id_pool.adopt(&backend_refs.keys().copied().collect());
        let mut maglev_tables = Ids::new("Maglev table", limits.maglev_tables);
        maglev_tables.adopt(&used_tables);
        debug!(
            frontends = applied.len(),
            backends = backend_ids.len(),
            "adopted map contents"
        );
        self.applied = applied;
        self.backend_ids = backend_ids;
        self.backend_refs = backend_refs;
        self.service_ids = service_ids;
        self.backend_id_pool = backend_id_pool;
        self.maglev_tables = maglev_tables;
        Ok(())
    }

    /// Frontends left out because a map was full, per map name, since start.
    pub fn map_full_counts(&self) -> &BTreeMap<&'static str, u64> {
        &self.map_full
    }

    /// Entries held in each map now.
    pub fn entry_counts(&self) -> EntryCounts {
        EntryCounts {
            services: self.applied.len(),
            slots: self.applied.values().map(|a| a.slots.len()).sum(),
            backends: self.backend_refs.len(),
        }
    }

    /// The maps.
    pub fn maps(&self) -> &M {
        &self.maps
    }

    /// The desired frontends and their backends.
    pub fn desired(&self) -> &Desired {
        &self.desired
    }

    /// The backends removed from the maps (no frontend uses them any more) since the last
    /// call: the sockets sent to them are to be destroyed. A backend that came back in
    /// the meantime is not listed.
    pub fn take_removed_backends(&mut self) -> Vec<BackendAddr> {
        let mut removed = std::mem::take(&mut self.removed);
        removed.retain(|b| !self.backend_ids.contains_key(b));
        removed.sort_unstable();
        removed.dedup();
        removed
    }

    /// Applies one input and returns what it wrote. On failure (a full map) the maps may
    /// hold part of the change: the mirror is rebuilt from them, so the next input is
    /// diffed against what the kernel really holds, and a later input that fits (or the
    /// same one after a restart with larger maps) completes it.
    pub fn apply(&mut self, input: Input) -> Result<ApplyStats, SyncError> {
        let result = match input {
            Input::Snapshot(objects) => self.apply_snapshot(objects),
            Input::Change(change) => self.apply_change(change),
        };
        if result.is_err()
            && let Err(e) = self.readopt()
        {
            warn!(error = %e, "rereading the maps after a failed apply failed");
        }
        result
    }

    fn apply_snapshot(&mut self, objects: Vec<Object>) -> Result<ApplyStats, SyncError> {
        let node = self.objects.node_name().to_string();
        let node_ips = self.objects.node_ips().to_vec();
        self.objects = Objects::new(node);
        self.objects.set_node_ips(node_ips);
        for object in objects {
            let change = match object {
                Object::Service(s) => Change::Service(s),
                Object::Slice(s) => Change::Slice(s),
            };
            self.objects.apply(change);
        }
        self.desired.clear();
        for service in self.objects.service_refs() {
            let (_, after) = self.objects.recompute(&service);
            self.merge_desired(&Desired::new(), &after);
        }
        let mut frontends: BTreeSet<Frontend> = self.applied.keys().copied().collect();
        frontends.extend(self.desired.keys().copied());
        self.apply_frontends(frontends)
    }

    /// Sets the node's addresses (NodePort frontends are made on each) and applies the
    /// NodePort frontends that come and go with them.
    pub fn set_node_ips(&mut self, ips: Vec<Ipv4Addr>) -> Result<ApplyStats, SyncError> {
        self.objects.set_node_ips(ips);
        let touched = self.objects.service_refs();
        let result = self.apply_touched(touched);
        if result.is_err()
            && let Err(e) = self.readopt()
        {
            warn!(error = %e, "rereading the maps after a failed apply failed");
        }
        result
    }

    fn apply_change(&mut self, change: Change) -> Result<ApplyStats, SyncError> {
        let touched = self.objects.apply(change);
        self.apply_touched(touched)
    }

    fn apply_touched(&mut self, touched: BTreeSet<ObjectRef>) -> Result<ApplyStats, SyncError> {
        let mut frontends = BTreeSet::new();
        for service in touched {
            let (before, after) = self.objects.recompute(&service);
            frontends.extend(before.keys().copied());
            frontends.extend(after.keys().copied());
            self.merge_desired(&before, &after);
        }
        self.apply_frontends(frontends)
    }

    fn merge_desired(&mut self, before: &Desired, after: &Desired) {
        for frontend in before.keys() {
            if !after.contains_key(frontend) {
                self.desired.remove(frontend);
            }
        }
        for (frontend, backends) in after {
            if let Some(existing) = self.desired.get(frontend)
                && existing != backends
                && !before.contains_key(frontend)
            {
                warn!(%frontend, "two Services claim the same frontend; the last one wins");
            }
            self.desired.insert(*frontend, backends.clone());
        }
    }

    fn apply_frontends(
        &mut self,
        frontends: impl IntoIterator<Item = Frontend>,
    ) -> Result<ApplyStats, SyncError> {
        let mut stats = ApplyStats::default();
        let mut full: Option<(&'static str, u32)> = None;
        let mut skipped = Vec::new();
        for frontend in frontends {
            let result = match self.desired.get(&frontend).cloned() {
                Some(spec) => self.upsert(frontend, &spec),
                None => self.remove(frontend),
            };
            match result {
                Ok(s) => stats.add(s),
                Err(e) => {
                    // A full map costs this frontend only: the rest of the input (other
                    // Services, removals that free room) still applies.
                    let Some((map, capacity)) = e.full_map() else {
                        return Err(e);
                    };
                    warn!(%frontend, map, capacity, "map full: frontend not applied");
                    *self.map_full.entry(map).or_default() += 1;
                    full.get_or_insert((map, capacity));
                    skipped.push(frontend);
                }
            }
        }
        match full {
            // The caller rereads the maps (`apply`), which drops what the skipped
            // frontends wrote before the map filled up (slots nothing names yet, backends
            // nothing references).
            Some((map, capacity)) => Err(SyncError::MapFull {
                map,
                capacity,
                skipped,
            }),
            None => Ok(stats),
        }
    }

    fn backend_id(&mut self, addr: BackendAddr, stats: &mut ApplyStats) -> Result<u32, SyncError> {
        if let Some(id) = self.backend_ids.get(&addr) {
            return Ok(*id);
        }
        let id = self.backend_id_pool.allocate()?;
        self.maps.reset_backend_counters(id)?;
        self.maps.put_backend(id, &addr.value())?;
        stats.backend_writes += 1;
        self.backend_ids.insert(addr, id);
        self.backend_refs.insert(id, (addr, 0));
        Ok(id)
    }

    fn release_backends(
        &mut self,
        ids: impl IntoIterator<Item = u32>,
        stats: &mut ApplyStats,
    ) -> Result<(), SyncError> {
        for id in ids {
            let Some((addr, refs)) = self.backend_refs.get_mut(&id) else {
                continue;
            };
            *refs = refs.saturating_sub(1);
            if *refs == 0 {
                let addr = *addr;
                self.maps.delete_backend(id)?;
                stats.backend_deletes += 1;
                self.removed.push(addr);
                self.backend_refs.remove(&id);
                self.backend_ids.remove(&addr);
                self.backend_id_pool.release(id);
            }
        }
        Ok(())
    }

    fn upsert(&mut self, frontend: Frontend, spec: &FrontendSpec) -> Result<ApplyStats, SyncError> {
        let mut stats = ApplyStats::default();
        let mut want = BTreeSet::new();
        for addr in &spec.backends {
            want.insert(self.backend_id(*addr, &mut stats)?);
        }
        let existing = self.applied.get(&frontend).cloned();
        let old_slots = existing
            .as_ref()
            .map(|a| a.slots.clone())
            .unwrap_or_default();
        let new_slots = place(&old_slots, &want);
        let (service_id, is_new) = match &existing {
            Some(applied) => (applied.service_id, false),
            None => {
                let id = self.service_ids.allocate()?;
                self.maps.reset_service_counters(id)?;
                (id, true)
            }
        };
        let old_affinity = existing.as_ref().map(|a| a.affinity_timeout).unwrap_or(0);
        let old_flags = existing.as_ref().map(|a| a.flags).unwrap_or(0);
        let old_maglev = existing.as_ref().and_then(|a| a.maglev.clone());
        let use_maglev = spec.external
            && self.limits.maglev_size > 0
            && spec.lb_algorithm.unwrap_or(self.limits.lb_algorithm) == LbAlgorithm::Maglev;
        let maglev = match (use_maglev, &old_maglev) {
            (false, _) => None,
            (true, Some((table, entries))) => Some((*table, entries.clone())),
            (true, None) => Some((self.maglev_tables.allocate()?, Vec::new())),
        };
        let mut flags = if spec.external { SERVICE_EXTERNAL } else { 0 };
        if let Some((table, _)) = &maglev {
            flags |= SERVICE_MAGLEV | (table << maglev::TABLE_SHIFT);
        }
        let value_changed = old_affinity != spec.affinity_timeout || old_flags != flags;
        let maglev_stale = maglev
            .as_ref()
            .is_some_and(|(_, entries)| entries.is_empty() != new_slots.is_empty());
        if !is_new && old_slots == new_slots && !value_changed && !maglev_stale {
            // Nothing changed; the backend ids were all known.
            return Ok(stats);
        }
        // Reference counts first, so releasing below sees the new state.
        for id in &new_slots {
            if let Some(entry) = self.backend_refs.get_mut(id) {
                entry.1 += 1;
            }
        }
        for (slot, id) in new_slots.iter().enumerate() {
            if old_slots.get(slot) != Some(id) {
                self.maps.put_slot(
                    &SlotKey {
                        service_id,
                        slot: slot as u32,
                    },
                    *id,
                )?;
                stats.slot_writes += 1;
            }
        }
        // The Maglev table before the frontend names it (or names new backends in it).
        let maglev = match maglev {
            Some((table, entries)) => Some((
                table,
                self.write_maglev(table, &entries, &new_slots, &mut stats)?,
            )),
            None => None,
        };
        if let Some((table, _)) = &old_maglev
            && maglev.is_none()
        {
            self.maglev_tables.release(*table);
        }
        if is_new || old_slots.len() != new_slots.len() || value_changed {
            self.maps.put_service(
                &frontend.key(),
                &ServiceValue {
                    service_id,
                    count: new_slots.len() as u32,
                    affinity_timeout: spec.affinity_timeout,
                    flags,
                },
            )?;
            stats.service_writes += 1;
        }
        for slot in new_slots.len()..old_slots.len() {
            self.maps.delete_slot(&SlotKey {
                service_id,
                slot: slot as u32,
            })?;
            stats.slot_deletes += 1;
        }
        self.applied.insert(
            frontend,
            Applied {
                service_id,
                slots: new_slots,
                affinity_timeout: spec.affinity_timeout,
                flags,
                maglev,
            },
        );
        self.release_backends(old_slots, &mut stats)?;
        Ok(stats)
    }

    /// Brings Maglev table `table` (holding `old`, empty: unknown) to the table of the
    /// backends `slots`, writing only the entries that differ; returns the new contents.
    /// Kept as it is when the backends did not change (no recomputation).
    fn write_maglev(
        &mut self,
        table: u32,
        old: &[u32],
        slots: &[u32],
        stats: &mut ApplyStats,
    ) -> Result<Vec<u32>, SyncError> {
        if slots.is_empty() {
            // No backend: the kernel refuses before looking at the table.
            return Ok(Vec::new());
        }
        let wanted: BTreeSet<u32> = slots.iter().copied().collect();
        if !old.is_empty() && old.iter().copied().collect::<BTreeSet<u32>>() == wanted {
            return Ok(old.to_vec());
        }
        let backends: Vec<(BackendAddr, u32)> = wanted
            .iter()
            .filter_map(|id| Some((self.backend_refs.get(id)?.0, *id)))
            .collect();
        let size = u32::from(self.limits.maglev_size);
        let new = table_of_ids(&backends, size);
        let start = table * size;
        for (i, id) in new.iter().enumerate() {
            if old.get(i) != Some(id) {
                self.maps.put_maglev(start + i as u32, *id)?;
                stats.maglev_writes += 1;
            }
        }
        Ok(new)
    }

    fn remove(&mut self, frontend: Frontend) -> Result<ApplyStats, SyncError> {
        let mut stats = ApplyStats::default();
        let Some(applied) = self.applied.remove(&frontend) else {
            return Ok(stats);
        };
        self.maps.delete_service(&frontend.key())?;
        stats.service_deletes += 1;
        for slot in 0..applied.slots.len() {
            self.maps.delete_slot(&SlotKey {
                service_id: applied.service_id,
                slot: slot as u32,
            })?;
            stats.slot_deletes += 1;
        }
        self.service_ids.release(applied.service_id);
        if let Some((table, _)) = applied.maglev {
            self.maglev_tables.release(table);
        }
        self.release_backends(applied.slots, &mut stats)?;
        Ok(stats)
    }
}

/// New slot contents: kept backends stay where they were, new ones fill the holes left by
/// removed ones and then the end; remaining holes are filled from the end.
fn place(old: &[u32], want: &BTreeSet<u32>) -> Vec<u32> {
    let mut slots: Vec<Option<u32>> = old
        .iter()
        .map(|id| want.contains(id).then_some(*id))
        .collect();
    let kept: BTreeSet<u32> = slots.iter().flatten().copied().collect();
    let mut new = want.iter().filter(|id| !kept.contains(id)).copied();
    for slot in slots.iter_mut().filter(|s| s.is_none()) {
        match new.next() {
            Some(id) => *slot = Some(id),
            None => break,
        }
    }
    slots.extend(new.map(Some));
    // Compact: move the last entry into each remaining hole.
    let mut i = 0;
    while i < slots.len() {
        if slots[i].is_none() {
            let last = slots.pop().flatten();
            if i < slots.len() {
                slots[i] = last;
            }
            continue;
        }
        i += 1;
    }
    slots.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests;
