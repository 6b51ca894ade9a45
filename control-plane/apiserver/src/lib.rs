//! The Kubernetes-compatible API server: HTTPS with the cluster's own PKI, client
//! certificate and bearer token authentication, discovery, and the REST verbs with
//! list-watch over every resource in the registry, stored in a `ferrokube-store`.
//!
//! The only entry to the cluster: every other component talks to it as an outside
//! client does.

pub mod alloc;
pub mod authn;
mod discovery;
mod dryrun;
pub mod handlers;
pub mod metrics;
mod openapi;
pub mod pki;
mod protobuf;
mod watchcache;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::response::Response;
use ferrokube_api::{ApiError, registry};
use ferrokube_store::Store;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

pub use authn::Identity;
pub use handlers::Api;
pub use pki::Pki;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Making or reading the credentials failed.
    #[error("credentials: {0}")]
    Pki(#[from] pki::PkiError),
    /// The TLS configuration was refused.
    #[error("TLS: {0}")]
    Tls(String),
    /// Binding or accepting failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Creating the bootstrap objects failed.
    #[error("bootstrap: {0}")]
    Bootstrap(String),
}

/// How to run the apiserver.
#[derive(Debug, Clone)]
pub struct Config {
    /// Data directory (credentials, kubeconfig, token file).
    pub data_dir: PathBuf,
    /// Address to listen on.
    pub bind: IpAddr,
    /// Port to listen on.
    pub port: u16,
    /// Interval between BOOKMARK events on watches that ask for them.
    pub bookmark_interval: Duration,
    /// Service ClusterIP range and NodePort range.
    pub ranges: alloc::Ranges,
}

/// A bound, ready-to-serve apiserver.
pub struct Server {
    api: Arc<Api>,
    listener: TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    tokens: authn::Tokens,
    /// The admin kubeconfig for this server.
    pub kubeconfig: String,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("addr", &self.addr).finish()
    }
}

impl Server {
    /// Makes or loads the PKI, binds, writes `DATA_DIR/admin.kubeconfig` and creates the
    /// bootstrap objects.
    pub async fn bind(config: Config, store: Arc<dyn Store>) -> Result<Self, ServeError> {
        let hostname = std::fs::read_to_string("/etc/hostname")
            .unwrap_or_default()
            .trim()
            .to_string();
        let mut ips: Vec<IpAddr> = vec![
            [127, 0, 0, 1].into(),
            std::net::Ipv6Addr::LOCALHOST.into(),
            config.ranges.first_ip().into(),
        ];
        if !config.bind.is_unspecified() && !ips.contains(&config.bind) {
            ips.push(config.bind);
        }
        let names: Vec<String> = [hostname].into_iter().filter(|h| !h.is_empty()).collect();
        let pki = Pki::load_or_create(&config.data_dir, &names, &ips)?;
        let listener = TcpListener::bind(SocketAddr::new(config.bind, config.port)).await?;
        let addr = listener.local_addr()?;
        let host = if config.bind.is_unspecified() {
            IpAddr::from([127, 0, 0, 1])
        } else {
            config.bind
        };
        let server_url = format!("https://{}", SocketAddr::new(host, addr.port()));
        let kubeconfig = pki.admin_kubeconfig(&server_url);
        std::fs::write(config.data_dir.join("admin.kubeconfig"), &kubeconfig)?;

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes()) {
            let cert = cert.map_err(|e| ServeError::Tls(e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| ServeError::Tls(e.to_string()))?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()
        .map_err(|e| ServeError::Tls(e.to_string()))?;
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(pki.server_cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| ServeError::Tls(e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(pki.server_key_pem.as_bytes())
            .map_err(|e| ServeError::Tls(e.to_string()))?;
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ServeError::Tls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| ServeError::Tls(e.to_string()))?;
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let tokens = authn::Tokens::load(&config.data_dir.join("tokens.csv"))?;
        let metrics = Arc::new(metrics::Metrics::default());
        let store: Arc<dyn Store> = Arc::new(metrics::MeteredStore::new(store, metrics.clone()));
        let api = Arc::new(Api {
            store,
            metrics,
            watch_caches: watchcache::WatchCaches::default(),
            dry_run: false,
            server_address: format!("{}:{}", host, addr.port()),
            bookmark_interval: config.bookmark_interval,
            ranges: config.ranges,
        });
        bootstrap(&api, host).await?;
        Ok(Server {
            api,
            listener,
            tls: tokio_rustls::TlsAcceptor::from(Arc::new(tls)),
            tokens,
            kubeconfig,
            addr,
        })
    }

    /// Serves until `shutdown` completes.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), ServeError> {
        info!(addr = %self.addr, "apiserver serving HTTPS");
        let tokens = Arc::new(self.tokens);
        tokio::pin!(shutdown);
        loop {
            let (tcp, peer) = tokio::select! {
                _ = &mut shutdown => return Ok(()),
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        warn!(error = %e, "accept failed");
                        continue;
                    }
                },
            };
            // Small request and response frames must not wait for delayed ACKs.
            let _ = tcp.set_nodelay(true);
            let (tls, api, tokens) = (self.tls.clone(), self.api.clone(), tokens.clone());
            tokio::spawn(async move {
                let stream = match tls.accept(tcp).await {
                    Ok(s) => s,
                    Err(e) => {
                        debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                };
                let cert_identity = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|certs| certs.first())
                    .and_then(|der| authn::from_certificate(der.as_ref()));
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (api, tokens, cert_identity) =
                            (api.clone(), tokens.clone(), cert_identity.clone());
                        async move {
                            Ok::<_, std::convert::Infallible>(
                                handle(api, &tokens, cert_identity, req).await,
                            )
                        }
                    });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                if let Err(e) = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    debug!(%peer, error = %e, "connection ended with an error");
                }
            });
        }
    }
}

