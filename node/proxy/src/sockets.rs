//! Destroying the sockets the socket load balancer sent to a backend that is gone, so
//! that clients see an error at once and reconnect to a live backend. This matters most
//! for connected UDP sockets, which otherwise keep sending to a dead address forever (the
//! classic stale-DNS problem).
//!
//! How: the kernel's `sock_diag` netlink interface (`SOCK_DIAG_BY_FAMILY` to list,
//! `SOCK_DESTROY` to abort; what `ss -K` does; this kernel has `CONFIG_INET_DIAG_DESTROY`).
//! The design also names a BPF socket iterator calling the `bpf_sock_destroy` kfunc;
//! aya-ebpf 0.2 can declare neither, so that route needs a C program and clang, which these
//! machines do not have. sock_diag does the same job from user space. It is hand-written
//! here (two fixed C structs) because no maintained crate builds `SOCK_DESTROY` requests.
//!
//! Only sockets that our programs translated are touched: a socket is destroyed when its
//! peer is a removed backend AND the reverse-translation map holds its cookie for that
//! backend, so a direct connection to the same Pod address is left alone. Sockets live in
//! the network namespaces of the processes in the load-balanced cgroup, so every distinct
//! namespace of those processes is visited (each on a thread of its own, since `setns`
//! changes only the calling thread).

use std::collections::BTreeMap;
use std::fs::File;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};
use nix::sys::socket::{
    AddressFamily, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, sendto, socket,
};
use tracing::{debug, warn};

use crate::model::{BackendAddr, Protocol};

