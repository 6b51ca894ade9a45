//! `as=Table` output: the columns `kubectl get` prints, computed on the server as
//! upstream does, for the resources users look at most; NAME and AGE for the rest.

use std::time::SystemTime;

use serde_json::{Value, json};

use crate::selector::map_string;

/// One column definition.
#[derive(Debug, Clone, Copy)]
struct Column {
    name: &'static str,
    kind: &'static str,
    priority: u8,
    description: &'static str,
}

const fn col(
    name: &'static str,
    kind: &'static str,
    priority: u8,
    description: &'static str,
) -> Column {
    Column {
        name,
        kind,
        priority,
        description,
    }
}

const NAME: Column = col(
    "Name",
    "string",
    0,
    "Name must be unique within a namespace.",
);
const AGE: Column = col(
    "Age",
    "string",
    0,
    "CreationTimestamp is a timestamp representing the server time when this object was created.",
);

fn columns(kind: &str) -> Vec<Column> {
    match kind {
        "Pod" => vec![
            NAME,
            col(
                "Ready",
                "string",
                0,
                "The aggregate readiness state of this pod for accepting traffic.",
            ),
            col(
                "Status",
                "string",
                0,
                "The aggregate status of the containers in this pod.",
            ),
            col(
                "Restarts",
                "string",
                0,
                "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
            ),
            AGE,
            col("IP", "string", 1, "IP address allocated to the pod."),
            col(
                "Node",
                "string",
                1,
                "Name of the node this pod is running on.",
            ),
            col(
                "Nominated Node",
                "string",
                1,
                "Name of the node where the pod is nominated to run.",
            ),
            col("Readiness Gates", "string", 1, "Pod readiness gates."),
        ],
        "Namespace" => vec![
            NAME,
            col("Status", "string", 0, "The status of the namespace"),
            AGE,
        ],
        "ConfigMap" => vec![
            NAME,
            col("Data", "string", 0, "Number of data entries"),
            AGE,
        ],
        "Secret" => vec![
            NAME,
            col("Type", "string", 0, "The type of the secret"),
            col("Data", "string", 0, "Number of data entries"),
            AGE,
        ],
        "Service" => vec![
            NAME,
            col("Type", "string", 0, "The type of the service."),
            col("Cluster-IP", "string", 0, "The cluster IP of the service."),
            col(
                "External-IP",
                "string",
                0,
                "The external IPs of the service.",
            ),
            col("Port(s)", "string", 0, "The ports of the service."),
            AGE,
            col("Selector", "string", 1, "The selector of the service."),
        ],
        "Deployment" => vec![
            NAME,
            col("Ready", "string", 0, "Number of the pod with ready state"),
            col(
                "Up-to-date",
                "string",
                0,
                "Total number of non-terminated pods targeted by this deployment that have the desired template spec.",
            ),
            col(
                "Available",
                "string",
                0,
                "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.",
            ),
            AGE,
            col(
                "Containers",
                "string",
                1,
                "Names of each container in the template.",
            ),
            col(
                "Images",
                "string",
                1,
                "Images referenced by each container in the template.",
            ),
            col("Selector", "string", 1, "Label selector for pods."),
        ],
        "ReplicaSet" => vec![
            NAME,
            col(
                "Desired",
                "integer",
                0,
                "Replicas is the number of desired replicas.",
            ),
            col(
                "Current",
                "integer",
                0,
                "Replicas is the most recently observed number of replicas.",
            ),
            col(
                "Ready",
                "integer",
                0,
                "The number of ready replicas for this replica set.",
            ),
            AGE,
        ],
        "Node" => vec![
            NAME,
            col("Status", "string", 0, "The status of the node"),
            col("Roles", "string", 0, "The roles of the node"),
            AGE,
            col(
                "Version",
                "string",
                0,
                "Kubelet Version reported by the node.",
            ),
        ],
        "Event" => vec![
            col(
                "Last Seen",
                "string",
                0,
                "Time when this event was last seen.",
            ),
            col(
                "Type",
                "string",
                0,
                "Type of this event (Normal, Warning), new types could be added in the future.",
            ),
            col("Reason", "string", 0, "Reason is why the action was taken."),
            col(
                "Object",
                "string",
                0,
                "The object that this event is about.",
            ),
            col(
                "Message",
                "string",
                0,
                "A human-readable description of the status of this operation.",
            ),
        ],
        "Endpoints" => vec![
            NAME,
            col("Endpoints", "string", 0, "Endpoints of the service"),
            AGE,
        ],
        "EndpointSlice" => vec![
            NAME,
            col(
                "AddressType",
                "string",
                0,
                "The IP protocol family of the endpoints.",
            ),
            col("Ports", "string", 0, "The ports of the endpoints."),
            col("Endpoints", "string", 0, "The addresses of the endpoints."),
            AGE,
        ],
        _ => vec![NAME, AGE],
    }
}

