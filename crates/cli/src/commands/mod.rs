//! One module per subcommand, each with a clap `Args` struct and an async `run` that returns the
//! process exit code.

pub mod cp;
pub mod create;
pub mod destroy;
pub mod exec;
pub mod info;
pub mod list;
pub mod login;
pub mod logout;
pub mod logs;
pub mod pause;
pub mod ping;
pub mod ports;
pub mod resume;
pub mod shell;
pub mod snapshot;

use crate::cli::Context;
use crate::error::CliResult;
use crate::output::{print_json, print_line};
use wrenn_api_types::capsule::Capsule;

/// `pause` and `resume`: a bodyless POST that answers with the capsule.
pub(crate) async fn capsule_action(context: &Context, id: &str, action: &str) -> CliResult<i32> {
    let response = context
        .client
        .post_empty(&["v1", "capsules", id, action])
        .await?;
    let capsule: Capsule = crate::client::decode_json(response).await?;
    if context.json {
        print_json(&capsule)?;
    } else {
        print_line(&format!("{} {}", capsule.id, capsule.status))?;
    }
    Ok(0)
}
