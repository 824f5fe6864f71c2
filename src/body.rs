//! Body types that stream through the gateway.
//!
//! [`GwBody`] is the one boxed body type every response uses. [`RequestBody`]
//! wraps a client's body on its way upstream: it counts bytes and enforces the
//! route's size limit while streaming (a `Content-Length` is checked earlier,
//! but chunked bodies are only known while they flow). [`ResponseBody`] wraps
//! the answer on its way back: it counts bytes, enforces the whole-request
//! deadline, and hands the finished [`AccessRecord`] to the log when the last
//! byte is sent or the client goes away. Nothing here buffers a body.
//!
//! The size cap is ours rather than `http_body_util::Limited`: it shares one
//! pass with the pace timers and the trailer drop, and sets the flags that let
//! a 413 or 408 survive hyper's wrapping of body errors.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};
use tokio::time::{Instant, Sleep};

use crate::BoxError;
use crate::conn::StreamGuard;
use crate::telemetry::AccessRecord;
pub(crate) use crate::telemetry::BodyStats;

/// The body type of every response and of every upstream request.
pub(crate) type GwBody = BoxBody<Bytes, BoxError>;

/// A client's request body as the pipeline takes it: hyper's `Incoming`
/// on a connection, any body when the pipeline is driven in-process.
pub(crate) trait ClientBody:
    Body<Data = Bytes, Error: Into<BoxError>> + Send + Sync + 'static
{
}

impl<B> ClientBody for B where B: Body<Data = Bytes, Error: Into<BoxError>> + Send + Sync + 'static {}

/// A complete in-memory body.
pub(crate) fn full(bytes: impl Into<Bytes>) -> GwBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An empty body.
pub(crate) fn empty() -> GwBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// The error a [`RequestBody`] yields once the client sent more than allowed.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the limit of {limit} bytes")]
pub(crate) struct BodyTooLarge {
    /// The limit in bytes.
    pub(crate) limit: u64,
}

/// How fast a client must send its body.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyPace {
    /// Longest pause between two pieces of the body.
    pub(crate) max_gap: Duration,
    /// Slowest average rate (bytes per second), enforced after `grace`.
    pub(crate) min_rate: u64,
    /// Time before `min_rate` applies.
    pub(crate) grace: Duration,
}

/// The error a [`RequestBody`] yields when the client sends too slowly.
#[derive(Debug, thiserror::Error)]
#[error("request body not received in time")]
pub(crate) struct BodyTimeout;

pin_project_lite::pin_project! {
    /// A client's request body, counted, capped and paced while it streams.
    pub(crate) struct RequestBody<B> {
        #[pin]
        inner: B,
        limit: u64,
        seen: u64,
        stats: Arc<BodyStats>,
        pace: BodyPace,
        started: Instant,
        last: Instant,
        // Armed only when the body actually waits: most bodies never do.
        gap: Option<Pin<Box<Sleep>>>,
    }
}

impl<B> RequestBody<B> {
    /// Wraps `inner`, allowing at most `limit` bytes at `pace`.
    pub(crate) fn new(inner: B, limit: u64, pace: BodyPace, stats: Arc<BodyStats>) -> Self
    where
        B: Body,
    {
        if inner.is_end_stream() {
            stats.mark_sent();
        }
        stats.limit.store(limit, Ordering::Relaxed);
        let started = Instant::now();
        RequestBody {
            inner,
            limit,
            seen: 0,
            stats,
            pace,
            started,
            last: started,
            gap: None,
        }
    }
}

impl<B> Body for RequestBody<B>
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
        let polled = this.inner.as_mut().poll_frame(cx);
        if polled.is_pending() {
            let until = *this.last + this.pace.max_gap;
            let gap = this
                .gap
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until)));
            if gap.as_mut().poll(cx).is_ready() {
                this.stats.timed_out.store(true, Ordering::Relaxed);
                return Poll::Ready(Some(Err(Box::new(BodyTimeout))));
            }
            return Poll::Pending;
        }
        match ready!(polled) {
            // Request trailers are not forwarded: they could carry headers
            // only the gateway may set (identity headers), and no route
            // needs them. The body ends where they begin.
            Some(Ok(frame)) if frame.is_trailers() => {
                this.stats.mark_sent();
                Poll::Ready(None)
            }
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    *this.seen += n;
                    this.stats.bytes.fetch_add(n, Ordering::Relaxed);
                    let now = Instant::now();
                    *this.last = now;
                    if let Some(gap) = this.gap.as_mut() {
                        gap.as_mut().reset(now + this.pace.max_gap);
                    }
                    let elapsed = now.duration_since(*this.started);
                    if elapsed > this.pace.grace
                        && u128::from(*this.seen) * 1000
                            < u128::from(this.pace.min_rate) * elapsed.as_millis()
                    {
                        this.stats.timed_out.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(Box::new(BodyTimeout))));
                    }
                    if *this.seen > *this.limit {
                        this.stats.too_large.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge {
                            limit: *this.limit,
                        }))));
                    }
                }
                if this.inner.is_end_stream() {
                    this.stats.mark_sent();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(e.into()))),
            None => {
                this.stats.mark_sent();
                Poll::Ready(None)
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

pin_project_lite::pin_project! {
    /// A response body on its way to the client: counted, bounded by the
    /// request's deadline, and logged once when it ends or is dropped.
    pub(crate) struct ResponseBody {
        #[pin]
        inner: GwBody,
        deadline: Option<Instant>,
        // Armed only when the body actually waits.
        timer: Option<Pin<Box<Sleep>>>,
        bytes: u64,
        record: Option<Box<AccessRecord>>,
        // The request counts as in flight on its connection until hyper
        // drops its body (the connection's idle timeout waits for that).
        stream: StreamGuard,
    }

    impl PinnedDrop for ResponseBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(mut record) = this.record.take() {
                // hyper drops a body that is already at its end (204, HEAD,
                // redirects) without polling it: that is complete, not cut.
                record.finish(*this.bytes, this.inner.is_end_stream());
            }
        }
    }
}

