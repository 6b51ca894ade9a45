//! The tc NodePort / ExternalIP / LoadBalancer IP path with real kernel eBPF and real
//! traffic (needs root, TCX (kernel >= 6.6), cgroup v2 and bpffs; CI runs as root).
//!
//! Each test builds its own [`NodeLab`] (a client outside, node 1 with the external
//! interface and its pods, node 2 with its own pod), starts the agent for node 1 with the
//! tc programs on node 1's `eth0` (attached from a thread inside node 1's namespace), and
//! sends TCP and UDP from the outside client. Echo servers answer with their own address
//! and the peer they saw. Everything (agent, pins, cgroup, servers, namespaces) goes on
//! drop.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use ferrokube_proxy::loader::{XdpCounters, XdpPass, xdp_counters};
use ferrokube_proxy::sync::{ApplyStats, Input};
use ferrokube_proxy::{Agent, Config, Sizes, Snat, XdpMode, bpffs, list, source};
use ferrokube_testkit::netlab::{EchoServers, NodeLab, TestCgroup, unique_name};
use ferrokube_testkit::netns::Netns;

const TARGET: u16 = 8080;
const NODE1: Ipv4Addr = NodeLab::NODE1;

/// Removes a node's pins on drop (after the agent that used them).
struct Pins {
    bpffs: PathBuf,
    node: String,
}

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = bpffs::remove(&self.bpffs, &self.node);
    }
}

/// Fields drop in order: agent, pins, peer programs, cgroup, servers, lab.
struct Harness {
    agent: Option<Agent>,
    pins: Pins,
    _peers: Vec<XdpPass>,
    _cgroup: TestCgroup,
    _servers: Vec<EchoServers>,
    lab: NodeLab,
    node: String,
    config: Config,
}

impl Harness {
    fn new(pods1: u8, pods2: u8) -> Result<Self> {
        Self::with_snat(pods1, pods2, Snat::default())
    }

    fn with_snat(pods1: u8, pods2: u8, snat: Snat) -> Result<Self> {
        Self::with_options(pods1, pods2, snat, XdpMode::Off)
    }

    fn with_xdp(pods1: u8, pods2: u8, xdp: XdpMode) -> Result<Self> {
        Self::with_options(pods1, pods2, Snat::default(), xdp)
    }

    fn with_options(pods1: u8, pods2: u8, snat: Snat, xdp: XdpMode) -> Result<Self> {
        Self::build(pods1, pods2, snat, xdp, false)
    }

    fn build(pods1: u8, pods2: u8, snat: Snat, xdp: XdpMode, bpf_log: bool) -> Result<Self> {
        let lab = NodeLab::new(pods1, pods2)?;
        let servers = vec![
            EchoServers::start_reporting_peer(&lab.pods1.path(), &lab.pod1_addrs, TARGET)?,
            EchoServers::start_reporting_peer(&lab.pods2.path(), &lab.pod2_addrs, TARGET)?,
        ];
        let cgroup = TestCgroup::new(&unique_name("ferrokube-np-"))?;
        let node = unique_name("np-node-");
        let mut config = Config::new(node.clone(), cgroup.path());
        config.sizes = Sizes {
            services: 256,
            backends: 256,
            slots: 1024,
            revnat: 1024,
            affinity: 1024,
            ct: 4096,
        };
        config.interface = Some(NodeLab::EXTERNAL_IF.into());
        config.snat = snat;
        config.xdp = xdp;
        config.bpf_log = bpf_log;
        let pins = Pins {
            bpffs: config.bpffs.clone(),
            node: node.clone(),
        };
        let mut peers = Vec::new();
        if xdp == XdpMode::Native {
            for peer in NodeLab::PEERS {
                let bpffs = config.bpffs.clone();
                peers.push(
                    lab.outside
                        .run_in(move || Ok(XdpPass::attach(peer, &bpffs)?))?,
                );
            }
        }
        let agent = start_in(&lab.node1, &config)?;
        ensure!(
            agent.dataplane().node_ips() == [NODE1],
            "node addresses read from eth0: {:?}",
            agent.dataplane().node_ips()
        );
        Ok(Self {
            agent: Some(agent),
            pins,
            _peers: peers,
            _cgroup: cgroup,
            _servers: servers,
            lab,
            node,
            config,
        })
    }

    fn apply(&mut self, yaml: &str) -> Result<ApplyStats> {
        let objects = source::parse_objects(yaml, "test")?;
        let agent = self.agent.as_mut().context("agent stopped")?;
        Ok(agent.apply(Input::Snapshot(objects))?)
    }

    fn list(&self) -> Result<String> {
        Ok(list::render(&list::list(
            &self.pins.bpffs,
            Some(&self.node),
        )?))
    }

    fn outside(&self) -> &Netns {
        &self.lab.outside
    }

    fn xdp(&self) -> Result<XdpCounters> {
        let dir = bpffs::pin_dir(&self.pins.bpffs, &self.node)?;
        Ok(xdp_counters(&dir)?)
    }

    /// Stops the agent (the pins stay) and starts it again with `bpf_log`; returns how
    /// many links it adopted.
    fn restart(&mut self, bpf_log: bool) -> Result<usize> {
        self.agent = None;
        self.config.bpf_log = bpf_log;
        let agent = start_in(&self.lab.node1, &self.config)?;
        let adopted = agent.dataplane().adopted_links();
        self.agent = Some(agent);
        Ok(adopted)
    }

    /// The programs' log records read now (each is written before its packet goes on).
    fn bpf_log_lines(&mut self) -> Result<Vec<String>> {
        Ok(self
            .agent
            .as_mut()
            .context("agent stopped")?
            .dataplane_mut()
            .bpf_logs()
            .context("the log reader opens on every start")?
            .flush())
    }
}

/// Starts the agent from a thread inside `ns` (the interface is looked up, and the TCX
/// links made, in the calling thread's namespace).
fn start_in(ns: &Netns, config: &Config) -> Result<Agent> {
    let config = config.clone();
    ns.run_in(move || Ok(Agent::start(&config)?))
}

/// What an echo server answered: its address and the peer it saw.
#[derive(Debug, Clone, PartialEq)]
struct Echo {
    backend: Ipv4Addr,
    peer: SocketAddr,
}

impl Echo {
    fn parse(text: &str) -> Result<Self> {
        let (backend, peer) = text
            .split_once('|')
            .with_context(|| format!("unexpected reply {text:?}"))?;
        Ok(Self {
            backend: backend.parse()?,
            peer: peer.parse()?,
        })
    }
}

