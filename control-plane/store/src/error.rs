//! The store's error type, shared by both backends.

use crate::types::{KeyValue, Revision};

/// Result alias for store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Everything a store operation can fail with. Both backends map their own failures
/// onto these variants, so callers (the apiserver) handle one set of cases.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The key does not exist (a guarded update or delete of a missing key).
    #[error("key {key:?} not found")]
    NotFound {
        /// The key that was asked for.
        key: String,
    },
    /// Create-if-absent found the key already present.
    #[error("key {key:?} already exists")]
    AlreadyExists {
        /// The key that was asked for.
        key: String,
        /// What is stored there now.
        current: Box<KeyValue>,
    },
    /// A guarded update or delete expected a mod revision the key no longer has.
    #[error("conflict on key {key:?}: expected mod revision {expected}, current is {}", current.mod_revision)]
    Conflict {
        /// The key that was asked for.
        key: String,
        /// The mod revision the caller expected.
        expected: Revision,
        /// What is stored there now.
        current: Box<KeyValue>,
    },
    /// The revision asked for (a range at a past revision, a watch from a revision)
    /// is older than the oldest history kept.
    #[error("revision {requested} has been compacted; the compact revision is {compact_revision}")]
    Compacted {
        /// The revision the caller asked for.
        requested: Revision,
        /// The oldest revision that can still be read (history before it is gone).
        compact_revision: Revision,
    },
    /// The revision asked for is newer than the store's current revision.
    #[error("revision {requested} is in the future; the current revision is {current}")]
    FutureRevision {
        /// The revision the caller asked for.
        requested: Revision,
        /// The store's current revision.
        current: Revision,
    },
    /// The request itself is malformed (empty key, a key written twice in one
    /// transaction, a value over the size limit, ...). Nothing was written.
    #[error("invalid request: {message}")]
    InvalidArgument {
        /// What is wrong with the request.
        message: String,
    },
    /// The backend cannot be reached or has shut down (etcd down, the embedded store
    /// closed). The request may be retried.
    #[error("store unavailable: {message}")]
    Unavailable {
        /// What failed.
        message: String,
    },
    /// The backend failed while serving the request (an I/O error, a database error).
    /// For writes nothing was acknowledged.
    #[error("store backend error: {message}")]
    Backend {
        /// What failed.
        message: String,
    },
    /// Stored data could not be decoded.
    #[error("corrupt record for key {key:?}: {message}")]
    Corrupt {
        /// The key (or log position) of the bad record.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

impl StoreError {
    /// A backend failure with the given message.
    pub(crate) fn backend(message: impl std::fmt::Display) -> Self {
        StoreError::Backend {
            message: message.to_string(),
        }
    }

    /// An invalid-request failure with the given message.
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        StoreError::InvalidArgument {
            message: message.into(),
        }
    }

    /// Whether retrying the same request later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }
}
