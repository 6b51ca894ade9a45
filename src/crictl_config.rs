//! Pod and container config files for `ferrokube crictl runp` and `crictl create`: JSON
//! or YAML in the CRI message shape real crictl accepts, with snake_case or camelCase
//! keys (`log_directory` or `logDirectory`). Enum fields (namespace modes, port protocol,
//! mount propagation) take the proto name (`"POD"`, `"TCP"`) or its number.
//!
//! k8s-cri's prost types derive serde, but every scalar field is required there and only
//! snake_case names are known; so the file is read into the mirror below, which covers
//! the fields people use, and mapped onto the prost types. Supported:
//!
//! * pod: `metadata` (name, namespace, uid, attempt), `hostname`, `log_directory`,
//!   `dns_config` (servers, searches, options), `port_mappings` (protocol,
//!   container_port, host_port, host_ip), `labels`, `annotations`, `linux.cgroup_parent`,
//!   `linux.sysctls`, `linux.security_context.namespace_options` (network, pid, ipc,
//!   target_id);
//! * container: `metadata` (name, attempt), `image` (image, annotations), `command`,
//!   `args`, `working_dir`, `envs` (key, value), `mounts` (container_path, host_path,
//!   readonly, selinux_relabel, propagation), `labels`, `annotations`, `log_path`,
//!   `stdin`, `stdin_once`, `tty`, `linux.resources` (cpu_period, cpu_quota, cpu_shares,
//!   memory_limit_in_bytes, oom_score_adj, cpuset_cpus, cpuset_mems,
//!   memory_swap_limit_in_bytes).
//!
//! Any other key, at any level, is an error naming it (rather than silently dropped).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use k8s_cri::v1 as cri;
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// Reads `path` as JSON (a `.json` file, or text starting with `{`) or else YAML.
fn load<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let json = path.extension().is_some_and(|e| e == "json") || text.trim_start().starts_with('{');
    if json {
        serde_json::from_str(&text)
            .map_err(|e| anyhow!("{}: invalid JSON config: {e}", path.display()))
    } else {
        serde_norway::from_str(&text)
            .map_err(|e| anyhow!("{}: invalid YAML config: {e}", path.display()))
    }
}

/// A pod sandbox config file as a [`cri::PodSandboxConfig`].
pub fn pod_config(path: &Path) -> Result<cri::PodSandboxConfig> {
    let pod: PodConfig = load(path)?;
    pod.into_cri()
        .with_context(|| format!("{}: bad pod config", path.display()))
}

/// A container config file as a [`cri::ContainerConfig`].
pub fn container_config(path: &Path) -> Result<cri::ContainerConfig> {
    let container: ContainerConfig = load(path)?;
    container
        .into_cri()
        .with_context(|| format!("{}: bad container config", path.display()))
}

/// An enum field: the proto name or its number.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum EnumValue {
    Number(i32),
    Name(String),
}

