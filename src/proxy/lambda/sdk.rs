//! The AWS SDK side of an invocation: the client per function, the
//! credentials chain, error classification and retry backoff.

use std::time::Duration;

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

use crate::config::Environment;

use super::*;

/// "Equal jitter": between half and all of 50 ms · 2^attempt, capped at 1 s.
pub(super) fn backoff(attempt: u32) -> Duration {
    let cap = 50u64.saturating_mul(1 << attempt.min(5)).min(1000);
    Duration::from_millis(rand::random_range(cap / 2..=cap))
}

pub(super) fn classify(e: SdkError<InvokeError>) -> LambdaError {
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
pub(super) fn sdk_client(
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

pub(super) fn credentials_chain(
    env: &Environment,
    pc: &ProviderConfig,
) -> SharedCredentialsProvider {
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
