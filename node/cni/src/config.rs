//! The plugin's inputs: `CNI_*` environment variables and the network configuration on
//! stdin.
//!
//! Our configuration keys (beside the spec's `cniVersion`, `name`, `type`, `prevResult`,
//! `cni.dev/valid-attachments`, `runtimeConfig`, `args`):
//! - `podCIDR` (required): the node's pod range, e.g. `10.244.1.0/24`;
//! - `gateway`: the address on every host-side veth (default: the range's first host);
//! - `mtu`: of both veth ends (default 1500, 68..=65535);
//! - `dataDir`: IPAM state (default `/var/lib/ferrokube/cni/networks/<name>`);
//! - `lockTimeoutMs`: how long to wait for the IPAM lock before "try again later"
//!   (default 30000).
//!
//! An `ipam` section naming a `type` is refused as an unsupported field: addresses come
//! from our own IPAM, never from a delegated plugin.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::cidr::Ipv4Cidr;

/// Errors in the environment or the configuration; each maps to one spec error code.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A required `CNI_*` variable is missing or malformed (code 4).
    #[error("{0}")]
    InvalidEnv(String),
    /// stdin is not a JSON configuration of the right shape (code 6).
    #[error("decoding the network configuration: {0}")]
    Decoding(String),
    /// The configuration's `cniVersion` is not one we support (code 1).
    #[error("incompatible CNI version {version:?} (supported: 0.4.0, 1.0.0, 1.1.0)")]
    IncompatibleVersion {
        /// The version asked for.
        version: String,
    },
    /// A field has a value we do not support (code 2).
    #[error("unsupported field {field}={value}: {why}")]
    UnsupportedField {
        /// The key.
        field: String,
        /// Its value.
        value: String,
        /// Why it is refused.
        why: String,
    },
    /// The configuration is well-formed JSON but not a valid network configuration
    /// (code 7).
    #[error("invalid network configuration: {0}")]
    Invalid(String),
}

/// The CNI command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// ADD.
    Add,
    /// DEL.
    Del,
    /// CHECK.
    Check,
    /// VERSION.
    Version,
    /// GC.
    Gc,
    /// STATUS.
    Status,
}

