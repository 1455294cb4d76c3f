//! `wrenn logs [control-plane | host <host-id>] [--lines N]`:
//! `GET /v1/admin/logs?source=control-plane|host:<id>&lines=N` → `{"lines": [...]}`.

use crate::cli::Context;
use crate::error::{CliError, CliResult};
use crate::output::{print_json, print_line};
use serde::{Deserialize, Serialize};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// `control-plane` (default) or `host <host-id>`.
    #[arg(num_args = 0..=2, value_name = "SOURCE")]
    pub source: Vec<String>,
    /// How many of the most recent lines to fetch.
    #[arg(long)]
    pub lines: Option<u32>,
}

/// The admin logs route's answer. Not in `wrenn-api-types` yet (the route is new); move it there
/// when the control plane defines it.
#[derive(Debug, Serialize, Deserialize)]
pub struct LogsResponse {
    pub lines: Vec<String>,
}

/// `[]`/`[control-plane]` → `control-plane`, `[host, ID]` → `host:ID`.
pub fn source_param(words: &[String]) -> CliResult<String> {
    match words {
        [] => Ok("control-plane".into()),
        [only] if only == "control-plane" => Ok("control-plane".into()),
        [kind, host_id] if kind == "host" && !host_id.is_empty() => Ok(format!("host:{host_id}")),
        _ => Err(CliError::Usage(
            "expected `control-plane` or `host <host-id>`".into(),
        )),
    }
}

pub async fn run(args: Args, context: &Context) -> CliResult<i32> {
    let source = source_param(&args.source)?;
    let lines = args.lines.map(|lines| lines.to_string());
    let mut query = vec![("source", source.as_str())];
    if let Some(lines) = &lines {
        query.push(("lines", lines.as_str()));
    }
    let response: LogsResponse = context
        .client
        .get_json_query(&["v1", "admin", "logs"], &query)
        .await?;
    if context.json {
        print_json(&response)?;
    } else {
        for line in &response.lines {
            print_line(line)?;
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(list: &[&str]) -> Vec<String> {
        list.iter().map(|word| (*word).to_owned()).collect()
    }

    #[test]
    fn sources() {
        assert_eq!(source_param(&words(&[])).expect("ok"), "control-plane");
        assert_eq!(
            source_param(&words(&["control-plane"])).expect("ok"),
            "control-plane"
        );
        assert_eq!(
            source_param(&words(&["host", "h-1"])).expect("ok"),
            "host:h-1"
        );
        assert!(source_param(&words(&["host"])).is_err());
        assert!(source_param(&words(&["agent", "x"])).is_err());
    }
}
