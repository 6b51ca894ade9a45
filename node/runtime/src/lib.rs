//! ferrokube's built-in container runtime: a CRI v1 server (`RuntimeService` and
//! `ImageService`) on a unix socket, for the kubelet or any CRI client.
//!
//! It owns:
//! - [`reference`](mod@reference): image references, normalised as upstream (`busybox` ->
//!   `docker.io/library/busybox:latest`);
//! - [`store`]: the content-addressed image store under `<root>/images` (verified blobs,
//!   layers unpacked once and shared, OCI-layout and docker-archive imports);
//! - [`pull`]: PullImage over the registry v2 protocol into the store;
//! - [`sandbox`]: pod sandboxes (no pause process: namespaces pinned by bind mounts, see
//!   there why), networked by [`cni`] (plugins executed per the CNI spec), with the
//!   privileged steps behind [`host::Host`];
//! - [`container`]: containers through runc (overlayfs rootfs, `config.json` built with
//!   `oci-spec`), each watched by a [`shim`] process that holds its stdio, writes the CRI
//!   log and records its exit, so containers outlive a runtime restart;
//! - [`streaming`]: the streaming server behind Exec, Attach and PortForward (single-use
//!   token URLs; WebSocket channel protocols v4/v5 and SPDY/3.1 for exec, with or without
//!   a terminal, attach to a container through its shim, port forwarding into the
//!   sandbox's network namespace);
//! - [`tty`]: terminals runc allocates (`--console-socket`), and the TTY exec helper;
//! - [`service`]: the CRI services over all of the above, and [`server`]: serving them.
//!
//! Not built yet: checkpoints, container events.
//!
//! The CRI v1 messages and the tonic 0.14 server traits come from the `k8s-cri` crate
//! (generated from upstream's `api.proto`), so there is no `proto/` directory here.

pub mod cni;
pub mod container;
pub mod host;
pub mod pull;
pub mod reference;
pub mod sandbox;
pub mod server;
pub mod service;
pub mod shim;
pub mod store;
pub mod streaming;
pub mod tty;
