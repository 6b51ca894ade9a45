//! Lab network namespaces for tests that touch the network.
//!
//! A [`Netns`] is a named namespace under `/run/netns` whose name carries the test
//! process id and a per-process counter (parallel tests never collide); dropping it
//! deletes it, and with it every interface inside (veth peers included), pass or fail.
//! Nothing here creates anything in the caller's own namespace.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail};
use nix::sched::CloneFlags;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A network namespace created for one test, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `fk<pid>-<n>-<tag>` (`tag` is cut so the name stays short) with `lo` up.
    pub fn new(tag: &str) -> Result<Netns> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tag: String = tag.chars().take(12).collect();
        let name = format!("fk{}-{n}-{tag}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name])).with_context(|| {
            format!("creating netns {name} (tests that touch the network need root)")
        })?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Keeps the namespace past this value's life (for `cargo xtask lab up`): returns its
    /// name; deleting it is then the caller's job ([`delete_named`]).
    pub fn persist(self) -> String {
        let this = std::mem::ManuallyDrop::new(self);
        this.name.clone()
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs `ip -n <name> ARGS...`; fails on a non-zero exit.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let out = run(Command::new("ip").arg("-n").arg(&self.name).args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A command run inside the namespace through `nsenter --net` (which, unlike
    /// `ip netns exec`, leaves /sys alone).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net={}", self.path().display()))
            .arg("--")
            .arg(program);
        command
    }

    /// Sets `net.ipv4.ip_forward` inside the namespace (a new namespace starts with it
    /// off). `/proc/sys/net` shows the namespace of the thread that opens it.
    pub fn enable_forwarding(&self) -> Result<()> {
        const KNOB: &str = "/proc/sys/net/ipv4/ip_forward";
        let value = self.run_in(|| {
            std::fs::write(KNOB, "1").with_context(|| format!("writing {KNOB}"))?;
            Ok(std::fs::read_to_string(KNOB)?)
        })?;
        if value.trim() != "1" {
            bail!("{KNOB} reads {value:?} after enabling it in {}", self.name);
        }
        Ok(())
    }

    /// Turns transmit checksum offload off for a veth in this namespace (`ethtool -K IF
    /// tx off`): what it sends then carries complete checksums, as on a real wire. A
    /// veth otherwise passes the sender's partial checksum along (`CHECKSUM_PARTIAL`),
    /// which native XDP cannot see and a frame it sends with `XDP_TX` loses, so the
    /// receiver finds a bad checksum and drops it.
    pub fn disable_tx_checksum(&self, interface: &str) -> Result<()> {
        let name = interface.to_string();
        self.run_in(move || ethtool_set(&name, ETHTOOL_STXCSUM, 0))
    }

    /// Runs `f` on a new thread that has entered this namespace (sockets it opens live
    /// there) and returns its result.
    pub fn run_in<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let path = self.path();
        std::thread::spawn(move || -> Result<T> {
            enter_current_thread(&path)?;
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread in netns panicked"))?
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = run(Command::new("ip").args(["netns", "del", &self.name])) {
            eprintln!("warning: deleting netns {}: {e:#}", self.name);
        }
    }
}

/// Deletes the namespace `name` made by [`Netns::new`] and kept by [`Netns::persist`]
/// (with every interface inside it). Refuses names [`Netns::new`] does not make.
pub fn delete_named(name: &str) -> Result<()> {
    let ours = name.strip_prefix("fk").is_some_and(|rest| {
        rest.split('-')
            .next()
            .is_some_and(|pid| !pid.is_empty() && pid.chars().all(|c| c.is_ascii_digit()))
    });
    if !ours || name.contains('/') {
        bail!("{name:?} is not a lab namespace name");
    }
    run(Command::new("ip").args(["netns", "del", name]))?;
    Ok(())
}

/// Moves the calling thread into the network namespace at `path` (use it on threads of
/// your own, never on a test's main thread).
pub fn enter_current_thread(path: &std::path::Path) -> Result<()> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    nix::sched::setns(&file, CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("setns {}", path.display()))
}

/// Connects two namespaces with a veth pair (`a_if` in `a`, `b_if` in `b`), created
/// inside `a` with the peer placed straight into `b`: it never exists in the caller's
/// namespace.
pub fn connect(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> Result<()> {
    a.ip(&[
        "link",
        "add",
        a_if,
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ])?;
    a.ip(&["link", "set", a_if, "up"])?;
    b.ip(&["link", "set", b_if, "up"])?;
    Ok(())
}

fn run(command: &mut Command) -> Result<Output> {
    let out = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !out.status.success() {
        bail!(
            "{command:?} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

const ETHTOOL_STXCSUM: u32 = 0x17;

/// `SIOCETHTOOL` with a set command (`ETHTOOL_S*`, a `struct ethtool_value`) on
/// `interface` (in the calling thread's namespace).
#[allow(unsafe_code)]
fn ethtool_set(interface: &str, cmd: u32, data: u32) -> Result<()> {
    use std::os::fd::AsRawFd as _;
    use std::os::fd::FromRawFd as _;
    use std::os::fd::OwnedFd;

    const SIOCETHTOOL: u64 = 0x8946;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        data: *mut EthtoolValue,
        pad: [u8; 16],
    }
    let bytes = interface.as_bytes();
    if bytes.len() >= 16 {
        bail!("interface name {interface:?} too long");
    }
    let mut value = EthtoolValue { cmd, data };
    let mut request = IfReq {
        name: [0; 16],
        data: &mut value,
        pad: [0; 16],
    };
    request.name[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: plain socket(2); the descriptor is owned at once.
    let fd = unsafe { nix::libc::socket(nix::libc::AF_INET, nix::libc::SOCK_DGRAM, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("socket for SIOCETHTOOL");
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `request` is a valid `struct ifreq` pointing at a valid `ethtool_value`,
    // both alive across the call.
    let rc = unsafe { nix::libc::ioctl(socket.as_raw_fd(), SIOCETHTOOL as _, &mut request) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("ethtool command {cmd:#x} on {interface}"));
    }
    Ok(())
}
