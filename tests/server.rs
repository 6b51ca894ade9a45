//! `ferrokube server` and `ferrokube store` as a user runs them: on the embedded store in
//! a data dir and on a real etcd, with health endpoints, credentials, clean shutdown and
//! clear errors.

mod common;

use std::time::Duration;

use anyhow::{Context, Result};
use common::{Backend, Server, curl, ferrokube};
use ferrokube_testkit::{free_port, wait_for};

#[test]
fn server_on_embedded_store_reports_health_and_stops_cleanly() -> Result<()> {
    let server = Server::start(Backend::Embedded)?;
    assert_eq!(curl(&server.url("/healthz"))?, (200, "ok".to_string()));
    assert_eq!(curl(&server.url("/livez"))?, (200, "ok".to_string()));
    // Everything else needs credentials.
    let (code, body) = curl(&server.url("/api/v1/namespaces"))?;
    assert_eq!(code, 401);
    let status: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(
        (status["kind"].as_str(), status["reason"].as_str()),
        (Some("Status"), Some("Unauthorized"))
    );
    let dir = server.path().to_path_buf();
    assert!(dir.join("store.redb").exists());
    // `ferrokube kubeconfig` prints what the server wrote.
    let data_dir = dir.to_str().context("utf-8 path")?;
    let out = ferrokube(&["kubeconfig", "--data-dir", data_dir])?;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        std::fs::read_to_string(dir.join("admin.kubeconfig"))?
    );
    let ca_before = std::fs::read_to_string(dir.join("pki/ca.crt"))?;

    let mut server = server;
    assert!(
        server.terminate()?.success(),
        "the server did not exit cleanly"
    );
    let tempdir = server.into_dir().context("data dir")?;
    // The store was released: the CLI can open it now.
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
    // A second start reuses the credentials.
    let mut again = Server::start_with(tempdir, None, &[])?;
    assert_eq!(std::fs::read_to_string(dir.join("pki/ca.crt"))?, ca_before);
    assert!(again.ok(&["get", "ns", "default"])?.contains("default"));
    assert!(again.terminate()?.success());
    Ok(())
}

#[test]
fn server_on_etcd_reports_health_and_notices_etcd_going_away() -> Result<()> {
    let mut server = Server::start(Backend::Etcd)?;
    assert!(server.ok(&["get", "ns"])?.contains("kube-system"));
    // Nothing of the embedded store was created.
    assert!(!server.path().join("store.redb").exists());
    drop(server.etcd.take());
    wait_for(
        "/readyz to fail without etcd",
        Duration::from_secs(60),
        || {
            let (code, _) = curl(&server.url("/readyz"))?;
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
