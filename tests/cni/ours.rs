//! What only our plugin promises: 1.1.0 (GC, STATUS, interface MTU in results), the
//! routed layout, its error codes, the address rules of IPAM, and `cni install`.

use std::collections::HashSet;
use std::fs::File;
use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use ferrokube_testkit::netns::Netns;
use serde_json::json;

use crate::harness::{Flavor, Net, addresses, has_link, result_ip};

#[test]
fn version_1_1_0_and_its_result_shape() -> Result<()> {
    let net = Net::new(Flavor::Ours, "v11", "10.60.0.0/24")?;
    let out = net.invoke_raw(&[("CNI_COMMAND", "VERSION")], b"")?.ok()?;
    ensure!(out["cniVersion"] == "1.1.0", "{out}");
    ensure!(
        out["supportedVersions"] == json!(["0.4.0", "1.0.0", "1.1.0"]),
        "{out}"
    );
    let pod = Netns::new("pod")?;
    let result = net.add("c1", &pod, "1.1.0")?;
    ensure!(result["cniVersion"] == "1.1.0", "{result}");
    ensure!(result["interfaces"][1]["mtu"] == 1400, "{result}");
    net.check("c1", &pod, "1.1.0", &result)?.ok()?;
    net.del("c1", Some(&pod.path()), "1.1.0")?;
    Ok(())
}

#[test]
fn routed_layout_without_a_bridge() -> Result<()> {
    let net = Net::new(Flavor::Ours, "lay", "10.60.0.0/24")?;
    let pod = Netns::new("pod")?;
    let result = net.add("c1", &pod, "1.1.0")?;
    let ip = result_ip(&result)?;
    let gateway = "10.60.0.1";
    ensure!(result["ips"][0]["gateway"] == gateway, "{result}");
    ensure!(
        addresses(&pod, "eth0")? == vec![format!("{ip}/32")],
        "pod address"
    );
    let routes = pod.ip(&["-4", "route", "show"])?;
    ensure!(
        routes.contains(&format!("default via {gateway} dev eth0")),
        "pod routes: {routes}"
    );
    let host = result["interfaces"][0]["name"]
        .as_str()
        .context("host name")?;
    ensure!(
        addresses(&net.node, host)? == vec![format!("{gateway}/32")],
        "host end"
    );
    let node_routes = net.node.ip(&["-4", "route", "show"])?;
    ensure!(
        node_routes.contains(&format!("{ip} dev {host}")),
        "node routes: {node_routes}"
    );
    let bridges = net.node.ip(&["-o", "link", "show", "type", "bridge"])?;
    ensure!(bridges.trim().is_empty(), "unexpected bridge: {bridges}");
    // The node reaches the pod over its /32 route (TCP to a listener in the pod).
    let listener = pod.run_in(move || Ok(std::net::TcpListener::bind((ip, 0))?))?;
    let port = listener.local_addr()?.port();
    net.node.run_in(move || {
        std::net::TcpStream::connect_timeout(
            &(ip, port).into(),
            std::time::Duration::from_secs(5),
        )?;
        Ok(())
    })?;
    net.del("c1", Some(&pod.path()), "1.1.0")?;
    ensure!(!has_link(&net.node, host), "host end left after DEL");
    Ok(())
}

