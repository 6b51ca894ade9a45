//! Exec over a WebSocket channel protocol: `runc exec` in the container, its stdio relayed
//! on the channels, then a `metav1.Status` on the error channel and a close frame.
//!
//! Without a terminal runc gets pipes, and writes its own log and the process's pid file to
//! a private directory: runc exits 255 both when it cannot start the process and when the
//! process exits 255, and only the pid file tells them apart; a process that never started
//! ends with a Failure status carrying runc's message (as containerd reports it), not an
//! exit code. With one, the runtime holds the container's
//! terminal itself, as containerd's shim does: the TTY exec helper ([`crate::tty`], a
//! short-lived child process that is a child subreaper) runs `runc exec --detach --tty
//! --console-socket`, passes the terminal's master it receives to this module over a unix
//! socket, reaps the exec process and exits with its code. This module reads and writes
//! the master directly, and a resize sets the master's window size (the kernel signals
//! the process). Nothing sits between the process and its terminal, so output keeps the
//! terminal's own line discipline (`\r\n` endings from the first byte on); runc's
//! foreground relay (`runc exec --tty`), used before, could translate early output twice
//! (`\r\r\n`) because it switches the container's terminal and its own stdio to raw in
//! two steps.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::process::Stdio;

use futures::{SinkExt as _, StreamExt as _};
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
    /// Without a terminal: runc's log and pid file, to tell a process that never started
    /// from one that exited 255.
    trace: Option<StartTrace>,
}

/// A private directory holding runc's log and the exec process's pid file (removed on
/// drop).
struct StartTrace {
    dir: tempfile::TempDir,
}

impl StartTrace {
    const LOG: &'static str = "runc.log";
    const PID: &'static str = "exec.pid";

    fn new() -> Result<Self, ContainerError> {
        let dir = tempfile::Builder::new()
            .prefix("ferrokube-exec-")
            .tempdir()
            .map_err(|e| ContainerError::Io("exec trace directory".into(), e.to_string()))?;
        Ok(Self { dir })
    }

    fn log(&self) -> std::path::PathBuf {
        self.dir.path().join(Self::LOG)
    }

    fn pid_file(&self) -> std::path::PathBuf {
        self.dir.path().join(Self::PID)
    }

    /// The exec's outcome from runc's exit code: runc exits 255 both when it fails and
    /// when the process does; without a pid file the process never started, and runc's
    /// last error line says why (as containerd reports it: a failure, not an exit code).
    fn outcome(&self, code: i32) -> Result<i32, String> {
        if code != 255 || self.pid_file().exists() {
            return Ok(code);
        }
        let log = std::fs::read_to_string(self.log()).unwrap_or_default();
        let message = log
            .lines()
            .rev()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|entry| entry["level"] == "error")
            .find_map(|entry| entry["msg"].as_str().map(str::to_string))
            .unwrap_or_else(|| "runc exec failed before starting the process".to_string());
        Err(message)
    }
}

/// The outcome of a finished exec: its exit code, or why it never started.
fn outcome(trace: Option<&StartTrace>, code: i32) -> Result<i32, String> {
    trace.map_or(Ok(code), |t| t.outcome(code))
}

/// The master of the container's terminal, for resizes.
struct Terminal {
    master: OwnedFd,
}

impl Terminal {
    fn resize(&self, payload: &[u8]) {
        let Ok(size) = serde_json::from_slice::<crate::tty::Size>(payload) else {
            tracing::debug!("ignoring a malformed resize message");
            return;
        };
        crate::tty::set_size(&self.master, size.width, size.height);
    }
}

