//! The privileged operations a sandbox needs, behind the [`Host`] trait so the sandbox
//! state machine can be unit-tested with a fake (youki-style seam). [`LinuxHost`] is the
//! real one: namespaces made persistent by bind mounts (util-linux `unshare`), cgroup v1
//! directories.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Failures of host operations.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// A filesystem or mount operation failed.
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    /// A helper command failed.
    #[error("{0} failed: {1}")]
    Command(String, String),
}

/// Which namespaces of a pod live in files under its directory.
pub const NAMESPACES: [&str; 3] = ["net", "ipc", "uts"];

/// Privileged operations on the node.
pub trait Host: Send + Sync + std::fmt::Debug {
    /// Creates persistent IPC and UTS (with `hostname`) namespaces, and a network
    /// namespace unless `host_network`, as files `dir/{net,ipc,uts}`.
    fn create_namespaces(
        &self,
        dir: &Path,
        hostname: &str,
        host_network: bool,
    ) -> Result<(), HostError>;
    /// Unmounts and removes what [`Host::create_namespaces`] made (idempotent).
    fn remove_namespaces(&self, dir: &Path) -> Result<(), HostError>;
    /// Creates the cgroup `path` (relative to each v1 hierarchy); true if it was new.
    fn create_cgroup(&self, path: &str) -> Result<bool, HostError>;
    /// Removes the cgroup `path` from each hierarchy (idempotent).
    fn remove_cgroup(&self, path: &str) -> Result<(), HostError>;
}

/// The real host.
#[derive(Debug, Default, Clone)]
pub struct LinuxHost;

/// The cgroup v1 hierarchies mounted here (the v2 mount has no controllers on these
/// machines, so it is left alone).
pub fn cgroup_v1_mounts() -> Vec<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split_whitespace().next()?;
            let mountpoint = left.split_whitespace().nth(4)?;
            (fstype == "cgroup").then(|| PathBuf::from(mountpoint))
        })
        .collect()
}

fn cgroup_dirs(path: &str) -> Vec<PathBuf> {
    let relative = path.trim_start_matches('/');
    cgroup_v1_mounts()
        .into_iter()
        .map(|m| m.join(relative))
        .collect()
}

