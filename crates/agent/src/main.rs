//! `wrenn-agent`: the host agent binary.

use anyhow::{Context, Result};
use clap::Parser;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use wrenn_agent::config::{
    Cli, Command, CommonArgs, ImageCommand, ServeArgs, parse_size_mb, parse_slot_range,
};
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
use wrenn_agent::{image, metadata, server, tls};

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve(*args).await,
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

async fn serve(args: ServeArgs) -> Result<()> {
    let layout = Layout::new(&args.common.data_dir, args.common.images_dir.clone());
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
    let terminate = CancellationToken::new();
    let app = rpc::router(RpcState {
        manager: manager.clone(),
        terminate: terminate.clone(),
    })
    .merge(proxy.router())
    .route("/health", axum::routing::get(|| async { "ok" }));

    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let cfg = tls::server_config(&tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: args.tls_client_ca.clone(),
            })?;
            Some(tokio_rustls::TlsAcceptor::from(cfg))
        }
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(listen = %args.listen, tls = tls.is_some(), mtls = args.tls_client_ca.is_some(), "serving");
    let stop = {
        let terminate = terminate.clone();
        async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
                _ = terminate.cancelled() => {}
            }
        }
    };
    server::serve(listener, app, tls, server::ServerLimits::default(), stop).await;
    manager.shutdown();
    if args.destroy_on_exit {
        manager.destroy_all().await;
    } else {
        tracing::info!(
            sandboxes = manager.list().len(),
            "stopped; running sandboxes are left for the next agent"
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
