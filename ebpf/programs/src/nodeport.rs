//! NodePort, ExternalIP and LoadBalancer IP traffic from outside the node: tc ingress and
//! egress on the node's external interface (IPv4, TCP and UDP).
//!
//! Ingress:
//! 1. a reply from a remote backend to a SNAT port ([`CT_SNAT_IN`]): the destination goes
//!    back to the client; the kernel forwards it out, and egress restores the frontend;
//! 2. a packet to an external frontend (`SERVICE_EXTERNAL`): an existing flow
//!    ([`CT_FORWARD`]) keeps its backend (a terminating backend keeps its connections);
//!    a new one picks a backend (random slot, or the client's previous one under
//!    `sessionAffinity: ClientIP`), records the flow, and is DNATed; the kernel routes
//!    it to a local pod or, for a remote backend, back out of this interface;
//! 3. a frontend with no backend: counted as refused and passed to the host stack, which
//!    answers at once (TCP RST, ICMP port unreachable) as nothing listens there.
//!
//! Egress: a backend's reply to a client ([`CT_REPLY`]) gets the frontend as its source;
//! a flow to a remote backend ([`CT_SNAT_OUT`]) gets the node address and a SNAT port as
//! its source, so the reply comes back through this node.
//!
//! With logging on (`maps::log_on`, `ferrokube proxy --bpf-log`), each new flow logs one
//! line (client -> frontend -> backend, and the SNAT port, 0 for a local backend) from the
//! program that recorded it, and each refusal one line from tc ingress.
//!
//! Checksums are fixed with `bpf_l3_csum_replace` / `bpf_l4_csum_replace` (pseudo-header
//! aware; a UDP checksum of zero stays zero).

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_NOEXIST, TC_ACT_OK},
    helpers::generated::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    macros::classifier,
    programs::TcContext,
};
use ferrokube_ebpf_common::{
    AffinityValue, BACKEND_LOCAL, ClientAffinityKey, CtKey, CtValue, Event, FAMILY_V4, NodeConfig,
    PROTO_TCP, PROTO_UDP, SERVICE_EXTERNAL, SERVICE_MAGLEV, ServiceKey, ServiceValue, SlotKey,
    ct::{CT_CLOSING, CT_FORWARD, CT_REPLY, CT_SNAT_IN, CT_SNAT_OUT},
    event::{SOURCE_TC, SOURCE_XDP},
    maglev,
};

use crate::logrec;
use crate::maps::{
    BACKEND_STATS, BACKENDS, CLIENT_AFFINITY, CT, MAGLEV, NODE, SERVICE_STATS, SERVICES, SLOTS,
    emit, log_on,
};
use crate::sock::count;

/// Not ours: let the next program (TCX) or the stack have it.
const TC_ACT_UNSPEC: i32 = -1;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const IP_OFF: usize = ETH_HLEN;
const IP_PROTO_OFF: usize = IP_OFF + 9;
const IP_CSUM_OFF: usize = IP_OFF + 10;
const IP_SRC_OFF: usize = IP_OFF + 12;
const IP_DST_OFF: usize = IP_OFF + 16;

/// How many SNAT ports are tried for one new flow before giving up.
const SNAT_TRIES: u32 = 16;

/// An IPv4 TCP or UDP packet's addresses and ports, as raw network-order values.
pub(crate) struct Packet {
    pub(crate) saddr: u32,
    pub(crate) daddr: u32,
    pub(crate) sport: u16,
    pub(crate) dport: u16,
    pub(crate) proto: u8,
    /// Offset of the L4 header.
    pub(crate) l4: usize,
    /// Offset of the L4 checksum.
    pub(crate) l4_csum: usize,
}

