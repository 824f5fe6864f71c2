//! The attempt loop: breaker and concurrency checks, target choice, the
//! request deadline header, retries with backoff under a budget, and the
//! outcome fed to outlier detection and the breaker.
//!
//! Retries are ours rather than `tower::retry`: each one picks another target
//! and passes the breaker, outlier detection and the request's deadline, which
//! a retry `Policy` cannot see; the budget is lock-free, where tower's
//! `TpsBudget` takes a lock per request.
//!
//! A request is retried only when the route allows its method (idempotent
//! methods, or `retry_non_idempotent`), its body was buffered (under the
//! upstream's `retry.buffer_limit`; a streamed body is never resent), the
//! failure was a connect failure or reset before any response, or a status
//! in `retry.on_status`, and the upstream's retry budget has room. Timeouts
//! are not retried: the deadline is the client's, and it is spent.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use std::sync::atomic::Ordering;

use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::state::{Admit, InFlight, LOG_TARGET};
use super::{ForwardError, Upstream};
use crate::body::{BodyStats, GwBody, full};

/// The header telling the backend how many milliseconds are left before
/// the gateway gives up on the request (an integer, set on every attempt).
pub static X_REQUEST_DEADLINE: HeaderName = HeaderName::from_static("x-request-deadline");

/// A request body on its way upstream.
#[derive(Debug)]
pub enum OutBody {
    /// Read completely: may be sent again.
    Buffered(Bytes),
    /// Streaming from the client: sent once.
    Streaming(GwBody),
}

/// The prepared request, before a target is chosen.
#[derive(Debug)]
pub struct Outgoing {
    /// Method.
    pub method: Method,
    /// Headers as the backend gets them.
    pub headers: HeaderMap,
    /// Path (normalised, rewritten).
    pub path: String,
    /// Query string.
    pub query: Option<String>,
    /// Body.
    pub body: OutBody,
}

/// How the request may be forwarded.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Time to the response head, per attempt.
    pub first_byte: Duration,
    /// The whole exchange ends here.
    pub deadline: tokio::time::Instant,
    /// The route allows retrying this method.
    pub retry_method: bool,
    /// The key for `balance = "hash"`.
    pub hash: Option<u64>,
    /// The set the request's header asks for.
    pub set_hint: Option<usize>,
    /// The route's own connect timeout, if it overrides the upstream's.
    pub connect_timeout: Option<Duration>,
}

/// A response head from a target.
#[derive(Debug)]
pub struct Forwarded {
    /// The response; its body holds the target's in-flight place until done.
    pub response: Response<GwBody>,
    /// The target that answered.
    pub target: Arc<str>,
    /// Tries made (1 without retries).
    pub attempts: u32,
}

/// Whether `m` may be retried without the route's say-so (RFC 9110 §9.2.2).
pub fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

enum Outcome {
    Answer(Response<Incoming>, InFlight, Arc<str>),
    Error(ForwardError),
}

/// Holds a place in the upstream's count of requests waiting for a head.
struct Pending<'a>(&'a std::sync::atomic::AtomicU64);

