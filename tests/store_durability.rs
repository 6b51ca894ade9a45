//! Durability of the embedded store: a child process writes keys with concurrent
//! writers and prints each one once its write is acknowledged; we SIGKILL it at a random
//! moment, reopen the store, and every acknowledged key must be there with its value.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ferrokube_store::{EmbeddedOptions, EmbeddedStore, Store};
use rand::Rng;

/// What `ferrokube store stress` writes for a key: the key repeated to the value size.
fn expected_value(key: &str, size: usize) -> Vec<u8> {
    key.bytes().cycle().take(size.max(key.len())).collect()
}

/// Kills the child (our own, by its handle) if the test fails midway.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn acknowledged_writes_survive_sigkill() -> Result<()> {
    const VALUE_SIZE: usize = 300;
    let runtime = tokio::runtime::Runtime::new()?;
    let mut rng = rand::rng();
    for round in 0..5 {
        let dir = tempfile::tempdir()?;
        let mut child = KillOnDrop(
            Command::new(env!("CARGO_BIN_EXE_ferrokube"))
                .args(["store", "stress", "--writers", "16"])
                .arg(format!("--value-size={VALUE_SIZE}"))
                .arg("--data-dir")
                .arg(dir.path())
                .env("FERROKUBE_LOG", "warn")
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .context("starting ferrokube store stress")?,
        );
        let stdout = child.0.stdout.take().context("child stdout")?;
        let (lines, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        // Kill after a random number of acknowledgements, plus a random pause so the
        // kill lands anywhere in a commit.
        let kill_after = rng.random_range(20..1500);
        let mut acked = Vec::new();
        while acked.len() < kill_after {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(line) => acked.push(line),
                Err(e) => bail!(
                    "round {round}: no ack from the writer ({e}) after {}",
                    acked.len()
                ),
            }
        }
        std::thread::sleep(Duration::from_micros(rng.random_range(0..20_000)));
        child.0.kill().context("SIGKILL")?;
        child.0.wait()?;
        // Acks printed before the kill count too.
        let _ = reader.join();
        acked.extend(rx.try_iter());

        let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default())
            .with_context(|| format!("round {round}: reopening after SIGKILL"))?;
        runtime.block_on(async {
            for line in &acked {
                let key = line.strip_prefix("ack ").context("malformed ack line")?;
                let kv = store
                    .get(key)
                    .await?
                    .kv
                    .with_context(|| format!("round {round}: acknowledged {key} is missing"))?;
                assert_eq!(
                    kv.value.as_ref(),
                    expected_value(key, VALUE_SIZE).as_slice()
                );
            }
            // The reopened store takes writes.
            store.create("/after/crash", "ok".into()).await?;
            anyhow::Ok(())
        })?;
        eprintln!(
            "round {round}: {} acknowledged writes survived SIGKILL",
            acked.len()
        );
    }
    Ok(())
}
