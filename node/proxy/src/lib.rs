//! `ferrokube-proxy`: the node's kube-proxy replacement. It owns the user side of the eBPF
//! Service dataplane: loading the kernel programs built from `ebpf/programs` (by this
//! crate's build script), pinning them and their maps under
//! `/sys/fs/bpf/ferrokube/<node>/`, and the sync layer that turns Services and
//! EndpointSlices into the fewest map writes.
//!
//! - [`model`]: desired frontends and backends from Kubernetes objects;
//! - [`sync`]: diff-apply onto the maps ([`maps::MapOps`]);
//! - [`maps`]: the kernel maps (and an in-memory stand-in);
//! - [`maglev`]: Maglev lookup tables;
//! - [`loader`], [`bpffs`]: programs, cgroup attachment, pins, adoption on restart;
//! - [`source`]: inputs (a YAML file, or the apiserver through kube-rs);
//! - [`sockets`]: destroying the sockets sent to backends that are gone;
//! - [`agent`]: all of the above, driven by a stream;
//! - [`events`]: the translation event stream;
//! - [`list`]: what `ferrokube proxy list` prints;
//! - [`metrics`]: Prometheus text for `/metrics` (full maps, entries per map).

pub mod agent;
pub mod bpffs;
pub mod bpflog;
pub mod events;
pub mod list;
pub mod loader;
pub mod maglev;
pub mod maps;
pub mod metrics;
pub mod model;
pub mod sockets;
pub mod source;
pub mod sync;

pub use agent::Agent;
pub use loader::{Config, Maglev, Sizes, Snat, XdpMode};
pub use model::LbAlgorithm;
