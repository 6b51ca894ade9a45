//! `ferrokube crictl`: a small CRI client (no crictl package exists in the registries
//! these machines reach) for any CRI runtime on a unix socket: ours or containerd.
//! Runs pods and containers from config files (`runp`, `create`, `start`; see
//! `crictl_config`), pulls, inspects, streams, follows logs and cleans up.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

#[derive(Debug, Args)]
pub struct CrictlArgs {
    /// The runtime's socket (`unix:///path` or a path).
    #[arg(
        long,
        short = 'r',
        env = "CONTAINER_RUNTIME_ENDPOINT",
        default_value = "unix:///run/ferrokube/cri.sock"
    )]
    runtime_endpoint: String,
    /// Deadline for each call.
    #[arg(long, default_value = "30s", value_parser = crate::parse_duration)]
    timeout: Duration,
    #[command(subcommand)]
    command: CrictlCommand,
}

#[derive(Debug, Subcommand)]
enum CrictlCommand {
    /// Runtime name and versions.
    Version,
    /// Runtime conditions (Status), as JSON.
    Info,
    /// List images.
    Images,
    /// Image status, as JSON.
    Inspecti { image: String },
    /// Remove images.
    Rmi { images: Vec<String> },
    /// Pull an image (prints `Image is up to date for <image ref>`).
    Pull {
        image: String,
        /// Registry credentials, `USER:PASSWORD`.
        #[arg(long, conflicts_with = "auth")]
        creds: Option<String>,
        /// Registry credentials as base64 of `USER:PASSWORD` (docker config's `auth`).
        #[arg(long)]
        auth: Option<String>,
    },
    /// Run a pod sandbox from a config file (JSON or YAML, CRI's PodSandboxConfig);
    /// prints its id.
    Runp {
        /// The runtime handler (RuntimeClass); empty for the default.
        #[arg(long, default_value = "")]
        runtime: String,
        pod_config: PathBuf,
    },
    /// Create a container in a pod from config files (CRI's ContainerConfig and the
    /// pod's PodSandboxConfig); prints its id.
    /// As real crictl, the image is pulled first when the runtime does not have it.
    Create {
        /// Do not pull a missing image.
        #[arg(long)]
        no_pull: bool,
        /// Registry credentials for that pull, `USER:PASSWORD`.
        #[arg(long, conflicts_with = "auth")]
        creds: Option<String>,
        /// Registry credentials for that pull, base64 of `USER:PASSWORD`.
        #[arg(long)]
        auth: Option<String>,
        pod_id: String,
        container_config: PathBuf,
        pod_config: PathBuf,
    },
    /// Start created containers.
    Start {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Container stats: CPU % (over --seconds), memory working set, writable layer,
    /// swap (as real crictl; CRI's ContainerStats has no PID count).
    Stats {
        /// Only this container.
        id: Option<String>,
        /// Only containers of this pod.
        #[arg(short, long, conflicts_with = "id")]
        pod: Option<String>,
        /// The CPU sampling interval in seconds.
        #[arg(short, long, default_value_t = 1)]
        seconds: u64,
    },
    /// List pod sandboxes.
    Pods,
    /// Pod sandbox status (verbose), as JSON.
    Inspectp { id: String },
    /// Stop pod sandboxes.
    Stopp { ids: Vec<String> },
    /// Remove pod sandboxes.
    Rmp { ids: Vec<String> },
    /// List containers (running only unless -a).
    Ps {
        #[arg(short, long)]
        all: bool,
    },
    /// Container status, as JSON.
    Inspect { id: String },
    /// Run a command in a running container. As real crictl: streams through the
    /// runtime's streaming server (Exec + WebSocket, or SPDY/3.1 with --transport spdy)
    /// unless --sync asks for ExecSync;
    /// exits with the command's exit code.
    Exec {
        /// Pass stdin to the command.
        #[arg(short, long)]
        interactive: bool,
        /// Run the command on a terminal (stderr then comes on the terminal too).
        #[arg(short, long)]
        tty: bool,
        /// Use ExecSync (collect the output, no stdin) instead of streaming.
        #[arg(short, long)]
        sync: bool,
        /// The streaming transport: `websocket` (v5/v4 channel protocols) or `spdy`
        /// (SPDY/3.1 with v4, as kubectl before 1.30).
        #[arg(long, default_value = "websocket", value_parser = ["websocket", "spdy"])]
        transport: String,
        id: String,
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
    /// Stream a running container's output (Attach + WebSocket, or SPDY/3.1 with
    /// --transport spdy) until it exits.
    Attach {
        /// The streaming transport: `websocket` (v5/v4 channel protocols) or `spdy`
        /// (SPDY/3.1 with v4).
        #[arg(long, default_value = "websocket", value_parser = ["websocket", "spdy"])]
        transport: String,
        id: String,
    },
    /// Forward local TCP ports to a pod (PortForward + WebSocket or SPDY), until
    /// interrupted.
    PortForward {
        pod: String,
        /// `LOCAL:REMOTE` (or `PORT` for both); listens on 127.0.0.1.
        #[arg(required = true)]
        ports: Vec<String>,
        /// The streaming transport: `websocket` or `spdy` (SPDY/3.1, `portforward.k8s.io`).
        #[arg(long, default_value = "websocket", value_parser = ["websocket", "spdy"])]
        transport: String,
    },
    /// Print a container's log (its CRI log file, stdout and stderr to theirs).
    Logs {
        /// Keep printing what the container writes until it exits.
        #[arg(short, long)]
        follow: bool,
        /// Only the last N lines (all when negative).
        #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
        tail: i64,
        id: String,
    },
    /// Stop containers (SIGTERM, SIGKILL after --grace seconds).
    Stop {
        #[arg(long, default_value_t = 10)]
        grace: i64,
        ids: Vec<String>,
    },
    /// Remove containers.
    Rm { ids: Vec<String> },
}

/// Ends the process with the exec'd command's exit code (a blocked stdin reader would
/// otherwise hold the async runtime's shutdown).
fn exit_with(code: i32) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    std::process::exit(code)
}

async fn connect(endpoint: &str, timeout: Duration) -> Result<Channel> {
    let path = PathBuf::from(endpoint.strip_prefix("unix://").unwrap_or(endpoint));
    let channel = Endpoint::try_from("http://[::]:50051")?
        .timeout(timeout)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .with_context(|| format!("connecting to {endpoint}"))?;
    Ok(channel)
}

fn age(nanos: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let elapsed = now.saturating_sub(u128::try_from(nanos).unwrap_or(0)) / 1_000_000_000;
    let secs = u64::try_from(elapsed).unwrap_or(u64::MAX);
    humantime::format_duration(Duration::from_secs(secs)).to_string() + " ago"
}

fn short(id: &str) -> &str {
    let id = id.strip_prefix("sha256:").unwrap_or(id);
    id.get(..13).unwrap_or(id)
}

fn json(value: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub async fn run(args: CrictlArgs) -> Result<()> {
    let channel = connect(&args.runtime_endpoint, args.timeout).await?;
    let mut runtime = RuntimeServiceClient::new(channel.clone());
    let mut images = ImageServiceClient::new(channel);
    match args.command {
        CrictlCommand::Version => {
            let v = runtime
                .version(cri::VersionRequest::default())
                .await?
                .into_inner();
            println!("Version:  {}", v.version);
            println!("RuntimeName:  {}", v.runtime_name);
            println!("RuntimeVersion:  {}", v.runtime_version);
            println!("RuntimeApiVersion:  {}", v.runtime_api_version);
        }
        CrictlCommand::Info => {
            let status = runtime
                .status(cri::StatusRequest { verbose: true })
                .await?
                .into_inner();
            json(&status.status)?;
        }
        CrictlCommand::Images => {
            let list = images
                .list_images(cri::ListImagesRequest::default())
                .await?
                .into_inner()
                .images;
            println!(
                "{:<50} {:<20} {:<15} {:>10}",
                "IMAGE", "TAG", "IMAGE ID", "SIZE"
            );
            for image in list {
                let tags: Vec<(String, String)> = if image.repo_tags.is_empty() {
                    vec![("<none>".into(), "<none>".into())]
                } else {
                    image
                        .repo_tags
                        .iter()
                        .map(|t| match t.rsplit_once(':') {
                            Some((repo, tag)) if !tag.contains('/') => (repo.into(), tag.into()),
                            _ => (t.clone(), "<none>".into()),
                        })
                        .collect()
                };
                for (repo, tag) in tags {
                    println!(
                        "{repo:<50} {tag:<20} {:<15} {:>10}",
                        short(&image.id),
                        image.size
                    );
                }
            }
        }
        CrictlCommand::Inspecti { image } => {
            let status = images
                .image_status(cri::ImageStatusRequest {
                    image: Some(cri::ImageSpec {
                        image: image.clone(),
                        ..Default::default()
                    }),
                    verbose: true,
                })
                .await?
                .into_inner();
            match status.image {
                Some(found) => json(&found)?,
                None => bail!("image {image:?} not found"),
            }
        }
        CrictlCommand::Rmi { images: names } => {
            for image in names {
                images
                    .remove_image(cri::RemoveImageRequest {
                        image: Some(cri::ImageSpec {
                            image: image.clone(),
                            ..Default::default()
                        }),
                    })
                    .await
                    .with_context(|| format!("removing {image}"))?;
                println!("Deleted: {image}");
            }
        }
        CrictlCommand::Pods => {
            let pods = runtime
                .list_pod_sandbox(cri::ListPodSandboxRequest::default())
                .await?
                .into_inner()
                .items;
            println!(
                "{:<15} {:<20} {:<10} {:<30} {:<20} ATTEMPT",
                "POD ID", "CREATED", "STATE", "NAME", "NAMESPACE"
            );
            for pod in pods {
                let m = pod.metadata.unwrap_or_default();
                let state = if pod.state == cri::PodSandboxState::SandboxReady as i32 {
                    "Ready"
                } else {
                    "NotReady"
                };
                println!(
                    "{:<15} {:<20} {state:<10} {:<30} {:<20} {}",
                    short(&pod.id),
                    age(pod.created_at),
                    m.name,
                    m.namespace,
                    m.attempt
                );
            }
        }
        CrictlCommand::Inspectp { id } => {
            let status = runtime
                .pod_sandbox_status(cri::PodSandboxStatusRequest {
                    pod_sandbox_id: id,
                    verbose: true,
                })
                .await?
                .into_inner();
            json(&status)?;
        }
        CrictlCommand::Stopp { ids } => {
            for id in ids {
                runtime
                    .stop_pod_sandbox(cri::StopPodSandboxRequest {
                        pod_sandbox_id: id.clone(),
                    })
                    .await
                    .with_context(|| format!("stopping pod {id}"))?;
                println!("Stopped sandbox {id}");
            }
        }
        CrictlCommand::Rmp { ids } => {
            for id in ids {
                runtime
                    .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                        pod_sandbox_id: id.clone(),
                    })
                    .await
                    .with_context(|| format!("removing pod {id}"))?;
                println!("Removed sandbox {id}");
            }
        }
        CrictlCommand::Ps { all } => {
            let filter = (!all).then(|| cri::ContainerFilter {
                state: Some(cri::ContainerStateValue {
                    state: cri::ContainerState::ContainerRunning as i32,
                }),
                ..Default::default()
            });
            let containers = runtime
                .list_containers(cri::ListContainersRequest { filter })
                .await?
                .into_inner()
                .containers;
            println!(
                "{:<15} {:<40} {:<20} {:<10} {:<25} {:<8} POD ID",
                "CONTAINER", "IMAGE", "CREATED", "STATE", "NAME", "ATTEMPT"
            );
            for c in containers {
                let m = c.metadata.unwrap_or_default();
                let state = match cri::ContainerState::try_from(c.state) {
                    Ok(cri::ContainerState::ContainerCreated) => "Created",
                    Ok(cri::ContainerState::ContainerRunning) => "Running",
                    Ok(cri::ContainerState::ContainerExited) => "Exited",
                    _ => "Unknown",
                };
                println!(
                    "{:<15} {:<40} {:<20} {state:<10} {:<25} {:<8} {}",
                    short(&c.id),
                    c.image.map(|i| i.image).unwrap_or_default(),
                    age(c.created_at),
                    m.name,
                    m.attempt,
                    short(&c.pod_sandbox_id)
                );
            }
        }
        CrictlCommand::Inspect { id } => {
            let status = runtime
                .container_status(cri::ContainerStatusRequest {
                    container_id: id,
                    verbose: true,
                })
                .await?
                .into_inner();
            json(&status)?;
        }
        CrictlCommand::Exec {
            interactive,
            tty,
            sync: false,
            transport,
            id,
            command,
        } => {
            let url = runtime
                .exec(cri::ExecRequest {
                    container_id: id,
                    cmd: command,
                    tty,
                    stdin: interactive,
                    stdout: true,
                    stderr: !tty,
                })
                .await?
                .into_inner()
                .url;
            let code = if transport == "spdy" {
                crate::crictl_spdy::exec(&url, interactive, tty).await?
            } else {
                crate::crictl_stream::exec(&url, interactive, tty).await?
            };
            exit_with(code);
        }
        CrictlCommand::Attach { transport, id } => {
            let url = runtime
                .attach(cri::AttachRequest {
                    container_id: id,
                    stdin: false,
                    tty: false,
                    stdout: true,
                    stderr: true,
                })
                .await?
                .into_inner()
                .url;
            let code = if transport == "spdy" {
                crate::crictl_spdy::exec(&url, false, false).await?
            } else {
                crate::crictl_stream::exec(&url, false, false).await?
            };
            exit_with(code);
        }
        CrictlCommand::PortForward {
            pod,
            ports,
            transport,
        } => {
            crate::crictl_stream::port_forward(runtime, pod, &ports, transport == "spdy").await?;
        }
        CrictlCommand::Exec { id, command, .. } => {
            let out = runtime
                .exec_sync(cri::ExecSyncRequest {
                    container_id: id,
                    cmd: command,
                    timeout: i64::try_from(args.timeout.as_secs()).unwrap_or(0),
                })
                .await?
                .into_inner();
            use std::io::Write;
            std::io::stdout().write_all(&out.stdout)?;
            std::io::stderr().write_all(&out.stderr)?;
            exit_with(out.exit_code);
        }
        CrictlCommand::Logs { follow, tail, id } => {
            logs(&mut runtime, &id, follow, usize::try_from(tail).ok()).await?;
        }
        CrictlCommand::Pull { image, creds, auth } => {
            let auth = auth_config(creds, auth)?;
            let pulled = images
                .pull_image(cri::PullImageRequest {
                    image: Some(cri::ImageSpec {
                        image: image.clone(),
                        ..Default::default()
                    }),
                    auth,
                    sandbox_config: None,
                })
                .await
                .with_context(|| format!("pulling {image}"))?
                .into_inner();
            println!("Image is up to date for {}", pulled.image_ref);
        }
        CrictlCommand::Runp {
            runtime: handler,
            pod_config,
        } => {
            let config = crate::crictl_config::pod_config(&pod_config)?;
            let id = runtime
                .run_pod_sandbox(cri::RunPodSandboxRequest {
                    config: Some(config),
                    runtime_handler: handler,
                })
                .await
                .context("running the pod sandbox")?
                .into_inner()
                .pod_sandbox_id;
            println!("{id}");
        }
        CrictlCommand::Create {
            no_pull,
            creds,
            auth,
            pod_id,
            container_config,
            pod_config,
        } => {
            let config = crate::crictl_config::container_config(&container_config)?;
            let sandbox_config = crate::crictl_config::pod_config(&pod_config)?;
            let auth = auth_config(creds, auth)?;
            if !no_pull && let Some(image) = config.image.clone() {
                let found = images
                    .image_status(cri::ImageStatusRequest {
                        image: Some(image.clone()),
                        verbose: false,
                    })
                    .await?
                    .into_inner()
                    .image;
                if found.is_none() {
                    images
                        .pull_image(cri::PullImageRequest {
                            image: Some(image.clone()),
                            auth,
                            sandbox_config: Some(sandbox_config.clone()),
                        })
                        .await
                        .with_context(|| format!("pulling {}", image.image))?;
                }
            }
            let id = runtime
                .create_container(cri::CreateContainerRequest {
                    pod_sandbox_id: pod_id.clone(),
                    config: Some(config),
                    sandbox_config: Some(sandbox_config),
                })
                .await
                .with_context(|| format!("creating the container in pod {pod_id}"))?
                .into_inner()
                .container_id;
            println!("{id}");
        }
        CrictlCommand::Start { ids } => {
            for id in ids {
                runtime
                    .start_container(cri::StartContainerRequest {
                        container_id: id.clone(),
                    })
                    .await
                    .with_context(|| format!("starting {id}"))?;
                println!("{id}");
            }
        }
        CrictlCommand::Stats { id, pod, seconds } => {
            stats(&mut runtime, id, pod, Duration::from_secs(seconds)).await?;
        }
        CrictlCommand::Stop { grace, ids } => {
            for id in ids {
                runtime
                    .stop_container(cri::StopContainerRequest {
                        container_id: id.clone(),
                        timeout: grace,
                    })
                    .await
                    .with_context(|| format!("stopping {id}"))?;
                println!("{id}");
            }
        }
        CrictlCommand::Rm { ids } => {
            for id in ids {
                runtime
                    .remove_container(cri::RemoveContainerRequest {
                        container_id: id.clone(),
                    })
                    .await
                    .with_context(|| format!("removing {id}"))?;
                println!("{id}");
            }
        }
    }
    Ok(())
}

