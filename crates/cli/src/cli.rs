//! The command line: global options, the subcommand list, and the [`Context`] each command
//! runs with.

use crate::client::ApiClient;
use crate::commands::{
    cp, create, destroy, exec, info, list, login, logout, logs, pause, ping, ports, resume, shell,
    snapshot,
};
use crate::config::{ConfigFile, Settings, default_config_path};
use crate::error::CliResult;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Command-line client for a Wrenn control plane.
#[derive(Debug, Parser)]
#[command(name = "wrenn", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand accepts.
#[derive(Debug, clap::Args)]
pub struct GlobalArgs {
    /// Control-plane URL, optionally with a path prefix (e.g. https://host/api).
    #[arg(long, env = "WRENN_BASE_URL", global = true)]
    pub base_url: Option<String>,
    /// API key (sent as X-API-Key); `wrenn login` stores one.
    #[arg(long, env = "WRENN_API_KEY", global = true, hide_env_values = true)]
    pub api_key: Option<String>,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Store an API key (given, or created from an email/password login).
    Login(login::Args),
    /// Forget the stored base URL and API key.
    Logout(logout::Args),
    /// Create a capsule and print its id.
    Create(create::Args),
    /// List capsules.
    List(list::Args),
    /// Show one capsule.
    Info(info::Args),
    /// Run a command in a capsule, streaming its output.
    Exec(exec::Args),
    /// Open an interactive terminal in a capsule.
    Shell(shell::Args),
    /// Copy a file into or out of a capsule (`<capsule-id>:<path>` on one side).
    Cp(cp::Args),
    /// Pause a capsule.
    Pause(pause::Args),
    /// Resume a paused capsule.
    Resume(resume::Args),
    /// Destroy capsules.
    Destroy(destroy::Args),
    /// Reset a capsule's inactivity timer.
    Ping(ping::Args),
    /// Print the URL that reaches a port inside a capsule.
    Ports(ports::Args),
    /// Snapshot capsules into templates; list and delete templates.
    Snapshot(snapshot::Args),
    /// Show control-plane or host logs (admin only).
    Logs(logs::Args),
}

/// What a command runs with: the resolved settings and a client for them.
#[derive(Debug)]
pub struct Context {
    pub client: ApiClient,
    pub settings: Settings,
    pub json: bool,
    pub config_path: PathBuf,
    /// The key given by flag or environment (not the stored one): what `login` stores.
    pub api_key_arg: Option<String>,
}

impl Context {
    /// Resolves settings from flags/env, then the config file, then defaults.
    pub fn load(global: GlobalArgs) -> CliResult<Self> {
        let config_path = default_config_path()?;
        let file = ConfigFile::load(&config_path)?;
        let settings =
            Settings::resolve(global.base_url.as_deref(), global.api_key.as_deref(), &file);
        let client = ApiClient::new(&settings.base_url, settings.api_key.clone())?;
        Ok(Self {
            client,
            settings,
            json: global.json,
            config_path,
            api_key_arg: global.api_key.filter(|key| !key.trim().is_empty()),
        })
    }
}

/// Runs the parsed command; the result is the process exit code.
pub async fn run(cli: Cli) -> CliResult<i32> {
    // Logout must work even when the config file is unreadable (that may be why it is run).
    if let Command::Logout(args) = cli.command {
        return logout::run(args).await;
    }
    let context = Context::load(cli.global)?;
    match cli.command {
        Command::Login(args) => login::run(args, &context).await,
        Command::Logout(args) => logout::run(args).await,
        Command::Create(args) => create::run(args, &context).await,
        Command::List(args) => list::run(args, &context).await,
        Command::Info(args) => info::run(args, &context).await,
        Command::Exec(args) => exec::run(args, &context).await,
        Command::Shell(args) => shell::run(args, &context).await,
        Command::Cp(args) => cp::run(args, &context).await,
        Command::Pause(args) => pause::run(args, &context).await,
        Command::Resume(args) => resume::run(args, &context).await,
        Command::Destroy(args) => destroy::run(args, &context).await,
        Command::Ping(args) => ping::run(args, &context).await,
        Command::Ports(args) => ports::run(args, &context).await,
        Command::Snapshot(args) => snapshot::run(args, &context).await,
        Command::Logs(args) => logs::run(args, &context).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn exec_takes_the_command_after_double_dash() {
        let cli = Cli::try_parse_from([
            "wrenn", "exec", "cl-a", "--env", "A=1", "--cwd", "/tmp", "--", "ls", "-l", "--json",
        ])
        .expect("parse");
        let Command::Exec(args) = cli.command else {
            panic!("expected exec");
        };
        assert_eq!(args.command, vec!["ls", "-l", "--json"]);
        assert!(
            !cli.global.json,
            "--json after -- belongs to the remote command"
        );
    }
}
