//! `cargo xtask lab up` then `lab down` leaves nothing behind: every recorded namespace
//! is gone and no lab interface appeared in the root namespace (needs root; CI is root).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, ensure};

const XTASK: &str = env!("CARGO_BIN_EXE_xtask");

fn xtask(args: &[&str]) -> Result<String> {
    let out = Command::new(XTASK)
        .args(args)
        .output()
        .with_context(|| format!("running xtask {args:?}"))?;
    ensure!(
        out.status.success(),
        "xtask {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn root_links() -> Result<String> {
    let out = Command::new("ip").args(["-o", "link", "show"]).output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(':').nth(1).map(|n| n.trim().to_string()))
        .collect::<Vec<_>>()
        .join(" "))
}

/// Runs `lab down` on the state file if the test ends before it did.
struct Down(String);

impl Drop for Down {
    fn drop(&mut self) {
        if Path::new(&self.0).exists() {
            let _ = Command::new(XTASK)
                .args(["lab", "down", "--state", &self.0])
                .output();
        }
    }
}

#[test]
fn lab_up_then_down_leaves_no_namespace_or_link() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state").to_string_lossy().into_owned();
    let _down = Down(state.clone());
    let links_before = root_links()?;

    let up = xtask(&[
        "lab", "up", "--state", &state, "--pods1", "2", "--pods2", "1",
    ])?;
    assert!(up.contains("nsenter --net=/run/netns/"), "{up}");
    let names: Vec<String> = std::fs::read_to_string(&state)?
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(_, n)| n.to_string()))
        .collect();
    assert_eq!(names.len(), 5, "{names:?}");
    for name in &names {
        assert!(
            Path::new("/run/netns").join(name).exists(),
            "{name} missing"
        );
    }
    // The node sees its pods, inside the lab.
    let route = Command::new("ip")
        .args(["-n", &names[1], "route", "show"])
        .output()?;
    assert!(String::from_utf8_lossy(&route.stdout).contains("10.244.1.0/24"));
    assert!(xtask(&["lab", "status", "--state", &state])?.contains("present"));
    // A second `up` on the same state refuses.
    let again = Command::new(XTASK)
        .args(["lab", "up", "--state", &state])
        .output()?;
    assert!(!again.status.success());

    xtask(&["lab", "down", "--state", &state])?;
    for name in &names {
        assert!(!Path::new("/run/netns").join(name).exists(), "{name} left");
    }
    assert!(!Path::new(&state).exists());
    // None of the lab's interface names appeared in the root namespace.
    let after = root_links()?;
    for link in after.split(' ') {
        let lab_name = ["br0", "n1", "n2", "pods", "eth0"].contains(&link);
        assert!(
            !lab_name || links_before.split(' ').any(|l| l == link),
            "{link} appeared in the root namespace"
        );
    }
    Ok(())
}
