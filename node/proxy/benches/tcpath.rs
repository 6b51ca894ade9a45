//! `cargo xtask bench tcpath`: traffic through the tc NodePort path, against a direct
//! connection to the pod and against kube-proxy-style iptables DNAT (nf_tables backend,
//! with MASQUERADE for the remote backend) in the same node namespace.
//!
//! In a [`NodeLab`] (outside client, node 1 with the tc programs on `eth0`, a pod on node
//! 1 and one on node 2), one client thread in the outside namespace measures, for each
//! target, for `--seconds` each:
//! - `tcp_crr`: connect, 32-byte request, 32-byte reply, close (RST, so no TIME_WAIT);
//! - `tcp_rr`: 32-byte request/reply round trips on one connection;
//! - `udp_rr`: 32-byte request/reply round trips from one socket.
//!
//! The targets are measured in turn, `--rounds` times over, and each cell keeps its best
//! round (the machine is shared: the best round is the least disturbed one).
//!
//! Needs root and TCX; everything lives in the lab's namespaces and goes at the end.
//! Arguments: `--out FILE` (JSON), `--seconds S` (default 3), `--rounds N` (default 3),
//! `--only TEXT` (targets whose name contains TEXT).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use ferrokube_proxy::sync::Input;
use ferrokube_proxy::{Agent, Config, Sizes, Snat, bpffs, source};
use ferrokube_testkit::netlab::{NodeLab, TestCgroup, unique_name};
use ferrokube_testkit::netns::{Netns, enter_current_thread};

const TARGET: u16 = 8080;
const MSG: usize = 32;

/// Removes the bench node's pins on drop.
struct Pins(Config);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = bpffs::remove(&self.0.bpffs, &self.0.node);
    }
}

/// Echo servers (TCP: one connection at a time; UDP) on `addr:TARGET` in a namespace.
struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    ns: PathBuf,
    addr: Ipv4Addr,
}

impl Servers {
    fn start(ns: &Netns, addr: Ipv4Addr) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let path = ns.path();
        let local = SocketAddr::from((addr, TARGET));
        let (tcp, udp) =
            ns.run_in(move || Ok((TcpListener::bind(local)?, UdpSocket::bind(local)?)))?;
        udp.set_read_timeout(Some(Duration::from_millis(100)))?;
        let tcp_stop = stop.clone();
        let tcp_thread = std::thread::spawn(move || {
            while !tcp_stop.load(Ordering::Relaxed) {
                let Ok((mut stream, _)) = tcp.accept() else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let mut buf = [0u8; MSG];
                while stream.read_exact(&mut buf).is_ok() {
                    if stream.write_all(&buf).is_err() {
                        break;
                    }
                }
            }
        });
        let udp_stop = stop.clone();
        let udp_thread = std::thread::spawn(move || {
            let mut buf = [0u8; MSG];
            while !udp_stop.load(Ordering::Relaxed) {
                if let Ok((n, from)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(&buf[..n], from);
                }
            }
        });
        Ok(Self {
            stop,
            threads: vec![tcp_thread, udp_thread],
            ns: path,
            addr,
        })
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the blocking accept with one connection from inside the namespace.
        let (ns, to) = (self.ns.clone(), SocketAddr::from((self.addr, TARGET)));
        let _ = std::thread::spawn(move || {
            if enter_current_thread(&ns).is_ok() {
                let _ = TcpStream::connect_timeout(&to, Duration::from_secs(1));
            }
        })
        .join();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Latencies of one measurement, in microseconds.
struct Run {
    ops: usize,
    elapsed: Duration,
    latencies_us: Vec<f64>,
}

impl Run {
    fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&mut self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        self.latencies_us.sort_by(f64::total_cmp);
        let i = ((self.latencies_us.len() - 1) as f64 * p).round() as usize;
        self.latencies_us[i]
    }
}