/// The error a [`ResponseBody`] yields when the whole-request deadline passes
/// while the body is still streaming.
#[derive(Debug, thiserror::Error)]
#[error("response body did not finish before the request deadline")]
pub(crate) struct DeadlineExceeded;

impl ResponseBody {
    /// Wraps `inner`; `deadline` cuts the stream when it passes; `stream`
    /// ends when the body is dropped.
    pub(crate) fn new(
        inner: GwBody,
        deadline: Option<Instant>,
        record: AccessRecord,
        stream: StreamGuard,
    ) -> Self {
        ResponseBody {
            inner,
            deadline,
            timer: None,
            bytes: 0,
            record: Some(Box::new(record)),
            stream,
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
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    *this.bytes += data.len() as u64;
                }
                // hyper stops polling once the body says it has ended.
                if this.inner.is_end_stream()
                    && let Some(mut record) = this.record.take()
                {
                    record.finish(*this.bytes, true);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                if let Some(mut record) = this.record.take() {
                    record.finish(*this.bytes, false);
                }
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                if let Some(mut record) = this.record.take() {
                    record.finish(*this.bytes, true);
                }
                Poll::Ready(None)
            }
            Poll::Pending => {
                if let Some(deadline) = *this.deadline
                    && this
                        .timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)))
                        .as_mut()
                        .poll(cx)
                        .is_ready()
                {
                    if let Some(mut record) = this.record.take() {
                        record.error = Some("response_deadline");
                        record.finish(*this.bytes, false);
                    }
                    return Poll::Ready(Some(Err(Box::new(DeadlineExceeded))));
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

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;
    use http_body_util::StreamBody;

    fn chunks(n: usize, size: usize) -> impl Body<Data = Bytes, Error = BoxError> {
        StreamBody::new(stream::iter((0..n).map(move |_| {
            Ok::<_, BoxError>(Frame::data(Bytes::from(vec![b'x'; size])))
        })))
    }

    const PACE: BodyPace = BodyPace {
        max_gap: Duration::from_secs(10),
        min_rate: 1024,
        grace: Duration::from_secs(10),
    };

    fn paced(gaps_ms: &'static [u64], size: usize) -> impl Body<Data = Bytes, Error = BoxError> {
        StreamBody::new(stream::unfold(0usize, move |i| async move {
            let gap = *gaps_ms.get(i)?;
            tokio::time::sleep(Duration::from_millis(gap)).await;
            Some((
                Ok::<_, BoxError>(Frame::data(Bytes::from(vec![b'p'; size]))),
                i + 1,
            ))
        }))
    }

    #[tokio::test(start_paused = true)]
    async fn request_body_pace_is_enforced() {
        let cases: [(&str, &'static [u64], usize, bool); 4] = [
            ("steady", &[1000; 15], 2048, true),
            ("one long pause", &[1000, 10_500, 1000], 2048, false),
            ("pause just under the gap", &[9_900, 9_900], 30_000, true),
            (
                "too slow on average after the grace period",
                &[2000; 8],
                1000,
                false,
            ),
        ];
        for (name, gaps, size, ok) in cases {
            let stats = Arc::new(BodyStats::default());
            let body = RequestBody::new(paced(gaps, size), u64::MAX, PACE, stats.clone());
            let result = body.collect().await;
            assert_eq!(result.is_ok(), ok, "{name}");
            assert_eq!(stats.timed_out.load(Ordering::Relaxed), !ok, "{name}");
        }
    }

    #[tokio::test]
    async fn request_trailers_are_not_forwarded() {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-consumer-id", http::HeaderValue::from_static("admin"));
        let frames = vec![
            Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"hello"))),
            Ok(Frame::trailers(trailers)),
        ];
        let stats = Arc::new(BodyStats::default());
        let body = RequestBody::new(StreamBody::new(stream::iter(frames)), 100, PACE, stats);
        let collected = body.collect().await.unwrap();
        assert!(collected.trailers().is_none(), "trailers dropped");
        assert_eq!(collected.to_bytes(), Bytes::from_static(b"hello"));
    }

    #[tokio::test]
    async fn request_body_counts_and_caps_while_streaming() {
        let cases = [
            ("under the limit", 4, 10, 100, true),
            ("exactly the limit", 10, 10, 100, true),
            ("over the limit", 11, 10, 100, false),
        ];
        for (name, n, size, limit, ok) in cases {
            let stats = Arc::new(BodyStats::default());
            let body = RequestBody::new(chunks(n, size), limit, PACE, stats.clone());
            let result = body.collect().await;
            assert_eq!(result.is_ok(), ok, "{name}");
            assert_eq!(stats.too_large.load(Ordering::Relaxed), !ok, "{name}");
            if ok {
                assert_eq!(
                    stats.bytes.load(Ordering::Relaxed),
                    (n * size) as u64,
                    "{name}"
                );
            }
        }
    }
}
