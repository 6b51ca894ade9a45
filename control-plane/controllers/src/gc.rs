//! The garbage collector, with upstream's semantics:
//!
//! - an object all of whose owners (`metadata.ownerReferences`, matched by uid) are gone
//!   is deleted (`Background` propagation, or `Foreground` when it blocks an owner that is
//!   itself being deleted in the foreground);
//! - an object with some owners gone and others alive loses the references to the gone
//!   ones (and to owners waiting for it in a foreground deletion);
//! - an owner deleted with `propagationPolicy: Orphan` carries the `orphan` finalizer: the
//!   collector removes the references to it from its dependents, then the finalizer;
//! - an owner deleted with `Foreground` carries `foregroundDeletion`: its dependents are
//!   deleted first and the finalizer is removed once no dependent with
//!   `blockOwnerDeletion: true` remains.
//!
//! It keeps an in-memory graph of every served object (uid, owners, finalizers), fed by
//! one kube-rs watcher per resource, and acts only once every watcher has listed. An owner
//! the graph has not seen is looked up with a live GET before anything is deleted, so a
//! dependent created just before its owner's watch event arrives is safe. Every write is
//! conditional (a uid precondition on deletes, the resourceVersion on patches): a stale
//! graph makes a request fail, never do the wrong thing; the next event or the periodic
//! resync retries it.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::time::Duration;

use ferrokube_api::registry::{self, RESOURCES, Resource};
use futures::StreamExt;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tracing::{debug, info, warn};

/// The finalizer of an owner deleted with `propagationPolicy: Orphan`.
pub const ORPHAN: &str = "orphan";
/// The finalizer of an owner deleted with `propagationPolicy: Foreground`.
pub const FOREGROUND: &str = "foregroundDeletion";

/// How often every object with owners or a collector finalizer is looked at again.
const RESYNC: Duration = Duration::from_secs(10);

/// What stops the garbage collector.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// Every watch stream ended (the client is gone).
    #[error("the watch streams ended")]
    WatchesEnded,
}

/// One owner reference of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerRef {
    pub uid: String,
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub block_owner_deletion: bool,
}

/// What the collector knows of one object.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Index into [`RESOURCES`].
    pub resource: usize,
    pub namespace: Option<String>,
    pub name: String,
    pub resource_version: String,
    pub owners: Vec<OwnerRef>,
    /// The object's `ownerReferences` as stored, to rewrite without the removed ones.
    pub raw_owners: Vec<Value>,
    pub finalizers: Vec<String>,
    pub deleting: bool,
}

impl Node {
    /// Reads a watched object.
    pub fn from_object(resource: usize, object: &DynamicObject) -> Option<(String, Node)> {
        let uid = object.metadata.uid.clone()?;
        let refs = object.metadata.owner_references.clone().unwrap_or_default();
        let owners = refs
            .iter()
            .map(|r| OwnerRef {
                uid: r.uid.clone(),
                api_version: r.api_version.clone(),
                kind: r.kind.clone(),
                name: r.name.clone(),
                block_owner_deletion: r.block_owner_deletion.unwrap_or(false),
            })
            .collect();
        let raw_owners = refs
            .iter()
            .filter_map(|r| serde_json::to_value(r).ok())
            .collect();
        Some((
            uid,
            Node {
                resource,
                namespace: object.metadata.namespace.clone(),
                name: object.name_any(),
                resource_version: object.resource_version().unwrap_or_default(),
                owners,
                raw_owners,
                finalizers: object.finalizers().to_vec(),
                deleting: object.metadata.deletion_timestamp.is_some(),
            },
        ))
    }

    fn has_finalizer(&self, name: &str) -> bool {
        self.finalizers.iter().any(|f| f == name)
    }

    /// Whether it is being deleted in the foreground (waiting for its dependents).
    fn waiting_for_dependents(&self) -> bool {
        self.deleting && self.has_finalizer(FOREGROUND)
    }
}