/// Human age, as kubectl prints it ("5s", "3m", "2d").
pub fn age(created: &str, now: SystemTime) -> String {
    let Ok(created) = humantime::parse_rfc3339(created) else {
        return "<unknown>".into();
    };
    let secs = now
        .duration_since(created)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 3 * 3600 => format!("{}m", s / 60),
        s if s < 8 * 3600 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s if s < 8 * 86400 => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn s<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn i(v: &Value, pointer: &str) -> i64 {
    v.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

fn count(v: &Value, pointer: &str) -> usize {
    match v.pointer(pointer) {
        Some(Value::Object(m)) => m.len(),
        Some(Value::Array(a)) => a.len(),
        _ => 0,
    }
}

fn or_none(s: String) -> String {
    if s.is_empty() { "<none>".into() } else { s }
}

fn cells(kind: &str, o: &Value, now: SystemTime) -> Vec<Value> {
    let name = json!(s(o, "/metadata/name"));
    let age_cell = json!(age(s(o, "/metadata/creationTimestamp"), now));
    let containers = |pointer: &str, field: &str| -> String {
        o.pointer(pointer)
            .and_then(Value::as_array)
            .map(|cs| {
                cs.iter()
                    .filter_map(|c| c.get(field).and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default()
    };
    match kind {
        "Pod" => {
            let total = count(o, "/spec/containers");
            let statuses = o
                .pointer("/status/containerStatuses")
                .and_then(Value::as_array);
            let ready = statuses
                .into_iter()
                .flatten()
                .filter(|c| c.get("ready") == Some(&json!(true)))
                .count();
            let restarts: i64 = statuses
                .into_iter()
                .flatten()
                .map(|c| c.get("restartCount").and_then(Value::as_i64).unwrap_or(0))
                .sum();
            let mut status = s(o, "/status/phase").to_string();
            if let Some(reason) = o.pointer("/status/reason").and_then(Value::as_str) {
                status = reason.to_string();
            }
            for c in statuses.into_iter().flatten() {
                if let Some(reason) = c.pointer("/state/waiting/reason").and_then(Value::as_str) {
                    status = reason.to_string();
                } else if let Some(reason) = c
                    .pointer("/state/terminated/reason")
                    .and_then(Value::as_str)
                {
                    status = reason.to_string();
                }
            }
            if o.pointer("/metadata/deletionTimestamp").is_some() {
                status = "Terminating".into();
            }
            vec![
                name,
                json!(format!("{ready}/{total}")),
                json!(status),
                json!(restarts.to_string()),
                age_cell,
                json!(or_none(s(o, "/status/podIP").into())),
                json!(or_none(s(o, "/spec/nodeName").into())),
                json!(or_none(s(o, "/status/nominatedNodeName").into())),
                json!("<none>"),
            ]
        }
        "Namespace" => vec![name, json!(s(o, "/status/phase")), age_cell],
        "ConfigMap" => vec![
            name,
            json!(count(o, "/data") + count(o, "/binaryData")),
            age_cell,
        ],
        "Secret" => vec![
            name,
            json!(s(o, "/type")),
            json!(count(o, "/data")),
            age_cell,
        ],
        "Service" => {
            let ports = o
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .map(|ps| {
                    ps.iter()
                        .map(|p| {
                            let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
                            match p.get("nodePort").and_then(Value::as_i64) {
                                Some(np) => format!("{}:{}/{}", i(p, "/port"), np, proto),
                                None => format!("{}/{}", i(p, "/port"), proto),
                            }
                        })
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            let external = o
                .pointer("/status/loadBalancer/ingress")
                .and_then(Value::as_array)
                .map(|ing| {
                    ing.iter()
                        .filter_map(|x| x.get("ip").and_then(Value::as_str))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .filter(|x| !x.is_empty())
                .unwrap_or_else(|| match s(o, "/spec/type") {
                    "LoadBalancer" => "<pending>".into(),
                    _ => "<none>".into(),
                });
            let selector = map_string(o.pointer("/spec/selector"));
            vec![
                name,
                json!(s(o, "/spec/type")),
                json!(or_none(s(o, "/spec/clusterIP").into())),
                json!(external),
                json!(or_none(ports)),
                age_cell,
                json!(or_none(selector)),
            ]
        }
        "Deployment" => vec![
            name,
            json!(format!(
                "{}/{}",
                i(o, "/status/readyReplicas"),
                i(o, "/spec/replicas")
            )),
            json!(i(o, "/status/updatedReplicas")),
            json!(i(o, "/status/availableReplicas")),
            age_cell,
            json!(containers("/spec/template/spec/containers", "name")),
            json!(containers("/spec/template/spec/containers", "image")),
            json!(map_string(o.pointer("/spec/selector/matchLabels"))),
        ],
        "ReplicaSet" => vec![
            name,
            json!(i(o, "/spec/replicas")),
            json!(i(o, "/status/replicas")),
            json!(i(o, "/status/readyReplicas")),
            age_cell,
        ],
        "Node" => {
            let ready = o
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .and_then(|cs| cs.iter().find(|c| c.get("type") == Some(&json!("Ready"))))
                .map(|c| {
                    if c.get("status") == Some(&json!("True")) {
                        "Ready"
                    } else {
                        "NotReady"
                    }
                })
                .unwrap_or("Unknown");
            vec![
                name,
                json!(ready),
                json!("<none>"),
                age_cell,
                json!(s(o, "/status/nodeInfo/kubeletVersion")),
            ]
        }
        "Event" => vec![
            json!(age(
                o.pointer("/lastTimestamp")
                    .and_then(Value::as_str)
                    .unwrap_or(s(o, "/metadata/creationTimestamp")),
                now
            )),
            json!(s(o, "/type")),
            json!(s(o, "/reason")),
            json!(format!(
                "{}/{}",
                s(o, "/involvedObject/kind").to_lowercase(),
                s(o, "/involvedObject/name")
            )),
            json!(s(o, "/message")),
        ],
        "Endpoints" => {
            let eps: Vec<String> = o
                .get("subsets")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .flat_map(|sub| {
                    let addrs: Vec<String> = sub
                        .get("addresses")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(|a| a.get("ip").and_then(Value::as_str).map(str::to_string))
                        .collect();
                    let ports: Vec<i64> = sub
                        .get("ports")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(|p| p.get("port").and_then(Value::as_i64))
                        .collect();
                    addrs.into_iter().flat_map(move |a| {
                        let ports = ports.clone();
                        if ports.is_empty() {
                            vec![a]
                        } else {
                            ports.into_iter().map(|p| format!("{a}:{p}")).collect()
                        }
                    })
                })
                .collect();
            vec![name, json!(or_none(eps.join(","))), age_cell]
        }
        "EndpointSlice" => {
            let ports: Vec<String> = o
                .get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|p| p.get("port").and_then(Value::as_i64).map(|p| p.to_string()))
                .collect();
            let addrs: Vec<String> = o
                .get("endpoints")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .flat_map(|e| {
                    e.get("addresses")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default()
                })
                .filter_map(|a| a.as_str().map(str::to_string))
                .collect();
            vec![
                name,
                json!(s(o, "/addressType")),
                json!(or_none(ports.join(","))),
                json!(or_none(addrs.join(","))),
                age_cell,
            ]
        }
        _ => vec![name, age_cell],
    }
}

/// The metadata-only form of an object that rows carry (`PartialObjectMetadata`).
pub fn partial_metadata(object: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": object.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

/// A `meta.k8s.io/v1` Table of `objects` of `kind`. `include_object` is the
/// `includeObject` parameter: "None", "Metadata" (default) or "Object".
pub fn table(
    kind: &str,
    objects: &[Value],
    resource_version: &str,
    continue_token: Option<&str>,
    include_object: &str,
) -> Value {
    let now = SystemTime::now();
    let definitions: Vec<Value> = columns(kind)
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "type": c.kind,
                "format": if c.name == "Name" { "name" } else { "" },
                "description": c.description,
                "priority": c.priority,
            })
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let mut row = json!({ "cells": cells(kind, o, now) });
            match include_object {
                "None" => {}
                "Object" => row["object"] = o.clone(),
                _ => row["object"] = partial_metadata(o),
            }
            row
        })
        .collect();
    let mut metadata = json!({ "resourceVersion": resource_version });
    if let Some(token) = continue_token {
        metadata["continue"] = json!(token);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": definitions,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn ages_print_like_kubectl() {
        let created = "2026-01-01T00:00:00Z";
        let base = humantime::parse_rfc3339(created).unwrap();
        assert_eq!(age(created, base + Duration::from_secs(5)), "5s");
        assert_eq!(age(created, base + Duration::from_secs(300)), "5m0s");
        assert_eq!(age(created, base + Duration::from_secs(3 * 86400)), "3d0h");
    }

    #[test]
    fn rows_have_one_cell_per_column() {
        for kind in [
            "Pod",
            "Service",
            "Deployment",
            "Namespace",
            "ConfigMap",
            "Secret",
            "Node",
            "Event",
            "Endpoints",
            "EndpointSlice",
            "ReplicaSet",
            "Lease",
        ] {
            let t = table(
                kind,
                &[json!({"metadata": {"name": "x", "creationTimestamp": "2026-01-01T00:00:00Z"}})],
                "5",
                None,
                "Metadata",
            );
            assert_eq!(
                t["rows"][0]["cells"].as_array().unwrap().len(),
                t["columnDefinitions"].as_array().unwrap().len(),
                "{kind}"
            );
        }
    }
}
