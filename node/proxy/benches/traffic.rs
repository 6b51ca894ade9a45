//! `cargo xtask bench dataplane`, traffic part (a and b of issue 4's benchmark): the
//! short-connection rate (connect, one request/response, close) and the request rate on
//! established connections, with N Services programmed (10 backends each), in five
//! columns. The Service under test is number N/2 (kube-proxy's iptables chain is walked
//! linearly, so the middle is the average case); its 10 backends are real servers.
//!
//! Two kinds of lab, both with no route out:
//! - a client namespace and a pods namespace joined by a veth (a client on the node
//!   talking to a ClusterIP), a fresh one per column and size, for the socket load
//!   balancer (the client runs in the agent's cgroup), kube-proxy's iptables layout
//!   (iptables-nft, Debian's default backend), kube-proxy's nftables layout (verdict maps;
//!   when `nft` is installed) and the direct connection to the backends (the limit);
//! - a [`NodeLab`] (an outside client behind a bridge, the node with the tc programs on
//!   its external interface `eth0`, the pods behind the node) for ferrokube's tc path
//!   with no socket load balancing: the client is outside the node (in no load-balanced
//!   cgroup) and reaches Service i through its ExternalIP 10.253.x.y:80 (every Service
//!   has one; NodePorts cannot number 30,000), which the tc ingress program DNATs to a
//!   local pod, with reverse NAT on the way out. Its baseline is "direct-out": the same
//!   client to the pods, routed through the same node, so the ratio isolates the tc
//!   programs' cost from the extra hop.
//!
//! The client is `ferrokube-lbprobe` (a separate process, in the cgroup for the socket LB
//! column), several threads. Needs root.
//!
//! Arguments: `--out FILE` (JSON, merged into the programming results under "traffic"),
//! `--sizes 1,1000,10000,30000`, `--seconds S` per point, `--threads T` client threads,
//! `--iptables-timeout S` (a restore that takes longer is killed and the column says so),
//! `--sock-only` (only the socket LB and its baselines: direct, and direct from the
//! load-balanced cgroup, "direct-cg", where every `connect` runs the hooks and none
//! matches).

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::{BACKENDS, external_ip, iptables_rules, objects, restore, vip, with_external_ips};
use ferrokube_proxy::sync::Input;
use ferrokube_proxy::{Agent, Config, Sizes, bpffs};
use ferrokube_testkit::netlab::{Lab, NodeLab, TestCgroup, unique_name};
use ferrokube_testkit::netns::{Netns, enter_current_thread};

const PORT: u16 = 8080;

/// Answers every request on a connection until the client closes it: threads blocked
/// in `accept` on one listener (all backend addresses) in the pods namespace (blocking, so
/// idle server threads cost no CPU; drop wakes them with one connection each).
struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    netns: PathBuf,
}

impl Servers {
    fn start(netns: &Path, threads: usize) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel::<Result<TcpListener>>();
        let path = netns.to_path_buf();
        std::thread::spawn(move || {
            let listener = enter_current_thread(&path)
                .and_then(|()| Ok(TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], PORT)))?));
            let _ = tx.send(listener);
        })
        .join()
        .map_err(|_| anyhow::anyhow!("server setup panicked"))?;
        let listener = Arc::new(rx.recv()??);
        let threads = (0..threads)
            .map(|_| {
                let (listener, stop) = (listener.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let Ok((mut stream, _)) = listener.accept() else {
                            continue;
                        };
                        let _ = stream.set_nodelay(true);
                        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
                        let mut buf = [0u8; 64];
                        while !stop.load(Ordering::Relaxed) {
                            match stream.read(&mut buf) {
                                Ok(0) => break,
                                Ok(_) => {
                                    if stream.write_all(b"pong\n").is_err() {
                                        break;
                                    }
                                }
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock
                                            | std::io::ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => break,
                            }
                        }
                    }
                })
            })
            .collect();
        Ok(Self {
            stop,
            threads,
            netns: netns.to_path_buf(),
        })
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // One connection per thread blocked in accept, from inside the namespace.
        let (netns, n) = (self.netns.clone(), self.threads.len());
        let _ = std::thread::spawn(move || {
            if enter_current_thread(&netns).is_ok() {
                let to = SocketAddr::from(([127, 0, 0, 1], PORT));
                let held: Vec<_> = (0..n)
                    .filter_map(|_| {
                        std::net::TcpStream::connect_timeout(&to, Duration::from_secs(1)).ok()
                    })
                    .collect();
                drop(held);
            }
        })
        .join();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A client/pods lab with the servers running: the socket LB, iptables, nftables and
