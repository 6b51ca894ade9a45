//! `cargo xtask bench store`: the embedded store against a real etcd, side by side in one
//! run on this machine: create throughput at 1, 16 and 64 concurrent writers, ranges over
//! 10k keys, and watch delivery latency (write issued -> event received).
//!
//! Prints a table and writes JSON (default `target/bench/store.json`, or `--out PATH`).
//! `--seconds N` sets how long each throughput point runs (default 3).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use ferrokube_store::{
    EmbeddedOptions, EmbeddedStore, EtcdOptions, EtcdStore, RangeRequest, Store,
};
use futures::StreamExt;
use serde_json::{Value, json};

const CONCURRENCY: [usize; 3] = [1, 16, 64];
const VALUE_SIZE: usize = 1024;
const RANGE_KEYS: usize = 10_000;
const WATCH_EVENTS: usize = 2_000;

struct Config {
    out: PathBuf,
    seconds: f64,
}

fn config() -> Result<Config> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut config = Config {
        out: workspace.join("target/bench/store.json"),
        seconds: 3.0,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--out" => config.out = args.next().context("--out needs a path")?.into(),
            "--seconds" => {
                config.seconds = args.next().context("--seconds needs a number")?.parse()?
            }
            // cargo bench passes --bench; nothing else is ours.
            "--bench" => {}
            other => anyhow::bail!("unknown argument {other:?}"),
        }
    }
    Ok(config)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx].as_secs_f64() * 1e3
}

/// Creates as many keys as possible from `writers` tasks for `seconds`.
async fn writes(store: Arc<dyn Store>, writers: usize, seconds: f64) -> Result<Value> {
    let value = Bytes::from(vec![b'x'; VALUE_SIZE]);
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (store, value) = (store.clone(), value.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                store
                    .create(&format!("/bench/writes/{writers}/{w}/{n}"), value.clone())
                    .await?;
                latencies.push(t.elapsed());
                n += 1;
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    Ok(json!({
        "writers": writers,
        "writes": latencies.len(),
        "writes_per_sec": latencies.len() as f64 / elapsed,
        "p50_ms": percentile(&latencies, 0.50),
        "p99_ms": percentile(&latencies, 0.99),
    }))
}

/// Loads 10k keys, then times a full range and a paginated one (500 per page).
async fn ranges(store: Arc<dyn Store>) -> Result<Value> {
    let value = Bytes::from(vec![b'r'; VALUE_SIZE]);
    let mut tasks = Vec::new();
    for w in 0..64 {
        let (store, value) = (store.clone(), value.clone());
        tasks.push(tokio::spawn(async move {
            for i in (w..RANGE_KEYS).step_by(64) {
                store
                    .create(&format!("/bench/range/{i:06}"), value.clone())
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let mut full = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let resp = store.range(RangeRequest::prefix("/bench/range/")).await?;
        full.push(t.elapsed());
        anyhow::ensure!(
            resp.kvs.len() == RANGE_KEYS,
            "range returned {}",
            resp.kvs.len()
        );
    }
    let mut paged = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let mut request = RangeRequest::prefix("/bench/range/").with_limit(500);
        let mut seen = 0;
        loop {
            let resp = store.range(request.clone()).await?;
            seen += resp.kvs.len();
            match (resp.more, resp.kvs.last()) {
                (true, Some(last)) => request = request.with_start_after(last.key.clone()),
                _ => break,
            }
        }
        paged.push(t.elapsed());
        anyhow::ensure!(seen == RANGE_KEYS, "paginated range returned {seen}");
    }
    full.sort();
    paged.sort();
    Ok(json!({
        "keys": RANGE_KEYS,
        "full_range_ms": percentile(&full, 0.5),
        "paged_500_ms": percentile(&paged, 0.5),
    }))
}

/// Sequential writes with one watcher: time from issuing the write to the event.
async fn watch_latency(store: Arc<dyn Store>) -> Result<Value> {
    let start = store.status().await?.revision;
    let mut watch = store.watch("/bench/watch/", start).await?;
    let sent: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; WATCH_EVENTS]));
    let receiver = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(WATCH_EVENTS);
            while latencies.len() < WATCH_EVENTS {
                let event = tokio::time::timeout(Duration::from_secs(30), watch.next())
                    .await
                    .context("watch stalled")?
                    .context("watch ended")??;
                let now = Instant::now();
                let index: usize = event
                    .kv
                    .key
                    .rsplit('/')
                    .next()
                    .and_then(|i| i.parse().ok())
                    .context("unexpected key")?;
                let at = sent.lock().map_err(|_| anyhow::anyhow!("poisoned"))?[index]
                    .context("event before write")?;
                latencies.push(now - at);
            }
            anyhow::Ok(latencies)
        })
    };
    let value = Bytes::from(vec![b'w'; VALUE_SIZE]);
    let mut acks = Vec::with_capacity(WATCH_EVENTS);
    for i in 0..WATCH_EVENTS {
        let t = Instant::now();
        sent.lock().map_err(|_| anyhow::anyhow!("poisoned"))?[i] = Some(t);
        store
            .put(&format!("/bench/watch/{i}"), value.clone())
            .await?;
        acks.push(t.elapsed());
    }
    let mut latencies = receiver.await??;
    latencies.sort();
    acks.sort();
    Ok(json!({
        "events": WATCH_EVENTS,
        "p50_ms": percentile(&latencies, 0.50),
        "p99_ms": percentile(&latencies, 0.99),
        "write_ack_p50_ms": percentile(&acks, 0.50),
    }))
}

