//! Loads the kernel programs, pins them and their maps under the node's bpffs directory,
//! and attaches the socket programs to a cgroup and, given the node's external interface,
//! the tc programs to its ingress and egress (TCX links, kernel >= 6.6), or adopts what a
//! previous run pinned.
//!
//! Adoption is what makes a restart gapless: pinned links stay attached while the agent
//! is down, pinned maps keep their contents, and the new agent reopens both instead of
//! replacing them. A pinned link that can no longer be opened is replaced.
//! (Known limit: adopted links keep the programs of the run that pinned them; a program
//! upgrade needs `ferrokube proxy reset` first. Settings the programs read from the node
//! settings map, such as the log switch, apply to adopted programs at once.)

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use aya::maps::{Array, MapData};
use aya::programs::{
    CgroupAttachMode, CgroupSock, CgroupSockAddr, LinkOrder, SchedClassifier, TcAttachType, Xdp,
    XdpMode as AyaXdpMode, links::FdLink, links::PinnedLink, tc::TcAttachOptions,
};
use aya::{Ebpf, EbpfLoader};
use ferrokube_ebpf_common::{FAMILY_V4, NodeConfig, ct, maglev, map_names, program_names, sizes};
use tracing::{info, warn};

use crate::bpffs::{self, BpffsError};
use crate::bpflog::BpfLogs;
use crate::maps::{KernelMaps, MapsError};
use crate::model::LbAlgorithm;

/// aya-log's ring in the object (`aya_log_ebpf`'s `AYA_LOGS`), pinned under this name in
/// the node's pin directory so adopted programs and this run's log to the one ring this
/// run reads.
pub const BPF_LOG_RING: &str = "AYA_LOGS";

/// The object built from `ebpf/programs` by this crate's build script.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ferrokube-lb"));

