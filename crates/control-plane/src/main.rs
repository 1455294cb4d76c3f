//! `wrenn-cp`: the control plane binary.

use anyhow::Result;
use clap::Parser;
use wrenn_control_plane::config::{Cli, Command};
use wrenn_control_plane::{db, run};

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Serve(args) => run::serve(*args).await,
        Command::Migrate(args) => {
            let pool = db::connect(&args.database_url, 2).await?;
            db::migrate(&pool).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Bootstrap(_args) => anyhow::bail!("bootstrap is not available yet"),
    }
}
