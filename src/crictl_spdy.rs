//! `ferrokube crictl exec --transport spdy`: the exec URL upgraded to SPDY/3.1 with channel
//! protocol `v4.channel.k8s.io`, as kubectl before 1.30 does. The client opens the error,
//! stdin, stdout, stderr and (with `-t`) resize streams, waits for the server's replies,
//! relays the local stdio, half-closes stdin with a FIN at its end, and returns the exit
//! code the error stream's Status reports. Framing comes from the runtime's
//! `streaming::spdy` module.

use std::io::{IsTerminal as _, Write as _};

use anyhow::{Context, Result, bail};
use ferrokube_runtime::streaming::spdy::{FLAG_FIN, Frame, HeaderCodec, encode_frame, read_frame};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const V4: &str = "v4.channel.k8s.io";

fn resize_payload() -> Option<Vec<u8>> {
    let size = rustix::termios::tcgetwinsize(std::io::stdout()).ok()?;
    let json = serde_json::json!({"Width": size.ws_col, "Height": size.ws_row});
    Some(format!("{json}\n").into_bytes())
}

fn split(url: &str) -> Result<(&str, &str)> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("unsupported streaming URL {url}"))?;
    rest.split_once('/').context("streaming URL without a path")
}

/// Connects to `host` and upgrades `/path` to SPDY/3.1 offering `protocol`.
async fn upgrade(host: &str, path: &str, protocol: &str) -> Result<tokio::net::TcpStream> {
    let mut tcp = tokio::net::TcpStream::connect(host)
        .await
        .with_context(|| format!("connecting to {host}"))?;
    let request = format!(
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: {protocol}\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await?;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(
            tcp.read_u8()
                .await
                .context("reading the upgrade response")?,
        );
        if head.len() > 16 * 1024 {
            bail!("upgrade response too long");
        }
    }
    let head = String::from_utf8_lossy(&head);
    if !head.starts_with("HTTP/1.1 101") {
        bail!("the streaming server refused the upgrade: {head}");
    }
    Ok(tcp)
}

/// Relays one local connection through a port-forward URL over SPDY
/// (`portforward.k8s.io`): an error and a data stream for `port`, request ID 0.
pub async fn forward(url: &str, port: u16, conn: tokio::net::TcpStream) -> Result<()> {
    let (host, path) = split(url)?;
    let tcp = upgrade(host, path, "portforward.k8s.io").await?;
    let (mut reader, mut writer) = tcp.into_split();
    let mut codec = HeaderCodec::new();
    let port_s = port.to_string();
    let headers = |kind: &str| {
        vec![
            ("streamtype".to_string(), kind.to_string()),
            ("port".to_string(), port_s.clone()),
            ("requestid".to_string(), "0".to_string()),
        ]
    };
    let (error, data) = (1u32, 3u32);
    for (id, kind) in [(error, "error"), (data, "data")] {
        let frame = Frame::SynStream {
            id,
            flags: 0,
            headers: headers(kind),
        };
        writer.write_all(&encode_frame(&frame, &mut codec)?).await?;
    }
    let (mut local_read, mut local_write) = conn.into_split();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Frame>(16);
    let (replied_tx, replied_rx) = tokio::sync::oneshot::channel::<()>();
    let send = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            let Ok(bytes) = encode_frame(&frame, &mut codec) else {
                return;
            };
            if writer.write_all(&bytes).await.is_err() {
                return;
            }
        }
    });
    let upstream_tx = tx.clone();
    let upstream = tokio::spawn(async move {
        if replied_rx.await.is_err() {
            return;
        }
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match local_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let frame = Frame::Data {
                        id: data,
                        flags: 0,
                        data: buf[..n].to_vec(),
                    };
                    if upstream_tx.send(frame).await.is_err() {
                        return;
                    }
                }
            }
        }
        let fin = Frame::Data {
            id: data,
            flags: FLAG_FIN,
            data: Vec::new(),
        };
        let _ = upstream_tx.send(fin).await;
    });
    let mut codec = HeaderCodec::new();
    let mut replies = 0;
    let mut replied_tx = Some(replied_tx);
    while let Some(frame) = read_frame(&mut reader, &mut codec).await? {
        match frame {
            Frame::SynReply { .. } => {
                replies += 1;
                if replies == 2
                    && let Some(r) = replied_tx.take()
                {
                    let _ = r.send(());
                }
            }
            Frame::Data {
                id,
                flags,
                data: payload,
            } if id == data => {
                if local_write.write_all(&payload).await.is_err() {
                    break;
                }
                if flags & FLAG_FIN != 0 {
                    break;
                }
            }
            Frame::Data {
                id, data: payload, ..
            } if id == error && !payload.is_empty() => {
                eprintln!("port-forward error: {}", String::from_utf8_lossy(&payload));
            }
            Frame::RstStream { id, .. } if id == data => break,
            Frame::Ping(id) => {
                let _ = tx.send(Frame::Ping(id)).await;
            }
            Frame::GoAway { .. } => break,
            _ => {}
        }
    }
    let _ = local_write.shutdown().await;
    upstream.abort();
    drop(tx);
    let _ = send.await;
    Ok(())
}

