//! `ferrokube server`: opens the chosen store, compacts it on schedule and serves the
//! Kubernetes API over HTTPS (with `/healthz`, `/livez`, `/readyz` open to anyone).

use anyhow::{Context, Result};
use ferrokube_apiserver::{Config, Server};
use ferrokube_store::{Compactor, Datastore};
use tracing::info;

use crate::ServerArgs;

pub async fn run(args: ServerArgs) -> Result<()> {
    let datastore = Datastore::parse(&args.store.data_dir, args.store.datastore.as_deref())?;
    std::fs::create_dir_all(&args.store.data_dir)
        .with_context(|| format!("creating {}", args.store.data_dir.display()))?;
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
    let config = Config {
        data_dir: args.store.data_dir.clone(),
        bind: args.bind,
        port: args.port,
        bookmark_interval: args.watch_bookmark_interval,
        ranges: ferrokube_apiserver::alloc::Ranges::parse(
            &args.service_cidr,
            &args.node_port_range,
        )?,
    };
    let server = Server::bind(config, store)
        .await
        .context("starting the apiserver")?;
    info!(
        addr = %server.addr,
        kubeconfig = %args.store.data_dir.join("admin.kubeconfig").display(),
        "apiserver ready"
    );
    server.serve(shutdown_signal()).await?;
    info!("server stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
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
