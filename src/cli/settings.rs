//! The flags of `gatehouse serve` that become the library's typed settings:
//! metrics on or off, the OpenTelemetry exporter (`OTEL_*`) and the AWS
//! credentials for Lambda upstreams (`AWS_*`). Each flag also reads the
//! environment variable of the standard name (clap `env =`), both listed
//! in `--help`; secrets never show their values there (`hide_env_values`)
//! nor in Debug output ([`Secret`]).
//!
//! Not here: the config-named secrets (an issuer's `hmac_secret_env`),
//! which `main` resolves when the config names them
//! ([`gatehouse::config::Environment`]).

use std::path::PathBuf;

use anyhow::Context;
use clap::{ArgAction, Args};
use gatehouse::config::Secret;
use gatehouse::proxy::lambda::AwsSettings;
use gatehouse::telemetry::trace::{self, OtlpOptions, SamplerName, TraceSettings};

/// Settings of `serve` beyond the config file.
#[derive(Debug, Clone, Args)]
pub(crate) struct ServeSettings {
    /// Record metrics; `off`, `false` or `0` turns recording off (every
    /// meter becomes a no-op, `/metrics` is empty).
    #[arg(long, env = "GATEHOUSE_METRICS", value_name = "on|off", default_value = "on",
          value_parser = parse_metrics, action = ArgAction::Set)]
    pub(crate) metrics: bool,
    #[command(flatten)]
    pub(crate) otel: OtelArgs,
    #[command(flatten)]
    pub(crate) aws: AwsArgs,
}

/// OpenTelemetry trace export (OTLP over HTTP/protobuf); off unless an
/// endpoint is given.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Tracing (OpenTelemetry)")]
pub(crate) struct OtelArgs {
    /// Turn tracing off whatever else is set (only `true` does).
    #[arg(long, env = "OTEL_SDK_DISABLED", value_name = "true|false",
          default_value = "false", default_missing_value = "true", num_args = 0..=1,
          value_parser = parse_otel_bool, action = ArgAction::Set)]
    pub(crate) otel_sdk_disabled: bool,
    /// The collector's base URL; spans go to `<URL>/v1/traces`.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_name = "URL")]
    pub(crate) otel_exporter_otlp_endpoint: Option<String>,
    /// The full traces URL (wins over --otel-exporter-otlp-endpoint).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", value_name = "URL")]
    pub(crate) otel_exporter_otlp_traces_endpoint: Option<String>,
    /// `service.name` of the spans [default: gatehouse].
    #[arg(long, env = "OTEL_SERVICE_NAME", value_name = "NAME")]
    pub(crate) otel_service_name: Option<String>,
    /// always_on, always_off, traceidratio, parentbased_always_on,
    /// parentbased_always_off or parentbased_traceidratio.
    #[arg(long, env = "OTEL_TRACES_SAMPLER", value_name = "SAMPLER",
          default_value = "parentbased_always_on", value_parser = parse_sampler)]
    pub(crate) otel_traces_sampler: SamplerName,
    /// The ratio (0 to 1) of the traceidratio samplers [default: 1].
    #[arg(long, env = "OTEL_TRACES_SAMPLER_ARG", value_name = "RATIO", value_parser = trace::parse_ratio)]
    pub(crate) otel_traces_sampler_arg: Option<f64>,
}

/// Credentials for Lambda upstreams, tried before the shared profile, web
/// identity, the ECS container endpoint and the EC2 instance role.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "AWS (Lambda upstreams)")]
pub(crate) struct AwsArgs {
    /// The shared-config profile.
    #[arg(long, env = "AWS_PROFILE", value_name = "NAME")]
    pub(crate) aws_profile: Option<String>,
    /// A web identity token file (with --aws-role-arn).
    #[arg(long, env = "AWS_WEB_IDENTITY_TOKEN_FILE", value_name = "FILE")]
    pub(crate) aws_web_identity_token_file: Option<PathBuf>,
    /// The role to assume with the web identity token.
    #[arg(long, env = "AWS_ROLE_ARN", value_name = "ARN")]
    pub(crate) aws_role_arn: Option<String>,
    /// The session name for that role [default: gatehouse].
    #[arg(long, env = "AWS_ROLE_SESSION_NAME", value_name = "NAME")]
    pub(crate) aws_role_session_name: Option<String>,
    /// A static access key id (with --aws-secret-access-key).
    #[arg(long, env = "AWS_ACCESS_KEY_ID", value_name = "ID")]
    pub(crate) aws_access_key_id: Option<String>,
    /// Its secret (better in the environment than on the command line).
    #[arg(
        long,
        env = "AWS_SECRET_ACCESS_KEY",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub(crate) aws_secret_access_key: Option<Secret>,
    /// A session token for temporary keys (better in the environment).
    #[arg(
        long,
        env = "AWS_SESSION_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub(crate) aws_session_token: Option<Secret>,
}

