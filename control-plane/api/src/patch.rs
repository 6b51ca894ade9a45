//! The three patch types the apiserver accepts: JSON patch (RFC 6902), JSON merge patch
//! (RFC 7386) and Kubernetes strategic merge patch.
//!
//! Strategic merge patch is written here because no maintained crate implements it. It
//! follows the upstream rules: maps merge recursively, `null` deletes a key, lists with a
//! merge key (containers by `name`, container ports by `containerPort`, service ports by
//! `port`, ...) merge element by element, primitive lists with the merge strategy
//! (`finalizers`) take the union, other lists are replaced, and the directives `$patch`
//! (`replace`, `merge`, `delete`), `$retainKeys`, `$setElementOrder/<field>` and
//! `$deleteFromPrimitiveList/<field>` are honoured.

use serde_json::{Map, Value};

/// Why a patch could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// The patch document does not parse or has the wrong shape.
    #[error("invalid patch: {0}")]
    Invalid(String),
    /// A JSON patch operation failed (missing path, failed test, ...).
    #[error("the JSON patch could not be applied: {0}")]
    Failed(String),
}

/// The patch types, by their content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// `application/json-patch+json`.
    Json,
    /// `application/merge-patch+json`.
    Merge,
    /// `application/strategic-merge-patch+json`.
    Strategic,
    /// `application/apply-patch+yaml` (server-side apply).
    Apply,
}

impl PatchType {
    /// Recognises a `Content-Type` value.
    pub fn from_content_type(content_type: &str) -> Option<Self> {
        let media = content_type.split(';').next().unwrap_or_default().trim();
        match media {
            "application/json-patch+json" => Some(PatchType::Json),
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => {
                Some(PatchType::Apply)
            }
            _ => None,
        }
    }
}

/// Applies a patch document to `original`.
pub fn apply(kind: PatchType, original: &Value, patch: &[u8]) -> Result<Value, PatchError> {
    match kind {
        PatchType::Json => {
            let ops: json_patch::Patch =
                serde_json::from_slice(patch).map_err(|e| PatchError::Invalid(e.to_string()))?;
            let mut doc = original.clone();
            json_patch::patch(&mut doc, &ops).map_err(|e| PatchError::Failed(e.to_string()))?;
            Ok(doc)
        }
        PatchType::Merge => {
            let patch: Value =
                serde_json::from_slice(patch).map_err(|e| PatchError::Invalid(e.to_string()))?;
            if !patch.is_object() {
                return Err(PatchError::Invalid(
                    "a merge patch must be a JSON object".into(),
                ));
            }
            let mut doc = original.clone();
            json_patch::merge(&mut doc, &patch);
            Ok(doc)
        }
        PatchType::Strategic => {
            let patch: Value =
                serde_json::from_slice(patch).map_err(|e| PatchError::Invalid(e.to_string()))?;
            strategic_merge(original, &patch)
        }
        PatchType::Apply => Err(PatchError::Invalid(
            "server-side apply is not supported yet".into(),
        )),
    }
}

/// How a list field merges.
enum ListStrategy {
    /// Elements are maps identified by this key.
    MergeKey(&'static str),
    /// Primitive list merged as a set union.
    Union,
    /// Replaced whole.
    Replace,
}

fn list_strategy(field: &str, original: &[Value], patch: &[Value]) -> ListStrategy {
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "resourceClaims" => ListStrategy::MergeKey("name"),
        "volumeMounts" => ListStrategy::MergeKey("mountPath"),
        "volumeDevices" => ListStrategy::MergeKey("devicePath"),
        "conditions" => ListStrategy::MergeKey("type"),
        "ownerReferences" => ListStrategy::MergeKey("uid"),
        "hostAliases" => ListStrategy::MergeKey("ip"),
        "topologySpreadConstraints" => ListStrategy::MergeKey("topologyKey"),
        "finalizers" => ListStrategy::Union,
        "ports" => {
            let container = original
                .iter()
                .chain(patch)
                .any(|p| p.get("containerPort").is_some());
            if container {
                ListStrategy::MergeKey("containerPort")
            } else {
                ListStrategy::MergeKey("port")
            }
        }
        _ => ListStrategy::Replace,
    }
}

const SET_ORDER: &str = "$setElementOrder/";
const DELETE_PRIMITIVE: &str = "$deleteFromPrimitiveList/";

