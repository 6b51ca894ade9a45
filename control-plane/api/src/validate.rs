//! Validation of objects as upstream does it for the fields that matter: names, label
//! keys, the typed shape (via `k8s-openapi`), required fields, container names and ports,
//! config keys, selectors, and immutable fields on update; the per-kind rules are in
//! `kinds`.

mod kinds;

use std::collections::HashSet;

use serde_json::Value;

use crate::registry::Resource;
use crate::status::Cause;

/// Why an object was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The object does not decode as its type (upstream answers 400).
    Decode(String),
    /// Field-level validation failures (upstream answers 422).
    Invalid(Vec<Cause>),
}

const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const CONFIG_KEY_MSG: &str = "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')";

/// RFC 1123 label: at most 63 of `[a-z0-9-]`, alphanumeric at both ends.
pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// RFC 1123 subdomain: at most 253 characters of dot-separated labels.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

fn is_config_key(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Names that must be DNS labels rather than subdomains.
fn name_is_label(resource: &Resource) -> bool {
    matches!(resource.kind, "Namespace" | "Service")
}

/// Checks a name for the resource; returns the upstream message when invalid.
pub fn check_name(resource: &Resource, name: &str) -> Option<&'static str> {
    if name_is_label(resource) {
        (!is_dns1123_label(name)).then_some(DNS1123_LABEL_MSG)
    } else {
        (!is_dns1123_subdomain(name)).then_some(DNS1123_SUBDOMAIN_MSG)
    }
}

fn decode<T: serde::de::DeserializeOwned>(object: &Value) -> Result<(), Refusal> {
    serde_json::from_value::<T>(object.clone())
        .map(|_| ())
        .map_err(|e| Refusal::Decode(e.to_string()))
}

/// Decodes the object as its typed `k8s-openapi` form, refusing what does not fit.
fn check_type(resource: &Resource, object: &Value) -> Result<(), Refusal> {
    use k8s_openapi::api::{
        apps::v1 as apps, coordination::v1 as coord, core::v1 as core, discovery::v1 as disc,
    };
    match resource.kind {
        "Namespace" => decode::<core::Namespace>(object),
        "Pod" => decode::<core::Pod>(object),
        "Service" => decode::<core::Service>(object),
        "Endpoints" => decode::<core::Endpoints>(object),
        "Node" => decode::<core::Node>(object),
        "ConfigMap" => decode::<core::ConfigMap>(object),
        "Secret" => decode::<core::Secret>(object),
        "Event" => decode::<core::Event>(object),
        "ServiceAccount" => decode::<core::ServiceAccount>(object),
        "Deployment" => decode::<apps::Deployment>(object),
        "ReplicaSet" => decode::<apps::ReplicaSet>(object),
        "DaemonSet" => decode::<apps::DaemonSet>(object),
        "EndpointSlice" => decode::<disc::EndpointSlice>(object),
        "Lease" => decode::<coord::Lease>(object),
        _ => Ok(()),
    }
}

fn str_at<'a>(object: &'a Value, pointer: &str) -> Option<&'a str> {
    object.pointer(pointer).and_then(Value::as_str)
}

fn check_labels(object: &Value, causes: &mut Vec<Cause>) {
    for field in ["labels", "annotations"] {
        let Some(map) = object
            .pointer(&format!("/metadata/{field}"))
            .and_then(Value::as_object)
        else {
            continue;
        };
        for (key, value) in map {
            let (prefix, name) = match key.rsplit_once('/') {
                Some((p, n)) => (Some(p), n),
                None => (None, key.as_str()),
            };
            let name_ok = !name.is_empty()
                && name.len() <= 63
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
                && name
                    .as_bytes()
                    .first()
                    .is_some_and(u8::is_ascii_alphanumeric)
                && name
                    .as_bytes()
                    .last()
                    .is_some_and(u8::is_ascii_alphanumeric);
            if !name_ok || prefix.is_some_and(|p| !is_dns1123_subdomain(p)) {
                causes.push(Cause::invalid(format!("metadata.{field}"), key, "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"));
            }
            if field == "labels" {
                let v = value.as_str().unwrap_or_default();
                let ok = v.len() <= 63
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
                    && (v.is_empty()
                        || (v.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric)
                            && v.as_bytes().last().is_some_and(u8::is_ascii_alphanumeric)));
                if !ok {
                    causes.push(Cause::invalid("metadata.labels", v, "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"));
                }
            }
        }
    }
}

fn check_port(field: String, port: Option<&Value>, causes: &mut Vec<Cause>) {
    match port.and_then(Value::as_i64) {
        Some(p) if (1..=65535).contains(&p) => {}
        Some(p) => causes.push(Cause::invalid(
            field,
            &p.to_string(),
            "must be between 1 and 65535, inclusive",
        )),
        None => causes.push(Cause::required(field)),
    }
}

