//! Watch fan-out for the embedded store.
//!
//! The writer publishes each committed batch of events here once; every registered
//! watcher whose prefix matches gets the batch (an `Arc`, not a copy) on its own bounded
//! queue. A watcher that falls behind (its queue is full) is dropped from the hub rather
//! than stalling the writer or other watchers; its task then catches up from the on-disk
//! history and registers again, so a slow client loses nothing (like etcd's unsynced
//! watchers).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;

use crate::types::{Event, Revision};

/// A committed batch of events, in revision order.
pub(super) type Batch = Arc<Vec<Event>>;

#[derive(Debug)]
pub(super) struct Hub {
    inner: Mutex<HubInner>,
    queue: usize,
}

#[derive(Debug)]
struct HubInner {
    /// Every revision up to this one is committed and has been published.
    published: Revision,
    closed: bool,
    next_id: u64,
    watchers: HashMap<u64, Registered>,
}

#[derive(Debug)]
struct Registered {
    prefix: String,
    tx: mpsc::Sender<Batch>,
}

/// What a new registration gets: the revision up to which history must be replayed
/// from disk, and the queue of live batches after it.
pub(super) struct Registration {
    pub(super) published: Revision,
    pub(super) live: mpsc::Receiver<Batch>,
}

impl Hub {
    pub(super) fn new(published: Revision, queue: usize) -> Self {
        Hub {
            inner: Mutex::new(HubInner {
                published,
                closed: false,
                next_id: 0,
                watchers: HashMap::new(),
            }),
            queue: queue.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HubInner> {
        // A panic while holding the lock cannot leave the map half-updated in a way
        // that matters (entries are inserted or removed whole), so recover from poison.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a watcher; `None` once the store is closed.
    pub(super) fn register(&self, prefix: &str) -> Option<Registration> {
        let mut inner = self.lock();
        if inner.closed {
            return None;
        }
        let (tx, live) = mpsc::channel(self.queue);
        let id = inner.next_id;
        inner.next_id += 1;
        inner.watchers.insert(
            id,
            Registered {
                prefix: prefix.to_string(),
                tx,
            },
        );
        Some(Registration {
            published: inner.published,
            live,
        })
    }

    /// Publishes a committed batch ending at `revision`.
    pub(super) fn publish(&self, revision: Revision, batch: Batch) {
        let mut inner = self.lock();
        inner.published = revision;
        inner.watchers.retain(|_, w| {
            if w.tx.is_closed() {
                return false;
            }
            if !batch.iter().any(|e| e.kv.key.starts_with(&w.prefix)) {
                return true;
            }
            // Full: the watcher lags; dropping its sender makes it catch up from disk.
            w.tx.try_send(batch.clone()).is_ok()
        });
    }

    /// Ends every watcher's live queue; later registrations fail.
    pub(super) fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        inner.watchers.clear();
    }

    /// Number of registered watchers (for status and tests).
    pub(super) fn watchers(&self) -> usize {
        self.lock().watchers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{EventKind, KeyValue};

    fn event(key: &str, rev: Revision) -> Event {
        Event {
            kind: EventKind::Put,
            kv: KeyValue {
                key: key.into(),
                value: Default::default(),
                create_revision: rev,
                mod_revision: rev,
                version: 1,
            },
            prev: None,
        }
    }

    #[test]
    fn batches_reach_only_matching_watchers() {
        let hub = Hub::new(1, 8);
        let mut a = hub.register("/a/").unwrap();
        let mut b = hub.register("/b/").unwrap();
        assert_eq!(a.published, 1);
        hub.publish(2, Arc::new(vec![event("/a/x", 2)]));
        assert_eq!(a.live.try_recv().unwrap()[0].kv.key, "/a/x");
        assert!(b.live.try_recv().is_err());
        assert_eq!(hub.register("/c/").unwrap().published, 2);
    }

    #[test]
    fn a_full_watcher_is_dropped_and_others_keep_receiving() {
        let hub = Hub::new(1, 2);
        let mut slow = hub.register("").unwrap();
        let mut fast = hub.register("").unwrap();
        for rev in 2..6 {
            hub.publish(rev, Arc::new(vec![event("/k", rev)]));
            assert_eq!(fast.live.try_recv().unwrap()[0].revision(), rev);
        }
        // The slow one got what fit, then its queue was closed.
        assert_eq!(slow.live.try_recv().unwrap()[0].revision(), 2);
        assert_eq!(slow.live.try_recv().unwrap()[0].revision(), 3);
        assert!(matches!(
            slow.live.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
        assert_eq!(hub.watchers(), 1);
    }

    #[test]
    fn close_ends_registrations() {
        let hub = Hub::new(1, 2);
        let mut w = hub.register("").unwrap();
        hub.close();
        assert!(matches!(
            w.live.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
        assert!(hub.register("").is_none());
    }
}
