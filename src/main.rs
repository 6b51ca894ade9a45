//! `ferrokube`: one binary for every role of a ferrokube cluster.
//!
//! Today it runs the API server on its state store (`ferrokube server`), prints the admin
//! kubeconfig (`ferrokube kubeconfig`) and administers the store directly
//! (`ferrokube store ...`), runs the built-in CRI server (`ferrokube runtime`) and manages
//! its images (`ferrokube images ...`), and speaks CRI to any runtime (`ferrokube crictl`);
//! the node agent and tools arrive as their issues land.

mod cni_cmd;
mod crictl_cmd;
mod crictl_config;
mod crictl_spdy;
mod crictl_stream;
mod proxy_cmd;
mod runtime_cmd;
mod server;
mod store_cmd;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// A Kubernetes-compatible cluster whose node dataplane runs in eBPF.
#[derive(Debug, Parser)]
#[command(name = "ferrokube", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the control-plane server on its state store.
    Server(ServerArgs),
    /// Inspect or change the state store directly (the server must not be running on an
    /// embedded store: it holds the file).
    #[command(subcommand)]
    Store(store_cmd::StoreCommand),
    /// Print the admin kubeconfig the server wrote on its first start.
    Kubeconfig {
        /// The server's data directory.
        #[arg(long, env = "FERROKUBE_DATA_DIR", default_value = "/var/lib/ferrokube")]
        data_dir: PathBuf,
    },
    /// Pod networking: install the CNI plugin (the binary is the plugin when invoked as
    /// `ferrokube-cni`).
    #[command(subcommand)]
    Cni(cni_cmd::CniCommand),
    /// Run the node's eBPF Service proxy (kube-proxy replacement), or inspect it.
    Proxy(proxy_cmd::ProxyArgs),
    /// Run the built-in CRI server (RuntimeService + ImageService) on a unix socket.
    Runtime(runtime_cmd::RuntimeArgs),
    /// The per-container monitor started by `ferrokube runtime`.
    #[command(hide = true)]
    RuntimeShim(runtime_cmd::ShimArgs),
    /// The TTY exec helper started by `ferrokube runtime`.
    #[command(hide = true)]
    RuntimeExec(runtime_cmd::ExecHelperArgs),
    /// A small CRI client for any runtime socket (ours or containerd).
    Crictl(crictl_cmd::CrictlArgs),
    /// Manage the built-in runtime's image store directly.
    #[command(subcommand)]
    Images(runtime_cmd::ImagesCommand),
}

/// Which store to use: the embedded one in `--data-dir`, or etcd with `--datastore`.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Data directory; holds the embedded store unless `--datastore` names etcd.
    #[arg(long, env = "FERROKUBE_DATA_DIR", default_value = "/var/lib/ferrokube")]
    pub data_dir: PathBuf,
    /// `etcd://HOST:PORT[,HOST:PORT...]` to keep cluster state in etcd instead.
    #[arg(long, env = "FERROKUBE_DATASTORE")]
    pub datastore: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: std::net::IpAddr,
    /// HTTPS port of the Kubernetes API.
    #[arg(long, default_value_t = 6443)]
    pub port: u16,
    /// Range Service ClusterIPs are allocated from.
    #[arg(long, default_value = "10.96.0.0/12")]
    pub service_cidr: String,
    /// Range NodePorts are allocated from.
    #[arg(long, default_value = "30000-32767")]
    pub node_port_range: String,
    /// Interval between BOOKMARK events on watches that allow them.
    #[arg(long, default_value = "1m", value_parser = parse_duration, hide = true)]
    pub watch_bookmark_interval: Duration,
    /// How often to compact store history (kept: one interval), e.g. `5m`, `30s`.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub compaction_interval: Duration,
    /// Run the built-in controllers (today the garbage collector) in this process.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub controllers: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

fn main() -> ExitCode {
    if cni_cmd::invoked_as_plugin() {
        return ExitCode::from(u8::try_from(cni_cmd::plugin_main()).unwrap_or(1));
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("FERROKUBE_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Command::RuntimeShim(args) = cli.command {
        // Plain threads, no async runtime: it must stay small and independent.
        return ExitCode::from(u8::try_from(runtime_cmd::shim(args)).unwrap_or(1));
    }
    if let Command::RuntimeExec(args) = cli.command {
        // Plain code, no async runtime: it only runs runc and waits.
        return ExitCode::from(u8::try_from(runtime_cmd::exec_helper(args)).unwrap_or(1));
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Server(args) => server::run(args).await,
            Command::Store(command) => store_cmd::run(command).await,
            Command::Kubeconfig { data_dir } => {
                let path = data_dir.join("admin.kubeconfig");
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    anyhow::anyhow!(
                        "{}: {e} (start `ferrokube server --data-dir {}` once first)",
                        path.display(),
                        data_dir.display()
                    )
                })?;
                print!("{text}");
                Ok(())
            }
            Command::Cni(command) => cni_cmd::run(command),
            Command::Proxy(args) => proxy_cmd::run(args).await,
            Command::Runtime(args) => runtime_cmd::run(args).await,
            Command::Images(command) => runtime_cmd::images(command),
            Command::RuntimeShim(_) | Command::RuntimeExec(_) => Ok(()),
            Command::Crictl(args) => crictl_cmd::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