impl Packet {
    /// Inlined: as a subprogram its frame, added to tc ingress's, passes the verifier's
    /// 512-byte limit for a call chain.
    #[inline(always)]
    fn parse(ctx: &TcContext) -> Option<Self> {
        let ethertype = u16::from_be(ctx.load::<u16>(12).ok()?);
        if ethertype != ETH_P_IP {
            return None;
        }
        let version_ihl: u8 = ctx.load(IP_OFF).ok()?;
        if version_ihl >> 4 != 4 {
            return None;
        }
        let ihl = usize::from(version_ihl & 0x0f) * 4;
        if ihl < 20 {
            return None;
        }
        // Fragments other than the first carry no ports; first fragments are left alone
        // too (their followers could not be translated alike).
        let frag: u16 = u16::from_be(ctx.load(IP_OFF + 6).ok()?);
        if frag & 0x3fff != 0 {
            return None;
        }
        let proto: u8 = ctx.load(IP_PROTO_OFF).ok()?;
        let l4_csum = match proto {
            PROTO_TCP => 16,
            PROTO_UDP => 6,
            _ => return None,
        };
        let l4 = IP_OFF + ihl;
        Some(Self {
            saddr: ctx.load(IP_SRC_OFF).ok()?,
            daddr: ctx.load(IP_DST_OFF).ok()?,
            sport: ctx.load(l4).ok()?,
            dport: ctx.load(l4 + 2).ok()?,
            proto,
            l4,
            l4_csum: l4 + l4_csum,
        })
    }

    pub(crate) fn key(&self, kind: u8) -> CtKey {
        CtKey {
            saddr: [self.saddr, 0, 0, 0],
            daddr: [self.daddr, 0, 0, 0],
            sport: self.sport,
            dport: self.dport,
            proto: self.proto,
            family: FAMILY_V4,
            kind,
            pad: 0,
        }
    }

    /// A TCP SYN without ACK: a new connection.
    fn bare_syn(&self, ctx: &TcContext) -> bool {
        // Flags byte: offset 13 of the TCP header; SYN 0x02, ACK 0x10.
        self.proto == PROTO_TCP && ctx.load::<u8>(self.l4 + 13).is_ok_and(|f| f & 0x12 == 0x02)
    }

    /// A TCP packet with FIN or RST set.
    fn closes(&self, ctx: &TcContext) -> bool {
        // Flags byte: offset 13 of the TCP header; FIN 0x01, RST 0x04.
        self.proto == PROTO_TCP && ctx.load::<u8>(self.l4 + 13).is_ok_and(|f| f & 0x05 != 0)
    }

    fn l4_flags(&self) -> u64 {
        if self.proto == PROTO_UDP {
            u64::from(BPF_F_MARK_MANGLED_0)
        } else {
            0
        }
    }

    /// Rewrites the source (`source`) or the destination address and port.
    fn rewrite(&self, ctx: &mut TcContext, source: bool, addr: u32, port: u16) -> Result<(), ()> {
        let (old_addr, old_port, addr_off, port_off) = if source {
            (self.saddr, self.sport, IP_SRC_OFF, self.l4)
        } else {
            (self.daddr, self.dport, IP_DST_OFF, self.l4 + 2)
        };
        let flags = self.l4_flags();
        if old_addr != addr {
            ctx.l4_csum_replace(
                self.l4_csum,
                u64::from(old_addr),
                u64::from(addr),
                u64::from(BPF_F_PSEUDO_HDR) | flags | 4,
            )
            .map_err(|_| ())?;
            ctx.l3_csum_replace(IP_CSUM_OFF, u64::from(old_addr), u64::from(addr), 4)
                .map_err(|_| ())?;
            ctx.store(addr_off, &addr, 0).map_err(|_| ())?;
        }
        if old_port != port {
            ctx.l4_csum_replace(
                self.l4_csum,
                u64::from(old_port),
                u64::from(port),
                flags | 2,
            )
            .map_err(|_| ())?;
            ctx.store(port_off, &port, 0).map_err(|_| ())?;
        }
        Ok(())
    }
}

#[classifier]
pub fn fk_tc_ingress(mut ctx: TcContext) -> i32 {
    let Some(packet) = Packet::parse(&ctx) else {
        return match icmp_error_ingress(&mut ctx) {
            Some(()) => TC_ACT_OK as i32,
            None => TC_ACT_UNSPEC,
        };
    };
    ingress(&mut ctx, &packet)
}

