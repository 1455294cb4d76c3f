//! `wrenn-agent`: the host agent binary.

use anyhow::{Context, Result};
use clap::Parser;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use wrenn_agent::config::{
    Cli, Command, CommonArgs, ImageCommand, ServeArgs, parse_size_mb, parse_slot_range,
};
use wrenn_agent::controlplane::{ControlPlaneLink, LinkEnd, LinkOptions};
use wrenn_agent::layout::Layout;
use wrenn_agent::network::{Network, linux::LinuxNetwork};
use wrenn_agent::proxy::{PortProxy, ProxyOptions};
use wrenn_agent::rpc::{self, RpcState};
use wrenn_agent::sandbox::{ManagerConfig, SandboxManager};
use wrenn_agent::vmm::{
    Vmm,
    firecracker::Firecracker,
    qemu::{Accel, Qemu},
};
use wrenn_agent::{image, metadata, tls};
use wrenn_http::server;
use wrenn_logging::{LogOptions, Logging};

/// Log lines kept in memory for the `GetLogs` RPC.
const LOG_RING_LINES: usize = 2000;

fn main() -> Result<()> {
    let cli = Cli::parse();
    // Only the long-running server writes a log file; one-shot commands log to stderr.
    let file = match &cli.command {
        Command::Serve(args) => Some(wrenn_logging::log_file_path(
            &args.common.data_dir,
            "wrenn-agent",
        )),
        _ => None,
    };
    let logging = wrenn_logging::init(&LogOptions {
        level_env: "LOG_LEVEL".into(),
        file,
        ring_lines: LOG_RING_LINES,
    })
    .context("setting up logging")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve(*args, logging).await,
            Command::Cleanup(args) => cleanup(args).await,
            Command::Image(ImageCommand::Build(args)) => {
                let built = image::build::build_image(&image::build::BuildOptions {
                    images_dir: args.images_dir,
                    cache_dir: args.cache_dir,
                    envd_binary: args.envd,
                    mirror: args.mirror,
                    force: args.force,
                })
                .await?;
                println!("{}", built.dir.display());
                Ok(())
            }
        }
    })
}

fn vmm_for(args: &ServeArgs) -> Result<Arc<dyn Vmm>> {
    let accel: Accel = args.accel.parse().map_err(anyhow::Error::msg)?;
    let qemu =
        || -> Result<Arc<dyn Vmm>> { Ok(Arc::new(Qemu::detect(args.qemu_binary.clone(), accel)?)) };
    match args.vmm.as_str() {
        "qemu" => qemu(),
        "firecracker" => Firecracker::detect(Some(args.firecracker_binary.clone()))
            .map(|f| Arc::new(f) as Arc<dyn Vmm>)
            .with_context(|| {
                format!(
                    "no Firecracker binary at {}; install it or use --vmm qemu",
                    args.firecracker_binary.display()
                )
            }),
        "auto" => match Firecracker::detect(Some(args.firecracker_binary.clone())) {
            Some(f) => Ok(Arc::new(f)),
            None => qemu(),
        },
        other => anyhow::bail!("unknown --vmm {other:?}; use auto, qemu or firecracker"),
    }
}

fn network_for() -> Arc<dyn Network> {
    Arc::new(LinuxNetwork::new(None))
}

