//! What the CNI specification fixes: versions, error codes, the error object and the
//! ADD result in each supported version's shape.

use std::net::Ipv4Addr;

use serde_json::{Value, json};

/// The newest version we speak; VERSION reports it, and errors use it when the
/// configuration's version is unknown.
pub const CURRENT_VERSION: &str = "1.1.0";

/// Every version we accept in a configuration's `cniVersion`.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.4.0", "1.0.0", "1.1.0"];

/// Whether `version` is one we speak.
pub fn is_supported(version: &str) -> bool {
    SUPPORTED_VERSIONS.contains(&version)
}

/// Whether `version` is at least 1.1.0 (GC and STATUS exist from there on).
pub fn at_least_1_1(version: &str) -> bool {
    parse(version).is_some_and(|v| v >= (1, 1, 0))
}

fn parse(version: &str) -> Option<(u32, u32, u32)> {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    let v = (parts.next()??, parts.next()??, parts.next()??);
    parts.next().is_none().then_some(v)
}

/// The specification's well-known error codes (0-99) and ours (100+).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Code {
    /// 1: incompatible CNI version.
    IncompatibleVersion = 1,
    /// 2: unsupported field in network configuration.
    UnsupportedField = 2,
    /// 3: container unknown or does not exist.
    UnknownContainer = 3,
    /// 4: invalid necessary environment variables.
    InvalidEnv = 4,
    /// 5: I/O failure.
    Io = 5,
    /// 6: failed to decode content.
    Decoding = 6,
    /// 7: invalid network config.
    InvalidConfig = 7,
    /// 11: try again later.
    TryAgainLater = 11,
    /// 50: the plugin is not available (STATUS).
    NotAvailable = 50,
    /// 100 (ours): the pod range has no free address.
    RangeExhausted = 100,
    /// 101 (ours): CHECK found the attachment not as ADD left it.
    CheckFailed = 101,
    /// 999: anything else.
    Internal = 999,
}

/// The error object written to stdout.
pub fn error_json(version: &str, code: Code, msg: &str, details: &str) -> Value {
    let mut v = json!({ "cniVersion": version, "code": code as u32, "msg": msg });
    if !details.is_empty() {
        v["details"] = Value::String(details.to_string());
    }
    v
}

/// VERSION's answer.
pub fn version_json() -> Value {
    json!({ "cniVersion": CURRENT_VERSION, "supportedVersions": SUPPORTED_VERSIONS })
}

/// One ADD result, version-independent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddResult {
    /// Host end name and MAC.
    pub host_ifname: String,
    /// Host end MAC.
    pub host_mac: String,
    /// Pod interface name.
    pub ifname: String,
    /// Pod interface MAC.
    pub pod_mac: String,
    /// The pod namespace path.
    pub sandbox: String,
    /// MTU of the pair.
    pub mtu: u32,
    /// The pod address (a /32).
    pub ip: Ipv4Addr,
    /// The gateway.
    pub gateway: Ipv4Addr,
}

impl AddResult {
    /// The result in the shape of `version` (one of [`SUPPORTED_VERSIONS`]): 0.4.0 tags
    /// each IP with `"version": "4"`; 1.1.0 adds the interfaces' `mtu`.
    pub fn render(&self, version: &str) -> Value {
        let mut host = json!({ "name": self.host_ifname, "mac": self.host_mac });
        let mut pod = json!({ "name": self.ifname, "mac": self.pod_mac, "sandbox": self.sandbox });
        if at_least_1_1(version) {
            host["mtu"] = json!(self.mtu);
            pod["mtu"] = json!(self.mtu);
        }
        let mut ip = json!({
            "address": format!("{}/32", self.ip),
            "gateway": self.gateway.to_string(),
            "interface": 1,
        });
        if version == "0.4.0" {
            ip["version"] = json!("4");
        }
        json!({
            "cniVersion": version,
            "interfaces": [host, pod],
            "ips": [ip],
            "routes": [{ "dst": "0.0.0.0/0", "gw": self.gateway.to_string() }],
            "dns": {},
        })
    }
}

/// The pod address recorded in a `prevResult` (the first IPv4 entry of `ips`).
pub fn prev_result_ip(prev: &Value) -> Option<Ipv4Addr> {
    prev.get("ips")?.as_array()?.iter().find_map(|ip| {
        let address = ip.get("address")?.as_str()?;
        address.split('/').next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result() -> AddResult {
        AddResult {
            host_ifname: "fk0".into(),
            host_mac: "aa:aa:aa:aa:aa:aa".into(),
            ifname: "eth0".into(),
            pod_mac: "bb:bb:bb:bb:bb:bb".into(),
            sandbox: "/run/netns/p".into(),
            mtu: 1400,
            ip: Ipv4Addr::new(10, 0, 0, 2),
            gateway: Ipv4Addr::new(10, 0, 0, 1),
        }
    }

    #[test]
    fn renders_each_version() {
        let v11 = result().render("1.1.0");
        assert_eq!(v11["cniVersion"], "1.1.0");
        assert_eq!(v11["interfaces"][1]["mtu"], 1400);
        assert_eq!(v11["ips"][0]["address"], "10.0.0.2/32");
        assert!(v11["ips"][0].get("version").is_none());
        let v10 = result().render("1.0.0");
        assert!(v10["interfaces"][1].get("mtu").is_none());
        let v04 = result().render("0.4.0");
        assert_eq!(v04["ips"][0]["version"], "4");
        assert_eq!(prev_result_ip(&v04), Some(Ipv4Addr::new(10, 0, 0, 2)));
    }

    #[test]
    fn version_rules() {
        assert!(is_supported("0.4.0") && is_supported("1.0.0") && is_supported("1.1.0"));
        assert!(!is_supported("0.3.1") && !is_supported("2.0.0"));
        assert!(at_least_1_1("1.1.0") && at_least_1_1("1.2.0"));
        assert!(!at_least_1_1("1.0.0") && !at_least_1_1("garbage"));
    }
}
