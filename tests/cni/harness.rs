//! Invoking a CNI plugin like a runtime does, in lab namespaces.

use std::collections::HashSet;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, Result, bail};
use ferrokube_testkit::netns::Netns;
use serde_json::{Value, json};

/// Where Debian's `containernetworking-plugins` installs the reference plugins.
pub const REFERENCE_DIR: &str = "/usr/lib/cni";

/// Which plugin a test drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// `ferrokube-cni` (our binary under that name).
    Ours,
    /// The reference `bridge` plugin with `host-local` IPAM.
    Reference,
}

/// One network on one lab node: the node namespace, the IPAM state dir and the plugin.
#[derive(Debug)]
pub struct Net {
    pub flavor: Flavor,
    pub node: Netns,
    pub data: tempfile::TempDir,
    bin_dir: tempfile::TempDir,
    pub name: String,
    pub cidr: String,
    /// Extra keys merged into every configuration.
    pub extra: Value,
}

/// What one invocation returned.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub exit_ok: bool,
    pub json: Option<Value>,
    pub stdout: String,
    pub stderr: String,
}

impl Invocation {
    /// Asserts success and returns the JSON (Null when stdout is empty).
    pub fn ok(self) -> Result<Value> {
        if !self.exit_ok {
            bail!(
                "plugin failed: stdout {} stderr {}",
                self.stdout,
                self.stderr
            );
        }
        Ok(self.json.unwrap_or(Value::Null))
    }

    /// Asserts a failure with the CNI error object carrying `code`; returns the message.
    pub fn error(self, code: u64) -> Result<String> {
        if self.exit_ok {
            bail!(
                "expected error code {code}, plugin succeeded: {}",
                self.stdout
            );
        }
        let json = self
            .json
            .with_context(|| format!("error without a JSON object on stdout: {:?}", self.stdout))?;
        let got = json["code"].as_u64();
        if got != Some(code) {
            bail!("expected error code {code}, got {json}");
        }
        let msg = json["msg"].as_str().unwrap_or_default().to_string();
        if msg.is_empty() {
            bail!("error object without msg: {json}");
        }
        Ok(msg)
    }
}

impl Net {
    /// A new node namespace (forwarding on) with an empty IPAM dir, for `cidr`.
    pub fn new(flavor: Flavor, tag: &str, cidr: &str) -> Result<Net> {
        let node = Netns::new(&format!("n{tag}"))?;
        node.enable_forwarding()?;
        let bin_dir = tempfile::Builder::new().prefix("fk-cni-bin").tempdir()?;
        match flavor {
            Flavor::Ours => {
                std::os::unix::fs::symlink(
                    env!("CARGO_BIN_EXE_ferrokube"),
                    bin_dir.path().join("ferrokube-cni"),
                )?;
            }
            Flavor::Reference => {
                for plugin in ["bridge", "host-local"] {
                    let path = Path::new(REFERENCE_DIR).join(plugin);
                    if !path.exists() {
                        bail!(
                            "{} is missing: the reference-plugin tests need Debian's \
                             containernetworking-plugins (run `cargo xtask setup`)",
                            path.display()
                        );
                    }
                    std::os::unix::fs::symlink(&path, bin_dir.path().join(plugin))?;
                }
            }
        }
        Ok(Net {
            flavor,
            node,
            data: tempfile::Builder::new().prefix("fk-cni-ipam").tempdir()?,
            bin_dir,
            name: format!("fk{tag}"),
            cidr: cidr.to_string(),
            extra: json!({}),
        })
    }

    /// The plugin binary's path.
    pub fn plugin(&self) -> PathBuf {
        self.bin_dir.path().join(match self.flavor {
            Flavor::Ours => "ferrokube-cni",
            Flavor::Reference => "bridge",
        })
    }

