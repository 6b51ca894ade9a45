//! The streaming server behind the CRI Exec, Attach and PortForward calls.
//!
//! As upstream's CRI streaming server: the gRPC call validates the request and answers
//! with a URL `http://<addr>/exec/<token>` naming it; the client (kubelet, crictl) then
//! opens that URL and upgrades the connection to a bidirectional stream. Tokens are
//! single-use and expire after a minute ([`tokens`]). The server listens on a TCP address
//! (`ferrokube runtime --streaming-addr`, by default a random loopback port, as
//! containerd's default).
//!
//! Built: exec over WebSocket with channel protocols v4 and v5 ([`websocket`], [`exec`]),
//! with or without a terminal; attach to a container (its output, stdin, and for a
//! container with a terminal, resizes: [`attach`]); port forwarding over WebSocket
//! ([`portforward`]); exec, attach and port forwarding over SPDY/3.1 ([`spdy`]: an
//! `Upgrade: SPDY/3.1` request is answered with the protocol picked from its
//! `X-Stream-Protocol-Version` headers).

pub mod attach;
pub mod exec;
pub mod portforward;
pub mod spdy;
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
    /// Reading or answering an SPDY upgrade request failed.
    #[error("spdy handshake: {0}")]
    Spdy(#[source] std::io::Error),
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
    /// `/attach/<token>`: the output of the container whose state directory is `dir`.
    Attach {
        /// The container's state directory (its shim's socket is there).
        dir: std::path::PathBuf,
        /// Relay the client's stdin.
        stdin: bool,
        /// Relay stdout.
        stdout: bool,
        /// Relay stderr.
        stderr: bool,
        /// The client has a terminal (it sends resizes).
        tty: bool,
    },
    /// `/portforward/<token>?port=...`: into the sandbox's network namespace (`None`:
    /// the host's, for host-network pods).
    PortForward {
        /// The sandbox, for messages.
        sandbox_id: String,
        /// Its network namespace.
        netns: Option<std::path::PathBuf>,
    },
}

impl Pending {
    fn path(&self) -> &'static str {
        match self {
            Pending::Exec(_) => "exec",
            Pending::Attach { .. } => "attach",
            Pending::PortForward { .. } => "portforward",
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
        if let Some(head_len) = spdy_upgrade(&stream).await {
            return self.handle_spdy(stream, head_len).await;
        }
        let mut accepted = None;
        // The error type is tungstenite's.
        #[allow(clippy::result_large_err)]
        let callback = |request: &Request, mut response: Response| {
            let (pending, protocol, ports) = self
                .accept(request)
                .map_err(|(status, message)| refuse(status, message))?;
            if let Some(protocol) = protocol {
                response
                    .headers_mut()
                    .insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(protocol));
            }
            accepted = Some((pending, protocol.unwrap_or_default(), ports));
            Ok(response)
        };
        let ws = tokio_tungstenite::accept_hdr_async(stream, callback).await?;
        let Some((pending, protocol, ports)) = accepted else {
            return Ok(());
        };
        match pending {
            Pending::Exec(request) => {
                tracing::debug!(container = %request.container_id, cmd = ?request.cmd, protocol, "exec");
                exec::serve(ws, protocol == websocket::V5, request, &self.containers).await;
            }
            Pending::Attach {
                dir,
                stdin,
                stdout,
                stderr,
                tty: _,
            } => {
                tracing::debug!(dir = %dir.display(), protocol, "attach");
                let v5 = protocol == websocket::V5;
                let request = attach::AttachRequest {
                    stdin,
                    stdout,
                    stderr,
                };
                attach::serve(ws, &dir, request, v5).await;
            }
            Pending::PortForward { sandbox_id, netns } => {
                tracing::debug!(sandbox = %sandbox_id, ?ports, "port-forward");
                portforward::serve(ws, sandbox_id, netns, ports).await;
            }
        }
        Ok(())
    }

    /// Looks the token up (consuming it), picks the subprotocol (`None`: the client
    /// offered none, which port forwarding allows as upstream) and, for port forwarding,
    /// reads the ports.
    #[allow(clippy::type_complexity)]
    fn accept(
        &self,
        request: &Request,
    ) -> Result<(Pending, Option<&'static str>, Vec<u16>), (StatusCode, &'static str)> {
        let mut parts = request.uri().path().trim_start_matches('/').split('/');
        let (Some(kind), Some(token), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err((StatusCode::NOT_FOUND, "no such streaming endpoint"));
        };
        let pending = self
            .tokens
            .take(token)
            .filter(|p| p.path() == kind)
            .ok_or((StatusCode::NOT_FOUND, "unknown or expired token"))?;
        let offered = request.headers().contains_key(SEC_WEBSOCKET_PROTOCOL);
        match pending {
            Pending::Exec(_) | Pending::Attach { .. } => {
                let protocol = websocket::negotiate(request.headers(), &[websocket::V5, websocket::V4])
                    .ok_or((
                        StatusCode::BAD_REQUEST,
                        "no supported Sec-WebSocket-Protocol (want v5.channel.k8s.io or v4.channel.k8s.io)",
                    ))?;
                Ok((pending, Some(protocol), Vec::new()))
            }
            Pending::PortForward { .. } => {
                let protocol = websocket::negotiate(request.headers(), &[websocket::V4]);
                if offered && protocol.is_none() {
                    return Err((
                        StatusCode::BAD_REQUEST,
                        "no supported Sec-WebSocket-Protocol (want v4.channel.k8s.io)",
                    ));
                }
                let ports = portforward::parse_ports(request.uri().query())
                    .ok_or((StatusCode::BAD_REQUEST, "invalid port in the query"))?;
                if ports.is_empty() {
                    return Err((
                        StatusCode::BAD_REQUEST,
                        "query parameter \"port\" is required",
                    ));
                }
                Ok((pending, protocol, ports))
            }
        }
    }
}