/// Errors loading or attaching.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Preparing the pin directory failed.
    #[error(transparent)]
    Bpffs(#[from] BpffsError),
    /// The object could not be loaded (maps created or reopened).
    #[error("loading the eBPF object: {0}")]
    Object(#[from] aya::EbpfError),
    /// A program is missing from the object or has the wrong type.
    #[error("program {name}: {source}")]
    Program {
        /// The program.
        name: &'static str,
        /// Why.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// The object lacks a program this loader expects.
    #[error("program {0} is missing from the object")]
    MissingProgram(&'static str),
    /// Pinning a link failed.
    #[error("pinning {path}: {source}")]
    Pin {
        /// The pin path.
        path: PathBuf,
        /// Why.
        #[source]
        source: aya::pin::PinError,
    },
    /// A link could not be converted for pinning.
    #[error("link of {name}: {source}")]
    Link {
        /// The program.
        name: &'static str,
        /// Why.
        #[source]
        source: aya::programs::links::LinkError,
    },
    /// The cgroup could not be opened.
    #[error("opening cgroup {path}: {source}")]
    Cgroup {
        /// The cgroup directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The maps could not be opened.
    #[error(transparent)]
    Maps(#[from] MapsError),
    /// The external interface's addresses could not be read.
    #[error("reading the addresses of {interface}: {source}")]
    Interface {
        /// The interface.
        interface: String,
        /// Why.
        #[source]
        source: nix::Error,
    },
    /// The Maglev settings are invalid.
    #[error(transparent)]
    Maglev(#[from] crate::maglev::MaglevError),
    /// The pinned Maglev map was made for other settings (a `proxy reset` recreates it).
    #[error(
        "map {}: {found} entries pinned, {want} wanted for {tables} tables of {size}",
        map_names::MAGLEV
    )]
    MaglevMapSize {
        /// Entries of the pinned map.
        found: u32,
        /// Entries the settings need.
        want: u32,
        /// Tables asked for.
        tables: u32,
        /// Table size asked for.
        size: u16,
    },
    /// Writing the node settings map failed.
    #[error("map {}: {source}", map_names::NODE)]
    NodeMap {
        /// Why.
        #[source]
        source: aya::maps::MapError,
    },
}

/// Map sizes (entries).
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// Frontends.
    pub services: u32,
    /// Distinct backends.
    pub backends: u32,
    /// Backend slots over all frontends.
    pub slots: u32,
    /// Sockets remembered for reverse translation.
    pub revnat: u32,
    /// (client, Service) pairs remembered for session affinity.
    pub affinity: u32,
    /// Connection-tracking entries of the tc path.
    pub ct: u32,
}

impl Default for Sizes {
    fn default() -> Self {
        Self {
            services: sizes::MAX_SERVICES,
            backends: sizes::MAX_BACKENDS,
            slots: sizes::MAX_SLOTS,
            revnat: sizes::MAX_REVNAT,
            affinity: sizes::MAX_AFFINITY,
            ct: sizes::MAX_CT,
        }
    }
}

/// Source NAT of flows from outside to backends on other nodes (the tc path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snat {
    /// First source port.
    pub port_min: u16,
    /// Number of source ports (per backend address and port).
    pub ports: u16,
    /// A port whose flow closed (FIN/RST), or whose UDP flow went quiet, is reused after
    /// this many seconds.
    pub closed_reuse_secs: u32,
    /// A port whose TCP flow sent nothing for this many seconds is reused.
    pub idle_reuse_secs: u32,
}

impl Default for Snat {
    fn default() -> Self {
        Self {
            port_min: ct::SNAT_PORT_MIN,
            ports: ct::SNAT_PORTS,
            closed_reuse_secs: ct::SNAT_CLOSED_REUSE_SECS,
            idle_reuse_secs: ct::SNAT_IDLE_REUSE_SECS,
        }
    }
}

/// Where and how to run the dataplane.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's name: the pin directory is `<bpffs>/ferrokube/<node>/`.
    pub node: String,
    /// The cgroup (v2) whose sockets are load balanced.
    pub cgroup: PathBuf,
    /// The bpffs mount point.
    pub bpffs: PathBuf,
    /// Map sizes (used when the maps are created; pinned maps keep theirs).
    pub sizes: Sizes,
    /// The node's external interface: NodePort, ExternalIP and LoadBalancer IP traffic
    /// arriving on it is translated by the tc programs. `None`: socket LB only. The
    /// interface is looked up in the network namespace of the calling thread.
    pub interface: Option<String>,
    /// The node's addresses (NodePort frontends; the first is the SNAT address). Empty:
    /// the IPv4 addresses of `interface`.
    pub node_ips: Vec<Ipv4Addr>,
    /// SNAT ports and their reuse (written on every start).
    pub snat: Snat,
    /// The XDP fast path on `interface` (ignored without one).
    pub xdp: XdpMode,
    /// How external frontends pick backends for new flows unless their Service says
    /// otherwise (`service.cilium.io/lb-algorithm`).
    pub lb_algorithm: LbAlgorithm,
    /// Maglev lookup tables (used when the maps are created; pinned maps keep theirs).
    pub maglev: Maglev,
    /// The programs send aya-log records (socket programs: translation, refusal, reverse
    /// translation not recorded; tc and XDP: each new flow, and tc each refusal) to
    /// [`Dataplane::bpf_logs`]. Off by default: then each place that could log costs one
    /// array lookup. Written to the node settings map on every start, so it applies to
    /// adopted programs too.
    pub bpf_log: bool,
}

/// Maglev lookup-table settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Maglev {
    /// Entries per table, `M`: a prime, at least ~100 times the largest backend count
    /// for an imbalance within ~1 % (default 16381, like Cilium).
    pub size: u16,
    /// How many external frontends may use Maglev on this node.
    pub tables: u32,
}

impl Default for Maglev {
    fn default() -> Self {
        Self {
            size: maglev::DEFAULT_SIZE,
            tables: maglev::DEFAULT_TABLES,
        }
    }
}

/// How the XDP NodePort fast path is attached to the external interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XdpMode {
    /// Not at all: tc handles every packet.
    #[default]
    Off,
    /// In the driver (native XDP); falls back to generic with a warning when the driver
    /// refuses.
    Native,
    /// In the stack, after an skb is built (works on any interface, slower).
    Generic,
}

impl std::str::FromStr for XdpMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(Self::Off),
            "native" => Ok(Self::Native),
            "generic" => Ok(Self::Generic),
            other => Err(format!(
                "unknown XDP mode {other:?}: want native, generic or off"
            )),
        }
    }
}

impl std::fmt::Display for XdpMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Off => "off",
            Self::Native => "native",
            Self::Generic => "generic",
        })
    }
}

