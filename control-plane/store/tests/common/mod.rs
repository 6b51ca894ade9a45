//! Shared helpers for the store test suites.
#![allow(dead_code)]

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use ferrokube_store::{
    EmbeddedOptions, EmbeddedStore, EtcdOptions, EtcdStore, Event, Store, WatchStream,
};
use futures::StreamExt;

/// Generous bound for anything that should happen "at once".
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A store under test and whatever must live as long as it (a temp dir, an etcd).
pub struct Backend {
    pub store: Arc<dyn Store>,
    _guard: Box<dyn Any + Send>,
}

impl Backend {
    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }
}

pub async fn embedded() -> Result<Backend> {
    let dir = tempfile::tempdir()?;
    let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default())?;
    Ok(Backend {
        store: Arc::new(store),
        _guard: Box::new(dir),
    })
}

pub async fn etcd() -> Result<Backend> {
    let etcd = tokio::task::spawn_blocking(ferrokube_testkit::Etcd::start).await??;
    let store = EtcdStore::connect(EtcdOptions::new(vec![etcd.endpoint()])).await?;
    Ok(Backend {
        store: Arc::new(store),
        _guard: Box::new(etcd),
    })
}

pub fn b(s: impl AsRef<[u8]>) -> Bytes {
    Bytes::copy_from_slice(s.as_ref())
}

/// The next watch event, or a failure after the deadline.
pub async fn next_event(stream: &mut WatchStream) -> Result<Event> {
    match tokio::time::timeout(DEADLINE, stream.next()).await {
        Ok(Some(Ok(event))) => Ok(event),
        Ok(Some(Err(e))) => Err(e).context("watch failed"),
        Ok(None) => bail!("watch ended"),
        Err(_) => bail!("no watch event within {DEADLINE:?}"),
    }
}

/// `n` watch events in order.
pub async fn events(stream: &mut WatchStream, n: usize) -> Result<Vec<Event>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push(
            next_event(stream)
                .await
                .with_context(|| format!("event {i} of {n}"))?,
        );
    }
    Ok(out)
}

/// Asserts that nothing more arrives within a short while.
pub async fn assert_quiet(stream: &mut WatchStream) -> Result<()> {
    match tokio::time::timeout(Duration::from_millis(300), stream.next()).await {
        Err(_) => Ok(()),
        Ok(item) => bail!("unexpected watch item: {item:?}"),
    }
}