/// Exec channel protocols over SPDY, best first.
const SPDY_EXEC_PROTOCOLS: [&str; 4] = [
    websocket::V4,
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];

/// How long a client gets to send its request head.
const HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Looks at (without consuming) the request head; `Some(its length)` when it asks for an
/// `Upgrade: SPDY/3.1`, `None` otherwise (the WebSocket path reads it then).
async fn spdy_upgrade(stream: &TcpStream) -> Option<usize> {
    let deadline = tokio::time::Instant::now() + HEAD_TIMEOUT;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::time::timeout_at(deadline, stream.peek(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        let seen = buf.get(..n)?;
        if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(seen.get(..end)?).to_ascii_lowercase();
            let spdy = head.lines().any(|line| {
                line.split_once(':').is_some_and(|(name, value)| {
                    name.trim() == "upgrade" && value.trim().starts_with("spdy/3")
                })
            });
            return spdy.then_some(end + 4);
        }
        if n == buf.len() || tokio::time::Instant::now() >= deadline {
            return None;
        }
        // The head is still arriving: peek returns what is buffered, so wait a little.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// A request head: path and query, and header (lower-case name, value) pairs.
fn parse_head(head: &str) -> Option<(String, Vec<(String, String)>)> {
    let mut lines = head.split("\r\n");
    let mut request = lines.next()?.split(' ');
    let (_method, target) = (request.next()?, request.next()?);
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some((target.to_string(), headers))
}

/// The first protocol the client offers (in its order, several headers or a comma list)
/// that `supported` has; the first supported one when it offers none.
fn negotiate_spdy(
    headers: &[(String, String)],
    supported: &[&'static str],
) -> Result<&'static str, ()> {
    let mut offered = headers
        .iter()
        .filter(|(n, _)| n == "x-stream-protocol-version")
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .peekable();
    if offered.peek().is_none() {
        return supported.last().copied().ok_or(());
    }
    offered
        .find_map(|o| supported.iter().copied().find(|s| *s == o))
        .ok_or(())
}

impl Streaming {
    /// Answers an `Upgrade: SPDY/3.1` request and serves it.
    async fn handle_spdy(
        &self,
        mut stream: TcpStream,
        head_len: usize,
    ) -> Result<(), StreamingError> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut head = vec![0u8; head_len];
        stream
            .read_exact(&mut head)
            .await
            .map_err(StreamingError::Spdy)?;
        let head = String::from_utf8_lossy(&head).into_owned();
        let answer = |status: &str, message: &str| {
            format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{message}",
                message.len()
            )
        };
        let accepted = (|| {
            let (target, headers) =
                parse_head(&head).ok_or(("400 Bad Request", "malformed request"))?;
            let path = target.split('?').next().unwrap_or_default();
            let mut parts = path.trim_start_matches('/').split('/');
            let (Some(kind), Some(token), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(("404 Not Found", "no such streaming endpoint"));
            };
            let pending = self
                .tokens
                .take(token)
                .filter(|p| p.path() == kind)
                .ok_or(("404 Not Found", "unknown or expired token"))?;
            let protocol = match &pending {
                Pending::Exec(_) | Pending::Attach { .. } => {
                    negotiate_spdy(&headers, &SPDY_EXEC_PROTOCOLS)
                }
                Pending::PortForward { .. } => negotiate_spdy(&headers, &[websocket::PORT_FORWARD]),
            }
            .map_err(|()| ("403 Forbidden", "no supported X-Stream-Protocol-Version"))?;
            Ok((pending, protocol))
        })();
        let (pending, protocol) = match accepted {
            Ok(accepted) => accepted,
            Err((status, message)) => {
                let _ = stream.write_all(answer(status, message).as_bytes()).await;
                let _ = stream.shutdown().await;
                return Ok(());
            }
        };
        let response = format!(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: {protocol}\r\n\r\n"
        );
        stream
            .write_all(response.as_bytes())
            .await
            .map_err(StreamingError::Spdy)?;
        let session = spdy::Session::start(stream);
        match pending {
            Pending::Exec(request) => {
                tracing::debug!(container = %request.container_id, cmd = ?request.cmd, protocol, "exec over spdy");
                exec::serve_spdy(session, protocol, request, &self.containers).await;
            }
            Pending::PortForward { sandbox_id, netns } => {
                tracing::debug!(sandbox = %sandbox_id, "port-forward over spdy");
                portforward::serve_spdy(session, sandbox_id, netns).await;
            }
            Pending::Attach {
                dir,
                stdin,
                stdout,
                stderr,
                tty,
            } => {
                tracing::debug!(dir = %dir.display(), protocol, "attach over spdy");
                let request = attach::AttachRequest {
                    stdin,
                    stdout,
                    stderr,
                };
                attach::serve_spdy(session, protocol, &dir, request, tty).await;
            }
        }
        Ok(())
    }
}

