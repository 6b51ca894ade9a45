//! The CRI v1 services: [`Images`] (ImageService over the [`ImageStore`]) and [`Runtime`]
//! (RuntimeService: `Version`, `Status`, the pod sandbox calls over [`Sandboxes`] and the
//! container calls and stats over [`Containers`], Exec, Attach and PortForward handing out
//! [`Streaming`] URLs; checkpoints and container events answer `Unimplemented`).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_server::ImageService;
use k8s_cri::v1::runtime_service_server::RuntimeService;
use tonic::{Request, Response, Status};

use crate::container::{ContainerError, Containers, Phase, Record};
use crate::pull::{Credentials, PullError, Puller};
use crate::sandbox::{Metadata, Sandbox, SandboxError, Sandboxes, Spec, State};
use crate::store::{ImageRecord, ImageStore, StoreError};
use crate::streaming::{ExecRequest, Pending, Streaming, StreamingError};

/// Errors of the service layer, before they become gRPC statuses.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The image store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A sandbox operation failed.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// A container operation failed.
    #[error(transparent)]
    Container(#[from] ContainerError),
    /// The streaming server refused the request.
    #[error(transparent)]
    Streaming(#[from] StreamingError),
    /// A blocking task panicked or was cancelled.
    #[error("internal task failed: {0}")]
    Task(String),
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Status {
        match &e {
            ServiceError::Store(StoreError::Reference(_))
            | ServiceError::Store(StoreError::InvalidArchive(_)) => {
                Status::invalid_argument(e.to_string())
            }
            ServiceError::Store(StoreError::InUse(_)) => Status::failed_precondition(e.to_string()),
            ServiceError::Sandbox(SandboxError::NotFound(_)) => Status::not_found(e.to_string()),
            ServiceError::Sandbox(SandboxError::Invalid(_)) => {
                Status::invalid_argument(e.to_string())
            }
            ServiceError::Sandbox(SandboxError::NameReserved(..)) => {
                Status::already_exists(e.to_string())
            }
            ServiceError::Container(
                ContainerError::NotFound(_) | ContainerError::ImageNotFound(_),
            ) => Status::not_found(e.to_string()),
            ServiceError::Container(ContainerError::Invalid(_)) => {
                Status::invalid_argument(e.to_string())
            }
            ServiceError::Container(ContainerError::NameReserved(..)) => {
                Status::already_exists(e.to_string())
            }
            ServiceError::Container(ContainerError::WrongState(..)) => {
                Status::failed_precondition(e.to_string())
            }
            ServiceError::Streaming(StreamingError::Token(_)) => {
                Status::resource_exhausted(e.to_string())
            }
            _ => Status::internal(e.to_string()),
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ServiceError::Task(e.to_string()))?
        .map_err(|e| ServiceError::Store(e).into())
}

async fn blocking_container<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ServiceError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ServiceError::Task(e.to_string()))?
        .map_err(Status::from)
}

fn container_state(phase: &Phase) -> i32 {
    match phase {
        Phase::Created => cri::ContainerState::ContainerCreated as i32,
        Phase::Running => cri::ContainerState::ContainerRunning as i32,
        Phase::Exited(_) => cri::ContainerState::ContainerExited as i32,
        Phase::Unknown => cri::ContainerState::ContainerUnknown as i32,
    }
}

fn container_status(record: &Record, phase: &Phase) -> cri::ContainerStatus {
    let (finished_at, exit_code, reason) = match phase {
        Phase::Exited(exit) => (
            exit.finished_at,
            exit.code,
            if exit.oom_killed {
                "OOMKilled"
            } else if exit.code == 0 {
                "Completed"
            } else {
                "Error"
            },
        ),
        _ => (0, 0, ""),
    };
    cri::ContainerStatus {
        id: record.id.clone(),
        metadata: Some(cri::ContainerMetadata {
            name: record.name.clone(),
            attempt: record.attempt,
        }),
        state: container_state(phase),
        created_at: record.created_at,
        started_at: record.started_at,
        finished_at,
        exit_code,
        image: Some(cri::ImageSpec {
            image: record.image.clone(),
            ..Default::default()
        }),
        image_ref: record.image_ref.clone(),
        image_id: record.image_id.clone(),
        reason: reason.into(),
        labels: record.labels.clone(),
        annotations: record.annotations.clone(),
        mounts: record
            .mounts
            .iter()
            .map(|(c, h, ro)| cri::Mount {
                container_path: c.clone(),
                host_path: h.clone(),
                readonly: *ro,
                ..Default::default()
            })
            .collect(),
        log_path: record.log_path.clone(),
        ..Default::default()
    }
}

