//! The watch cache: one store watch per resource feeds every client watch of it.
//!
//! Each resource's cache follows the store from the revision it started at, keeps the
//! most recent events in a ring for replay, and broadcasts live events. A client watch
//! from revision N replays the ring after N and then follows the broadcast; a client that
//! falls behind the broadcast is ended (as upstream ends slow watchers) rather than
//! slowing the others, and resumes from its last revision. Watches older than the ring,
//! or older than the store's compact revision, go to the store directly, which answers
//! them or reports them compacted (410).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use ferrokube_store::{Event, Revision, Store, StoreError, WatchStream};
use futures::StreamExt;
use tokio::sync::broadcast;
use tracing::{debug, warn};

/// Events kept per resource for replay.
const RING: usize = 4096;
/// Live events a client may lag behind before it is ended.
const LAG: usize = 8192;

#[derive(Debug)]
struct Cache {
    /// The store watch began after this revision: the ring covers (start, latest].
    start: Revision,
    ring: VecDeque<Arc<Event>>,
    live: broadcast::Sender<Arc<Event>>,
    failed: bool,
}

/// Watch caches for every resource, started on first use.
#[derive(Debug, Default)]
pub struct WatchCaches {
    caches: Mutex<HashMap<String, Arc<Mutex<Cache>>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl WatchCaches {
    async fn cache(
        &self,
        store: &Arc<dyn Store>,
        resource_prefix: &str,
        on_start: impl FnOnce(),
    ) -> Result<Arc<Mutex<Cache>>, StoreError> {
        if let Some(cache) = lock(&self.caches)
            .get(resource_prefix)
            .filter(|c| !lock(c).failed)
            .cloned()
        {
            return Ok(cache);
        }
        let start = store.status().await?.revision;
        let stream = store.watch(resource_prefix, start).await?;
        let (live, _) = broadcast::channel(LAG);
        let cache = Arc::new(Mutex::new(Cache {
            start,
            ring: VecDeque::with_capacity(RING),
            live,
            failed: false,
        }));
        {
            let mut caches = lock(&self.caches);
            // Another request may have started one meanwhile: use it, drop ours.
            if let Some(existing) = caches
                .get(resource_prefix)
                .filter(|c| !lock(c).failed)
                .cloned()
            {
                return Ok(existing);
            }
            caches.insert(resource_prefix.to_string(), cache.clone());
        }
        on_start();
        tokio::spawn(feed(cache.clone(), stream, resource_prefix.to_string()));
        Ok(cache)
    }

    /// A watch of keys under `prefix` (inside the resource's `resource_prefix`) after
    /// `after`. `on_store_watch` is called whenever a store watch is opened.
    pub async fn watch(
        &self,
        store: &Arc<dyn Store>,
        resource_prefix: &str,
        prefix: &str,
        after: Revision,
        on_store_watch: impl Fn(),
    ) -> Result<WatchStream, StoreError> {
        let cache = self.cache(store, resource_prefix, &on_store_watch).await?;
        // History the store has compacted away is gone for cached watches too: such a
        // watch goes to the store, which reports it compacted (410).
        let compacted = after + 1 < store.status().await?.compact_revision;
        let served = {
            let cache = lock(&cache);
            // The ring covers (first_missing, latest]; older starts go to the store.
            let oldest_covered = cache
                .ring
                .front()
                .map_or(cache.start, |e| e.revision() - 1)
                .max(cache.start);
            if compacted || after < oldest_covered || cache.failed {
                None
            } else {
                let replay: Vec<Arc<Event>> = cache
                    .ring
                    .iter()
                    .filter(|e| e.revision() > after)
                    .cloned()
                    .collect();
                Some((replay, cache.live.subscribe()))
            }
        };
        let Some((replay, live)) = served else {
            on_store_watch();
            return store.watch(prefix, after).await;
        };
        let prefix = prefix.to_string();
        let last = replay.last().map_or(after, |e| e.revision());
        let replay = futures::stream::iter(replay.into_iter().map(Ok));
        let live = futures::stream::unfold(live, |mut rx| async move {
            match rx.recv().await {
                Ok(event) => Some((Ok(event), rx)),
                Err(broadcast::error::RecvError::Lagged(n)) => Some((
                    Err(StoreError::Unavailable {
                        message: format!(
                            "watch fell {n} events behind; resume from the last resourceVersion"
                        ),
                    }),
                    rx,
                )),
                Err(broadcast::error::RecvError::Closed) => None,
            }
        })
        .filter(move |item| {
            let keep = !matches!(item, Ok(e) if e.revision() <= last);
            async move { keep }
        });
        let mut ended = false;
        let stream = replay
            .chain(live)
            .filter(move |item| {
                let keep = match item {
                    Ok(event) => event.kv.key.starts_with(&prefix),
                    Err(_) => true,
                };
                async move { keep }
            })
            .map(|item| item.map(|e| (*e).clone()))
            .take_while(move |item| {
                // End after the first error.
                let go = !ended;
                ended |= item.is_err();
                async move { go }
            });
        Ok(Box::pin(stream))
    }
}

async fn feed(cache: Arc<Mutex<Cache>>, mut stream: WatchStream, prefix: String) {
    while let Some(item) = stream.next().await {
        match item {
            Ok(event) => {
                let event = Arc::new(event);
                let mut cache = lock(&cache);
                if cache.ring.len() == RING {
                    cache.ring.pop_front();
                }
                cache.ring.push_back(event.clone());
                // No receivers is fine.
                let _ = cache.live.send(event);
            }
            Err(error) => {
                warn!(%error, prefix, "watch cache lost its store watch; clients will resume");
                break;
            }
        }
    }
    debug!(prefix, "watch cache stopped");
    let mut cache = lock(&cache);
    cache.failed = true;
    // Dropping the sender's last clone ends every live receiver.
    let (closed, _) = broadcast::channel(1);
    cache.live = closed;
}
