//! OpenAPI v3 documents (`/openapi/v3` and one per group version), generated from the
//! registry and `k8s-openapi`'s schemas. They carry what kubectl reads: the schemas with
//! `x-kubernetes-group-version-kind` (for `kubectl explain`) and, per resource, the PATCH
//! operation with its `fieldValidation` parameter (so `kubectl apply` leaves validation
//! to the server's `fieldValidation=Strict`).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use ferrokube_api::registry::{self, Resource};
use schemars::JsonSchema;
use schemars::generate::{SchemaGenerator, SchemaSettings};
use serde_json::{Map, Value, json};

/// A served group version's document and the hash kubectl caches it by.
#[derive(Debug)]
struct Doc {
    path: String,
    body: Value,
    hash: String,
}

fn add<T: JsonSchema>(generator: &mut SchemaGenerator) -> String {
    generator.subschema_for::<T>();
    T::schema_name().into_owned()
}

fn schema_for(generator: &mut SchemaGenerator, kind: &str) -> Option<String> {
    use k8s_openapi::api::{
        apps::v1 as apps, coordination::v1 as coord, core::v1 as core, discovery::v1 as disc,
    };
    Some(match kind {
        "Namespace" => add::<core::Namespace>(generator),
        "Pod" => add::<core::Pod>(generator),
        "Service" => add::<core::Service>(generator),
        "Endpoints" => add::<core::Endpoints>(generator),
        "Node" => add::<core::Node>(generator),
        "ConfigMap" => add::<core::ConfigMap>(generator),
        "Secret" => add::<core::Secret>(generator),
        "Event" => add::<core::Event>(generator),
        "ServiceAccount" => add::<core::ServiceAccount>(generator),
        "Deployment" => add::<apps::Deployment>(generator),
        "ReplicaSet" => add::<apps::ReplicaSet>(generator),
        "DaemonSet" => add::<apps::DaemonSet>(generator),
        "EndpointSlice" => add::<disc::EndpointSlice>(generator),
        "Lease" => add::<coord::Lease>(generator),
        _ => return None,
    })
}

fn query_param(name: &str) -> Value {
    json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}})
}

fn paths_for(r: &Resource, schema: &str) -> Map<String, Value> {
    let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
    let base = if r.group.is_empty() {
        format!("/api/{}", r.version)
    } else {
        format!("/apis/{}/{}", r.group, r.version)
    };
    let collection = if r.namespaced {
        format!("{base}/namespaces/{{namespace}}/{}", r.plural)
    } else {
        format!("{base}/{}", r.plural)
    };
    let object = format!("{collection}/{{name}}");
    let reference = json!({"$ref": format!("#/components/schemas/{schema}")});
    let ok = |description: &str| json!({"200": {"description": description, "content": {"application/json": {"schema": reference.clone()}}}});
    let op = |action: &str, id: &str, params: Vec<Value>, responses: Value| {
        json!({
            "operationId": format!("{id}{}", r.kind),
            "parameters": params,
            "responses": responses,
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": gvk.clone(),
        })
    };
    let write_params = || {
        vec![
            query_param("dryRun"),
            query_param("fieldManager"),
            query_param("fieldValidation"),
        ]
    };
    let mut paths = Map::new();
    paths.insert(collection, json!({
        "get": op("list", "list", vec![query_param("labelSelector"), query_param("fieldSelector"), query_param("limit"), query_param("continue"), query_param("resourceVersion"), query_param("watch")], ok("OK")),
        "post": op("post", "create", write_params(), ok("OK")),
        "delete": op("deletecollection", "deleteCollection", vec![query_param("labelSelector")], ok("OK")),
    }));
    let mut patch_params = write_params();
    patch_params.push(query_param("force"));
    paths.insert(object, json!({
        "get": op("get", "read", vec![], ok("OK")),
        "put": op("put", "replace", write_params(), ok("OK")),
        "patch": op("patch", "patch", patch_params, ok("OK")),
        "delete": op("delete", "delete", vec![query_param("gracePeriodSeconds"), query_param("propagationPolicy")], ok("OK")),
    }));
    paths
}

