//! `ferrokube proxy`: the node's eBPF Service proxy (library: `ferrokube-proxy`).
//!
//! - `ferrokube proxy --node NAME --kubeconfig F [--cgroup DIR]`: load or adopt the
//!   dataplane and keep it in step with the apiserver's Services and EndpointSlices
//!   (kube-rs watchers) until SIGINT/SIGTERM;
//! - `ferrokube proxy --node NAME --from-file F [--cgroup DIR]`: the same from a YAML file,
//!   re-applied when it changes (`--once`: apply and exit; the pinned programs keep
//!   working);
//!   With `--interface IF [--node-ip IP]...` either way also runs the tc NodePort,
//!   ExternalIP and LoadBalancer programs on that interface;
//!   With `--metrics-addr ADDR` either way also serves Prometheus metrics at
//!   `http://ADDR/metrics` (map entries and sizes, frontends left out by a full map);
//! - `ferrokube proxy list [--node NAME]`: frontends, backends and counters from the pins,
//!   and each map's entries against its size;
//! - `ferrokube proxy reset --node NAME`: remove the node's pins (detaches the programs).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use ferrokube_proxy::{Agent, Config, Sizes, bpffs, list, metrics, source};
use futures::StreamExt as _;
use kube::config::{KubeConfigOptions, Kubeconfig};
use tracing::{error, info};

#[derive(Debug, Clone, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ProxyArgs {
    #[command(subcommand)]
    command: Option<ProxyCommand>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Clone, Subcommand)]
enum ProxyCommand {
    /// Print each Service frontend with its backends and counters, from the pinned maps.
    List {
        /// Only this node (default: every node with pins).
        #[arg(long)]
        node: Option<String>,
        /// bpffs mount point.
        #[arg(long, default_value = bpffs::DEFAULT_BPFFS)]
        bpffs: PathBuf,
    },
    /// Print translations as they happen (one line per connection translated by the socket
    /// LB and per new flow recorded by tc or XDP), from the node's pinned ring buffer.
    Events {
        /// The node.
        #[arg(long)]
        node: String,
        /// bpffs mount point.
        #[arg(long, default_value = bpffs::DEFAULT_BPFFS)]
        bpffs: PathBuf,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<usize>,
        /// Stop after this long (default: until interrupted).
        #[arg(long = "for", value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
    },
    /// Remove a node's pinned programs and maps (detaches the cgroup and tc programs).
    Reset {
        /// The node.
        #[arg(long)]
        node: String,
        /// bpffs mount point.
        #[arg(long, default_value = bpffs::DEFAULT_BPFFS)]
        bpffs: PathBuf,
    },
}

#[derive(Debug, Clone, Args)]
struct RunArgs {
    /// This node's name (pins live in <bpffs>/ferrokube/<node>/).
    #[arg(long)]
    node: Option<String>,
    /// Watch Services and EndpointSlices through the apiserver this kubeconfig names.
    #[arg(long, conflicts_with = "from_file")]
    kubeconfig: Option<PathBuf>,
    /// Services and EndpointSlices as (multi-document) YAML.
    #[arg(long)]
    from_file: Option<PathBuf>,
    /// The cgroup (v2) whose sockets are load balanced: the node's cgroup root.
    #[arg(long, default_value = "/sys/fs/cgroup/unified")]
    cgroup: PathBuf,
    /// bpffs mount point (mounted when missing).
    #[arg(long, default_value = bpffs::DEFAULT_BPFFS)]
    bpffs: PathBuf,
    /// The node's external interface: NodePort, ExternalIP and LoadBalancer IP traffic
    /// arriving on it is translated by tc programs (TCX, kernel >= 6.6).
    #[arg(long)]
    interface: Option<String>,
    /// A node address for NodePort frontends (repeatable; the first is the SNAT address).
    /// Default: the IPv4 addresses of --interface.
    #[arg(long = "node-ip")]
    node_ips: Vec<std::net::Ipv4Addr>,
    /// The XDP NodePort fast path on --interface (flows to backends on other nodes):
    /// native (falls back to generic with a warning), generic or off. Default: native
    /// when --interface is given.
    #[arg(long, value_name = "native|generic|off")]
    xdp: Option<ferrokube_proxy::XdpMode>,
    /// How NodePort, ExternalIP and LoadBalancer frontends pick a backend for a new flow
    /// from outside, unless the Service's `service.cilium.io/lb-algorithm` annotation
    /// says otherwise: random, or maglev (consistent hashing: the same flow gets the
    /// same backend on every node).
    #[arg(long, default_value = "random", value_name = "random|maglev")]
    lb_algorithm: ferrokube_proxy::LbAlgorithm,
    /// Maglev lookup-table size M (a prime below 65536; at least ~100 times the largest
    /// backend count; used when the maps are first created).
    #[arg(long, default_value_t = ferrokube_proxy::Maglev::default().size)]
    maglev_table_size: u16,
    /// How many external frontends may use Maglev (used when the maps are first created).
    #[arg(long, default_value_t = ferrokube_proxy::Maglev::default().tables)]
    max_maglev_tables: u32,
    /// Apply the file (or the apiserver's first snapshot) once and exit (the pinned
    /// dataplane keeps serving).
    #[arg(long)]
    once: bool,
    /// How often to check the file for changes.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    poll: Duration,
    /// Frontend map size (used when the maps are first created).
    #[arg(long, default_value_t = Sizes::default().services)]
    max_services: u32,
    /// Backend map size (used when the maps are first created).
    #[arg(long, default_value_t = Sizes::default().backends)]
    max_backends: u32,
    /// Backend slot map size (used when the maps are first created).
    #[arg(long, default_value_t = Sizes::default().slots)]
    max_slots: u32,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9474).
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
    /// The eBPF programs log each translation and refusal (aya-log: socket programs, and
    /// each new NodePort flow and refusal in tc/XDP), forwarded to this process's log
    /// (target `ferrokube_proxy::bpf`). Set on every start, adopted programs included.
    /// Off by default (one array lookup per place that could log).
    #[arg(long)]
    bpf_log: bool,
}

