//! `ferrokube crictl exec`'s (and `attach`'s) streaming side: opens the URL the runtime's Exec call returned
//! as a WebSocket (offering `v5.channel.k8s.io`, then `v4.channel.k8s.io`), relays the
//! local stdin/stdout/stderr over the channels and returns the exit code the error channel
//! reports. With `-t` on a terminal, the local terminal is put in raw mode for the session
//! and its size (initial and on SIGWINCH) sent on the resize channel.

use std::io::{IsTerminal as _, Write as _};

use anyhow::{Context, Result, bail};
use futures::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

const V5: &str = "v5.channel.k8s.io";
const V4: &str = "v4.channel.k8s.io";

/// Puts stdin's terminal in raw mode until dropped.
pub(crate) struct RawMode {
    saved: rustix::termios::Termios,
}

impl RawMode {
    pub(crate) fn enter() -> Result<RawMode> {
        let stdin = std::io::stdin();
        let saved = rustix::termios::tcgetattr(&stdin).context("reading terminal settings")?;
        let mut raw = saved.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &raw)
            .context("setting raw mode")?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(
            std::io::stdin(),
            rustix::termios::OptionalActions::Now,
            &self.saved,
        );
    }
}

fn resize_message() -> Option<Message> {
    let size = rustix::termios::tcgetwinsize(std::io::stdout()).ok()?;
    let mut data = vec![4u8];
    data.extend(
        serde_json::json!({"Width": size.ws_col, "Height": size.ws_row})
            .to_string()
            .into_bytes(),
    );
    Some(Message::Binary(data.into()))
}

/// The exit code a final status reports.
pub(crate) fn exit_code(status: &serde_json::Value) -> Result<i32> {
    match status["status"].as_str() {
        Some("Success") => Ok(0),
        Some("Failure") if status["reason"] == "NonZeroExitCode" => status["details"]["causes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["reason"] == "ExitCode")
            .and_then(|c| c["message"].as_str())
            .and_then(|m| m.parse().ok())
            .with_context(|| format!("no exit code in {status}")),
        _ => bail!(
            "exec failed: {}",
            status["message"].as_str().unwrap_or("unknown error")
        ),
    }
}

/// Runs an exec session on `url`; the command's exit code.
pub async fn exec(url: &str, stdin: bool, tty: bool) -> Result<i32> {
    let ws_url = url
        .strip_prefix("http://")
        .map(|rest| format!("ws://{rest}"))
        .with_context(|| format!("unsupported streaming URL {url}"))?;
    let mut request = ws_url.as_str().into_client_request()?;
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", format!("{V5}, {V4}").parse()?);
    let (ws, response) = tokio_tungstenite::connect_async(request)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let v5 = response
        .headers()
        .get("Sec-WebSocket-Protocol")
        .is_some_and(|p| p == V5);
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Message>(16);
    let _raw = if tty && std::io::stdin().is_terminal() {
        if let Some(m) = resize_message() {
            let _ = tx.send(m).await;
        }
        let resizes = tx.clone();
        tokio::spawn(async move {
            let Ok(mut winch) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
            else {
                return;
            };
            while winch.recv().await.is_some() {
                if let Some(m) = resize_message()
                    && resizes.send(m).await.is_err()
                {
                    return;
                }
            }
        });
        Some(RawMode::enter()?)
    } else {
        None
    };
    if stdin {
        // A plain thread: a read blocked on a terminal must not hold the async runtime.
        let input = tx.clone();
        std::thread::spawn(move || {
            use std::io::Read as _;
            let mut local = std::io::stdin().lock();
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match local.read(&mut buf[1..]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        buf[0] = 0;
                        let message = Message::Binary(buf[..=n].to_vec().into());
                        if input.blocking_send(message).is_err() {
                            return;
                        }
                    }
                }
            }
            if v5 {
                let _ = input.blocking_send(Message::Binary(vec![255u8, 0].into()));
            }
        });
    }
    drop(tx);
    tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(m).await.is_err() {
                return;
            }
        }
    });
    let mut status = None;
    while let Some(message) = source.next().await {
        let data = match message {
            Ok(Message::Binary(data)) => data,
            Ok(Message::Close(_)) => break,
            Ok(_) => continue,
            Err(_) if status.is_some() => break,
            Err(e) => return Err(e).context("reading the exec stream"),
        };
        let Some((&channel, payload)) = data.split_first() else {
            continue;
        };
        match channel {
            1 => {
                let mut out = std::io::stdout().lock();
                out.write_all(payload)?;
                out.flush()?;
            }
            2 => {
                let mut err = std::io::stderr().lock();
                err.write_all(payload)?;
                err.flush()?;
            }
            3 if !payload.is_empty() => status = Some(serde_json::from_slice(payload)?),
            _ => {}
        }
    }
    match status {
        Some(status) => exit_code(&status),
        None => bail!("the stream ended without a status"),
    }
}

