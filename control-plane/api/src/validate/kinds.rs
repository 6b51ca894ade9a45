//! Per-kind validation beyond names and shapes: the enumerations, cross-field rules and
//! immutable fields upstream enforces for pods, workloads, services, secrets, config maps,
//! endpoints, endpoint slices, leases, events and nodes. Messages follow upstream's wording
//! so that clients print what users know.

use std::collections::HashSet;
use std::net::IpAddr;

use serde_json::Value;

use super::{DNS1123_LABEL_MSG, check_port, is_dns1123_label, is_dns1123_subdomain, str_at};
use crate::status::Cause;

/// `field` must be one of `supported` when present.
fn one_of(object: &Value, pointer: &str, field: &str, supported: &[&str], causes: &mut Vec<Cause>) {
    if let Some(value) = str_at(object, pointer)
        && !supported.contains(&value)
    {
        causes.push(Cause::not_supported(field, value, supported));
    }
}

fn forbidden(field: impl Into<String>, why: &str) -> Cause {
    Cause {
        reason: "FieldValueForbidden",
        field: field.into(),
        message: format!("Forbidden: {why}"),
    }
}

fn non_negative(object: &Value, pointer: &str, field: &str, causes: &mut Vec<Cause>) {
    if let Some(n) = object.pointer(pointer).and_then(Value::as_i64)
        && n < 0
    {
        causes.push(Cause::invalid(
            field,
            &n.to_string(),
            "must be greater than or equal to 0",
        ));
    }
}

/// An IANA service name (a port name): at most 15 of `[a-z0-9-]`, at least one letter,
/// no leading, trailing or doubled hyphen.
pub fn is_port_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

const PORT_NAME_MSG: &str = "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-), at most 15 characters, at least one letter, and may not begin or end with or contain two consecutive hyphens";
const PROTOCOLS: &[&str] = &["TCP", "UDP", "SCTP"];

/// A port given as a number or an IANA name (`targetPort`, probe ports).
fn check_int_or_name(field: String, value: Option<&Value>, causes: &mut Vec<Cause>) {
    match value {
        None => {}
        Some(Value::String(name)) if !is_port_name(name) => {
            causes.push(Cause::invalid(field, name, PORT_NAME_MSG))
        }
        Some(Value::String(_)) => {}
        Some(number) => check_port(field, Some(number), causes),
    }
}

