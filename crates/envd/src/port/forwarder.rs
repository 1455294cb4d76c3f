//! The scan loop and the relays: one forwarded listener per loopback-only port.

use super::scanner::{Family, Listener, Scanner, Socket};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

/// The ports being forwarded, shared with `PortSubsystem::forwarded_ports`.
pub(super) type Forwarded = Arc<Mutex<BTreeSet<u16>>>;

/// Which loopback listeners to expose, one per port (the external address has one of each).
///
/// A port is left alone when something other than the forwarder itself (`own` inodes) listens on
/// the external address or on a wildcard one: it is reachable already, and binding would fail.
/// When a program listens on both 127.0.0.1 and ::1, IPv4 is the target.
pub(super) fn plan(
    sockets: &[Socket],
    external_ip: IpAddr,
    own: &HashSet<u64>,
) -> BTreeMap<u16, Family> {
    let external_ip = external_ip.to_canonical();
    let taken: HashSet<u16> = sockets
        .iter()
        .filter(|s| s.is_listen() && !own.contains(&s.inode))
        .filter(|s| {
            let ip = s.local.ip().to_canonical();
            ip == external_ip || ip.is_unspecified()
        })
        .map(|s| s.local.port())
        .collect();
    let mut want = BTreeMap::new();
    for l in super::scanner::loopback_listeners(sockets) {
        if taken.contains(&l.port) {
            continue;
        }
        match l.family {
            Family::V4 => {
                want.insert(l.port, Family::V4);
            }
            Family::V6 => {
                want.entry(l.port).or_insert(Family::V6);
            }
        }
    }
    want
}

struct Forward {
    family: Family,
    inode: u64,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl Forward {
    /// Stops accepting and waits until the listener and every relay are closed.
    async fn close(self, port: u16) {
        self.cancel.cancel();
        if let Err(e) = self.task.await {
            tracing::warn!(port, error = %e, "port forward task failed");
        }
    }
}

/// Scans every `interval` and keeps one forward per loopback listener until `cancel` fires; then
/// closes every forward before returning, so nothing is left listening.
pub(super) async fn scan_loop(
    scanner: Scanner,
    external_ip: IpAddr,
    interval: Duration,
    cancel: CancellationToken,
    forwarded: Forwarded,
) {
    let mut forwards: HashMap<u16, Forward> = HashMap::new();
    // Ports whose last bind failed, so a persistent failure is logged once, not every scan.
    let mut bind_failed: HashSet<u16> = HashSet::new();
    let mut scan_failed = false;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let scan = {
            let scanner = scanner.clone();
            tokio::task::spawn_blocking(move || scanner.listening_sockets()).await
        };
        let sockets = match scan {
            Ok(Ok(sockets)) => {
                scan_failed = false;
                sockets
            }
            // Keep the current forwards: a failed read says nothing about the listeners.
            Ok(Err(e)) => {
                if !std::mem::replace(&mut scan_failed, true) {
                    tracing::warn!(error = %e, "cannot read the TCP socket tables");
                }
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "port scan task failed");
                continue;
            }
        };
        if cancel.is_cancelled() {
            break;
        }

        let own: HashSet<u64> = forwards.values().map(|f| f.inode).collect();
        let want = plan(&sockets, external_ip, &own);

        let stale: Vec<u16> = forwards
            .iter()
            .filter(|(port, f)| want.get(port) != Some(&f.family) || f.task.is_finished())
            .map(|(port, _)| *port)
            .collect();
        for port in stale {
            if let Some(f) = forwards.remove(&port) {
                f.close(port).await;
                tracing::info!(port, "stopped forwarding port");
            }
        }

