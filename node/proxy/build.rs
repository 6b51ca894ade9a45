//! Builds the kernel programs (`ebpf/programs`) with aya-build: nightly, `-Z build-std=core`,
//! target `bpfel-unknown-none`, linked by the bpf-linker that `cargo xtask setup` builds
//! into `.tools/` (configured in `.cargo/config.toml`).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    if let Err(e) = build() {
        // Fails the build with just this message (no panic backtrace).
        println!("cargo::error={}", format!("{e:#}").replace('\n', " "));
    }
}

fn build() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest_dir.join("../..").canonicalize()?;
    let programs = root.join("ebpf/programs");
    let linker = root.join(".tools/bin/bpf-linker");
    println!("cargo:rerun-if-changed={}", linker.display());
    println!(
        "cargo:rerun-if-changed={}",
        root.join("ebpf/common").display()
    );
    if std::env::var_os("AYA_BUILD_SKIP").is_none() {
        let works = Command::new(&linker)
            .arg("--version")
            .output()
            .map(|out| out.status.success())
            .unwrap_or(false);
        if !works {
            anyhow::bail!(
                "{} is missing or broken: the eBPF programs need it. Run `cargo xtask setup` \
                 (it adds nightly's rust-src and builds bpf-linker 0.13.0 into .tools/).",
                linker.display()
            );
        }
    }
    // aya-build runs `cargo build --package ...` in the current directory; the programs
    // are their own workspace (nightly only), so build from there.
    std::env::set_current_dir(&programs)?;
    let root_dir = programs.to_string_lossy().into_owned();
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "ferrokube-ebpf-programs",
            root_dir: &root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
