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
