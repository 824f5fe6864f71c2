//! Meters of the gateway process rather than of requests: TLS handshakes,
//! configuration reloads, certificate expiry and build information.

use std::sync::Arc;

use super::metrics::{Counter, CounterSet, Gauge, Metrics};
use crate::tls::CertInfo;

/// The commit the binary was built from (`unknown` outside a git checkout).
pub const GIT_COMMIT: &str = env!("GATEHOUSE_GIT_COMMIT");

/// Handshakes on one TLS listener.
#[derive(Debug)]
pub struct TlsMeters {
    handshakes: CounterSet,
    failures: CounterSet,
}

impl TlsMeters {
    /// The meters of listener `name`.
    pub fn new(metrics: &Arc<Metrics>, name: &str) -> TlsMeters {
        TlsMeters {
            handshakes: CounterSet::new(
                metrics,
                "gatehouse_tls_handshakes_total",
                &[("listener", name)],
                "version",
                8,
            ),
            failures: CounterSet::new(
                metrics,
                "gatehouse_tls_handshake_failures_total",
                &[("listener", name)],
                "reason",
                16,
            ),
        }
    }

    /// Counts a completed handshake.
    pub fn completed(&self, version: &'static str) {
        self.handshakes.add(version, 1);
    }

    /// Counts a failed handshake.
    pub fn failed(&self, reason: &'static str) {
        self.failures.add(reason, 1);
    }
}

/// Connections of one listener closed before HTTP, or for idling.
#[derive(Debug)]
pub struct ConnMeters {
    refused: CounterSet,
    idle_closed: Counter,
}

impl ConnMeters {
    /// The meters of listener `name`.
    pub fn new(metrics: &Arc<Metrics>, name: &str) -> ConnMeters {
        ConnMeters {
            refused: CounterSet::new(
                metrics,
                "gatehouse_connections_refused_total",
                &[("listener", name)],
                "reason",
                16,
            ),
            idle_closed: metrics.counter(
                "gatehouse_connections_idle_closed_total",
                &[("listener", name)],
            ),
        }
    }

    /// Counts a connection closed before any request: `max_connections`,
    /// `max_connections_per_ip`, `max_tls_handshakes_per_ip`, or a
    /// `proxy_protocol_*` reason.
    pub fn refused(&self, reason: &'static str) {
        self.refused.add(reason, 1);
    }

    /// Counts a connection closed by the idle timeout.
    pub fn idle_closed(&self) {
        self.idle_closed.increment(1);
    }
}

/// Why a TLS handshake failed, as a short label: `timeout`,
/// `client_closed`, `incompatible` (no common version, cipher or ALPN),
/// `client_certificate`, `protocol`, `alert_received` or `other`.
pub fn handshake_failure_reason(e: &std::io::Error) -> &'static str {
    if e.kind() == std::io::ErrorKind::UnexpectedEof
        || e.kind() == std::io::ErrorKind::ConnectionReset
    {
        return "client_closed";
    }
    let Some(err) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return "other";
    };
    match err {
        rustls::Error::PeerIncompatible(_) | rustls::Error::NoApplicationProtocol => "incompatible",
        rustls::Error::NoCertificatesPresented | rustls::Error::InvalidCertificate(_) => {
            "client_certificate"
        }
        rustls::Error::InappropriateMessage { .. }
        | rustls::Error::InappropriateHandshakeMessage { .. }
        | rustls::Error::InvalidMessage(_)
        | rustls::Error::PeerMisbehaved(_)
        | rustls::Error::DecryptError => "protocol",
        rustls::Error::AlertReceived(_) => "alert_received",
        _ => "other",
    }
}

/// Reloads, the generation running, certificates served.
#[derive(Debug)]
pub struct ConfigMeters {
    metrics: Arc<Metrics>,
    reload_ok: Counter,
    reload_failed: Counter,
    generation: Gauge,
    hash: Gauge,
    loaded_at: Gauge,
}

impl ConfigMeters {
    /// Registers the meters, and `gatehouse_build_info`.
    pub fn new(metrics: &Arc<Metrics>) -> ConfigMeters {
        let reloads =
            |result| metrics.counter("gatehouse_config_reloads_total", &[("result", result)]);
        metrics
            .gauge(
                "gatehouse_build_info",
                &[
                    ("version", env!("CARGO_PKG_VERSION")),
                    ("git_commit", GIT_COMMIT),
                ],
            )
            .set(1.0);
        ConfigMeters {
            metrics: metrics.clone(),
            reload_ok: reloads("success"),
            reload_failed: reloads("failure"),
            generation: metrics.gauge("gatehouse_config_generation", &[]),
            hash: metrics.gauge("gatehouse_config_hash", &[]),
            loaded_at: metrics.gauge("gatehouse_config_loaded_timestamp_seconds", &[]),
        }
    }

