//! Streaming bodies and byte tunnels for reverse proxies. Nothing is buffered beyond one frame:
//! a multi-gigabyte download moves at the speed of the slower side in constant memory.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::{CancellationToken, DropGuard};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Told about bytes moving through a proxied request, response or tunnel (the agent counts
/// them as sandbox activity for its idle timer). Called for every frame or read, so it must be
/// cheap; throttle inside if the reaction is not. Any `Fn()` works, `|| {}` for none.
pub trait Traffic: Send + Sync {
    fn traffic(&self);
}

impl<F: Fn() + Send + Sync> Traffic for F {
    fn traffic(&self) {
        self()
    }
}

/// A body passed through unchanged, reporting each data frame to a [`Traffic`] observer. Wrap
/// a request body going upstream in it.
pub struct ObservedBody<B> {
    inner: B,
    observer: Arc<dyn Traffic>,
}

impl<B> ObservedBody<B> {
    pub fn new(inner: B, observer: Arc<dyn Traffic>) -> Self {
        Self { inner, observer }
    }
}

impl<B> Body for ObservedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && frame.is_data()
        {
            self.observer.traffic();
        }
        polled.map(|f| f.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An upstream response body on its way to the client that can be cut off from outside.
///
/// The upstream body and a `guard` (anything to keep alive exactly as long as the upstream
/// connection is in use, e.g. an in-flight counter) sit in a slot shared with a watcher task.
/// When `cancel` fires, the watcher empties the slot: that closes the upstream connection and
/// drops the guard at once, even if the client stopped reading and hyper is not polling this
/// body. The client then sees the response cut short (an error, not a clean end).
pub struct AbortableBody<G: Send + 'static = ()> {
    slot: Arc<Mutex<Slot<G>>>,
    observer: Arc<dyn Traffic>,
    size_hint: SizeHint,
    /// Dropping the body tells the watcher to stop.
    _done: DropGuard,
}

struct Slot<G> {
    upstream: Option<(Incoming, G)>,
    /// Set when the watcher emptied the slot, so the client gets an error, not a clean end.
    aborted: bool,
    /// The task last waiting on the upstream body, woken when the watcher empties the slot.
    waker: Option<Waker>,
}

fn lock<G>(slot: &Mutex<Slot<G>>) -> MutexGuard<'_, Slot<G>> {
    slot.lock().unwrap_or_else(|e| e.into_inner())
}

impl<G: Send + 'static> AbortableBody<G> {
    /// Must be called inside a tokio runtime (it spawns the watcher). `label` names the
    /// traffic in logs (a sandbox id).
    pub fn new(
        upstream: Incoming,
        guard: G,
        cancel: CancellationToken,
        observer: Arc<dyn Traffic>,
        label: &str,
    ) -> Self {
        let size_hint = upstream.size_hint();
        let slot = Arc::new(Mutex::new(Slot {
            upstream: Some((upstream, guard)),
            aborted: false,
            waker: None,
        }));
        let done = CancellationToken::new();
        let watcher_slot = slot.clone();
        let watcher_done = done.clone();
        let label = label.to_owned();
        tokio::spawn(async move {
            tokio::select! {
                () = cancel.cancelled() => {
                    let mut slot = lock(&watcher_slot);
                    if let Some(upstream) = slot.upstream.take() {
                        tracing::debug!(%label, "closing a proxied response: cancelled");
                        slot.aborted = true;
                        let waker = slot.waker.take();
                        drop(slot);
                        drop(upstream);
                        if let Some(waker) = waker {
                            waker.wake();
                        }
                    }
                }
                () = watcher_done.cancelled() => {}
            }
        });
        Self {
            slot,
            observer,
            size_hint,
            _done: done.drop_guard(),
        }
    }
}

impl<G: Send + 'static> Body for AbortableBody<G> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut slot = lock(&self.slot);
        let Some((upstream, _)) = slot.upstream.as_mut() else {
            return Poll::Ready(if slot.aborted {
                Some(Err(
                    "the upstream went away; proxied response aborted".into()
                ))
            } else {
                None
            });
        };
        match Pin::new(upstream).poll_frame(cx) {
            Poll::Pending => {
                if !slot.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    slot.waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            Poll::Ready(Some(Ok(frame))) => {
                drop(slot);
                if frame.is_data() {
                    self.observer.traffic();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                // Release the upstream connection and the guard now rather than at drop.
                slot.upstream = None;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                slot.upstream = None;
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let slot = lock(&self.slot);
        match &slot.upstream {
            Some((upstream, _)) => upstream.is_end_stream(),
            None => !slot.aborted,
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.size_hint
    }
}

/// One side of a tunnel; bytes moving either way are reported to the observer.
pub struct ObservedIo<T> {
    inner: T,
    observer: Arc<dyn Traffic>,
}

impl<T> ObservedIo<T> {
    pub fn new(inner: T, observer: Arc<dyn Traffic>) -> Self {
        Self { inner, observer }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ObservedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.observer.traffic();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ObservedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.observer.traffic();
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Relays an upgraded connection (WebSocket, any `101 Switching Protocols`): waits for both
/// the client's and the upstream's upgrade, then copies bytes both ways until one side closes
/// or `cancel` fires. Spawn it after answering the client with the upstream's 101 response
/// (headers passed through [`super::strip_hop_by_hop`] with the `Upgrade` value).
///
/// ```text
/// let client_upgrade = hyper::upgrade::on(&mut incoming_request);   // before sending it on
/// let mut response = client.request(outgoing).await?;
/// if response.status() == StatusCode::SWITCHING_PROTOCOLS {
///     let upstream_upgrade = hyper::upgrade::on(&mut response);
///     tokio::spawn(relay_upgraded("sb-1", client_upgrade, upstream_upgrade, cancel, observer));
/// }
/// ```
pub async fn relay_upgraded(
    label: String,
    client: OnUpgrade,
    upstream: OnUpgrade,
    cancel: CancellationToken,
    observer: Arc<dyn Traffic>,
) {
    let upgraded = tokio::select! {
        r = async { tokio::try_join!(client, upstream) } => r,
        () = cancel.cancelled() => return,
    };
    let (client, upstream) = match upgraded {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(%label, error = %e, "upgrade failed");
            return;
        }
    };
    let mut client = ObservedIo::new(TokioIo::new(client), observer);
    let mut upstream = TokioIo::new(upstream);
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut upstream) => match r {
            Ok((up, down)) => tracing::debug!(%label, up, down, "tunnel closed"),
            Err(e) => tracing::debug!(%label, error = %e, "tunnel ended with an error"),
        },
        () = cancel.cancelled() => {
            tracing::debug!(%label, "tunnel closed: cancelled");
        }
    }
}
