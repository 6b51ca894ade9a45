//! Terminals runc allocates: `runc create|exec --console-socket SOCK` makes the
//! container's pseudo-terminal inside the container and sends its master over the unix
//! socket SOCK (SCM_RIGHTS); whoever receives it talks to the container's terminal
//! directly (output as the process writes it, line discipline untouched, resizes set on
//! the master).
//!
//! Also the TTY exec helper (`ferrokube runtime-exec`, the runtime's binary re-executed
//! per TTY exec, see [`exec_helper`]). `runc exec --detach` leaves the exec process
//! nobody's child, so its exit code can only be had by a child subreaper above runc. That
//! is the helper, not the runtime daemon (a subreaper daemon would inherit every orphan
//! runc or CNI plugins leave, which tokio's child handling does not expect) and not the
//! per-container shim (it would need a control protocol for starting execs and reporting
//! their codes, and it runs plain threads without a way to be told about new work). The
//! helper is a short-lived child of the runtime: it becomes subreaper, runs
//! `runc exec --detach --tty --console-socket`, hands the master it receives to the runtime
//! over its stdout (a unix socket), reaps the exec process and exits with its code.

use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// Terminal failures.
#[derive(Debug, thiserror::Error)]
pub enum TtyError {
    /// A file, socket or process operation failed.
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    /// runc did not send the terminal.
    #[error("no terminal received: {0}")]
    NoTerminal(String),
    /// `runc exec` failed (runc's message).
    #[error("runc exec failed: {0}")]
    Exec(String),
}

