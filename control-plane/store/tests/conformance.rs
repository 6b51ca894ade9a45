//! One conformance suite for every store backend: each case runs unchanged against the
//! embedded store (in a temp dir) and against a real etcd started on loopback for it.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, ensure};
use common::{DEADLINE, assert_quiet, b, events, next_event};
use ferrokube_store::{
    Compactor, Compare, EventKind, KeyValue, Op, OpResponse, RangeRequest, Store, StoreError, Txn,
};
use futures::StreamExt;
use rand::RngCore;

async fn rev(store: &dyn Store) -> Result<i64> {
    Ok(store.status().await?.revision)
}

/// One global revision, +1 per committed write; per-key create/mod revision and version.
async fn revisions_and_metadata(store: &dyn Store) -> Result<()> {
    let r0 = rev(store).await?;
    let a1 = store.create("/registry/a", b("1")).await?;
    assert_eq!(
        (a1.create_revision, a1.mod_revision, a1.version),
        (r0 + 1, r0 + 1, 1)
    );
    let a2 = store.update("/registry/a", b("2"), a1.mod_revision).await?;
    assert_eq!(
        (a2.create_revision, a2.mod_revision, a2.version),
        (r0 + 1, r0 + 2, 2)
    );
    let b1 = store.put("/registry/b", b("x")).await?;
    assert_eq!(b1.mod_revision, r0 + 3);
    let deleted = store.delete("/registry/a", None).await?;
    assert_eq!(deleted, a2);
    assert_eq!(rev(store).await?, r0 + 4);

    let got = store.get("/registry/a").await?;
    assert_eq!((got.kv, got.revision), (None, r0 + 4));
    let got = store.get("/registry/b").await?;
    assert_eq!(got.kv, Some(b1.clone()));

    // Refused writes do not move the revision.
    assert!(matches!(
        store.create("/registry/b", b("y")).await,
        Err(StoreError::AlreadyExists { .. })
    ));
    assert!(matches!(
        store.delete("/registry/missing", None).await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(rev(store).await?, r0 + 4);

    // A transaction's writes share one revision; a read-only one changes nothing.
    let resp = store
        .txn(Txn::new().and_then([Op::put("/registry/t1", "1"), Op::put("/registry/t2", "2")]))
        .await?;
    assert_eq!(resp.revision, r0 + 5);
    for r in &resp.responses {
        let OpResponse::Put { kv, prev } = r else {
            panic!("{r:?}")
        };
        assert_eq!((kv.mod_revision, prev.clone()), (r0 + 5, None));
    }
    let resp = store
        .txn(Txn::new().and_then([Op::get("/registry/t1")]))
        .await?;
    assert_eq!(resp.revision, r0 + 5);
    // Re-creating a deleted key starts a new life: new create revision, version 1.
    let again = store.create("/registry/a", b("3")).await?;
    assert_eq!((again.create_revision, again.version), (r0 + 6, 1));
    Ok(())
}

/// Create-if-absent: the second create fails and changes nothing.
async fn create_if_absent(store: &dyn Store) -> Result<()> {
    let first = store.create("/registry/pods/default/p", b("first")).await?;
    match store.create("/registry/pods/default/p", b("second")).await {
        Err(StoreError::AlreadyExists { key, current }) => {
            assert_eq!(key, "/registry/pods/default/p");
            assert_eq!(*current, first);
        }
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert_eq!(store.get("/registry/pods/default/p").await?.kv, Some(first));
    Ok(())
}

/// Update and delete guarded by the expected mod revision.
async fn guarded_update_and_delete(store: &dyn Store) -> Result<()> {
    let k = "/registry/cm/default/c";
    let v1 = store.create(k, b("v1")).await?;
    let v2 = store.update(k, b("v2"), v1.mod_revision).await?;
    match store.update(k, b("stale"), v1.mod_revision).await {
        Err(StoreError::Conflict {
            expected, current, ..
        }) => {
            assert_eq!(expected, v1.mod_revision);
            assert_eq!(*current, v2);
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    assert_eq!(store.get(k).await?.kv, Some(v2.clone()));
    assert!(matches!(
        store.update("/registry/cm/default/none", b("x"), 5).await,
        Err(StoreError::NotFound { .. })
    ));
    match store.delete(k, Some(v1.mod_revision)).await {
        Err(StoreError::Conflict { current, .. }) => assert_eq!(*current, v2),
        other => panic!("expected Conflict, got {other:?}"),
    }
    assert!(store.get(k).await?.kv.is_some());
    assert_eq!(store.delete(k, Some(v2.mod_revision)).await?, v2);
    assert!(matches!(
        store.delete(k, Some(v2.mod_revision)).await,
        Err(StoreError::NotFound { .. })
    ));
    Ok(())
}

/// Range by prefix with limit and continue key, and etcd's count.
async fn range_prefix_pagination(store: &dyn Store) -> Result<()> {
    let mut want = Vec::new();
    for i in 0..25 {
        let key = format!("/registry/a/{i:03}");
        store.put(&key, b(format!("value-{i}"))).await?;
        want.push(key);
    }
    // Neighbours that must stay outside the prefix.
    for key in [
        "/registry/a",
        "/registry/ab",
        "/registry/b/1",
        "/registry/a0",
    ] {
        store.put(key, b("outside")).await?;
    }
    let current = rev(store).await?;
    let all = store.range(RangeRequest::prefix("/registry/a/")).await?;
    let keys: Vec<_> = all.kvs.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(keys, want);
    assert_eq!((all.count, all.more, all.revision), (25, false, current));

    let mut pages = Vec::new();
    let mut request = RangeRequest::prefix("/registry/a/").with_limit(7);
    loop {
        let page = store.range(request.clone()).await?;
        pages.push((page.kvs.len(), page.more, page.count));
        let Some(last) = page.kvs.last() else { break };
        if !page.more {
            break;
        }
        request = request.with_start_after(last.key.clone());
    }
    assert_eq!(
        pages,
        vec![(7, true, 25), (7, true, 18), (7, true, 11), (4, false, 4)]
    );

    let everything = store
        .range(RangeRequest::prefix("/registry/").with_limit(1000))
        .await?;
    assert_eq!(everything.kvs.len(), 29);
    let empty = store.range(RangeRequest::prefix("/registry/none/")).await?;
    assert!(empty.kvs.is_empty() && !empty.more && empty.count == 0);
    Ok(())
}

/// Range at a past revision sees the state of then, paginated as well.
async fn range_at_past_revision(store: &dyn Store) -> Result<()> {
    for i in 1..=3 {
        store
            .put(&format!("/registry/p/{i}"), b(format!("old-{i}")))
            .await?;
    }
    let then = rev(store).await?;
    store.put("/registry/p/1", b("new-1")).await?;
    store.delete("/registry/p/2", None).await?;
    store.put("/registry/p/4", b("new-4")).await?;
    store.put("/registry/q/1", b("elsewhere")).await?;

    let snapshot = |resp: &ferrokube_store::RangeResponse| -> Vec<(String, String)> {
        resp.kvs
            .iter()
            .map(|kv| {
                (
                    kv.key.clone(),
                    String::from_utf8_lossy(&kv.value).into_owned(),
                )
            })
            .collect()
    };
    let past = store
        .range(RangeRequest::prefix("/registry/p/").at_revision(then))
        .await?;
    assert_eq!(past.revision, then);
    assert_eq!(
        snapshot(&past),
        vec![
            ("/registry/p/1".into(), "old-1".into()),
            ("/registry/p/2".into(), "old-2".into()),
            ("/registry/p/3".into(), "old-3".into()),
        ]
    );
    assert_eq!(past.kvs[0].mod_revision, then - 2);
    let now = store.range(RangeRequest::prefix("/registry/p/")).await?;
    assert_eq!(
        snapshot(&now),
        vec![
            ("/registry/p/1".into(), "new-1".into()),
            ("/registry/p/3".into(), "old-3".into()),
            ("/registry/p/4".into(), "new-4".into()),
        ]
    );
    // Paginating at the past revision.
    let page1 = store
        .range(
            RangeRequest::prefix("/registry/p/")
                .at_revision(then)
                .with_limit(2),
        )
        .await?;
    assert_eq!((page1.kvs.len(), page1.more, page1.count), (2, true, 3));
    let page2 = store
        .range(
            RangeRequest::prefix("/registry/p/")
                .at_revision(then)
                .with_limit(2)
                .with_start_after(page1.kvs[1].key.clone()),
        )
        .await?;
    assert_eq!(
        snapshot(&page2),
        vec![("/registry/p/3".into(), "old-3".into())]
    );
    assert!(!page2.more);

    let future = rev(store).await? + 100;
    match store
        .range(RangeRequest::prefix("/registry/p/").at_revision(future))
        .await
    {
        Err(StoreError::FutureRevision { requested, .. }) => assert_eq!(requested, future),
        other => panic!("expected FutureRevision, got {other:?}"),
    }
    Ok(())
}

/// A transaction is all-or-nothing, and the failure branch runs when a guard fails.
async fn transactions_are_atomic(store: &dyn Store) -> Result<()> {
    let k1 = store.create("/registry/t/1", b("one")).await?;
    let before = rev(store).await?;
    let resp = store
        .txn(
            Txn::new()
                .when([Compare::mod_revision("/registry/t/1", k1.mod_revision + 99)])
                .and_then([Op::put("/registry/t/2", "two"), Op::delete("/registry/t/1")])
                .or_else([Op::get("/registry/t/1"), Op::get("/registry/t/2")]),
        )
        .await?;
    assert!(!resp.succeeded);
    assert_eq!(
        resp.responses,
        vec![OpResponse::Get(Some(k1.clone())), OpResponse::Get(None)]
    );
    assert_eq!(rev(store).await?, before);

    let resp = store
        .txn(
            Txn::new()
                .when([
                    Compare::mod_revision("/registry/t/1", k1.mod_revision),
                    Compare::absent("/registry/t/2"),
                ])
                .and_then([Op::put("/registry/t/2", "two"), Op::delete("/registry/t/1")]),
        )
        .await?;
    assert!(resp.succeeded);
    assert_eq!(resp.revision, before + 1);
    assert!(matches!(&resp.responses[1], OpResponse::Delete(Some(prev)) if *prev == k1));
    assert_eq!(
        store
            .get("/registry/t/2")
            .await?
            .kv
            .map(|kv| kv.mod_revision),
        Some(before + 1)
    );
    assert_eq!(store.get("/registry/t/1").await?.kv, None);

    // A key written twice in one transaction is refused and nothing is stored.
    let refused = store
        .txn(Txn::new().and_then([Op::put("/registry/t/3", "a"), Op::put("/registry/t/3", "b")]))
        .await;
    assert!(
        matches!(refused, Err(StoreError::InvalidArgument { .. })),
        "{refused:?}"
    );
    assert_eq!(store.get("/registry/t/3").await?.kv, None);
    assert_eq!(rev(store).await?, before + 1);
    Ok(())
}

/// Watch replays every event after a revision, in order with previous values, then
/// follows live events, only for its prefix.
async fn watch_replays_then_follows(store: &dyn Store) -> Result<()> {
    let start = rev(store).await?;
    let c = store.create("/registry/w/a", b("1")).await?;
    let u = store
        .update("/registry/w/a", b("2"), c.mod_revision)
        .await?;
    store.put("/registry/x/other", b("not watched")).await?;
    let d = store.delete("/registry/w/a", None).await?;
    assert_eq!(d, u);

    let mut watch = store.watch("/registry/w/", start).await?;
    let got = events(&mut watch, 3).await?;
    assert_eq!(
        (got[0].kind, &got[0].kv, &got[0].prev),
        (EventKind::Put, &c, &None)
    );
    assert_eq!(
        (got[1].kind, &got[1].kv, &got[1].prev),
        (EventKind::Put, &u, &Some(c.clone()))
    );
    assert_eq!(got[2].kind, EventKind::Delete);
    assert_eq!(got[2].kv.key, "/registry/w/a");
    assert_eq!(got[2].kv.mod_revision, u.mod_revision + 2);
    assert_eq!(got[2].prev, Some(u.clone()));

    let live = store.create("/registry/w/b", b("live")).await?;
    store
        .put("/registry/x/other", b("still not watched"))
        .await?;
    let e = next_event(&mut watch).await?;
    assert_eq!((e.kind, e.kv, e.prev), (EventKind::Put, live.clone(), None));
    assert_quiet(&mut watch).await?;

    // From a later revision: only what came after it.
    let mut later = store.watch("/registry/w/", u.mod_revision).await?;
    let got = events(&mut later, 2).await?;
    assert_eq!(got[0].kind, EventKind::Delete);
    assert_eq!(got[1].kv, live);
    Ok(())
}

/// After compaction, older revisions fail with the compact revision; newer ones work.
async fn compaction(store: &dyn Store) -> Result<()> {
    let mut revs = Vec::new();
    for i in 0..10 {
        revs.push(
            store
                .put("/registry/k/x", b(format!("{i}")))
                .await?
                .mod_revision,
        );
    }
    let compact_at = revs[5];
    store.compact(compact_at).await?;
    assert_eq!(store.status().await?.compact_revision, compact_at);
    // Current data is intact.
    let kv = store
        .get("/registry/k/x")
        .await?
        .kv
        .expect("key survives compaction");
    assert_eq!(kv.value, b("9"));
    assert_eq!(kv.version, 10);

    let mut old = store.watch("/registry/k/", revs[1]).await?;
    match tokio::time::timeout(DEADLINE, old.next()).await? {
        Some(Err(StoreError::Compacted {
            compact_revision, ..
        })) => {
            assert_eq!(compact_revision, compact_at)
        }
        other => panic!("expected Compacted, got {other:?}"),
    }
    match store
        .range(RangeRequest::prefix("/registry/k/").at_revision(revs[2]))
        .await
    {
        Err(StoreError::Compacted {
            compact_revision, ..
        }) => assert_eq!(compact_revision, compact_at),
        other => panic!("expected Compacted, got {other:?}"),
    }
    // The compact revision itself is still readable and watchable.
    let at = store
        .range(RangeRequest::prefix("/registry/k/").at_revision(compact_at))
        .await?;
    assert_eq!(at.kvs[0].value, b("5"));
    let mut from = store.watch("/registry/k/", compact_at).await?;
    let got = events(&mut from, 4).await?;
    assert_eq!(
        got.iter().map(|e| e.kv.mod_revision).collect::<Vec<_>>(),
        revs[6..].to_vec()
    );

    assert!(matches!(
        store.compact(compact_at).await,
        Err(StoreError::Compacted { .. })
    ));
    let future = rev(store).await? + 10;
    assert!(matches!(
        store.compact(future).await,
        Err(StoreError::FutureRevision { .. })
    ));
    Ok(())
}

/// Compaction runs on a schedule.
async fn scheduled_compaction(store: Arc<dyn Store>) -> Result<()> {
    let _compactor = Compactor::spawn(store.clone(), Duration::from_millis(200));
    let first = store.put("/registry/s/x", b("0")).await?.mod_revision;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut i = 0;
    loop {
        i += 1;
        store.put("/registry/s/x", b(format!("{i}"))).await?;
        if store.status().await?.compact_revision > first {
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "no scheduled compaction happened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut old = store.watch("/registry/s/", first - 1).await?;
    let item = tokio::time::timeout(DEADLINE, old.next()).await?;
    assert!(
        matches!(item, Some(Err(StoreError::Compacted { .. }))),
        "{item:?}"
    );
    Ok(())
}

/// Many concurrent compare-and-swaps on one key: exactly one wins each round.
async fn concurrent_cas_has_one_winner(store: Arc<dyn Store>) -> Result<()> {
    let key = "/registry/race/counter";
    let mut current = store.create(key, b("0")).await?;
    for round in 0..5 {
        let mut tasks = Vec::new();
        for contender in 0..32 {
            let store = store.clone();
            let expected = current.mod_revision;
            tasks.push(tokio::spawn(async move {
                store
                    .update(key, b(format!("{round}-{contender}")), expected)
                    .await
            }));
        }
        let mut winners = Vec::new();
        for task in tasks {
            match task.await? {
                Ok(kv) => winners.push(kv),
                Err(StoreError::Conflict { .. }) => {}
                Err(other) => return Err(other.into()),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}");
        current = winners.remove(0);
        assert_eq!(store.get(key).await?.kv, Some(current.clone()));
    }
    // Concurrent creates of one new key: one wins, the rest see AlreadyExists.
    let mut tasks = Vec::new();
    for contender in 0..32 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .create("/registry/race/new", b(format!("{contender}")))
                .await
        }));
    }
    let mut created = 0;
    for task in tasks {
        match task.await? {
            Ok(_) => created += 1,
            Err(StoreError::AlreadyExists { .. }) => {}
            Err(other) => return Err(other.into()),
        }
    }
    assert_eq!(created, 1);
    Ok(())
}

/// Concurrent writers: every watcher sees every event, in one strictly increasing
/// order, the same order for all watchers.
async fn watch_order_under_concurrent_writers(store: Arc<dyn Store>) -> Result<()> {
    const WRITERS: usize = 8;
    const WRITES: usize = 40;
    let start = rev(store.as_ref()).await?;
    let mut w1 = store.watch("/registry/c/", start).await?;
    let mut w2 = store.watch("/registry/c/", start).await?;
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..WRITES {
                // Writers share some keys so versions interleave.
                let key = format!("/registry/c/{}", (w + i) % 5);
                acked.push(store.put(&key, b(format!("{w}-{i}"))).await?);
            }
            anyhow::Ok(acked)
        }));
    }
    let mut acked = Vec::new();
    for task in tasks {
        acked.extend(task.await??);
    }
    let seen1 = events(&mut w1, WRITERS * WRITES).await?;
    let seen2 = events(&mut w2, WRITERS * WRITES).await?;
    assert_eq!(seen1, seen2);
    let revisions: Vec<_> = seen1.iter().map(|e| e.kv.mod_revision).collect();
    assert!(
        revisions.windows(2).all(|w| w[0] < w[1]),
        "not strictly increasing"
    );
    // Exactly the acknowledged writes, each with the previous value of its key.
    let mut by_rev: BTreeMap<i64, KeyValue> =
        acked.into_iter().map(|kv| (kv.mod_revision, kv)).collect();
    let mut last: HashMap<String, KeyValue> = HashMap::new();
    for event in &seen1 {
        let acked = by_rev
            .remove(&event.kv.mod_revision)
            .expect("event for an acked write");
        assert_eq!(event.kv, acked);
        assert_eq!(event.prev.as_ref(), last.get(&event.kv.key));
        last.insert(event.kv.key.clone(), event.kv.clone());
    }
    assert!(by_rev.is_empty());
    assert_quiet(&mut w1).await?;
    Ok(())
}

