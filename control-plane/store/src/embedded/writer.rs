//! The embedded store's single writer: group commit.
//!
//! Every write (transaction or compaction) is a request on one queue. A dedicated thread
//! takes the first waiting request, drains whatever else is queued behind it (up to a
//! batch limit), applies them in order inside one `redb` write transaction, commits it
//! with an fsync, and only then answers each request and publishes the events to
//! watchers. Concurrent writers therefore share fsyncs instead of paying one each, and
//! every acknowledged write is on disk. Each transaction still gets its own revision, and
//! compares see the writes of earlier requests in the same batch.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use redb::{Database, Durability, ReadableTable, Table};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use super::codec;
use super::{KV, LOG, META, META_COMPACT, META_REVISION, Shared};
use crate::error::{Result, StoreError};
use crate::types::{
    Compare, Event, EventKind, KeyValue, Op, OpResponse, Revision, Txn, TxnResponse,
};

/// One queued write.
#[derive(Debug)]
pub(super) enum Request {
    Txn(Txn, oneshot::Sender<Result<TxnResponse>>),
    Compact(Revision, oneshot::Sender<Result<()>>),
}

impl Request {
    fn fail(self, error: StoreError) {
        // The caller may have gone away; nothing to do then.
        match self {
            Request::Txn(_, reply) => drop(reply.send(Err(error))),
            Request::Compact(_, reply) => drop(reply.send(Err(error))),
        }
    }
}

/// The outcome of one request inside a batch, answered after the commit.
enum Outcome {
    Txn(Result<TxnResponse>),
    Compact(Result<()>),
}

pub(super) struct Writer {
    pub(super) db: Arc<Database>,
    pub(super) shared: Arc<Shared>,
    pub(super) max_batch: usize,
    pub(super) max_value_bytes: usize,
    pub(super) quick_repair: bool,
}

