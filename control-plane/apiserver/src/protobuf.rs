//! Protobuf request bodies (`application/vnd.kubernetes.protobuf`). kubectl's typed
//! client sends them for its imperative generators (`kubectl create namespace`,
//! `create configmap`, `create secret generic`, `create serviceaccount`); they are
//! decoded with `k8s-pb` and turned into the JSON form the rest of the server handles.
//! Every field of those kinds is carried over except server-owned metadata (timestamps,
//! generation, selfLink, managedFields), which the server sets itself. Other kinds are
//! refused with 415 naming what is supported; responses are JSON, which client-go accepts
//! whatever it sent.

use std::collections::BTreeMap;

use base64::Engine;
use ferrokube_api::ApiError;
use k8s_pb::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use prost::Message;
use serde_json::{Map, Value, json};

/// The four bytes that open every Kubernetes protobuf envelope.
const MAGIC: &[u8] = b"k8s\0";

fn bad(message: impl std::fmt::Display) -> ApiError {
    ApiError::BadRequest(format!("error decoding protobuf: {message}"))
}

fn b64(bytes: &[u8]) -> Value {
    json!(base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn meta(meta: Option<ObjectMeta>) -> Value {
    let Some(m) = meta else { return json!({}) };
    let mut out = Map::new();
    let mut put = |key: &str, value: Option<Value>| {
        if let Some(v) = value {
            out.insert(key.into(), v);
        }
    };
    put("name", m.name.map(Value::from));
    put("generateName", m.generate_name.map(Value::from));
    put("namespace", m.namespace.map(Value::from));
    put("uid", m.uid.map(Value::from));
    put("resourceVersion", m.resource_version.map(Value::from));
    put("labels", (!m.labels.is_empty()).then(|| json!(m.labels)));
    put(
        "annotations",
        (!m.annotations.is_empty()).then(|| json!(m.annotations)),
    );
    put(
        "finalizers",
        (!m.finalizers.is_empty()).then(|| json!(m.finalizers)),
    );
    let owners: Vec<Value> = m
        .owner_references
        .into_iter()
        .map(|o| {
            json!({
                "apiVersion": o.api_version, "kind": o.kind, "name": o.name, "uid": o.uid,
                "controller": o.controller, "blockOwnerDeletion": o.block_owner_deletion,
            })
        })
        .collect();
    put(
        "ownerReferences",
        (!owners.is_empty()).then(|| json!(owners)),
    );
    Value::Object(out)
}

fn bytes_map(map: BTreeMap<String, Vec<u8>>) -> Value {
    Value::Object(map.into_iter().map(|(k, v)| (k, b64(&v))).collect())
}

/// Decodes an enveloped protobuf object into its JSON form.
pub fn decode(body: &[u8]) -> Result<Value, ApiError> {
    use k8s_pb::api::core::v1 as core;
    let raw = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("missing the k8s envelope"))?;
    let unknown = k8s_pb::apimachinery::pkg::runtime::Unknown::decode(raw).map_err(bad)?;
    let type_meta = unknown.type_meta.unwrap_or_default();
    let (api_version, kind) = (
        type_meta.api_version.unwrap_or_default(),
        type_meta.kind.unwrap_or_default(),
    );
    let raw = unknown.raw.unwrap_or_default();
    let mut object = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => {
            let ns = core::Namespace::decode(raw.as_slice()).map_err(bad)?;
            let mut o = json!({"metadata": meta(ns.metadata)});
            if let Some(spec) = ns.spec.filter(|spec| !spec.finalizers.is_empty()) {
                o["spec"] = json!({"finalizers": spec.finalizers});
            }
            o
        }
        ("v1", "ConfigMap") => {
            let cm = core::ConfigMap::decode(raw.as_slice()).map_err(bad)?;
            let mut o = json!({"metadata": meta(cm.metadata)});
            if !cm.data.is_empty() {
                o["data"] = json!(cm.data);
            }
            if !cm.binary_data.is_empty() {
                o["binaryData"] = bytes_map(cm.binary_data);
            }
            if let Some(immutable) = cm.immutable {
                o["immutable"] = json!(immutable);
            }
            o
        }
        ("v1", "Secret") => {
            let secret = core::Secret::decode(raw.as_slice()).map_err(bad)?;
            let mut o = json!({"metadata": meta(secret.metadata)});
            if !secret.data.is_empty() {
                o["data"] = bytes_map(secret.data);
            }
            if !secret.string_data.is_empty() {
                o["stringData"] = json!(secret.string_data);
            }
            if let Some(t) = secret.r#type.filter(|t| !t.is_empty()) {
                o["type"] = json!(t);
            }
            if let Some(immutable) = secret.immutable {
                o["immutable"] = json!(immutable);
            }
            o
        }
        ("v1", "ServiceAccount") => {
            let sa = core::ServiceAccount::decode(raw.as_slice()).map_err(bad)?;
            let mut o = json!({"metadata": meta(sa.metadata)});
            if let Some(automount) = sa.automount_service_account_token {
                o["automountServiceAccountToken"] = json!(automount);
            }
            if !sa.secrets.is_empty() {
                let secrets: Vec<Value> = sa
                    .secrets
                    .into_iter()
                    .map(|r| {
                        let mut m = Map::new();
                        for (key, value) in [
                            ("kind", r.kind),
                            ("namespace", r.namespace),
                            ("name", r.name),
                            ("uid", r.uid),
                            ("apiVersion", r.api_version),
                            ("resourceVersion", r.resource_version),
                            ("fieldPath", r.field_path),
                        ] {
                            if let Some(v) = value.filter(|v| !v.is_empty()) {
                                m.insert(key.into(), json!(v));
                            }
                        }
                        Value::Object(m)
                    })
                    .collect();
                o["secrets"] = json!(secrets);
            }
            if !sa.image_pull_secrets.is_empty() {
                let names: Vec<Value> = sa
                    .image_pull_secrets
                    .into_iter()
                    .map(|r| json!({"name": r.name.unwrap_or_default()}))
                    .collect();
                o["imagePullSecrets"] = json!(names);
            }
            o
        }
        _ => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "protobuf bodies are accepted for v1 Namespace, ConfigMap, Secret and ServiceAccount; send {api_version} {kind} as application/json or application/yaml"
            )));
        }
    };
    object["apiVersion"] = json!(api_version);
    object["kind"] = json!(kind);
    Ok(object)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_pb::api::core::v1 as core;
    use k8s_pb::apimachinery::pkg::runtime::{TypeMeta, Unknown};

    fn envelope(kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let unknown = Unknown {
            type_meta: Some(TypeMeta {
                api_version: Some("v1".into()),
                kind: Some(kind.into()),
            }),
            raw: Some(raw),
            content_encoding: Some(String::new()),
            content_type: Some(String::new()),
        };
        let mut out = MAGIC.to_vec();
        out.extend(unknown.encode_to_vec());
        out
    }

    #[test]
    fn secrets_and_configmaps_decode_to_their_json_form() {
        let secret = core::Secret {
            metadata: Some(ObjectMeta {
                name: Some("s".into()),
                labels: [("a".to_string(), "b".to_string())].into(),
                ..Default::default()
            }),
            data: [("pw".to_string(), b"hunter2".to_vec())].into(),
            r#type: Some("Opaque".into()),
            ..Default::default()
        };
        let json = decode(&envelope("Secret", secret.encode_to_vec())).unwrap();
        assert_eq!(
            json,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "labels": {"a": "b"}}, "data": {"pw": "aHVudGVyMg=="}, "type": "Opaque"})
        );
        let cm = core::ConfigMap {
            metadata: Some(ObjectMeta {
                name: Some("c".into()),
                ..Default::default()
            }),
            data: [("k".to_string(), "v".to_string())].into(),
            ..Default::default()
        };
        assert_eq!(
            decode(&envelope("ConfigMap", cm.encode_to_vec())).unwrap()["data"],
            json!({"k": "v"})
        );
    }

    #[test]
    fn service_accounts_and_namespaces_keep_their_references_and_finalizers() {
        let sa = core::ServiceAccount {
            metadata: Some(ObjectMeta {
                name: Some("bot".into()),
                ..Default::default()
            }),
            secrets: vec![core::ObjectReference {
                name: Some("token".into()),
                kind: Some(String::new()),
                ..Default::default()
            }],
            image_pull_secrets: vec![core::LocalObjectReference {
                name: Some("regcred".into()),
            }],
            ..Default::default()
        };
        let json = decode(&envelope("ServiceAccount", sa.encode_to_vec())).unwrap();
        assert_eq!(json["secrets"], json!([{"name": "token"}]));
        assert_eq!(json["imagePullSecrets"], json!([{"name": "regcred"}]));
        let ns = core::Namespace {
            metadata: Some(ObjectMeta {
                name: Some("n".into()),
                ..Default::default()
            }),
            spec: Some(core::NamespaceSpec {
                finalizers: vec!["example.com/x".into()],
            }),
            ..Default::default()
        };
        assert_eq!(
            decode(&envelope("Namespace", ns.encode_to_vec())).unwrap()["spec"]["finalizers"],
            json!(["example.com/x"])
        );
    }

    #[test]
    fn unsupported_kinds_and_garbage_are_refused() {
        assert!(matches!(
            decode(&envelope("Pod", vec![])),
            Err(ApiError::UnsupportedMediaType(_))
        ));
        assert!(matches!(
            decode(b"not protobuf"),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            decode(b"k8s\0\xff\xff\xff"),
            Err(ApiError::BadRequest(_))
        ));
    }
}