/// The pin file of the XDP link in a node's pin directory.
pub fn xdp_link_path(pin_dir: &Path) -> PathBuf {
    pin_dir.join(format!("link_{}", program_names::XDP))
}

impl Config {
    /// Defaults for `node` and `cgroup`.
    pub fn new(node: impl Into<String>, cgroup: impl Into<PathBuf>) -> Self {
        Self {
            node: node.into(),
            cgroup: cgroup.into(),
            bpffs: PathBuf::from(bpffs::DEFAULT_BPFFS),
            sizes: Sizes::default(),
            interface: None,
            node_ips: Vec::new(),
            snat: Snat::default(),
            xdp: XdpMode::Off,
            lb_algorithm: LbAlgorithm::Random,
            maglev: Maglev::default(),
            bpf_log: false,
        }
    }
}

/// The loaded programs (kept for the agent's lifetime) and how they came to be.
#[derive(Debug)]
pub struct Dataplane {
    _ebpf: Ebpf,
    bpf_logs: Option<BpfLogs>,
    pin_dir: PathBuf,
    adopted_links: usize,
    node_ips: Vec<Ipv4Addr>,
    xdp: Option<XdpMode>,
}

const TC_PROGRAMS: [(&str, TcAttachType); 2] = [
    (program_names::TC_INGRESS, TcAttachType::Ingress),
    (program_names::TC_EGRESS, TcAttachType::Egress),
];

/// The programs attached to the cgroup: the socket LB's sock_addr hooks, then
/// sock_release (which cleans up after them).
const PROGRAMS: [&str; 5] = [
    program_names::CONNECT4,
    program_names::SENDMSG4,
    program_names::RECVMSG4,
    program_names::GETPEERNAME4,
    program_names::SOCK_RELEASE,
];

impl Dataplane {
    /// Loads (or reopens) the maps and attaches (or adopts) the programs; returns the
    /// dataplane and its maps.
    pub fn load(config: &Config) -> Result<(Self, KernelMaps), LoadError> {
        let pin_dir = bpffs::prepare(&config.bpffs, &config.node)?;
        let sizes = config.sizes;
        crate::maglev::check_size(config.maglev.size)?;
        let maglev_entries = config
            .maglev
            .tables
            .saturating_add(1)
            .saturating_mul(u32::from(config.maglev.size));
        let log_ring = pin_dir.join(BPF_LOG_RING);
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&pin_dir)
            .map_pin_path(BPF_LOG_RING, log_ring.as_path())
            .map_max_entries(map_names::SERVICES, sizes.services)
            .map_max_entries(map_names::SLOTS, sizes.slots)
            .map_max_entries(map_names::BACKENDS, sizes.backends)
            .map_max_entries(map_names::REVNAT, sizes.revnat)
            .map_max_entries(map_names::AFFINITY, sizes.affinity)
            .map_max_entries(map_names::CLIENT_AFFINITY, sizes.affinity)
            .map_max_entries(map_names::CT, sizes.ct)
            .map_max_entries(map_names::SERVICE_STATS, sizes.services + 1)
            .map_max_entries(map_names::BACKEND_STATS, sizes.backends + 1)
            .map_max_entries(map_names::MAGLEV, maglev_entries)
            .load(OBJECT)?;
        let bpf_logs = match BpfLogs::open(&mut ebpf) {
            Ok(logs) => Some(logs),
            Err(e) => {
                warn!(error = %e, "the programs' log records cannot be read");
                None
            }
        };
        check_maglev_map(&ebpf, maglev_entries, config.maglev)?;
        let node_ips = match (&config.interface, config.node_ips.is_empty()) {
            (Some(interface), true) => interface_ipv4s(interface)?,
            _ => config.node_ips.clone(),
        };
        write_node_config(
            &mut ebpf,
            node_ips.first().copied(),
            config.snat,
            config.maglev.size,
            config.bpf_log,
        )?;
        let maps = KernelMaps::from_ebpf(&mut ebpf)?;
        let mut adopted_links = 0;
        let mut xdp = None;
        let mut cgroup: Option<File> = None;
        for name in PROGRAMS {
            let link_path = pin_dir.join(format!("link_{name}"));
            if adopt(&link_path) {
                adopted_links += 1;
                continue;
            }
            let cgroup = match &cgroup {
                Some(file) => file,
                None => cgroup.insert(File::open(&config.cgroup).map_err(|source| {
                    LoadError::Cgroup {
                        path: config.cgroup.clone(),
                        source,
                    }
                })?),
            };
            attach(&mut ebpf, name, cgroup, &link_path)?;
        }
        if let Some(interface) = &config.interface {
            for (name, attach_type) in TC_PROGRAMS {
                let link_path = pin_dir.join(format!("link_{name}"));
                if adopt(&link_path) {
                    adopted_links += 1;
                    continue;
                }
                attach_tc(&mut ebpf, name, interface, attach_type, &link_path)?;
            }
            if config.xdp != XdpMode::Off {
                let link_path = xdp_link_path(&pin_dir);
                if adopt(&link_path) {
                    adopted_links += 1;
                } else {
                    xdp = Some(attach_xdp(&mut ebpf, interface, config.xdp, &link_path)?);
                }
            }
        }
        info!(
            node = %config.node,
            pins = %pin_dir.display(),
            interface = config.interface.as_deref().unwrap_or("-"),
            ?node_ips,
            adopted_links,
            xdp = %xdp.map_or_else(|| "-".to_string(), |m: XdpMode| m.to_string()),
            "eBPF dataplane ready"
        );
        Ok((
            Self {
                _ebpf: ebpf,
                bpf_logs,
                pin_dir,
                adopted_links,
                node_ips,
                xdp,
            },
            maps,
        ))
    }

    /// The reader of the programs' log records (see [`Config::bpf_log`]); `None` if the
    /// ring could not be opened or was taken.
    pub fn bpf_logs(&mut self) -> Option<&mut BpfLogs> {
        self.bpf_logs.as_mut()
    }

    /// Takes the log reader (to poll it elsewhere).
    pub fn take_bpf_logs(&mut self) -> Option<BpfLogs> {
        self.bpf_logs.take()
    }

    /// The node addresses in use (given, or read from the external interface).
    pub fn node_ips(&self) -> &[Ipv4Addr] {
        &self.node_ips
    }

    /// The node's pin directory.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// How many program links were adopted from pins (5, or 7 with an external
    /// interface, 8 with XDP too, on a restart; 0 on a first start).
    pub fn adopted_links(&self) -> usize {
        self.adopted_links
    }

    /// The mode the XDP program was attached in by this run (`None`: not attached by this
    /// run: off, or adopted from a pin).
    pub fn xdp_attached(&self) -> Option<XdpMode> {
        self.xdp
    }
}

