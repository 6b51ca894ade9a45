//! `cargo xtask bench nodeport`: NodePort forwarding packets/s, and per core, for a UDP
//! flood to a NodePort whose backend is on another node: the XDP fast path vs the tc
//! path vs kube-proxy-style iptables DNAT (+ MASQUERADE).
//!
//! In a [`NodeLab`] (outside client, node 1 with the external interface `eth0`, a pod
//! behind node 2), `--senders` threads in the outside namespace each send small UDP
//! datagrams (`--payload` bytes) from their own connected socket (one flow each) as fast
//! as they can, for `--seconds`, to node 1's NodePort; node 1 translates (DNAT to the pod
//! on node 2, SNAT to its own address) and sends them back out of `eth0`. Measured per
//! mode:
//! - forwarded packets/s: what arrived on the pod's interface (`/proc/net/dev` in the pod
//!   namespace; the pod's socket never reads, so the kernel drops at the socket, cheaply
//!   and without ICMP);
//! - CPU: the machine's busy time and softirq time from `/proc/stat` over the run, as
//!   cores (busy seconds per second), and packets/s per busy core. Everything in the lab
//!   (senders, node 1, the bridge, node 2, the pod) and anything else running on the
//!   machine counts, so per-core figures compare the modes under the same setup only.
//!
//! Modes, in this order (so nf_conntrack is not hooked into node 1 before the iptables
//! mode): `tc` (our agent without XDP), `xdp` (our agent with native XDP on `eth0` and
//! the pass-through program on its veth peer), `iptables` (no agent; PREROUTING `MARK` +
//! `DNAT`, POSTROUTING `MASQUERADE` by mark, as kube-proxy's KUBE-NODEPORTS /
//! KUBE-MARK-MASQ rules do). Each mode runs `--rounds` times and keeps its best round.
//!
//! Needs root, TCX and native XDP on veth; everything lives in the lab's namespaces and
//! goes at the end. Arguments: `--out FILE` (JSON), `--seconds S` (default 3),
//! `--rounds N` (default 2), `--senders N` (default 2), `--payload BYTES` (default 18),
//! `--only TEXT` (modes whose name contains TEXT).

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ferrokube_proxy::loader::{XdpPass, xdp_counters};
use ferrokube_proxy::sync::Input;
use ferrokube_proxy::{Agent, Config, Sizes, XdpMode, bpffs, source};
use ferrokube_testkit::netlab::{NodeLab, TestCgroup, unique_name};
use ferrokube_testkit::netns::{Netns, enter_current_thread};

const TARGET: u16 = 8080;
const NODE_PORT: u16 = 30054;
const IPTABLES_PORT: u16 = 31054;

/// Resets the bench node's pins on drop (detaching its programs).
struct Pins(Config);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = bpffs::remove(&self.0.bpffs, &self.0.node);
    }
}

fn iptables(ns: &Netns, args: &str) -> Result<()> {
    let out = ns
        .command("iptables")
        .args(args.split_whitespace())
        .output()
        .context("running iptables")?;
    if !out.status.success() {
        bail!("iptables {args}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Packets received on `interface` in the namespace `ns` (`/proc/net/dev`).
fn rx_packets(ns: &Netns, interface: &'static str) -> Result<u64> {
    ns.run_in(move || {
        let text = std::fs::read_to_string("/proc/thread-self/net/dev")?;
        for line in text.lines() {
            if let Some((name, rest)) = line.split_once(':')
                && name.trim() == interface
            {
                let packets = rest
                    .split_whitespace()
                    .nth(1)
                    .context("rx packets column")?;
                return Ok(packets.parse()?);
            }
        }
        bail!("{interface} not in /proc/net/dev")
    })
}

/// (busy, softirq) CPU time in seconds, all CPUs, from /proc/stat.
fn cpu_seconds() -> Result<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("/proc/stat")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    let softirq = v.get(6).copied().unwrap_or(0);
    let hz = 100.0; // USER_HZ
    Ok(((total - idle) as f64 / hz, softirq as f64 / hz))
}

/// Packets the XDP program sent itself, and packets of its flows it left to tc.
type XdpHandled = (u64, u64);

/// One mode's best round.
#[derive(Clone, Copy, Debug, Default)]
struct Round {
    sent_pps: f64,
    forwarded_pps: f64,
    busy_cores: f64,
    softirq_cores: f64,
}

impl Round {
    fn per_busy_core(&self) -> f64 {
        self.forwarded_pps / self.busy_cores.max(1e-9)
    }
}

/// Floods `to` from `senders` sockets for `seconds`; returns datagrams sent.
fn flood(
    outside: &Netns,
    to: SocketAddrV4,
    senders: usize,
    payload: usize,
    seconds: f64,
) -> Result<u64> {
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for _ in 0..senders {
        let (stop, sent, ns) = (stop.clone(), sent.clone(), outside.path());
        threads.push(std::thread::spawn(move || -> Result<()> {
            enter_current_thread(&ns)?;
            let socket = UdpSocket::bind("0.0.0.0:0")?;
            socket.connect(to)?;
            let buf = vec![0x5au8; payload];
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..256 {
                    // A full queue (ENOBUFS) or an ICMP-induced error just loses one.
                    if socket.send(&buf).is_ok() {
                        n += 1;
                    }
                }
            }
            sent.fetch_add(n, Ordering::Relaxed);
            Ok(())
        }));
    }
    std::thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread
            .join()
            .map_err(|_| anyhow::anyhow!("sender panicked"))??;
    }
    Ok(sent.load(Ordering::Relaxed))
}