#[classifier]
pub fn fk_tc_egress(mut ctx: TcContext) -> i32 {
    let Some(packet) = Packet::parse(&ctx) else {
        return match icmp_error_egress(&mut ctx) {
            Some(()) => TC_ACT_OK as i32,
            None => TC_ACT_UNSPEC,
        };
    };
    for kind in [CT_REPLY, CT_SNAT_OUT] {
        // SAFETY: copied at once; entries are replaced (only `last_seen_ns` and `flags` of
        // SNAT_IN entries are updated in place).
        if let Some(entry) = unsafe { CT.get(&packet.key(kind)) }.copied() {
            if kind == CT_SNAT_OUT {
                // The SNAT port's owner: (backend -> node:port).
                let owner = CtKey {
                    saddr: [packet.daddr, 0, 0, 0],
                    daddr: entry.addr,
                    sport: packet.dport,
                    dport: entry.port,
                    proto: packet.proto,
                    family: FAMILY_V4,
                    kind: CT_SNAT_IN,
                    pad: 0,
                };
                touch(&owner, packet.closes(&ctx));
            }
            return match packet.rewrite(&mut ctx, true, entry.addr[0], entry.port) {
                Ok(()) => TC_ACT_OK as i32,
                Err(()) => TC_ACT_UNSPEC,
            };
        }
    }
    TC_ACT_UNSPEC
}

fn ingress(ctx: &mut TcContext, packet: &Packet) -> i32 {
    // 1. A remote backend's reply to one of our SNAT ports.
    let owner = packet.key(CT_SNAT_IN);
    // SAFETY: copied at once.
    if let Some(entry) = unsafe { CT.get(&owner) }.copied() {
        touch(&owner, packet.closes(ctx));
        return verdict(packet.rewrite(ctx, false, entry.addr[0], entry.port));
    }
    // 2. An external frontend.
    let frontend = ServiceKey::v4(packet.daddr, packet.dport, packet.proto);
    // SAFETY: copied at once; the user side replaces values, never edits them in place.
    let Some(service) = unsafe { SERVICES.get(&frontend) }
        .copied()
        .filter(|s| s.flags & SERVICE_EXTERNAL != 0)
    else {
        forget_reply(ctx, packet);
        return TC_ACT_UNSPEC;
    };
    let forward = packet.key(CT_FORWARD);
    let syn = packet.bare_syn(ctx);
    // SAFETY: copied at once.
    if let Some(entry) = unsafe { CT.get(&forward) }.copied()
        && still_valid(packet, syn, &service, &entry)
        && (!syn || snat_intact(packet, &entry))
    {
        if syn {
            // The REPLY entry may be gone (see `forget_reply`): a new connection has one.
            let reply = CtKey {
                saddr: entry.addr,
                daddr: [packet.saddr, 0, 0, 0],
                sport: entry.port,
                dport: packet.sport,
                kind: CT_REPLY,
                ..forward
            };
            let to_frontend = CtValue {
                addr: [packet.daddr, 0, 0, 0],
                port: packet.dport,
                backend_id: 0,
                slot: 0,
                ..entry
            };
            let _ = CT.insert(&reply, &to_frontend, 0);
        }
        return verdict(packet.rewrite(ctx, false, entry.addr[0], entry.port));
    }
    let translated = if service.count == 0 {
        // 3. Nothing to send it to: the host stack refuses it.
        count(&SERVICE_STATS, service.service_id, false);
        None
    } else {
        match new_flow::<SOURCE_TC>(packet, &service) {
            NewFlow::Translated(baddr, bport, _) => Some((baddr, bport)),
            NewFlow::Failed => None,
        }
    };
    match translated {
        Some((baddr, bport)) => verdict(packet.rewrite(ctx, false, baddr, bport)),
        None => {
            // One log site for every refusal (no backend, no SNAT port, a full map).
            if log_on() {
                log_refused(packet, service.service_id, service.count);
            }
            TC_ACT_UNSPEC
        }
    }
}

/// What [`new_flow`] did.
pub(crate) enum NewFlow {
    /// Recorded, to this backend address and port and with this SNAT port (network order;
    /// 0: the backend is local to this node, no SNAT).
    Translated(u32, u16, u16),
    /// No backend, no SNAT port, or a full map: the packet goes on untranslated (counted
    /// as refused, except for a failed map write).
    Failed,
}

