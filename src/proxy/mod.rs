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
mod state;
mod tunnel;

pub use balance::{Member, Members};
pub use forward::{Forwarded, OutBody, Outgoing, Plan, X_REQUEST_DEADLINE, is_idempotent};
pub use state::{InFlight, LOG_TARGET, TargetState, UpstreamRegistry, UpstreamState};

pub use headers::{ForwardedFor, X_REQUEST_ID, prepare_request_headers, prepare_response_headers};
pub use tunnel::{TunnelPlaces, Tunnels, tunnel};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use arc_swap::ArcSwap;
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_rustls::ResolveServerName;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::ServerName;

use crate::body::{BodyStats, GwBody};
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
    BodyTooLarge,
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

    /// Replaces the targets (discovery found a new list). Targets seen
    /// before keep their state.
    pub fn replace_targets(&self, list: &[discovery::Found]) {
        let members = self.members();
        let set_names: Vec<Arc<str>> = members.sets.iter().map(|s| s.name.clone()).collect();
        let new: Vec<Member> = list
            .iter()
            .filter_map(|f| discovered_member(&self.state, f))
            .collect();
        // Names first: a connection to a new target must find its name. A
        // request or health check that loaded the old members may still
        // connect to a target just dropped: its name stays one generation.
        let mut names = server_names(list);
        for (authority, (name, current)) in self.server_names.load().iter() {
            if *current {
                names
                    .entry(authority.clone())
                    .or_insert_with(|| (name.clone(), false));
            }
        }
        self.server_names.store(Arc::new(names));
        self.members.store(Arc::new(Members::new(new, &set_names)));
    }

    /// The targets' URLs as configured or discovered (for the status page).
    pub fn target_labels(&self) -> Vec<String> {
        self.members()
            .members
            .iter()
            .map(|m| m.state.url.to_string())
            .collect()
    }

    /// The current targets.
    pub fn members(&self) -> Arc<Members> {
        self.members.load_full()
    }

    /// The hash key of a request for `balance = "hash"`; `None` (round
    /// robin) when the header or cookie is missing.
    pub fn hash_key(&self, headers: &http::HeaderMap, client: std::net::IpAddr) -> Option<u64> {
        match self.hash_on.as_ref()? {
            HashOn::ClientIp => Some(match client {
                std::net::IpAddr::V4(a) => balance::hash_bytes(&a.octets()),
                std::net::IpAddr::V6(a) => balance::hash_bytes(&a.octets()),
            }),
            HashOn::Header(h) => headers.get(h).map(|v| balance::hash_bytes(v.as_bytes())),
            HashOn::Cookie(name) => headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|kv| kv.trim().split_once('='))
                .find(|(k, _)| k == name)
                .map(|(_, v)| balance::hash_bytes(v.as_bytes())),
        }
    }

    /// The set a request's header asks for (`match_header`), if any.
    pub fn set_hint(&self, headers: &http::HeaderMap) -> Option<usize> {
        self.set_headers
            .iter()
            .find(|(_, name, value)| headers.get(name) == Some(value))
            .map(|(i, _, _)| *i)
    }

    /// Picks a target not in `tried` if one is available, else any
    /// available one, else (panic mode) any undrained one. A set named by
    /// the request's header is tried first, whatever its weight.
    fn pick(
        &self,
        members: &Members,
        hash: Option<u64>,
        hint: Option<usize>,
        tried: &[usize],
    ) -> Option<usize> {
        let now = self.state.now_ms();
        let fresh = |i: usize| !tried.contains(&i);
        let available = |m: &Member| m.state.is_available(now);
        let levels: [&dyn Fn(usize, &Member) -> bool; 4] = [
            &|i, m| available(m) && fresh(i),
            &|_, m| available(m),
            &|i, m| !m.state.is_drained() && fresh(i),
            &|_, m| !m.state.is_drained(),
        ];
        let usable = match self.when_all_unhealthy {
            WhenAllUnhealthy::TryAnyway => 4,
            WhenAllUnhealthy::Fail => 2,
        };
        if let Some(set) = hint
            && let Some(i) = levels
                .iter()
                .take(2)
                .find_map(|ok| members.pick_in(set, self.balance, &self.cursor, hash, *ok))
        {
            return Some(i);
        }
        if let [only] = self.set_weights.as_slice() {
            // One set (the common case): no set choice, no allocation.
            if only.load(Ordering::Relaxed) == 0 {
                return None;
            }
            return levels
                .iter()
                .take(usable)
                .find_map(|ok| members.pick_in(0, self.balance, &self.cursor, hash, *ok));
        }
        let order = self.set_order();
        for ok in levels.iter().take(usable) {
            for set in &order {
                if let Some(i) = members.pick_in(*set, self.balance, &self.cursor, hash, *ok) {
                    return Some(i);
                }
            }
        }
        None
    }

    /// Sets with traffic, the one chosen by weight first.
    fn set_order(&self) -> Vec<usize> {
        let weights: Vec<u32> = self
            .set_weights
            .iter()
            .map(|w| w.load(Ordering::Relaxed))
            .collect();
        let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
        if total == 0 {
            return Vec::new();
        }
        let mut r = rand::random_range(0..total);
        let mut first = 0;
        for (i, w) in weights.iter().enumerate() {
            if r < u64::from(*w) {
                first = i;
                break;
            }
            r -= u64::from(*w);
        }
        let mut order = vec![first];
        order.extend(
            weights
                .iter()
                .enumerate()
                .filter(|(i, w)| *i != first && **w > 0)
                .map(|(i, _)| i),
        );
        order
    }

    /// Moves traffic: the named sets get these weights, the others 0.
    pub fn shift(&self, to: &std::collections::BTreeMap<String, u32>) -> Result<(), ChangeError> {
        let members = self.members();
        let names: Vec<&str> = members.sets.iter().map(|s| &*s.name).collect();
        if let Some(unknown) = to.keys().find(|k| !names.contains(&k.as_str())) {
            return Err(ChangeError::UnknownSet(unknown.clone()));
        }
        if to.values().all(|w| *w == 0) {
            return Err(ChangeError::AllZero);
        }
        for (name, w) in names.iter().zip(&self.set_weights) {
            let new = to.get(*name).copied().unwrap_or(0);
            let old = w.swap(new, Ordering::AcqRel);
            if old != new {
                tracing::info!(target: state::LOG_TARGET, upstream = %self.name, set = %name, from = old, to = new, "traffic shifted");
            }
        }
        Ok(())
    }

    /// Drains (no new requests) or undrains the target `url`.
    pub fn drain(&self, url: &str, drained: bool) -> Result<(), ChangeError> {
        let members = self.members();
        let url = url.trim_end_matches('/');
        let found: Vec<&Member> = members
            .members
            .iter()
            .filter(|m| &*m.state.url == url)
            .collect();
        if found.is_empty() {
            return Err(ChangeError::UnknownTarget(url.to_owned()));
        }
        for m in found {
            self.state.set_drained(&m.state, drained);
        }
        Ok(())
    }

    /// What the admin API and the status page show.
    pub fn status(&self) -> UpstreamStatus {
        let members = self.members();
        let targets: Vec<TargetStatus> = members
            .members
            .iter()
            .map(|m| {
                let ejected_for_ms = self.state.ejected_for_ms(&m.state);
                TargetStatus {
                    url: m.state.url.to_string(),
                    set: members
                        .sets
                        .get(m.set)
                        .map(|s| s.name.to_string())
                        .unwrap_or_default(),
                    weight: m.weight,
                    healthy: m.state.is_healthy(),
                    ejected: ejected_for_ms > 0,
                    ejected_for_ms,
                    drained: m.state.is_drained(),
                    in_flight: m.state.in_flight(),
                    latency_ewma_ms: m.state.latency_ms(),
                    requests: m.state.requests(),
                }
            })
            .collect();
        let sets = members
            .sets
            .iter()
            .zip(&self.set_weights)
            .map(|(s, w)| SetStatus {
                name: s.name.to_string(),
                weight: w.load(Ordering::Relaxed),
                in_flight: s
                    .members
                    .iter()
                    .filter_map(|i| members.members.get(*i))
                    .map(|m| m.state.in_flight())
                    .sum(),
            })
            .collect();
        UpstreamStatus {
            name: self.name.to_string(),
            breaker: self.state.breaker_state().to_owned(),
            in_flight: self.state.in_flight.load(Ordering::Relaxed),
            sets,
            targets,
        }
    }

    /// Sends `req` (URI already pointing at a target) and waits for the
    /// response head: at most `first_byte` after the request body has been
    /// sent (a slow upload is not a slow upstream), and never past `deadline`.
    async fn send(
        &self,
        req: Request<GwBody>,
        plan: &Plan,
        body: &BodyStats,
    ) -> Result<Response<Incoming>, ForwardError> {
        let (first_byte, deadline) = (plan.first_byte, plan.deadline);
        let client = plan
            .connect_timeout
            .and_then(|t| self.route_clients.iter().find(|(d, _)| *d == t))
            .map_or(&self.client, |(_, c)| c);
        let response = client.request(req);
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

fn resolve_path(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// Values no type can check: reported at the upstream's name.
fn check_settings(spec: &UpstreamSpec, source: &SourceFile, problems: &mut Vec<Problem>) {
    let at = spec.name.span();
    let mut bad = |cond: bool, msg: &str| {
        if cond {
            problems.push(source.problem(at.clone(), msg.to_owned()));
        }
    };
    if let Some(h) = &spec.health {
        bad(
            !h.path.starts_with('/'),
            "`health.path` must start with `/`",
        );
        bad(
            h.interval.0.is_zero(),
            "`health.interval` must be above zero",
        );
        bad(h.timeout.0.is_zero(), "`health.timeout` must be above zero");
        bad(h.expected.is_empty(), "`health.expected` needs a status");
        bad(
            h.expected.iter().any(|s| !(100..=599).contains(s)),
            "`health.expected` statuses are 100 to 599",
        );
    }
    let o = &spec.outlier;
    bad(
        o.max_ejected_percent > 100,
        "`outlier.max_ejected_percent` is at most 100",
    );
    let r = &spec.retry;
    bad(
        !(1..=10).contains(&r.attempts),
        "`retry.attempts` is 1 to 10",
    );
    bad(
        r.on_status.iter().any(|s| !(500..=599).contains(s)),
        "`retry.on_status` lists 5xx statuses only",
    );
    bad(
        r.budget_window.0.is_zero(),
        "`retry.budget_window` must be above zero",
    );
    if let Some(b) = &spec.breaker {
        bad(
            b.failure_rate_percent > 100,
            "`breaker.failure_rate_percent` is at most 100",
        );
        bad(b.window.0.is_zero(), "`breaker.window` must be above zero");
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

    fn build(text: &str) -> Result<Upstream, Vec<Problem>> {
        let spec: UpstreamSpec = toml::from_str(text).unwrap();
        let source = SourceFile {
            path: "p.toml".into(),
            text: text.to_owned(),
        };
        let registry = UpstreamRegistry::new(Arc::new(crate::telemetry::Metrics::new().unwrap()));
        Upstream::build(
            &spec,
            &Defaults::default(),
            Path::new("/"),
            &source,
            &registry,
            &[],
        )
    }

    #[test]
    fn dns_names_may_be_addresses() {
        for name in ["10.0.0.5", "::1", "[::1]", "api.internal."] {
            let text = format!("name = \"u\"\ndns = {{ name = \"{name}\", port = 80 }}");
            assert!(build(&text).is_ok(), "{name}");
        }
        let text = "name = \"u\"\ndns = { name = \"a:b\", port = 80 }";
        assert!(build(text).is_err());
    }

    #[test]
    fn discovered_targets_carry_their_names_for_a_generation() {
        let u = build(
            "name = \"u\"\ndns = { name = \"api.internal\", srv = true, scheme = \"https\", nameservers = [\"127.0.0.1\"] }",
        )
        .unwrap();
        let found = |url: &str, name: &str| discovery::Found {
            url: url.into(),
            weight: 1,
            name: Some(name.into()),
        };
        let name_of = |u: &Upstream, authority: &str| {
            u.server_names
                .load()
                .get(authority)
                .map(|(n, current)| (n.to_str().into_owned(), *current))
        };
        u.replace_targets(&[
            found("https://10.0.0.1:443", "a.internal"),
            found("https://10.0.0.2:8443", "b.internal"),
        ]);
        let hosts: Vec<_> = u.members().members.iter().map(|m| m.host.clone()).collect();
        assert_eq!(
            hosts,
            vec![
                Some(http::HeaderValue::from_static("a.internal")),
                Some(http::HeaderValue::from_static("b.internal:8443")),
            ],
            "the default port is left out of Host"
        );
        assert_eq!(
            name_of(&u, "10.0.0.1:443"),
            Some(("a.internal".into(), true))
        );
        // b leaves: its name stays one generation for connections made from
        // an older member list, then goes.
        u.replace_targets(&[found("https://10.0.0.1:443", "a.internal")]);
        assert_eq!(
            name_of(&u, "10.0.0.2:8443"),
            Some(("b.internal".into(), false))
        );
        u.replace_targets(&[found("https://10.0.0.1:443", "a.internal")]);
        assert_eq!(name_of(&u, "10.0.0.2:8443"), None);
        assert_eq!(
            name_of(&u, "10.0.0.1:443"),
            Some(("a.internal".into(), true))
        );
    }

    #[test]
    fn hash_keys() {
        let cases = [
            ("client ip", "client_ip", Ok(HashOn::ClientIp)),
            (
                "header",
                "header:x-user",
                Ok(HashOn::Header(http::HeaderName::from_static("x-user"))),
            ),
            ("cookie", "cookie:sid", Ok(HashOn::Cookie("sid".into()))),
            ("empty cookie", "cookie:", Err(())),
            ("bad header", "header:a b", Err(())),
            ("unknown", "path", Err(())),
        ];
        for (name, input, want) in cases {
            assert_eq!(HashOn::parse(input).map_err(|_| ()), want, "{name}");
        }
        let u = build(
            "name = \"u\"\ntargets = [\"http://a:1\"]\nbalance = \"hash\"\nhash_on = \"cookie:sid\"",
        )
        .unwrap();
        let ip: std::net::IpAddr = "10.0.0.1".parse().unwrap();
        let mut h = http::HeaderMap::new();
        assert_eq!(u.hash_key(&h, ip), None, "no cookie: round robin");
        h.insert(http::header::COOKIE, "a=1; sid=abc".parse().unwrap());
        let k1 = u.hash_key(&h, ip);
        h.insert(http::header::COOKIE, "sid=abc".parse().unwrap());
        assert!(k1.is_some());
        assert_eq!(u.hash_key(&h, ip), k1, "same cookie, same key");
    }

    #[test]
    fn shifts_and_drains() {
        let u = build(
            "name = \"u\"\n[[set]]\nname = \"blue\"\ntargets = [\"http://a:1\"]\n\
             [[set]]\nname = \"green\"\ntargets = [\"http://b:1/\"]\nweight = 0",
        )
        .unwrap();
        let to = |pairs: &[(&str, u32)]| -> std::collections::BTreeMap<String, u32> {
            pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
        };
        let cases = [
            (
                "unknown set",
                to(&[("red", 1)]),
                Err(ChangeError::UnknownSet("red".into())),
            ),
            ("all zero", to(&[("blue", 0)]), Err(ChangeError::AllZero)),
            ("to green", to(&[("green", 100)]), Ok((0, 100))),
            ("split", to(&[("green", 10), ("blue", 90)]), Ok((90, 10))),
        ];
        for (name, weights, want) in cases {
            let got = u.shift(&weights).map(|()| {
                let st = u.status();
                (st.sets[0].weight, st.sets[1].weight)
            });
            assert_eq!(got, want, "{name}");
        }
        assert_eq!(
            u.drain("http://c:1", true),
            Err(ChangeError::UnknownTarget("http://c:1".into()))
        );
        assert_eq!(
            u.drain("http://b:1/", true),
            Ok(()),
            "trailing slash ignored"
        );
        assert!(u.status().targets[1].drained);
    }
}
