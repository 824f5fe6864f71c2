//! Building everything a config needs before it is served (TLS configs,
//! the snapshot, the checks that span several tables), and `gatehouse
//! check`. Blocking: run on a blocking thread by [`super::build`] and
//! reloads. Not here: anything that listens or runs (the server starts
//! what is built here).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::auth::jwks::JwksRegistry;
use crate::auth::{Clock, SystemClock};
use crate::config::{self, Environment, Loaded, Problems};
use crate::proxy::UpstreamRegistry;
use crate::proxy::lambda::AwsSettings;
use crate::snapshot::{BuildDeps, Snapshot};
use crate::telemetry::Metrics;
use crate::tls::{self, CertInfo};

use super::*;

/// What every build of a snapshot uses besides the files, owned (a build
/// runs on a blocking thread) and kept across reloads.
#[derive(Debug, Clone)]
pub(crate) struct Inputs {
    /// The config-named environment values.
    pub(crate) env: Environment,
    /// Credentials settings for Lambda upstreams.
    pub(crate) aws: AwsSettings,
    /// JWKS sets.
    pub(crate) jwks: JwksRegistry,
    /// The clock token checks use.
    pub(crate) clock: Arc<dyn Clock>,
    /// The metrics registry.
    pub(crate) metrics: Arc<Metrics>,
    /// Upstream runtime state.
    pub(crate) upstreams: UpstreamRegistry,
}

impl Inputs {
    fn deps(&self) -> BuildDeps<'_> {
        BuildDeps {
            env: &self.env,
            aws: &self.aws,
            jwks: &self.jwks,
            clock: &self.clock,
            metrics: &self.metrics,
            upstreams: &self.upstreams,
        }
    }

    /// [`build_all`] on a blocking thread.
    pub(super) async fn build(
        self,
        config_path: PathBuf,
        generation: u64,
        previous: Vec<(String, Arc<rustls::ServerConfig>)>,
        make_dev_certs: bool,
    ) -> Result<Result<Built, Problems>, tokio::task::JoinError> {
        tokio::task::spawn_blocking(move || {
            build_all(
                &config_path,
                generation,
                &previous,
                make_dev_certs,
                self.deps(),
            )
        })
        .await
    }
}

pub(super) struct Built {
    pub(super) loaded: Loaded,
    pub(super) snapshot: Snapshot,
    pub(super) tls: Vec<(String, Arc<rustls::ServerConfig>)>,
    pub(super) certs: Vec<CertInfo>,
}

/// Loads, validates and compiles everything. Blocking.
pub(super) fn build_all(
    config_path: &Path,
    generation: u64,
    previous: &[(String, Arc<rustls::ServerConfig>)],
    make_dev_certs: bool,
    deps: BuildDeps<'_>,
) -> Result<Built, Problems> {
    let loaded = config::load(config_path)?;
    let mut problems = Vec::new();
    // Like dev certificates, dev signing keys exist before anything reads
    // them; unlike certificates they are also made by `check` and reloads
    // (an issuer cannot be checked without its key).
    {
        for spec in &loaded.config.jwt_issuers {
            match crate::auth::jwt::ensure_dev_keys(spec.get_ref(), &loaded.base_dir) {
                Ok(true) => tracing::warn!(
                    issuer = %spec.get_ref().name,
                    "development signing keys created (dev_keys = true); not for production"
                ),
                Ok(false) => {}
                Err(e) => problems.push(loaded.source.problem(spec.span(), e.to_string())),
            }
        }
    }
    let mut tls_configs = Vec::new();
    let mut certs = Vec::new();
    for listener in &loaded.config.listeners {
        let l = listener.get_ref();
        let Some(tls_cfg) = &l.tls else { continue };
        if tls_cfg.dev_certs {
            if make_dev_certs {
                ensure_dev_certs(&loaded, tls_cfg, &mut problems);
            } else if dev_certs_missing(&loaded, tls_cfg) {
                // `check`: they will be created by `serve`.
                continue;
            }
        }
        let prev = previous
            .iter()
            .find(|(n, _)| *n == l.name)
            .map(|(_, c)| c.as_ref());
        match tls::server_config(tls_cfg, &loaded.base_dir, prev) {
            Ok((cfg, infos)) => {
                for info in &infos {
                    warn_if_expiring(info);
                }
                certs.extend(infos);
                tls_configs.push((l.name.clone(), cfg));
            }
            Err(e) => problems.push(
                loaded
                    .source
                    .problem(listener.span(), format!("listener `{}`: {e}", l.name)),
            ),
        }
    }
    if let Some(hash) = &loaded.config.admin.token_hash
        && let Err(message) = check_token_hash(hash.get_ref())
    {
        problems.push(loaded.source.problem(hash.span(), message));
    }
    let rl = &loaded.config.rate_limits;
    if rl.backend == config::RateLimitBackend::Redis && rl.redis_url.is_none() {
        // The table is not position-tracked; its header line is the place.
        let at = loaded.source.text.find("[rate_limits]").unwrap_or(0);
        problems.push(loaded.source.problem(
            at..at,
            "`[rate_limits] backend = \"redis\"` needs `redis_url`",
        ));
    }
    if loaded.config.server.idle_timeout.0.is_zero() {
        let at = loaded.source.text.find("idle_timeout").unwrap_or(0);
        problems.push(
            loaded
                .source
                .problem(at..at, "`[server] idle_timeout` must be above zero"),
        );
    }
    let mut names = std::collections::HashSet::new();
    for listener in &loaded.config.listeners {
        let l = listener.get_ref();
        if !names.insert(l.name.clone()) {
            problems.push(loaded.source.problem(
                listener.span(),
                format!("listener `{}` is defined twice", l.name),
            ));
        }
        let limits = &l.limits;
        if limits.max_header_count == Some(0)
            || limits.h2_max_concurrent_streams == Some(0)
            || limits.max_header_bytes.is_some_and(|b| b.0 < 1024)
            || limits.max_uri_bytes.is_some_and(|b| b.0 < 64)
        {
            problems.push(loaded.source.problem(
                listener.span(),
                format!(
                    "listener `{}`: limits must allow at least 1 header, 1 stream, a 1 KiB head and a 64-byte target",
                    l.name
                ),
            ));
        }
        if let Some(hsts) = l.tls.as_ref().and_then(|t| t.hsts.as_ref())
            && let Err(e) = hsts.header_value()
        {
            problems.push(
                loaded
                    .source
                    .problem(listener.span(), format!("listener `{}`: {e}", l.name)),
            );
        }
        if l.proxy_protocol && loaded.config.access.trusted_proxies.is_empty() {
            problems.push(loaded.source.problem(
                listener.span(),
                format!(
                    "listener `{}`: `proxy_protocol` needs `[access] trusted_proxies` (the balancers allowed to send the header)",
                    l.name
                ),
            ));
        }
        if l.tls.is_some() && l.redirect_https_port.is_some() {
            problems.push(loaded.source.problem(
                listener.span(),
                format!(
                    "listener `{}`: `redirect_https_port` is only for plain listeners",
                    l.name
                ),
            ));
        }
    }
    let snapshot = match Snapshot::build(&loaded, generation, deps) {
        Ok(s) => Some(s),
        Err(ps) => {
            problems.extend(ps.0);
            None
        }
    };
    match snapshot {
        Some(snapshot) if problems.is_empty() => Ok(Built {
            loaded,
            snapshot,
            tls: tls_configs,
            certs,
        }),
        _ => Err(Problems(problems)),
    }
}