/// Errors destroying sockets.
#[derive(Debug, thiserror::Error)]
pub enum SocketsError {
    /// A netlink socket operation failed.
    #[error("sock_diag: {0}")]
    Netlink(#[from] nix::Error),
    /// The kernel answered a request with an error.
    #[error("sock_diag request refused: {0}")]
    Refused(nix::errno::Errno),
    /// A namespace could not be entered.
    #[error("entering {path}: {source}")]
    Enter {
        /// The namespace file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The worker thread panicked.
    #[error("the sock_diag thread panicked")]
    Thread,
}

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_HDRLEN: usize = 16;
/// `struct inet_diag_sockid`.
const SOCKID_LEN: usize = 48;
/// `struct inet_diag_req_v2`.
const REQ_LEN: usize = 8 + SOCKID_LEN;
/// `struct inet_diag_msg`.
const MSG_LEN: usize = 4 + SOCKID_LEN + 20;
const AF_INET: u8 = 2;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// One socket as `sock_diag` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiagSocket {
    /// The raw `inet_diag_sockid`, sent back as is to destroy the socket.
    id: [u8; SOCKID_LEN],
    /// The peer.
    pub peer: (IpAddr, u16),
    /// The socket cookie (what `bpf_get_socket_cookie` returns).
    pub cookie: u64,
}

impl DiagSocket {
    /// Parses an `inet_diag_msg`.
    fn parse(msg: &[u8]) -> Option<Self> {
        if msg.len() < MSG_LEN || msg[0] != AF_INET {
            return None;
        }
        let id: [u8; SOCKID_LEN] = msg[4..4 + SOCKID_LEN].try_into().ok()?;
        let dport = u16::from_be_bytes([id[2], id[3]]);
        let dst = IpAddr::from([id[20], id[21], id[22], id[23]]);
        let cookie = u64::from(u32::from_ne_bytes(id[40..44].try_into().ok()?))
            | (u64::from(u32::from_ne_bytes(id[44..48].try_into().ok()?)) << 32);
        Some(Self {
            id,
            peer: (dst, dport),
            cookie,
        })
    }
}

fn request(msg_type: u16, flags: u16, seq: u32, proto: u8, id: &[u8; SOCKID_LEN]) -> Vec<u8> {
    let len = (NLMSG_HDRLEN + REQ_LEN) as u32;
    let mut out = Vec::with_capacity(len as usize);
    out.extend(len.to_ne_bytes());
    out.extend(msg_type.to_ne_bytes());
    out.extend(flags.to_ne_bytes());
    out.extend(seq.to_ne_bytes());
    out.extend(0u32.to_ne_bytes());
    out.extend([AF_INET, proto, 0, 0]);
    out.extend(u32::MAX.to_ne_bytes()); // every state
    out.extend(id);
    out
}

/// Splits a netlink datagram into `(type, payload)` messages.
fn messages(buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + NLMSG_HDRLEN <= buf.len() {
        let len = u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
        let kind = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
        if len < NLMSG_HDRLEN || at + len > buf.len() {
            break;
        }
        out.push((kind, &buf[at + NLMSG_HDRLEN..at + len]));
        at += (len + 3) & !3;
    }
    out
}

/// The errno of an `NLMSG_ERROR` payload (0 is an ACK).
fn error_code(payload: &[u8]) -> i32 {
    payload
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .map(i32::from_ne_bytes)
        .unwrap_or(0)
}

/// A `NETLINK_SOCK_DIAG` socket in the calling thread's network namespace.
struct Diag {
    fd: std::os::fd::OwnedFd,
    seq: u32,
}

impl Diag {
    fn open() -> Result<Self, SocketsError> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkSockDiag,
        )?;
        bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &NetlinkAddr::new(0, 0),
        )?;
        Ok(Self { fd, seq: 0 })
    }

    fn send(
        &mut self,
        msg_type: u16,
        flags: u16,
        proto: u8,
        id: &[u8; SOCKID_LEN],
    ) -> Result<(), SocketsError> {
        self.seq += 1;
        let req = request(msg_type, flags, self.seq, proto, id);
        sendto(
            std::os::fd::AsRawFd::as_raw_fd(&self.fd),
            &req,
            &NetlinkAddr::new(0, 0),
            nix::sys::socket::MsgFlags::empty(),
        )?;
        Ok(())
    }

    /// Every IPv4 socket of one protocol.
    fn dump(&mut self, proto: u8) -> Result<Vec<DiagSocket>, SocketsError> {
        self.send(
            SOCK_DIAG_BY_FAMILY,
            NLM_F_REQUEST | NLM_F_DUMP,
            proto,
            &[0; SOCKID_LEN],
        )?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = recv(
                std::os::fd::AsRawFd::as_raw_fd(&self.fd),
                &mut buf,
                nix::sys::socket::MsgFlags::empty(),
            )?;
            for (kind, payload) in messages(&buf[..n]) {
                match kind {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let code = error_code(payload);
                        if code != 0 {
                            return Err(SocketsError::Refused(nix::errno::Errno::from_raw(-code)));
                        }
                    }
                    SOCK_DIAG_BY_FAMILY => out.extend(DiagSocket::parse(payload)),
                    _ => {}
                }
            }
        }
    }

    /// Aborts one socket; a socket that is already gone is not an error.
    fn destroy(&mut self, proto: u8, socket: &DiagSocket) -> Result<(), SocketsError> {
        self.send(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, proto, &socket.id)?;
        let mut buf = vec![0u8; 4096];
        let n = recv(
            std::os::fd::AsRawFd::as_raw_fd(&self.fd),
            &mut buf,
            nix::sys::socket::MsgFlags::empty(),
        )?;
        for (kind, payload) in messages(&buf[..n]) {
            if kind == NLMSG_ERROR {
                return match error_code(payload) {
                    0 => Ok(()),
                    code if -code == nix::libc::ENOENT => Ok(()),
                    code => Err(SocketsError::Refused(nix::errno::Errno::from_raw(-code))),
                };
            }
        }
        Ok(())
    }
}

/// Destroys, in the calling thread's namespace, the sockets whose peer is one of `gone`
/// and for which `translated(cookie, backend)` holds. Returns how many.
fn destroy_here(
    gone: &[BackendAddr],
    translated: &(dyn Fn(u64, &BackendAddr) -> bool + Sync),
) -> Result<usize, SocketsError> {
    let mut diag = Diag::open()?;
    let mut destroyed = 0;
    for (proto, kind) in [(IPPROTO_TCP, Protocol::Tcp), (IPPROTO_UDP, Protocol::Udp)] {
        let wanted: Vec<&BackendAddr> = gone.iter().filter(|b| b.proto == kind).collect();
        if wanted.is_empty() {
            continue;
        }
        for socket in diag.dump(proto)? {
            let Some(backend) = wanted.iter().find(|b| (b.ip, b.port) == socket.peer) else {
                continue;
            };
            if !translated(socket.cookie, backend) {
                continue;
            }
            diag.destroy(proto, &socket)?;
            destroyed += 1;
        }
    }
    Ok(destroyed)
}

