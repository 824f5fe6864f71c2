//! JWK Sets (RFC 7517) fetched from identity providers, cached in memory.
//!
//! This module owns fetching a JWK Set over http(s), turning its usable
//! entries into [`VerificationKey`]s, keeping the last good set in an
//! [`ArcSwap`] (so the request path reads keys without a lock or a network
//! call), periodic refreshes and rate-limited refreshes on an unknown `kid`.
//! It does not verify tokens ([`super::jwt`] does) and it never follows
//! `jku`/`x5u` URLs from tokens: the only URLs fetched are the configured
//! `jwks_url`s.
//!
//! Lifecycle: [`JwksRegistry::get`] returns the same [`JwksSet`] for the same
//! URL across config reloads, so a reload neither refetches nor forgets keys.
//! Fetches happen (a) in the background task started explicitly by
//! [`JwksRegistry::spawn_refresh`] (the first pass runs at once, so every
//! set is fetched at start; later passes refresh each set every
//! `jwks_refresh`, and after a failed fetch again after
//! `jwks_min_refresh_interval`), (b) when a token names a `kid` the set does
//! not know, at most once per `jwks_min_refresh_interval`, and (c) when the
//! caller awaits [`JwksRegistry::refresh_all`] (e.g. at start-up, to fail
//! or warn early). Sets no issuer uses any more are dropped by the next pass.
//!
//! Failure behaviour, on purpose: a failed fetch (timeout, non-200, over
//! 1 MiB, bad JSON, no usable key) keeps the last good set and logs the URL
//! and the reason. Until a first fetch succeeds the set is empty and tokens
//! of that issuer fail with `KeysUnavailable`.
//!
//! Security caveats: symmetric (`oct`) keys in a JWK Set are ignored (an
//! HMAC secret never comes over the network); keys marked `use: enc`, or
//! whose `key_ops` lack `verify`, are ignored; RSA keys shorter than 2048 or
//! longer than 4096 bits are ignored; a key's `alg`, when present, restricts
//! it to that one algorithm. Only kids, URLs and reasons are logged, never
//! key material. The set is capped at [`MAX_JWKS_KEYS`] keys and
//! [`MAX_JWKS_BYTES`] bytes.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use jsonwebtoken::jwk::PublicKeyUse;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::time::Instant;

/// Largest JWK Set response accepted.
pub const MAX_JWKS_BYTES: usize = 1 << 20;

/// Most keys taken from one JWK Set; further entries are ignored.
pub const MAX_JWKS_KEYS: usize = 64;

/// How often the background task looks for sets that are due.
const TICK: Duration = Duration::from_secs(1);

/// The RSA algorithms, all usable with one RSA key.
pub(crate) const RSA_ALGORITHMS: [Algorithm; 6] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

type JwksClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// A public key ready for signature checks, with the key id it is known by
/// and the algorithms it may be used with.
#[derive(Clone)]
pub struct VerificationKey {
    pub(crate) kid: Option<String>,
    pub(crate) algorithms: Vec<Algorithm>,
    pub(crate) key: DecodingKey,
}

impl VerificationKey {
    /// The key id (`kid`), if the key has one.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The algorithms this key may verify.
    pub fn algorithms(&self) -> &[Algorithm] {
        &self.algorithms
    }

    /// Whether this key is a candidate for a token with `kid` and `alg`: the
    /// algorithm fits, and the kids are equal or this key has none.
    pub(crate) fn matches(&self, kid: Option<&str>, alg: Algorithm) -> bool {
        self.algorithms.contains(&alg)
            && match (&self.kid, kid) {
                (Some(mine), Some(theirs)) => mine == theirs,
                (None, _) => true,
                (Some(_), None) => true,
            }
    }
}

impl fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerificationKey")
            .field("kid", &self.kid)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

/// Per-set fetch settings, from the issuer's config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JwksSettings {
    /// Time between periodic fetches.
    pub refresh: Duration,
    /// Least time between two fetches caused by unknown kids, and between a
    /// failed fetch and the next periodic attempt.
    pub min_refresh_interval: Duration,
    /// Timeout for one fetch, connect and body included.
    pub timeout: Duration,
}

impl Default for JwksSettings {
    fn default() -> Self {
        JwksSettings {
            refresh: Duration::from_secs(300),
            min_refresh_interval: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
        }
    }
}

