//! The HTTP/1.1 server of the host agent and the control plane: an accept loop with header-read
//! and idle timeouts, an optional TLS acceptor, and graceful shutdown.
//!
//! HTTP/1.1 only, on purpose: with HTTP/2 every request from the control plane to an agent would
//! share one connection, and one slow stream (a large file transfer, a proxied download the
//! client reads slowly) would stall the others behind flow control. Upstream disables HTTP/2 for
//! the same reason; TLS advertises only `http/1.1` (see [`crate::tls`]).
//!
//! Timeouts follow upstream's Go server (`ReadHeaderTimeout` 10 s, `IdleTimeout` 620 s) and are
//! enforced here rather than by hyper's `header_read_timeout`, because hyper starts that timer as
//! soon as it waits for a request head, which includes the idle time between keep-alive
//! requests: it would close a client's pooled connections after 10 s, racing requests the client
//! already sent on them. Here the header timer starts at connect and at the first byte of each
//! later request; the idle timer covers the quiet time between requests. A request in progress
//! (however long: streams, long polls, WebSockets) is never timed out.

use axum::Router;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Connection limits. The defaults match upstream's agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Time a client has to send a complete request head, counted from connect (or the end of
    /// the TLS handshake) for the first request and from the first byte for later ones.
    pub header_read_timeout: Duration,
    /// A keep-alive connection with no request for this long is closed. Longer than any
    /// client's pool idle timeout (the control plane's is 90 s), so the client always closes
    /// first and never sends a request on a connection the server is closing.
    pub idle_timeout: Duration,
    /// Time a client has to finish the TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// On shutdown, how long in-flight requests may take before their connections are dropped.
    pub shutdown_grace: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(620),
            tls_handshake_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// Facts about the connection a request came in on, put into every request's extensions
/// (next to axum's [`ConnectInfo<SocketAddr>`]) for handlers such as the proxy's
/// `X-Forwarded-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionInfo {
    pub peer: SocketAddr,
    /// Whether the connection is TLS (the scheme the client used).
    pub tls: bool,
}

/// How long the accept loop pauses after an accept error (EMFILE and friends) instead of
/// spinning on it.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `router` on `listener` (over TLS when `tls` is given) until `shutdown` completes.
///
/// Then it stops accepting, lets in-flight requests finish for up to
/// [`ServerLimits::shutdown_grace`], drops the connections still open and returns. Idle
/// keep-alive connections are closed at once. Upgraded connections (WebSocket tunnels) belong
/// to their handlers from the moment of the upgrade and are not waited for.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = CancellationToken::new();
    let abort = CancellationToken::new();
    let tasks = TaskTracker::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors, or an aborted handshake in the kernel queue: the
                    // listener itself is fine, so wait a little and keep serving.
                    tracing::warn!(error = %e, "accept failed; retrying");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
        }
        let conn = Connection {
            router: router.clone(),
            limits,
            graceful: graceful.clone(),
            abort: abort.clone(),
            peer,
        };
        tasks.spawn(conn.run(stream, tls.clone()));
    }
    drop(listener);
    tracing::info!(
        connections = tasks.len(),
        grace = ?limits.shutdown_grace,
        "HTTP server stopping; letting in-flight requests finish"
    );
    graceful.cancel();
    tasks.close();
    if tokio::time::timeout(limits.shutdown_grace, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            connections = tasks.len(),
            "shutdown grace period over; dropping the remaining connections"
        );
        abort.cancel();
        tasks.wait().await;
    }
    tracing::info!("HTTP server stopped");
}

struct Connection {
    router: Router,
    limits: ServerLimits,
    /// Cancelled when the server starts shutting down: finish the current request, then close.
    graceful: CancellationToken,
    /// Cancelled when the grace period is over: drop the connection now.
    abort: CancellationToken,
    peer: SocketAddr,
}

impl Connection {
    async fn run(self, stream: TcpStream, tls: Option<TlsAcceptor>) {
        let Some(acceptor) = tls else {
            return self.serve_http(stream, false).await;
        };
        let handshake = tokio::select! {
            r = tokio::time::timeout(self.limits.tls_handshake_timeout, acceptor.accept(stream)) => r,
            () = self.graceful.cancelled() => return,
        };
        match handshake {
            Ok(Ok(stream)) => self.serve_http(stream, true).await,
            Ok(Err(e)) => tracing::debug!(peer = %self.peer, error = %e, "TLS handshake failed"),
            Err(_) => tracing::debug!(peer = %self.peer, "TLS handshake timed out"),
        }
    }

