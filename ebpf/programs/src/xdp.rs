//! The NodePort fast path in XDP on the node's external interface, for flows whose backend
//! is on another node (IPv4, TCP and UDP, IP headers without options).
//!
//! It shares the tc path's conntrack (`FK_CT`) and its code for new flows
//! (`nodeport::new_flow`: backend choice, affinity or Maglev, SNAT port claim, entries,
//! counters): a new flow (a TCP SYN or a UDP datagram with no entry yet) is picked and
//! recorded here exactly as tc would (a local pick is then passed: tc DNATs it by its
//! entry), and a flow to a remote backend is then handled like an established one:
//! - forward (client `C:c` -> frontend `F:f`, a [`CT_FORWARD`] entry to a remote backend
//!   `B:b` with its [`CT_SNAT_OUT`] entry `N:n`): destination to `B:b`, source to `N:n`;
//! - reverse (backend `B:b` -> node `N:n`, a [`CT_SNAT_IN`] entry naming `C:c`, and the
//!   flow's [`CT_REPLY`] entry naming `F:f`): source to `F:f`, destination to `C:c`;
//!
//! then the TTL goes down by one, the next hop's MAC comes from the FIB
//! (`bpf_fib_lookup`, which also resolves the neighbour) and the packet leaves by
//! `XDP_TX` when the FIB says it leaves by the interface it came in on. Anything else
//! (not ours, a SYN on a tuple that has a flow, a local backend, no backend, a neighbour
//! not yet resolved, TTL expiring, another egress interface) gets `XDP_PASS` and falls to
//! tc and the stack, which handle it as before: a flow is translated the same way
//! whichever program sees a packet of it (a new flow recorded here whose packet is then
//! passed finds its entries in tc). A new flow recorded here logs its line as `xdp:`
//! (when logging is on); XDP refuses nothing itself, so refusals are logged by tc.

use core::mem::size_of;

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams, xdp_action},
    helpers::generated::{bpf_fib_lookup, bpf_ktime_get_ns},
    macros::xdp,
    programs::XdpContext,
};
use ferrokube_ebpf_common::{
    BACKEND_LOCAL, CtKey, FAMILY_V4, PROTO_TCP, PROTO_UDP, SERVICE_EXTERNAL, ServiceKey,
    ct::{CT_CLOSING, CT_FORWARD, CT_REPLY, CT_SNAT_IN, CT_SNAT_OUT},
    event::SOURCE_XDP,
    stats::xdp as counter,
};

use crate::maps::{BACKENDS, CT, SERVICES, XDP_STATS};
use crate::nodeport::{NewFlow, Packet, new_flow};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const IP: usize = ETH_HLEN;
const L4: usize = IP + 20;

#[xdp]
pub fn fk_xdp(ctx: XdpContext) -> u32 {
    try_fk_xdp(&ctx).unwrap_or(xdp_action::XDP_PASS)
}

/// A pointer to `T` at `offset`, bounds-checked against the packet's end.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    if start + offset + size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((start + offset) as *mut T)
}

#[inline(always)]
fn load<T: Copy>(ctx: &XdpContext, offset: usize) -> Option<T> {
    // SAFETY: bounds-checked by `ptr_at`; packet bytes may sit unaligned.
    ptr_at::<T>(ctx, offset).map(|p| unsafe { p.read_unaligned() })
}

#[inline(always)]
fn store<T>(ctx: &XdpContext, offset: usize, value: T) -> Option<()> {
    // SAFETY: bounds-checked by `ptr_at`; packet bytes may sit unaligned.
    ptr_at::<T>(ctx, offset).map(|p| unsafe { p.write_unaligned(value) })
}

