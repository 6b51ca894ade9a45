//! Port forwarding over WebSocket (`v4.channel.k8s.io`, or no subprotocol, as upstream):
//! the ports come from the URL's `port` query parameters (repeatable, comma-separated
//! lists allowed); port `i` gets data channel `2i` and error channel `2i+1`, and the
//! server's first message on each carries the port as a little-endian u16. Each port is
//! one TCP connection to `127.0.0.1:<port>` in the sandbox's network namespace, opened
//! from a short-lived thread that entered it (a socket stays in the namespace it was made
//! in), then relayed both ways. The WebSocket closes once every connection ended.

use std::path::PathBuf;

use futures::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use super::websocket::frame;

/// The ports a port-forward URL asks for; `None` if a value is not a port.
pub fn parse_ports(query: Option<&str>) -> Option<Vec<u16>> {
    let mut ports = Vec::new();
    for pair in query.unwrap_or_default().split('&') {
        let Some(values) = pair.strip_prefix("port=") else {
            continue;
        };
        for value in values.split(',').filter(|v| !v.is_empty()) {
            ports.push(value.trim().parse::<u16>().ok().filter(|p| *p > 0)?);
        }
    }
    Some(ports)
}

/// Connects to `127.0.0.1:port` inside `netns` (the host's namespace when `None`).
async fn connect(netns: Option<PathBuf>, port: u16) -> std::io::Result<TcpStream> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let result = (|| -> std::io::Result<std::net::TcpStream> {
            if let Some(path) = netns {
                let file = std::fs::File::open(&path)?;
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)?;
            }
            let stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
            stream.set_nonblocking(true)?;
            Ok(stream)
        })();
        let _ = tx.send(result);
    });
    let stream = rx
        .await
        .map_err(|_| std::io::Error::other("netns connect thread died"))??;
    TcpStream::from_std(stream)
}

