//! The etcd backend: a real etcd v3 server or cluster through `etcd-client`.
//!
//! Mapping onto etcd is direct (our semantics are etcd's). Two things etcd does not
//! give back directly are kept the way the Kubernetes apiserver keeps them:
//! - the compact revision, needed for `Compacted` errors on ranges and for status, is
//!   recorded in the key [`COMPACT_KEY`] after each compaction (upstream uses
//!   `compact_rev_key` the same way); a compaction done outside ferrokube is still
//!   reported as `Compacted`, with the revision ferrokube last recorded;
//! - a range at a past revision reports that revision, not the header's current one.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use etcd_client::{
    Client, CompactionOptions, Compare as EtcdCompare, CompareOp, ConnectOptions, DeleteOptions,
    EventType, GetOptions, KvClient, PutOptions, Txn as EtcdTxn, TxnOp, TxnOpResponse, WatchClient,
    WatchOptions,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::debug;

use crate::error::{Result, StoreError};
use crate::store::{Store, WatchStream};
use crate::types::{
    Compare, Event, EventKind, GetResponse, KeyValue, Op, OpResponse, RangeRequest, RangeResponse,
    Revision, StoreStatus, Txn, TxnResponse, prefix_end,
};

/// Where ferrokube records the last revision it compacted etcd to.
pub const COMPACT_KEY: &str = "/ferrokube/compact_revision";

/// Largest gRPC message accepted from etcd (a 10k-object list is tens of MiB).
const MAX_MESSAGE: usize = 512 * 1024 * 1024;

/// How to reach etcd.
#[derive(Clone, Debug)]
pub struct EtcdOptions {
    /// `host:port` or `http://host:port` of each member.
    pub endpoints: Vec<String>,
    /// Timeout for establishing a connection.
    pub connect_timeout: Duration,
    /// Timeout for each unary request.
    pub request_timeout: Duration,
}

impl EtcdOptions {
    /// Defaults for the given endpoints.
    pub fn new(endpoints: Vec<String>) -> Self {
        EtcdOptions {
            endpoints,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// A store backed by etcd v3.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    endpoints: Vec<String>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .finish()
    }
}

impl EtcdStore {
    /// Connects to etcd and checks that it answers.
    pub async fn connect(options: EtcdOptions) -> Result<Self> {
        if options.endpoints.is_empty() {
            return Err(StoreError::invalid("no etcd endpoints given"));
        }
        let connect = ConnectOptions::new()
            .with_connect_timeout(options.connect_timeout)
            .with_timeout(options.request_timeout)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(10));
        let client = Client::connect(&options.endpoints, Some(connect))
            .await
            .map_err(|e| StoreError::Unavailable {
                message: format!("cannot connect to etcd at {:?}: {e}", options.endpoints),
            })?;
        let store = EtcdStore {
            client,
            endpoints: options.endpoints,
        };
        // Fail fast when nothing answers (the client connects lazily).
        store.current_revision().await?;
        Ok(store)
    }

    fn kv(&self) -> KvClient {
        self.client
            .kv_client()
            .max_decoding_message_size(MAX_MESSAGE)
    }

    fn watcher(&self) -> WatchClient {
        self.client
            .watch_client()
            .max_decoding_message_size(MAX_MESSAGE)
    }

    async fn current_revision(&self) -> Result<Revision> {
        let resp = self
            .kv()
            .get(COMPACT_KEY, Some(GetOptions::new().with_count_only()))
            .await
            .map_err(map_error)?;
        header_revision(resp.header())
    }

    /// The compact revision ferrokube last recorded (0 if none).
    async fn recorded_compact_revision(&self) -> Result<(Revision, Revision)> {
        let resp = self.kv().get(COMPACT_KEY, None).await.map_err(map_error)?;
        match resp.kvs().first() {
            None => Ok((0, 0)),
            Some(kv) => {
                let value = std::str::from_utf8(kv.value())
                    .ok()
                    .and_then(|v| v.parse::<Revision>().ok())
                    .ok_or_else(|| StoreError::Corrupt {
                        key: COMPACT_KEY.into(),
                        message: "not a revision number".into(),
                    })?;
                Ok((value, kv.mod_revision()))
            }
        }
    }

    /// Records `revision` as compacted unless a later one is already recorded.
    async fn record_compaction(&self, revision: Revision) -> Result<()> {
        loop {
            let (recorded, mod_revision) = self.recorded_compact_revision().await?;
            if recorded >= revision {
                return Ok(());
            }
            let txn = EtcdTxn::new()
                .when([EtcdCompare::mod_revision(
                    COMPACT_KEY,
                    CompareOp::Equal,
                    mod_revision,
                )])
                .and_then([TxnOp::put(COMPACT_KEY, revision.to_string(), None)]);
            if self.kv().txn(txn).await.map_err(map_error)?.succeeded() {
                return Ok(());
            }
        }
    }

