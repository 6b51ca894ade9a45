//! Scheduled compaction, as the Kubernetes apiserver does it.
//!
//! Every interval the compactor compacts to the revision it saw at the previous tick, so
//! at least one interval of history (default five minutes) stays available for watches
//! to resume from.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::error::StoreError;
use crate::store::Store;
use crate::types::Revision;

/// The upstream apiserver's default compaction interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// A background task compacting a store on a schedule; stops when dropped.
#[derive(Debug)]
pub struct Compactor {
    task: JoinHandle<()>,
}

impl Compactor {
    /// The default interval (five minutes).
    pub const DEFAULT_INTERVAL: Duration = DEFAULT_INTERVAL;

    /// Starts compacting `store` every `interval`.
    pub fn spawn(store: Arc<dyn Store>, interval: Duration) -> Self {
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut seen: Option<Revision> = None;
            loop {
                ticker.tick().await;
                seen = tick(store.as_ref(), seen).await;
            }
        });
        Compactor { task }
    }
}

impl Drop for Compactor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One round: compact to the revision seen last round; return the revision seen now.
async fn tick(store: &dyn Store, seen: Option<Revision>) -> Option<Revision> {
    let status = match store.status().await {
        Ok(status) => status,
        Err(error) => {
            warn!(%error, "compactor cannot read the store status");
            return seen;
        }
    };
    if let Some(target) = seen
        && target > status.compact_revision
    {
        match store.compact(target).await {
            Ok(()) => info!(revision = target, "compacted store history"),
            // Someone else (another apiserver on the same etcd) got there first.
            Err(StoreError::Compacted { .. }) => debug!(revision = target, "already compacted"),
            Err(error) => warn!(%error, revision = target, "compaction failed"),
        }
    }
    Some(status.revision)
}
