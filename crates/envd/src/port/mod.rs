//! Port forwarding.
//!
//! Programs inside the VM often listen on loopback only, but the host reaches the VM through its
//! external address. envd therefore scans the kernel's TCP tables and exposes each loopback-only
//! listener on `external_ip:port`, relaying every connection to the loopback address.
//!
//! The subsystem is stopped before a snapshot (nothing may stay listening: the host side of those
//! connections will be gone after restore) and started again after restore.

mod forwarder;
mod scanner;

pub use scanner::{
    Family, Listener, Scanner, Socket, TCP_LISTEN, loopback_listeners, parse_proc_net_tcp,
};

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct PortConfig {
    /// Root of the proc file system; tests point it at a fake tree.
    pub proc_root: PathBuf,
    /// Where loopback listeners are exposed; `None` turns forwarding off (envd on a plain host).
    pub external_ip: Option<IpAddr>,
    pub scan_interval: Duration,
}

impl Default for PortConfig {
    fn default() -> Self {
        Self {
            proc_root: PathBuf::from("/proc"),
            external_ip: None,
            scan_interval: Duration::from_millis(100),
        }
    }
}

/// A started scan loop; `task` is `None` when forwarding is off.
struct Runner {
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

struct Inner {
    config: PortConfig,
    /// Serialises start, stop and restart; held across their awaits.
    runner: tokio::sync::Mutex<Option<Runner>>,
    running: AtomicBool,
    forwarded: forwarder::Forwarded,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Without this an abandoned scan loop would keep forwarding forever.
        if let Some(r) = self.runner.get_mut().take() {
            r.cancel.cancel();
        }
    }
}

/// The port forwarder. Cheap to clone; every clone controls the same scan loop.
#[derive(Clone)]
pub struct PortSubsystem {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PortSubsystem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortSubsystem")
            .field("config", &self.inner.config)
            .field("running", &self.is_running())
            .field("forwarded", &self.forwarded_ports())
            .finish()
    }
}

