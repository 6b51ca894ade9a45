//! The programs' aya-log records (`ferrokube proxy --bpf-log`), forwarded to `tracing`.
//!
//! The programs log only while the `log` byte of the node settings map is set
//! (`Config::bpf_log`, written on every start, so adopted programs follow it too). Their
//! ring (`AYA_LOGS`) is pinned in the node's pin directory, so adopted programs and
//! freshly loaded ones write to the ring this run reads. The reader is opened on every
//! start, so an empty [`BpfLogs::flush`] also shows that logging is off.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::{Arc, Mutex};

use aya::Ebpf;
use aya_log::EbpfLogger;

/// The tracing target of forwarded records.
pub const TARGET: &str = "ferrokube_proxy::bpf";

/// Errors opening the programs' log ring.
#[derive(Debug, thiserror::Error)]
#[error("opening the programs' log ring (AYA_LOGS): {0}")]
pub struct BpfLogError(#[from] aya_log::Error);

/// Records read by one flush, shared with the logger (which is called with `&self`).
type Lines = Arc<Mutex<Vec<(log::Level, String)>>>;

/// Collects the records of one flush.
struct Collect(Lines);

impl log::Log for Collect {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        if let Ok(mut lines) = self.0.lock() {
            lines.push((record.level(), record.args().to_string()));
        }
    }

    fn flush(&self) {}
}

/// The reader of the programs' log ring. Readable (see [`AsFd`]) when records wait.
pub struct BpfLogs {
    logger: EbpfLogger<Collect>,
    lines: Lines,
}

impl std::fmt::Debug for BpfLogs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BpfLogs").finish_non_exhaustive()
    }
}

impl BpfLogs {
    /// Takes the log ring of a freshly loaded object.
    pub(crate) fn open(ebpf: &mut Ebpf) -> Result<Self, BpfLogError> {
        let lines = Lines::default();
        Ok(Self {
            logger: EbpfLogger::init_with_logger(ebpf, Collect(lines.clone()))?,
            lines,
        })
    }

    /// Reads the waiting records, sends each to `tracing` (target [`TARGET`]) and returns
    /// their text.
    pub fn flush(&mut self) -> Vec<String> {
        self.logger.flush();
        let Ok(mut lines) = self.lines.lock() else {
            return Vec::new();
        };
        lines
            .drain(..)
            .map(|(level, line)| {
                match level {
                    log::Level::Error => tracing::error!(target: TARGET, "{line}"),
                    log::Level::Warn => tracing::warn!(target: TARGET, "{line}"),
                    log::Level::Info => tracing::info!(target: TARGET, "{line}"),
                    log::Level::Debug => tracing::debug!(target: TARGET, "{line}"),
                    log::Level::Trace => tracing::trace!(target: TARGET, "{line}"),
                }
                line
            })
            .collect()
    }
}

impl AsFd for BpfLogs {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.logger.as_fd()
    }
}

impl AsRawFd for BpfLogs {
    fn as_raw_fd(&self) -> RawFd {
        self.logger.as_raw_fd()
    }
}
