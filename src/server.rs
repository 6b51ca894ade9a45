//! `ferrokube server`: opens the chosen store, compacts it on schedule and, until the
//! apiserver lands, serves the health endpoints (`/healthz`, `/livez`, `/readyz`).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use ferrokube_store::{Compactor, Datastore, Store};
use tracing::info;

use crate::ServerArgs;

#[derive(Clone)]
struct AppState {
    store: Arc<dyn Store>,
    datastore: Arc<str>,
}

pub async fn run(args: ServerArgs) -> Result<()> {
    let datastore = Datastore::parse(&args.store.data_dir, args.store.datastore.as_deref())?;
    let store = datastore
        .open()
        .await
        .with_context(|| format!("opening the {} store", datastore.describe()))?;
    let status = store.status().await?;
    info!(
        store = %datastore.describe(),
        revision = status.revision,
        compact_revision = status.compact_revision,
        "store ready"
    );
    let _compactor = Compactor::spawn(store.clone(), args.compaction_interval);

    let state = AppState {
        store,
        datastore: datastore.describe().into(),
    };
    let app = Router::new()
        .route("/livez", get(livez))
        .route("/healthz", get(readyz))
        .route("/readyz", get(readyz))
        .with_state(state);
    let addr = SocketAddr::new(args.bind, args.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    info!(addr = %listener.local_addr()?, "serving health endpoints");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving HTTP")?;
    info!("server stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn livez() -> &'static str {
    "ok"
}

async fn readyz(
    State(state): State<AppState>,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> (StatusCode, String) {
    let verbose = query.contains_key("verbose");
    let (code, line) = match state.store.status().await {
        Ok(status) => (
            StatusCode::OK,
            format!(
                "[+]store ok ({}, revision {}, compact revision {})",
                state.datastore, status.revision, status.compact_revision
            ),
        ),
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("[-]store failed ({}): {error}", state.datastore),
        ),
    };
    let body = match (verbose, code) {
        (true, StatusCode::OK) => format!("[+]ping ok\n{line}\nhealthz check passed\n"),
        (true, _) => format!("[+]ping ok\n{line}\nhealthz check failed\n"),
        (false, StatusCode::OK) => "ok".to_string(),
        (false, _) => format!("{line}\nhealthz check failed\n"),
    };
    (code, body)
}
