//! AWS Lambda upstreams: a route's request becomes an API Gateway proxy
//! event (payload format 2.0, HTTP API, or 1.0, REST API), the function is
//! invoked through the AWS SDK, and its answer becomes the HTTP response.
//!
//! A [`LambdaFunction`] is built once per config snapshot with its own SDK
//! client (rustls with ring, the SDK's retries off: [`LambdaFunction::invoke`]
//! retries itself, only when Lambda throttled the call or the network failed
//! before the call was made, never after a function ran). Credentials come
//! from the standard AWS chain: the `AWS_ACCESS_KEY_ID` /
//! `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN` values that `main` hands in
//! through [`Environment`], then the shared profile, web identity, the ECS
//! container endpoint and the EC2 instance role. The SDK resolves them on
//! the first invocation and caches them (refreshing before they expire).
//! Caveat: the profile, ECS and IMDS links read their own settings
//! (`AWS_PROFILE`, `HOME`, `AWS_CONTAINER_*`) inside the SDK; the
//! `Environment` only feeds the first link, the profile name and web identity.
//!
//! Not here: the pipeline (`gateway.rs` builds the event from the prepared
//! outgoing headers and maps [`LambdaError`] to answers). Security: the
//! function's error payload (its stack trace) is never returned to the
//! client; credentials never appear in Debug output, logs or errors.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_config::BehaviorVersion;
use aws_config::ecs::EcsCredentialsProvider;
use aws_config::imds::credentials::ImdsCredentialsProvider;
use aws_config::meta::credentials::CredentialsProviderChain;
use aws_config::profile::ProfileFileCredentialsProvider;
use aws_config::provider_config::ProviderConfig;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::web_identity_token::{StaticConfiguration, WebIdentityTokenCredentialsProvider};
use aws_sdk_lambda::config::{Credentials, Region, SharedCredentialsProvider};
use aws_sdk_lambda::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_lambda::operation::RequestId;
use aws_sdk_lambda::operation::invoke::InvokeError;
use aws_sdk_lambda::primitives::Blob;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri};
use serde_json::{Map, Value, json};

use crate::auth::{AuthMethod, Principal};
use crate::config::{Defaults, Environment, Problem, SourceFile, UpstreamKind, UpstreamSpec};

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
        env: &Environment,
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
        let client = sdk_client(&region, endpoint.as_deref(), connect_timeout, env);
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

/// Full jitter over 50 ms · 2^attempt, capped at 1 s.
fn backoff(attempt: u32) -> Duration {
    let cap = 50u64.saturating_mul(1 << attempt.min(5)).min(1000);
    Duration::from_millis(rand::random_range(cap / 2..=cap))
}

fn classify(e: SdkError<InvokeError>) -> LambdaError {
    match e {
        SdkError::ServiceError(ctx) => {
            let err = ctx.into_err();
            let request_id = err.request_id().map(str::to_owned);
            match err {
                InvokeError::TooManyRequestsException(t) => LambdaError::Throttled {
                    retry_after_secs: t
                        .retry_after_seconds()
                        .and_then(|s| s.trim().parse::<u64>().ok())
                        .unwrap_or(1)
                        .clamp(1, 3600),
                },
                InvokeError::RequestTooLargeException(_) => LambdaError::PayloadTooLarge,
                other => LambdaError::Refused {
                    code: other.code().unwrap_or("unknown").to_owned(),
                    request_id,
                },
            }
        }
        SdkError::TimeoutError(_) => LambdaError::Timeout,
        e @ SdkError::DispatchFailure(_) => LambdaError::Network(Box::new(e)),
        e @ SdkError::ResponseError(_) => {
            tracing::debug!(error = %e, "Lambda response could not be read");
            LambdaError::Malformed {
                why: "unreadable Lambda response",
                request_id: None,
            }
        }
        other => LambdaError::Failed(Box::new(other)),
    }
}

/// The SDK client: rustls (ring), no SDK retries, the standard credential
/// chain fed from `env`.
fn sdk_client(
    region: &str,
    endpoint: Option<&str>,
    connect_timeout: Duration,
    env: &Environment,
) -> aws_sdk_lambda::Client {
    use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let region = Region::new(region.to_owned());
    let provider_config = ProviderConfig::without_region()
        .with_region(Some(region.clone()))
        .with_http_client(http.clone());
    let mut conf = aws_sdk_lambda::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(region)
        .credentials_provider(credentials_chain(env, &provider_config))
        .http_client(http)
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(connect_timeout)
                .build(),
        );
    if let Some(url) = endpoint {
        conf = conf.endpoint_url(url);
    }
    aws_sdk_lambda::Client::from_conf(conf.build())
}

