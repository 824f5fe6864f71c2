//! Forwarding to upstreams: pooled clients, target choice, header rewriting,
//! timeouts and upgrade tunnels.
//!
//! An [`Upstream`] is built once per config snapshot with its own pooled
//! hyper client (HTTP/1.1 and h2, rustls for `https` targets), its targets
//! grouped in named sets, and its runtime state (health, ejections, breaker,
//! retry budget, drain flags) taken from the [`UpstreamRegistry`] so that a
//! reload keeps it. The request path never blocks and holds no lock: targets
//! are read from an `ArcSwap` and picked with atomics (`balance`); the
//! attempt loop (retries, breaker, outlier detection) is `forward`.
//! Upstream error text is logged, never sent to the client.

mod balance;
pub mod discovery;
pub mod dns;
mod forward;
mod headers;
mod health;
pub mod lambda;
mod runtime;
mod settings;
mod state;
mod tunnel;

use settings::*;

pub use balance::{Member, Members};
pub use forward::{Forwarded, OutBody, Outgoing, Plan, X_REQUEST_DEADLINE, is_idempotent};
pub use state::{InFlight, LOG_TARGET, TargetState, UpstreamRegistry, UpstreamState};

pub use headers::{ForwardedFor, X_REQUEST_ID, prepare_request_headers, prepare_response_headers};
pub use tunnel::{TunnelPlaces, Tunnels, tunnel};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize};

use arc_swap::ArcSwap;
use std::time::Duration;

use http::Uri;
use http::uri::{Authority, PathAndQuery, Scheme};
use hyper_rustls::ResolveServerName;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::ServerName;

use crate::body::GwBody;
use crate::config::{
    Balance, BreakerSpec, Defaults, HealthSpec, OutlierSpec, Problem, RetrySpec, SourceFile,
    TargetSpec, UpstreamProtocol, UpstreamSpec, WhenAllUnhealthy,
};

/// The pooled client type used for every upstream.
pub type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, GwBody>;

/// One target of an upstream.
#[derive(Debug, Clone)]
pub struct Target {
    scheme: Scheme,
    authority: Authority,
    base_path: String,
    label: String,
    full: String,
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
            full: format!("{scheme}://{authority}{base_path}"),
            scheme,
            authority,
            base_path,
        })
    }

    /// `scheme://authority`, for logs.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// `scheme://authority/base`: the target as configured, its key in the
    /// registry and the admin API.
    pub fn full_label(&self) -> &str {
        &self.full
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

/// What `balance = "hash"` hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    /// The client address (after trusted proxies).
    ClientIp,
    /// A request header's value.
    Header(http::HeaderName),
    /// A cookie's value.
    Cookie(String),
}

impl HashOn {
    fn parse(s: &str) -> Result<HashOn, String> {
        if s == "client_ip" {
            return Ok(HashOn::ClientIp);
        }
        if let Some(h) = s.strip_prefix("header:") {
            return http::HeaderName::from_bytes(h.as_bytes())
                .map(HashOn::Header)
                .map_err(|_| format!("`hash_on`: {h:?} is not a header name"));
        }
        if let Some(c) = s.strip_prefix("cookie:")
            && !c.is_empty()
            && c.bytes()
                .all(|b| b.is_ascii_graphic() && b != b'=' && b != b';')
        {
            return Ok(HashOn::Cookie(c.to_owned()));
        }
        Err(format!(
            "`hash_on` must be `client_ip`, `header:NAME` or `cookie:NAME`, not {s:?}"
        ))
    }
}

