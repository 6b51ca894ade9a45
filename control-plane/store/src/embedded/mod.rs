//! The embedded backend: `redb` in a data directory.
//!
//! Tables:
//! - `kv`: key -> current value with its create/mod revision and version;
//! - `log`: `(revision, sub)` -> the event written at that revision (with the previous
//!   value), the history that watches replay and past-revision ranges rewind;
//! - `meta`: the current revision and the compact revision.
//!
//! Writes go through the single group-committing writer (see `writer`); reads open their
//! own `redb` read transactions (a consistent snapshot) on the blocking pool; watches are
//! fed by the `hub` and replay from `log`.

mod codec;
mod hub;
mod writer;

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use async_trait::async_trait;
use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tracing::info;

use crate::error::{Result, StoreError};
use crate::store::{Store, WatchStream};
use crate::types::{
    Event, GetResponse, KeyValue, RangeRequest, RangeResponse, Revision, StoreStatus, Txn,
    TxnResponse, prefix_end,
};
use hub::Hub;
use writer::{Request, Writer};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const LOG: TableDefinition<(i64, u32), &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
const META_REVISION: &str = "revision";
const META_COMPACT: &str = "compact_revision";

/// The file inside the data directory that holds the database.
pub const DB_FILE: &str = "store.redb";

/// Tuning of the embedded store.
#[derive(Clone, Debug)]
pub struct EmbeddedOptions {
    /// Largest value accepted, in bytes.
    pub max_value_bytes: usize,
    /// Most write requests group-committed together.
    pub max_batch: usize,
    /// Committed batches a watcher may have queued before it is moved to catch up from
    /// disk.
    pub watch_queue: usize,
    /// Events a watcher's client may have unread before the watcher waits for it.
    pub watch_buffer: usize,
    /// `redb` quick repair: two fsyncs per commit buy an instant reopen after a crash.
    /// Off by default: one fsync per commit (crash-safe through checksums), and a reopen
    /// after a crash walks the file to rebuild the allocator state.
    pub quick_repair: bool,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            max_value_bytes: 8 * 1024 * 1024,
            max_batch: 1024,
            watch_queue: 1024,
            watch_buffer: 256,
            quick_repair: false,
        }
    }
}

/// State shared by the store handle, the writer thread and watcher tasks.
#[derive(Debug)]
struct Shared {
    revision: AtomicI64,
    compact_revision: AtomicI64,
    commits: AtomicU64,
    /// Times a lagging watcher was dropped from the hub and caught up from disk.
    resyncs: AtomicU64,
    hub: Hub,
}

