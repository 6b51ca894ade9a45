//! The per-container monitor (`ferrokube runtime-shim`, the runtime's own binary
//! re-executed, in its own process group so a runtime restart leaves it running), like
//! conmon or containerd-shim: it becomes a child subreaper, runs `runc create` with the
//! container's stdout/stderr on pipes it holds (or, for a container with a terminal,
//! with `--console-socket`, and then holds the terminal's master, see [`crate::tty`]),
//! reports creation through `<dir>/created`, writes the CRI log (`<RFC3339Nano> <stream>
//! <F|P> <content>`, a terminal's output as `stdout` with its `\r\n` endings, as
//! containerd logs it; SIGUSR1 reopens the log, for ReopenContainerLog), relays the
//! output to Attach clients on `<dir>/attach.sock` and, for containers created with
//! stdin, feeds it what they send (into the terminal when there is one; their resizes
//! set the terminal's size), waits for the container's init and records its exit in
//! `<dir>/exit.json` (with OOM kills read from the memory cgroup).
//!
//! The attach socket protocol, both ways: frames of a type byte, a u32 big-endian length
//! and the bytes. Shim to client: 1 stdout, 2 stderr, relayed as read. Client to shim:
//! 0 stdin, 4 resize (`{"Width":..,"Height":..}`); the client half-closing its side is
//! the end of its stdin.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Shim failures (reported through `<dir>/created` or the shim's log).
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// A file or pipe operation failed.
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    /// `runc create` failed.
    #[error("runc create: {0}")]
    Create(String),
    /// A system call failed.
    #[error("{0}: {1}")]
    Sys(&'static str, nix::errno::Errno),
}

/// What the shim needs.
#[derive(Debug, Clone)]
pub struct ShimArgs {
    /// Container ID.
    pub id: String,
    /// The container's state directory (bundle, pid file, exit file).
    pub dir: PathBuf,
    /// The runc binary.
    pub runc: PathBuf,
    /// runc's `--root`.
    pub runc_root: PathBuf,
    /// The CRI log file.
    pub log_path: PathBuf,
    /// The container's cgroup (relative to each hierarchy), for OOM detection.
    pub cgroup: String,
    /// Give the container a stdin pipe, fed by attach clients.
    pub stdin: bool,
    /// Close that pipe when the first attach client that wrote to it leaves.
    pub stdin_once: bool,
    /// Give the container a terminal (its stdin, stdout and stderr).
    pub tty: bool,
}

/// How the container ended.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Exit {
    /// Exit code (128 + signal for a signal death, as shells report it).
    pub code: i32,
    /// Finish time, ns since the epoch.
    pub finished_at: i64,
    /// Whether the memory cgroup saw an OOM kill.
    pub oom_killed: bool,
}

