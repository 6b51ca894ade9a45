//! A small network lab for dataplane tests: network namespaces joined by a veth pair, a
//! cgroup (v2) to attach socket programs to, and TCP/UDP echo servers that answer with
//! their own address.
//!
//! Safety rules (see `docs/architecture.md`): every name carries the test process id and
//! a counter; nothing is created in, or routed from, the root network namespace (the
//! namespaces and veths are [`crate::netns`]'s); the lab has no route out; every
//! namespace, cgroup and thread is removed on drop, pass or fail.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::netns::{Netns, connect, enter_current_thread};

/// Where cgroup v2 is mounted on these machines (hybrid layout).
pub const CGROUP2_ROOT: &str = "/sys/fs/cgroup/unified";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call: `<prefix><pid>x<n>`.
pub fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}x{n}", std::process::id())
}

/// A cgroup v2 directory of our own under [`CGROUP2_ROOT`], removed on drop.
#[derive(Debug)]
pub struct TestCgroup {
    path: PathBuf,
}

impl TestCgroup {
    /// Creates `<CGROUP2_ROOT>/<name>`.
    pub fn new(name: &str) -> Result<Self> {
        let path = Path::new(CGROUP2_ROOT).join(name);
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }

    /// Its directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The processes in it.
    pub fn pids(&self) -> Vec<u32> {
        std::fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Our probes have exited by now (they are waited for); retry briefly in case the
        // kernel has not yet released a zombie's membership.
        for _ in 0..100 {
            if std::fs::remove_dir(&self.path).is_ok() || !self.path.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Two namespaces: `client` and `pods`, joined by a veth pair on 10.250.0.0/24. The
/// client is 10.250.0.1; the pods' addresses are 10.250.0.10, .11, ... No other route.
#[derive(Debug)]
pub struct Lab {
    /// Where clients run.
    pub client: Netns,
    /// Where backends listen.
    pub pods: Netns,
    /// The backends' addresses.
    pub pod_addrs: Vec<Ipv4Addr>,
}

impl Lab {
    /// Builds the lab with `backends` pod addresses.
    pub fn new(backends: u8) -> Result<Self> {
        let client = Netns::new("lbclient")?;
        let pods = Netns::new("lbpods")?;
        connect(&client, "v0", &pods, "v1")?;
        client.ip(&["addr", "add", "10.250.0.1/24", "dev", "v0"])?;
        let mut pod_addrs = Vec::new();
        for i in 0..backends {
            let addr = Ipv4Addr::new(10, 250, 0, 10 + i);
            pods.ip(&["addr", "add", &format!("{addr}/24"), "dev", "v1"])?;
            pod_addrs.push(addr);
        }
        Ok(Self {
            client,
            pods,
            pod_addrs,
        })
    }
}

/// A node lab for the tc NodePort path, all inside namespaces of its own:
///
/// - `outside`: the client, 10.251.0.1 on a bridge `br0` that joins the nodes' external
///   interfaces (the "network"); routes 10.252.0.0/24 (external and load-balancer IPs)
///   via node 1;
/// - `node1`: external interface `eth0` 10.251.0.2, pods behind `pods` (10.244.1.1/24),
///   route to node 2's pods via 10.251.0.3, forwarding on;
/// - `pods1`: node 1's pods, 10.244.1.10, .11, ... on `eth0`, routes to the lab's
///   networks (10.251.0.0/24, 10.244.0.0/16) via the node;
/// - `node2` (10.251.0.3) and `pods2` (10.244.2.10, ...): the second node, route to node
///   1's pods via 10.251.0.2.
///
/// No route leads out of the lab. The network's side of each node's `eth0` (`n1`, `n2`
/// in `outside`) has transmit checksum offload off, so frames reach `eth0` with complete
/// checksums as from a real wire (see [`Netns::disable_tx_checksum`]). Native XDP on
/// `eth0` sending with `XDP_TX` also needs an XDP program on that peer (see
/// [`NodeLab::PEERS`]).
#[derive(Debug)]
pub struct NodeLab {
    /// The client side.
    pub outside: Netns,
    /// The node under test.
    pub node1: Netns,
    /// Its pods.
    pub pods1: Netns,
    /// The other node.
    pub node2: Netns,
    /// Its pods.
    pub pods2: Netns,
    /// Node 1's pod addresses.
    pub pod1_addrs: Vec<Ipv4Addr>,
    /// Node 2's pod addresses.
    pub pod2_addrs: Vec<Ipv4Addr>,
}

impl NodeLab {
    /// The client's address.
    pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 251, 0, 1);
    /// Node 1's external address.
    pub const NODE1: Ipv4Addr = Ipv4Addr::new(10, 251, 0, 2);
    /// Node 2's external address.
    pub const NODE2: Ipv4Addr = Ipv4Addr::new(10, 251, 0, 3);
    /// Node 1's external interface.
    pub const EXTERNAL_IF: &'static str = "eth0";
    /// The network's side of node 1's and node 2's `eth0`, in `outside`. A veth delivers
    /// frames its peer sends with native `XDP_TX` only when it has an XDP program of its
    /// own (kernel `veth_xdp_flush` schedules the receiving NAPI only then; GRO alone
    /// leaves them queued until other traffic arrives): tests of native XDP attach a
    /// pass-through program here.
    pub const PEERS: [&'static str; 2] = ["n1", "n2"];

    /// Builds the lab with `pods1` pod addresses on node 1 and `pods2` on node 2.
    pub fn new(pods1: u8, pods2: u8) -> Result<Self> {
        let outside = Netns::new("outside")?;
        let node1 = Netns::new("node1")?;
        let pods1_ns = Netns::new("pods1")?;
        let node2 = Netns::new("node2")?;
        let pods2_ns = Netns::new("pods2")?;
        outside.ip(&["link", "add", "br0", "type", "bridge"])?;
        outside.ip(&["link", "set", "br0", "up"])?;
        outside.ip(&["addr", "add", "10.251.0.1/24", "dev", "br0"])?;
        outside.ip(&["route", "add", "10.252.0.0/24", "via", "10.251.0.2"])?;
        let mut pod1_addrs = Vec::new();
        let mut pod2_addrs = Vec::new();
        for (i, node, pods, count, addrs) in [
            (1u8, &node1, &pods1_ns, pods1, &mut pod1_addrs),
            (2u8, &node2, &pods2_ns, pods2, &mut pod2_addrs),
        ] {
            let port = format!("n{i}");
            connect(&outside, &port, node, Self::EXTERNAL_IF)?;
            outside.ip(&["link", "set", &port, "master", "br0"])?;
            // Complete checksums into the node, as from a real wire (see
            // `Netns::disable_tx_checksum`).
            outside.disable_tx_checksum(&port)?;
            node.ip(&[
                "addr",
                "add",
                &format!("10.251.0.{}/24", i + 1),
                "dev",
                Self::EXTERNAL_IF,
            ])?;
            connect(node, "pods", pods, "eth0")?;
            node.ip(&["addr", "add", &format!("10.244.{i}.1/24"), "dev", "pods"])?;
            let other = 3 - i;
            node.ip(&[
                "route",
                "add",
                &format!("10.244.{other}.0/24"),
                "via",
                &format!("10.251.0.{}", other + 1),
            ])?;
            node.enable_forwarding()?;
            for p in 0..count {
                let addr = Ipv4Addr::new(10, 244, i, 10 + p);
                pods.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
                addrs.push(addr);
            }
            let nets: &[&str] = if count == 0 {
                &[]
            } else {
                &["10.251.0.0/24", "10.244.0.0/16"]
            };
            for net in nets {
                pods.ip(&["route", "add", net, "via", &format!("10.244.{i}.1")])?;
            }
        }
        Ok(Self {
            outside,
            node1,
            pods1: pods1_ns,
            node2,
            pods2: pods2_ns,
            pod1_addrs,
            pod2_addrs,
        })
    }
}

impl NodeLab {
    /// Keeps the lab's namespaces past this value's life (`cargo xtask lab up`): their
    /// roles and names, in creation order. [`crate::netns::delete_named`] on each removes
    /// the lab (every link lives inside one of them).
    pub fn persist(self) -> Vec<(&'static str, String)> {
        vec![
            ("outside", self.outside.persist()),
            ("node1", self.node1.persist()),
            ("pods1", self.pods1.persist()),
            ("node2", self.node2.persist()),
            ("pods2", self.pods2.persist()),
        ]
    }
}

/// TCP and UDP echo servers in a namespace: each answers a request with its own
/// address, and counts what it served.
#[derive(Debug)]
pub struct EchoServers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    hits: Arc<Mutex<BTreeMap<String, u64>>>,
}

impl EchoServers {
    /// Starts a TCP and a UDP server on each `addr:port` inside the namespace at `netns`.
    pub fn start(netns: &Path, addrs: &[Ipv4Addr], port: u16) -> Result<Self> {
        Self::start_with(netns, addrs, port, false)
    }

    /// Like [`EchoServers::start`], but each reply is `<own address>|<peer ip:port>`: the
    /// peer as the server saw it (to check source NAT, or its absence).
    pub fn start_reporting_peer(netns: &Path, addrs: &[Ipv4Addr], port: u16) -> Result<Self> {
        Self::start_with(netns, addrs, port, true)
    }

    fn start_with(netns: &Path, addrs: &[Ipv4Addr], port: u16, peer: bool) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let hits = Arc::new(Mutex::new(BTreeMap::new()));
        let mut servers = Self {
            stop: stop.clone(),
            threads: Vec::new(),
            hits: hits.clone(),
        };
        for addr in addrs {
            for udp in [false, true] {
                let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
                let (stop, hits, netns) = (stop.clone(), hits.clone(), netns.to_path_buf());
                let local = SocketAddr::from((*addr, port));
                let thread = std::thread::spawn(move || {
                    let setup = enter_current_thread(&netns).and_then(|()| {
                        if udp {
                            let socket = UdpSocket::bind(local)?;
                            socket.set_read_timeout(Some(Duration::from_millis(20)))?;
                            Ok(Either::Udp(socket))
                        } else {
                            let listener = TcpListener::bind(local)?;
                            listener.set_nonblocking(true)?;
                            Ok(Either::Tcp(listener))
                        }
                    });
                    let server = match setup {
                        Ok(server) => {
                            let _ = ready_tx.send(Ok(()));
                            server
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    serve(server, local, peer, &stop, &hits);
                });
                servers.threads.push(thread);
                ready_rx
                    .recv_timeout(Duration::from_secs(5))
                    .context("echo server did not start")??;
            }
        }
        Ok(servers)
    }

    /// Requests served per `"<addr> tcp|udp"`.
    pub fn hits(&self) -> BTreeMap<String, u64> {
        self.hits.lock().map(|h| h.clone()).unwrap_or_default()
    }
}

enum Either {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

fn serve(
    server: Either,
    local: SocketAddr,
    report_peer: bool,
    stop: &AtomicBool,
    hits: &Mutex<BTreeMap<String, u64>>,
) {
    let reply = |peer: SocketAddr| {
        if report_peer {
            format!("{}|{peer}", local.ip())
        } else {
            local.ip().to_string()
        }
    };
    let count = |proto: &str| {
        if let Ok(mut hits) = hits.lock() {
            *hits.entry(format!("{} {proto}", local.ip())).or_default() += 1;
        }
    };
    while !stop.load(Ordering::Relaxed) {
        match &server {
            Either::Tcp(listener) => match listener.accept() {
                Ok((mut stream, peer)) => {
                    let _ = stream.set_nonblocking(false);
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                    let mut buf = [0u8; 64];
                    if stream.read(&mut buf).is_ok() {
                        let _ = stream.write_all(reply(peer).as_bytes());
                        count("tcp");
                    }
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            },
            Either::Udp(socket) => {
                let mut buf = [0u8; 64];
                if let Ok((_, from)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(reply(from).as_bytes(), from);
                    count("udp");
                }
            }
        }
    }
}

impl Drop for EchoServers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}