fn try_fk_xdp(ctx: &XdpContext) -> Option<u32> {
    if u16::from_be(load::<u16>(ctx, 12)?) != ETH_P_IP || load::<u8>(ctx, IP)? != 0x45 {
        return None;
    }
    // Fragments (and first fragments) are left to tc, which leaves them alone too.
    if u16::from_be(load::<u16>(ctx, IP + 6)?) & 0x3fff != 0 {
        return None;
    }
    let proto: u8 = load(ctx, IP + 9)?;
    let csum_off = match proto {
        PROTO_TCP => L4 + 16,
        PROTO_UDP => L4 + 6,
        _ => return None,
    };
    let flags: u8 = if proto == PROTO_TCP {
        load(ctx, L4 + 13)?
    } else {
        0
    };
    let saddr: u32 = load(ctx, IP + 12)?;
    let daddr: u32 = load(ctx, IP + 16)?;
    let sport: u16 = load(ctx, L4)?;
    let dport: u16 = load(ctx, L4 + 2)?;
    let key = |s: u32, d: u32, sp: u16, dp: u16, kind: u8| CtKey {
        saddr: [s, 0, 0, 0],
        daddr: [d, 0, 0, 0],
        sport: sp,
        dport: dp,
        proto,
        family: FAMILY_V4,
        kind,
        pad: 0,
    };
    let closes = flags & 0x05 != 0;

    // Reverse: a remote backend's reply to one of our SNAT ports.
    let owner = key(saddr, daddr, sport, dport, CT_SNAT_IN);
    // SAFETY: copied at once.
    if let Some(client) = unsafe { CT.get(&owner) }.copied() {
        let (caddr, cport) = (client.addr[0], client.port);
        // SAFETY: copied at once.
        let frontend = unsafe { CT.get(&key(saddr, caddr, sport, cport, CT_REPLY)) }.copied()?;
        let (faddr, fport) = (frontend.addr[0], frontend.port);
        let verdict = forward(
            ctx,
            proto,
            csum_off,
            [saddr, daddr, caddr, faddr],
            [sport, dport, cport, fport],
        );
        finish(&owner, closes, verdict, counter::REVERSE);
        return verdict;
    }

    // Forward: a flow from a client to a frontend whose backend is remote.
    // SAFETY: copied at once; the user side replaces values, never edits them in place.
    let service = unsafe { SERVICES.get(&ServiceKey::v4(daddr, dport, proto)) }.copied()?;
    if service.flags & SERVICE_EXTERNAL == 0 {
        return None;
    }
    let syn = flags & 0x02 != 0;
    // SAFETY: copied at once.
    let entry = match unsafe { CT.get(&key(saddr, daddr, sport, dport, CT_FORWARD)) }.copied() {
        // A SYN on a tuple with a flow: whether it is the same connection is tc's call.
        Some(_) if syn => return None,
        Some(entry) => entry,
        // A new flow (a SYN, a UDP datagram): pick and record it here, as tc would; a
        // local pick is recorded and passed (tc DNATs it by the entry), no backend (tc
        // refuses) and failures are tc's.
        None if (flags & 0x12 == 0x02 || proto == PROTO_UDP) && service.count > 0 => {
            let packet = Packet {
                saddr,
                daddr,
                sport,
                dport,
                proto,
                l4: L4,
                l4_csum: csum_off,
            };
            match new_flow::<SOURCE_XDP>(&packet, &service) {
                NewFlow::Translated(_, _, snat_port) if snat_port != 0 => bump(counter::NEW),
                // Recorded to a local backend (tc DNATs it by the entry), or failed (tc
                // refuses it).
                NewFlow::Translated(..) | NewFlow::Failed => return None,
            }
            // SAFETY: copied at once.
            unsafe { CT.get(&key(saddr, daddr, sport, dport, CT_FORWARD)) }.copied()?
        }
        None => return None,
    };
    let (baddr, bport) = (entry.addr[0], entry.port);
    // SAFETY: copied at once.
    let backend = unsafe { BACKENDS.get(&entry.backend_id) }.copied()?;
    if backend.flags & BACKEND_LOCAL != 0 {
        return None;
    }
    // UDP follows a flow only while its backend exists (as in tc).
    if proto == PROTO_UDP && (backend.addr[0] != baddr || backend.port != bport) {
        return None;
    }
    // SAFETY: copied at once.
    let node_side = unsafe { CT.get(&key(saddr, baddr, sport, bport, CT_SNAT_OUT)) }.copied()?;
    let (naddr, nport) = (node_side.addr[0], node_side.port);
    let owner = key(baddr, naddr, bport, nport, CT_SNAT_IN);
    // SAFETY: copied at once.
    let holder = unsafe { CT.get(&owner) }.copied()?;
    if holder.addr[0] != saddr || holder.port != sport {
        // The SNAT port went to another flow: tc sorts it out.
        return None;
    }
    let verdict = forward(
        ctx,
        proto,
        csum_off,
        [daddr, saddr, baddr, naddr],
        [dport, sport, bport, nport],
    );
    finish(&owner, closes, verdict, counter::FORWARD);
    verdict
}

/// Counts the outcome and, when the packet is sent, records it on the flow owning the
/// SNAT port (when, and whether it closes), as tc does.
#[inline(always)]
fn finish(owner: &CtKey, closes: bool, verdict: Option<u32>, which: u32) {
    if verdict.is_some() {
        if let Some(entry) = CT.get_ptr_mut(owner) {
            // SAFETY: a map value of this type; racing updates only write a time or set
            // a flag, and any of the racing values is fine.
            unsafe {
                (*entry).last_seen_ns = bpf_ktime_get_ns();
                if closes {
                    (*entry).flags |= CT_CLOSING;
                }
            }
        }
        bump(which);
    } else {
        bump(counter::FALLBACK);
    }
}