/// A new flow to an external frontend with backends: picks the backend and records the
/// flow (the SNAT of a remote backend, the `REPLY` and `FORWARD` entries, the counters).
/// Shared by tc and the XDP fast path (`SOURCE`: which, for the event and the log line,
/// one per new flow when [`log_on`]). XDP records local
/// picks too (and passes the packet, which tc then DNATs by the entry), so the choice is
/// made once, with the configured distribution, whichever program sees the flow first.
/// Inlined into each program: a BPF subprogram shared by two programs of different types
/// does not load here.
#[inline(always)]
pub(crate) fn new_flow<const SOURCE: u8>(packet: &Packet, service: &ServiceValue) -> NewFlow {
    let forward = packet.key(CT_FORWARD);
    let Some((backend_id, slot)) = pick_backend(packet, service) else {
        count(&SERVICE_STATS, service.service_id, false);
        return NewFlow::Failed;
    };
    // SAFETY: copied at once.
    let Some(backend) = unsafe { BACKENDS.get(&backend_id) }.copied() else {
        count(&SERVICE_STATS, service.service_id, false);
        return NewFlow::Failed;
    };
    let local = backend.flags & BACKEND_LOCAL != 0;
    let (baddr, bport) = (backend.addr[0], backend.port);
    let reply = CtKey {
        saddr: [baddr, 0, 0, 0],
        daddr: [packet.saddr, 0, 0, 0],
        sport: bport,
        dport: packet.sport,
        kind: CT_REPLY,
        ..forward
    };
    let snat_port = if local {
        0
    } else if let Ok(port) = snat(packet, service, baddr, bport) {
        port
    } else {
        count(&SERVICE_STATS, service.service_id, false);
        return NewFlow::Failed;
    };
    let to_backend = CtValue {
        addr: [baddr, 0, 0, 0],
        port: bport,
        family: FAMILY_V4,
        flags: 0,
        service_id: service.service_id,
        backend_id,
        slot,
        last_seen_ns: 0,
    };
    let to_frontend = CtValue {
        addr: [packet.daddr, 0, 0, 0],
        port: packet.dport,
        backend_id: 0,
        slot: 0,
        ..to_backend
    };
    // A full LRU evicts the oldest flows; an error here fails this packet only.
    if CT.insert(&reply, &to_frontend, 0).is_err() || CT.insert(&forward, &to_backend, 0).is_err() {
        return NewFlow::Failed;
    }
    count(&SERVICE_STATS, service.service_id, true);
    count(&BACKEND_STATS, backend_id, true);
    emit(&Event {
        // SAFETY: helper without arguments.
        time_ns: unsafe { bpf_ktime_get_ns() },
        client: [packet.saddr, 0, 0, 0],
        frontend: [packet.daddr, 0, 0, 0],
        backend: [baddr, 0, 0, 0],
        client_port: packet.sport,
        frontend_port: packet.dport,
        backend_port: bport,
        proto: packet.proto,
        source: SOURCE,
        service_id: service.service_id,
        backend_id,
    });
    if log_on() {
        log_new_flow::<SOURCE>(packet, baddr, bport, snat_port);
    }
    NewFlow::Translated(baddr, bport, snat_port)
}

/// Logs a new flow: `tc|xdp: new flow CLIENT -> FRONTEND -> backend BACKEND snat port N`
/// (0: a local backend, no SNAT). Inlined, like the record writer ([`logrec`]): `fk_xdp`
/// and `fk_tc_ingress` are close to the 512-byte stack limit, and a call here made the
/// compiler spill registers past it.
#[inline(always)]
fn log_new_flow<const SOURCE: u8>(packet: &Packet, baddr: u32, bport: u16, snat_port: u16) {
    logrec::info(file!(), line!(), |w| {
        w.text(if SOURCE == SOURCE_XDP {
            "xdp: new flow "
        } else {
            "tc: new flow "
        })?;
        w.ip(packet.saddr)?;
        w.text(":")?;
        w.port(packet.sport)?;
        w.text(" -> ")?;
        w.ip(packet.daddr)?;
        w.text(":")?;
        w.port(packet.dport)?;
        w.text(" -> backend ")?;
        w.ip(baddr)?;
        w.text(":")?;
        w.port(bport)?;
        w.text(" snat port ")?;
        w.port(snat_port)
    });
}

