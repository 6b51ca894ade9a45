//! API errors and their Kubernetes `Status` form.

use serde_json::{Value, json};

/// One field-level reason an object is invalid (a `StatusCause`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// Upstream cause type, e.g. `FieldValueRequired`, `FieldValueInvalid`.
    pub reason: &'static str,
    /// The field path, e.g. `spec.containers[0].name`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl Cause {
    /// A required field is missing.
    pub fn required(field: impl Into<String>) -> Self {
        Cause {
            reason: "FieldValueRequired",
            field: field.into(),
            message: "Required value".into(),
        }
    }

    /// A field has a bad value.
    pub fn invalid(field: impl Into<String>, value: &str, why: impl Into<String>) -> Self {
        Cause {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: format!("Invalid value: {value:?}: {}", why.into()),
        }
    }

    /// A value repeats where it must be unique.
    pub fn duplicate(field: impl Into<String>, value: &str) -> Self {
        Cause {
            reason: "FieldValueDuplicate",
            field: field.into(),
            message: format!("Duplicate value: {value:?}"),
        }
    }

    /// A field may not change.
    pub fn immutable(field: impl Into<String>) -> Self {
        Cause {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: "field is immutable".into(),
        }
    }

    /// A field value is not one of the supported ones.
    pub fn not_supported(field: impl Into<String>, value: &str, supported: &[&str]) -> Self {
        let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        Cause {
            reason: "FieldValueNotSupported",
            field: field.into(),
            message: format!(
                "Unsupported value: {value:?}: supported values: {}",
                list.join(", ")
            ),
        }
    }

    fn render(&self) -> String {
        format!("{}: {}", self.field, self.message)
    }
}

/// Everything an API request can fail with; each maps to an upstream `Status`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// 404: the object does not exist.
    #[error("{} \"{name}\" not found", qualified(group, plural))]
    NotFound {
        /// API group.
        group: String,
        /// Resource plural.
        plural: String,
        /// Object name.
        name: String,
    },
    /// 409: create of an existing object.
    #[error("{} \"{name}\" already exists", qualified(group, plural))]
    AlreadyExists {
        /// API group.
        group: String,
        /// Resource plural.
        plural: String,
        /// Object name.
        name: String,
    },
    /// 409: an update based on a stale resourceVersion (or another conflict).
    #[error(
        "Operation cannot be fulfilled on {} \"{name}\": {message}",
        qualified(group, plural)
    )]
    Conflict {
        /// API group.
        group: String,
        /// Resource plural.
        plural: String,
        /// Object name.
        name: String,
        /// Why.
        message: String,
    },
    /// 422: the object fails validation.
    #[error("{kind} \"{name}\" is invalid: {}", causes.iter().map(Cause::render).collect::<Vec<_>>().join(", "))]
    Invalid {
        /// API group.
        group: String,
        /// Kind.
        kind: String,
        /// Object name.
        name: String,
        /// The field-level reasons.
        causes: Vec<Cause>,
    },
    /// 400: the request itself is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// 401: no valid credentials.
    #[error("Unauthorized")]
    Unauthorized,
    /// 403: the user may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// 404 for a path that names no resource.
    #[error("the server could not find the requested resource")]
    NoSuchPath,
    /// 405: the verb is not supported on this resource.
    #[error("the server does not allow this method on the requested resource")]
    MethodNotSupported,
    /// 406: no acceptable response format.
    #[error("{0}")]
    NotAcceptable(String),
    /// 410: the resourceVersion is older than the kept history.
    #[error("{0}")]
    Expired(String),
    /// 413: the body is too large.
    #[error("the request body is too large (limit {limit} bytes)")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// 415: the body's media type is not accepted.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 500: the server failed.
    #[error("{0}")]
    Internal(String),
    /// 503: the store (or another dependency) is unavailable.
    #[error("{0}")]
    Unavailable(String),
}

fn qualified(group: &str, plural: &str) -> String {
    if group.is_empty() {
        plural.to_string()
    } else {
        format!("{plural}.{group}")
    }
}

impl ApiError {
    /// The HTTP status code.
    pub fn code(&self) -> u16 {
        match self {
            ApiError::NotFound { .. } | ApiError::NoSuchPath => 404,
            ApiError::AlreadyExists { .. } | ApiError::Conflict { .. } => 409,
            ApiError::Invalid { .. } => 422,
            ApiError::BadRequest(_) => 400,
            ApiError::Unauthorized => 401,
            ApiError::Forbidden(_) => 403,
            ApiError::MethodNotSupported => 405,
            ApiError::NotAcceptable(_) => 406,
            ApiError::Expired(_) => 410,
            ApiError::TooLarge { .. } => 413,
            ApiError::UnsupportedMediaType(_) => 415,
            ApiError::Internal(_) => 500,
            ApiError::Unavailable(_) => 503,
        }
    }

    /// The upstream `reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::NotFound { .. } | ApiError::NoSuchPath => "NotFound",
            ApiError::AlreadyExists { .. } => "AlreadyExists",
            ApiError::Conflict { .. } => "Conflict",
            ApiError::Invalid { .. } => "Invalid",
            ApiError::BadRequest(_) => "BadRequest",
            ApiError::Unauthorized => "Unauthorized",
            ApiError::Forbidden(_) => "Forbidden",
            ApiError::MethodNotSupported => "MethodNotAllowed",
            ApiError::NotAcceptable(_) => "NotAcceptable",
            ApiError::Expired(_) => "Expired",
            ApiError::TooLarge { .. } => "RequestEntityTooLarge",
            ApiError::UnsupportedMediaType(_) => "UnsupportedMediaType",
            ApiError::Internal(_) => "InternalError",
            ApiError::Unavailable(_) => "ServiceUnavailable",
        }
    }

    /// The `Status` object.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": self.reason(),
            "code": self.code(),
        });
        let details = match self {
            ApiError::NotFound {
                group,
                plural,
                name,
            }
            | ApiError::AlreadyExists {
                group,
                plural,
                name,
            }
            | ApiError::Conflict {
                group,
                plural,
                name,
                ..
            } => Some(json!({ "name": name, "group": group, "kind": plural })),
            ApiError::Invalid {
                group,
                kind,
                name,
                causes,
            } => Some(json!({
                "name": name,
                "group": group,
                "kind": kind,
                "causes": causes.iter().map(|c| json!({
                    "reason": c.reason,
                    "message": c.message,
                    "field": c.field,
                })).collect::<Vec<_>>(),
            })),
            _ => None,
        };
        if let Some(details) = details {
            status["details"] = details;
        }
        status
    }
}

/// Result alias for API operations.
pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_matches_upstream_wording() {
        let e = ApiError::NotFound {
            group: "apps".into(),
            plural: "deployments".into(),
            name: "web".into(),
        };
        let s = e.to_status();
        assert_eq!(s["message"], "deployments.apps \"web\" not found");
        assert_eq!(s["code"], 404);
        assert_eq!(s["details"]["kind"], "deployments");
    }

    #[test]
    fn invalid_lists_causes() {
        let e = ApiError::Invalid {
            group: "".into(),
            kind: "ConfigMap".into(),
            name: "c".into(),
            causes: vec![Cause::required("data")],
        };
        let s = e.to_status();
        assert_eq!(s["reason"], "Invalid");
        assert_eq!(s["code"], 422);
        assert_eq!(s["details"]["causes"][0]["field"], "data");
        assert_eq!(
            s["message"],
            "ConfigMap \"c\" is invalid: data: Required value"
        );
    }
}
