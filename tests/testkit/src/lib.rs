//! Test harnesses shared by ferrokube's test suites and benchmarks: real etcd servers
//! on loopback (free ports, a temporary data dir, stopped and removed on drop), free
//! ports, deadline-bounded waiting, a minimal HTTP/1.0 GET for health checks, and lab
//! network namespaces ([`netns`]) removed on drop.
//!
//! [`netlab`] builds network namespaces, veths, cgroups and echo servers for dataplane tests.
//!
//! Nothing here is mocked: an [`Etcd`] is Debian's `etcd` binary. A missing binary is a
//! failure with the command that installs it, never a skip.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub mod netlab;
pub mod netns;

/// Where Debian's `etcd-server` installs the binary.
pub const ETCD_BIN: &str = "/usr/bin/etcd";

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding an ephemeral port")?;
    Ok(listener.local_addr()?.port())
}

/// Polls `check` until it returns `Ok(Some(value))` or the deadline passes; the last
/// error (or "still waiting") is in the failure message.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("condition not met");
    loop {
        match check() {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}: {last}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A plain HTTP/1.0 GET; returns the status code and body.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("not an HTTP response: {response:?}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// A real single-member etcd on loopback, removed (process and data) on drop.
#[derive(Debug)]
pub struct Etcd {
    child: Child,
    client_port: u16,
    dir: tempfile::TempDir,
}

impl Etcd {
    /// Starts etcd in a new temporary directory under `parent` (the system temp dir when
    /// `None`) and waits until it reports healthy.
    pub fn start_in(parent: Option<&Path>) -> Result<Self> {
        if !Path::new(ETCD_BIN).exists() {
            bail!(
                "{ETCD_BIN} is missing: the etcd tests need Debian's etcd-server \
                 (run `cargo xtask setup`)"
            );
        }
        // Ports can be taken between probing and etcd binding them: retry a few times.
        let mut last_error = None;
        for _ in 0..5 {
            let dir = match parent {
                Some(parent) => tempfile::Builder::new()
                    .prefix("etcd-")
                    .tempdir_in(parent)?,
                None => tempfile::Builder::new()
                    .prefix("ferrokube-etcd-")
                    .tempdir()?,
            };
            let (client_port, peer_port) = (free_port()?, free_port()?);
            if client_port == peer_port {
                continue;
            }
            let child = match Self::spawn(dir.path(), client_port, peer_port) {
                Ok(child) => child,
                Err(e) => {
                    last_error = Some(e);
                    continue;
                }
            };
            let mut etcd = Etcd {
                child,
                client_port,
                dir,
            };
            match etcd.wait_healthy() {
                Ok(()) => return Ok(etcd),
                Err(e) => {
                    let log = std::fs::read_to_string(etcd.dir.path().join("etcd.log"))
                        .unwrap_or_default();
                    let tail: String = log.lines().rev().take(5).collect::<Vec<_>>().join("\n");
                    last_error = Some(e.context(format!("etcd log tail:\n{tail}")));
                    // Dropping `etcd` kills it and removes its directory.
                }
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no free ports for etcd")))
    }

    /// Starts etcd in the system temp dir.
    pub fn start() -> Result<Self> {
        Self::start_in(None)
    }

    fn spawn(dir: &Path, client_port: u16, peer_port: u16) -> Result<Child> {
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let log = std::fs::File::create(dir.join("etcd.log"))?;
        Command::new(ETCD_BIN)
            .arg("--name=test")
            .arg(format!("--data-dir={}", dir.join("data").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .arg("--initial-cluster-state=new")
            // Kubernetes objects reach 1.5 MiB; leave room for the request around them.
            .arg("--max-request-bytes=10485760")
            .arg("--log-level=warn")
            .arg("--logger=zap")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {ETCD_BIN}"))
    }

    fn wait_healthy(&mut self) -> Result<()> {
        let addr: SocketAddr = ([127, 0, 0, 1], self.client_port).into();
        let child = &mut self.child;
        wait_for("etcd to become healthy", Duration::from_secs(20), || {
            if let Some(status) = child.try_wait()? {
                bail!("etcd exited early with {status}");
            }
            let (code, body) = http_get(addr, "/health")?;
            Ok((code == 200 && body.contains("true")).then_some(()))
        })
    }

    /// The client endpoint, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The `--datastore` form, `etcd://127.0.0.1:PORT`.
    pub fn datastore_url(&self) -> String {
        format!("etcd://127.0.0.1:{}", self.client_port)
    }

    /// The etcd data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The etcd process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(&mut self) {
        // Only our own child, by its handle.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}
