//! `ferrokube store ...`: direct access to the state store, for operators and tests
//! (what `etcdctl` is to etcd). Records print as one JSON object per line.

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Subcommand;
use ferrokube_store::{Datastore, KeyValue, RangeRequest, Store};
use futures::StreamExt;
use serde_json::json;

use crate::StoreArgs;

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Print the backend, current revision and compact revision.
    Status {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Print one key.
    Get {
        #[command(flatten)]
        store: StoreArgs,
        key: String,
    },
    /// Write one key.
    Put {
        #[command(flatten)]
        store: StoreArgs,
        key: String,
        value: String,
    },
    /// Delete one key.
    Delete {
        #[command(flatten)]
        store: StoreArgs,
        key: String,
    },
    /// List keys under a prefix.
    List {
        #[command(flatten)]
        store: StoreArgs,
        prefix: String,
        /// At most this many keys.
        #[arg(long, default_value_t = 0)]
        limit: usize,
        /// Read as of this past revision.
        #[arg(long)]
        revision: Option<i64>,
    },
    /// Discard history before a revision.
    Compact {
        #[command(flatten)]
        store: StoreArgs,
        revision: i64,
    },
    /// Print events under a prefix after a revision, then follow live ones.
    Watch {
        #[command(flatten)]
        store: StoreArgs,
        prefix: String,
        /// Events after this revision (default: from now on).
        #[arg(long)]
        after: Option<i64>,
    },
    /// Write keys `PREFIX<writer>/<n>` from concurrent writers, printing `ack KEY` once each
    /// write is acknowledged (durable). The value of a key is the key repeated to
    /// `--value-size` bytes. Used by the durability test and for quick load.
    Stress {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long, default_value = "/stress/")]
        prefix: String,
        #[arg(long, default_value_t = 8)]
        writers: usize,
        /// Writes per writer (0: until killed).
        #[arg(long, default_value_t = 0)]
        count: u64,
        #[arg(long, default_value_t = 256)]
        value_size: usize,
    },
}

/// The value `store stress` writes for `key`: the key repeated to `size` bytes.
pub fn stress_value(key: &str, size: usize) -> Vec<u8> {
    key.bytes().cycle().take(size.max(key.len())).collect()
}

async fn open(args: &StoreArgs) -> Result<Arc<dyn Store>> {
    let datastore = Datastore::parse(&args.data_dir, args.datastore.as_deref())?;
    datastore
        .open()
        .await
        .with_context(|| format!("opening the {} store", datastore.describe()))
}

fn print_kv(kv: &KeyValue) {
    println!(
        "{}",
        json!({
            "key": kv.key,
            "value": String::from_utf8_lossy(&kv.value),
            "create_revision": kv.create_revision,
            "mod_revision": kv.mod_revision,
            "version": kv.version,
        })
    );
}

pub async fn run(command: StoreCommand) -> Result<()> {
    match command {
        StoreCommand::Status { store } => {
            let status = open(&store).await?.status().await?;
            println!(
                "{}",
                json!({
                    "backend": status.backend,
                    "revision": status.revision,
                    "compact_revision": status.compact_revision,
                    "db_size_bytes": status.db_size_bytes,
                })
            );
        }
        StoreCommand::Get { store, key } => match open(&store).await?.get(&key).await?.kv {
            Some(kv) => print_kv(&kv),
            None => bail!("key {key:?} not found"),
        },
        StoreCommand::Put { store, key, value } => {
            print_kv(&open(&store).await?.put(&key, Bytes::from(value)).await?);
        }
        StoreCommand::Delete { store, key } => {
            print_kv(&open(&store).await?.delete(&key, None).await?);
        }
        StoreCommand::List {
            store,
            prefix,
            limit,
            revision,
        } => {
            let mut request = RangeRequest::prefix(prefix).with_limit(limit);
            request.revision = revision;
            let resp = open(&store).await?.range(request).await?;
            for kv in &resp.kvs {
                print_kv(kv);
            }
            eprintln!(
                "{} of {} keys at revision {}{}",
                resp.kvs.len(),
                resp.count,
                resp.revision,
                if resp.more { " (more follow)" } else { "" }
            );
        }
        StoreCommand::Compact { store, revision } => {
            open(&store).await?.compact(revision).await?;
            eprintln!("compacted to revision {revision}");
        }
        StoreCommand::Watch {
            store,
            prefix,
            after,
        } => {
            let store = open(&store).await?;
            let after = match after {
                Some(after) => after,
                None => store.status().await?.revision,
            };
            let mut events = store.watch(&prefix, after).await?;
            while let Some(event) = events.next().await {
                let event = event?;
                println!(
                    "{}",
                    json!({
                        "type": format!("{:?}", event.kind),
                        "key": event.kv.key,
                        "revision": event.kv.mod_revision,
                        "value": String::from_utf8_lossy(&event.kv.value),
                    })
                );
            }
        }
        StoreCommand::Stress {
            store,
            prefix,
            writers,
            count,
            value_size,
        } => {
            stress(
                open(&store).await?,
                prefix,
                writers.max(1),
                count,
                value_size,
            )
            .await?
        }
    }
    Ok(())
}

async fn stress(
    store: Arc<dyn Store>,
    prefix: String,
    writers: usize,
    count: u64,
    value_size: usize,
) -> Result<()> {
    use std::io::Write;
    let (acks, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (store, prefix, acks) = (store.clone(), prefix.clone(), acks.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while count == 0 || n < count {
                let key = format!("{prefix}{w}/{n}");
                store
                    .create(&key, Bytes::from(stress_value(&key, value_size)))
                    .await?;
                if acks.send(key).is_err() {
                    break;
                }
                n += 1;
            }
            anyhow::Ok(())
        }));
    }
    drop(acks);
    let mut out = std::io::stdout().lock();
    while let Some(key) = rx.recv().await {
        // Flushed per line: whoever reads us must see an ack as soon as it is durable.
        writeln!(out, "ack {key}")?;
        out.flush()?;
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}