/// Why a JWK Set could not be fetched or used.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// The HTTP client could not be set up.
    #[error("jwks client TLS setup failed")]
    Tls(#[source] crate::tls::TlsError),
    /// The request could not be built from the URL.
    #[error("invalid jwks request")]
    Request(#[source] http::Error),
    /// Connecting or exchanging failed.
    #[error("jwks request failed")]
    Http(#[source] crate::BoxError),
    /// The fetch took longer than the configured timeout.
    #[error("jwks fetch timed out")]
    Timeout,
    /// The server answered with something other than 200.
    #[error("jwks server answered {0}")]
    Status(u16),
    /// The body was larger than [`MAX_JWKS_BYTES`].
    #[error("jwks response larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    /// Reading the body failed.
    #[error("reading the jwks response failed")]
    Body(#[source] crate::BoxError),
    /// The body is not a JWK Set.
    #[error("jwks response is not a JWK Set")]
    Json(#[source] serde_json::Error),
    /// The set held no key this gateway can use.
    #[error("jwks holds no usable signature key")]
    NoUsableKeys,
}

/// All JWK Sets of a process, one per URL. Cheap to clone.
#[derive(Clone)]
pub struct JwksRegistry {
    inner: Arc<RegistryInner>,
}

struct RegistryInner {
    client: JwksClient,
    sets: Mutex<HashMap<String, Arc<JwksSet>>>,
}

impl fmt::Debug for JwksRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let urls: Vec<String> = self.sets().iter().map(|s| s.label.clone()).collect();
        f.debug_struct("JwksRegistry").field("urls", &urls).finish()
    }
}

impl JwksRegistry {
    /// A registry with an http/https client that trusts the public web
    /// roots. Needs no runtime; fetching does.
    pub fn new() -> Result<JwksRegistry, JwksError> {
        let tls = crate::tls::client_config(None).map_err(JwksError::Tls)?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(2)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        Ok(JwksRegistry {
            inner: Arc::new(RegistryInner {
                client,
                sets: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The set for `url`: the cached one if any (its settings updated to
    /// `settings`; if two issuers share a URL, the last one built wins),
    /// else a new, empty set that the next refresh pass fetches.
    pub fn get(&self, url: &Uri, settings: JwksSettings) -> Arc<JwksSet> {
        let label = url.to_string();
        let mut sets = self.lock_sets();
        if let Some(set) = sets.get(&label) {
            set.settings.store(Arc::new(settings));
            return Arc::clone(set);
        }
        let set = Arc::new(JwksSet {
            url: url.clone(),
            label: label.clone(),
            client: self.inner.client.clone(),
            settings: ArcSwap::from_pointee(settings),
            keys: ArcSwap::from_pointee(Vec::new()),
            loaded: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            attempts: AtomicU64::new(0),
            state: tokio::sync::Mutex::new(FetchState::default()),
        });
        sets.insert(label, Arc::clone(&set));
        set
    }

    /// Every set currently known.
    pub fn sets(&self) -> Vec<Arc<JwksSet>> {
        self.lock_sets().values().cloned().collect()
    }

    /// Fetches every set now (concurrently), whatever its schedule.
    /// Returns the failures by URL; each is also logged.
    pub async fn refresh_all(&self) -> Vec<(String, JwksError)> {
        let sets = self.sets();
        let results = futures_util::future::join_all(sets.iter().map(|set| set.refresh())).await;
        sets.iter()
            .zip(results)
            .filter_map(|(set, r)| r.err().map(|e| (set.label.clone(), e)))
            .collect()
    }

    /// One pass of the background task: forgets sets no issuer holds any
    /// more, then fetches the sets that are due.
    pub async fn refresh_due(&self) {
        let due: Vec<Arc<JwksSet>> = {
            let mut sets = self.lock_sets();
            sets.retain(|_, set| Arc::strong_count(set) > 1);
            sets.values().cloned().collect()
        };
        futures_util::future::join_all(due.iter().map(|set| set.refresh_if_due())).await;
    }

    /// Starts the background refresh task: a first pass at once, then one
    /// every second (each set is fetched only when due). It stops when
    /// `stop` turns `true` or its sender is dropped.
    pub fn spawn_refresh(
        &self,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let registry = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                if *stop.borrow() {
                    return;
                }
                tokio::select! {
                    _ = tick.tick() => registry.refresh_due().await,
                    changed = stop.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                }
            }
        })
    }

    fn lock_sets(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<JwksSet>>> {
        // The map holds no invariant a panicking holder could break.
        self.inner
            .sets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[derive(Default)]
struct FetchState {
    last_attempt: Option<Instant>,
    last_ok: bool,
    last_on_demand: Option<Instant>,
}

/// The cached keys of one JWK Set URL.
pub struct JwksSet {
    url: Uri,
    label: String,
    client: JwksClient,
    settings: ArcSwap<JwksSettings>,
    keys: ArcSwap<Vec<VerificationKey>>,
    loaded: AtomicBool,
    generation: AtomicU64,
    attempts: AtomicU64,
    state: tokio::sync::Mutex<FetchState>,
}

impl fmt::Debug for JwksSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwksSet")
            .field("url", &self.label)
            .field("keys", &self.keys.load().len())
            .field("loaded", &self.is_loaded())
            .finish_non_exhaustive()
    }
}

impl JwksSet {
    /// The URL fetched.
    pub fn url(&self) -> &Uri {
        &self.url
    }

    /// The last good keys (empty before the first successful fetch).
    pub fn keys(&self) -> Arc<Vec<VerificationKey>> {
        self.keys.load_full()
    }

    /// Whether a fetch has ever succeeded.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// Fetch attempts made so far (for metrics and tests).
    pub fn fetch_attempts(&self) -> u64 {
        self.attempts.load(Ordering::Relaxed)
    }

    /// The settings in force.
    pub fn settings(&self) -> JwksSettings {
        **self.settings.load()
    }

    /// Fetches now, whatever the schedule; on success the new keys replace
    /// the old ones, on failure the old ones stay. Returns the key count.
    pub async fn refresh(&self) -> Result<usize, JwksError> {
        let mut state = self.state.lock().await;
        self.fetch_locked(&mut state).await
    }

    /// Counts successful fetches; read it before [`JwksSet::keys`] and hand
    /// it to [`JwksSet::refresh_for_unknown_kid`].
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Called when a token names a kid that the keys read at generation
    /// `seen` do not hold. Fetches unless an unknown-kid fetch happened
    /// within `min_refresh_interval`. Returns whether the keys may have
    /// changed since `seen` (a fetch succeeded, here or in a task the caller
    /// waited for), i.e. whether a second look is worth it.
    pub async fn refresh_for_unknown_kid(&self, seen: u64) -> bool {
        let mut state = self.state.lock().await;
        if self.generation.load(Ordering::Acquire) != seen {
            return true;
        }
        let min = self.settings.load().min_refresh_interval;
        if let Some(at) = state.last_on_demand
            && at.elapsed() < min
        {
            return false;
        }
        state.last_on_demand = Some(Instant::now());
        self.fetch_locked(&mut state).await.is_ok()
    }

    async fn refresh_if_due(&self) {
        let mut state = self.state.lock().await;
        let settings = **self.settings.load();
        let wait = if state.last_ok {
            settings.refresh
        } else {
            settings.min_refresh_interval.min(settings.refresh)
        };
        let due = match state.last_attempt {
            None => true,
            Some(at) => at.elapsed() >= wait,
        };
        if due {
            // The outcome is logged inside; the old keys stay on failure.
            let _ = self.fetch_locked(&mut state).await;
        }
    }

    async fn fetch_locked(&self, state: &mut FetchState) -> Result<usize, JwksError> {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        state.last_attempt = Some(Instant::now());
        let result = self.fetch().await;
        match result {
            Ok(keys) => {
                let n = keys.len();
                self.keys.store(Arc::new(keys));
                self.loaded.store(true, Ordering::Release);
                self.generation.fetch_add(1, Ordering::AcqRel);
                state.last_ok = true;
                tracing::debug!(url = %self.label, keys = n, "jwks fetched");
                Ok(n)
            }
            Err(e) => {
                state.last_ok = false;
                tracing::warn!(
                    url = %self.label,
                    error = %e,
                    cause = e_source(&e),
                    kept_keys = self.keys.load().len(),
                    "jwks fetch failed; keeping the last good keys"
                );
                Err(e)
            }
        }
    }

    async fn fetch(&self) -> Result<Vec<VerificationKey>, JwksError> {
        let timeout = self.settings.load().timeout;
        let request = Request::get(self.url.clone())
            .header(header::ACCEPT, "application/jwk-set+json, application/json")
            .header(
                header::USER_AGENT,
                concat!("gatehouse/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::<Bytes>::new())
            .map_err(JwksError::Request)?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| JwksError::Http(Box::new(e)))?;
            if response.status() != StatusCode::OK {
                return Err(JwksError::Status(response.status().as_u16()));
            }
            let declared = response
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|n| n > MAX_JWKS_BYTES as u64) {
                return Err(JwksError::TooLarge);
            }
            let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        JwksError::TooLarge
                    } else {
                        JwksError::Body(e)
                    }
                })?;
            Ok(body.to_bytes())
        };
        let body = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| JwksError::Timeout)??;
        parse_jwk_set(&body, &self.label)
    }
}

fn e_source(e: &JwksError) -> String {
    use std::error::Error as _;
    let mut out = String::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

/// Parses a JWK Set, keeping the usable signature keys (at most
/// [`MAX_JWKS_KEYS`]) and logging why each other entry was skipped.
pub fn parse_jwk_set(body: &[u8], url: &str) -> Result<Vec<VerificationKey>, JwksError> {
    #[derive(serde::Deserialize)]
    struct RawSet {
        keys: Vec<serde_json::Value>,
    }
    let raw: RawSet = serde_json::from_slice(body).map_err(JwksError::Json)?;
    if raw.keys.len() > MAX_JWKS_KEYS {
        tracing::warn!(
            url,
            keys = raw.keys.len(),
            max = MAX_JWKS_KEYS,
            "jwks has too many keys; using the first ones"
        );
    }
    let mut keys = Vec::new();
    for (index, value) in raw.keys.into_iter().take(MAX_JWKS_KEYS).enumerate() {
        let kid = value
            .get("kid")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned);
        match key_from_jwk(value) {
            Ok(key) => keys.push(key),
            Err(reason) => {
                tracing::info!(url, index, kid = kid.as_deref(), reason, "jwks key skipped");
            }
        }
    }
    if keys.is_empty() {
        return Err(JwksError::NoUsableKeys);
    }
    Ok(keys)
}

fn key_from_jwk(value: serde_json::Value) -> Result<VerificationKey, &'static str> {
    let jwk: Jwk = serde_json::from_value(value).map_err(|_| "malformed or unsupported key")?;
    match &jwk.common.public_key_use {
        None | Some(PublicKeyUse::Signature) => {}
        Some(_) => return Err("key is not for signatures (use)"),
    }
    if let Some(ops) = &jwk.common.key_operations
        && !ops.contains(&KeyOperations::Verify)
    {
        return Err("key_ops does not include verify");
    }
    let fits: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(rsa) => {
            let n = super::jwt::b64url_decode(rsa.n.as_bytes()).ok_or("bad RSA modulus")?;
            let bits = rsa_bits(&n);
            if bits < 2048 {
                return Err("RSA key shorter than 2048 bits");
            }
            if bits > 4096 {
                return Err("RSA key longer than 4096 bits");
            }
            RSA_ALGORITHMS.to_vec()
        }
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => return Err("unsupported elliptic curve"),
        },
        AlgorithmParameters::OctetKeyPair(okp) => match okp.curve {
            EllipticCurve::Ed25519 => vec![Algorithm::EdDSA],
            _ => return Err("unsupported OKP curve"),
        },
        AlgorithmParameters::OctetKey(_) => {
            return Err("symmetric keys are never taken from a JWK Set");
        }
    };
    let algorithms = match jwk.common.key_algorithm {
        None => fits,
        Some(declared) => {
            let alg = key_algorithm(declared).ok_or("alg is not a signature algorithm")?;
            if !fits.contains(&alg) {
                return Err("alg does not fit the key type");
            }
            vec![alg]
        }
    };
    let key = DecodingKey::from_jwk(&jwk).map_err(|_| "key parameters rejected")?;
    Ok(VerificationKey {
        kid: jwk.common.key_id.clone(),
        algorithms,
        key,
    })
}

/// Bits of a big-endian unsigned integer.
pub(crate) fn rsa_bits(n: &[u8]) -> usize {
    let trimmed: &[u8] = match n.iter().position(|b| *b != 0) {
        Some(i) => n.get(i..).unwrap_or_default(),
        None => &[],
    };
    match trimmed.first() {
        None => 0,
        Some(first) => (trimmed.len() - 1) * 8 + (8 - first.leading_zeros() as usize),
    }
}

fn key_algorithm(a: KeyAlgorithm) -> Option<Algorithm> {
    Some(match a {
        KeyAlgorithm::HS256 => Algorithm::HS256,
        KeyAlgorithm::HS384 => Algorithm::HS384,
        KeyAlgorithm::HS512 => Algorithm::HS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

#[cfg(test)]
mod tests;
