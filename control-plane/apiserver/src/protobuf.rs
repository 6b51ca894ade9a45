//! Protobuf request bodies (`application/vnd.kubernetes.protobuf`). client-go's typed
//! clients, and so kubectl's imperative commands (`kubectl create deployment`, `run`,
//! `expose`, `create service|configmap|secret|namespace|serviceaccount`), send their
//! bodies in Kubernetes' protobuf encoding; the rest of the server works on JSON, so this
//! module turns any served kind (plus `Binding`, `Scale` and `DeleteOptions`) into the JSON
//! form that upstream's own JSON encoder would give for the same object.
//!
//! The decoder is generic: it walks the wire format with a schema table
//! (`protobuf_schema.txt`: each message's field tags, names and types) and names each
//! field as the matching property of `k8s-openapi`'s JSON schema for that type, so a field
//! like `podIP` keeps its exact spelling. The table is generated from the `k8s-pb` crate's
//! sources (prost offers no runtime reflection, and `k8s-pb` ships no descriptor set); the
//! test `schema_table_matches_k8s_pb` regenerates it and fails when it is stale, and
//! `every_field_has_a_json_name` checks the naming for every field in it.
//!
//! Go's protobuf encoding writes non-pointer fields even when they hold their zero value,
//! where its JSON encoder omits empty strings and zero times (`omitempty`); the decoder
//! follows JSON here: empty strings and zero `Time`s are dropped. Responses are JSON,
//! which client-go accepts whatever it sent.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine;
use ferrokube_api::ApiError;
use prost::Message;
use prost::bytes::Buf;
use prost::encoding::{WireType, decode_key, decode_varint};
use serde_json::{Map, Value, json};

/// The four bytes that open every Kubernetes protobuf envelope.
const MAGIC: &[u8] = b"k8s\0";

/// Nesting deeper than any served type: a body past it is refused, not recursed into.
const MAX_DEPTH: usize = 64;

/// The generated schema table (see the module doc).
const TABLE: &str = include_str!("protobuf_schema.txt");

/// The messages a body may carry at its top level, besides the served kinds.
const EXTRA_ROOTS: &[&str] = &[
    "api.core.v1.Binding",
    "api.autoscaling.v1.Scale",
    "apimachinery.pkg.apis.meta.v1.DeleteOptions",
];

/// Messages with a JSON form of their own (see `message`), not an object of their fields.
const OPAQUE: &[&str] = &[
    "apimachinery.pkg.api.resource.Quantity",
    "apimachinery.pkg.apis.meta.v1.FieldsV1",
    "apimachinery.pkg.apis.meta.v1.MicroTime",
    "apimachinery.pkg.apis.meta.v1.Time",
    "apimachinery.pkg.runtime.RawExtension",
    "apimachinery.pkg.util.intstr.IntOrString",
];

/// The [`json_names`] key of a `k8s-pb` message path.
fn schema_key(path: &str) -> String {
    normalise(&format!("io.k8s.{path}"))
}

/// Whose schema names the fields of an embedded message: its own, else its parent's.
fn names_owner<'a>(inner: &'a str, parent_owner: &'a str) -> &'a str {
    if json_names().contains_key(&schema_key(inner)) {
        inner
    } else {
        parent_owner
    }
}

fn bad(message: impl std::fmt::Display) -> ApiError {
    ApiError::BadRequest(format!("error decoding protobuf: {message}"))
}

/// A scalar protobuf type as `k8s-pb` declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scalar {
    String,
    Bytes,
    Bool,
    Int32,
    Int64,
    Double,
}

impl Scalar {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "string" => Scalar::String,
            "bytes" => Scalar::Bytes,
            "bool" => Scalar::Bool,
            "int32" => Scalar::Int32,
            "int64" => Scalar::Int64,
            "double" => Scalar::Double,
            _ => return None,
        })
    }
}

/// What a field (or a map's value) holds.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Type {
    Scalar(Scalar),
    Message(String),
}

impl Type {
    fn parse(s: &str) -> Option<Self> {
        match s.strip_prefix("msg:") {
            Some(path) => Some(Type::Message(path.to_string())),
            None => Scalar::parse(s).map(Type::Scalar),
        }
    }
}