fn enum_value(
    value: Option<EnumValue>,
    field: &str,
    by_name: impl Fn(&str) -> Option<i32>,
) -> Result<i32> {
    match value {
        None => Ok(0),
        Some(EnumValue::Number(n)) => Ok(n),
        Some(EnumValue::Name(name)) => by_name(&name.to_ascii_uppercase())
            .with_context(|| format!("{field}: unknown value {name:?}")),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct PodConfig {
    metadata: Option<PodMetadata>,
    hostname: String,
    #[serde(alias = "logDirectory")]
    log_directory: String,
    #[serde(alias = "dnsConfig")]
    dns_config: Option<DnsConfig>,
    #[serde(alias = "portMappings")]
    port_mappings: Vec<PortMapping>,
    labels: HashMap<String, String>,
    annotations: HashMap<String, String>,
    linux: Option<LinuxPod>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct PodMetadata {
    name: String,
    uid: String,
    namespace: String,
    attempt: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct DnsConfig {
    servers: Vec<String>,
    searches: Vec<String>,
    options: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct PortMapping {
    protocol: Option<EnumValue>,
    #[serde(alias = "containerPort")]
    container_port: i32,
    #[serde(alias = "hostPort")]
    host_port: i32,
    #[serde(alias = "hostIp")]
    host_ip: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct LinuxPod {
    #[serde(alias = "cgroupParent")]
    cgroup_parent: String,
    sysctls: HashMap<String, String>,
    #[serde(alias = "securityContext")]
    security_context: Option<SandboxSecurityContext>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct SandboxSecurityContext {
    #[serde(alias = "namespaceOptions")]
    namespace_options: Option<NamespaceOptions>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct NamespaceOptions {
    network: Option<EnumValue>,
    pid: Option<EnumValue>,
    ipc: Option<EnumValue>,
    #[serde(alias = "targetId")]
    target_id: String,
}

fn namespace_mode(value: Option<EnumValue>, field: &str) -> Result<i32> {
    enum_value(value, field, |n| {
        cri::NamespaceMode::from_str_name(n).map(|m| m as i32)
    })
}

impl PodConfig {
    fn into_cri(self) -> Result<cri::PodSandboxConfig> {
        let metadata = self.metadata.context("metadata is required")?;
        if metadata.name.is_empty() {
            bail!("metadata.name is required");
        }
        let port_mappings = self
            .port_mappings
            .into_iter()
            .map(|p| {
                Ok(cri::PortMapping {
                    protocol: enum_value(p.protocol, "port_mappings.protocol", |n| {
                        cri::Protocol::from_str_name(n).map(|p| p as i32)
                    })?,
                    container_port: p.container_port,
                    host_port: p.host_port,
                    host_ip: p.host_ip,
                })
            })
            .collect::<Result<_>>()?;
        let linux = self
            .linux
            .map(|l| -> Result<cri::LinuxPodSandboxConfig> {
                let security_context = l
                    .security_context
                    .map(|s| -> Result<cri::LinuxSandboxSecurityContext> {
                        let namespace_options = s
                            .namespace_options
                            .map(|n| -> Result<cri::NamespaceOption> {
                                Ok(cri::NamespaceOption {
                                    network: namespace_mode(
                                        n.network,
                                        "namespace_options.network",
                                    )?,
                                    pid: namespace_mode(n.pid, "namespace_options.pid")?,
                                    ipc: namespace_mode(n.ipc, "namespace_options.ipc")?,
                                    target_id: n.target_id,
                                    ..Default::default()
                                })
                            })
                            .transpose()?;
                        Ok(cri::LinuxSandboxSecurityContext {
                            namespace_options,
                            ..Default::default()
                        })
                    })
                    .transpose()?;
                Ok(cri::LinuxPodSandboxConfig {
                    cgroup_parent: l.cgroup_parent,
                    sysctls: l.sysctls,
                    security_context,
                    ..Default::default()
                })
            })
            .transpose()?;
        Ok(cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: metadata.name,
                uid: metadata.uid,
                namespace: metadata.namespace,
                attempt: metadata.attempt,
            }),
            hostname: self.hostname,
            log_directory: self.log_directory,
            dns_config: self.dns_config.map(|d| cri::DnsConfig {
                servers: d.servers,
                searches: d.searches,
                options: d.options,
            }),
            port_mappings,
            labels: self.labels,
            annotations: self.annotations,
            linux,
            ..Default::default()
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ContainerConfig {
    metadata: Option<ContainerMetadata>,
    image: Option<ImageSpec>,
    command: Vec<String>,
    args: Vec<String>,
    #[serde(alias = "workingDir")]
    working_dir: String,
    envs: Vec<KeyValue>,
    mounts: Vec<Mount>,
    labels: HashMap<String, String>,
    annotations: HashMap<String, String>,
    #[serde(alias = "logPath")]
    log_path: String,
    stdin: bool,
    #[serde(alias = "stdinOnce")]
    stdin_once: bool,
    tty: bool,
    linux: Option<LinuxContainer>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ContainerMetadata {
    name: String,
    attempt: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ImageSpec {
    image: String,
    annotations: HashMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct KeyValue {
    key: String,
    value: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Mount {
    #[serde(alias = "containerPath")]
    container_path: String,
    #[serde(alias = "hostPath")]
    host_path: String,
    readonly: bool,
    #[serde(alias = "selinuxRelabel")]
    selinux_relabel: bool,
    propagation: Option<EnumValue>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct LinuxContainer {
    resources: Option<Resources>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Resources {
    #[serde(alias = "cpuPeriod")]
    cpu_period: i64,
    #[serde(alias = "cpuQuota")]
    cpu_quota: i64,
    #[serde(alias = "cpuShares")]
    cpu_shares: i64,
    #[serde(alias = "memoryLimitInBytes")]
    memory_limit_in_bytes: i64,
    #[serde(alias = "oomScoreAdj")]
    oom_score_adj: i64,
    #[serde(alias = "cpusetCpus")]
    cpuset_cpus: String,
    #[serde(alias = "cpusetMems")]
    cpuset_mems: String,
    #[serde(alias = "memorySwapLimitInBytes")]
    memory_swap_limit_in_bytes: i64,
}

impl ContainerConfig {
    fn into_cri(self) -> Result<cri::ContainerConfig> {
        let metadata = self.metadata.context("metadata is required")?;
        if metadata.name.is_empty() {
            bail!("metadata.name is required");
        }
        let image = self.image.context("image is required")?;
        if image.image.is_empty() {
            bail!("image.image is required");
        }
        let mounts = self
            .mounts
            .into_iter()
            .map(|m| {
                Ok(cri::Mount {
                    container_path: m.container_path,
                    host_path: m.host_path,
                    readonly: m.readonly,
                    selinux_relabel: m.selinux_relabel,
                    propagation: enum_value(m.propagation, "mounts.propagation", |n| {
                        cri::MountPropagation::from_str_name(n).map(|p| p as i32)
                    })?,
                    ..Default::default()
                })
            })
            .collect::<Result<_>>()?;
        Ok(cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: metadata.name,
                attempt: metadata.attempt,
            }),
            image: Some(cri::ImageSpec {
                image: image.image,
                annotations: image.annotations,
                ..Default::default()
            }),
            command: self.command,
            args: self.args,
            working_dir: self.working_dir,
            envs: self
                .envs
                .into_iter()
                .map(|e| cri::KeyValue {
                    key: e.key,
                    value: e.value,
                })
                .collect(),
            mounts,
            labels: self.labels,
            annotations: self.annotations,
            log_path: self.log_path,
            stdin: self.stdin,
            stdin_once: self.stdin_once,
            tty: self.tty,
            linux: self.linux.map(|l| cri::LinuxContainerConfig {
                resources: l.resources.map(|r| cri::LinuxContainerResources {
                    cpu_period: r.cpu_period,
                    cpu_quota: r.cpu_quota,
                    cpu_shares: r.cpu_shares,
                    memory_limit_in_bytes: r.memory_limit_in_bytes,
                    oom_score_adj: r.oom_score_adj,
                    cpuset_cpus: r.cpuset_cpus,
                    cpuset_mems: r.cpuset_mems,
                    memory_swap_limit_in_bytes: r.memory_swap_limit_in_bytes,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> Result<(tempfile::TempDir, std::path::PathBuf)> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join(name);
        std::fs::write(&path, text)?;
        Ok((dir, path))
    }

    #[test]
    fn pod_config_in_json_with_snake_case_keys() -> Result<()> {
        let (_dir, path) = write(
            "pod.json",
            r#"{"metadata": {"name": "web", "namespace": "default", "uid": "u1"},
                "log_directory": "/tmp/x", "port_mappings": [{"protocol": "UDP", "container_port": 53}],
                "linux": {"cgroup_parent": "/p", "security_context": {"namespace_options": {"network": "NODE", "pid": 1}}}}"#,
        )?;
        let pod = pod_config(&path)?;
        let metadata = pod.metadata.context("metadata")?;
        assert_eq!(
            (metadata.name.as_str(), metadata.uid.as_str()),
            ("web", "u1")
        );
        assert_eq!(pod.log_directory, "/tmp/x");
        assert_eq!(pod.port_mappings[0].protocol, cri::Protocol::Udp as i32);
        let linux = pod.linux.context("linux")?;
        assert_eq!(linux.cgroup_parent, "/p");
        let ns = linux
            .security_context
            .and_then(|s| s.namespace_options)
            .context("namespace options")?;
        assert_eq!(ns.network, cri::NamespaceMode::Node as i32);
        assert_eq!(ns.pid, cri::NamespaceMode::Container as i32);
        Ok(())
    }

    #[test]
    fn container_config_in_yaml_with_camel_case_keys() -> Result<()> {
        let (_dir, path) = write(
            "c.yaml",
            "metadata: {name: main}\nimage: {image: busybox}\ncommand: [sleep, '3600']\nlogPath: main.log\nworkingDir: /w\nenvs: [{key: A, value: b}]\nlinux: {resources: {memoryLimitInBytes: 1048576}}\n",
        )?;
        let c = container_config(&path)?;
        assert_eq!(c.image.context("image")?.image, "busybox");
        assert_eq!(c.command, ["sleep", "3600"]);
        assert_eq!(
            (c.log_path.as_str(), c.working_dir.as_str()),
            ("main.log", "/w")
        );
        assert_eq!(c.envs[0].key, "A");
        let resources = c.linux.and_then(|l| l.resources).context("resources")?;
        assert_eq!(resources.memory_limit_in_bytes, 1_048_576);
        Ok(())
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() -> Result<()> {
        let error = |name: &str, text: &str| -> Result<String> {
            let (_dir, path) = write(name, text)?;
            match container_config(&path) {
                Ok(c) => bail!("accepted: {c:?}"),
                Err(e) => Ok(format!("{e:#}")),
            }
        };
        assert!(
            error(
                "a.yaml",
                "metadata: {name: x}\nimage: {image: b}\ncomand: [x]\n"
            )?
            .contains("unknown field `comand`")
        );
        assert!(error("b.json", "{\"metadata\": ")?.contains("invalid JSON config"));
        assert!(error("c.yaml", "image: {image: b}\n")?.contains("metadata is required"));
        assert!(
            error(
                "d.yaml",
                "metadata: {name: x}\nimage: {image: b}\nmounts: [{propagation: BOTH}]\n"
            )?
            .contains("mounts.propagation: unknown value \"BOTH\"")
        );
        let missing = container_config(Path::new("/nonexistent/c.yaml"))
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(missing.contains("reading /nonexistent/c.yaml"), "{missing}");
        Ok(())
    }
}
