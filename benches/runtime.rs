//! `cargo xtask bench runtime`: pod and container lifecycle latency and the runtime's
//! memory through CRI, our runtime against Debian's containerd 1.6 (CRI plugin, runc), in
//! one run on this machine, each started the way the CRI suite starts it
//! (`tests/cri/harness.rs`: lab network namespace, our CNI plugin, the busybox-static
//! image).
//!
//! Bring-up: N pods (default 50), one after the other, alternating between the two
//! runtimes, each RunPodSandbox + CreateContainer (`sleep 3600`) + StartContainer, and all
//! of them stay running. "To running" is the sum of those three calls for one pod.
//! Steady state: with all N pods running, the memory of each runtime: the daemon's RSS,
//! and the proportional set size (PSS, so the shared binary text counts once) of
//! everything the runtime keeps per pod: the daemon, its shims (ours: one
//! `ferrokube runtime-shim` per container; containerd: one `containerd-shim-runc-v2` per
//! pod) and containerd's pause processes (ours has none; here containerd's sandbox image is
//! the busybox test image, so its pause process is a `sleep infinity`). Tear-down: StopContainer
//! (timeout 0: SIGKILL), then StopPodSandbox + RemovePodSandbox, per pod.
//!
//! Prints a table of p50/p99 per phase and the memory, and writes JSON (default
//! `target/bench/runtime.json`, or `--out PATH`); `--pods N` sets the pods per runtime.
//! Needs root.

#[path = "../tests/cri/harness.rs"]
#[allow(dead_code)]
mod harness;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use harness::{IMAGE, Kind, Lab};
use k8s_cri::v1 as cri;
use serde_json::{Value, json};

const PHASES: [&str; 6] = [
    "run_pod_sandbox",
    "create_container",
    "start_container",
    "to_running",
    "stop_container",
    "stop_remove_sandbox",
];

type Samples = BTreeMap<&'static str, Vec<Duration>>;

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx].as_secs_f64() * 1e3
}

fn stats(samples: &[Duration]) -> Value {
    let mut sorted = samples.to_vec();
    sorted.sort();
    json!({ "p50_ms": percentile(&sorted, 0.5), "p99_ms": percentile(&sorted, 0.99), "n": sorted.len() })
}

fn pod_config(lab: &Lab, name: &str) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "bench".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: lab.dir.path().join("logs").join(name).display().to_string(),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: format!("{}/pod-{name}", lab.cgroup_parent()),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    pid: cri::NamespaceMode::Container as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Starts pod `i` with one running container; returns (pod id, container id).
async fn bring_up(lab: &mut Lab, i: usize, samples: &mut Samples) -> Result<(String, String)> {
    let name = format!("bench-{i}");
    let pod = pod_config(lab, &name);
    let began = Instant::now();
    let pod_id = lab
        .runtime
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod.clone()),
            runtime_handler: String::new(),
        })
        .await?
        .into_inner()
        .pod_sandbox_id;
    let ran = Instant::now();
    let id = lab
        .runtime
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: "main".into(),
                    attempt: 0,
                }),
                image: Some(cri::ImageSpec {
                    image: IMAGE.into(),
                    ..Default::default()
                }),
                command: vec!["sleep".into(), "3600".into()],
                log_path: "main.log".into(),
                ..Default::default()
            }),
            sandbox_config: Some(pod),
        })
        .await?
        .into_inner()
        .container_id;
    let created = Instant::now();
    lab.runtime
        .start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await?;
    let started = Instant::now();
    samples
        .entry("run_pod_sandbox")
        .or_default()
        .push(ran - began);
    samples
        .entry("create_container")
        .or_default()
        .push(created - ran);
    samples
        .entry("start_container")
        .or_default()
        .push(started - created);
    samples
        .entry("to_running")
        .or_default()
        .push(started - began);
    Ok((pod_id, id))
}

async fn tear_down(lab: &mut Lab, pod_id: String, id: String, samples: &mut Samples) -> Result<()> {
    let began = Instant::now();
    lab.runtime
        .stop_container(cri::StopContainerRequest {
            container_id: id,
            timeout: 0,
        })
        .await?;
    let stopped = Instant::now();
    lab.runtime
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await?;
    lab.runtime
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod_id,
        })
        .await?;
    samples
        .entry("stop_container")
        .or_default()
        .push(stopped - began);
    samples
        .entry("stop_remove_sandbox")
        .or_default()
        .push(stopped.elapsed());
    Ok(())
}

/// What containerd runs as each sandbox's pause container here: the lab's sandbox image is
/// the busybox test image, whose entrypoint is `sleep infinity` (the bench's own
/// containers run `sleep 3600`).
const SANDBOX_HOLDER: &str = "/bin/sleep infinity";

