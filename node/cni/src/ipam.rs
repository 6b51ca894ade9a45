//! Address management for one node's pod range, kept on disk.
//!
//! Layout of the state directory (one per network):
//! - `lock`: taken with `flock` (exclusive) around every read-modify-write, so concurrent
//!   plugin processes never hand out the same address;
//! - `<ip>` (e.g. `10.244.1.7`): one file per allocated address holding
//!   `containerID\nifname\n`, created with `O_EXCL` and fsynced before the address is
//!   returned;
//! - `last_reserved_ip`: where the next search starts, so a released address is not
//!   handed out again at once (round robin, as the reference `host-local` plugin does).
//!
//! The network address, the broadcast address and the gateway are never handed out.

use std::collections::{BTreeSet, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cidr::Ipv4Cidr;

/// Errors of the address manager.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// Every usable address of the range is allocated.
    #[error("range exhausted: no free address left in {range} ({allocated} allocated)")]
    Exhausted {
        /// The pod range.
        range: Ipv4Cidr,
        /// How many addresses are allocated.
        allocated: usize,
    },
    /// Another process held the state lock for longer than the lock timeout.
    #[error("the IPAM state lock {path} is busy (waited {waited:?})")]
    Busy {
        /// The lock file.
        path: PathBuf,
        /// How long we waited.
        waited: Duration,
    },
    /// Reading or writing the state directory failed.
    #[error("IPAM state {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> IpamError + '_ {
    move |source| IpamError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One allocated address and who holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// The address.
    pub ip: Ipv4Addr,
    /// `CNI_CONTAINERID` of the holder (empty when the record is unreadable).
    pub container_id: String,
    /// `CNI_IFNAME` of the holder.
    pub ifname: String,
}

/// The address manager of one pod range.
#[derive(Debug, Clone)]
pub struct Ipam {
    dir: PathBuf,
    range: Ipv4Cidr,
    gateway: Ipv4Addr,
    lock_timeout: Duration,
}

/// Holds the state lock until dropped (closing the file releases the `flock`).
#[derive(Debug)]
struct LockGuard {
    _file: File,
}

impl Ipam {
    /// The manager for `range` (whose `gateway` is reserved) with state in `dir`.
    pub fn new(dir: impl Into<PathBuf>, range: Ipv4Cidr, gateway: Ipv4Addr) -> Self {
        Ipam {
            dir: dir.into(),
            range,
            gateway,
            lock_timeout: Duration::from_secs(30),
        }
    }

    /// How long to wait for the state lock before failing with [`IpamError::Busy`].
    pub fn with_lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = timeout;
        self
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The pod range.
    pub fn range(&self) -> Ipv4Cidr {
        self.range
    }

    /// The reserved gateway address.
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    fn lock(&self) -> Result<LockGuard, IpamError> {
        fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let path = self.dir.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        // Wait in the kernel (a blocking flock on a helper thread) rather than polling,
        // so a crowd of concurrent ADDs is served without starving anyone; give up after
        // the timeout (the helper then releases the lock as soon as it gets it).
        let start = Instant::now();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("ipam-lock".into())
            .spawn(move || {
                let result = file.lock().map(|()| file);
                // If nobody waits any more, dropping the file releases the lock.
                let _ = tx.send(result);
            })
            .map_err(io(&path))?;
        match rx.recv_timeout(self.lock_timeout) {
            Ok(Ok(file)) => Ok(LockGuard { _file: file }),
            Ok(Err(e)) => Err(io(&path)(e)),
            Err(_) => Err(IpamError::Busy {
                path,
                waited: start.elapsed(),
            }),
        }
    }

