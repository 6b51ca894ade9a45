//! Pod sandboxes without a pause process: a sandbox is a set of namespaces pinned by bind
//! mounts under `<root>/sandboxes/<id>/` (network, networked by CNI; IPC; UTS with the
//! pod hostname), a pod-level cgroup, and `sandbox.json`. Containers join those
//! namespaces by path. Nothing needs to run to keep them alive, so there is no infra
//! process to start, monitor or recover (CRI-O's `drop_infra_ctr` does the same); the
//! cost is no shared PID namespace for the pod (NamespaceMode POD for PID is refused).
//!
//! Every step of RunPodSandbox is undone when a later one fails, so a failed call leaves
//! nothing (no netns, no CNI allocation, no cgroup, no directory, no reserved name).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cni::{Attachment, CniError, Network, result_ips};
use crate::host::{Host, HostError};

/// Sandbox failures.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// No sandbox has this ID.
    #[error("sandbox {0:?} not found")]
    NotFound(String),
    /// The request is missing something or asks for what is not supported.
    #[error("invalid sandbox config: {0}")]
    Invalid(String),
    /// Another sandbox holds this name (metadata name, namespace, uid, attempt).
    #[error("sandbox name {0:?} is reserved by sandbox {1}")]
    NameReserved(String, String),
    /// A namespace or cgroup operation failed.
    #[error(transparent)]
    Host(#[from] HostError),
    /// The CNI plugin failed.
    #[error(transparent)]
    Cni(#[from] CniError),
    /// Reading or writing the sandbox's state failed.
    #[error("sandbox state {0}: {1}")]
    State(String, String),
}

/// Pod identity as the kubelet gives it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Metadata {
    /// Pod name.
    pub name: String,
    /// Pod UID.
    pub uid: String,
    /// Pod namespace.
    pub namespace: String,
    /// Attempt number.
    pub attempt: u32,
}

/// A sandbox's lifecycle state.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum State {
    /// Namespaces exist and the network is attached.
    Ready,
    /// Stopped: network detached, namespaces gone.
    NotReady,
}

/// What RunPodSandbox needs, decoded from the CRI config.
#[derive(Debug, Clone, Default)]
pub struct Spec {
    /// Identity.
    pub metadata: Metadata,
    /// Hostname for the UTS namespace.
    pub hostname: String,
    /// Where container logs go (`log_directory`).
    pub log_directory: String,
    /// Labels.
    pub labels: HashMap<String, String>,
    /// Annotations.
    pub annotations: HashMap<String, String>,
    /// Cgroup parent the kubelet asks for (empty: `<cgroup root>/pod-<id>`).
    pub cgroup_parent: String,
    /// Host network (no netns, no CNI).
    pub host_network: bool,
    /// DNS servers, searches, options for resolv.conf.
    pub dns: Option<(Vec<String>, Vec<String>, Vec<String>)>,
    /// Runtime handler.
    pub runtime_handler: String,
}

/// One sandbox, as kept in `sandbox.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sandbox {
    /// 64 hex digits.
    pub id: String,
    /// Identity.
    pub metadata: Metadata,
    /// Hostname.
    pub hostname: String,
    /// Container log directory.
    pub log_directory: String,
    /// Labels.
    pub labels: HashMap<String, String>,
    /// Annotations.
    pub annotations: HashMap<String, String>,
    /// Runtime handler.
    pub runtime_handler: String,
    /// Creation time, ns since the epoch.
    pub created_at: i64,
    /// Lifecycle state.
    pub state: State,
    /// Host network.
    pub host_network: bool,
    /// Directory holding the namespace files.
    pub dir: PathBuf,
    /// Pod IPs from CNI, first is the primary.
    pub ips: Vec<String>,
    /// The CNI ADD result (for DEL).
    pub cni_result: Option<Value>,
    /// Pod cgroup path (relative to each hierarchy).
    pub cgroup: String,
    /// Whether we created the cgroup (and so remove it).
    pub cgroup_created: bool,
    /// DNS servers, searches, options.
    pub dns: Option<(Vec<String>, Vec<String>, Vec<String>)>,
}

impl Sandbox {
    /// The reserved-name key.
    pub fn name_key(metadata: &Metadata) -> String {
        format!(
            "{}_{}_{}_{}",
            metadata.name, metadata.namespace, metadata.uid, metadata.attempt
        )
    }

    /// Path of a namespace file (`net`, `ipc`, `uts`); `None` for the host network.
    pub fn namespace_path(&self, ns: &str) -> Option<PathBuf> {
        if ns == "net" && self.host_network {
            return None;
        }
        Some(self.dir.join(ns))
    }