/// One field of a message.
#[derive(Debug, Clone)]
struct Field {
    /// The `k8s-pb` (snake case) name; the JSON name comes from the schema.
    name: String,
    repeated: bool,
    /// `Some(key type)` for a map; its values are of `ty`.
    map_key: Option<Scalar>,
    ty: Type,
}

type Messages = HashMap<String, HashMap<u32, Field>>;

/// Parses the table: `M <path>` opens a message, then one `<tag> <name> <o|r|map> ...`
/// line per field (`o <type>`, `r <type>`, `map <key type> <value type>`).
fn parse_table(text: &str) -> Result<Messages, String> {
    let mut messages: Messages = HashMap::new();
    let mut current: Option<String> = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let malformed = || format!("protobuf_schema.txt line {}: {line}", n + 1);
        if let ["M", path] = words.as_slice() {
            messages.insert(path.to_string(), HashMap::new());
            current = Some(path.to_string());
            continue;
        }
        let message = current
            .as_ref()
            .and_then(|c| messages.get_mut(c))
            .ok_or_else(malformed)?;
        let (tag, field) = match words.as_slice() {
            [tag, name, "o", ty] | [tag, name, "r", ty] => (
                tag,
                Field {
                    name: name.to_string(),
                    repeated: words[2] == "r",
                    map_key: None,
                    ty: Type::parse(ty).ok_or_else(malformed)?,
                },
            ),
            [tag, name, "map", key, value] => (
                tag,
                Field {
                    name: name.to_string(),
                    repeated: false,
                    map_key: Some(Scalar::parse(key).ok_or_else(malformed)?),
                    ty: Type::parse(value).ok_or_else(malformed)?,
                },
            ),
            _ => return Err(malformed()),
        };
        message.insert(tag.parse().map_err(|_| malformed())?, field);
    }
    Ok(messages)
}

fn messages() -> &'static Messages {
    static MESSAGES: OnceLock<Messages> = OnceLock::new();
    MESSAGES.get_or_init(|| {
        // The table is compiled in and checked by the tests; a parse failure is a build
        // defect, reported on every protobuf request rather than by a panic.
        parse_table(TABLE).unwrap_or_else(|e| {
            tracing::error!(error = %e, "the protobuf schema table does not parse");
            HashMap::new()
        })
    })
}

/// `podIP`, `pod_ip` and `r#type` all normalise to the same key.
fn normalise(name: &str) -> String {
    name.trim_start_matches("r#")
        .chars()
        .filter(|c| *c != '_')
        .flat_map(char::to_lowercase)
        .collect()
}

/// JSON property names per schema definition, both keyed by their normalised form
/// (`k8s-pb` spells `PodOS` as `PodOs`, `HTTPGetAction` as `HttpGetAction`).
fn json_names() -> &'static HashMap<String, HashMap<String, String>> {
    static NAMES: OnceLock<HashMap<String, HashMap<String, String>>> = OnceLock::new();
    NAMES.get_or_init(|| {
        let mut out = HashMap::new();
        for (definition, schema) in crate::openapi::definitions_with(EXTRA_SCHEMAS) {
            let props = schema
                .get("properties")
                .and_then(Value::as_object)
                .map(|props| props.keys().map(|k| (normalise(k), k.clone())).collect())
                .unwrap_or_default();
            out.insert(normalise(&definition), props);
        }
        out
    })
}

/// The schemas of [`EXTRA_ROOTS`], added to the served kinds' for field names.
const EXTRA_SCHEMAS: crate::openapi::ExtraSchemas = |generator| {
    use k8s_openapi::api::{autoscaling::v1 as autoscaling, core::v1 as core};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
    generator.subschema_for::<core::Binding>();
    generator.subschema_for::<autoscaling::Scale>();
    generator.subschema_for::<meta::DeleteOptions>();
};

/// How a field appears in JSON.
#[derive(Debug, PartialEq, Eq)]
enum JsonField {
    /// Under this property name.
    Named(String),
    /// Its fields are the parent's own: a Go struct embedded with `json:",inline"`
    /// (`Volume.volumeSource`, `Probe.handler`, ...), which the schema does not name.
    Inline,
}

