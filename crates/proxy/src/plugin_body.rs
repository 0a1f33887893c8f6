//! Request and response bodies that run the body phases of a plugin session, one call per
//! chunk, as the chunks stream (nothing is buffered beyond the chunk being processed).
//! End of stream is one more call with an empty chunk and `end-of-stream = true`.
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use wasmgate_plugin_host::bindings::LocalResponse;
use wasmgate_plugin_host::{PluginFailure, RequestSession};

use crate::body::BoxError;

/// A session shared by the request body, the response head and the response body.
pub type SharedSession = Arc<tokio::sync::Mutex<RequestSession>>;

/// Why a request body stopped early because of a plugin.
#[derive(Debug)]
pub enum BodyVerdict {
    /// A plugin answered from `on-request-body`.
    Respond(LocalResponse),
    /// A fail-closed plugin failed.
    Failed(PluginFailure),
}

/// Where a [`PluginRequestBody`] leaves its verdict for the handler.
pub type VerdictSlot = Arc<Mutex<Option<BodyVerdict>>>;

#[derive(Debug, thiserror::Error)]
#[error("request body stopped by a plugin")]
struct StoppedByPlugin;

#[derive(Debug, thiserror::Error)]
#[error("response body stopped: plugin `{0}` failed")]
struct ResponsePluginFailed(String);

type Pending<T> = Pin<Box<dyn Future<Output = Result<T, PluginFailure>> + Send>>;

pin_project_lite::pin_project! {
    /// Runs `on-request-body` on each chunk before passing it on.
    pub struct PluginRequestBody<B> {
        #[pin]
        inner: B,
        session: SharedSession,
        verdict: VerdictSlot,
        pending: Option<Pending<Option<LocalResponse>>>,
        held: Option<Frame<Bytes>>,
        ended: bool,
    }
}

impl<B> PluginRequestBody<B> {
    /// Wraps `inner`.
    pub fn new(inner: B, session: SharedSession, verdict: VerdictSlot) -> Self {
        PluginRequestBody {
            inner,
            session,
            verdict,
            pending: None,
            held: None,
            ended: false,
        }
    }
}

fn request_call(
    session: &SharedSession,
    chunk: Bytes,
    eos: bool,
) -> Pending<Option<LocalResponse>> {
    let session = session.clone();
    Box::pin(async move { session.lock().await.request_body(&chunk, eos).await })
}

impl<B> Body for PluginRequestBody<B>
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
        let mut this = self.project();
        loop {
            if let Some(fut) = this.pending.as_mut() {
                let outcome = ready!(fut.as_mut().poll(cx));
                *this.pending = None;
                match outcome {
                    Ok(None) => match this.held.take() {
                        Some(frame) => return Poll::Ready(Some(Ok(frame))),
                        None if *this.ended => return Poll::Ready(None),
                        None => continue,
                    },
                    Ok(Some(answer)) => {
                        *this.verdict.lock().unwrap() = Some(BodyVerdict::Respond(answer));
                        return Poll::Ready(Some(Err(Box::new(StoppedByPlugin))));
                    }
                    Err(failure) => {
                        *this.verdict.lock().unwrap() = Some(BodyVerdict::Failed(failure));
                        return Poll::Ready(Some(Err(Box::new(StoppedByPlugin))));
                    }
                }
            }
            if *this.ended {
                return Poll::Ready(None);
            }
            match ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => match frame.data_ref() {
                    Some(data) => {
                        let chunk = data.clone();
                        *this.held = Some(frame);
                        *this.pending = Some(request_call(this.session, chunk, false));
                    }
                    None => return Poll::Ready(Some(Ok(frame))),
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => {
                    *this.ended = true;
                    *this.pending = Some(request_call(this.session, Bytes::new(), true));
                }
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// Runs `on-response-body` on each chunk and sends on what the plugins return.
    pub struct PluginResponseBody<B> {
        #[pin]
        inner: B,
        session: SharedSession,
        pending: Option<Pending<Vec<u8>>>,
        ended: bool,
        finished: bool,
    }
}

impl<B> PluginResponseBody<B> {
    /// Wraps `inner`.
    pub fn new(inner: B, session: SharedSession) -> Self {
        PluginResponseBody {
            inner,
            session,
            pending: None,
            ended: false,
            finished: false,
        }
    }
}

fn response_call(session: &SharedSession, chunk: Vec<u8>, eos: bool) -> Pending<Vec<u8>> {
    let session = session.clone();
    Box::pin(async move { session.lock().await.response_body(chunk, eos).await })
}

impl<B> Body for PluginResponseBody<B>
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
        let mut this = self.project();
        loop {
            if *this.finished {
                return Poll::Ready(None);
            }
            if let Some(fut) = this.pending.as_mut() {
                let outcome = ready!(fut.as_mut().poll(cx));
                *this.pending = None;
                match outcome {
                    Ok(out) => {
                        if *this.ended {
                            *this.finished = true;
                        }
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                        }
                        continue;
                    }
                    Err(failure) => {
                        *this.finished = true;
                        return Poll::Ready(Some(Err(Box::new(ResponsePluginFailed(
                            failure.plugin,
                        )))));
                    }
                }
            }
            match ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        *this.pending = Some(response_call(this.session, data.to_vec(), false))
                    }
                    Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => {
                    *this.ended = true;
                    *this.pending = Some(response_call(this.session, Vec::new(), true));
                }
            }
        }
    }
}
