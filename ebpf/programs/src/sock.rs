//! Socket load balancing on the cgroup sock_addr hooks (IPv4).

use aya_ebpf::{
    EbpfContext as _,
    helpers::generated::{
        bpf_get_netns_cookie, bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_ktime_get_ns,
        bpf_set_retval,
    },
    macros::{cgroup_sock, cgroup_sock_addr},
    maps::PerCpuArray,
    programs::{SockAddrContext, SockContext},
};
use ferrokube_ebpf_common::{
    AffinityKey, AffinityValue, Counters, FAMILY_V4, PROTO_TCP, PROTO_UDP, RevNatKey, RevNatValue,
    ServiceKey, SlotKey,
    event::{Event, SOURCE_CONNECT4},
};

use crate::maps::{
    AFFINITY, BACKEND_STATS, BACKENDS, REVNAT, SERVICE_STATS, SERVICES, SLOTS, emit, log_on,
};

/// Hook verdicts.
const ALLOW: i32 = 1;
const REJECT: i32 = 0;
const ECONNREFUSED: i32 = 111;

#[cgroup_sock_addr(connect4)]
pub fn fk_connect4(ctx: SockAddrContext) -> i32 {
    translate4(&ctx, true)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn fk_sendmsg4(ctx: SockAddrContext) -> i32 {
    translate4(&ctx, false)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn fk_recvmsg4(ctx: SockAddrContext) -> i32 {
    reverse4(&ctx);
    ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn fk_getpeername4(ctx: SockAddrContext) -> i32 {
    reverse4(&ctx);
    ALLOW
}

/// A socket closing: drops its reverse translation (`FK_REVNAT` entry) if it was
/// connected to a backend, so the LRU map holds live sockets instead of waiting to evict
/// the entries of closed ones (an eviction costs the next `connect` a few hundred ns, and
/// under churn could take a live socket's entry). An unconnected UDP socket's entries
/// (one per backend it sent to) are not known here and are left to the LRU.
#[cgroup_sock(sock_release)]
pub fn fk_sock_release(ctx: SockContext) -> i32 {
    // SAFETY: the context is the hook's `struct bpf_sock`, valid for the whole call.
    let sk = unsafe { &*ctx.sock };
    if sk.family != AF_INET || sk.dst_ip4 == 0 {
        return ALLOW;
    }
    // SAFETY: the context pointer is the hook's own argument.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = RevNatKey {
        cookie,
        addr: [sk.dst_ip4, 0, 0, 0],
        port: sk.dst_port,
        family: FAMILY_V4,
        pad: 0,
        pad2: 0,
    };
    // Most sockets were never translated: a miss is the common case.
    let _ = REVNAT.remove(&key);
    ALLOW
}

/// `AF_INET`, as `struct bpf_sock` reports the family.
const AF_INET: u32 = 2;

enum Verdict {
    /// Not a Service, or translated: let the call proceed.
    Pass,
    /// A Service with no backend: refuse.
    Refuse(u32),
}

/// `connect`: the connect4 hook (which reports an event per translation).
fn translate4(ctx: &SockAddrContext, connect: bool) -> i32 {
    match try_translate4(ctx, connect) {
        Verdict::Pass => ALLOW,
        Verdict::Refuse(service_id) => {
            count(&SERVICE_STATS, service_id, false);
            if log_on() {
                aya_log_ebpf::info!(ctx, "refused: service {} has no backend", service_id);
            }
            // SAFETY: a helper call with a plain integer; allowed on cgroup sock_addr hooks
            // (kernel >= 5.18) and makes the syscall fail with this errno.
            unsafe { bpf_set_retval(-ECONNREFUSED) };
            REJECT
        }
    }
}

fn try_translate4(ctx: &SockAddrContext, connect: bool) -> Verdict {
    // SAFETY: the kernel hands the hook a valid `bpf_sock_addr`; the verifier checks
    // every field access below.
    let sa = unsafe { &mut *ctx.sock_addr };
    let proto = sa.protocol as u8;
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Verdict::Pass;
    }
    let key = ServiceKey::v4(sa.user_ip4, sa.user_port as u16, proto);
    // SAFETY: values are copied out at once; the user side replaces, never edits in place.
    let Some(service) = (unsafe { SERVICES.get(&key) }).copied() else {
        return Verdict::Pass;
    };
    if service.count == 0 {
        return Verdict::Refuse(service.service_id);
    }
    let Some(backend_id) = pick_backend(ctx, &service) else {
        return Verdict::Refuse(service.service_id);
    };
    // SAFETY: as above, copied at once.
    let Some(backend) = (unsafe { BACKENDS.get(&backend_id) }).copied() else {
        return Verdict::Refuse(service.service_id);
    };
    // SAFETY: the context pointer is the hook's own argument.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let rev_key = RevNatKey {
        cookie,
        addr: backend.addr,
        port: backend.port,
        family: FAMILY_V4,
        pad: 0,
        pad2: 0,
    };
    let rev_value = RevNatValue {
        addr: key.addr,
        port: key.port,
        family: FAMILY_V4,
        pad: 0,
        service_id: service.service_id,
    };
    // A full LRU evicts the oldest entry; an error here only loses the reverse
    // translation of this socket, never the connection.
    if REVNAT.insert(&rev_key, &rev_value, 0).is_err() && log_on() {
        aya_log_ebpf::warn!(
            ctx,
            "reverse translation not recorded for cookie {}",
            cookie
        );
    }
    if log_on() {
        aya_log_ebpf::info!(
            ctx,
            "translated: service {} -> backend {} {:i}:{}",
            service.service_id,
            backend_id,
            u32::from_be(backend.addr[0]),
            u16::from_be(backend.port)
        );
    }
    sa.user_ip4 = backend.addr[0];
    sa.user_port = u32::from(backend.port);
    count(&SERVICE_STATS, service.service_id, true);
    count(&BACKEND_STATS, backend_id, true);
    // Connections only (connect4): an event per unconnected datagram would flood the ring.
    if connect {
        emit(&Event {
            // SAFETY: helper without arguments.
            time_ns: unsafe { bpf_ktime_get_ns() },
            frontend: key.addr,
            backend: backend.addr,
            frontend_port: key.port,
            backend_port: backend.port,
            proto,
            source: SOURCE_CONNECT4,
            service_id: service.service_id,
            backend_id,
            ..Event::default()
        });
    }
    Verdict::Pass
}