fn credentials_chain(env: &Environment, pc: &ProviderConfig) -> SharedCredentialsProvider {
    let var = |k: &str| env.get(k).filter(|v| !v.trim().is_empty());
    let mut profile = ProfileFileCredentialsProvider::builder().configure(pc);
    if let Some(p) = var("AWS_PROFILE") {
        profile = profile.profile_name(p);
    }
    let mut web_identity = WebIdentityTokenCredentialsProvider::builder().configure(pc);
    if let (Some(file), Some(role)) = (var("AWS_WEB_IDENTITY_TOKEN_FILE"), var("AWS_ROLE_ARN")) {
        web_identity = web_identity.static_configuration(StaticConfiguration {
            web_identity_token_file: file.into(),
            role_arn: role,
            session_name: var("AWS_ROLE_SESSION_NAME").unwrap_or_else(|| "gatehouse".to_owned()),
        });
    }
    let profile = profile.build();
    let chain = match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
        (Some(id), Some(secret)) => CredentialsProviderChain::first_try(
            "Environment",
            Credentials::new(id, secret, var("AWS_SESSION_TOKEN"), None, "Environment"),
        )
        .or_else("Profile", profile),
        _ => CredentialsProviderChain::first_try("Profile", profile),
    };
    let chain = chain
        .or_else("WebIdentityToken", web_identity.build())
        .or_else(
            "EcsContainer",
            EcsCredentialsProvider::builder().configure(pc).build(),
        )
        .or_else(
            "Ec2InstanceMetadata",
            ImdsCredentialsProvider::builder().configure(pc).build(),
        );
    SharedCredentialsProvider::new(chain)
}

/// Problems of an `http` upstream that sets keys of a `lambda` one.
pub fn http_spec_problems(spec: &UpstreamSpec, source: &SourceFile) -> Vec<Problem> {
    if spec.kind != UpstreamKind::Http {
        return Vec::new();
    }
    let name = spec.name.get_ref();
    let keys = [
        ("function", spec.function.as_ref().map(|s| s.span())),
        ("qualifier", spec.qualifier.as_ref().map(|s| s.span())),
        ("region", spec.region.as_ref().map(|s| s.span())),
        ("endpoint_url", spec.endpoint_url.as_ref().map(|s| s.span())),
        (
            "payload_format",
            spec.payload_format.as_ref().map(|s| s.span()),
        ),
        ("retries", spec.retries.as_ref().map(|s| s.span())),
    ];
    keys.into_iter()
        .filter_map(|(key, span)| {
            span.map(|span| {
                source.problem(
                    span,
                    format!(
                        "upstream `{name}`: `{key}` is only for kind = \"lambda\" upstreams (this one is http)"
                    ),
                )
            })
        })
        .collect()
}

/// A function reference, split.
#[derive(Debug, PartialEq, Eq)]
struct FunctionRef {
    /// What the Invoke call names (the name or the ARN without qualifier).
    function: String,
    /// The bare function name, for labels.
    name: String,
    region: Option<String>,
    qualifier: Option<String>,
}

fn valid_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn valid_qualifier(s: &str) -> bool {
    s == "$LATEST"
        || (1..=128).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn valid_region(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    (parts.len() >= 3)
        && s.len() <= 32
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
        && parts
            .last()
            .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()))
}

/// `NAME`, `ACCOUNT:function:NAME[:Q]` or
/// `arn:PARTITION:lambda:REGION:ACCOUNT:function:NAME[:Q]`.
fn parse_function(s: &str) -> Result<FunctionRef, String> {
    let account = |a: &str| a.len() == 12 && a.bytes().all(|b| b.is_ascii_digit());
    let bad = || {
        format!(
            "`{s}` is not a function name (1-64 of [A-Za-z0-9_-]) or ARN (arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER])"
        )
    };
    let parts: Vec<&str> = s.split(':').collect();
    let (region, acct, name, qualifier) = match parts.as_slice() {
        [name] => (None, None, *name, None),
        [acct, "function", name] => (None, Some(*acct), *name, None),
        [acct, "function", name, q] => (None, Some(*acct), *name, Some(*q)),
        ["arn", partition, "lambda", region, acct, "function", name]
            if partition.starts_with("aws") =>
        {
            (Some(*region), Some(*acct), *name, None)
        }
        [
            "arn",
            partition,
            "lambda",
            region,
            acct,
            "function",
            name,
            q,
        ] if partition.starts_with("aws") => (Some(*region), Some(*acct), *name, Some(*q)),
        _ => return Err(bad()),
    };
    if !valid_name(name) || acct.is_some_and(|a| !account(a)) {
        return Err(bad());
    }
    if let Some(r) = region
        && !valid_region(r)
    {
        return Err(format!("`{s}`: `{r}` is not an AWS region"));
    }
    if let Some(q) = qualifier
        && !valid_qualifier(q)
    {
        return Err(format!("`{s}`: `{q}` is not a version or alias"));
    }
    let function = match qualifier {
        Some(q) => s[..s.len() - q.len() - 1].to_owned(),
        None => s.to_owned(),
    };
    Ok(FunctionRef {
        function,
        name: name.to_owned(),
        region: region.map(str::to_owned),
        qualifier: qualifier.map(str::to_owned),
    })
}

