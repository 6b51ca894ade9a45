//! Defaulting on create, as upstream does for the fields clients rely on.

use serde_json::{Value, json};

fn set_default(object: &mut Value, pointer: &str, value: Value) {
    if object.pointer(pointer).is_some() {
        return;
    }
    let mut parts: Vec<&str> = pointer.trim_start_matches('/').split('/').collect();
    let Some(last) = parts.pop() else { return };
    let mut at = object;
    for part in parts {
        if !at.is_object() {
            return;
        }
        at = at
            .as_object_mut()
            .map(|m| m.entry(part.to_string()).or_insert_with(|| json!({})))
            .expect("checked is_object");
    }
    if let Some(map) = at.as_object_mut() {
        map.insert(last.to_string(), value);
    }
}

fn default_containers(spec: &mut Value) {
    for list in ["containers", "initContainers"] {
        let Some(Value::Array(containers)) = spec.get_mut(list) else {
            continue;
        };
        for c in containers {
            let image = c.get("image").and_then(Value::as_str).unwrap_or_default();
            let tag_latest = match image.rsplit_once(':') {
                Some((_, tag)) if !tag.contains('/') => tag == "latest",
                _ => !image.contains('@'),
            };
            let policy = if tag_latest { "Always" } else { "IfNotPresent" };
            set_default(c, "/imagePullPolicy", json!(policy));
            set_default(c, "/terminationMessagePath", json!("/dev/termination-log"));
            set_default(c, "/terminationMessagePolicy", json!("File"));
            set_default(c, "/resources", json!({}));
            if let Some(Value::Array(ports)) = c.get_mut("ports") {
                for p in ports {
                    set_default(p, "/protocol", json!("TCP"));
                }
            }
        }
    }
}