impl<'a> Pending<'a> {
    fn start(c: &'a std::sync::atomic::AtomicU64) -> Pending<'a> {
        c.fetch_add(1, Ordering::AcqRel);
        Pending(c)
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Upstream {
    /// Forwards `out`: picks a target, sends, retries as allowed. The last
    /// target tried is left in `last_target` (for the access log, also
    /// when every try failed).
    pub async fn forward(
        &self,
        out: Outgoing,
        plan: Plan,
        stats: &BodyStats,
        last_target: &mut Option<Arc<str>>,
    ) -> Result<Forwarded, ForwardError> {
        let Outgoing {
            method,
            mut headers,
            path,
            query,
            body,
        } = out;
        let retry = &self.retry;
        let (mut streaming, buffered) = match body {
            OutBody::Buffered(b) => (None, Some(b)),
            OutBody::Streaming(b) => (Some(b), None),
        };
        let attempts = if plan.retry_method && buffered.is_some() {
            retry.attempts.max(1)
        } else {
            1
        };
        self.state.count_request(retry.budget_window.0);
        let members = self.members();
        // At most 10 tries (checked at load): no allocation per request.
        let mut tried = [usize::MAX; 10];
        let mut last: Option<Outcome> = None;
        let mut made = 0;
        for n in 0..attempts {
            if n > 0 {
                if !self.state.take_retry(
                    retry.budget_window.0,
                    retry.budget_percent,
                    retry.budget_min,
                ) {
                    break;
                }
                let ceiling = retry
                    .backoff_base
                    .0
                    .saturating_mul(1 << (n - 1).min(16))
                    .min(retry.backoff_max.0);
                let ms = u64::try_from(ceiling.as_millis()).unwrap_or(0);
                let wait = Duration::from_millis(if ms == 0 {
                    0
                } else {
                    rand::random_range(0..=ms)
                });
                if tokio::time::Instant::now() + wait >= plan.deadline {
                    break;
                }
                tokio::time::sleep(wait).await;
            }
            if let Some(spec) = &self.breaker {
                let busy = (spec.max_concurrent > 0
                    && self.state.in_flight.load(Ordering::Acquire)
                        >= u64::from(spec.max_concurrent))
                    || (spec.max_pending_connects > 0
                        && self.state.pending.load(Ordering::Acquire)
                            >= u64::from(spec.max_pending_connects));
                if busy {
                    if last.is_some() {
                        break;
                    }
                    self.state.count_rejected();
                    tracing::info!(target: LOG_TARGET, upstream = %self.name, "concurrency limit reached; answering 503");
                    return Err(ForwardError::Unavailable {
                        retry_after: Duration::from_secs(1),
                    });
                }
            }
            let probe = match &self.breaker {
                Some(spec) => match self.state.admit(spec) {
                    Admit::Yes { probe } => probe,
                    Admit::No { retry_after } => {
                        if last.is_some() {
                            break;
                        }
                        self.state.count_rejected();
                        return Err(ForwardError::Unavailable { retry_after });
                    }
                },
                None => false,
            };
            let done = tried.get(..n as usize).unwrap_or(&[]);
            let Some(idx) = self.pick(&members, plan.hash, plan.set_hint, done) else {
                if let (Some(spec), true) = (&self.breaker, probe) {
                    self.state.breaker_record(spec, true, true);
                }
                if last.is_some() {
                    break;
                }
                return Err(ForwardError::NoTarget);
            };
            if let Some(slot) = tried.get_mut(n as usize) {
                *slot = idx;
            }
            let Some(member) = members.members.get(idx) else {
                return Err(ForwardError::NoTarget);
            };
            let uri = member
                .target
                .uri(&path, query.as_deref())
                .map_err(|_| ForwardError::InvalidPath)?;
            let body = match (&buffered, streaming.take()) {
                (Some(b), _) => full(b.clone()),
                (None, Some(s)) => s,
                (None, None) => crate::body::empty(),
            };
            let mut req = Request::new(body);
            *req.method_mut() = method.clone();
            *req.uri_mut() = uri;
            *req.version_mut() = Version::HTTP_11;
            *req.headers_mut() = if n + 1 < attempts {
                headers.clone()
            } else {
                std::mem::take(&mut headers)
            };
            let left = plan
                .deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .as_millis();
            req.headers_mut()
                .insert(X_REQUEST_DEADLINE.clone(), HeaderValue::from(left as u64));
            // The discovered name, unless the client's Host is kept or the
            // route set one.
            if let (false, Some(host)) = (self.preserve_host, &member.host) {
                req.headers_mut()
                    .entry(http::header::HOST)
                    .or_insert_with(|| host.clone());
            }
            let guard = InFlight::start(&self.state, &member.state);
            let label = member.state.url.clone();
            *last_target = Some(label.clone());
            made = n + 1;
            let started = tokio::time::Instant::now();
            let result = {
                let _pending = Pending::start(&self.state.pending);
                self.send(req, &plan, stats).await
            };
            match result {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let failed = status >= 500;
                    if failed {
                        self.state
                            .target_failed(&member.state, &self.outlier, &members.states());
                    } else {
                        self.state
                            .target_ok(&member.state, started.elapsed(), &self.outlier);
                    }
                    if let Some(spec) = &self.breaker {
                        self.state.breaker_record(spec, !failed, probe);
                    }
                    if retry.on_status.contains(&status) && n + 1 < attempts {
                        tracing::info!(target: LOG_TARGET, upstream = %self.name, target_url = %label, status, attempt = made, "retrying after status");
                        last = Some(Outcome::Answer(resp, guard, label));
                        continue;
                    }
                    return Ok(finish(resp, guard, label, made));
                }
                Err(e @ (ForwardError::BodyTooLarge { .. } | ForwardError::BodyTimeout)) => {
                    if let (Some(spec), true) = (&self.breaker, probe) {
                        self.state.breaker_record(spec, true, true);
                    }
                    return Err(e);
                }
                Err(e) => {
                    self.state
                        .target_failed(&member.state, &self.outlier, &members.states());
                    if let Some(spec) = &self.breaker {
                        self.state.breaker_record(spec, false, probe);
                    }
                    if matches!(e, ForwardError::Failed(_)) && n + 1 < attempts {
                        tracing::info!(target: LOG_TARGET, upstream = %self.name, target_url = %label, attempt = made, "retrying after connect failure or reset");
                        last = Some(Outcome::Error(e));
                        continue;
                    }
                    return Err(e);
                }
            }
        }
        match last {
            Some(Outcome::Answer(resp, guard, target)) => Ok(finish(resp, guard, target, made)),
            Some(Outcome::Error(e)) => Err(e),
            None => Err(ForwardError::NoTarget),
        }
    }
}

/// The response, its body holding the in-flight place until it ends.
fn finish(resp: Response<Incoming>, guard: InFlight, target: Arc<str>, attempts: u32) -> Forwarded {
    let response = resp.map(move |b| {
        b.map_err(move |e| -> crate::BoxError {
            let _held = &guard;
            Box::new(e)
        })
        .boxed()
    });
    Forwarded {
        response,
        target,
        attempts,
    }
}
