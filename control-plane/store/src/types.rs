//! Request and response types of the store, modelled on etcd v3's.

use bytes::Bytes;

/// A store revision. Like etcd's, it is signed 64-bit; the first write of an empty
/// store gets revision 2 (revision 1 is the empty store).
pub type Revision = i64;

/// One stored key with its metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value (empty in a delete event).
    pub value: Bytes,
    /// Revision of the write that created the key (0 in a delete event).
    pub create_revision: Revision,
    /// Revision of the last write to the key (the delete's revision in a delete event).
    pub mod_revision: Revision,
    /// Number of writes since the key was created, starting at 1 (0 in a delete event).
    pub version: i64,
}

impl KeyValue {
    /// The key as a put at `revision` leaves it, given what it held before (etcd's rules:
    /// the create revision survives updates, the version counts writes from 1).
    pub fn after_put(
        key: &str,
        value: &Bytes,
        prev: Option<&KeyValue>,
        revision: Revision,
    ) -> Self {
        KeyValue {
            key: key.to_string(),
            value: value.clone(),
            create_revision: prev.map_or(revision, |p| p.create_revision),
            mod_revision: revision,
            version: prev.map_or(1, |p| p.version + 1),
        }
    }
}

/// Whether a watch event is a write or a removal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// The key was created or updated.
    Put,
    /// The key was deleted.
    Delete,
}

/// A change seen by a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// The key after the change. For a delete, only `key` and `mod_revision` (the
    /// delete's revision) are set, as in etcd.
    pub kv: KeyValue,
    /// The key before the change, if it existed.
    pub prev: Option<KeyValue>,
}

impl Event {
    /// The revision at which the event happened.
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }
}

/// A range read: keys under `prefix`, in key order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeRequest {
    /// Only keys starting with this prefix. The empty prefix means every key.
    pub prefix: String,
    /// Continue after this key (exclusive): the last key of the previous page.
    pub start_after: Option<String>,
    /// At most this many keys (0 means no limit).
    pub limit: usize,
    /// Read the state as of this revision (`None` means the current state).
    pub revision: Option<Revision>,
}

impl RangeRequest {
    /// Every key under `prefix`, now.
    pub fn prefix(prefix: impl Into<String>) -> Self {
        RangeRequest {
            prefix: prefix.into(),
            ..Default::default()
        }
    }

    /// At most `limit` keys per page.
    pub fn with_limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// Continue after `key` (the last key of the previous page).
    pub fn with_start_after(mut self, key: impl Into<String>) -> Self {
        self.start_after = Some(key.into());
        self
    }

    /// Read as of `revision`.
    pub fn at_revision(mut self, revision: Revision) -> Self {
        self.revision = Some(revision);
        self
    }
}

/// The answer to a [`RangeRequest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeResponse {
    /// The keys found, in key order, at most `limit` of them.
    pub kvs: Vec<KeyValue>,
    /// Whether more keys follow the last one returned.
    pub more: bool,
    /// How many keys the whole requested range holds (from the start key to the end of
    /// the prefix, ignoring the limit), as etcd's `count`.
    pub count: usize,
    /// The revision the read was served at.
    pub revision: Revision,
}

/// The answer to a single-key get.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GetResponse {
    /// The key, if present.
    pub kv: Option<KeyValue>,
    /// The revision the read was served at.
    pub revision: Revision,
}

/// A guard in a [`Txn`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compare {
    /// The key's mod revision equals `revision`; 0 means "the key is absent".
    ModRevision {
        /// The key to check.
        key: String,
        /// The expected mod revision.
        revision: Revision,
    },
}

impl Compare {
    /// The key is absent.
    pub fn absent(key: impl Into<String>) -> Self {
        Compare::ModRevision {
            key: key.into(),
            revision: 0,
        }
    }

    /// The key's mod revision is `revision`.
    pub fn mod_revision(key: impl Into<String>, revision: Revision) -> Self {
        Compare::ModRevision {
            key: key.into(),
            revision,
        }
    }

    /// The key this guard looks at.
    pub fn key(&self) -> &str {
        match self {
            Compare::ModRevision { key, .. } => key,
        }
    }
}

/// An operation in a [`Txn`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Read one key.
    Get {
        /// The key.
        key: String,
    },
    /// Write one key.
    Put {
        /// The key.
        key: String,
        /// The new value.
        value: Bytes,
    },
    /// Delete one key (a no-op if it is absent).
    Delete {
        /// The key.
        key: String,
    },
}

