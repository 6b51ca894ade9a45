//! A CRI behaviour suite in the spirit of critest: every case runs against our runtime
//! (`ferrokube runtime`) AND against Debian's containerd 1.6 (CRI plugin, runc), both
//! started by the test in a lab network namespace with the same test image (built from
//! Debian's static busybox as an OCI-layout tarball) imported into each. A case that
//! containerd fails is a wrong case. Needs root (CI is root), containerd, runc and
//! busybox-static (`cargo xtask setup`).
//!
//! `cases.rs` holds the cases; each becomes `ours::<case>` and `containerd::<case>`.

mod cases;
mod harness;
mod spdy_client;
mod stream;

use anyhow::{Context, Result};
use harness::{Kind, Lab};

fn block_on<F: std::future::Future<Output = Result<()>>>(f: F) -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

/// Starts a lab for `kind`, runs one case on it with a deadline, adds the runtime's log
/// tail to a failure; the lab is cleaned up on every path.
macro_rules! cases {
    ($($case:ident),* $(,)?) => {
        mod ours {
            $(#[test]
            fn $case() -> anyhow::Result<()> {
                crate::run(crate::Kind::Ours, |lab| Box::pin(crate::cases::$case(lab)))
            })*
        }
        mod containerd {
            $(#[test]
            fn $case() -> anyhow::Result<()> {
                crate::run(crate::Kind::Containerd, |lab| Box::pin(crate::cases::$case(lab)))
            })*
        }
    };
}

type CaseFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + 'a>>;

fn run(kind: Kind, case: impl for<'a> FnOnce(&'a mut Lab) -> CaseFuture<'a>) -> Result<()> {
    block_on(async move {
        let mut lab = Lab::start(kind).await?;
        let result = tokio::time::timeout(std::time::Duration::from_secs(120), case(&mut lab))
            .await
            .context("case timed out after 120s");
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) | Err(e) => Err(e.context(lab.log_tail())),
        }
    })
}

cases!(
    version_and_status,
    image_list_and_status,
    image_status_of_missing_image_is_empty,
    image_remove_is_idempotent,
    image_fs_info,
    sandbox_lifecycle,
    sandboxes_reach_each_other_over_tcp,
    sandbox_unknown_ids,
    sandbox_duplicate_name_is_refused,
    sandbox_without_metadata_is_refused,
    container_exit_codes_and_logs,
    container_stop_sends_sigterm_then_sigkill,
    exec_sync_output_and_exit_code,
    container_unknown_ids_and_duplicates,
    container_memory_limit_oom_kill,
    containers_talk_across_sandboxes_over_tcp,
    restart_keeps_containers_running,
    container_limits_reach_the_cgroup,
    container_rootfs_is_private_and_writable,
    broken_image_archive_is_refused,
    missing_command_fails_and_leaves_nothing,
    reopen_container_log_after_rotation,
    container_stats,
    container_sees_env_workdir_user_mounts_and_dns,
    unknown_runtime_handler_is_refused,
    crictl_drives_the_runtime,
    crictl_runs_a_pod_end_to_end,
    pod_sandbox_stats,
    pull_image_from_a_registry,
    pull_image_with_credentials,
    pull_image_over_https,
    pull_image_refuses_untrusted_and_plain_registries,
    exec_streams_over_websocket,
    exec_negotiates_v5_and_half_closes_stdin,
    port_forward_over_websocket,
    exec_streams_over_spdy,
    port_forward_over_spdy,
    attach_streams_output,
    tty_container_logs_and_attach,
    attach_over_spdy,
);
