//! The agent's command line (every flag also reads an environment variable).

use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "wrenn-agent",
    version,
    about = "Wrenn's host agent: runs microVM sandboxes on this host"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the host agent RPCs and the port proxy.
    Serve(Box<ServeArgs>),
    /// Guest images.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Remove every sandbox, network namespace and VM a previous agent left behind, then exit.
    Cleanup(CommonArgs),
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build the guest image (kernel, initramfs, root filesystem) from Debian packages.
    Build(ImageBuildArgs),
}

#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Data directory: sandboxes, snapshots, templates, logs.
    #[arg(long, env = "WRENN_DIR", default_value = "/var/lib/wrenn")]
    pub data_dir: PathBuf,
    /// Guest images (default: <data-dir>/images).
    #[arg(long, env = "WRENN_IMAGES_DIR")]
    pub images_dir: Option<PathBuf>,
    /// Network slots this agent may use, `FIRST-LAST` (two agents on one host need disjoint ranges).
    #[arg(long, env = "WRENN_SLOTS", default_value = "1-32767")]
    pub slots: String,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Address for the RPC service and the port proxy.
    #[arg(long, env = "WRENN_HOST_LISTEN_ADDR", default_value = "0.0.0.0:50051")]
    pub listen: SocketAddr,
    /// Port of the metadata server guests reach at 169.254.169.254 (QEMU guests; 0 = off).
    #[arg(long, env = "WRENN_METADATA_PORT", default_value_t = 50052)]
    pub metadata_port: u16,
    /// VMM: `auto` (Firecracker when its binary exists, else QEMU), `qemu` or `firecracker`.
    #[arg(long, env = "WRENN_VMM", default_value = "auto")]
    pub vmm: String,
    /// QEMU binary (default: qemu-system-x86_64 on PATH).
    #[arg(long, env = "WRENN_QEMU_BIN")]
    pub qemu_binary: Option<PathBuf>,
    /// QEMU accelerator: `auto` (KVM with hardware virtualization, else TCG), `kvm` or `tcg`.
    #[arg(long, env = "WRENN_ACCEL", default_value = "auto")]
    pub accel: String,
    /// Firecracker binary.
    #[arg(
        long,
        env = "WRENN_FIRECRACKER_BIN",
        default_value = "/usr/local/bin/firecracker"
    )]
    pub firecracker_binary: PathBuf,
    #[arg(long, env = "WRENN_DEFAULT_VCPUS", default_value_t = 1)]
    pub default_vcpus: u32,
    #[arg(long, env = "WRENN_DEFAULT_MEMORY_MB", default_value_t = 512)]
    pub default_memory_mb: u32,
    /// Default sandbox disk size: `5G`, `2Gi`, `1000M` (G = 1024 MB).
    #[arg(long, env = "WRENN_DEFAULT_ROOTFS_SIZE", default_value = "5G")]
    pub default_disk: String,
    /// Boot watchdog: seconds for a guest's envd to answer (emulated boots are slow).
    #[arg(long, env = "WRENN_BOOT_TIMEOUT_SECS")]
    pub boot_timeout_secs: Option<u64>,
    /// The control plane's URL (`https://cp.example.com`). The agent registers with it (or
    /// reuses `<data-dir>/host-credentials.json`), heartbeats to it, and serves over mutual TLS
    /// with the certificate it issued: only the control plane can call the agent.
    #[arg(
        long,
        env = "WRENN_CP_URL",
        requires = "address",
        conflicts_with_all = ["tls_cert", "tls_key", "tls_client_ca"]
    )]
    pub cp_url: Option<String>,
    /// One-time registration token from `POST /v1/hosts`. Registers even when credentials exist.
    #[arg(
        long = "register",
        env = "WRENN_REGISTER_TOKEN",
        value_name = "TOKEN",
        requires = "cp_url",
        hide_env_values = true
    )]
    pub register_token: Option<String>,
    /// Where the control plane reaches this agent, `ip:port` or `name:port` (required with
    /// --cp-url; its host becomes the certificate's subject alternative name).
    #[arg(
        long,
        env = "WRENN_HOST_ADDRESS",
        value_name = "HOST:PORT",
        requires = "cp_url"
    )]
    pub address: Option<String>,
    /// Seconds between heartbeats to the control plane.
    #[arg(long, env = "WRENN_HEARTBEAT_SECS", default_value_t = 30, hide = true)]
    pub heartbeat_secs: u64,
    /// Server certificate (PEM). With --tls-key, the listener speaks TLS. Without a control
    /// plane only; SIGHUP reloads it.
    #[arg(long, env = "WRENN_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    #[arg(long, env = "WRENN_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// CA for client certificates: when set, clients must present a certificate it signed (mTLS).
    #[arg(long, env = "WRENN_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// On shutdown, destroy sandboxes instead of pausing them for the next agent.
    #[arg(
        long,
        env = "WRENN_DESTROY_ON_EXIT",
        conflicts_with = "keep_running_on_exit"
    )]
    pub destroy_on_exit: bool,
    /// On shutdown, leave running sandboxes running for the next agent to adopt instead of
    /// pausing them (an agent upgrade on a host that stays up).
    #[arg(long, env = "WRENN_KEEP_RUNNING_ON_EXIT")]
    pub keep_running_on_exit: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ImageBuildArgs {
    /// Where images go (`<dir>/<version>/`, `<dir>/current`).
    #[arg(
        long,
        env = "WRENN_IMAGES_DIR",
        default_value = "/var/lib/wrenn/images"
    )]
    pub images_dir: PathBuf,
    /// Cache for downloaded packages and the debootstrap tree.
    #[arg(
        long,
        env = "WRENN_IMAGE_CACHE",
        default_value = "/var/cache/wrenn/image-build"
    )]
    pub cache_dir: PathBuf,
    /// The static envd binary to put in the image.
    #[arg(long)]
    pub envd: PathBuf,
    /// Debian mirror (default: the one apt uses).
    #[arg(long)]
    pub mirror: Option<String>,
    /// Rebuild even if an image with the same inputs exists.
    #[arg(long)]
    pub force: bool,
}

