//! `wrenn snapshot create|list|delete`: templates from capsules (`POST /v1/snapshots`), the
//! templates a team can start capsules from (`GET /v1/snapshots`), and deleting one
//! (`DELETE /v1/snapshots/{name}`). Start a capsule from a snapshot with
//! `wrenn create --template <name>`.

use crate::cli::Context;
use crate::error::CliResult;
use crate::output::{print_json, print_line, template_table};
use std::time::Duration;
use wrenn_api_types::snapshots::{CreateSnapshotRequest, Template};

/// The server answers a snapshot within 60 s (the SDK's limit); a little more for the network.
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(70);

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: SnapshotCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum SnapshotCommand {
    /// Snapshot a running or paused capsule (memory and disk) into a template; prints its name.
    Create(CreateArgs),
    /// List the templates capsules can start from (the team's snapshots and the platform's).
    List(ListArgs),
    /// Delete one of the team's snapshots.
    Delete(DeleteArgs),
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Capsule id.
    pub capsule: String,
    /// Template name (default: generated, `template-<8 hex>`).
    #[arg(long)]
    pub name: Option<String>,
    /// Replace the team's template of the same name.
    #[arg(long)]
    pub overwrite: bool,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only `base` images or only `snapshot`s.
    #[arg(long = "type", value_parser = ["base", "snapshot"])]
    pub kind: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    /// Template name.
    pub name: String,
}

pub async fn run(args: Args, context: &Context) -> CliResult<i32> {
    match args.command {
        SnapshotCommand::Create(args) => create(args, context).await,
        SnapshotCommand::List(args) => list(args, context).await,
        SnapshotCommand::Delete(args) => delete(args, context).await,
    }
}

async fn create(args: CreateArgs, context: &Context) -> CliResult<i32> {
    let request = CreateSnapshotRequest {
        sandbox_id: args.capsule,
        name: args.name,
    };
    // `overwrite=true` is sent only when asked for, as the SDK does.
    let query: &[(&str, &str)] = if args.overwrite {
        &[("overwrite", "true")]
    } else {
        &[]
    };
    let template: Template = context
        .client
        .post_json_query(&["v1", "snapshots"], query, &request, SNAPSHOT_TIMEOUT)
        .await?;
    if context.json {
        print_json(&template)?;
    } else {
        print_line(&template.name)?;
    }
    Ok(0)
}

async fn list(args: ListArgs, context: &Context) -> CliResult<i32> {
    let query: Vec<(&str, &str)> = args.kind.iter().map(|k| ("type", k.as_str())).collect();
    let templates: Vec<Template> = context
        .client
        .get_json_query(&["v1", "snapshots"], &query)
        .await?;
    if context.json {
        print_json(&templates)?;
    } else {
        print_line(&template_table(&templates))?;
    }
    Ok(0)
}

async fn delete(args: DeleteArgs, context: &Context) -> CliResult<i32> {
    context
        .client
        .delete(&["v1", "snapshots", &args.name])
        .await?;
    if context.json {
        print_json(&serde_json::json!({ "deleted": args.name }))?;
    } else {
        print_line(&args.name)?;
    }
    Ok(0)
}
