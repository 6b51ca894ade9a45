//! Serving the CRI services on a unix socket.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_cri::v1::image_service_server::ImageServiceServer;
use k8s_cri::v1::runtime_service_server::RuntimeServiceServer;
use tokio_stream::wrappers::UnixListenerStream;

use crate::cni::CniExec;
use crate::container::{ContainerError, Containers};
use crate::host::LinuxHost;
use crate::pull::Puller;
use crate::sandbox::{SandboxError, Sandboxes};
use crate::service::{Images, Runtime};
use crate::store::{ImageStore, StoreError};
use crate::streaming::{Streaming, StreamingError};

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The socket could not be created.
    #[error("listening on {0}: {1}")]
    Listen(String, #[source] std::io::Error),
    /// The image store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The container state could not be loaded.
    #[error(transparent)]
    Container(#[from] ContainerError),
    /// The sandbox state could not be loaded.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// The streaming server could not start.
    #[error(transparent)]
    Streaming(#[from] StreamingError),
    /// gRPC serving failed.
    #[error("serving CRI: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Where the runtime keeps state and listens.
#[derive(Debug, Clone)]
pub struct Options {
    /// The unix socket to serve CRI on.
    pub socket: PathBuf,
    /// State root (images, sandboxes, containers).
    pub root: PathBuf,
    /// CNI configuration directory.
    pub cni_conf_dir: PathBuf,
    /// CNI plugin directory.
    pub cni_bin_dir: PathBuf,
    /// Cgroup (under each v1 hierarchy) for pods whose config names no cgroup parent.
    pub cgroup_root: String,
    /// The OCI runtime (runc).
    pub oci_runtime: PathBuf,
    /// The binary run as `<shim> runtime-shim` to monitor each container.
    pub shim: PathBuf,
    /// Registries (`host[:port]`) pulled from over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Where the streaming server (Exec URLs) listens; port 0 picks a free port.
    pub streaming_addr: std::net::SocketAddr,
}

/// Serves CRI on `options.socket` until `shutdown` completes; removes the socket after.
pub async fn serve(
    options: &Options,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let store = ImageStore::open(&options.root)?;
    let network = CniExec {
        conf_dir: options.cni_conf_dir.clone(),
        bin_dir: options.cni_bin_dir.clone(),
    };
    let sandboxes = Sandboxes::open(
        &options.root,
        &options.cgroup_root,
        Arc::new(LinuxHost),
        Arc::new(network),
    )?;
    let containers = Arc::new(Containers::open(
        &options.root,
        options.oci_runtime.clone(),
        options.shim.clone(),
        store.clone(),
    )?);
    let puller = Puller::new(store.clone(), options.insecure_registries.clone());
    let (streaming, streaming_listener) =
        Streaming::bind(options.streaming_addr, containers.clone()).await?;
    tracing::info!(url = streaming.base_url(), "serving streams");
    let streams = tokio::spawn(streaming.clone().serve(streaming_listener));
    let listener = bind(&options.socket)?;
    tracing::info!(socket = %options.socket.display(), root = %options.root.display(), "serving CRI");
    let result = tonic::transport::Server::builder()
        .add_service(RuntimeServiceServer::new(Runtime::new(
            Arc::new(sandboxes),
            containers.clone(),
            streaming,
        )))
        .add_service(ImageServiceServer::new(Images::new(
            store, containers, puller,
        )))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await;
    streams.abort();
    let _ = std::fs::remove_file(&options.socket);
    Ok(result?)
}

fn bind(socket: &Path) -> Result<tokio::net::UnixListener, ServerError> {
    let err = |e| ServerError::Listen(socket.display().to_string(), e);
    if let Some(parent) = socket.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    tokio::net::UnixListener::bind(socket).map_err(err)
}
