//! Containers: an overlayfs rootfs over the image's shared layers (per-container upper),
//! an OCI bundle whose `config.json` (built with the `oci-spec` crate) joins the
//! sandbox's namespaces, and a
//! [`shim`](crate::shim) per container that runs `runc create`, holds the stdio, writes
//! the CRI log and records the exit. State lives in `<root>/containers/<id>/`
//! (`container.json`, `created`, `exit.json`), so a runtime restart finds its
//! containers, still running under their shims.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_cri::v1 as cri;
use oci_spec::runtime::{
    Capabilities, Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder,
    LinuxDeviceCgroupBuilder, LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxResourcesBuilder, Mount, MountBuilder, ProcessBuilder, RootBuilder, Spec, SpecBuilder,
    UserBuilder,
};
use serde::{Deserialize, Serialize};

use crate::sandbox::{Sandbox, new_id, now_nanos};
use crate::shim::Exit;
use crate::store::{ImageRecord, ImageStore, StoreError};

/// Container failures.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// No container has this ID.
    #[error("container {0:?} not found")]
    NotFound(String),
    /// The image is not in the store.
    #[error("image {0:?} not found")]
    ImageNotFound(String),
    /// The request is missing something or cannot be honoured.
    #[error("invalid container config: {0}")]
    Invalid(String),
    /// Another container in the pod holds the name.
    #[error("container name {0:?} is reserved by container {1}")]
    NameReserved(String, String),
    /// The call does not fit the container's state.
    #[error("container {0} is {1}")]
    WrongState(String, &'static str),
    /// The image store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// runc or the shim failed.
    #[error("{0}")]
    Runtime(String),
    /// A filesystem or mount operation failed.
    #[error("{0}: {1}")]
    Io(String, String),
}

fn io_err(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> ContainerError {
    let what = what.to_string();
    move |e| ContainerError::Io(what, e.to_string())
}

/// One container's persistent record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// 64 hex digits.
    pub id: String,
    /// Its sandbox.
    pub sandbox_id: String,
    /// Metadata name.
    pub name: String,
    /// Metadata attempt.
    pub attempt: u32,
    /// The image as the client named it.
    pub image: String,
    /// Image ID (config digest).
    pub image_id: String,
    /// A name of the image (first repo digest or tag, else the ID).
    pub image_ref: String,
    /// Labels.
    pub labels: HashMap<String, String>,
    /// Annotations.
    pub annotations: HashMap<String, String>,
    /// Creation time (ns).
    pub created_at: i64,
    /// Start time (ns), 0 until started.
    pub started_at: i64,
    /// Full CRI log path ("" when the kubelet asked for none).
    pub log_path: String,
    /// CRI mounts (container path, host path, read-only).
    pub mounts: Vec<(String, String, bool)>,
    /// cgroupsPath.
    pub cgroup: String,
    /// Reserved-name key.
    pub name_key: String,
    /// The container reads stdin (its shim holds the write end for Attach).
    #[serde(default)]
    pub stdin: bool,
    /// Close the container's stdin when the first attach that sent stdin leaves.
    #[serde(default)]
    pub stdin_once: bool,
    /// The container has a terminal (held by its shim).
    #[serde(default)]
    pub tty: bool,
}

/// Where a container is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Created, not started.
    Created,
    /// Started and not exited.
    Running,
    /// Exited.
    Exited(Exit),
    /// Started, but neither its process nor its shim is alive and no exit was recorded
    /// (the shim was killed).
    Unknown,
}

/// Resource usage of one container.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    /// CPU and memory of its cgroup.
    pub cgroup: crate::host::CgroupUsage,
    /// The writable layer's directory.
    pub writable_dir: PathBuf,
    /// Bytes it uses.
    pub writable_bytes: u64,
    /// Inodes it uses.
    pub writable_inodes: u64,
}

fn pid_alive(path: &Path) -> bool {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
        .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
}

/// All containers.
#[derive(Debug)]
pub struct Containers {
    dir: PathBuf,
    runc: PathBuf,
    runc_root: PathBuf,
    shim: PathBuf,
    store: ImageStore,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    containers: BTreeMap<String, Record>,
    names: HashMap<String, String>,
}

/// The capabilities containers get by default (containerd's and Docker's set).
const DEFAULT_CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Added for privileged containers.
const PRIVILEGED_EXTRA_CAPS: [&str; 8] = [
    "CAP_SYS_ADMIN",
    "CAP_NET_ADMIN",
    "CAP_SYS_PTRACE",
    "CAP_SYS_MODULE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_IPC_LOCK",
    "CAP_SYS_NICE",
];

