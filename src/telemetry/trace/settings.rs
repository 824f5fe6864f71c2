//! The trace settings: the sampler and where to export, from the typed
//! OpenTelemetry options `main` parsed from its `--otel-*` flags (or the
//! `OTEL_*` variables of the same names). Not here: reading flags or the
//! environment (`main`), recording and exporting spans (the parent module).

use http::Uri;

use crate::config::redact_url;

/// When a request is recorded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampler {
    /// Every request.
    AlwaysOn,
    /// None (context is still passed on, unsampled).
    AlwaysOff,
    /// A share of new traces, chosen by trace id.
    Ratio(f64),
    /// The client's decision when it sent a trace context, else the inner
    /// sampler's.
    ParentBased(&'static Sampler),
}

const ALWAYS_ON: Sampler = Sampler::AlwaysOn;
const ALWAYS_OFF: Sampler = Sampler::AlwaysOff;

/// The samplers `OTEL_TRACES_SAMPLER` may name (the specification's
/// names; `jaeger_remote` and `xray` are not supported).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SamplerName {
    /// `always_on`.
    AlwaysOn,
    /// `always_off`.
    AlwaysOff,
    /// `traceidratio`.
    TraceIdRatio,
    /// `parentbased_always_on` (the default).
    #[default]
    ParentBasedAlwaysOn,
    /// `parentbased_always_off`.
    ParentBasedAlwaysOff,
    /// `parentbased_traceidratio`.
    ParentBasedTraceIdRatio,
}

impl std::str::FromStr for SamplerName {
    type Err = String;

    fn from_str(s: &str) -> Result<SamplerName, String> {
        Ok(match s.trim() {
            "always_on" => SamplerName::AlwaysOn,
            "always_off" => SamplerName::AlwaysOff,
            "traceidratio" => SamplerName::TraceIdRatio,
            "parentbased_always_on" => SamplerName::ParentBasedAlwaysOn,
            "parentbased_always_off" => SamplerName::ParentBasedAlwaysOff,
            "parentbased_traceidratio" => SamplerName::ParentBasedTraceIdRatio,
            other => {
                return Err(format!(
                    "{other:?} is not one of always_on, always_off, traceidratio, \
                     parentbased_always_on, parentbased_always_off, parentbased_traceidratio"
                ));
            }
        })
    }
}

/// `OTEL_TRACES_SAMPLER_ARG`: a ratio from 0 to 1.
pub fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("must be a number from 0 to 1, not {s:?}")),
    }
}

impl Sampler {
    /// The sampler `name` with its ratio `arg` (default 1, used only by the
    /// ratio samplers).
    pub fn new(name: SamplerName, arg: Option<f64>) -> Result<Sampler, String> {
        let ratio = match arg {
            None => 1.0,
            Some(r) if (0.0..=1.0).contains(&r) => r,
            Some(r) => return Err(format!("the sampler ratio must be from 0 to 1, not {r}")),
        };
        Ok(match name {
            SamplerName::AlwaysOn => Sampler::AlwaysOn,
            SamplerName::AlwaysOff => Sampler::AlwaysOff,
            SamplerName::TraceIdRatio => Sampler::Ratio(ratio),
            SamplerName::ParentBasedAlwaysOn => Sampler::ParentBased(&ALWAYS_ON),
            SamplerName::ParentBasedAlwaysOff => Sampler::ParentBased(&ALWAYS_OFF),
            SamplerName::ParentBasedTraceIdRatio => {
                // A leaked box per process start: samplers are built once.
                let inner: &'static Sampler = Box::leak(Box::new(Sampler::Ratio(ratio)));
                Sampler::ParentBased(inner)
            }
        })
    }

    pub(super) fn sample(&self, trace_id: &[u8; 16], parent: Option<bool>) -> bool {
        match (self, parent) {
            (Sampler::AlwaysOn, _) => true,
            (Sampler::AlwaysOff, _) => false,
            (Sampler::Ratio(r), _) => {
                let mut low = [0u8; 8];
                low.copy_from_slice(&trace_id[8..]);
                // The spec's TraceIdRatioBased: the low 64 bits against
                // the ratio of the id space.
                (u64::from_be_bytes(low) as f64) < r * (u64::MAX as f64)
            }
            (Sampler::ParentBased(_), Some(sampled)) => sampled,
            (Sampler::ParentBased(inner), None) => inner.sample(trace_id, None),
        }
    }
}

/// The OpenTelemetry settings gatehouse honours, as `main` parsed them
/// from its flags (`--otel-*`, or the `OTEL_*` variables of the same
/// names). Turned into [`TraceSettings`] by [`TraceSettings::new`].
#[derive(Debug, Clone, Default)]
pub struct OtlpOptions {
    /// `OTEL_SDK_DISABLED`: tracing off whatever else is set.
    pub disabled: bool,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`: the collector's base URL
    /// (`/v1/traces` is appended).
    pub endpoint: Option<String>,
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`: the full traces URL (wins over
    /// `endpoint`).
    pub traces_endpoint: Option<String>,
    /// `OTEL_SERVICE_NAME` (default `gatehouse`).
    pub service_name: Option<String>,
    /// `OTEL_TRACES_SAMPLER` (default `parentbased_always_on`).
    pub sampler: SamplerName,
    /// `OTEL_TRACES_SAMPLER_ARG`: the ratio of the ratio samplers.
    pub sampler_arg: Option<f64>,
}

/// Where and how to export.
#[derive(Debug, Clone)]
pub struct TraceSettings {
    /// The OTLP/HTTP traces URL (`…/v1/traces`).
    pub endpoint: Uri,
    /// `service.name` of the spans.
    pub service_name: String,
    /// The sampler.
    pub sampler: Sampler,
}

impl TraceSettings {
    /// From the OTLP options; `Ok(None)` when no endpoint is set or tracing
    /// is disabled. An endpoint must be an http(s) URL without credentials
    /// (the error never repeats them).
    pub fn new(opts: &OtlpOptions) -> Result<Option<TraceSettings>, String> {
        if opts.disabled {
            return Ok(None);
        }
        fn given(v: &Option<String>) -> Option<&str> {
            v.as_deref().map(str::trim).filter(|v| !v.is_empty())
        }
        let endpoint = match (given(&opts.traces_endpoint), given(&opts.endpoint)) {
            (Some(full), _) => full.to_owned(),
            (None, Some(base)) => format!("{}/v1/traces", base.trim_end_matches('/')),
            (None, None) => return Ok(None),
        };
        let uri: Uri = endpoint.parse().map_err(|e| {
            format!(
                "OTLP endpoint {:?} is not a URL: {e}",
                redact_url(&endpoint)
            )
        })?;
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err("OTLP endpoint must not carry credentials in the URL".to_owned());
        }
        match uri.scheme_str() {
            Some("http" | "https") if uri.authority().is_some() => {}
            _ => {
                return Err(format!(
                    "OTLP endpoint {:?} must be an http:// or https:// URL",
                    redact_url(&endpoint)
                ));
            }
        }
        Ok(Some(TraceSettings {
            endpoint: uri,
            service_name: given(&opts.service_name).unwrap_or("gatehouse").to_owned(),
            sampler: Sampler::new(opts.sampler, opts.sampler_arg)?,
        }))
    }
}