async fn run_backend(store: Arc<dyn Store>, seconds: f64) -> Result<Value> {
    let mut write_points = Vec::new();
    for writers in CONCURRENCY {
        let point = writes(store.clone(), writers, seconds).await?;
        eprintln!(
            "  writes c={writers}: {:.0}/s",
            point["writes_per_sec"].as_f64().unwrap_or(0.0)
        );
        write_points.push(point);
    }
    let range = ranges(store.clone()).await?;
    eprintln!(
        "  range 10k: {:.1} ms",
        range["full_range_ms"].as_f64().unwrap_or(0.0)
    );
    let watch = watch_latency(store.clone()).await?;
    eprintln!(
        "  watch p50: {:.2} ms",
        watch["p50_ms"].as_f64().unwrap_or(0.0)
    );
    Ok(json!({ "writes": write_points, "range": range, "watch": watch }))
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mem_kb: u64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0);
    let etcd = std::process::Command::new(ferrokube_testkit::ETCD_BIN)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_default();
    json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memory_gib": (mem_kb as f64 / 1024.0 / 1024.0).round(),
        "kernel": kernel.trim(),
        "etcd": etcd,
    })
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".into(),
    }
}

fn table(embedded: &Value, etcd: &Value) -> String {
    let mut rows = vec![
        "| metric | embedded | etcd | embedded vs etcd |".to_string(),
        "|---|---:|---:|---:|".to_string(),
    ];
    for (i, writers) in CONCURRENCY.iter().enumerate() {
        let e = embedded["writes"][i]["writes_per_sec"].as_f64();
        let t = etcd["writes"][i]["writes_per_sec"].as_f64();
        rows.push(format!(
            "| creates/s, {writers} writer(s) | {:.0} | {:.0} | {} faster |",
            e.unwrap_or(0.0),
            t.unwrap_or(0.0),
            ratio(e, t)
        ));
        let e = embedded["writes"][i]["p99_ms"].as_f64();
        let t = etcd["writes"][i]["p99_ms"].as_f64();
        rows.push(format!(
            "| create p99 ms, {writers} writer(s) | {:.2} | {:.2} | {} lower |",
            e.unwrap_or(0.0),
            t.unwrap_or(0.0),
            ratio(t, e)
        ));
    }
    for (name, section, key) in [
        ("range 10k keys, one call, ms", "range", "full_range_ms"),
        ("range 10k keys, pages of 500, ms", "range", "paged_500_ms"),
        ("watch latency p50, ms", "watch", "p50_ms"),
        ("watch latency p99, ms", "watch", "p99_ms"),
    ] {
        let e = embedded[section][key].as_f64();
        let t = etcd[section][key].as_f64();
        rows.push(format!(
            "| {name} | {:.2} | {:.2} | {} lower |",
            e.unwrap_or(0.0),
            t.unwrap_or(0.0),
            ratio(t, e)
        ));
    }
    rows.join("\n")
}

fn main() -> Result<()> {
    let config = config()?;
    let work = config
        .out
        .parent()
        .context("--out has no parent directory")?
        .join("store-data");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        eprintln!("embedded store (data in {}):", work.display());
        let embedded: Arc<dyn Store> = Arc::new(EmbeddedStore::open(
            &work.join("embedded"),
            EmbeddedOptions::default(),
        )?);
        let embedded_result = run_backend(embedded.clone(), config.seconds).await?;
        drop(embedded);

        eprintln!("etcd:");
        let etcd = ferrokube_testkit::Etcd::start_in(Some(&work))?;
        let store: Arc<dyn Store> =
            Arc::new(EtcdStore::connect(EtcdOptions::new(vec![etcd.endpoint()])).await?);
        let etcd_result = run_backend(store, config.seconds).await?;
        drop(etcd);
        anyhow::Ok((embedded_result, etcd_result))
    });
    let _ = std::fs::remove_dir_all(&work);
    let (embedded, etcd) = result?;
    let report = json!({
        "benchmark": "store",
        "command": "cargo xtask bench store",
        "seconds_per_point": config.seconds,
        "value_bytes": VALUE_SIZE,
        "machine": machine(),
        "embedded": embedded,
        "etcd": etcd,
    });
    if let Some(dir) = config.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&config.out, serde_json::to_string_pretty(&report)?)?;
    println!("{}", table(&report["embedded"], &report["etcd"]));
    println!("\nmachine: {}", report["machine"]);
    println!("written to {}", config.out.display());
    Ok(())
}
