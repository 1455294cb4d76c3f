//! `wrenn info <id>`: `GET /v1/capsules/{id}`.

use crate::cli::Context;
use crate::error::CliResult;
use crate::output::{capsule_details, print_json, print_line};
use wrenn_api_types::capsule::Capsule;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Capsule id.
    pub id: String,
}

pub async fn run(args: Args, context: &Context) -> CliResult<i32> {
    let capsule: Capsule = context
        .client
        .get_json(&["v1", "capsules", &args.id])
        .await?;
    if context.json {
        print_json(&capsule)?;
    } else {
        print_line(&capsule_details(&capsule))?;
    }
    Ok(0)
}
