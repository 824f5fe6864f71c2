//! Forwarding to upstreams: pooled clients, target choice, header rewriting,
//! timeouts and upgrade tunnels.
//!
//! An [`Upstream`] is built once per config snapshot with its own pooled
//! hyper client (HTTP/1.1 and h2, rustls for `https` targets). The request
//! path never blocks and holds no lock: the target is picked with an atomic
//! counter. Upstream error text is logged, never sent to the client.

mod headers;
pub mod lambda;

pub use headers::{
    ForwardedFor, X_REQUEST_ID, is_upgrade_request, prepare_request_headers,
    prepare_response_headers,
};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::body::{BodyStats, GwBody};
use crate::config::{Defaults, Problem, SourceFile, UpstreamProtocol, UpstreamSpec};

/// The pooled client type used for every upstream.
pub type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, GwBody>;

/// One target of an upstream.
#[derive(Debug, Clone)]
pub struct Target {
    scheme: Scheme,
    authority: Authority,
    base_path: String,
    label: String,
}

impl Target {
    /// Parses `http://host:port[/base]` or `https://…`.
    pub fn parse(s: &str) -> Result<Target, String> {
        let uri: Uri = s
            .parse()
            .map_err(|e| format!("invalid target URL {s:?}: {e}"))?;
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or_else(|| format!("target {s:?} needs a scheme (http:// or https://)"))?;
        if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
            return Err(format!("target {s:?}: only http and https are supported"));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("target {s:?} needs a host"))?;
        if authority.as_str().contains('@') {
            return Err(format!("target {s:?}: credentials in URLs are not allowed"));
        }
        if uri.query().is_some() {
            return Err(format!("target {s:?}: a query string is not allowed"));
        }
        let base_path = uri.path().trim_end_matches('/').to_owned();
        Ok(Target {
            label: format!("{scheme}://{authority}"),
            scheme,
            authority,
            base_path,
        })
    }

    /// `scheme://authority`, for logs.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The authority (host and port).
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The URI for `path` (already normalised, starts with `/`) and `query`.
    pub fn uri(&self, path: &str, query: Option<&str>) -> Result<Uri, http::Error> {
        let mut pq = String::with_capacity(
            self.base_path.len() + path.len() + 1 + query.map_or(0, str::len),
        );
        pq.push_str(&self.base_path);
        pq.push_str(path);
        if let Some(q) = query {
            pq.push('?');
            pq.push_str(q);
        }
        let pq = PathAndQuery::try_from(pq)?;
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
    }
}

/// An upstream, ready to take requests.
#[derive(Debug)]
pub struct Upstream {
    /// Its name.
    pub name: Arc<str>,
    targets: Vec<Target>,
    next: AtomicUsize,
    client: HttpClient,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Time to the response head.
    pub first_byte_timeout: Duration,
    /// Time for the whole exchange.
    pub request_timeout: Duration,
    /// Send the client's Host instead of the target's.
    pub preserve_host: bool,
    /// The protocol towards the targets.
    pub protocol: UpstreamProtocol,
}

/// Why forwarding failed.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// No response head within the first-byte or whole-request timeout, or
    /// the connection attempt timed out.
    #[error("upstream timed out")]
    Timeout,
    /// The client's body went over the route's limit while streaming.
    #[error("request body too large")]
    BodyTooLarge,
    /// The client sent its body too slowly.
    #[error("request body too slow")]
    BodyTimeout,
    /// Anything else: refused connection, reset, protocol error.
    #[error("upstream request failed")]
    Failed(#[source] crate::BoxError),
}

