//! The AWS SDK side of an invocation: the client per function, the
//! credentials chain (fed from [`AwsSettings`], which `main` fills from the
//! `AWS_*` flags), error classification and retry backoff.

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

use crate::config::Secret;

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

/// The AWS settings gatehouse honours (`AWS_PROFILE`, web identity, static
/// keys), as `main` parsed them from its flags; empty values count as
/// unset. Debug output shows `***` for the secret key and session token.
#[derive(Debug, Clone, Default)]
pub struct AwsSettings {
    /// The shared-config profile (`AWS_PROFILE`).
    pub profile: Option<String>,
    /// A web identity token file (`AWS_WEB_IDENTITY_TOKEN_FILE`), used with
    /// `role_arn`.
    pub web_identity_token_file: Option<std::path::PathBuf>,
    /// The role to assume with the web identity (`AWS_ROLE_ARN`).
    pub role_arn: Option<String>,
    /// The session name for that role (`AWS_ROLE_SESSION_NAME`; default
    /// `gatehouse`).
    pub role_session_name: Option<String>,
    /// A static access key id (`AWS_ACCESS_KEY_ID`), used with
    /// `secret_access_key`.
    pub access_key_id: Option<String>,
    /// Its secret (`AWS_SECRET_ACCESS_KEY`).
    pub secret_access_key: Option<Secret>,
    /// A session token for temporary keys (`AWS_SESSION_TOKEN`).
    pub session_token: Option<Secret>,
}

fn set(v: &Option<String>) -> Option<String> {
    v.as_ref().filter(|v| !v.trim().is_empty()).cloned()
}

fn set_secret(v: &Option<Secret>) -> Option<String> {
    set(&v.as_ref().map(|s| s.expose().to_owned()))
}

/// The SDK client: rustls (ring), no SDK retries, the standard credential
/// chain fed from `aws`.
pub(super) fn sdk_client(
    region: &str,
    endpoint: Option<&str>,
    connect_timeout: Duration,
    aws: &AwsSettings,
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
        .credentials_provider(credentials_chain(aws, &provider_config))
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
    aws: &AwsSettings,
    pc: &ProviderConfig,
) -> SharedCredentialsProvider {
    let mut profile = ProfileFileCredentialsProvider::builder().configure(pc);
    if let Some(p) = set(&aws.profile) {
        profile = profile.profile_name(p);
    }
    let mut web_identity = WebIdentityTokenCredentialsProvider::builder().configure(pc);
    let token_file = aws
        .web_identity_token_file
        .as_ref()
        .filter(|f| !f.as_os_str().is_empty());
    if let (Some(file), Some(role)) = (token_file, set(&aws.role_arn)) {
        web_identity = web_identity.static_configuration(StaticConfiguration {
            web_identity_token_file: file.clone(),
            role_arn: role,
            session_name: set(&aws.role_session_name).unwrap_or_else(|| "gatehouse".to_owned()),
        });
    }
    let profile = profile.build();
    let chain = match (set(&aws.access_key_id), set_secret(&aws.secret_access_key)) {
        (Some(id), Some(secret)) => CredentialsProviderChain::first_try(
            "Environment",
            Credentials::new(
                id,
                secret,
                set_secret(&aws.session_token),
                None,
                "Environment",
            ),
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

#[cfg(test)]
mod settings_tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_secret_key_or_session_token() {
        let aws = AwsSettings {
            access_key_id: Some("AKIDEXAMPLE".into()),
            secret_access_key: Some(Secret::new("wJalrXUtnFEMI/K7MDENG")),
            session_token: Some(Secret::new("FwoGZXIvYXdzEJr")),
            ..AwsSettings::default()
        };
        let shown = format!("{aws:?}");
        assert!(shown.contains("AKIDEXAMPLE"), "{shown}");
        assert!(!shown.contains("wJalrXUtnFEMI"), "{shown}");
        assert!(!shown.contains("FwoGZXIvYXdzEJr"), "{shown}");
    }

    #[test]
    fn blank_values_count_as_unset() {
        assert_eq!(set(&Some("  ".into())), None);
        assert_eq!(set_secret(&Some(Secret::new(""))), None);
        assert_eq!(set(&Some("p".into())).as_deref(), Some("p"));
    }
}