/// A quantity (`500m`, `1Gi`, `2`) as a number, for comparing requests with limits.
pub fn quantity(s: &str) -> Option<f64> {
    const SUFFIXES: &[(&str, f64)] = &[
        ("Ki", 1024.0),
        ("Mi", 1024.0 * 1024.0),
        ("Gi", 1024.0 * 1024.0 * 1024.0),
        ("Ti", 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("Pi", 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("Ei", 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    let s = s.trim();
    for (suffix, factor) in SUFFIXES {
        if let Some(number) = s.strip_suffix(suffix) {
            return number.parse::<f64>().ok().map(|n| n * factor);
        }
    }
    s.parse::<f64>().ok()
}

fn check_resources(container: &Value, at: &str, causes: &mut Vec<Cause>) {
    let limits = container
        .pointer("/resources/limits")
        .and_then(Value::as_object);
    let requests = container
        .pointer("/resources/requests")
        .and_then(Value::as_object);
    for (kind, map) in [("limits", limits), ("requests", requests)] {
        for (name, value) in map.into_iter().flatten() {
            let text = value
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| value.to_string());
            match quantity(&text) {
                Some(q) if q < 0.0 => causes.push(Cause::invalid(
                    format!("{at}.resources.{kind}[{name}]"),
                    &text,
                    "must be greater than or equal to 0",
                )),
                Some(_) => {}
                None => causes.push(Cause::invalid(
                    format!("{at}.resources.{kind}[{name}]"),
                    &text,
                    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'",
                )),
            }
        }
    }
    for (name, request) in requests.into_iter().flatten() {
        let limit = limits.and_then(|l| l.get(name));
        let (Some(request), Some(limit)) = (
            request.as_str().and_then(quantity),
            limit.and_then(Value::as_str).and_then(quantity),
        ) else {
            continue;
        };
        if request > limit {
            causes.push(Cause::invalid(
                format!("{at}.resources.requests"),
                request_text(container, name),
                format!(
                    "must be less than or equal to {name} limit of {}",
                    limit_text(container, name)
                ),
            ));
        }
    }
}

fn request_text<'a>(container: &'a Value, name: &str) -> &'a str {
    container
        .pointer(&format!("/resources/requests/{name}"))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn limit_text<'a>(container: &'a Value, name: &str) -> &'a str {
    container
        .pointer(&format!("/resources/limits/{name}"))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// Container-level rules beyond name and image: ports, env, mounts, resources.
pub fn check_container(
    container: &Value,
    at: &str,
    volumes: &HashSet<String>,
    causes: &mut Vec<Cause>,
) {
    let mut port_names = HashSet::new();
    for (j, port) in container
        .get("ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        one_of(
            port,
            "/protocol",
            &format!("{at}.ports[{j}].protocol"),
            PROTOCOLS,
            causes,
        );
        if let Some(name) = port.get("name").and_then(Value::as_str) {
            if !is_port_name(name) {
                causes.push(Cause::invalid(
                    format!("{at}.ports[{j}].name"),
                    name,
                    PORT_NAME_MSG,
                ));
            } else if !port_names.insert(name.to_string()) {
                causes.push(Cause::duplicate(format!("{at}.ports[{j}].name"), name));
            }
        }
        if let Some(host_port) = port.get("hostPort").and_then(Value::as_i64)
            && host_port != 0
        {
            check_port(
                format!("{at}.ports[{j}].hostPort"),
                port.get("hostPort"),
                causes,
            );
        }
    }
    for (j, env) in container
        .get("env")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        match env.get("name").and_then(Value::as_str) {
            None | Some("") => causes.push(Cause::required(format!("{at}.env[{j}].name"))),
            // Upstream's relaxed rule (GA in 1.34): printable ASCII except '='.
            Some(name) if !name.bytes().all(|b| (b' '..=b'~').contains(&b) && b != b'=') => {
                causes.push(Cause::invalid(
                    format!("{at}.env[{j}].name"),
                    name,
                    "a valid environment variable name must consist only of printable ASCII characters other than '='",
                ))
            }
            Some(_) => {}
        }
    }
    for (j, mount) in container
        .get("volumeMounts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        match mount.get("name").and_then(Value::as_str) {
            None | Some("") => causes.push(Cause::required(format!("{at}.volumeMounts[{j}].name"))),
            Some(name) if !volumes.contains(name) => causes.push(Cause {
                reason: "FieldValueNotFound",
                field: format!("{at}.volumeMounts[{j}].name"),
                message: format!("Not found: {name:?}"),
            }),
            Some(_) => {}
        }
        if mount
            .get("mountPath")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            causes.push(Cause::required(format!("{at}.volumeMounts[{j}].mountPath")));
        }
    }
    check_resources(container, at, causes);
}

/// Pod-level enumerations and volumes; returns the volume names for the mount checks.
pub fn check_pod_level(spec: &Value, path: &str, causes: &mut Vec<Cause>) -> HashSet<String> {
    one_of(
        spec,
        "/restartPolicy",
        &format!("{path}.restartPolicy"),
        &["Always", "OnFailure", "Never"],
        causes,
    );
    one_of(
        spec,
        "/dnsPolicy",
        &format!("{path}.dnsPolicy"),
        &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"],
        causes,
    );
    non_negative(
        spec,
        "/terminationGracePeriodSeconds",
        &format!("{path}.terminationGracePeriodSeconds"),
        causes,
    );
    let mut names = HashSet::new();
    for (i, volume) in spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let at = format!("{path}.volumes[{i}]");
        match volume.get("name").and_then(Value::as_str) {
            None | Some("") => causes.push(Cause::required(format!("{at}.name"))),
            Some(name) if !is_dns1123_label(name) => causes.push(Cause::invalid(
                format!("{at}.name"),
                name,
                DNS1123_LABEL_MSG,
            )),
            Some(name) if !names.insert(name.to_string()) => {
                causes.push(Cause::duplicate(format!("{at}.name"), name))
            }
            Some(_) => {}
        }
        let sources = volume
            .as_object()
            .map(|m| m.keys().filter(|k| *k != "name").count())
            .unwrap_or(0);
        if sources > 1 {
            causes.push(forbidden(
                at.clone(),
                "may not specify more than 1 volume type",
            ));
        }
    }
    names
}