/// One TCP request from the outside client.
fn tcp(ns: &Netns, to: SocketAddrV4) -> Result<Echo> {
    ns.run_in(move || {
        let mut stream = TcpStream::connect_timeout(&to.into(), Duration::from_secs(3))
            .with_context(|| format!("connecting to {to}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(3)))?;
        stream.write_all(b"hello")?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply)?;
        Echo::parse(&reply)
    })
}

/// One UDP request from the outside client; the reply must come from `to` itself.
fn udp(ns: &Netns, to: SocketAddrV4) -> Result<Echo> {
    ns.run_in(move || {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        socket.set_read_timeout(Some(Duration::from_secs(3)))?;
        socket.send_to(b"hello", to)?;
        let mut buf = [0u8; 128];
        let (n, from) = socket.recv_from(&mut buf).context("no UDP reply")?;
        ensure!(
            from == SocketAddr::V4(to),
            "reply came from {from}, not {to}"
        );
        Echo::parse(std::str::from_utf8(&buf[..n])?)
    })
}

fn at(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

/// A Service (type, extra spec lines, ports) and one EndpointSlice with `endpoints`
/// given as (address, node, condition) where condition is "ready" or "terminating".
fn service(
    name: &str,
    type_: &str,
    extra: &str,
    ports: &[(&str, &str, u16, u16)],
    endpoints: &[(Ipv4Addr, &str, &str)],
) -> String {
    let svc_ports: String = ports
        .iter()
        .map(|(pname, proto, port, node_port)| {
            format!("  - {{name: {pname}, protocol: {proto}, port: {port}, nodePort: {node_port}, targetPort: {TARGET}}}\n")
        })
        .collect();
    let slice_ports: String = ports
        .iter()
        .map(|(pname, proto, _, _)| {
            format!("  - {{name: {pname}, protocol: {proto}, port: {TARGET}}}\n")
        })
        .collect();
    let eps: String = endpoints
        .iter()
        .map(|(ip, node, condition)| {
            let conditions = match *condition {
                "ready" => "{ready: true, serving: true, terminating: false}",
                _ => "{ready: false, serving: true, terminating: true}",
            };
            format!("  - addresses: [{ip}]\n    nodeName: {node}\n    conditions: {conditions}\n")
        })
        .collect();
    let eps = if eps.is_empty() {
        "endpoints: []\n".to_string()
    } else {
        format!("endpoints:\n{eps}")
    };
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
         spec:\n  type: {type_}\n  clusterIP: 10.96.0.{n}\n{extra}  ports:\n{svc_ports}---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata:\n  name: {name}-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: {name}}}\n\
         addressType: IPv4\nports:\n{slice_ports}{eps}",
        n = name.len() + 10,
    )
}

