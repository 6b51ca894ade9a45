//! Exec over a WebSocket channel protocol: `runc exec` in the container, its stdio relayed
//! on the channels, then a `metav1.Status` on the error channel and a close frame.
//!
//! Without a terminal runc gets pipes. With one, runc is run in the foreground with
//! `--tty`: it allocates the container's terminal and relays it to its own stdio, so its
//! stdio is the slave of a pseudo-terminal this module opens and the module talks to the
//! master. A resize sets the master's window size and sends runc SIGWINCH, on which runc
//! copies the size to the container's terminal (that is how runc's foreground mode
//! propagates resizes; `--console-socket` only works with `--detach`, which would make the
//! exec process nobody's child and its exit code unobtainable).
//!
//! Known flaw of that relay: runc clears ONLCR on the container's terminal once it has it
//! and makes its own stdio raw with OPOST kept, so output the process writes before the
//! first step but runc copies after the second gets `\r\r\n`. The fix is to hold the
//! container's terminal ourselves (`--detach --console-socket`, reaping the process as a
//! child subreaper), as containerd's shim does.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::process::Stdio;

use futures::{SinkExt as _, StreamExt as _};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use super::ExecRequest;
use super::websocket::{CLOSE, ERROR, RESIZE, STDERR, STDIN, STDOUT, frame};
use crate::container::{ContainerError, Containers};

type Reader = Box<dyn AsyncRead + Send + Unpin>;
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// A started exec: the runc process and the ends of its stdio.
struct Session {
    child: tokio::process::Child,
    stdin: Option<Writer>,
    outputs: Vec<(u8, Reader)>,
    terminal: Option<Terminal>,
}

/// The master of the pseudo-terminal runc's stdio is on, for resizes.
struct Terminal {
    master: OwnedFd,
    runc: Option<nix::unistd::Pid>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Size {
    width: u16,
    height: u16,
}

impl Terminal {
    fn resize(&self, payload: &[u8]) {
        let Ok(size) = serde_json::from_slice::<Size>(payload) else {
            tracing::debug!("ignoring a malformed resize message");
            return;
        };
        let winsize = rustix::termios::Winsize {
            ws_row: size.height,
            ws_col: size.width,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        if let Err(e) = rustix::termios::tcsetwinsize(&self.master, winsize) {
            tracing::debug!(error = %e, "resizing the exec terminal");
        }
        if let Some(pid) = self.runc {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGWINCH);
        }
    }
}

/// Opens a pseudo-terminal: (master, slave).
fn open_pty() -> std::io::Result<(OwnedFd, File)> {
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let name = ptsname(&master, Vec::new())?;
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_NOCTTY)
        .open(OsStr::from_bytes(name.as_bytes()))?;
    // Raw from the start: runc makes its terminal raw too (keeping OPOST), but only once
    // the exec has started.
    let mut termios = rustix::termios::tcgetattr(&slave)?;
    termios.make_raw();
    rustix::termios::tcsetattr(&slave, rustix::termios::OptionalActions::Now, &termios)?;
    Ok((master, slave))
}

fn start(containers: &Containers, request: &ExecRequest) -> Result<Session, ContainerError> {
    let io = |what: &'static str| {
        move |e: std::io::Error| ContainerError::Io(what.into(), e.to_string())
    };
    let mut command = containers.exec_command(&request.container_id, &request.cmd, request.tty)?;
    if request.tty {
        let (master, slave) = open_pty().map_err(io("opening a pseudo-terminal"))?;
        command
            .stdin(slave.try_clone().map_err(io("dup pty"))?)
            .stdout(slave.try_clone().map_err(io("dup pty"))?)
            .stderr(slave);
        let child = command.spawn().map_err(io("running runc exec"))?;
        // The slave copies in `command` must close for the master to see the end.
        drop(command);
        let reader = File::from(master.try_clone().map_err(io("dup pty"))?);
        let writer = File::from(master.try_clone().map_err(io("dup pty"))?);
        let runc = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map(nix::unistd::Pid::from_raw);
        return Ok(Session {
            child,
            stdin: request
                .stdin
                .then(|| Box::new(tokio::fs::File::from_std(writer)) as Writer),
            outputs: vec![(STDOUT, Box::new(tokio::fs::File::from_std(reader)))],
            terminal: Some(Terminal { master, runc }),
        });
    }
    let pipe = |wanted: bool| {
        if wanted {
            Stdio::piped()
        } else {
            Stdio::null()
        }
    };
    command
        .stdin(pipe(request.stdin))
        .stdout(pipe(request.stdout))
        .stderr(pipe(request.stderr));
    let mut child = command.spawn().map_err(io("running runc exec"))?;
    let mut outputs: Vec<(u8, Reader)> = Vec::new();
    if let Some(out) = child.stdout.take() {
        outputs.push((STDOUT, Box::new(out)));
    }
    if let Some(err) = child.stderr.take() {
        outputs.push((STDERR, Box::new(err)));
    }
    let stdin = child.stdin.take().map(|w| Box::new(w) as Writer);
    Ok(Session {
        child,
        stdin,
        outputs,
        terminal: None,
    })
}