/// Logs a refusal in tc ingress (inlined, as [`log_new_flow`]).
#[inline(always)]
fn log_refused(packet: &Packet, service_id: u32, backends: u32) {
    logrec::info(file!(), line!(), |w| {
        w.text("tc: refused ")?;
        w.ip(packet.saddr)?;
        w.text(":")?;
        w.port(packet.sport)?;
        w.text(" -> ")?;
        w.ip(packet.daddr)?;
        w.text(":")?;
        w.port(packet.dport)?;
        w.text(": service ")?;
        w.num(service_id)?;
        w.text(" has ")?;
        w.num(backends)?;
        w.text(" backends, none usable")
    });
}

/// Records the SNAT of a new flow to a remote backend: a free node port for
/// (backend, node address), and the entries for egress and the reply. A port is free
/// when no flow holds it, or when its flow closed (or, UDP, went quiet) longer than
/// `closed_reuse_secs` ago, or sent nothing for `idle_reuse_secs`. Returns the port
/// (network order).
#[inline(always)]
fn snat(packet: &Packet, service: &ServiceValue, baddr: u32, bport: u16) -> Result<u16, ()> {
    let node: NodeConfig = NODE.get(0).copied().ok_or(())?;
    if node.family != FAMILY_V4 || node.snat_ports == 0 {
        return Err(());
    }
    let naddr = node.snat_addr[0];
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let client = CtValue {
        addr: [packet.saddr, 0, 0, 0],
        port: packet.sport,
        family: FAMILY_V4,
        flags: 0,
        service_id: service.service_id,
        backend_id: 0,
        slot: 0,
        last_seen_ns: now,
    };
    let closed_ns = u64::from(node.closed_reuse_secs) * 1_000_000_000;
    let idle_ns = u64::from(node.idle_reuse_secs) * 1_000_000_000;
    let mut port = 0u16;
    for _ in 0..SNAT_TRIES {
        // SAFETY: helper without arguments.
        let offset = (unsafe { bpf_get_prandom_u32() } % u32::from(node.snat_ports)) as u16;
        let candidate = node.snat_port_min.wrapping_add(offset).to_be();
        let back = CtKey {
            saddr: [baddr, 0, 0, 0],
            daddr: [naddr, 0, 0, 0],
            sport: bport,
            dport: candidate,
            proto: packet.proto,
            family: FAMILY_V4,
            kind: CT_SNAT_IN,
            pad: 0,
        };
        if CT.insert(&back, &client, u64::from(BPF_NOEXIST)).is_ok() {
            port = candidate;
            break;
        }
        // SAFETY: copied at once.
        let Some(holder) = unsafe { CT.get(&back) }.copied() else {
            continue;
        };
        let quiet = now.saturating_sub(holder.last_seen_ns);
        let done = holder.flags & CT_CLOSING != 0 || packet.proto == PROTO_UDP;
        if ((done && quiet >= closed_ns) || quiet >= idle_ns)
            && CT.insert(&back, &client, 0).is_ok()
        {
            port = candidate;
            break;
        }
    }
    if port == 0 {
        return Err(());
    }
    let out = CtKey {
        saddr: [packet.saddr, 0, 0, 0],
        daddr: [baddr, 0, 0, 0],
        sport: packet.sport,
        dport: bport,
        proto: packet.proto,
        family: FAMILY_V4,
        kind: CT_SNAT_OUT,
        pad: 0,
    };
    let node_side = CtValue {
        addr: [naddr, 0, 0, 0],
        port,
        last_seen_ns: 0,
        ..client
    };
    CT.insert(&out, &node_side, 0).map_err(|_| ())?;
    Ok(port)
}

/// Records a packet of the flow owning a SNAT port: when, and whether it closes.
fn touch(owner: &CtKey, closes: bool) {
    if let Some(entry) = CT.get_ptr_mut(owner) {
        // SAFETY: a map value of this type; racing updates only write a time or set a
        // flag, and any of the racing values is fine.
        unsafe {
            (*entry).last_seen_ns = bpf_ktime_get_ns();
            if closes {
                (*entry).flags |= CT_CLOSING;
            }
        }
    }
}