/// Attaches the XDP fast path in `mode` (native falls back to generic with a warning)
/// and pins the link; returns the mode it runs in.
fn attach_xdp(
    ebpf: &mut Ebpf,
    interface: &str,
    mode: XdpMode,
    link_path: &Path,
) -> Result<XdpMode, LoadError> {
    let name = program_names::XDP;
    let program_error = |source| LoadError::Program { name, source };
    let program: &mut Xdp = ebpf
        .program_mut(name)
        .ok_or(LoadError::MissingProgram(name))?
        .try_into()
        .map_err(program_error)?;
    program.load().map_err(program_error)?;
    let (link_id, used) = match mode {
        XdpMode::Native => match program.attach(interface, AyaXdpMode::Driver) {
            Ok(id) => (id, XdpMode::Native),
            Err(e) => {
                warn!(interface, error = %e, "native XDP refused; falling back to generic XDP");
                let id = program
                    .attach(interface, AyaXdpMode::Skb)
                    .map_err(program_error)?;
                (id, XdpMode::Generic)
            }
        },
        _ => (
            program
                .attach(interface, AyaXdpMode::Skb)
                .map_err(program_error)?,
            XdpMode::Generic,
        ),
    };
    let link = program.take_link(link_id).map_err(program_error)?;
    let link: FdLink = link
        .try_into()
        .map_err(|source| LoadError::Link { name, source })?;
    link.pin(link_path).map_err(|source| LoadError::Pin {
        path: link_path.into(),
        source,
    })?;
    Ok(used)
}

/// A pass-through XDP program on a veth, attached (native) while this value lives.
///
/// A veth hands the frames its peer sends with native `XDP_TX` to its own receive queue,
/// whose NAPI the kernel schedules for them only when this veth has an XDP program
/// (`veth_xdp_flush`); without one they wait for unrelated traffic. Where the external
/// interface is a veth (labs, benchmarks, nested setups), attach this to its peer. It
/// loads its own copy of the object, with maps of one entry pinned in a scratch directory
/// of bpffs only while loading (aya pins maps declared pinned), and removed at once.
#[derive(Debug)]
pub struct XdpPass {
    _ebpf: Ebpf,
}