    async fn serve_http<S>(self, stream: S, tls: bool)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let peer = self.peer;
        let activity = Arc::new(Activity::new());
        let io = TokioIo::new(TrackedIo {
            inner: stream,
            activity: activity.clone(),
        });
        let info = ConnectionInfo { peer, tls };
        let router = TowerToHyperService::new(self.router);
        let svc_activity = activity.clone();
        let svc = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
            let guard = RequestGuard::start(svc_activity.clone());
            req.extensions_mut().insert(info);
            req.extensions_mut().insert(ConnectInfo(peer));
            let response = hyper::service::Service::call(&router, req);
            async move {
                let response = response.await?;
                Ok::<_, Infallible>(response.map(|inner| TrackedBody {
                    inner,
                    _guard: guard,
                }))
            }
        });
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            // Enforced by the watchdog below; see the module docs for why not by hyper.
            .header_read_timeout(None)
            .keep_alive(true);
        let conn = builder.serve_connection(io, svc).with_upgrades();
        let mut conn = std::pin::pin!(conn);
        let mut closing = false;
        loop {
            let deadline = activity.deadline(&self.limits, closing);
            let timer = async {
                match deadline {
                    Some((at, _)) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                () = activity.changed.notified() => {}
                () = timer => match deadline {
                    Some((_, Expiry::Header)) => {
                        tracing::debug!(%peer, "request head not received in time; closing");
                        return;
                    }
                    _ => {
                        tracing::trace!(%peer, "keep-alive connection idle; closing");
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                },
                () = self.graceful.cancelled(), if !closing => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
                () = self.abort.cancelled() => {
                    tracing::debug!(%peer, "dropping connection at the end of the shutdown grace");
                    return;
                }
            }
        }
    }
}

/// Which timer a connection's watchdog is waiting on.
#[derive(Debug, Clone, Copy)]
enum Expiry {
    Header,
    Idle,
}

/// What a connection is doing, for its watchdog.
struct Activity {
    state: Mutex<ActivityState>,
    /// Woken on every transition the deadline depends on (only one waiter: the watchdog).
    changed: Notify,
}

struct ActivityState {
    /// Requests whose response body is not finished yet (0 or 1: HTTP/1.1 is sequential).
    busy: usize,
    /// When the connection last became idle.
    idle_since: Instant,
    /// When the head of the next request started arriving (its first byte, or the connect).
    head_started: Option<Instant>,
}