/// `5G`, `2Gi`, `1000M`, `1000` → megabytes (G and Gi are both 1024 MB, as upstream).
pub fn parse_size_mb(s: &str) -> Result<u32, String> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("Gi").or_else(|| s.strip_suffix('G')) {
        (n, 1024)
    } else if let Some(n) = s.strip_suffix("Mi").or_else(|| s.strip_suffix('M')) {
        (n, 1)
    } else {
        (s, 1)
    };
    let n: u32 = num
        .trim()
        .parse()
        .map_err(|_| format!("bad size {s:?}; use e.g. 5G, 2Gi or 1000M"))?;
    n.checked_mul(mult)
        .filter(|v| *v > 0)
        .ok_or_else(|| format!("size {s:?} is out of range"))
}

/// `FIRST-LAST` → inclusive range within 1..=32767.
pub fn parse_slot_range(s: &str) -> Result<(u32, u32), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("bad slot range {s:?}; use FIRST-LAST, e.g. 1-32767"))?;
    let (a, b): (u32, u32) = (
        a.trim()
            .parse()
            .map_err(|_| format!("bad slot range {s:?}"))?,
        b.trim()
            .parse()
            .map_err(|_| format!("bad slot range {s:?}"))?,
    );
    if a == 0 || a > b || b > 32767 {
        return Err(format!(
            "slot range {s:?} must be within 1-32767 and FIRST <= LAST"
        ));
    }
    Ok((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn serve(args: &[&str]) -> Result<ServeArgs, clap::Error> {
        let cli = Cli::try_parse_from(["wrenn-agent", "serve"].iter().chain(args))?;
        match cli.command {
            Command::Serve(args) => Ok(*args),
            other => panic!("parsed {other:?}"),
        }
    }

    #[test]
    fn control_plane_flags_go_together() {
        let args = serve(&[
            "--cp-url",
            "https://cp.example",
            "--register",
            "tok",
            "--address",
            "10.0.0.5:50051",
        ])
        .expect("valid");
        assert_eq!(args.cp_url.as_deref(), Some("https://cp.example"));
        assert_eq!(args.register_token.as_deref(), Some("tok"));
        assert_eq!(args.address.as_deref(), Some("10.0.0.5:50051"));
        assert_eq!(args.heartbeat_secs, 30);
        assert!(
            serve(&["--cp-url", "https://cp.example"]).is_err(),
            "--address is required"
        );
        assert!(
            serve(&["--register", "tok"]).is_err(),
            "--register needs --cp-url"
        );
        assert!(
            serve(&[
                "--cp-url",
                "https://cp.example",
                "--address",
                "h:1",
                "--tls-cert",
                "c",
                "--tls-key",
                "k"
            ])
            .is_err(),
            "certificates come from the control plane"
        );
    }

    #[test]
    fn sizes_parse_like_upstream() {
        assert_eq!(parse_size_mb("5G"), Ok(5120));
        assert_eq!(parse_size_mb("2Gi"), Ok(2048));
        assert_eq!(parse_size_mb("1000M"), Ok(1000));
        assert_eq!(parse_size_mb("1000"), Ok(1000));
        assert!(parse_size_mb("lots").is_err());
        assert!(parse_size_mb("0").is_err());
    }

    #[test]
    fn slot_ranges_are_checked() {
        assert_eq!(parse_slot_range("100-199"), Ok((100, 199)));
        assert!(parse_slot_range("0-5").is_err());
        assert!(parse_slot_range("9-5").is_err());
        assert!(parse_slot_range("1-40000").is_err());
    }
}
