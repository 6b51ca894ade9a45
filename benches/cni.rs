//! `cargo xtask bench cni`: ADD then DEL of one pod, repeated, through our plugin (the
//! release `ferrokube` binary invoked as `ferrokube-cni`) and through Debian's reference
//! `bridge` + `host-local` plugins, interleaved in one run on this machine.
//!
//! Each plugin runs in its own lab node namespace; the pod namespace is made once per
//! plugin and reused (DEL removes the pod interface), so the timings are the plugin's
//! work: process start, config decoding, IPAM with its lock and fsyncs, netlink.
//! Processes are started from a thread that has entered the node namespace (no `nsenter`
//! in the timed path).
//!
//! Prints a table and writes JSON (default `target/bench/cni.json`, or `--out PATH`);
//! `--pods N` sets the number of ADD+DEL rounds per plugin (default 200).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ferrokube_testkit::netns::Netns;
use serde_json::{Value, json};

struct Plugin {
    label: &'static str,
    binary: PathBuf,
    bin_dir: PathBuf,
    conf: Value,
    node: Netns,
    pod: Netns,
    add: Vec<Duration>,
    del: Vec<Duration>,
    round: Vec<Duration>,
}

impl Plugin {
    fn invoke(&self, command: &str, id: &str) -> Result<Duration> {
        let start = Instant::now();
        let mut child = Command::new(&self.binary)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_PATH", &self.bin_dir)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", self.pod.path())
            .env("CNI_IFNAME", "eth0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(self.conf.to_string().as_bytes())?;
        }
        let out = child.wait_with_output()?;
        let took = start.elapsed();
        if !out.status.success() {
            bail!(
                "{} {command} failed: {} {}",
                self.label,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(took)
    }

    /// One ADD then DEL, run from inside the node namespace.
    fn round(&mut self, i: usize) -> Result<()> {
        let id = format!("bench{i}");
        let path = self.node.path();
        let this: &Plugin = self;
        let (add, del) = std::thread::scope(|scope| {
            scope
                .spawn(|| -> Result<(Duration, Duration)> {
                    let ns = std::fs::File::open(&path)?;
                    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
                    Ok((this.invoke("ADD", &id)?, this.invoke("DEL", &id)?))
                })
                .join()
                .map_err(|_| anyhow::anyhow!("bench thread panicked"))?
        })?;
        self.add.push(add);
        self.del.push(del);
        self.round.push(add + del);
        Ok(())
    }
}

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

fn main() -> Result<()> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = workspace.join("target/bench/cni.json");
    let mut pods = 200usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--out" => out = args.next().context("--out needs a path")?.into(),
            "--pods" => pods = args.next().context("--pods needs a number")?.parse()?,
            "--bench" => {}
            other => bail!("unknown argument {other:?}"),
        }
    }
    for plugin in ["bridge", "host-local"] {
        if !Path::new("/usr/lib/cni").join(plugin).exists() {
            bail!("/usr/lib/cni/{plugin} missing: run `cargo xtask setup`");
        }
    }
    let ours_dir = tempfile::tempdir()?;
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_ferrokube"),
        ours_dir.path().join("ferrokube-cni"),
    )?;
    let ipam_ours = tempfile::tempdir()?;
    let ipam_ref = tempfile::tempdir()?;
    let mut plugins = [
        Plugin {
            label: "ferrokube-cni",
            binary: ours_dir.path().join("ferrokube-cni"),
            bin_dir: ours_dir.path().to_path_buf(),
            conf: json!({
                "cniVersion": "1.0.0", "name": "bench", "type": "ferrokube-cni",
                "podCIDR": "10.88.0.0/16", "dataDir": ipam_ours.path(),
            }),
            node: Netns::new("bench-ours")?,
            pod: Netns::new("bench-pod")?,
            add: Vec::new(),
            del: Vec::new(),
            round: Vec::new(),
        },
        Plugin {
            label: "bridge+host-local",
            binary: PathBuf::from("/usr/lib/cni/bridge"),
            bin_dir: PathBuf::from("/usr/lib/cni"),
            conf: json!({
                "cniVersion": "1.0.0", "name": "bench", "type": "bridge",
                "bridge": "fkbr0", "isGateway": true,
                "ipam": { "type": "host-local", "ranges": [[{ "subnet": "10.88.0.0/16" }]],
                          "dataDir": ipam_ref.path() },
            }),
            node: Netns::new("bench-ref")?,
            pod: Netns::new("bench-pod")?,
            add: Vec::new(),
            del: Vec::new(),
            round: Vec::new(),
        },
    ];
    for plugin in &plugins {
        plugin.node.enable_forwarding()?;
    }
    // Warm-up (page cache, the reference bridge's first creation), then interleaved rounds.
    for plugin in &mut plugins {
        for i in 0..5 {
            plugin.round(1_000_000 + i)?;
        }
        plugin.add.clear();
        plugin.del.clear();
        plugin.round.clear();
    }
    for i in 0..pods {
        for plugin in &mut plugins {
            plugin.round(i)?;
        }
    }
    let results: Vec<Value> = plugins
        .iter()
        .map(|p| {
            json!({
                "plugin": p.label,
                "add": stats(&p.add),
                "del": stats(&p.del),
                "add_plus_del": stats(&p.round),
            })
        })
        .collect();
    println!("| metric | {} | {} |", plugins[0].label, plugins[1].label);
    println!("|---|---:|---:|");
    for key in ["add", "del", "add_plus_del"] {
        for p in ["p50_ms", "p99_ms"] {
            println!(
                "| {key} {p} | {:.2} | {:.2} |",
                results[0][key][p].as_f64().unwrap_or(f64::NAN),
                results[1][key][p].as_f64().unwrap_or(f64::NAN)
            );
        }
    }
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let report = json!({ "pods": pods, "cni_version": "1.0.0", "results": results });
    std::fs::write(&out, serde_json::to_string_pretty(&report)?)?;
    println!("wrote {}", out.display());
    Ok(())
}