/// direct columns each get a fresh one per size, so no column inherits another's
/// TIME_WAIT sockets or conntrack entries (reused client ports against a previous
/// column's conntrack entries to the same backends made iptables' DNAT collide and
/// retransmit SYNs: ~330 connections/s instead of thousands).
struct ClientLab {
    _servers: Servers,
    lab: Lab,
}

impl ClientLab {
    fn new() -> Result<Self> {
        let lab = Lab::new(BACKENDS as u8)?;
        // kube-proxy's NAT happens after the route lookup for the Service address, so
        // the client needs a route for the Service range; it points into the lab's own
        // veth (the socket load balancer rewrites before any lookup and needs none).
        lab.client
            .ip(&["route", "add", "10.96.0.0/12", "dev", "v0"])
            .context("routing the Service range inside the lab")?;
        client_sysctls(&lab.client)?;
        let servers = Servers::start(&lab.pods.path(), 16)?;
        Ok(Self {
            _servers: servers,
            lab,
        })
    }

    fn client(&self) -> &Netns {
        &self.lab.client
    }
}

/// A client namespace that opens thousands of connections per second to one address:
/// the whole port range, and TIME_WAIT ports reused for new connections. Without it,
/// connect() runs out of the ~14k even ports it prefers after ~2 s at 7k/s to one
/// destination and every column through a single Service address flattens at ~7.1k
/// connections/s (the socket LB, whose sockets see 10 backend addresses, did not).
fn client_sysctls(ns: &Netns) -> Result<()> {
    ns.run_in(|| {
        for (knob, value) in [
            ("/proc/sys/net/ipv4/ip_local_port_range", "1024 65535"),
            ("/proc/sys/net/ipv4/tcp_tw_reuse", "1"),
        ] {
            std::fs::write(knob, value).with_context(|| format!("writing {knob}"))?;
        }
        Ok(())
    })
}

struct Pins(Config);
impl Drop for Pins {
    fn drop(&mut self) {
        let _ = bpffs::remove(&self.0.bpffs, &self.0.node);
    }
}

