//! Specification cases, run against our plugin and the reference bridge + host-local.
//! The reference plugins (1.1) speak up to 1.0.0, so these cases use 1.0.0 and 0.4.0.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

use anyhow::{Context, Result, ensure};
use ferrokube_cni::Ipv4Cidr;
use ferrokube_testkit::netns::Netns;
use serde_json::Value;

use crate::harness::{Flavor, Net, addresses, has_link, mtu, result_ip};

const CIDR: &str = "10.50.0.0/24";

macro_rules! both {
    ($($case:ident),* $(,)?) => {
        mod ours {
            $(#[test] fn $case() -> anyhow::Result<()> { super::$case(crate::harness::Flavor::Ours) })*
        }
        mod reference {
            $(#[test] fn $case() -> anyhow::Result<()> { super::$case(crate::harness::Flavor::Reference) })*
        }
    };
}

both!(
    version_lists_supported_versions,
    add_renders_the_requested_version,
    error_codes,
    del_is_idempotent,
    check_detects_removed_address_and_interface,
    concurrent_adds_never_collide,
);

fn version_lists_supported_versions(flavor: Flavor) -> Result<()> {
    let net = Net::new(flavor, "ver", CIDR)?;
    for stdin in [&b""[..], br#"{"cniVersion":"1.0.0"}"#] {
        let out = net.invoke_raw(&[("CNI_COMMAND", "VERSION")], stdin)?.ok()?;
        let versions: Vec<&str> = out["supportedVersions"]
            .as_array()
            .context("supportedVersions")?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for v in ["0.4.0", "1.0.0"] {
            ensure!(versions.contains(&v), "{v} missing from {out}");
        }
        ensure!(out["cniVersion"].is_string(), "{out}");
    }
    Ok(())
}

fn add_renders_the_requested_version(flavor: Flavor) -> Result<()> {
    let net = Net::new(flavor, "add", CIDR)?;
    let cidr: Ipv4Cidr = CIDR.parse()?;
    for (i, version) in ["0.4.0", "1.0.0"].into_iter().enumerate() {
        let pod = Netns::new("pod")?;
        let id = format!("add{i}");
        let result = net.add(&id, &pod, version)?;
        ensure!(result["cniVersion"] == version, "{result}");
        let ip = result_ip(&result)?;
        ensure!(cidr.contains(ip), "{ip} outside {CIDR}");
        match version {
            "0.4.0" => ensure!(result["ips"][0]["version"] == "4", "{result}"),
            _ => ensure!(result["ips"][0].get("version").is_none(), "{result}"),
        }
        // The interface the IP is on is the one in the sandbox.
        let index = result["ips"][0]["interface"]
            .as_u64()
            .context("ips[0].interface")?;
        let iface = &result["interfaces"][usize::try_from(index)?];
        ensure!(iface["name"] == "eth0", "{result}");
        ensure!(
            iface["sandbox"] == pod.path().display().to_string(),
            "{result}"
        );
        let on_eth0 = addresses(&pod, "eth0")?;
        ensure!(
            on_eth0.iter().any(|a| a.starts_with(&format!("{ip}/"))),
            "{ip} not on eth0: {on_eth0:?}"
        );
        ensure!(mtu(&pod, "eth0")? == 1400, "MTU not applied");
        ensure!(net.allocated()?.contains(&ip), "{ip} not recorded by IPAM");
        net.del(&id, Some(&pod.path()), version)?;
        ensure!(!net.allocated()?.contains(&ip), "{ip} not released by DEL");
        ensure!(!has_link(&pod, "eth0"), "eth0 left after DEL");
    }
    Ok(())
}

fn error_codes(flavor: Flavor) -> Result<()> {
    let net = Net::new(flavor, "err", CIDR)?;
    let pod = Netns::new("pod")?;
    let pod_path = pod.path();
    // 1: a version the plugin does not speak.
    let mut conf = net.conf("1.0.0");
    conf["cniVersion"] = "9.9.9".into();
    net.invoke("ADD", "c1", Some(&pod_path), "eth0", &conf)?
        .error(1)?;
    // 4: an unknown CNI_COMMAND; ADD without CNI_NETNS; bad characters in the container
    // ID. (A missing CNI_COMMAND differs: the reference plugins print their name and
    // succeed, ours answers 4; see ours.rs.)
    net.invoke("BOGUS", "c1", Some(&pod_path), "eth0", &net.conf("1.0.0"))?
        .error(4)?;
    net.invoke("ADD", "c1", None, "eth0", &net.conf("1.0.0"))?
        .error(4)?;
    net.invoke(
        "ADD",
        "bad id!",
        Some(&pod_path),
        "eth0",
        &net.conf("1.0.0"),
    )?
    .error(4)?;
    // 6: stdin that is not JSON.
    let netns = pod_path.display().to_string();
    net.invoke_raw(
        &[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", &netns),
            ("CNI_IFNAME", "eth0"),
        ],
        b"{not json",
    )?
    .error(6)?;
    ensure!(!has_link(&pod, "eth0"), "a failed ADD left an interface");
    ensure!(
        net.allocated()?.is_empty(),
        "a failed ADD left an allocation"
    );
    Ok(())
}

fn del_is_idempotent(flavor: Flavor) -> Result<()> {
    let net = Net::new(flavor, "del", CIDR)?;
    // Never added.
    net.del("ghost", None, "1.0.0")?;
    let pod = Netns::new("pod")?;
    net.del("ghost", Some(&pod.path()), "1.0.0")?;
    // Added, deleted twice.
    net.add("twice", &pod, "1.0.0")?;
    net.del("twice", Some(&pod.path()), "1.0.0")?;
    net.del("twice", Some(&pod.path()), "1.0.0")?;
    // Added, then the namespace vanished before DEL: DEL succeeds and frees the address.
    let gone = Netns::new("gone")?;
    let gone_path = gone.path();
    let ip = result_ip(&net.add("gone", &gone, "1.0.0")?)?;
    drop(gone);
    net.del("gone", Some(&gone_path), "1.0.0")?;
    ensure!(!net.allocated()?.contains(&ip), "{ip} not released");
    ensure!(
        net.allocated()?.is_empty(),
        "allocations left: {:?}",
        net.allocated()?
    );
    Ok(())
}

fn check_detects_removed_address_and_interface(flavor: Flavor) -> Result<()> {
    let net = Net::new(flavor, "chk", CIDR)?;
    let pod = Netns::new("pod")?;
    let prev = net.add("c1", &pod, "1.0.0")?;
    net.check("c1", &pod, "1.0.0", &prev)?.ok()?;
    for address in addresses(&pod, "eth0")? {
        pod.ip(&["addr", "del", &address, "dev", "eth0"])?;
    }
    let inv = net.check("c1", &pod, "1.0.0", &prev)?;
    ensure!(
        !inv.exit_ok,
        "CHECK passed without the address: {}",
        inv.stdout
    );
    ensure!(
        inv.json.is_some_and(|j| j["code"].is_u64()),
        "CHECK failure without error object"
    );

    let pod2 = Netns::new("pod")?;
    let prev2 = net.add("c2", &pod2, "1.0.0")?;
    net.check("c2", &pod2, "1.0.0", &prev2)?.ok()?;
    pod2.ip(&["link", "del", "eth0"])?;
    let inv = net.check("c2", &pod2, "1.0.0", &prev2)?;
    ensure!(
        !inv.exit_ok,
        "CHECK passed without the interface: {}",
        inv.stdout
    );
    ensure!(
        inv.json.is_some_and(|j| j["code"].is_u64()),
        "CHECK failure without error object"
    );
    Ok(())
}

fn concurrent_adds_never_collide(flavor: Flavor) -> Result<()> {
    let count = match flavor {
        Flavor::Ours => 100,
        // The reference bridge plugin serialises on its bridge; fewer keep the run short.
        Flavor::Reference => 30,
    };
    let net = Arc::new(Net::new(flavor, "conc", "10.50.0.0/16")?);
    let pods: Vec<Arc<Netns>> = (0..count)
        .map(|_| Netns::new("pod").map(Arc::new))
        .collect::<Result<_>>()?;
    let handles: Vec<_> = pods
        .iter()
        .enumerate()
        .map(|(i, pod)| {
            let (net, pod) = (net.clone(), pod.clone());
            std::thread::spawn(move || -> Result<Ipv4Addr> {
                result_ip(&net.add(&format!("conc{i}"), &pod, "1.0.0")?)
            })
        })
        .collect();
    let mut ips = HashSet::new();
    for handle in handles {
        let ip = handle
            .join()
            .map_err(|_| anyhow::anyhow!("ADD thread panicked"))??;
        ensure!(ips.insert(ip), "{ip} handed out twice");
    }
    ensure!(
        ips.len() == count,
        "{} distinct addresses for {count} pods",
        ips.len()
    );
    ensure!(
        net.allocated()? == ips,
        "IPAM state differs from the results"
    );
    for (i, pod) in pods.iter().enumerate() {
        net.del(&format!("conc{i}"), Some(&pod.path()), "1.0.0")?;
    }
    ensure!(net.allocated()?.is_empty(), "DEL left allocations");
    Ok(())
}