/// The backend id in a frontend's slot: a random-slot frontend's `FK_SLOTS` entry
/// (slots `0..count`), or a Maglev frontend's lookup-table entry (slots `0..M`).
#[inline(always)]
fn slot_backend(service: &ServiceValue, slot: u32) -> Option<u32> {
    if service.flags & SERVICE_MAGLEV != 0 {
        let size = u32::from(NODE.get(0)?.maglev_size);
        if slot >= size {
            return None;
        }
        let index = maglev::table_of(service.flags)
            .checked_mul(size)?
            .checked_add(slot)?;
        return MAGLEV.get(index).copied().filter(|id| *id != 0);
    }
    if slot >= service.count {
        return None;
    }
    let key = SlotKey {
        service_id: service.service_id,
        slot,
    };
    // SAFETY: copied at once.
    unsafe { SLOTS.get(&key) }.copied()
}

/// A backend id and its slot for a new flow. Maglev: the table entry the flow's hash
/// (of the 5-tuple, or of the client address under session affinity) points at, the same
/// on every node. Otherwise: the client's previous one while affinity holds, else a
/// random slot's.
#[inline(always)]
fn pick_backend(packet: &Packet, service: &ServiceValue) -> Option<(u32, u32)> {
    if service.flags & SERVICE_MAGLEV != 0 {
        let size = u32::from(NODE.get(0)?.maglev_size);
        if size == 0 {
            return None;
        }
        let hash = if service.affinity_timeout == 0 {
            maglev::flow_hash(
                packet.saddr,
                packet.daddr,
                packet.sport,
                packet.dport,
                packet.proto,
            )
        } else {
            maglev::client_hash(packet.saddr)
        };
        let slot = hash % size;
        return slot_backend(service, slot).map(|id| (id, slot));
    }
    let slot_of = |slot: u32| slot_backend(service, slot);
    // SAFETY: helper without arguments.
    let random = unsafe { bpf_get_prandom_u32() } % service.count;
    if service.affinity_timeout == 0 {
        return slot_of(random).map(|id| (id, random));
    }
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let key = ClientAffinityKey {
        addr: [packet.saddr, 0, 0, 0],
        service_id: service.service_id,
        family: FAMILY_V4,
        pad: [0; 3],
    };
    let timeout_ns = u64::from(service.affinity_timeout) * 1_000_000_000;
    // SAFETY: copied at once.
    if let Some(previous) = unsafe { CLIENT_AFFINITY.get(&key) }.copied()
        && now.wrapping_sub(previous.last_used_ns) <= timeout_ns
        && previous.slot < service.count
        && slot_of(previous.slot) == Some(previous.backend_id)
    {
        let value = AffinityValue {
            last_used_ns: now,
            ..previous
        };
        let _ = CLIENT_AFFINITY.insert(&key, &value, 0);
        return Some((previous.backend_id, previous.slot));
    }
    let backend_id = slot_of(random)?;
    let value = AffinityValue {
        backend_id,
        slot: random,
        last_used_ns: now,
    };
    // A full LRU evicts the oldest client; failing here only loses stickiness.
    let _ = CLIENT_AFFINITY.insert(&key, &value, 0);
    Some((backend_id, random))
}

/// May a packet follow an existing [`CT_FORWARD`] entry? TCP other than a bare SYN:
/// always (established connections stay, terminating backend or not). A bare SYN (a new
/// connection reusing the tuple, or a retransmission): while the backend still sits in
/// its slot. UDP: while the backend still exists.
fn still_valid(packet: &Packet, syn: bool, service: &ServiceValue, entry: &CtValue) -> bool {
    if packet.proto == PROTO_TCP {
        if !syn {
            return true;
        }
        return slot_backend(service, entry.slot) == Some(entry.backend_id);
    }
    // SAFETY: copied at once.
    match unsafe { BACKENDS.get(&entry.backend_id) }.copied() {
        Some(backend) => backend.addr[0] == entry.addr[0] && backend.port == entry.port,
        None => false,
    }
}