/// The distinct network namespaces of the processes in `cgroup` (and below), plus our own.
pub fn namespaces(cgroup: &Path) -> Vec<PathBuf> {
    let mut found: BTreeMap<(u64, u64), PathBuf> = BTreeMap::new();
    let mut add = |path: PathBuf| {
        if let Ok(meta) = std::fs::metadata(&path) {
            found.entry((meta.dev(), meta.ino())).or_insert(path);
        }
    };
    add(PathBuf::from("/proc/self/ns/net"));
    let mut dirs = vec![cgroup.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs.lines().filter(|l| !l.is_empty()) {
                add(PathBuf::from(format!("/proc/{pid}/ns/net")));
            }
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            dirs.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    found.into_values().collect()
}

/// Destroys the translated sockets to `gone` in every namespace of `cgroup`'s processes.
/// A namespace that vanished meanwhile is skipped; other failures are logged and the
/// rest still visited. Returns how many sockets were destroyed.
pub fn destroy(
    cgroup: &Path,
    gone: &[BackendAddr],
    translated: &(dyn Fn(u64, &BackendAddr) -> bool + Sync),
) -> usize {
    if gone.is_empty() {
        return 0;
    }
    let mut total = 0;
    for ns in namespaces(cgroup) {
        let result = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let file = File::open(&ns).map_err(|source| SocketsError::Enter {
                        path: ns.clone(),
                        source,
                    })?;
                    setns(file, CloneFlags::CLONE_NEWNET).map_err(|e| SocketsError::Enter {
                        path: ns.clone(),
                        source: e.into(),
                    })?;
                    destroy_here(gone, translated)
                })
                .join()
                .unwrap_or(Err(SocketsError::Thread))
        });
        match result {
            Ok(n) => {
                if n > 0 {
                    debug!(netns = %ns.display(), destroyed = n, "destroyed sockets to removed backends");
                }
                total += n;
            }
            Err(SocketsError::Enter { .. }) => {}
            Err(e) => {
                warn!(netns = %ns.display(), error = %e, "could not destroy sockets to removed backends")
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_the_kernel_layout() {
        let req = request(
            SOCK_DESTROY,
            NLM_F_REQUEST | NLM_F_ACK,
            7,
            IPPROTO_UDP,
            &[9; SOCKID_LEN],
        );
        assert_eq!(req.len(), 72);
        assert_eq!(u32::from_ne_bytes(req[0..4].try_into().unwrap()), 72);
        assert_eq!(
            u16::from_ne_bytes(req[4..6].try_into().unwrap()),
            SOCK_DESTROY
        );
        assert_eq!(req[16..18], [AF_INET, IPPROTO_UDP]);
        assert_eq!(req[24..], [9; SOCKID_LEN]);
    }

    #[test]
    fn diag_messages_parse_peer_and_cookie() {
        let mut msg = vec![AF_INET, 1, 0, 0];
        let mut id = [0u8; SOCKID_LEN];
        id[0..2].copy_from_slice(&40000u16.to_be_bytes());
        id[2..4].copy_from_slice(&8080u16.to_be_bytes());
        id[20..24].copy_from_slice(&[10, 250, 0, 10]);
        id[40..44].copy_from_slice(&0x1234u32.to_ne_bytes());
        id[44..48].copy_from_slice(&1u32.to_ne_bytes());
        msg.extend(id);
        msg.extend([0u8; 20]);
        let socket = DiagSocket::parse(&msg).unwrap();
        assert_eq!(socket.peer, (IpAddr::from([10, 250, 0, 10]), 8080));
        assert_eq!(socket.cookie, (1 << 32) | 0x1234);
        assert!(DiagSocket::parse(&msg[..40]).is_none());
    }

    #[test]
    fn netlink_datagrams_split_into_messages() {
        let mut buf = Vec::new();
        for (kind, payload) in [
            (SOCK_DIAG_BY_FAMILY, vec![1u8, 2, 3]),
            (NLMSG_DONE, vec![0; 4]),
        ] {
            let len = (NLMSG_HDRLEN + payload.len()) as u32;
            buf.extend(len.to_ne_bytes());
            buf.extend(kind.to_ne_bytes());
            buf.extend([0u8; 10]);
            buf.extend(&payload);
            while buf.len() % 4 != 0 {
                buf.push(0);
            }
        }
        let parsed = messages(&buf);
        assert_eq!(
            parsed,
            vec![
                (SOCK_DIAG_BY_FAMILY, &[1u8, 2, 3][..]),
                (NLMSG_DONE, &[0u8; 4][..])
            ]
        );
    }
}
