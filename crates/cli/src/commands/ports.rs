//! `wrenn ports <id> <port>`: prints the proxy URL the SDK's `get_url` would give. No request.

use crate::cli::Context;
use crate::error::CliResult;
use crate::output::{print_json, print_line};
use crate::proxy::proxy_url;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Capsule id.
    pub id: String,
    /// Port inside the capsule.
    pub port: u16,
    /// Proxy host suffix (default: the base URL's host[:port]).
    #[arg(long, env = "WRENN_PROXY_DOMAIN")]
    pub proxy_domain: Option<String>,
}

pub async fn run(args: Args, context: &Context) -> CliResult<i32> {
    let url = proxy_url(
        context.client.base_url(),
        args.proxy_domain.as_deref(),
        &args.id,
        args.port,
    );
    if context.json {
        print_json(&serde_json::json!({ "url": url }))?;
    } else {
        print_line(&url)?;
    }
    Ok(0)
}
