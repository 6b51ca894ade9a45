//! Loads the kernel programs, pins them and their maps under the node's bpffs directory,
//! and attaches the socket programs to a cgroup, or adopts what a previous run pinned.
//!
//! Adoption is what makes a restart gapless: pinned links stay attached while the agent
//! is down, pinned maps keep their contents, and the new agent reopens both instead of
//! replacing them. A pinned link that can no longer be opened is replaced.
//! (Known limit: adopted links keep the programs of the run that pinned them; a program
//! upgrade needs `ferrokube proxy reset` first.)

use std::fs::File;
use std::path::{Path, PathBuf};

use aya::programs::{CgroupAttachMode, CgroupSockAddr, links::FdLink, links::PinnedLink};
use aya::{Ebpf, EbpfLoader};
use ferrokube_ebpf_common::{map_names, program_names, sizes};
use tracing::{info, warn};

use crate::bpffs::{self, BpffsError};
use crate::maps::{KernelMaps, MapsError};

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
}

impl Default for Sizes {
    fn default() -> Self {
        Self {
            services: sizes::MAX_SERVICES,
            backends: sizes::MAX_BACKENDS,
            slots: sizes::MAX_SLOTS,
            revnat: sizes::MAX_REVNAT,
            affinity: sizes::MAX_AFFINITY,
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
}

impl Config {
    /// Defaults for `node` and `cgroup`.
    pub fn new(node: impl Into<String>, cgroup: impl Into<PathBuf>) -> Self {
        Self {
            node: node.into(),
            cgroup: cgroup.into(),
            bpffs: PathBuf::from(bpffs::DEFAULT_BPFFS),
            sizes: Sizes::default(),
        }
    }
}

/// The loaded programs (kept for the agent's lifetime) and how they came to be.
#[derive(Debug)]
pub struct Dataplane {
    _ebpf: Ebpf,
    pin_dir: PathBuf,
    adopted_links: usize,
}

const PROGRAMS: [&str; 4] = [
    program_names::CONNECT4,
    program_names::SENDMSG4,
    program_names::RECVMSG4,
    program_names::GETPEERNAME4,
];

impl Dataplane {
    /// Loads (or reopens) the maps and attaches (or adopts) the programs; returns the
    /// dataplane and its maps.
    pub fn load(config: &Config) -> Result<(Self, KernelMaps), LoadError> {
        let pin_dir = bpffs::prepare(&config.bpffs, &config.node)?;
        let sizes = config.sizes;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&pin_dir)
            .map_max_entries(map_names::SERVICES, sizes.services)
            .map_max_entries(map_names::SLOTS, sizes.slots)
            .map_max_entries(map_names::BACKENDS, sizes.backends)
            .map_max_entries(map_names::REVNAT, sizes.revnat)
            .map_max_entries(map_names::AFFINITY, sizes.affinity)
            .map_max_entries(map_names::SERVICE_STATS, sizes.services + 1)
            .map_max_entries(map_names::BACKEND_STATS, sizes.backends + 1)
            .load(OBJECT)?;
        let maps = KernelMaps::from_ebpf(&mut ebpf)?;
        let mut adopted_links = 0;
        let mut cgroup: Option<File> = None;
        for name in PROGRAMS {
            let link_path = pin_dir.join(format!("link_{name}"));
            if link_path.exists() {
                match PinnedLink::from_pin(&link_path) {
                    Ok(_) => {
                        adopted_links += 1;
                        continue;
                    }
                    Err(e) => {
                        warn!(path = %link_path.display(), error = %e, "replacing an unusable pinned link");
                        let _ = std::fs::remove_file(&link_path);
                    }
                }
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
        info!(
            node = %config.node,
            pins = %pin_dir.display(),
            adopted_links,
            "socket load balancer ready"
        );
        Ok((
            Self {
                _ebpf: ebpf,
                pin_dir,
                adopted_links,
            },
            maps,
        ))
    }

    /// The node's pin directory.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// How many program links were adopted from pins (4 on a restart, 0 on a first start).
    pub fn adopted_links(&self) -> usize {
        self.adopted_links
    }
}

fn attach(
    ebpf: &mut Ebpf,
    name: &'static str,
    cgroup: &File,
    link_path: &Path,
) -> Result<(), LoadError> {
    let program_error = |source| LoadError::Program { name, source };
    let program: &mut CgroupSockAddr = ebpf
        .program_mut(name)
        .ok_or(LoadError::MissingProgram(name))?
        .try_into()
        .map_err(program_error)?;
    program.load().map_err(program_error)?;
    let link_id = program
        .attach(cgroup, CgroupAttachMode::Single)
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
