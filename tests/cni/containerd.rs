//! A real caller: Debian's containerd 1.6 (CRI plugin, runc) configured to use our plugin,
//! run by the test inside a lab node namespace with its own root, state, socket and CNI
//! directories. RunPodSandbox gets its address from ferrokube-cni, two pods reach each
//! other over TCP, RemovePodSandbox releases the addresses.
//!
//! The sandbox image is built here (an OCI archive holding Debian's static busybox
//! running `sleep infinity`) and imported with `ctr images import`. These machines lack
//! CAP_SYS_RESOURCE, hence `restrict_oom_score_adj = true`.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use ferrokube_testkit::netns::Netns;
use ferrokube_testkit::wait_for;
use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    PodSandboxConfig, PodSandboxMetadata, PodSandboxStatusRequest, RemovePodSandboxRequest,
    RunPodSandboxRequest, StopPodSandboxRequest,
};
use serde_json::{Value, json};
use tonic::transport::{Channel, Endpoint, Uri};

const IMAGE: &str = "ferrokube.invalid/pause:test";
const POD_CIDR: &str = "10.66.0.0/24";

fn run(command: &mut Command) -> Result<String> {
    let out = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !out.status.success() {
        bail!(
            "{command:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn sha256(path: &Path) -> Result<(String, u64)> {
    let out = run(Command::new("sha256sum").arg(path))?;
    let digest = out.split_whitespace().next().context("sha256sum output")?;
    Ok((digest.to_string(), std::fs::metadata(path)?.len()))
}

/// Writes the sandbox image as an OCI archive at `dir/pause.tar`.
fn build_image(dir: &Path) -> Result<PathBuf> {
    let busybox = Path::new("/bin/busybox");
    ensure!(
        busybox.exists(),
        "/bin/busybox missing: the containerd test needs Debian's busybox-static (run `cargo xtask setup`)"
    );
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin"))?;
    std::fs::copy(busybox, rootfs.join("bin/busybox"))?;
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sleep"))?;
    let oci = dir.join("oci");
    let blobs = oci.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    let layer = dir.join("layer.tar");
    run(Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
        .arg(&rootfs)
        .arg("-cf")
        .arg(&layer)
        .arg("."))?;
    let add_blob = |path: &Path| -> Result<(String, u64)> {
        let (digest, size) = sha256(path)?;
        std::fs::copy(path, blobs.join(&digest))?;
        Ok((digest, size))
    };
    let (layer_digest, layer_size) = add_blob(&layer)?;
    let config = dir.join("config.json");
    std::fs::write(
        &config,
        json!({
            "architecture": "amd64", "os": "linux",
            "config": { "Entrypoint": ["/bin/sleep", "infinity"] },
            "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{layer_digest}")] },
        })
        .to_string(),
    )?;
    let (config_digest, config_size) = add_blob(&config)?;
    let manifest = dir.join("manifest.json");
    std::fs::write(
        &manifest,
        json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": { "mediaType": "application/vnd.oci.image.config.v1+json",
                        "digest": format!("sha256:{config_digest}"), "size": config_size },
            "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar",
                         "digest": format!("sha256:{layer_digest}"), "size": layer_size }],
        })
        .to_string(),
    )?;
    let (manifest_digest, manifest_size) = add_blob(&manifest)?;
    std::fs::write(
        oci.join("index.json"),
        json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": format!("sha256:{manifest_digest}"), "size": manifest_size,
                "annotations": { "io.containerd.image.name": IMAGE,
                                 "org.opencontainers.image.ref.name": "test" },
            }],
        })
        .to_string(),
    )?;
    std::fs::write(oci.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let archive = dir.join("pause.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&oci)
        .arg("-cf")
        .arg(&archive)
        .arg("."))?;
    Ok(archive)
}

/// containerd in a lab node namespace; on drop: its tasks killed, the daemon and its
/// shims (found by our unique directory in their command line) killed by PID, its mounts
/// under our directory unmounted, the directory removed.
struct Containerd {
    dir: tempfile::TempDir,
    child: Child,
}

