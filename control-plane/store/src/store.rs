//! The [`Store`] trait both backends implement, with the guarded single-key helpers
//! the apiserver uses built on its transaction form.

use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;

use crate::error::{Result, StoreError};
use crate::types::{
    Compare, Event, GetResponse, KeyValue, Op, OpResponse, RangeRequest, RangeResponse, Revision,
    StoreStatus, Txn, TxnResponse,
};

/// A stream of watch events in revision order. It ends with an error item when the
/// watch cannot go on (its start was compacted, the backend went away).
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<Event>> + Send>>;

/// A revisioned key-value store with etcd v3 semantics.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Reads one key at the current revision.
    async fn get(&self, key: &str) -> Result<GetResponse>;

    /// Reads keys under a prefix, in key order, paginated, optionally at a past revision.
    /// A revision older than the compact revision fails with [`StoreError::Compacted`];
    /// one newer than the current revision with [`StoreError::FutureRevision`].
    async fn range(&self, request: RangeRequest) -> Result<RangeResponse>;

    /// Runs a transaction atomically.
    async fn txn(&self, txn: Txn) -> Result<TxnResponse>;

    /// Watches keys under `prefix`: every event with a revision greater than `after`, in
    /// order, each with the previous value, then live events as they are committed.
    /// If `after` is older than the kept history the stream yields
    /// [`StoreError::Compacted`] and ends.
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream>;

    /// Discards history before `revision`: the state at `revision` and later stays
    /// readable and watchable. Compacting at or below the current compact revision
    /// fails with [`StoreError::Compacted`]; beyond the current revision with
    /// [`StoreError::FutureRevision`].
    async fn compact(&self, revision: Revision) -> Result<()>;

    /// The current revision, compact revision and backend facts.
    async fn status(&self) -> Result<StoreStatus>;

    /// Creates `key` only if it is absent; fails with [`StoreError::AlreadyExists`].
    async fn create(&self, key: &str, value: Bytes) -> Result<KeyValue> {
        let resp = self
            .txn(
                Txn::new()
                    .when([Compare::absent(key)])
                    .and_then([Op::put(key, value)])
                    .or_else([Op::get(key)]),
            )
            .await?;
        if resp.succeeded {
            return put_result(key, resp);
        }
        match first_get(key, resp)? {
            Some(current) => Err(StoreError::AlreadyExists {
                key: key.to_string(),
                current: Box::new(current),
            }),
            // The key vanished between the compare and the read: report the race as a
            // conflict so the caller retries.
            None => Err(StoreError::Unavailable {
                message: format!("create of {key:?} raced with a delete; retry"),
            }),
        }
    }

    /// Replaces `key` only if its mod revision is still `expected`; fails with
    /// [`StoreError::Conflict`] (carrying the current value) or [`StoreError::NotFound`].
    async fn update(&self, key: &str, value: Bytes, expected: Revision) -> Result<KeyValue> {
        if expected <= 0 {
            return Err(StoreError::invalid(
                "update needs the expected mod revision (> 0); use create for absent keys",
            ));
        }
        let resp = self
            .txn(
                Txn::new()
                    .when([Compare::mod_revision(key, expected)])
                    .and_then([Op::put(key, value)])
                    .or_else([Op::get(key)]),
            )
            .await?;
        if resp.succeeded {
            return put_result(key, resp);
        }
        Err(guard_failure(key, expected, first_get(key, resp)?))
    }

    /// Deletes `key`, only if its mod revision is still `expected` when given. Returns
    /// what was deleted; fails with [`StoreError::Conflict`] or [`StoreError::NotFound`].
    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue> {
        let txn = match expected {
            Some(rev) => Txn::new()
                .when([Compare::mod_revision(key, rev)])
                .and_then([Op::delete(key)])
                .or_else([Op::get(key)]),
            None => Txn::new().and_then([Op::delete(key)]),
        };
        let resp = self.txn(txn).await?;
        if !resp.succeeded {
            return Err(guard_failure(
                key,
                expected.unwrap_or_default(),
                first_get(key, resp)?,
            ));
        }
        match resp.responses.into_iter().next() {
            Some(OpResponse::Delete(Some(prev))) => Ok(prev),
            Some(OpResponse::Delete(None)) => Err(StoreError::NotFound {
                key: key.to_string(),
            }),
            other => Err(StoreError::backend(format!(
                "unexpected delete response for {key:?}: {other:?}"
            ))),
        }
    }

    /// Writes `key` unconditionally.
    async fn put(&self, key: &str, value: Bytes) -> Result<KeyValue> {
        let resp = self.txn(Txn::new().and_then([Op::put(key, value)])).await?;
        put_result(key, resp)
    }
}

fn put_result(key: &str, resp: TxnResponse) -> Result<KeyValue> {
    match resp.responses.into_iter().next() {
        Some(OpResponse::Put { kv, .. }) => Ok(kv),
        other => Err(StoreError::backend(format!(
            "unexpected put response for {key:?}: {other:?}"
        ))),
    }
}

fn first_get(key: &str, resp: TxnResponse) -> Result<Option<KeyValue>> {
    match resp.responses.into_iter().next() {
        Some(OpResponse::Get(kv)) => Ok(kv),
        other => Err(StoreError::backend(format!(
            "unexpected get response for {key:?}: {other:?}"
        ))),
    }
}

fn guard_failure(key: &str, expected: Revision, current: Option<KeyValue>) -> StoreError {
    match current {
        Some(current) => StoreError::Conflict {
            key: key.to_string(),
            expected,
            current: Box::new(current),
        },
        None => StoreError::NotFound {
            key: key.to_string(),
        },
    }
}
