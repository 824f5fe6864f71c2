//! `[[route]]`: matching, auth, query and body checks, CORS, header edits,
//! direct responses.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;
use validator::Validate;

use super::*;

/// A route: which requests it matches and what happens to them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    /// Unique name, used in logs and metrics.
    pub name: Spanned<String>,
    /// Match only this host (case-insensitive, port ignored).
    pub host: Option<Spanned<String>>,
    /// Match exactly this path.
    pub path: Option<Spanned<String>>,
    /// Match this path and everything below it.
    pub prefix: Option<Spanned<String>>,
    /// Match a template: `/users/{id}`, with an optional tail `/{*rest}`.
    pub template: Option<Spanned<String>>,
    /// Allowed methods; empty means all.
    #[serde(default)]
    pub methods: Vec<Spanned<String>>,
    /// Forward to this upstream.
    pub upstream: Option<Spanned<String>>,
    /// Or answer directly.
    pub respond: Option<Spanned<RespondSpec>>,
    /// Remove this prefix from the path before forwarding.
    pub strip_prefix: Option<Spanned<String>>,
    /// Replace the path; `{name}` inserts a template parameter.
    pub rewrite_path: Option<Spanned<String>>,
    /// Headers to set on / remove from the request sent upstream.
    #[serde(default)]
    pub request_headers: HeaderEdits,
    /// Headers to set on / remove from the response.
    #[serde(default)]
    pub response_headers: HeaderEdits,
    /// Largest request body (default from `[defaults]`).
    pub max_body: Option<ByteSize>,
    /// Headers every request must carry (400 otherwise).
    #[serde(default)]
    pub required_headers: Vec<String>,
    /// Media types accepted for request bodies (415 otherwise).
    #[serde(default)]
    pub content_types: Vec<String>,
    /// Query-string rules.
    pub query: Option<QuerySpec>,
    /// JSON Schema file (relative to this policy file) the body must match (422).
    pub json_schema: Option<Spanned<PathBuf>>,
    /// Only these client networks may use the route.
    #[serde(default)]
    pub allow_ips: Vec<Spanned<String>>,
    /// These client networks may not.
    #[serde(default)]
    pub deny_ips: Vec<Spanned<String>>,
    /// CORS policy, answered at the gateway.
    pub cors: Option<Spanned<CorsSpec>>,
    /// Who may call: `"none"` (default), `"api_key"`, `"jwt"`, or a list
    /// (any of them).
    pub auth: Option<Spanned<AuthSpec>>,
    /// Header an API key is read from (also accepted as `Authorization: Bearer`).
    pub api_key_header: Option<Spanned<String>>,
    /// JWT issuers (by name) this route accepts; empty: any declared issuer.
    #[serde(default)]
    pub jwt_issuers: Vec<Spanned<String>>,
    /// Scopes the caller must hold, all of them (403 otherwise).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Roles of which the caller must hold at least one (403 otherwise).
    #[serde(default)]
    pub roles: Vec<String>,
    /// Pass the client's `Authorization` (and API-key) header to the
    /// upstream. Off by default: the upstream gets derived identity headers.
    #[serde(default)]
    pub forward_authorization: bool,
    /// Rate-limit policies (by name) for this route, besides global ones
    /// and those that list it.
    #[serde(default)]
    pub rate_limits: Vec<Spanned<String>>,
    /// Retry non-idempotent methods (POST, PATCH) too.
    #[serde(default)]
    pub retry_non_idempotent: bool,
    /// Accept path parameters (a raw `;` in the path, as in
    /// `/a;jsessionid=1`) on this route. Default `false`: such requests get
    /// 400 `invalid_path`, because servlet containers cut `;…` off each
    /// segment and would serve another path than the one routed here. An
    /// encoded `%3B` is data and always passes; dot segments with
    /// parameters (`..;`) are refused on every route.
    #[serde(default)]
    pub allow_path_params: bool,
    /// Overrides the upstream's connect timeout (such a route gets its own
    /// connection pool to the upstream's targets).
    pub connect_timeout: Option<Dur>,
    /// Overrides the upstream's time to the response head.
    pub first_byte_timeout: Option<Dur>,
    /// Overrides the upstream's time for the whole exchange.
    pub request_timeout: Option<Dur>,
    /// Count this route's requests per consumer on `/metrics`
    /// (`gatehouse_consumer_requests_total`; at most 100 consumers by name,
    /// the rest as `other`).
    #[serde(default)]
    pub consumer_metrics: bool,
    /// Protocol upgrades this route tunnels after the backend's 101, e.g.
    /// `["websocket"]`. Empty by default: an `Upgrade` header is removed and
    /// the request forwarded as a plain one. `h2c` is never allowed.
    #[serde(default)]
    pub upgrades: Vec<Spanned<String>>,
    /// Upgraded tunnels open at once on this route (default 1000); beyond
    /// it an upgrade request gets 503 `tunnel_limit_reached`.
    pub max_tunnels: Option<u32>,
    /// A tunnel with no byte in either direction for this long is closed
    /// (default `[server] idle_timeout`).
    pub tunnel_idle_timeout: Option<Dur>,
    /// Client headers that are removed by default (`x-original-url`,
    /// `x-http-method-override`, `x-forwarded-port`, …) which this route
    /// passes on. `x-real-ip` and the `X-Forwarded-For/Proto/Host` family
    /// are always the gateway's own.
    #[serde(default)]
    pub allow_client_headers: Vec<Spanned<String>>,
    /// Overrides `[server] underscores_in_headers` for this route.
    pub underscores_in_headers: Option<UnderscoreHeaders>,
}

/// A route's `auth`: one method or a list of accepted methods.
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum AuthSpec {
    /// One method.
    One(String),
    /// Any of these.
    Any(Vec<String>),
}

/// Query-string rules of a route.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct QuerySpec {
    /// Only these parameter names are accepted (absent: any).
    pub allowed: Option<Vec<String>>,
    /// These parameters must be present.
    #[serde(default)]
    pub required: Vec<String>,
    /// Most parameters in one request.
    #[serde(default = "default_max_params")]
    pub max_params: usize,
}

pub(super) fn default_max_params() -> usize {
    64
}

/// CORS policy of a route.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct CorsSpec {
    /// Allowed origins (`https://app.example`), or `"*"`.
    pub allow_origins: Vec<String>,
    /// Allowed methods (default: the route's).
    #[serde(default)]
    pub allow_methods: Vec<String>,
    /// Allowed request headers.
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// Response headers the browser may read.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// Allow cookies and Authorization (not with `"*"`).
    #[serde(default)]
    pub allow_credentials: bool,
    /// How long browsers may cache a preflight answer.
    pub max_age: Option<Dur>,
}

/// Header changes.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct HeaderEdits {
    /// Set (replace) these headers.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Remove these headers.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// A direct answer from the gateway.
#[derive(Debug, Deserialize, Validate, Clone)]
#[serde(deny_unknown_fields)]
pub struct RespondSpec {
    /// Status code.
    #[validate(range(min = 200, max = 599))]
    pub status: u16,
    /// Response headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Response body.
    #[serde(default)]
    #[validate(length(max = 65536))]
    pub body: String,
}
