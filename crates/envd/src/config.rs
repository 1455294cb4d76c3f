//! Command line, with the upstream envd's flags (`--port`, `--isnotfc`, `--cmd`, ...).

use clap::Parser;
use std::net::IpAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "envd",
    about = "Wrenn's guest agent",
    disable_version_flag = true
)]
pub struct Config {
    /// Port to serve HTTP and Connect RPC on.
    #[arg(long, default_value_t = wrenn_protocol::envd::ENVD_PORT)]
    pub port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    pub listen_address: IpAddr,
    /// Not in a VM: no metadata service, no cgroups, no page-cache drops; human-readable logs.
    #[arg(long = "isnotfc")]
    pub is_not_fc: bool,
    /// Print the version and exit.
    #[arg(long)]
    pub version: bool,
    /// Print the commit envd was built from and exit.
    #[arg(long)]
    pub commit: bool,
    /// A command started at boot (tagged `init-cmd`) as the default user.
    #[arg(long)]
    pub cmd: Option<String>,
    /// Root of the cgroup hierarchy (VM only).
    #[arg(long, default_value = "/sys/fs/cgroup")]
    pub cgroup_root: PathBuf,
    /// User processes and file operations run as unless a request names another.
    #[arg(long, default_value = "root")]
    pub default_user: String,
    /// Where envd writes its marker files (default `/run/wrenn`; a private temporary
    /// directory with --isnotfc).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Address loopback-only listeners are exposed on. Defaults to the first non-loopback IPv4
    /// address in a VM; forwarding is off with --isnotfc unless this is given.
    #[arg(long)]
    pub forward_address: Option<IpAddr>,
    /// How often listening sockets are scanned for forwarding, in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub port_scan_interval_ms: u64,
    /// The VMM's metadata service (VM only; tests point it elsewhere).
    #[arg(long, default_value = crate::metadata::DEFAULT_MMDS_ADDRESS, hide = true)]
    pub mmds_address: String,
    /// Root of the proc file system (tests point it elsewhere).
    #[arg(long, default_value = "/proc", hide = true)]
    pub proc_root: PathBuf,
}

/// The first non-loopback IPv4 address of this machine, where port forwards are bound.
pub fn detect_external_ipv4() -> Option<IpAddr> {
    let addrs = nix::ifaddrs::getifaddrs().ok()?;
    for a in addrs {
        if let Some(sin) = a.address.as_ref().and_then(|s| s.as_sockaddr_in()) {
            let ip = sin.ip();
            if !ip.is_loopback() && !ip.is_unspecified() {
                return Some(IpAddr::V4(ip));
            }
        }
    }
    None
}