/// `LOCAL:REMOTE` or `PORT`.
fn parse_mapping(mapping: &str) -> Result<(u16, u16)> {
    let parse = |p: &str| {
        p.parse::<u16>()
            .with_context(|| format!("bad port {p:?} in {mapping:?}"))
    };
    Ok(match mapping.split_once(':') {
        Some((local, remote)) => (parse(local)?, parse(remote)?),
        None => (parse(mapping)?, parse(mapping)?),
    })
}

/// Listens on 127.0.0.1 for each `LOCAL:REMOTE` mapping; each accepted connection gets a
/// PortForward call and its own WebSocket (the URLs are single-use).
pub async fn port_forward(
    runtime: k8s_cri::v1::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>,
    pod: String,
    mappings: &[String],
    spdy: bool,
) -> Result<()> {
    let mut listeners = Vec::new();
    for mapping in mappings {
        let (local, remote) = parse_mapping(mapping)?;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", local))
            .await
            .with_context(|| format!("listening on 127.0.0.1:{local}"))?;
        println!("Forwarding from {} -> {remote}", listener.local_addr()?);
        listeners.push((listener, remote));
    }
    std::io::stdout().flush()?;
    let mut tasks = tokio::task::JoinSet::new();
    for (listener, remote) in listeners {
        let runtime = runtime.clone();
        let pod = pod.clone();
        tasks.spawn(async move {
            loop {
                let Ok((conn, peer)) = listener.accept().await else {
                    continue;
                };
                let mut runtime = runtime.clone();
                let pod = pod.clone();
                tokio::spawn(async move {
                    let url = runtime
                        .port_forward(k8s_cri::v1::PortForwardRequest {
                            pod_sandbox_id: pod,
                            port: vec![i32::from(remote)],
                        })
                        .await
                        .map(|r| r.into_inner().url);
                    let result = match url {
                        Ok(url) if spdy => crate::crictl_spdy::forward(&url, remote, conn).await,
                        Ok(url) => forward(&url, remote, conn).await,
                        Err(e) => Err(e.into()),
                    };
                    if let Err(e) = result {
                        eprintln!("forwarding {peer} -> {remote}: {e:#}");
                    }
                });
            }
        });
    }
    tokio::signal::ctrl_c().await?;
    Ok(())
}

/// Relays one local connection through a port-forward URL.
async fn forward(url: &str, port: u16, conn: tokio::net::TcpStream) -> Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let ws_url = url
        .strip_prefix("http://")
        .map(|rest| format!("ws://{rest}?port={port}"))
        .with_context(|| format!("unsupported streaming URL {url}"))?;
    let mut request = ws_url.as_str().into_client_request()?;
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", V4.parse()?);
    let (ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let (mut sink, mut source) = ws.split();
    let (mut read, mut write) = conn.into_split();
    // The first message on each of the two channels names the port.
    let mut announced = [false; 2];
    let upstream = async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            buf[0] = 0;
            match read.read(&mut buf[1..]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink
                        .send(Message::Binary(buf[..=n].to_vec().into()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        let _ = sink.close().await;
    };
    let downstream = async move {
        while let Some(Ok(message)) = source.next().await {
            let data = match message {
                Message::Binary(data) => data,
                Message::Close(_) => break,
                _ => continue,
            };
            let Some((&channel, payload)) = data.split_first() else {
                continue;
            };
            let slot = usize::from(channel.min(1));
            if !announced[slot] {
                announced[slot] = true;
                continue;
            }
            match channel {
                0 if write.write_all(payload).await.is_err() => break,
                1 => eprintln!("port-forward error: {}", String::from_utf8_lossy(payload)),
                _ => {}
            }
        }
        let _ = write.shutdown().await;
    };
    tokio::join!(upstream, downstream);
    Ok(())
}
