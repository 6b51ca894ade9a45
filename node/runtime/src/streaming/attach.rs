//! Attach, over a WebSocket channel protocol ([`serve`]) or SPDY/3.1 ([`serve_spdy`]): the
//! container's output as its shim relays it (see [`crate::shim`] for the frames on
//! `attach.sock` in the container's state directory), on the stdout/stderr channels or
//! streams, until the container exits (Success on the error channel then) or the client
//! leaves. Stdin from the client goes to the shim, which feeds it to containers created
//! with stdin (into the terminal of a container with one); resizes go to the shim too,
//! which sets the terminal's size. The end of the client's stdin (v5's close of stdin, an
//! SPDY stdin stream's FIN) half-closes the socket; with `stdin_once` the shim then
//! closes the container's stdin.

use std::os::fd::AsRawFd as _;
use std::path::Path;

use futures::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpStream, UnixStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use super::websocket::{CLOSE, ERROR, RESIZE, STDERR, STDIN, STDOUT, frame};
use crate::shim::{ATTACH_SOCKET, FRAME_RESIZE, FRAME_STDIN, attach_frame};

/// What the client attached for: stdin, stdout, stderr.
#[derive(Debug, Clone, Copy)]
pub struct AttachRequest {
    /// Relay the client's stdin.
    pub stdin: bool,
    /// Relay stdout.
    pub stdout: bool,
    /// Relay stderr.
    pub stderr: bool,
}

/// Connects to the shim's socket in `dir` (through `/proc/self/fd`, whatever its length).
fn connect(dir: &Path) -> Result<(OwnedReadHalf, OwnedWriteHalf), String> {
    let connect = || -> std::io::Result<UnixStream> {
        let dir_file = std::fs::File::open(dir)?;
        let path = format!("/proc/self/fd/{}/{ATTACH_SOCKET}", dir_file.as_raw_fd());
        let stream = std::os::unix::net::UnixStream::connect(path)?;
        stream.set_nonblocking(true)?;
        UnixStream::from_std(stream)
    };
    connect()
        .map(UnixStream::into_split)
        .map_err(|e| format!("connecting to the container's shim: {e}"))
}

/// Reads the shim's output frames, handing each (1 stdout, 2 stderr) to `out`, until the
/// shim closes or `out` says stop.
async fn shim_output<F, Fut>(mut shim: OwnedReadHalf, mut out: F)
where
    F: FnMut(u8, Vec<u8>) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut header = [0u8; 5];
    loop {
        if shim.read_exact(&mut header).await.is_err() {
            return;
        }
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
        let mut data = vec![0u8; usize::try_from(len).unwrap_or(0)];
        if shim.read_exact(&mut data).await.is_err() || !out(header[0], data).await {
            return;
        }
    }
}

/// Relays the shim's frames to `tx` until the shim closes, and the client's stdin and
/// resizes to the shim.
async fn relay(
    dir: &Path,
    request: AttachRequest,
    v5: bool,
    tx: &tokio::sync::mpsc::Sender<Message>,
    mut source: futures::stream::SplitStream<WebSocketStream<TcpStream>>,
) -> Result<(), String> {
    let (shim_read, mut shim_write) = connect(dir)?;
    let input = async move {
        while let Some(Ok(message)) = source.next().await {
            let data = match message {
                Message::Binary(data) => data,
                Message::Close(_) => break,
                _ => continue,
            };
            match data.split_first() {
                Some((&STDIN, payload))
                    if request.stdin
                        && shim_write
                            .write_all(&attach_frame(FRAME_STDIN, payload))
                            .await
                            .is_err() =>
                {
                    break;
                }
                Some((&RESIZE, payload)) => {
                    let _ = shim_write
                        .write_all(&attach_frame(FRAME_RESIZE, payload))
                        .await;
                }
                Some((&CLOSE, [STDIN])) if v5 => {
                    let _ = shim_write.shutdown().await;
                }
                _ => {}
            }
        }
    };
    let output = shim_output(shim_read, |kind, data| async move {
        let wanted = match kind {
            1 => request.stdout.then_some(STDOUT),
            2 => request.stderr.then_some(STDERR),
            _ => None,
        };
        match wanted {
            Some(channel) => tx.send(frame(channel, &data)).await.is_ok(),
            None => true,
        }
    });
    // The container's end (the shim closes) or the client leaving ends the attach.
    tokio::select! {
        () = output => {}
        () = input => {}
    }
    Ok(())
}

/// Serves one attach on an upgraded WebSocket connection (`v5`: the v5 channel protocol).
pub async fn serve(ws: WebSocketStream<TcpStream>, dir: &Path, request: AttachRequest, v5: bool) {
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
    let first = if request.stdout {
        STDOUT
    } else if request.stderr {
        STDERR
    } else {
        ERROR
    };
    let _ = tx.send(frame(first, &[])).await;
    let status = match relay(dir, request, v5, &tx, source).await {
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

/// Serves one attach over SPDY/3.1 with the channel protocol `protocol` (as exec: the
/// client opens error, stdin, stdout, stderr and resize streams as it asked; v4 ends with
/// a `metav1.Status` on the error stream, older protocols write there only on failure).
pub async fn serve_spdy(
    mut session: super::spdy::Session,
    protocol: &str,
    dir: &Path,
    request: AttachRequest,
    tty: bool,
) {
    use super::spdy::Event;
    let v4 = protocol == super::websocket::V4;
    let resize = tty && (v4 || protocol == "v3.channel.k8s.io");
    let wanted = (request.stdin, request.stdout, request.stderr, resize);
    let Some((streams, mut early)) = super::exec::open_spdy_streams(&mut session, wanted).await
    else {
        return session.close().await;
    };
    let outcome = match connect(dir) {
        Err(e) => Err(e),
        Ok((shim_read, mut shim_write)) => {
            let tx = session.sender();
            let output = shim_output(shim_read, |kind, data| {
                let id = match kind {
                    1 => streams.stdout,
                    2 => streams.stderr,
                    _ => None,
                };
                let tx = tx.clone();
                async move {
                    match id {
                        Some(id) => tx.data(id, &data).await,
                        None => true,
                    }
                }
            });
            let input = async {
                let mut resize_buf = Vec::new();
                let mut events =
                    std::pin::pin!(super::exec::client_events(&mut early, &mut session.events));
                while let Some(event) = events.next().await {
                    match event {
                        Event::Data { id, data } if Some(id) == streams.stdin => {
                            let sent = shim_write
                                .write_all(&attach_frame(FRAME_STDIN, &data))
                                .await;
                            if sent.is_err() {
                                break;
                            }
                        }
                        Event::Fin { id } if Some(id) == streams.stdin => {
                            let _ = shim_write.shutdown().await;
                        }
                        Event::Data { id, data } if Some(id) == streams.resize => {
                            resize_buf.extend_from_slice(&data);
                            for size in super::exec::take_resizes(&mut resize_buf) {
                                let _ = shim_write
                                    .write_all(&attach_frame(FRAME_RESIZE, &size))
                                    .await;
                            }
                        }
                        _ => {}
                    }
                }
            };
            // The container's end or the client leaving ends the attach.
            tokio::select! {
                () = output => {}
                () = input => {}
            }
            Ok(0)
        }
    };
    super::exec::finish_spdy(session, &streams, outcome, v4).await;
}