/// Runs an exec session on `url` over SPDY; the command's exit code.
pub async fn exec(url: &str, stdin: bool, tty: bool) -> Result<i32> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("unsupported streaming URL {url}"))?;
    let (host, path) = rest
        .split_once('/')
        .context("streaming URL without a path")?;
    let tcp = upgrade(host, path, V4).await?;
    let (mut reader, mut writer) = tcp.into_split();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Frame>(16);
    tokio::spawn(async move {
        let mut codec = HeaderCodec::new();
        while let Some(frame) = rx.recv().await {
            let Ok(bytes) = encode_frame(&frame, &mut codec) else {
                return;
            };
            if writer.write_all(&bytes).await.is_err() {
                return;
            }
        }
    });
    let mut next = 1u32;
    let mut open = async |kind: &str| -> Result<u32> {
        let id = next;
        next += 2;
        let headers = vec![("streamtype".to_string(), kind.to_string())];
        tx.send(Frame::SynStream {
            id,
            flags: 0,
            headers,
        })
        .await
        .context("the connection closed")?;
        Ok(id)
    };
    let error = open("error").await?;
    let stdin_id = if stdin {
        Some(open("stdin").await?)
    } else {
        None
    };
    let stdout = open("stdout").await?;
    let stderr = if tty {
        None
    } else {
        Some(open("stderr").await?)
    };
    let resize = if tty {
        Some(open("resize").await?)
    } else {
        None
    };
    let mut unreplied: Vec<u32> = [Some(error), stdin_id, Some(stdout), stderr, resize]
        .into_iter()
        .flatten()
        .collect();
    let mut codec = HeaderCodec::new();
    let mut pending: Vec<u32> = [Some(error), Some(stdout), stderr]
        .into_iter()
        .flatten()
        .collect();
    let mut status = Vec::new();
    let mut raw = None;
    while !pending.is_empty() {
        let Some(frame) = read_frame(&mut reader, &mut codec).await? else {
            break;
        };
        match frame {
            Frame::SynReply { id, .. } => {
                unreplied.retain(|u| *u != id);
                if unreplied.is_empty() {
                    raw = start_input(&tx, stdin_id, resize, tty)?;
                }
            }
            Frame::Data { id, flags, data } => {
                if id == stdout {
                    let mut out = std::io::stdout().lock();
                    out.write_all(&data)?;
                    out.flush()?;
                } else if Some(id) == stderr {
                    let mut err = std::io::stderr().lock();
                    err.write_all(&data)?;
                    err.flush()?;
                } else if id == error {
                    status.extend_from_slice(&data);
                }
                if flags & FLAG_FIN != 0 {
                    pending.retain(|p| *p != id);
                }
            }
            Frame::RstStream { id, .. } => pending.retain(|p| *p != id),
            Frame::Ping(id) => {
                let _ = tx.send(Frame::Ping(id)).await;
            }
            Frame::GoAway { .. } => break,
            _ => {}
        }
    }
    drop(raw);
    if status.is_empty() {
        return Ok(0);
    }
    let status: serde_json::Value = serde_json::from_slice(&status)
        .with_context(|| format!("exec failed: {}", String::from_utf8_lossy(&status)))?;
    crate::crictl_stream::exit_code(&status)
}

/// Once the server accepted every stream: sends the terminal size (and its changes) and
/// relays stdin; returns the raw-mode guard of a local terminal.
fn start_input(
    tx: &tokio::sync::mpsc::Sender<Frame>,
    stdin: Option<u32>,
    resize: Option<u32>,
    tty: bool,
) -> Result<Option<crate::crictl_stream::RawMode>> {
    let raw = if let (true, Some(resize)) = (tty && std::io::stdin().is_terminal(), resize) {
        let resizes = tx.clone();
        tokio::spawn(async move {
            let send = async |resizes: &tokio::sync::mpsc::Sender<Frame>| match resize_payload() {
                Some(data) => resizes
                    .send(Frame::Data {
                        id: resize,
                        flags: 0,
                        data,
                    })
                    .await
                    .is_ok(),
                None => true,
            };
            if !send(&resizes).await {
                return;
            }
            let Ok(mut winch) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
            else {
                return;
            };
            while winch.recv().await.is_some() {
                if !send(&resizes).await {
                    return;
                }
            }
        });
        Some(crate::crictl_stream::RawMode::enter()?)
    } else {
        None
    };
    if let Some(id) = stdin {
        let input = tx.clone();
        // A plain thread: a read blocked on a terminal must not hold the async runtime.
        std::thread::spawn(move || {
            use std::io::Read as _;
            let mut local = std::io::stdin().lock();
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match local.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let data = buf[..n].to_vec();
                        if input
                            .blocking_send(Frame::Data { id, flags: 0, data })
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
            let fin = Frame::Data {
                id,
                flags: FLAG_FIN,
                data: Vec::new(),
            };
            let _ = input.blocking_send(fin);
        });
    }
    Ok(raw)
}
