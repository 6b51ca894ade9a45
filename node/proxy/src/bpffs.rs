//! The bpffs pin directory of a node: `<bpffs>/ferrokube/<node>/`, holding the maps (by
//! their names) and the program links (`link_<program>`). bpffs is mounted when missing.

use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};
use nix::sys::statfs::{BPF_FS_MAGIC, statfs};
use tracing::info;

/// Where bpffs is normally mounted.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf";

/// Errors preparing or reading pin directories.
#[derive(Debug, thiserror::Error)]
pub enum BpffsError {
    /// The node name cannot be a directory name.
    #[error("invalid node name {0:?}: want a DNS-1123 subdomain")]
    InvalidNode(String),
    /// Checking or mounting bpffs failed.
    #[error("mounting bpffs at {path}: {source}")]
    Mount {
        /// The mount point.
        path: PathBuf,
        /// Why.
        #[source]
        source: nix::Error,
    },
    /// A filesystem operation on the pin directory failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What we were doing.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Checks a node name is a DNS-1123 subdomain (so it is a safe single path component).
pub fn validate_node(node: &str) -> Result<(), BpffsError> {
    let ok = !node.is_empty()
        && node.len() <= 253
        && node
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !node.starts_with(['.', '-'])
        && !node.ends_with(['.', '-'])
        && !node.contains("..");
    if ok {
        Ok(())
    } else {
        Err(BpffsError::InvalidNode(node.into()))
    }
}

/// The pin directory of `node` under the bpffs mount `bpffs`.
pub fn pin_dir(bpffs: &Path, node: &str) -> Result<PathBuf, BpffsError> {
    validate_node(node)?;
    Ok(bpffs.join("ferrokube").join(node))
}

/// Is `path` a mounted bpffs?
pub fn is_bpffs(path: &Path) -> bool {
    statfs(path)
        .map(|s| s.filesystem_type() == BPF_FS_MAGIC)
        .unwrap_or(false)
}

/// Mounts bpffs at `path` unless it is mounted already.
pub fn ensure_mounted(path: &Path) -> Result<(), BpffsError> {
    if is_bpffs(path) {
        return Ok(());
    }
    std::fs::create_dir_all(path).map_err(|source| BpffsError::Io {
        what: "creating",
        path: path.into(),
        source,
    })?;
    mount(
        Some("bpf"),
        path,
        Some("bpf"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|source| BpffsError::Mount {
        path: path.into(),
        source,
    })?;
    info!(path = %path.display(), "mounted bpffs");
    Ok(())
}

/// Creates the pin directory (and bpffs, if needed).
pub fn prepare(bpffs: &Path, node: &str) -> Result<PathBuf, BpffsError> {
    ensure_mounted(bpffs)?;
    let dir = pin_dir(bpffs, node)?;
    std::fs::create_dir_all(&dir).map_err(|source| BpffsError::Io {
        what: "creating",
        path: dir.clone(),
        source,
    })?;
    Ok(dir)
}

/// Removes a node's pins: its programs detach once no process holds them, its maps go.
pub fn remove(bpffs: &Path, node: &str) -> Result<bool, BpffsError> {
    let dir = pin_dir(bpffs, node)?;
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(BpffsError::Io {
            what: "removing",
            path: dir,
            source,
        }),
    }
}

/// The nodes with a pin directory under `bpffs`.
pub fn nodes(bpffs: &Path) -> Result<Vec<String>, BpffsError> {
    let root = bpffs.join("ferrokube");
    let entries = match std::fs::read_dir(&root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(BpffsError::Io {
                what: "reading",
                path: root,
                source,
            });
        }
    };
    let mut nodes: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| validate_node(name).is_ok())
        .collect();
    nodes.sort();
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_are_one_safe_path_component() {
        for good in ["node-1", "worker.example.com", "a", "10.0.0.1"] {
            assert!(validate_node(good).is_ok(), "{good}");
        }
        for bad in [
            "", "..", "../etc", "a/b", "Node", "-a", "a-", ".a", "a..b", "a b",
        ] {
            assert!(validate_node(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            pin_dir(Path::new("/sys/fs/bpf"), "node-1").unwrap(),
            Path::new("/sys/fs/bpf/ferrokube/node-1")
        );
    }
}
