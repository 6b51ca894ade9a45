//! Running netlink work inside a network namespace.
//!
//! A netlink socket belongs to the namespace of the thread that opens it, and `setns`
//! changes the namespace of the calling thread only. So each piece of work runs on a
//! fresh thread that enters the namespace (through `nix`'s safe `setns`), opens its own
//! rtnetlink connection on a single-threaded runtime, and ends with the work: no other
//! thread ever runs in the wrong namespace.

use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use rtnetlink::Handle;

/// Errors entering a namespace or reaching netlink.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The namespace file does not exist (or is not a namespace).
    #[error("network namespace {path} does not exist")]
    Missing {
        /// The namespace path.
        path: PathBuf,
    },
    /// Opening the namespace file or `setns` failed.
    #[error("entering network namespace {path}: {reason}")]
    Enter {
        /// The namespace path.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// Starting the runtime, the thread or the netlink socket failed.
    #[error("netlink setup: {0}")]
    Setup(String),
}

/// Runs `work` with an rtnetlink handle opened in the namespace at `netns` (the caller's
/// namespace when `None`), on a dedicated thread.
pub fn with_netlink<T, F, Fut>(netns: Option<&Path>, work: F) -> Result<T, NetnsError>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = T>,
{
    let netns = netns.map(Path::to_path_buf);
    let thread = std::thread::Builder::new()
        .name("netns".into())
        .spawn(move || -> Result<T, NetnsError> {
            if let Some(path) = &netns {
                let file = File::open(path).map_err(|e| {
                    if e.kind() == std::io::ErrorKind::NotFound {
                        NetnsError::Missing { path: path.clone() }
                    } else {
                        NetnsError::Enter {
                            path: path.clone(),
                            reason: e.to_string(),
                        }
                    }
                })?;
                nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| {
                    NetnsError::Enter {
                        path: path.clone(),
                        reason: format!("setns: {e}"),
                    }
                })?;
            }
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()
                .map_err(|e| NetnsError::Setup(e.to_string()))?;
            runtime.block_on(async move {
                let (connection, handle, _) =
                    rtnetlink::new_connection().map_err(|e| NetnsError::Setup(e.to_string()))?;
                let task = tokio::spawn(connection);
                let out = work(handle).await;
                task.abort();
                Ok(out)
            })
        })
        .map_err(|e| NetnsError::Setup(e.to_string()))?;
    thread
        .join()
        .map_err(|_| NetnsError::Setup("netns worker thread panicked".into()))?
}

/// Whether `path` exists and is a network namespace we can open.
pub fn exists(path: &Path) -> bool {
    File::open(path).is_ok()
}