fn refuse(status: StatusCode, message: &str) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(message.to_string()));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(values: &[&str]) -> Vec<(String, String)> {
        values
            .iter()
            .map(|v| ("x-stream-protocol-version".to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn spdy_negotiation_follows_the_clients_order() {
        let kubectl = offer(&[
            "v4.channel.k8s.io",
            "v3.channel.k8s.io",
            "v2.channel.k8s.io",
            "channel.k8s.io",
        ]);
        assert_eq!(
            negotiate_spdy(&kubectl, &SPDY_EXEC_PROTOCOLS),
            Ok("v4.channel.k8s.io")
        );
        let old = offer(&["v5.channel.k8s.io, v2.channel.k8s.io"]);
        assert_eq!(
            negotiate_spdy(&old, &SPDY_EXEC_PROTOCOLS),
            Ok("v2.channel.k8s.io")
        );
        assert_eq!(
            negotiate_spdy(&offer(&["portforward.k8s.io"]), &SPDY_EXEC_PROTOCOLS),
            Err(())
        );
        // No offer: the oldest protocol, as upstream's handshake.
        assert_eq!(
            negotiate_spdy(&[], &SPDY_EXEC_PROTOCOLS),
            Ok("channel.k8s.io")
        );
    }

    #[test]
    fn request_heads_parse() {
        let (target, headers) = parse_head(
            "GET /exec/abc?x=1 HTTP/1.1\r\nHost: h\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io",
        )
        .unwrap();
        assert_eq!(target, "/exec/abc?x=1");
        assert!(headers.contains(&("upgrade".to_string(), "SPDY/3.1".to_string())));
        assert_eq!(parse_head(""), None);
    }
}
