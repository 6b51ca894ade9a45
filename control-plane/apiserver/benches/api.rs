//! `cargo xtask bench api`: the apiserver on the embedded store and on a real etcd, in
//! one run: create, get, list (10k pods) and watch fan-out (1000 watchers) at 1, 16 and
//! 100 concurrent clients, p50/p99 per verb, and API create latency against a raw store
//! create. Prints a table; JSON to `target/bench/api.json` (or `--out PATH`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use ferrokube_apiserver::alloc::Ranges;
use ferrokube_apiserver::{Config, Server};
use ferrokube_store::{EmbeddedOptions, EmbeddedStore, EtcdOptions, EtcdStore, Store};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};

const CONCURRENCY: [usize; 3] = [1, 16, 100];
const LIST_PODS: usize = 10_000;
const WATCHERS: usize = 1000;
const WATCH_EVENTS: usize = 100;

type Http = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

#[derive(Clone)]
struct Api {
    http: Http,
    base: String,
    token: String,
}

impl Api {
    async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, Bytes)> {
        let request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                body.map(|b| serde_json::to_vec(b).unwrap_or_default())
                    .unwrap_or_default(),
            )))?;
        let response = self.http.request(request).await?;
        let code = response.status().as_u16();
        let bytes = response.into_body().collect().await?.to_bytes();
        Ok((code, bytes))
    }
}

fn client(ca_pem: &str, h2: bool) -> Result<Http> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    let https = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .http2_only(h2)
        .pool_max_idle_per_host(256)
        .build(https))
}

fn pod(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "bench", "tier": "web"}},
        "spec": {"containers": [{"name": "app", "image": "registry.local/app:1.0", "ports": [{"containerPort": 8080}],
                 "env": [{"name": "MODE", "value": "bench"}], "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]},
    })
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e3
}

fn summary(mut latencies: Vec<Duration>, elapsed: f64) -> Value {
    latencies.sort();
    json!({"ops": latencies.len(), "ops_per_sec": latencies.len() as f64 / elapsed, "p50_ms": pct(&latencies, 0.5), "p99_ms": pct(&latencies, 0.99)})
}