/// Applies a strategic merge patch.
pub fn strategic_merge(original: &Value, patch: &Value) -> Result<Value, PatchError> {
    let Value::Object(patch) = patch else {
        return Err(PatchError::Invalid(
            "a strategic merge patch must be a JSON object".into(),
        ));
    };
    match merge_map(original.as_object(), patch)? {
        Some(map) => Ok(Value::Object(map)),
        None => Ok(Value::Object(Map::new())),
    }
}

/// Merges `patch` into `original`; `None` when the patch deletes the map.
fn merge_map(
    original: Option<&Map<String, Value>>,
    patch: &Map<String, Value>,
) -> Result<Option<Map<String, Value>>, PatchError> {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("delete") => return Ok(None),
        Some("replace") => {
            let mut out = patch.clone();
            out.remove("$patch");
            strip_directives(&mut out);
            return Ok(Some(out));
        }
        Some("merge") | None => {}
        Some(other) => {
            return Err(PatchError::Invalid(format!(
                "unknown $patch directive {other:?}"
            )));
        }
    }
    let mut out = original.cloned().unwrap_or_default();
    let mut orders = Vec::new();
    for (key, value) in patch {
        if key == "$patch" || key == "$retainKeys" {
            continue;
        }
        if let Some(field) = key.strip_prefix(SET_ORDER) {
            orders.push((field.to_string(), value.clone()));
            continue;
        }
        if let Some(field) = key.strip_prefix(DELETE_PRIMITIVE) {
            let remove = value.as_array().cloned().unwrap_or_default();
            if let Some(Value::Array(list)) = out.get_mut(field) {
                list.retain(|v| !remove.contains(v));
            }
            continue;
        }
        match value {
            Value::Null => {
                out.remove(key);
            }
            Value::Object(sub) => {
                let merged = merge_map(out.get(key).and_then(Value::as_object), sub)?;
                match merged {
                    Some(m) => {
                        out.insert(key.clone(), Value::Object(m));
                    }
                    None => {
                        out.remove(key);
                    }
                }
            }
            Value::Array(items) => {
                let empty = Vec::new();
                let current = out.get(key).and_then(Value::as_array).unwrap_or(&empty);
                let merged = merge_list(key, current, items)?;
                out.insert(key.clone(), Value::Array(merged));
            }
            other => {
                out.insert(key.clone(), other.clone());
            }
        }
    }
    if let Some(retain) = patch.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = retain.iter().filter_map(Value::as_str).collect();
        out.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (field, order) in orders {
        if let (Some(Value::Array(list)), Some(order)) = (out.get_mut(&field), order.as_array()) {
            reorder(&field, list, order);
        }
    }
    Ok(Some(out))
}

fn strip_directives(map: &mut Map<String, Value>) {
    map.retain(|k, _| {
        !k.starts_with(SET_ORDER) && !k.starts_with(DELETE_PRIMITIVE) && k != "$retainKeys"
    });
}

fn merge_list(field: &str, original: &[Value], patch: &[Value]) -> Result<Vec<Value>, PatchError> {
    if patch
        .iter()
        .any(|p| p.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        return Ok(patch
            .iter()
            .filter(|p| p.get("$patch").is_none())
            .cloned()
            .collect());
    }
    match list_strategy(field, original, patch) {
        ListStrategy::Replace => Ok(patch.to_vec()),
        ListStrategy::Union => {
            let mut out = original.to_vec();
            for item in patch {
                if !out.contains(item) {
                    out.push(item.clone());
                }
            }
            Ok(out)
        }
        ListStrategy::MergeKey(merge_key) => {
            let mut out = original.to_vec();
            for item in patch {
                let Value::Object(item_map) = item else {
                    return Err(PatchError::Invalid(format!(
                        "elements of {field} must be objects with {merge_key:?}"
                    )));
                };
                let Some(id) = item_map.get(merge_key) else {
                    return Err(PatchError::Invalid(format!(
                        "an element of {field} lacks its merge key {merge_key:?}"
                    )));
                };
                let position = out.iter().position(|o| o.get(merge_key) == Some(id));
                let delete = item_map.get("$patch").and_then(Value::as_str) == Some("delete");
                match (position, delete) {
                    (Some(i), true) => {
                        out.remove(i);
                    }
                    (None, true) => {}
                    (Some(i), false) => {
                        if let Some(merged) = merge_map(out[i].as_object(), item_map)? {
                            out[i] = Value::Object(merged);
                        }
                    }
                    (None, false) => {
                        if let Some(merged) = merge_map(None, item_map)? {
                            out.push(Value::Object(merged));
                        }
                    }
                }
            }
            Ok(out)
        }
    }
}

