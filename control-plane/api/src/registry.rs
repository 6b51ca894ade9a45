//! The resource registry: every served resource declared once, driving routing,
//! discovery, storage keys and table output.

/// What the apiserver knows about one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resource {
    /// API group ("" for core).
    pub group: &'static str,
    /// API version.
    pub version: &'static str,
    /// Kind of one object.
    pub kind: &'static str,
    /// Plural resource name (URL segment and storage key part).
    pub plural: &'static str,
    /// Singular name.
    pub singular: &'static str,
    /// Short names kubectl accepts.
    pub short_names: &'static [&'static str],
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// Subresources served.
    pub subresources: &'static [Subresource],
    /// Discovery categories (`kubectl get all`).
    pub categories: &'static [&'static str],
    /// Whether a spec change bumps metadata.generation.
    pub has_spec: bool,
}

/// A subresource of a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subresource {
    /// `/status`: only the status field changes.
    Status,
    /// `/binding` (pods): bind to a node.
    Binding,
    /// `/scale`: the autoscaling/v1 Scale view of replicas.
    Scale,
}

impl Subresource {
    /// The URL segment.
    pub fn name(self) -> &'static str {
        match self {
            Subresource::Status => "status",
            Subresource::Binding => "binding",
            Subresource::Scale => "scale",
        }
    }

    /// Parses a URL segment.
    pub fn parse(segment: &str) -> Option<Self> {
        match segment {
            "status" => Some(Subresource::Status),
            "binding" => Some(Subresource::Binding),
            "scale" => Some(Subresource::Scale),
            _ => None,
        }
    }
}

/// The verbs every main resource supports.
pub const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

const STATUS: &[Subresource] = &[Subresource::Status];
const STATUS_SCALE: &[Subresource] = &[Subresource::Status, Subresource::Scale];
const POD_SUBS: &[Subresource] = &[Subresource::Status, Subresource::Binding];
const ALL: &[&str] = &["all"];

macro_rules! resource {
    ($group:expr, $version:expr, $kind:expr, $plural:expr, $singular:expr, [$($short:expr),*], $namespaced:expr, $subs:expr, $cats:expr, $spec:expr) => {
        Resource {
            group: $group,
            version: $version,
            kind: $kind,
            plural: $plural,
            singular: $singular,
            short_names: &[$($short),*],
            namespaced: $namespaced,
            subresources: $subs,
            categories: $cats,
            has_spec: $spec,
        }
    };
}

/// Every resource the apiserver serves.
#[rustfmt::skip]
pub const RESOURCES: &[Resource] = &[
    resource!("", "v1", "Namespace", "namespaces", "namespace", ["ns"], false, STATUS, &[], true),
    resource!("", "v1", "Pod", "pods", "pod", ["po"], true, POD_SUBS, ALL, true),
    resource!("", "v1", "Service", "services", "service", ["svc"], true, STATUS, ALL, true),
    resource!("", "v1", "Endpoints", "endpoints", "endpoints", ["ep"], true, &[], &[], false),
    resource!("", "v1", "Node", "nodes", "node", ["no"], false, STATUS, &[], true),
    resource!("", "v1", "ConfigMap", "configmaps", "configmap", ["cm"], true, &[], &[], false),
    resource!("", "v1", "Secret", "secrets", "secret", [], true, &[], &[], false),
    resource!("", "v1", "Event", "events", "event", ["ev"], true, &[], &[], false),
    resource!("", "v1", "ServiceAccount", "serviceaccounts", "serviceaccount", ["sa"], true, &[], &[], false),
    resource!("apps", "v1", "Deployment", "deployments", "deployment", ["deploy"], true, STATUS_SCALE, ALL, true),
    resource!("apps", "v1", "ReplicaSet", "replicasets", "replicaset", ["rs"], true, STATUS_SCALE, ALL, true),
    resource!("apps", "v1", "DaemonSet", "daemonsets", "daemonset", ["ds"], true, STATUS, ALL, true),
    resource!("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", "endpointslice", [], true, &[], &[], false),
    resource!("coordination.k8s.io", "v1", "Lease", "leases", "lease", [], true, &[], &[], true),
];

impl Resource {
    /// `group/version`, or `version` for core.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Kind of a list of these objects.
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// The storage key prefix of all objects of this resource (in `namespace`, when given).
    pub fn key_prefix(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("/registry/{}/{}/", self.plural, ns),
            _ => format!("/registry/{}/", self.plural),
        }
    }

    /// The storage key of one object.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        format!("{}{}", self.key_prefix(namespace), name)
    }

    /// Whether the subresource is served.
    pub fn has(&self, sub: Subresource) -> bool {
        self.subresources.contains(&sub)
    }
}

/// Finds a resource by group, version and plural.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// Finds a resource by group and kind.
pub fn find_kind(group: &str, kind: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.kind == kind)
}

/// The named groups (not core), in order of first appearance, with their versions.
pub fn groups() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for r in RESOURCES.iter().filter(|r| !r.group.is_empty()) {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}

/// Resources of one group version.
pub fn in_group_version<'a>(
    group: &'a str,
    version: &'a str,
) -> impl Iterator<Item = &'static Resource> + 'a {
    RESOURCES
        .iter()
        .filter(move |r| r.group == group && r.version == version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plurals_are_unique_so_storage_keys_do_not_collide() {
        for (i, a) in RESOURCES.iter().enumerate() {
            for b in &RESOURCES[i + 1..] {
                assert_ne!(a.plural, b.plural);
            }
        }
    }

    #[test]
    fn keys_follow_the_upstream_layout() {
        let pods = find("", "v1", "pods").unwrap();
        assert_eq!(
            pods.key(Some("default"), "web"),
            "/registry/pods/default/web"
        );
        let ns = find("", "v1", "namespaces").unwrap();
        assert_eq!(
            ns.key(Some("ignored"), "kube-system"),
            "/registry/namespaces/kube-system"
        );
        assert_eq!(
            find_kind("apps", "Deployment").unwrap().api_version(),
            "apps/v1"
        );
        assert_eq!(groups()[0], ("apps", "v1"));
    }
}
