//! `wrenn ping <id>`: `POST /v1/capsules/{id}/ping` (no body) resets the inactivity timer.

use crate::cli::Context;
use crate::error::CliResult;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Capsule id.
    pub id: String,
}

pub async fn run(args: Args, context: &Context) -> CliResult<i32> {
    context
        .client
        .post_empty(&["v1", "capsules", &args.id, "ping"])
        .await?;
    Ok(0)
}