fn cpu_usage(usage: &crate::host::CgroupUsage, now: i64) -> cri::CpuUsage {
    cri::CpuUsage {
        timestamp: now,
        usage_core_nano_seconds: usage.cpu_ns.map(|value| cri::UInt64Value { value }),
        usage_nano_cores: None,
    }
}

fn memory_usage(usage: &crate::host::CgroupUsage, now: i64) -> cri::MemoryUsage {
    let value = |v: Option<u64>| v.map(|value| cri::UInt64Value { value });
    cri::MemoryUsage {
        timestamp: now,
        working_set_bytes: value(usage.working_set),
        available_bytes: None,
        usage_bytes: value(usage.memory_usage),
        rss_bytes: value(usage.rss),
        page_faults: value(usage.page_faults),
        major_page_faults: value(usage.major_page_faults),
    }
}

/// Pod-level stats: the pod cgroup, the sandbox's interfaces, its running containers.
fn sandbox_stats(sandbox: &Sandbox, containers: &Containers) -> cri::PodSandboxStats {
    let now = now_nanos();
    let usage = crate::host::cgroup_usage(&sandbox.cgroup);
    let network = sandbox.namespace_path("net").and_then(|netns| {
        let counters = crate::host::interface_counters(&netns)?;
        let interfaces: Vec<cri::NetworkInterfaceUsage> = counters
            .into_iter()
            .filter(|c| c.name != "lo")
            .map(|c| cri::NetworkInterfaceUsage {
                name: c.name,
                rx_bytes: Some(cri::UInt64Value { value: c.rx_bytes }),
                rx_errors: Some(cri::UInt64Value { value: c.rx_errors }),
                tx_bytes: Some(cri::UInt64Value { value: c.tx_bytes }),
                tx_errors: Some(cri::UInt64Value { value: c.tx_errors }),
            })
            .collect();
        Some(cri::NetworkUsage {
            timestamp: now,
            default_interface: interfaces.iter().find(|i| i.name == "eth0").cloned(),
            interfaces,
        })
    });
    cri::PodSandboxStats {
        attributes: Some(cri::PodSandboxAttributes {
            id: sandbox.id.clone(),
            metadata: Some(cri_metadata(&sandbox.metadata)),
            labels: sandbox.labels.clone(),
            annotations: sandbox.annotations.clone(),
        }),
        linux: Some(cri::LinuxPodSandboxStats {
            cpu: Some(cpu_usage(&usage, now)),
            memory: Some(memory_usage(&usage, now)),
            network,
            process: Some(cri::ProcessUsage {
                timestamp: now,
                process_count: usage.processes.map(|value| cri::UInt64Value { value }),
            }),
            containers: containers
                .list()
                .into_iter()
                .filter(|r| r.sandbox_id == sandbox.id && containers.phase(r) == Phase::Running)
                .map(|r| container_stats(&r, &containers.usage(&r)))
                .collect(),
        }),
        windows: None,
    }
}

fn container_stats(record: &Record, usage: &crate::container::Usage) -> cri::ContainerStats {
    let now = now_nanos();
    let value = |v: Option<u64>| v.map(|value| cri::UInt64Value { value });
    cri::ContainerStats {
        attributes: Some(cri::ContainerAttributes {
            id: record.id.clone(),
            metadata: Some(cri::ContainerMetadata {
                name: record.name.clone(),
                attempt: record.attempt,
            }),
            labels: record.labels.clone(),
            annotations: record.annotations.clone(),
        }),
        cpu: Some(cpu_usage(&usage.cgroup, now)),
        memory: Some(memory_usage(&usage.cgroup, now)),
        writable_layer: Some(cri::FilesystemUsage {
            timestamp: now,
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: usage.writable_dir.display().to_string(),
            }),
            used_bytes: value(Some(usage.writable_bytes)),
            inodes_used: value(Some(usage.writable_inodes)),
        }),
        swap: None,
    }
}

async fn blocking_sandbox<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SandboxError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ServiceError::Task(e.to_string()))?
        .map_err(|e| ServiceError::Sandbox(e).into())
}

fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

const NAMESPACE_MODE_POD: i32 = 0;
const NAMESPACE_MODE_NODE: i32 = 2;