pub(crate) fn warn_if_expiring(info: &CertInfo) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let days_left = (info.not_after - now) / 86_400;
    if days_left < 14 {
        tracing::warn!(cert = %info.path.display(), days_left, "certificate expires in under 14 days");
    }
}

pub(super) fn dev_certs_missing(loaded: &Loaded, tls_cfg: &config::TlsConfig) -> bool {
    tls_cfg
        .certs
        .iter()
        .any(|c| !loaded.resolve(&c.cert).exists() || !loaded.resolve(&c.key).exists())
}

pub(super) fn ensure_dev_certs(
    loaded: &Loaded,
    tls_cfg: &config::TlsConfig,
    problems: &mut Vec<Problem>,
) {
    for c in &tls_cfg.certs {
        let cert = loaded.resolve(&c.cert);
        let key = loaded.resolve(&c.key);
        if cert.exists() && key.exists() {
            continue;
        }
        let ca_dir = cert.parent().map(Path::to_path_buf).unwrap_or_default();
        match tls::dev_certs(&ca_dir, &cert, &key) {
            Ok(paths) => tracing::warn!(
                ca = %paths.ca.display(),
                cert = %paths.cert.display(),
                "development certificates created (dev_certs = true); trust the CA with curl --cacert"
            ),
            Err(e) => problems.push(whole(
                &cert,
                format!("cannot create development certificates: {e}"),
            )),
        }
    }
}

/// Whether `hash` is a usable `[admin] token_hash` (an argon2id PHC string).
pub fn check_token_hash(hash: &str) -> Result<(), String> {
    if hash.starts_with("$argon2id$") && argon2::PasswordHash::new(hash).is_ok() {
        Ok(())
    } else {
        Err(
            "`[admin] token_hash` must be an argon2id hash (run `gatehouse hash-secret`)"
                .to_owned(),
        )
    }
}

/// Checks a configuration without starting anything: every problem with
/// its place, or the number of routes and upstreams.
pub fn check(config_path: &Path, env: &Environment) -> Result<(usize, usize), Problems> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let jwks = JwksRegistry::new().map_err(|e| {
        Problems(vec![whole(
            config_path,
            format!("cannot set up JWKS fetching: {e}"),
        )])
    })?;
    let metrics = Arc::new(Metrics::new().map_err(|e| {
        Problems(vec![whole(
            config_path,
            format!("cannot set up metrics: {e}"),
        )])
    })?);
    let inputs = Inputs {
        env: env.clone(),
        // Credentials are not needed to check: nothing is invoked.
        aws: AwsSettings::default(),
        jwks,
        clock,
        upstreams: UpstreamRegistry::new(metrics.clone()),
        metrics,
    };
    let built = build_all(config_path, 1, &[], false, inputs.deps())?;
    Ok((
        built.snapshot.routes.len(),
        built.snapshot.upstreams.len() + built.snapshot.functions.len(),
    ))
}