/// Where `field` goes in JSON, named after the schema of `owner` (the message itself, or
/// for an embedded struct without a schema of its own, the message it is inlined in):
/// the schema's property of that name; inline for a message-typed field the schema lacks;
/// lower camel case of the `k8s-pb` name for a field newer than `k8s-openapi` or a type
/// without a schema.
fn json_field(owner: &str, field: &Field) -> JsonField {
    let props = json_names().get(&schema_key(owner));
    if let Some(name) = props.and_then(|props| props.get(&normalise(&field.name))) {
        return JsonField::Named(name.clone());
    }
    // An embedded struct's fields are all properties of the schema it is inlined in (a
    // field newer than the schema, such as `PodSpec.workloadRef`, has its own).
    if let (Some(props), Type::Message(inner)) = (props, &field.ty) {
        let embedded = field.map_key.is_none()
            && !field.repeated
            && !OPAQUE.contains(&inner.as_str())
            && messages().get(inner).is_some_and(|fields| {
                !fields.is_empty()
                    && fields
                        .values()
                        .all(|f| props.contains_key(&normalise(&f.name)))
            });
        if embedded {
            return JsonField::Inline;
        }
    }
    let mut out = String::new();
    let mut upper = false;
    for c in field.name.trim_start_matches("r#").chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    JsonField::Named(out)
}

/// The `k8s-pb` message path of a top-level kind.
fn root_message(api_version: &str, kind: &str) -> Option<String> {
    if kind == "DeleteOptions" {
        return Some("apimachinery.pkg.apis.meta.v1.DeleteOptions".into());
    }
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    // Upstream's proto package for group `x.k8s.io` is `k8s.io.api.x.<version>`.
    let package = if group.is_empty() {
        "core"
    } else {
        group.split('.').next().unwrap_or(group)
    };
    let path = format!("api.{package}.{version}.{kind}");
    let served = ferrokube_api::registry::find_kind(group, kind)
        .is_some_and(|r| r.api_version() == api_version);
    ((served || EXTRA_ROOTS.contains(&path.as_str())) && messages().contains_key(&path))
        .then_some(path)
}

/// Decodes an enveloped protobuf object into its JSON form.
pub fn decode(body: &[u8]) -> Result<Value, ApiError> {
    let raw = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("missing the k8s envelope"))?;
    let unknown = k8s_pb::apimachinery::pkg::runtime::Unknown::decode(raw).map_err(bad)?;
    let type_meta = unknown.type_meta.unwrap_or_default();
    let (api_version, kind) = (
        type_meta.api_version.unwrap_or_default(),
        type_meta.kind.unwrap_or_default(),
    );
    let encoding = unknown.content_encoding.unwrap_or_default();
    if !encoding.is_empty() {
        return Err(bad(format!("unsupported content encoding {encoding:?}")));
    }
    let path = root_message(&api_version, &kind).ok_or_else(|| {
        ApiError::UnsupportedMediaType(format!(
            "protobuf bodies are accepted for the served kinds; {api_version} {kind} is not one: send it as application/json or application/yaml"
        ))
    })?;
    let raw = unknown.raw.unwrap_or_default();
    let mut object = match message(&path, &path, &raw, 0)? {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    object.insert("apiVersion".into(), json!(api_version));
    object.insert("kind".into(), json!(kind));
    Ok(Value::Object(object))
}

/// A wire value before it is given its type.
enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32,
    Bytes(&'a [u8]),
}

fn next_field<'a>(buf: &mut &'a [u8]) -> Result<(u32, Wire<'a>), ApiError> {
    let (tag, wire_type) = decode_key(buf).map_err(bad)?;
    let value = match wire_type {
        WireType::Varint => Wire::Varint(decode_varint(buf).map_err(bad)?),
        WireType::SixtyFourBit => {
            if buf.remaining() < 8 {
                return Err(bad("truncated fixed64"));
            }
            Wire::Fixed64(buf.get_u64_le())
        }
        WireType::ThirtyTwoBit => {
            if buf.remaining() < 4 {
                return Err(bad("truncated fixed32"));
            }
            buf.advance(4);
            Wire::Fixed32
        }
        WireType::LengthDelimited => {
            let len = usize::try_from(decode_varint(buf).map_err(bad)?)
                .map_err(|_| bad("length overflow"))?;
            if buf.len() < len {
                return Err(bad("truncated length-delimited field"));
            }
            let (head, tail) = buf.split_at(len);
            *buf = tail;
            Wire::Bytes(head)
        }
        WireType::StartGroup | WireType::EndGroup => return Err(bad("groups are not used")),
    };
    Ok((tag, value))
}