/// Requests per second from the client process: `(rate, errors)`.
fn measure(
    netns: &Netns,
    cgroup: Option<&TestCgroup>,
    mode: &str,
    addrs: &str,
    seconds: u64,
    threads: usize,
) -> Result<(f64, u64)> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ferrokube-lbprobe"));
    if let Some(cgroup) = cgroup {
        command.arg("--cgroup").arg(cgroup.path());
    }
    let out = command
        .arg("--netns")
        .arg(netns.path())
        .args([mode, addrs, &seconds.to_string(), &threads.to_string()])
        .output()
        .context("running ferrokube-lbprobe")?;
    if !out.status.success() {
        bail!("probe failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let words: Vec<&str> = text.split_whitespace().collect();
    let ["ops", ops, "errors", errors] = words.as_slice() else {
        bail!("unexpected probe output {text:?}");
    };
    Ok((ops.parse::<f64>()? / seconds as f64, errors.parse()?))
}

/// kube-proxy's nftables layout (nftables mode, 1.31+): table `ip kube-proxy`, base chains
/// `nat-prerouting` and `nat-output` (dstnat priority; -100 for output, which this nft
/// accepts only as a number) jumping to `services`, whose verdict map `service-ips` sends
/// (address . protocol . port) to a per-Service chain; that chain picks an endpoint chain
/// with `numgen random mod N vmap`, and each endpoint chain marks hairpin traffic for
/// masquerade and DNATs. Chain names are shortened (kube-proxy adds a hash and the
/// namespace/name/protocol/port); the rule shapes and lookups are the same.
fn nft_rules(n: u32, live: u32, addrs: &[Ipv4Addr]) -> String {
    use std::fmt::Write as _;
    let mut chains = String::new();
    let mut elements = Vec::with_capacity(n as usize);
    for i in 0..n {
        let svc = format!("service-{i:08x}");
        elements.push(format!("{} . tcp . 80 : goto {svc}", vip(i)));
        let endpoints: Vec<String> = (0..BACKENDS)
            .map(|j| format!("{j} : goto endpoint-{i:08x}-{j}"))
            .collect();
        let _ = writeln!(
            chains,
            "chain {svc} {{\n numgen random mod {BACKENDS} vmap {{ {} }}\n}}",
            endpoints.join(", ")
        );
        for j in 0..BACKENDS {
            let ip = if i == live {
                addrs[j as usize % addrs.len()]
            } else {
                common::pod(i, j)
            };
            let _ = writeln!(
                chains,
                "chain endpoint-{i:08x}-{j} {{\n ip saddr {ip} jump mark-for-masquerade\n meta l4proto tcp dnat to {ip}:{PORT}\n}}"
            );
        }
    }
    format!(
        "table ip kube-proxy {{\n\
         map service-ips {{\n type ipv4_addr . inet_proto . inet_service : verdict\n elements = {{ {} }}\n}}\n\
         chain mark-for-masquerade {{\n meta mark set meta mark or 0x4000\n}}\n\
         chain services {{\n ip daddr . meta l4proto . th dport vmap @service-ips\n}}\n\
         chain nat-prerouting {{\n type nat hook prerouting priority dstnat; policy accept;\n jump services\n}}\n\
         chain nat-output {{\n type nat hook output priority -100; policy accept;\n jump services\n}}\n\
         {chains}}}\n",
        elements.join(",\n ")
    )
}

/// Loads the nftables ruleset in `netns` with `nft -f -`: how long it took, or why there
/// is no figure (killed after `limit`, or refused).
fn nft(netns: &Netns, rules: &str, limit: Duration) -> Result<Result<Duration, String>> {
    let mut command = Command::new("nsenter");
    command
        .arg(format!("--net={}", netns.path().display()))
        .args(["nft", "-f", "-"]);
    common::timed(command, "nft", rules, limit)
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// One row's figures for one way of reaching the Service.
#[derive(Default, Clone)]
struct Rates {
    short: Option<f64>,
    rr: Option<f64>,
    /// Why there are no figures (the rules did not load in time, or at all).
    why: Option<String>,
}

impl Rates {
    fn not_run() -> Self {
        Self {
            why: Some("not run (--sock-only)".into()),
            ..Self::default()
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "short_connections_per_s": self.short,
            "requests_per_s": self.rr,
            "why_not_measured": self.why,
        })
    }
}

fn rates(
    netns: &Netns,
    cgroup: Option<&TestCgroup>,
    addrs: &str,
    seconds: u64,
    threads: usize,
) -> Result<Rates> {
    let (short, e1) = measure(netns, cgroup, "bench-short", addrs, seconds, threads)?;
    let (rr, e2) = measure(netns, cgroup, "bench-rr", addrs, seconds, threads)?;
    if e1 + e2 > 0 {
        eprintln!("  {addrs}: {e1} + {e2} failed requests");
    }
    Ok(Rates {
        short: Some(short),
        rr: Some(rr),
        why: None,
    })
}

fn fmt(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.0}"))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "n/a".into(),
    }
}

/// One size's figures: the five columns plus the tc column's own baseline.
struct Row {
    n: u32,
    ours: Rates,
    tc: Rates,
    iptables: Rates,
    nftables: Rates,
    direct: Rates,
    /// The direct connection from a client in the load-balanced cgroup (every `connect`
    /// runs the hooks, none matches): the socket LB's fair baseline.
    direct_cg: Rates,
    direct_outside: Rates,
}

fn cell(r: &Rates, short: bool) -> String {
    match (if short { r.short } else { r.rr }, &r.why) {
        (Some(v), _) => format!("{v:.0}"),
        (None, Some(why)) if why.starts_with("killed") => "timeout".into(),
        (None, Some(why)) if why.starts_with("not installed") => "no nft".into(),
        (None, Some(why)) if why.starts_with("not run") => "-".into(),
        (None, Some(_)) => "failed".into(),
        (None, None) => "n/a".into(),
    }
}