impl XdpPass {
    /// Attaches to `interface` (in the calling thread's network namespace); `bpffs` is
    /// the bpffs mount point (mounted when missing).
    pub fn attach(interface: &str, bpffs: &Path) -> Result<Self, LoadError> {
        static SCRATCH: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let name = program_names::XDP_PASS;
        let program_error = |source| LoadError::Program { name, source };
        bpffs::ensure_mounted(bpffs)?;
        let scratch = bpffs.join(format!(
            "ferrokube-xdp-pass-{}-{}",
            std::process::id(),
            SCRATCH.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&scratch).map_err(|source| BpffsError::Io {
            what: "creating",
            path: scratch.clone(),
            source,
        })?;
        let loaded = Self::load(&scratch);
        let _ = std::fs::remove_dir_all(&scratch);
        let mut ebpf = loaded?;
        let program: &mut Xdp = ebpf
            .program_mut(name)
            .ok_or(LoadError::MissingProgram(name))?
            .try_into()
            .map_err(program_error)?;
        program.load().map_err(program_error)?;
        program
            .attach(interface, AyaXdpMode::Driver)
            .map_err(program_error)?;
        Ok(Self { _ebpf: ebpf })
    }

    fn load(scratch: &Path) -> Result<Ebpf, LoadError> {
        // Every map at its smallest: nothing here uses them.
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(scratch);
        for map in [
            map_names::SERVICES,
            map_names::SLOTS,
            map_names::BACKENDS,
            map_names::REVNAT,
            map_names::AFFINITY,
            map_names::CLIENT_AFFINITY,
            map_names::CT,
            map_names::SERVICE_STATS,
            map_names::BACKEND_STATS,
            map_names::MAGLEV,
        ] {
            loader.map_max_entries(map, 1);
        }
        Ok(loader.load(OBJECT)?)
    }
}

/// The XDP fast path's counters, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XdpCounters {
    /// Client-to-backend packets translated and sent out.
    pub forward: u64,
    /// Backend-to-client packets translated and sent out.
    pub reverse: u64,
    /// Packets of flows to remote backends left to tc.
    pub fallback: u64,
    /// New flows to remote backends picked and recorded by XDP.
    pub new_flows: u64,
}

/// Reads the XDP counters pinned in `pin_dir`.
pub fn xdp_counters(pin_dir: &Path) -> Result<XdpCounters, MapsError> {
    use aya::maps::{Map, PerCpuArray};
    use ferrokube_ebpf_common::stats::xdp;
    let name = map_names::XDP_STATS;
    let kernel = |source| MapsError::Kernel { map: name, source };
    let data = MapData::from_pin(pin_dir.join(name)).map_err(kernel)?;
    let array: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(Map::PerCpuArray(data)).map_err(kernel)?;
    let sum = |index: u32| -> Result<u64, MapsError> {
        Ok(array.get(&index, 0).map_err(kernel)?.iter().sum())
    };
    Ok(XdpCounters {
        forward: sum(xdp::FORWARD)?,
        reverse: sum(xdp::REVERSE)?,
        fallback: sum(xdp::FALLBACK)?,
        new_flows: sum(xdp::NEW)?,
    })
}

fn attach(
    ebpf: &mut Ebpf,
    name: &'static str,
    cgroup: &File,
    link_path: &Path,
) -> Result<(), LoadError> {
    let program_error = |source| LoadError::Program { name, source };
    let program = ebpf
        .program_mut(name)
        .ok_or(LoadError::MissingProgram(name))?;
    // The two cgroup program types share these calls but no trait.
    macro_rules! load_and_attach {
        ($kind:ty) => {{
            let program: &mut $kind = program.try_into().map_err(program_error)?;
            program.load().map_err(program_error)?;
            let link_id = program
                .attach(cgroup, CgroupAttachMode::Single)
                .map_err(program_error)?;
            let link = program.take_link(link_id).map_err(program_error)?;
            link.try_into()
                .map_err(|source| LoadError::Link { name, source })?
        }};
    }
    let link: FdLink = if name == program_names::SOCK_RELEASE {
        load_and_attach!(CgroupSock)
    } else {
        load_and_attach!(CgroupSockAddr)
    };
    link.pin(link_path).map_err(|source| LoadError::Pin {
        path: link_path.into(),
        source,
    })?;
    Ok(())
}

