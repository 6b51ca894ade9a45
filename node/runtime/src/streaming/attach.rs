//! Attach over a WebSocket channel protocol: the container's output as its shim relays it
//! (see [`crate::shim`]: frames of stream byte, u32 big-endian length, bytes, on
//! `attach.sock` in the container's state directory), on the stdout/stderr channels, until
//! the container exits (Success on the error channel then) or the client leaves. Stdin
//! from the client goes to the shim, which feeds it to containers created with stdin
//! (v5's close of stdin half-closes the socket; `stdin_once` then closes the container's).

use std::os::fd::AsRawFd as _;
use std::path::Path;

use futures::{SinkExt as _, StreamExt as _};
use tokio::io::AsyncReadExt as _;
use tokio::net::{TcpStream, UnixStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use super::websocket::{CLOSE, ERROR, STDERR, STDIN, STDOUT, frame};
use crate::shim::ATTACH_SOCKET;

/// Connects to the shim's socket in `dir` (through `/proc/self/fd`, whatever its length).
fn connect(dir: &Path) -> std::io::Result<UnixStream> {
    let dir_file = std::fs::File::open(dir)?;
    let path = format!("/proc/self/fd/{}/{ATTACH_SOCKET}", dir_file.as_raw_fd());
    let stream = std::os::unix::net::UnixStream::connect(path)?;
    stream.set_nonblocking(true)?;
    UnixStream::from_std(stream)
}

/// Relays the shim's frames to `tx` until the shim closes, and the client's stdin to the
/// shim.
async fn relay(
    dir: &Path,
    request: (bool, bool, bool, bool),
    tx: &tokio::sync::mpsc::Sender<Message>,
    mut source: futures::stream::SplitStream<WebSocketStream<TcpStream>>,
) -> Result<(), String> {
    use tokio::io::AsyncWriteExt as _;
    let (stdin, stdout, stderr, v5) = request;
    let shim = connect(dir).map_err(|e| format!("connecting to the container's shim: {e}"))?;
    let (mut shim_read, mut shim_write) = shim.into_split();
    let input = async move {
        while let Some(Ok(message)) = source.next().await {
            let data = match message {
                Message::Binary(data) => data,
                Message::Close(_) => break,
                _ => continue,
            };
            match data.split_first() {
                Some((&STDIN, payload))
                    if stdin && shim_write.write_all(payload).await.is_err() =>
                {
                    break;
                }
                Some((&CLOSE, [STDIN])) if v5 => {
                    let _ = shim_write.shutdown().await;
                }
                _ => {}
            }
        }
    };
    let output = async {
        let mut header = [0u8; 5];
        loop {
            if shim_read.read_exact(&mut header).await.is_err() {
                return;
            }
            let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
            let mut data = vec![0u8; usize::try_from(len).unwrap_or(0)];
            if shim_read.read_exact(&mut data).await.is_err() {
                return;
            }
            let wanted = match header[0] {
                1 => stdout.then_some(STDOUT),
                2 => stderr.then_some(STDERR),
                _ => None,
            };
            if let Some(channel) = wanted
                && tx.send(frame(channel, &data)).await.is_err()
            {
                return;
            }
        }
    };
    // The container's end (the shim closes) or the client leaving ends the attach.
    tokio::select! {
        () = output => {}
        () = input => {}
    }
    Ok(())
}

/// Serves one attach on an upgraded connection: `request` is (stdin, stdout, stderr, v5).
pub async fn serve(ws: WebSocketStream<TcpStream>, dir: &Path, request: (bool, bool, bool, bool)) {
    let (mut sink, source) = ws.split();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Message>(16);
    let writer = tokio::spawn(async move {
        while let Some(message) = rx.recv().await {
            let close = matches!(message, Message::Close(_));
            if sink.send(message).await.is_err() || close {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let (_, stdout, stderr, _) = request;
    let first = if stdout {
        STDOUT
    } else if stderr {
        STDERR
    } else {
        ERROR
    };
    let _ = tx.send(frame(first, &[])).await;
    let status = match relay(dir, request, &tx, source).await {
        Ok(()) => serde_json::json!({"metadata": {}, "status": "Success"}),
        Err(message) => {
            serde_json::json!({"metadata": {}, "status": "Failure", "message": message})
        }
    };
    let _ = tx.send(frame(ERROR, status.to_string().as_bytes())).await;
    let _ = tx.send(Message::Close(None)).await;
    drop(tx);
    let _ = writer.await;
}