/// An upstream, ready to take requests.
#[derive(Debug)]
pub struct Upstream {
    /// Its name.
    pub name: Arc<str>,
    members: ArcSwap<Members>,
    set_weights: Vec<AtomicU32>,
    set_headers: Vec<(usize, http::HeaderName, http::HeaderValue)>,
    cursor: AtomicUsize,
    client: HttpClient,
    /// Clients for routes with their own `connect_timeout`.
    route_clients: Vec<(Duration, HttpClient)>,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Time to the response head.
    pub first_byte_timeout: Duration,
    /// Time for the whole exchange.
    pub request_timeout: Duration,
    /// Send the client's Host instead of the target's.
    pub preserve_host: bool,
    /// The TLS server names of discovered `https` targets, by authority.
    server_names: ServerNames,
    /// The protocol towards the targets.
    pub protocol: UpstreamProtocol,
    /// How targets are picked.
    pub balance: Balance,
    /// What `balance = "hash"` hashes.
    pub hash_on: Option<HashOn>,
    /// Active health checks.
    pub health: Option<HealthSpec>,
    /// Passive outlier detection.
    pub outlier: OutlierSpec,
    /// Retries.
    pub retry: RetrySpec,
    /// Circuit breaker.
    pub breaker: Option<BreakerSpec>,
    /// When every target is unhealthy.
    pub when_all_unhealthy: WhenAllUnhealthy,
    /// Where targets are discovered, if anywhere.
    pub discovery: Option<discovery::Source>,
    state: Arc<UpstreamState>,
}

/// TLS server names by target authority (`address:port`): discovered
/// targets are addresses, their certificates name the DNS name. The flag
/// is false for targets of the previous generation only.
type ServerNames = Arc<ArcSwap<HashMap<String, (ServerName<'static>, bool)>>>;

/// The server names of discovered `https` targets (current ones).
fn server_names(list: &[discovery::Found]) -> HashMap<String, (ServerName<'static>, bool)> {
    list.iter()
        .filter_map(|f| {
            let target = Target::parse(&f.url).ok()?;
            if target.scheme != Scheme::HTTPS {
                return None;
            }
            let name = ServerName::try_from(f.name.clone()?).ok()?;
            Some((target.authority.as_str().to_owned(), (name, true)))
        })
        .collect()
}

/// A discovered target as a member: its Host is the name it was found
/// under, with the port unless it is the scheme's default.
fn discovered_member(state: &UpstreamState, found: &discovery::Found) -> Option<Member> {
    let target = Target::parse(&found.url).ok()?;
    let host = found.name.as_ref().and_then(|name| {
        let default_port = if target.scheme == Scheme::HTTPS {
            443
        } else {
            80
        };
        let host = match target.authority.port_u16() {
            Some(p) if p != default_port => format!("{name}:{p}"),
            _ => name.clone(),
        };
        http::HeaderValue::from_str(&host).ok()
    });
    Some(Member {
        state: state.target(target.full_label()),
        weight: found.weight,
        set: 0,
        host,
        target,
    })
}

/// The pooled client of an upstream, connecting within `connect_timeout`.
fn pooled_client(
    spec: &UpstreamSpec,
    tls: rustls::ClientConfig,
    connect_timeout: Duration,
    names: &ServerNames,
) -> HttpClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let mut builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    // Discovered targets are addresses; their certificates name the DNS
    // name, which is what TLS must send (SNI) and verify.
    if spec.dns.as_ref().is_some_and(|d| d.scheme == "https") {
        let names = names.clone();
        builder = builder.with_server_name_resolver(move |uri: &Uri| {
            if let Some((name, _)) = uri
                .authority()
                .and_then(|a| names.load().get(a.as_str()).cloned())
            {
                return Ok(name);
            }
            hyper_rustls::DefaultServerNameResolver::default().resolve(uri)
        });
    }
    let connector = match spec.protocol {
        UpstreamProtocol::Auto => builder.enable_all_versions().wrap_connector(http),
        UpstreamProtocol::Http1 => builder.enable_http1().wrap_connector(http),
        UpstreamProtocol::H2 => builder.enable_http2().wrap_connector(http),
    };
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(spec.pool_idle_timeout.0)
        .pool_max_idle_per_host(spec.pool_max_idle_per_host)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .http2_only(spec.protocol == UpstreamProtocol::H2)
        .http2_adaptive_window(true)
        .build(connector)
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
    BodyTooLarge {
        /// The limit it went over, in bytes.
        limit: u64,
    },
    /// The client sent its body too slowly.
    #[error("request body too slow")]
    BodyTimeout,
    /// Anything else: refused connection, reset, protocol error.
    #[error("upstream request failed")]
    Failed(#[source] crate::BoxError),
    /// No target can take the request (empty set, all drained, or all
    /// unhealthy with `when_all_unhealthy = "fail"`).
    #[error("no upstream target available")]
    NoTarget,
    /// The breaker is open or a concurrency limit is reached.
    #[error("upstream unavailable")]
    Unavailable {
        /// When to try again.
        retry_after: Duration,
    },
    /// The path cannot be sent to the target.
    #[error("path cannot be forwarded")]
    InvalidPath,
}

/// One target as the admin API and the status page show it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TargetStatus {
    /// `scheme://authority[/base]`.
    pub url: String,
    /// The set it belongs to.
    pub set: String,
    /// Its weight within the set.
    pub weight: u32,
    /// Whether active health checks pass (true without checks).
    pub healthy: bool,
    /// Whether outlier detection has it ejected.
    pub ejected: bool,
    /// Milliseconds until the ejection ends.
    pub ejected_for_ms: u64,
    /// Whether it is drained (no new requests).
    pub drained: bool,
    /// Requests in flight.
    pub in_flight: u64,
    /// Response-head latency average (EWMA), in milliseconds.
    pub latency_ewma_ms: f64,
    /// Requests sent since the gateway started.
    pub requests: u64,
}