/// A bare SYN on a tuple with a flow: is the flow's SNAT (if any) still its own? A closed
/// flow's port may have gone to another client since; then the SYN starts afresh. When
/// it is intact (a retransmitted SYN, or the same client reconnecting at once), the
/// port is marked in use again.
fn snat_intact(packet: &Packet, entry: &CtValue) -> bool {
    // SAFETY: copied at once.
    let Some(backend) = unsafe { BACKENDS.get(&entry.backend_id) }.copied() else {
        return false;
    };
    if backend.flags & BACKEND_LOCAL != 0 {
        return true;
    }
    let out = CtKey {
        saddr: [packet.saddr, 0, 0, 0],
        daddr: entry.addr,
        sport: packet.sport,
        dport: entry.port,
        proto: packet.proto,
        family: FAMILY_V4,
        kind: CT_SNAT_OUT,
        pad: 0,
    };
    // SAFETY: copied at once.
    let Some(node_side) = unsafe { CT.get(&out) }.copied() else {
        return false;
    };
    let owner = CtKey {
        saddr: entry.addr,
        daddr: node_side.addr,
        sport: entry.port,
        dport: node_side.port,
        proto: packet.proto,
        family: FAMILY_V4,
        kind: CT_SNAT_IN,
        pad: 0,
    };
    match CT.get_ptr_mut(&owner) {
        // SAFETY: a map value of this type; see `touch`.
        Some(holder) => unsafe {
            if (*holder).addr[0] != packet.saddr || (*holder).port != packet.sport {
                return false;
            }
            (*holder).flags &= !CT_CLOSING;
            (*holder).last_seen_ns = bpf_ktime_get_ns();
            true
        },
        None => false,
    }
}

/// A new TCP connection that is not to a frontend (say, straight to a pod) may reuse the
/// tuple of a finished NodePort flow to the same backend: drop that flow's `REPLY`
/// entry, or egress would rewrite this connection's replies to the frontend.
fn forget_reply(ctx: &TcContext, packet: &Packet) {
    if packet.bare_syn(ctx) {
        let reply = CtKey {
            saddr: [packet.daddr, 0, 0, 0],
            daddr: [packet.saddr, 0, 0, 0],
            sport: packet.dport,
            dport: packet.sport,
            proto: packet.proto,
            family: FAMILY_V4,
            kind: CT_REPLY,
            pad: 0,
        };
        let _ = CT.remove(&reply);
    }
}

const PROTO_ICMP: u8 = 1;

/// An ICMP error (destination unreachable, time exceeded) that a backend sends a client
/// about a translated flow quotes the backend's address and port: give the quoted
/// destination, and the outer source when it is the backend, the frontend's instead, so
/// the client's socket gets the error (a UDP port unreachable becomes `ECONNREFUSED`
/// there). IPv4 headers without options only. `None`: not such a packet.
fn icmp_error_egress(ctx: &mut TcContext) -> Option<()> {
    let proto = icmp_error_proto(ctx)?;
    let client: u32 = ctx.load(INNER + 12).ok()?;
    let backend: u32 = ctx.load(INNER + 16).ok()?;
    let client_port: u16 = ctx.load(INNER + 20).ok()?;
    let backend_port: u16 = ctx.load(INNER + 22).ok()?;
    let reply = CtKey {
        saddr: [backend, 0, 0, 0],
        daddr: [client, 0, 0, 0],
        sport: backend_port,
        dport: client_port,
        proto,
        family: FAMILY_V4,
        kind: CT_REPLY,
        pad: 0,
    };
    // SAFETY: copied at once.
    let entry = unsafe { CT.get(&reply) }.copied()?;
    let (faddr, fport) = (entry.addr[0], entry.port);
    // The quoted destination.
    rewrite_quoted(
        ctx,
        INNER + 16,
        backend,
        faddr,
        INNER + 22,
        backend_port,
        fport,
    )?;
    // The sender, when it is the backend itself.
    let source: u32 = ctx.load(IP_SRC_OFF).ok()?;
    if source == backend {
        rewrite_outer(ctx, IP_SRC_OFF, source, faddr)?;
    }
    Some(())
}

