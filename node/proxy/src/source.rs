//! Where desired state comes from: a YAML file of Services and EndpointSlices
//! (`--from-file`), or the apiserver through kube-rs watchers ([`watch`]). Both become a
//! stream of [`Input`] for the sync layer.

use std::collections::BTreeMap;
use std::path::Path;

use futures::StreamExt as _;
use futures::stream::BoxStream;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::runtime::{WatchStreamExt as _, watcher};
use serde::Deserialize as _;
use tracing::warn;

use crate::model::{Change, ObjectRef};
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
    /// Watching the apiserver failed (the watcher retries with backoff).
    #[error("watching {resource}: {source}")]
    Watch {
        /// `services` or `endpointslices`.
        resource: &'static str,
        /// Why.
        #[source]
        source: kube::runtime::watcher::Error,
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

/// One watcher's event, tagged with its resource.
// Transient: each is moved once from the watcher into the state, so boxing buys nothing.
#[allow(clippy::large_enum_variant)]
enum Watched {
    Service(watcher::Event<Service>),
    Slice(watcher::Event<EndpointSlice>),
}

/// Everything both watchers have reported, so that a relist can become a snapshot.
#[derive(Default)]
struct WatchState {
    services: BTreeMap<(String, String), Service>,
    slices: BTreeMap<(String, String), EndpointSlice>,
    /// Objects of a resource being relisted, buffered until its `InitDone`.
    services_relist: Option<BTreeMap<(String, String), Service>>,
    slices_relist: Option<BTreeMap<(String, String), EndpointSlice>>,
    /// Whether each resource has completed its first list.
    listed_services: bool,
    listed_slices: bool,
    /// Whether the first snapshot has been given out.
    started: bool,
}

fn key(meta: &ObjectMeta) -> (String, String) {
    let r = ObjectRef::of(meta);
    (r.namespace, r.name)
}

impl WatchState {
    fn snapshot(&self) -> Input {
        Input::Snapshot(
            self.services
                .values()
                .map(|s| Object::Service(Box::new(s.clone())))
                .chain(
                    self.slices
                        .values()
                        .map(|s| Object::Slice(Box::new(s.clone()))),
                )
                .collect(),
        )
    }

    fn relisting(&self) -> bool {
        self.services_relist.is_some() || self.slices_relist.is_some()
    }

    /// Folds in one event; returns what the sync layer should get, if anything: nothing
    /// until both resources have listed, then one snapshot, then one change per event (and
    /// a new snapshot after a relist, which may hide deletions made while disconnected).
    fn on(&mut self, event: Watched) -> Option<Input> {
        let change = match event {
            Watched::Service(watcher::Event::Init) => {
                self.services_relist = Some(BTreeMap::new());
                None
            }
            Watched::Slice(watcher::Event::Init) => {
                self.slices_relist = Some(BTreeMap::new());
                None
            }
            Watched::Service(watcher::Event::InitApply(s)) => {
                self.services_relist
                    .get_or_insert_with(BTreeMap::new)
                    .insert(key(&s.metadata), s);
                None
            }
            Watched::Slice(watcher::Event::InitApply(s)) => {
                self.slices_relist
                    .get_or_insert_with(BTreeMap::new)
                    .insert(key(&s.metadata), s);
                None
            }
            Watched::Service(watcher::Event::InitDone) => {
                self.services = self.services_relist.take().unwrap_or_default();
                self.listed_services = true;
                return self.maybe_snapshot();
            }
            Watched::Slice(watcher::Event::InitDone) => {
                self.slices = self.slices_relist.take().unwrap_or_default();
                self.listed_slices = true;
                return self.maybe_snapshot();
            }
            Watched::Service(watcher::Event::Apply(s)) => {
                self.services.insert(key(&s.metadata), s.clone());
                Some(Change::Service(Box::new(s)))
            }
            Watched::Slice(watcher::Event::Apply(s)) => {
                self.slices.insert(key(&s.metadata), s.clone());
                Some(Change::Slice(Box::new(s)))
            }
            Watched::Service(watcher::Event::Delete(s)) => {
                self.services.remove(&key(&s.metadata));
                Some(Change::ServiceDeleted(ObjectRef::of(&s.metadata)))
            }
            Watched::Slice(watcher::Event::Delete(s)) => {
                self.slices.remove(&key(&s.metadata));
                Some(Change::SliceDeleted(ObjectRef::of(&s.metadata)))
            }
        };
        // Changes before the first snapshot (or during a relist) are in the next one.
        change
            .filter(|_| self.started && !self.relisting())
            .map(Input::Change)
    }

    fn maybe_snapshot(&mut self) -> Option<Input> {
        if self.relisting() {
            return None;
        }
        if !self.started {
            // The first snapshot needs both lists; the first InitDone of each comes once.
            if self.seen_both() {
                self.started = true;
                return Some(self.snapshot());
            }
            return None;
        }
        Some(self.snapshot())
    }

    fn seen_both(&self) -> bool {
        self.listed_services && self.listed_slices
    }
}

/// Watches every Service and EndpointSlice through kube-rs: one [`Input::Snapshot`] once
/// both are listed (and again after a watcher relists), then one [`Input::Change`] per
/// event. Watch failures are items (the watchers retry with backoff), so the agent logs
/// them and keeps serving what it has.
pub fn watch(client: kube::Client) -> BoxStream<'static, Result<Input, SourceError>> {
    let services = watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .map(|e| {
        e.map(Watched::Service)
            .map_err(|source| SourceError::Watch {
                resource: "services",
                source,
            })
    });
    let slices = watcher(
        Api::<EndpointSlice>::all(client),
        watcher::Config::default(),
    )
    .default_backoff()
    .map(|e| {
        e.map(Watched::Slice).map_err(|source| SourceError::Watch {
            resource: "endpointslices",
            source,
        })
    });
    futures::stream::select(services, slices)
        .scan(WatchState::default(), |state, event| {
            let out = match event {
                Ok(event) => state.on(event).map(Ok),
                Err(e) => Some(Err(e)),
            };
            futures::future::ready(Some(out))
        })
        .filter_map(futures::future::ready)
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str) -> Service {
        let mut s = Service::default();
        s.metadata.name = Some(name.into());
        s.metadata.namespace = Some("default".into());
        s
    }

    fn slice(name: &str) -> EndpointSlice {
        let mut s = EndpointSlice::default();
        s.metadata.name = Some(name.into());
        s.metadata.namespace = Some("default".into());
        s
    }

    fn count(input: &Option<Input>) -> Option<usize> {
        match input {
            Some(Input::Snapshot(objects)) => Some(objects.len()),
            _ => None,
        }
    }

    #[test]
    fn one_snapshot_after_both_lists_then_changes() {
        let mut state = WatchState::default();
        assert!(state.on(Watched::Service(watcher::Event::Init)).is_none());
        assert!(
            state
                .on(Watched::Service(watcher::Event::InitApply(svc("a"))))
                .is_none()
        );
        assert!(
            state
                .on(Watched::Service(watcher::Event::InitDone))
                .is_none(),
            "slices not listed yet"
        );
        // A change before the first snapshot is folded into it.
        assert!(
            state
                .on(Watched::Service(watcher::Event::Apply(svc("b"))))
                .is_none()
        );
        assert!(state.on(Watched::Slice(watcher::Event::Init)).is_none());
        assert!(
            state
                .on(Watched::Slice(watcher::Event::InitApply(slice("a-1"))))
                .is_none()
        );
        assert_eq!(
            count(&state.on(Watched::Slice(watcher::Event::InitDone))),
            Some(3)
        );
        assert!(matches!(
            state.on(Watched::Slice(watcher::Event::Delete(slice("a-1")))),
            Some(Input::Change(Change::SliceDeleted(r))) if r.name == "a-1"
        ));
        assert!(matches!(
            state.on(Watched::Service(watcher::Event::Apply(svc("c")))),
            Some(Input::Change(Change::Service(_)))
        ));
    }

    #[test]
    fn a_relist_becomes_a_snapshot_without_what_vanished() {
        let mut state = WatchState::default();
        for event in [
            Watched::Service(watcher::Event::Init),
            Watched::Service(watcher::Event::InitApply(svc("a"))),
            Watched::Service(watcher::Event::InitApply(svc("b"))),
            Watched::Service(watcher::Event::InitDone),
            Watched::Slice(watcher::Event::Init),
        ] {
            assert!(state.on(event).is_none());
        }
        assert_eq!(
            count(&state.on(Watched::Slice(watcher::Event::InitDone))),
            Some(2)
        );
        // The service watch restarts; "b" was deleted while it was down.
        assert!(state.on(Watched::Service(watcher::Event::Init)).is_none());
        assert!(
            state
                .on(Watched::Service(watcher::Event::InitApply(svc("a"))))
                .is_none()
        );
        assert!(
            state
                .on(Watched::Slice(watcher::Event::Apply(slice("x"))))
                .is_none(),
            "held back during the relist"
        );
        assert_eq!(
            count(&state.on(Watched::Service(watcher::Event::InitDone))),
            Some(2)
        );
    }
}