        bind_failed.retain(|port| want.contains_key(port));
        for (&port, &family) in &want {
            if forwards.contains_key(&port) {
                continue;
            }
            let target = Listener { port, family }.loopback_addr();
            match open(SocketAddr::new(external_ip, port)).await {
                Ok((listener, inode)) => {
                    bind_failed.remove(&port);
                    let child = cancel.child_token();
                    let task = tokio::spawn(accept_loop(listener, target, child.clone()));
                    forwards.insert(
                        port,
                        Forward {
                            family,
                            inode,
                            cancel: child,
                            task,
                        },
                    );
                    tracing::info!(port, %external_ip, %target, "forwarding port");
                }
                Err(e) => {
                    if bind_failed.insert(port) {
                        tracing::debug!(port, %external_ip, error = %e, "cannot forward port yet; retrying at the next scan");
                    }
                }
            }
        }
        publish(&forwarded, forwards.keys().copied().collect());
    }

    for (port, f) in forwards.drain() {
        f.close(port).await;
    }
    publish(&forwarded, BTreeSet::new());
}

fn publish(forwarded: &Forwarded, ports: BTreeSet<u16>) {
    *forwarded.lock().unwrap_or_else(|p| p.into_inner()) = ports;
}

/// Binds the external address and learns the socket's inode, which the next scans will list.
async fn open(addr: SocketAddr) -> std::io::Result<(TcpListener, u64)> {
    let listener = TcpListener::bind(addr).await?;
    let stat = nix::sys::stat::fstat(&listener).map_err(std::io::Error::from)?;
    Ok((listener, stat.st_ino))
}

/// Accepts until cancelled, then closes the listener and aborts every relay before returning.
async fn accept_loop(listener: TcpListener, target: SocketAddr, cancel: CancellationToken) {
    let mut relays = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            Some(_) = relays.join_next(), if !relays.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((inbound, _)) => {
                    relays.spawn(relay(inbound, target));
                }
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::debug!(%target, error = %e, "accept failed on a forwarded port");
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    }
                }
            },
        }
    }
    drop(listener);
    relays.shutdown().await;
}

async fn relay(mut inbound: TcpStream, target: SocketAddr) {
    let mut outbound = match TcpStream::connect(target).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(%target, error = %e, "cannot reach the forwarded listener");
            return;
        }
    };
    inbound.set_nodelay(true).ok();
    outbound.set_nodelay(true).ok();
    if let Err(e) = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await {
        tracing::debug!(%target, error = %e, "forwarded connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn listen(ip: IpAddr, port: u16, inode: u64) -> Socket {
        Socket {
            local: SocketAddr::new(ip, port),
            state: super::super::scanner::TCP_LISTEN,
            inode,
        }
    }

    const LO4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
    const LO6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);
    const EXT: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn plans_loopback_only_ports() {
        let sockets = [
            listen(LO4, 8080, 1),
            listen(LO6, 3000, 2),
            // Both families: one forward, to IPv4.
            listen(LO4, 5000, 3),
            listen(LO6, 5000, 4),
            // Also on a wildcard or the external address: reachable already.
            listen(LO4, 6000, 5),
            listen(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 6000, 6),
            listen(LO6, 6001, 7),
            listen(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 6001, 8),
            listen(LO4, 6002, 9),
            listen(EXT, 6002, 10),
            listen(LO4, 6003, 11),
            listen(
                IpAddr::V6(Ipv4Addr::new(10, 0, 0, 2).to_ipv6_mapped()),
                6003,
                12,
            ),
            // Not loopback at all.
            listen(EXT, 22, 13),
        ];
        let want: Vec<_> = plan(&sockets, EXT, &HashSet::new()).into_iter().collect();
        assert_eq!(
            want,
            vec![(3000, Family::V6), (5000, Family::V4), (8080, Family::V4)]
        );
    }

    #[test]
    fn own_listeners_do_not_block_their_port() {
        let sockets = [listen(LO4, 8080, 1), listen(EXT, 8080, 99)];
        assert!(plan(&sockets, EXT, &HashSet::new()).is_empty());
        let own = HashSet::from([99]);
        assert_eq!(plan(&sockets, EXT, &own).get(&8080), Some(&Family::V4));
    }

    #[test]
    fn loopback_external_address_forwards_nothing() {
        let sockets = [listen(LO4, 8080, 1)];
        assert!(plan(&sockets, LO4, &HashSet::new()).is_empty());
    }
}