fn measure(seconds: f64, mut op: impl FnMut() -> Result<()>) -> Result<Run> {
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(seconds);
    let mut latencies_us = Vec::new();
    while latencies_us.is_empty() || Instant::now() < end {
        let t = Instant::now();
        op().with_context(|| format!("after {} operations", latencies_us.len()))?;
        latencies_us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(Run {
        ops: latencies_us.len(),
        elapsed: start.elapsed(),
        latencies_us,
    })
}

/// SO_LINGER 0: close sends a RST and leaves no TIME_WAIT.
fn rst_on_close(stream: &TcpStream) -> Result<()> {
    let linger = nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    nix::sys::socket::setsockopt(stream, nix::sys::socket::sockopt::Linger, &linger)?;
    Ok(())
}

fn tcp_crr(to: SocketAddrV4, seconds: f64) -> Result<Run> {
    let request = [7u8; MSG];
    measure(seconds, || {
        let mut stream = TcpStream::connect_timeout(&to.into(), Duration::from_secs(2))
            .with_context(|| format!("connecting to {to}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        // RST on close: no TIME_WAIT, so the client's ports last the whole run.
        rst_on_close(&stream)?;
        stream.write_all(&request)?;
        let mut reply = [0u8; MSG];
        stream.read_exact(&mut reply)?;
        ensure!(reply == request, "bad reply");
        Ok(())
    })
}

fn tcp_rr(to: SocketAddrV4, seconds: f64) -> Result<Run> {
    let mut stream = TcpStream::connect_timeout(&to.into(), Duration::from_secs(2))
        .with_context(|| format!("connecting to {to}"))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    rst_on_close(&stream)?;
    let request = [9u8; MSG];
    measure(seconds, || {
        stream.write_all(&request)?;
        let mut reply = [0u8; MSG];
        stream.read_exact(&mut reply)?;
        Ok(())
    })
}

fn udp_rr(to: SocketAddrV4, seconds: f64) -> Result<Run> {
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    socket.set_read_timeout(Some(Duration::from_secs(2)))?;
    let request = [5u8; MSG];
    measure(seconds, || {
        socket.send_to(&request, to)?;
        let mut reply = [0u8; MSG];
        let (_, from) = socket.recv_from(&mut reply).context("no UDP reply")?;
        ensure!(from == SocketAddr::V4(to), "reply from {from}");
        Ok(())
    })
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

fn services(node: &str, local: Ipv4Addr, remote: Ipv4Addr) -> String {
    let one = |name: &str, tcp: u16, udp: u16, ip: Ipv4Addr, on: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
             spec:\n  type: NodePort\n  clusterIP: 10.96.0.{tcp_last}\n  ports:\n\
             \x20 - {{name: tcp, protocol: TCP, port: 80, nodePort: {tcp}, targetPort: {TARGET}}}\n\
             \x20 - {{name: udp, protocol: UDP, port: 53, nodePort: {udp}, targetPort: {TARGET}}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata:\n  name: {name}-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: {name}}}\n\
             addressType: IPv4\nports:\n\
             \x20 - {{name: tcp, protocol: TCP, port: {TARGET}}}\n\
             \x20 - {{name: udp, protocol: UDP, port: {TARGET}}}\n\
             endpoints:\n  - addresses: [{ip}]\n    nodeName: {on}\n",
            tcp_last = tcp % 200,
        )
    };
    format!(
        "{}---\n{}",
        one("local", 30080, 30053, local, node),
        one("remote", 30081, 30054, remote, "other-node")
    )
}

fn main() -> Result<()> {
    // `cargo bench` runs in the package directory: default to the workspace's target/.
    let mut out = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../target/bench/tcpath.json"
    ));
    let mut seconds = 3.0f64;
    let mut rounds = 3usize;
    let mut only: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--out" => out = args.next().context("--out FILE")?.into(),
            "--seconds" => seconds = args.next().context("--seconds S")?.parse()?,
            "--rounds" => rounds = args.next().context("--rounds N")?.parse()?,
            "--only" => only = Some(args.next().context("--only TEXT")?),
            _ => {} // cargo bench passes --bench
        }
    }

    let lab = NodeLab::new(1, 1)?;
    let (local, remote) = (lab.pod1_addrs[0], lab.pod2_addrs[0]);
    // The direct baseline: the client reaches the pods through node 1.
    lab.outside
        .ip(&["route", "add", "10.244.0.0/16", "via", "10.251.0.2"])?;
    let _servers = [
        Servers::start(&lab.pods1, local)?,
        Servers::start(&lab.pods2, remote)?,
    ];
    let cgroup = TestCgroup::new(&unique_name("ferrokube-bench-"))?;
    let mut config = Config::new(unique_name("bench-node-"), cgroup.path());
    config.sizes = Sizes {
        ct: 262_144,
        ..Sizes::default()
    };
    config.interface = Some(NodeLab::EXTERNAL_IF.into());
    // Closed flows give their SNAT port back at once (not after 60 s): the
    // connection-rate run opens more flows per second to the remote backend than there
    // are SNAT ports (4536). Its clients close with a RST, so the backend keeps no
    // TIME_WAIT that a reused port could run into.
    config.snat = Snat {
        closed_reuse_secs: 0,
        ..Snat::default()
    };
    let pins = Pins(config.clone());
    let mut agent = {
        let config = config.clone();
        lab.node1.run_in(move || Ok(Agent::start(&config)?))?
    };
    let yaml = services(&config.node, local, remote);
    agent.apply(Input::Snapshot(source::parse_objects(&yaml, "bench")?))?;
    // kube-proxy-style iptables DNAT on other node ports, in node 1 only; flows to the
    // remote pod are marked and masqueraded (KUBE-MARK-MASQ), so nothing else is.
    for (proto, port, to, masq) in [
        ("tcp", 31080, local, false),
        ("udp", 31053, local, false),
        ("tcp", 31081, remote, true),
        ("udp", 31054, remote, true),
    ] {
        let matches = format!("-t nat -A PREROUTING -d 10.251.0.2 -p {proto} --dport {port}");
        if masq {
            iptables(
                &lab.node1,
                &format!("{matches} -j MARK --set-xmark 0x4000/0x4000"),
            )?;
        }
        iptables(
            &lab.node1,
            &format!("{matches} -j DNAT --to-destination {to}:{TARGET}"),
        )?;
    }
    iptables(
        &lab.node1,
        "-t nat -A POSTROUTING -m mark --mark 0x4000/0x4000 -j MASQUERADE",
    )?;

    let node = NodeLab::NODE1;
    let targets: Vec<(&str, SocketAddrV4, SocketAddrV4)> = vec![
        (
            "direct to the pod",
            SocketAddrV4::new(local, TARGET),
            SocketAddrV4::new(local, TARGET),
        ),
        (
            "tc NodePort, local pod",
            SocketAddrV4::new(node, 30080),
            SocketAddrV4::new(node, 30053),
        ),
        (
            "iptables DNAT, local pod",
            SocketAddrV4::new(node, 31080),
            SocketAddrV4::new(node, 31053),
        ),
        (
            "tc NodePort, remote pod (SNAT)",
            SocketAddrV4::new(node, 30081),
            SocketAddrV4::new(node, 30054),
        ),
        (
            "iptables DNAT+MASQUERADE, remote pod",
            SocketAddrV4::new(node, 31081),
            SocketAddrV4::new(node, 31054),
        ),
    ];
    let targets: Vec<_> = targets
        .into_iter()
        .filter(|(name, _, _)| only.as_deref().is_none_or(|o| name.contains(o)))
        .collect();
    println!(
        "{:<38} | {:>10} {:>9} {:>9} | {:>10} {:>9} {:>9} | {:>10} {:>9} {:>9}",
        "target",
        "CRR /s",
        "p50 us",
        "p99 us",
        "TCP RR /s",
        "p50 us",
        "p99 us",
        "UDP RR /s",
        "p50 us",
        "p99 us"
    );
    // Warm up (neighbour entries, bridge learning): every target answers once.
    for (name, tcp_to, udp_to) in targets.iter().copied() {
        ferrokube_testkit::wait_for(name, Duration::from_secs(10), || {
            let ok = lab
                .outside
                .run_in(move || Ok(tcp_crr(tcp_to, 0.0).is_ok() && udp_rr(udp_to, 0.0).is_ok()))?;
            Ok(ok.then_some(()))
        })?;
    }
    // Per target: the best (rate, p50, p99) of each measurement over the rounds.
    type Cell = (f64, f64, f64);
    let mut best: Vec<[Option<Cell>; 3]> = vec![[None; 3]; targets.len()];
    for _ in 0..rounds {
        for (i, (_, tcp_to, udp_to)) in targets.iter().copied().enumerate() {
            let runs = lab.outside.run_in(move || {
                Ok([
                    tcp_crr(tcp_to, seconds)?,
                    tcp_rr(tcp_to, seconds)?,
                    udp_rr(udp_to, seconds)?,
                ])
            })?;
            for (slot, mut run) in best[i].iter_mut().zip(runs) {
                let cell = (run.rate(), run.percentile(0.5), run.percentile(0.99));
                if slot.is_none_or(|b| cell.0 > b.0) {
                    *slot = Some(cell);
                }
            }
        }
    }
    let mut rows = Vec::new();
    for ((name, _, _), cells) in targets.iter().zip(&best) {
        let [c, r, u] = cells.map(|c| c.unwrap_or((f64::NAN, f64::NAN, f64::NAN)));
        println!(
            "{name:<38} | {:>10.0} {:>9.1} {:>9.1} | {:>10.0} {:>9.1} {:>9.1} | {:>10.0} {:>9.1} {:>9.1}",
            c.0, c.1, c.2, r.0, r.1, r.2, u.0, u.1, u.2
        );
        rows.push(serde_json::json!({
            "target": name,
            "tcp_crr_per_s": c.0, "tcp_crr_p50_us": c.1, "tcp_crr_p99_us": c.2,
            "tcp_rr_per_s": r.0, "tcp_rr_p50_us": r.1, "tcp_rr_p99_us": r.2,
            "udp_rr_per_s": u.0, "udp_rr_p50_us": u.1, "udp_rr_p99_us": u.2,
        }));
    }
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(
        &out,
        serde_json::to_string_pretty(&serde_json::json!({
            "seconds_per_measurement": seconds,
            "rounds": rounds,
            "message_bytes": MSG,
            "rows": rows,
        }))?,
    )?;
    println!("wrote {}", out.display());
    drop(agent);
    drop(pins);
    Ok(())
}