fn check_endpoint(s: &str) -> Result<(), String> {
    let uri: Uri = s
        .parse()
        .map_err(|_| format!("endpoint_url `{s}` is not a URL"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("endpoint_url `{s}` needs http:// or https://")),
    }
    let Some(authority) = uri.authority() else {
        return Err(format!("endpoint_url `{s}` needs a host"));
    };
    if authority.as_str().contains('@') {
        return Err("endpoint_url: credentials in URLs are not allowed".to_owned());
    }
    if uri.query().is_some() || !matches!(uri.path(), "" | "/") {
        return Err(format!(
            "endpoint_url `{s}` must be scheme://host[:port] only"
        ));
    }
    Ok(())
}

/// What the event is built from: the request as it would go upstream.
#[derive(Debug)]
pub struct EventInput<'a> {
    /// The format.
    pub format: PayloadFormat,
    /// The method.
    pub method: &'a Method,
    /// The path sent to the function (normalised, after the route's rewrite).
    pub path: &'a str,
    /// The raw query string.
    pub query: Option<&'a str>,
    /// The prepared outgoing headers (forwarding, request and identity
    /// headers set; client credentials stripped where the route says so).
    pub headers: &'a HeaderMap,
    /// The route's path pattern (`/orders/{id}`, `/api/{proxy+}`).
    pub resource: &'a str,
    /// Path parameters from the route template.
    pub params: &'a [(String, String)],
    /// The authenticated caller.
    pub principal: Option<&'a Principal>,
    /// The gateway's request id.
    pub request_id: &'a str,
    /// The client's address (through trusted proxies).
    pub source_ip: IpAddr,
    /// The Host the client asked for.
    pub host: Option<&'a str>,
    /// `HTTP/1.1`, `HTTP/2.0`.
    pub protocol: &'a str,
    /// The request body.
    pub body: &'a [u8],
    /// Now.
    pub now: SystemTime,
}

