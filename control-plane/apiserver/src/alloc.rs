//! Service address and port allocation. Every allocated ClusterIP and NodePort is a key
//! in the store (`/registry/serviceips/<ip>`, `/registry/servicenodeports/<port>`) created
//! in the same transaction as the Service that holds it and deleted with it, so two
//! Services can never hold the same IP or port, and a refused request holds nothing.

use std::net::Ipv4Addr;

use ferrokube_api::{ApiError, Cause};
use ferrokube_store::{Compare, Op, OpResponse, Store, Txn};
use serde_json::{Value, json};

/// The Service IP range and NodePort range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ranges {
    /// Network address of the Service CIDR.
    pub network: Ipv4Addr,
    /// Prefix length of the Service CIDR.
    pub prefix: u8,
    /// First NodePort.
    pub node_port_min: u16,
    /// Last NodePort.
    pub node_port_max: u16,
}

impl Default for Ranges {
    fn default() -> Self {
        Ranges {
            network: Ipv4Addr::new(10, 96, 0, 0),
            prefix: 12,
            node_port_min: 30000,
            node_port_max: 32767,
        }
    }
}

/// Why a range flag was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// Not `A.B.C.D/N` with N in 8..=30.
    #[error("invalid service CIDR {0:?}: expected an IPv4 CIDR with a prefix between /8 and /30")]
    Cidr(String),
    /// Not `MIN-MAX`.
    #[error("invalid node port range {0:?}: expected MIN-MAX")]
    Ports(String),
}

impl Ranges {
    /// Parses `--service-cidr` and `--node-port-range`.
    pub fn parse(cidr: &str, ports: &str) -> Result<Self, RangeError> {
        let bad = || RangeError::Cidr(cidr.to_string());
        let (ip, prefix) = cidr.split_once('/').ok_or_else(bad)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if !(8..=30).contains(&prefix) {
            return Err(bad());
        }
        let mask = u32::MAX << (32 - prefix);
        let network = Ipv4Addr::from(u32::from(ip) & mask);
        let badp = || RangeError::Ports(ports.to_string());
        let (min, max) = ports.split_once('-').ok_or_else(badp)?;
        let (min, max): (u16, u16) = (
            min.trim().parse().map_err(|_| badp())?,
            max.trim().parse().map_err(|_| badp())?,
        );
        if min == 0 || min > max {
            return Err(badp());
        }
        Ok(Ranges {
            network,
            prefix,
            node_port_min: min,
            node_port_max: max,
        })
    }

    /// The first address of the range (the `default/kubernetes` Service's).
    pub fn first_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// The CIDR as text.
    pub fn cidr(&self) -> String {
        format!("{}/{}", self.network, self.prefix)
    }

    fn size(&self) -> u32 {
        1u32 << (32 - self.prefix)
    }

    fn contains(&self, ip: Ipv4Addr) -> bool {
        let offset = u32::from(ip).wrapping_sub(u32::from(self.network));
        // Neither the network nor the broadcast address.
        offset > 0 && offset < self.size() - 1 && u32::from(ip) >= u32::from(self.network)
    }
}

fn ip_key(ip: &str) -> String {
    format!("/registry/serviceips/{ip}")
}

fn port_key(port: i64) -> String {
    format!("/registry/servicenodeports/{port}")
}

fn invalid(name: &str, causes: Vec<Cause>) -> ApiError {
    ApiError::Invalid {
        group: String::new(),
        kind: "Service".into(),
        name: name.into(),
        causes,
    }
}

/// The keys a Service holds.
pub fn held_keys(service: &Value) -> Vec<String> {
    let mut keys = Vec::new();
    if let Some(ip) = service
        .pointer("/spec/clusterIP")
        .and_then(Value::as_str)
        .filter(|ip| !ip.is_empty() && *ip != "None")
    {
        keys.push(ip_key(ip));
    }
    for port in service
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(p) = port.get("nodePort").and_then(Value::as_i64) {
            keys.push(port_key(p));
        }
    }
    keys
}