impl Writer {
    /// Serves the queue until every sender is gone, then closes the watch hub.
    pub(super) fn run(self, mut queue: mpsc::Receiver<Request>) {
        while let Some(first) = queue.blocking_recv() {
            let mut batch = vec![first];
            while batch.len() < self.max_batch {
                match queue.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            self.commit_batch(batch);
        }
        debug!("embedded store writer stopped");
        self.shared.hub.close();
    }

    fn commit_batch(&self, batch: Vec<Request>) {
        let revision = self.shared.revision.load(Ordering::Acquire);
        let compact = self.shared.compact_revision.load(Ordering::Acquire);
        let applied = self.apply(&batch, revision, compact);
        let (outcomes, events, new_revision, new_compact) = match applied {
            Ok(applied) => applied,
            Err(error) => {
                warn!(%error, "embedded store batch failed; nothing was committed");
                for request in batch {
                    request.fail(error.clone());
                }
                return;
            }
        };
        self.shared.commits.fetch_add(1, Ordering::Relaxed);
        self.shared.revision.store(new_revision, Ordering::Release);
        self.shared
            .compact_revision
            .store(new_compact, Ordering::Release);
        if !events.is_empty() {
            self.shared.hub.publish(new_revision, Arc::new(events));
        }
        for (request, outcome) in batch.into_iter().zip(outcomes) {
            match (request, outcome) {
                (Request::Txn(_, reply), Outcome::Txn(result)) => drop(reply.send(result)),
                (Request::Compact(_, reply), Outcome::Compact(result)) => drop(reply.send(result)),
                (request, _) => request.fail(StoreError::backend("writer mixed up outcomes")),
            }
        }
    }

    /// Applies the batch in one write transaction and commits it. The outer error
    /// aborts the whole batch; per-request refusals are in the outcomes.
    #[allow(clippy::type_complexity)]
    fn apply(
        &self,
        batch: &[Request],
        mut revision: Revision,
        mut compact: Revision,
    ) -> Result<(Vec<Outcome>, Vec<Event>, Revision, Revision)> {
        let mut wtx = self.db.begin_write().map_err(StoreError::backend)?;
        wtx.set_durability(Durability::Immediate)
            .map_err(StoreError::backend)?;
        wtx.set_quick_repair(self.quick_repair);
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut events = Vec::new();
        {
            let mut kv = wtx.open_table(KV).map_err(StoreError::backend)?;
            let mut log = wtx.open_table(LOG).map_err(StoreError::backend)?;
            let mut meta = wtx.open_table(META).map_err(StoreError::backend)?;
            for request in batch {
                match request {
                    Request::Txn(txn, _) => {
                        let outcome = match self.check(txn) {
                            Err(refused) => Err(refused),
                            Ok(()) => Ok(apply_txn(
                                &mut kv,
                                &mut log,
                                txn,
                                &mut revision,
                                &mut events,
                            )?),
                        };
                        outcomes.push(Outcome::Txn(outcome));
                    }
                    Request::Compact(target, _) => {
                        let outcome = if *target <= compact {
                            Err(StoreError::Compacted {
                                requested: *target,
                                compact_revision: compact,
                            })
                        } else if *target > revision {
                            Err(StoreError::FutureRevision {
                                requested: *target,
                                current: revision,
                            })
                        } else {
                            log.retain_in((0i64, 0u32)..(*target, 0u32), |_, _| false)
                                .map_err(StoreError::backend)?;
                            compact = *target;
                            Ok(())
                        };
                        outcomes.push(Outcome::Compact(outcome));
                    }
                }
            }
            meta.insert(META_REVISION, revision)
                .map_err(StoreError::backend)?;
            meta.insert(META_COMPACT, compact)
                .map_err(StoreError::backend)?;
        }
        wtx.commit().map_err(StoreError::backend)?;
        Ok((outcomes, events, revision, compact))
    }

    fn check(&self, txn: &Txn) -> Result<()> {
        txn.validate()?;
        for op in txn.success.iter().chain(&txn.failure) {
            if let Op::Put { key, value } = op
                && value.len() > self.max_value_bytes
            {
                return Err(StoreError::invalid(format!(
                    "value for {key:?} is {} bytes, over the limit of {} bytes",
                    value.len(),
                    self.max_value_bytes
                )));
            }
        }
        Ok(())
    }
}

type KvTable<'t> = Table<'t, &'static str, &'static [u8]>;
type LogTable<'t> = Table<'t, (i64, u32), &'static [u8]>;

fn read_kv(kv: &KvTable<'_>, key: &str) -> Result<Option<KeyValue>> {
    match kv.get(key).map_err(StoreError::backend)? {
        Some(bytes) => Ok(Some(codec::decode_kv(key, bytes.value())?)),
        None => Ok(None),
    }
}

/// Applies one validated transaction; returns its response, appending its events.
fn apply_txn(
    kv: &mut KvTable<'_>,
    log: &mut LogTable<'_>,
    txn: &Txn,
    revision: &mut Revision,
    events: &mut Vec<Event>,
) -> Result<TxnResponse> {
    let mut succeeded = true;
    for compare in &txn.compares {
        let Compare::ModRevision {
            key,
            revision: want,
        } = compare;
        let have = match kv.get(key.as_str()).map_err(StoreError::backend)? {
            Some(bytes) => codec::mod_revision_of(key, bytes.value())?,
            None => 0,
        };
        if have != *want {
            succeeded = false;
            break;
        }
    }
    let ops = if succeeded {
        &txn.success
    } else {
        &txn.failure
    };
    let next = *revision + 1;
    let mut sub: u32 = 0;
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        match op {
            Op::Get { key } => responses.push(OpResponse::Get(read_kv(kv, key)?)),
            Op::Put { key, value } => {
                let prev = read_kv(kv, key)?;
                let new = KeyValue::after_put(key, value, prev.as_ref(), next);
                kv.insert(key.as_str(), codec::encode_kv(&new).as_slice())
                    .map_err(StoreError::backend)?;
                let event = Event {
                    kind: EventKind::Put,
                    kv: new.clone(),
                    prev: prev.clone(),
                };
                log.insert((next, sub), codec::encode_event(&event)?.as_slice())
                    .map_err(StoreError::backend)?;
                sub += 1;
                events.push(event);
                responses.push(OpResponse::Put { kv: new, prev });
            }
            Op::Delete { key } => {
                let prev = read_kv(kv, key)?;
                if prev.is_some() {
                    kv.remove(key.as_str()).map_err(StoreError::backend)?;
                    let event = Event {
                        kind: EventKind::Delete,
                        kv: KeyValue {
                            key: key.clone(),
                            value: Default::default(),
                            create_revision: 0,
                            mod_revision: next,
                            version: 0,
                        },
                        prev: prev.clone(),
                    };
                    log.insert((next, sub), codec::encode_event(&event)?.as_slice())
                        .map_err(StoreError::backend)?;
                    sub += 1;
                    events.push(event);
                }
                responses.push(OpResponse::Delete(prev));
            }
        }
    }
    if sub > 0 {
        *revision = next;
    }
    Ok(TxnResponse {
        succeeded,
        revision: *revision,
        responses,
    })
}