/// The API Gateway proxy event for `input`.
pub fn event(input: &EventInput<'_>) -> Value {
    let (body, is_base64) = encode_body(input.headers, input.body);
    let host = input
        .host
        .map(|h| {
            h.rsplit_once(':')
                .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
                .map_or(h, |(n, _)| n)
        })
        .unwrap_or("");
    let domain_prefix = host.split('.').next().unwrap_or("");
    let user_agent = input
        .headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let epoch_ms = input
        .now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let time = clf_time(input.now);
    let params: Option<Map<String, Value>> = (!input.params.is_empty()).then(|| {
        input
            .params
            .iter()
            .map(|(k, v)| {
                // A prefix route's tail is API Gateway's greedy `{proxy+}`.
                let k = if k == crate::route::TAIL { "proxy" } else { k };
                (k.to_owned(), Value::String(v.clone()))
            })
            .collect()
    });
    let query = parse_query(input.query.unwrap_or(""));
    let source_ip = input.source_ip.to_string();
    match input.format {
        PayloadFormat::V2 => {
            let mut headers = Map::new();
            let mut cookies = Vec::new();
            for name in input.headers.keys() {
                let values: Vec<&str> = input
                    .headers
                    .get_all(name)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect();
                if name == header::COOKIE {
                    cookies.extend(
                        values
                            .iter()
                            .flat_map(|v| v.split(';'))
                            .map(str::trim)
                            .filter(|c| !c.is_empty())
                            .map(|c| Value::String(c.to_owned())),
                    );
                    continue;
                }
                headers.insert(name.as_str().to_owned(), Value::String(values.join(",")));
            }
            let route_key = format!("{} {}", input.method, input.resource);
            let mut ev = json!({
                "version": "2.0",
                "routeKey": route_key,
                "rawPath": input.path,
                "rawQueryString": input.query.unwrap_or(""),
                "headers": headers,
                "requestContext": {
                    "accountId": "anonymous",
                    "apiId": "gatehouse",
                    "domainName": host,
                    "domainPrefix": domain_prefix,
                    "http": {
                        "method": input.method.as_str(),
                        "path": input.path,
                        "protocol": input.protocol,
                        "sourceIp": source_ip,
                        "userAgent": user_agent,
                    },
                    "requestId": input.request_id,
                    "routeKey": route_key,
                    "stage": "$default",
                    "time": time,
                    "timeEpoch": epoch_ms,
                },
                "isBase64Encoded": is_base64,
            });
            if !cookies.is_empty() {
                ev["cookies"] = Value::Array(cookies);
            }
            if !query.is_empty() {
                let q: Map<String, Value> = query
                    .iter()
                    .map(|(k, vs)| (k.clone(), Value::String(vs.join(","))))
                    .collect();
                ev["queryStringParameters"] = Value::Object(q);
            }
            if let Some(p) = params {
                ev["pathParameters"] = Value::Object(p);
            }
            if let Some(b) = body {
                ev["body"] = Value::String(b);
            }
            if let Some(p) = input.principal {
                ev["requestContext"]["authorizer"] = authorizer_v2(p);
            }
            ev
        }
        PayloadFormat::V1 => {
            let mut single = Map::new();
            let mut multi = Map::new();
            for name in input.headers.keys() {
                let values: Vec<Value> = input
                    .headers
                    .get_all(name)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .map(|v| Value::String(v.to_owned()))
                    .collect();
                if let Some(last) = values.last() {
                    single.insert(name.as_str().to_owned(), last.clone());
                }
                multi.insert(name.as_str().to_owned(), Value::Array(values));
            }
            let (q_single, q_multi) = if query.is_empty() {
                (Value::Null, Value::Null)
            } else {
                let s: Map<String, Value> = query
                    .iter()
                    .filter_map(|(k, vs)| Some((k.clone(), Value::String(vs.last()?.clone()))))
                    .collect();
                let m: Map<String, Value> =
                    query.iter().map(|(k, vs)| (k.clone(), json!(vs))).collect();
                (Value::Object(s), Value::Object(m))
            };
            let mut ev = json!({
                "version": "1.0",
                "resource": input.resource,
                "path": input.path,
                "httpMethod": input.method.as_str(),
                "headers": single,
                "multiValueHeaders": multi,
                "queryStringParameters": q_single,
                "multiValueQueryStringParameters": q_multi,
                "pathParameters": params.map_or(Value::Null, Value::Object),
                "stageVariables": null,
                "requestContext": {
                    "accountId": "anonymous",
                    "apiId": "gatehouse",
                    "domainName": host,
                    "domainPrefix": domain_prefix,
                    "extendedRequestId": input.request_id,
                    "httpMethod": input.method.as_str(),
                    "identity": {
                        "sourceIp": source_ip,
                        "userAgent": user_agent,
                    },
                    "path": input.path,
                    "protocol": input.protocol,
                    "requestId": input.request_id,
                    "requestTime": time,
                    "requestTimeEpoch": epoch_ms,
                    "resourceId": "gatehouse",
                    "resourcePath": input.resource,
                    "stage": "$default",
                },
                "body": body.map_or(Value::Null, Value::String),
                "isBase64Encoded": is_base64,
            });
            if let Some(p) = input.principal {
                ev["requestContext"]["authorizer"] = authorizer_v1(p);
            }
            ev
        }
    }
}

/// The caller as API Gateway's JWT or Lambda authorizer would show it:
/// derived identity only, never the raw token or claims.
fn authorizer_v2(p: &Principal) -> Value {
    match p.method {
        AuthMethod::Jwt => {
            let mut claims = Map::new();
            claims.insert("sub".into(), json!(&*p.subject));
            if !p.scopes.is_empty() {
                claims.insert("scope".into(), json!(p.scopes.join(" ")));
            }
            if !p.roles.is_empty() {
                claims.insert("roles".into(), json!(p.roles));
            }
            if let Some(plan) = &p.plan {
                claims.insert("plan".into(), json!(&**plan));
            }
            json!({ "jwt": { "claims": claims, "scopes": p.scopes, "issuer": &*p.credential_id } })
        }
        AuthMethod::ApiKey => json!({ "lambda": api_key_context(p) }),
    }
}

fn authorizer_v1(p: &Principal) -> Value {
    let mut ctx = match p.method {
        AuthMethod::Jwt => {
            let mut claims = Map::new();
            claims.insert("sub".into(), json!(&*p.subject));
            if !p.scopes.is_empty() {
                claims.insert("scope".into(), json!(p.scopes.join(" ")));
            }
            if let Some(plan) = &p.plan {
                claims.insert("plan".into(), json!(&**plan));
            }
            let mut m = Map::new();
            m.insert("claims".into(), Value::Object(claims));
            m.insert("issuer".into(), json!(&*p.credential_id));
            m
        }
        AuthMethod::ApiKey => match api_key_context(p) {
            Value::Object(m) => m,
            _ => Map::new(),
        },
    };
    ctx.insert("principalId".into(), json!(&*p.subject));
    Value::Object(ctx)
}