pub async fn run(args: ProxyArgs) -> Result<()> {
    match args.command {
        Some(ProxyCommand::List { node, bpffs }) => {
            let reports = list::list(&bpffs, node.as_deref())?;
            print!("{}", list::render(&reports));
            Ok(())
        }
        Some(ProxyCommand::Events {
            node,
            bpffs,
            count,
            duration,
        }) => events(&node, &bpffs, count, duration),
        Some(ProxyCommand::Reset { node, bpffs }) => {
            if bpffs::remove(&bpffs, &node)? {
                println!("removed the pins of node {node}");
            } else {
                println!("node {node} has no pins");
            }
            Ok(())
        }
        None => serve(args.run).await,
    }
}

fn events(
    node: &str,
    bpffs: &std::path::Path,
    count: Option<usize>,
    duration: Option<Duration>,
) -> Result<()> {
    use std::io::Write as _;
    let dir = bpffs::pin_dir(bpffs, node)?;
    let mut reader = ferrokube_proxy::events::EventReader::open(&dir)?;
    let start = std::time::Instant::now();
    let mut seen = 0usize;
    let mut stdout = std::io::stdout();
    loop {
        for event in reader.drain() {
            writeln!(stdout, "{}", ferrokube_proxy::events::render(&event))?;
            seen += 1;
            if count.is_some_and(|c| seen >= c) {
                return Ok(());
            }
        }
        stdout.flush()?;
        if duration.is_some_and(|d| start.elapsed() >= d) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn serve(args: RunArgs) -> Result<()> {
    let Some(node) = args.node else {
        bail!("--node is required");
    };
    let mut config = Config::new(node, args.cgroup);
    config.bpffs = args.bpffs;
    config.xdp = match (args.xdp, &args.interface) {
        (Some(mode), _) => mode,
        (None, Some(_)) => ferrokube_proxy::XdpMode::Native,
        (None, None) => ferrokube_proxy::XdpMode::Off,
    };
    config.interface = args.interface;
    config.node_ips = args.node_ips;
    config.bpf_log = args.bpf_log;
    config.lb_algorithm = args.lb_algorithm;
    config.maglev = ferrokube_proxy::Maglev {
        size: args.maglev_table_size,
        tables: args.max_maglev_tables,
    };
    config.sizes = Sizes {
        services: args.max_services,
        backends: args.max_backends,
        slots: args.max_slots,
        ..Sizes::default()
    };
    if let Some(kubeconfig) = args.kubeconfig {
        return serve_apiserver(&config, &kubeconfig, args.once, args.metrics_addr).await;
    }
    let Some(file) = args.from_file else {
        bail!("one of --kubeconfig or --from-file is required");
    };
    let first = source::read_file(&file)?;
    let mut agent = Agent::start(&config).context("starting the dataplane")?;
    let _metrics = start_metrics(&mut agent, args.metrics_addr).await?;
    let _bpf_log = forward_bpf_logs(&mut agent, args.bpf_log)?;
    if let Some(stats) = first_apply(&mut agent, first, args.once)? {
        info!(writes = stats.total(), ?stats, "applied {}", file.display());
    }
    if args.once {
        return Ok(());
    }
    let modified = |path: &PathBuf| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let initial = modified(&file);
    let changes = futures::stream::unfold(
        (file, initial, tokio::time::interval(args.poll)),
        move |(file, mut last, mut tick): (PathBuf, Option<SystemTime>, _)| async move {
            loop {
                tick.tick().await;
                let now = modified(&file);
                if now != last {
                    last = now;
                    let input = source::read_file(&file);
                    return Some((input, (file, last, tick)));
                }
            }
        },
    )
    .boxed();
    run_until_signal(&mut agent, changes).await
}

/// Binds `addr` and serves the agent's metrics there until the returned task is dropped.
async fn start_metrics(
    agent: &mut Agent,
    addr: Option<std::net::SocketAddr>,
) -> Result<Option<AbortOnDrop>> {
    let Some(addr) = addr else { return Ok(None) };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics address {addr}"))?;
    info!(addr = %listener.local_addr()?, "serving metrics at /metrics");
    let published = agent.publish_metrics();
    let task = tokio::spawn(async move {
        if let Err(e) = metrics::serve(listener, published).await {
            error!(error = %e, "metrics server stopped");
        }
    });
    Ok(Some(AbortOnDrop(task)))
}

/// With `on`, forwards the programs' log records to `tracing`, until the returned task is
/// dropped.
fn forward_bpf_logs(agent: &mut Agent, on: bool) -> Result<Option<AbortOnDrop>> {
    if !on {
        return Ok(None);
    }
    let Some(logs) = agent.dataplane_mut().take_bpf_logs() else {
        bail!("--bpf-log: the programs' log ring could not be opened");
    };
    // Read every 100 ms, like `proxy events` (a readiness wait on the ring's fd would
    // need tokio's unsafe `AsyncFd::register`; the workspace denies unsafe code). The
    // ring holds 128 KiB of records in between.
    let mut logs = logs;
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            logs.flush();
        }
    });
    Ok(Some(AbortOnDrop(task)))
}

