//! AWS Lambda upstreams: a route's request becomes an API Gateway proxy
//! event (payload format 2.0, HTTP API, or 1.0, REST API), the function is
//! invoked through the AWS SDK, and its answer becomes the HTTP response.
//!
//! A [`LambdaFunction`] is built once per config snapshot with its own SDK
//! client (rustls with ring, the SDK's retries off: [`LambdaFunction::invoke`]
//! retries itself, only when Lambda throttled the call or the network failed
//! before the call was made, never after a function ran). Credentials come
//! from the standard AWS chain: the static keys `main` hands in as
//! [`AwsSettings`] (its `--aws-access-key-id` / `--aws-secret-access-key` /
//! `--aws-session-token` flags, or the `AWS_*` variables of the same
//! names), then the shared profile, web identity, the ECS container
//! endpoint and the EC2 instance role. The SDK resolves them on the first
//! invocation and caches them (refreshing before they expire).
//! Caveat: the profile, ECS and IMDS links read their own settings (`HOME`,
//! `AWS_CONFIG_FILE`, `AWS_CONTAINER_*`) inside the SDK; [`AwsSettings`]
//! feeds the first link, the profile name and web identity.
//!
//! Not here: the pipeline (`gateway.rs` builds the event from the prepared
//! outgoing headers and maps [`LambdaError`] to answers). Security: the
//! function's error payload (its stack trace) is never returned to the
//! client; credentials never appear in Debug output, logs or errors.

mod request_event;
mod response;
mod sdk;
mod spec;

pub use request_event::*;
pub use response::*;
pub use sdk::AwsSettings;
use sdk::*;
pub use spec::*;

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_lambda::operation::RequestId;
use aws_sdk_lambda::primitives::Blob;
use bytes::Bytes;
use http::StatusCode;
use http::header::HeaderMap;

use crate::config::{Defaults, Problem, SourceFile, UpstreamSpec};

/// Lambda's limit on a synchronous invocation's request payload (6 MB).
pub const PAYLOAD_LIMIT: u64 = 6 * 1024 * 1024;

/// The API Gateway proxy payload format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadFormat {
    /// REST API (`version: "1.0"`): multi-value headers and query.
    V1,
    /// HTTP API (`version: "2.0"`): `cookies`, comma-joined headers.
    V2,
}

/// A function upstream, ready to be invoked.
pub struct LambdaFunction {
    /// The upstream's name.
    pub name: Arc<str>,
    function: String,
    qualifier: Option<String>,
    label: String,
    /// The event format.
    pub format: PayloadFormat,
    /// Time for the whole invocation, retries included.
    pub request_timeout: Duration,
    retries: u32,
    client: aws_sdk_lambda::Client,
}

impl std::fmt::Debug for LambdaFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LambdaFunction")
            .field("name", &self.name)
            .field("target", &self.label)
            .field("format", &self.format)
            .field("request_timeout", &self.request_timeout)
            .field("retries", &self.retries)
            .finish_non_exhaustive()
    }
}

/// What one successful Invoke call returned.
#[derive(Debug)]
pub struct Invoked {
    /// The function's answer (or its error payload).
    pub payload: Bytes,
    /// `X-Amz-Function-Error`: the function ran and failed.
    pub function_error: Option<String>,
    /// Lambda's request id (`x-amzn-RequestId`).
    pub request_id: Option<String>,
}

