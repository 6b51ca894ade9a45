//! `ferrokube cni ...` and the multi-call entry: invoked as `ferrokube-cni`, this binary
//! is the CNI plugin.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;
use ferrokube_cni::Ipv4Cidr;
use ferrokube_cni::install::{InstallOptions, install};

/// The name under which the binary acts as the CNI plugin.
pub const PLUGIN_NAME: &str = "ferrokube-cni";

/// Whether argv[0] names the plugin (`ferrokube-cni`, whatever its directory).
pub fn invoked_as_plugin() -> bool {
    std::env::args_os()
        .next()
        .and_then(|arg0| Path::new(&arg0).file_name().map(|n| n == PLUGIN_NAME))
        .unwrap_or(false)
}

/// Runs the plugin: stdout carries only the CNI result or error object; logs go to
/// stderr, quiet unless `FERROKUBE_LOG` asks.
pub fn plugin_main() -> i32 {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FERROKUBE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    ferrokube_cni::plugin::main()
}

#[derive(Debug, Subcommand)]
pub enum CniCommand {
    /// Install the plugin (as DIR/ferrokube-cni) and write the runtime's conflist.
    Install {
        /// The runtime's CNI binary directory.
        #[arg(long, default_value = "/opt/cni/bin")]
        bin_dir: PathBuf,
        /// The runtime's CNI configuration directory.
        #[arg(long, default_value = "/etc/cni/net.d")]
        conf_dir: PathBuf,
        /// This node's pod CIDR, e.g. 10.244.1.0/24.
        #[arg(long)]
        pod_cidr: Ipv4Cidr,
        /// MTU of pod interfaces.
        #[arg(long, default_value_t = 1500)]
        mtu: u32,
        /// IPAM state directory (default: /var/lib/ferrokube/cni/networks/ferrokube).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

pub fn run(command: CniCommand) -> Result<()> {
    match command {
        CniCommand::Install {
            bin_dir,
            conf_dir,
            pod_cidr,
            mtu,
            data_dir,
        } => {
            let binary = std::env::current_exe().context("locating the running binary")?;
            let installed = install(&InstallOptions {
                binary,
                bin_dir,
                conf_dir,
                pod_cidr,
                mtu,
                data_dir,
            })?;
            println!("installed {}", installed.plugin.display());
            println!("wrote {}", installed.conflist.display());
            Ok(())
        }
    }
}
