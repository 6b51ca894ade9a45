//! `dryRun=All`: the request runs through every step (decoding, defaulting, validation,
//! conflict checks, allocation choices) against a store view that reads the real store
//! and keeps its own writes in memory, for this one request, never writing them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use ferrokube_store::{
    Compare, GetResponse, KeyValue, Op, OpResponse, RangeRequest, RangeResponse, Result, Revision,
    Store, StoreError, StoreStatus, Txn, TxnResponse, WatchStream,
};

/// A store view that never writes: its writes live in an overlay for the request.
#[derive(Debug)]
pub struct DryRunStore {
    inner: Arc<dyn Store>,
    /// Keys written (Some) or deleted (None) by this request, and the last simulated revision.
    overlay: Mutex<(HashMap<String, Option<KeyValue>>, Revision)>,
}

impl DryRunStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Store>) -> Self {
        DryRunStore {
            inner,
            overlay: Mutex::new((HashMap::new(), 0)),
        }
    }

    fn overlay(&self) -> std::sync::MutexGuard<'_, (HashMap<String, Option<KeyValue>>, Revision)> {
        self.overlay.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn current(&self, key: &str) -> Result<(Option<KeyValue>, Revision)> {
        let simulated = self.overlay().0.get(key).cloned();
        let real = self.inner.get(key).await?;
        let revision = real.revision.max(self.overlay().1);
        Ok((simulated.unwrap_or(real.kv), revision))
    }
}

#[async_trait]
impl Store for DryRunStore {
    async fn get(&self, key: &str) -> Result<GetResponse> {
        let (kv, revision) = self.current(key).await?;
        Ok(GetResponse { kv, revision })
    }

    async fn range(&self, request: RangeRequest) -> Result<RangeResponse> {
        // Lists read the real store: a dry run does not list what it only pretended to write.
        self.inner.range(request).await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        let mut revision = self.inner.status().await?.revision.max(self.overlay().1);
        let mut succeeded = true;
        for compare in &txn.compares {
            let Compare::ModRevision {
                key,
                revision: want,
            } = compare;
            if self.current(key).await?.0.map_or(0, |kv| kv.mod_revision) != *want {
                succeeded = false;
                break;
            }
        }
        let ops = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        let writes = ops.iter().any(|op| !matches!(op, Op::Get { .. }));
        if writes {
            revision += 1;
        }
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let (current, _) = self.current(op.key()).await?;
            responses.push(match op {
                Op::Get { .. } => OpResponse::Get(current),
                Op::Put { key, value } => {
                    let kv = KeyValue::after_put(key, value, current.as_ref(), revision);
                    self.overlay().0.insert(key.clone(), Some(kv.clone()));
                    OpResponse::Put { kv, prev: current }
                }
                Op::Delete { key } => {
                    self.overlay().0.insert(key.clone(), None);
                    OpResponse::Delete(current)
                }
            });
        }
        if writes {
            self.overlay().1 = revision;
        }
        Ok(TxnResponse {
            succeeded,
            revision,
            responses,
        })
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        self.inner.watch(prefix, after).await
    }

    async fn compact(&self, _revision: Revision) -> Result<()> {
        Err(StoreError::InvalidArgument {
            message: "compaction is not a dry-run operation".into(),
        })
    }

    async fn status(&self) -> Result<StoreStatus> {
        self.inner.status().await
    }
}
