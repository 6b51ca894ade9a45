//! The REST handlers: path parsing, the verbs on every registered resource and
//! subresource, and list/watch.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use ferrokube_api::patch::{self, PatchType};
use ferrokube_api::registry::{self, Resource, Subresource};
use ferrokube_api::selector::{FieldSelector, LabelSelector};
use ferrokube_api::validate::{self, Refusal};
use ferrokube_api::{ApiError, ApiResult, Cause, defaults, table};
use ferrokube_store::{EventKind, KeyValue, RangeRequest, Store, StoreError};
use futures::StreamExt;
use serde_json::{Value, json};

use crate::discovery;

/// Largest request body accepted (upstream: 3 MiB).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// Shared state of the handlers.
#[derive(Debug)]
pub struct Api {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) server_address: String,
    pub(crate) bookmark_interval: Duration,
    pub(crate) ranges: crate::alloc::Ranges,
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    pub(crate) watch_caches: crate::watchcache::WatchCaches,
    /// Set on the view that serves `dryRun=All` requests (its store never writes).
    pub(crate) dry_run: bool,
}

/// The upstream verb and resource of a request, for metrics.
pub fn classify(method: &Method, path: &str, query: Option<&str>) -> (&'static str, String) {
    let watch = parse_query(query)
        .get("watch")
        .is_some_and(|w| matches!(w.as_str(), "true" | "1" | "True"));
    match parse_route(path) {
        Ok(Route::Collection { resource, .. }) => {
            let verb = match *method {
                Method::GET if watch => "WATCH",
                Method::GET => "LIST",
                Method::POST => "POST",
                Method::DELETE => "DELETECOLLECTION",
                _ => "OTHER",
            };
            (verb, resource.plural.to_string())
        }
        Ok(Route::Object { resource, sub, .. }) => {
            let verb = match *method {
                Method::GET => "GET",
                Method::PUT => "PUT",
                Method::PATCH => "PATCH",
                Method::DELETE => "DELETE",
                Method::POST => "POST",
                _ => "OTHER",
            };
            let resource = match sub {
                Some(sub) => format!("{}/{}", resource.plural, sub.name()),
                None => resource.plural.to_string(),
            };
            (verb, resource)
        }
        _ => ("GET", String::new()),
    }
}

/// A parsed request target.
#[derive(Debug)]
enum Route {
    Version,
    CoreVersions,
    Groups,
    Group(String),
    GroupVersion(String, String),
    Collection {
        resource: &'static Resource,
        namespace: Option<String>,
    },
    Object {
        resource: &'static Resource,
        namespace: Option<String>,
        name: String,
        sub: Option<Subresource>,
    },
}

fn parse_route(path: &str) -> ApiResult<Route> {
    let segments: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let (group, version, rest): (&str, &str, &[&str]) = match segments.as_slice() {
        ["version"] => return Ok(Route::Version),
        ["api"] => return Ok(Route::CoreVersions),
        ["apis"] => return Ok(Route::Groups),
        ["apis", g] => return Ok(Route::Group(g.to_string())),
        ["api", v] => return Ok(Route::GroupVersion(String::new(), v.to_string())),
        ["apis", g, v] => return Ok(Route::GroupVersion(g.to_string(), v.to_string())),
        ["api", v, rest @ ..] => ("", v, rest),
        ["apis", g, v, rest @ ..] => (g, v, rest),
        _ => return Err(ApiError::NoSuchPath),
    };
    let find = |plural: &str| registry::find(group, version, plural).ok_or(ApiError::NoSuchPath);
    let namespaced_collection =
        |plural: &str| registry::find(group, version, plural).filter(|r| r.namespaced);
    let sub = |resource: &Resource, s: &str| -> ApiResult<Subresource> {
        Subresource::parse(s)
            .filter(|sub| resource.has(*sub))
            .ok_or(ApiError::NoSuchPath)
    };
    match rest {
        ["namespaces", ns, plural] if namespaced_collection(plural).is_some() => {
            Ok(Route::Collection {
                resource: find(plural)?,
                namespace: Some(ns.to_string()),
            })
        }
        ["namespaces", ns, plural, name] if namespaced_collection(plural).is_some() => {
            Ok(Route::Object {
                resource: find(plural)?,
                namespace: Some(ns.to_string()),
                name: name.to_string(),
                sub: None,
            })
        }
        ["namespaces", ns, plural, name, s] if namespaced_collection(plural).is_some() => {
            let resource = find(plural)?;
            Ok(Route::Object {
                resource,
                namespace: Some(ns.to_string()),
                name: name.to_string(),
                sub: Some(sub(resource, s)?),
            })
        }
        [plural] => Ok(Route::Collection {
            resource: find(plural)?,
            namespace: None,
        }),
        [plural, name] => {
            let resource = find(plural)?;
            if resource.namespaced {
                return Err(ApiError::NoSuchPath);
            }
            Ok(Route::Object {
                resource,
                namespace: None,
                name: name.to_string(),
                sub: None,
            })
        }
        [plural, name, s] => {
            let resource = find(plural)?;
            if resource.namespaced {
                return Err(ApiError::NoSuchPath);
            }
            // `namespaces/NAME/finalize` behaves like status for our purposes.
            let sub = if *s == "finalize" && resource.kind == "Namespace" {
                Subresource::Status
            } else {
                sub(resource, s)?
            };
            Ok(Route::Object {
                resource,
                namespace: None,
                name: name.to_string(),
                sub: Some(sub),
            })
        }
        _ => Err(ApiError::NoSuchPath),
    }
}

fn parse_query(query: Option<&str>) -> HashMap<String, String> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// Decodes `%XX` escapes and `+` in a query component.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A JSON response.
pub fn json_response(code: StatusCode, value: &Value) -> Response {
    let body = serde_json::to_vec(value).unwrap_or_default();
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The `Status` response of an error.
pub fn error_response(error: &ApiError) -> Response {
    let code = StatusCode::from_u16(error.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(code, &error.to_status())
}

fn store_error(resource: &Resource, name: &str, error: StoreError) -> ApiError {
    match error {
        StoreError::NotFound { .. } => ApiError::NotFound {
            group: resource.group.into(),
            plural: resource.plural.into(),
            name: name.into(),
        },
        StoreError::AlreadyExists { .. } => ApiError::AlreadyExists {
            group: resource.group.into(),
            plural: resource.plural.into(),
            name: name.into(),
        },
        StoreError::Conflict { .. } => conflict(resource, name),
        StoreError::Compacted {
            requested,
            compact_revision,
        } => ApiError::Expired(format!(
            "too old resource version: {requested} ({compact_revision})"
        )),
        StoreError::FutureRevision { requested, current } => ApiError::Internal(format!(
            "Too large resource version: {requested}, current: {current}"
        )),
        StoreError::InvalidArgument { message } => ApiError::BadRequest(message),
        StoreError::Unavailable { message } => ApiError::Unavailable(message),
        other => ApiError::Internal(other.to_string()),
    }
}

fn conflict(resource: &Resource, name: &str) -> ApiError {
    ApiError::Conflict {
        group: resource.group.into(),
        plural: resource.plural.into(),
        name: name.into(),
        message: "the object has been modified; please apply your changes to the latest version and try again".into(),
    }
}

fn not_found(resource: &Resource, name: &str) -> ApiError {
    ApiError::NotFound {
        group: resource.group.into(),
        plural: resource.plural.into(),
        name: name.into(),
    }
}

fn refusal(resource: &Resource, name: &str, refusal: Refusal) -> ApiError {
    match refusal {
        Refusal::Decode(message) => ApiError::BadRequest(format!(
            "{} in version \"{}\" cannot be handled as a {}: {message}",
            resource.kind, resource.version, resource.kind
        )),
        Refusal::Invalid(causes) => ApiError::Invalid {
            group: resource.group.into(),
            kind: resource.kind.into(),
            name: name.into(),
            causes,
        },
    }
}

/// An object read from the store, with `metadata.resourceVersion` set.
fn decode(kv: &KeyValue) -> ApiResult<Value> {
    let mut object: Value = serde_json::from_slice(&kv.value).map_err(|e| {
        ApiError::Internal(format!("stored object {} does not decode: {e}", kv.key))
    })?;
    set_rv(&mut object, kv.mod_revision);
    Ok(object)
}

fn set_rv(object: &mut Value, revision: i64) {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), json!(revision.to_string()));
    }
}

