//! What the apiserver knows about Kubernetes objects, independent of HTTP and storage:
//! the resource registry (one table that drives routing, discovery, storage keys and
//! table output), validation and defaulting, the three patch types, label and field
//! selectors, `Status` errors and `as=Table` output. Objects are handled as JSON values
//! and checked against their `k8s-openapi` types.

pub mod defaults;
pub mod fields;
pub mod patch;
pub mod registry;
pub mod selector;
pub mod status;
pub mod table;
pub mod validate;

pub use registry::{RESOURCES, Resource, Subresource};
pub use status::{ApiError, ApiResult, Cause};