/// RFC 3339 with nanoseconds, UTC, for log lines.
pub fn rfc3339_nanos(nanos: i64) -> String {
    let secs = nanos.div_euclid(1_000_000_000);
    let frac = nanos.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{frac:09}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Longest content of one log line; longer lines are split into `P` parts.
const MAX_LINE: usize = 16 * 1024;

/// Attach clients: connections to the shim's `attach.sock`.
type Attached = Arc<Mutex<Vec<std::os::unix::net::UnixStream>>>;

/// The socket name in the container directory, reached through `/proc/self/fd/<dir fd>/`
/// (state directories can be longer than a socket address allows).
pub const ATTACH_SOCKET: &str = "attach.sock";

/// Attach frame type: stdin data (client to shim).
pub const FRAME_STDIN: u8 = 0;
/// Attach frame type: stdout data (shim to client).
pub const FRAME_STDOUT: u8 = 1;
/// Attach frame type: stderr data (shim to client).
pub const FRAME_STDERR: u8 = 2;
/// Attach frame type: a resize (client to shim).
pub const FRAME_RESIZE: u8 = 4;

/// Encodes an attach frame.
pub fn attach_frame(kind: u8, data: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(data.len() + 5);
    frame.push(kind);
    frame.extend_from_slice(&u32::try_from(data.len()).unwrap_or(u32::MAX).to_be_bytes());
    frame.extend_from_slice(data);
    frame
}

/// Longest attach frame a client may send.
const MAX_FRAME: usize = 1024 * 1024;

/// Reads one attach frame; `None` at the end of the stream (or on garbage).
fn read_frame(reader: &mut impl Read) -> Option<(u8, Vec<u8>)> {
    let mut header = [0u8; 5];
    reader.read_exact(&mut header).ok()?;
    let len = usize::try_from(u32::from_be_bytes([
        header[1], header[2], header[3], header[4],
    ]))
    .ok()
    .filter(|&len| len <= MAX_FRAME)?;
    let mut data = vec![0u8; len];
    reader.read_exact(&mut data).ok()?;
    Some((header[0], data))
}

/// Sends output to every attach client.
fn broadcast(attached: &Attached, channel: u8, data: &[u8]) {
    let mut clients = attached.lock().unwrap_or_else(|p| p.into_inner());
    if clients.is_empty() {
        return;
    }
    let frame = attach_frame(channel, data);
    // A client that cannot keep up (1s write timeout) or went away is dropped.
    clients.retain_mut(|c| c.write_all(&frame).is_ok());
}

/// The container's stdin (when it has one: a pipe, or its terminal), shared by attach
/// clients.
type Stdin = Arc<Mutex<Option<Box<dyn Write + Send>>>>;

/// The container's terminal master, when it has one (for resizes).
type Master = Option<Arc<std::os::fd::OwnedFd>>;

/// Applies what an attach client sends: stdin into the container's stdin, resizes to its
/// terminal; with `stdin_once`, closes stdin when a client that sent some leaves.
fn feed_stdin(
    mut conn: std::os::unix::net::UnixStream,
    stdin: Stdin,
    stdin_once: bool,
    master: Master,
) {
    let mut wrote = false;
    while let Some((kind, data)) = read_frame(&mut conn) {
        match kind {
            FRAME_STDIN => {
                wrote = true;
                let mut guard = stdin.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(w) = guard.as_mut()
                    && (w.write_all(&data).is_err() || w.flush().is_err())
                {
                    *guard = None;
                }
            }
            FRAME_RESIZE => {
                if let (Some(master), Ok(size)) =
                    (&master, serde_json::from_slice::<crate::tty::Size>(&data))
                {
                    crate::tty::set_size(&**master, size.width, size.height);
                }
            }
            _ => {}
        }
    }
    if stdin_once && wrote {
        *stdin.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// Serves `attach.sock` in `dir` on a thread: accepted clients get the output from now on,
/// and what they send goes to the container's stdin.
fn serve_attach(
    dir: &Path,
    attached: Attached,
    stdin: Stdin,
    stdin_once: bool,
    master: Master,
) -> Result<(), ShimError> {
    use std::os::fd::AsRawFd as _;
    let dir_file =
        std::fs::File::open(dir).map_err(|e| ShimError::Io(dir.display().to_string(), e))?;
    let path = format!("/proc/self/fd/{}/{ATTACH_SOCKET}", dir_file.as_raw_fd());
    let _ = std::fs::remove_file(dir.join(ATTACH_SOCKET));
    let listener = std::os::unix::net::UnixListener::bind(&path)
        .map_err(|e| ShimError::Io(format!("binding {}", dir.join(ATTACH_SOCKET).display()), e))?;
    drop(dir_file);
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let _ = conn.set_write_timeout(Some(Duration::from_secs(1)));
            if let Ok(reader) = conn.try_clone() {
                let (stdin, master) = (stdin.clone(), master.clone());
                std::thread::spawn(move || feed_stdin(reader, stdin, stdin_once, master));
            }
            attached
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(conn);
        }
    });
    Ok(())
}

/// Copies a stream into the CRI log (a line, or 16 KiB of one, per entry) and to attach
/// clients (as read, so a terminal's prompt shows before its line ends).
fn pump(
    stream: &'static str,
    mut source: impl Read,
    log: Arc<Mutex<std::fs::File>>,
    attached: Attached,
) {
    let channel = if stream == "stdout" {
        FRAME_STDOUT
    } else {
        FRAME_STDERR
    };
    let write = |tag: &str, content: &[u8]| {
        let mut entry = format!(
            "{} {stream} {tag} ",
            rfc3339_nanos(crate::sandbox::now_nanos())
        )
        .into_bytes();
        entry.extend_from_slice(content);
        entry.push(b'\n');
        let mut file = log.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = file.write_all(&entry) {
            tracing::warn!("writing the container log: {e}");
        }
    };
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; MAX_LINE];
    loop {
        // A terminal's master reports EIO once the last slave closes: its end too.
        let n = match source.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        broadcast(&attached, channel, &buf[..n]);
        pending.extend_from_slice(&buf[..n]);
        // Lines end at `\n` within MAX_LINE bytes; longer ones are cut into `P` parts.
        let mut start = 0;
        loop {
            let rest = &pending[start..];
            let window = &rest[..rest.len().min(MAX_LINE)];
            if let Some(pos) = window.iter().position(|&b| b == b'\n') {
                write("F", &window[..pos]);
                start += pos + 1;
            } else if window.len() == MAX_LINE {
                write("P", window);
                start += MAX_LINE;
            } else {
                break;
            }
        }
        pending.drain(..start);
    }
    // An unterminated last line is full, as containerd writes it.
    if !pending.is_empty() {
        write("F", &pending);
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ShimError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| ShimError::Io(tmp.display().to_string(), e))?;
    std::fs::rename(&tmp, path).map_err(|e| ShimError::Io(path.display().to_string(), e))
}

