//! The streaming server behind the CRI Exec (and later Attach and PortForward) calls.
//!
//! As upstream's CRI streaming server: the gRPC call validates the request and answers
//! with a URL `http://<addr>/exec/<token>` naming it; the client (kubelet, crictl) then
//! opens that URL and upgrades the connection to a bidirectional stream. Tokens are
//! single-use and expire after a minute ([`tokens`]). The server listens on a TCP address
//! (`ferrokube runtime --streaming-addr`, by default a random loopback port, as
//! containerd's default).
//!
//! Built: exec over WebSocket with channel protocols v4 and v5 ([`websocket`], [`exec`]),
//! with or without a terminal. Not built yet: SPDY/3.1, Attach, PortForward (those CRI
//! calls still answer `Unimplemented`).

pub mod exec;
pub mod tokens;
pub mod websocket;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::header::SEC_WEBSOCKET_PROTOCOL;
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};

use crate::container::Containers;
use tokens::{TOKEN_TTL, TokenError, Tokens};

/// Streaming server errors.
#[derive(Debug, thiserror::Error)]
pub enum StreamingError {
    /// The listening socket could not be bound.
    #[error("binding the streaming server to {0}: {1}")]
    Bind(SocketAddr, #[source] std::io::Error),
    /// No token could be issued.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The WebSocket handshake failed (bad request, unknown token, no common protocol).
    #[error("websocket handshake: {0}")]
    Handshake(#[from] tokio_tungstenite::tungstenite::Error),
}

/// An exec the CRI Exec call validated, waiting for its client.
#[derive(Debug, Clone)]
pub struct ExecRequest {
    /// The (full) container ID.
    pub container_id: String,
    /// The command and its arguments.
    pub cmd: Vec<String>,
    /// Run it on a terminal.
    pub tty: bool,
    /// The client sends stdin.
    pub stdin: bool,
    /// The client wants stdout.
    pub stdout: bool,
    /// The client wants stderr (never with `tty`).
    pub stderr: bool,
}

/// A request waiting for its client to connect.
#[derive(Debug, Clone)]
pub enum Pending {
    /// `/exec/<token>`.
    Exec(ExecRequest),
}

impl Pending {
    fn path(&self) -> &'static str {
        match self {
            Pending::Exec(_) => "exec",
        }
    }
}

/// The streaming server: pending requests and what serves them.
#[derive(Debug)]
pub struct Streaming {
    base: String,
    tokens: Tokens<Pending>,
    containers: Arc<Containers>,
}

impl Streaming {
    /// Binds `addr` (port 0: a random one); serve the listener with [`Streaming::serve`].
    pub async fn bind(
        addr: SocketAddr,
        containers: Arc<Containers>,
    ) -> Result<(Arc<Streaming>, TcpListener), StreamingError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| StreamingError::Bind(addr, e))?;
        let mut local = listener
            .local_addr()
            .map_err(|e| StreamingError::Bind(addr, e))?;
        if local.ip().is_unspecified() {
            // Clients need an address to connect to; loopback is the one that works.
            local.set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        let streaming = Streaming {
            base: format!("http://{local}"),
            tokens: Tokens::new(TOKEN_TTL),
            containers,
        };
        Ok((Arc::new(streaming), listener))
    }

    /// `http://host:port`, the prefix of every URL handed out.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Registers `pending` and returns the URL its client must open.
    pub fn url(&self, pending: Pending) -> Result<String, StreamingError> {
        let path = pending.path();
        let token = self.tokens.insert(pending)?;
        Ok(format!("{}/{path}/{token}", self.base))
    }

    /// Accepts connections until the task is dropped; each is served on its own task.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let streaming = self.clone();
                    tokio::spawn(async move {
                        if let Err(e) = streaming.handle(stream).await {
                            tracing::debug!(%peer, error = %e, "streaming connection failed");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a streaming connection");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn handle(&self, stream: TcpStream) -> Result<(), StreamingError> {
        let mut accepted = None;
        // The error type is tungstenite's.
        #[allow(clippy::result_large_err)]
        let callback = |request: &Request, mut response: Response| {
            let (pending, protocol) = self
                .accept(request)
                .map_err(|(status, message)| refuse(status, message))?;
            response
                .headers_mut()
                .insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(protocol));
            accepted = Some((pending, protocol));
            Ok(response)
        };
        let ws = tokio_tungstenite::accept_hdr_async(stream, callback).await?;
        let Some((pending, protocol)) = accepted else {
            return Ok(());
        };
        match pending {
            Pending::Exec(request) => {
                tracing::debug!(container = %request.container_id, cmd = ?request.cmd, protocol, "exec");
                exec::serve(ws, protocol == websocket::V5, request, &self.containers).await;
            }
        }
        Ok(())
    }

    /// Looks the token up (consuming it) and picks the subprotocol.
    fn accept(
        &self,
        request: &Request,
    ) -> Result<(Pending, &'static str), (StatusCode, &'static str)> {
        let mut parts = request.uri().path().trim_start_matches('/').split('/');
        let (Some(kind), Some(token), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err((StatusCode::NOT_FOUND, "no such streaming endpoint"));
        };
        let pending = self
            .tokens
            .take(token)
            .filter(|p| p.path() == kind)
            .ok_or((StatusCode::NOT_FOUND, "unknown or expired token"))?;
        let supported: &[&'static str] = match pending {
            Pending::Exec(_) => &[websocket::V5, websocket::V4],
        };
        let protocol = websocket::negotiate(request.headers(), supported).ok_or((
            StatusCode::BAD_REQUEST,
            "no supported Sec-WebSocket-Protocol (want v5.channel.k8s.io or v4.channel.k8s.io)",
        ))?;
        Ok((pending, protocol))
    }
}

fn refuse(status: StatusCode, message: &str) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(message.to_string()));
    *response.status_mut() = status;
    response
}
