//! Behaviour particular to the embedded backend: persistence across reopen, group
//! commit, slow watchers catching up from disk, limits and exclusive opening.

mod common;

use std::sync::Arc;

use anyhow::Result;
use common::{b, events};
use ferrokube_store::{EmbeddedOptions, EmbeddedStore, RangeRequest, Store, StoreError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_revision_and_history_survive_reopen() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (written, revision) = {
        let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default())?;
        let a = store.create("/registry/a", b("1")).await?;
        let a = store.update("/registry/a", b("2"), a.mod_revision).await?;
        store.put("/registry/b", b("x")).await?;
        store.delete("/registry/b", None).await?;
        (a, store.status().await?.revision)
    };
    let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default())?;
    assert_eq!(store.status().await?.revision, revision);
    assert_eq!(store.get("/registry/a").await?.kv, Some(written.clone()));
    assert_eq!(store.get("/registry/b").await?.kv, None);
    // History replays after reopen.
    let mut watch = store.watch("/registry/", 0).await?;
    let replayed = events(&mut watch, 4).await?;
    assert_eq!(replayed[1].kv, written);
    // The next write continues the revision sequence.
    assert_eq!(
        store.put("/registry/c", b("y")).await?.mod_revision,
        revision + 1
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_share_commits() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Arc::new(EmbeddedStore::open(dir.path(), EmbeddedOptions::default())?);
    let before = store.commits();
    let mut tasks = Vec::new();
    for w in 0..64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..10 {
                store
                    .create(&format!("/registry/g/{w}/{i}"), b("v"))
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let commits = store.commits() - before;
    let listed = store.range(RangeRequest::prefix("/registry/g/")).await?;
    assert_eq!(listed.count, 640);
    assert!(
        commits < 640,
        "640 writes took {commits} commits: no group commit"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_watcher_loses_nothing_and_does_not_stall_others() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // Tiny queues so the slow watcher overflows at once.
    let options = EmbeddedOptions {
        watch_queue: 2,
        watch_buffer: 1,
        ..EmbeddedOptions::default()
    };
    let store = EmbeddedStore::open(dir.path(), options)?;
    let start = store.status().await?.revision;
    let mut slow = store.watch("/registry/", start).await?;
    let mut fast = store.watch("/registry/", start).await?;
    const N: usize = 300;
    let writer = async {
        let mut acked = Vec::new();
        for i in 0..N {
            acked.push(
                store
                    .put(&format!("/registry/k{}", i % 7), b(format!("{i}")))
                    .await?,
            );
        }
        anyhow::Ok(acked)
    };
    // The fast watcher is read while writing; the slow one not at all.
    let (acked, fast_seen) = tokio::try_join!(writer, events(&mut fast, N))?;
    let fast_kvs: Vec<_> = fast_seen.into_iter().map(|e| e.kv).collect();
    assert_eq!(fast_kvs, acked);
    let slow_kvs: Vec<_> = events(&mut slow, N)
        .await?
        .into_iter()
        .map(|e| e.kv)
        .collect();
    assert_eq!(slow_kvs, acked);
    assert!(
        store.watch_resyncs() > 0,
        "the slow watcher never fell behind"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_values_are_refused_and_store_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let options = EmbeddedOptions {
        max_value_bytes: 1024,
        ..EmbeddedOptions::default()
    };
    let store = EmbeddedStore::open(dir.path(), options)?;
    let before = store.status().await?.revision;
    let result = store.create("/registry/big", b(vec![7u8; 2048])).await;
    assert!(
        matches!(result, Err(StoreError::InvalidArgument { .. })),
        "{result:?}"
    );
    assert_eq!(store.get("/registry/big").await?.kv, None);
    assert_eq!(store.status().await?.revision, before);
    // Other writes in flight are unaffected.
    store.create("/registry/small", b(vec![7u8; 512])).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_open_of_the_same_directory_is_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let _first = EmbeddedStore::open(dir.path(), EmbeddedOptions::default())?;
    let second = EmbeddedStore::open(dir.path(), EmbeddedOptions::default());
    assert!(
        matches!(second, Err(StoreError::Unavailable { .. })),
        "{second:?}"
    );
    Ok(())
}
