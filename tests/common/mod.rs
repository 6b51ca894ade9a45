//! Helpers for the tests that drive the `ferrokube` binary: a server child process on a
//! temporary data dir (embedded store or a real etcd), HTTPS checks with curl, and the
//! real kubectl installed by `cargo xtask setup`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ferrokube_testkit::{Etcd, free_port, wait_for};

pub const BIN: &str = env!("CARGO_BIN_EXE_ferrokube");

/// Which store a test server runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Embedded,
    Etcd,
}

/// A `ferrokube server` child, killed (by its own handle) when dropped.
pub struct Server {
    child: Child,
    pub port: u16,
    dir: Option<tempfile::TempDir>,
    pub etcd: Option<Etcd>,
}

impl Server {
    pub fn start(backend: Backend) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let etcd = match backend {
            Backend::Embedded => None,
            Backend::Etcd => Some(Etcd::start()?),
        };
        Self::start_with(dir, etcd, &[])
    }

    pub fn start_with(dir: tempfile::TempDir, etcd: Option<Etcd>, extra: &[&str]) -> Result<Self> {
        let port = free_port()?;
        let mut command = Command::new(BIN);
        command
            .arg("server")
            .arg("--data-dir")
            .arg(dir.path())
            .arg(format!("--port={port}"))
            .args(extra)
            .env("FERROKUBE_LOG", "warn")
            .stdin(Stdio::null());
        if let Some(etcd) = &etcd {
            command.arg(format!("--datastore={}", etcd.datastore_url()));
        }
        let child = command.spawn().context("starting ferrokube server")?;
        let mut server = Server {
            child,
            port,
            dir: Some(dir),
            etcd,
        };
        let url = server.url("/readyz");
        let child = &mut server.child;
        wait_for(
            "the server to answer /readyz",
            Duration::from_secs(60),
            || {
                if let Some(status) = child.try_wait()? {
                    bail!("server exited early: {status}");
                }
                Ok(curl(&url).ok().filter(|(code, _)| *code == 200).map(|_| ()))
            },
        )?;
        Ok(server)
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    /// The data directory.
    pub fn path(&self) -> &Path {
        self.dir
            .as_ref()
            .map(|d| d.path())
            .unwrap_or(Path::new("/nonexistent"))
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.path().join("admin.kubeconfig")
    }

    /// Takes the data directory (to restart on it after `terminate`).
    pub fn into_dir(mut self) -> Option<tempfile::TempDir> {
        self.dir.take()
    }

    /// Runs the real kubectl against this server.
    pub fn kubectl(&self, args: &[&str]) -> Result<Output> {
        self.kubectl_stdin(args, None)
    }

    pub fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> Result<Output> {
        use std::io::Write;
        let mut child = Command::new(kubectl_path()?)
            .args(args)
            .env("KUBECONFIG", self.kubeconfig())
            .env("HOME", self.path())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes())?;
        }
        Ok(child.wait_with_output()?)
    }

    /// kubectl that must succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.kubectl(args)?;
        if !out.status.success() {
            bail!(
                "kubectl {args:?} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// kubectl that must fail; returns stderr.
    pub fn fails(&self, args: &[&str]) -> Result<String> {
        let out = self.kubectl(args)?;
        if out.status.success() {
            bail!(
                "kubectl {args:?} unexpectedly succeeded: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status()?;
        anyhow::ensure!(sent.success(), "kill -TERM {pid} failed");
        let child = &mut self.child;
        wait_for("the server to exit", Duration::from_secs(20), || {
            Ok(child.try_wait()?)
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The kubectl `cargo xtask setup` installs.
pub fn kubectl_path() -> Result<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/bin/kubectl");
    if !path.exists() {
        bail!("{} is missing: run `cargo xtask setup`", path.display());
    }
    Ok(path)
}

/// GET over HTTPS without credentials (curl, not verifying the cluster CA).
pub fn curl(url: &str) -> Result<(u16, String)> {
    let out = Command::new("curl")
        .args(["-sk", "--max-time", "5", "-w", "\n%{http_code}", url])
        .output()
        .context("running curl")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').context("no status from curl")?;
    Ok((code.trim().parse().unwrap_or(0), body.to_string()))
}

pub fn ferrokube(args: &[&str]) -> Result<Output> {
    Ok(Command::new(BIN)
        .args(args)
        .env("FERROKUBE_LOG", "warn")
        .output()?)
}
