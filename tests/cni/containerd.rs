//! A real caller: Debian's containerd 1.6 (CRI plugin, runc) configured to use our plugin,
//! run by the test inside a lab node namespace with its own root, state, socket and CNI
//! directories. RunPodSandbox gets its address from ferrokube-cni, two pods reach each
//! other over TCP, RemovePodSandbox releases the addresses and the host veths.
//!
//! containerd, its configuration (`restrict_oom_score_adj = true`: these machines lack
//! CAP_SYS_RESOURCE), the busybox-static test image and the cleanup come from the CRI
//! suite's harness (`tests/cri/harness.rs`), shared so both suites start containerd the
//! same way.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_cri::v1::{
    PodSandboxConfig, PodSandboxMetadata, PodSandboxStatusRequest, RemovePodSandboxRequest,
    RunPodSandboxRequest, StopPodSandboxRequest,
};
use serde_json::Value;

#[path = "../cri/harness.rs"]
#[allow(dead_code)]
mod cri_harness;

use cri_harness::{Kind, Lab, POD_CIDR};

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
        ferrokube_testkit::netns::enter_current_thread(&path)?;
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let limit = Duration::from_secs(60);
    runtime.block_on(async {
        let mut lab = Lab::start(Kind::Containerd).await?;
        let ipam = lab.ipam_dir();
        let result = async {
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
                    // Under the lab's cgroup (removed with the lab), not containerd's
                    // default `/k8s.io`, which would outlive the test.
                    linux: Some(k8s_cri::v1::LinuxPodSandboxConfig {
                        cgroup_parent: format!("{}/pod-{name}", lab.cgroup_parent()),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                let id = tokio::time::timeout(
                    limit,
                    lab.runtime.run_pod_sandbox(RunPodSandboxRequest {
                        config: Some(config),
                        runtime_handler: String::new(),
                    }),
                )
                .await??
                .into_inner()
                .pod_sandbox_id;
                let status = lab
                    .runtime
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
                    lab.runtime.stop_pod_sandbox(StopPodSandboxRequest {
                        pod_sandbox_id: id.clone(),
                    }),
                )
                .await??;
                tokio::time::timeout(
                    limit,
                    lab.runtime.remove_pod_sandbox(RemovePodSandboxRequest {
                        pod_sandbox_id: id.clone(),
                    }),
                )
                .await??;
            }
            ensure!(
                allocated(&ipam)?.is_empty(),
                "RemovePodSandbox left allocations"
            );
            let links = lab.node.ip(&["-o", "link", "show"])?;
            ensure!(!links.contains(" fk"), "host veths left: {links}");
            Ok(())
        }
        .await;
        result.with_context(|| lab.log_tail())
    })
}
