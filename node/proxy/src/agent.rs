//! The node agent: loads (or adopts) the dataplane and feeds the sync layer from a
//! stream of inputs until the stream ends.

use std::path::{Path, PathBuf};

use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use ferrokube_ebpf_common::{RevNatKey, RevNatValue};
use futures::{Stream, StreamExt as _};
use tracing::{error, info, warn};

use crate::loader::{Config, Dataplane, LoadError};
use crate::maps::KernelMaps;
use crate::metrics::{self, Published};
use crate::model::BackendAddr;
use crate::sockets;
use crate::source::SourceError;
use crate::sync::{ApplyStats, Input, Limits, SyncError, Syncer};

/// Errors starting the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Loading or attaching failed.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Adopting the pinned maps' contents failed.
    #[error(transparent)]
    Sync(#[from] SyncError),
}

/// A running dataplane and its sync layer.
#[derive(Debug)]
pub struct Agent {
    dataplane: Dataplane,
    syncer: Syncer<KernelMaps>,
    /// The load-balanced cgroup: where the sockets to destroy live.
    cgroup: PathBuf,
    /// Sockets destroyed because their backend went away.
    destroyed: u64,
    /// Inputs applied, and failed.
    syncs: (u64, u64),
    /// Where the metrics are published after each apply, once asked for.
    published: Option<Published>,
}

impl Agent {
    /// Loads or adopts the programs and maps of `config.node`.
    pub fn start(config: &Config) -> Result<Self, AgentError> {
        let (dataplane, maps) = Dataplane::load(config)?;
        let limits = Limits {
            max_services: config.sizes.services,
            max_backends: config.sizes.backends,
            maglev_tables: config.maglev.tables,
            maglev_size: config.maglev.size,
            lb_algorithm: config.lb_algorithm,
        };
        let mut syncer = Syncer::adopt(maps, &config.node, limits)?;
        syncer.set_node_ips(dataplane.node_ips().to_vec())?;
        Ok(Self {
            dataplane,
            syncer,
            cgroup: config.cgroup.clone(),
            destroyed: 0,
            syncs: (0, 0),
            published: None,
        })
    }

    /// The loaded programs.
    pub fn dataplane(&self) -> &Dataplane {
        &self.dataplane
    }

    /// The loaded programs, mutably (to read or take their log records).
    pub fn dataplane_mut(&mut self) -> &mut Dataplane {
        &mut self.dataplane
    }

    /// The sync layer.
    pub fn syncer(&self) -> &Syncer<KernelMaps> {
        &self.syncer
    }

    /// Applies one input, then destroys the sockets our programs sent to backends it
    /// removed (see [`crate::sockets`]).
    pub fn apply(&mut self, input: Input) -> Result<ApplyStats, SyncError> {
        let result = self.syncer.apply(input);
        match &result {
            Ok(_) => self.syncs.0 += 1,
            Err(_) => self.syncs.1 += 1,
        }
        let gone = self.syncer.take_removed_backends();
        if !gone.is_empty() {
            let revnat = RevNat::open(self.dataplane.pin_dir());
            let translated = |cookie: u64, backend: &BackendAddr| {
                revnat
                    .as_ref()
                    .is_some_and(|r| r.translated(cookie, backend))
            };
            let n = sockets::destroy(&self.cgroup, &gone, &translated);
            self.destroyed += n as u64;
            if n > 0 {
                info!(
                    destroyed = n,
                    backends = gone.len(),
                    "destroyed sockets to removed backends"
                );
            }
        }
        if let Some(published) = &self.published {
            published.set(metrics::render(&self.metrics()));
        }
        result
    }

    /// The figures the metrics are rendered from.
    pub fn metrics(&self) -> metrics::Snapshot {
        let capacity = self.syncer.maps().capacity();
        metrics::Snapshot {
            map_full: self.syncer.map_full_counts().clone(),
            entries: self.syncer.entry_counts(),
            capacity: [capacity.services, capacity.slots, capacity.backends],
            syncs_ok: self.syncs.0,
            syncs_failed: self.syncs.1,
            sockets_destroyed: self.destroyed,
        }
    }

    /// Starts publishing the metrics text (now, and after every apply) for
    /// [`metrics::serve`].
    pub fn publish_metrics(&mut self) -> Published {
        let published = self
            .published
            .get_or_insert_with(Published::default)
            .clone();
        published.set(metrics::render(&self.metrics()));
        published
    }

    /// Sockets destroyed so far because their backend went away.
    pub fn destroyed_sockets(&self) -> u64 {
        self.destroyed
    }

    /// Applies inputs until the stream ends. A bad input or a failed apply (a full map)
    /// is logged and counted; the agent keeps serving what it last applied.
    pub async fn run(
        &mut self,
        inputs: impl Stream<Item = Result<Input, SourceError>>,
    ) -> RunStats {
        let mut stats = RunStats::default();
        let mut inputs = std::pin::pin!(inputs);
        while let Some(input) = inputs.next().await {
            let result = match input {
                Ok(input) => self.apply(input).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match result {
                Ok(applied) => {
                    stats.applied += 1;
                    info!(
                        writes = applied.total(),
                        frontends = self.syncer.desired().len(),
                        ?applied,
                        "synced"
                    );
                }
                Err(e) => {
                    stats.errors += 1;
                    error!(error = %e, "sync failed; keeping the last applied state");
                }
            }
        }
        stats
    }
}

/// Counts from [`Agent::run`].
#[derive(Debug, Default, Clone, Copy)]
pub struct RunStats {
    /// Inputs applied.
    pub applied: u64,
    /// Inputs that failed.
    pub errors: u64,
}

/// The pinned reverse-translation map: which socket (cookie) was sent to which backend.
struct RevNat(BpfHashMap<MapData, RevNatKey, RevNatValue>);

impl RevNat {
    fn open(pin_dir: &Path) -> Option<Self> {
        let path = pin_dir.join("FK_REVNAT");
        let data = MapData::from_pin(&path)
            .map_err(|e| warn!(path = %path.display(), error = %e, "cannot open the reverse-translation map"))
            .ok()?;
        BpfHashMap::try_from(Map::LruHashMap(data)).ok().map(Self)
    }

    fn translated(&self, cookie: u64, backend: &BackendAddr) -> bool {
        let value = backend.value();
        let key = RevNatKey {
            cookie,
            addr: value.addr,
            port: value.port,
            family: value.family,
            pad: 0,
            pad2: 0,
        };
        self.0.get(&key, 0).is_ok()
    }
}
