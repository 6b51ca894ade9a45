//! `ferrokube proxy list`: each frontend with its backends and counters, read from the
//! pinned maps (what `cilium bpf lb list` shows).

use std::fmt::Write as _;
use std::path::Path;

use ferrokube_ebpf_common::Counters;

use crate::bpffs::{self, BpffsError};
use crate::maps::{KernelMaps, MapOps, MapsError};
use crate::model::{BackendAddr, Frontend};

/// Errors listing.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    /// The pin directory is unusable.
    #[error(transparent)]
    Bpffs(#[from] BpffsError),
    /// A node's maps could not be read.
    #[error("node {node}: {source}")]
    Maps {
        /// The node.
        node: String,
        /// Why.
        #[source]
        source: MapsError,
    },
}

/// One backend of a frontend.
#[derive(Debug, Clone)]
pub struct BackendReport {
    /// Its address.
    pub addr: BackendAddr,
    /// Its id in the maps.
    pub id: u32,
    /// Its counters (over all the frontends that use it).
    pub counters: Counters,
}

/// One frontend.
#[derive(Debug, Clone)]
pub struct FrontendReport {
    /// The Service address, port, protocol.
    pub frontend: Frontend,
    /// Its id in the maps.
    pub service_id: u32,
    /// Its counters.
    pub counters: Counters,
    /// Session affinity timeout in seconds (zero: none).
    pub affinity_timeout: u32,
    /// A NodePort, ExternalIP or LoadBalancer IP frontend (translated from outside too).
    pub external: bool,
    /// Its backends in slot order.
    pub backends: Vec<BackendReport>,
    /// New flows from outside pick backends by Maglev (else at random).
    pub maglev: bool,
}

/// One node's frontends, sorted.
#[derive(Debug, Clone)]
pub struct NodeReport {
    /// The node.
    pub node: String,
    /// Its frontends.
    pub frontends: Vec<FrontendReport>,
    /// The XDP fast path's counters, when its link is pinned (attached).
    pub xdp: Option<crate::loader::XdpCounters>,
    /// Each map's entries and size: `(name, entries, capacity)`.
    pub maps: Vec<(&'static str, usize, u32)>,
}

/// Reads the frontends of one node (or of every node with pins when `node` is `None`).
pub fn list(bpffs: &Path, node: Option<&str>) -> Result<Vec<NodeReport>, ListError> {
    let (nodes, all) = match node {
        Some(node) => (vec![node.to_string()], false),
        None => (bpffs::nodes(bpffs)?, true),
    };
    let mut out = Vec::new();
    for node in nodes {
        let dir = bpffs::pin_dir(bpffs, &node)?;
        let maps_error = |source| ListError::Maps {
            node: node.clone(),
            source,
        };
        let maps = match KernelMaps::from_pins(&dir) {
            Ok(maps) => maps,
            // Listing every node: one whose pins are not all there is being set up or
            // reset right now; skip it rather than fail the whole listing.
            Err(e) if all && e.is_not_found() => continue,
            Err(e) => return Err(maps_error(e)),
        };
        let frontends = report(&maps).map_err(maps_error)?;
        let xdp = if crate::loader::xdp_link_path(&dir).exists() {
            Some(crate::loader::xdp_counters(&dir).map_err(maps_error)?)
        } else {
            None
        };
        let state = maps.dump().map_err(maps_error)?;
        let capacity = maps.capacity();
        let usage = vec![
            (
                ferrokube_ebpf_common::map_names::SERVICES,
                state.services.len(),
                capacity.services,
            ),
            (
                ferrokube_ebpf_common::map_names::SLOTS,
                state.slots.len(),
                capacity.slots,
            ),
            (
                ferrokube_ebpf_common::map_names::BACKENDS,
                state.backends.len(),
                capacity.backends,
            ),
        ];
        out.push(NodeReport {
            node,
            frontends,
            xdp,
            maps: usage,
        });
    }
    Ok(out)
}

/// The frontends in a set of maps.
pub fn report(maps: &impl MapOps) -> Result<Vec<FrontendReport>, MapsError> {
    let state = maps.dump()?;
    let slots: std::collections::HashMap<_, _> = state.slots.iter().copied().collect();
    let backends: std::collections::HashMap<_, _> = state.backends.iter().copied().collect();
    let mut out = Vec::new();
    for (key, value) in &state.services {
        let Some(frontend) = Frontend::from_key(key) else {
            continue;
        };
        let mut list = Vec::new();
        for slot in 0..value.count {
            let key = ferrokube_ebpf_common::SlotKey {
                service_id: value.service_id,
                slot,
            };
            let Some(id) = slots.get(&key) else { continue };
            let Some(addr) = backends.get(id).and_then(BackendAddr::from_value) else {
                continue;
            };
            list.push(BackendReport {
                addr,
                id: *id,
                counters: maps.backend_counters(*id)?,
            });
        }
        out.push(FrontendReport {
            frontend,
            service_id: value.service_id,
            counters: maps.service_counters(value.service_id)?,
            affinity_timeout: value.affinity_timeout,
            external: value.flags & ferrokube_ebpf_common::SERVICE_EXTERNAL != 0,
            backends: list,
            maglev: value.flags & ferrokube_ebpf_common::SERVICE_MAGLEV != 0,
        });
    }
    out.sort_by_key(|f| f.frontend);
    Ok(out)
}

/// Renders reports as text, one frontend per paragraph.
pub fn render(reports: &[NodeReport]) -> String {
    let mut out = String::new();
    for node in reports {
        let _ = writeln!(
            out,
            "node {} ({} frontends)",
            node.node,
            node.frontends.len()
        );
        if let Some(x) = &node.xdp {
            let _ = writeln!(
                out,
                "  xdp fast path: attached  new flows {}  forward {}  reverse {}  fallback {}",
                x.new_flows, x.forward, x.reverse, x.fallback
            );
        }
        let maps: Vec<String> = node
            .maps
            .iter()
            .map(|(name, entries, capacity)| {
                let full = if *entries as u64 >= u64::from(*capacity) {
                    " FULL"
                } else {
                    ""
                };
                format!("{name} {entries}/{capacity}{full}")
            })
            .collect();
        if !maps.is_empty() {
            let _ = writeln!(out, "  maps: {}", maps.join(", "));
        }
        for f in &node.frontends {
            let _ = writeln!(
                out,
                "  {:<28} {:<8} id {:<6} translated {:<8} refused {}{}{}{}",
                f.frontend.to_string(),
                if f.external { "external" } else { "cluster" },
                f.service_id,
                f.counters.translations,
                f.counters.refused,
                if f.maglev { "  maglev" } else { "" },
                if f.affinity_timeout > 0 {
                    format!("  affinity ClientIP {}s", f.affinity_timeout)
                } else {
                    String::new()
                },
                if f.backends.is_empty() {
                    "  (no backends: refuses)"
                } else {
                    ""
                }
            );
            for b in &f.backends {
                let _ = writeln!(
                    out,
                    "    -> {:<25} id {:<6} translated {}{}",
                    b.addr.to_string(),
                    b.id,
                    b.counters.translations,
                    if b.addr.local { "  (local)" } else { "" }
                );
            }
        }
    }
    out
}