async fn handle(
    api: Arc<Api>,
    tokens: &authn::Tokens,
    cert_identity: Option<Identity>,
    req: Request<hyper::body::Incoming>,
) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let public = matches!(
        path.as_str(),
        "/healthz" | "/livez" | "/readyz" | "/version"
    );
    let identity = cert_identity.or_else(|| {
        parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| tokens.authenticate(v))
    });
    if identity.is_none() && !public {
        return handlers::error_response(&ApiError::Unauthorized);
    }
    match path.as_str() {
        "/healthz" | "/livez" | "/readyz" => {
            return match api.store.status().await {
                Ok(_) => Response::new(Body::from("ok")),
                Err(e) => {
                    let mut r = Response::new(Body::from(format!(
                        "[-]store failed: {e}\nhealthz check failed\n"
                    )));
                    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                    r
                }
            };
        }
        _ => {}
    }
    let bytes = match read_body(body).await {
        Ok(bytes) => bytes,
        Err(error) => return handlers::error_response(&error),
    };
    let started = std::time::Instant::now();
    let response = if path == "/metrics" {
        let mut r = Response::new(Body::from(api.metrics.render()));
        r.headers_mut().insert(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        r
    } else {
        api.handle(
            parts.method.clone(),
            &path,
            parts.uri.query(),
            &parts.headers,
            bytes,
        )
        .await
    };
    let (verb, resource) = handlers::classify(&parts.method, &path, parts.uri.query());
    api.metrics
        .request(verb, &resource, response.status().as_u16(), started);
    debug!(method = %parts.method, path, code = response.status().as_u16(), user = identity.map(|i| i.user).unwrap_or_default(), "request");
    response
}

/// Reads a request body of at most `MAX_BODY` bytes. A larger body is read to its end
/// (up to a hard cap) and discarded, so the client receives the 413 instead of a reset
/// connection.
async fn read_body(mut body: hyper::body::Incoming) -> Result<bytes::Bytes, ApiError> {
    const DRAIN_CAP: usize = 256 * 1024 * 1024;
    let mut buffer = bytes::BytesMut::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ApiError::BadRequest(format!("reading the request body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            total += data.len();
            if total <= handlers::MAX_BODY {
                buffer.extend_from_slice(&data);
            } else if total > DRAIN_CAP {
                break;
            }
        }
    }
    if total > handlers::MAX_BODY {
        return Err(ApiError::TooLarge {
            limit: handlers::MAX_BODY,
        });
    }
    Ok(buffer.freeze())
}

/// Creates the namespaces every cluster has and the `default/kubernetes` Service.
async fn bootstrap(api: &Api, host: IpAddr) -> Result<(), ServeError> {
    let namespaces = registry::find("", "v1", "namespaces")
        .ok_or_else(|| ServeError::Bootstrap("no namespaces resource".into()))?;
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        match api
            .create_object(namespaces, None, json!({"metadata": {"name": ns}}))
            .await
        {
            Ok(_) | Err(ApiError::AlreadyExists { .. }) => {}
            Err(e) => return Err(ServeError::Bootstrap(e.to_string())),
        }
    }
    let services = registry::find("", "v1", "services")
        .ok_or_else(|| ServeError::Bootstrap("no services resource".into()))?;
    let service = json!({
        "metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"type": "ClusterIP", "clusterIP": api.ranges.first_ip().to_string(), "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]},
    });
    match api.create_object(services, Some("default"), service).await {
        Ok(_) | Err(ApiError::AlreadyExists { .. }) => {}
        Err(e) => return Err(ServeError::Bootstrap(e.to_string())),
    }
    let endpoints = registry::find("", "v1", "endpoints")
        .ok_or_else(|| ServeError::Bootstrap("no endpoints resource".into()))?;
    let ep = json!({
        "metadata": {"name": "kubernetes"},
        "subsets": [{"addresses": [{"ip": host.to_string()}], "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}]}],
    });
    match api.create_object(endpoints, Some("default"), ep).await {
        Ok(_) | Err(ApiError::AlreadyExists { .. }) => {}
        Err(e) => return Err(ServeError::Bootstrap(e.to_string())),
    }
    Ok(())
}