/// How long a TTY exec may take to start (runc exec, the terminal handed over).
const TTY_START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Starts a TTY exec through the helper: the session's reader and writer are the
/// terminal's master, its child the helper (whose exit code is the process's).
async fn start_tty(
    containers: &Containers,
    request: &ExecRequest,
) -> Result<Session, ContainerError> {
    let io = |what: &'static str| {
        move |e: std::io::Error| ContainerError::Io(what.into(), e.to_string())
    };
    let mut command = containers.exec_tty_command(&request.container_id, &request.cmd)?;
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(io("socketpair"))?;
    command
        .stdin(Stdio::null())
        .stdout(OwnedFd::from(theirs))
        .stderr(Stdio::piped());
    let mut child = command.spawn().map_err(io("running the exec helper"))?;
    // Its copy of the socket must close for ours to see the helper's end.
    drop(command);
    // Bounded: a helper stuck in runc must not pin a blocking thread forever (it is
    // killed when `child` drops).
    ours.set_read_timeout(Some(TTY_START_TIMEOUT))
        .map_err(io("socket timeout"))?;
    let received = tokio::task::spawn_blocking(move || crate::tty::recv_fd(&ours)).await;
    let master = match received {
        Ok(Ok(Some(master))) => master,
        other => {
            let mut reason = String::new();
            if let Some(mut stderr) = child.stderr.take() {
                let _ = stderr.read_to_string(&mut reason).await;
            }
            let _ = child.wait().await;
            let reason = match other {
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.to_string(),
                Ok(_) => reason.trim().to_string(),
            };
            return Err(ContainerError::Runtime(reason));
        }
    };
    let reader = File::from(master.try_clone().map_err(io("dup pty"))?);
    let writer = File::from(master.try_clone().map_err(io("dup pty"))?);
    Ok(Session {
        child,
        stdin: request
            .stdin
            .then(|| Box::new(tokio::fs::File::from_std(writer)) as Writer),
        outputs: vec![(STDOUT, Box::new(tokio::fs::File::from_std(reader)))],
        terminal: Some(Terminal { master }),
        trace: None,
    })
}

async fn start(containers: &Containers, request: &ExecRequest) -> Result<Session, ContainerError> {
    if request.tty {
        return start_tty(containers, request).await;
    }
    let io = |what: &'static str| {
        move |e: std::io::Error| ContainerError::Io(what.into(), e.to_string())
    };
    let trace = StartTrace::new()?;
    let mut command = containers.exec_command_traced(
        &request.container_id,
        &request.cmd,
        Some((&trace.log(), &trace.pid_file())),
    )?;
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
        trace: Some(trace),
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
    let status = match start(containers, &request).await {
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
            match exit.map(|status| outcome(session.trace.as_ref(), status.code().unwrap_or(-1))) {
                Ok(Ok(code)) => exit_status(code),
                Ok(Err(message)) => failure(message),
                Err(e) => failure(format!("waiting for runc exec: {e}")),
            }
        }
    };
    let _ = tx.send(frame(ERROR, status.to_string().as_bytes())).await;
    let _ = tx.send(Message::Close(None)).await;
    drop(tx);
    let _ = writer.await;
}

/// The SPDY streams of one exec or attach, by their `streamType`.
#[derive(Debug, Default)]
pub(super) struct SpdyStreams {
    pub(super) error: Option<u32>,
    pub(super) stdin: Option<u32>,
    pub(super) stdout: Option<u32>,
    pub(super) stderr: Option<u32>,
    pub(super) resize: Option<u32>,
}

/// Which streams a request needs: stdin, stdout, stderr, resize.
pub(super) type Wanted = (bool, bool, bool, bool);

impl SpdyStreams {
    fn complete(&self, (stdin, stdout, stderr, resize): Wanted) -> bool {
        self.error.is_some()
            && (!stdin || self.stdin.is_some())
            && (!stdout || self.stdout.is_some())
            && (!stderr || self.stderr.is_some())
            && (!resize || self.resize.is_some())
    }
}