#[test]
fn nodeport_tcp_and_udp_reach_local_backends_with_reverse_nat_needs_root() -> Result<()> {
    let mut h = Harness::new(2, 0)?;
    let node = h.node.clone();
    let pods = h.lab.pod1_addrs.clone();
    let yaml = service(
        "web",
        "NodePort",
        "",
        &[("http", "TCP", 80, 30080), ("dns", "UDP", 53, 30053)],
        &[(pods[0], &node, "ready"), (pods[1], &node, "ready")],
    );
    h.apply(&yaml)?;
    let listed = h.list()?;
    assert!(
        listed.contains("10.251.0.2:30080/TCP") && listed.contains("10.251.0.2:30053/UDP"),
        "{listed}"
    );
    assert!(listed.contains("external"), "{listed}");
    assert!(listed.contains("(local)"), "{listed}");

    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..24 {
        let echo = tcp(h.outside(), at(NODE1, 30080))?;
        // A local backend sees the client itself (no SNAT).
        assert_eq!(echo.peer.ip(), NodeLab::CLIENT);
        seen.insert(echo.backend);
    }
    assert_eq!(seen, pods.iter().copied().collect(), "random over both");
    for _ in 0..6 {
        let echo = udp(h.outside(), at(NODE1, 30053))?;
        assert!(pods.contains(&echo.backend), "{echo:?}");
        assert_eq!(echo.peer.ip(), NodeLab::CLIENT);
    }
    let listed = h.list()?;
    let line = listed
        .lines()
        .find(|l| l.contains("10.251.0.2:30080/TCP"))
        .context("frontend listed")?;
    assert!(line.contains("translated 24 "), "{listed}");
    // Per backend too (the TCP backends serve only this frontend and the ClusterIP).
    let per_backend: u64 = listed
        .lines()
        .filter(|l| l.contains("-> 10.244.1.") && l.contains(":8080/TCP"))
        .filter_map(|l| {
            l.split("translated ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert_eq!(per_backend, 2 * 24, "listed under both frontends: {listed}");

    // Reset (drop the agent, remove the pins): the tc links go (the kernel releases an
    // unpinned link asynchronously), and the node port is refused by the host stack.
    h.agent = None;
    bpffs::remove(&h.pins.bpffs, &node)?;
    let to = at(NODE1, 30080);
    let outside = h.outside();
    ferrokube_testkit::wait_for(
        "the NodePort to be refused after reset",
        Duration::from_secs(10),
        || {
            let kind = outside.run_in(move || {
                Ok(
                    TcpStream::connect_timeout(&to.into(), Duration::from_secs(3))
                        .err()
                        .map(|e| e.kind()),
                )
            })?;
            Ok((kind == Some(ErrorKind::ConnectionRefused)).then_some(()))
        },
    )?;
    Ok(())
}

#[test]
fn remote_backend_is_snated_to_the_node_address_needs_root() -> Result<()> {
    let mut h = Harness::new(1, 1)?;
    let remote = h.lab.pod2_addrs[0];
    let yaml = service(
        "remote",
        "NodePort",
        "",
        &[("http", "TCP", 80, 30081), ("dns", "UDP", 53, 30054)],
        &[(remote, "other-node", "ready")],
    );
    h.apply(&yaml)?;
    let mut events =
        ferrokube_proxy::events::EventReader::open(&bpffs::pin_dir(&h.pins.bpffs, &h.node)?)?;
    for _ in 0..5 {
        let echo = tcp(h.outside(), at(NODE1, 30081))?;
        assert_eq!(echo.backend, remote);
        assert_eq!(echo.peer.ip(), NODE1, "SNAT to the node address");
        assert!(echo.peer.port() >= 61_000, "SNAT port range: {echo:?}");
        let echo = udp(h.outside(), at(NODE1, 30054))?;
        assert_eq!(echo.backend, remote);
        assert_eq!(echo.peer.ip(), NODE1);
    }
    // Without XDP, tc reports each new flow (5 TCP connections, 5 UDP sockets).
    let mut seen = Vec::new();
    ferrokube_testkit::wait_for("10 tc events", Duration::from_secs(5), || {
        seen.extend(events.drain());
        Ok((seen.len() >= 10).then_some(()))
    })?;
    assert_eq!(seen.len(), 10);
    assert!(
        seen.iter()
            .all(|e| e.source == ferrokube_ebpf_common::event::SOURCE_TC
                && e.backend[0] == u32::from_ne_bytes(remote.octets())
                && e.client[0] == u32::from_ne_bytes(NodeLab::CLIENT.octets())),
        "{seen:?}"
    );
    Ok(())
}

#[test]
fn external_traffic_policy_local_uses_local_backends_and_keeps_the_client_needs_root() -> Result<()>
{
    let mut h = Harness::new(1, 1)?;
    let node = h.node.clone();
    let (local, remote) = (h.lab.pod1_addrs[0], h.lab.pod2_addrs[0]);
    let yaml = service(
        "etp",
        "NodePort",
        "  externalTrafficPolicy: Local\n",
        &[("http", "TCP", 80, 30082)],
        &[(local, &node, "ready"), (remote, "other-node", "ready")],
    );
    h.apply(&yaml)?;
    for _ in 0..16 {
        let echo = tcp(h.outside(), at(NODE1, 30082))?;
        assert_eq!(echo.backend, local, "only the node-local backend");
        assert_eq!(echo.peer.ip(), NodeLab::CLIENT, "client address preserved");
    }
    Ok(())
}

#[test]
fn external_ip_and_load_balancer_ip_are_translated_needs_root() -> Result<()> {
    let mut h = Harness::new(1, 0)?;
    let node = h.node.clone();
    let pod = h.lab.pod1_addrs[0];
    let mut yaml = service(
        "lb",
        "LoadBalancer",
        "  externalIPs: [10.252.0.10]\n",
        &[("http", "TCP", 80, 30083), ("dns", "UDP", 53, 30055)],
        &[(pod, &node, "ready")],
    );
    // The Service's status goes with the Service document (before the slice).
    yaml = yaml.replacen(
        "---\n",
        "status:\n  loadBalancer:\n    ingress: [{ip: 10.252.0.20}]\n---\n",
        1,
    );
    h.apply(&yaml)?;
    let listed = h.list()?;
    for frontend in [
        "10.252.0.10:80/TCP",
        "10.252.0.20:80/TCP",
        "10.252.0.20:53/UDP",
        "10.251.0.2:30083/TCP",
    ] {
        assert!(listed.contains(frontend), "{frontend} missing: {listed}");
    }
    for ip in [Ipv4Addr::new(10, 252, 0, 10), Ipv4Addr::new(10, 252, 0, 20)] {
        let echo = tcp(h.outside(), at(ip, 80))?;
        assert_eq!(
            (echo.backend, echo.peer.ip()),
            (pod, std::net::IpAddr::V4(NodeLab::CLIENT))
        );
        let echo = udp(h.outside(), at(ip, 53))?;
        assert_eq!(echo.backend, pod);
    }
    let echo = tcp(h.outside(), at(NODE1, 30083))?;
    assert_eq!(echo.backend, pod);
    Ok(())
}

#[test]
fn a_service_without_endpoints_refuses_at_once_needs_root() -> Result<()> {
    let mut h = Harness::new(1, 0)?;
    let yaml = service(
        "empty",
        "NodePort",
        "",
        &[("http", "TCP", 80, 30084), ("dns", "UDP", 53, 30056)],
        &[],
    );
    h.apply(&yaml)?;
    let to = at(NODE1, 30084);
    let (kind, elapsed) = h.outside().run_in(move || {
        let start = Instant::now();
        let result = TcpStream::connect_timeout(&to.into(), Duration::from_secs(5));
        Ok((result.err().map(|e| e.kind()), start.elapsed()))
    })?;
    assert_eq!(kind, Some(ErrorKind::ConnectionRefused));
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
    let to = at(NODE1, 30056);
    let kind = h.outside().run_in(move || {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        socket.connect(to)?;
        socket.set_read_timeout(Some(Duration::from_secs(2)))?;
        socket.send(b"hello")?;
        let mut buf = [0u8; 64];
        Ok(socket.recv(&mut buf).err().map(|e| e.kind()))
    })?;
    assert_eq!(
        kind,
        Some(ErrorKind::ConnectionRefused),
        "ICMP port unreachable"
    );
    let listed = h.list()?;
    let line = listed
        .lines()
        .find(|l| l.contains("10.251.0.2:30084/TCP"))
        .context("frontend listed")?;
    assert!(line.contains("refused 1"), "{listed}");
    Ok(())
}

#[test]
fn session_affinity_keeps_a_client_on_its_backend_needs_root() -> Result<()> {
    let mut h = Harness::new(3, 0)?;
    let node = h.node.clone();
    let pods = h.lab.pod1_addrs.clone();
    let endpoints: Vec<_> = pods.iter().map(|p| (*p, node.as_str(), "ready")).collect();
    let yaml = service(
        "sticky",
        "NodePort",
        "  sessionAffinity: ClientIP\n",
        &[("http", "TCP", 80, 30085)],
        &endpoints,
    );
    h.apply(&yaml)?;
    let first = tcp(h.outside(), at(NODE1, 30085))?.backend;
    for _ in 0..12 {
        assert_eq!(tcp(h.outside(), at(NODE1, 30085))?.backend, first);
    }
    Ok(())
}

#[test]
fn established_connection_survives_its_backend_terminating_needs_root() -> Result<()> {
    let mut h = Harness::new(2, 0)?;
    let node = h.node.clone();
    let (old, new) = (h.lab.pod1_addrs[0], h.lab.pod1_addrs[1]);
    let ports = [("http", "TCP", 80, 30086)];
    h.apply(&service(
        "drain",
        "NodePort",
        "",
        &ports,
        &[(old, &node, "ready")],
    ))?;
    let to = at(NODE1, 30086);
    // Connect (the handshake pins the flow to `old`) and keep the connection open.
    let (tx_go, open) = open_connection(h.outside(), to);
    // Wait until the flow exists (the backend's counter moved), then drain `old`.
    ferrokube_testkit::wait_for("the connection", Duration::from_secs(5), || {
        Ok(h.list()?.contains("translated 1 ").then_some(()))
    })?;
    h.apply(&service(
        "drain",
        "NodePort",
        "",
        &ports,
        &[(old, &node, "terminating"), (new, &node, "ready")],
    ))?;
    tx_go.send(())?;
    let echo = open
        .join()
        .map_err(|_| anyhow::anyhow!("client panicked"))??;
    assert_eq!(
        echo.backend, old,
        "the established connection kept its backend"
    );
    for _ in 0..8 {
        assert_eq!(
            tcp(h.outside(), to)?.backend,
            new,
            "new connections avoid it"
        );
    }
    if h.list()?.contains(&format!("{old}:{TARGET}")) {
        bail!("terminating backend still listed: {}", h.list()?);
    }
    Ok(())
}

/// Opens a TCP connection from the outside client and returns a handle that, once told
/// to go, sends a request on it and returns the reply.
fn open_connection(
    ns: &Netns,
    to: SocketAddrV4,
) -> (
    std::sync::mpsc::Sender<()>,
    std::thread::JoinHandle<Result<Echo>>,
) {
    let (tx_go, rx_go) = std::sync::mpsc::channel::<()>();
    let path = ns.path();
    let handle = std::thread::spawn(move || -> Result<Echo> {
        ferrokube_testkit::netns::enter_current_thread(&path)?;
        let mut stream = TcpStream::connect_timeout(&to.into(), Duration::from_secs(3))?;
        stream.set_read_timeout(Some(Duration::from_secs(3)))?;
        rx_go
            .recv_timeout(Duration::from_secs(10))
            .context("no go")?;
        stream.write_all(b"hello")?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply)?;
        Echo::parse(&reply)
    });
    (tx_go, handle)
}

#[test]
fn restart_adopts_the_tc_links_and_keeps_established_flows_needs_root() -> Result<()> {
    let mut h = Harness::new(2, 0)?;
    let node = h.node.clone();
    let pods = h.lab.pod1_addrs.clone();
    let yaml = service(
        "restart",
        "NodePort",
        "",
        &[("http", "TCP", 80, 30087)],
        &[(pods[0], &node, "ready"), (pods[1], &node, "ready")],
    );
    h.apply(&yaml)?;
    assert_eq!(
        h.agent.as_ref().map(|a| a.dataplane().adopted_links()),
        Some(0)
    );
    let to = at(NODE1, 30087);
    let (go, open) = open_connection(h.outside(), to);
    ferrokube_testkit::wait_for("the connection", Duration::from_secs(5), || {
        Ok(h.list()?.contains("translated 1 ").then_some(()))
    })?;
    // Stop the agent (the pins stay) and start it again: it adopts the links and maps.
    h.agent = None;
    let agent = start_in(&h.lab.node1, &h.config)?;
    assert_eq!(
        agent.dataplane().adopted_links(),
        7,
        "5 cgroup + 2 tc links"
    );
    h.agent = Some(agent);
    let stats = h.apply(&yaml)?;
    assert_eq!(stats.total(), 0, "same input, nothing written: {stats:?}");
    go.send(())?;
    let echo = open
        .join()
        .map_err(|_| anyhow::anyhow!("client panicked"))??;
    assert!(
        pods.contains(&echo.backend),
        "the open flow survived: {echo:?}"
    );
    assert_eq!(tcp(h.outside(), to)?.peer.ip(), NodeLab::CLIENT);
    Ok(())
}

/// The client port is still held by the previous connection on the same tuple.
#[derive(Debug)]
struct Busy;

impl std::fmt::Display for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("client port still in use")
    }
}

