//! `cargo xtask bench dataplane`, traffic part (a and b of issue 4's benchmark): the
//! short-connection rate (connect, one request/response, close) and the request rate on
//! established connections, through ferrokube's socket load balancer, through kube-proxy's
//! iptables layout (iptables-nft, Debian's default backend, as kube-proxy uses it), through
//! kube-proxy's nftables layout (verdict maps; when `nft` is installed), and straight to
//! the backends (no load balancer: the limit), with N Services programmed (10 backends
//! each). The Service under test is number N/2 (kube-proxy's iptables chain is walked
//! linearly, so the middle is the average case); its 10 backends are real servers.
//!
//! Everything runs in a lab: a client namespace and a pods namespace joined by a veth,
//! with no route out, and a cgroup of its own for the socket programs; the client is
//! `ferrokube-lbprobe` (a separate process in that cgroup and namespace). Needs root.
//!
//! Arguments: `--out FILE` (JSON, merged into the programming results under "traffic"),
//! `--sizes 1,1000,10000,30000`, `--seconds S` per point, `--threads T` client threads.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use common::{BACKENDS, iptables_rules, objects, restore, vip};
use ferrokube_proxy::sync::Input;
use ferrokube_proxy::{Agent, Config, Sizes, bpffs};
use ferrokube_testkit::netlab::{Lab, TestCgroup, unique_name};
use ferrokube_testkit::netns::{Netns, enter_current_thread};

const PORT: u16 = 8080;

/// Answers every request on a connection until the client closes it: accept threads on
/// one listener (all backend addresses) in the pods namespace.
struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Servers {
    fn start(netns: &Path, threads: usize) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel::<Result<TcpListener>>();
        let path = netns.to_path_buf();
        std::thread::spawn(move || {
            let listener = enter_current_thread(&path).and_then(|()| {
                let l = TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], PORT)))?;
                l.set_nonblocking(true)?;
                Ok(l)
            });
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
                            std::thread::sleep(Duration::from_micros(200));
                            continue;
                        };
                        let _ = stream.set_nonblocking(false);
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
        Ok(Self { stop, threads })
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

struct Pins(Config);
impl Drop for Pins {
    fn drop(&mut self) {
        let _ = bpffs::remove(&self.0.bpffs, &self.0.node);
    }
}

/// Requests per second from the client process: `(rate, errors)`.
fn measure(
    lab: &Lab,
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
        .arg(lab.client.path())
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

/// kube-proxy's nftables layout (nftables mode, 1.31+): a verdict map from
/// (address, protocol, port) to a per-Service chain that picks an endpoint chain with
/// `numgen random`, each endpoint chain DNATs.
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
         chain nat-output {{\n type nat hook output priority -100; policy accept;\n jump services\n}}\n\
         {chains}}}\n",
        elements.join(",\n ")
    )
}

