//! `wrenn list`: `GET /v1/capsules` as a table.

use crate::cli::Context;
use crate::error::CliResult;
use crate::output::{capsule_table, print_json, print_line};
use wrenn_api_types::capsule::Capsule;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn run(_args: Args, context: &Context) -> CliResult<i32> {
    let capsules: Vec<Capsule> = context.client.get_json(&["v1", "capsules"]).await?;
    if context.json {
        print_json(&capsules)?;
    } else {
        print_line(&capsule_table(&capsules))?;
    }
    Ok(0)
}