#[inline(always)]
fn bump(index: u32) {
    if let Some(value) = XDP_STATS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot, written only by this CPU with preemption off.
        unsafe { *value += 1 };
    }
}

/// Rewrites `old destination -> new destination` and `old source -> new source`
/// (`addrs` = [old dst, old src, new dst, new src], ports likewise), decrements the TTL
/// and sends the packet back out to the FIB's next hop. `None`: left untouched, pass it.
#[inline(always)]
fn forward(
    ctx: &XdpContext,
    proto: u8,
    csum_off: usize,
    addrs: [u32; 4],
    ports: [u16; 4],
) -> Option<u32> {
    let [old_dst, old_src, new_dst, new_src] = addrs;
    let [old_dport, old_sport, new_dport, new_sport] = ports;
    let ttl: u8 = load(ctx, IP + 8)?;
    if ttl <= 1 {
        return None;
    }
    let tot_len = u16::from_be(load::<u16>(ctx, IP + 2)?);
    // SAFETY: an all-zero `bpf_fib_lookup` is valid (plain integers and unions of them).
    let mut fib: FibParams = unsafe { core::mem::zeroed() };
    fib.family = FAMILY_V4;
    fib.l4_protocol = proto;
    fib.sport = new_sport;
    fib.dport = new_dport;
    fib.__bindgen_anon_1.tot_len = tot_len;
    // SAFETY: the context is the kernel's `xdp_md`.
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    fib.ifindex = ifindex;
    fib.__bindgen_anon_3.ipv4_src = new_src;
    fib.__bindgen_anon_4.ipv4_dst = new_dst;
    // SAFETY: the helper reads and writes `fib`, of the size given.
    let rc = unsafe { bpf_fib_lookup(ctx.ctx.cast(), &mut fib, size_of::<FibParams>() as i32, 0) };
    if rc != i64::from(BPF_FIB_LKUP_RET_SUCCESS) || fib.ifindex != ifindex {
        return None;
    }
    // L4 checksum: pseudo-header addresses and the ports. A UDP checksum of zero (none)
    // stays zero.
    let old_csum: u16 = load(ctx, csum_off)?;
    if proto == PROTO_TCP || old_csum != 0 {
        let mut csum = csum_replace4(old_csum, old_dst, new_dst);
        csum = csum_replace4(csum, old_src, new_src);
        csum = csum_replace2(csum, old_dport, new_dport);
        csum = csum_replace2(csum, old_sport, new_sport);
        if proto == PROTO_UDP && csum == 0 {
            csum = 0xffff;
        }
        store(ctx, csum_off, csum)?;
    }
    // IP checksum: the addresses and the TTL (the 16-bit word TTL | protocol).
    let ip_csum: u16 = load(ctx, IP + 10)?;
    let old_word: u16 = load(ctx, IP + 8)?;
    let new_word = u16::from_ne_bytes([ttl - 1, proto]);
    let mut csum = csum_replace4(ip_csum, old_dst, new_dst);
    csum = csum_replace4(csum, old_src, new_src);
    csum = csum_replace2(csum, old_word, new_word);
    store(ctx, IP + 10, csum)?;
    store(ctx, IP + 8, ttl - 1)?;
    store(ctx, IP + 12, new_src)?;
    store(ctx, IP + 16, new_dst)?;
    store(ctx, L4, new_sport)?;
    store(ctx, L4 + 2, new_dport)?;
    store(ctx, 0, fib.dmac)?;
    store(ctx, 6, fib.smac)?;
    Some(xdp_action::XDP_TX)
}

/// Folds a 32-bit one's-complement sum to 16 bits.
#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// RFC 1624 incremental update of a checksum (as stored) for a 16-bit word going from
/// `old` to `new` (both as stored: byte order does not matter to one's-complement sums
/// as long as it is the same for all).
#[inline(always)]
fn csum_replace2(csum: u16, old: u16, new: u16) -> u16 {
    !fold(u32::from(!csum) + u32::from(!old) + u32::from(new))
}

/// Likewise for a 32-bit field (two 16-bit words).
#[inline(always)]
fn csum_replace4(csum: u16, old: u32, new: u32) -> u16 {
    let csum = csum_replace2(csum, old as u16, new as u16);
    csum_replace2(csum, (old >> 16) as u16, (new >> 16) as u16)
}

/// Passes everything: attached to the far end of a veth whose near end runs native XDP
/// that sends with `XDP_TX`, since the kernel delivers such frames promptly only to a
/// veth with an XDP program (see the loader's `XdpPass`).
#[xdp]
pub fn fk_xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}