/// A named set's traffic share.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SetStatus {
    /// Its name.
    pub name: String,
    /// Its current weight (0: no new requests).
    pub weight: u32,
    /// Requests in flight to its targets.
    pub in_flight: u64,
}

/// An upstream as the admin API and the status page show it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct UpstreamStatus {
    /// Its name.
    pub name: String,
    /// `closed`, `open` or `half_open`.
    pub breaker: String,
    /// Requests in flight.
    pub in_flight: u64,
    /// Its sets.
    pub sets: Vec<SetStatus>,
    /// Its targets.
    pub targets: Vec<TargetStatus>,
}

/// Why a shift or drain was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChangeError {
    /// A set name the upstream does not have.
    #[error("upstream has no set `{0}`")]
    UnknownSet(String),
    /// A target URL the upstream does not have.
    #[error("upstream has no target `{0}`")]
    UnknownTarget(String),
    /// Every weight would be zero.
    #[error("at least one set needs a weight above zero")]
    AllZero,
}

impl Upstream {
    /// Builds an upstream from its spec, reporting problems at their places;
    /// its runtime state comes from `registry` (kept across reloads).
    pub fn build(
        spec: &UpstreamSpec,
        defaults: &Defaults,
        base_dir: &Path,
        source: &SourceFile,
        registry: &UpstreamRegistry,
        route_connect_timeouts: &[Duration],
    ) -> Result<Upstream, Vec<Problem>> {
        let mut problems = Vec::new();
        let name = spec.name.get_ref().as_str();
        let state = registry.upstream(name);
        let mut set_names: Vec<Arc<str>> = Vec::new();
        let mut set_weights = Vec::new();
        let mut set_headers = Vec::new();
        let mut members = Vec::new();
        let mut names = HashMap::new();
        let mut add =
            |targets: &[toml::Spanned<TargetSpec>], set: usize, problems: &mut Vec<Problem>| {
                for t in targets {
                    match Target::parse(t.get_ref().url()) {
                        Ok(target) => {
                            let st = state.target(target.full_label());
                            members.push(Member {
                                weight: t.get_ref().weight(),
                                set,
                                state: st,
                                host: None,
                                target,
                            });
                        }
                        Err(msg) => problems.push(source.problem(t.span(), msg)),
                    }
                }
            };
        let discovery = match (&spec.dns, &spec.targets_file) {
            (Some(_), Some(f)) => {
                problems.push(source.problem(f.span(), "use either `dns` or `targets_file`"));
                None
            }
            (Some(dns), None) => {
                let mut nameservers = Vec::new();
                for ns in &dns.nameservers {
                    match dns::parse_nameserver(ns) {
                        Ok(addr) => nameservers.push(addr),
                        Err(msg) => problems.push(source.problem(spec.name.span(), msg)),
                    }
                }
                let literal = dns
                    .name
                    .trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>();
                if let (Err(_), Err(e)) = (literal, dns::check_name(&dns.name)) {
                    problems.push(source.problem(spec.name.span(), format!("`dns.name`: {e}")));
                }
                match (dns.srv, dns.port) {
                    (false, None) => problems.push(source.problem(
                        spec.name.span(),
                        "`dns.port` is required (or `srv = true` to take ports from SRV records)",
                    )),
                    (true, Some(_)) => problems.push(source.problem(
                        spec.name.span(),
                        "with `dns.srv = true` the ports come from the SRV records: drop `dns.port`",
                    )),
                    (true, None) if dns.hosts_file.is_some() => problems.push(source.problem(
                        spec.name.span(),
                        "SRV records need DNS: `dns.srv` cannot be used with `dns.hosts_file`",
                    )),
                    _ => {}
                }
                if dns.min_ttl.0 > dns.max_ttl.0 {
                    problems.push(source.problem(
                        spec.name.span(),
                        "`dns.min_ttl` is longer than `dns.max_ttl`",
                    ));
                }
                let resolver: Arc<dyn discovery::Resolve> = match &dns.hosts_file {
                    Some(_) if !nameservers.is_empty() => {
                        problems.push(source.problem(
                            spec.name.span(),
                            "use either `dns.hosts_file` or `dns.nameservers`",
                        ));
                        Arc::new(dns::DnsResolver::system())
                    }
                    Some(p) => Arc::new(discovery::HostsFile(resolve_path(base_dir, p))),
                    None if nameservers.is_empty() => Arc::new(dns::DnsResolver {
                        family: dns.family,
                        ..dns::DnsResolver::system()
                    }),
                    None => Arc::new(dns::DnsResolver {
                        family: dns.family,
                        ..dns::DnsResolver::with_nameservers(
                            nameservers,
                            dns.timeout.0.max(Duration::from_millis(10)),
                        )
                    }),
                };
                if !matches!(dns.scheme.as_str(), "http" | "https") {
                    problems.push(
                        source.problem(spec.name.span(), "`dns.scheme` is `http` or `https`"),
                    );
                }
                Some(discovery::Source::Dns {
                    spec: dns.clone(),
                    resolver,
                })
            }
            (None, Some(f)) => Some(discovery::Source::File {
                path: resolve_path(base_dir, f.get_ref()),
                every: spec.targets_file_poll.0.max(Duration::from_millis(10)),
            }),
            (None, None) => None,
        };
        if let Some(found) = &discovery {
            if !spec.targets.is_empty() || !spec.sets.is_empty() {
                problems.push(source.problem(
                    spec.name.span(),
                    "discovered targets (`dns`, `targets_file`) exclude `targets` and sets",
                ));
            }
            set_names.push("default".into());
            set_weights.push(AtomicU32::new(100));
            let initial = match found {
                discovery::Source::File { path, .. } => match discovery::read_targets_file(path) {
                    Ok(list) => list,
                    Err(e) => {
                        let span = spec
                            .targets_file
                            .as_ref()
                            .map(|f| f.span())
                            .unwrap_or(spec.name.span());
                        problems.push(source.problem(span, e.to_string()));
                        Vec::new()
                    }
                },
                discovery::Source::Dns { .. } => state.discovered().unwrap_or_default(),
            };
            names = server_names(&initial);
            members.extend(initial.iter().filter_map(|f| discovered_member(&state, f)));
        } else if spec.sets.is_empty() {
            set_names.push("default".into());
            set_weights.push(AtomicU32::new(100));
            add(&spec.targets, 0, &mut problems);
            if spec.targets.is_empty() {
                problems.push(
                    source.problem(spec.name.span(), "an upstream needs at least one target"),
                );
            }
        } else {
            if !spec.targets.is_empty() {
                problems.push(source.problem(
                    spec.name.span(),
                    "use either `targets` or `[[upstream.set]]`, not both",
                ));
            }
            for (i, set) in spec.sets.iter().enumerate() {
                let n = set.name.get_ref();
                if set_names.iter().any(|s| &**s == n.as_str()) {
                    problems.push(source.problem(set.name.span(), format!("set `{n}` twice")));
                }
                if set.targets.is_empty() {
                    problems.push(source.problem(set.name.span(), "a set needs targets"));
                }
                set_names.push(n.as_str().into());
                set_weights.push(AtomicU32::new(set.weight));
                if let Some(m) = &set.match_header {
                    let h = m.get_ref();
                    match (
                        http::HeaderName::from_bytes(h.name.as_bytes()),
                        http::HeaderValue::from_str(&h.value),
                    ) {
                        (Ok(name), Ok(value)) => set_headers.push((i, name, value)),
                        _ => problems.push(
                            source
                                .problem(m.span(), "`match_header` needs a header name and value"),
                        ),
                    }
                }
                add(&set.targets, i, &mut problems);
            }
            if spec.sets.iter().all(|s| s.weight == 0) {
                problems.push(source.problem(
                    spec.name.span(),
                    "at least one set needs a weight above zero",
                ));
            }
        }
        let hash_on = match (&spec.hash_on, spec.balance) {
            (Some(h), Balance::Hash) => match HashOn::parse(h.get_ref()) {
                Ok(h) => Some(h),
                Err(msg) => {
                    problems.push(source.problem(h.span(), msg));
                    None
                }
            },
            (None, Balance::Hash) => {
                problems
                    .push(source.problem(spec.name.span(), "`balance = \"hash\"` needs `hash_on`"));
                None
            }
            (Some(h), _) => {
                problems.push(
                    source.problem(h.span(), "`hash_on` only applies to `balance = \"hash\"`"),
                );
                None
            }
            (None, _) => None,
        };
        check_settings(spec, source, &mut problems);
        let ca: Option<PathBuf> = spec
            .tls_ca
            .as_ref()
            .map(|p| resolve_path(base_dir, p.get_ref()));
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
        let names: ServerNames = Arc::new(ArcSwap::from_pointee(names));
        let client = pooled_client(spec, tls.clone(), connect_timeout, &names);
        // Routes that override the connect timeout get a client (and a
        // connection pool) of their own per distinct value.
        let mut route_clients: Vec<(Duration, HttpClient)> = Vec::new();
        for t in route_connect_timeouts {
            if *t != connect_timeout && !route_clients.iter().any(|(d, _)| d == t) {
                route_clients.push((*t, pooled_client(spec, tls.clone(), *t, &names)));
            }
        }
        Ok(Upstream {
            name: name.into(),
            members: ArcSwap::from_pointee(Members::new(members, &set_names)),
            set_weights,
            set_headers,
            cursor: AtomicUsize::new(0),
            client,
            route_clients,
            connect_timeout,
            first_byte_timeout: spec
                .first_byte_timeout
                .unwrap_or(defaults.first_byte_timeout)
                .0,
            request_timeout: spec.request_timeout.unwrap_or(defaults.request_timeout).0,
            preserve_host: spec.preserve_host,
            server_names: names,
            protocol: spec.protocol,
            balance: spec.balance,
            hash_on,
            health: spec.health.clone(),
            outlier: spec.outlier.clone(),
            retry: spec.retry.clone(),
            breaker: spec.breaker.clone(),
            when_all_unhealthy: spec.when_all_unhealthy,
            discovery,
            state,
        })
    }
}

#[cfg(test)]
mod tests;
