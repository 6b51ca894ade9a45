//! A small client for the CRI streaming server, written from the protocol (not sharing
//! code with the runtime or crictl), so it checks both runtimes independently.
//!
//! The streaming servers listen on loopback inside the lab namespace, so the TCP
//! connection is opened on a thread that entered it and handed to tokio.

use anyhow::{Context, Result, bail};
use futures::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::harness::Lab;

/// What a client sends during an exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Bytes on stdin (channel 0).
    Stdin(Vec<u8>),
    /// A resize (channel 4).
    Resize(u16, u16),
    /// v5: half-close stdin (channel 255).
    CloseStdin,
    /// Read until stdout holds this, then go on sending.
    WaitFor(Vec<u8>),
}

/// What came back.
#[derive(Debug, Default)]
pub struct ExecOutput {
    /// The subprotocol the server picked.
    pub protocol: String,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The error-channel status (`Value::Null` if none came).
    pub status: Value,
}

impl ExecOutput {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
    /// The exit code the status reports (0 for Success).
    pub fn exit_code(&self) -> Result<i32> {
        match self.status["status"].as_str() {
            Some("Success") => Ok(0),
            Some("Failure") if self.status["reason"] == "NonZeroExitCode" => {
                let cause = &self.status["details"]["causes"][0];
                if cause["reason"] != "ExitCode" {
                    bail!("unexpected status {}", self.status);
                }
                cause["message"]
                    .as_str()
                    .context("exit code message")?
                    .parse()
                    .context("exit code")
            }
            _ => bail!("unexpected status {}", self.status),
        }
    }
}

/// Why a connection was not upgraded.
#[derive(Debug)]
pub enum Refused {
    /// The server answered with this HTTP status.
    Http(StatusCode),
}

/// Opens `url` (http://) as a WebSocket offering `protocols` (comma-separated, one
/// header, as kubectl sends it); `Err(Ok(Refused))` if the server said no over HTTP.
pub async fn open(
    lab: &Lab,
    url: &str,
    protocols: &str,
) -> Result<std::result::Result<(WebSocketStream<TcpStream>, String), Refused>> {
    let ws_url = url
        .strip_prefix("http://")
        .map(|rest| format!("ws://{rest}"))
        .with_context(|| format!("not an http URL: {url}"))?;
    let host = ws_url["ws://".len()..]
        .split('/')
        .next()
        .context("URL without host")?
        .to_string();
    let std_stream = lab.node.run_in(move || {
        let stream = std::net::TcpStream::connect(&host)?;
        stream.set_nonblocking(true)?;
        Ok(stream)
    })?;
    let stream = TcpStream::from_std(std_stream)?;
    let mut request = ws_url.as_str().into_client_request()?;
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", protocols.parse()?);
    match tokio_tungstenite::client_async(request, stream).await {
        Ok((ws, response)) => {
            let protocol = response
                .headers()
                .get("Sec-WebSocket-Protocol")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            Ok(Ok((ws, protocol)))
        }
        Err(WsError::Http(response)) => Ok(Err(Refused::Http(response.status()))),
        Err(e) => Err(e.into()),
    }
}

/// Runs an exec URL to completion: sends `input` in order, then reads until the server
/// closes.
pub async fn exec(lab: &Lab, url: &str, protocols: &str, input: &[Input]) -> Result<ExecOutput> {
    let (ws, protocol) = match open(lab, url, protocols).await? {
        Ok(opened) => opened,
        Err(refused) => bail!("exec URL refused: {refused:?}"),
    };
    let mut out = ExecOutput {
        protocol,
        status: Value::Null,
        ..Default::default()
    };
    // A stream that never ends fails with what it delivered so far.
    match tokio::time::timeout(
        std::time::Duration::from_secs(30),
        run_exec(ws, input, &mut out),
    )
    .await
    {
        Ok(result) => result.map(|()| out),
        Err(_) => bail!("exec stream did not end within 30s; so far {out:?}"),
    }
}

async fn run_exec(
    ws: WebSocketStream<TcpStream>,
    input: &[Input],
    out: &mut ExecOutput,
) -> Result<()> {
    let (mut sink, mut source) = ws.split();
    let mut ended = false;
    for item in input {
        let mut data = Vec::new();
        match item {
            Input::Stdin(bytes) => {
                data.push(0);
                data.extend_from_slice(bytes);
            }
            Input::Resize(width, height) => {
                data.push(4);
                data.extend(
                    serde_json::json!({"Width": width, "Height": height})
                        .to_string()
                        .into_bytes(),
                );
            }
            Input::CloseStdin => data.extend([255, 0]),
            Input::WaitFor(needle) => {
                while !out
                    .stdout
                    .windows(needle.len())
                    .any(|w| w == needle.as_slice())
                {
                    if ended || !read_one(&mut source, out).await? {
                        bail!("stream ended before stdout showed {needle:?}: {out:?}");
                    }
                }
                continue;
            }
        }
        sink.send(Message::Binary(data.into())).await?;
    }
    while !ended {
        ended = !read_one(&mut source, out).await?;
    }
    let _ = sink.close().await;
    Ok(())
}

