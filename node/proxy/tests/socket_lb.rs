//! The socket load balancer with real kernel eBPF (needs root, cgroup v2 and bpffs; CI
//! runs as root). Each test builds its own lab (client and pod namespaces joined by a
//! veth), its own cgroup and its own pin directory, attaches the programs to that cgroup
//! only, runs `ferrokube-lbprobe` inside it, and removes everything on drop.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use ferrokube_proxy::sync::{ApplyStats, Input};
use ferrokube_proxy::{Agent, Config, Sizes, bpffs, list, source};
use ferrokube_testkit::netlab::{EchoServers, Lab, TestCgroup, unique_name};

const PORT: u16 = 8080;

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

/// Fields drop in order: agent, pins, cgroup, servers, lab.
struct Harness {
    agent: Option<Agent>,
    /// Held for its `Drop`.
    _pins: Pins,
    cgroup: TestCgroup,
    servers: EchoServers,
    lab: Lab,
    config: Config,
}

impl Harness {
    fn new(backends: u8) -> Result<Self> {
        Self::with_sizes(
            backends,
            Sizes {
                services: 256,
                backends: 256,
                slots: 1024,
                revnat: 1024,
                affinity: 1024,
                ct: 1024,
            },
        )
    }

    fn with_sizes(backends: u8, sizes: Sizes) -> Result<Self> {
        Self::build(backends, sizes, false)
    }

    fn build(backends: u8, sizes: Sizes, bpf_log: bool) -> Result<Self> {
        let lab = Lab::new(backends)?;
        let servers = EchoServers::start(&lab.pods.path(), &lab.pod_addrs, PORT)?;
        let cgroup = TestCgroup::new(&unique_name("ferrokube-test-"))?;
        let node = unique_name("test-node-");
        let mut config = Config::new(node.clone(), cgroup.path());
        config.sizes = sizes;
        config.bpf_log = bpf_log;
        let pins = Pins {
            bpffs: config.bpffs.clone(),
            node,
        };
        let agent = Some(Agent::start(&config)?);
        Ok(Self {
            agent,
            _pins: pins,
            cgroup,
            servers,
            lab,
            config,
        })
    }

    fn agent(&mut self) -> &mut Agent {
        self.agent
            .get_or_insert_with(|| unreachable!("agent stopped"))
    }

    fn apply_yaml(&mut self, yaml: &str) -> Result<ApplyStats> {
        let objects = source::parse_objects(yaml, "test")?;
        Ok(self.agent().apply(Input::Snapshot(objects))?)
    }

