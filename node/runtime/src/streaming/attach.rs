//! Attach over a WebSocket channel protocol: the container's output as its shim relays it
//! (see [`crate::shim`]: frames of stream byte, u32 big-endian length, bytes, on
//! `attach.sock` in the container's state directory), on the stdout/stderr channels, until
//! the container exits (Success on the error channel then) or the client leaves. The
//! container's stdin is not held by the shim, so stdin from the client is ignored.

use std::os::fd::AsRawFd as _;
use std::path::Path;

use futures::{SinkExt as _, StreamExt as _};
use tokio::io::AsyncReadExt as _;
use tokio::net::{TcpStream, UnixStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use super::websocket::{ERROR, STDERR, STDOUT, frame};
use crate::shim::ATTACH_SOCKET;

/// Connects to the shim's socket in `dir` (through `/proc/self/fd`, whatever its length).
fn connect(dir: &Path) -> std::io::Result<UnixStream> {
    let dir_file = std::fs::File::open(dir)?;
    let path = format!("/proc/self/fd/{}/{ATTACH_SOCKET}", dir_file.as_raw_fd());
    let stream = std::os::unix::net::UnixStream::connect(path)?;
    stream.set_nonblocking(true)?;
    UnixStream::from_std(stream)
}

/// Relays the shim's frames to `sink` until the shim closes; false if it never connected.
async fn relay(
    dir: &Path,
    stdout: bool,
    stderr: bool,
    tx: &tokio::sync::mpsc::Sender<Message>,
) -> Result<(), String> {
    let mut shim = connect(dir).map_err(|e| format!("connecting to the container's shim: {e}"))?;
    let mut header = [0u8; 5];
    loop {
        if shim.read_exact(&mut header).await.is_err() {
            return Ok(());
        }
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
        let mut data = vec![0u8; usize::try_from(len).unwrap_or(0)];
        if shim.read_exact(&mut data).await.is_err() {
            return Ok(());
        }
        let wanted = match header[0] {
            1 => stdout.then_some(STDOUT),
            2 => stderr.then_some(STDERR),
            _ => None,
        };
        if let Some(channel) = wanted
            && tx.send(frame(channel, &data)).await.is_err()
        {
            return Ok(());
        }
    }
}

/// Serves one attach on an upgraded connection.
pub async fn serve(ws: WebSocketStream<TcpStream>, dir: &Path, stdout: bool, stderr: bool) {
    let (mut sink, mut source) = ws.split();
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
    let first = if stdout {
        STDOUT
    } else if stderr {
        STDERR
    } else {
        ERROR
    };
    let _ = tx.send(frame(first, &[])).await;
    // The client leaving ends the attach; its stdin is dropped.
    let client_gone = async {
        while let Some(Ok(message)) = source.next().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    };
    let status = tokio::select! {
        result = relay(dir, stdout, stderr, &tx) => match result {
            Ok(()) => serde_json::json!({"metadata": {}, "status": "Success"}),
            Err(message) => serde_json::json!({"metadata": {}, "status": "Failure", "message": message}),
        },
        () = client_gone => serde_json::json!({"metadata": {}, "status": "Success"}),
    };
    let _ = tx.send(frame(ERROR, status.to_string().as_bytes())).await;
    let _ = tx.send(Message::Close(None)).await;
    drop(tx);
    let _ = writer.await;
}
