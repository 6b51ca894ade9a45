//! Choosing a backend from the command line: `--data-dir DIR` alone means the embedded
//! store in `DIR`; `--datastore etcd://HOST:PORT[,HOST:PORT...]` means etcd.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::embedded::{EmbeddedOptions, EmbeddedStore};
use crate::error::StoreError;
use crate::etcd::{EtcdOptions, EtcdStore};
use crate::store::Store;

/// Why a `--datastore` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DatastoreError {
    /// The URL scheme is not one we speak.
    #[error("unsupported datastore {0:?}: expected etcd://HOST:PORT[,HOST:PORT...]")]
    UnsupportedScheme(String),
    /// `etcd://` with nothing after it.
    #[error("datastore {0:?} names no etcd endpoint")]
    NoEndpoints(String),
    /// An endpoint that is not `HOST:PORT`.
    #[error("etcd endpoint {0:?} is not HOST:PORT")]
    InvalidEndpoint(String),
}

/// The backend the server runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datastore {
    /// The embedded store in this directory.
    Embedded {
        /// The data directory.
        dir: PathBuf,
    },
    /// An etcd cluster.
    Etcd {
        /// `http://host:port` of each member.
        endpoints: Vec<String>,
    },
}

impl Datastore {
    /// Interprets `--data-dir` and an optional `--datastore`.
    pub fn parse(data_dir: &Path, datastore: Option<&str>) -> Result<Self, DatastoreError> {
        let Some(spec) = datastore else {
            return Ok(Datastore::Embedded {
                dir: data_dir.to_path_buf(),
            });
        };
        let Some(rest) = spec.strip_prefix("etcd://") else {
            return Err(DatastoreError::UnsupportedScheme(spec.to_string()));
        };
        let mut endpoints = Vec::new();
        for endpoint in rest.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let valid = endpoint
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !valid || endpoint.contains('/') {
                return Err(DatastoreError::InvalidEndpoint(endpoint.to_string()));
            }
            endpoints.push(format!("http://{endpoint}"));
        }
        if endpoints.is_empty() {
            return Err(DatastoreError::NoEndpoints(spec.to_string()));
        }
        Ok(Datastore::Etcd { endpoints })
    }

    /// Opens the chosen backend.
    pub async fn open(&self) -> Result<Arc<dyn Store>, StoreError> {
        match self {
            Datastore::Embedded { dir } => {
                let dir = dir.clone();
                let store = tokio::task::spawn_blocking(move || {
                    EmbeddedStore::open(&dir, EmbeddedOptions::default())
                })
                .await
                .map_err(|e| StoreError::backend(format!("open task failed: {e}")))??;
                Ok(Arc::new(store))
            }
            Datastore::Etcd { endpoints } => Ok(Arc::new(
                EtcdStore::connect(EtcdOptions::new(endpoints.clone())).await?,
            )),
        }
    }

    /// A short description for logs and health output.
    pub fn describe(&self) -> String {
        match self {
            Datastore::Embedded { dir } => format!("embedded ({})", dir.display()),
            Datastore::Etcd { endpoints } => format!("etcd ({})", endpoints.join(",")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_dir_alone_means_embedded() {
        assert_eq!(
            Datastore::parse(Path::new("/d"), None).unwrap(),
            Datastore::Embedded { dir: "/d".into() }
        );
    }

    #[test]
    fn etcd_urls_list_endpoints() {
        assert_eq!(
            Datastore::parse(Path::new("/d"), Some("etcd://10.0.0.1:2379,etcd-b:2379")).unwrap(),
            Datastore::Etcd {
                endpoints: vec!["http://10.0.0.1:2379".into(), "http://etcd-b:2379".into()]
            }
        );
    }

    #[test]
    fn bad_datastores_are_refused_with_the_reason() {
        let parse = |s| Datastore::parse(Path::new("/d"), Some(s)).unwrap_err();
        assert!(matches!(
            parse("mysql://x:1"),
            DatastoreError::UnsupportedScheme(_)
        ));
        assert!(matches!(parse("etcd://"), DatastoreError::NoEndpoints(_)));
        assert!(matches!(
            parse("etcd://host"),
            DatastoreError::InvalidEndpoint(_)
        ));
        assert!(matches!(
            parse("etcd://host:99999"),
            DatastoreError::InvalidEndpoint(_)
        ));
        assert!(matches!(
            parse("etcd://h:1/path"),
            DatastoreError::InvalidEndpoint(_)
        ));
    }
}