/// Why an invocation gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum LambdaError {
    /// Lambda throttled the call (after the configured retries).
    #[error("Lambda throttled the invocation")]
    Throttled {
        /// Seconds to wait, from Lambda's `Retry-After` (1 when absent).
        retry_after_secs: u64,
    },
    /// The SDK gave up waiting (connect timeout and the like).
    #[error("Lambda invocation timed out")]
    Timeout,
    /// The payload is over Lambda's limit.
    #[error("payload over the Lambda limit")]
    PayloadTooLarge,
    /// The function ran and raised an error.
    #[error("function returned a function error ({kind}); lambda request id {}", request_id.as_deref().unwrap_or("-"))]
    Function {
        /// `Unhandled` or `Handled`.
        kind: String,
        /// Lambda's request id.
        request_id: Option<String>,
    },
    /// The function's answer does not map to an HTTP response.
    #[error("malformed function answer: {why}; lambda request id {}", request_id.as_deref().unwrap_or("-"))]
    Malformed {
        /// What is wrong.
        why: &'static str,
        /// Lambda's request id.
        request_id: Option<String>,
    },
    /// Lambda refused the call (unknown function, access denied, …).
    #[error("Lambda refused the invocation ({code}); lambda request id {}", request_id.as_deref().unwrap_or("-"))]
    Refused {
        /// Lambda's error code.
        code: String,
        /// Lambda's request id.
        request_id: Option<String>,
    },
    /// Lambda could not be reached.
    #[error("cannot reach Lambda")]
    Network(#[source] crate::BoxError),
    /// Anything else the SDK reports (credentials, request building).
    #[error("Lambda invocation failed")]
    Failed(#[source] crate::BoxError),
}

impl LambdaError {
    /// Worth another attempt: the function did not run.
    fn retryable(&self) -> bool {
        matches!(
            self,
            LambdaError::Throttled { .. } | LambdaError::Network(_)
        )
    }
}

/// The HTTP answer a function gave.
#[derive(Debug)]
pub struct Answer {
    /// Status.
    pub status: StatusCode,
    /// Headers (hop-by-hop ones still to be removed by the caller).
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl LambdaFunction {
    /// Builds a function upstream from its spec, reporting problems at
    /// their places. Makes no network call.
    pub fn build(
        spec: &UpstreamSpec,
        defaults: &Defaults,
        source: &SourceFile,
        aws: &AwsSettings,
    ) -> Result<LambdaFunction, Vec<Problem>> {
        let mut problems = Vec::new();
        let name = spec.name.get_ref();
        let label = format!("upstream `{name}`");
        if let Some(t) = spec.targets.first() {
            problems.push(source.problem(
                t.span(),
                format!(
                    "{label}: `targets` is only for http upstreams (this one is kind = \"lambda\")"
                ),
            ));
        }
        if let Some(ca) = &spec.tls_ca {
            problems.push(source.problem(
                ca.span(),
                format!("{label}: `tls_ca` is only for http upstreams"),
            ));
        }
        let http_only = [
            ("dns", spec.dns.is_some()),
            ("targets_file", spec.targets_file.is_some()),
            ("set", !spec.sets.is_empty()),
            ("health", spec.health.is_some()),
            ("breaker", spec.breaker.is_some()),
            ("hash_on", spec.hash_on.is_some()),
        ];
        for (key, present) in http_only {
            if present {
                problems.push(source.problem(
                    spec.name.span(),
                    format!("{label}: `{key}` is only for http upstreams (this one is kind = \"lambda\")"),
                ));
            }
        }
        let Some(function) = &spec.function else {
            problems.push(source.problem(
                spec.name.span(),
                format!("{label}: a lambda upstream needs `function` (a name or an ARN)"),
            ));
            return Err(problems);
        };
        let parsed = match parse_function(function.get_ref()) {
            Ok(p) => Some(p),
            Err(why) => {
                problems.push(source.problem(function.span(), format!("{label}: {why}")));
                None
            }
        };
        let qualifier = spec.qualifier.as_ref().map(|q| {
            if !valid_qualifier(q.get_ref()) {
                problems.push(source.problem(
                    q.span(),
                    format!(
                        "{label}: qualifier `{}` is not a version or alias (`$LATEST`, digits, or 1-128 of [A-Za-z0-9_-])",
                        q.get_ref()
                    ),
                ));
            }
            if parsed.as_ref().is_some_and(|p| p.qualifier.is_some()) {
                problems.push(source.problem(
                    q.span(),
                    format!("{label}: the function ARN already names a qualifier"),
                ));
            }
            q.get_ref().clone()
        });
        let arn_region = parsed.as_ref().and_then(|p| p.region.clone());
        let region = match (&spec.region, &arn_region) {
            (Some(r), arn) => {
                if !valid_region(r.get_ref()) {
                    problems.push(source.problem(
                        r.span(),
                        format!(
                            "{label}: `{}` is not an AWS region (e.g. eu-west-1)",
                            r.get_ref()
                        ),
                    ));
                }
                if let Some(a) = arn
                    && a != r.get_ref()
                {
                    problems.push(source.problem(
                        r.span(),
                        format!(
                            "{label}: region `{}` differs from the ARN's `{a}`",
                            r.get_ref()
                        ),
                    ));
                }
                Some(r.get_ref().clone())
            }
            (None, Some(a)) => Some(a.clone()),
            (None, None) => {
                problems.push(source.problem(
                    spec.name.span(),
                    format!("{label}: a lambda upstream needs `region` (or a full function ARN)"),
                ));
                None
            }
        };
        let endpoint = spec
            .endpoint_url
            .as_ref()
            .and_then(|u| match check_endpoint(u.get_ref()) {
                Ok(()) => Some(u.get_ref().trim_end_matches('/').to_owned()),
                Err(why) => {
                    problems.push(source.problem(u.span(), format!("{label}: {why}")));
                    None
                }
            });
        let format = match spec
            .payload_format
            .as_ref()
            .map(|f| (f, f.get_ref().as_str()))
        {
            None | Some((_, "2.0")) => PayloadFormat::V2,
            Some((_, "1.0")) => PayloadFormat::V1,
            Some((f, other)) => {
                problems.push(source.problem(
                    f.span(),
                    format!("{label}: payload_format `{other}` must be \"1.0\" or \"2.0\""),
                ));
                PayloadFormat::V2
            }
        };
        let retries = match &spec.retries {
            Some(r) if *r.get_ref() > 10 => {
                problems.push(source.problem(r.span(), format!("{label}: at most 10 retries")));
                0
            }
            Some(r) => *r.get_ref(),
            None => 2,
        };
        let (Some(parsed), Some(region), true) = (parsed, region, problems.is_empty()) else {
            return Err(problems);
        };
        let connect_timeout = spec.connect_timeout.unwrap_or(defaults.connect_timeout).0;
        let request_timeout = spec.request_timeout.unwrap_or(defaults.request_timeout).0;
        let client = sdk_client(&region, endpoint.as_deref(), connect_timeout, aws);
        let qualifier = qualifier.or(parsed.qualifier.clone());
        let mut target = format!("lambda:{}", parsed.name);
        if let Some(q) = &qualifier {
            target.push(':');
            target.push_str(q);
        }
        Ok(LambdaFunction {
            name: name.as_str().into(),
            function: parsed.function,
            qualifier,
            label: target,
            format,
            request_timeout,
            retries,
            client,
        })
    }

    /// `lambda:FUNCTION[:QUALIFIER]`, for logs and metrics.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Invokes the function synchronously with `payload`, retrying (with
    /// bounded, jittered backoff) only while the function has not run. The
    /// caller bounds the whole call with the upstream's deadline.
    pub async fn invoke(&self, payload: Bytes) -> Result<Invoked, LambdaError> {
        let mut attempt = 0u32;
        loop {
            let sent = self
                .client
                .invoke()
                .function_name(&self.function)
                .set_qualifier(self.qualifier.clone())
                .payload(Blob::new(payload.clone()))
                .send()
                .await;
            let err = match sent {
                Ok(out) => {
                    let request_id = out.request_id().map(str::to_owned);
                    return Ok(Invoked {
                        function_error: out.function_error().map(str::to_owned),
                        payload: out
                            .payload
                            .map(|b| Bytes::from(b.into_inner()))
                            .unwrap_or_default(),
                        request_id,
                    });
                }
                Err(e) => classify(e),
            };
            if !err.retryable() || attempt >= self.retries {
                return Err(err);
            }
            attempt += 1;
            tracing::debug!(upstream = %self.name, attempt, error = %err, "retrying the Lambda invocation");
            tokio::time::sleep(backoff(attempt)).await;
        }
    }
}

#[cfg(test)]
mod tests;
