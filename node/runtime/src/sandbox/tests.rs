use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};

use super::*;

#[derive(Debug, Default)]
struct FakeHost {
    cgroups: Mutex<BTreeSet<String>>,
}

impl Host for FakeHost {
    fn create_namespaces(&self, dir: &Path, _hostname: &str, _host: bool) -> Result<(), HostError> {
        for ns in crate::host::NAMESPACES {
            std::fs::write(dir.join(ns), b"").map_err(|e| HostError::Io(ns.into(), e))?;
        }
        Ok(())
    }
    fn remove_namespaces(&self, dir: &Path) -> Result<(), HostError> {
        for ns in crate::host::NAMESPACES {
            let _ = std::fs::remove_file(dir.join(ns));
        }
        Ok(())
    }
    fn create_cgroup(&self, path: &str) -> Result<bool, HostError> {
        Ok(self.cgroups.lock().expect("lock").insert(path.into()))
    }
    fn remove_cgroup(&self, path: &str) -> Result<(), HostError> {
        self.cgroups.lock().expect("lock").remove(path);
        Ok(())
    }
}

#[derive(Debug, Default)]
struct FakeNetwork {
    fail_add: AtomicBool,
    attached: Mutex<BTreeSet<String>>,
}

impl Network for FakeNetwork {
    fn add(&self, a: &Attachment) -> Result<Value, CniError> {
        // Allocates before failing, like a plugin that dies midway.
        self.attached
            .lock()
            .expect("lock")
            .insert(a.container_id.clone());
        if self.fail_add.load(Ordering::SeqCst) {
            return Err(CniError::Plugin {
                plugin: "fake".into(),
                command: "ADD",
                code: 11,
                msg: "no".into(),
            });
        }
        Ok(serde_json::json!({"ips": [{"address": "10.1.0.5/24"}]}))
    }
    fn del(&self, a: &Attachment, _prev: Option<&Value>) -> Result<(), CniError> {
        self.attached.lock().expect("lock").remove(&a.container_id);
        Ok(())
    }
    fn ready(&self) -> Result<(), CniError> {
        Ok(())
    }
}

fn spec(name: &str) -> Spec {
    Spec {
        metadata: Metadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        },
        ..Default::default()
    }
}

fn setup() -> (
    tempfile::TempDir,
    Arc<FakeHost>,
    Arc<FakeNetwork>,
    Sandboxes,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let host = Arc::new(FakeHost::default());
    let net = Arc::new(FakeNetwork::default());
    let sandboxes = Sandboxes::open(dir.path(), "fk", host.clone(), net.clone()).expect("open");
    (dir, host, net, sandboxes)
}

#[test]
fn lifecycle_and_recovery() {
    let (dir, host, net, sandboxes) = setup();
    let sandbox = sandboxes.run(spec("a")).expect("run");
    assert_eq!(sandbox.ips, vec!["10.1.0.5"]);
    assert_eq!(sandbox.hostname, "a");
    assert_eq!(sandbox.cgroup, format!("/fk/pod-{}", sandbox.id));
    assert_eq!(
        sandboxes.get(&sandbox.id[..10]).expect("prefix").id,
        sandbox.id
    );
    // State survives a restart.
    let reopened = Sandboxes::open(dir.path(), "fk", host.clone(), net.clone()).expect("reopen");
    assert_eq!(reopened.list().len(), 1);
    assert!(matches!(
        reopened.run(spec("a")),
        Err(SandboxError::NameReserved(..))
    ));
    reopened.stop(&sandbox.id).expect("stop");
    reopened.stop(&sandbox.id).expect("stop again");
    assert_eq!(
        reopened.get(&sandbox.id).expect("get").state,
        State::NotReady
    );
    assert!(net.attached.lock().expect("lock").is_empty());
    reopened.remove(&sandbox.id).expect("remove");
    reopened.remove(&sandbox.id).expect("remove again");
    assert!(matches!(
        reopened.get(&sandbox.id),
        Err(SandboxError::NotFound(_))
    ));
    assert!(host.cgroups.lock().expect("lock").is_empty());
    // The name is free again.
    reopened.run(spec("a")).expect("run after remove");
}

#[test]
fn failed_run_leaves_nothing() {
    let (dir, host, net, sandboxes) = setup();
    net.fail_add.store(true, Ordering::SeqCst);
    assert!(matches!(
        sandboxes.run(spec("b")),
        Err(SandboxError::Cni(_))
    ));
    assert!(sandboxes.list().is_empty());
    assert!(
        net.attached.lock().expect("lock").is_empty(),
        "no DEL after failed ADD"
    );
    assert!(host.cgroups.lock().expect("lock").is_empty());
    assert_eq!(
        std::fs::read_dir(dir.path().join("sandboxes"))
            .expect("dir")
            .count(),
        0
    );
    net.fail_add.store(false, Ordering::SeqCst);
    sandboxes.run(spec("b")).expect("name released");
    assert!(matches!(
        sandboxes.run(Spec::default()),
        Err(SandboxError::Invalid(_))
    ));
}
