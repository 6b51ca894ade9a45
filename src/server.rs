//! `ferrokube server`: opens the chosen store, compacts it on schedule and serves the
//! Kubernetes API over HTTPS (with `/healthz`, `/livez`, `/readyz` open to anyone), with
//! the built-in controllers (the garbage collector) running against it in-process.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use anyhow::{Context, Result};
use ferrokube_apiserver::{Config, Server};
use ferrokube_controllers::gc::GarbageCollector;
use ferrokube_store::{Compactor, Datastore};
use kube::config::{KubeConfigOptions, Kubeconfig};
use tracing::{info, warn};

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
    if args.controllers {
        let client = controllers_client(&args.store.data_dir, server.addr)
            .await
            .context("making the controllers' client")?;
        tokio::spawn(async move {
            if let Err(e) = GarbageCollector::new(client).run().await {
                warn!(error = %e, "the garbage collector stopped");
            }
        });
    }
    server.serve(shutdown_signal()).await?;
    info!("server stopped");
    Ok(())
}

/// A kube-rs client for the in-process controllers: the admin credentials, talking to
/// this server's own address (loopback when it listens on every address).
async fn controllers_client(data_dir: &Path, addr: SocketAddr) -> Result<kube::Client> {
    let kubeconfig = Kubeconfig::read_from(data_dir.join("admin.kubeconfig"))?;
    let mut config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    config.cluster_url = format!("https://{}", SocketAddr::new(ip, addr.port())).parse()?;
    Ok(kube::Client::try_from(config)?)
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