/// A backend id for `service` (count > 0): the client's previous one while affinity holds,
/// else a random slot's.
fn pick_backend(
    ctx: &SockAddrContext,
    service: &ferrokube_ebpf_common::ServiceValue,
) -> Option<u32> {
    let slot_of = |slot: u32| {
        let key = SlotKey {
            service_id: service.service_id,
            slot,
        };
        // SAFETY: copied at once; the user side replaces slots, never edits them in place.
        unsafe { SLOTS.get(&key) }.copied()
    };
    if service.affinity_timeout == 0 {
        // SAFETY: helper without arguments.
        let slot = unsafe { bpf_get_prandom_u32() } % service.count;
        return slot_of(slot);
    }
    // SAFETY: helpers on the hook's own context.
    let (now, netns_cookie) = unsafe { (bpf_ktime_get_ns(), bpf_get_netns_cookie(ctx.as_ptr())) };
    let key = AffinityKey {
        netns_cookie,
        service_id: service.service_id,
        pad: 0,
    };
    let timeout_ns = u64::from(service.affinity_timeout) * 1_000_000_000;
    // SAFETY: copied at once.
    if let Some(previous) = unsafe { AFFINITY.get(&key) }.copied()
        && now.wrapping_sub(previous.last_used_ns) <= timeout_ns
        && previous.slot < service.count
        && slot_of(previous.slot) == Some(previous.backend_id)
    {
        let value = AffinityValue {
            last_used_ns: now,
            ..previous
        };
        let _ = AFFINITY.insert(&key, &value, 0);
        return Some(previous.backend_id);
    }
    // SAFETY: helper without arguments.
    let slot = unsafe { bpf_get_prandom_u32() } % service.count;
    let backend_id = slot_of(slot)?;
    let value = AffinityValue {
        backend_id,
        slot,
        last_used_ns: now,
    };
    // A full LRU evicts the oldest client; failing here only loses stickiness.
    let _ = AFFINITY.insert(&key, &value, 0);
    Some(backend_id)
}

fn reverse4(ctx: &SockAddrContext) {
    // SAFETY: see `try_translate4`.
    let sa = unsafe { &mut *ctx.sock_addr };
    // SAFETY: the context pointer is the hook's own argument.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = RevNatKey {
        cookie,
        addr: [sa.user_ip4, 0, 0, 0],
        port: sa.user_port as u16,
        family: FAMILY_V4,
        pad: 0,
        pad2: 0,
    };
    // SAFETY: copied at once.
    if let Some(original) = (unsafe { REVNAT.get(&key) }).copied() {
        sa.user_ip4 = original.addr[0];
        sa.user_port = u32::from(original.port);
    }
}

pub(crate) fn count(map: &PerCpuArray<Counters>, index: u32, translated: bool) {
    if let Some(counters) = map.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot, written only by this CPU with preemption off.
        unsafe {
            if translated {
                (*counters).translations += 1;
            } else {
                (*counters).refused += 1;
            }
        }
    }
}