/// The `CNI_*` environment of one invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID` (required by ADD, DEL, CHECK).
    pub container_id: String,
    /// `CNI_NETNS` (required by ADD and CHECK; optional for DEL).
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME` (required by ADD, DEL, CHECK).
    pub ifname: String,
}

fn valid_id(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
}

impl Env {
    /// Reads the environment through `var` (e.g. `|k| std::env::var(k).ok()`).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Env, ConfigError> {
        let command = match var("CNI_COMMAND").as_deref() {
            Some("ADD") => Command::Add,
            Some("DEL") => Command::Del,
            Some("CHECK") => Command::Check,
            Some("VERSION") => Command::Version,
            Some("GC") => Command::Gc,
            Some("STATUS") => Command::Status,
            Some(other) => {
                return Err(ConfigError::InvalidEnv(format!(
                    "unknown CNI_COMMAND {other:?}"
                )));
            }
            None => return Err(ConfigError::InvalidEnv("CNI_COMMAND is not set".into())),
        };
        let needs_attachment = matches!(command, Command::Add | Command::Del | Command::Check);
        let needs_netns = matches!(command, Command::Add | Command::Check);
        let nonempty = |k: &str| var(k).filter(|v| !v.is_empty());
        let container_id = nonempty("CNI_CONTAINERID").unwrap_or_default();
        let ifname = nonempty("CNI_IFNAME").unwrap_or_default();
        let netns = nonempty("CNI_NETNS").map(PathBuf::from);
        if needs_attachment {
            if container_id.is_empty() {
                return Err(ConfigError::InvalidEnv("CNI_CONTAINERID is not set".into()));
            }
            if !valid_id(&container_id) {
                return Err(ConfigError::InvalidEnv(format!(
                    "CNI_CONTAINERID {container_id:?} has invalid characters"
                )));
            }
            if ifname.is_empty() {
                return Err(ConfigError::InvalidEnv("CNI_IFNAME is not set".into()));
            }
            if !valid_ifname(&ifname) {
                return Err(ConfigError::InvalidEnv(format!(
                    "CNI_IFNAME {ifname:?} is not a valid interface name"
                )));
            }
        }
        if needs_netns && netns.is_none() {
            return Err(ConfigError::InvalidEnv("CNI_NETNS is not set".into()));
        }
        Ok(Env {
            command,
            container_id,
            netns,
            ifname,
        })
    }
}

/// A `(containerID, ifname)` pair from `cni.dev/valid-attachments`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Attachment {
    /// The container ID.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// The interface name.
    pub ifname: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    name: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    mtu: Option<u32>,
    #[serde(rename = "podCIDR")]
    pod_cidr: Option<String>,
    gateway: Option<String>,
    data_dir: Option<PathBuf>,
    lock_timeout_ms: Option<u64>,
    ipam: Option<Value>,
    prev_result: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<Attachment>>,
}

/// A validated network configuration.
#[derive(Debug, Clone)]
pub struct NetConf {
    /// `cniVersion`, one of the supported versions.
    pub cni_version: String,
    /// The network name.
    pub name: String,
    /// The node's pod range.
    pub pod_cidr: Ipv4Cidr,
    /// The gateway address.
    pub gateway: Ipv4Addr,
    /// MTU of the veth pair.
    pub mtu: u32,
    /// IPAM state directory.
    pub data_dir: PathBuf,
    /// IPAM lock timeout.
    pub lock_timeout: Duration,
    /// `prevResult` (CHECK, DEL).
    pub prev_result: Option<Value>,
    /// `cni.dev/valid-attachments` (GC).
    pub valid_attachments: Option<Vec<Attachment>>,
}

/// The `cniVersion` of a configuration, for error objects; decodes nothing else.
pub fn peek_version(stdin: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(stdin).ok()?;
    value.get("cniVersion")?.as_str().map(str::to_string)
}

impl NetConf {
    /// Decodes (code 6), checks the version (code 1), then validates (codes 2 and 7).
    pub fn parse(stdin: &[u8]) -> Result<NetConf, ConfigError> {
        let value: Value =
            serde_json::from_slice(stdin).map_err(|e| ConfigError::Decoding(e.to_string()))?;
        if !value.is_object() {
            return Err(ConfigError::Decoding(
                "the configuration is not a JSON object".into(),
            ));
        }
        let version = match value.get("cniVersion") {
            None => String::new(),
            Some(Value::String(v)) => v.clone(),
            Some(other) => {
                return Err(ConfigError::Decoding(format!(
                    "cniVersion {other} is not a string"
                )));
            }
        };
        if !crate::spec::is_supported(&version) {
            return Err(ConfigError::IncompatibleVersion { version });
        }
        let raw: Raw =
            serde_json::from_value(value).map_err(|e| ConfigError::Decoding(e.to_string()))?;
        let name = raw
            .name
            .filter(|n| !n.is_empty())
            .ok_or_else(|| ConfigError::Invalid("\"name\" is missing".into()))?;
        if !valid_id(&name) {
            return Err(ConfigError::Invalid(format!(
                "network name {name:?} has invalid characters"
            )));
        }
        if raw.kind.as_deref().is_none_or(str::is_empty) {
            return Err(ConfigError::Invalid("\"type\" is missing".into()));
        }
        if let Some(kind) = raw
            .ipam
            .as_ref()
            .and_then(|ipam| ipam.get("type"))
            .and_then(Value::as_str)
        {
            return Err(ConfigError::UnsupportedField {
                field: "ipam.type".into(),
                value: kind.to_string(),
                why: "ferrokube-cni allocates from podCIDR itself and delegates to no IPAM plugin"
                    .into(),
            });
        }
        let cidr_text = raw
            .pod_cidr
            .ok_or_else(|| ConfigError::Invalid("\"podCIDR\" is missing".into()))?;
        let pod_cidr: Ipv4Cidr = cidr_text
            .parse()
            .map_err(|e| ConfigError::Invalid(format!("podCIDR: {e}")))?;
        if pod_cidr.prefix() > 30 {
            return Err(ConfigError::Invalid(format!(
                "podCIDR {pod_cidr} is too small: it needs a gateway and at least one pod address"
            )));
        }
        let gateway = match raw.gateway {
            Some(text) => {
                let gw: Ipv4Addr = text.parse().map_err(|_| {
                    ConfigError::Invalid(format!("gateway {text:?} is not an IPv4 address"))
                })?;
                if !pod_cidr.contains(gw) || gw == pod_cidr.network() || gw == pod_cidr.broadcast()
                {
                    return Err(ConfigError::Invalid(format!(
                        "gateway {gw} is not a host address of {pod_cidr}"
                    )));
                }
                gw
            }
            None => pod_cidr
                .first_host()
                .ok_or_else(|| ConfigError::Invalid(format!("podCIDR {pod_cidr} has no hosts")))?,
        };
        let mtu = raw.mtu.unwrap_or(1500);
        if !(68..=65535).contains(&mtu) {
            return Err(ConfigError::Invalid(format!(
                "mtu {mtu} is outside 68..=65535"
            )));
        }
        let data_dir = raw
            .data_dir
            .unwrap_or_else(|| PathBuf::from("/var/lib/ferrokube/cni/networks").join(&name));
        Ok(NetConf {
            cni_version: version,
            name,
            pod_cidr,
            gateway,
            mtu,
            data_dir,
            lock_timeout: Duration::from_millis(raw.lock_timeout_ms.unwrap_or(30_000)),
            prev_result: raw.prev_result,
            valid_attachments: raw.valid_attachments,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<Env, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::from_vars(|k| map.get(k).cloned())
    }

    #[test]
    fn env_rules() {
        assert!(matches!(env(&[]), Err(ConfigError::InvalidEnv(_))));
        assert!(matches!(
            env(&[("CNI_COMMAND", "FOO")]),
            Err(ConfigError::InvalidEnv(_))
        ));
        assert_eq!(
            env(&[("CNI_COMMAND", "VERSION")]).unwrap().command,
            Command::Version
        );
        let add = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
        ];
        assert!(matches!(env(&add), Err(ConfigError::InvalidEnv(m)) if m.contains("CNI_NETNS")));
        let mut del = add.to_vec();
        del[0] = ("CNI_COMMAND", "DEL");
        assert!(env(&del).is_ok(), "DEL needs no netns");
        for (k, v) in [
            ("CNI_CONTAINERID", "-bad"),
            ("CNI_CONTAINERID", "a b"),
            ("CNI_IFNAME", "a/b"),
            ("CNI_IFNAME", "0123456789abcdef"),
        ] {
            let mut vars = add.to_vec();
            vars.push(("CNI_NETNS", "/run/netns/x"));
            vars.retain(|(key, _)| *key != k);
            vars.push((k, v));
            assert!(
                matches!(env(&vars), Err(ConfigError::InvalidEnv(_))),
                "{k}={v}"
            );
        }
    }

    #[test]
    fn config_rules() {
        let ok = br#"{"cniVersion":"1.1.0","name":"n","type":"ferrokube-cni","podCIDR":"10.1.0.0/24","mtu":1400}"#;
        let conf = NetConf::parse(ok).unwrap();
        assert_eq!(conf.gateway, Ipv4Addr::new(10, 1, 0, 1));
        assert_eq!(conf.mtu, 1400);
        assert!(matches!(
            NetConf::parse(b"{nope"),
            Err(ConfigError::Decoding(_))
        ));
        assert!(matches!(
            NetConf::parse(
                br#"{"cniVersion":"0.3.1","name":"n","type":"t","podCIDR":"10.1.0.0/24"}"#
            ),
            Err(ConfigError::IncompatibleVersion { .. })
        ));
        assert!(matches!(
            NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","type":"t","podCIDR":"10.1.0.0/24","ipam":{"type":"host-local"}}"#),
            Err(ConfigError::UnsupportedField { .. })
        ));
        for bad in [
            r#"{"cniVersion":"1.0.0","type":"t","podCIDR":"10.1.0.0/24"}"#,
            r#"{"cniVersion":"1.0.0","name":"n","type":"t","podCIDR":"10.1.0.0/31"}"#,
            r#"{"cniVersion":"1.0.0","name":"n","type":"t","podCIDR":"10.1.0.7/24"}"#,
            r#"{"cniVersion":"1.0.0","name":"n","type":"t"}"#,
            r#"{"cniVersion":"1.0.0","name":"n","type":"t","podCIDR":"10.1.0.0/24","mtu":10}"#,
            r#"{"cniVersion":"1.0.0","name":"n","type":"t","podCIDR":"10.1.0.0/24","gateway":"10.2.0.1"}"#,
        ] {
            assert!(
                matches!(NetConf::parse(bad.as_bytes()), Err(ConfigError::Invalid(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","type":"t","podCIDR":"10.1.0.0/24","mtu":"big"}"#),
            Err(ConfigError::Decoding(_))
        ));
    }
}