/// Decodes RunPodSandbox's config.
fn sandbox_spec(config: Option<cri::PodSandboxConfig>, handler: String) -> Result<Spec, Status> {
    let config = config.ok_or_else(|| Status::invalid_argument("config is required"))?;
    // One handler: the configured OCI runtime, named "runc" as in containerd's default.
    if !handler.is_empty() && handler != "runc" {
        return Err(Status::invalid_argument(format!(
            "no runtime for {handler:?} is configured (only \"runc\")"
        )));
    }
    let metadata = config
        .metadata
        .ok_or_else(|| Status::invalid_argument("config.metadata is required"))?;
    let linux = config.linux.unwrap_or_default();
    let namespaces = linux
        .security_context
        .and_then(|s| s.namespace_options)
        .unwrap_or(cri::NamespaceOption {
            network: NAMESPACE_MODE_POD,
            pid: 1,
            ipc: NAMESPACE_MODE_POD,
            ..Default::default()
        });
    if namespaces.pid == NAMESPACE_MODE_POD {
        return Err(Status::unimplemented(
            "a pod-wide PID namespace (shareProcessNamespace) needs an infra process, \
             which this runtime does not keep",
        ));
    }
    if namespaces.ipc == NAMESPACE_MODE_NODE {
        return Err(Status::unimplemented("host IPC namespace is not supported"));
    }
    Ok(Spec {
        metadata: Metadata {
            name: metadata.name,
            uid: metadata.uid,
            namespace: metadata.namespace,
            attempt: metadata.attempt,
        },
        hostname: config.hostname,
        log_directory: config.log_directory,
        labels: config.labels,
        annotations: config.annotations,
        cgroup_parent: linux.cgroup_parent,
        host_network: namespaces.network == NAMESPACE_MODE_NODE,
        dns: config
            .dns_config
            .map(|d| (d.servers, d.searches, d.options)),
        runtime_handler: handler,
    })
}

fn cri_metadata(m: &Metadata) -> cri::PodSandboxMetadata {
    cri::PodSandboxMetadata {
        name: m.name.clone(),
        uid: m.uid.clone(),
        namespace: m.namespace.clone(),
        attempt: m.attempt,
    }
}

fn cri_state(state: State) -> i32 {
    match state {
        State::Ready => cri::PodSandboxState::SandboxReady as i32,
        State::NotReady => cri::PodSandboxState::SandboxNotready as i32,
    }
}

fn sandbox_status(s: &Sandbox) -> cri::PodSandboxStatus {
    let mut ips = s.ips.iter();
    cri::PodSandboxStatus {
        id: s.id.clone(),
        metadata: Some(cri_metadata(&s.metadata)),
        state: cri_state(s.state),
        created_at: s.created_at,
        network: Some(cri::PodSandboxNetworkStatus {
            ip: ips.next().cloned().unwrap_or_default(),
            additional_ips: ips.map(|ip| cri::PodIp { ip: ip.clone() }).collect(),
        }),
        linux: Some(cri::LinuxPodSandboxStatus {
            namespaces: Some(cri::Namespace {
                options: Some(cri::NamespaceOption {
                    network: if s.host_network {
                        NAMESPACE_MODE_NODE
                    } else {
                        NAMESPACE_MODE_POD
                    },
                    pid: 1,
                    ipc: NAMESPACE_MODE_POD,
                    ..Default::default()
                }),
            }),
        }),
        labels: s.labels.clone(),
        annotations: s.annotations.clone(),
        runtime_handler: s.runtime_handler.clone(),
    }
}

/// Verbose info, shaped like containerd's (`runtimeSpec.linux.namespaces` with paths) so
/// tools that look for the netns path there find it.
fn sandbox_info(s: &Sandbox) -> HashMap<String, String> {
    let namespaces: Vec<serde_json::Value> = [("network", "net"), ("ipc", "ipc"), ("uts", "uts")]
        .into_iter()
        .filter_map(|(kind, file)| {
            let path = s.namespace_path(file)?;
            Some(serde_json::json!({"type": kind, "path": path}))
        })
        .collect();
    let info = serde_json::json!({
        "runtimeSpec": {"hostname": s.hostname, "linux": {"namespaces": namespaces, "cgroupsPath": s.cgroup}},
        "cniResult": s.cni_result,
        "pid": 0,
    });
    HashMap::from([("info".to_string(), info.to_string())])
}

/// The CRI view of an image record.
pub fn cri_image(record: &ImageRecord) -> cri::Image {
    let user = record.config.user.split(':').next().unwrap_or_default();
    let (uid, username) = match user.parse::<i64>() {
        Ok(uid) => (Some(cri::Int64Value { value: uid }), String::new()),
        Err(_) => (None, user.to_string()),
    };
    cri::Image {
        id: record.id.clone(),
        repo_tags: record.repo_tags.clone(),
        repo_digests: record.repo_digests.clone(),
        size: record.size,
        uid,
        username,
        spec: Some(cri::ImageSpec {
            image: record.id.clone(),
            ..Default::default()
        }),
        pinned: false,
    }
}

