//! Project automation, run as `cargo xtask <command>`:
//! - `setup`: install what building and testing need on a fresh machine (idempotent),
//!   including the eBPF toolchain: nightly's `rust-src` and bpf-linker in `.tools/`;
//! - `up`: setup, build, and run the server in the foreground on the embedded store;
//! - `test`: setup, then everything CI runs (fmt, clippy, all test suites);
//! - `bench store`: the store benchmark, embedded against etcd in one run;
//! - `bench dataplane`: Service programming time, ferrokube's maps against kube-proxy's
//!   iptables layout (needs root).

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
    /// Time to program N Services (and one change): eBPF maps vs iptables-restore.
    Dataplane {
        /// Service counts, comma-separated.
        #[arg(long, default_value = "1,1000,10000,30000")]
        sizes: String,
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
];

/// Stable-toolchain components CI uses.
const RUSTUP_COMPONENTS: &[&str] = &["rustfmt", "clippy"];

/// The toolchain that builds the eBPF programs (`-Z build-std=core` needs nightly).
const EBPF_TOOLCHAIN: &str = "nightly";

/// The linker for `bpfel-unknown-none`, built against the eBPF toolchain's own libLLVM.
const BPF_LINKER_VERSION: &str = "0.13.0";

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
    setup_ebpf()
}

fn output(command: &mut Command) -> Result<String> {
    let out = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !out.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `rustup run <EBPF_TOOLCHAIN> <program>`.
fn nightly(program: &str) -> Command {
    let mut command = Command::new("rustup");
    command.args(["run", EBPF_TOOLCHAIN, program]);
    command
}

/// The eBPF toolchain (docs/architecture.md, "eBPF toolchain"): nightly with `rust-src`,
/// and bpf-linker built into `.tools/` against nightly's libLLVM. Rebuilds the linker when
/// it no longer runs (a nightly update renames the library it links to).
fn setup_ebpf() -> Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !toolchains.lines().any(|l| l.starts_with(EBPF_TOOLCHAIN)) {
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            EBPF_TOOLCHAIN,
            "--profile",
            "minimal",
        ]))?;
    }
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        EBPF_TOOLCHAIN,
    ]))?;
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            EBPF_TOOLCHAIN,
        ]))?;
    }

    let tools = root().join(".tools");
    let linker = tools.join("bin/bpf-linker");
    let works = Command::new(&linker)
        .arg("--version")
        .output()
        .map(|out| {
            out.status.success()
                && String::from_utf8_lossy(&out.stdout).contains(BPF_LINKER_VERSION)
        })
        .unwrap_or(false);
    if works {
        eprintln!("setup: bpf-linker {BPF_LINKER_VERSION} present in .tools/");
        return Ok(());
    }
    eprintln!("setup: building bpf-linker {BPF_LINKER_VERSION} into .tools/ (about a minute)");

    let sysroot = PathBuf::from(output(nightly("rustc").args(["--print", "sysroot"]))?.trim());
    let version = output(nightly("rustc").arg("-vV"))?;
    let major = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .map(str::to_string)
        .context("no LLVM version in `rustc -vV` of the nightly toolchain")?;
    let lib_dir = sysroot.join("lib");
    let libllvm = std::fs::read_dir(&lib_dir)
        .with_context(|| format!("reading {}", lib_dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("libLLVM.so.{major}")))
        })
        .min()
        .with_context(|| format!("no libLLVM.so.{major}* in {}", lib_dir.display()))?;
    // LLVM_PREFIX/lib/libLLVM.so -> nightly's library.
    let prefix = tools.join("llvm");
    let link = prefix.join("lib/libLLVM.so");
    std::fs::create_dir_all(prefix.join("lib"))?;
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&libllvm, &link)
        .with_context(|| format!("linking {} to {}", link.display(), libllvm.display()))?;

    let mut install = cargo();
    install
        .args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
            "--force",
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
            "--root",
        ])
        .arg(&tools)
        .env("LLVM_PREFIX", &prefix)
        .env(
            "RUSTFLAGS",
            format!("-C link-arg=-Wl,-rpath,{}", lib_dir.display()),
        )
        .env("CARGO_PROFILE_RELEASE_DEBUG", "0");
    run(&mut install)?;
    run(Command::new(&linker).arg("--version"))
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
    // The eBPF programs are their own (nightly) workspace: check their format too.
    run(cargo().args([
        "fmt",
        "--manifest-path",
        "ebpf/programs/Cargo.toml",
        "--check",
    ]))?;
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

fn bench(which: Bench) -> Result<()> {
    setup()?;
    match which {
        Bench::Store { seconds } => {
            let out = root().join("target/bench/store.json");
            let mut command = cargo();
            command
                .args([
                    "bench",
                    "--locked",
                    "-p",
                    "ferrokube-store",
                    "--bench",
                    "store",
                    "--",
                ])
                .arg("--out")
                .arg(&out)
                .arg("--seconds")
                .arg(seconds.to_string());
            run(&mut command)
        }
        Bench::Dataplane { sizes } => {
            let out = root().join("target/bench/dataplane.json");
            let mut command = cargo();
            command
                .args([
                    "bench",
                    "--locked",
                    "-p",
                    "ferrokube-proxy",
                    "--bench",
                    "dataplane",
                    "--",
                ])
                .arg("--out")
                .arg(&out)
                .args(["--sizes", &sizes]);
            run(&mut command)
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
