//! The accept loop: HTTP/1.1 and h2c on one port, each connection tracked for snapshots.

use crate::state::SharedState;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Default time a client has to start and finish its request headers. For HTTP/1.1 it also
/// bounds how long a keep-alive connection may sit idle between requests.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// HTTP/2 keep-alive pings find dead peers.
const H2_KEEPALIVE: Duration = Duration::from_secs(30);

/// Serves `router` on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    state: SharedState,
    shutdown: CancellationToken,
    header_read_timeout: Duration,
) -> std::io::Result<()> {
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return Ok(()),
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let state = state.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let guard = state.conns.register();
            let id = guard.id;
            // hyper-util runs no timer while it tells HTTP/1 from HTTP/2, so a peer that connects
            // and sends nothing would be held forever: wait for its first byte here, bounded.
            let mut first = [0u8; 1];
            tokio::select! {
                r = tokio::time::timeout(header_read_timeout, stream.peek(&mut first)) => {
                    if !matches!(r, Ok(Ok(n)) if n > 0) {
                        tracing::debug!(%peer, "connection sent nothing in time; closing");
                        return;
                    }
                }
                _ = guard.graceful.cancelled() => return,
                _ = guard.abort.cancelled() => return,
            }
            let svc = router.map_request(move |mut req: http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(id);
                req.map(axum::body::Body::new)
            });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout)
                .keep_alive(state.conns.keep_alive());
            builder
                .http2()
                .timer(TokioTimer::new())
                .keep_alive_interval(H2_KEEPALIVE)
                .keep_alive_timeout(Duration::from_secs(20));
            let conn = builder.serve_connection_with_upgrades(
                TokioIo::new(stream),
                TowerToHyperService::new(svc),
            );
            tokio::pin!(conn);
            let mut closing = false;
            loop {
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::trace!(%peer, error = %e, "connection ended with an error");
                        }
                        break;
                    }
                    _ = guard.graceful.cancelled(), if !closing => {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    _ = shutdown.cancelled(), if !closing => {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    _ = guard.abort.cancelled() => break,
                }
            }
        });
    }
}
