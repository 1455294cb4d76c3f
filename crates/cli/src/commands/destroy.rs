//! `wrenn destroy <id>...`: `DELETE /v1/capsules/{id}` for each id. Every id is tried; the exit
//! code is 1 if any failed.

use crate::cli::Context;
use crate::error::CliResult;
use crate::output::{print_json, print_line};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Capsule ids.
    #[arg(required = true)]
    pub ids: Vec<String>,
}

pub async fn run(args: Args, context: &Context) -> CliResult<i32> {
    let mut destroyed = Vec::new();
    let mut failed = false;
    for id in &args.ids {
        match context.client.delete(&["v1", "capsules", id]).await {
            Ok(()) => {
                if !context.json {
                    print_line(id)?;
                }
                destroyed.push(id.as_str());
            }
            Err(error) => {
                eprintln!("error: {id}: {error}");
                failed = true;
            }
        }
    }
    if context.json {
        print_json(&serde_json::json!({ "destroyed": destroyed }))?;
    }
    Ok(i32::from(failed))
}