fn default_pod_spec(spec: &mut Value) {
    set_default(spec, "/restartPolicy", json!("Always"));
    set_default(spec, "/dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "/schedulerName", json!("default-scheduler"));
    set_default(spec, "/terminationGracePeriodSeconds", json!(30));
    set_default(spec, "/securityContext", json!({}));
    set_default(spec, "/enableServiceLinks", json!(true));
    default_containers(spec);
}

/// Conversions upstream applies on every write: a Secret's `stringData` is merged into
/// `data` (base64) and dropped.
pub fn normalize(kind: &str, object: &mut Value) {
    use base64::Engine;
    if kind != "Secret" {
        return;
    }
    let Some(string_data) = object.as_object_mut().and_then(|o| o.remove("stringData")) else {
        return;
    };
    let Value::Object(entries) = string_data else {
        return;
    };
    if !object.get("data").is_some_and(Value::is_object) {
        object["data"] = json!({});
    }
    if let Some(data) = object.get_mut("data").and_then(Value::as_object_mut) {
        for (key, value) in entries {
            let text = value.as_str().unwrap_or_default();
            data.insert(
                key,
                json!(base64::engine::general_purpose::STANDARD.encode(text)),
            );
        }
    }
}

/// Fills defaults into a new object of `kind`.
pub fn apply(kind: &str, object: &mut Value) {
    match kind {
        "Namespace" => {
            set_default(object, "/spec/finalizers", json!(["kubernetes"]));
            set_default(object, "/status/phase", json!("Active"));
        }
        "Pod" => {
            if let Some(spec) = object.get_mut("spec") {
                default_pod_spec(spec);
            }
            set_default(object, "/status/phase", json!("Pending"));
            set_default(object, "/status/qosClass", json!("BestEffort"));
        }
        "Secret" => {
            // An empty type is Opaque too (protobuf clients send "").
            if object.get("type").and_then(Value::as_str) == Some("") {
                object["type"] = json!("Opaque");
            }
            set_default(object, "/type", json!("Opaque"));
        }
        "Service" => {
            set_default(object, "/spec/type", json!("ClusterIP"));
            set_default(object, "/spec/sessionAffinity", json!("None"));
            set_default(object, "/spec/internalTrafficPolicy", json!("Cluster"));
            set_default(object, "/spec/ipFamilies", json!(["IPv4"]));
            set_default(object, "/spec/ipFamilyPolicy", json!("SingleStack"));
            if let Some(Value::Array(ports)) = object.pointer_mut("/spec/ports") {
                for p in ports {
                    set_default(p, "/protocol", json!("TCP"));
                    if let Some(port) = p.get("port").cloned() {
                        set_default(p, "/targetPort", port);
                    }
                }
            }
            set_default(object, "/status/loadBalancer", json!({}));
        }
        "Deployment" | "ReplicaSet" | "DaemonSet" => {
            if kind != "DaemonSet" {
                set_default(object, "/spec/replicas", json!(1));
            }
            set_default(object, "/spec/revisionHistoryLimit", json!(10));
            if kind == "Deployment" {
                set_default(object, "/spec/progressDeadlineSeconds", json!(600));
                // Field by field, so a partial strategy (`strategy: {}` from
                // `kubectl create deployment`) is completed as upstream does.
                set_default(object, "/spec/strategy/type", json!("RollingUpdate"));
                if object.pointer("/spec/strategy/type") == Some(&json!("RollingUpdate")) {
                    set_default(
                        object,
                        "/spec/strategy/rollingUpdate/maxUnavailable",
                        json!("25%"),
                    );
                    set_default(
                        object,
                        "/spec/strategy/rollingUpdate/maxSurge",
                        json!("25%"),
                    );
                }
            }
            if kind == "DaemonSet" {
                set_default(object, "/spec/updateStrategy/type", json!("RollingUpdate"));
                if object.pointer("/spec/updateStrategy/type") == Some(&json!("RollingUpdate")) {
                    set_default(
                        object,
                        "/spec/updateStrategy/rollingUpdate/maxUnavailable",
                        json!(1),
                    );
                    set_default(
                        object,
                        "/spec/updateStrategy/rollingUpdate/maxSurge",
                        json!(0),
                    );
                }
            }
            if let Some(spec) = object.pointer_mut("/spec/template/spec") {
                default_pod_spec(spec);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_update_strategies_are_completed() {
        let mut deploy = json!({"spec": {"strategy": {}}});
        apply("Deployment", &mut deploy);
        assert_eq!(
            deploy["spec"]["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}})
        );
        let mut recreate = json!({"spec": {"strategy": {"type": "Recreate"}}});
        apply("Deployment", &mut recreate);
        assert_eq!(recreate["spec"]["strategy"], json!({"type": "Recreate"}));
        let mut ds =
            json!({"spec": {"updateStrategy": {"rollingUpdate": {"maxUnavailable": "10%"}}}});
        apply("DaemonSet", &mut ds);
        assert_eq!(
            ds["spec"]["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "10%", "maxSurge": 0}})
        );
    }

    #[test]
    fn secret_string_data_becomes_data() {
        let mut secret = json!({"data": {"a": "eA=="}, "stringData": {"b": "hunter2"}});
        normalize("Secret", &mut secret);
        assert_eq!(secret, json!({"data": {"a": "eA==", "b": "aHVudGVyMg=="}}));
    }

    #[test]
    fn service_ports_default_protocol_and_target_port() {
        let mut svc = json!({"spec": {"ports": [{"port": 80}]}});
        apply("Service", &mut svc);
        assert_eq!(
            svc["spec"]["ports"][0],
            json!({"port": 80, "protocol": "TCP", "targetPort": 80})
        );
        assert_eq!(svc["spec"]["type"], "ClusterIP");
    }

    #[test]
    fn pods_get_pull_policy_by_tag() {
        let mut pod = json!({"spec": {"containers": [{"name": "a", "image": "nginx"}, {"name": "b", "image": "nginx:1.27"}]}});
        apply("Pod", &mut pod);
        assert_eq!(pod["spec"]["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(
            pod["spec"]["containers"][1]["imagePullPolicy"],
            "IfNotPresent"
        );
        assert_eq!(pod["status"]["phase"], "Pending");
    }
}