/// Loads (or with `delete`, removes) the nftables ruleset in `netns`.
fn nft(netns: &Netns, rules: &str, delete: bool) -> Result<bool> {
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), rules)?;
    let mut command = Command::new("nsenter");
    command
        .arg(format!("--net={}", netns.path().display()))
        .arg("nft");
    if delete {
        command.args(["delete", "table", "ip", "kube-proxy"]);
    } else {
        command.arg("-f").arg(file.path());
    }
    let out = command.output().context("running nft")?;
    if !out.status.success() {
        eprintln!("nft: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out.status.success())
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// One row's figures for one way of reaching the Service.
#[derive(Default, Clone, Copy)]
struct Rates {
    short: Option<f64>,
    rr: Option<f64>,
}

impl Rates {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({"short_connections_per_s": self.short, "requests_per_s": self.rr})
    }
}

fn rates(
    lab: &Lab,
    cgroup: Option<&TestCgroup>,
    addrs: &str,
    seconds: u64,
    threads: usize,
) -> Result<Rates> {
    let (short, e1) = measure(lab, cgroup, "bench-short", addrs, seconds, threads)?;
    let (rr, e2) = measure(lab, cgroup, "bench-rr", addrs, seconds, threads)?;
    if e1 + e2 > 0 {
        eprintln!("  {addrs}: {e1} + {e2} failed requests");
    }
    Ok(Rates {
        short: Some(short),
        rr: Some(rr),
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

fn main() -> Result<()> {
    let mut out =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/bench/dataplane.json");
    let mut sizes = vec![1u32, 1000, 10_000, 30_000];
    let (mut seconds, mut threads) = (3u64, 4usize);
    let limit = Duration::from_secs(180);
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
            "--seconds" => seconds = args.next().context("--seconds S")?.parse()?,
            "--threads" => threads = args.next().context("--threads T")?.parse()?,
            _ => {} // cargo bench passes --bench
        }
    }
    let lab = Lab::new(BACKENDS as u8)?;
    // kube-proxy's NAT happens after the route lookup for the Service address, so the
    // client needs a route for the Service range; it points into the lab's own veth
    // (the socket load balancer rewrites before any lookup and needs none).
    lab.client
        .ip(&["route", "add", "10.96.0.0/12", "dev", "v0"])
        .context("routing the Service range inside the lab")?;
    let _servers = Servers::start(&lab.pods.path(), 16)?;
    let cgroup = TestCgroup::new(&unique_name("ferrokube-traffic-"))?;
    let pods: Vec<Ipv4Addr> = lab.pod_addrs.clone();
    let direct_addrs: Vec<String> = pods.iter().map(|p| format!("{p}:{PORT}")).collect();
    let direct = rates(&lab, None, &direct_addrs.join(","), seconds, threads)?;

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
    let use_nft = have("nft");
    let mut rows = Vec::new();
    println!(
        "client: {threads} threads, {seconds} s per point; direct to the 10 backends: {} short conn/s, {} req/s",
        fmt(direct.short),
        fmt(direct.rr)
    );
    println!(
        "{:>6} | {:>9} {:>9} {:>9} {:>9} | {:>9} {:>9} {:>9} {:>9} | {:>8} {:>8} {:>8} {:>8}",
        "N",
        "ours cps",
        "ipt cps",
        "nft cps",
        "direct",
        "ours rps",
        "ipt rps",
        "nft rps",
        "direct",
        "cps/ipt",
        "cps/dir",
        "rps/ipt",
        "rps/dir"
    );
    for n in sizes {
        let live = n / 2;
        let target = format!("{}:80", vip(live));
        agent.apply(Input::Snapshot(objects(n, None, Some((live, &pods)))))?;
        let ours = rates(&lab, Some(&cgroup), &target, seconds, threads)?;
        // Empty the maps so the next modes see no socket load balancing.
        agent.apply(Input::Snapshot(Vec::new()))?;

        let mut nftables = Rates::default();
        if use_nft && nft(&lab.client, &nft_rules(n, live, &pods), false)? {
            nftables = rates(&lab, None, &target, seconds, threads)?;
            nft(&lab.client, "", true)?;
        }
        let mut iptables = Rates::default();
        let loaded = restore(
            &lab.client,
            "iptables-nft-restore",
            &iptables_rules(n, None, None, Some((live, &pods))),
            false,
            limit,
        )?;
        let load_ms = match &loaded {
            Ok(d) => {
                iptables = rates(&lab, None, &target, seconds, threads)?;
                Some(d.as_secs_f64() * 1e3)
            }
            Err(why) => {
                eprintln!("  iptables at {n}: {why}");
                None
            }
        };
        // An empty table for the next size (and for the socket LB's turn).
        restore(
            &lab.client,
            "iptables-nft-restore",
            "*nat\nCOMMIT\n",
            false,
            limit,
        )?
        .map_err(anyhow::Error::msg)?;
        println!(
            "{n:>6} | {:>9} {:>9} {:>9} {:>9} | {:>9} {:>9} {:>9} {:>9} | {:>8} {:>8} {:>8} {:>8}",
            fmt(ours.short),
            fmt(iptables.short),
            fmt(nftables.short),
            fmt(direct.short),
            fmt(ours.rr),
            fmt(iptables.rr),
            fmt(nftables.rr),
            fmt(direct.rr),
            ratio(ours.short, iptables.short),
            ratio(ours.short, direct.short),
            ratio(ours.rr, iptables.rr),
            ratio(ours.rr, direct.rr),
        );
        rows.push(serde_json::json!({
            "services": n,
            "ferrokube_socket_lb": ours.json(),
            "iptables_nft": iptables.json(),
            "iptables_nft_load_ms": load_ms,
            "nftables": nftables.json(),
            "direct": direct.json(),
        }));
        let mut doc: serde_json::Value = std::fs::read(&out)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_else(|| serde_json::json!({}));
        doc["traffic"] = serde_json::json!({
            "client_threads": threads,
            "seconds_per_point": seconds,
            "rows": rows,
        });
        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&out, serde_json::to_string_pretty(&doc)?)?;
    }
    drop(agent);
    drop(pins);
    println!("wrote {}", out.display());
    Ok(())
}