/// Deployment, ReplicaSet and DaemonSet rules beyond the selector.
pub fn check_workload_extra(kind: &str, object: &Value, causes: &mut Vec<Cause>) {
    one_of(
        object,
        "/spec/template/spec/restartPolicy",
        "spec.template.spec.restartPolicy",
        &["Always"],
        causes,
    );
    non_negative(
        object,
        "/spec/minReadySeconds",
        "spec.minReadySeconds",
        causes,
    );
    non_negative(
        object,
        "/spec/revisionHistoryLimit",
        "spec.revisionHistoryLimit",
        causes,
    );
    let (pointer, field, types) = match kind {
        "Deployment" => (
            "/spec/strategy",
            "spec.strategy",
            &["RollingUpdate", "Recreate"][..],
        ),
        "DaemonSet" => (
            "/spec/updateStrategy",
            "spec.updateStrategy",
            &["RollingUpdate", "OnDelete"][..],
        ),
        _ => return,
    };
    let Some(strategy) = object.pointer(pointer) else {
        return;
    };
    one_of(strategy, "/type", &format!("{field}.type"), types, causes);
    let kind_of = str_at(strategy, "/type").unwrap_or_default();
    if kind_of != "RollingUpdate" && strategy.get("rollingUpdate").is_some() {
        causes.push(forbidden(
            format!("{field}.rollingUpdate"),
            &format!("may not be specified when strategy `type` is '{kind_of}'"),
        ));
        return;
    }
    let Some(rolling) = strategy.get("rollingUpdate") else {
        return;
    };
    let mut zero = |name: &str| -> bool {
        let at = format!("{field}.rollingUpdate.{name}");
        match rolling.get(name) {
            None => kind == "DaemonSet" && name == "maxSurge",
            Some(Value::Number(n)) => {
                let n = n.as_i64().unwrap_or(-1);
                if n < 0 {
                    causes.push(Cause::invalid(
                        at,
                        &n.to_string(),
                        "must be greater than or equal to 0",
                    ));
                }
                n == 0
            }
            Some(Value::String(s)) => {
                let percent = s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok());
                match percent {
                    Some(p) if (0..=100).contains(&p) => p == 0,
                    Some(_) => {
                        causes.push(Cause::invalid(at, s, "must not be greater than 100%"));
                        false
                    }
                    None => {
                        causes.push(Cause::invalid(at, s, "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')"));
                        false
                    }
                }
            }
            Some(other) => {
                causes.push(Cause::invalid(
                    at,
                    &other.to_string(),
                    "must be an integer or a percentage",
                ));
                false
            }
        }
    };
    let unavailable_zero = zero("maxUnavailable");
    let surge_zero = zero("maxSurge");
    if unavailable_zero && surge_zero {
        causes.push(Cause::invalid(
            format!("{field}.rollingUpdate.maxUnavailable"),
            "0",
            "may not be 0 when `maxSurge` is 0",
        ));
    }
}