fn oom_killed(cgroup: &str) -> bool {
    let path = Path::new("/sys/fs/cgroup/memory")
        .join(cgroup.trim_start_matches('/'))
        .join("memory.oom_control");
    std::fs::read_to_string(path)
        .map(|text| {
            text.lines().any(|l| {
                l.strip_prefix("oom_kill ")
                    .and_then(|n| n.trim().parse::<u64>().ok())
                    .is_some_and(|n| n > 0)
            })
        })
        .unwrap_or(false)
}

/// Runs the shim; the exit status of the process.
pub fn run(args: &ShimArgs) -> i32 {
    let created = args.dir.join("created");
    match monitor(args, &created) {
        Ok(()) => 0,
        Err(e) => {
            // If creation never got reported, report this failure.
            if !created.exists() {
                let _ = write_atomic(&created, format!("error: {e}").as_bytes());
            }
            eprintln!("runtime-shim {}: {e}", args.id);
            1
        }
    }
}

fn monitor(args: &ShimArgs, created: &Path) -> Result<(), ShimError> {
    nix::sys::prctl::set_child_subreaper(true)
        .map_err(|e| ShimError::Sys("PR_SET_CHILD_SUBREAPER", e))?;
    write_atomic(
        &args.dir.join("shim.pid"),
        std::process::id().to_string().as_bytes(),
    )?;
    if let Some(parent) = args.log_path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| ShimError::Io(parent.display().to_string(), e))?;
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.log_path)
        .map_err(|e| ShimError::Io(args.log_path.display().to_string(), e))?;
    let log = Arc::new(Mutex::new(log));
    let pid_file = args.dir.join("pid");
    let create_log = args.dir.join("runc-create.log");
    let mut create = Command::new(&args.runc);
    create
        .arg("--root")
        .arg(&args.runc_root)
        .arg("--log")
        .arg(&create_log)
        .arg("create")
        .arg("--bundle")
        .arg(args.dir.join("bundle"))
        .arg("--pid-file")
        .arg(&pid_file);
    // The container's output streams, its stdin and its terminal.
    let outputs: Vec<(&'static str, Box<dyn Read + Send>)>;
    let stdin_w: Option<Box<dyn Write + Send>>;
    let mut master: Master = None;
    let console = if args.tty {
        let console =
            crate::tty::ConsoleSocket::bind().map_err(|e| ShimError::Create(e.to_string()))?;
        create
            .arg("--console-socket")
            .arg(console.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        Some(console)
    } else {
        None
    };
    let mut pipes = None;
    if console.is_none() {
        let (out_r, out_w) = std::io::pipe().map_err(|e| ShimError::Io("pipe".into(), e))?;
        let (err_r, err_w) = std::io::pipe().map_err(|e| ShimError::Io("pipe".into(), e))?;
        let (stdin_r, stdin_w) = if args.stdin {
            let (r, w) = std::io::pipe().map_err(|e| ShimError::Io("pipe".into(), e))?;
            (Stdio::from(r), Some(w))
        } else {
            (Stdio::null(), None)
        };
        create.stdin(stdin_r).stdout(out_w).stderr(err_w);
        pipes = Some((out_r, err_r, stdin_w));
    }
    let status = create
        .arg(&args.id)
        .status()
        .map_err(|e| ShimError::Io("running runc create".into(), e))?;
    // runc's copies of the pipes must close for the container's end to be seen.
    drop(create);
    if !status.success() {
        let log = std::fs::read_to_string(&create_log).unwrap_or_default();
        return Err(ShimError::Create(log.trim().to_string()));
    }
    match (console, pipes) {
        (Some(console), _) => {
            // runc has sent the terminal's master before exiting.
            let fd = console
                .receive(Duration::from_secs(10))
                .map_err(|e| ShimError::Create(e.to_string()))?;
            drop(console);
            let dup = |fd: &std::os::fd::OwnedFd| {
                fd.try_clone()
                    .map(std::fs::File::from)
                    .map_err(|e| ShimError::Io("dup of the terminal".into(), e))
            };
            outputs = vec![("stdout", Box::new(dup(&fd)?))];
            stdin_w = if args.stdin {
                Some(Box::new(dup(&fd)?))
            } else {
                None
            };
            master = Some(Arc::new(fd));
        }
        (None, Some((out_r, err_r, w))) => {
            outputs = vec![("stdout", Box::new(out_r)), ("stderr", Box::new(err_r))];
            stdin_w = w.map(|w| Box::new(w) as Box<dyn Write + Send>);
        }
        (None, None) => return Err(ShimError::Create("no stdio for the container".into())),
    }
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .map_err(|e| ShimError::Io(pid_file.display().to_string(), e))?
        .trim()
        .parse()
        .map_err(|_| ShimError::Create("unreadable pid file".into()))?;
    // SIGUSR1 = ReopenContainerLog. Blocked only now, after `runc create` (a blocked
    // mask is inherited across exec), and before any other thread exists, so the
    // waiting thread is the only one it can reach.
    let mut usr1 = nix::sys::signal::SigSet::empty();
    usr1.add(nix::sys::signal::Signal::SIGUSR1);
    usr1.thread_block()
        .map_err(|e| ShimError::Sys("blocking SIGUSR1", e))?;
    {
        let log = log.clone();
        let path = args.log_path.clone();
        std::thread::spawn(move || {
            while usr1.wait().is_ok() {
                match std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                {
                    Ok(file) => *log.lock().unwrap_or_else(|p| p.into_inner()) = file,
                    Err(e) => eprintln!("reopening {}: {e}", path.display()),
                }
            }
        });
    }
    let attached: Attached = Arc::default();
    let stdin: Stdin = Arc::new(Mutex::new(stdin_w));
    serve_attach(
        &args.dir,
        attached.clone(),
        stdin.clone(),
        args.stdin_once,
        master.clone(),
    )?;
    let pumps: Vec<_> = outputs
        .into_iter()
        .map(|(stream, source)| {
            let (log, attached) = (log.clone(), attached.clone());
            std::thread::spawn(move || pump(stream, source, log, attached))
        })
        .collect();
    write_atomic(created, b"ok")?;
    // The container's init is our child now (runc exited, we are the subreaper).
    let code = loop {
        use nix::sys::wait::{WaitStatus, waitpid};
        match waitpid(nix::unistd::Pid::from_raw(pid), None) {
            Ok(WaitStatus::Exited(_, code)) => break code,
            Ok(WaitStatus::Signaled(_, signal, _)) => break 128 + signal as i32,
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(ShimError::Sys("waitpid", e)),
        }
    };
    let finished_at = crate::sandbox::now_nanos();
    // Let the pumps drain what the container wrote last (bounded: a leftover process
    // may still hold the pipes).
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while !pumps.iter().all(|p| p.is_finished()) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    // Attach clients see the end of the stream.
    let _ = std::fs::remove_file(args.dir.join(ATTACH_SOCKET));
    attached.lock().unwrap_or_else(|p| p.into_inner()).clear();
    let exit = Exit {
        code,
        finished_at,
        oom_killed: oom_killed(&args.cgroup),
    };
    let bytes = serde_json::to_vec(&exit).map_err(|e| ShimError::Io("exit".into(), e.into()))?;
    write_atomic(&args.dir.join("exit.json"), &bytes)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339_nanos() {
        assert_eq!(rfc3339_nanos(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            rfc3339_nanos(1_700_000_000_123_456_789),
            "2023-11-14T22:13:20.123456789Z"
        );
        assert_eq!(
            rfc3339_nanos(951_782_400_000_000_001),
            "2000-02-29T00:00:00.000000001Z"
        );
    }

    #[test]
    fn logs_full_and_partial_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        let file = std::fs::File::create(&path).expect("create");
        let long = "x".repeat(MAX_LINE + 10);
        let input = format!("hello\n{long}\nlast");
        pump(
            "stdout",
            input.as_bytes(),
            Arc::new(Mutex::new(file)),
            Arc::default(),
        );
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<Vec<&str>> = text.lines().map(|l| l.splitn(4, ' ').collect()).collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert_eq!(lines[0][1..], ["stdout", "F", "hello"]);
        assert_eq!(lines[1][2], "P");
        assert_eq!(lines[1][3].len(), MAX_LINE);
        assert_eq!(lines[2][2..], ["F", "xxxxxxxxxx"]);
        assert_eq!(lines[3][2..], ["F", "last"]);
    }
}