/// Validates a pod spec at `path` (for pods and pod templates).
fn check_pod_spec(spec: Option<&Value>, path: &str, causes: &mut Vec<Cause>) {
    let containers = spec
        .and_then(|s| s.get("containers"))
        .and_then(Value::as_array);
    let Some(containers) = containers.filter(|c| !c.is_empty()) else {
        causes.push(Cause::required(format!("{path}.containers")));
        return;
    };
    let volumes = spec
        .map(|s| kinds::check_pod_level(s, path, causes))
        .unwrap_or_default();
    let mut names = HashSet::new();
    let init = spec
        .and_then(|s| s.get("initContainers"))
        .and_then(Value::as_array);
    let all = containers
        .iter()
        .enumerate()
        .map(|(i, c)| ("containers", i, c))
        .chain(
            init.into_iter()
                .flatten()
                .enumerate()
                .map(|(i, c)| ("initContainers", i, c)),
        );
    for (list, i, container) in all {
        let at = format!("{path}.{list}[{i}]");
        match container.get("name").and_then(Value::as_str) {
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
        if container
            .get("image")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            causes.push(Cause::required(format!("{at}.image")));
        }
        for (j, port) in container
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            check_port(
                format!("{at}.ports[{j}].containerPort"),
                port.get("containerPort"),
                causes,
            );
        }
        kinds::check_container(container, &at, &volumes, causes);
    }
}

fn check_workload(object: &Value, causes: &mut Vec<Cause>) {
    let selector = object.pointer("/spec/selector");
    let empty = selector.is_none_or(|s| {
        s.get("matchLabels")
            .and_then(Value::as_object)
            .is_none_or(|m| m.is_empty())
            && s.get("matchExpressions")
                .and_then(Value::as_array)
                .is_none_or(|m| m.is_empty())
    });
    if empty {
        causes.push(Cause::required("spec.selector"));
    } else if let Some(selector) = selector {
        let template = object
            .pointer("/spec/template")
            .cloned()
            .unwrap_or(Value::Null);
        match crate::selector::LabelSelector::from_object(selector) {
            Ok(sel) if !sel.matches_object(&template) => causes.push(Cause::invalid(
                "spec.template.metadata.labels",
                &serde_json::to_string(&template.pointer("/metadata/labels")).unwrap_or_default(),
                "`selector` does not match template `labels`",
            )),
            Ok(_) => {}
            Err(e) => causes.push(Cause::invalid("spec.selector", "", e.to_string())),
        }
    }
    if let Some(replicas) = object.pointer("/spec/replicas").and_then(Value::as_i64)
        && replicas < 0
    {
        causes.push(Cause::invalid(
            "spec.replicas",
            &replicas.to_string(),
            "must be greater than or equal to 0",
        ));
    }
    check_pod_spec(
        object.pointer("/spec/template/spec"),
        "spec.template.spec",
        causes,
    );
}

/// Validates an object for create (and, with [`validate_update`], for update).
pub fn validate(resource: &Resource, object: &Value) -> Result<(), Refusal> {
    check_type(resource, object)?;
    let mut causes = Vec::new();
    match str_at(object, "/metadata/name") {
        None | Some("") => causes.push(Cause::required("metadata.name")),
        Some(name) => {
            if let Some(msg) = check_name(resource, name) {
                causes.push(Cause::invalid("metadata.name", name, msg));
            }
        }
    }
    check_labels(object, &mut causes);
    match resource.kind {
        "ConfigMap" | "Secret" => {
            let mut seen = HashSet::new();
            for field in ["data", "binaryData", "stringData"] {
                for key in object
                    .get(field)
                    .and_then(Value::as_object)
                    .into_iter()
                    .flat_map(|m| m.keys())
                {
                    if !is_config_key(key) {
                        causes.push(Cause::invalid(field, key, CONFIG_KEY_MSG));
                    } else if field != "stringData" && !seen.insert(key.clone()) {
                        causes.push(Cause::duplicate(field, key));
                    }
                }
            }
            if resource.kind == "Secret" {
                kinds::check_secret(object, &mut causes);
            }
        }
        "Pod" => check_pod_spec(object.get("spec"), "spec", &mut causes),
        "Deployment" | "ReplicaSet" | "DaemonSet" => {
            check_workload(object, &mut causes);
            kinds::check_workload_extra(resource.kind, object, &mut causes);
        }
        "EndpointSlice" => kinds::check_endpoint_slice(object, &mut causes),
        "Endpoints" => kinds::check_endpoints(object, &mut causes),
        "Lease" | "Event" | "Node" => kinds::check_misc(resource.kind, object, &mut causes),
        "Service" => {
            let kind = str_at(object, "/spec/type").unwrap_or("ClusterIP");
            const TYPES: &[&str] = &["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"];
            if !TYPES.contains(&kind) {
                causes.push(Cause::not_supported("spec.type", kind, TYPES));
            }
            let ports = object.pointer("/spec/ports").and_then(Value::as_array);
            if kind != "ExternalName" && ports.is_none_or(|p| p.is_empty()) {
                causes.push(Cause::required("spec.ports"));
            }
            let mut names = HashSet::new();
            for (i, port) in ports.into_iter().flatten().enumerate() {
                check_port(
                    format!("spec.ports[{i}].port"),
                    port.get("port"),
                    &mut causes,
                );
                let name = port.get("name").and_then(Value::as_str).unwrap_or_default();
                if !names.insert(name.to_string()) {
                    causes.push(Cause::duplicate(format!("spec.ports[{i}].name"), name));
                }
            }
            kinds::check_service(object, &mut causes);
        }
        _ => {}
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(Refusal::Invalid(causes))
    }
}

