//! The per-container monitor (`ferrokube runtime-shim`, the runtime's own binary
//! re-executed, in its own process group so a runtime restart leaves it running), like
//! conmon or containerd-shim: it becomes a child subreaper, runs `runc create` with the
//! container's stdout/stderr on pipes it holds, reports creation through
//! `<dir>/created`, writes the CRI log (`<RFC3339Nano> <stream> <F|P> <content>`;
//! SIGUSR1 reopens it, for ReopenContainerLog), relays the output to Attach clients on
//! `<dir>/attach.sock` and, for containers created with stdin, feeds it what they send,
//! waits
//! for the container's init and records its exit in `<dir>/exit.json` (with OOM kills
//! read from the memory cgroup).

use std::io::{BufRead, BufReader, Read, Write};
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

/// Attach frames: stream byte (1 stdout, 2 stderr), u32 big-endian length, the bytes.
/// Output is relayed a line (or 16 KiB) at a time, as it is logged.
fn broadcast(attached: &Attached, channel: u8, data: &[u8]) {
    let mut clients = attached.lock().unwrap_or_else(|p| p.into_inner());
    if clients.is_empty() {
        return;
    }
    let mut frame = Vec::with_capacity(data.len() + 5);
    frame.push(channel);
    frame.extend_from_slice(&u32::try_from(data.len()).unwrap_or(u32::MAX).to_be_bytes());
    frame.extend_from_slice(data);
    // A client that cannot keep up (1s write timeout) or went away is dropped.
    clients.retain_mut(|c| c.write_all(&frame).is_ok());
}

/// The container's stdin (when it has one), shared by attach clients.
type Stdin = Arc<Mutex<Option<std::io::PipeWriter>>>;

/// Copies what an attach client sends into the container's stdin; with `stdin_once`,
/// closes it when that client leaves.
fn feed_stdin(mut conn: std::os::unix::net::UnixStream, stdin: Stdin, stdin_once: bool) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let mut guard = stdin.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(w) = guard.as_mut()
                    && w.write_all(&buf[..n]).is_err()
                {
                    *guard = None;
                }
            }
        }
    }
    if stdin_once {
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
                let stdin = stdin.clone();
                std::thread::spawn(move || feed_stdin(reader, stdin, stdin_once));
            }
            attached
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(conn);
        }
    });
    Ok(())
}

/// Copies a stream into the CRI log and to attach clients.
fn pump(
    stream: &'static str,
    source: impl Read,
    log: Arc<Mutex<std::fs::File>>,
    attached: Attached,
) {
    let channel = if stream == "stdout" { 1 } else { 2 };
    let mut reader = BufReader::with_capacity(MAX_LINE, source);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = match (&mut reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // A line cut at MAX_LINE is partial; an unterminated last line at EOF is full,
        // as containerd writes it.
        broadcast(&attached, channel, &line[..n]);
        let (tag, content) = if line.ends_with(b"\n") {
            ("F", &line[..n - 1])
        } else if n == MAX_LINE {
            ("P", &line[..n])
        } else {
            ("F", &line[..n])
        };
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
    let (out_r, out_w) = std::io::pipe().map_err(|e| ShimError::Io("pipe".into(), e))?;
    let (err_r, err_w) = std::io::pipe().map_err(|e| ShimError::Io("pipe".into(), e))?;
    let (stdin_r, stdin_w) = if args.stdin {
        let (r, w) = std::io::pipe().map_err(|e| ShimError::Io("pipe".into(), e))?;
        (Stdio::from(r), Some(w))
    } else {
        (Stdio::null(), None)
    };
    let pid_file = args.dir.join("pid");
    let create_log = args.dir.join("runc-create.log");
    let status = Command::new(&args.runc)
        .arg("--root")
        .arg(&args.runc_root)
        .arg("--log")
        .arg(&create_log)
        .arg("create")
        .arg("--bundle")
        .arg(args.dir.join("bundle"))
        .arg("--pid-file")
        .arg(&pid_file)
        .arg(&args.id)
        .stdin(stdin_r)
        .stdout(out_w)
        .stderr(err_w)
        .status()
        .map_err(|e| ShimError::Io("running runc create".into(), e))?;
    if !status.success() {
        let log = std::fs::read_to_string(&create_log).unwrap_or_default();
        return Err(ShimError::Create(log.trim().to_string()));
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
    serve_attach(&args.dir, attached.clone(), stdin.clone(), args.stdin_once)?;
    let out = {
        let (log, attached) = (log.clone(), attached.clone());
        std::thread::spawn(move || pump("stdout", out_r, log, attached))
    };
    let err = {
        let (log, attached) = (log.clone(), attached.clone());
        std::thread::spawn(move || pump("stderr", err_r, log, attached))
    };
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
    while !(out.is_finished() && err.is_finished()) && std::time::Instant::now() < deadline {
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
