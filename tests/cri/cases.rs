//! The cases: each takes a started [`Lab`] and speaks CRI to it.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use k8s_cri::v1 as cri;
use serde_json::Value;

use crate::harness::{
    IMAGE, Lab, PLAIN_REGISTRY, POD_CIDR, Serving, TLS_REGISTRY, UNTRUSTED_REGISTRY, build_image,
};

fn spec(image: &str) -> Option<cri::ImageSpec> {
    Some(cri::ImageSpec {
        image: image.into(),
        ..Default::default()
    })
}

async fn status(lab: &mut Lab, image: &str) -> Result<Option<cri::Image>> {
    Ok(lab
        .images
        .image_status(cri::ImageStatusRequest {
            image: spec(image),
            verbose: false,
        })
        .await?
        .into_inner()
        .image)
}

pub async fn version_and_status(lab: &mut Lab) -> Result<()> {
    let version = lab
        .runtime
        .version(cri::VersionRequest::default())
        .await?
        .into_inner();
    ensure!(version.runtime_api_version == "v1", "{version:?}");
    ensure!(!version.runtime_name.is_empty(), "{version:?}");
    let status = lab
        .runtime
        .status(cri::StatusRequest::default())
        .await?
        .into_inner()
        .status
        .unwrap_or_default();
    let ready = |kind: &str| {
        status
            .conditions
            .iter()
            .any(|c| c.r#type == kind && c.status)
    };
    ensure!(ready("RuntimeReady"), "{status:?}");
    ensure!(ready("NetworkReady"), "{status:?}");
    // RuntimeConfig (CRI 1.28+; containerd 1.6 predates it): the cgroup driver the
    // kubelet must match is cgroupfs on these machines.
    match lab
        .runtime
        .runtime_config(cri::RuntimeConfigRequest::default())
        .await
    {
        Ok(config) => {
            let driver = config.into_inner().linux.map(|l| l.cgroup_driver);
            ensure!(
                driver == Some(cri::CgroupDriver::Cgroupfs as i32),
                "cgroup driver {driver:?}"
            );
        }
        Err(status) => ensure!(status.code() == tonic::Code::Unimplemented, "{status:?}"),
    }
    Ok(())
}

pub async fn image_list_and_status(lab: &mut Lab) -> Result<()> {
    let expected_digest = format!("docker.io/library/fkbusybox@{}", lab.image.manifest_digest);
    let listed = lab
        .images
        .list_images(cri::ListImagesRequest::default())
        .await?
        .into_inner()
        .images;
    let image = listed
        .iter()
        .find(|i| i.id == lab.image.config_digest)
        .ok_or_else(|| anyhow::anyhow!("{} not listed: {listed:?}", lab.image.config_digest))?;
    ensure!(image.repo_tags == vec![IMAGE.to_string()], "{image:?}");
    // containerd lists no repo digest for a `ctr images import`ed image (it has only a
    // tag); ours records `repo@manifest digest`, as for a pulled image. Either is CRI.
    ensure!(
        image.repo_digests.iter().all(|d| *d == expected_digest),
        "{image:?}"
    );
    let by_digest = !image.repo_digests.is_empty();
    ensure!(image.size > 0, "{image:?}");
    // Lookups by short name (normalised), full name, ID and repo digest all agree.
    let config = lab.image.config_digest.clone();
    let mut names = vec!["fkbusybox", "fkbusybox:latest", IMAGE, config.as_str()];
    if by_digest {
        names.push(expected_digest.as_str());
    }
    for name in names {
        let found = status(lab, name).await?;
        ensure!(
            found.as_ref().map(|i| i.id.as_str()) == Some(config.as_str()),
            "ImageStatus({name}) = {found:?}"
        );
    }
    // A filter narrows the list.
    let filtered = lab
        .images
        .list_images(cri::ListImagesRequest {
            filter: Some(cri::ImageFilter {
                image: spec("fkbusybox"),
            }),
        })
        .await?
        .into_inner()
        .images;
    ensure!(
        filtered.len() == 1 && filtered[0].id == config,
        "{filtered:?}"
    );
    Ok(())
}

pub async fn image_status_of_missing_image_is_empty(lab: &mut Lab) -> Result<()> {
    ensure!(status(lab, "nosuchimage:1").await?.is_none());
    ensure!(
        status(lab, "docker.io/library/fkbusybox:other")
            .await?
            .is_none()
    );
    Ok(())
}

pub async fn image_remove_is_idempotent(lab: &mut Lab) -> Result<()> {
    let name = "ferrokube.invalid/removable:v1";
    let extra = build_image(lab.dir.path(), name, "removable")?;
    lab.import(&extra.archive)?;
    let found = status(lab, name).await?;
    ensure!(
        found.as_ref().map(|i| i.id.clone()) == Some(extra.config_digest.clone()),
        "{found:?}"
    );
    for _ in 0..2 {
        lab.images
            .remove_image(cri::RemoveImageRequest { image: spec(name) })
            .await?;
        ensure!(
            status(lab, name).await?.is_none(),
            "still there after remove"
        );
    }
    // The other image is untouched.
    ensure!(status(lab, IMAGE).await?.is_some());
    Ok(())
}

pub async fn image_fs_info(lab: &mut Lab) -> Result<()> {
    let info = lab
        .images
        .image_fs_info(cri::ImageFsInfoRequest::default())
        .await?
        .into_inner();
    let fs = info
        .image_filesystems
        .first()
        .ok_or_else(|| anyhow::anyhow!("no image filesystem: {info:?}"))?;
    ensure!(
        fs.fs_id
            .as_ref()
            .is_some_and(|id| !id.mountpoint.is_empty()),
        "{fs:?}"
    );
    // containerd samples usage every 10 s (0 until then): only presence is CRI.
    ensure!(fs.used_bytes.is_some(), "{fs:?}");
    Ok(())
}

fn pod_config(lab: &Lab, name: &str) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}-{}", std::process::id()),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: lab.dir.path().join("logs").join(name).display().to_string(),
        labels: HashMap::from([("app".to_string(), name.to_string())]),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: format!("{}/pod-{name}", lab.cgroup_parent()),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: cri::NamespaceMode::Pod as i32,
                    pid: cri::NamespaceMode::Container as i32,
                    ipc: cri::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn run_pod(lab: &mut Lab, name: &str) -> Result<String> {
    let config = pod_config(lab, name);
    Ok(lab
        .runtime
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await?
        .into_inner()
        .pod_sandbox_id)
}

async fn pod_status(lab: &mut Lab, id: &str) -> Result<cri::PodSandboxStatusResponse> {
    Ok(lab
        .runtime
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: true,
        })
        .await?
        .into_inner())
}

async fn remove_pod(lab: &mut Lab, id: &str) -> Result<()> {
    lab.runtime
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await?;
    lab.runtime
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await?;
    Ok(())
}

async fn list_pods(lab: &mut Lab, filter: cri::PodSandboxFilter) -> Result<Vec<String>> {
    Ok(lab
        .runtime
        .list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(filter),
        })
        .await?
        .into_inner()
        .items
        .into_iter()
        .map(|p| p.id)
        .collect())
}

fn pod_ip(status: &cri::PodSandboxStatusResponse) -> Result<Ipv4Addr> {
    let ip = status
        .status
        .as_ref()
        .and_then(|s| s.network.as_ref())
        .map(|n| n.ip.clone())
        .context("no sandbox network status")?;
    let ip: Ipv4Addr = ip.parse().with_context(|| format!("sandbox IP {ip:?}"))?;
    let cidr: ferrokube_cni::Ipv4Cidr = POD_CIDR.parse()?;
    ensure!(cidr.contains(ip), "{ip} outside {POD_CIDR}");
    Ok(ip)
}

/// The network namespace path from the verbose info (containerd's shape, which ours
/// follows).
fn netns_path(status: &cri::PodSandboxStatusResponse) -> Result<PathBuf> {
    let info: Value = serde_json::from_str(status.info.get("info").context("no verbose info")?)?;
    info["runtimeSpec"]["linux"]["namespaces"]
        .as_array()
        .context("no namespaces in the verbose info")?
        .iter()
        .find(|n| n["type"] == "network")
        .and_then(|n| n["path"].as_str())
        .map(PathBuf::from)
        .context("no network namespace path")
}

fn allocated(dir: &Path) -> HashSet<Ipv4Addr> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
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

fn is_code(result: Result<impl std::fmt::Debug, tonic::Status>, code: tonic::Code) -> Result<()> {
    match result {
        Err(status) if status.code() == code => Ok(()),
        other => bail!("expected {code:?}, got {other:?}"),
    }
}

pub async fn sandbox_lifecycle(lab: &mut Lab) -> Result<()> {
    let id = run_pod(lab, "life").await?;
    let status = pod_status(lab, &id).await?;
    let s = status.status.clone().context("no status")?;
    ensure!(s.id == id, "{s:?}");
    ensure!(
        s.state == cri::PodSandboxState::SandboxReady as i32,
        "{s:?}"
    );
    ensure!(
        s.metadata.as_ref().map(|m| m.name.as_str()) == Some("life"),
        "{s:?}"
    );
    ensure!(s.created_at > 0, "{s:?}");
    ensure!(s.labels.get("app").map(String::as_str) == Some("life"));
    let ip = pod_ip(&status)?;
    ensure!(allocated(&lab.ipam_dir()).contains(&ip), "{ip} not in IPAM");
    ensure!(netns_path(&status)?.exists());
    // Our plugin's routed layout: a host route to the pod while it lives.
    let routes = lab.node.ip(&["route", "show"])?;
    ensure!(
        routes
            .lines()
            .any(|r| r.split_whitespace().next() == Some(&ip.to_string())),
        "no host route to {ip}: {routes}"
    );
    // Filters.
    ensure!(list_pods(lab, Default::default()).await? == vec![id.clone()]);
    let by_label = cri::PodSandboxFilter {
        label_selector: HashMap::from([("app".to_string(), "life".to_string())]),
        ..Default::default()
    };
    ensure!(list_pods(lab, by_label).await? == vec![id.clone()]);
    let other_label = cri::PodSandboxFilter {
        label_selector: HashMap::from([("app".to_string(), "other".to_string())]),
        ..Default::default()
    };
    ensure!(list_pods(lab, other_label).await?.is_empty());
    let not_ready = cri::PodSandboxFilter {
        state: Some(cri::PodSandboxStateValue {
            state: cri::PodSandboxState::SandboxNotready as i32,
        }),
        ..Default::default()
    };
    ensure!(list_pods(lab, not_ready.clone()).await?.is_empty());
    // Stop (twice: idempotent), then the sandbox is NotReady and its address released.
    for _ in 0..2 {
        lab.runtime
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await?;
    }
    let s = pod_status(lab, &id).await?.status.context("no status")?;
    ensure!(
        s.state == cri::PodSandboxState::SandboxNotready as i32,
        "{s:?}"
    );
    ensure!(list_pods(lab, not_ready).await? == vec![id.clone()]);
    ensure!(
        allocated(&lab.ipam_dir()).is_empty(),
        "stop left allocations"
    );
    for _ in 0..2 {
        lab.runtime
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await?;
    }
    is_code(
        lab.runtime
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: id.clone(),
                verbose: false,
            })
            .await,
        tonic::Code::NotFound,
    )?;
    ensure!(list_pods(lab, Default::default()).await?.is_empty());
    let links = lab.node.ip(&["-o", "link", "show"])?;
    ensure!(!links.contains(" fk"), "host veths left: {links}");
    let routes = lab.node.ip(&["route", "show"])?;
    ensure!(
        !routes
            .lines()
            .any(|r| r.split_whitespace().next() == Some(&ip.to_string())),
        "host route to {ip} left: {routes}"
    );
    if lab.kind == crate::harness::Kind::Ours {
        // We made the pod cgroup (containerd leaves it to whoever made the parent).
        let cgroup = format!("/sys/fs/cgroup/memory{}/pod-life", lab.cgroup_parent());
        ensure!(!Path::new(&cgroup).exists(), "{cgroup} left");
    }
    Ok(())
}