impl Op {
    /// Read `key`.
    pub fn get(key: impl Into<String>) -> Self {
        Op::Get { key: key.into() }
    }

    /// Write `value` at `key`.
    pub fn put(key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        Op::Put {
            key: key.into(),
            value: value.into(),
        }
    }

    /// Delete `key`.
    pub fn delete(key: impl Into<String>) -> Self {
        Op::Delete { key: key.into() }
    }

    /// The key this operation touches.
    pub fn key(&self) -> &str {
        match self {
            Op::Get { key } | Op::Put { key, .. } | Op::Delete { key } => key,
        }
    }
}

/// The result of one [`Op`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpResponse {
    /// The key read, if present.
    Get(Option<KeyValue>),
    /// The key as written, and what it held before.
    Put {
        /// The key after the write.
        kv: KeyValue,
        /// The key before the write, if it existed.
        prev: Option<KeyValue>,
    },
    /// What the key held before the delete; `None` if it was absent (nothing changed).
    Delete(Option<KeyValue>),
}

/// An atomic transaction: if every guard holds, run `success`, else run `failure`.
/// All writes of a transaction share one new revision; a transaction that writes
/// nothing does not change the revision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    /// The guards, all of which must hold.
    pub compares: Vec<Compare>,
    /// Operations run when every guard holds.
    pub success: Vec<Op>,
    /// Operations run otherwise.
    pub failure: Vec<Op>,
}

impl Txn {
    /// An empty transaction.
    pub fn new() -> Self {
        Txn::default()
    }

    /// Adds guards.
    pub fn when(mut self, compares: impl IntoIterator<Item = Compare>) -> Self {
        self.compares.extend(compares);
        self
    }

    /// Adds operations for when every guard holds.
    pub fn and_then(mut self, ops: impl IntoIterator<Item = Op>) -> Self {
        self.success.extend(ops);
        self
    }

    /// Adds operations for when a guard fails.
    pub fn or_else(mut self, ops: impl IntoIterator<Item = Op>) -> Self {
        self.failure.extend(ops);
        self
    }

    /// Checks what both backends refuse: empty keys and a key written twice.
    pub(crate) fn validate(&self) -> crate::Result<()> {
        for ops in [&self.success, &self.failure] {
            let mut written = std::collections::HashSet::new();
            for op in ops {
                if op.key().is_empty() {
                    return Err(crate::StoreError::invalid("empty key"));
                }
                if !matches!(op, Op::Get { .. }) && !written.insert(op.key()) {
                    return Err(crate::StoreError::invalid(format!(
                        "key {:?} is written twice in one transaction",
                        op.key()
                    )));
                }
            }
        }
        if self.compares.iter().any(|c| c.key().is_empty()) {
            return Err(crate::StoreError::invalid("empty key in a compare"));
        }
        Ok(())
    }
}

/// The result of a [`Txn`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnResponse {
    /// Whether every guard held (so `success` ran).
    pub succeeded: bool,
    /// The store revision after the transaction.
    pub revision: Revision,
    /// One result per operation that ran, in order.
    pub responses: Vec<OpResponse>,
}

/// A snapshot of the store's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreStatus {
    /// Which backend answers ("embedded" or "etcd").
    pub backend: &'static str,
    /// The current revision.
    pub revision: Revision,
    /// The compact revision: history before it is gone (0 if never compacted).
    pub compact_revision: Revision,
    /// Size of the database on disk, where the backend reports it.
    pub db_size_bytes: Option<u64>,
}

/// The smallest key greater than every key starting with `prefix` (etcd's range end
/// for a prefix), or `None` when no such key exists (empty or all-0xff prefix).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_last_byte() {
        assert_eq!(
            prefix_end(b"/registry/pods/"),
            Some(b"/registry/pods0".to_vec())
        );
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn txn_validation_refuses_duplicate_writes_and_empty_keys() {
        let dup = Txn::new().and_then([Op::put("a", "1"), Op::delete("a")]);
        assert!(matches!(
            dup.validate(),
            Err(crate::StoreError::InvalidArgument { .. })
        ));
        let empty = Txn::new().and_then([Op::put("", "1")]);
        assert!(empty.validate().is_err());
        let reads = Txn::new().and_then([Op::get("a"), Op::get("a"), Op::put("a", "x")]);
        assert!(reads.validate().is_ok());
    }
}
