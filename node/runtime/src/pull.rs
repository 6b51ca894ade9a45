//! PullImage through the `oci-client` crate (the OCI distribution / registry v2
//! protocol): manifests are asked for in OCI and Docker v2 media types, an index or list
//! resolves to this platform, every manifest and blob is verified against its digest (by
//! oci-client while it streams, and again by the store), anonymous, Basic and Bearer-token
//! auth (the `WWW-Authenticate` challenge) are handled by oci-client, and the result goes
//! through the same verify-unpack-publish path as an import. HTTPS with the system's roots
//! (reqwest's rustls with the platform verifier, which on Linux loads them per client
//! through rustls-native-certs: `SSL_CERT_FILE` / `SSL_CERT_DIR` replace the system bundle,
//! as they do for Go's crypto/x509); plain HTTP only for registries named with
//! `--insecure-registry`.

use std::path::Path;

use oci_client::client::{ClientConfig, ClientProtocol, current_platform_resolver};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciImageIndex;
use oci_client::secrets::RegistryAuth;

use crate::reference::{Reference, ReferenceError};
use crate::store::{Found, ImageRecord, ImageStore, StoreError, hex_of};

/// Pull failures.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The reference does not parse.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// The registry has no such image (404 on the manifest).
    #[error("image {0} not found in its registry")]
    NotFound(String),
    /// The registry refused our credentials.
    #[error("registry denied access to {0}: {1}")]
    Unauthorized(String, String),
    /// A transport or protocol failure.
    #[error("registry {0}: {1}")]
    Registry(String, String),
    /// The manifest or index is not what the protocol promises.
    #[error("invalid manifest for {0}: {1}")]
    InvalidManifest(String, String),
    /// Content did not match its digest.
    #[error("digest mismatch for {0}: {1}")]
    DigestMismatch(String, String),
    /// The CRI AuthConfig is malformed (e.g. `auth` is not base64 of `user:password`).
    #[error("invalid registry credentials: {0}")]
    Credentials(String),
    /// Storing the image failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// Pulls images into an [`ImageStore`].
#[derive(Debug, Clone)]
pub struct Puller {
    store: ImageStore,
    insecure: Vec<String>,
}

/// Credentials from the CRI AuthConfig.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
    /// `base64(username:password)`, as in a docker config's `auth` field.
    pub auth: String,
    /// A registry token given directly.
    pub registry_token: String,
}

impl Credentials {
    /// The oci-client form: a registry token wins, then a user name and password (given
    /// directly or as `auth`), else anonymous (containerd's order).
    fn registry_auth(&self) -> Result<RegistryAuth, PullError> {
        use base64::Engine as _;
        if !self.registry_token.is_empty() {
            return Ok(RegistryAuth::Bearer(self.registry_token.clone()));
        }
        if !self.username.is_empty() {
            return Ok(RegistryAuth::Basic(
                self.username.clone(),
                self.password.clone(),
            ));
        }
        if !self.auth.is_empty() {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(self.auth.trim())
                .map_err(|e| PullError::Credentials(format!("auth is not base64: {e}")))?;
            let decoded = String::from_utf8(decoded)
                .map_err(|_| PullError::Credentials("auth is not UTF-8".into()))?;
            let (user, password) = decoded
                .split_once(':')
                .ok_or_else(|| PullError::Credentials("auth is not user:password".into()))?;
            return Ok(RegistryAuth::Basic(user.into(), password.into()));
        }
        Ok(RegistryAuth::Anonymous)
    }
}

/// Maps oci-client's errors onto ours, keeping "not found" and "denied" apart because CRI
/// callers (the kubelet's ErrImagePull reasons) tell them apart.
fn pull_error(image: &str, e: OciDistributionError) -> PullError {
    match e {
        OciDistributionError::ImageManifestNotFoundError(_) => PullError::NotFound(image.into()),
        OciDistributionError::RegistryError { envelope, url } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::NotFound
                )
            }) {
                PullError::NotFound(image.into())
            } else if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                PullError::Unauthorized(image.into(), format!("{url}: {envelope}"))
            } else {
                PullError::Registry(url, envelope.to_string())
            }
        }
        OciDistributionError::ServerError { code: 404, .. } => PullError::NotFound(image.into()),
        OciDistributionError::ServerError { code, url, message } if code == 401 || code == 403 => {
            PullError::Unauthorized(url, message)
        }
        OciDistributionError::UnauthorizedError { url } => {
            PullError::Unauthorized(image.into(), url)
        }
        OciDistributionError::AuthenticationFailure(why) => {
            PullError::Unauthorized(image.into(), why)
        }
        OciDistributionError::DigestError(e) => {
            PullError::DigestMismatch(image.into(), e.to_string())
        }
        OciDistributionError::ManifestParsingError(why)
        | OciDistributionError::UnsupportedMediaTypeError(why)
        | OciDistributionError::SpecViolationError(why) => {
            PullError::InvalidManifest(image.into(), why)
        }
        other => PullError::Registry(image.into(), with_sources(&other)),
    }
}

/// `e`'s message followed by its sources' (`: `-joined, repeats left out): reqwest's own
/// message ("error sending request for url (...)") leaves out why, such as a certificate
/// that no trusted root signed or a refused connection.
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let message = cause.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        source = cause.source();
    }
    text
}

impl Puller {
    /// A puller; `insecure` registries (`host[:port]`) are reached over plain HTTP.
    pub fn new(store: ImageStore, insecure: Vec<String>) -> Puller {
        // oci-client's reqwest is built without a crypto provider so that the process keeps
        // the one the rest of ferrokube uses (ring); a second install is a harmless no-op.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Puller { store, insecure }
    }