impl std::error::Error for Busy {}

/// One TCP request from the outside client, from a fixed source port (waiting, bounded,
/// while the previous connection on the same tuple finishes closing).
fn tcp_from_port(ns: &Netns, port: u16, to: SocketAddrV4) -> Result<Echo> {
    ferrokube_testkit::wait_for(
        "a request from a fixed port",
        Duration::from_secs(5),
        || match tcp_from_port_once(ns, port, to) {
            Ok(echo) => Ok(Some(echo)),
            Err(e) if e.downcast_ref::<Busy>().is_some() => Ok(None),
            Err(e) => Err(e),
        },
    )
}

fn tcp_from_port_once(ns: &Netns, port: u16, to: SocketAddrV4) -> Result<Echo> {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, setsockopt, socket,
        sockopt::ReuseAddr,
    };
    ns.run_in(move || {
        let fd = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        setsockopt(&fd, ReuseAddr, &true)?;
        bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)),
        )?;
        let mut stream = TcpStream::from(fd);
        stream.set_write_timeout(Some(Duration::from_secs(3)))?;
        connect(
            std::os::fd::AsRawFd::as_raw_fd(&stream),
            &SockaddrIn::from(to),
        )
        .map_err(|e| match e {
            // The previous connection on this tuple is still closing (LAST_ACK).
            nix::errno::Errno::EADDRNOTAVAIL => anyhow::anyhow!(Busy),
            e => anyhow::Error::from(e),
        })
        .with_context(|| format!("connecting to {to} from port {port}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(3)))?;
        stream.write_all(b"hello")?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply)?;
        Echo::parse(&reply)
    })
}

#[test]
fn a_reused_tuple_is_a_new_connection_once_its_backend_left_needs_root() -> Result<()> {
    let mut h = Harness::new(2, 0)?;
    let node = h.node.clone();
    let (old, new) = (h.lab.pod1_addrs[0], h.lab.pod1_addrs[1]);
    let ports = [("http", "TCP", 80, 30088), ("dns", "UDP", 53, 30057)];
    h.apply(&service(
        "reuse",
        "NodePort",
        "",
        &ports,
        &[(old, &node, "ready")],
    ))?;
    let (tcp_to, udp_to) = (at(NODE1, 30088), at(NODE1, 30057));
    // TCP from a fixed client port, twice: the second connection reuses the flow.
    let client_port = 40_123;
    assert_eq!(
        tcp_from_port(h.outside(), client_port, tcp_to)?.backend,
        old
    );
    assert_eq!(
        tcp_from_port(h.outside(), client_port, tcp_to)?.backend,
        old
    );
    // UDP from one socket (one tuple).
    let socket = h.outside().run_in(|| {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        socket.set_read_timeout(Some(Duration::from_secs(3)))?;
        Ok(socket)
    })?;
    let ask = |socket: &UdpSocket| -> Result<Echo> {
        socket.send_to(b"hello", udp_to)?;
        let mut buf = [0u8; 128];
        let (n, from) = socket.recv_from(&mut buf)?;
        ensure!(from == SocketAddr::V4(udp_to), "reply from {from}");
        Echo::parse(std::str::from_utf8(&buf[..n])?)
    };
    assert_eq!(ask(&socket)?.backend, old);

    // `old` terminates (TCP) and is removed (UDP: only terminating TCP endpoints are
    // kept here, the UDP port has just `new`).
    h.apply(&service(
        "reuse",
        "NodePort",
        "",
        &ports,
        &[(old, &node, "terminating"), (new, &node, "ready")],
    ))?;
    assert_eq!(
        tcp_from_port(h.outside(), client_port, tcp_to)?.backend,
        new,
        "a new connection on the same tuple avoids the terminating backend"
    );
    h.apply(&service(
        "reuse",
        "NodePort",
        "",
        &ports,
        &[(new, &node, "ready")],
    ))?;
    assert_eq!(
        ask(&socket)?.backend,
        new,
        "a UDP flow leaves a removed backend at once"
    );
    Ok(())
}

#[test]
fn snat_ports_of_closed_flows_are_reused_needs_root() -> Result<()> {
    // Two SNAT ports, reusable as soon as their flow closed (UDP: at once).
    let snat = Snat {
        port_min: 62_000,
        ports: 2,
        closed_reuse_secs: 0,
        ..Snat::default()
    };
    let mut h = Harness::with_snat(0, 1, snat)?;
    let remote = h.lab.pod2_addrs[0];
    h.apply(&service(
        "ports",
        "NodePort",
        "",
        &[("http", "TCP", 80, 30089), ("dns", "UDP", 53, 30058)],
        &[(remote, "other-node", "ready")],
    ))?;
    let mut ports = std::collections::BTreeSet::new();
    for _ in 0..10 {
        let echo = tcp(h.outside(), at(NODE1, 30089))?;
        assert_eq!(
            (echo.backend, echo.peer.ip()),
            (remote, std::net::IpAddr::V4(NODE1))
        );
        ports.insert(echo.peer.port());
        let echo = udp(h.outside(), at(NODE1, 30058))?;
        assert_eq!(echo.peer.ip(), NODE1);
        ports.insert(echo.peer.port());
    }
    assert!(
        ports.iter().all(|p| (62_000..62_002).contains(p)),
        "10 TCP and 10 UDP flows on 2 ports: {ports:?}"
    );
    Ok(())
}

