//! The cluster's state store: a revisioned key-value store with etcd v3 semantics.
//!
//! This crate owns everything the apiserver needs from storage and nothing more:
//! one global revision that grows by one per committed write, per-key create/mod
//! revisions and versions, ranges by prefix (paginated, optionally at a past revision),
//! compare-and-swap transactions, ordered watches that replay history and then follow
//! live writes, and compaction of old history.
//!
//! Two backends sit behind the [`Store`] trait:
//! - [`EmbeddedStore`] (the default): `redb` in a data directory, fsync before
//!   acknowledging, concurrent writers group-committed, watch history kept for replay;
//! - [`EtcdStore`]: a real etcd v3 server or cluster through `etcd-client`.
//!
//! [`Datastore`] parses the `--data-dir` / `--datastore etcd://...` choice and opens
//! the right one; [`Compactor`] compacts history on a schedule.

mod compactor;
mod datastore;
pub mod embedded;
mod error;
pub mod etcd;
mod store;
mod types;

pub use compactor::Compactor;
pub use datastore::{Datastore, DatastoreError};
pub use embedded::{EmbeddedOptions, EmbeddedStore};
pub use error::{Result, StoreError};
pub use etcd::{EtcdOptions, EtcdStore};
pub use store::{Store, WatchStream};
pub use types::{
    Compare, Event, EventKind, GetResponse, KeyValue, Op, OpResponse, RangeRequest, RangeResponse,
    Revision, StoreStatus, Txn, TxnResponse, prefix_end,
};
