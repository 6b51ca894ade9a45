//! Where desired state comes from: a YAML file of Services and EndpointSlices today
//! (`--from-file`), the apiserver through kube-rs once it exists. Both become a stream of
//! [`Input`] for the sync layer.

use std::path::Path;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Deserialize as _;
use tracing::warn;

use crate::sync::{Input, Object};

/// Errors reading desired state.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A YAML document is not valid YAML.
    #[error("document {index} of {path}: {source}")]
    Yaml {
        /// The file.
        path: String,
        /// 1-based document index.
        index: usize,
        /// Why.
        #[source]
        source: serde_norway::Error,
    },
    /// A Service or EndpointSlice document does not match its schema.
    #[error("document {index} of {path} ({kind}): {source}")]
    Object {
        /// The file.
        path: String,
        /// 1-based document index.
        index: usize,
        /// The document's kind.
        kind: String,
        /// Why.
        #[source]
        source: serde_norway::Error,
    },
}

/// Parses multi-document YAML: Services, EndpointSlices, and `List`s of them. Other kinds
/// are skipped with a warning.
pub fn parse_objects(text: &str, path: &str) -> Result<Vec<Object>, SourceError> {
    let mut objects = Vec::new();
    for (i, document) in serde_norway::Deserializer::from_str(text).enumerate() {
        let index = i + 1;
        let value =
            serde_norway::Value::deserialize(document).map_err(|source| SourceError::Yaml {
                path: path.into(),
                index,
                source,
            })?;
        collect(value, path, index, &mut objects)?;
    }
    Ok(objects)
}

fn collect(
    value: serde_norway::Value,
    path: &str,
    index: usize,
    out: &mut Vec<Object>,
) -> Result<(), SourceError> {
    if value.is_null() {
        return Ok(());
    }
    let kind = value
        .get("kind")
        .and_then(|k| k.as_str())
        .unwrap_or("")
        .to_string();
    let object_error = |source| SourceError::Object {
        path: path.into(),
        index,
        kind: kind.clone(),
        source,
    };
    match kind.as_str() {
        "Service" => out.push(Object::Service(Box::new(
            serde_norway::from_value::<Service>(value).map_err(object_error)?,
        ))),
        "EndpointSlice" => out.push(Object::Slice(Box::new(
            serde_norway::from_value::<EndpointSlice>(value).map_err(object_error)?,
        ))),
        "List" | "ServiceList" | "EndpointSliceList" => {
            if let Some(serde_norway::Value::Sequence(items)) = value.get("items").cloned() {
                for item in items {
                    collect(item, path, index, out)?;
                }
            }
        }
        other => warn!(
            path,
            index,
            kind = other,
            "skipping a document that is not a Service or EndpointSlice"
        ),
    }
    Ok(())
}

/// Reads a file as one [`Input::Snapshot`].
pub fn read_file(path: &Path) -> Result<Input, SourceError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| SourceError::Read {
        path: name.clone(),
        source,
    })?;
    Ok(Input::Snapshot(parse_objects(&text, &name)?))
}
