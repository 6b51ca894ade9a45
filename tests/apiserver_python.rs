//! The apiserver judged by the Python `kubernetes` client (installed by
//! `cargo xtask setup` in `.tools/venv`): CRUD, selectors, pagination, watch from and
//! restart at a version, concurrent watch order, 409 on stale updates, 410 on expired
//! watches, strict field validation, ConfigMap/Secret lifecycle, status subresources and
//! namespace deletion — on the embedded store and on a real etcd.

mod common;

use std::path::Path;
use std::process::Command;

use anyhow::{Result, bail};
use common::Server;
use ferrokube_testkit::Etcd;

fn run_suite(etcd: Option<Etcd>) -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".tools/venv/bin/python");
    if !python.exists() {
        bail!("{} is missing: run `cargo xtask setup`", python.display());
    }
    // Compacting every second lets the suite see a 410 for an old resourceVersion.
    let server = Server::start_with(tempfile::tempdir()?, etcd, &["--compaction-interval=1s"])?;
    let out = Command::new(python)
        .arg(root.join("tests/python/client_conformance.py"))
        .arg(server.kubeconfig())
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("the Python client suite failed:\n{stdout}");
    }
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
    Ok(())
}

#[test]
fn python_client_on_embedded_store() -> Result<()> {
    run_suite(None)
}

#[test]
fn python_client_on_etcd() -> Result<()> {
    run_suite(Some(Etcd::start()?))
}
