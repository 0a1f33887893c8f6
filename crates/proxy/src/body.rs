//! Body types: the boxed body both directions use, a size-limited request body, and the
//! response body that enforces the request deadline and holds the in-flight permits.
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full};
use std::future::Future as _;
use tokio::time::{Instant, Sleep};

/// Boxed error of streaming bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every request and response the gateway produces.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// A complete body.
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A request body for one attempt, that a retry can take back while the upstream never read
/// it (the connection failed before the body was sent).
pub struct UnsentBody {
    body: ProxyBody,
    retryable: bool,
}

/// What a failed attempt can give back for the next one.
pub enum Resend {
    /// The request had no body.
    Empty,
    /// The body, until the first poll takes it.
    Slot(Arc<Mutex<Option<ProxyBody>>>),
}

impl UnsentBody {
    /// Wraps `body`; only a `retryable` one is kept for a later attempt (else it is sent
    /// as is, at no cost).
    pub fn wrap(body: ProxyBody, retryable: bool) -> Self {
        UnsentBody { body, retryable }
    }

    /// The body to send now, and how to get it back if it was never read.
    pub fn split(self) -> (ProxyBody, Option<Resend>) {
        if !self.retryable {
            return (self.body, None);
        }
        if self.body.is_end_stream() {
            return (self.body, Some(Resend::Empty));
        }
        let hint = self.body.size_hint();
        let slot = Arc::new(Mutex::new(Some(self.body)));
        let sent = TakeOnPoll {
            slot: slot.clone(),
            inner: None,
            hint,
        };
        (sent.boxed_unsync(), Some(Resend::Slot(slot)))
    }
}

impl Resend {
    /// The body again, when the failed attempt never read it.
    pub fn reclaim(self) -> Option<UnsentBody> {
        let body = match self {
            Resend::Empty => empty(),
            Resend::Slot(slot) => slot.lock().unwrap_or_else(|p| p.into_inner()).take()?,
        };
        Some(UnsentBody {
            body,
            retryable: true,
        })
    }
}

/// Leaves the body in its slot until the upstream connection first reads it.
struct TakeOnPoll {
    slot: Arc<Mutex<Option<ProxyBody>>>,
    inner: Option<ProxyBody>,
    hint: SizeHint,
}