fn string(bytes: &[u8]) -> Result<String, ApiError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| bad("a string field is not UTF-8"))
}

/// One scalar from its wire value.
fn scalar(ty: Scalar, wire: &Wire) -> Result<Value, ApiError> {
    Ok(match (ty, wire) {
        (Scalar::String, Wire::Bytes(b)) => json!(string(b)?),
        (Scalar::Bytes, Wire::Bytes(b)) => {
            json!(base64::engine::general_purpose::STANDARD.encode(b))
        }
        (Scalar::Bool, Wire::Varint(v)) => json!(*v != 0),
        // int32 travels sign-extended to 64 bits: truncation is the decoding.
        (Scalar::Int32, Wire::Varint(v)) => json!(*v as i64 as i32),
        (Scalar::Int64, Wire::Varint(v)) => json!(*v as i64),
        (Scalar::Double, Wire::Fixed64(v)) => json!(f64::from_bits(*v)),
        _ => return Err(bad(format!("a {ty:?} field has the wrong wire type"))),
    })
}

/// Values of a repeated scalar field: one value, or a packed run of them.
fn scalars(ty: Scalar, wire: Wire) -> Result<Vec<Value>, ApiError> {
    match (ty, wire) {
        (Scalar::Bool | Scalar::Int32 | Scalar::Int64, Wire::Bytes(mut packed)) => {
            let mut out = Vec::new();
            while !packed.is_empty() {
                out.push(scalar(
                    ty,
                    &Wire::Varint(decode_varint(&mut packed).map_err(bad)?),
                )?);
            }
            Ok(out)
        }
        (Scalar::Double, Wire::Bytes(packed)) => packed
            .chunks(8)
            .map(|c| {
                let bytes: [u8; 8] = c.try_into().map_err(|_| bad("truncated packed double"))?;
                scalar(ty, &Wire::Fixed64(u64::from_le_bytes(bytes)))
            })
            .collect(),
        (ty, wire) => Ok(vec![scalar(ty, &wire)?]),
    }
}

fn typed(ty: &Type, wire: Wire, depth: usize) -> Result<Value, ApiError> {
    match (ty, wire) {
        (Type::Scalar(s), wire) => scalar(*s, &wire),
        (Type::Message(path), Wire::Bytes(b)) => message(path, path, b, depth + 1),
        (Type::Message(path), _) => Err(bad(format!("{path} is not length-delimited"))),
    }
}

/// Reads `(seconds, nanos)` of a `Time` or `MicroTime`.
fn time_parts(mut buf: &[u8]) -> Result<(i64, i64), ApiError> {
    let (mut seconds, mut nanos) = (0i64, 0i64);
    while !buf.is_empty() {
        match next_field(&mut buf)? {
            (1, Wire::Varint(v)) => seconds = v as i64,
            (2, Wire::Varint(v)) => nanos = i64::from(v as i64 as i32),
            _ => {}
        }
    }
    Ok((seconds, nanos))
}

fn rfc3339(seconds: i64, nanos: i64, micros: bool) -> Result<Value, ApiError> {
    let secs = u64::try_from(seconds).map_err(|_| bad("a time before 1970"))?;
    let nanos = u32::try_from(nanos.clamp(0, 999_999_999)).unwrap_or(0);
    let at = UNIX_EPOCH + Duration::new(secs, nanos);
    let text = if micros {
        humantime::format_rfc3339_micros(at).to_string()
    } else {
        humantime::format_rfc3339_seconds(at).to_string()
    };
    Ok(json!(text))
}

