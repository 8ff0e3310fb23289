//! Connection limits: how many connections a listener and one source
//! address may hold, when an idle connection is closed, and how long a
//! request body may take to arrive. Without them a few thousand idle or
//! slow connections exhaust the process's file descriptors and the
//! hospital's record system stops answering.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The limits of one listener.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Connections the listener holds at once.
    pub max_connections: usize,
    /// Connections one source address holds at once.
    pub per_source: usize,
    /// Time to receive a request's header (HTTP/1.1), from the connection's
    /// start or the end of the previous response.
    pub header: Duration,
    /// A connection without traffic and without a request in progress is
    /// closed after this long.
    pub idle: Duration,
    /// Time to receive a whole request body.
    pub body: Duration,
}

/// Who may connect now: a count per listener and per source address.
pub(crate) struct Admission {
    total: Arc<Semaphore>,
    per_source: Arc<Mutex<HashMap<IpAddr, usize>>>,
    max_per_source: usize,
    refused: AtomicU64,
    last_warned: Mutex<Option<Instant>>,
}

/// A connection's place; given back when dropped.
pub(crate) struct Admitted {
    _permit: OwnedSemaphorePermit,
    ip: IpAddr,
    per_source: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut m = self.per_source.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

impl Admission {
    pub(crate) fn new(l: &Limits) -> Admission {
        Admission {
            total: Arc::new(Semaphore::new(l.max_connections)),
            per_source: Arc::new(Mutex::new(HashMap::new())),
            max_per_source: l.per_source,
            refused: AtomicU64::new(0),
            last_warned: Mutex::new(None),
        }
    }

    /// A place for a new connection from `ip`, or `None` when the listener
    /// or the source is at its limit (the connection is then closed).
    pub(crate) fn admit(&self, ip: IpAddr, listener: &str) -> Option<Admitted> {
        let admitted = self.total.clone().try_acquire_owned().ok().and_then(|permit| {
            let mut m = self.per_source.lock().unwrap_or_else(|p| p.into_inner());
            let n = m.entry(ip).or_insert(0);
            if *n >= self.max_per_source {
                return None;
            }
            *n += 1;
            Some(Admitted { _permit: permit, ip, per_source: self.per_source.clone() })
        });
        if admitted.is_none() {
            let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
            let mut last = self.last_warned.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                *last = Some(Instant::now());
                tracing::warn!(%ip, listener, refused, "connection limit reached; connections are being closed");
            }
        }
        admitted
    }
}

/// The time of a connection's last traffic, and its requests in progress.
#[derive(Clone)]
pub(crate) struct Activity {
    start: Instant,
    last_ms: Arc<AtomicU64>,
    in_flight: Arc<AtomicUsize>,
}

/// A request in progress (the connection is not idle while it lives).
pub(crate) struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Activity {
    pub(crate) fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
            in_flight: Arc::new(AtomicUsize::new(0)),
        }
    }
    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }
    /// Marks a request in progress until the guard is dropped.
    pub(crate) fn request(&self) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.in_flight.clone())
    }
    /// How long the connection has had neither traffic nor a request in
    /// progress (zero while a request is in progress).
    pub(crate) fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return Duration::ZERO;
        }
        let now = self.start.elapsed();
        now.saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
    /// Resolves when the connection has been idle for `limit`.
    pub(crate) async fn idle(&self, limit: Duration) {
        loop {
            let idle = self.idle_for();
            if idle >= limit {
                return;
            }
            // Check again when the limit could first be reached.
            tokio::time::sleep((limit - idle).max(Duration::from_millis(100))).await;
        }
    }
}

/// A stream that records its traffic in an [`Activity`].
pub(crate) struct Tracked<S> {
    inner: S,
    activity: Activity,
}

impl<S> Tracked<S> {
    pub(crate) fn new(inner: S, activity: Activity) -> Tracked<S> {
        activity.touch();
        Tracked { inner, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A request body that must arrive whole within a deadline (a slow sender
/// cannot hold a connection and a handler by trickling bytes).
pub(crate) struct TimedBody<B> {
    inner: B,
    deadline: Pin<Box<tokio::time::Sleep>>,
    limit: Duration,
}

impl<B> TimedBody<B> {
    pub(crate) fn new(inner: B, limit: Duration) -> TimedBody<B> {
        TimedBody { inner, deadline: Box::pin(tokio::time::sleep(limit)), limit }
    }
}

/// The error of a request body that did not arrive in time.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0} s")]
pub(crate) struct BodyTimeout(pub u64);

impl<B> Body for TimedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(r) => Poll::Ready(r.map(|f| f.map_err(Into::into))),
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimeout(this.limit.as_secs()))))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether an error (of reading a body) is a [`BodyTimeout`].
pub(crate) fn is_body_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut s = Some(e);
    while let Some(x) = s {
        if x.is::<BodyTimeout>() {
            return true;
        }
        s = x.source();
    }
    false
}

/// Request bodies that declare at most this many bytes are read whole
/// before the handler runs (see [`read_small_body`]).
pub(crate) const PREREAD_BYTES: u64 = 64 * 1024;

/// Reads a small request body before the handler runs.
///
/// A handler may answer without reading its body: a logout, an
/// acknowledgement that takes `{}`, a refusal decided before the body is
/// looked at. Over HTTP/2 the answer then goes out while the body may still
/// be on the way, the server resets the stream, and some clients (curl:
/// error 92) report the reset as a failure although the answer came.
/// Reading the body first closes that race for every route at once.
///
/// Only a body with a declared length of at most [`PREREAD_BYTES`] is read;
/// larger and streamed bodies (AS2 messages, bulk data, uploads) are left to
/// their handlers and their per-route limits. The body is already timed
/// ([`TimedBody`]), so a slow sender meets the same deadline here. A failure
/// is handed to the handler as the body's own error, so each route answers
/// it in its own format (408 for a timeout, as before).
pub(crate) async fn read_small_body(req: axum::extract::Request) -> axum::extract::Request {
    let body = req.body();
    if body.is_end_stream() || body.size_hint().exact().is_none_or(|n| n > PREREAD_BYTES) {
        return req;
    }
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, PREREAD_BYTES as usize).await {
        Ok(bytes) => axum::body::Body::from(bytes),
        Err(e) => axum::body::Body::new(Failed(Some(e))),
    };
    axum::extract::Request::from_parts(parts, body)
}

/// A body that yields one error: a pre-read that failed.
struct Failed(Option<axum::Error>);

impl Body for Failed {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.0.take().map(Err))
    }
}