/// Copies `reader` to `channel` until it ends (a terminal master reports EIO once the
/// last slave closes: that is its end too).
async fn pump(channel: u8, mut reader: Reader, tx: mpsc::Sender<Message>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.send(frame(channel, &buf[..n])).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Applies the client's messages: stdin data, resizes, (v5) stdin close. Ends when the
/// client closes or goes away, which closes stdin.
async fn input(
    mut source: futures::stream::SplitStream<WebSocketStream<TcpStream>>,
    mut stdin: Option<Writer>,
    terminal: Option<Terminal>,
    v5: bool,
) {
    while let Some(message) = source.next().await {
        let data = match message {
            Ok(Message::Binary(data)) => data,
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        };
        let Some((&channel, payload)) = data.split_first() else {
            continue;
        };
        match channel {
            STDIN => {
                if let Some(w) = stdin.as_mut()
                    && (w.write_all(payload).await.is_err() || w.flush().await.is_err())
                {
                    stdin = None;
                }
            }
            RESIZE => {
                if let Some(t) = &terminal {
                    t.resize(payload);
                }
            }
            CLOSE if v5 && payload.first() == Some(&STDIN) => {
                if let Some(mut w) = stdin.take() {
                    let _ = w.shutdown().await;
                }
            }
            _ => {}
        }
    }
    if let Some(mut w) = stdin.take() {
        let _ = w.shutdown().await;
    }
}

/// The final status upstream writes on the error channel.
pub fn exit_status(code: i32) -> serde_json::Value {
    if code == 0 {
        return serde_json::json!({"metadata": {}, "status": "Success"});
    }
    serde_json::json!({
        "metadata": {},
        "status": "Failure",
        "message": format!("command terminated with non-zero exit code: exit status {code}"),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}

fn failure(message: String) -> serde_json::Value {
    serde_json::json!({"metadata": {}, "status": "Failure", "message": message})
}

/// Serves one exec on an upgraded connection.
pub async fn serve(
    ws: WebSocketStream<TcpStream>,
    v5: bool,
    request: ExecRequest,
    containers: &Containers,
) {
    let (mut sink, source) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Message>(16);
    let writer = tokio::spawn(async move {
        while let Some(message) = rx.recv().await {
            let close = matches!(message, Message::Close(_));
            if sink.send(message).await.is_err() || close {
                break;
            }
        }
        let _ = sink.close().await;
    });
    // Upstream tells the client the stream is up with an empty message on the lowest
    // channel it writes to.
    let first = if request.stdout {
        STDOUT
    } else if request.stderr {
        STDERR
    } else {
        ERROR
    };
    let _ = tx.send(frame(first, &[])).await;
    let status = match start(containers, &request) {
        Err(e) => {
            drop(source);
            failure(e.to_string())
        }
        Ok(mut session) => {
            let input = tokio::spawn(input(
                source,
                session.stdin.take(),
                session.terminal.take(),
                v5,
            ));
            let pumps = futures::future::join_all(
                session
                    .outputs
                    .drain(..)
                    .map(|(channel, reader)| pump(channel, reader, tx.clone())),
            );
            let (_, exit) = tokio::join!(pumps, session.child.wait());
            input.abort();
            match exit {
                Ok(status) => exit_status(status.code().unwrap_or(-1)),
                Err(e) => failure(format!("waiting for runc exec: {e}")),
            }
        }
    };
    let _ = tx.send(frame(ERROR, status.to_string().as_bytes())).await;
    let _ = tx.send(Message::Close(None)).await;
    drop(tx);
    let _ = writer.await;
}

/// The SPDY streams of one exec, by their `streamType`.
#[derive(Debug, Default)]
struct SpdyStreams {
    error: Option<u32>,
    stdin: Option<u32>,
    stdout: Option<u32>,
    stderr: Option<u32>,
    resize: Option<u32>,
}

impl SpdyStreams {
    fn complete(&self, request: &ExecRequest, resize: bool) -> bool {
        self.error.is_some()
            && (!request.stdin || self.stdin.is_some())
            && (!request.stdout || self.stdout.is_some())
            && (!request.stderr || self.stderr.is_some())
            && (!(request.tty && resize) || self.resize.is_some())
    }
}

/// How long an SPDY client gets to open its streams (upstream's stream creation timeout).
const STREAM_CREATION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Serves one exec over SPDY/3.1 with the channel protocol `protocol` (`v4.channel.k8s.io`,
/// `v3.channel.k8s.io`, `v2.channel.k8s.io` or `channel.k8s.io`): the client opens one
/// stream per `streamType` (error, stdin, stdout, stderr, resize); once the expected set is
/// there the process runs, its output goes on stdout/stderr, and the end is written on the
/// error stream (v4: a `metav1.Status`; older protocols: a message, only on failure)
/// before every stream is half-closed and the connection closed.
pub async fn serve_spdy(
    mut session: super::spdy::Session,
    protocol: &str,
    request: ExecRequest,
    containers: &Containers,
) {
    use super::spdy::{Event, header};
    let v4 = protocol == super::websocket::V4;
    let resize = v4 || protocol == "v3.channel.k8s.io";
    let tx = session.sender();
    let mut streams = SpdyStreams::default();
    let mut early = Vec::new();
    let deadline = tokio::time::Instant::now() + STREAM_CREATION_TIMEOUT;
    while !streams.complete(&request, resize) {
        let event = match tokio::time::timeout_at(deadline, session.events.recv()).await {
            Ok(Some(event)) => event,
            Ok(None) => return session.close().await,
            Err(_) => {
                tracing::debug!("spdy exec: the client did not open its streams in time");
                return session.close().await;
            }
        };
        match event {
            Event::Open { id, headers } => {
                let slot = match header(&headers, "streamtype") {
                    Some("error") => &mut streams.error,
                    Some("stdin") => &mut streams.stdin,
                    Some("stdout") => &mut streams.stdout,
                    Some("stderr") => &mut streams.stderr,
                    Some("resize") => &mut streams.resize,
                    other => {
                        tracing::debug!(?other, "spdy exec: unknown stream type");
                        tx.reset(id, super::spdy::REFUSED_STREAM).await;
                        continue;
                    }
                };
                *slot = Some(id);
            }
            other => early.push(other),
        }
    }
    let outcome = match start(containers, &request) {
        Err(e) => Err(e.to_string()),
        Ok(mut run) => {
            let mut stdin = run.stdin.take();
            let terminal = run.terminal.take();
            let outputs = run.outputs.drain(..).filter_map(|(channel, reader)| {
                let id = if channel == STDERR {
                    streams.stderr
                } else {
                    streams.stdout
                }?;
                Some(pump_spdy(id, reader, tx.clone()))
            });
            let main = async {
                let (_, exit) = tokio::join!(futures::future::join_all(outputs), run.child.wait());
                exit
            };
            let input = async {
                let mut resize_buf = Vec::new();
                let events = futures::stream::iter(early.drain(..)).chain(futures::stream::unfold(
                    &mut session.events,
                    |events| async move { events.recv().await.map(|e| (e, events)) },
                ));
                let mut events = std::pin::pin!(events);
                while let Some(event) = events.next().await {
                    match event {
                        Event::Data { id, data } if Some(id) == streams.stdin => {
                            if let Some(w) = stdin.as_mut()
                                && (w.write_all(&data).await.is_err() || w.flush().await.is_err())
                            {
                                stdin = None;
                            }
                        }
                        Event::Fin { id } if Some(id) == streams.stdin => {
                            if let Some(mut w) = stdin.take() {
                                let _ = w.shutdown().await;
                            }
                        }
                        Event::Data { id, data } if Some(id) == streams.resize => {
                            resize_buf.extend_from_slice(&data);
                            let mut sizes = serde_json::Deserializer::from_slice(&resize_buf)
                                .into_iter::<serde_json::Value>();
                            let mut consumed = 0;
                            while let Some(Ok(size)) = sizes.next() {
                                consumed = sizes.byte_offset();
                                if let Some(t) = &terminal {
                                    t.resize(size.to_string().as_bytes());
                                }
                            }
                            resize_buf.drain(..consumed);
                        }
                        _ => {}
                    }
                }
                // The client is gone: close stdin, keep waiting for the process.
                if let Some(mut w) = stdin.take() {
                    let _ = w.shutdown().await;
                }
                futures::future::pending::<()>().await;
            };
            let exit = tokio::select! {
                exit = main => exit,
                () = input => unreachable!("input never ends"),
            };
            match exit {
                Ok(status) => Ok(status.code().unwrap_or(-1)),
                Err(e) => Err(format!("waiting for runc exec: {e}")),
            }
        }
    };
    if let Some(error) = streams.error {
        let message = match (&outcome, v4) {
            (Ok(code), true) => Some(exit_status(*code).to_string()),
            (Err(e), true) => Some(failure(e.clone()).to_string()),
            (Ok(0), false) => None,
            (Ok(code), false) => Some(format!(
                "command terminated with non-zero exit code: exit status {code}"
            )),
            (Err(e), false) => Some(e.clone()),
        };
        if let Some(message) = message {
            tx.data(error, message.as_bytes()).await;
        }
    }
    for id in [streams.stdout, streams.stderr, streams.error]
        .into_iter()
        .flatten()
    {
        tx.fin(id).await;
    }
    drop(tx);
    session.close().await;
}

/// Copies `reader` to SPDY stream `id` until it ends.
async fn pump_spdy(id: u32, mut reader: Reader, tx: super::spdy::Sender) {
    let mut buf = vec![0u8; super::spdy::MAX_DATA];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if !tx.data(id, &buf[..n]).await {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_match_upstream() {
        assert_eq!(exit_status(0)["status"], "Success");
        let failed = exit_status(3);
        assert_eq!(failed["status"], "Failure");
        assert_eq!(failed["reason"], "NonZeroExitCode");
        assert_eq!(failed["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(failed["details"]["causes"][0]["message"], "3");
    }
}