#[test]
fn a_reused_tuple_whose_snat_port_moved_on_starts_afresh_needs_root() -> Result<()> {
    // One SNAT port, free as soon as its flow closed.
    let snat = Snat {
        port_min: 62_100,
        ports: 1,
        closed_reuse_secs: 0,
        ..Snat::default()
    };
    let mut h = Harness::with_snat(0, 1, snat)?;
    let remote = h.lab.pod2_addrs[0];
    h.apply(&service(
        "moved",
        "NodePort",
        "",
        &[("http", "TCP", 80, 30090)],
        &[(remote, "other-node", "ready")],
    ))?;
    let to = at(NODE1, 30090);
    // Client port A, then B (B takes A's closed SNAT port), then A again: A's old flow
    // entries still name that port, which now belongs to B's flow.
    for port in [40_200, 40_201, 40_200, 40_201] {
        let echo = tcp_from_port(h.outside(), port, to)?;
        assert_eq!(echo.backend, remote);
        assert_eq!(echo.peer, SocketAddr::from((NODE1, 62_100)));
        // The next connection takes the SNAT port over as soon as this flow closed (the
        // reuse wait is 0 here): let this client socket finish closing first (its last
        // ACK must still come back through the port), as the default wait does in real
        // life. Under load the next SYN could otherwise overtake that ACK, and this
        // socket would sit in LAST_ACK with its tuple busy for its retransmissions.
        wait_port_closed(h.outside(), port)?;
    }
    Ok(())
}

/// Waits (bounded) until no TCP socket in `ns` has local port `port`.
fn wait_port_closed(ns: &Netns, port: u16) -> Result<()> {
    ferrokube_testkit::wait_for(
        "the client socket to finish closing",
        Duration::from_secs(5),
        || {
            let text = ns.run_in(|| Ok(std::fs::read_to_string("/proc/thread-self/net/tcp")?))?;
            let busy = text.lines().skip(1).any(|line| {
                line.split_whitespace()
                    .nth(1)
                    .and_then(|local| local.split_once(':'))
                    .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                    == Some(port)
            });
            Ok((!busy).then_some(()))
        },
    )
}

#[test]
fn a_direct_connection_reusing_a_nodeport_tuple_is_left_alone_needs_root() -> Result<()> {
    let mut h = Harness::new(1, 0)?;
    let node = h.node.clone();
    let pod = h.lab.pod1_addrs[0];
    h.apply(&service(
        "direct",
        "NodePort",
        "",
        &[("http", "TCP", 80, 30091)],
        &[(pod, &node, "ready")],
    ))?;
    // The client may also reach the pod network directly, through node 1.
    h.lab
        .outside
        .ip(&["route", "add", "10.244.0.0/16", "via", "10.251.0.2"])?;
    let client_port = 40_300;
    let echo = tcp_from_port(h.outside(), client_port, at(NODE1, 30091))?;
    assert_eq!(echo.backend, pod);
    // Same client port, now straight to the pod: the NodePort flow's reverse NAT must not
    // touch it (its replies come from the pod itself).
    let echo = tcp_from_port(h.outside(), client_port, at(pod, TARGET))?;
    assert_eq!((echo.backend, echo.peer.port()), (pod, client_port));
    // And back through the NodePort.
    assert_eq!(
        tcp_from_port(h.outside(), client_port, at(NODE1, 30091))?.backend,
        pod
    );
    Ok(())
}

#[test]
fn a_backends_icmp_error_reaches_the_client_as_the_frontends_needs_root() -> Result<()> {
    let mut h = Harness::new(1, 1)?;
    let node = h.node.clone();
    let pod = h.lab.pod1_addrs[0];
    // The endpoint's port has no server: the pod answers with ICMP port unreachable.
    let yaml = service(
        "closed",
        "NodePort",
        "",
        &[("dns", "UDP", 53, 30092)],
        &[(pod, &node, "ready")],
    )
    .replace(&format!("port: {TARGET}}}"), "port: 9999}");
    h.apply(&yaml)?;
    let to = at(NODE1, 30092);
    let (kind, elapsed) = h.outside().run_in(move || {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        socket.connect(to)?;
        socket.set_read_timeout(Some(Duration::from_secs(3)))?;
        let start = Instant::now();
        socket.send(b"hello")?;
        let mut buf = [0u8; 64];
        Ok((
            socket.recv(&mut buf).err().map(|e| e.kind()),
            start.elapsed(),
        ))
    })?;
    assert_eq!(
        kind,
        Some(ErrorKind::ConnectionRefused),
        "after {elapsed:?}"
    );
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");

    // The same from a remote backend, through the SNAT.
    let remote = h.lab.pod2_addrs[0];
    let yaml = service(
        "closed2",
        "NodePort",
        "",
        &[("dns", "UDP", 53, 30093)],
        &[(remote, "other-node", "ready")],
    )
    .replace(&format!("port: {TARGET}}}"), "port: 9999}");
    h.apply(&yaml)?;
    let to = at(NODE1, 30093);
    let (kind, elapsed) = h.outside().run_in(move || {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        socket.connect(to)?;
        socket.set_read_timeout(Some(Duration::from_secs(3)))?;
        let start = Instant::now();
        socket.send(b"hello")?;
        let mut buf = [0u8; 64];
        Ok((
            socket.recv(&mut buf).err().map(|e| e.kind()),
            start.elapsed(),
        ))
    })?;
    assert_eq!(
        kind,
        Some(ErrorKind::ConnectionRefused),
        "remote, after {elapsed:?}"
    );
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
    Ok(())
}

/// Several UDP requests from one client socket (one flow); each reply must come from `to`.
fn udp_flow(ns: &Netns, to: SocketAddrV4, requests: usize) -> Result<Vec<Echo>> {
    ns.run_in(move || {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        socket.set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut out = Vec::new();
        for _ in 0..requests {
            socket.send_to(b"hello", to)?;
            let mut buf = [0u8; 128];
            let (n, from) = socket.recv_from(&mut buf).context("no UDP reply")?;
            ensure!(from == SocketAddr::V4(to), "reply came from {from}");
            out.push(Echo::parse(std::str::from_utf8(&buf[..n])?)?);
        }
        Ok(out)
    })
}

/// Whether node 1's `eth0` has an XDP program attached (`ip link` shows `xdp...`).
fn eth0_has_xdp(lab: &NodeLab) -> Result<bool> {
    let shown = lab.node1.ip(&["link", "show", NodeLab::EXTERNAL_IF])?;
    Ok(shown.contains(" xdp") || shown.contains("prog/xdp"))
}