/// Aborts the task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The first apply: unless `once`, a full map is logged (and counted in the metrics) and
/// the agent goes on serving what fitted; any other failure ends the command.
fn first_apply(
    agent: &mut Agent,
    input: ferrokube_proxy::sync::Input,
    once: bool,
) -> Result<Option<ferrokube_proxy::sync::ApplyStats>> {
    match agent.apply(input) {
        Ok(stats) => Ok(Some(stats)),
        Err(e) if !once && e.full_map().is_some() => {
            error!(error = %e, "a map is full; serving the frontends that fit");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

async fn run_until_signal(
    agent: &mut Agent,
    inputs: futures::stream::BoxStream<
        'static,
        Result<ferrokube_proxy::sync::Input, source::SourceError>,
    >,
) -> Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = agent.run(inputs) => {}
        _ = tokio::signal::ctrl_c() => info!("interrupted; the pinned dataplane keeps serving"),
        _ = terminate.recv() => info!("terminated; the pinned dataplane keeps serving"),
    }
    Ok(())
}

/// Follows the apiserver: the first snapshot is applied before serving (so `--once` and a
/// restart leave the maps matching the API), then every change.
async fn serve_apiserver(
    config: &Config,
    kubeconfig: &Path,
    once: bool,
    metrics_addr: Option<std::net::SocketAddr>,
) -> Result<()> {
    let kubeconfig = Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let client_config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    let client = kube::Client::try_from(client_config)?;
    let mut inputs = source::watch(client);
    let mut agent = Agent::start(config).context("starting the dataplane")?;
    let _metrics = start_metrics(&mut agent, metrics_addr).await?;
    let _bpf_log = forward_bpf_logs(&mut agent, config.bpf_log)?;
    loop {
        match inputs.next().await {
            Some(Ok(first)) => {
                if let Some(stats) = first_apply(&mut agent, first, once)? {
                    info!(
                        writes = stats.total(),
                        ?stats,
                        "applied the apiserver's Services and EndpointSlices"
                    );
                }
                break;
            }
            Some(Err(e)) => tracing::warn!(error = %e, "waiting for the apiserver"),
            None => bail!("the apiserver watch ended before its first list"),
        }
    }
    if once {
        return Ok(());
    }
    run_until_signal(&mut agent, inputs).await
}