fn spec_image(spec: Option<cri::ImageSpec>) -> Result<String, Status> {
    match spec {
        Some(spec) if !spec.image.is_empty() => Ok(spec.image),
        _ => Err(Status::invalid_argument(
            "image spec with an image is required",
        )),
    }
}

/// ImageService over an [`ImageStore`].
#[derive(Debug, Clone)]
pub struct Images {
    store: ImageStore,
    containers: Arc<Containers>,
    puller: Puller,
}

impl Images {
    /// Serves `store`, pulling with `puller`; images `containers` use cannot be removed.
    pub fn new(store: ImageStore, containers: Arc<Containers>, puller: Puller) -> Images {
        Images {
            store,
            containers,
            puller,
        }
    }
}

#[tonic::async_trait]
impl ImageService for Images {
    async fn list_images(
        &self,
        request: Request<cri::ListImagesRequest>,
    ) -> Result<Response<cri::ListImagesResponse>, Status> {
        let filter = request
            .into_inner()
            .filter
            .and_then(|f| f.image)
            .map(|s| s.image)
            .filter(|s| !s.is_empty());
        let store = self.store.clone();
        let images = blocking(move || match filter {
            Some(spec) => Ok(store.find(&spec)?.into_iter().collect()),
            None => store.list(),
        })
        .await?;
        Ok(Response::new(cri::ListImagesResponse {
            images: images.iter().map(cri_image).collect(),
        }))
    }

    async fn image_status(
        &self,
        request: Request<cri::ImageStatusRequest>,
    ) -> Result<Response<cri::ImageStatusResponse>, Status> {
        let request = request.into_inner();
        let spec = spec_image(request.image)?;
        let store = self.store.clone();
        let image = blocking(move || store.find(&spec)).await?;
        let mut info = std::collections::HashMap::new();
        if request.verbose
            && let Some(image) = &image
        {
            let json = serde_json::json!({
                "manifestDigest": image.manifest_digest,
                "layers": image.layers,
                "config": image.config,
            });
            info.insert("info".to_string(), json.to_string());
        }
        Ok(Response::new(cri::ImageStatusResponse {
            image: image.as_ref().map(cri_image),
            info,
        }))
    }

    async fn pull_image(
        &self,
        request: Request<cri::PullImageRequest>,
    ) -> Result<Response<cri::PullImageResponse>, Status> {
        let request = request.into_inner();
        let image = spec_image(request.image)?;
        let auth = request.auth.unwrap_or_default();
        let credentials = Credentials {
            username: auth.username,
            password: auth.password,
            auth: auth.auth,
            registry_token: auth.registry_token,
        };
        let record = self
            .puller
            .pull(&image, &credentials)
            .await
            .map_err(|e| match &e {
                PullError::Reference(_) | PullError::Credentials(_) => {
                    Status::invalid_argument(e.to_string())
                }
                PullError::NotFound(_) => Status::not_found(e.to_string()),
                PullError::Unauthorized(..) => Status::permission_denied(e.to_string()),
                _ => Status::unknown(e.to_string()),
            })?;
        tracing::info!(image, id = %record.id, "pulled image");
        Ok(Response::new(cri::PullImageResponse {
            image_ref: record.id,
        }))
    }