fn measure(
    lab: &NodeLab,
    to: SocketAddrV4,
    senders: usize,
    payload: usize,
    seconds: f64,
) -> Result<Round> {
    let rx0 = rx_packets(&lab.pods2, "eth0")?;
    let (busy0, soft0) = cpu_seconds()?;
    let start = Instant::now();
    let sent = flood(&lab.outside, to, senders, payload, seconds)?;
    let elapsed = start.elapsed().as_secs_f64();
    let (busy1, soft1) = cpu_seconds()?;
    // Let the last packets in flight land.
    std::thread::sleep(Duration::from_millis(100));
    let rx1 = rx_packets(&lab.pods2, "eth0")?;
    Ok(Round {
        sent_pps: sent as f64 / elapsed,
        forwarded_pps: (rx1 - rx0) as f64 / elapsed,
        busy_cores: (busy1 - busy0) / elapsed,
        softirq_cores: (soft1 - soft0) / elapsed,
    })
}

/// Waits until a few datagrams to `to` reach the pod (neighbours, bridge learning).
fn warm_up(lab: &NodeLab, to: SocketAddrV4) -> Result<()> {
    ferrokube_testkit::wait_for("the NodePort to forward", Duration::from_secs(10), || {
        let before = rx_packets(&lab.pods2, "eth0")?;
        flood(&lab.outside, to, 1, 18, 0.05)?;
        std::thread::sleep(Duration::from_millis(50));
        Ok((rx_packets(&lab.pods2, "eth0")? > before + 10).then_some(()))
    })
}

fn service_yaml(remote: Ipv4Addr) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: flood, namespace: default}}\n\
         spec:\n  type: NodePort\n  clusterIP: 10.96.0.54\n  ports:\n\
         \x20 - {{name: udp, protocol: UDP, port: 53, nodePort: {NODE_PORT}, targetPort: {TARGET}}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata:\n  name: flood-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: flood}}\n\
         addressType: IPv4\nports:\n\
         \x20 - {{name: udp, protocol: UDP, port: {TARGET}}}\n\
         endpoints:\n  - addresses: [{remote}]\n    nodeName: other-node\n",
    )
}