impl Activity {
    fn new() -> Self {
        let now = Instant::now();
        Self {
            // The first request is timed from the connect, as Go's server does: a client that
            // connects and sends nothing is a slow-loris, not an idle keep-alive connection.
            state: Mutex::new(ActivityState {
                busy: 0,
                idle_since: now,
                head_started: Some(now),
            }),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ActivityState> {
        // The state is plain data and always consistent; a panic elsewhere must not wedge it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn deadline(&self, limits: &ServerLimits, closing: bool) -> Option<(Instant, Expiry)> {
        let state = self.lock();
        if state.busy > 0 {
            return None;
        }
        match state.head_started {
            Some(at) => Some((at + limits.header_read_timeout, Expiry::Header)),
            // Once closing, the idle timer has done its job; only a slow head still matters.
            None if closing => None,
            None => Some((state.idle_since + limits.idle_timeout, Expiry::Idle)),
        }
    }

    /// Bytes arrived: if the connection was idle, they are the start of the next request head.
    fn bytes_read(&self) {
        let mut state = self.lock();
        if state.busy == 0 && state.head_started.is_none() {
            state.head_started = Some(Instant::now());
            drop(state);
            self.changed.notify_one();
        }
    }

    fn request_started(&self) {
        let mut state = self.lock();
        state.busy += 1;
        state.head_started = None;
        drop(state);
        self.changed.notify_one();
    }

    fn request_finished(&self) {
        let mut state = self.lock();
        state.busy = state.busy.saturating_sub(1);
        if state.busy == 0 {
            state.idle_since = Instant::now();
            state.head_started = None;
        }
        drop(state);
        self.changed.notify_one();
    }
}

/// Marks a request busy from the moment its head is parsed until its response body is done
/// (or dropped, e.g. when the client goes away).
struct RequestGuard(Arc<Activity>);

impl RequestGuard {
    fn start(activity: Arc<Activity>) -> Self {
        activity.request_started();
        Self(activity)
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// The response body, holding the request's [`RequestGuard`]. hyper drops it once the last
/// frame is written.
struct TrackedBody {
    inner: axum::body::Body,
    _guard: RequestGuard,
}

impl HttpBody for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The connection's socket, reporting reads to its [`Activity`] so the header timer can start
/// at the first byte of a request.
struct TrackedIo<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for TrackedIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.bytes_read();
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TrackedIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn router() -> Router {
        Router::new()
            .route("/", get(|| async { "ok" }))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_millis(600)).await;
                    "slow"
                }),
            )
            .route(
                "/forever",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    "never"
                }),
            )
    }

    fn limits() -> ServerLimits {
        ServerLimits {
            header_read_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_millis(1200),
            tls_handshake_timeout: Duration::from_millis(300),
            shutdown_grace: Duration::from_secs(5),
        }
    }

    async fn start(
        limits: ServerLimits,
    ) -> (
        SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, router(), None, limits, async {
            let _ = rx.await;
        }));
        (addr, tx, task)
    }

    /// Reads one `Content-Length` response; `None` when the server closed the connection.
    async fn read_response(stream: &mut TcpStream) -> Option<String> {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte).await {
                Ok(1) => buf.push(byte[0]),
                _ => return None,
            }
        }
        let head = String::from_utf8(buf).expect("utf8 head");
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(str::to_owned)
            })
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        stream.read_exact(&mut body).await.ok()?;
        Some(format!("{head}{}", String::from_utf8_lossy(&body)))
    }

    async fn closed(stream: &mut TcpStream) -> bool {
        let mut byte = [0u8; 1];
        matches!(stream.read(&mut byte).await, Ok(0) | Err(_))
    }

    #[tokio::test]
    async fn slow_loris_is_cut_off_after_the_header_timeout() {
        let (addr, _stop, _task) = start(limits()).await;
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("write");
        let started = Instant::now();
        let gone = tokio::time::timeout(Duration::from_secs(3), closed(&mut s))
            .await
            .expect("server must close the connection");
        assert!(gone);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(250),
            "closed too early: {waited:?}"
        );

        // A client that connects and says nothing is cut off too.
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let gone = tokio::time::timeout(Duration::from_secs(3), closed(&mut s))
            .await
            .expect("server must close the silent connection");
        assert!(gone);
    }

    #[tokio::test]
    async fn idle_keep_alive_outlives_the_header_timeout_and_then_closes() {
        let (addr, _stop, _task) = start(limits()).await;
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let r = read_response(&mut s).await.expect("response");
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        // Idle for longer than the header timeout: still usable.
        tokio::time::sleep(Duration::from_millis(600)).await;
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let r = read_response(&mut s)
            .await
            .expect("second response on the idle connection");
        assert!(r.ends_with("ok"), "{r}");
        // A request that takes longer than the header timeout is not cut off either.
        s.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let r = read_response(&mut s).await.expect("slow response");
        assert!(r.ends_with("slow"), "{r}");
        // Then idle past the idle timeout: closed.
        let started = Instant::now();
        let gone = tokio::time::timeout(Duration::from_secs(5), closed(&mut s))
            .await
            .expect("idle connection must be closed");
        assert!(gone);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(1000),
            "closed too early: {waited:?}"
        );
    }

    #[tokio::test]
    async fn graceful_shutdown_waits_for_in_flight_requests() {
        let (addr, stop, task) = start(limits()).await;
        let mut idle = TcpStream::connect(addr).await.expect("connect");
        idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        read_response(&mut idle).await.expect("response");

        let mut busy = TcpStream::connect(addr).await.expect("connect");
        busy.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.send(()).expect("stop");
        // The idle keep-alive connection is closed at once.
        let gone = tokio::time::timeout(Duration::from_millis(300), closed(&mut idle))
            .await
            .expect("idle connection closed on shutdown");
        assert!(gone);
        let r = read_response(&mut busy)
            .await
            .expect("in-flight request finishes");
        assert!(r.ends_with("slow"), "{r}");
        assert!(r.to_ascii_lowercase().contains("connection: close"), "{r}");
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .expect("serve returns")
            .expect("join");
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "listener must be closed"
        );
    }

    #[tokio::test]
    async fn shutdown_drops_requests_that_outlast_the_grace() {
        let (addr, stop, task) = start(ServerLimits {
            shutdown_grace: Duration::from_millis(300),
            ..limits()
        })
        .await;
        let mut busy = TcpStream::connect(addr).await.expect("connect");
        busy.write_all(b"GET /forever HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = Instant::now();
        stop.send(()).expect("stop");
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .expect("serve returns after the grace")
            .expect("join");
        assert!(started.elapsed() >= Duration::from_millis(250));
        assert!(read_response(&mut busy).await.is_none());
    }
}