/// The stored form: no resourceVersion (it is the store's mod revision).
/// The stored form: `metadata` first (so reads can splice the resourceVersion in without
/// parsing, see [`with_rv`]) and no `resourceVersion`.
fn encode(object: &Value) -> Bytes {
    let mut out = Vec::with_capacity(1024);
    out.extend_from_slice(b"{\"metadata\":");
    let mut meta = object.get("metadata").cloned().unwrap_or_else(|| json!({}));
    if let Some(m) = meta.as_object_mut() {
        m.remove("resourceVersion");
    }
    out.extend_from_slice(&serde_json::to_vec(&meta).unwrap_or_else(|_| b"{}".to_vec()));
    if let Some(fields) = object.as_object() {
        for (key, value) in fields.iter().filter(|(k, _)| k.as_str() != "metadata") {
            out.push(b',');
            out.extend_from_slice(&serde_json::to_vec(key).unwrap_or_default());
            out.push(b':');
            out.extend_from_slice(&serde_json::to_vec(value).unwrap_or_default());
        }
    }
    out.push(b'}');
    Bytes::from(out)
}

/// A stored object with `metadata.resourceVersion` spliced in, without parsing; `None`
/// when the bytes are not in [`encode`]'s form (written by something else).
fn with_rv(stored: &[u8], revision: i64) -> Option<Vec<u8>> {
    const PREFIX: &[u8] = b"{\"metadata\":{";
    let rest = stored.strip_prefix(PREFIX)?;
    let field = format!("\"resourceVersion\":\"{revision}\"");
    let mut out = Vec::with_capacity(stored.len() + field.len() + 1);
    out.extend_from_slice(PREFIX);
    out.extend_from_slice(field.as_bytes());
    if !rest.starts_with(b"}") {
        out.push(b',');
    }
    out.extend_from_slice(rest);
    Some(out)
}

/// The JSON of a stored object with its resourceVersion, spliced when possible.
fn raw_object(stored: &[u8], revision: i64) -> ApiResult<Vec<u8>> {
    if let Some(out) = with_rv(stored, revision) {
        return Ok(out);
    }
    let mut object: Value = serde_json::from_slice(stored)
        .map_err(|e| ApiError::Internal(format!("stored object does not decode: {e}")))?;
    set_rv(&mut object, revision);
    Ok(serde_json::to_vec(&object).unwrap_or_default())
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

fn meta_str<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    object
        .get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
}

fn meta_mut(object: &mut Value) -> ApiResult<&mut serde_json::Map<String, Value>> {
    if object.get("metadata").is_none() {
        object["metadata"] = json!({});
    }
    object
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| ApiError::BadRequest("metadata must be an object".into()))
}

/// The delete propagation policy of a request (DeleteOptions, or the query), checked as
/// upstream does: one of `Orphan`, `Background`, `Foreground`, and not together with the
/// deprecated `orphanDependents` (which maps to `Orphan` or `Background`).
fn propagation_policy<'a>(
    options: &'a Value,
    query: &'a HashMap<String, String>,
) -> ApiResult<Option<&'a str>> {
    let invalid = |cause: Cause| ApiError::Invalid {
        group: "meta.k8s.io".into(),
        kind: "DeleteOptions".into(),
        name: String::new(),
        causes: vec![cause],
    };
    let policy = options
        .get("propagationPolicy")
        .and_then(Value::as_str)
        .or_else(|| query.get("propagationPolicy").map(String::as_str));
    let orphan = options
        .get("orphanDependents")
        .and_then(Value::as_bool)
        .or_else(|| query.get("orphanDependents").and_then(|v| v.parse().ok()));
    match (policy, orphan) {
        (Some(_), Some(_)) => Err(invalid(Cause {
            reason: "FieldValueInvalid",
            field: "propagationPolicy".into(),
            message: "Invalid value: \"propagationPolicy\": orphanDependents and deletionPropagation cannot be both set".into(),
        })),
        (Some(p @ ("Orphan" | "Background" | "Foreground")), None) => Ok(Some(p)),
        (Some(p), None) => Err(invalid(Cause::not_supported(
            "propagationPolicy",
            p,
            &["Foreground", "Background", "Orphan"],
        ))),
        (None, Some(true)) => Ok(Some("Orphan")),
        (None, Some(false)) => Ok(Some("Background")),
        (None, None) => Ok(None),
    }
}

/// Parses a request body: JSON, or YAML when the content type says so.
fn parse_body(headers: &HeaderMap, body: &[u8]) -> ApiResult<Value> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let media = content_type.split(';').next().unwrap_or_default().trim();
    let value: Value = match media {
        "application/yaml" | "application/x-yaml" | "text/yaml" => {
            serde_norway::from_slice(body)
                .map_err(|e| ApiError::BadRequest(format!("error decoding YAML: {e}")))?
        }
        "application/vnd.kubernetes.protobuf" => crate::protobuf::decode(body)?,
        "application/json" | "" | "*/*" => serde_json::from_slice(body)
            .map_err(|e| ApiError::BadRequest(format!("error decoding JSON: {e}")))?,
        other => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml (got {other})"
            )));
        }
    };
    if !value.is_object() {
        return Err(ApiError::BadRequest(
            "the request body must be an object".into(),
        ));
    }
    Ok(value)
}

/// What `Accept` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Table,
}

fn format(headers: &HeaderMap) -> Format {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    for choice in accept.split(',') {
        let choice = choice.trim();
        if choice.contains("as=Table") {
            return Format::Table;
        }
        if choice.starts_with("application/json") || choice.starts_with("*/*") {
            return Format::Json;
        }
    }
    Format::Json
}

