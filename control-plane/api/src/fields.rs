//! Field validation (`fieldValidation=Strict|Warn|Ignore`): fields the type does not
//! have, found by decoding into the `k8s-openapi` type and comparing what comes back, and
//! keys repeated within one JSON object, found while scanning the raw body.

use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;

use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

fn roundtrip<T: DeserializeOwned + Serialize>(object: &Value) -> Option<Value> {
    let typed: T = serde_json::from_value(object.clone()).ok()?;
    serde_json::to_value(typed).ok()
}

fn typed_form(kind: &str, object: &Value) -> Option<Value> {
    use k8s_openapi::api::{
        apps::v1 as apps, coordination::v1 as coord, core::v1 as core, discovery::v1 as disc,
    };
    match kind {
        "Namespace" => roundtrip::<core::Namespace>(object),
        "Pod" => roundtrip::<core::Pod>(object),
        "Service" => roundtrip::<core::Service>(object),
        "Endpoints" => roundtrip::<core::Endpoints>(object),
        "Node" => roundtrip::<core::Node>(object),
        "ConfigMap" => roundtrip::<core::ConfigMap>(object),
        "Secret" => roundtrip::<core::Secret>(object),
        "Event" => roundtrip::<core::Event>(object),
        "ServiceAccount" => roundtrip::<core::ServiceAccount>(object),
        "Deployment" => roundtrip::<apps::Deployment>(object),
        "ReplicaSet" => roundtrip::<apps::ReplicaSet>(object),
        "DaemonSet" => roundtrip::<apps::DaemonSet>(object),
        "EndpointSlice" => roundtrip::<disc::EndpointSlice>(object),
        "Lease" => roundtrip::<coord::Lease>(object),
        _ => None,
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn diff(input: &Value, known: &Value, path: &str, out: &mut Vec<String>) {
    match (input, known) {
        (Value::Object(i), Value::Object(k)) => {
            for (key, value) in i {
                let at = join(path, key);
                match k.get(key) {
                    None if !value.is_null() => out.push(at),
                    None => {}
                    Some(known) => diff(value, known, &at, out),
                }
            }
        }
        (Value::Array(i), Value::Array(k)) => {
            for (n, (a, b)) in i.iter().zip(k).enumerate() {
                diff(a, b, &format!("{path}[{n}]"), out);
            }
        }
        _ => {}
    }
}

/// Paths of fields in `object` that its kind does not define (e.g. `spec.foo`).
pub fn unknown_fields(kind: &str, object: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(known) = typed_form(kind, object) {
        diff(object, &known, "", &mut out);
    }
    out
}

struct Dup<'a> {
    path: String,
    found: &'a RefCell<Vec<String>>,
}

impl<'de> DeserializeSeed<'de> for Dup<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Dup<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            let at = join(&self.path, &key);
            if !seen.insert(key) {
                self.found.borrow_mut().push(at.clone());
            }
            map.next_value_seed(Dup {
                path: at,
                found: self.found,
            })?;
        }
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut n = 0;
        while seq
            .next_element_seed(Dup {
                path: format!("{}[{n}]", self.path),
                found: self.found,
            })?
            .is_some()
        {
            n += 1;
        }
        Ok(())
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
}

/// Paths of keys repeated within one object of a JSON document (empty if it does not
/// parse; parse errors are reported elsewhere).
pub fn duplicate_fields(json: &[u8]) -> Vec<String> {
    let found = RefCell::new(Vec::new());
    let mut de = serde_json::Deserializer::from_slice(json);
    let _ = Dup {
        path: String::new(),
        found: &found,
    }
    .deserialize(&mut de);
    found.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_fields_are_found_with_their_paths() {
        let deploy = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "bogus": 1},
            "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"spec": {"containers": [{"name": "c", "image": "i", "imagePolicy": "x"}]}}, "replica": 3}});
        assert_eq!(
            unknown_fields("Deployment", &deploy),
            vec![
                "metadata.bogus",
                "spec.replica",
                "spec.template.spec.containers[0].imagePolicy"
            ]
        );
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "labels": {}}, "data": {"k": "v"}});
        assert!(unknown_fields("ConfigMap", &cm).is_empty());
        let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"p": "x"}, "type": "Opaque"});
        assert!(unknown_fields("Secret", &secret).is_empty());
    }

    #[test]
    fn duplicate_keys_are_found() {
        let body = br#"{"metadata": {"name": "a", "name": "b"}, "data": {"x": "1"}, "items": [{"k": 1, "k": 2}]}"#;
        assert_eq!(duplicate_fields(body), vec!["metadata.name", "items[0].k"]);
        assert!(duplicate_fields(br#"{"a": {"b": 1}, "c": {"b": 2}}"#).is_empty());
    }
}
