//! The six CNI commands over [`NetOps`] and [`Ipam`], and the process entry point.

use std::collections::HashSet;
use std::io::{Read, Write};

use serde_json::Value;

use crate::config::{Command, ConfigError, Env, NetConf, peek_version};
use crate::ipam::{Ipam, IpamError};
use crate::netops::{NetError, NetOps, PodNetwork, Rtnetlink, host_ifname};
use crate::spec::{self, AddResult, Code};

/// Why a command failed; each variant has one CNI error code.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The environment or configuration is wrong (codes 1, 2, 4, 6, 7).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// IPAM failed (100 when exhausted, 11 when its lock is busy, 5 on I/O).
    #[error(transparent)]
    Ipam(#[from] IpamError),
    /// The kernel refused or the namespace is unusable (999).
    #[error(transparent)]
    Net(#[from] NetError),
    /// CHECK: no allocation for this attachment (3).
    #[error("unknown container: no attachment for container {container_id} interface {ifname}")]
    UnknownContainer {
        /// `CNI_CONTAINERID`.
        container_id: String,
        /// `CNI_IFNAME`.
        ifname: String,
    },
    /// CHECK: the attachment differs from what ADD set up (101).
    #[error("check failed: {0}")]
    CheckFailed(String),
    /// STATUS: the plugin cannot serve ADD now (50).
    #[error("not available: {0}")]
    NotAvailable(String),
    /// ADD: the pod's namespace does not exist (999).
    #[error("network namespace {0} does not exist")]
    NoNetns(String),
}

impl PluginError {
    /// The spec error code.
    pub fn code(&self) -> Code {
        match self {
            PluginError::Config(ConfigError::InvalidEnv(_)) => Code::InvalidEnv,
            PluginError::Config(ConfigError::Decoding(_)) => Code::Decoding,
            PluginError::Config(ConfigError::IncompatibleVersion { .. }) => {
                Code::IncompatibleVersion
            }
            PluginError::Config(ConfigError::UnsupportedField { .. }) => Code::UnsupportedField,
            PluginError::Config(ConfigError::Invalid(_)) => Code::InvalidConfig,
            PluginError::Ipam(IpamError::Exhausted { .. }) => Code::RangeExhausted,
            PluginError::Ipam(IpamError::Busy { .. }) => Code::TryAgainLater,
            PluginError::Ipam(IpamError::Io { .. }) => Code::Io,
            PluginError::Net(_) | PluginError::NoNetns(_) => Code::Internal,
            PluginError::UnknownContainer { .. } => Code::UnknownContainer,
            PluginError::CheckFailed(_) => Code::CheckFailed,
            PluginError::NotAvailable(_) => Code::NotAvailable,
        }
    }
}

/// What the process prints and how it exits.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// JSON for stdout (`None`: print nothing).
    pub stdout: Option<Value>,
    /// The exit status (0 on success, 1 on an error object).
    pub exit_code: i32,
}

fn ipam_of(conf: &NetConf) -> Ipam {
    Ipam::new(&conf.data_dir, conf.pod_cidr, conf.gateway).with_lock_timeout(conf.lock_timeout)
}

/// Runs one invocation: `var` reads `CNI_*` variables, `stdin` is the configuration.
pub fn run(var: impl Fn(&str) -> Option<String>, stdin: &[u8], ops: &dyn NetOps) -> Outcome {
    let version = peek_version(stdin)
        .filter(|v| spec::is_supported(v))
        .unwrap_or_else(|| spec::CURRENT_VERSION.to_string());
    match dispatch(var, stdin, ops) {
        Ok(stdout) => Outcome {
            stdout,
            exit_code: 0,
        },
        Err(e) => {
            tracing::warn!(code = e.code() as u32, "{e}");
            Outcome {
                stdout: Some(spec::error_json(&version, e.code(), &e.to_string(), "")),
                exit_code: 1,
            }
        }
    }
}

fn dispatch(
    var: impl Fn(&str) -> Option<String>,
    stdin: &[u8],
    ops: &dyn NetOps,
) -> Result<Option<Value>, PluginError> {
    let env = Env::from_vars(var)?;
    if env.command == Command::Version {
        return Ok(Some(spec::version_json()));
    }
    let conf = NetConf::parse(stdin)?;
    match env.command {
        Command::Add => add(&env, &conf, ops).map(Some),
        Command::Del => del(&env, &conf, ops).map(|()| None),
        Command::Check => check(&env, &conf, ops).map(|()| None),
        Command::Gc => gc(&conf, ops).map(|()| None),
        Command::Status => status(&conf).map(|()| None),
        Command::Version => Ok(Some(spec::version_json())),
    }
}