/// Orders `list` as `$setElementOrder` asks; elements not named keep their place after.
fn reorder(field: &str, list: &mut Vec<Value>, order: &[Value]) {
    let key = match list_strategy(field, list, &[]) {
        ListStrategy::MergeKey(k) => Some(k),
        _ => None,
    };
    let ident = |v: &Value| -> Value {
        match key {
            Some(k) => v.get(k).cloned().unwrap_or(Value::Null),
            None => v.clone(),
        }
    };
    let mut ordered = Vec::with_capacity(list.len());
    for wanted in order {
        let id = ident(wanted);
        if let Some(i) = list.iter().position(|v| ident(v) == id) {
            ordered.push(list.remove(i));
        }
    }
    ordered.append(list);
    *list = ordered;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn smp(original: Value, patch: Value) -> Value {
        strategic_merge(&original, &patch).unwrap()
    }

    #[test]
    fn containers_merge_by_name_and_null_deletes() {
        let original = json!({"spec": {"containers": [
            {"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}]},
            {"name": "b", "image": "b:1"}
        ]}, "metadata": {"labels": {"app": "web", "old": "x"}}});
        let patch = json!({"spec": {"containers": [
            {"name": "a", "image": "a:2", "env": [{"name": "Y", "value": "2"}]},
            {"name": "c", "image": "c:1"}
        ]}, "metadata": {"labels": {"old": null, "new": "y"}}});
        let out = smp(original, patch);
        assert_eq!(out["spec"]["containers"][0]["image"], "a:2");
        assert_eq!(
            out["spec"]["containers"][0]["env"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert_eq!(out["spec"]["containers"][1]["name"], "b");
        assert_eq!(out["spec"]["containers"][2]["name"], "c");
        assert_eq!(out["metadata"]["labels"], json!({"app": "web", "new": "y"}));
    }

    #[test]
    fn directives() {
        let original = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]},
            "metadata": {"finalizers": ["x", "y"]}, "data": {"k": "v", "j": "w"}});
        let out = smp(
            original.clone(),
            json!({"spec": {"containers": [{"name": "a", "$patch": "delete"}]}}),
        );
        assert_eq!(out["spec"]["containers"], json!([{"name": "b"}]));
        let out = smp(
            original.clone(),
            json!({"spec": {"containers": [{"name": "z"}, {"$patch": "replace"}]}}),
        );
        assert_eq!(out["spec"]["containers"], json!([{"name": "z"}]));
        let out = smp(
            original.clone(),
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["x"]}}),
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["y"]));
        let out = smp(original.clone(), json!({"metadata": {"finalizers": ["z"]}}));
        assert_eq!(out["metadata"]["finalizers"], json!(["x", "y", "z"]));
        let out = smp(
            original.clone(),
            json!({"data": {"$patch": "replace", "only": "1"}}),
        );
        assert_eq!(out["data"], json!({"only": "1"}));
        let out = smp(
            original.clone(),
            json!({"data": {"$retainKeys": ["k"], "k": "v2"}}),
        );
        assert_eq!(out["data"], json!({"k": "v2"}));
        let out = smp(
            original,
            json!({"spec": {"$setElementOrder/containers": [{"name": "b"}, {"name": "a"}]}}),
        );
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "b"}, {"name": "a"}])
        );
    }

    #[test]
    fn service_and_container_ports_use_their_keys() {
        let svc = json!({"spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443}]}});
        let out = smp(
            svc,
            json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}]}}),
        );
        assert_eq!(
            out["spec"]["ports"][0],
            json!({"port": 80, "name": "http", "targetPort": 8080})
        );
        assert_eq!(out["spec"]["ports"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn json_and_merge_patches() {
        let doc = json!({"a": 1, "b": {"c": 2}});
        let out = apply(
            PatchType::Json,
            &doc,
            br#"[{"op":"replace","path":"/a","value":5}]"#,
        )
        .unwrap();
        assert_eq!(out["a"], 5);
        assert!(
            apply(
                PatchType::Json,
                &doc,
                br#"[{"op":"test","path":"/a","value":9}]"#
            )
            .is_err()
        );
        let out = apply(PatchType::Merge, &doc, br#"{"b":{"c":null,"d":3}}"#).unwrap();
        assert_eq!(out["b"], json!({"d": 3}));
        assert!(apply(PatchType::Merge, &doc, b"[1]").is_err());
    }
}