/// The CRI AuthConfig of `--creds USER:PASSWORD` or `--auth BASE64`.
fn auth_config(creds: Option<String>, auth: Option<String>) -> Result<Option<cri::AuthConfig>> {
    Ok(match (creds, auth) {
        (Some(creds), _) => {
            let (username, password) = creds
                .split_once(':')
                .context("--creds must be USER:PASSWORD")?;
            Some(cri::AuthConfig {
                username: username.into(),
                password: password.into(),
                ..Default::default()
            })
        }
        (None, Some(auth)) => Some(cri::AuthConfig {
            auth,
            ..Default::default()
        }),
        (None, None) => None,
    })
}

/// One entry of a CRI log file (`TIMESTAMP STREAM P|F CONTENT`).
struct LogEntry {
    stderr: bool,
    /// The content, with the newline a full (`F`) entry ends with.
    text: String,
    full: bool,
}

fn parse_log_line(line: &str) -> Option<LogEntry> {
    let mut parts = line.splitn(4, ' ');
    let (_, Some(stream), Some(tag)) = (parts.next(), parts.next(), parts.next()) else {
        return None;
    };
    let mut text = parts.next().unwrap_or_default().to_string();
    let full = tag != "P";
    if full {
        text.push('\n');
    }
    Some(LogEntry {
        stderr: stream == "stderr",
        text,
        full,
    })
}