/// Checks what may not change between `old` and `new`.
pub fn validate_update(resource: &Resource, old: &Value, new: &Value) -> Result<(), Refusal> {
    validate(resource, new)?;
    let mut causes = Vec::new();
    kinds::check_update(resource.kind, old, new, &mut causes);
    let same = |pointer: &str| old.pointer(pointer) == new.pointer(pointer);
    match resource.kind {
        "Service" => {
            let old_ip = str_at(old, "/spec/clusterIP").unwrap_or_default();
            if !old_ip.is_empty() && !same("/spec/clusterIP") {
                causes.push(Cause::immutable("spec.clusterIP"));
            }
        }
        "Deployment" | "ReplicaSet" | "DaemonSet" if !same("/spec/selector") => {
            causes.push(Cause::immutable("spec.selector"));
        }
        "Pod" => {
            // Upstream lets only images (and a few scheduling fields) change.
            let strip = |v: &Value| {
                let mut spec = v.get("spec").cloned().unwrap_or(Value::Null);
                for list in ["containers", "initContainers"] {
                    if let Some(Value::Array(cs)) = spec.get_mut(list) {
                        for c in cs {
                            if let Some(c) = c.as_object_mut() {
                                c.remove("image");
                            }
                        }
                    }
                }
                if let Some(s) = spec.as_object_mut() {
                    s.remove("activeDeadlineSeconds");
                    s.remove("tolerations");
                    // Binding sets nodeName once.
                    s.remove("nodeName");
                }
                spec
            };
            if strip(old) != strip(new) {
                causes.push(Cause {
                    reason: "FieldValueForbidden",
                    field: "spec".into(),
                    message: "Forbidden: pod updates may not change fields other than `spec.containers[*].image`, `spec.initContainers[*].image`, `spec.activeDeadlineSeconds`, `spec.tolerations` (only additions to existing tolerations)".into(),
                });
            }
            let old_node = str_at(old, "/spec/nodeName").unwrap_or_default();
            if !old_node.is_empty() && !same("/spec/nodeName") {
                causes.push(Cause::immutable("spec.nodeName"));
            }
        }
        _ => {}
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(Refusal::Invalid(causes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::find;
    use serde_json::json;

    #[test]
    fn names() {
        assert!(is_dns1123_label("web-1"));
        assert!(!is_dns1123_label("Web"));
        assert!(!is_dns1123_label("-a"));
        assert!(is_dns1123_subdomain("a.b-c.d"));
        assert!(!is_dns1123_subdomain("a..b"));
    }

    #[test]
    fn configmap_keys_must_be_valid_and_non_empty() {
        let cm = find("", "v1", "configmaps").unwrap();
        assert_eq!(
            validate(
                cm,
                &json!({"metadata": {"name": "c"}, "data": {"a.b": "1"}})
            ),
            Ok(())
        );
        let Err(Refusal::Invalid(causes)) =
            validate(cm, &json!({"metadata": {"name": "c"}, "data": {"": "1"}}))
        else {
            panic!("empty key accepted")
        };
        assert_eq!(causes[0].field, "data");
    }

    #[test]
    fn pods_need_named_unique_containers_with_images() {
        let pods = find("", "v1", "pods").unwrap();
        let Err(Refusal::Invalid(causes)) = validate(
            pods,
            &json!({"metadata": {"name": "p"}, "spec": {"containers": [
                {"name": "a", "image": "x"}, {"name": "a", "image": "y"}, {"name": "B"}
            ]}}),
        ) else {
            panic!()
        };
        let fields: Vec<_> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "spec.containers[1].name",
                "spec.containers[2].name",
                "spec.containers[2].image"
            ]
        );
        assert!(matches!(
            validate(
                pods,
                &json!({"metadata": {"name": "p"}, "spec": {"containers": "nope"}})
            ),
            Err(Refusal::Decode(_))
        ));
    }

    #[test]
    fn deployment_selector_must_match_and_is_immutable() {
        let d = find("apps", "v1", "deployments").unwrap();
        let good = json!({"metadata": {"name": "d"}, "spec": {"selector": {"matchLabels": {"app": "a"}},
            "template": {"metadata": {"labels": {"app": "a"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        assert_eq!(validate(d, &good), Ok(()));
        let mut other = good.clone();
        other["spec"]["selector"]["matchLabels"]["app"] = json!("b");
        assert!(validate(d, &other).is_err());
        other["spec"]["template"]["metadata"]["labels"]["app"] = json!("b");
        assert_eq!(validate(d, &other), Ok(()));
        assert!(validate_update(d, &good, &other).is_err());
    }
}