/// Runs `op(client_index, iteration)` from `clients` tasks for `seconds` (at least once each).
async fn load<F, Fut>(clients: usize, seconds: f64, op: F) -> Result<Value>
where
    F: Fn(usize, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = 0;
            while i == 0 || Instant::now() < deadline {
                let t = Instant::now();
                op(c, i).await?;
                latencies.push(t.elapsed());
                i += 1;
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    Ok(summary(all, started.elapsed().as_secs_f64()))
}

async fn expect(
    api: &Api,
    method: &str,
    path: &str,
    body: Option<&Value>,
    code: u16,
) -> Result<Bytes> {
    let (got, bytes) = api.call(method, path, body).await?;
    if got != code {
        bail!("{method} {path}: {got} {}", String::from_utf8_lossy(&bytes));
    }
    Ok(bytes)
}

async fn run_backend(store: Arc<dyn Store>, work: &Path, seconds: f64) -> Result<Value> {
    // Raw store create, the baseline for the API's own cost.
    let value = Bytes::from(serde_json::to_vec(&pod("raw"))?);
    let mut raw = Vec::new();
    let t0 = Instant::now();
    for i in 0..500 {
        let t = Instant::now();
        store
            .create(&format!("/bench/raw/{i}"), value.clone())
            .await?;
        raw.push(t.elapsed());
    }
    let raw = summary(raw, t0.elapsed().as_secs_f64());

    let data_dir = tempfile::tempdir_in(work)?;
    let config = Config {
        data_dir: data_dir.path().to_path_buf(),
        bind: [127, 0, 0, 1].into(),
        port: 0,
        bookmark_interval: Duration::from_secs(60),
        ranges: Ranges::default(),
    };
    let server = Server::bind(config, store).await?;
    let port = server.addr.port();
    tokio::spawn(server.serve(std::future::pending()));
    let ca = std::fs::read_to_string(data_dir.path().join("pki/ca.crt"))?;
    let token = std::fs::read_to_string(data_dir.path().join("tokens.csv"))?
        .split(',')
        .next()
        .context("token")?
        .to_string();
    let api = Api {
        http: client(&ca, false)?,
        base: format!("https://127.0.0.1:{port}"),
        token,
    };
    for ns in ["bench", "list", "watch"] {
        expect(
            &api,
            "POST",
            "/api/v1/namespaces",
            Some(&json!({"metadata": {"name": ns}})),
            201,
        )
        .await?;
    }

    let mut result = json!({"raw_store_create": raw});
    for clients in CONCURRENCY {
        let a = api.clone();
        let create = load(clients, seconds, move |c, i| {
            let a = a.clone();
            async move {
                expect(
                    &a,
                    "POST",
                    "/api/v1/namespaces/bench/pods",
                    Some(&pod(&format!("p-{clients}-{c}-{i}"))),
                    201,
                )
                .await
                .map(|_| ())
            }
        })
        .await?;
        let a = api.clone();
        let get = load(clients, seconds, move |c, i| {
            let a = a.clone();
            async move {
                let _ = i;
                expect(
                    &a,
                    "GET",
                    &format!("/api/v1/namespaces/bench/pods/p-{clients}-{c}-0"),
                    None,
                    200,
                )
                .await
                .map(|_| ())
            }
        })
        .await?;
        eprintln!(
            "  c={clients}: create p50 {:.2} ms, get p50 {:.2} ms",
            create["p50_ms"].as_f64().unwrap_or(0.0),
            get["p50_ms"].as_f64().unwrap_or(0.0)
        );
        result["create"][clients.to_string()] = create;
        result["get"][clients.to_string()] = get;
    }

    // 10k pods, then full lists.
    let a = api.clone();
    let tasks: Vec<_> = (0..100)
        .map(|c| {
            let a = a.clone();
            tokio::spawn(async move {
                for i in (c..LIST_PODS).step_by(100) {
                    expect(
                        &a,
                        "POST",
                        "/api/v1/namespaces/list/pods",
                        Some(&pod(&format!("l-{i:05}"))),
                        201,
                    )
                    .await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    for clients in CONCURRENCY {
        let a = api.clone();
        let list = load(clients, seconds, move |_, _| {
            let a = a.clone();
            async move {
                let bytes = expect(&a, "GET", "/api/v1/namespaces/list/pods", None, 200).await?;
                // Count items without parsing 10 MB on the client (that is not the server's cost).
                const NAME: &[u8] = b"\"name\":\"l-";
                let items = bytes.windows(NAME.len()).filter(|w| *w == NAME).count();
                anyhow::ensure!(items == LIST_PODS, "list returned {items}");
                Ok(())
            }
        })
        .await?;
        eprintln!(
            "  c={clients}: list 10k p50 {:.1} ms",
            list["p50_ms"].as_f64().unwrap_or(0.0)
        );
        result["list"][clients.to_string()] = list;
    }

    // Watch fan-out: 1000 watchers over h2 connections; writers create pods.
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let received: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let watch_clients: Vec<Api> = (0..10)
        .map(|_| {
            Ok(Api {
                http: client(&ca, true)?,
                ..api.clone()
            })
        })
        .collect::<Result<_>>()?;
    let rv = serde_json::from_slice::<Value>(
        &expect(&api, "GET", "/api/v1/namespaces/watch/pods", None, 200).await?,
    )?["metadata"]["resourceVersion"]
        .as_str()
        .context("rv")?
        .to_string();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(WATCHERS);
    for w in 0..WATCHERS {
        let (a, received, ready) = (
            watch_clients[w % 10].clone(),
            received.clone(),
            ready_tx.clone(),
        );
        let path = format!("/api/v1/namespaces/watch/pods?watch=1&resourceVersion={rv}");
        tokio::spawn(async move {
            let request = Request::builder()
                .uri(format!("{}{path}", a.base))
                .header("authorization", format!("Bearer {}", a.token))
                .body(Full::new(Bytes::new()))?;
            let response = a.http.request(request).await?;
            let _ = ready.send(()).await;
            let mut body = response.into_body();
            let mut buffer = Vec::new();
            while let Some(frame) = body.frame().await {
                let Ok(data) = frame?.into_data() else {
                    continue;
                };
                buffer.extend_from_slice(&data);
                while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buffer.drain(..=end).collect();
                    let now = Instant::now();
                    if let Ok(event) = serde_json::from_slice::<Value>(&line)
                        && let Some(name) = event["object"]["metadata"]["name"].as_str()
                    {
                        received
                            .lock()
                            .map_err(|_| anyhow::anyhow!("poisoned"))?
                            .push((name.to_string(), now));
                    }
                }
            }
            anyhow::Ok(())
        });
    }
    drop(ready_tx);
    for _ in 0..WATCHERS {
        tokio::time::timeout(Duration::from_secs(60), ready_rx.recv())
            .await?
            .context("a watcher failed to start")?;
    }
    for clients in CONCURRENCY {
        received
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .clear();
        let tasks: Vec<_> = (0..clients)
            .map(|c| {
                let (a, sent) = (api.clone(), sent.clone());
                tokio::spawn(async move {
                    for i in (c..WATCH_EVENTS).step_by(clients) {
                        let name = format!("w-{clients}-{i}");
                        sent.lock()
                            .map_err(|_| anyhow::anyhow!("poisoned"))?
                            .insert(name.clone(), Instant::now());
                        expect(
                            &a,
                            "POST",
                            "/api/v1/namespaces/watch/pods",
                            Some(&pod(&name)),
                            201,
                        )
                        .await?;
                    }
                    anyhow::Ok(())
                })
            })
            .collect();
        for t in tasks {
            t.await??;
        }
        let expected = WATCHERS * WATCH_EVENTS;
        let deadline = Instant::now() + Duration::from_secs(120);
        while received
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .len()
            < expected
        {
            anyhow::ensure!(Instant::now() < deadline, "watch events did not all arrive");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let sent = sent.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        let mut latencies: Vec<Duration> = received
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .iter()
            .filter_map(|(name, at)| sent.get(name).map(|s| at.saturating_duration_since(*s)))
            .collect();
        latencies.sort();
        let point = json!({"watchers": WATCHERS, "events": WATCH_EVENTS, "deliveries": latencies.len(), "p50_ms": pct(&latencies, 0.5), "p99_ms": pct(&latencies, 0.99)});
        eprintln!(
            "  watch fan-out, {clients} writer(s): p50 {:.1} ms p99 {:.1} ms",
            point["p50_ms"].as_f64().unwrap_or(0.0),
            point["p99_ms"].as_f64().unwrap_or(0.0)
        );
        result["watch"][clients.to_string()] = point;
    }
    let api_p50 = result["create"]["1"]["p50_ms"].as_f64().unwrap_or(f64::NAN);
    let raw_p50 = result["raw_store_create"]["p50_ms"]
        .as_f64()
        .unwrap_or(f64::NAN);
    result["api_create_vs_store_create_p50"] = json!(api_p50 / raw_p50);
    Ok(result)
}

fn table(embedded: &Value, etcd: &Value) -> String {
    let mut rows = vec!["| verb | clients | embedded p50 / p99 ms | etcd p50 / p99 ms | embedded ops/s | etcd ops/s |".to_string(), "|---|---:|---:|---:|---:|---:|".to_string()];
    for verb in ["create", "get", "list", "watch"] {
        for clients in CONCURRENCY {
            let (e, t) = (
                &embedded[verb][clients.to_string()],
                &etcd[verb][clients.to_string()],
            );
            let f =
                |v: &Value, k: &str| v[k].as_f64().map_or("-".to_string(), |x| format!("{x:.2}"));
            let label = if verb == "watch" {
                "watch fan-out (1000 watchers), writers"
            } else {
                verb
            };
            rows.push(format!(
                "| {label} | {clients} | {} / {} | {} / {} | {} | {} |",
                f(e, "p50_ms"),
                f(e, "p99_ms"),
                f(t, "p50_ms"),
                f(t, "p99_ms"),
                f(e, "ops_per_sec"),
                f(t, "ops_per_sec")
            ));
        }
    }
    rows.push(format!(
        "| API create p50 / raw store create p50 | 1 | {:.1}x | {:.1}x | | |",
        embedded["api_create_vs_store_create_p50"]
            .as_f64()
            .unwrap_or(f64::NAN),
        etcd["api_create_vs_store_create_p50"]
            .as_f64()
            .unwrap_or(f64::NAN)
    ));
    rows.join("\n")
}

fn main() -> Result<()> {
    let mut out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench/api.json");
    let mut seconds = 2.0;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--out" => out = PathBuf::from(args.next().context("--out needs a path")?),
            "--seconds" => seconds = args.next().context("--seconds needs a number")?.parse()?,
            "--bench" => {}
            other => bail!("unknown argument {other:?}"),
        }
    }
    let work = out
        .parent()
        .context("--out has no parent")?
        .join("api-data");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        eprintln!("embedded:");
        let embedded_store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(
            &work.join("embedded"),
            EmbeddedOptions::default(),
        )?);
        let embedded = run_backend(embedded_store, &work, seconds).await?;
        eprintln!("etcd:");
        let etcd = ferrokube_testkit::Etcd::start_in(Some(&work))?;
        let etcd_store: Arc<dyn Store> =
            Arc::new(EtcdStore::connect(EtcdOptions::new(vec![etcd.endpoint()])).await?);
        let etcd_result = run_backend(etcd_store, &work, seconds).await?;
        drop(etcd);
        anyhow::Ok((embedded, etcd_result))
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    let _ = std::fs::remove_dir_all(&work);
    let (embedded, etcd) = result?;
    let report = json!({"benchmark": "api", "command": "cargo xtask bench api", "seconds_per_point": seconds, "embedded": embedded, "etcd": etcd});
    std::fs::create_dir_all(out.parent().context("no parent")?)?;
    std::fs::write(&out, serde_json::to_string_pretty(&report)?)?;
    println!("{}", table(&report["embedded"], &report["etcd"]));
    println!("written to {}", out.display());
    Ok(())
}