    async fn remove_image(
        &self,
        request: Request<cri::RemoveImageRequest>,
    ) -> Result<Response<cri::RemoveImageResponse>, Status> {
        let spec = spec_image(request.into_inner().image)?;
        let store = self.store.clone();
        let in_use = self.containers.images_in_use();
        blocking(move || store.remove(&spec, &in_use)).await?;
        Ok(Response::new(cri::RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        _request: Request<cri::ImageFsInfoRequest>,
    ) -> Result<Response<cri::ImageFsInfoResponse>, Status> {
        let store = self.store.clone();
        let (bytes, inodes) = blocking(move || store.usage()).await?;
        Ok(Response::new(cri::ImageFsInfoResponse {
            image_filesystems: vec![cri::FilesystemUsage {
                timestamp: now_nanos(),
                fs_id: Some(cri::FilesystemIdentifier {
                    mountpoint: self.store.dir().display().to_string(),
                }),
                used_bytes: Some(cri::UInt64Value { value: bytes }),
                inodes_used: Some(cri::UInt64Value { value: inodes }),
            }],
            container_filesystems: Vec::new(),
        }))
    }
}

/// RuntimeService: runtime identity and readiness, pod sandboxes.
#[derive(Debug, Clone)]
pub struct Runtime {
    sandboxes: Arc<Sandboxes>,
    containers: Arc<Containers>,
    streaming: Arc<Streaming>,
}

impl Runtime {
    /// Serves `sandboxes` and `containers`; streams through `streaming`.
    pub fn new(
        sandboxes: Arc<Sandboxes>,
        containers: Arc<Containers>,
        streaming: Arc<Streaming>,
    ) -> Runtime {
        Runtime {
            sandboxes,
            containers,
            streaming,
        }
    }

    /// Stops (and with `remove`, removes) every container of a sandbox.
    async fn clear_sandbox(&self, sandbox_id: &str, remove: bool) -> Result<(), Status> {
        let Ok(sandbox) = self.sandboxes.get(sandbox_id) else {
            return Ok(());
        };
        let containers = self.containers.clone();
        blocking_container(move || {
            for record in containers.list() {
                if record.sandbox_id != sandbox.id {
                    continue;
                }
                if remove {
                    containers.remove(&record.id)?;
                } else {
                    containers.stop(&record.id, std::time::Duration::ZERO)?;
                }
            }
            Ok(())
        })
        .await
    }

    /// The sandbox `id`, which must be ready (NotFound / FailedPrecondition otherwise).
    fn ready_sandbox(&self, id: &str) -> Result<Sandbox, Status> {
        let sandbox = self.sandboxes.get(id).map_err(ServiceError::from)?;
        if sandbox.state != State::Ready {
            return Err(Status::failed_precondition(format!(
                "pod sandbox {} is not ready",
                sandbox.id
            )));
        }
        Ok(sandbox)
    }

    fn network_ready(&self) -> (bool, String) {
        match self.sandboxes.network_ready() {
            Ok(()) => (true, String::new()),
            Err(e) => (false, e.to_string()),
        }
    }
}

fn unimplemented<T>(method: &str) -> Result<Response<T>, Status> {
    Err(Status::unimplemented(format!(
        "{method} is not implemented by ferrokube's runtime yet"
    )))
}

type EventStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send>>;

#[tonic::async_trait]
impl RuntimeService for Runtime {
    async fn version(
        &self,
        _request: Request<cri::VersionRequest>,
    ) -> Result<Response<cri::VersionResponse>, Status> {
        Ok(Response::new(cri::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: "ferrokube".into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: "v1".into(),
        }))
    }

    async fn status(
        &self,
        _request: Request<cri::StatusRequest>,
    ) -> Result<Response<cri::StatusResponse>, Status> {
        let (network, why) = self.network_ready();
        Ok(Response::new(cri::StatusResponse {
            status: Some(cri::RuntimeStatus {
                conditions: vec![
                    cri::RuntimeCondition {
                        r#type: "RuntimeReady".into(),
                        status: true,
                        ..Default::default()
                    },
                    cri::RuntimeCondition {
                        r#type: "NetworkReady".into(),
                        status: network,
                        reason: if network {
                            String::new()
                        } else {
                            "NetworkPluginNotReady".into()
                        },
                        message: why,
                    },
                ],
            }),
            ..Default::default()
        }))
    }

    async fn run_pod_sandbox(
        &self,
        request: Request<cri::RunPodSandboxRequest>,
    ) -> Result<Response<cri::RunPodSandboxResponse>, Status> {
        let request = request.into_inner();
        let spec = sandbox_spec(request.config, request.runtime_handler)?;
        let sandboxes = self.sandboxes.clone();
        let sandbox = blocking_sandbox(move || sandboxes.run(spec)).await?;
        Ok(Response::new(cri::RunPodSandboxResponse {
            pod_sandbox_id: sandbox.id,
        }))
    }
    async fn stop_pod_sandbox(
        &self,
        request: Request<cri::StopPodSandboxRequest>,
    ) -> Result<Response<cri::StopPodSandboxResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        self.clear_sandbox(&id, false).await?;
        let sandboxes = self.sandboxes.clone();
        blocking_sandbox(move || sandboxes.stop(&id)).await?;
        Ok(Response::new(cri::StopPodSandboxResponse {}))
    }
    async fn remove_pod_sandbox(
        &self,
        request: Request<cri::RemovePodSandboxRequest>,
    ) -> Result<Response<cri::RemovePodSandboxResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        self.clear_sandbox(&id, true).await?;
        let sandboxes = self.sandboxes.clone();
        blocking_sandbox(move || sandboxes.remove(&id)).await?;
        Ok(Response::new(cri::RemovePodSandboxResponse {}))
    }
    async fn pod_sandbox_status(
        &self,
        request: Request<cri::PodSandboxStatusRequest>,
    ) -> Result<Response<cri::PodSandboxStatusResponse>, Status> {
        let request = request.into_inner();
        let sandbox = self
            .sandboxes
            .get(&request.pod_sandbox_id)
            .map_err(ServiceError::from)?;
        Ok(Response::new(cri::PodSandboxStatusResponse {
            status: Some(sandbox_status(&sandbox)),
            info: if request.verbose {
                sandbox_info(&sandbox)
            } else {
                HashMap::new()
            },
            containers_statuses: Vec::new(),
            timestamp: now_nanos(),
        }))
    }
    async fn list_pod_sandbox(
        &self,
        request: Request<cri::ListPodSandboxRequest>,
    ) -> Result<Response<cri::ListPodSandboxResponse>, Status> {
        let filter = request.into_inner().filter.unwrap_or_default();
        let items = self
            .sandboxes
            .list()
            .into_iter()
            .filter(|s| filter.id.is_empty() || s.id.starts_with(&filter.id))
            .filter(|s| {
                filter
                    .state
                    .as_ref()
                    .is_none_or(|state| state.state == cri_state(s.state))
            })
            .filter(|s| {
                filter
                    .label_selector
                    .iter()
                    .all(|(k, v)| s.labels.get(k) == Some(v))
            })
            .map(|s| cri::PodSandbox {
                id: s.id.clone(),
                metadata: Some(cri_metadata(&s.metadata)),
                state: cri_state(s.state),
                created_at: s.created_at,
                labels: s.labels.clone(),
                annotations: s.annotations.clone(),
                runtime_handler: s.runtime_handler.clone(),
            })
            .collect();
        Ok(Response::new(cri::ListPodSandboxResponse { items }))
    }
    async fn create_container(
        &self,
        request: Request<cri::CreateContainerRequest>,
    ) -> Result<Response<cri::CreateContainerResponse>, Status> {
        let request = request.into_inner();
        let sandbox = self.ready_sandbox(&request.pod_sandbox_id)?;
        let config = request
            .config
            .ok_or_else(|| Status::invalid_argument("config is required"))?;
        let containers = self.containers.clone();
        let record = blocking_container(move || Ok(containers.create(&sandbox, config)?)).await?;
        Ok(Response::new(cri::CreateContainerResponse {
            container_id: record.id,
        }))
    }
    async fn start_container(
        &self,
        request: Request<cri::StartContainerRequest>,
    ) -> Result<Response<cri::StartContainerResponse>, Status> {
        let id = request.into_inner().container_id;
        let containers = self.containers.clone();
        blocking_container(move || Ok(containers.start(&id)?)).await?;
        Ok(Response::new(cri::StartContainerResponse {}))
    }
    async fn stop_container(
        &self,
        request: Request<cri::StopContainerRequest>,
    ) -> Result<Response<cri::StopContainerResponse>, Status> {
        let request = request.into_inner();
        let timeout = std::time::Duration::from_secs(u64::try_from(request.timeout).unwrap_or(0));
        let containers = self.containers.clone();
        blocking_container(move || Ok(containers.stop(&request.container_id, timeout)?)).await?;
        Ok(Response::new(cri::StopContainerResponse {}))
    }
    async fn remove_container(
        &self,
        request: Request<cri::RemoveContainerRequest>,
    ) -> Result<Response<cri::RemoveContainerResponse>, Status> {
        let id = request.into_inner().container_id;
        let containers = self.containers.clone();
        blocking_container(move || Ok(containers.remove(&id)?)).await?;
        Ok(Response::new(cri::RemoveContainerResponse {}))
    }
    async fn list_containers(
        &self,
        request: Request<cri::ListContainersRequest>,
    ) -> Result<Response<cri::ListContainersResponse>, Status> {
        let filter = request.into_inner().filter.unwrap_or_default();
        let containers = self
            .containers
            .list()
            .into_iter()
            .filter(|r| filter.id.is_empty() || r.id.starts_with(&filter.id))
            .filter(|r| {
                filter.pod_sandbox_id.is_empty() || r.sandbox_id.starts_with(&filter.pod_sandbox_id)
            })
            .filter(|r| {
                filter
                    .label_selector
                    .iter()
                    .all(|(k, v)| r.labels.get(k) == Some(v))
            })
            .filter_map(|r| {
                let state = container_state(&self.containers.phase(&r));
                if filter.state.as_ref().is_some_and(|s| s.state != state) {
                    return None;
                }
                Some(cri::Container {
                    id: r.id.clone(),
                    pod_sandbox_id: r.sandbox_id.clone(),
                    metadata: Some(cri::ContainerMetadata {
                        name: r.name.clone(),
                        attempt: r.attempt,
                    }),
                    image: Some(cri::ImageSpec {
                        image: r.image.clone(),
                        ..Default::default()
                    }),
                    image_ref: r.image_ref.clone(),
                    image_id: r.image_id.clone(),
                    state,
                    created_at: r.created_at,
                    labels: r.labels.clone(),
                    annotations: r.annotations.clone(),
                })
            })
            .collect();
        Ok(Response::new(cri::ListContainersResponse { containers }))
    }
    async fn container_status(
        &self,
        request: Request<cri::ContainerStatusRequest>,
    ) -> Result<Response<cri::ContainerStatusResponse>, Status> {
        let request = request.into_inner();
        let record = self
            .containers
            .get(&request.container_id)
            .map_err(ServiceError::from)?;
        let phase = self.containers.phase(&record);
        Ok(Response::new(cri::ContainerStatusResponse {
            status: Some(container_status(&record, &phase)),
            info: HashMap::new(),
        }))
    }
    async fn update_container_resources(
        &self,
        request: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Result<Response<cri::UpdateContainerResourcesResponse>, Status> {
        let request = request.into_inner();
        let resources = request.linux.unwrap_or_default();
        let containers = self.containers.clone();
        blocking_container(move || Ok(containers.update(&request.container_id, &resources)?))
            .await?;
        Ok(Response::new(cri::UpdateContainerResourcesResponse {}))
    }
    async fn reopen_container_log(
        &self,
        request: Request<cri::ReopenContainerLogRequest>,
    ) -> Result<Response<cri::ReopenContainerLogResponse>, Status> {
        let id = request.into_inner().container_id;
        let containers = self.containers.clone();
        blocking_container(move || Ok(containers.reopen_log(&id)?)).await?;
        Ok(Response::new(cri::ReopenContainerLogResponse {}))
    }
    async fn exec_sync(
        &self,
        request: Request<cri::ExecSyncRequest>,
    ) -> Result<Response<cri::ExecSyncResponse>, Status> {
        let request = request.into_inner();
        let timeout = u64::try_from(request.timeout)
            .ok()
            .filter(|t| *t > 0)
            .map(std::time::Duration::from_secs);
        let (stdout, stderr, exit_code) = self
            .containers
            .exec_sync(&request.container_id, &request.cmd, timeout)
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(cri::ExecSyncResponse {
            stdout,
            stderr,
            exit_code,
        }))
    }
    async fn exec(
        &self,
        request: Request<cri::ExecRequest>,
    ) -> Result<Response<cri::ExecResponse>, Status> {
        let r = request.into_inner();
        // Upstream's validation, in its order.
        if r.tty && r.stderr {
            return Err(Status::invalid_argument(
                "tty and stderr cannot both be true",
            ));
        }
        if !r.stdin && !r.stdout && !r.stderr {
            return Err(Status::invalid_argument(
                "one of stdin, stdout, or stderr must be set",
            ));
        }
        if r.cmd.is_empty() {
            return Err(Status::invalid_argument("cmd must not be empty"));
        }
        let record = self
            .containers
            .running(&r.container_id)
            .map_err(ServiceError::from)?;
        let url = self
            .streaming
            .url(Pending::Exec(ExecRequest {
                container_id: record.id,
                cmd: r.cmd,
                tty: r.tty,
                stdin: r.stdin,
                stdout: r.stdout,
                stderr: r.stderr,
            }))
            .map_err(ServiceError::from)?;
        Ok(Response::new(cri::ExecResponse { url }))
    }
    async fn attach(
        &self,
        request: Request<cri::AttachRequest>,
    ) -> Result<Response<cri::AttachResponse>, Status> {
        let r = request.into_inner();
        if r.tty && r.stderr {
            return Err(Status::invalid_argument(
                "tty and stderr cannot both be true",
            ));
        }
        if !r.stdin && !r.stdout && !r.stderr {
            return Err(Status::invalid_argument(
                "one of stdin, stdout, and stderr must be set",
            ));
        }
        let record = self
            .containers
            .running(&r.container_id)
            .map_err(ServiceError::from)?;
        let url = self
            .streaming
            .url(Pending::Attach {
                dir: self.containers.state_dir(&record.id),
                stdin: r.stdin,
                stdout: r.stdout,
                stderr: r.stderr,
                tty: r.tty,
            })
            .map_err(ServiceError::from)?;
        Ok(Response::new(cri::AttachResponse { url }))
    }
    async fn port_forward(
        &self,
        request: Request<cri::PortForwardRequest>,
    ) -> Result<Response<cri::PortForwardResponse>, Status> {
        let r = request.into_inner();
        let sandbox = self.ready_sandbox(&r.pod_sandbox_id)?;
        // As upstream, the ports come from the URL's query, not from this request.
        let url = self
            .streaming
            .url(Pending::PortForward {
                netns: sandbox.namespace_path("net"),
                sandbox_id: sandbox.id,
            })
            .map_err(ServiceError::from)?;
        Ok(Response::new(cri::PortForwardResponse { url }))
    }
    async fn container_stats(
        &self,
        request: Request<cri::ContainerStatsRequest>,
    ) -> Result<Response<cri::ContainerStatsResponse>, Status> {
        let id = request.into_inner().container_id;
        let containers = self.containers.clone();
        let stats = blocking_container(move || {
            let record = containers.get(&id)?;
            Ok(container_stats(&record, &containers.usage(&record)))
        })
        .await?;
        Ok(Response::new(cri::ContainerStatsResponse {
            stats: Some(stats),
        }))
    }
    async fn list_container_stats(
        &self,
        request: Request<cri::ListContainerStatsRequest>,
    ) -> Result<Response<cri::ListContainerStatsResponse>, Status> {
        let filter = request.into_inner().filter.unwrap_or_default();
        let containers = self.containers.clone();
        let stats = blocking_container(move || {
            Ok(containers
                .list()
                .into_iter()
                .filter(|r| filter.id.is_empty() || r.id.starts_with(&filter.id))
                .filter(|r| {
                    filter.pod_sandbox_id.is_empty()
                        || r.sandbox_id.starts_with(&filter.pod_sandbox_id)
                })
                .filter(|r| {
                    filter
                        .label_selector
                        .iter()
                        .all(|(k, v)| r.labels.get(k) == Some(v))
                })
                // Stats come from a live cgroup: running containers only.
                .filter(|r| containers.phase(r) == Phase::Running)
                .map(|r| container_stats(&r, &containers.usage(&r)))
                .collect())
        })
        .await?;
        Ok(Response::new(cri::ListContainerStatsResponse { stats }))
    }
    async fn pod_sandbox_stats(
        &self,
        request: Request<cri::PodSandboxStatsRequest>,
    ) -> Result<Response<cri::PodSandboxStatsResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        let sandboxes = self.sandboxes.clone();
        let containers = self.containers.clone();
        let stats = blocking_container(move || {
            let sandbox = sandboxes.get(&id)?;
            Ok(sandbox_stats(&sandbox, &containers))
        })
        .await?;
        Ok(Response::new(cri::PodSandboxStatsResponse {
            stats: Some(stats),
        }))
    }
    async fn list_pod_sandbox_stats(
        &self,
        request: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Result<Response<cri::ListPodSandboxStatsResponse>, Status> {
        let filter = request.into_inner().filter.unwrap_or_default();
        let sandboxes = self.sandboxes.clone();
        let containers = self.containers.clone();
        let stats = blocking_container(move || {
            Ok(sandboxes
                .list()
                .into_iter()
                .filter(|s| s.state == State::Ready)
                .filter(|s| filter.id.is_empty() || s.id.starts_with(&filter.id))
                .filter(|s| {
                    filter
                        .label_selector
                        .iter()
                        .all(|(k, v)| s.labels.get(k) == Some(v))
                })
                .map(|s| sandbox_stats(&s, &containers))
                .collect())
        })
        .await?;
        Ok(Response::new(cri::ListPodSandboxStatsResponse { stats }))
    }
    async fn update_runtime_config(
        &self,
        _r: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Result<Response<cri::UpdateRuntimeConfigResponse>, Status> {
        // The kubelet sends the pod CIDR here; the CNI conflist already carries it.
        Ok(Response::new(cri::UpdateRuntimeConfigResponse {}))
    }
    async fn checkpoint_container(
        &self,
        _r: Request<cri::CheckpointContainerRequest>,
    ) -> Result<Response<cri::CheckpointContainerResponse>, Status> {
        unimplemented("CheckpointContainer")
    }
    type GetContainerEventsStream = EventStream;
    async fn get_container_events(
        &self,
        _r: Request<cri::GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        unimplemented("GetContainerEvents")
    }
    async fn list_metric_descriptors(
        &self,
        _r: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Result<Response<cri::ListMetricDescriptorsResponse>, Status> {
        Ok(Response::new(cri::ListMetricDescriptorsResponse::default()))
    }
    async fn list_pod_sandbox_metrics(
        &self,
        _r: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Result<Response<cri::ListPodSandboxMetricsResponse>, Status> {
        Ok(Response::new(cri::ListPodSandboxMetricsResponse::default()))
    }
    async fn runtime_config(
        &self,
        _r: Request<cri::RuntimeConfigRequest>,
    ) -> Result<Response<cri::RuntimeConfigResponse>, Status> {
        // cgroupfs paths (the default, SYSTEMD = 0, would tell the kubelet otherwise).
        Ok(Response::new(cri::RuntimeConfigResponse {
            linux: Some(cri::LinuxRuntimeConfiguration {
                cgroup_driver: cri::CgroupDriver::Cgroupfs as i32,
            }),
        }))
    }
}