#[test]
fn xdp_fast_path_forwards_remote_tcp_and_udp_and_leaves_local_to_tc_needs_root() -> Result<()> {
    let mut h = Harness::with_xdp(1, 1, XdpMode::Native)?;
    assert_eq!(
        h.agent.as_ref().and_then(|a| a.dataplane().xdp_attached()),
        Some(XdpMode::Native),
        "native XDP on a veth"
    );
    assert!(eth0_has_xdp(&h.lab)?, "attached to eth0");
    let node = h.node.clone();
    let (local, remote) = (h.lab.pod1_addrs[0], h.lab.pod2_addrs[0]);
    let mut yaml = service(
        "xremote",
        "NodePort",
        "",
        &[("http", "TCP", 80, 30181), ("dns", "UDP", 53, 30153)],
        &[(remote, "other-node", "ready")],
    );
    yaml.push_str("---\n");
    yaml.push_str(&service(
        "xlocal",
        "NodePort",
        "",
        &[("http", "TCP", 81, 30182)],
        &[(local, &node, "ready")],
    ));
    h.apply(&yaml)?;
    assert!(
        h.list()?.contains("xdp fast path: attached"),
        "{}",
        h.list()?
    );

    // TCP to the remote backend: XDP picks the backend and the SNAT port on the SYN (with
    // tc's code and maps) and handles the whole connection both ways.
    let before = h.xdp()?;
    for _ in 0..5 {
        let echo = tcp(h.outside(), at(NODE1, 30181))?;
        assert_eq!(echo.backend, remote);
        assert_eq!(echo.peer.ip(), NODE1, "SNAT to the node address");
        assert!(echo.peer.port() >= 61_000, "SNAT port range: {echo:?}");
    }
    let tcp_done = h.xdp()?;
    // Per connection at least: the SYN, the ACK, the request and a FIN forward; the
    // SYN-ACK, the reply and a FIN back.
    assert!(
        tcp_done.forward >= before.forward + 5 * 4 && tcp_done.reverse >= before.reverse + 5 * 3,
        "XDP handled the TCP flows: {before:?} -> {tcp_done:?}"
    );
    assert_eq!(tcp_done.new_flows, before.new_flows + 5, "{tcp_done:?}");
    // Translations are counted alike, whichever program made them.
    let listed = h.list()?;
    let line = listed
        .lines()
        .find(|l| l.contains("10.251.0.2:30181/TCP"))
        .context("frontend listed")?;
    assert!(line.contains("translated 5 "), "{listed}");

    // UDP: one flow of 8 datagrams and their replies, all in XDP.
    let echoes = udp_flow(h.outside(), at(NODE1, 30153), 8)?;
    assert!(
        echoes
            .iter()
            .all(|e| e.backend == remote && e.peer.ip() == NODE1),
        "{echoes:?}"
    );
    let udp_done = h.xdp()?;
    assert!(
        udp_done.forward >= tcp_done.forward + 8 && udp_done.reverse >= tcp_done.reverse + 8,
        "XDP handled the UDP flow: {tcp_done:?} -> {udp_done:?}"
    );
    assert_eq!(udp_done.new_flows, tcp_done.new_flows + 1, "{udp_done:?}");

    // A local backend is tc's: XDP passes it untouched, the client address is kept.
    for _ in 0..3 {
        let echo = tcp(h.outside(), at(NODE1, 30182))?;
        assert_eq!(
            (echo.backend, echo.peer.ip()),
            (local, std::net::IpAddr::V4(NodeLab::CLIENT))
        );
    }
    let local_done = h.xdp()?;
    assert_eq!(
        (local_done.forward, local_done.reverse, local_done.new_flows),
        (udp_done.forward, udp_done.reverse, udp_done.new_flows),
        "local flows are not XDP's"
    );

    // Reset detaches the XDP program (the kernel releases an unpinned link
    // asynchronously).
    h.agent = None;
    bpffs::remove(&h.pins.bpffs, &node)?;
    let lab = &h.lab;
    ferrokube_testkit::wait_for("XDP detached after reset", Duration::from_secs(10), || {
        Ok((!eth0_has_xdp(lab)?).then_some(()))
    })?;
    Ok(())
}

#[test]
fn xdp_generic_mode_forwards_remote_flows_needs_root() -> Result<()> {
    let mut h = Harness::with_xdp(0, 1, XdpMode::Generic)?;
    assert_eq!(
        h.agent.as_ref().and_then(|a| a.dataplane().xdp_attached()),
        Some(XdpMode::Generic)
    );
    let remote = h.lab.pod2_addrs[0];
    h.apply(&service(
        "xgeneric",
        "NodePort",
        "",
        &[("http", "TCP", 80, 30183), ("dns", "UDP", 53, 30154)],
        &[(remote, "other-node", "ready")],
    ))?;
    let echo = tcp(h.outside(), at(NODE1, 30183))?;
    assert_eq!(
        (echo.backend, echo.peer.ip()),
        (remote, std::net::IpAddr::V4(NODE1))
    );
    let echoes = udp_flow(h.outside(), at(NODE1, 30154), 4)?;
    assert!(echoes.iter().all(|e| e.backend == remote));
    let counters = h.xdp()?;
    assert!(
        counters.forward >= 3 + 3 && counters.reverse >= 3 + 4,
        "{counters:?}"
    );
    Ok(())
}

#[test]
fn xdp_restart_adopts_the_link_and_keeps_an_established_remote_flow_needs_root() -> Result<()> {
    let mut h = Harness::with_xdp(0, 1, XdpMode::Native)?;
    let remote = h.lab.pod2_addrs[0];
    let yaml = service(
        "xrestart",
        "NodePort",
        "",
        &[("http", "TCP", 80, 30184)],
        &[(remote, "other-node", "ready")],
    );
    h.apply(&yaml)?;
    let to = at(NODE1, 30184);
    let (go, open) = open_connection(h.outside(), to);
    ferrokube_testkit::wait_for("the connection", Duration::from_secs(5), || {
        Ok(h.list()?.contains("translated 1 ").then_some(()))
    })?;
    h.agent = None;
    let agent = start_in(&h.lab.node1, &h.config)?;
    assert_eq!(
        agent.dataplane().adopted_links(),
        8,
        "5 cgroup + 2 tc + 1 XDP links"
    );
    assert_eq!(
        agent.dataplane().xdp_attached(),
        None,
        "adopted, not attached again"
    );
    h.agent = Some(agent);
    let stats = h.apply(&yaml)?;
    assert_eq!(stats.total(), 0, "same input, nothing written: {stats:?}");
    let before = h.xdp()?;
    go.send(())?;
    let echo = open
        .join()
        .map_err(|_| anyhow::anyhow!("client panicked"))??;
    assert_eq!(
        (echo.backend, echo.peer.ip()),
        (remote, std::net::IpAddr::V4(NODE1)),
        "the open flow survived"
    );
    let after = h.xdp()?;
    assert!(
        after.forward > before.forward && after.reverse > before.reverse,
        "through the adopted XDP link: {before:?} -> {after:?}"
    );
    Ok(())
}

