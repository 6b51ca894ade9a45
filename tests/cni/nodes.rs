//! Two lab nodes (network namespaces joined by a veth pair on 192.168.77.0/24), pods
//! on each through the plugin, node routes from the route syncer: pod-to-pod TCP within a
//! node and across nodes, and a removed node's route really gone. Then the same across
//! two nodes on different subnets behind a lab router, over the VXLAN overlay.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use ferrokube_cni::routes::{NetlinkRouteTable, NodeRoute, RouteSyncer, SyncReport};
use ferrokube_cni::vxlan::VxlanRouteTable;
use ferrokube_testkit::netns::{Netns, connect};

use crate::harness::{Flavor, Net, result_ip};

/// A listener inside `pod` answering `connections` connections with "pong <message>";
/// it stops after them or after 30 s, whichever comes first.
fn echo_server(pod: &Netns, ip: Ipv4Addr, connections: usize) -> Result<u16> {
    let listener = pod.run_in(move || Ok(TcpListener::bind((ip, 0))?))?;
    listener.set_nonblocking(true)?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut served = 0;
        while served < connections && Instant::now() < deadline {
            let Ok((mut stream, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            served += 1;
            let _ = stream.set_nonblocking(false);
            let _ = stream.set_read_timeout(Some(Duration::from_secs(3)));
            let mut buf = [0u8; 64];
            if let Ok(n) = stream.read(&mut buf) {
                let reply = format!("pong {}", String::from_utf8_lossy(&buf[..n]));
                let _ = stream.write_all(reply.as_bytes());
            }
        }
    });
    Ok(port)
}

/// Connects from inside `pod` to `ip:port` and exchanges one message.
fn talk(pod: &Netns, ip: Ipv4Addr, port: u16) -> Result<String> {
    pod.run_in(move || {
        let mut stream = TcpStream::connect_timeout(&(ip, port).into(), Duration::from_secs(3))
            .with_context(|| format!("connecting to {ip}:{port}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(3)))?;
        stream.write_all(b"ping")?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply)?;
        Ok(reply)
    })
}

fn syncer(node: &Netns, name: &str) -> RouteSyncer<NetlinkRouteTable> {
    RouteSyncer::new(NetlinkRouteTable::new(Some(node.path())), name)
}

/// Feeds `snapshots` through the syncer's stream interface; returns each report.
fn feed(
    syncer: &RouteSyncer<NetlinkRouteTable>,
    snapshots: Vec<Vec<NodeRoute>>,
) -> Result<Vec<SyncReport>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut reports = Vec::new();
    let mut failures = Vec::new();
    runtime.block_on(syncer.run(futures::stream::iter(snapshots), |r| match r {
        Ok(report) => reports.push(report.clone()),
        Err(e) => failures.push(e.to_string()),
    }));
    ensure!(failures.is_empty(), "sync failed: {failures:?}");
    Ok(reports)
}

#[test]
fn pods_talk_within_and_across_nodes() -> Result<()> {
    let a = Net::new(Flavor::Ours, "nodea", "10.77.1.0/24")?;
    let b = Net::new(Flavor::Ours, "nodeb", "10.77.2.0/24")?;
    connect(&a.node, "ethn", &b.node, "ethn")?;
    a.node
        .ip(&["addr", "add", "192.168.77.1/24", "dev", "ethn"])?;
    b.node
        .ip(&["addr", "add", "192.168.77.2/24", "dev", "ethn"])?;

    let (a1, a2, b1) = (Netns::new("a1")?, Netns::new("a2")?, Netns::new("b1")?);
    let ip_a1 = result_ip(&a.add("a1", &a1, "1.1.0")?)?;
    let ip_a2 = result_ip(&a.add("a2", &a2, "1.1.0")?)?;
    let ip_b1 = result_ip(&b.add("b1", &b1, "1.1.0")?)?;

    let port_a1 = echo_server(&a1, ip_a1, 2)?;
    let port_a2 = echo_server(&a2, ip_a2, 1)?;
    let port_b1 = echo_server(&b1, ip_b1, 1)?;
    ensure!(
        talk(&a2, ip_a1, port_a1)? == "pong ping",
        "same-node TCP a2 -> a1"
    );
    ensure!(
        talk(&a1, ip_a2, port_a2)? == "pong ping",
        "same-node TCP a1 -> a2"
    );
    // Before routes: node A has no way to 10.77.2.0/24.
    ensure!(
        talk(&a1, ip_b1, port_b1).is_err(),
        "cross-node TCP worked without routes"
    );

    let nodes = vec![
        NodeRoute {
            node: "a".into(),
            pod_cidr: "10.77.1.0/24".parse()?,
            node_ip: Ipv4Addr::new(192, 168, 77, 1),
        },
        NodeRoute {
            node: "b".into(),
            pod_cidr: "10.77.2.0/24".parse()?,
            node_ip: Ipv4Addr::new(192, 168, 77, 2),
        },
    ];
    let (sync_a, sync_b) = (syncer(&a.node, "a"), syncer(&b.node, "b"));
    let reports = feed(&sync_a, vec![nodes.clone(), nodes.clone()])?;
    ensure!(
        reports[0].replaced.len() == 1 && reports[1] == SyncReport::default(),
        "{reports:?}"
    );
    feed(&sync_b, vec![nodes.clone()])?;
    let routes = a.node.ip(&["-4", "route", "show", "proto", "201"])?;
    ensure!(
        routes.contains("10.77.2.0/24 via 192.168.77.2"),
        "node A routes: {routes}"
    );

    ensure!(talk(&a1, ip_b1, port_b1)? == "pong ping", "A -> B TCP");
    ensure!(talk(&b1, ip_a1, port_a1)? == "pong ping", "B -> A TCP");

    // Node B leaves: A's route to it goes, and so does the path.
    let reports = feed(&sync_a, vec![vec![nodes[0].clone()]])?;
    ensure!(reports[0].removed.len() == 1, "{reports:?}");
    let routes = a.node.ip(&["-4", "route", "show", "proto", "201"])?;
    ensure!(routes.trim().is_empty(), "stale route left: {routes}");
    ensure!(
        talk(&a1, ip_b1, port_b1).is_err(),
        "cross-node TCP without a route"
    );
    Ok(())
}