/// The embedded, durable, revisioned store.
#[derive(Debug)]
pub struct EmbeddedStore {
    db: Arc<Database>,
    shared: Arc<Shared>,
    queue: mpsc::Sender<Request>,
    writer: Option<std::thread::JoinHandle<()>>,
    path: PathBuf,
    options: EmbeddedOptions,
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store in `dir`. Blocks while `redb` opens the file,
    /// which after a crash includes its recovery.
    pub fn open(dir: &Path, options: EmbeddedOptions) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Unavailable {
            message: format!("cannot create data directory {}: {e}", dir.display()),
        })?;
        let path = dir.join(DB_FILE);
        let db = Database::create(&path).map_err(|e| StoreError::Unavailable {
            message: format!("cannot open {}: {e}", path.display()),
        })?;
        let (revision, compact) = init_tables(&db)?;
        info!(path = %path.display(), revision, compact, "embedded store opened");
        let db = Arc::new(db);
        let shared = Arc::new(Shared {
            revision: AtomicI64::new(revision),
            compact_revision: AtomicI64::new(compact),
            commits: AtomicU64::new(0),
            resyncs: AtomicU64::new(0),
            hub: Hub::new(revision, options.watch_queue),
        });
        let (queue, rx) = mpsc::channel(options.max_batch.max(1) * 4);
        let writer = Writer {
            db: db.clone(),
            shared: shared.clone(),
            max_batch: options.max_batch.max(1),
            max_value_bytes: options.max_value_bytes,
            quick_repair: options.quick_repair,
        };
        let writer = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::backend(format!("cannot start the writer thread: {e}")))?;
        Ok(EmbeddedStore {
            db,
            shared,
            queue,
            writer: Some(writer),
            path,
            options,
        })
    }

    /// How many write transactions have been committed (each with one fsync) since open.
    /// Fewer commits than writes shows group commit at work.
    pub fn commits(&self) -> u64 {
        self.shared.commits.load(Ordering::Relaxed)
    }

    /// How many times a watcher fell behind, was dropped from live fan-out and caught up
    /// from the on-disk history instead.
    pub fn watch_resyncs(&self) -> u64 {
        self.shared.resyncs.load(Ordering::Relaxed)
    }

    /// Number of watchers currently following live events.
    pub fn live_watchers(&self) -> usize {
        self.shared.hub.watchers()
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&ReadTransaction) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        read(self.db.clone(), f).await
    }

    async fn submit<T>(&self, request: Request, reply: oneshot::Receiver<Result<T>>) -> Result<T> {
        self.queue.send(request).await.map_err(|_| closed())?;
        reply.await.map_err(|_| closed())?
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        // Closing the queue stops the writer after it finishes what is queued; join it so
        // that the database file is released when the store is gone.
        let (closed, _) = mpsc::channel(1);
        self.queue = closed;
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

fn closed() -> StoreError {
    StoreError::Unavailable {
        message: "the embedded store is closed".into(),
    }
}

async fn read<T: Send + 'static>(
    db: Arc<Database>,
    f: impl FnOnce(&ReadTransaction) -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(move || {
        let rtx = db.begin_read().map_err(StoreError::backend)?;
        f(&rtx)
    })
    .await
    .map_err(|e| StoreError::backend(format!("read task failed: {e}")))?
}

fn init_tables(db: &Database) -> Result<(Revision, Revision)> {
    let wtx = db.begin_write().map_err(StoreError::backend)?;
    let state = {
        wtx.open_table(KV).map_err(StoreError::backend)?;
        wtx.open_table(LOG).map_err(StoreError::backend)?;
        let mut meta = wtx.open_table(META).map_err(StoreError::backend)?;
        let revision = meta
            .get(META_REVISION)
            .map_err(StoreError::backend)?
            .map(|v| v.value());
        let compact = meta
            .get(META_COMPACT)
            .map_err(StoreError::backend)?
            .map(|v| v.value());
        // An empty store is at revision 1, as etcd is.
        let revision = revision.unwrap_or(1);
        let compact = compact.unwrap_or(0);
        meta.insert(META_REVISION, revision)
            .map_err(StoreError::backend)?;
        meta.insert(META_COMPACT, compact)
            .map_err(StoreError::backend)?;
        (revision, compact)
    };
    wtx.commit().map_err(StoreError::backend)?;
    Ok(state)
}

fn meta_revisions(rtx: &ReadTransaction) -> Result<(Revision, Revision)> {
    let meta = rtx.open_table(META).map_err(StoreError::backend)?;
    let get = |name: &str| -> Result<Revision> {
        Ok(meta
            .get(name)
            .map_err(StoreError::backend)?
            .map(|v| v.value())
            .unwrap_or_default())
    };
    Ok((get(META_REVISION)?, get(META_COMPACT)?))
}