fn api_key_context(p: &Principal) -> Value {
    let mut m = Map::new();
    m.insert("consumerId".into(), json!(&*p.subject));
    if let Some(n) = &p.consumer_name {
        m.insert("consumerName".into(), json!(&**n));
    }
    if let Some(plan) = &p.plan {
        m.insert("plan".into(), json!(&**plan));
    }
    m.insert("keyId".into(), json!(&*p.credential_id));
    m.insert("scopes".into(), json!(p.scopes.join(" ")));
    Value::Object(m)
}

/// The body as the event carries it: text as is, anything else base64.
fn encode_body(headers: &HeaderMap, body: &[u8]) -> (Option<String>, bool) {
    if body.is_empty() {
        return (None, false);
    }
    let textual = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(is_text_type);
    match std::str::from_utf8(body) {
        Ok(text) if textual => (Some(text.to_owned()), false),
        _ => (Some(B64.encode(body)), true),
    }
}

fn is_text_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence.starts_with("text/")
        || essence.ends_with("+json")
        || essence.ends_with("+xml")
        || matches!(
            essence.as_str(),
            "application/json"
                | "application/xml"
                | "application/javascript"
                | "application/x-www-form-urlencoded"
                | "application/graphql"
        )
}

/// Query parameters, decoded, in order of first appearance.
fn parse_query(q: &str) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (percent_decode(k), percent_decode(v));
        match out.iter_mut().find(|(name, _)| *name == k) {
            Some((_, vs)) => vs.push(v),
            None => out.push((k, vec![v])),
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (c, hex) {
            (b'+', _) => out.push(b' '),
            (b'%', Some(v)) => {
                out.push(v);
                i += 2;
            }
            (c, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `02/Dec/2026:05:20:09 +0000`, as API Gateway writes request times.
fn clf_time(t: SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let dt = time::OffsetDateTime::from(t);
    let month = MONTHS
        .get(usize::from(u8::from(dt.month())).saturating_sub(1))
        .copied()
        .unwrap_or("Jan");
    format!(
        "{:02}/{month}/{}:{:02}:{:02}:{:02} +0000",
        dt.day(),
        dt.year(),
        dt.hour(),
        dt.minute(),
        dt.second()
    )
}

/// Maps a function's answer to an HTTP response. Format 2.0 also takes a
/// bare JSON value (anything without `statusCode`): 200, JSON, as is.
pub fn answer(format: PayloadFormat, payload: &[u8]) -> Result<Answer, &'static str> {
    let value: Value = serde_json::from_slice(payload).map_err(|_| "the answer is not JSON")?;
    let obj = match value {
        Value::Object(o) if o.contains_key("statusCode") => o,
        _ if format == PayloadFormat::V2 => {
            let mut headers = HeaderMap::new();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            return Ok(Answer {
                status: StatusCode::OK,
                headers,
                body: Bytes::copy_from_slice(payload),
            });
        }
        _ => return Err("the answer has no statusCode"),
    };
    let status = match &obj["statusCode"] {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse::<u64>().ok(),
        _ => None,
    }
    .and_then(|n| u16::try_from(n).ok())
    .and_then(|n| StatusCode::from_u16(n).ok())
    .filter(|s| (200..=599).contains(&s.as_u16()))
    .ok_or("statusCode is not an HTTP status")?;
    let mut headers = HeaderMap::new();
    let mut multi_names = Vec::new();
    if let Some(m) = obj.get("multiValueHeaders").filter(|v| !v.is_null()) {
        let m = m.as_object().ok_or("multiValueHeaders is not an object")?;
        for (k, vs) in m {
            let name = header_name(k)?;
            let vs = vs
                .as_array()
                .ok_or("a multiValueHeaders entry is not a list")?;
            for v in vs {
                headers.append(name.clone(), header_value(v)?);
            }
            multi_names.push(name);
        }
    }
    if let Some(h) = obj.get("headers").filter(|v| !v.is_null()) {
        let h = h.as_object().ok_or("headers is not an object")?;
        for (k, v) in h {
            let name = header_name(k)?;
            if multi_names.contains(&name) || v.is_null() {
                continue;
            }
            headers.insert(name, header_value(v)?);
        }
    }
    if format == PayloadFormat::V2
        && let Some(c) = obj.get("cookies").filter(|v| !v.is_null())
    {
        for cookie in c.as_array().ok_or("cookies is not a list")? {
            let v = cookie.as_str().ok_or("a cookie is not a string")?;
            headers.append(
                header::SET_COOKIE,
                HeaderValue::from_str(v).map_err(|_| "invalid cookie")?,
            );
        }
    }
    let base64 = match obj.get("isBase64Encoded") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("isBase64Encoded is not a boolean"),
    };
    let body = match obj.get("body") {
        None | Some(Value::Null) => Bytes::new(),
        Some(Value::String(s)) if base64 => Bytes::from(
            B64.decode(s.as_bytes())
                .map_err(|_| "body is not valid base64")?,
        ),
        Some(Value::String(s)) => Bytes::from(s.clone()),
        Some(_) => return Err("body is not a string"),
    };
    // The gateway frames the body itself.
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::TRANSFER_ENCODING);
    Ok(Answer {
        status,
        headers,
        body,
    })
}