fn pod_network(env: &Env, conf: &NetConf, ip: std::net::Ipv4Addr) -> PodNetwork {
    PodNetwork {
        netns: env.netns.clone().unwrap_or_default(),
        ifname: env.ifname.clone(),
        host_ifname: host_ifname(&env.container_id, &env.ifname),
        ip,
        gateway: conf.gateway,
        mtu: conf.mtu,
    }
}

fn add(env: &Env, conf: &NetConf, ops: &dyn NetOps) -> Result<Value, PluginError> {
    let netns = env.netns.clone().unwrap_or_default();
    if !ops.netns_exists(&netns) {
        return Err(PluginError::NoNetns(netns.display().to_string()));
    }
    let ipam = ipam_of(conf);
    // A repeated ADD (no DEL between) gets the address it holds; a failure must then not
    // release it from under the running pod.
    let held_before = ipam.find(&env.container_id, &env.ifname)?.is_some();
    let ip = ipam.allocate(&env.container_id, &env.ifname)?;
    let pod = pod_network(env, conf, ip);
    match ops.setup_pod(&pod) {
        Ok(links) => {
            tracing::info!(container = %env.container_id, %ip, host = %pod.host_ifname, "added");
            Ok(AddResult {
                host_ifname: pod.host_ifname,
                host_mac: links.host_mac,
                ifname: pod.ifname,
                pod_mac: links.pod_mac,
                sandbox: netns.display().to_string(),
                mtu: conf.mtu,
                ip,
                gateway: conf.gateway,
            }
            .render(&conf.cni_version))
        }
        Err(e) => {
            // Leave nothing behind: a failed ADD is followed by DEL anyway, but a runtime
            // may not send it.
            if !matches!(e, NetError::Exists { .. })
                && let Err(undo) = ops.teardown_pod(Some(&netns), &pod.ifname, &pod.host_ifname)
            {
                tracing::warn!("undoing a failed ADD: {undo}");
            }
            if !held_before && let Err(undo) = ipam.release(&env.container_id, &env.ifname) {
                tracing::warn!("releasing after a failed ADD: {undo}");
            }
            Err(e.into())
        }
    }
}

fn del(env: &Env, conf: &NetConf, ops: &dyn NetOps) -> Result<(), PluginError> {
    let host = host_ifname(&env.container_id, &env.ifname);
    ops.teardown_pod(env.netns.as_deref(), &env.ifname, &host)?;
    let released = ipam_of(conf).release(&env.container_id, &env.ifname)?;
    tracing::info!(container = %env.container_id, ?released, "deleted");
    Ok(())
}

fn check(env: &Env, conf: &NetConf, ops: &dyn NetOps) -> Result<(), PluginError> {
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| ConfigError::Invalid("CHECK needs prevResult (the result of ADD)".into()))?;
    let unknown = || PluginError::UnknownContainer {
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
    };
    let ip = ipam_of(conf)
        .find(&env.container_id, &env.ifname)?
        .ok_or_else(unknown)?;
    match spec::prev_result_ip(prev) {
        Some(prev_ip) if prev_ip == ip => {}
        other => {
            return Err(PluginError::CheckFailed(format!(
                "prevResult has address {other:?}, IPAM holds {ip}"
            )));
        }
    }
    let netns = env.netns.clone().unwrap_or_default();
    if !ops.netns_exists(&netns) {
        return Err(unknown());
    }
    let pod = pod_network(env, conf, ip);
    let state = ops.inspect_pod(&pod)?;
    let mut missing = Vec::new();
    if !state.pod_link {
        missing.push(format!("interface {} in {}", pod.ifname, netns.display()));
    } else {
        if !state.pod_address {
            missing.push(format!("address {ip}/32 on {}", pod.ifname));
        }
        if !state.pod_default_route {
            missing.push(format!("default route via {}", pod.gateway));
        }
    }
    if !state.host_link {
        missing.push(format!("host interface {}", pod.host_ifname));
    } else if !state.host_route {
        missing.push(format!("host route {ip}/32 dev {}", pod.host_ifname));
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(PluginError::CheckFailed(format!(
            "missing {}",
            missing.join(", ")
        )))
    }
}

fn gc(conf: &NetConf, ops: &dyn NetOps) -> Result<(), PluginError> {
    if !spec::at_least_1_1(&conf.cni_version) {
        return Err(ConfigError::IncompatibleVersion {
            version: conf.cni_version.clone(),
        }
        .into());
    }
    let valid: HashSet<(String, String)> = conf
        .valid_attachments
        .as_ref()
        .ok_or_else(|| ConfigError::Invalid("GC needs cni.dev/valid-attachments".into()))?
        .iter()
        .map(|a| (a.container_id.clone(), a.ifname.clone()))
        .collect();
    for leaked in ipam_of(conf).gc(&valid)? {
        tracing::info!(ip = %leaked.ip, container = %leaked.container_id, "gc released");
        // The pod namespace is usually gone with its half of the pair; remove the host half
        // if it is still there.
        let host = host_ifname(&leaked.container_id, &leaked.ifname);
        if let Err(e) = ops.teardown_pod(None, &leaked.ifname, &host) {
            tracing::warn!("gc: removing {host}: {e}");
        }
    }
    Ok(())
}