/// Service rules beyond types and port numbers.
pub fn check_service(object: &Value, causes: &mut Vec<Cause>) {
    let kind = str_at(object, "/spec/type").unwrap_or("ClusterIP");
    let ports = object
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (i, port) in ports.iter().enumerate() {
        let at = format!("spec.ports[{i}]");
        one_of(
            port,
            "/protocol",
            &format!("{at}.protocol"),
            PROTOCOLS,
            causes,
        );
        match port.get("name").and_then(Value::as_str) {
            None | Some("") if ports.len() > 1 => {
                causes.push(Cause::required(format!("{at}.name")))
            }
            Some(name) if !name.is_empty() && !is_dns1123_label(name) => causes.push(
                Cause::invalid(format!("{at}.name"), name, DNS1123_LABEL_MSG),
            ),
            _ => {}
        }
        check_int_or_name(format!("{at}.targetPort"), port.get("targetPort"), causes);
        if let Some(node_port) = port.get("nodePort").and_then(Value::as_i64)
            && node_port != 0
            && !matches!(kind, "NodePort" | "LoadBalancer")
        {
            causes.push(forbidden(
                format!("{at}.nodePort"),
                &format!("may not be used when `type` is '{kind}'"),
            ));
        }
    }
    one_of(
        object,
        "/spec/sessionAffinity",
        "spec.sessionAffinity",
        &["ClientIP", "None"],
        causes,
    );
    one_of(
        object,
        "/spec/internalTrafficPolicy",
        "spec.internalTrafficPolicy",
        &["Cluster", "Local"],
        causes,
    );
    if let Some(policy) = str_at(object, "/spec/externalTrafficPolicy") {
        let external = matches!(kind, "NodePort" | "LoadBalancer")
            || object
                .pointer("/spec/externalIPs")
                .and_then(Value::as_array)
                .is_some_and(|ips| !ips.is_empty());
        if !external && !policy.is_empty() {
            causes.push(Cause::invalid(
                "spec.externalTrafficPolicy",
                policy,
                "may only be set for externally-accessible services",
            ));
        } else {
            one_of(
                object,
                "/spec/externalTrafficPolicy",
                "spec.externalTrafficPolicy",
                &["Cluster", "Local"],
                causes,
            );
        }
    }
    if kind == "ExternalName" {
        match str_at(object, "/spec/externalName") {
            None | Some("") => causes.push(Cause::required("spec.externalName")),
            Some(name) if !is_dns1123_subdomain(name.trim_end_matches('.')) => causes.push(
                Cause::invalid("spec.externalName", name, "must be a valid DNS name"),
            ),
            Some(_) => {}
        }
    }
    if str_at(object, "/spec/clusterIP") == Some("None") && kind != "ClusterIP" {
        causes.push(Cause::invalid(
            "spec.clusterIPs[0]",
            "None",
            "may not be set to 'None' for LoadBalancer or NodePort services",
        ));
    }
    for (i, ip) in object
        .pointer("/spec/externalIPs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let text = ip.as_str().unwrap_or_default();
        if text.parse::<IpAddr>().is_err() {
            causes.push(Cause::invalid(
                format!("spec.externalIPs[{i}]"),
                text,
                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            ));
        }
    }
}

/// Required keys per well-known Secret type.
pub fn check_secret(object: &Value, causes: &mut Vec<Cause>) {
    let data = object.get("data").and_then(Value::as_object);
    let has = |key: &str| data.is_some_and(|d| d.contains_key(key));
    let required: &[&str] = match str_at(object, "/type").unwrap_or("Opaque") {
        "kubernetes.io/tls" => &["tls.crt", "tls.key"],
        "kubernetes.io/dockerconfigjson" => &[".dockerconfigjson"],
        "kubernetes.io/dockercfg" => &[".dockercfg"],
        "kubernetes.io/ssh-auth" => &["ssh-privatekey"],
        "kubernetes.io/service-account-token" => {
            if object
                .pointer("/metadata/annotations/kubernetes.io~1service-account.name")
                .is_none()
            {
                causes.push(Cause::required(
                    "metadata.annotations[kubernetes.io/service-account.name]",
                ));
            }
            &[]
        }
        "kubernetes.io/basic-auth" => {
            if !has("username") && !has("password") {
                causes.push(Cause::required("data[username]"));
            }
            &[]
        }
        _ => &[],
    };
    for key in required {
        if !has(key) {
            causes.push(Cause::required(format!("data[{key}]")));
        }
    }
}

