//! `ferrokube cni install`: places the plugin binary and writes the network
//! configuration list a runtime (containerd, CRI-O) reads.
//!
//! When the reference `loopback` plugin is present (in the bin dir, or where Debian's
//! `containernetworking-plugins` puts it, `/usr/lib/cni`), it runs first so pods get `lo`
//! up; the list's `cniVersion` is then the newest version both plugins speak (the
//! reference plugins 1.1 stop at 1.0.0), asked from `loopback` itself with VERSION.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::cidr::Ipv4Cidr;
use crate::spec;

/// Where reference plugins are looked for besides the bin dir.
pub const REFERENCE_PLUGIN_DIRS: &[&str] = &["/usr/lib/cni", "/opt/cni/bin"];

/// The configuration list's file name.
pub const CONFLIST_NAME: &str = "10-ferrokube.conflist";

/// Errors installing the plugin.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// Copying the binary or writing the configuration failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |source| InstallError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What to install.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// The binary to install as `ferrokube-cni` (normally the running `ferrokube`).
    pub binary: PathBuf,
    /// The runtime's CNI bin dir.
    pub bin_dir: PathBuf,
    /// The runtime's CNI conf dir.
    pub conf_dir: PathBuf,
    /// The node's pod CIDR.
    pub pod_cidr: Ipv4Cidr,
    /// MTU of pod interfaces.
    pub mtu: u32,
    /// IPAM state directory (`dataDir`); `None` leaves the plugin's default.
    pub data_dir: Option<PathBuf>,
}

/// What was installed.
#[derive(Debug, Clone)]
pub struct Installed {
    /// The plugin binary.
    pub plugin: PathBuf,
    /// The configuration list.
    pub conflist: PathBuf,
    /// The configuration list's content.
    pub config: Value,
}

fn supported_by(plugin: &Path) -> Vec<String> {
    let output = Command::new(plugin)
        .env("CNI_COMMAND", "VERSION")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    let Ok(output) = output else {
        return Vec::new();
    };
    serde_json::from_slice::<Value>(&output.stdout)
        .ok()
        .and_then(|v| {
            v.get("supportedVersions")?.as_array().map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
        })
        .unwrap_or_default()
}

fn find_loopback(bin_dir: &Path) -> Option<PathBuf> {
    std::iter::once(bin_dir.to_path_buf())
        .chain(REFERENCE_PLUGIN_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join("loopback"))
        .find(|p| p.is_file())
}

/// Installs the plugin and its configuration list.
pub fn install(options: &InstallOptions) -> Result<Installed, InstallError> {
    std::fs::create_dir_all(&options.bin_dir).map_err(io(&options.bin_dir))?;
    std::fs::create_dir_all(&options.conf_dir).map_err(io(&options.conf_dir))?;
    let plugin = options.bin_dir.join("ferrokube-cni");
    let staged = options.bin_dir.join(".ferrokube-cni.new");
    std::fs::copy(&options.binary, &staged).map_err(io(&staged))?;
    // Rename over the old one: a runtime never executes a half-written binary.
    std::fs::rename(&staged, &plugin).map_err(io(&plugin))?;

    let mut plugins = Vec::new();
    let mut version = spec::CURRENT_VERSION.to_string();
    if let Some(loopback) = find_loopback(&options.bin_dir) {
        let theirs = supported_by(&loopback);
        if let Some(common) = spec::SUPPORTED_VERSIONS
            .iter()
            .rev()
            .find(|v| theirs.iter().any(|t| t == *v))
        {
            let in_bin_dir = options.bin_dir.join("loopback");
            if !in_bin_dir.exists() {
                std::os::unix::fs::symlink(&loopback, &in_bin_dir).map_err(io(&in_bin_dir))?;
            }
            version = (*common).to_string();
            plugins.push(json!({ "type": "loopback" }));
        }
    }
    let mut ours = json!({
        "type": "ferrokube-cni",
        "podCIDR": options.pod_cidr.to_string(),
        "mtu": options.mtu,
    });
    if let Some(dir) = &options.data_dir {
        ours["dataDir"] = json!(dir);
    }
    plugins.push(ours);
    let config = json!({ "cniVersion": version, "name": "ferrokube", "plugins": plugins });
    let conflist = options.conf_dir.join(CONFLIST_NAME);
    let staged = options.conf_dir.join(format!(".{CONFLIST_NAME}.new"));
    let text = serde_json::to_string_pretty(&config).unwrap_or_else(|_| config.to_string());
    std::fs::write(&staged, text + "\n").map_err(io(&staged))?;
    std::fs::rename(&staged, &conflist).map_err(io(&conflist))?;
    Ok(Installed {
        plugin,
        conflist,
        config,
    })
}