impl Containerd {
    fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    fn ctr(&self) -> Command {
        let mut command = Command::new("ctr");
        command.arg("-a").arg(self.socket()).args(["-n", "k8s.io"]);
        command
    }

    fn start(node: &Netns) -> Result<Containerd> {
        for bin in ["/usr/bin/containerd", "/usr/sbin/runc", "/usr/bin/ctr"] {
            ensure!(
                Path::new(bin).exists(),
                "{bin} missing: the containerd test needs Debian's containerd and runc (run `cargo xtask setup`)"
            );
        }
        let dir = tempfile::Builder::new().prefix("fk-containerd").tempdir()?;
        let d = dir.path();
        let (bin_dir, conf_dir, ipam) = (d.join("cni/bin"), d.join("cni/net.d"), d.join("ipam"));
        run(Command::new(env!("CARGO_BIN_EXE_ferrokube"))
            .args(["cni", "install", "--pod-cidr", POD_CIDR])
            .arg("--bin-dir")
            .arg(&bin_dir)
            .arg("--conf-dir")
            .arg(&conf_dir)
            // Keep IPAM state inside the test directory.
            .arg("--data-dir")
            .arg(&ipam))?;
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{IMAGE}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin}"
    conf_dir = "{conf}"
"#,
            d = d.display(),
            bin = bin_dir.display(),
            conf = conf_dir.display(),
        );
        std::fs::write(d.join("config.toml"), config)?;
        let log = std::fs::File::create(d.join("containerd.log"))?;
        let child = node
            .command("/usr/bin/containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let containerd = Containerd { dir, child };
        wait_for("containerd to answer", Duration::from_secs(30), || {
            Ok(containerd
                .ctr()
                .arg("version")
                .output()?
                .status
                .success()
                .then_some(()))
        })
        .with_context(|| containerd.log_tail())?;
        Ok(containerd)
    }

    fn log_tail(&self) -> String {
        let log =
            std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().rev().take(15).collect();
        format!(
            "containerd log tail:\n{}",
            lines.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }

    async fn client(&self) -> Result<RuntimeServiceClient<Channel>> {
        let socket = self.socket();
        let channel = Endpoint::try_from("http://[::]:50051")?
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let socket = socket.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(socket).await?,
                    ))
                }
            }))
            .await?;
        Ok(RuntimeServiceClient::new(channel))
    }

    fn our_pids(&self) -> Vec<i32> {
        let marker = self.dir.path().to_string_lossy().into_owned();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                *pid != std::process::id() as i32
                    && std::fs::read(format!("/proc/{pid}/cmdline"))
                        .map(|c| String::from_utf8_lossy(&c).contains(&marker))
                        .unwrap_or(false)
            })
            .collect()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Tasks first (the sandboxes' processes), while containerd still runs.
        if let Ok(out) = self.ctr().args(["tasks", "ls", "-q"]).output() {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = self
                    .ctr()
                    .args(["tasks", "kill", "-a", "-s", "SIGKILL", id])
                    .output();
                let _ = self.ctr().args(["tasks", "delete", "-f", id]).output();
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in self.our_pids() {
            // Shims started for our containerd: they carry our directory in argv.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let marker = self.dir.path().to_string_lossy().into_owned();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut ours: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4))
            .filter(|m| m.starts_with(&marker))
            .collect();
        ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for mount in ours {
            let _ = Command::new("umount").arg("-l").arg(mount).output();
        }
    }
}

/// The network namespace path of a sandbox, from the verbose status' runtime spec.
fn netns_path(info: &std::collections::HashMap<String, String>) -> Result<PathBuf> {
    let info: Value = serde_json::from_str(info.get("info").context("no verbose info")?)?;
    let namespaces = info["runtimeSpec"]["linux"]["namespaces"]
        .as_array()
        .context("no namespaces in the runtime spec")?;
    namespaces
        .iter()
        .find(|n| n["type"] == "network")
        .and_then(|n| n["path"].as_str())
        .map(PathBuf::from)
        .context("no network namespace path")
}

fn in_netns<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path)?;
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("netns thread panicked"))?
}