/// Serves one port-forward connection.
pub async fn serve(
    ws: WebSocketStream<TcpStream>,
    sandbox_id: String,
    netns: Option<PathBuf>,
    ports: Vec<u16>,
) {
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Message>(16);
    let writer = tokio::spawn(async move {
        while let Some(message) = rx.recv().await {
            if sink.send(message).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let mut inputs: Vec<Option<tokio::net::tcp::OwnedWriteHalf>> = Vec::new();
    let mut relays = Vec::new();
    for (i, port) in ports.iter().copied().enumerate() {
        let (data, error) = match u8::try_from(2 * i + 1) {
            Ok(error) => (error - 1, error),
            Err(_) => break,
        };
        let _ = tx.send(frame(data, &port.to_le_bytes())).await;
        let _ = tx.send(frame(error, &port.to_le_bytes())).await;
        match connect(netns.clone(), port).await {
            Ok(stream) => {
                let (mut read, write) = stream.into_split();
                inputs.push(Some(write));
                let tx = tx.clone();
                relays.push(tokio::spawn(async move {
                    let mut buf = vec![0u8; 32 * 1024];
                    loop {
                        match read.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if tx.send(frame(data, &buf[..n])).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                }));
            }
            Err(e) => {
                inputs.push(None);
                let message = format!("error forwarding port {port} to pod {sandbox_id}: {e}");
                tracing::debug!(%message);
                let _ = tx.send(frame(error, message.as_bytes())).await;
            }
        }
    }
    let input = async {
        while let Some(message) = source.next().await {
            let data = match message {
                Ok(Message::Binary(data)) => data,
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => continue,
            };
            let Some((&channel, payload)) = data.split_first() else {
                continue;
            };
            if channel % 2 != 0 {
                continue;
            }
            if let Some(slot) = inputs.get_mut(usize::from(channel / 2))
                && let Some(w) = slot
                && w.write_all(payload).await.is_err()
            {
                *slot = None;
            }
        }
        for w in inputs.iter_mut().filter_map(Option::take) {
            let mut w = w;
            let _ = w.shutdown().await;
        }
    };
    // Ends when every connection's remote side finished, or when the client left.
    let aborts: Vec<_> = relays.iter().map(|r| r.abort_handle()).collect();
    tokio::select! {
        _ = futures::future::join_all(relays) => {}
        _ = input => {}
    }
    for abort in aborts {
        abort.abort();
    }
    let _ = tx.send(Message::Close(None)).await;
    drop(tx);
    let _ = writer.await;
}

/// A port-forward request over SPDY: its error and data streams.
#[derive(Debug, Default)]
struct SpdyPair {
    port: u16,
    error: Option<u32>,
    data: Option<u32>,
    started: bool,
}

/// Serves port forwarding over SPDY/3.1 (`portforward.k8s.io`): the client opens, per
/// connection it forwards, an error and a data stream with the same `requestID` header and
/// the `port` header. Once both are there the server connects to `127.0.0.1:<port>` in the
/// sandbox's netns; a failure is written on the error stream. The connection's output goes
/// on the data stream, the data stream's input to the connection; when the connection's
/// side ends both streams are half-closed. Served until the client closes the connection.
pub async fn serve_spdy(
    mut session: super::spdy::Session,
    sandbox_id: String,
    netns: Option<PathBuf>,
) {
    use super::spdy::{Event, REFUSED_STREAM, header};
    use std::collections::HashMap;
    let tx = session.sender();
    let mut pairs: HashMap<String, SpdyPair> = HashMap::new();
    // Data streams -> the connection's write half (None until connected).
    let mut writers: HashMap<u32, Option<tokio::net::tcp::OwnedWriteHalf>> = HashMap::new();
    let mut early: HashMap<u32, (Vec<u8>, bool)> = HashMap::new();
    let mut forwards = Vec::new();
    let (conn_tx, mut conn_rx) = mpsc::channel::<(u32, Option<tokio::net::tcp::OwnedWriteHalf>)>(8);
    loop {
        tokio::select! {
            connected = conn_rx.recv() => {
                let Some((id, writer)) = connected else { continue };
                let Some(mut writer) = writer else {
                    writers.remove(&id);
                    continue;
                };
                if let Some((data, fin)) = early.remove(&id) {
                    if !data.is_empty() && writer.write_all(&data).await.is_err() {
                        continue;
                    }
                    if fin {
                        let _ = writer.shutdown().await;
                        continue;
                    }
                }
                writers.insert(id, Some(writer));
            }
            event = session.events.recv() => {
                let Some(event) = event else { break };
                match event {
                    Event::Open { id, headers } => {
                        let port = header(&headers, "port").and_then(|p| p.parse::<u16>().ok()).filter(|p| *p > 0);
                        let request = header(&headers, "requestid").unwrap_or_default().to_string();
                        let (Some(port), Some(kind)) = (port, header(&headers, "streamtype")) else {
                            tx.reset(id, REFUSED_STREAM).await;
                            continue;
                        };
                        let pair = pairs.entry(request.clone()).or_default();
                        pair.port = port;
                        match kind {
                            "error" => pair.error = Some(id),
                            "data" => pair.data = Some(id),
                            _ => {
                                tx.reset(id, REFUSED_STREAM).await;
                                continue;
                            }
                        }
                        if let (Some(error), Some(data), false) = (pair.error, pair.data, pair.started) {
                            pair.started = true;
                            writers.insert(data, None);
                            forwards.push(tokio::spawn(forward_spdy(
                                (error, data, port),
                                sandbox_id.clone(),
                                netns.clone(),
                                tx.clone(),
                                conn_tx.clone(),
                            )));
                        }
                    }
                    Event::Data { id, data } => {
                        let failed = match writers.get_mut(&id) {
                            Some(Some(w)) => w.write_all(&data).await.is_err(),
                            Some(None) => {
                                early.entry(id).or_default().0.extend(data);
                                false
                            }
                            None => false,
                        };
                        if failed {
                            writers.remove(&id);
                        }
                    }
                    Event::Fin { id } => match writers.get_mut(&id) {
                        Some(Some(w)) => {
                            let _ = w.shutdown().await;
                            writers.remove(&id);
                        }
                        Some(None) => early.entry(id).or_default().1 = true,
                        None => {}
                    },
                }
            }
        }
    }
    // The client is gone: so are the pod connections it forwarded.
    for forward in forwards {
        forward.abort();
    }
    drop(tx);
    session.close().await;
}

/// Connects one SPDY port-forward pair and relays the connection's output.
async fn forward_spdy(
    (error, data, port): (u32, u32, u16),
    sandbox_id: String,
    netns: Option<PathBuf>,
    tx: super::spdy::Sender,
    connected: mpsc::Sender<(u32, Option<tokio::net::tcp::OwnedWriteHalf>)>,
) {
    match connect(netns, port).await {
        Ok(stream) => {
            let (mut read, write) = stream.into_split();
            if connected.send((data, Some(write))).await.is_err() {
                return;
            }
            let mut buf = vec![0u8; super::spdy::MAX_DATA];
            loop {
                match read.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if !tx.data(data, &buf[..n]).await {
                            return;
                        }
                    }
                }
            }
        }
        Err(e) => {
            let _ = connected.send((data, None)).await;
            let message = format!("error forwarding port {port} to pod {sandbox_id}: {e}");
            tracing::debug!(%message);
            tx.data(error, message.as_bytes()).await;
        }
    }
    tx.fin(data).await;
    tx.fin(error).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_come_from_the_query() {
        assert_eq!(
            parse_ports(Some("port=80&port=8080,9090")),
            Some(vec![80, 8080, 9090])
        );
        assert_eq!(parse_ports(Some("x=1")), Some(vec![]));
        assert_eq!(parse_ports(None), Some(vec![]));
        assert_eq!(parse_ports(Some("port=0")), None);
        assert_eq!(parse_ports(Some("port=http")), None);
    }
}