    fn attachment(&self) -> Attachment {
        Attachment {
            container_id: self.id.clone(),
            netns: self.dir.join("net"),
            ifname: "eth0".into(),
            args: vec![
                ("IgnoreUnknown".into(), "1".into()),
                ("K8S_POD_NAMESPACE".into(), self.metadata.namespace.clone()),
                ("K8S_POD_NAME".into(), self.metadata.name.clone()),
                ("K8S_POD_INFRA_CONTAINER_ID".into(), self.id.clone()),
                ("K8S_POD_UID".into(), self.metadata.uid.clone()),
            ],
        }
    }
}

/// All sandboxes, kept in memory and on disk.
#[derive(Debug)]
pub struct Sandboxes {
    dir: PathBuf,
    cgroup_root: String,
    host: Arc<dyn Host>,
    network: Arc<dyn Network>,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    sandboxes: BTreeMap<String, Sandbox>,
    /// name key -> sandbox ID (also for sandboxes still being created).
    names: HashMap<String, String>,
}

/// 64 random hex digits.
pub fn new_id() -> Result<String, std::io::Error> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Nanoseconds since the epoch.
pub fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn state_err(path: &Path, e: impl std::fmt::Display) -> SandboxError {
    SandboxError::State(path.display().to_string(), e.to_string())
}