fn allocated(dir: &Path) -> Result<HashSet<Ipv4Addr>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(HashSet::new());
    };
    Ok(entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect())
}

#[test]
fn containerd_runs_pods_on_our_network() -> Result<()> {
    let node = Netns::new("ctrd")?;
    node.enable_forwarding()?;
    let containerd = Containerd::start(&node)?;
    let archive = build_image(containerd.dir.path())?;
    run(containerd
        .ctr()
        .args(["images", "import", "--snapshotter", "native"])
        .arg(&archive))?;
    let ipam = containerd.dir.path().join("ipam");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let limit = Duration::from_secs(60);
    let result = runtime.block_on(async {
        let mut client = containerd.client().await?;
        let mut pods = Vec::new();
        for name in ["p1", "p2"] {
            let config = PodSandboxConfig {
                metadata: Some(PodSandboxMetadata {
                    name: name.into(),
                    uid: format!("uid-{name}-{}", std::process::id()),
                    namespace: "default".into(),
                    attempt: 0,
                }),
                hostname: name.into(),
                ..Default::default()
            };
            let id = tokio::time::timeout(
                limit,
                client.run_pod_sandbox(RunPodSandboxRequest {
                    config: Some(config),
                    runtime_handler: String::new(),
                }),
            )
            .await??
            .into_inner()
            .pod_sandbox_id;
            let status = client
                .pod_sandbox_status(PodSandboxStatusRequest {
                    pod_sandbox_id: id.clone(),
                    verbose: true,
                })
                .await?
                .into_inner();
            let ip: Ipv4Addr = status
                .status
                .as_ref()
                .and_then(|s| s.network.as_ref())
                .map(|n| n.ip.clone())
                .context("no sandbox IP")?
                .parse()?;
            let cidr: ferrokube_cni::Ipv4Cidr = POD_CIDR.parse()?;
            ensure!(cidr.contains(ip), "{name} got {ip}, outside {POD_CIDR}");
            pods.push((id, ip, netns_path(&status.info)?));
        }
        ensure!(
            allocated(&ipam)? == pods.iter().map(|p| p.1).collect(),
            "IPAM does not hold the sandboxes' addresses"
        );
        // Pod to pod over TCP.
        let (ip1, ip2) = (pods[0].1, pods[1].1);
        let listener = in_netns(&pods[0].2, move || Ok(TcpListener::bind((ip1, 0))?))?;
        let port = listener.local_addr()?.port();
        let reply = in_netns(&pods[1].2, move || {
            let mut stream =
                TcpStream::connect_timeout(&(ip1, port).into(), Duration::from_secs(5))?;
            let (mut conn, peer) = listener.accept()?;
            ensure!(peer.ip() == ip2, "connection from {peer}, expected {ip2}");
            conn.write_all(b"hello from p1")?;
            drop(conn);
            let mut reply = String::new();
            stream.read_to_string(&mut reply)?;
            Ok(reply)
        })?;
        ensure!(reply == "hello from p1", "{reply:?}");
        for (id, _, _) in &pods {
            tokio::time::timeout(
                limit,
                client.stop_pod_sandbox(StopPodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                }),
            )
            .await??;
            tokio::time::timeout(
                limit,
                client.remove_pod_sandbox(RemovePodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                }),
            )
            .await??;
        }
        ensure!(
            allocated(&ipam)?.is_empty(),
            "RemovePodSandbox left allocations"
        );
        let links = node.ip(&["-o", "link", "show"])?;
        ensure!(!links.contains(" fk"), "host veths left: {links}");
        Ok(())
    });
    result.with_context(|| containerd.log_tail())
}
