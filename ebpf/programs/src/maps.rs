//! The maps, pinned by name (the loader picks the directory and the sizes).

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use ferrokube_ebpf_common::{
    AffinityKey, AffinityValue, Backend, ClientAffinityKey, Counters, CtKey, CtValue, Event,
    NodeConfig, RevNatKey, RevNatValue, ServiceKey, ServiceValue, SlotKey, event, maglev, sizes,
    stats,
};

#[map(name = "FK_SERVICES")]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::pinned(sizes::MAX_SERVICES, 0);

#[map(name = "FK_SLOTS")]
pub static SLOTS: HashMap<SlotKey, u32> = HashMap::pinned(sizes::MAX_SLOTS, 0);

#[map(name = "FK_BACKENDS")]
pub static BACKENDS: HashMap<u32, Backend> = HashMap::pinned(sizes::MAX_BACKENDS, 0);

#[map(name = "FK_REVNAT")]
pub static REVNAT: LruHashMap<RevNatKey, RevNatValue> = LruHashMap::pinned(sizes::MAX_REVNAT, 0);

#[map(name = "FK_AFFINITY")]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::pinned(sizes::MAX_AFFINITY, 0);

#[map(name = "FK_SVC_STATS")]
pub static SERVICE_STATS: PerCpuArray<Counters> = PerCpuArray::pinned(sizes::MAX_SERVICES + 1, 0);

#[map(name = "FK_BE_STATS")]
pub static BACKEND_STATS: PerCpuArray<Counters> = PerCpuArray::pinned(sizes::MAX_BACKENDS + 1, 0);

#[map(name = "FK_CLIENT_AFF")]
pub static CLIENT_AFFINITY: LruHashMap<ClientAffinityKey, AffinityValue> =
    LruHashMap::pinned(sizes::MAX_AFFINITY, 0);

#[map(name = "FK_CT")]
pub static CT: LruHashMap<CtKey, CtValue> = LruHashMap::pinned(sizes::MAX_CT, 0);

#[map(name = "FK_NODE")]
pub static NODE: Array<NodeConfig> = Array::pinned(1, 0);

#[map(name = "FK_XDP_STATS")]
pub static XDP_STATS: PerCpuArray<u64> = PerCpuArray::pinned(stats::xdp::COUNT, 0);

#[map(name = "FK_MAGLEV")]
pub static MAGLEV: Array<u32> =
    Array::pinned(maglev::DEFAULT_TABLES * maglev::DEFAULT_SIZE as u32, 0);

#[map(name = "FK_EVENTS")]
pub static EVENTS: RingBuf = RingBuf::pinned(event::RING_BYTES, 0);

/// Sends a translation event; a full ring drops it.
#[inline(always)]
pub fn emit(event: &Event) {
    if let Some(mut entry) = EVENTS.reserve::<Event>(0) {
        entry.write(*event);
        entry.submit(0);
    }
}

/// Whether the programs send aya-log records: the `log` byte of this node's settings
/// (`ferrokube proxy --bpf-log`), which the agent writes on every start, so it applies to
/// adopted programs too. One lookup of a one-entry array (which the verifier inlines) and
/// a branch when off.
#[inline(always)]
pub fn log_on() -> bool {
    NODE.get(0).is_some_and(|node| node.log != 0)
}