/// How long an SPDY client gets to open its streams (upstream's stream creation timeout).
const STREAM_CREATION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Waits for the client to open the streams `wanted` needs (refusing unknown types); the
/// streams and the events that came meanwhile, `None` if the client went away or was too
/// slow.
pub(super) async fn open_spdy_streams(
    session: &mut super::spdy::Session,
    wanted: Wanted,
) -> Option<(SpdyStreams, Vec<super::spdy::Event>)> {
    use super::spdy::{Event, header};
    let tx = session.sender();
    let mut streams = SpdyStreams::default();
    let mut early = Vec::new();
    let deadline = tokio::time::Instant::now() + STREAM_CREATION_TIMEOUT;
    while !streams.complete(wanted) {
        let event = match tokio::time::timeout_at(deadline, session.events.recv()).await {
            Ok(Some(event)) => event,
            Ok(None) => return None,
            Err(_) => {
                tracing::debug!("spdy: the client did not open its streams in time");
                return None;
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
                        tracing::debug!(?other, "spdy: unknown stream type");
                        tx.reset(id, super::spdy::REFUSED_STREAM).await;
                        continue;
                    }
                };
                *slot = Some(id);
            }
            other => early.push(other),
        }
    }
    Some((streams, early))
}

/// The client's SPDY events: those that arrived while the streams were being opened
/// (`early`), then the session's, until it ends.
pub(super) fn client_events<'a>(
    early: &'a mut Vec<super::spdy::Event>,
    events: &'a mut mpsc::Receiver<super::spdy::Event>,
) -> impl futures::Stream<Item = super::spdy::Event> + 'a {
    futures::stream::iter(early.drain(..))
        .chain(futures::stream::unfold(events, |events| async move {
            events.recv().await.map(|e| (e, events))
        }))
}

/// Parses the resize messages complete in `buf` (a stream of JSON objects), leaving the
/// rest.
pub(super) fn take_resizes(buf: &mut Vec<u8>) -> Vec<Vec<u8>> {
    let mut sizes = serde_json::Deserializer::from_slice(buf).into_iter::<serde_json::Value>();
    let mut found = Vec::new();
    let mut consumed = 0;
    while let Some(Ok(size)) = sizes.next() {
        consumed = sizes.byte_offset();
        found.push(size.to_string().into_bytes());
    }
    buf.drain(..consumed);
    found
}

/// Ends an SPDY exec or attach: the outcome on the error stream (v4: a `metav1.Status`;
/// older protocols: a message, only on failure), every output stream half-closed, the
/// connection closed.
pub(super) async fn finish_spdy(
    session: super::spdy::Session,
    streams: &SpdyStreams,
    outcome: Result<i32, String>,
    v4: bool,
) {
    let tx = session.sender();
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
    use super::spdy::Event;
    let v4 = protocol == super::websocket::V4;
    let resize = v4 || protocol == "v3.channel.k8s.io";
    let tx = session.sender();
    let wanted = (
        request.stdin,
        request.stdout,
        request.stderr,
        request.tty && resize,
    );
    let Some((streams, mut early)) = open_spdy_streams(&mut session, wanted).await else {
        return session.close().await;
    };
    let outcome = match start(containers, &request).await {
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
                let mut events = std::pin::pin!(client_events(&mut early, &mut session.events));
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
                            for size in take_resizes(&mut resize_buf) {
                                if let Some(t) = &terminal {
                                    t.resize(&size);
                                }
                            }
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
                Ok(status) => outcome(run.trace.as_ref(), status.code().unwrap_or(-1)),
                Err(e) => Err(format!("waiting for runc exec: {e}")),
            }
        }
    };
    drop(tx);
    finish_spdy(session, &streams, outcome, v4).await;
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
    fn a_process_that_never_started_is_told_from_exit_255() {
        let trace = StartTrace::new().expect("trace dir");
        std::fs::write(
            trace.log(),
            "{\"level\":\"warning\",\"msg\":\"w\"}\n\
             {\"level\":\"error\",\"msg\":\"exec failed: stat /x: no such file\"}\n",
        )
        .expect("log");
        assert_eq!(
            trace.outcome(255),
            Err("exec failed: stat /x: no such file".to_string())
        );
        assert_eq!(trace.outcome(3), Ok(3));
        std::fs::write(trace.pid_file(), "42").expect("pid");
        assert_eq!(trace.outcome(255), Ok(255));
        assert_eq!(outcome(None, 255), Ok(255));
    }

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
