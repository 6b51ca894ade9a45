//! The proxy fed by a real apiserver through kube-rs (needs root, cgroup v2 and bpffs;
//! CI runs as root): Services and EndpointSlices created, changed and deleted through the
//! API reach the kernel maps, checked with traffic from a lab client namespace. The
//! apiserver (embedded store) runs in-process on loopback.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ferrokube_apiserver::{Config as ApiConfig, Server, alloc::Ranges};
use ferrokube_proxy::{Agent, Config, Sizes, bpffs, source};
use ferrokube_store::{EmbeddedOptions, EmbeddedStore, Store};
use ferrokube_testkit::netlab::{EchoServers, Lab, TestCgroup, unique_name};
use ferrokube_testkit::wait_for;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

const PORT: u16 = 8080;
const VIP: &str = "10.96.0.50:80";

/// Removes a node's pins on drop (after the agent that used them).
struct Pins {
    bpffs: std::path::PathBuf,
    node: String,
}

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = bpffs::remove(&self.bpffs, &self.node);
    }
}

/// Stops the agent's task on drop.
struct AgentTask(Option<tokio::task::JoinHandle<()>>);

impl Drop for AgentTask {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

fn service() -> Result<Service> {
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.50", "ports": [{"name": "http", "port": 80, "targetPort": PORT}]},
    }))?)
}

fn slice(addresses: &[String]) -> Result<EndpointSlice> {
    let endpoints: Vec<_> = addresses
        .iter()
        .map(|a| serde_json::json!({"addresses": [a]}))
        .collect();
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web-1", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": PORT, "protocol": "TCP"}],
        "endpoints": endpoints,
    }))?)
}

/// TCP requests to the Service from the lab client in the test cgroup: the replies (each
/// backend answers with its address), or the first error.
fn probe(cgroup: &TestCgroup, lab: &Lab, count: u32) -> Result<Result<BTreeSet<String>, String>> {
    let out = Command::new(env!("CARGO_BIN_EXE_ferrokube-lbprobe"))
        .arg("--cgroup")
        .arg(cgroup.path())
        .arg("--netns")
        .arg(lab.client.path())
        .args(["tcp", VIP, &count.to_string()])
        .output()
        .context("running ferrokube-lbprobe")?;
    if !out.status.success() {
        bail!("probe failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let mut replies = BTreeSet::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        match line.split_whitespace().collect::<Vec<_>>().as_slice() {
            ["ok", peer, reply] => {
                let peer: SocketAddr = peer.parse()?;
                if peer.to_string() != VIP {
                    bail!("peer {peer}, want the Service {VIP}");
                }
                replies.insert(reply.to_string());
            }
            ["err", kind] => return Ok(Err(kind.to_string())),
            _ => bail!("unexpected probe line {line:?}"),
        }
    }
    Ok(Ok(replies))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_and_slices_from_the_apiserver_reach_the_kernel() -> Result<()> {
    // The lab, backends and cgroup (removed on drop, pass or fail).
    let lab = Lab::new(2)?;
    let _servers = EchoServers::start(&lab.pods.path(), &lab.pod_addrs, PORT)?;
    let pods: Vec<String> = lab.pod_addrs.iter().map(|a| a.to_string()).collect();
    let cgroup = TestCgroup::new(&unique_name("ferrokube-watch-"))?;

    // The apiserver.
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(
        &dir.path().join("store"),
        EmbeddedOptions::default(),
    )?);
    let server = Server::bind(
        ApiConfig {
            data_dir: dir.path().join("data"),
            bind: [127, 0, 0, 1].into(),
            port: 0,
            bookmark_interval: Duration::from_secs(60),
            ranges: Ranges::default(),
        },
        store,
    )
    .await?;
    let kubeconfig = Kubeconfig::from_yaml(&server.kubeconfig)?;
    let server_task = tokio::spawn(server.serve(std::future::pending()));
    let client = kube::Client::try_from(
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?,
    )?;

    // The agent, following the apiserver.
    let node = unique_name("watch-node-");
    let mut config = Config::new(node.clone(), cgroup.path());
    config.sizes = Sizes {
        services: 64,
        backends: 64,
        slots: 256,
        revnat: 256,
        affinity: 256,
        ct: 1024,
    };
    let _pins = Pins {
        bpffs: config.bpffs.clone(),
        node,
    };
    let mut agent = Agent::start(&config)?;
    let inputs = source::watch(client.clone());
    let _agent = AgentTask(Some(tokio::spawn(async move {
        agent.run(inputs).await;
    })));

    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    services.create(&PostParams::default(), &service()?).await?;
    slices
        .create(&PostParams::default(), &slice(&pods)?)
        .await?;

    let all: BTreeSet<String> = pods.iter().cloned().collect();
    let (c, l) = (&cgroup, &lab);
    // 30 random picks over 2 backends miss one with probability ~2e-9.
    tokio::task::block_in_place(|| {
        wait_for(
            "both backends behind the Service",
            Duration::from_secs(30),
            || Ok(probe(c, l, 30)?.ok().filter(|seen| *seen == all)),
        )
    })?;

    // One endpoint left: only it answers.
    let mut current = slices.get("web-1").await?;
    current.endpoints = slice(&pods[1..])?.endpoints;
    slices
        .replace("web-1", &PostParams::default(), &current)
        .await?;
    let only: BTreeSet<String> = [pods[1].clone()].into();
    tokio::task::block_in_place(|| {
        wait_for(
            "only the remaining backend",
            Duration::from_secs(30),
            || Ok(probe(c, l, 20)?.ok().filter(|seen| *seen == only)),
        )
    })?;

    // The Service deleted: its address is no longer translated (the client namespace
    // has no route to it, so the connection fails).
    services.delete("web", &DeleteParams::default()).await?;
    tokio::task::block_in_place(|| {
        wait_for(
            "the Service to stop answering",
            Duration::from_secs(30),
            || Ok(probe(c, l, 1)?.err()),
        )
    })?;
    server_task.abort();
    Ok(())
}