pub async fn sandboxes_reach_each_other_over_tcp(lab: &mut Lab) -> Result<()> {
    let mut pods = Vec::new();
    for name in ["p1", "p2"] {
        let id = run_pod(lab, name).await?;
        let status = pod_status(lab, &id).await?;
        pods.push((id, pod_ip(&status)?, netns_path(&status)?));
    }
    let (ip1, ip2) = (pods[0].1, pods[1].1);
    ensure!(ip1 != ip2, "both sandboxes got {ip1}");
    let listener = in_netns(&pods[0].2, move || Ok(TcpListener::bind((ip1, 0))?))?;
    let port = listener.local_addr()?.port();
    let reply = in_netns(&pods[1].2, move || {
        let mut stream = TcpStream::connect_timeout(&(ip1, port).into(), Duration::from_secs(5))?;
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
        remove_pod(lab, id).await?;
    }
    ensure!(allocated(&lab.ipam_dir()).is_empty(), "allocations left");
    Ok(())
}

pub async fn sandbox_unknown_ids(lab: &mut Lab) -> Result<()> {
    let unknown = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    is_code(
        lab.runtime
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: unknown.into(),
                verbose: false,
            })
            .await,
        tonic::Code::NotFound,
    )?;
    is_code(
        lab.runtime
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: unknown.into(),
            })
            .await,
        tonic::Code::NotFound,
    )?;
    // RemovePodSandbox is idempotent: an unknown ID is success.
    lab.runtime
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: unknown.into(),
        })
        .await?;
    Ok(())
}

pub async fn sandbox_duplicate_name_is_refused(lab: &mut Lab) -> Result<()> {
    let id = run_pod(lab, "dup").await?;
    let second = run_pod(lab, "dup").await;
    ensure!(
        second.is_err(),
        "second sandbox with the same name: {second:?}"
    );
    ensure!(list_pods(lab, Default::default()).await? == vec![id.clone()]);
    ensure!(
        allocated(&lab.ipam_dir()).len() == 1,
        "the refused run allocated"
    );
    remove_pod(lab, &id).await?;
    Ok(())
}

pub async fn sandbox_without_metadata_is_refused(lab: &mut Lab) -> Result<()> {
    let mut config = pod_config(lab, "nometa");
    config.metadata = None;
    let result = lab
        .runtime
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await;
    ensure!(result.is_err(), "{result:?}");
    ensure!(list_pods(lab, Default::default()).await?.is_empty());
    ensure!(allocated(&lab.ipam_dir()).is_empty());
    Ok(())
}

fn container_config(lab: &Lab, name: &str, command: &[&str]) -> cri::ContainerConfig {
    let _ = lab;
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: spec(IMAGE),
        command: command.iter().map(|c| c.to_string()).collect(),
        log_path: format!("{name}.log"),
        labels: HashMap::from([("container".to_string(), name.to_string())]),
        ..Default::default()
    }
}

/// CreateContainer in the sandbox `pod` that [`run_pod`] made as `pod_name`.
async fn create(
    lab: &mut Lab,
    (pod, pod_name): (&str, &str),
    config: cri::ContainerConfig,
) -> Result<String, tonic::Status> {
    let sandbox_config = pod_config(lab, pod_name);
    Ok(lab
        .runtime
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config),
            sandbox_config: Some(sandbox_config),
        })
        .await?
        .into_inner()
        .container_id)
}

async fn start(lab: &mut Lab, id: &str) -> Result<()> {
    lab.runtime
        .start_container(cri::StartContainerRequest {
            container_id: id.into(),
        })
        .await?;
    Ok(())
}

async fn container_status(lab: &mut Lab, id: &str) -> Result<cri::ContainerStatus> {
    lab.runtime
        .container_status(cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        })
        .await?
        .into_inner()
        .status
        .context("no container status")
}

async fn wait_exited(lab: &mut Lab, id: &str) -> Result<cri::ContainerStatus> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = container_status(lab, id).await?;
        if status.state == cri::ContainerState::ContainerExited as i32 {
            return Ok(status);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("container {id} not exited after 30s: {status:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn remove_container(lab: &mut Lab, id: &str) -> Result<()> {
    lab.runtime
        .remove_container(cri::RemoveContainerRequest {
            container_id: id.into(),
        })
        .await?;
    Ok(())
}

/// Checks every line has the CRI shape and returns (stream, tag, content) triples.
fn log_entries(path: &Path) -> Result<Vec<(String, String, String)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    text.lines()
        .map(|line| {
            let mut parts = line.splitn(4, ' ');
            let (Some(time), Some(stream), Some(tag)) = (parts.next(), parts.next(), parts.next())
            else {
                bail!("malformed log line {line:?}");
            };
            let content = parts.next().unwrap_or_default();
            // RFC 3339 with nanoseconds: 2006-01-02T15:04:05.999999999Z07:00.
            ensure!(
                time.len() >= 20 && time.as_bytes()[10] == b'T' && time.contains('.'),
                "bad timestamp in {line:?}"
            );
            ensure!(
                stream == "stdout" || stream == "stderr",
                "bad stream in {line:?}"
            );
            ensure!(tag == "F" || tag == "P", "bad tag in {line:?}");
            Ok((stream.to_string(), tag.to_string(), content.to_string()))
        })
        .collect()
}

pub async fn container_exit_codes_and_logs(lab: &mut Lab) -> Result<()> {
    let pod_id = run_pod(lab, "exits").await?;
    let pod = (pod_id.as_str(), "exits");
    let ok = create(
        lab,
        pod,
        container_config(
            lab,
            "ok",
            &["sh", "-c", "echo out; echo err >&2; echo done"],
        ),
    )
    .await?;
    let status = container_status(lab, &ok).await?;
    ensure!(
        status.state == cri::ContainerState::ContainerCreated as i32,
        "{status:?}"
    );
    ensure!(
        status.created_at > 0 && status.started_at == 0,
        "{status:?}"
    );
    start(lab, &ok).await?;
    let status = wait_exited(lab, &ok).await?;
    ensure!(
        status.exit_code == 0 && status.reason == "Completed",
        "{status:?}"
    );
    // Not finished >= started: containerd takes started_at after runc start returns, so
    // a quick process can finish "before" it started.
    ensure!(
        status.started_at > 0 && status.finished_at > 0,
        "{status:?}"
    );
    let log = lab.dir.path().join("logs/exits/ok.log");
    ensure!(status.log_path == log.display().to_string(), "{status:?}");
    let entries = log_entries(&log)?;
    let want = |stream: &str, content: &str| {
        entries
            .iter()
            .any(|(s, t, c)| s == stream && t == "F" && c == content)
    };
    ensure!(
        want("stdout", "out") && want("stderr", "err") && want("stdout", "done"),
        "{entries:?}"
    );
    let fail = create(
        lab,
        pod,
        container_config(lab, "fail", &["sh", "-c", "exit 3"]),
    )
    .await?;
    start(lab, &fail).await?;
    let status = wait_exited(lab, &fail).await?;
    ensure!(
        status.exit_code == 3 && status.reason == "Error",
        "{status:?}"
    );
    // Starting an exited container is refused.
    ensure!(start(lab, &fail).await.is_err());
    let listed = lab
        .runtime
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                pod_sandbox_id: pod_id.clone(),
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .containers;
    ensure!(listed.len() == 2, "{listed:?}");
    for id in [&ok, &fail] {
        remove_container(lab, id).await?;
        remove_container(lab, id).await?;
        is_code(
            lab.runtime
                .container_status(cri::ContainerStatusRequest {
                    container_id: id.to_string(),
                    verbose: false,
                })
                .await,
            tonic::Code::NotFound,
        )?;
    }
    // The log outlives the container: it is the kubelet's.
    ensure!(log.exists());
    remove_pod(lab, pod.0).await?;
    Ok(())
}

