//! `cargo xtask bench dataplane` (part c of issue 4's benchmark): time to program N
//! Services (10 backends each) from empty, and to apply one change at N, ferrokube's sync
//! layer into the kernel maps against kube-proxy's iptables layout loaded with
//! `iptables-restore` (nft and legacy backends). Needs root; everything runs in a cgroup
//! and a network namespace of its own, removed at the end.
//!
//! Arguments: `--out FILE` (JSON), `--sizes 1,1000,10000,30000`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

mod common;

use anyhow::{Context, Result};
use common::{BACKENDS, iptables_rules, objects, restore};
use ferrokube_proxy::sync::{Input, Object};
use ferrokube_proxy::{Agent, Config, Sizes, bpffs};
use ferrokube_testkit::netlab::{TestCgroup, unique_name};
use ferrokube_testkit::netns::Netns;

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
    let all = objects(n, None, None);
    let start = Instant::now();
    agent.apply(Input::Snapshot(all))?;
    let full = start.elapsed();
    let changed = objects(n, Some(n / 2), None);
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
            let full = restore(
                &netns,
                tool,
                &iptables_rules(n, None, None, None),
                false,
                limit,
            )?;
            // A change only makes sense on top of a complete load.
            let change = match &full {
                Ok(_) => restore(
                    &netns,
                    tool,
                    &iptables_rules(n, Some(n / 2), Some(n / 2), None),
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