fn print_rates(rows: &[Row], short: bool) {
    let pick = |r: &Rates| if short { r.short } else { r.rr };
    println!(
        "{:>6} | {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} | {:>8} {:>8} {:>8} {:>8} {:>11}",
        "N",
        "socket LB",
        "tc path",
        "iptables",
        "nftables",
        "direct",
        "direct-cg",
        "direct-out",
        "sock/ipt",
        "sock/dir",
        "sock/dcg",
        "nft/ipt",
        "tc/dir-out"
    );
    for row in rows {
        println!(
            "{:>6} | {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} | {:>8} {:>8} {:>8} {:>8} {:>11}",
            row.n,
            cell(&row.ours, short),
            cell(&row.tc, short),
            cell(&row.iptables, short),
            cell(&row.nftables, short),
            cell(&row.direct, short),
            cell(&row.direct_cg, short),
            cell(&row.direct_outside, short),
            ratio(pick(&row.ours), pick(&row.iptables)),
            ratio(pick(&row.ours), pick(&row.direct)),
            ratio(pick(&row.ours), pick(&row.direct_cg)),
            ratio(pick(&row.nftables), pick(&row.iptables)),
            ratio(pick(&row.tc), pick(&row.direct_outside)),
        );
    }
}

/// The programming table, from the "programming" rows `bench dataplane` wrote first (if
/// it ran) and the nftables / tc load times measured here.
fn print_programming(doc: &serde_json::Value, traffic: &[serde_json::Value]) {
    let ms = |v: &serde_json::Value| match v {
        serde_json::Value::Number(n) => format!("{:.1}", n.as_f64().unwrap_or(f64::NAN)),
        serde_json::Value::String(s) if s.starts_with("killed") => "timeout".into(),
        serde_json::Value::String(s) if s.starts_with("not run") => "n/a".into(),
        serde_json::Value::String(_) => "failed".into(),
        _ => "-".into(),
    };
    println!(
        "{:>6} | {:>10} {:>10} | {:>12} {:>12} | {:>12} {:>12} | {:>10} {:>10}",
        "N",
        "ours ms",
        "ours chg",
        "ipt-nft ms",
        "ipt-nft chg",
        "ipt-leg ms",
        "ipt-leg chg",
        "nft -f ms",
        "ours tc ms"
    );
    let empty = Vec::new();
    let programming = doc["programming"].as_array().unwrap_or(&empty);
    for t in traffic {
        let n = &t["services"];
        let p = programming
            .iter()
            .find(|p| &p["services"] == n)
            .cloned()
            .unwrap_or_default();
        println!(
            "{:>6} | {:>10} {:>10} | {:>12} {:>12} | {:>12} {:>12} | {:>10} {:>10}",
            n.to_string(),
            ms(&p["ferrokube_program_ms"]),
            ms(&p["ferrokube_one_change_ms"]),
            ms(&p["iptables_nft_restore_ms"]),
            ms(&p["iptables_nft_one_change_ms"]),
            ms(&p["iptables_legacy_restore_ms"]),
            ms(&p["iptables_legacy_one_change_ms"]),
            ms(&t["nftables_load_ms"]),
            ms(&t["ferrokube_tc_program_ms"]),
        );
    }
}