#[test]
fn plugin_error_codes() -> Result<()> {
    let net = Net::new(Flavor::Ours, "codes", "10.60.0.0/24")?;
    let pod = Netns::new("pod")?;
    let path = pod.path();
    // 2: delegated IPAM is an unsupported field.
    let mut conf = net.conf("1.1.0");
    conf["ipam"] = json!({ "type": "host-local" });
    let msg = net
        .invoke("ADD", "c1", Some(&path), "eth0", &conf)?
        .error(2)?;
    ensure!(msg.contains("ipam.type"), "{msg}");
    // 3: CHECK of an attachment we never made.
    let prev = json!({ "cniVersion": "1.1.0", "ips": [{ "address": "10.60.0.9/32" }] });
    net.check("stranger", &pod, "1.1.0", &prev)?.error(3)?;
    // 4: no CNI_COMMAND at all; an interface name the kernel cannot have.
    net.invoke_raw(&[], net.conf("1.1.0").to_string().as_bytes())?
        .error(4)?;
    net.invoke(
        "ADD",
        "c1",
        Some(&path),
        "much-too-long-name",
        &net.conf("1.1.0"),
    )?
    .error(4)?;
    // 7: no podCIDR, an MTU out of range, a gateway outside the range.
    for (key, value) in [
        ("podCIDR", json!(null)),
        ("mtu", json!(10)),
        ("gateway", json!("192.0.2.1")),
    ] {
        let mut conf = net.conf("1.1.0");
        conf[key] = value;
        if conf[key].is_null()
            && let Some(map) = conf.as_object_mut()
        {
            map.remove(key);
        }
        net.invoke("ADD", "c1", Some(&path), "eth0", &conf)?
            .error(7)?;
    }
    // 11: the IPAM lock is held (by us, as another plugin process would).
    std::fs::create_dir_all(net.data.path())?;
    let lock = File::create(net.data.path().join("lock"))?;
    lock.lock()?;
    let mut conf = net.conf("1.1.0");
    conf["lockTimeoutMs"] = json!(200);
    net.invoke("ADD", "c1", Some(&path), "eth0", &conf)?
        .error(11)?;
    lock.unlock()?;
    net.invoke("ADD", "c1", Some(&path), "eth0", &conf)?.ok()?;
    // GC and STATUS exist from 1.1.0 on.
    net.invoke("STATUS", "", None, "", &net.conf("1.0.0"))?
        .error(1)?;
    net.invoke("GC", "", None, "", &net.conf("1.0.0"))?
        .error(1)?;
    net.del("c1", Some(&path), "1.1.0")?;
    ensure!(!has_link(&pod, "eth0"));
    Ok(())
}

#[test]
fn range_rules_exhaustion_and_status() -> Result<()> {
    // A /29: network .0, gateway .1, broadcast .7; pods get .2 to .6.
    let net = Net::new(Flavor::Ours, "range", "10.60.0.0/29")?;
    net.invoke("STATUS", "", None, "", &net.conf("1.1.0"))?
        .ok()?;
    let mut pods = Vec::new();
    let mut ips = HashSet::new();
    for i in 0..5 {
        let pod = Netns::new("pod")?;
        ips.insert(result_ip(&net.add(&format!("c{i}"), &pod, "1.1.0")?)?);
        pods.push(pod);
    }
    let want: HashSet<Ipv4Addr> = (2..=6).map(|d| Ipv4Addr::new(10, 60, 0, d)).collect();
    ensure!(ips == want, "handed out {ips:?}");
    let extra = Netns::new("pod")?;
    let msg = net
        .invoke("ADD", "c9", Some(&extra.path()), "eth0", &net.conf("1.1.0"))?
        .error(100)?;
    ensure!(msg.contains("range exhausted"), "{msg}");
    ensure!(!has_link(&extra, "eth0"), "failed ADD left eth0");
    let msg = net
        .invoke("STATUS", "", None, "", &net.conf("1.1.0"))?
        .error(50)?;
    ensure!(msg.contains("range exhausted"), "{msg}");
    net.del("c0", Some(&pods[0].path()), "1.1.0")?;
    net.invoke("STATUS", "", None, "", &net.conf("1.1.0"))?
        .ok()?;
    ensure!(
        result_ip(&net.add("c9", &extra, "1.1.0")?)? == Ipv4Addr::new(10, 60, 0, 2),
        "the freed address is the only one left"
    );
    Ok(())
}