    /// Runs the probe in the test cgroup and the client namespace.
    fn probe(&self, mode: &str, addr: &str, count: u32) -> Result<Vec<Outcome>> {
        let out = Command::new(env!("CARGO_BIN_EXE_ferrokube-lbprobe"))
            .arg("--cgroup")
            .arg(self.cgroup.path())
            .arg("--netns")
            .arg(self.lab.client.path())
            .args([mode, addr, &count.to_string()])
            .output()
            .context("running ferrokube-lbprobe")?;
        ensure!(
            out.status.success(),
            "probe failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(Outcome::parse)
            .collect()
    }

    fn pod(&self, i: usize) -> String {
        self.lab.pod_addrs[i].to_string()
    }
}

#[derive(Debug, PartialEq)]
enum Outcome {
    Ok { peer: SocketAddr, reply: String },
    Err(String),
}

impl Outcome {
    fn parse(line: &str) -> Result<Self> {
        let parts: Vec<&str> = line.split_whitespace().collect();
        match parts.as_slice() {
            ["ok", peer, reply] => Ok(Self::Ok {
                peer: peer.parse()?,
                reply: (*reply).to_string(),
            }),
            ["err", kind] => Ok(Self::Err((*kind).to_string())),
            _ => bail!("unexpected probe line {line:?}"),
        }
    }
}

fn yaml(endpoints: &[String]) -> String {
    let list = endpoints
        .iter()
        .map(|ip| format!("  - addresses: [{ip}]\n"))
        .collect::<String>();
    let endpoints = if list.is_empty() {
        "endpoints: []\n".to_string()
    } else {
        format!("endpoints:\n{list}")
    };
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  clusterIP: 10.96.0.10
  ports:
  - {{name: http, port: 80, targetPort: {PORT}}}
  - {{name: dns, port: 53, protocol: UDP, targetPort: {PORT}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: default
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
ports:
- {{name: http, port: {PORT}, protocol: TCP}}
- {{name: dns, port: {PORT}, protocol: UDP}}
{endpoints}---
apiVersion: v1
kind: Service
metadata: {{name: other, namespace: default}}
spec:
  clusterIP: 10.96.0.20
  ports:
  - {{name: http, port: 80, targetPort: {PORT}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: other-1
  namespace: default
  labels: {{kubernetes.io/service-name: other}}
addressType: IPv4
ports:
- {{name: http, port: {PORT}, protocol: TCP}}
endpoints:
- addresses: [10.250.0.10]
"#
    )
}

fn replies(outcomes: &[Outcome], want_peer: &str) -> Result<BTreeSet<String>> {
    let want_peer: SocketAddr = want_peer.parse()?;
    let mut seen = BTreeSet::new();
    for outcome in outcomes {
        match outcome {
            Outcome::Ok { peer, reply } => {
                ensure!(
                    *peer == want_peer,
                    "peer {peer}, want the Service {want_peer}"
                );
                seen.insert(reply.clone());
            }
            Outcome::Err(e) => bail!("request failed: {e} (all: {outcomes:?})"),
        }
    }
    Ok(seen)
}

#[test]
fn tcp_and_udp_reach_every_backend_and_see_the_service_as_peer() -> Result<()> {
    let mut h = Harness::new(3)?;
    let pods: Vec<String> = (0..3).map(|i| h.pod(i)).collect();
    h.apply_yaml(&yaml(&pods))?;
    let all: BTreeSet<String> = pods.iter().cloned().collect();
    let mut events = ferrokube_proxy::events::EventReader::open(&bpffs::pin_dir(
        &h.config.bpffs,
        &h.config.node,
    )?)?;

    // 30 random picks over 3 backends miss one with probability ~1.5e-5.
    let tcp = h.probe("tcp", "10.96.0.10:80", 30)?;
    // One connect4 event per connection.
    let mut seen = Vec::new();
    ferrokube_testkit::wait_for(
        "30 connect4 events",
        std::time::Duration::from_secs(5),
        || {
            seen.extend(events.drain());
            Ok((seen.len() >= 30).then_some(()))
        },
    )?;
    assert_eq!(seen.len(), 30);
    assert!(seen.iter().all(|e| {
        e.source == ferrokube_ebpf_common::event::SOURCE_CONNECT4
            && u16::from_be(e.frontend_port) == 80
            && e.proto == ferrokube_ebpf_common::PROTO_TCP
    }));
    assert_eq!(
        replies(&tcp, "10.96.0.10:80")?,
        all,
        "TCP reaches every backend"
    );
    let udp = h.probe("udp", "10.96.0.10:53", 30)?;
    assert_eq!(
        replies(&udp, "10.96.0.10:53")?,
        all,
        "UDP reaches every backend"
    );
    let connected = h.probe("udp-connected", "10.96.0.10:53", 30)?;
    assert_eq!(replies(&connected, "10.96.0.10:53")?, all);

    // The servers saw the traffic, and the counters say so.
    let hits = h.servers.hits();
    for pod in &pods {
        assert!(
            hits.get(&format!("{pod} tcp")).copied().unwrap_or(0) > 0,
            "{hits:?}"
        );
        assert!(
            hits.get(&format!("{pod} udp")).copied().unwrap_or(0) > 0,
            "{hits:?}"
        );
    }
    let report = list::list(&h.config.bpffs, Some(&h.config.node))?;
    let frontends = &report[0].frontends;
    let web_tcp = frontends
        .iter()
        .find(|f| f.frontend.to_string() == "10.96.0.10:80/TCP")
        .context("web TCP frontend listed")?;
    assert_eq!(web_tcp.counters.translations, 30);
    assert_eq!(web_tcp.backends.len(), 3);
    let backend_total: u64 = web_tcp
        .backends
        .iter()
        .map(|b| b.counters.translations)
        .sum();
    assert_eq!(backend_total, 30);
    let web_udp = frontends
        .iter()
        .find(|f| f.frontend.to_string() == "10.96.0.10:53/UDP")
        .context("web UDP frontend listed")?;
    // Unconnected: one translation per datagram; connected: one per connect.
    assert_eq!(web_udp.counters.translations, 60);

    // A non-Service address is left alone.
    let direct = h.probe("tcp", &format!("{}:{PORT}", pods[1]), 1)?;
    assert_eq!(
        direct,
        [Outcome::Ok {
            peer: format!("{}:{PORT}", pods[1]).parse()?,
            reply: pods[1].clone()
        }]
    );
    Ok(())
}

#[test]
fn no_endpoints_refuses_and_changes_write_only_what_changed() -> Result<()> {
    let mut h = Harness::new(3)?;
    let pods: Vec<String> = (0..3).map(|i| h.pod(i)).collect();
    let first = h.apply_yaml(&yaml(&pods))?;
    // web: 2 frontends x 3 backends; other: 1 frontend, 1 backend (10.250.0.10:8080/TCP,
    // shared with web).
    assert_eq!(first.service_writes, 3);
    assert_eq!(first.slot_writes, 7);
    assert_eq!(first.backend_writes, 6);
    let other_before = h.probe("tcp", "10.96.0.20:80", 3)?;
    assert_eq!(
        replies(&other_before, "10.96.0.20:80")?,
        BTreeSet::from([pods[0].clone()])
    );

    // Remove every endpoint of web.
    let stats = h.apply_yaml(&yaml(&[]))?;
    assert_eq!(
        stats,
        ApplyStats {
            service_writes: 2,
            slot_deletes: 6,
            // 10.250.0.10:8080/TCP stays: `other` still uses it.
            backend_deletes: 5,
            ..Default::default()
        }
    );
    let refused = h.probe("tcp", "10.96.0.10:80", 3)?;
    assert_eq!(
        refused,
        (0..3)
            .map(|_| Outcome::Err("refused".into()))
            .collect::<Vec<_>>()
    );
    let refused = h.probe("udp", "10.96.0.10:53", 1)?;
    assert_eq!(refused, [Outcome::Err("refused".into())]);
    // The other Service is untouched and still works.
    let other = h.probe("tcp", "10.96.0.20:80", 3)?;
    assert_eq!(
        replies(&other, "10.96.0.20:80")?,
        BTreeSet::from([pods[0].clone()])
    );
    let report = list::list(&h.config.bpffs, Some(&h.config.node))?;
    let web = report[0]
        .frontends
        .iter()
        .find(|f| f.frontend.to_string() == "10.96.0.10:80/TCP")
        .context("web listed")?;
    assert!(web.backends.is_empty());
    assert_eq!(web.counters.refused, 3);

    // One endpoint back: one backend, one slot, one count per frontend.
    let stats = h.apply_yaml(&yaml(&pods[2..]))?;
    assert_eq!(
        stats,
        ApplyStats {
            service_writes: 2,
            slot_writes: 2,
            backend_writes: 2,
            ..Default::default()
        }
    );
    let back = h.probe("tcp", "10.96.0.10:80", 5)?;
    assert_eq!(
        replies(&back, "10.96.0.10:80")?,
        BTreeSet::from([pods[2].clone()])
    );
    Ok(())
}

/// Entries in the node's pinned `FK_REVNAT` map.
fn revnat_entries(h: &Harness) -> Result<usize> {
    use aya::maps::{HashMap as BpfHashMap, Map, MapData};
    let dir = bpffs::pin_dir(&h.config.bpffs, &h.config.node)?;
    let data = MapData::from_pin(dir.join(ferrokube_ebpf_common::map_names::REVNAT))?;
    let map: BpfHashMap<
        MapData,
        ferrokube_ebpf_common::RevNatKey,
        ferrokube_ebpf_common::RevNatValue,
    > = BpfHashMap::try_from(Map::LruHashMap(data))?;
    Ok(map.keys().count())
}

#[test]
fn closed_sockets_leave_no_reverse_translation_behind() -> Result<()> {
    let mut h = Harness::new(2)?;
    let pods: Vec<String> = (0..2).map(|i| h.pod(i)).collect();
    h.apply_yaml(&yaml(&pods))?;
    assert_eq!(revnat_entries(&h)?, 0);
    // Each probe connection or connected UDP socket is closed when the probe is done:
    // sock_release takes its entry with it.
    let tcp = h.probe("tcp", "10.96.0.10:80", 20)?;
    assert_eq!(replies(&tcp, "10.96.0.10:80")?.len(), 2);
    let connected = h.probe("udp-connected", "10.96.0.10:53", 10)?;
    assert_eq!(replies(&connected, "10.96.0.10:53")?.len(), 2);
    ferrokube_testkit::wait_for(
        "the closed sockets' entries to go",
        std::time::Duration::from_secs(5),
        || Ok((revnat_entries(&h)? == 0).then_some(())),
    )?;
    // An unconnected UDP socket's entries (one per backend it sent to; the probe uses a
    // socket per datagram) are not known at release: they stay for the LRU.
    let unconnected = h.probe("udp", "10.96.0.10:53", 10)?;
    assert_eq!(replies(&unconnected, "10.96.0.10:53")?.len(), 2);
    let left = revnat_entries(&h)?;
    assert!((1..=10).contains(&left), "{left} entries");
    Ok(())
}

/// A Service with `internalTrafficPolicy: Local` and one endpoint per `(address, node)`.
fn internal_local_yaml(endpoints: &[(String, String)]) -> String {
    let list: String = endpoints
        .iter()
        .map(|(ip, node)| format!("- addresses: [{ip}]\n  nodeName: {node}\n"))
        .collect();
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: local, namespace: default}}
spec:
  clusterIP: 10.96.0.30
  internalTrafficPolicy: Local
  ports:
  - {{name: http, port: 80, targetPort: {PORT}}}
  - {{name: dns, port: 53, protocol: UDP, targetPort: {PORT}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: local-1
  namespace: default
  labels: {{kubernetes.io/service-name: local}}
addressType: IPv4
ports:
- {{name: http, port: {PORT}, protocol: TCP}}
- {{name: dns, port: {PORT}, protocol: UDP}}
endpoints:
{list}"#
    )
}

#[test]
fn internal_traffic_policy_local_reaches_only_this_nodes_endpoints() -> Result<()> {
    let mut h = Harness::new(3)?;
    let pods: Vec<String> = (0..3).map(|i| h.pod(i)).collect();
    let node = h.config.node.clone();
    // Pod 1 is on this node; pods 0 and 2 are on another (all three are reachable in
    // the lab, so only the policy keeps traffic off them).
    let on = |i: usize, n: &str| (pods[i].clone(), n.to_string());
    h.apply_yaml(&internal_local_yaml(&[
        on(0, "elsewhere"),
        on(1, &node),
        on(2, "elsewhere"),
    ]))?;
    let local = BTreeSet::from([pods[1].clone()]);
    let tcp = h.probe("tcp", "10.96.0.30:80", 20)?;
    assert_eq!(replies(&tcp, "10.96.0.30:80")?, local);
    let udp = h.probe("udp", "10.96.0.30:53", 20)?;
    assert_eq!(replies(&udp, "10.96.0.30:53")?, local);

    // Two local endpoints: both are used, the remote one still is not.
    h.apply_yaml(&internal_local_yaml(&[
        on(0, &node),
        on(1, &node),
        on(2, "elsewhere"),
    ]))?;
    let tcp = h.probe("tcp", "10.96.0.30:80", 30)?;
    assert_eq!(
        replies(&tcp, "10.96.0.30:80")?,
        BTreeSet::from([pods[0].clone(), pods[1].clone()])
    );

    // No endpoint on this node: the remote ones are not a fallback, connections are
    // refused at once.
    h.apply_yaml(&internal_local_yaml(&[
        on(0, "elsewhere"),
        on(2, "elsewhere"),
    ]))?;
    let refused = h.probe("tcp", "10.96.0.30:80", 3)?;
    assert_eq!(
        refused,
        (0..3)
            .map(|_| Outcome::Err("refused".into()))
            .collect::<Vec<_>>()
    );
    let hits = h.servers.hits();
    assert!(
        !hits.contains_key(&format!("{} tcp", pods[2])),
        "the remote endpoint got traffic: {hits:?}"
    );
    Ok(())
}

#[test]
fn restart_adopts_pinned_programs_and_maps_without_a_gap() -> Result<()> {
    let mut h = Harness::new(2)?;
    let pods: Vec<String> = (0..2).map(|i| h.pod(i)).collect();
    h.apply_yaml(&yaml(&pods))?;
    assert_eq!(h.agent().dataplane().adopted_links(), 0);

    // The agent exits: pinned links and maps keep serving.
    drop(h.agent.take());
    let during = h.probe("tcp", "10.96.0.10:80", 10)?;
    assert_eq!(
        replies(&during, "10.96.0.10:80")?.len(),
        2,
        "served while the agent is down"
    );

    // It comes back, adopts everything, and the same input writes nothing.
    h.agent = Some(Agent::start(&h.config)?);
    assert_eq!(h.agent().dataplane().adopted_links(), 5);
    let stats = h.apply_yaml(&yaml(&pods))?;
    assert_eq!(stats, ApplyStats::default());
    let after = h.probe("tcp", "10.96.0.10:80", 10)?;
    assert_eq!(replies(&after, "10.96.0.10:80")?.len(), 2);

    // Removing the pins detaches the programs: the ClusterIP is no longer translated
    // (the kernel releases an unpinned link asynchronously: wait, bounded).
    drop(h.agent.take());
    assert!(bpffs::remove(&h.config.bpffs, &h.config.node)?);
    ferrokube_testkit::wait_for(
        "the programs to detach",
        std::time::Duration::from_secs(10),
        || {
            let gone = h.probe("tcp", "10.96.0.10:80", 1)?;
            Ok(matches!(gone.as_slice(), [Outcome::Err(_)]).then_some(()))
        },
    )?;
    assert!(!pin_dir_exists(&h.config.bpffs, &h.config.node));
    Ok(())
}

fn pin_dir_exists(bpffs: &Path, node: &str) -> bool {
    bpffs::pin_dir(bpffs, node)
        .map(|d| d.exists())
        .unwrap_or(false)
}

fn sticky_yaml(ready: &[String], terminating: &[String]) -> String {
    let mut endpoints: String = ready
        .iter()
        .map(|ip| format!("- addresses: [{ip}]\n"))
        .collect();
    for ip in terminating {
        endpoints.push_str(&format!(
            "- addresses: [{ip}]\n  conditions: {{ready: false, serving: true, terminating: true}}\n"
        ));
    }
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: sticky, namespace: default}}
spec:
  clusterIP: 10.96.0.30
  sessionAffinity: ClientIP
  sessionAffinityConfig: {{clientIP: {{timeoutSeconds: 600}}}}
  ports: [{{port: 80, targetPort: {PORT}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: sticky-1
  namespace: default
  labels: {{kubernetes.io/service-name: sticky}}
addressType: IPv4
ports: [{{port: {PORT}, protocol: TCP}}]
endpoints:
{endpoints}"#
    )
}

#[test]
fn client_ip_affinity_sticks_until_the_backend_goes() -> Result<()> {
    let mut h = Harness::new(3)?;
    let pods: Vec<String> = (0..3).map(|i| h.pod(i)).collect();
    h.apply_yaml(&sticky_yaml(&pods, &[]))?;
    let first = replies(&h.probe("tcp", "10.96.0.30:80", 20)?, "10.96.0.30:80")?;
    assert_eq!(first.len(), 1, "one client, one backend: {first:?}");
    // Affinity outlives the probe process: the client is its network namespace.
    let again = replies(&h.probe("tcp", "10.96.0.30:80", 20)?, "10.96.0.30:80")?;
    assert_eq!(again, first);

    // The chosen backend starts terminating: new connections move, and stick again.
    let chosen = first.iter().next().cloned().context("a backend")?;
    let rest: Vec<String> = pods.iter().filter(|p| **p != chosen).cloned().collect();
    h.apply_yaml(&sticky_yaml(&rest, std::slice::from_ref(&chosen)))?;
    let moved = replies(&h.probe("tcp", "10.96.0.30:80", 20)?, "10.96.0.30:80")?;
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert!(
        !moved.contains(&chosen),
        "terminating backend got a new connection"
    );

    // Only terminating endpoints left: they serve (Kubernetes' terminating fallback).
    h.apply_yaml(&sticky_yaml(&[], std::slice::from_ref(&chosen)))?;
    let fallback = replies(&h.probe("tcp", "10.96.0.30:80", 5)?, "10.96.0.30:80")?;
    assert_eq!(fallback, BTreeSet::from([chosen]));
    Ok(())
}

#[test]
fn a_full_map_is_a_clear_error_and_the_dataplane_stays_consistent() -> Result<()> {
    // Room for 4 slots: web's two frontends with 2 backends each fill it.
    let mut h = Harness::with_sizes(
        3,
        Sizes {
            services: 8,
            backends: 16,
            slots: 4,
            revnat: 64,
            affinity: 64,
            ct: 64,
        },
    )?;
    let pods: Vec<String> = (0..3).map(|i| h.pod(i)).collect();
    let yaml_web_only = |pods: &[String]| {
        let full = yaml(pods);
        // Keep the first two documents (the Service `web` and its slice).
        full.split("---\n")
            .take(2)
            .collect::<Vec<_>>()
            .join("---\n")
    };
    h.apply_yaml(&yaml_web_only(&pods[..2]))?;

    // A third backend needs two more slots: the slot map is full.
    let error = h
        .apply_yaml(&yaml_web_only(&pods))
        .expect_err("a full map must fail the apply");
    let message = format!("{error:#}");
    assert!(
        message.contains("FK_SLOTS is full (4 entries)"),
        "{message}"
    );

    // What the kernel holds is still coherent: every connection reaches a live backend.
    let seen = replies(&h.probe("tcp", "10.96.0.10:80", 30)?, "10.96.0.10:80")?;
    assert!(
        !seen.is_empty() && seen.iter().all(|ip| pods.contains(ip)),
        "{seen:?}"
    );
    let listed = list::list(&h.config.bpffs, Some(&h.config.node))?;
    for frontend in &listed[0].frontends {
        assert!(!frontend.backends.is_empty(), "{frontend:?}");
    }

    // An input that fits applies cleanly on top of the rebuilt mirror.
    h.apply_yaml(&yaml_web_only(&pods[1..2]))?;
    let seen = replies(&h.probe("tcp", "10.96.0.10:80", 10)?, "10.96.0.10:80")?;
    assert_eq!(seen, BTreeSet::from([pods[1].clone()]));
    let listed = list::list(&h.config.bpffs, Some(&h.config.node))?;
    for frontend in &listed[0].frontends {
        assert_eq!(frontend.backends.len(), 1, "{frontend:?}");
    }
    Ok(())
}

/// The programs' log records read (and forwarded to tracing) now.
fn bpf_log_lines(h: &mut Harness) -> Result<Vec<String>> {
    Ok(h.agent()
        .dataplane_mut()
        .bpf_logs()
        .context("the log reader opens on every start")?
        .flush())
}

#[test]
fn bpf_log_reports_translations_and_refusals_only_when_on() -> Result<()> {
    assert!(
        !Config::new("node", "/sys/fs/cgroup").bpf_log,
        "off by default"
    );
    let sizes = Sizes {
        services: 256,
        backends: 256,
        slots: 1024,
        revnat: 1024,
        affinity: 1024,
        ct: 1024,
    };

    // Off: a translation and a refusal write no record.
    let mut off = Harness::build(1, sizes, false)?;
    let pods = vec![off.pod(0)];
    off.apply_yaml(&yaml(&pods))?;
    replies(&off.probe("tcp", "10.96.0.10:80", 2)?, "10.96.0.10:80")?;
    off.apply_yaml(&yaml(&[]))?;
    assert_eq!(
        off.probe("tcp", "10.96.0.10:80", 1)?,
        vec![Outcome::Err("refused".into())]
    );
    assert_eq!(bpf_log_lines(&mut off)?, Vec::<String>::new());
    drop(off);

    // On: one record per translation (Service, backend id, backend address) and per
    // refusal, written before connect() returns.
    let mut on = Harness::build(1, sizes, true)?;
    let pods = vec![on.pod(0)];
    on.apply_yaml(&yaml(&pods))?;
    replies(&on.probe("tcp", "10.96.0.10:80", 2)?, "10.96.0.10:80")?;
    let lines = bpf_log_lines(&mut on)?;
    let translated: Vec<&String> = lines
        .iter()
        .filter(|l| {
            l.starts_with("translated: service ") && l.ends_with(&format!("{}:{PORT}", pods[0]))
        })
        .collect();
    assert_eq!(translated.len(), 2, "{lines:?}");
    on.apply_yaml(&yaml(&[]))?;
    assert_eq!(
        on.probe("tcp", "10.96.0.10:80", 1)?,
        vec![Outcome::Err("refused".into())]
    );
    let lines = bpf_log_lines(&mut on)?;
    assert!(
        lines.len() == 1
            && lines[0].starts_with("refused: service ")
            && lines[0].ends_with(" has no backend"),
        "{lines:?}"
    );

    // The switch is a node setting written on every start: a restart that adopts the
    // programs turns it off (they were loaded with it on) and on again.
    let mut h = on;
    h.apply_yaml(&yaml(&pods))?;
    for bpf_log in [false, true] {
        h.agent = None;
        h.config.bpf_log = bpf_log;
        h.agent = Some(Agent::start(&h.config)?);
        assert_eq!(h.agent().dataplane().adopted_links(), 5, "adopted");
        replies(&h.probe("tcp", "10.96.0.10:80", 2)?, "10.96.0.10:80")?;
        let lines = bpf_log_lines(&mut h)?;
        let translated = lines
            .iter()
            .filter(|l| l.starts_with("translated: service "))
            .count();
        assert_eq!(
            (translated, lines.len()),
            if bpf_log { (2, 2) } else { (0, 0) },
            "bpf_log {bpf_log}: {lines:?}"
        );
    }
    Ok(())
}