pub async fn container_stop_sends_sigterm_then_sigkill(lab: &mut Lab) -> Result<()> {
    let pod_id = run_pod(lab, "stopper").await?;
    let pod = (pod_id.as_str(), "stopper");
    // Handles SIGTERM: stops cleanly with its own exit code and says so in its log.
    let polite = create(
        lab,
        pod,
        container_config(
            lab,
            "polite",
            &[
                "sh",
                "-c",
                "trap 'echo got-term; exit 0' TERM; echo ready; while true; do sleep 0.1; done",
            ],
        ),
    )
    .await?;
    // Ignores SIGTERM: killed after the timeout.
    let stubborn = create(
        lab,
        pod,
        container_config(
            lab,
            "stubborn",
            &["sh", "-c", "trap '' TERM; while true; do sleep 0.1; done"],
        ),
    )
    .await?;
    for id in [&polite, &stubborn] {
        start(lab, id).await?;
        let status = container_status(lab, id).await?;
        ensure!(
            status.state == cri::ContainerState::ContainerRunning as i32,
            "{status:?}"
        );
    }
    let log = lab.dir.path().join("logs/stopper/polite.log");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("ready")
    {
        ensure!(
            std::time::Instant::now() < deadline,
            "polite never got ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    lab.runtime
        .stop_container(cri::StopContainerRequest {
            container_id: polite.clone(),
            timeout: 20,
        })
        .await?;
    let status = container_status(lab, &polite).await?;
    ensure!(
        status.exit_code == 0 && status.reason == "Completed",
        "{status:?}"
    );
    ensure!(
        log_entries(&log)?.iter().any(|(_, _, c)| c == "got-term"),
        "no got-term in the log"
    );
    let began = std::time::Instant::now();
    lab.runtime
        .stop_container(cri::StopContainerRequest {
            container_id: stubborn.clone(),
            timeout: 1,
        })
        .await?;
    let took = began.elapsed();
    ensure!(took < Duration::from_secs(20), "stop took {took:?}");
    let status = container_status(lab, &stubborn).await?;
    ensure!(
        status.state == cri::ContainerState::ContainerExited as i32,
        "{status:?}"
    );
    ensure!(
        status.exit_code == 137 && status.reason == "Error",
        "{status:?}"
    );
    // Stopping again is fine.
    lab.runtime
        .stop_container(cri::StopContainerRequest {
            container_id: stubborn.clone(),
            timeout: 1,
        })
        .await?;
    // RemovePodSandbox removes its containers.
    remove_pod(lab, pod.0).await?;
    is_code(
        lab.runtime
            .container_status(cri::ContainerStatusRequest {
                container_id: stubborn.clone(),
                verbose: false,
            })
            .await,
        tonic::Code::NotFound,
    )?;
    Ok(())
}

pub async fn exec_sync_output_and_exit_code(lab: &mut Lab) -> Result<()> {
    let pod_id = run_pod(lab, "execpod").await?;
    let pod = (pod_id.as_str(), "execpod");
    let id = create(lab, pod, container_config(lab, "main", &["sleep", "3600"])).await?;
    start(lab, &id).await?;
    let exec = |cmd: &[&str]| cri::ExecSyncRequest {
        container_id: id.clone(),
        cmd: cmd.iter().map(|c| c.to_string()).collect(),
        timeout: 10,
    };
    let out = lab
        .runtime
        .exec_sync(exec(&["sh", "-c", "echo hi; echo oops >&2; exit 7"]))
        .await?
        .into_inner();
    ensure!(out.stdout == b"hi\n", "{out:?}");
    ensure!(out.stderr == b"oops\n", "{out:?}");
    ensure!(out.exit_code == 7, "{out:?}");
    // The sandbox's UTS namespace carries the pod hostname; /etc/hostname agrees.
    let out = lab
        .runtime
        .exec_sync(exec(&["hostname"]))
        .await?
        .into_inner();
    ensure!(out.stdout == b"execpod\n", "{out:?}");
    let out = lab
        .runtime
        .exec_sync(exec(&["cat", "/etc/hostname", "/etc/marker"]))
        .await?
        .into_inner();
    ensure!(
        String::from_utf8_lossy(&out.stdout).starts_with("execpod"),
        "{out:?}"
    );
    remove_pod(lab, pod.0).await?;
    Ok(())
}

pub async fn container_unknown_ids_and_duplicates(lab: &mut Lab) -> Result<()> {
    let unknown = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    is_code(
        lab.runtime
            .container_status(cri::ContainerStatusRequest {
                container_id: unknown.into(),
                verbose: false,
            })
            .await,
        tonic::Code::NotFound,
    )?;
    ensure!(start(lab, unknown).await.is_err());
    remove_container(lab, unknown).await?;
    let pod_id = run_pod(lab, "dups").await?;
    let pod = (pod_id.as_str(), "dups");
    let first = create(lab, pod, container_config(lab, "same", &["true"])).await?;
    let second = create(lab, pod, container_config(lab, "same", &["true"])).await;
    ensure!(second.is_err(), "{second:?}");
    let mut bad_image = container_config(lab, "noimage", &["true"]);
    bad_image.image = spec("nosuchimage:1");
    let result = create(lab, pod, bad_image).await;
    ensure!(result.is_err(), "{result:?}");
    let listed = lab
        .runtime
        .list_containers(cri::ListContainersRequest::default())
        .await?
        .into_inner()
        .containers;
    ensure!(listed.len() == 1 && listed[0].id == first, "{listed:?}");
    remove_pod(lab, pod.0).await?;
    Ok(())
}

pub async fn container_memory_limit_oom_kill(lab: &mut Lab) -> Result<()> {
    let pod_id = run_pod(lab, "oompod").await?;
    let pod = (pod_id.as_str(), "oompod");
    let mut config = container_config(
        lab,
        "hog",
        &[
            "sh",
            "-c",
            "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived",
        ],
    );
    config.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 32 * 1024 * 1024,
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = create(lab, pod, config).await?;
    start(lab, &id).await?;
    let status = wait_exited(lab, &id).await?;
    ensure!(status.reason == "OOMKilled", "{status:?}");
    ensure!(status.exit_code != 0, "{status:?}");
    remove_pod(lab, pod.0).await?;
    Ok(())
}

async fn wait_log(path: &Path, needle: &str) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if log_entries(path)
            .unwrap_or_default()
            .iter()
            .any(|(_, _, c)| c == needle)
        {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("{needle:?} never appeared in {}", path.display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn restart_keeps_containers_running(lab: &mut Lab) -> Result<()> {
    let pod_id = run_pod(lab, "survivor").await?;
    let pod = (pod_id.as_str(), "survivor");
    let ip = pod_ip(&pod_status(lab, &pod_id).await?)?;
    let id = create(
        lab,
        pod,
        container_config(
            lab,
            "main",
            &[
                "sh",
                "-c",
                "trap 'echo term; exit 0' TERM; echo before; while true; do sleep 0.1; done",
            ],
        ),
    )
    .await?;
    start(lab, &id).await?;
    let log = lab.dir.path().join("logs/survivor/main.log");
    wait_log(&log, "before").await?;
    lab.restart().await?;
    let status = container_status(lab, &id).await?;
    ensure!(
        status.state == cri::ContainerState::ContainerRunning as i32,
        "{status:?}"
    );
    let sandbox = pod_status(lab, &pod_id).await?;
    ensure!(
        sandbox.status.as_ref().map(|s| s.state) == Some(cri::PodSandboxState::SandboxReady as i32),
        "{sandbox:?}"
    );
    ensure!(pod_ip(&sandbox)? == ip, "the sandbox IP changed");
    let out = lab
        .runtime
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["echo".into(), "alive".into()],
            timeout: 10,
        })
        .await?
        .into_inner();
    ensure!(out.stdout == b"alive\n" && out.exit_code == 0, "{out:?}");
    // The monitor kept the log and still records the exit.
    lab.runtime
        .stop_container(cri::StopContainerRequest {
            container_id: id.clone(),
            timeout: 20,
        })
        .await?;
    let status = container_status(lab, &id).await?;
    ensure!(
        status.exit_code == 0 && status.reason == "Completed",
        "{status:?}"
    );
    wait_log(&log, "term").await?;
    remove_pod(lab, &pod_id).await?;
    Ok(())
}

pub async fn containers_talk_across_sandboxes_over_tcp(lab: &mut Lab) -> Result<()> {
    let server_pod = run_pod(lab, "server").await?;
    let client_pod = run_pod(lab, "client").await?;
    let server_ip = pod_ip(&pod_status(lab, &server_pod).await?)?;
    let server = create(
        lab,
        (&server_pod, "server"),
        container_config(
            lab,
            "http",
            &[
                "sh",
                "-c",
                "while true; do echo hello-from-server | nc -l -p 8080; done",
            ],
        ),
    )
    .await?;
    start(lab, &server).await?;
    let client = create(
        lab,
        (&client_pod, "client"),
        container_config(lab, "main", &["sleep", "3600"]),
    )
    .await?;
    start(lab, &client).await?;
    // The server may still be starting: retry the connection until the deadline.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let out = lab
            .runtime
            .exec_sync(cri::ExecSyncRequest {
                container_id: client.clone(),
                cmd: ["sh", "-c", &format!("nc {server_ip} 8080 </dev/null")]
                    .iter()
                    .map(|c| c.to_string())
                    .collect(),
                timeout: 5,
            })
            .await?
            .into_inner();
        if String::from_utf8_lossy(&out.stdout).contains("hello-from-server") {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("no reply from {server_ip}:8080: {out:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    remove_pod(lab, &server_pod).await?;
    remove_pod(lab, &client_pod).await?;
    ensure!(allocated(&lab.ipam_dir()).is_empty(), "allocations left");
    Ok(())
}

async fn exec_stdout(lab: &mut Lab, id: &str, cmd: &[&str]) -> Result<String> {
    let out = lab
        .runtime
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|c| c.to_string()).collect(),
            timeout: 10,
        })
        .await?
        .into_inner();
    ensure!(out.exit_code == 0, "{cmd:?}: {out:?}");
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The limits land in the container's cgroup v1 files (runc mounts the container's own
/// cgroup directories at /sys/fs/cgroup/<controller>), at creation and after an update.
pub async fn container_limits_reach_the_cgroup(lab: &mut Lab) -> Result<()> {
    let pod_id = run_pod(lab, "limits").await?;
    let mut config = container_config(lab, "main", &["sleep", "3600"]);
    config.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            cpu_shares: 512,
            cpu_quota: 20_000,
            cpu_period: 100_000,
            memory_limit_in_bytes: 64 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = create(lab, (&pod_id, "limits"), config).await?;
    start(lab, &id).await?;
    let read = [
        "cat",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
        "/sys/fs/cgroup/cpu/cpu.shares",
        "/sys/fs/cgroup/cpu/cpu.cfs_quota_us",
        "/sys/fs/cgroup/cpu/cpu.cfs_period_us",
    ];
    let values = exec_stdout(lab, &id, &read).await?;
    ensure!(
        values.split_whitespace().collect::<Vec<_>>() == ["67108864", "512", "20000", "100000"],
        "{values:?}"
    );
    lab.runtime
        .update_container_resources(cri::UpdateContainerResourcesRequest {
            container_id: id.clone(),
            linux: Some(cri::LinuxContainerResources {
                cpu_shares: 256,
                cpu_quota: 50_000,
                cpu_period: 100_000,
                memory_limit_in_bytes: 96 << 20,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await?;
    let values = exec_stdout(lab, &id, &read).await?;
    ensure!(
        values.split_whitespace().collect::<Vec<_>>() == ["100663296", "256", "50000", "100000"],
        "{values:?}"
    );
    remove_pod(lab, &pod_id).await?;
    Ok(())
}

/// Each container has its own writable rootfs over the image: what one container writes
/// is not in its sibling's (same image, same pod), which still sees the image's files.
/// Ours mounts that rootfs as a `volatile` overlay (removing it then does not `syncfs`
/// the node's disk; see `mount_overlay` in the runtime's container.rs).
pub async fn container_rootfs_is_private_and_writable(lab: &mut Lab) -> Result<()> {
    let pod_id = run_pod(lab, "rootfs").await?;
    let mut ids = Vec::new();
    for name in ["one", "two"] {
        let config = container_config(lab, name, &["sleep", "3600"]);
        let id = create(lab, (&pod_id, "rootfs"), config).await?;
        start(lab, &id).await?;
        ids.push(id);
    }
    let written = exec_stdout(
        lab,
        &ids[0],
        &["sh", "-c", "echo one > /written && cat /written"],
    )
    .await?;
    ensure!(written.trim() == "one", "{written:?}");
    let sibling = exec_stdout(
        lab,
        &ids[1],
        &[
            "sh",
            "-c",
            "cat /etc/marker; echo; ls /written || echo absent",
        ],
    )
    .await?;
    ensure!(
        sibling.split_whitespace().collect::<Vec<_>>() == ["standard", "absent"],
        "{sibling:?}"
    );
    if lab.kind == crate::harness::Kind::Ours {
        let rootfs = lab
            .dir
            .path()
            .join("root/containers")
            .join(&ids[0])
            .join("bundle/rootfs")
            .display()
            .to_string();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
        let line = mounts
            .lines()
            .find(|l| l.split_whitespace().nth(4) == Some(rootfs.as_str()))
            .with_context(|| format!("no mount on {rootfs}"))?;
        let (_, fs) = line.split_once(" - ").context("mountinfo line")?;
        let fields: Vec<&str> = fs.split_whitespace().collect();
        ensure!(
            fields.first() == Some(&"overlay")
                && fields.get(2).is_some_and(|options| {
                    // `fsync=volatile` on kernels that have the fsync= option (6.x).
                    options
                        .split(',')
                        .any(|o| o == "volatile" || o == "fsync=volatile")
                }),
            "{line}"
        );
    }
    remove_pod(lab, &pod_id).await?;
    Ok(())
}

/// A broken archive is refused and leaves the image list as it was.
pub async fn broken_image_archive_is_refused(lab: &mut Lab) -> Result<()> {
    let before = lab
        .images
        .list_images(cri::ListImagesRequest::default())
        .await?
        .into_inner()
        .images
        .len();
    let good = build_image(lab.dir.path(), "ferrokube.invalid/broken:v1", "broken")?;
    // Cut the archive in half: blobs go missing or truncated.
    let bytes = std::fs::read(&good.archive)?;
    let broken = lab.dir.path().join("broken-half.tar");
    std::fs::write(&broken, &bytes[..bytes.len() / 2])?;
    ensure!(
        lab.import(&broken).is_err(),
        "a truncated archive was imported"
    );
    let images = lab
        .images
        .list_images(cri::ListImagesRequest::default())
        .await?
        .into_inner()
        .images;
    ensure!(images.len() == before, "{images:?}");
    ensure!(status(lab, "ferrokube.invalid/broken:v1").await?.is_none());
    Ok(())
}

/// A command that does not exist fails CreateContainer (ours: runc create checks it) or
/// StartContainer (containerd creates the task at start); either way nothing runs and
/// after RemoveContainer nothing is listed.
pub async fn missing_command_fails_and_leaves_nothing(lab: &mut Lab) -> Result<()> {
    let pod_id = run_pod(lab, "nocmd").await?;
    let config = container_config(lab, "ghost", &["/no/such/binary"]);
    match create(lab, (&pod_id, "nocmd"), config).await {
        Err(_) => {}
        Ok(id) => {
            ensure!(start(lab, &id).await.is_err(), "a missing binary started");
            let status = container_status(lab, &id).await?;
            ensure!(
                status.state != cri::ContainerState::ContainerRunning as i32,
                "{status:?}"
            );
            remove_container(lab, &id).await?;
        }
    }
    let listed = lab
        .runtime
        .list_containers(cri::ListContainersRequest::default())
        .await?
        .into_inner()
        .containers;
    ensure!(listed.is_empty(), "{listed:?}");
    if lab.kind == crate::harness::Kind::Ours {
        let dir = lab.dir.path().join("root/containers");
        let left: Vec<_> = std::fs::read_dir(&dir)?
            .flatten()
            .map(|e| e.path())
            .collect();
        ensure!(left.is_empty(), "container state left: {left:?}");
        let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
        ensure!(
            !mounts.contains(&dir.display().to_string()),
            "rootfs mount left"
        );
    }
    remove_pod(lab, &pod_id).await?;
    Ok(())
}

/// The kubelet rotates a log by renaming it and calling ReopenContainerLog: new lines go
/// to a new file at the same path, in the same format.
pub async fn reopen_container_log_after_rotation(lab: &mut Lab) -> Result<()> {
    let pod_id = run_pod(lab, "rotate").await?;
    let config = container_config(
        lab,
        "chatty",
        &[
            "sh",
            "-c",
            "i=0; while true; do echo line-$i; i=$((i+1)); sleep 0.1; done",
        ],
    );
    let id = create(lab, (&pod_id, "rotate"), config).await?;
    start(lab, &id).await?;
    let log = lab.dir.path().join("logs/rotate/chatty.log");
    wait_log(&log, "line-1").await?;
    let rotated = lab.dir.path().join("logs/rotate/chatty.log.1");
    std::fs::rename(&log, &rotated)?;
    lab.runtime
        .reopen_container_log(cri::ReopenContainerLogRequest {
            container_id: id.clone(),
        })
        .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let fresh = log_entries(&log).unwrap_or_default();
        if fresh
            .iter()
            .any(|(s, _, c)| s == "stdout" && c.starts_with("line-"))
        {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("nothing written to the reopened log: {fresh:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ensure!(!log_entries(&rotated)?.is_empty());
    remove_pod(lab, &pod_id).await?;
    Ok(())
}

/// ContainerStats and ListContainerStats report CPU time and memory of a running
/// container that has done some work.
pub async fn container_stats(lab: &mut Lab) -> Result<()> {
    let pod_id = run_pod(lab, "stats").await?;
    let config = container_config(
        lab,
        "busy",
        &[
            "sh",
            "-c",
            "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done; echo busy-done; sleep 3600",
        ],
    );
    let id = create(lab, (&pod_id, "stats"), config).await?;
    start(lab, &id).await?;
    wait_log(&lab.dir.path().join("logs/stats/busy.log"), "busy-done").await?;
    let stats = lab
        .runtime
        .container_stats(cri::ContainerStatsRequest {
            container_id: id.clone(),
        })
        .await?
        .into_inner()
        .stats
        .context("no stats")?;
    ensure!(
        stats.attributes.as_ref().map(|a| a.id.as_str()) == Some(id.as_str()),
        "{stats:?}"
    );
    let cpu = stats
        .cpu
        .as_ref()
        .and_then(|c| c.usage_core_nano_seconds.as_ref())
        .map(|v| v.value);
    ensure!(cpu.is_some_and(|ns| ns > 0), "{stats:?}");
    let memory = stats
        .memory
        .as_ref()
        .and_then(|m| m.working_set_bytes.as_ref())
        .map(|v| v.value);
    ensure!(memory.is_some_and(|b| b > 0), "{stats:?}");
    let listed = lab
        .runtime
        .list_container_stats(cri::ListContainerStatsRequest {
            filter: Some(cri::ContainerStatsFilter {
                pod_sandbox_id: pod_id.clone(),
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .stats;
    ensure!(
        listed
            .iter()
            .any(|s| s.attributes.as_ref().is_some_and(|a| a.id == id)),
        "{listed:?}"
    );
    is_code(
        lab.runtime
            .container_stats(cri::ContainerStatsRequest {
                container_id: "0123456789abcdef0123456789abcdef".into(),
            })
            .await,
        tonic::Code::NotFound,
    )?;
    remove_pod(lab, &pod_id).await?;
    Ok(())
}

/// Env, working dir, user, CRI mounts (read-only and read-write) and the sandbox's DNS
/// config as seen from inside the container.
pub async fn container_sees_env_workdir_user_mounts_and_dns(lab: &mut Lab) -> Result<()> {
    let mut pod = pod_config(lab, "inside");
    pod.dns_config = Some(cri::DnsConfig {
        servers: vec!["10.96.0.10".into()],
        searches: vec![
            "default.svc.cluster.local".into(),
            "svc.cluster.local".into(),
        ],
        options: vec!["ndots:5".into()],
    });
    let pod_id = lab
        .runtime
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod.clone()),
            runtime_handler: String::new(),
        })
        .await?
        .into_inner()
        .pod_sandbox_id;
    let shared = lab.dir.path().join("shared");
    let readonly = lab.dir.path().join("readonly");
    std::fs::create_dir_all(&shared)?;
    std::fs::create_dir_all(&readonly)?;
    std::fs::write(readonly.join("config"), "from-the-host")?;
    // The container's user must be able to write the rw mount.
    std::fs::set_permissions(&shared, std::os::unix::fs::PermissionsExt::from_mode(0o777))?;
    let mut config = container_config(lab, "main", &["sleep", "3600"]);
    config.envs = vec![cri::KeyValue {
        key: "GREETING".into(),
        value: "hello world".into(),
    }];
    config.working_dir = "/tmp".into();
    config.mounts = vec![
        cri::Mount {
            container_path: "/shared".into(),
            host_path: shared.display().to_string(),
            ..Default::default()
        },
        cri::Mount {
            container_path: "/config".into(),
            host_path: readonly.display().to_string(),
            readonly: true,
            ..Default::default()
        },
    ];
    config.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            run_as_user: Some(cri::Int64Value { value: 1234 }),
            run_as_group: Some(cri::Int64Value { value: 4321 }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = lab
        .runtime
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(config),
            sandbox_config: Some(pod),
        })
        .await?
        .into_inner()
        .container_id;
    start(lab, &id).await?;
    let out = exec_stdout(
        lab,
        &id,
        &["sh", "-c", "echo \"$GREETING\"; pwd; id -u; id -g; cat /config/config; echo; echo written > /shared/out"],
    )
    .await?;
    ensure!(
        out.lines().collect::<Vec<_>>() == ["hello world", "/tmp", "1234", "4321", "from-the-host"],
        "{out:?}"
    );
    ensure!(std::fs::read_to_string(shared.join("out"))? == "written\n");
    let denied = lab
        .runtime
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["sh".into(), "-c".into(), "echo x > /config/new".into()],
            timeout: 10,
        })
        .await?
        .into_inner();
    ensure!(
        denied.exit_code != 0,
        "wrote into a read-only mount: {denied:?}"
    );
    ensure!(!readonly.join("new").exists());
    let resolv = exec_stdout(lab, &id, &["cat", "/etc/resolv.conf"]).await?;
    for want in [
        "nameserver 10.96.0.10",
        "search default.svc.cluster.local svc.cluster.local",
        "options ndots:5",
    ] {
        ensure!(
            resolv.lines().any(|l| l.trim() == want),
            "{want:?} not in {resolv:?}"
        );
    }
    remove_pod(lab, &pod_id).await?;
    Ok(())
}

pub async fn unknown_runtime_handler_is_refused(lab: &mut Lab) -> Result<()> {
    let config = pod_config(lab, "handler");
    let result = lab
        .runtime
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: "no-such-handler".into(),
        })
        .await;
    ensure!(result.is_err(), "{result:?}");
    ensure!(list_pods(lab, Default::default()).await?.is_empty());
    ensure!(allocated(&lab.ipam_dir()).is_empty());
    Ok(())
}

/// `ferrokube crictl` against the runtime's socket: lists, inspects, execs, reads logs,
/// stops and removes.
pub async fn crictl_drives_the_runtime(lab: &mut Lab) -> Result<()> {
    let socket = format!("unix://{}", lab.dir.path().join("cri.sock").display());
    // In the lab namespace: exec streams from the runtime's loopback streaming server.
    let netns = lab.node.path();
    let crictl_command = |args: &[&str]| {
        let mut command = std::process::Command::new("nsenter");
        command
            .arg(format!("--net={}", netns.display()))
            .arg("--")
            .arg(crate::harness::BIN)
            .args(["crictl", "--runtime-endpoint", &socket])
            .args(args);
        command
    };
    let crictl =
        |args: &[&str]| -> Result<String> { crate::harness::run(&mut crictl_command(args)) };
    let version = tokio::task::block_in_place(|| crictl(&["version"]))?;
    ensure!(version.contains("RuntimeApiVersion:  v1"), "{version}");
    let images = tokio::task::block_in_place(|| crictl(&["images"]))?;
    ensure!(
        images
            .lines()
            .any(|l| l.starts_with("docker.io/library/fkbusybox") && l.contains("latest")),
        "{images}"
    );
    let pod_id = run_pod(lab, "cli").await?;
    let id = create(
        lab,
        (&pod_id, "cli"),
        container_config(
            lab,
            "main",
            &["sh", "-c", "echo from-main; echo to-err >&2; sleep 3600"],
        ),
    )
    .await?;
    start(lab, &id).await?;
    wait_log(&lab.dir.path().join("logs/cli/main.log"), "from-main").await?;
    let pods = tokio::task::block_in_place(|| crictl(&["pods"]))?;
    ensure!(
        pods.contains(&pod_id[..13]) && pods.contains("Ready"),
        "{pods}"
    );
    let ps = tokio::task::block_in_place(|| crictl(&["ps"]))?;
    ensure!(ps.contains(&id[..13]) && ps.contains("Running"), "{ps}");
    let inspect = tokio::task::block_in_place(|| crictl(&["inspect", &id]))?;
    let inspect: Value = serde_json::from_str(&inspect)?;
    ensure!(inspect["status"]["id"] == id.as_str(), "{inspect}");
    // exec streams (Exec + WebSocket) unless -s asks for ExecSync, as real crictl.
    let out = tokio::task::block_in_place(|| crictl(&["exec", &id, "echo", "via-crictl"]))?;
    ensure!(out == "via-crictl\n", "{out:?}");
    let out = tokio::task::block_in_place(|| crictl(&["exec", "-s", &id, "echo", "sync"]))?;
    ensure!(out == "sync\n", "{out:?}");
    let out = tokio::task::block_in_place(|| -> Result<std::process::Output> {
        let mut child = crictl_command(&["exec", "-i", &id, "head", "-c", "6"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        child.stdin.take().context("stdin")?.write_all(b"typed\n")?;
        Ok(child.wait_with_output()?)
    })?;
    ensure!(out.status.success() && out.stdout == b"typed\n", "{out:?}");
    let out = tokio::task::block_in_place(|| {
        crictl_command(&["exec", &id, "sh", "-c", "echo bad >&2; exit 3"]).output()
    })?;
    ensure!(
        out.status.code() == Some(3) && out.stderr == b"bad\n",
        "{out:?}"
    );
    // The same over SPDY/3.1: streams separated, the exit code, stdin ended with a FIN.
    let out = tokio::task::block_in_place(|| {
        crictl_command(&[
            "exec",
            "--transport",
            "spdy",
            &id,
            "sh",
            "-c",
            "echo good; echo bad >&2; exit 3",
        ])
        .output()
    })?;
    ensure!(
        out.status.code() == Some(3) && out.stdout == b"good\n" && out.stderr == b"bad\n",
        "{out:?}"
    );
    let out = tokio::task::block_in_place(|| -> Result<std::process::Output> {
        let mut child = crictl_command(&["exec", "--transport", "spdy", "-i", &id, "cat"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        child.stdin.take().context("stdin")?.write_all(b"typed\n")?;
        Ok(child.wait_with_output()?)
    })?;
    ensure!(out.status.success() && out.stdout == b"typed\n", "{out:?}");
    let logs = tokio::task::block_in_place(|| crictl(&["logs", &id]))?;
    ensure!(logs == "from-main\n", "{logs:?}");
    tokio::task::block_in_place(|| crictl(&["stop", "--grace", "1", &id]))?;
    let ps = tokio::task::block_in_place(|| crictl(&["ps", "-a"]))?;
    ensure!(ps.contains("Exited"), "{ps}");
    tokio::task::block_in_place(|| crictl(&["rm", &id]))?;
    tokio::task::block_in_place(|| crictl(&["stopp", &pod_id]))?;
    tokio::task::block_in_place(|| crictl(&["rmp", &pod_id]))?;
    let pods = tokio::task::block_in_place(|| crictl(&["pods"]))?;
    ensure!(!pods.contains(&pod_id[..13]), "{pods}");
    Ok(())
}

/// Runs `command` to its end within `limit` (killed after it), returning its output.
fn output_within(
    command: &mut std::process::Command,
    limit: Duration,
) -> Result<std::process::Output> {
    let child = spawn_piped(command)?;
    wait_within(child, limit).with_context(|| format!("{command:?}"))
}

fn spawn_piped(command: &mut std::process::Command) -> Result<std::process::Child> {
    command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {command:?}"))
}

/// Waits for `child` to end within `limit` (killed after it), returning its output.
fn wait_within(mut child: std::process::Child, limit: Duration) -> Result<std::process::Output> {
    let deadline = std::time::Instant::now() + limit;
    while child.try_wait()?.is_none() {
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output()?;
            bail!("still running after {limit:?}: {out:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(child.wait_with_output()?)
}

/// `ferrokube crictl` runs a pod end to end from config files (as real crictl: a JSON pod
/// config with snake_case keys, a YAML container config with camelCase keys): runp,
/// create, start, ps, stats, logs (--tail, -f until the container exits), stop, rm,
/// stopp, rmp; bad config files are refused with errors naming the problem; pull with
/// --creds and --auth from the lab registry.
pub async fn crictl_runs_a_pod_end_to_end(lab: &mut Lab) -> Result<()> {
    let socket = format!("unix://{}", lab.dir.path().join("cri.sock").display());
    let crictl_command = |args: &[&str]| {
        let mut command = std::process::Command::new(crate::harness::BIN);
        command
            .args(["crictl", "--runtime-endpoint", &socket])
            .args(args);
        command
    };
    let crictl = |args: &[&str]| -> Result<String> {
        let out = tokio::task::block_in_place(|| {
            output_within(&mut crictl_command(args), Duration::from_secs(60))
        })?;
        ensure!(out.status.success(), "crictl {args:?} failed: {out:?}");
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let refused = |args: &[&str], needle: &str| -> Result<()> {
        let out = tokio::task::block_in_place(|| {
            output_within(&mut crictl_command(args), Duration::from_secs(60))
        })?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            !out.status.success() && stderr.contains(needle),
            "crictl {args:?}: expected a failure naming {needle:?}: {out:?}"
        );
        Ok(())
    };
    let dir = lab.dir.path().to_path_buf();
    let pod_file = dir.join("pod.json");
    let pod = serde_json::json!({
        "metadata": {"name": "e2e", "namespace": "default", "uid": format!("uid-e2e-{}", std::process::id())},
        "hostname": "e2e",
        "log_directory": dir.join("logs/e2e").display().to_string(),
        "labels": {"app": "e2e"},
        "linux": {
            "cgroup_parent": format!("{}/pod-e2e", lab.cgroup_parent()),
            "security_context": {"namespace_options": {"network": "POD", "pid": "CONTAINER", "ipc": 0}}
        }
    });
    std::fs::write(&pod_file, serde_json::to_vec_pretty(&pod)?)?;
    let container_file_with = |name: &str, image: &str, script: &str| -> Result<PathBuf> {
        let path = dir.join(format!("{name}.yaml"));
        std::fs::write(
            &path,
            format!(
                "metadata:\n  name: {name}\nimage:\n  image: {image}\ncommand: [sh, -c, {script:?}]\nlogPath: {name}.log\nlabels:\n  container: {name}\n"
            ),
        )?;
        Ok(path)
    };
    let container_file =
        |name: &str, script: &str| -> Result<PathBuf> { container_file_with(name, IMAGE, script) };
    let main_file = container_file("main", "echo one; echo two >&2; echo three; sleep 3600")?;
    let once_file = container_file("once", "echo first; sleep 2; echo last")?;
    let (pod_file, main_file, once_file) = (
        pod_file.display().to_string(),
        main_file.display().to_string(),
        once_file.display().to_string(),
    );

    // Bad input is refused before anything is created.
    let missing = dir.join("missing.json").display().to_string();
    refused(&["runp", &missing], "reading")?;
    let unknown = dir.join("unknown.yaml");
    std::fs::write(&unknown, "metadata:\n  name: x\nhostnme: typo\n")?;
    refused(
        &["runp", &unknown.display().to_string()],
        "unknown field `hostnme`",
    )?;
    let broken = dir.join("broken.json");
    std::fs::write(&broken, "{\"metadata\": ")?;
    refused(
        &["runp", &broken.display().to_string()],
        "invalid JSON config",
    )?;
    let pods = crictl(&["pods"])?;
    ensure!(pods.lines().count() == 1, "{pods}");

    let pod_id = crictl(&["runp", &pod_file])?.trim().to_string();
    ensure!(pod_id.len() >= 13, "{pod_id:?}");
    let pods = crictl(&["pods"])?;
    ensure!(
        pods.contains(&pod_id[..13]) && pods.contains("Ready"),
        "{pods}"
    );
    let id = crictl(&["create", &pod_id, &main_file, &pod_file])?
        .trim()
        .to_string();
    ensure!(id.len() >= 13, "{id:?}");
    let ps = crictl(&["ps", "-a"])?;
    ensure!(ps.contains(&id[..13]) && ps.contains("Created"), "{ps}");
    crictl(&["start", &id])?;
    wait_log(&dir.join("logs/e2e/main.log"), "three").await?;
    let ps = crictl(&["ps"])?;
    ensure!(
        ps.lines()
            .any(|l| l.starts_with(&id[..13]) && l.contains("Running") && l.contains("main")),
        "{ps}"
    );
    let stats = crictl(&["stats", &id])?;
    ensure!(
        stats.starts_with("CONTAINER") && stats.contains("CPU %"),
        "{stats}"
    );
    ensure!(
        stats
            .lines()
            .any(|l| l.starts_with(&id[..13]) && l.contains("main") && l.contains('B')),
        "{stats}"
    );
    let all = crictl(&["stats", "--pod", &pod_id])?;
    ensure!(all.contains(&id[..13]), "{all}");
    let out = tokio::task::block_in_place(|| {
        output_within(&mut crictl_command(&["logs", &id]), Duration::from_secs(60))
    })?;
    ensure!(
        out.status.success() && out.stdout == b"one\nthree\n" && out.stderr == b"two\n",
        "{out:?}"
    );
    // logs -f, started before the container, follows one that prints, waits and exits,
    // and returns after its exit with all of its output.
    let once = crictl(&["create", &pod_id, &once_file, &pod_file])?
        .trim()
        .to_string();
    let mut follower = spawn_piped(&mut crictl_command(&["logs", "-f", &once]))?;
    if let Err(e) = crictl(&["start", &once]) {
        let _ = follower.kill();
        let _ = follower.wait();
        return Err(e);
    }
    let out = tokio::task::block_in_place(|| wait_within(follower, Duration::from_secs(60)))?;
    ensure!(
        out.status.success() && out.stdout == b"first\nlast\n" && out.stderr.is_empty(),
        "{out:?}"
    );
    let status = container_status(lab, &once).await?;
    ensure!(
        status.state == cri::ContainerState::ContainerExited as i32 && status.exit_code == 0,
        "{status:?}"
    );
    // --tail: the last lines only (stdout alone here: two pipes' order is not defined).
    let out = tokio::task::block_in_place(|| {
        output_within(
            &mut crictl_command(&["logs", "--tail", "1", &once]),
            Duration::from_secs(60),
        )
    })?;
    ensure!(
        out.status.success() && out.stdout == b"last\n" && out.stderr.is_empty(),
        "{out:?}"
    );

    // pull with credentials from the lab registry (htpasswd; see
    // pull_image_with_credentials for the hash).
    const HTPASSWD: &str = "lab:$2b$04$hRLxD29HNyoYZaBImMepaeJDK1IMUqYVbBZmI1xwcb7yLksJdRT7.";
    let registry = lab.start_registry_with(Some((HTPASSWD, "lab:s3cret")))?;
    let image = lab.image.clone();
    lab.push_as(&registry, &image, "private/busybox", "v1", "lab:s3cret")?;
    lab.push_as(&registry, &image, "private/busybox", "v2", "lab:s3cret")?;
    let name = |tag: &str| format!("{}/private/busybox:{tag}", crate::harness::REGISTRY);
    refused(&["pull", &name("v1")], "pulling")?;
    refused(&["pull", "--creds", "lab", &name("v1")], "USER:PASSWORD")?;
    let pulled = crictl(&["pull", "--creds", "lab:s3cret", &name("v1")])?;
    ensure!(
        pulled.starts_with("Image is up to date for ") && pulled.trim().len() > 24,
        "{pulled:?}"
    );
    crictl(&["pull", "--auth", "bGFiOnMzY3JldA==", &name("v2")])?;
    let images = crictl(&["images"])?;
    for tag in ["v1", "v2"] {
        ensure!(
            images.lines().any(|l| {
                l.starts_with(&format!("{}/private/busybox ", crate::harness::REGISTRY))
                    && l.contains(&format!(" {tag} "))
            }),
            "{images}"
        );
    }
    // create pulls a missing image first (with --creds), as real crictl.
    lab.push_as(&registry, &image, "private/busybox", "v3", "lab:s3cret")?;
    let pulled_file = container_file_with("pulled", &name("v3"), "echo pulled; sleep 3600")?
        .display()
        .to_string();
    refused(
        &["create", &pod_id, &pulled_file, &pod_file],
        &format!("pulling {}", name("v3")),
    )?;
    let pulled = crictl(&[
        "create",
        "--creds",
        "lab:s3cret",
        &pod_id,
        &pulled_file,
        &pod_file,
    ])?
    .trim()
    .to_string();
    crictl(&["start", &pulled])?;
    wait_log(&dir.join("logs/e2e/pulled.log"), "pulled").await?;
    crictl(&["stop", "--grace", "1", &pulled])?;
    crictl(&["rm", &pulled])?;

    crictl(&["stop", "--grace", "1", &id])?;
    let ps = crictl(&["ps", "-a"])?;
    ensure!(
        ps.lines()
            .any(|l| l.starts_with(&id[..13]) && l.contains("Exited")),
        "{ps}"
    );
    crictl(&["rm", &id, &once])?;
    let ps = crictl(&["ps", "-a"])?;
    ensure!(!ps.contains(&id[..13]) && !ps.contains(&once[..13]), "{ps}");
    crictl(&["stopp", &pod_id])?;
    crictl(&["rmp", &pod_id])?;
    let pods = crictl(&["pods"])?;
    ensure!(!pods.contains(&pod_id[..13]), "{pods}");

    Ok(())
}

/// PodSandboxStats: the pod's CPU and memory, and its running container's stats.
pub async fn pod_sandbox_stats(lab: &mut Lab) -> Result<()> {
    let pod_id = run_pod(lab, "podstats").await?;
    let config = container_config(
        lab,
        "busy",
        &[
            "sh",
            "-c",
            "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done; echo busy-done; sleep 3600",
        ],
    );
    let id = create(lab, (&pod_id, "podstats"), config).await?;
    start(lab, &id).await?;
    wait_log(&lab.dir.path().join("logs/podstats/busy.log"), "busy-done").await?;
    let stats = lab
        .runtime
        .pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await?
        .into_inner()
        .stats
        .context("no stats")?;
    ensure!(
        stats.attributes.as_ref().map(|a| a.id.as_str()) == Some(pod_id.as_str()),
        "{stats:?}"
    );
    let linux = stats.linux.as_ref().context("no linux stats")?;
    let cpu = linux
        .cpu
        .as_ref()
        .and_then(|c| c.usage_core_nano_seconds.as_ref())
        .map(|v| v.value);
    ensure!(cpu.is_some_and(|ns| ns > 0), "{stats:?}");
    let memory = linux
        .memory
        .as_ref()
        .and_then(|m| m.working_set_bytes.as_ref())
        .map(|v| v.value);
    ensure!(memory.is_some_and(|b| b > 0), "{stats:?}");
    ensure!(
        linux
            .containers
            .iter()
            .any(|c| c.attributes.as_ref().is_some_and(|a| a.id == id)),
        "{stats:?}"
    );
    if lab.kind == crate::harness::Kind::Ours {
        let eth0 = linux
            .network
            .as_ref()
            .and_then(|n| n.default_interface.as_ref());
        ensure!(
            eth0.is_some_and(|i| i.name == "eth0" && i.rx_bytes.is_some()),
            "{stats:?}"
        );
    }
    remove_pod(lab, &pod_id).await?;
    Ok(())
}

/// PullImage with the CRI AuthConfig from a registry that wants Basic auth (htpasswd):
/// anonymous and wrong passwords are refused and store nothing; a user name and password,
/// and the docker-config `auth` form (base64 of `user:password`), both pull.
pub async fn pull_image_with_credentials(lab: &mut Lab) -> Result<()> {
    // A bcrypt (cost 4) hash of "s3cret", made once with Python's crypt module: the
    // registry's htpasswd input, not an expected output.
    const HTPASSWD: &str = "lab:$2b$04$hRLxD29HNyoYZaBImMepaeJDK1IMUqYVbBZmI1xwcb7yLksJdRT7.";
    let registry = lab.start_registry_with(Some((HTPASSWD, "lab:s3cret")))?;
    let image = lab.image.clone();
    lab.push_as(&registry, &image, "private/busybox", "v1", "lab:s3cret")?;
    lab.push_as(&registry, &image, "private/busybox", "v2", "lab:s3cret")?;
    let name = |tag: &str| format!("{}/private/busybox:{tag}", crate::harness::REGISTRY);
    let request = |tag: &str, auth: Option<cri::AuthConfig>| cri::PullImageRequest {
        image: spec(&name(tag)),
        auth,
        sandbox_config: None,
    };
    let basic = |password: &str| cri::AuthConfig {
        username: "lab".into(),
        password: password.into(),
        ..Default::default()
    };

    let anonymous = lab.images.pull_image(request("v1", None)).await;
    ensure!(
        anonymous.is_err(),
        "anonymous pull succeeded: {anonymous:?}"
    );
    let wrong = lab
        .images
        .pull_image(request("v1", Some(basic("wrong"))))
        .await;
    ensure!(
        wrong.is_err(),
        "pull with a wrong password succeeded: {wrong:?}"
    );
    ensure!(
        status(lab, &name("v1")).await?.is_none(),
        "a refused pull stored the image"
    );

    lab.images
        .pull_image(request("v1", Some(basic("s3cret"))))
        .await
        .context("pull with user name and password")?;
    let found = status(lab, &name("v1"))
        .await?
        .context("pulled image not found")?;
    ensure!(found.id == image.config_digest, "{found:?}");

    // "lab:s3cret" in base64, as a docker config.json `auth` field carries it.
    let encoded = cri::AuthConfig {
        auth: "bGFiOnMzY3JldA==".into(),
        ..Default::default()
    };
    lab.images
        .pull_image(request("v2", Some(encoded)))
        .await
        .context("pull with the auth field")?;
    let found = status(lab, &name("v2"))
        .await?
        .context("image pulled with the auth field not found")?;
    ensure!(found.repo_tags.contains(&name("v2")), "{found:?}");
    Ok(())
}

/// PullImage from a registry (Debian's docker-registry in the lab namespace, plain HTTP):
/// the image lands under its name with the pushed config as its ID, runs, and a missing
/// tag is an error that adds nothing.
pub async fn pull_image_from_a_registry(lab: &mut Lab) -> Result<()> {
    let registry = lab.start_registry()?;
    let image = lab.image.clone();
    lab.push(&registry, &image, "pulled/busybox", "v1")?;
    let name = format!("{}/pulled/busybox:v1", crate::harness::REGISTRY);
    let pulled = lab
        .images
        .pull_image(cri::PullImageRequest {
            image: spec(&name),
            auth: None,
            sandbox_config: None,
        })
        .await?
        .into_inner();
    ensure!(!pulled.image_ref.is_empty(), "{pulled:?}");
    let found = status(lab, &name)
        .await?
        .context("pulled image not found")?;
    ensure!(found.id == image.config_digest, "{found:?}");
    ensure!(found.repo_tags.contains(&name), "{found:?}");
    let before = lab
        .images
        .list_images(cri::ListImagesRequest::default())
        .await?
        .into_inner()
        .images
        .len();
    let missing = lab
        .images
        .pull_image(cri::PullImageRequest {
            image: spec(&format!("{}/pulled/busybox:nope", crate::harness::REGISTRY)),
            auth: None,
            sandbox_config: None,
        })
        .await;
    ensure!(missing.is_err(), "{missing:?}");
    let after = lab
        .images
        .list_images(cri::ListImagesRequest::default())
        .await?
        .into_inner()
        .images
        .len();
    ensure!(before == after, "a failed pull changed the image list");
    // A container runs from the pulled name.
    let pod_id = run_pod(lab, "puller").await?;
    let mut config = container_config(lab, "main", &["echo", "pulled"]);
    config.image = spec(&name);
    let id = create(lab, (&pod_id, "puller"), config).await?;
    start(lab, &id).await?;
    let status = wait_exited(lab, &id).await?;
    ensure!(status.exit_code == 0, "{status:?}");
    remove_pod(lab, &pod_id).await?;
    Ok(())
}

/// PullImage over HTTPS from a registry that is not marked insecure, on a non-loopback
/// address, whose certificate comes from a CA the daemon trusts the way the system roots
/// are extended (`SSL_CERT_FILE`, see the harness): the image lands under its name.
pub async fn pull_image_over_https(lab: &mut Lab) -> Result<()> {
    let registry = lab.start_registry_serving(Serving::Trusted, None)?;
    let image = lab.image.clone();
    lab.push(&registry, &image, "secure/busybox", "v1")?;
    let name = format!("{TLS_REGISTRY}/secure/busybox:v1");
    let pulled = lab
        .images
        .pull_image(cri::PullImageRequest {
            image: spec(&name),
            auth: None,
            sandbox_config: None,
        })
        .await
        .context("pull over HTTPS")?
        .into_inner();
    ensure!(!pulled.image_ref.is_empty(), "{pulled:?}");
    let found = status(lab, &name)
        .await?
        .context("image pulled over HTTPS not found")?;
    ensure!(found.id == image.config_digest, "{found:?}");
    ensure!(found.repo_tags.contains(&name), "{found:?}");
    Ok(())
}

/// A pull the transport refuses stores nothing: HTTPS whose certificate comes from a CA
/// the daemon does not trust (an error that names the certificate), and plain HTTP from a
/// registry not marked insecure (HTTPS is tried, and only HTTPS). Both registries hold
/// the image (curl, trusting the CA, pushed it). CRI gives no status code for either;
/// both runtimes answer Unknown, which is not asserted.
pub async fn pull_image_refuses_untrusted_and_plain_registries(lab: &mut Lab) -> Result<()> {
    let untrusted = lab.start_registry_serving(Serving::Untrusted, None)?;
    let plain = lab.start_registry_serving(Serving::PlainUnmarked, None)?;
    let image = lab.image.clone();
    lab.push(&untrusted, &image, "refused/busybox", "v1")?;
    lab.push(&plain, &image, "refused/busybox", "v1")?;
    let count = |lab: &mut Lab| {
        let mut images = lab.images.clone();
        async move {
            Ok::<_, anyhow::Error>(
                images
                    .list_images(cri::ListImagesRequest::default())
                    .await?
                    .into_inner()
                    .images
                    .len(),
            )
        }
    };
    let before = count(lab).await?;
    for (host, what) in [
        (UNTRUSTED_REGISTRY, "an untrusted certificate"),
        (PLAIN_REGISTRY, "plain HTTP, not marked insecure"),
    ] {
        let name = format!("{host}/refused/busybox:v1");
        let refused = lab
            .images
            .pull_image(cri::PullImageRequest {
                image: spec(&name),
                auth: None,
                sandbox_config: None,
            })
            .await;
        let error = match refused {
            Ok(pulled) => bail!("pull over {what} succeeded: {pulled:?}"),
            Err(e) => e,
        };
        if host == UNTRUSTED_REGISTRY {
            ensure!(
                error.message().contains("certificate"),
                "the error for {what} does not name the certificate: {error:?}"
            );
        }
        ensure!(
            status(lab, &name).await?.is_none(),
            "the refused pull over {what} stored the image"
        );
    }
    ensure!(
        count(lab).await? == before,
        "a refused pull changed the image list"
    );
    Ok(())
}

fn exec_request(id: &str, cmd: &[&str]) -> cri::ExecRequest {
    cri::ExecRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|c| c.to_string()).collect(),
        tty: false,
        stdin: false,
        stdout: true,
        stderr: true,
    }
}

async fn exec_url(lab: &mut Lab, request: cri::ExecRequest) -> Result<String> {
    let url = lab.runtime.exec(request).await?.into_inner().url;
    ensure!(
        url.starts_with("http://") && url.contains("/exec/"),
        "{url}"
    );
    Ok(url)
}

/// Exec through the streaming server over WebSocket `v4.channel.k8s.io`: stdout and
/// stderr on their channels, stdin piped in, a non-zero exit code on the error channel, a
/// terminal, single-use URLs, and the CRI call's validation.
pub async fn exec_streams_over_websocket(lab: &mut Lab) -> Result<()> {
    use crate::stream::{Input, Refused, exec, open};
    let pod_id = run_pod(lab, "wsexec").await?;
    let pod = (pod_id.as_str(), "wsexec");
    let id = create(lab, pod, container_config(lab, "main", &["sleep", "3600"])).await?;
    start(lab, &id).await?;
    let v4 = "v4.channel.k8s.io";

    let url = exec_url(
        lab,
        exec_request(&id, &["sh", "-c", "echo out; echo err >&2; exit 3"]),
    )
    .await?;
    let out = exec(lab, &url, v4, &[]).await?;
    ensure!(out.protocol == v4, "{out:?}");
    ensure!(out.stdout() == "out\n", "{out:?}");
    ensure!(out.stderr() == "err\n", "{out:?}");
    ensure!(out.exit_code()? == 3, "{out:?}");
    // The URL worked once.
    match open(lab, &url, v4).await? {
        Err(Refused::Http(status)) => ensure!(status == 404, "second use answered {status}"),
        Ok(_) => bail!("a used exec URL was accepted again"),
    }

    // Stdin in, echoed back; `head -c` ends by itself, since v4 cannot half-close stdin.
    let mut request = exec_request(&id, &["head", "-c", "6"]);
    request.stdin = true;
    request.stderr = false;
    let url = exec_url(lab, request).await?;
    let out = exec(
        lab,
        &url,
        v4,
        &[
            Input::Stdin(b"hel".to_vec()),
            Input::Stdin(b"lo\n".to_vec()),
        ],
    )
    .await?;
    ensure!(out.stdout() == "hello\n", "{out:?}");
    ensure!(out.exit_code()? == 0, "{out:?}");

    // A terminal: stdin/stdout are ttys, a resize reaches it, output comes with terminal
    // line endings, input is echoed. containerd 1.6 drops a terminal's output written right before the
    // process exits (its log: `Failed to pipe "stdout" ... file already closed`), so
    // the command waits for a line after its output, and the echo of that line (written
    // just before the exit) is checked on ours only.
    let mut request = exec_request(
        &id,
        &[
            "sh",
            "-c",
            "test -t 0 && test -t 1 && echo on-a-tty; i=0; \
             until [ \"$(stty size 2>/dev/null)\" = '30 100' ] || [ $i -ge 200 ]; do sleep 0.05; i=$((i+1)); done; \
             echo \"size $(stty size) end\"; read line; exit 4",
        ],
    );
    request.tty = true;
    request.stdin = true;
    request.stderr = false;
    let url = exec_url(lab, request).await?;
    // The resize must reach the container's terminal (the command polls for it, 10s at
    // most, then prints what it sees). Every line ends `\r\n`, the first one too.
    let input = [
        Input::WaitFor(b"on-a-tty\r\n".to_vec()),
        Input::Resize(100, 30),
        Input::WaitFor(b" end\r\n".to_vec()),
        Input::Stdin(b"bye\r".to_vec()),
    ];
    let out = exec(lab, &url, v4, &input).await?;
    ensure!(
        out.stdout().starts_with("on-a-tty\r\nsize 30 100 end\r\n"),
        "{out:?}"
    );
    if lab.kind == crate::harness::Kind::Ours {
        ensure!(
            out.stdout().ends_with("size 30 100 end\r\nbye\r\n"),
            "{out:?}"
        );
    }
    ensure!(out.exit_code()? == 4, "{out:?}");

    // An exec that cannot start, with or without a terminal, ends with a Failure status
    // naming runc's reason (not an exit code: the process never ran).
    for tty in [true, false] {
        let mut request = exec_request(&id, &["/no/such/binary"]);
        request.tty = tty;
        request.stderr = !tty;
        let url = exec_url(lab, request).await?;
        let out = exec(lab, &url, v4, &[]).await?;
        ensure!(
            out.status["status"] == "Failure"
                && out.status["reason"] != "NonZeroExitCode"
                && out.status["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("/no/such/binary") && m.contains("no such file")),
            "tty {tty}: {out:?}"
        );
    }
    // A process that does run and exits 255 is an exit code, not a failure to start.
    let url = exec_url(lab, exec_request(&id, &["sh", "-c", "exit 255"])).await?;
    let out = exec(lab, &url, v4, &[]).await?;
    ensure!(out.exit_code()? == 255, "{out:?}");

    // Validation.
    let unknown = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    is_code(
        lab.runtime.exec(exec_request(unknown, &["true"])).await,
        tonic::Code::NotFound,
    )?;
    let mut no_streams = exec_request(&id, &["true"]);
    no_streams.stdout = false;
    no_streams.stderr = false;
    is_code(
        lab.runtime.exec(no_streams).await,
        tonic::Code::InvalidArgument,
    )?;
    remove_pod(lab, pod.0).await?;
    Ok(())
}

/// Exec over SPDY/3.1 with channel protocol v4 (what kubectl before 1.30 and the
/// kubelet's default path speak): stdout and stderr on their streams, stdin echoed and
/// half-closed with a FIN, the exit code in the error stream's Status, a TTY exec whose
/// resize stream reaches the container, and the preferred protocol picked from several.
pub async fn exec_streams_over_spdy(lab: &mut Lab) -> Result<()> {
    use crate::spdy_client::{Streams, exec};
    use crate::stream::Input;
    let pod_id = run_pod(lab, "spdyexec").await?;
    let pod = (pod_id.as_str(), "spdyexec");
    let id = create(lab, pod, container_config(lab, "main", &["sleep", "3600"])).await?;
    start(lab, &id).await?;
    let v4 = "v4.channel.k8s.io";
    let plain = Streams {
        stdin: false,
        stdout: true,
        stderr: true,
        tty: false,
    };

    let url = exec_url(
        lab,
        exec_request(&id, &["sh", "-c", "echo out; echo err >&2; exit 3"]),
    )
    .await?;
    // Offered in kubectl's order (best first); v4 is picked.
    let offer = [
        v4,
        "v3.channel.k8s.io",
        "v2.channel.k8s.io",
        "channel.k8s.io",
    ];
    let out = exec(lab, &url, &offer, plain, &[]).await?;
    ensure!(out.protocol == v4, "{out:?}");
    ensure!(out.stdout() == "out\n", "{out:?}");
    ensure!(out.stderr() == "err\n", "{out:?}");
    ensure!(out.exit_code()? == 3, "{out:?}");

    let url = exec_url(lab, exec_request(&id, &["true"])).await?;
    let out = exec(lab, &url, &[v4], plain, &[]).await?;
    ensure!(out.exit_code()? == 0, "{out:?}");

    // A process that never started is a failure naming runc's reason, not an exit code.
    let url = exec_url(lab, exec_request(&id, &["/no/such/binary"])).await?;
    let out = exec(lab, &url, &[v4], plain, &[]).await?;
    ensure!(
        out.status["status"] == "Failure"
            && out.status["reason"] != "NonZeroExitCode"
            && out.status["message"]
                .as_str()
                .is_some_and(|m| m.contains("/no/such/binary")),
        "{out:?}"
    );

    // More than one SPDY window of output (64 KiB) arrives whole.
    let url = exec_url(
        lab,
        exec_request(&id, &["head", "-c", "300000", "/dev/zero"]),
    )
    .await?;
    let out = exec(lab, &url, &[v4], plain, &[]).await?;
    ensure!(
        out.stdout.len() == 300_000,
        "got {} bytes",
        out.stdout.len()
    );

    // Stdin in, closed with a FIN (SPDY half-closes natively), echoed back by `cat`.
    let mut request = exec_request(&id, &["cat"]);
    request.stdin = true;
    request.stderr = false;
    let url = exec_url(lab, request).await?;
    let streams = Streams {
        stdin: true,
        stdout: true,
        stderr: false,
        tty: false,
    };
    let input = [
        Input::Stdin(b"hel".to_vec()),
        Input::Stdin(b"lo\n".to_vec()),
        Input::CloseStdin,
    ];
    let out = exec(lab, &url, &[v4], streams, &input).await?;
    ensure!(out.stdout() == "hello\n", "{out:?}");
    ensure!(out.exit_code()? == 0, "{out:?}");

    // A terminal with a resize stream. As over WebSocket: containerd 1.6 may drop a
    // terminal's output written right before the exit, so the last echo is checked on
    // ours only.
    let mut request = exec_request(
        &id,
        &[
            "sh",
            "-c",
            "test -t 0 && test -t 1 && echo on-a-tty; i=0; \
             until [ \"$(stty size 2>/dev/null)\" = '30 100' ] || [ $i -ge 200 ]; do sleep 0.05; i=$((i+1)); done; \
             echo \"size $(stty size) end\"; read line; exit 4",
        ],
    );
    request.tty = true;
    request.stdin = true;
    request.stderr = false;
    let url = exec_url(lab, request).await?;
    let streams = Streams {
        stdin: true,
        stdout: true,
        stderr: false,
        tty: true,
    };
    let input = [
        Input::WaitFor(b"on-a-tty\r\n".to_vec()),
        Input::Resize(100, 30),
        Input::WaitFor(b" end\r\n".to_vec()),
        Input::Stdin(b"bye\r".to_vec()),
    ];
    let out = exec(lab, &url, &[v4], streams, &input).await?;
    ensure!(
        out.stdout().starts_with("on-a-tty\r\nsize 30 100 end\r\n"),
        "{out:?}"
    );
    if lab.kind == crate::harness::Kind::Ours {
        ensure!(
            out.stdout().ends_with("size 30 100 end\r\nbye\r\n"),
            "{out:?}"
        );
    }
    ensure!(out.exit_code()? == 4, "{out:?}");
    remove_pod(lab, pod.0).await?;
    Ok(())
}

/// PortForward over SPDY/3.1 (`portforward.k8s.io`): an error/data stream pair for port
/// 8080 of a busybox `nc` echo server; what goes in on the data stream comes back.
pub async fn port_forward_over_spdy(lab: &mut Lab) -> Result<()> {
    let pod_id = run_pod(lab, "spdypf").await?;
    let pod = (pod_id.as_str(), "spdypf");
    let id = create(
        lab,
        pod,
        container_config(lab, "echo", &["nc", "-ll", "-p", "8080", "-e", "/bin/cat"]),
    )
    .await?;
    start(lab, &id).await?;
    let request = || cri::PortForwardRequest {
        pod_sandbox_id: pod_id.clone(),
        port: vec![8080],
    };
    // The listener comes up asynchronously: retry until it answers.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let data = loop {
        let url = lab.runtime.port_forward(request()).await?.into_inner().url;
        match crate::spdy_client::port_forward(lab, &url, 8080, b"spdy ping\n", b"spdy ping\n")
            .await
        {
            Ok(data) => break data,
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.context("port-forward over spdy never worked")),
        }
    };
    ensure!(data == b"spdy ping\n", "{data:?}");

    // `ferrokube crictl port-forward --transport spdy` in the lab namespace.
    crictl_port_forward_echoes(lab, &pod_id, 18081, Some("spdy"), b"spdy via crictl\n")?;
    remove_pod(lab, pod.0).await?;
    Ok(())
}

/// Protocol negotiation: a client offering v5 then v4. Ours speaks
/// `v5.channel.k8s.io`, whose close channel lets `cat` see the end of stdin; containerd
/// 1.6 predates v5 (added in Kubernetes 1.30) and answers v4, which the case checks
/// instead of the half-close.
pub async fn exec_negotiates_v5_and_half_closes_stdin(lab: &mut Lab) -> Result<()> {
    use crate::stream::{Input, exec};
    let pod_id = run_pod(lab, "wsv5").await?;
    let pod = (pod_id.as_str(), "wsv5");
    let id = create(lab, pod, container_config(lab, "main", &["sleep", "3600"])).await?;
    start(lab, &id).await?;
    let mut request = exec_request(&id, &["cat"]);
    request.stdin = true;
    let url = exec_url(lab, request).await?;
    let offer = "v5.channel.k8s.io, v4.channel.k8s.io";
    match lab.kind {
        crate::harness::Kind::Ours => {
            let input = [Input::Stdin(b"ping\n".to_vec()), Input::CloseStdin];
            let out = exec(lab, &url, offer, &input).await?;
            ensure!(out.protocol == "v5.channel.k8s.io", "{out:?}");
            ensure!(out.stdout() == "ping\n", "{out:?}");
            ensure!(out.exit_code()? == 0, "{out:?}");
        }
        crate::harness::Kind::Containerd => {
            let (ws, protocol) = match crate::stream::open(lab, &url, offer).await? {
                Ok(opened) => opened,
                Err(refused) => bail!("refused: {refused:?}"),
            };
            drop(ws);
            ensure!(
                protocol == "v4.channel.k8s.io",
                "containerd picked {protocol:?}"
            );
        }
    }
    remove_pod(lab, pod.0).await?;
    Ok(())
}

/// PortForward over WebSocket `v4.channel.k8s.io`: a container runs an echo server (busybox
/// `nc -ll -e cat`), data goes through the forward to the pod's 127.0.0.1 and comes back;
/// an unknown sandbox is NotFound.
pub async fn port_forward_over_websocket(lab: &mut Lab) -> Result<()> {
    let pod_id = run_pod(lab, "pfwd").await?;
    let pod = (pod_id.as_str(), "pfwd");
    let id = create(
        lab,
        pod,
        container_config(lab, "echo", &["nc", "-ll", "-p", "8080", "-e", "/bin/cat"]),
    )
    .await?;
    start(lab, &id).await?;
    let request = || cri::PortForwardRequest {
        pod_sandbox_id: pod_id.clone(),
        port: vec![8080],
    };
    // The listener comes up asynchronously: retry the forward until it answers.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let data = loop {
        let url = lab.runtime.port_forward(request()).await?.into_inner().url;
        ensure!(
            url.starts_with("http://") && url.contains("/portforward/"),
            "{url}"
        );
        match crate::stream::port_forward(lab, &url, 8080, b"ping through\n", b"ping through\n")
            .await
        {
            Ok(data) => break data,
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => {
                let status = container_status(lab, &id).await?;
                let log = std::fs::read_to_string(&status.log_path).unwrap_or_default();
                return Err(e.context(format!(
                    "port-forward never worked; echo server state {} exit {} log {log:?}",
                    status.state, status.exit_code
                )));
            }
        }
    };
    ensure!(data == b"ping through\n", "{data:?}");

    // `ferrokube crictl port-forward` in the lab namespace: a local port relays to the pod.
    crictl_port_forward_echoes(lab, &pod_id, 18080, None, b"via crictl\n")?;

    let unknown = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    is_code(
        lab.runtime
            .port_forward(cri::PortForwardRequest {
                pod_sandbox_id: unknown.into(),
                port: vec![8080],
            })
            .await,
        tonic::Code::NotFound,
    )?;
    remove_pod(lab, pod.0).await?;
    Ok(())
}

/// A child process of the test, killed (by its PID) and reaped when dropped.
/// Runs `ferrokube crictl port-forward [--transport T] POD LOCAL:8080` in the lab
/// namespace, checks that it announces the relay, sends `message` through the local port
/// and expects the pod's echo server to send it back; the forwarder is stopped on return.
fn crictl_port_forward_echoes(
    lab: &Lab,
    pod_id: &str,
    local: u16,
    transport: Option<&str>,
    message: &'static [u8],
) -> Result<()> {
    let socket = format!("unix://{}", lab.dir.path().join("cri.sock").display());
    let mut command = std::process::Command::new("nsenter");
    command
        .arg(format!("--net={}", lab.node.path().display()))
        .arg("--")
        .arg(crate::harness::BIN)
        .args(["crictl", "--runtime-endpoint", &socket, "port-forward"]);
    if let Some(transport) = transport {
        command.args(["--transport", transport]);
    }
    let child = command
        .args([pod_id, &format!("{local}:8080")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let mut forwarder = KillOnDrop(child);
    let stdout = forwarder.0.stdout.take().context("stdout")?;
    let line = tokio::task::block_in_place(|| -> Result<String> {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
        Ok(line)
    })?;
    ensure!(
        line.contains(&format!("127.0.0.1:{local} -> 8080")),
        "{line:?}"
    );
    let echoed = lab.node.run_in(move || {
        let mut conn = TcpStream::connect(("127.0.0.1", local))?;
        conn.set_read_timeout(Some(Duration::from_secs(20)))?;
        conn.write_all(message)?;
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        while !got.ends_with(message) {
            let n = conn.read(&mut buf)?;
            ensure!(n > 0, "closed after {got:?}");
            got.extend_from_slice(&buf[..n]);
        }
        Ok(got)
    })?;
    ensure!(echoed == message, "{echoed:?}");
    Ok(())
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Attach over WebSocket v4: a running container's stdout and stderr arrive on their
/// channels, `crictl attach` prints them, a container created with stdin reads what an
/// attach sends; an unknown container is NotFound.
pub async fn attach_streams_output(lab: &mut Lab) -> Result<()> {
    let pod_id = run_pod(lab, "attach").await?;
    let pod = (pod_id.as_str(), "attach");
    let script = "i=0; while true; do echo tick $i; echo tock $i >&2; i=$((i+1)); sleep 0.2; done";
    let id = create(
        lab,
        pod,
        container_config(lab, "main", &["sh", "-c", script]),
    )
    .await?;
    start(lab, &id).await?;
    let request = |id: &str| cri::AttachRequest {
        container_id: id.into(),
        stdin: false,
        tty: false,
        stdout: true,
        stderr: true,
    };
    let url = lab.runtime.attach(request(&id)).await?.into_inner().url;
    ensure!(
        url.starts_with("http://") && url.contains("/attach/"),
        "{url}"
    );
    let out = crate::stream::attach_until(lab, &url, b"", b"tick ", b"tock ").await?;
    ensure!(out.protocol == "v4.channel.k8s.io", "{out:?}");
    ensure!(
        !out.stdout().contains("tock") && !out.stderr().contains("tick"),
        "{out:?}"
    );
    // `ferrokube crictl attach` in the lab namespace prints the output as it comes.
    let socket = format!("unix://{}", lab.dir.path().join("cri.sock").display());
    let child = std::process::Command::new("nsenter")
        .arg(format!("--net={}", lab.node.path().display()))
        .arg("--")
        .arg(crate::harness::BIN)
        .args(["crictl", "--runtime-endpoint", &socket, "attach", &id])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let mut attached = KillOnDrop(child);
    let stdout = attached.0.stdout.take().context("stdout")?;
    let line = tokio::task::block_in_place(|| -> Result<String> {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
        Ok(line)
    })?;
    ensure!(line.starts_with("tick "), "{line:?}");
    drop(attached);

    // A container created with stdin reads what an attach sends.
    let mut config = container_config(
        lab,
        "reader",
        &["sh", "-c", "while read line; do echo got $line; done"],
    );
    config.stdin = true;
    let reader = create(lab, pod, config).await?;
    start(lab, &reader).await?;
    let mut with_stdin = request(&reader);
    with_stdin.stdin = true;
    with_stdin.stderr = false;
    let url = lab.runtime.attach(with_stdin).await?.into_inner().url;
    let out = crate::stream::attach_until(lab, &url, b"hello\n", b"got hello\n", b"").await?;
    ensure!(out.stdout() == "got hello\n", "{out:?}");
    let unknown = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    is_code(
        lab.runtime.attach(request(unknown)).await,
        tonic::Code::NotFound,
    )?;
    remove_pod(lab, pod.0).await?;
    Ok(())
}

/// Waits until the CRI log at `path` has an entry `matches` accepts (stream, content).
async fn wait_log_entry(path: &Path, matches: impl Fn(&str, &str) -> bool) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let entries = log_entries(path).unwrap_or_default();
        if entries.iter().any(|(stream, _, c)| matches(stream, c)) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "the entry never appeared in {}: {entries:?}",
                path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A container with a terminal: stdin and stdout are the terminal, its output reaches the
/// CRI log as stdout (with the terminal's `\r\n` endings); an attach over WebSocket with
/// stdin resizes the terminal and types into it, after a runtime restart too.
pub async fn tty_container_logs_and_attach(lab: &mut Lab) -> Result<()> {
    use crate::stream::{Input, exec};
    let pod_id = run_pod(lab, "ttypod").await?;
    let pod = (pod_id.as_str(), "ttypod");
    let mut config = container_config(
        lab,
        "term",
        &["sh", "-c", "test -t 0 -a -t 1 && echo on-a-tty; sleep 3600"],
    );
    config.tty = true;
    let id = create(lab, pod, config).await?;
    start(lab, &id).await?;
    let log = lab.dir.path().join("logs/ttypod/term.log");
    wait_log_entry(&log, |stream, content| {
        stream == "stdout" && content.trim_end_matches('\r') == "on-a-tty"
    })
    .await?;

    // Waits (as long as the test lets it) for the resize, then for two lines.
    let script = "until [ \"$(stty size)\" = '30 100' ]; do sleep 0.05; done; \
                  echo \"size $(stty size) end\"; read line; echo \"got $line\"; read line";
    let mut config = container_config(lab, "typed", &["sh", "-c", script]);
    config.tty = true;
    config.stdin = true;
    let typed = create(lab, pod, config).await?;
    start(lab, &typed).await?;
    lab.restart().await?;
    let url = lab
        .runtime
        .attach(cri::AttachRequest {
            container_id: typed.clone(),
            stdin: true,
            tty: true,
            stdout: true,
            stderr: false,
        })
        .await?
        .into_inner()
        .url;
    let input = [
        Input::Resize(100, 30),
        Input::WaitFor(b"size 30 100 end\r\n".to_vec()),
        Input::Stdin(b"hello\r".to_vec()),
        Input::WaitFor(b"got hello\r\n".to_vec()),
        Input::Stdin(b"bye\r".to_vec()),
    ];
    let out = exec(lab, &url, "v4.channel.k8s.io", &input).await?;
    // The terminal echoes what was typed.
    ensure!(
        out.stdout()
            .contains("size 30 100 end\r\nhello\r\ngot hello\r\n"),
        "{out:?}"
    );
    ensure!(out.exit_code()? == 0, "{out:?}");
    let log = lab.dir.path().join("logs/ttypod/typed.log");
    wait_log_entry(&log, |stream, content| {
        stream == "stdout" && content.trim_end_matches('\r') == "got hello"
    })
    .await?;
    remove_pod(lab, pod.0).await?;
    Ok(())
}

/// Attach over SPDY/3.1 (`v4.channel.k8s.io`): stdin goes in on its stream (its FIN
/// closes a `stdin_once` container's stdin), stdout and stderr come on theirs, Success on
/// the error stream when the container ends; a container with a terminal gets the resize
/// stream's sizes and the typed input; `ferrokube crictl attach --transport spdy` prints a
/// container's output.
pub async fn attach_over_spdy(lab: &mut Lab) -> Result<()> {
    use crate::spdy_client::{Streams, exec};
    use crate::stream::Input;
    let pod_id = run_pod(lab, "spdyattach").await?;
    let pod = (pod_id.as_str(), "spdyattach");
    let mut config = container_config(
        lab,
        "reader",
        &[
            "sh",
            "-c",
            "while read line; do echo err $line >&2; echo got $line; done",
        ],
    );
    config.stdin = true;
    config.stdin_once = true;
    let reader = create(lab, pod, config).await?;
    start(lab, &reader).await?;
    let url = lab
        .runtime
        .attach(cri::AttachRequest {
            container_id: reader.clone(),
            stdin: true,
            tty: false,
            stdout: true,
            stderr: true,
        })
        .await?
        .into_inner()
        .url;
    let streams = Streams {
        stdin: true,
        stdout: true,
        stderr: true,
        tty: false,
    };
    let input = [
        Input::Stdin(b"hello\n".to_vec()),
        Input::WaitFor(b"got hello\n".to_vec()),
        Input::CloseStdin,
    ];
    let out = exec(lab, &url, &["v4.channel.k8s.io"], streams, &input).await?;
    ensure!(out.protocol == "v4.channel.k8s.io", "{out:?}");
    ensure!(out.stdout() == "got hello\n", "{out:?}");
    ensure!(out.stderr() == "err hello\n", "{out:?}");
    ensure!(out.exit_code()? == 0, "{out:?}");

    // A container with a terminal, attached with a resize stream.
    let script = "until [ \"$(stty size)\" = '30 100' ]; do sleep 0.05; done; \
                  echo \"size $(stty size) end\"; read line; echo \"got $line\"; read line";
    let mut config = container_config(lab, "term", &["sh", "-c", script]);
    config.tty = true;
    config.stdin = true;
    let term = create(lab, pod, config).await?;
    start(lab, &term).await?;
    let url = lab
        .runtime
        .attach(cri::AttachRequest {
            container_id: term.clone(),
            stdin: true,
            tty: true,
            stdout: true,
            stderr: false,
        })
        .await?
        .into_inner()
        .url;
    let streams = Streams {
        stdin: true,
        stdout: true,
        stderr: false,
        tty: true,
    };
    let input = [
        Input::Resize(100, 30),
        Input::WaitFor(b"size 30 100 end\r\n".to_vec()),
        Input::Stdin(b"hello\r".to_vec()),
        Input::WaitFor(b"got hello\r\n".to_vec()),
        Input::Stdin(b"bye\r".to_vec()),
    ];
    let out = exec(lab, &url, &["v4.channel.k8s.io"], streams, &input).await?;
    ensure!(
        out.stdout()
            .contains("size 30 100 end\r\nhello\r\ngot hello\r\n"),
        "{out:?}"
    );
    ensure!(out.exit_code()? == 0, "{out:?}");

    let ticker = create(
        lab,
        pod,
        container_config(
            lab,
            "ticker",
            &[
                "sh",
                "-c",
                "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done",
            ],
        ),
    )
    .await?;
    start(lab, &ticker).await?;
    let socket = format!("unix://{}", lab.dir.path().join("cri.sock").display());
    let child = std::process::Command::new("nsenter")
        .arg(format!("--net={}", lab.node.path().display()))
        .arg("--")
        .arg(crate::harness::BIN)
        .args(["crictl", "--runtime-endpoint", &socket, "attach"])
        .args(["--transport", "spdy", &ticker])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let mut attached = KillOnDrop(child);
    let stdout = attached.0.stdout.take().context("stdout")?;
    let line = tokio::task::block_in_place(|| -> Result<String> {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
        Ok(line)
    })?;
    ensure!(line.starts_with("tick "), "{line:?}");
    drop(attached);
    remove_pod(lab, pod.0).await?;
    Ok(())
}