#[test]
fn gc_releases_what_is_not_valid() -> Result<()> {
    let net = Net::new(Flavor::Ours, "gc", "10.60.0.0/24")?;
    let keep = Netns::new("keep")?;
    let kept = net.add("keep", &keep, "1.1.0")?;
    let mut leaked = Vec::new();
    for i in 0..2 {
        // Leak: the pod namespace goes away without a DEL.
        let pod = Netns::new("leak")?;
        leaked.push(result_ip(&net.add(&format!("leak{i}"), &pod, "1.1.0")?)?);
    }
    ensure!(net.allocated()?.len() == 3);
    let mut conf = net.conf("1.1.0");
    conf["cni.dev/valid-attachments"] = json!([{ "containerID": "keep", "ifname": "eth0" }]);
    net.invoke("GC", "", None, "", &conf)?.ok()?;
    let left = net.allocated()?;
    ensure!(
        left == HashSet::from([result_ip(&kept)?]),
        "after GC: {left:?}"
    );
    net.check("keep", &keep, "1.1.0", &kept)?.ok()?;
    // GC without the list is an invalid configuration.
    net.invoke("GC", "", None, "", &net.conf("1.1.0"))?
        .error(7)?;
    Ok(())
}

#[test]
fn install_places_plugin_and_conflist() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (bin, conf) = (dir.path().join("bin"), dir.path().join("net.d"));
    let status = Command::new(env!("CARGO_BIN_EXE_ferrokube"))
        .args([
            "cni",
            "install",
            "--pod-cidr",
            "10.61.0.0/24",
            "--mtu",
            "1450",
        ])
        .arg("--bin-dir")
        .arg(&bin)
        .arg("--conf-dir")
        .arg(&conf)
        .status()?;
    ensure!(status.success(), "install failed");
    let list: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        conf.join("10-ferrokube.conflist"),
    )?)?;
    let plugins = list["plugins"].as_array().context("plugins")?;
    let last = plugins.last().context("no plugins")?;
    ensure!(
        last["type"] == "ferrokube-cni" && last["podCIDR"] == "10.61.0.0/24",
        "{list}"
    );
    ensure!(last["mtu"] == 1450, "{list}");
    ensure!(
        last.get("dataDir").is_none(),
        "no --data-dir, no dataDir: {list}"
    );
    // Debian's reference plugins are installed by `cargo xtask setup`: loopback first,
    // and the list speaks a version loopback knows (1.0.0 for plugins 1.1).
    ensure!(
        std::path::Path::new("/usr/lib/cni/loopback").exists(),
        "/usr/lib/cni/loopback missing: run `cargo xtask setup`"
    );
    ensure!(
        plugins.len() == 2 && plugins[0]["type"] == "loopback",
        "{list}"
    );
    ensure!(list["cniVersion"] == "1.0.0", "{list}");
    ensure!(
        bin.join("loopback").exists(),
        "loopback not linked into the bin dir"
    );
    // The installed copy is the plugin.
    let out = Command::new(bin.join("ferrokube-cni"))
        .env("CNI_COMMAND", "VERSION")
        .output()?;
    let version: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    ensure!(version["supportedVersions"][2] == "1.1.0", "{version}");
    Ok(())
}

#[test]
fn del_succeeds_when_the_netns_path_is_no_namespace() -> Result<()> {
    // What a runtime leaves when the namespace was unmounted but its file stays.
    let net = Net::new(Flavor::Ours, "delfile", "10.60.0.0/24")?;
    let pod = Netns::new("pod")?;
    let result = net.add("c1", &pod, "1.1.0")?;
    let host = result["interfaces"][0]["name"]
        .as_str()
        .context("host name")?
        .to_string();
    let stale = tempfile::NamedTempFile::new()?;
    net.del("c1", Some(stale.path()), "1.1.0")?;
    ensure!(net.allocated()?.is_empty(), "address not released");
    // The host end is removed even though the pod side could not be entered.
    ensure!(!has_link(&net.node, &host), "host end {host} left");
    ensure!(!has_link(&pod, "eth0"), "pod side left");
    Ok(())
}