    /// The network configuration in `version`.
    pub fn conf(&self, version: &str) -> Value {
        let mut conf = match self.flavor {
            Flavor::Ours => json!({
                "cniVersion": version,
                "name": self.name,
                "type": "ferrokube-cni",
                "podCIDR": self.cidr,
                "mtu": 1400,
                "dataDir": self.data.path(),
            }),
            Flavor::Reference => json!({
                "cniVersion": version,
                "name": self.name,
                "type": "bridge",
                "bridge": "fkbr0",
                "isGateway": true,
                "mtu": 1400,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": self.cidr }]],
                    "dataDir": self.data.path(),
                },
            }),
        };
        if let (Some(conf), Some(extra)) = (conf.as_object_mut(), self.extra.as_object()) {
            for (k, v) in extra {
                conf.insert(k.clone(), v.clone());
            }
        }
        conf
    }

    /// Runs the plugin in the node namespace with exactly `env` (plus `PATH` and
    /// `CNI_PATH`) and `stdin`.
    pub fn invoke_raw(&self, env: &[(&str, &str)], stdin: &[u8]) -> Result<Invocation> {
        let mut command = self.node.command(self.plugin());
        command
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_PATH", self.bin_dir.path())
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().context("spawning the plugin")?;
        if let Some(mut input) = child.stdin.take() {
            // A plugin may exit without reading (VERSION): ignore a broken pipe.
            let _ = input.write_all(stdin);
        }
        let out = child.wait_with_output()?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        Ok(Invocation {
            exit_ok: out.status.success(),
            json: serde_json::from_str(stdout.trim()).ok(),
            stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Runs `command` for `(container, ifname)` in `netns` with `conf`.
    pub fn invoke(
        &self,
        command: &str,
        container: &str,
        netns: Option<&Path>,
        ifname: &str,
        conf: &Value,
    ) -> Result<Invocation> {
        let netns = netns.map(|p| p.display().to_string()).unwrap_or_default();
        let mut env = vec![("CNI_COMMAND", command)];
        if !container.is_empty() {
            env.push(("CNI_CONTAINERID", container));
        }
        if !netns.is_empty() {
            env.push(("CNI_NETNS", &netns));
        }
        if !ifname.is_empty() {
            env.push(("CNI_IFNAME", ifname));
        }
        self.invoke_raw(&env, conf.to_string().as_bytes())
    }

    /// ADD in `version`; returns the result.
    pub fn add(&self, container: &str, pod: &Netns, version: &str) -> Result<Value> {
        self.invoke(
            "ADD",
            container,
            Some(&pod.path()),
            "eth0",
            &self.conf(version),
        )?
        .ok()
    }

    /// DEL (succeeds or fails the test).
    pub fn del(&self, container: &str, netns: Option<&Path>, version: &str) -> Result<()> {
        self.invoke("DEL", container, netns, "eth0", &self.conf(version))?
            .ok()
            .map(drop)
    }

    /// CHECK with `prev` as prevResult.
    pub fn check(
        &self,
        container: &str,
        pod: &Netns,
        version: &str,
        prev: &Value,
    ) -> Result<Invocation> {
        let mut conf = self.conf(version);
        conf["prevResult"] = prev.clone();
        self.invoke("CHECK", container, Some(&pod.path()), "eth0", &conf)
    }

    /// Every address the IPAM state holds (files named like an IPv4 address anywhere
    /// under the data dir: our layout and host-local's).
    pub fn allocated(&self) -> Result<HashSet<Ipv4Addr>> {
        fn walk(dir: &Path, out: &mut HashSet<Ipv4Addr>) -> Result<()> {
            for entry in std::fs::read_dir(dir)? {
                let entry = entry?;
                if entry.file_type()?.is_dir() {
                    walk(&entry.path(), out)?;
                } else if let Some(ip) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
                    out.insert(ip);
                }
            }
            Ok(())
        }
        let mut out = HashSet::new();
        walk(self.data.path(), &mut out)?;
        Ok(out)
    }
}

/// The pod address of an ADD result (`ips[0].address` without the prefix).
pub fn result_ip(result: &Value) -> Result<Ipv4Addr> {
    let address = result["ips"][0]["address"]
        .as_str()
        .with_context(|| format!("no ips[0].address in {result}"))?;
    address
        .split('/')
        .next()
        .unwrap_or_default()
        .parse()
        .with_context(|| format!("bad address {address}"))
}

/// The IPv4 addresses (with prefix) on `ifname` inside `ns`.
pub fn addresses(ns: &Netns, ifname: &str) -> Result<Vec<String>> {
    let out = ns.ip(&["-4", "-o", "addr", "show", "dev", ifname])?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            words.find(|w| *w == "inet")?;
            words.next().map(str::to_string)
        })
        .collect())
}

/// The MTU of `ifname` in `ns`.
pub fn mtu(ns: &Netns, ifname: &str) -> Result<u32> {
    let out = ns.ip(&["-o", "link", "show", "dev", ifname])?;
    let mut words = out.split_whitespace();
    words
        .find(|w| *w == "mtu")
        .and(words.next())
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("no mtu in {out}"))
}

/// Whether `ifname` exists in `ns`.
pub fn has_link(ns: &Netns, ifname: &str) -> bool {
    ns.ip(&["link", "show", "dev", ifname]).is_ok()
}