fn main() -> Result<()> {
    let mut out = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../target/bench/nodeport.json"
    ));
    let mut seconds = 3.0f64;
    let mut rounds = 2usize;
    let mut senders = 2usize;
    let mut payload = 18usize;
    let mut only: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--out" => out = args.next().context("--out FILE")?.into(),
            "--seconds" => seconds = args.next().context("--seconds S")?.parse()?,
            "--rounds" => rounds = args.next().context("--rounds N")?.parse()?,
            "--senders" => senders = args.next().context("--senders N")?.parse()?,
            "--payload" => payload = args.next().context("--payload BYTES")?.parse()?,
            "--only" => only = Some(args.next().context("--only TEXT")?),
            _ => {} // cargo bench passes --bench
        }
    }
    let wanted = |mode: &str| only.as_deref().is_none_or(|o| mode.contains(o));

    let lab = NodeLab::new(0, 1)?;
    let remote = lab.pod2_addrs[0];
    // The pod's sink: bound, never read (the kernel drops at the socket, no ICMP).
    let _sink = lab
        .pods2
        .run_in(move || Ok(UdpSocket::bind((remote, TARGET))?))?;
    // Native XDP_TX on eth0 needs an XDP program on its veth peers (see `XdpPass`).
    let mut peers = Vec::new();
    for peer in NodeLab::PEERS {
        peers.push(lab.outside.run_in(move || {
            Ok(XdpPass::attach(
                peer,
                std::path::Path::new(bpffs::DEFAULT_BPFFS),
            )?)
        })?);
    }
    let cgroup = TestCgroup::new(&unique_name("ferrokube-bench-"))?;
    let node_port = SocketAddrV4::new(NodeLab::NODE1, NODE_PORT);
    let yaml = service_yaml(remote);
    let mut results: Vec<(&str, Round, Option<XdpHandled>)> = Vec::new();
    for (mode, xdp) in [("tc", XdpMode::Off), ("xdp", XdpMode::Native)] {
        if !wanted(mode) {
            continue;
        }
        let mut config = Config::new(unique_name("bench-np-"), cgroup.path());
        config.sizes = Sizes {
            ct: 65_536,
            ..Sizes::default()
        };
        config.interface = Some(NodeLab::EXTERNAL_IF.into());
        config.xdp = xdp;
        let pins = Pins(config.clone());
        let mut agent = {
            let config = config.clone();
            lab.node1.run_in(move || Ok(Agent::start(&config)?))?
        };
        if xdp == XdpMode::Native && agent.dataplane().xdp_attached() != Some(XdpMode::Native) {
            bail!(
                "native XDP was not attached: {:?}",
                agent.dataplane().xdp_attached()
            );
        }
        agent.apply(Input::Snapshot(source::parse_objects(&yaml, "bench")?))?;
        warm_up(&lab, node_port)?;
        let dir = bpffs::pin_dir(&config.bpffs, &config.node)?;
        let xdp_before = xdp_counters(&dir).ok();
        let mut best = Round::default();
        for _ in 0..rounds {
            let round = measure(&lab, node_port, senders, payload, seconds)?;
            eprintln!("{mode}: {round:?}");
            if round.forwarded_pps > best.forwarded_pps {
                best = round;
            }
        }
        let xdp_after = xdp_counters(&dir).ok();
        let handled = match (xdp_before, xdp_after) {
            (Some(b), Some(a)) => Some((a.forward - b.forward, a.fallback - b.fallback)),
            _ => None,
        };
        results.push((mode, best, handled));
        drop(agent);
        drop(pins);
    }
    if wanted("iptables") {
        // No agent from here on: iptables alone, as kube-proxy would have it.
        let matches = format!(
            "-t nat -A PREROUTING -d {} -p udp --dport {IPTABLES_PORT}",
            NodeLab::NODE1
        );
        iptables(
            &lab.node1,
            &format!("{matches} -j MARK --set-xmark 0x4000/0x4000"),
        )?;
        iptables(
            &lab.node1,
            &format!("{matches} -j DNAT --to-destination {remote}:{TARGET}"),
        )?;
        iptables(
            &lab.node1,
            "-t nat -A POSTROUTING -m mark --mark 0x4000/0x4000 -j MASQUERADE",
        )?;
        let to = SocketAddrV4::new(NodeLab::NODE1, IPTABLES_PORT);
        warm_up(&lab, to)?;
        let mut best = Round::default();
        for _ in 0..rounds {
            let round = measure(&lab, to, senders, payload, seconds)?;
            eprintln!("iptables: {round:?}");
            if round.forwarded_pps > best.forwarded_pps {
                best = round;
            }
        }
        results.push(("iptables", best, None));
    }

    let baseline = results
        .iter()
        .find(|(m, _, _)| *m == "iptables")
        .map(|(_, r, _)| *r);
    println!(
        "{:<10} | {:>12} {:>14} | {:>10} {:>12} | {:>16} | {:>10}",
        "mode",
        "sent pkt/s",
        "forwarded pkt/s",
        "busy cores",
        "softirq cores",
        "fwd pkt/s / core",
        "vs iptables"
    );
    let mut rows = Vec::new();
    for (mode, r, handled) in &results {
        let ratio = baseline.map(|b| r.per_busy_core() / b.per_busy_core());
        println!(
            "{mode:<10} | {:>12.0} {:>14.0} | {:>10.2} {:>12.2} | {:>16.0} | {:>10}",
            r.sent_pps,
            r.forwarded_pps,
            r.busy_cores,
            r.softirq_cores,
            r.per_busy_core(),
            ratio.map_or("-".to_string(), |x| format!("{x:.2}x"))
        );
        rows.push(serde_json::json!({
            "mode": mode,
            "sent_pps": r.sent_pps,
            "forwarded_pps": r.forwarded_pps,
            "busy_cores": r.busy_cores,
            "softirq_cores": r.softirq_cores,
            "forwarded_pps_per_busy_core": r.per_busy_core(),
            "per_core_vs_iptables": ratio,
            "xdp_forwarded_packets": handled.map(|h| h.0),
            "xdp_fallback_packets": handled.map(|h| h.1),
        }));
    }
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(
        &out,
        serde_json::to_string_pretty(&serde_json::json!({
            "seconds_per_round": seconds,
            "rounds": rounds,
            "senders": senders,
            "payload_bytes": payload,
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "rows": rows,
        }))?,
    )?;
    println!("wrote {}", out.display());
    drop(peers);
    Ok(())
}