#[test]
fn maglev_gives_each_flow_the_same_backend_on_both_nodes_and_across_restarts_needs_root()
-> Result<()> {
    let mut h = Harness::new(2, 2)?;
    // A second agent, for node 2, on node 2's eth0.
    let cgroup2 = TestCgroup::new(&unique_name("ferrokube-np2-"))?;
    let node2 = unique_name("np-node2-");
    let mut config2 = Config::new(node2.clone(), cgroup2.path());
    config2.sizes = h.config.sizes;
    config2.interface = Some(NodeLab::EXTERNAL_IF.into());
    let pins2 = Pins {
        bpffs: config2.bpffs.clone(),
        node: node2.clone(),
    };
    let mut agent2 = start_in(&h.lab.node2, &config2)?;
    let node1 = h.node.clone();
    let (p1, p2) = (h.lab.pod1_addrs.clone(), h.lab.pod2_addrs.clone());
    let mut yaml = service(
        "maglev",
        "ClusterIP",
        "  externalIPs: [10.252.0.30]\n",
        &[("http", "TCP", 80, 0)],
        &[
            (p1[0], &node1, "ready"),
            (p1[1], &node1, "ready"),
            (p2[0], &node2, "ready"),
            (p2[1], &node2, "ready"),
        ],
    );
    yaml = yaml.replacen(
        "metadata: {name: maglev, namespace: default}",
        "metadata: {name: maglev, namespace: default, annotations: {service.cilium.io/lb-algorithm: maglev}}",
        1,
    );
    h.apply(&yaml)?;
    agent2.apply(Input::Snapshot(source::parse_objects(&yaml, "test")?))?;
    let vip = at(Ipv4Addr::new(10, 252, 0, 30), 80);
    let ports: Vec<u16> = (0..24).map(|i| 41_000 + i * 7).collect();
    let round = |h: &Harness| -> Result<Vec<Ipv4Addr>> {
        ports
            .iter()
            .map(|port| Ok(tcp_from_port(h.outside(), *port, vip)?.backend))
            .collect()
    };
    // Through node 1 (the lab routes 10.252.0.0/24 there).
    let via_node1 = round(&h)?;
    let distinct: std::collections::BTreeSet<_> = via_node1.iter().collect();
    assert!(
        distinct.len() >= 3,
        "flows spread over the backends: {via_node1:?}"
    );
    // Each flow again: same backend (the hash, not chance).
    assert_eq!(round(&h)?, via_node1, "same node, same flows");
    // Through node 2: its own agent, its own backend ids, its own idea of which backends
    // are local; the same table, so the same backend per flow.
    h.lab
        .outside
        .ip(&["route", "replace", "10.252.0.0/24", "via", "10.251.0.3"])?;
    assert_eq!(round(&h)?, via_node1, "node 2 agrees with node 1");
    // Restart node 1's agent (adopting its maps) and go back through it.
    h.lab
        .outside
        .ip(&["route", "replace", "10.252.0.0/24", "via", "10.251.0.2"])?;
    h.agent = None;
    h.agent = Some(start_in(&h.lab.node1, &h.config)?);
    let stats = h.apply(&yaml)?;
    assert_eq!(stats.total(), 0, "the table was adopted: {stats:?}");
    assert_eq!(round(&h)?, via_node1, "after a restart");
    drop(agent2);
    drop(pins2);
    drop(cgroup2);
    Ok(())
}

#[test]
fn events_report_each_new_flow_with_the_program_that_translated_it_needs_root() -> Result<()> {
    use ferrokube_ebpf_common::event::SOURCE_XDP;
    use ferrokube_proxy::events::{EventReader, render};

    let mut h = Harness::with_xdp(1, 1, XdpMode::Native)?;
    let node = h.node.clone();
    let (local, remote) = (h.lab.pod1_addrs[0], h.lab.pod2_addrs[0]);
    let mut yaml = service(
        "evremote",
        "NodePort",
        "",
        &[("http", "TCP", 80, 30191)],
        &[(remote, "other-node", "ready")],
    );
    yaml.push_str("---\n");
    yaml.push_str(&service(
        "evlocal",
        "NodePort",
        "",
        &[("dns", "UDP", 53, 30192)],
        &[(local, &node, "ready")],
    ));
    h.apply(&yaml)?;
    let dir = bpffs::pin_dir(&h.pins.bpffs, &node)?;
    let mut reader = EventReader::open(&dir)?;
    reader.drain();
    let echo = tcp(h.outside(), at(NODE1, 30191))?;
    assert_eq!(echo.backend, remote);
    let echo = udp(h.outside(), at(NODE1, 30192))?;
    assert_eq!(echo.backend, local);
    let mut events = Vec::new();
    ferrokube_testkit::wait_for("both events", Duration::from_secs(5), || {
        events.extend(reader.drain());
        Ok((events.len() >= 2).then_some(()))
    })?;
    let lines: Vec<String> = events.iter().map(render).collect();
    let client = u32::from_ne_bytes(NodeLab::CLIENT.octets());
    let xdp = events
        .iter()
        .find(|e| e.source == SOURCE_XDP)
        .with_context(|| format!("no XDP event: {lines:?}"))?;
    assert_eq!(
        xdp.backend[0],
        u32::from_ne_bytes(remote.octets()),
        "{lines:?}"
    );
    assert_eq!(xdp.client[0], client);
    assert_eq!(u16::from_be(xdp.frontend_port), 30191);
    // The local flow is picked and recorded by XDP too (then DNATed by tc by its entry).
    let local_event = events
        .iter()
        .find(|e| e.backend[0] == u32::from_ne_bytes(local.octets()))
        .with_context(|| format!("no event for the local flow: {lines:?}"))?;
    assert_eq!(local_event.source, SOURCE_XDP, "{lines:?}");
    assert_eq!(u16::from_be(local_event.frontend_port), 30192);
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" xdp ") && l.contains("10.251.0.1:")),
        "{lines:?}"
    );
    assert_eq!(events.len(), 2, "one event per new flow: {lines:?}");
    Ok(())
}

/// A TCP connection from the outside client to `to` is refused.
fn refused(ns: &Netns, to: SocketAddrV4) -> Result<()> {
    let kind = ns.run_in(move || {
        Ok(
            TcpStream::connect_timeout(&to.into(), Duration::from_secs(3))
                .err()
                .map(|e| e.kind()),
        )
    })?;
    ensure!(
        kind == Some(ErrorKind::ConnectionRefused),
        "{to}: {kind:?}, not refused"
    );
    Ok(())
}

/// A TCP connection from the outside client to `to`, established, its request not sent
/// yet (the echo server waits 2 s for it).
fn connect(ns: &Netns, to: SocketAddrV4) -> Result<TcpStream> {
    ns.run_in(move || {
        TcpStream::connect_timeout(&to.into(), Duration::from_secs(3))
            .with_context(|| format!("connecting to {to}"))
    })
}

/// Sends the request on an established connection and reads the reply.
fn finish(mut stream: TcpStream) -> Result<Echo> {
    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
    stream.write_all(b"hello")?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    Echo::parse(&reply)
}

/// Whether `lines` has the log line of a new flow from the outside client to `frontend`,
/// through `program`, to `backend` (`snat`: the SNAT port, 0 for a local backend);
/// `client`: the client's address and port when known (the peer a local backend saw).
fn flow_line(
    lines: &[String],
    program: &str,
    client: Option<SocketAddr>,
    frontend: SocketAddrV4,
    backend: Ipv4Addr,
    snat: u16,
) -> bool {
    let prefix = match client {
        Some(client) => format!("{program}: new flow {client} -> "),
        None => format!("{program}: new flow {}:", NodeLab::CLIENT),
    };
    let suffix = format!(" -> {frontend} -> backend {backend}:{TARGET} snat port {snat}");
    lines
        .iter()
        .any(|l| l.starts_with(&prefix) && l.ends_with(&suffix))
}