    fn read_allocations(&self) -> Result<Vec<Allocation>, IpamError> {
        let mut out = Vec::new();
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io(&self.dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io(&self.dir))?;
            let Some(ip) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<Ipv4Addr>().ok())
            else {
                continue;
            };
            let path = entry.path();
            let text = match fs::read_to_string(&path) {
                Ok(text) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(&path)(e)),
            };
            let mut lines = text.lines();
            out.push(Allocation {
                ip,
                container_id: lines.next().unwrap_or_default().trim().to_string(),
                ifname: lines.next().unwrap_or_default().trim().to_string(),
            });
        }
        out.sort_by_key(|a| a.ip);
        Ok(out)
    }

    fn sync_dir(&self) -> Result<(), IpamError> {
        File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(io(&self.dir))
    }

    fn usable(&self, ip: Ipv4Addr) -> bool {
        self.range.contains(ip)
            && ip != self.gateway
            && ip != self.range.network()
            && ip != self.range.broadcast()
    }

    /// Allocates an address to `(container_id, ifname)`; returns the one it already holds
    /// when there is one (a retried ADD gets the same address).
    pub fn allocate(&self, container_id: &str, ifname: &str) -> Result<Ipv4Addr, IpamError> {
        let _lock = self.lock()?;
        let allocations = self.read_allocations()?;
        if let Some(held) = allocations
            .iter()
            .find(|a| a.container_id == container_id && a.ifname == ifname)
        {
            return Ok(held.ip);
        }
        let taken: BTreeSet<Ipv4Addr> = allocations.iter().map(|a| a.ip).collect();
        let last_path = self.dir.join("last_reserved_ip");
        let last: Option<Ipv4Addr> = fs::read_to_string(&last_path)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        let hosts: Vec<Ipv4Addr> = self.range.hosts().filter(|ip| self.usable(*ip)).collect();
        let start = last
            .and_then(|last| hosts.iter().position(|ip| *ip == last))
            .map(|i| i + 1)
            .unwrap_or(0);
        let candidate = (0..hosts.len())
            .map(|i| hosts[(start + i) % hosts.len()])
            .find(|ip| !taken.contains(ip));
        let Some(ip) = candidate else {
            return Err(IpamError::Exhausted {
                range: self.range,
                allocated: taken.len(),
            });
        };
        let path = self.dir.join(ip.to_string());
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io(&path))?;
        file.write_all(format!("{container_id}\n{ifname}\n").as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io(&path))?;
        fs::write(&last_path, ip.to_string()).map_err(io(&last_path))?;
        self.sync_dir()?;
        Ok(ip)
    }

    /// The address held by `(container_id, ifname)`, if any.
    pub fn find(&self, container_id: &str, ifname: &str) -> Result<Option<Ipv4Addr>, IpamError> {
        let _lock = self.lock()?;
        Ok(self
            .read_allocations()?
            .into_iter()
            .find(|a| a.container_id == container_id && a.ifname == ifname)
            .map(|a| a.ip))
    }

    /// Releases what `(container_id, ifname)` holds; returns the address, `None` when it
    /// held nothing (releasing twice is not an error).
    pub fn release(&self, container_id: &str, ifname: &str) -> Result<Option<Ipv4Addr>, IpamError> {
        let _lock = self.lock()?;
        let mut released = None;
        for a in self.read_allocations()? {
            if a.container_id == container_id && a.ifname == ifname {
                self.remove(a.ip)?;
                released = Some(a.ip);
            }
        }
        if released.is_some() {
            self.sync_dir()?;
        }
        Ok(released)
    }

    fn remove(&self, ip: Ipv4Addr) -> Result<(), IpamError> {
        let path = self.dir.join(ip.to_string());
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Every allocation, ordered by address.
    pub fn allocations(&self) -> Result<Vec<Allocation>, IpamError> {
        let _lock = self.lock()?;
        self.read_allocations()
    }

    /// Releases every allocation whose `(container_id, ifname)` is not in `valid`;
    /// returns what was released.
    pub fn gc(&self, valid: &HashSet<(String, String)>) -> Result<Vec<Allocation>, IpamError> {
        let _lock = self.lock()?;
        let mut released = Vec::new();
        for a in self.read_allocations()? {
            if !valid.contains(&(a.container_id.clone(), a.ifname.clone())) {
                self.remove(a.ip)?;
                released.push(a);
            }
        }
        if !released.is_empty() {
            self.sync_dir()?;
        }
        Ok(released)
    }

    /// How many addresses are still free.
    pub fn free(&self) -> Result<usize, IpamError> {
        let _lock = self.lock()?;
        let taken: HashSet<Ipv4Addr> = self.read_allocations()?.iter().map(|a| a.ip).collect();
        Ok(self
            .range
            .hosts()
            .filter(|ip| self.usable(*ip) && !taken.contains(ip))
            .count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipam(dir: &Path, cidr: &str) -> Ipam {
        let range: Ipv4Cidr = cidr.parse().unwrap();
        Ipam::new(dir, range, range.first_host().unwrap())
    }

    #[test]
    fn hands_out_usable_addresses_and_reports_exhaustion() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = ipam(dir.path(), "10.1.0.0/29"); // hosts .1-.6, .1 is the gateway
        let got: Vec<Ipv4Addr> = (0..5)
            .map(|i| ipam.allocate(&format!("c{i}"), "eth0").unwrap())
            .collect();
        let want: Vec<Ipv4Addr> = (2..=6).map(|d| Ipv4Addr::new(10, 1, 0, d)).collect();
        assert_eq!(got, want);
        assert_eq!(ipam.free().unwrap(), 0);
        let err = ipam.allocate("c9", "eth0").unwrap_err();
        assert!(
            matches!(err, IpamError::Exhausted { allocated: 5, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("range exhausted"));
    }

    #[test]
    fn same_holder_gets_same_address_and_release_round_robins() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = ipam(dir.path(), "10.1.0.0/24");
        let a = ipam.allocate("a", "eth0").unwrap();
        assert_eq!(ipam.allocate("a", "eth0").unwrap(), a);
        let b = ipam.allocate("a", "eth1").unwrap();
        assert_ne!(a, b);
        assert_eq!(ipam.release("a", "eth0").unwrap(), Some(a));
        assert_eq!(ipam.release("a", "eth0").unwrap(), None);
        // The released address is not reused immediately.
        let c = ipam.allocate("c", "eth0").unwrap();
        assert_ne!(c, a);
        assert_eq!(ipam.find("c", "eth0").unwrap(), Some(c));
        assert_eq!(ipam.find("a", "eth0").unwrap(), None);
    }

    #[test]
    fn gc_releases_only_invalid_attachments() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = ipam(dir.path(), "10.1.0.0/24");
        for id in ["keep", "leak1", "leak2"] {
            ipam.allocate(id, "eth0").unwrap();
        }
        let valid: HashSet<_> = [("keep".to_string(), "eth0".to_string())].into();
        let released = ipam.gc(&valid).unwrap();
        let mut ids: Vec<_> = released.iter().map(|a| a.container_id.as_str()).collect();
        ids.sort();
        assert_eq!(ids, ["leak1", "leak2"]);
        let left = ipam.allocations().unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].container_id, "keep");
    }

    #[test]
    fn concurrent_allocations_never_collide() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = ipam(dir.path(), "10.1.0.0/24");
        let handles: Vec<_> = (0..50)
            .map(|i| {
                let ipam = ipam.clone();
                std::thread::spawn(move || ipam.allocate(&format!("c{i}"), "eth0").unwrap())
            })
            .collect();
        let ips: HashSet<Ipv4Addr> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(ips.len(), 50);
    }

    #[test]
    fn busy_lock_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = ipam(dir.path(), "10.1.0.0/24").with_lock_timeout(Duration::from_millis(50));
        let held = ipam.lock().unwrap();
        let err = ipam.allocate("a", "eth0").unwrap_err();
        assert!(matches!(err, IpamError::Busy { .. }), "{err}");
        drop(held);
        ipam.allocate("a", "eth0").unwrap();
    }
}