impl PortSubsystem {
    pub fn new(config: PortConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                runner: tokio::sync::Mutex::new(None),
                running: AtomicBool::new(false),
                forwarded: Arc::new(Mutex::new(BTreeSet::new())),
            }),
        }
    }

    pub fn config(&self) -> &PortConfig {
        &self.inner.config
    }

    /// Starts the scan loop; does nothing if it runs already. Needs a tokio runtime.
    pub async fn start(&self) {
        let mut runner = self.inner.runner.lock().await;
        self.start_locked(&mut runner);
    }

    /// Stops the scan loop and returns once every forwarded listener and relay is closed.
    /// Stopping a stopped subsystem does nothing.
    pub async fn stop(&self) {
        let mut runner = self.inner.runner.lock().await;
        self.stop_locked(&mut runner).await;
    }

    /// Stops, then starts again (after a snapshot restore), with no start or stop in between.
    pub async fn restart(&self) {
        let mut runner = self.inner.runner.lock().await;
        self.stop_locked(&mut runner).await;
        self.start_locked(&mut runner);
    }

    pub fn is_running(&self) -> bool {
        self.inner.running.load(Ordering::Acquire)
    }

    /// The ports currently exposed on the external address, ascending.
    pub fn forwarded_ports(&self) -> Vec<u16> {
        self.inner
            .forwarded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect()
    }

    fn start_locked(&self, runner: &mut Option<Runner>) {
        if runner.is_some() {
            return;
        }
        let cancel = CancellationToken::new();
        let config = &self.inner.config;
        let task = match config.external_ip {
            Some(external_ip) => {
                tracing::info!(%external_ip, interval = ?config.scan_interval, "port forwarding started");
                Some(tokio::spawn(forwarder::scan_loop(
                    Scanner::new(config.proc_root.clone()),
                    external_ip,
                    // A zero period would make tokio's interval panic.
                    config.scan_interval.max(Duration::from_millis(1)),
                    cancel.clone(),
                    self.inner.forwarded.clone(),
                )))
            }
            None => {
                tracing::info!("port forwarding off: no external address");
                None
            }
        };
        *runner = Some(Runner { cancel, task });
        self.inner.running.store(true, Ordering::Release);
    }

    async fn stop_locked(&self, runner: &mut Option<Runner>) {
        let Some(r) = runner.take() else {
            return;
        };
        self.inner.running.store(false, Ordering::Release);
        r.cancel.cancel();
        if let Some(task) = r.task {
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "port scan loop failed");
            }
            tracing::info!("port forwarding stopped");
        }
        // The loop clears it on exit; a panicked loop would not have.
        self.inner
            .forwarded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, SocketAddr};
    use std::time::Instant;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::{TcpListener, TcpStream};

    /// A 127/8 address (Linux routes all of it to lo) unique to this test process, so concurrent
    /// test runs on the host do not forward each other's ports on the same address.
    fn external_ip(n: u8) -> IpAddr {
        let pid = std::process::id();
        IpAddr::V4(Ipv4Addr::new(
            127,
            10 + (pid % 200) as u8,
            (pid / 200 % 256) as u8,
            n,
        ))
    }

    fn subsystem(external_ip: IpAddr) -> PortSubsystem {
        PortSubsystem::new(PortConfig {
            proc_root: "/proc".into(),
            external_ip: Some(external_ip),
            scan_interval: Duration::from_millis(100),
        })
    }

    /// A loopback server answering each line with `echo: <line>`.
    async fn echo_server() -> (u16, JoinHandle<()>) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (r, mut w) = stream.into_split();
                    let mut lines = BufReader::new(r).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        if w.write_all(format!("echo: {line}\n").as_bytes())
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                });
            }
        });
        (port, task)
    }

    async fn ask(addr: SocketAddr, line: &str) -> std::io::Result<String> {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(format!("{line}\n").as_bytes()).await?;
        let mut reply = String::new();
        BufReader::new(stream).read_line(&mut reply).await?;
        Ok(reply)
    }

    async fn refused(addr: SocketAddr) -> bool {
        matches!(
            TcpStream::connect(addr).await,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
        )
    }

    /// Polls for up to 3 s until `addr` answers the echo (`true`) or refuses connections
    /// (`false`); returns how long it took.
    async fn wait_until(addr: SocketAddr, answering: bool) -> Duration {
        let start = Instant::now();
        loop {
            let done = if answering {
                ask(addr, "ping").await.is_ok_and(|r| r == "echo: ping\n")
            } else {
                refused(addr).await
            };
            if done {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < Duration::from_secs(3),
                "{addr} still {} after 3 s",
                if answering { "silent" } else { "accepting" }
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn forwards_a_loopback_listener_until_it_goes_away() {
        let ip = external_ip(2);
        let (port, server) = echo_server().await;
        let external = SocketAddr::new(ip, port);
        let ports = subsystem(ip);
        ports.start().await;
        assert!(ports.is_running());

        let took = wait_until(external, true).await;
        assert!(took < Duration::from_secs(3), "forward took {took:?}");
        assert_eq!(ask(external, "hello").await.unwrap(), "echo: hello\n");
        assert!(ports.forwarded_ports().contains(&port));

        server.abort();
        let _ = server.await;
        wait_until(external, false).await;

        ports.stop().await;
        assert!(!ports.is_running());
        assert!(ports.forwarded_ports().is_empty());
        assert!(refused(external).await);
        // Idempotent.
        ports.stop().await;
    }

    #[tokio::test]
    async fn stop_closes_everything_and_restart_forwards_again() {
        let ip = external_ip(3);
        let (port, _server) = echo_server().await;
        let external = SocketAddr::new(ip, port);
        let ports = subsystem(ip);
        let clone = ports.clone();
        ports.start().await;
        ports.start().await; // No second loop.
        wait_until(external, true).await;

        // An open relay is closed by stop, and nothing is left listening when stop returns.
        let mut open = TcpStream::connect(external).await.unwrap();
        open.write_all(b"still here?\n").await.unwrap();
        let mut buf = [0u8; 64];
        let n = open.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"echo: still here?\n");
        clone.stop().await;
        assert!(!ports.is_running());
        assert!(refused(external).await);
        let closed = tokio::time::timeout(Duration::from_secs(3), open.read(&mut buf)).await;
        assert!(
            matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
            "relay still open: {closed:?}"
        );

        // It stays down: no scan loop survives stop.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(refused(external).await);

        ports.restart().await;
        assert!(ports.is_running());
        wait_until(external, true).await;
        ports.restart().await;
        wait_until(external, true).await;
        ports.stop().await;
        assert!(refused(external).await);
    }

    #[tokio::test]
    async fn no_external_address_means_no_forwarding() {
        let ports = PortSubsystem::new(PortConfig::default());
        ports.start().await;
        assert!(ports.is_running());
        assert!(ports.forwarded_ports().is_empty());
        ports.restart().await;
        ports.stop().await;
        assert!(!ports.is_running());
    }

    #[tokio::test]
    async fn dropping_the_last_handle_stops_forwarding() {
        let ip = external_ip(4);
        let (port, _server) = echo_server().await;
        let external = SocketAddr::new(ip, port);
        let ports = subsystem(ip);
        ports.start().await;
        wait_until(external, true).await;
        drop(ports);
        wait_until(external, false).await;
    }
}