/// Every known object by uid, and the reverse edges (owner uid -> dependent uids).
#[derive(Debug, Default)]
pub struct Graph {
    nodes: HashMap<String, Node>,
    dependents: HashMap<String, BTreeSet<String>>,
}

impl Graph {
    /// Records an added or changed object; returns the uids to look at again.
    pub fn upsert(&mut self, uid: String, node: Node) -> Vec<String> {
        let mut touched = vec![uid.clone()];
        if let Some(old) = self.nodes.get(&uid) {
            for owner in &old.owners {
                if let Some(set) = self.dependents.get_mut(&owner.uid) {
                    set.remove(&uid);
                }
                touched.push(owner.uid.clone());
            }
        }
        for owner in &node.owners {
            self.dependents
                .entry(owner.uid.clone())
                .or_default()
                .insert(uid.clone());
            touched.push(owner.uid.clone());
        }
        if node.deleting {
            touched.extend(self.dependents_of(&uid));
        }
        self.nodes.insert(uid, node);
        touched
    }

    /// Forgets a deleted object; returns the uids to look at again (its owners, which may
    /// be waiting for it, and its dependents, which may now be orphans).
    pub fn remove(&mut self, uid: &str) -> Vec<String> {
        let mut touched = self.dependents_of(uid);
        if let Some(old) = self.nodes.remove(uid) {
            for owner in old.owners {
                if let Some(set) = self.dependents.get_mut(&owner.uid) {
                    set.remove(uid);
                    if set.is_empty() {
                        self.dependents.remove(&owner.uid);
                    }
                }
                touched.push(owner.uid);
            }
        }
        touched
    }

    pub fn get(&self, uid: &str) -> Option<&Node> {
        self.nodes.get(uid)
    }

    fn dependents_of(&self, uid: &str) -> Vec<String> {
        self.dependents
            .get(uid)
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The uids of every object of one resource.
    fn uids_of(&self, resource: usize) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.resource == resource)
            .map(|(uid, _)| uid.clone())
            .collect()
    }

    /// Everything the resync looks at: objects with owners or a collector finalizer.
    fn interesting(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|(_, n)| {
                !n.owners.is_empty() || n.has_finalizer(ORPHAN) || n.has_finalizer(FOREGROUND)
            })
            .map(|(uid, _)| uid.clone())
            .collect()
    }
}

/// One step the collector takes for an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Delete it (all its owners are gone), with this propagation policy.
    Delete { uid: String, foreground: bool },
    /// Rewrite its owner references without these owners.
    DropOwners { uid: String, owners: Vec<String> },
    /// Remove a collector finalizer from it: its dependents are dealt with.
    RemoveFinalizer {
        uid: String,
        finalizer: &'static str,
    },
}

/// Whether an owner the graph does not hold still exists (answered by a live GET).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    Exists,
    Gone,
    /// The lookup failed (or the kind is not served): do nothing for now.
    Unknown,
}