fn main() -> Result<()> {
    let mut out =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/bench/dataplane.json");
    let mut sizes = vec![1u32, 1000, 10_000, 30_000];
    let (mut seconds, mut threads) = (3u64, 4usize);
    let mut limit = Duration::from_secs(180);
    let mut sock_only = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--out" => out = args.next().context("--out FILE")?.into(),
            "--sizes" => {
                sizes = args
                    .next()
                    .context("--sizes N,N")?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            "--sock-only" => sock_only = true,
            "--seconds" => seconds = args.next().context("--seconds S")?.parse()?,
            "--threads" => threads = args.next().context("--threads T")?.parse()?,
            "--iptables-timeout" => {
                limit = Duration::from_secs(args.next().context("--iptables-timeout S")?.parse()?)
            }
            _ => {} // cargo bench passes --bench
        }
    }
    // The on-node labs: socket LB, iptables, nftables, direct (a fresh lab each).
    let cgroup = TestCgroup::new(&unique_name("ferrokube-traffic-"))?;
    // Every client lab gives its pods the same addresses.
    let pods: Vec<Ipv4Addr> = ClientLab::new()?.lab.pod_addrs.clone();
    let direct_addrs: Vec<String> = pods.iter().map(|p| format!("{p}:{PORT}")).collect();
    let direct = {
        let lab = ClientLab::new()?;
        rates(
            lab.client(),
            None,
            &direct_addrs.join(","),
            seconds,
            threads,
        )?
    };

    // The node lab: the tc path from outside, and its direct baseline (outside -> node ->
    // pods, routed, no NAT).
    let node_lab = NodeLab::new(BACKENDS as u8, 0)?;
    for net in ["10.253.0.0/16", "10.244.0.0/16"] {
        node_lab
            .outside
            .ip(&["route", "add", net, "via", "10.251.0.2"])
            .context("routing ExternalIPs and pods to the lab node")?;
    }
    client_sysctls(&node_lab.outside)?;
    let _node_servers = Servers::start(&node_lab.pods1.path(), 16)?;
    let node_pods: Vec<Ipv4Addr> = node_lab.pod1_addrs.clone();
    let outside_addrs: Vec<String> = node_pods.iter().map(|p| format!("{p}:{PORT}")).collect();
    let direct_outside = rates(
        &node_lab.outside,
        None,
        &outside_addrs.join(","),
        seconds,
        threads,
    )?;

    let mut config = Config::new(unique_name("traffic-node-"), cgroup.path());
    config.sizes = Sizes {
        services: 40_000,
        backends: 320_000,
        slots: 320_000,
        revnat: 65_536,
        affinity: 1024,
        ct: 1024,
    };
    let pins = Pins(config.clone());
    let mut agent = Agent::start(&pins.0)?;

    let tc_cgroup = TestCgroup::new(&unique_name("ferrokube-traffic-tc-"))?;
    let mut tc_config = Config::new(unique_name("traffic-tc-node-"), tc_cgroup.path());
    tc_config.sizes = Sizes {
        // A ClusterIP and an ExternalIP frontend per Service.
        services: 80_000,
        backends: 320_000,
        slots: 640_000,
        revnat: 1024,
        affinity: 1024,
        ct: 262_144,
    };
    tc_config.interface = Some(NodeLab::EXTERNAL_IF.into());
    let tc_pins = Pins(tc_config.clone());
    let mut tc_agent = {
        let config = tc_config.clone();
        node_lab.node1.run_in(move || Ok(Agent::start(&config)?))?
    };

    let use_nft = have("nft");
    let mut rows = Vec::new();
    let mut json_rows = Vec::new();
    println!(
        "client: {threads} threads, {seconds} s per point; direct: {} conn/s, {} req/s; direct from outside: {} conn/s, {} req/s",
        fmt(direct.short),
        fmt(direct.rr),
        fmt(direct_outside.short),
        fmt(direct_outside.rr)
    );
    for n in sizes {
        let live = n / 2;
        let target = format!("{}:80", vip(live));
        eprintln!("N = {n}: socket LB");
        agent.apply(Input::Snapshot(objects(n, None, Some((live, &pods)))))?;
        let ours = {
            let lab = ClientLab::new()?;
            rates(lab.client(), Some(&cgroup), &target, seconds, threads)?
        };
        // The fair baseline: the same client, in the same cgroup with the same N Services
        // programmed, straight to the backends (the hooks run and match nothing).
        eprintln!("N = {n}: direct from the load-balanced cgroup");
        let direct_cg = {
            let lab = ClientLab::new()?;
            rates(
                lab.client(),
                Some(&cgroup),
                &direct_addrs.join(","),
                seconds,
                threads,
            )?
        };
        // Empty the maps so the next modes see no socket load balancing.
        agent.apply(Input::Snapshot(Vec::new()))?;
        if sock_only {
            let row = Row {
                n,
                ours,
                tc: Rates::not_run(),
                iptables: Rates::not_run(),
                nftables: Rates::not_run(),
                direct: direct.clone(),
                direct_cg,
                direct_outside: direct_outside.clone(),
            };
            print_rates(std::slice::from_ref(&row), true);
            rows.push(row);
            continue;
        }

        eprintln!("N = {n}: tc path");
        let tc_objects =
            with_external_ips(objects(n, None, Some((live, &node_pods))), &tc_config.node);
        let start = Instant::now();
        tc_agent.apply(Input::Snapshot(tc_objects))?;
        let tc_program_ms = start.elapsed().as_secs_f64() * 1e3;
        let tc_target = format!("{}:80", external_ip(live));
        let tc = rates(&node_lab.outside, None, &tc_target, seconds, threads)?;
        tc_agent.apply(Input::Snapshot(Vec::new()))?;

        eprintln!("N = {n}: nftables");
        let mut nftables = Rates::default();
        let mut nft_load = serde_json::Value::Null;
        if use_nft {
            // The table goes with the lab's namespace.
            let lab = ClientLab::new()?;
            match nft(lab.client(), &nft_rules(n, live, &pods), limit)? {
                Ok(d) => {
                    nft_load = serde_json::json!(d.as_secs_f64() * 1e3);
                    nftables = rates(lab.client(), None, &target, seconds, threads)?;
                }
                Err(why) => {
                    eprintln!("  nftables at {n}: {why}");
                    nft_load = serde_json::json!(why);
                    nftables.why = Some(why);
                }
            }
        } else {
            nftables.why = Some("not installed (cargo xtask setup installs nftables)".into());
        }

        eprintln!("N = {n}: iptables");
        let mut iptables = Rates::default();
        // The rules go with the lab's namespace.
        let lab = ClientLab::new()?;
        let loaded = restore(
            lab.client(),
            "iptables-nft-restore",
            &iptables_rules(n, None, None, Some((live, &pods))),
            false,
            limit,
        )?;
        let load_ms = match &loaded {
            Ok(d) => {
                iptables = rates(lab.client(), None, &target, seconds, threads)?;
                serde_json::json!(d.as_secs_f64() * 1e3)
            }
            Err(why) => {
                eprintln!("  iptables at {n}: {why}");
                iptables.why = Some(why.clone());
                serde_json::json!(why)
            }
        };
        drop(lab);
        let row = Row {
            n,
            ours,
            tc,
            iptables,
            nftables,
            direct: direct.clone(),
            direct_cg,
            direct_outside: direct_outside.clone(),
        };
        print_rates(std::slice::from_ref(&row), true);
        json_rows.push(serde_json::json!({
            "services": n,
            "ferrokube_socket_lb": row.ours.json(),
            "ferrokube_tc_path": row.tc.json(),
            "ferrokube_tc_program_ms": tc_program_ms,
            "iptables_nft": row.iptables.json(),
            "iptables_nft_load_ms": load_ms,
            "nftables": row.nftables.json(),
            "nftables_load_ms": nft_load,
            "direct": row.direct.json(),
            "direct_in_lb_cgroup": row.direct_cg.json(),
            "direct_outside": row.direct_outside.json(),
        }));
        rows.push(row);
        let mut doc: serde_json::Value = std::fs::read(&out)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_else(|| serde_json::json!({}));
        doc["traffic"] = serde_json::json!({
            "client_threads": threads,
            "seconds_per_point": seconds,
            "iptables_timeout_s": limit.as_secs(),
            "topology": "socket LB, iptables, nftables, direct: client namespace -> veth -> pods \
                         namespace (ClusterIP); tc path: outside namespace -> bridge -> node eth0 \
                         (tc) -> veth -> pods, via each Service's ExternalIP; direct_outside: the \
                         same outside client to the pods, routed through the node",
            "rows": json_rows,
        });
        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&out, serde_json::to_string_pretty(&doc)?)?;
    }
    drop(tc_agent);
    drop(tc_pins);
    drop(agent);
    drop(pins);

    let doc: serde_json::Value = std::fs::read(&out)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    println!();
    println!(
        "(a) short connections per second (connect, one request/response, close), {threads} client threads, {seconds} s per point"
    );
    print_rates(&rows, true);
    println!();
    println!("(b) requests per second on established connections, {threads} client threads");
    print_rates(&rows, false);
    println!();
    println!(
        "(c) programming N Services x {BACKENDS} backends from empty, and one change at N (ms)"
    );
    print_programming(&doc, &json_rows);
    for row in &rows {
        for (name, r) in [
            ("tc path", &row.tc),
            ("iptables", &row.iptables),
            ("nftables", &row.nftables),
        ] {
            if let Some(why) = &r.why {
                println!("note: {name} at {}: {why}", row.n);
            }
        }
    }
    println!("wrote {}", out.display());
    Ok(())
}
