//! `cargo xtask bench dataplane` (part c of issue 4's benchmark): time to program N
//! Services (10 backends each) from empty, and to apply one change at N, ferrokube's sync
//! layer into the kernel maps against kube-proxy's iptables layout loaded with
//! `iptables-restore` (nft and legacy backends). Needs root; everything runs in a cgroup
//! and a network namespace of its own, removed at the end.
//!
//! Arguments: `--out FILE` (JSON), `--sizes 1,1000,10000,30000`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ferrokube_proxy::sync::{Input, Object};
use ferrokube_proxy::{Agent, Config, Sizes, bpffs};
use ferrokube_testkit::netlab::{TestCgroup, unique_name};
use ferrokube_testkit::netns::Netns;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

const BACKENDS: u32 = 10;

fn vip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + i + 1)
}

fn pod(i: u32, j: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + i * BACKENDS + j + 1)
}

fn objects(n: u32, changed: Option<u32>) -> Vec<Object> {
    let mut out = Vec::with_capacity(2 * n as usize);
    for i in 0..n {
        let name = format!("svc-{i}");
        out.push(Object::Service(Box::new(Service {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some(vip(i).to_string()),
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    port: 80,
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: None,
        })));
        let endpoints = (0..BACKENDS)
            .map(|j| {
                // The change: one endpoint of one Service replaced by a new address.
                let ip = if changed == Some(i) && j == 0 {
                    Ipv4Addr::new(10, 127, 255, 1)
                } else {
                    pod(i, j)
                };
                Endpoint {
                    addresses: vec![ip.to_string()],
                    ..Default::default()
                }
            })
            .collect();
        out.push(Object::Slice(Box::new(EndpointSlice {
            metadata: ObjectMeta {
                name: Some(format!("{name}-1")),
                namespace: Some("default".into()),
                labels: Some(BTreeMap::from([(
                    "kubernetes.io/service-name".into(),
                    name,
                )])),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: Some(endpoints),
            ports: Some(vec![EndpointPort {
                name: Some("http".into()),
                port: Some(8080),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
        })));
    }
    out
}

/// kube-proxy's iptables layout (iptables mode): KUBE-SERVICES -> KUBE-SVC-* with
/// `statistic --mode random` -> KUBE-SEP-* (masquerade mark for hairpin, DNAT). With
/// `only = Some(i)` it is the partial restore kube-proxy (>= 1.27, MinimizeIPTablesRestore)
/// sends for a change to Service i: every chain declared, KUBE-SERVICES in full, rules
/// only for the changed Service.
fn iptables_rules(n: u32, only: Option<u32>, changed: Option<u32>) -> String {
    let mut chains = String::from("*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n");
    let mut rules = String::new();
    if only.is_none() {
        rules.push_str(
            "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
        );
        rules.push_str(
            "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
        );
        rules.push_str("-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n");
    }
    for i in 0..n {
        let svc = format!("KUBE-SVC-{i:016X}");
        let _ = writeln!(chains, ":{svc} - [0:0]");
        let _ = writeln!(
            rules,
            "-A KUBE-SERVICES -d {}/32 -p tcp -m comment --comment \"default/svc-{i}:http cluster IP\" -m tcp --dport 80 -j {svc}",
            vip(i)
        );
        let write_rules = only.is_none_or(|o| o == i);
        for j in 0..BACKENDS {
            let sep = format!("KUBE-SEP-{:016X}", i * BACKENDS + j);
            let _ = writeln!(chains, ":{sep} - [0:0]");
            if !write_rules {
                continue;
            }
            let ip = if changed == Some(i) && j == 0 {
                Ipv4Addr::new(10, 127, 255, 1)
            } else {
                pod(i, j)
            };
            let comment = format!("-m comment --comment \"default/svc-{i}:http\"");
            if j + 1 < BACKENDS {
                let p = 1.0 / f64::from(BACKENDS - j);
                let _ = writeln!(
                    rules,
                    "-A {svc} {comment} -m statistic --mode random --probability {p:.10} -j {sep}"
                );
            } else {
                let _ = writeln!(rules, "-A {svc} {comment} -j {sep}");
            }
            let _ = writeln!(rules, "-A {sep} -s {ip}/32 {comment} -j KUBE-MARK-MASQ");
            let _ = writeln!(
                rules,
                "-A {sep} -p tcp {comment} -m tcp -j DNAT --to-destination {ip}:8080"
            );
        }
    }
    chains + &rules + "COMMIT\n"
}

/// Runs one restore: its time, or why there is none (killed after `limit`, or the tool
/// refused the input: iptables-legacy fails to commit very large tables here).
fn restore(
    netns: &Netns,
    tool: &str,
    rules: &str,
    noflush: bool,
    limit: Duration,
) -> Result<Result<Duration, String>> {
    let mut command = Command::new("nsenter");
    command
        .arg(format!("--net={}", netns.path().display()))
        .arg(tool)
        .arg("-w");
    if noflush {
        command.arg("--noflush");
    }
    let start = Instant::now();
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {tool}"))?;
    // Fed from a thread: the restore tools parse as they read, so a slow one would
    // otherwise hold us in `write_all` past the time limit.
    let mut stdin = child.stdin.take().context("stdin")?;
    let input = rules.to_string();
    let feeder = std::thread::spawn(move || {
        // A killed child closes the pipe: that error is expected.
        let _ = stdin.write_all(input.as_bytes());
    });
    loop {
        if let Some(status) = child.try_wait()? {
            let elapsed = start.elapsed();
            let _ = feeder.join();
            let out = child.wait_with_output()?;
            if !status.success() {
                let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
                eprintln!("{tool}: {why}");
                return Ok(Err(format!("failed: {why}")));
            }
            return Ok(Ok(elapsed));
        }
        if start.elapsed() > limit {
            // Our own child, by its handle.
            let _ = child.kill();
            let _ = child.wait();
            let _ = feeder.join();
            return Ok(Err(format!("killed after {}s", limit.as_secs())));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn json(d: &Result<Duration, String>) -> serde_json::Value {
    match d {
        Ok(d) => serde_json::json!(ms(*d)),
        Err(why) => serde_json::json!(why),
    }
}

fn cell(d: &Result<Duration, String>, limit: Duration) -> String {
    match d {
        Ok(d) => format!("{:.1}", ms(*d)),
        Err(why) if why.starts_with("killed") => format!(">{}s", limit.as_secs()),
        Err(why) if why.starts_with("not run") => "n/a".into(),
        Err(_) => "failed".into(),
    }
}

struct Pins(Config);
impl Drop for Pins {
    fn drop(&mut self) {
        let _ = bpffs::remove(&self.0.bpffs, &self.0.node);
    }
}

fn ours(n: u32) -> Result<(Duration, Duration, usize)> {
    let cgroup = TestCgroup::new(&unique_name("ferrokube-bench-"))?;
    let mut config = Config::new(unique_name("bench-node-"), cgroup.path());
    config.sizes = Sizes {
        services: 40_000,
        backends: 320_000,
        slots: 320_000,
        revnat: 1024,
        affinity: 1024,
        ct: 1024,
    };
    let pins = Pins(config.clone());
    let mut agent = Agent::start(&pins.0)?;
    let all = objects(n, None);
    let start = Instant::now();
    agent.apply(Input::Snapshot(all))?;
    let full = start.elapsed();
    let changed = objects(n, Some(n / 2));
    let slice = changed
        .into_iter()
        .nth((n / 2 * 2 + 1) as usize)
        .context("the changed slice")?;
    let Object::Slice(slice) = slice else {
        anyhow::bail!("expected a slice")
    };
    let start = Instant::now();
    let stats = agent.apply(Input::Change(ferrokube_proxy::model::Change::Slice(slice)))?;
    let change = start.elapsed();
    drop(agent);
    drop(pins);
    drop(cgroup);
    Ok((full, change, stats.total()))
}

fn main() -> Result<()> {
    let mut out =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/bench/dataplane.json");
    let mut sizes = vec![1u32, 1000, 10_000, 30_000];
    let mut limit = Duration::from_secs(120);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--out" => out = args.next().context("--out FILE")?.into(),
            "--sizes" => {
                sizes = args
                    .next()
                    .context("--sizes N,N")?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            "--iptables-timeout" => {
                limit = Duration::from_secs(args.next().context("--iptables-timeout S")?.parse()?)
            }
            _ => {} // cargo bench passes --bench
        }
    }
    let mut rows = Vec::new();
    println!(
        "{:>7} | {:>14} {:>14} {:>7} | {:>15} {:>15} | {:>15} {:>15}",
        "N",
        "ours full ms",
        "ours 1 chg ms",
        "writes",
        "ipt-nft full ms",
        "ipt-nft chg ms",
        "ipt-leg full ms",
        "ipt-leg chg ms"
    );
    for n in sizes {
        let (full, change, writes) = ours(n)?;
        let mut ipt = BTreeMap::new();
        for tool in ["iptables-nft-restore", "iptables-legacy-restore"] {
            let netns = Netns::new("bench")?;
            let full = restore(&netns, tool, &iptables_rules(n, None, None), false, limit)?;
            // A change only makes sense on top of a complete load.
            let change = match &full {
                Ok(_) => restore(
                    &netns,
                    tool,
                    &iptables_rules(n, Some(n / 2), Some(n / 2)),
                    true,
                    limit,
                )?,
                Err(_) => Err("not run: the full load did not complete".into()),
            };
            ipt.insert(tool, (full, change));
        }
        let (nft_full, nft_change) = &ipt["iptables-nft-restore"];
        let (leg_full, leg_change) = &ipt["iptables-legacy-restore"];
        println!(
            "{n:>7} | {:>14.1} {:>14.3} {writes:>7} | {:>15} {:>15} | {:>15} {:>15}",
            ms(full),
            ms(change),
            cell(nft_full, limit),
            cell(nft_change, limit),
            cell(leg_full, limit),
            cell(leg_change, limit)
        );
        rows.push(serde_json::json!({
            "services": n,
            "backends_per_service": BACKENDS,
            "ferrokube_program_ms": ms(full),
            "ferrokube_one_change_ms": ms(change),
            "ferrokube_one_change_map_writes": writes,
            "iptables_nft_restore_ms": json(nft_full),
            "iptables_nft_one_change_ms": json(nft_change),
            "iptables_legacy_restore_ms": json(leg_full),
            "iptables_legacy_one_change_ms": json(leg_change),
            "iptables_timeout_s": limit.as_secs(),
        }));
        // Written after every row, so a long run keeps what it measured.
        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(
            &out,
            serde_json::to_string_pretty(&serde_json::json!({ "programming": rows }))?,
        )?;
    }
    println!("wrote {}", out.display());
    Ok(())
}
