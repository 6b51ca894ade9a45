//! ferrokube's kernel programs: socket-level Service load balancing on cgroup hooks, and
//! NodePort / ExternalIP / LoadBalancer IP translation with connection tracking in tc on
//! the node's external interface (`nodeport`).
//!
//! `connect4` and `sendmsg4` translate a Service frontend (address, port, protocol) to a
//! backend picked at random from the Service's slots; `recvmsg4` and `getpeername4`
//! translate the backend back, so the application sees the Service address as its peer.
//! A frontend with no backend refuses the connection (`ECONNREFUSED`).
//!
//! Maps and keys are in `ferrokube-ebpf-common`; the loader is `node/proxy`.
#![no_std]
#![no_main]
// eBPF programs read and write the kernel's context through raw pointers and call helpers,
// all `unsafe` by nature; every such block is small and says what it relies on.
#![allow(unsafe_code)]

mod logrec;
mod maps;
mod nodeport;
mod sock;
mod xdp;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// GPL-compatible, as the kernel requires for some helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