/// The log switch is a node setting the agent writes on every start: the tc programs log
/// each new flow (with its SNAT port when remote) and each refusal only while it is on,
/// and a restart that adopts the links turns it on and off, a flow established before
/// each restart going on after it.
#[test]
fn bpf_log_in_tc_follows_the_switch_across_restarts_needs_root() -> Result<()> {
    let mut h = Harness::build(1, 1, Snat::default(), XdpMode::Off, false)?;
    let node = h.node.clone();
    let (local, remote) = (h.lab.pod1_addrs[0], h.lab.pod2_addrs[0]);
    let mut yaml = service(
        "lgremote",
        "NodePort",
        "",
        &[("http", "TCP", 80, 30201)],
        &[(remote, "other-node", "ready")],
    );
    for (name, port, endpoints) in [
        ("lglocal", 30202, vec![(local, node.as_str(), "ready")]),
        ("lgnone", 30203, vec![]),
    ] {
        yaml.push_str("---\n");
        yaml.push_str(&service(
            name,
            "NodePort",
            "",
            &[("http", "TCP", 80, port)],
            &endpoints,
        ));
    }
    h.apply(&yaml)?;
    let (to_remote, to_local, to_none) = (at(NODE1, 30201), at(NODE1, 30202), at(NODE1, 30203));
    let traffic = |h: &Harness| -> Result<(Echo, Echo)> {
        let remote_echo = tcp(h.outside(), to_remote)?;
        let local_echo = tcp(h.outside(), to_local)?;
        refused(h.outside(), to_none)?;
        Ok((remote_echo, local_echo))
    };
    let survived = |echo: Echo| {
        assert_eq!(
            (echo.backend, echo.peer.ip()),
            (remote, std::net::IpAddr::V4(NODE1)),
            "the established flow went on"
        );
    };

    // Off: new flows and a refusal write nothing.
    traffic(&h)?;
    assert_eq!(h.bpf_log_lines()?, Vec::<String>::new());

    // Off -> on, adopting the links loaded with it off.
    let open = connect(h.outside(), to_remote)?;
    assert_eq!(h.restart(true)?, 7, "5 cgroup + 2 tc links adopted");
    survived(finish(open)?);
    let (remote_echo, local_echo) = traffic(&h)?;
    assert_eq!(remote_echo.peer.ip(), NODE1, "SNATed");
    let lines = h.bpf_log_lines()?;
    assert!(
        flow_line(
            &lines,
            "tc",
            None,
            to_remote,
            remote,
            remote_echo.peer.port()
        ),
        "{lines:?}"
    );
    assert!(
        flow_line(&lines, "tc", Some(local_echo.peer), to_local, local, 0),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(
            |l| l.starts_with(&format!("tc: refused {}:", NodeLab::CLIENT))
                && l.contains(&format!(" -> {to_none}: service "))
                && l.ends_with(" has 0 backends, none usable")
        ),
        "{lines:?}"
    );
    assert_eq!(
        lines.len(),
        3,
        "one line each, none for the established flow: {lines:?}"
    );

    // On -> off, adopting the same links again.
    let open = connect(h.outside(), to_remote)?;
    let lines = h.bpf_log_lines()?;
    // (The SNAT port is not known before the reply.)
    assert!(
        lines.len() == 1
            && lines[0].starts_with(&format!("tc: new flow {}:", NodeLab::CLIENT))
            && lines[0].contains(&format!(
                " -> {to_remote} -> backend {remote}:{TARGET} snat port "
            )),
        "{lines:?}"
    );
    assert_eq!(h.restart(false)?, 7);
    survived(finish(open)?);
    traffic(&h)?;
    assert_eq!(h.bpf_log_lines()?, Vec::<String>::new());
    Ok(())
}

/// Likewise for the XDP fast path: its new flows (remote TCP and UDP, and local ones it
/// records for tc) log as `xdp:` while the switch is on, across restarts that adopt its
/// link.
#[test]
fn bpf_log_in_xdp_follows_the_switch_across_restarts_needs_root() -> Result<()> {
    let mut h = Harness::build(1, 1, Snat::default(), XdpMode::Native, false)?;
    let node = h.node.clone();
    let (local, remote) = (h.lab.pod1_addrs[0], h.lab.pod2_addrs[0]);
    let mut yaml = service(
        "lxremote",
        "NodePort",
        "",
        &[("http", "TCP", 80, 30211), ("dns", "UDP", 53, 30212)],
        &[(remote, "other-node", "ready")],
    );
    yaml.push_str("---\n");
    yaml.push_str(&service(
        "lxlocal",
        "NodePort",
        "",
        &[("http", "TCP", 80, 30213)],
        &[(local, &node, "ready")],
    ));
    h.apply(&yaml)?;
    let (to_tcp, to_udp, to_local) = (at(NODE1, 30211), at(NODE1, 30212), at(NODE1, 30213));
    let traffic = |h: &Harness| -> Result<[Echo; 3]> {
        Ok([
            tcp(h.outside(), to_tcp)?,
            udp(h.outside(), to_udp)?,
            tcp(h.outside(), to_local)?,
        ])
    };
    let survived = |echo: Echo| {
        assert_eq!(
            (echo.backend, echo.peer.ip()),
            (remote, std::net::IpAddr::V4(NODE1)),
            "the established flow went on"
        );
    };

    // Off.
    let before = h.xdp()?;
    traffic(&h)?;
    assert_eq!(h.bpf_log_lines()?, Vec::<String>::new());

    // Off -> on.
    let open = connect(h.outside(), to_tcp)?;
    assert_eq!(h.restart(true)?, 8, "5 cgroup + 2 tc + 1 XDP links adopted");
    survived(finish(open)?);
    let [tcp_echo, udp_echo, local_echo] = traffic(&h)?;
    let lines = h.bpf_log_lines()?;
    assert!(
        flow_line(&lines, "xdp", None, to_tcp, remote, tcp_echo.peer.port()),
        "{lines:?}"
    );
    assert!(
        flow_line(&lines, "xdp", None, to_udp, remote, udp_echo.peer.port()),
        "{lines:?}"
    );
    assert!(
        flow_line(&lines, "xdp", Some(local_echo.peer), to_local, local, 0),
        "{lines:?}"
    );
    assert_eq!(lines.len(), 3, "{lines:?}");

    // On -> off.
    let open = connect(h.outside(), to_tcp)?;
    assert_eq!(h.bpf_log_lines()?.len(), 1, "the new flow's line");
    assert_eq!(h.restart(false)?, 8);
    survived(finish(open)?);
    traffic(&h)?;
    assert_eq!(h.bpf_log_lines()?, Vec::<String>::new());
    let after = h.xdp()?;
    assert_eq!(
        after.new_flows,
        before.new_flows + 3 * 2 + 2,
        "the remote new flows were XDP's: {after:?}"
    );
    Ok(())
}