fn range_at(rtx: &ReadTransaction, request: &RangeRequest) -> Result<RangeResponse> {
    let (current, compact) = meta_revisions(rtx)?;
    let target = match request.revision {
        None | Some(0) => current,
        Some(rev) if rev > current => {
            return Err(StoreError::FutureRevision {
                requested: rev,
                current,
            });
        }
        Some(rev) if rev < compact => {
            return Err(StoreError::Compacted {
                requested: rev,
                compact_revision: compact,
            });
        }
        Some(rev) => rev,
    };
    let prefix = request.prefix.as_str();
    let end = prefix_end(prefix.as_bytes()).map(String::from_utf8);
    let end = match end {
        Some(Ok(end)) => Some(end),
        // A prefix ending in 0xff bytes has no UTF-8 successor; no stored key (UTF-8) can
        // reach past it, so scan to the end of the table.
        Some(Err(_)) | None => None,
    };
    let start = match &request.start_after {
        Some(after) if after.as_str() >= prefix => Bound::Excluded(after.as_str()),
        _ => Bound::Included(prefix),
    };
    let in_range = |key: &str| key.starts_with(prefix);

    // Keys whose state differs between `target` and now: the first event after
    // `target` for each key carries its state at `target` (its previous value).
    let mut overlay: BTreeMap<String, Option<KeyValue>> = BTreeMap::new();
    if target < current {
        let log = rtx.open_table(LOG).map_err(StoreError::backend)?;
        for entry in log
            .range((target + 1, 0u32)..)
            .map_err(StoreError::backend)?
        {
            let (k, v) = entry.map_err(StoreError::backend)?;
            let (rev, _) = k.value();
            let key = codec::event_key(rev, v.value())?;
            let after_start = match start {
                Bound::Excluded(s) => key > s,
                Bound::Included(s) => key >= s,
                Bound::Unbounded => true,
            };
            if !in_range(key) || !after_start || overlay.contains_key(key) {
                continue;
            }
            let event = codec::decode_event(rev, v.value())?;
            overlay.insert(event.kv.key, event.prev);
        }
    }

    let kv = rtx.open_table(KV).map_err(StoreError::backend)?;
    let upper = match &end {
        Some(end) => Bound::Excluded(end.as_str()),
        None => Bound::Unbounded,
    };
    let mut current_iter = kv
        .range::<&str>((start, upper))
        .map_err(StoreError::backend)?
        .peekable();
    let mut overlay_iter = overlay.into_iter().peekable();
    let limit = if request.limit == 0 {
        usize::MAX
    } else {
        request.limit
    };
    let mut kvs = Vec::new();
    let mut count = 0usize;
    loop {
        // Next key in order from either side; the overlay wins on equal keys.
        let from_current = match current_iter.peek() {
            Some(Ok((k, _))) => Some(k.value().to_string()),
            Some(Err(_)) => {
                let Some(Err(e)) = current_iter.next() else {
                    unreachable!("peeked an error")
                };
                return Err(StoreError::backend(e));
            }
            None => None,
        };
        let from_overlay = overlay_iter.peek().map(|(k, _)| k.clone());
        let item: Option<KeyValue> = match (from_current, from_overlay) {
            (None, None) => break,
            (Some(c), Some(o)) if o <= c => {
                if o == c {
                    current_iter.next();
                }
                overlay_iter.next().and_then(|(_, state)| state)
            }
            (None, Some(_)) => overlay_iter.next().and_then(|(_, state)| state),
            (Some(c), _) => {
                let Some(Ok((_, v))) = current_iter.next() else {
                    unreachable!("peeked a value")
                };
                if kvs.len() < limit {
                    Some(codec::decode_kv(&c, v.value())?)
                } else {
                    // Past the page only the count matters: skip decoding.
                    count += 1;
                    continue;
                }
            }
        };
        if let Some(item) = item {
            count += 1;
            if kvs.len() < limit {
                kvs.push(item);
            }
        }
    }
    let more = count > kvs.len();
    Ok(RangeResponse {
        kvs,
        more,
        count,
        revision: target,
    })
}

