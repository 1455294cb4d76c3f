//! envd's entry point.

use anyhow::Context;
use clap::Parser;
use envd::cgroups::{CgroupKind, CgroupManager, CgroupV2, NoCgroups};
use envd::metadata::{MetadataSource, Mmds};
use envd::port::{PortConfig, PortSubsystem};
use envd::state::{Defaults, EnvdState, Settings};
use envd::{Config, config::detect_external_ipv4};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const VERSION: &str = wrenn_protocol::envd::ENVD_VERSION;
const COMMIT: &str = match option_env!("ENVD_COMMIT") {
    Some(c) => c,
    None => "unknown",
};

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    if config.version {
        println!("{VERSION}");
        return Ok(());
    }
    if config.commit {
        println!("{COMMIT}");
        return Ok(());
    }
    init_logging(config.is_not_fc);
    // Two workers are plenty for a sandbox agent and keep idle memory small.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(64)
        .thread_stack_size(512 * 1024)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(config))
}

fn init_logging(pretty: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if pretty {
        builder.init();
    } else {
        builder.json().init();
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let in_vm = !config.is_not_fc;
    let run_dir = match &config.run_dir {
        Some(d) => d.clone(),
        None if in_vm => "/run/wrenn".into(),
        None => std::env::temp_dir().join(format!("wrenn-envd-{}", config.port)),
    };
    std::fs::create_dir_all(&run_dir)
        .with_context(|| format!("creating the run directory {}", run_dir.display()))?;
    std::fs::write(
        run_dir.join(".WRENN_SANDBOX"),
        if in_vm { "true" } else { "false" },
    )
    .with_context(|| format!("writing markers in {}", run_dir.display()))?;

    let mut env_vars = std::collections::BTreeMap::new();
    env_vars.insert("WRENN_SANDBOX".to_string(), in_vm.to_string());
    let defaults = Defaults {
        env_vars,
        user: config.default_user.clone(),
        workdir: None,
    };
    envd::user::Account::lookup(&config.default_user)
        .with_context(|| format!("default user {:?}", config.default_user))?;

    let forward_address = config
        .forward_address
        .or_else(|| in_vm.then(detect_external_ipv4).flatten());
    let ports = PortSubsystem::new(PortConfig {
        proc_root: config.proc_root.clone(),
        external_ip: forward_address,
        scan_interval: Duration::from_millis(config.port_scan_interval_ms.max(10)),
    });
    let settings = Settings {
        in_vm,
        version: VERSION.to_string(),
        commit: COMMIT.to_string(),
        run_dir,
    };
    let cgroups: Arc<dyn CgroupManager> = if in_vm {
        match CgroupV2::setup(&config.cgroup_root) {
            Ok(c) => Arc::new(c),
            Err(e) => {
                tracing::warn!(error = %e, "processes run without cgroups");
                Arc::new(NoCgroups)
            }
        }
    } else {
        Arc::new(NoCgroups)
    };
    let metadata: Option<Arc<dyn MetadataSource>> =
        in_vm.then(|| Arc::new(Mmds::new(config.mmds_address.clone())) as _);
    let state = Arc::new(EnvdState::new(settings, defaults, ports, cgroups, metadata));
    // Until the network is up this fails; it keeps trying for as long as it takes.
    envd::metadata::spawn_poll(&state, None);
    state.ports.start().await;

    if let Some(cmd) = &config.cmd {
        start_init_cmd(&state, cmd).await;
    }

    let addr = std::net::SocketAddr::new(config.listen_address, config.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}: is another envd running?"))?;
    tracing::info!(%addr, version = VERSION, in_vm, forward = ?forward_address, "envd listening");

    let shutdown = CancellationToken::new();
    let signals = shutdown.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        if let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
            tracing::info!("shutting down");
            signals.cancel();
        }
    });
    let router = envd::router::build(state.clone());
    envd::server::serve(
        listener,
        router,
        state.clone(),
        shutdown,
        header_read_timeout(),
    )
    .await?;
    state.ports.stop().await;
    state.processes.kill_all();
    Ok(())
}

/// `WRENN_ENVD_HEADER_READ_TIMEOUT_MS` overrides the header-read timeout (tests use a short one).
fn header_read_timeout() -> Duration {
    std::env::var("WRENN_ENVD_HEADER_READ_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(envd::server::DEFAULT_HEADER_READ_TIMEOUT)
}

async fn start_init_cmd(state: &envd::state::SharedState, cmd: &str) {
    let account = match state.account(None) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "cannot start --cmd");
            return;
        }
    };
    let req = envd::process::SpawnRequest {
        config: wrenn_protocol::envd::process::ProcessConfig {
            cmd: "/bin/sh".into(),
            args: vec!["-c".into(), cmd.into()],
            envs: Default::default(),
            cwd: None,
        },
        pty: None,
        tag: Some("init-cmd".into()),
        stdin: false,
        account,
        defaults: state.defaults(),
        cgroup: state.cgroups.procs_fd(CgroupKind::User),
    };
    if let Err(e) = envd::process::spawn(&state.processes, req, false).await {
        tracing::error!(error = %e, "cannot start --cmd");
    }
}
