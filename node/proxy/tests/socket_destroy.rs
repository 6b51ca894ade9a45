//! Sockets the socket load balancer sent to a backend are destroyed when the backend is
//! removed, so clients fail at once and reconnect (needs root, cgroup v2 and bpffs; CI
//! runs as root). A direct connection to the same Pod address is left alone.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use ferrokube_proxy::sync::Input;
use ferrokube_proxy::{Agent, Config, Sizes, bpffs, source};
use ferrokube_testkit::netlab::{EchoServers, Lab, TestCgroup, unique_name};
use ferrokube_testkit::netns::enter_current_thread;

const PORT: u16 = 8080;
/// Where the test's own TCP server keeps connections open.
const HOLD_PORT: u16 = 9090;

struct Pins {
    bpffs: std::path::PathBuf,
    node: String,
}

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = bpffs::remove(&self.bpffs, &self.node);
    }
}

/// A probe child, killed on drop; its output lines arrive on a channel.
struct Probe {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Probe {
    fn start(cgroup: &TestCgroup, lab: &Lab, mode: &str, addr: &str, seconds: u32) -> Result<Self> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ferrokube-lbprobe"))
            .arg("--cgroup")
            .arg(cgroup.path())
            .arg("--netns")
            .arg(lab.client.path())
            .args([mode, addr, &seconds.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .context("starting ferrokube-lbprobe")?;
        let stdout: ChildStdout = child.stdout.take().context("probe stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self { child, lines })
    }

    fn next(&self, within: Duration) -> Result<String> {
        self.lines
            .recv_timeout(within)
            .context("the probe printed nothing in time")
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP server in the pods' namespace that answers every line on a connection with its
/// address and keeps the connection open (the echo servers close after one reply).
struct HoldServer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HoldServer {
    fn start(lab: &Lab, addr: std::net::Ipv4Addr) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let (netns, flag) = (lab.pods.path(), stop.clone());
        let thread = std::thread::spawn(move || {
            let listener = enter_current_thread(&netns).and_then(|()| {
                let l = TcpListener::bind(SocketAddr::from((addr, HOLD_PORT)))?;
                l.set_nonblocking(true)?;
                Ok(l)
            });
            let listener = match listener {
                Ok(l) => {
                    let _ = ready_tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        let flag = flag.clone();
                        std::thread::spawn(move || {
                            let _ = stream.set_nonblocking(false);
                            let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
                            let mut buf = [0u8; 64];
                            while !flag.load(Ordering::Relaxed) {
                                match stream.read(&mut buf) {
                                    Ok(0) => break,
                                    Ok(_) => {
                                        if stream.write_all(addr.to_string().as_bytes()).is_err() {
                                            break;
                                        }
                                    }
                                    Err(e)
                                        if e.kind() == std::io::ErrorKind::WouldBlock
                                            || e.kind() == std::io::ErrorKind::TimedOut => {}
                                    Err(_) => break,
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .context("hold server did not start")??;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for HoldServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn yaml(endpoints: &[String]) -> String {
    let list: String = endpoints
        .iter()
        .map(|ip| format!("  - addresses: [{ip}]\n"))
        .collect();
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  clusterIP: 10.96.0.10
  ports:
  - {{name: dns, port: 53, protocol: UDP, targetPort: {PORT}}}
  - {{name: hold, port: 90, protocol: TCP, targetPort: {HOLD_PORT}}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: default
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
ports:
- {{name: dns, port: {PORT}, protocol: UDP}}
- {{name: hold, port: {HOLD_PORT}, protocol: TCP}}
endpoints:
{list}"#
    )
}

#[test]
fn sockets_to_a_removed_backend_are_destroyed_and_direct_ones_kept() -> Result<()> {
    let lab = Lab::new(2)?;
    let _echo = EchoServers::start(&lab.pods.path(), &lab.pod_addrs, PORT)?;
    let _hold0 = HoldServer::start(&lab, lab.pod_addrs[0])?;
    let _hold1 = HoldServer::start(&lab, lab.pod_addrs[1])?;
    let cgroup = TestCgroup::new(&unique_name("ferrokube-destroy-"))?;
    let node = unique_name("destroy-node-");
    let mut config = Config::new(node.clone(), cgroup.path());
    config.sizes = Sizes {
        services: 64,
        backends: 64,
        slots: 256,
        revnat: 1024,
        affinity: 256,
        ct: 1024,
    };
    let _pins = Pins {
        bpffs: config.bpffs.clone(),
        node,
    };
    let mut agent = Agent::start(&config)?;
    let pods: Vec<String> = lab.pod_addrs.iter().map(|a| a.to_string()).collect();
    agent.apply(Input::Snapshot(source::parse_objects(
        &yaml(&pods[..1]),
        "t",
    )?))?;

    // Held through the Service: a connected UDP socket and a TCP connection, both on
    // pod 0; and a connected UDP socket straight to pod 0, not through the Service.
    let udp = Probe::start(&cgroup, &lab, "udp-hold", "10.96.0.10:53", 20)?;
    let tcp = Probe::start(&cgroup, &lab, "tcp-hold", "10.96.0.10:90", 20)?;
    let direct = Probe::start(&cgroup, &lab, "udp-hold", &format!("{}:{PORT}", pods[0]), 4)?;
    let first = Duration::from_secs(10);
    assert_eq!(udp.next(first)?, format!("ok 10.96.0.10:53 {}", pods[0]));
    assert_eq!(tcp.next(first)?, format!("ok 10.96.0.10:90 {}", pods[0]));
    assert_eq!(
        direct.next(first)?,
        format!("ok {}:{PORT} {}", pods[0], pods[0])
    );

    // Pod 0 leaves the Service (it keeps running): its translated sockets are destroyed.
    agent.apply(Input::Snapshot(source::parse_objects(
        &yaml(&pods[1..]),
        "t",
    )?))?;
    ensure!(
        agent.destroyed_sockets() >= 2,
        "destroyed {} sockets",
        agent.destroyed_sockets()
    );
    let after = Duration::from_secs(10);
    let (u, t) = (udp.next(after)?, tcp.next(after)?);
    ensure!(
        u.starts_with("err "),
        "the connected UDP socket survived: {u}"
    );
    ensure!(t.starts_with("err "), "the TCP connection survived: {t}");
    // The direct socket is not ours to touch: it keeps working until its time is up.
    let d = direct.next(Duration::from_secs(10))?;
    if d != "held" {
        bail!("the direct socket to pod 0 was disturbed: {d}");
    }

    // A new socket goes to the remaining backend.
    let again = Probe::start(&cgroup, &lab, "udp-hold", "10.96.0.10:53", 1)?;
    assert_eq!(again.next(first)?, format!("ok 10.96.0.10:53 {}", pods[1]));
    Ok(())
}