/// What to do for `uid`, given the graph and, for owners it does not hold, `lookup`.
pub fn plan(graph: &Graph, uid: &str, lookup: &HashMap<String, Liveness>) -> Vec<Action> {
    let Some(node) = graph.get(uid) else {
        return Vec::new();
    };
    let mut actions = Vec::new();
    // As an owner being deleted.
    if node.deleting && node.has_finalizer(ORPHAN) {
        for dependent in graph.dependents_of(uid) {
            actions.push(Action::DropOwners {
                uid: dependent,
                owners: vec![uid.to_string()],
            });
        }
        actions.push(Action::RemoveFinalizer {
            uid: uid.to_string(),
            finalizer: ORPHAN,
        });
        return actions;
    }
    if node.waiting_for_dependents() {
        let blocked = graph.dependents_of(uid).iter().any(|d| {
            graph.get(d).is_some_and(|dep| {
                dep.owners
                    .iter()
                    .any(|o| o.uid == uid && o.block_owner_deletion)
            })
        });
        if !blocked {
            actions.push(Action::RemoveFinalizer {
                uid: uid.to_string(),
                finalizer: FOREGROUND,
            });
        }
    }
    // As a dependent.
    if node.owners.is_empty() || node.deleting {
        return actions;
    }
    let (mut solid, mut dangling, mut waiting) = (Vec::new(), Vec::new(), Vec::new());
    for owner in &node.owners {
        match graph.get(&owner.uid) {
            Some(o) if o.waiting_for_dependents() => waiting.push(owner),
            Some(_) => solid.push(owner),
            None => match lookup.get(&owner.uid).copied().unwrap_or(Liveness::Unknown) {
                Liveness::Exists => solid.push(owner),
                Liveness::Gone => dangling.push(owner),
                Liveness::Unknown => return actions,
            },
        }
    }
    if !solid.is_empty() {
        if !dangling.is_empty() || !waiting.is_empty() {
            actions.push(Action::DropOwners {
                uid: uid.to_string(),
                owners: dangling
                    .iter()
                    .chain(&waiting)
                    .map(|o| o.uid.clone())
                    .collect(),
            });
        }
    } else {
        let foreground = waiting.iter().any(|o| o.block_owner_deletion);
        actions.push(Action::Delete {
            uid: uid.to_string(),
            foreground,
        });
    }
    actions
}

/// The served resource of an owner reference.
fn owner_resource(owner: &OwnerRef) -> Option<&'static Resource> {
    let (group, version) = owner
        .api_version
        .rsplit_once('/')
        .unwrap_or(("", owner.api_version.as_str()));
    registry::find_kind(group, &owner.kind).filter(|r| r.version == version)
}

/// The collector: a client, the graph and the work queue.
pub struct GarbageCollector {
    client: Client,
    graph: Graph,
    queue: VecDeque<String>,
    queued: HashSet<String>,
}

impl std::fmt::Debug for GarbageCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GarbageCollector")
            .field("objects", &self.graph.nodes.len())
            .field("queued", &self.queue.len())
            .finish_non_exhaustive()
    }
}

impl GarbageCollector {
    pub fn new(client: Client) -> Self {
        GarbageCollector {
            client,
            graph: Graph::default(),
            queue: VecDeque::new(),
            queued: HashSet::new(),
        }
    }

    fn enqueue(&mut self, uids: impl IntoIterator<Item = String>) {
        for uid in uids {
            if self.queued.insert(uid.clone()) {
                self.queue.push_back(uid);
            }
        }
    }

    fn api(&self, resource: usize, namespace: Option<&str>) -> Option<Api<DynamicObject>> {
        let r = RESOURCES.get(resource)?;
        let ar = crate::api_resource(r);
        Some(match namespace {
            Some(ns) if r.namespaced => Api::namespaced_with(self.client.clone(), ns, &ar),
            _ => Api::all_with(self.client.clone(), &ar),
        })
    }

    /// Runs until the watches end.
    pub async fn run(mut self) -> Result<(), GcError> {
        let streams = RESOURCES.iter().enumerate().map(|(i, r)| {
            let api: Api<DynamicObject> =
                Api::all_with(self.client.clone(), &crate::api_resource(r));
            watcher(api, watcher::Config::default())
                .default_backoff()
                .map(move |event| (i, event))
                .boxed()
        });
        let mut events = futures::stream::select_all(streams);
        let mut synced = vec![false; RESOURCES.len()];
        let mut relisted: Vec<HashSet<String>> = vec![HashSet::new(); RESOURCES.len()];
        let mut resync = tokio::time::interval(RESYNC);
        loop {
            let ready = synced.iter().all(|s| *s) && !self.queue.is_empty();
            tokio::select! {
                biased;
                event = events.next() => {
                    let Some((resource, event)) = event else {
                        return Err(GcError::WatchesEnded);
                    };
                    match event {
                        Ok(event) => self.observe(resource, event, &mut synced, &mut relisted),
                        Err(e) => warn!(resource = RESOURCES[resource].plural, error = %e, "garbage collector watch failed; retrying"),
                    }
                }
                _ = resync.tick() => {
                    let uids = self.graph.interesting();
                    self.enqueue(uids);
                }
                _ = std::future::ready(()), if ready => {
                    if let Some(uid) = self.queue.pop_front() {
                        self.queued.remove(&uid);
                        self.process(&uid).await;
                    }
                }
            }
        }
    }