impl Host for LinuxHost {
    fn create_namespaces(
        &self,
        dir: &Path,
        hostname: &str,
        host_network: bool,
    ) -> Result<(), HostError> {
        let mut command = Command::new("unshare");
        for ns in NAMESPACES {
            if ns == "net" && host_network {
                continue;
            }
            let file = dir.join(ns);
            std::fs::write(&file, b"").map_err(|e| HostError::Io(file.display().to_string(), e))?;
            command.arg(format!("--{ns}={}", file.display()));
        }
        // Sets the hostname inside the new UTS namespace.
        command
            .args([
                "--",
                "sh",
                "-c",
                r#"printf %s "$1" > /proc/sys/kernel/hostname"#,
                "sh",
            ])
            .arg(hostname);
        let out = command
            .output()
            .map_err(|e| HostError::Io("running unshare".into(), e))?;
        if !out.status.success() {
            let _ = self.remove_namespaces(dir);
            return Err(HostError::Command(
                "unshare".into(),
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
        Ok(())
    }

    fn remove_namespaces(&self, dir: &Path) -> Result<(), HostError> {
        for ns in NAMESPACES {
            let file = dir.join(ns);
            if !file.exists() {
                continue;
            }
            match nix::mount::umount2(&file, nix::mount::MntFlags::MNT_DETACH) {
                // EINVAL: not a mount point (never mounted, or already unmounted).
                Ok(()) | Err(nix::errno::Errno::EINVAL) => {}
                Err(e) => return Err(HostError::Io(file.display().to_string(), e.into())),
            }
            std::fs::remove_file(&file)
                .map_err(|e| HostError::Io(file.display().to_string(), e))?;
        }
        Ok(())
    }

    fn create_cgroup(&self, path: &str) -> Result<bool, HostError> {
        let mut created = false;
        for dir in cgroup_dirs(path) {
            if !dir.exists() {
                std::fs::create_dir_all(&dir)
                    .map_err(|e| HostError::Io(dir.display().to_string(), e))?;
                created = true;
            }
        }
        Ok(created)
    }

    fn remove_cgroup(&self, path: &str) -> Result<(), HostError> {
        for dir in cgroup_dirs(path) {
            match std::fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(HostError::Io(dir.display().to_string(), e)),
            }
        }
        Ok(())
    }
}

/// CPU, memory and process counts of a cgroup (v1 files), for stats.
#[derive(Debug, Clone, Default)]
pub struct CgroupUsage {
    /// cpuacct.usage (ns).
    pub cpu_ns: Option<u64>,
    /// memory.usage_in_bytes.
    pub memory_usage: Option<u64>,
    /// Usage minus inactive file pages (what the kubelet evicts on).
    pub working_set: Option<u64>,
    /// total_rss.
    pub rss: Option<u64>,
    /// total_pgfault.
    pub page_faults: Option<u64>,
    /// total_pgmajfault.
    pub major_page_faults: Option<u64>,
    /// pids.current.
    pub processes: Option<u64>,
}

/// Reads a cgroup's usage from the v1 hierarchies (missing files give `None`).
pub fn cgroup_usage(cgroup: &str) -> CgroupUsage {
    let mounts = cgroup_v1_mounts();
    let file = |controller: &str, name: &str| -> Option<String> {
        let mount = mounts.iter().find(|m| {
            m.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.split(',').any(|c| c == controller))
        })?;
        std::fs::read_to_string(mount.join(cgroup.trim_start_matches('/')).join(name)).ok()
    };
    let number = |controller: &str, name: &str| -> Option<u64> {
        file(controller, name).and_then(|v| v.trim().parse().ok())
    };
    let stat: std::collections::HashMap<String, u64> = file("memory", "memory.stat")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect();
    let memory_usage = number("memory", "memory.usage_in_bytes");
    CgroupUsage {
        cpu_ns: number("cpuacct", "cpuacct.usage"),
        memory_usage,
        working_set: memory_usage
            .map(|u| u.saturating_sub(stat.get("total_inactive_file").copied().unwrap_or(0))),
        rss: stat.get("total_rss").copied(),
        page_faults: stat.get("total_pgfault").copied(),
        major_page_faults: stat.get("total_pgmajfault").copied(),
        processes: number("pids", "pids.current"),
    }
}

/// Counters of one interface.
#[derive(Debug, Clone, Default)]
pub struct InterfaceCounters {
    /// Interface name.
    pub name: String,
    /// Received bytes.
    pub rx_bytes: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Sent bytes.
    pub tx_bytes: u64,
    /// Send errors.
    pub tx_errors: u64,
}

/// Per-interface counters in a network namespace, read from
/// `/proc/thread-self/net/dev` on a thread that entered it.
pub fn interface_counters(netns: &Path) -> Option<Vec<InterfaceCounters>> {
    let netns = netns.to_path_buf();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&netns).ok()?;
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
        let text = std::fs::read_to_string("/proc/thread-self/net/dev").ok()?;
        Some(
            text.lines()
                .skip(2)
                .filter_map(|line| {
                    let (name, rest) = line.split_once(':')?;
                    let f: Vec<u64> = rest
                        .split_whitespace()
                        .filter_map(|v| v.parse().ok())
                        .collect();
                    Some(InterfaceCounters {
                        name: name.trim().to_string(),
                        rx_bytes: *f.first()?,
                        rx_errors: *f.get(2)?,
                        tx_bytes: *f.get(8)?,
                        tx_errors: *f.get(10)?,
                    })
                })
                .collect(),
        )
    })
    .join()
    .ok()
    .flatten()
}