    async fn compacted(&self, requested: Revision) -> StoreError {
        match self.recorded_compact_revision().await {
            Ok((compact_revision, _)) => StoreError::Compacted {
                requested,
                compact_revision,
            },
            Err(error) => error,
        }
    }
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Result<Revision> {
    header
        .map(|h| h.revision())
        .ok_or_else(|| StoreError::backend("etcd response without a header"))
}

fn is_compacted(error: &etcd_client::Error) -> bool {
    error
        .to_string()
        .contains("required revision has been compacted")
}

fn is_future(error: &etcd_client::Error) -> bool {
    error
        .to_string()
        .contains("required revision is a future revision")
}

/// Maps an etcd client error onto the store's errors (compaction and future-revision
/// errors are recognised at the call sites that know the revision asked for).
fn map_error(error: etcd_client::Error) -> StoreError {
    use etcd_client::Error as E;
    use tonic::Code;
    match &error {
        E::GRpcStatus(status) => match status.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
                StoreError::Unavailable {
                    message: format!("etcd: {}", status.message()),
                }
            }
            Code::InvalidArgument | Code::ResourceExhausted => {
                StoreError::invalid(format!("etcd refused the request: {}", status.message()))
            }
            _ => StoreError::backend(format!("etcd: {}", status.message())),
        },
        E::TransportError(_) | E::IoError(_) | E::EndpointError(_) => StoreError::Unavailable {
            message: format!("etcd: {error}"),
        },
        _ => StoreError::backend(format!("etcd: {error}")),
    }
}

fn convert_kv(kv: &etcd_client::KeyValue) -> Result<KeyValue> {
    let key = kv.key_str().map_err(|_| StoreError::Corrupt {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        message: "key is not UTF-8".into(),
    })?;
    Ok(KeyValue {
        key: key.to_string(),
        value: Bytes::copy_from_slice(kv.value()),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
    })
}