impl Api {
    /// Serves one request.
    pub async fn handle(
        &self,
        method: Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Response {
        match self.dispatch(method, path, query, headers, body).await {
            Ok(response) => response,
            Err(error) => error_response(&error),
        }
    }

    async fn dispatch(
        &self,
        method: Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        body: Bytes,
    ) -> ApiResult<Response> {
        let query = parse_query(query);
        if let Some(rest) = path.strip_prefix("/openapi/v3") {
            if method != Method::GET {
                return Err(ApiError::MethodNotSupported);
            }
            let rest = rest.trim_matches('/');
            if rest.is_empty() {
                return Ok(json_response(StatusCode::OK, &crate::openapi::index()));
            }
            return crate::openapi::document(rest)
                .map(|doc| json_response(StatusCode::OK, doc))
                .ok_or(ApiError::NoSuchPath);
        }
        let route = parse_route(path)?;
        let validation = field_validation(&query)?;
        // DELETE carries it in DeleteOptions (`"dryRun": ["All"]`), the other verbs in the query.
        let in_body = (method == Method::DELETE && !body.is_empty())
            .then(|| serde_json::from_slice::<Value>(&body).ok())
            .flatten()
            .and_then(|o| o.get("dryRun").and_then(Value::as_array).cloned())
            .and_then(|list| list.first().and_then(Value::as_str).map(str::to_string));
        let dry_run = in_body.or_else(|| query.get("dryRun").cloned());
        match dry_run.as_deref() {
            None | Some("") => {}
            Some("All") if !self.dry_run && method != Method::GET => {
                let view = Api {
                    store: Arc::new(crate::dryrun::DryRunStore::new(self.store.clone())),
                    server_address: self.server_address.clone(),
                    bookmark_interval: self.bookmark_interval,
                    ranges: self.ranges,
                    metrics: self.metrics.clone(),
                    watch_caches: Default::default(),
                    dry_run: true,
                };
                return Box::pin(
                    view.dispatch_route(route, method, &query, headers, body, validation),
                )
                .await;
            }
            Some("All") => {}
            Some(other) => {
                return Err(ApiError::BadRequest(format!(
                    "unsupported dryRun value {other:?}: only All is supported"
                )));
            }
        }
        self.dispatch_route(route, method, &query, headers, body, validation)
            .await
    }

    async fn dispatch_route(
        &self,
        route: Route,
        method: Method,
        query: &HashMap<String, String>,
        headers: &HeaderMap,
        body: Bytes,
        validation: FieldValidation,
    ) -> ApiResult<Response> {
        let query = query.clone();
        let ok = |v: Value| Ok(json_response(StatusCode::OK, &v));
        match (route, method) {
            (Route::Version, Method::GET) => ok(discovery::version()),
            (Route::CoreVersions, Method::GET) => {
                ok(discovery::core_versions(&self.server_address))
            }
            (Route::Groups, Method::GET) => ok(discovery::groups()),
            (Route::Group(g), Method::GET) => {
                discovery::group(&g).map_or(Err(ApiError::NoSuchPath), ok)
            }
            (Route::GroupVersion(g, v), Method::GET) => {
                discovery::resources(&g, &v).map_or(Err(ApiError::NoSuchPath), ok)
            }
            (
                Route::Collection {
                    resource,
                    namespace,
                },
                Method::GET,
            ) => {
                let watch = matches!(
                    query.get("watch").map(String::as_str),
                    Some("true" | "1" | "True")
                );
                if watch {
                    self.watch(resource, namespace, &query, headers).await
                } else {
                    self.list(resource, namespace.as_deref(), &query, headers)
                        .await
                }
            }
            (
                Route::Collection {
                    resource,
                    namespace,
                },
                Method::POST,
            ) => {
                let object = parse_body(headers, &body)?;
                let warnings =
                    validation.enforce(field_problems(resource, headers, Some(&body), &object))?;
                let created = self
                    .create_object(resource, namespace.as_deref(), object)
                    .await?;
                let response = json_response(StatusCode::CREATED, &created);
                Ok(with_warnings(response, &warnings))
            }
            (
                Route::Collection {
                    resource,
                    namespace,
                },
                Method::DELETE,
            ) => {
                self.delete_collection(resource, namespace.as_deref(), &query)
                    .await
            }
            (
                Route::Object {
                    resource,
                    namespace,
                    name,
                    sub,
                },
                method,
            ) => {
                self.object(
                    resource,
                    namespace.as_deref(),
                    &name,
                    sub,
                    method,
                    &query,
                    headers,
                    body,
                    validation,
                )
                .await
            }
            _ => Err(ApiError::MethodNotSupported),
        }
    }

    async fn ensure_namespace(
        &self,
        resource: &Resource,
        namespace: Option<&str>,
    ) -> ApiResult<()> {
        let Some(ns) = namespace.filter(|_| resource.namespaced) else {
            return Ok(());
        };
        let key = format!("/registry/namespaces/{ns}");
        let current = self
            .store
            .get(&key)
            .await
            .map_err(|e| store_error(resource, ns, e))?;
        match current.kv {
            None => Err(ApiError::NotFound {
                group: String::new(),
                plural: "namespaces".into(),
                name: ns.into(),
            }),
            Some(kv) => {
                let object = decode(&kv)?;
                if object.pointer("/metadata/deletionTimestamp").is_some() {
                    return Err(ApiError::Forbidden(format!(
                        "{} \"\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                        resource.plural
                    )));
                }
                Ok(())
            }
        }
    }

    /// Create, shared by the HTTP verb and bootstrap.
    pub(crate) async fn create_object(
        &self,
        resource: &'static Resource,
        namespace: Option<&str>,
        mut object: Value,
    ) -> ApiResult<Value> {
        let api_version = resource.api_version();
        match object.get("apiVersion").and_then(Value::as_str) {
            None => object["apiVersion"] = json!(api_version),
            Some(v) if v == api_version => {}
            Some(v) => {
                return Err(ApiError::BadRequest(format!(
                    "the API version in the data ({v}) does not match the expected API version ({api_version})"
                )));
            }
        }
        match object.get("kind").and_then(Value::as_str) {
            None => object["kind"] = json!(resource.kind),
            Some(k) if k == resource.kind => {}
            Some(k) => {
                return Err(ApiError::BadRequest(format!(
                    "the kind in the data ({k}) does not match the expected kind ({})",
                    resource.kind
                )));
            }
        }
        let meta = meta_mut(&mut object)?;
        if resource.namespaced {
            let ns = namespace.ok_or_else(|| {
                ApiError::BadRequest("a namespace is required to create this resource".into())
            })?;
            match meta.get("namespace").and_then(Value::as_str) {
                None | Some("") => {
                    meta.insert("namespace".into(), json!(ns));
                }
                Some(n) if n == ns => {}
                Some(_) => return Err(ApiError::BadRequest("the namespace of the provided object does not match the namespace sent on the request".into())),
            }
        } else {
            meta.remove("namespace");
        }
        let name = match meta
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
        {
            Some(name) => name.to_string(),
            None => match meta
                .get("generateName")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
            {
                Some(prefix) => {
                    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
                    let suffix: String = (0..5)
                        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
                        .collect();
                    format!("{prefix}{suffix}")
                }
                None => {
                    return Err(ApiError::Invalid {
                        group: resource.group.into(),
                        kind: resource.kind.into(),
                        name: String::new(),
                        causes: vec![ferrokube_api::Cause {
                            reason: "FieldValueRequired",
                            field: "metadata.name".into(),
                            message: "Required value: name or generateName is required".into(),
                        }],
                    });
                }
            },
        };
        meta.insert("name".into(), json!(name));
        meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
        meta.remove("resourceVersion");
        meta.remove("deletionTimestamp");
        meta.remove("deletionGracePeriodSeconds");
        if resource.has_spec {
            meta.insert("generation".into(), json!(1));
        } else {
            meta.remove("generation");
        }
        defaults::apply(resource.kind, &mut object);
        defaults::normalize(resource.kind, &mut object);
        validate::validate(resource, &object).map_err(|r| refusal(resource, &name, r))?;
        self.ensure_namespace(resource, namespace).await?;
        let key = resource.key(namespace, &name);
        if resource.kind == "Service" {
            return self.create_service(resource, &key, object, &name).await;
        }
        let kv = self
            .store
            .create(&key, encode(&object))
            .await
            .map_err(|e| store_error(resource, &name, e))?;
        set_rv(&mut object, kv.mod_revision);
        Ok(object)
    }

    /// Creates a Service together with its ClusterIP and NodePort keys.
    async fn create_service(
        &self,
        resource: &Resource,
        key: &str,
        original: Value,
        name: &str,
    ) -> ApiResult<Value> {
        let requested_ip = original
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .is_some_and(|ip| !ip.is_empty());
        let requested_ports: Vec<String> = crate::alloc::held_keys(
            &json!({"spec": {"ports": original.pointer("/spec/ports").cloned().unwrap_or(Value::Null)}}),
        );
        let owner = format!(
            "{}/{name}",
            meta_str(&original, "namespace").unwrap_or_default()
        );
        for _ in 0..8 {
            let mut object = original.clone();
            let keys =
                crate::alloc::assign(self.store.as_ref(), &self.ranges, &mut object, None, name)
                    .await?;
            match crate::alloc::write(
                self.store.as_ref(),
                key,
                encode(&object),
                0,
                &keys,
                &[],
                &owner,
            )
            .await?
            {
                Ok(revision) => {
                    set_rv(&mut object, revision);
                    return Ok(object);
                }
                Err(None) => {
                    return Err(ApiError::AlreadyExists {
                        group: String::new(),
                        plural: "services".into(),
                        name: name.into(),
                    });
                }
                Err(Some(taken)) if taken.starts_with("/registry/serviceips/") && requested_ip => {
                    return Err(allocation_refused(resource, name, &taken));
                }
                Err(Some(taken)) if requested_ports.contains(&taken) => {
                    return Err(allocation_refused(resource, name, &taken));
                }
                // A randomly chosen IP or port was taken meanwhile: choose again.
                Err(Some(_)) => continue,
            }
        }
        Err(ApiError::Unavailable(
            "could not allocate Service addresses; retry".into(),
        ))
    }

    async fn get_current(
        &self,
        resource: &Resource,
        namespace: Option<&str>,
        name: &str,
    ) -> ApiResult<(Value, i64)> {
        let key = resource.key(namespace, name);
        let resp = self
            .store
            .get(&key)
            .await
            .map_err(|e| store_error(resource, name, e))?;
        let kv = resp.kv.ok_or_else(|| not_found(resource, name))?;
        Ok((decode(&kv)?, kv.mod_revision))
    }

    /// Writes `new` over the object last read at `revision`, applying update rules.
    /// Returns the stored object (or the deleted one when the last finalizer went).
    #[allow(clippy::too_many_arguments)]
    async fn write_update(
        &self,
        resource: &Resource,
        namespace: Option<&str>,
        name: &str,
        old: &Value,
        mut new: Value,
        revision: i64,
        sub: Option<Subresource>,
    ) -> ApiResult<Value> {
        if let Some(rv) = meta_str(&new, "resourceVersion").filter(|rv| !rv.is_empty())
            && rv != revision.to_string()
        {
            return Err(conflict(resource, name));
        }
        if meta_str(&new, "name").is_some_and(|n| n != name) {
            return Err(ApiError::BadRequest(format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                meta_str(&new, "name").unwrap_or_default()
            )));
        }
        new["apiVersion"] = json!(resource.api_version());
        new["kind"] = json!(resource.kind);
        // What each endpoint may change.
        match sub {
            Some(Subresource::Status) => {
                let status = new.get("status").cloned();
                new = old.clone();
                match status {
                    Some(s) => new["status"] = s,
                    None => {
                        if let Some(o) = new.as_object_mut() {
                            o.remove("status");
                        }
                    }
                }
            }
            _ => {
                if resource.has(Subresource::Status) {
                    match old.get("status") {
                        Some(s) => new["status"] = s.clone(),
                        None => {
                            if let Some(o) = new.as_object_mut() {
                                o.remove("status");
                            }
                        }
                    }
                }
            }
        }
        {
            let old_meta = old.get("metadata").cloned().unwrap_or_else(|| json!({}));
            let meta = meta_mut(&mut new)?;
            for field in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "namespace",
                "name",
            ] {
                match old_meta.get(field) {
                    Some(v) => {
                        meta.insert(field.into(), v.clone());
                    }
                    None => {
                        meta.remove(field);
                    }
                }
            }
            let generation = old_meta
                .get("generation")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            let bumped = resource.has_spec && sub.is_none() && old.get("spec") != new.get("spec");
            if resource.has_spec {
                meta_mut(&mut new)?.insert(
                    "generation".into(),
                    json!(if bumped { generation + 1 } else { generation }),
                );
            }
        }
        defaults::normalize(resource.kind, &mut new);
        validate::validate_update(resource, old, &new).map_err(|r| refusal(resource, name, r))?;
        let key = resource.key(namespace, name);
        // A marked object whose last finalizer is gone is deleted now.
        let finalizers_empty = new
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_none_or(|f| f.is_empty());
        if new.pointer("/metadata/deletionTimestamp").is_some() && finalizers_empty {
            self.remove(resource, &key, name, old, revision).await?;
            return Ok(new);
        }
        let mut stored_meta_rv = new.clone();
        if let Some(m) = stored_meta_rv
            .get_mut("metadata")
            .and_then(Value::as_object_mut)
        {
            m.remove("resourceVersion");
        }
        // An update that changes nothing does not write (and keeps the resourceVersion).
        let mut old_cmp = old.clone();
        if let Some(m) = old_cmp.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
        }
        if old_cmp == stored_meta_rv {
            return Ok(old.clone());
        }
        if resource.kind == "Service" {
            let create =
                crate::alloc::assign(self.store.as_ref(), &self.ranges, &mut new, Some(old), name)
                    .await?;
            let now_held = crate::alloc::held_keys(&new);
            let release: Vec<String> = crate::alloc::held_keys(old)
                .into_iter()
                .filter(|k| !now_held.contains(k))
                .collect();
            let owner = format!("{}/{name}", namespace.unwrap_or_default());
            return match crate::alloc::write(
                self.store.as_ref(),
                &key,
                encode(&new),
                revision,
                &create,
                &release,
                &owner,
            )
            .await?
            {
                Ok(rev) => {
                    set_rv(&mut new, rev);
                    Ok(new)
                }
                Err(None) => Err(conflict(resource, name)),
                Err(Some(taken)) => Err(allocation_refused(resource, name, &taken)),
            };
        }
        let kv = self
            .store
            .update(&key, encode(&new), revision)
            .await
            .map_err(|e| store_error(resource, name, e))?;
        set_rv(&mut new, kv.mod_revision);
        Ok(new)
    }

    /// Removes a stored object (and, for a Service, the addresses and ports it holds),
    /// if it is still at `revision`.
    async fn remove(
        &self,
        resource: &Resource,
        key: &str,
        name: &str,
        current: &Value,
        revision: i64,
    ) -> ApiResult<()> {
        if resource.kind == "Service" {
            let held = crate::alloc::held_keys(current);
            if !crate::alloc::delete(self.store.as_ref(), key, revision, &held).await? {
                return Err(conflict(resource, name));
            }
            return Ok(());
        }
        self.store
            .delete(key, Some(revision))
            .await
            .map_err(|e| store_error(resource, name, e))?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn object(
        &self,
        resource: &'static Resource,
        namespace: Option<&str>,
        name: &str,
        sub: Option<Subresource>,
        method: Method,
        query: &HashMap<String, String>,
        headers: &HeaderMap,
        body: Bytes,
        validation: FieldValidation,
    ) -> ApiResult<Response> {
        let ok = |v: &Value| Ok(json_response(StatusCode::OK, v));
        match (sub, method) {
            (Some(Subresource::Scale), Method::GET) => {
                let (current, _) = self.get_current(resource, namespace, name).await?;
                ok(&scale_of(&current))
            }
            (Some(Subresource::Scale), method @ (Method::PUT | Method::PATCH)) => {
                for _ in 0..5 {
                    let (current, revision) = self.get_current(resource, namespace, name).await?;
                    let scale = scale_of(&current);
                    let desired = if method == Method::PUT {
                        parse_body(headers, &body)?
                    } else {
                        apply_patch(headers, &scale, &body)?
                    };
                    let replicas = desired
                        .pointer("/spec/replicas")
                        .and_then(Value::as_i64)
                        .unwrap_or(0);
                    let mut new = current.clone();
                    new["spec"]["replicas"] = json!(replicas);
                    if let Some(rv) =
                        meta_str(&desired, "resourceVersion").filter(|r| !r.is_empty())
                    {
                        new["metadata"]["resourceVersion"] = json!(rv);
                    } else if let Some(m) = new.get_mut("metadata").and_then(Value::as_object_mut) {
                        m.remove("resourceVersion");
                    }
                    match self
                        .write_update(resource, namespace, name, &current, new, revision, None)
                        .await
                    {
                        Ok(updated) => return ok(&scale_of(&updated)),
                        Err(ApiError::Conflict { .. })
                            if meta_str(&desired, "resourceVersion").is_none() =>
                        {
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                }
                Err(conflict(resource, name))
            }
            (Some(Subresource::Binding), Method::POST) => {
                let binding = parse_body(headers, &body)?;
                let node = binding
                    .pointer("/target/name")
                    .and_then(Value::as_str)
                    .filter(|n| !n.is_empty())
                    .ok_or_else(|| ApiError::Invalid {
                        group: String::new(),
                        kind: "Binding".into(),
                        name: name.into(),
                        causes: vec![ferrokube_api::Cause::required("target.name")],
                    })?;
                let (current, revision) = self.get_current(resource, namespace, name).await?;
                if let Some(existing) = current
                    .pointer("/spec/nodeName")
                    .and_then(Value::as_str)
                    .filter(|n| !n.is_empty())
                {
                    return Err(ApiError::Conflict {
                        group: String::new(),
                        plural: "pods".into(),
                        name: name.into(),
                        message: format!("pod {name} is already assigned to node \"{existing}\""),
                    });
                }
                let mut new = current.clone();
                new["spec"]["nodeName"] = json!(node);
                if let Some(m) = new.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.remove("resourceVersion");
                }
                self.write_update(resource, namespace, name, &current, new, revision, None)
                    .await?;
                Ok(json_response(
                    StatusCode::CREATED,
                    &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
                ))
            }
            (None | Some(Subresource::Status), Method::GET) => {
                let (current, _) = self.get_current(resource, namespace, name).await?;
                match format(headers) {
                    Format::Table => ok(&table::table(
                        resource.kind,
                        std::slice::from_ref(&current),
                        meta_str(&current, "resourceVersion").unwrap_or_default(),
                        None,
                        query
                            .get("includeObject")
                            .map(String::as_str)
                            .unwrap_or("Metadata"),
                    )),
                    Format::Json => ok(&current),
                }
            }
            (sub @ (None | Some(Subresource::Status)), Method::PUT) => {
                let new = parse_body(headers, &body)?;
                let warnings =
                    validation.enforce(field_problems(resource, headers, Some(&body), &new))?;
                let (current, revision) = self.get_current(resource, namespace, name).await?;
                let updated = self
                    .write_update(resource, namespace, name, &current, new, revision, sub)
                    .await?;
                Ok(with_warnings(
                    json_response(StatusCode::OK, &updated),
                    &warnings,
                ))
            }
            (sub @ (None | Some(Subresource::Status)), Method::PATCH) => {
                for _ in 0..5 {
                    let (current, revision) = self.get_current(resource, namespace, name).await?;
                    let patched = apply_patch(headers, &current, &body)?;
                    let mut problems = field_problems(resource, headers, None, &patched);
                    problems.extend(patch_duplicates(&body));
                    let warnings = validation.enforce(problems)?;
                    let pinned = meta_str(&patched, "resourceVersion")
                        != meta_str(&current, "resourceVersion");
                    let mut new = patched.clone();
                    if !pinned
                        && let Some(m) = new.get_mut("metadata").and_then(Value::as_object_mut)
                    {
                        m.remove("resourceVersion");
                    }
                    match self
                        .write_update(resource, namespace, name, &current, new, revision, sub)
                        .await
                    {
                        Ok(updated) => {
                            return Ok(with_warnings(
                                json_response(StatusCode::OK, &updated),
                                &warnings,
                            ));
                        }
                        Err(ApiError::Conflict { .. }) if !pinned => continue,
                        Err(e) => return Err(e),
                    }
                }
                Err(conflict(resource, name))
            }
            (None, Method::DELETE) => {
                // A body must be DeleteOptions; a malformed one is refused (400), never
                // taken for empty options.
                let options = if body.is_empty() {
                    json!({})
                } else {
                    parse_body(headers, &body)?
                };
                let deleted = self
                    .delete_object(resource, namespace, name, &options, query)
                    .await?;
                ok(&deleted)
            }
            _ => Err(ApiError::MethodNotSupported),
        }
    }

    /// Deletes (or marks, when finalizers remain) one object.
    pub(crate) async fn delete_object(
        &self,
        resource: &Resource,
        namespace: Option<&str>,
        name: &str,
        options: &Value,
        query: &HashMap<String, String>,
    ) -> ApiResult<Value> {
        let (current, revision) = self.get_current(resource, namespace, name).await?;
        if let Some(uid) = options
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            && Some(uid) != meta_str(&current, "uid")
        {
            return Err(ApiError::Conflict {
                group: resource.group.into(),
                plural: resource.plural.into(),
                name: name.into(),
                message: format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta_str(&current, "uid").unwrap_or_default()
                ),
            });
        }
        if let Some(rv) = options
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            && rv != revision.to_string()
        {
            return Err(ApiError::Conflict {
                group: resource.group.into(),
                plural: resource.plural.into(),
                name: name.into(),
                message: format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {revision}"
                ),
            });
        }
        if resource.kind == "Namespace" {
            if matches!(name, "default" | "kube-system" | "kube-public") {
                return Err(ApiError::Forbidden(format!(
                    "namespaces \"{name}\" is forbidden: this namespace may not be deleted"
                )));
            }
            return self.delete_namespace(name, current, revision).await;
        }
        let grace = options
            .get("gracePeriodSeconds")
            .and_then(Value::as_i64)
            .or_else(|| query.get("gracePeriodSeconds").and_then(|g| g.parse().ok()));
        // Orphan and Foreground leave the object marked with the garbage collector's
        // finalizer; the collector finishes the deletion once the dependents are dealt with.
        let gc_finalizer = match propagation_policy(options, query)? {
            Some("Orphan") => Some("orphan"),
            Some("Foreground") => Some("foregroundDeletion"),
            _ => None,
        };
        let finalizers = current
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array);
        let has_finalizers = finalizers.is_some_and(|f| !f.is_empty());
        let add_finalizer =
            gc_finalizer.filter(|f| !finalizers.is_some_and(|list| list.iter().any(|x| x == f)));
        // A pod bound to a node is deleted gracefully: marked, and removed by its kubelet
        // (or at once with gracePeriodSeconds=0).
        let graceful_pod = resource.kind == "Pod"
            && current
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .is_some_and(|n| !n.is_empty())
            && grace != Some(0);
        if has_finalizers || graceful_pod || add_finalizer.is_some() {
            let marked_already = current.pointer("/metadata/deletionTimestamp").is_some();
            if marked_already && add_finalizer.is_none() {
                return Ok(current);
            }
            let mut marked = current.clone();
            let meta = meta_mut(&mut marked)?;
            if !marked_already {
                meta.insert("deletionTimestamp".into(), json!(now_rfc3339()));
                let period = grace
                    .or_else(|| {
                        current
                            .pointer("/spec/terminationGracePeriodSeconds")
                            .and_then(Value::as_i64)
                    })
                    .unwrap_or(0);
                meta.insert(
                    "deletionGracePeriodSeconds".into(),
                    json!(if resource.kind == "Pod" { period } else { 0 }),
                );
            }
            if let Some(finalizer) = add_finalizer {
                let list = meta.entry("finalizers").or_insert_with(|| json!([]));
                if let Some(list) = list.as_array_mut() {
                    list.push(json!(finalizer));
                } else {
                    *list = json!([finalizer]);
                }
            }
            meta.remove("resourceVersion");
            let key = resource.key(namespace, name);
            let kv = self
                .store
                .update(&key, encode(&marked), revision)
                .await
                .map_err(|e| store_error(resource, name, e))?;
            set_rv(&mut marked, kv.mod_revision);
            return Ok(marked);
        }
        let key = resource.key(namespace, name);
        self.remove(resource, &key, name, &current, revision)
            .await?;
        Ok(current)
    }

    /// Namespace deletion: mark Terminating, delete everything in it, then remove it
    /// (it stays Terminating while objects with finalizers remain).
    async fn delete_namespace(
        &self,
        name: &str,
        current: Value,
        revision: i64,
    ) -> ApiResult<Value> {
        let resource = registry::find("", "v1", "namespaces").ok_or(ApiError::NoSuchPath)?;
        let mut marked = current.clone();
        let mut revision = revision;
        if marked.pointer("/metadata/deletionTimestamp").is_none() {
            meta_mut(&mut marked)?.insert("deletionTimestamp".into(), json!(now_rfc3339()));
            marked["status"]["phase"] = json!("Terminating");
            let kv = self
                .store
                .update(&resource.key(None, name), encode(&marked), revision)
                .await
                .map_err(|e| store_error(resource, name, e))?;
            revision = kv.mod_revision;
            set_rv(&mut marked, revision);
        }
        let mut remaining = 0;
        for r in registry::RESOURCES.iter().filter(|r| r.namespaced) {
            let prefix = r.key_prefix(Some(name));
            let listed = self
                .store
                .range(RangeRequest::prefix(prefix))
                .await
                .map_err(|e| store_error(r, name, e))?;
            for kv in listed.kvs {
                let object = decode(&kv)?;
                let object_name = meta_str(&object, "name").unwrap_or_default().to_string();
                let options = json!({"gracePeriodSeconds": 0});
                match Box::pin(self.delete_object(
                    r,
                    Some(name),
                    &object_name,
                    &options,
                    &HashMap::new(),
                ))
                .await
                {
                    Ok(o)
                        if o.pointer("/metadata/deletionTimestamp").is_some()
                            && o.pointer("/metadata/finalizers")
                                .and_then(Value::as_array)
                                .is_some_and(|f| !f.is_empty()) =>
                    {
                        remaining += 1
                    }
                    Ok(_) | Err(ApiError::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        if remaining == 0 {
            self.store
                .delete(&resource.key(None, name), Some(revision))
                .await
                .map_err(|e| store_error(resource, name, e))?;
        }
        Ok(marked)
    }

    async fn delete_collection(
        &self,
        resource: &'static Resource,
        namespace: Option<&str>,
        query: &HashMap<String, String>,
    ) -> ApiResult<Response> {
        let (items, revision, _, _) = self.list_items(resource, namespace, query).await?;
        let mut deleted = Vec::new();
        for item in items {
            let name = meta_str(&item, "name").unwrap_or_default().to_string();
            let ns = meta_str(&item, "namespace").map(str::to_string);
            match self
                .delete_object(resource, ns.as_deref(), &name, &json!({}), query)
                .await
            {
                Ok(o) => deleted.push(o),
                Err(ApiError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(json_response(
            StatusCode::OK,
            &json!({
                "kind": resource.list_kind(),
                "apiVersion": resource.api_version(),
                "metadata": {"resourceVersion": revision.to_string()},
                "items": deleted,
            }),
        ))
    }

    fn selectors(
        resource: &Resource,
        query: &HashMap<String, String>,
    ) -> ApiResult<(LabelSelector, FieldSelector)> {
        let labels = LabelSelector::parse(
            query
                .get("labelSelector")
                .map(String::as_str)
                .unwrap_or_default(),
        )
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let supported: &[&str] = match resource.kind {
            "Pod" => &[
                "spec.nodeName",
                "status.phase",
                "spec.schedulerName",
                "spec.restartPolicy",
                "status.podIP",
            ],
            "Event" => &[
                "involvedObject.kind",
                "involvedObject.namespace",
                "involvedObject.name",
                "involvedObject.uid",
                "involvedObject.apiVersion",
                "involvedObject.resourceVersion",
                "involvedObject.fieldPath",
                "reason",
                "source",
                "type",
            ],
            "Secret" => &["type"],
            "Namespace" => &["status.phase"],
            "Node" => &["spec.unschedulable"],
            _ => &[],
        };
        let fields = FieldSelector::parse(
            query
                .get("fieldSelector")
                .map(String::as_str)
                .unwrap_or_default(),
            supported,
        )
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        Ok((labels, fields))
    }

    /// The items of a list request, its revision, continue token and remaining count.
    async fn list_items(
        &self,
        resource: &'static Resource,
        namespace: Option<&str>,
        query: &HashMap<String, String>,
    ) -> ApiResult<(Vec<Value>, i64, Option<String>, Option<i64>)> {
        let (labels, fields) = Self::selectors(resource, query)?;
        let limit = list_limit(query)?;
        let prefix = resource.key_prefix(namespace);
        let (mut start_after, mut revision) = self.list_position(&prefix, query)?;
        let mut items = Vec::new();
        let mut continue_key = None;
        let mut remaining = None;
        loop {
            let mut request = RangeRequest::prefix(prefix.clone()).with_limit(if limit > 0 {
                limit.max(64)
            } else {
                0
            });
            request.start_after = start_after.clone();
            request.revision = revision;
            let page = self
                .store
                .range(request)
                .await
                .map_err(|e| list_error(resource, query, e))?;
            revision = Some(page.revision);
            let mut consumed: usize = 0;
            for kv in &page.kvs {
                consumed += 1;
                let object = decode(kv)?;
                if labels.matches_object(&object) && fields.matches(&object) {
                    items.push(object);
                }
                if limit > 0 && items.len() == limit {
                    break;
                }
            }
            let last_key = page
                .kvs
                .get(consumed.saturating_sub(1))
                .map(|kv| kv.key.clone());
            let more_here = consumed < page.kvs.len() || page.more;
            if limit > 0 && items.len() == limit {
                if more_here {
                    continue_key = last_key;
                    if labels.is_empty() && fields == FieldSelector::default() {
                        remaining = Some((page.count - consumed) as i64);
                    }
                }
                break;
            }
            if !page.more {
                break;
            }
            start_after = last_key;
        }
        let revision = revision.unwrap_or_default();
        let token = continue_key.map(|start| continue_token(revision, &start));
        Ok((items, revision, token, remaining))
    }

    async fn list(
        &self,
        resource: &'static Resource,
        namespace: Option<&str>,
        query: &HashMap<String, String>,
        headers: &HeaderMap,
    ) -> ApiResult<Response> {
        let selects = ["labelSelector", "fieldSelector"]
            .iter()
            .any(|k| query.get(*k).is_some_and(|v| !v.is_empty()));
        if format(headers) == Format::Json && !selects {
            return self.list_raw(resource, namespace, query).await;
        }
        let (items, revision, token, remaining) =
            self.list_items(resource, namespace, query).await?;
        let rv = revision.to_string();
        let body = match format(headers) {
            Format::Table => table::table(
                resource.kind,
                &items,
                &rv,
                token.as_deref(),
                query
                    .get("includeObject")
                    .map(String::as_str)
                    .unwrap_or("Metadata"),
            ),
            Format::Json => {
                let mut metadata = json!({"resourceVersion": rv});
                if let Some(token) = token {
                    metadata["continue"] = json!(token);
                }
                if let Some(remaining) = remaining.filter(|r| *r > 0) {
                    metadata["remainingItemCount"] = json!(remaining);
                }
                json!({
                    "kind": resource.list_kind(),
                    "apiVersion": resource.api_version(),
                    "metadata": metadata,
                    "items": items,
                })
            }
        };
        Ok(json_response(StatusCode::OK, &body))
    }

    /// A list without selectors in JSON: items are spliced from the stored bytes, never
    /// parsed (the common case for informers and kubectl).
    async fn list_raw(
        &self,
        resource: &'static Resource,
        namespace: Option<&str>,
        query: &HashMap<String, String>,
    ) -> ApiResult<Response> {
        let limit = list_limit(query)?;
        let prefix = resource.key_prefix(namespace);
        let (start_after, revision) = self.list_position(&prefix, query)?;
        let mut request = RangeRequest::prefix(prefix).with_limit(limit);
        request.start_after = start_after;
        request.revision = revision;
        let page = self
            .store
            .range(request)
            .await
            .map_err(|e| list_error(resource, query, e))?;
        let mut body =
            Vec::with_capacity(page.kvs.iter().map(|kv| kv.value.len() + 40).sum::<usize>() + 256);
        let mut metadata = json!({"resourceVersion": page.revision.to_string()});
        if page.more
            && let Some(last) = page.kvs.last()
        {
            metadata["continue"] = json!(continue_token(page.revision, &last.key));
            metadata["remainingItemCount"] = json!(page.count.saturating_sub(page.kvs.len()));
        }
        body.extend_from_slice(
            format!(
                "{{\"kind\":\"{}\",\"apiVersion\":\"{}\",\"metadata\":{},\"items\":[",
                resource.list_kind(),
                resource.api_version(),
                metadata
            )
            .as_bytes(),
        );
        for (i, kv) in page.kvs.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(&raw_object(&kv.value, kv.mod_revision)?);
        }
        body.extend_from_slice(b"]}");
        Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response())
    }

    /// Where a list starts: after the continue token's key, at its revision, or at the
    /// revision `resourceVersion` + `resourceVersionMatch=Exact` name.
    fn list_position(
        &self,
        prefix: &str,
        query: &HashMap<String, String>,
    ) -> ApiResult<(Option<String>, Option<i64>)> {
        if let Some(token) = query.get("continue").filter(|c| !c.is_empty()) {
            let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(token)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .ok_or_else(|| {
                    ApiError::BadRequest("continue key is not valid: illegal base64 data".into())
                })?;
            let rv = decoded
                .get("rv")
                .and_then(Value::as_i64)
                .ok_or_else(|| ApiError::BadRequest("continue key is not valid".into()))?;
            let start = decoded
                .get("start")
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::BadRequest("continue key is not valid".into()))?;
            if !start.starts_with(prefix) {
                return Err(ApiError::BadRequest(
                    "continue key is not valid: does not match the request".into(),
                ));
            }
            return Ok((Some(start.to_string()), Some(rv)));
        }
        if let Some(rv) = query
            .get("resourceVersion")
            .filter(|r| !r.is_empty() && *r != "0")
        {
            let rv: i64 = rv
                .parse()
                .map_err(|_| ApiError::BadRequest(format!("invalid resource version {rv:?}")))?;
            if query.get("resourceVersionMatch").map(String::as_str) == Some("Exact") {
                return Ok((None, Some(rv)));
            }
        }
        Ok((None, None))
    }

    async fn watch(
        &self,
        resource: &'static Resource,
        namespace: Option<String>,
        query: &HashMap<String, String>,
        headers: &HeaderMap,
    ) -> ApiResult<Response> {
        let (labels, fields) = Self::selectors(resource, query)?;
        let as_table = format(headers) == Format::Table;
        let raw = !as_table && labels.is_empty() && fields == FieldSelector::default();
        let bookmarks = matches!(
            query.get("allowWatchBookmarks").map(String::as_str),
            Some("true" | "1")
        );
        let initial_events = matches!(
            query.get("sendInitialEvents").map(String::as_str),
            Some("true" | "1")
        );
        let rv = query.get("resourceVersion").cloned().unwrap_or_default();
        if initial_events
            && query.get("resourceVersionMatch").map(String::as_str) != Some("NotOlderThan")
        {
            return Err(ApiError::Invalid {
                group: "meta.k8s.io".into(),
                kind: "ListOptions".into(),
                name: String::new(),
                causes: vec![ferrokube_api::Cause::not_supported(
                    "resourceVersionMatch",
                    query
                        .get("resourceVersionMatch")
                        .map(String::as_str)
                        .unwrap_or_default(),
                    &["NotOlderThan"],
                )],
            });
        }
        let timeout = query
            .get("timeoutSeconds")
            .and_then(|t| t.parse::<u64>().ok())
            .map(Duration::from_secs);
        let prefix = resource.key_prefix(namespace.as_deref());

        // Initial state: synthetic ADDED events for "" / "0" (or sendInitialEvents).
        let mut initial = Vec::new();
        let start: i64 = if rv.is_empty() || rv == "0" || initial_events {
            let mut q = query.clone();
            q.remove("limit");
            q.remove("continue");
            q.remove("resourceVersion");
            let (items, revision, _, _) =
                self.list_items(resource, namespace.as_deref(), &q).await?;
            initial = items;
            revision
        } else {
            rv.parse()
                .map_err(|_| ApiError::BadRequest(format!("invalid resource version {rv:?}")))?
        };
        let metrics = self.metrics.clone();
        let store_stream = self
            .watch_caches
            .watch(
                &self.store,
                &resource.key_prefix(None),
                &prefix,
                start,
                || metrics.store_watch_opened(resource.plural),
            )
            .await
            .map_err(|e| store_error(resource, "", e))?;
        let include = query
            .get("includeObject")
            .cloned()
            .unwrap_or_else(|| "Metadata".into());
        let kind = resource.kind;
        let render = move |event_type: &str, object: &Value| -> Bytes {
            let object = if as_table {
                table::table(
                    kind,
                    std::slice::from_ref(object),
                    meta_str(object, "resourceVersion").unwrap_or_default(),
                    None,
                    &include,
                )
            } else {
                object.clone()
            };
            let mut line = serde_json::to_vec(&json!({"type": event_type, "object": object}))
                .unwrap_or_default();
            line.push(b'\n');
            Bytes::from(line)
        };
        let api_version = resource.api_version();
        let bookmark = move |revision: i64, initial_end: bool| -> Bytes {
            let mut metadata = json!({"resourceVersion": revision.to_string()});
            if initial_end {
                metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
            }
            let object = json!({"kind": kind, "apiVersion": api_version, "metadata": metadata});
            let mut line = serde_json::to_vec(&json!({"type": "BOOKMARK", "object": object}))
                .unwrap_or_default();
            line.push(b'\n');
            Bytes::from(line)
        };
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::convert::Infallible>>(128);
        let bookmark_interval = self.bookmark_interval;
        let watch_guard = self.metrics.watch_opened(resource.plural);
        tokio::spawn(async move {
            let _watch_guard = watch_guard;
            let mut store_stream = store_stream;
            let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
            for object in &initial {
                if tx.send(Ok(render("ADDED", object))).await.is_err() {
                    return;
                }
            }
            if initial_events && tx.send(Ok(bookmark(start, true))).await.is_err() {
                return;
            }
            let mut last = start;
            let mut ticker = tokio::time::interval_at(
                tokio::time::Instant::now() + bookmark_interval,
                bookmark_interval,
            );
            loop {
                let sleep_until = deadline.unwrap_or_else(|| {
                    tokio::time::Instant::now() + Duration::from_secs(86400 * 365)
                });
                let item = tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep_until(sleep_until) => return,
                    _ = ticker.tick() => {
                        if bookmarks && tx.send(Ok(bookmark(last, false))).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    item = store_stream.next() => item,
                };
                let event = match item {
                    None => return,
                    Some(Err(StoreError::Compacted {
                        requested,
                        compact_revision,
                    })) => {
                        let status = ApiError::Expired(format!(
                            "too old resource version: {} ({compact_revision})",
                            requested - 1
                        ))
                        .to_status();
                        let mut line =
                            serde_json::to_vec(&json!({"type": "ERROR", "object": status}))
                                .unwrap_or_default();
                        line.push(b'\n');
                        let _ = tx.send(Ok(Bytes::from(line))).await;
                        return;
                    }
                    Some(Err(e)) => {
                        let status = ApiError::Internal(e.to_string()).to_status();
                        let mut line =
                            serde_json::to_vec(&json!({"type": "ERROR", "object": status}))
                                .unwrap_or_default();
                        line.push(b'\n');
                        let _ = tx.send(Ok(Bytes::from(line))).await;
                        return;
                    }
                    Some(Ok(event)) => event,
                };
                last = event.revision();
                if raw {
                    // No selectors, JSON: splice the stored bytes, parse nothing.
                    let (kind, stored) = match (event.kind, &event.prev) {
                        (EventKind::Put, None) => ("ADDED", &event.kv.value),
                        (EventKind::Put, Some(_)) => ("MODIFIED", &event.kv.value),
                        (EventKind::Delete, Some(prev)) => ("DELETED", &prev.value),
                        (EventKind::Delete, None) => continue,
                    };
                    let Ok(object) = raw_object(stored, event.kv.mod_revision) else {
                        continue;
                    };
                    let mut line = Vec::with_capacity(object.len() + 32);
                    line.extend_from_slice(format!("{{\"type\":\"{kind}\",\"object\":").as_bytes());
                    line.extend_from_slice(&object);
                    line.extend_from_slice(b"}\n");
                    if tx.send(Ok(Bytes::from(line))).await.is_err() {
                        return;
                    }
                    continue;
                }
                let matches = |o: &Value| labels.matches_object(o) && fields.matches(o);
                let decoded = |kv: &KeyValue| serde_json::from_slice::<Value>(&kv.value).ok();
                let line = match event.kind {
                    EventKind::Put => {
                        let Some(mut new) = decoded(&event.kv) else {
                            continue;
                        };
                        set_rv(&mut new, event.kv.mod_revision);
                        let was = event.prev.as_ref().and_then(decoded).map(|o| matches(&o));
                        match (was, matches(&new)) {
                            (None | Some(false), true) => render("ADDED", &new),
                            (Some(true), true) => render("MODIFIED", &new),
                            (Some(true), false) => render("DELETED", &new),
                            _ => continue,
                        }
                    }
                    EventKind::Delete => {
                        let Some(mut old) = event.prev.as_ref().and_then(decoded) else {
                            continue;
                        };
                        if !matches(&old) {
                            continue;
                        }
                        set_rv(&mut old, event.kv.mod_revision);
                        render("DELETED", &old)
                    }
                };
                if tx.send(Ok(line)).await.is_err() {
                    return;
                }
            }
        });
        let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
        Ok(Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::TRANSFER_ENCODING, "chunked")
            .body(body)
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
    }
}

/// The `fieldValidation` parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValidation {
    /// Refuse unknown and duplicate fields with 400.
    Strict,
    /// Accept, with a `Warning` header per problem (the default).
    Warn,
    /// Accept silently.
    Ignore,
}

impl FieldValidation {
    fn enforce(self, problems: Vec<String>) -> ApiResult<Vec<String>> {
        match self {
            FieldValidation::Strict if !problems.is_empty() => Err(ApiError::BadRequest(format!(
                "strict decoding error: {}",
                problems.join(", ")
            ))),
            FieldValidation::Ignore => Ok(Vec::new()),
            _ => Ok(problems),
        }
    }
}

fn field_validation(query: &HashMap<String, String>) -> ApiResult<FieldValidation> {
    match query.get("fieldValidation").map(String::as_str) {
        None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
        Some("Strict") => Ok(FieldValidation::Strict),
        Some("Ignore") => Ok(FieldValidation::Ignore),
        Some(other) => Err(ApiError::BadRequest(format!(
            "fieldValidation parameter unsupported: {other}; supported values: Ignore, Warn, Strict"
        ))),
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .ends_with("json")
}

/// Unknown fields of `object` and, for JSON bodies, keys repeated in `raw`.
fn field_problems(
    resource: &Resource,
    headers: &HeaderMap,
    raw: Option<&[u8]>,
    object: &Value,
) -> Vec<String> {
    let mut problems: Vec<String> = ferrokube_api::fields::unknown_fields(resource.kind, object)
        .into_iter()
        .map(|p| format!("unknown field \"{p}\""))
        .collect();
    if let Some(raw) = raw.filter(|_| is_json(headers)) {
        problems.extend(
            ferrokube_api::fields::duplicate_fields(raw)
                .into_iter()
                .map(|p| format!("duplicate field \"{p}\"")),
        );
    }
    problems
}

fn patch_duplicates(body: &[u8]) -> Vec<String> {
    ferrokube_api::fields::duplicate_fields(body)
        .into_iter()
        .map(|p| format!("duplicate field \"{p}\""))
        .collect()
}

fn with_warnings(mut response: Response, warnings: &[String]) -> Response {
    for warning in warnings {
        let text = format!("299 - \"{}\"", warning.replace('"', "\\\""));
        if let Ok(value) = header::HeaderValue::from_str(&text) {
            response.headers_mut().append("warning", value);
        }
    }
    response
}

/// The 422 for a requested ClusterIP or NodePort another Service holds (`taken` is its
/// allocation key).
fn allocation_refused(resource: &Resource, name: &str, taken: &str) -> ApiError {
    let value = taken.rsplit('/').next().unwrap_or_default();
    let cause = if taken.starts_with("/registry/serviceips/") {
        ferrokube_api::Cause::invalid(
            "spec.clusterIPs",
            value,
            format!("failed to allocate IP {value}: provided IP is already allocated"),
        )
    } else {
        ferrokube_api::Cause::invalid(
            "spec.ports[].nodePort",
            value,
            "provided port is already allocated",
        )
    };
    refusal(resource, name, Refusal::Invalid(vec![cause]))
}

/// The `limit` parameter (0 when absent: no limit).
fn list_limit(query: &HashMap<String, String>) -> ApiResult<usize> {
    match query.get("limit").filter(|l| !l.is_empty()) {
        Some(l) => l
            .parse()
            .map_err(|_| ApiError::BadRequest(format!("invalid limit {l:?}"))),
        None => Ok(0),
    }
}

/// The continue token of a list page: the revision and the last key, base64 JSON.
fn continue_token(revision: i64, last_key: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&json!({"rv": revision, "start": last_key})).unwrap_or_default())
}

fn list_error(resource: &Resource, query: &HashMap<String, String>, error: StoreError) -> ApiError {
    match error {
        StoreError::Compacted { .. } if query.contains_key("continue") => ApiError::Expired("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.".into()),
        e => store_error(resource, "", e),
    }
}

fn apply_patch(headers: &HeaderMap, current: &Value, body: &[u8]) -> ApiResult<Value> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let kind = PatchType::from_content_type(content_type).ok_or_else(|| {
        ApiError::UnsupportedMediaType(format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {content_type:?})"))
    })?;
    if kind == PatchType::Apply {
        return Err(ApiError::UnsupportedMediaType("server-side apply (application/apply-patch+yaml) is not supported yet; use client-side kubectl apply".into()));
    }
    patch::apply(kind, current, body).map_err(|e| match e {
        patch::PatchError::Invalid(m) => ApiError::BadRequest(m),
        patch::PatchError::Failed(m) => ApiError::Invalid {
            group: String::new(),
            kind: "Patch".into(),
            name: String::new(),
            causes: vec![ferrokube_api::Cause {
                reason: "FieldValueInvalid",
                field: "patch".into(),
                message: m,
            }],
        },
    })
}