/// The message of runc's logfmt error line (`time=.. level=error msg="..."`), or the text.
fn runc_message(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim();
    match text.split_once("msg=\"") {
        Some((_, rest)) => rest.strip_suffix('"').unwrap_or(rest).replace("\\\"", "\""),
        None => text.to_string(),
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TtyError {
    let what = what.into();
    move |e| TtyError::Io(what, e)
}

/// A listening console socket in a fresh private directory (removed on drop), short
/// enough for a socket address whatever the runtime's state root is.
#[derive(Debug)]
pub struct ConsoleSocket {
    dir: PathBuf,
    path: PathBuf,
    listener: UnixListener,
}

impl ConsoleSocket {
    /// Binds `<tmp>/ferrokube-console-XXXXXX/console.sock`.
    pub fn bind() -> Result<ConsoleSocket, TtyError> {
        use std::os::unix::fs::DirBuilderExt as _;
        let mut attempts = 0;
        let dir = loop {
            let dir = std::env::temp_dir()
                .join(format!("ferrokube-console-{:016x}", rand::random::<u64>()));
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => break dir,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempts < 8 => {
                    attempts += 1;
                }
                Err(e) => return Err(TtyError::Io(format!("creating {}", dir.display()), e)),
            }
        };
        let path = dir.join("console.sock");
        let listener = match UnixListener::bind(&path) {
            Ok(listener) => listener,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(TtyError::Io(format!("binding {}", path.display()), e));
            }
        };
        Ok(ConsoleSocket {
            dir,
            path,
            listener,
        })
    }

    /// The socket's path, for `--console-socket`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The terminal master runc sends, waiting at most `timeout` for its connection.
    pub fn receive(&self, timeout: Duration) -> Result<OwnedFd, TtyError> {
        self.listener
            .set_nonblocking(true)
            .map_err(io("console socket"))?;
        let deadline = Instant::now() + timeout;
        let conn = loop {
            match self.listener.accept() {
                Ok((conn, _)) => break conn,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        return Err(TtyError::NoTerminal(format!(
                            "runc did not connect to the console socket within {timeout:?}"
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(TtyError::Io("accepting on the console socket".into(), e)),
            }
        };
        conn.set_nonblocking(false).map_err(io("console socket"))?;
        conn.set_read_timeout(Some(timeout))
            .map_err(io("console socket"))?;
        recv_fd(&conn)?.ok_or_else(|| TtyError::NoTerminal("runc closed the console socket".into()))
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sends `fd` with one byte of data on a unix stream socket.
pub fn send_fd(socket: impl AsFd, fd: BorrowedFd<'_>) -> Result<(), TtyError> {
    let fds = [fd];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    control.push(SendAncillaryMessage::ScmRights(&fds));
    rustix::net::sendmsg(
        socket,
        &[IoSlice::new(b"t")],
        &mut control,
        SendFlags::NOSIGNAL,
    )
    .map_err(|e| TtyError::Io("sending the terminal".into(), e.into()))?;
    Ok(())
}

/// Receives one file descriptor from a unix stream socket; `None` at its end.
pub fn recv_fd(socket: impl AsFd) -> Result<Option<OwnedFd>, TtyError> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut buf = [0u8; 4096];
    loop {
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let received = rustix::net::recvmsg(
            &socket,
            &mut [IoSliceMut::new(&mut buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        );
        let received = match received {
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(TtyError::Io("receiving the terminal".into(), e.into())),
            Ok(r) => r,
        };
        let mut first = None;
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = message {
                for fd in fds {
                    if first.is_none() {
                        first = Some(fd);
                    }
                }
            }
        }
        if first.is_some() {
            return Ok(first);
        }
        if received.bytes == 0 {
            return Ok(None);
        }
    }
}

/// Sets a terminal's window size (on the master: the kernel signals SIGWINCH to the
/// terminal's foreground process group).
pub fn set_size(master: impl AsFd, cols: u16, rows: u16) {
    let winsize = rustix::termios::Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    if let Err(e) = rustix::termios::tcsetwinsize(master, winsize) {
        tracing::debug!(error = %e, "resizing a terminal");
    }
}

/// A resize message as upstream sends it (`{"Width":..,"Height":..}`).
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Size {
    /// Columns.
    pub width: u16,
    /// Rows.
    pub height: u16,
}

/// What the TTY exec helper runs.
#[derive(Debug, Clone)]
pub struct ExecHelperArgs {
    /// The runc binary.
    pub runc: PathBuf,
    /// runc's `--root`.
    pub runc_root: PathBuf,
    /// The container.
    pub id: String,
    /// The command.
    pub cmd: Vec<String>,
}

/// The TTY exec helper: stdout must be a unix stream socket, on which the terminal master
/// is sent once the process runs; then it reaps the process and returns its exit code
/// (128 + signal for a signal death). If nothing was sent, the exec failed: the reason is
/// on stderr and the returned code is 1.
pub fn exec_helper(args: &ExecHelperArgs) -> i32 {
    match run_exec(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

fn run_exec(args: &ExecHelperArgs) -> Result<i32, TtyError> {
    nix::sys::prctl::set_child_subreaper(true)
        .map_err(|e| TtyError::Io("PR_SET_CHILD_SUBREAPER".into(), e.into()))?;
    let console = ConsoleSocket::bind()?;
    let pid_file = console.dir.join("pid");
    let out = std::process::Command::new(&args.runc)
        .arg("--root")
        .arg(&args.runc_root)
        .arg("exec")
        .arg("--detach")
        .arg("--tty")
        .arg("--console-socket")
        .arg(console.path())
        .arg("--pid-file")
        .arg(&pid_file)
        .arg(&args.id)
        .args(&args.cmd)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()
        .map_err(io("running runc exec"))?;
    if !out.status.success() {
        return Err(TtyError::Exec(runc_message(&out.stderr)));
    }
    // runc has sent the master before exiting: it waits in the backlog.
    let master = console.receive(Duration::from_secs(10))?;
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .map_err(io(pid_file.display().to_string()))?
        .trim()
        .parse()
        .map_err(|_| TtyError::NoTerminal("runc wrote an unreadable pid file".into()))?;
    drop(console);
    send_fd(std::io::stdout(), master.as_fd())?;
    // Our copy must go: the runtime's closing the master hangs the terminal up. So must
    // the socket (stdout becomes /dev/null), for the runtime to see its end.
    drop(master);
    if let Ok(null) = std::fs::File::options().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(null);
    }
    loop {
        use nix::sys::wait::{WaitStatus, waitpid};
        match waitpid(nix::unistd::Pid::from_raw(pid), None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, signal, _)) => return Ok(128 + signal as i32),
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                return Err(TtyError::Io(
                    "waiting for the exec process".into(),
                    e.into(),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_runcs_error_message() {
        let line = br#"time="2026-11-27T07:59:00Z" level=error msg="exec failed: exec: \"/x\": stat /x: no such file or directory"
"#;
        assert_eq!(
            runc_message(line),
            r#"exec failed: exec: "/x": stat /x: no such file or directory"#
        );
        assert_eq!(runc_message(b"plain\n"), "plain");
    }

    #[test]
    fn passes_a_descriptor_over_a_socket() {
        let (a, b) = std::os::unix::net::UnixStream::pair().expect("pair");
        let (r, mut w) = std::io::pipe().expect("pipe");
        send_fd(&a, r.as_fd()).expect("send");
        drop(r);
        let got = recv_fd(&b).expect("recv").expect("an fd");
        std::io::Write::write_all(&mut w, b"x").expect("write");
        let mut byte = [0u8; 1];
        std::io::Read::read_exact(&mut std::fs::File::from(got), &mut byte).expect("read");
        assert_eq!(&byte, b"x");
        drop(a);
        assert!(recv_fd(&b).expect("recv").is_none());
    }
}