    /// A configuration is running: generation, the first 48 bits of its
    /// SHA-256 (`hash_hex`) as a number, when it loaded, its certificates.
    pub fn loaded(&self, generation: u64, hash_hex: &str, loaded_at: f64, certs: &[CertInfo]) {
        self.generation.set(generation as f64);
        let prefix = hash_hex.get(..12).unwrap_or("0");
        self.hash
            .set(u64::from_str_radix(prefix, 16).unwrap_or(0) as f64);
        self.loaded_at.set(loaded_at);
        for cert in certs {
            let name = cert
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let subject = cert.names.first().map(String::as_str).unwrap_or("-");
            self.metrics
                .gauge(
                    "gatehouse_certificate_expiry_timestamp_seconds",
                    &[("cert", &name), ("name", subject)],
                )
                .set(cert.not_after as f64);
        }
    }

    /// Counts a reload that succeeded.
    pub fn reloaded(&self) {
        self.reload_ok.increment(1);
    }

    /// Counts a reload that was refused (the running config stays).
    pub fn reload_failed(&self) {
        self.reload_failed.increment(1);
    }
}

/// `# HELP` texts of the process metrics.
pub fn describe(metrics: &Metrics) {
    metrics.describe_counter(
        "gatehouse_tls_handshakes_total",
        "Completed TLS handshakes by listener and protocol version.",
    );
    metrics.describe_counter(
        "gatehouse_tls_handshake_failures_total",
        "Failed TLS handshakes by listener and reason.",
    );
    metrics.describe_counter(
        "gatehouse_connections_refused_total",
        "Connections closed before any request, by listener and reason (connection caps, PROXY protocol).",
    );
    metrics.describe_counter(
        "gatehouse_connections_idle_closed_total",
        "Connections closed after the idle timeout with no request in flight, by listener.",
    );
    metrics.describe_counter(
        "gatehouse_config_reloads_total",
        "Configuration reloads by result; a failed one keeps the running config.",
    );
    metrics.describe_gauge(
        "gatehouse_config_generation",
        "The generation of the running configuration (1 at start, +1 per reload).",
    );
    metrics.describe_gauge(
        "gatehouse_config_hash",
        "The first 48 bits of the SHA-256 of the running config and policy files.",
    );
    metrics.describe_gauge(
        "gatehouse_config_loaded_timestamp_seconds",
        "When the running configuration was loaded (Unix time).",
    );
    metrics.describe_gauge(
        "gatehouse_certificate_expiry_timestamp_seconds",
        "When each served certificate expires (Unix time).",
    );
    metrics.describe_gauge(
        "gatehouse_build_info",
        "Always 1; the labels give the version and git commit.",
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_reasons() {
        let cases = [
            (
                "eof",
                std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
                "client_closed",
            ),
            (
                "incompatible",
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    rustls::Error::PeerIncompatible(
                        rustls::PeerIncompatible::NoCipherSuitesInCommon,
                    ),
                ),
                "incompatible",
            ),
            (
                "no client cert",
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    rustls::Error::NoCertificatesPresented,
                ),
                "client_certificate",
            ),
            ("plain io", std::io::Error::other("x"), "other"),
        ];
        for (name, err, want) in cases {
            assert_eq!(handshake_failure_reason(&err), want, "{name}");
        }
    }

    #[test]
    fn config_meters() {
        let m = Arc::new(Metrics::new().unwrap());
        let c = ConfigMeters::new(&m);
        c.loaded(3, "00000000000a5e11", 1.0, &[]);
        c.reloaded();
        c.reload_failed();
        c.reload_failed();
        let text = m.render();
        for want in [
            "gatehouse_config_generation 3",
            "gatehouse_config_hash 10",
            "gatehouse_config_reloads_total{result=\"failure\"} 2",
            "gatehouse_config_reloads_total{result=\"success\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == want),
                "missing {want:?} in\n{text}"
            );
        }
        assert!(text.contains("gatehouse_build_info{version=\""));
    }
}