/// Values of 1.5 MiB go in and come out intact through get, range and watch.
async fn large_values(store: &dyn Store) -> Result<()> {
    let mut rng = rand::rng();
    let mut big = vec![0u8; 1536 * 1024];
    rng.fill_bytes(&mut big);
    let mut big2 = vec![0u8; 1536 * 1024];
    rng.fill_bytes(&mut big2);
    let start = rev(store).await?;
    let first = store.create("/registry/big/1", b(&big)).await?;
    store
        .update("/registry/big/1", b(&big2), first.mod_revision)
        .await?;
    store.put("/registry/big/2", b(&big)).await?;
    assert_eq!(
        store.get("/registry/big/1").await?.kv.map(|kv| kv.value),
        Some(b(&big2))
    );
    let listed = store.range(RangeRequest::prefix("/registry/big/")).await?;
    assert_eq!(listed.kvs.len(), 2);
    assert_eq!(listed.kvs[1].value, b(&big));
    let mut watch = store.watch("/registry/big/", start).await?;
    let got = events(&mut watch, 3).await?;
    assert_eq!(got[1].kv.value, b(&big2));
    assert_eq!(got[1].prev.as_ref().map(|p| p.value.clone()), Some(b(&big)));
    Ok(())
}

macro_rules! conformance {
    ($backend:ident: $($case:ident),* ; shared: $($shared:ident),*) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() -> anyhow::Result<()> {
                    let backend = super::common::$backend().await?;
                    super::$case(backend.store()).await
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $shared() -> anyhow::Result<()> {
                    let backend = super::common::$backend().await?;
                    super::$shared(backend.store.clone()).await
                }
            )*
        }
    };
}

macro_rules! suite {
    ($($backend:ident),*) => {
        $(
            conformance!($backend:
                revisions_and_metadata,
                create_if_absent,
                guarded_update_and_delete,
                range_prefix_pagination,
                range_at_past_revision,
                transactions_are_atomic,
                watch_replays_then_follows,
                compaction,
                large_values;
                shared:
                scheduled_compaction,
                concurrent_cas_has_one_winner,
                watch_order_under_concurrent_writers
            );
        )*
    };
}

suite!(embedded, etcd);
