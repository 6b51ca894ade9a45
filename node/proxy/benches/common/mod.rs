//! What the dataplane benchmarks share: N Services with 10 backends each as Kubernetes
//! objects and as kube-proxy's iptables layout, and timed `iptables-restore` runs.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ferrokube_proxy::sync::Object;
use ferrokube_testkit::netns::Netns;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// Backends per Service.
pub const BACKENDS: u32 = 10;

/// The ClusterIP of Service `i`.
pub fn vip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + i + 1)
}

/// The ExternalIP of Service `i` in the traffic bench's tc column (10.253.0.0/16, routed
/// to the lab node's external interface from the lab's outside namespace only).
pub fn external_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 253, 0, 0)) + i + 1)
}

/// [`objects`] with an ExternalIP on every Service ([`external_ip`]) and every endpoint
/// on `node` (local backends: the tc path DNATs without source NAT).
pub fn with_external_ips(objects: Vec<Object>, node: &str) -> Vec<Object> {
    let mut service = 0u32;
    objects
        .into_iter()
        .map(|object| match object {
            Object::Service(mut svc) => {
                if let Some(spec) = svc.spec.as_mut() {
                    spec.external_ips = Some(vec![external_ip(service).to_string()]);
                }
                service += 1;
                Object::Service(svc)
            }
            Object::Slice(mut slice) => {
                for endpoint in slice.endpoints.iter_mut().flatten() {
                    endpoint.node_name = Some(node.to_string());
                }
                Object::Slice(slice)
            }
        })
        .collect()
}

/// Backend `j` of Service `i` (never contacted, except for the live Service).
pub fn pod(i: u32, j: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + i * BACKENDS + j + 1)
}

/// The address of backend `j` of Service `i`: the live Service's are real servers.
fn backend(i: u32, j: u32, changed: Option<u32>, live: Live) -> Ipv4Addr {
    match live {
        Some((l, addrs)) if l == i => addrs[j as usize % addrs.len()],
        // The change: one endpoint of one Service replaced by a new address.
        _ if changed == Some(i) && j == 0 => Ipv4Addr::new(10, 127, 255, 1),
        _ => pod(i, j),
    }
}

/// A Service whose backends are real servers: its index and their addresses.
pub type Live<'a> = Option<(u32, &'a [Ipv4Addr])>;

/// N Services with [`BACKENDS`] backends each (port 80 -> 8080).
pub fn objects(n: u32, changed: Option<u32>, live: Live) -> Vec<Object> {
    let mut out = Vec::with_capacity(2 * n as usize);
    for i in 0..n {
        let name = format!("svc-{i}");
        out.push(Object::Service(Box::new(Service {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some(vip(i).to_string()),
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: None,
        })));
        let endpoints = (0..BACKENDS)
            .map(|j| {
                let ip = backend(i, j, changed, live);
                Endpoint {
                    addresses: vec![ip.to_string()],
                    ..Default::default()
                }
            })
            .collect();
        out.push(Object::Slice(Box::new(EndpointSlice {
            metadata: ObjectMeta {
                name: Some(format!("{name}-1")),
                namespace: Some("default".into()),
                labels: Some(BTreeMap::from([(
                    "kubernetes.io/service-name".into(),
                    name,
                )])),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: Some(endpoints),
            ports: Some(vec![EndpointPort {
                name: Some("http".into()),
                port: Some(8080),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
        })));
    }
    out
}

/// kube-proxy's iptables layout (iptables mode): KUBE-SERVICES -> KUBE-SVC-* with
/// `statistic --mode random` -> KUBE-SEP-* (masquerade mark for hairpin, DNAT). With
/// `only = Some(i)` it is the partial restore kube-proxy (>= 1.27, MinimizeIPTablesRestore)
/// sends for a change to Service i: every chain declared, KUBE-SERVICES in full, rules
/// only for the changed Service.
pub fn iptables_rules(n: u32, only: Option<u32>, changed: Option<u32>, live: Live) -> String {
    let mut chains = String::from("*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n");
    let mut rules = String::new();
    if only.is_none() {
        rules.push_str(
            "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
        );
        rules.push_str(
            "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
        );
        rules.push_str("-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n");
    }
    for i in 0..n {
        let svc = format!("KUBE-SVC-{i:016X}");
        let _ = writeln!(chains, ":{svc} - [0:0]");
        let _ = writeln!(
            rules,
            "-A KUBE-SERVICES -d {}/32 -p tcp -m comment --comment \"default/svc-{i}:http cluster IP\" -m tcp --dport 80 -j {svc}",
            vip(i)
        );
        let write_rules = only.is_none_or(|o| o == i);
        for j in 0..BACKENDS {
            let sep = format!("KUBE-SEP-{:016X}", i * BACKENDS + j);
            let _ = writeln!(chains, ":{sep} - [0:0]");
            if !write_rules {
                continue;
            }
            let ip = backend(i, j, changed, live);
            let comment = format!("-m comment --comment \"default/svc-{i}:http\"");
            if j + 1 < BACKENDS {
                let p = 1.0 / f64::from(BACKENDS - j);
                let _ = writeln!(
                    rules,
                    "-A {svc} {comment} -m statistic --mode random --probability {p:.10} -j {sep}"
                );
            } else {
                let _ = writeln!(rules, "-A {svc} {comment} -j {sep}");
            }
            let _ = writeln!(rules, "-A {sep} -s {ip}/32 {comment} -j KUBE-MARK-MASQ");
            let _ = writeln!(
                rules,
                "-A {sep} -p tcp {comment} -m tcp -j DNAT --to-destination {ip}:8080"
            );
        }
    }
    chains + &rules + "COMMIT\n"
}

/// Runs one restore: its time, or why there is none (killed after `limit`, or the tool
/// refused the input: iptables-legacy fails to commit very large tables here).
pub fn restore(
    netns: &Netns,
    tool: &str,
    rules: &str,
    noflush: bool,
    limit: Duration,
) -> Result<Result<Duration, String>> {
    let mut command = Command::new("nsenter");
    command
        .arg(format!("--net={}", netns.path().display()))
        .arg(tool)
        .arg("-w");
    if noflush {
        command.arg("--noflush");
    }
    timed(command, tool, rules, limit)
}

/// Runs `command` with `input` on its stdin: its time, or why there is none (killed after
/// `limit`, or it failed).
pub fn timed(
    mut command: Command,
    tool: &str,
    input: &str,
    limit: Duration,
) -> Result<Result<Duration, String>> {
    let start = Instant::now();
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {tool}"))?;
    // Fed from a thread: the restore tools parse as they read, so a slow one would
    // otherwise hold us in `write_all` past the time limit.
    let mut stdin = child.stdin.take().context("stdin")?;
    let input = input.to_string();
    let feeder = std::thread::spawn(move || {
        // A killed child closes the pipe: that error is expected.
        let _ = stdin.write_all(input.as_bytes());
    });
    loop {
        if let Some(status) = child.try_wait()? {
            let elapsed = start.elapsed();
            let _ = feeder.join();
            let out = child.wait_with_output()?;
            if !status.success() {
                let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
                eprintln!("{tool}: {why}");
                return Ok(Err(format!("failed: {why}")));
            }
            return Ok(Ok(elapsed));
        }
        if start.elapsed() > limit {
            // Our own child, by its handle.
            let _ = child.kill();
            let _ = child.wait();
            let _ = feeder.join();
            return Ok(Err(format!("killed after {}s", limit.as_secs())));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