/// EndpointSlice address types, addresses and ports.
pub fn check_endpoint_slice(object: &Value, causes: &mut Vec<Cause>) {
    const TYPES: &[&str] = &["IPv4", "IPv6", "FQDN"];
    let address_type = str_at(object, "/addressType");
    match address_type {
        None | Some("") => causes.push(Cause::required("addressType")),
        Some(t) if !TYPES.contains(&t) => {
            causes.push(Cause::not_supported("addressType", t, TYPES))
        }
        Some(_) => {}
    }
    for (i, endpoint) in object
        .get("endpoints")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let addresses = endpoint.get("addresses").and_then(Value::as_array);
        match addresses.map(Vec::len) {
            None | Some(0) => causes.push(Cause::required(format!("endpoints[{i}].addresses"))),
            Some(n) if n > 100 => causes.push(Cause {
                reason: "FieldValueTooMany",
                field: format!("endpoints[{i}].addresses"),
                message: format!("Too many: {n}: must have at most 100 items"),
            }),
            Some(_) => {}
        }
        for (j, address) in addresses.into_iter().flatten().enumerate() {
            let text = address.as_str().unwrap_or_default();
            let ok = match address_type {
                Some("IPv4") => text.parse::<std::net::Ipv4Addr>().is_ok(),
                Some("IPv6") => text.parse::<std::net::Ipv6Addr>().is_ok(),
                Some("FQDN") => is_dns1123_subdomain(text),
                _ => true,
            };
            if !ok {
                causes.push(Cause::invalid(
                    format!("endpoints[{i}].addresses[{j}]"),
                    text,
                    format!(
                        "must be a valid {} address",
                        address_type.unwrap_or_default()
                    ),
                ));
            }
        }
    }
    for (i, port) in object
        .get("ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        one_of(
            port,
            "/protocol",
            &format!("ports[{i}].protocol"),
            PROTOCOLS,
            causes,
        );
        if let Some(p) = port.get("port").and_then(Value::as_i64)
            && !(0..=65535).contains(&p)
        {
            causes.push(Cause::invalid(
                format!("ports[{i}].port"),
                &p.to_string(),
                "must be between 0 and 65535, inclusive",
            ));
        }
    }
}

/// Endpoints: subset addresses are IPs, ports in range.
pub fn check_endpoints(object: &Value, causes: &mut Vec<Cause>) {
    for (i, subset) in object
        .get("subsets")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        for list in ["addresses", "notReadyAddresses"] {
            for (j, address) in subset
                .get(list)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let ip = address
                    .get("ip")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if ip.parse::<IpAddr>().is_err() {
                    causes.push(Cause::invalid(
                        format!("subsets[{i}].{list}[{j}].ip"),
                        ip,
                        "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                    ));
                }
            }
        }
        for (j, port) in subset
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            check_port(
                format!("subsets[{i}].ports[{j}].port"),
                port.get("port"),
                causes,
            );
            one_of(
                port,
                "/protocol",
                &format!("subsets[{i}].ports[{j}].protocol"),
                PROTOCOLS,
                causes,
            );
        }
    }
}

/// Leases, events and nodes: the few rules upstream has for them.
pub fn check_misc(kind: &str, object: &Value, causes: &mut Vec<Cause>) {
    match kind {
        "Lease" => {
            if let Some(d) = object
                .pointer("/spec/leaseDurationSeconds")
                .and_then(Value::as_i64)
                && d <= 0
            {
                causes.push(Cause::invalid(
                    "spec.leaseDurationSeconds",
                    &d.to_string(),
                    "must be greater than 0",
                ));
            }
        }
        "Event" => {
            let event_ns = str_at(object, "/metadata/namespace").unwrap_or_default();
            if let Some(ns) = str_at(object, "/involvedObject/namespace")
                && !ns.is_empty()
                && !event_ns.is_empty()
                && ns != event_ns
            {
                causes.push(Cause::invalid(
                    "involvedObject.namespace",
                    ns,
                    "does not match event.namespace",
                ));
            }
        }
        "Node" => {
            let cidrs = object
                .pointer("/spec/podCIDRs")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .chain(str_at(object, "/spec/podCIDR"));
            for cidr in cidrs.filter(|c| !c.is_empty()) {
                let valid = cidr.split_once('/').is_some_and(|(ip, len)| {
                    let max = match ip.parse::<IpAddr>() {
                        Ok(IpAddr::V4(_)) => 32,
                        Ok(IpAddr::V6(_)) => 128,
                        Err(_) => return false,
                    };
                    len.parse::<u8>().is_ok_and(|l| l <= max)
                });
                if !valid {
                    causes.push(Cause::invalid(
                        "spec.podCIDRs",
                        cidr,
                        "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
                    ));
                }
            }
        }
        _ => {}
    }
}