    fn observe(
        &mut self,
        resource: usize,
        event: watcher::Event<DynamicObject>,
        synced: &mut [bool],
        relisted: &mut [HashSet<String>],
    ) {
        match event {
            watcher::Event::Apply(object) | watcher::Event::InitApply(object) => {
                if let Some((uid, node)) = Node::from_object(resource, &object) {
                    relisted[resource].insert(uid.clone());
                    let touched = self.graph.upsert(uid, node);
                    self.enqueue(touched);
                }
            }
            watcher::Event::Delete(object) => {
                if let Some(uid) = object.metadata.uid.as_deref() {
                    let touched = self.graph.remove(uid);
                    self.enqueue(touched);
                }
            }
            watcher::Event::Init => relisted[resource].clear(),
            watcher::Event::InitDone => {
                // Objects that vanished while the watch was down.
                for uid in self.graph.uids_of(resource) {
                    if !relisted[resource].contains(&uid) {
                        let touched = self.graph.remove(&uid);
                        self.enqueue(touched);
                    }
                }
                relisted[resource].clear();
                if !synced[resource] {
                    debug!(
                        resource = RESOURCES[resource].plural,
                        "garbage collector synced"
                    );
                }
                synced[resource] = true;
            }
        }
    }

    /// Looks up, with a live GET, the owners of `uid` that the graph does not hold.
    async fn lookup_owners(&self, uid: &str) -> HashMap<String, Liveness> {
        let mut out = HashMap::new();
        let Some(node) = self.graph.get(uid) else {
            return out;
        };
        for owner in &node.owners {
            if self.graph.get(&owner.uid).is_some() {
                continue;
            }
            let liveness = match owner_resource(owner) {
                None => Liveness::Unknown,
                Some(r) => {
                    let index = RESOURCES
                        .iter()
                        .position(|x| std::ptr::eq(x, r))
                        .unwrap_or(0);
                    let namespace = r.namespaced.then_some(node.namespace.as_deref()).flatten();
                    match self.api(index, namespace) {
                        None => Liveness::Unknown,
                        Some(api) => match api.get_opt(&owner.name).await {
                            Ok(Some(found))
                                if found.metadata.uid.as_deref() == Some(&owner.uid) =>
                            {
                                Liveness::Exists
                            }
                            Ok(_) => Liveness::Gone,
                            Err(e) => {
                                debug!(owner = owner.name, error = %e, "owner lookup failed");
                                Liveness::Unknown
                            }
                        },
                    }
                }
            };
            out.insert(owner.uid.clone(), liveness);
        }
        out
    }

    async fn process(&mut self, uid: &str) {
        let lookup = self.lookup_owners(uid).await;
        for action in plan(&self.graph, uid, &lookup) {
            if let Err(e) = self.execute(&action).await {
                // A conflict or a vanished object: the watch event that follows, or the
                // resync, brings it back with fresh state.
                debug!(?action, error = %e, "garbage collector action not applied");
                break;
            }
        }
    }