/// Reads one message into `out`; false once the stream ended.
async fn read_one(
    source: &mut futures::stream::SplitStream<WebSocketStream<TcpStream>>,
    out: &mut ExecOutput,
) -> Result<bool> {
    let data = match source.next().await {
        None | Some(Ok(Message::Close(_))) => return Ok(false),
        Some(Ok(Message::Binary(data))) => data,
        Some(Ok(_)) => return Ok(true),
        // Some servers drop the TCP connection right after their close frame.
        Some(Err(WsError::ConnectionClosed | WsError::Protocol(_) | WsError::Io(_)))
            if !out.status.is_null() =>
        {
            return Ok(false);
        }
        Some(Err(e)) => return Err(e).context("reading the exec stream"),
    };
    let Some((&channel, payload)) = data.split_first() else {
        return Ok(true);
    };
    match channel {
        1 => out.stdout.extend_from_slice(payload),
        2 => out.stderr.extend_from_slice(payload),
        3 if !payload.is_empty() => {
            out.status = serde_json::from_slice(payload)
                .with_context(|| String::from_utf8_lossy(payload).into_owned())?
        }
        _ => {}
    }
    Ok(true)
}

/// A port-forward session on one port: checks the server's port-announcing first
/// messages, then sends `send` and reads the data channel until it holds `expect`.
pub async fn port_forward(
    lab: &Lab,
    url: &str,
    port: u16,
    send: &[u8],
    expect: &[u8],
) -> Result<Vec<u8>> {
    let url = format!("{url}?port={port}");
    let (ws, _protocol) = match open(lab, &url, "v4.channel.k8s.io").await? {
        Ok(opened) => opened,
        Err(refused) => bail!("port-forward URL refused: {refused:?}"),
    };
    let (mut sink, mut source) = ws.split();
    let mut announced = [false; 2];
    let mut data = Vec::new();
    let mut sent = false;
    while !data.windows(expect.len()).any(|w| w == expect) {
        if announced == [true, true] && !sent {
            let mut frame = vec![0u8];
            frame.extend_from_slice(send);
            sink.send(Message::Binary(frame.into())).await?;
            sent = true;
        }
        let message = match source.next().await {
            Some(Ok(Message::Binary(message))) => message,
            Some(Ok(Message::Close(_))) | None => {
                bail!("port-forward closed early; data so far {data:?}")
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e).context("reading the port-forward stream"),
        };
        let Some((&channel, payload)) = message.split_first() else {
            continue;
        };
        match (channel, announced[usize::from(channel.min(1))]) {
            (0 | 1, false) => {
                if payload != port.to_le_bytes() {
                    bail!("channel {channel} announced {payload:?}, not port {port}");
                }
                announced[usize::from(channel)] = true;
            }
            (0, true) => data.extend_from_slice(payload),
            (1, true) => bail!("port-forward error: {}", String::from_utf8_lossy(payload)),
            _ => {}
        }
    }
    let _ = sink.close().await;
    Ok(data)
}

/// Attaches to `url`, sends `stdin` (if any) on channel 0, and reads until stdout and
/// stderr hold the needles; then leaves.
pub async fn attach_until(
    lab: &Lab,
    url: &str,
    stdin: &[u8],
    stdout: &[u8],
    stderr: &[u8],
) -> Result<ExecOutput> {
    let (ws, protocol) = match open(lab, url, "v4.channel.k8s.io").await? {
        Ok(opened) => opened,
        Err(refused) => bail!("attach URL refused: {refused:?}"),
    };
    let mut out = ExecOutput {
        protocol,
        status: Value::Null,
        ..Default::default()
    };
    let (mut sink, mut source) = ws.split();
    if !stdin.is_empty() {
        let mut data = vec![0u8];
        data.extend_from_slice(stdin);
        sink.send(Message::Binary(data.into())).await?;
    }
    let seen = |out: &ExecOutput| {
        let has = |hay: &[u8], needle: &[u8]| {
            needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
        };
        has(&out.stdout, stdout) && has(&out.stderr, stderr)
    };
    let read = async {
        while !seen(&out) {
            if !read_one(&mut source, &mut out).await? {
                bail!("attach ended early: {out:?}");
            }
        }
        Ok(())
    };
    match tokio::time::timeout(std::time::Duration::from_secs(30), read).await {
        Ok(result) => result?,
        Err(_) => bail!("attach output did not come within 30s"),
    }
    let _ = sink.close().await;
    Ok(out)
}
