//! ferrokube's controllers: reconcilers that watch the apiserver and act through it with
//! kube-rs, exactly as an outside client would (they never read the store). Today this is
//! the garbage collector (`gc`), which gives `ownerReferences` and the delete propagation
//! policies (`Background`, `Foreground`, `Orphan`) their effect. `ferrokube server` runs
//! the controllers in its own process, as k3s does, against its own HTTPS endpoint.

pub mod gc;

use kube::discovery::ApiResource;

/// The kube-rs description of a served resource.
pub fn api_resource(r: &ferrokube_api::registry::Resource) -> ApiResource {
    ApiResource {
        group: r.group.to_string(),
        version: r.version.to_string(),
        api_version: r.api_version(),
        kind: r.kind.to_string(),
        plural: r.plural.to_string(),
    }
}