/// Where the last `n` lines start (a line is entries up to a full one).
fn tail_start(entries: &[LogEntry], n: usize) -> usize {
    let mut seen = 0;
    for (i, entry) in entries.iter().enumerate().rev() {
        if entry.full {
            seen += 1;
            if seen > n {
                return i + 1;
            }
        }
    }
    0
}

fn print_entries(entries: &[LogEntry]) -> Result<()> {
    use std::io::Write;
    let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
    for entry in entries {
        if entry.stderr {
            err.write_all(entry.text.as_bytes())?;
        } else {
            out.write_all(entry.text.as_bytes())?;
        }
    }
    out.flush()?;
    err.flush()?;
    Ok(())
}

/// Prints the container's CRI log file (the last `tail` lines); with `follow`, keeps
/// reading it (reopening it when rotated) until the container has exited and the file
/// is read to its end (runtimes record the exit after draining the output).
async fn logs(
    runtime: &mut RuntimeServiceClient<Channel>,
    id: &str,
    follow: bool,
    tail: Option<usize>,
) -> Result<()> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let status = |runtime: &mut RuntimeServiceClient<Channel>| {
        let request = cri::ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: false,
        };
        let mut runtime = runtime.clone();
        async move {
            runtime
                .container_status(request)
                .await
                .with_context(|| format!("container {id}"))?
                .into_inner()
                .status
                .context("no status")
        }
    };
    let log_path = status(runtime).await?.log_path;
    if log_path.is_empty() {
        bail!("container {id} has no log path");
    }
    let open = || -> Result<(std::fs::File, u64)> {
        let file = std::fs::File::open(&log_path).with_context(|| format!("reading {log_path}"))?;
        let inode = file.metadata()?.ino();
        Ok((file, inode))
    };
    // A created container's log file appears when it starts: wait for it when following.
    while follow && !std::path::Path::new(&log_path).exists() {
        if status(runtime).await?.state == cri::ContainerState::ContainerExited as i32 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (mut file, mut inode) = open()?;
    let mut pending = Vec::new();
    let mut first = true;
    loop {
        // The state before reading: output written before the exit is then in the file.
        let exited =
            !follow || status(runtime).await?.state == cri::ContainerState::ContainerExited as i32;
        file.read_to_end(&mut pending)
            .with_context(|| format!("reading {log_path}"))?;
        let complete = pending
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1);
        let text = String::from_utf8_lossy(&pending[..complete]).into_owned();
        pending.drain(..complete);
        let entries: Vec<LogEntry> = text.lines().filter_map(parse_log_line).collect();
        let from = match tail {
            Some(n) if first => tail_start(&entries, n),
            _ => 0,
        };
        print_entries(entries.get(from..).unwrap_or_default())?;
        first = false;
        if exited {
            return Ok(());
        }
        // Rotated (renamed and reopened by the runtime): continue in the new file.
        if let Ok(meta) = std::fs::metadata(&log_path)
            && meta.ino() != inode
        {
            (file, inode) = open()?;
            pending.clear();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A byte count as real crictl prints it (decimal units, e.g. `1.23MB`).
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    let number = format!("{value:.4}");
    let number = if number.contains('.') {
        number.trim_end_matches('0').trim_end_matches('.')
    } else {
        &number
    };
    format!("{number}{}", UNITS[unit])
}

/// The stats table: two samples `interval` apart give the CPU %.
async fn stats(
    runtime: &mut RuntimeServiceClient<Channel>,
    id: Option<String>,
    pod: Option<String>,
    interval: Duration,
) -> Result<()> {
    let sample = |runtime: &mut RuntimeServiceClient<Channel>| {
        let mut runtime = runtime.clone();
        let (id, pod) = (id.clone(), pod.clone());
        async move {
            Ok::<_, anyhow::Error>(match id {
                Some(id) => vec![
                    runtime
                        .container_stats(cri::ContainerStatsRequest {
                            container_id: id.clone(),
                        })
                        .await
                        .with_context(|| format!("stats of {id}"))?
                        .into_inner()
                        .stats
                        .with_context(|| format!("no stats for {id}"))?,
                ],
                None => {
                    runtime
                        .list_container_stats(cri::ListContainerStatsRequest {
                            filter: Some(cri::ContainerStatsFilter {
                                pod_sandbox_id: pod.unwrap_or_default(),
                                ..Default::default()
                            }),
                        })
                        .await?
                        .into_inner()
                        .stats
                }
            })
        }
    };
    let cpu = |s: &cri::ContainerStats| {
        s.cpu
            .as_ref()
            .and_then(|c| Some((c.timestamp, c.usage_core_nano_seconds.as_ref()?.value)))
    };
    let started = std::time::Instant::now();
    let before = sample(runtime).await?;
    tokio::time::sleep(interval).await;
    let after = sample(runtime).await?;
    let wall = i64::try_from(started.elapsed().as_nanos()).unwrap_or(i64::MAX);
    println!(
        "{:<15} {:<25} {:<10} {:<12} {:<12} {:<10} SWAP",
        "CONTAINER", "NAME", "CPU %", "MEM", "DISK", "INODES"
    );
    for stat in &after {
        let Some(attributes) = &stat.attributes else {
            continue;
        };
        let previous = before
            .iter()
            .find(|s| s.attributes.as_ref().is_some_and(|a| a.id == attributes.id));
        let percent = match (previous.and_then(cpu), cpu(stat)) {
            (Some((t0, c0)), Some((t1, c1))) => {
                let elapsed = if t1 > t0 { t1 - t0 } else { wall };
                c1.saturating_sub(c0) as f64 / elapsed.max(1) as f64 * 100.0
            }
            _ => 0.0,
        };
        let memory = stat
            .memory
            .as_ref()
            .and_then(|m| m.working_set_bytes.as_ref())
            .map_or(0, |v| v.value);
        let layer = stat.writable_layer.as_ref();
        let disk = layer
            .and_then(|l| l.used_bytes.as_ref())
            .map_or(0, |v| v.value);
        let inodes = layer
            .and_then(|l| l.inodes_used.as_ref())
            .map_or(0, |v| v.value);
        let swap = stat
            .swap
            .as_ref()
            .and_then(|s| s.swap_usage_bytes.as_ref())
            .map_or(0, |v| v.value);
        let name = attributes
            .metadata
            .as_ref()
            .map(|m| m.name.as_str())
            .unwrap_or_default();
        println!(
            "{:<15} {name:<25} {percent:<10.2} {:<12} {:<12} {inodes:<10} {}",
            short(&attributes.id),
            human_size(memory),
            human_size(disk),
            human_size(swap),
        );
    }
    Ok(())
}
