//! `ferrokube crictl`: a small CRI client (no crictl package exists in the registries
//! these machines reach) for any CRI runtime on a unix socket: ours or containerd.
//! Covers inspection and cleanup; it does not create pods or containers.

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
    /// Stream a running container's output (Attach + WebSocket) until it exits.
    Attach { id: String },
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
    Logs { id: String },
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
        CrictlCommand::Attach { id } => {
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
            let code = crate::crictl_stream::exec(&url, false, false).await?;
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
        CrictlCommand::Logs { id } => {
            let status = runtime
                .container_status(cri::ContainerStatusRequest {
                    container_id: id.clone(),
                    verbose: false,
                })
                .await?
                .into_inner()
                .status
                .context("no status")?;
            if status.log_path.is_empty() {
                bail!("container {id} has no log path");
            }
            let text = std::fs::read_to_string(&status.log_path)
                .with_context(|| format!("reading {}", status.log_path))?;
            let (mut out, mut err) = (String::new(), String::new());
            for line in text.lines() {
                let mut parts = line.splitn(4, ' ');
                let (_, Some(stream), Some(tag)) = (parts.next(), parts.next(), parts.next())
                else {
                    continue;
                };
                let content = parts.next().unwrap_or_default();
                let target = if stream == "stderr" {
                    &mut err
                } else {
                    &mut out
                };
                target.push_str(content);
                if tag == "F" {
                    target.push('\n');
                }
            }
            print!("{out}");
            eprint!("{err}");
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