/// A pinned Maglev map keeps the size it was made with: it must fit the settings.
fn check_maglev_map(ebpf: &Ebpf, want: u32, maglev: Maglev) -> Result<(), LoadError> {
    let found = match ebpf.map(map_names::MAGLEV) {
        Some(aya::maps::Map::Array(data)) => data.info().map(|i| i.max_entries()).unwrap_or(0),
        _ => return Err(LoadError::Maps(MapsError::Missing(map_names::MAGLEV))),
    };
    if found != want {
        return Err(LoadError::MaglevMapSize {
            found,
            want,
            tables: maglev.tables,
            size: maglev.size,
        });
    }
    Ok(())
}

/// Reopens a pinned link; removes a pin that no longer opens. True when adopted.
fn adopt(link_path: &Path) -> bool {
    if !link_path.exists() {
        return false;
    }
    match PinnedLink::from_pin(link_path) {
        Ok(_) => true,
        Err(e) => {
            warn!(path = %link_path.display(), error = %e, "replacing an unusable pinned link");
            let _ = std::fs::remove_file(link_path);
            false
        }
    }
}

/// Attaches a tc program as a TCX link (kernel >= 6.6) and pins the link: it stays
/// attached while pinned, like the cgroup links, and coexists with other TCX programs.
fn attach_tc(
    ebpf: &mut Ebpf,
    name: &'static str,
    interface: &str,
    attach_type: TcAttachType,
    link_path: &Path,
) -> Result<(), LoadError> {
    let program_error = |source| LoadError::Program { name, source };
    let program: &mut SchedClassifier = ebpf
        .program_mut(name)
        .ok_or(LoadError::MissingProgram(name))?
        .try_into()
        .map_err(program_error)?;
    program.load().map_err(program_error)?;
    let link_id = program
        .attach_with_options(
            interface,
            attach_type,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .map_err(program_error)?;
    let link = program.take_link(link_id).map_err(program_error)?;
    let link: FdLink = link
        .try_into()
        .map_err(|source| LoadError::Link { name, source })?;
    link.pin(link_path).map_err(|source| LoadError::Pin {
        path: link_path.into(),
        source,
    })?;
    Ok(())
}

/// The IPv4 addresses of `interface` (in the calling thread's network namespace).
fn interface_ipv4s(interface: &str) -> Result<Vec<Ipv4Addr>, LoadError> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(|source| LoadError::Interface {
        interface: interface.into(),
        source,
    })?;
    Ok(addrs
        .filter(|a| a.interface_name == interface)
        .filter_map(|a| a.address?.as_sockaddr_in().map(|sin| sin.ip()))
        .collect())
}

/// Writes the node settings (the SNAT address and ports, the Maglev table size, the log
/// switch) for the programs, adopted ones included.
fn write_node_config(
    ebpf: &mut Ebpf,
    snat_addr: Option<Ipv4Addr>,
    snat: Snat,
    maglev_size: u16,
    log: bool,
) -> Result<(), LoadError> {
    let map = ebpf
        .map_mut(map_names::NODE)
        .ok_or(LoadError::Maps(MapsError::Missing(map_names::NODE)))?;
    let mut array: Array<&mut MapData, NodeConfig> =
        Array::try_from(map).map_err(|source| LoadError::NodeMap { source })?;
    let ports = NodeConfig {
        snat_port_min: snat.port_min,
        snat_ports: snat.ports.min(u16::MAX - snat.port_min.saturating_sub(1)),
        closed_reuse_secs: snat.closed_reuse_secs,
        idle_reuse_secs: snat.idle_reuse_secs,
        maglev_size,
        log: u8::from(log),
        ..NodeConfig::default()
    };
    let value = match snat_addr.map(IpAddr::V4) {
        Some(IpAddr::V4(v4)) => NodeConfig {
            snat_addr: [u32::from_ne_bytes(v4.octets()), 0, 0, 0],
            family: FAMILY_V4,
            ..ports
        },
        _ => ports,
    };
    array
        .set(0, value, 0)
        .map_err(|source| LoadError::NodeMap { source })
}
