//! `wrenn-cp`: the control plane binary.

use anyhow::Result;
use clap::Parser;
use std::sync::Arc;
use wrenn_control_plane::config::{Cli, Command};
use wrenn_control_plane::service::admin::{LogSource, install_log_source};
use wrenn_control_plane::{db, run};
use wrenn_logging::{LogOptions, LogRing, log_file_path};

/// The in-memory log ring, served to admins by `GET /v1/admin/logs`.
struct Ring(LogRing);

impl LogSource for Ring {
    fn tail(&self, n: usize) -> Vec<String> {
        self.0.tail(n)
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let file = match &cli.command {
        Command::Serve(args) => Some(log_file_path(&args.data_dir, "control-plane")),
        _ => None,
    };
    let logging = wrenn_logging::init(&LogOptions {
        file,
        ..LogOptions::default()
    })?;
    install_log_source(Arc::new(Ring(logging.ring())));
    match cli.command {
        Command::Serve(args) => run::serve(*args).await,
        Command::Migrate(args) => {
            let pool = db::connect(&args.database_url, 2).await?;
            db::migrate(&pool).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Bootstrap(args) => run::bootstrap(args).await,
    }
}
