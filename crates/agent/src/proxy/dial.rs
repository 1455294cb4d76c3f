//! Dialing guest ports, with retries.
//!
//! A user typically starts a server in the sandbox and opens its URL right away; the server may
//! need a moment before it listens. Refused (and timed-out) connects are therefore retried with
//! a growing backoff for a short window before the proxy answers 502. The retry lives in the
//! connector, below the HTTP client, so the request (and its streaming body) is never consumed
//! by a failed attempt and needs no buffering to be re-sent.

use hyper_util::rt::TokioIo;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// First pause between attempts; doubled after each failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// Keeps retries frequent enough that a server coming up late in the window is found quickly.
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// The proxy client's connector: plain TCP with a connect timeout and a retry window.
#[derive(Debug, Clone)]
pub(super) struct RetryingConnector {
    pub(super) connect_timeout: Duration,
    pub(super) retry_for: Duration,
}

/// Why a guest port could not be reached, after all attempts.
#[derive(Debug)]
pub(super) struct DialError {
    pub(super) addr: Option<SocketAddr>,
    pub(super) attempts: u32,
    pub(super) elapsed: Duration,
    pub(super) source: io::Error,
}

impl DialError {
    /// Nothing listens on the port (as opposed to the guest not answering at all).
    pub(super) fn refused(&self) -> bool {
        self.source.kind() == io::ErrorKind::ConnectionRefused
    }
}

impl std::fmt::Display for DialError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.addr {
            Some(addr) => write!(
                f,
                "cannot connect to {addr} ({} attempts in {:.1?})",
                self.attempts, self.elapsed
            ),
            None => write!(f, "bad proxy target"),
        }
    }
}

impl std::error::Error for DialError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl tower::Service<http::Uri> for RetryingConnector {
    type Response = TokioIo<TcpStream>;
    type Error = DialError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, DialError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), DialError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let addr = target_addr(&uri).ok_or_else(|| DialError {
                addr: None,
                attempts: 0,
                elapsed: Duration::ZERO,
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{uri} does not name an IP address and port"),
                ),
            })?;
            this.dial(addr).await.map(TokioIo::new)
        })
    }
}

impl RetryingConnector {
    async fn dial(&self, addr: SocketAddr) -> Result<TcpStream, DialError> {
        let started = Instant::now();
        let deadline = started + self.retry_for;
        let mut backoff = FIRST_BACKOFF;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let error =
                match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
                    Ok(Ok(stream)) => {
                        if let Err(e) = stream.set_nodelay(true) {
                            tracing::debug!(%addr, error = %e, "cannot set TCP_NODELAY");
                        }
                        if attempts > 1 {
                            tracing::debug!(%addr, attempts, "guest port reachable after retries");
                        }
                        return Ok(stream);
                    }
                    Ok(Err(e)) => e,
                    Err(_) => io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no answer within {:?}", self.connect_timeout),
                    ),
                };
            let now = Instant::now();
            if !retryable(&error) || now >= deadline {
                return Err(DialError {
                    addr: Some(addr),
                    attempts,
                    elapsed: now - started,
                    source: error,
                });
            }
            tokio::time::sleep(backoff.min(deadline - now)).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// Errors a guest that is still starting its server (or still booting its network) produces.
fn retryable(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::TimedOut
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
    )
}

fn target_addr(uri: &http::Uri) -> Option<SocketAddr> {
    let host = uri.host()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let ip: IpAddr = host.parse().ok()?;
    Some(SocketAddr::new(ip, uri.port_u16()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_addresses() {
        let uri: http::Uri = "http://10.11.0.2:8080/x".parse().expect("uri");
        assert_eq!(
            target_addr(&uri),
            Some("10.11.0.2:8080".parse().expect("addr"))
        );
        let uri: http::Uri = "http://[::1]:80/".parse().expect("uri");
        assert_eq!(target_addr(&uri), Some("[::1]:80".parse().expect("addr")));
        let uri: http::Uri = "http://example.com:80/".parse().expect("uri");
        assert_eq!(target_addr(&uri), None);
    }
}
