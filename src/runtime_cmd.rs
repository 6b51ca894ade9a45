//! `ferrokube runtime` (the built-in CRI server) and `ferrokube images ...` (its image
//! store, used directly).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use ferrokube_runtime::server::{Options, serve};
use ferrokube_runtime::store::ImageStore;

const DEFAULT_ROOT: &str = "/var/lib/ferrokube/runtime";

#[derive(Debug, Clone, Args)]
pub struct RuntimeArgs {
    /// Unix socket to serve CRI v1 on.
    #[arg(long, default_value = "/run/ferrokube/cri.sock")]
    pub socket: PathBuf,
    /// State root: images, sandboxes, containers.
    #[arg(long, default_value = DEFAULT_ROOT)]
    pub root: PathBuf,
    /// OCI runtime binary that runs containers.
    #[arg(long, default_value = "runc")]
    pub oci_runtime: PathBuf,
    /// CNI configuration directory (the first conflist by name is used).
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    /// CNI plugin binary directory.
    #[arg(long, default_value = "/opt/cni/bin")]
    pub cni_bin_dir: PathBuf,
    /// Cgroup (in each cgroup v1 hierarchy) holding pods whose config names no parent.
    #[arg(long, default_value = "ferrokube")]
    pub cgroup_root: String,
    /// A registry (`host[:port]`) to pull from over plain HTTP; repeatable.
    #[arg(long = "insecure-registry")]
    pub insecure_registries: Vec<String>,
    /// TCP address of the streaming server (Exec URLs); port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub streaming_addr: std::net::SocketAddr,
}

/// The per-container monitor the runtime starts (not for humans).
#[derive(Debug, Clone, Args)]
pub struct ShimArgs {
    #[arg(long)]
    id: String,
    #[arg(long)]
    dir: PathBuf,
    #[arg(long)]
    runc: PathBuf,
    #[arg(long)]
    runc_root: PathBuf,
    #[arg(long)]
    log_path: PathBuf,
    #[arg(long)]
    cgroup: String,
    #[arg(long)]
    stdin: bool,
    #[arg(long)]
    stdin_once: bool,
    #[arg(long)]
    tty: bool,
}

/// Runs the shim until its container exits; the process exit status.
pub fn shim(args: ShimArgs) -> i32 {
    ferrokube_runtime::shim::run(&ferrokube_runtime::shim::ShimArgs {
        id: args.id,
        dir: args.dir,
        runc: args.runc,
        runc_root: args.runc_root,
        log_path: args.log_path,
        cgroup: args.cgroup,
        stdin: args.stdin,
        stdin_once: args.stdin_once,
        tty: args.tty,
    })
}

/// The TTY exec helper the runtime starts per exec with a terminal (not for humans).
#[derive(Debug, Clone, Args)]
pub struct ExecHelperArgs {
    #[arg(long)]
    id: String,
    #[arg(long)]
    runc: PathBuf,
    #[arg(long)]
    runc_root: PathBuf,
    /// The command, after `--`.
    #[arg(last = true, required = true)]
    cmd: Vec<String>,
}

/// Runs a TTY exec until its process exits; the process's exit status.
pub fn exec_helper(args: ExecHelperArgs) -> i32 {
    ferrokube_runtime::tty::exec_helper(&ferrokube_runtime::tty::ExecHelperArgs {
        runc: args.runc,
        runc_root: args.runc_root,
        id: args.id,
        cmd: args.cmd,
    })
}

#[derive(Debug, Subcommand)]
pub enum ImagesCommand {
    /// Import the images of an OCI-layout or docker-archive tarball (gzip allowed).
    Import {
        /// The runtime's state root.
        #[arg(long, default_value = DEFAULT_ROOT)]
        root: PathBuf,
        /// The tarball.
        file: PathBuf,
    },
    /// List the stored images: ID, size, names.
    List {
        /// The runtime's state root.
        #[arg(long, default_value = DEFAULT_ROOT)]
        root: PathBuf,
    },
}

pub async fn run(args: RuntimeArgs) -> Result<()> {
    let options = Options {
        socket: args.socket,
        root: args.root,
        cni_conf_dir: args.cni_conf_dir,
        cni_bin_dir: args.cni_bin_dir,
        cgroup_root: args.cgroup_root,
        oci_runtime: args.oci_runtime,
        shim: std::env::current_exe().context("locating the running binary")?,
        insecure_registries: args.insecure_registries,
        streaming_addr: args.streaming_addr,
    };
    let shutdown = async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(e) => {
                    tracing::error!("cannot watch SIGTERM: {e}");
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
    };
    serve(&options, shutdown).await?;
    Ok(())
}

pub fn images(command: ImagesCommand) -> Result<()> {
    match command {
        ImagesCommand::Import { root, file } => {
            let store = ImageStore::open(&root)?;
            for image in store.import(&file)? {
                let names = if image.repo_tags.is_empty() {
                    "<none>".to_string()
                } else {
                    image.repo_tags.join(" ")
                };
                println!("imported {} {names}", image.id);
            }
            Ok(())
        }
        ImagesCommand::List { root } => {
            let store = ImageStore::open(&root)?;
            for image in store.list()? {
                println!("{} {} {}", image.id, image.size, image.repo_tags.join(" "));
            }
            Ok(())
        }
    }
}