/// Reads history after `after` up to `until` for keys under `prefix`, stopping at a
/// revision boundary once `max` events are collected. Returns the events and the last
/// revision covered.
fn read_log(
    rtx: &ReadTransaction,
    prefix: &str,
    after: Revision,
    until: Revision,
    max: usize,
) -> Result<(Vec<Event>, Revision)> {
    let (_, compact) = meta_revisions(rtx)?;
    if after + 1 < compact {
        return Err(StoreError::Compacted {
            requested: after + 1,
            compact_revision: compact,
        });
    }
    let log = rtx.open_table(LOG).map_err(StoreError::backend)?;
    let mut events = Vec::new();
    let mut last = after;
    for entry in log
        .range((after + 1, 0u32)..=(until, u32::MAX))
        .map_err(StoreError::backend)?
    {
        let (k, v) = entry.map_err(StoreError::backend)?;
        let (rev, _) = k.value();
        if events.len() >= max && rev != last {
            return Ok((events, last));
        }
        last = rev;
        if codec::event_key(rev, v.value())?.starts_with(prefix) {
            events.push(codec::decode_event(rev, v.value())?);
        }
    }
    Ok((events, until))
}

/// Feeds one watch: replay from disk up to what the hub has published, then live
/// batches; re-registers (catching up from disk) whenever the hub drops it for lagging.
async fn run_watch(
    db: Arc<Database>,
    shared: Arc<Shared>,
    prefix: String,
    mut after: Revision,
    out: mpsc::Sender<Result<Event>>,
) {
    const REPLAY_CHUNK: usize = 512;
    loop {
        let Some(mut registration) = shared.hub.register(&prefix) else {
            let _ = out.send(Err(closed())).await;
            return;
        };
        while after < registration.published {
            let (p, until) = (prefix.clone(), registration.published);
            let chunk = read(db.clone(), move |rtx| {
                read_log(rtx, &p, after, until, REPLAY_CHUNK)
            })
            .await;
            match chunk {
                Ok((events, upto)) => {
                    for event in events {
                        if out.send(Ok(event)).await.is_err() {
                            return;
                        }
                    }
                    after = upto;
                }
                Err(error) => {
                    let _ = out.send(Err(error)).await;
                    return;
                }
            }
        }
        while let Some(batch) = registration.live.recv().await {
            for event in batch.iter() {
                if event.revision() <= after {
                    continue;
                }
                if event.kv.key.starts_with(&prefix) && out.send(Ok(event.clone())).await.is_err() {
                    return;
                }
            }
            if let Some(last) = batch.last() {
                after = after.max(last.revision());
            }
        }
        if out.is_closed() {
            return;
        }
        shared.resyncs.fetch_add(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<GetResponse> {
        let key = key.to_string();
        self.read(move |rtx| {
            let (revision, _) = meta_revisions(rtx)?;
            let kv = rtx.open_table(KV).map_err(StoreError::backend)?;
            let found = match kv.get(key.as_str()).map_err(StoreError::backend)? {
                Some(bytes) => Some(codec::decode_kv(&key, bytes.value())?),
                None => None,
            };
            Ok(GetResponse {
                kv: found,
                revision,
            })
        })
        .await
    }

    async fn range(&self, request: RangeRequest) -> Result<RangeResponse> {
        self.read(move |rtx| range_at(rtx, &request)).await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        let (reply, rx) = oneshot::channel();
        self.submit(Request::Txn(txn, reply), rx).await
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        if after < 0 {
            return Err(StoreError::invalid(format!(
                "negative watch revision {after}"
            )));
        }
        let (out, rx) = mpsc::channel(self.options.watch_buffer.max(1));
        tokio::spawn(run_watch(
            self.db.clone(),
            self.shared.clone(),
            prefix.to_string(),
            after,
            out,
        ));
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.submit(Request::Compact(revision, reply), rx).await
    }

    async fn status(&self) -> Result<StoreStatus> {
        let db_size_bytes = std::fs::metadata(&self.path).ok().map(|m| m.len());
        Ok(StoreStatus {
            backend: "embedded",
            revision: self.shared.revision.load(Ordering::Acquire),
            compact_revision: self.shared.compact_revision.load(Ordering::Acquire),
            db_size_bytes,
        })
    }
}
