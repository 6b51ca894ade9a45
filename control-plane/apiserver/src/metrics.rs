//! Prometheus metrics served at `/metrics`: requests by verb, resource and code, request
//! latency, open watches, and store latency by operation.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use ferrokube_store::{
    GetResponse, KeyValue, RangeRequest, RangeResponse, Revision, Store, StoreStatus, Txn,
    TxnResponse, WatchStream,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    verb: String,
    resource: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerbResource {
    verb: String,
    resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabel {
    resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabel {
    operation: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

/// The apiserver's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<VerbResource, Histogram, fn() -> Histogram>,
    watchers: Family<ResourceLabel, Gauge>,
    store_watches: Family<ResourceLabel, Counter>,
    store_latency: Family<OperationLabel, Histogram, fn() -> Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<VerbResource, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let watchers = Family::<ResourceLabel, Gauge>::default();
        let store_watches = Family::<ResourceLabel, Counter>::default();
        let store_latency =
            Family::<OperationLabel, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram as fn() -> Histogram,
            );
        registry.register(
            "apiserver_request",
            "Requests by verb, resource and HTTP code",
            requests.clone(),
        );
        registry.register(
            "apiserver_request_duration_seconds",
            "Request latency (to the response head for watches)",
            latency.clone(),
        );
        registry.register(
            "apiserver_registered_watchers",
            "Open watches by resource",
            watchers.clone(),
        );
        registry.register(
            "apiserver_storage_watches",
            "Store watches opened by resource (the watch cache opens one per resource)",
            store_watches.clone(),
        );
        registry.register(
            "apiserver_storage_request_duration_seconds",
            "Store latency by operation",
            store_latency.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            watchers,
            store_watches,
            store_latency,
        }
    }
}

impl Metrics {
    /// Records one finished request.
    pub fn request(&self, verb: &str, resource: &str, code: u16, started: Instant) {
        self.requests
            .get_or_create(&RequestLabels {
                verb: verb.into(),
                resource: resource.into(),
                code: code.to_string(),
            })
            .inc();
        self.latency
            .get_or_create(&VerbResource {
                verb: verb.into(),
                resource: resource.into(),
            })
            .observe(started.elapsed().as_secs_f64());
    }

    /// Counts a watch as open until the returned guard drops.
    pub fn watch_opened(self: &Arc<Self>, resource: &str) -> WatchGuard {
        let labels = ResourceLabel {
            resource: resource.into(),
        };
        self.watchers.get_or_create(&labels).inc();
        WatchGuard {
            metrics: self.clone(),
            labels,
        }
    }

    /// Counts a store watch opened for `resource`.
    pub fn store_watch_opened(&self, resource: &str) {
        self.store_watches
            .get_or_create(&ResourceLabel {
                resource: resource.into(),
            })
            .inc();
    }

    fn store_op(&self, operation: &str, started: Instant) {
        self.store_latency
            .get_or_create(&OperationLabel {
                operation: operation.into(),
            })
            .observe(started.elapsed().as_secs_f64());
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Decrements the open-watch gauge when dropped.
#[derive(Debug)]
pub struct WatchGuard {
    metrics: Arc<Metrics>,
    labels: ResourceLabel,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.metrics.watchers.get_or_create(&self.labels).dec();
    }
}

/// A store that records the latency of each operation.
#[derive(Debug)]
pub struct MeteredStore {
    inner: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

impl MeteredStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Store>, metrics: Arc<Metrics>) -> Self {
        MeteredStore { inner, metrics }
    }
}

#[async_trait]
impl Store for MeteredStore {
    async fn get(&self, key: &str) -> ferrokube_store::Result<GetResponse> {
        let t = Instant::now();
        let r = self.inner.get(key).await;
        self.metrics.store_op("get", t);
        r
    }

    async fn range(&self, request: RangeRequest) -> ferrokube_store::Result<RangeResponse> {
        let t = Instant::now();
        let r = self.inner.range(request).await;
        self.metrics.store_op("range", t);
        r
    }

    async fn txn(&self, txn: Txn) -> ferrokube_store::Result<TxnResponse> {
        let t = Instant::now();
        let r = self.inner.txn(txn).await;
        self.metrics.store_op("txn", t);
        r
    }

    async fn watch(&self, prefix: &str, after: Revision) -> ferrokube_store::Result<WatchStream> {
        self.inner.watch(prefix, after).await
    }

    async fn compact(&self, revision: Revision) -> ferrokube_store::Result<()> {
        let t = Instant::now();
        let r = self.inner.compact(revision).await;
        self.metrics.store_op("compact", t);
        r
    }

    async fn status(&self) -> ferrokube_store::Result<StoreStatus> {
        self.inner.status().await
    }

    async fn create(&self, key: &str, value: Bytes) -> ferrokube_store::Result<KeyValue> {
        let t = Instant::now();
        let r = self.inner.create(key, value).await;
        self.metrics.store_op("create", t);
        r
    }
}