/// Two nodes on different subnets joined by a lab router namespace: host-gw cannot
/// work (the other node is not on-link), the VXLAN overlay can.
#[test]
fn pods_talk_across_routed_nodes_over_vxlan() -> Result<()> {
    let a = Net::new(Flavor::Ours, "vxa", "10.78.1.0/24")?;
    let b = Net::new(Flavor::Ours, "vxb", "10.78.2.0/24")?;
    let router = Netns::new("vxr")?;
    router.enable_forwarding()?;
    connect(&a.node, "ethr", &router, "ra")?;
    connect(&b.node, "ethr", &router, "rb")?;
    router.ip(&["addr", "add", "192.168.10.1/24", "dev", "ra"])?;
    router.ip(&["addr", "add", "192.168.20.1/24", "dev", "rb"])?;
    a.node
        .ip(&["addr", "add", "192.168.10.2/24", "dev", "ethr"])?;
    b.node
        .ip(&["addr", "add", "192.168.20.2/24", "dev", "ethr"])?;
    // Default routes only towards the lab router, inside the lab.
    a.node
        .ip(&["route", "add", "default", "via", "192.168.10.1"])?;
    b.node
        .ip(&["route", "add", "default", "via", "192.168.20.1"])?;

    let (a1, b1) = (Netns::new("va1")?, Netns::new("vb1")?);
    let ip_a1 = result_ip(&a.add("a1", &a1, "1.1.0")?)?;
    let ip_b1 = result_ip(&b.add("b1", &b1, "1.1.0")?)?;
    let port_a1 = echo_server(&a1, ip_a1, 1)?;
    let port_b1 = echo_server(&b1, ip_b1, 1)?;

    let nodes = vec![
        NodeRoute {
            node: "a".into(),
            pod_cidr: "10.78.1.0/24".parse()?,
            node_ip: Ipv4Addr::new(192, 168, 10, 2),
        },
        NodeRoute {
            node: "b".into(),
            pod_cidr: "10.78.2.0/24".parse()?,
            node_ip: Ipv4Addr::new(192, 168, 20, 2),
        },
    ];
    // host-gw is refused by the kernel: 192.168.20.2 is no neighbour of node A.
    ensure!(
        syncer(&a.node, "a").sync(&nodes).is_err(),
        "host-gw route to an off-link node was accepted"
    );
    let vx_a = RouteSyncer::new(
        VxlanRouteTable::new(Some(a.node.path()), Ipv4Addr::new(192, 168, 10, 2)),
        "a",
    );
    let vx_b = RouteSyncer::new(
        VxlanRouteTable::new(Some(b.node.path()), Ipv4Addr::new(192, 168, 20, 2)),
        "b",
    );
    let report = vx_a.sync(&nodes)?;
    ensure!(report.replaced.len() == 1, "{report:?}");
    ensure!(
        vx_a.sync(&nodes)? == SyncReport::default(),
        "second sync changed something"
    );
    vx_b.sync(&nodes)?;
    let routes = a.node.ip(&["-4", "route", "show", "proto", "201"])?;
    ensure!(
        routes.contains("10.78.2.0/24 via 10.78.2.1 dev fk.vxlan"),
        "node A routes: {routes}"
    );

    ensure!(
        talk(&a1, ip_b1, port_b1)? == "pong ping",
        "A -> B over VXLAN"
    );
    ensure!(
        talk(&b1, ip_a1, port_a1)? == "pong ping",
        "B -> A over VXLAN"
    );

    // B leaves: route, neighbour and FDB entries go, and so does the path.
    let report = vx_a.sync(&nodes[..1])?;
    ensure!(report.removed.len() == 1, "{report:?}");
    let routes = a.node.ip(&["-4", "route", "show", "proto", "201"])?;
    ensure!(routes.trim().is_empty(), "stale route: {routes}");
    let fdb = a.node.ip(&["-o", "link", "show", "fk.vxlan"])?;
    ensure!(!fdb.is_empty(), "device gone with the last route");
    let neighbours = a.node.ip(&["neigh", "show", "dev", "fk.vxlan"])?;
    ensure!(
        neighbours.trim().is_empty(),
        "stale neighbour: {neighbours}"
    );
    let entries = Command::new("bridge")
        .args(["-n", a.node.name(), "fdb", "show", "dev", "fk.vxlan"])
        .output()?;
    let entries = String::from_utf8_lossy(&entries.stdout);
    ensure!(
        !entries.contains("192.168.20.2"),
        "stale FDB entry: {entries}"
    );
    ensure!(
        talk(&a1, ip_b1, port_b1).is_err(),
        "A -> B without the overlay route"
    );
    Ok(())
}