async fn serve(args: ServeArgs, logging: Logging) -> Result<()> {
    let layout = Layout::new(&args.common.data_dir, args.common.images_dir.clone());
    std::fs::create_dir_all(layout.root())
        .with_context(|| format!("creating the data directory {}", layout.root().display()))?;
    // Registration first: a bad token or an unreachable control plane fails before any VM work.
    let link = match &args.cp_url {
        Some(url) => {
            let address = args
                .address
                .as_deref()
                .context("--address is required with --cp-url")?;
            let link = ControlPlaneLink::connect(
                url,
                layout.root(),
                args.register_token.as_deref(),
                address,
            )
            .await
            .context("joining the control plane")?;
            Some(link)
        }
        None => None,
    };
    let vmm = vmm_for(&args)?;
    let network = network_for();
    let (first, last) = parse_slot_range(&args.common.slots).map_err(anyhow::Error::msg)?;
    let default_disk_mb = parse_size_mb(&args.default_disk).map_err(anyhow::Error::msg)?;
    let tcg = vmm.describe().contains("tcg");
    let boot_timeout =
        Duration::from_secs(args.boot_timeout_secs.unwrap_or(if tcg { 120 } else { 30 }));
    let manager = SandboxManager::new(
        ManagerConfig {
            layout: layout.clone(),
            default_vcpus: args.default_vcpus,
            default_memory_mb: args.default_memory_mb,
            default_disk_mb,
            boot_timeout,
            metadata_port: (args.metadata_port != 0).then_some(args.metadata_port),
            slot_range: (first, last),
        },
        vmm.clone(),
        network,
    );
    tracing::info!(vmm = %vmm.describe(), data_dir = %layout.root().display(), slots = %args.common.slots, "starting host agent");
    let recovered = manager
        .recover()
        .await
        .context("recovering sandboxes of a previous run")?;
    if !recovered.adopted.is_empty() {
        tracing::info!(sandboxes = ?recovered.adopted, "adopted running sandboxes");
    }
    manager.spawn_reaper();

    if args.metadata_port != 0 {
        let listener = tokio::net::TcpListener::bind(("0.0.0.0", args.metadata_port))
            .await
            .with_context(|| {
                format!("binding the metadata server to port {}", args.metadata_port)
            })?;
        tokio::spawn(metadata::serve(listener, manager.clone()));
    }

    let proxy = PortProxy::new(manager.clone(), ProxyOptions::default());
    {
        let proxy = proxy.clone();
        manager.on_destroy(move |id| proxy.evict(id));
    }
    manager.set_traffic_gate(Arc::new(proxy.clone()));
    let terminate = CancellationToken::new();
    let app = rpc::router(RpcState {
        manager: manager.clone(),
        terminate: terminate.clone(),
        logs: logging.ring(),
    })
    .merge(proxy.router())
    .route("/health", axum::routing::get(|| async { "ok" }));

    let tls_files = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls::TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: args.tls_client_ca.clone(),
        }),
        _ => None,
    };
    let (acceptor, file_cert) = match (&link, &tls_files) {
        (Some(link), _) => (Some(link.tls.acceptor()), None),
        (None, Some(files)) => {
            let (config, cert) = tls::server_config(files)?;
            (Some(tokio_rustls::TlsAcceptor::from(config)), Some(cert))
        }
        (None, None) => (None, None),
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let mtls = link.is_some() || args.tls_client_ca.is_some();
    tracing::info!(listen = %args.listen, tls = acceptor.is_some(), mtls, "serving");

    // SIGHUP: reopen the log file (logrotate) and re-read certificate files.
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hup.recv().await.is_some() {
            if let Err(e) = logging.reopen() {
                tracing::error!(error = %e, "cannot reopen the log file");
            }
            if let (Some(cert), Some(files)) = (&file_cert, &tls_files)
                && let Err(e) = tls::reload(cert, files)
            {
                tracing::error!(error = %e, "cannot reload the TLS certificate; keeping the current one");
            }
        }
    });

    let stop_link = CancellationToken::new();
    let mut link_task = None;
    if let Some(link) = &link {
        let heartbeat = link.heartbeat(
            manager.clone(),
            LinkOptions {
                interval: Duration::from_secs(args.heartbeat_secs.max(1)),
                ..LinkOptions::default()
            },
        );
        let stop = stop_link.clone();
        let terminate = terminate.clone();
        link_task = Some(tokio::spawn(async move {
            if heartbeat.run(stop).await == LinkEnd::HostDeleted {
                terminate.cancel();
            }
        }));
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let stop = {
        let terminate = terminate.clone();
        async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
                _ = terminate.cancelled() => {}
            }
        }
    };
    server::serve(
        listener,
        app,
        acceptor,
        server::ServerLimits::default(),
        stop,
    )
    .await;
    stop_link.cancel();
    if let Some(task) = link_task {
        // A heartbeat in progress finishes (a refresh must get to save its rotated token).
        if tokio::time::timeout(Duration::from_secs(45), task)
            .await
            .is_err()
        {
            tracing::warn!("the last heartbeat did not finish in time");
        }
    }
    manager.shutdown();
    if args.destroy_on_exit {
        manager.destroy_all().await;
    } else if args.keep_running_on_exit {
        tracing::info!(
            sandboxes = manager.list().len(),
            "stopped; running sandboxes are left for the next agent to adopt"
        );
    } else {
        // Nothing is lost when the host goes down after us: every sandbox sleeps in a snapshot
        // the next agent finds.
        let results = manager.pause_all().await;
        let failed = results.iter().filter(|(_, r)| r.is_err()).count();
        tracing::info!(
            paused = results.len() - failed,
            failed,
            "stopped; sandboxes are paused for the next agent"
        );
    }
    Ok(())
}

async fn cleanup(args: CommonArgs) -> Result<()> {
    let layout = Layout::new(&args.data_dir, args.images_dir.clone());
    let (first, last) = parse_slot_range(&args.slots).map_err(anyhow::Error::msg)?;
    let manager = SandboxManager::new(
        ManagerConfig {
            layout,
            default_vcpus: 1,
            default_memory_mb: 512,
            default_disk_mb: 1024,
            boot_timeout: Duration::from_secs(30),
            metadata_port: None,
            slot_range: (first, last),
        },
        Arc::new(Qemu::detect(None, Accel::Tcg)?),
        network_for(),
    );
    manager.recover().await?;
    manager.destroy_all().await;
    Ok(())
}