/// `Key:   1234 kB` from a /proc file, in KiB.
fn kib(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// The runtime's memory with its pods running: daemon RSS and PSS, and the PSS and count of
/// its per-pod processes (shims: command line naming the lab directory; pause: `pause` or
/// [`SANDBOX_HOLDER`] processes in the lab's cgroups).
fn memory(lab: &Lab) -> Result<Value> {
    let daemon = lab.daemon_pid();
    let dir = lab.dir.path().to_string_lossy().into_owned();
    let cgroup = lab.cgroup_parent();
    let (mut shims, mut shim_pss, mut pauses, mut pause_pss) = (0u64, 0u64, 0u64, 0u64);
    let (mut daemon_rss, mut daemon_pss) = (0u64, 0u64);
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let proc = entry.path();
        // Processes come and go while we walk: skip what vanished.
        let Ok(rollup) = std::fs::read_to_string(proc.join("smaps_rollup")) else {
            continue;
        };
        let pss = kib(&rollup, "Pss:").unwrap_or(0);
        if pid == daemon {
            daemon_pss = pss;
            daemon_rss = std::fs::read_to_string(proc.join("status"))
                .ok()
                .and_then(|s| kib(&s, "VmRSS:"))
                .unwrap_or(0);
            continue;
        }
        let cmdline = std::fs::read(proc.join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let comm = std::fs::read_to_string(proc.join("comm")).unwrap_or_default();
        if cmdline.contains(&dir) {
            shims += 1;
            shim_pss += pss;
        } else if (comm.trim() == "pause" || cmdline.trim() == SANDBOX_HOLDER)
            && std::fs::read_to_string(proc.join("cgroup"))
                .unwrap_or_default()
                .contains(&cgroup)
        {
            pauses += 1;
            pause_pss += pss;
        }
    }
    Ok(json!({
        "daemon_rss_mib": daemon_rss as f64 / 1024.0,
        "daemon_pss_mib": daemon_pss as f64 / 1024.0,
        "shims": shims,
        "shims_pss_mib": shim_pss as f64 / 1024.0,
        "pause_processes": pauses,
        "pause_pss_mib": pause_pss as f64 / 1024.0,
        "total_pss_mib": (daemon_pss + shim_pss + pause_pss) as f64 / 1024.0,
    }))
}

fn main() -> Result<()> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = workspace.join("target/bench/runtime.json");
    let mut pods = 50usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--out" => out = args.next().context("--out needs a path")?.into(),
            "--pods" => pods = args.next().context("--pods needs a number")?.parse()?,
            "--bench" => {}
            other => bail!("unknown argument {other:?}"),
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let results = runtime.block_on(async {
        let mut labs = [
            ("ferrokube", Lab::start(Kind::Ours).await?),
            ("containerd", Lab::start(Kind::Containerd).await?),
        ];
        let mut samples: [Samples; 2] = [BTreeMap::new(), BTreeMap::new()];
        let mut running: [Vec<(String, String)>; 2] = [Vec::new(), Vec::new()];
        for i in 0..pods {
            for ((lab, samples), running) in labs
                .iter_mut()
                .zip(samples.iter_mut())
                .zip(running.iter_mut())
            {
                let up = bring_up(&mut lab.1, i, samples)
                    .await
                    .with_context(|| lab.1.log_tail())?;
                running.push(up);
            }
        }
        // Let start-up work (CNI, shims settling) finish before sampling memory.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let memory = [memory(&labs[0].1)?, memory(&labs[1].1)?];
        for _ in 0..pods {
            for ((lab, samples), running) in labs
                .iter_mut()
                .zip(samples.iter_mut())
                .zip(running.iter_mut())
            {
                let Some((pod_id, id)) = running.pop() else {
                    continue;
                };
                tear_down(&mut lab.1, pod_id, id, samples)
                    .await
                    .with_context(|| lab.1.log_tail())?;
            }
        }
        Ok::<_, anyhow::Error>(
            labs.iter()
                .zip(samples.iter())
                .zip(memory)
                .map(|(((label, _), samples), memory)| {
                    let mut result = json!({ "runtime": label, "memory": memory });
                    for phase in PHASES {
                        result[phase] = stats(samples.get(phase).map(Vec::as_slice).unwrap_or(&[]));
                    }
                    result
                })
                .collect::<Vec<Value>>(),
        )
    })?;
    let f = |r: &Value, a: &str, b: &str| r[a][b].as_f64().unwrap_or(f64::NAN);
    println!("{pods} pods per runtime, all running at once");
    println!("| phase | ferrokube p50 / p99 ms | containerd p50 / p99 ms |");
    println!("|---|---:|---:|");
    for phase in PHASES {
        println!(
            "| {phase} | {:.1} / {:.1} | {:.1} / {:.1} |",
            f(&results[0], phase, "p50_ms"),
            f(&results[0], phase, "p99_ms"),
            f(&results[1], phase, "p50_ms"),
            f(&results[1], phase, "p99_ms"),
        );
    }
    for (key, label) in [
        ("daemon_rss_mib", "daemon RSS MiB"),
        ("daemon_pss_mib", "daemon PSS MiB"),
        ("shims", "shim processes"),
        ("shims_pss_mib", "shims PSS MiB"),
        ("pause_processes", "pause processes"),
        ("pause_pss_mib", "pause PSS MiB"),
        ("total_pss_mib", "total PSS MiB"),
    ] {
        let m = |r: &Value| r["memory"][key].as_f64().unwrap_or(f64::NAN);
        println!(
            "| {label} | {:.1} | {:.1} |",
            m(&results[0]),
            m(&results[1])
        );
    }
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let report = json!({ "pods": pods, "results": results });
    std::fs::write(&out, serde_json::to_string_pretty(&report)?)?;
    println!("wrote {}", out.display());
    Ok(())
}