/// An ICMP error from a remote backend to this node about a SNATed flow (quoting node:port
/// -> backend): the quoted source and the outer destination go back to the client; the
/// kernel forwards it out, and egress ([`icmp_error_egress`]) puts the frontend in.
fn icmp_error_ingress(ctx: &mut TcContext) -> Option<()> {
    let proto = icmp_error_proto(ctx)?;
    let node: u32 = ctx.load(INNER + 12).ok()?;
    let backend: u32 = ctx.load(INNER + 16).ok()?;
    let node_port: u16 = ctx.load(INNER + 20).ok()?;
    let backend_port: u16 = ctx.load(INNER + 22).ok()?;
    let owner = CtKey {
        saddr: [backend, 0, 0, 0],
        daddr: [node, 0, 0, 0],
        sport: backend_port,
        dport: node_port,
        proto,
        family: FAMILY_V4,
        kind: CT_SNAT_IN,
        pad: 0,
    };
    // SAFETY: copied at once.
    let client = unsafe { CT.get(&owner) }.copied()?;
    let (caddr, cport) = (client.addr[0], client.port);
    rewrite_quoted(ctx, INNER + 12, node, caddr, INNER + 20, node_port, cport)?;
    let destination: u32 = ctx.load(IP_DST_OFF).ok()?;
    if destination == node {
        rewrite_outer(ctx, IP_DST_OFF, destination, caddr)?;
    }
    Some(())
}

/// Where an ICMP error quotes the offending packet (IPv4 without options).
const INNER: usize = IP_OFF + 20 + 8;
const ICMP_CSUM_OFF: usize = IP_OFF + 20 + 2;

/// An IPv4 ICMP destination-unreachable or time-exceeded quoting a TCP or UDP packet
/// (no IP options in either header): the quoted protocol.
fn icmp_error_proto(ctx: &TcContext) -> Option<u8> {
    if u16::from_be(ctx.load::<u16>(12).ok()?) != ETH_P_IP
        || ctx.load::<u8>(IP_OFF).ok()? != 0x45
        || ctx.load::<u8>(IP_PROTO_OFF).ok()? != PROTO_ICMP
    {
        return None;
    }
    let icmp_type: u8 = ctx.load(IP_OFF + 20).ok()?;
    if icmp_type != 3 && icmp_type != 11 {
        return None;
    }
    if ctx.load::<u8>(INNER).ok()? != 0x45 {
        return None;
    }
    let proto: u8 = ctx.load(INNER + 9).ok()?;
    (proto == PROTO_TCP || proto == PROTO_UDP).then_some(proto)
}

/// Rewrites a quoted address and port, fixing the quoted IP checksum and the ICMP
/// checksum (which covers the quoted bytes). Inlined: BPF calls take at most 5 arguments.
#[inline(always)]
fn rewrite_quoted(
    ctx: &mut TcContext,
    addr_off: usize,
    old_addr: u32,
    addr: u32,
    port_off: usize,
    old_port: u16,
    port: u16,
) -> Option<()> {
    ctx.l4_csum_replace(ICMP_CSUM_OFF, u64::from(old_port), u64::from(port), 2)
        .ok()?;
    ctx.store(port_off, &port, 0).ok()?;
    let old_inner_csum: u16 = ctx.load(INNER + 10).ok()?;
    ctx.l3_csum_replace(INNER + 10, u64::from(old_addr), u64::from(addr), 4)
        .ok()?;
    let new_inner_csum: u16 = ctx.load(INNER + 10).ok()?;
    ctx.store(addr_off, &addr, 0).ok()?;
    ctx.l4_csum_replace(ICMP_CSUM_OFF, u64::from(old_addr), u64::from(addr), 4)
        .ok()?;
    ctx.l4_csum_replace(
        ICMP_CSUM_OFF,
        u64::from(old_inner_csum),
        u64::from(new_inner_csum),
        2,
    )
    .ok()
}

/// Rewrites the outer source or destination address (ICMP has no pseudo-header).
fn rewrite_outer(ctx: &mut TcContext, off: usize, old: u32, new: u32) -> Option<()> {
    ctx.l3_csum_replace(IP_CSUM_OFF, u64::from(old), u64::from(new), 4)
        .ok()?;
    ctx.store(off, &new, 0).ok()
}

fn verdict(result: Result<(), ()>) -> i32 {
    match result {
        Ok(()) => TC_ACT_OK as i32,
        // A failed rewrite leaves the packet as it was: the stack drops or refuses it.
        Err(()) => TC_ACT_UNSPEC,
    }
}