fn convert_op(op: &Op) -> TxnOp {
    match op {
        Op::Get { key } => TxnOp::get(key.as_str(), None),
        Op::Put { key, value } => TxnOp::put(
            key.as_str(),
            value.to_vec(),
            Some(PutOptions::new().with_prev_key()),
        ),
        Op::Delete { key } => {
            TxnOp::delete(key.as_str(), Some(DeleteOptions::new().with_prev_key()))
        }
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<GetResponse> {
        if key.is_empty() {
            return Err(StoreError::invalid("empty key"));
        }
        let resp = self.kv().get(key, None).await.map_err(map_error)?;
        Ok(GetResponse {
            kv: resp.kvs().first().map(convert_kv).transpose()?,
            revision: header_revision(resp.header())?,
        })
    }

    async fn range(&self, request: RangeRequest) -> Result<RangeResponse> {
        let prefix = request.prefix.as_bytes();
        let mut start = match &request.start_after {
            Some(after) if after.as_bytes() >= prefix => {
                let mut k = after.as_bytes().to_vec();
                k.push(0);
                k
            }
            _ => prefix.to_vec(),
        };
        if start.is_empty() {
            // etcd keys are never empty; "\0" with range end "\0" means every key.
            start = vec![0];
        }
        let end = prefix_end(prefix).unwrap_or_else(|| vec![0]);
        let mut options = GetOptions::new().with_range(end);
        if request.limit > 0 {
            options = options.with_limit(i64::try_from(request.limit).unwrap_or(i64::MAX));
        }
        let at = request.revision.filter(|r| *r > 0);
        if let Some(rev) = at {
            options = options.with_revision(rev);
        }
        let resp = match self.kv().get(start, Some(options)).await {
            Ok(resp) => resp,
            Err(e) if is_compacted(&e) => {
                return Err(self.compacted(at.unwrap_or_default()).await);
            }
            Err(e) if is_future(&e) => {
                return Err(StoreError::FutureRevision {
                    requested: at.unwrap_or_default(),
                    current: self.current_revision().await?,
                });
            }
            Err(e) => return Err(map_error(e)),
        };
        let kvs = resp
            .kvs()
            .iter()
            .map(convert_kv)
            .collect::<Result<Vec<_>>>()?;
        Ok(RangeResponse {
            more: resp.more(),
            count: usize::try_from(resp.count()).unwrap_or_default(),
            revision: match at {
                Some(rev) => rev,
                None => header_revision(resp.header())?,
            },
            kvs,
        })
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        txn.validate()?;
        let compares: Vec<EtcdCompare> = txn
            .compares
            .iter()
            .map(|c| match c {
                Compare::ModRevision { key, revision } => {
                    EtcdCompare::mod_revision(key.as_str(), CompareOp::Equal, *revision)
                }
            })
            .collect();
        let request = EtcdTxn::new()
            .when(compares)
            .and_then(txn.success.iter().map(convert_op).collect::<Vec<_>>())
            .or_else(txn.failure.iter().map(convert_op).collect::<Vec<_>>());
        let resp = self.kv().txn(request).await.map_err(map_error)?;
        let revision = header_revision(resp.header())?;
        let ops = if resp.succeeded() {
            &txn.success
        } else {
            &txn.failure
        };
        let results = resp.op_responses();
        if results.len() != ops.len() {
            return Err(StoreError::backend(format!(
                "etcd answered {} operations for {}",
                results.len(),
                ops.len()
            )));
        }
        let mut responses = Vec::with_capacity(ops.len());
        for (op, result) in ops.iter().zip(results) {
            let response = match (op, result) {
                (Op::Get { .. }, TxnOpResponse::Get(get)) => {
                    OpResponse::Get(get.kvs().first().map(convert_kv).transpose()?)
                }
                (Op::Put { key, value }, TxnOpResponse::Put(put)) => {
                    let prev = put.prev_key().map(convert_kv).transpose()?;
                    let kv = KeyValue::after_put(key, value, prev.as_ref(), revision);
                    OpResponse::Put { kv, prev }
                }
                (Op::Delete { .. }, TxnOpResponse::Delete(delete)) => {
                    OpResponse::Delete(delete.prev_kvs().first().map(convert_kv).transpose()?)
                }
                (op, other) => {
                    return Err(StoreError::backend(format!(
                        "etcd answered {other:?} to {op:?}"
                    )));
                }
            };
            responses.push(response);
        }
        Ok(TxnResponse {
            succeeded: resp.succeeded(),
            revision,
            responses,
        })
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        if after < 0 {
            return Err(StoreError::invalid(format!(
                "negative watch revision {after}"
            )));
        }
        let options = WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_start_revision(after + 1);
        let mut stream = self
            .watcher()
            .watch(prefix, Some(options))
            .await
            .map_err(map_error)?;
        let (out, rx) = mpsc::channel::<Result<Event>>(256);
        let requested = after + 1;
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    _ = out.closed() => return,
                    message = stream.message() => message,
                };
                let resp = match message {
                    Ok(Some(resp)) => resp,
                    Ok(None) => {
                        let _ = out
                            .send(Err(StoreError::Unavailable {
                                message: "etcd closed the watch stream".into(),
                            }))
                            .await;
                        return;
                    }
                    Err(e) => {
                        let _ = out.send(Err(map_error(e))).await;
                        return;
                    }
                };
                if resp.compact_revision() > 0 {
                    let _ = out
                        .send(Err(StoreError::Compacted {
                            requested,
                            compact_revision: resp.compact_revision(),
                        }))
                        .await;
                    return;
                }
                if resp.canceled() {
                    let _ = out
                        .send(Err(StoreError::Unavailable {
                            message: format!("etcd canceled the watch: {}", resp.cancel_reason()),
                        }))
                        .await;
                    return;
                }
                for event in resp.events() {
                    let converted = convert_event(event);
                    let failed = converted.is_err();
                    if out.send(converted).await.is_err() || failed {
                        return;
                    }
                }
            }
        });
        debug!(prefix, after, "etcd watch started");
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        let (recorded, _) = self.recorded_compact_revision().await?;
        if revision <= recorded {
            return Err(StoreError::Compacted {
                requested: revision,
                compact_revision: recorded,
            });
        }
        match self
            .kv()
            .compact(revision, Some(CompactionOptions::new().with_physical()))
            .await
        {
            Ok(_) => {}
            Err(e) if is_compacted(&e) => return Err(self.compacted(revision).await),
            Err(e) if is_future(&e) => {
                return Err(StoreError::FutureRevision {
                    requested: revision,
                    current: self.current_revision().await?,
                });
            }
            Err(e) => return Err(map_error(e)),
        }
        self.record_compaction(revision).await
    }

    async fn status(&self) -> Result<StoreStatus> {
        let status = self
            .client
            .maintenance_client()
            .status()
            .await
            .map_err(map_error)?;
        let (compact_revision, _) = self.recorded_compact_revision().await?;
        Ok(StoreStatus {
            backend: "etcd",
            revision: header_revision(status.header())?,
            compact_revision,
            db_size_bytes: u64::try_from(status.db_size()).ok(),
        })
    }
}

fn convert_event(event: &etcd_client::Event) -> Result<Event> {
    let kv = event
        .kv()
        .ok_or_else(|| StoreError::backend("etcd event without a key"))?;
    let prev = event.prev_kv().map(convert_kv).transpose()?;
    let kind = match event.event_type() {
        EventType::Put => EventKind::Put,
        EventType::Delete => EventKind::Delete,
    };
    let mut kv = convert_kv(kv)?;
    if kind == EventKind::Delete {
        kv.value = Bytes::new();
        kv.create_revision = 0;
        kv.version = 0;
    }
    Ok(Event { kind, kv, prev })
}
