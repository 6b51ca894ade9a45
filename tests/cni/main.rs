//! The CNI plugin tested as a runtime drives it: the `ferrokube` binary invoked as
//! `ferrokube-cni` (a symlink), `CNI_*` variables in a clean environment, the
//! configuration on stdin, run inside a lab "node" network namespace (`nsenter --net`)
//! with pods in their own namespaces. Needs root (CI is root).
//!
//! `spec.rs` holds the cases the specification fixes; they run against our plugin and
//! against Debian's reference `bridge` + `host-local` plugins, so they encode the spec and
//! not our implementation. `ours.rs` holds what only our plugin promises (its error
//! codes, GC, STATUS, the routed layout, install), `nodes.rs` the two-node lab,
//! `containerd.rs` a real caller (containerd's CRI plugin).

mod containerd;
mod harness;
mod nodes;
mod ours;
mod spec;