/// The JSON form of one message, its fields named after `owner`'s schema (see
/// [`json_field`]); `Null` for values JSON omits (a zero `Time`).
fn message(path: &str, owner: &str, mut buf: &[u8], depth: usize) -> Result<Value, ApiError> {
    if depth > MAX_DEPTH {
        return Err(bad("nesting too deep"));
    }
    // Types whose JSON form is not an object of their fields.
    match path {
        "apimachinery.pkg.apis.meta.v1.Time" | "apimachinery.pkg.apis.meta.v1.MicroTime" => {
            let (seconds, nanos) = time_parts(buf)?;
            if seconds == 0 && nanos == 0 {
                return Ok(Value::Null);
            }
            return rfc3339(seconds, nanos, path.ends_with("MicroTime"));
        }
        "apimachinery.pkg.api.resource.Quantity" => {
            let mut out = Value::Null;
            while !buf.is_empty() {
                if let (1, Wire::Bytes(b)) = next_field(&mut buf)? {
                    out = json!(string(b)?);
                }
            }
            return Ok(out);
        }
        "apimachinery.pkg.util.intstr.IntOrString" => {
            let (mut kind, mut int, mut text) = (0u64, 0i64, String::new());
            while !buf.is_empty() {
                match next_field(&mut buf)? {
                    (1, Wire::Varint(v)) => kind = v,
                    (2, Wire::Varint(v)) => int = i64::from(v as i64 as i32),
                    (3, Wire::Bytes(b)) => text = string(b)?,
                    _ => {}
                }
            }
            return Ok(if kind == 1 { json!(text) } else { json!(int) });
        }
        "apimachinery.pkg.runtime.RawExtension" | "apimachinery.pkg.apis.meta.v1.FieldsV1" => {
            let mut out = Value::Null;
            while !buf.is_empty() {
                if let (1, Wire::Bytes(b)) = next_field(&mut buf)? {
                    out = serde_json::from_slice(b)
                        .map_err(|e| bad(format!("{path} does not hold JSON: {e}")))?;
                }
            }
            return Ok(out);
        }
        _ => {}
    }
    let fields = messages()
        .get(path)
        .ok_or_else(|| bad(format!("no schema for {path}")))?;
    let mut out = Map::new();
    while !buf.is_empty() {
        let (tag, wire) = next_field(&mut buf)?;
        // Like Go's decoder, fields this version does not know are skipped.
        let Some(field) = fields.get(&tag) else {
            continue;
        };
        let name = match json_field(owner, field) {
            JsonField::Named(name) => name,
            JsonField::Inline => {
                let (Type::Message(inner), Wire::Bytes(b)) = (&field.ty, wire) else {
                    return Err(bad(format!("{path}.{} is not a message", field.name)));
                };
                if let Value::Object(fields) =
                    message(inner, names_owner(inner, owner), b, depth + 1)?
                {
                    out.extend(fields);
                }
                continue;
            }
        };
        if let Some(key_type) = field.map_key {
            let Wire::Bytes(mut entry) = wire else {
                return Err(bad(format!("map {path}.{name} is not length-delimited")));
            };
            let (mut key, mut value) = (None, None);
            while !entry.is_empty() {
                match next_field(&mut entry)? {
                    (1, wire) => key = Some(scalar(key_type, &wire)?),
                    (2, wire) => value = Some(typed(&field.ty, wire, depth)?),
                    _ => {}
                }
            }
            let key = match key {
                Some(Value::String(s)) => s,
                Some(other) => other.to_string(),
                None => String::new(),
            };
            let value = value.unwrap_or_else(|| match &field.ty {
                Type::Scalar(Scalar::String | Scalar::Bytes) => json!(""),
                _ => Value::Null,
            });
            if let Value::Object(map) = out.entry(name).or_insert_with(|| json!({})) {
                map.insert(key, value);
            }
        } else if field.repeated {
            let values = match &field.ty {
                Type::Scalar(s) => scalars(*s, wire)?,
                ty => vec![typed(ty, wire, depth)?],
            };
            if let Value::Array(items) = out.entry(name).or_insert_with(|| json!([])) {
                items.extend(values);
            }
        } else {
            match typed(&field.ty, wire, depth)? {
                Value::Null => {}
                Value::String(s) if s.is_empty() => {}
                value => {
                    out.insert(name, value);
                }
            }
        }
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests;
