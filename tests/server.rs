//! `ferrokube server` and `ferrokube store` as a user runs them: on the embedded store in
//! a data dir and on a real etcd, with health endpoints, clean shutdown and clear errors.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use ferrokube_testkit::{Etcd, free_port, http_get, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_ferrokube");

/// A server child process, killed (by its own handle) if the test fails midway.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(data_dir: &Path, datastore: Option<&str>) -> Result<Self> {
        let port = free_port()?;
        let mut command = Command::new(BIN);
        command
            .arg("server")
            .arg("--data-dir")
            .arg(data_dir)
            .arg(format!("--port={port}"))
            .env("FERROKUBE_LOG", "warn")
            .stdin(Stdio::null());
        if let Some(datastore) = datastore {
            command.arg(format!("--datastore={datastore}"));
        }
        let child = command.spawn().context("starting ferrokube server")?;
        let mut server = Server {
            child,
            addr: ([127, 0, 0, 1], port).into(),
        };
        let addr = server.addr;
        let child = &mut server.child;
        wait_for(
            "the server to answer /healthz",
            Duration::from_secs(30),
            || {
                if let Some(status) = child.try_wait()? {
                    anyhow::bail!("server exited early: {status}");
                }
                Ok(http_get(addr, "/healthz")
                    .ok()
                    .filter(|(code, _)| *code == 200))
            },
        )?;
        Ok(server)
    }

    fn get(&self, path: &str) -> Result<(u16, String)> {
        http_get(self.addr, path)
    }

    /// SIGTERM, then wait for a clean exit.
    fn terminate(mut self) -> Result<std::process::ExitStatus> {
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

fn ferrokube(args: &[&str]) -> Result<Output> {
    Ok(Command::new(BIN)
        .args(args)
        .env("FERROKUBE_LOG", "warn")
        .output()?)
}

#[test]
fn server_on_embedded_store_reports_health_and_stops_cleanly() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), None)?;
    assert_eq!(server.get("/healthz")?, (200, "ok".to_string()));
    assert_eq!(server.get("/livez")?, (200, "ok".to_string()));
    let (code, body) = server.get("/readyz?verbose")?;
    assert_eq!(code, 200);
    assert!(body.contains("[+]store ok (embedded"), "{body}");
    assert!(dir.path().join("store.redb").exists());
    let status = server.terminate()?;
    assert!(status.success(), "server exited with {status}");

    // The store was released: the CLI can open it now, and a second server start works.
    let data_dir = dir.path().to_str().context("utf-8 path")?;
    let out = ferrokube(&[
        "store",
        "put",
        "--data-dir",
        data_dir,
        "/registry/x",
        "hello",
    ])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = ferrokube(&["store", "get", "--data-dir", data_dir, "/registry/x"])?;
    let got: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(got["value"], "hello");
    assert_eq!(got["version"], 1);
    let again = Server::start(dir.path(), None)?;
    assert!(again.terminate()?.success());
    Ok(())
}

#[test]
fn server_on_etcd_reports_health_and_notices_etcd_going_away() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let etcd = Etcd::start()?;
    let server = Server::start(dir.path(), Some(&etcd.datastore_url()))?;
    let (code, body) = server.get("/readyz?verbose")?;
    assert_eq!(code, 200);
    assert!(body.contains("[+]store ok (etcd"), "{body}");
    // Nothing of the embedded store was created.
    assert!(!dir.path().join("store.redb").exists());
    drop(etcd);
    wait_for(
        "/readyz to fail without etcd",
        Duration::from_secs(60),
        || {
            let (code, _) = server.get("/readyz")?;
            Ok((code == 503).then_some(()))
        },
    )?;
    Ok(())
}

#[test]
fn bad_datastore_is_a_clear_error() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().to_str().context("utf-8 path")?;
    let out = ferrokube(&[
        "server",
        "--data-dir",
        data_dir,
        "--datastore",
        "mysql://db:3306",
    ])?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unsupported datastore"), "{stderr}");

    // An etcd that is not there: refused with the endpoint named, not a hang.
    let port = free_port()?;
    let url = format!("etcd://127.0.0.1:{port}");
    let out = ferrokube(&[
        "store",
        "status",
        "--data-dir",
        data_dir,
        "--datastore",
        &url,
    ])?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
    Ok(())
}
