//! `wrenn create`: `POST /v1/capsules`, then optionally poll `GET /v1/capsules/{id}` until the
//! capsule is running.

use crate::cli::Context;
use crate::client::ApiClient;
use crate::error::{CliError, CliResult};
use crate::output::{print_json, print_line};
use std::time::Duration;
use wrenn_api_types::capsule::{Capsule, CapsuleStatus, CreateCapsuleRequest};

/// Poll interval and deadline of `--wait` (the SDK polls every 0.5 s).
pub const WAIT_POLL_INTERVAL: Duration = Duration::from_millis(500);
pub const WAIT_DEADLINE: Duration = Duration::from_secs(60);

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Template or snapshot to boot from (server default: minimal-ubuntu).
    #[arg(long)]
    pub template: Option<String>,
    /// Virtual CPUs.
    #[arg(long)]
    pub vcpus: Option<i32>,
    /// Memory in MiB.
    #[arg(long)]
    pub memory_mb: Option<i32>,
    /// Inactivity timeout in seconds before the capsule is paused (0 = never).
    #[arg(long)]
    pub timeout_sec: Option<i32>,
    /// Wait until the capsule is running (up to 60 s).
    #[arg(long)]
    pub wait: bool,
}

pub async fn run(args: Args, context: &Context) -> CliResult<i32> {
    let request = CreateCapsuleRequest {
        template: args.template,
        vcpus: args.vcpus,
        memory_mb: args.memory_mb,
        timeout_sec: args.timeout_sec,
        ..Default::default()
    };
    let mut capsule: Capsule = context
        .client
        .post_json(&["v1", "capsules"], &request)
        .await?;
    if args.wait && capsule.status != CapsuleStatus::Running {
        capsule = wait_until_running(&context.client, &capsule.id, WAIT_DEADLINE).await?;
    }
    if context.json {
        print_json(&capsule)?;
    } else {
        print_line(&capsule.id)?;
    }
    Ok(0)
}

/// Polls until `running`; `error`, `stopped` and `missing` (and 404) are failures.
pub async fn wait_until_running(
    client: &ApiClient,
    id: &str,
    deadline: Duration,
) -> CliResult<Capsule> {
    let started = tokio::time::Instant::now();
    loop {
        let capsule: Capsule = client.get_json(&["v1", "capsules", id]).await?;
        match capsule.status {
            CapsuleStatus::Running => return Ok(capsule),
            status @ (CapsuleStatus::Error | CapsuleStatus::Stopped | CapsuleStatus::Missing) => {
                return Err(CliError::Remote(format!(
                    "capsule {id} is {status} instead of running"
                )));
            }
            status if started.elapsed() >= deadline => {
                return Err(CliError::Remote(format!(
                    "capsule {id} is still {status} after {} s",
                    deadline.as_secs()
                )));
            }
            _ => tokio::time::sleep(WAIT_POLL_INTERVAL).await,
        }
    }
}