    async fn execute(&self, action: &Action) -> Result<(), kube::Error> {
        let (uid, node) = match action {
            Action::Delete { uid, .. }
            | Action::DropOwners { uid, .. }
            | Action::RemoveFinalizer { uid, .. } => match self.graph.get(uid) {
                Some(node) => (uid, node),
                None => return Ok(()),
            },
        };
        let Some(api) = self.api(node.resource, node.namespace.as_deref()) else {
            return Ok(());
        };
        let kind = RESOURCES[node.resource].kind;
        match action {
            Action::Delete { foreground, .. } => {
                let mut params = if *foreground {
                    DeleteParams::foreground()
                } else {
                    DeleteParams::background()
                };
                params.preconditions = Some(Preconditions {
                    uid: Some(uid.clone()),
                    resource_version: None,
                });
                info!(kind, namespace = ?node.namespace, name = node.name, foreground, "deleting an object whose owners are gone");
                match api.delete(&node.name, &params).await {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
                    Err(e) => Err(e),
                }
            }
            Action::DropOwners { owners, .. } => {
                let kept: Vec<&Value> = node
                    .owners
                    .iter()
                    .zip(&node.raw_owners)
                    .filter(|(o, _)| !owners.contains(&o.uid))
                    .map(|(_, raw)| raw)
                    .collect();
                let refs = if kept.is_empty() {
                    Value::Null
                } else {
                    json!(kept)
                };
                info!(kind, namespace = ?node.namespace, name = node.name, ?owners, "removing owner references");
                let patch = json!({"metadata": {"ownerReferences": refs, "resourceVersion": node.resource_version}});
                api.patch(&node.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map(|_| ())
            }
            Action::RemoveFinalizer { finalizer, .. } => {
                let kept: Vec<&String> =
                    node.finalizers.iter().filter(|f| f != finalizer).collect();
                let list = if kept.is_empty() {
                    Value::Null
                } else {
                    json!(kept)
                };
                info!(kind, namespace = ?node.namespace, name = node.name, finalizer, "dependents dealt with; removing the finalizer");
                let patch = json!({"metadata": {"finalizers": list, "resourceVersion": node.resource_version}});
                api.patch(&node.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map(|_| ())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(owners: &[(&str, bool)], finalizers: &[&str], deleting: bool) -> Node {
        Node {
            resource: 5,
            namespace: Some("ns".into()),
            name: "x".into(),
            resource_version: "1".into(),
            owners: owners
                .iter()
                .map(|(uid, block)| OwnerRef {
                    uid: uid.to_string(),
                    api_version: "v1".into(),
                    kind: "ConfigMap".into(),
                    name: format!("owner-{uid}"),
                    block_owner_deletion: *block,
                })
                .collect(),
            raw_owners: owners.iter().map(|(uid, _)| json!({"uid": uid})).collect(),
            finalizers: finalizers.iter().map(|f| f.to_string()).collect(),
            deleting,
        }
    }

    fn none() -> HashMap<String, Liveness> {
        HashMap::new()
    }

    #[test]
    fn dependents_of_a_live_owner_are_kept() {
        let mut g = Graph::default();
        g.upsert("o".into(), node(&[], &[], false));
        g.upsert("d".into(), node(&[("o", false)], &[], false));
        assert_eq!(plan(&g, "d", &none()), vec![]);
        assert_eq!(plan(&g, "o", &none()), vec![]);
    }

    #[test]
    fn a_dependent_whose_owners_are_all_gone_is_deleted() {
        let mut g = Graph::default();
        g.upsert("o".into(), node(&[], &[], false));
        g.upsert("d".into(), node(&[("o", true)], &[], false));
        let touched = g.remove("o");
        assert!(touched.contains(&"d".to_string()), "{touched:?}");
        let gone = HashMap::from([("o".to_string(), Liveness::Gone)]);
        assert_eq!(
            plan(&g, "d", &gone),
            vec![Action::Delete {
                uid: "d".into(),
                foreground: false
            }]
        );
        // Until the live lookup has answered, nothing happens.
        assert_eq!(plan(&g, "d", &none()), vec![]);
        let exists = HashMap::from([("o".to_string(), Liveness::Exists)]);
        assert_eq!(plan(&g, "d", &exists), vec![]);
    }

    #[test]
    fn a_dependent_with_one_live_owner_only_loses_the_dangling_reference() {
        let mut g = Graph::default();
        g.upsert("a".into(), node(&[], &[], false));
        g.upsert("d".into(), node(&[("a", false), ("b", false)], &[], false));
        let gone = HashMap::from([("b".to_string(), Liveness::Gone)]);
        assert_eq!(
            plan(&g, "d", &gone),
            vec![Action::DropOwners {
                uid: "d".into(),
                owners: vec!["b".into()]
            }]
        );
    }

    #[test]
    fn orphaning_strips_references_then_the_finalizer() {
        let mut g = Graph::default();
        g.upsert("o".into(), node(&[], &[ORPHAN], true));
        g.upsert("d1".into(), node(&[("o", false)], &[], false));
        g.upsert("d2".into(), node(&[("o", true)], &[], false));
        assert_eq!(
            plan(&g, "o", &none()),
            vec![
                Action::DropOwners {
                    uid: "d1".into(),
                    owners: vec!["o".into()]
                },
                Action::DropOwners {
                    uid: "d2".into(),
                    owners: vec!["o".into()]
                },
                Action::RemoveFinalizer {
                    uid: "o".into(),
                    finalizer: ORPHAN
                },
            ]
        );
        // The dependents themselves see a live owner: they are not deleted.
        assert_eq!(plan(&g, "d1", &none()), vec![]);
    }

    #[test]
    fn foreground_deletes_dependents_and_waits_for_blocking_ones() {
        let mut g = Graph::default();
        g.upsert("o".into(), node(&[], &[FOREGROUND], true));
        g.upsert("block".into(), node(&[("o", true)], &[], false));
        g.upsert("free".into(), node(&[("o", false)], &[], false));
        assert_eq!(
            plan(&g, "o", &none()),
            vec![],
            "a blocking dependent remains"
        );
        assert_eq!(
            plan(&g, "block", &none()),
            vec![Action::Delete {
                uid: "block".into(),
                foreground: true
            }]
        );
        assert_eq!(
            plan(&g, "free", &none()),
            vec![Action::Delete {
                uid: "free".into(),
                foreground: false
            }]
        );
        let touched = g.remove("block");
        assert!(touched.contains(&"o".to_string()));
        assert_eq!(
            plan(&g, "o", &none()),
            vec![Action::RemoveFinalizer {
                uid: "o".into(),
                finalizer: FOREGROUND
            }],
            "only non-blocking dependents remain"
        );
    }

    #[test]
    fn a_dependent_with_another_live_owner_survives_a_foreground_deletion() {
        let mut g = Graph::default();
        g.upsert("o".into(), node(&[], &[FOREGROUND], true));
        g.upsert("other".into(), node(&[], &[], false));
        g.upsert(
            "d".into(),
            node(&[("o", true), ("other", false)], &[], false),
        );
        assert_eq!(
            plan(&g, "d", &none()),
            vec![Action::DropOwners {
                uid: "d".into(),
                owners: vec!["o".into()]
            }]
        );
    }

    #[test]
    fn changing_owners_updates_the_reverse_edges() {
        let mut g = Graph::default();
        g.upsert("d".into(), node(&[("a", false)], &[], false));
        assert_eq!(g.dependents_of("a"), vec!["d".to_string()]);
        let touched = g.upsert("d".into(), node(&[("b", false)], &[], false));
        assert!(touched.contains(&"a".to_string()) && touched.contains(&"b".to_string()));
        assert!(g.dependents_of("a").is_empty());
        assert_eq!(g.dependents_of("b"), vec!["d".to_string()]);
        g.remove("d");
        assert!(g.dependents_of("b").is_empty());
    }

    #[test]
    fn owner_references_resolve_to_served_resources() {
        let owner = |api_version: &str, kind: &str| OwnerRef {
            uid: "u".into(),
            api_version: api_version.into(),
            kind: kind.into(),
            name: "n".into(),
            block_owner_deletion: false,
        };
        assert_eq!(
            owner_resource(&owner("apps/v1", "ReplicaSet")).map(|r| r.plural),
            Some("replicasets")
        );
        assert_eq!(
            owner_resource(&owner("v1", "ConfigMap")).map(|r| r.plural),
            Some("configmaps")
        );
        assert!(owner_resource(&owner("batch/v1", "Job")).is_none());
        assert!(owner_resource(&owner("apps/v1beta1", "ReplicaSet")).is_none());
    }
}