/// Fills `spec.clusterIP(s)` and node ports of a Service about to be written, checking
/// requested values against the ranges. Returns the keys to create with it.
pub async fn assign(
    store: &dyn Store,
    ranges: &Ranges,
    service: &mut Value,
    old: Option<&Value>,
    name: &str,
) -> Result<Vec<String>, ApiError> {
    let mut new_keys = Vec::new();
    let kind = service
        .pointer("/spec/type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
        .to_string();
    if kind != "ExternalName" && old.is_none() {
        let requested = service
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let ip = match requested.as_str() {
            "None" => None,
            "" => Some(free_ip(store, ranges).await?),
            given => {
                let parsed: Option<Ipv4Addr> = given.parse().ok();
                if !parsed.is_some_and(|ip| ranges.contains(ip)) {
                    return Err(invalid(
                        name,
                        vec![Cause::invalid(
                            "spec.clusterIPs",
                            given,
                            format!(
                                "failed to allocate IP {given}: the provided IP ({given}) is not in the valid range. The range of valid IPs is {}",
                                ranges.cidr()
                            ),
                        )],
                    ));
                }
                Some(given.to_string())
            }
        };
        if let Some(ip) = ip {
            service["spec"]["clusterIP"] = json!(ip);
            service["spec"]["clusterIPs"] = json!([ip]);
            new_keys.push(ip_key(&ip));
        } else {
            service["spec"]["clusterIPs"] = json!(["None"]);
        }
    }
    let held: Vec<String> = old.map(held_keys).unwrap_or_default();
    if let Some(Value::Array(ports)) = service.pointer_mut("/spec/ports") {
        let mut taken_here = Vec::new();
        for (i, port) in ports.iter_mut().enumerate() {
            if !wants_node_ports_kind(&kind) {
                if let Some(p) = port.as_object_mut() {
                    p.remove("nodePort");
                }
                continue;
            }
            let node_port = match port.get("nodePort").and_then(Value::as_i64) {
                Some(p) => {
                    if p < i64::from(ranges.node_port_min) || p > i64::from(ranges.node_port_max) {
                        return Err(invalid(
                            name,
                            vec![Cause::invalid(
                                format!("spec.ports[{i}].nodePort"),
                                &p.to_string(),
                                format!(
                                    "provided port is not in the valid range. The range of valid ports is {}-{}",
                                    ranges.node_port_min, ranges.node_port_max
                                ),
                            )],
                        ));
                    }
                    p
                }
                None => free_port(store, ranges, &taken_here).await?,
            };
            taken_here.push(node_port);
            port["nodePort"] = json!(node_port);
            let key = port_key(node_port);
            if !held.contains(&key) {
                new_keys.push(key);
            }
        }
    }
    Ok(new_keys)
}

fn wants_node_ports_kind(kind: &str) -> bool {
    matches!(kind, "NodePort" | "LoadBalancer")
}

async fn free_ip(store: &dyn Store, ranges: &Ranges) -> Result<String, ApiError> {
    let size = ranges.size();
    let start = rand::random_range(1..size - 1);
    for step in 0..(size - 2).min(4096) {
        let offset = 1 + (start - 1 + step) % (size - 2);
        let ip = Ipv4Addr::from(u32::from(ranges.network) + offset).to_string();
        let taken = store
            .get(&ip_key(&ip))
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?
            .kv
            .is_some();
        if !taken {
            return Ok(ip);
        }
    }
    Err(ApiError::Internal(format!(
        "failed to allocate a serviceIP: range {} is full",
        ranges.cidr()
    )))
}

async fn free_port(store: &dyn Store, ranges: &Ranges, exclude: &[i64]) -> Result<i64, ApiError> {
    let (min, max) = (
        i64::from(ranges.node_port_min),
        i64::from(ranges.node_port_max),
    );
    let span = max - min + 1;
    let start = rand::random_range(0..span);
    for step in 0..span {
        let port = min + (start + step) % span;
        if exclude.contains(&port) {
            continue;
        }
        if store
            .get(&port_key(port))
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?
            .kv
            .is_none()
        {
            return Ok(port);
        }
    }
    Err(ApiError::Internal(
        "failed to allocate a nodePort: range is full".into(),
    ))
}

/// Writes a Service with its allocation keys atomically: `expected` is the Service's
/// mod revision (0 to create), `create` the keys to take, `release` the keys to free.
/// Returns the new revision, or which requested key was already taken.
pub async fn write(
    store: &dyn Store,
    key: &str,
    value: bytes::Bytes,
    expected: i64,
    create: &[String],
    release: &[String],
    owner: &str,
) -> Result<Result<i64, Option<String>>, ApiError> {
    let mut compares = vec![Compare::mod_revision(key, expected)];
    compares.extend(create.iter().map(|k| Compare::absent(k.clone())));
    let mut ops = vec![Op::put(key, value)];
    ops.extend(create.iter().map(|k| Op::put(k.clone(), owner.to_string())));
    ops.extend(release.iter().map(|k| Op::delete(k.clone())));
    let failure: Vec<Op> = std::iter::once(Op::get(key))
        .chain(create.iter().map(|k| Op::get(k.clone())))
        .collect();
    let resp = store
        .txn(Txn::new().when(compares).and_then(ops).or_else(failure))
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    if resp.succeeded {
        return Ok(Ok(resp.revision));
    }
    // Which guard failed: the Service itself (None) or an allocation key.
    let mut responses = resp.responses.into_iter();
    let service_now = match responses.next() {
        Some(OpResponse::Get(kv)) => kv.map_or(0, |kv| kv.mod_revision),
        _ => 0,
    };
    if service_now != expected {
        return Ok(Err(None));
    }
    for (k, r) in create.iter().zip(responses) {
        if matches!(r, OpResponse::Get(Some(_))) {
            return Ok(Err(Some(k.clone())));
        }
    }
    Ok(Err(None))
}

/// Deletes a Service and frees what it holds, if it is still at `expected`.
pub async fn delete(
    store: &dyn Store,
    key: &str,
    expected: i64,
    held: &[String],
) -> Result<bool, ApiError> {
    let ops: Vec<Op> = std::iter::once(Op::delete(key))
        .chain(held.iter().map(|k| Op::delete(k.clone())))
        .collect();
    let resp = store
        .txn(
            Txn::new()
                .when([Compare::mod_revision(key, expected)])
                .and_then(ops),
        )
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok(resp.succeeded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_exclude_network_and_broadcast() {
        let r = Ranges::parse("10.96.5.7/12", "30000-30010").unwrap();
        assert_eq!(r.cidr(), "10.96.0.0/12");
        assert!(!r.contains(Ipv4Addr::new(10, 96, 0, 0)));
        assert!(r.contains(Ipv4Addr::new(10, 96, 0, 1)));
        assert!(r.contains(Ipv4Addr::new(10, 111, 255, 254)));
        assert!(!r.contains(Ipv4Addr::new(10, 111, 255, 255)));
        assert!(!r.contains(Ipv4Addr::new(10, 112, 0, 1)));
        assert!(Ranges::parse("10.96.0.0", "1-2").is_err());
        assert!(Ranges::parse("10.96.0.0/12", "5-1").is_err());
    }
}