fn parse_metrics(s: &str) -> Result<bool, String> {
    Ok(!matches!(s.trim(), "off" | "false" | "0"))
}

/// The specification's rule: only `true` (any case) disables.
fn parse_otel_bool(s: &str) -> Result<bool, String> {
    Ok(s.trim().eq_ignore_ascii_case("true"))
}

fn parse_sampler(s: &str) -> Result<SamplerName, String> {
    s.parse()
}

impl OtelArgs {
    /// The trace settings these flags ask for (`None`: tracing off).
    pub(crate) fn settings(&self) -> anyhow::Result<Option<TraceSettings>> {
        TraceSettings::new(&OtlpOptions {
            disabled: self.otel_sdk_disabled,
            endpoint: self.otel_exporter_otlp_endpoint.clone(),
            traces_endpoint: self.otel_exporter_otlp_traces_endpoint.clone(),
            service_name: self.otel_service_name.clone(),
            sampler: self.otel_traces_sampler,
            sampler_arg: self.otel_traces_sampler_arg,
        })
        .map_err(anyhow::Error::msg)
        .context("invalid OpenTelemetry settings")
    }
}

impl AwsArgs {
    /// The library's AWS settings.
    pub(crate) fn settings(&self) -> AwsSettings {
        AwsSettings {
            profile: self.aws_profile.clone(),
            web_identity_token_file: self.aws_web_identity_token_file.clone(),
            role_arn: self.aws_role_arn.clone(),
            role_session_name: self.aws_role_session_name.clone(),
            access_key_id: self.aws_access_key_id.clone(),
            secret_access_key: self.aws_secret_access_key.clone(),
            session_token: self.aws_session_token.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    //! Flags only, never the environment: the `env =` names are checked
    //! through `--help` and clap's own argument table.
    use clap::{CommandFactory, Parser};

    use super::*;
    use crate::cli::{Cli, Command};

    fn serve(args: &[&str]) -> Result<ServeSettings, clap::Error> {
        let cli = Cli::try_parse_from(["gatehouse", "serve"].iter().chain(args))?;
        match cli.command {
            Command::Serve { settings, .. } => Ok(settings),
            other => panic!("not serve: {other:?}"),
        }
    }

    #[test]
    fn otlp_flags_become_trace_settings() {
        let s = serve(&[
            "--otel-exporter-otlp-endpoint",
            "http://collector:4318/",
            "--otel-service-name",
            "edge",
            "--otel-traces-sampler",
            "parentbased_traceidratio",
            "--otel-traces-sampler-arg",
            "0.25",
        ])
        .unwrap();
        let t = s.otel.settings().unwrap().expect("tracing on");
        assert_eq!(t.endpoint.to_string(), "http://collector:4318/v1/traces");
        assert_eq!(t.service_name, "edge");
        assert!(
            matches!(t.sampler, trace::Sampler::ParentBased(trace::Sampler::Ratio(r)) if *r == 0.25),
            "{:?}",
            t.sampler
        );
        let off = serve(&[
            "--otel-exporter-otlp-endpoint",
            "http://c:1",
            "--otel-sdk-disabled",
        ])
        .unwrap();
        assert!(
            off.otel.settings().unwrap().is_none(),
            "a bare flag disables"
        );
        let on = serve(&[
            "--otel-exporter-otlp-endpoint",
            "http://c:1",
            "--otel-sdk-disabled",
            "no",
        ])
        .unwrap();
        assert!(on.otel.settings().unwrap().is_some(), "only true disables");
    }

    #[test]
    fn bad_values_are_refused_with_a_clear_error() {
        let cases: [(&str, &[&str], &str); 3] = [
            (
                "ratio above 1",
                &["--otel-traces-sampler-arg", "2"],
                "from 0 to 1",
            ),
            (
                "ratio not a number",
                &["--otel-traces-sampler-arg", "half"],
                "from 0 to 1",
            ),
            (
                "unknown sampler",
                &["--otel-traces-sampler", "jaeger_remote"],
                "is not one of",
            ),
        ];
        for (name, args, want) in cases {
            let e = serve(args).expect_err(name).to_string();
            assert!(e.contains(want), "{name}: {e}");
        }
        for (endpoint, want) in [
            ("ftp://collector", "http:// or https://"),
            ("https://user:pw@collector", "must not carry credentials"),
            ("ftp://user:pw@collector", "must not carry credentials"),
        ] {
            let s = serve(&["--otel-exporter-otlp-endpoint", endpoint]).unwrap();
            let e = format!("{:#}", s.otel.settings().expect_err(endpoint));
            assert!(e.contains(want), "{endpoint}: {e}");
            assert!(!e.contains("pw@"), "{endpoint}: {e}");
        }
    }

    #[test]
    fn metrics_flag_keeps_the_lenient_values() {
        for (value, want) in [
            ("off", false),
            ("false", false),
            ("0", false),
            ("on", true),
            ("yes", true),
        ] {
            assert_eq!(
                serve(&["--metrics", value]).unwrap().metrics,
                want,
                "{value}"
            );
        }
    }

    #[test]
    fn aws_flags_become_settings_and_secrets_stay_hidden() {
        let s = serve(&[
            "--aws-access-key-id",
            "AKIDEXAMPLE",
            "--aws-secret-access-key",
            "wJalrXUtnFEMI",
            "--aws-session-token",
            "FwoGZXIvYXdz",
            "--aws-profile",
            "prod",
        ])
        .unwrap();
        let aws = s.aws.settings();
        assert_eq!(aws.access_key_id.as_deref(), Some("AKIDEXAMPLE"));
        assert_eq!(
            aws.secret_access_key.as_ref().map(Secret::expose),
            Some("wJalrXUtnFEMI")
        );
        assert_eq!(aws.profile.as_deref(), Some("prod"));
        for shown in [format!("{s:?}"), format!("{aws:?}")] {
            assert!(!shown.contains("wJalrXUtnFEMI"), "{shown}");
            assert!(!shown.contains("FwoGZXIvYXdz"), "{shown}");
        }
    }

    #[test]
    fn the_admin_token_is_not_in_debug_output() {
        let cli = Cli::try_parse_from([
            "gatehouse",
            "upstream",
            "--admin-token",
            "gh-admin-s3cret",
            "list",
        ])
        .unwrap();
        let shown = format!("{cli:?}");
        assert!(shown.contains("admin_token: Some(***)"), "{shown}");
        assert!(!shown.contains("gh-admin-s3cret"), "{shown}");
    }

    #[test]
    fn every_variable_is_a_flag_listed_in_help() {
        let mut cmd = Cli::command();
        let serve = cmd.find_subcommand_mut("serve").expect("serve");
        let help = serve.render_long_help().to_string();
        let wanted = [
            ("metrics", "GATEHOUSE_METRICS", false),
            ("otel-sdk-disabled", "OTEL_SDK_DISABLED", false),
            (
                "otel-exporter-otlp-endpoint",
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                false,
            ),
            (
                "otel-exporter-otlp-traces-endpoint",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                false,
            ),
            ("otel-service-name", "OTEL_SERVICE_NAME", false),
            ("otel-traces-sampler", "OTEL_TRACES_SAMPLER", false),
            ("otel-traces-sampler-arg", "OTEL_TRACES_SAMPLER_ARG", false),
            ("aws-profile", "AWS_PROFILE", false),
            (
                "aws-web-identity-token-file",
                "AWS_WEB_IDENTITY_TOKEN_FILE",
                false,
            ),
            ("aws-role-arn", "AWS_ROLE_ARN", false),
            ("aws-role-session-name", "AWS_ROLE_SESSION_NAME", false),
            ("aws-access-key-id", "AWS_ACCESS_KEY_ID", false),
            ("aws-secret-access-key", "AWS_SECRET_ACCESS_KEY", true),
            ("aws-session-token", "AWS_SESSION_TOKEN", true),
        ];
        for (flag, var, secret) in wanted {
            let arg = serve
                .get_arguments()
                .find(|a| a.get_long() == Some(flag))
                .unwrap_or_else(|| panic!("no --{flag}"));
            assert_eq!(arg.get_env().and_then(|e| e.to_str()), Some(var), "{flag}");
            assert_eq!(
                arg.is_hide_env_values_set(),
                secret,
                "{flag}: hide_env_values"
            );
            assert!(help.contains(&format!("--{flag}")), "--{flag} not in help");
            assert!(help.contains(var), "{var} not in help");
        }
    }
}