impl Body for TakeOnPoll {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.inner.is_none() {
            let taken = self.slot.lock().unwrap_or_else(|p| p.into_inner()).take();
            match taken {
                Some(b) => self.inner = Some(b),
                None => return Poll::Ready(None),
            }
        }
        match self.inner.as_mut() {
            Some(b) => Pin::new(b).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        false
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

/// The error a [`LimitedBody`] yields past its limit.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds {0} bytes")]
pub struct BodyTooLarge(pub u64);

pin_project_lite::pin_project! {
    /// Streams a body through, failing once more than `limit` bytes passed. The shared flag
    /// tells the handler that an upstream error was caused by the limit (→ 413).
    pub struct LimitedBody<B> {
        #[pin]
        inner: B,
        seen: u64,
        limit: u64,
        tripped: Arc<AtomicBool>,
    }
}

impl<B> LimitedBody<B> {
    /// Wraps `inner`; `tripped` is set when the limit is passed.
    pub fn new(inner: B, limit: u64, tripped: Arc<AtomicBool>) -> Self {
        LimitedBody {
            inner,
            seen: 0,
            limit,
            tripped,
        }
    }
}

impl<B> Body for LimitedBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    *this.seen += data.len() as u64;
                    if *this.seen > *this.limit {
                        this.tripped.store(true, Ordering::Release);
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge(*this.limit)))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The error a [`ResponseBody`] yields when the request deadline passes mid-body.
#[derive(Debug, thiserror::Error)]
#[error("upstream response body not complete within the request timeout")]
pub struct BodyDeadline;

pin_project_lite::pin_project! {
    /// The upstream response body on its way to the client: chunks pass as they arrive;
    /// an optional deadline cuts a body that is too slow (not used for SSE); `guard` lives
    /// until the body is done, so in-flight permits cover the whole response.
    pub struct ResponseBody<B, G> {
        #[pin]
        inner: B,
        deadline: Option<Instant>,
        // Created only if the body is ever pending: most bodies finish without a timer.
        sleep: Option<Pin<Box<Sleep>>>,
        guard: Option<G>,
    }
}

impl<B, G> ResponseBody<B, G> {
    /// Wraps `inner`; `deadline` (if any) ends the body with an error when it passes.
    pub fn new(inner: B, deadline: Option<Instant>, guard: G) -> Self {
        ResponseBody {
            inner,
            deadline,
            sleep: None,
            guard: Some(guard),
        }
    }
}

impl<B, G> Body for ResponseBody<B, G>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match polled {
            Poll::Ready(None) => {
                this.guard.take();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.guard.take();
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(Some(Ok(f))) => Poll::Ready(Some(Ok(f))),
            Poll::Pending => {
                if let Some(deadline) = *this.deadline {
                    let sleep = this
                        .sleep
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                    if sleep.as_mut().poll(cx).is_ready() {
                        this.guard.take();
                        return Poll::Ready(Some(Err(Box::new(BodyDeadline))));
                    }
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// How a response body ended, for the access line and the trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseEnd {
    /// Sent to its end.
    Complete,
    /// The client went away before the end.
    ClientDisconnected,
    /// The body failed: the upstream broke off, or the request deadline passed.
    BodyError,
    /// The gateway cut it: the shutdown grace period ran out while it was still streaming.
    Shutdown,
}

impl ResponseEnd {
    /// The name in the access line and the span attribute.
    pub fn as_str(self) -> &'static str {
        match self {
            ResponseEnd::Complete => "complete",
            ResponseEnd::ClientDisconnected => "client_disconnected",
            ResponseEnd::BodyError => "body_error",
            ResponseEnd::Shutdown => "shutdown",
        }
    }
}

/// How a response body went, for what runs at its end.
#[derive(Debug, Clone, Copy)]
pub struct Ended {
    /// How it ended.
    pub how: ResponseEnd,
    /// Body bytes sent.
    pub bytes: u64,
    /// When its first body byte passed (a stream's first event: time to first token).
    pub first_byte: Option<Instant>,
}

/// What runs when a response body ends.
pub type OnEnd = Box<dyn FnOnce(Ended) + Send>;

/// A response body passed through unchanged, counting its bytes, optionally read by a GenAI
/// scan, that calls `on_end` once when it ends, fails, or is dropped unfinished (the client
/// went away). Dropped at its end counts as complete: a server may stop polling a body of
/// known length after its last byte.
pub struct EndBody {
    inner: ProxyBody,
    bytes: u64,
    first_byte: Option<Instant>,
    scan: Option<(crate::genai::ResponseScan, crate::genai::SharedFacts)>,
    on_end: Option<OnEnd>,
    /// Set by the server when it cuts its remaining connections: a body dropped unfinished
    /// then ended by the gateway's shutdown, not by its client.
    cut: tokio_util::sync::CancellationToken,
}

impl EndBody {
    /// Wraps `inner`; `cut` is the server's cutting flag ([`crate::handler::ConnInfo`]).
    pub fn new(
        inner: ProxyBody,
        scan: Option<(crate::genai::ResponseScan, crate::genai::SharedFacts)>,
        on_end: OnEnd,
        cut: tokio_util::sync::CancellationToken,
    ) -> Self {
        EndBody {
            inner,
            bytes: 0,
            first_byte: None,
            scan,
            on_end: Some(on_end),
            cut,
        }
    }

    fn end(&mut self, how: ResponseEnd) {
        if let Some(on_end) = self.on_end.take() {
            if let Some((scan, facts)) = self.scan.take() {
                scan.finish(&facts);
            }
            on_end(Ended {
                how,
                bytes: self.bytes,
                first_byte: self.first_byte,
            });
        }
    }
}

impl Drop for EndBody {
    fn drop(&mut self) {
        let how = if self.inner.is_end_stream() {
            ResponseEnd::Complete
        } else if self.cut.is_cancelled() {
            ResponseEnd::Shutdown
        } else {
            ResponseEnd::ClientDisconnected
        };
        self.end(how);
    }
}

impl Body for EndBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if this.first_byte.is_none() && !data.is_empty() {
                        this.first_byte = Some(Instant::now());
                    }
                    this.bytes += data.len() as u64;
                    if let Some((scan, _)) = this.scan.as_mut() {
                        scan.feed(data);
                    }
                }
            }
            Poll::Ready(None) => this.end(ResponseEnd::Complete),
            Poll::Ready(Some(Err(_))) => this.end(ResponseEnd::BodyError),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;

    fn chunks(n: usize, size: usize) -> impl Body<Data = Bytes, Error = BoxError> {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = (0..n)
            .map(|_| Ok(Frame::data(Bytes::from(vec![b'x'; size]))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn limited_body_trips_past_the_limit() {
        let flag = Arc::new(AtomicBool::new(false));
        let ok = LimitedBody::new(chunks(4, 10), 40, flag.clone())
            .collect()
            .await;
        assert!(ok.is_ok());
        assert!(!flag.load(Ordering::Acquire));
        let err = LimitedBody::new(chunks(5, 10), 40, flag.clone())
            .collect()
            .await;
        assert!(err.is_err());
        assert!(flag.load(Ordering::Acquire));
    }
}
