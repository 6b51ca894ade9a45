//! Discovery documents (`/api`, `/api/v1`, `/apis`, `/apis/G`, `/apis/G/V`) and
//! `/version`, all generated from the resource registry.

use ferrokube_api::registry::{self, Resource, VERBS};
use serde_json::{Value, json};

/// `/version`.
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "35",
        "gitVersion": concat!("v1.35.0-ferrokube.", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "n/a (rust)",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, match std::env::consts::ARCH { "x86_64" => "amd64", "aarch64" => "arm64", other => other }),
    })
}

/// `/api`.
pub fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn group_entry(group: &str, version: &str) -> Value {
    let gv = json!({"groupVersion": format!("{group}/{version}"), "version": version});
    json!({"name": group, "versions": [gv.clone()], "preferredVersion": gv})
}

/// `/apis`.
pub fn groups() -> Value {
    json!({
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": registry::groups().into_iter().map(|(g, v)| group_entry(g, v)).collect::<Vec<_>>(),
    })
}

/// `/apis/G`, if the group is served.
pub fn group(name: &str) -> Option<Value> {
    registry::groups()
        .into_iter()
        .find(|(g, _)| *g == name)
        .map(|(g, v)| {
            let mut entry = group_entry(g, v);
            entry["kind"] = json!("APIGroup");
            entry["apiVersion"] = json!("v1");
            entry
        })
}

fn resource_entries(r: &Resource) -> Vec<Value> {
    let mut out = vec![json!({
        "name": r.plural,
        "singularName": r.singular,
        "namespaced": r.namespaced,
        "kind": r.kind,
        "verbs": VERBS,
        "shortNames": r.short_names,
        "categories": r.categories,
    })];
    for sub in r.subresources {
        let (kind, group, version, verbs): (&str, Option<&str>, Option<&str>, &[&str]) = match sub {
            registry::Subresource::Status => (r.kind, None, None, &["get", "patch", "update"]),
            registry::Subresource::Binding => ("Binding", None, None, &["create"]),
            registry::Subresource::Scale => (
                "Scale",
                Some("autoscaling"),
                Some("v1"),
                &["get", "patch", "update"],
            ),
        };
        let mut entry = json!({
            "name": format!("{}/{}", r.plural, sub.name()),
            "singularName": "",
            "namespaced": r.namespaced,
            "kind": kind,
            "verbs": verbs,
        });
        if let (Some(g), Some(v)) = (group, version) {
            entry["group"] = json!(g);
            entry["version"] = json!(v);
        }
        out.push(entry);
    }
    out
}

/// `/api/v1` or `/apis/G/V`, if served.
pub fn resources(group: &str, version: &str) -> Option<Value> {
    let list: Vec<Value> = registry::in_group_version(group, version)
        .flat_map(resource_entries)
        .collect();
    if list.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": list,
    }))
}
