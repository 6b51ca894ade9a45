//! PullImage: the OCI distribution (registry v2) protocol over hyper. Manifests are asked
//! for in OCI and Docker v2 media types (an index or list resolves to this platform),
//! every blob is verified against its digest while it streams to disk, anonymous and
//! Bearer-token (RFC 6750, the `WWW-Authenticate` challenge) or Basic auth are handled,
//! and the result goes through the same verify-unpack-publish path as an import.
//! HTTPS with the system's roots; plain HTTP only for registries named with
//! `--insecure-registry`.

use std::io::Write;
use std::path::Path;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sha2::{Digest, Sha256};

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
    #[error("digest mismatch for {0}: got {1}")]
    DigestMismatch(String, String),
    /// Storing the image failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json";

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// Pulls images into an [`ImageStore`].
#[derive(Debug, Clone)]
pub struct Puller {
    store: ImageStore,
    insecure: Vec<String>,
    client: HttpsClient,
}

/// Credentials from the CRI AuthConfig.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
    /// A registry token given directly.
    pub registry_token: String,
}

struct Session<'a> {
    puller: &'a Puller,
    base: String,
    repository: String,
    credentials: &'a Credentials,
    authorization: Option<String>,
}

fn base64(input: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(TABLE[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `Bearer realm="...",service="...",scope="..."` -> its parameters.
fn challenge(header: &str) -> Option<(String, Vec<(String, String)>)> {
    let (scheme, rest) = header.split_once(' ')?;
    let mut params = Vec::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let after = after.trim_start();
        let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"')?;
            (&quoted[..end], &quoted[end + 1..])
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        params.push((key.trim().to_string(), value.to_string()));
        rest = remaining.trim_start_matches(',').trim();
    }
    Some((scheme.to_ascii_lowercase(), params))
}

impl Puller {
    /// A puller; `insecure` registries (`host[:port]`) are reached over plain HTTP.
    pub fn new(store: ImageStore, insecure: Vec<String>) -> Result<Puller, PullError> {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| PullError::Registry("TLS roots".into(), e.to_string()))?
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Puller {
            store,
            insecure,
            client,
        })
    }

    /// Pulls `image` and returns its record.
    pub async fn pull(
        &self,
        image: &str,
        credentials: &Credentials,
    ) -> Result<ImageRecord, PullError> {
        let reference = Reference::parse(image)?;
        let host = if reference.domain == "docker.io" {
            "registry-1.docker.io".to_string()
        } else {
            reference.domain.clone()
        };
        let scheme = if self.insecure.contains(&reference.domain) {
            "http"
        } else {
            "https"
        };
        let mut session = Session {
            puller: self,
            base: format!("{scheme}://{host}/v2/{}", reference.path),
            repository: reference.path.clone(),
            credentials,
            authorization: None,
        };
        if !credentials.registry_token.is_empty() {
            session.authorization = Some(format!("Bearer {}", credentials.registry_token));
        }
        let work = self.store.scratch("pull")?;
        let blobs = work.path().join("blobs");
        std::fs::create_dir_all(&blobs)
            .map_err(|e| PullError::Registry(image.into(), e.to_string()))?;
        let wanted = reference
            .digest
            .clone()
            .or(reference.tag.clone())
            .unwrap_or_else(|| "latest".into());
        let (mut manifest, mut digest) = session.manifest(&wanted, image).await?;
        if let Some(expected) = &reference.digest
            && *expected != digest
        {
            return Err(PullError::DigestMismatch(image.into(), digest));
        }
        let mut doc: serde_json::Value = serde_json::from_slice(&manifest)
            .map_err(|e| PullError::InvalidManifest(image.into(), e.to_string()))?;
        if doc.get("manifests").is_some() {
            let arch = match std::env::consts::ARCH {
                "x86_64" => "amd64",
                "aarch64" => "arm64",
                other => other,
            };
            let chosen = doc["manifests"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|m| m["platform"]["os"] == "linux" && m["platform"]["architecture"] == arch)
                .and_then(|m| m["digest"].as_str())
                .ok_or_else(|| {
                    PullError::InvalidManifest(image.into(), format!("no linux/{arch} image"))
                })?
                .to_string();
            (manifest, digest) = session.manifest(&chosen, image).await?;
            if digest != chosen {
                return Err(PullError::DigestMismatch(image.into(), digest));
            }
            doc = serde_json::from_slice(&manifest)
                .map_err(|e| PullError::InvalidManifest(image.into(), e.to_string()))?;
        }
        let mut wanted_blobs = vec![
            doc["config"]["digest"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        ];
        for layer in doc["layers"].as_array().into_iter().flatten() {
            wanted_blobs.push(layer["digest"].as_str().unwrap_or_default().to_string());
        }
        for blob in &wanted_blobs {
            session.blob(blob, &blobs).await?;
        }
        let store = self.store.clone();
        let found = vec![Found {
            manifest,
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
}

impl Session<'_> {
    /// GET with auth: on 401, answers the challenge once and retries.
    async fn get(
        &mut self,
        url: &str,
        accept: &str,
    ) -> Result<hyper::Response<Incoming>, PullError> {
        for attempt in 0..2 {
            let mut request = Request::get(url).header("Accept", accept);
            if let Some(auth) = &self.authorization {
                request = request.header("Authorization", auth);
            }
            let request = request
                .body(Empty::new())
                .map_err(|e| PullError::Registry(url.into(), e.to_string()))?;
            let response = self
                .puller
                .client
                .request(request)
                .await
                .map_err(|e| PullError::Registry(url.into(), e.to_string()))?;
            if response.status() != hyper::StatusCode::UNAUTHORIZED || attempt == 1 {
                return Ok(response);
            }
            let header = response
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            self.authorize(&header).await?;
        }
        Err(PullError::Unauthorized(
            url.into(),
            "still unauthorized".into(),
        ))
    }

    async fn authorize(&mut self, header: &str) -> Result<(), PullError> {
        let basic = (!self.credentials.username.is_empty()).then(|| {
            format!(
                "Basic {}",
                base64(
                    format!(
                        "{}:{}",
                        self.credentials.username, self.credentials.password
                    )
                    .as_bytes()
                )
            )
        });
        let Some((scheme, params)) = challenge(header) else {
            return Err(PullError::Unauthorized(self.base.clone(), header.into()));
        };
        if scheme == "basic" {
            self.authorization = Some(basic.ok_or_else(|| {
                PullError::Unauthorized(self.base.clone(), "credentials required".into())
            })?);
            return Ok(());
        }
        let param = |k: &str| {
            params
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        let realm = param("realm")
            .ok_or_else(|| PullError::Unauthorized(self.base.clone(), header.into()))?;
        let mut url = format!("{realm}?");
        if let Some(service) = param("service") {
            url.push_str(&format!("service={service}&"));
        }
        let scope =
            param("scope").unwrap_or_else(|| format!("repository:{}:pull", self.repository));
        url.push_str(&format!("scope={scope}"));
        let mut request = Request::get(&url);
        if let Some(basic) = basic {
            request = request.header("Authorization", basic);
        }
        let request = request
            .body(Empty::new())
            .map_err(|e| PullError::Registry(url.clone(), e.to_string()))?;
        let response = self
            .puller
            .client
            .request(request)
            .await
            .map_err(|e| PullError::Registry(url.clone(), e.to_string()))?;
        if !response.status().is_success() {
            return Err(PullError::Unauthorized(url, response.status().to_string()));
        }
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| PullError::Registry(url.clone(), e.to_string()))?
            .to_bytes();
        let token: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| PullError::Registry(url.clone(), e.to_string()))?;
        let token = token["token"]
            .as_str()
            .or(token["access_token"].as_str())
            .ok_or_else(|| PullError::Unauthorized(url.clone(), "no token in the answer".into()))?;
        self.authorization = Some(format!("Bearer {token}"));
        Ok(())
    }

    /// The manifest at `reference` (tag or digest): its bytes and their digest.
    async fn manifest(
        &mut self,
        reference: &str,
        image: &str,
    ) -> Result<(Vec<u8>, String), PullError> {
        let url = format!("{}/manifests/{reference}", self.base);
        let response = self.get(&url, MANIFEST_TYPES).await?;
        match response.status() {
            s if s.is_success() => {}
            hyper::StatusCode::NOT_FOUND => return Err(PullError::NotFound(image.into())),
            hyper::StatusCode::UNAUTHORIZED | hyper::StatusCode::FORBIDDEN => {
                return Err(PullError::Unauthorized(
                    image.into(),
                    response.status().to_string(),
                ));
            }
            s => return Err(PullError::Registry(url, s.to_string())),
        }
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| PullError::Registry(url.clone(), e.to_string()))?
            .to_bytes()
            .to_vec();
        let digest = format!("sha256:{:x}", Sha256::digest(&body));
        Ok((body, digest))
    }

    /// Streams a blob to `dir/<hex>`, verifying its digest.
    async fn blob(&mut self, digest: &str, dir: &Path) -> Result<(), PullError> {
        let hex = hex_of(digest)?;
        let url = format!("{}/blobs/{digest}", self.base);
        let mut response = self.get(&url, "*/*").await?;
        // Registries redirect blobs to storage (S3, CDN): follow a few hops, without our
        // credentials.
        for _ in 0..5 {
            if !response.status().is_redirection() {
                break;
            }
            let location = response
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| {
                    PullError::Registry(url.clone(), "redirect without location".into())
                })?
                .to_string();
            let request = Request::get(&location)
                .body(Empty::new())
                .map_err(|e| PullError::Registry(location.clone(), e.to_string()))?;
            response = self
                .puller
                .client
                .request(request)
                .await
                .map_err(|e| PullError::Registry(location.clone(), e.to_string()))?;
        }
        if !response.status().is_success() {
            return Err(PullError::Registry(url, response.status().to_string()));
        }
        let path = dir.join(hex);
        let mut file = std::fs::File::create(&path)
            .map_err(|e| PullError::Registry(path.display().to_string(), e.to_string()))?;
        let mut hasher = Sha256::new();
        let mut body = response.into_body();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| PullError::Registry(url.clone(), e.to_string()))?;
            if let Some(data) = frame.data_ref() {
                hasher.update(data);
                file.write_all(data)
                    .map_err(|e| PullError::Registry(path.display().to_string(), e.to_string()))?;
            }
        }
        let actual = format!("sha256:{:x}", hasher.finalize());
        if actual != digest {
            return Err(PullError::DigestMismatch(digest.into(), actual));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenges() {
        let (scheme, params) = challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#,
        )
        .expect("challenge");
        assert_eq!(scheme, "bearer");
        assert_eq!(
            params,
            vec![
                ("realm".into(), "https://auth.example/token".into()),
                ("service".into(), "registry.example".into()),
                ("scope".into(), "repository:a/b:pull".into()),
            ]
        );
        assert_eq!(
            challenge(r#"Basic realm="x""#).map(|c| c.0),
            Some("basic".into())
        );
    }

    #[test]
    fn encodes_base64() {
        assert_eq!(base64(b"user:pass"), "dXNlcjpwYXNz");
        assert_eq!(base64(b"a"), "YQ==");
        assert_eq!(base64(b"ab"), "YWI=");
    }
}