impl Containers {
    /// Loads `<root>/containers`; `shim` is the binary run as `<shim> runtime-shim`.
    pub fn open(
        root: &Path,
        runc: PathBuf,
        shim: PathBuf,
        store: ImageStore,
    ) -> Result<Containers, ContainerError> {
        let dir = root.join("containers");
        std::fs::create_dir_all(&dir).map_err(io_err(dir.display()))?;
        let mut inner = Inner::default();
        for entry in std::fs::read_dir(&dir).map_err(io_err(dir.display()))? {
            let path = entry.map_err(io_err(dir.display()))?.path();
            let Ok(bytes) = std::fs::read(path.join("container.json")) else {
                tracing::warn!(path = %path.display(), "container directory without state");
                continue;
            };
            match serde_json::from_slice::<Record>(&bytes) {
                Ok(record) => {
                    inner
                        .names
                        .insert(record.name_key.clone(), record.id.clone());
                    inner.containers.insert(record.id.clone(), record);
                }
                Err(e) => tracing::warn!(path = %path.display(), "unreadable container: {e}"),
            }
        }
        Ok(Containers {
            dir,
            runc,
            runc_root: root.join("runc"),
            shim,
            store,
            inner: Mutex::new(inner),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn container_dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    fn save(&self, record: &Record) -> Result<(), ContainerError> {
        let dir = self.container_dir(&record.id);
        let tmp = dir.join("container.json.tmp");
        let bytes = serde_json::to_vec_pretty(record)
            .map_err(|e| ContainerError::Io("container.json".into(), e.to_string()))?;
        std::fs::write(&tmp, bytes).map_err(io_err(tmp.display()))?;
        std::fs::rename(&tmp, dir.join("container.json")).map_err(io_err(dir.display()))
    }

    /// The image IDs containers use (they cannot be removed).
    pub fn images_in_use(&self) -> BTreeSet<String> {
        self.lock()
            .containers
            .values()
            .map(|r| r.image_id.clone())
            .collect()
    }

    /// A container by ID or unique prefix.
    pub fn get(&self, id: &str) -> Result<Record, ContainerError> {
        let inner = self.lock();
        if let Some(record) = inner.containers.get(id) {
            return Ok(record.clone());
        }
        let mut matches = inner
            .containers
            .values()
            .filter(|r| !id.is_empty() && r.id.starts_with(id));
        match (matches.next(), matches.next()) {
            (Some(record), None) => Ok(record.clone()),
            _ => Err(ContainerError::NotFound(id.to_string())),
        }
    }

    /// All containers.
    pub fn list(&self) -> Vec<Record> {
        self.lock().containers.values().cloned().collect()
    }

    /// The container's phase, from its files.
    pub fn phase(&self, record: &Record) -> Phase {
        let dir = self.container_dir(&record.id);
        if let Ok(bytes) = std::fs::read(dir.join("exit.json"))
            && let Ok(exit) = serde_json::from_slice::<Exit>(&bytes)
        {
            return Phase::Exited(exit);
        }
        if record.started_at == 0 {
            return Phase::Created;
        }
        // The shim writes the exit right after reaping, so while it lives the container
        // counts as running.
        if pid_alive(&dir.join("pid")) || pid_alive(&dir.join("shim.pid")) {
            return Phase::Running;
        }
        // It may have finished between the two reads.
        if let Ok(bytes) = std::fs::read(dir.join("exit.json"))
            && let Ok(exit) = serde_json::from_slice::<Exit>(&bytes)
        {
            return Phase::Exited(exit);
        }
        Phase::Unknown
    }

    /// The directory holding a container's state files (and its shim's attach socket).
    pub fn state_dir(&self, id: &str) -> PathBuf {
        self.container_dir(id)
    }

    /// A running container by ID or unique prefix: `WrongState` when it is not running.
    pub fn running(&self, id: &str) -> Result<Record, ContainerError> {
        let record = self.get(id)?;
        if self.phase(&record) != Phase::Running {
            return Err(ContainerError::WrongState(record.id, "not running"));
        }
        Ok(record)
    }

    /// `runc exec <id> <cmd...>` without a terminal for a running container (killed when
    /// dropped); the caller sets its stdio.
    pub fn exec_command(
        &self,
        id: &str,
        cmd: &[String],
    ) -> Result<tokio::process::Command, ContainerError> {
        self.exec_command_traced(id, cmd, None)
    }

    /// [`Self::exec_command`]; with `trace` = `(log, pid_file)`, runc writes its own log
    /// (JSON lines) to `log` and the exec process's PID to `pid_file` once the process
    /// started, so a failure to start it can be told from the process exiting 255 (the
    /// code runc also exits with when it fails).
    pub fn exec_command_traced(
        &self,
        id: &str,
        cmd: &[String],
        trace: Option<(&Path, &Path)>,
    ) -> Result<tokio::process::Command, ContainerError> {
        let record = self.running(id)?;
        if cmd.is_empty() {
            return Err(ContainerError::Invalid("exec needs a command".into()));
        }
        let mut command = tokio::process::Command::new(&self.runc);
        command.arg("--root").arg(&self.runc_root);
        if let Some((log, _)) = trace {
            command.arg("--log").arg(log).args(["--log-format", "json"]);
        }
        command.arg("exec");
        if let Some((_, pid_file)) = trace {
            command.arg("--pid-file").arg(pid_file);
        }
        command.arg(&record.id).args(cmd).kill_on_drop(true);
        Ok(command)
    }

    /// The TTY exec helper (`<shim> runtime-exec`, see [`crate::tty`]) running `cmd` in a
    /// running container with a terminal; its stdout must be a unix socket, on which the
    /// terminal's master arrives. Killed when dropped (the exec process then gets a
    /// hangup once the master is closed).
    pub fn exec_tty_command(
        &self,
        id: &str,
        cmd: &[String],
    ) -> Result<tokio::process::Command, ContainerError> {
        let record = self.running(id)?;
        if cmd.is_empty() {
            return Err(ContainerError::Invalid("exec needs a command".into()));
        }
        let mut command = tokio::process::Command::new(&self.shim);
        command
            .arg("runtime-exec")
            .arg("--runc")
            .arg(&self.runc)
            .arg("--runc-root")
            .arg(&self.runc_root)
            .arg("--id")
            .arg(&record.id)
            .arg("--")
            .args(cmd)
            .kill_on_drop(true);
        Ok(command)
    }

    /// CPU and memory from the container's cgroup v1 files, and its writable layer (the
    /// overlay upper directory).
    pub fn usage(&self, record: &Record) -> Usage {
        let cgroup = crate::host::cgroup_usage(&record.cgroup);
        let upper = self.container_dir(&record.id).join("upper");
        let (mut bytes, mut inodes) = (0u64, 0u64);
        let mut stack = vec![upper.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let Ok(meta) = entry.path().symlink_metadata() else {
                    continue;
                };
                inodes += 1;
                bytes += std::os::unix::fs::MetadataExt::blocks(&meta) * 512;
                if meta.is_dir() {
                    stack.push(entry.path());
                }
            }
        }
        Usage {
            cgroup,
            writable_dir: upper,
            writable_bytes: bytes,
            writable_inodes: inodes,
        }
    }

    /// ReopenContainerLog: the shim reopens the log path (after the kubelet rotated it).
    pub fn reopen_log(&self, id: &str) -> Result<(), ContainerError> {
        let record = self.get(id)?;
        if self.phase(&record) != Phase::Running {
            return Err(ContainerError::WrongState(record.id, "not running"));
        }
        if record.log_path.is_empty() {
            return Ok(());
        }
        let dir = self.container_dir(&record.id);
        let pid = std::fs::read_to_string(dir.join("shim.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
            .ok_or_else(|| ContainerError::Runtime("no shim pid".into()))?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGUSR1,
        )
        .map_err(|e| ContainerError::Runtime(format!("signalling the shim: {e}")))?;
        let path = Path::new(&record.log_path);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !path.exists() {
            if Instant::now() >= deadline {
                return Err(ContainerError::Runtime(format!(
                    "the shim did not reopen {}",
                    path.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// CreateContainer in a ready sandbox.
    pub fn create(
        &self,
        sandbox: &Sandbox,
        config: cri::ContainerConfig,
    ) -> Result<Record, ContainerError> {
        let metadata = config
            .metadata
            .clone()
            .filter(|m| !m.name.is_empty())
            .ok_or_else(|| ContainerError::Invalid("metadata with a name is required".into()))?;
        let image_name = config
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .filter(|i| !i.is_empty())
            .ok_or_else(|| ContainerError::Invalid("an image is required".into()))?;
        let image = self
            .store
            .find(&image_name)?
            .ok_or_else(|| ContainerError::ImageNotFound(image_name.clone()))?;
        let key = format!(
            "{}_{}_{}_{}_{}",
            metadata.name,
            sandbox.metadata.name,
            sandbox.metadata.namespace,
            sandbox.metadata.uid,
            metadata.attempt
        );
        let id = new_id().map_err(io_err("/dev/urandom"))?;
        {
            let mut inner = self.lock();
            if let Some(holder) = inner.names.get(&key) {
                return Err(ContainerError::NameReserved(key, holder.clone()));
            }
            inner.names.insert(key.clone(), id.clone());
        }
        let log_path = if sandbox.log_directory.is_empty() || config.log_path.is_empty() {
            String::new()
        } else {
            Path::new(&sandbox.log_directory)
                .join(&config.log_path)
                .display()
                .to_string()
        };
        let record = Record {
            id: id.clone(),
            sandbox_id: sandbox.id.clone(),
            name: metadata.name.clone(),
            attempt: metadata.attempt,
            image: image_name,
            image_id: image.id.clone(),
            image_ref: image
                .repo_digests
                .first()
                .or(image.repo_tags.first())
                .cloned()
                .unwrap_or_else(|| image.id.clone()),
            labels: config.labels.clone(),
            annotations: config.annotations.clone(),
            created_at: now_nanos(),
            started_at: 0,
            log_path,
            mounts: config
                .mounts
                .iter()
                .map(|m| (m.container_path.clone(), m.host_path.clone(), m.readonly))
                .collect(),
            cgroup: format!("{}/{id}", sandbox.cgroup.trim_end_matches('/')),
            name_key: key.clone(),
            stdin: config.stdin,
            stdin_once: config.stdin_once,
            tty: config.tty,
        };
        match self.build(sandbox, &config, &image, &record) {
            Ok(()) => {
                self.lock().containers.insert(id, record.clone());
                tracing::info!(id = %record.id, name = %record.name, "container created");
                Ok(record)
            }
            Err(e) => {
                self.destroy(&record);
                self.lock().names.remove(&key);
                Err(e)
            }
        }
    }

    fn build(
        &self,
        sandbox: &Sandbox,
        config: &cri::ContainerConfig,
        image: &ImageRecord,
        record: &Record,
    ) -> Result<(), ContainerError> {
        let dir = self.container_dir(&record.id);
        let rootfs = dir.join("bundle/rootfs");
        for sub in [rootfs.clone(), dir.join("upper"), dir.join("work")] {
            std::fs::create_dir_all(&sub).map_err(io_err(sub.display()))?;
        }
        let mut lower = Vec::new();
        for layer in image.layers.iter().rev() {
            lower.push(self.store.layer_dir(layer)?.display().to_string());
        }
        if lower.is_empty() {
            return Err(ContainerError::Invalid("the image has no layers".into()));
        }
        let data = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.join(":"),
            dir.join("upper").display(),
            dir.join("work").display()
        );
        mount_overlay(&data, &rootfs).map_err(|e| {
            ContainerError::Io(
                format!("mounting overlay on {}", rootfs.display()),
                e.to_string(),
            )
        })?;
        self.save(record)?;
        let etc = sandbox_files(sandbox)?;
        let spec = oci_spec(sandbox, config, image, record, &rootfs, &etc)?;
        let bundle = dir.join("bundle/config.json");
        spec.save(&bundle)
            .map_err(|e| ContainerError::Io(bundle.display().to_string(), e.to_string()))?;
        self.spawn_shim(record)
    }

    fn spawn_shim(&self, record: &Record) -> Result<(), ContainerError> {
        use std::os::unix::process::CommandExt;
        let dir = self.container_dir(&record.id);
        let log = std::fs::File::create(dir.join("shim.log")).map_err(io_err("shim.log"))?;
        let log_path = if record.log_path.is_empty() {
            "/dev/null".to_string()
        } else {
            record.log_path.clone()
        };
        let mut child = Command::new(&self.shim)
            .arg("runtime-shim")
            .arg("--id")
            .arg(&record.id)
            .arg("--dir")
            .arg(&dir)
            .arg("--runc")
            .arg(&self.runc)
            .arg("--runc-root")
            .arg(&self.runc_root)
            .arg("--log-path")
            .arg(&log_path)
            .arg("--cgroup")
            .arg(&record.cgroup)
            .args(record.stdin.then_some("--stdin"))
            .args(record.stdin_once.then_some("--stdin-once"))
            .args(record.tty.then_some("--tty"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            // Its own process group: signals to the runtime's group do not reach it.
            .process_group(0)
            .spawn()
            .map_err(io_err("starting the shim"))?;
        // Reap the shim whenever it ends (it outlives this call).
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        let created = dir.join("created");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(text) = std::fs::read_to_string(&created)
                && !text.is_empty()
            {
                return if text == "ok" {
                    Ok(())
                } else {
                    Err(ContainerError::Runtime(text))
                };
            }
            if Instant::now() > deadline {
                return Err(ContainerError::Runtime(
                    "the shim did not report creation within 30s".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn runc(&self) -> Command {
        let mut command = Command::new(&self.runc);
        command.arg("--root").arg(&self.runc_root);
        command
    }

    fn runc_ok(&self, args: &[&str]) -> Result<(), ContainerError> {
        let out = self
            .runc()
            .args(args)
            .output()
            .map_err(io_err("running runc"))?;
        if !out.status.success() {
            return Err(ContainerError::Runtime(format!(
                "runc {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    /// StartContainer.
    pub fn start(&self, id: &str) -> Result<(), ContainerError> {
        let mut record = self.get(id)?;
        match self.phase(&record) {
            Phase::Created => {}
            Phase::Running => return Err(ContainerError::WrongState(record.id, "running")),
            Phase::Exited(_) | Phase::Unknown => {
                return Err(ContainerError::WrongState(record.id, "exited"));
            }
        }
        self.runc_ok(&["start", &record.id])?;
        record.started_at = now_nanos();
        self.save(&record)?;
        self.lock().containers.insert(record.id.clone(), record);
        Ok(())
    }

    fn wait_exit(&self, record: &Record, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if matches!(self.phase(record), Phase::Exited(_)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// StopContainer: SIGTERM, SIGKILL after `timeout` (idempotent).
    pub fn stop(&self, id: &str, timeout: Duration) -> Result<(), ContainerError> {
        let record = self.get(id)?;
        let started = match self.phase(&record) {
            Phase::Exited(_) | Phase::Unknown => return Ok(()),
            Phase::Created => false,
            Phase::Running => true,
        };
        if started && !timeout.is_zero() {
            // The process may already be gone; the exit file tells.
            let _ = self.runc_ok(&["kill", &record.id, "TERM"]);
            if self.wait_exit(&record, timeout) {
                return Ok(());
            }
        }
        let _ = self.runc_ok(&["kill", "--all", &record.id, "KILL"]);
        if self.wait_exit(&record, Duration::from_secs(10)) {
            Ok(())
        } else {
            Err(ContainerError::Runtime(format!(
                "container {} did not exit after SIGKILL",
                record.id
            )))
        }
    }

    /// RemoveContainer (idempotent): kills it if needed, deletes it from runc, unmounts
    /// the rootfs and removes its state. The log file stays (the kubelet owns it).
    pub fn remove(&self, id: &str) -> Result<(), ContainerError> {
        let record = match self.get(id) {
            Ok(record) => record,
            Err(ContainerError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        self.stop(&record.id, Duration::ZERO)?;
        self.destroy(&record);
        let mut inner = self.lock();
        inner.containers.remove(&record.id);
        inner.names.remove(&record.name_key);
        tracing::info!(id = %record.id, "container removed");
        Ok(())
    }

    /// Best-effort teardown of whatever exists for `record`.
    fn destroy(&self, record: &Record) {
        let _ = self.runc().args(["delete", "--force", &record.id]).output();
        let dir = self.container_dir(&record.id);
        let rootfs = dir.join("bundle/rootfs");
        match nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => tracing::warn!(path = %rootfs.display(), "unmounting: {e}"),
        }
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %dir.display(), "removing container state: {e}");
        }
    }

    /// UpdateContainerResources: CPU shares/quota/period and memory through `runc update`
    /// (the cgroup carries them; config.json keeps the creation values).
    pub fn update(
        &self,
        id: &str,
        resources: &cri::LinuxContainerResources,
    ) -> Result<(), ContainerError> {
        let record = self.get(id)?;
        if let Phase::Exited(_) | Phase::Unknown = self.phase(&record) {
            return Err(ContainerError::WrongState(record.id, "not running"));
        }
        let mut args = vec!["update".to_string()];
        let mut flag = |name: &str, value: i64| {
            if value > 0 {
                args.push(format!("--{name}={value}"));
            }
        };
        flag("cpu-share", resources.cpu_shares);
        flag("cpu-quota", resources.cpu_quota);
        flag("cpu-period", resources.cpu_period);
        flag("memory", resources.memory_limit_in_bytes);
        if Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists() {
            flag("memory-swap", resources.memory_limit_in_bytes);
        }
        if args.len() == 1 {
            return Ok(());
        }
        args.push(record.id.clone());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.runc_ok(&args)
    }

    /// ExecSync through `runc exec` (the container's process spec: env, cwd, user).
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: &[String],
        timeout: Option<Duration>,
    ) -> Result<(Vec<u8>, Vec<u8>, i32), ContainerError> {
        let child = self
            .exec_command(id, cmd)?
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io_err("running runc exec"))?;
        let output = child.wait_with_output();
        let out = match timeout {
            Some(t) => tokio::time::timeout(t, output)
                .await
                .map_err(|_| ContainerError::Runtime(format!("command timed out after {t:?}")))?,
            None => output.await,
        }
        .map_err(io_err("runc exec"))?;
        let code = out.status.code().unwrap_or(-1);
        Ok((out.stdout, out.stderr, code))
    }
}

/// Writes the sandbox's `hosts`, `resolv.conf` and `hostname` once; returns their dir.
fn sandbox_files(sandbox: &Sandbox) -> Result<PathBuf, ContainerError> {
    let dir = sandbox.dir.clone();
    let hosts = dir.join("hosts");
    if !hosts.exists() {
        let mut text =
            String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
        if let Some(ip) = sandbox.ips.first() {
            text.push_str(&format!("{ip}\t{}\n", sandbox.hostname));
        }
        std::fs::write(&hosts, text).map_err(io_err(hosts.display()))?;
    }
    let resolv = dir.join("resolv.conf");
    if !resolv.exists() {
        let text = match &sandbox.dns {
            Some((servers, searches, options))
                if !servers.is_empty() || !searches.is_empty() || !options.is_empty() =>
            {
                let mut text = String::new();
                if !searches.is_empty() {
                    text.push_str(&format!("search {}\n", searches.join(" ")));
                }
                for server in servers {
                    text.push_str(&format!("nameserver {server}\n"));
                }
                if !options.is_empty() {
                    text.push_str(&format!("options {}\n", options.join(" ")));
                }
                text
            }
            _ => std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        };
        std::fs::write(&resolv, text).map_err(io_err(resolv.display()))?;
    }
    let hostname = dir.join("hostname");
    if !hostname.exists() {
        std::fs::write(&hostname, format!("{}\n", sandbox.hostname))
            .map_err(io_err(hostname.display()))?;
    }
    Ok(dir)
}

/// `uid[:gid]` or a name from the rootfs' /etc/passwd.
fn resolve_user(
    rootfs: &Path,
    security: Option<&cri::LinuxContainerSecurityContext>,
    image_user: &str,
) -> Result<(u32, u32), ContainerError> {
    let passwd = || std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap_or_default();
    let lookup = |name: &str| -> Result<(u32, u32), ContainerError> {
        passwd()
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.first() == Some(&name))
            .and_then(|f| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))
            .ok_or_else(|| ContainerError::Invalid(format!("user {name:?} not in /etc/passwd")))
    };
    let to_u32 =
        |v: i64| u32::try_from(v).map_err(|_| ContainerError::Invalid(format!("bad uid/gid {v}")));
    if let Some(sc) = security {
        if let Some(uid) = &sc.run_as_user {
            let gid = match &sc.run_as_group {
                Some(g) => to_u32(g.value)?,
                None => 0,
            };
            return Ok((to_u32(uid.value)?, gid));
        }
        if !sc.run_as_username.is_empty() {
            return lookup(&sc.run_as_username);
        }
    }
    if image_user.is_empty() {
        return Ok((0, 0));
    }
    let (user, group) = match image_user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (image_user, None),
    };
    let (uid, default_gid) = match user.parse::<u32>() {
        Ok(uid) => (uid, 0),
        Err(_) => lookup(user)?,
    };
    let gid = match group {
        Some(g) => g
            .parse::<u32>()
            .map_err(|_| ContainerError::Invalid(format!("group {g:?} must be numeric")))?,
        None => default_gid,
    };
    Ok((uid, gid))
}

/// The process' arguments, from CRI command/args over the image's Entrypoint/Cmd.
fn process_args(config: &cri::ContainerConfig, image: &ImageRecord) -> Vec<String> {
    let (entrypoint, cmd) = if !config.command.is_empty() {
        (config.command.clone(), config.args.clone())
    } else if !config.args.is_empty() {
        (image.config.entrypoint.clone(), config.args.clone())
    } else {
        (image.config.entrypoint.clone(), image.config.cmd.clone())
    };
    entrypoint.into_iter().chain(cmd).collect()
}

fn own_oom_score_adj() -> i64 {
    std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn spec_err(e: oci_spec::OciSpecError) -> ContainerError {
    ContainerError::Invalid(format!("building config.json: {e}"))
}

/// `CAP_NET_ADMIN` / `NET_ADMIN` / `net_admin` -> the capability.
fn capability(name: &str) -> Result<Capability, ContainerError> {
    let bare = name.trim_start_matches("CAP_").to_uppercase();
    bare.parse::<Capability>()
        .map_err(|_| ContainerError::Invalid(format!("unknown capability {name:?}")))
}

fn mount(
    destination: &str,
    typ: &str,
    source: impl Into<PathBuf>,
    options: &[&str],
) -> Result<Mount, ContainerError> {
    MountBuilder::default()
        .destination(destination)
        .typ(typ)
        .source(source.into())
        .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()
        .map_err(spec_err)
}

/// The OCI runtime spec (`config.json`) of a container, built with the `oci-spec` crate.
fn oci_spec(
    sandbox: &Sandbox,
    config: &cri::ContainerConfig,
    image: &ImageRecord,
    record: &Record,
    rootfs: &Path,
    etc: &Path,
) -> Result<Spec, ContainerError> {
    let linux = config.linux.clone().unwrap_or_default();
    let security = linux.security_context.as_ref();
    let args = process_args(config, image);
    if args.is_empty() {
        return Err(ContainerError::Invalid(
            "no command: neither the config nor the image gives one".into(),
        ));
    }
    let env = process_env(sandbox, config, image);
    let cwd = [
        config.working_dir.as_str(),
        image.config.working_dir.as_str(),
    ]
    .into_iter()
    .find(|d| !d.is_empty())
    .unwrap_or("/")
    .to_string();
    let (uid, gid) = resolve_user(rootfs, security, &image.config.user)?;
    let privileged = security.is_some_and(|s| s.privileged);
    let mut caps: Capabilities = DEFAULT_CAPS
        .iter()
        .map(|c| capability(c))
        .collect::<Result<_, _>>()?;
    if privileged {
        caps.extend(
            PRIVILEGED_EXTRA_CAPS
                .iter()
                .filter_map(|c| capability(c).ok()),
        );
    }
    if let Some(c) = security.and_then(|s| s.capabilities.as_ref()) {
        for add in &c.add_capabilities {
            caps.insert(capability(add)?);
        }
        for drop in &c.drop_capabilities {
            caps.remove(&capability(drop)?);
        }
    }
    let additional_gids = security
        .map(|s| {
            s.supplemental_groups
                .iter()
                .map(|g| u32::try_from(*g))
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()
        .map_err(|_| ContainerError::Invalid("bad supplemental group".into()))?
        .unwrap_or_default();
    let user = UserBuilder::default()
        .uid(uid)
        .gid(gid)
        .additional_gids(additional_gids)
        .build()
        .map_err(spec_err)?;
    let capabilities = LinuxCapabilitiesBuilder::default()
        .ambient(Capabilities::new())
        .inheritable(Capabilities::new())
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .build()
        .map_err(spec_err)?;
    let resources = linux.resources.clone().unwrap_or_default();
    let mut process = ProcessBuilder::default()
        .terminal(record.tty)
        .user(user)
        .args(args)
        .env(env)
        .cwd(cwd)
        .capabilities(capabilities)
        .no_new_privileges(security.is_some_and(|s| s.no_new_privs));
    // Never below our own: lowering needs CAP_SYS_RESOURCE (containerd's
    // restrict_oom_score_adj).
    if resources.oom_score_adj != 0 {
        let adj = resources
            .oom_score_adj
            .max(own_oom_score_adj())
            .clamp(-1000, 1000);
        process = process.oom_score_adj(i32::try_from(adj).unwrap_or(1000));
    }
    let mut process = process.build().map_err(spec_err)?;
    // Inherit the runtime's limits (as containerd does) rather than the example's 1024 files.
    process.set_rlimits(None);

    let mut mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        )?,
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        )?,
    ];
    let user_paths: BTreeSet<&str> = config
        .mounts
        .iter()
        .map(|m| m.container_path.as_str())
        .collect();
    for (file, dest) in [
        ("hosts", "/etc/hosts"),
        ("resolv.conf", "/etc/resolv.conf"),
        ("hostname", "/etc/hostname"),
    ] {
        if !user_paths.contains(dest) {
            mounts.push(mount(
                dest,
                "bind",
                etc.join(file),
                &["rbind", "rprivate", "rw"],
            )?);
        }
    }
    for m in &config.mounts {
        if !m.container_path.starts_with('/') || m.host_path.is_empty() {
            return Err(ContainerError::Invalid(format!(
                "mount {:?} -> {:?}: absolute container path and a host path required",
                m.host_path, m.container_path
            )));
        }
        let host = Path::new(&m.host_path);
        if !host.exists() {
            std::fs::create_dir_all(host).map_err(io_err(host.display()))?;
        }
        let propagation = match m.propagation {
            1 => "rslave",
            2 => "rshared",
            _ => "rprivate",
        };
        let mode = if m.readonly { "ro" } else { "rw" };
        mounts.push(mount(
            &m.container_path,
            "bind",
            host,
            &["rbind", propagation, mode],
        )?);
    }

    let mut namespaces = vec![
        LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::Pid)
            .build()
            .map_err(spec_err)?,
        LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::Mount)
            .build()
            .map_err(spec_err)?,
    ];
    for (typ, file) in [
        (LinuxNamespaceType::Network, "net"),
        (LinuxNamespaceType::Ipc, "ipc"),
        (LinuxNamespaceType::Uts, "uts"),
    ] {
        if let Some(path) = sandbox.namespace_path(file) {
            namespaces.push(
                LinuxNamespaceBuilder::default()
                    .typ(typ)
                    .path(path)
                    .build()
                    .map_err(spec_err)?,
            );
        }
    }

    let devices = LinuxDeviceCgroupBuilder::default()
        .allow(privileged)
        .access("rwm")
        .build()
        .map_err(spec_err)?;
    let mut res = LinuxResourcesBuilder::default().devices(vec![devices]);
    if resources.cpu_shares > 0 || resources.cpu_quota > 0 || resources.cpu_period > 0 {
        let mut cpu = LinuxCpuBuilder::default();
        if let Ok(shares) = u64::try_from(resources.cpu_shares)
            && shares > 0
        {
            cpu = cpu.shares(shares);
        }
        if resources.cpu_quota > 0 {
            cpu = cpu.quota(resources.cpu_quota);
        }
        if let Ok(period) = u64::try_from(resources.cpu_period)
            && period > 0
        {
            cpu = cpu.period(period);
        }
        res = res.cpu(cpu.build().map_err(spec_err)?);
    }
    if resources.memory_limit_in_bytes > 0 {
        let mut memory = LinuxMemoryBuilder::default().limit(resources.memory_limit_in_bytes);
        // No swap beyond the limit where the kernel accounts swap.
        if Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists() {
            memory = memory.swap(resources.memory_limit_in_bytes);
        }
        res = res.memory(memory.build().map_err(spec_err)?);
    }
    let mut linux_spec = LinuxBuilder::default()
        .namespaces(namespaces)
        .cgroups_path(PathBuf::from(&record.cgroup))
        .resources(res.build().map_err(spec_err)?);
    if !privileged {
        linux_spec = linux_spec
            .masked_paths(
                [
                    "/proc/acpi",
                    "/proc/kcore",
                    "/proc/keys",
                    "/proc/latency_stats",
                    "/proc/timer_list",
                    "/proc/timer_stats",
                    "/proc/sched_debug",
                    "/proc/scsi",
                    "/sys/firmware",
                ]
                .map(String::from)
                .to_vec(),
            )
            .readonly_paths(
                [
                    "/proc/asound",
                    "/proc/bus",
                    "/proc/fs",
                    "/proc/irq",
                    "/proc/sys",
                    "/proc/sysrq-trigger",
                ]
                .map(String::from)
                .to_vec(),
            );
    }
    let root = RootBuilder::default()
        .path("rootfs")
        .readonly(security.is_some_and(|s| s.readonly_rootfs))
        .build()
        .map_err(spec_err)?;
    let mut spec = SpecBuilder::default()
        .version("1.0.2")
        .process(process)
        .root(root)
        .mounts(mounts)
        .linux(linux_spec.build().map_err(spec_err)?)
        .annotations(config.annotations.clone())
        .build()
        .map_err(spec_err)?;
    // The builder starts from oci-spec's example spec, whose hostname would overwrite
    // the pod's in the shared UTS namespace: containers leave it alone.
    spec.set_hostname(None);
    Ok(spec)
}

/// Image env, then the config's (a key set twice keeps the config's value), plus PATH
/// and HOSTNAME when neither gives them.
fn process_env(
    sandbox: &Sandbox,
    config: &cri::ContainerConfig,
    image: &ImageRecord,
) -> Vec<String> {
    let mut env: Vec<(String, String)> = image
        .config
        .env
        .iter()
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    for kv in &config.envs {
        env.retain(|(k, _)| *k != kv.key);
        env.push((kv.key.clone(), kv.value.clone()));
    }
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push((
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ));
    }
    if !env.iter().any(|(k, _)| k == "HOSTNAME") {
        env.push(("HOSTNAME".into(), sandbox.hostname.clone()));
    }
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// Mounts a container's overlay rootfs (`data`: lowerdir, upperdir, workdir) on `rootfs`,
/// `volatile` where the kernel has it (5.10+; without it, the plain mount). Unmounting an
/// overlay otherwise `syncfs`es the whole filesystem under its upper directory, so
/// RemoveContainer waited for every dirty page on the node's disk (the first removal after
/// a burst of container creations took 300-700 ms, against ~5 ms). What `volatile` gives
/// up is the upper layer's durability across a host crash, and that layer is never mounted
/// again: a container's rootfs is mounted only by CreateContainer, after a reboot the
/// container can only be removed, and Kubernetes makes new containers rather than
/// restarting old ones.
fn mount_overlay(data: &str, rootfs: &Path) -> nix::Result<()> {
    let mount = |data: &str| {
        nix::mount::mount(
            Some("overlay"),
            rootfs,
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(data),
        )
    };
    match mount(&format!("{data},volatile")) {
        Err(nix::errno::Errno::EINVAL) => mount(data),
        result => result,
    }
}

#[cfg(test)]
mod tests;
