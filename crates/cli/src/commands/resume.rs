//! `wrenn resume <id>`: `POST /v1/capsules/{id}/resume` (no body).

use crate::cli::Context;
use crate::error::CliResult;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Capsule id.
    pub id: String,
}

pub async fn run(args: Args, context: &Context) -> CliResult<i32> {
    super::capsule_action(context, &args.id, "resume").await
}