impl Upstream {
    /// Builds an upstream from its spec, reporting problems at their places.
    pub fn build(
        spec: &UpstreamSpec,
        defaults: &Defaults,
        base_dir: &Path,
        source: &SourceFile,
    ) -> Result<Upstream, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut targets = Vec::new();
        for t in &spec.targets {
            match Target::parse(t.get_ref()) {
                Ok(target) => targets.push(target),
                Err(msg) => problems.push(source.problem(t.span(), msg)),
            }
        }
        if spec.targets.is_empty() {
            problems
                .push(source.problem(spec.name.span(), "an upstream needs at least one target"));
        }
        let ca: Option<PathBuf> = spec.tls_ca.as_ref().map(|p| {
            let p = p.get_ref();
            if p.is_absolute() {
                p.clone()
            } else {
                base_dir.join(p)
            }
        });
        let tls = match crate::tls::client_config(ca.as_deref()) {
            Ok(c) => Some(c),
            Err(e) => {
                let span = spec
                    .tls_ca
                    .as_ref()
                    .map(|c| c.span())
                    .unwrap_or(spec.name.span());
                problems.push(source.problem(span, e.to_string()));
                None
            }
        };
        let Some(tls) = tls else {
            return Err(problems);
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        let connect_timeout = spec.connect_timeout.unwrap_or(defaults.connect_timeout).0;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        let connector = match spec.protocol {
            UpstreamProtocol::Auto => builder.enable_all_versions().wrap_connector(http),
            UpstreamProtocol::Http1 => builder.enable_http1().wrap_connector(http),
            UpstreamProtocol::H2 => builder.enable_http2().wrap_connector(http),
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(spec.pool_idle_timeout.0)
            .pool_max_idle_per_host(spec.pool_max_idle_per_host)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_only(spec.protocol == UpstreamProtocol::H2)
            .http2_adaptive_window(true)
            .build(connector);
        Ok(Upstream {
            name: spec.name.get_ref().as_str().into(),
            targets,
            next: AtomicUsize::new(0),
            client,
            connect_timeout,
            first_byte_timeout: spec
                .first_byte_timeout
                .unwrap_or(defaults.first_byte_timeout)
                .0,
            request_timeout: spec.request_timeout.unwrap_or(defaults.request_timeout).0,
            preserve_host: spec.preserve_host,
            protocol: spec.protocol,
        })
    }

    /// The targets' labels (`scheme://authority`).
    pub fn target_labels(&self) -> Vec<&str> {
        self.targets.iter().map(Target::label).collect()
    }

    /// Picks the next target (round robin, lock-free).
    pub fn pick(&self) -> Option<&Target> {
        if self.targets.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.targets.len();
        self.targets.get(i)
    }

    /// Sends `req` (URI already pointing at a target) and waits for the
    /// response head: at most `first_byte` after the request body has been
    /// sent (a slow upload is not a slow upstream), and never past `deadline`.
    pub async fn send(
        &self,
        req: Request<GwBody>,
        first_byte: Duration,
        deadline: tokio::time::Instant,
        body: &BodyStats,
    ) -> Result<Response<Incoming>, ForwardError> {
        let response = self.client.request(req);
        let result = if body.is_sent() {
            // No body to wait for (the common case): one timer.
            let at = deadline.min(tokio::time::Instant::now() + first_byte);
            match tokio::time::timeout_at(at, response).await {
                Ok(r) => r,
                Err(_) => return Err(ForwardError::Timeout),
            }
        } else {
            let first_byte_timer = async {
                body.sent().await;
                tokio::time::sleep(first_byte).await;
            };
            tokio::select! {
                r = response => r,
                () = first_byte_timer => return Err(ForwardError::Timeout),
                () = tokio::time::sleep_until(deadline) => return Err(ForwardError::Timeout),
            }
        };
        result.map_err(|e| {
            if body.too_large.load(Ordering::Relaxed) {
                ForwardError::BodyTooLarge
            } else if body.timed_out.load(Ordering::Relaxed) {
                ForwardError::BodyTimeout
            } else if is_timeout(&e) {
                ForwardError::Timeout
            } else {
                ForwardError::Failed(Box::new(e))
            }
        })
    }
}

fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Joins two upgraded connections (after the upstream answered 101) and
/// copies bytes both ways until either side closes.
pub async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    request_id: String,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::warn!(request_id, error = %e, "upgrade failed");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((up, down)) => tracing::debug!(request_id, up, down, "tunnel closed"),
        Err(e) => tracing::debug!(request_id, error = %e, "tunnel closed with error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let cases = [
            (
                "plain",
                "http://127.0.0.1:9000",
                Ok(("http://127.0.0.1:9000", "/x?a=1")),
            ),
            (
                "base path",
                "http://h:1/base/",
                Ok(("http://h:1", "/base/x?a=1")),
            ),
            ("https", "https://h", Ok(("https://h", "/x?a=1"))),
            ("no scheme", "127.0.0.1:9000", Err(())),
            ("ftp", "ftp://h", Err(())),
            ("userinfo", "http://u:p@h", Err(())),
            ("query", "http://h/?a", Err(())),
        ];
        for (name, input, want) in cases {
            let got = Target::parse(input).map_err(|_| ()).map(|t| {
                let uri = t
                    .uri("/x", Some("a=1"))
                    .map(|u| u.to_string())
                    .unwrap_or_default();
                (t.label().to_owned(), uri)
            });
            match (got, want) {
                (Ok((label, uri)), Ok((want_label, want_pq))) => {
                    assert_eq!(label, want_label, "{name}");
                    assert_eq!(uri, format!("{want_label}{want_pq}"), "{name}");
                }
                (Err(()), Err(())) => {}
                (got, _) => panic!("{name}: unexpected {got:?}"),
            }
        }
    }
}
