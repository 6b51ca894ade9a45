//! The node agent: loads (or adopts) the dataplane and feeds the sync layer from a
//! stream of inputs until the stream ends.

use futures::{Stream, StreamExt as _};
use tracing::{error, info};

use crate::loader::{Config, Dataplane, LoadError};
use crate::maps::KernelMaps;
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
}

impl Agent {
    /// Loads or adopts the programs and maps of `config.node`.
    pub fn start(config: &Config) -> Result<Self, AgentError> {
        let (dataplane, maps) = Dataplane::load(config)?;
        let limits = Limits {
            max_services: config.sizes.services,
            max_backends: config.sizes.backends,
        };
        let mut syncer = Syncer::adopt(maps, &config.node, limits)?;
        syncer.set_node_ips(dataplane.node_ips().to_vec())?;
        Ok(Self { dataplane, syncer })
    }

    /// The loaded programs.
    pub fn dataplane(&self) -> &Dataplane {
        &self.dataplane
    }

    /// The sync layer.
    pub fn syncer(&self) -> &Syncer<KernelMaps> {
        &self.syncer
    }

    /// Applies one input.
    pub fn apply(&mut self, input: Input) -> Result<ApplyStats, SyncError> {
        self.syncer.apply(input)
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
