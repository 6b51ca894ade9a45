//! `cargo xtask bench runtime`: pod and container lifecycle latency through CRI, our
//! runtime against Debian's containerd 1.6 (CRI plugin, runc), interleaved in one run on
//! this machine, each started the way the CRI suite starts it (`tests/cri/harness.rs`:
//! lab network namespace, our CNI plugin, the busybox-static image).
//!
//! One round: RunPodSandbox, CreateContainer (`sleep 3600`), StartContainer,
//! StopContainer (timeout 0: SIGKILL), StopPodSandbox + RemovePodSandbox. Prints a table of
//! p50/p99 per phase and writes JSON (default `target/bench/runtime.json`, or `--out
//! PATH`); `--rounds N` sets the rounds per runtime (default 30). Needs root.

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
    "stop_container",
    "stop_remove_sandbox",
    "total",
];

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

async fn round(
    lab: &mut Lab,
    i: usize,
    samples: &mut BTreeMap<&'static str, Vec<Duration>>,
) -> Result<()> {
    let name = format!("bench-{i}");
    let pod = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.clone(),
            uid: format!("uid-{name}"),
            namespace: "bench".into(),
            attempt: 0,
        }),
        hostname: name.clone(),
        log_directory: lab
            .dir
            .path()
            .join("logs")
            .join(&name)
            .display()
            .to_string(),
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
    };
    let began = Instant::now();
    let mut mark = Instant::now();
    let mut lap = |phase: &'static str, samples: &mut BTreeMap<&'static str, Vec<Duration>>| {
        let now = Instant::now();
        samples.entry(phase).or_default().push(now - mark);
        mark = now;
    };
    let pod_id = lab
        .runtime
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod.clone()),
            runtime_handler: String::new(),
        })
        .await?
        .into_inner()
        .pod_sandbox_id;
    lap("run_pod_sandbox", samples);
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
    lap("create_container", samples);
    lab.runtime
        .start_container(cri::StartContainerRequest {
            container_id: id.clone(),
        })
        .await?;
    lap("start_container", samples);
    lab.runtime
        .stop_container(cri::StopContainerRequest {
            container_id: id,
            timeout: 0,
        })
        .await?;
    lap("stop_container", samples);
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
    lap("stop_remove_sandbox", samples);
    samples.entry("total").or_default().push(began.elapsed());
    Ok(())
}

fn main() -> Result<()> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = workspace.join("target/bench/runtime.json");
    let mut rounds = 30usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--out" => out = args.next().context("--out needs a path")?.into(),
            "--rounds" => rounds = args.next().context("--rounds needs a number")?.parse()?,
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
        let mut samples: [BTreeMap<&'static str, Vec<Duration>>; 2] =
            [BTreeMap::new(), BTreeMap::new()];
        for i in 0..rounds {
            for (lab, samples) in labs.iter_mut().zip(samples.iter_mut()) {
                round(&mut lab.1, i, samples)
                    .await
                    .with_context(|| lab.1.log_tail())?;
            }
        }
        Ok::<_, anyhow::Error>(
            labs.iter()
                .zip(samples.iter())
                .map(|((label, _), samples)| {
                    let mut result = json!({ "runtime": label });
                    for phase in PHASES {
                        result[phase] = stats(samples.get(phase).map(Vec::as_slice).unwrap_or(&[]));
                    }
                    result
                })
                .collect::<Vec<Value>>(),
        )
    })?;
    println!("| phase | ferrokube | containerd |");
    println!("|---|---:|---:|");
    for phase in PHASES {
        for p in ["p50_ms", "p99_ms"] {
            println!(
                "| {phase} {p} | {:.1} | {:.1} |",
                results[0][phase][p].as_f64().unwrap_or(f64::NAN),
                results[1][phase][p].as_f64().unwrap_or(f64::NAN)
            );
        }
    }
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let report = json!({ "rounds": rounds, "results": results });
    std::fs::write(&out, serde_json::to_string_pretty(&report)?)?;
    println!("wrote {}", out.display());
    Ok(())
}