    /// A client for one pull. oci-client keeps the first credentials it is given per
    /// registry for the client's lifetime, while every CRI PullImage carries its own, so
    /// clients are not shared between pulls.
    fn client(&self) -> Result<oci_client::Client, PullError> {
        oci_client::Client::try_from(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(self.insecure.clone()),
            ..ClientConfig::default()
        })
        .map_err(|e| PullError::Registry("client".into(), e.to_string()))
    }

    /// Pulls `image` and returns its record.
    pub async fn pull(
        &self,
        image: &str,
        credentials: &Credentials,
    ) -> Result<ImageRecord, PullError> {
        let reference = Reference::parse(image)?;
        let auth = credentials.registry_auth()?;
        let client = self.client()?;
        let target = match &reference.digest {
            Some(digest) => oci_client::Reference::with_digest(
                reference.domain.clone(),
                reference.path.clone(),
                digest.clone(),
            ),
            None => oci_client::Reference::with_tag(
                reference.domain.clone(),
                reference.path.clone(),
                reference.tag.clone().unwrap_or_else(|| "latest".into()),
            ),
        };
        let (mut manifest, mut digest) = client
            .pull_manifest_raw(&target, &auth, MANIFEST_TYPES)
            .await
            .map_err(|e| pull_error(image, e))?;
        if let Some(expected) = &reference.digest
            && *expected != digest
        {
            return Err(PullError::DigestMismatch(image.into(), digest));
        }
        let mut doc: serde_json::Value = serde_json::from_slice(&manifest)
            .map_err(|e| PullError::InvalidManifest(image.into(), e.to_string()))?;
        if doc.get("manifests").is_some() {
            let index: OciImageIndex = serde_json::from_value(doc)
                .map_err(|e| PullError::InvalidManifest(image.into(), e.to_string()))?;
            let chosen = current_platform_resolver(&index.manifests).ok_or_else(|| {
                PullError::InvalidManifest(
                    image.into(),
                    format!("no image for {}", std::env::consts::ARCH),
                )
            })?;
            (manifest, digest) = client
                .pull_manifest_raw(
                    &target.clone_with_digest(chosen.clone()),
                    &auth,
                    MANIFEST_TYPES,
                )
                .await
                .map_err(|e| pull_error(image, e))?;
            if digest != chosen {
                return Err(PullError::DigestMismatch(image.into(), digest));
            }
            doc = serde_json::from_slice(&manifest)
                .map_err(|e| PullError::InvalidManifest(image.into(), e.to_string()))?;
        }
        let work = self.store.scratch("pull")?;
        let blobs = work.path().join("blobs");
        std::fs::create_dir_all(&blobs)
            .map_err(|e| PullError::Registry(image.into(), e.to_string()))?;
        let mut wanted = vec![doc["config"]["digest"].as_str().unwrap_or_default()];
        for layer in doc["layers"].as_array().into_iter().flatten() {
            wanted.push(layer["digest"].as_str().unwrap_or_default());
        }
        for blob in wanted {
            Self::blob(&client, &target, image, blob, &blobs).await?;
        }
        let store = self.store.clone();
        let found = vec![Found {
            manifest: manifest.to_vec(),
            names: vec![image.to_string()],
        }];
        let records = tokio::task::spawn_blocking(move || {
            let result = store.commit(&found, &blobs);
            drop(work);
            result
        })
        .await
        .map_err(|e| PullError::Registry(image.into(), e.to_string()))??;
        records
            .into_iter()
            .next()
            .ok_or_else(|| PullError::InvalidManifest(image.into(), "nothing stored".into()))
    }

    /// Streams one blob to `dir/<hex>` (oci-client verifies the digest as it goes).
    async fn blob(
        client: &oci_client::Client,
        target: &oci_client::Reference,
        image: &str,
        digest: &str,
        dir: &Path,
    ) -> Result<(), PullError> {
        let path = dir.join(hex_of(digest)?);
        let file = tokio::fs::File::create(&path)
            .await
            .map_err(|e| PullError::Registry(path.display().to_string(), e.to_string()))?;
        client
            .pull_blob(target, digest, file)
            .await
            .map_err(|e| pull_error(image, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_errors_keep_their_cause() {
        #[derive(Debug, thiserror::Error)]
        #[error("error sending request for url (https://r/v2/)")]
        struct Outer(#[source] std::io::Error);
        let error = Outer(std::io::Error::other(
            "invalid peer certificate: UnknownIssuer",
        ));
        assert_eq!(
            with_sources(&error),
            "error sending request for url (https://r/v2/): invalid peer certificate: UnknownIssuer"
        );
    }

    #[test]
    fn credentials_become_registry_auth() {
        let anonymous = Credentials::default();
        assert!(matches!(
            anonymous.registry_auth(),
            Ok(RegistryAuth::Anonymous)
        ));
        let basic = Credentials {
            username: "user".into(),
            password: "pass".into(),
            ..Credentials::default()
        };
        assert!(
            matches!(basic.registry_auth(), Ok(RegistryAuth::Basic(u, p)) if u == "user" && p == "pass")
        );
        let encoded = Credentials {
            auth: "dXNlcjpwYXNz".into(),
            ..Credentials::default()
        };
        assert!(
            matches!(encoded.registry_auth(), Ok(RegistryAuth::Basic(u, p)) if u == "user" && p == "pass")
        );
        let token = Credentials {
            username: "user".into(),
            registry_token: "t0k".into(),
            ..Credentials::default()
        };
        assert!(matches!(token.registry_auth(), Ok(RegistryAuth::Bearer(t)) if t == "t0k"));
        let broken = Credentials {
            auth: "not base64!".into(),
            ..Credentials::default()
        };
        assert!(matches!(
            broken.registry_auth(),
            Err(PullError::Credentials(_))
        ));
    }
}