impl Sandboxes {
    /// Loads the sandboxes under `root/sandboxes`.
    pub fn open(
        root: &Path,
        cgroup_root: &str,
        host: Arc<dyn Host>,
        network: Arc<dyn Network>,
    ) -> Result<Sandboxes, SandboxError> {
        let dir = root.join("sandboxes");
        std::fs::create_dir_all(&dir).map_err(|e| state_err(&dir, e))?;
        let mut inner = Inner::default();
        for entry in std::fs::read_dir(&dir).map_err(|e| state_err(&dir, e))? {
            let path = entry
                .map_err(|e| state_err(&dir, e))?
                .path()
                .join("sandbox.json");
            let Ok(bytes) = std::fs::read(&path) else {
                // A directory without state: a creation that died midway.
                tracing::warn!(path = %path.display(), "sandbox directory without state");
                continue;
            };
            match serde_json::from_slice::<Sandbox>(&bytes) {
                Ok(sandbox) => {
                    inner
                        .names
                        .insert(Sandbox::name_key(&sandbox.metadata), sandbox.id.clone());
                    inner.sandboxes.insert(sandbox.id.clone(), sandbox);
                }
                Err(e) => tracing::warn!(path = %path.display(), "unreadable sandbox: {e}"),
            }
        }
        Ok(Sandboxes {
            dir,
            cgroup_root: cgroup_root.trim_matches('/').to_string(),
            host,
            network,
            inner: Mutex::new(inner),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn save(&self, sandbox: &Sandbox) -> Result<(), SandboxError> {
        let path = sandbox.dir.join("sandbox.json");
        let tmp = sandbox.dir.join("sandbox.json.tmp");
        let bytes = serde_json::to_vec_pretty(sandbox).map_err(|e| state_err(&path, e))?;
        std::fs::write(&tmp, bytes).map_err(|e| state_err(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| state_err(&path, e))
    }

    /// Whether the network is configured (NetworkReady).
    pub fn network_ready(&self) -> Result<(), CniError> {
        self.network.ready()
    }

    /// RunPodSandbox.
    pub fn run(&self, spec: Spec) -> Result<Sandbox, SandboxError> {
        let m = &spec.metadata;
        if m.name.is_empty() || m.namespace.is_empty() || m.uid.is_empty() {
            return Err(SandboxError::Invalid(
                "metadata needs name, namespace and uid".into(),
            ));
        }
        let id = new_id().map_err(|e| state_err(Path::new("/dev/urandom"), e))?;
        let key = Sandbox::name_key(m);
        {
            let mut inner = self.lock();
            if let Some(holder) = inner.names.get(&key) {
                return Err(SandboxError::NameReserved(key, holder.clone()));
            }
            inner.names.insert(key.clone(), id.clone());
        }
        let result = self.create(&id, spec);
        let mut inner = self.lock();
        match result {
            Ok(sandbox) => {
                inner.sandboxes.insert(id, sandbox.clone());
                Ok(sandbox)
            }
            Err(e) => {
                inner.names.remove(&key);
                Err(e)
            }
        }
    }

    fn create(&self, id: &str, spec: Spec) -> Result<Sandbox, SandboxError> {
        let dir = self.dir.join(id);
        std::fs::create_dir_all(&dir).map_err(|e| state_err(&dir, e))?;
        let cgroup = if spec.cgroup_parent.is_empty() {
            format!("/{}/pod-{id}", self.cgroup_root)
        } else {
            spec.cgroup_parent.clone()
        };
        let hostname = if spec.hostname.is_empty() {
            spec.metadata.name.clone()
        } else {
            spec.hostname.clone()
        };
        let mut sandbox = Sandbox {
            id: id.to_string(),
            metadata: spec.metadata,
            hostname,
            log_directory: spec.log_directory,
            labels: spec.labels,
            annotations: spec.annotations,
            runtime_handler: spec.runtime_handler,
            created_at: now_nanos(),
            state: State::Ready,
            host_network: spec.host_network,
            dir: dir.clone(),
            ips: Vec::new(),
            cni_result: None,
            cgroup,
            cgroup_created: false,
            dns: spec.dns,
        };
        // Undo stack, run in reverse on failure.
        let undo = |sandbox: &Sandbox, namespaces: bool, network: bool| {
            if network && let Err(e) = self.network.del(&sandbox.attachment(), None) {
                tracing::warn!(id = %sandbox.id, "undoing CNI ADD: {e}");
            }
            if namespaces && let Err(e) = self.host.remove_namespaces(&sandbox.dir) {
                tracing::warn!(id = %sandbox.id, "undoing namespaces: {e}");
            }
            if sandbox.cgroup_created
                && let Err(e) = self.host.remove_cgroup(&sandbox.cgroup)
            {
                tracing::warn!(id = %sandbox.id, "undoing cgroup: {e}");
            }
            if let Err(e) = std::fs::remove_dir_all(&sandbox.dir) {
                tracing::warn!(id = %sandbox.id, "undoing sandbox directory: {e}");
            }
        };
        match self.host.create_cgroup(&sandbox.cgroup) {
            Ok(created) => sandbox.cgroup_created = created,
            Err(e) => {
                undo(&sandbox, false, false);
                return Err(e.into());
            }
        }
        if let Err(e) = self
            .host
            .create_namespaces(&dir, &sandbox.hostname, sandbox.host_network)
        {
            undo(&sandbox, false, false);
            return Err(e.into());
        }
        if !sandbox.host_network {
            match self.network.add(&sandbox.attachment()) {
                Ok(result) => {
                    sandbox.ips = result_ips(&result);
                    sandbox.cni_result = Some(result);
                }
                Err(e) => {
                    // The spec asks for a DEL after a failed ADD.
                    undo(&sandbox, true, true);
                    return Err(e.into());
                }
            }
        }
        if let Err(e) = self.save(&sandbox) {
            undo(&sandbox, true, !sandbox.host_network);
            return Err(e);
        }
        tracing::info!(id, name = %sandbox.metadata.name, ips = ?sandbox.ips, "sandbox ready");
        Ok(sandbox)
    }

    /// A sandbox by ID (or unique ID prefix).
    pub fn get(&self, id: &str) -> Result<Sandbox, SandboxError> {
        let inner = self.lock();
        if let Some(sandbox) = inner.sandboxes.get(id) {
            return Ok(sandbox.clone());
        }
        let mut matches = inner
            .sandboxes
            .values()
            .filter(|s| !id.is_empty() && s.id.starts_with(id));
        match (matches.next(), matches.next()) {
            (Some(sandbox), None) => Ok(sandbox.clone()),
            _ => Err(SandboxError::NotFound(id.to_string())),
        }
    }

    /// All sandboxes.
    pub fn list(&self) -> Vec<Sandbox> {
        self.lock().sandboxes.values().cloned().collect()
    }

    /// StopPodSandbox (idempotent): detaches the network and removes the namespaces.
    /// The caller stops the containers first.
    pub fn stop(&self, id: &str) -> Result<Sandbox, SandboxError> {
        let mut sandbox = self.get(id)?;
        if sandbox.state == State::NotReady {
            return Ok(sandbox);
        }
        if !sandbox.host_network {
            self.network
                .del(&sandbox.attachment(), sandbox.cni_result.as_ref())?;
        }
        self.host.remove_namespaces(&sandbox.dir)?;
        sandbox.state = State::NotReady;
        self.save(&sandbox)?;
        self.lock()
            .sandboxes
            .insert(sandbox.id.clone(), sandbox.clone());
        tracing::info!(id = %sandbox.id, "sandbox stopped");
        Ok(sandbox)
    }

    /// RemovePodSandbox: stops if needed, removes the cgroup and the state. Unknown IDs
    /// are not an error (the call is idempotent, as upstream).
    pub fn remove(&self, id: &str) -> Result<(), SandboxError> {
        let sandbox = match self.get(id) {
            Ok(sandbox) => sandbox,
            Err(SandboxError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let sandbox = self.stop(&sandbox.id)?;
        if sandbox.cgroup_created {
            self.host.remove_cgroup(&sandbox.cgroup)?;
        }
        std::fs::remove_dir_all(&sandbox.dir).map_err(|e| state_err(&sandbox.dir, e))?;
        let mut inner = self.lock();
        inner.sandboxes.remove(&sandbox.id);
        inner.names.remove(&Sandbox::name_key(&sandbox.metadata));
        tracing::info!(id = %sandbox.id, "sandbox removed");
        Ok(())
    }
}

#[cfg(test)]
mod tests;
