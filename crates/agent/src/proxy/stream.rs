//! Streaming bodies and byte tunnels for the proxy. Nothing is buffered beyond one frame: a
//! multi-gigabyte download moves at the speed of the slower side in constant memory.

use super::tracker::{InFlight, Toucher};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::{CancellationToken, DropGuard};

pub(super) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body on its way to the guest; its data counts as sandbox activity.
pub(super) struct TouchingBody<B> {
    pub(super) inner: B,
    pub(super) toucher: Arc<Toucher>,
}

impl<B> Body for TouchingBody<B>
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
            self.toucher.traffic();
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

/// A guest response body on its way to the client.
///
/// The upstream body and the request's in-flight count sit in a slot shared with a watcher
/// task. When the sandbox is evicted or force-drained, the watcher empties the slot: that closes
/// the connection to the guest and releases the count at once, even if the client stopped
/// reading and hyper is not polling this body. The client then sees the response cut short.
pub(super) struct ResponseBody {
    slot: Arc<Mutex<Slot>>,
    toucher: Arc<Toucher>,
    size_hint: SizeHint,
    /// Dropping the body tells the watcher to stop.
    _done: DropGuard,
}

struct Slot {
    upstream: Option<(Incoming, InFlight)>,
    /// Set when the watcher emptied the slot, so the client gets an error, not a clean end.
    aborted: bool,
    /// The task last waiting on the upstream body, woken when the watcher empties the slot.
    waker: Option<Waker>,
}

fn lock(slot: &Mutex<Slot>) -> MutexGuard<'_, Slot> {
    slot.lock().unwrap_or_else(|e| e.into_inner())
}

impl ResponseBody {
    pub(super) fn new(
        upstream: Incoming,
        in_flight: InFlight,
        cancel: CancellationToken,
        toucher: Arc<Toucher>,
        sandbox_id: &str,
    ) -> Self {
        let size_hint = upstream.size_hint();
        let slot = Arc::new(Mutex::new(Slot {
            upstream: Some((upstream, in_flight)),
            aborted: false,
            waker: None,
        }));
        let done = CancellationToken::new();
        let watcher_slot = slot.clone();
        let watcher_done = done.clone();
        let id = sandbox_id.to_owned();
        tokio::spawn(async move {
            tokio::select! {
                () = cancel.cancelled() => {
                    let mut slot = lock(&watcher_slot);
                    if let Some(upstream) = slot.upstream.take() {
                        tracing::debug!(sandbox = %id, "closing a proxied response: sandbox stopped");
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
            toucher,
            size_hint,
            _done: done.drop_guard(),
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut slot = lock(&self.slot);
        let Some((upstream, _)) = slot.upstream.as_mut() else {
            return Poll::Ready(if slot.aborted {
                Some(Err("the sandbox stopped; proxied response aborted".into()))
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
                    self.toucher.traffic();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                // Release the guest connection and the count now rather than at drop.
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

/// One side of a tunnel; bytes moving either way count as sandbox activity.
pub(super) struct TouchingIo<T> {
    pub(super) inner: T,
    pub(super) toucher: Arc<Toucher>,
}

impl<T: AsyncRead + Unpin> AsyncRead for TouchingIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.toucher.traffic();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TouchingIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.toucher.traffic();
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