fn status(conf: &NetConf) -> Result<(), PluginError> {
    if !spec::at_least_1_1(&conf.cni_version) {
        return Err(ConfigError::IncompatibleVersion {
            version: conf.cni_version.clone(),
        }
        .into());
    }
    let free = ipam_of(conf).free()?;
    if free == 0 {
        return Err(PluginError::NotAvailable(format!(
            "range exhausted: no free address in {}",
            conf.pod_cidr
        )));
    }
    Ok(())
}

/// The plugin as a process: reads the real environment and stdin, prints the result or
/// error object, returns the exit status.
pub fn main() -> i32 {
    let mut stdin = Vec::new();
    // VERSION may come without stdin; an unreadable stdin is an empty configuration,
    // which the commands that need one reject as a decoding failure.
    if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        tracing::warn!("reading stdin: {e}");
    }
    let outcome = run(|k| std::env::var(k).ok(), &stdin, &Rtnetlink);
    if let Some(json) = outcome.stdout {
        let mut out = std::io::stdout().lock();
        if writeln!(out, "{json}").and_then(|()| out.flush()).is_err() {
            return 1;
        }
    }
    outcome.exit_code
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netops::{PodLinks, PodState};
    use std::collections::HashMap;
    use std::path::Path;
    use std::sync::Mutex;

    /// Kernel stand-in: which pods are "set up", and whether setup should fail.
    #[derive(Debug, Default)]
    struct FakeNet {
        pods: Mutex<HashMap<String, PodNetwork>>,
        fail_setup: bool,
        teardowns: Mutex<Vec<String>>,
    }

    impl NetOps for FakeNet {
        fn setup_pod(&self, pod: &PodNetwork) -> Result<PodLinks, NetError> {
            if self.fail_setup {
                return Err(NetError::Netlink {
                    op: "create veth pair".into(),
                    reason: "injected".into(),
                });
            }
            self.pods
                .lock()
                .unwrap()
                .insert(pod.host_ifname.clone(), pod.clone());
            Ok(PodLinks {
                host_mac: "aa:aa:aa:aa:aa:aa".into(),
                pod_mac: "bb:bb:bb:bb:bb:bb".into(),
            })
        }
        fn teardown_pod(&self, _: Option<&Path>, _: &str, host: &str) -> Result<(), NetError> {
            self.teardowns.lock().unwrap().push(host.to_string());
            self.pods.lock().unwrap().remove(host);
            Ok(())
        }
        fn inspect_pod(&self, pod: &PodNetwork) -> Result<PodState, NetError> {
            let present = self.pods.lock().unwrap().get(&pod.host_ifname) == Some(pod);
            Ok(PodState {
                pod_link: present,
                pod_address: present,
                pod_default_route: present,
                host_link: present,
                host_route: present,
            })
        }
        fn netns_exists(&self, path: &Path) -> bool {
            path != Path::new("/gone")
        }
    }

    struct Case {
        dir: tempfile::TempDir,
    }

    impl Case {
        fn new() -> Self {
            Case {
                dir: tempfile::tempdir().unwrap(),
            }
        }
        fn conf(&self, extra: Value) -> Vec<u8> {
            let mut conf = serde_json::json!({
                "cniVersion": "1.1.0", "name": "t", "type": "ferrokube-cni",
                "podCIDR": "10.9.0.0/29", "dataDir": self.dir.path(),
            });
            for (k, v) in extra.as_object().unwrap() {
                conf[k] = v.clone();
            }
            conf.to_string().into_bytes()
        }
        fn run(&self, ops: &FakeNet, command: &str, id: &str, netns: &str, conf: &[u8]) -> Outcome {
            let env: HashMap<&str, String> = [
                ("CNI_COMMAND", command.to_string()),
                ("CNI_CONTAINERID", id.to_string()),
                ("CNI_NETNS", netns.to_string()),
                ("CNI_IFNAME", "eth0".to_string()),
            ]
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .collect();
            run(|k| env.get(k).cloned(), conf, ops)
        }
    }

    fn code(outcome: &Outcome) -> u64 {
        assert_eq!(outcome.exit_code, 1, "{outcome:?}");
        outcome.stdout.as_ref().unwrap()["code"].as_u64().unwrap()
    }

    #[test]
    fn add_check_del_lifecycle() {
        let case = Case::new();
        let net = FakeNet::default();
        let conf = case.conf(serde_json::json!({}));
        let added = case.run(&net, "ADD", "c1", "/run/netns/p", &conf);
        assert_eq!(added.exit_code, 0, "{added:?}");
        let result = added.stdout.unwrap();
        assert_eq!(result["ips"][0]["address"], "10.9.0.2/32");
        let check_conf = case.conf(serde_json::json!({ "prevResult": result }));
        assert_eq!(
            case.run(&net, "CHECK", "c1", "/run/netns/p", &check_conf)
                .exit_code,
            0
        );
        // The kernel loses the pod: CHECK says so.
        net.pods.lock().unwrap().clear();
        assert_eq!(
            code(&case.run(&net, "CHECK", "c1", "/run/netns/p", &check_conf)),
            101
        );
        assert_eq!(
            code(&case.run(&net, "CHECK", "c2", "/run/netns/p", &check_conf)),
            3
        );
        for _ in 0..2 {
            let del = case.run(&net, "DEL", "c1", "", &conf);
            assert_eq!(
                del,
                Outcome {
                    stdout: None,
                    exit_code: 0
                }
            );
        }
        assert_eq!(
            code(&case.run(&net, "CHECK", "c1", "/run/netns/p", &check_conf)),
            3
        );
    }

    #[test]
    fn repeated_add_keeps_the_running_pods_address() {
        let case = Case::new();
        let conf = case.conf(serde_json::json!({}));
        let net = FakeNet::default();
        assert_eq!(
            case.run(&net, "ADD", "c1", "/run/netns/p", &conf).exit_code,
            0
        );
        // The second ADD fails in the kernel (the fake refuses setup, as EEXIST would).
        let failing = FakeNet {
            fail_setup: true,
            ..FakeNet::default()
        };
        assert_eq!(
            code(&case.run(&failing, "ADD", "c1", "/run/netns/p", &conf)),
            999
        );
        let ipam = Ipam::new(
            case.dir.path(),
            "10.9.0.0/29".parse().unwrap(),
            [10, 9, 0, 1].into(),
        );
        assert_eq!(ipam.find("c1", "eth0").unwrap(), Some([10, 9, 0, 2].into()));
    }

    #[test]
    fn failed_setup_releases_the_address_and_cleans_up() {
        let case = Case::new();
        let net = FakeNet {
            fail_setup: true,
            ..FakeNet::default()
        };
        let conf = case.conf(serde_json::json!({}));
        assert_eq!(
            code(&case.run(&net, "ADD", "c1", "/run/netns/p", &conf)),
            999
        );
        assert_eq!(net.teardowns.lock().unwrap().len(), 1);
        let ipam = Ipam::new(
            case.dir.path(),
            "10.9.0.0/29".parse().unwrap(),
            [10, 9, 0, 1].into(),
        );
        assert!(ipam.allocations().unwrap().is_empty());
        // A missing namespace fails before anything is allocated.
        let net = FakeNet::default();
        assert_eq!(code(&case.run(&net, "ADD", "c1", "/gone", &conf)), 999);
        assert!(ipam.allocations().unwrap().is_empty());
    }

    #[test]
    fn gc_status_and_version() {
        let case = Case::new();
        let net = FakeNet::default();
        let conf = case.conf(serde_json::json!({}));
        for i in 0..5 {
            assert_eq!(
                case.run(&net, "ADD", &format!("c{i}"), "/run/netns/p", &conf)
                    .exit_code,
                0
            );
        }
        assert_eq!(
            code(&case.run(&net, "ADD", "c9", "/run/netns/p", &conf)),
            100
        );
        assert_eq!(code(&case.run(&net, "STATUS", "", "", &conf)), 50);
        let gc = case.conf(serde_json::json!({
            "cni.dev/valid-attachments": [{ "containerID": "c0", "ifname": "eth0" }]
        }));
        assert_eq!(case.run(&net, "GC", "", "", &gc).exit_code, 0);
        assert_eq!(net.teardowns.lock().unwrap().len(), 4);
        assert_eq!(case.run(&net, "STATUS", "", "", &conf).exit_code, 0);
        let version = case.run(&net, "VERSION", "", "", b"");
        assert_eq!(version.stdout.unwrap()["supportedVersions"][2], "1.1.0");
        // Errors carry the configuration's version when it is one we speak.
        let old = case.conf(serde_json::json!({ "cniVersion": "0.4.0" }));
        let out = case.run(&net, "GC", "", "", &old);
        assert_eq!(code(&out), 1);
        assert_eq!(out.stdout.unwrap()["cniVersion"], "0.4.0");
    }
}