fn header_name(k: &str) -> Result<HeaderName, &'static str> {
    HeaderName::from_bytes(k.as_bytes()).map_err(|_| "invalid header name")
}

fn header_value(v: &Value) -> Result<HeaderValue, &'static str> {
    let text = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => return Err("a header value is not a string"),
    };
    HeaderValue::from_str(&text).map_err(|_| "invalid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_references() {
        type Parts<'a> = (&'a str, &'a str, Option<&'a str>, Option<&'a str>);
        let cases: &[(&str, &str, Result<Parts<'_>, ()>)] = &[
            (
                "name",
                "orders-fn",
                Ok(("orders-fn", "orders-fn", None, None)),
            ),
            (
                "partial arn",
                "123456789012:function:orders",
                Ok(("123456789012:function:orders", "orders", None, None)),
            ),
            (
                "full arn",
                "arn:aws:lambda:eu-west-1:123456789012:function:orders",
                Ok((
                    "arn:aws:lambda:eu-west-1:123456789012:function:orders",
                    "orders",
                    Some("eu-west-1"),
                    None,
                )),
            ),
            (
                "arn with alias",
                "arn:aws:lambda:us-east-2:123456789012:function:orders:live",
                Ok((
                    "arn:aws:lambda:us-east-2:123456789012:function:orders",
                    "orders",
                    Some("us-east-2"),
                    Some("live"),
                )),
            ),
            ("empty", "", Err(())),
            ("slash", "orders/fn", Err(())),
            (
                "bad account",
                "arn:aws:lambda:eu-west-1:123:function:x",
                Err(()),
            ),
            (
                "not lambda",
                "arn:aws:s3:eu-west-1:123456789012:function:x",
                Err(()),
            ),
            (
                "bad region",
                "arn:aws:lambda:EU:123456789012:function:x",
                Err(()),
            ),
            ("too long", &"a".repeat(65), Err(())),
        ];
        for (name, input, want) in cases {
            let got = parse_function(input).map_err(|_| ());
            let want = want.map(|(f, n, r, q)| FunctionRef {
                function: f.to_owned(),
                name: n.to_owned(),
                region: r.map(str::to_owned),
                qualifier: q.map(str::to_owned),
            });
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn endpoints_and_regions() {
        let endpoints = [
            ("http", "http://127.0.0.1:9001", true),
            ("https slash", "https://lambda.local/", true),
            ("no scheme", "127.0.0.1:9001", false),
            ("ftp", "ftp://h", false),
            ("userinfo", "http://a:b@h", false),
            ("path", "http://h/x", false),
            ("query", "http://h/?a", false),
        ];
        for (name, input, ok) in endpoints {
            assert_eq!(check_endpoint(input).is_ok(), ok, "{name}");
        }
        let regions = [
            ("eu", "eu-west-1", true),
            ("gov", "us-gov-west-1", true),
            ("upper", "EU-WEST-1", false),
            ("no number", "eu-west", false),
            ("word", "frankfurt", false),
        ];
        for (name, input, ok) in regions {
            assert_eq!(valid_region(input), ok, "{name}");
        }
    }

    fn principal(method: AuthMethod) -> Principal {
        Principal {
            method,
            subject: "consumer-1".into(),
            consumer_name: Some("acme".into()),
            plan: Some("gold".into()),
            credential_id: "key-1".into(),
            scopes: vec!["orders:read".into(), "orders:write".into()],
            roles: vec![],
            headers: vec![],
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap_or(header::ACCEPT),
                HeaderValue::from_str(v).unwrap_or(HeaderValue::from_static("")),
            );
        }
        h
    }

    fn input<'a>(
        format: PayloadFormat,
        h: &'a HeaderMap,
        body: &'a [u8],
        params: &'a [(String, String)],
        principal: Option<&'a Principal>,
    ) -> EventInput<'a> {
        EventInput {
            format,
            method: &Method::POST,
            path: "/orders/42",
            query: Some("a=1&a=2&q=hello%20world&b=x+y"),
            headers: h,
            resource: "/orders/{id}",
            params,
            principal,
            request_id: "rid-1",
            source_ip: IpAddr::from([203, 0, 113, 9]),
            host: Some("api.example.test:8443"),
            protocol: "HTTP/1.1",
            body,
            now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        }
    }

    #[test]
    fn event_v2() {
        let h = headers(&[
            ("content-type", "application/json"),
            ("x-multi", "a"),
            ("x-multi", "b"),
            ("cookie", "s=1; t=2"),
            ("user-agent", "ua/1"),
        ]);
        let params = [("id".to_owned(), "42".to_owned())];
        let p = principal(AuthMethod::Jwt);
        let ev = event(&input(
            PayloadFormat::V2,
            &h,
            b"{\"x\":1}",
            &params,
            Some(&p),
        ));
        let cases: &[(&str, &str, Value)] = &[
            ("version", "/version", json!("2.0")),
            ("route key", "/routeKey", json!("POST /orders/{id}")),
            ("raw path", "/rawPath", json!("/orders/42")),
            (
                "raw query",
                "/rawQueryString",
                json!("a=1&a=2&q=hello%20world&b=x+y"),
            ),
            ("multi header joined", "/headers/x-multi", json!("a,b")),
            ("cookies split", "/cookies", json!(["s=1", "t=2"])),
            ("no cookie header", "/headers/cookie", Value::Null),
            ("query joined", "/queryStringParameters/a", json!("1,2")),
            (
                "query decoded",
                "/queryStringParameters/q",
                json!("hello world"),
            ),
            ("plus is space", "/queryStringParameters/b", json!("x y")),
            ("path param", "/pathParameters/id", json!("42")),
            ("text body", "/body", json!("{\"x\":1}")),
            ("not base64", "/isBase64Encoded", json!(false)),
            ("method", "/requestContext/http/method", json!("POST")),
            (
                "source ip",
                "/requestContext/http/sourceIp",
                json!("203.0.113.9"),
            ),
            (
                "user agent",
                "/requestContext/http/userAgent",
                json!("ua/1"),
            ),
            ("request id", "/requestContext/requestId", json!("rid-1")),
            (
                "domain",
                "/requestContext/domainName",
                json!("api.example.test"),
            ),
            ("prefix", "/requestContext/domainPrefix", json!("api")),
            (
                "epoch",
                "/requestContext/timeEpoch",
                json!(1_700_000_000_000u64),
            ),
            (
                "time",
                "/requestContext/time",
                json!("14/Nov/2023:22:13:20 +0000"),
            ),
            (
                "jwt sub",
                "/requestContext/authorizer/jwt/claims/sub",
                json!("consumer-1"),
            ),
            (
                "jwt scopes",
                "/requestContext/authorizer/jwt/scopes",
                json!(["orders:read", "orders:write"]),
            ),
        ];
        for (name, pointer, want) in cases {
            assert_eq!(ev.pointer(pointer).unwrap_or(&Value::Null), want, "{name}");
        }
    }

    #[test]
    fn event_v1() {
        let h = headers(&[
            ("content-type", "application/octet-stream"),
            ("x-multi", "a"),
            ("x-multi", "b"),
        ]);
        let p = principal(AuthMethod::ApiKey);
        let ev = event(&input(
            PayloadFormat::V1,
            &h,
            &[0, 159, 146, 150],
            &[],
            Some(&p),
        ));
        let cases: &[(&str, &str, Value)] = &[
            ("version", "/version", json!("1.0")),
            ("resource", "/resource", json!("/orders/{id}")),
            ("path", "/path", json!("/orders/42")),
            ("method", "/httpMethod", json!("POST")),
            ("last header", "/headers/x-multi", json!("b")),
            (
                "multi header",
                "/multiValueHeaders/x-multi",
                json!(["a", "b"]),
            ),
            ("last query", "/queryStringParameters/a", json!("2")),
            (
                "multi query",
                "/multiValueQueryStringParameters/a",
                json!(["1", "2"]),
            ),
            ("no params", "/pathParameters", Value::Null),
            ("binary base64", "/body", json!("AJ+Slg==")),
            ("base64 flag", "/isBase64Encoded", json!(true)),
            (
                "source ip",
                "/requestContext/identity/sourceIp",
                json!("203.0.113.9"),
            ),
            (
                "principal",
                "/requestContext/authorizer/principalId",
                json!("consumer-1"),
            ),
            (
                "consumer",
                "/requestContext/authorizer/consumerName",
                json!("acme"),
            ),
            ("key id", "/requestContext/authorizer/keyId", json!("key-1")),
        ];
        for (name, pointer, want) in cases {
            assert_eq!(ev.pointer(pointer).unwrap_or(&Value::Null), want, "{name}");
        }
    }

    #[test]
    fn empty_body_and_query() {
        let h = HeaderMap::new();
        let mut i = input(PayloadFormat::V2, &h, b"", &[], None);
        i.query = None;
        let ev = event(&i);
        assert_eq!(ev.get("body"), None);
        assert_eq!(ev.get("queryStringParameters"), None);
        assert_eq!(ev["rawQueryString"], json!(""));
        assert_eq!(ev["requestContext"].get("authorizer"), None);
        i.format = PayloadFormat::V1;
        let ev = event(&i);
        assert_eq!(ev["body"], Value::Null);
        assert_eq!(ev["queryStringParameters"], Value::Null);
    }

    #[test]
    fn answers() {
        type Want = Result<(u16, Vec<(&'static str, &'static str)>, &'static [u8]), ()>;
        let cases: Vec<(&str, PayloadFormat, Value, Want)> = vec![
            (
                "structured",
                PayloadFormat::V2,
                json!({"statusCode": 201, "headers": {"x-a": "1", "content-length": "99"}, "body": "hi"}),
                Ok((201, vec![("x-a", "1")], b"hi")),
            ),
            (
                "bare value 2.0",
                PayloadFormat::V2,
                json!({"hello": "world"}),
                Ok((
                    200,
                    vec![("content-type", "application/json")],
                    b"{\"hello\":\"world\"}",
                )),
            ),
            (
                "bare value 1.0",
                PayloadFormat::V1,
                json!({"hello": "world"}),
                Err(()),
            ),
            (
                "base64",
                PayloadFormat::V2,
                json!({"statusCode": 200, "body": "AJ+Slg==", "isBase64Encoded": true}),
                Ok((200, vec![], &[0, 159, 146, 150])),
            ),
            (
                "cookies",
                PayloadFormat::V2,
                json!({"statusCode": 200, "cookies": ["a=1", "b=2; Secure"]}),
                Ok((
                    200,
                    vec![("set-cookie", "a=1"), ("set-cookie", "b=2; Secure")],
                    b"",
                )),
            ),
            (
                "multi value wins",
                PayloadFormat::V1,
                json!({"statusCode": "404", "headers": {"x-m": "z"}, "multiValueHeaders": {"x-m": ["a", "b"]}}),
                Ok((404, vec![("x-m", "a"), ("x-m", "b")], b"")),
            ),
            (
                "status out of range",
                PayloadFormat::V2,
                json!({"statusCode": 700}),
                Err(()),
            ),
            (
                "informational",
                PayloadFormat::V2,
                json!({"statusCode": 101}),
                Err(()),
            ),
            (
                "bad base64",
                PayloadFormat::V2,
                json!({"statusCode": 200, "body": "!!", "isBase64Encoded": true}),
                Err(()),
            ),
            (
                "body not string",
                PayloadFormat::V1,
                json!({"statusCode": 200, "body": {"a": 1}}),
                Err(()),
            ),
            (
                "bad header",
                PayloadFormat::V2,
                json!({"statusCode": 200, "headers": {"x": "a\nb"}}),
                Err(()),
            ),
        ];
        for (name, format, payload, want) in cases {
            let bytes = serde_json::to_vec(&payload).unwrap_or_default();
            let got = answer(format, &bytes).map_err(|_| ()).map(|a| {
                let hs: Vec<(String, String)> = a
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("?").to_owned()))
                    .collect();
                (a.status.as_u16(), hs, a.body.to_vec())
            });
            let want = want.map(|(s, hs, b)| {
                (
                    s,
                    hs.into_iter()
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .collect::<Vec<_>>(),
                    b.to_vec(),
                )
            });
            assert_eq!(got, want, "{name}");
        }
        assert!(answer(PayloadFormat::V2, b"not json").is_err(), "not JSON");
    }

    #[test]
    fn errors_name_the_lambda_request_id_and_what_is_retried() {
        let cases = [
            (
                "function error",
                LambdaError::Function {
                    kind: "Unhandled".into(),
                    request_id: Some("lambda-rid-1".into()),
                },
                Some("lambda-rid-1"),
                false,
            ),
            (
                "malformed",
                LambdaError::Malformed {
                    why: "body is not a string",
                    request_id: Some("lambda-rid-2".into()),
                },
                Some("lambda-rid-2"),
                false,
            ),
            (
                "throttled",
                LambdaError::Throttled {
                    retry_after_secs: 1,
                },
                None,
                true,
            ),
            ("network", LambdaError::Network("reset".into()), None, true),
            ("timeout", LambdaError::Timeout, None, false),
        ];
        for (name, err, id, retryable) in cases {
            if let Some(id) = id {
                assert!(err.to_string().contains(id), "{name}: {err}");
            }
            assert_eq!(err.retryable(), retryable, "{name}");
        }
    }

    #[test]
    fn backoff_is_bounded() {
        for attempt in 0..20 {
            let d = backoff(attempt);
            assert!(d <= Duration::from_secs(1), "attempt {attempt}: {d:?}");
            assert!(d >= Duration::from_millis(25), "attempt {attempt}: {d:?}");
        }
    }
}