/// A hook adding schemas beyond the served kinds' to a generator.
pub(crate) type ExtraSchemas = fn(&mut SchemaGenerator);

/// Every schema definition reachable from the served kinds and from what `extra` adds,
/// by definition name (`io.k8s.api.core.v1.Pod`).
pub(crate) fn definitions_with(extra: ExtraSchemas) -> Map<String, Value> {
    let mut generator = SchemaSettings::openapi3().into_generator();
    for r in registry::RESOURCES {
        schema_for(&mut generator, r.kind);
    }
    extra(&mut generator);
    generator.take_definitions(true)
}

fn build() -> Vec<Doc> {
    let mut gvs: Vec<(&str, &str)> = vec![("", "v1")];
    gvs.extend(registry::groups());
    gvs.into_iter()
        .map(|(group, version)| {
            let mut generator = SchemaSettings::openapi3().into_generator();
            let mut paths = Map::new();
            let mut kinds = BTreeMap::new();
            for r in registry::in_group_version(group, version) {
                if let Some(schema) = schema_for(&mut generator, r.kind) {
                    paths.extend(paths_for(r, &schema));
                    kinds.insert(
                        schema,
                        json!([{"group": r.group, "version": r.version, "kind": r.kind}]),
                    );
                }
            }
            let mut schemas = generator.take_definitions(true);
            for (name, gvk) in kinds {
                if let Some(Value::Object(schema)) = schemas.get_mut(&name) {
                    schema.insert("x-kubernetes-group-version-kind".into(), gvk);
                }
            }
            let body = json!({
                "openapi": "3.0.0",
                "info": {"title": "Kubernetes", "version": "v1.35.0"},
                "paths": paths,
                "components": {"schemas": schemas},
            });
            let path = if group.is_empty() {
                format!("api/{version}")
            } else {
                format!("apis/{group}/{version}")
            };
            // FNV-1a over the document: a stable content hash for kubectl's cache.
            let mut hash: u64 = 0xcbf29ce484222325;
            for b in serde_json::to_vec(&body).unwrap_or_default() {
                hash ^= u64::from(b);
                hash = hash.wrapping_mul(0x100000001b3);
            }
            Doc {
                path,
                body,
                hash: format!("{hash:016X}"),
            }
        })
        .collect()
}

fn docs() -> &'static [Doc] {
    static DOCS: OnceLock<Vec<Doc>> = OnceLock::new();
    DOCS.get_or_init(build)
}

/// `/openapi/v3`: the index of group-version documents.
pub fn index() -> Value {
    let paths: Map<String, Value> = docs()
        .iter()
        .map(|d| {
            (
                d.path.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{}?hash={}", d.path, d.hash)}),
            )
        })
        .collect();
    json!({"paths": paths})
}

/// `/openapi/v3/<path>`: one group version's document.
pub fn document(path: &str) -> Option<&'static Value> {
    docs().iter().find(|d| d.path == path).map(|d| &d.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_carry_gvk_schemas_and_field_validation() {
        let apps = document("apis/apps/v1").unwrap();
        let schema = &apps["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(
            schema["x-kubernetes-group-version-kind"][0]["kind"],
            "Deployment"
        );
        let patch =
            &apps["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert!(
            patch["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "fieldValidation")
        );
        // Every reference resolves inside the document.
        let text = serde_json::to_string(apps).unwrap();
        for piece in text.split("#/components/schemas/").skip(1) {
            let name = piece.split('"').next().unwrap();
            assert!(
                apps["components"]["schemas"].get(name).is_some(),
                "dangling ref {name}"
            );
        }
        assert!(
            index()["paths"]["api/v1"]["serverRelativeURL"]
                .as_str()
                .unwrap()
                .starts_with("/openapi/v3/api/v1?hash=")
        );
    }
}
