//! The `wrenn` binary: parse, run, print `error: …`, exit with the command's code.

use clap::Parser;
use wrenn_cli::cli::{Cli, run};

fn main() {
    wrenn_cli::terminal::install_panic_hook();
    init_logging();
    // reqwest and tungstenite both use rustls; name its crypto provider (ring) explicitly so no
    // feature unification elsewhere in the workspace can make the choice ambiguous.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            std::process::exit(1);
        }
    };
    let code = match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            1
        }
    };
    // Exit without dropping the runtime: a blocking stdin read (shell, cp from `-`) would
    // otherwise hold the process open until the next key press.
    std::process::exit(code);
}

/// Debug logs on stderr only when asked for (`WRENN_LOG=debug`): stderr is the user's.
fn init_logging() {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("WRENN_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
}