/// Update rules: immutable ConfigMaps and Secrets, Secret types, EndpointSlice address types.
pub fn check_update(kind: &str, old: &Value, new: &Value, causes: &mut Vec<Cause>) {
    let same = |pointer: &str| old.pointer(pointer) == new.pointer(pointer);
    match kind {
        "ConfigMap" | "Secret" => {
            if old.get("immutable") == Some(&Value::Bool(true)) {
                if !same("/immutable") {
                    causes.push(forbidden(
                        "immutable",
                        "field is immutable when `immutable` is set",
                    ));
                }
                for field in ["data", "binaryData"] {
                    if !same(&format!("/{field}")) {
                        causes.push(forbidden(
                            field,
                            "field is immutable when `immutable` is set",
                        ));
                    }
                }
            }
            if kind == "Secret" && !same("/type") {
                causes.push(Cause::immutable("type"));
            }
        }
        "EndpointSlice" if !same("/addressType") => causes.push(Cause::immutable("addressType")),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(causes: &[Cause]) -> Vec<&str> {
        causes.iter().map(|c| c.field.as_str()).collect()
    }

    #[test]
    fn port_names_follow_iana() {
        assert!(is_port_name("http"));
        assert!(is_port_name("h2c-1"));
        assert!(!is_port_name("8080"), "needs a letter");
        assert!(!is_port_name("a--b"));
        assert!(!is_port_name("averyveryverylongname"));
        assert!(!is_port_name("Http"));
    }

    #[test]
    fn quantities_compare_across_suffixes() {
        assert_eq!(quantity("500m"), Some(0.5));
        assert_eq!(quantity("1Gi"), Some(1024.0 * 1024.0 * 1024.0));
        assert_eq!(quantity("2"), Some(2.0));
        assert!(quantity("1G").unwrap() < quantity("1Gi").unwrap());
        assert_eq!(quantity("lots"), None);
    }

    #[test]
    fn containers_check_ports_env_mounts_and_resources() {
        let volumes: HashSet<String> = ["data".to_string()].into();
        let container = json!({
            "ports": [
                {"containerPort": 80, "name": "web", "protocol": "TCP"},
                {"containerPort": 81, "name": "web", "protocol": "ICMP"},
            ],
            "env": [{"name": "OK_1", "value": "x"}, {"name": "A=B"}],
            "volumeMounts": [{"name": "data", "mountPath": "/d"}, {"name": "missing", "mountPath": "/m"}],
            "resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "500m"}},
        });
        let mut causes = Vec::new();
        check_container(&container, "spec.containers[0]", &volumes, &mut causes);
        assert_eq!(
            fields(&causes),
            [
                "spec.containers[0].ports[1].protocol",
                "spec.containers[0].ports[1].name",
                "spec.containers[0].env[1].name",
                "spec.containers[0].volumeMounts[1].name",
                "spec.containers[0].resources.requests",
            ]
        );
        assert_eq!(causes[3].reason, "FieldValueNotFound");
        assert!(
            causes[4]
                .message
                .contains("must be less than or equal to cpu limit of 500m"),
            "{}",
            causes[4].message
        );
    }

    #[test]
    fn deployment_strategies() {
        let mut causes = Vec::new();
        check_workload_extra(
            "Deployment",
            &json!({"spec": {"strategy": {"type": "Recreate", "rollingUpdate": {"maxSurge": 1}}}}),
            &mut causes,
        );
        assert_eq!(fields(&causes), ["spec.strategy.rollingUpdate"]);
        causes.clear();
        check_workload_extra(
            "Deployment",
            &json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "0%", "maxUnavailable": 0}}}}),
            &mut causes,
        );
        assert_eq!(
            fields(&causes),
            ["spec.strategy.rollingUpdate.maxUnavailable"]
        );
        causes.clear();
        check_workload_extra(
            "Deployment",
            &json!({"spec": {"strategy": {"type": "Sideways"}, "template": {"spec": {"restartPolicy": "Never"}}}}),
            &mut causes,
        );
        assert_eq!(
            fields(&causes),
            ["spec.template.spec.restartPolicy", "spec.strategy.type"]
        );
        causes.clear();
        check_workload_extra(
            "Deployment",
            &json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}}}),
            &mut causes,
        );
        assert!(causes.is_empty(), "{causes:?}");
    }

    #[test]
    fn services_check_names_policies_and_node_ports() {
        let mut causes = Vec::new();
        check_service(
            &json!({"spec": {"type": "ClusterIP", "ports": [
                {"port": 80, "name": "http", "targetPort": "web"},
                {"port": 81, "targetPort": 0, "nodePort": 30001, "protocol": "HTTP"},
            ], "sessionAffinity": "Sticky", "externalTrafficPolicy": "Local"}}),
            &mut causes,
        );
        assert_eq!(
            fields(&causes),
            [
                "spec.ports[1].protocol",
                "spec.ports[1].name",
                "spec.ports[1].targetPort",
                "spec.ports[1].nodePort",
                "spec.sessionAffinity",
                "spec.externalTrafficPolicy",
            ]
        );
        causes.clear();
        check_service(&json!({"spec": {"type": "ExternalName"}}), &mut causes);
        assert_eq!(fields(&causes), ["spec.externalName"]);
        causes.clear();
        check_service(
            &json!({"spec": {"type": "NodePort", "externalTrafficPolicy": "Local", "ports": [{"port": 80, "nodePort": 30080}]}}),
            &mut causes,
        );
        assert!(causes.is_empty(), "{causes:?}");
    }

    #[test]
    fn secrets_need_their_type_keys() {
        let mut causes = Vec::new();
        check_secret(
            &json!({"type": "kubernetes.io/tls", "data": {"tls.crt": "eA=="}}),
            &mut causes,
        );
        assert_eq!(fields(&causes), ["data[tls.key]"]);
        causes.clear();
        check_secret(&json!({"type": "Opaque"}), &mut causes);
        assert!(causes.is_empty());
    }

    #[test]
    fn endpoint_slices_check_address_types_and_addresses() {
        let mut causes = Vec::new();
        check_endpoint_slice(
            &json!({"addressType": "IPv4", "endpoints": [{"addresses": ["10.0.0.1", "fe80::1"]}, {"addresses": []}],
                    "ports": [{"port": 70000, "protocol": "TCP"}]}),
            &mut causes,
        );
        assert_eq!(
            fields(&causes),
            [
                "endpoints[0].addresses[1]",
                "endpoints[1].addresses",
                "ports[0].port"
            ]
        );
        causes.clear();
        check_endpoint_slice(&json!({}), &mut causes);
        assert_eq!(fields(&causes), ["addressType"]);
    }

    #[test]
    fn immutable_config_and_secret_types() {
        let mut causes = Vec::new();
        check_update(
            "ConfigMap",
            &json!({"immutable": true, "data": {"a": "1"}}),
            &json!({"immutable": true, "data": {"a": "2"}}),
            &mut causes,
        );
        assert_eq!(fields(&causes), ["data"]);
        causes.clear();
        check_update(
            "Secret",
            &json!({"type": "Opaque"}),
            &json!({"type": "kubernetes.io/tls"}),
            &mut causes,
        );
        assert_eq!(fields(&causes), ["type"]);
        causes.clear();
        check_update(
            "ConfigMap",
            &json!({"data": {"a": "1"}}),
            &json!({"data": {"a": "2"}}),
            &mut causes,
        );
        assert!(causes.is_empty());
    }

    #[test]
    fn misc_kinds() {
        let mut causes = Vec::new();
        check_misc(
            "Lease",
            &json!({"spec": {"leaseDurationSeconds": 0}}),
            &mut causes,
        );
        check_misc(
            "Node",
            &json!({"spec": {"podCIDR": "10.0.0.0/33"}}),
            &mut causes,
        );
        check_misc(
            "Event",
            &json!({"metadata": {"namespace": "a"}, "involvedObject": {"namespace": "b"}}),
            &mut causes,
        );
        assert_eq!(
            fields(&causes),
            [
                "spec.leaseDurationSeconds",
                "spec.podCIDRs",
                "involvedObject.namespace"
            ]
        );
    }
}