/// The autoscaling/v1 Scale view of a workload.
fn scale_of(object: &Value) -> Value {
    let selector =
        ferrokube_api::selector::map_string(object.pointer("/spec/selector/matchLabels"));
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta_str(object, "name"),
            "namespace": meta_str(object, "namespace"),
            "uid": meta_str(object, "uid"),
            "resourceVersion": meta_str(object, "resourceVersion"),
            "creationTimestamp": meta_str(object, "creationTimestamp"),
        },
        "spec": {"replicas": object.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(0)},
        "status": {
            "replicas": object.pointer("/status/replicas").and_then(Value::as_i64).unwrap_or(0),
            "selector": selector,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert!(
            matches!(parse_route("/api/v1/namespaces/default/pods").unwrap(), Route::Collection { resource, namespace: Some(ns) } if resource.plural == "pods" && ns == "default")
        );
        assert!(
            matches!(parse_route("/api/v1/namespaces/kube-system").unwrap(), Route::Object { resource, name, .. } if resource.plural == "namespaces" && name == "kube-system")
        );
        assert!(matches!(
            parse_route("/api/v1/namespaces/x/status").unwrap(),
            Route::Object {
                sub: Some(Subresource::Status),
                ..
            }
        ));
        assert!(matches!(
            parse_route("/apis/apps/v1/namespaces/d/deployments/web/scale").unwrap(),
            Route::Object {
                sub: Some(Subresource::Scale),
                ..
            }
        ));
        assert!(matches!(
            parse_route("/api/v1/pods").unwrap(),
            Route::Collection {
                namespace: None,
                ..
            }
        ));
        assert!(parse_route("/api/v1/namespaces/d/configmaps/c/scale").is_err());
        assert!(parse_route("/api/v1/bogus").is_err());
        assert!(parse_route("/api/v1/pods/x").is_err());
    }

    #[test]
    fn stored_objects_take_their_resource_version_without_parsing() {
        let object = json!({"kind": "ConfigMap", "metadata": {"name": "c", "resourceVersion": "9"}, "data": {"metadata": "x"}});
        let stored = encode(&object);
        assert!(stored.starts_with(b"{\"metadata\":{"));
        let spliced: Value = serde_json::from_slice(&with_rv(&stored, 42).unwrap()).unwrap();
        let mut want = object.clone();
        want["metadata"]["resourceVersion"] = json!("42");
        assert_eq!(spliced, want);
        let empty: Value =
            serde_json::from_slice(&with_rv(&encode(&json!({"kind": "X"})), 7).unwrap()).unwrap();
        assert_eq!(
            empty,
            json!({"kind": "X", "metadata": {"resourceVersion": "7"}})
        );
        // Bytes in another layout fall back to parsing.
        assert!(with_rv(br#"{"kind":"X","metadata":{}}"#, 1).is_none());
        let parsed: Value =
            serde_json::from_slice(&raw_object(br#"{"kind":"X","metadata":{}}"#, 3).unwrap())
                .unwrap();
        assert_eq!(parsed["metadata"]["resourceVersion"], "3");
    }

    #[test]
    fn query_decoding() {
        let q = parse_query(Some("labelSelector=app%3Dweb%2Ctier+in+%28a%29&watch=1"));
        assert_eq!(q["labelSelector"], "app=web,tier in (a)");
        assert_eq!(q["watch"], "1");
    }
}
